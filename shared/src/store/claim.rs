//! Where the global cap is enforced (invariant 1) and one call per phone is kept
//! (invariant 2): taking a call from PENDING to IN_PROGRESS.
//!
//! One short transaction:
//! 1. lock the call's row (a duplicate delivery of the same call waits here, then finds it
//!    no longer PENDING);
//! 2. take a transaction-scoped advisory lock on the phone number, then check that no call
//!    to that phone is in progress: claims for one phone are serialised, so the check
//!    cannot race (the partial unique index is only the backstop);
//! 3. take a free row of `call_slots` among the first `GLOBAL_CONCURRENCY` with
//!    `FOR UPDATE SKIP LOCKED`: no two transactions can hold one slot, so no more than the
//!    cap can be in progress, under any number of workers;
//! 4. mark the call IN_PROGRESS and record the attempt with its idempotency key.
//!
//! The dial happens after the commit, outside any transaction.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{execute, query_one, query_opt, Pool, StoreResult, Transaction};
use crate::domain::CallStatus;

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
    /// All `GLOBAL_CONCURRENCY` slots are held.
    NoFreeSlot,
    /// The call is not PENDING any more (in progress, or finished): nothing to do.
    NotPending(CallStatus),
    /// It passed its `expiresAt` (or the maximum pending age) and is now EXPIRED.
    Expired,
    /// No such call.
    Unknown,
}

pub async fn claim_call(
    pool: &Pool,
    call_id: Uuid,
    cap: u32,
    max_pending_age_seconds: Option<u64>,
) -> StoreResult<Claim> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = query_opt(
        &tx,
        "SELECT phone, status, next_run_at, attempts, max_attempts, script_id, metadata, retry_dial_key, \
                outbox_due_at IS NOT NULL AS outbox_marked, nudged_at IS NOT NULL AS nudged, \
                (COALESCE(expires_at <= now(), false) \
                 OR ($2::float8 IS NOT NULL AND created_at <= now() - make_interval(secs => $2))) AS expired, \
                next_run_at <= now() AS due \
           FROM calls WHERE id = $1 FOR UPDATE",
        &[&call_id, &max_pending_age_seconds.map(|s| s as f64)],
    )
    .await?
    else {
        return Ok(Claim::Unknown);
    };
    let status = super::parse_status(row.try_get("status")?)?;
    if status == CallStatus::InProgress {
        let claim = redial_unknown(&tx, call_id, &row).await?;
        tx.commit().await?;
        return Ok(claim);
    }
    if status != CallStatus::Pending {
        return Ok(Claim::NotPending(status));
    }
    if row.try_get::<_, bool>("expired")? {
        execute(
            &tx,
            "UPDATE calls SET status = 'EXPIRED', ended_at = now(), updated_at = now(), outbox_due_at = NULL, \
                    last_error = COALESCE(last_error || '; ', '') || 'expired before it could be dialed' \
              WHERE id = $1",
            &[&call_id],
        )
        .await?;
        tx.commit().await?;
        return Ok(Claim::Expired);
    }
    let marks = DeliveryMarks {
        outbox: row.try_get("outbox_marked")?,
        nudged: row.try_get("nudged")?,
    };
    if !row.try_get::<_, bool>("due")? {
        clear_delivery_marks(&tx, call_id, marks).await?;
        tx.commit().await?;
        return Ok(Claim::NotDue {
            until: row.try_get("next_run_at")?,
        });
    }

    let phone: String = row.try_get("phone")?;
    execute(
        &tx,
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&phone],
    )
    .await?;
    let attempt_id = Uuid::now_v7();
    let idempotency_key: Uuid = row
        .try_get::<_, Option<Uuid>>("retry_dial_key")?
        .unwrap_or(attempt_id);
    let attempt_no: i32 = row.try_get::<_, i32>("attempts")? + 1;
    // One statement, after the phone lock (so its snapshot sees every committed claim for
    // this phone): is the phone busy; if not, take a free slot; if one was taken, mark the
    // call IN_PROGRESS and record the attempt.
    let taken = query_one(
        &tx,
        "WITH busy AS ( \
             SELECT EXISTS (SELECT 1 FROM calls WHERE phone = $2 AND status = 'IN_PROGRESS') AS phone_busy), \
         slot AS ( \
             UPDATE call_slots SET call_id = $1, claimed_at = now() \
              WHERE slot_no = (SELECT slot_no FROM call_slots \
                                WHERE call_id IS NULL AND slot_no <= $3 \
                                ORDER BY slot_no LIMIT 1 FOR UPDATE SKIP LOCKED) \
                AND NOT (SELECT phone_busy FROM busy) \
             RETURNING slot_no), \
         started AS ( \
             UPDATE calls SET status = 'IN_PROGRESS', attempts = $5, started_at = now(), updated_at = now(), \
                    outbox_due_at = NULL, nudged_at = NULL, retry_dial_key = NULL \
              WHERE id = $1 AND EXISTS (SELECT 1 FROM slot) RETURNING id), \
         attempt AS ( \
             INSERT INTO call_attempts (id, call_id, attempt_no, idempotency_key, slot_no) \
             SELECT $4, started.id, $5, $6, slot.slot_no FROM started, slot RETURNING id) \
         SELECT (SELECT phone_busy FROM busy) AS phone_busy, (SELECT slot_no FROM slot) AS slot_no, \
                (SELECT count(*) FROM attempt) AS recorded",
        &[&call_id, &phone, &(cap as i32), &attempt_id, &attempt_no, &idempotency_key],
    )
    .await?;
    if taken.try_get::<_, bool>("phone_busy")? {
        clear_delivery_marks(&tx, call_id, marks).await?;
        tx.commit().await?;
        return Ok(Claim::PhoneBusy);
    }
    let Some(slot_no) = taken.try_get::<_, Option<i32>>("slot_no")? else {
        clear_delivery_marks(&tx, call_id, marks).await?;
        tx.commit().await?;
        return Ok(Claim::NoFreeSlot);
    };
    if taken.try_get::<_, i64>("recorded")? != 1 {
        return Err(super::StoreError::Corrupt(format!(
            "call {call_id} took slot {slot_no} but its attempt was not recorded"
        )));
    }
    tx.commit().await?;
    Ok(Claim::Claimed(ClaimedCall {
        call_id,
        attempt_id,
        attempt_no,
        max_attempts: row.try_get("max_attempts")?,
        idempotency_key,
        slot_no,
        phone,
        script_id: row.try_get("script_id")?,
        metadata: row.try_get("metadata")?,
    }))
}

