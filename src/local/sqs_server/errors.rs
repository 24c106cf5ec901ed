//! SQS's errors as the AWS JSON 1.0 protocol carries them, and as `aws-sdk-sqs` reads them.
//!
//! SQS is "awsQueryCompatible": besides the JSON body's `__type` (the Smithy shape, e.g.
//! `com.amazonaws.sqs#QueueDoesNotExist`), every error carries the header
//! `x-amzn-query-error: <query code>;Sender`. The SDK takes the error code from that header
//! when present (`AWS.SimpleQueueService.NonExistentQueue`) and matches its typed errors
//! on it, so the header is what makes `SendMessageError::QueueDoesNotExist` come out.
//! Codes and HTTP statuses are the `awsQueryError` traits of SQS's Smithy model. Errors
//! SQS does not model (`InvalidParameterValue`, `MissingParameter`) use the query code
//! for both.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub const JSON_1_0: &str = "application/x-amz-json-1.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsError {
    pub status: StatusCode,
    /// The Smithy shape name (`__type`, after `com.amazonaws.sqs#`).
    pub shape: &'static str,
    /// The query-compatible code (`x-amzn-query-error`); what SDKs report as the code.
    pub code: &'static str,
    pub message: String,
}

impl SqsError {
    fn new(status: u16, shape: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            shape,
            code,
            message,
        }
    }

    pub fn queue_does_not_exist() -> Self {
        Self::new(
            400,
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.".to_owned(),
        )
    }

    pub fn queue_name_exists(attribute: &str) -> Self {
        Self::new(
            400,
            "QueueNameExists",
            "QueueAlreadyExists",
            format!(
                "A queue already exists with the same name and a different value for attribute {attribute}"
            ),
        )
    }

    pub fn queue_deleted_recently() -> Self {
        Self::new(
            400,
            "QueueDeletedRecently",
            "AWS.SimpleQueueService.QueueDeletedRecently",
            "You must wait 60 seconds after deleting a queue before you can create another queue with the same name."
                .to_owned(),
        )
    }

    pub fn receipt_handle_is_invalid(handle: &str) -> Self {
        Self::new(
            404,
            "ReceiptHandleIsInvalid",
            "ReceiptHandleIsInvalid",
            format!("The input receipt handle \"{handle}\" is not a valid receipt handle."),
        )
    }

    pub fn message_not_inflight() -> Self {
        Self::new(
            400,
            "MessageNotInflight",
            "AWS.SimpleQueueService.MessageNotInflight",
            "The specified message isn't in flight.".to_owned(),
        )
    }

    pub fn purge_queue_in_progress(queue_url: &str) -> Self {
        Self::new(
            403,
            "PurgeQueueInProgress",
            "AWS.SimpleQueueService.PurgeQueueInProgress",
            format!("Only one PurgeQueue operation on {queue_url} is allowed every 60 seconds."),
        )
    }

    pub fn over_limit(message: String) -> Self {
        Self::new(403, "OverLimit", "OverLimit", message)
    }

    pub fn empty_batch_request(entry: &str) -> Self {
        Self::new(
            400,
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            format!("There should be at least one {entry} in the request."),
        )
    }

    pub fn too_many_entries_in_batch_request(count: usize) -> Self {
        Self::new(
            400,
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            format!("Maximum number of entries per request are 10. You have sent {count}."),
        )
    }

    pub fn batch_entry_ids_not_distinct(id: &str) -> Self {
        Self::new(
            400,
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            format!("Id {id} repeated."),
        )
    }

    pub fn invalid_batch_entry_id() -> Self {
        Self::new(
            400,
            "InvalidBatchEntryId",
            "AWS.SimpleQueueService.InvalidBatchEntryId",
            "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long."
                .to_owned(),
        )
    }

    pub fn batch_request_too_long(limit: usize, length: usize) -> Self {
        Self::new(
            400,
            "BatchRequestTooLong",
            "AWS.SimpleQueueService.BatchRequestTooLong",
            format!(
                "Batch requests cannot be longer than {limit} bytes. You have sent {length} bytes."
            ),
        )
    }

    pub fn invalid_attribute_name(name: &str) -> Self {
        Self::new(
            400,
            "InvalidAttributeName",
            "InvalidAttributeName",
            format!("Unknown Attribute {name}."),
        )
    }

    pub fn invalid_attribute_value(name: &str) -> Self {
        Self::new(
            400,
            "InvalidAttributeValue",
            "InvalidAttributeValue",
            format!("Invalid value for the parameter {name}."),
        )
    }

    pub fn invalid_message_contents() -> Self {
        Self::new(
            400,
            "InvalidMessageContents",
            "InvalidMessageContents",
            "Invalid binary character in the message body (allowed: #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF)."
                .to_owned(),
        )
    }

    /// A parameter out of its range: SQS's `Value X for parameter P is invalid. Reason: R`.
    pub fn invalid_parameter(parameter: &str, value: impl std::fmt::Display, reason: &str) -> Self {
        Self::invalid_parameter_value(format!(
            "Value {value} for parameter {parameter} is invalid. Reason: {reason}"
        ))
    }

    pub fn invalid_parameter_value(message: String) -> Self {
        Self::new(
            400,
            "InvalidParameterValue",
            "InvalidParameterValue",
            message,
        )
    }

    pub fn missing_parameter(name: &str) -> Self {
        Self::new(
            400,
            "MissingParameter",
            "MissingParameter",
            format!("The request must contain the parameter {name}."),
        )
    }

    pub fn unsupported_operation(message: String) -> Self {
        Self::new(
            400,
            "UnsupportedOperation",
            "AWS.SimpleQueueService.UnsupportedOperation",
            message,
        )
    }

    /// A body that is not the operation's JSON input (AWS JSON's own error, not SQS's).
    pub fn serialization(message: String) -> Self {
        Self::new(
            400,
            "SerializationException",
            "SerializationException",
            message,
        )
    }

    pub fn unknown_operation(target: &str) -> Self {
        Self::new(
            400,
            "UnknownOperationException",
            "UnknownOperationException",
            format!("unknown operation {target:?}: the embedded SQS endpoint speaks the AWS JSON 1.0 protocol (X-Amz-Target: AmazonSQS.<Operation>)"),
        )
    }

    /// The `__type` of the JSON body.
    pub fn type_name(&self) -> String {
        match self.shape {
            "SerializationException" | "UnknownOperationException" => {
                format!("com.amazon.coral.service#{}", self.shape)
            }
            shape => format!("com.amazonaws.sqs#{shape}"),
        }
    }
}

impl IntoResponse for SqsError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "__type": self.type_name(), "message": self.message });
        let mut response = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, JSON_1_0)],
            body.to_string(),
        )
            .into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("{};Sender", self.code)) {
            response.headers_mut().insert("x-amzn-query-error", value);
        }
        response
    }
}

/// One refused entry of a batch request, as SQS lists it under `Failed`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchFailure {
    pub id: String,
    pub sender_fault: bool,
    pub code: &'static str,
    pub message: String,
}

impl BatchFailure {
    pub fn new(id: &str, error: SqsError) -> Self {
        Self {
            id: id.to_owned(),
            sender_fault: true,
            code: error.code,
            message: error.message,
        }
    }
}
