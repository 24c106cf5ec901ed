//! The webhook endpoints clients register: where events go, which types, and the secret
//! each is signed with.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{execute, query, query_opt, seconds, Pool, StoreError, StoreResult};
use crate::events::EventType;

/// Registered endpoints are capped: each event is delivered to every one of them.
pub const MAX_ENDPOINTS: i64 = 50;

/// An endpoint as clients see it (its secret is shown only when it is made or rotated).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// The event types sent to it; null: every type.
    pub events: Option<Vec<EventType>>,
    /// A disabled endpoint receives nothing (its pending deliveries are FAILED, and kept).
    pub enabled: bool,
    /// Why it was disabled by Ebra (failing for days); null when disabled by a PATCH or
    /// enabled.
    pub disabled_reason: Option<String>,
    /// When its current run of failed deliveries began; null after a success.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until then the previous secret signs too (a second signature), after a rotation.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, enabled, disabled_reason, \
    failing_since, CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END \
    AS previous_secret_expires_at, created_at, updated_at";

fn endpoint_from_row(row: &Row) -> StoreResult<WebhookEndpoint> {
    let types: Option<Vec<String>> = row.try_get("event_types")?;
    Ok(WebhookEndpoint {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        events: types
            .map(|types| {
                types
                    .iter()
                    .map(|t| {
                        t.parse()
                            .map_err(|_| StoreError::Corrupt(format!("event type {t:?}")))
                    })
                    .collect::<StoreResult<Vec<EventType>>>()
            })
            .transpose()?,
        enabled: row.try_get("enabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: row.try_get("failing_since")?,
        previous_secret_expires_at: row.try_get("previous_secret_expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn type_names(types: &Option<Vec<EventType>>) -> Option<Vec<&'static str>> {
    types
        .as_ref()
        .map(|types| types.iter().map(|t| t.as_str()).collect())
}

/// A validated registration.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub description: Option<String>,
    pub events: Option<Vec<EventType>>,
    /// `whsec_...`, made by the caller.
    pub secret: String,
}

#[derive(Debug)]
pub enum EndpointCreated {
    New(WebhookEndpoint),
    /// [`MAX_ENDPOINTS`] are registered already.
    TooMany,
}

pub async fn create_endpoint(pool: &Pool, new: &NewEndpoint) -> StoreResult<EndpointCreated> {
    let client = pool.get().await?;
    let sql = format!(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, secret) \
         SELECT $1, $2, $3, $4, $5 WHERE (SELECT count(*) FROM webhook_endpoints) < $6 \
         RETURNING {ENDPOINT_COLUMNS}"
    );
    let row = query_opt(
        &client,
        &sql,
        &[
            &Uuid::now_v7(),
            &new.url,
            &new.description,
            &type_names(&new.events),
            &new.secret,
            &MAX_ENDPOINTS,
        ],
    )
    .await?;
    match row {
        Some(row) => Ok(EndpointCreated::New(endpoint_from_row(&row)?)),
        None => Ok(EndpointCreated::TooMany),
    }
}

pub async fn list_endpoints(pool: &Pool) -> StoreResult<Vec<WebhookEndpoint>> {
    let client = pool.get().await?;
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id");
    query(&client, &sql, &[])
        .await?
        .iter()
        .map(endpoint_from_row)
        .collect()
}

pub async fn get_endpoint(pool: &Pool, id: Uuid) -> StoreResult<Option<WebhookEndpoint>> {
    let client = pool.get().await?;
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1");
    query_opt(&client, &sql, &[&id])
        .await?
        .as_ref()
        .map(endpoint_from_row)
        .transpose()
}

/// What a PATCH changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    /// `Some(None)` clears it.
    pub description: Option<Option<String>>,
    /// `Some(None)`: every type.
    pub events: Option<Option<Vec<EventType>>>,
    pub enabled: Option<bool>,
}

/// Changes an endpoint. Disabling it fails its pending deliveries (kept, and redeliverable);
/// enabling it clears its failure record.
pub async fn update_endpoint(
    pool: &Pool,
    id: Uuid,
    patch: &EndpointPatch,
) -> StoreResult<Option<WebhookEndpoint>> {
    let mut client = pool.get().await?;
    let tx = super::Transaction::begin(&mut client);
    let sql = format!(
        "UPDATE webhook_endpoints SET url = COALESCE($2, url), \
                description = CASE WHEN $3 THEN $4 ELSE description END, \
                event_types = CASE WHEN $5 THEN $6 ELSE event_types END, \
                enabled = COALESCE($7, enabled), \
                failing_since = CASE WHEN $7 THEN NULL ELSE failing_since END, \
                disabled_reason = CASE WHEN $7 IS NOT NULL THEN NULL ELSE disabled_reason END, \
                updated_at = now() \
          WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
    );
    let events = patch.events.as_ref().map(type_names);
    let row = query_opt(
        &tx,
        &sql,
        &[
            &id,
            &patch.url,
            &patch.description.is_some(),
            &patch.description.clone().flatten(),
            &events.is_some(),
            &events.flatten(),
            &patch.enabled,
        ],
    )
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if patch.enabled == Some(false) {
        fail_pending_deliveries(&tx, &[id], "the endpoint was disabled").await?;
    }
    tx.commit().await?;
    Ok(Some(endpoint_from_row(&row)?))
}

/// FAILED, with `why`, for the pending deliveries of these endpoints.
pub(crate) async fn fail_pending_deliveries<C: super::Executor>(
    client: &C,
    endpoints: &[Uuid],
    why: &str,
) -> StoreResult<u64> {
    execute(
        client,
        "UPDATE webhook_deliveries SET status = 'FAILED', leased_until = NULL, last_error = $2 \
          WHERE endpoint_id = ANY($1) AND status = 'PENDING'",
        &[&endpoints, &why],
    )
    .await
}

/// Removes an endpoint and its deliveries. Whether it existed.
pub async fn delete_endpoint(pool: &Pool, id: Uuid) -> StoreResult<bool> {
    let client = pool.get().await?;
    Ok(execute(
        &client,
        "DELETE FROM webhook_endpoints WHERE id = $1",
        &[&id],
    )
    .await?
        > 0)
}

/// Replaces an endpoint's secret with `new_secret`; the current one keeps signing (a second
/// signature on every delivery) for `grace`. A second rotation within `grace` drops the
/// oldest secret.
pub async fn rotate_secret(
    pool: &Pool,
    id: Uuid,
    new_secret: &str,
    grace: Duration,
) -> StoreResult<Option<WebhookEndpoint>> {
    let client = pool.get().await?;
    let sql = format!(
        "UPDATE webhook_endpoints SET previous_secret = secret, secret = $2, \
                previous_secret_expires_at = now() + make_interval(secs => $3), updated_at = now() \
          WHERE id = $1 RETURNING {ENDPOINT_COLUMNS}"
    );
    query_opt(&client, &sql, &[&id, &new_secret, &seconds(grace)])
        .await?
        .as_ref()
        .map(endpoint_from_row)
        .transpose()
}
