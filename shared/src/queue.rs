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
use std::sync::Arc;

use futures::FutureExt as _;
use tokio::sync::oneshot;
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
    /// Shared by the clones: the process's best-effort sends, coalesced.
    coalescer: Arc<SendCoalescer>,
}

impl CallsQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
            coalescer: Arc::default(),
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
    ///
    /// Concurrent callers of one process share requests ([`SendCoalescer`]): while one
    /// caller's request is in flight, the messages of those arriving meanwhile wait, and the
    /// first of them sends them all in the next (ten per `SendMessageBatch`). A caller alone,
    /// as every Lambda invocation is, sends at once.
    pub async fn send_best_effort(&self, messages: &[Enqueue]) {
        if messages.is_empty() {
            return;
        }
        SendCoalescer::send(&self.coalescer, messages, |batch| async move {
            self.send_logged(&batch).await
        })
        .await;
    }

    async fn send_logged(&self, messages: &[Enqueue]) {
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

/// Best-effort sends of one process, coalesced as a database coalesces commits (see
/// [`CallsQueue::send_best_effort`]). Under load in `ebra dev`, where every settle's nudge is
/// a send, it saves requests without waiting for more messages: a request goes as soon
/// as the one before it returns.
#[derive(Debug, Default)]
struct SendCoalescer {
    state: std::sync::Mutex<Coalescing>,
}

#[derive(Debug, Default)]
struct Coalescing {
    /// A caller is sending (and will hand over the waiting messages when its request returns).
    sending: bool,
    /// The messages waiting for the next request.
    waiting: Vec<Waiter>,
}

/// A caller's messages, and how it is told what became of them (none for the leader's own).
#[derive(Debug)]
struct Waiter {
    messages: Vec<Enqueue>,
    told: Option<oneshot::Sender<Turn>>,
}

#[derive(Debug)]
enum Turn {
    /// The messages were sent (failures are logged by the sender).
    Sent,
    /// The caller sends the next request: these messages, its own among them.
    Lead(Vec<Waiter>, Leading),
}

enum Joined {
    Lead(Vec<Waiter>, Leading),
    Wait(oneshot::Receiver<Turn>),
}

impl SendCoalescer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Coalescing> {
        // Two plain fields, consistent after any panic: a poisoned lock is used as it is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `messages` with `request`, together with those of the callers waiting for the
    /// next request when it is this caller's turn; returns once they were sent.
    async fn send<F, Fut>(this: &Arc<Self>, messages: &[Enqueue], request: F)
    where
        F: Fn(Vec<Enqueue>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (mut batch, mut leading) = match Self::join(this, messages) {
            Joined::Lead(batch, leading) => (batch, leading),
            Joined::Wait(turn) => match turn.await {
                Ok(Turn::Sent) => return,
                Ok(Turn::Lead(batch, leading)) => (batch, leading),
                // The caller sending them was canceled before it answered: no request is
                // coming for these, so they go alone.
                Err(_) => {
                    request(messages.to_vec()).await;
                    return;
                }
            },
        };
        loop {
            let messages: Vec<Enqueue> = batch
                .iter()
                .flat_map(|waiter| waiter.messages.iter().copied())
                .collect();
            request(messages).await;
            for waiter in batch {
                if let Some(told) = waiter.told {
                    // A caller that stopped waiting needs no answer.
                    let _ = told.send(Turn::Sent);
                }
            }
            match leading.hand_over() {
                // Handed over to the first waiting caller, or none was waiting: done.
                None => break,
                // Every waiting caller stopped waiting: their messages are sent here.
                Some(orphans) => batch = orphans,
            }
        }
    }

    fn join(this: &Arc<Self>, messages: &[Enqueue]) -> Joined {
        let mut state = this.lock();
        let waiter = |told| Waiter {
            messages: messages.to_vec(),
            told,
        };
        if state.sending {
            let (told, turn) = oneshot::channel();
            state.waiting.push(waiter(Some(told)));
            Joined::Wait(turn)
        } else {
            state.sending = true;
            Joined::Lead(vec![waiter(None)], Leading::new(this))
        }
    }
}

/// The right to send for the others, held by one caller at a time. Dropped without being
/// handed over (its caller canceled, or the hand-over lost with a caller that stopped
/// waiting), it stops the sending and lets the waiting callers go: each then sends its own
/// messages.
#[derive(Debug)]
struct Leading {
    coalescer: Arc<SendCoalescer>,
    handed_over: bool,
}

impl Leading {
    fn new(coalescer: &Arc<SendCoalescer>) -> Self {
        Self {
            coalescer: coalescer.clone(),
            handed_over: false,
        }
    }

    /// Gives the waiting messages, with the lead, to the first waiting caller still there;
    /// `None` when it took them or none were waiting (sending stops), else the messages of
    /// callers that all stopped waiting, for this caller to send.
    fn hand_over(&mut self) -> Option<Vec<Waiter>> {
        let mut state = self.coalescer.lock();
        let waiting = std::mem::take(&mut state.waiting);
        if waiting.is_empty() {
            state.sending = false;
            self.handed_over = true;
            return None;
        }
        drop(state);
        // The messages of callers that stopped waiting, passed on with the lead.
        let mut orphans: Vec<Waiter> = Vec::new();
        let mut waiting = waiting.into_iter();
        while let Some(mut next) = waiting.next() {
            // Every waiting caller has a sender (only a leader's own messages have none).
            let Some(told) = next.told.take() else {
                orphans.push(next);
                continue;
            };
            // The batch: this caller's messages, the orphans', then the other waiting ones'.
            let passed_over = orphans.len() + 1;
            let batch = std::iter::once(next)
                .chain(orphans.drain(..))
                .chain(waiting.by_ref())
                .collect();
            match told.send(Turn::Lead(batch, Leading::new(&self.coalescer))) {
                Ok(()) => {
                    self.handed_over = true;
                    return None;
                }
                // It stopped waiting: take the batch back, and the lead with it (disarmed:
                // this caller still leads); it joins the orphans, and the next one is tried.
                Err(Turn::Lead(mut back, mut lead)) => {
                    lead.handed_over = true;
                    waiting = back.split_off(passed_over).into_iter();
                    orphans = back;
                }
                Err(Turn::Sent) => unreachable!("a lead is what was sent"),
            }
        }
        Some(orphans)
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let mut state = self.coalescer.lock();
        state.sending = false;
        // Their senders dropped: each waiting caller sends its own messages.
        state.waiting.clear();
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;

    /// A stand-in for `SendMessageBatch`: records each request's calls; when `hold_first`,
    /// the first request waits until `release` is notified (never, if it is not).
    #[derive(Default)]
    struct FakeSqs {
        hold_first: bool,
        requests: Mutex<Vec<Vec<Uuid>>>,
        started: AtomicUsize,
        first_started: Notify,
        release: Notify,
    }

    impl FakeSqs {
        async fn request(&self, batch: Vec<Enqueue>) {
            if self.started.fetch_add(1, Ordering::SeqCst) == 0 && self.hold_first {
                self.first_started.notify_one();
                self.release.notified().await;
            }
            let ids = batch.iter().map(|m| m.call_id).collect();
            self.requests.lock().expect("lock").push(ids);
        }

        fn requests(&self) -> Vec<Vec<Uuid>> {
            self.requests.lock().expect("lock").clone()
        }
    }

    fn messages(n: usize) -> Vec<Enqueue> {
        (0..n).map(|_| Enqueue::now(Uuid::new_v4())).collect()
    }

    fn sorted_ids<'a>(messages: impl IntoIterator<Item = &'a Enqueue>) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = messages.into_iter().map(|m| m.call_id).collect();
        ids.sort();
        ids
    }

    /// A coalescer whose first caller (one message) is sending, its request held by the
    /// fake until `release`.
    async fn first_request_in_flight() -> (
        Arc<SendCoalescer>,
        Arc<FakeSqs>,
        tokio::task::JoinHandle<()>,
        Vec<Enqueue>,
    ) {
        let coalescer = Arc::new(SendCoalescer::default());
        let sqs = Arc::new(FakeSqs {
            hold_first: true,
            ..FakeSqs::default()
        });
        let first = messages(1);
        let leader = caller(&coalescer, &sqs, first.clone());
        sqs.first_started.notified().await;
        (coalescer, sqs, leader, first)
    }

    /// Starts a caller sending `messages` through `coalescer` to `sqs`.
    fn caller(
        coalescer: &Arc<SendCoalescer>,
        sqs: &Arc<FakeSqs>,
        messages: Vec<Enqueue>,
    ) -> tokio::task::JoinHandle<()> {
        let (coalescer, sqs) = (coalescer.clone(), sqs.clone());
        tokio::spawn(async move {
            SendCoalescer::send(&coalescer, &messages, |batch| {
                let sqs = sqs.clone();
                async move { sqs.request(batch).await }
            })
            .await;
        })
    }

    /// Starts a caller sending `n` new messages, and waits until it is the `place`th caller
    /// waiting; returns it and its messages.
    async fn waiting_caller(
        coalescer: &Arc<SendCoalescer>,
        sqs: &Arc<FakeSqs>,
        n: usize,
        place: usize,
    ) -> (tokio::task::JoinHandle<()>, Vec<Enqueue>) {
        let sent = messages(n);
        let handle = caller(coalescer, sqs, sent.clone());
        until_waiting(coalescer, place).await;
        (handle, sent)
    }

    fn ids(messages: &[Enqueue]) -> Vec<Uuid> {
        messages.iter().map(|m| m.call_id).collect()
    }

    async fn until_waiting(coalescer: &SendCoalescer, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while coalescer.lock().waiting.len() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the callers join the wait");
    }

    async fn finished(handle: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the caller returns")
            .expect("the caller does not panic");
    }

    #[tokio::test]
    async fn a_caller_alone_sends_at_once() {
        let coalescer = Arc::new(SendCoalescer::default());
        let sqs = Arc::new(FakeSqs::default());
        let sent = messages(3);
        finished(caller(&coalescer, &sqs, sent.clone())).await;
        assert_eq!(sqs.requests(), vec![ids(&sent)]);
        assert!(
            !coalescer.lock().sending,
            "sending stops with the last request"
        );
    }

    #[tokio::test]
    async fn callers_arriving_during_a_request_share_the_next_and_every_message_goes_once() {
        let (coalescer, sqs, leader, first) = first_request_in_flight().await;
        let later: Vec<Vec<Enqueue>> = (0..20).map(|n| messages(1 + n % 2)).collect();
        let waiting: Vec<_> = later
            .iter()
            .map(|m| caller(&coalescer, &sqs, m.clone()))
            .collect();
        until_waiting(&coalescer, 20).await;
        sqs.release.notify_one();
        finished(leader).await;
        for handle in waiting {
            finished(handle).await;
        }
        let requests = sqs.requests();
        assert_eq!(
            requests.len(),
            2,
            "the 20 callers share one request: {requests:?}"
        );
        let mut sent: Vec<Uuid> = requests.concat();
        sent.sort();
        assert_eq!(
            sent,
            sorted_ids(first.iter().chain(later.iter().flatten())),
            "every message sent, once"
        );
        assert!(!coalescer.lock().sending);
    }

    #[tokio::test]
    async fn a_canceled_sender_leaves_no_caller_waiting() {
        // The first request never returns; its caller is canceled.
        let (coalescer, sqs, leader, _) = first_request_in_flight().await;
        let (waiting, waiting_messages) = waiting_caller(&coalescer, &sqs, 2, 1).await;
        leader.abort();
        finished(waiting).await;
        let after = messages(1);
        finished(caller(&coalescer, &sqs, after.clone())).await;
        assert_eq!(
            sqs.requests(),
            vec![ids(&waiting_messages), ids(&after)],
            "the waiting caller sent its own, and a later one sent at once"
        );
        assert!(!coalescer.lock().sending);
    }

    #[tokio::test]
    async fn a_waiting_caller_that_gives_up_is_passed_over_and_its_messages_still_go() {
        let (coalescer, sqs, leader, _) = first_request_in_flight().await;
        let (gave_up, gave_up_messages) = waiting_caller(&coalescer, &sqs, 1, 1).await;
        let (stayed, stayed_messages) = waiting_caller(&coalescer, &sqs, 1, 2).await;
        gave_up.abort();
        let _ = gave_up.await;
        sqs.release.notify_one();
        finished(leader).await;
        finished(stayed).await;
        let requests = sqs.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        let mut second = requests[1].clone();
        second.sort();
        assert_eq!(
            second,
            sorted_ids(stayed_messages.iter().chain(&gave_up_messages)),
            "the caller that stayed sent both"
        );
        assert!(!coalescer.lock().sending);
    }
}
