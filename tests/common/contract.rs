//! The provider contract scenarios: what every provider adapter must do, run against its
//! contract fake (`tests/common/fakes`) through Ebra's real handlers — the worker's
//! `process_message`, the webhook router, the reclaimer's `run_pass` — on real Postgres and
//! SQS. Each `tests/provider_<name>.rs` runs every scenario with its provider's
//! [`Contract`].

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsMessage;
use axum::http::StatusCode;
use axum::Router;
use ebra_reclaimer::{run_pass, ReclaimerState};
use ebra_shared::domain::{CallStatus, DialOutcome, DialRequest, Metadata, PhoneNumber, ScriptId};
use ebra_shared::provider::build_provider;
use ebra_shared::store::calls::{create_call, get_call, metrics, Created, NewCall};
use ebra_shared::store::{Call, DialAttempt};
use ebra_shared::Config;
use ebra_webhook::WebhookState;
use ebra_worker::{process_message, AckReason, DeferReason, MessageOutcome, WorkerState};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use uuid::Uuid;

use super::fakes::{Contract, Delivery, DialPlan, ExpectedDial, Fake, Placement};
use super::TestEnv;

/// Where the providers call Ebra back in these tests (what Twilio signs).
pub const PUBLIC_BASE: &str = "https://hooks.ebra.test";

/// Ebra wired to one provider's fake.
pub struct Stage {
    pub env: TestEnv,
    pub fake: Fake,
    pub config: Arc<Config>,
    pub worker: WorkerState,
    pub webhooks: Router,
    pub reclaimer: ReclaimerState,
    phones: std::sync::atomic::AtomicU32,
}

