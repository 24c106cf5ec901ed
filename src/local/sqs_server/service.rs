//! The operations: each takes its JSON input and answers its JSON output or an
//! [`SqsError`]. Queues live in a map behind a read-write lock; each queue's messages
//! behind a mutex of its own, held only for in-memory work (never across an await).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use super::attributes::{QueueAttributes, FIFO_ONLY, MAX_MESSAGE_SIZE, READ_ONLY, SETTABLE};
use super::errors::{BatchFailure, SqsError};
use super::message::{self, Checked};
use super::queue::{
    AttributeValue, Content, DeadLetter, Depth, HandleError, QueueState, Received, MAX_IN_FLIGHT,
    MAX_VISIBILITY_SECONDS,
};
use super::wire::*;

/// The account and region in every queue's URL and ARN.
pub const ACCOUNT_ID: &str = "000000000000";
pub const REGION: &str = "us-east-1";
/// The `SenderId` of every message (an IAM user id's shape).
const SENDER_ID: &str = "AIDAEBRAEMBEDDEDSQS00";
/// SQS's limit on the sum of a batch's messages.
const MAX_BATCH_BYTES: usize = MAX_MESSAGE_SIZE as usize;
/// A deleted queue's name cannot be reused for this long; purges are this far apart.
const COOL_DOWN: Duration = Duration::from_secs(60);

pub struct Queue {
    pub name: String,
    pub url: String,
    pub arn: String,
    inner: Mutex<Inner>,
    /// Long polls wait here for a message to become visible.
    arrivals: Notify,
    deleted: AtomicBool,
}

struct Inner {
    attributes: QueueAttributes,
    state: QueueState,
    tags: BTreeMap<String, String>,
    created_s: u64,
    last_modified_s: u64,
    last_purge: Option<Instant>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state as consistent as any single step:
        // keep serving rather than fail every later request.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether long polls should look again after the last change.
    fn wake_if_needed(&self, inner: &mut Inner) -> bool {
        inner.state.take_wake()
    }

    pub fn depth(&self) -> Depth {
        self.lock().state.depth()
    }
}

