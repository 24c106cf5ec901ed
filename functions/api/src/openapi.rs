//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations.
//! A test checks that its operations are exactly the routes the router serves.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ebra_shared::problem::{FieldError, Problem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{calls, campaigns, endpoints, events, history, metrics, suppressions, webhooks};

pub const PATH: &str = "/openapi.json";
/// The security scheme's name (also spelled out in `#[openapi(security(..))]`).
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ebra",
        description = "Enqueue outbound AI phone calls and follow them to their outcome. Every error is an RFC 9457 `application/problem+json` body."
    ),
    paths(
        calls::create_call,
        calls::list_calls,
        calls::get_call,
        calls::patch_call,
        calls::cancel_call,
        campaigns::create_campaign,
        campaigns::list_campaigns,
        campaigns::get_campaign,
        campaigns::pause_campaign,
        campaigns::resume_campaign,
        campaigns::cancel_campaign,
        campaigns::add_campaign_calls,
        webhooks::list_call_webhooks,
        events::list_call_events,
        events::redeliver_event,
        endpoints::create_endpoint,
        endpoints::list_endpoints,
        endpoints::get_endpoint,
        endpoints::update_endpoint,
        endpoints::delete_endpoint,
        endpoints::rotate_secret,
        suppressions::put_suppression,
        suppressions::delete_suppression,
        suppressions::get_suppression,
        suppressions::list_suppressions,
        suppressions::add_suppressions,
        metrics::metrics,
        history::metrics_history,
        openapi_json,
    ),
    components(schemas(Problem, FieldError, ebra_shared::events::EventBody)),
    modifiers(&CommonResponses),
    security(("bearer" = [])),
    tags(
        (name = "calls", description = "Enqueue, inspect, change and cancel calls, and read the webhooks received for them."),
        (name = "campaigns", description = "Lists of calls added in bulk (CSV or JSON), followed as a whole (counts, rate, ETA, failures), paused, resumed and canceled, each with its own maxConcurrency and a fair share of the global cap."),
        (name = "events", description = "Signed events (Standard Webhooks) on every change of a call (call.created, call.dialing, call.retry_scheduled, call.completed, call.failed, call.expired, call.canceled, call.result_updated) and of a campaign's state (campaign.created, campaign.paused, campaign.resumed, campaign.canceled, campaign.completed: its calls have all ended, found by the reclaimer's pass within a minute, once, and once more each time calls added later have all ended), posted to the endpoints you register (subscribed to the type, or to every type) and to the call's or campaign's callbackUrl: their registration, each call's events with every delivery attempt, and redelivery. The body of a delivery is an EventBody: data is the call as GET /calls/{id} shows it, or the campaign as GET /campaigns/{id} shows it (with its progress), each with its own sequence."),
        (name = "suppressions", description = "The do-not-call list: numbers never dialed. Creating a call to one is refused (422 urn:ebra:problem:suppressed); a PENDING call to one is CANCELED (lastError \"suppressed\") when it comes due. Every change keeps who made it and when."),
        (name = "operations", description = "Metrics, their last hour, and this document."),
    )
)]
pub struct ApiDoc;

/// Adds what every route shares, so the handlers' annotations list only their own answers:
/// the bearer scheme, 401 on every route behind it, and 500/503 wherever the database is
/// read.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The API_TOKEN, required when the deployment sets one.",
                    ))
                    .build(),
            ),
        );
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    ebra_shared::problem::CONTENT_TYPE,
                    Content::new(Some(RefOr::Ref(Ref::from_schema_name("Problem")))),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == PATH {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses.insert(
                    "401".to_owned(),
                    RefOr::T(problem(
                        "Missing or wrong bearer token (when API_TOKEN is set).",
                    )),
                );
                responses.insert(
                    "500".to_owned(),
                    RefOr::T(problem("An error on our side; logged, never detailed.")),
                );
                responses.insert(
                    "503".to_owned(),
                    RefOr::T(problem("The database is unavailable; retry.")),
                );
            }
        }
    }
}

/// The document, rendered once per process.
static DOCUMENT: LazyLock<Result<String, String>> =
    LazyLock::new(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string()));

/// This OpenAPI document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "getOpenApi",
    security(()),
    responses((status = 200, description = "This OpenAPI 3.1 document.", body = Object)),
)]
pub async fn openapi_json() -> Response {
    match &*DOCUMENT {
        Ok(json) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json.clone(),
        )
            .into_response(),
        Err(error) => {
            crate::error::ApiError::Internal(format!("rendering the OpenAPI document: {error}"))
                .into_response()
        }
    }
}
