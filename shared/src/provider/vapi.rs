//! Vapi (`PROVIDER=vapi`).
//!
//! - Dial: `POST {VAPI_BASE_URL}/call`, `Authorization: Bearer <VAPI_API_KEY>`,
//!   `{assistantId, phoneNumberId, customer: {number}, assistantOverrides: {metadata,
//!   variableValues}}` → `201 {id, status}`. Vapi takes no idempotency key: the attempt key
//!   travels in `assistantOverrides.metadata` (echoed on every server message), and before a
//!   redial of a dial of unknown fate the call is looked for ([`super::dial_once`]).
//! - Webhook (`/callbacks/vapi`): `{"message": {"type", "call", "endedReason", ...}}`.
//!   Vapi signs nothing by default; its server credential must be set, and this route
//!   refuses anything without it: `Authorization: Bearer <VAPI_WEBHOOK_SECRET>`, the legacy
//!   `X-Vapi-Secret`, or the HMAC credential (`x-signature` = hex HMAC-SHA256 of
//!   `"{x-timestamp}.{body}"`, ±5 minutes). `end-of-call-report` (and `status-update` with
//!   `status: ended`) end a call; other messages change nothing.
//!   The message's `endedReason`, `startedAt` and `endedAt` are read before its call's (a
//!   snapshot that may predate the end); a message naming no reason ends nothing.
//! - Lookup: `GET /call/{id}`, or `GET /call?phoneNumberId=&assistantId=&createdAtGe=`
//!   (the list's only filters besides ids and dates: no number, no metadata) paged back
//!   through `createdAtLe`, then filtered here by the number and the echoed key.
//! - Outcomes: [`outcome_of`] maps every `endedReason` of the SDK's `CallEndedReason`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt as _;
use serde_json::{json, Value};

use super::transport::{self, Answer};
use super::{
    attempt_key_in, metadata_with_keys, CallLookup, Dial, DialResult, EndOfCall, InboundWebhook,
    Provider, ProviderKind, ProviderReport, ReportError, ReportedOutcome, StatusQuery,
    WebhookEvent, WebhookScheme,
};
use crate::call_result::CallResult;
use crate::config::{ConfigError, Settings};
use crate::domain::CallOutcome;
use crate::webhook_signature::{
    check_window, constant_time_eq, hmac_sha256, verify_hex_mac, VerifyError,
};

pub const DEFAULT_BASE_URL: &str = "https://api.vapi.ai";

/// The window on the HMAC credential's `x-timestamp`, in seconds.
const SIGNATURE_WINDOW_SECONDS: i64 = 5 * 60;

/// `VAPI_*` settings (the webhook secret is read with the other routes' secrets).
#[derive(Clone)]
pub struct VapiSettings {
    pub api_key: String,
    pub phone_number_id: String,
    pub base_url: String,
}

impl std::fmt::Debug for VapiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapiSettings")
            .field("api_key", &"<set>")
            .field("phone_number_id", &self.phone_number_id)
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl VapiSettings {
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            api_key: settings.require_secret("VAPI_API_KEY")?,
            phone_number_id: settings.require_secret("VAPI_PHONE_NUMBER_ID")?,
            base_url: settings.base_url("VAPI_BASE_URL", DEFAULT_BASE_URL)?,
        })
    }
}

/// `VAPI_WEBHOOK_SECRET`: one or more secrets separated by spaces (to rotate one without
/// downtime), each accepted as a bearer token, as `X-Vapi-Secret`, or as the HMAC key.
#[derive(Clone)]
pub struct VapiWebhookSecret {
    secrets: Vec<String>,
}

impl VapiWebhookSecret {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let secrets: Vec<String> = raw.split_whitespace().map(str::to_owned).collect();
        if secrets.is_empty() || secrets.iter().any(|s| s.len() < 16) {
            return Err(
                "must be at least 16 characters (several may be separated by spaces)".into(),
            );
        }
        Ok(Self { secrets })
    }
}

pub struct Vapi {
    settings: VapiSettings,
    client: reqwest::Client,
}

