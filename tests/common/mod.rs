//! The integration tests' harness: each test gets a fresh Postgres database (migrated, then
//! dropped) and a fresh pair of SQS queues (calls + DLQ with a redrive policy) on the SQS
//! endpoint. Both must be running: a test never passes by skipping.
//!
//! - Postgres: `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//!   the server on which each test creates `ebra_test_<uuid>`.
//! - SQS: `AWS_ENDPOINT_URL_SQS` (default `http://127.0.0.1:5000`, where `scripts/test`
//!   starts `moto_server`); or, with `EBRA_TEST_SQS=embedded`, Ebra's embedded endpoint,
//!   one per test process ([`embedded_sqs`]).
#![allow(dead_code)]

pub mod contract;
pub mod fakes;
pub mod http;
pub mod receiver;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ebra_shared::domain::CallOutcome;
use ebra_shared::domain::{Metadata, PhoneNumber, ScriptId};
use ebra_shared::provider::{DialResult, HttpProvider, Provider, ProviderReport, ReportedOutcome};
use ebra_shared::queue::CallsQueue;
use ebra_shared::store::calls::{create_call, Created, NewCall};
use ebra_shared::store::claim::{claim_call, Claim, ClaimedCall};
use ebra_shared::store::dial::{record_dial, DialRecorded, RetryPolicy};
use ebra_shared::store::Pool;
use ebra_shared::Config;
use std::sync::Arc;
use uuid::Uuid;

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_SQS_ENDPOINT: &str = "http://127.0.0.1:5000";
/// The redrive policy's maxReceiveCount on test queues (the template's default).
pub const MAX_RECEIVE_COUNT: u32 = 10;
/// A webhook secret for tests.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct TestEnv {
    pub database_url: String,
    pub pool: Pool,
    pub sqs: aws_sdk_sqs::Client,
    pub sqs_endpoint: String,
    pub queue: CallsQueue,
    pub queue_url: String,
    pub dlq_url: String,
    db_name: String,
    admin_url: String,
}

impl TestEnv {
    /// A fresh database and queue pair.
    pub async fn new() -> Self {
        let admin_url = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
        let db_name = format!("ebra_test_{}", Uuid::new_v4().simple());
        let mut config: tokio_postgres::Config = admin_url
            .parse()
            .expect("TEST_DATABASE_URL is not a Postgres URL");
        config.dbname(&db_name);
        let database_url = with_dbname(&admin_url, &db_name);
        if let Err(error) = ebra_shared::db::ensure_database(&database_url).await {
            panic!(
                "Postgres is not reachable for the integration tests ({error:#}).\n\
                 Start it (e.g. `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) \
                 or point TEST_DATABASE_URL at a server."
            );
        }
        let pool = ebra_shared::db::pool(&database_url, 16).expect("building the pool");
        ebra_shared::db::migrate(&pool)
            .await
            .expect("migrating the test database");

        let endpoint = sqs_endpoint();
        let sqs = sqs_client(&endpoint);
        let (queue_url, dlq_url) = create_queues(&sqs, &db_name, 30).await.unwrap_or_else(|error| {
            panic!(
                "the SQS endpoint {endpoint} is not reachable for the integration tests ({error}).\n\
                 Start it with `moto_server -p 5000` (pip install 'moto[server]'), set AWS_ENDPOINT_URL_SQS, \
                 or set EBRA_TEST_SQS=embedded to use Ebra's embedded endpoint."
            )
        });
        let queue = CallsQueue::new(sqs.clone(), queue_url.clone());
        Self {
            database_url,
            pool,
            sqs,
            sqs_endpoint: endpoint,
            queue,
            queue_url,
            dlq_url,
            db_name,
            admin_url,
        }
    }

