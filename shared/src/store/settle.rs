//! Applying provider outcomes (invariant 5): idempotent, never backwards, never to a newer
//! attempt, and never lost when the webhook outruns the worker.
//!
//! Every verified webhook is stored under its `webhook-id` first (a duplicate stops there).
//! It is matched to a dial by the provider's call id, under an advisory lock on that id that
//! [`super::dial`] also takes when it records the id: so either the webhook finds the
//! attempt, or the worker finds the held webhook and applies it.

use std::sync::LazyLock;

use uuid::Uuid;

use super::dial::{
    delay_into_window, fail_call, wait_for_provider_room, FailureReport, RetryPolicy,
};
use super::events::{expect_written, insert_events_sql, record_event};
use super::slots::release_slot_nudge_and_mark_applied;
use super::{execute, query, query_opt, seconds, Pool, StoreResult, Transaction};
use crate::backoff;
use crate::call_result::CallResult;
use crate::domain::{CallOutcome, CallStatus};
use crate::events::EventType;
pub use crate::provider::ProviderReport;
use crate::provider::ReportedOutcome;
use crate::queue::{Enqueue, MAX_DELAY};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The call moved to `status` (PENDING means a redial is scheduled).
    Applied { call_id: Uuid, status: CallStatus },
    /// This `webhook-id` was seen before.
    DuplicateDelivery,
    /// The dial already had an outcome (a repeated or out-of-order report).
    AlreadySettled { call_id: Uuid },
    /// The call is terminal already.
    CallFinal { call_id: Uuid },
    /// The report is for an older attempt than the call's current one.
    Superseded { call_id: Uuid },
    /// No dial has this provider call id yet: held until the worker records it.
    Held,
}

/// A webhook's disposition once applied.
const APPLIED: &str = "APPLIED";

impl Settlement {
    fn disposition(&self) -> &'static str {
        match self {
            Settlement::Applied { .. } => APPLIED,
            Settlement::DuplicateDelivery => "DUPLICATE",
            Settlement::AlreadySettled { .. } => "ALREADY_SETTLED",
            Settlement::CallFinal { .. } => "CALL_FINAL",
            Settlement::Superseded { .. } => "SUPERSEDED",
            Settlement::Held => "HELD",
        }
    }
}

/// SQL: takes the advisory lock of the provider call id `id` (an SQL expression), which
/// serialises everything done about one provider call (its webhooks, recording its dial).
pub(crate) fn provider_call_lock_sql(id: &str) -> String {
    format!("pg_advisory_xact_lock(hashtextextended('provider-call:' || {id}, 0))")
}

/// Takes the advisory locks of several provider call ids, in the order given (sorted, by
/// the caller, so that two batches cannot deadlock).
pub(crate) async fn lock_provider_calls(
    tx: &Transaction<'_>,
    provider_call_ids: &[&str],
) -> StoreResult<()> {
    static LOCK_PROVIDER_CALLS: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM unnest($1::text[]) WITH ORDINALITY AS locks(id, n) ORDER BY n",
            provider_call_lock_sql("id")
        )
    });
    execute(tx, &LOCK_PROVIDER_CALLS, &[&provider_call_ids]).await?;
    Ok(())
}

