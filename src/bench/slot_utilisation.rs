//! Scenario 2: do slots idle? Cap 30, 600 calls of 2 s each, through the real local stack
//! in this process: the API and webhook routers on one loopback listener, the worker behind
//! the SQS event source mapping emulation on the run's SQS endpoint (the embedded one unless
//! `EBRA_BENCH_SQS=moto`), and the provider
//! simulator calling the webhook back, signed, after 2 s.
//!
//! The figures come from the rows: makespan = last `ended_at` − first `created_at`;
//! busy-slot fraction = Σ(`ended_at` − `started_at`) / (cap × (last `ended_at` − first
//! `started_at`)). Calls in progress are sampled every 100 ms for the picture.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ebra_shared::config::WEBHOOK_PATH;
use ebra_shared::domain::CallOutcome;
use ebra_shared::provider::{Simulator, SimulatorSettings};
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::watch;

use super::harness::{self, BenchDatabase, BenchQueues};
use super::report::round;
use super::svg;
use super::{Figure, ScenarioReport, Target};

const CAP: u32 = 30;
const CALL_SECONDS: f64 = 2.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// POST /calls requests in flight at once while enqueueing.
const POSTS_IN_FLIGHT: usize = 16;
/// The local stack's queue: six times a 30 s worker, as in the template.
const VISIBILITY_SECONDS: u32 = 180;
const TARGET_BUSY: f64 = 0.95;

pub async fn run(
    quick: bool,
    out: &Path,
    sqs: &harness::BenchSqs,
) -> anyhow::Result<ScenarioReport> {
    let calls: usize = if quick { 300 } else { 600 };
    let sqs = sqs.default_endpoint().await?;
    let db = BenchDatabase::create(20).await?;
    let queues = match BenchQueues::create(sqs, 10, VISIBILITY_SECONDS).await {
        Ok(queues) => queues,
        Err(error) => {
            db.drop().await;
            return Err(error);
        }
    };
    let result = measure(&db, &queues, calls, out).await;
    queues.delete().await;
    db.drop().await;
    result
}

struct Sample {
    seconds: f64,
    in_progress: i64,
    /// Calls waiting (PENDING) at that moment.
    pending: i64,
}

