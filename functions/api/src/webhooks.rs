//! `GET /calls/{id}/webhooks`: the provider's reports received for a call's dials, for the
//! console's timeline next to the dials of `GET /calls/{id}`.

use axum::extract::State;
use axum::Json;
use ebra_shared::problem::Problem;
use ebra_shared::store::webhooks::{self as store, ReceivedWebhook};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::CallIdPath;
use crate::AppState;

/// The most reports one answer lists (a provider that retries a report sends the same
/// `webhook-id`, stored once, so a real call has a handful).
pub const MAX_WEBHOOKS: usize = 200;

/// A call's webhooks, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<ReceivedWebhook>,
    /// True when the call has more than the 200 reports listed (the oldest are listed).
    pub truncated: bool,
}

/// The webhooks received for a call's dials.
#[utoipa::path(
    get,
    path = "/calls/{id}/webhooks",
    tag = "calls",
    operation_id = "listCallWebhooks",
    params(("id" = Uuid, Path, description = "The call's id.")),
    responses(
        (status = 200, description = "The reports received for the call's dials, oldest first.", body = WebhookList),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such call.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_call_webhooks(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
) -> Result<Json<WebhookList>, ApiError> {
    let mut items = store::webhooks_for_call(&state.pool, id, MAX_WEBHOOKS as i64 + 1)
        .await?
        .ok_or(ApiError::CallNotFound(id))?;
    let truncated = items.len() > MAX_WEBHOOKS;
    items.truncate(MAX_WEBHOOKS);
    Ok(Json(WebhookList { items, truncated }))
}
