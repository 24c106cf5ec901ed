//! Where provider webhooks are verified.
//!
//! Each provider's scheme lives in its module under [`crate::provider`] (Retell's
//! `x-retell-signature`, ElevenLabs' `ElevenLabs-Signature`, Twilio's `X-Twilio-Signature`,
//! Vapi's credential) and is built from the pieces here, so that every one compares in
//! constant time, over the raw bytes, within a time window: [`hmac_sha256`],
//! [`verify_hex_mac`], [`constant_time_eq`], [`check_window`].
//!
//! The generic contract's scheme is Standard Webhooks, implemented here by
//! [`WebhookSecret`]: a request carries `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
//! entries (several during a secret rotation). The secret is `whsec_<base64 key>`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub type HmacSha256 = Hmac<Sha256>;

/// Timestamps further than this from now are refused (replay protection).
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// One or more signing keys: verification accepts a signature from any of them, so a secret
/// can be rotated by listing the new one beside the old (`WEBHOOK_SECRET="whsec_new whsec_old"`).
#[derive(Clone)]
pub struct WebhookSecret {
    keys: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must be whsec_<base64 key> (several may be separated by spaces)")]
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    #[error("timestamp outside the accepted window")]
    StaleTimestamp,
    #[error("no signature matches")]
    NoMatch,
}

/// An HMAC-SHA256 over `parts`, concatenated.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Whether `hex_signature` (lowercase hex, as every provider sends it and their SDKs
/// compare it) is the MAC of what `mac` was fed, compared in constant time. An empty,
/// uppercase or non-hex signature never matches.
pub fn verify_hex_mac<M: Mac>(mac: M, hex_signature: &str) -> bool {
    if hex_signature.is_empty()
        || !hex_signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return false;
    }
    match hex::decode(hex_signature) {
        Ok(expected) => mac.verify_slice(&expected).is_ok(),
        Err(_) => false,
    }
}

/// Compares two secrets in constant time (for equal lengths; a length difference is not
/// hidden, which reveals nothing of a random secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Refuses a timestamp older than `max_age` or further ahead than `max_ahead` seconds
/// (clocks drift; a provider's clock a little ahead is not an attack).
pub fn check_window(
    timestamp: i64,
    now: i64,
    max_age: i64,
    max_ahead: i64,
) -> Result<(), VerifyError> {
    if now.saturating_sub(timestamp) > max_age || timestamp.saturating_sub(now) > max_ahead {
        return Err(VerifyError::StaleTimestamp);
    }
    Ok(())
}

