//! One queue's messages: the state machine behind the embedded endpoint, with no I/O and
//! the clock passed in, so its unit tests drive time by hand.
//!
//! A message is *visible* (in the ready list), *delayed* or *in flight* (each with a due
//! time in the timer heap). Nothing is scanned per receive: the ready list yields the next
//! visible message and the heap the next message to come back. A state change bumps the
//! message's generation instead of searching those structures; entries whose generation no
//! longer matches are stale and skipped when they surface. Retention is swept only when
//! the earliest expiry has passed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// SQS's ceiling on a message's visibility, counted from the receive.
pub const MAX_VISIBILITY_SECONDS: u64 = 43_200;
/// SQS answers `OverLimit` to a receive once about this many messages are in flight.
pub const MAX_IN_FLIGHT: usize = 120_000;

/// A message attribute's value as sent (strings for `String` and `Number` types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    String(String),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageAttribute {
    pub data_type: String,
    pub value: AttributeValue,
}

/// What a sender gave: immutable from the send on, shared by every delivery.
#[derive(Debug)]
pub struct Content {
    pub message_id: String,
    pub body: String,
    pub md5_of_body: String,
    pub attributes: BTreeMap<String, MessageAttribute>,
    pub md5_of_attributes: Option<String>,
    pub trace_header: Option<String>,
    /// A standard queue accepts a `MessageGroupId` (fair queues) and returns it.
    pub group_id: Option<String>,
    pub sent_timestamp_ms: u64,
    /// Set on a message moved here by a redrive policy: the queue it came from.
    pub dead_letter_source_arn: Option<String>,
}

/// A message handed to a receiver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub content: Arc<Content>,
    pub receipt_handle: String,
    pub receive_count: u32,
    pub first_receive_ms: u64,
}

/// A message taken out of this queue by its redrive policy, for the dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub content: Arc<Content>,
    /// Its original enqueue time: retention in the DLQ still counts from it, as in SQS.
    pub enqueued_at: Instant,
    pub receive_count: u32,
    pub first_receive_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Received {
    pub delivered: Vec<Delivery>,
    pub dead_lettered: Vec<DeadLetter>,
}

/// Messages by state, as `GetQueueAttributes` counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Depth {
    pub visible: usize,
    pub in_flight: usize,
    pub delayed: usize,
}

impl Depth {
    pub fn total(&self) -> usize {
        self.visible + self.in_flight + self.delayed
    }
}

/// Why a receipt handle could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// Not a handle this queue issued (malformed, or another queue's).
    Invalid,
    /// A handle of this queue, but its message is gone or has been received again since.
    Stale,
    /// The message's visibility timeout has already run out.
    NotInFlight,
    /// The new timeout would keep the message hidden past 12 h after its receive.
    BeyondMaximum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Visible,
    Delayed,
    InFlight,
}

#[derive(Debug)]
struct Stored {
    content: Arc<Content>,
    enqueued_at: Instant,
    receive_count: u32,
    first_receive_ms: Option<u64>,
    state: State,
    generation: u32,
    /// The nonce of the latest receive's handle.
    receipt: u64,
    received_at: Option<Instant>,
}

pub struct QueueState {
    /// Identifies this queue's receipt handles.
    tag: u64,
    retention: Duration,
    messages: HashMap<u64, Stored>,
    next_seq: u64,
    ready: VecDeque<(u64, u32)>,
    timers: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    depth: Depth,
    earliest_expiry: Option<Instant>,
    /// Set when a message became visible or a timer moved earlier: long polls re-check.
    wake: bool,
}

impl QueueState {
    pub fn new(tag: u64, retention: Duration) -> Self {
        Self {
            tag,
            retention,
            messages: HashMap::new(),
            next_seq: 0,
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            depth: Depth::default(),
            earliest_expiry: None,
            wake: false,
        }
    }

    pub fn depth(&self) -> Depth {
        self.depth
    }

