//! Retell AI (`PROVIDER=retell`).
//!
//! - Dial: `POST {RETELL_BASE_URL}/v2/create-phone-call`, `Authorization: Bearer
//!   <RETELL_API_KEY>`, `{from_number, to_number, override_agent_id, metadata,
//!   retell_llm_dynamic_variables, idempotency_key}` → `201 {call_id, call_status}`. The
//!   attempt key is Retell's `idempotency_key` (kept for an hour), so a redial with the same
//!   key places nothing new, and it is also in `metadata`, which comes back on every webhook.
//! - Webhook (`/callbacks/retell`): `{"event", "call"}` signed `x-retell-signature:
//!   v=<ms>,d=<hex HMAC-SHA256(body + ms)>` with the API key, ±5 minutes. `call_ended` and
//!   `call_analyzed` end a call (also one that never connected); the other events change
//!   nothing.
//! - Lookup: `GET /v2/get-call/{call_id}`.
//! - Outcomes: [`outcome_of`] maps `disconnection_reason` (the README shows the table).

use futures::future::BoxFuture;
use futures::FutureExt as _;
use serde::Serialize;
use serde_json::Value;

use super::transport::{self, Answer};
use super::{
    attempt_key_in, metadata_as_variables, metadata_with_keys, CallLookup, Dial, DialResult,
    EndOfCall, InboundWebhook, Provider, ProviderKind, ProviderReport, ReportError,
    ReportedOutcome, StatusQuery, WebhookEvent, WebhookScheme,
};
use crate::call_result::CallResult;
use crate::config::{ConfigError, Settings};
use crate::domain::CallOutcome;
use crate::webhook_signature::{check_window, hmac_sha256, verify_hex_mac, VerifyError};

pub const DEFAULT_BASE_URL: &str = "https://api.retellai.com";

/// Retell's window on `x-retell-signature` timestamps, in milliseconds.
const SIGNATURE_WINDOW_MS: i64 = 5 * 60 * 1000;

/// `RETELL_*` settings.
#[derive(Clone)]
pub struct RetellSettings {
    pub api_key: String,
    pub from_number: String,
    pub base_url: String,
}

impl std::fmt::Debug for RetellSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetellSettings")
            .field("api_key", &"<set>")
            .field("from_number", &self.from_number)
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl RetellSettings {
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            api_key: settings.require_secret("RETELL_API_KEY")?,
            from_number: settings.require_phone("RETELL_FROM_NUMBER")?,
            base_url: settings.base_url("RETELL_BASE_URL", DEFAULT_BASE_URL)?,
        })
    }
}

pub struct Retell {
    settings: RetellSettings,
    client: reqwest::Client,
}

impl Retell {
    pub fn new(settings: RetellSettings, timeout: std::time::Duration) -> anyhow::Result<Self> {
        Ok(Self {
            settings,
            client: transport::client(timeout)?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url)
    }

    async fn dial(&self, dial: &Dial) -> DialResult {
        let body = CreatePhoneCall {
            from_number: &self.settings.from_number,
            to_number: &dial.to,
            override_agent_id: &dial.script_id,
            metadata: Value::Object(metadata_with_keys(dial)),
            retell_llm_dynamic_variables: Value::Object(metadata_as_variables(&dial.metadata)),
            idempotency_key: dial.idempotency_key.to_string(),
        };
        let request = self
            .client
            .post(self.url("/v2/create-phone-call"))
            .bearer_auth(&self.settings.api_key)
            .json(&body);
        match transport::send_dial(request).await {
            Ok(answer) => classify(&answer),
            Err(result) => result,
        }
    }

    async fn lookup(&self, query: &StatusQuery) -> CallLookup {
        let Some(call_id) = &query.provider_call_id else {
            // Retell deduplicates dials by the idempotency key, so a dial of unknown fate is
            // redialed with its key rather than searched for.
            return CallLookup::Undecided {
                reason: "Retell is asked by call id only".into(),
            };
        };
        let request = self
            .client
            .get(self.url(&format!("/v2/get-call/{}", encode_path(call_id))))
            .bearer_auth(&self.settings.api_key);
        let answer = match transport::send_lookup(request).await {
            Ok(answer) => answer,
            Err(reason) => return CallLookup::Undecided { reason },
        };
        if !answer.status.is_success() {
            return transport::lookup_failure(&answer);
        }
        match serde_json::from_slice::<Value>(&answer.body) {
            Ok(call) => lookup_of(&call),
            Err(error) => CallLookup::Undecided {
                reason: format!("Retell's call is not JSON: {error}"),
            },
        }
    }
}

#[derive(Serialize)]
struct CreatePhoneCall<'a> {
    from_number: &'a str,
    to_number: &'a str,
    override_agent_id: &'a str,
    metadata: Value,
    retell_llm_dynamic_variables: Value,
    idempotency_key: String,
}

