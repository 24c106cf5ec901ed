//! Retell (`PROVIDER=retell`) against its contract fake: every scenario of
//! `tests/common/contract.rs`.

mod common;

use common::contract;
use common::fakes::retell::Retell;

#[tokio::test]
async fn dials_in_the_providers_format() {
    contract::dials_in_the_providers_format(&Retell).await;
}

#[tokio::test]
async fn settles_every_documented_end_reason() {
    contract::settles_every_documented_end_reason(&Retell).await;
}

#[tokio::test]
async fn an_early_webhook_is_not_lost() {
    contract::an_early_webhook_is_not_lost(&Retell).await;
}

#[tokio::test]
async fn duplicate_deliveries_change_nothing() {
    contract::duplicate_deliveries_change_nothing(&Retell).await;
}

#[tokio::test]
async fn a_concurrency_limit_answer_waits_without_using_an_attempt() {
    contract::a_concurrency_limit_answer_waits_without_using_an_attempt(&Retell).await;
}

#[tokio::test]
async fn an_unknown_fate_dial_that_was_placed_is_not_placed_again() {
    contract::an_unknown_fate_dial_that_was_placed_is_not_placed_again(&Retell).await;
}

#[tokio::test]
async fn an_unknown_fate_dial_that_was_not_placed_is_placed_once() {
    contract::an_unknown_fate_dial_that_was_not_placed_is_placed_once(&Retell).await;
}

#[tokio::test]
async fn a_lost_webhook_is_settled_by_the_reclaimers_lookup() {
    contract::a_lost_webhook_is_settled_by_the_reclaimers_lookup(&Retell).await;
}

#[tokio::test]
async fn a_stale_call_the_provider_cannot_be_asked_about() {
    contract::a_stale_call_the_provider_cannot_be_asked_about(&Retell).await;
}

#[tokio::test]
async fn forged_webhooks_are_refused_and_change_nothing() {
    contract::forged_webhooks_are_refused_and_change_nothing(&Retell).await;
}

#[tokio::test]
async fn progress_events_change_nothing() {
    contract::progress_events_change_nothing(&Retell).await;
}

#[tokio::test]
async fn refusals_fail_and_failures_retry() {
    contract::refusals_fail_and_failures_retry(&Retell).await;
}

#[tokio::test]
async fn the_reports_result_lands_on_the_call() {
    contract::the_reports_result_lands_on_the_call(&Retell).await;
}
