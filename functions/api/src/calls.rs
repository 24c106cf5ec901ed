//! The `/calls` routes: create, read, list, change, cancel.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ebra_shared::domain::{CallStatus, InvalidValue, PhoneNumber};
use ebra_shared::problem::Problem;
use ebra_shared::queue::Enqueue;
use ebra_shared::rules::CallingWindow;
use ebra_shared::store::calls::{
    self as store, CallFilter, Changed, Created, ListCursor, ListPosition,
};
use ebra_shared::store::{Call, DialAttempt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{error_chain, ApiError};
use crate::extract::{CallIdPath, JsonBody, QueryParams};
use crate::requests::{idempotency_key, request_hash, CreateCallRequest, PatchCallRequest};
use crate::AppState;

/// Set on a create answered from an earlier request with the same `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long an API request waits for SQS before leaving the message to the outbox sweep: far
/// above SQS's usual milliseconds, well below API Gateway's 29-second cap.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;

/// A call with its dial attempts (`GET /calls/{id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CallWithDials {
    #[serde(flatten)]
    pub call: Call,
    /// Every dial made, oldest first.
    pub dials: Vec<DialAttempt>,
}

/// One page of calls, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallList {
    pub items: Vec<Call>,
    /// The page number asked for; null in cursor mode.
    pub page: Option<u32>,
    pub page_size: u32,
    /// Calls matching the filter, counted in page mode only (null in cursor mode). Counting
    /// stops at 10,000 so a listing costs the same on any table size: see `totalRelation`.
    pub total: Option<i64>,
    /// `eq` when `total` is exact; `gte` when counting stopped at 10,000 and there are at
    /// least that many. Null in cursor mode.
    pub total_relation: Option<TotalRelation>,
    /// Pass as `cursor` for the next page; null when this page is the last.
    pub next_cursor: Option<String>,
}

/// Whether a listing's `total` is exact (`eq`) or a lower bound (`gte`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TotalRelation {
    Eq,
    Gte,
}

/// `GET /calls` query. Values are taken as text and parsed here so that a malformed one is
/// a clear 400, never a silent default.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct ListCallsParams {
    /// Only calls in this status.
    #[param(value_type = Option<CallStatus>)]
    pub status: Option<String>,
    /// Only calls to this phone number, in E.164 form (`+14155550100`; in a query string the
    /// `+` is sent as `%2B`).
    #[param(value_type = Option<String>, example = "+14155550100")]
    pub to: Option<String>,
    /// 1-based page number (offset paging, with `total`). Not with `cursor`.
    #[param(value_type = Option<u32>, minimum = 1)]
    pub page: Option<String>,
    /// Calls per page, 1–100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub page_size: Option<String>,
    /// `nextCursor` of the previous page (keyset paging, fast on any table size). Not with
    /// `page`.
    pub cursor: Option<String>,
    /// Only the calls of this campaign.
    #[param(value_type = Option<Uuid>)]
    pub campaign_id: Option<String>,
}

struct ListRequest {
    filter: CallFilter,
    position: ListPosition,
    page_size: u32,
}

