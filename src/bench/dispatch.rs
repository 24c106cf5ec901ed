//! Scenario 1: calls claimed and dialed per second by the worker's handler.
//!
//! Calls are inserted first (untimed). The timed loop drives `ebra_worker::handle_batch`
//! with `SqsEvent` batches of ten built in memory — no SQS receive, so the emulator's cost
//! stays out — from several concurrent "invocations", against a provider living in the
//! process that accepts every dial at once. The worker's queue points at the SQS stub,
//! whose counter shows that the timed loop sent nothing (an accepted dial sends nothing).
//!
//! Two runs: (A) every call in one run, each dialed call keeping its slot, so the slots fill
//! up to the number of calls; (B) as many calls again in rounds of 1,000 with the slots
//! freed between rounds (untimed), as webhooks would. CPU use of this process, of the
//! Postgres backends and of the whole machine is recorded for each.
//!
//! `EBRA_BENCH_DISPATCH_INVOCATIONS` and `EBRA_BENCH_DISPATCH_POOL` change the concurrency
//! and the pool size (defaults 8 and 16); the figures state the values used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use ebra_shared::domain::DialRequest;
use ebra_shared::provider::{CallLookup, Dial, DialResult, Provider, ProviderKind, StatusQuery};
use ebra_shared::store::calls::{create_call, Created};
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use serde_json::json;
use uuid::Uuid;

use super::cpu::{CpuMeter, CpuUse};
use super::harness::{self, BenchDatabase};
use super::report::round;
use super::sqs_stub::SqsStub;
use super::{Figure, ScenarioReport, Target};

/// The cap: the most the schema allows (`call_slots` has 10,000 rows), so that every call
/// is dialed and none waits.
const CAP: u32 = 10_000;
/// Concurrent batch invocations (Lambda instances, in production).
const INVOCATIONS: usize = 8;
/// The pool they share (in production each instance has its own `DB_POOL_SIZE`, 10).
const POOL_SIZE: usize = 16;
const BATCH: usize = 10;
/// Calls per round in the run that frees slots between rounds.
const ROUND: usize = 1_000;
/// The timed loop gives up after this.
const TIME_LIMIT: Duration = Duration::from_secs(180);

/// A provider that accepts every dial at once and counts them.
#[derive(Default)]
struct AcceptAtOnce {
    dials: AtomicU64,
}

impl Provider for AcceptAtOnce {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Http
    }

    fn deduplicates_by_key(&self) -> bool {
        true
    }

    fn place<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult> {
        self.dials.fetch_add(1, Ordering::Relaxed);
        let provider_call_id = format!("bench_{}", dial.idempotency_key.simple());
        async move { DialResult::Accepted { provider_call_id } }.boxed()
    }

    fn status<'a>(&'a self, _query: &'a StatusQuery) -> BoxFuture<'a, CallLookup> {
        async { CallLookup::Unsupported }.boxed()
    }
}

pub async fn run(quick: bool) -> anyhow::Result<ScenarioReport> {
    // Every dialed call keeps its slot (no webhook comes), so calls ≤ cap.
    let calls = if quick { 4_000 } else { CAP as usize };
    let settings = Settings::from_env()?;
    let db = BenchDatabase::create(settings.pool_size).await?;
    let stub = match SqsStub::start().await {
        Ok(stub) => stub,
        Err(error) => {
            db.drop().await;
            return Err(error);
        }
    };
    let result = measure(&db, &stub, calls, &settings).await;
    stub.stop();
    db.drop().await;
    result
}

/// Concurrency and pool size: the defaults above, or `EBRA_BENCH_DISPATCH_INVOCATIONS` and
/// `EBRA_BENCH_DISPATCH_POOL` to explore.
struct Settings {
    invocations: usize,
    pool_size: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let read = |name: &str, default: usize| -> anyhow::Result<usize> {
            match std::env::var(name) {
                Ok(raw) if !raw.trim().is_empty() => raw
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .with_context(|| format!("{name} must be 1 to 256, got {raw:?}")),
                _ => Ok(default),
            }
        };
        Ok(Self {
            invocations: read("EBRA_BENCH_DISPATCH_INVOCATIONS", INVOCATIONS)?,
            pool_size: read("EBRA_BENCH_DISPATCH_POOL", POOL_SIZE)?,
        })
    }
}

