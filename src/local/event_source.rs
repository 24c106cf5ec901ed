//! A local emulation of Lambda's SQS event source mapping: receive batches of up to ten,
//! invoke the worker's handler with the same `SqsEvent` Lambda would build, delete what
//! succeeded (one `DeleteMessageBatch`) and leave the reported failures to their visibility
//! timeout — with at most `max_concurrency` invocations at once, like
//! `ScalingConfig.MaximumConcurrency`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use ebra_shared::queue::CallsQueue;
use tokio::sync::{watch, Semaphore};

pub struct EventSourceMapping {
    pub queue: CallsQueue,
    pub worker: Arc<ebra_worker::WorkerState>,
    pub max_concurrency: usize,
}

/// Lambda's SQS event source starts with five concurrent pollers.
const POLLERS: usize = 5;

impl EventSourceMapping {
    /// Polls until `shutdown` turns true, then waits for invocations in flight.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let max = self.max_concurrency.max(1);
        let permits = Arc::new(Semaphore::new(max));
        let mapping = Arc::new(self);
        let pollers: Vec<_> = (0..POLLERS.min(max))
            .map(|_| tokio::spawn(mapping.clone().poll(permits.clone(), shutdown.clone())))
            .collect();
        futures::future::join_all(pollers).await;
        // Wait for every invocation in flight to finish.
        let _ = permits.acquire_many(max as u32).await;
    }

    async fn poll(self: Arc<Self>, permits: Arc<Semaphore>, mut shutdown: watch::Receiver<bool>) {
        let arn = queue_arn(self.queue.url());
        loop {
            if *shutdown.borrow() {
                break;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let received = tokio::select! {
                received = self.queue.receive(Duration::from_secs(2)) => received,
                _ = shutdown.changed() => break,
            };
            let messages = match received {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "event source: receive failed; retrying"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            let event = sqs_event(&messages, &arn);
            let queue = self.queue.clone();
            let worker = self.worker.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let response = ebra_worker::handle_batch(&worker, event).await;
                let not_deleted = delete_succeeded(&queue, &messages, &response).await;
                if not_deleted > 0 {
                    tracing::warn!(
                        not_deleted,
                        "event source: some processed messages were not deleted; they come back"
                    );
                }
            });
        }
    }
}

/// What Lambda's poller does after an invocation: deletes, ten per `DeleteMessageBatch`,
/// the received messages the handler did not report as batch item failures. Returns how
/// many could not be deleted (they come back after their visibility timeout).
pub async fn delete_succeeded(
    queue: &CallsQueue,
    messages: &[aws_sdk_sqs::types::Message],
    response: &SqsBatchResponse,
) -> usize {
    let failed: HashSet<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    let succeeded: Vec<&str> = messages
        .iter()
        .filter(|m| !m.message_id().is_some_and(|id| failed.contains(id)))
        .filter_map(|m| m.receipt_handle())
        .collect();
    queue.delete_all(&succeeded).await
}

/// The event Lambda would deliver for these received messages.
pub fn sqs_event(messages: &[aws_sdk_sqs::types::Message], event_source_arn: &str) -> SqsEvent {
    let records = messages
        .iter()
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id.clone();
            record.receipt_handle = m.receipt_handle.clone();
            record.body = m.body.clone();
            record.md5_of_body = m.md5_of_body.clone();
            record.event_source = Some("aws:sqs".to_owned());
            record.event_source_arn = Some(event_source_arn.to_owned());
            record.aws_region = Some("us-east-1".to_owned());
            if let Some(attributes) = &m.attributes {
                record.attributes = attributes
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                    .collect();
            }
            record
        })
        .collect();
    let mut event = SqsEvent::default();
    event.records = records;
    event
}

fn queue_arn(url: &str) -> String {
    let name = url.rsplit('/').next().unwrap_or("calls");
    format!("arn:aws:sqs:us-east-1:000000000000:{name}")
}