    /// Whether a long poll should look again; cleared by reading it.
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// When the next delayed or in-flight message may come back (possibly a stale entry:
    /// waking for it costs one more look).
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    pub fn set_retention(&mut self, retention: Duration) {
        self.retention = retention;
        self.earliest_expiry = self.messages.values().map(|m| m.enqueued_at).min();
        self.earliest_expiry = self.earliest_expiry.map(|e| e + retention);
    }

    /// Brings the state up to `now`: due messages become visible, expired ones go.
    pub fn advance(&mut self, now: Instant) {
        while let Some(Reverse((due, seq, generation))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(message) = self.messages.get(&seq) else {
                continue;
            };
            if message.generation != generation || message.state == State::Visible {
                continue;
            }
            self.make_visible(seq);
        }
        if self.earliest_expiry.is_some_and(|e| e <= now) {
            self.sweep_expired(now);
        }
    }

    /// Stores a message, visible at once or after `delay`.
    pub fn send(&mut self, content: Arc<Content>, delay: Duration, now: Instant) {
        self.insert(content, now, 0, None, delay, now);
    }

    /// Stores a message moved here from a source queue by its redrive policy.
    pub fn accept_dead_letter(&mut self, letter: DeadLetter, now: Instant) {
        self.insert(
            letter.content,
            letter.enqueued_at,
            letter.receive_count,
            letter.first_receive_ms,
            Duration::ZERO,
            now,
        );
        // It may be past this queue's retention already.
        self.advance(now);
    }

    fn insert(
        &mut self,
        content: Arc<Content>,
        enqueued_at: Instant,
        receive_count: u32,
        first_receive_ms: Option<u64>,
        delay: Duration,
        now: Instant,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let delayed = !delay.is_zero();
        self.messages.insert(
            seq,
            Stored {
                content,
                enqueued_at,
                receive_count,
                first_receive_ms,
                state: if delayed {
                    State::Delayed
                } else {
                    State::Visible
                },
                generation: 0,
                receipt: 0,
                received_at: None,
            },
        );
        let expiry = enqueued_at + self.retention;
        self.earliest_expiry = Some(self.earliest_expiry.map_or(expiry, |e| e.min(expiry)));
        if delayed {
            self.depth.delayed += 1;
            self.push_timer(now + delay, seq, 0);
        } else {
            self.depth.visible += 1;
            self.ready.push_back((seq, 0));
            self.wake = true;
        }
    }

    /// Takes up to `max` visible messages and hides each for `visibility`. A message
    /// already received `max_receive_count` times goes to `dead_lettered` instead, as the
    /// redrive policy moves it on the receive after its last allowed one.
    pub fn receive(
        &mut self,
        max: usize,
        visibility: Duration,
        max_receive_count: Option<u32>,
        now: Instant,
        now_ms: u64,
    ) -> Received {
        self.advance(now);
        let mut received = Received::default();
        while received.delivered.len() < max {
            let Some((seq, generation)) = self.ready.pop_front() else {
                break;
            };
            let Some(message) = self.messages.get(&seq) else {
                continue;
            };
            if message.generation != generation || message.state != State::Visible {
                continue;
            }
            if max_receive_count.is_some_and(|max| message.receive_count >= max) {
                if let Some(message) = self.remove(seq) {
                    received.dead_lettered.push(DeadLetter {
                        content: message.content,
                        enqueued_at: message.enqueued_at,
                        receive_count: message.receive_count,
                        first_receive_ms: message.first_receive_ms,
                    });
                }
                continue;
            }
            let receipt = rand::random::<u64>();
            let Some(message) = self.messages.get_mut(&seq) else {
                continue;
            };
            message.receive_count += 1;
            let first_receive_ms = *message.first_receive_ms.get_or_insert(now_ms);
            message.receipt = receipt;
            message.received_at = Some(now);
            message.state = State::InFlight;
            message.generation = message.generation.wrapping_add(1);
            let generation = message.generation;
            let delivery = Delivery {
                content: message.content.clone(),
                receipt_handle: encode_handle(self.tag, seq, receipt),
                receive_count: message.receive_count,
                first_receive_ms,
            };
            self.depth.visible -= 1;
            self.depth.in_flight += 1;
            self.push_timer(now + visibility, seq, generation);
            received.delivered.push(delivery);
        }
        received
    }