pub struct Service {
    base_url: String,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    recently_deleted: Mutex<HashMap<String, Instant>>,
    requests: [AtomicU64; Operation::ALL.len()],
    unknown_requests: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl Service {
    pub fn new(base_url: String, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            base_url,
            queues: RwLock::default(),
            recently_deleted: Mutex::default(),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            unknown_requests: AtomicU64::new(0),
            shutdown,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn count(&self, operation: Option<Operation>) {
        match operation {
            Some(op) => self.requests[op.index()].fetch_add(1, Ordering::Relaxed),
            None => self.unknown_requests.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Requests received so far, by operation (only those received at least once).
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<String, u64> = Operation::ALL
            .iter()
            .map(|op| {
                (
                    op.name().to_owned(),
                    self.requests[op.index()].load(Ordering::Relaxed),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let unknown = self.unknown_requests.load(Ordering::Relaxed);
        if unknown > 0 {
            counts.insert("unknown".to_owned(), unknown);
        }
        counts
    }

    /// Each queue's messages by state, by queue name.
    pub fn depths(&self) -> BTreeMap<String, Depth> {
        self.all_queues()
            .into_iter()
            .map(|q| (q.name.clone(), q.depth()))
            .collect()
    }

    pub fn queue_by_url(&self, url: &str) -> Option<Arc<Queue>> {
        self.find(queue_name_of(url))
    }

    /// Runs one operation on its JSON input.
    pub async fn call(&self, operation: Operation, body: &[u8]) -> Result<String, SqsError> {
        match operation {
            Operation::CreateQueue => self.create_queue(input(body)?),
            Operation::GetQueueUrl => self.get_queue_url(input(body)?),
            Operation::GetQueueAttributes => self.get_queue_attributes(input(body)?),
            Operation::SetQueueAttributes => self.set_queue_attributes(input(body)?),
            Operation::DeleteQueue => self.delete_queue(input(body)?),
            Operation::PurgeQueue => self.purge_queue(input(body)?),
            Operation::ListQueues => self.list_queues(input(body)?),
            Operation::ListQueueTags => self.list_queue_tags(input(body)?),
            Operation::TagQueue => self.tag_queue(input(body)?),
            Operation::UntagQueue => self.untag_queue(input(body)?),
            Operation::ListDeadLetterSourceQueues => {
                self.list_dead_letter_source_queues(input(body)?)
            }
            Operation::SendMessage => self.send_message(input(body)?),
            Operation::SendMessageBatch => self.send_message_batch(input(body)?),
            Operation::ReceiveMessage => self.receive_message(input(body)?).await,
            Operation::DeleteMessage => self.delete_message(input(body)?),
            Operation::DeleteMessageBatch => self.delete_message_batch(input(body)?),
            Operation::ChangeMessageVisibility => self.change_message_visibility(input(body)?),
            Operation::ChangeMessageVisibilityBatch => {
                self.change_message_visibility_batch(input(body)?)
            }
            Operation::AddPermission
            | Operation::RemovePermission
            | Operation::StartMessageMoveTask
            | Operation::CancelMessageMoveTask
            | Operation::ListMessageMoveTasks => Err(SqsError::unsupported_operation(format!(
                "the embedded SQS endpoint does not implement {}",
                operation.name()
            ))),
        }
    }

    // ---- queues ----

    fn create_queue(&self, input: CreateQueueInput) -> Result<String, SqsError> {
        let name = input
            .queue_name
            .ok_or_else(|| SqsError::missing_parameter("QueueName"))?;
        if name.ends_with(".fifo") {
            return Err(SqsError::unsupported_operation(
                "the embedded SQS endpoint does not implement FIFO queues".to_owned(),
            ));
        }
        if name.is_empty()
            || name.len() > 80
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SqsError::invalid_parameter_value(
                "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
                    .to_owned(),
            ));
        }
        let mut attributes = QueueAttributes::default();
        for (attribute, value) in &input.attributes {
            attributes.set(attribute, value)?;
        }
        self.check_dead_letter_target(&attributes)?;

        if let Some(existing) = self.find(&name) {
            let inner = existing.lock();
            for attribute in input.attributes.keys() {
                if inner.attributes.get(attribute) != attributes.get(attribute) {
                    return Err(SqsError::queue_name_exists(attribute));
                }
            }
            return output(&QueueUrlOutput {
                queue_url: existing.url.clone(),
            });
        }
        {
            let mut deleted = self
                .recently_deleted
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            deleted.retain(|_, at| at.elapsed() < COOL_DOWN);
            if deleted.contains_key(&name) {
                return Err(SqsError::queue_deleted_recently());
            }
        }
        let now_s = now_ms() / 1000;
        let retention = Duration::from_secs(u64::from(attributes.message_retention_period));
        let queue = Arc::new(Queue {
            url: format!("{}/{ACCOUNT_ID}/{name}", self.base_url),
            arn: format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"),
            name: name.clone(),
            inner: Mutex::new(Inner {
                attributes,
                state: QueueState::new(rand::random(), retention),
                tags: input.tags.into_iter().collect(),
                created_s: now_s,
                last_modified_s: now_s,
                last_purge: None,
            }),
            arrivals: Notify::new(),
            deleted: AtomicBool::new(false),
        });
        // Never lock a queue while holding the registry: this is the only write.
        let mut queues = self.queues.write().unwrap_or_else(|p| p.into_inner());
        let url = queues.entry(name).or_insert(queue).url.clone();
        drop(queues);
        output(&QueueUrlOutput { queue_url: url })
    }

    fn get_queue_url(&self, input: GetQueueUrlInput) -> Result<String, SqsError> {
        let name = input
            .queue_name
            .ok_or_else(|| SqsError::missing_parameter("QueueName"))?;
        let queue = self
            .find(&name)
            .ok_or_else(SqsError::queue_does_not_exist)?;
        output(&QueueUrlOutput {
            queue_url: queue.url.clone(),
        })
    }

    fn get_queue_attributes(&self, input: GetQueueAttributesInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        let mut names: Vec<&str> = Vec::new();
        for name in &input.attribute_names {
            match name.as_str() {
                "All" => {
                    names.extend(READ_ONLY);
                    names.extend(SETTABLE);
                }
                n if READ_ONLY.contains(&n) || SETTABLE.contains(&n) || FIFO_ONLY.contains(&n) => {
                    names.push(n)
                }
                other => return Err(SqsError::invalid_attribute_name(other)),
            }
        }
        let mut inner = queue.lock();
        inner.state.advance(Instant::now());
        let depth = inner.state.depth();
        let mut attributes = BTreeMap::new();
        for name in names {
            let key = READ_ONLY
                .iter()
                .chain(SETTABLE.iter())
                .find(|n| **n == name)
                .copied();
            let Some(key) = key else { continue };
            let value = match key {
                "ApproximateNumberOfMessages" => Some(depth.visible.to_string()),
                "ApproximateNumberOfMessagesNotVisible" => Some(depth.in_flight.to_string()),
                "ApproximateNumberOfMessagesDelayed" => Some(depth.delayed.to_string()),
                "CreatedTimestamp" => Some(inner.created_s.to_string()),
                "LastModifiedTimestamp" => Some(inner.last_modified_s.to_string()),
                "QueueArn" => Some(queue.arn.clone()),
                settable => inner.attributes.get(settable),
            };
            if let Some(value) = value {
                attributes.insert(key, value);
            }
        }
        output(&AttributesOutput { attributes })
    }

    fn set_queue_attributes(&self, input: SetQueueAttributesInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        let mut attributes = queue.lock().attributes.clone();
        for (name, value) in &input.attributes {
            attributes.set(name, value)?;
        }
        self.check_dead_letter_target(&attributes)?;
        let mut inner = queue.lock();
        let retention = Duration::from_secs(u64::from(attributes.message_retention_period));
        if attributes.message_retention_period != inner.attributes.message_retention_period {
            inner.state.set_retention(retention);
        }
        inner.attributes = attributes;
        inner.last_modified_s = now_ms() / 1000;
        Ok("{}".to_owned())
    }

    fn delete_queue(&self, input: QueueUrlInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&queue.name);
        self.recently_deleted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.name.clone(), Instant::now());
        queue.deleted.store(true, Ordering::Release);
        queue.lock().state.purge();
        queue.arrivals.notify_waiters();
        Ok("{}".to_owned())
    }

    fn purge_queue(&self, input: QueueUrlInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        let mut inner = queue.lock();
        if inner.last_purge.is_some_and(|at| at.elapsed() < COOL_DOWN) {
            return Err(SqsError::purge_queue_in_progress(&queue.url));
        }
        inner.state.purge();
        inner.last_purge = Some(Instant::now());
        Ok("{}".to_owned())
    }

    fn list_queues(&self, input: ListQueuesInput) -> Result<String, SqsError> {
        let max = match input.max_results {
            None => 1000,
            Some(n @ 1..=1000) => n as usize,
            Some(n) => {
                return Err(SqsError::invalid_parameter(
                    "MaxResults",
                    n,
                    "MaxResults must be an integer between 1 and 1000.",
                ))
            }
        };
        let after = input.next_token.as_deref().map(decode_token).transpose()?;
        let prefix = input.queue_name_prefix.unwrap_or_default();
        let mut queues: Vec<Arc<Queue>> = self
            .all_queues()
            .into_iter()
            .filter(|q| q.name.starts_with(&prefix))
            .filter(|q| after.as_ref().is_none_or(|a| q.name.as_str() > a.as_str()))
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let more = queues.len() > max;
        queues.truncate(max);
        let next_token = (more && input.max_results.is_some())
            .then(|| queues.last().map(|q| encode_token(&q.name)))
            .flatten();
        output(&ListQueuesOutput {
            queue_urls: queues.iter().map(|q| q.url.clone()).collect(),
            next_token,
        })
    }

    fn list_dead_letter_source_queues(
        &self,
        input: ListDeadLetterSourceQueuesInput,
    ) -> Result<String, SqsError> {
        let target = self.queue(input.queue_url)?;
        let after = input.next_token.as_deref().map(decode_token).transpose()?;
        let max = input.max_results.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut sources: Vec<Arc<Queue>> = self
            .all_queues()
            .into_iter()
            .filter(|q| {
                q.lock()
                    .attributes
                    .redrive_policy
                    .as_ref()
                    .is_some_and(|p| p.dead_letter_target_arn == target.arn)
            })
            .filter(|q| after.as_ref().is_none_or(|a| q.name.as_str() > a.as_str()))
            .collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        let more = sources.len() > max;
        sources.truncate(max);
        output(&ListDeadLetterSourceQueuesOutput {
            queue_urls: sources.iter().map(|q| q.url.clone()).collect(),
            next_token: more
                .then(|| sources.last().map(|q| encode_token(&q.name)))
                .flatten(),
        })
    }

    fn list_queue_tags(&self, input: QueueUrlInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        let tags = queue.lock().tags.clone();
        output(&TagsOutput { tags })
    }

    fn tag_queue(&self, input: TagQueueInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        queue.lock().tags.extend(input.tags);
        Ok("{}".to_owned())
    }

    fn untag_queue(&self, input: UntagQueueInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        let mut inner = queue.lock();
        for key in &input.tag_keys {
            inner.tags.remove(key);
        }
        Ok("{}".to_owned())
    }

    // ---- messages ----

    fn send_message(&self, input: MessageInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url.clone())?;
        let (max_size, default_delay) = {
            let inner = queue.lock();
            (
                inner.attributes.maximum_message_size as usize,
                inner.attributes.delay_seconds,
            )
        };
        let (checked, delay) = check_message(input, max_size, default_delay)?;
        let (sent, content) = prepare(checked, None);
        let mut inner = queue.lock();
        inner.state.send(content, delay, Instant::now());
        let wake = queue.wake_if_needed(&mut inner);
        drop(inner);
        if wake {
            queue.arrivals.notify_waiters();
        }
        output(&sent)
    }

    fn send_message_batch(&self, input: SendMessageBatchInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        check_batch_ids(
            input.entries.iter().map(|e| e.id.as_deref()),
            "SendMessageBatchRequestEntry",
        )?;
        let total: usize = input
            .entries
            .iter()
            .map(|e| e.message_body.as_deref().map_or(0, str::len) + attributes_len(e))
            .sum();
        if total > MAX_BATCH_BYTES {
            return Err(SqsError::batch_request_too_long(MAX_BATCH_BYTES, total));
        }
        let (max_size, default_delay) = {
            let inner = queue.lock();
            (
                inner.attributes.maximum_message_size as usize,
                inner.attributes.delay_seconds,
            )
        };
        let mut successful = Vec::new();
        let mut failed = Vec::new();
        let mut staged = Vec::new();
        for entry in input.entries {
            let id = entry.id.clone().unwrap_or_default();
            match check_message(entry, max_size, default_delay) {
                Ok((checked, delay)) => {
                    let (sent, content) = prepare(checked, Some(id));
                    successful.push(sent);
                    staged.push((content, delay));
                }
                Err(error) => failed.push(BatchFailure::new(&id, error)),
            }
        }
        let mut inner = queue.lock();
        let now = Instant::now();
        for (content, delay) in staged {
            inner.state.send(content, delay, now);
        }
        let wake = queue.wake_if_needed(&mut inner);
        drop(inner);
        if wake {
            queue.arrivals.notify_waiters();
        }
        output(&BatchOutput { successful, failed })
    }

    async fn receive_message(&self, input: ReceiveMessageInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        let max = match input.max_number_of_messages {
            None => 1,
            Some(n @ 1..=10) => n as usize,
            Some(n) => {
                return Err(SqsError::invalid_parameter(
                    "MaxNumberOfMessages",
                    n,
                    "Must be between 1 and 10, if provided.",
                ))
            }
        };
        let (default_visibility, default_wait, redrive) = {
            let inner = queue.lock();
            (
                inner.attributes.visibility_timeout,
                inner.attributes.receive_message_wait_time_seconds,
                inner.attributes.redrive_policy.clone(),
            )
        };
        // Redrive only into a dead-letter queue that exists (resolved outside the queue's
        // lock: the registry is never locked inside a queue's).
        let dead_letter_target = redrive.and_then(|policy| {
            self.find(arn_name(&policy.dead_letter_target_arn))
                .map(|target| (target, policy.max_receive_count))
        });
        let max_receive_count = dead_letter_target.as_ref().map(|(_, max)| *max);
        let visibility = match input.visibility_timeout {
            None => u64::from(default_visibility),
            Some(v @ 0..=43_200) => v as u64,
            Some(v) => {
                return Err(SqsError::invalid_parameter(
                    "VisibilityTimeout",
                    v,
                    "Must be >= 0 and <= 43200, if provided.",
                ))
            }
        };
        let wait = match input.wait_time_seconds {
            None => u64::from(default_wait),
            Some(w @ 0..=20) => w as u64,
            Some(w) => {
                return Err(SqsError::invalid_parameter(
                    "WaitTimeSeconds",
                    w,
                    "Must be >= 0 and <= 20, if provided.",
                ))
            }
        };
        let wanted = WantedAttributes::new(
            input
                .attribute_names
                .iter()
                .chain(&input.message_system_attribute_names),
            &input.message_attribute_names,
        );
        let deadline = Instant::now() + Duration::from_secs(wait);
        let mut shutdown = self.shutdown.clone();
        let received = loop {
            let arrival = queue.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            let (received, next_due, wake_others) = {
                let mut inner = queue.lock();
                if inner.state.depth().in_flight >= MAX_IN_FLIGHT {
                    return Err(SqsError::over_limit(format!(
                        "Too many messages in flight (limit {MAX_IN_FLIGHT})."
                    )));
                }
                let received = inner.state.receive(
                    max,
                    Duration::from_secs(visibility),
                    max_receive_count,
                    Instant::now(),
                    now_ms(),
                );
                // Timers that fired here may have freed more than this receive takes.
                let wake = inner.state.take_wake() && inner.state.depth().visible > 0;
                (received, inner.state.next_due(), wake)
            };
            if wake_others {
                queue.arrivals.notify_waiters();
            }
            let Received {
                delivered,
                dead_lettered,
            } = received;
            if let (false, Some((target, _))) = (dead_lettered.is_empty(), &dead_letter_target) {
                dead_letter(&queue, target, dead_lettered);
            }
            let now = Instant::now();
            if !delivered.is_empty()
                || now >= deadline
                || queue.deleted.load(Ordering::Acquire)
                || *shutdown.borrow()
            {
                break delivered;
            }
            let wake_at = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                _ = arrival => {}
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = shutdown.changed() => {}
            }
        };
        let messages: Vec<MessageOutput<'_>> = received
            .iter()
            .map(|delivery| wanted.render(delivery))
            .collect();
        output(&ReceiveOutput { messages })
    }

