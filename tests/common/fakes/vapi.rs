//! Vapi's API as its SDK (`vapi-server-sdk` 3.0.0, `vapi/calls/raw_client.py`,
//! `vapi/types/call.py`, `server_message_end_of_call_report.py`,
//! `server_message_status_update.py`) and its docs (`VapiAI/docs` at `eabfa53`:
//! `fern/apis/api/openapi.json`, `fern/calls/call-concurrency.mdx`,
//! `fern/server-url/events.mdx`, `fern/server-url/server-authentication.mdx`) describe it:
//!
//! - `POST /call` (`Authorization: Bearer <private key>`) → `201` with the `Call`
//!   (`subscriptionLimits` beside its fields). Vapi takes **no** idempotency key: every
//!   dial places a new call, a repeated one too.
//! - `GET /call/{id}` → the `Call`, or 404; `GET /call?…` → a JSON array of `Call`s,
//!   filtered by the SDK's only filters (`id`, `assistantId`, `phoneNumberId`, `limit`
//!   (default 100, at most 1000), `createdAt{Gt,Lt,Ge,Le}`, `updatedAt{Gt,Lt,Ge,Le}`): no
//!   customer number, no metadata. Any other parameter is refused as Vapi's validation
//!   refuses unknown properties. Newest first (the order is not documented).
//! - Server messages `{"message": {"type": "end-of-call-report" | "status-update", ...}}`,
//!   authenticated by the credential Ebra is told to configure: the HMAC credential
//!   (`x-signature` = hex HMAC-SHA256 of `"{x-timestamp}.{body}"`, Vapi's defaults) for the
//!   genuine deliveries here, the bearer credential and the legacy `X-Vapi-Secret` through
//!   [`bearer`] and [`legacy_secret`].

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt as _;
use hmac::Mac as _;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    seen, Book, Contract, Delivery, DialPlan, ExpectedDial, Fake, Placement, Seen, Settles,
};
use ebra_shared::domain::{CallStatus, DialOutcome};
use ebra_shared::provider::ProviderKind;

/// A Vapi private API key (Vapi's keys are UUIDs).
pub const API_KEY: &str = "5d3f8a2c-91b7-4e60-a4d2-7c1e9b08f346";
pub const PHONE_NUMBER_ID: &str = "8e2b7c41-3a9d-4f15-b6e0-2d94c7a1f583";
pub const ORG_ID: &str = "b0c4e9d2-67a1-4f3b-8e5c-19d7a2f06b4e";
/// The number `PHONE_NUMBER_ID` calls from.
pub const FROM_NUMBER: &str = "+14155550122";
/// `VAPI_WEBHOOK_SECRET`: the server credential's token or HMAC key.
pub const WEBHOOK_SECRET: &str = "vapi-server-secret-7c2e9b41d05f";
/// The concurrency-limit end reason.
pub const LIMITED: &str = "call.start.error-subscription-concurrency-limit-reached";

/// Vapi as documented: an account over its concurrency limit gets a 400 naming the limit.
pub struct Vapi;

/// Vapi whose concurrency-limit answer is a `201` with the call created but already ended
/// with `call.start.error-subscription-concurrency-limit-reached` and
/// `subscriptionLimits.concurrencyBlocked: true` ("the call could not start because all
/// slots were full", `call-concurrency.mdx`). Everything else is [`Vapi`].
pub struct VapiBlockedCreate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LimitAnswer {
    Refused,
    CreatedBlocked,
}

type Shared = Arc<Mutex<Book>>;

#[derive(Clone)]
struct FakeState {
    book: Shared,
    limit: LimitAnswer,
}

fn book(shared: &Shared) -> std::sync::MutexGuard<'_, Book> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn authorized(seen: &Seen) -> bool {
    seen.header("authorization") == Some(&format!("Bearer {API_KEY}"))
}

/// Vapi's answer to a request without the private key.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "message": "Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa.",
            "error": "Unauthorized",
            "statusCode": 401,
        })),
    )
        .into_response()
}

/// Vapi's validation refusal (NestJS's `ValidationPipe` shape: a list of messages).
fn bad_request(messages: Vec<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"message": messages, "error": "Bad Request", "statusCode": 400})),
    )
        .into_response()
}

/// A time as Vapi writes them: ISO 8601, milliseconds, `Z`.
pub fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn at_millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&iso(at))
        .map(|at| at.with_timezone(&Utc))
        .unwrap_or(at)
}

/// When a placed call started and ended (it ends 42.4 s after it started).
fn times(placement: &Placement) -> (DateTime<Utc>, DateTime<Utc>) {
    let started = placement.placed_at + chrono::Duration::milliseconds(1_200);
    (started, started + chrono::Duration::milliseconds(42_400))
}

