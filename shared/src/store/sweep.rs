//! The reclaimer's passes (invariant 4). Each is idempotent and safe to run concurrently
//! with itself and with the worker: rows are taken with `FOR UPDATE SKIP LOCKED`, so two
//! reclaimers never act on one call.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::dial::{delay_into_window, fail_call, RetryPolicy};
use super::events::{insert_events_sql, record_events};
use super::slots::{
    nudge_waiting_calls, recent_nudges_count, release_slot, unmark_overdue_messages,
    MESSAGE_ON_ITS_WAY_SECONDS,
};
use super::{execute, query, query_one, seconds, Pool, StoreResult};
use crate::backoff;
use crate::events::EventType;
use crate::queue::{Enqueue, MAX_DELAY};

/// How many rows one pass takes per statement.
pub const BATCH: i64 = 500;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleReclaimed {
    /// Stale calls put back to PENDING for a retry.
    pub retried: u64,
    /// Stale calls with no attempts left, now FAILED.
    pub failed: u64,
}

/// An IN_PROGRESS call silent for longer than the stale threshold, with what its current
/// attempt knows: what the reclaimer asks the provider about before acting.
#[derive(Debug, Clone)]
pub struct StaleCall {
    pub call_id: Uuid,
    pub phone: String,
    pub script_id: String,
    pub started_at: DateTime<Utc>,
    pub attempt_no: i32,
    pub dial_state: Option<String>,
    pub provider_call_id: Option<String>,
    pub idempotency_key: Option<Uuid>,
    /// When the first dial with this attempt's key started.
    pub key_since: Option<DateTime<Utc>>,
    /// Provider call ids of the call's attempts with other keys.
    pub known_provider_call_ids: Vec<String>,
}

/// A stale call a pass takes to ask about is not taken by another pass for this long, or
/// until the pass lets it go ([`release_stale_calls`]): only a pass that died keeps it.
const LOOKUP_LEASE_SECONDS: f64 = 10.0;

/// Takes up to `limit` IN_PROGRESS calls started more than `stale_after` ago, oldest first,
/// to ask the provider about: each is marked (`looked_up_at`) so that a concurrent pass
/// takes others, and no row lock is held while the provider answers; [`reclaim_stale_calls`]
/// re-checks each one under its lock.
pub async fn stale_calls(
    pool: &Pool,
    stale_after: Duration,
    limit: i64,
) -> StoreResult<Vec<StaleCall>> {
    let client = pool.get().await?;
    let rows = query(
        &client,
        "WITH taken AS ( \
             UPDATE calls SET looked_up_at = now() WHERE id IN ( \
                 SELECT id FROM calls \
                  WHERE status = 'IN_PROGRESS' AND started_at < now() - make_interval(secs => $1) \
                    AND (looked_up_at IS NULL OR looked_up_at < now() - make_interval(secs => $3)) \
                  ORDER BY started_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id, phone, script_id, started_at, attempts) \
         SELECT c.id, c.phone, c.script_id, c.started_at, a.attempt_no, a.dial_state, \
                a.provider_call_id, a.idempotency_key, \
                (SELECT min(k.started_at) FROM call_attempts k \
                  WHERE k.call_id = c.id AND k.idempotency_key = a.idempotency_key) AS key_since, \
                COALESCE((SELECT array_agg(o.provider_call_id::text) FROM call_attempts o \
                  WHERE o.call_id = c.id AND o.provider_call_id IS NOT NULL \
                    AND o.idempotency_key <> a.idempotency_key), '{}') AS known \
           FROM taken c \
           LEFT JOIN call_attempts a ON a.call_id = c.id AND a.attempt_no = c.attempts \
          ORDER BY c.started_at",
        &[&seconds(stale_after), &limit, &LOOKUP_LEASE_SECONDS],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(StaleCall {
                call_id: row.try_get("id")?,
                phone: row.try_get("phone")?,
                script_id: row.try_get("script_id")?,
                started_at: row.try_get("started_at")?,
                attempt_no: row.try_get::<_, Option<i32>>("attempt_no")?.unwrap_or(0),
                dial_state: row.try_get("dial_state")?,
                provider_call_id: row.try_get("provider_call_id")?,
                idempotency_key: row.try_get("idempotency_key")?,
                key_since: row.try_get("key_since")?,
                known_provider_call_ids: row.try_get("known")?,
            })
        })
        .collect()
}

/// Lets go of the stale calls a pass took ([`stale_calls`]), so the next pass asks again.
pub async fn release_stale_calls(pool: &Pool, call_ids: &[Uuid]) -> StoreResult<()> {
    if call_ids.is_empty() {
        return Ok(());
    }
    let client = pool.get().await?;
    execute(
        &client,
        "UPDATE calls SET looked_up_at = NULL WHERE id = ANY($1) AND looked_up_at IS NOT NULL",
        &[&call_ids],
    )
    .await?;
    Ok(())
}