    fn delete_message(&self, input: DeleteMessageInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        let handle = input
            .receipt_handle
            .ok_or_else(|| SqsError::missing_parameter("ReceiptHandle"))?;
        queue
            .lock()
            .state
            .delete(&handle, Instant::now())
            .map_err(|e| handle_error(e, &handle, 0))?;
        Ok("{}".to_owned())
    }

    fn delete_message_batch(&self, input: HandleBatchInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        check_batch_ids(
            input.entries.iter().map(|e| e.id.as_deref()),
            "DeleteMessageBatchRequestEntry",
        )?;
        let mut successful = Vec::new();
        let mut failed = Vec::new();
        let mut inner = queue.lock();
        let now = Instant::now();
        for entry in input.entries {
            let id = entry.id.unwrap_or_default();
            let result = match entry.receipt_handle {
                None => Err(SqsError::missing_parameter("ReceiptHandle")),
                Some(handle) => inner
                    .state
                    .delete(&handle, now)
                    .map_err(|e| handle_error(e, &handle, 0)),
            };
            match result {
                Ok(()) => successful.push(IdOutput { id }),
                Err(error) => failed.push(BatchFailure::new(&id, error)),
            }
        }
        drop(inner);
        output(&BatchOutput { successful, failed })
    }

    fn change_message_visibility(
        &self,
        input: ChangeMessageVisibilityInput,
    ) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        let handle = input
            .receipt_handle
            .ok_or_else(|| SqsError::missing_parameter("ReceiptHandle"))?;
        let mut inner = queue.lock();
        change_visibility(&mut inner.state, &handle, input.visibility_timeout)?;
        let wake = queue.wake_if_needed(&mut inner);
        drop(inner);
        if wake {
            queue.arrivals.notify_waiters();
        }
        Ok("{}".to_owned())
    }

    fn change_message_visibility_batch(&self, input: HandleBatchInput) -> Result<String, SqsError> {
        let queue = self.queue(input.queue_url)?;
        check_batch_ids(
            input.entries.iter().map(|e| e.id.as_deref()),
            "ChangeMessageVisibilityBatchRequestEntry",
        )?;
        let mut successful = Vec::new();
        let mut failed = Vec::new();
        let mut inner = queue.lock();
        for entry in input.entries {
            let id = entry.id.unwrap_or_default();
            let result = match entry.receipt_handle {
                None => Err(SqsError::missing_parameter("ReceiptHandle")),
                Some(handle) => {
                    change_visibility(&mut inner.state, &handle, entry.visibility_timeout)
                }
            };
            match result {
                Ok(()) => successful.push(IdOutput { id }),
                Err(error) => failed.push(BatchFailure::new(&id, error)),
            }
        }
        let wake = queue.wake_if_needed(&mut inner);
        drop(inner);
        if wake {
            queue.arrivals.notify_waiters();
        }
        output(&BatchOutput { successful, failed })
    }

    // ---- helpers ----

    fn find(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn all_queues(&self) -> Vec<Arc<Queue>> {
        self.queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The queue a request's `QueueUrl` names (by its last path segment, as SQS resolves a
    /// URL of its own endpoint).
    fn queue(&self, url: Option<String>) -> Result<Arc<Queue>, SqsError> {
        let url = url.ok_or_else(|| SqsError::missing_parameter("QueueUrl"))?;
        self.find(queue_name_of(&url))
            .ok_or_else(SqsError::queue_does_not_exist)
    }

    fn check_dead_letter_target(&self, attributes: &QueueAttributes) -> Result<(), SqsError> {
        if let Some(policy) = &attributes.redrive_policy {
            if self
                .find(arn_name(&policy.dead_letter_target_arn))
                .is_none()
            {
                return Err(SqsError::invalid_parameter(
                    "RedrivePolicy",
                    policy.to_json(),
                    "Dead letter target does not exist.",
                ));
            }
        }
        Ok(())
    }
}

fn input<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, SqsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| SqsError::serialization(e.to_string()))
}

