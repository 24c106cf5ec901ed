//! Ebra's domain values. Parse, don't validate: each type is built by a `parse` that
//! returns an error, so code past the boundary cannot hold an invalid value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a value was refused; the message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub message: String,
}

impl InvalidValue {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// A phone number in E.164 form (`+14155550100`), checked by libphonenumber's rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const FIELD: &str = "to";
        let digits = raw.strip_prefix('+').ok_or_else(|| {
            InvalidValue::new(FIELD, "must be an E.164 number starting with '+', e.g. +14155550100")
        })?;
        if digits.is_empty()
            || digits.len() > 15
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(InvalidValue::new(
                FIELD,
                "must be an E.164 number: '+' then up to 15 digits, e.g. +14155550100",
            ));
        }
        let parsed = phonenumber::parse(None, raw)
            .map_err(|_| InvalidValue::new(FIELD, "is not a phone number in any numbering plan"))?;
        if !phonenumber::is_valid(&parsed) {
            return Err(InvalidValue::new(
                FIELD,
                "is not a valid number for its country code",
            ));
        }
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        if e164 != raw {
            return Err(InvalidValue::new(
                FIELD,
                format!("must be written in E.164 form: {e164}"),
            ));
        }
        Ok(Self(e164))
    }

    /// A value already validated (read back from the database).
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The provider's script identifier: 1–128 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ScriptId(String);

impl ScriptId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const FIELD: &str = "scriptId";
        let chars = raw.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(InvalidValue::new(FIELD, "must be 1 to 128 characters"));
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidValue::new(
                FIELD,
                "must contain printable characters only",
            ));
        }
        if raw.trim().is_empty() {
            return Err(InvalidValue::new(FIELD, "must not be blank"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Client metadata: a JSON object of at most 16 KiB (serialised).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Metadata(serde_json::Map<String, serde_json::Value>);

impl Metadata {
    pub const MAX_BYTES: usize = 16 * 1024;

    pub fn parse(value: serde_json::Value) -> Result<Self, InvalidValue> {
        const FIELD: &str = "metadata";
        let serde_json::Value::Object(map) = value else {
            return Err(InvalidValue::new(FIELD, "must be a JSON object"));
        };
        let size = serde_json::to_vec(&map).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > Self::MAX_BYTES {
            return Err(InvalidValue::new(
                FIELD,
                format!("must be at most 16 KiB when serialised (is {size} bytes)"),
            ));
        }
        // Postgres jsonb cannot store U+0000 in strings.
        if contains_nul(&serde_json::Value::Object(map.clone())) {
            return Err(InvalidValue::new(
                FIELD,
                "must not contain the NUL character (\\u0000)",
            ));
        }
        Ok(Self(map))
    }

    pub fn empty() -> Self {
        Self(serde_json::Map::new())
    }

    pub fn from_trusted(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Object(map) => Self(map),
            _ => Self::empty(),
        }
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.clone())
    }
}

fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Where a call is in its life. Terminal states never change again (invariant 5).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
    Expired,
    Canceled,
}

impl CallStatus {
    pub const ALL: [CallStatus; 6] = [
        CallStatus::Pending,
        CallStatus::InProgress,
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::Expired,
        CallStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Pending => "PENDING",
            CallStatus::InProgress => "IN_PROGRESS",
            CallStatus::Completed => "COMPLETED",
            CallStatus::Failed => "FAILED",
            CallStatus::Expired => "EXPIRED",
            CallStatus::Canceled => "CANCELED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CallStatus::Completed | CallStatus::Failed | CallStatus::Expired | CallStatus::Canceled
        )
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CallStatus {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                InvalidValue::new(
                    "status",
                    "must be one of PENDING, IN_PROGRESS, COMPLETED, FAILED, EXPIRED, CANCELED",
                )
            })
    }
}

/// What the provider reports at the end of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallOutcome {
    Completed,
    Failed,
    Busy,
    NoAnswer,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Completed => "COMPLETED",
            CallOutcome::Failed => "FAILED",
            CallOutcome::Busy => "BUSY",
            CallOutcome::NoAnswer => "NO_ANSWER",
        }
    }
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CallOutcome {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "COMPLETED" => Ok(CallOutcome::Completed),
            "FAILED" => Ok(CallOutcome::Failed),
            "BUSY" => Ok(CallOutcome::Busy),
            "NO_ANSWER" => Ok(CallOutcome::NoAnswer),
            _ => Err(InvalidValue::new(
                "status",
                "must be one of COMPLETED, FAILED, BUSY, NO_ANSWER",
            )),
        }
    }
}

/// The SQS message that asks the worker to try a call. Nothing else travels in it: the
/// database is the truth, so a duplicate or stale message is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DialRequest {
    pub call_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_accepts_valid_e164() {
        assert_eq!(PhoneNumber::parse("+14155550100").unwrap().as_str(), "+14155550100");
        assert_eq!(PhoneNumber::parse("+442071838750").unwrap().as_str(), "+442071838750");
    }

    #[test]
    fn phone_rejects_malformed() {
        for bad in ["", "+", "14155550100", "+1 415 555 0100", "+0123456", "+1415555010012345", "+999999", "+1415555abcd", "++14155550100"] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn script_id_bounds() {
        assert!(ScriptId::parse("welcome-v1").is_ok());
        assert!(ScriptId::parse(&"x".repeat(128)).is_ok());
        assert!(ScriptId::parse(&"x".repeat(129)).is_err());
        assert!(ScriptId::parse("").is_err());
        assert!(ScriptId::parse("   ").is_err());
        assert!(ScriptId::parse("a\nb").is_err());
    }

    #[test]
    fn metadata_must_be_small_object() {
        assert!(Metadata::parse(serde_json::json!({"a": 1})).is_ok());
        assert!(Metadata::parse(serde_json::json!([1])).is_err());
        assert!(Metadata::parse(serde_json::json!("x")).is_err());
        assert!(Metadata::parse(serde_json::json!({"a": "x".repeat(17 * 1024)})).is_err());
        assert!(Metadata::parse(serde_json::json!({"a": "\u{0}"})).is_err());
    }

    #[test]
    fn status_round_trips() {
        for status in CallStatus::ALL {
            assert_eq!(status.as_str().parse::<CallStatus>().unwrap(), status);
        }
        assert!("pending".parse::<CallStatus>().is_err());
    }
}
