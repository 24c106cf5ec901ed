//! SQS semantics, asserted the same way against two endpoints through `aws-sdk-sqs`:
//! moto (`AWS_ENDPOINT_URL_SQS`, default `http://127.0.0.1:5000`) and Ebra's embedded
//! endpoint (`ebra::local::sqs_server`, one per test process). Every check runs twice,
//! as `moto::<check>` and `embedded::<check>`.
//!
//! The expected values are AWS's documented behaviour (the SQS API reference, the error
//! codes of SQS's Smithy model that the SDK matches its typed errors on). Where moto
//! deviates, [`Endpoint::expect`] asserts AWS's value on the embedded endpoint and moto's
//! own value on moto, with the deviation stated: a moto that changes fails here instead of
//! passing silently, and nothing is asserted more weakly for it.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError;
use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
use aws_sdk_sqs::operation::send_message::SendMessageError;
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use md5::{Digest as _, Md5};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Moto,
    Embedded,
}

struct Endpoint {
    target: Target,
    url: String,
    sqs: Client,
    /// Makes this test's queue names unique on a shared endpoint.
    prefix: String,
}

impl Endpoint {
    fn new(target: Target) -> Self {
        let url = match target {
            Target::Moto => common::moto_endpoint(),
            Target::Embedded => common::embedded_sqs().endpoint().to_owned(),
        };
        let prefix = format!("conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self {
            target,
            sqs: common::sqs_client(&url),
            url,
            prefix,
        }
    }

