//! The webhook function: where the AI-call provider reports how a call ended.
//!
//! It is served by a Lambda Function URL with no IAM auth, so it authenticates every
//! request itself: the Standard Webhooks signature is checked over the raw body bytes
//! before anything is parsed, and an unsigned, forged or stale request gets a 401 and
//! changes nothing. A verified report is settled by [`store::settle::settle_from_webhook`]
//! (idempotent, never backwards, held when it outruns the worker — invariant 5), then the
//! messages the settlement asks for (a scheduled redial, waiting calls nudged into the freed
//! slot) are sent.
//!
//! Providers retry every non-2xx answer, so the status codes are precise: 2xx whenever the
//! report was stored (applied, duplicate, late or held), 4xx only for what a retry cannot
//! fix, and 5xx only when the database is unreachable.

use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ebra_shared::config::{ConfigError, WEBHOOK_PATH};
use ebra_shared::domain::CallOutcome;
use ebra_shared::problem::{FieldError, Problem};
use ebra_shared::queue::CallsQueue;
use ebra_shared::store::dial::RetryPolicy;
use ebra_shared::store::settle::{settle_from_webhook, ProviderReport, Settlement};
use ebra_shared::store::{Pool, StoreError};
use ebra_shared::webhook_signature::{VerifyError, WebhookSecret};
use ebra_shared::Config;
use http_body_util::{BodyExt as _, Limited};
use serde::Serialize;
use serde_json::Value;

/// The largest report accepted. A real one is about 150 bytes; the limit is checked before
/// the signature, so an oversized request costs no HMAC.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest provider call id a dial can record (the `call_attempts` column's limit).
const MAX_PROVIDER_CALL_ID_CHARS: usize = 255;

/// What the webhook needs, built once per Lambda instance (or by `ebra dev`).
#[derive(Clone)]
pub struct WebhookState {
    pub pool: Pool,
    /// Where redials and nudges are sent.
    pub queue: CallsQueue,
    /// The provider's signing keys (several during a rotation).
    pub secret: WebhookSecret,
    /// Which outcomes are redialed, and the backoff base.
    pub policy: RetryPolicy,
}

impl WebhookState {
    /// The state for `config`; fails when `WEBHOOK_SECRET` is not set.
    pub fn new(pool: Pool, queue: CallsQueue, config: Arc<Config>) -> Result<Self, ConfigError> {
        Ok(Self {
            pool,
            queue,
            secret: config.require_webhook_secret()?.clone(),
            policy: RetryPolicy::from(config.as_ref()),
        })
    }
}

/// The webhook route alone, with no fallback, so `ebra dev` can merge it with the API.
pub fn routes(state: WebhookState) -> Router {
    Router::new()
        .route(
            WEBHOOK_PATH,
            post(receive_call_status).fallback(method_not_allowed),
        )
        .with_state(state)
}

/// The Lambda's whole router: the route plus a problem+json 404 for any other path (a
/// Function URL forwards every path).
pub fn router(state: WebhookState) -> Router {
    routes(state).fallback(not_found)
}

/// Why a webhook was refused. Each maps to one status and a problem+json body; the
/// internal cause of a database failure is logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the body is larger than {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    #[error("the body could not be read")]
    UnreadableBody,
    #[error("signature refused: {0}")]
    Unauthenticated(VerifyError),
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the report is invalid")]
    InvalidReport(Vec<FieldError>),
    #[error("settling the report failed: {0}")]
    Store(#[from] StoreError),
}

