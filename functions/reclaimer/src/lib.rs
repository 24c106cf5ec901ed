//! The reclaimer function: the safety net behind "no call lost" (invariant 4) and "slots do
//! not idle" (invariant 8), run on an EventBridge schedule.
//!
//! One pass, in order:
//! 1. IN_PROGRESS calls silent for longer than `STALE_INPROG_SECONDS`: slot released,
//!    retried with backoff while attempts remain, else FAILED ("no outcome reported");
//! 2. PENDING calls past their `expiresAt` (or `MAX_PENDING_AGE_SECONDS`): EXPIRED;
//! 3. PENDING calls whose SQS message was never confirmed within `OUTBOX_GRACE_SECONDS`
//!    (a send that failed after the commit, or a lost message): sent again;
//! 4. free slots while due calls wait: as many nudged as there are free slots.
//!
//! Every step is one statement-level sweep in [`ebra_shared::store::sweep`], taken with
//! `FOR UPDATE SKIP LOCKED`, so passes are idempotent and safe to run concurrently with each
//! other and with the worker. The pass logs one `"reclaimer pass"` line (the template's
//! metric filters read its `in_progress` field) and returns the same counts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ebra_shared::queue::{CallsQueue, Enqueue};
use ebra_shared::store::dial::RetryPolicy;
use ebra_shared::store::{sweep, Pool};
use ebra_shared::Config;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;

/// What a pass needs, built once per Lambda instance (or by `ebra dev`).
#[derive(Clone)]
pub struct ReclaimerState {
    pub pool: Pool,
    pub queue: CallsQueue,
    pub config: Arc<Config>,
}

impl ReclaimerState {
    pub fn new(pool: Pool, queue: CallsQueue, config: Arc<Config>) -> Self {
        Self {
            pool,
            queue,
            config,
        }
    }
}

/// What one pass did: the Lambda's response and the fields of its log line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReclaimReport {
    /// Stale IN_PROGRESS calls put back to PENDING for another attempt.
    pub stale_retried: u64,
    /// Stale IN_PROGRESS calls with no attempts left, now FAILED.
    pub stale_failed: u64,
    /// PENDING calls past their expiry, now EXPIRED.
    pub expired: u64,
    /// Messages re-sent for PENDING calls whose message was never confirmed.
    pub outbox_resent: u64,
    /// Waiting calls nudged into free slots.
    pub nudged: u64,
    /// Messages SQS did not take; each is still covered (outbox mark or refill) next pass.
    pub send_failures: u64,
    /// Calls in progress (slots held) at the end of the pass.
    pub in_progress: i64,
    /// `GLOBAL_CONCURRENCY`.
    pub cap: u32,
}

/// Runs one pass. Messages are sent after each step's commit, so a later step's failure
/// does not hold back what an earlier one scheduled.
pub async fn run_pass(state: &ReclaimerState) -> anyhow::Result<ReclaimReport> {
    let config = &state.config;
    let policy = RetryPolicy::from(config.as_ref());
    let mut report = ReclaimReport {
        cap: config.global_concurrency,
        ..ReclaimReport::default()
    };

    let stale_after = Duration::from_secs(config.stale_inprog_seconds);
    let (stale, messages) = sweep::reclaim_stale_calls(&state.pool, stale_after, &policy)
        .await
        .context("reclaiming stale IN_PROGRESS calls")?;
    report.stale_retried = stale.retried;
    report.stale_failed = stale.failed;
    // One message per retried call comes first; the rest nudge waiting calls into the
    // slots the stale calls held.
    report.nudged += (messages.len() as u64).saturating_sub(stale.retried);
    report.send_failures += send(&state.queue, &messages).await;

    let max_pending_age = config.max_pending_age_seconds.map(Duration::from_secs);
    report.expired = sweep::expire_pending_calls(&state.pool, max_pending_age)
        .await
        .context("expiring PENDING calls")?;

    let grace = Duration::from_secs(config.outbox_grace_seconds);
    let messages = sweep::resend_unconfirmed_messages(&state.pool, grace)
        .await
        .context("re-sending unconfirmed outbox messages")?;
    report.outbox_resent = messages.len() as u64;
    // A failed send leaves the call marked: the next pass, a grace period on, tries again.
    report.send_failures += send(&state.queue, &messages).await;

    let (in_progress, messages) = sweep::refill_free_slots(&state.pool, config.global_concurrency)
        .await
        .context("refilling free slots")?;
    report.in_progress = in_progress;
    report.nudged += messages.len() as u64;
    report.send_failures += send(&state.queue, &messages).await;

    tracing::info!(
        in_progress = report.in_progress,
        cap = report.cap,
        stale_retried = report.stale_retried,
        stale_failed = report.stale_failed,
        expired = report.expired,
        outbox_resent = report.outbox_resent,
        nudged = report.nudged,
        send_failures = report.send_failures,
        "reclaimer pass"
    );
    Ok(report)
}

/// Sends `messages`; returns how many SQS did not take.
async fn send(queue: &CallsQueue, messages: &[Enqueue]) -> u64 {
    if messages.is_empty() {
        return 0;
    }
    let failed = queue.send_all(messages).await;
    if !failed.is_empty() {
        tracing::warn!(
            count = failed.len(),
            "reclaimer messages not sent; the next pass covers them"
        );
    }
    failed.len() as u64
}

/// The Lambda handler: any scheduled event runs one pass; its report is the response. A
/// failed pass is logged with its whole cause chain and reported to Lambda as an error.
pub async fn handle_scheduled_event(
    state: &ReclaimerState,
    _event: LambdaEvent<serde_json::Value>,
) -> Result<ReclaimReport, Diagnostic> {
    run_pass(state).await.map_err(|error| {
        tracing::error!(error = format!("{error:#}"), "reclaimer pass failed");
        Diagnostic {
            error_type: "ReclaimerPassFailed".to_owned(),
            error_message: format!("{error:#}"),
        }
    })
}