/// Stores and applies one webhook. Returns what it did and messages to send after commit
/// (a scheduled redial, calls nudged into a freed slot).
pub async fn settle_from_webhook(
    pool: &Pool,
    report: &ProviderReport,
    policy: &RetryPolicy,
) -> StoreResult<(Settlement, Vec<Enqueue>)> {
    let mut client = pool.get().await?;
    let tx = Transaction::begin(&mut client);
    // Stored, then (in the same statement, only when stored) the provider call's lock: the
    // attempt is looked for by the next statement, whose snapshot is taken after the lock.
    static STORE_AND_LOCK: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH stored AS ( \
                 INSERT INTO provider_webhooks (webhook_id, provider_call_id, status, duration_sec, \
                        completed_at, provider, attempt_key, end_reason, result) \
                 VALUES ($1::text, $2, $3::text, $4::int4, $5, $6::text, $7, $8::text, $9::jsonb) \
                 ON CONFLICT (webhook_id) DO NOTHING \
                 RETURNING provider_call_id) \
             SELECT {} FROM stored",
            provider_call_lock_sql("provider_call_id")
        )
    });
    let stored = query_opt(
        &tx,
        &STORE_AND_LOCK,
        &[
            &report.webhook_id,
            &report.provider_call_id,
            &report.outcome.as_str(),
            &report.duration_sec,
            &report.completed_at,
            &report.source,
            &report.attempt_key,
            &report.end_reason,
            &stored_result(report),
        ],
    )
    .await?;
    if stored.is_none() {
        tx.commit().await?;
        return Ok((Settlement::DuplicateDelivery, Vec::new()));
    }
    let result = match find_attempt_recording_outcome(&tx, report).await? {
        Some(found) => {
            apply_report(
                &tx,
                &found.attempt,
                Some(found.call),
                Some(found.first_report),
                report,
                policy,
                Then::Commit,
            )
            .await?
        }
        None => {
            let by_key = match report.attempt_key {
                Some(key) => find_attempt_by_key(&tx, key, &report.provider_call_id).await?,
                None => None,
            };
            match by_key {
                None => (Settlement::Held, Vec::new()),
                Some(attempt) => {
                    apply_report(&tx, &attempt, None, None, report, policy, Then::Commit).await?
                }
            }
        }
    };
    tx.commit().await?;
    Ok(result)
}

/// Applies the webhooks held for `provider_call_id`, oldest first (called when the worker
/// records that id, under the same lock).
pub(crate) async fn apply_held_reports(
    tx: &Transaction<'_>,
    provider_call_id: &str,
    policy: &RetryPolicy,
) -> StoreResult<(Vec<Settlement>, Vec<Enqueue>)> {
    let rows = query(
        tx,
        "SELECT webhook_id, status, duration_sec, completed_at, provider, attempt_key, end_reason, result \
           FROM provider_webhooks \
          WHERE provider_call_id = $1 AND applied_at IS NULL ORDER BY received_at",
        &[&provider_call_id],
    )
    .await?;
    if rows.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let Some((attempt, call)) = find_attempt_locking_call(tx, provider_call_id).await? else {
        return Ok((Vec::new(), Vec::new()));
    };
    // The call as just read serves the first report; each later one reads it again (the
    // report before it may have changed it).
    let mut call = Some(call);
    let mut settlements = Vec::new();
    let mut messages = Vec::new();
    for row in rows {
        let status: String = row.try_get("status")?;
        let source: String = row.try_get("provider")?;
        let report = ProviderReport {
            webhook_id: row.try_get("webhook_id")?,
            source: crate::provider::ProviderKind::ALL
                .into_iter()
                .map(|kind| kind.report_source())
                .find(|known| *known == source)
                .ok_or_else(|| {
                    super::StoreError::Corrupt(format!("webhook provider {source:?}"))
                })?,
            provider_call_id: provider_call_id.to_owned(),
            attempt_key: row.try_get("attempt_key")?,
            outcome: ReportedOutcome::parse_stored(&status)
                .ok_or_else(|| super::StoreError::Corrupt(format!("webhook status {status:?}")))?,
            end_reason: row.try_get("end_reason")?,
            duration_sec: row.try_get("duration_sec")?,
            completed_at: row.try_get("completed_at")?,
            result: row
                .try_get::<_, Option<serde_json::Value>>("result")?
                .as_ref()
                .and_then(CallResult::from_stored),
        };
        let (settlement, mut more) = apply_report(
            tx,
            &attempt,
            call.take(),
            None,
            &report,
            policy,
            Then::MoreStatements,
        )
        .await?;
        settlements.push(settlement);
        messages.append(&mut more);
    }
    Ok((settlements, messages))
}

/// SQL: [`find_attempt_locking_call`]'s statement, the provider call id as `$1`.
macro_rules! attempt_locking_call {
    () => {
        "SELECT a.id, a.call_id, a.attempt_no, c.status, c.attempts, c.limited_dials, c.max_attempts \
           FROM (SELECT id, call_id, attempt_no FROM call_attempts \
                  WHERE provider_call_id = $1 \
                  ORDER BY attempt_no DESC LIMIT 1) AS a \
           JOIN calls c ON c.id = a.call_id \
          FOR UPDATE OF c"
    };
}

/// SQL: records a report's outcome on a dial, after `UPDATE call_attempts <alias>`: `$2`
/// the outcome, `$3` the duration, `$4` when it ended, `$5` the end reason.
macro_rules! set_outcome {
    () => {
        " SET outcome = $2::text, duration_sec = $3::int4, ended_at = COALESCE($4, now()), \
           end_reason = $5::text "
    };
}

