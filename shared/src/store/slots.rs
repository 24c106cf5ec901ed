//! Releasing slots, and nudging waiting calls into freed ones (invariant 8).
//!
//! A call holds a row of `call_slots` from its claim until it leaves IN_PROGRESS. Every
//! path that releases a slot (a dial that failed, a webhook, the reclaimer) does so in
//! the transaction that moves the call on, and in the same transaction picks due PENDING
//! calls whose phone is free, fairly across campaigns, and marks them nudged; after the commit their messages
//! are sent with no delay, so a freed slot is refilled at once instead of when some waiting
//! message next wakes up.

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{execute, query, query_one, Pool, StoreResult, Transaction};
use crate::queue::Enqueue;

/// A call nudged within this window is not nudged again (its message is on its way).
pub(crate) const NUDGE_QUIET_SECONDS: f64 = nudge_quiet_seconds!();

/// [`NUDGE_QUIET_SECONDS`] as a literal, for SQL built with `concat!`.
macro_rules! nudge_quiet_seconds {
    () => {
        30.0
    };
}
pub(crate) use nudge_quiet_seconds;

/// SQL: how many calls were nudged within [`NUDGE_QUIET_SECONDS`] (a message on its way to
/// each), counted up to `$cap` (a parameter, e.g. `"$1"`). Read in `nudged_at` order so that
/// Postgres walks `calls_nudged` whatever it guesses of the table (fresh tables have no
/// statistics): with the first version of this count, without the order, the backlog run of
/// `ebra bench --only e2e` posted 284 creates/s instead of 511.
macro_rules! recent_nudges_count {
    ($cap:literal) => {
        concat!(
            "(SELECT count(*) FROM (SELECT 1 FROM calls \
               WHERE nudged_at IS NOT NULL AND nudged_at >= now() - make_interval(secs => ",
            $crate::store::slots::nudge_quiet_seconds!(),
            ") ORDER BY nudged_at DESC LIMIT ",
            $cap,
            ") AS nudged)"
        )
    };
}
pub(crate) use recent_nudges_count;

/// A call whose outbox message was due less than this long ago is not nudged: that message
/// is on its way, and a second one would only cost a send, a receive and a delete. Longer
/// overdue, the send may have failed: the reclaimer's refill parks the call again
/// ([`unmark_overdue_messages`]), and a nudge beats waiting for the outbox sweep.
pub(crate) const MESSAGE_ON_ITS_WAY_SECONDS: f64 = 5.0;

