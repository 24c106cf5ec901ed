//! Calling rules (issue 14) against a real Postgres and SQS: calling windows in the callee's
//! time zones (edges, DST, half- and three-quarter-hour zones, an area code spanning two
//! zones, windows across midnight, invalid ones), the property that no dial is ever made
//! outside its window (many calls, random windows, a clock the test moves), the do-not-call
//! list (its routes, its audit trail, claim-time cancels, the race with a claim) and the
//! daily cap per number.
//!
//! The API and the claim read "now" from a [`Clock`] the test sets; it is only ever set at
//! or after the real time (the rest of the SQL keeps Postgres' `now()`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Datelike, Timelike, Utc};
use common::http::{send, Reply};
use common::TestEnv;
use ebra_api::AppState;
use ebra_shared::clock::Clock;
use ebra_shared::domain::CallStatus;
use ebra_shared::store::claim::{claim_calls_at, Claim, ClaimLimits};
use ebra_shared::Config;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tower::ServiceExt as _;
use uuid::Uuid;

const TOKEN: &str = "rules-token-1";

/// The API and the claim over a fresh environment, on a clock the test sets.
struct Rules {
    env: TestEnv,
    config: Config,
    clock: Clock,
    router: Router,
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .expect("instant")
        .with_timezone(&Utc)
}

impl Rules {
    async fn start(overrides: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let mut settings = vec![("GLOBAL_CONCURRENCY", "1000"), ("API_TOKEN", TOKEN)];
        settings.extend_from_slice(overrides);
        let config = env.config(&settings);
        let clock = Clock::fixed(Utc::now());
        let mut state = AppState::new(
            env.pool.clone(),
            Some(env.queue.clone()),
            Arc::new(config.clone()),
        );
        state.clock = clock.clone();
        let router = ebra_api::router(state);
        Self {
            env,
            config,
            clock,
            router,
        }
    }

    async fn send(&self, method: Method, path: &str, content_type: &str, body: &str) -> Reply {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .expect("request");
        send(&self.router, request).await
    }

    async fn post_call(&self, body: Value) -> Reply {
        self.send(
            Method::POST,
            "/calls",
            "application/json",
            &body.to_string(),
        )
        .await
    }

    /// Creates a call; returns its body.
    async fn create(&self, body: Value) -> Value {
        self.post_call(body).await.expect(201)
    }

    /// Creates a call to `to` with `window` (and `timezone`), asserting the 201.
    async fn create_windowed(&self, to: &str, window: Value, timezone: Option<&str>) -> Value {
        self.create(call_body(to, window, timezone)).await
    }

    async fn get(&self, id: &str) -> Value {
        self.send(Method::GET, &format!("/calls/{id}"), "application/json", "")
            .await
            .expect(200)
    }

    async fn claim_at(&self, ids: &[Uuid], now: DateTime<Utc>) -> Vec<Claim> {
        claim_calls_at(&self.env.pool, ids, &ClaimLimits::from(&self.config), now)
            .await
            .expect("claim")
    }

    async fn claim_one(&self, id: Uuid) -> Claim {
        self.claim_at(&[id], self.clock.now())
            .await
            .pop()
            .expect("one answer")
    }

    async fn count(&self, sql: &str) -> i64 {
        self.env.count(sql).await
    }
}

fn id_of(call: &Value) -> Uuid {
    call["id"].as_str().expect("id").parse().expect("uuid")
}

fn instant(value: &Value) -> DateTime<Utc> {
    at(value
        .as_str()
        .unwrap_or_else(|| panic!("not a date-time: {value}")))
}

fn call_body(to: &str, window: Value, timezone: Option<&str>) -> Value {
    let mut body = json!({"to": to, "scriptId": "rules", "window": window});
    if let Some(zone) = timezone {
        body["timezone"] = json!(zone);
    }
    body
}

#[tokio::test]
async fn window_edges_one_second_before_opening_and_the_closing_second() {
    let rules = Rules::start(&[]).await;
    let window = json!({"start": "09:00", "end": "20:00"});
    // 2030-07-01 is a Monday; New York is UTC-4 in July: 09:00 is 13:00Z, 20:00 is 00:00Z.
    rules.clock.set(at("2030-07-01T12:59:59Z"));
    let early = rules
        .create_windowed("+12125550101", window.clone(), Some("America/New_York"))
        .await;
    assert_eq!(early["timezone"], "America/New_York");
    assert_eq!(early["timeZones"], json!(["America/New_York"]));
    assert_eq!(instant(&early["nextRunAt"]), at("2030-07-01T13:00:00Z"));
    assert_eq!(instant(&early["windowOpensAt"]), at("2030-07-01T13:00:00Z"));
    assert_eq!(
        early["window"],
        json!({"start": "09:00", "end": "20:00", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]})
    );
    let early = id_of(&early);
    // A second before the opening it is not due; at the opening it is dialed.
    assert!(matches!(
        rules.claim_one(early).await,
        Claim::NotDue { until } if until == at("2030-07-01T13:00:00Z")
    ));
    rules.clock.set(at("2030-07-01T13:00:00Z"));
    assert!(matches!(rules.claim_one(early).await, Claim::Claimed(_)));
    let shown = rules.get(&early.to_string()).await;
    assert_eq!(shown["status"], "IN_PROGRESS");
    assert!(shown["windowOpensAt"].is_null());

    // Created while open, claimed in the last second: dialed.
    rules.clock.set(at("2030-07-01T23:59:59Z"));
    let last_second = id_of(
        &rules
            .create_windowed("+12125550102", window.clone(), Some("America/New_York"))
            .await,
    );
    assert!(matches!(
        rules.claim_one(last_second).await,
        Claim::Claimed(_)
    ));

    // Created while open, claimed at the closing second: not dialed, moved to the next
    // opening, and GET shows when that is.
    let closing = id_of(
        &rules
            .create_windowed("+12125550103", window, Some("America/New_York"))
            .await,
    );
    rules.clock.set(at("2030-07-02T00:00:00Z"));
    match rules.claim_one(closing).await {
        Claim::OutsideWindow { until } => assert_eq!(until, at("2030-07-02T13:00:00Z")),
        other => panic!("expected OutsideWindow, got {other:?}"),
    }
    let shown = rules.get(&closing.to_string()).await;
    assert_eq!(shown["status"], "PENDING");
    assert_eq!(shown["attempts"], 0);
    assert_eq!(instant(&shown["nextRunAt"]), at("2030-07-02T13:00:00Z"));
    assert_eq!(instant(&shown["windowOpensAt"]), at("2030-07-02T13:00:00Z"));
    // Parked: no outbox mark, so no message while it waits.
    assert_eq!(
        rules
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{closing}' AND outbox_due_at IS NULL AND nudged_at IS NULL"
            ))
            .await,
        1
    );
    assert_eq!(
        rules
            .count(&format!(
                "SELECT count(*) FROM call_attempts WHERE call_id = '{closing}'"
            ))
            .await,
        0
    );
}

