//! Scenario 7: end to end. The real local stack `ebra dev` runs (API and webhook routers on
//! one listener, the worker behind the SQS event source mapping, the reclaimer loop),
//! dialing an HTTP provider that speaks the generic contract ([`super::fake_provider`]:
//! `202 {"callId"}` at once, the signed report `CALL_SECONDS` later). `CALLS` calls are
//! posted by `CLIENTS` concurrent clients, and the run lasts until every call is settled.
//!
//! It runs on the embedded SQS endpoint and on moto (behind a counting pass-through, so
//! that both count requests at the endpoint), measures both endpoints' `SendMessage`
//! ceiling with the same number of clients, and runs once more on the embedded endpoint
//! with a backlog: `BACKLOG_CALLS` calls posted while the provider's calls last an hour, so
//! `CAP` of them hold every slot and the rest wait; that run reports the queue depth the
//! waiting calls make.
//!
//! Figures, per run: creates/s (calls posted ÷ the time the posts took); calls settled/s
//! end to end (completed calls ÷ (last `ended_at` − first `created_at`)); that rate against
//! the slot bound `cap / call duration`; SQS requests per completed call (every request the
//! endpoint served while the run lasted, idle polls included, ÷ completed calls); and the
//! largest queue depth (visible + in flight + delayed, sampled: in memory on the embedded
//! endpoint, by `GetQueueAttributes` straight to moto, bypassing the count).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_sqs::types::QueueAttributeName;
use ebra_shared::config::WEBHOOK_PATH;
use ebra_shared::provider::HttpProvider;
use ebra_shared::webhook_signature::WebhookSecret;
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::watch;

use super::cpu::{CpuMeter, CpuUse};
use super::db_proxy::DbProxy;
use super::fake_provider::FakeProvider;
use super::harness::{self, BenchDatabase, BenchQueues, BenchSqs};
use super::report::round;
use super::sqs_proxy::CountingProxy;
use super::{Figure, ScenarioReport, Target};
use crate::local::sqs_server::SqsHandle;
use crate::local::{dev_pool_size, start_stack, DevOptions, LocalSqs, StackParts};

const CAP: u32 = 200;
const CALL_SECONDS: f64 = 0.5;
const CLIENTS: usize = 16;
/// As `ebra dev`'s queue: six times a 30 s worker.
const VISIBILITY_SECONDS: u32 = 180;
const TARGET_UTILISATION: f64 = 0.9;
const TARGET_CREATES_PER_S: f64 = 1000.0;
const TARGET_REQUESTS_PER_CALL: f64 = 3.0;
/// The queue should hold at most this many messages per slot.
const DEPTH_PER_SLOT: usize = 3;
/// How long the moto ceiling is measured.
const CEILING_SECONDS: f64 = 5.0;

struct Sizes {
    calls: usize,
    moto_calls: usize,
    backlog_calls: usize,
}

fn slot_bound() -> f64 {
    f64::from(CAP) / CALL_SECONDS
}

pub async fn run(quick: bool, repeat: u32, sqs: &BenchSqs) -> anyhow::Result<ScenarioReport> {
    let sizes = if quick {
        Sizes {
            calls: 500,
            moto_calls: 300,
            backlog_calls: 10_000,
        }
    } else {
        Sizes {
            calls: 2_000,
            moto_calls: 2_000,
            backlog_calls: 50_000,
        }
    };
    let mut report = ScenarioReport::new("e2e");

    let mut runs = Vec::with_capacity(repeat as usize);
    for n in 1..=repeat {
        println!(
            "   embedded SQS: {} calls of {CALL_SECONDS} s, cap {CAP}, {CLIENTS} clients (run {n} of {repeat}) ...",
            sizes.calls
        );
        let run = on_embedded(sizes.calls, Stop::WhenSettled).await?;
        print_run(&run);
        runs.push(run);
    }
    let all_runs: Vec<serde_json::Value> = runs.iter().map(StackRun::to_json).collect();
    let embedded = median_run(runs).context("no embedded run")?;
    if repeat > 1 {
        println!(
            "   embedded SQS: the median of {repeat} runs: {:.0} settled/s, {:.0} creates/s",
            embedded.settled_per_s(),
            embedded.creates_per_s()
        );
    }

    if std::env::var_os("EBRA_BENCH_E2E_EMBEDDED_ONLY").is_some() {
        return Ok(report);
    }
    println!(
        "   SendMessage ceilings, {CLIENTS} clients, {CEILING_SECONDS} s each: embedded, moto ..."
    );
    let embedded_ceiling = {
        let embedded = LocalSqs::embedded().await?;
        let ceiling = send_ceiling(&embedded).await;
        embedded.stop().await;
        ceiling?
    };
    let moto = sqs.moto().await?;
    let ceiling = send_ceiling(moto).await?;
    println!("   moto: {} calls, same stack ...", sizes.moto_calls);
    let on_moto = on_moto(moto, sizes.moto_calls).await?;
    print_run(&on_moto);

    println!(
        "   embedded SQS with a backlog: {} calls posted, {CAP} holding the slots, depth sampled until 10 s after the last post ...",
        sizes.backlog_calls
    );
    let backlog = on_embedded(
        sizes.backlog_calls,
        Stop::BacklogAfterPosting(Duration::from_secs(10)),
    )
    .await?;
    print_run(&backlog);

    figures(
        &mut report,
        &embedded,
        &on_moto,
        [&embedded_ceiling, &ceiling],
        &backlog,
    );
    if repeat > 1 {
        report.notes.push(format!(
            "the embedded SQS figures are the run with the median settle rate of {repeat} runs \
             (every run in bench.json, `embeddedRuns`)"
        ));
    }
    report.details = json!({
        "repeat": repeat,
        "cap": CAP,
        "callSeconds": CALL_SECONDS,
        "clients": CLIENTS,
        "slotBoundCallsPerSecond": slot_bound(),
        "embedded": embedded.to_json(),
        "embeddedRuns": all_runs,
        "moto": on_moto.to_json(),
        "embeddedSendMessageCeiling": embedded_ceiling.to_json(),
        "motoSendMessageCeiling": ceiling.to_json(),
        "backlog": backlog.to_json(),
    });
    Ok(report)
}

