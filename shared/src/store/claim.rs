//! Where the global cap is enforced (invariant 1) and one call per phone is kept
//! (invariant 2): taking calls from PENDING to IN_PROGRESS, a batch at a time.
//!
//! One short transaction:
//! 1. lock the calls' rows, in id order (a duplicate delivery of a call waits here, then
//!    finds it no longer PENDING);
//! 2. take a transaction-scoped advisory lock on each due call's phone number, in number
//!    order, then check that no call to that phone is in progress (no held slot has its
//!    phone, `call_slots_phone`): claims for one phone are serialised, so the check cannot
//!    race (the unique indexes are only the backstop), and two calls of one batch to the
//!    same phone never both go.
//!    Then the calling rules (issue 14), under those locks: a call whose number is on the
//!    do-not-call list is CANCELED (a suppression takes the same lock, so it either
//!    committed before this check or waits for this claim to commit: a number is dialed
//!    before its suppression or never); a call outside its calling window, or whose number
//!    had `MAX_DIALS_PER_NUMBER_PER_DAY` dials in the last 24 h, is not dialed and its
//!    `next_run_at` moves to when it may be;
//! 3. for calls of campaigns, take a transaction-scoped advisory lock on each campaign, in
//!    id order, then read its status and count its calls in progress: a paused campaign's
//!    calls are not claimed (they are parked, and its resume refills), a canceled one's are
//!    canceled, and no more are claimed than its `maxConcurrency` leaves room for (claims
//!    for one campaign are serialised, so the count cannot race);
//! 4. take free rows of `call_slots` among the first `GLOBAL_CONCURRENCY` with
//!    `FOR UPDATE SKIP LOCKED`, one per call that may go, in batch order: no two
//!    transactions can hold one slot, so no more than the cap can be in progress, under any
//!    number of workers;
//! 5. mark the calls that got a slot IN_PROGRESS and record their attempts with their
//!    idempotency keys;
//!    The same statement writes their `call.dialing` events;
//! 6. write the events of the other changes (`call.expired` for calls found past their
//!    expiry, `call.canceled` for suppressed ones), one statement for the batch.
//!
//! The dials happen after the commit, outside any transaction.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::events::{insert_events_with_dials_sql, record_events};
use super::{execute, query, query_opt, Pool, StoreResult, Transaction};
use crate::domain::CallStatus;
use crate::events::EventType;
use crate::provider::PriorDial;
use crate::queue::Enqueue;
use crate::rules::CallRules;

/// A stored window that can never open again (the search horizon passed with none) is
/// checked again this much later.
const RECHECK_UNOPENABLE: chrono::Duration = chrono::Duration::days(1);

/// What a claim enforces, from [`crate::Config`].
#[derive(Debug, Clone, Default)]
pub struct ClaimLimits {
    /// `GLOBAL_CONCURRENCY`.
    pub cap: u32,
    /// `MAX_PENDING_AGE_SECONDS`.
    pub max_pending_age_seconds: Option<u64>,
    /// `MAX_DIALS_PER_NUMBER_PER_DAY`.
    pub max_dials_per_number_per_day: Option<u32>,
}

impl From<&crate::Config> for ClaimLimits {
    fn from(config: &crate::Config) -> Self {
        Self {
            cap: config.global_concurrency,
            max_pending_age_seconds: config.max_pending_age_seconds,
            max_dials_per_number_per_day: config.calling_rules.max_dials_per_number_per_day,
        }
    }
}

/// A call this worker now holds a slot for, ready to dial.
#[derive(Debug, Clone)]
pub struct ClaimedCall {
    pub call_id: Uuid,
    pub attempt_id: Uuid,
    pub attempt_no: i32,
    pub max_attempts: i32,
    /// Sent as `Idempotency-Key`: the key of a previous attempt whose outcome is unknown,
    /// else a new one.
    pub idempotency_key: Uuid,
    pub slot_no: i32,
    pub phone: String,
    pub script_id: String,
    pub metadata: serde_json::Value,
    /// Set when `idempotency_key` was used by an earlier dial that may have been placed:
    /// providers without idempotency are asked before this dial (invariant 3).
    pub prior: Option<PriorDial>,
}

#[derive(Debug, Clone)]
pub enum Claim {
    Claimed(ClaimedCall),
    /// Scheduled or backing off: try again at `until`.
    NotDue {
        until: DateTime<Utc>,
    },
    /// Another call to the same phone is in progress.
    PhoneBusy,
    /// Its campaign is paused: the call waits, parked, until the campaign is resumed.
    CampaignPaused,
    /// Its campaign has `maxConcurrency` calls in progress: the call waits, parked, for
    /// one of them to end (its slot's nudge).
    CampaignFull,
    /// All `GLOBAL_CONCURRENCY` slots are held.
    NoFreeSlot,
    /// The call is not PENDING any more (in progress, or finished): nothing to do.
    NotPending(CallStatus),
    /// It passed its `expiresAt` (or the maximum pending age) and is now EXPIRED.
    Expired,
    /// No such call.
    Unknown,
    /// The same call appeared earlier in this batch: that delivery answers for it.
    Duplicate,
    /// Due, but outside its calling window: not dialed, due again at `until` (the next
    /// opening), to which its `next_run_at` moved.
    OutsideWindow {
        until: DateTime<Utc>,
    },
    /// Its number had `MAX_DIALS_PER_NUMBER_PER_DAY` dials in the last 24 h: not dialed,
    /// due again at `until` (when the oldest of them is 24 h old, or the window's next
    /// opening after that), to which its `next_run_at` moved.
    DailyCapReached {
        until: DateTime<Utc>,
    },
    /// Its number is on the do-not-call list: now CANCELED (`lastError: "suppressed"`).
    Suppressed,
}

