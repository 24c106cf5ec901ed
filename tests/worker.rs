//! The worker (issue 3) against real Postgres and moto SQS, dialing a fake provider through
//! the real `HttpProvider`.
//!
//! Messages are received from the test's own queue, so receipt handles and
//! `ApproximateReceiveCount` are SQS's; the tests play the event source mapping (receive,
//! invoke, delete what was not returned) and, where time would pass, make a hidden message
//! visible again. The fake provider answers from a script (per phone, or a default), records
//! every request with its `Idempotency-Key`, and honours the key like a real provider.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::QueueAttributeName;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::{dial_accepted, TestEnv};
use ebra_shared::domain::{CallOutcome, CallStatus, DialRequest};
use ebra_shared::provider::HttpProvider;
use ebra_shared::queue::Enqueue;
use ebra_shared::store::claim::{claim_calls, Claim};
use ebra_shared::store::dial::RetryPolicy;
use ebra_shared::store::settle::{settle_from_webhook, Settlement};
use ebra_shared::store::slots::slots_in_use;
use ebra_worker::{
    handle_batch, process_message, recycle_threshold, AckReason, DeferReason, MessageOutcome,
    WorkerState,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// The fake provider
// ---------------------------------------------------------------------------------------

/// How the fake provider answers one dial.
#[derive(Debug, Clone)]
enum Reply {
    /// Places the call: `202 {"callId"}`.
    Accept,
    /// Answers with this status and places nothing.
    Status(u16),
    /// `429` with `Retry-After: seconds`; places nothing.
    RateLimited { retry_after_secs: u64 },
    /// Places the call, then answers only after `pause` (longer than the dial timeout: the
    /// worker sees a timeout although the call exists).
    PlaceThenStall(Duration),
    /// Waits `pause`, then answers as `then`.
    Slow { pause: Duration, then: Box<Reply> },
}

#[derive(Debug, Clone)]
struct DialSeen {
    to: String,
    idempotency_key: String,
    body: serde_json::Value,
    at: Instant,
}

#[derive(Default)]
struct ProviderBook {
    scripts: HashMap<String, VecDeque<Reply>>,
    default_reply: Option<Reply>,
    requests: Vec<DialSeen>,
    /// Idempotency-Key → the call placed for it.
    placed: HashMap<String, String>,
    /// Idempotency-Key → how many calls were placed for it (a real provider: at most one).
    placements: HashMap<String, u32>,
}

impl ProviderBook {
    fn place(&mut self, key: &str) -> String {
        if let Some(existing) = self.placed.get(key) {
            return existing.clone();
        }
        let provider_call_id = format!("prov-{}", self.placed.len() + 1);
        self.placed.insert(key.to_owned(), provider_call_id.clone());
        *self.placements.entry(key.to_owned()).or_default() += 1;
        provider_call_id
    }
}

struct FakeProvider {
    base_url: String,
    book: Arc<Mutex<ProviderBook>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeProvider {
    /// Starts on 127.0.0.1:0, accepting every dial unless scripted otherwise.
    async fn start() -> Self {
        let book = Arc::new(Mutex::new(ProviderBook {
            default_reply: Some(Reply::Accept),
            ..ProviderBook::default()
        }));
        let router = Router::new()
            .route("/api/v1/calls", post(fake_dial))
            .with_state(book.clone());
        let (base_url, server) = common::serve_on_loopback(router).await;
        Self {
            base_url,
            book,
            server,
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, ProviderBook> {
        self.book.lock().expect("provider book")
    }

    /// The next dials to `phone` get these replies, in order; then the default.
    fn script(&self, phone: &str, replies: impl IntoIterator<Item = Reply>) {
        self.book()
            .scripts
            .entry(phone.to_owned())
            .or_default()
            .extend(replies);
    }

    fn answer_everything_with(&self, reply: Reply) {
        self.book().default_reply = Some(reply);
    }

    fn dials_to(&self, phone: &str) -> Vec<DialSeen> {
        self.book()
            .requests
            .iter()
            .filter(|r| r.to == phone)
            .cloned()
            .collect()
    }

    /// The call the provider placed for a dial's key, if it placed one.
    fn placed_for(&self, idempotency_key: &str) -> Option<String> {
        self.book().placed.get(idempotency_key).cloned()
    }

    fn dial_count(&self) -> usize {
        self.book().requests.len()
    }

    fn placed_calls(&self) -> usize {
        self.book().placed.len()
    }

    fn most_placements_for_one_key(&self) -> u32 {
        self.book().placements.values().copied().max().unwrap_or(0)
    }
}

async fn fake_dial(
    State(book): State<Arc<Mutex<ProviderBook>>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let reply = {
        let mut book = book.lock().expect("provider book");
        book.requests.push(DialSeen {
            to: to.clone(),
            idempotency_key: key.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        // Like a real provider: a key it has placed a call for gets that call back.
        if let Some(existing) = book.placed.get(&key) {
            return dial_accepted(existing);
        }
        let scripted = book.scripts.get_mut(&to).and_then(VecDeque::pop_front);
        scripted
            .or_else(|| book.default_reply.clone())
            .unwrap_or(Reply::Accept)
    };
    answer(&book, &key, reply).await
}

async fn answer(book: &Mutex<ProviderBook>, key: &str, reply: Reply) -> Response {
    let mut reply = reply;
    loop {
        match reply {
            Reply::Accept => {
                let provider_call_id = book.lock().expect("provider book").place(key);
                return dial_accepted(&provider_call_id);
            }
            Reply::Status(code) => {
                let status = StatusCode::from_u16(code).expect("a status code");
                return (status, format!("scripted {code}")).into_response();
            }
            Reply::RateLimited { retry_after_secs } => {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", retry_after_secs.to_string())],
                    "slow down",
                )
                    .into_response();
            }
            Reply::PlaceThenStall(pause) => {
                let provider_call_id = book.lock().expect("provider book").place(key);
                tokio::time::sleep(pause).await;
                return dial_accepted(&provider_call_id);
            }
            Reply::Slow { pause, then } => {
                tokio::time::sleep(pause).await;
                reply = *then;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers: the worker, calls, messages, settlement
// ---------------------------------------------------------------------------------------

/// A worker state on the test's database and queue, dialing `provider` over HTTP.
fn worker(env: &TestEnv, provider: &FakeProvider, overrides: &[(&str, &str)]) -> WorkerState {
    let mut settings = vec![
        ("USE_SIMULATOR", "false"),
        ("PROVIDER_BASE_URL", provider.base_url.as_str()),
        ("BASE_RETRY_SECONDS", "0"),
        ("DIAL_TIMEOUT_MS", "3000"),
    ];
    settings.extend_from_slice(overrides);
    let config = env.config(&settings);
    let http = HttpProvider::new(&provider.base_url, config.dial_timeout).expect("provider client");
    WorkerState {
        // Its own small pool, as a Lambda instance has; the test's pool stays free for checks.
        pool: ebra_shared::db::pool(&env.database_url, 10).expect("worker pool"),
        queue: env.queue.clone(),
        provider: Arc::new(http),
        config: Arc::new(config),
        events: Default::default(),
        clock: Default::default(),
    }
}

fn phone(n: usize) -> String {
    format!("+1415555{n:04}")
}

/// Inserts a PENDING call, due `due_in_secs` from now (negative: overdue for that long).
async fn insert_call(env: &TestEnv, phone: &str, due_in_secs: f64) -> Uuid {
    let id = Uuid::now_v7();
    let client = env.pool.get().await.expect("pool");
    client
        .execute(
            "INSERT INTO calls (id, phone, script_id, metadata, max_attempts, next_run_at) \
             VALUES ($1, $2::text, 'welcome-v1', $3::jsonb, 3, now() + make_interval(secs => $4))",
            &[
                &id,
                &phone,
                &serde_json::json!({"customer": "c-1"}),
                &due_in_secs,
            ],
        )
        .await
        .expect("inserting a call");
    id
}

/// Inserts one PENDING call per phone in one statement, due now and in this order.
async fn insert_calls(env: &TestEnv, phones: &[String]) -> Vec<Uuid> {
    let ids: Vec<Uuid> = phones.iter().map(|_| Uuid::now_v7()).collect();
    let client = env.pool.get().await.expect("pool");
    client
        .execute(
            "INSERT INTO calls (id, phone, script_id, max_attempts, next_run_at) \
             SELECT id, phone, 'welcome-v1', 3, now() - make_interval(secs => 1000 - n) \
               FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS batch(id, phone, n)",
            &[&ids, &phones],
        )
        .await
        .expect("inserting calls");
    ids
}

struct CallRow {
    status: String,
    attempts: i32,
    last_error: Option<String>,
    outbox_marked: bool,
    due_in_secs: f64,
}

async fn call_row(env: &TestEnv, call_id: Uuid) -> CallRow {
    let client = env.pool.get().await.expect("pool");
    let row = client
        .query_one(
            "SELECT status, attempts, last_error, outbox_due_at IS NOT NULL, \
                    EXTRACT(EPOCH FROM next_run_at - now())::float8 \
               FROM calls WHERE id = $1",
            &[&call_id],
        )
        .await
        .expect("reading a call");
    CallRow {
        status: row.get(0),
        attempts: row.get(1),
        last_error: row.get(2),
        outbox_marked: row.get(3),
        due_in_secs: row.get(4),
    }
}

async fn send_dial_requests(env: &TestEnv, call_ids: &[Uuid]) {
    let messages: Vec<Enqueue> = call_ids.iter().copied().map(Enqueue::now).collect();
    let failed = env.queue.send_all(&messages).await;
    assert!(
        failed.is_empty(),
        "sending dial messages failed for {failed:?}"
    );
}

/// A message that never went through SQS, for where the receive is not the point.
fn handmade_message(body: &str, receive_count: u32) -> SqsMessage {
    let mut message = SqsMessage::default();
    message.message_id = Some(Uuid::new_v4().to_string());
    message.receipt_handle = Some(format!("handmade-{}", Uuid::new_v4()));
    message.body = Some(body.to_owned());
    message.attributes.insert(
        "ApproximateReceiveCount".to_owned(),
        receive_count.to_string(),
    );
    message
}

fn dial_request_body(call_id: Uuid) -> String {
    serde_json::to_string(&DialRequest { call_id }).expect("serialising a dial request")
}

fn receive_count_of(message: &SqsMessage) -> u32 {
    message.attributes["ApproximateReceiveCount"]
        .parse()
        .expect("a receive count")
}

fn call_id_of(message: &SqsMessage) -> Uuid {
    serde_json::from_str::<DialRequest>(message.body.as_deref().expect("a body"))
        .expect("a dial request")
        .call_id
}

/// Polls the calls queue until something is visible or `within` passes.
async fn receive(env: &TestEnv, arn: &str, within: Duration) -> Vec<SqsMessage> {
    let deadline = Instant::now() + within;
    loop {
        let messages = env.queue.receive(Duration::ZERO).await.expect("receiving");
        if !messages.is_empty() || Instant::now() >= deadline {
            return ebra::local::sqs_event(&messages, arn).records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receives until `count` messages have arrived (SQS may hand them out over several
/// receives).
async fn receive_exactly(
    env: &TestEnv,
    arn: &str,
    count: usize,
    within: Duration,
) -> Vec<SqsMessage> {
    let deadline = Instant::now() + within;
    let mut messages = Vec::new();
    while messages.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {count} messages arrived within {within:?}",
            messages.len()
        );
        messages.extend(receive(env, arn, left).await);
    }
    assert_eq!(messages.len(), count, "more messages than expected");
    messages
}

async fn receive_one(env: &TestEnv, arn: &str, within: Duration) -> SqsMessage {
    let mut messages = receive(env, arn, within).await;
    assert_eq!(
        messages.len(),
        1,
        "expected exactly one message on the queue"
    );
    messages.remove(0)
}

/// Processes one message as the event source mapping would: deleted unless returned.
async fn deliver(env: &TestEnv, state: &WorkerState, message: &SqsMessage) -> MessageOutcome {
    let outcome = process_message(state, message).await;
    if !outcome.returns_message() {
        acknowledge(env, message).await;
    }
    outcome
}

async fn acknowledge(env: &TestEnv, message: &SqsMessage) {
    let receipt_handle = message.receipt_handle.as_deref().expect("a receipt handle");
    assert_eq!(
        env.queue.delete_all(&[receipt_handle]).await,
        0,
        "deleting a message"
    );
}

/// Time passing in a test: a hidden message becomes visible now.
async fn make_visible(env: &TestEnv, message: &SqsMessage) {
    let receipt_handle = message.receipt_handle.as_deref().expect("a receipt handle");
    assert_eq!(
        env.queue
            .change_visibility_all(&[(receipt_handle, Duration::ZERO)])
            .await,
        0,
        "changing a message's visibility"
    );
}

/// Sends a message for the call, receives it and processes it.
async fn deliver_new_message(
    env: &TestEnv,
    state: &WorkerState,
    arn: &str,
    call_id: Uuid,
) -> MessageOutcome {
    send_dial_requests(env, &[call_id]).await;
    let message = receive_one(env, arn, Duration::from_secs(5)).await;
    assert_eq!(call_id_of(&message), call_id);
    deliver(env, state, &message).await
}

/// The provider's webhook for the call's accepted dial, reporting it COMPLETED; the
/// messages for nudged calls are sent as the webhook function would.
async fn complete_call(env: &TestEnv, call_id: Uuid) -> Settlement {
    let client = env.pool.get().await.expect("pool");
    let provider_call_id: String = client
        .query_one(
            "SELECT provider_call_id FROM call_attempts WHERE call_id = $1 AND dial_state = 'ACCEPTED' \
              ORDER BY attempt_no DESC LIMIT 1",
            &[&call_id],
        )
        .await
        .expect("an accepted dial")
        .get(0);
    drop(client);
    let report = common::generic_report(
        format!("msg_{}", Uuid::new_v4().simple()),
        provider_call_id,
        CallOutcome::Completed,
        Some(1),
        Some(chrono::Utc::now()),
    );
    let policy = RetryPolicy::from(&env.config(&[]));
    let (settlement, nudges) = settle_from_webhook(&env.pool, &report, &policy)
        .await
        .expect("settling");
    env.queue.send_best_effort(&nudges).await;
    settlement
}

async fn dlq_depth(env: &TestEnv) -> usize {
    env.drain(&env.dlq_url).await.len()
}

/// Samples one number from the database until stopped; returns the largest it saw and how
/// many samples it took.
fn sample_max(
    env: &TestEnv,
    sql: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(i64, usize)> {
    let pool = env.pool.clone();
    tokio::spawn(async move {
        let client = pool.get().await.expect("sampler connection");
        let (mut max, mut samples) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let value: i64 = client.query_one(sql, &[]).await.expect(sql).get(0);
            max = max.max(value);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (max, samples)
    })
}

/// Plays the provider's webhooks: every accepted call is reported COMPLETED once it has been
/// in progress for `hold`, and the nudged calls' messages are sent. Returns, when stopped,
/// when each provider call's settlement had committed.
fn settle_in_background(
    env: &TestEnv,
    hold: Duration,
    nudges_to: NudgeSink,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<HashMap<String, Instant>> {
    let pool = env.pool.clone();
    let policy = RetryPolicy::from(&env.config(&[]));
    tokio::spawn(async move {
        let mut settled_at = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let accepted: Vec<String> = {
                let client = pool.get().await.expect("settler connection");
                client
                    .query(
                        "SELECT a.provider_call_id FROM call_attempts a JOIN calls c ON c.id = a.call_id \
                          WHERE a.dial_state = 'ACCEPTED' AND a.outcome IS NULL AND c.status = 'IN_PROGRESS' \
                            AND c.started_at < now() - make_interval(secs => $1)",
                        &[&hold.as_secs_f64()],
                    )
                    .await
                    .expect("finding accepted dials")
                    .iter()
                    .map(|row| row.get(0))
                    .collect()
            };
            for provider_call_id in accepted {
                let report = common::generic_report(
                    format!("msg_{}", Uuid::new_v4().simple()),
                    provider_call_id.clone(),
                    CallOutcome::Completed,
                    Some(0),
                    None,
                );
                let (_, nudges) = settle_from_webhook(&pool, &report, &policy)
                    .await
                    .expect("settling");
                settled_at.insert(provider_call_id, Instant::now());
                match &nudges_to {
                    NudgeSink::Queue(queue) => queue.send_best_effort(&nudges).await,
                    NudgeSink::Memory(source) => {
                        for nudge in nudges {
                            source.push(nudge.call_id, Instant::now());
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        settled_at
    })
}

/// Where the settler's nudges go: the calls queue, as the webhook function sends them, or
/// the in-memory event source.
enum NudgeSink {
    Queue(ebra_shared::queue::CallsQueue),
    Memory(Arc<MemoryEventSource>),
}

/// The cap test's stand-in for the queue and its event source mapping. Moto spends tens of
/// milliseconds per received message once 500 messages sit in a queue, so with the real
/// queue that test would measure moto, not the claim. Messages here carry no receipt
/// handle, so the worker cannot hide them: a returned message comes back after 1–3 s, as
/// SQS brings back a message whose visibility was not changed. Receive counts stay at 1;
/// waiting on the real queue, recycling included, is what the other tests drive.
#[derive(Default)]
struct MemoryEventSource {
    /// Call ids and when their message is visible.
    messages: Mutex<Vec<(Instant, Uuid)>>,
}

impl MemoryEventSource {
    fn push(&self, call_id: Uuid, visible_at: Instant) {
        self.messages
            .lock()
            .expect("memory queue")
            .push((visible_at, call_id));
    }

    /// Up to ten visible messages, as one SQS event.
    fn next_event(&self) -> Option<SqsEvent> {
        let now = Instant::now();
        let mut messages = self.messages.lock().expect("memory queue");
        let mut taken = Vec::new();
        messages.retain(|&(visible_at, call_id)| {
            if taken.len() < 10 && visible_at <= now {
                taken.push(call_id);
                false
            } else {
                true
            }
        });
        drop(messages);
        if taken.is_empty() {
            return None;
        }
        let mut event = SqsEvent::default();
        event.records = taken
            .into_iter()
            .map(|call_id| {
                let mut message = handmade_message(&dial_request_body(call_id), 1);
                message.receipt_handle = None;
                message
            })
            .collect();
        Some(event)
    }

    /// `invocations` concurrent invocations of `handle_batch` until stopped.
    fn run(
        self: &Arc<Self>,
        state: Arc<WorkerState>,
        invocations: usize,
        stop: Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..invocations)
            .map(|_| {
                let (source, state, stop) = (self.clone(), state.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(event) = source.next_event() else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        let response = handle_batch(&state, event.clone()).await;
                        for failure in &response.batch_item_failures {
                            let message = event
                                .records
                                .iter()
                                .find(|m| {
                                    m.message_id.as_deref()
                                        == Some(failure.item_identifier.as_str())
                                })
                                .expect("a failure names a message of the batch");
                            let comes_back = Duration::from_millis(rand::random_range(1000..3000));
                            source.push(call_id_of(message), Instant::now() + comes_back);
                        }
                    }
                })
            })
            .collect()
    }
}

/// Plays the event source mapping with `invocations` concurrent pollers: receive up to ten,
/// invoke `handle_batch`, delete what was not returned as a failure.
fn event_source_mapping(
    env: &TestEnv,
    state: Arc<WorkerState>,
    arn: String,
    invocations: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..invocations)
        .map(|_| {
            let (state, arn, stop) = (state.clone(), arn.clone(), stop.clone());
            let queue = env.queue.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let received = queue
                        .receive(Duration::from_secs(1))
                        .await
                        .expect("receiving");
                    if received.is_empty() {
                        continue;
                    }
                    let event = ebra::local::sqs_event(&received, &arn);
                    let response = handle_batch(&state, event).await;
                    assert_eq!(
                        ebra::local::delete_succeeded(&queue, &received, &response).await,
                        0,
                        "deleting the processed messages"
                    );
                }
            })
        })
        .collect()
}

async fn wait_until_all(
    env: &TestEnv,
    call_ids: &[Uuid],
    status: &str,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let ids: Vec<Uuid> = call_ids.to_vec();
    loop {
        let client = env.pool.get().await.expect("pool");
        let reached: i64 = client
            .query_one(
                "SELECT count(*) FROM calls WHERE id = ANY($1) AND status = $2",
                &[&ids, &status],
            )
            .await
            .expect("counting")
            .get(0);
        drop(client);
        if reached as usize == ids.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let client = env.pool.get().await.expect("pool");
            let by_status: Vec<String> = client
                .query("SELECT status || '=' || count(*) FROM calls WHERE id = ANY($1) GROUP BY status", &[&ids])
                .await
                .expect("counting by status")
                .iter()
                .map(|row| row.get(0))
                .collect();
            return Err(format!(
                "only {reached} of {} calls reached {status} within {within:?} ({})",
                ids.len(),
                by_status.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Invariant 1: the global cap
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_under_50_concurrent_invocations_on_500_calls() {
    const CALLS: usize = 500;
    const CAP: i64 = 5;
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = Arc::new(worker(&env, &provider, &[("GLOBAL_CONCURRENCY", "5")]));
    let source = Arc::new(MemoryEventSource::default());
    let call_ids = insert_calls(&env, &(0..CALLS).map(phone).collect::<Vec<_>>()).await;
    for &call_id in &call_ids {
        source.push(call_id, Instant::now());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let in_progress = sample_max(
        &env,
        "SELECT count(*) FROM calls WHERE status = 'IN_PROGRESS'",
        stop.clone(),
    );
    let slots_held = sample_max(
        &env,
        "SELECT count(*) FROM call_slots WHERE call_id IS NOT NULL",
        stop.clone(),
    );
    // Held long enough that the cap is reached, not just respected by calls that end at once.
    let settler = settle_in_background(
        &env,
        Duration::from_millis(20),
        NudgeSink::Memory(source.clone()),
        stop.clone(),
    );
    let invocations = source.run(state.clone(), 50, stop.clone());

    let finished = wait_until_all(&env, &call_ids, "COMPLETED", Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    for task in invocations {
        task.await.expect("invocation");
    }
    settler.await.expect("settler");
    let (max_in_progress, samples) = in_progress.await.expect("sampler");
    let (max_slots, _) = slots_held.await.expect("sampler");
    if let Err(stuck) = finished {
        panic!("{stuck}");
    }

    assert!(samples > 100, "the sampler ran only {samples} times");
    assert!(
        max_in_progress <= CAP,
        "{max_in_progress} calls were in progress at once with a cap of {CAP}"
    );
    assert!(
        max_slots <= CAP,
        "{max_slots} slots were held at once with a cap of {CAP}"
    );
    assert_eq!(
        max_in_progress, CAP,
        "the backlog never filled the cap (max {max_in_progress})"
    );
    assert_eq!(
        provider.dial_count(),
        CALLS,
        "every call dialed exactly once"
    );
    assert_eq!(provider.placed_calls(), CALLS);
    assert_eq!(
        env.count("SELECT count(*) FROM calls WHERE attempts <> 1")
            .await,
        0
    );
}

// ---------------------------------------------------------------------------------------
// Invariant 2: one call per phone
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phone_never_has_two_calls_in_flight() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = Arc::new(worker(
        &env,
        &provider,
        &[("GLOBAL_CONCURRENCY", "5"), ("WAIT_RECHECK_SECONDS", "1")],
    ));
    let arn = env.queue_arn().await;
    let shared_phone = "+14155550100";
    let mut call_ids = Vec::new();
    let mut shared_phone_calls = Vec::new();
    for n in 0..10 {
        let id = insert_call(&env, shared_phone, -1.0).await;
        shared_phone_calls.push(id);
        call_ids.push(id);
        call_ids.push(insert_call(&env, &phone(n), -1.0).await);
    }
    send_dial_requests(&env, &call_ids).await;

    let stop = Arc::new(AtomicBool::new(false));
    let per_phone = sample_max(
        &env,
        "SELECT COALESCE(max(n), 0) FROM (SELECT count(*) AS n FROM calls \
          WHERE status = 'IN_PROGRESS' GROUP BY phone) per_phone",
        stop.clone(),
    );
    let settler = settle_in_background(
        &env,
        Duration::from_millis(30),
        NudgeSink::Queue(env.queue.clone()),
        stop.clone(),
    );
    let pollers = event_source_mapping(&env, state.clone(), arn, 6, stop.clone());

    let finished = wait_until_all(&env, &call_ids, "COMPLETED", Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    for task in pollers {
        task.await.expect("poller");
    }
    let settled_at = settler.await.expect("settler");
    let (max_per_phone, _) = per_phone.await.expect("sampler");
    if let Err(stuck) = finished {
        panic!("{stuck}");
    }

    assert_eq!(
        max_per_phone, 1,
        "a phone had {max_per_phone} calls in progress at once"
    );
    // Waiting spent no attempt and recorded no error: the second call waited, it did not fail.
    assert_eq!(
        env.count("SELECT count(*) FROM calls WHERE attempts <> 1 OR last_error IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        provider.dials_to(shared_phone).len(),
        shared_phone_calls.len()
    );
    // The shared phone's calls ran one after another: each was dialed only after the
    // previous one's outcome had been committed (real time, as the provider saw it).
    let dials = provider.dials_to(shared_phone);
    for pair in dials.windows(2) {
        let previous = provider
            .placed_for(&pair[0].idempotency_key)
            .expect("the previous dial placed a call");
        let previous_settled = settled_at[&previous];
        assert!(
            pair[1].at > previous_settled,
            "a call to the phone was dialed before the previous one ended"
        );
    }
}

#[tokio::test]
async fn a_second_call_to_a_busy_phone_waits_and_is_dialed_when_the_phone_frees() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[("WAIT_RECHECK_SECONDS", "300")]);
    let arn = env.queue_arn().await;
    let first = insert_call(&env, "+14155550111", -2.0).await;
    let second = insert_call(&env, "+14155550111", -1.0).await;
    send_dial_requests(&env, &[first, second]).await;
    let messages = receive_exactly(&env, &arn, 2, Duration::from_secs(5)).await;

    let (a, b) = tokio::join!(
        deliver(&env, &state, &messages[0]),
        deliver(&env, &state, &messages[1])
    );
    let mut outcomes = [(call_id_of(&messages[0]), a), (call_id_of(&messages[1]), b)];
    outcomes.sort_by_key(|(_, outcome)| !matches!(outcome, MessageOutcome::Dialed));
    assert_eq!(outcomes[0].1, MessageOutcome::Dialed);
    assert!(
        matches!(
            outcomes[1].1,
            MessageOutcome::Deferred {
                reason: DeferReason::PhoneBusy,
                ..
            }
        ),
        "the second call should wait for the phone, got {:?}",
        outcomes[1].1
    );
    let (dialed, waiting) = (outcomes[0].0, outcomes[1].0);
    let row = call_row(&env, waiting).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.last_error),
        ("PENDING", 0, None)
    );

    // The first call ends: the waiting one is nudged onto the queue at once.
    assert!(matches!(
        complete_call(&env, dialed).await,
        Settlement::Applied {
            status: CallStatus::Completed,
            ..
        }
    ));
    let nudge = receive_one(&env, &arn, Duration::from_secs(3)).await;
    assert_eq!(call_id_of(&nudge), waiting);
    assert_eq!(deliver(&env, &state, &nudge).await, MessageOutcome::Dialed);
    assert_eq!(provider.dials_to("+14155550111").len(), 2);
}

// ---------------------------------------------------------------------------------------
// Invariant 3: no double dial
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_duplicate_delivery_of_an_in_flight_or_finished_call_does_not_dial_again() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[]);
    let arn = env.queue_arn().await;
    let to = "+14155550122";
    let call = insert_call(&env, to, -1.0).await;

    // SQS delivers the same request twice, to two invocations at once.
    send_dial_requests(&env, &[call, call]).await;
    let messages = receive_exactly(&env, &arn, 2, Duration::from_secs(5)).await;
    let (a, b) = tokio::join!(
        deliver(&env, &state, &messages[0]),
        deliver(&env, &state, &messages[1])
    );
    let mut outcomes = [a, b];
    outcomes.sort_by_key(|outcome| !matches!(outcome, MessageOutcome::Dialed));
    assert_eq!(outcomes[0], MessageOutcome::Dialed);
    assert_eq!(
        outcomes[1],
        MessageOutcome::Acknowledged(AckReason::NotPending(CallStatus::InProgress))
    );

    // A late duplicate while the call is in progress.
    assert_eq!(
        deliver_new_message(&env, &state, &arn, call).await,
        MessageOutcome::Acknowledged(AckReason::NotPending(CallStatus::InProgress))
    );
    // And one after it finished.
    complete_call(&env, call).await;
    assert_eq!(
        deliver_new_message(&env, &state, &arn, call).await,
        MessageOutcome::Acknowledged(AckReason::NotPending(CallStatus::Completed))
    );
    let dials = provider.dials_to(to);
    assert_eq!(dials.len(), 1, "the provider was dialed more than once");
    assert_eq!(
        dials[0].body,
        serde_json::json!({
            "to": to,
            "scriptId": "welcome-v1",
            "webhookUrl": state.config.webhook_url.as_deref().expect("a webhook URL"),
            "metadata": {"customer": "c-1"},
        })
    );
    assert_eq!(provider.placed_calls(), 1);
    assert_eq!(env.count("SELECT count(*) FROM call_attempts").await, 1);
}

// ---------------------------------------------------------------------------------------
// Invariant 7: retry what can succeed
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_transient_5xx_is_retried_after_the_backoff_then_completes() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[("BASE_RETRY_SECONDS", "1")]);
    let arn = env.queue_arn().await;
    let to = "+14155550133";
    provider.script(to, [Reply::Status(503)]);
    let call = insert_call(&env, to, -1.0).await;

    let outcome = deliver_new_message(&env, &state, &arn, call).await;
    let MessageOutcome::Deferred {
        delay,
        reason: DeferReason::RetryScheduled,
    } = outcome
    else {
        panic!("a 503 should schedule a retry, got {outcome:?}");
    };
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(2)).contains(&delay),
        "backoff {delay:?}"
    );
    let row = call_row(&env, call).await;
    assert_eq!((row.status.as_str(), row.attempts), ("PENDING", 1));
    assert!(
        row.last_error.as_deref().is_some_and(|e| e.contains("503")),
        "lastError {:?}",
        row.last_error
    );
    assert!(
        row.due_in_secs > 0.5,
        "the retry is due only after the backoff"
    );
    assert!(
        receive(&env, &arn, Duration::ZERO).await.is_empty(),
        "the message is hidden for the backoff"
    );

    // The message comes back when the backoff has passed; the retry is dialed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let message = receive_one(&env, &arn, Duration::from_secs(5)).await;
        match deliver(&env, &state, &message).await {
            MessageOutcome::Dialed => break,
            MessageOutcome::Deferred {
                reason: DeferReason::NotDue,
                ..
            } if Instant::now() < deadline => {}
            other => panic!("expected the retry to be dialed, got {other:?}"),
        }
    }
    let dials = provider.dials_to(to);
    assert_eq!(dials.len(), 2);
    assert!(
        dials[1].at - dials[0].at >= Duration::from_secs(1),
        "retried before the backoff"
    );
    complete_call(&env, call).await;
    let row = call_row(&env, call).await;
    assert_eq!((row.status.as_str(), row.attempts), ("COMPLETED", 2));
}

#[tokio::test]
async fn a_permanent_4xx_fails_the_call_after_one_dial() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[]);
    let arn = env.queue_arn().await;
    let to = "+14155550144";
    provider.script(to, [Reply::Status(422)]);
    let call = insert_call(&env, to, -1.0).await;

    let outcome = deliver_new_message(&env, &state, &arn, call).await;
    assert!(
        matches!(&outcome, MessageOutcome::Failed { error } if error.contains("422")),
        "a 422 should fail the call, got {outcome:?}"
    );
    assert!(!outcome.returns_message());
    let row = call_row(&env, call).await;
    assert_eq!((row.status.as_str(), row.attempts), ("FAILED", 1));
    assert!(
        row.last_error.as_deref().is_some_and(|e| e.contains("422")),
        "lastError {:?}",
        row.last_error
    );
    assert_eq!(provider.dials_to(to).len(), 1);
    assert_eq!(
        slots_in_use(&env.pool).await.expect("slots"),
        0,
        "the slot was released"
    );
    assert!(
        receive(&env, &arn, Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing left to deliver"
    );
}

#[tokio::test]
async fn an_always_failing_provider_fails_the_call_after_exactly_max_attempts_dials() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    provider.answer_everything_with(Reply::Status(500));
    let state = worker(&env, &provider, &[]);
    let arn = env.queue_arn().await;
    let to = "+14155550155";
    // insert_call gives every call max_attempts = 3.
    let call = insert_call(&env, to, -1.0).await;

    send_dial_requests(&env, &[call]).await;
    let mut outcomes = Vec::new();
    loop {
        let message = receive_one(&env, &arn, Duration::from_secs(5)).await;
        let outcome = deliver(&env, &state, &message).await;
        let retrying = matches!(
            outcome,
            MessageOutcome::Deferred {
                reason: DeferReason::RetryScheduled,
                ..
            }
        );
        outcomes.push(outcome);
        if !retrying || outcomes.len() > 5 {
            break;
        }
    }
    assert_eq!(outcomes.len(), 3, "outcomes: {outcomes:?}");
    assert!(
        matches!(outcomes.last(), Some(MessageOutcome::Failed { error }) if error.contains("500") && error.contains("after 3 attempts")),
        "outcomes: {outcomes:?}"
    );
    assert_eq!(provider.dials_to(to).len(), 3);
    let row = call_row(&env, call).await;
    assert_eq!((row.status.as_str(), row.attempts), ("FAILED", 3));
    let last_error = row.last_error.expect("lastError");
    assert!(
        last_error.contains("500") && last_error.contains("after 3 attempts"),
        "lastError {last_error:?}"
    );
}

#[tokio::test]
async fn a_timed_out_dial_is_retried_with_the_same_idempotency_key() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[("DIAL_TIMEOUT_MS", "300")]);
    let arn = env.queue_arn().await;
    let to = "+14155550166";
    // The provider places the call but answers too late: the worker cannot know it exists.
    provider.script(to, [Reply::PlaceThenStall(Duration::from_secs(2))]);
    let call = insert_call(&env, to, -1.0).await;

    let outcome = deliver_new_message(&env, &state, &arn, call).await;
    assert!(
        matches!(
            outcome,
            MessageOutcome::Deferred {
                reason: DeferReason::RetryScheduled,
                ..
            }
        ),
        "a timeout should schedule a retry, got {outcome:?}"
    );
    // The provider may be ringing the phone: the call keeps its slot and its phone.
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM calls c JOIN call_slots s ON s.call_id = c.id \
              WHERE c.id = '{call}' AND c.status = 'IN_PROGRESS'"
        ))
        .await,
        1,
        "a dial of unknown fate must hold its slot (invariants 1 and 2)"
    );
    let message = receive_one(&env, &arn, Duration::from_secs(5)).await;
    assert_eq!(
        deliver(&env, &state, &message).await,
        MessageOutcome::Dialed
    );

    let dials = provider.dials_to(to);
    assert_eq!(dials.len(), 2);
    assert!(!dials[0].idempotency_key.is_empty());
    assert_eq!(
        dials[0].idempotency_key, dials[1].idempotency_key,
        "the retry must reuse the key"
    );
    assert_eq!(
        provider.placed_calls(),
        1,
        "the provider placed a second call"
    );
    assert_eq!(provider.most_placements_for_one_key(), 1);
    // The retry learned the id of the call the timed-out dial placed.
    let client = env.pool.get().await.expect("pool");
    let rows = client
        .query(
            "SELECT dial_state, provider_call_id, idempotency_key::text FROM call_attempts \
              WHERE call_id = $1 ORDER BY attempt_no",
            &[&call],
        )
        .await
        .expect("reading attempts");
    let attempts: Vec<(String, Option<String>, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(attempts[0].0, "UNKNOWN");
    assert_eq!(attempts[1].0, "ACCEPTED");
    assert_eq!(attempts[1].1.as_deref(), Some("prov-1"));
    assert_eq!(attempts[0].2, dials[0].idempotency_key);
    assert_eq!(attempts[1].2, dials[0].idempotency_key);
}

