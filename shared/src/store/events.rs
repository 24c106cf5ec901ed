//! The outbox of outbound events: one `call_events` row per change of a call (or of a
//! campaign's state, `record_campaign_event`), written in the transaction of the change (so
//! an event is never reported for a change that rolled back, and never lost for one that
//! committed), and what the API reads back of them.
//!
//! Every statement that changes a call in a way an event reports also increments the call's
//! `sequence`; the event written right after it carries that value and a snapshot of the
//! call, with its dials, as `GET /calls/{id}` shows it ([`snapshot_sql`]). Writes of one
//! transaction are set-based: one `INSERT ... SELECT` for a whole batch of calls.

use std::sync::LazyLock;

use super::Executor;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{execute, query, query_opt, Pool, StoreError, StoreResult};
use crate::events::{CallSnapshot, EventBody, EventData, EventType};
use crate::store::campaigns::CampaignWithProgress;

/// SQL: the call of alias `c` as a `jsonb` object with the keys of [`crate::store::Call`]
/// and its dials, as `GET /calls/{id}` shows it. Timestamps are Postgres' ISO 8601;
/// [`render_snapshot`] re-reads them into the API's types.
///
/// The dials are read from `dials`, a `FROM` item of `call_attempts`' columns aliased `a`:
/// `call_attempts a`, or, for a statement that inserts a dial and writes its event at once
/// (the claim's take, whose reads cannot see the rows the statement itself inserts),
/// `call_attempts` with the inserted rows appended.
fn snapshot_sql(c: &str, dials: &str) -> String {
    format!(
        "jsonb_build_object(\
            'id', {c}.id, 'to', {c}.phone, 'scriptId', {c}.script_id, 'metadata', {c}.metadata, \
            'callbackUrl', {c}.callback_url, 'status', {c}.status, 'attempts', {c}.attempts, \
            'maxAttempts', {c}.max_attempts, 'lastError', {c}.last_error, 'outcome', {c}.outcome, \
            'durationSec', {c}.duration_sec, 'result', {c}.result, 'scheduledAt', {c}.scheduled_at, \
            'expiresAt', {c}.expires_at, 'nextRunAt', {c}.next_run_at, 'createdAt', {c}.created_at, \
            'updatedAt', {c}.updated_at, 'startedAt', {c}.started_at, 'endedAt', {c}.ended_at, \
            'sequence', {c}.sequence, 'campaignId', {c}.campaign_id, \
            'window', {c}.calling_window, 'timezone', {c}.timezone, 'timeZones', {c}.time_zones, \
            'dials', COALESCE((SELECT jsonb_agg(jsonb_build_object(\
                'attempt', a.attempt_no, 'idempotencyKey', a.idempotency_key, \
                'dialState', a.dial_state, 'providerCallId', a.provider_call_id, \
                'startedAt', a.started_at, 'dialedAt', a.dialed_at, 'endedAt', a.ended_at, \
                'outcome', a.outcome, 'endReason', a.end_reason, 'durationSec', a.duration_sec, \
                'error', a.error) ORDER BY a.attempt_no) \
              FROM {dials} WHERE a.call_id = {c}.id), '[]'::jsonb))"
    )
}

/// SQL: an `INSERT` of one event of type `kind` (an SQL expression) for each call `c` of
/// `from` (what follows `FROM`, naming the changed calls, as they are after the change,
/// `c`), with the id `event_id` (an SQL expression), the call's `sequence`, its snapshot
/// ([`snapshot_sql`]) and its [`fanned_out_at_sql`]. The statement appends its `RETURNING`,
/// if any.
pub(crate) fn insert_events_sql(event_id: &str, kind: &str, from: &str) -> String {
    insert_events_with_dials_sql(event_id, kind, from, "call_attempts a")
}

/// [`insert_events_sql`] with the snapshots' dials read from `dials` ([`snapshot_sql`]).
pub(crate) fn insert_events_with_dials_sql(
    event_id: &str,
    kind: &str,
    from: &str,
    dials: &str,
) -> String {
    format!(
        "INSERT INTO call_events (id, call_id, sequence, type, data, fanned_out_at) \
         SELECT {event_id}, c.id, c.sequence, {kind}, {}, {} FROM {from}",
        snapshot_sql("c", dials),
        fanned_out_at_sql("c", kind)
    )
}

