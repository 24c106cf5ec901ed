//! The API's queries: create, read, list (by status or phone number), patch, cancel, metrics.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::slots::recent_nudges_count;

use super::{
    call_from_row, execute, query, query_one, query_opt, seconds, Call, DialAttempt, Pool,
    StoreResult, CALL_COLUMNS,
};
use crate::domain::{CallStatus, InvalidValue, Metadata, PhoneNumber, ScriptId};
use crate::queue::{Enqueue, MAX_DELAY};
use crate::rules::CallRules;

/// A validated create request.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub phone: PhoneNumber,
    pub script_id: ScriptId,
    pub metadata: Metadata,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The client's `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<(String, String)>,
    /// Where this call's events are also sent (checked by the caller).
    pub callback_url: Option<String>,
    /// The campaign it joins (it must exist and not be canceled).
    pub campaign_id: Option<Uuid>,
    /// Its calling rules, resolved (window and zones).
    pub rules: CallRules,
    /// The IANA time zone the client gave, if any.
    pub timezone: Option<String>,
    /// When its window next opens, at or after `scheduledAt` (or now), when it is closed
    /// then: the call is not due before it.
    pub window_opens_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub enum Created {
    /// A new call. `enqueue`: its message, to send after this returns (its outbox mark is
    /// already set), when it can be dialed soon; `None` when it is parked (every slot taken
    /// or promised, or due beyond SQS's 15-minute delay): a freed slot's nudge or the
    /// reclaimer's refill brings it.
    New {
        call: Call,
        enqueue: Option<Enqueue>,
    },
    /// The `Idempotency-Key` was seen before with the same request: the original call.
    Replayed(Call),
    /// The `Idempotency-Key` was seen before with a different request.
    KeyReused,
    /// The campaign named does not exist.
    CampaignNotFound,
    /// The campaign named is canceled: it takes no new calls.
    CampaignCanceled,
    /// The number is on the do-not-call list: nothing was written.
    Suppressed,
}

/// SQL, with the cap as the parameter `$cap`: how many free slots among the first `cap` no
/// message is on its way to (may be negative) — free slots, less the PENDING calls with an
/// unconfirmed message (outbox mark), less those nudged within
/// [`super::slots::NUDGE_QUIET_SECONDS`] (as the refill counts them). The counts stop at the
/// cap, so this costs the same on any table size (the marked calls are read in
/// `outbox_due_at` order, so through `calls_outbox_due`: without the order, a plan made
/// while `calls` was small read the whole table on every create, 0.8 ms at 10,000 rows,
/// seen with `auto_explain` in `ebra bench --only e2e`'s backlog run). Concurrent creates
/// may each see the same free slot: a few extra messages, each of which the claim parks
/// again, never a missed call. Without the nudges counted, a create raced every settle's
/// nudge for the slot it had just freed, and the loser's message was one more send,
/// receive and delete.
macro_rules! room_count {
    ($cap:literal) => {
        concat!(
            "((SELECT count(*) FROM (SELECT 1 FROM call_slots \
                WHERE call_id IS NULL AND slot_no <= ",
            $cap,
            " LIMIT ",
            $cap,
            ") AS free) \
             - (SELECT count(*) FROM (SELECT 1 FROM calls WHERE outbox_due_at IS NOT NULL \
                ORDER BY outbox_due_at LIMIT ",
            $cap,
            ") AS promised) - ",
            recent_nudges_count!($cap),
            ")"
        )
    };
}

/// SQL, with the cap as `$12`: whether a slot is free that no message is on its way to.
const ROOM_FOR_A_MESSAGE: &str = concat!(room_count!("$12"), " > 0");

/// SQL, with the cap as `$1`: [`room_count`].
pub(crate) const ROOM_COUNT: &str = room_count!("$1");

/// How long SQS should hold a message for a call due at `due`.
pub fn message_delay(due: Option<DateTime<Utc>>) -> Duration {
    due.and_then(|at| (at - Utc::now()).to_std().ok())
        .unwrap_or(Duration::ZERO)
        .min(MAX_DELAY)
}