    /// AWS's value on the embedded endpoint; on moto, AWS's value too unless a deviation
    /// is stated, in which case moto's actual value is pinned (and `why` says how it
    /// differs from AWS).
    fn expect<T: PartialEq + Debug>(&self, what: &str, actual: T, aws: T, moto: Option<(T, &str)>) {
        match (self.target, moto) {
            (Target::Moto, Some((deviation, why))) => assert_eq!(
                actual, deviation,
                "{what}: moto's known deviation from AWS changed ({why}); AWS answers {aws:?}"
            ),
            _ => assert_eq!(actual, aws, "{what} on {:?} ({})", self.target, self.url),
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    async fn queue(&self, suffix: &str, attributes: &[(QueueAttributeName, &str)]) -> String {
        let mut request = self.sqs.create_queue().queue_name(self.name(suffix));
        for (name, value) in attributes {
            request = request.attributes(name.clone(), *value);
        }
        match request.send().await {
            Ok(output) => output.queue_url.expect("CreateQueue returns the queue URL"),
            Err(error) => panic!(
                "CreateQueue on {:?} at {} failed: {}.\nStart moto with `moto_server -p 5000` \
                 (pip install 'moto[server]') or set AWS_ENDPOINT_URL_SQS.",
                self.target,
                self.url,
                aws_sdk_sqs::error::DisplayErrorContext(error)
            ),
        }
    }

    async fn attributes(&self, url: &str) -> BTreeMap<String, String> {
        self.sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect()
    }

    /// (visible, in flight, delayed)
    async fn depth(&self, url: &str) -> (u64, u64, u64) {
        let a = self.attributes(url).await;
        let n = |k: &str| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        (
            n("ApproximateNumberOfMessages"),
            n("ApproximateNumberOfMessagesNotVisible"),
            n("ApproximateNumberOfMessagesDelayed"),
        )
    }

    async fn send(&self, url: &str, body: &str) -> String {
        self.sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .expect("SendMessage")
            .message_id
            .expect("a message id")
    }

    async fn receive(&self, url: &str, max: i32, visibility: i32, wait: i32) -> Vec<Message> {
        self.sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max)
            .visibility_timeout(visibility)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("ReceiveMessage")
            .messages
            .unwrap_or_default()
    }

    async fn delete_queues(&self, urls: &[&str]) {
        for url in urls {
            let _ = self.sqs.delete_queue().queue_url(*url).send().await;
        }
    }
}

/// The code the SDK reports for a service error (the `x-amzn-query-error` code when sent).
fn code<T: Debug, E: ProvideErrorMetadata + Debug, R: Debug>(
    result: Result<T, SdkError<E, R>>,
) -> String {
    match result {
        Ok(output) => panic!("expected an SQS error, got {output:?}"),
        Err(SdkError::ServiceError(error)) => error
            .err()
            .code()
            .unwrap_or_else(|| panic!("an error without a code: {error:?}"))
            .to_owned(),
        Err(other) => panic!("expected a service error, got {other:?}"),
    }
}

/// `accepted` when the request succeeded, else its error code: for checks where moto
/// accepts what AWS refuses.
fn outcome<T: Debug, E: ProvideErrorMetadata + Debug, R: Debug>(
    result: Result<T, SdkError<E, R>>,
    accepted: &str,
) -> String {
    match result {
        Ok(_) => accepted.to_owned(),
        Err(error) => code::<T, E, R>(Err(error)),
    }
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn system_attribute(message: &Message, name: MessageSystemAttributeName) -> String {
    message
        .attributes
        .as_ref()
        .and_then(|a| a.get(&name).cloned())
        .unwrap_or_else(|| panic!("message without its {name:?} attribute: {message:?}"))
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const NON_EXISTENT_QUEUE: &str = "AWS.SimpleQueueService.NonExistentQueue";

// ---- the checks ----

async fn queue_lifecycle(e: &Endpoint) {
    let url = e.queue("life", &[]).await;
    assert!(url.ends_with(&format!("/{}", e.name("life"))), "{url}");
    assert_eq!(e.queue("life", &[]).await, url, "CreateQueue is idempotent");
    let conflict = e
        .sqs
        .create_queue()
        .queue_name(e.name("life"))
        .attributes(QueueAttributeName::VisibilityTimeout, "45")
        .send()
        .await;
    assert_eq!(code(conflict), "QueueAlreadyExists");

    let got = e
        .sqs
        .get_queue_url()
        .queue_name(e.name("life"))
        .send()
        .await
        .expect("GetQueueUrl");
    assert_eq!(got.queue_url.as_deref(), Some(url.as_str()));
    let listed = e
        .sqs
        .list_queues()
        .queue_name_prefix(&e.prefix)
        .send()
        .await
        .expect("ListQueues");
    assert_eq!(listed.queue_urls(), std::slice::from_ref(&url));

    e.sqs
        .delete_queue()
        .queue_url(&url)
        .send()
        .await
        .expect("DeleteQueue");
    let missing = e
        .sqs
        .get_queue_url()
        .queue_name(e.name("life"))
        .send()
        .await;
    assert!(
        matches!(
            missing.as_ref().map_err(|e| e.as_service_error()),
            Err(Some(GetQueueUrlError::QueueDoesNotExist(_)))
        ),
        "{missing:?}"
    );
    assert_eq!(code(missing), NON_EXISTENT_QUEUE);
    let send = e
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body("x")
        .send()
        .await;
    assert!(
        matches!(
            send.as_ref().map_err(|e| e.as_service_error()),
            Err(Some(SendMessageError::QueueDoesNotExist(_)))
        ),
        "{send:?}"
    );
    for result in [
        code(e.sqs.receive_message().queue_url(&url).send().await),
        code(e.sqs.get_queue_attributes().queue_url(&url).send().await),
        code(e.sqs.purge_queue().queue_url(&url).send().await),
    ] {
        assert_eq!(result, NON_EXISTENT_QUEUE);
    }

    let recreated = e.sqs.create_queue().queue_name(e.name("life")).send().await;
    let recreated_url = recreated.as_ref().ok().and_then(|o| o.queue_url.clone());
    e.expect(
        "CreateQueue within 60 s of deleting the name",
        outcome(recreated, "created"),
        "AWS.SimpleQueueService.QueueDeletedRecently".to_owned(),
        Some((
            "created".to_owned(),
            "moto lets a deleted queue's name be reused at once",
        )),
    );
    if let Some(url) = recreated_url {
        e.delete_queues(&[&url]).await;
    }
}

async fn invalid_queue_names(e: &Endpoint) {
    for bad in ["has space", "dot.ted", &"x".repeat(81)] {
        let result = e.sqs.create_queue().queue_name(bad).send().await;
        e.expect(
            &format!("CreateQueue {bad:?}"),
            code(result),
            "InvalidParameterValue".to_owned(),
            None,
        );
    }
}

async fn queue_attributes(e: &Endpoint) {
    let dlq = e.queue("attr-dlq", &[]).await;
    let dlq_arn = e.attributes(&dlq).await["QueueArn"].clone();
    let redrive = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"3"}}"#);
    let url = e
        .queue(
            "attr",
            &[
                (QueueAttributeName::VisibilityTimeout, "45"),
                (QueueAttributeName::DelaySeconds, "2"),
                (QueueAttributeName::MessageRetentionPeriod, "3600"),
                (QueueAttributeName::ReceiveMessageWaitTimeSeconds, "3"),
                (QueueAttributeName::MaximumMessageSize, "2048"),
                (QueueAttributeName::RedrivePolicy, &redrive),
            ],
        )
        .await;
    let a = e.attributes(&url).await;
    for (name, value) in [
        ("VisibilityTimeout", "45"),
        ("DelaySeconds", "2"),
        ("MessageRetentionPeriod", "3600"),
        ("ReceiveMessageWaitTimeSeconds", "3"),
        ("MaximumMessageSize", "2048"),
        ("ApproximateNumberOfMessages", "0"),
        ("ApproximateNumberOfMessagesNotVisible", "0"),
        ("ApproximateNumberOfMessagesDelayed", "0"),
    ] {
        assert_eq!(
            a.get(name).map(String::as_str),
            Some(value),
            "{name} in {a:?}"
        );
    }
    let arn = &a["QueueArn"];
    assert!(
        arn.starts_with("arn:aws:sqs:") && arn.ends_with(&format!(":{}", e.name("attr"))),
        "{arn}"
    );
    e.expect(
        "CreatedTimestamp is whole epoch seconds",
        a["CreatedTimestamp"].parse::<u64>().is_ok(),
        true,
        Some((
            false,
            "moto gives epoch seconds with a fraction (\"1796009352.208022\")",
        )),
    );
    let policy: serde_json::Value =
        serde_json::from_str(&a["RedrivePolicy"]).expect("RedrivePolicy is JSON");
    assert_eq!(policy["deadLetterTargetArn"], dlq_arn.as_str());
    // AWS returns maxReceiveCount as a JSON number, whatever form it was set in.
    assert_eq!(
        policy["maxReceiveCount"], 3,
        "a number, though set as a string"
    );

    e.sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .send()
        .await
        .expect("SetQueueAttributes");
    assert_eq!(e.attributes(&url).await["VisibilityTimeout"], "60");

    let too_long = e
        .sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::VisibilityTimeout, "43201")
        .send()
        .await;
    e.expect(
        "SetQueueAttributes VisibilityTimeout=43201",
        outcome(too_long, "accepted"),
        "InvalidAttributeValue".to_owned(),
        Some((
            "accepted".to_owned(),
            "moto does not check the range of VisibilityTimeout (0 to 43200)",
        )),
    );
    let unknown = e
        .sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::from("Colour"))
        .send()
        .await;
    e.expect(
        "GetQueueAttributes of an unknown name",
        code(unknown),
        "InvalidAttributeName".to_owned(),
        None,
    );
    let missing_dlq = e
        .sqs
        .create_queue()
        .queue_name(e.name("attr-orphan"))
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}-gone","maxReceiveCount":"3"}}"#),
        )
        .send()
        .await;
    e.expect(
        "a redrive policy naming a queue that does not exist",
        code(missing_dlq),
        // "Value … for parameter RedrivePolicy is invalid. Reason: Dead letter target does
        // not exist."
        "InvalidParameterValue".to_owned(),
        Some((
            NON_EXISTENT_QUEUE.to_owned(),
            "moto answers that the queue being created does not exist",
        )),
    );
    e.delete_queues(&[&url, &dlq]).await;
}