/// The call's `assistantOverrides` as Vapi echoes them. A placement the scenarios make
/// themselves carries Ebra's key as `{"metadata": {...}}`, provider-neutrally: it is echoed
/// as the overrides' metadata, where Ebra puts it.
fn overrides(placement: &Placement) -> Value {
    match (
        &placement.dial["assistantOverrides"],
        &placement.dial["metadata"],
    ) {
        (Value::Object(overrides), _) => Value::Object(overrides.clone()),
        (_, Value::Object(metadata)) => json!({"metadata": metadata}),
        _ => json!({}),
    }
}

/// How much of the call a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// As `POST /call` answers it: `queued`.
    Created,
    /// As `GET /call` shows it now: `in-progress`, or `ended` with its reason and times.
    Current,
    /// As a server message carries it: the call as it was when it started (the message's
    /// own fields say how it ended).
    Snapshot,
}

/// A Vapi `Call` (`vapi/types/call.py`).
fn call_object(placement: &Placement, view: View) -> Value {
    let created = iso(placement.placed_at);
    let (started, ended) = times(placement);
    let customer = match &placement.dial["customer"] {
        Value::Object(customer) => Value::Object(customer.clone()),
        _ => json!({"number": placement.to}),
    };
    let mut call = json!({
        "id": placement.provider_call_id,
        "orgId": ORG_ID,
        "type": "outboundPhoneCall",
        "createdAt": created,
        "updatedAt": created,
        "status": "queued",
        "phoneCallProvider": "twilio",
        "phoneCallTransport": "pstn",
        "assistantId": placement.dial.get("assistantId").cloned().unwrap_or(json!("agent_renewals_v2")),
        "phoneNumberId": placement.dial.get("phoneNumberId").cloned().unwrap_or(json!(PHONE_NUMBER_ID)),
        "customer": customer,
        "assistantOverrides": overrides(placement),
        "cost": 0,
        "monitor": {
            "listenUrl": format!("wss://phone-call-websocket.aws-us-west-2-backend-production1.vapi.ai/{}/listen", placement.provider_call_id),
            "controlUrl": format!("https://phone-call-websocket.aws-us-west-2-backend-production1.vapi.ai/{}/control", placement.provider_call_id),
        },
        "transport": {"conversationType": "voice", "provider": "twilio"},
    });
    match (view, &placement.ended) {
        (View::Created, _) => {}
        (View::Current, Some(reason)) => {
            call["status"] = json!("ended");
            call["endedReason"] = json!(reason);
            call["startedAt"] = json!(iso(started));
            call["endedAt"] = json!(iso(ended));
            call["updatedAt"] = json!(iso(ended));
            call["cost"] = json!(0.0712);
            call["artifact"] = artifact(placement);
            call["analysis"] = analysis();
        }
        (View::Current, None) | (View::Snapshot, _) => {
            call["status"] = json!("in-progress");
            call["startedAt"] = json!(iso(started));
            call["updatedAt"] = json!(iso(started));
        }
    }
    call
}

/// `subscriptionLimits`, beside the call's fields in `POST /call`'s answer
/// (`call-concurrency.mdx`).
fn subscription_limits(blocked: bool) -> Value {
    json!({
        "concurrencyBlocked": blocked,
        "concurrencyLimit": 10,
        "remainingConcurrentCalls": if blocked { 0 } else { 9 },
    })
}

fn created(placement: &Placement, blocked: bool) -> Response {
    let mut call = call_object(
        placement,
        if blocked {
            View::Current
        } else {
            View::Created
        },
    );
    call["subscriptionLimits"] = subscription_limits(blocked);
    (StatusCode::CREATED, Json(call)).into_response()
}

/// `CreateCallDTO`'s properties (`calls/raw_client.py::create`).
const CREATE_CALL_FIELDS: [&str; 19] = [
    "assistantVersion",
    "squadVersion",
    "transport",
    "customers",
    "name",
    "schedulePlan",
    "assistantId",
    "assistant",
    "assistantOverrides",
    "squadId",
    "squad",
    "squadOverrides",
    "workflowId",
    "workflow",
    "workflowOverrides",
    "phoneNumberId",
    "phoneNumber",
    "customerId",
    "customer",
];

/// What Vapi's validation refuses in a create body (the part of it that matters here).
fn invalid_create(body: &Value) -> Vec<String> {
    let Some(fields) = body.as_object() else {
        return vec!["the body must be a JSON object".to_owned()];
    };
    let mut problems: Vec<String> = fields
        .keys()
        .filter(|field| !CREATE_CALL_FIELDS.contains(&field.as_str()))
        .map(|field| format!("property {field} should not exist"))
        .collect();
    let e164 = body["customer"]["number"].as_str().is_some_and(|number| {
        number.len() >= 9
            && number.len() <= 16
            && number.starts_with('+')
            && number[1..].bytes().all(|b| b.is_ascii_digit())
    });
    if !e164 {
        problems.push("customer.number must be a valid phone number in the E.164 format".into());
    }
    if !body["assistantId"].is_string() {
        problems.push("assistantId must be a string".into());
    }
    if body["phoneNumberId"] != PHONE_NUMBER_ID {
        problems
            .push("Couldn't Get Phone Number. phoneNumberId is not a number of this org.".into());
    }
    problems
}

