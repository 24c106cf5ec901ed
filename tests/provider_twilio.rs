//! Twilio (`PROVIDER=twilio`) against its contract fake: every scenario of
//! `tests/common/contract.rs`, then what is Twilio's own: the signed URL (its port, its
//! case, its query), the attempt key in the StatusCallback, machine detection, the call
//! list lookup before a redial, and the fake's own fidelity to Twilio's API.

mod common;

use axum::http::StatusCode;
use base64::Engine as _;
use common::contract::{self, Stage, PUBLIC_BASE};
use common::fakes::twilio::{
    self, callback_params, callback_url, form_pairs, Twilio, ACCOUNT_SID, AUTH_TOKEN,
    CALLBACK_PATH, FROM_NUMBER,
};
use common::fakes::{Contract as _, DialPlan};
use ebra_shared::domain::{CallStatus, DialOutcome};
use ebra_worker::MessageOutcome;
use serde_json::{json, Value};

#[tokio::test]
async fn dials_in_the_providers_format() {
    contract::dials_in_the_providers_format(&Twilio).await;
}

#[tokio::test]
async fn settles_every_documented_end_reason() {
    contract::settles_every_documented_end_reason(&Twilio).await;
}

#[tokio::test]
async fn an_early_webhook_is_not_lost() {
    contract::an_early_webhook_is_not_lost(&Twilio).await;
}

#[tokio::test]
async fn duplicate_deliveries_change_nothing() {
    contract::duplicate_deliveries_change_nothing(&Twilio).await;
}

#[tokio::test]
async fn a_concurrency_limit_answer_waits_without_using_an_attempt() {
    contract::a_concurrency_limit_answer_waits_without_using_an_attempt(&Twilio).await;
}

#[tokio::test]
async fn an_unknown_fate_dial_that_was_placed_is_not_placed_again() {
    contract::an_unknown_fate_dial_that_was_placed_is_not_placed_again(&Twilio).await;
}

#[tokio::test]
async fn an_unknown_fate_dial_that_was_not_placed_is_placed_once() {
    contract::an_unknown_fate_dial_that_was_not_placed_is_placed_once(&Twilio).await;
}

#[tokio::test]
async fn a_lost_webhook_is_settled_by_the_reclaimers_lookup() {
    contract::a_lost_webhook_is_settled_by_the_reclaimers_lookup(&Twilio).await;
}

#[tokio::test]
async fn a_stale_call_the_provider_cannot_be_asked_about() {
    contract::a_stale_call_the_provider_cannot_be_asked_about(&Twilio).await;
}

#[tokio::test]
async fn forged_webhooks_are_refused_and_change_nothing() {
    contract::forged_webhooks_are_refused_and_change_nothing(&Twilio).await;
}

#[tokio::test]
async fn progress_events_change_nothing() {
    contract::progress_events_change_nothing(&Twilio).await;
}

#[tokio::test]
async fn refusals_fail_and_failures_retry() {
    contract::refusals_fail_and_failures_retry(&Twilio).await;
}

// ---------------------------------------------------------------------------------------
// Twilio's own
// ---------------------------------------------------------------------------------------