/// Claims one call: [`claim_calls`] with a batch of one.
pub async fn claim_call(
    pool: &Pool,
    call_id: Uuid,
    cap: u32,
    max_pending_age_seconds: Option<u64>,
) -> StoreResult<Claim> {
    let mut claims = claim_calls(pool, &[call_id], cap, max_pending_age_seconds).await?;
    claims.pop().ok_or_else(|| {
        super::StoreError::Corrupt(format!("claiming call {call_id} answered nothing"))
    })
}

/// Claims the calls of one SQS batch in one transaction: one answer per id, in order (a
/// repeated id gets [`Claim::Duplicate`]). Free slots go to the calls in batch order.
///
/// Locks, always in the same order so that concurrent batches cannot deadlock: the calls'
/// rows (by id), then their phones' advisory locks (by number), then free slots
/// (`SKIP LOCKED`). Campaign locks come after the phone locks.
pub async fn claim_calls(
    pool: &Pool,
    call_ids: &[Uuid],
    cap: u32,
    max_pending_age_seconds: Option<u64>,
) -> StoreResult<Vec<Claim>> {
    let limits = ClaimLimits {
        cap,
        max_pending_age_seconds,
        max_dials_per_number_per_day: None,
    };
    claim_calls_at(pool, call_ids, &limits, Utc::now()).await
}

/// [`claim_calls`] with every limit (the daily cap per number too), deciding what is due
/// and what is inside its window at `now` (the worker's [`crate::clock::Clock`]).
pub async fn claim_calls_at(
    pool: &Pool,
    call_ids: &[Uuid],
    limits: &ClaimLimits,
    now: DateTime<Utc>,
) -> StoreResult<Vec<Claim>> {
    claim_batch(pool, call_ids, limits, now, false)
        .await
        .map(|(claims, _)| claims)
}

/// [`claim_calls_at`], passing on the nudges the calling rules stopped: a call that was
/// brought to a free slot (nudged, or messaged by the refill) but is held back by its window,
/// its number's daily cap or the do-not-call list would leave that slot idle until the
/// reclaimer's next refill; instead as many other waiting calls are nudged, in this
/// transaction. Returns their messages, to send after it (the worker does).
pub async fn claim_calls_passing_nudges(
    pool: &Pool,
    call_ids: &[Uuid],
    limits: &ClaimLimits,
    now: DateTime<Utc>,
) -> StoreResult<(Vec<Claim>, Vec<Enqueue>)> {
    claim_batch(pool, call_ids, limits, now, true).await
}

