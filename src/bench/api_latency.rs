//! Scenario 3: latency of `POST /calls` and `GET /calls/{id}` at a fixed request rate.
//!
//! `ebra_api::router` is served by axum on a loopback listener; reqwest sends requests
//! open-loop — one every 1/rate s on a fixed schedule, whatever the previous ones are
//! doing — and each latency is taken from the moment its request is handed to the client
//! to the end of its response body. How late each send left against its schedule is kept
//! too, to show the loop stayed open.
//!
//! `POST /calls` sends the dial message to SQS after its commit. It runs twice: with the
//! send going to a stub that answers `SendMessage` at once — Ebra's own work — and with it
//! going to the SQS emulator (moto, ~7 ms a request when idle). moto serves one request at a
//! time, so that run's rate is set from moto's own `SendMessage` latency, timed alone just
//! before (a quarter of what moto can follow serially, at most 50/s).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ebra_shared::queue::Enqueue;
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::harness::{self, BenchDatabase, BenchQueues};
use super::sqs_stub::SqsStub;
use super::stats::{ms, Summary};
use super::{Figure, ScenarioReport, Target};

/// The fixed request rate of the stub and GET runs.
const RATE: f64 = 200.0;
/// The API's pool here: one process serves every request (a Lambda instance has 2).
const POOL_SIZE: usize = 4;
const WARM_UP: usize = 50;
const MOTO_SENDS: usize = 200;
/// The POST-with-moto run keeps moto this busy (by its serial SendMessage time) ...
const MOTO_BUSY: f64 = 0.25;
/// ... and at most at this rate.
const MOTO_MAX_RATE: f64 = 50.0;
const TARGET_P99_MS: f64 = 10.0;

pub async fn run(quick: bool, sqs: &harness::BenchSqs) -> anyhow::Result<ScenarioReport> {
    let duration = Duration::from_secs(if quick { 5 } else { 10 });
    let moto = sqs.moto().await?;
    let db = BenchDatabase::create(POOL_SIZE).await?;
    let queues = match BenchQueues::create(moto, 10, 180).await {
        Ok(queues) => queues,
        Err(error) => {
            db.drop().await;
            return Err(error);
        }
    };
    let stub = match SqsStub::start().await {
        Ok(stub) => stub,
        Err(error) => {
            queues.delete().await;
            db.drop().await;
            return Err(error);
        }
    };
    let result = measure(&db, &queues, &stub, duration).await;
    stub.stop();
    queues.delete().await;
    db.drop().await;
    result
}

/// One request's fate.
struct Sent {
    /// From the send to the end of the response body.
    latency: Duration,
    /// How late the send left against its schedule.
    lag: Duration,
    result: Result<Option<Uuid>, String>,
}

struct Phase {
    name: &'static str,
    rate: f64,
    summary: Summary,
    lag: Summary,
    errors: Vec<String>,
    ids: Vec<Uuid>,
}