async fn create_call(State(state): State<FakeState>, request: Request<Body>) -> Response {
    let seen = seen(request).await;
    let body = seen.json();
    let plan = {
        let mut book = book(&state.book);
        book.dials.push(seen.clone());
        book.next_plan()
    };
    if !authorized(&seen) {
        return unauthorized();
    }
    let problems = invalid_create(&body);
    if !problems.is_empty() {
        return bad_request(problems);
    }
    let to = body["customer"]["number"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = body
        .pointer("/assistantOverrides/metadata/ebra_attempt_key")
        .and_then(Value::as_str)
        .and_then(|k| Uuid::parse_str(k).ok());
    // No idempotency: every dial that gets this far places a new call.
    let placed = |ended: Option<&str>| -> Placement {
        let mut book = book(&state.book);
        let placement = place(&mut book, &to, key, body.clone());
        match ended {
            Some(reason) => {
                let last = book.placements.len() - 1;
                book.placements[last].ended = Some(reason.to_owned());
                book.placements[last].clone()
            }
            None => placement,
        }
    };
    match plan {
        DialPlan::Accept => created(&placed(None), false),
        DialPlan::PlaceThenStall(pause) => {
            let placement = placed(None);
            tokio::time::sleep(pause).await;
            created(&placement, false)
        }
        DialPlan::StallWithoutPlacing(pause) => {
            tokio::time::sleep(pause).await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        DialPlan::ConcurrencyLimit => match state.limit {
            // Vapi documents no 429 for `POST /call`; its 400 is "Client/policy failure
            // (limits, validation, missing resources)" (openapi.json). The wording of the
            // limit's refusal is not documented: "Over Concurrency Limit" is the one a Vapi
            // docs draft (VapiAI/docs#110, not merged) and Vapi's support answers give.
            LimitAnswer::Refused => (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "message": "Over Concurrency Limit",
                    "error": "Bad Request",
                    "statusCode": 400,
                })),
            )
                .into_response(),
            LimitAnswer::CreatedBlocked => created(&placed(Some(LIMITED)), true),
        },
        // Vapi rate-limits its API per organisation (the number is not published); the
        // body is NestJS's throttler's.
        DialPlan::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({
                "message": "ThrottlerException: Too Many Requests",
                "statusCode": 429,
            })),
        )
            .into_response(),
        // "System failure (database, queue, or internal infra)".
        DialPlan::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"message": "Internal server error", "statusCode": 500})),
        )
            .into_response(),
        DialPlan::Permanent => bad_request(vec![
            "customer.number must be a valid phone number in the E.164 format. Hot tip, you may be missing the country code (Eg. US: +1).".into(),
        ]),
    }
}

/// Places a call as Vapi names them (a UUID) and returns it.
fn place(book: &mut Book, to: &str, key: Option<Uuid>, dial: Value) -> Placement {
    let placement = Placement {
        provider_call_id: Uuid::new_v4().to_string(),
        to: to.to_owned(),
        attempt_key: key,
        dial,
        placed_at: Utc::now(),
        ended: None,
        ended_at: None,
    };
    book.placements.push(placement.clone());
    placement
}

/// Calls placed by someone else from Ebra's number and agent (other workers), `n` of them,
/// a millisecond apart from now on: they fill `GET /call`'s pages.
pub fn place_other_calls(fake: &Fake, n: usize) {
    let mut book = fake.book();
    let base = Utc::now();
    for i in 0..n {
        let to = format!("+1650555{:04}", i % 10_000);
        place(
            &mut book,
            &to,
            None,
            json!({
                "assistantId": "agent_renewals_v2",
                "phoneNumberId": PHONE_NUMBER_ID,
                "customer": {"number": to},
            }),
        );
        let last = book.placements.len() - 1;
        book.placements[last].placed_at = base + chrono::Duration::milliseconds(1 + i as i64);
    }
}