impl ListCallsParams {
    fn parse(self) -> Result<ListRequest, ApiError> {
        let status = self.status.map(|raw| raw.parse::<CallStatus>()).transpose();
        // Its errors name the field `to`, as the query parameter is named.
        let phone = self.to.map(|raw| PhoneNumber::parse(&raw)).transpose();
        let page = self
            .page
            .map(|raw| {
                raw.parse::<u32>()
                    .ok()
                    .filter(|page| *page >= 1)
                    .ok_or_else(|| {
                        InvalidValue::new(
                            "page",
                            format!("must be a whole number ≥ 1, got {raw:?}"),
                        )
                    })
            })
            .transpose();
        let page_size = self
            .page_size
            .map(|raw| {
                raw.parse::<u32>()
                    .ok()
                    .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
                    .ok_or_else(|| {
                        InvalidValue::new(
                            "pageSize",
                            format!(
                                "must be a whole number from 1 to {MAX_PAGE_SIZE}, got {raw:?}"
                            ),
                        )
                    })
            })
            .transpose();
        let cursor = self
            .cursor
            .map(|raw| {
                ListCursor::decode(&raw).ok_or_else(|| {
                    InvalidValue::new("cursor", "is not a cursor this API returned (nextCursor)")
                })
            })
            .transpose();
        let campaign_id = self
            .campaign_id
            .map(|raw| {
                raw.parse::<Uuid>().map_err(|_| {
                    InvalidValue::new("campaignId", "must be a campaign's id (a UUID)")
                })
            })
            .transpose();
        match (status, phone, page, page_size, cursor, campaign_id) {
            (Ok(status), Ok(phone), Ok(page), Ok(page_size), Ok(cursor), Ok(campaign_id)) => {
                let position = match (page, cursor) {
                    (Some(_), Some(_)) => {
                        return Err(ApiError::InvalidQuery(vec![InvalidValue::new(
                            "cursor",
                            "cannot be combined with page: use one paging mode",
                        )]))
                    }
                    (page, None) => ListPosition::Page(page.unwrap_or(1)),
                    (None, Some(cursor)) => ListPosition::After(cursor),
                };
                Ok(ListRequest {
                    filter: CallFilter {
                        status,
                        phone,
                        campaign_id,
                    },
                    position,
                    page_size: page_size.unwrap_or(DEFAULT_PAGE_SIZE),
                })
            }
            (status, phone, page, page_size, cursor, campaign_id) => Err(ApiError::InvalidQuery(
                [
                    status.err(),
                    phone.err(),
                    page.err(),
                    page_size.err(),
                    cursor.err(),
                    campaign_id.err(),
                ]
                .into_iter()
                .flatten()
                .collect(),
            )),
        }
    }
}

fn location(id: Uuid) -> Result<HeaderValue, ApiError> {
    HeaderValue::try_from(format!("/calls/{id}"))
        .map_err(|e| ApiError::Internal(format!("building the Location header: {e}")))
}

/// Sends a call's dial message after its commit. A failure is not the client's problem: the
/// call keeps its outbox mark and the reclaimer re-sends it (invariant 4).
async fn send_dial_message(state: &AppState, enqueue: Enqueue) {
    let call_id = enqueue.call_id;
    let Some(queue) = &state.queue else {
        tracing::error!(%call_id, "no calls queue configured; the outbox sweep will send the dial message");
        return;
    };
    match tokio::time::timeout(SEND_TIMEOUT, queue.send(enqueue)).await {
        Ok(Ok(())) => {
            tracing::debug!(%call_id, delay_seconds = enqueue.delay.as_secs(), "dial message sent")
        }
        Ok(Err(error)) => tracing::warn!(
            %call_id,
            error = %error_chain(error.as_ref()),
            "dial message not sent; the outbox sweep will send it"
        ),
        Err(_) => tracing::warn!(
            %call_id,
            timeout_seconds = SEND_TIMEOUT.as_secs(),
            "dial message timed out; the outbox sweep will send it"
        ),
    }
}

