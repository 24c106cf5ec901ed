//! Waking the notifier after a commit that wrote events.
//!
//! The event rows are the truth (the outbox); a nudge only says "look now". In AWS it is a
//! message on the notifier's SQS queue (`EVENTS_QUEUE_URL`); in `ebra dev`, a
//! [`tokio::sync::Notify`] its loop waits on. A lost nudge delays events until the
//! reclaimer's next pass, which nudges whenever events wait: it never loses them.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;

/// The body of a nudge message. The notifier reads none of it: any message means "look".
pub const NUDGE_BODY: &str = r#"{"nudge":"events"}"#;

#[derive(Clone, Default)]
pub enum EventsNudge {
    /// Nothing to wake (no notifier configured): events wait for the reclaimer's nudge.
    #[default]
    Off,
    /// A message on the notifier's queue.
    Sqs {
        client: aws_sdk_sqs::Client,
        queue_url: String,
    },
    /// The local notifier loop of `ebra dev`.
    Local(Arc<tokio::sync::Notify>),
}

impl std::fmt::Debug for EventsNudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventsNudge::Off => f.write_str("EventsNudge::Off"),
            EventsNudge::Sqs { queue_url, .. } => write!(f, "EventsNudge::Sqs({queue_url})"),
            EventsNudge::Local(_) => f.write_str("EventsNudge::Local"),
        }
    }
}

impl EventsNudge {
    /// The notifier's queue when `queue_url` is set (`EVENTS_QUEUE_URL`), sent with `client`.
    pub fn from_queue(client: &aws_sdk_sqs::Client, queue_url: Option<&str>) -> Self {
        match queue_url {
            Some(url) => EventsNudge::Sqs {
                client: client.clone(),
                queue_url: url.to_owned(),
            },
            None => EventsNudge::Off,
        }
    }

    /// After a commit that wrote events: wakes the notifier if any of them has a receiver
    /// (events nobody receives are written fanned out and wait for nothing), so that
    /// without endpoints or callback URLs a change sends no SQS message. When the look
    /// fails, it wakes the notifier anyway. The local loop is woken without looking: its
    /// wake-ups coalesce, so under load one pass answers many changes, where a look would
    /// cost a query per change.
    pub async fn after_change(&self, pool: &crate::store::Pool) {
        match self {
            EventsNudge::Off => return,
            EventsNudge::Local(notify) => return notify.notify_one(),
            EventsNudge::Sqs { .. } => {}
        }
        match crate::store::deliveries::events_to_fan_out(pool).await {
            Ok(false) => {}
            Ok(true) => self.send().await,
            Err(error) => {
                tracing::debug!(error = %error, "could not look for events to fan out; nudging anyway");
                self.send().await;
            }
        }
    }

    /// Wakes the notifier now. Never fails: a lost nudge is covered by the reclaimer.
    pub async fn send(&self) {
        self.send_after(Duration::ZERO).await;
    }

    /// Wakes the notifier after `delay` (at most 15 minutes, SQS's limit; the local loop
    /// wakes at once and finds nothing due yet, which costs one query).
    pub async fn send_after(&self, delay: Duration) {
        match self {
            EventsNudge::Off => {}
            EventsNudge::Local(notify) => notify.notify_one(),
            EventsNudge::Sqs { client, queue_url } => {
                let delay_seconds = delay.min(crate::queue::MAX_DELAY).as_secs() as i32;
                let sent = client
                    .send_message()
                    .queue_url(queue_url)
                    .message_body(NUDGE_BODY)
                    .delay_seconds(delay_seconds)
                    .send()
                    .await;
                if let Err(error) = sent {
                    tracing::warn!(
                        error = %DisplayErrorContext(&error),
                        "the notifier was not nudged; the reclaimer's next pass will"
                    );
                }
            }
        }
    }
}
