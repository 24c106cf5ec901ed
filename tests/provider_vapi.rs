//! Vapi (`PROVIDER=vapi`) against its contract fake: every scenario of
//! `tests/common/contract.rs`, then what is Vapi's own: `status-update` as an end event,
//! the end fields read from the message, the three server credentials and a rotated
//! secret, a created call blocked by the concurrency limit, and lookups that page through
//! `GET /call`.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use ebra_reclaimer::run_pass;
use ebra_shared::domain::{CallStatus, DialOutcome};
use ebra_worker::{DeferReason, MessageOutcome};
use serde_json::{json, Value};

use common::contract::{self, Stage, PUBLIC_BASE};
use common::fakes::vapi::{self, Vapi, VapiBlockedCreate, LIMITED, WEBHOOK_SECRET};
use common::fakes::{Contract as _, DialPlan};

#[tokio::test]
async fn dials_in_the_providers_format() {
    contract::dials_in_the_providers_format(&Vapi).await;
}

#[tokio::test]
async fn settles_every_documented_end_reason() {
    contract::settles_every_documented_end_reason(&Vapi).await;
}

#[tokio::test]
async fn an_early_webhook_is_not_lost() {
    contract::an_early_webhook_is_not_lost(&Vapi).await;
}

#[tokio::test]
async fn duplicate_deliveries_change_nothing() {
    contract::duplicate_deliveries_change_nothing(&Vapi).await;
}

#[tokio::test]
async fn a_concurrency_limit_answer_waits_without_using_an_attempt() {
    contract::a_concurrency_limit_answer_waits_without_using_an_attempt(&Vapi).await;
}

#[tokio::test]
async fn an_unknown_fate_dial_that_was_placed_is_not_placed_again() {
    contract::an_unknown_fate_dial_that_was_placed_is_not_placed_again(&Vapi).await;
}

#[tokio::test]
async fn an_unknown_fate_dial_that_was_not_placed_is_placed_once() {
    contract::an_unknown_fate_dial_that_was_not_placed_is_placed_once(&Vapi).await;
}

#[tokio::test]
async fn a_lost_webhook_is_settled_by_the_reclaimers_lookup() {
    contract::a_lost_webhook_is_settled_by_the_reclaimers_lookup(&Vapi).await;
}

#[tokio::test]
async fn a_stale_call_the_provider_cannot_be_asked_about() {
    contract::a_stale_call_the_provider_cannot_be_asked_about(&Vapi).await;
}

#[tokio::test]
async fn forged_webhooks_are_refused_and_change_nothing() {
    contract::forged_webhooks_are_refused_and_change_nothing(&Vapi).await;
}

#[tokio::test]
async fn progress_events_change_nothing() {
    contract::progress_events_change_nothing(&Vapi).await;
}

#[tokio::test]
async fn refusals_fail_and_failures_retry() {
    contract::refusals_fail_and_failures_retry(&Vapi).await;
}

// ---------------------------------------------------------------------------------------
// Vapi's own
// ---------------------------------------------------------------------------------------

/// The table of end reasons is the SDK's enum: every value that is not one of the
/// patterned provider failures, and a sample of those, nothing that is not in the enum.
#[test]
fn the_end_reasons_are_the_sdks() {
    let sdk = vapi::sdk_ended_reasons();
    assert_eq!(sdk.len(), 604, "vapi-server-sdk 3.0.0's CallEndedReason");
    let table: Vec<&str> = Vapi.end_reasons().into_iter().map(|(r, _)| r).collect();
    let missing: Vec<&&str> = sdk
        .iter()
        .filter(|r| !vapi::is_patterned(r) && !table.contains(r))
        .collect();
    assert!(missing.is_empty(), "not in the fake's table: {missing:#?}");
    let unknown: Vec<&&str> = table.iter().filter(|r| !sdk.contains(r)).collect();
    assert!(unknown.is_empty(), "not in the SDK's enum: {unknown:#?}");
    let mut sorted = table.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), table.len(), "no reason twice");
    assert!(table.iter().filter(|r| vapi::is_patterned(r)).count() >= 20);
}