async fn send_receive_delete(e: &Endpoint) {
    let url = e.queue("srd", &[]).await;
    let body = r#"{"callId":"5f0c","note":"héllo ☎"}"#;
    let sent = e
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body(body)
        .send()
        .await
        .expect("SendMessage");
    assert_eq!(
        sent.md5_of_message_body(),
        Some(md5_hex(body.as_bytes()).as_str())
    );
    let before = epoch_ms();
    let got = e.receive(&url, 10, 30, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let message = &got[0];
    assert_eq!(message.message_id(), sent.message_id());
    assert_eq!(message.body(), Some(body));
    assert_eq!(
        message.md5_of_body(),
        Some(md5_hex(body.as_bytes()).as_str())
    );
    assert_eq!(
        system_attribute(message, MessageSystemAttributeName::ApproximateReceiveCount),
        "1"
    );
    let sent_at: u64 = system_attribute(message, MessageSystemAttributeName::SentTimestamp)
        .parse()
        .expect("SentTimestamp in epoch ms");
    assert!(
        sent_at.abs_diff(before) < 10_000,
        "SentTimestamp {sent_at} vs now {before}"
    );
    let first: u64 = system_attribute(
        message,
        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
    )
    .parse()
    .expect("ApproximateFirstReceiveTimestamp in epoch ms");
    assert!(
        first >= sent_at,
        "first receive {first} before the send {sent_at}"
    );
    system_attribute(message, MessageSystemAttributeName::SenderId);
    assert_eq!(e.depth(&url).await, (0, 1, 0));

    let handle = message.receipt_handle().expect("a receipt handle");
    e.sqs
        .delete_message()
        .queue_url(&url)
        .receipt_handle(handle)
        .send()
        .await
        .expect("DeleteMessage");
    assert_eq!(e.depth(&url).await, (0, 0, 0));
    // The API reference: deleting with a handle whose message is gone still succeeds.
    e.sqs
        .delete_message()
        .queue_url(&url)
        .receipt_handle(handle)
        .send()
        .await
        .expect("DeleteMessage again with the same handle");
    let bad = e
        .sqs
        .delete_message()
        .queue_url(&url)
        .receipt_handle("not-a-receipt-handle")
        .send()
        .await;
    assert_eq!(code(bad), "ReceiptHandleIsInvalid");
    e.delete_queues(&[&url]).await;
}

async fn visibility_timeout_brings_a_message_back(e: &Endpoint) {
    let url = e.queue("vis", &[]).await;
    let id = e.send(&url, "again").await;
    let first = e.receive(&url, 1, 1, 0).await;
    assert_eq!(first.len(), 1);
    assert!(
        e.receive(&url, 1, 1, 0).await.is_empty(),
        "hidden while in flight"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = e.receive(&url, 1, 30, 2).await;
    assert_eq!(second.len(), 1, "back after its visibility timeout");
    assert_eq!(second[0].message_id(), Some(id.as_str()));
    assert_eq!(
        system_attribute(
            &second[0],
            MessageSystemAttributeName::ApproximateReceiveCount
        ),
        "2"
    );
    assert_ne!(second[0].receipt_handle(), first[0].receipt_handle());
    assert_eq!(
        system_attribute(
            &second[0],
            MessageSystemAttributeName::ApproximateFirstReceiveTimestamp
        ),
        system_attribute(
            &first[0],
            MessageSystemAttributeName::ApproximateFirstReceiveTimestamp
        ),
    );
    e.delete_queues(&[&url]).await;
}

async fn change_message_visibility(e: &Endpoint) {
    let url = e.queue("cmv", &[]).await;
    e.send(&url, "a").await;
    let handle = e.receive(&url, 1, 30, 1).await[0]
        .receipt_handle()
        .expect("handle")
        .to_owned();
    e.sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&handle)
        .visibility_timeout(0)
        .send()
        .await
        .expect("ChangeMessageVisibility 0");
    let again = e.receive(&url, 1, 30, 1).await;
    assert_eq!(again.len(), 1, "visible at once after a change to 0");
    let handle = again[0].receipt_handle().expect("handle").to_owned();

    let too_long = e
        .sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&handle)
        .visibility_timeout(43_201)
        .send()
        .await;
    assert_eq!(code(too_long), "InvalidParameterValue");

    let garbage = e
        .sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle("not-a-receipt-handle")
        .visibility_timeout(5)
        .send()
        .await;
    assert!(
        matches!(
            garbage.as_ref().map_err(|e| e.as_service_error()),
            Err(Some(ChangeMessageVisibilityError::ReceiptHandleIsInvalid(
                _
            )))
        ),
        "{garbage:?}"
    );

    let batch = e
        .sqs
        .change_message_visibility_batch()
        .queue_url(&url)
        .entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("good")
                .receipt_handle(&handle)
                .visibility_timeout(0)
                .build()
                .expect("entry"),
        )
        .entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("bad")
                .receipt_handle("not-a-receipt-handle")
                .visibility_timeout(0)
                .build()
                .expect("entry"),
        )
        .send()
        .await
        .expect("ChangeMessageVisibilityBatch answers a partial failure with 200");
    let ok: Vec<&str> = batch.successful().iter().map(|s| s.id()).collect();
    assert_eq!(ok, ["good"]);
    assert_eq!(batch.failed().len(), 1);
    let failed = &batch.failed()[0];
    assert_eq!(failed.id(), "bad");
    assert_eq!(failed.code(), "ReceiptHandleIsInvalid");
    assert!(failed.sender_fault());

    // A handle whose visibility timeout has run out: the message is not in flight.
    let short = e.receive(&url, 1, 1, 1).await;
    assert_eq!(short.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = e
        .sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(short[0].receipt_handle().expect("handle"))
        .visibility_timeout(10)
        .send()
        .await;
    e.expect(
        "ChangeMessageVisibility after the visibility timeout ran out",
        outcome(expired, "accepted"),
        "AWS.SimpleQueueService.MessageNotInflight".to_owned(),
        Some((
            "accepted".to_owned(),
            "moto changes the visibility of a message that is no longer in flight",
        )),
    );
    e.delete_queues(&[&url]).await;
}