fn output<T: Serialize>(value: &T) -> Result<String, SqsError> {
    serde_json::to_string(value).map_err(|e| SqsError::serialization(e.to_string()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn queue_name_of(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or(url)
}

fn arn_name(arn: &str) -> &str {
    arn.rsplit(':').next().unwrap_or(arn)
}

fn encode_token(name: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
}

fn decode_token(token: &str) -> Result<String, SqsError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| SqsError::invalid_parameter("NextToken", token, "Invalid NextToken value."))
}

/// The checks SQS makes on a batch's entries as a whole: 1–10 entries, valid distinct ids.
fn check_batch_ids<'a>(
    ids: impl ExactSizeIterator<Item = Option<&'a str>>,
    entry: &str,
) -> Result<(), SqsError> {
    let count = ids.len();
    if count == 0 {
        return Err(SqsError::empty_batch_request(entry));
    }
    if count > 10 {
        return Err(SqsError::too_many_entries_in_batch_request(count));
    }
    let mut seen = HashSet::new();
    for id in ids {
        let id = id.ok_or_else(|| SqsError::missing_parameter("Id"))?;
        let valid = !id.is_empty()
            && id.len() <= 80
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(SqsError::invalid_batch_entry_id());
        }
        if !seen.insert(id) {
            return Err(SqsError::batch_entry_ids_not_distinct(id));
        }
    }
    Ok(())
}