#[tokio::test]
async fn dst_changes_in_new_york_march_and_november() {
    let rules = Rules::start(&[]).await;
    let window = json!({"start": "09:00", "end": "20:00"});
    // Sunday 2030-03-10, clocks go forward at 02:00: 09:00 that day is EDT (13:00Z).
    rules.clock.set(at("2030-03-10T05:00:00Z"));
    let march = rules
        .create_windowed("+12125550111", window.clone(), Some("America/New_York"))
        .await;
    assert_eq!(instant(&march["nextRunAt"]), at("2030-03-10T13:00:00Z"));
    let march = id_of(&march);
    rules.clock.set(at("2030-03-10T12:59:59Z"));
    assert!(matches!(rules.claim_one(march).await, Claim::NotDue { .. }));
    rules.clock.set(at("2030-03-10T13:00:00Z"));
    assert!(matches!(rules.claim_one(march).await, Claim::Claimed(_)));

    // Sunday 2030-11-03, clocks go back at 02:00: 09:00 that day is EST (14:00Z). At 13:30Z it
    // is 08:30 there, though it would be 09:30 on the summer offset.
    rules.clock.set(at("2030-11-03T05:00:00Z"));
    let november = rules
        .create_windowed("+12125550112", window.clone(), Some("America/New_York"))
        .await;
    assert_eq!(instant(&november["nextRunAt"]), at("2030-11-03T14:00:00Z"));
    let november = id_of(&november);
    rules.clock.set(at("2030-11-03T13:59:59Z"));
    assert!(matches!(
        rules.claim_one(november).await,
        Claim::NotDue { .. }
    ));
    rules.clock.set(at("2030-11-03T14:00:00Z"));
    assert!(matches!(rules.claim_one(november).await, Claim::Claimed(_)));

    // The zone from the number (212 is New York): the same answer.
    rules.clock.set(at("2030-11-03T05:00:00Z"));
    let by_number = rules.create_windowed("+12125550113", window, None).await;
    assert!(by_number["timezone"].is_null());
    assert_eq!(by_number["timeZones"], json!(["America/New_York"]));
    assert_eq!(instant(&by_number["nextRunAt"]), at("2030-11-03T14:00:00Z"));
}

#[tokio::test]
async fn half_hour_and_three_quarter_hour_zones_from_the_number() {
    let rules = Rules::start(&[]).await;
    let window = json!({"start": "09:00", "end": "20:00"});
    rules.clock.set(at("2030-07-01T00:00:00Z"));
    // India (+91, UTC+05:30) and Nepal (+977, UTC+05:45), from the numbers alone.
    let india = rules
        .create_windowed("+919876543210", window.clone(), None)
        .await;
    assert_eq!(india["timeZones"], json!(["Asia/Calcutta"]));
    assert_eq!(instant(&india["nextRunAt"]), at("2030-07-01T03:30:00Z"));
    let nepal = rules
        .create_windowed("+9779841234567", window.clone(), None)
        .await;
    assert_eq!(nepal["timeZones"], json!(["Asia/Katmandu"]));
    assert_eq!(instant(&nepal["nextRunAt"]), at("2030-07-01T03:15:00Z"));
    // And given by name.
    let kolkata = rules
        .create_windowed("+14155550121", window, Some("Asia/Kolkata"))
        .await;
    assert_eq!(instant(&kolkata["nextRunAt"]), at("2030-07-01T03:30:00Z"));

    let (india, nepal) = (id_of(&india), id_of(&nepal));
    rules.clock.set(at("2030-07-01T03:29:59Z"));
    let claims = rules.claim_at(&[india, nepal], rules.clock.now()).await;
    assert!(matches!(claims[0], Claim::NotDue { .. }), "{claims:?}");
    assert!(matches!(claims[1], Claim::Claimed(_)), "{claims:?}");
    rules.clock.set(at("2030-07-01T03:30:00Z"));
    assert!(matches!(rules.claim_one(india).await, Claim::Claimed(_)));
    // Nepal closes at 20:00 local, 14:15Z.
    rules.clock.set(at("2030-07-01T14:14:59Z"));
    let open = id_of(
        &rules
            .create_windowed(
                "+9779841234568",
                json!({"start": "09:00", "end": "20:00"}),
                None,
            )
            .await,
    );
    rules.clock.set(at("2030-07-01T14:15:00Z"));
    assert!(matches!(
        rules.claim_one(open).await,
        Claim::OutsideWindow { until } if until == at("2030-07-02T03:15:00Z")
    ));
}