async fn delays(e: &Endpoint) {
    let url = e
        .queue("delay", &[(QueueAttributeName::DelaySeconds, "1")])
        .await;
    e.send(&url, "queue default delay").await;
    assert_eq!(
        e.depth(&url).await,
        (0, 0, 1),
        "delayed by the queue's default"
    );
    assert!(e.receive(&url, 10, 30, 0).await.is_empty());
    e.sqs
        .send_message()
        .queue_url(&url)
        .message_body("no delay")
        .delay_seconds(0)
        .send()
        .await
        .expect("SendMessage DelaySeconds=0");
    let now = e.receive(&url, 10, 30, 0).await;
    assert_eq!(
        now.iter().filter_map(|m| m.body()).collect::<Vec<_>>(),
        ["no delay"],
        "an explicit 0 overrides the queue's delay"
    );
    let too_long = e
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body("x")
        .delay_seconds(901)
        .send()
        .await;
    assert_eq!(code(too_long), "InvalidParameterValue");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = e.receive(&url, 10, 30, 2).await;
    assert_eq!(
        later.iter().filter_map(|m| m.body()).collect::<Vec<_>>(),
        ["queue default delay"]
    );
    e.delete_queues(&[&url]).await;
}

async fn long_poll_wakes_when_a_message_arrives(e: &Endpoint) {
    let url = e.queue("poll", &[]).await;
    let started = Instant::now();
    let waiting = {
        let sqs = e.sqs.clone();
        let url = url.clone();
        tokio::spawn(async move {
            sqs.receive_message()
                .queue_url(url)
                .wait_time_seconds(10)
                .send()
                .await
                .map(|o| o.messages.unwrap_or_default())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.send(&url, "wake up").await;
    let got = waiting.await.expect("task").expect("ReceiveMessage");
    let elapsed = started.elapsed();
    assert_eq!(got.len(), 1);
    assert!(
        elapsed < Duration::from_secs(3),
        "the long poll answered after {elapsed:?}, not when the message arrived"
    );

    let started = Instant::now();
    assert!(e.receive(&url, 1, 30, 1).await.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "an empty long poll waits its WaitTimeSeconds ({:?})",
        started.elapsed()
    );
    e.delete_queues(&[&url]).await;
}

async fn long_poll_wakes_when_a_delay_ends(e: &Endpoint) {
    let url = e.queue("polldelay", &[]).await;
    e.sqs
        .send_message()
        .queue_url(&url)
        .message_body("soon")
        .delay_seconds(1)
        .send()
        .await
        .expect("SendMessage");
    let started = Instant::now();
    let got = e.receive(&url, 1, 30, 5).await;
    let elapsed = started.elapsed();
    assert_eq!(got.len(), 1, "the delayed message arrives within the poll");
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    e.delete_queues(&[&url]).await;
}

async fn receive_limits(e: &Endpoint) {
    let url = e.queue("recv", &[]).await;
    for (what, result) in [
        (
            "MaxNumberOfMessages=11",
            code(
                e.sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(11)
                    .send()
                    .await,
            ),
        ),
        (
            "MaxNumberOfMessages=0",
            code(
                e.sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(0)
                    .send()
                    .await,
            ),
        ),
        (
            "WaitTimeSeconds=21",
            code(
                e.sqs
                    .receive_message()
                    .queue_url(&url)
                    .wait_time_seconds(21)
                    .send()
                    .await,
            ),
        ),
        (
            "VisibilityTimeout=43201",
            code(
                e.sqs
                    .receive_message()
                    .queue_url(&url)
                    .visibility_timeout(43_201)
                    .send()
                    .await,
            ),
        ),
    ] {
        assert_eq!(result, "InvalidParameterValue", "{what}");
    }
    for chunk in 0..3 {
        let mut batch = e.sqs.send_message_batch().queue_url(&url);
        for i in 0..5 {
            batch = batch.entries(
                SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(format!("{chunk}-{i}"))
                    .build()
                    .expect("entry"),
            );
        }
        let sent = batch.send().await.expect("SendMessageBatch");
        assert_eq!(sent.successful().len(), 5);
    }
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let got = e.receive(&url, 10, 30, 0).await;
        assert!(
            got.len() <= 10,
            "{} messages for MaxNumberOfMessages=10",
            got.len()
        );
        seen.extend(got.iter().filter_map(|m| m.message_id().map(str::to_owned)));
        if seen.len() == 15 {
            break;
        }
    }
    assert_eq!(seen.len(), 15, "every message received once");
    e.delete_queues(&[&url]).await;
}

fn entry(id: &str, body: &str) -> SendMessageBatchRequestEntry {
    SendMessageBatchRequestEntry::builder()
        .id(id)
        .message_body(body)
        .build()
        .expect("entry")
}

async fn batch_limits(e: &Endpoint) {
    let url = e.queue("batch", &[]).await;
    let mut eleven = e.sqs.send_message_batch().queue_url(&url);
    for i in 0..11 {
        eleven = eleven.entries(entry(&format!("e{i}"), "x"));
    }
    let eleven = eleven.send().await;
    assert!(
        matches!(
            eleven.as_ref().map_err(|e| e.as_service_error()),
            Err(Some(SendMessageBatchError::TooManyEntriesInBatchRequest(_)))
        ),
        "{eleven:?}"
    );
    e.expect(
        "11 entries",
        code(eleven),
        "AWS.SimpleQueueService.TooManyEntriesInBatchRequest".to_owned(),
        None,
    );
    let empty = e
        .sqs
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(Vec::new()))
        .send()
        .await;
    e.expect(
        "no entries",
        code(empty),
        "AWS.SimpleQueueService.EmptyBatchRequest".to_owned(),
        None,
    );
    let twice = e
        .sqs
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("same", "a"))
        .entries(entry("same", "b"))
        .send()
        .await;
    e.expect(
        "repeated ids",
        code(twice),
        "AWS.SimpleQueueService.BatchEntryIdsNotDistinct".to_owned(),
        None,
    );
    let bad_id = e
        .sqs
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("not ok!", "a"))
        .send()
        .await;
    e.expect(
        "an id with a space",
        code(bad_id),
        "AWS.SimpleQueueService.InvalidBatchEntryId".to_owned(),
        None,
    );
    let big = "b".repeat(600 * 1024);
    let too_long = e
        .sqs
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("one", &big))
        .entries(entry("two", &big))
        .send()
        .await;
    e.expect(
        "a batch over 1 MiB",
        code(too_long),
        "AWS.SimpleQueueService.BatchRequestTooLong".to_owned(),
        None,
    );

    let partial = e
        .sqs
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("ok", "fine"))
        .entries(
            SendMessageBatchRequestEntry::builder()
                .id("late")
                .message_body("too late")
                .delay_seconds(901)
                .build()
                .expect("entry"),
        )
        .send()
        .await;
    // A partial failure is a 200 listing the refused entries under Failed.
    e.expect(
        "the SDK reads a SendMessageBatch partial failure",
        partial.is_ok(),
        true,
        Some((
            false,
            "moto sends the Failed entry's SenderFault as the string \"true\" (and the message \
             HTML-escaped, naming 1800 whatever the value); the SDK cannot parse the response",
        )),
    );
    if let Ok(partial) = partial {
        assert_eq!(partial.successful().len(), 1);
        assert_eq!(partial.successful()[0].id(), "ok");
        assert_eq!(
            partial.successful()[0].md5_of_message_body(),
            md5_hex(b"fine")
        );
        assert_eq!(partial.failed().len(), 1);
        assert_eq!(partial.failed()[0].id(), "late");
        assert_eq!(partial.failed()[0].code(), "InvalidParameterValue");
        assert!(partial.failed()[0].sender_fault());
    }

    let received = e.receive(&url, 10, 30, 1).await;
    assert_eq!(received.len(), 1);
    let handle = received[0].receipt_handle().expect("handle");
    let deleted = e
        .sqs
        .delete_message_batch()
        .queue_url(&url)
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("real")
                .receipt_handle(handle)
                .build()
                .expect("entry"),
        )
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("fake")
                .receipt_handle("not-a-receipt-handle")
                .build()
                .expect("entry"),
        )
        .send()
        .await
        .expect("DeleteMessageBatch answers a partial failure with 200");
    assert_eq!(
        deleted
            .successful()
            .iter()
            .map(|s| s.id())
            .collect::<Vec<_>>(),
        ["real"]
    );
    assert_eq!(deleted.failed().len(), 1);
    assert_eq!(deleted.failed()[0].id(), "fake");
    assert_eq!(deleted.failed()[0].code(), "ReceiptHandleIsInvalid");
    assert_eq!(e.depth(&url).await, (0, 0, 0));
    e.delete_queues(&[&url]).await;
}