impl Vapi {
    pub fn new(settings: VapiSettings, timeout: std::time::Duration) -> anyhow::Result<Self> {
        Ok(Self {
            settings,
            client: transport::client(timeout)?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url)
    }

    async fn dial(&self, dial: &Dial) -> DialResult {
        let body = json!({
            "assistantId": dial.script_id,
            "phoneNumberId": self.settings.phone_number_id,
            "customer": {"number": dial.to},
            "assistantOverrides": {
                "metadata": Value::Object(metadata_with_keys(dial)),
                "variableValues": dial.metadata,
            },
        });
        let request = self
            .client
            .post(self.url("/call"))
            .bearer_auth(&self.settings.api_key)
            .json(&body);
        match transport::send_dial(request).await {
            Ok(answer) => classify(&answer),
            Err(result) => result,
        }
    }

    async fn lookup(&self, query: &StatusQuery) -> CallLookup {
        match &query.provider_call_id {
            Some(id) => self.lookup_by_id(id).await,
            None => self.lookup_by_key(query).await,
        }
    }

    async fn lookup_by_id(&self, id: &str) -> CallLookup {
        let mut url = match url::Url::parse(&self.url("/call/")) {
            Ok(url) => url,
            Err(error) => return undecided(format!("VAPI_BASE_URL: {error}")),
        };
        url.path_segments_mut()
            .map(|mut segments| {
                segments.pop_if_empty().push(id);
            })
            .ok();
        let request = self.client.get(url).bearer_auth(&self.settings.api_key);
        match read_json(request).await {
            Ok(call) => lookup_of(&call),
            Err(lookup) => lookup,
        }
    }

    /// The call this attempt placed, among the calls from Ebra's number and agent since the
    /// first dial with this key: the newest to this number carrying this key (or, should
    /// Vapi not echo metadata in its listing, any call to this number since then that is not
    /// another attempt's: one call per phone makes it this attempt's).
    ///
    /// `GET /call` returns at most `limit` calls, so a full page does not show them all: the
    /// lookup pages back through `createdAtLe` and answers [`CallLookup::NotFound`] only
    /// after a page that is not full. The list's order is not documented: paging takes it to
    /// be newest first, as the dashboard shows calls, and checks it. What it cannot see whole
    /// (too many pages, a full page out of that order, a 404 from the list itself) is
    /// undecided: a "not found" there would redial a call that may be ringing.
    async fn lookup_by_key(&self, query: &StatusQuery) -> CallLookup {
        let base = match url::Url::parse(&self.url("/call")) {
            Ok(url) => url,
            Err(error) => return undecided(format!("VAPI_BASE_URL: {error}")),
        };
        let from = query.since - chrono::Duration::seconds(60);
        let mut upper: Option<DateTime<Utc>> = None;
        let mut seen: HashSet<String> = HashSet::new();
        for _ in 0..LIST_PAGES {
            let mut url = base.clone();
            {
                let mut pairs = url.query_pairs_mut();
                pairs
                    .append_pair("phoneNumberId", &self.settings.phone_number_id)
                    .append_pair("assistantId", &query.script_id)
                    .append_pair("createdAtGe", &iso(from));
                if let Some(upper) = upper {
                    pairs.append_pair("createdAtLe", &iso(upper));
                }
                pairs.append_pair("limit", &LIST_PAGE.to_string());
            }
            let request = self.client.get(url).bearer_auth(&self.settings.api_key);
            let calls = match read_json(request).await {
                Ok(Value::Array(calls)) => calls,
                Ok(other) => {
                    return undecided(format!(
                        "Vapi's call list is not an array: {}",
                        truncate(&other.to_string())
                    ))
                }
                // The list answers an empty array when nothing matches: a 404 is a request
                // gone astray (a wrong VAPI_BASE_URL), from which nothing can be concluded.
                Err(CallLookup::NotFound) => {
                    return undecided("Vapi answered 404 to the call list".into())
                }
                Err(lookup) => return lookup,
            };
            if let Some(call) = newest_of_attempt(&calls, query) {
                return lookup_of(call);
            }
            if calls.len() < LIST_PAGE {
                return CallLookup::NotFound;
            }
            let Some(oldest) = oldest_of_full_page(&calls) else {
                return undecided(
                    "Vapi's call list is not ordered newest first: its pages cannot be followed"
                        .into(),
                );
            };
            let before = seen.len();
            seen.extend(
                calls
                    .iter()
                    .filter_map(|call| call.get("id").and_then(Value::as_str))
                    .map(str::to_owned),
            );
            if seen.len() == before {
                return undecided(format!(
                    "more than {LIST_PAGE} Vapi calls created at {}: the list cannot be paged",
                    iso(oldest)
                ));
            }
            // The next page ends at this one's oldest, included: calls created in the same
            // millisecond may have been left out of this page.
            upper = Some(oldest);
        }
        undecided(format!(
            "more than {} Vapi calls from this number and agent since {}: not all could be read",
            LIST_PAGE * LIST_PAGES,
            iso(from)
        ))
    }
}

/// Calls asked for per page of `GET /call` (the API's default; it allows up to 1000, but
/// each call carries its transcript and messages).
const LIST_PAGE: usize = 100;
/// Pages a lookup reads before it gives up.
const LIST_PAGES: usize = 10;

/// A time as Vapi writes them (`2026-11-30T12:00:00.000Z`).
fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The newest call of `calls` that is the attempt's (see [`Vapi::lookup_by_key`]).
fn newest_of_attempt<'a>(calls: &'a [Value], query: &StatusQuery) -> Option<&'a Value> {
    let key = query.idempotency_key.to_string();
    calls
        .iter()
        .filter(|call| call.pointer("/customer/number").and_then(Value::as_str) == Some(&query.to))
        .filter(|call| {
            call.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| !query.known_provider_call_ids.iter().any(|k| k == id))
        })
        .filter(|call| {
            match call
                .pointer("/assistantOverrides/metadata")
                .and_then(|m| m.get(super::ATTEMPT_KEY_FIELD))
            {
                Some(echoed) => echoed.as_str() == Some(key.as_str()),
                None => created_at(call).is_some_and(|at| at >= query.since),
            }
        })
        .max_by_key(|call| created_at(call))
}

