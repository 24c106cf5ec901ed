//! What every scenario stands on: a fresh database per scenario, the run's SQS endpoints and
//! fresh queues on them, a configuration, Postgres' commit counter, and valid phone
//! numbers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use ebra_shared::queue::CallsQueue;

use crate::local::LocalSqs;
use ebra_shared::store::Pool;
use ebra_shared::Config;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// The server the bench creates its databases on (its `postgres` database is used to
/// create and drop them, and to read the statistics).
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Signs the simulator's webhooks in the bench.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

/// The SQS endpoints of one bench run, each started when a scenario first needs it and
/// stopped at the end: the embedded endpoint, which scenarios measuring Ebra use by default
/// (`EBRA_BENCH_SQS=moto` puts them on moto), and moto, for the scenarios that measure
/// against it (the one at `AWS_ENDPOINT_URL_SQS` when it answers, else one started here).
#[derive(Default)]
pub struct BenchSqs {
    embedded: tokio::sync::OnceCell<LocalSqs>,
    moto: tokio::sync::OnceCell<LocalSqs>,
}

impl BenchSqs {
    pub async fn embedded(&self) -> anyhow::Result<&LocalSqs> {
        self.embedded.get_or_try_init(LocalSqs::embedded).await
    }

    pub async fn moto(&self) -> anyhow::Result<&LocalSqs> {
        self.moto
            .get_or_try_init(LocalSqs::moto)
            .await
            .context("starting moto for the scenarios that measure against it")
    }

    /// Where scenarios that measure Ebra's own work put their queues.
    pub async fn default_endpoint(&self) -> anyhow::Result<&LocalSqs> {
        match std::env::var("EBRA_BENCH_SQS").as_deref().map(str::trim) {
            Ok("moto") => self.moto().await,
            Ok("embedded" | "") | Err(_) => self.embedded().await,
            Ok(other) => anyhow::bail!("EBRA_BENCH_SQS={other:?}: expected `embedded` or `moto`"),
        }
    }

    pub async fn stop(self) {
        if let Some(sqs) = self.embedded.into_inner() {
            sqs.stop().await;
        }
        if let Some(sqs) = self.moto.into_inner() {
            sqs.stop().await;
        }
    }
}

/// A connection to the admin database, its driver running in the background.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.with_context(|| {
        format!(
            "connecting to Postgres ({})",
            ebra_shared::config::redact_url(url)
        )
    })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "bench admin connection closed");
        }
    });
    Ok(client)
}

/// A database of its own for one scenario: created and migrated, dropped by [`Self::drop`].
pub struct BenchDatabase {
    pub name: String,
    pub url: String,
    pub pool: Pool,
    admin_url: String,
    /// Commits made by [`Self::settled_commits`]' own flush requests.
    flush_commits: AtomicI64,
}

impl BenchDatabase {
    pub async fn create(pool_size: usize) -> anyhow::Result<Self> {
        let admin_url = admin_url();
        let name = format!("ebra_bench_{}", Uuid::new_v4().simple());
        let url = with_dbname(&admin_url, &name);
        ebra_shared::db::ensure_database(&url)
            .await
            .with_context(|| {
                format!(
                    "creating the bench database on {} (set TEST_DATABASE_URL)",
                    ebra_shared::config::redact_url(&admin_url)
                )
            })?;
        let pool = ebra_shared::db::pool(&url, pool_size)?;
        let database = Self {
            name,
            url,
            pool,
            admin_url,
            flush_commits: AtomicI64::new(0),
        };
        if let Err(error) = ebra_shared::db::migrate(&database.pool).await {
            database.drop().await;
            return Err(error.context("migrating the bench database"));
        }
        Ok(database)
    }

    /// Closes the pool and drops the database (forcing out any connection left).
    pub async fn drop(self) {
        self.pool.close();
        if std::env::var_os("EBRA_BENCH_KEEP_DATABASES").is_some() {
            println!(
                "   kept the bench database {} (EBRA_BENCH_KEEP_DATABASES)",
                self.name
            );
            return;
        }
        let result = async {
            let admin = connect(&self.admin_url).await?;
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .await
                .with_context(|| format!("dropping {}", self.name))
        }
        .await;
        if let Err(error) = result {
            eprintln!(
                "   warning: the bench database {} was not dropped: {error:#}",
                self.name
            );
        }
    }

    /// Transactions committed in this database so far, as `pg_stat_database.xact_commit`
    /// counts them, less the bench's own flush requests. Backends hold their counts back
    /// (an idle one flushes after up to 10 s), so each of the pool's connections is asked
    /// to flush now with `pg_stat_force_next_flush()` (PostgreSQL 15+; that request is a
    /// transaction too, and subtracted). Read from the admin database, so reading adds
    /// nothing. On an older server it waits 11 s instead.
    pub async fn settled_commits(&self) -> anyhow::Result<i64> {
        let size = self.pool.status().size;
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(
                self.pool
                    .get()
                    .await
                    .context("a bench database connection")?,
            );
        }
        let mut flushed = 0;
        for client in &held {
            match client
                .batch_execute("SELECT pg_stat_force_next_flush()")
                .await
            {
                Ok(()) => flushed += 1,
                Err(error)
                    if error.code()
                        == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) =>
                {
                    tokio::time::sleep(Duration::from_secs(11)).await;
                    break;
                }
                Err(error) => return Err(error).context("pg_stat_force_next_flush()"),
            }
        }
        drop(held);
        let flushes = self.flush_commits.fetch_add(flushed, Ordering::Relaxed) + flushed;
        let admin = connect(&self.admin_url).await?;
        let row = admin
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                &[&self.name],
            )
            .await
            .context("reading pg_stat_database")?;
        Ok(row.try_get::<_, i64>(0)? - flushes)
    }

    /// Runs SQL on the bench database (one connection of the pool).
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        let client = self
            .pool
            .get()
            .await
            .context("a bench database connection")?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("running: {}", first_line(sql)))
    }

    /// The first column of a one-row query, as i64.
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let client = self
            .pool
            .get()
            .await
            .context("a bench database connection")?;
        let row = client
            .query_one(sql, &[])
            .await
            .with_context(|| format!("running: {}", first_line(sql)))?;
        Ok(row.try_get(0)?)
    }
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}