async fn measure(
    db: &BenchDatabase,
    queues: &BenchQueues,
    stub: &SqsStub,
    duration: Duration,
) -> anyhow::Result<ScenarioReport> {
    let moto_config = Arc::new(harness::config(&db.url, &queues.queue_url, &[])?);
    let stub_config = Arc::new(harness::config(&db.url, &stub.queue_url, &[])?);
    let (moto_base, stop_moto) = serve(ebra_api::AppState::new(
        db.pool.clone(),
        Some(queues.calls_queue()),
        moto_config,
    ))
    .await?;
    let (stub_base, stop_stub) = serve(ebra_api::AppState::new(
        db.pool.clone(),
        Some(stub.calls_queue()),
        stub_config,
    ))
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;

    // Untimed: connections opened, statements prepared.
    for n in 0..WARM_UP {
        for base in [&stub_base, &moto_base] {
            post_call(http.clone(), format!("{base}/calls"), n)
                .await
                .map_err(|e| anyhow::anyhow!("warm-up POST /calls: {e}"))?;
        }
    }

    let requests = (RATE * duration.as_secs_f64()) as usize;
    println!(
        "   open-loop at {RATE:.0} req/s for {} s: {requests} × POST /calls (SQS → stub), {requests} × GET /calls/{{id}} ...",
        duration.as_secs()
    );
    let stub_sends_before = stub.counts().get("SendMessage").copied().unwrap_or(0);
    let post_stub = {
        let http = http.clone();
        let url = format!("{stub_base}/calls");
        phase(
            "POST /calls, SQS send to a stub",
            RATE,
            duration,
            move |n| post_call(http.clone(), url.clone(), n),
        )
        .await?
    };
    let stub_sends = stub.counts().get("SendMessage").copied().unwrap_or(0) - stub_sends_before;
    let ids: Arc<Vec<Uuid>> = Arc::new(post_stub.ids.clone());
    anyhow::ensure!(!ids.is_empty(), "no call was created, so none can be read");
    let get = {
        let http = http.clone();
        let base = stub_base.clone();
        let ids = ids.clone();
        phase("GET /calls/{id}", RATE, duration, move |n| {
            get_call(http.clone(), format!("{base}/calls/{}", ids[n % ids.len()]))
        })
        .await?
    };

    // moto's own share: SendMessage alone, one at a time.
    let queue = queues.calls_queue();
    let mut moto_sends = Vec::with_capacity(MOTO_SENDS);
    for _ in 0..MOTO_SENDS {
        let started = Instant::now();
        queue
            .send(Enqueue::now(Uuid::now_v7()))
            .await
            .context("SendMessage to moto")?;
        moto_sends.push(started.elapsed());
    }
    let moto = Summary::of(&moto_sends).context("no moto samples")?;

    // POST with moto, at a rate moto can follow: it answers one request at a time (and
    // slows down when requests overlap), so sending faster only measures its queue.
    let moto_rate = (MOTO_BUSY * 1000.0 / moto.p50_ms)
        .floor()
        .clamp(1.0, MOTO_MAX_RATE);
    let moto_requests = (moto_rate * duration.as_secs_f64()) as usize;
    println!(
        "   open-loop at {moto_rate:.0} req/s: {moto_requests} × POST /calls (SQS → moto) ..."
    );
    let post_moto = {
        let http = http.clone();
        let url = format!("{moto_base}/calls");
        phase(
            "POST /calls, SQS send to moto",
            moto_rate,
            duration,
            move |n| post_call(http.clone(), url.clone(), n),
        )
        .await?
    };
    let _ = stop_moto.send(());
    let _ = stop_stub.send(());

    let how_loop = |rate: f64, count: usize| {
        format!(
            "ebra_api::router served by axum on 127.0.0.1:0, reqwest in the same process; open-loop {rate:.0} req/s \
             for {} s ({count} requests) after {WARM_UP} warm-up requests; latency from handing the request to the \
             client to the end of the body; Postgres pool of {POOL_SIZE}",
            duration.as_secs()
        )
    };
    let mut report = ScenarioReport::new("api");
    report.figures.push(
        Figure::new("api: POST /calls p99 (our own work)", post_stub.summary.p99_ms, "ms", post_stub.summary.p50_p99())
            .target(Target::Below(TARGET_P99_MS))
            .how(format!(
                "{}; the SQS SendMessage after the commit goes to a stub answering at once ({stub_sends} sends)",
                how_loop(RATE, requests)
            )),
    );
    report.figures.push(
        Figure::new(
            "api: GET /calls/{id} p99",
            get.summary.p99_ms,
            "ms",
            get.summary.p50_p99(),
        )
        .target(Target::Below(TARGET_P99_MS))
        .how(format!(
            "{}; ids of the calls created above, round robin",
            how_loop(RATE, requests)
        )),
    );
    report.figures.push(
        Figure::new("api: moto SendMessage alone", moto.p50_ms, "ms", moto.p50_p99()).how(format!(
            "{MOTO_SENDS} CallsQueue::send calls to moto at {}, one at a time: the emulator's share of a POST",
            queues.endpoint
        )),
    );
    report.figures.push(
        Figure::new("api: POST /calls p99 with moto", post_moto.summary.p99_ms, "ms", post_moto.summary.p50_p99()).how(
            format!(
                "{}; the SQS SendMessage goes to moto; rate = {MOTO_BUSY} × 1000 / moto's SendMessage p50 (ms), at \
                 most {MOTO_MAX_RATE:.0}/s, to keep moto's queue out",
                how_loop(moto_rate, moto_requests)
            ),
        ),
    );
    for phase in [&post_stub, &get, &post_moto] {
        if !phase.errors.is_empty() {
            report.notes.push(format!(
                "{}: {} of {} requests failed, first: {}",
                phase.name,
                phase.errors.len(),
                phase.errors.len() + phase.summary.count,
                phase.errors[0]
            ));
        }
        if phase.lag.p99_ms > 2.0 {
            report.notes.push(format!(
                "{}: sends left up to {} ms after their schedule (p99): the generator, in the same process, was \
                 short of CPU too",
                phase.name,
                ms(phase.lag.p99_ms)
            ));
        }
    }
    let phase_json = |phase: &Phase| {
        json!({
            "name": phase.name,
            "ratePerSecond": phase.rate,
            "latency": phase.summary,
            "sendLag": phase.lag,
            "errors": phase.errors.len(),
            "firstError": phase.errors.first(),
        })
    };
    report.details = json!({
        "seconds": duration.as_secs(),
        "poolSize": POOL_SIZE,
        "phases": [phase_json(&post_stub), phase_json(&get), phase_json(&post_moto)],
        "motoSendMessage": moto,
        "stubSendMessages": stub_sends,
    });
    Ok(report)
}