/// The oldest `createdAt` of a full page, when the page is ordered newest first (every call
/// dated, none newer than the one before it); `None` otherwise.
fn oldest_of_full_page(calls: &[Value]) -> Option<DateTime<Utc>> {
    let mut oldest: Option<DateTime<Utc>> = None;
    for call in calls {
        let at = created_at(call)?;
        if oldest.is_some_and(|previous| at > previous) {
            return None;
        }
        oldest = Some(at);
    }
    oldest
}

fn created_at(call: &Value) -> Option<DateTime<Utc>> {
    timestamp(call.get("createdAt"))
}

fn timestamp(value: Option<&Value>) -> Option<DateTime<Utc>> {
    value
        .and_then(Value::as_str)
        .and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
        .map(|at| at.with_timezone(&Utc))
}

fn undecided(reason: String) -> CallLookup {
    CallLookup::Undecided { reason }
}

fn truncate(text: &str) -> String {
    text.chars().take(200).collect()
}

/// A GET answered with JSON; `Err` is what the lookup answers otherwise.
async fn read_json(request: reqwest::RequestBuilder) -> Result<Value, CallLookup> {
    let answer = transport::send_lookup(request).await.map_err(undecided)?;
    if !answer.status.is_success() {
        return Err(transport::lookup_failure(&answer));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|error| undecided(format!("Vapi's answer is not JSON: {error}")))
}

impl Provider for Vapi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vapi
    }

    fn deduplicates_by_key(&self) -> bool {
        false
    }

    fn place<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult> {
        self.dial(dial).boxed()
    }

    fn status<'a>(&'a self, query: &'a StatusQuery) -> BoxFuture<'a, CallLookup> {
        self.lookup(query).boxed()
    }
}

/// Maps Vapi's answer to a dial. Vapi answers a create over the account's concurrency limit
/// with a 4xx naming the limit (a created call that later hits it ends with
/// `call.start.error-subscription-concurrency-limit-reached`, which settles as LIMITED).
fn classify(answer: &Answer) -> DialResult {
    if answer.status.is_success() {
        return match serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|body| body.get("id").and_then(Value::as_str).map(str::to_owned))
        {
            Some(id) if transport::valid_call_id(&id) => DialResult::Accepted {
                provider_call_id: id,
            },
            _ => transport::accepted_without_id(answer, "id"),
        };
    }
    if answer.status.is_client_error()
        && String::from_utf8_lossy(&answer.body)
            .to_ascii_lowercase()
            .contains("concurrency")
    {
        return DialResult::ConcurrencyLimited {
            error: format!(
                "Vapi refused the dial for the account's concurrency limit ({}): {}",
                answer.status,
                answer.snippet()
            ),
            retry_after: answer.retry_after,
        };
    }
    transport::failure(answer)
}

