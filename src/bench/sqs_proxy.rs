//! A counting pass-through in front of an SQS endpoint: every request is forwarded as it
//! came and counted by its `X-Amz-Target` operation. It is how the bench counts, at the
//! endpoint, the requests a stack makes to moto (the embedded endpoint counts its own).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::oneshot;

pub struct CountingProxy {
    pub endpoint: String,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Option<oneshot::Sender<()>>,
}

struct Upstream {
    base: String,
    client: reqwest::Client,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

/// Headers that belong to one hop, not to the request or response forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
];

impl CountingProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the counting SQS proxy")?;
        let port = listener.local_addr()?.port();
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let state = Arc::new(Upstream {
            base: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .build()
                .context("building the proxy's HTTP client")?,
            counts: counts.clone(),
        });
        let app = Router::new().fallback(forward).with_state(state);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                eprintln!("   warning: the counting SQS proxy stopped: {error}");
            }
        });
        Ok(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            counts,
            stop: Some(stop),
        })
    }

    /// Requests forwarded so far, by operation.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn forward(
    State(upstream): State<Arc<Upstream>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("AmazonSQS."))
        .unwrap_or("other")
        .to_owned();
    if let Ok(mut counts) = upstream.counts.lock() {
        *counts.entry(operation).or_default() += 1;
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = upstream
        .client
        .request(method, format!("{}{path}", upstream.base))
        .body(body);
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(error) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!(
                    "the counting proxy could not reach {}: {error}",
                    upstream.base
                ),
            )
                .into_response()
        }
    };
    let status = answer.status();
    let mut forwarded = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            forwarded.append(name, value.clone());
        }
    }
    match answer.bytes().await {
        Ok(bytes) => (status, forwarded, bytes).into_response(),
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "the counting proxy lost {}'s answer: {error}",
                upstream.base
            ),
        )
            .into_response(),
    }
}
