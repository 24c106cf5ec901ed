//! The reclaimer function: the safety net behind "no call lost" (invariant 4) and "slots do
//! not idle" (invariant 8), run on an EventBridge schedule.
//!
//! One pass, in order:
//! 1. IN_PROGRESS calls silent for longer than `STALE_INPROG_SECONDS`: first the provider
//!    is asked about each (by its call id, or by the attempt key), because some providers
//!    never retry a webhook (ElevenLabs, Vapi by default). A call that ended is settled
//!    from the answer exactly as its webhook would have settled it; one still live is left;
//!    one the provider never had is retried with backoff while attempts remain, else FAILED
//!    ("no outcome reported"). When the provider cannot be asked, a provider that
//!    deduplicates dials by key is redialed with the same key; any other is left alone
//!    (a blind redial could ring the person twice) until [`GIVE_UP_FACTOR`] times the stale
//!    threshold, then FAILED;
//! 2. PENDING calls past their `expiresAt` (or `MAX_PENDING_AGE_SECONDS`): EXPIRED;
//! 3. PENDING calls whose SQS message was never confirmed within `OUTBOX_GRACE_SECONDS`
//!    (a send that failed after the commit, or a lost message): sent again;
//! 4. free slots while due calls wait: as many nudged as there are free slots;
//! 5. ACTIVE campaigns whose calls have all ended (at least one call, none PENDING or
//!    IN_PROGRESS) are marked completed with their `campaign.completed` event, once each
//!    (again after calls are added to one), first clearing the mark of those reopened
//!    ([`ebra_shared::store::campaigns::complete_finished_campaigns`]): the event follows the
//!    end of a campaign's last call by at most one schedule interval (a minute by default,
//!    10 s in `ebra dev`);
//! 6. outbound events waiting (not fanned out, or a delivery due): the notifier is nudged,
//!    so an event whose nudge was lost is sent within a pass (none that committed is lost).
//!
//! Every step is one statement-level sweep in [`ebra_shared::store::sweep`], taken with
//! `FOR UPDATE SKIP LOCKED`, so passes are idempotent and safe to run concurrently with each
//! other and with the worker. The pass logs one `"reclaimer pass"` line (the template's
//! metric filters read its `in_progress` field) and returns the same counts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::provider::{CallLookup, Provider, ProviderReport, StatusQuery};
use ebra_shared::queue::{CallsQueue, Enqueue};
use ebra_shared::store::dial::RetryPolicy;
use ebra_shared::store::settle::{settle_from_webhook, Settlement};
use ebra_shared::store::sweep::{ReclaimScope, StaleCall};
use ebra_shared::store::{campaigns, deliveries, sweep, Pool};
use ebra_shared::Config;
use futures::StreamExt as _;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;
use uuid::Uuid;

/// A stale call of a provider without idempotency that cannot be asked is FAILED once it
/// has been in progress this many times `STALE_INPROG_SECONDS`.
pub const GIVE_UP_FACTOR: u32 = 4;

/// Lookups in flight at once during a pass.
const LOOKUP_CONCURRENCY: usize = 8;

/// What a pass needs, built once per Lambda instance (or by `ebra dev`).
#[derive(Clone)]
pub struct ReclaimerState {
    pub pool: Pool,
    pub queue: CallsQueue,
    /// Asked about stale calls before they are reclaimed.
    pub provider: Arc<dyn Provider>,
    pub config: Arc<Config>,
    /// Wakes the notifier when events wait (`EVENTS_QUEUE_URL`).
    pub events: EventsNudge,
}

