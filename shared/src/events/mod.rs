//! Outbound events: what Ebra tells the client about its calls and campaigns.
//!
//! Every change of a call, and every change of a campaign's state (created, paused,
//! resumed, canceled, completed), writes an event row (the outbox, [`crate::store::events`])
//! in the transaction of the change. The notifier fans each event out to the registered
//! endpoints and to the call's (or the campaign's) own `callbackUrl`, and posts it signed the
//! Standard Webhooks way:
//!
//! - [`EventType`]: the kinds of event, and [`EventBody`]: what a receiver gets;
//! - [`destination`]: which URLs may receive events (no private, loopback or link-local
//!   address, checked at registration and again at every connection);
//! - [`delivery`]: the HTTP client that posts them (short timeouts, no redirects, small
//!   bodies) and the signatures;
//! - [`nudge`]: the message that wakes the notifier after a commit that wrote events.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::campaigns::CampaignWithProgress;
use crate::store::{Call, DialAttempt};

pub mod delivery;
pub mod destination;
pub mod nudge;

/// What happened to a call (`call.*`) or to a campaign (`campaign.*`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum EventType {
    /// Accepted (`POST /calls`).
    #[serde(rename = "call.created")]
    Created,
    /// A dial is being placed (PENDING → IN_PROGRESS, or a redial in place).
    #[serde(rename = "call.dialing")]
    Dialing,
    /// A dial failed, or ended BUSY / NO_ANSWER, or hit the provider's concurrency limit,
    /// or went stale: the call is dialed again at `nextRunAt`.
    #[serde(rename = "call.retry_scheduled")]
    RetryScheduled,
    #[serde(rename = "call.completed")]
    Completed,
    #[serde(rename = "call.failed")]
    Failed,
    #[serde(rename = "call.expired")]
    Expired,
    #[serde(rename = "call.canceled")]
    Canceled,
    /// A later report of the call's last dial added to its `result` (Retell's analysis comes
    /// after the end of the call).
    #[serde(rename = "call.result_updated")]
    ResultUpdated,
    /// A campaign was created (`POST /campaigns`).
    #[serde(rename = "campaign.created")]
    CampaignCreated,
    /// An ACTIVE campaign was paused (pausing a paused one reports nothing).
    #[serde(rename = "campaign.paused")]
    CampaignPaused,
    /// A PAUSED campaign was resumed (resuming an active one reports nothing).
    #[serde(rename = "campaign.resumed")]
    CampaignResumed,
    /// A campaign was canceled, with its PENDING calls (each with its own `call.canceled`).
    #[serde(rename = "campaign.canceled")]
    CampaignCanceled,
    /// An ACTIVE campaign's calls have all ended (none PENDING or IN_PROGRESS): found by the
    /// reclaimer's pass, once, and once more each time calls added later have all ended.
    #[serde(rename = "campaign.completed")]
    CampaignCompleted,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::Created,
        EventType::Dialing,
        EventType::RetryScheduled,
        EventType::Completed,
        EventType::Failed,
        EventType::Expired,
        EventType::Canceled,
        EventType::ResultUpdated,
        EventType::CampaignCreated,
        EventType::CampaignPaused,
        EventType::CampaignResumed,
        EventType::CampaignCanceled,
        EventType::CampaignCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "call.created",
            EventType::Dialing => "call.dialing",
            EventType::RetryScheduled => "call.retry_scheduled",
            EventType::Completed => "call.completed",
            EventType::Failed => "call.failed",
            EventType::Expired => "call.expired",
            EventType::Canceled => "call.canceled",
            EventType::ResultUpdated => "call.result_updated",
            EventType::CampaignCreated => "campaign.created",
            EventType::CampaignPaused => "campaign.paused",
            EventType::CampaignResumed => "campaign.resumed",
            EventType::CampaignCanceled => "campaign.canceled",
            EventType::CampaignCompleted => "campaign.completed",
        }
    }

    /// Whether the event reports a change of a campaign (its `data` is the campaign).
    pub fn is_campaign(self) -> bool {
        matches!(
            self,
            EventType::CampaignCreated
                | EventType::CampaignPaused
                | EventType::CampaignResumed
                | EventType::CampaignCanceled
                | EventType::CampaignCompleted
        )
    }

    /// The event of a call that reached `status` (a terminal one).
    pub fn of_terminal(status: crate::domain::CallStatus) -> Option<Self> {
        use crate::domain::CallStatus;
        match status {
            CallStatus::Completed => Some(EventType::Completed),
            CallStatus::Failed => Some(EventType::Failed),
            CallStatus::Expired => Some(EventType::Expired),
            CallStatus::Canceled => Some(EventType::Canceled),
            CallStatus::Pending | CallStatus::InProgress => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = crate::domain::InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                crate::domain::InvalidValue::new(
                    "events",
                    format!(
                        "{s:?} is not an event type; expected one of {}",
                        EventType::ALL.map(EventType::as_str).join(", ")
                    ),
                )
            })
    }
}

/// The call as `GET /calls/{id}` shows it, with its dials: an event's `data`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallSnapshot {
    #[serde(flatten)]
    pub call: Call,
    pub dials: Vec<DialAttempt>,
}