impl WebhookError {
    fn to_problem(&self) -> Problem {
        match self {
            WebhookError::PayloadTooLarge => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("the body must be at most {MAX_BODY_BYTES} bytes"),
            ),
            WebhookError::UnreadableBody => Problem::new(
                StatusCode::BAD_REQUEST,
                "unreadable-body",
                "the request body could not be read",
            ),
            // Which check failed is no secret (the Standard Webhooks libraries say as much)
            // and it tells an honest provider what to fix.
            WebhookError::Unauthenticated(reason) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-signature",
                format!("the webhook signature was refused: {reason}"),
            ),
            WebhookError::MalformedJson(reason) => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                format!("the body is not valid JSON: {reason}"),
            ),
            WebhookError::InvalidReport(errors) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "the call status report is invalid",
            )
            .with_errors(errors.clone()),
            WebhookError::Store(StoreError::Corrupt(_)) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the report could not be settled",
            ),
            WebhookError::Store(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "the report could not be stored now; retry later",
            ),
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let problem = self.to_problem();
        let mut response = problem.into_response();
        if matches!(
            self,
            WebhookError::Store(StoreError::Pool(_) | StoreError::Db(_))
        ) {
            // Providers retry anyway; this says when a retry is worth it.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// How a report was settled, as the provider sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettlementResult {
    /// The call moved on (completed, failed, or a redial scheduled).
    Applied,
    /// This `webhook-id` was received before.
    Duplicate,
    /// The dial already had an outcome (a repeated or out-of-order report).
    AlreadySettled,
    /// The call had already ended.
    CallFinal,
    /// The report is for an older attempt than the call's current one.
    Superseded,
    /// No dial has this provider call id yet; the report is kept and applied when it does.
    Held,
}

impl SettlementResult {
    fn of(settlement: &Settlement) -> Self {
        match settlement {
            Settlement::Applied { .. } => Self::Applied,
            Settlement::DuplicateDelivery => Self::Duplicate,
            Settlement::AlreadySettled { .. } => Self::AlreadySettled,
            Settlement::CallFinal { .. } => Self::CallFinal,
            Settlement::Superseded { .. } => Self::Superseded,
            Settlement::Held => Self::Held,
        }
    }

    /// Every stored report is a success for the provider (no retry); a held one is
    /// accepted for later.
    fn status_code(self) -> StatusCode {
        match self {
            Self::Held => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
        }
    }
}

impl fmt::Display for SettlementResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::AlreadySettled => "already_settled",
            Self::CallFinal => "call_final",
            Self::Superseded => "superseded",
            Self::Held => "held",
        };
        f.write_str(name)
    }
}

/// The answer to a settled report.
#[derive(Debug, Serialize)]
pub struct SettledResponse {
    pub result: SettlementResult,
}

/// `POST /callbacks/call-status`: size, then signature, then body, then settlement.
async fn receive_call_status(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, WebhookError> {
    let claimed_webhook_id = header_text(&headers, "webhook-id").ok().flatten();
    let raw = read_limited(&headers, body).await?;
    verify_signature(&state.secret, &headers, &raw, Utc::now().timestamp()).map_err(|reason| {
        tracing::warn!(webhook_id = claimed_webhook_id, %reason, "webhook signature refused");
        WebhookError::Unauthenticated(reason)
    })?;
    // Verified: the header is present and well formed.
    let webhook_id = claimed_webhook_id.unwrap_or_default().to_owned();
    let report = parse_report(webhook_id, &raw).map_err(|error| {
        tracing::warn!(webhook_id = claimed_webhook_id, %error, "signed webhook with an invalid body");
        error
    })?;

    let (settlement, messages) = settle_from_webhook(&state.pool, &report, &state.policy)
        .await
        .map_err(|error| {
            tracing::error!(
                webhook_id = %report.webhook_id,
                provider_call_id = %report.provider_call_id,
                error = %error,
                "settling a webhook failed"
            );
            WebhookError::Store(error)
        })?;
    let result = SettlementResult::of(&settlement);
    let call_id = settled_call_id(&settlement).map(|id| id.to_string());
    tracing::info!(
        webhook_id = %report.webhook_id,
        provider_call_id = %report.provider_call_id,
        call_id,
        outcome = %report.status,
        %result,
        call_status = match &settlement {
            Settlement::Applied { status, .. } => Some(status.as_str()),
            _ => None,
        },
        messages = messages.len(),
        "webhook settled"
    );
    // After the commit: a lost redial is re-sent by the reclaimer's outbox sweep, a lost
    // nudge is covered by its refill, so a failed send never fails the webhook.
    state.queue.send_best_effort(&messages).await;
    Ok((result.status_code(), Json(SettledResponse { result })).into_response())
}

fn settled_call_id(settlement: &Settlement) -> Option<uuid::Uuid> {
    match settlement {
        Settlement::Applied { call_id, .. }
        | Settlement::AlreadySettled { call_id }
        | Settlement::CallFinal { call_id }
        | Settlement::Superseded { call_id } => Some(*call_id),
        Settlement::DuplicateDelivery | Settlement::Held => None,
    }
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] (by its declared length
/// first, then as it is read).
async fn read_limited(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, WebhookError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(WebhookError::PayloadTooLarge);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(WebhookError::PayloadTooLarge)
        }
        Err(error) => {
            tracing::warn!(%error, "reading a webhook body failed");
            Err(WebhookError::UnreadableBody)
        }
    }
}

