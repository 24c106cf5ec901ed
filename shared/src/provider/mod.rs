//! The AI-call provider port: everything the rest of Ebra knows about a provider.
//!
//! One module per provider, each with the same four pieces — the dial, the webhook
//! verification, the report parsing and the status lookup — and nothing outside it names
//! the provider's wire format:
//!
//! | module | `PROVIDER` | dial | webhook route |
//! |---|---|---|---|
//! | [`simulator`] | `simulator` | in process | `/callbacks/call-status` (it signs like `http`) |
//! | [`http`] | `http` | `POST {PROVIDER_BASE_URL}/api/v1/calls` | `/callbacks/call-status` (Standard Webhooks) |
//! | [`retell`] | `retell` | `POST /v2/create-phone-call` | `/callbacks/retell` |
//! | [`vapi`] | `vapi` | `POST /call` | `/callbacks/vapi` |
//! | [`twilio`] | `twilio` | `POST /2010-04-01/Accounts/{sid}/Calls.json` | `/callbacks/twilio` |
//! | [`elevenlabs`] | `elevenlabs` | `POST /v1/convai/twilio/outbound-call` | `/callbacks/elevenlabs` |
//!
//! What stays provider-neutral lives here: [`dial_once`], which keeps invariant 3 (no
//! double dial) for providers that take no idempotency key by looking the call up before
//! any redial, and the shapes every adapter maps onto ([`DialResult`], [`CallLookup`],
//! [`ProviderReport`]). Backoff, settlement and the cap never see a provider's format.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use uuid::Uuid;

use crate::call_result::CallResult;
use crate::config::{Config, ProviderSettings};
use crate::domain::CallOutcome;
use crate::webhook_signature::VerifyError;

pub mod elevenlabs;
pub mod http;
pub mod retell;
pub mod simulator;
mod transport;
pub mod twilio;
pub mod vapi;

pub use http::{HttpProvider, StandardWebhooks};
pub use simulator::{Simulator, SimulatorSettings};

/// Which provider Ebra dials (`PROVIDER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Simulator,
    Http,
    Retell,
    Vapi,
    Twilio,
    ElevenLabs,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Simulator,
        ProviderKind::Http,
        ProviderKind::Retell,
        ProviderKind::Vapi,
        ProviderKind::Twilio,
        ProviderKind::ElevenLabs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Simulator => "simulator",
            ProviderKind::Http => "http",
            ProviderKind::Retell => "retell",
            ProviderKind::Vapi => "vapi",
            ProviderKind::Twilio => "twilio",
            ProviderKind::ElevenLabs => "elevenlabs",
        }
    }

    /// The path of this provider's webhook route on the webhook function. The simulator
    /// reports the generic way.
    pub fn webhook_path(self) -> &'static str {
        match self {
            ProviderKind::Simulator | ProviderKind::Http => "/callbacks/call-status",
            ProviderKind::Retell => "/callbacks/retell",
            ProviderKind::Vapi => "/callbacks/vapi",
            ProviderKind::Twilio => "/callbacks/twilio",
            ProviderKind::ElevenLabs => "/callbacks/elevenlabs",
        }
    }

    /// The name reports from this provider are stored under (`provider_webhooks.provider`).
    pub fn report_source(self) -> &'static str {
        match self {
            ProviderKind::Simulator | ProviderKind::Http => "http",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or(())
    }
}

/// One dial: what Ebra asks the provider to do.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Ebra's call id; travels to the provider beside the attempt key.
    pub call_id: Uuid,
    pub to: String,
    pub script_id: String,
    /// The client's metadata (a JSON object): the provider's per-call variables.
    pub metadata: serde_json::Value,
    /// The attempt key: the provider's idempotency key where it takes one, and always echoed
    /// back on its reports so a report finds its attempt even when the dial's answer was
    /// lost.
    pub idempotency_key: Uuid,
    /// Where the generic contract reports (`webhookUrl`); adapters whose provider takes a
    /// per-call callback (Twilio) use their own route on the same base.
    pub webhook_url: String,
    /// Set when an earlier dial with the same key may have been placed (its fate is
    /// unknown): providers without idempotency are asked first ([`dial_once`]).
    pub prior: Option<PriorDial>,
}

