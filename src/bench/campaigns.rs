//! Scenario 8: campaigns (issue 13), through the real local stack (`start_stack`: the API
//! and webhook on a loopback listener, the worker behind the event source mapping, the
//! reclaimer, the notifier) on an embedded SQS endpoint of its own (so its request counts
//! are this run's), with the provider simulator calling back.
//!
//! - import: `ebra import` of a CSV file of N rows into a campaign (rows/s), and the SQS
//!   messages sent while it ran (`SendMessage` + up to ten per `SendMessageBatch`, counted
//!   by the endpoint), against the target of at most 2 × the cap. The calls last longer
//!   than the import, so every message counted is one the import caused.
//! - drain: a campaign of N calls at cap C, calls of D seconds: slot utilisation =
//!   Σ(`ended_at` − `started_at`) / (C × (last `ended_at` − first `started_at`)).
//! - fairness: a 100-call campaign (a tenth of the cap with `--quick`) added while a large
//!   one drains at the cap; its makespan
//!   (its last `ended_at` − its first `created_at`) against its makespan alone on an idle
//!   stack, target ≤ 2×.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ebra_shared::config::WEBHOOK_PATH;
use ebra_shared::domain::CallOutcome;
use ebra_shared::provider::{Simulator, SimulatorSettings};
use serde_json::json;

use super::harness::{self, BenchDatabase, BenchQueues};
use super::report::round;
use super::{Figure, ScenarioReport, Target};
use crate::local::{dev_pool_size, start_stack, LocalSqs, RunningStack, StackParts};

const VISIBILITY_SECONDS: u32 = 180;
const TARGET_ROWS_PER_SECOND: f64 = 5_000.0;
const TARGET_BUSY: f64 = 0.95;
const TARGET_FAIRNESS: f64 = 2.0;

/// The sizes of one run.
struct Sizes {
    import_rows: usize,
    import_cap: u32,
    drain_calls: usize,
    drain_cap: u32,
    call_seconds: f64,
    /// The small campaign of the fairness run: a tenth of the cap, as the 100 calls
    /// are of its cap of 1,000 (it needs a tenth of a call's length of freed slots).
    small_calls: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                import_rows: 10_000,
                import_cap: 100,
                drain_calls: 2_000,
                drain_cap: 100,
                call_seconds: 2.0,
                small_calls: 10,
            }
        } else {
            Self {
                import_rows: 100_000,
                import_cap: 1_000,
                drain_calls: 20_000,
                drain_cap: 1_000,
                call_seconds: 5.0,
                small_calls: 100,
            }
        }
    }
}

