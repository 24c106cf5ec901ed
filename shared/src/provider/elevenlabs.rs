//! ElevenLabs Agents (`PROVIDER=elevenlabs`).
//!
//! - Dial: `POST {ELEVENLABS_BASE_URL}/v1/convai/twilio/outbound-call` (or
//!   `/v1/convai/sip-trunk/outbound-call` with `ELEVENLABS_TELEPHONY=sip_trunk`),
//!   `xi-api-key: <ELEVENLABS_API_KEY>`, `{agent_id, agent_phone_number_id, to_number,
//!   conversation_initiation_client_data: {dynamic_variables}}` → `{success, message,
//!   conversation_id, callSid | sip_call_id}`; `success: false` is a refusal even on a 200.
//!   How ElevenLabs refuses a call over its concurrency or burst limit is not documented: a
//!   4xx or a `success: false` whose own words (not the request it echoes) name a
//!   concurrency or burst limit waits without counting an attempt.
//!   ElevenLabs takes no idempotency key: the attempt key travels as a dynamic variable, and
//!   before a redial of a dial of unknown fate the conversation is looked for
//!   ([`super::dial_once`]).
//! - Webhook (`/callbacks/elevenlabs`): `{type, event_timestamp, data}` signed
//!   `ElevenLabs-Signature: t=<s>,v0=<hex HMAC-SHA256("{t}.{body}")>` with the workspace
//!   webhook's secret (`ELEVENLABS_WEBHOOK_SECRET`), 30 minutes back (as ElevenLabs' SDK)
//!   and 5 ahead. `post_call_transcription` and `call_initiation_failure` end a call.
//!   ElevenLabs never retries a webhook: the reclaimer's lookup is the backstop.
//!   The stored end reason keeps ElevenLabs' words: `call_result=…; status=…;
//!   termination_reason=…`, or `call_initiation_failure=<reason>` with the telephony's
//!   status (Twilio's `CallStatus` / `SipResponseCode`, SIP's `sip_status_code` /
//!   `error_reason`).
//! - Lookup: `GET /v1/convai/conversations/{conversation_id}`, or the agent's conversations
//!   since the first dial with the key (`dynamic_variable_filter=ebra_attempt_key:eq:<key>`,
//!   the SDK's `name:op:value`), compared by the echoed key. A conversation has ended only
//!   once its `status` says so (`done`, `failed`, or `processing` with a `call_result`).

use futures::future::BoxFuture;
use futures::FutureExt as _;
use serde_json::{json, Value};

use super::transport::{self, Answer};
use super::{
    attempt_key_in, metadata_as_variables, CallLookup, Dial, DialResult, EndOfCall, InboundWebhook,
    Provider, ProviderKind, ProviderReport, ReportError, ReportedOutcome, StatusQuery,
    WebhookEvent, WebhookScheme, ATTEMPT_KEY_FIELD, CALL_ID_FIELD,
};
use crate::call_result::CallResult;
use crate::config::{ConfigError, Settings};
use crate::domain::CallOutcome;
use crate::webhook_signature::{check_window, hmac_sha256, verify_hex_mac, VerifyError};

pub const DEFAULT_BASE_URL: &str = "https://api.elevenlabs.io";

/// How old a signature may be (ElevenLabs' own SDK allows 30 minutes), and how far ahead
/// (its SDK sets no bound; a clock a little ahead is no attack, an hour is), in ms.
const SIGNATURE_MAX_AGE_MS: i64 = 30 * 60 * 1000;
const SIGNATURE_MAX_AHEAD_MS: i64 = 5 * 60 * 1000;

/// Which telephony the agent's phone number is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Telephony {
    Twilio,
    SipTrunk,
}

/// `ELEVENLABS_*` settings (the webhook secret is read with the other routes' secrets).
#[derive(Clone)]
pub struct ElevenLabsSettings {
    pub api_key: String,
    pub agent_phone_number_id: String,
    pub telephony: Telephony,
    pub base_url: String,
}