#[tokio::test]
async fn an_area_code_spanning_two_zones_waits_for_both() {
    let rules = Rules::start(&[]).await;
    // 208 (Idaho): Mountain (Boise) and Pacific (Los Angeles) time. At 15:30Z in July it is
    // 09:30 in Boise but 08:30 in Los Angeles: not yet. Both are open from 16:00Z (09:00 in
    // Los Angeles) until 02:00Z (20:00 in Boise).
    rules.clock.set(at("2030-07-01T15:30:00Z"));
    let call = rules
        .create_windowed(
            "+12085550100",
            json!({"start": "09:00", "end": "20:00"}),
            None,
        )
        .await;
    assert_eq!(
        call["timeZones"],
        json!(["America/Boise", "America/Los_Angeles"])
    );
    assert_eq!(instant(&call["nextRunAt"]), at("2030-07-01T16:00:00Z"));
    let id = id_of(&call);
    rules.clock.set(at("2030-07-01T16:00:00Z"));
    assert!(matches!(rules.claim_one(id).await, Claim::Claimed(_)));

    rules.clock.set(at("2030-07-02T01:59:59Z"));
    let late = id_of(
        &rules
            .create_windowed(
                "+12085550101",
                json!({"start": "09:00", "end": "20:00"}),
                None,
            )
            .await,
    );
    rules.clock.set(at("2030-07-02T02:00:00Z"));
    assert!(matches!(
        rules.claim_one(late).await,
        Claim::OutsideWindow { until } if until == at("2030-07-02T16:00:00Z")
    ));
}

#[tokio::test]
async fn a_window_across_midnight_belongs_to_the_day_it_opens() {
    let rules = Rules::start(&[]).await;
    let window = json!({"start": "22:00", "end": "06:00", "days": ["fri"]});
    // 2030-07-05 is a Friday.
    rules.clock.set(at("2030-07-05T21:59:59Z"));
    let friday = rules
        .create_windowed("+14155550131", window.clone(), Some("UTC"))
        .await;
    assert_eq!(instant(&friday["nextRunAt"]), at("2030-07-05T22:00:00Z"));
    // Saturday 05:59:59 is still Friday's window; 06:00 is not.
    rules.clock.set(at("2030-07-06T05:59:59Z"));
    let saturday_morning = rules
        .create_windowed("+14155550132", window.clone(), Some("UTC"))
        .await;
    assert!(saturday_morning["windowOpensAt"].is_null());
    let saturday_morning = id_of(&saturday_morning);
    assert!(matches!(
        rules.claim_one(saturday_morning).await,
        Claim::Claimed(_)
    ));
    rules.clock.set(at("2030-07-06T06:00:00Z"));
    let after = rules
        .create_windowed("+14155550133", window, Some("UTC"))
        .await;
    assert_eq!(instant(&after["nextRunAt"]), at("2030-07-12T22:00:00Z"));
}

#[tokio::test]
async fn invalid_windows_and_time_zones_get_422_and_write_nothing() {
    let rules = Rules::start(&[]).await;
    let cases = [
        (
            json!({"start": "09:00", "end": "20:00", "days": []}),
            None,
            "window",
        ),
        (
            json!({"start": "09:00", "end": "20:00", "days": ["someday"]}),
            None,
            "window",
        ),
        (json!({"start": "09:00", "end": "09:00"}), None, "window"),
        (json!({"start": "9am", "end": "20:00"}), None, "window"),
        (json!({"start": "09:00", "end": "24:01"}), None, "window"),
        (json!({"start": "09:00"}), None, "window"),
        (json!("09:00-20:00"), None, "window"),
        (json!([1, 2]), None, "window"),
        (
            json!({"start": "09:00", "end": "20:00"}),
            Some("Mars/Olympus_Mons"),
            "timezone",
        ),
        (
            json!({"start": "09:00", "end": "20:00"}),
            Some("EST5EDT, please"),
            "timezone",
        ),
    ];
    for (window, timezone, field) in cases {
        let reply = rules
            .post_call(call_body("+14155550141", window.clone(), timezone))
            .await;
        let problem = reply.problem(422);
        assert_eq!(problem["type"], "urn:ebra:problem:validation", "{window}");
        assert_eq!(
            problem["errors"][0]["field"], field,
            "{window} {timezone:?}"
        );
    }
    // A number that maps to every NANP zone (toll free), with a window that never holds in
    // Guam and in St John's at once.
    let reply = rules
        .post_call(call_body(
            "+18002345678",
            json!({"start": "09:00", "end": "10:00"}),
            None,
        ))
        .await;
    assert_eq!(reply.problem(422)["errors"][0]["field"], "window");
    // A window that opens only after the call expires.
    rules.clock.set(at("2030-07-01T00:00:00Z"));
    let mut body = call_body(
        "+14155550141",
        json!({"start": "09:00", "end": "20:00"}),
        Some("UTC"),
    );
    body["expiresAt"] = json!("2030-07-01T08:00:00Z");
    assert_eq!(
        rules.post_call(body).await.problem(422)["errors"][0]["field"],
        "expiresAt"
    );
    assert_eq!(rules.count("SELECT count(*) FROM calls").await, 0);
    assert_eq!(rules.count("SELECT count(*) FROM call_events").await, 0);
}

#[tokio::test]
async fn call_window_setting_is_the_default_and_a_call_s_own_wins() {
    let rules = Rules::start(&[(
        "CALL_WINDOW",
        r#"{"start": "08:00", "end": "21:00", "days": ["mon","tue","wed","thu","fri"]}"#,
    )])
    .await;
    // Saturday 2030-07-06, 12:00 in New York: the default's days exclude it.
    rules.clock.set(at("2030-07-06T16:00:00Z"));
    let defaulted = rules
        .create(json!({"to": "+12125550151", "scriptId": "rules"}))
        .await;
    assert_eq!(defaulted["window"]["start"], "08:00");
    assert_eq!(instant(&defaulted["nextRunAt"]), at("2030-07-08T12:00:00Z"));
    let own = rules
        .create_windowed(
            "+12125550152",
            json!({"start": "10:00", "end": "18:00"}),
            None,
        )
        .await;
    assert_eq!(own["window"]["start"], "10:00");
    assert!(own["windowOpensAt"].is_null());
}

