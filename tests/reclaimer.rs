//! The reclaimer function against real Postgres and SQS: nothing lost (invariant 4: stale
//! calls, lost messages, expiry), nothing reclaimed twice, free slots refilled (invariant 8),
//! and the log line and response the metrics read.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TestEnv;
use ebra_reclaimer::{handle_scheduled_event, run_pass, ReclaimReport, ReclaimerState};
use ebra_shared::domain::{CallOutcome, CallStatus};
use ebra_shared::provider::DialResult;
use ebra_shared::store::calls::{cancel_call, get_call, Changed};
use ebra_shared::store::claim::ClaimedCall;
use ebra_shared::store::dial::{record_dial, RetryPolicy};
use ebra_shared::store::settle::settle_from_webhook;
use ebra_shared::store::{sweep, Call, DialAttempt};
use ebra_shared::Config;
use futures::StreamExt as _;
use serde_json::{json, Value};
use tracing::instrument::WithSubscriber as _;
use uuid::Uuid;

struct Reclaimer {
    env: TestEnv,
    config: Config,
    state: ReclaimerState,
}

impl Reclaimer {
    async fn new(overrides: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let config = env.config(overrides);
        let state = ReclaimerState::new(
            env.pool.clone(),
            env.queue.clone(),
            common::generic_provider(),
            Arc::new(config.clone()),
        );
        Self { env, config, state }
    }

    /// Another reclaimer over the same database and queue, with other settings.
    fn with_settings(&self, overrides: &[(&str, &str)]) -> ReclaimerState {
        ReclaimerState::new(
            self.env.pool.clone(),
            self.env.queue.clone(),
            common::generic_provider(),
            Arc::new(self.env.config(overrides)),
        )
    }

    async fn pass(&self) -> ReclaimReport {
        run_pass(&self.state).await.expect("reclaimer pass")
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy::from(&self.config)
    }

    /// A PENDING call, due now; its message deliberately not sent (the outbox mark is set).
    async fn pending_call(&self, phone: &str) -> Uuid {
        self.create(phone, None).await
    }

    async fn create(&self, phone: &str, expires_at: Option<DateTime<Utc>>) -> Uuid {
        self.env.pending_call(&self.config, phone, expires_at).await
    }

    /// Claimed: IN_PROGRESS, its dial in flight (DIALING).
    async fn claimed_call(&self, phone: &str) -> ClaimedCall {
        let id = self.pending_call(phone).await;
        self.claim(id).await
    }

    async fn claim(&self, id: Uuid) -> ClaimedCall {
        self.env.claim(&self.config, id).await
    }

    /// Claimed and dialed: IN_PROGRESS, its dial ACCEPTED as `provider_call_id`.
    async fn dialed_call(&self, phone: &str, provider_call_id: &str) -> ClaimedCall {
        let claimed = self.claimed_call(phone).await;
        self.accept(&claimed, provider_call_id).await;
        claimed
    }

    async fn accept(&self, claimed: &ClaimedCall, provider_call_id: &str) {
        self.env
            .record_accepted(&self.config, claimed, provider_call_id)
            .await;
    }

    async fn call(&self, id: Uuid) -> (Call, Vec<DialAttempt>) {
        get_call(&self.env.pool, id)
            .await
            .expect("get call")
            .expect("call exists")
    }

    async fn status(&self, id: Uuid) -> CallStatus {
        self.call(id).await.0.status
    }

    /// Moves a call's start into the past, as if its dial had been silent since.
    async fn started_ago(&self, id: Uuid, seconds: i64) {
        self.env.execute(&format!("UPDATE calls SET started_at = now() - make_interval(secs => {seconds}) WHERE id = '{id}'")).await;
    }

