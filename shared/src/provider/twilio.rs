//! Twilio Programmable Voice (`PROVIDER=twilio`), for teams that run their own AI agent
//! behind a Twilio number.
//!
//! - Dial: `POST {TWILIO_BASE_URL}/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Calls.json`,
//!   HTTP Basic (account SID, auth token), form-encoded `To`, `From`, `Url` (=
//!   `TWILIO_VOICE_URL` with `scriptId` and `ebraCallId` added to its query, so the user's
//!   voice app knows which script to run), `StatusCallback` (this route, with the attempt
//!   key as `ebraKey` in its query) → `201 {sid, status}`. Twilio takes no idempotency key:
//!   before a redial of a dial of unknown fate the call is looked for ([`super::dial_once`]).
//! - Webhook (`/callbacks/twilio`): the status callback, form-encoded, signed
//!   `X-Twilio-Signature` = base64 HMAC-SHA1(auth token, the exact public URL + every form
//!   parameter name and value, sorted by name). The URL must be the one Twilio called:
//!   `PUBLIC_BASE_URL` gives it when the webhook sits behind a proxy or a custom domain.
//!   The final `CallStatus` (completed, busy, no-answer, failed, canceled) ends the call.
//! - Lookup: `GET .../Calls/{CallSid}.json`, or the calls to the number from
//!   `TWILIO_FROM_NUMBER` since the first dial with the key.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha1::Sha1;
use sha2::Digest as _;
use uuid::Uuid;

use super::transport::{self, Answer};
use super::{
    CallLookup, Dial, DialResult, EndOfCall, InboundWebhook, Provider, ProviderKind,
    ProviderReport, ReportError, ReportedOutcome, StatusQuery, WebhookEvent, WebhookScheme,
};
use crate::config::{ConfigError, Settings};
use crate::domain::CallOutcome;
use crate::webhook_signature::VerifyError;

pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// The query parameter of the StatusCallback URL that carries the attempt key.
pub const ATTEMPT_KEY_PARAM: &str = "ebraKey";

/// Twilio error codes that mean the account cannot take more calls now (not the dial's
/// fault): 10004 call concurrency limit, 22005 outbound call queue full.
const CAPACITY_ERROR_CODES: [i64; 2] = [10004, 22005];

/// `TWILIO_*` settings.
#[derive(Clone)]
pub struct TwilioSettings {
    pub account_sid: String,
    pub auth_token: String,
    pub from_number: String,
    /// The TwiML app that runs the agent; `scriptId` is added to its query.
    pub voice_url: String,
    pub base_url: String,
    /// `TWILIO_MACHINE_DETECTION` (`Enable` or `DetectMessageEnd`): answering machine
    /// detection, which reports VOICEMAIL. Off when unset (Twilio bills it).
    pub machine_detection: Option<String>,
}

impl std::fmt::Debug for TwilioSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioSettings")
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"<set>")
            .field("from_number", &self.from_number)
            .field("voice_url", &self.voice_url)
            .field("base_url", &self.base_url)
            .field("machine_detection", &self.machine_detection)
            .finish()
    }
}

impl TwilioSettings {
    pub fn from_settings(settings: &Settings<'_>) -> Result<Self, ConfigError> {
        let account_sid = settings.require_secret("TWILIO_ACCOUNT_SID")?;
        if !(account_sid.starts_with("AC") && account_sid.len() == 34) {
            return Err(ConfigError {
                name: "TWILIO_ACCOUNT_SID",
                problem: "must be the account SID: AC followed by 32 hex characters".into(),
            });
        }
        let machine_detection = match settings.get("TWILIO_MACHINE_DETECTION") {
            None => None,
            Some(mode) if matches!(mode.trim(), "Enable" | "DetectMessageEnd") => {
                Some(mode.trim().to_owned())
            }
            Some(other) => {
                return Err(ConfigError {
                    name: "TWILIO_MACHINE_DETECTION",
                    problem: format!("must be Enable or DetectMessageEnd, got {other:?}"),
                })
            }
        };
        Ok(Self {
            account_sid,
            auth_token: settings.require_secret("TWILIO_AUTH_TOKEN")?,
            from_number: settings.require_phone("TWILIO_FROM_NUMBER")?,
            voice_url: settings.require_url("TWILIO_VOICE_URL")?,
            base_url: settings.base_url("TWILIO_BASE_URL", DEFAULT_BASE_URL)?,
            machine_detection,
        })
    }
}

