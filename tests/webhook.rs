//! The webhook function against real Postgres and SQS: authenticity (every forged form is
//! refused and changes nothing), settlement (invariant 5: duplicate, out-of-order, late and
//! early reports end in the right state) and the freed slot's nudge (invariant 8).

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Utc};
use common::{TestEnv, WEBHOOK_SECRET};
use ebra_shared::domain::CallStatus;
use ebra_shared::store::calls::get_call;
use ebra_shared::store::claim::{claim_call, Claim, ClaimedCall};
use ebra_shared::store::dial::{record_accepted_dials, DialRecorded, RetryPolicy};
use ebra_shared::store::settle::Settlement;
use ebra_shared::store::{sweep, Call, DialAttempt};
use ebra_shared::webhook_signature::WebhookSecret;
use ebra_shared::Config;
use ebra_webhook::{router, routes, WebhookState, MAX_BODY_BYTES};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use uuid::Uuid;

/// A second signing key, for rotation.
const NEW_SECRET: &str = "whsec_bmV3LWtleS1mb3ItdGVzdHM=";
const PATH: &str = "/callbacks/call-status";

struct Webhook {
    env: TestEnv,
    config: Config,
    app: Router,
}

impl Webhook {
    async fn new(overrides: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let config = env.config(overrides);
        let state = WebhookState::new(
            env.pool.clone(),
            env.queue.clone(),
            Arc::new(config.clone()),
        )
        .expect("webhook state");
        Self {
            app: router(state),
            env,
            config,
        }
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy::from(&self.config)
    }

    /// A call created, claimed and dialed: IN_PROGRESS, its attempt ACCEPTED as `provider_call_id`.
    async fn dialed_call(&self, phone: &str, provider_call_id: &str) -> ClaimedCall {
        let claimed = self.claimed_call(phone).await;
        self.record_accepted(&claimed, provider_call_id).await;
        claimed
    }

    /// A call created and claimed: IN_PROGRESS, its dial not answered yet.
    async fn claimed_call(&self, phone: &str) -> ClaimedCall {
        let call_id = self.pending_call(phone).await;
        self.env.claim(&self.config, call_id).await
    }

    /// A PENDING call, due now (its message deliberately not sent).
    async fn pending_call(&self, phone: &str) -> Uuid {
        self.env.pending_call(&self.config, phone, None).await
    }

    async fn record_accepted(&self, claimed: &ClaimedCall, provider_call_id: &str) -> DialRecorded {
        self.env
            .record_accepted(&self.config, claimed, provider_call_id)
            .await
    }

    async fn call(&self, id: Uuid) -> (Call, Vec<DialAttempt>) {
        get_call(&self.env.pool, id)
            .await
            .expect("get call")
            .expect("call exists")
    }

    async fn slot_holder(&self, id: Uuid) -> bool {
        self.env
            .count(&format!(
                "SELECT count(*) FROM call_slots WHERE call_id = '{id}'"
            ))
            .await
            == 1
    }

    /// Everything a webhook could change, as one text: compared before and after a refusal.
    async fn snapshot(&self) -> String {
        let client = self.env.pool.get().await.expect("pool");
        common::rows_as_json(&client, common::SETTLEMENT_ROWS).await
    }

    async fn post(&self, request: Request<Body>) -> Answer {
        send(&self.app, request).await
    }

    /// Posts `report` signed with the test secret, now.
    async fn post_report(&self, webhook_id: &str, report: &Value) -> Answer {
        let body = serde_json::to_vec(report).expect("json");
        self.post(signed(
            &secret(WEBHOOK_SECRET),
            webhook_id,
            Utc::now().timestamp(),
            body,
        ))
        .await
    }
}

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON answer")
    };
    Answer {
        status,
        content_type,
        headers,
        body,
    }
}

fn secret(raw: &str) -> WebhookSecret {
    WebhookSecret::parse(raw).expect("test secret")
}

fn request(headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::post(PATH).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).expect("request")
}

