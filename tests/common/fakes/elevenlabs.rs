//! ElevenLabs Agents' API as its SDK (`elevenlabs` 2.78.0) describes it:
//!
//! - `POST /v1/convai/twilio/outbound-call` for a Twilio-imported number, or
//!   `POST /v1/convai/sip-trunk/outbound-call` for a SIP-trunk number
//!   (`conversational_ai/{twilio,sip_trunk}/raw_client.py`): header `xi-api-key`, body
//!   `{agent_id, agent_phone_number_id, to_number, conversation_initiation_client_data}`,
//!   answer `200 {success, message, conversation_id, callSid | sip_call_id}`
//!   (`types/{twilio,sip_trunk}_outbound_call_response.py`). No idempotency key: every dial
//!   places a new conversation.
//! - `GET /v1/convai/conversations/{conversation_id}` (`GetConversationResponseModel`:
//!   `status` ∈ initiated, in-progress, processing, done, failed;
//!   `metadata.phone_call.call_result` ∈ answered, voicemail, busy, no_answer, failed; the
//!   dial's dynamic variables echoed with ElevenLabs' own `system__*` ones), 404 when unknown.
//! - `GET /v1/convai/conversations` (`conversations/raw_client.py::list`): `agent_id`,
//!   `call_start_after_unix` / `call_start_before_unix`, `dynamic_variable_filter` and
//!   repeated `dynamic_variable_params` (`name:op:value`, op ∈ eq, neq, gt, gte, lt, lte, in),
//!   `page_size` (≤ 100, default 30), `cursor`, `sort_direction` (newest first by default) →
//!   `{conversations: [ConversationSummaryResponseModel], next_cursor, has_more}`.
//! - Webhooks `{type, event_timestamp, data}` signed `ElevenLabs-Signature:
//!   t=<unix s>,v0=<hex HMAC-SHA256(secret, "{t}.{body}")>` (`webhooks_custom.py`):
//!   `post_call_transcription` (data = the conversation) and `call_initiation_failure`
//!   (`failure_reason` ∈ busy, no-answer, unknown; `metadata {type: twilio | sip, body}`; no
//!   dynamic variables) end a call; `post_call_audio` does not. ElevenLabs never retries a
//!   webhook, so the lookups are the backstop and answer as faithfully as the SDK allows.
//!
//! The webhook payloads come from ElevenLabs' post-call-webhooks page (PROVIDERS.md §3.2),
//! not from the SDK, which has no type for them.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures::future::BoxFuture;
use futures::FutureExt as _;
use hmac::Mac as _;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{
    seen, Book, Contract, Delivery, DialPlan, ExpectedDial, Fake, Placement, Seen, Settles,
};
use ebra_shared::domain::{CallStatus, DialOutcome};
use ebra_shared::provider::ProviderKind;

pub const API_KEY: &str = "sk_test_9c1e5b7a3d2f4e6a8b0c1d2e3f4a5b6c";
pub const PHONE_NUMBER_ID: &str = "phnum_01jz0a2b4c6d8e0f2g4h6j8k0m";
pub const AGENT_NUMBER: &str = "+14155550122";
pub const WEBHOOK_SECRET: &str = "wsec_5e2b8f0c7a9d4e1f3b6a8c0d2e4f6a8b";
const TERMINATION: &str = "Call ended by remote party";
const DURATION_SECS: i64 = 42;

/// Which telephony the agent's number is on (`ELEVENLABS_TELEPHONY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Twilio,
    SipTrunk,
}

impl Line {
    fn path(self) -> &'static str {
        match self {
            Line::Twilio => "/v1/convai/twilio/outbound-call",
            Line::SipTrunk => "/v1/convai/sip-trunk/outbound-call",
        }
    }
}

/// How the fake refuses a dial it does not place. ElevenLabs documents neither its
/// concurrency-limit answer nor its refusals of a number (PROVIDERS.md §3.1, §9): the
/// endpoint's spec lists only 200 and 422, and answers `success: false` on a 200 exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusals {
    /// As HTTP errors: 429 `concurrent_limit_exceeded` for the concurrency limit, a 422
    /// validation error (which echoes the request) for a number refused.
    HttpErrors,
    /// As `200 {success: false, message}`, the message naming the limit or the number.
    SuccessFalse,
}

/// ElevenLabs with a Twilio-imported number, refusing with HTTP errors: what the provider
/// scenarios run against.
pub struct ElevenLabs;

