//! The webhook function: where AI-call providers report how a call ended.
//!
//! It is served by a Lambda Function URL with no IAM auth, so it authenticates every
//! request itself, one route per provider, each with its provider's own scheme
//! ([`ebra_shared::provider::WebhookScheme`]): `/callbacks/call-status` (the generic
//! contract, Standard Webhooks), `/callbacks/retell`, `/callbacks/vapi`,
//! `/callbacks/twilio`, `/callbacks/elevenlabs`. A route is served when its secret is
//! configured. The signature is checked over the raw body bytes before anything is parsed,
//! and an unsigned, forged or stale request gets a 401 and changes nothing. A verified end
//! of call is settled by [`store::settle::settle_from_webhook`] (idempotent, never
//! backwards, held when it outruns the worker — invariant 5), then the messages the
//! settlement asks for (a scheduled redial, waiting calls nudged into the freed slot) are
//! sent. Events that are not an end of call (a call started, a transcript update) are
//! acknowledged and change nothing.
//!
//! Providers retry every non-2xx answer, so the status codes are precise: 2xx whenever the
//! report was stored (applied, duplicate, late, held or ignored), 4xx only for what a retry
//! cannot fix, and 5xx only when the database is unreachable.

use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use ebra_shared::config::ConfigError;
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::problem::{FieldError, Problem};
use ebra_shared::provider::{
    webhook_schemes, InboundWebhook, ProviderKind, ReportError, WebhookEvent, WebhookScheme,
    WebhookSchemes,
};
use ebra_shared::queue::CallsQueue;
use ebra_shared::store::dial::RetryPolicy;
use ebra_shared::store::settle::{settle_from_webhook, Settlement};
use ebra_shared::store::{Pool, StoreError};
use ebra_shared::webhook_signature::VerifyError;
use ebra_shared::Config;
use http_body_util::{BodyExt as _, Limited};
use serde::Serialize;

/// The largest report accepted. Retell's and Vapi's end-of-call reports carry the whole
/// transcript (hundreds of KiB for a long call); the limit is checked before the
/// signature, so an oversized request costs no HMAC.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the webhook needs, built once per Lambda instance (or by `ebra dev`).
#[derive(Clone)]
pub struct WebhookState {
    pub pool: Pool,
    /// Where redials and nudges are sent.
    pub queue: CallsQueue,
    /// The routes served: one scheme per provider whose secret is configured.
    pub schemes: WebhookSchemes,
    /// The public base URL providers call (`PUBLIC_BASE_URL`, or `WEBHOOK_URL` without its
    /// path); unset, it is read from the request (`Host`, `X-Forwarded-Proto`). Twilio signs
    /// the URL, so it must be the one Twilio called.
    pub public_base_url: Option<String>,
    /// Which outcomes are redialed, and the backoff base.
    pub policy: RetryPolicy,
    /// Wakes the notifier after a report changed a call (its events are in the outbox).
    pub events: EventsNudge,
}

impl WebhookState {
    /// The state for `config`; fails when no route has a secret.
    pub fn new(pool: Pool, queue: CallsQueue, config: Arc<Config>) -> Result<Self, ConfigError> {
        let schemes = webhook_schemes(&config);
        if schemes.is_empty() {
            return Err(ConfigError {
                name: "WEBHOOK_SECRET",
                problem: "is required, or a provider's webhook secret (RETELL_API_KEY, VAPI_WEBHOOK_SECRET, TWILIO_AUTH_TOKEN, ELEVENLABS_WEBHOOK_SECRET)".into(),
            });
        }
        let events = EventsNudge::from_queue(queue.client(), config.events.queue_url.as_deref());
        Ok(Self {
            pool,
            queue,
            schemes,
            public_base_url: config.webhook_base_url.clone(),
            policy: RetryPolicy::from(config.as_ref()),
            events,
        })
    }
}

/// One provider's route.
#[derive(Clone)]
struct Route {
    state: WebhookState,
    scheme: Arc<dyn WebhookScheme>,
}

/// The webhook routes alone, with no fallback, so `ebra dev` can merge them with the API.
/// Every provider has its path; one whose secret is not configured answers 404 saying so.
pub fn routes(state: WebhookState) -> Router {
    let mut router = Router::new();
    for kind in [
        ProviderKind::Http,
        ProviderKind::Retell,
        ProviderKind::Vapi,
        ProviderKind::Twilio,
        ProviderKind::ElevenLabs,
    ] {
        let path = kind.webhook_path();
        let scheme = state
            .schemes
            .iter()
            .find(|scheme| scheme.provider().webhook_path() == path)
            .cloned();
        router = match scheme {
            Some(scheme) => router.route(
                path,
                post(receive_report)
                    .fallback(method_not_allowed)
                    .with_state(Route {
                        state: state.clone(),
                        scheme,
                    }),
            ),
            None => router.route(path, axum::routing::any(move || not_configured(kind))),
        };
    }
    router
}

/// The Lambda's whole router: the routes plus a problem+json 404 for any other path (a
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
    #[error("the body is not valid: {0}")]
    MalformedBody(String),
    #[error("the report is invalid")]
    InvalidReport(Vec<FieldError>),
    #[error("settling the report failed: {0}")]
    Store(#[from] StoreError),
}