/// A `status-update` with `status: ended` and its `endedReason` ends the call; the
/// `end-of-call-report` that follows changes nothing of it but fills in its result (the
/// summary, transcript and recording the update lacked), with a `call.result_updated`
/// event.
#[tokio::test]
async fn a_status_update_that_ends_the_call_settles_it_once() {
    let stage = Stage::new(&Vapi, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let update = vapi::signed(
        vapi::status_update_body(&placement, "ended", Some("customer-busy")),
        WEBHOOK_SECRET,
    );
    let (status, body) = stage.post(&update).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Pending, "busy: redialed later");
    assert_eq!(dials[0].outcome, Some(DialOutcome::Busy));
    assert!(call.result.as_ref().is_some_and(|r| r.summary.is_none()));
    let settled = stage.snapshot().await;
    let (status, body) = stage
        .post(&Vapi.end_of_call(&placement, "customer-busy", PUBLIC_BASE))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("already_settled")),
        "{body}"
    );
    // The dial is as the update left it (the snapshot's second part); the call too, but
    // for its result, filled in, and what records that change.
    let part = |s: &str, n: usize| s.split(" | ").nth(n).map(str::to_owned);
    assert_eq!(part(&stage.snapshot().await, 1), part(&settled, 1));
    let (after, _) = stage.read(call_id).await;
    assert_eq!(
        (
            after.status,
            after.attempts,
            after.outcome,
            after.next_run_at,
            &after.last_error
        ),
        (
            call.status,
            call.attempts,
            call.outcome,
            call.next_run_at,
            &call.last_error
        )
    );
    let result = after.result.expect("a result");
    assert_eq!(
        result.summary.as_deref(),
        Some("The customer confirmed the renewal.")
    );
    assert_eq!(result.end_reason.as_deref(), Some("customer-busy"));
    assert_eq!(
        after.sequence,
        call.sequence + 1,
        "one call.result_updated event"
    );
}

/// A `status-update` that says `ended` without a reason (the docs' example) ends nothing:
/// the report that names the reason follows and settles the call.
#[tokio::test]
async fn a_status_update_without_a_reason_waits_for_the_report() {
    let stage = Stage::new(&Vapi, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let before = stage.snapshot().await;
    let update = vapi::signed(
        vapi::status_update_body(&placement, "ended", None),
        WEBHOOK_SECRET,
    );
    let (status, body) = stage.post(&update).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("ignored")),
        "{body}"
    );
    assert_eq!(stage.snapshot().await, before);
    let (status, body) = stage
        .post(&Vapi.end_of_call(&placement, "customer-did-not-answer", PUBLIC_BASE))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    let (_, dials) = stage.read(call_id).await;
    assert_eq!(dials[0].outcome, Some(DialOutcome::NoAnswer));
}

