//! An AI-call provider over HTTP for the end-to-end bench, speaking the generic contract
//! (README, "The provider and its webhook"): `POST /api/v1/calls` is answered
//! `202 {"callId": ...}` at once (the same id again for a repeated `Idempotency-Key`), and
//! after the call's duration the report `{"callId", "status": "COMPLETED", "durationSec",
//! "completedAt"}` is posted to the dial's `webhookUrl`, signed the Standard Webhooks way.
//! A webhook answered with anything but 2xx is posted again, as providers retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ebra_shared::webhook_signature::WebhookSecret;
use serde::Deserialize;
use tokio::sync::watch;

pub struct FakeProvider {
    pub base_url: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

struct Shared {
    call_duration: Duration,
    secret: WebhookSecret,
    http: reqwest::Client,
    /// Idempotency key → the provider's call id.
    placed: Mutex<HashMap<String, String>>,
    next_id: AtomicU64,
    webhooks_sent: AtomicU64,
    webhook_retries: AtomicU64,
    /// Turns true at [`FakeProvider::stop`]: reports not yet due are dropped.
    stopped: watch::Receiver<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DialBody {
    webhook_url: String,
}

impl FakeProvider {
    pub async fn start(call_duration: Duration, secret: WebhookSecret) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake provider")?;
        let (stop, stopped) = watch::channel(false);
        let base_url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            call_duration,
            secret,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("building the fake provider's HTTP client")?,
            placed: Mutex::default(),
            next_id: AtomicU64::new(1),
            webhooks_sent: AtomicU64::new(0),
            webhook_retries: AtomicU64::new(0),
            stopped: stopped.clone(),
        });
        let app = Router::new()
            .route("/api/v1/calls", post(dial))
            .with_state(shared.clone());
        let mut shutdown = stopped;
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await;
            if let Err(error) = served {
                eprintln!("   warning: the fake provider stopped: {error}");
            }
        });
        Ok(Self {
            base_url,
            shared,
            stop,
        })
    }

    /// Calls placed (distinct idempotency keys).
    pub fn placed(&self) -> usize {
        self.shared.placed.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub fn webhooks_sent(&self) -> u64 {
        self.shared.webhooks_sent.load(Ordering::Relaxed)
    }

    pub fn webhook_retries(&self) -> u64 {
        self.shared.webhook_retries.load(Ordering::Relaxed)
    }

    /// Stops answering dials and drops the reports not yet sent.
    pub fn stop(self) {
        let _ = self.stop.send(true);
    }
}

async fn dial(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<DialBody>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (call_id, new) = {
        let Ok(mut placed) = shared.placed.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        match placed.get(&key) {
            Some(id) if !key.is_empty() => (id.clone(), false),
            _ => {
                let id = format!("prov-{}", shared.next_id.fetch_add(1, Ordering::Relaxed));
                placed.insert(key, id.clone());
                (id, true)
            }
        }
    };
    if new {
        tokio::spawn(report_later(
            shared.clone(),
            call_id.clone(),
            body.webhook_url,
        ));
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "callId": call_id })),
    )
        .into_response()
}

/// Posts the call's outcome after its duration, retrying (up to 20 times) until a 2xx.
async fn report_later(shared: Arc<Shared>, call_id: String, webhook_url: String) {
    let mut stopped = shared.stopped.clone();
    tokio::select! {
        _ = tokio::time::sleep(shared.call_duration) => {}
        _ = stopped.wait_for(|s| *s) => return,
    }
    let body = serde_json::json!({
        "callId": call_id,
        "status": "COMPLETED",
        "durationSec": shared.call_duration.as_secs_f64().ceil() as u64,
        "completedAt": chrono::Utc::now().to_rfc3339(),
    })
    .to_string();
    let webhook_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    for attempt in 0..20u32 {
        if *shared.stopped.borrow() {
            return;
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature = shared.secret.sign(&webhook_id, timestamp, body.as_bytes());
        let sent = shared
            .http
            .post(&webhook_url)
            .header("content-type", "application/json")
            .header("webhook-id", &webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            shared.webhooks_sent.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shared.webhook_retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
    }
    eprintln!("   warning: the fake provider gave up on the webhook of {call_id}");
}
