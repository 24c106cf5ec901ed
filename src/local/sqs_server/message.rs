//! A message as sent: its checks (body characters, attributes, size) and the MD5 digests
//! SQS returns for the body and the attributes.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use md5::{Digest as _, Md5};

use super::errors::SqsError;
use super::queue::{AttributeValue, MessageAttribute};
use super::wire::AttributeValueInput;

/// A message attribute count SQS accepts.
const MAX_ATTRIBUTES: usize = 10;

/// A checked message, not yet stored.
#[derive(Debug)]
pub struct Checked {
    pub body: String,
    pub md5_of_body: String,
    pub attributes: BTreeMap<String, MessageAttribute>,
    pub md5_of_attributes: Option<String>,
    pub trace_header: Option<String>,
    pub md5_of_system_attributes: Option<String>,
    pub group_id: Option<String>,
    /// Body plus attributes (names, types and values): what counts toward the size limit.
    pub size: usize,
}

/// Checks a message's body and attributes. The size limit is the caller's check.
pub fn check(
    body: Option<String>,
    attributes: HashMap<String, AttributeValueInput>,
    system_attributes: HashMap<String, AttributeValueInput>,
) -> Result<Checked, SqsError> {
    let body = body
        .filter(|b| !b.is_empty())
        .ok_or_else(|| SqsError::missing_parameter("MessageBody"))?;
    if !body.chars().all(allowed) {
        return Err(SqsError::invalid_message_contents());
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(SqsError::invalid_parameter_value(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [{MAX_ATTRIBUTES}].",
            attributes.len()
        )));
    }
    let mut checked_attributes = BTreeMap::new();
    let mut size = body.len();
    for (name, input) in attributes {
        check_attribute_name(&name)?;
        let attribute = check_attribute(&name, input)?;
        size += name.len() + attribute.data_type.len() + value_len(&attribute.value);
        checked_attributes.insert(name, attribute);
    }
    let mut trace_header = None;
    let mut system = BTreeMap::new();
    for (name, input) in system_attributes {
        if name != "AWSTraceHeader" {
            return Err(SqsError::invalid_parameter_value(format!(
                "Message system attribute name '{name}' is invalid."
            )));
        }
        let attribute = check_attribute(&name, input)?;
        match (&attribute.value, attribute.data_type.as_str()) {
            (AttributeValue::String(value), "String") => trace_header = Some(value.clone()),
            _ => {
                return Err(SqsError::invalid_parameter_value(
                    "The message system attribute 'AWSTraceHeader' must be of type String."
                        .to_owned(),
                ))
            }
        }
        system.insert(name, attribute);
    }
    Ok(Checked {
        md5_of_body: md5_hex(body.as_bytes()),
        md5_of_attributes: (!checked_attributes.is_empty())
            .then(|| md5_of_attributes(&checked_attributes)),
        md5_of_system_attributes: (!system.is_empty()).then(|| md5_of_attributes(&system)),
        body,
        attributes: checked_attributes,
        trace_header,
        group_id: None,
        size,
    })
}

/// The characters SQS accepts in a body and in string attributes.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn check_attribute_name(name: &str) -> Result<(), SqsError> {
    let lower = name.to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.");
    if valid {
        Ok(())
    } else {
        Err(SqsError::invalid_parameter_value(format!(
            "Message (user) attribute '{name}' is invalid: a name has 1 to 256 characters \
             (alphanumerics, '-', '_', '.'), does not start or end with '.' nor contain '..', \
             and does not start with 'AWS.' or 'Amazon.'."
        )))
    }
}

fn check_attribute(name: &str, input: AttributeValueInput) -> Result<MessageAttribute, SqsError> {
    let data_type = input.data_type.unwrap_or_default();
    let base = data_type.split('.').next().unwrap_or("");
    if !matches!(base, "String" | "Number" | "Binary") || data_type.len() > 256 {
        return Err(SqsError::invalid_parameter_value(format!(
            "The message attribute '{name}' has an invalid message attribute type, the set of \
             supported type prefixes is Binary, Number, and String."
        )));
    }
    if !input.string_list_values.is_empty() || !input.binary_list_values.is_empty() {
        return Err(SqsError::invalid_parameter_value(format!(
            "The message attribute '{name}' uses StringListValues or BinaryListValues, which SQS \
             reserves for future use."
        )));
    }
    let value = if base == "Binary" {
        let encoded = input
            .binary_value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                SqsError::invalid_parameter_value(format!(
                "The message attribute '{name}' must contain non-empty message attribute value \
                 for message attribute type '{data_type}'."
            ))
            })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|_| {
                SqsError::serialization(format!(
                    "the BinaryValue of message attribute '{name}' is not base64"
                ))
            })?;
        AttributeValue::Binary(bytes)
    } else {
        let value = input
            .string_value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                SqsError::invalid_parameter_value(format!(
                "The message attribute '{name}' must contain non-empty message attribute value \
                 for message attribute type '{data_type}'."
            ))
            })?;
        if base == "Number" && value.trim().parse::<f64>().is_err() {
            return Err(SqsError::invalid_parameter_value(format!(
                "Can't cast the value of message (user) attribute '{name}' to a number."
            )));
        }
        if !value.chars().all(allowed) {
            return Err(SqsError::invalid_message_contents());
        }
        AttributeValue::String(value)
    };
    Ok(MessageAttribute { data_type, value })
}

