//! The HTTP API against a real Postgres and a real SQS endpoint: every route, every bad input,
//! the outbox, idempotency under concurrency, auth, the OpenAPI document, and the Lambda path
//! with API Gateway HTTP API v2 events.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use aws_sdk_sqs::types::QueueAttributeName;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, SubsecRound as _, TimeDelta, Utc};
use common::http::{send, Reply};
use common::TestEnv;
use ebra_api::AppState;
use ebra_shared::queue::CallsQueue;
use serde_json::{json, Value};
use uuid::Uuid;

const PHONE: &str = "+14155550100";
const OTHER_PHONE: &str = "+442071838750";
const TOKEN: &str = "test-token-7f3a";

/// The router over a fresh environment, as a test's client sees it.
struct Api {
    env: TestEnv,
    router: Router,
    /// Sent as the bearer token when set.
    token: Option<String>,
}

fn state(env: &TestEnv, overrides: &[(&str, &str)], queue: Option<CallsQueue>) -> AppState {
    AppState::new(env.pool.clone(), queue, Arc::new(env.config(overrides)))
}

impl Api {
    async fn start() -> Self {
        let env = TestEnv::new().await;
        let router = ebra_api::router(state(&env, &[], Some(env.queue.clone())));
        Self {
            env,
            router,
            token: None,
        }
    }

    async fn with_token() -> Self {
        let env = TestEnv::new().await;
        let router = ebra_api::router(state(
            &env,
            &[("API_TOKEN", TOKEN)],
            Some(env.queue.clone()),
        ));
        Self {
            env,
            router,
            token: Some(TOKEN.to_owned()),
        }
    }

    /// Sends dial messages to a queue that does not exist.
    async fn with_broken_queue() -> Self {
        let env = TestEnv::new().await;
        let router = ebra_api::router(state(&env, &[], Some(env.broken_queue())));
        Self {
            env,
            router,
            token: None,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        send(&self.router, request).await
    }

    fn builder(&self, method: Method, path: &str) -> axum::http::request::Builder {
        let builder = Request::builder().method(method).uri(path);
        match &self.token {
            Some(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
            None => builder,
        }
    }

    async fn call(&self, method: Method, path: &str) -> Reply {
        self.send(self.builder(method, path).body(Body::empty()).unwrap())
            .await
    }

    async fn call_json(&self, method: Method, path: &str, body: &Value) -> Reply {
        self.call_json_with(method, path, body, &[]).await
    }

    async fn call_json_with(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut builder = self
            .builder(method, path)
            .header(header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        self.send(builder.body(Body::from(body.to_string())).unwrap())
            .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path).await
    }

    /// Cancels a PENDING call (asserting the 200).
    async fn cancel(&self, id: &str) {
        let reply = self
            .call(Method::POST, &format!("/calls/{id}/cancel"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }

    /// Creates a call and returns it (asserting the 201).
    async fn create(&self, body: Value) -> Value {
        let reply = self.call_json(Method::POST, "/calls", &body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create: {}",
            reply.text()
        );
        reply.json()
    }

    async fn calls_in_db(&self) -> i64 {
        self.env.count("SELECT count(*) FROM calls").await
    }

    /// The call ids of the messages visible on the calls queue now (removing them).
    async fn drain_call_ids(&self) -> Vec<String> {
        self.env
            .drain(&self.env.queue_url)
            .await
            .iter()
            .map(|m| {
                let body: Value = serde_json::from_str(m.body().unwrap_or_default())
                    .expect("message body is JSON");
                body["callId"].as_str().expect("callId").to_owned()
            })
            .collect()
    }

    async fn delayed_messages(&self) -> i64 {
        let attributes = self
            .env
            .sqs
            .get_queue_attributes()
            .queue_url(&self.env.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .expect("queue attributes");
        attributes
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessagesDelayed))
            .and_then(|n| n.parse().ok())
            .expect("ApproximateNumberOfMessagesDelayed")
    }

    async fn has_outbox_mark(&self, id: &str) -> bool {
        self.env
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{id}' AND outbox_due_at IS NOT NULL"
            ))
            .await
            == 1
    }
}

fn valid_call() -> Value {
    json!({"to": PHONE, "scriptId": "welcome-v1", "metadata": {"customer": "c-1"}})
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn instant(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a date-time: {value}"))
}

fn id_of(call: &Value) -> String {
    call["id"].as_str().expect("call id").to_owned()
}

// ---------------------------------------------------------------------------------------------
// POST /calls

#[tokio::test]
async fn create_answers_201_with_the_pending_call_and_sends_one_message() {
    let api = Api::start().await;
    let reply = api.call_json(Method::POST, "/calls", &valid_call()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let call = reply.json();
    let id = id_of(&call);
    assert_eq!(
        reply.header("location"),
        Some(format!("/calls/{id}").as_str())
    );
    assert_eq!(call["status"], "PENDING");
    assert_eq!(call["attempts"], 0);
    assert_eq!(call["maxAttempts"], 3);
    assert_eq!(call["to"], PHONE);
    assert_eq!(call["scriptId"], "welcome-v1");
    assert_eq!(call["metadata"], json!({"customer": "c-1"}));
    assert_eq!(call["scheduledAt"], Value::Null);
    assert_eq!(call["endedAt"], Value::Null);
    assert!(reply.header("idempotent-replayed").is_none());

    assert_eq!(api.calls_in_db().await, 1);
    assert!(
        api.has_outbox_mark(&id).await,
        "the outbox mark is set with the call"
    );
    assert_eq!(
        api.drain_call_ids().await,
        vec![id.clone()],
        "exactly one dial message, for this call"
    );

    // The call reads back as created.
    let read = api.get(&format!("/calls/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json()["createdAt"], call["createdAt"]);
}

#[tokio::test]
async fn create_without_metadata_stores_an_empty_object() {
    let api = Api::start().await;
    let call = api
        .create(json!({"to": OTHER_PHONE, "scriptId": "s"}))
        .await;
    assert_eq!(call["metadata"], json!({}));
    let call = api
        .create(json!({"to": OTHER_PHONE, "scriptId": "s", "metadata": null}))
        .await;
    assert_eq!(call["metadata"], json!({}));
}

#[tokio::test]
async fn extreme_metadata_numbers_read_back_from_postgres() {
    // jsonb hands f64::MAX back as 309 digits; found by scripts/fuzz when such a call could
    // be written but never read again (every get, list and dial of it failed).
    let api = Api::start().await;
    let metadata =
        json!({"max": f64::MAX, "min": f64::MIN, "tiny": 5e-324, "u": u64::MAX, "i": i64::MIN});
    let call = api
        .create(json!({"to": OTHER_PHONE, "scriptId": "s", "metadata": metadata}))
        .await;
    let id = id_of(&call);
    let reply = api.get(&format!("/calls/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["metadata"], metadata);
}

#[tokio::test]
async fn create_answers_201_and_keeps_the_outbox_mark_when_the_send_fails() {
    let api = Api::with_broken_queue().await;
    let call = api.create(valid_call()).await;
    let id = id_of(&call);
    assert_eq!(call["status"], "PENDING");
    assert!(
        api.has_outbox_mark(&id).await,
        "the mark stays for the reclaimer's sweep"
    );
    assert_eq!(
        api.env
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{id}' AND status = 'PENDING'"
            ))
            .await,
        1
    );
    assert!(
        api.drain_call_ids().await.is_empty(),
        "nothing reached the real queue"
    );
}

#[tokio::test]
async fn scheduled_create_is_not_due_before_its_time_and_its_message_is_delayed() {
    let api = Api::start().await;
    let scheduled = (Utc::now() + TimeDelta::minutes(10)).trunc_subsecs(6);
    let expires = scheduled + TimeDelta::hours(1);
    let call = api
        .create(json!({"to": PHONE, "scriptId": "s", "scheduledAt": rfc3339(scheduled), "expiresAt": rfc3339(expires)}))
        .await;
    assert_eq!(instant(&call["scheduledAt"]), scheduled);
    assert_eq!(instant(&call["nextRunAt"]), scheduled);
    assert_eq!(instant(&call["expiresAt"]), expires);
    assert!(
        api.drain_call_ids().await.is_empty(),
        "the message is held back"
    );
    assert_eq!(api.delayed_messages().await, 1);
    // The outbox mark waits for the delayed message, not for now.
    let id = id_of(&call);
    assert_eq!(
        api.env
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{id}' AND outbox_due_at > now() + interval '9 minutes'"
            ))
            .await,
        1
    );
}

/// SQS traffic follows dials, not the backlog (issue 12): a create gets a message only while
/// a slot is free that no other message is on its way to; the rest are parked, PENDING with
/// no message and no outbox mark, for a freed slot's nudge or the reclaimer's refill.
#[tokio::test]
async fn creates_beyond_the_free_slots_are_parked_without_a_message() {
    let env = TestEnv::new().await;
    let router = ebra_api::router(state(
        &env,
        &[("GLOBAL_CONCURRENCY", "3")],
        Some(env.queue.clone()),
    ));
    let api = Api {
        env,
        router,
        token: None,
    };
    let mut ids = Vec::new();
    for n in 0..8 {
        let call = api
            .create(json!({"to": format!("+1415555{:04}", 3100 + n), "scriptId": "s"}))
            .await;
        assert_eq!(call["status"], "PENDING");
        ids.push(id_of(&call));
    }
    let mut queued = api.drain_call_ids().await;
    queued.sort();
    let mut first_three: Vec<String> = ids[..3].iter().map(|id| id.to_string()).collect();
    first_three.sort();
    assert_eq!(queued, first_three, "one message per free slot");
    assert_eq!(
        api.env
            .count("SELECT count(*) FROM calls WHERE outbox_due_at IS NOT NULL")
            .await,
        3
    );
    // Far in the future, even with slots free: parked (SQS holds a message 15 minutes at
    // most), and the reclaimer's refill brings it once it is within the horizon.
    api.env
        .execute("UPDATE calls SET outbox_due_at = NULL")
        .await;
    api.env.execute("DELETE FROM calls").await;
    let later = api
        .create(json!({"to": PHONE, "scriptId": "s", "scheduledAt": rfc3339(Utc::now() + TimeDelta::hours(2))}))
        .await;
    assert!(api.drain_call_ids().await.is_empty());
    assert_eq!(
        api.delayed_messages().await,
        0,
        "no message for a call due in 2 h"
    );
    let id = id_of(&later);
    let config = api.env.config(&[("GLOBAL_CONCURRENCY", "3")]);
    let (_, messages) =
        ebra_shared::store::sweep::refill_free_slots(&api.env.pool, config.global_concurrency)
            .await
            .expect("refill");
    assert!(
        messages.is_empty(),
        "not within the horizon yet: {messages:?}"
    );
    api.env
        .execute(&format!(
            "UPDATE calls SET next_run_at = now() + interval '5 minutes' WHERE id = '{id}'"
        ))
        .await;
    let (_, messages) =
        ebra_shared::store::sweep::refill_free_slots(&api.env.pool, config.global_concurrency)
            .await
            .expect("refill");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].call_id.to_string(), id.to_string());
    assert!(
        messages[0].delay > std::time::Duration::from_secs(280)
            && messages[0].delay <= std::time::Duration::from_secs(300),
        "held until it is due: {:?}",
        messages[0].delay
    );
    assert_eq!(
        api.env
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{id}' AND outbox_due_at IS NOT NULL"
            ))
            .await,
        1,
        "marked, so the outbox sweep re-sends a lost message"
    );
    let (_, again) =
        ebra_shared::store::sweep::refill_free_slots(&api.env.pool, config.global_concurrency)
            .await
            .expect("refill");
    assert!(again.is_empty(), "given its message once: {again:?}");
}