pub struct Twilio {
    settings: TwilioSettings,
    client: reqwest::Client,
}

impl Twilio {
    pub fn new(settings: TwilioSettings, timeout: std::time::Duration) -> anyhow::Result<Self> {
        Ok(Self {
            settings,
            client: transport::client(timeout)?,
        })
    }

    fn calls_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Calls.json",
            self.settings.base_url, self.settings.account_sid
        )
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(&self.settings.account_sid, Some(&self.settings.auth_token))
    }

    async fn dial(&self, dial: &Dial) -> DialResult {
        let voice_url = match with_query(
            &self.settings.voice_url,
            &[
                ("scriptId", dial.script_id.as_str()),
                ("ebraCallId", &dial.call_id.to_string()),
            ],
        ) {
            Ok(url) => url,
            Err(error) => return DialResult::Permanent { error },
        };
        let status_callback = match status_callback(&dial.webhook_url, dial.idempotency_key) {
            Ok(url) => url,
            Err(error) => return DialResult::Permanent { error },
        };
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("To", &dial.to)
                .append_pair("From", &self.settings.from_number)
                .append_pair("Url", &voice_url)
                .append_pair("StatusCallback", &status_callback)
                .append_pair("StatusCallbackMethod", "POST");
            if let Some(mode) = &self.settings.machine_detection {
                form.append_pair("MachineDetection", mode);
            }
            form.finish()
        };
        let request = self
            .authorized(self.client.post(self.calls_url()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form);
        match transport::send_dial(request).await {
            Ok(answer) => classify(&answer),
            Err(result) => result,
        }
    }

    async fn lookup(&self, query: &StatusQuery) -> CallLookup {
        match &query.provider_call_id {
            Some(sid) => {
                let url = format!(
                    "{}/2010-04-01/Accounts/{}/Calls/{}.json",
                    self.settings.base_url,
                    self.settings.account_sid,
                    url::form_urlencoded::byte_serialize(sid.as_bytes()).collect::<String>()
                );
                match read_json(self.authorized(self.client.get(url))).await {
                    Ok(call) => lookup_of(&call),
                    Err(lookup) => lookup,
                }
            }
            None => self.lookup_recent(query).await,
        }
    }

    /// The calls to the number from Ebra's number created since the first dial with the key
    /// (Twilio does not return a call's StatusCallback, so the key cannot be compared; one
    /// call per phone makes any such call that is not another attempt's this attempt's).
    async fn lookup_recent(&self, query: &StatusQuery) -> CallLookup {
        let mut url = match url::Url::parse(&self.calls_url()) {
            Ok(url) => url,
            Err(error) => {
                return CallLookup::Undecided {
                    reason: format!("TWILIO_BASE_URL: {error}"),
                }
            }
        };
        url.query_pairs_mut()
            .append_pair("To", &query.to)
            .append_pair("From", &self.settings.from_number)
            .append_pair("PageSize", "50");
        let page = match read_json(self.authorized(self.client.get(url))).await {
            Ok(page) => page,
            Err(lookup) => return lookup,
        };
        let Some(calls) = page.get("calls").and_then(Value::as_array) else {
            return CallLookup::Undecided {
                reason: "Twilio's call list has no calls array".into(),
            };
        };
        // Twilio's clock and ours may differ by a little; a minute of margin, and the other
        // attempts' calls excluded by sid.
        let since = query.since - chrono::Duration::seconds(60);
        let mut newest: Option<(DateTime<Utc>, &Value)> = None;
        for call in calls {
            let Some(sid) = call.get("sid").and_then(Value::as_str) else {
                return CallLookup::Undecided {
                    reason: "a call in Twilio's call list has no sid".into(),
                };
            };
            if query.known_provider_call_ids.iter().any(|k| k == sid) {
                continue;
            }
            // A call whose creation time cannot be read might be this dial's: answering
            // NotFound would redial it.
            let Some(created) = rfc2822(call.get("date_created")) else {
                return CallLookup::Undecided {
                    reason: format!("Twilio's call {sid} has no readable date_created"),
                };
            };
            if created >= since && newest.is_none_or(|(at, _)| created > at) {
                newest = Some((created, call));
            }
        }
        match newest {
            Some((_, call)) => lookup_of(call),
            None => CallLookup::NotFound,
        }
    }
}