    /// A configuration pointing at this environment; `overrides` replace defaults.
    pub fn config(&self, overrides: &[(&str, &str)]) -> Config {
        let mut vars: HashMap<String, String> = [
            ("DATABASE_URL", self.database_url.as_str()),
            ("CALLS_QUEUE_URL", self.queue_url.as_str()),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("WEBHOOK_URL", "http://127.0.0.1:9/callbacks/call-status"),
            ("MAX_RECEIVE_COUNT", "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in overrides {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        Config::from_lookup(|name| vars.get(name).cloned()).expect("test configuration")
    }

    /// A queue handle whose sends always fail (a queue that does not exist).
    pub fn broken_queue(&self) -> CallsQueue {
        CallsQueue::new(
            self.sqs.clone(),
            format!("{}-does-not-exist", self.queue_url),
        )
    }

    /// Receives what is visible on the calls queue now (short poll, a few rounds).
    pub async fn drain(&self, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let mut all = Vec::new();
        for _ in 0..5 {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
                .expect("receiving");
            let batch = out.messages.unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        all
    }

    /// Call ids of the messages that arrive on the calls queue within `wait` (sorted).
    pub async fn queued_call_ids(&self, wait: Duration) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            for message in self.drain(&self.queue_url).await {
                let body: serde_json::Value =
                    serde_json::from_str(message.body().expect("body")).expect("message json");
                ids.push(
                    body["callId"]
                        .as_str()
                        .expect("callId")
                        .parse()
                        .expect("uuid"),
                );
            }
            if !ids.is_empty() || tokio::time::Instant::now() >= deadline {
                ids.sort();
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The calls queue's ARN (what Lambda's event source mapping puts in each record).
    pub async fn queue_arn(&self) -> String {
        queue_arn(&self.sqs, &self.queue_url)
            .await
            .expect("the calls queue's ARN")
    }

    /// A PENDING call to `phone`, due now (or expiring at `expires_at`), created as the API
    /// creates one, with its message deliberately not sent: its outbox mark stays set.
    pub async fn pending_call(
        &self,
        config: &Config,
        phone: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Uuid {
        let new = NewCall {
            phone: PhoneNumber::parse(phone).expect("test phone"),
            script_id: ScriptId::parse("welcome-v1").expect("script id"),
            metadata: Metadata::empty(),
            scheduled_at: None,
            expires_at,
            idempotency: None,
            callback_url: None,
            campaign_id: None,
            rules: Default::default(),
            timezone: None,
            window_opens_at: None,
        };
        match create_call(
            &self.pool,
            &new,
            config.max_attempts,
            config.global_concurrency,
        )
        .await
        .expect("create")
        {
            Created::New { call, .. } => call.id,
            other => panic!("expected a new call, got {other:?}"),
        }
    }

    /// Claims `id` as the worker would: IN_PROGRESS, holding a slot, its dial not answered.
    pub async fn claim(&self, config: &Config, id: Uuid) -> ClaimedCall {
        match claim_call(&self.pool, id, config.global_concurrency, None)
            .await
            .expect("claim")
        {
            Claim::Claimed(claimed) => claimed,
            other => panic!("expected a claim of {id}, got {other:?}"),
        }
    }

    /// Records a claimed call's dial as accepted by the provider as `provider_call_id`.
    pub async fn record_accepted(
        &self,
        config: &Config,
        claimed: &ClaimedCall,
        provider_call_id: &str,
    ) -> DialRecorded {
        let accepted = DialResult::Accepted {
            provider_call_id: provider_call_id.to_owned(),
        };
        let (recorded, _nudges) =
            record_dial(&self.pool, claimed, &accepted, &RetryPolicy::from(config))
                .await
                .expect("record dial");
        recorded
    }

    /// One SQL query's first column as i64 (count helpers in tests).
    pub async fn count(&self, sql: &str) -> i64 {
        let client = self.pool.get().await.expect("pool");
        client.query_one(sql, &[]).await.expect(sql).get(0)
    }

    pub async fn execute(&self, sql: &str) {
        let client = self.pool.get().await.expect("pool");
        client.batch_execute(sql).await.expect(sql);
    }
}

/// A table's rows in [`rows_as_json`]: the table aliased `t` (with any condition), and the
/// order its rows are listed in.
pub type TableRows = (&'static str, &'static str);

/// What a provider's report can change: the calls, their dials, the slots held and the
/// provider's webhooks stored.
pub const SETTLEMENT_ROWS: &[TableRows] = &[
    ("calls t", "t.id"),
    ("call_attempts t", "t.id"),
    ("call_slots t WHERE t.call_id IS NOT NULL", "t.slot_no"),
    ("provider_webhooks t", "t.webhook_id"),
];

/// Every row of `tables`, each table as a JSON array (`[]` when empty), in one text: read
/// before and after a request that must change nothing, and compared.
pub async fn rows_as_json(client: &tokio_postgres::Client, tables: &[TableRows]) -> String {
    let arrays: Vec<String> = tables
        .iter()
        .map(|(from, order)| {
            format!("COALESCE((SELECT json_agg(t ORDER BY {order})::text FROM {from}), '[]')")
        })
        .collect();
    let sql = format!("SELECT concat_ws(' | ', {})", arrays.join(", "));
    client
        .query_one(sql.as_str(), &[])
        .await
        .expect("reading the rows")
        .get(0)
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let db_name = self.db_name.clone();
        // A client of the cleanup's own: the test's client may hold pooled keep-alive
        // connections driven by the test's runtime, which this thread blocks.
        let sqs = sqs_client(&self.sqs_endpoint);
        let urls = [self.queue_url.clone(), self.dlq_url.clone()];
        // Async cleanup from Drop: on a thread of its own, with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
                        ))
                        .await;
                }
                for url in urls {
                    let _ = sqs.delete_queue().queue_url(url).send().await;
                }
            });
        })
        .join();
    }
}

