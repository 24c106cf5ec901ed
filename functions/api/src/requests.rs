//! Request bodies and headers, and their parsing into domain values.
//!
//! Two kinds of bad input, two answers: JSON that does not fit the shape (syntax, a missing
//! required field, an unknown field, a wrong type) is refused by serde → 400; values of the
//! right type that break a rule (phone, script id, metadata, dates) are collected here, every
//! bad field at once → 422.

use chrono::{DateTime, SubsecRound as _, Utc};
use ebra_shared::domain::{InvalidValue, Metadata, PhoneNumber, ScriptId};
use ebra_shared::events::destination::parse_url;
use ebra_shared::rules::{parse_time_zone, resolve_window, CallRules, CallingWindow, WindowSpec};
use ebra_shared::store::calls::{CallPatch, NewCall};
use ebra_shared::store::campaigns::NewCampaign;
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// `POST /calls`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateCallRequest {
    /// The number to dial, in E.164 form.
    #[schema(example = "+14155550100")]
    pub to: String,
    /// The provider's script: 1–128 printable characters.
    #[schema(example = "welcome-v1", min_length = 1, max_length = 128)]
    pub script_id: String,
    /// A JSON object of at most 16 KiB (serialised), handed to the provider. Absent or null
    /// means `{}`.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// RFC 3339 date-time with an offset: the call is not dialed before it.
    #[schema(value_type = Option<String>, format = DateTime, example = "2030-01-01T09:00:00Z")]
    pub scheduled_at: Option<String>,
    /// RFC 3339 date-time with an offset, in the future and after `scheduledAt`: the call
    /// is EXPIRED if it has not been dialed by then.
    #[schema(value_type = Option<String>, format = DateTime, example = "2030-01-01T18:00:00Z")]
    pub expires_at: Option<String>,
    /// An http(s) URL that receives this call's events too, signed with the deployment's
    /// callback secret. Its host must resolve only to public addresses (unless the
    /// deployment sets ALLOW_PRIVATE_WEBHOOK_URLS).
    #[schema(example = "https://crm.example.com/hooks/call-42")]
    pub callback_url: Option<String>,
    /// The campaign the call joins: it must exist and not be canceled (409). The call
    /// counts toward the campaign's `maxConcurrency` and waits while it is paused.
    pub campaign_id: Option<String>,
    /// When the call may be dialed, in the callee's local time. Absent: the deployment's
    /// `CALL_WINDOW`, else any time. A call outside its window waits (PENDING, at no cost)
    /// for the next opening; a call in progress is never cut off.
    #[schema(value_type = Option<WindowSpec>)]
    pub window: Option<serde_json::Value>,
    /// The callee's IANA time zone (`America/New_York`). Absent: the zones of the number's
    /// country and area code, and the window must hold in every one of them.
    #[schema(example = "America/New_York")]
    pub timezone: Option<String>,
}

/// `PATCH /calls/{id}`: only these fields, only while the call is PENDING. An absent field is
/// left as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchCallRequest {
    /// The number to dial, in E.164 form.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, example = "+14155550100")]
    pub to: Option<Option<String>>,
    /// The provider's script: 1–128 printable characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, min_length = 1, max_length = 128)]
    pub script_id: Option<Option<String>>,
    /// Replaces the whole metadata object; null resets it to `{}`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<serde_json::Value>>,
    /// RFC 3339 date-time with an offset, before the call's `expiresAt`; null clears the
    /// schedule (the call is due now).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_at: Option<Option<String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from an absent one (`None`, by `default`).
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// An RFC 3339 instant, truncated to the microseconds Postgres stores (so the idempotency
/// hash and the stored value agree).
pub(crate) fn parse_instant(field: &'static str, raw: &str) -> Result<DateTime<Utc>, InvalidValue> {
    DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&Utc).trunc_subsecs(6))
        .map_err(|_| {
            InvalidValue::new(
                field,
                "must be an RFC 3339 date-time with an offset, e.g. 2030-01-01T09:00:00Z",
            )
        })
}

