//! The do-not-call list (issue 14): numbers that are never dialed, and the audit trail of
//! every change to it (who, when, how).
//!
//! Every write takes the number's advisory lock, the one [`super::claim`] takes before it
//! checks the list: a claim either committed its dial before the suppression was written,
//! or sees the suppression and cancels the call. Locks are taken in number order, as the
//! claim takes them, so a bulk add and a claim batch cannot deadlock.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{execute, query, query_one, Pool, StoreResult, Transaction};
use crate::domain::PhoneNumber;

/// The longest `reason` kept.
pub const MAX_REASON_CHARS: usize = 500;

/// A number on the list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Suppression {
    /// E.164.
    #[schema(example = "+14155550100")]
    pub phone: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Who added it: the caller's identity when the API knew one.
    pub created_by: Option<String>,
}

/// How a change was made, as the audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    Put,
    Csv,
    Delete,
}

impl ChangeSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Csv => "csv",
            Self::Delete => "delete",
        }
    }
}

/// One entry of a change: the number and its reason.
#[derive(Debug, Clone)]
pub struct SuppressionEntry {
    pub phone: PhoneNumber,
    pub reason: Option<String>,
}

/// What a bulk add did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkAdded {
    /// Numbers newly on the list.
    pub added: u64,
    /// Numbers already on it (their reason replaced when the row gave one).
    pub updated: u64,
}

fn from_row(row: &tokio_postgres::Row) -> StoreResult<Suppression> {
    Ok(Suppression {
        phone: row.try_get("phone")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        created_by: row.try_get("created_by")?,
    })
}

async fn lock_numbers(tx: &Transaction<'_>, phones: &[&str]) -> StoreResult<()> {
    let mut sorted: Vec<&str> = phones.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    execute(
        tx,
        "SELECT pg_advisory_xact_lock(hashtextextended(phone, 0)) \
           FROM unnest($1::text[]) WITH ORDINALITY AS locks(phone, n) ORDER BY n",
        &[&sorted],
    )
    .await?;
    Ok(())
}

/// Adds numbers (or replaces their reasons), with one audit row each, in one transaction.
/// Returns each number's row and whether it was new, in the order given (a number given
/// twice: the last reason wins).
pub async fn add_suppressions(
    pool: &Pool,
    entries: &[SuppressionEntry],
    actor: Option<&str>,
    source: ChangeSource,
) -> StoreResult<Vec<(Suppression, bool)>> {
    let mut client = pool.get().await?;
    let tx = Transaction::begin(&mut client);
    let phones: Vec<&str> = entries.iter().map(|e| e.phone.as_str()).collect();
    lock_numbers(&tx, &phones).await?;
    let mut out = Vec::with_capacity(entries.len());
    // One statement per distinct number keeps ON CONFLICT simple; bulk adds are rare and
    // bounded by the request size.
    for entry in entries {
        let row = query_one(
            &tx,
            "WITH upserted AS ( \
                 INSERT INTO suppressions (phone, reason, created_by) VALUES ($1, $2, $3) \
                 ON CONFLICT (phone) DO UPDATE \
                    SET reason = COALESCE(EXCLUDED.reason, suppressions.reason), updated_at = now() \
                 RETURNING *, (xmax = 0) AS inserted), \
             audit AS ( \
                 INSERT INTO suppression_changes (id, phone, action, reason, actor, source) \
                 SELECT $4, phone, CASE WHEN inserted THEN 'ADDED' ELSE 'UPDATED' END, reason, $3, $5 \
                   FROM upserted RETURNING 1) \
             SELECT upserted.*, (SELECT count(*) FROM audit) AS audited FROM upserted",
            &[
                &entry.phone.as_str(),
                &entry.reason,
                &actor,
                &Uuid::now_v7(),
                &source.as_str(),
            ],
        )
        .await?;
        out.push((from_row(&row)?, row.try_get::<_, bool>("inserted")?));
    }
    tx.commit().await?;
    Ok(out)
}

/// Removes a number, with its audit row. False when it was not on the list.
pub async fn remove_suppression(
    pool: &Pool,
    phone: &PhoneNumber,
    actor: Option<&str>,
) -> StoreResult<bool> {
    let mut client = pool.get().await?;
    let tx = Transaction::begin(&mut client);
    lock_numbers(&tx, &[phone.as_str()]).await?;
    let row = query_one(
        &tx,
        "WITH removed AS (DELETE FROM suppressions WHERE phone = $1 RETURNING phone, reason), \
         audit AS ( \
             INSERT INTO suppression_changes (id, phone, action, reason, actor, source) \
             SELECT $2, phone, 'REMOVED', reason, $3, 'delete' FROM removed RETURNING 1) \
         SELECT count(*) AS removed FROM audit",
        &[&phone.as_str(), &Uuid::now_v7(), &actor],
    )
    .await?;
    let removed: i64 = row.try_get("removed")?;
    tx.commit().await?;
    Ok(removed > 0)
}

/// A number's row, when it is on the list.
pub async fn get_suppression(pool: &Pool, phone: &PhoneNumber) -> StoreResult<Option<Suppression>> {
    let client = pool.get().await?;
    super::query_opt(
        &client,
        "SELECT phone, reason, created_at, updated_at, created_by FROM suppressions WHERE phone = $1",
        &[&phone.as_str()],
    )
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// One page of the list, by number (keyset: after `after`).
pub async fn list_suppressions(
    pool: &Pool,
    after: Option<&str>,
    limit: u32,
) -> StoreResult<(Vec<Suppression>, Option<String>)> {
    let client = pool.get().await?;
    let rows = query(
        &client,
        "SELECT phone, reason, created_at, updated_at, created_by FROM suppressions \
          WHERE $1::text IS NULL OR phone > $1 ORDER BY phone LIMIT $2",
        &[&after, &i64::from(limit)],
    )
    .await?;
    let items = rows.iter().map(from_row).collect::<StoreResult<Vec<_>>>()?;
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|s| s.phone.clone()))
        .flatten();
    Ok((items, next))
}

/// One change of the list, as the audit trail keeps it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionChange {
    pub phone: String,
    /// ADDED, UPDATED or REMOVED.
    pub action: String,
    pub reason: Option<String>,
    pub actor: Option<String>,
    /// put, csv or delete.
    pub source: String,
    pub changed_at: DateTime<Utc>,
}

/// A number's changes, oldest first.
pub async fn suppression_history(
    pool: &Pool,
    phone: &PhoneNumber,
) -> StoreResult<Vec<SuppressionChange>> {
    let client = pool.get().await?;
    let rows = query(
        &client,
        "SELECT phone, action, reason, actor, source, changed_at FROM suppression_changes \
          WHERE phone = $1 ORDER BY changed_at, id",
        &[&phone.as_str()],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(SuppressionChange {
                phone: row.try_get("phone")?,
                action: row.try_get("action")?,
                reason: row.try_get("reason")?,
                actor: row.try_get("actor")?,
                source: row.try_get("source")?,
                changed_at: row.try_get("changed_at")?,
            })
        })
        .collect()
}
