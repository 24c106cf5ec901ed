//! Recording what the provider answered to a dial, in the transaction after it.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::claim::ClaimedCall;
use super::events::record_event;
use super::settle::{apply_held_reports, lock_provider_calls, provider_call_lock_sql, Settlement};
use super::slots::{release_slot, release_slot_and_nudge};
use super::{execute, query, query_opt, seconds, Pool, StoreResult, Transaction};
use crate::backoff;
use crate::config::Config;
use crate::domain::{CallOutcome, CallStatus};
use crate::events::EventType;
use crate::provider::DialResult;
use crate::queue::Enqueue;

/// What retries need to know (from [`Config`]).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base_retry_seconds: u64,
    pub redial_outcomes: Vec<CallOutcome>,
}

impl From<&Config> for RetryPolicy {
    fn from(config: &Config) -> Self {
        Self {
            base_retry_seconds: config.base_retry_seconds,
            redial_outcomes: config.redial_outcomes.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum DialRecorded {
    /// The provider placed the call; it stays IN_PROGRESS until its webhook. Webhooks that
    /// had arrived before this record are applied now.
    Dialed { early_webhooks: Vec<Settlement> },
    /// A retryable failure: the call is redialed at `next_run_at` — PENDING again after a
    /// definite failure, or still IN_PROGRESS (slot held) when the dial may have been placed.
    RetryScheduled {
        next_run_at: DateTime<Utc>,
        delay: Duration,
    },
    /// The last attempt's fate is unknown: the call keeps its slot until the provider's
    /// webhook or the reclaimer settles it.
    OutcomeUnknown { error: String },
    /// The provider refused the dial for its account's concurrency limit: the call waits
    /// (PENDING, slot released) until `next_run_at`, and the dial does not count as an
    /// attempt.
    ProviderLimited {
        next_run_at: DateTime<Utc>,
        delay: Duration,
        error: String,
    },
    /// Permanent failure, or attempts exhausted: FAILED.
    Failed { error: String },
    /// The call moved on while the dial was in flight (reclaimed): only the attempt's
    /// record was updated.
    Superseded,
}

/// Records `result` for the attempt `claimed` made. Returns what happened, and messages
/// for waiting calls nudged into the freed slot (send them after this returns).
pub async fn record_dial(
    pool: &Pool,
    claimed: &ClaimedCall,
    result: &DialResult,
    policy: &RetryPolicy,
) -> StoreResult<(DialRecorded, Vec<Enqueue>)> {
    let mut client = pool.get().await?;
    let tx = Transaction::begin(&mut client);
    let outcome = match result {
        DialResult::Accepted { provider_call_id } => {
            let mut recorded =
                record_accepted_in(&tx, &[(claimed, provider_call_id.as_str())], policy).await?;
            recorded.pop().ok_or_else(|| {
                super::StoreError::Corrupt(format!(
                    "recording call {}'s accepted dial answered nothing",
                    claimed.call_id
                ))
            })?
        }
        DialResult::Retryable {
            error,
            retry_after,
            maybe_placed,
        } => {
            record_failure(
                &tx,
                claimed,
                error,
                Some((*retry_after, *maybe_placed)),
                policy,
            )
            .await?
        }
        DialResult::ConcurrencyLimited { error, retry_after } => {
            record_limited(&tx, claimed, error, *retry_after, policy).await?
        }
        DialResult::Permanent { error } => {
            record_failure(&tx, claimed, error, None, policy).await?
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Records the dials a batch placed, all in one transaction: each attempt gets its
/// provider call id, and webhooks that arrived before (held) are applied. Returns, per dial
/// in order, [`DialRecorded::Dialed`] and the messages of calls nudged by what those
/// webhooks freed.
///
/// Locks in the order every other path uses: the provider call ids' advisory locks (sorted,
/// as [`super::settle`] takes one), then the calls' rows (by id), then their attempts.
pub async fn record_accepted_dials(
    pool: &Pool,
    accepted: &[(&ClaimedCall, &str)],
    policy: &RetryPolicy,
) -> StoreResult<Vec<(DialRecorded, Vec<Enqueue>)>> {
    if accepted.is_empty() {
        return Ok(Vec::new());
    }
    let mut client = pool.get().await?;
    let tx = Transaction::begin(&mut client);
    let recorded = record_accepted_in(&tx, accepted, policy).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// [`record_accepted_dials`] inside the caller's transaction ([`record_dial`] uses it for
/// a batch of one).
async fn record_accepted_in(
    tx: &Transaction<'_>,
    accepted: &[(&ClaimedCall, &str)],
    policy: &RetryPolicy,
) -> StoreResult<Vec<(DialRecorded, Vec<Enqueue>)>> {
    // The provider calls' locks, then the calls' rows. Held webhooks are looked for after
    // the locks, so either a webhook's transaction saw these ids, or this one sees its
    // report. A dial of one is recorded with scalar parameters (one generic plan per
    // connection, see `claim::CLAIM_READ`), both locks in one statement: the row lock is
    // taken last (`FOR UPDATE` locks the rows the join returns, after the CTE took the
    // advisory lock).
    let held = match accepted {
        [(claimed, provider_call_id)] => {
            static LOCK_ONE: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "WITH provider_call AS MATERIALIZED (SELECT {} AS locked) \
                     SELECT 1 FROM provider_call, calls WHERE calls.id = $1 FOR UPDATE OF calls",
                    provider_call_lock_sql("$2::text")
                )
            });
            execute(tx, &LOCK_ONE, &[&claimed.call_id, provider_call_id]).await?;
            query(
                tx,
                "WITH accepted AS ( \
                     UPDATE call_attempts SET dial_state = 'ACCEPTED', provider_call_id = $2::text, \
                            dialed_at = now(), error = NULL \
                      WHERE id = $1 RETURNING id) \
                 SELECT DISTINCT provider_call_id FROM provider_webhooks \
                  WHERE provider_call_id = $2 AND applied_at IS NULL",
                &[&claimed.attempt_id, provider_call_id],
            )
            .await?
        }
        _ => {
            let mut provider_ids: Vec<&str> = accepted.iter().map(|(_, id)| *id).collect();
            provider_ids.sort_unstable();
            provider_ids.dedup();
            lock_provider_calls(tx, &provider_ids).await?;
            let mut call_ids: Vec<Uuid> = accepted.iter().map(|(c, _)| c.call_id).collect();
            call_ids.sort_unstable();
            execute(
                tx,
                "SELECT 1 FROM calls WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&call_ids],
            )
            .await?;
            let attempt_ids: Vec<Uuid> = accepted.iter().map(|(c, _)| c.attempt_id).collect();
            let dial_ids: Vec<&str> = accepted.iter().map(|(_, id)| *id).collect();
            query(
                tx,
                "WITH accepted AS ( \
                     UPDATE call_attempts a SET dial_state = 'ACCEPTED', provider_call_id = d.provider_call_id, \
                            dialed_at = now(), error = NULL \
                       FROM unnest($1::uuid[], $2::text[]) AS d(attempt_id, provider_call_id) \
                      WHERE a.id = d.attempt_id RETURNING a.id) \
                 SELECT DISTINCT provider_call_id FROM provider_webhooks \
                  WHERE provider_call_id = ANY($2) AND applied_at IS NULL",
                &[&attempt_ids, &dial_ids],
            )
            .await?
        }
    };
    let held: HashSet<String> = held
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut recorded = Vec::with_capacity(accepted.len());
    for (_, provider_call_id) in accepted {
        if held.contains(*provider_call_id) {
            let (early_webhooks, nudges) = apply_held_reports(tx, provider_call_id, policy).await?;
            recorded.push((DialRecorded::Dialed { early_webhooks }, nudges));
        } else {
            recorded.push((
                DialRecorded::Dialed {
                    early_webhooks: Vec::new(),
                },
                Vec::new(),
            ));
        }
    }
    Ok(recorded)
}

async fn record_failure(
    tx: &Transaction<'_>,
    claimed: &ClaimedCall,
    error: &str,
    retry: Option<(Option<Duration>, bool)>,
    policy: &RetryPolicy,
) -> StoreResult<(DialRecorded, Vec<Enqueue>)> {
    let maybe_placed = retry.is_some_and(|(_, maybe)| maybe);
    let current = query_opt(
        tx,
        "SELECT status, attempts - limited_dials AS counted, max_attempts, attempts FROM calls \
          WHERE id = $1 FOR UPDATE",
        &[&claimed.call_id],
    )
    .await?;
    // Lock order everywhere: the call's row, then its attempts and slot.
    // An attempt a report already named (matched by its key) keeps what it learned.
    execute(
        tx,
        "UPDATE call_attempts SET dial_state = $2::text, ended_at = now(), error = $3 \
          WHERE id = $1 AND provider_call_id IS NULL",
        &[
            &claimed.attempt_id,
            &if maybe_placed { "UNKNOWN" } else { "REJECTED" },
            &error,
        ],
    )
    .await?;
    let Some(current) = current else {
        return Ok((DialRecorded::Superseded, Vec::new()));
    };
    let status = super::parse_status(current.try_get("status")?)?;
    let max_attempts: i32 = current.try_get("max_attempts")?;
    if status != CallStatus::InProgress
        || current.try_get::<_, i32>("attempts")? != claimed.attempt_no
    {
        return Ok((DialRecorded::Superseded, Vec::new()));
    }
    // The attempts that count: dials the provider refused for its concurrency limit do not.
    let attempts: i32 = current.try_get("counted")?;
    if let Some((retry_after, true)) = retry {
        // The dial's fate is unknown: the provider may be ringing the phone right now. The
        // call keeps its slot and its phone (invariants 1 and 2) until the webhook, a redial
        // with the same key (the claim's `redial_unknown`), or the reclaimer settles it.
        if attempts < max_attempts {
            let delay =
                backoff::retry_delay(policy.base_retry_seconds, attempts as u32, retry_after);
            let delay = delay_into_window(tx, claimed.call_id, delay).await?;
            let next_run_at: DateTime<Utc> = super::query_one(
                tx,
                "UPDATE calls SET next_run_at = now() + make_interval(secs => $2), last_error = $3, \
                        updated_at = now(), sequence = sequence + 1 \
                  WHERE id = $1 RETURNING next_run_at",
                &[&claimed.call_id, &seconds(delay), &error],
            )
            .await?
            .try_get(0)?;
            record_event(tx, claimed.call_id, EventType::RetryScheduled).await?;
            return Ok((
                DialRecorded::RetryScheduled { next_run_at, delay },
                Vec::new(),
            ));
        }
        let error = format!(
            "{error} (after {attempts} attempts; holding the slot until the provider reports or the call goes stale)"
        );
        execute(
            tx,
            "UPDATE calls SET last_error = $2, updated_at = now() WHERE id = $1",
            &[&claimed.call_id, &error],
        )
        .await?;
        return Ok((DialRecorded::OutcomeUnknown { error }, Vec::new()));
    }
    let nudges = release_slot_and_nudge(tx, claimed.call_id).await?;
    let recorded = match retry {
        Some((retry_after, _)) if attempts < max_attempts => {
            let delay =
                backoff::retry_delay(policy.base_retry_seconds, attempts as u32, retry_after);
            let delay = delay_into_window(tx, claimed.call_id, delay).await?;
            // The provider said no, but a provider that placed the call anyway recognises
            // the same key: reusing it costs nothing.
            let next_run_at: DateTime<Utc> = super::query_one(
                tx,
                "UPDATE calls SET status = 'PENDING', next_run_at = now() + make_interval(secs => $2), \
                        last_error = $3, retry_dial_key = $4, updated_at = now(), sequence = sequence + 1 \
                  WHERE id = $1 RETURNING next_run_at",
                &[&claimed.call_id, &seconds(delay), &error, &claimed.idempotency_key],
            )
            .await?
            .try_get(0)?;
            record_event(tx, claimed.call_id, EventType::RetryScheduled).await?;
            DialRecorded::RetryScheduled { next_run_at, delay }
        }
        _ => {
            let error = match retry {
                Some(_) => format!("{error} (after {attempts} attempts)"),
                None => error.to_owned(),
            };
            fail_call(tx, claimed.call_id, &error, None).await?;
            DialRecorded::Failed { error }
        }
    };
    Ok((recorded, nudges))
}

/// A dial the provider refused for its account's concurrency limit: nothing was placed, so
/// the slot is released and the call waits, its attempt not counted. No waiting call is
/// nudged into the slot (the provider is full: it would be refused too); the next call to
/// end at the provider frees room, and its settlement nudges.
async fn record_limited(
    tx: &Transaction<'_>,
    claimed: &ClaimedCall,
    error: &str,
    retry_after: Option<Duration>,
    policy: &RetryPolicy,
) -> StoreResult<(DialRecorded, Vec<Enqueue>)> {
    let current = query_opt(
        tx,
        "SELECT status, attempts, limited_dials FROM calls WHERE id = $1 FOR UPDATE",
        &[&claimed.call_id],
    )
    .await?;
    execute(
        tx,
        "UPDATE call_attempts SET dial_state = 'LIMITED', ended_at = now(), error = $2 \
          WHERE id = $1 AND provider_call_id IS NULL",
        &[&claimed.attempt_id, &error],
    )
    .await?;
    let Some(current) = current else {
        return Ok((DialRecorded::Superseded, Vec::new()));
    };
    let status = super::parse_status(current.try_get("status")?)?;
    if status != CallStatus::InProgress
        || current.try_get::<_, i32>("attempts")? != claimed.attempt_no
    {
        return Ok((DialRecorded::Superseded, Vec::new()));
    }
    let limited: i32 = current.try_get("limited_dials")?;
    let (next_run_at, delay) =
        wait_for_provider_room(tx, claimed.call_id, limited, retry_after, error, policy).await?;
    Ok((
        DialRecorded::ProviderLimited {
            next_run_at,
            delay,
            error: error.to_owned(),
        },
        Vec::new(),
    ))
}

/// Puts a call whose dial hit the provider's concurrency limit back to PENDING: the slot
/// released, the dial not counted (`limited_dials`), the next try after a backoff that
/// grows with the call's limited dials, a `call.retry_scheduled` event. Returns when it is
/// due.
pub(crate) async fn wait_for_provider_room(
    tx: &Transaction<'_>,
    call_id: Uuid,
    limited_before: i32,
    retry_after: Option<Duration>,
    error: &str,
    policy: &RetryPolicy,
) -> StoreResult<(DateTime<Utc>, Duration)> {
    release_slot(tx, call_id).await?;
    let delay = backoff::retry_delay(
        policy.base_retry_seconds,
        (limited_before + 1).clamp(1, 6) as u32,
        retry_after,
    );
    let delay = delay_into_window(tx, call_id, delay).await?;
    let next_run_at: DateTime<Utc> = super::query_one(
        tx,
        "UPDATE calls SET status = 'PENDING', limited_dials = limited_dials + 1, \
                next_run_at = now() + make_interval(secs => $2), last_error = $3, \
                retry_dial_key = NULL, updated_at = now(), sequence = sequence + 1 \
          WHERE id = $1 RETURNING next_run_at",
        &[&call_id, &seconds(delay), &error],
    )
    .await?
    .try_get(0)?;
    record_event(tx, call_id, EventType::RetryScheduled).await?;
    Ok((next_run_at, delay))
}

/// A retry's delay, stretched so that the retry lands inside the call's calling window: a
/// backoff that would end while the window is closed ends at its next opening instead (the
/// claim checks the window again either way).
pub(crate) async fn delay_into_window(
    tx: &Transaction<'_>,
    call_id: Uuid,
    delay: Duration,
) -> StoreResult<Duration> {
    let Some(row) = query_opt(
        tx,
        "SELECT calling_window, time_zones FROM calls WHERE id = $1 AND calling_window IS NOT NULL",
        &[&call_id],
    )
    .await?
    else {
        return Ok(delay);
    };
    let window: Option<serde_json::Value> = row.try_get("calling_window")?;
    let zones: Vec<String> = row.try_get("time_zones")?;
    let Some(rules) = crate::rules::CallRules::from_stored(window.as_ref(), &zones) else {
        return Err(super::StoreError::Corrupt(format!(
            "call {call_id}'s calling rules {window:?} in {zones:?}"
        )));
    };
    let now = Utc::now();
    let due = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
    Ok(match rules.next_allowed(due) {
        Some(opening) if opening > due => (opening - now).to_std().unwrap_or(delay),
        _ => delay,
    })
}

/// What a provider reported about the dial that failed a call.
pub(crate) struct FailureReport<'a> {
    pub outcome: &'a str,
    pub duration_sec: Option<i32>,
    pub ended_at: Option<DateTime<Utc>>,
    pub result: Option<serde_json::Value>,
}

/// Moves a call to FAILED with `error` as its `lastError` (and what the provider reported,
/// when a report failed it), with its `call.failed` event.
pub(crate) async fn fail_call(
    tx: &Transaction<'_>,
    call_id: Uuid,
    error: &str,
    reported: Option<FailureReport<'_>>,
) -> StoreResult<()> {
    let (outcome, duration_sec, ended_at, result) = match &reported {
        Some(r) => (
            Some(r.outcome),
            r.duration_sec,
            r.ended_at,
            r.result.clone(),
        ),
        None => (None, None, None, None),
    };
    execute(
        tx,
        "UPDATE calls SET status = 'FAILED', ended_at = COALESCE($4, now()), updated_at = now(), \
                last_error = $2, outbox_due_at = NULL, retry_dial_key = NULL, \
                outcome = COALESCE($3, outcome), \
                duration_sec = CASE WHEN $3::text IS NULL THEN duration_sec ELSE $5 END, \
                result = CASE WHEN $3::text IS NULL THEN result ELSE $6 END, \
                sequence = sequence + 1 \
          WHERE id = $1",
        &[
            &call_id,
            &error,
            &outcome,
            &ended_at,
            &duration_sec,
            &result,
        ],
    )
    .await?;
    record_event(tx, call_id, EventType::Failed).await
}