/// The report's own times are kept: the duration from its `startedAt` and `endedAt`, and
/// its `endedAt`, though its `call` is a snapshot without them.
#[tokio::test]
async fn the_reports_times_are_kept() {
    let stage = Stage::new(&Vapi, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let delivery = Vapi.end_of_call(&placement, "customer-ended-call", PUBLIC_BASE);
    let report: Value = serde_json::from_slice(&delivery.body).expect("json");
    assert_eq!(report["message"]["call"]["status"], "in-progress");
    assert!(report["message"]["call"].get("endedAt").is_none());
    let (status, body) = stage.post(&delivery).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(dials[0].duration_sec, Some(42));
    let ended_at = report["message"]["endedAt"].as_str().expect("endedAt");
    assert_eq!(
        dials[0].ended_at.map(vapi::iso).as_deref(),
        Some(ended_at),
        "the report's endedAt"
    );
}

/// The shape of the docs' example report: the reason on the message's call only.
#[tokio::test]
async fn a_report_with_the_reason_on_its_call() {
    let stage = Stage::new(&Vapi, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let body = json!({"message": {
        "type": "end-of-call-report",
        "call": {
            "id": placement.provider_call_id,
            "status": "ended",
            "endedReason": "assistant-ended-call",
        },
    }});
    let (status, answer) = stage
        .post(&vapi::signed(body.to_string().into_bytes(), WEBHOOK_SECRET))
        .await;
    assert_eq!(
        (status, answer["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{answer}"
    );
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(dials[0].end_reason.as_deref(), Some("assistant-ended-call"));
}

/// Each credential Vapi can be configured with is accepted: the bearer token, the legacy
/// `X-Vapi-Secret`, and the HMAC signature with its timestamp in seconds.
#[tokio::test]
async fn every_server_credential_is_accepted() {
    let stage = Stage::new(&Vapi, &[]).await;
    type Credential = fn(Vec<u8>) -> common::fakes::Delivery;
    let credentials: [(&str, Credential); 3] = [
        ("bearer", |body| vapi::bearer(body, WEBHOOK_SECRET)),
        ("x-vapi-secret", |body| {
            vapi::legacy_secret(body, WEBHOOK_SECRET)
        }),
        ("hmac in seconds", |body| {
            vapi::hmac_at(
                body,
                WEBHOOK_SECRET,
                &chrono::Utc::now().timestamp().to_string(),
            )
        }),
    ];
    for (name, credential) in credentials {
        let (call_id, placement) = stage.dialed().await;
        let delivery = credential(vapi::report_body(&placement, "customer-ended-call"));
        let (status, body) = stage.post(&delivery).await;
        assert_eq!(
            (status, body["result"].as_str()),
            (StatusCode::OK, Some("applied")),
            "{name}: {body}"
        );
        assert_eq!(
            stage.read(call_id).await.0.status,
            CallStatus::Completed,
            "{name}"
        );
    }
}

/// `VAPI_WEBHOOK_SECRET` with two secrets (a rotation): both are accepted, as HMAC key and
/// as bearer token; a third is not.
#[tokio::test]
async fn a_rotated_secret_accepts_both_and_only_both() {
    let old = "vapi-server-secret-old-41d9c2";
    let new = "vapi-server-secret-new-8b07fe";
    let both = format!("{old} {new}");
    let stage = Stage::new(&Vapi, &[("VAPI_WEBHOOK_SECRET", both.as_str())]).await;
    let (call_id, placement) = stage.dialed().await;
    let (status, body) = stage
        .post(&vapi::signed(
            vapi::report_body(&placement, "customer-ended-call"),
            WEBHOOK_SECRET,
        ))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the secret rotated out: {body}"
    );
    for delivery in [
        vapi::signed(
            vapi::status_update_body(&placement, "in-progress", None),
            old,
        ),
        vapi::bearer(
            vapi::status_update_body(&placement, "in-progress", None),
            new,
        ),
    ] {
        let (status, body) = stage.post(&delivery).await;
        assert_eq!(
            (status, body["result"].as_str()),
            (StatusCode::OK, Some("ignored")),
            "{body}"
        );
    }
    let (status, body) = stage
        .post(&vapi::signed(
            vapi::report_body(&placement, "customer-ended-call"),
            new,
        ))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    assert_eq!(stage.read(call_id).await.0.status, CallStatus::Completed);
}

/// Vapi answers `201` for a call the concurrency limit blocked (`concurrencyBlocked`), the
/// call already ended with the limit's reason: Ebra takes the call id, and its report
/// settles the dial as LIMITED, not counted, the call waiting to be dialed again.
#[tokio::test]
async fn a_created_call_blocked_by_the_limit_waits_without_using_an_attempt() {
    let stage = Stage::new(&VapiBlockedCreate, &[("MAX_ATTEMPTS", "1")]).await;
    stage.fake.plan([DialPlan::ConcurrencyLimit]);
    let call_id = stage.call(json!({})).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    let (call, _) = stage.read(call_id).await;
    let blocked = stage.placement_for(&call.to);
    let (status, body) = stage
        .post(&VapiBlockedCreate.end_of_call(&blocked, LIMITED, PUBLIC_BASE))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(dials[0].outcome, Some(DialOutcome::Limited));
    assert_eq!(stage.limited_dials(call_id).await, 1);
    assert!(!stage.holds_slot(call_id).await);
    // MAX_ATTEMPTS=1 and one dial made: the blocked one did not count.
    stage.make_due(call_id).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(dials.len(), 2);
    assert_eq!(
        stage.fake.placements().len(),
        2,
        "the blocked call, then the call"
    );
}

/// The same, with its report lost: the reclaimer's lookup finds the call ended by the
/// limit and the call waits, its attempt not counted.
#[tokio::test]
async fn a_blocked_call_whose_report_is_lost_is_settled_by_lookup() {
    let stage = Stage::new(&VapiBlockedCreate, &[]).await;
    stage.fake.plan([DialPlan::ConcurrencyLimit]);
    let call_id = stage.call(json!({})).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    stage.make_stale(call_id).await;
    let report = run_pass(&stage.reclaimer).await.expect("a reclaimer pass");
    assert_eq!(report.settled_by_lookup, 1, "{report:?}");
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Pending);
    assert_eq!(dials[0].outcome, Some(DialOutcome::Limited));
    assert_eq!(stage.limited_dials(call_id).await, 1);
    assert!(!stage.holds_slot(call_id).await);
}

/// A dial of unknown fate whose call has since been buried under more calls from the same
/// number than `GET /call` returns at once: the lookup pages back to it, with only the
/// filters Vapi supports, and the call is not placed again.
#[tokio::test]
async fn a_lookup_pages_back_to_the_call() {
    let stage = Stage::new(&Vapi, &[]).await;
    stage
        .fake
        .plan([DialPlan::PlaceThenStall(Duration::from_millis(1500))]);
    let call_id = stage.call(json!({})).await;
    let outcome = stage.dial(call_id).await;
    assert!(
        matches!(
            outcome,
            MessageOutcome::Deferred {
                reason: DeferReason::RetryScheduled,
                ..
            }
        ),
        "{outcome:?}"
    );
    vapi::place_other_calls(&stage.fake, 250);
    stage.make_due(call_id).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    let (call, dials) = stage.read(call_id).await;
    let placement = stage.placement_for(&call.to);
    assert_eq!(
        dials[1].provider_call_id.as_deref(),
        Some(placement.provider_call_id.as_str())
    );
    let lookups = stage.fake.book().lookups.clone();
    assert_eq!(lookups.len(), 3, "three pages of 100: {lookups:#?}");
    for lookup in &lookups {
        assert_eq!(lookup.uri.path(), "/call");
        let query = lookup.uri.query().unwrap_or_default();
        assert!(
            query.contains(&format!("phoneNumberId={}", vapi::PHONE_NUMBER_ID)),
            "{query}"
        );
        assert!(query.contains("assistantId=agent_renewals_v2"), "{query}");
        assert!(query.contains("createdAtGe="), "{query}");
    }
    assert!(lookups[1]
        .uri
        .query()
        .unwrap_or_default()
        .contains("createdAtLe="));
}

/// When more calls than the lookup will page through were made from the number since the
/// dial, it cannot say the call was not placed: nothing is dialed, the attempt stays of
/// unknown fate.
#[tokio::test]
async fn a_lookup_that_cannot_see_every_call_does_not_redial() {
    let stage = Stage::new(&Vapi, &[]).await;
    stage
        .fake
        .plan([DialPlan::StallWithoutPlacing(Duration::from_millis(1500))]);
    let call_id = stage.call(json!({})).await;
    assert!(matches!(
        stage.dial(call_id).await,
        MessageOutcome::Deferred { .. }
    ));
    vapi::place_other_calls(&stage.fake, 1_050);
    stage.make_due(call_id).await;
    let outcome = stage.dial(call_id).await;
    assert!(
        matches!(
            outcome,
            MessageOutcome::Deferred {
                reason: DeferReason::RetryScheduled,
                ..
            }
        ),
        "{outcome:?}"
    );
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(
        call.status,
        CallStatus::InProgress,
        "held: it may be ringing"
    );
    assert_eq!(dials.last().map(|d| d.dial_state.as_str()), Some("UNKNOWN"));
    assert!(
        stage.fake.placements().iter().all(|p| p.to != call.to),
        "nothing placed to {}",
        call.to
    );
    assert_eq!(stage.fake.book().lookups.len(), 10);
}

/// `GET /call` answers an empty array when nothing matches: a 404 from it is a request gone
/// astray (here a wrong `VAPI_BASE_URL`), and must not read as "never placed", which would
/// redial.
#[tokio::test]
async fn a_call_list_answering_404_decides_nothing() {
    use ebra_shared::provider::vapi::{Vapi as VapiAdapter, VapiSettings};
    use ebra_shared::provider::{CallLookup, Provider as _, StatusQuery};
    let fake = Vapi.start().await;
    let provider = VapiAdapter::new(
        VapiSettings {
            api_key: vapi::API_KEY.to_owned(),
            phone_number_id: vapi::PHONE_NUMBER_ID.to_owned(),
            base_url: format!("{}/v0", fake.base_url),
        },
        Duration::from_secs(2),
    )
    .expect("the adapter");
    let lookup = provider
        .status(&StatusQuery {
            provider_call_id: None,
            idempotency_key: uuid::Uuid::new_v4(),
            to: "+14155552000".to_owned(),
            script_id: "agent_renewals_v2".to_owned(),
            since: chrono::Utc::now(),
            known_provider_call_ids: Vec::new(),
        })
        .await;
    assert!(matches!(lookup, CallLookup::Undecided { .. }), "{lookup:?}");
}

#[tokio::test]
async fn the_reports_result_lands_on_the_call() {
    contract::the_reports_result_lands_on_the_call(&Vapi).await;
}