    /// The calls' lifecycle columns, as one text (a nudge's `nudged_at` is left out).
    async fn lifecycle(&self, ids: &[Uuid]) -> String {
        let client = self.env.pool.get().await.expect("pool");
        client
            .query_one(
                "SELECT json_agg(json_build_array(id, status, attempts, updated_at, ended_at, last_error, outbox_due_at) ORDER BY id)::text \
                   FROM calls WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .expect("lifecycle")
            .get(0)
    }

    async fn uuid_column(&self, sql: &str) -> Option<Uuid> {
        let client = self.env.pool.get().await.expect("pool");
        client.query_one(sql, &[]).await.expect(sql).get(0)
    }
}

/// A valid North American number per index (libphonenumber accepts 201-220-xxxx).
fn phone(i: usize) -> String {
    format!("+1201220{i:04}")
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reclaimers_at_once_reclaim_each_stale_call_exactly_once() {
    // More stale calls than one pass takes, so both reclaimers have work at the same time.
    let total = sweep::BATCH as usize + 100;
    let r = Reclaimer::new(&[
        ("GLOBAL_CONCURRENCY", "1000"),
        ("STALE_INPROG_SECONDS", "60"),
    ])
    .await;
    let claimed: Vec<ClaimedCall> = futures::stream::iter(0..total)
        .map(|i| {
            let r = &r;
            async move {
                let claimed = r.claimed_call(&phone(i)).await;
                // Half were accepted by the provider, half never heard back from.
                if i % 2 == 0 {
                    r.accept(&claimed, &format!("pc-stale-{i}")).await;
                }
                claimed
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    r.env
        .execute("UPDATE calls SET started_at = now() - interval '1 hour'")
        .await;

    let (a, b) = (
        r.state.clone(),
        r.with_settings(&[
            ("GLOBAL_CONCURRENCY", "1000"),
            ("STALE_INPROG_SECONDS", "60"),
        ]),
    );
    let first = tokio::spawn(async move { run_pass(&a).await });
    let second = tokio::spawn(async move { run_pass(&b).await });
    let (first, second) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );

    assert_eq!(
        first.stale_retried + second.stale_retried,
        total as u64,
        "{first:?} {second:?}"
    );
    assert_eq!((first.stale_failed, second.stale_failed), (0, 0));
    assert!(
        first.stale_retried > 0 && second.stale_retried > 0,
        "one reclaimer did everything: {first:?} {second:?}"
    );
    assert_eq!(r.env.count("SELECT count(*) FROM calls WHERE status = 'PENDING' AND attempts = 1 AND outbox_due_at IS NOT NULL").await, total as i64);
    assert_eq!(
        r.env
            .count("SELECT count(*) FROM call_attempts WHERE ended_at IS NOT NULL")
            .await,
        total as i64
    );
    assert_eq!(
        r.env.count("SELECT count(*) FROM call_attempts").await,
        total as i64
    );
    assert_eq!(
        r.env
            .count("SELECT count(*) FROM call_slots WHERE call_id IS NOT NULL")
            .await,
        0
    );

    // A later pass finds nothing left to reclaim; every call is redialed once, as attempt 2.
    let again = r.pass().await;
    assert_eq!(
        (again.stale_retried, again.stale_failed, again.in_progress),
        (0, 0, 0)
    );
    r.env.execute("UPDATE calls SET next_run_at = now()").await;
    for c in claimed.iter().take(10) {
        assert_eq!(r.claim(c.call_id).await.attempt_no, 2);
    }
}

#[tokio::test]
async fn a_stale_call_with_no_attempts_left_fails_with_no_outcome_reported() {
    let r = Reclaimer::new(&[("MAX_ATTEMPTS", "1"), ("STALE_INPROG_SECONDS", "60")]).await;
    let stale = r.dialed_call(&phone(1), "pc-silent").await;
    let recent = r.dialed_call(&phone(2), "pc-talking").await;
    r.started_ago(stale.call_id, 61).await;
    r.started_ago(recent.call_id, 50).await;

    let report = r.pass().await;
    assert_eq!((report.stale_failed, report.stale_retried), (1, 0));
    let (call, dials) = r.call(stale.call_id).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert!(call.ended_at.is_some());
    assert!(
        call.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no outcome reported")),
        "{:?}",
        call.last_error
    );
    assert!(dials[0].ended_at.is_some());
    assert_eq!(
        r.env
            .count(&format!(
                "SELECT count(*) FROM call_slots WHERE call_id = '{}'",
                stale.call_id
            ))
            .await,
        0
    );

    // Within the limit: untouched, slot still held.
    let (call, _) = r.call(recent.call_id).await;
    assert_eq!(
        (call.status, call.last_error),
        (CallStatus::InProgress, None)
    );
    assert_eq!(report.in_progress, 1);
    assert_eq!(
        r.env
            .count(&format!(
                "SELECT count(*) FROM call_slots WHERE call_id = '{}'",
                recent.call_id
            ))
            .await,
        1
    );
}

#[tokio::test]
async fn a_dial_of_unknown_fate_keeps_its_key_and_an_accepted_one_gets_a_new_key() {
    let r = Reclaimer::new(&[("STALE_INPROG_SECONDS", "60"), ("MAX_ATTEMPTS", "3")]).await;
    // The worker died mid-dial: the provider may or may not have placed it.
    let unknown = r.claimed_call(&phone(1)).await;
    // The provider placed it, then never called back.
    let accepted = r.dialed_call(&phone(2), "pc-placed").await;
    r.started_ago(unknown.call_id, 3600).await;
    r.started_ago(accepted.call_id, 3600).await;

    let report = r.pass().await;
    assert_eq!(report.stale_retried, 2);
    let retry_key = |id: Uuid| format!("SELECT retry_dial_key FROM calls WHERE id = '{id}'");
    assert_eq!(
        r.uuid_column(&retry_key(unknown.call_id)).await,
        Some(unknown.idempotency_key)
    );
    assert_eq!(r.uuid_column(&retry_key(accepted.call_id)).await, None);
    let (call, dials) = r.call(unknown.call_id).await;
    assert_eq!((call.status, call.attempts), (CallStatus::Pending, 1));
    assert!(call.next_run_at > Utc::now(), "retried with backoff");
    assert_eq!(dials[0].dial_state, "UNKNOWN");

    r.env.execute("UPDATE calls SET next_run_at = now()").await;
    let redial = r.claim(unknown.call_id).await;
    assert_eq!(
        (redial.attempt_no, redial.idempotency_key),
        (2, unknown.idempotency_key)
    );
    let redial = r.claim(accepted.call_id).await;
    assert_eq!(redial.attempt_no, 2);
    assert_ne!(redial.idempotency_key, accepted.idempotency_key);
}

/// A dial of unknown fate to a number suppressed since: its redial is refused, and the call
/// keeps its slot (the dial may be ringing). The reclaimer settles it: asked, the provider
/// has no such call (here it cannot be asked), so the call goes back to PENDING and its
/// next claim cancels it as suppressed, never dialed again.
#[tokio::test]
async fn a_dial_of_unknown_fate_to_a_number_suppressed_since_is_reclaimed_then_canceled() {
    use ebra_shared::store::claim::{claim_call, Claim};
    let r = Reclaimer::new(&[("STALE_INPROG_SECONDS", "60"), ("MAX_ATTEMPTS", "3")]).await;
    let unknown = r.claimed_call(&phone(31)).await;
    let timeout = DialResult::Retryable {
        error: "timed out".to_owned(),
        retry_after: None,
        maybe_placed: true,
    };
    record_dial(&r.env.pool, &unknown, &timeout, &r.policy())
        .await
        .expect("recording the timeout");
    r.env
        .execute(&format!(
            "INSERT INTO suppressions (phone, reason) VALUES ('{}', 'asked not to be called'); \
             UPDATE calls SET next_run_at = now() WHERE id = '{}'",
            phone(31),
            unknown.call_id
        ))
        .await;
    let redial = claim_call(&r.env.pool, unknown.call_id, 10, None)
        .await
        .expect("claim");
    assert!(
        matches!(redial, Claim::NotPending(CallStatus::InProgress)),
        "{redial:?}"
    );
    let slot_held = format!(
        "SELECT count(*) FROM call_slots WHERE call_id = '{}'",
        unknown.call_id
    );
    assert_eq!(r.env.count(&slot_held).await, 1, "the dial may be ringing");
    r.started_ago(unknown.call_id, 3600).await;

    assert_eq!(r.pass().await.stale_retried, 1);
    assert_eq!(r.env.count(&slot_held).await, 0);
    r.env.execute("UPDATE calls SET next_run_at = now()").await;
    let claim = claim_call(&r.env.pool, unknown.call_id, 10, None)
        .await
        .expect("claim");
    assert!(matches!(claim, Claim::Suppressed), "{claim:?}");
    let (call, dials) = r.call(unknown.call_id).await;
    assert_eq!(call.status, CallStatus::Canceled);
    assert_eq!(dials.len(), 1, "never dialed again");
}

#[tokio::test]
async fn a_message_lost_after_the_commit_is_swept_and_the_call_is_dialed() {
    // One slot, held: the refill cannot cover the lost message, only the outbox sweep can.
    let r = Reclaimer::new(&[("GLOBAL_CONCURRENCY", "1"), ("OUTBOX_GRACE_SECONDS", "30")]).await;
    let busy = r.dialed_call(&phone(1), "pc-holding").await;
    let lost = r.pending_call(&phone(2)).await;
    // The API committed, then SQS refused the send.
    assert!(r
        .env
        .broken_queue()
        .send(ebra_shared::queue::Enqueue::now(lost))
        .await
        .is_err());

    let within_grace = r.pass().await;
    assert_eq!((within_grace.outbox_resent, within_grace.nudged), (0, 0));
    assert!(r.env.queued_call_ids(Duration::ZERO).await.is_empty());

    // Past the grace, while SQS is still down: the send fails and the mark stays.
    r.env
        .execute(&format!(
            "UPDATE calls SET outbox_due_at = now() - interval '31 seconds' WHERE id = '{lost}'"
        ))
        .await;
    let broken = ReclaimerState::new(
        r.env.pool.clone(),
        r.env.broken_queue(),
        common::generic_provider(),
        Arc::new(r.config.clone()),
    );
    let failed = run_pass(&broken).await.unwrap();
    assert_eq!((failed.outbox_resent, failed.send_failures), (1, 1));
    assert_eq!(
        r.env
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{lost}' AND outbox_due_at IS NOT NULL"
            ))
            .await,
        1
    );

    // The next pass past the grace sends it.
    r.env
        .execute(&format!(
            "UPDATE calls SET outbox_due_at = now() - interval '31 seconds' WHERE id = '{lost}'"
        ))
        .await;
    let swept = r.pass().await;
    assert_eq!(
        (swept.outbox_resent, swept.send_failures, swept.nudged),
        (1, 0, 0)
    );
    assert_eq!(r.env.queued_call_ids(Duration::from_secs(3)).await, [lost]);
    // Re-sent once per grace period, not on every pass.
    assert_eq!(r.pass().await.outbox_resent, 0);

    // The worker takes it: the slot frees (the provider reports the other call), it claims.
    let report = common::generic_report(
        "msg_holding".to_owned(),
        "pc-holding".to_owned(),
        CallOutcome::Completed,
        Some(3),
        None,
    );
    settle_from_webhook(&r.env.pool, &report, &r.policy())
        .await
        .unwrap();
    assert_eq!(r.status(busy.call_id).await, CallStatus::Completed);
    let dialed = r.claim(lost).await;
    assert_eq!((dialed.call_id, dialed.attempt_no), (lost, 1));
    assert_eq!(
        r.env
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{lost}' AND outbox_due_at IS NULL"
            ))
            .await,
        1
    );
}

