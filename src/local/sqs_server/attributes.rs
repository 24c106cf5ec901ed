//! A queue's settable attributes: names, ranges and defaults as SQS documents them, and the
//! redrive policy.

use super::errors::SqsError;

/// SQS's ceiling on `MaximumMessageSize`, and its default (1 MiB since 2025; it was
/// 256 KiB before).
pub const MAX_MESSAGE_SIZE: u32 = 1_048_576;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedrivePolicy {
    pub dead_letter_target_arn: String,
    pub max_receive_count: u32,
}

impl RedrivePolicy {
    /// The JSON SQS returns for the attribute.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "deadLetterTargetArn": self.dead_letter_target_arn,
            "maxReceiveCount": self.max_receive_count,
        })
        .to_string()
    }

    /// Parses the attribute's value. `maxReceiveCount` may be a number or a numeric string
    /// (CloudFormation and the SDKs send either).
    pub fn parse(raw: &str) -> Result<Self, SqsError> {
        let invalid = |reason: &str| SqsError::invalid_parameter("RedrivePolicy", raw, reason);
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|_| invalid("Redrive policy is not a valid JSON map."))?;
        let map = value
            .as_object()
            .ok_or_else(|| invalid("Redrive policy is not a valid JSON map."))?;
        let arn = map
            .get("deadLetterTargetArn")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                invalid("Redrive policy does not contain mandatory attribute: deadLetterTargetArn.")
            })?;
        let count = map.get("maxReceiveCount").ok_or_else(|| {
            invalid("Redrive policy does not contain mandatory attribute: maxReceiveCount.")
        })?;
        let count = match count {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        let max_receive_count = count
            .filter(|c| (1..=1000).contains(c))
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| {
                invalid(&format!(
                    "Invalid value for maxReceiveCount: {}, valid values are from 1 to 1000 both inclusive.",
                    map.get("maxReceiveCount").map(|v| v.to_string()).unwrap_or_default()
                ))
            })?;
        Ok(Self {
            dead_letter_target_arn: arn.to_owned(),
            max_receive_count,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAttributes {
    pub delay_seconds: u32,
    pub maximum_message_size: u32,
    pub message_retention_period: u32,
    pub receive_message_wait_time_seconds: u32,
    pub visibility_timeout: u32,
    pub redrive_policy: Option<RedrivePolicy>,
    pub policy: Option<String>,
    pub redrive_allow_policy: Option<String>,
    pub kms_master_key_id: Option<String>,
    pub kms_data_key_reuse_period_seconds: u32,
    pub sqs_managed_sse_enabled: bool,
}

impl Default for QueueAttributes {
    fn default() -> Self {
        Self {
            delay_seconds: 0,
            maximum_message_size: MAX_MESSAGE_SIZE,
            message_retention_period: 345_600,
            receive_message_wait_time_seconds: 0,
            visibility_timeout: 30,
            redrive_policy: None,
            policy: None,
            redrive_allow_policy: None,
            kms_master_key_id: None,
            kms_data_key_reuse_period_seconds: 300,
            sqs_managed_sse_enabled: true,
        }
    }
}

/// Attributes only `GetQueueAttributes` returns (counted or fixed at creation).
pub const READ_ONLY: [&str; 6] = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
];

/// Settable attributes of a standard queue.
pub const SETTABLE: [&str; 11] = [
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "Policy",
    "RedriveAllowPolicy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
];

/// Attributes of FIFO queues: named, but absent from a standard queue.
pub const FIFO_ONLY: [&str; 4] = [
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

impl QueueAttributes {
    /// Sets one attribute from its string value, checking name and range. A `RedrivePolicy`
    /// is parsed here; whether its target exists is the caller's check.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SqsError> {
        let number = |min: u32, max: u32| -> Result<u32, SqsError> {
            value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|v| (min..=max).contains(v))
                .ok_or_else(|| SqsError::invalid_attribute_value(name))
        };
        match name {
            "DelaySeconds" => self.delay_seconds = number(0, 900)?,
            "MaximumMessageSize" => self.maximum_message_size = number(1024, MAX_MESSAGE_SIZE)?,
            "MessageRetentionPeriod" => self.message_retention_period = number(60, 1_209_600)?,
            "ReceiveMessageWaitTimeSeconds" => {
                self.receive_message_wait_time_seconds = number(0, 20)?
            }
            "VisibilityTimeout" => self.visibility_timeout = number(0, 43_200)?,
            "KmsDataKeyReusePeriodSeconds" => {
                self.kms_data_key_reuse_period_seconds = number(60, 86_400)?
            }
            "RedrivePolicy" => {
                self.redrive_policy = if value.trim().is_empty() {
                    None
                } else {
                    Some(RedrivePolicy::parse(value)?)
                }
            }
            "Policy" => self.policy = non_empty(value),
            "RedriveAllowPolicy" => self.redrive_allow_policy = non_empty(value),
            "KmsMasterKeyId" => self.kms_master_key_id = non_empty(value),
            "SqsManagedSseEnabled" => {
                self.sqs_managed_sse_enabled = match value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(SqsError::invalid_attribute_value(name)),
                }
            }
            "FifoQueue" if value.trim() == "false" => {}
            "FifoQueue" => {
                return Err(SqsError::unsupported_operation(
                    "the embedded SQS endpoint does not implement FIFO queues".to_owned(),
                ))
            }
            _ => return Err(SqsError::invalid_attribute_name(name)),
        }
        Ok(())
    }

    /// A settable attribute's value as `GetQueueAttributes` returns it (`None`: not set).
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "DelaySeconds" => self.delay_seconds.to_string(),
            "MaximumMessageSize" => self.maximum_message_size.to_string(),
            "MessageRetentionPeriod" => self.message_retention_period.to_string(),
            "ReceiveMessageWaitTimeSeconds" => self.receive_message_wait_time_seconds.to_string(),
            "VisibilityTimeout" => self.visibility_timeout.to_string(),
            "KmsDataKeyReusePeriodSeconds" => self.kms_data_key_reuse_period_seconds.to_string(),
            "SqsManagedSseEnabled" => self.sqs_managed_sse_enabled.to_string(),
            "RedrivePolicy" => self.redrive_policy.as_ref()?.to_json(),
            "Policy" => self.policy.clone()?,
            "RedriveAllowPolicy" => self.redrive_allow_policy.clone()?,
            "KmsMasterKeyId" => self.kms_master_key_id.clone()?,
            _ => return None,
        })
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_with_sqs_codes() {
        let mut attributes = QueueAttributes::default();
        attributes.set("VisibilityTimeout", "43200").unwrap();
        assert_eq!(
            attributes
                .set("VisibilityTimeout", "43201")
                .unwrap_err()
                .code,
            "InvalidAttributeValue"
        );
        assert_eq!(
            attributes.set("DelaySeconds", "-1").unwrap_err().code,
            "InvalidAttributeValue"
        );
        assert_eq!(
            attributes.set("Colour", "blue").unwrap_err().code,
            "InvalidAttributeName"
        );
        assert_eq!(
            attributes.get("VisibilityTimeout").as_deref(),
            Some("43200")
        );
    }

    #[test]
    fn redrive_policy_takes_a_number_or_a_string() {
        let policy =
            RedrivePolicy::parse(r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":"5"}"#)
                .unwrap();
        assert_eq!(policy.max_receive_count, 5);
        let policy =
            RedrivePolicy::parse(r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":7}"#).unwrap();
        assert_eq!(policy.max_receive_count, 7);
        for bad in [
            r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":0}"#,
            r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":1001}"#,
            r#"{"maxReceiveCount":3}"#,
            "not json",
        ] {
            assert_eq!(
                RedrivePolicy::parse(bad).unwrap_err().code,
                "InvalidParameterValue",
                "{bad}"
            );
        }
    }
}
