//! The notifier's queries: fanning events out to their receivers, taking due deliveries,
//! and recording what each attempt got.
//!
//! - [`fan_out`]: each event not fanned out yet gets one delivery per endpoint that was
//!   enabled and subscribed to its type when the event happened, plus one to its call's
//!   (or its campaign's) `callbackUrl`.
//! - [`claim_due`]: due deliveries are leased (`FOR UPDATE SKIP LOCKED`, so notifiers share
//!   the work) and their attempt logged before anything is sent. A call's events (and a
//!   campaign's) reach one receiver in sequence order: a delivery waits while an earlier event of its call is
//!   still pending for the same receiver (or not fanned out yet). A notifier that dies
//!   between sending and recording leaves the lease to expire: the delivery is sent again
//!   (at least once, never lost), its attempt shown as "no result recorded".
//! - [`record_attempts`]: DELIVERED on a 2xx; otherwise retried with backoff until the
//!   delivery's retry window ends, then FAILED (and kept). An endpoint whose deliveries
//!   have failed without a success for `ENDPOINT_DISABLE_AFTER_SECONDS` is disabled.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::endpoints::fail_pending_deliveries;
use super::{query, query_one, seconds, Pool, StoreError, StoreResult};

/// Events fanned out per statement.
pub const FAN_OUT_BATCH: i64 = 500;

/// Makes the deliveries of events not fanned out yet (at most `limit`), each retried for
/// `retry_window`. Returns how many events were fanned out and how many deliveries made.
///
/// An event's call is read by its id (a scalar subquery per event, which Postgres does not
/// turn into a join): as a join, Postgres read all of `calls` for the callback URLs on every
/// pass, even with no event to fan out (0.6 ms at 6,300 rows, seen with `auto_explain`).
pub async fn fan_out(pool: &Pool, limit: i64, retry_window: Duration) -> StoreResult<(u64, u64)> {
    let client = pool.get().await?;
    let row = query_one(
        &client,
        "WITH events AS ( \
             SELECT id, call_id, campaign_id, sequence, type, created_at FROM call_events \
              WHERE fanned_out_at IS NULL ORDER BY created_at, call_id, sequence \
              LIMIT $1 FOR UPDATE SKIP LOCKED), \
         marked AS ( \
             UPDATE call_events e SET fanned_out_at = now() FROM events WHERE e.id = events.id \
             RETURNING e.id), \
         to_endpoints AS ( \
             INSERT INTO webhook_deliveries (id, event_id, endpoint_id, call_id, campaign_id, sequence, retry_until) \
             SELECT gen_random_uuid(), e.id, w.id, e.call_id, e.campaign_id, e.sequence, now() + make_interval(secs => $2) \
               FROM events e JOIN webhook_endpoints w \
                 ON w.enabled AND w.created_at <= e.created_at \
                AND (w.event_types IS NULL OR e.type = ANY (w.event_types)) \
             ON CONFLICT DO NOTHING RETURNING 1), \
         to_callbacks AS ( \
             INSERT INTO webhook_deliveries (id, event_id, endpoint_id, call_id, sequence, retry_until) \
             SELECT gen_random_uuid(), e.id, NULL, e.call_id, e.sequence, now() + make_interval(secs => $2) \
               FROM events e \
              WHERE (SELECT c.callback_url IS NOT NULL FROM calls c WHERE c.id = e.call_id) \
             ON CONFLICT DO NOTHING RETURNING 1), \
         to_campaign_callbacks AS ( \
             INSERT INTO webhook_deliveries (id, event_id, endpoint_id, campaign_id, sequence, retry_until) \
             SELECT gen_random_uuid(), e.id, NULL, e.campaign_id, e.sequence, now() + make_interval(secs => $2) \
               FROM events e JOIN campaigns k ON k.id = e.campaign_id WHERE k.callback_url IS NOT NULL \
             ON CONFLICT DO NOTHING RETURNING 1) \
         SELECT (SELECT count(*) FROM marked) AS events, \
                (SELECT count(*) FROM to_endpoints) + (SELECT count(*) FROM to_callbacks) \
                  + (SELECT count(*) FROM to_campaign_callbacks) AS deliveries",
        &[&limit, &seconds(retry_window)],
    )
    .await?;
    Ok((
        row.try_get::<_, i64>("events")? as u64,
        row.try_get::<_, i64>("deliveries")? as u64,
    ))
}