/// Inserts a call in one statement (one commit), with its `call.created` event and its
/// outbox mark when it can be dialed soon: due within SQS's delay horizon, and a slot free
/// that no other message is already on its way to (fewer calls marked than slots free,
/// both counted up to `cap`). Otherwise the call is parked, with no message: SQS traffic
/// follows dials, not the backlog.
///
/// A campaign's call is inserted in a transaction that first reads its campaign `FOR
/// SHARE` (a cancel cannot slip between the check and the insert); a paused campaign's
/// call, or a call of a campaign at its `maxConcurrency`, is parked. A new call of a
/// campaign already reported completed reopens it (`campaigns::reopen`).
pub async fn create_call(
    pool: &Pool,
    new: &NewCall,
    max_attempts: u32,
    cap: u32,
) -> StoreResult<Created> {
    let mut client = pool.get().await?;
    let Some(campaign_id) = new.campaign_id else {
        return insert_call(&client, new, max_attempts, cap, true).await;
    };
    let tx = super::Transaction::begin(&mut client);
    let Some(row) = query_opt(
        &tx,
        "SELECT status = 'ACTIVE' AND (max_concurrency IS NULL OR max_concurrency > \
                (SELECT count(*) FROM calls WHERE campaign_id = $1 AND status = 'IN_PROGRESS')) AS room, \
                status = 'CANCELED' AS canceled, completed_at IS NOT NULL AS completed \
           FROM campaigns WHERE id = $1 FOR SHARE",
        &[&campaign_id],
    )
    .await?
    else {
        return Ok(Created::CampaignNotFound);
    };
    if row.try_get::<_, bool>("canceled")? {
        return Ok(Created::CampaignCanceled);
    }
    let created = insert_call(&tx, new, max_attempts, cap, row.try_get("room")?).await?;
    if matches!(created, Created::New { .. }) && row.try_get::<_, bool>("completed")? {
        super::campaigns::reopen(&tx, campaign_id).await?;
    }
    tx.commit().await?;
    Ok(created)
}

