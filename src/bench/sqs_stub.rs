//! An SQS endpoint that answers at once: the JSON protocol (`X-Amz-Target: AmazonSQS.*`)
//! for the calls Ebra makes after a commit — `SendMessage`, `SendMessageBatch`,
//! `ChangeMessageVisibility`, `DeleteMessage` — answered as SQS would (message ids, the
//! body's MD5), and counted. It keeps the emulator's cost out of figures about Ebra's own
//! work, and its counters prove which SQS calls a timed loop made.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use md5::{Digest as _, Md5};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

const JSON_1_0: &str = "application/x-amz-json-1.0";

pub struct SqsStub {
    pub endpoint: String,
    pub queue_url: String,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl SqsStub {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the SQS stub")?;
        let port = listener.local_addr()?.port();
        let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let app = Router::new().fallback(answer).with_state(counts.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                eprintln!("   warning: the SQS stub stopped: {error}");
            }
        });
        let endpoint = format!("http://127.0.0.1:{port}");
        Ok(Self {
            queue_url: format!("{endpoint}/000000000000/ebra-bench-stub"),
            endpoint,
            counts,
            stop: Some(stop),
        })
    }

    /// An SQS client pointed at the stub.
    pub fn client(&self) -> aws_sdk_sqs::Client {
        crate::local::local_sqs_client(&self.endpoint)
    }

    pub fn calls_queue(&self) -> ebra_shared::queue::CallsQueue {
        ebra_shared::queue::CallsQueue::new(self.client(), self.queue_url.clone())
    }

    /// Requests answered so far, by action.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }

    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn answer(
    State(counts): State<Arc<Mutex<BTreeMap<String, u64>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("AmazonSQS."))
        .unwrap_or("")
        .to_owned();
    if let Ok(mut counts) = counts.lock() {
        *counts.entry(action.clone()).or_default() += 1;
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = match action.as_str() {
        "SendMessage" => {
            let message_body = request["MessageBody"].as_str().unwrap_or("");
            json!({"MessageId": Uuid::new_v4().to_string(), "MD5OfMessageBody": md5_hex(message_body)})
        }
        "SendMessageBatch" => {
            let successful: Vec<Value> = request["Entries"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|entry| {
                    json!({
                        "Id": entry["Id"],
                        "MessageId": Uuid::new_v4().to_string(),
                        "MD5OfMessageBody": md5_hex(entry["MessageBody"].as_str().unwrap_or("")),
                    })
                })
                .collect();
            json!({"Successful": successful, "Failed": []})
        }
        "ChangeMessageVisibility" | "DeleteMessage" => json!({}),
        _ => {
            let error = json!({
                "__type": "com.amazonaws.sqs#UnsupportedOperation",
                "message": format!("the bench's SQS stub does not answer {action:?}"),
            });
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, JSON_1_0)],
                error.to_string(),
            )
                .into_response();
        }
    };
    ([(header::CONTENT_TYPE, JSON_1_0)], reply.to_string()).into_response()
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc1321() {
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