fn attributes_len(entry: &MessageInput) -> usize {
    entry
        .message_attributes
        .iter()
        .map(|(name, value)| {
            name.len()
                + value.data_type.as_deref().map_or(0, str::len)
                + value.string_value.as_deref().map_or(0, str::len)
                + value.binary_value.as_deref().map_or(0, |b| b.len() * 3 / 4)
        })
        .sum()
}

/// Checks one message to send; answers it with its delay.
fn check_message(
    input: MessageInput,
    max_size: usize,
    default_delay: u32,
) -> Result<(Checked, Duration), SqsError> {
    let delay = match input.delay_seconds {
        None => u64::from(default_delay),
        Some(d @ 0..=900) => d as u64,
        Some(d) => {
            return Err(SqsError::invalid_parameter(
                "DelaySeconds",
                d,
                "DelaySeconds must be >= 0 and <= 900.",
            ))
        }
    };
    if let Some(id) = &input.message_deduplication_id {
        return Err(SqsError::invalid_parameter(
            "MessageDeduplicationId",
            id,
            "The request include parameter that is not valid for this queue type.",
        ));
    }
    let group_id = input.message_group_id;
    let mut checked = message::check(
        input.message_body,
        input.message_attributes,
        input.message_system_attributes,
    )?;
    if checked.size > max_size {
        return Err(SqsError::invalid_parameter_value(format!(
            "One or more parameters are invalid. Reason: Message must be shorter than {max_size} bytes."
        )));
    }
    checked.group_id = group_id;
    Ok((checked, Duration::from_secs(delay)))
}