fn rfc2822(value: Option<&Value>) -> Option<DateTime<Utc>> {
    value
        .and_then(Value::as_str)
        .and_then(|raw| DateTime::parse_from_rfc2822(raw).ok())
        .map(|at| at.with_timezone(&Utc))
}

async fn read_json(request: reqwest::RequestBuilder) -> Result<Value, CallLookup> {
    let answer = transport::send_lookup(request)
        .await
        .map_err(|reason| CallLookup::Undecided { reason })?;
    if !answer.status.is_success() {
        return Err(transport::lookup_failure(&answer));
    }
    serde_json::from_slice(&answer.body).map_err(|error| CallLookup::Undecided {
        reason: format!("Twilio's answer is not JSON: {error}"),
    })
}

/// The StatusCallback URL: `webhook_url` (`PUBLIC_BASE_URL` + `/callbacks/twilio`) with the
/// attempt key appended to its query as text. Twilio signs this URL exactly as given and the
/// webhook function rebuilds it from `PUBLIC_BASE_URL` as configured, so it must not be
/// re-serialized: a URL parser would lowercase the host, drop a default port or re-encode
/// the path, and every callback would then fail its signature.
fn status_callback(webhook_url: &str, key: Uuid) -> Result<String, String> {
    url::Url::parse(webhook_url).map_err(|e| format!("invalid URL {webhook_url:?}: {e}"))?;
    let (url, fragment) = match webhook_url.split_once('#') {
        Some((url, fragment)) => (url, Some(fragment)),
        None => (webhook_url, None),
    };
    let separator = match url.split_once('?') {
        None => "?",
        Some((_, "")) => "",
        Some((_, query)) if query.ends_with('&') => "",
        Some(_) => "&",
    };
    let mut callback = format!("{url}{separator}{ATTEMPT_KEY_PARAM}={key}");
    if let Some(fragment) = fragment {
        callback.push('#');
        callback.push_str(fragment);
    }
    Ok(callback)
}

/// `base` with `pairs` added to its query.
fn with_query(base: &str, pairs: &[(&str, &str)]) -> Result<String, String> {
    let mut url = url::Url::parse(base).map_err(|e| format!("invalid URL {base:?}: {e}"))?;
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
    }
    Ok(url.into())
}

