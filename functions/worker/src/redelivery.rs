//! Deferring a message until its call can next succeed, without letting the wait count
//! toward the DLQ (invariant 6). See the crate documentation for the scheme.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsMessage;
use ebra_shared::queue::{Enqueue, MAX_DEFERRAL, MAX_DELAY};
use uuid::Uuid;

use crate::{DeferReason, MessageOutcome, WorkerState};

/// The SQS system attribute that counts receives toward the redrive policy.
const RECEIVE_COUNT_ATTRIBUTE: &str = "ApproximateReceiveCount";

/// How many times a message has been received, as SQS told the event source mapping.
pub fn receive_count(message: &SqsMessage) -> Option<u32> {
    message
        .attributes
        .get(RECEIVE_COUNT_ATTRIBUTE)
        .and_then(|raw| raw.trim().parse().ok())
}

/// From this receive count on, a waiting message is replaced by a fresh one instead of
/// being hidden again. Half of `maxReceiveCount`: the other half is the margin for receives
/// this handler never sees (the event source mapping over-pulls while Lambda throttles,
/// and those receives count too).
pub fn recycle_threshold(max_receive_count: u32) -> u32 {
    (max_receive_count / 2).max(1)
}

/// Decides how `message` comes back after `delay`: recycled into a fresh message
/// (acknowledged) once its receive count is high, else [`MessageOutcome::Deferred`] with
/// the visibility to set; [`hide_deferred`] then sets it (for a whole batch in one request).
pub(crate) async fn defer(
    state: &WorkerState,
    message: &SqsMessage,
    call_id: Uuid,
    delay: Duration,
    reason: DeferReason,
) -> MessageOutcome {
    let threshold = recycle_threshold(state.config.max_receive_count);
    // A missing count is taken as high: recycling costs one send, while a waiting call's
    // message in the DLQ would cost the call.
    if receive_count(message).is_none_or(|count| count >= threshold) {
        let fresh = Enqueue {
            call_id,
            delay: delay.min(MAX_DELAY),
        };
        match state.queue.send(fresh).await {
            Ok(()) => {
                tracing::debug!(
                    ?reason,
                    delay_secs = fresh.delay.as_secs(),
                    "wait continues in a fresh message"
                );
                return MessageOutcome::Recycled {
                    delay: fresh.delay,
                    reason,
                };
            }
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "recycling the message failed; deferring it in place"
            ),
        }
    }
    // Whole seconds, rounded up: a message back a moment before its call is due would only
    // be received (and counted) once more for nothing.
    MessageOutcome::Deferred {
        delay: whole_seconds_up(delay).min(MAX_DEFERRAL),
        reason,
    }
}

fn whole_seconds_up(delay: Duration) -> Duration {
    Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0))
}

/// A message whose outcome was decided at `decided`: when it is deferred, how long it
/// should stay hidden counting from that moment.
pub(crate) struct Decided<'a> {
    pub message: &'a SqsMessage,
    pub outcome: &'a MessageOutcome,
    pub decided: Instant,
}

/// Sets when every deferred message comes back, ten per `ChangeMessageVisibilityBatch`
/// request. The time already spent since each decision (other messages of the batch may
/// have been dialing) is taken off its wait. A failure is logged only: the message is
/// reported as failed either way and then returns after the queue's visibility timeout.
pub(crate) async fn hide_deferred(state: &WorkerState, decided: &[Decided<'_>]) {
    let now = Instant::now();
    let mut hides = Vec::new();
    for entry in decided {
        let MessageOutcome::Deferred { delay, .. } = entry.outcome else {
            continue;
        };
        let Some(receipt_handle) = entry.message.receipt_handle.as_deref() else {
            tracing::warn!(
                message_id = entry.message.message_id.as_deref().unwrap_or("-"),
                "the message has no receipt handle; it returns after the queue's visibility timeout"
            );
            continue;
        };
        let spent = now.saturating_duration_since(entry.decided);
        hides.push((
            receipt_handle,
            whole_seconds_up(delay.saturating_sub(spent)),
        ));
    }
    if hides.is_empty() {
        return;
    }
    let failed = state.queue.change_visibility_all(&hides).await;
    if failed > 0 {
        tracing::warn!(
            failed,
            "some deferred messages keep the queue's visibility timeout instead of their wait"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_at_half_the_receive_budget() {
        assert_eq!(recycle_threshold(10), 5);
        assert_eq!(recycle_threshold(3), 1);
        assert_eq!(recycle_threshold(2), 1);
    }

    #[test]
    fn visibility_rounds_up_to_whole_seconds() {
        assert_eq!(
            whole_seconds_up(Duration::from_millis(1200)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds_up(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(whole_seconds_up(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn reads_the_receive_count() {
        let mut message = SqsMessage::default();
        assert_eq!(receive_count(&message), None);
        message
            .attributes
            .insert(RECEIVE_COUNT_ATTRIBUTE.to_owned(), "7".to_owned());
        assert_eq!(receive_count(&message), Some(7));
        message
            .attributes
            .insert(RECEIVE_COUNT_ATTRIBUTE.to_owned(), "many".to_owned());
        assert_eq!(receive_count(&message), None);
    }
}