/// The SQS endpoint the tests use: with `EBRA_TEST_SQS=embedded`, the embedded endpoint of
/// this test process; otherwise (`moto` or unset) `AWS_ENDPOINT_URL_SQS`, default moto on
/// port 5000.
pub fn sqs_endpoint() -> String {
    match std::env::var("EBRA_TEST_SQS").as_deref().map(str::trim) {
        Ok("embedded") => embedded_sqs().endpoint().to_owned(),
        Ok("moto" | "") | Err(_) => moto_endpoint(),
        Ok(other) => panic!("EBRA_TEST_SQS={other:?}: expected `embedded` or `moto`"),
    }
}

/// moto's endpoint: `AWS_ENDPOINT_URL_SQS`, default `http://127.0.0.1:5000`.
pub fn moto_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL_SQS")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SQS_ENDPOINT.to_owned())
}

/// Ebra's embedded SQS endpoint, started once per test process on a thread of its own, so
/// that it outlives each `#[tokio::test]`'s runtime.
pub fn embedded_sqs() -> &'static ebra::local::sqs_server::SqsHandle {
    static EMBEDDED: std::sync::OnceLock<ebra::local::sqs_server::SqsHandle> =
        std::sync::OnceLock::new();
    EMBEDDED.get_or_init(|| {
        ebra::local::sqs_server::SqsServer::start_on_own_thread()
            .unwrap_or_else(|error| panic!("starting the embedded SQS endpoint: {error:#}"))
    })
}

pub fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "ebra-tests"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// Creates `<name>-dlq` and `<name>` with a redrive policy to it.
pub async fn create_queues(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_seconds: u32,
) -> Result<(String, String), String> {
    let dlq = tokio::time::timeout(
        Duration::from_secs(60),
        sqs.create_queue().queue_name(format!("{name}-dlq")).send(),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(describe)?;
    let dlq_url = dlq.queue_url.ok_or("no DLQ url")?;
    let dlq_arn = queue_arn(sqs, &dlq_url).await?;
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT.to_string()}).to_string();
    let queue = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_seconds.to_string(),
        )
        .send()
        .await
        .map_err(describe)?;
    Ok((queue.queue_url.ok_or("no queue url")?, dlq_url))
}

/// A queue's ARN, from its attributes.
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, String> {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(describe)?;
    attributes
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| format!("{url} has no QueueArn attribute"))
}

/// Serves `router` on 127.0.0.1 at a free port (a fake provider, a webhook listener):
/// its base URL, and the server's task (abort it to stop).
pub async fn serve_on_loopback(router: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback listener");
    let base_url = format!("http://{}", listener.local_addr().expect("local address"));
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("loopback server");
    });
    (base_url, server)
}

/// A provider's answer to a dial it placed (or had placed for the same key).
pub fn dial_accepted(provider_call_id: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "callId": provider_call_id })),
    )
        .into_response()
}

/// An SDK error with its causes, for the harness's messages (generic: each operation has
/// its own error type).
fn describe<E: std::error::Error + 'static, R: std::fmt::Debug>(
    error: aws_sdk_sqs::error::SdkError<E, R>,
) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(error).to_string()
}

fn with_dbname(url: &str, db_name: &str) -> String {
    // postgres://user@host:port/db?params -> replace the path.
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db_name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A generic-contract report (what `/callbacks/call-status` settles), for tests that settle
/// through the store.
pub fn generic_report(
    webhook_id: impl Into<String>,
    provider_call_id: impl Into<String>,
    outcome: CallOutcome,
    duration_sec: Option<i32>,
    completed_at: Option<DateTime<Utc>>,
) -> ProviderReport {
    ProviderReport {
        webhook_id: webhook_id.into(),
        source: "http",
        provider_call_id: provider_call_id.into(),
        attempt_key: None,
        outcome: ReportedOutcome::Outcome(outcome),
        end_reason: None,
        duration_sec,
        completed_at,
        result: None,
    }
}

/// The generic provider, at an address where nothing listens: it offers no lookup, so the
/// reclaimer acts as it does for any provider that deduplicates dials by key.
pub fn generic_provider() -> Arc<dyn Provider> {
    Arc::new(
        HttpProvider::new("http://127.0.0.1:9", Duration::from_secs(1)).expect("provider client"),
    )
}