/// What is known of the earlier dials that used this dial's key.
#[derive(Debug, Clone)]
pub struct PriorDial {
    /// When the first of them started: a provider call to this number created since then,
    /// and not one of `known_provider_call_ids`, is theirs (one call per phone, invariant 2).
    pub since: DateTime<Utc>,
    /// Provider call ids recorded for the call's other attempts, which a lookup must not
    /// take for this one.
    pub known_provider_call_ids: Vec<String>,
    /// Whether the last of them may have been placed (its fate unknown: a timeout, a
    /// worker that died mid-dial), rather than refused outright.
    pub fate_unknown: bool,
}

/// What became of a dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialResult {
    /// The provider placed the call and named it.
    Accepted { provider_call_id: String },
    /// Worth retrying. `maybe_placed`: the provider may have placed the call (a timeout, a
    /// reset after sending, a 2xx without an id), so the call keeps its slot and its phone
    /// and the retry reuses the same idempotency key.
    Retryable {
        error: String,
        retry_after: Option<Duration>,
        maybe_placed: bool,
    },
    /// The provider's account is at its own concurrency limit: nothing was placed, and the
    /// dial does not count as an attempt. `GLOBAL_CONCURRENCY` is set above what the account
    /// allows.
    ConcurrencyLimited {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The provider refused the call for good (4xx other than 429).
    Permanent { error: String },
}

/// A question to the provider about one attempt: by its call id when the dial recorded one,
/// else by the attempt key (or the calls to the number since `since`).
#[derive(Debug, Clone)]
pub struct StatusQuery {
    pub provider_call_id: Option<String>,
    pub idempotency_key: Uuid,
    pub to: String,
    /// The call's `scriptId` (the agent), which narrows a search by key.
    pub script_id: String,
    pub since: DateTime<Utc>,
    pub known_provider_call_ids: Vec<String>,
}

/// The provider's answer about one call.
// One value per lookup, moved once: boxing the end (and its result) would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CallLookup {
    /// The provider has no such call: it was never placed.
    NotFound,
    /// The call exists and has not ended.
    Live { provider_call_id: String },
    /// The call ended as reported.
    Ended(EndOfCall),
    /// The question could not be answered (the lookup failed, or its answer was ambiguous).
    Undecided { reason: String },
    /// This provider offers no lookup.
    Unsupported,
}

/// How a call ended, as a provider's report or lookup tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndOfCall {
    pub provider_call_id: String,
    pub outcome: ReportedOutcome,
    /// The provider's own end reason (e.g. Retell's `dial_busy`), kept for operators.
    pub end_reason: Option<String>,
    pub duration_sec: Option<i32>,
    pub ended_at: Option<DateTime<Utc>>,
    /// What the provider reports beyond the outcome (summary, transcript, recording...),
    /// bounded; kept on the call as its `result`.
    pub result: Option<CallResult>,
}

/// What a report says of its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedOutcome {
    Outcome(CallOutcome),
    /// The provider did not run the call because its account was at its concurrency limit:
    /// the attempt does not count, and the call waits and is dialed again.
    ConcurrencyLimited,
}

impl ReportedOutcome {
    /// As stored (`provider_webhooks.status`, `call_attempts.outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReportedOutcome::Outcome(outcome) => outcome.as_str(),
            ReportedOutcome::ConcurrencyLimited => "LIMITED",
        }
    }

    pub fn parse_stored(raw: &str) -> Option<Self> {
        if raw == "LIMITED" {
            return Some(ReportedOutcome::ConcurrencyLimited);
        }
        raw.parse().ok().map(ReportedOutcome::Outcome)
    }
}

