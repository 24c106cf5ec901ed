//! The worker Lambda: turns messages of the SQS calls queue into provider dials, holding
//! invariants 1, 2, 3, 6, 7 and 8 of the design.
//!
//! [`handle_batch`] takes the SQS event the event source mapping delivers. It returns the
//! messages that should come back as batch item failures (`ReportBatchItemFailures`);
//! every other message is acknowledged (deleted). Each message gets its own outcome: one
//! bad message never fails the batch.
//!
//! For a batch (and [`process_message`] for a batch of one):
//! 1. parses each body as a [`DialRequest`]. A body that is not one is *poison*: it is
//!    reported as a failure without touching its visibility, so after the queue's
//!    `maxReceiveCount` receives it lands in the DLQ, the only messages that should.
//! 2. claims the batch's calls in one transaction ([`claim_calls`]): under the global cap,
//!    one call per phone, only when due. An unknown, finished or already in-progress call
//!    is acknowledged: the database is the truth, the message was only a nudge.
//! 3. dials the claimed calls concurrently, outside any transaction, each with its
//!    attempt's `Idempotency-Key` and inside a `tracing` span that carries `call_id` and
//!    `attempt`, so every log line of the dial names them.
//! 4. records the accepted dials in one transaction ([`record_accepted_dials`]) and every
//!    other answer on its own ([`record_dial`]), then sends, after those commits, the
//!    messages of waiting calls nudged into freed slots (invariant 8).
//!
//! Two transactions per batch, not two per call: on the same Postgres that is what lets
//! one worker instance dispatch thousands of calls a second.
//!
//! # Waiting for a slot (invariant 8)
//!
//! A call whose claim finds every slot held is *parked*: it stays PENDING and its message
//! is acknowledged. A slot is only ever freed by a transaction that moves its call on (a
//! webhook, a failed dial, the reclaimer), and that transaction nudges the oldest waiting
//! calls into it ([`ebra_shared::store::slots`]); the reclaimer's refill pass nudges
//! waiting calls into any slot found free, should a nudge be lost. So a waiting call
//! needs no message of its own: a backlog of any size costs no SQS receives while it
//! waits, and a freed slot is refilled by one fresh message instead of competing with
//! thousands of sleeping ones.
//!
//! # Waiting for anything else (invariant 6)
//!
//! A call that cannot be dialed yet for another reason (not due, its phone busy, a retry
//! backing off, the database unreachable) is *deferred*: its message is hidden with
//! `ChangeMessageVisibility` until it can next succeed (at most 12 h at a time; a longer
//! wait simply comes back and defers again) and reported as a batch item failure. The
//! deferred messages of one batch are hidden together, ten per
//! `ChangeMessageVisibilityBatch` request, once every message of the batch is decided.
//!
//! Every receive counts toward the DLQ's `maxReceiveCount`, also those the event source
//! mapping makes while Lambda is throttled, which this handler never sees. So a message is
//! deferred in place only while its `ApproximateReceiveCount` is below half of
//! `MAX_RECEIVE_COUNT` ([`recycle_threshold`]); from there on it is *recycled*: a fresh
//! message for the call is sent with `DelaySeconds` = the wait (at most 15 min) and the old
//! one is acknowledged. The fresh message starts again at receive count 1, so a backlog can
//! wait for any length of time without a message nearing the DLQ. If that send fails, the
//! old message is deferred in place instead (one more receive is still far from the limit);
//! if changing its visibility fails too, it is still reported as a failure and comes back
//! after the queue's visibility timeout.
//!
//! A database error while claiming defers the message 5–15 s the same way: the message
//! comes back and the claim is tried again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use ebra_shared::backoff;
use ebra_shared::clock::Clock;
use ebra_shared::config::ConfigError;
use ebra_shared::domain::{CallStatus, DialRequest};
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::provider::{dial_once, Dial, DialResult, Provider};
use ebra_shared::queue::MAX_DELAY;
use ebra_shared::queue::{CallsQueue, Enqueue};
use ebra_shared::store::claim::{claim_calls_passing_nudges, Claim, ClaimLimits, ClaimedCall};
use ebra_shared::store::dial::{record_accepted_dials, record_dial, DialRecorded, RetryPolicy};
use ebra_shared::store::{Pool, StoreError};
use ebra_shared::Config;
use futures::FutureExt as _;
use tracing::Instrument as _;
use uuid::Uuid;