/// The run with the median settle rate (the upper median of an even count).
fn median_run(mut runs: Vec<StackRun>) -> Option<StackRun> {
    runs.sort_by(|a, b| a.settled_per_s().total_cmp(&b.settled_per_s()));
    let middle = runs.len() / 2;
    runs.into_iter().nth(middle)
}

/// How a run goes, and when it ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Calls of `CALL_SECONDS`; the run ends when every posted call is settled (bounded by
    /// 3 × the ideal time + 60 s).
    WhenSettled,
    /// Calls that outlast the run (`BACKLOG_CALL`): the first `CAP` hold every slot and the
    /// rest wait; the run ends this long after the last post.
    BacklogAfterPosting(Duration),
}

/// The provider's call duration in a backlog run: longer than any run.
const BACKLOG_CALL: Duration = Duration::from_secs(3600);

/// Counts the requests an endpoint served.
enum Counter<'a> {
    Embedded(SqsHandle),
    Proxy(&'a CountingProxy),
}

impl Counter<'_> {
    fn snapshot(&self) -> BTreeMap<String, u64> {
        match self {
            Counter::Embedded(handle) => handle.request_counts(),
            Counter::Proxy(proxy) => proxy.counts(),
        }
    }
}

/// Reads the calls queue's depth without going through the count.
#[derive(Clone)]
enum DepthProbe {
    Embedded(SqsHandle),
    Direct(aws_sdk_sqs::Client),
}

impl DepthProbe {
    async fn depth(&self, queue_url: &str) -> Option<usize> {
        match self {
            DepthProbe::Embedded(handle) => handle.queue_depth(queue_url).map(|d| d.total()),
            DepthProbe::Direct(client) => {
                let attributes = client
                    .get_queue_attributes()
                    .queue_url(queue_url)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                    .send()
                    .await
                    .ok()?
                    .attributes?;
                Some(
                    attributes
                        .values()
                        .filter_map(|v| v.parse::<usize>().ok())
                        .sum(),
                )
            }
        }
    }
}

struct Endpoint<'a> {
    /// Where the stack sends its requests.
    url: String,
    served_by: String,
    counter: Counter<'a>,
    probe: DepthProbe,
    sample_every: Duration,
}

async fn on_embedded(calls: usize, stop: Stop) -> anyhow::Result<StackRun> {
    // An endpoint of its own: its counters start at zero and see only this run.
    let sqs = LocalSqs::embedded().await?;
    let handle = sqs
        .embedded_handle()
        .context("the embedded endpoint has no handle")?;
    let endpoint = Endpoint {
        url: sqs.endpoint.clone(),
        served_by: "the embedded SQS endpoint".to_owned(),
        counter: Counter::Embedded(handle.clone()),
        probe: DepthProbe::Embedded(handle),
        sample_every: Duration::from_millis(50),
    };
    let run = run_stack(calls, &endpoint, stop).await;
    sqs.stop().await;
    run
}

async fn on_moto(moto: &LocalSqs, calls: usize) -> anyhow::Result<StackRun> {
    let proxy = CountingProxy::start(&moto.endpoint).await?;
    let endpoint = Endpoint {
        url: proxy.endpoint.clone(),
        served_by: format!(
            "moto at {} (through a counting pass-through)",
            moto.endpoint
        ),
        counter: Counter::Proxy(&proxy),
        probe: DepthProbe::Direct(crate::local::local_sqs_client(&moto.endpoint)),
        // Each sample is a request moto serves besides the stack's: few of them.
        sample_every: Duration::from_millis(500),
    };
    let run = run_stack(calls, &endpoint, Stop::WhenSettled).await;
    proxy.stop();
    run
}

#[derive(Debug)]
struct StackRun {
    served_by: String,
    calls: usize,
    posted: usize,
    post_errors: Vec<String>,
    post_seconds: f64,
    completed: i64,
    unfinished: i64,
    /// Calls still PENDING (waiting) when the run ended.
    pending: i64,
    /// A backlog run: calls are not meant to settle, figures are per posted call.
    backlog: bool,
    /// First `created_at` to last `ended_at` of the completed calls.
    span_seconds: f64,
    waited_seconds: f64,
    requests: BTreeMap<String, u64>,
    max_depth: usize,
    depth_samples: usize,
    max_in_progress: i64,
    webhooks_sent: u64,
    webhook_retries: u64,
    dials_placed: usize,
    cpu: Option<CpuUse>,
    /// Where the slots' time went (a run that settled its calls).
    slot_time: Option<SlotTime>,
    /// With `EBRA_BENCH_DB_RTT_MS`: the stack's round trips to Postgres.
    db_round_trips: Option<DbRoundTrips>,
    /// The write-ahead log the server wrote while the clients posted and the calls settled.
    wal: WalWritten,
}