#[tokio::test]
async fn a_rate_limited_dial_waits_at_least_retry_after() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[("BASE_RETRY_SECONDS", "0")]);
    let arn = env.queue_arn().await;
    let to = "+14155550177";
    provider.script(
        to,
        [Reply::RateLimited {
            retry_after_secs: 30,
        }],
    );
    let call = insert_call(&env, to, -1.0).await;

    let outcome = deliver_new_message(&env, &state, &arn, call).await;
    let MessageOutcome::Deferred {
        delay,
        reason: DeferReason::RetryScheduled,
    } = outcome
    else {
        panic!("a 429 should schedule a retry, got {outcome:?}");
    };
    assert!(
        delay >= Duration::from_secs(30),
        "Retry-After not honoured: {delay:?}"
    );
    let row = call_row(&env, call).await;
    assert_eq!((row.status.as_str(), row.attempts), ("PENDING", 1));
    assert!(
        row.due_in_secs > 28.0,
        "next_run_at only {}s away",
        row.due_in_secs
    );
    assert!(
        receive(&env, &arn, Duration::ZERO).await.is_empty(),
        "the message is hidden until then"
    );
}

// ---------------------------------------------------------------------------------------
// Invariant 6: waiting is not failing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_message_that_waits_for_its_phone_50_times_is_still_delivered_never_dead_lettered() {
    const WAITS: usize = 50;
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[("WAIT_RECHECK_SECONDS", "1")]);
    let arn = env.queue_arn().await;
    let threshold = recycle_threshold(state.config.max_receive_count);
    assert!(threshold < common::MAX_RECEIVE_COUNT);

    // Another call to the same phone is in progress for the whole wait.
    let waiting_to = "+14155550199";
    let holder = insert_call(&env, waiting_to, -1.0).await;
    assert_eq!(
        deliver_new_message(&env, &state, &arn, holder).await,
        MessageOutcome::Dialed
    );
    let waiting = insert_call(&env, waiting_to, -1.0).await;
    send_dial_requests(&env, &[waiting]).await;

    let (mut deferred, mut recycled, mut highest_count) = (0, 0, 0);
    for wait in 0..WAITS {
        // Recycled messages come back after their DelaySeconds (0–1 s here).
        let message = receive_one(&env, &arn, Duration::from_secs(5)).await;
        assert_eq!(call_id_of(&message), waiting, "wait {wait}");
        let count = receive_count_of(&message);
        highest_count = highest_count.max(count);
        match deliver(&env, &state, &message).await {
            MessageOutcome::Deferred {
                reason: DeferReason::PhoneBusy,
                ..
            } => {
                deferred += 1;
                // Time passes: the hidden message is due again.
                make_visible(&env, &message).await;
            }
            MessageOutcome::Recycled {
                reason: DeferReason::PhoneBusy,
                ..
            } => recycled += 1,
            other => panic!("wait {wait}: expected the call to keep waiting, got {other:?}"),
        }
    }
    assert_eq!(deferred + recycled, WAITS);
    assert_eq!(
        recycled,
        WAITS / threshold as usize,
        "every {threshold}th receive recycles"
    );
    assert_eq!(
        highest_count, threshold,
        "a waiting message's receive count must stay below the DLQ's limit"
    );
    assert_eq!(dlq_depth(&env).await, 0);
    assert_eq!(
        provider.dials_to(waiting_to).len(),
        1,
        "only the holder was dialed"
    );
    let row = call_row(&env, waiting).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.last_error),
        ("PENDING", 0, None)
    );

    // The phone frees: the waiting call is dialed.
    complete_call(&env, holder).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while call_row(&env, waiting).await.status == "PENDING" {
        assert!(
            Instant::now() < deadline,
            "the waiting call was never dialed"
        );
        for message in receive(&env, &arn, Duration::from_secs(2)).await {
            deliver(&env, &state, &message).await;
        }
    }
    assert_eq!(call_row(&env, waiting).await.status, "IN_PROGRESS");
    assert_eq!(provider.dials_to(waiting_to).len(), 2);
    assert_eq!(dlq_depth(&env).await, 0);
}