impl fmt::Display for ReportedOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified report, ready to settle: provider-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderReport {
    /// What makes a delivery a duplicate: the Standard Webhooks `webhook-id`, or the
    /// provider, the call and the event kind for providers that send no id.
    pub webhook_id: String,
    /// `provider_webhooks.provider`.
    pub source: &'static str,
    pub provider_call_id: String,
    /// Ebra's attempt key, when the provider echoed it back.
    pub attempt_key: Option<Uuid>,
    pub outcome: ReportedOutcome,
    pub end_reason: Option<String>,
    pub duration_sec: Option<i32>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The call's result as this report tells it (the end reason included).
    pub result: Option<CallResult>,
}

impl ProviderReport {
    pub fn from_end(
        webhook_id: String,
        source: &'static str,
        attempt_key: Option<Uuid>,
        end: EndOfCall,
    ) -> Self {
        Self {
            webhook_id,
            source,
            provider_call_id: end.provider_call_id,
            attempt_key,
            outcome: end.outcome,
            result: with_end_reason(end.result, end.end_reason.as_deref()),
            end_reason: end.end_reason,
            duration_sec: end.duration_sec,
            completed_at: end.ended_at,
        }
    }
}

/// A report's result with the provider's end reason in it (every report that names one has
/// a result, if only that).
pub fn with_end_reason(result: Option<CallResult>, end_reason: Option<&str>) -> Option<CallResult> {
    let result = result.unwrap_or_default();
    let result = if result.end_reason.is_none() {
        result.with_end_reason(end_reason)
    } else {
        result
    };
    result.non_empty()
}

/// A provider: dial, and look a call up.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Whether a redial with the same key is safe without asking first: the provider
    /// deduplicates dials by the key itself (the generic contract, Retell).
    fn deduplicates_by_key(&self) -> bool;

    /// Places one call. Callers go through [`dial_once`].
    fn place<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult>;

    /// What the provider knows of a call.
    fn status<'a>(&'a self, query: &'a StatusQuery) -> BoxFuture<'a, CallLookup>;
}

/// Dials without ever placing a second call for one attempt (invariant 3).
///
/// A provider that deduplicates by key is simply dialed again with the same key (and a
/// refusal of that redial does not free the slot: the earlier dial may still be ringing).
/// Any other
/// provider, when an earlier dial with this key may have been placed, is asked first: a
/// call it has (live or ended) is taken as this dial's, one it does not have is dialed, and
/// when it cannot tell, nothing is dialed: the attempt stays of unknown fate, holding its
/// slot and phone, until the webhook, a later try or the reclaimer settles it.
pub async fn dial_once(provider: &dyn Provider, dial: &Dial) -> DialResult {
    if provider.deduplicates_by_key() {
        let result = provider.place(dial).await;
        let earlier_may_ring = dial.prior.as_ref().is_some_and(|p| p.fate_unknown);
        return match result {
            // A redial with the key of a dial that may have been placed: whatever this
            // request's answer, that dial may be ringing the phone. Only an answer naming
            // the call settles it; anything else keeps the attempt of unknown fate, so the
            // call keeps its slot and its phone (invariants 1 and 2).
            DialResult::Accepted { .. } => result,
            refused if earlier_may_ring => DialResult::Retryable {
                error: format!(
                    "{} (an earlier dial with this key may have been placed)",
                    describe_refusal(&refused)
                ),
                retry_after: refusal_retry_after(&refused),
                maybe_placed: true,
            },
            refused => refused,
        };
    }
    let Some(prior) = dial.prior.as_ref() else {
        return provider.place(dial).await;
    };
    let query = StatusQuery {
        provider_call_id: None,
        idempotency_key: dial.idempotency_key,
        to: dial.to.clone(),
        script_id: dial.script_id.clone(),
        since: prior.since,
        known_provider_call_ids: prior.known_provider_call_ids.clone(),
    };
    match provider.status(&query).await {
        CallLookup::NotFound => {
            tracing::info!("the provider has no call for the earlier dial: dialing");
            provider.place(dial).await
        }
        CallLookup::Live { provider_call_id }
        | CallLookup::Ended(EndOfCall {
            provider_call_id, ..
        }) => {
            tracing::info!(
                provider_call_id,
                "the earlier dial was placed: taking its call instead of dialing again"
            );
            DialResult::Accepted { provider_call_id }
        }
        CallLookup::Undecided { reason } => DialResult::Retryable {
            error: format!("could not tell whether the earlier dial was placed: {reason}"),
            retry_after: None,
            maybe_placed: true,
        },
        CallLookup::Unsupported => DialResult::Retryable {
            error: format!(
                "{} takes no idempotency key and offers no lookup: not redialing a dial that may have been placed",
                provider.kind()
            ),
            retry_after: None,
            maybe_placed: true,
        },
    }
}

