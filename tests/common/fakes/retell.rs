//! Retell's API as its SDK (`retell-sdk` 6.2.13) and docs describe it: `POST
//! /v2/create-phone-call` (Bearer API key; `idempotency_key` honoured: a repeated key gets
//! the call already placed), `GET /v2/get-call/{call_id}`, and `{event, call}` webhooks
//! signed `x-retell-signature: v=<ms>,d=<hex HMAC-SHA256(body + ms)>` with the API key.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
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

pub const API_KEY: &str = "key_test_4f7d1c2b9a8e4d6f";
pub const FROM_NUMBER: &str = "+14155550111";

pub struct Retell;

type Shared = Arc<Mutex<Book>>;

fn book(shared: &Shared) -> std::sync::MutexGuard<'_, Book> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn authorized(seen: &Seen) -> bool {
    seen.header("authorization") == Some(&format!("Bearer {API_KEY}"))
}

/// A Retell call object, as `create-phone-call` and `get-call` return it.
fn call_object(placement: &Placement) -> Value {
    let (status, reason) = match &placement.ended {
        None => ("ongoing", Value::Null),
        Some(reason) if reason.starts_with("dial_") || reason == "user_declined" => {
            ("not_connected", json!(reason))
        }
        Some(reason) => ("ended", json!(reason)),
    };
    let start = placement.placed_at.timestamp_millis();
    let mut call = json!({
        "call_id": placement.provider_call_id,
        "call_type": "phone_call",
        "agent_id": placement.dial["override_agent_id"],
        "agent_version": 1,
        "call_status": status,
        "direction": "outbound",
        "from_number": FROM_NUMBER,
        "to_number": placement.to,
        "metadata": placement.dial["metadata"],
        "retell_llm_dynamic_variables": placement.dial["retell_llm_dynamic_variables"],
        "start_timestamp": start,
    });
    if placement.ended.is_some() {
        call["disconnection_reason"] = reason;
        call["end_timestamp"] = json!(start + 42_400);
        call["duration_ms"] = json!(42_400);
    }
    if status == "ended" {
        // A connected call: what Retell's call object carries once it ended (the analysis
        // comes with call_analyzed, and with every later read).
        call["transcript"] = json!(TRANSCRIPT);
        call["recording_url"] = json!(recording_url(placement));
        call["call_analysis"] = json!({
            "call_summary": SUMMARY,
            "in_voicemail": false,
            "user_sentiment": "Positive",
            "call_successful": true,
            "custom_analysis_data": {"renewal_confirmed": true},
        });
    }
    call
}

const TRANSCRIPT: &str =
    "Agent: Hi, this is Ebra calling about your renewal.\nUser: Yes, renew it please.\n";
const SUMMARY: &str = "The customer asked to renew.";

fn recording_url(placement: &Placement) -> String {
    format!(
        "https://dxc03zgurdly9.cloudfront.net/{}/recording.wav",
        placement.provider_call_id
    )
}

async fn create_phone_call(State(shared): State<Shared>, request: Request<Body>) -> Response {
    let seen = seen(request).await;
    let body = seen.json();
    let plan = {
        let mut book = book(&shared);
        book.dials.push(seen.clone());
        book.next_plan()
    };
    if !authorized(&seen) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Unauthorized"})),
        )
            .into_response();
    }
    let key = body["idempotency_key"]
        .as_str()
        .and_then(|k| Uuid::parse_str(k).ok());
    let to = body["to_number"].as_str().unwrap_or_default().to_owned();
    let place = |shared: &Shared| -> Placement {
        let mut book = book(shared);
        // Retell keeps the key for an hour: the same key gets the same call.
        if let Some(existing) = key.and_then(|k| book.placed_for_key(k).cloned()) {
            return existing;
        }
        let id = book.place("call_", &to, key, body.clone());
        book.placement(&id).cloned().expect("just placed")
    };
    match plan {
        DialPlan::Accept => (StatusCode::CREATED, Json(call_object(&place(&shared)))).into_response(),
        DialPlan::PlaceThenStall(pause) => {
            let placement = place(&shared);
            tokio::time::sleep(pause).await;
            (StatusCode::CREATED, Json(call_object(&placement))).into_response()
        }
        DialPlan::StallWithoutPlacing(pause) => {
            tokio::time::sleep(pause).await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        // Not confirmed by Retell's documentation (PROVIDERS.md §9): a 429 whose message
        // names the concurrency limit, as distinct from its API rate limiting.
        DialPlan::ConcurrencyLimit => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"message": "Concurrency limit reached: the workspace has 20 concurrent calls"})),
        )
            .into_response(),
        DialPlan::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"message": "Account rate limited, please throttle your requests."})),
        )
            .into_response(),
        DialPlan::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"message": "Internal Server Error"})),
        )
            .into_response(),
        DialPlan::Permanent => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "to_number is not a valid phone number"})),
        )
            .into_response(),
    }
}

