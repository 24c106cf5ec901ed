//! The generic contract (`PROVIDER=http`): `POST {PROVIDER_BASE_URL}/api/v1/calls` with an
//! `Idempotency-Key`, answered `202 {"callId"}`; outcomes posted to `/callbacks/call-status`
//! signed the Standard Webhooks way. The simulator speaks it too.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::transport::{self, Answer};
use super::{
    CallLookup, Dial, DialResult, EndOfCall, InboundWebhook, Provider, ProviderKind,
    ProviderReport, ReportError, ReportedOutcome, StatusQuery, WebhookEvent, WebhookScheme,
};
use crate::call_result::CallResult;
use crate::domain::CallOutcome;
use crate::problem::FieldError;
use crate::webhook_signature::{VerifyError, WebhookSecret};

pub struct HttpProvider {
    client: reqwest::Client,
    calls_url: String,
}

/// The dial body of the generic contract.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DialBody<'a> {
    to: &'a str,
    script_id: &'a str,
    webhook_url: &'a str,
    metadata: &'a Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    call_id: Option<Value>,
}

impl HttpProvider {
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            client: transport::client(timeout)?,
            calls_url: format!("{}/api/v1/calls", base_url.trim_end_matches('/')),
        })
    }

    async fn dial(&self, dial: &Dial) -> DialResult {
        let request = self
            .client
            .post(&self.calls_url)
            .header("Idempotency-Key", dial.idempotency_key.to_string())
            .json(&DialBody {
                to: &dial.to,
                script_id: &dial.script_id,
                webhook_url: &dial.webhook_url,
                metadata: &dial.metadata,
            });
        match transport::send_dial(request).await {
            Ok(answer) => classify(&answer),
            Err(result) => result,
        }
    }
}

impl Provider for HttpProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Http
    }

    /// The contract's `Idempotency-Key` makes a redial with the same key safe.
    fn deduplicates_by_key(&self) -> bool {
        true
    }

    fn place<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult> {
        self.dial(dial).boxed()
    }

    /// The generic contract has no lookup.
    fn status<'a>(&'a self, _query: &'a StatusQuery) -> BoxFuture<'a, CallLookup> {
        async { CallLookup::Unsupported }.boxed()
    }
}

/// Maps the provider's answer to a [`DialResult`] (invariant 7).
fn classify(answer: &Answer) -> DialResult {
    if !answer.status.is_success() {
        return transport::failure(answer);
    }
    match serde_json::from_slice::<Accepted>(&answer.body)
        .ok()
        .and_then(|a| a.call_id)
    {
        Some(Value::String(id)) if transport::valid_call_id(&id) => DialResult::Accepted {
            provider_call_id: id,
        },
        _ => transport::accepted_without_id(answer, "callId"),
    }
}

/// The generic route's scheme: Standard Webhooks signatures (`WEBHOOK_SECRET`), and the
/// `{callId, status, durationSec, completedAt}` report.
pub struct StandardWebhooks {
    secret: WebhookSecret,
}

impl StandardWebhooks {
    pub fn new(secret: WebhookSecret) -> Self {
        Self { secret }
    }
}

impl WebhookScheme for StandardWebhooks {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Http
    }

    fn verify(
        &self,
        request: &InboundWebhook<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), VerifyError> {
        self.secret.verify(
            request.header("webhook-id")?,
            request.header("webhook-timestamp")?,
            request.header("webhook-signature")?,
            request.body,
            now.timestamp(),
        )
    }

    fn parse(&self, request: &InboundWebhook<'_>) -> Result<WebhookEvent, ReportError> {
        // Verified: the header is present and well formed.
        let webhook_id = request
            .header("webhook-id")
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned();
        parse_report(webhook_id, request.body).map(WebhookEvent::EndOfCall)
    }
}

const OUTCOMES: &str = "COMPLETED, FAILED, BUSY, NO_ANSWER, VOICEMAIL or CANCELED";