fn signed(
    secret: &WebhookSecret,
    webhook_id: &str,
    timestamp: i64,
    body: Vec<u8>,
) -> Request<Body> {
    let signature = secret.sign(webhook_id, timestamp, &body);
    request(
        &[
            ("webhook-id", webhook_id),
            ("webhook-timestamp", &timestamp.to_string()),
            ("webhook-signature", &signature),
        ],
        body,
    )
}

fn report(
    provider_call_id: &str,
    status: &str,
    duration_sec: u32,
    completed_at: DateTime<Utc>,
) -> Value {
    json!({"callId": provider_call_id, "status": status, "durationSec": duration_sec, "completedAt": completed_at.to_rfc3339()})
}

fn completed_at() -> DateTime<Utc> {
    // Whole seconds: what a provider sends, and what round-trips exactly.
    DateTime::from_timestamp(Utc::now().timestamp() - 5, 0).expect("timestamp")
}

fn assert_problem(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(
        answer.content_type.as_deref(),
        Some("application/problem+json")
    );
    assert_eq!(answer.body["status"], status.as_u16());
    assert!(
        answer.body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:ebra:problem:")),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn every_forged_form_is_refused_and_changes_nothing() {
    let hook = Webhook::new(&[]).await;
    let dialed = hook.dialed_call("+14155550101", "pc-forged").await;
    let before = hook.snapshot().await;

    let body = serde_json::to_vec(&report("pc-forged", "COMPLETED", 30, completed_at())).unwrap();
    let now = Utc::now().timestamp();
    let good = secret(WEBHOOK_SECRET);
    let signature = good.sign("msg_forged", now, &body);
    let now_text = now.to_string();
    let stale = now - 6 * 60;
    let future = now + 6 * 60;
    let stale_text = stale.to_string();
    let future_text = future.to_string();
    let stale_signature = good.sign("msg_forged", stale, &body);
    let future_signature = good.sign("msg_forged", future, &body);
    let wrong_secret = secret("whsec_b3RoZXIta2V5LWZvci10ZXN0cw==").sign("msg_forged", now, &body);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let tampered_status =
        serde_json::to_vec(&report("pc-forged", "FAILED", 30, completed_at())).unwrap();

    let id = ("webhook-id", "msg_forged");
    let ts = ("webhook-timestamp", now_text.as_str());
    let sig = ("webhook-signature", signature.as_str());
    let cases: Vec<(&str, Request<Body>)> = vec![
        ("unsigned", request(&[], body.clone())),
        ("no webhook-id", request(&[ts, sig], body.clone())),
        ("no webhook-timestamp", request(&[id, sig], body.clone())),
        ("no webhook-signature", request(&[id, ts], body.clone())),
        (
            "wrong secret",
            request(
                &[id, ts, ("webhook-signature", &wrong_secret)],
                body.clone(),
            ),
        ),
        (
            "body tampered (a byte added)",
            request(&[id, ts, sig], tampered),
        ),
        (
            "body tampered (another status)",
            request(&[id, ts, sig], tampered_status),
        ),
        (
            "webhook-id tampered",
            request(&[("webhook-id", "msg_other"), ts, sig], body.clone()),
        ),
        (
            "timestamp tampered",
            request(
                &[id, ("webhook-timestamp", &(now - 1).to_string()), sig],
                body.clone(),
            ),
        ),
        (
            "empty signature",
            request(&[id, ts, ("webhook-signature", "v1,")], body.clone()),
        ),
        (
            "empty signatures",
            request(&[id, ts, ("webhook-signature", "v1, v1,")], body.clone()),
        ),
        (
            "signature not base64",
            request(
                &[id, ts, ("webhook-signature", "v1,***not-base64***")],
                body.clone(),
            ),
        ),
        (
            "signature without version",
            request(
                &[
                    id,
                    ts,
                    ("webhook-signature", signature.trim_start_matches("v1,")),
                ],
                body.clone(),
            ),
        ),
        (
            "unknown signature version",
            request(
                &[
                    id,
                    ts,
                    ("webhook-signature", &signature.replacen("v1,", "v2,", 1)),
                ],
                body.clone(),
            ),
        ),
        (
            "truncated signature",
            request(
                &[
                    id,
                    ts,
                    ("webhook-signature", &signature[..signature.len() - 8]),
                ],
                body.clone(),
            ),
        ),
        (
            "timestamp not a number",
            request(&[id, ("webhook-timestamp", "yesterday"), sig], body.clone()),
        ),
        (
            "timestamp 6 minutes old",
            request(
                &[
                    id,
                    ("webhook-timestamp", &stale_text),
                    ("webhook-signature", &stale_signature),
                ],
                body.clone(),
            ),
        ),
        (
            "timestamp 6 minutes ahead",
            request(
                &[
                    id,
                    ("webhook-timestamp", &future_text),
                    ("webhook-signature", &future_signature),
                ],
                body.clone(),
            ),
        ),
    ];
    for (name, forged) in cases {
        let answer = hook.post(forged).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            answer.body
        );
        assert_problem(&answer, StatusCode::UNAUTHORIZED);
        assert_eq!(hook.snapshot().await, before, "{name} changed the database");
    }
    assert!(
        hook.env.queued_call_ids(Duration::ZERO).await.is_empty(),
        "a forged webhook sent a message"
    );

    // The genuine request, for contrast: the same body and headers settle the call.
    let answer = hook.post(request(&[id, ts, sig], body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        hook.call(dialed.call_id).await.0.status,
        CallStatus::Completed
    );
}

#[tokio::test]
async fn a_rotated_secret_accepts_the_new_and_the_old_key() {
    let hook = Webhook::new(&[("WEBHOOK_SECRET", &format!("{NEW_SECRET} {WEBHOOK_SECRET}"))]).await;
    let by_old = hook.dialed_call("+14155550102", "pc-old-key").await;
    let by_new = hook.dialed_call("+14155550103", "pc-new-key").await;
    let now = Utc::now().timestamp();

    let body = serde_json::to_vec(&report("pc-old-key", "COMPLETED", 10, completed_at())).unwrap();
    let answer = hook
        .post(signed(&secret(WEBHOOK_SECRET), "msg_old_key", now, body))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let body = serde_json::to_vec(&report("pc-new-key", "COMPLETED", 20, completed_at())).unwrap();
    let answer = hook
        .post(signed(
            &secret(NEW_SECRET),
            "msg_new_key",
            now,
            body.clone(),
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    assert_eq!(
        hook.call(by_old.call_id).await.0.status,
        CallStatus::Completed
    );
    assert_eq!(
        hook.call(by_new.call_id).await.0.status,
        CallStatus::Completed
    );

    // A provider mid-rotation may send both signatures; one unknown key among them is fine.
    let other = hook.dialed_call("+14155550104", "pc-both").await;
    let body = serde_json::to_vec(&report("pc-both", "FAILED", 0, completed_at())).unwrap();
    let unknown = secret("whsec_b3RoZXIta2V5LWZvci10ZXN0cw==").sign("msg_both", now, &body);
    let known = secret(NEW_SECRET).sign("msg_both", now, &body);
    let both = format!("{unknown} {known}");
    let answer = hook
        .post(request(
            &[
                ("webhook-id", "msg_both"),
                ("webhook-timestamp", &now.to_string()),
                ("webhook-signature", &both),
            ],
            body,
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(hook.call(other.call_id).await.0.status, CallStatus::Failed);
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_before_verification() {
    let hook = Webhook::new(&[]).await;
    let dialed = hook.dialed_call("+14155550105", "pc-large").await;
    let before = hook.snapshot().await;
    let now = Utc::now().timestamp();

    // A valid report padded to exactly the limit is accepted...
    let mut at_limit =
        serde_json::to_vec(&report("pc-large", "COMPLETED", 1, completed_at())).unwrap();
    at_limit.resize(MAX_BODY_BYTES, b' ');
    // ...one byte more is not, even correctly signed, whether or not its length is declared.
    let mut over = at_limit.clone();
    over.push(b' ');
    let answer = hook
        .post(signed(
            &secret(WEBHOOK_SECRET),
            "msg_large",
            now,
            over.clone(),
        ))
        .await;
    assert_problem(&answer, StatusCode::PAYLOAD_TOO_LARGE);
    let mut declared = signed(&secret(WEBHOOK_SECRET), "msg_large", now, over);
    declared
        .headers_mut()
        .insert("content-length", (MAX_BODY_BYTES + 1).into());
    assert_problem(&hook.post(declared).await, StatusCode::PAYLOAD_TOO_LARGE);
    // Unsigned and huge: still 413 (the size is checked first, so no HMAC is spent on it).
    assert_problem(
        &hook
            .post(request(&[], vec![b'x'; 4 * MAX_BODY_BYTES]))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    assert_eq!(hook.snapshot().await, before);

    let answer = hook
        .post(signed(&secret(WEBHOOK_SECRET), "msg_large", now, at_limit))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        hook.call(dialed.call_id).await.0.status,
        CallStatus::Completed
    );
}

#[tokio::test]
async fn a_signed_but_malformed_body_gets_a_precise_4xx_and_changes_nothing() {
    let hook = Webhook::new(&[]).await;
    hook.dialed_call("+14155550106", "pc-malformed").await;
    let before = hook.snapshot().await;
    let now = Utc::now().timestamp();
    let post = |id: &str, body: &str| {
        hook.post(signed(
            &secret(WEBHOOK_SECRET),
            id,
            now,
            body.as_bytes().to_vec(),
        ))
    };

    assert_problem(
        &post("msg_m1", "{\"callId\": ").await,
        StatusCode::BAD_REQUEST,
    );
    let answer = post("msg_m2", r#"{"callId":"pc-malformed","status":"HUNG_UP"}"#).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.body["errors"][0]["field"], "status");
    let answer = post("msg_m3", r#"{"status":"COMPLETED","durationSec":-4}"#).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["callId", "durationSec"]);
    assert_problem(
        &post("msg_m4", "[]").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_eq!(hook.snapshot().await, before);
}

#[tokio::test]
async fn completed_ends_the_call_keeps_the_duration_and_frees_the_slot() {
    let hook = Webhook::new(&[]).await;
    let dialed = hook.dialed_call("+14155550107", "pc-completed").await;
    assert!(hook.slot_holder(dialed.call_id).await);
    let at = completed_at();

    let answer = hook
        .post_report(
            "msg_completed",
            &report("pc-completed", "COMPLETED", 42, at),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body, json!({"result": "applied"}));

    let (call, dials) = hook.call(dialed.call_id).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.ended_at, Some(at));
    assert_eq!(call.duration_sec, Some(42));
    assert_eq!(call.outcome.map(|o| o.as_str()), Some("COMPLETED"));
    assert_eq!(call.last_error, None);
    assert_eq!(dials.len(), 1);
    assert_eq!(dials[0].outcome.map(|o| o.as_str()), Some("COMPLETED"));
    assert_eq!(dials[0].duration_sec, Some(42));
    assert!(
        !hook.slot_holder(dialed.call_id).await,
        "the slot is still held"
    );
    assert_eq!(hook.env.count("SELECT count(*) FROM calls WHERE phone = '+14155550107' AND status = 'IN_PROGRESS'").await, 0);
}

#[tokio::test]
async fn failed_fails_the_call_at_once() {
    let hook = Webhook::new(&[]).await;
    let dialed = hook.dialed_call("+14155550108", "pc-failed").await;
    let answer = hook
        .post_report(
            "msg_failed",
            &report("pc-failed", "FAILED", 0, completed_at()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let (call, _) = hook.call(dialed.call_id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.attempts, 1, "FAILED is not redialed by default");
    assert!(
        call.last_error
            .as_deref()
            .is_some_and(|e| e.contains("FAILED")),
        "{:?}",
        call.last_error
    );
    assert!(!hook.slot_holder(dialed.call_id).await);
}

#[tokio::test]
async fn busy_with_attempts_left_is_redialed_after_a_backoff() {
    let hook = Webhook::new(&[("BASE_RETRY_SECONDS", "1"), ("MAX_ATTEMPTS", "3")]).await;
    let dialed = hook.dialed_call("+14155550109", "pc-busy").await;
    let before = Utc::now();
    let answer = hook
        .post_report("msg_busy", &report("pc-busy", "BUSY", 0, completed_at()))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);

    let (call, dials) = hook.call(dialed.call_id).await;
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(call.attempts, 1);
    assert_eq!(call.ended_at, None);
    assert!(
        call.last_error
            .as_deref()
            .is_some_and(|e| e.contains("BUSY")),
        "{:?}",
        call.last_error
    );
    // BASE_RETRY_SECONDS · 2^0, plus up to 25 % jitter.
    let backoff = (call.next_run_at - before).num_milliseconds();
    assert!((900..=1_500).contains(&backoff), "backoff {backoff} ms");
    assert_eq!(dials[0].outcome.map(|o| o.as_str()), Some("BUSY"));
    assert!(!hook.slot_holder(dialed.call_id).await);
    // The redial's message, held back by SQS for the backoff.
    assert_eq!(
        hook.env.queued_call_ids(Duration::from_secs(8)).await,
        [dialed.call_id]
    );
    // And the redial is a new attempt with a new key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Claim::Claimed(second) = claim_call(&hook.env.pool, dialed.call_id, 30, None)
        .await
        .unwrap()
    else {
        panic!("the redial could not be claimed");
    };
    assert_eq!(second.attempt_no, 2);
    assert_ne!(second.idempotency_key, dialed.idempotency_key);
}

#[tokio::test]
async fn busy_at_max_attempts_fails_with_the_outcome_as_last_error() {
    let hook = Webhook::new(&[("MAX_ATTEMPTS", "1")]).await;
    let dialed = hook.dialed_call("+14155550110", "pc-busy-last").await;
    let answer = hook
        .post_report(
            "msg_busy_last",
            &report("pc-busy-last", "BUSY", 0, completed_at()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let (call, _) = hook.call(dialed.call_id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert!(
        call.last_error
            .as_deref()
            .is_some_and(|e| e.contains("BUSY")),
        "{:?}",
        call.last_error
    );
    assert!(!hook.slot_holder(dialed.call_id).await);
    assert!(hook.env.queued_call_ids(Duration::ZERO).await.is_empty());
}

#[tokio::test]
async fn which_outcomes_are_redialed_is_configurable() {
    let hook = Webhook::new(&[("REDIAL_OUTCOMES", "BUSY"), ("MAX_ATTEMPTS", "3")]).await;
    let dialed = hook.dialed_call("+14155550111", "pc-no-answer").await;
    let answer = hook
        .post_report(
            "msg_no_answer",
            &report("pc-no-answer", "NO_ANSWER", 0, completed_at()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let (call, _) = hook.call(dialed.call_id).await;
    assert_eq!(
        call.status,
        CallStatus::Failed,
        "NO_ANSWER is not in REDIAL_OUTCOMES"
    );
    assert!(
        call.last_error
            .as_deref()
            .is_some_and(|e| e.contains("NO_ANSWER")),
        "{:?}",
        call.last_error
    );
}

#[tokio::test]
async fn a_duplicate_webhook_id_changes_nothing() {
    let hook = Webhook::new(&[]).await;
    let dialed = hook.dialed_call("+14155550112", "pc-dup").await;
    let at = completed_at();
    let first = hook
        .post_report("msg_dup", &report("pc-dup", "COMPLETED", 42, at))
        .await;
    assert_eq!(first.body, json!({"result": "applied"}));
    let settled = hook.snapshot().await;

    // The same delivery again, and a different body under the same id: both recognised.
    let again = hook
        .post_report("msg_dup", &report("pc-dup", "COMPLETED", 42, at))
        .await;
    assert_eq!(
        (again.status, again.body),
        (StatusCode::OK, json!({"result": "duplicate"}))
    );
    let other = hook
        .post_report("msg_dup", &report("pc-dup", "FAILED", 1, Utc::now()))
        .await;
    assert_eq!(
        (other.status, other.body),
        (StatusCode::OK, json!({"result": "duplicate"}))
    );
    assert_eq!(hook.snapshot().await, settled);
    let (call, _) = hook.call(dialed.call_id).await;
    assert_eq!(
        (call.status, call.duration_sec, call.ended_at),
        (CallStatus::Completed, Some(42), Some(at))
    );
}

#[tokio::test]
async fn failed_after_completed_leaves_the_call_completed() {
    let hook = Webhook::new(&[]).await;
    let dialed = hook.dialed_call("+14155550113", "pc-order").await;
    let at = completed_at();
    hook.post_report("msg_order_1", &report("pc-order", "COMPLETED", 42, at))
        .await;
    let settled = hook.call(dialed.call_id).await;

    let late = hook
        .post_report("msg_order_2", &report("pc-order", "FAILED", 0, Utc::now()))
        .await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.body);
    assert_eq!(late.body, json!({"result": "already_settled"}));
    let (call, dials) = hook.call(dialed.call_id).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(
        (call.ended_at, call.duration_sec, call.last_error),
        (Some(at), Some(42), None)
    );
    assert_eq!(call.updated_at, settled.0.updated_at);
    assert_eq!(dials[0].outcome.map(|o| o.as_str()), Some("COMPLETED"));
}

#[tokio::test]
async fn a_late_webhook_for_a_reclaimed_attempt_never_touches_the_next_one() {
    let hook = Webhook::new(&[]).await;
    let first = hook.dialed_call("+14155550114", "pc-attempt-1").await;
    // The provider stays silent past the stale limit: the reclaimer moves the call on, and
    // the redial is claimed and placed as attempt 2.
    hook.env
        .execute(&format!(
            "UPDATE calls SET started_at = now() - interval '1 hour' WHERE id = '{}'",
            first.call_id
        ))
        .await;
    let (reclaimed, _) = sweep::reclaim_stale_calls(
        &hook.env.pool,
        Duration::from_secs(60),
        &hook.policy(),
        sweep::ReclaimScope::All,
    )
    .await
    .unwrap();
    assert_eq!(reclaimed.retried, 1);
    hook.env
        .execute(&format!(
            "UPDATE calls SET next_run_at = now() WHERE id = '{}'",
            first.call_id
        ))
        .await;
    let Claim::Claimed(second) = claim_call(&hook.env.pool, first.call_id, 30, None)
        .await
        .unwrap()
    else {
        panic!("attempt 2 could not be claimed");
    };
    assert_eq!(second.attempt_no, 2);
    hook.record_accepted(&second, "pc-attempt-2").await;
    let before = hook.call(first.call_id).await;

    let late = hook
        .post_report(
            "msg_late",
            &report("pc-attempt-1", "COMPLETED", 42, completed_at()),
        )
        .await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.body);
    assert_eq!(late.body, json!({"result": "superseded"}));
    let (call, dials) = hook.call(first.call_id).await;
    assert_eq!(
        (call.status, call.attempts, call.updated_at),
        (CallStatus::InProgress, 2, before.0.updated_at)
    );
    assert_eq!(dials[1].outcome, None, "attempt 2 was touched");
    assert!(
        hook.slot_holder(first.call_id).await,
        "attempt 2 lost its slot"
    );

    // Attempt 2's own report still settles it.
    let own = hook
        .post_report(
            "msg_attempt_2",
            &report("pc-attempt-2", "COMPLETED", 7, completed_at()),
        )
        .await;
    assert_eq!(own.body, json!({"result": "applied"}));
    let (call, _) = hook.call(first.call_id).await;
    assert_eq!(
        (call.status, call.duration_sec),
        (CallStatus::Completed, Some(7))
    );
}

#[tokio::test]
async fn an_early_webhook_is_held_until_the_worker_records_the_provider_id() {
    let hook = Webhook::new(&[]).await;
    // Claimed, dial in flight: the provider's callback outruns the worker's commit.
    let claimed = hook.claimed_call("+14155550115").await;
    let at = completed_at();
    let early = hook
        .post_report("msg_early", &report("pc-early", "COMPLETED", 42, at))
        .await;
    assert!(early.status.is_success(), "{} {}", early.status, early.body);
    assert_eq!(early.body, json!({"result": "held"}));
    assert_eq!(
        hook.call(claimed.call_id).await.0.status,
        CallStatus::InProgress
    );

    let recorded = hook.record_accepted(&claimed, "pc-early").await;
    let DialRecorded::Dialed { early_webhooks } = recorded else {
        panic!("expected Dialed, got {recorded:?}");
    };
    assert_eq!(
        early_webhooks,
        [Settlement::Applied {
            call_id: claimed.call_id,
            status: CallStatus::Completed
        }]
    );
    let (call, _) = hook.call(claimed.call_id).await;
    assert_eq!(
        (call.status, call.ended_at, call.duration_sec),
        (CallStatus::Completed, Some(at), Some(42))
    );
    assert!(!hook.slot_holder(claimed.call_id).await);

    // The provider retrying the held delivery is a duplicate, not a second settlement.
    let retried = hook
        .post_report("msg_early", &report("pc-early", "COMPLETED", 42, at))
        .await;
    assert_eq!(retried.body, json!({"result": "duplicate"}));
}

#[tokio::test]
async fn a_batch_record_applies_each_held_webhook_to_its_own_dial_only() {
    let hook = Webhook::new(&[]).await;
    let plain = hook.claimed_call("+14155550125").await;
    let early = hook.claimed_call("+14155550126").await;
    let at = completed_at();
    let held = hook
        .post_report(
            "msg_batch_early",
            &report("pc-batch-early", "COMPLETED", 7, at),
        )
        .await;
    assert_eq!(held.body, json!({"result": "held"}));

    let recorded = record_accepted_dials(
        &hook.env.pool,
        &[(&plain, "pc-batch-plain"), (&early, "pc-batch-early")],
        &hook.policy(),
    )
    .await
    .expect("batch record");
    let early_webhooks: Vec<_> = recorded
        .iter()
        .map(|(recorded, _)| match recorded {
            DialRecorded::Dialed { early_webhooks } => early_webhooks.clone(),
            other => panic!("expected Dialed, got {other:?}"),
        })
        .collect();
    assert_eq!(
        early_webhooks,
        [
            vec![],
            vec![Settlement::Applied {
                call_id: early.call_id,
                status: CallStatus::Completed
            }]
        ]
    );
    let (call, dials) = hook.call(plain.call_id).await;
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(
        (
            dials[0].dial_state.as_str(),
            dials[0].provider_call_id.as_deref()
        ),
        ("ACCEPTED", Some("pc-batch-plain"))
    );
    assert!(hook.slot_holder(plain.call_id).await);
    let (call, _) = hook.call(early.call_id).await;
    assert_eq!(
        (call.status, call.ended_at, call.duration_sec),
        (CallStatus::Completed, Some(at), Some(7))
    );
    assert!(!hook.slot_holder(early.call_id).await);
}

#[tokio::test]
async fn provider_call_id_is_accepted_as_an_alias_of_call_id() {
    let hook = Webhook::new(&[]).await;
    let dialed = hook.dialed_call("+14155550116", "pc-alias").await;
    let body = json!({"providerCallId": "pc-alias", "status": "COMPLETED", "durationSec": 9, "completedAt": completed_at().to_rfc3339()});
    let answer = hook.post_report("msg_alias", &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let (call, _) = hook.call(dialed.call_id).await;
    assert_eq!(
        (call.status, call.duration_sec),
        (CallStatus::Completed, Some(9))
    );
}

#[tokio::test]
async fn a_freed_slot_nudges_the_oldest_waiting_call() {
    let hook = Webhook::new(&[("GLOBAL_CONCURRENCY", "1")]).await;
    let dialed = hook.dialed_call("+14155550117", "pc-nudge").await;
    let oldest = hook.pending_call("+14155550118").await;
    let newer = hook.pending_call("+14155550119").await;
    // The cap is full: both wait.
    assert!(matches!(
        claim_call(&hook.env.pool, oldest, 1, None).await.unwrap(),
        Claim::NoFreeSlot
    ));

    let answer = hook
        .post_report(
            "msg_nudge",
            &report("pc-nudge", "COMPLETED", 3, completed_at()),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(!hook.slot_holder(dialed.call_id).await);
    assert_eq!(
        hook.env.queued_call_ids(Duration::from_secs(3)).await,
        [oldest],
        "newer is {newer}"
    );
    assert!(matches!(
        claim_call(&hook.env.pool, oldest, 1, None).await.unwrap(),
        Claim::Claimed(_)
    ));
}

#[tokio::test]
async fn a_database_outage_is_a_503_the_provider_will_retry() {
    let env = TestEnv::new().await;
    let config = env.config(&[]);
    let unreachable = ebra_shared::db::pool("postgres://postgres@127.0.0.1:1/ebra", 1).unwrap();
    let app = router(WebhookState::new(unreachable, env.queue.clone(), Arc::new(config)).unwrap());
    let body = serde_json::to_vec(&report("pc-outage", "COMPLETED", 1, completed_at())).unwrap();
    let answer = send(
        &app,
        signed(
            &secret(WEBHOOK_SECRET),
            "msg_outage",
            Utc::now().timestamp(),
            body,
        ),
    )
    .await;
    assert_problem(&answer, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers.contains_key("retry-after"));
    assert!(
        !answer.body.to_string().contains("127.0.0.1"),
        "the cause leaked: {}",
        answer.body
    );
}

#[tokio::test]
async fn only_the_webhook_route_is_served() {
    let hook = Webhook::new(&[]).await;
    let answer = hook
        .post(
            Request::post("/callbacks/other")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_problem(&answer, StatusCode::NOT_FOUND);
    let answer = hook
        .post(Request::get(PATH).body(Body::empty()).unwrap())
        .await;
    assert_problem(&answer, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        answer.headers.get("allow").map(|v| v.to_str().unwrap()),
        Some("POST")
    );

    // `routes` has no fallback of its own, so `ebra dev` can merge it with the API's router.
    let state = WebhookState::new(
        hook.env.pool.clone(),
        hook.env.queue.clone(),
        Arc::new(hook.config.clone()),
    )
    .unwrap();
    let merged = Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .merge(routes(state))
        .fallback(|| async { StatusCode::IM_A_TEAPOT });
    assert_eq!(
        send(
            &merged,
            Request::post("/nowhere").body(Body::empty()).unwrap()
        )
        .await
        .status,
        StatusCode::IM_A_TEAPOT
    );
}

/// The Lambda path: a Function URL event (payload v2) whose body arrives base64-encoded
/// reaches the router as the raw bytes the provider signed.
#[tokio::test]
async fn a_function_url_event_with_a_base64_body_verifies_over_the_raw_bytes() {
    let hook = Webhook::new(&[]).await;
    let dialed = hook.dialed_call("+14155550120", "pc-lambda").await;
    // Non-ASCII in the body: a re-encoding anywhere would break the signature.
    let body = serde_json::to_vec(
        &json!({"callId": "pc-lambda", "status": "COMPLETED", "durationSec": 5, "note": "Zoë ☎"}),
    )
    .unwrap();
    let now = Utc::now().timestamp();
    let signature = secret(WEBHOOK_SECRET).sign("msg_lambda", now, &body);
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": PATH,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "abc.lambda-url.eu-west-1.on.aws",
            "webhook-id": "msg_lambda",
            "webhook-timestamp": now.to_string(),
            "webhook-signature": signature,
        },
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc", "domainName": "abc.lambda-url.eu-west-1.on.aws",
            "domainPrefix": "abc",
            "http": {"method": "POST", "path": PATH, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "provider"},
            "requestId": "r-1", "routeKey": "$default", "stage": "$default",
            "time": "01/Mar/2025:10:00:00 +0000", "timeEpoch": 1740823200000u64
        },
        "body": serde_json::to_value(lambda_http::Body::Binary(body)).unwrap(),
        "isBase64Encoded": true
    });
    let request = lambda_http::request::from_str(&event.to_string()).expect("a Function URL event");
    let response = router(
        WebhookState::new(
            hook.env.pool.clone(),
            hook.env.queue.clone(),
            Arc::new(hook.config.clone()),
        )
        .unwrap(),
    )
    .oneshot(request)
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        hook.call(dialed.call_id).await.0.status,
        CallStatus::Completed
    );
}