/// The same URL naming another database.
pub fn with_dbname(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// A fresh calls queue and DLQ on an SQS endpoint, deleted by [`Self::delete`].
pub struct BenchQueues {
    pub endpoint: String,
    /// What serves them, for the figures' descriptions ("embedded", "moto ...").
    pub served_by: String,
    pub client: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub dlq_url: String,
}

impl BenchQueues {
    pub async fn create(
        sqs: &LocalSqs,
        max_receive_count: u32,
        visibility_seconds: u32,
    ) -> anyhow::Result<Self> {
        let served_by = match sqs.describe() {
            "embedded" => "the embedded SQS endpoint".to_owned(),
            _ => format!("moto at {}", sqs.endpoint),
        };
        Self::create_on(
            &sqs.endpoint,
            served_by,
            max_receive_count,
            visibility_seconds,
        )
        .await
    }

    /// Queues on `endpoint`, described as `served_by`.
    pub async fn create_on(
        endpoint: &str,
        served_by: String,
        max_receive_count: u32,
        visibility_seconds: u32,
    ) -> anyhow::Result<Self> {
        let client = crate::local::local_sqs_client(endpoint);
        let name = format!("ebra-bench-{}", Uuid::new_v4().simple());
        let (queue_url, dlq_url) = tokio::time::timeout(
            Duration::from_secs(20),
            crate::local::ensure_queues(&client, &name, max_receive_count, visibility_seconds),
        )
        .await
        .with_context(|| format!("SQS at {endpoint} did not answer within 20 s"))?
        .with_context(|| format!("creating bench queues on {endpoint}"))?;
        Ok(Self {
            endpoint: endpoint.to_owned(),
            served_by,
            client,
            queue_url,
            dlq_url,
        })
    }

    pub fn calls_queue(&self) -> CallsQueue {
        CallsQueue::new(self.client.clone(), self.queue_url.clone())
    }

    pub async fn delete(self) {
        for url in [&self.queue_url, &self.dlq_url] {
            if let Err(error) = self.client.delete_queue().queue_url(url).send().await {
                eprintln!(
                    "   warning: bench queue {url} not deleted: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(error)
                );
            }
        }
    }
}

/// A configuration for the bench: the database, a queue, the webhook secret, then
/// `overrides`.
pub fn config(
    database_url: &str,
    queue_url: &str,
    overrides: &[(&str, &str)],
) -> anyhow::Result<Config> {
    let mut vars: HashMap<String, String> = [
        ("DATABASE_URL", database_url),
        ("CALLS_QUEUE_URL", queue_url),
        ("WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("WEBHOOK_URL", "http://127.0.0.1:9/callbacks/call-status"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    Config::from_lookup(|name| vars.get(name).cloned()).context("the bench configuration")
}

/// Area codes for distinct, valid North American numbers: `+1 <area> 555 <nnnn>`.
const AREA_CODES: [u32; 10] = [415, 212, 646, 718, 310, 213, 312, 617, 206, 305];

/// The `n`-th of 100,000 distinct valid E.164 numbers.
pub fn phone(n: usize) -> ebra_shared::domain::PhoneNumber {
    let area = AREA_CODES[(n / 10_000) % AREA_CODES.len()];
    let raw = format!("+1{area}555{:04}", n % 10_000);
    ebra_shared::domain::PhoneNumber::from_trusted(raw)
}

/// A create request for a call to `phone(n)`, due now.
pub fn new_call(n: usize) -> ebra_shared::store::calls::NewCall {
    ebra_shared::store::calls::NewCall {
        phone: phone(n),
        script_id: ebra_shared::domain::ScriptId::from_trusted("bench".to_owned()),
        metadata: ebra_shared::domain::Metadata::from_trusted(serde_json::json!({ "n": n })),
        scheduled_at: None,
        expires_at: None,
        idempotency: None,
        callback_url: None,
        campaign_id: None,
        rules: Default::default(),
        timezone: None,
        window_opens_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_the_database_name() {
        assert_eq!(
            with_dbname("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_dbname("postgres://u@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_dbname("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
    }

    #[test]
    fn phones_are_valid_and_distinct() {
        for n in [0, 9_999, 10_000, 99_999] {
            let phone = phone(n);
            assert!(
                ebra_shared::domain::PhoneNumber::parse(phone.as_str()).is_ok(),
                "{phone}"
            );
        }
        assert_ne!(phone(0).as_str(), phone(10_000).as_str());
    }
}