impl std::fmt::Debug for ElevenLabsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElevenLabsSettings")
            .field("api_key", &"<set>")
            .field("agent_phone_number_id", &self.agent_phone_number_id)
            .field("telephony", &self.telephony)
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl ElevenLabsSettings {
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let telephony = match settings
            .get("ELEVENLABS_TELEPHONY")
            .as_deref()
            .map(str::trim)
        {
            None | Some("twilio") => Telephony::Twilio,
            Some("sip_trunk") => Telephony::SipTrunk,
            Some(other) => {
                return Err(ConfigError {
                    name: "ELEVENLABS_TELEPHONY",
                    problem: format!("must be twilio or sip_trunk, got {other:?}"),
                })
            }
        };
        Ok(Self {
            api_key: settings.require_secret("ELEVENLABS_API_KEY")?,
            agent_phone_number_id: settings.require_secret("ELEVENLABS_AGENT_PHONE_NUMBER_ID")?,
            telephony,
            base_url: settings.base_url("ELEVENLABS_BASE_URL", DEFAULT_BASE_URL)?,
        })
    }
}

pub struct ElevenLabs {
    settings: ElevenLabsSettings,
    client: reqwest::Client,
}

impl ElevenLabs {
    pub fn new(settings: ElevenLabsSettings, timeout: std::time::Duration) -> anyhow::Result<Self> {
        Ok(Self {
            settings,
            client: transport::client(timeout)?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url)
    }

    async fn dial(&self, dial: &Dial) -> DialResult {
        let mut variables = metadata_as_variables(&dial.metadata);
        variables.insert(CALL_ID_FIELD.into(), dial.call_id.to_string().into());
        variables.insert(
            ATTEMPT_KEY_FIELD.into(),
            dial.idempotency_key.to_string().into(),
        );
        let body = json!({
            "agent_id": dial.script_id,
            "agent_phone_number_id": self.settings.agent_phone_number_id,
            "to_number": dial.to,
            "conversation_initiation_client_data": {"dynamic_variables": variables},
        });
        let path = match self.settings.telephony {
            Telephony::Twilio => "/v1/convai/twilio/outbound-call",
            Telephony::SipTrunk => "/v1/convai/sip-trunk/outbound-call",
        };
        let request = self
            .client
            .post(self.url(path))
            .header("xi-api-key", &self.settings.api_key)
            .json(&body);
        match transport::send_dial(request).await {
            Ok(answer) => classify(&answer),
            Err(result) => result,
        }
    }

    async fn get(&self, url: impl reqwest::IntoUrl) -> Result<Value, CallLookup> {
        let request = self
            .client
            .get(url)
            .header("xi-api-key", &self.settings.api_key);
        let answer = transport::send_lookup(request)
            .await
            .map_err(|reason| CallLookup::Undecided { reason })?;
        if !answer.status.is_success() {
            return Err(transport::lookup_failure(&answer));
        }
        serde_json::from_slice(&answer.body).map_err(|error| CallLookup::Undecided {
            reason: format!("ElevenLabs' answer is not JSON: {error}"),
        })
    }

    async fn fetch_conversation(&self, conversation_id: &str) -> Result<Value, CallLookup> {
        let mut url = url::Url::parse(&self.url("/v1/convai/conversations/")).map_err(|error| {
            CallLookup::Undecided {
                reason: format!("ELEVENLABS_BASE_URL: {error}"),
            }
        })?;
        url.path_segments_mut()
            .map(|mut segments| {
                segments.pop_if_empty().push(conversation_id);
            })
            .ok();
        self.get(url).await
    }

    /// The agent's conversations started since the first dial with the key, filtered by the
    /// key's dynamic variable; each candidate is read to compare the echoed key, so a filter
    /// the API ignored cannot make another call pass for this one.
    async fn lookup_by_key(&self, query: &StatusQuery) -> CallLookup {
        /// Candidates read before giving up on telling (each is one request).
        const MAX_CANDIDATES: usize = 3;
        let mut url = match url::Url::parse(&self.url("/v1/convai/conversations")) {
            Ok(url) => url,
            Err(error) => {
                return CallLookup::Undecided {
                    reason: format!("ELEVENLABS_BASE_URL: {error}"),
                }
            }
        };
        url.query_pairs_mut()
            .append_pair("agent_id", &query.script_id)
            .append_pair(
                "call_start_after_unix",
                &(query.since.timestamp() - 60).to_string(),
            )
            .append_pair(
                "dynamic_variable_filter",
                &format!("{ATTEMPT_KEY_FIELD}:eq:{}", query.idempotency_key),
            )
            .append_pair("page_size", "10");
        let page = match self.get(url).await {
            Ok(page) => page,
            Err(lookup) => return lookup,
        };
        let Some(conversations) = page.get("conversations").and_then(Value::as_array) else {
            return CallLookup::Undecided {
                reason: "ElevenLabs' conversation list has no conversations array".into(),
            };
        };
        let candidates: Vec<&str> = conversations
            .iter()
            .filter_map(|summary| summary.get("conversation_id").and_then(Value::as_str))
            .filter(|id| {
                !query
                    .known_provider_call_ids
                    .iter()
                    .any(|known| known == id)
            })
            .collect();
        for id in candidates.iter().take(MAX_CANDIDATES) {
            let conversation = match self.fetch_conversation(id).await {
                Ok(conversation) => conversation,
                Err(CallLookup::NotFound) => continue,
                Err(lookup) => return lookup,
            };
            let echoed = attempt_key_in(
                conversation.pointer("/conversation_initiation_client_data/dynamic_variables"),
            );
            if echoed == Some(query.idempotency_key) {
                return lookup_of(&conversation);
            }
        }
        if candidates.len() > MAX_CANDIDATES {
            return CallLookup::Undecided {
                reason: format!(
                    "{} conversations match and the first {MAX_CANDIDATES} are not this attempt's",
                    candidates.len()
                ),
            };
        }
        CallLookup::NotFound
    }
}

impl Provider for ElevenLabs {
    fn kind(&self) -> ProviderKind {
        ProviderKind::ElevenLabs
    }