impl Provider for Twilio {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Twilio
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

/// Maps Twilio's answer to a dial. Errors are `{code, message, more_info, status}`.
fn classify(answer: &Answer) -> DialResult {
    let body = serde_json::from_slice::<Value>(&answer.body).ok();
    if answer.status.is_success() {
        return match body
            .as_ref()
            .and_then(|b| b.get("sid"))
            .and_then(Value::as_str)
        {
            Some(sid) if transport::valid_call_id(sid) => DialResult::Accepted {
                provider_call_id: sid.to_owned(),
            },
            _ => transport::accepted_without_id(answer, "sid"),
        };
    }
    let code = body
        .as_ref()
        .and_then(|b| b.get("code"))
        .and_then(Value::as_i64);
    if code.is_some_and(|code| CAPACITY_ERROR_CODES.contains(&code)) {
        return DialResult::ConcurrencyLimited {
            error: format!(
                "Twilio refused the dial for the account's capacity ({}): {}",
                answer.status,
                answer.snippet()
            ),
            retry_after: answer.retry_after,
        };
    }
    transport::failure(answer)
}

/// The final `CallStatus` (and `AnsweredBy`, with machine detection) → outcome; `None` for
/// statuses that are not an end (queued, initiated, ringing, in-progress).
pub fn outcome_of(call_status: &str, answered_by: Option<&str>) -> Option<CallOutcome> {
    let outcome = match call_status {
        "completed" => match answered_by {
            Some(by) if by.starts_with("machine") || by == "fax" => CallOutcome::Voicemail,
            _ => CallOutcome::Completed,
        },
        "busy" => CallOutcome::Busy,
        "no-answer" => CallOutcome::NoAnswer,
        "failed" => CallOutcome::Failed,
        "canceled" => CallOutcome::Canceled,
        _ => return None,
    };
    Some(outcome)
}

/// The end reason kept for operators: the final `CallStatus`, then what says more about it:
/// `AnsweredBy` (machine detection), and for a failed call the SIP response code that failed
/// it (404 no such number, 503 carrier unavailable, ...), which only callbacks carry.
/// `completed (machine_end_beep)`, `failed (SIP 404)`, `busy`.
fn end_reason(call_status: &str, answered_by: Option<&str>, sip_code: Option<&str>) -> String {
    let mut details: Vec<String> = Vec::new();
    if let Some(by) = answered_by.filter(|by| !by.is_empty()) {
        details.push(by.to_owned());
    }
    if call_status == "failed" {
        if let Some(code) = sip_code.filter(|code| !code.is_empty()) {
            details.push(format!("SIP {code}"));
        }
    }
    if details.is_empty() {
        call_status.to_owned()
    } else {
        format!("{call_status} ({})", details.join(", "))
    }
}

fn lookup_of(call: &Value) -> CallLookup {
    let Some(sid) = call.get("sid").and_then(Value::as_str) else {
        return CallLookup::Undecided {
            reason: "Twilio's call has no sid".into(),
        };
    };
    let status = call.get("status").and_then(Value::as_str).unwrap_or("");
    let answered_by = call.get("answered_by").and_then(Value::as_str);
    match outcome_of(status, answered_by) {
        Some(outcome) => CallLookup::Ended(EndOfCall {
            provider_call_id: sid.to_owned(),
            outcome: ReportedOutcome::Outcome(outcome),
            end_reason: Some(end_reason(status, answered_by, None)),
            duration_sec: call
                .get("duration")
                .and_then(|d| d.as_str().and_then(|s| s.parse().ok()).or(d.as_i64()))
                .and_then(|d: i64| i32::try_from(d).ok())
                .filter(|d| *d >= 0),
            ended_at: rfc2822(call.get("end_time")),
            result: None,
        }),
        None => CallLookup::Live {
            provider_call_id: sid.to_owned(),
        },
    }
}

/// `/callbacks/twilio`.
pub struct TwilioWebhooks {
    /// The account's auth token, and any webhook shared keys (`TWILIO_WEBHOOK_SHARED_KEYS`).
    keys: Vec<String>,
}

/// The MAC a Twilio signature uses: HMAC-SHA1 by default, HMAC-SHA256 when the request's
/// `X-Twilio-Webhooks-Signature-Settings` says so (webhook shared keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Sha1,
    Sha256,
}

impl TwilioWebhooks {
    pub fn new(keys: Vec<String>) -> Self {
        Self { keys }
    }

