//! Contract fakes of the real providers' APIs, one module each, and what they share.
//!
//! A fake is an axum server on 127.0.0.1 that speaks one provider's documented API: its
//! dial endpoint (path, auth, body checked field by field by the provider's
//! [`Contract::check_dial`]), its status lookups, and its answers, including its
//! concurrency-limit refusal. It keeps a [`Book`] of every request and every call it placed,
//! and it behaves like the provider about idempotency: Retell returns the call already
//! placed for an `idempotency_key`; Vapi, Twilio and ElevenLabs take no key, so a second
//! dial places a second call (which Ebra must never cause).
//!
//! [`Contract`] is what the scenarios in `tests/common/contract.rs` need of a provider:
//! Ebra's settings pointing at the fake, the fake itself, the provider's signed webhooks
//! (and forgeries of them), and its end-reason table with the outcome each must settle as.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, Uri};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::task::JoinHandle;
use uuid::Uuid;

use ebra_shared::domain::{CallStatus, DialOutcome};
use ebra_shared::provider::ProviderKind;

pub mod elevenlabs;
pub mod retell;
pub mod twilio;
pub mod vapi;

/// What the fake does with the next dial (the default is [`DialPlan::Accept`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialPlan {
    /// Places the call and answers as the provider documents.
    Accept,
    /// Places the call, then answers only after this long (past Ebra's dial timeout: the
    /// dial's fate is unknown to Ebra, though the call exists).
    PlaceThenStall(Duration),
    /// Waits this long without placing anything, then drops the request (the fate is
    /// unknown to Ebra, and no call exists).
    StallWithoutPlacing(Duration),
    /// The provider's answer for an account at its concurrency limit; nothing placed.
    ConcurrencyLimit,
    /// The provider's rate-limit answer (429); nothing placed.
    RateLimited,
    /// A 5xx; nothing placed.
    ServerError,
    /// The provider's refusal of an invalid number; nothing placed.
    Permanent,
}

impl DialPlan {
    pub fn places(&self) -> bool {
        matches!(self, DialPlan::Accept | DialPlan::PlaceThenStall(_))
    }
}

/// One HTTP request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A call the fake placed.
#[derive(Debug, Clone)]
pub struct Placement {
    pub provider_call_id: String,
    pub to: String,
    /// Ebra's attempt key as the dial carried it (idempotency key or echoed metadata).
    pub attempt_key: Option<Uuid>,
    /// The dial's body (JSON; Twilio's form as an object of its fields).
    pub dial: Value,
    pub placed_at: chrono::DateTime<chrono::Utc>,
    /// The provider's own end reason once the call ended (what lookups report).
    pub ended: Option<String>,
    /// When it ended (set by [`Fake::end`]).
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Everything the fake saw and did.
#[derive(Debug, Default)]
pub struct Book {
    pub dials: Vec<Seen>,
    pub lookups: Vec<Seen>,
    pub plans: VecDeque<DialPlan>,
    pub placements: Vec<Placement>,
    /// When set, every lookup answers 503 (the provider cannot be asked).
    pub lookups_fail: bool,
}

impl Book {
    /// The call already placed for `key`, when the provider deduplicates by key.
    pub fn placed_for_key(&self, key: Uuid) -> Option<&Placement> {
        self.placements.iter().find(|p| p.attempt_key == Some(key))
    }

    pub fn placement(&self, provider_call_id: &str) -> Option<&Placement> {
        self.placements
            .iter()
            .find(|p| p.provider_call_id == provider_call_id)
    }

    /// Places a call and returns its id (`prefix` + a number, as the provider names them).
    pub fn place(&mut self, prefix: &str, to: &str, key: Option<Uuid>, dial: Value) -> String {
        let provider_call_id = format!("{prefix}{}", Uuid::new_v4().simple());
        self.placements.push(Placement {
            provider_call_id: provider_call_id.clone(),
            to: to.to_owned(),
            attempt_key: key,
            dial,
            placed_at: chrono::Utc::now(),
            ended: None,
            ended_at: None,
        });
        provider_call_id
    }