/// ElevenLabs with another number's telephony, or its refusals in another shape.
pub struct ElevenLabsWith {
    pub line: Line,
    pub refusals: Refusals,
}

impl ElevenLabsWith {
    pub const TWILIO: ElevenLabsWith = ElevenLabsWith {
        line: Line::Twilio,
        refusals: Refusals::HttpErrors,
    };
    pub const SIP_TRUNK: ElevenLabsWith = ElevenLabsWith {
        line: Line::SipTrunk,
        refusals: Refusals::HttpErrors,
    };
    pub const SUCCESS_FALSE: ElevenLabsWith = ElevenLabsWith {
        line: Line::Twilio,
        refusals: Refusals::SuccessFalse,
    };
}

type Shared = Arc<Mutex<Book>>;

/// The account the fake serves: its book, and its one phone number's telephony.
#[derive(Clone)]
struct Account {
    book: Shared,
    line: Line,
    refusals: Refusals,
}

impl Account {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn authorized(seen: &Seen) -> bool {
    seen.header("xi-api-key") == Some(API_KEY)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}})),
    )
        .into_response()
}

/// How a placed conversation stands, read from the fake's own end-reason encoding
/// (`Placement::ended`): `call_result=<value>`, `status=<value>` (ended without a
/// call_result) or `call_initiation_failure=<failure_reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stand<'a> {
    Running,
    Result(&'a str),
    Status(&'a str),
    InitiationFailure(&'a str),
}

fn stand(placement: &Placement) -> Stand<'_> {
    let Some(reason) = placement.ended.as_deref() else {
        return Stand::Running;
    };
    if let Some(value) = reason.strip_prefix("call_result=") {
        Stand::Result(value)
    } else if let Some(value) = reason.strip_prefix("status=") {
        Stand::Status(value)
    } else if let Some(value) = reason.strip_prefix("call_initiation_failure=") {
        Stand::InitiationFailure(value)
    } else {
        panic!("not an end reason of the ElevenLabs fake: {reason:?}")
    }
}

/// The dynamic variables Ebra sent (the placement's dial), or only the attempt key for a
/// placement a scenario made by hand.
fn sent_variables(placement: &Placement) -> Map<String, Value> {
    let mut variables = placement
        .dial
        .pointer("/conversation_initiation_client_data/dynamic_variables")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(key) = placement.attempt_key {
        variables
            .entry("ebra_attempt_key")
            .or_insert_with(|| json!(key.to_string()));
    }
    variables
}

/// The Twilio CallSid or SIP call id of a conversation (stable per conversation).
fn telephony_call_id(placement: &Placement, line: Line) -> String {
    let digest = placement
        .provider_call_id
        .trim_start_matches("conv_")
        .to_owned();
    match line {
        Line::Twilio => format!("CA{digest}"),
        Line::SipTrunk => format!("SCL_{}", &digest[..12.min(digest.len())]),
    }
}

/// The conversation as `GET /v1/convai/conversations/{id}` returns it and a
/// `post_call_transcription` carries it.
///
/// A running conversation is `in-progress` and already carries `call_result: answered`:
/// ElevenLabs does not document when `call_result` is set, so the fake takes the case in
/// which trusting it early would end a live call.
fn conversation(placement: &Placement, line: Line) -> Value {
    let stand = stand(placement);
    let (status, call_result) = match stand {
        Stand::Running => ("in-progress", Some("answered")),
        Stand::Result("failed") => ("failed", Some("failed")),
        Stand::Result(result) => ("done", Some(result)),
        Stand::Status(status) => (status, None),
        // What a conversation that never connected looks like is not documented: failed,
        // with the failure as its call_result where there is one.
        Stand::InitiationFailure("busy") => ("failed", Some("busy")),
        Stand::InitiationFailure("no-answer") => ("failed", Some("no_answer")),
        Stand::InitiationFailure(_) => ("failed", None),
    };
    let answered = matches!(call_result, Some("answered"))
        || matches!(stand, Stand::Status("done"))
        || matches!(stand, Stand::Running);
    let start = placement.placed_at.timestamp();
    let duration = match stand {
        Stand::Running => (chrono::Utc::now().timestamp() - start).max(0),
        _ if answered => DURATION_SECS,
        Stand::Result("voicemail") => 18,
        _ => 0,
    };
    let mut phone_call = json!({
        "type": match line { Line::Twilio => "twilio", Line::SipTrunk => "sip_trunking" },
        "direction": "outbound",
        "phone_number_id": PHONE_NUMBER_ID,
        "agent_number": AGENT_NUMBER,
        "external_number": placement.to,
        "call_sid": telephony_call_id(placement, line),
    });
    match line {
        Line::Twilio => phone_call["stream_sid"] = json!(format!("MZ{}", Uuid::new_v4().simple())),
        Line::SipTrunk => phone_call["call_id"] = json!(format!("{}@sip.example", Uuid::new_v4())),
    }
    if let Some(result) = call_result {
        phone_call["call_result"] = json!(result);
    }
    let mut variables = sent_variables(placement);
    for (name, value) in [
        ("system__agent_id", json!(placement.dial["agent_id"])),
        ("system__conversation_id", json!(placement.provider_call_id)),
        ("system__caller_id", json!(AGENT_NUMBER)),
        ("system__called_number", json!(placement.to)),
        (
            "system__call_sid",
            json!(telephony_call_id(placement, line)),
        ),
    ] {
        variables.insert(name.to_owned(), value);
    }
    let transcript = if answered {
        json!([
            {"role": "agent", "message": "Hi, this is Ebra calling about your renewal.", "time_in_call_secs": 0},
            {"role": "user", "message": "Yes, go ahead.", "time_in_call_secs": 3},
        ])
    } else {
        json!([])
    };
    let over = !matches!(stand, Stand::Running);
    json!({
        "agent_id": placement.dial["agent_id"],
        "agent_name": "Renewals",
        "status": status,
        "user_id": null,
        "metadata": {
            "start_time_unix_secs": start,
            "accepted_time_unix_secs": if answered { json!(start + 3) } else { Value::Null },
            "call_duration_secs": duration,
            "cost": if answered { 812 } else { 0 },
            "termination_reason": if over { json!(TERMINATION) } else { Value::Null },
            "phone_call": phone_call,
        },
        "analysis": if over {
            json!({
                "evaluation_criteria_results": {
                    "renewal_confirmed": {"criteria_id": "renewal_confirmed", "result": "success",
                                          "rationale": "The customer said yes."},
                },
                "data_collection_results": {
                    "renewal_date": {"data_collection_id": "renewal_date", "value": "2027-01-01",
                                     "rationale": "Stated by the customer."},
                },
                "call_successful": if answered { "success" } else { "failure" },
                "transcript_summary": SUMMARY,
                "call_summary_title": "Renewal",
            })
        } else {
            Value::Null
        },
        "conversation_initiation_client_data": {
            "conversation_config_override": null,
            "custom_llm_extra_body": {},
            "user_id": null,
            "dynamic_variables": variables,
        },
        "conversation_id": placement.provider_call_id,
        "has_audio": answered && over,
        "has_user_audio": answered && over,
        "has_response_audio": answered && over,
        "has_auxiliary_audio": false,
        "transcript": transcript,
    })
}

const SUMMARY: &str = "The customer confirmed the renewal date.";

/// A conversation as the list returns it (`ConversationSummaryResponseModel`).
fn summary(placement: &Placement, line: Line) -> Value {
    let full = conversation(placement, line);
    json!({
        "agent_id": full["agent_id"],
        "agent_name": full["agent_name"],
        "conversation_id": full["conversation_id"],
        "start_time_unix_secs": full["metadata"]["start_time_unix_secs"],
        "call_duration_secs": full["metadata"]["call_duration_secs"],
        "message_count": full["transcript"].as_array().map_or(0, Vec::len),
        "status": full["status"],
        "termination_reason": full["metadata"]["termination_reason"],
        "call_successful": full["analysis"]["call_successful"].as_str().unwrap_or("unknown"),
        "direction": "outbound",
    })
}

/// A FastAPI validation error, as ElevenLabs answers a body it cannot take: it echoes the
/// input, the client's metadata included.
fn validation_error(message: &str, input: &Value) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"detail": [{
            "type": "value_error",
            "loc": ["body"],
            "msg": format!("Value error, {message}"),
            "input": input,
        }]})),
    )
        .into_response()
}

