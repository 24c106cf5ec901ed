//! Every SQL statement Ebra runs, as named queries. Handlers call these; no SQL lives
//! anywhere else.
//!
//! - [`calls`]: create, read, list, patch, cancel, metrics (the API).
//! - [`campaigns`]: campaigns, their calls added in bulk, their progress, pause, resume,
//!   cancel, and the fair pick of waiting calls across them.
//! - [`claim`]: taking a call under the global cap and the per-phone rule (invariants 1, 2).
//! - [`dial`]: recording what the provider answered to a dial.
//! - [`settle`]: applying provider outcomes from webhooks (invariant 5).
//! - [`sweep`]: the reclaimer's passes (invariant 4).
//! - [`slots`]: releasing slots and nudging waiting calls (invariant 8).
//! - [`webhooks`]: the provider's reports received for a call (the console's timeline).
//! - [`history`]: calls in progress per minute, from the dials (the console's chart).
//! - [`events`]: the outbox of outbound events, written in the transaction of each change.
//! - [`endpoints`]: the webhook endpoints clients register.
//! - [`deliveries`]: the notifier's fan-out, claims and records of event deliveries.
//! - [`suppressions`]: the do-not-call list and its audit trail (issue 14).
//!
//! Many columns have a domain as their type (`call_status`, `e164_phone`, `json_object`,
//! ...; migration V13). A parameter assigned straight to one (`VALUES ($1)`, `SET status =
//! $1`) is cast to the base type (`$1::text`): Postgres would type it as the domain, which
//! the client does not bind Rust values to. An array built from such a column is
//! aggregated as the base type (`array_agg(provider_call_id::text)`) for the same reason.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::call_result::CallResult;
use crate::domain::{CallOutcome, CallStatus, DialOutcome};
use crate::rules::{CallingWindow, WindowSpec};

pub mod calls;
pub mod campaigns;
pub mod claim;
pub mod deliveries;
pub mod dial;
pub mod endpoints;
pub mod events;
pub mod history;
pub mod settle;
pub mod slots;
pub mod suppressions;
pub mod sweep;
pub mod tx;
pub mod webhooks;

pub use deadpool_postgres::Pool;
pub use tx::{Executor, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("unexpected data in the database: {0}")]
    Corrupt(String),
    /// A statement sent after its transaction's `COMMIT` (see [`Transaction`]): a bug.
    #[error("a statement came after its transaction's commit")]
    AfterCommit,
}