#[tokio::test]
async fn a_batch_hides_each_waiting_message_for_its_own_wait() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[]);
    let arn = env.queue_arn().await;
    let soon = insert_call(&env, "+14155550411", 2.0).await;
    let later = insert_call(&env, "+14155550412", 600.0).await;
    let now = insert_call(&env, "+14155550413", -1.0).await;
    send_dial_requests(&env, &[soon, later, now]).await;
    let messages = receive_exactly(&env, &arn, 3, Duration::from_secs(5)).await;

    let mut event = SqsEvent::default();
    event.records = messages.clone();
    let response = handle_batch(&state, event).await;
    let mut returned: Vec<Uuid> = response
        .batch_item_failures
        .iter()
        .map(|failure| {
            let message = messages
                .iter()
                .find(|m| m.message_id.as_deref() == Some(failure.item_identifier.as_str()))
                .expect("a returned message is one of the batch");
            call_id_of(message)
        })
        .collect();
    returned.sort();
    let mut waiting = vec![soon, later];
    waiting.sort();
    assert_eq!(returned, waiting, "the two calls not yet due come back");
    assert_eq!(call_row(&env, now).await.status, "IN_PROGRESS");

    // Each comes back after its own wait, not after the queue's visibility timeout (180 s).
    let back = receive_one(&env, &arn, Duration::from_secs(6)).await;
    assert_eq!(call_id_of(&back), soon);
    assert!(
        receive(&env, &arn, Duration::from_secs(1)).await.is_empty(),
        "the call due in ten minutes stays hidden"
    );
}