#[tokio::test]
async fn a_call_outside_its_window_is_parked_and_the_refill_brings_it() {
    // On the real clock: a window in UTC that opens at the next minute.
    let rules = Rules::start(&[]).await;
    let now = Utc::now();
    let mut opens = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("minute")
        + chrono::Duration::minutes(1);
    // At least half a minute ahead, so the delayed message is not visible yet below.
    if opens - now < chrono::Duration::seconds(30) {
        opens += chrono::Duration::minutes(1);
    }
    let start = format!("{:02}:{:02}", opens.hour(), opens.minute());
    let end_at = opens + chrono::Duration::hours(2);
    let end = format!("{:02}:{:02}", end_at.hour(), end_at.minute());
    let mut state = AppState::new(
        rules.env.pool.clone(),
        Some(rules.env.queue.clone()),
        Arc::new(rules.config.clone()),
    );
    state.clock = Clock::system();
    let router = ebra_api::router(state);
    let body = call_body(
        "+14155550161",
        json!({"start": start, "end": end}),
        Some("UTC"),
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri("/calls")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let call = send(&router, request).await.expect(201);
    assert_eq!(instant(&call["nextRunAt"]), opens);
    let id = id_of(&call);
    // Due within SQS's delay: the create sent its message, delayed to the opening.
    let queued = rules.env.queued_call_ids(Duration::from_secs(1)).await;
    assert!(
        queued.is_empty(),
        "the message is delayed until the window opens: {queued:?}"
    );
    // Clear the create's mark (as if its message was lost) and let the refill find it.
    rules
        .env
        .execute(&format!(
            "UPDATE calls SET outbox_due_at = NULL WHERE id = '{id}'"
        ))
        .await;
    let (_, messages) = ebra_shared::store::sweep::refill_free_slots(&rules.env.pool, 1000)
        .await
        .expect("refill");
    let message = messages
        .iter()
        .find(|m| m.call_id == id)
        .expect("the refill sends the parked call's message");
    let expected = (opens - Utc::now()).num_seconds();
    assert!(
        (message.delay.as_secs() as i64 - expected).abs() <= 2,
        "delay {:?}, opening in {expected}s",
        message.delay
    );
}

/// Whether `at` is inside `[start, end)` minutes on `days` on the wall clock of `zone`,
/// computed from the local hour and minute (an oracle independent of the code's own).
fn open_on_wall_clock(
    zone: chrono_tz::Tz,
    start: u32,
    end: u32,
    days: &[u32],
    at: DateTime<Utc>,
) -> bool {
    let local = at.with_timezone(&zone);
    let minute = local.hour() * 60 + local.minute();
    let today = local.weekday().num_days_from_monday();
    let yesterday = (today + 6) % 7;
    if start < end {
        days.contains(&today) && minute >= start && minute < end
    } else {
        (days.contains(&today) && minute >= start) || (days.contains(&yesterday) && minute < end)
    }
}

#[tokio::test]
async fn property_no_dial_is_ever_made_outside_its_window() {
    let rules = Rules::start(&[]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let zones = [
        "America/New_York",
        "America/Los_Angeles",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",
        "Europe/London",
        "Pacific/Chatham",
        "UTC",
    ];
    let day_names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    // Start just before the March DST change in New York, run three weeks.
    let start = at("2030-03-06T00:00:00Z");
    rules.clock.set(start);
    struct Case {
        id: Uuid,
        zone: chrono_tz::Tz,
        start: u32,
        end: u32,
        days: Vec<u32>,
    }
    let mut cases = Vec::new();
    for n in 0..150 {
        let begin = rng.random_range(0..24 * 4) * 15;
        let length = rng.random_range(1..24 * 4) * 15;
        let end = (begin + length) % (24 * 60);
        let end = if end == 0 { 24 * 60 } else { end };
        let mut days: Vec<u32> = (0..7).filter(|_| rng.random_bool(0.5)).collect();
        if days.is_empty() {
            days.push(rng.random_range(0..7));
        }
        let zone = zones[rng.random_range(0..zones.len())];
        let spec = json!({
            "start": format!("{:02}:{:02}", begin / 60, begin % 60),
            "end": format!("{:02}:{:02}", end / 60, end % 60),
            "days": days.iter().map(|d| day_names[*d as usize]).collect::<Vec<_>>(),
        });
        let phone = format!("+1415555{:04}", 3000 + n);
        let reply = rules
            .post_call(call_body(&phone, spec.clone(), Some(zone)))
            .await;
        let call = reply.expect(201);
        cases.push(Case {
            id: id_of(&call),
            zone: zone.parse().expect("zone"),
            start: begin,
            end,
            days,
        });
    }
    let ids: Vec<Uuid> = cases.iter().map(|c| c.id).collect();
    let mut dialed = std::collections::HashSet::new();
    let mut refusals = 0;
    let mut random_stops = 0;
    while rules.clock.now() < start + chrono::Duration::days(35) {
        let now = rules.clock.now();
        // Deliveries come late or not at all at times (a message delayed, a worker busy):
        // only some of the calls are claimed at each instant, so calls are also claimed long
        // after they became due, when their window may have closed again.
        let pending: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| !dialed.contains(id) && rng.random_bool(0.5))
            .collect();
        if pending.is_empty() {
            rules.clock.set(now + chrono::Duration::minutes(30));
            continue;
        }
        let claims = rules.claim_at(&pending, now).await;
        let mut finished = Vec::new();
        let mut next_due: Option<DateTime<Utc>> = None;
        for (id, claim) in pending.iter().zip(claims) {
            let case = cases.iter().find(|c| c.id == *id).expect("case");
            match claim {
                Claim::Claimed(_) => {
                    assert!(
                        open_on_wall_clock(case.zone, case.start, case.end, &case.days, now),
                        "call {id} dialed at {now} ({} local) outside {}–{} on {:?}",
                        now.with_timezone(&case.zone),
                        case.start,
                        case.end,
                        case.days
                    );
                    dialed.insert(*id);
                    finished.push(*id);
                }
                Claim::OutsideWindow { until } | Claim::NotDue { until } => {
                    assert!(until > now, "{id}: due again at {until}, now {now}");
                    next_due = Some(next_due.map_or(until, |due| due.min(until)));
                    refusals += 1;
                }
                other => panic!("unexpected claim of {id}: {other:?}"),
            }
        }
        if !finished.is_empty() {
            // The calls end at once: their slots and phones are free again.
            let list = finished
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(",");
            rules
                .env
                .execute(&format!(
                    "UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL WHERE call_id IN ({list}); \
                     UPDATE calls SET status = 'COMPLETED', ended_at = now() WHERE id IN ({list})"
                ))
                .await;
        }
        // On to a random instant, or to the next call's due time if that comes first (as
        // its message or the refill would bring it then).
        let random = now + chrono::Duration::seconds(rng.random_range(1..=3 * 3600));
        let next = match next_due {
            Some(due) if due <= random => due,
            _ => {
                random_stops += 1;
                random
            }
        };
        rules.clock.set(next);
    }
    assert!(random_stops > 0);
    // Every window opens at least weekly, and half the deliveries are lost: in five weeks
    // nearly every call got its dial, each on a wall clock inside its window.
    assert!(
        dialed.len() * 10 >= cases.len() * 9,
        "{} of {} dialed ({refusals} refusals)",
        dialed.len(),
        cases.len()
    );
    assert!(refusals > 0);
    // Every dial recorded is one the loop checked: one attempt per call.
    assert_eq!(
        rules.count("SELECT count(*) FROM call_attempts").await,
        dialed.len() as i64
    );
}

// --- The do-not-call list --------------------------------------------------------------

#[tokio::test]
async fn suppressions_routes_normalise_numbers_and_keep_who_and_when() {
    let rules = Rules::start(&[]).await;
    // A formatted number in the path, normalised to E.164.
    let put = rules
        .send(
            Method::PUT,
            "/suppressions/%2B1%20(415)%20555-0171",
            "application/json",
            r#"{"reason": "asked not to be called"}"#,
        )
        .await
        .expect(201);
    assert_eq!(put["phone"], "+14155550171");
    assert_eq!(put["reason"], "asked not to be called");
    assert_eq!(put["createdBy"], "api-token");
    // Again, without a body: already there (200), the reason kept.
    let again = rules
        .send(Method::PUT, "/suppressions/%2B14155550171", "", "")
        .await
        .expect(200);
    assert_eq!(again["reason"], "asked not to be called");
    let shown = rules
        .send(Method::GET, "/suppressions/%2B14155550171", "", "")
        .await
        .expect(200);
    let actions: Vec<&str> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|change| change["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["ADDED", "UPDATED"]);
    assert_eq!(shown["history"][0]["actor"], "api-token");
    assert!(shown["history"][0]["changedAt"].is_string());

    // Creating a call to it: 422 suppressed, nothing written.
    let refused = rules
        .post_call(json!({"to": "+14155550171", "scriptId": "rules"}))
        .await
        .problem(422);
    assert_eq!(refused["type"], "urn:ebra:problem:suppressed");
    assert_eq!(rules.count("SELECT count(*) FROM calls").await, 0);

    // Bad input: 4xx problems, nothing written.
    rules
        .send(Method::PUT, "/suppressions/4155550171", "", "")
        .await
        .problem(422);
    rules
        .send(
            Method::PUT,
            "/suppressions/%2B14155550172",
            "text/plain",
            "reason",
        )
        .await
        .problem(415);
    let long = "x".repeat(501);
    rules
        .send(
            Method::PUT,
            "/suppressions/%2B14155550172",
            "application/json",
            &json!({ "reason": long }).to_string(),
        )
        .await
        .problem(422);
    rules
        .send(
            Method::PUT,
            "/suppressions/%2B14155550172",
            "application/json",
            r#"{"reason": "x", "extra": 1}"#,
        )
        .await
        .problem(400);
    assert_eq!(rules.count("SELECT count(*) FROM suppressions").await, 1);

    // Removed, with who and when kept.
    rules
        .send(Method::DELETE, "/suppressions/%2B14155550171", "", "")
        .await
        .expect(204);
    rules
        .send(Method::DELETE, "/suppressions/%2B14155550171", "", "")
        .await
        .problem(404);
    rules
        .send(Method::GET, "/suppressions/%2B14155550171", "", "")
        .await
        .problem(404);
    assert_eq!(
        rules
            .count(
                "SELECT count(*) FROM suppression_changes WHERE phone = '+14155550171' \
                 AND action = 'REMOVED' AND actor = 'api-token' AND source = 'delete'"
            )
            .await,
        1
    );
    // Off the list: calls to it are accepted again.
    rules
        .create(json!({"to": "+14155550171", "scriptId": "rules"}))
        .await;
}

#[tokio::test]
async fn suppressions_bulk_csv_and_cursor_paging() {
    let rules = Rules::start(&[]).await;
    let csv = "phone,reason\r\n+1 212 555 0181,\"asked, twice\"\n0014155550182\n\n+12125550183,complaint\n";
    let added = rules
        .send(Method::POST, "/suppressions", "text/csv", csv)
        .await
        .expect(200);
    assert_eq!(added, json!({"added": 3, "updated": 0}));
    let again = rules
        .send(
            Method::POST,
            "/suppressions",
            "text/csv; charset=utf-8",
            csv,
        )
        .await
        .expect(200);
    assert_eq!(again, json!({"added": 0, "updated": 3}));
    assert_eq!(
        rules
            .count("SELECT count(*) FROM suppression_changes WHERE source = 'csv' AND actor = 'api-token'")
            .await,
        6
    );
    let reason = rules
        .send(Method::GET, "/suppressions/%2B12125550181", "", "")
        .await
        .expect(200);
    assert_eq!(reason["reason"], "asked, twice");

    // One bad row refuses the file: nothing added.
    let bad = rules
        .send(
            Method::POST,
            "/suppressions",
            "text/csv",
            "+12125550191\nnot-a-number\n+1555\n",
        )
        .await
        .problem(422);
    let messages: Vec<&str> = bad["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["message"].as_str().expect("message"))
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].starts_with("line 2:"), "{messages:?}");
    rules
        .send(Method::POST, "/suppressions", "application/json", "[]")
        .await
        .problem(415);
    rules
        .send(Method::POST, "/suppressions", "text/csv", "phone,reason\n")
        .await
        .problem(422);
    assert_eq!(rules.count("SELECT count(*) FROM suppressions").await, 3);

    // Paged by number.
    let first = rules
        .send(Method::GET, "/suppressions?pageSize=2", "", "")
        .await
        .expect(200);
    let phones = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|s| s["phone"].as_str().expect("phone").to_owned())
            .collect()
    };
    assert_eq!(phones(&first), ["+12125550181", "+12125550183"]);
    let cursor = first["nextCursor"].as_str().expect("a next page");
    let second = rules
        .send(
            Method::GET,
            &format!("/suppressions?pageSize=2&cursor={cursor}"),
            "",
            "",
        )
        .await
        .expect(200);
    assert_eq!(phones(&second), ["+14155550182"]);
    assert!(second["nextCursor"].is_null());
    rules
        .send(Method::GET, "/suppressions?pageSize=0", "", "")
        .await
        .problem(400);
    rules
        .send(Method::GET, "/suppressions?cursor=%21%21", "", "")
        .await
        .problem(400);
    rules
        .send(Method::GET, "/suppressions?page=2", "", "")
        .await
        .problem(400);
}

