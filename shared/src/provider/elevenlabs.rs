//! ElevenLabs Agents (`PROVIDER=elevenlabs`).
//!
//! - Dial: `POST {ELEVENLABS_BASE_URL}/v1/convai/twilio/outbound-call` (or
//!   `/v1/convai/sip-trunk/outbound-call` with `ELEVENLABS_TELEPHONY=sip_trunk`),
//!   `xi-api-key: <ELEVENLABS_API_KEY>`, `{agent_id, agent_phone_number_id, to_number,
//!   conversation_initiation_client_data: {dynamic_variables}}` → `{success, message,
//!   conversation_id, callSid | sip_call_id}`; `success: false` is a refusal even on a 200.
//!   ElevenLabs takes no idempotency key: the attempt key travels as a dynamic variable, and
//!   before a redial of a dial of unknown fate the conversation is looked for
//!   ([`super::dial_once`]).
//! - Webhook (`/callbacks/elevenlabs`): `{type, event_timestamp, data}` signed
//!   `ElevenLabs-Signature: t=<s>,v0=<hex HMAC-SHA256("{t}.{body}")>` with the workspace
//!   webhook's secret (`ELEVENLABS_WEBHOOK_SECRET`), 30 minutes back (as ElevenLabs' SDK)
//!   and 5 ahead. `post_call_transcription` and `call_initiation_failure` end a call.
//!   ElevenLabs never retries a webhook: the reclaimer's lookup is the backstop.
//! - Lookup: `GET /v1/convai/conversations/{conversation_id}`, or the agent's conversations
//!   since the first dial with the key, compared by the echoed key.

use futures::future::BoxFuture;
use futures::FutureExt as _;
use serde_json::{json, Value};

use super::transport::{self, Answer};
use super::{
    attempt_key_in, metadata_as_variables, CallLookup, Dial, DialResult, EndOfCall, InboundWebhook,
    Provider, ProviderKind, ProviderReport, ReportError, ReportedOutcome, StatusQuery,
    WebhookEvent, WebhookScheme, ATTEMPT_KEY_FIELD, CALL_ID_FIELD,
};
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
    let body = serde_json::from_slice::<Value>(&answer.body).ok();
    let mentions_limit = || {
        let text = String::from_utf8_lossy(&answer.body).to_ascii_lowercase();
        text.contains("concurren") || text.contains("burst")
    };
    if answer.status.is_success() {
        let body = body.unwrap_or(Value::Null);
        if body.get("success").and_then(Value::as_bool) == Some(false) {
            let message = body
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return if mentions_limit() {
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
    if answer.status.is_client_error() && mentions_limit() {
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

/// How a conversation ended (a `post_call_transcription`'s data, or the conversation a
/// lookup returns), or `None` while it has not.
fn end_of(conversation: &Value) -> Result<Option<EndOfCall>, String> {
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
    let outcome = match (call_result.and_then(outcome_of_call_result), status) {
        (Some(outcome), _) => outcome,
        (None, Some("done")) => CallOutcome::Completed,
        (None, Some("failed")) => CallOutcome::Failed,
        // initiated, in-progress, processing: not ended yet.
        (None, _) => return Ok(None),
    };
    let end_reason = call_result
        .map(str::to_owned)
        .or_else(|| {
            conversation
                .pointer("/metadata/termination_reason")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| status.map(str::to_owned));
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
        end_reason: end_reason.map(|r| r.chars().take(255).collect()),
        duration_sec: duration.and_then(|d| i32::try_from(d).ok()),
        ended_at: started
            .zip(duration)
            .and_then(|(start, duration)| chrono::DateTime::from_timestamp(start + duration, 0)),
    }))
}

fn lookup_of(conversation: &Value) -> CallLookup {
    match end_of(conversation) {
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
fn parse_signature(header: &str) -> Option<(i64, &str)> {
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
    Some((timestamp.parse().ok()?, signature?))
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
        let (timestamp, signature) =
            parse_signature(header).ok_or(VerifyError::MalformedHeader(HEADER))?;
        check_window(
            timestamp.saturating_mul(1000),
            now.timestamp_millis(),
            SIGNATURE_MAX_AGE_MS,
            SIGNATURE_MAX_AHEAD_MS,
        )?;
        let mac = hmac_sha256(
            self.secret.as_bytes(),
            &[timestamp.to_string().as_bytes(), b".", request.body],
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
                match end_of(data) {
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
                    end_reason: Some(format!("call_initiation_failure: {reason}")),
                    duration_sec: Some(0),
                    ended_at: body
                        .get("event_timestamp")
                        .and_then(Value::as_i64)
                        .and_then(|t| chrono::DateTime::from_timestamp(t, 0)),
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

    #[test]
    fn parses_the_signature_header() {
        assert_eq!(
            parse_signature("t=1700000000,v0=abcd"),
            Some((1_700_000_000, "abcd"))
        );
        assert_eq!(
            parse_signature("v0=aa,x=1,t=1700000000,v0=bb"),
            Some((1_700_000_000, "bb"))
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
}