impl WebhookSecret {
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let keys = raw
            .split_whitespace()
            .map(|one| {
                let encoded = one.strip_prefix("whsec_").ok_or(SecretError::Malformed)?;
                let key = BASE64.decode(encoded).map_err(|_| SecretError::Malformed)?;
                if key.is_empty() {
                    return Err(SecretError::Malformed);
                }
                Ok(key)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SecretError::Malformed);
        }
        Ok(Self { keys })
    }

    /// Signs as a provider would, with the first key: the `webhook-signature` value.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            BASE64.encode(
                mac(&self.keys[0], webhook_id, timestamp, body)
                    .finalize()
                    .into_bytes()
            )
        )
    }

    /// Signs with every key, first key first: the `webhook-signature` value of a sender
    /// rotating its secret (`v1,<new> v1,<old>`), which receivers holding either accept.
    pub fn sign_with_every_key(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        self.keys
            .iter()
            .map(|key| {
                format!(
                    "v1,{}",
                    BASE64.encode(
                        mac(key, webhook_id, timestamp, body)
                            .finalize()
                            .into_bytes()
                    )
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Verifies the three headers against the raw body at time `now` (Unix seconds).
    pub fn verify(
        &self,
        webhook_id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let webhook_id = webhook_id
            .filter(|v| !v.is_empty())
            .ok_or(VerifyError::MissingHeader("webhook-id"))?;
        let timestamp_raw = timestamp
            .filter(|v| !v.is_empty())
            .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
        let signature = signature
            .filter(|v| !v.trim().is_empty())
            .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
        if webhook_id.len() > 255 || webhook_id.chars().any(char::is_control) {
            return Err(VerifyError::MalformedHeader("webhook-id"));
        }
        let timestamp: i64 = timestamp_raw
            .parse()
            .map_err(|_| VerifyError::MalformedHeader("webhook-timestamp"))?;
        check_window(timestamp, now, TOLERANCE_SECONDS, TOLERANCE_SECONDS)?;
        let mut any_well_formed = false;
        for candidate in signature.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            // An empty signature ("v1,") must never verify.
            let Ok(expected) = BASE64.decode(encoded) else {
                continue;
            };
            if expected.is_empty() {
                continue;
            }
            any_well_formed = true;
            for key in &self.keys {
                // `verify_slice` compares in constant time.
                if mac(key, webhook_id, timestamp, body)
                    .verify_slice(&expected)
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        if any_well_formed {
            Err(VerifyError::NoMatch)
        } else {
            Err(VerifyError::MalformedHeader("webhook-signature"))
        }
    }
}

fn mac(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    hmac_sha256(
        key,
        &[
            webhook_id.as_bytes(),
            b".",
            timestamp.to_string().as_bytes(),
            b".",
            body,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const NOW: i64 = 1_700_000_000;

    fn secret() -> WebhookSecret {
        WebhookSecret::parse(SECRET).unwrap()
    }

    #[test]
    fn accepts_own_signature() {
        let s = secret();
        let sig = s.sign("msg_1", NOW, b"{}");
        assert_eq!(
            s.verify(
                Some("msg_1"),
                Some(&NOW.to_string()),
                Some(&sig),
                b"{}",
                NOW
            ),
            Ok(())
        );
    }

    #[test]
    fn refuses_forgeries() {
        let s = secret();
        let ts = NOW.to_string();
        let sig = s.sign("msg_1", NOW, b"{}");
        assert!(
            s.verify(Some("msg_1"), Some(&ts), Some(&sig), b"{ }", NOW)
                .is_err(),
            "body changed"
        );
        assert!(
            s.verify(Some("msg_2"), Some(&ts), Some(&sig), b"{}", NOW)
                .is_err(),
            "id changed"
        );
        assert!(
            s.verify(Some("msg_1"), Some(&ts), Some("v1,"), b"{}", NOW)
                .is_err(),
            "empty signature"
        );
        assert!(s
            .verify(Some("msg_1"), Some(&ts), Some("v1"), b"{}", NOW)
            .is_err());
        assert!(s
            .verify(Some("msg_1"), Some(&ts), Some("v2,abc"), b"{}", NOW)
            .is_err());
        assert!(s
            .verify(Some("msg_1"), Some(&ts), None, b"{}", NOW)
            .is_err());
        assert!(s.verify(None, Some(&ts), Some(&sig), b"{}", NOW).is_err());
        assert_eq!(
            s.verify(
                Some("msg_1"),
                Some(&ts),
                Some(&sig),
                b"{}",
                NOW + TOLERANCE_SECONDS + 1
            ),
            Err(VerifyError::StaleTimestamp)
        );
        let other = WebhookSecret::parse("whsec_b3RoZXIta2V5LWZvci10ZXN0cw==").unwrap();
        assert!(other
            .verify(Some("msg_1"), Some(&ts), Some(&sig), b"{}", NOW)
            .is_err());
    }

    #[test]
    fn rotation_accepts_either_key_and_either_signature() {
        let old = secret();
        let new = WebhookSecret::parse("whsec_bmV3LWtleS1mb3ItdGVzdHM=").unwrap();
        let both =
            WebhookSecret::parse(&format!("whsec_bmV3LWtleS1mb3ItdGVzdHM= {SECRET}")).unwrap();
        let ts = NOW.to_string();
        let by_old = old.sign("m", NOW, b"x");
        let by_new = new.sign("m", NOW, b"x");
        assert!(both
            .verify(Some("m"), Some(&ts), Some(&by_old), b"x", NOW)
            .is_ok());
        assert!(both
            .verify(Some("m"), Some(&ts), Some(&by_new), b"x", NOW)
            .is_ok());
        let header = format!("v1,AAAA {by_old}");
        assert!(old
            .verify(Some("m"), Some(&ts), Some(&header), b"x", NOW)
            .is_ok());
    }

    #[test]
    fn a_rotating_sender_signs_with_both_keys() {
        let both =
            WebhookSecret::parse(&format!("whsec_bmV3LWtleS1mb3ItdGVzdHM= {SECRET}")).unwrap();
        let header = both.sign_with_every_key("m", NOW, b"x");
        let new = WebhookSecret::parse("whsec_bmV3LWtleS1mb3ItdGVzdHM=").unwrap();
        assert_eq!(
            header,
            format!(
                "{} {}",
                new.sign("m", NOW, b"x"),
                secret().sign("m", NOW, b"x")
            )
        );
        let ts = NOW.to_string();
        for receiver in [&new, &secret()] {
            assert!(receiver
                .verify(Some("m"), Some(&ts), Some(&header), b"x", NOW)
                .is_ok());
        }
    }

    #[test]
    fn secret_must_be_whsec() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_").is_err());
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
    }
}