async fn message_size_limits(e: &Endpoint) {
    let small = e
        .queue(
            "size-small",
            &[(QueueAttributeName::MaximumMessageSize, "1024")],
        )
        .await;
    e.send(&small, &"a".repeat(1024)).await;
    let over = e
        .sqs
        .send_message()
        .queue_url(&small)
        .message_body("a".repeat(1025))
        .send()
        .await;
    assert_eq!(code(over), "InvalidParameterValue");

    // The default limit is 1 MiB (SQS raised it from 256 KiB in 2025).
    let default = e.queue("size-default", &[]).await;
    assert_eq!(
        e.attributes(&default).await["MaximumMessageSize"],
        "1048576"
    );
    e.send(&default, &"a".repeat(1_048_576)).await;
    let over = e
        .sqs
        .send_message()
        .queue_url(&default)
        .message_body("a".repeat(1_048_577))
        .send()
        .await;
    assert_eq!(code(over), "InvalidParameterValue");
    e.delete_queues(&[&small, &default]).await;
}

async fn redrive_to_the_dead_letter_queue(e: &Endpoint) {
    let dlq = e.queue("redrive-dlq", &[]).await;
    let dlq_arn = e.attributes(&dlq).await["QueueArn"].clone();
    let url = e
        .queue(
            "redrive",
            &[(
                QueueAttributeName::RedrivePolicy,
                &format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}"#),
            )],
        )
        .await;
    let id = e.send(&url, "poison").await;
    for n in 1..=2 {
        let got = e.receive(&url, 1, 0, 1).await;
        assert_eq!(got.len(), 1, "receive {n} of maxReceiveCount 2");
        assert_eq!(
            system_attribute(&got[0], MessageSystemAttributeName::ApproximateReceiveCount),
            n.to_string()
        );
    }
    assert!(
        e.receive(&url, 1, 0, 1).await.is_empty(),
        "the receive after maxReceiveCount moves the message instead"
    );
    let dead = e.receive(&dlq, 1, 30, 2).await;
    assert_eq!(dead.len(), 1, "the message is in the DLQ");
    assert_eq!(dead[0].message_id(), Some(id.as_str()));
    assert_eq!(dead[0].body(), Some("poison"));
    assert_eq!(e.depth(&url).await, (0, 0, 0));
    e.delete_queues(&[&url, &dlq]).await;
}