fn value_len(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::String(s) => s.len(),
        AttributeValue::Binary(b) => b.len(),
    }
}

pub fn md5_hex(bytes: &[u8]) -> String {
    let digest = Md5::digest(bytes);
    let mut out = String::with_capacity(32);
    for byte in digest.iter() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// SQS's digest of message attributes: for each attribute in name order, the name, the
/// data type (each as a 4-byte big-endian length and UTF-8 bytes), a transport byte (1 for
/// strings and numbers, 2 for binary) and the value (length and bytes).
pub fn md5_of_attributes(attributes: &BTreeMap<String, MessageAttribute>) -> String {
    fn put(buffer: &mut Vec<u8>, bytes: &[u8]) {
        buffer.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        buffer.extend_from_slice(bytes);
    }
    let mut buffer = Vec::new();
    for (name, attribute) in attributes {
        put(&mut buffer, name.as_bytes());
        put(&mut buffer, attribute.data_type.as_bytes());
        match &attribute.value {
            AttributeValue::String(value) => {
                buffer.push(1);
                put(&mut buffer, value.as_bytes());
            }
            AttributeValue::Binary(value) => {
                buffer.push(2);
                put(&mut buffer, value);
            }
        }
    }
    md5_hex(&buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(data_type: &str, value: &str) -> AttributeValueInput {
        AttributeValueInput {
            data_type: Some(data_type.to_owned()),
            string_value: Some(value.to_owned()),
            ..AttributeValueInput::default()
        }
    }

    #[test]
    fn md5_matches_rfc1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn attribute_digest_follows_the_documented_layout() {
        let mut attributes = BTreeMap::new();
        attributes.insert(
            "b".to_owned(),
            MessageAttribute {
                data_type: "Binary".to_owned(),
                value: AttributeValue::Binary(vec![0, 1]),
            },
        );
        attributes.insert(
            "a".to_owned(),
            MessageAttribute {
                data_type: "String".to_owned(),
                value: AttributeValue::String("x".to_owned()),
            },
        );
        let mut expected = Vec::new();
        expected.extend_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 6]);
        expected.extend_from_slice(b"String");
        expected.extend_from_slice(&[1, 0, 0, 0, 1, b'x']);
        expected.extend_from_slice(&[0, 0, 0, 1, b'b', 0, 0, 0, 6]);
        expected.extend_from_slice(b"Binary");
        expected.extend_from_slice(&[2, 0, 0, 0, 2, 0, 1]);
        assert_eq!(md5_of_attributes(&attributes), md5_hex(&expected));
    }

    #[test]
    fn bodies_and_attributes_are_checked() {
        assert_eq!(
            check(Some(String::new()), HashMap::new(), HashMap::new())
                .unwrap_err()
                .code,
            "MissingParameter"
        );
        assert_eq!(
            check(Some("a\u{1}b".to_owned()), HashMap::new(), HashMap::new())
                .unwrap_err()
                .code,
            "InvalidMessageContents"
        );
        let checked = check(
            Some("hello".to_owned()),
            HashMap::from([("n".to_owned(), string("Number", "42"))]),
            HashMap::new(),
        )
        .unwrap();
        assert_eq!(checked.size, 5 + 1 + 6 + 2);
        assert!(checked.md5_of_attributes.is_some());
        for (name, value) in [
            ("AWS.reserved", string("String", "x")),
            ("a..b", string("String", "x")),
            ("n", string("Number", "forty")),
            ("t", string("Text", "x")),
        ] {
            let error = check(
                Some("x".to_owned()),
                HashMap::from([(name.to_owned(), value)]),
                HashMap::new(),
            )
            .unwrap_err();
            assert_eq!(error.code, "InvalidParameterValue", "{name}");
        }
    }
}
