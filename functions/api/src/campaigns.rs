//! The `/campaigns` routes: create, list, read with progress, pause, resume, cancel, and
//! calls added in bulk (CSV or JSON, parsed in [`crate::bulk`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use ebra_shared::domain::InvalidValue;
use ebra_shared::problem::{FieldError, Problem};
use ebra_shared::store::calls::ListCursor;
pub use ebra_shared::store::campaigns::CampaignWithProgress;
use ebra_shared::store::campaigns::{
    self as store, BulkAdded, BulkCall, BulkOutcome, Campaign, CampaignChanged,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::bulk::{self, ParsedRow, MAX_BYTES};
use crate::calls::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::error::ApiError;
use crate::extract::{IdPath, JsonBody, QueryParams};
use crate::requests::CreateCampaignRequest;
use crate::AppState;

/// One page of campaigns, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignList {
    pub items: Vec<Campaign>,
    pub page_size: u32,
    /// Pass as `cursor` for the next page; null when this page is the last.
    pub next_cursor: Option<String>,
}

/// `GET /campaigns` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct ListCampaignsParams {
    /// Campaigns per page, 1–100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub page_size: Option<String>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// What a cancel did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignCanceled {
    pub campaign: Campaign,
    /// Its PENDING calls now CANCELED (0 when it was canceled already).
    pub canceled_calls: u64,
}

/// What became of one row of a bulk add.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RowStatus {
    /// A new call (`id`).
    Created,
    /// The row's idempotency key was seen before with the same row (in an earlier request
    /// or earlier in this one): `id` is the existing call.
    Duplicate,
    /// The row is invalid (`errors`); nothing was written for it.
    Rejected,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RowResult {
    /// 1-based, in the order sent (the CSV's header row not counted).
    pub row: usize,
    pub status: RowStatus,
    pub id: Option<Uuid>,
    /// The row's idempotency key (its own, or the derived `row:<hash>`).
    pub idempotency_key: Option<String>,
    /// Why it was rejected, field by field (as a problem's `errors`).
    pub errors: Option<Vec<FieldError>>,
}

/// The answer to a bulk add.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkAddResult {
    pub created: usize,
    pub duplicate: usize,
    pub rejected: usize,
    /// One per row, in order.
    pub rows: Vec<RowResult>,
}

fn location(id: Uuid) -> Result<HeaderValue, ApiError> {
    HeaderValue::try_from(format!("/campaigns/{id}"))
        .map_err(|e| ApiError::Internal(format!("building the Location header: {e}")))
}

/// Create a campaign.
#[utoipa::path(
    post,
    path = "/campaigns",
    tag = "campaigns",
    operation_id = "createCampaign",
    request_body(content = CreateCampaignRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The campaign, ACTIVE... or COMPLETED until it has calls; its campaign.created event is written with it.", body = Campaign,
            headers(("Location" = String, description = "/campaigns/{id}"))),
        (status = 400, description = "Malformed JSON, unknown field or wrong type.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (listed in `errors`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_campaign(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CreateCampaignRequest>,
) -> Result<Response, ApiError> {
    let mut new = request.validate(Utc::now(), state.config.global_concurrency)?;
    if let Some(url) = &new.callback_url {
        if state.config.events.callback_secret.is_none() {
            return Err(ApiError::Invalid(vec![InvalidValue::new(
                "callbackUrl",
                "cannot be used: this deployment has no CALLBACK_SECRET to sign its events with",
            )]));
        }
        let checked = crate::endpoints::check_destination(&state, "callbackUrl", url)
            .await
            .map_err(|invalid| ApiError::Invalid(vec![invalid]))?;
        new.callback_url = Some(checked);
    }
    let campaign = store::create_campaign(&state.pool, &new).await?;
    tracing::info!(campaign_id = %campaign.id, name = %campaign.name, "campaign created");
    // Its campaign.created event.
    state.events.after_change(&state.pool).await;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location(campaign.id)?)],
        Json(campaign),
    )
        .into_response())
}

