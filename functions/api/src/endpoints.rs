//! `/webhook-endpoints`: where a client registers to receive events.
//!
//! An endpoint is an http(s) URL whose host resolves only to public addresses (checked here,
//! and again at every delivery), optionally the event types it wants and a description. Its
//! signing secret (`whsec_...`) is shown once, in the answer that creates it, and again only
//! by a rotation, which keeps the previous secret signing for 24 hours.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ebra_shared::domain::InvalidValue;
use ebra_shared::events::delivery::new_secret;
use ebra_shared::events::destination::DestinationError;
use ebra_shared::events::EventType;
use ebra_shared::problem::Problem;
use ebra_shared::store::endpoints::{
    self as store, EndpointCreated, EndpointPatch, NewEndpoint, WebhookEndpoint,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{IdPath, JsonBody};
use crate::requests::present;
use crate::AppState;

/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The longest description kept.
pub const MAX_DESCRIPTION_CHARS: usize = 512;

/// `POST /webhook-endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEndpointRequest {
    /// An http(s) URL, at most 2048 bytes, without credentials or fragment. Its host must
    /// resolve only to public addresses (unless the deployment sets
    /// ALLOW_PRIVATE_WEBHOOK_URLS).
    #[schema(example = "https://crm.example.com/hooks/ebra")]
    pub url: String,
    /// The event types to send; absent or null: every type.
    #[schema(value_type = Option<Vec<EventType>>)]
    pub events: Option<Vec<String>>,
    /// Up to 512 characters, for you.
    pub description: Option<String>,
}

/// `PATCH /webhook-endpoints/{id}`: only the fields sent change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchEndpointRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String)]
    pub url: Option<Option<String>>,
    /// null: every type.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<EventType>>)]
    pub events: Option<Option<Vec<String>>>,
    /// null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// false: nothing is sent to it (its pending deliveries are FAILED, and kept); true:
    /// deliveries resume and its failure record is cleared.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = bool)]
    pub enabled: Option<Option<bool>>,
}

/// An endpoint with its signing secret: the answer that creates it or rotates its secret,
/// the only ones that show the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_<base64 key>`: verify every delivery's `webhook-signature` with it (any
    /// Standard Webhooks library does). Shown only here.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// Every registered endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointList {
    pub items: Vec<WebhookEndpoint>,
}

/// The event types asked for: a non-empty list of known types (duplicates dropped).
fn parse_events(raw: Vec<String>) -> Result<Vec<EventType>, InvalidValue> {
    if raw.is_empty() {
        return Err(InvalidValue::new(
            "events",
            "must list at least one event type (leave it out, or null, for every type)",
        ));
    }
    let mut types = raw
        .iter()
        .map(|name| name.parse::<EventType>())
        .collect::<Result<Vec<_>, _>>()?;
    types.sort_unstable();
    types.dedup();
    Ok(types)
}

fn parse_description(raw: Option<String>) -> Result<Option<String>, InvalidValue> {
    let Some(text) = raw else {
        return Ok(None);
    };
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(InvalidValue::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(InvalidValue::new(
            "description",
            "must not contain control characters",
        ));
    }
    Ok((!text.trim().is_empty()).then_some(text))
}

/// The URL, checked as a destination of events (shape and addresses).
pub(crate) async fn check_destination(
    state: &AppState,
    field: &'static str,
    raw: &str,
) -> Result<String, InvalidValue> {
    match state.destinations.check(raw).await {
        Ok(url) => Ok(url.to_string()),
        Err(DestinationError::Invalid(reason)) => Err(InvalidValue::new(field, reason)),
        Err(other) => Err(InvalidValue::new(field, other.to_string())),
    }
}

fn location(id: Uuid) -> Result<HeaderValue, ApiError> {
    HeaderValue::try_from(format!("/webhook-endpoints/{id}"))
        .map_err(|e| ApiError::Internal(format!("building the Location header: {e}")))
}

/// Register an endpoint to receive events.
///
/// The answer carries the endpoint's signing secret, shown only here.
#[utoipa::path(
    post,
    path = "/webhook-endpoints",
    tag = "events",
    operation_id = "createWebhookEndpoint",
    request_body(content = CreateEndpointRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The endpoint, with its secret.", body = EndpointWithSecret,
            headers(("Location" = String, description = "/webhook-endpoints/{id}"))),
        (status = 400, description = "Malformed JSON, unknown field or wrong type.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "50 endpoints are registered already.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (listed in `errors`): a URL that is not http(s), or whose host is or resolves to a private, loopback or link-local address; unknown event types.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_endpoint(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateEndpointRequest>,
) -> Result<Response, ApiError> {
    let url = check_destination(&state, "url", &request.url).await;
    let events = request.events.map(parse_events).transpose();
    let description = parse_description(request.description);
    let (url, events, description) = match (url, events, description) {
        (Ok(url), Ok(events), Ok(description)) => (url, events, description),
        (url, events, description) => {
            return Err(ApiError::Invalid(
                [url.err(), events.err(), description.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            ))
        }
    };
    let secret = new_secret();
    let new = NewEndpoint {
        url,
        description,
        events,
        secret: secret.clone(),
    };
    match store::create_endpoint(&state.pool, &new).await? {
        EndpointCreated::New(endpoint) => {
            tracing::info!(endpoint_id = %endpoint.id, url = %endpoint.url, "webhook endpoint registered");
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location(endpoint.id)?)],
                Json(EndpointWithSecret { endpoint, secret }),
            )
                .into_response())
        }
        EndpointCreated::TooMany => Err(ApiError::TooManyEndpoints),
    }
}

