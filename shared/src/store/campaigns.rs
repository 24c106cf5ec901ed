//! Campaigns: create, read (with progress), list, pause, resume, cancel, and their calls
//! added in bulk.
//!
//! Each change of a campaign's state writes its `campaign.*` event in the same transaction
//! (`events::record_campaign_event`): created, paused, resumed and canceled here,
//! completed by the reclaimer's pass ([`complete_finished_campaigns`]). An action that
//! changes nothing (pausing a paused campaign) or is refused writes none.
//!
//! A bulk add is one transaction: the campaign's row is read `FOR SHARE` (so a cancel
//! cannot slip between the check and the insert), and every valid row is inserted by one
//! `INSERT ... SELECT FROM unnest(...)`, with its `call.created` event. Only as many of the
//! new calls get an outbox mark (and so an SQS message) as there are free slots that no
//! message is already on its way to, within the campaign's own limit: the rest are parked,
//! and freed slots' nudges and the reclaimer's refill bring them ([`super::slots`]). SQS
//! traffic follows dials, not the size of the list.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Executor;

use super::calls::ListCursor;
use super::events::record_campaign_event;
use super::{execute, query, query_one, query_opt, Pool, StoreError, StoreResult};
use crate::domain::{CallStatus, Metadata, PhoneNumber, ScriptId};
use crate::events::EventType;

/// What the operator chose for a campaign, and what the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CampaignStatus {
    /// Its calls are dialed.
    Active,
    /// Its waiting calls are not claimed; calls in progress finish.
    Paused,
    /// Its PENDING calls were canceled; it takes no new calls.
    Canceled,
    /// Active, with nothing left to dial (no call PENDING or IN_PROGRESS). Adding calls
    /// makes it ACTIVE again.
    Completed,
}

impl CampaignStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Active => "ACTIVE",
            CampaignStatus::Paused => "PAUSED",
            CampaignStatus::Canceled => "CANCELED",
            CampaignStatus::Completed => "COMPLETED",
        }
    }

    fn from_stored(raw: &str, open_calls: bool) -> StoreResult<Self> {
        match raw {
            "ACTIVE" if open_calls => Ok(CampaignStatus::Active),
            "ACTIVE" => Ok(CampaignStatus::Completed),
            "PAUSED" => Ok(CampaignStatus::Paused),
            "CANCELED" => Ok(CampaignStatus::Canceled),
            other => Err(StoreError::Corrupt(format!("campaign status {other:?}"))),
        }
    }
}

/// A campaign as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Campaign {
    pub id: Uuid,
    pub name: String,
    /// The default `scriptId` of its calls.
    pub script_id: Option<String>,
    /// Its most calls in progress at once (within the global cap); null: no limit of its
    /// own.
    pub max_concurrency: Option<i32>,
    /// The default `expiresAt` of its calls.
    pub expires_at: Option<DateTime<Utc>>,
    /// The default `callbackUrl` of its calls.
    pub callback_url: Option<String>,
    /// Its calls' calling window when a call has none of its own (before `CALL_WINDOW`).
    #[serde(default)]
    pub window: Option<crate::rules::WindowSpec>,
    pub status: CampaignStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub canceled_at: Option<DateTime<Utc>>,
    /// When its latest `campaign.completed` event was written (its calls had all ended);
    /// null before, and again from the reclaimer's first pass after calls are added to it.
    pub completed_at: Option<DateTime<Utc>>,
    /// How many events the campaign has had (`campaign.*`): its latest event carries this
    /// value; receivers order a campaign's events by it.
    pub sequence: i64,
}

/// Columns read for a [`Campaign`]; `open` tells ACTIVE from COMPLETED (an index probe).
const CAMPAIGN_COLUMNS: &str = "k.id, k.name, k.script_id, k.max_concurrency, k.expires_at, \
    k.callback_url, k.calling_window, k.status, k.created_at, k.updated_at, k.canceled_at, \
    k.completed_at, k.sequence, \
    EXISTS (SELECT 1 FROM calls o WHERE o.campaign_id = k.id \
             AND o.status IN ('PENDING', 'IN_PROGRESS')) AS open";

