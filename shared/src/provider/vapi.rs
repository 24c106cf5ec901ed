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
//! - Lookup: `GET /call/{id}`, or `GET /call?phoneNumberId=&createdAtGe=` filtered by the
//!   number and the echoed key.
//! - Outcomes: [`outcome_of`] maps `endedReason`.

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

    /// The calls from Ebra's number since the first dial with this key, to this number,
    /// carrying this key (or, should Vapi not echo metadata in its listing, any call to this
    /// number that is not another attempt's: one call per phone makes it this attempt's).
    async fn lookup_by_key(&self, query: &StatusQuery) -> CallLookup {
        let mut url = match url::Url::parse(&self.url("/call")) {
            Ok(url) => url,
            Err(error) => return undecided(format!("VAPI_BASE_URL: {error}")),
        };
        url.query_pairs_mut()
            .append_pair("phoneNumberId", &self.settings.phone_number_id)
            .append_pair("assistantId", &query.script_id)
            .append_pair(
                "createdAtGe",
                &(query.since - chrono::Duration::seconds(60)).to_rfc3339(),
            )
            .append_pair("limit", "100");
        let request = self.client.get(url).bearer_auth(&self.settings.api_key);
        let calls = match read_json(request).await {
            Ok(Value::Array(calls)) => calls,
            Ok(other) => {
                return undecided(format!(
                    "Vapi's call list is not an array: {}",
                    truncate(&other.to_string())
                ))
            }
            Err(CallLookup::NotFound) => return CallLookup::NotFound,
            Err(lookup) => return lookup,
        };
        let key = query.idempotency_key.to_string();
        let newest = calls
            .iter()
            .filter(|call| {
                call.pointer("/customer/number").and_then(Value::as_str) == Some(&query.to)
            })
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
            .max_by_key(|call| created_at(call));
        match newest {
            Some(call) => lookup_of(call),
            None => CallLookup::NotFound,
        }
    }
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

/// `endedReason` → outcome. Unknown reasons are FAILED (never redialed by default: the
/// person may have been called) and logged.
pub fn outcome_of(ended_reason: &str) -> Option<ReportedOutcome> {
    use CallOutcome::*;
    use ReportedOutcome::Outcome;
    let outcome = match ended_reason {
        "customer-ended-call"
        | "assistant-ended-call"
        | "assistant-ended-call-after-message-spoken"
        | "assistant-ended-call-with-hangup-task"
        | "assistant-said-end-call-phrase"
        | "assistant-forwarded-call"
        | "exceeded-max-duration"
        | "silence-timed-out"
        | "call.in-progress.twilio-completed-call"
        | "call.in-progress.sip-completed-call"
        | "vonage-completed" => Outcome(Completed),
        "customer-busy" => Outcome(Busy),
        "customer-did-not-answer" => Outcome(NoAnswer),
        "voicemail" => Outcome(Voicemail),
        "manually-canceled" | "scheduled-call-deleted" => Outcome(Canceled),
        "call.start.error-subscription-concurrency-limit-reached" => {
            ReportedOutcome::ConcurrencyLimited
        }
        "twilio-failed-to-connect-call"
        | "twilio-reported-customer-misdialed"
        | "vonage-failed-to-connect-call"
        | "vonage-rejected"
        | "assistant-not-found"
        | "assistant-not-valid"
        | "assistant-request-failed"
        | "assistant-request-returned-error"
        | "phone-call-provider-closed-websocket"
        | "phone-call-provider-bypass-enabled-but-no-call-received" => Outcome(Failed),
        reason
            if reason.starts_with("call.start.error-")
                || reason.starts_with("call.in-progress.error-")
                || reason.starts_with("pipeline-error-")
                || reason.ends_with("-failed")
                || reason.ends_with("-worker-died")
                || reason.contains("error") =>
        {
            Outcome(Failed)
        }
        _ => return None,
    };
    Some(outcome)
}

/// How a Vapi call ended (`ended_reason` from the message, else the call), or `None` while
/// it has not.
fn end_of(call: &Value, ended_reason: Option<&str>) -> Result<Option<EndOfCall>, String> {
    let provider_call_id = call
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| transport::valid_call_id(id))
        .ok_or("call.id is missing or invalid")?
        .to_owned();
    let reason = ended_reason.or_else(|| call.get("endedReason").and_then(Value::as_str));
    let status = call.get("status").and_then(Value::as_str);
    if reason.is_none() && status != Some("ended") {
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
    let started = timestamp(call.get("startedAt"));
    let ended = timestamp(call.get("endedAt"));
    let duration_sec = match (started, ended) {
        (Some(started), Some(ended)) if ended >= started => {
            Some(((ended - started).num_milliseconds() + 500) / 1000)
        }
        _ => None,
    };
    Ok(Some(EndOfCall {
        provider_call_id,
        outcome,
        end_reason: reason.map(|r| r.chars().take(255).collect()),
        duration_sec: duration_sec.map(|s| s.min(i64::from(i32::MAX)) as i32),
        ended_at: ended,
    }))
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
        let ended_reason = message.get("endedReason").and_then(Value::as_str);
        let mut end = match end_of(call, ended_reason) {
            Ok(Some(end)) => end,
            Ok(None) => {
                return Ok(WebhookEvent::Ignored {
                    event: kind.to_owned(),
                })
            }
            Err(reason) => return Err(invalid("message.call", &reason)),
        };
        if end.duration_sec.is_none() {
            end.duration_sec = message
                .get("durationSeconds")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| s.round().min(f64::from(i32::MAX)) as i32);
        }
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

    #[test]
    fn the_limit_is_not_a_failure() {
        assert_eq!(
            outcome_of("call.start.error-subscription-concurrency-limit-reached"),
            Some(ReportedOutcome::ConcurrencyLimited)
        );
        assert_eq!(
            outcome_of("call.start.error-get-phone-number"),
            Some(ReportedOutcome::Outcome(CallOutcome::Failed))
        );
        assert_eq!(
            outcome_of("customer-did-not-answer"),
            Some(ReportedOutcome::Outcome(CallOutcome::NoAnswer))
        );
        assert_eq!(outcome_of("brand-new-reason"), None);
    }

    #[test]
    fn secrets_are_long_enough() {
        assert!(VapiWebhookSecret::parse("short").is_err());
        assert!(VapiWebhookSecret::parse("a-long-enough-secret b-long-enough-secret").is_ok());
    }
}