fn describe_refusal(result: &DialResult) -> String {
    match result {
        DialResult::Accepted { provider_call_id } => format!("accepted as {provider_call_id}"),
        DialResult::Retryable { error, .. }
        | DialResult::ConcurrencyLimited { error, .. }
        | DialResult::Permanent { error } => error.clone(),
    }
}

fn refusal_retry_after(result: &DialResult) -> Option<Duration> {
    match result {
        DialResult::Retryable { retry_after, .. }
        | DialResult::ConcurrencyLimited { retry_after, .. } => *retry_after,
        DialResult::Accepted { .. } | DialResult::Permanent { .. } => None,
    }
}

/// An inbound webhook request, as the webhook function received it.
#[derive(Debug, Clone, Copy)]
pub struct InboundWebhook<'a> {
    /// The public URL the provider called, with its query string (Twilio signs it).
    pub url: &'a str,
    pub headers: &'a ::http::HeaderMap,
    pub body: &'a [u8],
}

impl InboundWebhook<'_> {
    /// A header as text: `Ok(None)` when absent, an error when it is not visible ASCII.
    pub fn header(&self, name: &'static str) -> Result<Option<&str>, VerifyError> {
        self.headers
            .get(name)
            .map(|value| {
                value
                    .to_str()
                    .map_err(|_| VerifyError::MalformedHeader(name))
            })
            .transpose()
    }
}

/// What a verified webhook says.
// One value per request, moved once: boxing the report would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    /// The call ended: settle it.
    EndOfCall(ProviderReport),
    /// Not an end of call (call started, transcript updates, ...): acknowledged, changes
    /// nothing.
    Ignored { event: String },
}

/// Why a verified webhook's body was refused: the client-safe message and the fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the body is not valid: {0}")]
    Malformed(String),
    #[error("the report is invalid")]
    Invalid(Vec<crate::problem::FieldError>),
}

/// A provider's webhook scheme: verification first, over the raw bytes, then parsing.
pub trait WebhookScheme: Send + Sync {
    fn provider(&self) -> ProviderKind;