/// List campaigns, newest first.
#[utoipa::path(
    get,
    path = "/campaigns",
    tag = "campaigns",
    operation_id = "listCampaigns",
    params(ListCampaignsParams),
    responses(
        (status = 200, description = "One page of campaigns.", body = CampaignList),
        (status = 400, description = "pageSize outside 1–100, a malformed cursor, or an unknown parameter.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_campaigns(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ListCampaignsParams>,
) -> Result<Json<CampaignList>, ApiError> {
    let page_size = params
        .page_size
        .map(|raw| {
            raw.parse::<u32>()
                .ok()
                .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
                .ok_or_else(|| {
                    InvalidValue::new(
                        "pageSize",
                        format!("must be a whole number from 1 to {MAX_PAGE_SIZE}, got {raw:?}"),
                    )
                })
        })
        .transpose();
    let cursor = params
        .cursor
        .map(|raw| {
            ListCursor::decode(&raw).ok_or_else(|| {
                InvalidValue::new("cursor", "is not a cursor this API returned (nextCursor)")
            })
        })
        .transpose();
    let (page_size, cursor) = match (page_size, cursor) {
        (Ok(page_size), Ok(cursor)) => (page_size.unwrap_or(DEFAULT_PAGE_SIZE), cursor),
        (page_size, cursor) => {
            return Err(ApiError::InvalidQuery(
                [page_size.err(), cursor.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            ))
        }
    };
    let (items, next_cursor) = store::list_campaigns(&state.pool, cursor, page_size).await?;
    Ok(Json(CampaignList {
        items,
        page_size,
        next_cursor,
    }))
}

/// A campaign with its progress: calls per status, in progress against its
/// `maxConcurrency`, dials in the last hour, an ETA, and its failures grouped.
#[utoipa::path(
    get,
    path = "/campaigns/{id}",
    tag = "campaigns",
    operation_id = "getCampaign",
    params(("id" = Uuid, Path, description = "The campaign's id.")),
    responses(
        (status = 200, description = "The campaign, with `progress`.", body = CampaignWithProgress),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such campaign.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_campaign(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<CampaignWithProgress>, ApiError> {
    let campaign = store::get_campaign(&state.pool, id)
        .await?
        .ok_or(ApiError::CampaignNotFound(id))?;
    let progress = store::campaign_progress(&state.pool, id).await?;
    Ok(Json(CampaignWithProgress { campaign, progress }))
}

/// Pause a campaign: its waiting calls are not dialed until it is resumed; calls in
/// progress finish.
#[utoipa::path(
    post,
    path = "/campaigns/{id}/pause",
    tag = "campaigns",
    operation_id = "pauseCampaign",
    params(("id" = Uuid, Path, description = "The campaign's id.")),
    responses(
        (status = 200, description = "The campaign, PAUSED, with its campaign.paused event (pausing a paused one changes nothing and writes no event).", body = Campaign),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such campaign.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The campaign is canceled.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause_campaign(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<Campaign>, ApiError> {
    match store::set_campaign_paused(&state.pool, id, true).await? {
        CampaignChanged::Done(campaign) => {
            tracing::info!(campaign_id = %id, "campaign paused");
            state.events.after_change(&state.pool).await;
            Ok(Json(*campaign))
        }
        CampaignChanged::Unchanged(campaign) => {
            tracing::info!(campaign_id = %id, "campaign already paused");
            Ok(Json(*campaign))
        }
        CampaignChanged::NotFound => Err(ApiError::CampaignNotFound(id)),
        CampaignChanged::Canceled => Err(ApiError::CampaignCanceled(id)),
    }
}

/// Resume a paused campaign: its waiting calls are dialed again, as slots allow.
#[utoipa::path(
    post,
    path = "/campaigns/{id}/resume",
    tag = "campaigns",
    operation_id = "resumeCampaign",
    params(("id" = Uuid, Path, description = "The campaign's id.")),
    responses(
        (status = 200, description = "The campaign, ACTIVE (or COMPLETED when nothing is left), with its campaign.resumed event (resuming an active one writes none).", body = Campaign),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such campaign.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The campaign is canceled.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume_campaign(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<Campaign>, ApiError> {
    match store::set_campaign_paused(&state.pool, id, false).await? {
        CampaignChanged::Done(campaign) => {
            tracing::info!(campaign_id = %id, "campaign resumed");
            // Its parked calls: as many as there are free slots get a message now (fairly
            // across campaigns); the rest follow freed slots' nudges.
            tokio::join!(refill(&state), state.events.after_change(&state.pool));
            Ok(Json(*campaign))
        }
        CampaignChanged::Unchanged(campaign) => {
            tracing::info!(campaign_id = %id, "campaign already active");
            Ok(Json(*campaign))
        }
        CampaignChanged::NotFound => Err(ApiError::CampaignNotFound(id)),
        CampaignChanged::Canceled => Err(ApiError::CampaignCanceled(id)),
    }
}

/// Gives free slots their calls now, rather than at the reclaimer's next refill pass. A
/// failure is logged: that pass is the safety net.
async fn refill(state: &AppState) {
    match ebra_shared::store::sweep::refill_free_slots(&state.pool, state.config.global_concurrency)
        .await
    {
        Ok((_, messages)) => {
            if let Some(queue) = &state.queue {
                queue.send_best_effort(&messages).await;
            }
        }
        Err(error) => {
            tracing::warn!(error = %error, "refilling free slots failed; the reclaimer's pass will")
        }
    }
}

/// Cancel a campaign: all its PENDING calls are CANCELED at once (each with its
/// `call.canceled` event); calls in progress finish. It takes no new calls afterwards.
#[utoipa::path(
    post,
    path = "/campaigns/{id}/cancel",
    tag = "campaigns",
    operation_id = "cancelCampaign",
    params(("id" = Uuid, Path, description = "The campaign's id.")),
    responses(
        (status = 200, description = "The campaign, CANCELED, and how many calls were canceled; its campaign.canceled event is written with it (not again when it was canceled already).", body = CampaignCanceled),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such campaign.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_campaign(
    State(state): State<AppState>,
    IdPath(id): IdPath,
) -> Result<Json<CampaignCanceled>, ApiError> {
    match store::cancel_campaign(&state.pool, id).await? {
        (CampaignChanged::Done(campaign), canceled_calls) => {
            tracing::info!(campaign_id = %id, canceled_calls, "campaign canceled");
            // Its campaign.canceled event, and its calls' call.canceled.
            state.events.after_change(&state.pool).await;
            Ok(Json(CampaignCanceled {
                campaign: *campaign,
                canceled_calls,
            }))
        }
        (CampaignChanged::Unchanged(campaign), canceled_calls) => {
            tracing::info!(campaign_id = %id, canceled_calls, "campaign already canceled");
            if canceled_calls > 0 {
                state.events.after_change(&state.pool).await;
            }
            Ok(Json(CampaignCanceled {
                campaign: *campaign,
                canceled_calls,
            }))
        }
        (CampaignChanged::NotFound, _) => Err(ApiError::CampaignNotFound(id)),
        (CampaignChanged::Canceled, _) => Err(ApiError::Internal(format!(
            "cancel_campaign answered Canceled for campaign {id}"
        ))),
    }
}

/// Add calls to a campaign in bulk: up to 1,000 rows or 1 MiB, as CSV (`text/csv`, with a
/// header row: `to`, `scriptId`, `scheduledAt`, `expiresAt`, `idempotencyKey`, any other
/// column going into `metadata`) or JSON (`{"calls": [...]}`).
///
/// Each row is answered: created, duplicate (its idempotency key was seen before with the
/// same row; the key defaults to a hash of the campaign and the row, so sending a file
/// twice creates nothing new) or rejected (with its field errors; nothing written for it).
/// The valid rows are inserted in one statement. Only as many calls get a queue message now
/// as there are free slots; the rest wait, parked, for freed slots.
#[utoipa::path(
    post,
    path = "/campaigns/{id}/calls",
    tag = "campaigns",
    operation_id = "addCampaignCalls",
    params(("id" = Uuid, Path, description = "The campaign's id.")),
    request_body(
        description = "CSV with a header row, or `{\"calls\": [...]}`.",
        content(
            (String = "text/csv"),
            (crate::bulk::BulkCallsRequest = "application/json"),
        )
    ),
    responses(
        (status = 200, description = "One answer per row.", body = BulkAddResult),
        (status = 400, description = "A body that is not CSV (no header, no `to` column, a column named twice, unreadable) or not `{\"calls\": [...]}` JSON; or an id that is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such campaign.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The campaign is canceled.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over 1 MiB or over 1,000 rows.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither text/csv nor application/json.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_campaign_calls(
    State(state): State<AppState>,
    IdPath(id): IdPath,
    request: Request,
) -> Result<Json<BulkAddResult>, ApiError> {
    let format = body_format(request.headers())?;
    let body = read_body(request.into_body(), MAX_BYTES).await?;
    let parsed = match format {
        BodyFormat::Csv => bulk::parse_csv(&body)?,
        BodyFormat::Json => bulk::parse_json(&body)?,
    };
    let campaign = store::get_campaign(&state.pool, id)
        .await?
        .ok_or(ApiError::CampaignNotFound(id))?;
    if campaign.status == store::CampaignStatus::Canceled {
        return Err(ApiError::CampaignCanceled(id));
    }
    let result = add_rows(&state, &campaign, parsed).await?;
    tracing::info!(
        campaign_id = %id,
        created = result.created,
        duplicate = result.duplicate,
        rejected = result.rejected,
        "calls added to a campaign"
    );
    Ok(Json(result))
}

enum BodyFormat {
    Csv,
    Json,
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    match crate::extract::media_type(headers).as_str() {
        "text/csv" => Ok(BodyFormat::Csv),
        "application/json" => Ok(BodyFormat::Json),
        _ => Err(ApiError::UnsupportedMediaType(
            "Send the rows as `Content-Type: text/csv` (with a header row) or `application/json` ({\"calls\": [...]})."
                .to_owned(),
        )),
    }
}

/// The body, refused (413) as soon as it passes `limit` bytes: a 50 MB upload is not read
/// whole.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::BulkTooLarge
        } else {
            ApiError::bad_request(
                "malformed-body",
                format!("The body could not be read: {error}"),
            )
        }
    })
}

/// Validates each row, answers rows repeated within the request from their first
/// occurrence, and inserts the rest in one statement.
async fn add_rows(
    state: &AppState,
    campaign: &Campaign,
    parsed: Vec<ParsedRow>,
) -> Result<BulkAddResult, ApiError> {
    let now = Utc::now();
    enum Plan {
        Rejected(Vec<InvalidValue>),
        /// Index into the rows sent to the store.
        Stored(usize),
        /// The same key as the `n`-th stored row, with the same content.
        Repeat(usize),
    }
    let default_window = state.config.calling_rules.default_window.as_ref();
    let mut plans = Vec::with_capacity(parsed.len());
    let mut to_store: Vec<BulkCall> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for row in parsed {
        let plan = match row.and_then(|raw| bulk::validate_row(raw, campaign, now, default_window))
        {
            Err(errors) => Plan::Rejected(errors),
            Ok(call) => match by_key.get(&call.idempotency_key) {
                Some(&first) if to_store[first].request_hash == call.request_hash => {
                    Plan::Repeat(first)
                }
                Some(_) => Plan::Rejected(vec![InvalidValue::new(
                    "idempotencyKey",
                    "is used by an earlier row of this request with different content",
                )]),
                None => {
                    by_key.insert(call.idempotency_key.clone(), to_store.len());
                    to_store.push(call);
                    Plan::Stored(to_store.len() - 1)
                }
            },
        };
        plans.push(plan);
    }
    let (outcomes, enqueue) = match store::add_campaign_calls(
        &state.pool,
        campaign.id,
        &to_store,
        state.config.max_attempts,
        state.config.global_concurrency,
    )
    .await?
    {
        BulkAdded::Done { outcomes, enqueue } => (outcomes, enqueue),
        BulkAdded::NotFound => return Err(ApiError::CampaignNotFound(campaign.id)),
        BulkAdded::Canceled => return Err(ApiError::CampaignCanceled(campaign.id)),
    };
    if outcomes.len() != to_store.len() {
        return Err(ApiError::Internal(format!(
            "a bulk add of {} rows answered {}",
            to_store.len(),
            outcomes.len()
        )));
    }
    // Messages for the calls that may be dialed now (no more than free slots); the
    // notifier wakes for the call.created events.
    let messages = async {
        if let Some(queue) = &state.queue {
            queue.send_best_effort(&enqueue).await;
        } else if !enqueue.is_empty() {
            tracing::error!(
                count = enqueue.len(),
                "no calls queue configured; the outbox sweep will send the dial messages"
            );
        }
    };
    let created_any = outcomes
        .iter()
        .any(|o| matches!(o, BulkOutcome::Created(_)));
    let nudge = async {
        if created_any {
            state.events.after_change(&state.pool).await;
        }
    };
    tokio::join!(messages, nudge);

    let mut result = BulkAddResult {
        created: 0,
        duplicate: 0,
        rejected: 0,
        rows: Vec::with_capacity(plans.len()),
    };
    for (index, plan) in plans.into_iter().enumerate() {
        let row = index + 1;
        let answer = match plan {
            Plan::Rejected(errors) => RowResult {
                row,
                status: RowStatus::Rejected,
                id: None,
                idempotency_key: None,
                errors: Some(
                    errors
                        .into_iter()
                        .map(|e| FieldError {
                            field: e.field.to_owned(),
                            message: e.message,
                        })
                        .collect(),
                ),
            },
            Plan::Stored(n) => {
                let key = Some(to_store[n].idempotency_key.clone());
                match &outcomes[n] {
                    BulkOutcome::Created(id) => RowResult {
                        row,
                        status: RowStatus::Created,
                        id: Some(*id),
                        idempotency_key: key,
                        errors: None,
                    },
                    BulkOutcome::Duplicate(id) => RowResult {
                        row,
                        status: RowStatus::Duplicate,
                        id: Some(*id),
                        idempotency_key: key,
                        errors: None,
                    },
                    BulkOutcome::KeyReused => RowResult {
                        row,
                        status: RowStatus::Rejected,
                        id: None,
                        idempotency_key: key,
                        errors: Some(vec![FieldError {
                            field: "idempotencyKey".to_owned(),
                            message: "was already used for a different call".to_owned(),
                        }]),
                    },
                    BulkOutcome::Suppressed => suppressed_row(row, key),
                }
            }
            Plan::Repeat(n) => match &outcomes[n] {
                BulkOutcome::Created(id) | BulkOutcome::Duplicate(id) => RowResult {
                    row,
                    status: RowStatus::Duplicate,
                    id: Some(*id),
                    idempotency_key: Some(to_store[n].idempotency_key.clone()),
                    errors: None,
                },
                BulkOutcome::KeyReused => RowResult {
                    row,
                    status: RowStatus::Rejected,
                    id: None,
                    idempotency_key: Some(to_store[n].idempotency_key.clone()),
                    errors: Some(vec![FieldError {
                        field: "idempotencyKey".to_owned(),
                        message: "was already used for a different call".to_owned(),
                    }]),
                },
                BulkOutcome::Suppressed => {
                    suppressed_row(row, Some(to_store[n].idempotency_key.clone()))
                }
            },
        };
        match answer.status {
            RowStatus::Created => result.created += 1,
            RowStatus::Duplicate => result.duplicate += 1,
            RowStatus::Rejected => result.rejected += 1,
        }
        result.rows.push(answer);
    }
    Ok(result)
}

/// A row whose number is on the do-not-call list: rejected, nothing written.
fn suppressed_row(row: usize, idempotency_key: Option<String>) -> RowResult {
    RowResult {
        row,
        status: RowStatus::Rejected,
        id: None,
        idempotency_key,
        errors: Some(vec![FieldError {
            field: "to".to_owned(),
            message: "is on the do-not-call list (urn:ebra:problem:suppressed)".to_owned(),
        }]),
    }
}
