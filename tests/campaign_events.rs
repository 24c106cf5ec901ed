//! Campaign events (`campaign.created`, `.paused`, `.resumed`, `.canceled`, `.completed`)
//! against a real Postgres and a real SQS endpoint: each written once, in the transaction of
//! its change, with the campaign as `GET /campaigns/{id}` shows it and a per-campaign
//! sequence; posted by the notifier, signed, to the endpoints subscribed to the type and to
//! the campaign's `callbackUrl`, in sequence order; none for a refused action; and
//! `campaign.completed` found by the reclaimer's pass, once.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::http::{send_json, Reply};
use common::receiver::{Answer, Received, Receiver};
use common::{generic_report, TestEnv};
use ebra_api::AppState;
use ebra_notifier::{run_pass, NotifierState, PassReport};
use ebra_reclaimer::{ReclaimReport, ReclaimerState};
use ebra_shared::domain::CallOutcome;
use ebra_shared::events::destination::{DestinationPolicy, StaticResolver};
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::store::dial::RetryPolicy;
use ebra_shared::store::settle::settle_from_webhook;
use ebra_shared::Config;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use uuid::Uuid;

/// The deployment's callback secret in these tests.
const CALLBACK_SECRET: &str = "whsec_Y2FsbGJhY2stc2VjcmV0LWZvci10ZXN0cw==";