/// Enqueue a call.
///
/// The call and its outbox mark are committed together, then the dial message is sent; if
/// the send fails the call is still accepted and the outbox sweep delivers it.
#[utoipa::path(
    post,
    path = "/calls",
    tag = "calls",
    operation_id = "createCall",
    request_body(content = CreateCallRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "1–255 printable ASCII characters. A retry with the same key and the same request returns the original call; with a different request, 422."),
    ),
    responses(
        (status = 201, description = "The call, PENDING with 0 attempts.", body = Call,
            headers(("Location" = String, description = "/calls/{id}"))),
        (status = 200, description = "A retry: the call created by the first request with this Idempotency-Key.", body = Call,
            headers(
                ("Location" = String, description = "/calls/{id}"),
                ("Idempotent-Replayed" = String, description = "`true`"),
            )),
        (status = 400, description = "Malformed JSON, unknown field, wrong type or bad Idempotency-Key.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The campaign named by campaignId is canceled.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (listed in `errors`; a callbackUrl whose host is or resolves to a private, loopback or link-local address among them, a campaignId that names no campaign, a window or timezone that is not one, or a window that never holds in all of the number's time zones), an Idempotency-Key reused with a different request, or a number on the do-not-call list (`urn:ebra:problem:suppressed`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_call(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateCallRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let now = state.clock.now();
    // A call without a window of its own takes its campaign's, else CALL_WINDOW's.
    let campaign_window = match request.campaign_id.as_deref().map(str::parse::<Uuid>) {
        Some(Ok(id)) => ebra_shared::store::campaigns::get_campaign(&state.pool, id)
            .await?
            .and_then(|campaign| campaign.window)
            .and_then(|spec| CallingWindow::from_spec("window", &spec).ok()),
        _ => None,
    };
    let default_window =
        campaign_window
            .as_ref()
            .or(state.config.calling_rules.default_window.as_ref());
    let mut new = request.validate(now, default_window)?;
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
    new.idempotency = key.map(|key| {
        let hash = request_hash(&new);
        (key, hash)
    });
    match store::create_call(
        &state.pool,
        &new,
        state.config.max_attempts,
        state.config.global_concurrency,
    )
    .await?
    {
        Created::New { call, enqueue } => {
            tracing::info!(
                call_id = %call.id,
                scheduled_at = ?call.scheduled_at,
                window_opens_at = ?new.window_opens_at,
                parked = enqueue.is_none(),
                "call accepted"
            );
            let call = call.with_window_opening(now);
            // Parked (no slot free, or due beyond the delay horizon): a freed slot's nudge
            // or the reclaimer's refill sends its message. Its call.created event waits in
            // the outbox for the notifier, woken alongside.
            let dial_message = async {
                if let Some(enqueue) = enqueue {
                    send_dial_message(&state, enqueue).await;
                }
            };
            tokio::join!(dial_message, state.events.after_change(&state.pool));
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location(call.id)?)],
                Json(call),
            )
                .into_response())
        }
        Created::Replayed(call) => {
            tracing::info!(call_id = %call.id, "create replayed for its Idempotency-Key");
            let headers = [
                (header::LOCATION, location(call.id)?),
                (IDEMPOTENT_REPLAYED, HeaderValue::from_static("true")),
            ];
            Ok((StatusCode::OK, headers, Json(call)).into_response())
        }
        Created::KeyReused => Err(ApiError::IdempotencyKeyReused),
        Created::CampaignNotFound => Err(ApiError::Invalid(vec![InvalidValue::new(
            "campaignId",
            "names no campaign",
        )])),
        Created::CampaignCanceled => Err(ApiError::CampaignCanceled(
            new.campaign_id.unwrap_or_default(),
        )),
        Created::Suppressed => Err(ApiError::Suppressed(new.phone.as_str().to_owned())),
    }
}

