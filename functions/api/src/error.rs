//! The API's one error type. Every way a request can fail is a variant here, and each maps to
//! a status and an RFC 9457 problem body; internal causes are logged, never sent.

use std::error::Error as _;

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ebra_shared::domain::{CallStatus, InvalidValue};
use ebra_shared::problem::{FieldError, Problem};
use ebra_shared::store::StoreError;
use uuid::Uuid;

use crate::MAX_BODY_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: JSON syntax or shape, path, query string or header.
    #[error("bad request ({slug}): {detail}")]
    BadRequest { slug: &'static str, detail: String },
    /// Query parameters that parse but mean nothing (unknown status, page size out of range).
    #[error("invalid query parameters: {0:?}")]
    InvalidQuery(Vec<InvalidValue>),
    /// Well-formed JSON whose values break the rules (phone, script id, dates...).
    #[error("invalid fields: {0:?}")]
    Invalid(Vec<InvalidValue>),
    #[error("a PATCH must change at least one field")]
    NothingToChange,
    #[error("a PATCH of an endpoint must change at least one field")]
    NothingToChangeOnEndpoint,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("request body over the limit")]
    PayloadTooLarge,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("call {0} not found")]
    CallNotFound(Uuid),
    #[error("campaign {0} not found")]
    CampaignNotFound(Uuid),
    #[error("campaign {0} is canceled")]
    CampaignCanceled(Uuid),
    #[error("a bulk add of more rows than allowed")]
    TooManyRows,
    #[error("a bulk add's body over the limit")]
    BulkTooLarge,
    #[error("webhook endpoint {0} not found")]
    EndpointNotFound(Uuid),
    #[error("event {0} not found")]
    EventNotFound(Uuid),
    #[error("too many webhook endpoints")]
    TooManyEndpoints,
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("call {id} is {status}, not PENDING")]
    NotPending { id: Uuid, status: CallStatus },
    #[error("Idempotency-Key reused with a different request")]
    IdempotencyKeyReused,
    /// The number is on the do-not-call list.
    #[error("{0} is on the do-not-call list")]
    Suppressed(String),
    #[error("{0} is not on the do-not-call list")]
    SuppressionNotFound(String),
    /// A bug on our side (e.g. an extractor misconfigured); logged, answered as 500.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            slug,
            detail: detail.into(),
        }
    }

    /// Maps an axum rejection by its status: the body limit and the content type keep
    /// theirs, a 5xx is our bug, everything else the client sent is a 400 (axum answers 422
    /// for JSON of the wrong shape; here 422 is reserved for values that break the rules).
    fn from_rejection(status: StatusCode, slug: &'static str, detail: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(detail),
            status if status.is_server_error() => Self::Internal(detail),
            _ => Self::bad_request(slug, detail),
        }
    }

    fn problem(&self) -> Problem {
        match self {
            Self::BadRequest { slug, detail } => {
                Problem::new(StatusCode::BAD_REQUEST, slug, detail)
            }
            Self::InvalidQuery(errors) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "Some query parameters are invalid; see `errors`.",
            )
            .with_errors(field_errors(errors)),
            Self::Invalid(errors) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Some fields are invalid; see `errors`.",
            )
            .with_errors(field_errors(errors)),
            Self::NothingToChange => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "empty-patch",
                "Nothing to change: send at least one of to, scriptId, metadata, scheduledAt.",
            ),
            Self::NothingToChangeOnEndpoint => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "empty-patch",
                "Nothing to change: send at least one of url, events, description, enabled.",
            ),
            Self::UnsupportedMediaType(detail) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                detail,
            ),
            Self::PayloadTooLarge => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("The request body must be at most {MAX_BODY_BYTES} bytes."),
            ),
            Self::Unauthorized => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Send `Authorization: Bearer <API token>`.",
            ),
            Self::CallNotFound(id) => Problem::new(
                StatusCode::NOT_FOUND,
                "call-not-found",
                format!("No call has id {id}."),
            ),
            Self::CampaignNotFound(id) => Problem::new(
                StatusCode::NOT_FOUND,
                "campaign-not-found",
                format!("No campaign has id {id}."),
            ),
            Self::CampaignCanceled(id) => Problem::new(
                StatusCode::CONFLICT,
                "campaign-canceled",
                format!("Campaign {id} is canceled: it takes no new calls and cannot be paused or resumed."),
            ),
            Self::TooManyRows => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-many-rows",
                format!(
                    "A bulk add takes at most {} rows; this one has more. Send it in batches (`ebra import` does).",
                    crate::bulk::MAX_ROWS
                ),
            ),
            Self::BulkTooLarge => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!(
                    "A bulk add's body must be at most {} bytes (and {} rows); send it in batches (`ebra import` does).",
                    crate::bulk::MAX_BYTES,
                    crate::bulk::MAX_ROWS
                ),
            ),
            Self::EndpointNotFound(id) => Problem::new(
                StatusCode::NOT_FOUND,
                "endpoint-not-found",
                format!("No webhook endpoint has id {id}."),
            ),
            Self::EventNotFound(id) => Problem::new(
                StatusCode::NOT_FOUND,
                "event-not-found",
                format!("No event has id {id}."),
            ),
            Self::TooManyEndpoints => Problem::new(
                StatusCode::CONFLICT,
                "too-many-endpoints",
                format!(
                    "At most {} webhook endpoints can be registered; delete one first.",
                    ebra_shared::store::endpoints::MAX_ENDPOINTS
                ),
            ),
            Self::RouteNotFound(path) => Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("No route for {path}."),
            ),
            Self::MethodNotAllowed { method, path } => Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{path} does not accept {method}; see the Allow header."),
            ),
            Self::NotPending { id, status } => Problem::new(
                StatusCode::CONFLICT,
                "not-pending",
                format!("Call {id} is {status}; only a PENDING call can be changed or canceled."),
            ),
            Self::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "This Idempotency-Key was already used with a different request.",
            ),
            Self::Suppressed(phone) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "suppressed",
                format!("{phone} is on the do-not-call list; no call to it is made."),
            ),
            Self::SuppressionNotFound(phone) => Problem::new(
                StatusCode::NOT_FOUND,
                "suppression-not-found",
                format!("{phone} is not on the do-not-call list."),
            ),
            Self::Internal(_) => internal_problem(),
            Self::Store(error) => store_problem(error),
        }
    }
}