mod redelivery;

use redelivery::Decided;

pub use redelivery::{receive_count, recycle_threshold};

/// What the worker needs, built once per Lambda instance (outside the handler).
pub struct WorkerState {
    pub pool: Pool,
    pub queue: CallsQueue,
    pub provider: Arc<dyn Provider>,
    pub config: Arc<Config>,
    /// Wakes the notifier after a batch wrote events (`call.dialing`, retries, failures).
    pub events: EventsNudge,
    /// "Now" for the calling rules (the system clock; tests set their own).
    pub clock: Clock,
}

impl WorkerState {
    /// Checks what the worker cannot dial without (where the provider reports), so a
    /// misconfigured instance fails at start rather than on every message.
    pub fn new(
        pool: Pool,
        queue: CallsQueue,
        provider: Arc<dyn Provider>,
        config: Arc<Config>,
    ) -> Result<Self, ConfigError> {
        config.callback_url(provider.kind()).ok_or_else(|| {
            // The same error the configured provider's check gives.
            config
                .require_callback_url()
                .err()
                .unwrap_or_else(|| ConfigError {
                    name: "PUBLIC_BASE_URL",
                    problem: format!("is required with PROVIDER={}", provider.kind()),
                })
        })?;
        let events = EventsNudge::from_queue(queue.client(), config.events.queue_url.as_deref());
        Ok(Self {
            pool,
            queue,
            provider,
            config,
            events,
            clock: Clock::system(),
        })
    }
}

/// What became of one message. [`MessageOutcome::returns_message`] tells which outcomes are
/// reported as batch item failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    /// The provider accepted the dial; the call is IN_PROGRESS until its webhook.
    Dialed,
    /// The message is hidden for `delay` (whole seconds, from the decision) and reported as
    /// a failure: it comes back then.
    Deferred {
        delay: Duration,
        reason: DeferReason,
    },
    /// The wait continues in a fresh message sent with `delay` (at most 15 min); this one
    /// is acknowledged.
    Recycled {
        delay: Duration,
        reason: DeferReason,
    },
    /// The call is FAILED (a permanent refusal, or its attempts are spent).
    Failed { error: String },
    /// Nothing to do for this message: it is deleted.
    Acknowledged(AckReason),
    /// The body is not a dial request: reported as a failure, visibility untouched, so the
    /// queue's redrive policy moves it to the DLQ.
    Poison { error: String },
    /// The provider answered but the answer could not be recorded. The call stays
    /// IN_PROGRESS with its attempt DIALING; the reclaimer retries it with the same
    /// `Idempotency-Key` once it is stale, so a redelivery of this message could add nothing.
    Unrecorded { error: String },
}

impl MessageOutcome {
    /// Whether the message is reported as a batch item failure (it comes back).
    pub fn returns_message(&self) -> bool {
        matches!(
            self,
            MessageOutcome::Deferred { .. } | MessageOutcome::Poison { .. }
        )
    }
}

/// Why a call's message waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeferReason {
    /// Scheduled for later, or backing off after a failed dial.
    NotDue,
    /// Another call to the same phone is in progress (invariant 2).
    PhoneBusy,
    /// This dial failed in a way worth retrying; the retry is due after the backoff.
    RetryScheduled,
    /// The provider's account was at its concurrency limit; the dial did not count.
    ProviderLimited,
    /// The database could not be reached or answered with an error.
    StoreUnavailable,
    /// The worker lacks a setting it needs to dial (no webhook URL).
    Misconfigured,
    /// Outside its calling window, or its number's daily cap reached, for a short while.
    CallingRules,
}