/// List calls, newest first, optionally only those in one status, to one phone number or of
/// one campaign.
///
/// Page mode (`page`, default) counts `total` (up to 10,000, see `totalRelation`); cursor mode (`cursor` = the previous page's
/// `nextCursor`) stays fast on any table size and leaves `total` null.
#[utoipa::path(
    get,
    path = "/calls",
    tag = "calls",
    operation_id = "listCalls",
    params(ListCallsParams),
    responses(
        (status = 200, description = "One page of calls.", body = CallList),
        (status = 400, description = "Unknown status, a `to` that is not an E.164 number, a campaignId that is not a UUID, pageSize outside 1–100, malformed page or cursor, page with cursor, or an unknown parameter.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_calls(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ListCallsParams>,
) -> Result<Json<CallList>, ApiError> {
    let list = params.parse()?;
    let found =
        store::list_calls(&state.pool, &list.filter, &list.position, list.page_size).await?;
    Ok(Json(CallList {
        items: found.items,
        page: match list.position {
            ListPosition::Page(page) => Some(page),
            ListPosition::After(_) => None,
        },
        page_size: list.page_size,
        total: found.total.map(|total| total.value),
        total_relation: found.total.map(|total| {
            if total.exact {
                TotalRelation::Eq
            } else {
                TotalRelation::Gte
            }
        }),
        next_cursor: found.next_cursor,
    }))
}

/// A call and its dial attempts.
#[utoipa::path(
    get,
    path = "/calls/{id}",
    tag = "calls",
    operation_id = "getCall",
    params(("id" = Uuid, Path, description = "The call's id.")),
    responses(
        (status = 200, description = "The call, with `dials`.", body = CallWithDials),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such call.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_call(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
) -> Result<Json<CallWithDials>, ApiError> {
    let (call, dials) = store::get_call(&state.pool, id)
        .await?
        .ok_or(ApiError::CallNotFound(id))?;
    let call = call.with_window_opening(state.clock.now());
    Ok(Json(CallWithDials { call, dials }))
}

/// Change a PENDING call's `to`, `scriptId`, `metadata` or `scheduledAt`.
#[utoipa::path(
    patch,
    path = "/calls/{id}",
    tag = "calls",
    operation_id = "updateCall",
    params(("id" = Uuid, Path, description = "The call's id.")),
    request_body(content = PatchCallRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The changed call.", body = Call),
        (status = 400, description = "Malformed JSON, unknown or read-only field, wrong type, or an id that is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such call.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The call is no longer PENDING.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (listed in `errors`), nothing to change, scheduledAt not before expiresAt, a new number whose time zones the call's window never holds in, or a new number on the do-not-call list (`urn:ebra:problem:suppressed`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_call(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
    JsonBody(request): JsonBody<PatchCallRequest>,
) -> Result<Json<Call>, ApiError> {
    let patch = request.validate()?;
    let now = state.clock.now();
    match store::patch_call(
        &state.pool,
        id,
        &patch,
        state.config.global_concurrency,
        now,
    )
    .await?
    {
        Changed::Done { call, enqueue } => {
            tracing::info!(call_id = %id, "call updated");
            // A new schedule needs a message that arrives on time, sent like a create's.
            if let Some(enqueue) = enqueue {
                send_dial_message(&state, enqueue).await;
            }
            Ok(Json(call.with_window_opening(now)))
        }
        Changed::Suppressed => Err(ApiError::Suppressed(
            patch
                .phone
                .as_ref()
                .map(|phone| phone.as_str().to_owned())
                .unwrap_or_default(),
        )),
        Changed::Invalid(invalid) => Err(ApiError::Invalid(vec![invalid])),
        Changed::NotFound => Err(ApiError::CallNotFound(id)),
        Changed::NotPending(status) => Err(ApiError::NotPending { id, status }),
        Changed::ScheduleAfterExpiry => Err(ApiError::Invalid(vec![InvalidValue::new(
            "scheduledAt",
            "must be before the call's expiresAt",
        )])),
    }
}

/// Cancel a PENDING call.
#[utoipa::path(
    post,
    path = "/calls/{id}/cancel",
    tag = "calls",
    operation_id = "cancelCall",
    params(("id" = Uuid, Path, description = "The call's id.")),
    responses(
        (status = 200, description = "The call, now CANCELED.", body = Call),
        (status = 400, description = "The id is not a UUID.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such call.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The call is no longer PENDING.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_call(
    State(state): State<AppState>,
    CallIdPath(id): CallIdPath,
) -> Result<Json<Call>, ApiError> {
    match store::cancel_call(&state.pool, id).await? {
        Changed::Done { call, .. } => {
            tracing::info!(call_id = %id, "call canceled");
            state.events.after_change(&state.pool).await;
            Ok(Json(call))
        }
        Changed::NotFound => Err(ApiError::CallNotFound(id)),
        Changed::NotPending(status) => Err(ApiError::NotPending { id, status }),
        // Canceling changes no schedule nor number, so the store never answers these.
        other @ (Changed::ScheduleAfterExpiry | Changed::Suppressed | Changed::Invalid(_)) => Err(
            ApiError::Internal(format!("cancel_call answered {other:?} for call {id}")),
        ),
    }
}