fn campaign_from_row(row: &tokio_postgres::Row) -> StoreResult<Campaign> {
    let status: String = row.try_get("status")?;
    Ok(Campaign {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        script_id: row.try_get("script_id")?,
        max_concurrency: row.try_get("max_concurrency")?,
        expires_at: row.try_get("expires_at")?,
        callback_url: row.try_get("callback_url")?,
        window: row
            .try_get::<_, Option<serde_json::Value>>("calling_window")?
            .map(|value| {
                serde_json::from_value(value.clone())
                    .map_err(|_| StoreError::Corrupt(format!("campaign calling window {value}")))
            })
            .transpose()?,
        status: CampaignStatus::from_stored(&status, row.try_get("open")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        canceled_at: row.try_get("canceled_at")?,
        completed_at: row.try_get("completed_at")?,
        sequence: row.try_get("sequence")?,
    })
}

/// A campaign and where it stands: what `GET /campaigns/{id}` shows, and the `data` of a
/// campaign's events.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CampaignWithProgress {
    #[serde(flatten)]
    pub campaign: Campaign,
    pub progress: CampaignProgress,
}

/// The campaign with its progress, read through `client` (a transaction sees its own
/// changes); `None` when there is no such campaign.
pub(crate) async fn snapshot_of<C: Executor>(
    client: &C,
    id: Uuid,
) -> StoreResult<Option<CampaignWithProgress>> {
    let Some(campaign) = read_campaign(client, id).await? else {
        return Ok(None);
    };
    let progress = progress_of(client, id).await?;
    Ok(Some(CampaignWithProgress { campaign, progress }))
}

async fn read_campaign<C: Executor>(client: &C, id: Uuid) -> StoreResult<Option<Campaign>> {
    let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns k WHERE k.id = $1");
    query_opt(client, &sql, &[&id])
        .await?
        .map(|row| campaign_from_row(&row))
        .transpose()
}

/// A validated `POST /campaigns`.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub name: String,
    pub script_id: Option<ScriptId>,
    pub max_concurrency: Option<u32>,
    pub expires_at: Option<DateTime<Utc>>,
    pub callback_url: Option<String>,
    pub window: Option<crate::rules::CallingWindow>,
}

/// Creates a campaign with its `campaign.created` event (sequence 1), in one transaction.
pub async fn create_campaign(pool: &Pool, new: &NewCampaign) -> StoreResult<Campaign> {
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    let id = Uuid::now_v7();
    execute(
        &tx,
        "INSERT INTO campaigns (id, name, script_id, max_concurrency, expires_at, callback_url, \
                                calling_window, sequence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
        &[
            &id,
            &new.name,
            &new.script_id.as_ref().map(ScriptId::as_str),
            &new.max_concurrency.map(|n| n as i32),
            &new.expires_at,
            &new.callback_url,
            &new.window
                .as_ref()
                .map(crate::rules::CallingWindow::to_json),
        ],
    )
    .await?;
    let snapshot = record_campaign_event(&tx, id, EventType::CampaignCreated).await?;
    tx.commit().await?;
    Ok(snapshot.campaign)
}

pub async fn get_campaign(pool: &Pool, id: Uuid) -> StoreResult<Option<Campaign>> {
    let client = pool.get().await?;
    read_campaign(&client, id).await
}

/// Campaigns newest first, `page_size` at a time after `after` (keyset paging).
pub async fn list_campaigns(
    pool: &Pool,
    after: Option<ListCursor>,
    page_size: u32,
) -> StoreResult<(Vec<Campaign>, Option<String>)> {
    let client = pool.get().await?;
    let limit = i64::from(page_size);
    let rows = match after {
        None => {
            let sql = format!(
                "SELECT {CAMPAIGN_COLUMNS} FROM campaigns k \
                  ORDER BY k.created_at DESC, k.id DESC LIMIT $1"
            );
            query(&client, &sql, &[&limit]).await?
        }
        Some(cursor) => {
            let sql = format!(
                "SELECT {CAMPAIGN_COLUMNS} FROM campaigns k \
                  WHERE (k.created_at, k.id) < ($1, $2) \
                  ORDER BY k.created_at DESC, k.id DESC LIMIT $3"
            );
            query(&client, &sql, &[&cursor.created_at, &cursor.id, &limit]).await?
        }
    };
    let items = rows
        .iter()
        .map(campaign_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let next = ListCursor::after_full_page(&items, page_size, |campaign| {
        (campaign.created_at, campaign.id)
    });
    Ok((items, next))
}

/// Failures of a campaign that share a status, an outcome and an error.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureGroup {
    /// FAILED or EXPIRED.
    pub status: CallStatus,
    /// What the provider reported for the last dial, if anything.
    pub outcome: Option<String>,
    pub last_error: Option<String>,
    pub calls: i64,
}

