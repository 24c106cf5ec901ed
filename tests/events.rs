//! Outbound events (issue 17) against a real Postgres: endpoints registered through the API,
//! events written in the transaction of each change, posted by the notifier to receivers on
//! loopback that verify every delivery's Standard Webhooks signature (with Ebra's verifier,
//! itself checked against vectors from the official library in `tests/standard_webhooks.rs`),
//! in sequence order, retried, failed and kept, redelivered; the SSRF refusals at
//! registration and at delivery; the results of providers' reports on the call; a fault run
//! with a receiver answering 5xx, timing out and closing connections, a notifier dying
//! between sending and recording, and changes rolled back.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::Router;
use common::http::{send_json, Reply};
use common::receiver::{Answer, Received, Receiver};
use common::{generic_report, TestEnv};
use ebra_api::AppState;
use ebra_notifier::{run_pass, NotifierState, PassReport};
use ebra_shared::call_result::CallResult;
use ebra_shared::domain::CallOutcome;
use ebra_shared::events::destination::{DestinationPolicy, StaticResolver};
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::store::claim::{claim_calls, Claim};
use ebra_shared::store::deliveries;
use ebra_shared::store::dial::RetryPolicy;
use ebra_shared::store::settle::settle_from_webhook;
use ebra_shared::webhook_signature::WebhookSecret;
use ebra_shared::Config;
use serde_json::{json, Value};
use tracing::instrument::WithSubscriber as _;
use uuid::Uuid;

/// The deployment's callback secret in these tests.
const CALLBACK_SECRET: &str = "whsec_Y2FsbGJhY2stc2VjcmV0LWZvci10ZXN0cw==";
const PUBLIC_IP: &str = "93.184.216.34";

/// A server that accepts connections and closes them without answering.
async fn connection_closer() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                drop(socket);
            }
        }
    });
    (url, task)
}

// ---------------------------------------------------------------------------------------
// The stage: the API and the notifier over one database
// ---------------------------------------------------------------------------------------

struct Stage {
    env: TestEnv,
    config: Arc<Config>,
    api: Router,
    notifier: NotifierState,
    resolver: StaticResolver,
}