pub async fn run(quick: bool) -> anyhow::Result<ScenarioReport> {
    let sizes = Sizes::new(quick);
    let mut report = ScenarioReport::new("campaigns");
    if quick {
        report.notes.push(format!(
            "--quick: import {} rows at cap {}, drain {} calls at cap {}, a {}-call small campaign (the issue's sizes: 100,000 rows, 20,000 calls at cap 1,000, 100 calls)",
            sizes.import_rows, sizes.import_cap, sizes.drain_calls, sizes.drain_cap, sizes.small_calls
        ));
    }
    let import = measure_import(&sizes).await.context("the import")?;
    report.figures.push(
        Figure::new(
            "campaign import rows/s",
            import.rows_per_second,
            "rows/s",
            format!(
                "{:.0} rows/s ({} rows in {:.1} s)",
                import.rows_per_second, sizes.import_rows, import.seconds
            ),
        )
        .target(Target::AtLeast(TARGET_ROWS_PER_SECOND))
        .how(format!(
            "`ebra import` of a {}-row CSV through the local stack (batches of 1,000, 4 in flight)",
            sizes.import_rows
        )),
    );
    report.figures.push(
        Figure::new(
            "SQS messages sent during the import",
            import.messages as f64,
            "messages",
            format!(
                "≤ {} ({} SendMessage, {} SendMessageBatch requests; cap {})",
                import.messages, import.send_message, import.send_batches, sizes.import_cap
            ),
        )
        .target(Target::AtMost(2.0 * f64::from(sizes.import_cap)))
        .how(
            "counted by the embedded SQS endpoint; a batch counted as 10 messages (an upper bound)",
        ),
    );

    let drain = measure_drain(&sizes).await.context("the drain")?;
    report.figures.push(
        Figure::new(
            "campaign drain slot utilisation",
            drain.busy,
            "",
            format!(
                "{:.3} ({} calls of {} s at cap {}, makespan {:.1} s, ideal {:.1} s)",
                drain.busy,
                sizes.drain_calls,
                sizes.call_seconds,
                sizes.drain_cap,
                drain.makespan,
                sizes.drain_calls as f64 * sizes.call_seconds / f64::from(sizes.drain_cap)
            ),
        )
        .target(Target::AtLeast(TARGET_BUSY))
        .how("Σ(ended − started) / (cap × (last ended − first started)), from the rows"),
    );
    report.notes.push(format!(
        "drain: idle slot-time as a share of cap × span: ramp {:.3} (the cap reached {:.1} s after the first claim), tail {:.3}, between a release and its refill {:.3} (a slot's refill after an attempt's end: p50 {:.3} s, p90 {:.3} s, p99 {:.3} s, max {:.3} s)",
        drain.losses.ramp, drain.losses.ramp_seconds, drain.losses.tail, drain.losses.between,
        drain.losses.refill[0], drain.losses.refill[1], drain.losses.refill[2], drain.losses.refill[3]
    ));

    let fairness = measure_fairness(&sizes).await.context("the fairness run")?;
    report.figures.push(
        Figure::new(
            "small campaign makespan, during a drain / alone",
            fairness.ratio,
            "×",
            format!(
                "{:.2}× ({:.1} s during the drain, {:.1} s alone)",
                fairness.ratio, fairness.shared, fairness.alone
            ),
        )
        .target(Target::AtMost(TARGET_FAIRNESS))
        .how(format!(
            "{} calls added while a {}-call campaign drains at cap {}",
            sizes.small_calls, sizes.drain_calls, sizes.drain_cap
        )),
    );
    report.details = json!({
        "import": {"rows": sizes.import_rows, "seconds": import.seconds, "sendMessage": import.send_message,
                   "sendMessageBatch": import.send_batches, "cap": sizes.import_cap},
        "drain": {"calls": sizes.drain_calls, "cap": sizes.drain_cap, "callSeconds": sizes.call_seconds,
                  "busy": drain.busy, "makespan": drain.makespan,
                  "idle": {"ramp": drain.losses.ramp, "rampSeconds": drain.losses.ramp_seconds,
                           "tail": drain.losses.tail, "between": drain.losses.between,
                           "refillSeconds": {"p50": drain.losses.refill[0], "p90": drain.losses.refill[1],
                                             "p99": drain.losses.refill[2], "max": drain.losses.refill[3]}}},
        "fairness": {"shared": fairness.shared, "alone": fairness.alone, "ratio": fairness.ratio},
    });
    Ok(report)
}

/// A local stack on a database, queues and an embedded SQS endpoint of its own.
struct Stack {
    db: BenchDatabase,
    sqs: LocalSqs,
    queues: BenchQueues,
    running: RunningStack,
    base: String,
}