/// A delivery taken to be sent now.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: Uuid,
    /// This attempt's number (already logged).
    pub attempt: i32,
    pub endpoint_id: Option<Uuid>,
    pub url: Option<String>,
    /// The endpoint's secret, then its previous one while it still signs; none for a
    /// `callbackUrl` (signed with `CALLBACK_SECRET`).
    pub secrets: Vec<String>,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_created_at: DateTime<Utc>,
    pub data: serde_json::Value,
    /// The call the event reports on; none for a campaign's event.
    pub call_id: Option<Uuid>,
    /// The campaign a `campaign.*` event reports on.
    pub campaign_id: Option<Uuid>,
    pub sequence: i64,
}

/// Leases up to `limit` due deliveries for `lease` and logs their attempt. Deliveries of
/// disabled endpoints are never taken.
pub async fn claim_due(pool: &Pool, limit: i64, lease: Duration) -> StoreResult<Vec<DueDelivery>> {
    let client = pool.get().await?;
    let rows = query(
        &client,
        "WITH due AS ( \
             SELECT d.id FROM webhook_deliveries d \
              WHERE d.status = 'PENDING' AND d.next_attempt_at <= now() \
                AND (d.leased_until IS NULL OR d.leased_until < now()) \
                AND (d.endpoint_id IS NULL OR EXISTS ( \
                     SELECT 1 FROM webhook_endpoints w WHERE w.id = d.endpoint_id AND w.enabled)) \
                AND NOT EXISTS ( \
                     SELECT 1 FROM webhook_deliveries p \
                      WHERE p.call_id = d.call_id AND p.sequence < d.sequence AND p.status = 'PENDING' \
                        AND (p.endpoint_id = d.endpoint_id OR (p.endpoint_id IS NULL AND d.endpoint_id IS NULL))) \
                AND NOT EXISTS ( \
                     SELECT 1 FROM call_events pe \
                      WHERE pe.call_id = d.call_id AND pe.sequence < d.sequence AND pe.fanned_out_at IS NULL) \
                AND (d.campaign_id IS NULL OR NOT EXISTS ( \
                     SELECT 1 FROM webhook_deliveries p \
                      WHERE p.campaign_id = d.campaign_id AND p.sequence < d.sequence AND p.status = 'PENDING' \
                        AND (p.endpoint_id = d.endpoint_id OR (p.endpoint_id IS NULL AND d.endpoint_id IS NULL)))) \
                AND (d.campaign_id IS NULL OR NOT EXISTS ( \
                     SELECT 1 FROM call_events pe \
                      WHERE pe.campaign_id = d.campaign_id AND pe.sequence < d.sequence AND pe.fanned_out_at IS NULL)) \
              ORDER BY d.next_attempt_at \
              LIMIT $1 \
              FOR UPDATE OF d SKIP LOCKED), \
         taken AS ( \
             UPDATE webhook_deliveries d SET attempts = d.attempts + 1, \
                    leased_until = now() + make_interval(secs => $2) \
               FROM due WHERE d.id = due.id \
             RETURNING d.id, d.event_id, d.endpoint_id, d.attempts), \
         logged AS ( \
             INSERT INTO webhook_delivery_attempts (delivery_id, attempt_no) \
             SELECT id, attempts FROM taken RETURNING 1) \
         SELECT t.id, t.attempts, t.endpoint_id, COALESCE(w.url, c.callback_url, k.callback_url) AS url, w.secret, \
                CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret, \
                e.id AS event_id, e.type, e.created_at, e.data, e.call_id, e.campaign_id, e.sequence, \
                (SELECT count(*) FROM logged) AS logged \
           FROM taken t \
           JOIN call_events e ON e.id = t.event_id \
           LEFT JOIN calls c ON c.id = e.call_id \
           LEFT JOIN campaigns k ON k.id = e.campaign_id \
           LEFT JOIN webhook_endpoints w ON w.id = t.endpoint_id \
          ORDER BY e.call_id, e.campaign_id, e.sequence",
        &[&limit, &seconds(lease)],
    )
    .await?;
    if let Some(row) = rows.first() {
        let logged: i64 = row.try_get("logged")?;
        if logged != rows.len() as i64 {
            return Err(StoreError::Corrupt(format!(
                "{} deliveries taken, {logged} attempts logged",
                rows.len()
            )));
        }
    }
    rows.iter()
        .map(|row| {
            let secret: Option<String> = row.try_get("secret")?;
            let previous: Option<String> = row.try_get("previous_secret")?;
            Ok(DueDelivery {
                id: row.try_get("id")?,
                attempt: row.try_get("attempts")?,
                endpoint_id: row.try_get("endpoint_id")?,
                url: row.try_get("url")?,
                secrets: secret.into_iter().chain(previous).collect(),
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("type")?,
                event_created_at: row.try_get("created_at")?,
                data: row.try_get("data")?,
                call_id: row.try_get("call_id")?,
                campaign_id: row.try_get("campaign_id")?,
                sequence: row.try_get("sequence")?,
            })
        })
        .collect()
}