impl Stage {
    /// Private addresses allowed (the receivers are on loopback) unless `overrides` say not.
    async fn new(overrides: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let mut settings = vec![
            ("ALLOW_PRIVATE_WEBHOOK_URLS", "true"),
            ("CALLBACK_SECRET", CALLBACK_SECRET),
            ("EVENT_RETRY_BASE_SECONDS", "1"),
            ("EVENT_RETRY_MAX_SECONDS", "2"),
            ("EVENT_DELIVERY_TIMEOUT_MS", "700"),
            ("BASE_RETRY_SECONDS", "0"),
        ];
        settings.extend_from_slice(overrides);
        let config = Arc::new(env.config(&settings));
        let resolver = StaticResolver::with(&[("hooks.example.test", &[ip(PUBLIC_IP)])]);
        let policy =
            DestinationPolicy::new(config.events.allow_private_urls, Arc::new(resolver.clone()));
        let mut state = AppState::new(env.pool.clone(), Some(env.queue.clone()), config.clone());
        state.destinations = policy.clone();
        let api = ebra_api::router(state);
        let notifier = NotifierState::with_policy(
            ebra_shared::db::pool(&env.database_url, 4).expect("notifier pool"),
            config.clone(),
            EventsNudge::Off,
            policy,
        )
        .expect("notifier");
        Self {
            env,
            config,
            api,
            notifier,
            resolver,
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        send_json(&self.api, method, path, body).await
    }

    /// Registers an endpoint (asserting the 201): its JSON, with its secret.
    async fn register(&self, body: Value) -> Value {
        let reply = self
            .send(Method::POST, "/webhook-endpoints", Some(&body))
            .await;
        reply.expect(201)
    }

    async fn create_call(&self, body: Value) -> Uuid {
        let reply = self.send(Method::POST, "/calls", Some(&body)).await;
        reply.expect(201)["id"].as_str().unwrap().parse().unwrap()
    }

    async fn call(&self, id: Uuid) -> Value {
        self.send(Method::GET, &format!("/calls/{id}"), None)
            .await
            .json()
    }

    async fn events(&self, id: Uuid) -> Vec<Value> {
        let reply = self
            .send(Method::GET, &format!("/calls/{id}/events"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Claims the call and records its dial as accepted (`call.dialing`).
    async fn dial(&self, id: Uuid) -> String {
        let claimed = self.env.claim(&self.config, id).await;
        let provider_call_id = format!("pc-{}", Uuid::new_v4().simple());
        self.env
            .record_accepted(&self.config, &claimed, &provider_call_id)
            .await;
        provider_call_id
    }

    /// Settles a dialed call as the provider reports it.
    async fn settle(
        &self,
        provider_call_id: &str,
        outcome: CallOutcome,
        result: Option<CallResult>,
    ) {
        let mut report = generic_report(
            format!("msg_{}", Uuid::new_v4().simple()),
            provider_call_id,
            outcome,
            Some(42),
            Some(chrono::Utc::now()),
        );
        report.result = result;
        settle_from_webhook(
            &self.env.pool,
            &report,
            &RetryPolicy::from(self.config.as_ref()),
        )
        .await
        .expect("settle");
    }

    async fn pass(&self) -> PassReport {
        run_pass(&self.notifier, Duration::from_secs(20))
            .await
            .expect("a notifier pass")
    }

    /// Passes until nothing is pending, making retries due at once (at most `rounds`).
    async fn drain(&self, rounds: usize) {
        for _ in 0..rounds {
            self.pass().await;
            if self.pending().await == 0
                && self
                    .env
                    .count("SELECT count(*) FROM call_events WHERE fanned_out_at IS NULL")
                    .await
                    == 0
            {
                return;
            }
            self.make_due().await;
        }
    }

    async fn make_due(&self) {
        self.env
            .execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE status = 'PENDING'",
            )
            .await;
    }

    async fn pending(&self) -> i64 {
        self.env
            .count("SELECT count(*) FROM webhook_deliveries WHERE status = 'PENDING'")
            .await
    }

    async fn count(&self, sql: &str) -> i64 {
        self.env.count(sql).await
    }

    /// Every call's events carry sequences 1..=its `sequence`, with no gap and no repeat:
    /// each change that counted wrote exactly one event.
    async fn assert_sequences_contiguous(&self) {
        let broken = self
            .count(
                "SELECT count(*) FROM calls c \
                  WHERE c.sequence <> (SELECT count(*) FROM call_events e WHERE e.call_id = c.id) \
                     OR c.sequence <> COALESCE((SELECT max(sequence) FROM call_events e WHERE e.call_id = c.id), 0)",
            )
            .await;
        assert_eq!(broken, 0, "calls whose events do not run 1..=sequence");
    }
}

fn ip(raw: &str) -> IpAddr {
    raw.parse().unwrap()
}

fn a_call() -> Value {
    json!({"to": "+14155550100", "scriptId": "renewal-v2", "metadata": {"crmId": "lead-42"}})
}

fn types(bodies: &[Value]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| b["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn a_result() -> CallResult {
    CallResult::default()
        .with_summary(Some("Booked a visit for Tuesday 10:00."))
        .with_transcript(Some("agent: Hello!\nuser: Tuesday works."))
        .with_recording_url(Some("https://cdn.example.com/rec/1.wav"))
        .with_analysis(Some(&json!({"booked": true})))
        .with_end_reason(Some("customer_hangup"))
}

// ---------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn endpoints_are_registered_listed_changed_rotated_and_removed() {
    let stage = Stage::new(&[]).await;
    let reply = stage
        .send(
            Method::POST,
            "/webhook-endpoints",
            Some(&json!({"url": "https://hooks.example.test/ebra", "events": ["call.completed", "call.failed", "call.completed"],
                         "description": "CRM"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let created = reply.json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.headers.get("location").unwrap(),
        &format!("/webhook-endpoints/{id}")
    );
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(WebhookSecret::parse(&secret).is_ok(), "{secret}");
    assert_eq!(created["events"], json!(["call.completed", "call.failed"]));
    assert_eq!(created["enabled"], true);

    // The secret is shown once: never by a read.
    let listed = stage
        .send(Method::GET, "/webhook-endpoints", None)
        .await
        .json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["items"][0].get("secret").is_none());
    let one = stage
        .send(Method::GET, &format!("/webhook-endpoints/{id}"), None)
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert!(one.json().get("secret").is_none());
    assert!(!one.text().contains(&secret));

    let patched = stage
        .send(
            Method::PATCH,
            &format!("/webhook-endpoints/{id}"),
            Some(&json!({"events": null, "description": null, "enabled": false})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let patched = patched.json();
    assert_eq!(patched["events"], Value::Null, "every type");
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["enabled"], false);

    let rotated = stage
        .send(
            Method::POST,
            &format!("/webhook-endpoints/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let rotated = rotated.json();
    assert_ne!(rotated["secret"], created["secret"]);
    let expires: chrono::DateTime<chrono::Utc> = rotated["previousSecretExpiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = expires - chrono::Utc::now();
    assert!(
        left > chrono::Duration::hours(23) && left <= chrono::Duration::hours(24),
        "the old secret signs for 24 h: {left}"
    );

    let deleted = stage
        .send(Method::DELETE, &format!("/webhook-endpoints/{id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    stage
        .send(Method::DELETE, &format!("/webhook-endpoints/{id}"), None)
        .await
        .problem(404);
    stage
        .send(Method::GET, &format!("/webhook-endpoints/{id}"), None)
        .await
        .problem(404);
}

#[tokio::test]
async fn bad_endpoint_input_is_a_problem_and_changes_nothing() {
    let stage = Stage::new(&[]).await;
    let existing = stage
        .register(json!({"url": "https://hooks.example.test/keep", "description": "keep"}))
        .await;
    let id = existing["id"].as_str().unwrap().to_owned();
    let before = stage
        .send(Method::GET, "/webhook-endpoints", None)
        .await
        .body;
    let creates: Vec<(Value, u16, &[&str])> = vec![
        (json!({}), 400, &[]),
        (json!({"url": 7}), 400, &[]),
        (
            json!({"url": "https://x.example.test", "secret": "mine"}),
            400,
            &[],
        ),
        (json!({"url": "ftp://hooks.example.test/x"}), 422, &["url"]),
        (
            json!({"url": "https://user:pw@hooks.example.test/x"}),
            422,
            &["url"],
        ),
        (json!({"url": "not a url"}), 422, &["url"]),
        (
            json!({"url": format!("https://hooks.example.test/{}", "a".repeat(2100))}),
            422,
            &["url"],
        ),
        (
            json!({"url": "https://hooks.example.test/x", "events": []}),
            422,
            &["events"],
        ),
        (
            json!({"url": "https://hooks.example.test/x", "events": ["call.ringing"]}),
            422,
            &["events"],
        ),
        (
            json!({"url": "https://hooks.example.test/x", "events": "call.completed"}),
            400,
            &[],
        ),
        (
            json!({"url": "https://hooks.example.test/x", "description": "x".repeat(513)}),
            422,
            &["description"],
        ),
        (
            json!({"url": "ftp://x", "events": ["nope"], "description": "a\u{0007}"}),
            422,
            &["url", "events", "description"],
        ),
    ];
    for (body, status, fields) in creates {
        let reply = stage
            .send(Method::POST, "/webhook-endpoints", Some(&body))
            .await;
        reply.problem(status);
        assert_eq!(reply.fields(), fields, "{body}");
    }
    let patches: Vec<(Value, u16, &[&str])> = vec![
        (json!({}), 422, &[]),
        (json!({"url": null}), 422, &["url"]),
        (json!({"enabled": null}), 422, &["enabled"]),
        (json!({"enabled": "yes"}), 400, &[]),
        (json!({"url": "gopher://x"}), 422, &["url"]),
        (json!({"events": []}), 422, &["events"]),
        (json!({"secret": "whsec_x"}), 400, &[]),
    ];
    for (body, status, fields) in patches {
        let reply = stage
            .send(
                Method::PATCH,
                &format!("/webhook-endpoints/{id}"),
                Some(&body),
            )
            .await;
        reply.problem(status);
        assert_eq!(reply.fields(), fields, "{body}");
    }
    let missing = Uuid::new_v4();
    for (method, path) in [
        (Method::GET, format!("/webhook-endpoints/{missing}")),
        (Method::DELETE, format!("/webhook-endpoints/{missing}")),
        (
            Method::POST,
            format!("/webhook-endpoints/{missing}/rotate-secret"),
        ),
        (Method::POST, format!("/events/{missing}/redeliver")),
        (Method::GET, format!("/calls/{missing}/events")),
    ] {
        stage.send(method, &path, None).await.problem(404);
    }
    stage
        .send(Method::GET, "/webhook-endpoints/not-a-uuid", None)
        .await
        .problem(400);
    stage
        .send(
            Method::PATCH,
            &format!("/webhook-endpoints/{missing}"),
            Some(&json!({"enabled": true})),
        )
        .await
        .problem(404);
    let after = stage
        .send(Method::GET, "/webhook-endpoints", None)
        .await
        .body;
    assert_eq!(before, after, "bad input changed nothing");

    // At most 50 endpoints.
    for n in 1..50 {
        stage
            .register(json!({"url": format!("https://hooks.example.test/{n}")}))
            .await;
    }
    stage
        .send(
            Method::POST,
            "/webhook-endpoints",
            Some(&json!({"url": "https://hooks.example.test/51"})),
        )
        .await
        .problem(409);
    assert_eq!(
        stage.count("SELECT count(*) FROM webhook_endpoints").await,
        50
    );
}

// ---------------------------------------------------------------------------------------
// SSRF: refused at registration and at delivery
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn private_destinations_are_refused_at_registration() {
    let stage = Stage::new(&[("ALLOW_PRIVATE_WEBHOOK_URLS", "false")]).await;
    stage
        .resolver
        .set("internal.example.test", &[ip("10.1.2.3")]);
    stage
        .resolver
        .set("metadata.example.test", &[ip("169.254.169.254")]);
    stage
        .resolver
        .set("localhost", &[ip("127.0.0.1"), ip("::1")]);
    for url in [
        "http://127.0.0.1/hook",
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.10/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fd00::1]/",
        "http://2130706433/",
        "http://0/",
        "https://internal.example.test/hooks",
        "https://metadata.example.test/",
        "http://localhost:9/",
        "https://unknown-name.example.test/",
    ] {
        let reply = stage
            .send(
                Method::POST,
                "/webhook-endpoints",
                Some(&json!({"url": url})),
            )
            .await;
        reply.problem(422);
        assert_eq!(reply.fields(), ["url"], "{url}");
        // The same for a call's own callbackUrl.
        let mut call = a_call();
        call["callbackUrl"] = json!(url);
        let reply = stage.send(Method::POST, "/calls", Some(&call)).await;
        reply.problem(422);
        assert_eq!(reply.fields(), ["callbackUrl"], "{url}");
    }
    assert_eq!(
        stage.count("SELECT count(*) FROM webhook_endpoints").await,
        0
    );
    assert_eq!(stage.count("SELECT count(*) FROM calls").await, 0);
    // A public one is accepted.
    stage
        .register(json!({"url": "https://hooks.example.test/ebra"}))
        .await;
}

#[tokio::test]
async fn private_destinations_are_refused_at_delivery() {
    let stage = Stage::new(&[("ALLOW_PRIVATE_WEBHOOK_URLS", "false")]).await;
    let receiver = Receiver::start().await;
    // Registered while the name resolved to a public address; now it resolves to the
    // receiver on loopback (DNS rebinding).
    stage.resolver.set("rebind.example.test", &[ip(PUBLIC_IP)]);
    let rebound = stage
        .register(json!({"url": "http://rebind.example.test/hooks"}))
        .await;
    stage
        .resolver
        .set("rebind.example.test", &[ip("127.0.0.1")]);
    // An endpoint written straight into the table, past the API's check.
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    stage
        .env
        .execute(&format!(
            "INSERT INTO webhook_endpoints (id, url, secret) VALUES ('{}', 'http://127.0.0.1:{port}/hooks', '{CALLBACK_SECRET}')",
            Uuid::new_v4()
        ))
        .await;
    let call = stage.create_call(a_call()).await;
    let report = stage.pass().await;
    assert_eq!(report.sent, 2, "{report:?}");
    assert!(receiver.received().is_empty(), "nothing reached loopback");
    let events = stage.events(call).await;
    let deliveries = events[0]["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    for delivery in deliveries {
        let error = delivery["attemptLog"][0]["error"]
            .as_str()
            .unwrap_or_default();
        assert!(error.starts_with("refused:"), "{delivery}");
        assert_eq!(delivery["attemptLog"][0]["statusCode"], Value::Null);
        assert_eq!(
            delivery["status"], "PENDING",
            "retried: the name may resolve back"
        );
        if delivery["endpointId"] == rebound["id"] {
            assert!(error.contains("rebind.example.test"), "{error}");
        }
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let stage = Stage::new(&[]).await;
    let receiver = Receiver::start().await;
    let target = Receiver::start().await;
    receiver.always(Some(Answer::Redirect(target.url.clone())));
    stage.register(json!({"url": receiver.url})).await;
    let call = stage.create_call(a_call()).await;
    stage.pass().await;
    assert_eq!(receiver.received().len(), 1);
    assert!(
        target.received().is_empty(),
        "the redirect was not followed"
    );
    let events = stage.events(call).await;
    let attempt = &events[0]["deliveries"][0]["attemptLog"][0];
    assert_eq!(attempt["statusCode"], 302);
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("redirects are not followed")),
        "{attempt}"
    );
}

// ---------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_calls_events_reach_the_endpoint_signed_and_in_order() {
    let stage = Stage::new(&[]).await;
    let receiver = Receiver::start().await;
    let endpoint = stage.register(json!({"url": receiver.url})).await;
    let secret = endpoint["secret"].as_str().unwrap();

    let call = stage.create_call(a_call()).await;
    stage.pass().await;
    let provider_call_id = stage.dial(call).await;
    stage.pass().await;
    stage
        .settle(&provider_call_id, CallOutcome::Completed, Some(a_result()))
        .await;
    stage.pass().await;

    let bodies: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| r.verified(secret))
        .collect();
    assert_eq!(
        types(&bodies),
        ["call.created", "call.dialing", "call.completed"]
    );
    let sequences: Vec<i64> = bodies
        .iter()
        .map(|b| b["data"]["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3]);
    // Each event shows the call as it was then; the last is the call as GET shows it now.
    assert_eq!(bodies[0]["data"]["status"], "PENDING");
    assert_eq!(bodies[1]["data"]["status"], "IN_PROGRESS");
    assert_eq!(bodies[1]["data"]["dials"].as_array().unwrap().len(), 1);
    assert_eq!(bodies[2]["data"], stage.call(call).await);
    let result = &bodies[2]["data"]["result"];
    assert_eq!(result["summary"], "Booked a visit for Tuesday 10:00.");
    assert_eq!(result["recordingUrl"], "https://cdn.example.com/rec/1.wav");
    assert_eq!(result["analysis"], json!({"booked": true}));
    assert_eq!(result["endReason"], "customer_hangup");
    assert_eq!(bodies[2]["data"]["metadata"], json!({"crmId": "lead-42"}));
    // The body is {type, id, createdAt, data} and nothing else.
    let keys: Vec<&String> = bodies[2].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["createdAt", "data", "id", "type"]);

    // GET /calls/{id}/events: each event, its delivery, the attempt's status and latency.
    let events = stage.events(call).await;
    assert_eq!(events.len(), 3);
    for (event, body) in events.iter().zip(&bodies) {
        assert_eq!(event["id"], body["id"]);
        assert_eq!(event["data"], body["data"]);
        let delivery = &event["deliveries"][0];
        assert_eq!(delivery["status"], "DELIVERED");
        assert_eq!(delivery["endpointId"], endpoint["id"]);
        assert_eq!(delivery["attempts"], 1);
        assert_eq!(delivery["attemptLog"][0]["statusCode"], 204);
        assert!(delivery["attemptLog"][0]["latencyMs"].as_i64().is_some());
    }
    stage.assert_sequences_contiguous().await;
}

/// The claim writes its `call.dialing` events in the statement that takes the slots, whose
/// own reads cannot see the dials it inserts: each event must still show the call as GET
/// shows it once the claim committed, the new dial with the earlier ones. A batch of one
/// and a larger batch take different statements; a redial has an earlier dial.
#[tokio::test]
async fn dialing_events_show_the_claimed_call_with_its_new_dial() {
    let stage = Stage::new(&[]).await;
    let mut calls = Vec::new();
    for n in 0..4 {
        let mut call = a_call();
        call["to"] = json!(format!("+1415555011{n}"));
        calls.push(stage.create_call(call).await);
    }
    let dialing_event = |events: Vec<Value>, nth: usize| -> Value {
        events
            .into_iter()
            .filter(|event| event["type"] == "call.dialing")
            .nth(nth)
            .unwrap_or_else(|| panic!("no call.dialing event #{nth}"))["data"]
            .clone()
    };

    // A batch of one, then a batch of three.
    let first = stage.env.claim(&stage.config, calls[0]).await;
    let claims = claim_calls(
        &stage.env.pool,
        &calls[1..],
        stage.config.global_concurrency,
        None,
    )
    .await
    .expect("claim");
    assert!(
        claims.iter().all(|c| matches!(c, Claim::Claimed(_))),
        "{claims:?}"
    );
    for &call in &calls {
        let now = stage.call(call).await;
        assert_eq!(now["status"], "IN_PROGRESS");
        assert_eq!(now["dials"].as_array().map(Vec::len), Some(1));
        assert_eq!(dialing_event(stage.events(call).await, 0), now);
    }

    // A redial: the second dialing event lists both dials.
    let provider_call_id = format!("pc-{}", Uuid::new_v4().simple());
    stage
        .env
        .record_accepted(&stage.config, &first, &provider_call_id)
        .await;
    stage
        .settle(&provider_call_id, CallOutcome::Busy, None)
        .await;
    stage
        .env
        .execute("UPDATE calls SET next_run_at = now()")
        .await;
    stage.env.claim(&stage.config, calls[0]).await;
    let now = stage.call(calls[0]).await;
    assert_eq!(now["dials"].as_array().map(Vec::len), Some(2));
    assert_eq!(dialing_event(stage.events(calls[0]).await, 1), now);
}

#[tokio::test]
async fn every_change_writes_its_event_in_its_own_transaction() {
    let stage = Stage::new(&[("MAX_ATTEMPTS", "2"), ("MAX_PENDING_AGE_SECONDS", "3600")]).await;
    // BUSY then COMPLETED: created, dialing, retry_scheduled, dialing, completed.
    let redialed = stage.create_call(a_call()).await;
    let first = stage.dial(redialed).await;
    stage.settle(&first, CallOutcome::Busy, None).await;
    stage
        .env
        .execute("UPDATE calls SET next_run_at = now()")
        .await;
    let second = stage.dial(redialed).await;
    stage
        .settle(&second, CallOutcome::Completed, Some(a_result()))
        .await;
    // FAILED.
    let mut other = a_call();
    other["to"] = json!("+14155550101");
    let failed = stage.create_call(other.clone()).await;
    let dialed = stage.dial(failed).await;
    stage.settle(&dialed, CallOutcome::Failed, None).await;
    // Canceled, and expired.
    other["to"] = json!("+14155550102");
    let canceled = stage.create_call(other.clone()).await;
    stage
        .send(Method::POST, &format!("/calls/{canceled}/cancel"), None)
        .await;
    other["to"] = json!("+14155550103");
    let expired = stage.create_call(other).await;
    stage
        .env
        .execute(&format!(
            "UPDATE calls SET created_at = now() - interval '2 hours' WHERE id = '{expired}'"
        ))
        .await;
    ebra_shared::store::sweep::expire_pending_calls(
        &stage.env.pool,
        Some(Duration::from_secs(3600)),
    )
    .await
    .unwrap();

    let kinds = |events: Vec<Value>| -> Vec<String> { types(&events) };
    assert_eq!(
        kinds(stage.events(redialed).await),
        [
            "call.created",
            "call.dialing",
            "call.retry_scheduled",
            "call.dialing",
            "call.completed"
        ]
    );
    assert_eq!(
        kinds(stage.events(failed).await),
        ["call.created", "call.dialing", "call.failed"]
    );
    assert_eq!(
        kinds(stage.events(canceled).await),
        ["call.created", "call.canceled"]
    );
    assert_eq!(
        kinds(stage.events(expired).await),
        ["call.created", "call.expired"]
    );
    // The retry event says when, and why.
    let retry = &stage.events(redialed).await[2]["data"];
    assert_eq!(retry["status"], "PENDING");
    assert_eq!(retry["outcome"], "BUSY");
    assert!(retry["lastError"].as_str().unwrap().contains("BUSY"));
    stage.assert_sequences_contiguous().await;
}

#[tokio::test]
async fn a_later_report_fills_in_the_result_with_its_own_event() {
    let stage = Stage::new(&[]).await;
    let call = stage.create_call(a_call()).await;
    let provider_call_id = stage.dial(call).await;
    // The end of the call first (no analysis yet), then the analysis (Retell's order).
    stage
        .settle(
            &provider_call_id,
            CallOutcome::Completed,
            Some(CallResult::default().with_end_reason(Some("user_hangup"))),
        )
        .await;
    stage
        .settle(
            &provider_call_id,
            CallOutcome::Completed,
            Some(
                CallResult::default()
                    .with_summary(Some("Wants a callback next week."))
                    .with_end_reason(Some("something else")),
            ),
        )
        .await;
    let events = stage.events(call).await;
    assert_eq!(
        types(&events),
        [
            "call.created",
            "call.dialing",
            "call.completed",
            "call.result_updated"
        ]
    );
    let result = &stage.call(call).await["result"];
    assert_eq!(result["summary"], "Wants a callback next week.");
    assert_eq!(
        result["endReason"], "user_hangup",
        "what came first is kept"
    );
    // The same report again changes nothing.
    stage
        .settle(
            &provider_call_id,
            CallOutcome::Completed,
            Some(CallResult::default().with_summary(Some("Wants a callback next week."))),
        )
        .await;
    assert_eq!(stage.events(call).await.len(), 4);
    stage.assert_sequences_contiguous().await;
}

#[tokio::test]
async fn endpoints_get_only_the_types_they_asked_for_and_callbacks_get_everything() {
    let stage = Stage::new(&[]).await;
    let only_ends = Receiver::start().await;
    let callback = Receiver::start().await;
    let endpoint = stage
        .register(json!({"url": only_ends.url, "events": ["call.completed", "call.failed"]}))
        .await;
    let mut body = a_call();
    body["callbackUrl"] = json!(callback.url);
    let call = stage.create_call(body).await;
    let provider_call_id = stage.dial(call).await;
    stage
        .settle(&provider_call_id, CallOutcome::Completed, None)
        .await;
    stage.pass().await;

    let ends: Vec<Value> = only_ends
        .received()
        .iter()
        .map(|r| r.verified(endpoint["secret"].as_str().unwrap()))
        .collect();
    assert_eq!(types(&ends), ["call.completed"]);
    // The call's own callbackUrl: every event, signed with the deployment's secret.
    let all: Vec<Value> = callback
        .received()
        .iter()
        .map(|r| r.verified(CALLBACK_SECRET))
        .collect();
    assert_eq!(
        types(&all),
        ["call.created", "call.dialing", "call.completed"]
    );
    assert_eq!(stage.call(call).await["callbackUrl"], json!(callback.url));
    // Without a callback secret, a callbackUrl is refused up front.
    let bare = Stage::new(&[("CALLBACK_SECRET", "")]).await;
    let mut body = a_call();
    body["callbackUrl"] = json!(callback.url);
    let reply = bare.send(Method::POST, "/calls", Some(&body)).await;
    reply.problem(422);
    assert_eq!(reply.fields(), ["callbackUrl"]);
}

#[tokio::test]
async fn an_endpoint_registered_later_gets_only_later_events() {
    let stage = Stage::new(&[]).await;
    let receiver = Receiver::start().await;
    let call = stage.create_call(a_call()).await;
    stage.pass().await;
    stage.register(json!({"url": receiver.url})).await;
    stage.dial(call).await;
    stage.pass().await;
    let bodies: Vec<Value> = receiver.received().iter().map(Received::json).collect();
    assert_eq!(types(&bodies), ["call.dialing"]);
}

#[tokio::test]
async fn events_nobody_receives_are_written_fanned_out_and_wake_nobody() {
    let stage = Stage::new(&[]).await;
    let env = &stage.env;
    let nudges = env
        .sqs
        .create_queue()
        .queue_name(format!("nudges-{}", Uuid::new_v4().simple()))
        .send()
        .await
        .expect("a nudge queue")
        .queue_url
        .expect("its url");
    let nudge = EventsNudge::Sqs {
        client: env.sqs.clone(),
        queue_url: nudges.clone(),
    };
    let waiting = "SELECT count(*) FROM call_events WHERE fanned_out_at IS NULL";

    // No endpoint and no callbackUrl: the event is kept, already fanned out, and a change
    // sends no nudge.
    stage.create_call(a_call()).await;
    assert_eq!(env.count("SELECT count(*) FROM call_events").await, 1);
    assert_eq!(env.count(waiting).await, 0);
    nudge.after_change(&env.pool).await;
    assert!(env.drain(&nudges).await.is_empty(), "a nudge for nobody");

    // An endpoint for cancellations only: a creation still wakes nobody, a cancel does.
    stage
        .register(json!({"url": "https://hooks.example.test/ebra", "events": ["call.canceled"]}))
        .await;
    let canceled = stage.create_call(a_call()).await;
    assert_eq!(env.count(waiting).await, 0);
    nudge.after_change(&env.pool).await;
    assert!(
        env.drain(&nudges).await.is_empty(),
        "a nudge for a type nobody takes"
    );
    let reply = stage
        .send(Method::POST, &format!("/calls/{canceled}/cancel"), None)
        .await;
    reply.expect(200);
    assert_eq!(env.count(waiting).await, 1);
    nudge.after_change(&env.pool).await;
    assert_eq!(
        env.drain(&nudges).await.len(),
        1,
        "one nudge for the cancel"
    );

    // A callbackUrl receives everything: its creation waits for the notifier.
    let mut with_callback = a_call();
    with_callback["callbackUrl"] = json!("https://hooks.example.test/callback");
    stage.create_call(with_callback).await;
    assert_eq!(env.count(waiting).await, 2);

    // The notifier fans out what waits and delivers to both receivers as before.
    stage.pass().await;
    assert_eq!(env.count(waiting).await, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM webhook_deliveries").await,
        2,
        "the cancel to the endpoint, the creation to the callback"
    );
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_for_a_day() {
    let stage = Stage::new(&[]).await;
    let receiver = Receiver::start().await;
    let endpoint = stage.register(json!({"url": receiver.url})).await;
    let old = endpoint["secret"].as_str().unwrap().to_owned();
    let id = endpoint["id"].as_str().unwrap();
    let new = stage
        .send(
            Method::POST,
            &format!("/webhook-endpoints/{id}/rotate-secret"),
            None,
        )
        .await
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    stage.create_call(a_call()).await;
    stage.pass().await;
    let received = receiver.received();
    let delivery = &received[0];
    assert_eq!(
        delivery.header("webhook-signature").split(' ').count(),
        2,
        "two signatures during the grace period"
    );
    delivery.verified(&old);
    delivery.verified(&new);

    // Once the grace period is over, only the new secret signs.
    stage
        .env
        .execute(
            "UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 second'",
        )
        .await;
    let mut other = a_call();
    other["to"] = json!("+14155550109");
    stage.create_call(other).await;
    stage.pass().await;
    let received = receiver.received();
    let later = &received[1];
    assert_eq!(later.header("webhook-signature").split(' ').count(), 1);
    later.verified(&new);
    let refused = WebhookSecret::parse(&old).unwrap().verify(
        Some(later.header("webhook-id")),
        Some(later.header("webhook-timestamp")),
        Some(later.header("webhook-signature")),
        &later.body,
        chrono::Utc::now().timestamp(),
    );
    assert!(refused.is_err());
}

#[tokio::test]
async fn failures_are_retried_then_failed_kept_and_redeliverable() {
    let stage = Stage::new(&[("EVENT_RETRY_WINDOW_SECONDS", "3")]).await;
    let receiver = Receiver::start().await;
    receiver.always(Some(Answer::Status(503)));
    stage.register(json!({"url": receiver.url})).await;
    let call = stage.create_call(a_call()).await;

    let report = stage.pass().await;
    assert_eq!((report.sent, report.retrying), (1, 1), "{report:?}");
    let delivery = &stage.events(call).await[0]["deliveries"][0];
    assert_eq!(delivery["status"], "PENDING");
    assert_eq!(delivery["lastStatusCode"], 503);
    let next: chrono::DateTime<chrono::Utc> =
        delivery["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    assert!(next > chrono::Utc::now(), "backing off");
    // Nothing is due yet: a pass sends nothing.
    assert_eq!(stage.pass().await.sent, 0);

    // Retried until its window (3 s here, a day by default) is over, then FAILED and kept.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    stage.make_due().await;
    let report = stage.pass().await;
    assert_eq!(report.failed, 1, "{report:?}");
    let events = stage.events(call).await;
    let delivery = &events[0]["deliveries"][0];
    assert_eq!(delivery["status"], "FAILED");
    let attempts = delivery["attemptLog"].as_array().unwrap();
    assert!(attempts.len() >= 2);
    assert!(attempts.iter().all(|a| a["statusCode"] == 503));
    let first_id = receiver.received()[0].header("webhook-id").to_owned();
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.header("webhook-id") == first_id),
        "retries repeat the webhook-id"
    );

    // Redelivered once the receiver is fixed: the same webhook-id, delivered.
    receiver.always(None);
    let event_id = events[0]["id"].as_str().unwrap();
    let reply = stage
        .send(Method::POST, &format!("/events/{event_id}/redeliver"), None)
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.json()["deliveries"].as_array().unwrap().len(), 1);
    stage.pass().await;
    let last = receiver.received().last().cloned().unwrap();
    assert_eq!(last.header("webhook-id"), first_id);
    let delivery = &stage.events(call).await[0]["deliveries"][0];
    assert_eq!(delivery["status"], "DELIVERED");
}

#[tokio::test]
async fn a_calls_events_wait_for_an_earlier_one_still_retrying() {
    let stage = Stage::new(&[]).await;
    let receiver = Receiver::start().await;
    receiver.answer([Answer::Status(500)]);
    stage.register(json!({"url": receiver.url})).await;
    let call = stage.create_call(a_call()).await;
    stage.pass().await;
    stage.dial(call).await;
    // call.created is retrying: call.dialing must not overtake it.
    let report = stage.pass().await;
    assert_eq!(report.sent, 0, "{report:?}");
    stage.make_due().await;
    stage.pass().await;
    stage.pass().await;
    let bodies: Vec<Value> = receiver.received().iter().map(Received::json).collect();
    assert_eq!(
        types(&bodies),
        ["call.created", "call.created", "call.dialing"]
    );
}

#[tokio::test]
async fn an_endpoint_failing_for_days_is_disabled_with_a_log_line() {
    let stage = Stage::new(&[("ENDPOINT_DISABLE_AFTER_SECONDS", "86400")]).await;
    let receiver = Receiver::start().await;
    receiver.always(Some(Answer::Status(500)));
    let endpoint = stage.register(json!({"url": receiver.url})).await;
    let id = endpoint["id"].as_str().unwrap();
    stage.create_call(a_call()).await;
    stage.pass().await;
    let failing: Value = stage
        .send(Method::GET, &format!("/webhook-endpoints/{id}"), None)
        .await
        .json();
    assert!(failing["failingSince"].is_string(), "{failing}");
    assert_eq!(failing["enabled"], true, "a day has not passed");

    // Failing for two days: the next failure disables it.
    stage
        .env
        .execute("UPDATE webhook_endpoints SET failing_since = now() - interval '2 days'")
        .await;
    stage.make_due().await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .json()
        .flatten_event(true)
        .finish();
    let capture = tracing::Dispatch::new(subscriber);
    let _anchor = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    tracing::callsite::rebuild_interest_cache();
    let report = run_pass(&stage.notifier, Duration::from_secs(20))
        .with_subscriber(capture)
        .await
        .unwrap();
    assert_eq!(report.endpoints_disabled, 1, "{report:?}");
    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let disabled: Vec<Value> = output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "webhook endpoint disabled")
        .collect();
    assert_eq!(disabled.len(), 1, "{output}");
    assert_eq!(disabled[0]["endpoint_id"], id);
    assert_eq!(disabled[0]["level"], "WARN");

    let now: Value = stage
        .send(Method::GET, &format!("/webhook-endpoints/{id}"), None)
        .await
        .json();
    assert_eq!(now["enabled"], false);
    assert!(now["disabledReason"].is_string());
    // Its pending deliveries are FAILED and kept; nothing more is sent to it.
    assert_eq!(stage.pending().await, 0);
    let sent = receiver.received().len();
    stage
        .create_call(json!({"to": "+14155550111", "scriptId": "s"}))
        .await;
    stage.drain(3).await;
    assert_eq!(receiver.received().len(), sent);
    // Enabled again, it receives again.
    receiver.always(None);
    stage
        .send(
            Method::PATCH,
            &format!("/webhook-endpoints/{id}"),
            Some(&json!({"enabled": true})),
        )
        .await;
    stage
        .create_call(json!({"to": "+14155550112", "scriptId": "s"}))
        .await;
    stage.pass().await;
    assert_eq!(receiver.received().len(), sent + 1);
}

/// The JSON lines a subscriber writes, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn timeouts_and_closed_connections_are_retried() {
    let stage = Stage::new(&[("EVENT_DELIVERY_TIMEOUT_MS", "300")]).await;
    let slow = Receiver::start().await;
    slow.answer([Answer::Sleep(Duration::from_millis(1200))]);
    let (closer, _task) = connection_closer().await;
    stage.register(json!({"url": slow.url})).await;
    stage.register(json!({"url": closer})).await;
    let call = stage.create_call(a_call()).await;
    stage.pass().await;
    let events = stage.events(call).await;
    let errors: Vec<String> = events[0]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["attemptLog"][0]["error"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(errors.iter().any(|e| e.contains("timed out")), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| !e.contains("timed out") && !e.is_empty()),
        "{errors:?}"
    );
    assert_eq!(stage.pending().await, 2, "both retried");
    stage.make_due().await;
    stage.pass().await;
    // The slow receiver answers in time now: delivered, with the same webhook-id twice.
    let received = slow.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id")
    );
}

#[tokio::test]
async fn a_notifier_that_dies_between_sending_and_recording_sends_again() {
    let stage = Stage::new(&[]).await;
    let receiver = Receiver::start().await;
    stage.register(json!({"url": receiver.url})).await;
    let call = stage.create_call(a_call()).await;
    deliveries::fan_out(&stage.env.pool, 100, Duration::from_secs(86_400))
        .await
        .unwrap();
    // Taken and sent; the notifier dies before recording.
    let due = deliveries::claim_due(&stage.env.pool, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    ebra_notifier::send_all(&stage.notifier, &due).await;
    assert_eq!(receiver.received().len(), 1);
    // While its lease runs, no other notifier takes it.
    assert_eq!(stage.pass().await.sent, 0);
    // The lease runs out: sent again, with the same webhook-id.
    stage
        .env
        .execute("UPDATE webhook_deliveries SET leased_until = now() - interval '1 second'")
        .await;
    assert_eq!(stage.pass().await.delivered, 1);
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id")
    );
    let delivery = &stage.events(call).await[0]["deliveries"][0];
    assert_eq!(delivery["status"], "DELIVERED");
    assert_eq!(delivery["attemptLog"][0]["error"], "no result recorded");
    assert_eq!(delivery["attemptLog"][1]["statusCode"], 204);
    // A late record of the dead notifier's attempt changes nothing.
    let stale = ebra_notifier::record(
        &stage.notifier,
        &due,
        &[ebra_shared::events::delivery::AttemptResult {
            status_code: Some(500),
            latency: Duration::from_millis(5),
            error: Some("HTTP 500".into()),
        }],
    )
    .await
    .unwrap();
    assert_eq!(stale.stale, 1);
    assert_eq!(
        stage.events(call).await[0]["deliveries"][0]["status"],
        "DELIVERED"
    );
}

#[tokio::test]
async fn no_event_is_sent_for_a_change_that_rolled_back() {
    let stage = Stage::new(&[]).await;
    let receiver = Receiver::start().await;
    stage.register(json!({"url": receiver.url})).await;
    let call = stage.create_call(a_call()).await;
    let provider_call_id = stage.dial(call).await;
    // The settlement's transaction fails after its event is written.
    stage
        .env
        .execute(
            "CREATE FUNCTION refuse_completed() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.type = 'call.completed' THEN RAISE EXCEPTION 'injected failure'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_completed AFTER INSERT ON call_events \
             FOR EACH ROW EXECUTE FUNCTION refuse_completed();",
        )
        .await;
    let mut report = generic_report(
        "msg_rolled_back",
        &provider_call_id,
        CallOutcome::Completed,
        Some(3),
        None,
    );
    report.result = Some(a_result());
    let policy = RetryPolicy::from(stage.config.as_ref());
    assert!(settle_from_webhook(&stage.env.pool, &report, &policy)
        .await
        .is_err());
    stage.drain(3).await;
    assert_eq!(
        stage.call(call).await["status"],
        "IN_PROGRESS",
        "rolled back"
    );
    let bodies: Vec<Value> = receiver.received().iter().map(Received::json).collect();
    assert_eq!(types(&bodies), ["call.created", "call.dialing"]);

    // The provider retries its webhook once the fault is gone: completed, reported once.
    stage
        .env
        .execute("DROP TRIGGER refuse_completed ON call_events")
        .await;
    settle_from_webhook(&stage.env.pool, &report, &policy)
        .await
        .unwrap();
    stage.drain(3).await;
    let bodies: Vec<Value> = receiver.received().iter().map(Received::json).collect();
    assert_eq!(
        types(&bodies),
        ["call.created", "call.dialing", "call.completed"]
    );
    stage.assert_sequences_contiguous().await;
}

// ---------------------------------------------------------------------------------------
// A fault run
// ---------------------------------------------------------------------------------------

/// Calls go through their lives while the receiver answers 5xx, times out or closes the
/// connection, notifiers die between sending and recording, and some settlements roll
/// back. At the end every committed event reached the receiver at least once, a
/// `webhook-id` repeats only as often as its delivery was attempted, each call's events
/// arrived in sequence order, and no event of a rolled-back change arrived.
#[tokio::test]
async fn a_fault_run_delivers_every_committed_event_at_least_once() {
    let calls: usize = std::env::var("EBRA_EVENTS_FAULT_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let stage = Stage::new(&[
        ("EVENT_DELIVERY_TIMEOUT_MS", "250"),
        ("GLOBAL_CONCURRENCY", "1000"),
    ])
    .await;
    let receiver = Receiver::start().await;
    let (closer, _task) = connection_closer().await;
    let endpoint = stage.register(json!({"url": receiver.url})).await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    // A second endpoint that only ever closes the connection: its deliveries are retried,
    // never lost, and never block the first.
    stage
        .register(json!({"url": closer, "events": ["call.completed"]}))
        .await;
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut roll = move |n: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % n
    };
    // The receiver's answers: mostly 2xx, then 5xx, timeouts (longer than the delivery
    // timeout) and 429s.
    let script: Vec<Answer> = (0..calls * 12)
        .map(|_| match roll(10) {
            0 | 1 => Answer::Status(503),
            2 => Answer::Sleep(Duration::from_millis(600)),
            3 => Answer::Status(429),
            _ => Answer::Status(200),
        })
        .collect();
    receiver.answer(script);

    let policy = RetryPolicy::from(stage.config.as_ref());
    let mut rolled_back: HashSet<Uuid> = HashSet::new();
    let mut ids = Vec::new();
    for n in 0..calls {
        let to = format!("+1415555{:04}", 3000 + n);
        ids.push(
            stage
                .create_call(json!({"to": to, "scriptId": "fault-run"}))
                .await,
        );
    }
    for (n, id) in ids.iter().enumerate() {
        let provider_call_id = stage.dial(*id).await;
        let outcome = if n % 5 == 0 {
            CallOutcome::Failed
        } else {
            CallOutcome::Completed
        };
        let mut report = generic_report(
            format!("msg_{n}"),
            &provider_call_id,
            outcome,
            Some(3),
            None,
        );
        report.result = Some(a_result());
        if n % 7 == 3 {
            // This settlement rolls back (its connection dies mid-transaction, as it were):
            // the trigger fails it after its event is written.
            stage
                .env
                .execute(&format!(
                    "CREATE OR REPLACE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN IF NEW.call_id = '{id}' AND NEW.sequence = 3 THEN RAISE EXCEPTION 'injected'; END IF; \
                     RETURN NEW; END $$; \
                     DROP TRIGGER IF EXISTS fail_once ON call_events; \
                     CREATE TRIGGER fail_once AFTER INSERT ON call_events FOR EACH ROW EXECUTE FUNCTION fail_once();"
                ))
                .await;
            assert!(settle_from_webhook(&stage.env.pool, &report, &policy)
                .await
                .is_err());
            stage
                .env
                .execute("DROP TRIGGER fail_once ON call_events")
                .await;
            rolled_back.insert(*id);
            continue;
        }
        settle_from_webhook(&stage.env.pool, &report, &policy)
            .await
            .unwrap();
        // Now and then a notifier dies between sending and recording.
        if roll(4) == 0 {
            deliveries::fan_out(&stage.env.pool, 500, Duration::from_secs(86_400))
                .await
                .unwrap();
            let due = deliveries::claim_due(&stage.env.pool, 5, Duration::from_secs(60))
                .await
                .unwrap();
            ebra_notifier::send_all(&stage.notifier, &due).await;
            stage
                .env
                .execute(
                    "UPDATE webhook_deliveries SET leased_until = now() WHERE leased_until > now()",
                )
                .await;
        } else {
            stage.pass().await;
        }
    }
    // Drain what is left: retries made due at once, the closer's deliveries failed once
    // their window would end (they are retried meanwhile, never lost).
    receiver.always(None);
    for _ in 0..40 {
        stage.make_due().await;
        stage
            .env
            .execute("UPDATE webhook_deliveries SET leased_until = NULL WHERE leased_until < now()")
            .await;
        stage.pass().await;
        let open = stage
            .count(&format!(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'PENDING' AND endpoint_id = '{}'",
                endpoint["id"].as_str().unwrap()
            ))
            .await;
        if open == 0 {
            break;
        }
    }

    // Every committed event reached the receiver.
    let client = stage.env.pool.get().await.unwrap();
    let committed: HashMap<String, (Uuid, i64, String)> = client
        .query("SELECT id, call_id, sequence, type FROM call_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let id: Uuid = row.get(0);
            (id.to_string(), (row.get(1), row.get(2), row.get(3)))
        })
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut order: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for received in receiver.received() {
        let body = received.verified(&secret);
        let id = body["id"].as_str().unwrap().to_owned();
        let Some((call_id, sequence, _)) = committed.get(&id) else {
            panic!("an event that was never committed arrived: {body}");
        };
        *seen.entry(id).or_default() += 1;
        order.entry(*call_id).or_default().push(*sequence);
    }
    let missing: Vec<&String> = committed
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "events never delivered: {missing:?}");
    // A webhook-id repeats only as often as its delivery was attempted.
    let attempts: HashMap<String, i64> = client
        .query(
            "SELECT d.event_id::text, d.attempts::bigint FROM webhook_deliveries d WHERE d.endpoint_id = $1",
            &[&endpoint["id"].as_str().unwrap().parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for (id, times) in &seen {
        let attempted = attempts.get(id).copied().unwrap_or(0);
        assert!(
            *times as i64 <= attempted,
            "{id} arrived {times} times in {attempted} attempts"
        );
    }
    // Each call's events arrived in sequence order (a repeat may follow, never precede).
    for (call_id, sequences) in &order {
        let mut highest = 0;
        for sequence in sequences {
            assert!(
                *sequence >= highest,
                "call {call_id}: {sequences:?} out of order"
            );
            highest = highest.max(*sequence);
        }
    }
    // The rolled-back settlements left their calls in progress, with no completion event.
    for id in &rolled_back {
        assert_eq!(stage.call(*id).await["status"], "IN_PROGRESS");
    }
    stage.assert_sequences_contiguous().await;
    println!(
        "events fault run: calls={calls} events={} delivered_ids={} receiver_requests={} rolled_back={}",
        committed.len(),
        seen.len(),
        receiver.received().len(),
        rolled_back.len()
    );
}
