//! The AI-call provider behind one small trait: [`HttpProvider`] for the real one,
//! [`Simulator`] for local runs and demos.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use uuid::Uuid;

mod http;
mod simulator;

pub use http::HttpProvider;
pub use simulator::{Simulator, SimulatorSettings};

/// One dial: what the provider receives. `idempotency_key` goes in the `Idempotency-Key`
/// header, so a retried dial of the same attempt never places a second call.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dial {
    pub to: String,
    pub script_id: String,
    pub webhook_url: String,
    pub metadata: serde_json::Value,
    #[serde(skip)]
    pub idempotency_key: Uuid,
}

/// What became of a dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialResult {
    /// The provider placed the call and named it.
    Accepted { provider_call_id: String },
    /// Worth retrying. `maybe_placed`: the provider may have placed the call (a timeout, a
    /// reset after sending, a 2xx without an id), so the call keeps its slot and its phone
    /// and the retry reuses the same idempotency key.
    Retryable {
        error: String,
        retry_after: Option<Duration>,
        maybe_placed: bool,
    },
    /// The provider refused the call for good (4xx other than 429).
    Permanent { error: String },
}

pub trait Provider: Send + Sync {
    fn dial<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult>;
}

/// The body a provider posts to the webhook.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeReport {
    pub call_id: String,
    pub status: crate::domain::CallOutcome,
    pub duration_sec: u32,
    pub completed_at: chrono::DateTime<chrono::Utc>,
}