/// An event's `data`: the call as `GET /calls/{id}` shows it (`call.*` events), or the
/// campaign as `GET /campaigns/{id}` shows it, with its progress (`campaign.*` events).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EventData {
    Call(Box<CallSnapshot>),
    Campaign(Box<CampaignWithProgress>),
}

/// What a receiver gets: `{type, id, createdAt, data}`. `id` is also the `webhook-id`
/// header, the same on every retry of the event; `data.sequence` orders a call's events
/// (or a campaign's). `data` is the call for `call.*` events, the campaign with its
/// progress for `campaign.*` events.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(examples(
    json!({"type": "call.completed", "id": "01a22af0-a1c3-76df-8492-e8f27fe14045",
           "createdAt": "2026-11-30T05:32:22.835488Z",
           "data": {"id": "01a22af0-9468-77ca-9b1c-fd0b43372efc", "to": "+14155550100",
                    "scriptId": "renewal-v2", "metadata": {"crmId": "lead-42"}, "callbackUrl": null,
                    "status": "COMPLETED", "attempts": 1, "maxAttempts": 3, "lastError": null,
                    "outcome": "COMPLETED", "durationSec": 42, "result": {"summary": "Booked a visit."},
                    "scheduledAt": null, "expiresAt": null, "nextRunAt": "2026-11-30T05:31:40Z",
                    "createdAt": "2026-11-30T05:31:40Z", "updatedAt": "2026-11-30T05:32:22Z",
                    "startedAt": "2026-11-30T05:31:41Z", "endedAt": "2026-11-30T05:32:22Z",
                    "sequence": 3, "campaignId": null, "dials": []}}),
    json!({"type": "campaign.completed", "id": "019ad3a1-5c7e-7b31-9f0e-2a4d1c9b8e07",
           "createdAt": "2026-11-30T11:02:00.512344Z",
           "data": {"id": "019ad39e-0b7a-7d42-8c55-6e1f2a3b4c5d", "name": "Spring renewals",
                    "scriptId": "renewal-v2", "maxConcurrency": 20, "expiresAt": null,
                    "callbackUrl": "https://crm.example.com/hooks/campaigns", "window": null,
                    "status": "COMPLETED", "createdAt": "2026-11-30T09:15:04.118Z",
                    "updatedAt": "2026-11-30T09:40:11.902Z", "canceledAt": null,
                    "completedAt": "2026-11-30T11:02:00.512344Z", "sequence": 4,
                    "progress": {"calls": {"PENDING": 0, "IN_PROGRESS": 0, "COMPLETED": 912,
                                           "FAILED": 61, "EXPIRED": 2, "CANCELED": 25},
                                 "total": 1000, "inProgress": 0, "maxConcurrency": 20,
                                 "dialsLastHour": 143, "etaSeconds": null,
                                 "failures": [{"status": "FAILED", "outcome": "NO_ANSWER",
                                               "lastError": null, "calls": 48}]}}})
))]
pub struct EventBody {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub data: EventData,
}

impl EventBody {
    /// The body as posted (compact JSON).
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// How long to wait before retrying a delivery after its attempt `failed_attempt` (1-based)
/// failed: `base · 2^(n−1)` plus up to 25 % jitter, never more than `max`.
pub fn retry_delay(
    base: std::time::Duration,
    max: std::time::Duration,
    failed_attempt: u32,
) -> std::time::Duration {
    use rand::Rng as _;
    let exponent = failed_attempt.saturating_sub(1).min(32);
    let delay = base.saturating_mul(1u32 << exponent.min(31)).min(max);
    delay
        .mul_f64(1.0 + rand::rng().random_range(0.0..0.25))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_retries_double_up_to_the_cap() {
        use std::time::Duration;
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(7200));
        for (attempt, at_least) in [(1, 5), (2, 10), (3, 20), (10, 2560), (40, 7200)] {
            let delay = retry_delay(base, max, attempt);
            assert!(
                delay >= Duration::from_secs(at_least).min(max),
                "{attempt}: {delay:?}"
            );
            assert!(
                delay <= Duration::from_secs(at_least).mul_f64(1.25).min(max),
                "{attempt}: {delay:?}"
            );
        }
        // A day of retries at the defaults: a handful of quick ones, then every two hours.
        let mut elapsed = Duration::ZERO;
        let mut attempts = 1;
        while elapsed < Duration::from_secs(86_400) {
            elapsed += retry_delay(base, max, attempts);
            attempts += 1;
        }
        assert!(
            (15..=40).contains(&attempts),
            "{attempts} attempts in a day"
        );
    }

    #[test]
    fn event_types_round_trip() {
        for kind in EventType::ALL {
            assert_eq!(kind.as_str().parse::<EventType>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().to_owned())
            );
        }
        assert!("call.ringing".parse::<EventType>().is_err());
        assert!("campaign.*".parse::<EventType>().is_err());
        let campaign: Vec<_> = EventType::ALL
            .into_iter()
            .filter(|kind| kind.is_campaign())
            .collect();
        assert_eq!(campaign.len(), 5);
        assert!(campaign
            .iter()
            .all(|kind| kind.as_str().starts_with("campaign.")));
        assert!(EventType::ALL
            .into_iter()
            .filter(|kind| !kind.is_campaign())
            .all(|kind| kind.as_str().starts_with("call.")));
    }
}