impl Stack {
    async fn start(cap: u32, call_seconds: f64) -> anyhow::Result<Self> {
        let sqs = LocalSqs::embedded().await?;
        let pool_size = dev_pool_size()?;
        let db = BenchDatabase::create(pool_size).await?;
        let queues = match BenchQueues::create(&sqs, 10, VISIBILITY_SECONDS).await {
            Ok(queues) => queues,
            Err(error) => {
                db.drop().await;
                sqs.stop().await;
                return Err(error);
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the local stack's listener")?;
        let base = format!("http://{}", listener.local_addr()?);
        let webhook_url = format!("{base}{WEBHOOK_PATH}");
        let config = Arc::new(harness::config(
            &db.url,
            &queues.queue_url,
            &[
                ("GLOBAL_CONCURRENCY", &cap.to_string()),
                ("WEBHOOK_URL", &webhook_url),
                ("MAX_RECEIVE_COUNT", "10"),
            ],
        )?);
        let simulator = Simulator::new(
            SimulatorSettings {
                call_duration: Duration::from_secs_f64(call_seconds),
                outcome_weights: vec![(CallOutcome::Completed, 100)],
                fault_5xx_percent: 0,
                fault_timeout_percent: 0,
            },
            config.require_webhook_secret()?.clone(),
        )?;
        let running = start_stack(
            listener,
            StackParts {
                config,
                pool: db.pool.clone(),
                worker_pool: ebra_shared::db::pool(&db.url, pool_size)?,
                queue: queues.calls_queue(),
                provider: Arc::new(simulator),
                reclaim_every: Duration::from_secs(10),
            },
        )
        .await?;
        Ok(Self {
            db,
            sqs,
            queues,
            running,
            base,
        })
    }

    async fn stop(self) {
        self.running.stop().await;
        self.queues.delete().await;
        self.db.drop().await;
        self.sqs.stop().await;
    }

    fn requests(&self, operation: &str) -> u64 {
        self.sqs
            .embedded_handle()
            .map(|handle| handle.request_counts().get(operation).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    async fn create_campaign(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<String> {
        let response = http
            .post(format!("{}/campaigns", self.base))
            .json(&json!({"name": name, "scriptId": "bench-campaigns"}))
            .send()
            .await
            .context("POST /campaigns")?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.context("POST /campaigns answer")?;
        anyhow::ensure!(
            status.is_success(),
            "POST /campaigns answered {status}: {body}"
        );
        body["id"]
            .as_str()
            .map(str::to_owned)
            .context("a campaign without an id")
    }

    /// Adds calls `first..first + n` to a campaign in JSON batches of 1,000.
    async fn add_calls(
        &self,
        http: &reqwest::Client,
        campaign: &str,
        first: usize,
        n: usize,
    ) -> anyhow::Result<()> {
        let mut start = first;
        while start < first + n {
            let end = (start + 1000).min(first + n);
            let calls: Vec<_> = (start..end)
                .map(|i| json!({"to": harness::phone(i).as_str(), "metadata": {"n": i}}))
                .collect();
            let response = http
                .post(format!("{}/campaigns/{campaign}/calls", self.base))
                .json(&json!({ "calls": calls }))
                .send()
                .await
                .context("POST /campaigns/{id}/calls")?;
            let status = response.status();
            let body: serde_json::Value = response.json().await.context("a bulk add's answer")?;
            anyhow::ensure!(
                status.is_success() && body["created"] == json!(end - start),
                "a bulk add answered {status}: created {}, rejected {}",
                body["created"],
                body["rejected"]
            );
            start = end;
        }
        Ok(())
    }

    /// Waits until `campaign`'s calls are all terminal (bounded).
    async fn wait_done(&self, campaign: &str, deadline: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let sql = format!(
            "SELECT count(*) FROM calls WHERE campaign_id = '{campaign}' AND status IN ('PENDING', 'IN_PROGRESS')"
        );
        while self.db.count(&sql).await? > 0 {
            anyhow::ensure!(
                started.elapsed() < deadline,
                "campaign {campaign} did not finish within {deadline:?}"
            );
            // Each count took 8 ms at 20,000 calls (`pg_stat_statements`): polled once a
            // second, so that the harness takes little of the CPU it measures.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }

    /// One campaign's makespan and busy-slot seconds, from its rows.
    async fn timings(&self, campaign: &str) -> anyhow::Result<(f64, f64, f64)> {
        let client = harness::connect(&self.db.url).await?;
        let row = client
            .query_one(
                "SELECT EXTRACT(EPOCH FROM max(ended_at) - min(created_at))::float8, \
                        EXTRACT(EPOCH FROM max(ended_at) - min(started_at))::float8, \
                        EXTRACT(EPOCH FROM sum(ended_at - started_at))::float8 \
                   FROM calls WHERE campaign_id = $1::text::uuid",
                &[&campaign],
            )
            .await
            .context("reading the campaign's timings")?;
        Ok((
            row.try_get::<_, Option<f64>>(0)?.unwrap_or(0.0),
            row.try_get::<_, Option<f64>>(1)?.unwrap_or(0.0),
            row.try_get::<_, Option<f64>>(2)?.unwrap_or(0.0),
        ))
    }
}

struct Imported {
    seconds: f64,
    rows_per_second: f64,
    send_message: u64,
    send_batches: u64,
    messages: u64,
}

async fn measure_import(sizes: &Sizes) -> anyhow::Result<Imported> {
    // Calls that outlast the import: every message counted is one it caused.
    let stack = Stack::start(sizes.import_cap, 3600.0).await?;
    let dir = std::env::temp_dir().join(format!("ebra-bench-import-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).context("a temporary directory")?;
    let file: PathBuf = dir.join("list.csv");
    let mut csv = String::from("to,scriptId,customer\n");
    for n in 0..sizes.import_rows {
        csv.push_str(&format!(
            "{},bench-import,c-{n}\n",
            harness::phone(n).as_str()
        ));
    }
    std::fs::write(&file, csv).context("writing the CSV")?;
    println!("   ebra import of {} rows ...", sizes.import_rows);
    let before = (
        stack.requests("SendMessage"),
        stack.requests("SendMessageBatch"),
    );
    let args = crate::import::ImportArgs {
        file: file.clone(),
        api: stack.base.clone(),
        campaign: Some("bench import".to_owned()),
        campaign_id: None,
        script_id: None,
        max_concurrency: None,
        token: None,
        sigv4: false,
        region: None,
        dry_run: false,
        batch_rows: crate::import::BATCH_ROWS,
        parallel: 4,
    };
    let started = Instant::now();
    let result = crate::import::import(&args, crate::import::Progress::Quiet).await;
    let seconds = started.elapsed().as_secs_f64();
    let send_message = stack.requests("SendMessage") - before.0;
    let send_batches = stack.requests("SendMessageBatch") - before.1;
    let _ = std::fs::remove_dir_all(&dir);
    stack.stop().await;
    let summary = result?;
    anyhow::ensure!(
        summary.created == sizes.import_rows as u64,
        "the import created {} of {} rows",
        summary.created,
        sizes.import_rows
    );
    Ok(Imported {
        seconds,
        rows_per_second: round(sizes.import_rows as f64 / seconds, 0),
        send_message,
        send_batches,
        messages: send_message + 10 * send_batches,
    })
}

struct Drained {
    busy: f64,
    makespan: f64,
    losses: DrainLosses,
}

/// Where a drain's idle slot-time went, each as a share of `cap × span` (so that
/// `busy + ramp + tail + between = 1`): the ramp (before each of the first `cap` claims,
/// since the first), the tail (after each of the last `cap` ends, until the last), and
/// the rest (the gaps between a slot's release and its refill while the campaign drains).
struct DrainLosses {
    ramp_seconds: f64,
    ramp: f64,
    tail: f64,
    between: f64,
    /// Each slot's idle time between an attempt's end and the slot's next attempt, in
    /// seconds: p50, p90, p99, max.
    refill: [f64; 4],
}

impl DrainLosses {
    /// `span` and `busy` as [`Stack::timings`] and the drain read them.
    async fn read(
        stack: &Stack,
        campaign: &str,
        cap: u32,
        span: f64,
        busy: f64,
    ) -> anyhow::Result<Self> {
        let client = harness::connect(&stack.db.url).await?;
        let row = client
            .query_one(
                "WITH c AS (SELECT started_at, ended_at FROM calls \
                             WHERE campaign_id = $1::text::uuid AND ended_at IS NOT NULL), \
                      b AS (SELECT min(started_at) AS t0, max(ended_at) AS t1 FROM c), \
                      firsts AS (SELECT started_at FROM c ORDER BY started_at LIMIT $2), \
                      lasts AS (SELECT ended_at FROM c ORDER BY ended_at DESC LIMIT $2) \
                 SELECT EXTRACT(EPOCH FROM (SELECT max(started_at) FROM firsts) - b.t0)::float8, \
                        EXTRACT(EPOCH FROM (SELECT sum(started_at - b.t0) FROM firsts))::float8, \
                        EXTRACT(EPOCH FROM (SELECT sum(b.t1 - ended_at) FROM lasts))::float8 \
                   FROM b",
                &[&campaign, &i64::from(cap)],
            )
            .await
            .context("reading the drain's idle slot-time")?;
        let refill = client
            .query_one(
                "WITH a AS (SELECT a.ended_at, lead(a.started_at) OVER (PARTITION BY a.slot_no ORDER BY a.started_at) AS next_start \
                              FROM call_attempts a JOIN calls c ON c.id = a.call_id \
                             WHERE c.campaign_id = $1::text::uuid) \
                 SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99, 1.0]::float8[]) \
                        WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM next_start - ended_at)::float8) \
                   FROM a WHERE next_start IS NOT NULL AND ended_at IS NOT NULL",
                &[&campaign],
            )
            .await
            .context("reading the slots' refill gaps")?;
        let refill: Vec<f64> = refill
            .try_get::<_, Option<Vec<f64>>>(0)?
            .unwrap_or_default();
        let refill = [0, 1, 2, 3].map(|i| round(refill.get(i).copied().unwrap_or(0.0), 3));
        let slot_seconds = (f64::from(cap) * span).max(0.001);
        let ramp = row.try_get::<_, Option<f64>>(1)?.unwrap_or(0.0) / slot_seconds;
        let tail = row.try_get::<_, Option<f64>>(2)?.unwrap_or(0.0) / slot_seconds;
        Ok(Self {
            ramp_seconds: row.try_get::<_, Option<f64>>(0)?.unwrap_or(0.0),
            ramp: round(ramp, 3),
            tail: round(tail, 3),
            between: round((1.0 - busy - ramp - tail).max(0.0), 3),
            refill,
        })
    }
}

async fn measure_drain(sizes: &Sizes) -> anyhow::Result<Drained> {
    let stack = Stack::start(sizes.drain_cap, sizes.call_seconds).await?;
    let result = async {
        let http = reqwest::Client::new();
        let campaign = stack.create_campaign(&http, "bench drain").await?;
        println!(
            "   draining a campaign of {} calls at cap {} ...",
            sizes.drain_calls, sizes.drain_cap
        );
        stack
            .add_calls(&http, &campaign, 0, sizes.drain_calls)
            .await?;
        let ideal = sizes.drain_calls as f64 * sizes.call_seconds / f64::from(sizes.drain_cap);
        stack
            .wait_done(&campaign, Duration::from_secs_f64(ideal * 4.0 + 60.0))
            .await?;
        let (makespan, span, busy_seconds) = stack.timings(&campaign).await?;
        let busy = busy_seconds / (f64::from(sizes.drain_cap) * span.max(0.001));
        let losses = DrainLosses::read(&stack, &campaign, sizes.drain_cap, span, busy).await?;
        Ok(Drained {
            busy: round(busy, 3),
            makespan,
            losses,
        })
    }
    .await;
    stack.stop().await;
    result
}

struct Fairness {
    shared: f64,
    alone: f64,
    ratio: f64,
}

async fn measure_fairness(sizes: &Sizes) -> anyhow::Result<Fairness> {
    let http = reqwest::Client::new();
    // Alone, on an idle stack.
    let alone = {
        let stack = Stack::start(sizes.drain_cap, sizes.call_seconds).await?;
        let result = async {
            let small = stack.create_campaign(&http, "small, alone").await?;
            stack
                .add_calls(&http, &small, 50_000, sizes.small_calls)
                .await?;
            stack.wait_done(&small, Duration::from_secs(120)).await?;
            Ok::<_, anyhow::Error>(stack.timings(&small).await?.0)
        }
        .await;
        stack.stop().await;
        result?
    };
    // During a drain: added once a quarter of the large campaign is done.
    let stack = Stack::start(sizes.drain_cap, sizes.call_seconds).await?;
    let shared = async {
        let big = stack.create_campaign(&http, "large").await?;
        println!(
            "   a {}-call campaign added while a {}-call one drains ...",
            sizes.small_calls, sizes.drain_calls
        );
        stack.add_calls(&http, &big, 0, sizes.drain_calls).await?;
        let quarter = (sizes.drain_calls / 4) as i64;
        let done = format!(
            "SELECT count(*) FROM calls WHERE campaign_id = '{big}' AND status = 'COMPLETED'"
        );
        let started = Instant::now();
        while stack.db.count(&done).await? < quarter {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the large campaign did not get a quarter done"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let small = stack
            .create_campaign(&http, "small, during the drain")
            .await?;
        stack
            .add_calls(&http, &small, 50_000, sizes.small_calls)
            .await?;
        stack.wait_done(&small, Duration::from_secs(600)).await?;
        Ok::<_, anyhow::Error>(stack.timings(&small).await?.0)
    }
    .await;
    stack.stop().await;
    let shared = shared?;
    Ok(Fairness {
        shared,
        alone,
        ratio: round(shared / alone.max(0.001), 2),
    })
}
