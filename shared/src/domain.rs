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
            InvalidValue::new(
                FIELD,
                "must be an E.164 number starting with '+', e.g. +14155550100",
            )
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
        let size = serde_json::to_vec(&map)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
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
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v))
        }
        _ => false,
    }
}

/// Where a call is in its life. Terminal states never change again (invariant 5).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
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

/// How a dialed call ended, in Ebra's terms: each provider adapter maps its own end
/// reasons onto these (the tables are in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallOutcome {
    /// Someone answered and the conversation ran.
    Completed,
    /// The call could not be made or broke (bad number, carrier or agent error).
    Failed,
    /// The line was busy, or the callee declined.
    Busy,
    /// It rang out.
    NoAnswer,
    /// An answering machine or voicemail took it.
    Voicemail,
    /// It was stopped at the provider before it ended by itself.
    Canceled,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 6] = [
        CallOutcome::Completed,
        CallOutcome::Failed,
        CallOutcome::Busy,
        CallOutcome::NoAnswer,
        CallOutcome::Voicemail,
        CallOutcome::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Completed => "COMPLETED",
            CallOutcome::Failed => "FAILED",
            CallOutcome::Busy => "BUSY",
            CallOutcome::NoAnswer => "NO_ANSWER",
            CallOutcome::Voicemail => "VOICEMAIL",
            CallOutcome::Canceled => "CANCELED",
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
        CallOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == s)
            .ok_or_else(|| {
                InvalidValue::new(
                    "status",
                    "must be one of COMPLETED, FAILED, BUSY, NO_ANSWER, VOICEMAIL, CANCELED",
                )
            })
    }
}

/// What a provider reported for one dial: a [`CallOutcome`], or that it did not run the
/// call because the account was at its concurrency limit (the dial did not count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DialOutcome {
    Completed,
    Failed,
    Busy,
    NoAnswer,
    Voicemail,
    Canceled,
    Limited,
}

impl DialOutcome {
    pub const ALL: [DialOutcome; 7] = [
        DialOutcome::Completed,
        DialOutcome::Failed,
        DialOutcome::Busy,
        DialOutcome::NoAnswer,
        DialOutcome::Voicemail,
        DialOutcome::Canceled,
        DialOutcome::Limited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DialOutcome::Completed => "COMPLETED",
            DialOutcome::Failed => "FAILED",
            DialOutcome::Busy => "BUSY",
            DialOutcome::NoAnswer => "NO_ANSWER",
            DialOutcome::Voicemail => "VOICEMAIL",
            DialOutcome::Canceled => "CANCELED",
            DialOutcome::Limited => "LIMITED",
        }
    }
}

