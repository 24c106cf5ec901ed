//! Ebra's HTTP API: the Lambda behind API Gateway through which clients enqueue, inspect,
//! change and cancel calls, read metrics and fetch the OpenAPI document.
//!
//! One axum [`Router`] serves both Lambda (`lambda_http::run(router(state))`, see `main.rs`)
//! and the local listener of `ebra dev`, which merges [`routes`] with the webhook's routes.
//!
//! - [`calls`]: the `/calls` handlers; [`requests`]: their bodies and validation.
//! - [`campaigns`]: the `/campaigns` handlers; [`bulk`]: the CSV and JSON rows of a bulk add.
//! - [`webhooks`]: `GET /calls/{id}/webhooks`, the provider's reports for a call.
//! - [`endpoints`]: `/webhook-endpoints`, where clients register to receive events;
//!   [`events`]: `GET /calls/{id}/events` and `POST /events/{id}/redeliver`.
//! - [`suppressions`]: `/suppressions`, the do-not-call list (issue 14).
//! - [`metrics`]: `GET /metrics`, JSON or Prometheus; [`history`]: `GET /metrics/history`.
//! - [`console`]: the operator console at `/console`, static files embedded at build time.
//! - [`openapi`]: `GET /openapi.json`.
//! - [`auth`]: the optional bearer token.
//! - [`error`]: the one error type, mapped to RFC 9457 problems; [`extract`]: axum's
//!   extractors with their rejections mapped to it.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::{middleware, Router};
use ebra_shared::clock::Clock;
use ebra_shared::events::destination::DestinationPolicy;
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::queue::CallsQueue;
use ebra_shared::store::Pool;
use ebra_shared::Config;

pub mod auth;
pub mod bulk;
pub mod calls;
pub mod campaigns;
pub mod console;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod extract;
pub mod history;
pub mod metrics;
pub mod openapi;
pub mod requests;
pub mod suppressions;
pub mod webhooks;

pub use error::ApiError;

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers need, built once per process (outside the Lambda handler).
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    /// The calls queue. `None` only where nothing should be sent (a misconfiguration the
    /// Lambda's `main` refuses at start); creates then rely on the outbox sweep.
    pub queue: Option<CallsQueue>,
    pub config: Arc<Config>,
    /// Which URLs may receive events (`ALLOW_PRIVATE_WEBHOOK_URLS`), and the resolver it
    /// asks.
    pub destinations: DestinationPolicy,
    /// Wakes the notifier after a change that wrote events (`EVENTS_QUEUE_URL`).
    pub events: EventsNudge,
    /// "Now" for the calling rules (the system clock; tests set their own).
    pub clock: Clock,
}

impl AppState {
    pub fn new(pool: Pool, queue: Option<CallsQueue>, config: Arc<Config>) -> Self {
        let events = queue
            .as_ref()
            .map(|queue| {
                EventsNudge::from_queue(queue.client(), config.events.queue_url.as_deref())
            })
            .unwrap_or_default();
        Self {
            pool,
            queue,
            destinations: DestinationPolicy::system(config.events.allow_private_urls),
            config,
            events,
            clock: Clock::system(),
        }
    }
}

/// The API's routes without a catch-all fallback, so they can be merged with other routers
/// (axum panics when merging two routers that both have one). Wrong methods on these routes
/// are answered here (405 problem); unknown paths are left to whoever adds the fallback.
pub fn routes(state: AppState) -> Router {
    let calls = Router::new()
        .route("/calls", post(calls::create_call).get(calls::list_calls))
        .route("/calls/{id}", get(calls::get_call).patch(calls::patch_call))
        .route("/calls/{id}/cancel", post(calls::cancel_call))
        .route("/calls/{id}/webhooks", get(webhooks::list_call_webhooks))
        .route(
            "/campaigns",
            post(campaigns::create_campaign).get(campaigns::list_campaigns),
        )
        .route("/campaigns/{id}", get(campaigns::get_campaign))
        .route("/campaigns/{id}/pause", post(campaigns::pause_campaign))
        .route("/campaigns/{id}/resume", post(campaigns::resume_campaign))
        .route("/campaigns/{id}/cancel", post(campaigns::cancel_campaign))
        .route("/campaigns/{id}/calls", post(campaigns::add_campaign_calls))
        .route("/calls/{id}/events", get(events::list_call_events))
        .route("/events/{id}/redeliver", post(events::redeliver_event))
        .route(
            "/webhook-endpoints",
            post(endpoints::create_endpoint).get(endpoints::list_endpoints),
        )
        .route(
            "/webhook-endpoints/{id}",
            get(endpoints::get_endpoint)
                .patch(endpoints::update_endpoint)
                .delete(endpoints::delete_endpoint),
        )
        .route(
            "/webhook-endpoints/{id}/rotate-secret",
            post(endpoints::rotate_secret),
        )
        .route(
            "/suppressions",
            post(suppressions::add_suppressions).get(suppressions::list_suppressions),
        )
        .route(
            "/suppressions/{phone}",
            get(suppressions::get_suppression)
                .put(suppressions::put_suppression)
                .delete(suppressions::delete_suppression),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/metrics/history", get(history::metrics_history));
    // `route_layer`: the token guards these routes only, not those merged in later (the
    // provider's webhook has its own signature check) nor unknown paths.
    let calls = match state.config.api_token.as_deref() {
        Some(token) => calls.route_layer(middleware::from_fn_with_state(
            Arc::new(auth::BearerToken::new(token)),
            auth::require_bearer,
        )),
        None => calls,
    };
    // The console's files are public: they hold no data, and the page asks for the token.
    calls
        .route(openapi::PATH, get(openapi::openapi_json))
        .merge(console::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// [`routes`] with a problem+json 404 for every other path: the Lambda's router.
pub fn router(state: AppState) -> Router {
    routes(state).fallback(not_found)
}

/// The 404 fallback, public so that a router merging [`routes`] with others can use it.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}