async fn get_call(
    State(state): State<FakeState>,
    Path(call_id): Path<String>,
    request: Request<Body>,
) -> Response {
    let seen = seen(request).await;
    let mut book = book(&state.book);
    book.lookups.push(seen.clone());
    if book.lookups_fail {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !authorized(&seen) {
        return unauthorized();
    }
    match book.placement(&call_id) {
        Some(placement) => Json(call_object(placement, View::Current)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Call not found", "error": "Not Found", "statusCode": 404})),
        )
            .into_response(),
    }
}

/// One date filter of `GET /call`: `createdAtGe=...` and the like.
struct DateFilter {
    updated: bool,
    op: &'static str,
    at: DateTime<Utc>,
}

impl DateFilter {
    fn keeps(&self, created: DateTime<Utc>, updated: DateTime<Utc>) -> bool {
        let value = if self.updated { updated } else { created };
        match self.op {
            "Gt" => value > self.at,
            "Lt" => value < self.at,
            "Ge" => value >= self.at,
            _ => value <= self.at,
        }
    }
}

async fn list_calls(State(state): State<FakeState>, request: Request<Body>) -> Response {
    let seen = seen(request).await;
    let mut book = book(&state.book);
    book.lookups.push(seen.clone());
    if book.lookups_fail {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !authorized(&seen) {
        return unauthorized();
    }
    let url = match reqwest::Url::parse(&format!("http://vapi.test{}", seen.uri)) {
        Ok(url) => url,
        Err(error) => return bad_request(vec![error.to_string()]),
    };
    let mut problems = Vec::new();
    let mut equal: Vec<(String, String)> = Vec::new();
    let mut dates: Vec<DateFilter> = Vec::new();
    let mut limit = 100usize;
    for (name, value) in url.query_pairs() {
        let (name, value) = (name.into_owned(), value.into_owned());
        match name.as_str() {
            "id" | "assistantId" | "phoneNumberId" => equal.push((name, value)),
            "limit" => match value.parse::<f64>() {
                Ok(n) if (0.0..=1000.0).contains(&n) => limit = n as usize,
                _ => problems.push("limit must not be greater than 1000".to_owned()),
            },
            _ => {
                let parsed = ["createdAt", "updatedAt"].iter().find_map(|field| {
                    let op = name.strip_prefix(field)?;
                    let op = ["Gt", "Lt", "Ge", "Le"].into_iter().find(|o| *o == op)?;
                    Some((*field == "updatedAt", op))
                });
                match parsed {
                    Some((updated, op)) => match DateTime::parse_from_rfc3339(&value) {
                        Ok(at) => dates.push(DateFilter {
                            updated,
                            op,
                            at: at.with_timezone(&Utc),
                        }),
                        Err(_) => {
                            problems.push(format!("{name} must be a valid ISO 8601 date string"))
                        }
                    },
                    None => problems.push(format!("property {name} should not exist")),
                }
            }
        }
    }
    if !problems.is_empty() {
        return bad_request(problems);
    }
    let mut calls: Vec<(DateTime<Utc>, usize, Value)> = book
        .placements
        .iter()
        .enumerate()
        .map(|(n, placement)| (n, placement, call_object(placement, View::Current)))
        .filter(|(_, _, call)| {
            equal
                .iter()
                .all(|(name, value)| call[name.as_str()].as_str() == Some(value.as_str()))
        })
        .filter(|(_, placement, call)| {
            let created = at_millis(placement.placed_at);
            let updated = call["updatedAt"]
                .as_str()
                .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
                .map_or(created, |at| at.with_timezone(&Utc));
            dates.iter().all(|filter| filter.keeps(created, updated))
        })
        .map(|(n, placement, call)| (at_millis(placement.placed_at), n, call))
        .collect();
    // Newest first; calls of the same millisecond, the latest placed first.
    calls.sort_by_key(|(at, n, _)| std::cmp::Reverse((*at, *n)));
    let calls: Vec<Value> = calls
        .into_iter()
        .take(limit)
        .map(|(_, _, call)| call)
        .collect();
    Json(Value::Array(calls)).into_response()
}

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"` with `secret`: Vapi's HMAC credential with its
/// defaults (`algorithm: sha256`, `payloadFormat: "{timestamp}.{body}"`, hex).
pub fn hmac_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn delivery(body: Vec<u8>, headers: Vec<(&str, String)>) -> Delivery {
    let mut all = vec![("content-type".to_owned(), "application/json".to_owned())];
    all.extend(headers.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Delivery {
        path_and_query: "/callbacks/vapi".to_owned(),
        headers: all,
        body,
    }
}

/// `body` signed with the HMAC credential at `timestamp` (Vapi does not document the
/// timestamp's unit; milliseconds, as `Date.now()`, unless told otherwise).
pub fn hmac_at(body: Vec<u8>, secret: &str, timestamp: &str) -> Delivery {
    let signature = hmac_signature(secret, timestamp, &body);
    delivery(
        body,
        vec![
            ("x-timestamp", timestamp.to_owned()),
            ("x-signature", signature),
        ],
    )
}

/// `body` signed with the HMAC credential now.
pub fn signed(body: Vec<u8>, secret: &str) -> Delivery {
    let now = Utc::now().timestamp_millis().to_string();
    hmac_at(body, secret, &now)
}

/// `body` with the bearer credential (`Authorization: Bearer <token>`).
pub fn bearer(body: Vec<u8>, token: &str) -> Delivery {
    delivery(body, vec![("authorization", format!("Bearer {token}"))])
}

/// `body` with the legacy inline secret (`X-Vapi-Secret: <token>`).
pub fn legacy_secret(body: Vec<u8>, token: &str) -> Delivery {
    delivery(body, vec![("x-vapi-secret", token.to_owned())])
}

/// An `end-of-call-report` for `placement`, ended with `reason` (the message's fields say
/// how it ended; its `call` is the snapshot).
pub fn report_body(placement: &Placement, reason: &str) -> Vec<u8> {
    let (started, ended) = times(placement);
    json!({"message": {
        "timestamp": Utc::now().timestamp_millis(),
        "type": "end-of-call-report",
        "endedReason": reason,
        "call": call_object(placement, View::Snapshot),
        "phoneNumber": {"id": PHONE_NUMBER_ID, "number": FROM_NUMBER, "provider": "twilio"},
        "customer": {"number": placement.to},
        "artifact": artifact(placement),
        "analysis": analysis(),
        "startedAt": iso(started),
        "endedAt": iso(ended),
        "cost": 0.0712,
        "durationMs": 42_400,
        "durationSeconds": 42.4,
        "durationMinutes": 0.7067,
    }})
    .to_string()
    .into_bytes()
}

const TRANSCRIPT: &str = "AI: Hi, this is Ebra calling about your renewal.\nUser: Thanks, bye.\n";
const SUMMARY: &str = "The customer confirmed the renewal.";

/// What an ended call's `artifact` holds (in an end-of-call report, and on the call).
fn artifact(placement: &Placement) -> Value {
    json!({
        "messages": [],
        "messagesOpenAIFormatted": [],
        "transcript": TRANSCRIPT,
        "recordingUrl": recording_url(placement),
    })
}

fn recording_url(placement: &Placement) -> String {
    format!(
        "https://storage.vapi.ai/{}-mono.wav",
        placement.provider_call_id
    )
}

fn analysis() -> Value {
    json!({
        "summary": SUMMARY,
        "structuredData": {"renewal_confirmed": true},
        "successEvaluation": "true",
    })
}

/// A `status-update` for `placement` with `status` (and `endedReason`, when given).
pub fn status_update_body(placement: &Placement, status: &str, reason: Option<&str>) -> Vec<u8> {
    let mut message = json!({
        "timestamp": Utc::now().timestamp_millis(),
        "type": "status-update",
        "status": status,
        "call": call_object(placement, View::Snapshot),
        "customer": {"number": placement.to},
    });
    if let Some(reason) = reason {
        message["endedReason"] = json!(reason);
    }
    json!({ "message": message }).to_string().into_bytes()
}

/// Every `endedReason` value of the SDK (`tests/fixtures/vapi_call_ended_reasons.txt`).
pub fn sdk_ended_reasons() -> Vec<&'static str> {
    include_str!("../../fixtures/vapi_call_ended_reasons.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The ~520 patterned provider failures, of which [`Contract::end_reasons`] lists a sample.
pub fn is_patterned(reason: &str) -> bool {
    reason.starts_with("pipeline-error-")
        || reason.starts_with("call.in-progress.error-vapifault-")
        || reason.starts_with("call.in-progress.error-providerfault-")
}

fn start(limit: LimitAnswer) -> BoxFuture<'static, Fake> {
    async move {
        let shared: Shared = Arc::default();
        let router = Router::new()
            .route("/call", post(create_call).get(list_calls))
            .route("/call/{id}", get(get_call))
            .with_state(FakeState {
                book: shared.clone(),
                limit,
            });
        Fake::serve(router, shared).await
    }
    .boxed()
}

impl Contract for Vapi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vapi
    }

    fn expected_result(&self, placement: &Placement) -> Value {
        json!({
            "summary": SUMMARY,
            "transcript": TRANSCRIPT.trim(),
            "recordingUrl": recording_url(placement),
            "analysis": analysis(),
        })
    }

    fn start(&self) -> BoxFuture<'static, Fake> {
        start(LimitAnswer::Refused)
    }

    fn settings(&self, fake: &Fake) -> Vec<(String, String)> {
        [
            ("PROVIDER", "vapi"),
            ("VAPI_API_KEY", API_KEY),
            ("VAPI_PHONE_NUMBER_ID", PHONE_NUMBER_ID),
            ("VAPI_BASE_URL", fake.base_url.as_str()),
            ("VAPI_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn deduplicates_by_key(&self) -> bool {
        false
    }

    fn check_dial(&self, seen: &Seen, expected: &ExpectedDial<'_>) {
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri.path(), "/call");
        assert_eq!(seen.uri.query(), None);
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {API_KEY}").as_str())
        );
        assert_eq!(seen.header("content-type"), Some("application/json"));
        let body = seen.json();
        assert_eq!(
            body["assistantId"], expected.script_id,
            "scriptId names the assistant"
        );
        assert_eq!(body["phoneNumberId"], PHONE_NUMBER_ID);
        assert_eq!(
            body["customer"],
            json!({"number": expected.to}),
            "the customer is the number, nothing else"
        );
        let overrides = body["assistantOverrides"]
            .as_object()
            .expect("assistantOverrides is an object");
        let mut fields: Vec<&str> = overrides.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["metadata", "variableValues"]);
        let metadata = overrides["metadata"]
            .as_object()
            .expect("assistantOverrides.metadata is an object");
        assert_eq!(metadata["ebra_attempt_key"], expected.key.to_string());
        assert_eq!(metadata["ebra_call_id"], expected.call_id.to_string());
        let client = expected.metadata.as_object().expect("client metadata");
        for (name, value) in client {
            assert_eq!(
                &metadata[name], value,
                "client metadata travels in the overrides' metadata"
            );
        }
        assert_eq!(metadata.len(), client.len() + 2, "{metadata:?}");
        assert_eq!(
            &overrides["variableValues"], expected.metadata,
            "client metadata is the assistant's variables ({{{{name}}}}), as it is"
        );
        let mut top: Vec<&str> = body
            .as_object()
            .expect("a JSON object")
            .keys()
            .map(String::as_str)
            .collect();
        top.sort_unstable();
        assert_eq!(
            top,
            [
                "assistantId",
                "assistantOverrides",
                "customer",
                "phoneNumberId"
            ],
            "no idempotency key: Vapi takes none (an unknown property is a 400)"
        );
    }

    fn end_of_call(&self, placement: &Placement, reason: &str, _base: &str) -> Delivery {
        signed(report_body(placement, reason), WEBHOOK_SECRET)
    }

    fn progress_event(&self, placement: &Placement, _base: &str) -> Delivery {
        signed(
            status_update_body(placement, "in-progress", None),
            WEBHOOK_SECRET,
        )
    }

    fn forgeries(&self, placement: &Placement, _base: &str) -> Vec<(&'static str, Delivery)> {
        let body = report_body(placement, "customer-ended-call");
        let now_ms = Utc::now().timestamp_millis();
        let now = now_ms.to_string();
        let genuine = hmac_signature(WEBHOOK_SECRET, &now, &body);
        let mut tampered = body.clone();
        let at = tampered.len() - 3;
        tampered[at] ^= 1;
        let with = |headers: Vec<(&str, String)>| delivery(body.clone(), headers);
        let body_only = {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes())
                .expect("any key length");
            mac.update(&body);
            hex::encode(mac.finalize().into_bytes())
        };
        vec![
            ("unsigned", with(vec![])),
            (
                "wrong bearer token",
                bearer(body.clone(), "vapi-server-secret-impostor"),
            ),
            (
                "empty bearer token",
                with(vec![("authorization", "Bearer ".into())]),
            ),
            (
                "the secret as Basic credentials",
                with(vec![("authorization", format!("Basic {WEBHOOK_SECRET}"))]),
            ),
            (
                "the secret's prefix as bearer",
                bearer(body.clone(), &WEBHOOK_SECRET[..WEBHOOK_SECRET.len() - 1]),
            ),
            (
                "wrong X-Vapi-Secret",
                legacy_secret(body.clone(), "vapi-server-secret-impostor"),
            ),
            (
                "HMAC with the wrong key",
                hmac_at(body.clone(), "vapi-server-secret-impostor", &now),
            ),
            (
                "tampered body",
                delivery(
                    tampered,
                    vec![
                        ("x-timestamp", now.clone()),
                        ("x-signature", genuine.clone()),
                    ],
                ),
            ),
            (
                "stale x-timestamp",
                hmac_at(
                    body.clone(),
                    WEBHOOK_SECRET,
                    &(now_ms - 6 * 60 * 1000).to_string(),
                ),
            ),
            (
                "x-timestamp ten minutes ahead",
                hmac_at(
                    body.clone(),
                    WEBHOOK_SECRET,
                    &(now_ms + 10 * 60 * 1000).to_string(),
                ),
            ),
            (
                "x-signature without x-timestamp",
                with(vec![("x-signature", genuine.clone())]),
            ),
            (
                "empty x-signature",
                with(vec![
                    ("x-timestamp", now.clone()),
                    ("x-signature", String::new()),
                ]),
            ),
            (
                "x-signature over the body alone",
                with(vec![
                    ("x-timestamp", now.clone()),
                    ("x-signature", body_only),
                ]),
            ),
            (
                "x-timestamp replaced after signing",
                with(vec![
                    ("x-timestamp", (now_ms + 1000).to_string()),
                    ("x-signature", genuine.clone()),
                ]),
            ),
        ]
    }

    fn end_reasons(&self) -> Vec<(&'static str, Settles)> {
        use CallStatus::*;
        let completed = Settles::as_(Completed, DialOutcome::Completed);
        let failed = Settles::as_(Failed, DialOutcome::Failed);
        let no_answer = Settles::as_(Pending, DialOutcome::NoAnswer);
        let canceled = Settles::as_(Canceled, DialOutcome::Canceled);
        vec![
            // The conversation happened.
            ("customer-ended-call", completed),
            ("assistant-ended-call", completed),
            ("assistant-said-end-call-phrase", completed),
            ("assistant-ended-call-with-hangup-task", completed),
            ("assistant-ended-call-after-message-spoken", completed),
            ("assistant-forwarded-call", completed),
            ("customer-ended-call-before-warm-transfer", completed),
            ("customer-ended-call-after-warm-transfer-attempt", completed),
            ("customer-ended-call-during-transfer", completed),
            ("exceeded-max-duration", completed),
            ("silence-timed-out", completed),
            ("call.in-progress.twilio-completed-call", completed),
            ("call.in-progress.sip-completed-call", completed),
            ("vonage-completed", completed),
            // The transfer's destination was busy or unanswered: the customer was reached.
            ("call.forwarding.operator-busy", completed),
            ("call.forwarding.no-answer", completed),
            // Configured hooks that end the call.
            ("call.ringing.hook-executed-say", completed),
            ("call.ringing.hook-executed-transfer", completed),
            ("call.ending.hook-executed-say", completed),
            ("call.ending.hook-executed-transfer", completed),
            ("voicemail", Settles::as_(Completed, DialOutcome::Voicemail)),
            ("customer-busy", Settles::as_(Pending, DialOutcome::Busy)),
            ("customer-did-not-answer", no_answer),
            // "Phone rang but no answer: ... SIP 408/480" (call-ended-reason.mdx).
            (
                "call.in-progress.error-providerfault-outbound-sip-408-request-timeout",
                no_answer,
            ),
            (
                "call.in-progress.error-providerfault-outbound-sip-480-temporarily-unavailable",
                no_answer,
            ),
            ("manually-canceled", canceled),
            ("scheduled-call-deleted", canceled),
            ("call-deleted", canceled),
            (LIMITED, Settles::as_(Pending, DialOutcome::Limited)),
            // Nothing placed: account, number or configuration.
            ("call.start.error-vapifault-get-org", failed),
            ("call.start.error-vapifault-get-subscription", failed),
            ("call.start.error-get-assistant", failed),
            ("call.start.error-get-phone-number", failed),
            ("call.start.error-get-customer", failed),
            ("call.start.error-get-resources-validation", failed),
            ("call.start.error-vapi-number-international", failed),
            ("call.start.error-vapi-number-outbound-daily-limit", failed),
            ("call.start.error-get-transport", failed),
            ("call.start.error-subscription-wallet-does-not-exist", failed),
            ("call.start.error-fraud-check-failed", failed),
            ("call.start.error-subscription-frozen", failed),
            ("call.start.error-subscription-insufficient-credits", failed),
            ("call.start.error-subscription-upgrade-failed", failed),
            (
                "call.start.error-enterprise-feature-not-available-recording-consent",
                failed,
            ),
            ("call.start.assistant-version-error-validation", failed),
            ("call.start.squad-version-error-validation", failed),
            ("call.start.error-vapifault-database-error", failed),
            ("call.start.error-vapifault-worker-not-available", failed),
            ("call-start-error-neither-assistant-nor-server-set", failed),
            ("assistant-request-failed", failed),
            ("assistant-request-returned-error", failed),
            ("assistant-request-returned-unspeakable-error", failed),
            ("assistant-request-returned-invalid-assistant", failed),
            ("assistant-request-returned-no-assistant", failed),
            ("assistant-request-returned-forwarding-phone-number", failed),
            ("assistant-not-valid", failed),
            ("assistant-not-found", failed),
            // The telephony failed to connect, or dropped the call.
            ("twilio-failed-to-connect-call", failed),
            ("twilio-reported-customer-misdialed", failed),
            ("vonage-failed-to-connect-call", failed),
            ("vonage-rejected", failed),
            ("vonage-disconnected", failed),
            ("sip-outbound-unallocated-number", failed),
            ("sip-outbound-carrier-released-call", failed),
            ("call.in-progress.error-sip-outbound-call-failed-to-connect", failed),
            ("call.in-progress.error-sip-inbound-call-failed-to-connect", failed),
            ("call.ringing.error-sip-inbound-call-failed-to-connect", failed),
            ("call.ringing.sip-inbound-caller-hungup-before-call-connect", failed),
            ("phone-call-provider-closed-websocket", failed),
            ("phone-call-provider-bypass-enabled-but-no-call-received", failed),
            // The call broke down.
            ("worker-shutdown", failed),
            ("assistant-join-timed-out", failed),
            ("customer-did-not-give-microphone-permission", failed),
            (
                "call.in-progress.error-assistant-did-not-receive-customer-audio",
                failed,
            ),
            ("call.in-progress.error-pipeline-no-available-llm-model", failed),
            ("call.in-progress.error-pipeline-ws-model-connection-failed", failed),
            (
                "call.in-progress.error-configfault-model-unsupported-in-squad",
                failed,
            ),
            (
                "call.in-progress.error-configfault-transport-unsupported-for-model",
                failed,
            ),
            ("call.in-progress.error-transfer-failed", failed),
            ("call.in-progress.error-warm-transfer-max-duration", failed),
            ("call.in-progress.error-warm-transfer-assistant-cancelled", failed),
            ("call.in-progress.error-warm-transfer-silence-timeout", failed),
            ("call.in-progress.error-warm-transfer-microphone-timeout", failed),
            // A sample of the patterned failures: SIP refusals that are not "no answer",
            // the transport and Vapi's workers, and the providers' (one of each family).
            (
                "call.in-progress.error-providerfault-outbound-sip-403-forbidden",
                failed,
            ),
            (
                "call.in-progress.error-providerfault-outbound-sip-407-proxy-authentication-required",
                failed,
            ),
            (
                "call.in-progress.error-providerfault-outbound-sip-503-service-unavailable",
                failed,
            ),
            ("call.in-progress.error-providerfault-transport-never-connected", failed),
            ("call.in-progress.error-vapifault-transport-never-connected", failed),
            (
                "call.in-progress.error-vapifault-transport-connected-but-call-not-active",
                failed,
            ),
            (
                "call.in-progress.error-vapifault-call-started-but-connection-to-transport-missing",
                failed,
            ),
            ("call.in-progress.error-vapifault-worker-not-available", failed),
            ("call.in-progress.error-vapifault-worker-died", failed),
            ("call.in-progress.error-vapifault-chat-pipeline-failed-to-start", failed),
            ("pipeline-error-openai-voice-failed", failed),
            ("pipeline-error-eleven-labs-voice-failed", failed),
            (
                "pipeline-error-eleven-labs-blocked-concurrent-requests-and-requested-upgrade",
                failed,
            ),
            (
                "call.in-progress.error-providerfault-eleven-labs-blocked-concurrent-requests-and-requested-upgrade",
                failed,
            ),
            ("pipeline-error-openai-429-rate-limit-reached", failed),
            ("call.in-progress.error-vapifault-openai-429-rate-limit-reached", failed),
            ("pipeline-error-soniox-transcriber-rate-limited", failed),
            ("pipeline-error-microsoft-voice-request-canceled", failed),
        ]
    }

    fn limited_end_reason(&self) -> Option<&'static str> {
        Some(LIMITED)
    }
}