    fn signature_of(
        key: &str,
        algorithm: Algorithm,
        url: &str,
        params: &[(String, String)],
    ) -> Vec<u8> {
        let mut sorted: Vec<&(String, String)> = params.iter().collect();
        // By name (code point order), then value, as Twilio's SDKs sort repeated names.
        sorted.sort();
        let parts = std::iter::once(url.as_bytes()).chain(
            sorted
                .into_iter()
                .flat_map(|(name, value)| [name.as_bytes(), value.as_bytes()]),
        );
        match algorithm {
            Algorithm::Sha1 => {
                let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes())
                    .expect("HMAC takes keys of any length");
                parts.for_each(|part| mac.update(part));
                mac.finalize().into_bytes().to_vec()
            }
            Algorithm::Sha256 => {
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
                    .expect("HMAC takes keys of any length");
                parts.for_each(|part| mac.update(part));
                mac.finalize().into_bytes().to_vec()
            }
        }
    }
}

/// The algorithm named by `X-Twilio-Webhooks-Signature-Settings: key=...,algorithm=...`, read
/// as the SDK's `get_signature_algorithm` reads it: the first `algorithm` part with a value
/// (names and values trimmed, the value in any case); none (or no header) means HMAC-SHA1.
/// An algorithm the SDK does not support is refused, as the SDK's `validate` refuses it.
fn algorithm(request: &InboundWebhook<'_>) -> Result<Algorithm, VerifyError> {
    const HEADER: &str = "x-twilio-webhooks-signature-settings";
    let Some(settings) = request.header(HEADER)? else {
        return Ok(Algorithm::Sha1);
    };
    let named = settings.split(',').find_map(|part| {
        let (name, value) = part.split_once('=')?;
        (name.trim() == "algorithm" && !value.trim().is_empty()).then(|| value.trim())
    });
    match named {
        None => Ok(Algorithm::Sha1),
        Some(name) if name.eq_ignore_ascii_case("HMAC_SHA1") => Ok(Algorithm::Sha1),
        Some(name) if name.eq_ignore_ascii_case("HMAC_SHA256") => Ok(Algorithm::Sha256),
        Some(_) => Err(VerifyError::MalformedHeader(HEADER)),
    }
}

/// The form parameters of a callback body.
fn form_params(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

/// The URLs a signature is checked against, as Twilio's SDKs do: the URL as received,
/// then with its port removed when it has one, or with the scheme's default port added
/// when it has none (Twilio signs the URL as configured; a proxy may show it either way).
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return variants;
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The port follows the last ':' after any IPv6 literal's ']'.
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    let other = match authority[host_end..].rfind(':') {
        Some(colon) => format!("{scheme}://{}{tail}", &authority[..host_end + colon]),
        None => match scheme {
            "https" => format!("{scheme}://{authority}:443{tail}"),
            "http" => format!("{scheme}://{authority}:80{tail}"),
            _ => return variants,
        },
    };
    variants.push(other);
    variants
}

