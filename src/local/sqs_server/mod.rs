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
use axum::serve::ListenerExt as _;
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
        // Small requests and answers on kept-alive connections: without TCP_NODELAY, Nagle
        // and delayed ACKs hold each exchange for tens of milliseconds.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "embedded SQS: TCP_NODELAY not set");
            }
        });
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    async fn queue(server: &SqsServer, name: &str) -> (aws_sdk_sqs::Client, String) {
        let sqs = crate::local::local_sqs_client(server.endpoint());
        let url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("CreateQueue")
            .queue_url
            .expect("a queue URL");
        (sqs, url)
    }

    #[tokio::test]
    async fn counts_requests_by_operation_and_reports_depths() {
        let server = SqsServer::start_on_loopback().await.expect("server");
        let (sqs, url) = queue(&server, "counted").await;
        for n in 0..3 {
            sqs.send_message()
                .queue_url(&url)
                .message_body(format!("m{n}"))
                .send()
                .await
                .expect("SendMessage");
        }
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .send()
            .await
            .expect("ReceiveMessage");
        assert_eq!(received.messages().len(), 1);

        let handle = server.handle();
        let counts = handle.request_counts();
        assert_eq!(counts.get("CreateQueue"), Some(&1));
        assert_eq!(counts.get("SendMessage"), Some(&3));
        assert_eq!(counts.get("ReceiveMessage"), Some(&1));
        assert_eq!(handle.total_requests(), 5);
        assert_eq!(
            handle.queue_depth(&url),
            Some(Depth {
                visible: 2,
                in_flight: 1,
                delayed: 0
            })
        );

        let http = reqwest::Client::new();
        let stats: serde_json::Value = http
            .get(format!("{}/_ebra/stats", server.endpoint()))
            .send()
            .await
            .expect("GET /_ebra/stats")
            .json()
            .await
            .expect("stats JSON");
        assert_eq!(stats["requests"]["SendMessage"], 3);
        assert_eq!(stats["totalRequests"], 5);
        assert_eq!(stats["queues"]["counted"]["inFlight"], 1);

        let unknown = http
            .post(server.endpoint())
            .header("x-amz-target", "AmazonSQS.FlyToTheMoon")
            .header("content-type", errors::JSON_1_0)
            .body("{}")
            .send()
            .await
            .expect("POST");
        assert_eq!(unknown.status(), 400);
        let body: serde_json::Value = unknown.json().await.expect("error JSON");
        assert_eq!(
            body["__type"],
            "com.amazon.coral.service#UnknownOperationException"
        );
        assert_eq!(handle.request_counts().get("unknown"), Some(&1));
        server.stop().await;
    }

    /// The wire format the SDK's error parsing reads: the shape in `__type`, the query
    /// code in `x-amzn-query-error`.
    #[tokio::test]
    async fn errors_carry_the_shape_and_the_query_code() {
        let server = SqsServer::start_on_loopback().await.expect("server");
        let response = reqwest::Client::new()
            .post(server.endpoint())
            .header("x-amz-target", "AmazonSQS.SendMessage")
            .header("content-type", errors::JSON_1_0)
            .body(r#"{"QueueUrl":"http://127.0.0.1:1/000000000000/missing","MessageBody":"x"}"#)
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()["x-amzn-query-error"],
            "AWS.SimpleQueueService.NonExistentQueue;Sender"
        );
        assert_eq!(response.headers()["content-type"], errors::JSON_1_0);
        let body: serde_json::Value = response.json().await.expect("error JSON");
        assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
        assert_eq!(body["message"], "The specified queue does not exist.");
        server.stop().await;
    }

    #[tokio::test]
    async fn stopping_answers_long_polls_at_once() {
        let server = SqsServer::start_on_loopback().await.expect("server");
        let (sqs, url) = queue(&server, "polled").await;
        let poll = tokio::spawn(async move {
            sqs.receive_message()
                .queue_url(url)
                .wait_time_seconds(20)
                .send()
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        server.stop().await;
        let answered = poll.await.expect("the poll's task");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stop waited {:?} for a 20 s poll",
            started.elapsed()
        );
        assert!(answered.expect("an answer").messages().is_empty());
    }

    #[test]
    fn serves_from_a_thread_of_its_own() {
        let handle = SqsServer::start_on_own_thread().expect("server thread");
        // No runtime on this thread: the endpoint answers from its own.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let answered = runtime.block_on(async {
            crate::local::local_sqs_client(handle.endpoint())
                .list_queues()
                .send()
                .await
        });
        assert!(answered.is_ok(), "{answered:?}");
        assert_eq!(handle.request_counts().get("ListQueues"), Some(&1));
    }
}