impl FromStr for DialOutcome {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DialOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == s)
            .ok_or_else(|| InvalidValue::new("outcome", "is not a dial outcome"))
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
        assert_eq!(
            PhoneNumber::parse("+14155550100").unwrap().as_str(),
            "+14155550100"
        );
        assert_eq!(
            PhoneNumber::parse("+442071838750").unwrap().as_str(),
            "+442071838750"
        );
    }

    #[test]
    fn phone_rejects_malformed() {
        for bad in [
            "",
            "+",
            "14155550100",
            "+1 415 555 0100",
            "+0123456",
            "+1415555010012345",
            "+999999",
            "+1415555abcd",
            "++14155550100",
        ] {
            assert!(
                PhoneNumber::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
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

    // ---- Property tests: the parsers never panic, whatever they accept holds the type's
    // invariants, and values known to be valid are accepted (issue 6, "Bad input").

    use std::sync::LazyLock;

    use proptest::prelude::*;
    use serde_json::Value;

    /// Every example number in libphonenumber's metadata (all regions, all number types),
    /// written `+<country code><national number>`. Validating them all up front is slow in
    /// a debug build, so the property below samples them.
    static EXAMPLE_NUMBERS: LazyLock<Vec<String>> = LazyLock::new(|| {
        let mut numbers: Vec<String> = phonenumber::metadata::DATABASE
            .iter()
            .flat_map(|region| {
                let d = region.descriptors();
                [
                    d.fixed_line(),
                    d.mobile(),
                    d.toll_free(),
                    d.premium_rate(),
                    d.shared_cost(),
                    d.personal_number(),
                    d.voip(),
                    d.pager(),
                    d.uan(),
                    d.voicemail(),
                ]
                .into_iter()
                .flatten()
                .filter_map(|descriptor| descriptor.example())
                .map(|example| format!("+{}{example}", region.country_code()))
                .collect::<Vec<_>>()
            })
            .collect();
        numbers.sort();
        numbers.dedup();
        numbers
    });

    /// libphonenumber's own verdict: a valid number, written exactly in E.164.
    fn libphonenumber_accepts(raw: &str) -> bool {
        phonenumber::parse(None, raw).is_ok_and(|parsed| {
            phonenumber::is_valid(&parsed)
                && parsed.format().mode(phonenumber::Mode::E164).to_string() == raw
        })
    }

    /// The invariants of an accepted phone number.
    fn check_phone(raw: &str, phone: &PhoneNumber) -> Result<(), TestCaseError> {
        prop_assert_eq!(phone.as_str(), raw, "an accepted number is kept as written");
        let digits = phone.as_str().strip_prefix('+');
        prop_assert!(digits.is_some(), "{:?} does not start with '+'", phone);
        let digits = digits.unwrap();
        prop_assert!(
            (1..=15).contains(&digits.len()),
            "{:?} has {} digits",
            phone,
            digits.len()
        );
        prop_assert!(
            digits.bytes().all(|b| b.is_ascii_digit()),
            "{:?} has a non-digit",
            phone
        );
        prop_assert!(
            !digits.starts_with('0'),
            "{:?}: no country code starts with 0",
            phone
        );
        let again = PhoneNumber::parse(phone.as_str());
        prop_assert_eq!(again.as_ref(), Ok(phone), "re-parses to itself");
        Ok(())
    }

    /// The invariants of an accepted script id.
    fn check_script(raw: &str, script: &ScriptId) -> Result<(), TestCaseError> {
        prop_assert_eq!(script.as_str(), raw);
        let chars = script.as_str().chars().count();
        prop_assert!(
            (1..=ScriptId::MAX_CHARS).contains(&chars),
            "{} chars",
            chars
        );
        prop_assert!(
            !script.as_str().chars().any(char::is_control),
            "{:?} has a control char",
            script
        );
        prop_assert!(!script.as_str().trim().is_empty(), "{:?} is blank", script);
        Ok(())
    }

    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }

    /// Strings a client might send: anything, unicode, control characters, long runs.
    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "\\PC{0,40}",
            "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f} a\\u{200b}\\u{feff}]{0,20}",
            ".{0,4000}",
            (any::<char>(), 0usize..20_000).prop_map(|(c, n)| c.to_string().repeat(n)),
        ]
    }

    /// Arbitrary JSON: every kind of value, nested, with strings that may hold NUL and
    /// may be long enough to cross the 16 KiB limit.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            any::<String>().prop_map(Value::String),
            "[a\\x00\\u{e9}\\u{1f600}\"\\\\]{0,8}".prop_map(Value::String),
            (0usize..6_000).prop_map(|n| Value::String("x".repeat(n))),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((any_key(), inner), 0..8)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    fn any_key() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z]{1,8}", "[a\\x00]{1,3}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn phone_parse_never_panics_and_keeps_invariants(raw in prop_oneof![
            any_text(),
            // Near misses: '+' then digits of every length, spaces, punctuation.
            "\\+?[0-9]{0,20}",
            "\\+[1-9][0-9 ()\\-.]{0,18}",
            "[+\\u{ff0b}][0-9\\u{ff10}-\\u{ff19}\\u{660}-\\u{669}]{1,16}",
            "\\+[1-9][0-9]{6,14}(;ext=[0-9]{1,4}| x[0-9]{1,4})?",
        ]) {
            if let Ok(phone) = PhoneNumber::parse(&raw) {
                check_phone(&raw, &phone)?;
            }
        }

        #[test]
        fn phone_agrees_with_libphonenumber_on_its_examples(raw in prop::sample::select(EXAMPLE_NUMBERS.clone())) {
            let phone = PhoneNumber::parse(&raw);
            if libphonenumber_accepts(&raw) {
                prop_assert!(phone.is_ok(), "{:?} refused: {:?}", raw, phone);
                check_phone(&raw, &phone.unwrap())?;
            } else {
                prop_assert!(phone.is_err(), "{:?} accepted, libphonenumber refuses it", raw);
            }
        }

        #[test]
        fn phone_accepts_us_numbers(
            npa in prop::sample::select(vec!["201", "212", "213", "303", "312", "404", "415", "512", "617", "646", "702", "818"]),
            subscriber in "[2-9][0-9]{6}",
        ) {
            let raw = format!("+1{npa}{subscriber}");
            let phone = PhoneNumber::parse(&raw);
            prop_assert!(phone.is_ok(), "{:?} refused: {:?}", raw, phone);
            check_phone(&raw, &phone.unwrap())?;
            // Written any other way, it is refused (E.164 only), without panicking.
            for variant in [format!("1{npa}{subscriber}"), format!("+1 {npa} {subscriber}"), format!("+1({npa}){subscriber}"), format!(" {raw}"), format!("{raw}0")] {
                prop_assert!(PhoneNumber::parse(&variant).is_err(), "{:?} accepted", variant);
            }
        }

        #[test]
        fn script_parse_never_panics_and_keeps_invariants(raw in any_text()) {
            if let Ok(script) = ScriptId::parse(&raw) {
                check_script(&raw, &script)?;
            }
        }

        #[test]
        fn script_accepts_printable_ids(
            (before, visible, after) in ("\\PC{0,63}", "[\\PC&&\\S]", "\\PC{0,64}"),
        ) {
            let raw = format!("{before}{visible}{after}");
            let script = ScriptId::parse(&raw);
            prop_assert!(script.is_ok(), "{:?} refused: {:?}", raw, script);
            check_script(&raw, &script.unwrap())?;
        }

        #[test]
        fn script_length_limit_is_in_characters(c in "[\\PC&&\\S]", n in 1usize..300) {
            let raw = c.repeat(n);
            prop_assert_eq!(ScriptId::parse(&raw).is_ok(), n <= ScriptId::MAX_CHARS, "{} x {:?}", n, c);
        }

        #[test]
        fn metadata_parse_accepts_exactly_small_nul_free_objects(value in any_json()) {
            let serialised = serde_json::to_vec(&value).unwrap().len();
            let valid = value.is_object() && serialised <= Metadata::MAX_BYTES && !has_nul(&value);
            match Metadata::parse(value.clone()) {
                Ok(metadata) => {
                    prop_assert!(valid, "accepted {} bytes: {}", serialised, value);
                    let back = metadata.to_value();
                    prop_assert_eq!(&back, &value, "kept as sent");
                    prop_assert!(serde_json::to_vec(&back).unwrap().len() <= Metadata::MAX_BYTES);
                    prop_assert!(!has_nul(&back));
                }
                Err(error) => {
                    prop_assert!(!valid, "refused a valid object ({}): {}", error, value);
                    prop_assert_eq!(error.field, "metadata");
                }
            }
        }

        #[test]
        fn metadata_from_arbitrary_json_text_never_panics(text in any_text()) {
            if let Ok(value) = serde_json::from_str::<Value>(&text) {
                let _ = Metadata::parse(value);
            }
        }
    }

    #[test]
    fn example_numbers_cover_the_world() {
        // Guards the strategy above against an empty or tiny list.
        assert!(
            EXAMPLE_NUMBERS.len() > 500,
            "only {} example numbers",
            EXAMPLE_NUMBERS.len()
        );
        for raw in [
            "+14155550100",
            "+442071838750",
            "+33123456789",
            "+4915123456789",
            "+81312345678",
            "+61212345678",
        ] {
            assert!(libphonenumber_accepts(raw), "{raw}");
            assert!(PhoneNumber::parse(raw).is_ok(), "{raw}");
        }
    }

    #[test]
    fn metadata_size_limit_is_exact() {
        for n in (Metadata::MAX_BYTES - 40)..(Metadata::MAX_BYTES + 40) {
            // {"k":"xxx…"} is n + 8 bytes.
            let value = serde_json::json!({ "k": "x".repeat(n) });
            let size = serde_json::to_vec(&value).unwrap().len();
            assert_eq!(size, n + 8);
            assert_eq!(
                Metadata::parse(value).is_ok(),
                size <= Metadata::MAX_BYTES,
                "{size} bytes"
            );
        }
    }
}