#[tokio::test]
async fn one_batch_claims_in_order_within_the_cap_and_never_two_calls_to_one_phone() {
    let env = TestEnv::new().await;
    let first = insert_call(&env, "+14155550131", -1.0).await;
    let same_phone = insert_call(&env, "+14155550131", -1.0).await;
    let second = insert_call(&env, "+14155550132", -1.0).await;
    let third = insert_call(&env, "+14155550133", -1.0).await;
    let no_slot = insert_call(&env, "+14155550134", -1.0).await;
    let missing = Uuid::now_v7();

    let claims = claim_calls(
        &env.pool,
        &[first, same_phone, second, first, missing, third, no_slot],
        3,
        None,
    )
    .await
    .expect("batch claim");
    let kinds: Vec<String> = claims
        .iter()
        .map(|claim| match claim {
            Claim::Claimed(claimed) => format!("claimed slot {}", claimed.slot_no),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "claimed slot 1",
            "PhoneBusy",
            "claimed slot 2",
            "Duplicate",
            "Unknown",
            "claimed slot 3",
            "NoFreeSlot"
        ]
    );
    assert_eq!(
        env.count("SELECT count(*) FROM calls WHERE status = 'IN_PROGRESS'")
            .await,
        3
    );
    assert_eq!(
        env.count("SELECT count(*) FROM call_attempts").await,
        3,
        "one attempt per claimed call"
    );
    for call in [same_phone, no_slot] {
        assert_eq!(call_row(&env, call).await.status, "PENDING");
    }
    // The same batch again: nothing more can go.
    let again = claim_calls(&env.pool, &[same_phone, no_slot], 3, None)
        .await
        .expect("batch claim");
    assert!(
        matches!(again[..], [Claim::PhoneBusy, Claim::NoFreeSlot]),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_long_wait_is_recycled_into_a_fresh_message_before_it_nears_the_dlq() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[]);
    let arn = env.queue_arn().await;
    // Scheduled two hours out: longer than any single DelaySeconds.
    let call = insert_call(&env, "+14155550211", 7200.0).await;
    send_dial_requests(&env, &[call]).await;
    let mut message = receive_one(&env, &arn, Duration::from_secs(5)).await;
    let threshold = recycle_threshold(state.config.max_receive_count);

    message.attributes.insert(
        "ApproximateReceiveCount".into(),
        (threshold - 1).to_string(),
    );
    let outcome = process_message(&state, &message).await;
    let MessageOutcome::Deferred {
        delay,
        reason: DeferReason::NotDue,
    } = outcome
    else {
        panic!("below the threshold the message is hidden in place, got {outcome:?}");
    };
    assert!(
        delay > Duration::from_secs(7100) && delay <= Duration::from_secs(7201),
        "{delay:?}"
    );
    assert!(outcome.returns_message());

    message
        .attributes
        .insert("ApproximateReceiveCount".into(), threshold.to_string());
    let outcome = process_message(&state, &message).await;
    assert_eq!(
        outcome,
        MessageOutcome::Recycled {
            delay: Duration::from_secs(900),
            reason: DeferReason::NotDue
        },
        "at the threshold the wait continues in a fresh message"
    );
    assert!(!outcome.returns_message());
    let attributes = env
        .sqs
        .get_queue_attributes()
        .queue_url(&env.queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .expect("queue attributes");
    let delayed = attributes.attributes.and_then(|a| {
        a.get(&QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .cloned()
    });
    assert_eq!(
        delayed.as_deref(),
        Some("1"),
        "the fresh message waits on the queue"
    );

    // If the fresh message cannot be sent, the old one is kept and returned instead.
    let broken = WorkerState {
        queue: env.broken_queue(),
        ..worker(&env, &provider, &[])
    };
    let outcome = process_message(&broken, &message).await;
    assert!(
        matches!(
            outcome,
            MessageOutcome::Deferred {
                reason: DeferReason::NotDue,
                ..
            }
        ),
        "a failed recycle must keep the message, got {outcome:?}"
    );
    assert!(outcome.returns_message());
}

#[tokio::test]
async fn a_poison_message_is_returned_until_the_dlq_takes_it() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[]);
    let arn = env.queue_arn().await;
    env.sqs
        .send_message()
        .queue_url(&env.queue_url)
        .message_body("this is not a dial request")
        .send()
        .await
        .expect("sending poison");

    let mut receives = 0;
    loop {
        let messages = receive(&env, &arn, Duration::from_millis(500)).await;
        let Some(message) = messages.first() else {
            break;
        };
        receives += 1;
        assert!(
            receives <= common::MAX_RECEIVE_COUNT as usize,
            "the poison message was received {receives} times"
        );
        let mut event = SqsEvent::default();
        event.records = vec![message.clone()];
        let response = handle_batch(&state, event).await;
        assert_eq!(response.batch_item_failures.len(), 1);
        assert_eq!(
            Some(&response.batch_item_failures[0].item_identifier),
            message.message_id.as_ref()
        );
        // The queue's visibility timeout passes.
        make_visible(&env, message).await;
    }
    assert_eq!(receives, common::MAX_RECEIVE_COUNT as usize);
    let dead = env.drain(&env.dlq_url).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body.as_deref(), Some("this is not a dial request"));
}

