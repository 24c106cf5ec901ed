//! Campaigns (issue 13) against a real Postgres and a real SQS endpoint: the routes and
//! every bad input, bulk adds in CSV and JSON (and the SQS messages they may send), pause,
//! resume and cancel (with their events), the claim's per-campaign limit under concurrent
//! workers, and the fair pick of waiting calls across campaigns.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::http::{send, Reply};
use common::TestEnv;
use ebra_api::AppState;
use ebra_shared::store::claim::{claim_calls, Claim};
use ebra_shared::store::sweep::refill_free_slots;
use serde_json::{json, Value};
use uuid::Uuid;

struct Api {
    env: TestEnv,
    router: Router,
    cap: u32,
}

impl Api {
    async fn start(cap: u32) -> Self {
        let env = TestEnv::new().await;
        let cap_text = cap.to_string();
        let config = env.config(&[("GLOBAL_CONCURRENCY", cap_text.as_str())]);
        let state = AppState::new(env.pool.clone(), Some(env.queue.clone()), Arc::new(config));
        Self {
            router: ebra_api::router(state),
            env,
            cap,
        }
    }

    fn config(&self) -> ebra_shared::Config {
        let cap = self.cap.to_string();
        self.env.config(&[("GLOBAL_CONCURRENCY", cap.as_str())])
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        send(&self.router, request).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(path)
                .header(header::CONTENT_TYPE, content_type)
                .body(body.into())
                .unwrap(),
        )
        .await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, "application/json", body.to_string())
            .await
    }

    async fn post(&self, path: &str) -> Reply {
        self.send(
            Request::builder()
                .method(Method::POST)
                .uri(path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Request::builder().uri(path).body(Body::empty()).unwrap())
            .await
    }

    async fn campaign(&self, body: Value) -> String {
        let reply = self.post_json("/campaigns", &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["id"].as_str().expect("id").to_owned()
    }

    async fn add_csv(&self, campaign: &str, csv: impl Into<Body>) -> Reply {
        self.call(
            Method::POST,
            &format!("/campaigns/{campaign}/calls"),
            "text/csv",
            csv,
        )
        .await
    }

    async fn count(&self, sql: &str) -> i64 {
        self.env.count(sql).await
    }

    /// Messages on the calls queue (received and left to come back).
    async fn messages(&self) -> usize {
        self.env.drain(&self.env.queue_url).await.len()
    }
}

fn statuses(result: &Value) -> Vec<String> {
    result["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["status"].as_str().expect("status").to_owned())
        .collect()
}

/// `n` rows of CSV (header included), numbers from `+1415555<first>`.
fn csv_of(first: usize, n: usize) -> String {
    let mut csv = String::from("to,scriptId,customer\n");
    for i in first..first + n {
        csv.push_str(&format!("+1415555{i:04},s,c-{i}\n"));
    }
    csv
}

// ---------------------------------------------------------------------------------------------
// Routes and bad input

#[tokio::test]
async fn a_campaign_is_created_listed_and_shown_with_its_progress() {
    let api = Api::start(10).await;
    let reply = api
        .post_json(
            "/campaigns",
            &json!({"name": "Renewals", "scriptId": "renewals-v2", "maxConcurrency": 3,
                    "expiresAt": "2100-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let campaign = reply.json();
    let id = campaign["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.headers.get("location").unwrap(),
        &format!("/campaigns/{id}")
    );
    assert_eq!(campaign["name"], "Renewals");
    assert_eq!(campaign["scriptId"], "renewals-v2");
    assert_eq!(campaign["maxConcurrency"], 3);
    assert_eq!(campaign["status"], "COMPLETED", "nothing to dial yet");

    let added = api
        .add_csv(&id, "to,name\n+14155550100,Ann\n+14155550101,Bob\n")
        .await
        .ok();
    assert_eq!(added["created"], 2);
    let shown = api.get(&format!("/campaigns/{id}")).await.ok();
    assert_eq!(shown["status"], "ACTIVE");
    assert_eq!(shown["progress"]["calls"]["PENDING"], 2);
    assert_eq!(shown["progress"]["total"], 2);
    assert_eq!(shown["progress"]["inProgress"], 0);
    assert_eq!(shown["progress"]["maxConcurrency"], 3);
    assert_eq!(shown["progress"]["dialsLastHour"], 0);
    assert!(shown["progress"]["etaSeconds"].is_null());
    assert_eq!(shown["progress"]["failures"], json!([]));

    // One call dialed, one failed: the progress shows the dial, the ETA and the failure.
    let config = api.config();
    let ids: Vec<Uuid> = added["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    api.env.claim(&config, ids[0]).await;
    api.env
        .execute(&format!(
            "UPDATE calls SET status = 'FAILED', ended_at = now(), outbox_due_at = NULL, \
                    outcome = 'BUSY', last_error = 'busy after 3 attempts' WHERE id = '{}'",
            ids[1]
        ))
        .await;
    let shown = api.get(&format!("/campaigns/{id}")).await.ok();
    assert_eq!(shown["progress"]["inProgress"], 1);
    assert_eq!(shown["progress"]["dialsLastHour"], 1);
    assert!(
        shown["progress"]["etaSeconds"]
            .as_f64()
            .is_some_and(|eta| eta > 0.0 && eta < 3600.0),
        "{}",
        shown["progress"]
    );
    assert_eq!(
        shown["progress"]["failures"],
        json!([{"status": "FAILED", "outcome": "BUSY", "lastError": "busy after 3 attempts", "calls": 1}])
    );

    // Its calls carry the campaign's defaults and its id, and the listing filters by it.
    let calls = api.get(&format!("/calls?campaignId={id}")).await.ok();
    assert_eq!(calls["items"].as_array().unwrap().len(), 2);
    for call in calls["items"].as_array().unwrap() {
        assert_eq!(call["campaignId"], id.as_str());
        assert_eq!(call["scriptId"], "renewals-v2");
        assert_eq!(call["expiresAt"], "2100-01-01T00:00:00Z");
    }
    let other = api.campaign(json!({"name": "Other"})).await;
    let none = api.get(&format!("/calls?campaignId={other}")).await.ok();
    assert_eq!(none["items"], json!([]));
    api.get("/calls?campaignId=nope").await.problem(400);

    let list = api.get("/campaigns").await.ok();
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["Other", "Renewals"], "newest first");
    let page = api.get("/campaigns?pageSize=1").await.ok();
    let cursor = page["nextCursor"].as_str().expect("a next page").to_owned();
    let next = api
        .get(&format!("/campaigns?pageSize=1&cursor={cursor}"))
        .await
        .ok();
    assert_eq!(next["items"][0]["name"], "Renewals");
}

#[tokio::test]
async fn bad_campaigns_and_bad_ids_are_problems_that_write_nothing() {
    let api = Api::start(10).await;
    let invalid = api
        .post_json(
            "/campaigns",
            &json!({"name": " ", "scriptId": "", "maxConcurrency": 11, "expiresAt": "2001-01-01T00:00:00Z",
                    "callbackUrl": "ftp://x"}),
        )
        .await;
    invalid.problem(422);
    assert_eq!(
        invalid.fields(),
        [
            "name",
            "scriptId",
            "maxConcurrency",
            "expiresAt",
            "callbackUrl"
        ]
    );
    api.post_json("/campaigns", &json!({"name": "x", "maxConcurrency": 0}))
        .await
        .problem(422);
    api.post_json("/campaigns", &json!({"name": "x", "priority": 1}))
        .await
        .problem(400);
    api.post_json("/campaigns", &json!({})).await.problem(400);
    api.post_json("/campaigns", &json!({"name": 5}))
        .await
        .problem(400);
    api.call(Method::POST, "/campaigns", "text/plain", "name=x")
        .await
        .problem(415);
    assert_eq!(api.count("SELECT count(*) FROM campaigns").await, 0);

    let missing = Uuid::new_v4();
    api.get(&format!("/campaigns/{missing}")).await.problem(404);
    api.get("/campaigns/not-a-uuid").await.problem(400);
    for action in ["pause", "resume", "cancel"] {
        api.post(&format!("/campaigns/{missing}/{action}"))
            .await
            .problem(404);
        api.post(&format!("/campaigns/x/{action}"))
            .await
            .problem(400);
    }
    api.add_csv(&missing.to_string(), "to\n+14155550100\n")
        .await
        .problem(404);
    api.get("/campaigns?pageSize=0").await.problem(400);
    api.get("/campaigns?cursor=zzz").await.problem(400);
    api.get("/campaigns?sort=name").await.problem(400);

    // POST /calls naming a campaign that does not exist, or with a malformed id.
    let reply = api
        .post_json(
            "/calls",
            &json!({"to": "+14155550100", "scriptId": "s", "campaignId": missing}),
        )
        .await;
    reply.problem(422);
    assert_eq!(reply.fields(), ["campaignId"]);
    api.post_json(
        "/calls",
        &json!({"to": "+14155550100", "scriptId": "s", "campaignId": "x"}),
    )
    .await
    .problem(422);
    assert_eq!(api.count("SELECT count(*) FROM calls").await, 0);
}

#[tokio::test]
async fn csv_edge_cases_get_an_answer_per_row() {
    let api = Api::start(10).await;
    let id = api.campaign(json!({"name": "CSV", "scriptId": "s"})).await;
    // BOM, CRLF, a quoted field with a comma, a quote and a newline, an unknown column,
    // a missing `to`, a bad number, a bad date, a row of the wrong width, and a row
    // repeated within the file.
    let csv = "\u{feff}to,first name,note,scheduledAt\r\n\
               +14155550100,\"Doe, Jane\",\"said \"\"hi\"\"\nthen left\",\r\n\
               ,Nobody,,\r\n\
               555,Bad,,\r\n\
               +14155550101,Date,,tomorrow\r\n\
               +14155550102,Short\r\n\
               +14155550103,Ok,,\r\n\
               +14155550100,\"Doe, Jane\",\"said \"\"hi\"\"\nthen left\",\r\n";
    let result = api.add_csv(&id, csv).await.ok();
    assert_eq!(
        statuses(&result),
        [
            "created",
            "rejected",
            "rejected",
            "rejected",
            "rejected",
            "created",
            "duplicate"
        ]
    );
    assert_eq!(result["created"], 2);
    assert_eq!(result["duplicate"], 1);
    assert_eq!(result["rejected"], 4);
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(rows[1]["errors"][0]["field"], "to");
    assert_eq!(rows[2]["errors"][0]["field"], "to");
    assert_eq!(rows[3]["errors"][0]["field"], "scheduledAt");
    assert_eq!(rows[4]["errors"][0]["field"], "row");
    assert_eq!(
        rows[6]["id"], rows[0]["id"],
        "the repeat answers with the first row's call"
    );
    assert_eq!(
        api.count("SELECT count(*) FROM calls").await,
        2,
        "bad rows write nothing"
    );

    let first = rows[0]["id"].as_str().unwrap();
    let call = api.get(&format!("/calls/{first}")).await.ok();
    assert_eq!(
        call["metadata"],
        json!({"first name": "Doe, Jane", "note": "said \"hi\"\nthen left"})
    );

    // The same file again creates nothing new.
    let again = api.add_csv(&id, csv).await.ok();
    assert_eq!(
        statuses(&again),
        [
            "duplicate",
            "rejected",
            "rejected",
            "rejected",
            "rejected",
            "duplicate",
            "duplicate"
        ]
    );
    assert_eq!(api.count("SELECT count(*) FROM calls").await, 2);

    // A row's own idempotencyKey: reused with other content, it is rejected.
    let keyed = api
        .add_csv(
            &id,
            "to,idempotencyKey\n+14155550110,k-1\n+14155550111,k-1\n",
        )
        .await
        .ok();
    assert_eq!(statuses(&keyed), ["created", "rejected"]);
    let later = api
        .add_csv(&id, "to,idempotencyKey\n+14155550112,k-1\n")
        .await
        .ok();
    assert_eq!(statuses(&later), ["rejected"]);
    assert_eq!(later["rows"][0]["errors"][0]["field"], "idempotencyKey");

    // A campaign without a default scriptId needs one per row.
    let bare = api.campaign(json!({"name": "No script"})).await;
    let result = api
        .add_csv(&bare, "to,scriptId\n+14155550120,\n+14155550121,own\n")
        .await
        .ok();
    assert_eq!(statuses(&result), ["rejected", "created"]);
    assert_eq!(result["rows"][0]["errors"][0]["field"], "scriptId");
}

#[tokio::test]
async fn bodies_that_are_not_csv_or_json_or_too_large_are_refused_whole() {
    let api = Api::start(10).await;
    let id = api
        .campaign(json!({"name": "Bodies", "scriptId": "s"}))
        .await;
    let path = format!("/campaigns/{id}/calls");
    // No `to` column, a column named twice, an empty body, an unnamed column.
    for csv in [
        "phone\n+14155550100\n",
        "to,to\n1,2\n",
        "",
        "to,\n+14155550100,x\n",
    ] {
        api.add_csv(&id, csv).await.problem(400);
    }
    // JSON of the wrong shape.
    for body in [
        "[1,2]",
        "{\"calls\": 5}",
        "{\"rows\": []}",
        "{\"calls\": [] ",
        "not json",
    ] {
        api.call(Method::POST, &path, "application/json", body)
            .await
            .problem(400);
    }
    // Neither CSV nor JSON.
    api.call(Method::POST, &path, "application/xml", "<calls/>")
        .await
        .problem(415);
    api.send(
        Request::builder()
            .method(Method::POST)
            .uri(&path)
            .body(Body::from("to\n+14155550100\n"))
            .unwrap(),
    )
    .await
    .problem(415);
    // 1,001 rows; 50 MB.
    api.add_csv(&id, csv_of(0, 1001)).await.problem(413);
    let calls: Vec<Value> = (0..1001)
        .map(|i| json!({"to": format!("+1415555{i:04}")}))
        .collect();
    api.post_json(&path, &json!({ "calls": calls }))
        .await
        .problem(413);
    let huge = format!("to,blob\n+14155550100,{}\n", "x".repeat(50 * 1024 * 1024));
    let reply = api.add_csv(&id, huge).await;
    assert_eq!(
        reply.problem(413)["type"],
        "urn:ebra:problem:payload-too-large"
    );
    assert_eq!(api.count("SELECT count(*) FROM calls").await, 0);

    // JSON rows: each item on its own.
    let result = api
        .post_json(
            &path,
            &json!({"calls": [
                {"to": "+14155550100", "metadata": {"k": 1}},
                {"to": "+14155550101", "priority": 1},
                5,
                {"to": "+14155550102", "metadata": [1]},
                {"scriptId": "x"}
            ]}),
        )
        .await
        .ok();
    assert_eq!(
        statuses(&result),
        ["created", "rejected", "rejected", "rejected", "rejected"]
    );
    assert_eq!(result["rows"][3]["errors"][0]["field"], "metadata");
    // 1,000 rows are fine.
    let full = api.add_csv(&id, csv_of(2000, 1000)).await.ok();
    assert_eq!(full["created"], 1000);
}

#[tokio::test]
async fn a_bulk_add_sends_no_more_messages_than_free_slots() {
    let api = Api::start(5).await;
    let id = api.campaign(json!({"name": "Big", "scriptId": "s"})).await;
    let result = api.add_csv(&id, csv_of(0, 300)).await.ok();
    assert_eq!(result["created"], 300);
    assert_eq!(
        api.count("SELECT count(*) FROM calls WHERE outbox_due_at IS NOT NULL")
            .await,
        5,
        "only as many calls as free slots are marked"
    );
    assert_eq!(api.messages().await, 5, "and only they get a message");
    // A second batch while those five are on their way: no room, no message.
    let more = api.add_csv(&id, csv_of(300, 100)).await.ok();
    assert_eq!(more["created"], 100);
    assert_eq!(api.messages().await, 0);
    // Every call was recorded with its call.created event.
    assert_eq!(
        api.count("SELECT count(*) FROM call_events WHERE type = 'call.created'")
            .await,
        400
    );
    // Concurrent bulk adds take turns while there is room: together they mark no more
    // than the free slots.
    let api2 = Api::start(5).await;
    let id2 = api2
        .campaign(json!({"name": "Parallel", "scriptId": "s"}))
        .await;
    let path = format!("/campaigns/{id2}/calls");
    let adds = (0..6).map(|k| api2.call(Method::POST, &path, "text/csv", csv_of(k * 100, 100)));
    for reply in futures::future::join_all(adds).await {
        assert_eq!(reply.ok()["created"], 100);
    }
    assert_eq!(
        api2.count("SELECT count(*) FROM calls WHERE outbox_due_at IS NOT NULL")
            .await,
        5,
        "six concurrent bulk adds marked no more than the five free slots"
    );
    assert_eq!(api2.messages().await, 5);
    // With a campaign limit of 2, only two get a message.
    let api = Api::start(5).await;
    let id = api
        .campaign(json!({"name": "Small", "scriptId": "s", "maxConcurrency": 2}))
        .await;
    api.add_csv(&id, csv_of(0, 20)).await.ok();
    assert_eq!(api.messages().await, 2);
}

// ---------------------------------------------------------------------------------------------
// Pause, resume, cancel

#[tokio::test]
async fn a_paused_campaign_is_not_claimed_and_resume_brings_its_calls() {
    let api = Api::start(10).await;
    let config = api.config();
    let id = api.campaign(json!({"name": "P", "scriptId": "s"})).await;
    let added = api.add_csv(&id, csv_of(0, 4)).await.ok();
    let ids: Vec<Uuid> = added["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(api.messages().await, 4);

    let paused = api.post(&format!("/campaigns/{id}/pause")).await.ok();
    assert_eq!(paused["status"], "PAUSED");
    // Their messages arrive: nothing is claimed, the marks are settled (parked).
    let claims = claim_calls(&api.env.pool, &ids, config.global_concurrency, None)
        .await
        .unwrap();
    assert!(
        claims.iter().all(|c| matches!(c, Claim::CampaignPaused)),
        "{claims:?}"
    );
    assert_eq!(
        api.count("SELECT count(*) FROM calls WHERE outbox_due_at IS NOT NULL OR nudged_at IS NOT NULL OR status <> 'PENDING'")
            .await,
        0
    );
    // Nothing brings them while paused: the refill skips the campaign.
    let (_, messages) = refill_free_slots(&api.env.pool, config.global_concurrency)
        .await
        .unwrap();
    assert!(messages.is_empty(), "{messages:?}");
    // Calls added while paused are parked too.
    api.add_csv(&id, csv_of(100, 3)).await.ok();
    assert_eq!(api.messages().await, 0);
    // A pause of a paused campaign changes nothing.
    api.post(&format!("/campaigns/{id}/pause")).await.ok();

    let resumed = api.post(&format!("/campaigns/{id}/resume")).await.ok();
    assert_eq!(resumed["status"], "ACTIVE");
    assert_eq!(
        api.messages().await,
        7,
        "the resume nudged every waiting call"
    );
    let claims = claim_calls(&api.env.pool, &ids, config.global_concurrency, None)
        .await
        .unwrap();
    assert!(
        claims.iter().all(|c| matches!(c, Claim::Claimed(_))),
        "{claims:?}"
    );
}

#[tokio::test]
async fn cancel_cancels_every_pending_call_with_its_event_and_refuses_new_calls() {
    let api = Api::start(10).await;
    let config = api.config();
    let id = api.campaign(json!({"name": "C", "scriptId": "s"})).await;
    let other = api
        .campaign(json!({"name": "Other", "scriptId": "s"}))
        .await;
    let added = api.add_csv(&id, csv_of(0, 6)).await.ok();
    api.add_csv(&other, csv_of(100, 2)).await.ok();
    // One call in progress: it finishes, the cancel leaves it.
    let first: Uuid = added["rows"][0]["id"].as_str().unwrap().parse().unwrap();
    api.env.claim(&config, first).await;

    let reply = api.post(&format!("/campaigns/{id}/cancel")).await.ok();
    assert_eq!(reply["canceledCalls"], 5);
    assert_eq!(reply["campaign"]["status"], "CANCELED");
    assert!(reply["campaign"]["canceledAt"].is_string());
    let campaign_calls = |status: &str| {
        format!("SELECT count(*) FROM calls WHERE campaign_id = '{id}' AND status = '{status}'")
    };
    assert_eq!(api.count(&campaign_calls("CANCELED")).await, 5);
    assert_eq!(api.count(&campaign_calls("IN_PROGRESS")).await, 1);
    // Each canceled call: sequence bumped, one call.canceled event carrying it.
    assert_eq!(
        api.count(&format!(
            "SELECT count(*) FROM calls c JOIN call_events e ON e.call_id = c.id \
              WHERE c.campaign_id = '{id}' AND c.status = 'CANCELED' AND e.type = 'call.canceled' \
                AND e.sequence = c.sequence AND c.sequence = 2 \
                AND e.data->>'status' = 'CANCELED' AND e.data->>'campaignId' = '{id}'"
        ))
        .await,
        5
    );
    // The other campaign is untouched.
    assert_eq!(
        api.count(&format!(
            "SELECT count(*) FROM calls WHERE campaign_id = '{other}' AND status = 'PENDING'"
        ))
        .await,
        2
    );

    // A canceled campaign takes no more calls, and cannot be paused or resumed.
    api.add_csv(&id, "to\n+14155550999\n").await.problem(409);
    api.post_json(
        "/calls",
        &json!({"to": "+14155550999", "scriptId": "s", "campaignId": id}),
    )
    .await
    .problem(409);
    api.post(&format!("/campaigns/{id}/pause"))
        .await
        .problem(409);
    api.post(&format!("/campaigns/{id}/resume"))
        .await
        .problem(409);
    // Canceling again cancels nothing more.
    let again = api.post(&format!("/campaigns/{id}/cancel")).await.ok();
    assert_eq!(again["canceledCalls"], 0);
    assert_eq!(
        api.count("SELECT count(*) FROM calls WHERE phone = '+14155550999'")
            .await,
        0
    );

    // A call of the canceled campaign that comes back to PENDING (a retry) is canceled
    // when its message arrives, with its event.
    api.env
        .execute(&format!(
            "UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL WHERE call_id = '{first}'; \
             UPDATE calls SET status = 'PENDING', started_at = NULL WHERE id = '{first}'"
        ))
        .await;
    let claims = claim_calls(&api.env.pool, &[first], config.global_concurrency, None)
        .await
        .unwrap();
    assert!(matches!(claims[0], Claim::NotPending(_)), "{claims:?}");
    assert_eq!(api.count(&campaign_calls("CANCELED")).await, 6);
    assert_eq!(
        api.count(&format!(
            "SELECT count(*) FROM call_events WHERE call_id = '{first}' AND type = 'call.canceled'"
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn post_calls_may_join_a_campaign() {
    let api = Api::start(10).await;
    let id = api
        .campaign(json!({"name": "One by one", "maxConcurrency": 1}))
        .await;
    let first = api
        .post_json(
            "/calls",
            &json!({"to": "+14155550100", "scriptId": "s", "campaignId": id}),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    assert_eq!(first.json()["campaignId"], id.as_str());
    // The same Idempotency-Key with another campaign is another request.
    let keyed = |campaign: &str| {
        Request::builder()
            .method(Method::POST)
            .uri("/calls")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "same-key")
            .body(Body::from(
                json!({"to": "+14155550101", "scriptId": "s", "campaignId": campaign}).to_string(),
            ))
            .unwrap()
    };
    assert_eq!(api.send(keyed(&id)).await.status, StatusCode::CREATED);
    assert_eq!(api.send(keyed(&id)).await.status, StatusCode::OK);
    let other = api.campaign(json!({"name": "Other"})).await;
    api.send(keyed(&other)).await.problem(422);
    let shown = api.get(&format!("/campaigns/{id}")).await.ok();
    assert_eq!(shown["progress"]["total"], 2);
}

#[tokio::test]
async fn metrics_show_per_campaign_counts() {
    let api = Api::start(10).await;
    let id = api
        .campaign(json!({"name": "Q\"1", "scriptId": "s", "maxConcurrency": 4}))
        .await;
    api.add_csv(&id, csv_of(0, 3)).await.ok();
    let json = api.get("/metrics").await.ok();
    let campaign = &json["campaigns"][0];
    assert_eq!(campaign["id"], id.as_str());
    assert_eq!(campaign["pending"], 3);
    assert_eq!(campaign["inProgress"], 0);
    let text = api.get("/metrics?format=prometheus").await;
    assert_eq!(text.status, StatusCode::OK);
    let body = text.text();
    assert!(
        body.contains(&format!(
            "ebra_campaign_calls{{campaign_id=\"{id}\",campaign=\"Q\\\"1\",campaign_status=\"ACTIVE\",status=\"PENDING\"}} 3"
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "ebra_campaign_max_concurrency{{campaign_id=\"{id}\",campaign=\"Q\\\"1\"}} 4"
        )),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// The claim: maxConcurrency under concurrent workers

#[tokio::test]
async fn a_campaign_never_exceeds_its_max_concurrency_under_concurrent_claims() {
    let api = Api::start(50).await;
    let config = api.config();
    // Three rounds, each a campaign of its own (a race shows in some rounds, not all).
    for round in 0..3 {
        let id = api
            .campaign(
                json!({"name": format!("Limited {round}"), "scriptId": "s", "maxConcurrency": 3}),
            )
            .await;
        let added = api.add_csv(&id, csv_of(round * 100, 40)).await.ok();
        let ids: Vec<Uuid> = added["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().parse().unwrap())
            .collect();
        // Calls without a campaign, claimed alongside: the campaign's limit is not theirs.
        let mut free_calls = Vec::new();
        for n in 0..6 {
            free_calls.push(
                api.env
                    .pending_call(&config, &format!("+1650555{:04}", round * 100 + n), None)
                    .await,
            );
        }
        // Ten workers at once, each with a batch of four of the campaign's calls and one
        // without a campaign.
        let mut workers = Vec::new();
        for (n, batch) in ids.chunks(4).enumerate() {
            let pool = api.env.pool.clone();
            let mut batch = batch.to_vec();
            if let Some(free) = free_calls.get(n) {
                batch.push(*free);
            }
            workers.push(tokio::spawn(async move {
                claim_calls(&pool, &batch, 50, None).await.expect("claim")
            }));
        }
        let mut claimed = 0;
        let mut full = 0;
        for worker in workers {
            for claim in worker.await.unwrap() {
                match claim {
                    Claim::Claimed(_) => claimed += 1,
                    Claim::CampaignFull => full += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let in_campaign = api
            .count(&format!(
                "SELECT count(*) FROM calls WHERE campaign_id = '{id}' AND status = 'IN_PROGRESS'"
            ))
            .await;
        assert_eq!(in_campaign, 3, "round {round}: exactly its maxConcurrency");
        assert_eq!(
            claimed,
            3 + 6,
            "round {round}: its three and every call without a campaign"
        );
        assert_eq!(full, 37, "round {round}");
        // Those answered CampaignFull are parked: no marks left for the outbox to re-send.
        assert_eq!(
            api.count(&format!(
                "SELECT count(*) FROM calls WHERE campaign_id = '{id}' AND status = 'PENDING' \
                  AND (outbox_due_at IS NOT NULL OR nudged_at IS NOT NULL)"
            ))
            .await,
            0
        );
        // And the refill gives the full campaign nothing.
        let (_, messages) = refill_free_slots(&api.env.pool, 50).await.unwrap();
        let picked = nudged_campaigns(&api, &messages).await;
        let campaign: Uuid = id.parse().unwrap();
        assert!(!picked.contains(&Some(campaign)), "{picked:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fairness

/// The campaign of each call the refill nudged.
async fn nudged_campaigns(
    api: &Api,
    messages: &[ebra_shared::queue::Enqueue],
) -> Vec<Option<Uuid>> {
    let client = api.env.pool.get().await.unwrap();
    let mut out = Vec::new();
    for message in messages {
        let row = client
            .query_one(
                "SELECT campaign_id FROM calls WHERE id = $1",
                &[&message.call_id],
            )
            .await
            .unwrap();
        out.push(row.get(0));
    }
    out
}

#[tokio::test]
async fn a_small_campaign_arriving_while_a_big_one_drains_gets_the_freed_slots() {
    let api = Api::start(4).await;
    let config = api.config();
    let big = api.campaign(json!({"name": "Big", "scriptId": "s"})).await;
    let big_rows = api.add_csv(&big, csv_of(0, 60)).await.ok();
    // The big campaign holds two of the four slots; older calls wait behind them.
    for row in big_rows["rows"].as_array().unwrap().iter().take(2) {
        api.env
            .claim(&config, row["id"].as_str().unwrap().parse().unwrap())
            .await;
    }
    let small = api
        .campaign(json!({"name": "Small", "scriptId": "s"}))
        .await;
    api.add_csv(&small, csv_of(1000, 5)).await.ok();
    // Messages already sent are delivered (and parked by the claim): start from a backlog
    // that only the nudges bring.
    api.env
        .execute("UPDATE calls SET outbox_due_at = NULL, nudged_at = NULL WHERE status = 'PENDING'")
        .await;
    let small_id: Uuid = small.parse().unwrap();
    let big_id: Uuid = big.parse().unwrap();

    // Two free slots: both go to the small campaign (none in progress), though the big
    // one's calls are older.
    let (_, messages) = refill_free_slots(&api.env.pool, config.global_concurrency)
        .await
        .unwrap();
    assert_eq!(
        nudged_campaigns(&api, &messages).await,
        [Some(small_id), Some(small_id)]
    );

    // With both at two in progress, the freed slots alternate between them.
    api.env
        .execute("UPDATE calls SET nudged_at = NULL WHERE status = 'PENDING'")
        .await;
    let claimed: Vec<Uuid> = messages.iter().map(|m| m.call_id).collect();
    for id in &claimed {
        api.env.claim(&config, *id).await;
    }
    // Free all four slots (the calls end) and refill.
    api.env
        .execute(
            "UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL; \
             UPDATE calls SET status = 'COMPLETED', ended_at = now() WHERE status = 'IN_PROGRESS'",
        )
        .await;
    let (_, messages) = refill_free_slots(&api.env.pool, config.global_concurrency)
        .await
        .unwrap();
    let picked = nudged_campaigns(&api, &messages).await;
    assert_eq!(picked.len(), 4);
    assert_eq!(
        picked.iter().filter(|c| **c == Some(small_id)).count(),
        2,
        "{picked:?}"
    );
    assert_eq!(
        picked.iter().filter(|c| **c == Some(big_id)).count(),
        2,
        "{picked:?}"
    );
}

#[tokio::test]
async fn calls_without_a_campaign_are_a_group_of_their_own() {
    let api = Api::start(4).await;
    let config = api.config();
    let big = api.campaign(json!({"name": "Big", "scriptId": "s"})).await;
    api.add_csv(&big, csv_of(0, 30)).await.ok();
    let mut loose = Vec::new();
    for n in 0..3 {
        loose.push(
            api.env
                .pending_call(&config, &format!("+1650555{n:04}"), None)
                .await,
        );
    }
    api.env
        .execute("UPDATE calls SET outbox_due_at = NULL, nudged_at = NULL WHERE status = 'PENDING'")
        .await;
    let (_, messages) = refill_free_slots(&api.env.pool, config.global_concurrency)
        .await
        .unwrap();
    let picked = nudged_campaigns(&api, &messages).await;
    assert_eq!(picked.len(), 4);
    assert_eq!(
        picked.iter().filter(|c| c.is_none()).count(),
        2,
        "{picked:?}"
    );
}

/// A window closed now in Los Angeles (the zone of +1 415), every day: it opens in one to two
/// hours (checked on chrono-tz's wall clock, independently of Ebra's zones).
fn closed_now_in_los_angeles() -> Value {
    use chrono::Timelike as _;
    let hour = chrono::Utc::now()
        .with_timezone(&chrono_tz::America::Los_Angeles)
        .hour();
    json!({
        "start": format!("{:02}:00", (hour + 2) % 24),
        "end": format!("{:02}:00", (hour + 3) % 24),
    })
}

#[tokio::test]
async fn bulk_rows_obey_the_calling_rules() {
    // A CALL_WINDOW closed now in Los Angeles (the zone of +1 415).
    let window = closed_now_in_los_angeles().to_string();
    let env = TestEnv::new().await;
    let config = env.config(&[
        ("GLOBAL_CONCURRENCY", "10"),
        ("CALL_WINDOW", window.as_str()),
    ]);
    let api = Api {
        router: ebra_api::router(AppState::new(
            env.pool.clone(),
            Some(env.queue.clone()),
            Arc::new(config),
        )),
        env,
        cap: 10,
    };
    let suppressed = api
        .call(
            Method::PUT,
            "/suppressions/%2B14155550199",
            "application/json",
            r#"{"reason": "asked not to be called"}"#,
        )
        .await;
    assert!(suppressed.status.is_success(), "{}", suppressed.text());
    let campaign = api
        .campaign(json!({"name": "rules", "scriptId": "s"}))
        .await;

    let added = api
        .add_csv(&campaign, "to\n+14155550101\n+14155550199\n")
        .await
        .ok();
    assert_eq!(statuses(&added), ["created", "rejected"]);
    assert_eq!(added["rows"][1]["errors"][0]["field"], "to", "{added}");

    // Nothing was written for the suppressed number.
    assert_eq!(
        api.count("SELECT count(*) FROM calls WHERE phone = '+14155550199'")
            .await,
        0
    );
    // The other waits for its window, parked: no message, due at the opening.
    assert_eq!(
        api.count(
            "SELECT count(*) FROM calls WHERE phone = '+14155550101' AND calling_window IS NOT NULL \
               AND time_zones = ARRAY['America/Los_Angeles'] AND outbox_due_at IS NULL \
               AND next_run_at > now() + interval '55 minutes'"
        )
        .await,
        1
    );
    assert_eq!(api.messages().await, 0);
}

#[tokio::test]
async fn a_campaigns_window_applies_to_its_calls_without_one_of_their_own() {
    // Closed now in Los Angeles; CALL_WINDOW is open all day.
    let closed = closed_now_in_los_angeles();
    let env = TestEnv::new().await;
    let always = r#"{"start": "00:00", "end": "24:00"}"#;
    let config = env.config(&[("GLOBAL_CONCURRENCY", "10"), ("CALL_WINDOW", always)]);
    let api = Api {
        router: ebra_api::router(AppState::new(
            env.pool.clone(),
            Some(env.queue.clone()),
            Arc::new(config),
        )),
        env,
        cap: 10,
    };

    // A bad window is a 422 naming it, and writes nothing.
    let reply = api
        .post_json(
            "/campaigns",
            &json!({"name": "bad", "window": {"start": "25:00", "end": "09:00"}}),
        )
        .await;
    reply.problem(422);
    assert_eq!(reply.fields(), ["window"]);
    assert_eq!(api.count("SELECT count(*) FROM campaigns").await, 0);

    let campaign = api
        .campaign(json!({"name": "evenings", "scriptId": "s", "window": closed}))
        .await;
    let shown = api.get(&format!("/campaigns/{campaign}")).await.ok();
    assert_eq!(shown["window"]["start"], closed["start"], "{shown}");

    let waits = "SELECT count(*) FROM calls WHERE phone = $$PHONE$$ AND outbox_due_at IS NULL \
                 AND next_run_at > now() + interval '55 minutes'";
    // A bulk row takes the campaign's window over CALL_WINDOW.
    api.add_csv(&campaign, "to\n+14155550111\n").await.ok();
    assert_eq!(
        api.count(&waits.replace("$$PHONE$$", "'+14155550111'"))
            .await,
        1
    );
    // So does a call posted with the campaign's id...
    let reply = api
        .post_json(
            "/calls",
            &json!({"to": "+14155550112", "scriptId": "s", "campaignId": campaign}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(
        api.count(&waits.replace("$$PHONE$$", "'+14155550112'"))
            .await,
        1
    );
    // ...but a call's own window comes first.
    let reply = api
        .post_json(
            "/calls",
            &json!({"to": "+14155550113", "scriptId": "s", "campaignId": campaign,
                    "window": {"start": "00:00", "end": "24:00"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(
        api.count(
            "SELECT count(*) FROM calls WHERE phone = '+14155550113' AND next_run_at <= now()"
        )
        .await,
        1
    );
}