/// One timed run of the handler over some calls.
struct TimedLoop {
    elapsed: Duration,
    /// When each batch was answered, from the loop's start.
    finished: Vec<Duration>,
    returned: usize,
    sqs_requests: u64,
    cpu: CpuUse,
}

async fn measure(
    db: &BenchDatabase,
    stub: &SqsStub,
    calls: usize,
    settings: &Settings,
) -> anyhow::Result<ScenarioReport> {
    let config = harness::config(
        &db.url,
        &stub.queue_url,
        &[("GLOBAL_CONCURRENCY", &CAP.to_string())],
    )?;
    let provider = Arc::new(AcceptAtOnce::default());
    let worker = Arc::new(
        ebra_worker::WorkerState::new(
            db.pool.clone(),
            stub.calls_queue(),
            provider.clone(),
            Arc::new(config),
        )
        .context("building the worker state")?,
    );
    let invocations = settings.invocations;
    let pool_size = settings.pool_size;

    // A: all calls in one run; the slots fill up to `calls`.
    println!("   inserting {calls} PENDING calls (untimed) ...");
    let ids = insert_calls(db, 0, calls).await?;
    let commits_before = db.settled_commits().await?;
    println!(
        "   timing {calls} calls in batches of {BATCH}, {invocations} invocations at a time ..."
    );
    let filling = timed_loop(db, stub, &worker, &ids, invocations).await?;
    let commits_after = db.settled_commits().await?;
    let accepted = db
        .count("SELECT count(*) FROM call_attempts WHERE dial_state = 'ACCEPTED'")
        .await?;
    let rate = accepted as f64 / filling.elapsed.as_secs_f64();
    let commits = commits_after - commits_before;
    let commits_per_call = commits as f64 / accepted.max(1) as f64;

    // B: as many calls again, in rounds of ROUND; the slots are freed between rounds
    // (untimed), so no more than ROUND are held.
    release_slots(db).await?;
    println!("   inserting {calls} more calls; timing them in rounds of {ROUND}, slots freed between rounds ...");
    let more = insert_calls(db, calls, calls).await?;
    let mut rounds = Vec::new();
    for chunk in more.chunks(ROUND) {
        rounds.push(timed_loop(db, stub, &worker, chunk, invocations).await?);
        release_slots(db).await?;
    }
    let accepted_total = db
        .count("SELECT count(*) FROM call_attempts WHERE dial_state = 'ACCEPTED'")
        .await?;
    let dialed = provider.dials.load(Ordering::Relaxed);
    let round_calls = (accepted_total - accepted) as f64;
    let round_seconds: f64 = rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let round_rate = round_calls / round_seconds;
    let round_sqs: u64 = rounds.iter().map(|r| r.sqs_requests).sum();
    let round_returned: usize = rounds.iter().map(|r| r.returned).sum();
    let round_cpu = CpuUse {
        wall_seconds: round_seconds,
        ebra_seconds: rounds.iter().map(|r| r.cpu.ebra_seconds).sum(),
        postgres_seconds: rounds.iter().map(|r| r.cpu.postgres_seconds).sum(),
        machine_busy: (rounds
            .iter()
            .map(|r| r.cpu.machine_busy * r.cpu.wall_seconds)
            .sum::<f64>()
            / round_seconds)
            .min(1.0),
        cpus: filling.cpu.cpus,
    };

    // Throughput while the first and the second half of run A was dispatched.
    let mut finished = filling.finished.clone();
    finished.sort();
    let half = finished
        .get(finished.len() / 2)
        .copied()
        .unwrap_or(filling.elapsed);
    let half_calls = (finished.len() / 2 * BATCH) as f64;
    let first_half_rate = half_calls / half.as_secs_f64().max(1e-9);
    let second_half_rate =
        (accepted as f64 - half_calls) / (filling.elapsed - half).as_secs_f64().max(1e-9);

    let setup = format!(
        "ebra_worker::handle_batch driven with in-memory SqsEvent batches of {BATCH} (no SQS receive), {invocations} \
         invocations at a time sharing a {pool_size}-connection pool; in-process provider answering Accepted at once; \
         cap {CAP}; calls inserted by store::calls::create_call beforehand (untimed)"
    );
    let mut report = ScenarioReport::new("dispatch");
    report.figures.push(
        Figure::new("dispatch: calls/s, slots filling to 10k", rate, "calls/s", format!("{rate:.0} calls/s"))
            .target(Target::AtLeast(2000.0))
            .how(format!(
                "{setup}; {calls} calls in one run, every dialed call keeps its slot (0 → {calls} held); wall time \
                 from the first batch to the last answer ({:.2} s); {accepted} ACCEPTED in Postgres afterwards; SQS \
                 requests in the loop: {}; {}",
                filling.elapsed.as_secs_f64(),
                filling.sqs_requests,
                filling.cpu.describe()
            )),
    );
    report.figures.push(
        Figure::new(
            format!("dispatch: calls/s, ≤ {ROUND} slots held"),
            round_rate,
            "calls/s",
            format!("{round_rate:.0} calls/s"),
        )
        .target(Target::AtLeast(2000.0))
        .how(format!(
            "{setup}; {round_calls:.0} calls in {} timed rounds of {ROUND}, slots freed and call_slots vacuumed between \
             rounds (untimed); Σ wall time {round_seconds:.2} s; SQS requests in the loops: {round_sqs}; {}",
            rounds.len(),
            round_cpu.describe()
        )),
    );
    report.figures.push(
        Figure::new("dispatch: Postgres commits per dialed call", commits_per_call, "commits", format!("{commits_per_call:.2}"))
            .how(format!(
                "delta of pg_stat_database.xact_commit for the bench database across the run with slots filling \
                 ({commits}; every pooled connection flushed its statistics with pg_stat_force_next_flush() first) / \
                 {accepted} calls dialed"
            )),
    );
    let expected_dials = (2 * calls) as u64;
    if dialed != expected_dials
        || accepted_total as u64 != expected_dials
        || filling.returned + round_returned != 0
    {
        report.notes.push(format!(
            "expected {expected_dials} dials: the provider saw {dialed}, Postgres has {accepted_total} ACCEPTED, {} \
             messages were returned",
            filling.returned + round_returned
        ));
    }
    report.notes.push(format!(
        "slots filling: the first half of the calls went at {first_half_rate:.0} calls/s, the second at \
         {second_half_rate:.0} calls/s (the claim's slot search passes every held slot)"
    ));
    report.details = json!({
        "calls": calls,
        "batchSize": BATCH,
        "invocations": invocations,
        "poolSize": pool_size,
        "cap": CAP,
        "filling": {
            "elapsedSeconds": round(filling.elapsed.as_secs_f64(), 4),
            "callsPerSecond": round(rate, 1),
            "firstHalfCallsPerSecond": round(first_half_rate, 1),
            "secondHalfCallsPerSecond": round(second_half_rate, 1),
            "acceptedInPostgres": accepted,
            "sqsRequests": filling.sqs_requests,
            "cpu": filling.cpu,
            "xactCommitDelta": commits,
            "commitsPerCall": round(commits_per_call, 3),
        },
        "rounds": {
            "roundSize": ROUND,
            "rounds": rounds.len(),
            "elapsedSeconds": round(round_seconds, 4),
            "callsPerSecond": round(round_rate, 1),
            "perRoundCallsPerSecond": rounds.iter().map(|r| round(r.finished.len() as f64 * BATCH as f64 / r.elapsed.as_secs_f64(), 1)).collect::<Vec<_>>(),
            "sqsRequests": round_sqs,
            "cpu": round_cpu,
        },
        "providerDials": dialed,
        "messagesReturned": filling.returned + round_returned,
        "sqsRequestsByAction": stub.counts(),
    });
    Ok(report)
}