/// The write-ahead log Postgres wrote over a run's loop: every row version and index entry
/// the stack wrote is a record in it, so its size per call follows the writes a call costs,
/// whatever the machine's speed. It is the whole server's (a quiet machine's is the
/// stack's) and includes the full-page images the first change of a page after a
/// checkpoint writes. `pg_waldump --start <from> --end <to> --stats=record` splits it.
#[derive(Debug)]
struct WalWritten {
    from: String,
    to: String,
    bytes: i64,
}

impl WalWritten {
    async fn position(db: &BenchDatabase) -> anyhow::Result<String> {
        let client = db.pool.get().await.context("a bench database connection")?;
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .context("reading the write-ahead log's position")?;
        Ok(row.try_get(0)?)
    }

    async fn since(db: &BenchDatabase, from: String) -> anyhow::Result<Self> {
        let client = db.pool.get().await.context("a bench database connection")?;
        let row = client
            .query_one(
                "SELECT lsn::text, pg_wal_lsn_diff(lsn, $1::text::pg_lsn)::int8 \
                   FROM pg_current_wal_lsn() AS lsn",
                &[&from],
            )
            .await
            .context("measuring the write-ahead log written")?;
        Ok(Self {
            to: row.try_get(0)?,
            bytes: row.try_get(1)?,
            from,
        })
    }

    fn per_call(&self, run: &StackRun) -> f64 {
        self.bytes as f64 / run.per_call_base().0
    }
}

/// The round trips a stack made to Postgres through the pass-through, while the clients
/// posted and the calls settled.
#[derive(Debug, Clone, Copy)]
struct DbRoundTrips {
    /// `EBRA_BENCH_DB_RTT_MS`.
    asked_ms: f64,
    /// The median of 20 `SELECT 1` through the pass-through: tokio's timer sleeps whole
    /// milliseconds, so each direction's delay is rounded up.
    measured_ms: f64,
    count: u64,
}

/// Where the slots' time went in a run, from the rows: cap × span slot-seconds, each slot's
/// split into its calls' time (claim to the report's time), the time before its first claim,
/// between one call's report and the next claim, and after its last call's report. What the
/// settle rate loses against the slot bound is the sum of all but the provider's own
/// seconds.
#[derive(Debug, Clone, Copy, Default)]
struct SlotTime {
    /// Slots that held a call.
    slots: i64,
    /// Claim to the report's time (`ended_at`), over every dial: the provider's own
    /// `CALL_SECONDS` per call, plus the claim-to-dial time.
    in_calls: f64,
    /// The provider's own seconds: completed calls × `CALL_SECONDS`.
    provider: f64,
    /// First `created_at` to each slot's first claim (all of the span for a slot never used).
    before_first: f64,
    /// A call's report to the same slot's next claim: settling, the nudge, SQS, the claim.
    between: f64,
    /// Of `between`, the report's time to the start of its webhook's transaction
    /// (`provider_webhooks.received_at`): the delivery, and the wait for the webhook
    /// handler and its connection.
    report_to_webhook: f64,
    /// Each slot's last report to the run's last one.
    after_last: f64,
}

impl SlotTime {
    /// The slot time a run had: `CAP` × span.
    fn total(&self) -> f64 {
        self.in_calls + self.before_first + self.between + self.after_last
    }

    /// "1224 slot-s (cap 200 × span): the provider's 0.5 s per call 1000, claim to dial 48,
    /// report to the slot's next claim 61 (to its webhook's transaction 22), before each
    /// slot's first claim 68, after its last report 47".
    fn describe(&self) -> String {
        format!(
            "{:.0} slot-s (cap {CAP} × span): the provider's {CALL_SECONDS} s per call {:.0}, claim to dial {:.0}, \
             report to the slot's next claim {:.0} (to its webhook's transaction {:.0}), before each slot's first \
             claim {:.0}, after its last report {:.0}",
            self.total(),
            self.provider,
            self.in_calls - self.provider,
            self.between,
            self.report_to_webhook,
            self.before_first,
            self.after_last
        )
    }

    fn to_json(self) -> serde_json::Value {
        json!({
            "slots": self.slots,
            "totalSlotSeconds": round(self.total(), 1),
            "providerSlotSeconds": round(self.provider, 1),
            "claimToDialSlotSeconds": round(self.in_calls - self.provider, 1),
            "reportToNextClaimSlotSeconds": round(self.between, 1),
            "reportToWebhookSlotSeconds": round(self.report_to_webhook, 1),
            "beforeFirstClaimSlotSeconds": round(self.before_first, 1),
            "afterLastReportSlotSeconds": round(self.after_last, 1),
        })
    }