async fn claim_batch(
    pool: &Pool,
    call_ids: &[Uuid],
    limits: &ClaimLimits,
    now: DateTime<Utc>,
    pass_nudges_on: bool,
) -> StoreResult<(Vec<Claim>, Vec<Enqueue>)> {
    let cap = limits.cap;
    let max_pending_age_seconds = limits.max_pending_age_seconds;
    let mut client = pool.get().await?;
    let tx = Transaction::begin(&mut client);
    let max_pending_age = max_pending_age_seconds.map(|s| s as f64);
    // A batch of one takes its phone's lock in the same statement, once the call's row is
    // locked (the subquery's `FOR UPDATE` runs first): the order of step 2, one round trip
    // less. The lock is taken whatever the call's state; for a call that will not be
    // dialed it only makes the claim wait for another on that phone, as the claim of a
    // larger batch does.
    let mut phone_locked: Option<String> = None;
    let rows = match call_ids {
        [call_id] => {
            static CLAIM_READ_ONE: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "SELECT r.*, pg_advisory_xact_lock(hashtextextended(r.phone, 0)) AS phone_lock \
                       FROM ({CLAIM_READ} WHERE id = $1 FOR UPDATE) AS r"
                )
            });
            let rows = query(&tx, &CLAIM_READ_ONE, &[call_id, &max_pending_age, &now]).await?;
            if let Some(row) = rows.first() {
                phone_locked = Some(row.try_get("phone")?);
            }
            rows
        }
        _ => {
            static CLAIM_READ_MANY: LazyLock<String> =
                LazyLock::new(|| format!("{CLAIM_READ} WHERE id = ANY($1) ORDER BY id FOR UPDATE"));
            query(&tx, &CLAIM_READ_MANY, &[&call_ids, &max_pending_age, &now]).await?
        }
    };
    let mut found: HashMap<Uuid, &Row> = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(row.try_get("id")?, row);
    }

    let mut claims: Vec<Option<Claim>> = vec![None; call_ids.len()];
    let mut seen = HashSet::with_capacity(call_ids.len());
    let mut expired = Vec::new();
    // Calls that will not be claimed whose delivery marks this receipt settles.
    let mut settle_marks = Vec::new();
    // Due PENDING calls, at most one per phone, in batch order: (index, id, phone).
    let mut candidates: Vec<(usize, Uuid, String)> = Vec::new();
    // Claimed calls whose key an earlier dial used: (index, id, key, attempt).
    let mut reused_keys: Vec<(usize, Uuid, Uuid, i32)> = Vec::new();
    let mut phones = HashSet::new();
    // IN_PROGRESS calls that may need a redial of an unknown dial: (index, id).
    let mut redials: Vec<(usize, Uuid)> = Vec::new();
    // Calls whose next_run_at moves (outside the window, daily cap): (id, until).
    let mut moved: Vec<(Uuid, DateTime<Utc>)> = Vec::new();
    // The events of the changes this transaction makes, written together before the commit.
    let mut events: Vec<(Uuid, EventType)> = Vec::new();
    for (index, &call_id) in call_ids.iter().enumerate() {
        if !seen.insert(call_id) {
            claims[index] = Some(Claim::Duplicate);
            continue;
        }
        let Some(row) = found.get(&call_id) else {
            claims[index] = Some(Claim::Unknown);
            continue;
        };
        let status = super::parse_status(row.try_get("status")?)?;
        if status == CallStatus::InProgress {
            // Decided once the phones are locked (a redial is a dial: the rules apply).
            redials.push((index, call_id));
            continue;
        }
        if status != CallStatus::Pending {
            claims[index] = Some(Claim::NotPending(status));
            continue;
        }
        if row.try_get::<_, bool>("expired")? {
            expired.push(call_id);
            claims[index] = Some(Claim::Expired);
            continue;
        }
        let marked =
            row.try_get::<_, bool>("outbox_marked")? || row.try_get::<_, bool>("nudged")?;
        if !row.try_get::<_, bool>("due")? {
            if marked {
                settle_marks.push(call_id);
            }
            claims[index] = Some(Claim::NotDue {
                until: row.try_get("next_run_at")?,
            });
            continue;
        }
        let phone: String = row.try_get("phone")?;
        if !phones.insert(phone.clone()) {
            // An earlier call of this batch goes to the same phone.
            if marked {
                settle_marks.push(call_id);
            }
            claims[index] = Some(Claim::PhoneBusy);
            continue;
        }
        candidates.push((index, call_id, phone));
    }

    if !expired.is_empty() {
        execute(
            &tx,
            "UPDATE calls SET status = 'EXPIRED', ended_at = now(), updated_at = now(), outbox_due_at = NULL, \
                    last_error = COALESCE(last_error || '; ', '') || 'expired before it could be dialed', \
                    sequence = sequence + 1 \
              WHERE id = ANY($1)",
            &[&expired],
        )
        .await?;
        events.extend(expired.iter().map(|id| (*id, EventType::Expired)));
    }

    // Claims for one phone are serialised by its advisory lock, taken in number order (the
    // redials' phones too, so the order holds for the whole batch).
    let mut sorted_phones: Vec<String> = candidates.iter().map(|(_, _, p)| p.clone()).collect();
    for (_, call_id) in &redials {
        if let Some(row) = found.get(call_id) {
            sorted_phones.push(row.try_get("phone")?);
        }
    }
    sorted_phones.sort_unstable();
    sorted_phones.dedup();
    let mut suppressed_phones: HashSet<String> = HashSet::new();
    if !sorted_phones.is_empty() {
        if sorted_phones != phone_locked.as_slice() {
            execute(
                &tx,
                "SELECT pg_advisory_xact_lock(hashtextextended(phone, 0)) \
                   FROM unnest($1::text[]) WITH ORDINALITY AS locks(phone, n) ORDER BY n",
                &[&sorted_phones],
            )
            .await?;
        }
        // After the locks: a suppression committed before them is seen here, and one not
        // committed yet waits for this transaction (it takes the same lock).
        let suppressions = match sorted_phones.as_slice() {
            [phone] => {
                query(
                    &tx,
                    "SELECT phone FROM suppressions WHERE phone = $1",
                    &[phone],
                )
                .await?
            }
            _ => {
                query(
                    &tx,
                    "SELECT phone FROM suppressions WHERE phone = ANY($1)",
                    &[&sorted_phones],
                )
                .await?
            }
        };
        for row in suppressions {
            suppressed_phones.insert(row.try_get(0)?);
        }
    }

    for (index, call_id) in redials {
        let row = found.get(&call_id).ok_or_else(|| {
            super::StoreError::Corrupt(format!("call {call_id} to redial but not read"))
        })?;
        let phone: String = row.try_get("phone")?;
        let rules = RedialRules {
            suppressed: suppressed_phones.contains(&phone),
            outside_until: outside_rules(row, now)?,
        };
        claims[index] =
            Some(redial_unknown(&tx, call_id, row, rules, &mut events, &mut moved).await?);
    }

    // The calling rules, for the due PENDING calls.
    let mut suppressed = Vec::new();
    let mut allowed = Vec::with_capacity(candidates.len());
    // Calls the rules held back that had been brought to a free slot: their nudges are
    // passed on.
    let mut held_back_marked: i64 = 0;
    let was_marked = |row: &Row| -> StoreResult<bool> {
        Ok(row.try_get::<_, bool>("outbox_marked")? || row.try_get::<_, bool>("nudged")?)
    };
    for (index, call_id, phone) in candidates {
        let row = found.get(&call_id).ok_or_else(|| {
            super::StoreError::Corrupt(format!("call {call_id} is a candidate but not read"))
        })?;
        if suppressed_phones.contains(&phone) {
            suppressed.push(call_id);
            claims[index] = Some(Claim::Suppressed);
            held_back_marked += i64::from(was_marked(row)?);
        } else if let Some(until) = outside_rules(row, now)? {
            moved.push((call_id, until));
            claims[index] = Some(Claim::OutsideWindow { until });
            held_back_marked += i64::from(was_marked(row)?);
        } else {
            allowed.push((index, call_id, phone));
        }
    }
    let mut candidates = allowed;
    if let (Some(cap), false) = (limits.max_dials_per_number_per_day, candidates.is_empty()) {
        let capped = daily_cap_reached(&tx, &candidates, cap, now).await?;
        let mut kept = Vec::with_capacity(candidates.len());
        for (index, call_id, phone) in candidates {
            let Some(aged_out) = capped.get(&call_id) else {
                kept.push((index, call_id, phone));
                continue;
            };
            let row = found.get(&call_id).ok_or_else(|| {
                super::StoreError::Corrupt(format!("call {call_id} is a candidate but not read"))
            })?;
            // Then the window must be open too (the claim checks it again at `until`).
            let until = stored_rules(row)?
                .and_then(|rules| rules.next_allowed(*aged_out))
                .unwrap_or(*aged_out);
            moved.push((call_id, until));
            claims[index] = Some(Claim::DailyCapReached { until });
            held_back_marked += i64::from(was_marked(row)?);
        }
        candidates = kept;
    }
    if !suppressed.is_empty() {
        execute(
            &tx,
            "UPDATE calls SET status = 'CANCELED', ended_at = now(), updated_at = now(), \
                    outbox_due_at = NULL, nudged_at = NULL, retry_dial_key = NULL, \
                    last_error = 'suppressed', sequence = sequence + 1 \
              WHERE id = ANY($1)",
            &[&suppressed],
        )
        .await?;
        events.extend(suppressed.iter().map(|id| (*id, EventType::Canceled)));
        for call_id in &suppressed {
            tracing::info!(%call_id, "call canceled: its number is on the do-not-call list");
        }
    }
    if !moved.is_empty() {
        // Parked until then like any call not due: no message, no slot (the reclaimer's
        // refill or a freed slot's nudge brings it when due).
        let ids: Vec<Uuid> = moved.iter().map(|(id, _)| *id).collect();
        let untils: Vec<DateTime<Utc>> = moved.iter().map(|(_, until)| *until).collect();
        execute(
            &tx,
            "UPDATE calls SET next_run_at = m.until, updated_at = now(), outbox_due_at = NULL, nudged_at = NULL \
               FROM unnest($1::uuid[], $2::timestamptz[]) AS m(id, until) WHERE calls.id = m.id",
            &[&ids, &untils],
        )
        .await?;
    }

    // Campaigns last, so that calls the rules held back take none of a campaign's room.
    if !candidates.is_empty() {
        admit_by_campaign(
            &tx,
            &found,
            &mut candidates,
            &mut claims,
            &mut settle_marks,
            &mut events,
        )
        .await?;
    }

    if !candidates.is_empty() {
        let ids: Vec<Uuid> = candidates.iter().map(|(_, id, _)| *id).collect();
        let attempt_ids: Vec<Uuid> = candidates.iter().map(|_| Uuid::now_v7()).collect();
        let event_ids: Vec<Uuid> = candidates.iter().map(|_| Uuid::now_v7()).collect();
        // One statement, after the phone locks (so its snapshot sees every committed claim
        // for these phones): drop the candidates whose phone is busy; pair the rest, in
        // batch order, with free slots; mark those calls IN_PROGRESS, record their attempts
        // and write their `call.dialing` events. Calls left unpaired had no free slot.
        // A single candidate (how a batch of one arrives) takes scalar parameters, for one
        // generic plan; see [`CLAIM_READ`].
        static TAKE_ONE: LazyLock<String> = LazyLock::new(|| {
            take_slots_sql(
                "(VALUES ($1::uuid, $2::uuid, $4::uuid, 1::bigint)) AS a(id, attempt_id, event_id, n)",
                "(VALUES ($1::uuid)) AS a(id)",
            )
        });
        static TAKE_MANY: LazyLock<String> = LazyLock::new(|| {
            take_slots_sql(
                "unnest($1::uuid[], $2::uuid[], $4::uuid[]) WITH ORDINALITY AS a(id, attempt_id, event_id, n)",
                "unnest($1::uuid[]) AS a(id)",
            )
        });
        let cap = cap as i32;
        let taken = match (ids.as_slice(), attempt_ids.as_slice(), event_ids.as_slice()) {
            ([id], [attempt_id], [event_id]) => {
                query(&tx, &TAKE_ONE, &[id, attempt_id, &cap, event_id]).await?
            }
            _ => query(&tx, &TAKE_MANY, &[&ids, &attempt_ids, &cap, &event_ids]).await?,
        };
        // The statement's four writes must agree (every row carries the same counts).
        if let Some(row) = taken.first() {
            let counts: [i64; 4] = [
                row.try_get("slots_taken")?,
                row.try_get("started")?,
                row.try_get("recorded")?,
                row.try_get("announced")?,
            ];
            if counts.iter().any(|&count| count != counts[0]) {
                return Err(super::StoreError::Corrupt(format!(
                    "a claim took {} slots, started {} calls, recorded {} attempts and wrote {} \
                     call.dialing events",
                    counts[0], counts[1], counts[2], counts[3]
                )));
            }
        }
        let mut outcome: HashMap<Uuid, &Row> = HashMap::with_capacity(taken.len());
        for row in &taken {
            outcome.insert(row.try_get("id")?, row);
        }
        for (index, call_id, phone) in candidates {
            let Some(row) = outcome.get(&call_id) else {
                return Err(super::StoreError::Corrupt(format!(
                    "claiming call {call_id} returned no answer for it"
                )));
            };
            if row.try_get::<_, bool>("phone_busy")? {
                settle_marks.push(call_id);
                claims[index] = Some(Claim::PhoneBusy);
                continue;
            }
            let Some(slot_no) = row.try_get::<_, Option<i32>>("slot_no")? else {
                settle_marks.push(call_id);
                claims[index] = Some(Claim::NoFreeSlot);
                continue;
            };
            let call = found.get(&call_id).ok_or_else(|| {
                super::StoreError::Corrupt(format!("call {call_id} claimed but not read"))
            })?;
            let idempotency_key: Uuid = row.try_get("dial_key")?;
            let attempt_no: i32 = row.try_get("attempt_no")?;
            if row.try_get::<_, bool>("key_reused")? {
                reused_keys.push((index, call_id, idempotency_key, attempt_no));
            }
            claims[index] = Some(Claim::Claimed(ClaimedCall {
                call_id,
                attempt_id: row.try_get("attempt_id")?,
                attempt_no,
                max_attempts: call.try_get("max_attempts")?,
                idempotency_key,
                slot_no,
                phone,
                script_id: call.try_get("script_id")?,
                metadata: call.try_get("metadata")?,
                prior: None,
            }));
        }
    }

    for (index, call_id, key, attempt_no) in reused_keys {
        let prior = prior_dial(&tx, call_id, key, attempt_no).await?;
        if let Some(Claim::Claimed(claimed)) = claims[index].as_mut() {
            claimed.prior = Some(prior);
        }
    }
    let nudging = pass_nudges_on && held_back_marked > 0;
    // The COMMIT goes with whichever of the three writes below runs last (the first two
    // send nothing when they have nothing to write; armed for one that sends nothing, the
    // commit at the end sends it). A batch whose calls were all claimed has none of them:
    // its `call.dialing` events went with the take, and the COMMIT goes alone (it cannot
    // go with the take, whose answer decides what follows it).
    if settle_marks.is_empty() && !nudging {
        tx.commit_with_next_statement();
    }
    record_events(&tx, &events).await?;
    if !nudging {
        tx.commit_with_next_statement();
    }
    clear_delivery_marks(&tx, &settle_marks).await?;
    // After the claim statement, so that no call of this batch is nudged.
    let nudges = if nudging {
        tx.commit_with_next_statement();
        super::slots::nudge_waiting_calls(&tx, held_back_marked).await?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    let claims = claims
        .into_iter()
        .zip(call_ids)
        .map(|(claim, call_id)| {
            claim.ok_or_else(|| {
                super::StoreError::Corrupt(format!("call {call_id} was left unanswered"))
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((claims, nudges))
}

/// The claim's step 5 in one statement: `candidates` the calls to claim with their new
/// attempts' and `call.dialing` events' ids, in batch order (`a(id, attempt_id, event_id,
/// n)` over `$1`, `$2`, `$4`), `ids` the same calls (`a(id)`), `$3` the cap.
///
/// Each event's snapshot is the updated row of `started`, with its dials read from
/// `call_attempts` and the attempt `attempt` inserts (invisible to the statement's own
/// reads): the call as `GET /calls/{id}` shows it once the claim commits.
fn take_slots_sql(candidates: &str, ids: &str) -> String {
    format!(
        "WITH candidate AS ( \
                 SELECT c.id, c.phone, c.attempts + 1 AS attempt_no, COALESCE(c.retry_dial_key, a.attempt_id) AS dial_key, \
                        a.attempt_id, a.event_id, row_number() OVER (ORDER BY a.n) AS rank \
                   FROM {candidates} \
                   JOIN calls c ON c.id = a.id \
                  WHERE NOT EXISTS (SELECT 1 FROM call_slots busy WHERE busy.phone = c.phone)), \
             free AS ( \
                 SELECT slot_no, row_number() OVER (ORDER BY slot_no) AS rank \
                   FROM (SELECT slot_no FROM call_slots WHERE call_id IS NULL AND slot_no <= $3 \
                          ORDER BY slot_no LIMIT (SELECT count(*) FROM candidate) FOR UPDATE SKIP LOCKED) AS f), \
             paired AS ( \
                 SELECT candidate.*, free.slot_no FROM candidate JOIN free USING (rank)), \
             slot AS ( \
                 UPDATE call_slots s SET call_id = paired.id, claimed_at = now(), phone = paired.phone \
                   FROM paired WHERE s.slot_no = paired.slot_no RETURNING s.slot_no), \
             started AS ( \
                 UPDATE calls SET status = 'IN_PROGRESS', attempts = paired.attempt_no, started_at = now(), \
                        updated_at = now(), outbox_due_at = NULL, nudged_at = NULL, retry_dial_key = NULL, \
                        sequence = sequence + 1 \
                   FROM paired WHERE calls.id = paired.id RETURNING calls.*, paired.event_id), \
             attempt AS ( \
                 INSERT INTO call_attempts (id, call_id, attempt_no, idempotency_key, slot_no) \
                 SELECT attempt_id, id, attempt_no, dial_key, slot_no FROM paired RETURNING *), \
             announced AS ({} RETURNING call_id) \
             SELECT a.id, candidate.id IS NULL AS phone_busy, paired.slot_no, paired.attempt_id, \
                    paired.attempt_no, paired.dial_key, paired.dial_key <> paired.attempt_id AS key_reused, \
                    (SELECT count(*) FROM slot) AS slots_taken, (SELECT count(*) FROM started) AS started, \
                    (SELECT count(*) FROM attempt) AS recorded, (SELECT count(*) FROM announced) AS announced \
               FROM {ids} \
               LEFT JOIN candidate ON candidate.id = a.id \
               LEFT JOIN paired ON paired.id = a.id",
        insert_events_with_dials_sql(
            "c.event_id",
            &format!("'{}'", EventType::Dialing.as_str()),
            "started c",
            "(SELECT * FROM call_attempts UNION ALL SELECT * FROM attempt) a",
        ),
    )
}

/// The claim's read of its calls, without the `WHERE` clause: `$1` the ids (one, or an
/// array), `$2` the maximum pending age in seconds, `$3` now.
///
/// A batch of one (messages arrive one at a time unless the queue is busy) is read with a
/// scalar `$1`: Postgres keeps one generic plan for that statement, where an array
/// parameter, whose length it cannot know, has it plan again on every claim (each plan
/// also reads the size of `calls` and of each of its indexes). The same holds for the
/// other statements that take a batch of one apart here and in [`super::dial`].
const CLAIM_READ: &str = "SELECT id, phone, campaign_id, status, next_run_at, attempts, limited_dials, \
        max_attempts, script_id, metadata, retry_dial_key, \
        outbox_due_at IS NOT NULL AS outbox_marked, nudged_at IS NOT NULL AS nudged, \
        (COALESCE(expires_at <= now(), false) \
         OR ($2::float8 IS NOT NULL AND created_at <= now() - make_interval(secs => $2))) AS expired, \
        next_run_at <= $3 AS due, calling_window, time_zones \
   FROM calls";

/// Arbitrary first key of the campaigns' advisory locks (the two-integer form, a space
/// apart from the phones' one-bigint locks).
const CAMPAIGN_LOCK_SPACE: i32 = 0x6361_6d70;

/// Each campaign's status, and how many more calls it may start now (None: no limit).
///
/// Only a campaign with a `maxConcurrency` (fixed at its creation) is locked and has its
/// calls in progress counted: its claims are serialised by its advisory lock, taken in id
/// order, and the count, read after the lock, includes every committed claim of it. A
/// campaign without one is not locked, so its claims run side by side: with the lock
/// taken for every campaign, a campaign draining at a cap of 1,000 waited 94 ms on average
/// per claim for it (`pg_stat_statements` over `ebra bench --only campaigns`, on a private
/// Postgres with autovacuum on).
async fn campaign_room(
    tx: &Transaction<'_>,
    campaigns: &[Uuid],
) -> StoreResult<HashMap<Uuid, (String, Option<i64>)>> {
    // One campaign (the usual batch of one message) with a scalar parameter: one generic
    // plan, where an array has Postgres plan again on every claim.
    let rows = match campaigns {
        [campaign] => {
            query(
                tx,
                "SELECT id, status, max_concurrency FROM campaigns WHERE id = $1",
                &[campaign],
            )
            .await?
        }
        _ => {
            query(
                tx,
                "SELECT id, status, max_concurrency FROM campaigns WHERE id = ANY($1)",
                &[&campaigns],
            )
            .await?
        }
    };
    // A limited campaign's room starts at its maxConcurrency; its calls in progress are
    // taken off below, once counted under its lock.
    let mut state: HashMap<Uuid, (String, Option<i64>)> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let max: Option<i32> = row.try_get("max_concurrency")?;
        state.insert(
            row.try_get("id")?,
            (row.try_get("status")?, max.map(i64::from)),
        );
    }
    let mut limited: Vec<Uuid> = state
        .iter()
        .filter(|(_, (_, room))| room.is_some())
        .map(|(id, _)| *id)
        .collect();
    if limited.is_empty() {
        return Ok(state);
    }
    limited.sort_unstable();
    execute(
        tx,
        "SELECT pg_advisory_xact_lock($2, hashtext(id::text)) \
           FROM unnest($1::uuid[]) WITH ORDINALITY AS locks(id, n) ORDER BY n",
        &[&limited, &CAMPAIGN_LOCK_SPACE],
    )
    .await?;
    // Read after the locks: every committed claim of these campaigns is counted.
    let counts = query(
        tx,
        "SELECT k.id, (SELECT count(*) FROM calls c WHERE c.campaign_id = k.id AND c.status = 'IN_PROGRESS') \
           FROM unnest($1::uuid[]) AS k(id)",
        &[&limited],
    )
    .await?;
    for row in &counts {
        let in_progress: i64 = row.try_get(1)?;
        if let Some((_, Some(room))) = state.get_mut(&row.try_get::<_, Uuid>(0)?) {
            *room -= in_progress;
        }
    }
    Ok(state)
}

/// Step 3: keeps the candidates whose campaign may take a call now. Calls of a paused
/// campaign are answered [`Claim::CampaignPaused`], those beyond a campaign's
/// `maxConcurrency` [`Claim::CampaignFull`] (both parked: their delivery marks are
/// settled), and those of a canceled campaign are CANCELED with their event.
async fn admit_by_campaign(
    tx: &Transaction<'_>,
    found: &HashMap<Uuid, &Row>,
    candidates: &mut Vec<(usize, Uuid, String)>,
    claims: &mut [Option<Claim>],
    settle_marks: &mut Vec<Uuid>,
    events: &mut Vec<(Uuid, EventType)>,
) -> StoreResult<()> {
    let mut campaign_of: HashMap<Uuid, Uuid> = HashMap::new();
    for (_, call_id, _) in candidates.iter() {
        if let Some(row) = found.get(call_id) {
            if let Some(campaign) = row.try_get::<_, Option<Uuid>>("campaign_id")? {
                campaign_of.insert(*call_id, campaign);
            }
        }
    }
    if campaign_of.is_empty() {
        return Ok(());
    }
    let mut campaigns: Vec<Uuid> = campaign_of.values().copied().collect();
    campaigns.sort_unstable();
    campaigns.dedup();
    let mut state = campaign_room(tx, &campaigns).await?;
    let mut canceled = Vec::new();
    let mut admitted = Vec::with_capacity(candidates.len());
    for (index, call_id, phone) in candidates.drain(..) {
        let Some(campaign) = campaign_of.get(&call_id) else {
            admitted.push((index, call_id, phone));
            continue;
        };
        let Some((status, room)) = state.get_mut(campaign) else {
            return Err(super::StoreError::Corrupt(format!(
                "call {call_id}'s campaign {campaign} does not exist"
            )));
        };
        match status.as_str() {
            "CANCELED" => {
                canceled.push(call_id);
                claims[index] = Some(Claim::NotPending(CallStatus::Canceled));
            }
            "PAUSED" => {
                settle_marks.push(call_id);
                claims[index] = Some(Claim::CampaignPaused);
            }
            _ if room.is_some_and(|room| room <= 0) => {
                settle_marks.push(call_id);
                claims[index] = Some(Claim::CampaignFull);
            }
            _ => {
                if let Some(room) = room.as_mut() {
                    *room -= 1;
                }
                admitted.push((index, call_id, phone));
            }
        }
    }
    *candidates = admitted;
    if !canceled.is_empty() {
        // A call of a canceled campaign that came back to PENDING (a retry scheduled
        // while the cancel ran): canceled as the campaign's other calls were.
        execute(
            tx,
            "UPDATE calls SET status = 'CANCELED', ended_at = now(), updated_at = now(), \
                    outbox_due_at = NULL, nudged_at = NULL, sequence = sequence + 1, \
                    last_error = COALESCE(last_error || '; ', '') || 'campaign canceled' \
              WHERE id = ANY($1)",
            &[&canceled],
        )
        .await?;
        events.extend(canceled.iter().map(|id| (*id, EventType::Canceled)));
    }
    Ok(())
}

/// A call whose last dial's fate is unknown (a timeout) keeps its slot and its phone; once
/// its backoff ends, the next delivery redials it in place, with the same idempotency key,
/// so a provider that did place the first dial answers with that call instead of a new one.
///
/// The calling rules hold for a redial as for any dial: outside the window it waits (the
/// slot kept, as while backing off); to a suppressed number it is not made. The last dial
/// may be ringing the phone, so the call keeps its slot, like any dial of unknown fate,
/// until its report or the reclaimer settles it (a dial the provider never placed goes
/// back to PENDING, and its claim then cancels it as suppressed): freeing the slot here let
/// another call take it while the provider might still hold this one, one over the cap.
async fn redial_unknown(
    tx: &Transaction<'_>,
    call_id: Uuid,
    call: &tokio_postgres::Row,
    rules: RedialRules,
    events: &mut Vec<(Uuid, EventType)>,
    moved: &mut Vec<(Uuid, DateTime<Utc>)>,
) -> StoreResult<Claim> {
    let attempts: i32 = call.try_get("attempts")?;
    let limited_dials: i32 = call.try_get("limited_dials")?;
    let max_attempts: i32 = call.try_get("max_attempts")?;
    let last = query_opt(
        tx,
        "SELECT dial_state, idempotency_key, slot_no FROM call_attempts \
          WHERE call_id = $1 AND attempt_no = $2",
        &[&call_id, &attempts],
    )
    .await?;
    let Some(last) = last else {
        return Ok(Claim::NotPending(CallStatus::InProgress));
    };
    let dial_state: String = last.try_get("dial_state")?;
    if dial_state != "UNKNOWN" || attempts - limited_dials >= max_attempts {
        return Ok(Claim::NotPending(CallStatus::InProgress));
    }
    if !call.try_get::<_, bool>("due")? {
        return Ok(Claim::NotDue {
            until: call.try_get("next_run_at")?,
        });
    }
    if rules.suppressed {
        tracing::info!(
            %call_id,
            "not redialed: its number is on the do-not-call list; its dial of unknown fate keeps the slot until it is settled"
        );
        return Ok(Claim::NotPending(CallStatus::InProgress));
    }
    if let Some(until) = rules.outside_until {
        moved.push((call_id, until));
        return Ok(Claim::OutsideWindow { until });
    }
    let attempt_id = Uuid::now_v7();
    let attempt_no = attempts + 1;
    let idempotency_key: Uuid = last.try_get("idempotency_key")?;
    let slot_no: i32 = last.try_get("slot_no")?;
    execute(
        tx,
        "WITH redial AS ( \
             UPDATE calls SET attempts = $3::int4, started_at = now(), updated_at = now(), \
                    sequence = sequence + 1 \
              WHERE id = $1 RETURNING id) \
         INSERT INTO call_attempts (id, call_id, attempt_no, idempotency_key, slot_no) \
         SELECT $2, id, $3::int4, $4, $5::int4 FROM redial",
        &[
            &call_id,
            &attempt_id,
            &attempt_no,
            &idempotency_key,
            &slot_no,
        ],
    )
    .await?;
    events.push((call_id, EventType::Dialing));
    let prior = prior_dial(tx, call_id, idempotency_key, attempt_no).await?;
    Ok(Claim::Claimed(ClaimedCall {
        call_id,
        attempt_id,
        attempt_no,
        max_attempts,
        idempotency_key,
        slot_no,
        phone: call.try_get("phone")?,
        script_id: call.try_get("script_id")?,
        metadata: call.try_get("metadata")?,
        prior: Some(prior),
    }))
}

/// What a lookup needs to know of the earlier dials that used `key` (before attempt
/// `attempt_no`): when the first of them started, the provider call ids of the call's other
/// attempts, and whether the last of them may have been placed.
pub(crate) async fn prior_dial(
    tx: &Transaction<'_>,
    call_id: Uuid,
    key: Uuid,
    attempt_no: i32,
) -> StoreResult<PriorDial> {
    let row = super::query_one(
        tx,
        "SELECT COALESCE(min(started_at) FILTER (WHERE idempotency_key = $2), now()) AS since, \
                COALESCE(array_agg(provider_call_id::text) FILTER \
                    (WHERE provider_call_id IS NOT NULL AND idempotency_key <> $2), '{}') AS known, \
                COALESCE((array_agg(dial_state ORDER BY attempt_no DESC) \
                    FILTER (WHERE idempotency_key = $2 AND attempt_no < $3))[1] \
                    IN ('DIALING', 'UNKNOWN'), false) AS fate_unknown \
           FROM call_attempts WHERE call_id = $1",
        &[&call_id, &key, &attempt_no],
    )
    .await?;
    Ok(PriorDial {
        since: row.try_get("since")?,
        known_provider_call_ids: row.try_get("known")?,
        fate_unknown: row.try_get("fate_unknown")?,
    })
}

/// What a delivery settles on a call it does not claim: its outbox mark (the message
/// arrived, the outbox's job is done) and its nudge mark (a call that must wait again is
/// open to the next freed slot's nudge at once; keeping `nudged_at` would hide it from
/// nudges for the quiet window while nothing else wakes it, and a backlog could stall with
/// every slot free).
async fn clear_delivery_marks(tx: &Transaction<'_>, call_ids: &[Uuid]) -> StoreResult<()> {
    if !call_ids.is_empty() {
        execute(
            tx,
            "UPDATE calls SET outbox_due_at = NULL, nudged_at = NULL \
              WHERE id = ANY($1) AND (outbox_due_at IS NOT NULL OR nudged_at IS NOT NULL)",
            &[&call_ids],
        )
        .await?;
    }
    Ok(())
}

/// What the calling rules say about a redial.
struct RedialRules {
    suppressed: bool,
    /// Outside the window: when it next opens.
    outside_until: Option<DateTime<Utc>>,
}

/// The rules stored on a call's row (`calling_window`, `time_zones`).
fn stored_rules(row: &Row) -> StoreResult<Option<CallRules>> {
    let window: Option<serde_json::Value> = row.try_get("calling_window")?;
    if window.is_none() {
        return Ok(None);
    }
    let zones: Vec<String> = row.try_get("time_zones")?;
    CallRules::from_stored(window.as_ref(), &zones)
        .map(Some)
        .ok_or_else(|| {
            super::StoreError::Corrupt(format!("calling rules {window:?} in zones {zones:?}"))
        })
}

/// When a call outside its window may next be dialed; `None` when it may be now.
fn outside_rules(row: &Row, now: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>> {
    let Some(rules) = stored_rules(row)? else {
        return Ok(None);
    };
    if rules.allows(now) {
        return Ok(None);
    }
    Ok(Some(
        rules.next_allowed(now).unwrap_or(now + RECHECK_UNOPENABLE),
    ))
}

/// The candidates whose number had `cap` or more dials that may have rung it in the 24 h
/// before `now`, each with when enough of them are 24 h old for one more.
async fn daily_cap_reached(
    tx: &Transaction<'_>,
    candidates: &[(usize, Uuid, String)],
    cap: u32,
    now: DateTime<Utc>,
) -> StoreResult<HashMap<Uuid, DateTime<Utc>>> {
    let phones: Vec<&str> = candidates.iter().map(|(_, _, p)| p.as_str()).collect();
    let rows = query(
        tx,
        "SELECT c.phone, array_agg(a.started_at ORDER BY a.started_at) AS dials \
           FROM calls c JOIN call_attempts a ON a.call_id = c.id \
          WHERE c.phone = ANY($1) AND a.started_at > $2::timestamptz - interval '24 hours' \
            AND a.dial_state IN ('DIALING', 'ACCEPTED', 'UNKNOWN') \
          GROUP BY c.phone",
        &[&phones, &now],
    )
    .await?;
    let mut reached_by_phone: HashMap<String, DateTime<Utc>> = HashMap::new();
    for row in &rows {
        let dials: Vec<DateTime<Utc>> = row.try_get("dials")?;
        let cap = cap as usize;
        if dials.len() >= cap {
            // One more is allowed once all but cap - 1 of them are 24 h old.
            let oldest_to_age_out = dials[dials.len() - cap];
            reached_by_phone.insert(
                row.try_get("phone")?,
                oldest_to_age_out + chrono::Duration::hours(24),
            );
        }
    }
    Ok(candidates
        .iter()
        .filter_map(|(_, call_id, phone)| {
            reached_by_phone.get(phone).map(|until| (*call_id, *until))
        })
        .collect())
}