/// `expiresAt` must lie ahead, and after `scheduledAt` (when that parsed).
pub(crate) fn check_expiry(
    expiry: Option<DateTime<Utc>>,
    scheduled: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, InvalidValue> {
    match expiry {
        Some(expiry) if expiry <= now => {
            Err(InvalidValue::new("expiresAt", "must be in the future"))
        }
        Some(expiry) if scheduled.is_some_and(|scheduled| expiry <= scheduled) => {
            Err(InvalidValue::new("expiresAt", "must be after scheduledAt"))
        }
        _ => Ok(expiry),
    }
}

fn metadata_or_empty(value: Option<serde_json::Value>) -> Result<Metadata, InvalidValue> {
    value.map_or_else(|| Ok(Metadata::empty()), Metadata::parse)
}

fn every_error<const N: usize>(errors: [Option<InvalidValue>; N]) -> ApiError {
    ApiError::Invalid(errors.into_iter().flatten().collect())
}

/// The call's rules: its window (else `default_window`) in its `timezone` (else its number's
/// zones), and when that window next opens at or after the call's schedule.
pub(crate) fn call_rules(
    phone: &Result<PhoneNumber, InvalidValue>,
    window: Option<serde_json::Value>,
    timezone: Option<&str>,
    default_window: Option<&CallingWindow>,
    from: DateTime<Utc>,
) -> Result<(CallRules, Option<DateTime<Utc>>), InvalidValue> {
    let window = window
        .map(|value| CallingWindow::parse("window", &value))
        .transpose()?;
    let zone = timezone
        .map(|raw| parse_time_zone("timezone", raw))
        .transpose()?;
    // A bad number is reported on its own; nothing to resolve zones from.
    let Ok(phone) = phone else {
        return Ok((CallRules::default(), None));
    };
    let window = resolve_window(window, None, default_window);
    let rules = CallRules::resolve(phone, zone, window, from)?;
    let opens_at = rules.next_allowed(from).filter(|at| *at > from);
    Ok((rules, opens_at))
}

impl CreateCallRequest {
    /// The validated call (without its idempotency key), or every invalid field. `now` is
    /// the clock's; `default_window` the deployment's `CALL_WINDOW`.
    pub fn validate(
        self,
        now: DateTime<Utc>,
        default_window: Option<&CallingWindow>,
    ) -> Result<NewCall, ApiError> {
        let phone = PhoneNumber::parse(&self.to);
        let script_id = ScriptId::parse(&self.script_id);
        let metadata = metadata_or_empty(self.metadata);
        let scheduled_at = self
            .scheduled_at
            .map(|raw| parse_instant("scheduledAt", &raw))
            .transpose();
        let expires_at = self
            .expires_at
            .map(|raw| parse_instant("expiresAt", &raw))
            .transpose()
            .and_then(|expiry| {
                check_expiry(expiry, scheduled_at.as_ref().ok().copied().flatten(), now)
            });
        // The URL's shape here; its addresses are checked by the handler (a DNS lookup).
        let callback_url = self
            .callback_url
            .map(|raw| parse_callback_url("callbackUrl", &raw))
            .transpose();
        let campaign_id = self
            .campaign_id
            .map(|raw| {
                raw.parse::<Uuid>().map_err(|_| {
                    InvalidValue::new("campaignId", "must be a campaign's id (a UUID)")
                })
            })
            .transpose();
        let timezone = self.timezone.map(|raw| raw.trim().to_owned());
        let from = scheduled_at
            .as_ref()
            .ok()
            .copied()
            .flatten()
            .map_or(now, |at| at.max(now));
        let rules = call_rules(
            &phone,
            self.window,
            timezone.as_deref(),
            default_window,
            from,
        )
        .and_then(|(rules, opens_at)| {
            // A call whose window opens only after it expires could never be dialed.
            match (opens_at, expires_at.as_ref().ok().copied().flatten()) {
                (Some(opens), Some(expiry)) if opens >= expiry => Err(InvalidValue::new(
                    "expiresAt",
                    format!("must be after the call's window next opens ({opens})"),
                )),
                _ => Ok((rules, opens_at)),
            }
        });
        match (
            phone,
            script_id,
            metadata,
            scheduled_at,
            expires_at,
            callback_url,
            campaign_id,
            rules,
        ) {
            (
                Ok(phone),
                Ok(script_id),
                Ok(metadata),
                Ok(scheduled_at),
                Ok(expires_at),
                Ok(callback_url),
                Ok(campaign_id),
                Ok((rules, window_opens_at)),
            ) => Ok(NewCall {
                phone,
                script_id,
                metadata,
                scheduled_at,
                expires_at,
                idempotency: None,
                callback_url,
                campaign_id,
                // Stored by its canonical name (the one zone it resolved to).
                timezone: timezone
                    .and_then(|_| rules.zones.first().map(|zone| zone.name().to_owned())),
                rules,
                window_opens_at,
            }),
            (
                phone,
                script_id,
                metadata,
                scheduled_at,
                expires_at,
                callback_url,
                campaign_id,
                rules,
            ) => Err(every_error([
                phone.err(),
                script_id.err(),
                metadata.err(),
                scheduled_at.err(),
                expires_at.err(),
                callback_url.err(),
                campaign_id.err(),
                rules.err(),
            ])),
        }
    }
}

/// An http(s) URL's shape (its addresses are checked by the handler, a DNS lookup).
fn parse_callback_url(field: &'static str, raw: &str) -> Result<String, InvalidValue> {
    parse_url(raw)
        .map(|url| url.to_string())
        .map_err(|e| InvalidValue::new(field, e.to_string()))
}

/// `POST /campaigns`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateCampaignRequest {
    /// 1–200 characters.
    #[schema(example = "Renewals, March", min_length = 1, max_length = 200)]
    pub name: String,
    /// The default `scriptId` of its calls (a row may name its own).
    #[schema(example = "renewals-v2", min_length = 1, max_length = 128)]
    pub script_id: Option<String>,
    /// Its most calls in progress at once, 1 to `GLOBAL_CONCURRENCY`; absent: the global
    /// cap only.
    #[schema(minimum = 1, maximum = 10000)]
    pub max_concurrency: Option<i64>,
    /// RFC 3339 date-time with an offset, in the future: the default `expiresAt` of its
    /// calls.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
    /// The default `callbackUrl` of its calls (as a call's: public addresses only, and the
    /// deployment needs a CALLBACK_SECRET).
    pub callback_url: Option<String>,
    /// Its calls' calling window, in each callee's local time, for calls without one of
    /// their own (before the deployment's `CALL_WINDOW`).
    #[schema(value_type = Option<WindowSpec>)]
    pub window: Option<serde_json::Value>,
}