    fn deduplicates_by_key(&self) -> bool {
        false
    }

    fn place<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult> {
        self.dial(dial).boxed()
    }

    fn status<'a>(&'a self, query: &'a StatusQuery) -> BoxFuture<'a, CallLookup> {
        async move {
            match &query.provider_call_id {
                Some(id) => match self.fetch_conversation(id).await {
                    Ok(conversation) => lookup_of(&conversation),
                    Err(lookup) => lookup,
                },
                None => self.lookup_by_key(query).await,
            }
        }
        .boxed()
    }
}

/// Maps ElevenLabs' answer to a dial.
fn classify(answer: &Answer) -> DialResult {
    let body = serde_json::from_slice::<Value>(&answer.body).unwrap_or(Value::Null);
    if answer.status.is_success() {
        if body.get("success").and_then(Value::as_bool) == Some(false) {
            let message = body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return if names_the_call_limit(&body) {
                DialResult::ConcurrencyLimited {
                    error: format!(
                        "ElevenLabs refused the dial for its concurrency limit: {message}"
                    ),
                    retry_after: answer.retry_after,
                }
            } else {
                DialResult::Permanent {
                    error: format!("ElevenLabs refused the call: {message}"),
                }
            };
        }
        return match body.get("conversation_id").and_then(Value::as_str) {
            Some(id) if transport::valid_call_id(id) => DialResult::Accepted {
                provider_call_id: id.to_owned(),
            },
            _ => transport::accepted_without_id(answer, "conversation_id"),
        };
    }
    // A validation error (422) echoes the request, client metadata included: it never
    // names the limit, whatever words the metadata holds.
    if answer.status.is_client_error()
        && answer.status != reqwest::StatusCode::UNPROCESSABLE_ENTITY
        && names_the_call_limit(&body)
    {
        return DialResult::ConcurrencyLimited {
            error: format!(
                "ElevenLabs refused the dial for the concurrency limit ({}): {}",
                answer.status,
                answer.snippet()
            ),
            retry_after: answer.retry_after,
        };
    }
    transport::failure(answer)
}

/// Whether ElevenLabs' own words in an answer (its `message`, or the `detail` of an error:
/// a text, or its `status` / `code` / `type` / `message`) name a concurrency or burst limit:
/// `concurrent_limit_exceeded`, `too_many_concurrent_requests`, "... burst limit ...". How
/// ElevenLabs refuses a call over the limit is not documented (PROVIDERS.md §9); the
/// request's own fields, which some answers echo, are never read.
fn names_the_call_limit(body: &Value) -> bool {
    let detail = body.get("detail");
    let words = [
        body.get("message"),
        detail.filter(|d| d.is_string()),
        detail.and_then(|d| d.get("status")),
        detail.and_then(|d| d.get("code")),
        detail.and_then(|d| d.get("type")),
        detail.and_then(|d| d.get("message")),
    ];
    words
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|text| {
            let text = text.to_ascii_lowercase();
            text.contains("concurren") || text.contains("burst")
        })
}