    /// Reads it from a settled run's rows: every dial (`call_attempts`, with the slot it
    /// held) from its claim (`started_at`) to its report's time (`ended_at`), its first
    /// webhook's transaction, the slot's next claim, and the run's first `created_at` and
    /// last `ended_at`.
    async fn read(db: &BenchDatabase, completed: i64) -> anyhow::Result<Self> {
        let client = db.pool.get().await.context("a bench database connection")?;
        let row = client
            .query_one(
                "WITH run AS (SELECT min(created_at) AS first, max(ended_at) AS last FROM calls), \
                      uses AS ( \
                          SELECT a.slot_no, a.started_at AS claimed, COALESCE(a.ended_at, c.ended_at) AS reported, \
                                 (SELECT min(w.received_at) FROM provider_webhooks w \
                                   WHERE w.provider_call_id = a.provider_call_id) AS received, \
                                 lead(a.started_at) OVER slot AS next_claim, \
                                 row_number() OVER slot AS n \
                            FROM call_attempts a JOIN calls c ON c.id = a.call_id \
                          WINDOW slot AS (PARTITION BY a.slot_no ORDER BY a.started_at)) \
                 SELECT count(DISTINCT slot_no), \
                        COALESCE(sum(EXTRACT(EPOCH FROM reported - claimed)), 0)::float8, \
                        COALESCE(sum(EXTRACT(EPOCH FROM claimed - run.first)) FILTER (WHERE n = 1), 0)::float8, \
                        COALESCE(sum(EXTRACT(EPOCH FROM next_claim - reported)) FILTER (WHERE next_claim IS NOT NULL), 0)::float8, \
                        COALESCE(sum(EXTRACT(EPOCH FROM run.last - reported)) FILTER (WHERE next_claim IS NULL), 0)::float8, \
                        COALESCE(EXTRACT(EPOCH FROM max(run.last) - max(run.first)), 0)::float8, \
                        COALESCE(sum(GREATEST(EXTRACT(EPOCH FROM LEAST(received, next_claim) - reported), 0)) \
                                 FILTER (WHERE next_claim IS NOT NULL AND received IS NOT NULL), 0)::float8 \
                   FROM uses, run",
                &[],
            )
            .await
            .context("reading the slots' claims and reports")?;
        let slots: i64 = row.try_get(0)?;
        let span: f64 = row.try_get(5)?;
        Ok(Self {
            slots,
            in_calls: row.try_get(1)?,
            provider: completed as f64 * CALL_SECONDS,
            // Slots no call held were idle from the first create on.
            before_first: row.try_get::<_, f64>(2)? + (i64::from(CAP) - slots).max(0) as f64 * span,
            between: row.try_get(3)?,
            report_to_webhook: row.try_get(6)?,
            after_last: row.try_get(4)?,
        })
    }
}

impl StackRun {
    fn creates_per_s(&self) -> f64 {
        self.posted as f64 / self.post_seconds
    }

    fn settled_per_s(&self) -> f64 {
        self.completed as f64 / self.span_seconds
    }

    fn utilisation(&self) -> f64 {
        self.settled_per_s() / slot_bound()
    }

    fn requests_total(&self) -> u64 {
        self.requests.values().sum()
    }

    fn requests_per_call(&self) -> f64 {
        self.requests_total() as f64 / self.per_call_base().0
    }

    /// What per-call figures divide by: completed calls, or posted ones in a backlog run.
    fn per_call_base(&self) -> (f64, &'static str) {
        if self.backlog {
            (self.posted.max(1) as f64, "posted")
        } else {
            (self.completed.max(1) as f64, "completed")
        }
    }

    /// CPU seconds (this process and its Postgres backends) per call.
    fn cpu_per_call(&self) -> Option<f64> {
        let cpu = self.cpu?;
        Some((cpu.ebra_seconds + cpu.postgres_seconds) / self.per_call_base().0)
    }

    /// "CPU during the loop: ...; 4.1 ms per call (this process and its Postgres backends)".
    fn cpu_note(&self) -> String {
        match (self.cpu, self.cpu_per_call()) {
            (Some(cpu), Some(per_call)) => format!(
                "{}; {:.2} CPU-ms per {} call (this process and its Postgres backends)",
                cpu.describe(),
                per_call * 1000.0,
                self.per_call_base().1
            ),
            _ => "CPU use not measured".to_owned(),
        }
    }

    fn requests_breakdown(&self) -> String {
        self.requests
            .iter()
            .map(|(op, n)| format!("{op} {:.2}", *n as f64 / self.per_call_base().0))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "sqs": self.served_by,
            "calls": self.calls,
            "posted": self.posted,
            "postErrors": self.post_errors.len(),
            "firstPostError": self.post_errors.first(),
            "postSeconds": round(self.post_seconds, 3),
            "createsPerSecond": round(self.creates_per_s(), 1),
            "completed": self.completed,
            "unfinished": self.unfinished,
            "pendingAtEnd": self.pending,
            "spanSeconds": round(self.span_seconds, 3),
            "waitedSeconds": round(self.waited_seconds, 3),
            "settledPerSecond": (!self.backlog).then(|| round(self.settled_per_s(), 1)),
            "utilisation": (!self.backlog).then(|| round(self.utilisation(), 4)),
            "sqsRequests": self.requests,
            "sqsRequestsTotal": self.requests_total(),
            "perCallFiguresPer": self.per_call_base().1,
            "sqsRequestsPerCall": round(self.requests_per_call(), 3),
            "maxQueueDepth": self.max_depth,
            "depthSamples": self.depth_samples,
            "maxInProgress": self.max_in_progress,
            "dialsPlaced": self.dials_placed,
            "webhooksSent": self.webhooks_sent,
            "webhookRetries": self.webhook_retries,
            "cpu": self.cpu,
            "cpuSecondsPerCall": self.cpu_per_call().map(|c| round(c, 5)),
            "slotTime": self.slot_time.map(SlotTime::to_json),
            "dbRoundTrips": self.db_round_trips.map(|trips| json!({
                "rttAskedMs": trips.asked_ms,
                "rttMeasuredMs": round(trips.measured_ms, 3),
                "roundTrips": trips.count,
                "perCall": round(trips.count as f64 / self.per_call_base().0, 2),
            })),
            "walBytes": self.wal.bytes,
            "walBytesPerCall": round(self.wal.per_call(self), 0),
        })
    }
}