/// `endedReason` → outcome, for every value of the SDK's `CallEndedReason` (vapi-server-sdk
/// 3.0.0, `vapi/types/call_ended_reason.py`; meanings from Vapi's `call-ended-reason.mdx`).
/// `None` for a reason not in the table: the caller settles it as FAILED (never redialed by
/// default: the person may have been called) and logs it, so that a new reason is noticed.
///
/// What counts: whether the person was reached (COMPLETED, also when a transfer the
/// assistant started found its destination busy or unanswered: that is the transfer leg, not
/// the customer), whether the phone rang unanswered or busy (redialed), and whether nothing
/// was placed because of the account's concurrency limit (LIMITED: waits, not counted).
pub fn outcome_of(ended_reason: &str) -> Option<ReportedOutcome> {
    use CallOutcome::*;
    use ReportedOutcome::Outcome;
    let outcome = match ended_reason {
        // The conversation happened and ended.
        "customer-ended-call"
        | "customer-ended-call-before-warm-transfer"
        | "customer-ended-call-after-warm-transfer-attempt"
        | "customer-ended-call-during-transfer"
        | "assistant-ended-call"
        | "assistant-said-end-call-phrase"
        | "assistant-ended-call-with-hangup-task"
        | "assistant-ended-call-after-message-spoken"
        | "assistant-forwarded-call"
        | "exceeded-max-duration"
        | "silence-timed-out"
        | "call.in-progress.twilio-completed-call"
        | "call.in-progress.sip-completed-call"
        | "vonage-completed"
        // A transfer's destination (the operator) was busy or did not answer: the customer
        // was talked to.
        | "call.forwarding.operator-busy"
        | "call.forwarding.no-answer"
        // A configured hook said its message or transferred the call and ended it: the flow
        // ran as configured.
        | "call.ringing.hook-executed-say"
        | "call.ringing.hook-executed-transfer"
        | "call.ending.hook-executed-say"
        | "call.ending.hook-executed-transfer" => Outcome(Completed),
        "voicemail" => Outcome(Voicemail),
        "customer-busy" => Outcome(Busy),
        // SIP 408 and 480: "Phone rang but no answer ... callee was unavailable"
        // (call-ended-reason.mdx, quick diagnosis).
        "customer-did-not-answer"
        | "call.in-progress.error-providerfault-outbound-sip-408-request-timeout"
        | "call.in-progress.error-providerfault-outbound-sip-480-temporarily-unavailable" => {
            Outcome(NoAnswer)
        }
        // Stopped or deleted through the API or the dashboard.
        "manually-canceled" | "scheduled-call-deleted" | "call-deleted" => Outcome(Canceled),
        "call.start.error-subscription-concurrency-limit-reached" => {
            ReportedOutcome::ConcurrencyLimited
        }
        // Nothing was placed: the account, the number or the configuration refused it.
        "call.start.error-vapifault-get-org"
        | "call.start.error-vapifault-get-subscription"
        | "call.start.error-get-assistant"
        | "call.start.error-get-phone-number"
        | "call.start.error-get-customer"
        | "call.start.error-get-resources-validation"
        | "call.start.error-vapi-number-international"
        | "call.start.error-vapi-number-outbound-daily-limit"
        | "call.start.error-get-transport"
        | "call.start.error-subscription-wallet-does-not-exist"
        | "call.start.error-fraud-check-failed"
        | "call.start.error-subscription-frozen"
        | "call.start.error-subscription-insufficient-credits"
        | "call.start.error-subscription-upgrade-failed"
        | "call.start.error-enterprise-feature-not-available-recording-consent"
        | "call.start.assistant-version-error-validation"
        | "call.start.squad-version-error-validation"
        | "call.start.error-vapifault-database-error"
        | "call.start.error-vapifault-worker-not-available"
        | "call-start-error-neither-assistant-nor-server-set"
        | "assistant-request-failed"
        | "assistant-request-returned-error"
        | "assistant-request-returned-unspeakable-error"
        | "assistant-request-returned-invalid-assistant"
        | "assistant-request-returned-no-assistant"
        | "assistant-request-returned-forwarding-phone-number"
        | "assistant-not-valid"
        | "assistant-not-found"
        // The telephony failed to connect, or dropped the call.
        | "twilio-failed-to-connect-call"
        | "twilio-reported-customer-misdialed"
        | "vonage-failed-to-connect-call"
        | "vonage-rejected"
        | "vonage-disconnected"
        | "sip-outbound-unallocated-number"
        | "sip-outbound-carrier-released-call"
        | "call.in-progress.error-sip-outbound-call-failed-to-connect"
        | "call.in-progress.error-sip-inbound-call-failed-to-connect"
        | "call.ringing.error-sip-inbound-call-failed-to-connect"
        | "call.ringing.sip-inbound-caller-hungup-before-call-connect"
        | "phone-call-provider-closed-websocket"
        | "phone-call-provider-bypass-enabled-but-no-call-received"
        // The call broke down: Vapi's workers, the assistant's pipeline, a transfer.
        | "worker-shutdown"
        | "assistant-join-timed-out"
        | "customer-did-not-give-microphone-permission"
        | "call.in-progress.error-assistant-did-not-receive-customer-audio"
        | "call.in-progress.error-pipeline-no-available-llm-model"
        | "call.in-progress.error-pipeline-ws-model-connection-failed"
        | "call.in-progress.error-configfault-model-unsupported-in-squad"
        | "call.in-progress.error-configfault-transport-unsupported-for-model"
        | "call.in-progress.error-transfer-failed"
        | "call.in-progress.error-warm-transfer-max-duration"
        | "call.in-progress.error-warm-transfer-assistant-cancelled"
        | "call.in-progress.error-warm-transfer-silence-timeout"
        | "call.in-progress.error-warm-transfer-microphone-timeout"
        // SIP refusals of the outbound leg that are not "no answer".
        | "call.in-progress.error-providerfault-outbound-sip-403-forbidden"
        | "call.in-progress.error-providerfault-outbound-sip-407-proxy-authentication-required"
        | "call.in-progress.error-providerfault-outbound-sip-503-service-unavailable" => {
            Outcome(Failed)
        }
        // Another SIP status on the outbound leg may mean busy or no answer (486, 487, ...):
        // not guessed.
        reason if reason.starts_with("call.in-progress.error-providerfault-outbound-sip-") => {
            return None
        }
        // The ~520 patterned failures of the model, voice and transcriber providers and of
        // Vapi's own infrastructure (`pipeline-error-<provider>-*`,
        // `call.in-progress.error-{vapifault,providerfault}-<provider>-*`).
        reason
            if reason.starts_with("pipeline-error-")
                || reason.starts_with("call.in-progress.error-vapifault-")
                || reason.starts_with("call.in-progress.error-providerfault-") =>
        {
            Outcome(Failed)
        }
        _ => return None,
    };
    Some(outcome)
}