/// The stored content of a checked message, and the answer to its send.
fn prepare(checked: Checked, id: Option<String>) -> (SentOutput, Arc<Content>) {
    let message_id = uuid::Uuid::new_v4().to_string();
    let sent = SentOutput {
        id,
        message_id: message_id.clone(),
        md5_of_message_body: checked.md5_of_body.clone(),
        md5_of_message_attributes: checked.md5_of_attributes.clone(),
        md5_of_message_system_attributes: checked.md5_of_system_attributes.clone(),
    };
    let content = Arc::new(Content {
        message_id,
        body: checked.body,
        md5_of_body: checked.md5_of_body,
        attributes: checked.attributes,
        md5_of_attributes: checked.md5_of_attributes,
        trace_header: checked.trace_header,
        group_id: checked.group_id,
        sent_timestamp_ms: now_ms(),
        dead_letter_source_arn: None,
    });
    (sent, content)
}

/// Moves messages taken out of `source` by its redrive policy into `target`.
fn dead_letter(source: &Queue, target: &Queue, letters: Vec<DeadLetter>) {
    let mut inner = target.lock();
    let now = Instant::now();
    for letter in letters {
        let content = &letter.content;
        let moved = Arc::new(Content {
            message_id: content.message_id.clone(),
            body: content.body.clone(),
            md5_of_body: content.md5_of_body.clone(),
            attributes: content.attributes.clone(),
            md5_of_attributes: content.md5_of_attributes.clone(),
            trace_header: content.trace_header.clone(),
            group_id: content.group_id.clone(),
            sent_timestamp_ms: content.sent_timestamp_ms,
            dead_letter_source_arn: Some(source.arn.clone()),
        });
        inner.state.accept_dead_letter(
            DeadLetter {
                content: moved,
                ..letter
            },
            now,
        );
    }
    let wake = inner.state.take_wake();
    drop(inner);
    if wake {
        target.arrivals.notify_waiters();
    }
}

