//! ElevenLabs Agents (`PROVIDER=elevenlabs`) against its contract fake: every scenario of
//! `tests/common/contract.rs`, then what is ElevenLabs' own: a SIP-trunk number, refusals as
//! `success: false` on a 200, call-initiation failures that carry no dynamic variables, and
//! the lookup by the attempt key that stands in for an idempotency key.

mod common;

use std::time::Duration;

use common::contract::{self, Stage, PUBLIC_BASE};
use common::fakes::elevenlabs::{ElevenLabs, ElevenLabsWith};
use common::fakes::{Contract, DialPlan};
use ebra_shared::domain::{CallStatus, DialOutcome};
use ebra_worker::{DeferReason, MessageOutcome};
use serde_json::json;

#[tokio::test]
async fn dials_in_the_providers_format() {
    contract::dials_in_the_providers_format(&ElevenLabs).await;
}

#[tokio::test]
async fn settles_every_documented_end_reason() {
    contract::settles_every_documented_end_reason(&ElevenLabs).await;
}

#[tokio::test]
async fn an_early_webhook_is_not_lost() {
    contract::an_early_webhook_is_not_lost(&ElevenLabs).await;
}

#[tokio::test]
async fn duplicate_deliveries_change_nothing() {
    contract::duplicate_deliveries_change_nothing(&ElevenLabs).await;
}

#[tokio::test]
async fn a_concurrency_limit_answer_waits_without_using_an_attempt() {
    contract::a_concurrency_limit_answer_waits_without_using_an_attempt(&ElevenLabs).await;
}

#[tokio::test]
async fn an_unknown_fate_dial_that_was_placed_is_not_placed_again() {
    contract::an_unknown_fate_dial_that_was_placed_is_not_placed_again(&ElevenLabs).await;
}

#[tokio::test]
async fn an_unknown_fate_dial_that_was_not_placed_is_placed_once() {
    contract::an_unknown_fate_dial_that_was_not_placed_is_placed_once(&ElevenLabs).await;
}

/// The fake's running conversations already say `call_result: answered` (ElevenLabs does
/// not document when it is set): the live call must still be seen as live.
#[tokio::test]
async fn a_lost_webhook_is_settled_by_the_reclaimers_lookup() {
    contract::a_lost_webhook_is_settled_by_the_reclaimers_lookup(&ElevenLabs).await;
}

#[tokio::test]
async fn a_stale_call_the_provider_cannot_be_asked_about() {
    contract::a_stale_call_the_provider_cannot_be_asked_about(&ElevenLabs).await;
}

#[tokio::test]
async fn forged_webhooks_are_refused_and_change_nothing() {
    contract::forged_webhooks_are_refused_and_change_nothing(&ElevenLabs).await;
}

#[tokio::test]
async fn progress_events_change_nothing() {
    contract::progress_events_change_nothing(&ElevenLabs).await;
}

#[tokio::test]
async fn refusals_fail_and_failures_retry() {
    contract::refusals_fail_and_failures_retry(&ElevenLabs).await;
}

// ---------------------------------------------------------------------------------------
// A SIP-trunk number (`ELEVENLABS_TELEPHONY=sip_trunk`): its own endpoint, `sip_call_id`
// beside the conversation id, `sip_trunking` conversations, `sip` initiation failures.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sip_trunk_dials_in_the_providers_format() {
    contract::dials_in_the_providers_format(&ElevenLabsWith::SIP_TRUNK).await;
}

#[tokio::test]
async fn sip_trunk_settles_every_documented_end_reason() {
    contract::settles_every_documented_end_reason(&ElevenLabsWith::SIP_TRUNK).await;
}

#[tokio::test]
async fn sip_trunk_an_unknown_fate_dial_that_was_placed_is_not_placed_again() {
    contract::an_unknown_fate_dial_that_was_placed_is_not_placed_again(&ElevenLabsWith::SIP_TRUNK)
        .await;
}

#[tokio::test]
async fn sip_trunk_a_lost_webhook_is_settled_by_the_reclaimers_lookup() {
    contract::a_lost_webhook_is_settled_by_the_reclaimers_lookup(&ElevenLabsWith::SIP_TRUNK).await;
}

// ---------------------------------------------------------------------------------------
// Refusals as `200 {success: false, message}`.
// ---------------------------------------------------------------------------------------

/// `success: false` naming the concurrency limit waits like the 429 does.
#[tokio::test]
async fn success_false_naming_the_limit_waits_without_using_an_attempt() {
    contract::a_concurrency_limit_answer_waits_without_using_an_attempt(
        &ElevenLabsWith::SUCCESS_FALSE,
    )
    .await;
}

/// Any other `success: false` is a refusal (the call fails at once), though its status is
/// 200; rate limits and 5xx are still retried.
#[tokio::test]
async fn success_false_is_a_refusal() {
    contract::refusals_fail_and_failures_retry(&ElevenLabsWith::SUCCESS_FALSE).await;
}

