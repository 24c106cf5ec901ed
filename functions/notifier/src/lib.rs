//! The notifier function: posts the outbox's events to the clients' receivers.
//!
//! Any message on its SQS queue (a nudge sent after a commit that wrote events, or by the
//! reclaimer whenever events wait) runs one [`run_pass`]; `ebra dev` runs passes in a loop.
//! A pass repeats, until nothing is due or its time budget is spent:
//! 1. fan out the events not fanned out yet: one delivery per endpoint enabled and
//!    subscribed to the event's type when it happened, plus the call's (or the campaign's)
//!    `callbackUrl`;
//! 2. take due deliveries (a lease, so concurrent notifiers share the work; a call's events
//!    reach one receiver in sequence order) and log their attempt;
//! 3. post them concurrently, signed the Standard Webhooks way (`webhook-id` = the event's
//!    id, the same on every retry), each with a timeout of a few seconds, no redirects, and
//!    a connection only to addresses that are public ([`ebra_shared::events::destination`]);
//! 4. record the results in one transaction: DELIVERED on a 2xx, otherwise retried with
//!    exponential backoff until the delivery's retry window (24 h) ends, then FAILED and
//!    kept; an endpoint failing for days is disabled, with a `"webhook endpoint disabled"`
//!    log line (the template's alarm reads it).
//!
//! A notifier that dies between sending and recording leaves its lease to run out: the
//! delivery is sent again (at least once), never lost. After a pass, a failed delivery due
//! again within SQS's 15 minutes gets a delayed nudge; later ones are the reclaimer's to
//! nudge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use ebra_shared::events::delivery::{AttemptResult, Deliverer, Outgoing};
use ebra_shared::events::destination::DestinationPolicy;
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::events::retry_delay;
use ebra_shared::store::deliveries::{self, AttemptRecord, DueDelivery, Recorded};
use ebra_shared::store::events::event_body;
use ebra_shared::store::Pool;
use ebra_shared::webhook_signature::WebhookSecret;
use ebra_shared::Config;
use futures::StreamExt as _;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Serialize;

/// Deliveries taken per round.
pub const CLAIM_BATCH: i64 = 50;
/// Deliveries in flight at once.
pub const SEND_CONCURRENCY: usize = 16;

/// What the notifier needs, built once per Lambda instance (or by `ebra dev`).
#[derive(Clone)]
pub struct NotifierState {
    pub pool: Pool,
    pub config: Arc<Config>,
    pub deliverer: Deliverer,
    /// Wakes a later pass for retries due soon (the notifier's own queue).
    pub nudge: EventsNudge,
}

impl NotifierState {
    /// The state for `config`, with the system's resolver.
    pub fn new(pool: Pool, config: Arc<Config>, nudge: EventsNudge) -> anyhow::Result<Self> {
        let policy = DestinationPolicy::system(config.events.allow_private_urls);
        Self::with_policy(pool, config, nudge, policy)
    }

    /// The state with its own destination policy (tests: a resolver of their own).
    pub fn with_policy(
        pool: Pool,
        config: Arc<Config>,
        nudge: EventsNudge,
        policy: DestinationPolicy,
    ) -> anyhow::Result<Self> {
        let deliverer = Deliverer::new(policy, config.events.delivery_timeout)?;
        Ok(Self {
            pool,
            config,
            deliverer,
            nudge,
        })
    }

    /// How long a taken delivery is held: past any attempt's timeout, with room to record.
    pub fn lease(&self) -> Duration {
        (self.config.events.delivery_timeout * 2 + Duration::from_secs(30))
            .max(Duration::from_secs(60))
    }
}

/// What one pass did: the Lambda's response and the fields of its log line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PassReport {
    /// Events fanned out, and the deliveries that made.
    pub events_fanned_out: u64,
    pub deliveries_made: u64,
    /// Attempts made.
    pub sent: u64,
    pub delivered: u64,
    /// Failed attempts to be retried.
    pub retrying: u64,
    /// Failed attempts whose delivery's retry window is over: FAILED, kept.
    pub failed: u64,
    /// Endpoints disabled for failing too long.
    pub endpoints_disabled: u64,
    /// Results of attempts whose lease had run out and whose delivery was taken again.
    pub stale: u64,
    pub rounds: u64,
}

/// Runs rounds of fan-out, send and record until nothing is due or `budget` is spent.
pub async fn run_pass(state: &NotifierState, budget: Duration) -> anyhow::Result<PassReport> {
    let started = Instant::now();
    let mut report = PassReport::default();
    let window = state.config.events.retry_window;
    loop {
        let (events, made) = deliveries::fan_out(&state.pool, deliveries::FAN_OUT_BATCH, window)
            .await
            .map_err(|e| anyhow::anyhow!("fanning events out: {e}"))?;
        report.events_fanned_out += events;
        report.deliveries_made += made;
        let due = deliveries::claim_due(&state.pool, CLAIM_BATCH, state.lease())
            .await
            .map_err(|e| anyhow::anyhow!("taking due deliveries: {e}"))?;
        if due.is_empty() && events == 0 {
            break;
        }
        report.rounds += 1;
        if !due.is_empty() {
            let results = send_all(state, &due).await;
            let recorded = record(state, &due, &results).await?;
            report.sent += due.len() as u64;
            report.delivered += recorded.delivered;
            report.retrying += recorded.retrying;
            report.failed += recorded.failed;
            report.endpoints_disabled += recorded.disabled.len() as u64;
            report.stale += recorded.stale;
        }
        if started.elapsed() >= budget {
            // More may be due: the next pass (nudged now) takes it.
            state.nudge.send().await;
            break;
        }
    }
    if report.retrying > 0 {
        if let Ok(Some(wait)) = deliveries::next_due_in(&state.pool).await {
            if wait <= ebra_shared::queue::MAX_DELAY
                && !matches!(state.nudge, EventsNudge::Local(_))
            {
                state.nudge.send_after(wait).await;
            }
        }
    }
    // One line per pass that did something (an idle pass, as `ebra dev`'s ticks mostly are,
    // logs at debug).
    macro_rules! pass_line {
        ($level:ident) => {
            tracing::$level!(
                events_fanned_out = report.events_fanned_out,
                deliveries_made = report.deliveries_made,
                sent = report.sent,
                delivered = report.delivered,
                retrying = report.retrying,
                failed = report.failed,
                endpoints_disabled = report.endpoints_disabled,
                stale = report.stale,
                rounds = report.rounds,
                "notifier pass"
            )
        };
    }
    if report.rounds > 0 {
        pass_line!(info);
    } else {
        pass_line!(debug);
    }
    Ok(report)
}