async fn get_call(
    State(shared): State<Shared>,
    Path(call_id): Path<String>,
    request: Request<Body>,
) -> Response {
    let seen = seen(request).await;
    let mut book = book(&shared);
    book.lookups.push(seen.clone());
    if book.lookups_fail {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !authorized(&seen) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match book.placement(&call_id) {
        Some(placement) => Json(call_object(placement)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Call not found"})),
        )
            .into_response(),
    }
}

/// Signs `body` as Retell does, at `ms`, with `key`.
pub fn signature(key: &str, body: &[u8], ms: i64) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(body);
    mac.update(ms.to_string().as_bytes());
    format!("v={ms},d={}", hex::encode(mac.finalize().into_bytes()))
}

fn delivery(body: Vec<u8>, signature: Option<String>) -> Delivery {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(signature) = signature {
        headers.push(("x-retell-signature".to_owned(), signature));
    }
    Delivery {
        path_and_query: "/callbacks/retell".to_owned(),
        headers,
        body,
    }
}

fn event(placement: &Placement, event: &str, reason: Option<&str>) -> Vec<u8> {
    let mut placement = placement.clone();
    if let Some(reason) = reason {
        placement.ended = Some(reason.to_owned());
    }
    json!({"event": event, "call": call_object(&placement)})
        .to_string()
        .into_bytes()
}