struct AttemptRef {
    id: Uuid,
    call_id: Uuid,
    attempt_no: i32,
    /// Found by the attempt key, with no provider call id recorded yet: this one.
    learns_provider_call_id: Option<String>,
}

impl AttemptRef {
    /// The attempt of an [`attempt_locking_call`] row (found by its provider call id).
    fn found(row: &tokio_postgres::Row) -> StoreResult<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            call_id: row.try_get("call_id")?,
            attempt_no: row.try_get("attempt_no")?,
            learns_provider_call_id: None,
        })
    }
}

/// The latest attempt recorded with `provider_call_id`, and its call, locked (`FOR
/// UPDATE`), in one statement.
///
/// The attempt is picked in a subquery with its `LIMIT 1`, so that the planner knows one
/// row comes out of it and reaches the call by its primary key whatever it guesses of the
/// tables. Written as a plain join, the generic plan a connection cached while the tables
/// were new hashed the attempt and read every row of `calls` on each webhook: 0.445 ms a
/// statement in `pg_stat_statements` over one `ebra bench --only e2e` (0.053 in the same
/// run's other database, whose plan happened to be right), and 0.060–0.071 ms in this form.
async fn find_attempt_locking_call(
    tx: &Transaction<'_>,
    provider_call_id: &str,
) -> StoreResult<Option<(AttemptRef, CallState)>> {
    let row = query_opt(tx, attempt_locking_call!(), &[&provider_call_id]).await?;
    row.map(|row| Ok((AttemptRef::found(&row)?, CallState::from_row(&row)?)))
        .transpose()
}

/// [`find_attempt_locking_call`]'s attempt and call, and the report's outcome recorded on
/// that attempt unless it has one (`first_report`), in one statement: a webhook's
/// transaction makes one round trip less. The call's row is locked (the `MATERIALIZED`
/// CTE whose id the update reads runs first) before the attempt's is written, the order of
/// the two statements this replaces. The update reads that id as a scalar, so it probes
/// the attempts' primary key whatever Postgres guesses of the tables (written as a join,
/// the generic plan made while `call_attempts` was empty was a scan of the whole table,
/// seen with `EXPLAIN`). The attempt is the latest with this provider call id as of the statement's
/// snapshot; a newer one would need this provider call's advisory lock, which the
/// transaction holds.
async fn find_attempt_recording_outcome(
    tx: &Transaction<'_>,
    report: &ProviderReport,
) -> StoreResult<Option<FoundAttempt>> {
    let row = query_opt(
        tx,
        concat!(
            "WITH found AS MATERIALIZED (",
            attempt_locking_call!(),
            "), recorded AS (UPDATE call_attempts t",
            set_outcome!(),
            "WHERE t.id = (SELECT id FROM found) AND t.outcome IS NULL RETURNING t.id) \
             SELECT found.*, EXISTS (SELECT 1 FROM recorded) AS first_report FROM found"
        ),
        &[
            &report.provider_call_id,
            &report.outcome.as_str(),
            &report.duration_sec,
            &report.completed_at,
            &report.end_reason,
        ],
    )
    .await?;
    row.map(|row| {
        Ok(FoundAttempt {
            attempt: AttemptRef::found(&row)?,
            call: CallState::from_row(&row)?,
            first_report: row.try_get("first_report")?,
        })
    })
    .transpose()
}

/// What [`find_attempt_recording_outcome`] found and did.
struct FoundAttempt {
    attempt: AttemptRef,
    call: CallState,
    /// The report's outcome was recorded on the attempt (it had none).
    first_report: bool,
}

/// What settling reads of the call, locked.
struct CallState {
    status: CallStatus,
    attempts: i32,
    limited_dials: i32,
    max_attempts: i32,
}

impl CallState {
    fn from_row(row: &tokio_postgres::Row) -> StoreResult<Self> {
        Ok(Self {
            status: super::parse_status(row.try_get("status")?)?,
            attempts: row.try_get("attempts")?,
            limited_dials: row.try_get("limited_dials")?,
            max_attempts: row.try_get("max_attempts")?,
        })
    }