fn change_visibility(
    state: &mut QueueState,
    handle: &str,
    timeout: Option<i64>,
) -> Result<(), SqsError> {
    let timeout = timeout.ok_or_else(|| SqsError::missing_parameter("VisibilityTimeout"))?;
    if !(0..=MAX_VISIBILITY_SECONDS as i64).contains(&timeout) {
        return Err(SqsError::invalid_parameter(
            "VisibilityTimeout",
            timeout,
            "Must be between 0 and 43200, if provided.",
        ));
    }
    state
        .change_visibility(handle, Duration::from_secs(timeout as u64), Instant::now())
        .map_err(|e| handle_error(e, handle, timeout))
}

fn handle_error(error: HandleError, handle: &str, timeout: i64) -> SqsError {
    match error {
        HandleError::Invalid => SqsError::receipt_handle_is_invalid(handle),
        HandleError::Stale => SqsError::invalid_parameter(
            "ReceiptHandle",
            handle,
            "Message does not exist or is not available for visibility timeout change.",
        ),
        HandleError::NotInFlight => SqsError::message_not_inflight(),
        HandleError::BeyondMaximum => SqsError::invalid_parameter(
            "VisibilityTimeout",
            timeout,
            "Total VisibilityTimeout for the message is beyond the limit [43200 seconds]",
        ),
    }
}

