//! The provider's reports as received: what the console shows on a call's page next to its
//! dials. Reports are stored by the webhook handler (`settle`) under their delivery id (the
//! Standard Webhooks `webhook-id`, or the provider, call and event for the others; a status
//! the reclaimer read from the provider's API is stored as `lookup:...`) and matched to a
//! dial by the provider's call id (or the attempt key the provider echoed back).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{parse_dial_outcome, query, query_opt, Pool, StoreError, StoreResult};
use crate::domain::DialOutcome;

/// One webhook received for one of a call's dials.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedWebhook {
    /// The delivery's id: a redelivery of the same report has the same id and is stored
    /// once (`webhook-id`; `retell:<call>:<event>` and the like for providers that send
    /// none; `lookup:...` for a status the reclaimer read from the provider).
    pub webhook_id: String,
    /// Whose report: http (the generic contract), retell, vapi, twilio or elevenlabs.
    pub provider: String,
    pub provider_call_id: String,
    /// The dial (attempt number) the report names.
    pub attempt: i32,
    /// The outcome the provider reported (LIMITED: its concurrency limit stopped the call).
    pub status: DialOutcome,
    /// The provider's own end reason.
    pub end_reason: Option<String>,
    pub duration_sec: Option<i32>,
    /// When the provider says the call ended.
    pub completed_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    /// When it was applied to its dial; null while it waits for the dial to be recorded.
    pub applied_at: Option<DateTime<Utc>>,
    /// What applying it did: APPLIED (it moved the call), ALREADY_SETTLED (the dial had an
    /// outcome already), CALL_FINAL (the call had ended), SUPERSEDED (a newer dial exists).
    pub disposition: Option<String>,
}

/// A call's webhooks, oldest first, at most `limit`; `None` when the call does not exist.
pub async fn webhooks_for_call(
    pool: &Pool,
    call_id: Uuid,
    limit: i64,
) -> StoreResult<Option<Vec<ReceivedWebhook>>> {
    let client = pool.get().await?;
    if query_opt(&client, "SELECT 1 FROM calls WHERE id = $1", &[&call_id])
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = query(
        &client,
        "SELECT w.webhook_id, w.provider, w.provider_call_id, a.attempt_no, w.status, w.end_reason, \
                w.duration_sec, w.completed_at, w.received_at, w.applied_at, w.disposition \
           FROM call_attempts a \
           JOIN provider_webhooks w ON w.provider_call_id = a.provider_call_id \
          WHERE a.call_id = $1 \
          ORDER BY w.received_at, w.webhook_id \
          LIMIT $2",
        &[&call_id, &limit],
    )
    .await?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(ReceivedWebhook {
                webhook_id: row.try_get("webhook_id")?,
                provider: row.try_get("provider")?,
                provider_call_id: row.try_get("provider_call_id")?,
                attempt: row.try_get("attempt_no")?,
                status: parse_dial_outcome(Some(status))?
                    .ok_or_else(|| StoreError::Corrupt("a webhook without a status".to_owned()))?,
                end_reason: row.try_get("end_reason")?,
                duration_sec: row.try_get("duration_sec")?,
                completed_at: row.try_get("completed_at")?,
                received_at: row.try_get("received_at")?,
                applied_at: row.try_get("applied_at")?,
                disposition: row.try_get("disposition")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()
        .map(Some)
}