fn field_errors(errors: &[InvalidValue]) -> Vec<FieldError> {
    errors
        .iter()
        .map(|e| FieldError {
            field: e.field.to_owned(),
            message: e.message.clone(),
        })
        .collect()
}

fn internal_problem() -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Something went wrong on our side; it has been logged.",
    )
}

/// The one place database errors become answers. Unreachable or overloaded database: 503 (the
/// client may retry). A value or constraint the database refused: the input got past
/// validation, which is our bug, but still the client's request that cannot be stored, so a
/// 4xx rather than a 5xx (invariant 9). Anything else: 500.
fn store_problem(error: &StoreError) -> Problem {
    let unavailable = || {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The database is unavailable; retry shortly.",
        )
    };
    match error {
        StoreError::Pool(_) => unavailable(),
        StoreError::Corrupt(_) | StoreError::AfterCommit => internal_problem(),
        StoreError::Db(db) => match error.sql_state().map(|s| s.code()) {
            // Connection exceptions, insufficient resources, operator intervention, and
            // transaction conflicts that a retry resolves.
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || code == "40001"
                    || code == "40P01" =>
            {
                unavailable()
            }
            Some(code) if code.starts_with("22") => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-value",
                "The database refused a value in this request.",
            ),
            Some(code) if code.starts_with("23") => Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                "The request conflicts with the current state of the call.",
            ),
            Some(_) => internal_problem(),
            // No SQL state: the connection broke mid-query, or a value did not convert.
            None if db.is_closed()
                || db
                    .source()
                    .is_some_and(|cause| cause.is::<std::io::Error>()) =>
            {
                unavailable()
            }
            None => internal_problem(),
        },
    }
}

/// An error and its causes on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status = problem.status_code();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %error_chain(&self), "request failed");
        } else if matches!(self, Self::Store(_)) {
            tracing::warn!(status = status.as_u16(), error = %error_chain(&self), "the database refused a request");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut response = problem.into_response();
        match status {
            StatusCode::UNAUTHORIZED => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ebra\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let detail = match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "Send the body as JSON with `Content-Type: application/json`.".to_owned()
            }
            _ => rejection.body_text(),
        };
        Self::from_rejection(rejection.status(), "malformed-body", detail)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        Self::from_rejection(rejection.status(), "malformed-body", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::from_rejection(rejection.status(), "invalid-path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::from_rejection(rejection.status(), "invalid-query", rejection.body_text())
    }
}