    pub fn next_plan(&mut self) -> DialPlan {
        self.plans.pop_front().unwrap_or(DialPlan::Accept)
    }
}

/// A running fake.
pub struct Fake {
    pub base_url: String,
    pub book: Arc<Mutex<Book>>,
    server: JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Fake {
    /// Serves `router` (built over `book`) on a free loopback port.
    pub async fn serve(router: axum::Router, book: Arc<Mutex<Book>>) -> Self {
        let (base_url, server) = super::serve_on_loopback(router).await;
        Self {
            base_url,
            book,
            server,
        }
    }

    pub fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next dials' answers, in order.
    pub fn plan(&self, plans: impl IntoIterator<Item = DialPlan>) {
        self.book().plans.extend(plans);
    }

    pub fn placements(&self) -> Vec<Placement> {
        self.book().placements.clone()
    }

    /// Ends a placed call at the provider with its own end reason (what lookups report
    /// from now on).
    pub fn end(&self, provider_call_id: &str, reason: &str) {
        let mut book = self.book();
        let placement = book
            .placements
            .iter_mut()
            .find(|p| p.provider_call_id == provider_call_id)
            .expect("a call the fake placed");
        placement.ended = Some(reason.to_owned());
        placement.ended_at = Some(chrono::Utc::now());
    }
}

/// Records a request in the book (its body read whole).
pub async fn seen(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    Seen {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    }
}

/// How a call must look once a report with a given end reason is settled (with
/// `REDIAL_OUTCOMES` at its default, BUSY and NO_ANSWER, and attempts left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settles {
    pub status: CallStatus,
    pub outcome: DialOutcome,
}

impl Settles {
    pub const fn as_(status: CallStatus, outcome: DialOutcome) -> Self {
        Self { status, outcome }
    }
}

/// A webhook request as a provider sends it: path (with its query), headers, body.
pub struct Delivery {
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Delivery {
    /// As an HTTP request to the webhook router, called at `base` (the public base URL the
    /// provider uses; Twilio signs it).
    pub fn request(&self, base: &str) -> Request<Body> {
        let host = base
            .split("://")
            .nth(1)
            .unwrap_or(base)
            .trim_end_matches('/')
            .to_owned();
        let mut builder = Request::builder()
            .method("POST")
            .uri(&self.path_and_query)
            .header("host", host);
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder
            .body(Body::from(self.body.clone()))
            .expect("a webhook request")
    }
}

/// What the scenarios need of one provider.
pub trait Contract: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Starts the provider's fake.
    fn start(&self) -> BoxFuture<'static, Fake>;

    /// Ebra's settings for this provider, dialing `fake` (the `*_BASE_URL` override, its
    /// keys and webhook secret).
    fn settings(&self, fake: &Fake) -> Vec<(String, String)>;

    /// Whether the provider itself deduplicates dials by Ebra's key (Retell).
    fn deduplicates_by_key(&self) -> bool;

    /// Asserts one dial request field by field: method, path, auth, body. `call_id`,
    /// `to`, `script_id`, `metadata` and `key` are what Ebra must have sent.
    fn check_dial(&self, seen: &Seen, expected: &ExpectedDial<'_>);

    /// The provider's end-of-call webhook for `placement`, ending with its own `reason`,
    /// signed as the provider signs it, posted to `base`.
    fn end_of_call(&self, placement: &Placement, reason: &str, base: &str) -> Delivery;

    /// A webhook that is not an end of call (a call started, a transcript update).
    fn progress_event(&self, placement: &Placement, base: &str) -> Delivery;

    /// Forgeries of [`Self::end_of_call`], each named: every one must get a 401.
    fn forgeries(&self, placement: &Placement, base: &str) -> Vec<(&'static str, Delivery)>;

    /// Every end reason the provider documents, with how it must settle.
    fn end_reasons(&self) -> Vec<(&'static str, Settles)>;

    /// An end reason that means the account's concurrency limit stopped the call, when the
    /// provider reports one that way.
    fn limited_end_reason(&self) -> Option<&'static str>;

    /// What the call's `result` must hold (beside the end reason) once a connected call's
    /// end is reported (webhook or lookup): the fields the provider's report carries. The
    /// analysis is compared as a subset. Twilio's status callbacks carry none.
    fn expected_result(&self, _placement: &Placement) -> Value {
        serde_json::json!({})
    }

    /// The dial body the provider would have received for a call placed to `to` with
    /// Ebra's attempt `key` (for placements a scenario makes directly in the fake's book).
    /// The default is the shape of Retell's (`metadata` carries Ebra's keys).
    fn placed_dial(&self, to: &str, key: Uuid, call_id: Uuid) -> Value {
        serde_json::json!({
            "to_number": to,
            "metadata": {
                "ebra_attempt_key": key.to_string(),
                "ebra_call_id": call_id.to_string(),
            },
        })
    }
}

/// What a dial must carry.
pub struct ExpectedDial<'a> {
    pub call_id: Uuid,
    pub to: &'a str,
    pub script_id: &'a str,
    pub metadata: &'a Value,
    pub key: Uuid,
}