    /// Checks the request's signature or credential at time `now`.
    fn verify(&self, request: &InboundWebhook<'_>, now: DateTime<Utc>) -> Result<(), VerifyError>;

    /// Reads a verified request.
    fn parse(&self, request: &InboundWebhook<'_>) -> Result<WebhookEvent, ReportError>;
}

/// The webhook schemes the webhook function serves, one route each.
pub type WebhookSchemes = Vec<Arc<dyn WebhookScheme>>;

/// The provider `config` names, ready to dial. The simulator signs its reports with
/// `WEBHOOK_SECRET`.
pub fn build_provider(config: &Config) -> anyhow::Result<Arc<dyn Provider>> {
    let timeout = config.dial_timeout;
    Ok(match &config.provider {
        ProviderSettings::Simulator => Arc::new(Simulator::new(
            SimulatorSettings::from_env()?,
            config.require_webhook_secret()?.clone(),
        )?),
        ProviderSettings::Http { base_url } => Arc::new(HttpProvider::new(base_url, timeout)?),
        ProviderSettings::Retell(settings) => {
            Arc::new(retell::Retell::new(settings.clone(), timeout)?)
        }
        ProviderSettings::Vapi(settings) => Arc::new(vapi::Vapi::new(settings.clone(), timeout)?),
        ProviderSettings::Twilio(settings) => {
            Arc::new(twilio::Twilio::new(settings.clone(), timeout)?)
        }
        ProviderSettings::ElevenLabs(settings) => {
            Arc::new(elevenlabs::ElevenLabs::new(settings.clone(), timeout)?)
        }
    })
}

/// The webhook schemes whose secrets `config` has: one route each.
pub fn webhook_schemes(config: &Config) -> WebhookSchemes {
    let credentials = &config.webhook_credentials;
    let mut schemes: WebhookSchemes = Vec::new();
    if let Some(secret) = &credentials.standard {
        schemes.push(Arc::new(StandardWebhooks::new(secret.clone())));
    }
    if let Some(api_key) = &credentials.retell {
        schemes.push(Arc::new(retell::RetellWebhooks::new(api_key.clone())));
    }
    if let Some(secret) = &credentials.vapi {
        schemes.push(Arc::new(vapi::VapiWebhooks::new(secret.clone())));
    }
    if let Some(keys) = &credentials.twilio {
        schemes.push(Arc::new(twilio::TwilioWebhooks::new(keys.clone())));
    }
    if let Some(secret) = &credentials.elevenlabs {
        schemes.push(Arc::new(elevenlabs::ElevenLabsWebhooks::new(
            secret.clone(),
        )));
    }
    schemes
}

/// The body a provider posts to the generic webhook.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeReport {
    pub call_id: String,
    pub status: CallOutcome,
    pub duration_sec: u32,
    pub completed_at: chrono::DateTime<chrono::Utc>,
    /// The optional result (summary, transcript, links, analysis, end reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<CallResult>,
}

/// The attempt key as the adapters put it in the provider's metadata.
pub const ATTEMPT_KEY_FIELD: &str = "ebra_attempt_key";
/// Ebra's call id as the adapters put it in the provider's metadata.
pub const CALL_ID_FIELD: &str = "ebra_call_id";

/// The client's metadata with Ebra's two fields added (they win over client keys of the
/// same name).
pub(crate) fn metadata_with_keys(dial: &Dial) -> serde_json::Map<String, serde_json::Value> {
    let mut metadata = match &dial.metadata {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    metadata.insert(
        CALL_ID_FIELD.to_owned(),
        serde_json::Value::String(dial.call_id.to_string()),
    );
    metadata.insert(
        ATTEMPT_KEY_FIELD.to_owned(),
        serde_json::Value::String(dial.idempotency_key.to_string()),
    );
    metadata
}

/// The client's metadata as flat string variables (the shape Retell's dynamic variables and
/// ElevenLabs' take): strings as they are, other values as JSON text.
pub(crate) fn metadata_as_variables(
    metadata: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(map) = metadata else {
        return serde_json::Map::new();
    };
    map.iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), serde_json::Value::String(text))
        })
        .collect()
}