/// SQL: when an event of type `kind` (an SQL expression) of the call of alias `c` is
/// written, `now()` if nobody would receive it — the call has no `callbackUrl` and no
/// enabled endpoint is subscribed to that type — else NULL. The event is then written
/// already fanned out: the notifier never looks at it, and nobody is woken for it (an
/// endpoint receives the events of changes made after its registration, as the fan-out
/// itself has it). It stays readable on the call (`GET /calls/{id}/events`).
fn fanned_out_at_sql(c: &str, kind: &str) -> String {
    format!(
        "CASE WHEN {c}.callback_url IS NULL AND NOT EXISTS ( \
             SELECT 1 FROM webhook_endpoints w \
              WHERE w.enabled AND (w.event_types IS NULL OR {kind} = ANY (w.event_types))) \
         THEN now() END"
    )
}

/// Writes one event for each `(call, type)`, after the statement that changed each call
/// (and incremented its `sequence`) in this transaction: one statement for all of them.
pub(crate) async fn record_events<C: Executor>(
    client: &C,
    events: &[(Uuid, EventType)],
) -> StoreResult<()> {
    match events {
        [] => Ok(()),
        [(call_id, kind)] => record_event(client, *call_id, *kind).await,
        _ => {
            let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
            let calls: Vec<Uuid> = events.iter().map(|(call, _)| *call).collect();
            let types: Vec<&str> = events.iter().map(|(_, kind)| kind.as_str()).collect();
            let written = execute(client, &RECORD_EVENTS, &[&ids, &calls, &types]).await?;
            expect_written(events.len(), written)
        }
    }
}

/// Writes one event for a call changed just before in this transaction.
///
/// Its own statement rather than a batch of one: without an array parameter, whose length
/// the planner cannot know, Postgres settles on one generic plan for it after a few runs,
/// instead of planning the snapshot's query again on every event (measured under
/// `ebra bench --only e2e`: a quarter of a millisecond of planning per event).
pub(crate) async fn record_event<C: Executor>(
    client: &C,
    call_id: Uuid,
    kind: EventType,
) -> StoreResult<()> {
    let written = execute(
        client,
        &RECORD_EVENT,
        &[&Uuid::now_v7(), &call_id, &kind.as_str()],
    )
    .await?;
    expect_written(1, written)
}

/// [`record_events`]' statement, built once (each change of a call writes an event).
static RECORD_EVENTS: LazyLock<String> = LazyLock::new(|| {
    insert_events_sql(
        "e.event_id",
        "e.type",
        "unnest($1::uuid[], $2::uuid[], $3::text[]) AS e(event_id, call_id, type) \
           JOIN calls c ON c.id = e.call_id",
    )
});

/// [`record_event`]'s statement, built once.
static RECORD_EVENT: LazyLock<String> =
    LazyLock::new(|| insert_events_sql("$1", "$3::text", "calls c WHERE c.id = $2"));

pub(crate) fn expect_written(asked: usize, written: u64) -> StoreResult<()> {
    if written != asked as u64 {
        return Err(StoreError::Corrupt(format!(
            "{asked} events asked for, {written} written"
        )));
    }
    Ok(())
}

/// Writes the `campaign.*` event of a campaign changed just before in this transaction (its
/// `sequence` incremented by that change): its `data` is the campaign with its progress as
/// `GET /campaigns/{id}` shows it, read in this transaction, and returned. As for a call's
/// events, one nobody would receive (no `callbackUrl` on the campaign, no enabled endpoint
/// subscribed to the type) is written already fanned out.
pub(crate) async fn record_campaign_event<C: Executor>(
    client: &C,
    campaign_id: Uuid,
    kind: EventType,
) -> StoreResult<CampaignWithProgress> {
    if !kind.is_campaign() {
        return Err(StoreError::Corrupt(format!(
            "{kind} is not a campaign event (campaign {campaign_id})"
        )));
    }
    let snapshot = super::campaigns::snapshot_of(client, campaign_id)
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt(format!("campaign {campaign_id} changed but not found"))
        })?;
    let data = serde_json::to_value(&snapshot)
        .map_err(|e| StoreError::Corrupt(format!("campaign {campaign_id}'s snapshot: {e}")))?;
    let sql = format!(
        "INSERT INTO call_events (id, campaign_id, sequence, type, data, fanned_out_at) \
         SELECT $1, k.id, k.sequence, $3::text, $4::jsonb, {} FROM campaigns k WHERE k.id = $2",
        fanned_out_at_sql("k", "$3::text")
    );
    let written = execute(
        client,
        &sql,
        &[&Uuid::now_v7(), &campaign_id, &kind.as_str(), &data],
    )
    .await?;
    if written != 1 {
        return Err(StoreError::Corrupt(format!(
            "the {kind} event of campaign {campaign_id}: {written} rows written"
        )));
    }
    tracing::debug!(campaign_id = %campaign_id, event_type = %kind, sequence = snapshot.campaign.sequence, "campaign event written");
    Ok(snapshot)
}