/// Runs the handler over `ids`, `invocations` batches at a time, and times it.
async fn timed_loop(
    db: &BenchDatabase,
    stub: &SqsStub,
    worker: &Arc<ebra_worker::WorkerState>,
    ids: &[Uuid],
    invocations: usize,
) -> anyhow::Result<TimedLoop> {
    let arn = "arn:aws:sqs:us-east-1:000000000000:ebra-bench";
    let mut batches: Vec<SqsEvent> = ids
        .chunks(BATCH)
        .enumerate()
        .map(|(b, chunk)| {
            let messages: Vec<Message> = chunk
                .iter()
                .enumerate()
                .map(|(i, call_id)| sqs_message(*call_id, b * BATCH + i))
                .collect::<anyhow::Result<_>>()?;
            Ok(crate::local::sqs_event(&messages, arn))
        })
        .collect::<anyhow::Result<_>>()?;
    batches.reverse(); // popped from the end: oldest first
    let batches = Arc::new(Mutex::new(batches));

    let sqs_before = stub.total();
    let cpu = CpuMeter::start(db).await?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..invocations)
        .map(|_| {
            let batches = batches.clone();
            let worker = worker.clone();
            tokio::spawn(async move {
                let mut finished = Vec::new();
                let mut returned = 0usize;
                loop {
                    let next = batches.lock().ok().and_then(|mut b| b.pop());
                    let Some(event) = next else { break };
                    let response = ebra_worker::handle_batch(&worker, event).await;
                    returned += response.batch_item_failures.len();
                    finished.push(started.elapsed());
                }
                (finished, returned)
            })
        })
        .collect();
    let joined = tokio::time::timeout(TIME_LIMIT, futures::future::join_all(tasks))
        .await
        .with_context(|| {
            format!(
                "the dispatch loop did not finish within {} s",
                TIME_LIMIT.as_secs()
            )
        })?;
    let elapsed = started.elapsed();
    let cpu = cpu.stop(db).await?;
    let mut finished = Vec::new();
    let mut returned = 0;
    for result in joined {
        let (times, failures) = result.context("a batch invocation panicked")?;
        finished.extend(times);
        returned += failures;
    }
    Ok(TimedLoop {
        elapsed,
        finished,
        returned,
        sqs_requests: stub.total() - sqs_before,
        cpu,
    })
}