#[tokio::test]
async fn a_pending_call_whose_number_is_suppressed_is_canceled_at_claim_and_never_dialed() {
    let rules = Rules::start(&[]).await;
    let call = rules
        .create(json!({"to": "+14155550191", "scriptId": "rules"}))
        .await;
    let id = id_of(&call);
    rules
        .send(Method::PUT, "/suppressions/%2B14155550191", "", "")
        .await
        .expect(201);
    rules.clock.set(Utc::now());
    assert!(matches!(rules.claim_one(id).await, Claim::Suppressed));
    let shown = rules.get(&id.to_string()).await;
    assert_eq!(shown["status"], "CANCELED");
    assert_eq!(shown["lastError"], "suppressed");
    assert_eq!(shown["attempts"], 0);
    assert_eq!(shown["sequence"], 2);
    assert_eq!(
        rules
            .count(&format!(
                "SELECT count(*) FROM call_events WHERE call_id = '{id}' AND type = 'call.canceled' \
                 AND sequence = 2 AND data->>'lastError' = 'suppressed'"
            ))
            .await,
        1
    );
    assert_eq!(rules.count("SELECT count(*) FROM call_attempts").await, 0);
    assert_eq!(
        rules
            .count("SELECT count(*) FROM call_slots WHERE call_id IS NOT NULL")
            .await,
        0
    );
    // A later delivery of it finds it finished.
    assert!(matches!(
        rules.claim_one(id).await,
        Claim::NotPending(ebra_shared::domain::CallStatus::Canceled)
    ));
}

