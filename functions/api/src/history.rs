//! `GET /metrics/history`: calls in progress per minute over the last hour (or up to six),
//! for the console's chart. Derived from the dials' timestamps (`store::history`), so it
//! shows real history from the first request.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use ebra_shared::domain::InvalidValue;
use ebra_shared::problem::Problem;
use ebra_shared::store::history as store;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::AppState;

pub const DEFAULT_MINUTES: u32 = 60;
pub const MAX_MINUTES: u32 = 360;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// How many minutes of history, 1–360 (default 60), the current minute included.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 360)]
    pub minutes: Option<String>,
}

/// Calls in progress per minute, oldest minute first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InProgressHistory {
    /// The cap on calls in progress now (`GLOBAL_CONCURRENCY`).
    pub global_concurrency: u32,
    pub minutes: Vec<MinuteInProgress>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinuteInProgress {
    /// The minute's start; the last minute is the current one, still running.
    pub at: DateTime<Utc>,
    /// The most calls in progress at once during the minute.
    pub peak_in_progress: i64,
}

/// Calls in progress per minute.
///
/// Derived from the dials' start and end times, so the history is there from the first
/// request. The present value is `GET /metrics`' `inProgress`.
#[utoipa::path(
    get,
    path = "/metrics/history",
    tag = "operations",
    operation_id = "getMetricsHistory",
    params(HistoryParams),
    responses(
        (status = 200, description = "One point per minute, oldest first.", body = InProgressHistory),
        (status = 400, description = "minutes outside 1–360, or an unknown parameter.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn metrics_history(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<HistoryParams>,
) -> Result<Json<InProgressHistory>, ApiError> {
    let minutes = match params.minutes {
        None => DEFAULT_MINUTES,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|minutes| (1..=MAX_MINUTES).contains(minutes))
            .ok_or_else(|| {
                ApiError::InvalidQuery(vec![InvalidValue::new(
                    "minutes",
                    format!("must be a whole number from 1 to {MAX_MINUTES}, got {raw:?}"),
                )])
            })?,
    };
    let points = store::in_progress_by_minute(&state.pool, minutes).await?;
    Ok(Json(InProgressHistory {
        global_concurrency: state.config.global_concurrency,
        minutes: points
            .into_iter()
            .map(|point| MinuteInProgress {
                at: point.minute,
                peak_in_progress: point.peak,
            })
            .collect(),
    }))
}