/// Frees every slot and finishes the calls holding them (untimed), as their webhooks would.
async fn release_slots(db: &BenchDatabase) -> anyhow::Result<()> {
    db.execute(
        "UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL WHERE call_id IS NOT NULL;
         UPDATE calls SET status = 'COMPLETED', outcome = 'COMPLETED', ended_at = now() WHERE status = 'IN_PROGRESS';",
    )
    .await?;
    db.execute("VACUUM ANALYZE call_slots").await
}

/// Creates `count` due calls to distinct phones (from the `first`-th), eight at a time;
/// returns their ids in order.
async fn insert_calls(db: &BenchDatabase, first: usize, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let pool = &db.pool;
    let created: Vec<anyhow::Result<Uuid>> = futures::stream::iter(first..first + count)
        .map(|n| async move {
            match create_call(pool, &harness::new_call(n), 3, CAP)
                .await
                .context("creating a bench call")?
            {
                Created::New { call, .. } => Ok(call.id),
                other => anyhow::bail!("expected a new call, got {other:?}"),
            }
        })
        .buffered(8)
        .collect()
        .await;
    created.into_iter().collect()
}

/// The message the event source mapping would have received for `call_id`.
fn sqs_message(call_id: Uuid, n: usize) -> anyhow::Result<Message> {
    let body = serde_json::to_string(&DialRequest { call_id })?;
    Ok(Message::builder()
        .message_id(Uuid::new_v4().to_string())
        .receipt_handle(format!("bench-receipt-{n}"))
        .body(body)
        .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "1")
        .attributes(
            MessageSystemAttributeName::SentTimestamp,
            chrono::Utc::now().timestamp_millis().to_string(),
        )
        .build())
}