/// Parks again the waiting calls whose message is overdue, so that a nudge can take them
/// ([`nudge_eligible`] takes parked calls only): nudged more than [`NUDGE_QUIET_SECONDS`]
/// ago, or outbox-marked and due more than [`MESSAGE_ON_ITS_WAY_SECONDS`] ago, with no
/// delivery since (a delivery claims the call or clears its marks). Their message may have
/// been lost; if it was only late, the call gets a second message, and the claim takes it
/// once. Up to `limit` of each; rows another transaction holds are left to the next pass.
pub(crate) async fn unmark_overdue_messages(tx: &Transaction<'_>, limit: i64) -> StoreResult<()> {
    execute(
        tx,
        "WITH quiet AS MATERIALIZED ( \
             SELECT id FROM calls \
              WHERE nudged_at < now() - make_interval(secs => $1) AND status = 'PENDING' \
              ORDER BY nudged_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
         overdue AS MATERIALIZED ( \
             SELECT id FROM calls \
              WHERE outbox_due_at < now() - make_interval(secs => $2) AND status = 'PENDING' \
              ORDER BY outbox_due_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE calls SET \
                nudged_at = CASE WHEN nudged_at < now() - make_interval(secs => $1) THEN NULL ELSE nudged_at END, \
                outbox_due_at = CASE WHEN outbox_due_at < now() - make_interval(secs => $2) THEN NULL ELSE outbox_due_at END \
          WHERE id IN (SELECT id FROM quiet UNION SELECT id FROM overdue)",
        &[&NUDGE_QUIET_SECONDS, &MESSAGE_ON_ITS_WAY_SECONDS, &limit],
    )
    .await?;
    Ok(())
}

/// Frees the slot `call_id` holds, if any.
pub(crate) async fn release_slot(tx: &Transaction<'_>, call_id: Uuid) -> StoreResult<bool> {
    Ok(execute(
        tx,
        "UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL WHERE call_id = $1",
        &[&call_id],
    )
    .await?
        > 0)
}

/// Marks up to `count` waiting calls as nudged and returns their messages, to send after
/// the commit. Calls whose message is on its way are left to it.
///
/// Fairness (issue 13): the waiting calls are taken round-robin across groups (each ACTIVE
/// campaign with due calls, and the calls without a campaign as a group of their own),
/// the group with the fewest calls in progress relative to its share first: the `r`-th
/// waiting call of a group ranks `(in progress + r) / share`, where the share is the
/// campaign's `maxConcurrency` (the cap when it has none, as for the group without a
/// campaign). So a small campaign that starts while a large one drains gets freed slots
/// until it holds as many as the large one. A group gives no more calls than its
/// `maxConcurrency` leaves room for; paused and canceled campaigns give none. Each group
/// is read through `calls_campaign_pending_due` (the calls without a campaign through
/// `calls_parked_without_campaign`, which holds parked calls only) in `next_run_at` order
/// with a LIMIT: the cost follows the number of groups with due calls, not the size of the
/// table.
pub(crate) async fn nudge_waiting_calls(
    tx: &Transaction<'_>,
    count: i64,
) -> StoreResult<Vec<Enqueue>> {
    if count <= 0 {
        return Ok(Vec::new());
    }
    nudged(tx, FAIR_NUDGE, count, &[]).await
}

/// Runs a statement built on [`fair_nudge_ctes`] (`$1`–`$2`; `more` from `$3`: the slot's
/// call for [`release_slot_and_nudge`]) and returns the nudged calls' messages.
async fn nudged(
    tx: &Transaction<'_>,
    sql: &str,
    count: i64,
    more: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<Enqueue>> {
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&count, &FAIR_SHARE_UNLIMITED];
    params.extend_from_slice(more);
    let rows = query(tx, sql, &params).await?;
    rows.iter()
        .map(|row| Ok(Enqueue::now(row.try_get(0)?)))
        .collect()
}

/// The share of a group without a `maxConcurrency` of its own (a number above any cap:
/// only the ratio between groups matters).
const FAIR_SHARE_UNLIMITED: f64 = 10_000.0;

/// Which waiting calls a nudge may take (`c`): parked (due, with neither mark: no message
/// on its way, see [`unmark_overdue_messages`] for one that was lost) and their phone free:
/// held by no slot (`call_slots_phone`, see migration V11), other than one `$released` in
/// the same statement (which its read of `call_slots` does not see freed).
///
/// The marks are part of the predicate of `calls_parked_without_campaign` (migration V12),
/// so the pick reads parked calls only: the calls whose message is on its way are the
/// oldest due (a nudge takes the oldest), and a test of their marks' age made every settle
/// walk past all of them first.
macro_rules! nudge_eligible {
    ($released:literal) => {
        concat!(
            "c.status = 'PENDING' AND c.next_run_at <= now() \
               AND c.nudged_at IS NULL AND c.outbox_due_at IS NULL \
               AND NOT EXISTS (SELECT 1 FROM call_slots busy WHERE busy.phone = c.phone",
            $released,
            ")"
        )
    };
}

/// The nudge's common table expressions, after a `WITH`: `$1` calls to nudge, `$2` the share
/// of a group without a limit; `$released` as in [`nudge_eligible`].
///
/// A group's calls in progress are counted only where they matter (counting them reads an
/// index entry and a row per call in progress, as many as the cap while a campaign drains):
/// for a campaign with a `maxConcurrency`, whose room they bound, and for every group when
/// more than one group has waiting calls to give, which the ranking interleaves. With one
/// group, the ranking is its own order.
macro_rules! fair_nudge_ctes {
    ($released:literal) => { concat!(
    "g AS MATERIALIZED ( \
         SELECT k.id, k.max_concurrency, COALESCE(k.max_concurrency::float8, $2) AS share, \
                CASE WHEN k.max_concurrency IS NOT NULL THEN \
                    (SELECT count(*) FROM calls p WHERE p.campaign_id = k.id AND p.status = 'IN_PROGRESS') \
                END AS limited_in_progress \
           FROM campaigns k \
          WHERE k.status = 'ACTIVE' \
            AND EXISTS (SELECT 1 FROM calls d WHERE d.campaign_id = k.id AND d.status = 'PENDING' \
                          AND d.next_run_at <= now())), \
     w AS MATERIALIZED ( \
         SELECT g.id AS campaign_id, g.share, g.limited_in_progress, e.id, e.r \
           FROM g CROSS JOIN LATERAL ( \
              SELECT e.id, row_number() OVER (ORDER BY e.next_run_at) AS r FROM ( \
                  SELECT c.id, c.next_run_at FROM calls c \
                   WHERE c.campaign_id = g.id AND ",
    nudge_eligible!($released),
    " \
                   ORDER BY c.next_run_at \
                   LIMIT GREATEST(0, LEAST($1, COALESCE(g.max_concurrency - g.limited_in_progress, $1))) \
                   FOR UPDATE OF c SKIP LOCKED) e) e \
         UNION ALL \
         SELECT NULL::uuid, $2, NULL::bigint, e.id, row_number() OVER (ORDER BY e.next_run_at) \
           FROM (SELECT c.id, c.next_run_at FROM calls c \
                  WHERE c.campaign_id IS NULL AND ",
    nudge_eligible!($released),
    " \
                  ORDER BY c.next_run_at LIMIT $1 \
                  FOR UPDATE OF c SKIP LOCKED) e), \
     contested AS MATERIALIZED ( \
         SELECT count(*) > 1 AS yes FROM (SELECT DISTINCT campaign_id FROM w) AS groups), \
     counted AS MATERIALIZED ( \
         SELECT gs.campaign_id, \
                CASE WHEN NOT (SELECT yes FROM contested) THEN 0 \
                     WHEN gs.limited_in_progress IS NOT NULL THEN gs.limited_in_progress \
                     WHEN gs.campaign_id IS NULL THEN \
                         (SELECT count(*) FROM calls p WHERE p.campaign_id IS NULL AND p.status = 'IN_PROGRESS') \
                     ELSE (SELECT count(*) FROM calls p WHERE p.campaign_id = gs.campaign_id AND p.status = 'IN_PROGRESS') \
                END AS in_progress \
           FROM (SELECT DISTINCT campaign_id, limited_in_progress FROM w) AS gs) \
     UPDATE calls SET nudged_at = now() WHERE id IN ( \
         SELECT w.id FROM w JOIN counted ON counted.campaign_id IS NOT DISTINCT FROM w.campaign_id \
          ORDER BY (counted.in_progress + w.r) / w.share, w.r \
          LIMIT $1) \
     RETURNING id"
    ) };
}

/// SQL: a common table expression that frees the slot of the call `$3`, for a statement that
/// also nudges ([`fair_nudge_ctes`] with `busy.call_id <> $3`).
macro_rules! release_slot_cte {
    () => {
        "released AS ( \
             UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL WHERE call_id = $3), "
    };
}

/// The nudge: [`fair_nudge_ctes`] (`$1`–`$2` as there).
const FAIR_NUDGE: &str = concat!("WITH ", fair_nudge_ctes!(""));

/// Frees the slot `call_id` holds, if any, and nudges one waiting call into it
/// ([`nudge_waiting_calls`]), in one statement: one round trip where a settle or a failed
/// dial made two. The nudge's phone check reads `call_slots` as it was before the
/// statement, so it passes over the released slot by its call (`$3`) and picks the same
/// call as after a separate release; the release, a data-modifying `WITH` that nothing
/// reads, runs to completion after it.
pub(crate) async fn release_slot_and_nudge(
    tx: &Transaction<'_>,
    call_id: Uuid,
) -> StoreResult<Vec<Enqueue>> {
    const RELEASE_AND_NUDGE: &str = concat!(
        "WITH ",
        release_slot_cte!(),
        fair_nudge_ctes!(" AND busy.call_id <> $3")
    );
    nudged(tx, RELEASE_AND_NUDGE, 1, &[&call_id]).await
}

/// [`release_slot_and_nudge`] for a settle: the same statement also marks the provider's
/// webhook `webhook_id` applied with `disposition` (it was stored earlier in the
/// transaction), one round trip and one statement less per call ended by its report.
pub(crate) async fn release_slot_nudge_and_mark_applied(
    tx: &Transaction<'_>,
    call_id: Uuid,
    webhook_id: &str,
    disposition: &str,
) -> StoreResult<Vec<Enqueue>> {
    const RELEASE_MARK_AND_NUDGE: &str = concat!(
        "WITH ",
        release_slot_cte!(),
        "applied AS ( \
             UPDATE provider_webhooks SET applied_at = now(), disposition = $5 \
              WHERE webhook_id = $4), ",
        fair_nudge_ctes!(" AND busy.call_id <> $3")
    );
    nudged(
        tx,
        RELEASE_MARK_AND_NUDGE,
        1,
        &[&call_id, &webhook_id, &disposition],
    )
    .await
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