/// A header as text: `Ok(None)` when absent, an error when it is not visible ASCII.
fn header_text<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, VerifyError> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| VerifyError::MalformedHeader(name))
        })
        .transpose()
}

fn verify_signature(
    secret: &WebhookSecret,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    secret.verify(
        header_text(headers, "webhook-id")?,
        header_text(headers, "webhook-timestamp")?,
        header_text(headers, "webhook-signature")?,
        body,
        now,
    )
}

/// Parses a verified body into a report, collecting every field's problem. Unknown fields
/// are ignored (providers add some); `providerCallId` is accepted for `callId`.
fn parse_report(webhook_id: String, raw: &[u8]) -> Result<ProviderReport, WebhookError> {
    let value: Value =
        serde_json::from_slice(raw).map_err(|e| WebhookError::MalformedJson(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(WebhookError::InvalidReport(vec![field_error(
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
            errors.push(field_error(
                "status",
                "must be one of COMPLETED, FAILED, BUSY, NO_ANSWER",
            ));
            None
        }
        None => {
            errors.push(field_error(
                "status",
                "is required (COMPLETED, FAILED, BUSY or NO_ANSWER)",
            ));
            None
        }
    };
    let duration_sec = parse_duration(take(&mut fields, "durationSec"), &mut errors);
    let completed_at = parse_completed_at(take(&mut fields, "completedAt"), &mut errors);
    match (provider_call_id, status) {
        (Some(provider_call_id), Some(status)) if errors.is_empty() => Ok(ProviderReport {
            webhook_id,
            provider_call_id,
            status,
            duration_sec,
            completed_at,
        }),
        _ => Err(WebhookError::InvalidReport(errors)),
    }
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
    let chars = id.chars().count();
    // No dial can record an id outside these bounds, so it could never be matched; a
    // control character (NUL above all) could not even be stored.
    if chars == 0 || chars > MAX_PROVIDER_CALL_ID_CHARS || id.chars().any(char::is_control) {
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

fn parse_completed_at(value: Option<Value>, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    let value = value?;
    let parsed = value
        .as_str()
        .and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
        .map(|at| at.with_timezone(&Utc));
    if parsed.is_none() {
        errors.push(field_error(
            "completedAt",
            "must be an RFC 3339 timestamp, e.g. 2025-01-01T12:00:00Z",
        ));
    }
    parsed
}

async fn method_not_allowed() -> Response {
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{WEBHOOK_PATH} accepts POST only"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

async fn not_found() -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no such route; provider webhooks are posted to {WEBHOOK_PATH}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ProviderReport, WebhookError> {
        parse_report("msg_1".to_owned(), body.as_bytes())
    }

    fn field_names(error: WebhookError) -> Vec<String> {
        match error {
            WebhookError::InvalidReport(errors) => errors.into_iter().map(|e| e.field).collect(),
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
        assert_eq!(report.status, CallOutcome::NoAnswer);
        assert_eq!(report.duration_sec, Some(12));
        assert_eq!(
            report.completed_at.unwrap().to_rfc3339(),
            "2025-03-01T10:00:00+00:00"
        );
        assert_eq!(report.webhook_id, "msg_1");
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
    fn names_every_invalid_field() {
        assert!(matches!(parse("{"), Err(WebhookError::MalformedJson(_))));
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

    #[test]
    fn refusals_map_to_precise_statuses() {
        let status = |e: WebhookError| e.into_response().status();
        assert_eq!(
            status(WebhookError::PayloadTooLarge),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(WebhookError::Unauthenticated(VerifyError::NoMatch)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(WebhookError::MalformedJson("x".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(WebhookError::InvalidReport(vec![])),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(WebhookError::Store(StoreError::Corrupt("x".into()))),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