    /// The call of `attempt`, locked (`FOR UPDATE`).
    async fn lock(tx: &Transaction<'_>, attempt: &AttemptRef) -> StoreResult<Self> {
        let row = query_opt(
            tx,
            "SELECT status, attempts, limited_dials, max_attempts FROM calls WHERE id = $1 FOR UPDATE",
            &[&attempt.call_id],
        )
        .await?
        .ok_or_else(|| {
            super::StoreError::Corrupt(format!("attempt {} without its call", attempt.id))
        })?;
        Self::from_row(&row)
    }
}

/// The latest attempt that carried `key` (a report whose dial's answer was lost, found by
/// the key the provider echoed back). An attempt that has not recorded a provider call id
/// learns this one when the report is applied: the call was placed.
async fn find_attempt_by_key(
    tx: &Transaction<'_>,
    key: Uuid,
    provider_call_id: &str,
) -> StoreResult<Option<AttemptRef>> {
    let row = query_opt(
        tx,
        "SELECT id, call_id, attempt_no, provider_call_id IS NULL AS unnamed FROM call_attempts \
          WHERE idempotency_key = $1 ORDER BY attempt_no DESC LIMIT 1",
        &[&key],
    )
    .await?;
    row.map(|row| {
        Ok(AttemptRef {
            id: row.try_get("id")?,
            call_id: row.try_get("call_id")?,
            attempt_no: row.try_get("attempt_no")?,
            learns_provider_call_id: row
                .try_get::<_, bool>("unnamed")?
                .then(|| provider_call_id.to_owned()),
        })
    })
    .transpose()
}

/// What follows [`apply_report`] in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// The commit: it goes with the report's last statement.
    Commit,
    /// Other statements (the next held report, the rest of a dial's record).
    MoreStatements,
}

/// Applies `report` to `attempt`'s call: `call` is that call as read and locked in this
/// transaction just before, or None to read and lock it here; `recorded`, whether the
/// report's outcome was recorded on the attempt by that read (it had none), or None to
/// record it here; `then`, whether the transaction commits right after (its `COMMIT` then
/// goes with the report's last statement).
async fn apply_report(
    tx: &Transaction<'_>,
    attempt: &AttemptRef,
    call: Option<CallState>,
    recorded: Option<bool>,
    report: &ProviderReport,
    policy: &RetryPolicy,
    then: Then,
) -> StoreResult<(Settlement, Vec<Enqueue>)> {
    let call = match call {
        Some(call) => call,
        None => CallState::lock(tx, attempt).await?,
    };
    let CallState {
        status,
        attempts,
        limited_dials,
        max_attempts,
    } = call;
    let call_id = attempt.call_id;

    if let Some(provider_call_id) = &attempt.learns_provider_call_id {
        execute(
            tx,
            "UPDATE call_attempts SET dial_state = 'ACCEPTED', provider_call_id = $2::text, \
                    dialed_at = COALESCE(dialed_at, now()), error = NULL \
              WHERE id = $1 AND provider_call_id IS NULL",
            &[&attempt.id, provider_call_id],
        )
        .await?;
    }

    // Record the outcome on the dial once; a second report for it changes nothing.
    let first_report = match recorded {
        Some(first_report) => first_report,
        None => {
            execute(
                tx,
                concat!(
                    "UPDATE call_attempts",
                    set_outcome!(),
                    "WHERE id = $1 AND outcome IS NULL"
                ),
                &[
                    &attempt.id,
                    &report.outcome.as_str(),
                    &report.duration_sec,
                    &report.completed_at,
                    &report.end_reason,
                ],
            )
            .await?
                > 0
        }
    };
    // Whether the webhook was marked applied already (with the slot's release).
    let mut marked = false;

    let mut messages = Vec::new();
    let settlement = if !first_report || status.is_terminal() {
        // A later report of the call's last dial (Retell's analysis after the end of the
        // call) fills in what the call's result lacks.
        if attempt.attempt_no == attempts {
            fill_in_result(tx, call_id, report).await?;
        }
        if first_report {
            Settlement::CallFinal { call_id }
        } else {
            Settlement::AlreadySettled { call_id }
        }
    } else if attempt.attempt_no != attempts {
        Settlement::Superseded { call_id }
    } else {
        let held_slot = status == CallStatus::InProgress;
        let new_status = match report.outcome {
            ReportedOutcome::ConcurrencyLimited => {
                settle_limited(
                    tx,
                    call_id,
                    limited_dials,
                    held_slot,
                    report,
                    policy,
                    &mut messages,
                )
                .await?
            }
            ReportedOutcome::Outcome(outcome) => {
                let budget_left = attempts - limited_dials < max_attempts;
                let status = settle_outcome(
                    tx,
                    call_id,
                    outcome,
                    report,
                    SettleContext {
                        held_slot,
                        budget_left,
                        counted_attempts: attempts - limited_dials,
                    },
                    policy,
                    &mut messages,
                )
                .await?;
                if held_slot {
                    if then == Then::Commit {
                        tx.commit_with_next_statement();
                    }
                    messages.extend(
                        release_slot_nudge_and_mark_applied(
                            tx,
                            call_id,
                            &report.webhook_id,
                            APPLIED,
                        )
                        .await?,
                    );
                    marked = true;
                }
                status
            }
        };
        Settlement::Applied {
            call_id,
            status: new_status,
        }
    };
    if !marked {
        if then == Then::Commit {
            tx.commit_with_next_statement();
        }
        execute(
            tx,
            "UPDATE provider_webhooks SET applied_at = now(), disposition = $2 WHERE webhook_id = $1",
            &[&report.webhook_id, &settlement.disposition()],
        )
        .await?;
    }
    Ok((settlement, messages))
}