impl CreateCampaignRequest {
    /// The validated campaign, or every invalid field. `cap` is `GLOBAL_CONCURRENCY`.
    pub fn validate(self, now: DateTime<Utc>, cap: u32) -> Result<NewCampaign, ApiError> {
        let name = self.name.trim().to_owned();
        let name = if name.is_empty() || name.chars().count() > 200 {
            Err(InvalidValue::new("name", "must be 1 to 200 characters"))
        } else if name.chars().any(char::is_control) {
            Err(InvalidValue::new(
                "name",
                "must contain printable characters only",
            ))
        } else {
            Ok(name)
        };
        let script_id = self.script_id.map(|raw| ScriptId::parse(&raw)).transpose();
        let max_concurrency = self
            .max_concurrency
            .map(|n| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=cap).contains(n))
                    .ok_or_else(|| {
                        InvalidValue::new(
                            "maxConcurrency",
                            format!("must be a whole number from 1 to {cap} (GLOBAL_CONCURRENCY)"),
                        )
                    })
            })
            .transpose();
        let expires_at = self
            .expires_at
            .map(|raw| parse_instant("expiresAt", &raw))
            .transpose()
            .and_then(|expiry| check_expiry(expiry, None, now));
        let callback_url = self
            .callback_url
            .map(|raw| parse_callback_url("callbackUrl", &raw))
            .transpose();
        let window = self
            .window
            .map(|value| CallingWindow::parse("window", &value))
            .transpose();
        match (
            name,
            script_id,
            max_concurrency,
            expires_at,
            callback_url,
            window,
        ) {
            (
                Ok(name),
                Ok(script_id),
                Ok(max_concurrency),
                Ok(expires_at),
                Ok(callback_url),
                Ok(window),
            ) => Ok(NewCampaign {
                name,
                script_id,
                max_concurrency,
                expires_at,
                callback_url,
                window,
            }),
            (name, script_id, max_concurrency, expires_at, callback_url, window) => {
                Err(every_error([
                    name.err(),
                    script_id.err(),
                    max_concurrency.err(),
                    expires_at.err(),
                    callback_url.err(),
                    window.err(),
                ]))
            }
        }
    }
}