async fn purge(e: &Endpoint) {
    let url = e.queue("purge", &[]).await;
    for i in 0..3 {
        e.send(&url, &format!("m{i}")).await;
    }
    e.receive(&url, 1, 30, 1).await;
    e.sqs
        .purge_queue()
        .queue_url(&url)
        .send()
        .await
        .expect("PurgeQueue");
    assert_eq!(e.depth(&url).await, (0, 0, 0));
    assert!(e.receive(&url, 10, 30, 0).await.is_empty());
    let again = e.sqs.purge_queue().queue_url(&url).send().await;
    e.expect(
        "a second PurgeQueue within 60 s",
        outcome(again, "purged"),
        "AWS.SimpleQueueService.PurgeQueueInProgress".to_owned(),
        Some((
            "purged".to_owned(),
            "moto allows any number of purges in a row",
        )),
    );
    e.delete_queues(&[&url]).await;
}

async fn message_attributes_round_trip(e: &Endpoint) {
    let url = e.queue("mattr", &[]).await;
    let string = |t: &str, v: &str| {
        MessageAttributeValue::builder()
            .data_type(t)
            .string_value(v)
            .build()
            .expect("attribute")
    };
    let sent = e
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body("with attributes")
        .message_attributes("colour", string("String", "blue"))
        .message_attributes("count", string("Number", "42"))
        .message_attributes(
            "blob",
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(Blob::new(vec![0u8, 1, 2, 255]))
                .build()
                .expect("attribute"),
        )
        .send()
        .await
        .expect("SendMessage with attributes");
    // The documented digest: per attribute in name order, length-prefixed name and type,
    // a transport byte (1 string/number, 2 binary), the length-prefixed value.
    let mut encoded = Vec::new();
    let mut put = |bytes: &[u8]| {
        encoded.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        encoded.extend_from_slice(bytes);
    };
    put(b"blob");
    put(b"Binary");
    let mut tail = vec![2u8];
    tail.extend_from_slice(&4u32.to_be_bytes());
    tail.extend_from_slice(&[0, 1, 2, 255]);
    encoded.extend_from_slice(&tail);
    for (name, data_type, value) in [("colour", "String", "blue"), ("count", "Number", "42")] {
        for part in [name.as_bytes(), data_type.as_bytes()] {
            encoded.extend_from_slice(&(part.len() as u32).to_be_bytes());
            encoded.extend_from_slice(part);
        }
        encoded.push(1);
        encoded.extend_from_slice(&(value.len() as u32).to_be_bytes());
        encoded.extend_from_slice(value.as_bytes());
    }
    let digest = md5_hex(&encoded);
    assert_eq!(sent.md5_of_message_attributes(), Some(digest.as_str()));

    let got = e
        .sqs
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .wait_time_seconds(1)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default();
    assert_eq!(got.len(), 1);
    let attributes = got[0].message_attributes().expect("message attributes");
    assert_eq!(attributes["colour"].string_value(), Some("blue"));
    assert_eq!(attributes["count"].data_type(), "Number");
    assert_eq!(
        attributes["blob"]
            .binary_value()
            .map(|b| b.as_ref().to_vec()),
        Some(vec![0, 1, 2, 255])
    );
    assert_eq!(got[0].md5_of_message_attributes(), Some(digest.as_str()));

    let reserved = e
        .sqs
        .send_message()
        .queue_url(&url)
        .message_body("x")
        .message_attributes("AWS.reserved", string("String", "x"))
        .send()
        .await;
    e.expect(
        "a message attribute named AWS.*",
        outcome(reserved, "accepted"),
        "InvalidParameterValue".to_owned(),
        Some((
            "accepted".to_owned(),
            "moto accepts attribute names SQS reserves (AWS. and Amazon. prefixes)",
        )),
    );
    e.delete_queues(&[&url]).await;
}