/// The report's result as stored (`jsonb`), when it has one.
fn stored_result(report: &ProviderReport) -> Option<serde_json::Value> {
    report.result.as_ref().map(CallResult::to_json)
}

/// Adds what `report`'s result has and the call's lacks (fields already there are kept),
/// with a `call.result_updated` event when that changed anything.
async fn fill_in_result(
    tx: &Transaction<'_>,
    call_id: Uuid,
    report: &ProviderReport,
) -> StoreResult<()> {
    let Some(result) = stored_result(report) else {
        return Ok(());
    };
    let changed = execute(
        tx,
        "UPDATE calls SET result = $2::jsonb || COALESCE(result, '{}'::jsonb), updated_at = now(), \
                sequence = sequence + 1 \
          WHERE id = $1 AND result IS DISTINCT FROM $2::jsonb || COALESCE(result, '{}'::jsonb)",
        &[&call_id, &result],
    )
    .await?;
    if changed > 0 {
        record_event(tx, call_id, EventType::ResultUpdated).await?;
    }
    Ok(())
}

struct SettleContext {
    /// The call was IN_PROGRESS (it holds a slot), not waiting for a redial already.
    held_slot: bool,
    /// Attempts remain (dials refused for the provider's concurrency limit not counted).
    budget_left: bool,
    counted_attempts: i32,
}

/// Applies an outcome to the call of the report's current attempt. What ends a call and
/// what is redialed (`REDIAL_OUTCOMES`, while attempts remain):
/// - COMPLETED, and VOICEMAIL when not redialed: COMPLETED, with the outcome;
/// - CANCELED when not redialed: CANCELED (stopped at the provider);
/// - a redialed outcome with attempts left: PENDING, redialed after the backoff;
/// - anything else (FAILED, or a redialed outcome with no attempts left): FAILED.
async fn settle_outcome(
    tx: &Transaction<'_>,
    call_id: Uuid,
    outcome: CallOutcome,
    report: &ProviderReport,
    context: SettleContext,
    policy: &RetryPolicy,
    messages: &mut Vec<Enqueue>,
) -> StoreResult<CallStatus> {
    let redial = policy.redial_outcomes.contains(&outcome);
    Ok(match outcome {
        CallOutcome::Completed | CallOutcome::Voicemail if !redial => {
            end_call_as(tx, call_id, CallStatus::Completed, outcome, report).await?;
            CallStatus::Completed
        }
        CallOutcome::Canceled if !redial => {
            end_call_as(tx, call_id, CallStatus::Canceled, outcome, report).await?;
            CallStatus::Canceled
        }
        _ if redial && context.budget_left && context.held_slot => {
            let delay = backoff::retry_delay(
                policy.base_retry_seconds,
                context.counted_attempts as u32,
                None,
            );
            let delay = delay_into_window(tx, call_id, delay).await?;
            let message_delay = delay.min(MAX_DELAY);
            execute(
                tx,
                "UPDATE calls SET status = 'PENDING', outcome = $2::text, duration_sec = $3::int4, \
                        last_error = $4, next_run_at = now() + make_interval(secs => $5), \
                        outbox_due_at = now() + make_interval(secs => $6), updated_at = now(), \
                        result = $7::jsonb, sequence = sequence + 1 \
                  WHERE id = $1",
                &[
                    &call_id,
                    &outcome.as_str(),
                    &report.duration_sec,
                    &format!("provider reported {outcome}"),
                    &seconds(delay),
                    &seconds(message_delay),
                    &stored_result(report),
                ],
            )
            .await?;
            record_event(tx, call_id, EventType::RetryScheduled).await?;
            messages.push(Enqueue {
                call_id,
                delay: message_delay,
            });
            CallStatus::Pending
        }
        // A PENDING call (reclaimed, its redial not placed yet) that the provider now
        // reports as redialable keeps its scheduled redial.
        _ if redial && context.budget_left => CallStatus::Pending,
        _ => {
            let error = if redial {
                format!(
                    "provider reported {outcome} (after {} attempts)",
                    context.counted_attempts
                )
            } else {
                format!("provider reported {outcome}")
            };
            fail_call(
                tx,
                call_id,
                &error,
                Some(FailureReport {
                    outcome: outcome.as_str(),
                    duration_sec: report.duration_sec,
                    ended_at: report.completed_at,
                    result: stored_result(report),
                }),
            )
            .await?;
            CallStatus::Failed
        }
    })
}