/// What `GET /campaigns/{id}` shows beyond the campaign itself.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignProgress {
    /// Calls per status, every status present.
    #[schema(value_type = Object)]
    pub calls: std::collections::BTreeMap<String, i64>,
    pub total: i64,
    /// Calls in progress now, against `maxConcurrency` (null: the global cap only).
    pub in_progress: i64,
    pub max_concurrency: Option<i32>,
    /// Dials placed for its calls in the last hour.
    pub dials_last_hour: i64,
    /// Seconds until its PENDING and IN_PROGRESS calls are done, at the dial rate of the
    /// last hour (of its life, when younger); null when nothing is left or nothing was
    /// dialed in the last hour.
    pub eta_seconds: Option<f64>,
    /// Its failed and expired calls, grouped by outcome and last error (largest first, at
    /// most 20 groups).
    pub failures: Vec<FailureGroup>,
}

pub async fn campaign_progress(pool: &Pool, id: Uuid) -> StoreResult<CampaignProgress> {
    let client = pool.get().await?;
    progress_of(&client, id).await
}

async fn progress_of<C: Executor>(client: &C, id: Uuid) -> StoreResult<CampaignProgress> {
    let rows = query(
        client,
        "SELECT status, count(*) FROM calls WHERE campaign_id = $1 GROUP BY status",
        &[&id],
    )
    .await?;
    let mut calls: std::collections::BTreeMap<String, i64> = CallStatus::ALL
        .into_iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for row in &rows {
        let status: String = row.try_get(0)?;
        calls.insert(status, row.try_get(1)?);
    }
    let total = calls.values().sum();
    let row = query_one(
        client,
        "SELECT (SELECT max_concurrency FROM campaigns WHERE id = $1), \
                (SELECT LEAST(3600, EXTRACT(EPOCH FROM now() - created_at))::float8 \
                   FROM campaigns WHERE id = $1) AS window_seconds, \
                (SELECT count(*) FROM call_attempts a \
                  WHERE a.call_id IN (SELECT id FROM calls WHERE campaign_id = $1 \
                                        AND started_at > now() - interval '1 hour') \
                    AND a.started_at > now() - interval '1 hour')",
        &[&id],
    )
    .await?;
    let max_concurrency: Option<i32> = row.try_get(0)?;
    let window_seconds: Option<f64> = row.try_get(1)?;
    let dials_last_hour: i64 = row.try_get(2)?;
    let failures = query(
        client,
        "SELECT status, outcome, last_error, count(*) AS calls FROM calls \
          WHERE campaign_id = $1 AND status IN ('FAILED', 'EXPIRED') \
          GROUP BY status, outcome, last_error ORDER BY count(*) DESC, last_error LIMIT 20",
        &[&id],
    )
    .await?
    .iter()
    .map(|row| {
        Ok(FailureGroup {
            status: super::parse_status(row.try_get("status")?)?,
            outcome: row.try_get("outcome")?,
            last_error: row.try_get("last_error")?,
            calls: row.try_get("calls")?,
        })
    })
    .collect::<StoreResult<Vec<_>>>()?;
    let in_progress = calls.get("IN_PROGRESS").copied().unwrap_or(0);
    let left = calls.get("PENDING").copied().unwrap_or(0) + in_progress;
    // The rate over the last hour, or over the campaign's life when it is younger.
    let window = window_seconds.unwrap_or(3600.0).max(1.0);
    let eta_seconds = (left > 0 && dials_last_hour > 0)
        .then(|| (left as f64 * window / dials_last_hour as f64).round());
    Ok(CampaignProgress {
        calls,
        total,
        in_progress,
        max_concurrency,
        dials_last_hour,
        eta_seconds,
        failures,
    })
}