/// A stored snapshot as the API shows a call (the API's timestamp format, the result's
/// bounds applied).
pub fn render_snapshot(data: serde_json::Value) -> StoreResult<CallSnapshot> {
    serde_json::from_value(data)
        .map_err(|e| StoreError::Corrupt(format!("an event's snapshot does not read back: {e}")))
}

/// An event as stored: what is posted, and when.
pub fn event_body(
    id: Uuid,
    kind: &str,
    created_at: DateTime<Utc>,
    data: serde_json::Value,
) -> StoreResult<EventBody> {
    let kind: EventType = kind
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("event type {kind:?}")))?;
    let data = if kind.is_campaign() {
        // Written from the API's own type: it reads back as it was written.
        EventData::Campaign(Box::new(serde_json::from_value(data).map_err(|e| {
            StoreError::Corrupt(format!(
                "a campaign event's snapshot does not read back: {e}"
            ))
        })?))
    } else {
        EventData::Call(Box::new(render_snapshot(data)?))
    };
    Ok(EventBody {
        kind,
        id,
        created_at,
        data,
    })
}

/// One attempt to deliver an event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    /// The receiver's HTTP status; null when it did not answer.
    pub status_code: Option<i32>,
    pub latency_ms: Option<i32>,
    /// Why it failed (null: a 2xx). "no result recorded" when the notifier stopped
    /// between sending and recording (the delivery is then sent again).
    pub error: Option<String>,
}

/// An event's delivery to one receiver.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDelivery {
    pub id: Uuid,
    /// The webhook endpoint; null for the call's own `callbackUrl`.
    pub endpoint_id: Option<Uuid>,
    /// Where it goes (the endpoint's URL now, or the call's `callbackUrl`).
    pub url: Option<String>,
    /// PENDING (to be sent, or retried at `nextAttemptAt`), DELIVERED, or FAILED (retried
    /// for the whole retry window, or its endpoint was disabled); kept either way.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Retried until then.
    pub retry_until: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<DeliveryAttempt>,
}

/// An event of a call, with its deliveries.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedEvent {
    /// Also the `webhook-id` of every delivery of it.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub sequence: i64,
    pub created_at: DateTime<Utc>,
    /// When the notifier made its deliveries; null while it has not yet.
    pub fanned_out_at: Option<DateTime<Utc>>,
    /// The call as the event reports it (what receivers get as `data`).
    pub data: CallSnapshot,
    pub deliveries: Vec<EventDelivery>,
}

