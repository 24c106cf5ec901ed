//! An SQS endpoint in this process: what `ebra dev`, `ebra bench` and the tests use when no
//! `AWS_ENDPOINT_URL_SQS` is given, so a machine needs no emulator to install.
//!
//! It speaks the protocol `aws-sdk-sqs` speaks — AWS JSON 1.0: `POST /` with
//! `X-Amz-Target: AmazonSQS.<Operation>`, errors as a JSON `__type` plus the
//! `x-amzn-query-error` header — so every Ebra code path stays the SDK's. It keeps
//! standard queues in memory with SQS's semantics and limits: visibility timeouts, delays,
//! long polling that wakes when a message arrives, receive counts and redrive to a
//! dead-letter queue, batches with partial failures, and SQS's own error codes. FIFO queues,
//! permissions and message move tasks are answered `UnsupportedOperation`.
//!
//! It counts the requests it serves by operation ([`SqsHandle::request_counts`], and
//! `GET /_ebra/stats` as JSON with each queue's depth), which is how the bench counts SQS
//! requests per call at the endpoint.
//!
//! Nothing here is used by the Lambdas: they talk to SQS.

mod attributes;
mod errors;
mod message;
mod queue;
mod service;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

pub use queue::Depth;
use service::Service;
pub use wire::Operation;

/// A request body larger than this is refused before parsing (a full batch of 1 MiB with
/// JSON escaping fits well inside).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// A cheap handle on a running endpoint: its URL, its counters, its queues' depths.
#[derive(Clone)]
pub struct SqsHandle {
    service: Arc<Service>,
}

impl SqsHandle {
    /// The endpoint URL, for `AWS_ENDPOINT_URL_SQS` or an SDK's `endpoint_url`.
    pub fn endpoint(&self) -> &str {
        self.service.base_url()
    }

    /// Requests served so far, by operation name (`SendMessage`, ...), unknown ones under
    /// `unknown`; operations never called are absent.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.service.request_counts()
    }

    pub fn total_requests(&self) -> u64 {
        self.request_counts().values().sum()
    }

    /// The messages of the queue at `queue_url` by state (`None`: no such queue). Read in
    /// memory: it is not a request and is not counted.
    pub fn queue_depth(&self, queue_url: &str) -> Option<Depth> {
        self.service.queue_by_url(queue_url).map(|q| q.depth())
    }

    /// Every queue's depth, by name.
    pub fn depths(&self) -> BTreeMap<String, Depth> {
        self.service.depths()
    }
}

/// The endpoint, served on the current Tokio runtime until [`SqsServer::stop`].
pub struct SqsServer {
    handle: SqsHandle,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl SqsServer {
    /// Serves on `addr` (port 0: a free port of that address).
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the embedded SQS endpoint on {addr}"))?;
        let local = listener
            .local_addr()
            .context("reading the embedded SQS endpoint's address")?;
        let (stop, stopped) = watch::channel(false);
        let service = Arc::new(Service::new(format!("http://{local}"), stopped.clone()));
        let app = router(service.clone());
        let mut shutdown = stopped;
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Self {
            handle: SqsHandle { service },
            stop,
            task,
        })
    }

    /// Serves on a free port of 127.0.0.1.
    pub async fn start_on_loopback() -> anyhow::Result<Self> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Serves on a free port of 127.0.0.1 from a thread of its own with its own runtime,
    /// for as long as the process lives: it outlives any caller's runtime (each
    /// `#[tokio::test]` has its own).
    pub fn start_on_own_thread() -> anyhow::Result<SqsHandle> {
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("embedded-sqs".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(anyhow::Error::new(error)
                            .context("building the embedded SQS endpoint's runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match SqsServer::start_on_loopback().await {
                        Ok(server) => {
                            let _ = ready.send(Ok(server.handle()));
                            // Serve until the process ends.
                            let _ = server.task.await;
                        }
                        Err(error) => {
                            let _ = ready.send(Err(error));
                        }
                    }
                });
            })
            .context("spawning the embedded SQS endpoint's thread")?;
        started
            .recv()
            .context("the embedded SQS endpoint's thread ended before it started")?
    }

    pub fn handle(&self) -> SqsHandle {
        self.handle.clone()
    }

    pub fn endpoint(&self) -> &str {
        self.handle.endpoint()
    }

    /// Stops serving: long polls in progress answer at once, then the listener closes.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "the embedded SQS endpoint stopped with an error")
            }
            Err(error) => tracing::warn!(%error, "the embedded SQS endpoint's task failed"),
        }
    }
}

fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/_ebra/stats", get(stats))
        .fallback(dispatch)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(service)
}

static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// One SQS request: the operation comes from `X-Amz-Target`, its input is the JSON body.
async fn dispatch(
    State(service): State<Arc<Service>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET || method == Method::HEAD {
        // Anything answering here is enough for "is the endpoint up?" probes.
        return (
            StatusCode::OK,
            "Ebra's embedded SQS endpoint (AWS JSON 1.0)\n",
        )
            .into_response();
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let operation = Operation::from_target(target);
    service.count(operation);
    let mut response = match operation {
        None => errors::SqsError::unknown_operation(target).into_response(),
        Some(operation) => match service.call(operation, &body).await {
            Ok(json) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, errors::JSON_1_0)],
                json,
            )
                .into_response(),
            Err(error) => error.into_response(),
        },
    };
    let id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed);
    if let Ok(value) = HeaderValue::from_str(&format!("ebra-{id:016x}")) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

/// `GET /_ebra/stats`: requests by operation and each queue's depth.
async fn stats(State(service): State<Arc<Service>>) -> Json<serde_json::Value> {
    let requests = service.request_counts();
    let total: u64 = requests.values().sum();
    Json(serde_json::json!({
        "requests": requests,
        "totalRequests": total,
        "queues": service.depths(),
    }))
}