/// How a Vapi call ended, or `None` while it has not.
///
/// `message` is the server message that carried the call, for a webhook: its `endedReason`,
/// `startedAt`, `endedAt` and `durationSeconds` win over the call's (the call in a message
/// is a snapshot that may predate its end), and a message that names no reason is no end
/// (the report that names it follows). A looked-up call (`message` absent) that is `ended`
/// without a reason is FAILED, logged.
fn end_of(call: &Value, message: Option<&Value>) -> Result<Option<EndOfCall>, String> {
    let provider_call_id = call
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| transport::valid_call_id(id))
        .ok_or("call.id is missing or invalid")?
        .to_owned();
    let field = |name: &str| {
        message
            .and_then(|m| m.get(name))
            .filter(|v| !v.is_null())
            .or_else(|| call.get(name))
    };
    let reason = field("endedReason").and_then(Value::as_str);
    let status = call.get("status").and_then(Value::as_str);
    if reason.is_none() && (message.is_some() || status != Some("ended")) {
        return Ok(None);
    }
    let outcome = match reason.and_then(outcome_of) {
        Some(outcome) => outcome,
        None => {
            tracing::warn!(
                provider_call_id,
                ended_reason = reason,
                "Vapi end reason not in the outcome table: FAILED"
            );
            ReportedOutcome::Outcome(CallOutcome::Failed)
        }
    };
    let started = timestamp(field("startedAt"));
    let ended = timestamp(field("endedAt"));
    let duration_sec = match (started, ended) {
        (Some(started), Some(ended)) if ended >= started => {
            Some(((ended - started).num_milliseconds() + 500) / 1000)
        }
        _ => message
            .and_then(|m| m.get("durationSeconds"))
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s.round().min(f64::from(i32::MAX)) as i64),
    };
    Ok(Some(EndOfCall {
        provider_call_id,
        outcome,
        end_reason: reason.map(|r| r.chars().take(255).collect()),
        duration_sec: duration_sec.map(|s| s.min(i64::from(i32::MAX)) as i32),
        ended_at: ended,
        result: result_of(call, message),
    }))
}

/// What Vapi reports beyond the outcome, from the message first, then its call:
/// `analysis.summary`, `artifact.transcript`, `artifact.recordingUrl` (older messages carry
/// `summary`, `transcript` and `recordingUrl` at the top), and `analysis` itself
/// (`structuredData`, `successEvaluation`).
fn result_of(call: &Value, message: Option<&Value>) -> Option<CallResult> {
    let find = |pointers: &[&str]| {
        message
            .into_iter()
            .chain(std::iter::once(call))
            .flat_map(|source| pointers.iter().filter_map(move |p| source.pointer(p)))
            .find(|v| !v.is_null())
    };
    let text = |pointers: &[&str]| find(pointers).and_then(Value::as_str);
    CallResult::default()
        .with_summary(text(&["/analysis/summary", "/summary"]))
        .with_transcript(text(&["/artifact/transcript", "/transcript"]))
        .with_recording_url(text(&[
            "/artifact/recordingUrl",
            "/recordingUrl",
            "/artifact/recording/mono/combinedUrl",
        ]))
        .with_analysis(find(&["/analysis"]))
        .non_empty()
}

fn lookup_of(call: &Value) -> CallLookup {
    match end_of(call, None) {
        Ok(Some(end)) => CallLookup::Ended(end),
        Ok(None) => match call.get("id").and_then(Value::as_str) {
            Some(id) => CallLookup::Live {
                provider_call_id: id.to_owned(),
            },
            None => undecided("Vapi's call has no id".into()),
        },
        Err(reason) => undecided(reason),
    }
}

/// `/callbacks/vapi`.
pub struct VapiWebhooks {
    secret: VapiWebhookSecret,
}

impl VapiWebhooks {
    pub fn new(secret: VapiWebhookSecret) -> Self {
        Self { secret }
    }

    fn any_secret(&self, presented: &str) -> bool {
        // Every secret is compared, so the time taken does not say which one matched.
        self.secret.secrets.iter().fold(false, |matched, secret| {
            constant_time_eq(secret.as_bytes(), presented.as_bytes()) | matched
        })
    }
}

