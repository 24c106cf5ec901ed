//! A call's events and their deliveries (`GET /calls/{id}/events`), and sending one again
//! (`POST /events/{id}/redeliver`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ebra_shared::problem::Problem;
use ebra_shared::store::events::{self as store, RecordedEvent, Redelivered};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{CallIdPath, IdPath};
use crate::AppState;

/// The most events one answer lists.
pub const MAX_EVENTS: usize = 100;

/// A call's events in sequence order, each with its deliveries and every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub items: Vec<RecordedEvent>,
    /// True when the call has more than the 100 events listed (the first are listed).
    pub truncated: bool,
}

/// What a redelivery queued.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedeliveryQueued {
    pub event_id: Uuid,
    /// The deliveries due now: one per enabled endpoint subscribed to the event's type, and
    /// one to the call's `callbackUrl` when it has one.
    pub deliveries: Vec<Uuid>,
}

/// The events of a call and their deliveries.
#[utoipa::path(
    get,
    path = "/calls/{id}/events",
    tag = "events",
    operation_id = "listCallEvents",
    params(("id" = Uuid, Path, description = "The call's id.")),
    responses(
        (status = 200, description = "The call's events in sequence order, each with its deliveries (status code, latency and error of every attempt).", body = EventList),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such call.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_call_events(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
) -> Result<Json<EventList>, ApiError> {
    let mut items = store::events_for_call(&state.pool, id, MAX_EVENTS as i64 + 1)
        .await?
        .ok_or(ApiError::CallNotFound(id))?;
    let truncated = items.len() > MAX_EVENTS;
    items.truncate(MAX_EVENTS);
    Ok(Json(EventList { items, truncated }))
}

/// Send an event again.
///
/// To every enabled endpoint subscribed to its type and to its call's `callbackUrl`, with
/// the same `webhook-id` as before; each delivery is due now and retried like a new one.
#[utoipa::path(
    post,
    path = "/events/{id}/redeliver",
    tag = "events",
    operation_id = "redeliverEvent",
    params(("id" = Uuid, Path, description = "The event's id.")),
    responses(
        (status = 202, description = "Queued; `GET /calls/{id}/events` shows the attempts.", body = RedeliveryQueued),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn redeliver_event(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<RedeliveryQueued>), ApiError> {
    match store::redeliver_event(&state.pool, id, state.config.events.retry_window).await? {
        Redelivered::Queued(deliveries) => {
            tracing::info!(event_id = %id, deliveries = deliveries.len(), "event queued for redelivery");
            state.events.send().await;
            Ok((
                StatusCode::ACCEPTED,
                Json(RedeliveryQueued {
                    event_id: id,
                    deliveries,
                }),
            ))
        }
        Redelivered::NotFound => Err(ApiError::EventNotFound(id)),
    }
}