impl ReclaimerState {
    pub fn new(
        pool: Pool,
        queue: CallsQueue,
        provider: Arc<dyn Provider>,
        config: Arc<Config>,
    ) -> Self {
        let events = EventsNudge::from_queue(queue.client(), config.events.queue_url.as_deref());
        Self {
            pool,
            queue,
            provider,
            config,
            events,
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
    /// Stale calls settled from the provider's answer to a lookup (a lost webhook).
    pub settled_by_lookup: u64,
    /// Stale calls the provider says are still live: left alone.
    pub still_live: u64,
    /// Stale calls the provider could not be asked about, left for the next pass.
    pub lookup_undecided: u64,
    /// PENDING calls past their expiry, now EXPIRED.
    pub expired: u64,
    /// Messages re-sent for PENDING calls whose message was never confirmed.
    pub outbox_resent: u64,
    /// Waiting calls nudged into free slots.
    pub nudged: u64,
    /// Messages SQS did not take; each is still covered (outbox mark or refill) next pass.
    pub send_failures: u64,
    /// Campaigns found ended this pass: each got its `campaign.completed` event.
    pub campaigns_completed: u64,
    /// Outbound events were waiting (not fanned out, or a delivery due): the notifier was
    /// nudged.
    pub events_waiting: bool,
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

    reclaim_stale(state, &policy, &mut report).await?;

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

    let completed = campaigns::complete_finished_campaigns(&state.pool, campaigns::COMPLETE_BATCH)
        .await
        .context("completing the campaigns whose calls have all ended")?;
    for campaign in &completed {
        tracing::info!(campaign_id = %campaign.id, sequence = campaign.sequence, "campaign completed: all its calls have ended");
    }
    report.campaigns_completed = completed.len() as u64;

    // After the campaigns' step: its campaign.completed events are nudged for here.
    report.events_waiting = deliveries::work_waiting(&state.pool)
        .await
        .context("looking for outbound events waiting")?;
    if report.events_waiting {
        state.events.send().await;
    }

    tracing::info!(
        in_progress = report.in_progress,
        cap = report.cap,
        stale_retried = report.stale_retried,
        stale_failed = report.stale_failed,
        settled_by_lookup = report.settled_by_lookup,
        still_live = report.still_live,
        lookup_undecided = report.lookup_undecided,
        expired = report.expired,
        outbox_resent = report.outbox_resent,
        nudged = report.nudged,
        send_failures = report.send_failures,
        campaigns_completed = report.campaigns_completed,
        events_waiting = report.events_waiting,
        "reclaimer pass"
    );
    Ok(report)
}

/// What the provider's answer about a stale call makes of it.
enum StaleVerdict {
    Settle(Box<ProviderReport>),
    Live,
    Redial,
    GiveUp,
    Wait,
}

/// Step 1: asks the provider about each stale call, then settles, leaves, redials or gives
/// up on it accordingly.
async fn reclaim_stale(
    state: &ReclaimerState,
    policy: &RetryPolicy,
    report: &mut ReclaimReport,
) -> anyhow::Result<()> {
    let config = &state.config;
    let stale_after = Duration::from_secs(config.stale_inprog_seconds);
    let stale = sweep::stale_calls(&state.pool, stale_after, sweep::BATCH)
        .await
        .context("reading stale IN_PROGRESS calls")?;
    if stale.is_empty() {
        return Ok(());
    }
    let give_up_after =
        chrono::Duration::seconds((config.stale_inprog_seconds * u64::from(GIVE_UP_FACTOR)) as i64);
    let taken: Vec<Uuid> = stale.iter().map(|call| call.call_id).collect();
    let verdicts: Vec<(Uuid, StaleVerdict)> = futures::stream::iter(stale)
        .map(|call| async move {
            let verdict = verdict_on(state, &call, give_up_after).await;
            (call.call_id, verdict)
        })
        .buffer_unordered(LOOKUP_CONCURRENCY)
        .collect()
        .await;

    let mut redial = Vec::new();
    let mut give_up = Vec::new();
    for (call_id, verdict) in verdicts {
        match verdict {
            StaleVerdict::Settle(lookup_report) => {
                let (settlement, messages) =
                    settle_from_webhook(&state.pool, &lookup_report, policy)
                        .await
                        .with_context(|| format!("settling call {call_id} from a lookup"))?;
                if matches!(settlement, Settlement::Applied { .. }) {
                    report.settled_by_lookup += 1;
                }
                tracing::info!(%call_id, provider_call_id = %lookup_report.provider_call_id, outcome = %lookup_report.outcome, ?settlement, "stale call settled from the provider's answer");
                report.send_failures += send(&state.queue, &messages).await;
            }
            StaleVerdict::Live => report.still_live += 1,
            StaleVerdict::Redial => redial.push(call_id),
            StaleVerdict::GiveUp => give_up.push(call_id),
            StaleVerdict::Wait => report.lookup_undecided += 1,
        }
    }
    for (scope, what) in [
        (
            ReclaimScope::Redial(&redial),
            "reclaiming stale IN_PROGRESS calls",
        ),
        (
            ReclaimScope::GiveUp(&give_up),
            "failing stale calls the provider could not be asked about",
        ),
    ] {
        let (stale, messages) = sweep::reclaim_stale_calls(&state.pool, stale_after, policy, scope)
            .await
            .context(what)?;
        report.stale_retried += stale.retried;
        report.stale_failed += stale.failed;
        // One message per retried call comes first; the rest nudge waiting calls into the
        // slots the stale calls held.
        report.nudged += (messages.len() as u64).saturating_sub(stale.retried);
        report.send_failures += send(&state.queue, &messages).await;
    }
    sweep::release_stale_calls(&state.pool, &taken)
        .await
        .context("releasing the stale calls this pass took")?;
    Ok(())
}

/// Asks the provider about one stale call.
async fn verdict_on(
    state: &ReclaimerState,
    call: &StaleCall,
    give_up_after: chrono::Duration,
) -> StaleVerdict {
    let provider = &*state.provider;
    let Some(key) = call.idempotency_key else {
        // No attempt row (cannot happen for a claimed call): nothing to ask about.
        return StaleVerdict::Redial;
    };
    let query = StatusQuery {
        provider_call_id: call.provider_call_id.clone(),
        idempotency_key: key,
        to: call.phone.clone(),
        script_id: call.script_id.clone(),
        since: call.key_since.unwrap_or(call.started_at),
        known_provider_call_ids: call.known_provider_call_ids.clone(),
    };
    let lookup = provider.status(&query).await;
    tracing::debug!(call_id = %call.call_id, attempt = call.attempt_no, ?lookup, "asked the provider about a stale call");
    match lookup {
        CallLookup::Ended(end) => StaleVerdict::Settle(Box::new(ProviderReport::from_end(
            format!("lookup:{}:{}", end.provider_call_id, end.outcome),
            provider.kind().report_source(),
            Some(key),
            end,
        ))),
        CallLookup::Live { .. } => StaleVerdict::Live,
        CallLookup::NotFound => StaleVerdict::Redial,
        CallLookup::Undecided { .. } | CallLookup::Unsupported
            if provider.deduplicates_by_key() =>
        {
            StaleVerdict::Redial
        }
        undecided => {
            let reason = match undecided {
                CallLookup::Undecided { reason } => reason,
                _ => format!("{} offers no lookup", provider.kind()),
            };
            if chrono::Utc::now() - call.started_at > give_up_after {
                tracing::warn!(call_id = %call.call_id, reason, "the provider could not be asked about a stale call for too long: FAILED without a redial");
                StaleVerdict::GiveUp
            } else {
                tracing::warn!(call_id = %call.call_id, reason, "the provider could not be asked about a stale call; asking again next pass");
                StaleVerdict::Wait
            }
        }
    }
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