async fn outbound_call(account: Account, path_line: Line, request: Request<Body>) -> Response {
    let seen = seen(request).await;
    let body = seen.json();
    let plan = {
        let mut book = account.book();
        book.dials.push(seen.clone());
        book.next_plan()
    };
    if !authorized(&seen) {
        return unauthorized();
    }
    for field in ["agent_id", "agent_phone_number_id", "to_number"] {
        if !body[field].is_string() {
            return validation_error(&format!("{field} is required"), &body);
        }
    }
    // The account's one number is on one telephony; the other endpoint does not know it.
    if body["agent_phone_number_id"] != PHONE_NUMBER_ID || path_line != account.line {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"detail": {"status": "phone_number_not_found", "message": "Phone number not found for this telephony provider"}})),
        )
            .into_response();
    }
    let key = body
        .pointer("/conversation_initiation_client_data/dynamic_variables/ebra_attempt_key")
        .and_then(Value::as_str)
        .and_then(|k| Uuid::parse_str(k).ok());
    let to = body["to_number"].as_str().unwrap_or_default().to_owned();
    // No idempotency: every dial that is placed is a new conversation.
    let place = |account: &Account| -> Placement {
        let mut book = account.book();
        let id = book.place("conv_", &to, key, body.clone());
        book.placement(&id).cloned().expect("just placed")
    };
    let accepted = |placement: &Placement| -> Response {
        let mut answer = json!({
            "success": true,
            "message": "Success",
            "conversation_id": placement.provider_call_id,
        });
        match account.line {
            Line::Twilio => answer["callSid"] = json!(telephony_call_id(placement, Line::Twilio)),
            Line::SipTrunk => {
                answer["sip_call_id"] = json!(telephony_call_id(placement, Line::SipTrunk))
            }
        }
        Json(answer).into_response()
    };
    let refused = |message: &str| -> Response {
        Json(
            json!({"success": false, "message": message, "conversation_id": null, "callSid": null}),
        )
        .into_response()
    };
    match plan {
        DialPlan::Accept => accepted(&place(&account)),
        DialPlan::PlaceThenStall(pause) => {
            let placement = place(&account);
            tokio::time::sleep(pause).await;
            accepted(&placement)
        }
        DialPlan::StallWithoutPlacing(pause) => {
            tokio::time::sleep(pause).await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        // Not confirmed by ElevenLabs' documentation (PROVIDERS.md §9: "Calls exceeding the
        // burst limit are rejected with an error", its shape unspecified). Its API's 429s
        // say `concurrent_limit_exceeded` (errors page; formerly
        // `too_many_concurrent_requests`) or `rate_limit_exceeded`; `success: false`
        // answers on a 200 exist too.
        DialPlan::ConcurrencyLimit => match account.refusals {
            Refusals::HttpErrors => (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"detail": {
                    "type": "rate_limit_error",
                    "code": "concurrent_limit_exceeded",
                    "message": "You have reached the concurrency limit of your plan (10 concurrent conversations).",
                    "request_id": Uuid::new_v4().to_string(),
                }})),
            )
                .into_response(),
            Refusals::SuccessFalse => {
                refused("Concurrency limit reached: the workspace has 10 concurrent conversations")
            }
        },
        DialPlan::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"detail": {
                "type": "rate_limit_error",
                "code": "rate_limit_exceeded",
                "message": "Too many requests. Please slow down.",
                "request_id": Uuid::new_v4().to_string(),
            }})),
        )
            .into_response(),
        DialPlan::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"detail": {"status": "internal_error", "message": "Internal server error"}})),
        )
            .into_response(),
        DialPlan::Permanent => match account.refusals {
            Refusals::HttpErrors => validation_error("to_number is not a valid phone number", &body),
            Refusals::SuccessFalse => refused("Failed to create the call: invalid To number"),
        },
    }
}