impl StoreError {
    /// The Postgres error code, when the database answered with one.
    pub fn sql_state(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            StoreError::Db(e) => e.code(),
            _ => None,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Runs a statement through the connection's prepared-statement cache.
pub(crate) async fn query<C: Executor>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<Row>> {
    let statement = client.prepare_cached(sql).await?;
    client.query(&statement, params).await
}

pub(crate) async fn query_opt<C: Executor>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Option<Row>> {
    let statement = client.prepare_cached(sql).await?;
    client.query_opt(&statement, params).await
}

pub(crate) async fn query_one<C: Executor>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Row> {
    let statement = client.prepare_cached(sql).await?;
    client.query_one(&statement, params).await
}

pub(crate) async fn execute<C: Executor>(
    client: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<u64> {
    let statement = client.prepare_cached(sql).await?;
    client.execute(&statement, params).await
}

/// A call as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    pub id: Uuid,
    /// The phone number dialed, E.164.
    #[schema(example = "+14155550100")]
    pub to: String,
    pub script_id: String,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Where this call's events are also sent (signed with the deployment's callback
    /// secret).
    pub callback_url: Option<String>,
    pub status: CallStatus,
    /// Dials made so far.
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    /// What the provider reported for the last settled dial.
    pub outcome: Option<CallOutcome>,
    pub duration_sec: Option<i32>,
    /// What the provider reported beyond the outcome for the last settled dial: summary,
    /// transcript (or its link), recording link, analysis, end reason.
    pub result: Option<CallResult>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the call may next be dialed.
    pub next_run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// How many events the call has had: each event carries the value right after its
    /// change, so a receiver can order a call's events and drop stale ones.
    pub sequence: i64,
    /// The campaign the call belongs to; null for a call on its own. (`default`: events
    /// written before campaigns existed read back without it.)
    #[serde(default)]
    pub campaign_id: Option<Uuid>,
    /// The calling window that applies, in the callee's local time (the call's own, else
    /// the deployment's `CALL_WINDOW`); null: any time.
    #[serde(default)]
    pub window: Option<WindowSpec>,
    /// The IANA time zone the call was created with; null: the zones come from the number.
    #[serde(default)]
    #[schema(example = "America/New_York")]
    pub timezone: Option<String>,
    /// The callee's resolved time zones: `timezone`, else those of the number's area (the
    /// window must hold in all of them).
    #[serde(default)]
    pub time_zones: Vec<String>,
    /// While the call waits outside its window: when the window next opens (null when it is
    /// open, or the call has none, or is not PENDING). Shown by `GET /calls/{id}`.
    #[serde(default)]
    pub window_opens_at: Option<DateTime<Utc>>,
}

impl Call {
    /// Fills in [`Call::window_opens_at`] as of `now`.
    pub fn with_window_opening(mut self, now: DateTime<Utc>) -> Self {
        self.window_opens_at = None;
        if self.status != CallStatus::Pending {
            return self;
        }
        let Some(spec) = &self.window else {
            return self;
        };
        let Ok(window) = CallingWindow::from_spec("window", spec) else {
            return self;
        };
        let zones: Vec<crate::rules::TimeZone> = self
            .time_zones
            .iter()
            .filter_map(|name| crate::rules::TimeZone::get(name))
            .collect();
        if !window.is_open(&zones, now) {
            self.window_opens_at = window.next_opening(&zones, now);
        }
        self
    }
}

/// One dial of a call: the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DialAttempt {
    pub attempt: i32,
    /// The `Idempotency-Key` sent to the provider.
    pub idempotency_key: Uuid,
    /// DIALING, ACCEPTED, UNKNOWN (may have been placed), REJECTED, or LIMITED (refused
    /// for the provider's concurrency limit: not counted as an attempt).
    pub dial_state: String,
    pub provider_call_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub dialed_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<DialOutcome>,
    /// The provider's own words for how the call ended (Retell's `disconnection_reason`,
    /// Vapi's `endedReason`, ...).
    pub end_reason: Option<String>,
    pub duration_sec: Option<i32>,
    pub error: Option<String>,
}

pub(crate) const CALL_COLUMNS: &str = "id, phone, script_id, metadata, status, attempts, \
    max_attempts, last_error, outcome, duration_sec, scheduled_at, expires_at, next_run_at, \
    created_at, updated_at, started_at, ended_at, sequence, result, callback_url, campaign_id, \
    calling_window, timezone, time_zones";

pub(crate) fn call_from_row(row: &Row) -> StoreResult<Call> {
    let status: String = row.try_get("status")?;
    let outcome: Option<String> = row.try_get("outcome")?;
    Ok(Call {
        id: row.try_get("id")?,
        to: row.try_get("phone")?,
        script_id: row.try_get("script_id")?,
        metadata: row.try_get("metadata")?,
        callback_url: row.try_get("callback_url")?,
        status: status
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("call status {status:?}")))?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        last_error: row.try_get("last_error")?,
        outcome: parse_outcome(outcome)?,
        duration_sec: row.try_get("duration_sec")?,
        result: row
            .try_get::<_, Option<serde_json::Value>>("result")?
            .as_ref()
            .and_then(CallResult::from_stored),
        scheduled_at: row.try_get("scheduled_at")?,
        expires_at: row.try_get("expires_at")?,
        next_run_at: row.try_get("next_run_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        sequence: row.try_get("sequence")?,
        campaign_id: row.try_get("campaign_id")?,
        window: row
            .try_get::<_, Option<serde_json::Value>>("calling_window")?
            .map(|value| {
                serde_json::from_value(value.clone())
                    .map_err(|_| StoreError::Corrupt(format!("calling window {value}")))
            })
            .transpose()?,
        timezone: row.try_get("timezone")?,
        time_zones: row.try_get("time_zones")?,
        window_opens_at: None,
    })
}

pub(crate) fn parse_outcome(raw: Option<String>) -> StoreResult<Option<CallOutcome>> {
    raw.map(|o| {
        o.parse()
            .map_err(|_| StoreError::Corrupt(format!("outcome {o:?}")))
    })
    .transpose()
}

pub(crate) fn parse_dial_outcome(raw: Option<String>) -> StoreResult<Option<DialOutcome>> {
    raw.map(|o| {
        o.parse()
            .map_err(|_| StoreError::Corrupt(format!("dial outcome {o:?}")))
    })
    .transpose()
}

pub(crate) fn parse_status(raw: &str) -> StoreResult<CallStatus> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("call status {raw:?}")))
}

/// Seconds as the float Postgres' `make_interval(secs => ...)` takes.
pub(crate) fn seconds(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64()
}