impl From<ReportError> for WebhookError {
    fn from(error: ReportError) -> Self {
        match error {
            ReportError::Malformed(reason) => WebhookError::MalformedBody(reason),
            ReportError::Invalid(errors) => WebhookError::InvalidReport(errors),
        }
    }
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
            WebhookError::MalformedBody(reason) => Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                format!("the body is not valid: {reason}"),
            ),
            WebhookError::InvalidReport(errors) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "the call status report is invalid",
            )
            .with_errors(errors.clone()),
            WebhookError::Store(StoreError::Corrupt(_) | StoreError::AfterCommit) => Problem::new(
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
    /// This delivery was received before.
    Duplicate,
    /// The dial already had an outcome (a repeated or out-of-order report).
    AlreadySettled,
    /// The call had already ended.
    CallFinal,
    /// The report is for an older attempt than the call's current one.
    Superseded,
    /// No dial has this provider call id yet; the report is kept and applied when it does.
    Held,
    /// Not an end of call (call started, transcript update, ...): nothing to do.
    Ignored,
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
            Self::Ignored => "ignored",
        };
        f.write_str(name)
    }
}

/// The answer to a settled report.
#[derive(Debug, Serialize)]
pub struct SettledResponse {
    pub result: SettlementResult,
}

/// `POST /callbacks/{provider}`: size, then signature, then body, then settlement.
async fn receive_report(
    State(route): State<Route>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, WebhookError> {
    let Route { state, scheme } = route;
    let provider = scheme.provider();
    let raw = read_limited(&headers, body).await?;
    let url = public_url(state.public_base_url.as_deref(), &headers, &uri);
    let request = InboundWebhook {
        url: &url,
        headers: &headers,
        body: &raw,
    };
    scheme.verify(&request, Utc::now()).map_err(|reason| {
        tracing::warn!(%provider, %reason, "webhook signature refused");
        WebhookError::Unauthenticated(reason)
    })?;
    let report = match scheme.parse(&request).map_err(|error| {
        tracing::warn!(%provider, %error, "signed webhook with an invalid body");
        WebhookError::from(error)
    })? {
        WebhookEvent::EndOfCall(report) => report,
        WebhookEvent::Ignored { event } => {
            tracing::info!(%provider, event, "webhook is not an end of call: acknowledged");
            return Ok(Json(SettledResponse {
                result: SettlementResult::Ignored,
            })
            .into_response());
        }
    };

    let (settlement, messages) = settle_from_webhook(&state.pool, &report, &state.policy)
        .await
        .map_err(|error| {
            tracing::error!(
                %provider,
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
        %provider,
        webhook_id = %report.webhook_id,
        provider_call_id = %report.provider_call_id,
        call_id,
        outcome = %report.outcome,
        end_reason = report.end_reason.as_deref(),
        %result,
        call_status = match &settlement {
            Settlement::Applied { status, .. } => Some(status.as_str()),
            _ => None,
        },
        messages = messages.len(),
        "webhook settled"
    );
    // After the commit: a lost redial is re-sent by the reclaimer's outbox sweep, a lost
    // nudge is covered by its refill, so a failed send never fails the webhook. A report
    // that reached a call wrote its events: the notifier is woken (a lost wake-up waits for
    // the reclaimer's next pass, never longer).
    let wake_notifier = async {
        if settled_call_id(&settlement).is_some() {
            state.events.after_change(&state.pool).await;
        }
    };
    tokio::join!(state.queue.send_best_effort(&messages), wake_notifier);
    Ok((result.status_code(), Json(SettledResponse { result })).into_response())
}

/// The URL the provider called: the configured public base, or the request's own host and
/// scheme, with the path and query as received.
fn public_url(base: Option<&str>, headers: &HeaderMap, uri: &http::Uri) -> String {
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or_else(|| uri.path());
    if let Some(base) = base {
        return format!("{}{path_and_query}", base.trim_end_matches('/'));
    }
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
    };
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
        .or_else(|| uri.scheme_str().map(str::to_owned))
        .unwrap_or_else(|| "http".to_owned());
    let host = text(header::HOST)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    format!("{scheme}://{host}{path_and_query}")
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

async fn method_not_allowed() -> Response {
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "provider webhooks accept POST only",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// A provider route whose secret is not configured.
async fn not_configured(kind: ProviderKind) -> Response {
    let variable = match kind {
        ProviderKind::Simulator | ProviderKind::Http => "WEBHOOK_SECRET",
        ProviderKind::Retell => "RETELL_API_KEY",
        ProviderKind::Vapi => "VAPI_WEBHOOK_SECRET",
        ProviderKind::Twilio => "TWILIO_AUTH_TOKEN",
        ProviderKind::ElevenLabs => "ELEVENLABS_WEBHOOK_SECRET",
    };
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!(
            "{} is not served: {variable} is not configured",
            kind.webhook_path()
        ),
    )
    .into_response()
}

async fn not_found() -> Response {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such route; provider webhooks are posted to /callbacks/{call-status,retell,vapi,twilio,elevenlabs}",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            status(WebhookError::MalformedBody("x".into())),
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

    #[test]
    fn the_public_url_is_the_one_called() {
        let uri: http::Uri = "/callbacks/twilio?ebraKey=k".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_static("abc.lambda-url.eu-west-1.on.aws"),
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(
            public_url(None, &headers, &uri),
            "https://abc.lambda-url.eu-west-1.on.aws/callbacks/twilio?ebraKey=k"
        );
        assert_eq!(
            public_url(Some("https://hooks.example.com/"), &headers, &uri),
            "https://hooks.example.com/callbacks/twilio?ebraKey=k"
        );
    }
}