/// Ends a call with `status` and the reported outcome and result, with its event.
async fn end_call_as(
    tx: &Transaction<'_>,
    call_id: Uuid,
    status: CallStatus,
    outcome: CallOutcome,
    report: &ProviderReport,
) -> StoreResult<()> {
    let kind = EventType::of_terminal(status).ok_or_else(|| {
        super::StoreError::Corrupt(format!("a call ended as {status}, which is not an end"))
    })?;
    // The change and its event in one statement: the event's snapshot is the updated row
    // (the dial's outcome, recorded by an earlier statement, is seen too).
    static END_WITH_EVENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH ended AS ( \
                 UPDATE calls SET status = $5::text, outcome = $2::text, duration_sec = $3::int4, \
                        ended_at = COALESCE($4, now()), updated_at = now(), outbox_due_at = NULL, \
                        retry_dial_key = NULL, result = $6::jsonb, sequence = sequence + 1 \
                  WHERE id = $1 RETURNING calls.*) \
             {}",
            insert_events_sql("$7", "$8::text", "ended c")
        )
    });
    let written = execute(
        tx,
        &END_WITH_EVENT,
        &[
            &call_id,
            &outcome.as_str(),
            &report.duration_sec,
            &report.completed_at,
            &status.as_str(),
            &stored_result(report),
            &Uuid::now_v7(),
            &kind.as_str(),
        ],
    )
    .await?;
    expect_written(1, written)
}

/// A report that the provider did not run the call for its account's concurrency limit:
/// the attempt does not count, and the call waits and is dialed again (its slot released,
/// with no nudge: the provider is full).
async fn settle_limited(
    tx: &Transaction<'_>,
    call_id: Uuid,
    limited_dials: i32,
    held_slot: bool,
    report: &ProviderReport,
    policy: &RetryPolicy,
    messages: &mut Vec<Enqueue>,
) -> StoreResult<CallStatus> {
    if !held_slot {
        // Reclaimed already: its redial is scheduled.
        return Ok(CallStatus::Pending);
    }
    let error = format!(
        "the provider's concurrency limit was reached{}; GLOBAL_CONCURRENCY is above what the account allows",
        report
            .end_reason
            .as_deref()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default()
    );
    tracing::warn!(
        %call_id,
        provider_call_id = %report.provider_call_id,
        "provider concurrency limit reached: lower GLOBAL_CONCURRENCY to the account's limit"
    );
    let (_, delay) =
        wait_for_provider_room(tx, call_id, limited_dials, None, &error, policy).await?;
    let message_delay = delay.min(MAX_DELAY);
    execute(
        tx,
        "UPDATE calls SET outbox_due_at = now() + make_interval(secs => $2) WHERE id = $1",
        &[&call_id, &seconds(message_delay)],
    )
    .await?;
    messages.push(Enqueue {
        call_id,
        delay: message_delay,
    });
    Ok(CallStatus::Pending)
}