/// Parses a verified body into a report, collecting every field's problem. Unknown fields
/// are ignored (providers add some); `providerCallId` is accepted for `callId`.
pub fn parse_report(webhook_id: String, raw: &[u8]) -> Result<ProviderReport, ReportError> {
    let value: Value =
        serde_json::from_slice(raw).map_err(|e| ReportError::Malformed(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(ReportError::Invalid(vec![field_error(
            "body",
            "must be a JSON object",
        )]));
    };
    let mut errors = Vec::new();
    let call_id = take(&mut fields, "callId");
    let alias = take(&mut fields, "providerCallId");
    let provider_call_id = match (call_id, alias) {
        (Some(id), Some(alias)) if id != alias => {
            errors.push(field_error(
                "providerCallId",
                "differs from callId; send one of them",
            ));
            None
        }
        (Some(id), _) => parse_provider_call_id("callId", id, &mut errors),
        (None, Some(alias)) => parse_provider_call_id("providerCallId", alias, &mut errors),
        (None, None) => {
            errors.push(field_error(
                "callId",
                "is required (the provider's call id)",
            ));
            None
        }
    };
    let status = match take(&mut fields, "status") {
        Some(Value::String(raw)) => match raw.parse::<CallOutcome>() {
            Ok(status) => Some(status),
            Err(invalid) => {
                errors.push(field_error("status", &invalid.message));
                None
            }
        },
        Some(_) => {
            errors.push(field_error("status", &format!("must be one of {OUTCOMES}")));
            None
        }
        None => {
            errors.push(field_error("status", &format!("is required ({OUTCOMES})")));
            None
        }
    };
    let duration_sec = parse_duration(take(&mut fields, "durationSec"), &mut errors);
    let completed_at = parse_completed_at(take(&mut fields, "completedAt"), &mut errors);
    let result = parse_result(take(&mut fields, "result"), &mut errors);
    match (provider_call_id, status) {
        (Some(provider_call_id), Some(status)) if errors.is_empty() => {
            Ok(ProviderReport::from_end(
                webhook_id,
                ProviderKind::Http.report_source(),
                None,
                EndOfCall {
                    provider_call_id,
                    outcome: ReportedOutcome::Outcome(status),
                    end_reason: result.as_ref().and_then(|r| r.end_reason.clone()),
                    duration_sec,
                    ended_at: completed_at,
                    result,
                },
            ))
        }
        _ => Err(ReportError::Invalid(errors)),
    }
}

/// The optional `result`: `{summary?, transcript?, transcriptUrl?, recordingUrl?,
/// analysis?, endReason?}`, each a string but `analysis` (a JSON object). Sizes are bounded
/// by cutting, not by refusing (a refusal would lose the outcome to endless retries);
/// values of the wrong type are refused, naming the field.
fn parse_result(value: Option<Value>, errors: &mut Vec<FieldError>) -> Option<CallResult> {
    let Value::Object(mut fields) = value? else {
        errors.push(field_error("result", "must be a JSON object"));
        return None;
    };
    let mut text = |name: &str| match take(&mut fields, name) {
        None => None,
        Some(Value::String(text)) => Some(text),
        Some(_) => {
            errors.push(field_error(&format!("result.{name}"), "must be a string"));
            None
        }
    };
    let summary = text("summary");
    let transcript = text("transcript");
    let transcript_url = text("transcriptUrl");
    let recording_url = text("recordingUrl");
    let end_reason = text("endReason");
    let analysis = match take(&mut fields, "analysis") {
        None => None,
        Some(value @ Value::Object(_)) => Some(value),
        Some(_) => {
            errors.push(field_error("result.analysis", "must be a JSON object"));
            None
        }
    };
    CallResult::default()
        .with_summary(summary.as_deref())
        .with_transcript(transcript.as_deref())
        .with_transcript_url(transcript_url.as_deref())
        .with_recording_url(recording_url.as_deref())
        .with_analysis(analysis.as_ref())
        .with_end_reason(end_reason.as_deref())
        .non_empty()
}

/// A field's value; JSON `null` counts as absent.
fn take(fields: &mut serde_json::Map<String, Value>, name: &str) -> Option<Value> {
    fields.remove(name).filter(|v| !v.is_null())
}

fn field_error(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

fn parse_provider_call_id(
    field: &str,
    value: Value,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let Value::String(id) = value else {
        errors.push(field_error(field, "must be a string"));
        return None;
    };
    // No dial can record an id outside these bounds, so it could never be matched; a
    // control character (NUL above all) could not even be stored.
    if !transport::valid_call_id(&id) {
        errors.push(field_error(field, "must be 1 to 255 printable characters"));
        return None;
    }
    Some(id)
}

fn parse_duration(value: Option<Value>, errors: &mut Vec<FieldError>) -> Option<i32> {
    let value = value?;
    // Whole seconds are stored; a fractional duration is rounded rather than refused, as a
    // refusal would lose the outcome to endless retries.
    match value.as_f64() {
        Some(seconds) if seconds.is_finite() && (0.0..=f64::from(i32::MAX)).contains(&seconds) => {
            Some(seconds.round() as i32)
        }
        _ => {
            errors.push(field_error(
                "durationSec",
                "must be a non-negative number of seconds",
            ));
            None
        }
    }
}

fn parse_completed_at(
    value: Option<Value>,
    errors: &mut Vec<FieldError>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let value = value?;
    let parsed = value
        .as_str()
        .and_then(|raw| chrono::DateTime::parse_from_rfc3339(raw).ok())
        .map(|at| at.with_timezone(&chrono::Utc));
    if parsed.is_none() {
        errors.push(field_error(
            "completedAt",
            "must be an RFC 3339 timestamp, e.g. 2025-01-01T12:00:00Z",
        ));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn answer(status: StatusCode, body: &'static str) -> Answer {
        Answer {
            status,
            retry_after: None,
            body: bytes::Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn classifies_answers() {
        assert_eq!(
            classify(&answer(StatusCode::ACCEPTED, r#"{"callId":"p-1"}"#)),
            DialResult::Accepted {
                provider_call_id: "p-1".into()
            }
        );
        assert!(matches!(
            classify(&answer(StatusCode::OK, "{}")),
            DialResult::Retryable {
                maybe_placed: true,
                ..
            }
        ));
        assert!(matches!(
            classify(&answer(StatusCode::OK, r#"{"callId":""}"#)),
            DialResult::Retryable { .. }
        ));
        assert!(matches!(
            classify(&answer(StatusCode::UNPROCESSABLE_ENTITY, "bad number")),
            DialResult::Permanent { .. }
        ));
    }

    fn parse(body: &str) -> Result<ProviderReport, ReportError> {
        parse_report("msg_1".to_owned(), body.as_bytes())
    }

    fn field_names(error: ReportError) -> Vec<String> {
        match error {
            ReportError::Invalid(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_provider_contract() {
        let report = parse(
            r#"{"callId":"pc_1","status":"NO_ANSWER","durationSec":12,"completedAt":"2025-03-01T10:00:00Z","extra":true}"#,
        )
        .unwrap();
        assert_eq!(report.provider_call_id, "pc_1");
        assert_eq!(
            report.outcome,
            ReportedOutcome::Outcome(CallOutcome::NoAnswer)
        );
        assert_eq!(report.duration_sec, Some(12));
        assert_eq!(
            report.completed_at.unwrap().to_rfc3339(),
            "2025-03-01T10:00:00+00:00"
        );
        assert_eq!(report.webhook_id, "msg_1");
        assert_eq!(report.source, "http");
        for outcome in CallOutcome::ALL {
            let body = format!(r#"{{"callId":"x","status":"{outcome}"}}"#);
            assert_eq!(
                parse(&body).unwrap().outcome,
                ReportedOutcome::Outcome(outcome)
            );
        }
    }

    #[test]
    fn accepts_the_alias_and_absent_optionals() {
        let report =
            parse(r#"{"providerCallId":"pc_2","status":"BUSY","durationSec":null}"#).unwrap();
        assert_eq!(report.provider_call_id, "pc_2");
        assert_eq!(report.duration_sec, None);
        assert_eq!(report.completed_at, None);
        assert!(parse(r#"{"callId":"a","providerCallId":"a","status":"FAILED"}"#).is_ok());
        assert_eq!(
            parse(r#"{"callId":"a","status":"FAILED","durationSec":7.6}"#)
                .unwrap()
                .duration_sec,
            Some(8)
        );
    }

    #[test]
    fn an_optional_result_is_kept_bounded() {
        let report = parse(&format!(
            r#"{{"callId":"pc_3","status":"COMPLETED","result":{{"summary":"Booked Tuesday 10:00.",
                "transcript":"{}","recordingUrl":"https://cdn.example.com/r/1.wav",
                "transcriptUrl":"not a url","analysis":{{"booked":true}},"endReason":"customer_hangup"}}}}"#,
            "a".repeat(crate::call_result::TRANSCRIPT_MAX_BYTES + 5)
        ))
        .unwrap();
        let result = report.result.expect("a result");
        assert_eq!(result.summary.as_deref(), Some("Booked Tuesday 10:00."));
        assert!(result.transcript_truncated);
        assert_eq!(result.transcript_url, None, "not a URL: dropped");
        assert_eq!(result.analysis, Some(serde_json::json!({"booked": true})));
        assert_eq!(report.end_reason.as_deref(), Some("customer_hangup"));
        assert_eq!(
            field_names(
                parse(r#"{"callId":"a","status":"BUSY","result":{"summary":1,"analysis":"yes"}}"#)
                    .unwrap_err()
            ),
            ["result.summary", "result.analysis"]
        );
        assert_eq!(
            field_names(parse(r#"{"callId":"a","status":"BUSY","result":[]}"#).unwrap_err()),
            ["result"]
        );
        assert_eq!(
            parse(r#"{"callId":"a","status":"BUSY"}"#).unwrap().result,
            None
        );
    }

    #[test]
    fn names_every_invalid_field() {
        assert!(matches!(parse("{"), Err(ReportError::Malformed(_))));
        assert_eq!(field_names(parse("[1]").unwrap_err()), ["body"]);
        assert_eq!(field_names(parse("{}").unwrap_err()), ["callId", "status"]);
        assert_eq!(
            field_names(
                parse(
                    r#"{"callId":"","status":"DONE","durationSec":-1,"completedAt":"yesterday"}"#
                )
                .unwrap_err()
            ),
            ["callId", "status", "durationSec", "completedAt"]
        );
        assert_eq!(
            field_names(
                parse(r#"{"callId":"a","providerCallId":"b","status":"BUSY"}"#).unwrap_err()
            ),
            ["providerCallId"]
        );
        assert_eq!(
            field_names(parse(r#"{"callId":7,"status":"busy"}"#).unwrap_err()),
            ["callId", "status"]
        );
        assert_eq!(
            field_names(parse(r#"{"callId":"a\u0000b","status":"BUSY"}"#).unwrap_err()),
            ["callId"]
        );
        let long = "x".repeat(256);
        assert_eq!(
            field_names(parse(&format!(r#"{{"callId":"{long}","status":"BUSY"}}"#)).unwrap_err()),
            ["callId"]
        );
        assert_eq!(
            field_names(
                parse(r#"{"callId":"a","status":"BUSY","completedAt":1740823200}"#).unwrap_err()
            ),
            ["completedAt"]
        );
    }
}