    /// Deletes the message a handle names. As SQS documents, a handle of an earlier
    /// receive, or of a message already deleted, succeeds and deletes nothing.
    pub fn delete(&mut self, handle: &str, now: Instant) -> Result<(), HandleError> {
        let (seq, receipt) = self.decode_handle(handle)?;
        self.advance(now);
        if self
            .messages
            .get(&seq)
            .is_some_and(|m| m.receipt == receipt && m.received_at.is_some())
        {
            self.remove(seq);
        }
        Ok(())
    }

    /// Hides an in-flight message for `timeout` from now.
    pub fn change_visibility(
        &mut self,
        handle: &str,
        timeout: Duration,
        now: Instant,
    ) -> Result<(), HandleError> {
        let (seq, receipt) = self.decode_handle(handle)?;
        self.advance(now);
        let message = match self.messages.get_mut(&seq) {
            Some(m) if m.receipt == receipt && m.received_at.is_some() => m,
            _ => return Err(HandleError::Stale),
        };
        if message.state != State::InFlight {
            return Err(HandleError::NotInFlight);
        }
        let received_at = message.received_at.unwrap_or(now);
        // Whole seconds, as SQS counts them.
        let elapsed = now.saturating_duration_since(received_at).as_secs();
        if elapsed + timeout.as_secs() > MAX_VISIBILITY_SECONDS {
            return Err(HandleError::BeyondMaximum);
        }
        message.generation = message.generation.wrapping_add(1);
        let generation = message.generation;
        self.push_timer(now + timeout, seq, generation);
        if timeout.is_zero() {
            self.advance(now);
        }
        Ok(())
    }

    /// Deletes every message (visible, delayed and in flight).
    pub fn purge(&mut self) {
        self.messages.clear();
        self.ready.clear();
        self.timers.clear();
        self.depth = Depth::default();
        self.earliest_expiry = None;
    }

    fn push_timer(&mut self, due: Instant, seq: u64, generation: u32) {
        if self.next_due().is_none_or(|next| due < next) {
            self.wake = true;
        }
        self.timers.push(Reverse((due, seq, generation)));
    }

    fn make_visible(&mut self, seq: u64) {
        let Some(message) = self.messages.get_mut(&seq) else {
            return;
        };
        match message.state {
            State::Delayed => self.depth.delayed -= 1,
            State::InFlight => self.depth.in_flight -= 1,
            State::Visible => return,
        }
        message.state = State::Visible;
        message.generation = message.generation.wrapping_add(1);
        self.ready.push_back((seq, message.generation));
        self.depth.visible += 1;
        self.wake = true;
    }

    fn remove(&mut self, seq: u64) -> Option<Stored> {
        let message = self.messages.remove(&seq)?;
        match message.state {
            State::Visible => self.depth.visible -= 1,
            State::Delayed => self.depth.delayed -= 1,
            State::InFlight => self.depth.in_flight -= 1,
        }
        Some(message)
    }

    fn sweep_expired(&mut self, now: Instant) {
        let retention = self.retention;
        let expired: Vec<u64> = self
            .messages
            .iter()
            .filter(|(_, m)| m.enqueued_at + retention <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            self.remove(seq);
        }
        self.earliest_expiry = self
            .messages
            .values()
            .map(|m| m.enqueued_at + retention)
            .min();
    }

    fn decode_handle(&self, handle: &str) -> Result<(u64, u64), HandleError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(
                handle
                    .strip_prefix(HANDLE_PREFIX)
                    .ok_or(HandleError::Invalid)?,
            )
            .map_err(|_| HandleError::Invalid)?;
        let bytes: [u8; 24] = bytes.try_into().map_err(|_| HandleError::Invalid)?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        };
        if word(0) != self.tag {
            return Err(HandleError::Invalid);
        }
        Ok((word(1), word(2)))
    }
}

const HANDLE_PREFIX: &str = "EbRa";