/// Twilio's backend sometimes signs the URL with the scheme's default port: a callback
/// signed over `https://host:443/...` is accepted on `https://host/...`.
#[tokio::test]
async fn a_callback_signed_with_the_explicit_443_port_is_accepted() {
    let stage = Stage::new(&Twilio, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let url = callback_url(&placement, PUBLIC_BASE);
    let with_port = url.replacen(
        "https://hooks.ebra.test/",
        "https://hooks.ebra.test:443/",
        1,
    );
    assert_ne!(with_port, url);
    let params = callback_params(&placement, "completed", None);
    let mut delivery = twilio::signed(&with_port, &params);
    delivery.path_and_query = twilio::path_and_query(&url);
    let (status, body) = stage.post(&delivery).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    assert_eq!(stage.read(call_id).await.0.status, CallStatus::Completed);
}

/// Twilio signs the StatusCallback exactly as the dial gave it, and the webhook function
/// rebuilds the URL from `PUBLIC_BASE_URL` as configured: the dial must hand Twilio that
/// text, not a normalized copy (here the host's case, which a URL parser lowercases).
#[tokio::test]
async fn the_status_callback_is_the_public_base_url_as_configured() {
    let base = "https://Hooks.Ebra.test";
    let stage = Stage::new(&Twilio, &[("PUBLIC_BASE_URL", base)]).await;
    let (call_id, placement) = stage.dialed().await;
    let key = placement.attempt_key.expect("the attempt key");
    assert_eq!(
        placement.dial["StatusCallback"],
        format!("{base}{CALLBACK_PATH}?ebraKey={key}")
    );
    let (status, body) = stage
        .post(&Twilio.end_of_call(&placement, "completed", base))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    assert_eq!(stage.read(call_id).await.0.status, CallStatus::Completed);
}

/// A callback to the route without `ebraKey` (a StatusCallback set by hand, a proxy that
/// drops the query) is still signed and still settles its call, found by CallSid.
#[tokio::test]
async fn a_callback_without_the_attempt_key_settles_by_call_sid() {
    let stage = Stage::new(&Twilio, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let url = format!("{PUBLIC_BASE}{CALLBACK_PATH}");
    let params = callback_params(&placement, "completed", Some("human"));
    let (status, body) = stage.post(&twilio::signed(&url, &params)).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(dials[0].outcome, Some(DialOutcome::Completed));
    assert_eq!(
        stage
            .env
            .count("SELECT count(*) FROM provider_webhooks WHERE attempt_key IS NULL")
            .await,
        1,
        "stored without a key"
    );
}

/// The duration is `CallDuration` (seconds); `Duration` is the billed minutes and never
/// stands in for it.
#[tokio::test]
async fn the_duration_is_call_duration_in_seconds() {
    let stage = Stage::new(&Twilio, &[]).await;
    let (answered_id, answered) = stage.dialed().await;
    let url = callback_url(&answered, PUBLIC_BASE);
    let params = callback_params(&answered, "completed", None);
    assert_eq!(form_value(&params, "CallDuration"), Some("117"));
    assert_eq!(form_value(&params, "Duration"), Some("2"));
    let (status, body) = stage.post(&twilio::signed(&url, &params)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (call, dials) = stage.read(answered_id).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(dials[0].duration_sec, Some(117));

    let (other_id, other) = stage.dialed().await;
    let url = callback_url(&other, PUBLIC_BASE);
    let mut params = callback_params(&other, "completed", None);
    params.retain(|(name, _)| name != "CallDuration");
    let (status, body) = stage.post(&twilio::signed(&url, &params)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, dials) = stage.read(other_id).await;
    assert_eq!(dials[0].duration_sec, None, "not the 2 billed minutes");
}

/// A failed call keeps the SIP answer that failed it.
#[tokio::test]
async fn a_failed_call_keeps_its_sip_response_code() {
    let stage = Stage::new(&Twilio, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let (status, body) = stage
        .post(&Twilio.end_of_call(&placement, "failed", PUBLIC_BASE))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(dials[0].end_reason.as_deref(), Some("failed (SIP 404)"));
}

/// A second final callback that contradicts the first (busy after completed) is kept as
/// already settled and changes neither the call nor its dial; no redial is scheduled.
#[tokio::test]
async fn a_contradicting_final_status_changes_nothing() {
    let stage = Stage::new(&Twilio, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let (status, body) = stage
        .post(&Twilio.end_of_call(&placement, "completed", PUBLIC_BASE))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    let settled = stage.read(call_id).await;
    let (status, body) = stage
        .post(&Twilio.end_of_call(&placement, "busy", PUBLIC_BASE))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("already_settled")),
        "{body}"
    );
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(
        call.updated_at, settled.0.updated_at,
        "the call is untouched"
    );
    assert_eq!(dials.len(), 1);
    assert_eq!(dials[0].outcome, Some(DialOutcome::Completed));
    assert_eq!(dials[0].end_reason.as_deref(), Some("completed"));
    assert_eq!(
        stage
            .env
            .count("SELECT count(*) FROM provider_webhooks WHERE disposition = 'ALREADY_SETTLED'")
            .await,
        1,
        "the contradicting report is kept"
    );
}

/// `TWILIO_MACHINE_DETECTION` asks Twilio for answering machine detection, which reports
/// machines as VOICEMAIL.
#[tokio::test]
async fn machine_detection_is_asked_for_when_configured() {
    let stage = Stage::new(&Twilio, &[("TWILIO_MACHINE_DETECTION", "Enable")]).await;
    let (call_id, placement) = stage.dialed().await;
    let seen = stage.fake.book().dials.clone();
    let form = form_pairs(&seen[0].body);
    assert_eq!(form_value(&form, "MachineDetection"), Some("Enable"));
    let (status, body) = stage
        .post(&Twilio.end_of_call(&placement, "completed (machine_end_silence)", PUBLIC_BASE))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(dials[0].outcome, Some(DialOutcome::Voicemail));
}

/// Before redialing a dial of unknown fate, the calls from Ebra's number to the phone are
/// listed; the call an earlier attempt placed (busy, redial scheduled) is not taken for
/// this attempt's, so the attempt's own call is placed, once.
#[tokio::test]
async fn the_lookup_before_a_redial_skips_the_earlier_attempts_call() {
    let stage = Stage::new(&Twilio, &[]).await;
    let (call_id, first) = stage.dialed().await;
    let (status, body) = stage
        .post(&Twilio.end_of_call(&first, "busy", PUBLIC_BASE))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(stage.read(call_id).await.0.status, CallStatus::Pending);

    stage.fake.plan([DialPlan::StallWithoutPlacing(
        std::time::Duration::from_millis(1500),
    )]);
    stage.make_due(call_id).await;
    let outcome = stage.dial(call_id).await;
    assert!(
        matches!(outcome, MessageOutcome::Deferred { .. }),
        "{outcome:?}"
    );
    stage.make_due(call_id).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);

    let (call, dials) = stage.read(call_id).await;
    let placements: Vec<_> = stage
        .fake
        .placements()
        .into_iter()
        .filter(|p| p.to == call.to)
        .collect();
    assert_eq!(placements.len(), 2, "one call per attempt: {placements:#?}");
    let second = &placements[1];
    assert_eq!(
        dials.last().and_then(|d| d.provider_call_id.as_deref()),
        Some(second.provider_call_id.as_str()),
        "the attempt's own call, not the earlier attempt's {}",
        first.provider_call_id
    );
    let lookups = stage.fake.book().lookups.clone();
    assert_eq!(lookups.len(), 1, "asked once, before the redial");
    let query = form_pairs(lookups[0].uri.query().unwrap_or_default().as_bytes());
    assert_eq!(form_value(&query, "To"), Some(call.to.as_str()));
    assert_eq!(form_value(&query, "From"), Some(FROM_NUMBER));
}

/// The fake itself answers as Twilio's API does: no idempotency (two POSTs, two calls),
/// HTTP Basic, error bodies, the call list newest first and filtered.
#[tokio::test]
async fn the_fake_answers_as_twilios_api() {
    let fake = Twilio.start().await;
    let client = reqwest::Client::new();
    let calls = format!(
        "{}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json",
        fake.base_url
    );
    let form = twilio::form_encode(
        &[
            ("To", "+14155550123"),
            ("From", FROM_NUMBER),
            ("Url", "https://voice.example.com/twiml"),
            (
                "StatusCallback",
                "https://hooks.ebra.test/callbacks/twilio?ebraKey=x",
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let post = |secret: &str| {
        client
            .post(&calls)
            .basic_auth(ACCOUNT_SID, Some(secret.to_owned()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
    };
    let mut sids = Vec::new();
    for _ in 0..2 {
        let answer = post(AUTH_TOKEN).send().await.expect("the fake answers");
        assert_eq!(answer.status(), 201);
        let call: Value = answer.json().await.expect("json");
        assert_eq!(call["status"], "queued");
        assert_eq!(call["direction"], "outbound-api");
        let sid = call["sid"].as_str().expect("sid").to_owned();
        assert!(sid.starts_with("CA") && sid.len() == 34, "{sid}");
        sids.push(sid);
    }
    assert_ne!(sids[0], sids[1], "no idempotency: a second call");

    let answer = post("wrong").send().await.expect("the fake answers");
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.json::<Value>().await.expect("json")["code"], 20003);

    let listed: Value = client
        .get(format!(
            "{calls}?To=%2B14155550123&From=%2B14155550111&PageSize=1"
        ))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .expect("the fake answers")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["calls"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["calls"][0]["sid"], sids[1].as_str(), "newest first");
    assert!(listed["next_page_uri"].is_string(), "{listed}");
    let none: Value = client
        .get(format!("{calls}?To=%2B14155550999"))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .expect("the fake answers")
        .json()
        .await
        .expect("json");
    assert_eq!(none["calls"], json!([]));

    let missing = client
        .get(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/CA00000000000000000000000000000000.json",
            fake.base_url
        ))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .expect("the fake answers");
    assert_eq!(missing.status(), 404);
    let error: Value = missing.json().await.expect("json");
    assert_eq!(error["code"], 20404);
    assert_eq!(error["status"], 404);
    assert_eq!(
        error["more_info"],
        "https://www.twilio.com/docs/errors/20404"
    );

    // The callbacks' signature is Twilio's, checked against the SDK-signed fixture case.
    let fixture: Value = serde_json::from_str(include_str!("fixtures/provider_signatures.json"))
        .expect("the fixture");
    let case = fixture["cases"]
        .as_array()
        .and_then(|cases| {
            cases
                .iter()
                .find(|c| c["provider"] == "twilio" && c["name"] == "valid/completed_human")
        })
        .expect("the SDK-signed completed callback");
    let params: Vec<(String, String)> = case["params"]
        .as_array()
        .expect("params")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().to_owned(),
                p[1].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        twilio::signature(
            case["secret"].as_str().expect("secret"),
            case["url"].as_str().expect("url"),
            &params,
            false
        ),
        case["headers"]["X-Twilio-Signature"]
    );
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(
                case["headers"]["X-Twilio-Signature"]
                    .as_str()
                    .unwrap_or_default()
            )
            .map(|d| d.len())
            .ok(),
        Some(20),
        "HMAC-SHA1"
    );
}

fn form_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn the_reports_result_lands_on_the_call() {
    contract::the_reports_result_lands_on_the_call(&Twilio).await;
}