impl Contract for Retell {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Retell
    }

    fn expected_result(&self, placement: &Placement) -> Value {
        json!({
            "summary": SUMMARY,
            "transcript": TRANSCRIPT.trim(),
            "recordingUrl": recording_url(placement),
            "analysis": {"call_summary": SUMMARY, "in_voicemail": false, "user_sentiment": "Positive",
                         "call_successful": true, "custom_analysis_data": {"renewal_confirmed": true}},
        })
    }

    fn start(&self) -> BoxFuture<'static, Fake> {
        async {
            let shared: Shared = Arc::default();
            let router = Router::new()
                .route("/v2/create-phone-call", post(create_phone_call))
                .route("/v2/get-call/{call_id}", get(get_call))
                .with_state(shared.clone());
            Fake::serve(router, shared).await
        }
        .boxed()
    }

    fn settings(&self, fake: &Fake) -> Vec<(String, String)> {
        [
            ("PROVIDER", "retell"),
            ("RETELL_API_KEY", API_KEY),
            ("RETELL_FROM_NUMBER", FROM_NUMBER),
            ("RETELL_BASE_URL", fake.base_url.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn deduplicates_by_key(&self) -> bool {
        true
    }

    fn check_dial(&self, seen: &Seen, expected: &ExpectedDial<'_>) {
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.uri.path(), "/v2/create-phone-call");
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {API_KEY}").as_str())
        );
        assert_eq!(seen.header("content-type"), Some("application/json"));
        let body = seen.json();
        assert_eq!(body["from_number"], FROM_NUMBER);
        assert_eq!(body["to_number"], expected.to);
        assert_eq!(
            body["override_agent_id"], expected.script_id,
            "scriptId names the agent"
        );
        assert_eq!(body["idempotency_key"], expected.key.to_string());
        let metadata = body["metadata"].as_object().expect("metadata is an object");
        assert_eq!(metadata["ebra_attempt_key"], expected.key.to_string());
        assert_eq!(metadata["ebra_call_id"], expected.call_id.to_string());
        for (name, value) in expected.metadata.as_object().expect("client metadata") {
            assert_eq!(
                &metadata[name], value,
                "client metadata travels in metadata"
            );
            let variable = &body["retell_llm_dynamic_variables"][name];
            match value {
                Value::String(text) => assert_eq!(variable, text),
                other => assert_eq!(variable, &json!(other.to_string())),
            }
        }
        let allowed = [
            "from_number",
            "to_number",
            "override_agent_id",
            "metadata",
            "retell_llm_dynamic_variables",
            "idempotency_key",
        ];
        for field in body.as_object().expect("a JSON object").keys() {
            assert!(
                allowed.contains(&field.as_str()),
                "unexpected field {field}"
            );
        }
    }

    fn end_of_call(&self, placement: &Placement, reason: &str, _base: &str) -> Delivery {
        let body = event(placement, "call_ended", Some(reason));
        let now = chrono::Utc::now().timestamp_millis();
        let signature = signature(API_KEY, &body, now);
        delivery(body, Some(signature))
    }

    fn progress_event(&self, placement: &Placement, _base: &str) -> Delivery {
        let body = event(placement, "call_started", None);
        let signature = signature(API_KEY, &body, chrono::Utc::now().timestamp_millis());
        delivery(body, Some(signature))
    }

    fn forgeries(&self, placement: &Placement, _base: &str) -> Vec<(&'static str, Delivery)> {
        let body = event(placement, "call_ended", Some("user_hangup"));
        let now = chrono::Utc::now().timestamp_millis();
        let genuine = signature(API_KEY, &body, now);
        let mut tampered = body.clone();
        let at = tampered.len() - 2;
        tampered[at] ^= 1;
        vec![
            ("unsigned", delivery(body.clone(), None)),
            (
                "empty signature",
                delivery(body.clone(), Some(String::new())),
            ),
            (
                "wrong key",
                delivery(body.clone(), Some(signature("key_impostor", &body, now))),
            ),
            ("tampered body", delivery(tampered, Some(genuine.clone()))),
            (
                "stale timestamp",
                delivery(
                    body.clone(),
                    Some(signature(API_KEY, &body, now - 6 * 60 * 1000)),
                ),
            ),
            (
                "uppercase digest",
                delivery(
                    body.clone(),
                    Some(
                        genuine
                            .to_uppercase()
                            .replace("V=", "v=")
                            .replace(",D=", ",d="),
                    ),
                ),
            ),
            (
                "seconds instead of milliseconds",
                delivery(body.clone(), Some(signature(API_KEY, &body, now / 1000))),
            ),
        ]
    }

    fn end_reasons(&self) -> Vec<(&'static str, Settles)> {
        use CallStatus::*;
        let completed = Settles::as_(Completed, DialOutcome::Completed);
        let failed = Settles::as_(Failed, DialOutcome::Failed);
        vec![
            ("user_hangup", completed),
            ("agent_hangup", completed),
            ("user_requested_dnc", completed),
            ("user_requested_callback", completed),
            ("call_transfer", completed),
            ("transfer_bridged", completed),
            ("inactivity", completed),
            ("max_duration_reached", completed),
            ("call_take_over", completed),
            (
                "voicemail_reached",
                Settles::as_(Completed, DialOutcome::Voicemail),
            ),
            (
                "ivr_reached",
                Settles::as_(Completed, DialOutcome::Voicemail),
            ),
            ("dial_busy", Settles::as_(Pending, DialOutcome::Busy)),
            ("user_declined", Settles::as_(Pending, DialOutcome::Busy)),
            (
                "dial_no_answer",
                Settles::as_(Pending, DialOutcome::NoAnswer),
            ),
            (
                "manual_stopped",
                Settles::as_(Canceled, DialOutcome::Canceled),
            ),
            (
                "concurrency_limit_reached",
                Settles::as_(Pending, DialOutcome::Limited),
            ),
            (
                "no_concurrency_fallback",
                Settles::as_(Pending, DialOutcome::Limited),
            ),
            ("dial_failed", failed),
            ("invalid_destination", failed),
            ("telephony_provider_permission_denied", failed),
            ("telephony_provider_unavailable", failed),
            ("sip_routing_error", failed),
            ("marked_as_spam", failed),
            ("network_blocked", failed),
            ("scam_detected", failed),
            ("registered_call_timeout", failed),
            ("transfer_cancelled", failed),
            ("no_valid_payment", failed),
            ("credit_exhausted", failed),
            ("budget_reached", failed),
            ("error_llm_websocket_open", failed),
            ("error_llm_websocket_lost_connection", failed),
            ("error_llm_websocket_runtime", failed),
            ("error_llm_websocket_corrupt_payload", failed),
            ("error_no_audio_received", failed),
            ("error_asr", failed),
            ("error_retell", failed),
            ("error_unknown", failed),
            ("error_user_not_joined", failed),
        ]
    }

    fn limited_end_reason(&self) -> Option<&'static str> {
        Some("concurrency_limit_reached")
    }
}