/// Why a message was acknowledged without a dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckReason {
    /// The call is in progress or finished: a duplicate or stale delivery.
    NotPending(CallStatus),
    /// The call passed its expiry and is now EXPIRED.
    Expired,
    /// No such call.
    UnknownCall,
    /// The call moved on while the dial was in flight (the reclaimer took it back).
    Superseded,
    /// The last attempt may have been placed: the webhook or the reclaimer settles it.
    OutcomeUnknown,
    /// The same call's message appeared earlier in the batch; that one answers for it.
    DuplicateInBatch,
    /// Every slot is held: the call waits, PENDING, for the nudge the next freed slot sends
    /// (invariant 8), with the reclaimer's refill pass as the safety net.
    WaitingForSlot,
    /// Its campaign is paused: the call waits, parked, for the campaign's resume.
    CampaignPaused,
    /// Its campaign has `maxConcurrency` calls in progress: the call waits, parked, for
    /// the nudge when one of them ends.
    CampaignFull,
    /// Outside its calling window, or its number's daily cap reached, for longer than SQS
    /// can delay a message: parked until then (the reclaimer's refill brings it).
    WaitingForRules,
}

/// Processes an SQS batch: the calls of all its messages are claimed together (one
/// transaction), dialed concurrently, and the accepted dials recorded together (one
/// transaction); then every deferred message is hidden in as few requests as SQS allows.
/// Returns the messages to redeliver; everything else is acknowledged. Each message's
/// outcome is its own: one bad message never fails the batch.
pub async fn handle_batch(state: &WorkerState, event: SqsEvent) -> SqsBatchResponse {
    let messages: Vec<&SqsMessage> = event.records.iter().collect();
    let outcomes = decide_messages(state, &messages).await;
    let decided: Vec<Decided<'_>> = messages
        .iter()
        .zip(&outcomes)
        .map(|(message, (outcome, decided))| Decided {
            message,
            outcome,
            decided: *decided,
        })
        .collect();
    redelivery::hide_deferred(state, &decided).await;
    let mut response = SqsBatchResponse::default();
    for Decided {
        message, outcome, ..
    } in decided
    {
        if !outcome.returns_message() {
            continue;
        }
        match &message.message_id {
            Some(message_id) => response.add_failure(message_id.clone()),
            // Lambda always sends an id; without one the failure cannot be reported and the
            // message is deleted with the batch. A deferred call is still covered: its row
            // is PENDING and the reclaimer or a nudge sends it again.
            None => tracing::error!(?outcome, "a message without a messageId cannot be returned"),
        }
    }
    response
}

/// Processes one message: parse, claim, dial, record; or defer (hiding the message until
/// its call can next succeed), recycle, acknowledge. [`handle_batch`] with a batch of one.
pub async fn process_message(state: &WorkerState, message: &SqsMessage) -> MessageOutcome {
    let Some((outcome, decided)) = decide_messages(state, &[message]).await.pop() else {
        unreachable!("one outcome per message");
    };
    let entry = Decided {
        message,
        outcome: &outcome,
        decided,
    };
    redelivery::hide_deferred(state, std::slice::from_ref(&entry)).await;
    outcome
}

/// A message that names a call, with the span every log line about that call runs in.
struct Delivery<'a> {
    index: usize,
    message: &'a SqsMessage,
    call_id: Uuid,
    span: tracing::Span,
}

/// Decides what becomes of each message (and does it, but for hiding deferred messages,
/// which the caller does): one outcome per message, in order, with when it was decided.
async fn decide_messages(
    state: &WorkerState,
    messages: &[&SqsMessage],
) -> Vec<(MessageOutcome, Instant)> {
    let mut outcomes: Vec<Option<(MessageOutcome, Instant)>> = vec![None; messages.len()];
    let mut deliveries = Vec::with_capacity(messages.len());
    for (index, message) in messages.iter().enumerate() {
        let message_id = message.message_id.as_deref().unwrap_or("-");
        match parse_dial_request(message) {
            Ok(request) => deliveries.push(Delivery {
                index,
                message,
                call_id: request.call_id,
                span: tracing::info_span!(
                    "call",
                    call_id = %request.call_id,
                    attempt = tracing::field::Empty,
                    message_id,
                    receive_count = receive_count(message),
                ),
            }),
            Err(error) => {
                tracing::error!(message_id, %error, "poison message: not a dial request; left for the DLQ");
                outcomes[index] = Some((MessageOutcome::Poison { error }, Instant::now()));
            }
        }
    }
    // Boxed: the nested futures of claiming, dialing and recording make a type too deep for
    // the compiler to lay out inline.
    for (index, outcome) in process_calls(state, &deliveries).boxed().await {
        outcomes[index] = Some((outcome, Instant::now()));
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(|| unreachable!("every message is decided")))
        .collect()
}

