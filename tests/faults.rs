//! Fault-injection suite (issue 6): many calls through the real handlers, with every fault
//! of the issue injected at once, and the invariants measured rather than assumed.
//!
//! What runs is what runs in production, wired as Lambda and SQS wire it:
//! - the API router (`ebra_api::router`) creates the calls, a client retrying its 5xx with
//!   the same `Idempotency-Key`;
//! - the worker's `handle_batch`, fed from the real (moto) queue as the event source mapping
//!   feeds it (receive → `ebra::local::sqs_event` → `handle_batch` → delete what was not
//!   returned), by several pollers at once;
//! - the webhook router (`ebra_webhook::router`) over HTTP, called back by the provider;
//! - the reclaimer's `run_pass` on a short timer;
//! - a fake provider (axum on 127.0.0.1:0) dialed through the real `HttpProvider`, which
//!   honours `Idempotency-Key` like a real provider (a key it placed a call for gets that
//!   call back, and nothing new is placed) and records every placement.
//!
//! Faults, all together, every decision drawn from one seeded RNG:
//! - provider: 5xx (some after placing the call), dials answered only after the dial
//!   timeout (the call placed all the same), 429 with `Retry-After`, permanent 4xx;
//! - a worker crash between the dial and recording its result: the provider places the call
//!   and aborts the invocation that is dialing it; its messages come back after their
//!   visibility timeout and the reclaimer reclaims the stale call, whose retry must reuse
//!   the idempotency key;
//! - SQS: duplicate deliveries (received messages sent again), sends that fail after the
//!   commit (calls created through an API whose queue does not exist: the reclaimer's outbox
//!   sweep must deliver them), and poison bodies, the only messages allowed in the DLQ;
//! - webhooks: duplicates (same `webhook-id`), out of order (FAILED after COMPLETED, under
//!   another id), early (posted before the dial is answered) and forged (bad signatures);
//! - Postgres: every ~200 ms, backends of the test database are terminated — those idle in
//!   a transaction, and random active or idle ones — from an admin connection of its own.
//!
//! - calling rules (issue 14): some calls carry a calling window (most open now, some that
//!   open at the next minute, so they wait parked and the refill brings them), some numbers
//!   are put on the do-not-call list right after their call is created, and some before
//!   (their creates must be refused).
//!
//! It asserts, and prints as `faults: calls=… lost=… double_dials=… …`:
//! - no call lost: every accepted call exists and is terminal, or PENDING with an outbox mark
//!   or a message that will deliver it — and the run reaches that state before a deadline;
//! - no double dial: no idempotency key placed twice, no dial that may have been placed
//!   retried under a new key, and no call placed under a new key while the call placed
//!   under its previous key was unknown to Ebra;
//! - calls in progress never above the cap (sampled every ~20 ms throughout), nor calls live
//!   at the provider;
//! - campaigns in the mix (a quarter of the calls in one with a `maxConcurrency`, a quarter
//!   in one without): no campaign ever above its `maxConcurrency` (sampled with the cap,
//!   printed as `campaign_overruns`);
//! - no two calls to one phone at once: neither in Postgres (sampled) nor at the provider
//!   (placement to hang-up intervals per phone);
//! - the DLQ holds exactly the injected poison messages;
//! - no dial outside its call's window, no dial of a number after its suppression was
//!   written, every create to a suppressed number refused (`faults rules: …`);
//! - every forged webhook refused (401), no genuine one refused, no call moved backwards
//!   (each settled dial keeps the provider's first genuine report) and no early webhook
//!   left held once its dial is recorded.
//!
//! A dial answered late (a timeout) may have been placed, so Ebra keeps its slot and phone
//! until it knows: calls after such dials count like any other. A provider that answers
//! 5xx *after* placing the call breaks its contract (a 5xx says it failed, so Ebra frees the
//! slot and retries with the same key): overlaps caused by such lies are reported, not
//! failed.
//!
//! Size: 200 calls by default (CI: about 35 s on 2 cores). The full size, 5,000 calls
//! (6 to 12 minutes, with a moto of its own):
//!
//! ```text
//! EBRA_FAULTS_CALLS=5000 scripts/test --test faults --no-capture
//! ```
//!
//! Moto is most of the cost, and a shared one is slower still: pointing
//! `AWS_ENDPOINT_URL_SQS` at a moto of the run's own (`moto_server -p 5055`) helps.
//! `EBRA_FAULTS_SEED=<u64>` replays a seed (every run prints its own). The seed fixes every
//! decision (which faults, phones, outcomes); the interleaving is the machine's.
//! `RUST_LOG=info` (or finer) shows the handlers' logs.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::{dial_accepted, TestEnv, WEBHOOK_SECRET};
use ebra_api::AppState;
use ebra_reclaimer::{run_pass, ReclaimerState};
use ebra_shared::domain::{CallOutcome, DialRequest};
use ebra_shared::provider::HttpProvider;
use ebra_shared::queue::CallsQueue;
use ebra_shared::webhook_signature::WebhookSecret;
use ebra_webhook::WebhookState;
use ebra_worker::{handle_batch, WorkerState};
use futures::future::{abortable, AbortHandle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// The run's shape
// ---------------------------------------------------------------------------------------

const DEFAULT_CALLS: usize = 200;
const DEFAULT_SEED: u64 = 0xeb4a_fa17;

/// `GLOBAL_CONCURRENCY`.
const CAP: u32 = 10;
/// The limited campaign's maxConcurrency (a quarter of the calls are in it).
const CAMPAIGN_MAX_CONCURRENCY: u32 = 3;
/// The calls queue's visibility timeout: what a crashed invocation's messages wait.
const VISIBILITY_SECONDS: u32 = 2;
const DIAL_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_ATTEMPTS: i32 = 5;
/// Longer than any call the fake provider plays (≤ 1.5 s), so only silent calls go stale.
const STALE_INPROG_SECONDS: u64 = 3;
/// Invocations at once: the event source mapping's `MaximumConcurrency`.
const POLLERS: usize = 5;
/// Each poller is a Lambda instance with its own small pool.
const WORKER_POOL: usize = 4;
const CREATORS: usize = 4;
/// Calls created but not yet terminal, at most: a backlog of four times the cap keeps
/// every slot contended, and moto (whose receive is linear in the queue's depth) slows
/// to a crawl with deep queues.
const WINDOW: usize = 4 * CAP as usize;
const RECLAIMER_EVERY: Duration = Duration::from_millis(250);
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// Chances per fresh dial (a key the provider has not placed a call for).
const P_5XX: f64 = 0.08;
const P_5XX_AFTER_PLACING: f64 = 0.03;
const P_TIMEOUT: f64 = 0.06;
const P_429: f64 = 0.06;
const P_4XX: f64 = 0.02;
const P_CRASH: f64 = 0.03;
const P_EARLY_WEBHOOK: f64 = 0.08;
/// Chances per placed call.
const P_LONG_CALL: f64 = 0.15;
const P_DUPLICATE_WEBHOOK: f64 = 0.12;
const P_OUT_OF_ORDER: f64 = 0.10;
const P_FORGED: f64 = 0.06;
/// Chance per received dial message that it is sent again (a duplicate delivery).
const P_DUPLICATE_SQS: f64 = 0.05;
/// Chance per call that it is created through an API whose SQS send fails.
const P_BROKEN_QUEUE: f64 = 0.10;
/// Share of calls to a few shared phones (the rest each have a phone of their own).
const P_SHARED_PHONE: f64 = 0.20;

/// Calling rules (issue 14): shares of calls with a window open now, with a window that
/// opens at the next minute, whose number is suppressed right after the create, and whose
/// number is suppressed before it (the create must be refused).
const P_WINDOW_OPEN: f64 = 0.08;
const P_WINDOW_WAIT: f64 = 0.03;
const P_SUPPRESS_AFTER: f64 = 0.03;
const P_SUPPRESS_BEFORE: f64 = 0.02;
/// The zones the windows are written in.
const WINDOW_ZONES: [&str; 4] = [
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
];

/// What a call of the run does about the calling rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleCase {
    None,
    WindowOpen,
    WindowWait,
    SuppressAfter,
    SuppressBefore,
}

impl RuleCase {
    fn roll(rng: &mut StdRng) -> Self {
        let x: f64 = rng.random();
        let mut edge = P_WINDOW_OPEN;
        if x < edge {
            return Self::WindowOpen;
        }
        edge += P_WINDOW_WAIT;
        if x < edge {
            return Self::WindowWait;
        }
        edge += P_SUPPRESS_AFTER;
        if x < edge {
            return Self::SuppressAfter;
        }
        edge += P_SUPPRESS_BEFORE;
        if x < edge {
            return Self::SuppressBefore;
        }
        Self::None
    }
}

/// A window four hours long in `zone`, opening at the start of the current local minute
/// (open now), or at the next one at least 5 s away (the call waits for it).
fn window_in(zone: &str, opens_later: bool) -> serde_json::Value {
    use chrono::Timelike as _;
    let tz: chrono_tz::Tz = zone.parse().expect("a zone");
    let now = chrono::Utc::now();
    let opening = if opens_later {
        // The minute that starts 5 to 65 s from now.
        (now + chrono::Duration::seconds(65)).with_timezone(&tz)
    } else {
        now.with_timezone(&tz)
    };
    let start = opening.hour() * 60 + opening.minute();
    let end = (start + 4 * 60) % (24 * 60);
    json!({
        "start": format!("{:02}:{:02}", start / 60, start % 60),
        "end": format!("{:02}:{:02}", end / 60, end % 60),
    })
}