/// [`create_call`]'s statement; `may_message`: false parks the call whatever the room.
async fn insert_call<C: super::Executor>(
    client: &C,
    new: &NewCall,
    max_attempts: u32,
    cap: u32,
    may_message: bool,
) -> StoreResult<Created> {
    let id = Uuid::now_v7();
    // Due when scheduled, or when its window next opens after that.
    let due = new.window_opens_at.or(new.scheduled_at);
    let delay = message_delay(due);
    let due_within_horizon = may_message
        && due.is_none_or(|at| {
            at - Utc::now() <= chrono::Duration::seconds(MAX_DELAY.as_secs() as i64)
        });
    let (key, hash) = match &new.idempotency {
        Some((key, hash)) => (Some(key.as_str()), Some(hash.as_str())),
        None => (None, None),
    };
    // A call without a key cannot conflict (NULL is never equal): it is inserted plainly,
    // without the speculative insertion `ON CONFLICT` costs (a conflict check, a token, a
    // confirming write-ahead log record). Two statements, each with its own cached plan.
    static INSERT_CALL: LazyLock<String> = LazyLock::new(|| insert_call_sql(""));
    static INSERT_KEYED_CALL: LazyLock<String> = LazyLock::new(|| {
        insert_call_sql(
            "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
    });
    let statement: &str = if key.is_some() {
        &INSERT_KEYED_CALL
    } else {
        &INSERT_CALL
    };
    let inserted = query_opt(
        client,
        statement,
        &[
            &id,
            &new.phone.as_str(),
            &new.script_id.as_str(),
            &new.metadata.to_value(),
            &(max_attempts as i32),
            &new.scheduled_at,
            &new.expires_at,
            &seconds(delay),
            &key,
            &hash,
            &due_within_horizon,
            &(cap as i32),
            &new.callback_url,
            &Uuid::now_v7(),
            &new.rules.window_json(),
            &new.timezone,
            &new.rules.zone_names(),
            &new.window_opens_at,
            &new.campaign_id,
        ],
    )
    .await?;
    if let Some(row) = inserted {
        let call = call_from_row(&row)?;
        let enqueue = row.try_get::<_, bool>("messaged")?.then_some(Enqueue {
            call_id: call.id,
            delay,
        });
        return Ok(Created::New { call, enqueue });
    }
    // Nothing inserted: the number is suppressed, or the key exists (ON CONFLICT waited for
    // its transaction, so the row is visible now; it answers even if the number was
    // suppressed since).
    let Some(key) = key else {
        return Ok(Created::Suppressed);
    };
    let sql = format!("SELECT {CALL_COLUMNS}, request_hash FROM calls WHERE idempotency_key = $1");
    let Some(row) = query_opt(client, &sql, &[&key]).await? else {
        return Ok(Created::Suppressed);
    };
    let stored_hash: Option<String> = row.try_get("request_hash")?;
    if stored_hash.as_deref() == hash {
        Ok(Created::Replayed(call_from_row(&row)?))
    } else {
        Ok(Created::KeyReused)
    }
}

/// [`insert_call`]'s statement: `$1`–`$19` as it binds them; `on_conflict` what a taken
/// idempotency key does (nothing inserted), or empty for a call without a key.
fn insert_call_sql(on_conflict: &str) -> String {
    format!(
        "WITH created AS ( \
             INSERT INTO calls (id, phone, script_id, metadata, max_attempts, scheduled_at, expires_at, \
                 next_run_at, outbox_due_at, idempotency_key, request_hash, callback_url, campaign_id, sequence, \
                 calling_window, timezone, time_zones) \
             SELECT $1::uuid, $2::text, $3::text, $4::jsonb, $5::int4, $6::timestamptz, $7::timestamptz, \
                 GREATEST(now(), COALESCE($6, now()), COALESCE($18::timestamptz, '-infinity')), \
                 CASE WHEN $11::bool AND {ROOM_FOR_A_MESSAGE} THEN now() + make_interval(secs => $8::float8) END, \
                 $9::text, $10::text, $13::text, $19::uuid, 1, $15::jsonb, $16::text, $17::text[] \
              WHERE NOT EXISTS (SELECT 1 FROM suppressions WHERE phone = $2) \
             {on_conflict} \
             RETURNING *), \
         event AS ({} RETURNING 1) \
         SELECT {CALL_COLUMNS}, outbox_due_at IS NOT NULL AS messaged, \
                (SELECT count(*) FROM event) AS events FROM created",
        super::events::insert_events_sql("$14", "'call.created'", "created c")
    )
}

pub async fn get_call(pool: &Pool, id: Uuid) -> StoreResult<Option<(Call, Vec<DialAttempt>)>> {
    let client = pool.get().await?;
    let sql = format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1");
    let Some(row) = query_opt(&client, &sql, &[&id]).await? else {
        return Ok(None);
    };
    let call = call_from_row(&row)?;
    let rows = query(
        &client,
        "SELECT attempt_no, idempotency_key, dial_state, provider_call_id, started_at, dialed_at, \
             ended_at, outcome, end_reason, duration_sec, error \
         FROM call_attempts WHERE call_id = $1 ORDER BY attempt_no",
        &[&id],
    )
    .await?;
    let dials = rows
        .iter()
        .map(|row| {
            Ok(DialAttempt {
                attempt: row.try_get("attempt_no")?,
                idempotency_key: row.try_get("idempotency_key")?,
                dial_state: row.try_get("dial_state")?,
                provider_call_id: row.try_get("provider_call_id")?,
                started_at: row.try_get("started_at")?,
                dialed_at: row.try_get("dialed_at")?,
                ended_at: row.try_get("ended_at")?,
                outcome: super::parse_dial_outcome(row.try_get("outcome")?)?,
                end_reason: row.try_get("end_reason")?,
                duration_sec: row.try_get("duration_sec")?,
                error: row.try_get("error")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some((call, dials)))
}

/// A position in the newest-first listing: the last call of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl ListCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}.{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    /// The cursor of the page after a full page of `items` (newest first), whose last item
    /// is at `position`; `None` when the page is not full (nothing follows it).
    pub fn after_full_page<T>(
        items: &[T],
        page_size: u32,
        position: impl Fn(&T) -> (DateTime<Utc>, Uuid),
    ) -> Option<String> {
        if items.len() as u32 != page_size {
            return None;
        }
        let (created_at, id) = position(items.last()?);
        Some(Self { created_at, id }.encode())
    }

    pub fn decode(raw: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
        let (micros, id) = text.split_once('.')?;
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

#[derive(Debug, Clone)]
pub enum ListPosition {
    /// 1-based page number (offset paging; the total is counted, up to
    /// [`TOTAL_COUNT_LIMIT`]).
    Page(u32),
    /// After this call (keyset paging; stays fast on any table size).
    After(ListCursor),
}

/// Page-number listing counts the matching calls up to this many and stops there, so that
/// listing costs the same on a table of 10 k or 100 M calls (an exact `count(*)` reads every
/// matching row). Beyond it the total is reported as "at least" this many, as search
/// engines do; cursor paging goes on to the end either way.
pub const TOTAL_COUNT_LIMIT: i64 = 10_000;

/// How many calls match a listing's filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Total {
    pub value: i64,
    /// False when counting stopped at [`TOTAL_COUNT_LIMIT`]: there are at least `value`.
    pub exact: bool,
}

#[derive(Debug)]
pub struct CallsPage {
    pub items: Vec<Call>,
    /// Counted only for page-number paging.
    pub total: Option<Total>,
    pub next_cursor: Option<String>,
}

/// Which calls a listing shows. Each filter that is set narrows it.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub status: Option<CallStatus>,
    /// One phone number's calls (served by `calls_phone_newest`).
    pub phone: Option<PhoneNumber>,
    /// One campaign's calls (served by `calls_campaign_newest`).
    pub campaign_id: Option<Uuid>,
}

pub async fn list_calls(
    pool: &Pool,
    filter: &CallFilter,
    position: &ListPosition,
    page_size: u32,
) -> StoreResult<CallsPage> {
    let client = pool.get().await?;
    let status = filter.status.map(|s| s.as_str());
    let phone = filter.phone.as_ref().map(PhoneNumber::as_str);
    let limit = i64::from(page_size);
    // One statement per combination of filters (each prepared and cached once), so that the
    // planner sees which index serves it: (status, created_at, id), (phone, created_at, id)
    // or (created_at, id).
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    let mut conditions: Vec<String> = Vec::new();
    if let Some(status) = &status {
        params.push(status);
        conditions.push(format!("status = ${}", params.len()));
    }
    if let Some(phone) = &phone {
        params.push(phone);
        conditions.push(format!("phone = ${}", params.len()));
    }
    if let Some(campaign_id) = &filter.campaign_id {
        params.push(campaign_id);
        conditions.push(format!("campaign_id = ${}", params.len()));
    }
    let (rows, total) = match position {
        ListPosition::Page(page) => {
            let offset = i64::from(page.saturating_sub(1)) * limit;
            let filtered = where_clause(&conditions);
            let count_sql = format!(
                "SELECT count(*) FROM (SELECT 1 FROM calls{filtered} LIMIT ${}) AS counted",
                params.len() + 1
            );
            let mut count_params = params.clone();
            count_params.push(&TOTAL_COUNT_LIMIT);
            let list_sql = format!(
                "SELECT {CALL_COLUMNS} FROM calls{filtered} ORDER BY created_at DESC, id DESC \
                 LIMIT ${} OFFSET ${}",
                params.len() + 1,
                params.len() + 2
            );
            params.push(&limit);
            params.push(&offset);
            let rows = query(&client, &list_sql, &params).await?;
            let counted: i64 = query_one(&client, &count_sql, &count_params)
                .await?
                .try_get(0)?;
            let total = Total {
                value: counted,
                exact: counted < TOTAL_COUNT_LIMIT,
            };
            (rows, Some(total))
        }
        ListPosition::After(cursor) => {
            conditions.push(format!(
                "(created_at, id) < (${}, ${})",
                params.len() + 1,
                params.len() + 2
            ));
            params.push(&cursor.created_at);
            params.push(&cursor.id);
            let sql = format!(
                "SELECT {CALL_COLUMNS} FROM calls{} ORDER BY created_at DESC, id DESC LIMIT ${}",
                where_clause(&conditions),
                params.len() + 1
            );
            params.push(&limit);
            (query(&client, &sql, &params).await?, None)
        }
    };
    let items = rows
        .iter()
        .map(call_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let next_cursor =
        ListCursor::after_full_page(&items, page_size, |call| (call.created_at, call.id));
    Ok(CallsPage {
        items,
        total,
        next_cursor,
    })
}

/// ` WHERE a AND b`, or nothing.
fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// The fields a PATCH may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct CallPatch {
    pub phone: Option<PhoneNumber>,
    pub script_id: Option<ScriptId>,
    pub metadata: Option<Metadata>,
    /// `Some(None)` clears the schedule.
    pub scheduled_at: Option<Option<DateTime<Utc>>>,
}

// One value per request, moved once: boxing the call would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Changed {
    Done {
        call: Call,
        enqueue: Option<Enqueue>,
    },
    NotFound,
    /// The call is no longer PENDING.
    NotPending(CallStatus),
    /// The new schedule is not before the call's `expiresAt`.
    ScheduleAfterExpiry,
    /// The new number is on the do-not-call list.
    Suppressed,
    /// The call's window can never be kept for the new number (no zone known for it, or
    /// the window never holds in all of them).
    Invalid(InvalidValue),
}

/// Changes a PENDING call. A new schedule gets a message (as [`create_call`] gives one:
/// when due within the horizon and a slot has room), or parks the call.
///
/// A new number gets its own time zones (when the call's come from its number) and is
/// refused when suppressed; the call's window then applies to the new schedule: a call is
/// never due while its window is closed.
pub async fn patch_call(
    pool: &Pool,
    id: Uuid,
    patch: &CallPatch,
    cap: u32,
    now: DateTime<Utc>,
) -> StoreResult<Changed> {
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    let Some(row) = query_opt(
        &tx,
        "SELECT status, expires_at, attempts, next_run_at, phone, calling_window, timezone, time_zones \
           FROM calls WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await?
    else {
        return Ok(Changed::NotFound);
    };
    let stored_window: Option<serde_json::Value> = row.try_get("calling_window")?;
    let stored_zones: Vec<String> = row.try_get("time_zones")?;
    let mut rules =
        CallRules::from_stored(stored_window.as_ref(), &stored_zones).ok_or_else(|| {
            super::StoreError::Corrupt(format!("call {id}'s calling rules {stored_window:?}"))
        })?;
    let status = super::parse_status(row.try_get("status")?)?;
    if status != CallStatus::Pending {
        return Ok(Changed::NotPending(status));
    }
    let expires_at: Option<DateTime<Utc>> = row.try_get("expires_at")?;
    let attempts: i32 = row.try_get("attempts")?;
    let next_run_at: DateTime<Utc> = row.try_get("next_run_at")?;
    let stored_phone: String = row.try_get("phone")?;
    let new_phone = patch
        .phone
        .as_ref()
        .filter(|phone| phone.as_str() != stored_phone);
    if let Some(phone) = new_phone {
        // Under the number's lock, as a suppression is written.
        execute(
            &tx,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&phone.as_str()],
        )
        .await?;
        if query_opt(
            &tx,
            "SELECT 1 FROM suppressions WHERE phone = $1",
            &[&phone.as_str()],
        )
        .await?
        .is_some()
        {
            return Ok(Changed::Suppressed);
        }
        let timezone: Option<String> = row.try_get("timezone")?;
        if timezone.is_none() {
            rules = match CallRules::resolve(phone, None, rules.window.clone(), now) {
                Ok(rules) => rules,
                Err(invalid) => return Ok(Changed::Invalid(invalid)),
            };
        }
    }
    let (schedule_changed, scheduled_at, new_next_run) = match patch.scheduled_at {
        None => (false, None, next_run_at),
        Some(scheduled) => {
            if let (Some(at), Some(expiry)) = (scheduled, expires_at) {
                if at >= expiry {
                    return Ok(Changed::ScheduleAfterExpiry);
                }
            }
            let wanted = scheduled.unwrap_or(now).max(now);
            // A call backing off keeps its backoff; a fresh one follows the schedule.
            let next = if attempts == 0 {
                wanted
            } else {
                wanted.max(next_run_at)
            };
            (true, scheduled, next)
        }
    };
    // Never due while the window is closed.
    let new_next_run = match (&rules.window, schedule_changed || new_phone.is_some()) {
        (Some(_), true) => {
            let from = new_next_run.max(now);
            match rules.next_allowed(from) {
                Some(opening) if opening > from => opening,
                _ => new_next_run,
            }
        }
        _ => new_next_run,
    };
    let due_changed = schedule_changed || new_next_run != next_run_at;
    let delay = message_delay(Some(new_next_run));
    let due_within_horizon =
        new_next_run - now <= chrono::Duration::seconds(MAX_DELAY.as_secs() as i64);
    // The room check leaves this call's own mark out of the count.
    let sql = format!(
        "UPDATE calls SET phone = COALESCE($2, phone), script_id = COALESCE($3, script_id), \
             metadata = COALESCE($4, metadata), \
             scheduled_at = CASE WHEN $5 THEN $6 ELSE scheduled_at END, \
             next_run_at = $7, time_zones = $11, \
             outbox_due_at = CASE WHEN NOT $DUE_CHANGED THEN outbox_due_at \
                                  WHEN $9 AND (outbox_due_at IS NOT NULL OR {ROOM_FOR_A_MESSAGE}) \
                                  THEN now() + make_interval(secs => $8) END, \
             updated_at = now() \
         WHERE id = $1 RETURNING {CALL_COLUMNS}, outbox_due_at IS NOT NULL AS messaged"
    )
    .replace("$12", "$10")
    .replace("$DUE_CHANGED", "$12");
    let row = query_one(
        &tx,
        &sql,
        &[
            &id,
            &patch.phone.as_ref().map(PhoneNumber::as_str),
            &patch.script_id.as_ref().map(ScriptId::as_str),
            &patch.metadata.as_ref().map(Metadata::to_value),
            &schedule_changed,
            &scheduled_at,
            &new_next_run,
            &seconds(delay),
            &due_within_horizon,
            &(cap as i32),
            &rules.zone_names(),
            &due_changed,
        ],
    )
    .await?;
    tx.commit().await?;
    let call = call_from_row(&row)?;
    // A new schedule needs a message that arrives on time, not when the old one wakes.
    let enqueue = (due_changed && row.try_get::<_, bool>("messaged")?)
        .then_some(Enqueue { call_id: id, delay });
    Ok(Changed::Done { call, enqueue })
}

/// Cancels a PENDING call, with its `call.canceled` event, in one statement.
pub async fn cancel_call(pool: &Pool, id: Uuid) -> StoreResult<Changed> {
    let client = pool.get().await?;
    let sql = format!(
        "WITH canceled AS ( \
             UPDATE calls SET status = 'CANCELED', ended_at = now(), updated_at = now(), outbox_due_at = NULL, \
                    sequence = sequence + 1 \
              WHERE id = $1 AND status = 'PENDING' RETURNING *), \
         event AS ({} RETURNING 1) \
         SELECT {CALL_COLUMNS}, (SELECT count(*) FROM event) AS events FROM canceled",
        super::events::insert_events_sql("$2", "'call.canceled'", "canceled c")
    );
    if let Some(row) = query_opt(&client, &sql, &[&id, &Uuid::now_v7()]).await? {
        return Ok(Changed::Done {
            call: call_from_row(&row)?,
            enqueue: None,
        });
    }
    match query_opt(&client, "SELECT status FROM calls WHERE id = $1", &[&id]).await? {
        None => Ok(Changed::NotFound),
        Some(row) => Ok(Changed::NotPending(super::parse_status(row.try_get(0)?)?)),
    }
}

/// What `/metrics` shows.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub by_status: BTreeMap<CallStatus, i64>,
    /// Slots held: calls in progress, as the cap counts them.
    pub in_progress: i64,
    /// Age of the oldest PENDING call that is due, in seconds.
    pub oldest_due_pending_age_seconds: Option<f64>,
    /// That call.
    pub oldest_due_pending_call_id: Option<Uuid>,
    /// PENDING calls whose SQS message is not confirmed yet.
    pub outbox_unconfirmed: i64,
    /// Dials the provider refused for its account's concurrency limit in the last hour:
    /// above zero, `GLOBAL_CONCURRENCY` is set higher than the account allows.
    pub provider_limited_dials_last_hour: i64,
}

pub async fn metrics(pool: &Pool) -> StoreResult<Metrics> {
    let client = pool.get().await?;
    let rows = query(
        &client,
        "SELECT status, count(*) FROM calls GROUP BY status",
        &[],
    )
    .await?;
    let mut by_status: BTreeMap<CallStatus, i64> =
        CallStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    for row in &rows {
        let status = super::parse_status(row.try_get(0)?)?;
        by_status.insert(status, row.try_get(1)?);
    }
    let row = query_one(
        &client,
        "SELECT (SELECT count(*) FROM call_slots WHERE call_id IS NOT NULL), \
                (SELECT EXTRACT(EPOCH FROM now() - min(next_run_at))::float8 FROM calls \
                  WHERE status = 'PENDING' AND next_run_at <= now()), \
                (SELECT count(*) FROM calls WHERE outbox_due_at IS NOT NULL), \
                (SELECT count(*) FROM call_attempts \
                  WHERE dial_state = 'LIMITED' AND started_at > now() - interval '1 hour') \
              + (SELECT count(*) FROM provider_webhooks \
                  WHERE status = 'LIMITED' AND received_at > now() - interval '1 hour'), \
                (SELECT id FROM calls WHERE status = 'PENDING' AND next_run_at <= now() \
                  ORDER BY next_run_at LIMIT 1)",
        &[],
    )
    .await?;
    Ok(Metrics {
        by_status,
        in_progress: row.try_get(0)?,
        oldest_due_pending_age_seconds: row.try_get(1)?,
        outbox_unconfirmed: row.try_get(2)?,
        provider_limited_dials_last_hour: row.try_get(3)?,
        oldest_due_pending_call_id: row.try_get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let cursor = ListCursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(ListCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(ListCursor::decode("garbage!"), None);
        assert_eq!(ListCursor::decode(""), None);
    }
}