/// Which system and message attributes a receive asked for.
struct WantedAttributes<'a> {
    system: HashSet<&'static str>,
    all_messages: bool,
    message_names: Vec<&'a str>,
    message_prefixes: Vec<&'a str>,
}

const SYSTEM_ATTRIBUTES: [&str; 7] = [
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
    "MessageGroupId",
];

impl<'a> WantedAttributes<'a> {
    fn new<'n>(system: impl Iterator<Item = &'n String>, messages: &'a [String]) -> Self {
        let mut wanted = HashSet::new();
        for name in system {
            if name == "All" {
                wanted.extend(SYSTEM_ATTRIBUTES);
            } else if let Some(known) = SYSTEM_ATTRIBUTES.iter().find(|n| **n == name) {
                wanted.insert(*known);
            }
        }
        let mut all_messages = false;
        let mut message_names = Vec::new();
        let mut message_prefixes = Vec::new();
        for name in messages {
            match name.as_str() {
                "All" | ".*" => all_messages = true,
                n => match n.strip_suffix(".*") {
                    Some(prefix) => message_prefixes.push(prefix),
                    None => message_names.push(n),
                },
            }
        }
        Self {
            system: wanted,
            all_messages,
            message_names,
            message_prefixes,
        }
    }

    fn render<'d>(&self, delivery: &'d super::queue::Delivery) -> MessageOutput<'d> {
        let content = &delivery.content;
        let mut attributes = BTreeMap::new();
        for name in &self.system {
            let value = match *name {
                "SenderId" => Some(SENDER_ID.to_owned()),
                "SentTimestamp" => Some(content.sent_timestamp_ms.to_string()),
                "ApproximateReceiveCount" => Some(delivery.receive_count.to_string()),
                "ApproximateFirstReceiveTimestamp" => Some(delivery.first_receive_ms.to_string()),
                "AWSTraceHeader" => content.trace_header.clone(),
                "DeadLetterQueueSourceArn" => content.dead_letter_source_arn.clone(),
                "MessageGroupId" => content.group_id.clone(),
                _ => None,
            };
            if let Some(value) = value {
                attributes.insert(*name, value);
            }
        }
        let message_attributes: BTreeMap<&str, AttributeValueOutput<'_>> = content
            .attributes
            .iter()
            .filter(|(name, _)| {
                self.all_messages
                    || self.message_names.iter().any(|n| n == name)
                    || self
                        .message_prefixes
                        .iter()
                        .any(|p| name.starts_with(p) && name[p.len()..].starts_with('.'))
            })
            .map(|(name, attribute)| {
                let (string_value, binary_value) = match &attribute.value {
                    AttributeValue::String(s) => (Some(s.as_str()), None),
                    AttributeValue::Binary(b) => (
                        None,
                        Some(base64::engine::general_purpose::STANDARD.encode(b)),
                    ),
                };
                (
                    name.as_str(),
                    AttributeValueOutput {
                        data_type: &attribute.data_type,
                        string_value,
                        binary_value,
                    },
                )
            })
            .collect();
        MessageOutput {
            message_id: &content.message_id,
            receipt_handle: &delivery.receipt_handle,
            md5_of_body: &content.md5_of_body,
            body: &content.body,
            attributes,
            // SQS digests the attributes it returns: all of them (the digest of the send),
            // or the subset asked for.
            md5_of_message_attributes: if message_attributes.is_empty() {
                None
            } else if message_attributes.len() == content.attributes.len() {
                content.md5_of_attributes.clone()
            } else {
                Some(message::md5_of_attributes(
                    &content
                        .attributes
                        .iter()
                        .filter(|(name, _)| message_attributes.contains_key(name.as_str()))
                        .map(|(name, a)| (name.clone(), a.clone()))
                        .collect(),
                ))
            },
            message_attributes,
        }
    }
}