/// What a pause, resume or cancel did.
#[derive(Debug)]
pub enum CampaignChanged {
    /// Its status changed, and its event was written.
    Done(Box<Campaign>),
    /// It already had that status (pausing a paused campaign): nothing written.
    Unchanged(Box<Campaign>),
    NotFound,
    /// The campaign is canceled: nothing changes it any more.
    Canceled,
}

/// Pauses (`paused = true`) or resumes a campaign, with its `campaign.paused` or
/// `campaign.resumed` event, in one transaction. Pausing stops new claims of its calls (the
/// claim reads the status); resuming lets them be claimed again (the caller then refills
/// free slots, [`super::sweep::refill_free_slots`], to bring its parked calls). A campaign
/// that already has that status is left as it is, with no event.
pub async fn set_campaign_paused(
    pool: &Pool,
    id: Uuid,
    paused: bool,
) -> StoreResult<CampaignChanged> {
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    // The lock the UPDATE takes, taken first: the status read is the one changed.
    let Some(row) = query_opt(
        &tx,
        "SELECT status FROM campaigns WHERE id = $1 FOR NO KEY UPDATE",
        &[&id],
    )
    .await?
    else {
        return Ok(CampaignChanged::NotFound);
    };
    let current: String = row.try_get("status")?;
    let (target, kind) = if paused {
        ("PAUSED", EventType::CampaignPaused)
    } else {
        ("ACTIVE", EventType::CampaignResumed)
    };
    if current == "CANCELED" {
        return Ok(CampaignChanged::Canceled);
    }
    if current == target {
        let campaign = read_campaign(&tx, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("campaign {id} vanished while locked")))?;
        tx.commit().await?;
        return Ok(CampaignChanged::Unchanged(Box::new(campaign)));
    }
    execute(
        &tx,
        "UPDATE campaigns SET status = $2, updated_at = now(), sequence = sequence + 1 \
          WHERE id = $1",
        &[&id, &target],
    )
    .await?;
    let snapshot = record_campaign_event(&tx, id, kind).await?;
    tx.commit().await?;
    Ok(CampaignChanged::Done(Box::new(snapshot.campaign)))
}

/// Cancels a campaign: its status and all its PENDING calls, each CANCELED with its
/// `call.canceled` event and its `sequence` incremented, then the campaign's own
/// `campaign.canceled` event (its progress counting those calls CANCELED), in one
/// transaction (the calls in one statement). Calls in progress finish. Returns the campaign
/// and how many calls were canceled; canceling a canceled campaign again cancels nothing
/// more (0) and writes no campaign event.
///
/// A claim running at the same time either claimed a call first (it is IN_PROGRESS and
/// finishes) or leaves it PENDING, and then this statement, which waits for the claim's row
/// locks, cancels it.
pub async fn cancel_campaign(pool: &Pool, id: Uuid) -> StoreResult<(CampaignChanged, u64)> {
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    let Some(row) = query_opt(
        &tx,
        "SELECT status = 'CANCELED' AS canceled FROM campaigns WHERE id = $1 FOR NO KEY UPDATE",
        &[&id],
    )
    .await?
    else {
        return Ok((CampaignChanged::NotFound, 0));
    };
    let already: bool = row.try_get("canceled")?;
    if !already {
        execute(
            &tx,
            "UPDATE campaigns SET status = 'CANCELED', canceled_at = now(), updated_at = now(), \
                    sequence = sequence + 1 \
              WHERE id = $1",
            &[&id],
        )
        .await?;
    }
    let canceled = cancel_pending_calls_of(&tx, id).await?;
    let changed = if already {
        let campaign = read_campaign(&tx, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("campaign {id} vanished while locked")))?;
        CampaignChanged::Unchanged(Box::new(campaign))
    } else {
        let snapshot = record_campaign_event(&tx, id, EventType::CampaignCanceled).await?;
        CampaignChanged::Done(Box::new(snapshot.campaign))
    };
    tx.commit().await?;
    Ok((changed, canceled))
}