/// A call's events in sequence order (at most `limit`), each with its deliveries and their
/// attempts; `None` when the call does not exist.
pub async fn events_for_call(
    pool: &Pool,
    call_id: Uuid,
    limit: i64,
) -> StoreResult<Option<Vec<RecordedEvent>>> {
    let client = pool.get().await?;
    if query_opt(&client, "SELECT 1 FROM calls WHERE id = $1", &[&call_id])
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = query(
        &client,
        "SELECT id, type, sequence, created_at, fanned_out_at, data FROM call_events \
          WHERE call_id = $1 ORDER BY sequence LIMIT $2",
        &[&call_id, &limit],
    )
    .await?;
    let event_ids: Vec<Uuid> = rows
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    let deliveries = query(
        &client,
        "SELECT d.id, d.event_id, d.endpoint_id, COALESCE(w.url, c.callback_url) AS url, d.status, \
                d.attempts, CASE WHEN d.status = 'PENDING' THEN d.next_attempt_at END AS next_attempt_at, \
                d.retry_until, d.delivered_at, d.last_status_code, d.last_error \
           FROM webhook_deliveries d \
           LEFT JOIN webhook_endpoints w ON w.id = d.endpoint_id \
           JOIN calls c ON c.id = d.call_id \
          WHERE d.event_id = ANY($1) ORDER BY d.created_at, d.id",
        &[&event_ids],
    )
    .await?;
    let delivery_ids: Vec<Uuid> = deliveries
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    let attempts = query(
        &client,
        "SELECT delivery_id, attempt_no, attempted_at, status_code, latency_ms, \
                CASE WHEN status_code IS NULL AND error IS NULL THEN 'no result recorded' ELSE error END AS error \
           FROM webhook_delivery_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt_no",
        &[&delivery_ids],
    )
    .await?;
    let mut log: std::collections::HashMap<Uuid, Vec<DeliveryAttempt>> = Default::default();
    for row in &attempts {
        log.entry(row.try_get("delivery_id")?)
            .or_default()
            .push(DeliveryAttempt {
                attempt: row.try_get("attempt_no")?,
                attempted_at: row.try_get("attempted_at")?,
                status_code: row.try_get("status_code")?,
                latency_ms: row.try_get("latency_ms")?,
                error: row.try_get("error")?,
            });
    }
    let mut by_event: std::collections::HashMap<Uuid, Vec<EventDelivery>> = Default::default();
    for row in &deliveries {
        let id: Uuid = row.try_get("id")?;
        by_event
            .entry(row.try_get("event_id")?)
            .or_default()
            .push(EventDelivery {
                id,
                endpoint_id: row.try_get("endpoint_id")?,
                url: row.try_get("url")?,
                status: row.try_get("status")?,
                attempts: row.try_get("attempts")?,
                next_attempt_at: row.try_get("next_attempt_at")?,
                retry_until: row.try_get("retry_until")?,
                delivered_at: row.try_get("delivered_at")?,
                last_status_code: row.try_get("last_status_code")?,
                last_error: row.try_get("last_error")?,
                attempt_log: log.remove(&id).unwrap_or_default(),
            });
    }
    rows.iter()
        .map(|row| {
            let id: Uuid = row.try_get("id")?;
            let kind: String = row.try_get("type")?;
            Ok(RecordedEvent {
                id,
                kind: kind
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("event type {kind:?}")))?,
                sequence: row.try_get("sequence")?,
                created_at: row.try_get("created_at")?,
                fanned_out_at: row.try_get("fanned_out_at")?,
                data: render_snapshot(row.try_get("data")?)?,
                deliveries: by_event.remove(&id).unwrap_or_default(),
            })
        })
        .collect::<StoreResult<Vec<_>>>()
        .map(Some)
}

/// What [`redeliver_event`] did.
#[derive(Debug, Clone)]
pub enum Redelivered {
    /// The deliveries queued again (one per receiver).
    Queued(Vec<Uuid>),
    /// No such event.
    NotFound,
}

/// Sends an event again: to every enabled endpoint subscribed to its type, and to the call's
/// (or the campaign's) `callbackUrl`, each delivery due now and retried for `retry_window` from now (an earlier
/// delivery of it, delivered or failed, is reopened with its attempt log kept).
pub async fn redeliver_event(
    pool: &Pool,
    event_id: Uuid,
    retry_window: std::time::Duration,
) -> StoreResult<Redelivered> {
    let client = pool.get().await?;
    if query_opt(
        &client,
        "SELECT 1 FROM call_events WHERE id = $1",
        &[&event_id],
    )
    .await?
    .is_none()
    {
        return Ok(Redelivered::NotFound);
    }
    let rows = query(
        &client,
        "WITH e AS (SELECT id, call_id, campaign_id, sequence, type FROM call_events WHERE id = $1), \
         targets AS ( \
             SELECT w.id AS endpoint_id FROM webhook_endpoints w, e \
              WHERE w.enabled AND (w.event_types IS NULL OR e.type = ANY (w.event_types)) \
             UNION ALL \
             SELECT NULL FROM e JOIN calls c ON c.id = e.call_id WHERE c.callback_url IS NOT NULL \
             UNION ALL \
             SELECT NULL FROM e JOIN campaigns k ON k.id = e.campaign_id WHERE k.callback_url IS NOT NULL) \
         INSERT INTO webhook_deliveries (id, event_id, endpoint_id, call_id, campaign_id, sequence, retry_until) \
         SELECT gen_random_uuid(), e.id, t.endpoint_id, e.call_id, e.campaign_id, e.sequence, \
                now() + make_interval(secs => $2) \
           FROM e, targets t \
         ON CONFLICT (event_id, endpoint_id) DO UPDATE \
            SET status = 'PENDING', next_attempt_at = now(), leased_until = NULL, \
                retry_until = EXCLUDED.retry_until, delivered_at = NULL \
         RETURNING id",
        &[&event_id, &retry_window.as_secs_f64()],
    )
    .await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(StoreError::from))
        .collect::<StoreResult<Vec<_>>>()
        .map(Redelivered::Queued)
}