fn print_run(run: &StackRun) {
    if run.backlog {
        println!(
            "     {}: {} posted at {:.0} creates/s, {} holding the slots, {} waiting; {:.2} SQS requests per posted call ({}), depth ≤ {}; {}",
            run.served_by,
            run.posted,
            run.creates_per_s(),
            run.max_in_progress,
            run.pending,
            run.requests_per_call(),
            run.requests_breakdown(),
            run.max_depth,
            run.cpu_note()
        );
        return;
    }
    println!(
        "     {}: {}/{} settled, {:.0} creates/s, {:.0} settled/s ({:.3} of {:.0}/s), {:.2} SQS requests/call ({}), depth ≤ {}; {}",
        run.served_by,
        run.completed,
        run.calls,
        run.creates_per_s(),
        run.settled_per_s(),
        run.utilisation(),
        slot_bound(),
        run.requests_per_call(),
        run.requests_breakdown(),
        run.max_depth,
        run.cpu_note()
    );
    if let Some(slot_time) = run.slot_time {
        println!("       slot time: {}", slot_time.describe());
    }
    println!(
        "       Postgres write-ahead log: {:.0} bytes per {} call ({} in all, {} to {})",
        run.wal.per_call(run),
        run.per_call_base().1,
        run.wal.bytes,
        run.wal.from,
        run.wal.to
    );
    if let Some(trips) = run.db_round_trips {
        println!(
            "       Postgres through a pass-through adding {} ms per round trip (measured: {:.2} ms): {:.2} round trips per {} call ({} in all)",
            trips.asked_ms,
            trips.measured_ms,
            trips.count as f64 / run.per_call_base().0,
            run.per_call_base().1,
            trips.count
        );
    }
}

async fn run_stack(calls: usize, endpoint: &Endpoint<'_>, stop: Stop) -> anyhow::Result<StackRun> {
    let pool_size = dev_pool_size()?;
    let db = BenchDatabase::create(pool_size).await?;
    let queues = match BenchQueues::create_on(
        &endpoint.url,
        endpoint.served_by.clone(),
        10,
        VISIBILITY_SECONDS,
    )
    .await
    {
        Ok(queues) => queues,
        Err(error) => {
            db.drop().await;
            return Err(error);
        }
    };
    let run = drive(&db, &queues, calls, endpoint, stop).await;
    queues.delete().await;
    db.drop().await;
    run
}