/// One bad create: what is sent, the status expected, and the fields a 422 must list.
struct BadCreate {
    name: &'static str,
    content_type: Option<&'static str>,
    body: String,
    headers: Vec<(&'static str, String)>,
    status: u16,
    fields: &'static [&'static str],
}

fn bad(name: &'static str, body: Value, status: u16, fields: &'static [&'static str]) -> BadCreate {
    BadCreate {
        name,
        content_type: Some("application/json"),
        body: body.to_string(),
        headers: vec![],
        status,
        fields,
    }
}

fn bad_raw(
    name: &'static str,
    content_type: Option<&'static str>,
    body: &str,
    status: u16,
) -> BadCreate {
    BadCreate {
        name,
        content_type,
        body: body.to_owned(),
        headers: vec![],
        status,
        fields: &[],
    }
}

fn bad_key(name: &'static str, key: String) -> BadCreate {
    BadCreate {
        headers: vec![("idempotency-key", key)],
        ..bad(name, valid_call(), 400, &[])
    }
}

#[tokio::test]
async fn every_bad_create_is_a_4xx_problem_and_writes_nothing() {
    let api = Api::start().await;
    let past = rfc3339(Utc::now() - TimeDelta::minutes(1));
    let future = |minutes| rfc3339(Utc::now() + TimeDelta::minutes(minutes));
    let cases = vec![
        bad_raw(
            "malformed JSON",
            Some("application/json"),
            r#"{"to": "+14155550100", "#,
            400,
        ),
        bad_raw(
            "trailing garbage",
            Some("application/json"),
            r#"{"to": "+14155550100", "scriptId": "s"} x"#,
            400,
        ),
        bad_raw("empty body", Some("application/json"), "", 400),
        bad_raw("JSON array", Some("application/json"), "[]", 400),
        bad_raw(
            "JSON array filling the fields by position",
            Some("application/json"),
            r#"["+14155550100", "welcome-v1", null, null, null]"#,
            400,
        ),
        bad_raw("JSON null", Some("application/json"), "null", 400),
        bad_raw(
            "text/plain",
            Some("text/plain"),
            &valid_call().to_string(),
            415,
        ),
        bad_raw(
            "form content type",
            Some("application/x-www-form-urlencoded"),
            "to=1",
            415,
        ),
        bad_raw("no content type", None, &valid_call().to_string(), 415),
        bad(
            "unknown field",
            json!({"to": PHONE, "scriptId": "s", "priority": 1}),
            400,
            &[],
        ),
        bad(
            "read-only field",
            json!({"to": PHONE, "scriptId": "s", "status": "COMPLETED"}),
            400,
            &[],
        ),
        bad("missing to", json!({"scriptId": "s"}), 400, &[]),
        bad("missing scriptId", json!({"to": PHONE}), 400, &[]),
        bad(
            "to is a number",
            json!({"to": 14155550100_u64, "scriptId": "s"}),
            400,
            &[],
        ),
        bad(
            "scriptId is an object",
            json!({"to": PHONE, "scriptId": {}}),
            400,
            &[],
        ),
        bad(
            "scheduledAt is a number",
            json!({"to": PHONE, "scriptId": "s", "scheduledAt": 5}),
            400,
            &[],
        ),
        bad(
            "to without +",
            json!({"to": "14155550100", "scriptId": "s"}),
            422,
            &["to"],
        ),
        bad(
            "to with spaces",
            json!({"to": "+1 415 555 0100", "scriptId": "s"}),
            422,
            &["to"],
        ),
        bad(
            "to with letters",
            json!({"to": "+1415555abcd", "scriptId": "s"}),
            422,
            &["to"],
        ),
        bad(
            "to too long",
            json!({"to": "+1415555010012345", "scriptId": "s"}),
            422,
            &["to"],
        ),
        bad(
            "to in no numbering plan",
            json!({"to": "+999999", "scriptId": "s"}),
            422,
            &["to"],
        ),
        bad("to empty", json!({"to": "", "scriptId": "s"}), 422, &["to"]),
        bad(
            "scriptId empty",
            json!({"to": PHONE, "scriptId": ""}),
            422,
            &["scriptId"],
        ),
        bad(
            "scriptId blank",
            json!({"to": PHONE, "scriptId": "   "}),
            422,
            &["scriptId"],
        ),
        bad(
            "scriptId 129 chars",
            json!({"to": PHONE, "scriptId": "x".repeat(129)}),
            422,
            &["scriptId"],
        ),
        bad(
            "scriptId control char",
            json!({"to": PHONE, "scriptId": "a\nb"}),
            422,
            &["scriptId"],
        ),
        bad(
            "scriptId NUL",
            json!({"to": PHONE, "scriptId": "a\u{0}b"}),
            422,
            &["scriptId"],
        ),
        bad(
            "metadata array",
            json!({"to": PHONE, "scriptId": "s", "metadata": [1]}),
            422,
            &["metadata"],
        ),
        bad(
            "metadata string",
            json!({"to": PHONE, "scriptId": "s", "metadata": "x"}),
            422,
            &["metadata"],
        ),
        bad(
            "metadata over 16 KiB",
            json!({"to": PHONE, "scriptId": "s", "metadata": {"a": "x".repeat(17 * 1024)}}),
            422,
            &["metadata"],
        ),
        bad(
            "metadata with NUL",
            json!({"to": PHONE, "scriptId": "s", "metadata": {"a": "\u{0}"}}),
            422,
            &["metadata"],
        ),
        bad(
            "scheduledAt not a date",
            json!({"to": PHONE, "scriptId": "s", "scheduledAt": "tomorrow"}),
            422,
            &["scheduledAt"],
        ),
        bad(
            "scheduledAt without offset",
            json!({"to": PHONE, "scriptId": "s", "scheduledAt": "2030-01-01T09:00:00"}),
            422,
            &["scheduledAt"],
        ),
        bad(
            "expiresAt not a date",
            json!({"to": PHONE, "scriptId": "s", "expiresAt": "soon"}),
            422,
            &["expiresAt"],
        ),
        bad(
            "expiresAt in the past",
            json!({"to": PHONE, "scriptId": "s", "expiresAt": past}),
            422,
            &["expiresAt"],
        ),
        bad(
            "expiresAt before scheduledAt",
            json!({"to": PHONE, "scriptId": "s", "scheduledAt": future(60), "expiresAt": future(30)}),
            422,
            &["expiresAt"],
        ),
        bad(
            "expiresAt equal to scheduledAt",
            json!({"to": PHONE, "scriptId": "s", "scheduledAt": "2100-01-01T00:00:00Z", "expiresAt": "2100-01-01T01:00:00+01:00"}),
            422,
            &["expiresAt"],
        ),
        bad(
            "every field invalid",
            json!({"to": "555", "scriptId": "", "metadata": [], "scheduledAt": "x", "expiresAt": "y"}),
            422,
            &["to", "scriptId", "metadata", "scheduledAt", "expiresAt"],
        ),
        bad(
            "body over 64 KiB",
            json!({"to": PHONE, "scriptId": "s", "metadata": {"a": "x".repeat(70 * 1024)}}),
            413,
            &[],
        ),
        bad_key("empty Idempotency-Key", String::new()),
        bad_key("Idempotency-Key of 256 chars", "k".repeat(256)),
        bad_key("Idempotency-Key with a tab", "a\tb".to_owned()),
    ];
    for case in cases {
        let mut builder = Request::builder().method(Method::POST).uri("/calls");
        if let Some(content_type) = case.content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in &case.headers {
            builder = builder.header(*name, value.as_str());
        }
        let reply = api
            .send(builder.body(Body::from(case.body.clone())).unwrap())
            .await;
        assert_eq!(
            reply.status.as_u16(),
            case.status,
            "{}: {}",
            case.name,
            reply.text()
        );
        let problem = reply.problem(case.status);
        if case.status == 422 {
            assert_eq!(reply.fields(), case.fields, "{}: {problem}", case.name);
        }
        assert_eq!(api.calls_in_db().await, 0, "{} wrote a call", case.name);
    }
    assert!(api.drain_call_ids().await.is_empty(), "no message was sent");
}

#[tokio::test]
async fn a_body_just_under_the_limit_is_read() {
    let api = Api::start().await;
    // 60 KiB of JSON whose metadata is too big: the body is read (422), not refused (413).
    let body = json!({"to": PHONE, "scriptId": "s", "metadata": {"a": "x".repeat(60 * 1024)}});
    let reply = api.call_json(Method::POST, "/calls", &body).await;
    reply.problem(422);
    assert_eq!(reply.fields(), ["metadata"]);
}

// ---------------------------------------------------------------------------------------------
// Idempotency-Key

#[tokio::test]
async fn a_retried_create_returns_the_original_call() {
    let api = Api::start().await;
    let key = [("idempotency-key", "order-42")];
    let first = api
        .call_json_with(Method::POST, "/calls", &valid_call(), &key)
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let original = first.json();

    // The same request, keys in another order: the original call, not a new one.
    let same = json!({"metadata": {"customer": "c-1"}, "scriptId": "welcome-v1", "to": PHONE});
    let retry = api
        .call_json_with(Method::POST, "/calls", &same, &key)
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.header("location"), first.header("location"));
    assert_eq!(retry.json(), original);

    // The same key with another request.
    let other = json!({"to": PHONE, "scriptId": "welcome-v2"});
    let reused = api
        .call_json_with(Method::POST, "/calls", &other, &key)
        .await;
    reused.problem(422);
    assert_eq!(
        reused.json()["type"],
        "urn:ebra:problem:idempotency-key-reused"
    );

    // Another key is another call.
    let fresh = api
        .call_json_with(
            Method::POST,
            "/calls",
            &valid_call(),
            &[("idempotency-key", "order-43")],
        )
        .await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_ne!(fresh.json()["id"], original["id"]);

    assert_eq!(api.calls_in_db().await, 2);
    assert_eq!(api.drain_call_ids().await.len(), 2, "replays send nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_key_make_one_call() {
    let api = Api::start().await;
    // Twenty tasks on four threads, all released at once.
    let start = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (router, start) = (api.router.clone(), start.clone());
            let request = Request::builder()
                .method(Method::POST)
                .uri("/calls")
                .header(header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", "burst-1")
                .body(Body::from(valid_call().to_string()))
                .unwrap();
            tokio::spawn(async move {
                start.wait().await;
                send(&router, request).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("a request task"));
    }
    let ids: BTreeSet<String> = replies
        .iter()
        .map(|reply| {
            assert!(
                matches!(reply.status.as_u16(), 200 | 201),
                "{}: {}",
                reply.status,
                reply.text()
            );
            id_of(&reply.json())
        })
        .collect();
    assert_eq!(ids.len(), 1, "every answer carries the same call: {ids:?}");
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.header("idempotent-replayed") == Some("true"))
            .count(),
        19
    );
    assert_eq!(api.calls_in_db().await, 1);
    assert_eq!(api.drain_call_ids().await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// GET /calls/{id}

#[tokio::test]
async fn get_returns_the_call_with_its_dials() {
    let api = Api::start().await;
    let call = api.create(valid_call()).await;
    let id = id_of(&call);

    let reply = api.get(&format!("/calls/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["dials"], json!([]));

    let (first_key, second_key) = (Uuid::new_v4(), Uuid::new_v4());
    api.env
        .execute(&format!(
            "UPDATE calls SET attempts = 2 WHERE id = '{id}';
             INSERT INTO call_attempts (id, call_id, attempt_no, idempotency_key, slot_no, dial_state, error, ended_at)
               VALUES ('{}', '{id}', 1, '{first_key}', 1, 'REJECTED', 'provider answered 400', now());
             INSERT INTO call_attempts (id, call_id, attempt_no, idempotency_key, slot_no, dial_state, provider_call_id, dialed_at)
               VALUES ('{}', '{id}', 2, '{second_key}', 1, 'ACCEPTED', 'prov-123', now());",
            Uuid::new_v4(),
            Uuid::new_v4()
        ))
        .await;
    let body = api.get(&format!("/calls/{id}")).await.json();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["attempts"], 2);
    let dials = body["dials"].as_array().expect("dials");
    assert_eq!(dials.len(), 2);
    assert_eq!(dials[0]["attempt"], 1);
    assert_eq!(dials[0]["dialState"], "REJECTED");
    assert_eq!(dials[0]["error"], "provider answered 400");
    assert_eq!(dials[0]["idempotencyKey"], first_key.to_string());
    assert_eq!(dials[1]["attempt"], 2);
    assert_eq!(dials[1]["providerCallId"], "prov-123");
    assert_eq!(dials[1]["idempotencyKey"], second_key.to_string());
}

#[tokio::test]
async fn get_unknown_or_malformed_id_is_a_problem() {
    let api = Api::start().await;
    let unknown = api.get(&format!("/calls/{}", Uuid::new_v4())).await;
    assert_eq!(
        unknown.problem(404)["type"],
        "urn:ebra:problem:call-not-found"
    );
    api.get("/calls/not-a-uuid").await.problem(400);
    api.get("/calls/123").await.problem(400);
}

// ---------------------------------------------------------------------------------------------
// PATCH /calls/{id}

#[tokio::test]
async fn patch_changes_a_pending_call() {
    let api = Api::start().await;
    let call = api.create(valid_call()).await;
    let id = id_of(&call);
    api.drain_call_ids().await;

    let patch = json!({"to": OTHER_PHONE, "scriptId": "welcome-v2", "metadata": {"customer": "c-2", "n": [1, 2]}});
    let reply = api
        .call_json(Method::PATCH, &format!("/calls/{id}"), &patch)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let changed = reply.json();
    assert_eq!(changed["to"], OTHER_PHONE);
    assert_eq!(changed["scriptId"], "welcome-v2");
    assert_eq!(changed["metadata"], json!({"customer": "c-2", "n": [1, 2]}));
    assert_eq!(changed["status"], "PENDING");
    assert_eq!(changed["createdAt"], call["createdAt"]);
    assert_eq!(
        api.get(&format!("/calls/{id}")).await.json()["to"],
        OTHER_PHONE
    );
    assert!(
        api.drain_call_ids().await.is_empty(),
        "an unchanged schedule needs no new message"
    );

    // Null metadata resets it; a JSON merge patch content type is JSON too.
    let request = Request::builder()
        .method(Method::PATCH)
        .uri(format!("/calls/{id}"))
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .body(Body::from(r#"{"metadata": null}"#))
        .unwrap();
    let reply = api.send(request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["metadata"], json!({}));
}

#[tokio::test]
async fn patch_of_the_schedule_sends_a_message_and_null_clears_it() {
    let api = Api::start().await;
    let call = api.create(valid_call()).await;
    let id = id_of(&call);
    api.drain_call_ids().await;

    let later = (Utc::now() + TimeDelta::minutes(5)).trunc_subsecs(6);
    let reply = api
        .call_json(
            Method::PATCH,
            &format!("/calls/{id}"),
            &json!({"scheduledAt": rfc3339(later)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let changed = reply.json();
    assert_eq!(instant(&changed["scheduledAt"]), later);
    assert_eq!(instant(&changed["nextRunAt"]), later);
    assert_eq!(
        api.delayed_messages().await,
        1,
        "a message timed for the new schedule"
    );
    assert!(api.has_outbox_mark(&id).await);

    let reply = api
        .call_json(
            Method::PATCH,
            &format!("/calls/{id}"),
            &json!({"scheduledAt": null}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let cleared = reply.json();
    assert_eq!(cleared["scheduledAt"], Value::Null);
    assert!(instant(&cleared["nextRunAt"]) <= Utc::now(), "due now");
    assert_eq!(api.drain_call_ids().await, vec![id], "a message for now");
}

#[tokio::test]
async fn patch_with_a_failed_send_still_answers_200_and_keeps_the_mark() {
    let api = Api::with_broken_queue().await;
    let id = id_of(&api.create(valid_call()).await);
    let later = rfc3339(Utc::now() + TimeDelta::minutes(5));
    let reply = api
        .call_json(
            Method::PATCH,
            &format!("/calls/{id}"),
            &json!({"scheduledAt": later}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(api.has_outbox_mark(&id).await);
}

#[tokio::test]
async fn patch_of_a_call_no_longer_pending_is_a_conflict() {
    let api = Api::start().await;
    let done = id_of(&api.create(valid_call()).await);
    api.env
        .execute(&format!(
            "UPDATE calls SET status = 'COMPLETED', outcome = 'COMPLETED', ended_at = now(), outbox_due_at = NULL WHERE id = '{done}'"
        ))
        .await;
    let reply = api
        .call_json(
            Method::PATCH,
            &format!("/calls/{done}"),
            &json!({"scriptId": "x"}),
        )
        .await;
    assert_eq!(reply.problem(409)["type"], "urn:ebra:problem:not-pending");
    assert_eq!(
        api.get(&format!("/calls/{done}")).await.json()["scriptId"],
        "welcome-v1"
    );

    let canceled = id_of(&api.create(valid_call()).await);
    api.cancel(&canceled).await;
    api.call_json(
        Method::PATCH,
        &format!("/calls/{canceled}"),
        &json!({"to": OTHER_PHONE}),
    )
    .await
    .problem(409);
}

#[tokio::test]
async fn every_bad_patch_is_a_4xx_problem_and_changes_nothing() {
    let api = Api::start().await;
    let expires = Utc::now() + TimeDelta::hours(1);
    let call = api
        .create(json!({"to": PHONE, "scriptId": "s", "expiresAt": rfc3339(expires)}))
        .await;
    let id = id_of(&call);
    let path = format!("/calls/{id}");
    let snapshot = "SELECT count(*) FROM calls WHERE phone = '+14155550100' AND script_id = 's' \
                    AND metadata = '{}' AND scheduled_at IS NULL";
    assert_eq!(api.env.count(snapshot).await, 1);

    let cases: Vec<(&str, Value, u16, &[&str])> = vec![
        ("unknown field", json!({"priority": 1}), 400, &[]),
        (
            "expiresAt is not patchable",
            json!({"expiresAt": rfc3339(expires)}),
            400,
            &[],
        ),
        (
            "status is not patchable",
            json!({"status": "CANCELED"}),
            400,
            &[],
        ),
        ("wrong type", json!({"to": 1}), 400, &[]),
        ("an empty array", json!([]), 400, &[]),
        ("an array by position", json!(["+14155550100"]), 400, &[]),
        ("a string", json!("x"), 400, &[]),
        ("nothing to change", json!({}), 422, &[]),
        ("to null", json!({"to": null}), 422, &["to"]),
        (
            "scriptId null",
            json!({"scriptId": null}),
            422,
            &["scriptId"],
        ),
        ("bad to", json!({"to": "+1"}), 422, &["to"]),
        ("bad scriptId", json!({"scriptId": ""}), 422, &["scriptId"]),
        ("bad metadata", json!({"metadata": 5}), 422, &["metadata"]),
        (
            "bad scheduledAt",
            json!({"scheduledAt": "noon"}),
            422,
            &["scheduledAt"],
        ),
        (
            "every field bad",
            json!({"to": "x", "scriptId": "", "metadata": [], "scheduledAt": "y"}),
            422,
            &["to", "scriptId", "metadata", "scheduledAt"],
        ),
        (
            "scheduledAt after expiresAt",
            json!({"scheduledAt": rfc3339(expires + TimeDelta::minutes(1))}),
            422,
            &["scheduledAt"],
        ),
        (
            "scheduledAt at expiresAt",
            json!({"scheduledAt": rfc3339(expires)}),
            422,
            &["scheduledAt"],
        ),
        (
            "over 64 KiB",
            json!({"metadata": {"a": "x".repeat(70 * 1024)}}),
            413,
            &[],
        ),
    ];
    for (name, body, status, fields) in cases {
        let reply = api.call_json(Method::PATCH, &path, &body).await;
        assert_eq!(reply.status.as_u16(), status, "{name}: {}", reply.text());
        reply.problem(status);
        if status == 422 && !fields.is_empty() {
            assert_eq!(reply.fields(), fields, "{name}");
        }
        assert_eq!(api.env.count(snapshot).await, 1, "{name} changed the call");
    }
    let raw = api
        .send(
            Request::builder()
                .method(Method::PATCH)
                .uri(&path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{"))
                .unwrap(),
        )
        .await;
    raw.problem(400);
    let no_type = api
        .send(
            Request::builder()
                .method(Method::PATCH)
                .uri(&path)
                .body(Body::from(r#"{"scriptId": "t"}"#))
                .unwrap(),
        )
        .await;
    no_type.problem(415);
    api.call_json(Method::PATCH, "/calls/nope", &json!({"scriptId": "t"}))
        .await
        .problem(400);
    api.call_json(
        Method::PATCH,
        &format!("/calls/{}", Uuid::new_v4()),
        &json!({"scriptId": "t"}),
    )
    .await
    .problem(404);
    assert_eq!(api.env.count(snapshot).await, 1);
    assert_eq!(api.calls_in_db().await, 1);
}

// ---------------------------------------------------------------------------------------------
// POST /calls/{id}/cancel

#[tokio::test]
async fn cancel_ends_a_pending_call_once() {
    let api = Api::start().await;
    let id = id_of(&api.create(valid_call()).await);
    let reply = api.call(Method::POST, &format!("/calls/{id}/cancel")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let canceled = reply.json();
    assert_eq!(canceled["status"], "CANCELED");
    assert!(canceled["endedAt"].is_string());
    assert!(
        !api.has_outbox_mark(&id).await,
        "a canceled call needs no message"
    );

    assert_eq!(
        api.call(Method::POST, &format!("/calls/{id}/cancel"))
            .await
            .problem(409)["type"],
        "urn:ebra:problem:not-pending"
    );
    api.call(Method::POST, &format!("/calls/{}/cancel", Uuid::new_v4()))
        .await
        .problem(404);
    api.call(Method::POST, "/calls/zzz/cancel")
        .await
        .problem(400);
    assert_eq!(
        api.get(&format!("/calls/{id}")).await.json()["status"],
        "CANCELED"
    );
}

#[tokio::test]
async fn cancel_of_a_call_in_progress_is_a_conflict() {
    let api = Api::start().await;
    let id = id_of(&api.create(valid_call()).await);
    api.env
        .execute(&format!(
            "UPDATE calls SET status = 'IN_PROGRESS', started_at = now(), outbox_due_at = NULL, attempts = 1 WHERE id = '{id}'"
        ))
        .await;
    let reply = api.call(Method::POST, &format!("/calls/{id}/cancel")).await;
    assert!(reply.problem(409)["detail"]
        .as_str()
        .unwrap()
        .contains("IN_PROGRESS"));
    assert_eq!(
        api.get(&format!("/calls/{id}")).await.json()["status"],
        "IN_PROGRESS"
    );
}

// ---------------------------------------------------------------------------------------------
// GET /calls

#[tokio::test]
async fn list_pages_newest_first_with_a_total_and_a_cursor() {
    let api = Api::start().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(id_of(
            &api.create(json!({"to": PHONE, "scriptId": format!("s{n}")}))
                .await,
        ));
    }
    ids.reverse(); // newest first

    let page1 = api.get("/calls?page=1&pageSize=2").await;
    assert_eq!(page1.status, StatusCode::OK, "{}", page1.text());
    let page1 = page1.json();
    assert_eq!(page1["page"], 1);
    assert_eq!(page1["pageSize"], 2);
    assert_eq!(page1["total"], 5);
    assert_eq!(page1["totalRelation"], "eq");
    let listed = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect()
    };
    assert_eq!(listed(&page1), ids[0..2]);
    let page3 = api.get("/calls?page=3&pageSize=2").await.json();
    assert_eq!(listed(&page3), ids[4..5]);
    assert_eq!(page3["nextCursor"], Value::Null, "a short page is the last");
    let beyond = api.get("/calls?page=4&pageSize=2").await.json();
    assert_eq!(beyond["items"], json!([]));
    assert_eq!(beyond["total"], 5);

    // Defaults: page 1 of 20.
    let all = api.get("/calls").await.json();
    assert_eq!(all["page"], 1);
    assert_eq!(all["pageSize"], 20);
    assert_eq!(listed(&all), ids);

    // Cursor mode: the same order, no total.
    let mut seen = Vec::new();
    let mut cursor = page1["nextCursor"]
        .as_str()
        .expect("a full page has a next cursor")
        .to_owned();
    seen.extend(listed(&page1));
    loop {
        let page = api.get(&format!("/calls?pageSize=2&cursor={cursor}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let page = page.json();
        assert_eq!(page["total"], Value::Null);
        assert_eq!(page["totalRelation"], Value::Null);
        assert_eq!(page["page"], Value::Null);
        seen.extend(listed(&page));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn list_total_stops_counting_at_ten_thousand() {
    let api = Api::start().await;
    // 10,001 PENDING calls and one CANCELED, written directly: the API path is covered
    // above, this is about counting.
    api.env
        .execute(
            "INSERT INTO calls (id, phone, script_id, metadata, status, max_attempts, next_run_at, created_at, updated_at) \
             SELECT gen_random_uuid(), '+1415555' || lpad(n::text, 4, '0'), 'bulk', '{}', 'PENDING', 3, now(), \
                    now() - make_interval(secs => n), now() \
               FROM generate_series(1, 10001) AS n",
        )
        .await;
    let canceled = id_of(&api.create(valid_call()).await);
    api.cancel(&canceled).await;

    let all = api.get("/calls?pageSize=1").await.json();
    assert_eq!(all["total"], 10_000, "counting stops at the limit");
    assert_eq!(all["totalRelation"], "gte", "and says it is a lower bound");
    assert_eq!(all["items"][0]["id"], canceled.as_str(), "newest first");
    let pending = api
        .get("/calls?status=PENDING&page=2&pageSize=5")
        .await
        .json();
    assert_eq!(pending["total"], 10_000);
    assert_eq!(pending["totalRelation"], "gte");
    assert_eq!(pending["items"].as_array().unwrap().len(), 5);
    let few = api.get("/calls?status=CANCELED").await.json();
    assert_eq!(few["total"], 1);
    assert_eq!(few["totalRelation"], "eq");
    // Pages beyond the counted total still answer: the rows are there.
    let deep = api.get("/calls?page=501&pageSize=20").await.json();
    assert_eq!(deep["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn list_filters_by_status() {
    let api = Api::start().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(id_of(&api.create(valid_call()).await));
    }
    for id in &ids[1..3] {
        api.cancel(id).await;
    }
    let canceled = api.get("/calls?status=CANCELED").await.json();
    assert_eq!(canceled["total"], 2);
    let listed: Vec<String> = canceled["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, vec![ids[2].clone(), ids[1].clone()]);
    assert!(canceled["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["status"] == "CANCELED"));

    let pending = api.get("/calls?status=PENDING&pageSize=1").await.json();
    assert_eq!(pending["total"], 2);
    assert_eq!(pending["items"][0]["id"], ids[3].as_str());
    let cursor = pending["nextCursor"].as_str().unwrap();
    let next = api
        .get(&format!("/calls?status=PENDING&pageSize=1&cursor={cursor}"))
        .await
        .json();
    assert_eq!(next["items"][0]["id"], ids[0].as_str());

    let none = api.get("/calls?status=COMPLETED").await.json();
    assert_eq!(none["total"], 0);
    assert_eq!(none["items"], json!([]));
}

#[tokio::test]
async fn every_bad_list_query_is_a_400_problem() {
    let api = Api::start().await;
    api.create(valid_call()).await;
    let cursor = {
        let page = api.get("/calls?pageSize=1").await.json();
        page["nextCursor"].as_str().expect("cursor").to_owned()
    };
    let cases = [
        "status=pending",
        "status=NOPE",
        "status=",
        "pageSize=0",
        "pageSize=101",
        "pageSize=-1",
        "pageSize=ten",
        "pageSize=",
        "page=0",
        "page=-1",
        "page=abc",
        "page=1.5",
        "page=",
        "page=99999999999",
        "cursor=garbage!",
        "cursor=",
        "cursor=bm90LWEtY3Vyc29y",
        &format!("page=1&cursor={cursor}"),
        "limit=10",
        "pageSize=10&pageSize=20",
    ];
    for query in cases {
        let reply = api.get(&format!("/calls?{query}")).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            reply.text()
        );
        reply.problem(400);
    }
    // Every bad parameter is listed at once.
    let reply = api
        .get("/calls?status=x&page=0&pageSize=500&cursor=zz")
        .await;
    reply.problem(400);
    assert_eq!(reply.fields(), ["status", "page", "pageSize", "cursor"]);
}

// ---------------------------------------------------------------------------------------------
// GET /metrics

const STATUSES: [&str; 6] = [
    "PENDING",
    "IN_PROGRESS",
    "COMPLETED",
    "FAILED",
    "EXPIRED",
    "CANCELED",
];

#[tokio::test]
async fn metrics_in_json_count_every_status() {
    let api = Api::start().await;
    let empty = api.get("/metrics").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.header("content-type"), Some("application/json"));
    let empty = empty.json();
    for status in STATUSES {
        assert_eq!(empty["calls"][status], 0, "{status} in {empty}");
    }
    assert_eq!(empty["calls"].as_object().unwrap().len(), 6);
    assert_eq!(empty["inProgress"], 0);
    assert_eq!(empty["globalConcurrency"], 30);
    assert_eq!(empty["oldestDuePendingAgeSeconds"], Value::Null);
    assert_eq!(empty["outboxUnconfirmed"], 0);

    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(id_of(&api.create(valid_call()).await));
        }
        ids
    };
    api.call(Method::POST, &format!("/calls/{}/cancel", ids[0]))
        .await;
    api.env
        .execute(&format!(
            "UPDATE calls SET status = 'IN_PROGRESS', started_at = now(), outbox_due_at = NULL, attempts = 1 WHERE id = '{0}';
             UPDATE call_slots SET call_id = '{0}', claimed_at = now(), phone = (SELECT phone FROM calls WHERE id = '{0}') WHERE slot_no = 1;
             UPDATE calls SET created_at = now() - interval '1 minute', next_run_at = now() - interval '1 minute' WHERE id = '{1}';",
            ids[1], ids[2]
        ))
        .await;
    let metrics = api.get("/metrics").await.json();
    assert_eq!(metrics["calls"]["PENDING"], 2);
    assert_eq!(metrics["calls"]["IN_PROGRESS"], 1);
    assert_eq!(metrics["calls"]["CANCELED"], 1);
    assert_eq!(metrics["calls"]["COMPLETED"], 0);
    assert_eq!(metrics["inProgress"], 1);
    assert_eq!(metrics["outboxUnconfirmed"], 2);
    let age = metrics["oldestDuePendingAgeSeconds"]
        .as_f64()
        .expect("an age");
    assert!((59.0..120.0).contains(&age), "oldest due age {age}");
}

#[tokio::test]
async fn metrics_in_prometheus_text_when_asked() {
    let api = Api::start().await;
    api.create(valid_call()).await;
    let by_accept = api
        .send(
            Request::builder()
                .uri("/metrics")
                .header(header::ACCEPT, "text/plain")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let by_query = api.get("/metrics?format=prometheus").await;
    for reply in [&by_accept, &by_query] {
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            reply
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
            "{:?}",
            reply.header("content-type")
        );
        let text = reply.text();
        for status in STATUSES {
            let expected = if status == "PENDING" { 1 } else { 0 };
            let line = format!("ebra_calls{{status=\"{status}\"}} {expected}");
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        for metric in [
            "ebra_calls",
            "ebra_calls_in_progress",
            "ebra_global_concurrency",
            "ebra_oldest_due_pending_age_seconds",
            "ebra_outbox_unconfirmed",
        ] {
            assert!(
                text.contains(&format!("# HELP {metric} ")),
                "HELP for {metric}"
            );
            assert!(
                text.contains(&format!("# TYPE {metric} gauge\n")),
                "TYPE for {metric}"
            );
        }
        assert!(
            text.lines().any(|l| l == "ebra_global_concurrency 30"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l == "ebra_calls_in_progress 0"),
            "{text}"
        );
        // Every sample line is `name{labels} number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "sample {line:?}");
        }
    }
    let json = api.get("/metrics?format=json").await;
    assert_eq!(json.header("content-type"), Some("application/json"));
    api.get("/metrics?format=xml").await.problem(400);
    api.get("/metrics?verbose=1").await.problem(400);
}

// ---------------------------------------------------------------------------------------------
// Auth

#[tokio::test]
async fn with_a_token_every_route_but_openapi_needs_it() {
    let mut api = Api::with_token().await;
    let id = id_of(&api.create(valid_call()).await);
    let routes = [
        (Method::POST, "/calls".to_owned()),
        (Method::GET, "/calls".to_owned()),
        (Method::GET, format!("/calls/{id}")),
        (Method::PATCH, format!("/calls/{id}")),
        (Method::POST, format!("/calls/{id}/cancel")),
        (Method::GET, format!("/calls/{id}/webhooks")),
        (Method::GET, format!("/calls/{id}/events")),
        (
            Method::POST,
            format!("/events/{}/redeliver", Uuid::new_v4()),
        ),
        (Method::POST, "/campaigns".to_owned()),
        (Method::GET, "/campaigns".to_owned()),
        (Method::GET, format!("/campaigns/{}", Uuid::new_v4())),
        (Method::POST, format!("/campaigns/{}/pause", Uuid::new_v4())),
        (
            Method::POST,
            format!("/campaigns/{}/resume", Uuid::new_v4()),
        ),
        (
            Method::POST,
            format!("/campaigns/{}/cancel", Uuid::new_v4()),
        ),
        (Method::POST, format!("/campaigns/{}/calls", Uuid::new_v4())),
        (Method::POST, "/webhook-endpoints".to_owned()),
        (Method::GET, "/webhook-endpoints".to_owned()),
        (
            Method::GET,
            format!("/webhook-endpoints/{}", Uuid::new_v4()),
        ),
        (
            Method::PATCH,
            format!("/webhook-endpoints/{}", Uuid::new_v4()),
        ),
        (
            Method::DELETE,
            format!("/webhook-endpoints/{}", Uuid::new_v4()),
        ),
        (
            Method::POST,
            format!("/webhook-endpoints/{}/rotate-secret", Uuid::new_v4()),
        ),
        (Method::GET, "/metrics".to_owned()),
        (Method::GET, "/metrics/history".to_owned()),
    ];
    let credentials = [
        None,
        Some("Bearer wrong-token"),
        Some("Basic dGVzdA=="),
        Some("Bearer"),
        Some(TOKEN),
    ];
    api.token = None;
    for (method, path) in &routes {
        for credential in credentials {
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(credential) = credential {
                builder = builder.header(header::AUTHORIZATION, credential);
            }
            let reply = api
                .send(builder.body(Body::from(valid_call().to_string())).unwrap())
                .await;
            reply.problem(401);
            assert!(
                reply
                    .header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{method} {path}: WWW-Authenticate"
            );
        }
    }
    assert_eq!(api.calls_in_db().await, 1, "no unauthorized write");

    let open = api.get("/openapi.json").await;
    assert_eq!(open.status, StatusCode::OK);

    // The scheme is case-insensitive.
    let lower = api
        .send(
            Request::builder()
                .uri("/calls")
                .header(header::AUTHORIZATION, format!("bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(lower.status, StatusCode::OK, "{}", lower.text());
    api.token = Some(TOKEN.to_owned());
    assert_eq!(
        api.get(&format!("/calls/{id}")).await.json()["status"],
        "PENDING"
    );
}

#[tokio::test]
async fn without_a_token_no_route_needs_one() {
    let api = Api::start().await;
    assert_eq!(api.get("/calls").await.status, StatusCode::OK);
    assert_eq!(api.get("/metrics").await.status, StatusCode::OK);
    let with_header = api
        .send(
            Request::builder()
                .uri("/calls")
                .header(header::AUTHORIZATION, "Bearer anything")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(with_header.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Routing, OpenAPI, errors

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let api = Api::start().await;
    let missing = api.get("/nope").await;
    assert_eq!(missing.problem(404)["type"], "urn:ebra:problem:not-found");
    api.get("/calls/").await.problem(404);
    api.get(&format!("/calls/{}/dials", Uuid::new_v4()))
        .await
        .problem(404);

    let delete = api.call(Method::DELETE, "/calls").await;
    delete.problem(405);
    let allow = delete.header("allow").expect("Allow header");
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow}"
    );
    api.call(Method::PUT, &format!("/calls/{}", Uuid::new_v4()))
        .await
        .problem(405);
    api.call(Method::GET, &format!("/calls/{}/cancel", Uuid::new_v4()))
        .await
        .problem(405);
    api.call(Method::POST, "/metrics").await.problem(405);
}

/// The methods a document lists for each path.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn openapi_lists_exactly_the_routes_served() {
    let api = Api::with_token().await;
    let reply = api
        .send(
            Request::builder()
                .uri("/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "served without the token");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );

    let operations = documented_operations(&doc);
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/calls"),
        ("GET", "/calls"),
        ("GET", "/calls/{id}"),
        ("PATCH", "/calls/{id}"),
        ("POST", "/calls/{id}/cancel"),
        ("GET", "/calls/{id}/webhooks"),
        ("GET", "/calls/{id}/events"),
        ("POST", "/events/{id}/redeliver"),
        ("POST", "/campaigns"),
        ("GET", "/campaigns"),
        ("GET", "/campaigns/{id}"),
        ("POST", "/campaigns/{id}/pause"),
        ("POST", "/campaigns/{id}/resume"),
        ("POST", "/campaigns/{id}/cancel"),
        ("POST", "/campaigns/{id}/calls"),
        ("POST", "/webhook-endpoints"),
        ("GET", "/webhook-endpoints"),
        ("GET", "/webhook-endpoints/{id}"),
        ("PATCH", "/webhook-endpoints/{id}"),
        ("DELETE", "/webhook-endpoints/{id}"),
        ("POST", "/webhook-endpoints/{id}/rotate-secret"),
        ("POST", "/suppressions"),
        ("GET", "/suppressions"),
        ("GET", "/suppressions/{phone}"),
        ("PUT", "/suppressions/{phone}"),
        ("DELETE", "/suppressions/{phone}"),
        ("GET", "/metrics"),
        ("GET", "/metrics/history"),
        ("GET", "/openapi.json"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(operations, expected);

    // Every documented operation is served (an existing call, endpoint and event; valid
    // bodies). A public address needs no DNS lookup.
    let endpoint_body = json!({"url": "https://93.184.216.34/ebra"});
    let id = id_of(&api.create(valid_call()).await);
    let events = api.get(&format!("/calls/{id}/events")).await.json();
    let event_id = events["items"][0]["id"]
        .as_str()
        .expect("call.created")
        .to_owned();
    for (method, path) in &operations {
        let concrete = if path.starts_with("/webhook-endpoints/") {
            // A fresh endpoint for each operation (one of them deletes it).
            let created = api
                .call_json(Method::POST, "/webhook-endpoints", &endpoint_body)
                .await;
            path.replace("{id}", &id_of(&created.json()))
        } else if path.starts_with("/campaigns/") {
            // A fresh campaign for each operation (one of them cancels it).
            let created = api
                .call_json(Method::POST, "/campaigns", &json!({"name": "every route"}))
                .await;
            path.replace("{id}", &id_of(&created.json()))
        } else if path.starts_with("/events/") {
            path.replace("{id}", &event_id)
        } else if path.starts_with("/suppressions/") {
            // On the list before each operation (one of them removes it).
            api.call(Method::PUT, "/suppressions/%2B14155550177").await;
            path.replace("{phone}", "%2B14155550177")
        } else {
            path.replace("{id}", &id)
        };
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        if (&method, path.as_str()) == (&Method::POST, "/suppressions") {
            let request = api
                .builder(Method::POST, "/suppressions")
                .header(header::CONTENT_TYPE, "text/csv")
                .body(Body::from("+14155550178\n"))
                .unwrap();
            let reply = api.send(request).await;
            assert!(
                reply.status.is_success(),
                "POST /suppressions: {}",
                reply.text()
            );
            continue;
        }
        let body = match (&method, path.as_str()) {
            (&Method::POST, "/calls") => valid_call(),
            (&Method::POST, "/webhook-endpoints") => endpoint_body.clone(),
            (&Method::POST, "/campaigns") => json!({"name": "documented"}),
            (&Method::POST, "/campaigns/{id}/calls") => {
                json!({"calls": [{"to": "+14155550199", "scriptId": "s"}]})
            }
            (&Method::PATCH, "/webhook-endpoints/{id}") => json!({"description": "patched"}),
            (&Method::PATCH, _) => json!({"scriptId": "patched"}),
            _ => json!({}),
        };
        let reply = api.call_json(method.clone(), &concrete, &body).await;
        assert!(
            reply.status.is_success(),
            "{method} {concrete}: {} {}",
            reply.status,
            reply.text()
        );
    }
    // ...and no other method on a documented path: the Allow header names exactly the
    // documented ones (HEAD comes with GET).
    let paths: BTreeSet<&String> = operations.iter().map(|(_, p)| p).collect();
    for path in paths {
        let documented: BTreeSet<&str> = operations
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(m, _)| m.as_str())
            .collect();
        let concrete = path.replace("{id}", &id);
        // A method no route serves.
        let reply = api.call(Method::TRACE, &concrete).await;
        reply.problem(405);
        let allowed: BTreeSet<&str> = reply
            .header("allow")
            .expect("Allow")
            .split(',')
            .map(str::trim)
            .filter(|m| *m != "HEAD")
            .collect();
        assert_eq!(allowed, documented, "{path}");
    }

    // The bearer scheme, required by every operation but the document's own.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["type"],
        "http"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(
        doc["paths"]["/openapi.json"]["get"]["security"],
        json!([{}])
    );

    // Every error response is a problem, and every guarded operation documents 401.
    for (method, path) in &operations {
        let responses = doc["paths"][path][method.to_lowercase()]["responses"]
            .as_object()
            .expect("responses");
        for (status, response) in responses {
            if !status.starts_with('2') {
                assert_eq!(
                    response["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
        if path != "/openapi.json" {
            for status in ["401", "500", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lacks {status}"
                );
            }
        }
    }
    let create = &doc["paths"]["/calls"]["post"]["responses"];
    for status in ["201", "200", "400", "413", "415", "422"] {
        assert!(create.get(status).is_some(), "POST /calls lacks {status}");
    }
    for status in ["400", "404", "409", "413", "415", "422"] {
        assert!(
            doc["paths"]["/calls/{id}"]["patch"]["responses"]
                .get(status)
                .is_some(),
            "PATCH lacks {status}"
        );
    }
    for schema in [
        "Call",
        "DialAttempt",
        "CallStatus",
        "CallOutcome",
        "Problem",
        "FieldError",
        "CreateCallRequest",
        "PatchCallRequest",
        "ReceivedWebhook",
        "WebhookList",
        "InProgressHistory",
        "EventBody",
        "EventType",
        "CallResult",
        "CallSnapshot",
        "RecordedEvent",
        "EventDelivery",
        "WebhookEndpoint",
        "EndpointWithSecret",
        "CreateEndpointRequest",
        "PatchEndpointRequest",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema}"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["CreateCallRequest"]["additionalProperties"],
        false
    );
    // Campaign events: their types, their data (the campaign with its progress), an example.
    let types = doc["components"]["schemas"]["EventType"]["enum"].to_string();
    for kind in [
        "call.completed",
        "campaign.created",
        "campaign.paused",
        "campaign.resumed",
        "campaign.canceled",
        "campaign.completed",
    ] {
        assert!(types.contains(&format!("\"{kind}\"")), "{kind} in {types}");
    }
    assert!(doc["components"]["schemas"]
        .get("CampaignWithProgress")
        .is_some());
    let examples = doc["components"]["schemas"]["EventBody"]["examples"].to_string();
    assert!(examples.contains("\"campaign.completed\""), "{examples}");
    assert!(examples.contains("\"progress\""), "{examples}");
}

#[tokio::test]
async fn routes_merge_with_another_router() {
    let env = TestEnv::new().await;
    let webhook = Router::new().route(
        "/callbacks/call-status",
        axum::routing::post(|| async { "received" }),
    );
    let router = ebra_api::routes(state(
        &env,
        &[("API_TOKEN", TOKEN)],
        Some(env.queue.clone()),
    ))
    .merge(webhook)
    .fallback(ebra_api::not_found);
    let api = Api {
        env,
        router,
        token: None,
    };
    let hook = api.call(Method::POST, "/callbacks/call-status").await;
    assert_eq!(
        hook.status,
        StatusCode::OK,
        "the API's token does not guard merged routes"
    );
    api.get("/calls").await.problem(401);
    api.get("/elsewhere").await.problem(404);
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_problem_that_leaks_nothing() {
    let env = TestEnv::new().await;
    let missing_db = format!("ebra_missing_{}", Uuid::new_v4().simple());
    let pool = ebra_shared::db::pool(
        &format!("postgres://postgres@127.0.0.1:5432/{missing_db}"),
        1,
    )
    .unwrap();
    let state = AppState::new(pool, Some(env.queue.clone()), Arc::new(env.config(&[])));
    let api = Api {
        router: ebra_api::router(state),
        env,
        token: None,
    };
    for reply in [
        api.get("/calls").await,
        api.get("/metrics").await,
        api.call_json(Method::POST, "/calls", &valid_call()).await,
    ] {
        reply.problem(503);
        assert!(reply.header("retry-after").is_some());
        let text = reply.text();
        assert!(
            !text.contains("ebra_missing") && !text.contains("does not exist"),
            "leaked: {text}"
        );
    }
    assert!(api.drain_call_ids().await.is_empty());
}

#[tokio::test]
async fn a_database_failure_is_a_500_problem_that_leaks_nothing() {
    let api = Api::start().await;
    let id = id_of(&api.create(valid_call()).await);
    api.env.execute("DROP TABLE call_attempts").await;
    let reply = api.get(&format!("/calls/{id}")).await;
    reply.problem(500);
    let text = reply.text();
    assert!(
        !text.contains("call_attempts") && !text.contains("relation"),
        "leaked: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// The Lambda path: API Gateway HTTP API v2 events through lambda_http's adapter (what
// `lambda_http::run` does with each event).

fn apigw_v2_event(
    method: &str,
    path: &str,
    query: &str,
    headers: Value,
    body: Option<String>,
    base64: bool,
) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "r3pmxmplak",
            "domainName": "r3pmxmplak.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "r3pmxmplak",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "ebra-tests"
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "10/Mar/2025:17:26:00 +0000",
            "timeEpoch": 1741627560000_u64
        },
        "body": body,
        "isBase64Encoded": base64
    })
}

/// Runs an event through lambda_http exactly as the runtime would; returns the response
/// payload API Gateway receives.
async fn invoke(router: &Router, event: Value) -> Value {
    let request: lambda_http::request::LambdaRequest =
        serde_json::from_value(event).expect("an API Gateway event");
    assert!(
        matches!(
            request,
            lambda_http::request::LambdaRequest::ApiGatewayV2(_)
        ),
        "read as an HTTP API v2 event"
    );
    let adapter = lambda_http::Adapter::from(router.clone());
    let response = lambda_http::tower::ServiceExt::oneshot(
        adapter,
        lambda_http::LambdaEvent::new(request, lambda_http::Context::default()),
    )
    .await
    .expect("the router is infallible");
    serde_json::to_value(&response).expect("a serialisable response")
}

fn payload_body(response: &Value) -> Value {
    let body = response["body"].as_str().expect("a body");
    assert_eq!(
        response["isBase64Encoded"], false,
        "JSON bodies travel as text"
    );
    serde_json::from_str(body).expect("a JSON body")
}

#[tokio::test]
async fn lambda_events_create_read_and_refuse() {
    let api = Api::with_token().await;
    let auth = format!("Bearer {TOKEN}");

    // POST /calls, body base64-encoded as API Gateway sends binary-safe payloads.
    let body = base64::engine::general_purpose::STANDARD.encode(valid_call().to_string());
    let created = invoke(
        &api.router,
        apigw_v2_event(
            "POST",
            "/calls",
            "",
            json!({"content-type": "application/json", "authorization": auth.as_str(), "idempotency-key": "lambda-1"}),
            Some(body),
            true,
        ),
    )
    .await;
    assert_eq!(created["statusCode"], 201, "{created}");
    let call = payload_body(&created);
    let id = id_of(&call);
    assert_eq!(created["headers"]["location"], format!("/calls/{id}"));
    assert_eq!(created["headers"]["content-type"], "application/json");
    assert_eq!(call["status"], "PENDING");
    assert_eq!(api.drain_call_ids().await, vec![id.clone()]);

    // GET /calls/{id}.
    let read = invoke(
        &api.router,
        apigw_v2_event(
            "GET",
            &format!("/calls/{id}"),
            "",
            json!({"authorization": auth.as_str()}),
            None,
            false,
        ),
    )
    .await;
    assert_eq!(read["statusCode"], 200, "{read}");
    let read = payload_body(&read);
    assert_eq!(read["id"], id.as_str());
    assert_eq!(read["dials"], json!([]));

    // GET /calls with a query string.
    let list = invoke(
        &api.router,
        apigw_v2_event(
            "GET",
            "/calls",
            "status=PENDING&pageSize=5",
            json!({"authorization": auth.as_str()}),
            None,
            false,
        ),
    )
    .await;
    assert_eq!(list["statusCode"], 200, "{list}");
    assert_eq!(payload_body(&list)["total"], 1);

    // A bad input: a plain-text JSON body with an invalid phone number.
    let refused = invoke(
        &api.router,
        apigw_v2_event(
            "POST",
            "/calls",
            "",
            json!({"content-type": "application/json", "authorization": auth.as_str()}),
            Some(json!({"to": "12345", "scriptId": "s"}).to_string()),
            false,
        ),
    )
    .await;
    assert_eq!(refused["statusCode"], 422, "{refused}");
    assert_eq!(
        refused["headers"]["content-type"],
        "application/problem+json"
    );
    let problem = payload_body(&refused);
    assert_eq!(problem["errors"][0]["field"], "to");

    // A bad query and a missing token.
    let bad_query = invoke(
        &api.router,
        apigw_v2_event(
            "GET",
            "/calls",
            "pageSize=0",
            json!({"authorization": auth.as_str()}),
            None,
            false,
        ),
    )
    .await;
    assert_eq!(bad_query["statusCode"], 400, "{bad_query}");
    let unauthorized = invoke(
        &api.router,
        apigw_v2_event("GET", "/calls", "", json!({}), None, false),
    )
    .await;
    assert_eq!(unauthorized["statusCode"], 401);
    assert_eq!(
        unauthorized["headers"]["content-type"],
        "application/problem+json"
    );

    assert_eq!(api.calls_in_db().await, 1);
}

// ---------------------------------------------------------------------------------------------
// What the console reads: the phone filter, a call's webhooks, the last hour, the console's
// own files.

#[tokio::test]
async fn list_filters_by_phone_number() {
    let api = Api::start().await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(id_of(&api.create(valid_call()).await));
        api.create(json!({"to": OTHER_PHONE, "scriptId": "s"}))
            .await;
    }
    api.cancel(&mine[1]).await;

    // `+` is `%2B` in a query string (a bare `+` would read as a space).
    let to = "to=%2B14155550100";
    let listed = api.get(&format!("/calls?{to}")).await.json();
    assert_eq!(listed["total"], 3);
    let ids: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, [mine[2].clone(), mine[1].clone(), mine[0].clone()]);
    assert!(listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["to"] == PHONE));

    // With a status, and paged by cursor.
    let pending = api
        .get(&format!("/calls?{to}&status=PENDING&pageSize=1"))
        .await
        .json();
    assert_eq!(pending["total"], 2);
    assert_eq!(pending["items"][0]["id"], mine[2].as_str());
    let cursor = pending["nextCursor"].as_str().expect("a next page");
    let next = api
        .get(&format!(
            "/calls?{to}&status=PENDING&pageSize=1&cursor={cursor}"
        ))
        .await
        .json();
    assert_eq!(next["items"][0]["id"], mine[0].as_str());
    let last = next["nextCursor"]
        .as_str()
        .expect("a full page has a cursor");
    let after_last = api
        .get(&format!(
            "/calls?{to}&status=PENDING&pageSize=1&cursor={last}"
        ))
        .await
        .json();
    assert_eq!(after_last["items"], json!([]));
    assert_eq!(after_last["nextCursor"], Value::Null);

    let nobody = api.get("/calls?to=%2B12025550143").await.json();
    assert_eq!(nobody["total"], 0);
    assert_eq!(nobody["items"], json!([]));
}

#[tokio::test]
async fn every_bad_phone_filter_is_a_400_problem_naming_to() {
    let api = Api::start().await;
    api.create(valid_call()).await;
    for query in [
        "to=14155550100",
        "to=+14155550100", // a bare `+` is a space: " 14155550100"
        "to=",
        "to=%2B",
        "to=%2B1",
        "to=%2B1%20415%20555%200100",
        "to=%2B014155550100",
        "to=%2B1415555010012345678",
        "to=%2B999123",
        "to=abc",
        "to=%2B14155550100&to=%2B14155550100",
    ] {
        let reply = api.get(&format!("/calls?{query}")).await;
        reply.problem(400);
        if !query.contains("&to=") {
            assert_eq!(reply.fields(), ["to"], "{query}");
        }
    }
    // Every bad parameter at once, `to` among them.
    let reply = api.get("/calls?status=x&to=123&pageSize=0").await;
    reply.problem(400);
    assert_eq!(reply.fields(), ["status", "to", "pageSize"]);
}

/// Reports a provider outcome for `provider_call_id` as the webhook function would.
async fn report(
    env: &TestEnv,
    webhook_id: &str,
    provider_call_id: &str,
    status: ebra_shared::domain::CallOutcome,
) -> ebra_shared::store::settle::Settlement {
    use ebra_shared::store::dial::RetryPolicy;
    use ebra_shared::store::settle::settle_from_webhook;
    let report = common::generic_report(webhook_id, provider_call_id, status, Some(42), None);
    let (settlement, _) =
        settle_from_webhook(&env.pool, &report, &RetryPolicy::from(&env.config(&[])))
            .await
            .expect("settle");
    settlement
}

#[tokio::test]
async fn a_calls_webhooks_are_listed_with_their_dial() {
    use ebra_shared::domain::CallOutcome;
    let api = Api::start().await;
    let config = api.env.config(&[]);
    let id = id_of(&api.create(valid_call()).await);
    let other = id_of(
        &api.create(json!({"to": OTHER_PHONE, "scriptId": "s"}))
            .await,
    );

    let none = api.get(&format!("/calls/{id}/webhooks")).await;
    assert_eq!(none.status, StatusCode::OK, "{}", none.text());
    assert_eq!(none.json(), json!({"items": [], "truncated": false}));

    let claimed = api.env.claim(&config, id.parse().unwrap()).await;
    api.env.record_accepted(&config, &claimed, "prov-1").await;
    let claimed_other = api.env.claim(&config, other.parse().unwrap()).await;
    api.env
        .record_accepted(&config, &claimed_other, "prov-other")
        .await;

    report(&api.env, "msg_1", "prov-1", CallOutcome::Failed).await;
    // A second report for the settled dial, another call's, and one for no known dial.
    report(&api.env, "msg_2", "prov-1", CallOutcome::Completed).await;
    report(&api.env, "msg_other", "prov-other", CallOutcome::Completed).await;
    report(&api.env, "msg_held", "prov-unknown", CallOutcome::Completed).await;

    let body = api.get(&format!("/calls/{id}/webhooks")).await.json();
    assert_eq!(body["truncated"], false);
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{body}");
    assert_eq!(items[0]["webhookId"], "msg_1");
    assert_eq!(items[0]["providerCallId"], "prov-1");
    assert_eq!(items[0]["attempt"], 1);
    assert_eq!(items[0]["status"], "FAILED");
    assert_eq!(items[0]["durationSec"], 42);
    assert_eq!(items[0]["disposition"], "APPLIED");
    assert!(items[0]["appliedAt"].is_string());
    assert!(instant(&items[0]["receivedAt"]) <= instant(&items[1]["receivedAt"]));
    assert_eq!(items[1]["webhookId"], "msg_2");
    assert_eq!(items[1]["disposition"], "ALREADY_SETTLED");

    // The call page's two reads agree: the dial the reports name, and the call they failed.
    let call = api.get(&format!("/calls/{id}")).await.json();
    assert_eq!(call["status"], "FAILED");
    assert_eq!(call["dials"][0]["providerCallId"], "prov-1");
    assert_eq!(call["lastError"], "provider reported FAILED");
}

#[tokio::test]
async fn webhooks_of_an_unknown_or_malformed_call_are_problems() {
    let api = Api::start().await;
    let unknown = api
        .get(&format!("/calls/{}/webhooks", Uuid::new_v4()))
        .await;
    assert_eq!(
        unknown.problem(404)["type"],
        "urn:ebra:problem:call-not-found"
    );
    api.get("/calls/not-a-uuid/webhooks").await.problem(400);
    api.call(Method::POST, &format!("/calls/{}/webhooks", Uuid::new_v4()))
        .await
        .problem(405);
}

#[tokio::test]
async fn metrics_history_has_the_peak_in_progress_of_each_minute() {
    let api = Api::start().await;
    let config = api.env.config(&[]);
    let phones = [
        "+14155550101",
        "+14155550102",
        "+14155550103",
        "+14155550104",
        "+14155550105",
        "+14155550106",
        "+14155550107",
    ];
    let mut attempts = Vec::new();
    for phone in phones {
        let id = api.env.pending_call(&config, phone, None).await;
        attempts.push(api.env.claim(&config, id).await.attempt_id);
    }
    // Dials placed at minutes relative to T, the current minute's start when this runs:
    // offsets in seconds from T, and None for a dial not ended.
    let spans: [(i64, Option<i64>); 7] = [
        (-30 * 60 + 10, Some(-20 * 60 + 10)), // A
        (-25 * 60 + 10, Some(-10 * 60 + 10)), // B
        (-120 * 60, Some(-90 * 60)),          // C: before the window
        (-90 * 60, None),                     // D: in progress the whole hour
        (-5 * 60 + 10, Some(-5 * 60 + 20)),   // E: ten seconds
        (-17 * 60, Some(-15 * 60 + 30)),      // F, handing its slot straight to G
        (-15 * 60 + 30, Some(-14 * 60 + 20)), // G
    ];
    let t: DateTime<Utc> = {
        let client = api.env.pool.get().await.unwrap();
        client
            .query_one("SELECT date_trunc('minute', now())", &[])
            .await
            .unwrap()
            .get(0)
    };
    for (attempt, (start, end)) in attempts.iter().zip(spans) {
        let at = |offset: i64| format!("'{}'", rfc3339(t + TimeDelta::seconds(offset)));
        api.env
            .execute(&format!(
                "UPDATE call_attempts SET started_at = {}, ended_at = {} WHERE id = '{attempt}'",
                at(start),
                end.map(at).unwrap_or_else(|| "NULL".to_owned())
            ))
            .await;
    }

    let body = api.get("/metrics/history").await.json();
    assert_eq!(body["globalConcurrency"], 30);
    let minutes = body["minutes"].as_array().expect("minutes");
    assert_eq!(minutes.len(), 60);
    let at: Vec<DateTime<Utc>> = minutes.iter().map(|m| instant(&m["at"])).collect();
    for pair in at.windows(2) {
        assert_eq!(pair[1] - pair[0], TimeDelta::minutes(1));
    }
    assert!(at[0].timestamp() % 60 == 0, "minutes start on the minute");
    let peak = |minute: i64| {
        let wanted = t + TimeDelta::minutes(minute);
        let i = at
            .iter()
            .position(|a| *a == wanted)
            .unwrap_or_else(|| panic!("no point for T{minute:+} min in {body}"));
        minutes[i]["peakInProgress"].as_i64().unwrap()
    };
    assert_eq!(peak(-45), 1, "D alone");
    assert_eq!(peak(-30), 2, "D, A");
    assert_eq!(peak(-25), 3, "D, A, B");
    assert_eq!(peak(-20), 3, "A ends in this minute");
    assert_eq!(peak(-19), 2, "D, B");
    assert_eq!(peak(-17), 3, "D, B, F");
    assert_eq!(peak(-15), 3, "F hands over to G: not counted twice");
    assert_eq!(peak(-14), 3, "G ends in this minute");
    assert_eq!(peak(-13), 2, "D, B");
    assert_eq!(peak(-10), 2, "B ends in this minute");
    assert_eq!(peak(-9), 1, "D");
    assert_eq!(peak(-5), 2, "D, E for ten seconds");
    assert_eq!(peak(-4), 1, "D");
    assert_eq!(minutes.last().unwrap()["peakInProgress"], 1, "D, now");

    let short = api.get("/metrics/history?minutes=5").await.json();
    assert_eq!(short["minutes"].as_array().unwrap().len(), 5);
    let long = api.get("/metrics/history?minutes=360").await.json();
    let long = long["minutes"].as_array().unwrap();
    assert_eq!(long.len(), 360);
    // C (two hours ago, thirty minutes long) shows in the longer window, with D.
    let c_minute = t + TimeDelta::minutes(-100);
    let c = long
        .iter()
        .find(|m| instant(&m["at"]) == c_minute)
        .expect("T-100 min");
    assert_eq!(c["peakInProgress"], 1);
}

#[tokio::test]
async fn metrics_history_of_an_empty_database_is_zeros() {
    let api = Api::start().await;
    let body = api.get("/metrics/history?minutes=3").await.json();
    let minutes = body["minutes"].as_array().expect("minutes");
    assert_eq!(minutes.len(), 3);
    assert!(minutes.iter().all(|m| m["peakInProgress"] == 0), "{body}");
}

#[tokio::test]
async fn every_bad_history_query_is_a_400_problem() {
    let api = Api::start().await;
    for query in [
        "minutes=0",
        "minutes=361",
        "minutes=-1",
        "minutes=1.5",
        "minutes=",
        "minutes=sixty",
        "minutes=60&minutes=60",
        "hours=1",
    ] {
        let reply = api.get(&format!("/metrics/history?{query}")).await;
        reply.problem(400);
    }
    assert_eq!(
        api.get("/metrics/history?minutes=0").await.fields(),
        ["minutes"]
    );
    api.call(Method::POST, "/metrics/history")
        .await
        .problem(405);
}

#[tokio::test]
async fn metrics_name_the_oldest_due_waiting_call() {
    let api = Api::start().await;
    let body = api.get("/metrics").await.json();
    assert_eq!(body["oldestDuePendingCallId"], Value::Null);
    let first = id_of(&api.create(valid_call()).await);
    api.create(json!({"to": OTHER_PHONE, "scriptId": "s"}))
        .await;
    // Not due: scheduled later.
    api.create(json!({"to": PHONE, "scriptId": "s", "scheduledAt": "2099-01-01T00:00:00Z"}))
        .await;
    let body = api.get("/metrics").await.json();
    assert_eq!(body["oldestDuePendingCallId"], first.as_str());
    assert!(body["oldestDuePendingAgeSeconds"].as_f64().unwrap() >= 0.0);
}

/// A GET with extra headers.
async fn get_with(api: &Api, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::builder().uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    api.send(builder.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn the_console_is_served_without_a_token() {
    // With a token: the console's files are public, the API it calls is not.
    let api = Api::with_token().await;
    let page = get_with(&api, "/console", &[]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("content-encoding"), None);
    assert!(page
        .text()
        .contains(r#"<script type="module" src="console/main.js">"#));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));

    // Every file the page and its modules name is served with its type.
    let mut names: Vec<String> = Vec::new();
    for asset in ebra_api::console::ASSETS {
        names.push(asset.path.to_owned());
    }
    assert!(names.iter().any(|n| n == "views/call.js"), "{names:?}");
    for name in names.iter().filter(|n| *n != "index.html") {
        let reply = get_with(&api, &format!("/console/{name}"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
        let expected = if name.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else if name.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "image/svg+xml"
        };
        assert_eq!(reply.header("content-type"), Some(expected), "{name}");
    }
    // The modules import only files that exist.
    for asset in ebra_api::console::ASSETS
        .iter()
        .filter(|a| a.path.ends_with(".js"))
    {
        let text = std::str::from_utf8(asset.raw).unwrap();
        for line in text.lines().filter(|l| l.starts_with("import ")) {
            let target = line.split('\'').nth(1).expect("import path");
            let base = asset
                .path
                .rsplit_once('/')
                .map(|(dir, _)| dir)
                .unwrap_or("");
            let resolved = resolve(base, target);
            assert!(
                ebra_api::console::asset(&resolved).is_some(),
                "{} imports {target} ({resolved}), which is not embedded",
                asset.path
            );
        }
    }

    let js = get_with(&api, "/console/main.js", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(js.header("content-encoding"), Some("gzip"));
    assert_eq!(&js.body[..2], &[0x1f, 0x8b]);
    assert_eq!(js.header("vary"), Some("accept-encoding"));
    let plain = get_with(&api, "/console/main.js", &[]).await;
    assert!(js.body.len() < plain.body.len(), "gzip is smaller");
    let etag = js.header("etag").expect("an ETag").to_owned();
    assert_ne!(Some(etag.as_str()), plain.header("etag"));
    let again = get_with(
        &api,
        "/console/main.js",
        &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());

    let slash = get_with(&api, "/console/", &[]).await;
    assert_eq!(slash.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(slash.header("location"), Some("../console"));
    get_with(&api, "/console/nope.js", &[]).await.problem(404);
    get_with(&api, "/console/index.html", &[])
        .await
        .problem(404);
    get_with(&api, "/console/../openapi.json", &[])
        .await
        .problem(404);
    api.call(Method::POST, "/console").await.problem(405);
    api.call(Method::DELETE, "/console/main.js")
        .await
        .problem(405);

    // The API behind it still wants the token.
    get_with(&api, "/metrics/history", &[]).await.problem(401);
    get_with(&api, &format!("/calls/{}/webhooks", Uuid::new_v4()), &[])
        .await
        .problem(401);
}

/// `target` (`./x.js`, `../x.js`) relative to the directory `base` (`` or `views`).
fn resolve(base: &str, target: &str) -> String {
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for segment in target.split('/') {
        match segment {
            "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    parts.join("/")
}

#[tokio::test]
async fn the_console_through_api_gateway_is_base64_gzip() {
    let api = Api::with_token().await;
    let page = invoke(
        &api.router,
        apigw_v2_event(
            "GET",
            "/console",
            "",
            json!({"accept-encoding": "gzip, deflate, br"}),
            None,
            false,
        ),
    )
    .await;
    assert_eq!(page["statusCode"], 200, "{page}");
    assert_eq!(page["isBase64Encoded"], true, "gzip travels base64-encoded");
    assert_eq!(page["headers"]["content-encoding"], "gzip");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(page["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        bytes,
        ebra_api::console::asset("index.html").unwrap().gzip,
        "the embedded gzip, byte for byte"
    );
    let plain = invoke(
        &api.router,
        apigw_v2_event("GET", "/console/console.css", "", json!({}), None, false),
    )
    .await;
    assert_eq!(plain["statusCode"], 200, "{plain}");
    assert_eq!(plain["isBase64Encoded"], false);
    assert!(plain["body"].as_str().unwrap().contains(":root"));
}