impl PatchCallRequest {
    /// The validated change, or every invalid field.
    pub fn validate(self) -> Result<CallPatch, ApiError> {
        if self.to.is_none()
            && self.script_id.is_none()
            && self.metadata.is_none()
            && self.scheduled_at.is_none()
        {
            return Err(ApiError::NothingToChange);
        }
        let not_null = |field| InvalidValue::new(field, "must not be null");
        let phone = self
            .to
            .map(|to| {
                to.ok_or_else(|| not_null("to"))
                    .and_then(|raw| PhoneNumber::parse(&raw))
            })
            .transpose();
        let script_id = self
            .script_id
            .map(|script| {
                script
                    .ok_or_else(|| not_null("scriptId"))
                    .and_then(|raw| ScriptId::parse(&raw))
            })
            .transpose();
        let metadata = self.metadata.map(metadata_or_empty).transpose();
        let scheduled_at = self
            .scheduled_at
            .map(|scheduled| {
                scheduled
                    .map(|raw| parse_instant("scheduledAt", &raw))
                    .transpose()
            })
            .transpose();
        match (phone, script_id, metadata, scheduled_at) {
            (Ok(phone), Ok(script_id), Ok(metadata), Ok(scheduled_at)) => Ok(CallPatch {
                phone,
                script_id,
                metadata,
                scheduled_at,
            }),
            (phone, script_id, metadata, scheduled_at) => Err(every_error([
                phone.err(),
                script_id.err(),
                metadata.err(),
                scheduled_at.err(),
            ])),
        }
    }
}

/// The `Idempotency-Key` header: 1–255 printable ASCII characters.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid-idempotency-key",
            "Send one Idempotency-Key header, not several.",
        ));
    }
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| {
            (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x20..=0x7e).contains(&b))
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-idempotency-key",
                "Idempotency-Key must be 1 to 255 printable ASCII characters.",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// SHA-256 (hex) of the request as parsed: the same call asked for twice hashes the same,