/// Every registered endpoint (without secrets).
#[utoipa::path(
    get,
    path = "/webhook-endpoints",
    tag = "events",
    operation_id = "listWebhookEndpoints",
    responses((status = 200, description = "The endpoints, oldest first.", body = EndpointList)),
)]
pub async fn list_endpoints(State(state): State<AppState>) -> Result<Json<EndpointList>, ApiError> {
    Ok(Json(EndpointList {
        items: store::list_endpoints(&state.pool).await?,
    }))
}

/// One endpoint (without its secret).
#[utoipa::path(
    get,
    path = "/webhook-endpoints/{id}",
    tag = "events",
    operation_id = "getWebhookEndpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id.")),
    responses(
        (status = 200, description = "The endpoint.", body = WebhookEndpoint),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_endpoint(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    store::get_endpoint(&state.pool, id)
        .await?
        .map(Json)
        .ok_or(ApiError::EndpointNotFound(id))
}

/// Change an endpoint's url, events, description, or enable or disable it.
#[utoipa::path(
    patch,
    path = "/webhook-endpoints/{id}",
    tag = "events",
    operation_id = "updateWebhookEndpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id.")),
    request_body(content = PatchEndpointRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The changed endpoint.", body = WebhookEndpoint),
        (status = 400, description = "Malformed JSON, unknown field, wrong type, or an id that is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (listed in `errors`), or nothing to change.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_endpoint(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    JsonBody(request): JsonBody<PatchEndpointRequest>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    if request.url.is_none()
        && request.events.is_none()
        && request.description.is_none()
        && request.enabled.is_none()
    {
        return Err(ApiError::NothingToChangeOnEndpoint);
    }
    let not_null = |field| InvalidValue::new(field, "must not be null");
    let url = match request.url {
        None => Ok(None),
        Some(None) => Err(not_null("url")),
        Some(Some(raw)) => check_destination(&state, "url", &raw).await.map(Some),
    };
    let events = match request.events {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(raw)) => parse_events(raw).map(|types| Some(Some(types))),
    };
    let description = match request.description {
        None => Ok(None),
        Some(raw) => parse_description(raw).map(Some),
    };
    let enabled = match request.enabled {
        None => Ok(None),
        Some(None) => Err(not_null("enabled")),
        Some(Some(enabled)) => Ok(Some(enabled)),
    };
    let patch = match (url, events, description, enabled) {
        (Ok(url), Ok(events), Ok(description), Ok(enabled)) => EndpointPatch {
            url,
            description,
            events,
            enabled,
        },
        (url, events, description, enabled) => {
            return Err(ApiError::Invalid(
                [url.err(), events.err(), description.err(), enabled.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            ))
        }
    };
    let endpoint = store::update_endpoint(&state.pool, id, &patch)
        .await?
        .ok_or(ApiError::EndpointNotFound(id))?;
    tracing::info!(endpoint_id = %id, enabled = endpoint.enabled, "webhook endpoint updated");
    Ok(Json(endpoint))
}

/// Remove an endpoint (and its deliveries).
#[utoipa::path(
    delete,
    path = "/webhook-endpoints/{id}",
    tag = "events",
    operation_id = "deleteWebhookEndpoint",
    params(("id" = Uuid, Path, description = "The endpoint's id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    if store::delete_endpoint(&state.pool, id).await? {
        tracing::info!(endpoint_id = %id, "webhook endpoint removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::EndpointNotFound(id))
    }
}

/// Give an endpoint a new secret; the old one keeps signing for 24 hours.
///
/// Until then every delivery carries two signatures (`v1,<new> v1,<old>`), so a receiver can
/// switch to the new secret at any time within the day.
#[utoipa::path(
    post,
    path = "/webhook-endpoints/{id}/rotate-secret",
    tag = "events",
    operation_id = "rotateWebhookEndpointSecret",
    params(("id" = Uuid, Path, description = "The endpoint's id.")),
    responses(
        (status = 200, description = "The endpoint with its new secret (shown only here).", body = EndpointWithSecret),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<EndpointWithSecret>, ApiError> {
    let secret = new_secret();
    let endpoint = store::rotate_secret(&state.pool, id, &secret, ROTATION_GRACE)
        .await?
        .ok_or(ApiError::EndpointNotFound(id))?;
    tracing::info!(endpoint_id = %id, "webhook endpoint secret rotated; the previous one signs for 24 h");
    Ok(Json(EndpointWithSecret { endpoint, secret }))
}