/// The bodies of the campaign events `receiver` got (a campaign's `callbackUrl` is also its
/// calls' default, so it gets their events too), signatures verified with `secret`.
fn campaign_events(receiver: &Receiver, secret: &str) -> Vec<Value> {
    receiver
        .received()
        .iter()
        .map(|r| r.verified(secret))
        .filter(|body| {
            body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("campaign."))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The stage: the API, the notifier and the reclaimer over one database
// ---------------------------------------------------------------------------------------

struct Stage {
    env: TestEnv,
    config: Arc<Config>,
    api: Router,
    notifier: NotifierState,
    reclaimer: ReclaimerState,
}

/// A stored campaign event.
#[derive(Debug)]
struct Stored {
    id: Uuid,
    kind: String,
    sequence: i64,
    data: Value,
    fanned_out: bool,
}

impl Stage {
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
        let ip: IpAddr = "93.184.216.34".parse().unwrap();
        let resolver = StaticResolver::with(&[("hooks.example.test", &[ip])]);
        let policy = DestinationPolicy::new(config.events.allow_private_urls, Arc::new(resolver));
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
        let reclaimer = ReclaimerState::new(
            env.pool.clone(),
            env.queue.clone(),
            common::generic_provider(),
            config.clone(),
        );
        Self {
            env,
            config,
            api,
            notifier,
            reclaimer,
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        send_json(&self.api, method, path, body).await
    }

    async fn register(&self, body: Value) -> Value {
        let reply = self
            .send(Method::POST, "/webhook-endpoints", Some(&body))
            .await;
        reply.expect(201)
    }

    async fn create_campaign(&self, body: Value) -> Uuid {
        let reply = self.send(Method::POST, "/campaigns", Some(&body)).await;
        reply.expect(201)["id"].as_str().unwrap().parse().unwrap()
    }

    /// `GET /campaigns/{id}`.
    async fn campaign(&self, id: Uuid) -> Value {
        self.send(Method::GET, &format!("/campaigns/{id}"), None)
            .await
            .ok()
    }

    async fn act(&self, id: Uuid, action: &str) -> Reply {
        self.send(Method::POST, &format!("/campaigns/{id}/{action}"), None)
            .await
    }

    /// Adds calls (one per phone) to a campaign; their ids.
    async fn add_calls(&self, id: Uuid, phones: &[&str]) -> Vec<Uuid> {
        let rows: Vec<Value> = phones
            .iter()
            .map(|phone| json!({"to": phone, "scriptId": "renewal-v2"}))
            .collect();
        let reply = self
            .send(
                Method::POST,
                &format!("/campaigns/{id}/calls"),
                Some(&json!({"calls": rows})),
            )
            .await
            .ok();
        assert_eq!(reply["created"], phones.len(), "{reply}");
        reply["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["id"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Dials a call and settles it as the provider reports `outcome`.
    async fn dial_and_end(&self, call: Uuid, outcome: CallOutcome) {
        let claimed = self.env.claim(&self.config, call).await;
        let provider_call_id = format!("pc-{}", Uuid::new_v4().simple());
        self.env
            .record_accepted(&self.config, &claimed, &provider_call_id)
            .await;
        let report = generic_report(
            format!("msg_{}", Uuid::new_v4().simple()),
            &provider_call_id,
            outcome,
            Some(30),
            Some(chrono::Utc::now()),
        );
        settle_from_webhook(
            &self.env.pool,
            &report,
            &RetryPolicy::from(self.config.as_ref()),
        )
        .await
        .expect("settle");
    }

    async fn cancel_call(&self, call: Uuid) {
        self.send(Method::POST, &format!("/calls/{call}/cancel"), None)
            .await
            .ok();
    }

    /// The campaign's stored events, in sequence order.
    async fn stored(&self, campaign: Uuid) -> Vec<Stored> {
        let client = self.env.pool.get().await.expect("pool");
        client
            .query(
                "SELECT id, type, sequence, data, fanned_out_at IS NOT NULL AS fanned_out \
                   FROM call_events WHERE campaign_id = $1 ORDER BY sequence",
                &[&campaign],
            )
            .await
            .expect("campaign events")
            .iter()
            .map(|row| Stored {
                id: row.get("id"),
                kind: row.get("type"),
                sequence: row.get("sequence"),
                data: row.get("data"),
                fanned_out: row.get("fanned_out"),
            })
            .collect()
    }

    async fn kinds(&self, campaign: Uuid) -> Vec<String> {
        self.stored(campaign)
            .await
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    async fn reclaim(&self) -> ReclaimReport {
        ebra_reclaimer::run_pass(&self.reclaimer)
            .await
            .expect("a reclaimer pass")
    }

    async fn notify(&self) -> PassReport {
        run_pass(&self.notifier, Duration::from_secs(20))
            .await
            .expect("a notifier pass")
    }

    /// Notifier passes until nothing is pending, retries made due at once.
    async fn drain(&self) {
        for _ in 0..10 {
            self.notify().await;
            let waiting = self
                .env
                .count(
                    "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'PENDING') \
                          + (SELECT count(*) FROM call_events WHERE fanned_out_at IS NULL)",
                )
                .await;
            if waiting == 0 {
                return;
            }
            self.env
                .execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE status = 'PENDING'",
                )
                .await;
        }
        panic!("deliveries still pending after 10 passes");
    }
}

fn kinds(bodies: &[Value]) -> Vec<&str> {
    bodies
        .iter()
        .map(|b| b["type"].as_str().unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Written once, with the campaign as GET shows it, in sequence
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn each_change_writes_one_event_with_the_campaign_as_get_shows_it() {
    let stage = Stage::new(&[]).await;
    // An endpoint for every type: the events wait for the notifier (not written fanned out).
    stage
        .register(json!({"url": "https://hooks.example.test/ebra"}))
        .await;
    let id = stage
        .create_campaign(json!({"name": "Spring renewals", "scriptId": "renewal-v2"}))
        .await;
    // What GET shows right after each change, to compare with the event it wrote.
    let mut shown = vec![stage.campaign(id).await];

    stage.act(id, "pause").await.ok();
    shown.push(stage.campaign(id).await);
    // Pausing a paused campaign changes nothing and writes nothing.
    stage.act(id, "pause").await.ok();
    stage.act(id, "resume").await.ok();
    shown.push(stage.campaign(id).await);
    stage.act(id, "resume").await.ok();
    assert_eq!(
        stage.kinds(id).await,
        ["campaign.created", "campaign.paused", "campaign.resumed"]
    );

    // Its calls end (one completed, one canceled): the reclaimer's pass completes it.
    let calls = stage.add_calls(id, &["+14155550101", "+14155550102"]).await;
    assert_eq!(stage.reclaim().await.campaigns_completed, 0, "calls open");
    stage.dial_and_end(calls[0], CallOutcome::Completed).await;
    assert_eq!(stage.reclaim().await.campaigns_completed, 0, "one open");
    stage.cancel_call(calls[1]).await;
    assert_eq!(stage.reclaim().await.campaigns_completed, 1);
    shown.push(stage.campaign(id).await);

    // A completed campaign can still be canceled: campaign.canceled.
    let canceled = stage.act(id, "cancel").await.ok();
    assert_eq!(canceled["canceledCalls"], 0);
    shown.push(stage.campaign(id).await);
    // Canceling it again writes nothing more.
    stage.act(id, "cancel").await.ok();

    let stored = stage.stored(id).await;
    assert_eq!(
        stored.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        [
            "campaign.created",
            "campaign.paused",
            "campaign.resumed",
            "campaign.completed",
            "campaign.canceled"
        ]
    );
    assert_eq!(
        stored.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    for (event, get) in stored.iter().zip(&shown) {
        assert_eq!(
            &event.data, get,
            "{} shows the campaign as GET did",
            event.kind
        );
        assert_eq!(event.data["sequence"], event.sequence);
        assert!(!event.fanned_out, "an endpoint takes every type");
    }
    assert_eq!(stored[1].data["status"], "PAUSED");
    // ACTIVE with no call open: GET shows it COMPLETED (as a campaign without calls is),
    // and so does the event; campaign.completed needs at least one call.
    assert_eq!(stored[0].data["status"], "COMPLETED");
    assert_eq!(stored[2].data["status"], "COMPLETED");
    let completed = &stored[3].data;
    assert_eq!(completed["status"], "COMPLETED");
    assert!(completed["completedAt"].is_string());
    assert_eq!(completed["progress"]["total"], 2);
    assert_eq!(completed["progress"]["calls"]["COMPLETED"], 1);
    assert_eq!(completed["progress"]["calls"]["CANCELED"], 1);
    assert_eq!(stored[4].data["status"], "CANCELED");
    assert!(stored[4].data["canceledAt"].is_string());
    // The campaign's sequence is its latest event's.
    assert_eq!(stage.campaign(id).await["sequence"], 5);
    // None of them is a call's event.
    assert_eq!(
        stage
            .env
            .count(&format!(
                "SELECT count(*) FROM call_events WHERE campaign_id = '{id}' AND call_id IS NOT NULL"
            ))
            .await,
        0
    );
}

#[tokio::test]
async fn a_cancel_reports_the_campaign_after_its_calls_were_canceled() {
    let stage = Stage::new(&[]).await;
    let id = stage.create_campaign(json!({"name": "To cancel"})).await;
    let calls = stage
        .add_calls(id, &["+14155550111", "+14155550112", "+14155550113"])
        .await;
    stage.dial_and_end(calls[0], CallOutcome::Completed).await;
    let reply = stage.act(id, "cancel").await.ok();
    assert_eq!(reply["canceledCalls"], 2);
    let stored = stage.stored(id).await;
    assert_eq!(
        stored.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["campaign.created", "campaign.canceled"]
    );
    let data = &stored[1].data;
    assert_eq!(data["status"], "CANCELED");
    assert_eq!(data["progress"]["calls"]["CANCELED"], 2);
    assert_eq!(data["progress"]["calls"]["PENDING"], 0);
    assert_eq!(data, &stage.campaign(id).await);
    // Nobody receives them here: written already fanned out.
    assert!(stored.iter().all(|e| e.fanned_out));
    // A canceled campaign is never completed.
    assert_eq!(stage.reclaim().await.campaigns_completed, 0);
}

// ---------------------------------------------------------------------------------------
// campaign.completed: once
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn completed_is_written_once_however_many_passes_run() {
    let stage = Stage::new(&[]).await;
    let id = stage.create_campaign(json!({"name": "Once"})).await;
    let empty = stage.create_campaign(json!({"name": "No calls"})).await;
    let paused = stage.create_campaign(json!({"name": "Paused"})).await;
    let calls = stage.add_calls(id, &["+14155550121"]).await;
    let paused_calls = stage.add_calls(paused, &["+14155550122"]).await;
    stage.act(paused, "pause").await.ok();

    // In progress: not completed.
    let claimed = stage.env.claim(&stage.config, calls[0]).await;
    assert_eq!(stage.reclaim().await.campaigns_completed, 0);
    stage
        .env
        .record_accepted(&stage.config, &claimed, "pc-once")
        .await;
    let report = generic_report("msg-once", "pc-once", CallOutcome::NoAnswer, None, None);
    settle_from_webhook(
        &stage.env.pool,
        &report,
        &RetryPolicy::from(stage.config.as_ref()),
    )
    .await
    .expect("settle");
    let status = stage
        .send(Method::GET, &format!("/calls/{}", calls[0]), None)
        .await
        .ok()["status"]
        .clone();
    if status == "PENDING" {
        // NO_ANSWER with attempts left is retried: the campaign is still open.
        assert_eq!(stage.reclaim().await.campaigns_completed, 0);
        stage.dial_and_end(calls[0], CallOutcome::Completed).await;
    }
    stage.cancel_call(paused_calls[0]).await;

    // Two reclaimers at once, then a third pass: one event.
    let (a, b) = tokio::join!(
        ebra_reclaimer::run_pass(&stage.reclaimer),
        ebra_reclaimer::run_pass(&stage.reclaimer)
    );
    let together = a.expect("pass a").campaigns_completed + b.expect("pass b").campaigns_completed;
    assert_eq!(together, 1, "the campaign completed by exactly one pass");
    assert_eq!(stage.reclaim().await.campaigns_completed, 0);
    assert_eq!(
        stage.kinds(id).await,
        ["campaign.created", "campaign.completed"]
    );
    let shown = stage.campaign(id).await;
    assert_eq!(shown["status"], "COMPLETED");
    assert!(shown["completedAt"].is_string());
    assert_eq!(shown["sequence"], 2);

    // No calls: never completed. Paused with every call ended: not until it is resumed.
    assert_eq!(stage.kinds(empty).await, ["campaign.created"]);
    assert_eq!(
        stage.kinds(paused).await,
        ["campaign.created", "campaign.paused"]
    );
    stage.act(paused, "resume").await.ok();
    assert_eq!(stage.reclaim().await.campaigns_completed, 1);
    assert_eq!(
        stage.kinds(paused).await,
        [
            "campaign.created",
            "campaign.paused",
            "campaign.resumed",
            "campaign.completed"
        ]
    );

    // Calls added to a completed campaign are covered next.
}

#[tokio::test]
async fn calls_added_after_completion_bring_one_more_completed_when_they_end() {
    let stage = Stage::new(&[]).await;
    let id = stage.create_campaign(json!({"name": "Waves"})).await;
    let first = stage.add_calls(id, &["+14155550171"]).await;
    stage.cancel_call(first[0]).await;
    assert_eq!(stage.reclaim().await.campaigns_completed, 1);
    let completed_at = stage.campaign(id).await["completedAt"].clone();
    assert!(completed_at.is_string());

    // A bulk add whose every row is a duplicate adds nothing: the campaign stays completed.
    let reply = stage
        .send(
            Method::POST,
            &format!("/campaigns/{id}/calls"),
            Some(&json!({"calls": [{"to": "+14155550171", "scriptId": "renewal-v2"}]})),
        )
        .await
        .ok();
    assert_eq!(reply["duplicate"], 1, "{reply}");
    assert_eq!(stage.reclaim().await.campaigns_completed, 0);
    assert_eq!(stage.campaign(id).await["completedAt"], completed_at);

    // A second wave: ACTIVE while open (the pass clears completedAt), then completed again.
    let second = stage.add_calls(id, &["+14155550172"]).await;
    assert_eq!(stage.campaign(id).await["status"], "ACTIVE");
    assert_eq!(stage.reclaim().await.campaigns_completed, 0, "open");
    assert!(stage.campaign(id).await["completedAt"].is_null());
    stage.dial_and_end(second[0], CallOutcome::Completed).await;
    assert_eq!(stage.reclaim().await.campaigns_completed, 1);
    assert_eq!(stage.reclaim().await.campaigns_completed, 0, "once");

    // A third wave that ends before the next pass (POST /calls naming the campaign, then a
    // cancel): that pass still reopens and completes it.
    let reply = stage
        .send(
            Method::POST,
            "/calls",
            Some(&json!({"to": "+14155550173", "scriptId": "renewal-v2", "campaignId": id})),
        )
        .await
        .expect(201);
    stage
        .cancel_call(reply["id"].as_str().unwrap().parse().unwrap())
        .await;
    assert_eq!(stage.reclaim().await.campaigns_completed, 1);
    assert_eq!(stage.reclaim().await.campaigns_completed, 0, "once");

    let stored = stage.stored(id).await;
    assert_eq!(
        stored.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        [
            "campaign.created",
            "campaign.completed",
            "campaign.completed",
            "campaign.completed"
        ]
    );
    assert_eq!(
        stored.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let totals: Vec<&Value> = stored[1..]
        .iter()
        .map(|e| &e.data["progress"]["total"])
        .collect();
    assert_eq!(totals, [&json!(1), &json!(2), &json!(3)]);
    assert_eq!(stored[3].data, stage.campaign(id).await);
    assert_eq!(
        stage
            .env
            .count("SELECT count(*) FROM campaign_reopened")
            .await,
        0
    );
}

#[tokio::test]
async fn an_add_that_waited_for_the_completion_reopens_the_campaign() {
    let stage = Stage::new(&[]).await;
    let id = stage.create_campaign(json!({"name": "Raced"})).await;
    let calls = stage.add_calls(id, &["+14155550181"]).await;
    stage.cancel_call(calls[0]).await;
    // The reclaimer's transaction, paused after marking the campaign completed.
    let mut reclaimer = stage.env.pool.get().await.expect("pool");
    let tx = reclaimer.transaction().await.expect("tx");
    tx.execute(
        "SELECT 1 FROM campaigns WHERE id = $1 FOR NO KEY UPDATE",
        &[&id],
    )
    .await
    .expect("lock");
    tx.execute(
        "UPDATE campaigns SET completed_at = now(), sequence = sequence + 1 WHERE id = $1",
        &[&id],
    )
    .await
    .expect("mark");
    // A call added meanwhile waits for the campaign's lock...
    let api = stage.api.clone();
    let add = tokio::spawn(async move {
        let body = json!({"to": "+14155550182", "scriptId": "renewal-v2", "campaignId": id});
        let request = Request::builder()
            .method(Method::POST)
            .uri("/calls")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        api.oneshot(request).await.expect("answer").status()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!add.is_finished(), "the add waits for the campaign's lock");
    tx.commit().await.expect("commit");
    assert_eq!(add.await.expect("the add"), StatusCode::CREATED);
    // ...then reads the completion it waited for, and reopens the campaign.
    assert_eq!(
        stage
            .env
            .count(&format!(
                "SELECT count(*) FROM campaign_reopened WHERE campaign_id = '{id}'"
            ))
            .await,
        1
    );
    assert_eq!(
        stage.reclaim().await.campaigns_completed,
        0,
        "its new call is open"
    );
    assert!(stage.campaign(id).await["completedAt"].is_null());
}

#[tokio::test]
async fn a_campaign_a_call_is_being_added_to_is_left_for_the_next_pass() {
    let stage = Stage::new(&[]).await;
    let id = stage.create_campaign(json!({"name": "Busy"})).await;
    let calls = stage.add_calls(id, &["+14155550131"]).await;
    stage.cancel_call(calls[0]).await;
    // A bulk add holds the campaign FOR SHARE until it commits (its calls not visible yet).
    let mut adder = stage.env.pool.get().await.expect("pool");
    let tx = adder.transaction().await.expect("tx");
    tx.query_one("SELECT 1 FROM campaigns WHERE id = $1 FOR SHARE", &[&id])
        .await
        .expect("share lock");
    // Skipped, not waited for: the pass is not held up by the insert.
    let pass = tokio::time::timeout(Duration::from_secs(10), stage.reclaim())
        .await
        .expect("the pass skips a campaign locked by an insert, without waiting");
    assert_eq!(pass.campaigns_completed, 0, "skipped");
    tx.rollback().await.expect("rollback");
    assert_eq!(stage.reclaim().await.campaigns_completed, 1);
}

// ---------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn delivered_signed_to_subscribed_endpoints_and_the_campaign_callback_url() {
    let stage = Stage::new(&[]).await;
    let subscribed = Receiver::start().await;
    let calls_only = Receiver::start().await;
    let every = Receiver::start().await;
    let callback = Receiver::start().await;
    let subscribed_endpoint = stage
        .register(
            json!({"url": subscribed.url, "events": ["campaign.created", "campaign.completed"]}),
        )
        .await;
    stage
        .register(json!({"url": calls_only.url, "events": ["call.created", "call.completed"]}))
        .await;
    let every_endpoint = stage.register(json!({"url": every.url})).await;

    let id = stage
        .create_campaign(json!({"name": "Delivered", "callbackUrl": callback.url}))
        .await;
    stage.act(id, "pause").await.ok();
    stage.act(id, "resume").await.ok();
    let calls = stage.add_calls(id, &["+14155550141"]).await;
    stage.dial_and_end(calls[0], CallOutcome::Completed).await;
    stage.reclaim().await;
    stage.drain().await;

    let stored = stage.stored(id).await;
    let ids = |kinds: &[&str]| -> Vec<String> {
        stored
            .iter()
            .filter(|e| kinds.contains(&e.kind.as_str()))
            .map(|e| e.id.to_string())
            .collect()
    };
    let all = [
        "campaign.created",
        "campaign.paused",
        "campaign.resumed",
        "campaign.completed",
    ];

    // The endpoint subscribed to two types gets those two, signed with its secret.
    let got = campaign_events(&subscribed, subscribed_endpoint["secret"].as_str().unwrap());
    assert_eq!(kinds(&got), ["campaign.created", "campaign.completed"]);
    assert_eq!(
        got.iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        ids(&["campaign.created", "campaign.completed"])
    );
    // The endpoint subscribed to call types only gets no campaign event (its calls' events
    // only).
    assert!(calls_only
        .received()
        .iter()
        .map(Received::json)
        .all(|body| body["type"].as_str().unwrap().starts_with("call.")));
    assert!(!calls_only.received().is_empty());
    // An endpoint without a filter gets every one, in sequence order.
    let got = campaign_events(&every, every_endpoint["secret"].as_str().unwrap());
    assert_eq!(kinds(&got), all);
    // The campaign's callbackUrl: every one, signed with CALLBACK_SECRET, in order.
    let got = campaign_events(&callback, CALLBACK_SECRET);
    assert_eq!(kinds(&got), all);
    for (body, event) in got.iter().zip(&stored) {
        assert_eq!(body["data"], event.data);
        assert_eq!(body["data"]["sequence"], event.sequence);
        assert_eq!(body["data"]["id"], id.to_string());
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["createdAt", "data", "id", "type"]);
    }
    assert_eq!(got[3]["data"]["progress"]["calls"]["COMPLETED"], 1);
    // One delivery per receiver and event, each naming the campaign and no call.
    assert_eq!(
        stage
            .env
            .count(&format!(
                "SELECT count(*) FROM webhook_deliveries \
                  WHERE campaign_id = '{id}' AND call_id IS NULL AND status = 'DELIVERED'"
            ))
            .await,
        2 + 4 + 4
    );
}

#[tokio::test]
async fn a_campaigns_events_wait_for_an_earlier_one_still_retrying() {
    let stage = Stage::new(&[]).await;
    let callback = Receiver::start().await;
    callback.answer([Answer::Status(500)]);
    let id = stage
        .create_campaign(json!({"name": "In order", "callbackUrl": callback.url}))
        .await;
    stage.notify().await;
    stage.act(id, "pause").await.ok();
    // campaign.created is retrying: campaign.paused must not overtake it.
    let report = stage.notify().await;
    assert_eq!(report.sent, 0, "{report:?}");
    stage.drain().await;
    let got = campaign_events(&callback, CALLBACK_SECRET);
    assert_eq!(
        kinds(&got),
        ["campaign.created", "campaign.created", "campaign.paused"]
    );
    assert_eq!(got[0]["id"], got[1]["id"], "a retry repeats the event");
}

#[tokio::test]
async fn a_campaign_event_is_redelivered_to_its_callback_url() {
    let stage = Stage::new(&[]).await;
    let callback = Receiver::start().await;
    let id = stage
        .create_campaign(json!({"name": "Again", "callbackUrl": callback.url}))
        .await;
    stage.drain().await;
    let event = &stage.stored(id).await[0];
    let reply = stage
        .send(
            Method::POST,
            &format!("/events/{}/redeliver", event.id),
            None,
        )
        .await;
    assert_eq!(reply.expect(202)["deliveries"].as_array().unwrap().len(), 1);
    stage.drain().await;
    let got = campaign_events(&callback, CALLBACK_SECRET);
    assert_eq!(kinds(&got), ["campaign.created", "campaign.created"]);
    assert_eq!(got[1]["id"], event.id.to_string());
}

// ---------------------------------------------------------------------------------------
// Refusals, subscriptions, fanned out at write, nudges
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_action_writes_no_event() {
    let stage = Stage::new(&[]).await;
    let id = stage.create_campaign(json!({"name": "Refusals"})).await;
    stage.act(id, "cancel").await.ok();
    let before = stage.kinds(id).await;
    assert_eq!(before, ["campaign.created", "campaign.canceled"]);
    stage.act(id, "resume").await.expect(409);
    stage.act(id, "pause").await.expect(409);
    stage
        .send(
            Method::POST,
            &format!("/campaigns/{id}/calls"),
            Some(&json!({"calls": [{"to": "+14155550151", "scriptId": "s"}]})),
        )
        .await
        .expect(409);
    assert_eq!(stage.kinds(id).await, before);
    assert_eq!(stage.campaign(id).await["sequence"], 2);
    // Unknown campaign: 404, nothing written.
    let nowhere = Uuid::now_v7();
    stage.act(nowhere, "pause").await.expect(404);
    stage.act(nowhere, "cancel").await.expect(404);
    assert_eq!(
        stage
            .env
            .count("SELECT count(*) FROM call_events WHERE campaign_id IS NOT NULL")
            .await,
        2
    );
    // An invalid campaign is not created: no event.
    stage
        .send(Method::POST, "/campaigns", Some(&json!({"name": ""})))
        .await
        .expect(422);
    assert_eq!(
        stage
            .env
            .count("SELECT count(*) FROM call_events WHERE campaign_id IS NOT NULL")
            .await,
        2
    );
}

#[tokio::test]
async fn endpoints_subscribe_to_campaign_types() {
    let stage = Stage::new(&[]).await;
    let endpoint = stage
        .register(json!({"url": "https://hooks.example.test/a", "events": ["campaign.completed", "campaign.canceled", "call.failed"]}))
        .await;
    assert_eq!(
        endpoint["events"],
        json!(["call.failed", "campaign.canceled", "campaign.completed"])
    );
    let reply = stage
        .send(
            Method::POST,
            "/webhook-endpoints",
            Some(&json!({"url": "https://hooks.example.test/b", "events": ["campaign.finished"]})),
        )
        .await;
    reply.expect(422);
}

#[tokio::test]
async fn events_nobody_receives_are_written_fanned_out_and_wake_nobody() {
    let sqs = common::sqs_client(&common::sqs_endpoint());
    let nudges = sqs
        .create_queue()
        .queue_name(format!("nudges-{}", Uuid::new_v4().simple()))
        .send()
        .await
        .expect("a nudge queue")
        .queue_url
        .expect("its url");
    let stage = Stage::new(&[("EVENTS_QUEUE_URL", nudges.as_str())]).await;
    let env = &stage.env;

    // No endpoint, no callbackUrl: kept, already fanned out, and no nudge.
    let quiet = stage.create_campaign(json!({"name": "Quiet"})).await;
    stage.act(quiet, "pause").await.ok();
    assert!(stage.stored(quiet).await.iter().all(|e| e.fanned_out));
    assert!(env.drain(&nudges).await.is_empty(), "a nudge for nobody");

    // An endpoint for call events only: campaign events are still for nobody.
    stage
        .register(json!({"url": "https://hooks.example.test/calls", "events": ["call.completed"]}))
        .await;
    stage.act(quiet, "resume").await.ok();
    assert!(stage.stored(quiet).await.iter().all(|e| e.fanned_out));
    assert!(
        env.drain(&nudges).await.is_empty(),
        "a nudge for a type nobody takes"
    );

    // A campaign with a callbackUrl: its events wait for the notifier, which is nudged.
    let heard = stage
        .create_campaign(json!({"name": "Heard", "callbackUrl": "https://hooks.example.test/cb"}))
        .await;
    assert!(stage.stored(heard).await.iter().all(|e| !e.fanned_out));
    assert_eq!(
        env.drain(&nudges).await.len(),
        1,
        "one nudge for the creation"
    );
    stage.act(heard, "pause").await.ok();
    assert_eq!(env.drain(&nudges).await.len(), 1, "one nudge for the pause");
    stage.act(heard, "cancel").await.ok();
    assert_eq!(
        env.drain(&nudges).await.len(),
        1,
        "one nudge for the cancel"
    );

    // An endpoint subscribed to campaign.completed: the completion waits, and the
    // reclaimer's pass (which found it) nudges.
    stage
        .register(
            json!({"url": "https://hooks.example.test/done", "events": ["campaign.completed"]}),
        )
        .await;
    let calls = stage.add_calls(quiet, &["+14155550161"]).await;
    stage.cancel_call(calls[0]).await;
    env.drain(&nudges).await;
    let report = stage.reclaim().await;
    assert_eq!(report.campaigns_completed, 1);
    assert!(report.events_waiting);
    let completed = stage.stored(quiet).await.pop().unwrap();
    assert_eq!(completed.kind, "campaign.completed");
    assert!(!completed.fanned_out);
}