impl Stage {
    pub async fn new(contract: &dyn Contract, overrides: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let fake = contract.start().await;
        let mut settings: Vec<(String, String)> = contract.settings(&fake);
        settings.extend(
            [
                ("PUBLIC_BASE_URL", PUBLIC_BASE),
                ("BASE_RETRY_SECONDS", "0"),
                ("DIAL_TIMEOUT_MS", "400"),
                ("STALE_INPROG_SECONDS", "60"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        settings.extend(
            overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let pairs: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let config = Arc::new(env.config(&pairs));
        assert_eq!(config.provider.kind(), contract.kind());
        let provider = build_provider(&config).expect("the provider");
        let worker = WorkerState::new(
            ebra_shared::db::pool(&env.database_url, 4).expect("worker pool"),
            env.queue.clone(),
            provider.clone(),
            config.clone(),
        )
        .expect("worker state");
        let webhooks = ebra_webhook::router(
            WebhookState::new(env.pool.clone(), env.queue.clone(), config.clone())
                .expect("webhook state"),
        );
        let reclaimer = ReclaimerState::new(
            env.pool.clone(),
            env.queue.clone(),
            provider,
            config.clone(),
        );
        Self {
            env,
            fake,
            config,
            worker,
            webhooks,
            reclaimer,
            phones: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A new phone number for each call of a scenario.
    pub fn phone(&self) -> String {
        let n = self
            .phones
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("+1415555{:04}", 2000 + n)
    }

    /// A PENDING call, due now, with `metadata`.
    pub async fn call(&self, metadata: Value) -> Uuid {
        let new = NewCall {
            phone: PhoneNumber::parse(&self.phone()).expect("test phone"),
            script_id: ScriptId::parse("agent_renewals_v2").expect("script id"),
            metadata: Metadata::parse(metadata).expect("metadata"),
            scheduled_at: None,
            expires_at: None,
            idempotency: None,
            callback_url: None,
            campaign_id: None,
            rules: Default::default(),
            timezone: None,
            window_opens_at: None,
        };
        match create_call(
            &self.env.pool,
            &new,
            self.config.max_attempts,
            self.config.global_concurrency,
        )
        .await
        .expect("create")
        {
            Created::New { call, .. } => call.id,
            other => panic!("expected a new call, got {other:?}"),
        }
    }

    /// One delivery of the call's message to the worker.
    pub async fn dial(&self, call_id: Uuid) -> MessageOutcome {
        let mut message = SqsMessage::default();
        message.message_id = Some(Uuid::new_v4().to_string());
        message.receipt_handle = Some(format!("handmade-{}", Uuid::new_v4()));
        message.body = Some(serde_json::to_string(&DialRequest { call_id }).expect("json"));
        message
            .attributes
            .insert("ApproximateReceiveCount".to_owned(), "1".to_owned());
        process_message(&self.worker, &message).await
    }

    /// Makes a waiting call due now (its backoff over).
    pub async fn make_due(&self, call_id: Uuid) {
        self.env
            .execute(&format!(
                "UPDATE calls SET next_run_at = now() WHERE id = '{call_id}'"
            ))
            .await;
    }

    /// Makes an in-progress call look silent for two minutes: stale (the stages'
    /// `STALE_INPROG_SECONDS` is 60), within the reclaimer's give-up age (4 × 60 s).
    pub async fn make_stale(&self, call_id: Uuid) {
        self.silent_for(call_id, "2 minutes").await;
    }

    /// Makes an in-progress call look silent for `interval` (Postgres syntax).
    pub async fn silent_for(&self, call_id: Uuid, interval: &str) {
        self.env
            .execute(&format!(
                "UPDATE calls SET started_at = now() - interval '{interval}' WHERE id = '{call_id}'"
            ))
            .await;
    }

    pub async fn read(&self, call_id: Uuid) -> (Call, Vec<DialAttempt>) {
        get_call(&self.env.pool, call_id)
            .await
            .expect("get call")
            .expect("the call exists")
    }

    pub async fn limited_dials(&self, call_id: Uuid) -> i64 {
        self.env
            .count(&format!(
                "SELECT limited_dials::bigint FROM calls WHERE id = '{call_id}'"
            ))
            .await
    }

    pub async fn holds_slot(&self, call_id: Uuid) -> bool {
        self.env
            .count(&format!(
                "SELECT count(*) FROM call_slots WHERE call_id = '{call_id}'"
            ))
            .await
            == 1
    }

    /// Posts a webhook to Ebra's webhook function, as the provider would.
    pub async fn post(&self, delivery: &Delivery) -> (StatusCode, Value) {
        let response = self
            .webhooks
            .clone()
            .oneshot(delivery.request(PUBLIC_BASE))
            .await
            .expect("the webhook router answers");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Everything a webhook could change, as one text.
    pub async fn snapshot(&self) -> String {
        let client = self.env.pool.get().await.expect("pool");
        super::rows_as_json(&client, super::SETTLEMENT_ROWS).await
    }

    /// The one call the fake placed for `call_id`'s dials, found by the number.
    pub fn placement_for(&self, to: &str) -> Placement {
        let placements: Vec<Placement> = self
            .fake
            .placements()
            .into_iter()
            .filter(|p| p.to == to)
            .collect();
        assert_eq!(
            placements.len(),
            1,
            "one call placed to {to}: {placements:#?}"
        );
        placements.into_iter().next().expect("one")
    }

    /// A call dialed and placed: IN_PROGRESS at Ebra, live at the fake.
    pub async fn dialed(&self) -> (Uuid, Placement) {
        let call_id = self.call(json!({})).await;
        assert_eq!(self.dial(call_id).await, MessageOutcome::Dialed);
        let (call, _) = self.read(call_id).await;
        (call_id, self.placement_for(&call.to))
    }
}

// ---------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------

/// The dial goes out in the provider's format: path, auth and body, field by field; the
/// provider's call id is recorded on the attempt.
pub async fn dials_in_the_providers_format(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    let metadata = json!({"customer": "42", "plan": "gold", "visits": 3, "vip": true});
    let call_id = stage.call(metadata.clone()).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::InProgress);
    let seen = stage.fake.book().dials.clone();
    assert_eq!(seen.len(), 1, "one dial request");
    contract.check_dial(
        &seen[0],
        &ExpectedDial {
            call_id,
            to: &call.to,
            script_id: &call.script_id,
            metadata: &metadata,
            key: dials[0].idempotency_key,
        },
    );
    let placement = stage.placement_for(&call.to);
    assert_eq!(dials.len(), 1);
    assert_eq!(dials[0].dial_state, "ACCEPTED");
    assert_eq!(
        dials[0].provider_call_id.as_deref(),
        Some(placement.provider_call_id.as_str())
    );
    assert_eq!(placement.attempt_key, Some(dials[0].idempotency_key));
}

/// Every end reason the provider documents, through the real webhook route, settles as its
/// table says (and the provider's own words are kept on the dial).
pub async fn settles_every_documented_end_reason(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[("GLOBAL_CONCURRENCY", "100")]).await;
    let reasons = contract.end_reasons();
    assert!(!reasons.is_empty());
    let mut wrong = Vec::new();
    for (reason, settles) in &reasons {
        let (call_id, placement) = stage.dialed().await;
        let (status, body) = stage
            .post(&contract.end_of_call(&placement, reason, PUBLIC_BASE))
            .await;
        assert_eq!(status, StatusCode::OK, "{reason}: {body}");
        assert_eq!(body["result"], "applied", "{reason}: {body}");
        let (call, dials) = stage.read(call_id).await;
        let dial = dials.last().expect("a dial");
        if call.status != settles.status || dial.outcome != Some(settles.outcome) {
            wrong.push(format!(
                "{reason}: call {} with dial outcome {:?}, expected {} / {:?}",
                call.status, dial.outcome, settles.status, settles.outcome
            ));
        }
        assert!(
            dial.end_reason
                .as_deref()
                .is_some_and(|r| r.contains(reason)),
            "{reason}: the provider's reason is kept, got {:?}",
            dial.end_reason
        );
        assert!(
            !stage.holds_slot(call_id).await,
            "{reason}: the slot is released"
        );
        if settles.outcome == DialOutcome::Limited {
            assert_eq!(
                stage.limited_dials(call_id).await,
                1,
                "{reason}: not counted"
            );
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A webhook that outruns the worker (the provider reports before Ebra records its answer)
/// is not lost: the call ends as reported once the dial is recorded, with one dial.
pub async fn an_early_webhook_is_not_lost(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    let call_id = stage.call(json!({})).await;
    // Claimed, its dial in flight: the provider places it and reports it at once.
    let claimed = stage.env.claim(&stage.config, call_id).await;
    let (call, _) = stage.read(call_id).await;
    let provider_call_id = stage.fake.book().place(
        "early_",
        &call.to,
        Some(claimed.idempotency_key),
        contract.placed_dial(&call.to, claimed.idempotency_key, call_id),
    );
    let placement = stage
        .fake
        .book()
        .placement(&provider_call_id)
        .cloned()
        .expect("placed");
    let completed = contract
        .end_reasons()
        .into_iter()
        .find(|(_, s)| s.status == CallStatus::Completed && s.outcome == DialOutcome::Completed)
        .expect("a completed reason")
        .0;
    let (status, body) = stage
        .post(&contract.end_of_call(&placement, completed, PUBLIC_BASE))
        .await;
    assert!(status.is_success(), "{status} {body}");
    // Then the worker records the provider's answer.
    stage
        .env
        .record_accepted(&stage.config, &claimed, &provider_call_id)
        .await;
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Completed, "{body}");
    assert_eq!(dials.len(), 1);
    assert_eq!(
        dials[0].provider_call_id.as_deref(),
        Some(provider_call_id.as_str())
    );
    assert_eq!(dials[0].outcome, Some(DialOutcome::Completed));
    assert!(!stage.holds_slot(call_id).await);
    assert_eq!(
        stage
            .env
            .count("SELECT count(*) FROM provider_webhooks WHERE applied_at IS NULL")
            .await,
        0,
        "nothing left held"
    );
}

/// The provider retries its webhooks (and some send several end events): a second
/// delivery changes nothing.
pub async fn duplicate_deliveries_change_nothing(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let delivery = contract.end_of_call(&placement, contract.end_reasons()[0].0, PUBLIC_BASE);
    let (status, first) = stage.post(&delivery).await;
    assert_eq!(
        (status, first["result"].as_str()),
        (StatusCode::OK, Some("applied"))
    );
    let settled = stage.snapshot().await;
    let (status, again) = stage.post(&delivery).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["result"], "duplicate");
    // Another report of the same end, e.g. another event kind, or a lookup's: settled once.
    let (status, other) = stage
        .post(&contract.end_of_call(&placement, contract.end_reasons()[1].0, PUBLIC_BASE))
        .await;
    assert_eq!(status, StatusCode::OK, "{other}");
    assert!(
        matches!(
            other["result"].as_str(),
            Some("duplicate" | "already_settled" | "call_final")
        ),
        "{other}"
    );
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(dials.len(), 1);
    assert_eq!(call.status, contract.end_reasons()[0].1.status);
    // The call and its dial are as the first report left them.
    let after = stage.snapshot().await;
    let calls_part = |s: &str| s.split(" | ").take(3).collect::<Vec<_>>().join(" | ");
    assert_eq!(calls_part(&after), calls_part(&settled));
}

/// The provider's "account concurrency limit" answer does not use an attempt: the call
/// waits (slot released), the metric counts it, and it is dialed again later, with its
/// whole attempt budget.
pub async fn a_concurrency_limit_answer_waits_without_using_an_attempt(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[("MAX_ATTEMPTS", "1")]).await;
    stage
        .fake
        .plan([DialPlan::ConcurrencyLimit, DialPlan::ConcurrencyLimit]);
    let call_id = stage.call(json!({})).await;
    for round in 1..=2 {
        let outcome = stage.dial(call_id).await;
        assert!(
            matches!(
                outcome,
                MessageOutcome::Deferred {
                    reason: DeferReason::ProviderLimited,
                    ..
                }
            ),
            "round {round}: {outcome:?}"
        );
        let (call, dials) = stage.read(call_id).await;
        assert_eq!(call.status, CallStatus::Pending);
        assert_eq!(dials.last().map(|d| d.dial_state.as_str()), Some("LIMITED"));
        assert!(!stage.holds_slot(call_id).await);
        assert_eq!(stage.limited_dials(call_id).await, round);
        stage.make_due(call_id).await;
    }
    let metrics = metrics(&stage.env.pool).await.expect("metrics");
    assert_eq!(metrics.provider_limited_dials_last_hour, 2);
    // MAX_ATTEMPTS=1, two dials refused: the next still goes.
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(dials.len(), 3);
    assert_eq!(stage.fake.placements().len(), 1);
}

/// A dial whose answer is lost after the provider placed the call is never placed again:
/// the provider deduplicates the key (Retell), or it is asked first and its call taken.
pub async fn an_unknown_fate_dial_that_was_placed_is_not_placed_again(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
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
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(
        call.status,
        CallStatus::InProgress,
        "it may be ringing: slot kept"
    );
    assert_eq!(dials[0].dial_state, "UNKNOWN");
    stage.make_due(call_id).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    let placement = stage.placement_for(&call.to);
    let (call, dials) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::InProgress);
    assert_eq!(dials.len(), 2);
    assert_eq!(
        dials[1].idempotency_key, dials[0].idempotency_key,
        "the same key"
    );
    assert_eq!(
        dials[1].provider_call_id.as_deref(),
        Some(placement.provider_call_id.as_str())
    );
    if !contract.deduplicates_by_key() {
        assert!(
            !stage.fake.book().lookups.is_empty(),
            "the provider was asked before a redial"
        );
    }
}

/// A dial whose answer is lost before the provider placed anything is placed exactly once.
pub async fn an_unknown_fate_dial_that_was_not_placed_is_placed_once(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    stage
        .fake
        .plan([DialPlan::StallWithoutPlacing(Duration::from_millis(1500))]);
    let call_id = stage.call(json!({})).await;
    let outcome = stage.dial(call_id).await;
    assert!(
        matches!(outcome, MessageOutcome::Deferred { .. }),
        "{outcome:?}"
    );
    assert!(stage.fake.placements().is_empty());
    stage.make_due(call_id).await;
    assert_eq!(stage.dial(call_id).await, MessageOutcome::Dialed);
    let (call, dials) = stage.read(call_id).await;
    let placement = stage.placement_for(&call.to);
    assert_eq!(
        dials.last().and_then(|d| d.provider_call_id.clone()),
        Some(placement.provider_call_id)
    );
}

/// A webhook that never comes (ElevenLabs never retries, Vapi not by default): before the
/// reclaimer gives up on a stale call it asks the provider, and settles it from the answer;
/// a call still live is left alone.
pub async fn a_lost_webhook_is_settled_by_the_reclaimers_lookup(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    let (ended_id, ended) = stage.dialed().await;
    let (live_id, _live) = stage.dialed().await;
    let (reason, settles) = contract
        .end_reasons()
        .into_iter()
        .find(|(_, s)| s.status == CallStatus::Completed && s.outcome == DialOutcome::Completed)
        .expect("a completed reason");
    stage.fake.end(&ended.provider_call_id, reason);
    stage.make_stale(ended_id).await;
    stage.make_stale(live_id).await;
    let report = run_pass(&stage.reclaimer).await.expect("a reclaimer pass");
    assert_eq!(report.settled_by_lookup, 1, "{report:?}");
    assert_eq!(report.still_live, 1, "{report:?}");
    assert_eq!(
        (report.stale_retried, report.stale_failed),
        (0, 0),
        "{report:?}"
    );
    let (call, dials) = stage.read(ended_id).await;
    assert_eq!(call.status, settles.status);
    assert_eq!(dials[0].outcome, Some(settles.outcome));
    assert!(!stage.holds_slot(ended_id).await);
    let (call, _) = stage.read(live_id).await;
    assert_eq!(
        call.status,
        CallStatus::InProgress,
        "a live call is never cut off"
    );
    assert_eq!(stage.fake.placements().len(), 2, "nothing redialed");
}

/// When the provider cannot be asked about a stale call, a provider that deduplicates by
/// key is redialed with the same key; any other is not redialed (a blind redial could ring
/// the person twice): it is held, asked again each pass, and FAILED without a redial once
/// it has been silent for the reclaimer's give-up age.
pub async fn a_stale_call_the_provider_cannot_be_asked_about(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    let (call_id, _) = stage.dialed().await;
    stage.fake.book().lookups_fail = true;
    stage.make_stale(call_id).await;
    let report = run_pass(&stage.reclaimer).await.expect("a reclaimer pass");
    let (call, _) = stage.read(call_id).await;
    if contract.deduplicates_by_key() {
        assert_eq!(report.stale_retried, 1, "{report:?}");
        assert_eq!(call.status, CallStatus::Pending);
        return;
    }
    assert_eq!(report.lookup_undecided, 1, "{report:?}");
    assert_eq!(call.status, CallStatus::InProgress, "held, not redialed");
    // Past the give-up age (4 × STALE_INPROG_SECONDS): FAILED, never redialed.
    stage.silent_for(call_id, "2 hours").await;
    let report = run_pass(&stage.reclaimer).await.expect("a reclaimer pass");
    assert_eq!(
        (report.stale_failed, report.stale_retried),
        (1, 0),
        "{report:?}"
    );
    let (call, _) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert!(
        call.last_error
            .as_deref()
            .is_some_and(|e| e.contains("could not be asked")),
        "{:?}",
        call.last_error
    );
    assert!(!stage.holds_slot(call_id).await);
    assert_eq!(stage.fake.placements().len(), 1, "nothing redialed");
}

/// Unsigned, forged, stale and wrong-key webhooks get 401 and change nothing.
pub async fn forged_webhooks_are_refused_and_change_nothing(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    let (call_id, placement) = stage.dialed().await;
    let before = stage.snapshot().await;
    let forgeries = contract.forgeries(&placement, PUBLIC_BASE);
    assert!(forgeries.len() >= 4, "a handful of forgeries");
    for (name, delivery) in &forgeries {
        let (status, body) = stage.post(delivery).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(body["status"], 401, "{name}: a problem+json body");
    }
    assert_eq!(stage.snapshot().await, before);
    let (call, _) = stage.read(call_id).await;
    assert_eq!(call.status, CallStatus::InProgress);
}

/// Events that are not an end of call are acknowledged and change nothing.
pub async fn progress_events_change_nothing(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    let (_, placement) = stage.dialed().await;
    let before = stage.snapshot().await;
    let (status, body) = stage
        .post(&contract.progress_event(&placement, PUBLIC_BASE))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "ignored");
    assert_eq!(stage.snapshot().await, before);
}

/// A permanent refusal fails the call after one dial; a rate limit or a 5xx is retried.
pub async fn refusals_fail_and_failures_retry(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    stage.fake.plan([DialPlan::Permanent]);
    let refused = stage.call(json!({})).await;
    let outcome = stage.dial(refused).await;
    assert!(
        matches!(outcome, MessageOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert_eq!(stage.read(refused).await.0.status, CallStatus::Failed);

    stage.fake.plan([
        DialPlan::RateLimited,
        DialPlan::ServerError,
        DialPlan::Accept,
    ]);
    let retried = stage.call(json!({})).await;
    for _ in 0..2 {
        let outcome = stage.dial(retried).await;
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
        assert_eq!(stage.read(retried).await.0.status, CallStatus::Pending);
        stage.make_due(retried).await;
    }
    assert_eq!(stage.dial(retried).await, MessageOutcome::Dialed);
    let (call, _) = stage.read(retried).await;
    stage.placement_for(&call.to);
    // A duplicate delivery of a dialed call places nothing.
    assert_eq!(
        stage.dial(retried).await,
        MessageOutcome::Acknowledged(AckReason::NotPending(CallStatus::InProgress))
    );
    stage.placement_for(&call.to);
}

/// What the provider reports beyond the outcome lands on the call as its `result` (summary,
/// transcript, recording link, analysis, the provider's end reason), from the webhook and
/// from the reclaimer's lookup alike, and the call's completion event carries it.
pub async fn the_reports_result_lands_on_the_call(contract: &dyn Contract) {
    let stage = Stage::new(contract, &[]).await;
    let (reason, settles) = contract
        .end_reasons()
        .into_iter()
        .find(|(_, s)| s.status == CallStatus::Completed && s.outcome == DialOutcome::Completed)
        .expect("a completed reason");
    // By webhook.
    let (reported, placement) = stage.dialed().await;
    let (status, body) = stage
        .post(&contract.end_of_call(&placement, reason, PUBLIC_BASE))
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    let (call, _) = stage.read(reported).await;
    assert_eq!(call.status, settles.status);
    check_result(&call, &contract.expected_result(&placement), reason);
    let event: Value = stage
        .env
        .pool
        .get()
        .await
        .expect("pool")
        .query_one(
            "SELECT data FROM call_events WHERE call_id = $1 AND type = 'call.completed'",
            &[&reported],
        )
        .await
        .expect("the call.completed event")
        .get(0);
    assert_eq!(
        event["result"],
        serde_json::to_value(&call.result).expect("json"),
        "the event carries the result"
    );
    // By the reclaimer's lookup, when the webhook never came.
    let (looked_up, placement) = stage.dialed().await;
    stage.fake.end(&placement.provider_call_id, reason);
    stage.make_stale(looked_up).await;
    let report = run_pass(&stage.reclaimer).await.expect("a reclaimer pass");
    assert_eq!(report.settled_by_lookup, 1, "{report:?}");
    let (call, _) = stage.read(looked_up).await;
    check_result(&call, &contract.expected_result(&placement), reason);
}

/// The call's result holds every expected field (the analysis as a superset) and the
/// provider's end reason.
#[track_caller]
fn check_result(call: &Call, expected: &Value, reason: &str) {
    let result = serde_json::to_value(&call.result).expect("json");
    assert!(
        result["endReason"]
            .as_str()
            .is_some_and(|r| r.contains(reason)),
        "the end reason {reason:?} is in the result: {result}"
    );
    for (field, value) in expected.as_object().into_iter().flatten() {
        if field == "analysis" {
            for (key, part) in value.as_object().into_iter().flatten() {
                assert_eq!(&result["analysis"][key], part, "analysis.{key}: {result}");
            }
        } else {
            assert_eq!(&result[field], value, "{field}: {result}");
        }
    }
}