/// Marks a campaign reported completed as having new calls, in the transaction that added
/// them (which holds the campaign `FOR SHARE`, read after any completion that committed):
/// the reclaimer's next pass clears its `completed_at`, so that a new `campaign.completed`
/// follows once they have ended. Costs nothing to an add to a campaign not completed.
pub(crate) async fn reopen<C: Executor>(client: &C, campaign_id: Uuid) -> StoreResult<()> {
    execute(
        client,
        "INSERT INTO campaign_reopened (campaign_id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&campaign_id],
    )
    .await?;
    Ok(())
}

/// Campaigns completed per pass (the rest wait for the next one).
pub const COMPLETE_BATCH: i64 = 100;

/// SQL: the campaign of alias `k` has ended — ACTIVE, not reported completed yet, with at
/// least one call and none PENDING or IN_PROGRESS (two probes of `calls_campaign_status`).
const FINISHED: &str = "k.status = 'ACTIVE' AND k.completed_at IS NULL \
     AND EXISTS (SELECT 1 FROM calls c WHERE c.campaign_id = k.id) \
     AND NOT EXISTS (SELECT 1 FROM calls o WHERE o.campaign_id = k.id \
                      AND o.status IN ('PENDING', 'IN_PROGRESS'))";

/// The reclaimer's step: every ACTIVE campaign whose calls have all ended (at least one
/// call, none PENDING or IN_PROGRESS) gets its `completed_at` and its `campaign.completed`
/// event, in one transaction, at most `limit` per call. Marked once: a campaign with
/// `completed_at` is not looked at again, so two passes (or two reclaimers) write one
/// event. Calls added to it later reopen it (`reopen`): this step first clears the
/// `completed_at` of the campaigns reopened, so each time the calls added have all ended,
/// one more `campaign.completed` follows (with the campaign's next sequence).
///
/// The campaigns are taken `FOR NO KEY UPDATE SKIP LOCKED`, so one that a call is being
/// added to (its `FOR SHARE` held until that insert commits) is left for the next pass, and
/// then checked again in a fresh snapshot: a call committed meanwhile keeps it open. An add
/// that waited for this lock reads the `completed_at` written here, and reopens the
/// campaign. This costs the hot path nothing: settling a call does not look at its campaign.
pub async fn complete_finished_campaigns(pool: &Pool, limit: i64) -> StoreResult<Vec<Campaign>> {
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    let reopened: Vec<Uuid> = query(
        &tx,
        "SELECT k.id FROM campaigns k JOIN campaign_reopened r ON r.campaign_id = k.id \
          ORDER BY k.id LIMIT $1 FOR NO KEY UPDATE OF k SKIP LOCKED",
        &[&limit],
    )
    .await?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, _>>()?;
    if !reopened.is_empty() {
        execute(
            &tx,
            "UPDATE campaigns SET completed_at = NULL WHERE id = ANY($1)",
            &[&reopened],
        )
        .await?;
        execute(
            &tx,
            "DELETE FROM campaign_reopened WHERE campaign_id = ANY($1)",
            &[&reopened],
        )
        .await?;
        for id in &reopened {
            tracing::info!(campaign_id = %id, "campaign reopened: calls were added after its campaign.completed");
        }
    }
    let candidates: Vec<Uuid> = query(
        &tx,
        &format!(
            "SELECT k.id FROM campaigns k WHERE {FINISHED} \
              ORDER BY k.id LIMIT $1 FOR NO KEY UPDATE OF k SKIP LOCKED"
        ),
        &[&limit],
    )
    .await?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, _>>()?;
    if candidates.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    // A new statement, a new snapshot: checked again with what committed since.
    let finished: Vec<Uuid> = query(
        &tx,
        &format!(
            "UPDATE campaigns k SET completed_at = now(), sequence = k.sequence + 1 \
              WHERE k.id = ANY($1) AND {FINISHED} RETURNING k.id"
        ),
        &[&candidates],
    )
    .await?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, _>>()?;
    let mut completed = Vec::with_capacity(finished.len());
    for id in finished {
        let snapshot = record_campaign_event(&tx, id, EventType::CampaignCompleted).await?;
        completed.push(snapshot.campaign);
    }
    tx.commit().await?;
    Ok(completed)
}