async fn get_conversation(
    State(account): State<Account>,
    Path(conversation_id): Path<String>,
    request: Request<Body>,
) -> Response {
    let seen = seen(request).await;
    let mut book = account.book();
    book.lookups.push(seen.clone());
    if book.lookups_fail {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !authorized(&seen) {
        return unauthorized();
    }
    match book.placement(&conversation_id) {
        Some(placement) => Json(conversation(placement, account.line)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"detail": {"status": "conversation_not_found", "message": "Conversation not found"}})),
        )
            .into_response(),
    }
}

/// One `name:op:value` dynamic-variable filter, as the SDK documents it.
struct VariableFilter {
    name: String,
    op: String,
    value: String,
}

impl VariableFilter {
    fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.splitn(3, ':');
        let (name, op, value) = (parts.next()?, parts.next()?, parts.next()?);
        let known = ["eq", "neq", "gt", "gte", "lt", "lte", "in"];
        (!name.is_empty() && known.contains(&op)).then(|| Self {
            name: name.to_owned(),
            op: op.to_owned(),
            value: value.to_owned(),
        })
    }

    fn matches(&self, variables: &Map<String, Value>) -> bool {
        let actual = variables.get(&self.name).map(|value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        let number = |text: &str| text.parse::<f64>().ok();
        match (self.op.as_str(), actual) {
            // An empty value matches the conversations without the variable.
            ("eq", None) => self.value.is_empty(),
            ("eq", Some(actual)) => actual == self.value,
            ("neq", None) => !self.value.is_empty(),
            ("neq", Some(actual)) => actual != self.value,
            ("in", Some(actual)) => self.value.split('|').any(|one| one == actual),
            (op, Some(actual)) => match (number(&actual), number(&self.value)) {
                (Some(a), Some(b)) => match op {
                    "gt" => a > b,
                    "gte" => a >= b,
                    "lt" => a < b,
                    _ => a <= b,
                },
                _ => false,
            },
            _ => false,
        }
    }
}