/// A call whose last dial's fate is unknown (a timeout) keeps its slot and its phone; once
/// its backoff ends, the next delivery redials it in place, with the same idempotency key,
/// so a provider that did place the first dial answers with that call instead of a new one.
async fn redial_unknown(
    tx: &Transaction<'_>,
    call_id: Uuid,
    call: &tokio_postgres::Row,
) -> StoreResult<Claim> {
    let attempts: i32 = call.try_get("attempts")?;
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
    if dial_state != "UNKNOWN" || attempts >= max_attempts {
        return Ok(Claim::NotPending(CallStatus::InProgress));
    }
    if !call.try_get::<_, bool>("due")? {
        return Ok(Claim::NotDue {
            until: call.try_get("next_run_at")?,
        });
    }
    let attempt_id = Uuid::now_v7();
    let attempt_no = attempts + 1;
    let idempotency_key: Uuid = last.try_get("idempotency_key")?;
    let slot_no: i32 = last.try_get("slot_no")?;
    execute(
        tx,
        "WITH redial AS ( \
             UPDATE calls SET attempts = $3, started_at = now(), updated_at = now() \
              WHERE id = $1 RETURNING id) \
         INSERT INTO call_attempts (id, call_id, attempt_no, idempotency_key, slot_no) \
         SELECT $2, id, $3, $4, $5 FROM redial",
        &[
            &call_id,
            &attempt_id,
            &attempt_no,
            &idempotency_key,
            &slot_no,
        ],
    )
    .await?;
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
    }))
}

/// What a delivery settles on a call that is not claimed: its outbox mark (the message
/// arrived, the outbox's job is done) and its nudge mark (a call that must wait again is
/// open to the next freed slot's nudge at once; keeping `nudged_at` would hide it from
/// nudges for the quiet window while nothing else wakes it, and a backlog could stall with
/// every slot free).
#[derive(Clone, Copy)]
struct DeliveryMarks {
    outbox: bool,
    nudged: bool,
}

async fn clear_delivery_marks(
    tx: &Transaction<'_>,
    call_id: Uuid,
    marks: DeliveryMarks,
) -> StoreResult<()> {
    if marks.outbox || marks.nudged {
        execute(
            tx,
            "UPDATE calls SET outbox_due_at = NULL, nudged_at = NULL WHERE id = $1",
            &[&call_id],
        )
        .await?;
    }
    Ok(())
}
