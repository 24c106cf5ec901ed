//! The JSON shapes of SQS's operations (AWS JSON 1.0: PascalCase members, blobs in
//! base64), and the operations this endpoint knows by their `X-Amz-Target` names.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Every operation of SQS's API: those served and those answered `UnsupportedOperation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    CreateQueue,
    GetQueueUrl,
    GetQueueAttributes,
    SetQueueAttributes,
    DeleteQueue,
    PurgeQueue,
    ListQueues,
    ListQueueTags,
    TagQueue,
    UntagQueue,
    ListDeadLetterSourceQueues,
    SendMessage,
    SendMessageBatch,
    ReceiveMessage,
    DeleteMessage,
    DeleteMessageBatch,
    ChangeMessageVisibility,
    ChangeMessageVisibilityBatch,
    AddPermission,
    RemovePermission,
    StartMessageMoveTask,
    CancelMessageMoveTask,
    ListMessageMoveTasks,
}

impl Operation {
    pub const ALL: [Operation; 23] = [
        Operation::CreateQueue,
        Operation::GetQueueUrl,
        Operation::GetQueueAttributes,
        Operation::SetQueueAttributes,
        Operation::DeleteQueue,
        Operation::PurgeQueue,
        Operation::ListQueues,
        Operation::ListQueueTags,
        Operation::TagQueue,
        Operation::UntagQueue,
        Operation::ListDeadLetterSourceQueues,
        Operation::SendMessage,
        Operation::SendMessageBatch,
        Operation::ReceiveMessage,
        Operation::DeleteMessage,
        Operation::DeleteMessageBatch,
        Operation::ChangeMessageVisibility,
        Operation::ChangeMessageVisibilityBatch,
        Operation::AddPermission,
        Operation::RemovePermission,
        Operation::StartMessageMoveTask,
        Operation::CancelMessageMoveTask,
        Operation::ListMessageMoveTasks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::CreateQueue => "CreateQueue",
            Operation::GetQueueUrl => "GetQueueUrl",
            Operation::GetQueueAttributes => "GetQueueAttributes",
            Operation::SetQueueAttributes => "SetQueueAttributes",
            Operation::DeleteQueue => "DeleteQueue",
            Operation::PurgeQueue => "PurgeQueue",
            Operation::ListQueues => "ListQueues",
            Operation::ListQueueTags => "ListQueueTags",
            Operation::TagQueue => "TagQueue",
            Operation::UntagQueue => "UntagQueue",
            Operation::ListDeadLetterSourceQueues => "ListDeadLetterSourceQueues",
            Operation::SendMessage => "SendMessage",
            Operation::SendMessageBatch => "SendMessageBatch",
            Operation::ReceiveMessage => "ReceiveMessage",
            Operation::DeleteMessage => "DeleteMessage",
            Operation::DeleteMessageBatch => "DeleteMessageBatch",
            Operation::ChangeMessageVisibility => "ChangeMessageVisibility",
            Operation::ChangeMessageVisibilityBatch => "ChangeMessageVisibilityBatch",
            Operation::AddPermission => "AddPermission",
            Operation::RemovePermission => "RemovePermission",
            Operation::StartMessageMoveTask => "StartMessageMoveTask",
            Operation::CancelMessageMoveTask => "CancelMessageMoveTask",
            Operation::ListMessageMoveTasks => "ListMessageMoveTasks",
        }
    }

    /// The operation an `X-Amz-Target` header names (`AmazonSQS.SendMessage`).
    pub fn from_target(target: &str) -> Option<Self> {
        let name = target.strip_prefix("AmazonSQS.")?;
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|op| *op == self).unwrap_or(0)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateQueueInput {
    pub queue_name: Option<String>,
    #[serde(default)]
    pub attributes: HashMap<String, String>,
    #[serde(default, rename = "tags")]
    pub tags: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetQueueUrlInput {
    pub queue_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueUrlInput {
    pub queue_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetQueueAttributesInput {
    pub queue_url: Option<String>,
    #[serde(default)]
    pub attribute_names: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SetQueueAttributesInput {
    pub queue_url: Option<String>,
    #[serde(default)]
    pub attributes: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListQueuesInput {
    pub queue_name_prefix: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListDeadLetterSourceQueuesInput {
    pub queue_url: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagQueueInput {
    pub queue_url: Option<String>,
    #[serde(default)]
    pub tags: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UntagQueueInput {
    pub queue_url: Option<String>,
    #[serde(default)]
    pub tag_keys: Vec<String>,
}

/// A message (or system) attribute as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributeValueInput {
    pub data_type: Option<String>,
    pub string_value: Option<String>,
    /// Base64, as AWS JSON carries blobs.
    pub binary_value: Option<String>,
    #[serde(default)]
    pub string_list_values: Vec<String>,
    #[serde(default)]
    pub binary_list_values: Vec<String>,
}

/// What `SendMessage` carries, and each entry of `SendMessageBatch` (with its `Id`, and
/// no `QueueUrl`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageInput {
    pub queue_url: Option<String>,
    pub id: Option<String>,
    pub message_body: Option<String>,
    pub delay_seconds: Option<i64>,
    #[serde(default)]
    pub message_attributes: HashMap<String, AttributeValueInput>,
    #[serde(default)]
    pub message_system_attributes: HashMap<String, AttributeValueInput>,
    pub message_deduplication_id: Option<String>,
    pub message_group_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageBatchInput {
    pub queue_url: Option<String>,
    #[serde(default)]
    pub entries: Vec<MessageInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReceiveMessageInput {
    pub queue_url: Option<String>,
    #[serde(default)]
    pub attribute_names: Vec<String>,
    #[serde(default)]
    pub message_system_attribute_names: Vec<String>,
    #[serde(default)]
    pub message_attribute_names: Vec<String>,
    pub max_number_of_messages: Option<i64>,
    pub visibility_timeout: Option<i64>,
    pub wait_time_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteMessageInput {
    pub queue_url: Option<String>,
    pub receipt_handle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChangeMessageVisibilityInput {
    pub queue_url: Option<String>,
    pub receipt_handle: Option<String>,
    pub visibility_timeout: Option<i64>,
}

/// An entry of `DeleteMessageBatch` or `ChangeMessageVisibilityBatch`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandleBatchEntry {
    pub id: Option<String>,
    pub receipt_handle: Option<String>,
    pub visibility_timeout: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandleBatchInput {
    pub queue_url: Option<String>,
    #[serde(default)]
    pub entries: Vec<HandleBatchEntry>,
}

// ---- outputs ----

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueUrlOutput {
    pub queue_url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributesOutput {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<&'static str, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListQueuesOutput {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub queue_urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ListDeadLetterSourceQueuesOutput {
    #[serde(rename = "queueUrls")]
    pub queue_urls: Vec<String>,
    #[serde(rename = "NextToken", skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagsOutput {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct SentOutput {
    #[serde(rename = "Id", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "MD5OfMessageBody")]
    pub md5_of_message_body: String,
    #[serde(
        rename = "MD5OfMessageAttributes",
        skip_serializing_if = "Option::is_none"
    )]
    pub md5_of_message_attributes: Option<String>,
    #[serde(
        rename = "MD5OfMessageSystemAttributes",
        skip_serializing_if = "Option::is_none"
    )]
    pub md5_of_message_system_attributes: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchOutput<T: Serialize> {
    pub successful: Vec<T>,
    pub failed: Vec<super::errors::BatchFailure>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IdOutput {
    pub id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReceiveOutput<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<MessageOutput<'a>>,
}

#[derive(Debug, Serialize)]
pub struct MessageOutput<'a> {
    #[serde(rename = "MessageId")]
    pub message_id: &'a str,
    #[serde(rename = "ReceiptHandle")]
    pub receipt_handle: &'a str,
    #[serde(rename = "MD5OfBody")]
    pub md5_of_body: &'a str,
    #[serde(rename = "Body")]
    pub body: &'a str,
    #[serde(rename = "Attributes", skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<&'static str, String>,
    #[serde(
        rename = "MD5OfMessageAttributes",
        skip_serializing_if = "Option::is_none"
    )]
    pub md5_of_message_attributes: Option<String>,
    #[serde(
        rename = "MessageAttributes",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub message_attributes: BTreeMap<&'a str, AttributeValueOutput<'a>>,
}

#[derive(Debug, Serialize)]
pub struct AttributeValueOutput<'a> {
    #[serde(rename = "DataType")]
    pub data_type: &'a str,
    #[serde(rename = "StringValue", skip_serializing_if = "Option::is_none")]
    pub string_value: Option<&'a str>,
    #[serde(rename = "BinaryValue", skip_serializing_if = "Option::is_none")]
    pub binary_value: Option<String>,
}