fn parse_dial_request(message: &SqsMessage) -> Result<DialRequest, String> {
    let body = message.body.as_deref().ok_or("the message has no body")?;
    serde_json::from_str(body)
        .map_err(|error| format!("body is not a dial request ({error}): {}", snippet(body)))
}

fn snippet(body: &str) -> String {
    body.chars().take(200).collect()
}

/// Claims every delivery's call in one transaction, dials what was claimed, and defers,
/// parks or acknowledges the rest. Returns (message index, outcome) pairs.
async fn process_calls(
    state: &WorkerState,
    deliveries: &[Delivery<'_>],
) -> Vec<(usize, MessageOutcome)> {
    if deliveries.is_empty() {
        return Vec::new();
    }
    let config = &state.config;
    // Checked before the claim: a call must never hold a slot it cannot dial with.
    let Some(webhook_url) = config.callback_url(state.provider.kind()) else {
        tracing::error!(
            "no webhook URL is configured (WEBHOOK_URL or PUBLIC_BASE_URL); no call can be dialed"
        );
        let delay = || backoff::wait_recheck_delay(config.wait_recheck_seconds);
        return defer_all(state, deliveries, delay, DeferReason::Misconfigured).await;
    };

    let call_ids: Vec<Uuid> = deliveries.iter().map(|d| d.call_id).collect();
    // A failed claim changed nothing (or, if only its commit's answer was lost, left calls
    // IN_PROGRESS that the next try acknowledges and the reclaimer redials with the same
    // key), so it is tried once more at once: a pooled connection the database dropped
    // must not hold up a whole batch for seconds.
    let limits = ClaimLimits::from(&**config);
    let claim = || claim_calls_passing_nudges(&state.pool, &call_ids, &limits, state.clock.now());
    let claimed = match claim().await {
        Ok(claims) => Ok(claims),
        Err(error) => {
            tracing::warn!(error = %error, calls = deliveries.len(), "claim failed; trying once more");
            claim().await
        }
    };
    let (claims, passed_on) = match claimed {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::warn!(error = %error, calls = deliveries.len(), "claim failed; the messages come back shortly");
            return defer_all(
                state,
                deliveries,
                store_error_delay,
                DeferReason::StoreUnavailable,
            )
            .await;
        }
    };

    // The claim wrote call.dialing (and call.expired) events: the notifier is woken while
    // the calls are dialed.
    let wrote_events = claims.iter().any(|claim| {
        matches!(
            claim,
            Claim::Claimed(_) | Claim::Expired | Claim::Suppressed
        )
    });
    let mut claimed = Vec::new();
    let mut waiting = Vec::new();
    for (delivery, claim) in deliveries.iter().zip(claims) {
        match claim {
            Claim::Claimed(call) => claimed.push((delivery, call)),
            other => waiting.push((delivery, other)),
        }
    }
    let not_dialed = futures::future::join_all(waiting.into_iter().map(|(delivery, claim)| {
        async move {
            let outcome = not_claimed(state, delivery, claim).await;
            (delivery.index, outcome)
        }
        .instrument(delivery.span.clone())
    }));
    let dialed = dial_claimed(state, claimed, webhook_url).boxed();
    let nudge = async {
        if wrote_events {
            state.events.after_change(&state.pool).await;
        }
        // Calls nudged in place of those the calling rules held back (their slots would
        // otherwise idle until the reclaimer's refill).
        if !passed_on.is_empty() {
            state.queue.send_best_effort(&passed_on).await;
        }
    };
    let (mut outcomes, dialed, ()) = tokio::join!(not_dialed, dialed, nudge);
    outcomes.extend(dialed);
    outcomes
}

