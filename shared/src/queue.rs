//! The SQS calls queue: one message per "try this call now" (a [`DialRequest`]).
//!
//! SQS limits shape the helpers here: `DelaySeconds` ≤ 900 s and a message's visibility
//! ≤ 12 h, so longer waits are covered in chunks (the call's `next_run_at` in Postgres is
//! the truth; an early message just waits again).

use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use futures::FutureExt as _;
use uuid::Uuid;

use crate::domain::DialRequest;

pub const MAX_DELAY: Duration = Duration::from_secs(900);
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
/// The longest a received message is hidden for: SQS counts its 12 hours from the receive
/// and refuses (rather than shortens) a longer request, so the time the invocation has
/// already taken (at most the worker's timeout) is left out, with room to spare.
pub const MAX_DEFERRAL: Duration = Duration::from_secs(MAX_VISIBILITY.as_secs() - 300);

/// A message to send after a commit: which call, and how long SQS should hold it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueue {
    pub call_id: Uuid,
    pub delay: Duration,
}

impl Enqueue {
    pub fn now(call_id: Uuid) -> Self {
        Self {
            call_id,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CallsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl CallsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// A client from the standard AWS configuration chain (`AWS_ENDPOINT_URL_SQS` points it
    /// at a local SQS). Loading it makes no network call.
    pub async fn from_env(url: impl Into<String>) -> Self {
        let sdk_config = aws_config::load_from_env().await;
        Self::new(aws_sdk_sqs::Client::new(&sdk_config), url)
    }

    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one message, held back by `delay` (capped at SQS's 15 minutes).
    pub async fn send(&self, message: Enqueue) -> anyhow::Result<()> {
        let body = serde_json::to_string(&DialRequest {
            call_id: message.call_id,
        })?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay_seconds(message.delay))
            .send()
            .await
            .with_context(|| format!("sending the dial message for call {}", message.call_id))?;
        Ok(())
    }

    /// Sends many messages, ten per `SendMessageBatch` request; returns the calls whose
    /// message was not sent.
    pub async fn send_all(&self, messages: &[Enqueue]) -> Vec<Uuid> {
        let failed = in_batches_of_ten(messages, "SendMessageBatch", |chunk| async move {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let body = serde_json::to_string(&DialRequest { call_id: m.call_id })
                        .map_err(|e| e.to_string())?;
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .delay_seconds(delay_seconds(m.delay))
                        .build()
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| DisplayErrorContext(&e).to_string())?;
            Ok(refused(output.failed()))
        })
        .boxed()
        .await;
        failed.into_iter().map(|m| m.call_id).collect()
    }

    /// Sends messages and logs (never fails) when some could not be sent: used where the
    /// outbox mark or the reclaimer covers a lost message.
    pub async fn send_best_effort(&self, messages: &[Enqueue]) {
        if messages.is_empty() {
            return;
        }
        let failed = self.send_all(messages).await;
        if !failed.is_empty() {
            tracing::warn!(
                count = failed.len(),
                "dial messages not sent; the reclaimer will cover them"
            );
        }
    }

    /// Hides many received messages, each for its own time (capped at [`MAX_DEFERRAL`]), ten per
    /// `ChangeMessageVisibilityBatch` request. Returns how many could not be changed (they
    /// come back after the queue's visibility timeout); failures are logged.
    pub async fn change_visibility_all(&self, messages: &[(&str, Duration)]) -> usize {
        in_batches_of_ten(
            messages,
            "ChangeMessageVisibilityBatch",
            |chunk| async move {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (receipt_handle, delay))| {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(*receipt_handle)
                            .visibility_timeout((*delay).min(MAX_DEFERRAL).as_secs() as i32)
                            .build()
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let output = self
                    .client
                    .change_message_visibility_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| DisplayErrorContext(&e).to_string())?;
                Ok(refused(output.failed()))
            },
        )
        .boxed()
        .await
        .len()
    }

    /// Receives up to ten messages with their receive counts (long poll of `wait`).
    pub async fn receive(
        &self,
        wait: Duration,
    ) -> anyhow::Result<Vec<aws_sdk_sqs::types::Message>> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .context("receiving from the calls queue")?;
        Ok(output.messages.unwrap_or_default())
    }

    /// Deletes many received messages, ten per `DeleteMessageBatch` request (as Lambda's
    /// event source mapping does). Returns how many could not be deleted; failures are
    /// logged.
    pub async fn delete_all(&self, receipt_handles: &[&str]) -> usize {
        in_batches_of_ten(receipt_handles, "DeleteMessageBatch", |chunk| async move {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt_handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*receipt_handle)
                        .build()
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| DisplayErrorContext(&e).to_string())?;
            Ok(refused(output.failed()))
        })
        .boxed()
        .await
        .len()
    }
}

/// An entry of a batch request that SQS refused: its id (the index in its chunk) and why.
struct Refused {
    id: String,
    code: String,
    message: Option<String>,
}

fn refused(entries: &[BatchResultErrorEntry]) -> Vec<Refused> {
    entries
        .iter()
        .map(|entry| Refused {
            id: entry.id().to_owned(),
            code: entry.code().to_owned(),
            message: entry.message().map(str::to_owned),
        })
        .collect()
}

/// Runs `request` on ten items at a time (SQS's batch limit) and returns the items that
/// were not done: those SQS refused, and every item of a request that failed. Logs each.
/// Callers box the returned future: inline, the SDK's request futures nest too deep for
/// the handlers' own futures to be laid out.
async fn in_batches_of_ten<'a, T, F, Fut>(
    items: &'a [T],
    action: &'static str,
    mut request: F,
) -> Vec<&'a T>
where
    F: FnMut(&'a [T]) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Refused>, String>>,
{
    let mut failed = Vec::new();
    for chunk in items.chunks(10) {
        match request(chunk).await {
            Ok(refused) => {
                for entry in refused {
                    tracing::warn!(
                        action,
                        entry = entry.id,
                        code = entry.code,
                        message = entry.message,
                        "SQS refused a batch entry"
                    );
                    if let Some(item) = entry.id.parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                        failed.push(item);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(action, error, "an SQS batch request failed");
                failed.extend(chunk);
            }
        }
    }
    failed
}

fn delay_seconds(delay: Duration) -> i32 {
    delay.min(MAX_DELAY).as_secs() as i32
}