// ---------------------------------------------------------------------------------------
// ElevenLabs' own cases.
// ---------------------------------------------------------------------------------------

/// A validation error echoes the request, client metadata included: metadata that happens
/// to say "burst" or "concurrency" does not make a refusal the concurrency limit (which
/// would keep the call waiting forever without counting an attempt).
#[tokio::test]
async fn a_refusal_echoing_the_metadata_is_not_the_concurrency_limit() {
    let stage = Stage::new(&ElevenLabs, &[]).await;
    stage.fake.plan([DialPlan::Permanent]);
    let call_id = stage
        .call(json!({"plan": "burst", "note": "no concurrent calls, please"}))
        .await;
    let outcome = stage.dial(call_id).await;
    assert!(
        matches!(outcome, MessageOutcome::Failed { .. }),
        "{outcome:?}"
    );
    let (call, _) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(stage.limited_dials(call_id).await, 0);
    assert!(stage.fake.placements().is_empty());
}

/// A `call_initiation_failure` carries no dynamic variables, so no attempt key: it finds its
/// attempt by the conversation id, also when it outruns the worker's record of that id (it
/// is held until then).
#[tokio::test]
async fn an_early_call_initiation_failure_settles_by_the_conversation_id() {
    let stage = Stage::new(&ElevenLabs, &[]).await;
    let call_id = stage.call(json!({})).await;
    let claimed = stage.env.claim(&stage.config, call_id).await;
    let (call, _) = stage.read(call_id).await;
    let conversation_id = stage.fake.book().place(
        "conv_",
        &call.to,
        Some(claimed.idempotency_key),
        json!({"agent_id": call.script_id}),
    );
    let placement = stage
        .fake
        .book()
        .placement(&conversation_id)
        .cloned()
        .expect("placed");
    let delivery = ElevenLabs.end_of_call(&placement, "call_initiation_failure=busy", PUBLIC_BASE);
    let event: serde_json::Value = serde_json::from_slice(&delivery.body).expect("json");
    assert!(
        event["data"]
            .get("conversation_initiation_client_data")
            .is_none(),
        "as documented, no dynamic variables: {event}"
    );
    let (status, body) = stage.post(&delivery).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (axum::http::StatusCode::ACCEPTED, Some("held")),
        "{body}"
    );
    let (call, _) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::InProgress, "held: {body}");
    stage
        .env
        .record_accepted(&stage.config, &claimed, &conversation_id)
        .await;
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Pending, "busy: dialed again later");
    assert_eq!(dials.len(), 1);
    assert_eq!(dials[0].outcome, Some(DialOutcome::Busy));
    assert!(dials[0]
        .end_reason
        .as_deref()
        .is_some_and(|r| r.contains("call_initiation_failure=busy") && r.contains("486")));
    assert!(!stage.holds_slot(call_id).await);
}

/// Before redialing a dial of unknown fate, ElevenLabs is asked for the agent's
/// conversations since the first dial, filtered by the attempt key as the SDK spells a
/// dynamic-variable filter (`name:op:value`); another conversation to the same agent is
/// never taken for this attempt's.
#[tokio::test]
async fn the_redial_lookup_asks_by_the_attempt_key() {
    let stage = Stage::new(&ElevenLabs, &[]).await;
    // Another call of the same agent, placed and live.
    let (_, other) = stage.dialed().await;
    stage
        .fake
        .plan([DialPlan::StallWithoutPlacing(Duration::from_millis(1500))]);
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
    stage.make_due(call_id).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    let (call, dials) = stage.read(call_id).await;
    let key = dials[0].idempotency_key;
    let lookups = stage.fake.book().lookups.clone();
    let list = lookups
        .iter()
        .find(|seen| seen.uri.path() == "/v1/convai/conversations")
        .expect("the conversations were listed");
    let query: Vec<(String, String)> = url_pairs(list.uri.query().expect("a query string"));
    let value = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        value("dynamic_variable_filter"),
        Some(format!("ebra_attempt_key:eq:{key}"))
    );
    assert_eq!(value("agent_id").as_deref(), Some(call.script_id.as_str()));
    let after: i64 = value("call_start_after_unix")
        .expect("call_start_after_unix")
        .parse()
        .expect("unix seconds");
    assert!(after <= chrono::Utc::now().timestamp());
    let placement = stage.placement_for(&call.to);
    assert_eq!(
        dials.last().and_then(|d| d.provider_call_id.clone()),
        Some(placement.provider_call_id.clone())
    );
    assert_ne!(placement.provider_call_id, other.provider_call_id);
    assert_eq!(stage.fake.placements().len(), 2);
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://fake/?{query}"))
        .expect("a URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn the_reports_result_lands_on_the_call() {
    contract::the_reports_result_lands_on_the_call(&ElevenLabs).await;
}
