//! Releasing slots, and nudging waiting calls into freed ones (invariant 8).
//!
//! A call holds a row of `call_slots` from its claim until it leaves IN_PROGRESS. Every
//! path that releases a slot (a dial that failed, a webhook, the reclaimer) does so in
//! the transaction that moves the call on, and in the same transaction picks the oldest due
//! PENDING calls whose phone is free and marks them nudged; after the commit their messages
//! are sent with no delay, so a freed slot is refilled at once instead of when some waiting
//! message next wakes up.

use uuid::Uuid;

use super::{execute, query, query_one, Pool, StoreResult, Transaction};
use crate::queue::Enqueue;

/// A call nudged within this window is not nudged again (its message is on its way).
pub(crate) const NUDGE_QUIET_SECONDS: f64 = 30.0;

/// A call whose outbox message was due less than this long ago is not nudged: that message
/// is on its way, and a second one would only cost a send, a receive and a delete. Longer
/// overdue, the send may have failed, and a nudge beats waiting for the outbox sweep.
pub(crate) const MESSAGE_ON_ITS_WAY_SECONDS: f64 = 5.0;

/// Frees the slot `call_id` holds, if any.
pub(crate) async fn release_slot(tx: &Transaction<'_>, call_id: Uuid) -> StoreResult<bool> {
    Ok(execute(
        tx,
        "UPDATE call_slots SET call_id = NULL, claimed_at = NULL WHERE call_id = $1",
        &[&call_id],
    )
    .await?
        > 0)
}

/// Marks up to `count` waiting calls as nudged and returns their messages, to send after
/// the commit. Calls whose message is on its way are left to it.
pub(crate) async fn nudge_waiting_calls(
    tx: &Transaction<'_>,
    count: i64,
) -> StoreResult<Vec<Enqueue>> {
    if count <= 0 {
        return Ok(Vec::new());
    }
    let rows = query(
        tx,
        "UPDATE calls SET nudged_at = now() WHERE id IN ( \
             SELECT c.id FROM calls c \
              WHERE c.status = 'PENDING' AND c.next_run_at <= now() \
                AND (c.nudged_at IS NULL OR c.nudged_at < now() - make_interval(secs => $2)) \
                AND (c.outbox_due_at IS NULL OR c.outbox_due_at < now() - make_interval(secs => $3)) \
                AND NOT EXISTS (SELECT 1 FROM calls busy WHERE busy.phone = c.phone AND busy.status = 'IN_PROGRESS') \
              ORDER BY c.next_run_at \
              LIMIT $1 \
              FOR UPDATE OF c SKIP LOCKED) \
         RETURNING id",
        &[&count, &NUDGE_QUIET_SECONDS, &MESSAGE_ON_ITS_WAY_SECONDS],
    )
    .await?;
    rows.iter()
        .map(|row| Ok(Enqueue::now(row.try_get(0)?)))
        .collect()
}

/// Calls in progress as the cap counts them: slots held.
pub async fn slots_in_use(pool: &Pool) -> StoreResult<i64> {
    let client = pool.get().await?;
    Ok(query_one(
        &client,
        "SELECT count(*) FROM call_slots WHERE call_id IS NOT NULL",
        &[],
    )
    .await?
    .try_get(0)?)
}