#[tokio::test]
async fn a_database_error_returns_the_message_shortly() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let unreachable =
        ebra_shared::db::pool("postgres://postgres@127.0.0.1:1/nowhere", 2).expect("pool");
    let state = WorkerState {
        pool: unreachable,
        ..worker(&env, &provider, &[])
    };
    let arn = env.queue_arn().await;
    let call = insert_call(&env, "+14155550222", -1.0).await;

    let outcome = deliver_new_message(&env, &state, &arn, call).await;
    let MessageOutcome::Deferred {
        delay,
        reason: DeferReason::StoreUnavailable,
    } = outcome
    else {
        panic!("a database error should defer the message, got {outcome:?}");
    };
    assert!(
        (Duration::from_secs(5)..=Duration::from_secs(15)).contains(&delay),
        "{delay:?}"
    );
    assert!(outcome.returns_message());
    assert!(
        receive(&env, &arn, Duration::ZERO).await.is_empty(),
        "hidden for the short delay"
    );
    assert_eq!(provider.dial_count(), 0);
    assert_eq!(call_row(&env, call).await.status, "PENDING");
}

// ---------------------------------------------------------------------------------------
// One bad message never fails the batch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_malformed_message_does_not_fail_its_batch_mates() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[]);
    let first = insert_call(&env, "+14155550233", -1.0).await;
    let second = insert_call(&env, "+14155550244", -1.0).await;

    let poison = [
        handmade_message("not json at all", 1),
        handmade_message(r#"{"callId": "not-a-uuid"}"#, 1),
        handmade_message(&format!(r#"{{"callId": "{first}", "extra": true}}"#), 1),
    ];
    let unknown_call = handmade_message(&dial_request_body(Uuid::now_v7()), 1);
    let mut event = SqsEvent::default();
    event.records = vec![
        handmade_message(&dial_request_body(first), 1),
        poison[0].clone(),
        unknown_call,
        poison[1].clone(),
        handmade_message(&dial_request_body(second), 1),
        poison[2].clone(),
    ];
    let response = handle_batch(&state, event).await;

    let mut returned: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    let mut expected: Vec<String> = poison
        .iter()
        .map(|m| m.message_id.clone().expect("an id"))
        .collect();
    returned.sort();
    expected.sort();
    assert_eq!(
        returned, expected,
        "exactly the malformed messages are returned"
    );
    assert_eq!(call_row(&env, first).await.status, "IN_PROGRESS");
    assert_eq!(call_row(&env, second).await.status, "IN_PROGRESS");
    assert_eq!(provider.dial_count(), 2);
    for message in &poison {
        let outcome = process_message(&state, message).await;
        assert!(
            matches!(outcome, MessageOutcome::Poison { .. }),
            "{outcome:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The outbox, and invariant 8: freed slots are refilled at once
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_outbox_mark_is_cleared_on_first_receipt() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(
        &env,
        &provider,
        &[("GLOBAL_CONCURRENCY", "1"), ("WAIT_RECHECK_SECONDS", "300")],
    );
    let arn = env.queue_arn().await;
    let dialed = insert_call(&env, "+14155550255", -1.0).await;
    let waiting = insert_call(&env, "+14155550266", -1.0).await;
    let scheduled = insert_call(&env, "+14155550277", 3600.0).await;
    env.execute("UPDATE calls SET outbox_due_at = now() + interval '1 minute'")
        .await;

    assert_eq!(
        deliver_new_message(&env, &state, &arn, dialed).await,
        MessageOutcome::Dialed
    );
    assert!(!call_row(&env, dialed).await.outbox_marked);

    let outcome = deliver_new_message(&env, &state, &arn, waiting).await;
    assert_eq!(
        outcome,
        MessageOutcome::Acknowledged(AckReason::WaitingForSlot)
    );
    assert!(
        !call_row(&env, waiting).await.outbox_marked,
        "a waiting call's message has arrived too"
    );

    let outcome = deliver_new_message(&env, &state, &arn, scheduled).await;
    let MessageOutcome::Deferred {
        delay,
        reason: DeferReason::NotDue,
    } = outcome
    else {
        panic!("a scheduled call should wait for its time, got {outcome:?}");
    };
    assert!(delay > Duration::from_secs(3500), "{delay:?}");
    assert!(!call_row(&env, scheduled).await.outbox_marked);
    assert_eq!(
        env.count("SELECT count(*) FROM calls WHERE outbox_due_at IS NOT NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn a_slot_freed_by_a_failed_dial_nudges_the_oldest_waiting_call() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    // Waiting calls keep no message: only a nudge brings one back.
    let state = worker(
        &env,
        &provider,
        &[("GLOBAL_CONCURRENCY", "1"), ("WAIT_RECHECK_SECONDS", "300")],
    );
    let arn = env.queue_arn().await;
    let holder_to = "+14155550288";
    provider.script(
        holder_to,
        [Reply::Slow {
            pause: Duration::from_millis(1500),
            then: Box::new(Reply::Status(422)),
        }],
    );
    let oldest = insert_call(&env, "+14155550299", -20.0).await;
    let newer = insert_call(&env, "+14155550300", -10.0).await;
    let holder = insert_call(&env, holder_to, -1.0).await;

    send_dial_requests(&env, &[holder]).await;
    let holder_message = receive_one(&env, &arn, Duration::from_secs(5)).await;
    let holder_dial = async {
        let outcome = deliver(&env, &state, &holder_message).await;
        (outcome, Instant::now())
    };
    let meanwhile = async {
        // While the holder's dial is in flight, both calls find no free slot: they wait,
        // PENDING, with no message on the queue.
        while call_row(&env, holder).await.status != "IN_PROGRESS" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for call in [oldest, newer] {
            let outcome = deliver_new_message(&env, &state, &arn, call).await;
            assert_eq!(
                outcome,
                MessageOutcome::Acknowledged(AckReason::WaitingForSlot)
            );
            assert_eq!(call_row(&env, call).await.status, "PENDING");
        }
        assert!(
            receive(&env, &arn, Duration::ZERO).await.is_empty(),
            "waiting for a slot keeps no message"
        );
    };
    let ((holder_outcome, freed_at), ()) = tokio::join!(holder_dial, meanwhile);
    assert!(
        matches!(holder_outcome, MessageOutcome::Failed { .. }),
        "{holder_outcome:?}"
    );

    let nudge = receive_one(&env, &arn, Duration::from_secs(3)).await;
    assert!(freed_at.elapsed() < Duration::from_secs(3));
    assert_eq!(
        call_id_of(&nudge),
        oldest,
        "the oldest waiting call is nudged"
    );
    assert_eq!(receive_count_of(&nudge), 1, "a fresh message");
    assert_eq!(deliver(&env, &state, &nudge).await, MessageOutcome::Dialed);
    assert!(
        receive(&env, &arn, Duration::from_millis(300))
            .await
            .is_empty(),
        "only one call was nudged"
    );
    assert_eq!(call_row(&env, newer).await.status, "PENDING");
}

// ---------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn every_log_line_of_a_dial_names_the_call_and_the_attempt() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[]);
    let arn = env.queue_arn().await;
    let to = "+14155550311";
    provider.script(to, [Reply::Status(503)]);
    let call = insert_call(&env, to, -1.0).await;
    send_dial_requests(&env, &[call]).await;
    let message = receive_one(&env, &arn, Duration::from_secs(5)).await;

    // The JSON format Lambda uses; this test's runtime is single-threaded, so a thread-local
    // subscriber sees everything the handler logs.
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(logs.clone())
        .finish();
    let outcome = {
        let _guard = tracing::subscriber::set_default(subscriber);
        deliver(&env, &state, &message).await
    };
    assert!(
        matches!(
            outcome,
            MessageOutcome::Deferred {
                reason: DeferReason::RetryScheduled,
                ..
            }
        ),
        "{outcome:?}"
    );

    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8 logs");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .collect();
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(messages.contains(&"dialing"), "logs: {text}");
    assert!(messages.contains(&"retry scheduled"), "logs: {text}");
    for line in &lines {
        assert_eq!(
            line["span"]["call_id"].as_str(),
            Some(call.to_string().as_str()),
            "line without the call: {line}"
        );
        assert_eq!(
            line["span"]["attempt"].as_i64(),
            Some(1),
            "line without the attempt: {line}"
        );
    }
}

/// Inserts a PENDING call due now whose calling window (in UTC) opens `opens_in` from now
/// and lasts an hour.
async fn insert_call_outside_its_window(
    env: &TestEnv,
    phone: &str,
    opens_in: chrono::Duration,
) -> (Uuid, chrono::DateTime<chrono::Utc>) {
    use chrono::{Timelike as _, Utc};
    let opens = (Utc::now() + opens_in)
        .with_second(0)
        .and_then(|at| at.with_nanosecond(0))
        .expect("a minute");
    let closes = opens + chrono::Duration::hours(1);
    let window = serde_json::json!({
        "start": format!("{:02}:{:02}", opens.hour(), opens.minute()),
        "end": format!("{:02}:{:02}", closes.hour(), closes.minute()),
    });
    let id = insert_call(env, phone, -1.0).await;
    env.pool
        .get()
        .await
        .expect("pool")
        .execute(
            "UPDATE calls SET calling_window = $2::jsonb, time_zones = '{UTC}' WHERE id = $1",
            &[&id, &window],
        )
        .await
        .expect("giving the call a window");
    (id, opens)
}

#[tokio::test]
async fn a_call_outside_its_window_is_parked_or_deferred_never_dialed() {
    let env = TestEnv::new().await;
    let provider = FakeProvider::start().await;
    let state = worker(&env, &provider, &[]);
    let arn = env.queue_arn().await;

    // Hours away: no message waits for it (the reclaimer's refill brings it when due).
    let (far, opens) =
        insert_call_outside_its_window(&env, "+14155550301", chrono::Duration::hours(3)).await;
    let outcome = deliver_new_message(&env, &state, &arn, far).await;
    assert_eq!(
        outcome,
        MessageOutcome::Acknowledged(AckReason::WaitingForRules)
    );
    let row = call_row(&env, far).await;
    assert_eq!((row.status.as_str(), row.attempts), ("PENDING", 0));
    assert!(!row.outbox_marked);
    let due_in = (opens - chrono::Utc::now()).num_seconds() as f64;
    assert!(
        (row.due_in_secs - due_in).abs() < 5.0,
        "next_run_at moved to the opening: due in {} s, opens in {due_in} s",
        row.due_in_secs
    );

    // Minutes away (within SQS's delay): its message comes back at the opening.
    let (near, opens) =
        insert_call_outside_its_window(&env, "+14155550302", chrono::Duration::minutes(5)).await;
    let outcome = deliver_new_message(&env, &state, &arn, near).await;
    let MessageOutcome::Deferred {
        delay,
        reason: DeferReason::CallingRules,
    } = outcome
    else {
        panic!("expected a deferral until the window opens, got {outcome:?}");
    };
    let wait = (opens - chrono::Utc::now()).num_seconds();
    assert!(
        (delay.as_secs() as i64 - wait).abs() <= 2,
        "{delay:?} vs {wait} s"
    );
    assert_eq!(provider.dial_count(), 0, "nothing dialed outside a window");
}