impl WebhookScheme for TwilioWebhooks {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Twilio
    }

    /// Twilio's signature carries no timestamp, so there is no replay window: a replayed
    /// callback is absorbed as a duplicate (same call, same status).
    fn verify(
        &self,
        request: &InboundWebhook<'_>,
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), VerifyError> {
        const HEADER: &str = "x-twilio-signature";
        let signature = request
            .header(HEADER)?
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingHeader(HEADER))?;
        let expected = BASE64
            .decode(signature)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MalformedHeader(HEADER))?;
        let algorithm = algorithm(request)?;
        // A JSON body is signed through its hash in the URL's `bodySHA256`, with no
        // parameters; a form body through its parameters.
        let body_hash = url::Url::parse(request.url).ok().and_then(|url| {
            url.query_pairs()
                .find(|(name, _)| name == "bodySHA256")
                .map(|(_, value)| value.into_owned())
        });
        let params = match &body_hash {
            Some(hash) => {
                let actual = hex::encode(sha2::Sha256::digest(request.body));
                if !crate::webhook_signature::constant_time_eq(actual.as_bytes(), hash.as_bytes()) {
                    return Err(VerifyError::NoMatch);
                }
                Vec::new()
            }
            None => form_params(request.body),
        };
        // Every key and URL form is tried, so the time taken does not say which matched.
        let matched = url_variants(request.url)
            .iter()
            .flat_map(|url| self.keys.iter().map(move |key| (url, key)))
            .fold(false, |matched, (url, key)| {
                let computed = Self::signature_of(key, algorithm, url, &params);
                crate::webhook_signature::constant_time_eq(&computed, &expected) | matched
            });
        if matched {
            Ok(())
        } else {
            Err(VerifyError::NoMatch)
        }
    }

    fn parse(&self, request: &InboundWebhook<'_>) -> Result<WebhookEvent, ReportError> {
        let params = form_params(request.body);
        let param = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let sid = param("CallSid")
            .filter(|sid| transport::valid_call_id(sid))
            .ok_or_else(|| invalid("CallSid", "is required (the call's SID)"))?;
        let status = param("CallStatus").ok_or_else(|| invalid("CallStatus", "is required"))?;
        let answered_by = param("AnsweredBy");
        let Some(outcome) = outcome_of(status, answered_by) else {
            return Ok(WebhookEvent::Ignored {
                event: format!("status {status}"),
            });
        };
        let attempt_key = url::Url::parse(request.url).ok().and_then(|url| {
            url.query_pairs()
                .find(|(name, _)| name == ATTEMPT_KEY_PARAM)
                .and_then(|(_, value)| Uuid::parse_str(&value).ok())
        });
        let ended_at = param("Timestamp")
            .and_then(|raw| DateTime::parse_from_rfc2822(raw).ok())
            .map(|at| at.with_timezone(&Utc));
        // `CallDuration` is in seconds; `Duration` is the billed minutes (117 s -> 2), not a
        // fallback for it.
        let duration_sec = param("CallDuration")
            .and_then(|raw| raw.parse::<i32>().ok())
            .filter(|d| *d >= 0);
        let end_reason = end_reason(status, answered_by, param("SipResponseCode"));
        // A status callback carries no summary or transcript; a call recorded with
        // `Record=true` names its recording.
        let result = crate::provider::with_end_reason(
            crate::call_result::CallResult::default()
                .with_recording_url(param("RecordingUrl"))
                .non_empty(),
            Some(&end_reason),
        );
        Ok(WebhookEvent::EndOfCall(ProviderReport {
            webhook_id: format!("twilio:{sid}:{status}"),
            source: ProviderKind::Twilio.report_source(),
            provider_call_id: sid.to_owned(),
            attempt_key,
            outcome: ReportedOutcome::Outcome(outcome),
            end_reason: Some(end_reason),
            duration_sec,
            completed_at: ended_at,
            result,
        }))
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
    fn checks_the_url_with_and_without_its_port() {
        assert_eq!(
            url_variants("https://h.example/cb?a=1"),
            ["https://h.example/cb?a=1", "https://h.example:443/cb?a=1"]
        );
        assert_eq!(
            url_variants("https://h.example:443/cb"),
            ["https://h.example:443/cb", "https://h.example/cb"]
        );
    }

    #[test]
    fn the_status_callback_is_the_public_url_as_configured() {
        let key = Uuid::parse_str("3f6c2a71-9d4e-4b8a-a1c5-7e2f90d3b614").unwrap();
        // Not re-serialized: the host keeps its case, the default port stays, the path is
        // not re-encoded (the webhook function rebuilds the URL from PUBLIC_BASE_URL as is).
        assert_eq!(
            status_callback("https://Hooks.Example.com:443/a%7eb/callbacks/twilio", key).unwrap(),
            "https://Hooks.Example.com:443/a%7eb/callbacks/twilio?ebraKey=3f6c2a71-9d4e-4b8a-a1c5-7e2f90d3b614"
        );
        assert_eq!(
            status_callback("https://h.example/cb?stage=prod", key).unwrap(),
            "https://h.example/cb?stage=prod&ebraKey=3f6c2a71-9d4e-4b8a-a1c5-7e2f90d3b614"
        );
        assert_eq!(
            status_callback("https://h.example/cb?#rc=3", key).unwrap(),
            "https://h.example/cb?ebraKey=3f6c2a71-9d4e-4b8a-a1c5-7e2f90d3b614#rc=3"
        );
        assert!(status_callback("not a url", key).is_err());
    }

    fn settings_header(value: &'static str) -> Result<Algorithm, VerifyError> {
        let mut headers = ::http::HeaderMap::new();
        headers.insert(
            "x-twilio-webhooks-signature-settings",
            ::http::HeaderValue::from_static(value),
        );
        algorithm(&InboundWebhook {
            url: "https://h.example/cb",
            headers: &headers,
            body: b"",
        })
    }

    #[test]
    fn reads_the_algorithm_as_the_sdk_does() {
        use Algorithm::*;
        let cases: [(&str, Option<Algorithm>); 9] = [
            ("key=k1,algorithm=HMAC_SHA256", Some(Sha256)),
            ("algorithm=hmac_sha256,key=k1", Some(Sha256)),
            ("key=k1, algorithm = HMAC_SHA256 ", Some(Sha256)),
            ("key=k1", Some(Sha1)),
            ("", Some(Sha1)),
            ("key=k1,algorithm=", Some(Sha1)),
            ("algorithm=,algorithm=HMAC_SHA256", Some(Sha256)),
            ("algorithm=HMAC_SHA1,algorithm=HMAC_SHA256", Some(Sha1)),
            ("key=k1,algorithm=HMAC_MD5", None),
        ];
        for (header, expected) in cases {
            assert_eq!(settings_header(header).ok(), expected, "{header:?}");
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            body: bytes::Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn capacity_refusals_wait_whatever_status_twilio_pairs_them_with() {
        for status in [400, 403, 429, 503] {
            for code in CAPACITY_ERROR_CODES {
                let body = format!(
                    r#"{{"code": {code}, "message": "limit", "more_info": "https://www.twilio.com/docs/errors/{code}", "status": {status}}}"#
                );
                assert!(
                    matches!(
                        classify(&answer(status, &body)),
                        DialResult::ConcurrencyLimited { .. }
                    ),
                    "{status} {code}"
                );
            }
        }
        assert!(matches!(
            classify(&answer(
                400,
                r#"{"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}"#
            )),
            DialResult::Permanent { .. }
        ));
        assert!(matches!(
            classify(&answer(
                429,
                r#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#
            )),
            DialResult::Retryable {
                maybe_placed: false,
                ..
            }
        ));
        assert!(matches!(
            classify(&answer(201, r#"{"status": "queued"}"#)),
            DialResult::Retryable {
                maybe_placed: true,
                ..
            }
        ));
    }

    #[test]
    fn end_reasons_say_what_twilio_said() {
        assert_eq!(end_reason("completed", None, Some("200")), "completed");
        assert_eq!(
            end_reason("completed", Some("machine_end_beep"), Some("200")),
            "completed (machine_end_beep)"
        );
        assert_eq!(end_reason("busy", None, Some("486")), "busy");
        assert_eq!(end_reason("failed", None, Some("404")), "failed (SIP 404)");
        assert_eq!(end_reason("failed", None, None), "failed");
    }

    #[test]
    fn maps_final_statuses() {
        assert_eq!(outcome_of("completed", None), Some(CallOutcome::Completed));
        assert_eq!(
            outcome_of("completed", Some("machine_end_beep")),
            Some(CallOutcome::Voicemail)
        );
        assert_eq!(outcome_of("no-answer", None), Some(CallOutcome::NoAnswer));
        assert_eq!(outcome_of("ringing", None), None);
    }
}