/// Every PENDING call of a campaign CANCELED, with its event, in one statement.
pub(crate) async fn cancel_pending_calls_of<C: super::Executor>(
    client: &C,
    campaign_id: Uuid,
) -> StoreResult<u64> {
    let sql = format!(
        "WITH canceled AS ( \
             UPDATE calls SET status = 'CANCELED', ended_at = now(), updated_at = now(), \
                    outbox_due_at = NULL, nudged_at = NULL, sequence = sequence + 1, \
                    last_error = COALESCE(last_error || '; ', '') || 'campaign canceled' \
              WHERE campaign_id = $1 AND status = 'PENDING' RETURNING *), \
         event AS ({} RETURNING 1) \
         SELECT (SELECT count(*) FROM canceled) AS canceled, (SELECT count(*) FROM event) AS events",
        super::events::insert_events_sql("gen_random_uuid()", "'call.canceled'", "canceled c")
    );
    let row = query_one(client, &sql, &[&campaign_id]).await?;
    let canceled: i64 = row.try_get("canceled")?;
    let events: i64 = row.try_get("events")?;
    if canceled != events {
        return Err(StoreError::Corrupt(format!(
            "canceling a campaign canceled {canceled} calls and wrote {events} events"
        )));
    }
    Ok(canceled as u64)
}

/// One valid row of a bulk add, with the campaign's defaults applied.
#[derive(Debug, Clone)]
pub struct BulkCall {
    pub phone: PhoneNumber,
    pub script_id: ScriptId,
    pub metadata: Metadata,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub callback_url: Option<String>,
    /// Its calling rules, resolved (the deployment's `CALL_WINDOW` in the number's zones).
    pub rules: crate::rules::CallRules,
    /// When its window next opens, when it is closed at its due time.
    pub window_opens_at: Option<DateTime<Utc>>,
    /// The row's idempotency key (the client's, or derived from the campaign and the row's
    /// content) and a hash of the row.
    pub idempotency_key: String,
    pub request_hash: String,
}

/// What became of one row of a bulk add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkOutcome {
    Created(Uuid),
    /// The key was seen before with the same row: the existing call.
    Duplicate(Uuid),
    /// The key was seen before with a different row (or in another campaign).
    KeyReused,
    /// The number is on the do-not-call list: nothing was written.
    Suppressed,
}

#[derive(Debug)]
pub enum BulkAdded {
    /// One outcome per row, in order, and the messages to send for the calls that can be
    /// dialed now.
    Done {
        outcomes: Vec<BulkOutcome>,
        enqueue: Vec<crate::queue::Enqueue>,
    },
    NotFound,
    Canceled,
}

/// The advisory lock bulk adds take turns on while there are free slots to message (an
/// arbitrary key, 'bulk' in ASCII).
const BULK_ROOM_LOCK: i64 = 0x6275_6c6b;