/// Defers every delivery for `reason` (a fault: the database or the configuration), each
/// for its own `delay()` (jittered).
async fn defer_all(
    state: &WorkerState,
    deliveries: &[Delivery<'_>],
    delay: impl Fn() -> Duration,
    reason: DeferReason,
) -> Vec<(usize, MessageOutcome)> {
    futures::future::join_all(deliveries.iter().map(|delivery| {
        let delay = delay();
        let reason = reason.clone();
        async move {
            tracing::warn!(
                ?reason,
                delay_secs = delay.as_secs(),
                "the call's message comes back later"
            );
            let outcome =
                redelivery::defer(state, delivery.message, delivery.call_id, delay, reason).await;
            (delivery.index, outcome)
        }
        .instrument(delivery.span.clone())
    }))
    .await
}

/// What becomes of a delivery whose call was not claimed.
async fn not_claimed(state: &WorkerState, delivery: &Delivery<'_>, claim: Claim) -> MessageOutcome {
    let config = &state.config;
    let (delay, reason) = match claim {
        Claim::Claimed(_) => unreachable!("claimed calls are dialed"),
        Claim::NotDue { until } => {
            // A floor of a second: a clock slightly behind the database's must not spin.
            let wait = (until - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
                .max(Duration::from_secs(1));
            (wait, DeferReason::NotDue)
        }
        Claim::OutsideWindow { until } | Claim::DailyCapReached { until } => {
            let wait = (until - state.clock.now()).to_std().unwrap_or_default();
            if wait > MAX_DELAY {
                // Parked, like a call scheduled for later: no message while it waits (the
                // reclaimer's refill sends one when it is due within SQS's delay).
                tracing::info!(%until, "the calling rules hold the call until then; parked");
                return MessageOutcome::Acknowledged(AckReason::WaitingForRules);
            }
            (wait.max(Duration::from_secs(1)), DeferReason::CallingRules)
        }
        Claim::Suppressed => {
            tracing::info!("call canceled: its number is on the do-not-call list");
            return MessageOutcome::Acknowledged(AckReason::NotPending(CallStatus::Canceled));
        }
        Claim::PhoneBusy => (
            backoff::wait_recheck_delay(config.wait_recheck_seconds),
            DeferReason::PhoneBusy,
        ),
        Claim::NoFreeSlot => {
            tracing::info!("every slot is held; the call waits for a freed slot's nudge");
            return MessageOutcome::Acknowledged(AckReason::WaitingForSlot);
        }
        Claim::CampaignPaused => {
            tracing::info!("the call's campaign is paused; the call waits for its resume");
            return MessageOutcome::Acknowledged(AckReason::CampaignPaused);
        }
        Claim::CampaignFull => {
            tracing::info!(
                "the call's campaign is at its maxConcurrency; the call waits for a nudge"
            );
            return MessageOutcome::Acknowledged(AckReason::CampaignFull);
        }
        Claim::NotPending(status) => {
            tracing::info!(
                status = status.as_str(),
                "call is not pending; message acknowledged"
            );
            return MessageOutcome::Acknowledged(AckReason::NotPending(status));
        }
        Claim::Expired => {
            tracing::info!("call expired before it could be dialed");
            return MessageOutcome::Acknowledged(AckReason::Expired);
        }
        Claim::Unknown => {
            tracing::warn!("no such call; message acknowledged");
            return MessageOutcome::Acknowledged(AckReason::UnknownCall);
        }
        Claim::Duplicate => {
            tracing::info!(
                "the call's message appears twice in this batch; the other answers for it"
            );
            return MessageOutcome::Acknowledged(AckReason::DuplicateInBatch);
        }
    };
    tracing::debug!(?reason, delay_secs = delay.as_secs(), "call waits");
    redelivery::defer(state, delivery.message, delivery.call_id, delay, reason).await
}

/// How long a message waits after a database error: long enough for a blip to pass, short
/// enough that the call is not held up for long (5–15 s, jittered so a batch spreads out).
fn store_error_delay() -> Duration {
    backoff::wait_recheck_delay(10)
}

/// Grace on top of the dial timeout before the worker stops waiting for a provider that
/// does not enforce one itself.
const DIAL_GUARD_MARGIN: Duration = Duration::from_secs(5);

/// Tries to record a dial's result this many times: the provider has answered, and losing
/// the answer leaves the call to the reclaimer.
const RECORD_TRIES: u32 = 3;

/// Dials the claimed calls concurrently, records the accepted dials together and every
/// other answer on its own, then sends the nudges for slots those records freed.
async fn dial_claimed(
    state: &WorkerState,
    claimed: Vec<(&Delivery<'_>, ClaimedCall)>,
    webhook_url: String,
) -> Vec<(usize, MessageOutcome)> {
    if claimed.is_empty() {
        return Vec::new();
    }
    let results = futures::future::join_all(claimed.iter().map(|(delivery, call)| {
        dial_one(state, call, webhook_url.clone()).instrument(delivery.span.clone())
    }))
    .await;

    let policy = RetryPolicy::from(&*state.config);
    let mut accepted = Vec::new();
    let mut others = Vec::new();
    for ((delivery, call), result) in claimed.iter().zip(&results) {
        match result {
            DialResult::Accepted { provider_call_id } => {
                accepted.push((*delivery, call, provider_call_id.as_str()))
            }
            _ => others.push((*delivery, call, result)),
        }
    }

    let accepted_outcomes = async {
        if accepted.is_empty() {
            return Vec::new();
        }
        let dials: Vec<(&ClaimedCall, &str)> =
            accepted.iter().map(|(_, c, id)| (*c, *id)).collect();
        match with_record_retries(|| record_accepted_dials(&state.pool, &dials, &policy)).await {
            Ok((recorded, retried)) => {
                let mut outcomes = Vec::with_capacity(recorded.len());
                for ((delivery, call, _), (recorded, nudges)) in accepted.iter().zip(recorded) {
                    let outcome = conclude(state, delivery, call, recorded, nudges, retried)
                        .instrument(delivery.span.clone())
                        .await;
                    outcomes.push((delivery.index, outcome));
                }
                outcomes
            }
            Err(error) => accepted
                .iter()
                .map(|(delivery, _, _)| {
                    (
                        delivery.index,
                        delivery.span.in_scope(|| unrecorded(&error)),
                    )
                })
                .collect(),
        }
    };
    let other_outcomes =
        futures::future::join_all(others.into_iter().map(|(delivery, call, result)| {
            let policy = &policy;
            async move {
                let outcome =
                    match with_record_retries(|| record_dial(&state.pool, call, result, policy))
                        .await
                    {
                        Ok(((recorded, nudges), retried)) => {
                            conclude(state, delivery, call, recorded, nudges, retried).await
                        }
                        Err(error) => unrecorded(&error),
                    };
                (delivery.index, outcome)
            }
            .instrument(delivery.span.clone())
        }));
    let (mut outcomes, others) = tokio::join!(accepted_outcomes, other_outcomes);
    outcomes.extend(others);
    // Dials that failed wrote events (a retry scheduled, a failure, the provider's limit).
    if results
        .iter()
        .any(|result| !matches!(result, DialResult::Accepted { .. }))
    {
        state.events.after_change(&state.pool).await;
    }
    outcomes
}

/// A dial whose result could not be recorded: its call stays IN_PROGRESS (DIALING) until the
/// reclaimer redials it with the same key.
fn unrecorded(error: &StoreError) -> MessageOutcome {
    tracing::error!(error = %error, "the dial's result could not be recorded; the reclaimer will retry it with the same key");
    MessageOutcome::Unrecorded {
        error: error.to_string(),
    }
}

/// Dials one claimed call, logging what the provider answered.
async fn dial_one(state: &WorkerState, claimed: &ClaimedCall, webhook_url: String) -> DialResult {
    tracing::Span::current().record("attempt", claimed.attempt_no);
    let dial = Dial {
        call_id: claimed.call_id,
        to: claimed.phone.clone(),
        script_id: claimed.script_id.clone(),
        webhook_url,
        metadata: claimed.metadata.clone(),
        idempotency_key: claimed.idempotency_key,
        prior: claimed.prior.clone(),
    };
    tracing::info!(
        slot = claimed.slot_no,
        idempotency_key = %claimed.idempotency_key,
        max_attempts = claimed.max_attempts,
        provider = %state.provider.kind(),
        key_reused = claimed.prior.is_some(),
        "dialing"
    );
    let result = dial_with_guard(state, &dial).await;
    match &result {
        DialResult::Accepted { provider_call_id } => {
            tracing::info!(provider_call_id, "provider accepted the dial")
        }
        DialResult::Retryable {
            error,
            maybe_placed,
            ..
        } => {
            tracing::warn!(error, maybe_placed, "dial failed; retryable")
        }
        DialResult::ConcurrencyLimited { error, .. } => tracing::warn!(
            error,
            cap = state.config.global_concurrency,
            "provider concurrency limit reached: GLOBAL_CONCURRENCY is above what the provider account allows; the call waits and the dial does not count"
        ),
        DialResult::Permanent { error } => tracing::warn!(error, "provider refused the call"),
    }
    result
}

/// What becomes of a dialed call's message once its result is recorded; sends, after that
/// commit, the messages of waiting calls nudged into a slot the record freed (invariant 8).
async fn conclude(
    state: &WorkerState,
    delivery: &Delivery<'_>,
    claimed: &ClaimedCall,
    recorded: DialRecorded,
    nudges: Vec<Enqueue>,
    retried: bool,
) -> MessageOutcome {
    state.queue.send_best_effort(&nudges).await;
    match recorded {
        DialRecorded::Dialed { early_webhooks } => {
            if !early_webhooks.is_empty() {
                tracing::info!(applied = ?early_webhooks, "applied webhooks that arrived before the dial was recorded");
                state.events.after_change(&state.pool).await;
            }
            MessageOutcome::Dialed
        }
        DialRecorded::RetryScheduled { next_run_at, delay } => {
            tracing::info!(%next_run_at, delay_secs = delay.as_secs(), "retry scheduled");
            redelivery::defer(
                state,
                delivery.message,
                claimed.call_id,
                delay,
                DeferReason::RetryScheduled,
            )
            .await
        }
        DialRecorded::ProviderLimited {
            next_run_at,
            delay,
            error,
        } => {
            tracing::info!(%next_run_at, delay_secs = delay.as_secs(), error, "the call waits for room at the provider");
            redelivery::defer(
                state,
                delivery.message,
                claimed.call_id,
                delay,
                DeferReason::ProviderLimited,
            )
            .await
        }
        DialRecorded::OutcomeUnknown { error } => {
            tracing::warn!(error, "last attempt's outcome unknown; the slot stays held until the provider reports or the call goes stale");
            MessageOutcome::Acknowledged(AckReason::OutcomeUnknown)
        }
        DialRecorded::Failed { error } => {
            tracing::warn!(error, "call failed");
            MessageOutcome::Failed { error }
        }
        DialRecorded::Superseded if retried => {
            // A retried record may find its own earlier, committed write: let the message
            // come back so the claim sees what the call's row says now.
            redelivery::defer(
                state,
                delivery.message,
                claimed.call_id,
                store_error_delay(),
                DeferReason::StoreUnavailable,
            )
            .await
        }
        DialRecorded::Superseded => {
            tracing::info!("the call moved on while the dial was in flight");
            MessageOutcome::Acknowledged(AckReason::Superseded)
        }
    }
}

/// Dials, and stops waiting a little after the dial timeout whatever the provider does: an
/// answer that never comes is treated like a timeout (it may have been placed).
async fn dial_with_guard(state: &WorkerState, dial: &Dial) -> DialResult {
    // A redial of a dial of unknown fate may ask the provider before it dials.
    let requests = if dial.prior.is_some() { 3 } else { 1 };
    let limit = state.config.dial_timeout * requests + DIAL_GUARD_MARGIN;
    match tokio::time::timeout(limit, dial_once(state.provider.as_ref(), dial)).await {
        Ok(result) => result,
        Err(_) => DialResult::Retryable {
            error: format!("provider did not answer within {} ms", limit.as_millis()),
            retry_after: None,
            maybe_placed: true,
        },
    }
}

/// Runs a record, retrying a failed write a few times. Returns whether the result came from
/// a retry (an earlier try may have committed before failing to answer).
async fn with_record_retries<T, F, Fut>(mut record: F) -> Result<(T, bool), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = Duration::from_millis(200);
    let mut tries = 1;
    loop {
        match record().await {
            Ok(recorded) => return Ok((recorded, tries > 1)),
            Err(error) if tries < RECORD_TRIES => {
                tracing::warn!(error = %error, tries, "recording the dial failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 4;
                tries += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
