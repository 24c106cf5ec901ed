//! Deferring a message until its call can next succeed, without letting the wait count
//! toward the DLQ (invariant 6). See the crate documentation for the scheme.

use std::time::Duration;

use aws_lambda_events::event::sqs::SqsMessage;
use ebra_shared::queue::{Enqueue, MAX_DELAY, MAX_VISIBILITY};
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

/// Makes `message` come back after `delay`: hidden in place (reported as a failure) while
/// its receive count is low, recycled into a fresh message (acknowledged) once it is not.
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
    let visibility = whole_seconds_up(delay).min(MAX_VISIBILITY);
    hide(state, message, visibility).await;
    MessageOutcome::Deferred {
        delay: visibility,
        reason,
    }
}

fn whole_seconds_up(delay: Duration) -> Duration {
    Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0))
}

/// Sets when the message comes back. A failure is logged only: the message is reported as
/// failed either way and then returns after the queue's visibility timeout.
async fn hide(state: &WorkerState, message: &SqsMessage, visibility: Duration) {
    let Some(receipt_handle) = message.receipt_handle.as_deref() else {
        tracing::warn!(
            "the message has no receipt handle; it returns after the queue's visibility timeout"
        );
        return;
    };
    if let Err(error) = state
        .queue
        .change_visibility(receipt_handle, visibility)
        .await
    {
        tracing::warn!(
            error = format!("{error:#}"),
            "changing the message's visibility failed; it returns after the queue's visibility timeout"
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