/// An opaque receipt handle: the queue's tag, the message and the receive's nonce.
fn encode_handle(tag: u64, seq: u64, receipt: u64) -> String {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&tag.to_be_bytes());
    bytes[8..16].copy_from_slice(&seq.to_be_bytes());
    bytes[16..].copy_from_slice(&receipt.to_be_bytes());
    format!(
        "{HANDLE_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn content(body: &str) -> Arc<Content> {
        Arc::new(Content {
            message_id: format!("id-{body}"),
            body: body.to_owned(),
            md5_of_body: String::new(),
            attributes: BTreeMap::new(),
            md5_of_attributes: None,
            trace_header: None,
            group_id: None,
            sent_timestamp_ms: 0,
            dead_letter_source_arn: None,
        })
    }

    fn queue() -> QueueState {
        QueueState::new(7, Duration::from_secs(345_600))
    }

    fn bodies(received: &Received) -> Vec<&str> {
        received
            .delivered
            .iter()
            .map(|d| d.content.body.as_str())
            .collect()
    }

    #[test]
    fn a_received_message_is_hidden_until_its_visibility_runs_out() {
        let t0 = Instant::now();
        let mut q = queue();
        q.send(content("a"), Duration::ZERO, t0);
        let first = q.receive(10, 30 * S, None, t0, 0);
        assert_eq!(bodies(&first), ["a"]);
        assert_eq!(
            q.depth(),
            Depth {
                visible: 0,
                in_flight: 1,
                delayed: 0
            }
        );
        assert!(q
            .receive(10, 30 * S, None, t0 + 29 * S, 0)
            .delivered
            .is_empty());
        let again = q.receive(10, 30 * S, None, t0 + 30 * S, 0);
        assert_eq!(bodies(&again), ["a"]);
        assert_eq!(again.delivered[0].receive_count, 2);
        assert_ne!(
            again.delivered[0].receipt_handle,
            first.delivered[0].receipt_handle
        );
    }

    #[test]
    fn a_delayed_message_waits_for_its_delay() {
        let t0 = Instant::now();
        let mut q = queue();
        q.send(content("late"), 5 * S, t0);
        assert_eq!(q.depth().delayed, 1);
        assert!(q.receive(10, S, None, t0 + 4 * S, 0).delivered.is_empty());
        assert_eq!(bodies(&q.receive(10, S, None, t0 + 5 * S, 0)), ["late"]);
    }

    #[test]
    fn delete_takes_the_latest_handle_and_ignores_older_ones() {
        let t0 = Instant::now();
        let mut q = queue();
        q.send(content("a"), Duration::ZERO, t0);
        let old = q.receive(1, S, None, t0, 0).delivered.remove(0);
        let new = q.receive(1, S, None, t0 + S, 0).delivered.remove(0);
        assert_eq!(q.delete(&old.receipt_handle, t0 + S), Ok(()));
        assert_eq!(q.depth().in_flight, 1, "an old handle deletes nothing");
        assert_eq!(q.delete(&new.receipt_handle, t0 + S), Ok(()));
        assert_eq!(q.depth().total(), 0);
        assert_eq!(q.delete(&new.receipt_handle, t0 + S), Ok(()), "idempotent");
        assert_eq!(q.delete("nonsense", t0), Err(HandleError::Invalid));
        let other = QueueState::new(8, S);
        assert_eq!(
            other.decode_handle(&new.receipt_handle),
            Err(HandleError::Invalid),
            "another queue's handle"
        );
    }

    #[test]
    fn visibility_changes_apply_from_the_call_within_twelve_hours_of_the_receive() {
        let t0 = Instant::now();
        let mut q = queue();
        q.send(content("a"), Duration::ZERO, t0);
        let handle = q
            .receive(1, 30 * S, None, t0, 0)
            .delivered
            .remove(0)
            .receipt_handle;
        assert_eq!(q.change_visibility(&handle, Duration::ZERO, t0 + S), Ok(()));
        assert_eq!(q.depth().visible, 1, "zero makes it visible at once");
        let handle = q
            .receive(1, 30 * S, None, t0 + S, 0)
            .delivered
            .remove(0)
            .receipt_handle;
        assert_eq!(q.change_visibility(&handle, 100 * S, t0 + 2 * S), Ok(()));
        assert!(q.receive(1, S, None, t0 + 101 * S, 0).delivered.is_empty());
        assert_eq!(q.receive(1, S, None, t0 + 102 * S, 0).delivered.len(), 1);

        let handle = q
            .receive(1, 30 * S, None, t0 + 103 * S, 0)
            .delivered
            .remove(0)
            .receipt_handle;
        let later = t0 + 113 * S;
        assert_eq!(
            q.change_visibility(
                &handle,
                Duration::from_secs(MAX_VISIBILITY_SECONDS - 9),
                later
            ),
            Err(HandleError::BeyondMaximum)
        );
        assert_eq!(
            q.change_visibility(
                &handle,
                Duration::from_secs(MAX_VISIBILITY_SECONDS - 10),
                later
            ),
            Ok(())
        );
    }

    #[test]
    fn a_visibility_change_after_the_timeout_ran_out_is_refused() {
        let t0 = Instant::now();
        let mut q = queue();
        q.send(content("a"), Duration::ZERO, t0);
        let handle = q
            .receive(1, S, None, t0, 0)
            .delivered
            .remove(0)
            .receipt_handle;
        assert_eq!(
            q.change_visibility(&handle, 10 * S, t0 + 2 * S),
            Err(HandleError::NotInFlight)
        );
        q.receive(1, S, None, t0 + 2 * S, 0);
        assert_eq!(
            q.change_visibility(&handle, 10 * S, t0 + 2 * S),
            Err(HandleError::Stale),
            "received again since"
        );
    }

    #[test]
    fn the_receive_after_the_last_allowed_one_dead_letters() {
        let t0 = Instant::now();
        let mut q = queue();
        q.send(content("poison"), Duration::ZERO, t0);
        for n in 1..=3u32 {
            let got = q.receive(10, S, Some(3), t0 + S * (2 * (n - 1)), 0);
            assert_eq!(bodies(&got), ["poison"], "receive {n}");
        }
        let got = q.receive(10, S, Some(3), t0 + 6 * S, 0);
        assert!(got.delivered.is_empty());
        assert_eq!(got.dead_lettered.len(), 1);
        assert_eq!(got.dead_lettered[0].receive_count, 3);
        assert_eq!(q.depth().total(), 0);
    }

    #[test]
    fn retention_drops_old_messages() {
        let t0 = Instant::now();
        let mut q = QueueState::new(1, 60 * S);
        q.send(content("old"), Duration::ZERO, t0);
        q.send(content("newer"), Duration::ZERO, t0 + 30 * S);
        q.advance(t0 + 60 * S);
        assert_eq!(q.depth().visible, 1);
        assert_eq!(bodies(&q.receive(10, S, None, t0 + 60 * S, 0)), ["newer"]);
    }

    #[test]
    fn stale_entries_never_deliver_twice() {
        let t0 = Instant::now();
        let mut q = queue();
        q.send(content("a"), Duration::ZERO, t0);
        let handle = q
            .receive(1, 5 * S, None, t0, 0)
            .delivered
            .remove(0)
            .receipt_handle;
        // Back to visible through the timer, then hidden again before its old entry.
        q.change_visibility(&handle, Duration::ZERO, t0).unwrap();
        q.change_visibility(&handle, 10 * S, t0).unwrap_err();
        let got = q.receive(10, 5 * S, None, t0 + 6 * S, 0);
        assert_eq!(bodies(&got), ["a"]);
        assert!(q
            .receive(10, 5 * S, None, t0 + 6 * S, 0)
            .delivered
            .is_empty());
        assert_eq!(
            q.depth(),
            Depth {
                visible: 0,
                in_flight: 1,
                delayed: 0
            }
        );
    }

    #[test]
    fn purge_empties_every_state() {
        let t0 = Instant::now();
        let mut q = queue();
        q.send(content("a"), Duration::ZERO, t0);
        q.send(content("b"), 10 * S, t0);
        q.send(content("c"), Duration::ZERO, t0);
        q.receive(1, 30 * S, None, t0, 0);
        q.purge();
        assert_eq!(q.depth().total(), 0);
        assert!(q.receive(10, S, None, t0 + 60 * S, 0).delivered.is_empty());
    }
}
