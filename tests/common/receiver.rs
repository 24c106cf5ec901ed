//! A webhook receiver on loopback for the events tests: records every request, answers as
//! told (a status, a pause past the delivery timeout, a redirect), and verifies each
//! delivery's Standard Webhooks signature with Ebra's verifier (itself checked against the
//! official library's vectors in `tests/standard_webhooks.rs`).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use ebra_shared::webhook_signature::WebhookSecret;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("an event body is JSON")
    }

    /// Verifies the Standard Webhooks signature with `secret` (Ebra's verifier, checked
    /// against the official library's vectors) and returns the body.
    #[track_caller]
    pub fn verified(&self, secret: &str) -> Value {
        let secret = WebhookSecret::parse(secret).expect("a whsec secret");
        let verdict = secret.verify(
            Some(self.header("webhook-id")),
            Some(self.header("webhook-timestamp")),
            Some(self.header("webhook-signature")),
            &self.body,
            chrono::Utc::now().timestamp(),
        );
        assert_eq!(
            verdict,
            Ok(()),
            "signature of {}",
            self.header("webhook-id")
        );
        let body = self.json();
        assert_eq!(
            body["id"].as_str(),
            Some(self.header("webhook-id")),
            "webhook-id is the event's id"
        );
        assert_eq!(self.header("content-type"), "application/json");
        body
    }
}

#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// Answers 200 after this long (past the delivery timeout: a timeout).
    Sleep(Duration),
    /// 302 to this location.
    Redirect(String),
}

#[derive(Default)]
struct Script {
    /// Answers for the next requests, in order; then `default`.
    next: std::collections::VecDeque<Answer>,
    default: Option<Answer>,
}

pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script: Arc<Mutex<Script>> = Arc::default();
        let (rec, scr) = (received.clone(), script.clone());
        let router = Router::new().fallback(move |request: Request<Body>| {
            let (rec, scr) = (rec.clone(), scr.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                rec.lock().unwrap().push(Received {
                    headers: parts.headers,
                    body,
                });
                let answer = {
                    let mut script = scr.lock().unwrap();
                    script.next.pop_front().or_else(|| script.default.clone())
                };
                match answer {
                    None => StatusCode::NO_CONTENT.into_response(),
                    Some(Answer::Status(code)) => {
                        StatusCode::from_u16(code).unwrap().into_response()
                    }
                    Some(Answer::Sleep(pause)) => {
                        tokio::time::sleep(pause).await;
                        StatusCode::OK.into_response()
                    }
                    Some(Answer::Redirect(to)) => Response::builder()
                        .status(StatusCode::FOUND)
                        .header(header::LOCATION, to)
                        .body(Body::empty())
                        .unwrap(),
                }
            }
        });
        let (base, server) = super::serve_on_loopback(router).await;
        Self {
            url: format!("{base}/hooks/ebra"),
            received,
            script,
            server,
        }
    }

    pub fn answer(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().next.extend(answers);
    }

    pub fn always(&self, answer: Option<Answer>) {
        self.script.lock().unwrap().default = answer;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