async fn list_conversations(
    State(account): State<Account>,
    Query(params): Query<Vec<(String, String)>>,
    request: Request<Body>,
) -> Response {
    let seen = seen(request).await;
    let placements = {
        let mut book = account.book();
        book.lookups.push(seen.clone());
        if book.lookups_fail {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        book.placements.clone()
    };
    if !authorized(&seen) {
        return unauthorized();
    }
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let invalid = |message: String| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": [{"type": "value_error", "loc": ["query"], "msg": message}]})),
        )
            .into_response()
    };
    let number = |name: &str| -> Result<Option<i64>, String> {
        param(name)
            .map(|raw| {
                raw.parse::<i64>()
                    .map_err(|_| format!("{name} is not an integer"))
            })
            .transpose()
    };
    let (after, before, page_size) = match (
        number("call_start_after_unix"),
        number("call_start_before_unix"),
        number("page_size"),
    ) {
        (Ok(after), Ok(before), Ok(page_size)) => (after, before, page_size.unwrap_or(30)),
        (Err(message), _, _) | (_, Err(message), _) | (_, _, Err(message)) => {
            return invalid(message)
        }
    };
    if !(1..=100).contains(&page_size) {
        return invalid("page_size can not exceed 100".into());
    }
    let mut filters = Vec::new();
    for (name, raw) in &params {
        if name == "dynamic_variable_filter" || name == "dynamic_variable_params" {
            match VariableFilter::parse(raw) {
                Some(filter) => filters.push(filter),
                None => return invalid(format!("invalid dynamic variable filter {raw:?}")),
            }
        }
    }
    let agent_id = param("agent_id");
    let mut matching: Vec<Value> = placements
        .iter()
        .map(|placement| conversation(placement, account.line))
        .filter(|c| agent_id.is_none_or(|agent| c["agent_id"] == agent))
        .filter(|c| {
            let start = c["metadata"]["start_time_unix_secs"].as_i64().unwrap_or(0);
            after.is_none_or(|after| start > after) && before.is_none_or(|before| start < before)
        })
        .filter(|c| {
            let variables = c["conversation_initiation_client_data"]["dynamic_variables"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            filters.iter().all(|filter| filter.matches(&variables))
        })
        .collect();
    let newest_first = param("sort_direction") != Some("asc");
    matching.sort_by_key(|c| c["metadata"]["start_time_unix_secs"].as_i64().unwrap_or(0));
    if newest_first {
        matching.reverse();
    }
    let offset = param("cursor")
        .and_then(|cursor| cursor.parse::<usize>().ok())
        .unwrap_or(0);
    let end = (offset + page_size as usize).min(matching.len());
    let has_more = end < matching.len();
    let page: Vec<Value> = matching
        .get(offset.min(end)..end)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let id = c["conversation_id"].as_str().unwrap_or_default();
            let placement = placements
                .iter()
                .find(|p| p.provider_call_id == id)
                .expect("a placed conversation");
            summary(placement, account.line)
        })
        .collect();
    Json(json!({
        "conversations": page,
        "next_cursor": if has_more { json!(end.to_string()) } else { Value::Null },
        "has_more": has_more,
    }))
    .into_response()
}

/// Signs `body` as ElevenLabs does, at `t` (unix seconds, as text), with `secret`.
pub fn signature(secret: &str, body: &[u8], t: &str) -> String {
    format!(
        "t={t},v0={}",
        hex::encode(mac(secret, &[t.as_bytes(), b".", body]))
    )
}