/// Takes `phone`'s advisory lock in a transaction of its own, as a suppression (or a claim)
/// in progress holds it, runs `write` in it, and keeps it open until the returned sender
/// is used (true: commit).
async fn hold_number_lock(
    rules: &Rules,
    phone: &str,
    write: &'static str,
) -> tokio::sync::oneshot::Sender<bool> {
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<bool>();
    let pool = rules.env.pool.clone();
    let phone = phone.to_owned();
    tokio::spawn(async move {
        let mut client = pool.get().await.expect("pool");
        let tx = client.transaction().await.expect("begin");
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&phone],
        )
        .await
        .expect("lock");
        if !write.is_empty() {
            tx.execute(write, &[&phone]).await.expect("write");
        }
        let _ = locked_tx.send(());
        if finish_rx.await.unwrap_or(false) {
            tx.commit().await.expect("commit");
        }
    });
    locked_rx.await.expect("the lock is held");
    finish_tx
}

#[tokio::test]
async fn suppression_race_a_claim_waits_for_a_suppression_being_written_then_cancels() {
    let rules = Rules::start(&[]).await;
    let id = id_of(
        &rules
            .create(json!({"to": "+14155550192", "scriptId": "rules"}))
            .await,
    );
    // A suppression of the number is being written (not committed yet).
    let finish = hold_number_lock(
        &rules,
        "+14155550192",
        "INSERT INTO suppressions (phone) VALUES ($1)",
    )
    .await;
    let pool = rules.env.pool.clone();
    let limits = ClaimLimits::from(&rules.config);
    let now = Utc::now();
    let claim = tokio::spawn(async move { claim_calls_at(&pool, &[id], &limits, now).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !claim.is_finished(),
        "the claim must wait for the suppression's lock"
    );
    finish.send(true).expect("commit the suppression");
    let claims = claim.await.expect("joined").expect("claim");
    assert!(matches!(claims[..], [Claim::Suppressed]), "{claims:?}");
    assert_eq!(rules.count("SELECT count(*) FROM call_attempts").await, 0);
}

#[tokio::test]
async fn suppression_race_a_suppression_waits_for_a_claim_in_progress() {
    let rules = Rules::start(&[]).await;
    // A claim of a call to the number holds its lock (not committed yet).
    let finish = hold_number_lock(&rules, "+14155550193", "").await;
    let router = rules.router.clone();
    let put = tokio::spawn(async move {
        router
            .oneshot(
                Request::builder()
                    .method(Method::PUT)
                    .uri("/suppressions/%2B14155550193")
                    .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible")
            .status()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !put.is_finished(),
        "the suppression must wait for the claim's lock"
    );
    finish.send(true).expect("end the claim");
    assert_eq!(put.await.expect("joined"), StatusCode::CREATED);
}

#[tokio::test]
async fn suppression_race_each_call_is_dialed_before_or_never() {
    let rules = Rules::start(&[]).await;
    let mut calls = Vec::new();
    for n in 0..24 {
        let phone = format!("+1415555{:04}", 4000 + n);
        let id = id_of(
            &rules
                .create(json!({"to": phone, "scriptId": "rules"}))
                .await,
        );
        calls.push((id, phone));
    }
    let limits = ClaimLimits::from(&rules.config);
    let mut tasks = Vec::new();
    for (id, phone) in calls.clone() {
        let pool = rules.env.pool.clone();
        let limits = limits.clone();
        let router = rules.router.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("/suppressions/{}", phone.replace('+', "%2B"));
            let suppress = async {
                router
                    .oneshot(
                        Request::builder()
                            .method(Method::PUT)
                            .uri(path)
                            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                            .body(Body::empty())
                            .expect("request"),
                    )
                    .await
                    .expect("infallible")
                    .status()
            };
            let ids = [id];
            let claim = claim_calls_at(&pool, &ids, &limits, Utc::now());
            let (status, claims) = tokio::join!(suppress, claim);
            assert_eq!(status, StatusCode::CREATED);
            (id, claims.expect("claim").pop().expect("answer"))
        }));
    }
    let (mut dialed, mut canceled) = (0, 0);
    for task in tasks {
        let (id, claim) = task.await.expect("joined");
        let attempts = rules
            .count(&format!(
                "SELECT count(*) FROM call_attempts WHERE call_id = '{id}'"
            ))
            .await;
        let status = rules
            .count(&format!(
                "SELECT CASE status WHEN 'IN_PROGRESS' THEN 1 WHEN 'CANCELED' THEN 2 ELSE 0 END::int8 \
                 FROM calls WHERE id = '{id}'"
            ))
            .await;
        match claim {
            Claim::Claimed(_) => {
                assert_eq!((attempts, status), (1, 1), "{id}");
                dialed += 1;
            }
            Claim::Suppressed => {
                assert_eq!((attempts, status), (0, 2), "{id}");
                canceled += 1;
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(dialed + canceled, calls.len());
    // Now every number is suppressed: a redelivery dials none of the canceled calls.
    let ids: Vec<Uuid> = calls.iter().map(|(id, _)| *id).collect();
    for claim in rules.claim_at(&ids, Utc::now()).await {
        assert!(!matches!(claim, Claim::Claimed(_)), "{claim:?}");
    }
}

// --- The daily cap per number ------------------------------------------------------------

#[tokio::test]
async fn the_daily_cap_counts_dials_across_calls_in_a_rolling_day() {
    let rules = Rules::start(&[("MAX_DIALS_PER_NUMBER_PER_DAY", "2")]).await;
    let phone = "+14155550195";
    // Two calls to the number were dialed, 23 h and 1 h ago, and ended.
    for hours_ago in [23, 1] {
        let id = id_of(
            &rules
                .create(json!({"to": phone, "scriptId": "rules"}))
                .await,
        );
        rules.clock.set(Utc::now());
        assert!(matches!(rules.claim_one(id).await, Claim::Claimed(_)));
        rules
            .env
            .execute(&format!(
                "UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL WHERE call_id = '{id}'; \
                 UPDATE calls SET status = 'COMPLETED', ended_at = now() WHERE id = '{id}'; \
                 UPDATE call_attempts SET started_at = now() - interval '{hours_ago} hours', \
                        dial_state = 'ACCEPTED', provider_call_id = 'p-{id}' WHERE call_id = '{id}'"
            ))
            .await;
    }
    // A third waits until the older dial is 24 h old (in an hour).
    let third = id_of(
        &rules
            .create(json!({"to": phone, "scriptId": "rules"}))
            .await,
    );
    let now = Utc::now();
    rules.clock.set(now);
    let until = match rules.claim_one(third).await {
        Claim::DailyCapReached { until } => until,
        other => panic!("expected the daily cap, got {other:?}"),
    };
    let expected = now + chrono::Duration::hours(1);
    assert!(
        (until - expected).num_seconds().abs() <= 5,
        "until {until}, expected about {expected}"
    );
    let shown = rules.get(&third.to_string()).await;
    assert_eq!(shown["status"], "PENDING");
    assert_eq!(instant(&shown["nextRunAt"]), until);
    // Another number is not held back.
    let other = id_of(
        &rules
            .create(json!({"to": "+14155550196", "scriptId": "rules"}))
            .await,
    );
    rules.clock.set(Utc::now());
    assert!(matches!(rules.claim_one(other).await, Claim::Claimed(_)));
    // At `until` it goes.
    rules.clock.set(until);
    assert!(matches!(rules.claim_one(third).await, Claim::Claimed(_)));

    // A dial the provider refused never rang the phone: it does not count.
    let rules = Rules::start(&[("MAX_DIALS_PER_NUMBER_PER_DAY", "1")]).await;
    let first = id_of(
        &rules
            .create(json!({"to": phone, "scriptId": "rules"}))
            .await,
    );
    rules.clock.set(Utc::now());
    assert!(matches!(rules.claim_one(first).await, Claim::Claimed(_)));
    rules
        .env
        .execute(&format!(
            "UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL WHERE call_id = '{first}'; \
             UPDATE calls SET status = 'FAILED', ended_at = now() WHERE id = '{first}'; \
             UPDATE call_attempts SET dial_state = 'REJECTED' WHERE call_id = '{first}'"
        ))
        .await;
    let second = id_of(
        &rules
            .create(json!({"to": phone, "scriptId": "rules"}))
            .await,
    );
    rules.clock.set(Utc::now());
    assert!(matches!(rules.claim_one(second).await, Claim::Claimed(_)));
}

// --- Redials, changes ------------------------------------------------------------------

/// Claims `id` now and records a dial of unknown fate (a timeout): the call keeps its slot
/// and is redialed with the same key after its backoff.
async fn dial_of_unknown_fate(rules: &Rules, id: Uuid) {
    use ebra_shared::provider::DialResult;
    use ebra_shared::store::dial::{record_dial, DialRecorded, RetryPolicy};
    rules.clock.set(Utc::now());
    let Claim::Claimed(claimed) = rules.claim_one(id).await else {
        panic!("expected a claim of {id}");
    };
    let timeout = DialResult::Retryable {
        error: "timed out".to_owned(),
        retry_after: None,
        maybe_placed: true,
    };
    let (recorded, _) = record_dial(
        &rules.env.pool,
        &claimed,
        &timeout,
        &RetryPolicy::from(&rules.config),
    )
    .await
    .expect("recording the timeout");
    assert!(
        matches!(recorded, DialRecorded::RetryScheduled { .. }),
        "{recorded:?}"
    );
}

#[tokio::test]
async fn a_redial_obeys_the_rules_too() {
    let rules = Rules::start(&[("BASE_RETRY_SECONDS", "1")]).await;
    // Suppressed while its dial's fate is unknown: not redialed. That dial may be ringing the
    // phone, so the call keeps its slot (the provider's concurrency) and stays IN_PROGRESS
    // until its report or the reclaimer settles the dial.
    let id = id_of(
        &rules
            .create(json!({"to": "+14155550401", "scriptId": "rules"}))
            .await,
    );
    dial_of_unknown_fate(&rules, id).await;
    rules
        .send(Method::PUT, "/suppressions/%2B14155550401", "", "")
        .await
        .expect(201);
    rules.clock.set(Utc::now() + chrono::Duration::minutes(5));
    assert!(matches!(
        rules.claim_one(id).await,
        Claim::NotPending(CallStatus::InProgress)
    ));
    let shown = rules.get(&id.to_string()).await;
    assert_eq!(shown["status"], "IN_PROGRESS");
    assert_eq!(
        shown["dials"].as_array().map(Vec::len),
        Some(1),
        "not redialed"
    );
    assert_eq!(
        rules
            .count(&format!(
                "SELECT count(*) FROM call_slots WHERE call_id = '{id}'"
            ))
            .await,
        1,
        "the slot stays held while the dial may be live"
    );

    // Its window closed meanwhile: the redial waits for the next opening (the slot kept,
    // as while it backs off; the reclaimer settles a call silent for too long).
    let now = Utc::now();
    let window = json!({
        "start": format!("{:02}:{:02}", now.hour(), now.minute()),
        "end": format!("{:02}:{:02}", (now.hour() + 1) % 24, now.minute()),
    });
    let id = id_of(
        &rules
            .create_windowed("+14155550402", window, Some("UTC"))
            .await,
    );
    dial_of_unknown_fate(&rules, id).await;
    let later = now + chrono::Duration::hours(2);
    rules.clock.set(later);
    match rules.claim_one(id).await {
        Claim::OutsideWindow { until } => {
            assert!(until > later, "{until}");
            let shown = rules.get(&id.to_string()).await;
            assert_eq!(shown["status"], "IN_PROGRESS");
            assert_eq!(shown["dials"].as_array().map(Vec::len), Some(1));
            assert_eq!(instant(&shown["nextRunAt"]), until);
        }
        other => panic!("expected OutsideWindow, got {other:?}"),
    }
}

#[tokio::test]
async fn a_patch_to_a_suppressed_number_is_refused_and_a_new_number_brings_its_zones() {
    let rules = Rules::start(&[]).await;
    rules.clock.set(at("2030-07-01T14:00:00Z"));
    // 10:00 in New York: open; the call is due at once.
    let call = rules
        .create_windowed(
            "+12125550501",
            json!({"start": "09:00", "end": "20:00"}),
            None,
        )
        .await;
    assert!(call["windowOpensAt"].is_null());
    let id = call["id"].as_str().expect("id").to_owned();
    rules
        .send(Method::PUT, "/suppressions/%2B14155550502", "", "")
        .await
        .expect(201);
    let refused = rules
        .send(
            Method::PATCH,
            &format!("/calls/{id}"),
            "application/json",
            r#"{"to": "+14155550502"}"#,
        )
        .await
        .problem(422);
    assert_eq!(refused["type"], "urn:ebra:problem:suppressed");
    assert_eq!(rules.get(&id).await["to"], "+12125550501");
    // To Los Angeles, where it is 07:00: its zones follow, and it waits for 09:00 there.
    let moved = rules
        .send(
            Method::PATCH,
            &format!("/calls/{id}"),
            "application/json",
            r#"{"to": "+14155550503"}"#,
        )
        .await
        .expect(200);
    assert_eq!(moved["timeZones"], json!(["America/Los_Angeles"]));
    assert_eq!(instant(&moved["nextRunAt"]), at("2030-07-01T16:00:00Z"));
    assert_eq!(instant(&moved["windowOpensAt"]), at("2030-07-01T16:00:00Z"));
}

#[tokio::test]
async fn a_nudge_the_rules_stop_is_passed_on_to_another_waiting_call() {
    let rules = Rules::start(&[]).await;
    // A: due, brought to a free slot by a nudge, but its window closed meanwhile.
    let now = Utc::now();
    let window = json!({
        "start": format!("{:02}:{:02}", now.hour(), now.minute()),
        "end": format!("{:02}:{:02}", (now.hour() + 1) % 24, now.minute()),
    });
    let held = id_of(
        &rules
            .create_windowed("+14155550601", window, Some("UTC"))
            .await,
    );
    // B: waiting for a slot, no message.
    let waiting = id_of(
        &rules
            .create(json!({"to": "+14155550602", "scriptId": "rules"}))
            .await,
    );
    rules
        .env
        .execute(&format!(
            "UPDATE calls SET outbox_due_at = NULL, nudged_at = now() WHERE id = '{held}'; \
             UPDATE calls SET outbox_due_at = NULL, nudged_at = NULL WHERE id = '{waiting}'"
        ))
        .await;
    let later = Utc::now() + chrono::Duration::hours(2);
    let (claims, nudges) = ebra_shared::store::claim::claim_calls_passing_nudges(
        &rules.env.pool,
        &[held],
        &ClaimLimits::from(&rules.config),
        later,
    )
    .await
    .expect("claim");
    assert!(
        matches!(claims[..], [Claim::OutsideWindow { .. }]),
        "{claims:?}"
    );
    let nudged: Vec<Uuid> = nudges.iter().map(|n| n.call_id).collect();
    assert_eq!(
        nudged,
        [waiting],
        "the slot's nudge goes to the waiting call"
    );
    assert_eq!(
        rules
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{waiting}' AND nudged_at IS NOT NULL"
            ))
            .await,
        1
    );
}