/// Bodies no worker can parse: these, and only these, must end in the DLQ.
const POISON: [&str; 4] = [
    "not json at all",
    r#"{"callId":"not-a-uuid"}"#,
    r#"{"call":"missing"}"#,
    "[]",
];

struct Settings {
    calls: usize,
    seed: u64,
    shared_phones: usize,
    /// The bound on the whole run: past it the test fails with what is still open.
    deadline: Duration,
}

impl Settings {
    fn from_env() -> Self {
        let calls = std::env::var("EBRA_FAULTS_CALLS")
            .ok()
            .map(|raw| {
                raw.trim()
                    .parse::<usize>()
                    .expect("EBRA_FAULTS_CALLS must be a whole number")
            })
            .unwrap_or(DEFAULT_CALLS)
            .max(20);
        let seed = std::env::var("EBRA_FAULTS_SEED")
            .ok()
            .map(|raw| {
                raw.trim()
                    .parse::<u64>()
                    .expect("EBRA_FAULTS_SEED must be a u64")
            })
            .unwrap_or(DEFAULT_SEED);
        Self {
            calls,
            seed,
            // About eight calls per shared phone: enough waiting for a busy phone, not so
            // much that the run is a queue for one number.
            shared_phones: (calls / 40).max(5),
            // A bound on liveness, not a speed target: at least five calls settled a second
            // (measured here: about seven, with a backend killed every 200 ms).
            deadline: Duration::from_secs(90 + calls as u64 / 5),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn millis(rng: &mut StdRng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.random_range(range))
}

// ---------------------------------------------------------------------------------------
// The fake provider
// ---------------------------------------------------------------------------------------

/// What the provider does with a dial for a key it has not placed a call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DialFault {
    /// Places the call and answers 202 at once.
    None,
    /// Places the call and reports its outcome before answering the dial.
    EarlyWebhook,
    /// 5xx, nothing placed.
    ServerError,
    /// Places the call, then answers 503.
    ServerErrorAfterPlacing,
    /// Places the call, answers only after the dial timeout.
    Timeout,
    /// 429 with `Retry-After: 1`, nothing placed.
    RateLimited,
    /// 422, nothing placed: the call fails for good.
    Permanent,
    /// Places the call, then crashes the worker invocation dialing it.
    Crash,
}

impl DialFault {
    fn roll(rng: &mut StdRng) -> Self {
        let table = [
            (P_5XX, DialFault::ServerError),
            (P_5XX_AFTER_PLACING, DialFault::ServerErrorAfterPlacing),
            (P_TIMEOUT, DialFault::Timeout),
            (P_429, DialFault::RateLimited),
            (P_4XX, DialFault::Permanent),
            (P_CRASH, DialFault::Crash),
            (P_EARLY_WEBHOOK, DialFault::EarlyWebhook),
        ];
        let x: f64 = rng.random();
        let mut acc = 0.0;
        for (chance, fault) in table {
            acc += chance;
            if x < acc {
                return fault;
            }
        }
        DialFault::None
    }