/// Serves the API on a loopback port; returns its base URL and a stop switch.
async fn serve(state: ebra_api::AppState) -> anyhow::Result<(String, oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the API listener")?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let served = axum::serve(listener, ebra_api::router(state))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            eprintln!("   warning: the bench API listener stopped: {error}");
        }
    });
    Ok((base, stop))
}

/// Sends `rate × duration` requests made by `make(n)`, one every 1/rate s.
async fn phase<F, Fut>(
    name: &'static str,
    rate: f64,
    duration: Duration,
    make: F,
) -> anyhow::Result<Phase>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Option<Uuid>, String>> + Send + 'static,
{
    let count = (rate * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let scheduled = start + interval * n as u32;
        tokio::time::sleep_until(scheduled).await;
        let request = make(n);
        tasks.push(tokio::spawn(async move {
            let lag = scheduled.elapsed();
            let started = Instant::now();
            let result = request.await;
            Sent {
                latency: started.elapsed(),
                lag,
                result,
            }
        }));
    }
    let finished = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks))
        .await
        .with_context(|| {
            format!("{name}: responses did not arrive within 30 s of the last send")
        })?;
    let mut latencies = Vec::with_capacity(count);
    let mut lags = Vec::with_capacity(count);
    let mut errors = Vec::new();
    let mut ids = Vec::new();
    for sent in finished {
        let sent = sent.context("a request task panicked")?;
        lags.push(sent.lag);
        match sent.result {
            Ok(id) => {
                latencies.push(sent.latency);
                ids.extend(id);
            }
            Err(error) => errors.push(error),
        }
    }
    Ok(Phase {
        name,
        rate,
        summary: Summary::of(&latencies)
            .with_context(|| format!("{name}: every request failed: {errors:?}"))?,
        lag: Summary::of(&lags).context("no requests were sent")?,
        errors,
        ids,
    })
}

async fn post_call(http: reqwest::Client, url: String, n: usize) -> Result<Option<Uuid>, String> {
    let body = json!({"to": harness::phone(n % 100_000).as_str(), "scriptId": "bench-api", "metadata": {"n": n}});
    let response = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST /calls: {e}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("POST /calls body: {e}"))?;
    if status != reqwest::StatusCode::CREATED {
        return Err(format!(
            "POST /calls answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let created: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("POST /calls JSON: {e}"))?;
    Ok(created["id"].as_str().and_then(|id| id.parse().ok()))
}

async fn get_call(http: reqwest::Client, url: String) -> Result<Option<Uuid>, String> {
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET /calls/{{id}}: {e}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("GET /calls/{{id}} body: {e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!(
            "GET /calls/{{id}} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(None)
}