async fn drive(
    db: &BenchDatabase,
    queues: &BenchQueues,
    calls: usize,
    endpoint: &Endpoint<'_>,
    stop: Stop,
) -> anyhow::Result<StackRun> {
    let secret = WebhookSecret::parse(harness::WEBHOOK_SECRET)
        .map_err(|e| anyhow::anyhow!("the bench's webhook secret: {e}"))?;
    let call_duration = match stop {
        Stop::WhenSettled => Duration::from_secs_f64(CALL_SECONDS),
        Stop::BacklogAfterPosting(_) => BACKLOG_CALL,
    };
    let provider = FakeProvider::start(call_duration, secret).await?;
    // With a round-trip time asked for, the stack reaches Postgres through a pass-through
    // that adds it and counts the round trips.
    let mut pass_through = PassThrough::start_if_asked(&db.url).await?;
    let (stack_db_url, stack_pool) = match &pass_through {
        Some(pass_through) => (
            pass_through.url.clone(),
            ebra_shared::db::pool(&pass_through.url, db.pool.status().max_size)?,
        ),
        None => (db.url.clone(), db.pool.clone()),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the local stack's listener")?;
    let base = format!("http://{}", listener.local_addr()?);
    let webhook_url = format!("{base}{WEBHOOK_PATH}");
    let config = Arc::new(harness::config(
        &stack_db_url,
        &queues.queue_url,
        &[
            ("GLOBAL_CONCURRENCY", &CAP.to_string()),
            ("WEBHOOK_URL", &webhook_url),
            ("USE_SIMULATOR", "false"),
            ("PROVIDER_BASE_URL", &provider.base_url),
            ("MAX_RECEIVE_COUNT", "10"),
        ],
    )?);
    let dialer = HttpProvider::new(&provider.base_url, config.dial_timeout)?;
    let stack = start_stack(
        listener,
        StackParts {
            config,
            pool: stack_pool,
            worker_pool: ebra_shared::db::pool(&stack_db_url, db.pool.status().max_size)?,
            queue: queues.calls_queue(),
            provider: Arc::new(dialer),
            reclaim_every: DevOptions::default().reclaim_every,
        },
    )
    .await?;

    // The queue's depth, sampled.
    let (stop_sampling, sampling) = watch::channel(false);
    let max_depth = Arc::new(AtomicUsize::new(0));
    let depth_samples = Arc::new(AtomicUsize::new(0));
    let depth_sampler = {
        let probe = endpoint.probe.clone();
        let url = queues.queue_url.clone();
        let (max_depth, samples) = (max_depth.clone(), depth_samples.clone());
        let every = endpoint.sample_every;
        let mut stop = sampling.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                if let Some(depth) = probe.depth(&url).await {
                    max_depth.fetch_max(depth, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let before = endpoint.counter.snapshot();
    if let Some(pass_through) = &mut pass_through {
        pass_through.count_from_here();
    }
    let wal_from = WalWritten::position(db).await?;
    let cpu = CpuMeter::start(db).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the clients' HTTP client")?;
    let started = Instant::now();
    let posted: Vec<Result<(), String>> = futures::stream::iter(0..calls)
        .map(|n| {
            let http = http.clone();
            let url = format!("{base}/calls");
            async move {
                let body = json!({"to": harness::phone(n).as_str(), "scriptId": "bench-e2e", "metadata": {"n": n}});
                let response = http
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| format!("POST /calls: {e}"))?;
                let status = response.status();
                if status == reqwest::StatusCode::CREATED {
                    Ok(())
                } else {
                    let text = response.text().await.unwrap_or_default();
                    Err(format!("POST /calls answered {status}: {text}"))
                }
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    let post_seconds = started.elapsed().as_secs_f64();
    let post_errors: Vec<String> = posted.into_iter().filter_map(Result::err).collect();
    let posted_ok = calls - post_errors.len();

    let deadline = match stop {
        Stop::WhenSettled => {
            let ideal = calls as f64 / slot_bound();
            started + Duration::from_secs_f64(ideal * 3.0 + 60.0)
        }
        Stop::BacklogAfterPosting(wait) => Instant::now() + wait,
    };
    // Every report answered 2xx means every call settled, but for reports the webhook held
    // (202) until the worker recorded the dial: then the rows say. The rows are read once a
    // second before that (a call that fails sends no report), so the wait adds little load.
    let mut last_look = Instant::now();
    loop {
        if Instant::now() >= deadline {
            break;
        }
        if matches!(stop, Stop::WhenSettled)
            && (provider.webhooks_sent() >= posted_ok as u64
                || last_look.elapsed() >= Duration::from_secs(1))
        {
            last_look = Instant::now();
            if unfinished(db).await? == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited_seconds = started.elapsed().as_secs_f64();
    let after = endpoint.counter.snapshot();
    let db_round_trips = pass_through.as_ref().map(PassThrough::counted);
    let cpu = cpu.stop(db).await?;
    let wal = WalWritten::since(db, wal_from).await?;
    let _ = stop_sampling.send(true);
    let _ = depth_sampler.await;
    stack.stop().await;
    if let Some(pass_through) = pass_through {
        pass_through.proxy.stop();
    }

    let row = {
        let client = db.pool.get().await.context("a bench database connection")?;
        client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'COMPLETED'), \
                        count(*) FILTER (WHERE ended_at IS NULL), \
                        count(*) FILTER (WHERE status = 'PENDING'), \
                        EXTRACT(EPOCH FROM max(ended_at) FILTER (WHERE status = 'COMPLETED') - min(created_at))::float8, \
                        (SELECT COALESCE(max(running), 0) FROM ( \
                             SELECT sum(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS running FROM ( \
                                 SELECT started_at AS at, 1 AS delta FROM calls WHERE started_at IS NOT NULL \
                                 UNION ALL \
                                 SELECT ended_at, -1 FROM calls WHERE started_at IS NOT NULL AND ended_at IS NOT NULL \
                             ) events) running)::int8 \
                   FROM calls",
                &[],
            )
            .await
            .context("reading the calls' timestamps")?
    };
    let completed: i64 = row.try_get(0)?;
    let unfinished: i64 = row.try_get(1)?;
    let pending: i64 = row.try_get(2)?;
    let span_seconds: f64 = row.try_get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN);
    let max_in_progress: i64 = row.try_get(4)?;
    let slot_time = match stop {
        Stop::WhenSettled => Some(SlotTime::read(db, completed).await?),
        Stop::BacklogAfterPosting(_) => None,
    };
    let requests = after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let run = StackRun {
        served_by: endpoint.served_by.clone(),
        calls,
        posted: posted_ok,
        post_errors,
        post_seconds,
        completed,
        unfinished,
        pending,
        backlog: matches!(stop, Stop::BacklogAfterPosting(_)),
        span_seconds,
        waited_seconds,
        requests,
        max_depth: max_depth.load(Ordering::Relaxed),
        depth_samples: depth_samples.load(Ordering::Relaxed),
        max_in_progress,
        webhooks_sent: provider.webhooks_sent(),
        webhook_retries: provider.webhook_retries(),
        dials_placed: provider.placed(),
        cpu: Some(cpu),
        slot_time,
        db_round_trips,
        wal,
    };
    provider.stop();
    Ok(run)
}

struct Ceiling {
    sends: usize,
    errors: usize,
    seconds: f64,
    endpoint: String,
}

impl Ceiling {
    fn per_second(&self) -> f64 {
        self.sends as f64 / self.seconds
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "endpoint": self.endpoint,
            "clients": CLIENTS,
            "seconds": round(self.seconds, 3),
            "sends": self.sends,
            "errors": self.errors,
            "sendsPerSecond": round(self.per_second(), 1),
        })
    }
}

/// `SendMessage` through the SDK as fast as `CLIENTS` clients get answers, for
/// `CEILING_SECONDS`.
async fn send_ceiling(sqs: &LocalSqs) -> anyhow::Result<Ceiling> {
    let queues = BenchQueues::create(sqs, 10, VISIBILITY_SECONDS).await?;
    let sends = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(CEILING_SECONDS);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = queues.client.clone();
            let url = queues.queue_url.clone();
            let (sends, errors) = (sends.clone(), errors.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let sent = client
                        .send_message()
                        .queue_url(&url)
                        .message_body(r#"{"callId":"00000000-0000-0000-0000-000000000000"}"#)
                        .send()
                        .await;
                    match sent {
                        Ok(_) => sends.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    futures::future::join_all(clients).await;
    let ceiling = Ceiling {
        sends: sends.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        endpoint: queues.served_by.clone(),
    };
    queues.delete().await;
    Ok(ceiling)
}

fn figures(
    report: &mut ScenarioReport,
    embedded: &StackRun,
    moto: &StackRun,
    ceilings: [&Ceiling; 2],
    backlog: &StackRun,
) {
    let bound = slot_bound();
    let depth_bound = DEPTH_PER_SLOT * CAP as usize;
    let stack = format!(
        "the local stack of `ebra dev` in this process (API + webhook routers, worker behind the \
         EventSourceMapping with MaximumConcurrency {CAP}, reclaimer every {} s), GLOBAL_CONCURRENCY {CAP}, an HTTP \
         provider (generic contract) answering 202 at once and posting the signed COMPLETED report {CALL_SECONDS} s \
         later; {CLIENTS} concurrent clients POST /calls",
        DevOptions::default().reclaim_every.as_secs()
    );
    for (label, run, targets) in [("embedded SQS", embedded, true), ("moto", moto, false)] {
        let target = |figure: Figure, t: Target| if targets { figure.target(t) } else { figure };
        let unfinished = if run.unfinished > 0 || run.posted < run.calls {
            format!(
                " — {} of {} calls unfinished and {} POSTs failed when the bench stopped waiting ({:.0} s)",
                run.unfinished,
                run.calls,
                run.calls - run.posted,
                run.waited_seconds
            )
        } else {
            String::new()
        };
        report.figures.push(target(
            Figure::new(
                format!("e2e: calls settled/s end to end, {label}"),
                run.settled_per_s(),
                "calls/s",
                format!(
                    "{:.0} calls/s ({:.3} of the slot bound {bound:.0}/s)",
                    run.settled_per_s(),
                    run.utilisation()
                ),
            ),
            Target::AtLeast(round(TARGET_UTILISATION * bound, 1)),
        )
        .how(format!(
            "{} COMPLETED ÷ (last ended_at − first created_at = {:.2} s); slot bound = cap {CAP} / {CALL_SECONDS} s; \
             {} calls on {}; {stack}; {}{unfinished}",
            run.completed,
            run.span_seconds,
            run.calls,
            run.served_by,
            run.cpu_note()
        )));
        report.figures.push(target(
            Figure::new(
                format!("e2e: slot utilisation, {label}"),
                run.utilisation(),
                "",
                format!("{:.3}", run.utilisation()),
            ),
            Target::AtLeast(TARGET_UTILISATION),
        )
        .how(format!(
            "calls settled/s ÷ (cap {CAP} / {CALL_SECONDS} s); most calls in progress at once (from the rows' \
             started_at and ended_at): {}",
            run.max_in_progress
        )));
        if let Some(slot_time) = run.slot_time {
            let lost = 1.0 - slot_time.provider / slot_time.total();
            report.figures.push(
                Figure::new(
                    format!("e2e: slot time outside the provider's calls, {label}"),
                    lost,
                    "",
                    format!("{lost:.3} of {}", slot_time.describe()),
                )
                .how(
                    "from the rows: each slot's dials (call_attempts.slot_no) from the claim (started_at) to the \
                     report's time (ended_at), the gaps between one report and the slot's next claim (and, of those, \
                     the report's time to its first webhook's transaction, provider_webhooks.received_at), and the time \
                     before its first claim (all of the span for a slot no call held) and after its last report, over \
                     first created_at to last ended_at; 1 − utilisation is this share",
                ),
            );
        }
        report.figures.push(target(
            Figure::new(
                format!("e2e: creates/s, {CLIENTS} clients, {label}"),
                run.creates_per_s(),
                "calls/s",
                format!("{:.0} calls/s", run.creates_per_s()),
            ),
            Target::AtLeast(TARGET_CREATES_PER_S),
        )
        .how(format!(
            "{} POST /calls answered 201 ÷ {:.2} s from the first send to the last answer, {CLIENTS} in flight; \
             each POST commits the call and sends its SQS message",
            run.posted, run.post_seconds
        )));
        report.figures.push(target(
            Figure::new(
                format!("e2e: SQS requests per completed call, {label}"),
                run.requests_per_call(),
                "requests",
                format!("{:.2} ({})", run.requests_per_call(), run.requests_breakdown()),
            ),
            Target::AtMost(TARGET_REQUESTS_PER_CALL),
        )
        .how(format!(
            "{} requests counted at the endpoint ({}) from the first POST until every call settled, idle long polls \
             included, ÷ {} COMPLETED calls",
            run.requests_total(),
            if targets {
                "its own counters"
            } else {
                "a counting pass-through in front of moto"
            },
            run.completed
        )));
        report.figures.push(
            Figure::new(
                format!("e2e: Postgres write-ahead log per completed call, {label}"),
                run.wal.per_call(run),
                "bytes",
                format!("{:.0} bytes", run.wal.per_call(run)),
            )
            .how(format!(
                "pg_current_wal_lsn() from the first POST until every call settled ({} to {}: {} bytes, the whole \
                 server's, full-page images included) ÷ {} COMPLETED calls; `pg_waldump --stats=record` splits it",
                run.wal.from, run.wal.to, run.wal.bytes, run.completed
            )),
        );
        report.figures.push(target(
            Figure::new(
                format!("e2e: largest queue depth, {label}"),
                run.max_depth as f64,
                "messages",
                format!("{} messages", run.max_depth),
            ),
            Target::AtMost(depth_bound as f64),
        )
        .how(format!(
            "max over {} samples (every {}) of visible + in flight + delayed on the calls queue, {}; target \
             {DEPTH_PER_SLOT} × cap",
            run.depth_samples,
            if targets { "50 ms, in memory" } else { "500 ms, GetQueueAttributes straight to moto, not counted" },
            run.served_by
        )));
    }
    for (label, ceiling) in [("embedded SQS", ceilings[0]), ("moto", ceilings[1])] {
        report.figures.push(
            Figure::new(
                format!("e2e: SendMessage ceiling, {CLIENTS} clients, {label}"),
                ceiling.per_second(),
                "requests/s",
                format!("{:.0} SendMessage/s", ceiling.per_second()),
            )
            .how(format!(
                "{CLIENTS} aws-sdk-sqs clients in this process each sending one message at a time for {:.1} s to {} \
                 ({} sent, {} errors): the most requests it serves (the clients' own cost included); at ≥ 1 request \
                 per call it bounds any stack on it",
                ceiling.seconds, ceiling.endpoint, ceiling.sends, ceiling.errors
            )),
        );
    }
    report.figures.push(
        Figure::new(
            format!("e2e: largest queue depth, {} calls waiting, embedded SQS", backlog.calls),
            backlog.max_depth as f64,
            "messages",
            format!("{} messages", backlog.max_depth),
        )
        .target(Target::AtMost(depth_bound as f64))
        .how(format!(
            "{} calls posted by {CLIENTS} clients in {:.1} s ({:.0} creates/s) to the stack above on the embedded \
             endpoint, the provider's calls lasting {} s so that {} calls held the slots and {} were PENDING \
             (waiting) at the end; depth sampled every 50 ms ({} samples) until 10 s after the last post; {:.2} SQS \
             requests per posted call ({}); {}",
            backlog.posted,
            backlog.post_seconds,
            backlog.creates_per_s(),
            BACKLOG_CALL.as_secs(),
            backlog.max_in_progress,
            backlog.pending,
            backlog.depth_samples,
            backlog.requests_per_call(),
            backlog.requests_breakdown(),
            backlog.cpu_note()
        )),
    );
    for run in [embedded, moto, backlog] {
        if let Some(first) = run.post_errors.first() {
            report.notes.push(format!(
                "{}: {} POST /calls failed, first: {first}",
                run.served_by,
                run.post_errors.len()
            ));
        }
    }
}

/// Calls not ended yet.
async fn unfinished(db: &BenchDatabase) -> anyhow::Result<i64> {
    db.count("SELECT count(*) FROM calls WHERE ended_at IS NULL")
        .await
}

/// The e2e stack's way to Postgres when `EBRA_BENCH_DB_RTT_MS` asks for a round-trip time.
struct PassThrough {
    proxy: DbProxy,
    /// The bench database's URL, through the pass-through.
    url: String,
    asked_ms: f64,
    measured_ms: f64,
    /// The proxy's count when the run's loop began.
    counted_from: u64,
}

impl PassThrough {
    /// Starts one in front of the database at `db_url` when `EBRA_BENCH_DB_RTT_MS` is set
    /// (milliseconds, 0 to 100), and measures the round-trip time it gives.
    async fn start_if_asked(db_url: &str) -> anyhow::Result<Option<Self>> {
        let Ok(value) = std::env::var("EBRA_BENCH_DB_RTT_MS") else {
            return Ok(None);
        };
        let asked_ms: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|ms: &f64| (0.0..=100.0).contains(ms))
            .with_context(|| {
                format!("EBRA_BENCH_DB_RTT_MS={value:?}: a number of milliseconds from 0 to 100")
            })?;
        let mut url = reqwest::Url::parse(db_url)
            .with_context(|| format!("the bench database URL {db_url}"))?;
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .with_context(|| {
                format!("EBRA_BENCH_DB_RTT_MS needs a TCP host in the database URL {db_url}")
            })?;
        let upstream = format!("{host}:{}", url.port().unwrap_or(5432));
        let one_way = Duration::from_secs_f64(asked_ms / 2000.0);
        let proxy = DbProxy::start(upstream, one_way).await?;
        url.set_host(Some("127.0.0.1"))
            .with_context(|| format!("pointing {db_url} at the pass-through"))?;
        url.set_port(Some(proxy.port))
            .map_err(|()| anyhow::anyhow!("pointing {db_url} at the pass-through's port"))?;
        let url = url.to_string();
        let measured_ms = round_trip_time(&url).await?;
        Ok(Some(Self {
            proxy,
            url,
            asked_ms,
            measured_ms,
            counted_from: 0,
        }))
    }

    fn count_from_here(&mut self) {
        self.counted_from = self.proxy.round_trips();
    }

    fn counted(&self) -> DbRoundTrips {
        DbRoundTrips {
            asked_ms: self.asked_ms,
            measured_ms: self.measured_ms,
            count: self.proxy.round_trips() - self.counted_from,
        }
    }
}

/// The median time of 20 `SELECT 1` on a connection to `url`, in milliseconds.
async fn round_trip_time(url: &str) -> anyhow::Result<f64> {
    let pool = ebra_shared::db::pool(url, 1)?;
    let client = pool
        .get()
        .await
        .context("a connection through the pass-through")?;
    let mut times = Vec::with_capacity(20);
    for _ in 0..20 {
        let started = Instant::now();
        client
            .simple_query("SELECT 1")
            .await
            .context("SELECT 1 through the pass-through")?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