    fn places(self) -> bool {
        !matches!(
            self,
            DialFault::ServerError | DialFault::RateLimited | DialFault::Permanent
        )
    }
}

/// A forged webhook: each must get a 401.
#[derive(Debug, Clone, Copy)]
enum Forgery {
    WrongSecret,
    /// The genuine id and signature over another body.
    TamperedBody,
    EmptySignature,
    StaleTimestamp,
    Unsigned,
}

/// How one placed call plays out at the provider.
#[derive(Debug, Clone)]
struct CallScript {
    duration: Duration,
    status: CallOutcome,
    duplicate: bool,
    out_of_order: bool,
    forgery: Option<Forgery>,
}

impl CallScript {
    fn roll(rng: &mut StdRng) -> Self {
        let duration = if rng.random_bool(P_LONG_CALL) {
            millis(rng, 600..1500)
        } else {
            millis(rng, 20..250)
        };
        let status = match rng.random_range(0..100u32) {
            0..=77 => CallOutcome::Completed,
            78..=83 => CallOutcome::Failed,
            84..=91 => CallOutcome::Busy,
            _ => CallOutcome::NoAnswer,
        };
        let forgery = rng
            .random_bool(P_FORGED)
            .then(|| match rng.random_range(0..5u32) {
                0 => Forgery::WrongSecret,
                1 => Forgery::TamperedBody,
                2 => Forgery::EmptySignature,
                3 => Forgery::StaleTimestamp,
                _ => Forgery::Unsigned,
            });
        Self {
            duration,
            status,
            duplicate: rng.random_bool(P_DUPLICATE_WEBHOOK),
            out_of_order: rng.random_bool(P_OUT_OF_ORDER),
            forgery,
        }
    }
}

/// One call the provider placed.
#[derive(Debug, Clone)]
struct Placement {
    key: String,
    provider_call_id: String,
    /// The call's index in this run (`metadata.n`).
    n: usize,
    phone: String,
    fault: DialFault,
    placed_at: Instant,
    /// When the call ended (the provider starts reporting it).
    ended_at: Option<Instant>,
    /// The outcome the provider reported first (the genuine one).
    status: Option<CallOutcome>,
}

#[derive(Default)]
struct Book {
    rng: Option<StdRng>,
    dial_requests: u64,
    requests_without_key: u64,
    /// Dials answered from an earlier placement for their key.
    dedup_hits: u64,
    /// Idempotency-Key → index in `placements`.
    by_key: HashMap<String, usize>,
    placements: Vec<Placement>,
    faults: HashMap<DialFault, u64>,
}

impl Book {
    fn rng(&mut self) -> &mut StdRng {
        self.rng.as_mut().expect("the provider's RNG")
    }
}

#[derive(Default)]
struct WebhookStats {
    genuine: AtomicU64,
    early: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    forged: AtomicU64,
    forged_accepted: AtomicU64,
    /// Genuine reports answered 4xx: a correctly signed report must never be refused.
    genuine_refused: AtomicU64,
    /// Re-posts after a 5xx or a connection error (the database was cut, say).
    retried: AtomicU64,
    undelivered: AtomicU64,
}

struct ProviderShared {
    book: Mutex<Book>,
    secret: WebhookSecret,
    impostor: WebhookSecret,
    http: reqwest::Client,
    crashes: Arc<Crashes>,
    webhooks_in_flight: AtomicUsize,
    stats: WebhookStats,
}

struct FakeProvider {
    base_url: String,
    shared: Arc<ProviderShared>,
    server: JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeProvider {
    async fn start(seed: u64, crashes: Arc<Crashes>) -> Self {
        let shared = Arc::new(ProviderShared {
            book: Mutex::new(Book {
                rng: Some(StdRng::seed_from_u64(seed)),
                ..Book::default()
            }),
            secret: WebhookSecret::parse(WEBHOOK_SECRET).expect("test secret"),
            impostor: WebhookSecret::parse("whsec_b3RoZXIta2V5LWZvci10ZXN0cw==")
                .expect("impostor secret"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("webhook client"),
            crashes,
            webhooks_in_flight: AtomicUsize::new(0),
            stats: WebhookStats::default(),
        });
        let router = Router::new()
            .route("/api/v1/calls", post(fake_dial))
            .with_state(shared.clone());
        let (base_url, server) = common::serve_on_loopback(router).await;
        Self {
            base_url,
            shared,
            server,
        }
    }
}

async fn fake_dial(
    State(p): State<Arc<ProviderShared>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let phone = body["to"].as_str().unwrap_or_default().to_owned();
    let webhook_url = body["webhookUrl"].as_str().unwrap_or_default().to_owned();
    let n = body["metadata"]["n"]
        .as_u64()
        .map_or(usize::MAX, |n| n as usize);

    // Check the key, roll the fault and place the call under one lock: two concurrent dials
    // with one key can never both place.
    let (fault, placed) = {
        let mut book = lock(&p.book);
        book.dial_requests += 1;
        if key.is_empty() {
            book.requests_without_key += 1;
            return (StatusCode::BAD_REQUEST, "Idempotency-Key is required").into_response();
        }
        if let Some(&i) = book.by_key.get(&key) {
            book.dedup_hits += 1;
            return dial_accepted(&book.placements[i].provider_call_id);
        }
        let fault = DialFault::roll(book.rng());
        *book.faults.entry(fault).or_default() += 1;
        let placed = fault.places().then(|| {
            let index = book.placements.len();
            let provider_call_id = format!("pc-{index}");
            book.placements.push(Placement {
                key: key.clone(),
                provider_call_id: provider_call_id.clone(),
                n,
                phone,
                fault,
                placed_at: Instant::now(),
                ended_at: None,
                status: None,
            });
            book.by_key.insert(key.clone(), index);
            let script = CallScript::roll(book.rng());
            (index, provider_call_id, script)
        });
        (fault, placed)
    };

    let Some((index, provider_call_id, script)) = placed else {
        return match fault {
            DialFault::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response(),
            DialFault::Permanent => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "this number cannot be called",
            )
                .into_response(),
            _ => {
                let status = [
                    StatusCode::INTERNAL_SERVER_ERROR,
                    StatusCode::BAD_GATEWAY,
                    StatusCode::SERVICE_UNAVAILABLE,
                ][n % 3];
                (status, "provider trouble").into_response()
            }
        };
    };

    // The call is placed: it plays out (and is reported) whatever becomes of this answer,
    // in a task of its own so that a dropped connection cannot cut it short.
    let early = fault == DialFault::EarlyWebhook;
    p.webhooks_in_flight.fetch_add(1, Ordering::SeqCst);
    let call = tokio::spawn(play_call(
        p.clone(),
        index,
        provider_call_id.clone(),
        webhook_url,
        script,
        early,
    ));
    match fault {
        DialFault::EarlyWebhook => {
            // The webhook outruns the dial's answer: Ebra must hold it, not lose it.
            let _ = call.await;
            dial_accepted(&provider_call_id)
        }
        DialFault::ServerErrorAfterPlacing => {
            (StatusCode::SERVICE_UNAVAILABLE, "placed, then fell over").into_response()
        }
        DialFault::Timeout => {
            tokio::time::sleep(DIAL_TIMEOUT + Duration::from_millis(400)).await;
            dial_accepted(&provider_call_id)
        }
        DialFault::Crash => {
            // The worker dies after the provider took the dial, before it hears back.
            p.crashes.crash_invocation_dialing(n).await;
            tokio::time::sleep(DIAL_TIMEOUT + Duration::from_millis(400)).await;
            dial_accepted(&provider_call_id)
        }
        _ => dial_accepted(&provider_call_id),
    }
}

/// The placed call: it lasts its duration (none when its report outruns the dial), then
/// the provider reports it — with the script's duplicate, out-of-order and forged extras.
async fn play_call(
    p: Arc<ProviderShared>,
    index: usize,
    provider_call_id: String,
    webhook_url: String,
    script: CallScript,
    early: bool,
) {
    if !early {
        tokio::time::sleep(script.duration).await;
    }
    {
        let mut book = lock(&p.book);
        let placement = &mut book.placements[index];
        placement.ended_at = Some(Instant::now());
        placement.status = Some(script.status);
    }
    if early {
        p.stats.early.fetch_add(1, Ordering::Relaxed);
    }
    let webhook_id = format!("wh_{provider_call_id}");
    let body = report_body(&provider_call_id, script.status);
    if let Some(forgery) = script.forgery {
        p.post_forged(&webhook_url, &webhook_id, &provider_call_id, forgery)
            .await;
    }
    p.stats.genuine.fetch_add(1, Ordering::Relaxed);
    p.deliver(&webhook_url, &webhook_id, &body).await;
    if script.duplicate {
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.stats.duplicates.fetch_add(1, Ordering::Relaxed);
        p.deliver(&webhook_url, &webhook_id, &body).await;
    }
    if script.out_of_order && script.status == CallOutcome::Completed {
        p.stats.out_of_order.fetch_add(1, Ordering::Relaxed);
        let late = report_body(&provider_call_id, CallOutcome::Failed);
        p.deliver(&webhook_url, &format!("{webhook_id}_late"), &late)
            .await;
    }
    p.webhooks_in_flight.fetch_sub(1, Ordering::SeqCst);
}

fn report_body(provider_call_id: &str, status: CallOutcome) -> Vec<u8> {
    json!({
        "callId": provider_call_id,
        "status": status.as_str(),
        "durationSec": 1,
        "completedAt": chrono::Utc::now().to_rfc3339(),
    })
    .to_string()
    .into_bytes()
}

impl ProviderShared {
    /// Posts a signed report until it is taken (2xx), as providers retry non-2xx webhooks.
    async fn deliver(&self, url: &str, webhook_id: &str, body: &[u8]) {
        for _ in 0..150 {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = self.secret.sign(webhook_id, timestamp, body);
            let answer = self
                .http
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", webhook_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.to_vec())
                .send()
                .await;
            match answer {
                Ok(response) if response.status().is_success() => return,
                Ok(response) if response.status().is_client_error() => {
                    self.stats.genuine_refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "faults: a genuine webhook {webhook_id} was refused with {}",
                        response.status()
                    );
                    return;
                }
                _ => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.stats.undelivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Posts a forged report claiming the call FAILED; it must get a 401.
    async fn post_forged(
        &self,
        url: &str,
        genuine_id: &str,
        provider_call_id: &str,
        forgery: Forgery,
    ) {
        let body = report_body(provider_call_id, CallOutcome::Failed);
        let now = chrono::Utc::now().timestamp();
        let forged_id = format!("forged_{}", Uuid::new_v4().simple());
        let (webhook_id, timestamp, signature) = match forgery {
            Forgery::WrongSecret => {
                let signature = self.impostor.sign(&forged_id, now, &body);
                (forged_id, now, Some(signature))
            }
            Forgery::TamperedBody => {
                let signed_body = report_body(provider_call_id, CallOutcome::Completed);
                let signature = self.secret.sign(genuine_id, now, &signed_body);
                (genuine_id.to_owned(), now, Some(signature))
            }
            Forgery::EmptySignature => (forged_id, now, Some("v1,".to_owned())),
            Forgery::StaleTimestamp => {
                let stale = now - 600;
                let signature = self.secret.sign(&forged_id, stale, &body);
                (forged_id, stale, Some(signature))
            }
            Forgery::Unsigned => (forged_id, now, None),
        };
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .body(body);
        if let Some(signature) = signature {
            request = request.header("webhook-signature", signature);
        }
        self.stats.forged.fetch_add(1, Ordering::Relaxed);
        match request.send().await {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {}
            Ok(response) => {
                self.stats.forged_accepted.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "faults: a forged webhook ({forgery:?}) got {}",
                    response.status()
                );
            }
            Err(error) => {
                self.stats.forged_accepted.fetch_add(1, Ordering::Relaxed);
                eprintln!("faults: a forged webhook ({forgery:?}) got no answer: {error}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Worker crashes: which invocation is dialing which call
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Crashes {
    /// `metadata.n` → call id, as the API answered.
    call_ids: Mutex<HashMap<usize, Uuid>>,
    /// Invocations in flight: the calls of their batch, and how to kill them.
    invocations: Mutex<HashMap<u64, (Vec<Uuid>, AbortHandle)>>,
    next_invocation: AtomicU64,
    /// Invocations killed by a crash.
    killed: AtomicU64,
    /// Crashes rolled for a call no invocation was found dialing.
    missed: AtomicU64,
}

impl Crashes {
    fn register(&self, call_ids: Vec<Uuid>, abort: AbortHandle) -> u64 {
        let id = self.next_invocation.fetch_add(1, Ordering::Relaxed);
        lock(&self.invocations).insert(id, (call_ids, abort));
        id
    }

    fn unregister(&self, id: u64) {
        lock(&self.invocations).remove(&id);
    }

    /// Aborts every invocation whose batch holds call `n`: the dial's answer is never read.
    async fn crash_invocation_dialing(&self, n: usize) {
        // The API may not have answered its creator yet (the message can outrun it).
        let mut call_id = None;
        for _ in 0..50 {
            call_id = lock(&self.call_ids).get(&n).copied();
            if call_id.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Some(call_id) = call_id else {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let handles: Vec<AbortHandle> = lock(&self.invocations)
            .values()
            .filter(|(calls, _)| calls.contains(&call_id))
            .map(|(_, abort)| abort.clone())
            .collect();
        if handles.is_empty() {
            self.missed.fetch_add(1, Ordering::Relaxed);
        }
        for abort in handles {
            abort.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The moving parts around the handlers
// ---------------------------------------------------------------------------------------

/// What the loops share, and what they count.
struct Run {
    stop: AtomicBool,
    queue: CallsQueue,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    crashes: Arc<Crashes>,
    /// Calls the API accepted, by index: (call id, created through the broken queue).
    created: Mutex<Vec<Option<(Uuid, bool)>>>,
    created_count: AtomicUsize,
    create_failures: Mutex<Vec<String>>,
    api_retries: AtomicU64,
    /// Terminal calls, as the monitor last counted them.
    terminal: AtomicUsize,
    invocations: AtomicU64,
    handler_panics: AtomicU64,
    sqs_duplicates: AtomicU64,
    reclaimer_passes: AtomicU64,
    reclaimer_errors: AtomicU64,
    stale_reclaimed: AtomicU64,
    outbox_resent: AtomicU64,
    backends_killed: AtomicU64,
    /// Each call's calling-rules case, by index.
    rule_cases: Mutex<Vec<RuleCase>>,
    /// Numbers suppressed after their call was created, with when the suppression had
    /// committed (its PUT answered).
    suppressed_after: Mutex<Vec<(String, chrono::DateTime<chrono::Utc>)>>,
    /// Creates refused as suppressed (they were meant to be).
    refused_suppressed: AtomicUsize,
}

/// One Lambda instance behind the event source mapping: receive, invoke, delete what was
/// not returned (as `src/local/event_source.rs`), plus duplicate deliveries and crashes.
async fn poll_queue(run: Arc<Run>, worker: Arc<WorkerState>, mut rng: StdRng) {
    while !run.stop.load(Ordering::Relaxed) {
        let messages = match run.queue.receive(Duration::from_secs(1)).await {
            Ok(messages) => messages,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let mut call_ids = Vec::new();
        for message in &messages {
            let body = message.body().unwrap_or_default();
            let Ok(request) = serde_json::from_str::<DialRequest>(body) else {
                continue;
            };
            call_ids.push(request.call_id);
            // At-least-once: the same message again, now or a little later.
            if rng.random_bool(P_DUPLICATE_SQS) {
                let sent = run
                    .sqs
                    .send_message()
                    .queue_url(&run.queue_url)
                    .message_body(body)
                    .delay_seconds(rng.random_range(0..=2))
                    .send()
                    .await;
                if sent.is_ok() {
                    run.sqs_duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let event = ebra::local::sqs_event(&messages, &run.queue_arn);
        let invocation_worker = worker.clone();
        let (invocation, abort) =
            abortable(async move { handle_batch(&invocation_worker, event).await });
        let id = run.crashes.register(call_ids, abort);
        run.invocations.fetch_add(1, Ordering::Relaxed);
        let joined = tokio::spawn(invocation).await;
        run.crashes.unregister(id);
        let response = match joined {
            Ok(Ok(response)) => response,
            // Crashed: nothing is deleted, every message returns after its visibility.
            Ok(Err(_aborted)) => {
                run.crashes.killed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(error) => {
                // A panic fails the whole batch, as in Lambda; the test fails at the end.
                run.handler_panics.fetch_add(1, Ordering::Relaxed);
                eprintln!("faults: the worker's handler panicked: {error}");
                continue;
            }
        };
        // A failed delete only means one more (harmless) delivery.
        ebra::local::delete_succeeded(&run.queue, &messages, &response).await;
    }
}

/// The reclaimer's schedule, much compressed.
async fn reclaim_on_a_timer(run: Arc<Run>, state: ReclaimerState) {
    while !run.stop.load(Ordering::Relaxed) {
        match run_pass(&state).await {
            Ok(report) => {
                run.stale_reclaimed.fetch_add(
                    report.stale_retried + report.stale_failed,
                    Ordering::Relaxed,
                );
                run.outbox_resent
                    .fetch_add(report.outbox_resent, Ordering::Relaxed);
            }
            Err(_) => {
                run.reclaimer_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        run.reclaimer_passes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RECLAIMER_EVERY).await;
    }
}

/// A connection of its own (not from any pool), whose backend the killer spares.
async fn dedicated_connection(database_url: &str) -> (tokio_postgres::Client, i32) {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .expect("a dedicated connection");
    tokio::spawn(connection);
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    (client, pid)
}

#[derive(Debug, Default, Clone, Copy)]
struct Sampled {
    samples: u64,
    max_in_progress: i64,
    max_slots_held: i64,
    /// Samples that saw two calls to one phone IN_PROGRESS.
    phone_overlaps: u64,
    /// Samples that saw a campaign with more calls IN_PROGRESS than its maxConcurrency.
    campaign_overruns: u64,
    /// The most calls seen IN_PROGRESS in the limited campaign.
    max_in_limited_campaign: i64,
}

/// Samples calls in progress, slots held and busy phones every ~20 ms until stopped.
async fn sample_in_progress(run: Arc<Run>, client: tokio_postgres::Client) -> Sampled {
    let statement = client
        .prepare(
            "SELECT (SELECT count(*) FROM calls WHERE status = 'IN_PROGRESS'), \
                    (SELECT count(*) FROM call_slots WHERE call_id IS NOT NULL), \
                    (SELECT count(*) FROM (SELECT phone FROM calls WHERE status = 'IN_PROGRESS' \
                                            GROUP BY phone HAVING count(*) > 1) AS twice), \
                    (SELECT count(*) FROM campaigns k WHERE k.max_concurrency < \
                        (SELECT count(*) FROM calls c WHERE c.campaign_id = k.id AND c.status = 'IN_PROGRESS')), \
                    (SELECT COALESCE(max(n), 0) FROM (SELECT count(*) AS n FROM calls c \
                        JOIN campaigns k ON k.id = c.campaign_id \
                       WHERE c.status = 'IN_PROGRESS' AND k.max_concurrency IS NOT NULL \
                       GROUP BY k.id) AS limited)",
        )
        .await
        .expect("preparing the sampler");
    let mut sampled = Sampled::default();
    while !run.stop.load(Ordering::Relaxed) {
        let row = client.query_one(&statement, &[]).await.expect("sampling");
        let (in_progress, slots, twice): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let (overrun, in_limited): (i64, i64) = (row.get(3), row.get(4));
        if overrun > 0 {
            sampled.campaign_overruns += 1;
        }
        sampled.max_in_limited_campaign = sampled.max_in_limited_campaign.max(in_limited);
        sampled.samples += 1;
        sampled.max_in_progress = sampled.max_in_progress.max(in_progress);
        sampled.max_slots_held = sampled.max_slots_held.max(slots);
        if twice > 0 {
            sampled.phone_overlaps += 1;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    sampled
}

/// Counts terminal calls for the creators' window and the end of the run.
async fn monitor_terminal(run: Arc<Run>, client: tokio_postgres::Client) {
    while !run.stop.load(Ordering::Relaxed) {
        let row = client
            .query_one(
                "SELECT count(*) FROM calls WHERE status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED')",
                &[],
            )
            .await
            .expect("counting terminal calls");
        run.terminal
            .store(row.get::<_, i64>(0) as usize, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Terminates backends of the test database every ~200 ms: every one idle in a
/// transaction, often a random active one (mid-statement, often mid-transaction), now and
/// then a random idle one (a pooled connection that is dead when next used).
async fn kill_backends(run: Arc<Run>, database_url: String, spared: Vec<i32>, mut rng: StdRng) {
    let (admin, _) = dedicated_connection(&database_url).await;
    let db_name: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .expect("database name")
        .get(0);
    let kill = |state: &'static str, all: bool| {
        let limit: i64 = if all { 1000 } else { 1 };
        let admin = &admin;
        let db_name = &db_name;
        let spared = &spared;
        async move {
            admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM ( \
                        SELECT pid FROM pg_stat_activity \
                         WHERE datname = $1 AND pid <> pg_backend_pid() AND pid <> ALL($2) \
                           AND state = $3 \
                         ORDER BY random() LIMIT $4) AS victims",
                    &[db_name, spared, &state, &limit],
                )
                .await
                .map(|rows| rows.iter().filter(|row| row.get::<_, bool>(0)).count() as u64)
                .unwrap_or(0)
        }
    };
    while !run.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(millis(&mut rng, 150..250)).await;
        let mut killed = kill("idle in transaction", true).await;
        if rng.random_bool(0.6) {
            killed += kill("active", false).await;
        }
        if rng.random_bool(0.2) {
            killed += kill("idle", false).await;
        }
        run.backends_killed.fetch_add(killed, Ordering::Relaxed);
    }
}

fn phone_for(n: usize, settings: &Settings, rng: &mut StdRng) -> String {
    if rng.random_bool(P_SHARED_PHONE) {
        format!("+1212555{:04}", rng.random_range(0..settings.shared_phones))
    } else {
        // Area codes 415 and 650, exchange 555: distinct for up to 20,000 calls.
        let area = if n < 10_000 { 415 } else { 650 };
        format!("+1{area}555{:04}", n % 10_000)
    }
}

/// Creates calls through the API router as a client would: 5xx and transport trouble are
/// retried with the same `Idempotency-Key`, so a create is never doubled.
async fn create_calls(
    run: Arc<Run>,
    next: Arc<AtomicUsize>,
    settings: Arc<Settings>,
    api: Router,
    api_without_queue: Router,
    campaigns: [Uuid; 2],
) {
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= settings.calls || run.stop.load(Ordering::Relaxed) {
            return;
        }
        while n
            >= run.terminal.load(Ordering::SeqCst)
                + run.refused_suppressed.load(Ordering::SeqCst)
                + WINDOW
            && !run.stop.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut rng =
            StdRng::seed_from_u64(settings.seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let phone = phone_for(n, &settings, &mut rng);
        let broken_queue = rng.random_bool(P_BROKEN_QUEUE);
        let router = if broken_queue {
            &api_without_queue
        } else {
            &api
        };
        // The calling rules' draws come from an RNG of their own, so the rest of the run
        // draws as it did before they existed.
        let mut rules_rng = StdRng::seed_from_u64(
            settings.seed ^ 0x14 ^ (n as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
        );
        let case = RuleCase::roll(&mut rules_rng);
        lock(&run.rule_cases)[n] = case;
        let mut body = json!({"to": phone, "scriptId": "fault-suite", "metadata": {"n": n}});
        // A quarter in the limited campaign, a quarter in the unlimited one, half alone.
        if n % 4 < 2 {
            body["campaignId"] = json!(campaigns[n % 4]);
        }
        let phone = match case {
            RuleCase::SuppressAfter | RuleCase::SuppressBefore => {
                // A number of its own (Chicago's 312), so no other call shares it.
                let own = format!("+1312555{:04}", n % 10_000);
                body["to"] = json!(own);
                own
            }
            RuleCase::WindowOpen | RuleCase::WindowWait => {
                let zone = WINDOW_ZONES[rules_rng.random_range(0..WINDOW_ZONES.len())];
                body["timezone"] = json!(zone);
                body["window"] = window_in(zone, case == RuleCase::WindowWait);
                phone
            }
            RuleCase::None => phone,
        };
        if case == RuleCase::SuppressBefore {
            suppress(&api, &phone, &run).await;
        }
        let body = body.to_string();
        let mut outcome = Err("never answered".to_owned());
        for _ in 0..100 {
            let request = Request::post("/calls")
                .header("content-type", "application/json")
                .header("idempotency-key", format!("faults-{n}"))
                .body(Body::from(body.clone()))
                .expect("a create request");
            let response = router
                .clone()
                .oneshot(request)
                .await
                .expect("the router answers");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            if status == StatusCode::CREATED || status == StatusCode::OK {
                let call: serde_json::Value = serde_json::from_slice(&bytes).expect("a call");
                let id: Uuid = call["id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .expect("the call's id");
                outcome = Ok(id);
                break;
            }
            if status.is_server_error() {
                run.api_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if case == RuleCase::SuppressBefore
                && status == StatusCode::UNPROCESSABLE_ENTITY
                && problem["type"] == "urn:ebra:problem:suppressed"
            {
                outcome = Err(String::new());
                break;
            }
            outcome = Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
            break;
        }
        match outcome {
            Ok(id) => {
                lock(&run.crashes.call_ids).insert(n, id);
                lock(&run.created)[n] = Some((id, broken_queue));
                run.created_count.fetch_add(1, Ordering::SeqCst);
                if case == RuleCase::SuppressAfter {
                    suppress(&api, &phone, &run).await;
                    lock(&run.suppressed_after).push((phone, chrono::Utc::now()));
                }
            }
            Err(error) if error.is_empty() => {
                run.refused_suppressed.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => lock(&run.create_failures).push(format!("call {n} ({phone}): {error}")),
        }
    }
}

/// Puts `phone` on the do-not-call list, retrying 5xx (Postgres is being cut).
async fn suppress(api: &Router, phone: &str, run: &Run) {
    let path = format!("/suppressions/{}", phone.replace('+', "%2B"));
    for _ in 0..100 {
        let request = Request::put(path.as_str())
            .body(Body::empty())
            .expect("a suppression request");
        let status = api
            .clone()
            .oneshot(request)
            .await
            .expect("the router answers")
            .status();
        if status.is_success() {
            return;
        }
        assert!(status.is_server_error(), "suppressing {phone}: {status}");
        run.api_retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("suppressing {phone} never succeeded");
}

async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> usize {
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await;
    attributes
        .ok()
        .and_then(|a| a.attributes)
        .and_then(|a| {
            a.get(&QueueAttributeName::ApproximateNumberOfMessages)
                .cloned()
        })
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(0)
}

/// Receives everything on a queue, hiding each message for a minute so none is read twice.
async fn drain_bodies(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut empty_rounds = 0;
    while empty_rounds < 2 {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("draining a queue");
        let batch = out.messages.unwrap_or_default();
        if batch.is_empty() {
            empty_rounds += 1;
        }
        bodies.extend(batch.into_iter().filter_map(|m| m.body));
    }
    bodies
}

// ---------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_at_once_breaks_no_invariant() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let settings = Arc::new(Settings::from_env());
    let started = Instant::now();
    let env = TestEnv::new().await;
    env.sqs
        .set_queue_attributes()
        .queue_url(&env.queue_url)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            VISIBILITY_SECONDS.to_string(),
        )
        .send()
        .await
        .expect("shortening the queue's visibility timeout");
    let queue_arn = env.queue_arn().await;

    let crashes = Arc::new(Crashes::default());
    let provider = FakeProvider::start(settings.seed, crashes.clone()).await;
    let webhook_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the webhook");
    let webhook_url = format!(
        "http://{}/callbacks/call-status",
        webhook_listener.local_addr().expect("local address")
    );
    let cap = CAP.to_string();
    let stale = STALE_INPROG_SECONDS.to_string();
    let max_attempts = MAX_ATTEMPTS.to_string();
    let dial_timeout = DIAL_TIMEOUT.as_millis().to_string();
    let config = Arc::new(env.config(&[
        ("USE_SIMULATOR", "false"),
        ("PROVIDER_BASE_URL", &provider.base_url),
        ("WEBHOOK_URL", &webhook_url),
        ("GLOBAL_CONCURRENCY", &cap),
        ("BASE_RETRY_SECONDS", "1"),
        ("MAX_ATTEMPTS", &max_attempts),
        ("WAIT_RECHECK_SECONDS", "1"),
        ("STALE_INPROG_SECONDS", &stale),
        ("OUTBOX_GRACE_SECONDS", "3"),
        ("DIAL_TIMEOUT_MS", &dial_timeout),
    ]));
    let pool = |size| ebra_shared::db::pool(&env.database_url, size).expect("a pool");

    let webhook_state =
        WebhookState::new(pool(6), env.queue.clone(), config.clone()).expect("webhook state");
    let webhook_server = tokio::spawn(async move {
        axum::serve(webhook_listener, ebra_webhook::router(webhook_state))
            .await
            .expect("webhook server");
    });
    let api_pool = pool(6);
    let api = ebra_api::router(AppState::new(
        api_pool.clone(),
        Some(env.queue.clone()),
        config.clone(),
    ));
    let api_without_queue = ebra_api::router(AppState::new(
        api_pool,
        Some(env.broken_queue()),
        config.clone(),
    ));

    let run = Arc::new(Run {
        stop: AtomicBool::new(false),
        queue: env.queue.clone(),
        sqs: env.sqs.clone(),
        queue_url: env.queue_url.clone(),
        queue_arn,
        crashes: crashes.clone(),
        created: Mutex::new(vec![None; settings.calls]),
        created_count: AtomicUsize::new(0),
        create_failures: Mutex::new(Vec::new()),
        api_retries: AtomicU64::new(0),
        terminal: AtomicUsize::new(0),
        invocations: AtomicU64::new(0),
        handler_panics: AtomicU64::new(0),
        sqs_duplicates: AtomicU64::new(0),
        reclaimer_passes: AtomicU64::new(0),
        reclaimer_errors: AtomicU64::new(0),
        stale_reclaimed: AtomicU64::new(0),
        outbox_resent: AtomicU64::new(0),
        backends_killed: AtomicU64::new(0),
        rule_cases: Mutex::new(vec![RuleCase::None; settings.calls]),
        suppressed_after: Mutex::new(Vec::new()),
        refused_suppressed: AtomicUsize::new(0),
    });

    // Poison first: it needs maxReceiveCount receives, a visibility timeout apart.
    for body in POISON {
        env.sqs
            .send_message()
            .queue_url(&env.queue_url)
            .message_body(body)
            .send()
            .await
            .expect("sending a poison message");
    }

    let (sampler_client, sampler_pid) = dedicated_connection(&env.database_url).await;
    let (monitor_client, monitor_pid) = dedicated_connection(&env.database_url).await;
    let mut loops: Vec<JoinHandle<()>> = Vec::new();
    let sampler = tokio::spawn(sample_in_progress(run.clone(), sampler_client));
    loops.push(tokio::spawn(monitor_terminal(run.clone(), monitor_client)));
    loops.push(tokio::spawn(kill_backends(
        run.clone(),
        env.database_url.clone(),
        vec![sampler_pid, monitor_pid],
        StdRng::seed_from_u64(settings.seed.wrapping_add(1)),
    )));
    for k in 0..POLLERS {
        let http =
            HttpProvider::new(&provider.base_url, config.dial_timeout).expect("provider client");
        let worker = WorkerState::new(
            pool(WORKER_POOL),
            env.queue.clone(),
            Arc::new(http),
            config.clone(),
        )
        .expect("worker state");
        loops.push(tokio::spawn(poll_queue(
            run.clone(),
            Arc::new(worker),
            StdRng::seed_from_u64(settings.seed.wrapping_add(100 + k as u64)),
        )));
    }
    loops.push(tokio::spawn(reclaim_on_a_timer(
        run.clone(),
        ReclaimerState::new(
            pool(2),
            env.queue.clone(),
            common::generic_provider(),
            config.clone(),
        ),
    )));
    // The campaigns, created before the faults reach the API (the database is not killed
    // yet for the API's pool: the killer started above, so retry a 5xx).
    let mut campaign_ids = Vec::new();
    for body in [
        json!({"name": "faults: limited", "maxConcurrency": CAMPAIGN_MAX_CONCURRENCY}),
        json!({"name": "faults: unlimited"}),
    ] {
        let mut created = None;
        for _ in 0..100 {
            let request = Request::post("/campaigns")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .expect("a campaign request");
            let response = api
                .clone()
                .oneshot(request)
                .await
                .expect("the router answers");
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            if status == StatusCode::CREATED {
                let campaign: serde_json::Value =
                    serde_json::from_slice(&bytes).expect("a campaign");
                created = campaign["id"]
                    .as_str()
                    .and_then(|id| id.parse::<Uuid>().ok());
                break;
            }
            assert!(status.is_server_error(), "creating a campaign: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        campaign_ids.push(created.expect("the campaign was created"));
    }
    let campaigns = [campaign_ids[0], campaign_ids[1]];
    let next = Arc::new(AtomicUsize::new(0));
    let creators: Vec<JoinHandle<()>> = (0..CREATORS)
        .map(|_| {
            tokio::spawn(create_calls(
                run.clone(),
                next.clone(),
                settings.clone(),
                api.clone(),
                api_without_queue.clone(),
                campaigns,
            ))
        })
        .collect();

    // Run until quiescent: every call created and terminal, the poison in the DLQ, the
    // provider done reporting. Bounded: past the deadline the test fails with what is open.
    let mut last_progress = Instant::now();
    let quiescent = loop {
        let created = run.created_count.load(Ordering::SeqCst);
        let terminal = run.terminal.load(Ordering::SeqCst);
        let in_flight = provider.shared.webhooks_in_flight.load(Ordering::SeqCst);
        let creating = creators.iter().any(|c| !c.is_finished());
        let settled = !creating && terminal >= created && in_flight == 0;
        // Asked only when it could end the run, or for the progress line: moto is slow.
        let dlq = if settled || last_progress.elapsed() > Duration::from_secs(5) {
            queue_depth(&env.sqs, &env.dlq_url).await
        } else {
            0
        };
        if settled && dlq >= POISON.len() {
            break true;
        }
        if started.elapsed() > settings.deadline {
            break false;
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            last_progress = Instant::now();
            println!(
                "faults: t={:>4.0}s created={created}/{} terminal={terminal} dlq={dlq} webhooks_in_flight={in_flight} killed={}",
                started.elapsed().as_secs_f64(),
                settings.calls,
                run.backends_killed.load(Ordering::Relaxed),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    run.stop.store(true, Ordering::SeqCst);
    for handle in creators.into_iter().chain(loops) {
        let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
    }
    let sampled = sampler.await.expect("the sampler");
    webhook_server.abort();
    let elapsed = started.elapsed();

    // ---- The verdict, from a connection no fault touched --------------------------------
    let (db, _) = dedicated_connection(&env.database_url).await;
    let created: Vec<Option<(Uuid, bool)>> = lock(&run.created).clone();
    let create_failures = lock(&run.create_failures).clone();
    let rows = db
        .query(
            "SELECT id, status, outbox_due_at IS NOT NULL, attempts, last_error FROM calls",
            &[],
        )
        .await
        .expect("reading calls");
    let calls_in_db: HashMap<Uuid, (String, bool, i32, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let open_ids: HashSet<Uuid> = calls_in_db
        .iter()
        .filter(|(_, (status, ..))| !is_terminal(status))
        .map(|(id, _)| *id)
        .collect();
    // Messages that will still deliver an open call (only drained when one is open).
    let queued: HashSet<Uuid> = if open_ids.is_empty() {
        HashSet::new()
    } else {
        tokio::time::sleep(Duration::from_secs(u64::from(VISIBILITY_SECONDS) + 1)).await;
        drain_bodies(&env.sqs, &env.queue_url)
            .await
            .iter()
            .filter_map(|body| serde_json::from_str::<DialRequest>(body).ok())
            .map(|request| request.call_id)
            .collect()
    };
    let (mut terminal, mut pending_ok, mut lost) = (0usize, 0usize, Vec::new());
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for (n, entry) in created.iter().enumerate() {
        let Some((id, _)) = entry else { continue };
        match calls_in_db.get(id) {
            None => lost.push(format!("call {n} ({id}) was accepted but does not exist")),
            Some((status, outbox_marked, attempts, last_error)) => {
                *by_status.entry(status.clone()).or_default() += 1;
                if is_terminal(status) {
                    terminal += 1;
                } else if status == "PENDING" && (*outbox_marked || queued.contains(id)) {
                    pending_ok += 1;
                } else {
                    lost.push(format!(
                        "call {n} ({id}) is {status} with nothing to deliver it (attempts {attempts}, lastError {last_error:?})"
                    ));
                }
            }
        }
    }
    let accepted = created.iter().flatten().count();
    let extra_rows = calls_in_db.len().saturating_sub(accepted);

    // Double dials: the provider's placements against Ebra's attempts.
    let attempts = db
        .query(
            "SELECT call_id, attempt_no, idempotency_key::text, dial_state, provider_call_id, outcome \
               FROM call_attempts",
            &[],
        )
        .await
        .expect("reading attempts");
    let attempts: Vec<AttemptRow> = attempts
        .iter()
        .map(|r| AttemptRow {
            call_id: r.get(0),
            attempt_no: r.get(1),
            key: r.get(2),
            dial_state: r.get(3),
            provider_call_id: r.get(4),
            outcome: r.get(5),
        })
        .collect();
    let book = {
        let book = lock(&provider.shared.book);
        BookSnapshot {
            dial_requests: book.dial_requests,
            requests_without_key: book.requests_without_key,
            dedup_hits: book.dedup_hits,
            placements: book.placements.clone(),
            faults: book.faults.clone(),
        }
    };
    let placements = &book.placements;
    let call_of = |n: usize| created.get(n).copied().flatten().map(|(id, _)| id);
    let final_status: HashMap<Uuid, &str> = calls_in_db
        .iter()
        .map(|(id, (status, ..))| (*id, status.as_str()))
        .collect();
    let canceled_suppressed_ids: HashSet<Uuid> = calls_in_db
        .iter()
        .filter(|(_, (status, _, _, error))| {
            status == "CANCELED" && error.as_deref() == Some("suppressed")
        })
        .map(|(id, _)| *id)
        .collect();
    let dials = check_dials(
        placements,
        &attempts,
        call_of,
        &final_status,
        &canceled_suppressed_ids,
    );
    let provider_side = provider_overlaps(placements);
    let applied: HashSet<String> = db
        .query(
            "SELECT webhook_id FROM provider_webhooks WHERE disposition = 'APPLIED'",
            &[],
        )
        .await
        .expect("reading webhooks")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let moved_backwards = check_outcomes(placements, &attempts, &applied, &final_status);
    // An early webhook is held until its dial is recorded, then applied: none may stay held
    // once Ebra knows the provider's call id.
    let held_forever: i64 = db
        .query_one(
            "SELECT count(*) FROM provider_webhooks w WHERE w.applied_at IS NULL \
                AND EXISTS (SELECT 1 FROM call_attempts a WHERE a.provider_call_id = w.provider_call_id)",
            &[],
        )
        .await
        .expect("reading held webhooks")
        .get(0);

    // Outbound events (issue 17), written in the transactions of the changes they report,
    // also while Postgres connections are killed mid-transaction: every call's events run
    // 1..=its sequence (each counted change wrote exactly one, none rolled back survived),
    // and a finished call's last event says how it ended.
    let events_row = db
        .query_one(
            "SELECT (SELECT count(*) FROM call_events), \
                    (SELECT count(*) FROM calls c \
                      WHERE c.sequence <> (SELECT count(*) FROM call_events e WHERE e.call_id = c.id) \
                         OR c.sequence <> COALESCE((SELECT max(e.sequence) FROM call_events e WHERE e.call_id = c.id), 0)), \
                    (SELECT count(*) FROM calls c JOIN call_events e ON e.call_id = c.id AND e.sequence = c.sequence \
                      WHERE c.status IN ('COMPLETED', 'FAILED', 'EXPIRED', 'CANCELED') \
                        AND e.type NOT IN ('call.' || lower(c.status), 'call.result_updated'))",
            &[],
        )
        .await
        .expect("reading the events");
    let (events_written, event_gaps, wrong_last_events): (i64, i64, i64) =
        (events_row.get(0), events_row.get(1), events_row.get(2));

    // Calling rules (issue 14): no dial outside its call's window, none to a number after
    // its suppression committed, every create to a suppressed number refused.
    let rule_cases = lock(&run.rule_cases).clone();
    let count_case = |wanted: RuleCase| rule_cases.iter().filter(|c| **c == wanted).count();
    let windowed_dials = db
        .query(
            "SELECT a.started_at, c.calling_window, c.time_zones FROM call_attempts a \
               JOIN calls c ON c.id = a.call_id WHERE c.calling_window IS NOT NULL",
            &[],
        )
        .await
        .expect("reading the windowed calls' dials");
    let mut dials_outside_window = 0;
    for row in &windowed_dials {
        let started_at: chrono::DateTime<chrono::Utc> = row.get(0);
        let window: Option<serde_json::Value> = row.get(1);
        let zones: Vec<String> = row.get(2);
        let rules = ebra_shared::rules::CallRules::from_stored(window.as_ref(), &zones)
            .expect("stored calling rules");
        if !rules.allows(started_at) {
            eprintln!("faults: a dial at {started_at} outside {window:?} in {zones:?}");
            dials_outside_window += 1;
        }
    }
    let suppressed_after = lock(&run.suppressed_after).clone();
    let mut dialed_after_suppression = 0;
    for (phone, committed) in &suppressed_after {
        let late: i64 = db
            .query_one(
                "SELECT count(*) FROM call_attempts a JOIN calls c ON c.id = a.call_id \
                  WHERE c.phone = $1 AND a.started_at > $2",
                &[phone, committed],
            )
            .await
            .expect("reading the suppressed numbers' dials")
            .get(0);
        dialed_after_suppression += late;
    }
    let canceled_suppressed: i64 = db
        .query_one(
            "SELECT count(*) FROM calls WHERE status = 'CANCELED' AND last_error = 'suppressed'",
            &[],
        )
        .await
        .expect("reading the canceled calls")
        .get(0);
    let refused_suppressed = run.refused_suppressed.load(Ordering::SeqCst);

    // The DLQ: exactly the poison.
    let mut dlq_bodies = drain_bodies(&env.sqs, &env.dlq_url).await;
    dlq_bodies.sort();
    let mut poison: Vec<String> = POISON.iter().map(|s| (*s).to_owned()).collect();
    poison.sort();

    let stats = &provider.shared.stats;
    let forged_accepted = stats.forged_accepted.load(Ordering::Relaxed);
    let fault = |f: DialFault| book.faults.get(&f).copied().unwrap_or(0);
    let phone_overlaps = sampled.phone_overlaps + provider_side.phone_overlaps as u64;
    let provider_lies = provider_side.phone_overlaps_after_provider_lie;

    println!(
        "faults: calls={} lost={} double_dials={} max_in_progress={} cap={CAP} phone_overlaps={phone_overlaps} \
         (+{provider_lies} after a provider 5xx that placed the call) terminal={terminal} pending_ok={pending_ok} dlq={} \
         (poison injected={}) forged_accepted={forged_accepted} campaign_overruns={} \
         (max_in_limited_campaign={} of {CAMPAIGN_MAX_CONCURRENCY})",
        settings.calls,
        lost.len() + create_failures.len(),
        dials.double_dials,
        sampled.max_in_progress,
        dlq_bodies.len(),
        POISON.len(),
        sampled.campaign_overruns,
        sampled.max_in_limited_campaign,
    );
    println!(
        "faults injected: seed={} dials={} 5xx={} 5xx_after_placing={} timeouts={} 429={} 4xx={} crashes={} \
         (invocations_killed={} missed={}) early_webhooks={} duplicate_webhooks={} out_of_order={} forged={} \
         duplicate_sqs={} broken_queue_creates={} pg_backends_killed={} api_5xx_retried={}",
        settings.seed,
        book.dial_requests,
        fault(DialFault::ServerError),
        fault(DialFault::ServerErrorAfterPlacing),
        fault(DialFault::Timeout),
        fault(DialFault::RateLimited),
        fault(DialFault::Permanent),
        fault(DialFault::Crash),
        crashes.killed.load(Ordering::Relaxed),
        crashes.missed.load(Ordering::Relaxed),
        stats.early.load(Ordering::Relaxed),
        stats.duplicates.load(Ordering::Relaxed),
        stats.out_of_order.load(Ordering::Relaxed),
        stats.forged.load(Ordering::Relaxed),
        run.sqs_duplicates.load(Ordering::Relaxed),
        created.iter().flatten().filter(|(_, broken)| *broken).count(),
        run.backends_killed.load(Ordering::Relaxed),
        run.api_retries.load(Ordering::Relaxed),
    );
    println!(
        "faults events: written={events_written} calls_with_gaps={event_gaps} wrong_last_event={wrong_last_events}"
    );
    println!(
        "faults rules: windowed={} (waiting for their window={}) dials={} dials_outside_window={dials_outside_window} \
         suppressed_after_create={} canceled_suppressed={canceled_suppressed} dialed_after_suppression={dialed_after_suppression} \
         refused_suppressed={refused_suppressed}/{}",
        count_case(RuleCase::WindowOpen) + count_case(RuleCase::WindowWait),
        count_case(RuleCase::WindowWait),
        windowed_dials.len(),
        suppressed_after.len(),
        count_case(RuleCase::SuppressBefore),
    );
    let mut statuses: Vec<_> = by_status.iter().collect();
    statuses.sort();
    println!(
        "faults seen: statuses={statuses:?} placements={} idempotent_replays={} same_key_retries_resolved={} \
         unresolved_placements={} moved_backwards={moved_backwards} held_forever={held_forever} \
         provider_max_live={} (without 5xx-but-placed dials {}) db_phone_overlap_samples={} max_slots_held={} samples={} stale_reclaimed={} outbox_resent={} \
         reclaimer_passes={} (errors {}) invocations={} webhook_retries={} genuine_refused={} undelivered={} \
         handler_panics={} elapsed={:.1}s",
        placements.len(),
        book.dedup_hits,
        dials.same_key_retries,
        dials.unresolved,
        provider_side.max_live,
        provider_side.max_live_known,
        sampled.phone_overlaps,
        sampled.max_slots_held,
        sampled.samples,
        run.stale_reclaimed.load(Ordering::Relaxed),
        run.outbox_resent.load(Ordering::Relaxed),
        run.reclaimer_passes.load(Ordering::Relaxed),
        run.reclaimer_errors.load(Ordering::Relaxed),
        run.invocations.load(Ordering::Relaxed),
        stats.retried.load(Ordering::Relaxed),
        stats.genuine_refused.load(Ordering::Relaxed),
        stats.undelivered.load(Ordering::Relaxed),
        run.handler_panics.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
    );
    for line in dials
        .examples
        .iter()
        .chain(provider_side.examples.iter())
        .take(10)
    {
        println!("faults detail: {line}");
    }
    let fault_counts: Vec<(&str, u64)> = vec![
        (
            "provider 5xx",
            fault(DialFault::ServerError) + fault(DialFault::ServerErrorAfterPlacing),
        ),
        ("dial timeouts", fault(DialFault::Timeout)),
        ("429s", fault(DialFault::RateLimited)),
        ("permanent 4xx", fault(DialFault::Permanent)),
        ("worker crashes", crashes.killed.load(Ordering::Relaxed)),
        ("early webhooks", stats.early.load(Ordering::Relaxed)),
        (
            "duplicate webhooks",
            stats.duplicates.load(Ordering::Relaxed),
        ),
        (
            "out-of-order webhooks",
            stats.out_of_order.load(Ordering::Relaxed),
        ),
        ("forged webhooks", stats.forged.load(Ordering::Relaxed)),
        (
            "duplicate SQS deliveries",
            run.sqs_duplicates.load(Ordering::Relaxed),
        ),
        (
            "SQS sends failed after commit",
            created
                .iter()
                .flatten()
                .filter(|(_, broken)| *broken)
                .count() as u64,
        ),
        (
            "Postgres backends killed",
            run.backends_killed.load(Ordering::Relaxed),
        ),
    ];

    // ---- The invariants ------------------------------------------------------------------
    assert!(
        quiescent,
        "not quiescent within {:?}: created {}/{}, terminal {terminal}, DLQ {}, open calls: {:?}",
        settings.deadline,
        accepted,
        settings.calls,
        dlq_bodies.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        create_failures.is_empty(),
        "the API refused calls: {create_failures:?}"
    );
    assert!(lost.is_empty(), "calls lost: {lost:?}");
    assert_eq!(
        (event_gaps, wrong_last_events),
        (0, 0),
        "events missing, repeated or contradicting the call's end"
    );
    assert!(
        events_written >= 2 * accepted as i64,
        "every call has its events"
    );
    assert_eq!(extra_rows, 0, "idempotent creates made extra calls");
    assert_eq!(
        terminal + pending_ok,
        settings.calls - refused_suppressed,
        "every call terminal or legitimately pending"
    );
    assert_eq!(dials_outside_window, 0, "dials outside their call's window");
    assert_eq!(
        dialed_after_suppression, 0,
        "dials to a number after its suppression committed"
    );
    assert_eq!(
        refused_suppressed,
        count_case(RuleCase::SuppressBefore),
        "creates to suppressed numbers must be refused, and only those"
    );
    assert!(
        windowed_dials.len() >= count_case(RuleCase::WindowOpen) + count_case(RuleCase::WindowWait),
        "every windowed call was dialed, inside its window"
    );
    assert_eq!(
        dials.double_dials,
        0,
        "double dials: {:?}",
        first(&dials.examples)
    );
    assert_eq!(
        dials.unresolved,
        0,
        "placed calls Ebra never learned of: {:?}",
        first(&dials.examples)
    );
    assert_eq!(
        book.requests_without_key, 0,
        "dials without an Idempotency-Key"
    );
    assert_eq!(
        sampled.campaign_overruns, 0,
        "a campaign had more calls in progress than its maxConcurrency ({} of {CAMPAIGN_MAX_CONCURRENCY})",
        sampled.max_in_limited_campaign
    );
    assert!(
        sampled.max_in_progress <= i64::from(CAP) && sampled.max_slots_held <= i64::from(CAP),
        "the cap was exceeded: {} in progress, {} slots held, cap {CAP}",
        sampled.max_in_progress,
        sampled.max_slots_held
    );
    assert!(
        sampled.samples > 100,
        "the sampler barely ran ({} samples)",
        sampled.samples
    );
    assert_eq!(
        phone_overlaps,
        0,
        "overlapping calls to one phone: {:?}",
        first(&provider_side.examples)
    );
    assert!(
        provider_side.max_live_known <= CAP as usize,
        "{} calls live at the provider at once, cap {CAP}",
        provider_side.max_live_known
    );
    if provider_lies > 0 || provider_side.max_live > CAP as usize {
        println!(
            "faults: provider contract breaches (not Ebra's): {provider_lies} phone overlaps and {} calls \
             live at once (cap {CAP}) after the provider answered 5xx yet placed the call",
            provider_side.max_live
        );
    }
    assert_eq!(
        dlq_bodies, poison,
        "the DLQ must hold exactly the poison messages"
    );
    assert_eq!(forged_accepted, 0, "forged webhooks accepted");
    assert_eq!(
        stats.genuine_refused.load(Ordering::Relaxed),
        0,
        "genuine webhooks refused"
    );
    assert_eq!(
        stats.undelivered.load(Ordering::Relaxed),
        0,
        "webhooks never taken"
    );
    assert_eq!(
        moved_backwards, 0,
        "settled dials that do not keep the provider's first report"
    );
    assert_eq!(
        held_forever, 0,
        "early webhooks still held although their dial was recorded"
    );
    assert_eq!(
        run.handler_panics.load(Ordering::Relaxed),
        0,
        "the worker's handler panicked"
    );
    for (name, count) in fault_counts {
        assert!(
            count > 0,
            "no {name} were injected: the run proves nothing about them"
        );
    }
}

/// What the provider saw, copied out of its lock for the verdict.
struct BookSnapshot {
    dial_requests: u64,
    requests_without_key: u64,
    dedup_hits: u64,
    placements: Vec<Placement>,
    faults: HashMap<DialFault, u64>,
}

/// The first few of a check's examples, for an assertion's message.
fn first(examples: &[String]) -> &[String] {
    &examples[..examples.len().min(10)]
}

/// The tail of a UUIDv7 key (its head is a timestamp, alike for every key of a run).
fn short(key: &str) -> &str {
    &key[key.len().saturating_sub(8)..]
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "COMPLETED" | "FAILED" | "EXPIRED" | "CANCELED")
}

struct AttemptRow {
    call_id: Uuid,
    attempt_no: i32,
    key: String,
    dial_state: String,
    provider_call_id: Option<String>,
    outcome: Option<String>,
}

#[derive(Default)]
struct DialCheck {
    double_dials: usize,
    /// Placed calls whose key was later dialed again and answered with the same call.
    same_key_retries: usize,
    /// Placed calls no attempt ever recorded as accepted.
    unresolved: usize,
    examples: Vec<String>,
}

/// A double dial is a call placed twice for one attempt: a key placed twice, a placement
/// for a key Ebra never sent, or a call dialed under a new key while the call placed under
/// its previous key was still unknown to Ebra (not recorded as accepted before the new
/// attempt began).
fn check_dials(
    placements: &[Placement],
    attempts: &[AttemptRow],
    call_of: impl Fn(usize) -> Option<Uuid>,
    final_status: &HashMap<Uuid, &str>,
    canceled_suppressed: &HashSet<Uuid>,
) -> DialCheck {
    let mut check = DialCheck::default();
    // From Ebra's own records: a dial that may have been placed (UNKNOWN, or DIALING when
    // its worker died) must be retried under the same key, whatever the provider did.
    let mut per_call: HashMap<Uuid, Vec<&AttemptRow>> = HashMap::new();
    for row in attempts {
        per_call.entry(row.call_id).or_default().push(row);
    }
    for (call_id, rows) in per_call.iter_mut() {
        rows.sort_by_key(|row| row.attempt_no);
        for pair in rows.windows(2) {
            let maybe_placed = matches!(pair[0].dial_state.as_str(), "UNKNOWN" | "DIALING");
            if maybe_placed && pair[1].key != pair[0].key {
                check.double_dials += 1;
                check.examples.push(format!(
                    "call {call_id}: attempt {} used a new key after attempt {} ended {}",
                    pair[1].attempt_no, pair[0].attempt_no, pair[0].dial_state
                ));
            }
        }
    }
    let mut per_key: HashMap<&str, Vec<&Placement>> = HashMap::new();
    for placement in placements {
        per_key
            .entry(placement.key.as_str())
            .or_default()
            .push(placement);
    }
    for (key, placed) in &per_key {
        if placed.len() > 1 {
            check.double_dials += placed.len() - 1;
            check
                .examples
                .push(format!("key {key} placed {} times", placed.len()));
        }
    }
    let mut rows_by_key: HashMap<&str, Vec<&AttemptRow>> = HashMap::new();
    for row in attempts {
        rows_by_key.entry(row.key.as_str()).or_default().push(row);
    }
    let mut by_call: HashMap<Uuid, Vec<&Placement>> = HashMap::new();
    for placement in placements {
        let rows = rows_by_key
            .get(placement.key.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(call_id) = rows
            .first()
            .map(|row| row.call_id)
            .or_else(|| call_of(placement.n))
        else {
            check.double_dials += 1;
            check.examples.push(format!(
                "{} placed for a call nobody created",
                placement.provider_call_id
            ));
            continue;
        };
        if rows.is_empty() {
            check.double_dials += 1;
            check.examples.push(format!(
                "{} placed under a key Ebra never recorded",
                placement.provider_call_id
            ));
        }
        let accepted = rows.iter().any(|row| {
            row.dial_state == "ACCEPTED"
                && row.provider_call_id.as_deref() == Some(placement.provider_call_id.as_str())
        });
        // A call may run out of attempts with its last dial unknown: FAILED, by design.
        let out_of_attempts = final_status.get(&call_id) == Some(&"FAILED")
            && rows.iter().any(|row| row.attempt_no == MAX_ATTEMPTS);
        // Nor is a dial whose fate is unknown redialed (even under its key) once its number
        // is suppressed: the call is CANCELED, and a provider that reports without the key
        // (the generic contract) names a call Ebra cannot match. By design too.
        let canceled_unknown = canceled_suppressed.contains(&call_id)
            && rows
                .iter()
                .all(|row| matches!(row.dial_state.as_str(), "UNKNOWN" | "DIALING"));
        if !accepted && !out_of_attempts && !canceled_unknown {
            check.unresolved += 1;
            let history: Vec<String> = attempts
                .iter()
                .filter(|row| row.call_id == call_id)
                .map(|row| {
                    format!(
                        "#{} {} key {} {:?}",
                        row.attempt_no,
                        row.dial_state,
                        short(&row.key),
                        row.provider_call_id
                    )
                })
                .collect();
            check.examples.push(format!(
                "{} ({:?}, key {}) for call {call_id} was never recorded as accepted; attempts: {history:?}",
                placement.provider_call_id,
                placement.fault,
                short(&placement.key)
            ));
        }
        if rows.len() > 1 {
            check.same_key_retries += 1;
        }
        by_call.entry(call_id).or_default().push(placement);
    }
    for (call_id, mut placed) in by_call {
        placed.sort_by_key(|p| p.placed_at);
        for pair in placed.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if earlier.key == later.key {
                continue;
            }
            let later_began = rows_by_key
                .get(later.key.as_str())
                .and_then(|rows| rows.iter().map(|row| row.attempt_no).min())
                .unwrap_or(i32::MAX);
            let known_before = rows_by_key.get(earlier.key.as_str()).is_some_and(|rows| {
                rows.iter().any(|row| {
                    row.dial_state == "ACCEPTED"
                        && row.provider_call_id.as_deref()
                            == Some(earlier.provider_call_id.as_str())
                        && row.attempt_no < later_began
                })
            });
            if !known_before {
                check.double_dials += 1;
                check.examples.push(format!(
                    "call {call_id} dialed under key {} while {} (key {}) was unknown to Ebra",
                    later.key, earlier.provider_call_id, earlier.key
                ));
            }
        }
    }
    check
}

#[derive(Default)]
struct ProviderSide {
    /// Most calls live at the provider at once.
    max_live: usize,
    /// The same, leaving out calls whose dial Ebra saw fail with an unknown outcome.
    max_live_known: usize,
    phone_overlaps: usize,
    /// Overlaps with a call the provider answered 5xx for yet placed (a contract breach:
    /// Ebra takes the 5xx at its word and frees the phone and the slot).
    phone_overlaps_after_provider_lie: usize,
    examples: Vec<String>,
}

/// Whether the provider answered this dial with a 5xx although it placed the call.
fn provider_lied(placement: &Placement) -> bool {
    matches!(placement.fault, DialFault::ServerErrorAfterPlacing)
}

/// Calls live at the provider, from placement to hang-up: how many at once, and whether
/// two to one phone ever overlapped.
fn provider_overlaps(placements: &[Placement]) -> ProviderSide {
    let mut side = ProviderSide::default();
    let max_live = |placements: &mut dyn Iterator<Item = &Placement>| {
        let mut events: Vec<(Instant, i32)> = Vec::new();
        for placement in placements {
            events.push((placement.placed_at, 1));
            events.push((placement.ended_at.unwrap_or(placement.placed_at), -1));
        }
        // Hang-ups before placements at the same instant.
        events.sort();
        let (mut live, mut max) = (0i32, 0i32);
        for (_, delta) in events {
            live += delta;
            max = max.max(live);
        }
        max as usize
    };
    side.max_live = max_live(&mut placements.iter());
    side.max_live_known = max_live(&mut placements.iter().filter(|p| !provider_lied(p)));
    let mut per_phone: HashMap<&str, Vec<&Placement>> = HashMap::new();
    for placement in placements {
        per_phone
            .entry(placement.phone.as_str())
            .or_default()
            .push(placement);
    }
    for (phone, mut calls) in per_phone {
        calls.sort_by_key(|p| p.placed_at);
        // Against the latest hang-up so far, not only the previous call's.
        let mut open: Option<(Instant, &Placement)> = None;
        for later in calls {
            if let Some((ends, earlier)) = open {
                if later.placed_at < ends {
                    if provider_lied(earlier) {
                        side.phone_overlaps_after_provider_lie += 1;
                    } else {
                        side.phone_overlaps += 1;
                    }
                    side.examples.push(format!(
                        "{phone}: {} ({:?}, call {}) placed {:?} before {} ({:?}, call {}) hung up",
                        later.provider_call_id,
                        later.fault,
                        later.n,
                        ends - later.placed_at,
                        earlier.provider_call_id,
                        earlier.fault,
                        earlier.n
                    ));
                }
            }
            let ends = later.ended_at.unwrap_or(later.placed_at);
            if open.is_none_or(|(open_ends, _)| ends > open_ends) {
                open = Some((ends, later));
            }
        }
    }
    side
}

/// Terminal is final and first reports win: every dial with an outcome carries the
/// provider's genuine (first) report, never a forged or an out-of-order one, and a call
/// whose genuine COMPLETED report was applied is COMPLETED at the end.
fn check_outcomes(
    placements: &[Placement],
    attempts: &[AttemptRow],
    applied_webhooks: &HashSet<String>,
    final_status: &HashMap<Uuid, &str>,
) -> usize {
    let call_of: HashMap<&str, Uuid> = attempts
        .iter()
        .filter_map(|row| Some((row.provider_call_id.as_deref()?, row.call_id)))
        .collect();
    let mut wrong = 0;
    for row in attempts {
        let (Some(outcome), Some(provider_call_id)) = (&row.outcome, &row.provider_call_id) else {
            continue;
        };
        let reported = placements
            .iter()
            .find(|p| &p.provider_call_id == provider_call_id)
            .and_then(|p| p.status);
        if let Some(reported) = reported {
            if outcome != reported.as_str() {
                wrong += 1;
                eprintln!(
                    "faults: {provider_call_id} recorded {outcome}, the provider reported {}",
                    reported.as_str()
                );
            }
        }
    }
    for placement in placements {
        let genuine_id = format!("wh_{}", placement.provider_call_id);
        if placement.status != Some(CallOutcome::Completed)
            || !applied_webhooks.contains(&genuine_id)
        {
            continue;
        }
        let call_id = call_of.get(placement.provider_call_id.as_str());
        let status = call_id.and_then(|id| final_status.get(id));
        if status != Some(&"COMPLETED") {
            wrong += 1;
            eprintln!(
                "faults: {} was applied as COMPLETED, yet call {call_id:?} is {status:?}",
                placement.provider_call_id
            );
        }
    }
    wrong
}