impl WebhookScheme for VapiWebhooks {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Vapi
    }

    fn verify(
        &self,
        request: &InboundWebhook<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), VerifyError> {
        let now = now.timestamp();
        if let Some(signature) = request.header("x-signature")? {
            let timestamp_raw = request
                .header("x-timestamp")?
                .ok_or(VerifyError::MissingHeader("x-timestamp"))?;
            let timestamp: i64 = timestamp_raw
                .trim()
                .parse()
                .map_err(|_| VerifyError::MalformedHeader("x-timestamp"))?;
            // Seconds, or milliseconds.
            let seconds = if timestamp > 100_000_000_000 {
                timestamp / 1000
            } else {
                timestamp
            };
            check_window(
                seconds,
                now,
                SIGNATURE_WINDOW_SECONDS,
                SIGNATURE_WINDOW_SECONDS,
            )?;
            let signature = signature.trim();
            let signature = signature.strip_prefix("sha256=").unwrap_or(signature);
            let matched = self.secret.secrets.iter().any(|secret| {
                let mac = hmac_sha256(
                    secret.as_bytes(),
                    &[timestamp_raw.trim().as_bytes(), b".", request.body],
                );
                verify_hex_mac(mac, signature)
            });
            return if matched {
                Ok(())
            } else {
                Err(VerifyError::NoMatch)
            };
        }
        if let Some(authorization) = request.header("authorization")? {
            let token = authorization
                .strip_prefix("Bearer ")
                .or_else(|| authorization.strip_prefix("bearer "))
                .ok_or(VerifyError::MalformedHeader("authorization"))?;
            return if self.any_secret(token.trim()) {
                Ok(())
            } else {
                Err(VerifyError::NoMatch)
            };
        }
        if let Some(secret) = request.header("x-vapi-secret")? {
            return if self.any_secret(secret.trim()) {
                Ok(())
            } else {
                Err(VerifyError::NoMatch)
            };
        }
        Err(VerifyError::MissingHeader(
            "authorization (or x-vapi-secret, or x-signature)",
        ))
    }

    fn parse(&self, request: &InboundWebhook<'_>) -> Result<WebhookEvent, ReportError> {
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|e| ReportError::Malformed(e.to_string()))?;
        let message = body
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| invalid("message", "is required (an object)"))?;
        let kind = message
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("message.type", "is required (a string)"))?;
        let ends = match kind {
            "end-of-call-report" => true,
            "status-update" => message.get("status").and_then(Value::as_str) == Some("ended"),
            _ => false,
        };
        if !ends {
            return Ok(WebhookEvent::Ignored {
                event: kind.to_owned(),
            });
        }
        let call = message
            .get("call")
            .filter(|c| c.is_object())
            .ok_or_else(|| invalid("message.call", "is required (the call object)"))?;
        let end = match end_of(call, Some(message)) {
            Ok(Some(end)) => end,
            Ok(None) => {
                return Ok(WebhookEvent::Ignored {
                    event: kind.to_owned(),
                })
            }
            Err(reason) => return Err(invalid("message.call", &reason)),
        };
        let attempt_key = attempt_key_in(call.pointer("/assistantOverrides/metadata"))
            .or_else(|| attempt_key_in(call.get("metadata")));
        Ok(WebhookEvent::EndOfCall(ProviderReport::from_end(
            format!("vapi:{}:{kind}", end.provider_call_id),
            ProviderKind::Vapi.report_source(),
            attempt_key,
            end,
        )))
    }
}