impl Contract for VapiBlockedCreate {
    fn kind(&self) -> ProviderKind {
        Vapi.kind()
    }

    fn start(&self) -> BoxFuture<'static, Fake> {
        start(LimitAnswer::CreatedBlocked)
    }

    fn settings(&self, fake: &Fake) -> Vec<(String, String)> {
        Vapi.settings(fake)
    }

    fn deduplicates_by_key(&self) -> bool {
        Vapi.deduplicates_by_key()
    }

    fn check_dial(&self, seen: &Seen, expected: &ExpectedDial<'_>) {
        Vapi.check_dial(seen, expected)
    }

    fn expected_result(&self, placement: &Placement) -> Value {
        Vapi.expected_result(placement)
    }

    fn end_of_call(&self, placement: &Placement, reason: &str, base: &str) -> Delivery {
        Vapi.end_of_call(placement, reason, base)
    }

    fn progress_event(&self, placement: &Placement, base: &str) -> Delivery {
        Vapi.progress_event(placement, base)
    }

    fn forgeries(&self, placement: &Placement, base: &str) -> Vec<(&'static str, Delivery)> {
        Vapi.forgeries(placement, base)
    }

    fn end_reasons(&self) -> Vec<(&'static str, Settles)> {
        Vapi.end_reasons()
    }

    fn limited_end_reason(&self) -> Option<&'static str> {
        Vapi.limited_end_reason()
    }
}