/// Posts every taken delivery, [`SEND_CONCURRENCY`] at a time; results in the same order.
pub async fn send_all(state: &NotifierState, due: &[DueDelivery]) -> Vec<AttemptResult> {
    // Collected first: a stream over a mapping closure makes a future whose `Send` the
    // compiler cannot prove for every lifetime (it is spawned by `ebra dev`).
    let sends: Vec<_> = due
        .iter()
        .map(|delivery| Box::pin(send_one(state, delivery)))
        .collect();
    futures::stream::iter(sends)
        .buffered(SEND_CONCURRENCY)
        .collect()
        .await
}

/// Posts one delivery. Never fails: every problem is an attempt with an error.
pub async fn send_one(state: &NotifierState, delivery: &DueDelivery) -> AttemptResult {
    let refused = |error: String| AttemptResult {
        status_code: None,
        latency: Duration::ZERO,
        error: Some(error),
    };
    let Some(url) = delivery.url.as_deref() else {
        return refused("no URL to send to (the call or campaign has no callbackUrl)".into());
    };
    let secret = if delivery.endpoint_id.is_some() {
        match WebhookSecret::parse(&delivery.secrets.join(" ")) {
            Ok(secret) => secret,
            Err(_) => return refused("the endpoint's secret does not parse".into()),
        }
    } else {
        match &state.config.events.callback_secret {
            Some(secret) => secret.clone(),
            None => {
                return refused(
                    "CALLBACK_SECRET is not configured: callbackUrl events cannot be signed".into(),
                )
            }
        }
    };
    let body = match event_body(
        delivery.event_id,
        &delivery.event_type,
        delivery.event_created_at,
        delivery.data.clone(),
    )
    .and_then(|event| {
        event
            .to_bytes()
            .map_err(|e| ebra_shared::store::StoreError::Corrupt(e.to_string()))
    }) {
        Ok(body) => body,
        Err(error) => return refused(format!("the event could not be rendered: {error}")),
    };
    let webhook_id = delivery.event_id.to_string();
    let result = state
        .deliverer
        .send(&Outgoing {
            url,
            webhook_id: &webhook_id,
            body: &body,
            secret: &secret,
        })
        .await;
    tracing::info!(
        call_id = delivery.call_id.map(|id| id.to_string()),
        campaign_id = delivery.campaign_id.map(|id| id.to_string()),
        event_id = %delivery.event_id,
        event_type = %delivery.event_type,
        sequence = delivery.sequence,
        endpoint_id = delivery.endpoint_id.map(|id| id.to_string()),
        attempt = delivery.attempt,
        status_code = result.status_code,
        latency_ms = result.latency.as_millis() as u64,
        error = result.error.as_deref(),
        "event delivery attempt"
    );
    result
}

/// Records a round's results, and says so in the log for each disabled endpoint.
pub async fn record(
    state: &NotifierState,
    due: &[DueDelivery],
    results: &[AttemptResult],
) -> anyhow::Result<Recorded> {
    let events = &state.config.events;
    let attempts: Vec<AttemptRecord> = due
        .iter()
        .zip(results)
        .map(|(delivery, result)| AttemptRecord {
            delivery_id: delivery.id,
            attempt: delivery.attempt,
            endpoint_id: delivery.endpoint_id,
            status_code: result.status_code,
            latency: result.latency,
            error: result.error.clone(),
            retry_after: retry_delay(
                events.retry_base,
                events.retry_max,
                delivery.attempt.max(1) as u32,
            ),
        })
        .collect();
    let recorded = deliveries::record_attempts(&state.pool, &attempts, events.disable_after)
        .await
        .map_err(|e| anyhow::anyhow!("recording delivery attempts: {e}"))?;
    for (endpoint_id, url, failing_since) in &recorded.disabled {
        tracing::warn!(
            %endpoint_id,
            url,
            %failing_since,
            "webhook endpoint disabled"
        );
    }
    Ok(recorded)
}

/// A Lambda invocation: a pass, whatever the messages say (each is only a nudge). A pass
/// that fails returns every message, to come back after the visibility timeout.
pub async fn handle_nudges(
    state: &NotifierState,
    event: LambdaEvent<SqsEvent>,
    budget: Duration,
) -> Result<SqsBatchResponse, Diagnostic> {
    let nudges = event.payload.records.len();
    match run_pass(state, budget).await {
        Ok(report) => {
            tracing::debug!(nudges, ?report, "notifier invocation done");
            Ok(SqsBatchResponse::default())
        }
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "notifier pass failed");
            Err(Diagnostic {
                error_type: "NotifierPassFailed".to_owned(),
                error_message: format!("{error:#}"),
            })
        }
    }
}