fn invalid(field: &str, message: &str) -> ReportError {
    ReportError::Invalid(vec![crate::problem::FieldError {
        field: field.to_owned(),
        message: message.to_owned(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of the SDK's `CallEndedReason` (vapi-server-sdk 3.0.0), one a line.
    const SDK_ENDED_REASONS: &str =
        include_str!("../../../tests/fixtures/vapi_call_ended_reasons.txt");

    fn sdk_ended_reasons() -> Vec<&'static str> {
        SDK_ENDED_REASONS
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect()
    }

    fn outcome(reason: &str) -> Option<ReportedOutcome> {
        outcome_of(reason)
    }

    const fn settled(outcome: CallOutcome) -> Option<ReportedOutcome> {
        Some(ReportedOutcome::Outcome(outcome))
    }

    #[test]
    fn every_reason_of_the_sdk_is_in_the_table() {
        let reasons = sdk_ended_reasons();
        assert_eq!(reasons.len(), 604, "the SDK's enum, whole");
        let missing: Vec<&str> = reasons
            .iter()
            .copied()
            .filter(|reason| outcome(reason).is_none())
            .collect();
        assert!(missing.is_empty(), "not in the table: {missing:#?}");
    }

    #[test]
    fn only_the_documented_reasons_are_not_failures() {
        use CallOutcome::*;
        let not_failed: Vec<(&str, ReportedOutcome)> = sdk_ended_reasons()
            .into_iter()
            .filter_map(|reason| outcome(reason).map(|o| (reason, o)))
            .filter(|(_, o)| *o != ReportedOutcome::Outcome(Failed))
            .collect();
        let count =
            |wanted: ReportedOutcome| not_failed.iter().filter(|(_, o)| *o == wanted).count();
        assert_eq!(
            count(ReportedOutcome::Outcome(Completed)),
            20,
            "{not_failed:#?}"
        );
        assert_eq!(count(ReportedOutcome::Outcome(Busy)), 1);
        assert_eq!(count(ReportedOutcome::Outcome(NoAnswer)), 3);
        assert_eq!(count(ReportedOutcome::Outcome(Voicemail)), 1);
        assert_eq!(count(ReportedOutcome::Outcome(Canceled)), 3);
        assert_eq!(count(ReportedOutcome::ConcurrencyLimited), 1);
        assert_eq!(not_failed.len(), 29);
        // The patterned provider failures, all FAILED but SIP 408 and 480 (no answer).
        for reason in sdk_ended_reasons().into_iter().filter(|r| {
            r.starts_with("pipeline-error-")
                || r.starts_with("call.in-progress.error-vapifault-")
                || r.starts_with("call.in-progress.error-providerfault-")
        }) {
            let expected = if reason.contains("-sip-408-") || reason.contains("-sip-480-") {
                settled(NoAnswer)
            } else {
                settled(Failed)
            };
            assert_eq!(outcome(reason), expected, "{reason}");
        }
    }

    #[test]
    fn the_limit_is_not_a_failure() {
        use CallOutcome::*;
        assert_eq!(
            outcome("call.start.error-subscription-concurrency-limit-reached"),
            Some(ReportedOutcome::ConcurrencyLimited)
        );
        // ElevenLabs' own concurrency, inside a call: a voice failure, not Vapi's limit.
        assert_eq!(
            outcome("pipeline-error-eleven-labs-blocked-concurrent-requests-and-requested-upgrade"),
            settled(Failed)
        );
        assert_eq!(
            outcome("call.start.error-get-phone-number"),
            settled(Failed)
        );
        assert_eq!(outcome("customer-did-not-answer"), settled(NoAnswer));
        assert_eq!(outcome("call.forwarding.operator-busy"), settled(Completed));
        assert_eq!(outcome("call-deleted"), settled(Canceled));
    }

    #[test]
    fn unknown_reasons_are_not_guessed() {
        assert_eq!(outcome("brand-new-reason"), None);
        assert_eq!(outcome("call.start.error-brand-new"), None);
        // A SIP status not in the table may be busy or no answer.
        assert_eq!(
            outcome("call.in-progress.error-providerfault-outbound-sip-486-busy-here"),
            None
        );
        assert_eq!(outcome(""), None);
    }

    fn call(status: &str, reason: Option<&str>) -> Value {
        let mut call = json!({
            "id": "019a9046-121e-766d-bd1f-84f3ccc309c1",
            "status": status,
            "createdAt": "2026-11-30T12:00:00.000Z",
            "startedAt": "2026-11-30T12:00:02.000Z",
        });
        if let Some(reason) = reason {
            call["endedReason"] = json!(reason);
            call["endedAt"] = json!("2026-11-30T12:00:44.600Z");
        }
        call
    }

    #[test]
    fn a_looked_up_call_ends_with_its_reason() {
        assert_eq!(
            lookup_of(&call("in-progress", None)),
            CallLookup::Live {
                provider_call_id: "019a9046-121e-766d-bd1f-84f3ccc309c1".into()
            }
        );
        let CallLookup::Ended(end) = lookup_of(&call("ended", Some("customer-busy"))) else {
            panic!("ended");
        };
        assert_eq!(end.outcome, ReportedOutcome::Outcome(CallOutcome::Busy));
        assert_eq!(end.duration_sec, Some(43));
        // Ended without a reason: FAILED rather than live for ever.
        let CallLookup::Ended(end) = lookup_of(&call("ended", None)) else {
            panic!("ended");
        };
        assert_eq!(end.outcome, ReportedOutcome::Outcome(CallOutcome::Failed));
    }

    #[test]
    fn a_message_is_read_before_its_call_snapshot() {
        let message = json!({
            "type": "end-of-call-report",
            "endedReason": "voicemail",
            "startedAt": "2026-11-30T12:00:10.000Z",
            "endedAt": "2026-11-30T12:00:20.400Z",
            "durationSeconds": 99.0,
        });
        let end = end_of(&call("in-progress", None), Some(&message))
            .expect("valid")
            .expect("an end");
        assert_eq!(
            end.outcome,
            ReportedOutcome::Outcome(CallOutcome::Voicemail)
        );
        assert_eq!(end.duration_sec, Some(10));
        assert_eq!(
            end.ended_at,
            timestamp(Some(&json!("2026-11-30T12:00:20.400Z")))
        );
        // Without times, `durationSeconds`.
        let message = json!({"type": "end-of-call-report", "endedReason": "voicemail", "durationSeconds": 41.6});
        let mut snapshot = call("in-progress", None);
        snapshot.as_object_mut().map(|c| c.remove("startedAt"));
        let end = end_of(&snapshot, Some(&message))
            .expect("valid")
            .expect("an end");
        assert_eq!(end.duration_sec, Some(42));
        // A status-update `ended` that names no reason ends nothing (the report follows).
        let message = json!({"type": "status-update", "status": "ended"});
        assert_eq!(end_of(&call("ended", None), Some(&message)), Ok(None));
    }

    #[test]
    fn only_a_full_page_in_order_is_followed() {
        let dated = |at: &str| json!({"id": at, "createdAt": at});
        let newest_first = [
            dated("2026-11-30T12:00:03.000Z"),
            dated("2026-11-30T12:00:02.000Z"),
            dated("2026-11-30T12:00:02.000Z"),
        ];
        assert_eq!(
            oldest_of_full_page(&newest_first),
            timestamp(Some(&json!("2026-11-30T12:00:02.000Z")))
        );
        let oldest_first = [
            dated("2026-11-30T12:00:01.000Z"),
            dated("2026-11-30T12:00:02.000Z"),
        ];
        assert_eq!(oldest_of_full_page(&oldest_first), None);
        assert_eq!(oldest_of_full_page(&[json!({"id": "undated"})]), None);
    }

    #[test]
    fn a_concurrency_refusal_waits_and_other_refusals_fail() {
        let answer = |status: u16, body: &'static str| Answer {
            status: reqwest::StatusCode::from_u16(status).expect("a status"),
            retry_after: None,
            body: bytes::Bytes::from_static(body.as_bytes()),
        };
        assert!(matches!(
            classify(&answer(
                400,
                r#"{"message":"Over Concurrency Limit","statusCode":400}"#
            )),
            DialResult::ConcurrencyLimited { .. }
        ));
        assert!(matches!(
            classify(&answer(
                400,
                r#"{"message":["customer.number must be a valid phone number"]}"#
            )),
            DialResult::Permanent { .. }
        ));
        assert!(matches!(
            classify(&answer(
                201,
                r#"{"id":"019a9046-121e-766d-bd1f-84f3ccc309c1","status":"queued"}"#
            )),
            DialResult::Accepted { .. }
        ));
        assert!(matches!(
            classify(&answer(201, r#"{"status":"queued"}"#)),
            DialResult::Retryable {
                maybe_placed: true,
                ..
            }
        ));
    }

    #[test]
    fn secrets_are_long_enough() {
        assert!(VapiWebhookSecret::parse("short").is_err());
        assert!(VapiWebhookSecret::parse("a-long-enough-secret b-long-enough-secret").is_ok());
    }

    fn headers(pairs: &[(&'static str, String)]) -> ::http::HeaderMap {
        let mut map = ::http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("a header value"));
        }
        map
    }

    fn verify(
        secret: &str,
        pairs: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let scheme = VapiWebhooks::new(VapiWebhookSecret::parse(secret).expect("a secret"));
        let headers = headers(pairs);
        let request = InboundWebhook {
            url: "https://hooks.ebra.test/callbacks/vapi",
            headers: &headers,
            body,
        };
        scheme.verify(&request, Utc::now())
    }

    fn hmac_hex(key: &str, timestamp: &str, body: &[u8]) -> String {
        use hmac::Mac as _;
        hex::encode(
            hmac_sha256(key.as_bytes(), &[timestamp.as_bytes(), b".", body])
                .finalize()
                .into_bytes(),
        )
    }

    #[test]
    fn every_credential_vapi_sends_is_accepted_and_only_those() {
        let old = "old-vapi-secret-0123456789";
        let new = "new-vapi-secret-9876543210";
        let both = format!("{old} {new}");
        let body = br#"{"message":{"type":"status-update"}}"#;
        let seconds = Utc::now().timestamp().to_string();
        let millis = Utc::now().timestamp_millis().to_string();
        for secret in [old, new] {
            assert_eq!(
                verify(
                    &both,
                    &[("authorization", format!("Bearer {secret}"))],
                    body
                ),
                Ok(())
            );
            assert_eq!(
                verify(&both, &[("x-vapi-secret", secret.to_owned())], body),
                Ok(())
            );
            for at in [&seconds, &millis] {
                let signed = [
                    ("x-timestamp", at.clone()),
                    ("x-signature", hmac_hex(secret, at, body)),
                ];
                assert_eq!(verify(&both, &signed, body), Ok(()), "{at}");
            }
        }
        // Rotated out.
        assert!(verify(new, &[("authorization", format!("Bearer {old}"))], body).is_err());
        assert!(verify(
            new,
            &[
                ("x-timestamp", seconds.clone()),
                ("x-signature", hmac_hex(old, &seconds, body))
            ],
            body
        )
        .is_err());
        // A credential that is not the secret.
        assert!(verify(old, &[], body).is_err());
        assert!(verify(old, &[("authorization", format!("Bearer {old}x"))], body).is_err());
        assert!(verify(old, &[("authorization", format!("Basic {old}"))], body).is_err());
        assert!(verify(old, &[("x-signature", hmac_hex(old, &seconds, body))], body).is_err());
        assert!(verify(
            old,
            &[
                ("x-timestamp", seconds.clone()),
                ("x-signature", String::new())
            ],
            body
        )
        .is_err());
    }
}