#[tokio::test]
async fn expiry_moves_due_pending_calls_to_expired_and_never_touches_others() {
    let r = Reclaimer::new(&[]).await;
    let in_an_hour = Some(Utc::now() + chrono::Duration::hours(1));
    let past_expiry = r.create(&phone(1), in_an_hour).await;
    let before_expiry = r.create(&phone(2), in_an_hour).await;
    let too_old = r.pending_call(&phone(3)).await;
    let not_too_old = r.pending_call(&phone(4)).await;
    let in_progress = r.create(&phone(5), in_an_hour).await;
    r.claim(in_progress).await;
    let canceled = r.create(&phone(6), in_an_hour).await;
    assert!(matches!(
        cancel_call(&r.env.pool, canceled).await.unwrap(),
        Changed::Done { .. }
    ));
    let failed = r.create(&phone(7), in_an_hour).await;
    let claimed = r.claim(failed).await;
    record_dial(
        &r.env.pool,
        &claimed,
        &DialResult::Permanent {
            error: "400 bad number".into(),
        },
        &r.policy(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(failed).await, CallStatus::Failed);

    // Rows just either side of the cutoffs; the in-progress and final calls are long past both.
    r.env
        .execute(&format!(
            "UPDATE calls SET expires_at = now() - interval '1 second' WHERE id IN ('{past_expiry}', '{in_progress}', '{canceled}', '{failed}');
             UPDATE calls SET expires_at = now() + interval '1 minute' WHERE id = '{before_expiry}';
             UPDATE calls SET created_at = now() - interval '1 hour 5 seconds' WHERE id IN ('{too_old}', '{in_progress}', '{canceled}', '{failed}');
             UPDATE calls SET created_at = now() - interval '59 minutes' WHERE id = '{not_too_old}';"
        ))
        .await;
    let others = [before_expiry, not_too_old, in_progress, canceled, failed];
    let before = r.lifecycle(&others).await;

    // Without MAX_PENDING_AGE_SECONDS only expiresAt counts.
    let report = r.pass().await;
    assert_eq!(report.expired, 1);
    assert_eq!(r.status(past_expiry).await, CallStatus::Expired);
    assert_eq!(r.status(too_old).await, CallStatus::Pending);

    let with_max_age = r.with_settings(&[("MAX_PENDING_AGE_SECONDS", "3600")]);
    let report = run_pass(&with_max_age).await.unwrap();
    assert_eq!(report.expired, 1);
    let (call, _) = r.call(too_old).await;
    assert_eq!(call.status, CallStatus::Expired);
    assert!(call.ended_at.is_some());
    assert!(
        call.last_error
            .as_deref()
            .is_some_and(|e| e.contains("expired")),
        "{:?}",
        call.last_error
    );
    assert_eq!(
        r.env
            .count(&format!(
                "SELECT count(*) FROM calls WHERE id = '{too_old}' AND outbox_due_at IS NULL"
            ))
            .await,
        1
    );

    assert_eq!(
        r.lifecycle(&others).await,
        before,
        "a call that was not due for expiry changed"
    );
    assert_eq!(run_pass(&with_max_age).await.unwrap().expired, 0);
}

#[tokio::test]
async fn free_slots_are_refilled_from_the_oldest_waiting_calls() {
    let r = Reclaimer::new(&[("GLOBAL_CONCURRENCY", "3")]).await;
    r.dialed_call(&phone(1), "pc-refill").await;
    let mut waiting = Vec::new();
    for i in 2..6 {
        waiting.push(r.pending_call(&phone(i)).await);
    }
    // The two created while slots had room got an outbox mark, their messages never sent:
    // once overdue by a few seconds, they are not taken to be on their way.
    r.env
        .execute("UPDATE calls SET outbox_due_at = now() - interval '10 seconds' WHERE outbox_due_at IS NOT NULL")
        .await;

    let report = r.pass().await;
    assert_eq!((report.nudged, report.in_progress, report.cap), (2, 1, 3));
    assert_eq!(
        r.env.queued_call_ids(Duration::from_secs(3)).await,
        sorted(waiting[..2].to_vec())
    );
    // While their messages are on their way, the free slots are spoken for: the next pass
    // sends nothing more.
    assert_eq!(r.pass().await.nudged, 0);
    assert!(r.env.queued_call_ids(Duration::ZERO).await.is_empty());
    // Past the quiet window with no claim, a nudge may have been lost: the oldest waiting
    // calls are nudged again.
    r.env
        .execute("UPDATE calls SET nudged_at = now() - interval '60 seconds' WHERE nudged_at IS NOT NULL")
        .await;
    assert_eq!(r.pass().await.nudged, 2);
    assert_eq!(
        r.env.queued_call_ids(Duration::from_secs(3)).await,
        sorted(waiting[..2].to_vec())
    );
}

/// A call whose message is on its way (created with room, its outbox mark just set) is not
/// nudged: a second message would only cost SQS requests. Parked calls are.
#[tokio::test]
async fn calls_whose_message_is_on_its_way_are_not_nudged() {
    let r = Reclaimer::new(&[("GLOBAL_CONCURRENCY", "2")]).await;
    let messaged: Vec<Uuid> = vec![
        r.pending_call(&phone(11)).await,
        r.pending_call(&phone(12)).await,
    ];
    let parked = r.pending_call(&phone(13)).await;
    assert_eq!(
        r.env
            .count("SELECT count(*) FROM calls WHERE outbox_due_at IS NOT NULL")
            .await,
        2,
        "the first two were given a message, the third parked"
    );
    let report = r.pass().await;
    assert_eq!(
        report.nudged, 0,
        "both free slots have a message on its way"
    );
    assert!(r.env.queued_call_ids(Duration::ZERO).await.is_empty());
    // Overdue, a message may be lost: the free slots are refilled from the oldest calls.
    r.env
        .execute("UPDATE calls SET outbox_due_at = now() - interval '10 seconds' WHERE outbox_due_at IS NOT NULL")
        .await;
    assert_eq!(r.pass().await.nudged, 2);
    assert_eq!(
        r.env.queued_call_ids(Duration::from_secs(3)).await,
        sorted(messaged)
    );
    let _ = parked;
}

/// A nudge takes parked calls only (no message on its way), so a call whose message was
/// lost must be parked again, or no freed slot would ever take it: the pass clears a mark
/// once its message is overdue, also when no slot is free to nudge the call into (the next
/// settle's nudge takes it then), and leaves the marks of messages still on their way.
#[tokio::test]
async fn a_pass_parks_again_the_calls_whose_message_is_overdue() {
    let r = Reclaimer::new(&[("GLOBAL_CONCURRENCY", "1")]).await;
    r.dialed_call(&phone(21), "pc-holding").await;
    let lost_nudge = r.pending_call(&phone(22)).await;
    let lost_send = r.pending_call(&phone(23)).await;
    let nudged = r.pending_call(&phone(24)).await;
    let sent = r.pending_call(&phone(25)).await;
    r.env
        .execute(&format!(
            "UPDATE calls SET outbox_due_at = NULL, nudged_at = now() - interval '60 seconds' WHERE id = '{lost_nudge}'; \
             UPDATE calls SET outbox_due_at = now() - interval '10 seconds', nudged_at = NULL WHERE id = '{lost_send}'; \
             UPDATE calls SET outbox_due_at = NULL, nudged_at = now() WHERE id = '{nudged}'; \
             UPDATE calls SET outbox_due_at = now(), nudged_at = NULL WHERE id = '{sent}'"
        ))
        .await;

    let report = r.pass().await;
    assert_eq!(report.nudged, 0, "the one slot is held");
    let parked = |id: Uuid| {
        format!("SELECT count(*) FROM calls WHERE id = '{id}' AND status = 'PENDING' AND nudged_at IS NULL AND outbox_due_at IS NULL")
    };
    for (id, expected, why) in [
        (lost_nudge, 1, "nudged 60 s ago, never claimed"),
        (lost_send, 1, "its message 10 s overdue"),
        (nudged, 0, "its nudge is on its way"),
        (sent, 0, "its message is on its way"),
    ] {
        assert_eq!(r.env.count(&parked(id)).await, expected, "{why}");
    }
}

/// Captures what a subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_pass_logs_one_reclaimer_pass_line_and_returns_its_counts() {
    let r = Reclaimer::new(&[
        ("GLOBAL_CONCURRENCY", "4"),
        ("STALE_INPROG_SECONDS", "60"),
        ("MAX_ATTEMPTS", "1"),
    ])
    .await;
    // A receiver, so that the calls' events wait for the notifier (events nobody receives
    // are written already fanned out).
    r.env
        .execute("INSERT INTO webhook_endpoints (id, url, secret) VALUES (gen_random_uuid(), 'https://hooks.example.test/e', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')")
        .await;
    let stale = r.dialed_call(&phone(1), "pc-log-stale").await;
    r.dialed_call(&phone(2), "pc-log-live").await;
    r.pending_call(&phone(3)).await;
    r.started_ago(stale.call_id, 3600).await;
    // Its message (never sent) is overdue: a freed slot nudges it.
    r.env
        .execute("UPDATE calls SET outbox_due_at = now() - interval '10 seconds' WHERE outbox_due_at IS NOT NULL")
        .await;

    // The JSON lines `telemetry::init` writes in Lambda, which the template's metric filters read.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_target(false)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .finish();
    // tracing caches each callsite's interest process-wide, computed by the first thread to
    // reach it; while at most one dispatcher is registered, that thread's own default decides,
    // so a sibling test's pass (no subscriber) could cache "never" for "reclaimer pass". A
    // second registered dispatcher makes every callsite ask all of them.
    let capture = tracing::Dispatch::new(subscriber);
    let _anchor = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    tracing::callsite::rebuild_interest_cache();
    let event = json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2025-03-01T10:00:00Z", "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:123456789012:rule/ebra-reclaimer"], "detail": {}
    });
    let lambda_event = lambda_runtime::LambdaEvent::new(event, lambda_runtime::Context::default());
    let report = handle_scheduled_event(&r.state, lambda_event)
        .with_subscriber(capture)
        .await
        .expect("pass");

    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = output
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .collect();
    let passes: Vec<&Value> = lines
        .iter()
        .filter(|line| line["message"] == "reclaimer pass")
        .collect();
    assert_eq!(passes.len(), 1, "{output}");
    let line = passes[0];
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["in_progress"], json!(1));
    assert_eq!(line["cap"], json!(4));
    assert_eq!(line["stale_failed"], json!(1));
    assert_eq!(
        line["nudged"],
        json!(1),
        "the waiting call, into the freed slot"
    );

    // The Lambda's response: the same counts, camelCase.
    assert_eq!(
        serde_json::to_value(&report).unwrap(),
        json!({"staleRetried": 0, "staleFailed": 1, "settledByLookup": 0, "stillLive": 0,
               "lookupUndecided": 0, "expired": 0, "outboxResent": 0, "nudged": line["nudged"],
               "sendFailures": 0, "campaignsCompleted": 0, "eventsWaiting": true, "inProgress": 1,
               "cap": 4})
    );
    assert_eq!(line["campaigns_completed"], json!(0));
    // The calls' events wait in the outbox (no notifier ran): the pass said so.
    assert_eq!(line["events_waiting"], json!(true));
}