/// What one attempt got, to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub endpoint_id: Option<Uuid>,
    pub status_code: Option<u16>,
    pub latency: Duration,
    /// `None`: a 2xx, delivered.
    pub error: Option<String>,
    /// When a failure is retried, after how long (the caller's backoff).
    pub retry_after: Duration,
}

/// What [`record_attempts`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    pub delivered: u64,
    pub retrying: u64,
    /// Retried for their whole window: FAILED, kept.
    pub failed: u64,
    /// Endpoints disabled now: (id, url, failing since).
    pub disabled: Vec<(Uuid, String, DateTime<Utc>)>,
    /// Attempts whose delivery had been taken again by another notifier (a lease that ran
    /// out): their result is logged, the delivery left to the newer attempt.
    pub stale: u64,
}

/// Records attempts in one transaction: the attempt log, each delivery's new state, the
/// endpoints' failure record, and the endpoints failing for longer than `disable_after`
/// disabled (their pending deliveries FAILED).
pub async fn record_attempts(
    pool: &Pool,
    attempts: &[AttemptRecord],
    disable_after: Duration,
) -> StoreResult<Recorded> {
    if attempts.is_empty() {
        return Ok(Recorded::default());
    }
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    let ids: Vec<Uuid> = attempts.iter().map(|a| a.delivery_id).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    let codes: Vec<Option<i32>> = attempts
        .iter()
        .map(|a| a.status_code.map(i32::from))
        .collect();
    let latencies: Vec<i32> = attempts
        .iter()
        .map(|a| a.latency.as_millis().min(i32::MAX as u128) as i32)
        .collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    let retry_after: Vec<f64> = attempts.iter().map(|a| seconds(a.retry_after)).collect();
    let row = query_one(
        &tx,
        "WITH results AS ( \
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::int[], $5::text[], $6::float8[]) \
                 AS r(delivery_id, attempt_no, status_code, latency_ms, error, retry_after)), \
         logged AS ( \
             UPDATE webhook_delivery_attempts a \
                SET status_code = r.status_code, latency_ms = r.latency_ms, error = r.error \
               FROM results r WHERE a.delivery_id = r.delivery_id AND a.attempt_no = r.attempt_no \
             RETURNING 1), \
         updated AS ( \
             UPDATE webhook_deliveries d SET \
                    status = CASE WHEN r.error IS NULL THEN 'DELIVERED' \
                                  WHEN now() >= d.retry_until THEN 'FAILED' ELSE 'PENDING' END, \
                    delivered_at = CASE WHEN r.error IS NULL THEN now() END, \
                    next_attempt_at = CASE WHEN r.error IS NULL OR now() >= d.retry_until THEN d.next_attempt_at \
                                           ELSE LEAST(now() + make_interval(secs => r.retry_after), d.retry_until) END, \
                    leased_until = NULL, last_status_code = r.status_code, last_error = r.error \
               FROM results r \
              WHERE d.id = r.delivery_id AND d.attempts = r.attempt_no AND d.status = 'PENDING' \
             RETURNING d.status) \
         SELECT (SELECT count(*) FROM logged) AS logged, \
                (SELECT count(*) FROM updated WHERE status = 'DELIVERED') AS delivered, \
                (SELECT count(*) FROM updated WHERE status = 'PENDING') AS retrying, \
                (SELECT count(*) FROM updated WHERE status = 'FAILED') AS failed, \
                (SELECT count(*) FROM updated) AS updated",
        &[&ids, &numbers, &codes, &latencies, &errors, &retry_after],
    )
    .await?;
    let updated: i64 = row.try_get("updated")?;
    let mut recorded = Recorded {
        delivered: row.try_get::<_, i64>("delivered")? as u64,
        retrying: row.try_get::<_, i64>("retrying")? as u64,
        failed: row.try_get::<_, i64>("failed")? as u64,
        disabled: Vec::new(),
        stale: attempts.len() as u64 - updated.max(0) as u64,
    };

    // The endpoints' failure record: a success clears it, a failure starts it.
    let mut succeeded: Vec<Uuid> = Vec::new();
    let mut failing: Vec<Uuid> = Vec::new();
    for attempt in attempts {
        if let Some(endpoint) = attempt.endpoint_id {
            if attempt.error.is_none() {
                succeeded.push(endpoint);
            } else {
                failing.push(endpoint);
            }
        }
    }
    failing.retain(|endpoint| !succeeded.contains(endpoint));
    if !succeeded.is_empty() || !failing.is_empty() {
        super::execute(
            &tx,
            "UPDATE webhook_endpoints SET failing_since = CASE WHEN id = ANY($1) THEN NULL \
                                                              ELSE COALESCE(failing_since, now()) END \
              WHERE id = ANY($1) OR id = ANY($2)",
            &[&succeeded, &failing],
        )
        .await?;
    }
    if !failing.is_empty() {
        let disabled = query(
            &tx,
            "UPDATE webhook_endpoints SET enabled = false, updated_at = now(), \
                    disabled_reason = 'every delivery failed since ' || to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
              WHERE id = ANY($1) AND enabled AND failing_since < now() - make_interval(secs => $2) \
              RETURNING id, url, failing_since",
            &[&failing, &seconds(disable_after)],
        )
        .await?;
        for row in &disabled {
            recorded.disabled.push((
                row.try_get("id")?,
                row.try_get("url")?,
                row.try_get("failing_since")?,
            ));
        }
        if !recorded.disabled.is_empty() {
            let ids: Vec<Uuid> = recorded.disabled.iter().map(|(id, ..)| *id).collect();
            fail_pending_deliveries(
                &tx,
                &ids,
                "the endpoint was disabled: it failed for too long",
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(recorded)
}

/// Whether events wait to be fanned out: what a change's nudge wakes the notifier for.
/// Events nobody would receive are written already fanned out, so with no receivers this
/// is false and a change costs no nudge (an index-only look at an empty partial index).
pub async fn events_to_fan_out(pool: &Pool) -> StoreResult<bool> {
    let client = pool.get().await?;
    Ok(query_one(
        &client,
        "SELECT EXISTS (SELECT 1 FROM call_events WHERE fanned_out_at IS NULL)",
        &[],
    )
    .await?
    .try_get(0)?)
}

/// Work waiting for the notifier now: events not fanned out, or deliveries due and not
/// leased. The reclaimer nudges the notifier when there is (a lost nudge never loses events).
pub async fn work_waiting(pool: &Pool) -> StoreResult<bool> {
    let client = pool.get().await?;
    Ok(query_one(
        &client,
        "SELECT EXISTS (SELECT 1 FROM call_events WHERE fanned_out_at IS NULL) \
             OR EXISTS (SELECT 1 FROM webhook_deliveries \
                         WHERE status = 'PENDING' AND next_attempt_at <= now() \
                           AND (leased_until IS NULL OR leased_until < now()))",
        &[],
    )
    .await?
    .try_get(0)?)
}

/// How long until the next pending delivery is due (zero when one is due now); `None` when
/// none is pending.
pub async fn next_due_in(pool: &Pool) -> StoreResult<Option<Duration>> {
    let client = pool.get().await?;
    let wait: Option<f64> = query_one(
        &client,
        "SELECT GREATEST(EXTRACT(EPOCH FROM min(GREATEST(next_attempt_at, COALESCE(leased_until, next_attempt_at))) - now()), 0)::float8 \
           FROM webhook_deliveries WHERE status = 'PENDING'",
        &[],
    )
    .await?
    .try_get(0)?;
    Ok(wait.map(|w| Duration::from_secs_f64(w.clamp(0.0, 86_400.0 * 31.0))))
}