async fn list_queues_in_pages(e: &Endpoint) {
    let urls = [
        e.queue("page-a", &[]).await,
        e.queue("page-b", &[]).await,
        e.queue("page-c", &[]).await,
    ];
    let mut listed = Vec::new();
    let mut pages = Vec::new();
    let mut token = None;
    for page in 0.. {
        assert!(page < 5, "ListQueues never ended");
        let output = e
            .sqs
            .list_queues()
            .queue_name_prefix(e.name("page"))
            .max_results(2)
            .set_next_token(token)
            .send()
            .await
            .expect("ListQueues");
        pages.push(output.queue_urls().len());
        listed.extend(output.queue_urls().iter().cloned());
        token = output.next_token;
        if token.is_none() {
            break;
        }
    }
    e.expect(
        "page sizes for 3 queues at MaxResults=2",
        pages,
        vec![2, 1],
        Some((
            vec![3],
            "moto ignores MaxResults and lists every queue at once",
        )),
    );
    listed.sort();
    assert_eq!(listed, urls.to_vec());
    e.delete_queues(&urls.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod moto {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(&super::Endpoint::new(super::Target::Moto)).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(&super::Endpoint::new(super::Target::Embedded)).await
                }
            )*
        }
    };
}

conformance!(
    queue_lifecycle,
    invalid_queue_names,
    queue_attributes,
    send_receive_delete,
    visibility_timeout_brings_a_message_back,
    change_message_visibility,
    delays,
    long_poll_wakes_when_a_message_arrives,
    long_poll_wakes_when_a_delay_ends,
    receive_limits,
    batch_limits,
    message_size_limits,
    redrive_to_the_dead_letter_queue,
    purge,
    message_attributes_round_trip,
    list_queues_in_pages,
);