fn mac(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn delivery(body: Vec<u8>, signature: Option<String>) -> Delivery {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(signature) = signature {
        headers.push(("ElevenLabs-Signature".to_owned(), signature));
    }
    Delivery {
        path_and_query: "/callbacks/elevenlabs".to_owned(),
        headers,
        body,
    }
}

fn signed(body: Vec<u8>) -> Delivery {
    let signature = signature(WEBHOOK_SECRET, &body, &now_secs().to_string());
    delivery(body, Some(signature))
}

/// The end-of-call event for `placement` ending with the fake's `reason`.
fn end_event(placement: &Placement, reason: &str, line: Line) -> Vec<u8> {
    let mut placement = placement.clone();
    placement.ended = Some(reason.to_owned());
    let event = match stand(&placement) {
        Stand::InitiationFailure(failure_reason) => {
            let metadata = match line {
                Line::Twilio => {
                    let (status, sip) = match failure_reason {
                        "busy" => ("busy", "486"),
                        "no-answer" => ("no-answer", "487"),
                        _ => ("failed", "500"),
                    };
                    json!({"type": "twilio", "body": {
                        "Called": placement.to,
                        "To": placement.to,
                        "From": AGENT_NUMBER,
                        "Caller": AGENT_NUMBER,
                        "Direction": "outbound-api",
                        "CallbackSource": "call-progress-events",
                        "SequenceNumber": "2",
                        "CallSid": telephony_call_id(&placement, Line::Twilio),
                        "AccountSid": "AC00000000000000000000000000000000",
                        "ApiVersion": "2010-04-01",
                        "CallStatus": status,
                        "SipResponseCode": sip,
                        "Duration": "0",
                        "CallDuration": "0",
                        "Timestamp": chrono::Utc::now().to_rfc2822(),
                    }})
                }
                Line::SipTrunk => {
                    let (code, reason, twirp) = match failure_reason {
                        "busy" => (486, "Busy Here", "unavailable"),
                        "no-answer" => (480, "Temporarily Unavailable", "unavailable"),
                        _ => (503, "Service Unavailable", "internal"),
                    };
                    json!({"type": "sip", "body": {
                        "sip_status_code": code,
                        "error_reason": reason,
                        "call_sid": telephony_call_id(&placement, Line::SipTrunk),
                        "twirp_code": twirp,
                        "sip_status": reason,
                    }})
                }
            };
            json!({
                "type": "call_initiation_failure",
                "event_timestamp": now_secs(),
                "data": {
                    "agent_id": placement.dial["agent_id"],
                    "conversation_id": placement.provider_call_id,
                    "failure_reason": failure_reason,
                    "metadata": metadata,
                },
            })
        }
        _ => json!({
            "type": "post_call_transcription",
            "event_timestamp": now_secs(),
            "data": conversation(&placement, line),
        }),
    };
    event.to_string().into_bytes()
}

/// `post_call_audio`: the recording, not an end (the transcription webhook is).
fn audio_event(placement: &Placement) -> Vec<u8> {
    json!({
        "type": "post_call_audio",
        "event_timestamp": now_secs(),
        "data": {
            "agent_id": placement.dial["agent_id"],
            "conversation_id": placement.provider_call_id,
            "full_audio": base64::engine::general_purpose::STANDARD.encode(b"ID3\x04\x00 not really an mp3"),
        },
    })
    .to_string()
    .into_bytes()
}

impl ElevenLabsWith {
    fn start_fake(&self) -> BoxFuture<'static, Fake> {
        let (line, refusals) = (self.line, self.refusals);
        async move {
            let shared: Shared = Arc::default();
            let account = Account {
                book: shared.clone(),
                line,
                refusals,
            };
            let router = Router::new()
                .route(
                    Line::Twilio.path(),
                    post(|State(account): State<Account>, request: Request<Body>| {
                        outbound_call(account, Line::Twilio, request)
                    }),
                )
                .route(
                    Line::SipTrunk.path(),
                    post(|State(account): State<Account>, request: Request<Body>| {
                        outbound_call(account, Line::SipTrunk, request)
                    }),
                )
                .route("/v1/convai/conversations", get(list_conversations))
                .route(
                    "/v1/convai/conversations/{conversation_id}",
                    get(get_conversation),
                )
                .with_state(account);
            Fake::serve(router, shared).await
        }
        .boxed()
    }
}

impl Contract for ElevenLabsWith {
    fn kind(&self) -> ProviderKind {
        ProviderKind::ElevenLabs
    }

    fn expected_result(&self, _placement: &Placement) -> Value {
        json!({
            "summary": SUMMARY,
            "transcript": "agent: Hi, this is Ebra calling about your renewal.\nuser: Yes, go ahead.",
            "analysis": {"call_successful": "success", "transcript_summary": SUMMARY,
                         "data_collection_results": {"renewal_date": {"data_collection_id": "renewal_date",
                             "value": "2027-01-01", "rationale": "Stated by the customer."}}},
        })
    }