/// whatever the JSON's key order, whitespace or time-zone offsets.
pub fn request_hash(call: &NewCall) -> String {
    let instant = |at: Option<DateTime<Utc>>| {
        at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    let mut canonical = serde_json::json!({
        "to": call.phone.as_str(),
        "scriptId": call.script_id.as_str(),
        "metadata": sorted_keys(&call.metadata.to_value()),
        "scheduledAt": instant(call.scheduled_at),
        "expiresAt": instant(call.expires_at),
    });
    // Only when given: a request without one hashes as it did before callbackUrl existed,
    // so keys stored earlier still recognise their retries.
    if let (Some(url), Some(fields)) = (&call.callback_url, canonical.as_object_mut()) {
        fields.insert(
            "callbackUrl".to_owned(),
            serde_json::Value::String(url.clone()),
        );
    }
    if let (Some(campaign), Some(fields)) = (call.campaign_id, canonical.as_object_mut()) {
        fields.insert(
            "campaignId".to_owned(),
            serde_json::Value::String(campaign.to_string()),
        );
    }
    // The rules as resolved: the same window and zone asked for twice hash the same (and a
    // request without them as before they existed, when no CALL_WINDOW applies).
    if let (Some(window), Some(fields)) = (call.rules.window_json(), canonical.as_object_mut()) {
        fields.insert("window".to_owned(), window);
    }
    if let (Some(zone), Some(fields)) = (&call.timezone, canonical.as_object_mut()) {
        fields.insert(
            "timezone".to_owned(),
            serde_json::Value::String(zone.clone()),
        );
    }
    let digest = Sha256::digest(sorted_keys(&canonical).to_string().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The value with every object's keys in sorted order (whatever the map's own ordering).
pub(crate) fn sorted_keys(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key.clone(), sorted_keys(value)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(sorted_keys).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(body: serde_json::Value) -> Result<NewCall, ApiError> {
        serde_json::from_value::<CreateCallRequest>(body)
            .expect("shape")
            .validate(Utc::now(), None)
    }

    fn invalid_fields(result: Result<impl std::fmt::Debug, ApiError>) -> Vec<&'static str> {
        match result {
            Err(ApiError::Invalid(errors)) => errors.iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn create_lists_every_invalid_field() {
        let fields = invalid_fields(create(json!({
            "to": "555", "scriptId": "", "metadata": [1], "scheduledAt": "tomorrow", "expiresAt": "2001-01-01T00:00:00Z"
        })));
        assert_eq!(
            fields,
            ["to", "scriptId", "metadata", "scheduledAt", "expiresAt"]
        );
    }

    #[test]
    fn expiry_must_follow_schedule() {
        let fields = invalid_fields(create(json!({
            "to": "+14155550100", "scriptId": "s",
            "scheduledAt": "2100-01-02T00:00:00Z", "expiresAt": "2100-01-01T00:00:00Z"
        })));
        assert_eq!(fields, ["expiresAt"]);
    }

    #[test]
    fn hash_ignores_key_order_and_offsets() {
        let a = create(json!({"to": "+14155550100", "scriptId": "s", "metadata": {"a": 1, "b": {"x": 1, "y": 2}},
            "scheduledAt": "2100-01-01T01:00:00+01:00"}))
        .unwrap();
        let b = create(json!({"scheduledAt": "2100-01-01T00:00:00Z", "metadata": {"b": {"y": 2, "x": 1}, "a": 1},
            "scriptId": "s", "to": "+14155550100"}))
        .unwrap();
        let c = create(json!({"to": "+14155550100", "scriptId": "s", "metadata": {"a": 2, "b": {"x": 1, "y": 2}},
            "scheduledAt": "2100-01-01T00:00:00Z"}))
        .unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&c));
    }

    #[test]
    fn a_callback_url_is_checked_and_hashed_only_when_given() {
        let without = create(json!({"to": "+14155550100", "scriptId": "s"})).unwrap();
        let with = create(json!({"to": "+14155550100", "scriptId": "s",
            "callbackUrl": "https://crm.example.com/hook"}))
        .unwrap();
        assert_eq!(
            with.callback_url.as_deref(),
            Some("https://crm.example.com/hook")
        );
        assert_ne!(request_hash(&without), request_hash(&with));
        // The hash of a request without one is what it was before callbackUrl existed.
        // (SHA-256 of {"expiresAt":null,"metadata":{},"scheduledAt":null,"scriptId":"s","to":"+14155550100"}.)
        assert_eq!(
            request_hash(&without),
            "a40f85ea7be1b7967709c5d9a68693bdb2c9146682d192af4cbe6bd289ec6eb3"
        );
        assert_eq!(
            invalid_fields(create(json!({"to": "+14155550100", "scriptId": "s",
                "callbackUrl": "ftp://crm.example.com/hook"}))),
            ["callbackUrl"]
        );
    }

    #[test]
    fn windows_and_time_zones_are_checked_with_the_other_fields() {
        let fields = invalid_fields(create(json!({
            "to": "+14155550100", "scriptId": "",
            "window": {"start": "09:00", "end": "20:00", "days": []},
        })));
        assert_eq!(fields, ["scriptId", "window"]);
        let fields = invalid_fields(create(json!({
            "to": "+14155550100", "scriptId": "s", "timezone": "Europe/Atlantis",
        })));
        assert_eq!(fields, ["timezone"]);
        let call = create(json!({
            "to": "+14155550100", "scriptId": "s", "timezone": "asia/kolkata",
            "window": {"start": "09:00", "end": "20:00"},
        }));
        // IANA names are case-sensitive: a wrong case is not one.
        assert_eq!(invalid_fields(call), ["timezone"]);
        let call = create(json!({
            "to": "+14155550100", "scriptId": "s", "timezone": "Asia/Kolkata",
            "window": {"start": "09:00", "end": "20:00"},
        }))
        .unwrap();
        assert_eq!(call.timezone.as_deref(), Some("Asia/Kolkata"));
        assert_eq!(call.rules.zone_names(), ["Asia/Kolkata"]);
        let plain = create(json!({"to": "+14155550100", "scriptId": "s"})).unwrap();
        assert_ne!(request_hash(&plain), request_hash(&call));
    }

    #[test]
    fn patch_tells_null_from_absent() {
        let patch: PatchCallRequest = serde_json::from_value(json!({"scheduledAt": null})).unwrap();
        let patch = patch.validate().unwrap();
        assert_eq!(patch.scheduled_at, Some(None));
        assert!(patch.phone.is_none());
        let patch: PatchCallRequest =
            serde_json::from_value(json!({"to": null, "scriptId": null})).unwrap();
        assert_eq!(invalid_fields(patch.validate()), ["to", "scriptId"]);
        let patch: PatchCallRequest = serde_json::from_value(json!({})).unwrap();
        assert!(matches!(patch.validate(), Err(ApiError::NothingToChange)));
    }
}