/// Which stale calls [`reclaim_stale_calls`] acts on.
#[derive(Debug, Clone, Copy)]
pub enum ReclaimScope<'a> {
    /// Every stale call (a provider that cannot be asked and deduplicates by key).
    All,
    /// These calls, retried while attempts remain (the provider has no such call, or could
    /// not be asked and deduplicates by key).
    Redial(&'a [Uuid]),
    /// These calls, FAILED without a redial: the provider could not be asked for too long,
    /// and it would not recognise a redial (no idempotency key).
    GiveUp(&'a [Uuid]),
}

/// IN_PROGRESS calls older than `stale_after` with no outcome (those in `scope`): slot
/// released, retried with backoff while attempts remain, else FAILED ("no outcome
/// reported"). A dial whose placement is unknown is retried with its idempotency key, so
/// the provider can tell.
pub async fn reclaim_stale_calls(
    pool: &Pool,
    stale_after: Duration,
    policy: &RetryPolicy,
    scope: ReclaimScope<'_>,
) -> StoreResult<(StaleReclaimed, Vec<Enqueue>)> {
    let (only, give_up): (Option<&[Uuid]>, bool) = match scope {
        ReclaimScope::All => (None, false),
        ReclaimScope::Redial(ids) => (Some(ids), false),
        ReclaimScope::GiveUp(ids) => (Some(ids), true),
    };
    if only.is_some_and(<[Uuid]>::is_empty) {
        return Ok((StaleReclaimed::default(), Vec::new()));
    }
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    let rows = query(
        &tx,
        "SELECT c.id, c.attempts - c.limited_dials AS counted, c.max_attempts, a.id AS attempt_id, \
                a.dial_state, a.idempotency_key \
           FROM calls c \
           LEFT JOIN call_attempts a ON a.call_id = c.id AND a.attempt_no = c.attempts \
          WHERE c.status = 'IN_PROGRESS' AND c.started_at < now() - make_interval(secs => $1) \
            AND ($3::uuid[] IS NULL OR c.id = ANY($3)) \
          ORDER BY c.started_at LIMIT $2 \
          FOR UPDATE OF c SKIP LOCKED",
        &[&seconds(stale_after), &BATCH, &only],
    )
    .await?;
    let mut report = StaleReclaimed::default();
    let mut messages = Vec::new();
    let mut retried = Vec::new();
    for row in &rows {
        let call_id: Uuid = row.try_get("id")?;
        let attempts: i32 = row.try_get("counted")?;
        let max_attempts: i32 = row.try_get("max_attempts")?;
        let attempt_id: Option<Uuid> = row.try_get("attempt_id")?;
        let dial_state: Option<String> = row.try_get("dial_state")?;
        let key: Option<Uuid> = row.try_get("idempotency_key")?;
        let error = if give_up {
            format!(
                "no outcome reported within {}s, and the provider could not be asked",
                stale_after.as_secs()
            )
        } else {
            format!("no outcome reported within {}s", stale_after.as_secs())
        };
        if let Some(attempt_id) = attempt_id {
            execute(
                &tx,
                "UPDATE call_attempts SET ended_at = now(), error = $2, \
                        dial_state = CASE WHEN dial_state = 'DIALING' THEN 'UNKNOWN' ELSE dial_state END \
                  WHERE id = $1",
                &[&attempt_id, &error],
            )
            .await?;
        }
        release_slot(&tx, call_id).await?;
        if attempts < max_attempts && !give_up {
            // Placed and then silent: a real redial (new key). Never known to be placed:
            // same key, so a provider that did place it answers with the same call.
            let retry_key = match dial_state.as_deref() {
                Some("ACCEPTED") | Some("REJECTED") | Some("LIMITED") | None => None,
                _ => key,
            };
            let delay = backoff::retry_delay(policy.base_retry_seconds, attempts as u32, None);
            let delay = delay_into_window(&tx, call_id, delay).await?;
            let message_delay = delay.min(MAX_DELAY);
            execute(
                &tx,
                "UPDATE calls SET status = 'PENDING', next_run_at = now() + make_interval(secs => $2), \
                        outbox_due_at = now() + make_interval(secs => $3), last_error = $4, \
                        retry_dial_key = $5, updated_at = now(), sequence = sequence + 1 \
                  WHERE id = $1",
                &[&call_id, &seconds(delay), &seconds(message_delay), &error, &retry_key],
            )
            .await?;
            retried.push((call_id, EventType::RetryScheduled));
            messages.push(Enqueue {
                call_id,
                delay: message_delay,
            });
            report.retried += 1;
        } else {
            let error = if give_up {
                error
            } else {
                format!("{error} (after {attempts} attempts)")
            };
            fail_call(&tx, call_id, &error, None).await?;
            report.failed += 1;
        }
    }
    record_events(&tx, &retried).await?;
    if !rows.is_empty() {
        messages.extend(nudge_waiting_calls(&tx, rows.len() as i64).await?);
    }
    tx.commit().await?;
    Ok((report, messages))
}

/// PENDING calls whose SQS message was never confirmed within `grace` of when it was due:
/// their messages, to send again (the mark moves on, so one lost send is re-sent once a
/// grace period, not on every pass). The refill ([`refill_free_slots`], after this in a
/// pass) parks a call once its message is 5 s overdue, so with passes closer together than
/// `grace` this finds only the marks an earlier refill left: rows another transaction
/// held, or more than a batch of them.
pub async fn resend_unconfirmed_messages(
    pool: &Pool,
    grace: Duration,
) -> StoreResult<Vec<Enqueue>> {
    let client = pool.get().await?;
    let rows = query(
        &client,
        // EXTRACT yields numeric, which would make Postgres infer $3 as numeric too (and
        // refuse the f64): the casts keep the arithmetic in float8.
        "UPDATE calls SET outbox_due_at = now() + make_interval(secs => \
                    LEAST(GREATEST(EXTRACT(EPOCH FROM next_run_at - now())::float8, 0), $3::float8)) \
          WHERE id IN (SELECT id FROM calls \
                        WHERE outbox_due_at < now() - make_interval(secs => $1) AND status = 'PENDING' \
                        ORDER BY outbox_due_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
          RETURNING id, GREATEST(EXTRACT(EPOCH FROM next_run_at - now()), 0)::float8 AS wait",
        &[&seconds(grace), &BATCH, &seconds(MAX_DELAY)],
    )
    .await?;
    rows.iter()
        .map(|row| {
            let wait: f64 = row.try_get("wait")?;
            Ok(Enqueue {
                call_id: row.try_get("id")?,
                delay: Duration::from_secs_f64(wait.clamp(0.0, MAX_DELAY.as_secs_f64())),
            })
        })
        .collect()
}

/// PENDING calls past their `expiresAt`, or older than `max_pending_age`: EXPIRED, each with
/// its `call.expired` event, in one statement.
pub async fn expire_pending_calls(
    pool: &Pool,
    max_pending_age: Option<Duration>,
) -> StoreResult<u64> {
    let client = pool.get().await?;
    let sql = format!(
        "WITH expired AS ( \
             UPDATE calls SET status = 'EXPIRED', ended_at = now(), updated_at = now(), outbox_due_at = NULL, \
                    last_error = COALESCE(last_error || '; ', '') || 'expired before it could be dialed', \
                    sequence = sequence + 1 \
              WHERE id IN (SELECT id FROM calls \
                            WHERE status = 'PENDING' \
                              AND (expires_at <= now() \
                                   OR ($1::float8 IS NOT NULL AND created_at <= now() - make_interval(secs => $1))) \
                            LIMIT $2 FOR UPDATE SKIP LOCKED) \
              RETURNING *) \
         {} RETURNING call_id",
        insert_events_sql("gen_random_uuid()", "'call.expired'", "expired c")
    );
    let rows = query(&client, &sql, &[&max_pending_age.map(seconds), &BATCH]).await?;
    Ok(rows.len() as u64)
}

/// The safety net for invariant 8, and what brings parked calls: parks again the calls
/// whose message is overdue (a lost nudge or send), then, with slots free that no message
/// is on its way to, nudges as many due waiting calls, then gives the calls due within
/// SQS's delay horizon a delayed message each (outbox-marked, so the sweep covers a lost
/// send). Returns the calls in progress and the messages.
pub async fn refill_free_slots(pool: &Pool, cap: u32) -> StoreResult<(i64, Vec<Enqueue>)> {
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    unmark_overdue_messages(&tx, BATCH).await?;
    let row = query_one(
        &tx,
        concat!(
            "SELECT (SELECT count(*) FROM call_slots WHERE call_id IS NOT NULL), \
                    (SELECT count(*) FROM (SELECT 1 FROM calls \
                      WHERE outbox_due_at >= now() - make_interval(secs => $2) LIMIT $1) AS marked) \
                  + ",
            recent_nudges_count!("$1")
        ),
        &[&i64::from(cap), &MESSAGE_ON_ITS_WAY_SECONDS],
    )
    .await?;
    let in_progress: i64 = row.try_get(0)?;
    let on_its_way: i64 = row.try_get(1)?;
    let free = (i64::from(cap) - in_progress - on_its_way).clamp(0, BATCH);
    let mut messages = nudge_waiting_calls(&tx, free).await?;
    let left = free - messages.len() as i64;
    if left > 0 {
        let upcoming = query(
            &tx,
            "UPDATE calls SET outbox_due_at = next_run_at WHERE id IN ( \
                 SELECT id FROM calls \
                  WHERE status = 'PENDING' AND next_run_at > now() \
                    AND next_run_at <= now() + make_interval(secs => $2) \
                    AND outbox_due_at IS NULL \
                    AND (campaign_id IS NULL \
                         OR campaign_id IN (SELECT id FROM campaigns WHERE status = 'ACTIVE')) \
                  ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, GREATEST(EXTRACT(EPOCH FROM next_run_at - now()), 0)::float8 AS wait",
            &[&left, &seconds(MAX_DELAY)],
        )
        .await?;
        for row in &upcoming {
            let wait: f64 = row.try_get("wait")?;
            messages.push(Enqueue {
                call_id: row.try_get("id")?,
                delay: Duration::from_secs_f64(wait.clamp(0.0, MAX_DELAY.as_secs_f64())),
            });
        }
    }
    tx.commit().await?;
    Ok((in_progress, messages))
}