impl Provider for Retell {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Retell
    }

    /// Retell keeps `idempotency_key` for an hour: a redial with the same key within it
    /// returns the call already placed.
    fn deduplicates_by_key(&self) -> bool {
        true
    }

    fn place<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult> {
        self.dial(dial).boxed()
    }

    fn status<'a>(&'a self, query: &'a StatusQuery) -> BoxFuture<'a, CallLookup> {
        self.lookup(query).boxed()
    }
}

/// A path segment, percent-encoded.
fn encode_path(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Maps Retell's answer to a dial.
fn classify(answer: &Answer) -> DialResult {
    if answer.status.is_success() {
        return match serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|body| {
                body.get("call_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }) {
            Some(id) if transport::valid_call_id(&id) => DialResult::Accepted {
                provider_call_id: id,
            },
            _ => transport::accepted_without_id(answer, "call_id"),
        };
    }
    if is_concurrency_refusal(answer) {
        return DialResult::ConcurrencyLimited {
            error: format!(
                "Retell refused the dial for the account's concurrency limit ({}): {}",
                answer.status,
                answer.snippet()
            ),
            retry_after: answer.retry_after,
        };
    }
    transport::failure(answer)
}

/// Retell answers a create over the workspace's concurrency limit with a 4xx whose message
/// names the concurrency limit (its 429 otherwise means API rate limiting).
fn is_concurrency_refusal(answer: &Answer) -> bool {
    answer.status.is_client_error()
        && String::from_utf8_lossy(&answer.body)
            .to_ascii_lowercase()
            .contains("concurrency")
}

/// `disconnection_reason` → outcome. Unknown reasons are FAILED (never redialed by
/// default: the person may have been called) and logged.
pub fn outcome_of(disconnection_reason: &str) -> Option<ReportedOutcome> {
    use CallOutcome::*;
    use ReportedOutcome::Outcome;
    let outcome = match disconnection_reason {
        "user_hangup"
        | "agent_hangup"
        | "call_transfer"
        | "transfer_bridged"
        | "inactivity"
        | "max_duration_reached"
        | "user_requested_dnc"
        | "user_requested_callback"
        | "call_take_over" => Outcome(Completed),
        "dial_busy" | "user_declined" => Outcome(Busy),
        "dial_no_answer" => Outcome(NoAnswer),
        "voicemail_reached" | "ivr_reached" => Outcome(Voicemail),
        "manual_stopped" => Outcome(Canceled),
        "concurrency_limit_reached" | "no_concurrency_fallback" => {
            ReportedOutcome::ConcurrencyLimited
        }
        "dial_failed"
        | "invalid_destination"
        | "telephony_provider_permission_denied"
        | "telephony_provider_unavailable"
        | "sip_routing_error"
        | "marked_as_spam"
        | "network_blocked"
        | "scam_detected"
        | "registered_call_timeout"
        | "transfer_cancelled"
        | "no_valid_payment"
        | "credit_exhausted"
        | "budget_reached" => Outcome(Failed),
        reason if reason.starts_with("error_") => Outcome(Failed),
        _ => return None,
    };
    Some(outcome)
}

/// How a Retell call object ended, or `None` while it has not.
fn end_of(call: &Value) -> Result<Option<EndOfCall>, String> {
    let provider_call_id = call
        .get("call_id")
        .and_then(Value::as_str)
        .filter(|id| transport::valid_call_id(id))
        .ok_or("call.call_id is missing or invalid")?
        .to_owned();
    let status = call
        .get("call_status")
        .and_then(Value::as_str)
        .unwrap_or("");
    if matches!(status, "registered" | "ongoing") {
        return Ok(None);
    }
    let reason = call
        .get("disconnection_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let outcome = match reason.as_deref().and_then(outcome_of) {
        Some(outcome) => outcome,
        None => {
            tracing::warn!(
                provider_call_id,
                call_status = status,
                disconnection_reason = reason.as_deref(),
                "Retell end reason not in the outcome table: FAILED"
            );
            ReportedOutcome::Outcome(CallOutcome::Failed)
        }
    };
    // A connected call the analysis found to be a voicemail.
    let outcome = match (outcome, call.pointer("/call_analysis/in_voicemail")) {
        (ReportedOutcome::Outcome(CallOutcome::Completed), Some(Value::Bool(true))) => {
            ReportedOutcome::Outcome(CallOutcome::Voicemail)
        }
        (outcome, _) => outcome,
    };
    let start = call.get("start_timestamp").and_then(Value::as_i64);
    let end = call.get("end_timestamp").and_then(Value::as_i64);
    let duration_ms = call
        .get("duration_ms")
        .and_then(Value::as_i64)
        .or_else(|| Some(end? - start?));
    Ok(Some(EndOfCall {
        provider_call_id,
        outcome,
        end_reason: reason.map(|r| r.chars().take(255).collect()),
        duration_sec: duration_ms
            .filter(|ms| *ms >= 0)
            .map(|ms| ((ms + 500) / 1000).min(i64::from(i32::MAX)) as i32),
        ended_at: end.and_then(chrono::DateTime::from_timestamp_millis),
        result: result_of(call),
    }))
}

/// What a Retell call object reports beyond the outcome: `call_analysis.call_summary`, the
/// `transcript` (or `transcript_object`'s turns), `recording_url`, and `call_analysis`
/// itself (custom_analysis_data, in_voicemail, user_sentiment, call_successful).
fn result_of(call: &Value) -> Option<CallResult> {
    let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str);
    let mut result = CallResult::default()
        .with_summary(text("/call_analysis/call_summary"))
        .with_transcript(text("/transcript"))
        .with_recording_url(text("/recording_url"))
        .with_analysis(call.get("call_analysis"));
    if result.transcript.is_none() {
        if let Some(turns) = call.get("transcript_object").and_then(Value::as_array) {
            result = result.with_transcript_turns(turns, "role", &["content"]);
        }
    }
    result.non_empty()
}

fn lookup_of(call: &Value) -> CallLookup {
    match end_of(call) {
        Ok(Some(end)) => CallLookup::Ended(end),
        Ok(None) => match call.get("call_id").and_then(Value::as_str) {
            Some(id) => CallLookup::Live {
                provider_call_id: id.to_owned(),
            },
            None => CallLookup::Undecided {
                reason: "Retell's call has no call_id".into(),
            },
        },
        Err(reason) => CallLookup::Undecided { reason },
    }
}

/// `/callbacks/retell`.
pub struct RetellWebhooks {
    api_key: String,
}

impl RetellWebhooks {
    pub fn new(api_key: String) -> Self {
        Self { api_key }
    }
}

/// Retell's signature header, exactly `v=<digits: timestamp ms>,d=<64 lowercase hex>` (its
/// SDK's `fullmatch`).
fn parse_signature(header: &str) -> Option<(i64, &str)> {
    let (version, digest) = header.split_once(',')?;
    let digits = version.strip_prefix("v=")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let timestamp = digits.parse().ok()?;
    let digest = digest.strip_prefix("d=")?;
    (digest.len() == 64).then_some((timestamp, digest))
}

impl WebhookScheme for RetellWebhooks {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Retell
    }

    fn verify(
        &self,
        request: &InboundWebhook<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), VerifyError> {
        const HEADER: &str = "x-retell-signature";
        let header = request
            .header(HEADER)?
            .filter(|h| !h.trim().is_empty())
            .ok_or(VerifyError::MissingHeader(HEADER))?;
        let (timestamp_ms, digest) =
            parse_signature(header).ok_or(VerifyError::MalformedHeader(HEADER))?;
        check_window(
            timestamp_ms,
            now.timestamp_millis(),
            SIGNATURE_WINDOW_MS,
            SIGNATURE_WINDOW_MS,
        )?;
        // Signed over the timestamp as a number (so "v=0017..." verifies like "v=17...", as
        // in Retell's SDK).
        let mac = hmac_sha256(
            self.api_key.as_bytes(),
            &[request.body, timestamp_ms.to_string().as_bytes()],
        );
        if verify_hex_mac(mac, digest) {
            Ok(())
        } else {
            Err(VerifyError::NoMatch)
        }
    }

    fn parse(&self, request: &InboundWebhook<'_>) -> Result<WebhookEvent, ReportError> {
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|e| ReportError::Malformed(e.to_string()))?;
        let event = body
            .get("event")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("event", "is required (a string)"))?;
        if !matches!(event, "call_ended" | "call_analyzed") {
            return Ok(WebhookEvent::Ignored {
                event: event.to_owned(),
            });
        }
        let call = body
            .get("call")
            .filter(|c| c.is_object())
            .ok_or_else(|| invalid("call", "is required (the call object)"))?;
        let end = match end_of(call) {
            Ok(Some(end)) => end,
            // An end event for a call Retell still calls ongoing: nothing to settle yet.
            Ok(None) => {
                return Ok(WebhookEvent::Ignored {
                    event: event.to_owned(),
                })
            }
            Err(message) => return Err(invalid("call", &message)),
        };
        Ok(WebhookEvent::EndOfCall(ProviderReport::from_end(
            format!("retell:{}:{event}", end.provider_call_id),
            ProviderKind::Retell.report_source(),
            attempt_key_in(call.get("metadata")),
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

    #[test]
    fn parses_the_signature_header() {
        let digest = "a".repeat(64);
        assert_eq!(
            parse_signature(&format!("v=1700000000000,d={digest}")),
            Some((1_700_000_000_000, digest.as_str()))
        );
        assert_eq!(parse_signature("v=1,d=abc"), None);
        assert_eq!(parse_signature(&format!("d={digest},v=1")), None);
        assert_eq!(parse_signature(""), None);
        assert_eq!(parse_signature(&format!("v=-1,d={digest}")), None);
        assert_eq!(parse_signature(&format!("v=1, d={digest}")), None);
    }

    #[test]
    fn maps_every_documented_reason() {
        assert_eq!(
            outcome_of("dial_busy"),
            Some(ReportedOutcome::Outcome(CallOutcome::Busy))
        );
        assert_eq!(
            outcome_of("error_llm_websocket_open"),
            Some(ReportedOutcome::Outcome(CallOutcome::Failed))
        );
        assert_eq!(
            outcome_of("concurrency_limit_reached"),
            Some(ReportedOutcome::ConcurrencyLimited)
        );
        assert_eq!(outcome_of("something_new"), None);
    }

    #[test]
    fn a_connected_voicemail_is_voicemail() {
        let call = serde_json::json!({
            "call_id": "c1", "call_status": "ended", "disconnection_reason": "user_hangup",
            "call_analysis": {"in_voicemail": true}, "duration_ms": 1499
        });
        let end = end_of(&call).unwrap().unwrap();
        assert_eq!(
            end.outcome,
            ReportedOutcome::Outcome(CallOutcome::Voicemail)
        );
        assert_eq!(end.duration_sec, Some(1));
    }
}