    fn start(&self) -> BoxFuture<'static, Fake> {
        self.start_fake()
    }

    fn settings(&self, fake: &Fake) -> Vec<(String, String)> {
        let telephony = match self.line {
            Line::Twilio => "twilio",
            Line::SipTrunk => "sip_trunk",
        };
        [
            ("PROVIDER", "elevenlabs"),
            ("ELEVENLABS_API_KEY", API_KEY),
            ("ELEVENLABS_AGENT_PHONE_NUMBER_ID", PHONE_NUMBER_ID),
            ("ELEVENLABS_TELEPHONY", telephony),
            ("ELEVENLABS_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("ELEVENLABS_BASE_URL", fake.base_url.as_str()),
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
        assert_eq!(seen.uri.path(), self.line.path());
        assert_eq!(seen.header("xi-api-key"), Some(API_KEY));
        assert_eq!(seen.header("content-type"), Some("application/json"));
        let body = seen.json();
        assert_eq!(
            body["agent_id"], expected.script_id,
            "scriptId names the agent"
        );
        assert_eq!(body["agent_phone_number_id"], PHONE_NUMBER_ID);
        assert_eq!(body["to_number"], expected.to);
        let client_data = body["conversation_initiation_client_data"]
            .as_object()
            .expect("conversation_initiation_client_data is an object");
        assert_eq!(
            client_data.keys().collect::<Vec<_>>(),
            ["dynamic_variables"],
            "only dynamic variables travel"
        );
        let variables = client_data["dynamic_variables"]
            .as_object()
            .expect("dynamic_variables is an object");
        assert_eq!(variables["ebra_attempt_key"], expected.key.to_string());
        assert_eq!(variables["ebra_call_id"], expected.call_id.to_string());
        let client = expected.metadata.as_object().expect("client metadata");
        for (name, value) in client {
            match value {
                Value::String(text) => assert_eq!(&variables[name], text, "{name}"),
                other => assert_eq!(variables[name], json!(other.to_string()), "{name}"),
            }
        }
        assert_eq!(
            variables.len(),
            client.len() + 2,
            "the client's metadata and Ebra's two keys, nothing else: {variables:?}"
        );
        for field in body.as_object().expect("a JSON object").keys() {
            assert!(
                [
                    "agent_id",
                    "agent_phone_number_id",
                    "to_number",
                    "conversation_initiation_client_data",
                ]
                .contains(&field.as_str()),
                "unexpected field {field}"
            );
        }
    }

    fn end_of_call(&self, placement: &Placement, reason: &str, _base: &str) -> Delivery {
        signed(end_event(placement, reason, self.line))
    }

    fn progress_event(&self, placement: &Placement, _base: &str) -> Delivery {
        signed(audio_event(placement))
    }

    fn forgeries(&self, placement: &Placement, _base: &str) -> Vec<(&'static str, Delivery)> {
        let body = end_event(placement, "call_result=answered", self.line);
        let now = now_secs();
        let t = now.to_string();
        let genuine = signature(WEBHOOK_SECRET, &body, &t);
        let mut tampered = body.clone();
        let at = tampered.len() - 2;
        tampered[at] ^= 1;
        let other_body = end_event(placement, "call_result=busy", self.line);
        let at = |seconds: i64| signature(WEBHOOK_SECRET, &body, &(now + seconds).to_string());
        vec![
            ("unsigned", delivery(body.clone(), None)),
            (
                "empty signature header",
                delivery(body.clone(), Some(String::new())),
            ),
            (
                "wrong secret",
                delivery(body.clone(), Some(signature("wsec_impostor", &body, &t))),
            ),
            ("tampered body", delivery(tampered, Some(genuine.clone()))),
            (
                "signature of another body",
                delivery(
                    body.clone(),
                    Some(signature(WEBHOOK_SECRET, &other_body, &t)),
                ),
            ),
            (
                "stale timestamp (31 minutes)",
                delivery(body.clone(), Some(at(-31 * 60))),
            ),
            (
                "future timestamp (10 minutes, past Ebra's bound)",
                delivery(body.clone(), Some(at(10 * 60))),
            ),
            (
                "milliseconds instead of seconds",
                delivery(
                    body.clone(),
                    Some(signature(WEBHOOK_SECRET, &body, &(now * 1000).to_string())),
                ),
            ),
            (
                "timestamp changed after signing",
                delivery(
                    body.clone(),
                    Some(genuine.replace(&format!("t={t}"), &format!("t={}", now - 1))),
                ),
            ),
            (
                "v1 scheme",
                delivery(body.clone(), Some(genuine.replace(",v0=", ",v1="))),
            ),
            (
                "uppercase hex",
                delivery(
                    body.clone(),
                    Some(format!(
                        "t={t},v0={}",
                        hex::encode_upper(mac(WEBHOOK_SECRET, &[t.as_bytes(), b".", &body]))
                    )),
                ),
            ),
            (
                "space after the comma",
                delivery(body.clone(), Some(genuine.replace(",v0=", ", v0="))),
            ),
            (
                "signed without the timestamp",
                delivery(
                    body.clone(),
                    Some(format!(
                        "t={t},v0={}",
                        hex::encode(mac(WEBHOOK_SECRET, &[&body]))
                    )),
                ),
            ),
            (
                "base64 digest",
                delivery(
                    body.clone(),
                    Some(format!(
                        "t={t},v0={}",
                        base64::engine::general_purpose::STANDARD
                            .encode(mac(WEBHOOK_SECRET, &[t.as_bytes(), b".", &body]))
                    )),
                ),
            ),
            (
                "empty digest",
                delivery(body.clone(), Some(format!("t={t},v0="))),
            ),
            (
                "no timestamp",
                delivery(body.clone(), Some(genuine.replace(&format!("t={t},"), ""))),
            ),
        ]
    }

    fn end_reasons(&self) -> Vec<(&'static str, Settles)> {
        use CallStatus::*;
        vec![
            (
                "call_result=answered",
                Settles::as_(Completed, DialOutcome::Completed),
            ),
            (
                "call_result=voicemail",
                Settles::as_(Completed, DialOutcome::Voicemail),
            ),
            ("call_result=busy", Settles::as_(Pending, DialOutcome::Busy)),
            (
                "call_result=no_answer",
                Settles::as_(Pending, DialOutcome::NoAnswer),
            ),
            (
                "call_result=failed",
                Settles::as_(Failed, DialOutcome::Failed),
            ),
            (
                "status=done",
                Settles::as_(Completed, DialOutcome::Completed),
            ),
            ("status=failed", Settles::as_(Failed, DialOutcome::Failed)),
            (
                "call_initiation_failure=busy",
                Settles::as_(Pending, DialOutcome::Busy),
            ),
            (
                "call_initiation_failure=no-answer",
                Settles::as_(Pending, DialOutcome::NoAnswer),
            ),
            (
                "call_initiation_failure=unknown",
                Settles::as_(Failed, DialOutcome::Failed),
            ),
        ]
    }

    fn limited_end_reason(&self) -> Option<&'static str> {
        // ElevenLabs documents no end reason for its concurrency limit: neither call_result
        // nor failure_reason has one, and termination_reason is free text.
        None
    }
}