/// Reads an attempt key echoed back in a provider's metadata.
pub(crate) fn attempt_key_in(metadata: Option<&serde_json::Value>) -> Option<Uuid> {
    metadata?
        .get(ATTEMPT_KEY_FIELD)?
        .as_str()
        .and_then(|raw| Uuid::parse_str(raw).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A provider whose lookup answers as told, counting placements; it answers dials with
    /// `answer` (accepted by default).
    struct Scripted {
        lookup: CallLookup,
        placed: Mutex<u32>,
        dedupes: bool,
        answer: Option<DialResult>,
    }

    impl Provider for Scripted {
        fn kind(&self) -> ProviderKind {
            ProviderKind::Vapi
        }
        fn deduplicates_by_key(&self) -> bool {
            self.dedupes
        }
        fn place<'a>(&'a self, _dial: &'a Dial) -> BoxFuture<'a, DialResult> {
            *self.placed.lock().unwrap() += 1;
            let answer = self.answer.clone().unwrap_or(DialResult::Accepted {
                provider_call_id: "new".into(),
            });
            Box::pin(async move { answer })
        }
        fn status<'a>(&'a self, _query: &'a StatusQuery) -> BoxFuture<'a, CallLookup> {
            let answer = self.lookup.clone();
            Box::pin(async move { answer })
        }
    }

    fn dial(prior: bool) -> Dial {
        Dial {
            call_id: Uuid::nil(),
            to: "+14155550100".into(),
            script_id: "s".into(),
            metadata: serde_json::json!({}),
            idempotency_key: Uuid::nil(),
            webhook_url: "http://127.0.0.1:9/callbacks/call-status".into(),
            prior: prior.then(|| PriorDial {
                since: Utc::now(),
                known_provider_call_ids: vec![],
                fate_unknown: true,
            }),
        }
    }

    async fn run(lookup: CallLookup, prior: bool) -> (DialResult, u32) {
        let provider = Scripted {
            lookup,
            placed: Mutex::new(0),
            dedupes: false,
            answer: None,
        };
        let result = dial_once(&provider, &dial(prior)).await;
        let placed = *provider.placed.lock().unwrap();
        (result, placed)
    }

    #[tokio::test]
    async fn a_first_dial_is_placed_without_asking() {
        let (result, placed) = run(CallLookup::Undecided { reason: "x".into() }, false).await;
        assert_eq!(placed, 1);
        assert!(matches!(result, DialResult::Accepted { .. }));
    }

    #[tokio::test]
    async fn a_redial_takes_the_call_the_provider_has() {
        let (result, placed) = run(
            CallLookup::Live {
                provider_call_id: "old".into(),
            },
            true,
        )
        .await;
        assert_eq!(placed, 0);
        assert_eq!(
            result,
            DialResult::Accepted {
                provider_call_id: "old".into()
            }
        );
    }

    #[tokio::test]
    async fn a_redial_is_placed_only_when_the_provider_has_none() {
        let (result, placed) = run(CallLookup::NotFound, true).await;
        assert_eq!(placed, 1);
        assert!(matches!(result, DialResult::Accepted { .. }));
        for undecided in [
            CallLookup::Undecided {
                reason: "timeout".into(),
            },
            CallLookup::Unsupported,
        ] {
            let (result, placed) = run(undecided, true).await;
            assert_eq!(placed, 0);
            assert!(matches!(
                result,
                DialResult::Retryable {
                    maybe_placed: true,
                    ..
                }
            ));
        }
    }

    #[tokio::test]
    async fn a_refused_redial_of_a_dial_that_may_ring_keeps_its_fate_unknown() {
        let refusal = DialResult::Retryable {
            error: "provider error 503".into(),
            retry_after: None,
            maybe_placed: false,
        };
        for (fate_unknown, expect_maybe_placed) in [(true, true), (false, false)] {
            let provider = Scripted {
                lookup: CallLookup::Unsupported,
                placed: Mutex::new(0),
                dedupes: true,
                answer: Some(refusal.clone()),
            };
            let mut redial = dial(true);
            if let Some(prior) = redial.prior.as_mut() {
                prior.fate_unknown = fate_unknown;
            }
            match dial_once(&provider, &redial).await {
                DialResult::Retryable { maybe_placed, .. } => {
                    assert_eq!(
                        maybe_placed, expect_maybe_placed,
                        "fate unknown: {fate_unknown}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        // A first dial's refusal is what it says.
        let provider = Scripted {
            lookup: CallLookup::Unsupported,
            placed: Mutex::new(0),
            dedupes: true,
            answer: Some(DialResult::Permanent {
                error: "422".into(),
            }),
        };
        assert!(matches!(
            dial_once(&provider, &dial(false)).await,
            DialResult::Permanent { .. }
        ));
    }

    #[test]
    fn kinds_parse_case_insensitively() {
        assert_eq!("Retell".parse::<ProviderKind>(), Ok(ProviderKind::Retell));
        assert_eq!(
            "elevenlabs".parse::<ProviderKind>(),
            Ok(ProviderKind::ElevenLabs)
        );
        assert!("bland".parse::<ProviderKind>().is_err());
    }

    #[test]
    fn variables_are_flat_strings() {
        let vars = metadata_as_variables(&serde_json::json!({"a": "x", "b": 2, "c": {"d": true}}));
        assert_eq!(vars["a"], "x");
        assert_eq!(vars["b"], "2");
        assert_eq!(vars["c"], r#"{"d":true}"#);
    }
}