/// Adds calls to a campaign in one transaction: the rows are inserted by one statement
/// (rows whose key exists are left out and answered from the existing call). `cap` is
/// `GLOBAL_CONCURRENCY`.
pub async fn add_campaign_calls(
    pool: &Pool,
    campaign_id: Uuid,
    rows: &[BulkCall],
    max_attempts: u32,
    cap: u32,
) -> StoreResult<BulkAdded> {
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    // FOR SHARE: a cancel (FOR UPDATE, by its UPDATE) waits for this insert, and then
    // cancels what it inserted; or it went first, and this sees CANCELED.
    let Some(campaign) = query_opt(
        &tx,
        "SELECT status, max_concurrency, completed_at IS NOT NULL AS completed, \
                (SELECT count(*) FROM calls WHERE campaign_id = $1 AND status = 'IN_PROGRESS') AS in_progress \
           FROM campaigns WHERE id = $1 FOR SHARE",
        &[&campaign_id],
    )
    .await?
    else {
        return Ok(BulkAdded::NotFound);
    };
    let status: String = campaign.try_get("status")?;
    if status == "CANCELED" {
        return Ok(BulkAdded::Canceled);
    }
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(BulkAdded::Done {
            outcomes: Vec::new(),
            enqueue: Vec::new(),
        });
    }
    // How many of the new calls get a message now: free slots no message is on its way to
    // (both counted up to the cap), within the campaign's own limit; none while paused.
    let room: i64 = if status == "PAUSED" {
        0
    } else {
        let room_sql = format!("SELECT GREATEST(0, {})", super::calls::ROOM_COUNT);
        let mut global: i64 = query_one(&tx, &room_sql, &[&(cap as i32)])
            .await?
            .try_get(0)?;
        if global > 0 {
            // Concurrent bulk adds would each see the same free slots (neither sees the
            // other's marks before it commits) and together message several times the
            // cap: while there is room, they take turns, and each counts again after the
            // one before it committed. Without room nothing is marked, and they do not wait.
            execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&BULK_ROOM_LOCK]).await?;
            global = query_one(&tx, &room_sql, &[&(cap as i32)])
                .await?
                .try_get(0)?;
        }
        let max_concurrency: Option<i32> = campaign.try_get("max_concurrency")?;
        let in_progress: i64 = campaign.try_get("in_progress")?;
        match max_concurrency {
            Some(max) => global.min((i64::from(max) - in_progress).max(0)),
            None => global,
        }
    };
    let n = rows.len();
    let mut ids = Vec::with_capacity(n);
    let mut phones = Vec::with_capacity(n);
    let mut scripts = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut scheduled = Vec::with_capacity(n);
    let mut expires = Vec::with_capacity(n);
    let mut callbacks = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut windows = Vec::with_capacity(n);
    let mut zones = Vec::with_capacity(n);
    let mut opens = Vec::with_capacity(n);
    for row in rows {
        windows.push(row.rules.window_json());
        zones.push(serde_json::json!(row.rules.zone_names()));
        opens.push(row.window_opens_at);
        ids.push(Uuid::now_v7());
        phones.push(row.phone.as_str());
        scripts.push(row.script_id.as_str());
        metadata.push(row.metadata.to_value());
        scheduled.push(row.scheduled_at);
        expires.push(row.expires_at);
        callbacks.push(row.callback_url.as_deref());
        keys.push(row.idempotency_key.as_str());
        hashes.push(row.request_hash.as_str());
    }
    // Only calls due now take a message here (up to `room`, in row order); a scheduled
    // one is parked, and the refill gives it a delayed message when it comes within
    // SQS's delay horizon.
    let sql = format!(
        "WITH input AS ( \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::timestamptz[], \
                                  $6::timestamptz[], $7::text[], $8::text[], $9::text[], \
                                  $13::jsonb[], $14::jsonb[], $15::timestamptz[]) \
                 WITH ORDINALITY AS r(id, phone, script_id, metadata, scheduled_at, expires_at, \
                                      callback_url, idempotency_key, request_hash, calling_window, \
                                      zones, opens_at, n)), \
         created AS ( \
             INSERT INTO calls (id, phone, script_id, metadata, max_attempts, scheduled_at, expires_at, \
                 next_run_at, outbox_due_at, idempotency_key, request_hash, callback_url, campaign_id, sequence, \
                 calling_window, time_zones) \
             SELECT r.id, r.phone, r.script_id, r.metadata, $10::int4, r.scheduled_at, r.expires_at, \
                    GREATEST(now(), COALESCE(r.scheduled_at, now()), COALESCE(r.opens_at, '-infinity')), \
                    CASE WHEN (r.scheduled_at IS NULL OR r.scheduled_at <= now()) AND r.opens_at IS NULL \
                          AND r.n <= $11 THEN now() END, \
                    r.idempotency_key, r.request_hash, r.callback_url, $12, 1, \
                    r.calling_window, ARRAY(SELECT jsonb_array_elements_text(r.zones)) \
               FROM input r \
              WHERE NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.phone = r.phone) \
              ORDER BY r.n \
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
             RETURNING *), \
         event AS ({} RETURNING 1) \
         SELECT c.id, c.idempotency_key, c.outbox_due_at IS NOT NULL AS messaged, \
                (SELECT count(*) FROM event) AS events \
           FROM created c",
        super::events::insert_events_sql("gen_random_uuid()", "'call.created'", "created c")
    );
    let inserted = query(
        &tx,
        &sql,
        &[
            &ids,
            &phones,
            &scripts,
            &metadata,
            &scheduled,
            &expires,
            &callbacks,
            &keys,
            &hashes,
            &(max_attempts as i32),
            &room,
            &campaign_id,
            &windows,
            &zones,
            &opens,
        ],
    )
    .await?;
    if let Some(first) = inserted.first() {
        let events: i64 = first.try_get("events")?;
        if events != inserted.len() as i64 {
            return Err(StoreError::Corrupt(format!(
                "a bulk add created {} calls and wrote {events} events",
                inserted.len()
            )));
        }
    }
    let mut created: std::collections::HashMap<String, Uuid> =
        std::collections::HashMap::with_capacity(inserted.len());
    let mut enqueue = Vec::new();
    for row in &inserted {
        let id: Uuid = row.try_get("id")?;
        created.insert(row.try_get("idempotency_key")?, id);
        if row.try_get::<_, bool>("messaged")? {
            enqueue.push(crate::queue::Enqueue::now(id));
        }
    }
    if !inserted.is_empty() && campaign.try_get::<_, bool>("completed")? {
        reopen(&tx, campaign_id).await?;
    }
    // The rows whose key existed: ON CONFLICT waited for their transactions, so the rows
    // are visible now.
    let existing_keys: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|key| !created.contains_key(*key))
        .collect();
    let mut existing: std::collections::HashMap<String, (Uuid, String, Option<Uuid>)> =
        Default::default();
    if !existing_keys.is_empty() {
        for row in query(
            &tx,
            "SELECT id, idempotency_key, request_hash, campaign_id FROM calls \
              WHERE idempotency_key = ANY($1)",
            &[&existing_keys],
        )
        .await?
        {
            existing.insert(
                row.try_get("idempotency_key")?,
                (
                    row.try_get("id")?,
                    row.try_get::<_, Option<String>>("request_hash")?
                        .unwrap_or_default(),
                    row.try_get("campaign_id")?,
                ),
            );
        }
    }
    tx.commit().await?;
    let outcomes = rows
        .iter()
        .map(|row| {
            if let Some(id) = created.get(&row.idempotency_key) {
                return Ok(BulkOutcome::Created(*id));
            }
            match existing.get(&row.idempotency_key) {
                Some((id, hash, campaign))
                    if *hash == row.request_hash && *campaign == Some(campaign_id) =>
                {
                    Ok(BulkOutcome::Duplicate(*id))
                }
                Some(_) => Ok(BulkOutcome::KeyReused),
                // Left out by the statement: its number is on the do-not-call list.
                None => Ok(BulkOutcome::Suppressed),
            }
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(BulkAdded::Done { outcomes, enqueue })
}

/// Calls pending and in progress per campaign, for `/metrics`: the 200 newest campaigns
/// not canceled, each counted through the `calls_campaign_status` index.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignCounts {
    pub id: Uuid,
    pub name: String,
    pub status: CampaignStatus,
    pub pending: i64,
    pub in_progress: i64,
    pub max_concurrency: Option<i32>,
}

pub async fn campaign_counts(pool: &Pool) -> StoreResult<Vec<CampaignCounts>> {
    let client = pool.get().await?;
    let rows = query(
        &client,
        "SELECT k.id, k.name, k.status, k.max_concurrency, p.pending, i.in_progress \
           FROM (SELECT * FROM campaigns WHERE status <> 'CANCELED' \
                  ORDER BY created_at DESC LIMIT 200) k \
           CROSS JOIN LATERAL (SELECT count(*) AS pending FROM calls \
                                WHERE campaign_id = k.id AND status = 'PENDING') p \
           CROSS JOIN LATERAL (SELECT count(*) AS in_progress FROM calls \
                                WHERE campaign_id = k.id AND status = 'IN_PROGRESS') i \
          ORDER BY k.created_at DESC",
        &[],
    )
    .await?;
    rows.iter()
        .map(|row| {
            let pending: i64 = row.try_get("pending")?;
            let in_progress: i64 = row.try_get("in_progress")?;
            let status: String = row.try_get("status")?;
            Ok(CampaignCounts {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                status: CampaignStatus::from_stored(&status, pending + in_progress > 0)?,
                pending,
                in_progress,
                max_concurrency: row.try_get("max_concurrency")?,
            })
        })
        .collect()
}