/// `metadata.phone_call.call_result` → outcome.
pub fn outcome_of_call_result(call_result: &str) -> Option<CallOutcome> {
    Some(match call_result {
        "answered" => CallOutcome::Completed,
        "voicemail" => CallOutcome::Voicemail,
        "busy" => CallOutcome::Busy,
        "no_answer" => CallOutcome::NoAnswer,
        "failed" => CallOutcome::Failed,
        _ => return None,
    })
}

/// `call_initiation_failure`'s `failure_reason` → outcome.
pub fn outcome_of_failure_reason(failure_reason: &str) -> CallOutcome {
    match failure_reason {
        "busy" => CallOutcome::Busy,
        "no-answer" => CallOutcome::NoAnswer,
        _ => CallOutcome::Failed,
    }
}

/// Where a conversation was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A `post_call_transcription` webhook's data: sent once the call is over.
    PostCall,
    /// `GET /v1/convai/conversations/{id}`: the conversation may still be running.
    Lookup,
}

/// How a conversation ended, or `None` while it has not.
///
/// `status` says whether it is over: `initiated` and `in-progress` are running, `processing`
/// is over and being analysed, `done` and `failed` are final. `metadata.phone_call.call_result`
/// says how the call went, and is trusted only once the conversation is over: ElevenLabs
/// does not document when it is set, and a running conversation taken for ended would free
/// its slot while the person is still on the line (invariant 1).
fn end_of(conversation: &Value, source: Source) -> Result<Option<EndOfCall>, String> {
    let provider_call_id = conversation
        .get("conversation_id")
        .and_then(Value::as_str)
        .filter(|id| transport::valid_call_id(id))
        .ok_or("conversation_id is missing or invalid")?
        .to_owned();
    let status = conversation.get("status").and_then(Value::as_str);
    let call_result = conversation
        .pointer("/metadata/phone_call/call_result")
        .and_then(Value::as_str);
    let result = call_result.and_then(outcome_of_call_result);
    let outcome = match (status, result, source) {
        (Some("done" | "failed" | "processing"), Some(outcome), _) => outcome,
        (Some("done"), None, _) => CallOutcome::Completed,
        (Some("failed"), None, _) => CallOutcome::Failed,
        // A post-call webhook comes once the call is over, whatever status it carries.
        (_, Some(outcome), Source::PostCall) => outcome,
        (_, None, Source::PostCall) => CallOutcome::Completed,
        // Running, or over without a result yet (the next look sees it done).
        (Some("initiated" | "in-progress" | "processing"), _, Source::Lookup) => return Ok(None),
        (other, _, Source::Lookup) => {
            return Err(format!("the conversation's status is unknown: {other:?}"))
        }
    };
    let termination_reason = conversation
        .pointer("/metadata/termination_reason")
        .and_then(Value::as_str)
        .filter(|reason| !reason.is_empty());
    let end_reason = [
        call_result.map(|r| format!("call_result={r}")),
        status.map(|s| format!("status={s}")),
        termination_reason.map(|t| format!("termination_reason={t}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("; ");
    let started = conversation
        .pointer("/metadata/start_time_unix_secs")
        .and_then(Value::as_i64);
    let duration = conversation
        .pointer("/metadata/call_duration_secs")
        .and_then(Value::as_i64)
        .filter(|d| *d >= 0);
    Ok(Some(EndOfCall {
        provider_call_id,
        outcome: ReportedOutcome::Outcome(outcome),
        end_reason: (!end_reason.is_empty()).then(|| bounded(&end_reason)),
        duration_sec: duration.and_then(|d| i32::try_from(d).ok()),
        ended_at: started
            .zip(duration)
            .and_then(|(start, duration)| chrono::DateTime::from_timestamp(start + duration, 0)),
        result: result_of(conversation),
    }))
}

/// What an ElevenLabs conversation reports beyond the outcome: `analysis.transcript_summary`,
/// the `transcript` turns (`role`, `message`), and `analysis` itself (call_successful,
/// data_collection_results, evaluation_criteria_results). It gives no recording link (the
/// audio comes as its own webhook).
fn result_of(conversation: &Value) -> Option<CallResult> {
    let mut result = CallResult::default()
        .with_summary(
            conversation
                .pointer("/analysis/transcript_summary")
                .and_then(Value::as_str),
        )
        .with_analysis(conversation.get("analysis"));
    if let Some(turns) = conversation.get("transcript").and_then(Value::as_array) {
        result = result.with_transcript_turns(turns, "role", &["message"]);
    }
    result.non_empty()
}

/// An end reason as stored: at most 255 characters.
fn bounded(reason: &str) -> String {
    reason.chars().take(255).collect()
}

/// A `call_initiation_failure`'s end reason: the failure reason and what the telephony said
/// (`metadata.type` twilio: its status callback's `CallStatus` and `SipResponseCode`; sip:
/// `sip_status_code` and `error_reason`).
fn initiation_failure_reason(reason: &str, data: &Value) -> String {
    let mut text = format!("call_initiation_failure={reason}");
    let kind = data.pointer("/metadata/type").and_then(Value::as_str);
    let fields: &[&str] = match kind {
        Some("twilio") => &["CallStatus", "SipResponseCode"],
        Some("sip") => &["sip_status_code", "error_reason"],
        _ => &[],
    };
    for field in fields {
        let value = data
            .pointer("/metadata/body")
            .and_then(|body| body.get(*field));
        match value {
            Some(Value::String(value)) if !value.is_empty() => {
                text.push_str(&format!("; {field}={value}"))
            }
            Some(value @ Value::Number(_)) => text.push_str(&format!("; {field}={value}")),
            _ => {}
        }
    }
    bounded(&text)
}

fn lookup_of(conversation: &Value) -> CallLookup {
    match end_of(conversation, Source::Lookup) {
        Ok(Some(end)) => CallLookup::Ended(end),
        Ok(None) => match conversation.get("conversation_id").and_then(Value::as_str) {
            Some(id) => CallLookup::Live {
                provider_call_id: id.to_owned(),
            },
            None => CallLookup::Undecided {
                reason: "ElevenLabs' conversation has no conversation_id".into(),
            },
        },
        Err(reason) => CallLookup::Undecided { reason },
    }
}

/// `/callbacks/elevenlabs`.
pub struct ElevenLabsWebhooks {
    secret: String,
}

impl ElevenLabsWebhooks {
    pub fn new(secret: String) -> Self {
        Self { secret }
    }
}

/// `t=<unix seconds>,v0=<hex>`, read as ElevenLabs' SDK reads it: parts split on ',' and
/// not trimmed, in any order, unknown parts ignored, the last `t=` and the last `v0=` taken.
/// The timestamp comes back as sent (the SDK signs its text) and as a number.
fn parse_signature(header: &str) -> Option<(&str, i64, &str)> {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        if let Some(value) = part.strip_prefix("t=") {
            timestamp = Some(value);
        } else if let Some(value) = part.strip_prefix("v0=") {
            signature = Some(value);
        }
    }
    let timestamp = timestamp?;
    if timestamp.is_empty() || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((timestamp, timestamp.parse().ok()?, signature?))
}

impl WebhookScheme for ElevenLabsWebhooks {
    fn provider(&self) -> ProviderKind {
        ProviderKind::ElevenLabs
    }

    fn verify(
        &self,
        request: &InboundWebhook<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), VerifyError> {
        const HEADER: &str = "elevenlabs-signature";
        let header = request
            .header(HEADER)?
            .filter(|h| !h.trim().is_empty())
            .ok_or(VerifyError::MissingHeader(HEADER))?;
        let (signed_timestamp, timestamp, signature) =
            parse_signature(header).ok_or(VerifyError::MalformedHeader(HEADER))?;
        check_window(
            timestamp.saturating_mul(1000),
            now.timestamp_millis(),
            SIGNATURE_MAX_AGE_MS,
            SIGNATURE_MAX_AHEAD_MS,
        )?;
        let mac = hmac_sha256(
            self.secret.as_bytes(),
            &[signed_timestamp.as_bytes(), b".", request.body],
        );
        if verify_hex_mac(mac, signature) {
            Ok(())
        } else {
            Err(VerifyError::NoMatch)
        }
    }

    fn parse(&self, request: &InboundWebhook<'_>) -> Result<WebhookEvent, ReportError> {
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|e| ReportError::Malformed(e.to_string()))?;
        let kind = body
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("type", "is required (a string)"))?;
        let data = body.get("data").filter(|d| d.is_object());
        let end = match kind {
            "post_call_transcription" => {
                let data = data.ok_or_else(|| invalid("data", "is required (an object)"))?;
                match end_of(data, Source::PostCall) {
                    Ok(Some(end)) => end,
                    Ok(None) => {
                        return Ok(WebhookEvent::Ignored {
                            event: kind.to_owned(),
                        })
                    }
                    Err(reason) => return Err(invalid("data", &reason)),
                }
            }
            "call_initiation_failure" => {
                let data = data.ok_or_else(|| invalid("data", "is required (an object)"))?;
                let provider_call_id = data
                    .get("conversation_id")
                    .and_then(Value::as_str)
                    .filter(|id| transport::valid_call_id(id))
                    .ok_or_else(|| invalid("data.conversation_id", "is required"))?;
                let reason = data
                    .get("failure_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                EndOfCall {
                    provider_call_id: provider_call_id.to_owned(),
                    outcome: ReportedOutcome::Outcome(outcome_of_failure_reason(reason)),
                    end_reason: Some(initiation_failure_reason(reason, data)),
                    duration_sec: Some(0),
                    ended_at: body
                        .get("event_timestamp")
                        .and_then(Value::as_i64)
                        .and_then(|t| chrono::DateTime::from_timestamp(t, 0)),
                    result: None,
                }
            }
            _ => {
                return Ok(WebhookEvent::Ignored {
                    event: kind.to_owned(),
                })
            }
        };
        let attempt_key = data.and_then(|data| {
            attempt_key_in(data.pointer("/conversation_initiation_client_data/dynamic_variables"))
        });
        Ok(WebhookEvent::EndOfCall(ProviderReport::from_end(
            format!("elevenlabs:{}:{kind}", end.provider_call_id),
            ProviderKind::ElevenLabs.report_source(),
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
    use hmac::Mac as _;

    #[test]
    fn parses_the_signature_header() {
        assert_eq!(
            parse_signature("t=1700000000,v0=abcd"),
            Some(("1700000000", 1_700_000_000, "abcd"))
        );
        assert_eq!(
            parse_signature("v0=aa,x=1,t=1700000000,v0=bb"),
            Some(("1700000000", 1_700_000_000, "bb"))
        );
        assert_eq!(parse_signature("t=1700000000"), None);
        assert_eq!(parse_signature("v0=abcd"), None);
        assert_eq!(parse_signature("t=x,v0=abcd"), None);
        assert_eq!(parse_signature("t=1700000000, v0=abcd"), None);
    }

    #[test]
    fn maps_results() {
        assert_eq!(
            outcome_of_call_result("voicemail"),
            Some(CallOutcome::Voicemail)
        );
        assert_eq!(
            outcome_of_failure_reason("no-answer"),
            CallOutcome::NoAnswer
        );
        assert_eq!(outcome_of_failure_reason("unknown"), CallOutcome::Failed);
    }

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status: reqwest::StatusCode::from_u16(status).expect("a status"),
            retry_after: None,
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn classifies_dial_answers() {
        let accepted = answer(
            200,
            json!({"success": true, "message": "ok", "conversation_id": "conv_1", "callSid": "CA1"}),
        );
        assert_eq!(
            classify(&accepted),
            DialResult::Accepted {
                provider_call_id: "conv_1".into()
            }
        );
        let limited = [
            answer(
                200,
                json!({"success": false, "message": "Concurrency limit reached", "conversation_id": null}),
            ),
            answer(
                429,
                json!({"detail": {"type": "rate_limit_error", "code": "concurrent_limit_exceeded", "message": "x"}}),
            ),
            answer(
                429,
                json!({"detail": {"status": "too_many_concurrent_requests", "message": "x"}}),
            ),
            answer(
                403,
                json!({"detail": "Calls exceeding the burst limit are rejected"}),
            ),
        ];
        for one in &limited {
            assert!(
                matches!(classify(one), DialResult::ConcurrencyLimited { .. }),
                "{}",
                one.snippet()
            );
        }
        let rate_limited = answer(
            429,
            json!({"detail": {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "slow down"}}),
        );
        assert!(matches!(
            classify(&rate_limited),
            DialResult::Retryable {
                maybe_placed: false,
                ..
            }
        ));
        // The request's own words, echoed back, never name the limit.
        let refused = [
            answer(
                200,
                json!({"success": false, "message": "Invalid number", "conversation_id": null, "echo": "burst"}),
            ),
            answer(
                422,
                json!({"detail": [{"type": "value_error", "loc": ["body", "to_number"], "msg": "invalid", "input": {"plan": "burst", "note": "concurrency"}}]}),
            ),
            answer(
                400,
                json!({"detail": {"status": "invalid_parameters", "message": "bad"}, "input": "concurrent"}),
            ),
        ];
        for one in &refused {
            assert!(
                matches!(classify(one), DialResult::Permanent { .. }),
                "{}",
                one.snippet()
            );
        }
        assert!(matches!(
            classify(&answer(200, json!({"success": true, "message": "ok"}))),
            DialResult::Retryable {
                maybe_placed: true,
                ..
            }
        ));
    }

    fn conversation(status: &str, call_result: Option<&str>) -> Value {
        let mut conversation = json!({
            "conversation_id": "conv_1",
            "status": status,
            "metadata": {
                "start_time_unix_secs": 1_700_000_000,
                "call_duration_secs": 42,
                "termination_reason": "Call ended by remote party",
                "phone_call": {"type": "twilio"},
            },
        });
        if let Some(result) = call_result {
            conversation["metadata"]["phone_call"]["call_result"] = json!(result);
        }
        conversation
    }

    #[test]
    fn a_running_conversation_has_not_ended_whatever_its_call_result() {
        for (status, result) in [
            ("initiated", None),
            ("in-progress", None),
            ("in-progress", Some("answered")),
            ("initiated", Some("busy")),
            ("processing", None),
        ] {
            assert_eq!(
                lookup_of(&conversation(status, result)),
                CallLookup::Live {
                    provider_call_id: "conv_1".into()
                },
                "{status} {result:?}"
            );
        }
        assert!(matches!(
            lookup_of(&conversation("archived", Some("answered"))),
            CallLookup::Undecided { .. }
        ));
    }

    #[test]
    fn an_ended_conversation_settles_by_its_call_result_else_its_status() {
        let ended = |status, result| match lookup_of(&conversation(status, result)) {
            CallLookup::Ended(end) => (end.outcome, end.end_reason),
            other => panic!("{status} {result:?}: {other:?}"),
        };
        let outcome = ReportedOutcome::Outcome;
        assert_eq!(
            ended("done", Some("voicemail")),
            (
                outcome(CallOutcome::Voicemail),
                Some(
                    "call_result=voicemail; status=done; termination_reason=Call ended by remote party"
                        .into()
                )
            )
        );
        assert_eq!(
            ended("processing", Some("busy")).0,
            outcome(CallOutcome::Busy)
        );
        assert_eq!(
            ended("failed", Some("no_answer")).0,
            outcome(CallOutcome::NoAnswer)
        );
        assert_eq!(ended("done", None).0, outcome(CallOutcome::Completed));
        assert_eq!(ended("failed", None).0, outcome(CallOutcome::Failed));
        assert_eq!(
            ended("done", Some("new_value")).0,
            outcome(CallOutcome::Completed)
        );
        // A post-call webhook is an end, whatever status it carries.
        let end = end_of(&conversation("in-progress", None), Source::PostCall)
            .expect("valid")
            .expect("ended");
        assert_eq!(end.outcome, outcome(CallOutcome::Completed));
        assert_eq!(end.duration_sec, Some(42));
        assert_eq!(
            end.ended_at,
            chrono::DateTime::from_timestamp(1_700_000_042, 0)
        );
    }

    #[test]
    fn initiation_failures_keep_what_the_telephony_said() {
        let twilio = json!({"metadata": {"type": "twilio", "body": {"CallStatus": "busy", "SipResponseCode": "486"}}});
        assert_eq!(
            initiation_failure_reason("busy", &twilio),
            "call_initiation_failure=busy; CallStatus=busy; SipResponseCode=486"
        );
        let sip = json!({"metadata": {"type": "sip", "body": {"sip_status_code": 480, "error_reason": "Temporarily Unavailable"}}});
        assert_eq!(
            initiation_failure_reason("no-answer", &sip),
            "call_initiation_failure=no-answer; sip_status_code=480; error_reason=Temporarily Unavailable"
        );
        assert_eq!(
            initiation_failure_reason("unknown", &json!({})),
            "call_initiation_failure=unknown"
        );
    }

    #[test]
    fn the_timestamp_is_signed_as_sent() {
        let body = br#"{"type":"post_call_audio"}"#;
        let mac = hmac_sha256(b"wsec", &[b"01700000000", b".", body]);
        let header = format!(
            "t=01700000000,v0={}",
            hex::encode(mac.finalize().into_bytes())
        );
        let mut headers = ::http::HeaderMap::new();
        headers.insert(
            "elevenlabs-signature",
            header.parse().expect("a header value"),
        );
        let request = InboundWebhook {
            url: "https://hooks.ebra.test/callbacks/elevenlabs",
            headers: &headers,
            body,
        };
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a time");
        assert_eq!(
            ElevenLabsWebhooks::new("wsec".into()).verify(&request, now),
            Ok(())
        );
    }
}