impl Contract for ElevenLabs {
    fn kind(&self) -> ProviderKind {
        ElevenLabsWith::TWILIO.kind()
    }
    fn start(&self) -> BoxFuture<'static, Fake> {
        ElevenLabsWith::TWILIO.start()
    }
    fn settings(&self, fake: &Fake) -> Vec<(String, String)> {
        ElevenLabsWith::TWILIO.settings(fake)
    }
    fn deduplicates_by_key(&self) -> bool {
        ElevenLabsWith::TWILIO.deduplicates_by_key()
    }
    fn check_dial(&self, seen: &Seen, expected: &ExpectedDial<'_>) {
        ElevenLabsWith::TWILIO.check_dial(seen, expected)
    }
    fn end_of_call(&self, placement: &Placement, reason: &str, base: &str) -> Delivery {
        ElevenLabsWith::TWILIO.end_of_call(placement, reason, base)
    }
    fn progress_event(&self, placement: &Placement, base: &str) -> Delivery {
        ElevenLabsWith::TWILIO.progress_event(placement, base)
    }
    fn forgeries(&self, placement: &Placement, base: &str) -> Vec<(&'static str, Delivery)> {
        ElevenLabsWith::TWILIO.forgeries(placement, base)
    }
    fn end_reasons(&self) -> Vec<(&'static str, Settles)> {
        ElevenLabsWith::TWILIO.end_reasons()
    }
    fn limited_end_reason(&self) -> Option<&'static str> {
        ElevenLabsWith::TWILIO.limited_end_reason()
    }
    fn expected_result(&self, placement: &Placement) -> Value {
        ElevenLabsWith::TWILIO.expected_result(placement)
    }
}