async fn measure(
    db: &BenchDatabase,
    queues: &BenchQueues,
    calls: usize,
    out: &Path,
) -> anyhow::Result<ScenarioReport> {
    let ideal = calls as f64 * CALL_SECONDS / f64::from(CAP);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the local stack's listener")?;
    let port = listener.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let webhook_url = format!("{base}{WEBHOOK_PATH}");
    let config = Arc::new(harness::config(
        &db.url,
        &queues.queue_url,
        &[
            ("GLOBAL_CONCURRENCY", &CAP.to_string()),
            ("WEBHOOK_URL", &webhook_url),
            ("MAX_RECEIVE_COUNT", "10"),
        ],
    )?);
    let queue = queues.calls_queue();
    let simulator = Simulator::new(
        SimulatorSettings {
            call_duration: Duration::from_secs_f64(CALL_SECONDS),
            outcome_weights: vec![(CallOutcome::Completed, 100)],
            fault_5xx_percent: 0,
            fault_timeout_percent: 0,
        },
        config.require_webhook_secret()?.clone(),
    )?;

    // The stack, wired as `ebra dev` wires it (less the reclaimer).
    let api = ebra_api::AppState::new(db.pool.clone(), Some(queue.clone()), config.clone());
    let webhook = ebra_webhook::WebhookState::new(db.pool.clone(), queue.clone(), config.clone())?;
    let app = ebra_api::routes(api)
        .merge(ebra_webhook::routes(webhook))
        .fallback(ebra_api::not_found);
    let worker = Arc::new(ebra_worker::WorkerState::new(
        db.pool.clone(),
        queue.clone(),
        Arc::new(simulator),
        config.clone(),
    )?);
    let (stop, stopped) = watch::channel(false);
    let server = crate::local::serve_until_stopped(listener, app, stopped.clone());
    let mapping = crate::local::EventSourceMapping {
        queue,
        worker,
        max_concurrency: CAP as usize,
    };
    let event_source = tokio::spawn(mapping.run(stopped.clone()));

    // The sampler, on a connection of its own.
    let sampler_client = harness::connect(&db.url).await?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let finished = Arc::new(AtomicI64::new(0));
    let first_post = Instant::now();
    let sampler = {
        let samples = samples.clone();
        let finished = finished.clone();
        let mut stop = stopped.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                let seconds = first_post.elapsed().as_secs_f64();
                let row = sampler_client
                    .query_one(
                        "SELECT count(*) FILTER (WHERE status = 'IN_PROGRESS'), \
                                count(*) FILTER (WHERE status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED')), \
                                count(*) FILTER (WHERE status = 'PENDING') \
                           FROM calls",
                        &[],
                    )
                    .await;
                match row.and_then(|r| {
                    Ok((
                        r.try_get::<_, i64>(0)?,
                        r.try_get::<_, i64>(1)?,
                        r.try_get::<_, i64>(2)?,
                    ))
                }) {
                    Ok((in_progress, done, pending)) => {
                        finished.store(done, Ordering::Relaxed);
                        if let Ok(mut samples) = samples.lock() {
                            samples.push(Sample {
                                seconds,
                                in_progress,
                                pending,
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "bench sampler query failed"),
                }
            }
        })
    };

    // Enqueue every call through the API.
    println!("   POST /calls × {calls}, then waiting for every call to complete (ideal {ideal:.0} s) ...");
    let http = reqwest::Client::new();
    let posted: Vec<anyhow::Result<()>> = futures::stream::iter(0..calls)
        .map(|n| {
            let http = http.clone();
            let url = format!("{base}/calls");
            async move {
                let body = json!({"to": harness::phone(n).as_str(), "scriptId": "bench-slots", "metadata": {"n": n}});
                let response = http.post(&url).json(&body).send().await.context("POST /calls")?;
                let status = response.status();
                if status != reqwest::StatusCode::CREATED {
                    let text = response.text().await.unwrap_or_default();
                    anyhow::bail!("POST /calls answered {status}: {text}");
                }
                Ok(())
            }
        })
        .buffer_unordered(POSTS_IN_FLIGHT)
        .collect()
        .await;
    let post_errors: Vec<String> = posted
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    let posted_ok = calls - post_errors.len();
    let posting = first_post.elapsed();

    // Wait for the last call, bounded.
    let deadline = first_post + Duration::from_secs_f64(ideal * 3.0 + 30.0);
    while finished.load(Ordering::Relaxed) < posted_ok as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let timed_out = finished.load(Ordering::Relaxed) < posted_ok as i64;
    // Calls still unfinished now count as running until now, and the run as ending now.
    let waited_until = chrono::Utc::now();
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let _ = sampler.await;
        let _ = event_source.await;
        let _ = server.await;
    })
    .await;

    let row = {
        let client = db.pool.get().await.context("a bench database connection")?;
        client
            .query_one(
                "WITH run AS ( \
                     SELECT CASE WHEN bool_and(ended_at IS NOT NULL) THEN max(ended_at) ELSE $1 END AS end_at \
                       FROM calls) \
                 SELECT count(*) FILTER (WHERE status = 'COMPLETED'), \
                        EXTRACT(EPOCH FROM min(end_at) - min(created_at))::float8, \
                        EXTRACT(EPOCH FROM min(end_at) - min(started_at))::float8, \
                        EXTRACT(EPOCH FROM sum(LEAST(COALESCE(ended_at, end_at), end_at) - started_at))::float8, \
                        COALESCE(max(attempts), 0), \
                        count(*) FILTER (WHERE ended_at IS NULL) \
                   FROM calls, run",
                &[&waited_until],
            )
            .await
            .context("reading the calls' timestamps")?
    };
    let queue_state = queue_attributes(queues).await;
    // Each call's timeline, in seconds from the first create, for whoever reads the JSON.
    let timelines: Vec<[Option<f64>; 4]> = {
        let client = db.pool.get().await.context("a bench database connection")?;
        client
            .query(
                "WITH origin AS (SELECT min(created_at) AS t0 FROM calls) \
                 SELECT EXTRACT(EPOCH FROM created_at - t0)::float8, EXTRACT(EPOCH FROM started_at - t0)::float8, \
                        EXTRACT(EPOCH FROM ended_at - t0)::float8, EXTRACT(EPOCH FROM nudged_at - t0)::float8 \
                   FROM calls, origin ORDER BY created_at",
                &[],
            )
            .await
            .context("reading the calls' timelines")?
            .iter()
            .map(|r| {
                let at = |i: usize| r.try_get::<_, Option<f64>>(i).ok().flatten().map(|v| round(v, 3));
                [at(0), at(1), at(2), at(3)]
            })
            .collect()
    };
    let completed: i64 = row.try_get(0)?;
    let makespan: f64 = row.try_get::<_, Option<f64>>(1)?.unwrap_or(f64::NAN);
    let span_from_first_start: f64 = row.try_get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN);
    let busy_seconds: f64 = row.try_get::<_, Option<f64>>(3)?.unwrap_or(0.0);
    let max_attempts: i32 = row.try_get(4)?;
    let unfinished: i64 = row.try_get(5)?;
    let busy_fraction = busy_seconds / (f64::from(CAP) * span_from_first_start);

    let samples = std::mem::take(
        &mut *samples
            .lock()
            .map_err(|_| anyhow::anyhow!("sampler lock poisoned"))?,
    );
    let max_in_progress = samples.iter().map(|s| s.in_progress).max().unwrap_or(0);
    // Free slots while calls were waiting for one: capacity the refill did not use.
    let idle_while_waiting: f64 = samples
        .windows(2)
        .filter(|w| w[0].pending > 0)
        .map(|w| (i64::from(CAP) - w[0].in_progress).max(0) as f64 * (w[1].seconds - w[0].seconds))
        .sum();
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.seconds, s.in_progress as f64))
        .collect();
    let picture = svg::in_progress_chart(&svg::Chart {
        title: format!(
            "Calls in progress: {calls} calls of {CALL_SECONDS} s, cap {CAP} (busy-slot fraction {busy_fraction:.3}, \
             makespan {}{makespan:.1} s vs ideal {ideal:.0} s)",
            if unfinished > 0 { "> " } else { "" }
        ),
        points: &points,
        cap: f64::from(CAP),
        ideal_seconds: ideal,
        x_label: "seconds since the first POST /calls",
        y_label: "calls IN_PROGRESS (sampled every 100 ms)",
    });
    let svg_path = out.join("slot-utilisation.svg");
    std::fs::write(&svg_path, picture)
        .with_context(|| format!("writing {}", svg_path.display()))?;

    let stack = format!(
        "real local stack in-process: API + webhook routers on one loopback listener, \
         EventSourceMapping (max concurrency {CAP}) on {}, worker with the Simulator ({CALL_SECONDS} s calls, \
         100 % COMPLETED) calling the signed webhook back, no reclaimer; {calls} POST /calls, {POSTS_IN_FLIGHT} in \
         flight",
        queues.served_by
    );
    let mut report = ScenarioReport::new("slots");
    report.figures.push(
        Figure::new("slots: busy-slot fraction", busy_fraction, "", format!("{busy_fraction:.3}"))
            .target(Target::AtLeast(TARGET_BUSY))
            .how(format!(
                "Σ(ended_at − started_at) over the calls' rows ({busy_seconds:.1} s) / (cap {CAP} × (last ended_at − \
                 first started_at) = {span_from_first_start:.2} s){}; {stack}",
                if unfinished > 0 {
                    format!(
                        " — {unfinished} calls unfinished when the bench stopped waiting: the run is taken to end \
                         then, and calls still in progress as running until then"
                    )
                } else {
                    String::new()
                }
            )),
    );
    report.figures.push(
        Figure::new(
            "slots: makespan",
            makespan,
            "s",
            if unfinished > 0 {
                format!("> {makespan:.1} s: {unfinished} of {calls} calls unfinished (ideal {ideal:.0} s)")
            } else {
                format!("{makespan:.2} s (ideal {ideal:.0} s)")
            },
        )
            .target(Target::AtMost(round(ideal / TARGET_BUSY, 1)))
            .how(format!(
                "last ended_at − first created_at from the rows (or, with calls unfinished, the time the bench \
                 waited: a lower bound); ideal = {calls} × {CALL_SECONDS} s / {CAP}; target = ideal / {TARGET_BUSY}; \
                 the {calls} POSTs took {:.2} s",
                posting.as_secs_f64()
            )),
    );
    report.figures.push(
        Figure::new(
            "slots: max calls in progress",
            max_in_progress as f64,
            "calls",
            format!("{max_in_progress}"),
        )
        .target(Target::AtMost(f64::from(CAP)))
        .how(format!(
            "max of count(*) WHERE status = 'IN_PROGRESS', sampled every 100 ms ({} samples)",
            samples.len()
        )),
    );
    report.figures.push(
        Figure::new(
            "slots: idle slot-seconds while calls waited",
            idle_while_waiting,
            "slot-s",
            format!("{idle_while_waiting:.1} slot-s"),
        )
        .how(format!(
            "Σ over the 100 ms samples taken while some call was PENDING of (cap {CAP} − calls IN_PROGRESS) × the \
             interval: slot time a waiting call could have used (the ramp-up while POSTs arrive included)"
        )),
    );
    report.files.push(svg_path);
    if !post_errors.is_empty() {
        report.notes.push(format!(
            "{} POST /calls failed, first: {}",
            post_errors.len(),
            post_errors[0]
        ));
    }
    if timed_out || completed != calls as i64 {
        let nudged_unfinished = timelines
            .iter()
            .filter(|t| t[2].is_none() && t[3].is_some())
            .count();
        report.notes.push(format!(
            "only {completed} of {calls} calls COMPLETED within {:.0} s; {nudged_unfinished} of the {unfinished} \
             unfinished had been nudged (nudged_at set) yet never claimed; the queue then held {} hidden messages \
             (deferred by the worker); no reclaimer runs here",
            ideal * 3.0 + 30.0,
            queue_state["ApproximateNumberOfMessagesNotVisible"].as_str().unwrap_or("?")
        ));
    }
    if max_attempts > 1 {
        report
            .notes
            .push(format!("some calls needed {max_attempts} attempts"));
    }
    report.details = json!({
        "calls": calls,
        "cap": CAP,
        "callSeconds": CALL_SECONDS,
        "idealMakespanSeconds": ideal,
        "makespanSeconds": round(makespan, 3),
        "spanFromFirstStartSeconds": round(span_from_first_start, 3),
        "busySlotSeconds": round(busy_seconds, 3),
        "busySlotFraction": round(busy_fraction, 4),
        "completed": completed,
        "queueAtEnd": queue_state,
        "unfinished": unfinished,
        "maxAttempts": max_attempts,
        "postSeconds": round(posting.as_secs_f64(), 3),
        "postErrors": post_errors.len(),
        "maxInProgressSampled": max_in_progress,
        "callTimelinesColumns": ["createdAt", "startedAt", "endedAt", "nudgedAt"],
        "callTimelines": timelines,
        "idleSlotSecondsWhileWaiting": round(idle_while_waiting, 2),
        "samplesColumns": ["seconds", "inProgress", "pending"],
        "samples": samples.iter().map(|s| [round(s.seconds, 2), s.in_progress as f64, s.pending as f64]).collect::<Vec<_>>(),
        "sqsEndpoint": queues.endpoint,
    });
    Ok(report)
}

/// What the calls queue holds at the end (visible, in flight or hidden, delayed).
async fn queue_attributes(queues: &BenchQueues) -> serde_json::Value {
    use aws_sdk_sqs::types::QueueAttributeName as Name;
    let asked = queues
        .client
        .get_queue_attributes()
        .queue_url(&queues.queue_url)
        .attribute_names(Name::ApproximateNumberOfMessages)
        .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(Name::ApproximateNumberOfMessagesDelayed)
        .send()
        .await;
    match asked {
        Ok(output) => json!(output
            .attributes()
            .map(|a| a
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect::<std::collections::BTreeMap<_, _>>())
            .unwrap_or_default()),
        Err(error) => {
            json!({ "error": aws_sdk_sqs::error::DisplayErrorContext(error).to_string() })
        }
    }
}
