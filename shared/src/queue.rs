//! The SQS calls queue: one message per "try this call now" (a [`DialRequest`]).
//!
//! SQS limits shape the helpers here: `DelaySeconds` ≤ 900 s and a message's visibility
//! ≤ 12 h, so longer waits are covered in chunks (the call's `next_run_at` in Postgres is
//! the truth; an early message just waits again).

use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use uuid::Uuid;

use crate::domain::DialRequest;

pub const MAX_DELAY: Duration = Duration::from_secs(900);
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

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

    /// Sends many messages, ten per request; returns the calls whose message failed.
    pub async fn send_all(&self, messages: &[Enqueue]) -> Vec<Uuid> {
        let mut failed = Vec::new();
        for chunk in messages.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    let body = serde_json::to_string(&DialRequest { call_id: m.call_id }).ok()?;
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .delay_seconds(delay_seconds(m.delay))
                        .build()
                        .ok()
                })
                .collect();
            match self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(output) => {
                    for entry in output.failed() {
                        if let Some(m) = entry.id().parse::<usize>().ok().and_then(|i| chunk.get(i))
                        {
                            tracing::warn!(call_id = %m.call_id, code = entry.code(), "SQS refused a dial message");
                            failed.push(m.call_id);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "sending dial messages failed");
                    failed.extend(chunk.iter().map(|m| m.call_id));
                }
            }
        }
        failed
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

    /// Hides a received message for `delay` (capped at SQS's 12 hours).
    pub async fn change_visibility(
        &self,
        receipt_handle: &str,
        delay: Duration,
    ) -> anyhow::Result<()> {
        let seconds = delay.min(MAX_VISIBILITY).as_secs() as i32;
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .context("changing a message's visibility")?;
        Ok(())
    }

    /// Hides many received messages, each for its own time (capped at 12 hours), ten per
    /// `ChangeMessageVisibilityBatch` request. Returns how many could not be changed (they
    /// come back after the queue's visibility timeout); failures are logged.
    pub async fn change_visibility_all(&self, messages: &[(&str, Duration)]) -> usize {
        let mut failed = 0;
        for chunk in messages.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (receipt_handle, delay))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*receipt_handle)
                        .visibility_timeout((*delay).min(MAX_VISIBILITY).as_secs() as i32)
                        .build()
                        .ok()
                })
                .collect();
            match self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(output) => {
                    for entry in output.failed() {
                        tracing::warn!(
                            entry = entry.id(),
                            code = entry.code(),
                            message = entry.message(),
                            "SQS refused to change a message's visibility"
                        );
                        failed += 1;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "changing messages' visibility failed");
                    failed += chunk.len();
                }
            }
        }
        failed
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
        let mut failed = 0;
        for chunk in receipt_handles.chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, receipt_handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*receipt_handle)
                        .build()
                        .ok()
                })
                .collect();
            match self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(output) => {
                    for entry in output.failed() {
                        tracing::warn!(
                            entry = entry.id(),
                            code = entry.code(),
                            message = entry.message(),
                            "SQS refused to delete a message"
                        );
                        failed += 1;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "deleting messages failed");
                    failed += chunk.len();
                }
            }
        }
        failed
    }

    pub async fn delete(&self, receipt_handle: &str) -> anyhow::Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .context("deleting a message")?;
        Ok(())
    }
}

fn delay_seconds(delay: Duration) -> i32 {
    delay.min(MAX_DELAY).as_secs() as i32
}
