//! The body of `POST /campaigns/{id}/calls`: CSV or JSON rows, each parsed and checked on
//! its own, so that a bad row is answered with its field errors and never blocks the good
//! ones. Only a body that is not CSV or JSON at all (or too large) is refused whole.
//!
//! CSV: a header row; columns `to` (required), `scriptId`, `scheduledAt`, `expiresAt`,
//! `idempotencyKey`; every other column goes into the call's `metadata` (as text). A UTF-8
//! BOM, CRLF line endings and quoted fields (with commas, quotes or newlines) are read as
//! RFC 4180 says. An empty optional cell is as if absent.
//!
//! JSON: `{"calls": [{to, scriptId?, metadata?, scheduledAt?, expiresAt?, idempotencyKey?}]}`.

use chrono::{DateTime, Utc};
use ebra_shared::domain::{InvalidValue, Metadata, PhoneNumber, ScriptId};
use ebra_shared::rules::CallingWindow;
use ebra_shared::store::campaigns::{BulkCall, Campaign};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::requests::{check_expiry, parse_instant, sorted_keys};

/// Rows per request.
pub const MAX_ROWS: usize = 1000;
/// Bytes per request.
pub const MAX_BYTES: usize = 1024 * 1024;

/// The CSV columns with a meaning of their own; any other goes into `metadata`.
pub const KNOWN_COLUMNS: [&str; 5] = [
    "to",
    "scriptId",
    "scheduledAt",
    "expiresAt",
    "idempotencyKey",
];

/// One row as sent, before its checks.
#[derive(Debug, Default, Clone)]
pub struct RawRow {
    pub to: Option<String>,
    pub script_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub scheduled_at: Option<String>,
    pub expires_at: Option<String>,
    pub idempotency_key: Option<String>,
}

/// A row of the body: its fields, or why it could not even be read (a CSV row with the
/// wrong number of cells or not UTF-8, a JSON item of the wrong shape).
pub type ParsedRow = Result<RawRow, Vec<InvalidValue>>;

/// `{"calls": [...]}`, as sent to `POST /campaigns/{id}/calls` in JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkCallsRequest {
    /// At most 1,000 calls.
    #[schema(value_type = Vec<BulkCallRow>)]
    pub calls: Vec<serde_json::Value>,
}

/// One call of a bulk add (JSON). Absent `scriptId`, `expiresAt`: the campaign's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkCallRow {
    #[schema(example = "+14155550100")]
    pub to: Option<String>,
    pub script_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
    /// Default: a hash of the campaign and the row's content, so the same row sent twice
    /// creates one call.
    pub idempotency_key: Option<String>,
}

/// Parses a JSON body into rows. A body that is not a JSON object with a `calls` array is
/// a 400; each item is read on its own.
pub fn parse_json(body: &[u8]) -> Result<Vec<ParsedRow>, ApiError> {
    let request: BulkCallsRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "malformed-body",
            format!("The body must be {{\"calls\": [...]}} in JSON: {e}"),
        )
    })?;
    if request.calls.len() > MAX_ROWS {
        return Err(ApiError::TooManyRows);
    }
    Ok(request
        .calls
        .into_iter()
        .map(|item| {
            if !item.is_object() {
                return Err(vec![InvalidValue::new("row", "must be a JSON object")]);
            }
            let row: BulkCallRow = serde_json::from_value(item)
                .map_err(|e| vec![InvalidValue::new("row", e.to_string())])?;
            Ok(RawRow {
                to: row.to,
                script_id: row.script_id,
                metadata: row.metadata,
                scheduled_at: row.scheduled_at,
                expires_at: row.expires_at,
                idempotency_key: row.idempotency_key,
            })
        })
        .collect())
}

/// Parses a CSV body into rows (the header row excluded). A body without a header, or
/// without a `to` column, or with a column named twice, is a 400.
pub fn parse_csv(body: &[u8]) -> Result<Vec<ParsedRow>, ApiError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(body);
    let headers = reader
        .byte_headers()
        .map_err(|e| {
            ApiError::bad_request(
                "malformed-csv",
                format!("The CSV header row cannot be read: {e}"),
            )
        })?
        .clone();
    let mut columns = Vec::with_capacity(headers.len());
    for (n, raw) in headers.iter().enumerate() {
        let name = std::str::from_utf8(raw)
            .map_err(|_| {
                ApiError::bad_request(
                    "malformed-csv",
                    format!("CSV column {} has a name that is not UTF-8.", n + 1),
                )
            })?
            .trim()
            .to_owned();
        if name.is_empty() {
            return Err(ApiError::bad_request(
                "malformed-csv",
                format!("CSV column {} has no name in the header row.", n + 1),
            ));
        }
        if columns.contains(&name) {
            return Err(ApiError::bad_request(
                "malformed-csv",
                format!("CSV column {name:?} appears twice in the header row."),
            ));
        }
        columns.push(name);
    }
    if !columns.iter().any(|c| c == "to") {
        return Err(ApiError::bad_request(
            "malformed-csv",
            "The CSV header row has no `to` column (the number to dial).",
        ));
    }
    let mut rows = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                return Err(ApiError::bad_request(
                    "malformed-csv",
                    format!("The CSV cannot be read after row {}: {e}", rows.len()),
                ))
            }
        }
        if rows.len() == MAX_ROWS {
            return Err(ApiError::TooManyRows);
        }
        rows.push(csv_row(&columns, &record));
    }
    Ok(rows)
}

fn csv_row(columns: &[String], record: &csv::ByteRecord) -> ParsedRow {
    if record.len() != columns.len() {
        return Err(vec![InvalidValue::new(
            "row",
            format!(
                "has {} fields; the header row has {}",
                record.len(),
                columns.len()
            ),
        )]);
    }
    let mut row = RawRow::default();
    let mut metadata = serde_json::Map::new();
    for (name, raw) in columns.iter().zip(record.iter()) {
        let value = String::from_utf8(raw.to_vec()).map_err(|_| {
            vec![InvalidValue::new(
                "row",
                format!("column {name:?} is not UTF-8"),
            )]
        })?;
        let optional = || {
            let trimmed = value.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_owned())
        };
        match name.as_str() {
            "to" => row.to = optional(),
            "scriptId" => row.script_id = optional(),
            "scheduledAt" => row.scheduled_at = optional(),
            "expiresAt" => row.expires_at = optional(),
            "idempotencyKey" => row.idempotency_key = optional(),
            _ => {
                metadata.insert(name.clone(), serde_json::Value::String(value));
            }
        }
    }
    if !metadata.is_empty() {
        row.metadata = Some(serde_json::Value::Object(metadata));
    }
    Ok(row)
}

/// Checks one row against the rules (every bad field at once) and applies the campaign's
/// defaults; the row's key is its `idempotencyKey`, or a hash of the campaign and the row.
pub fn validate_row(
    row: RawRow,
    campaign: &Campaign,
    now: DateTime<Utc>,
    default_window: Option<&CallingWindow>,
) -> Result<BulkCall, Vec<InvalidValue>> {
    let phone = match &row.to {
        Some(to) => PhoneNumber::parse(to),
        None => Err(InvalidValue::new("to", "is required")),
    };
    let script_id = match row.script_id.as_deref().or(campaign.script_id.as_deref()) {
        Some(script) => ScriptId::parse(script),
        None => Err(InvalidValue::new(
            "scriptId",
            "is required: the campaign has no default scriptId",
        )),
    };
    let metadata = row
        .metadata
        .map_or_else(|| Ok(Metadata::empty()), Metadata::parse);
    let scheduled_at = row
        .scheduled_at
        .as_deref()
        .map(|raw| parse_instant("scheduledAt", raw))
        .transpose();
    let expires_at = match row.expires_at.as_deref() {
        Some(raw) => parse_instant("expiresAt", raw).map(Some),
        None => Ok(campaign.expires_at),
    }
    .and_then(|expiry| check_expiry(expiry, scheduled_at.as_ref().ok().copied().flatten(), now));
    // The calling rules, in the zones of the number.
    let from = scheduled_at
        .as_ref()
        .ok()
        .copied()
        .flatten()
        .map_or(now, |at| at.max(now));
    // The campaign's window, else the deployment's (a row has none of its own).
    let campaign_window = campaign
        .window
        .as_ref()
        .and_then(|spec| CallingWindow::from_spec("window", spec).ok());
    let window = campaign_window.as_ref().or(default_window);
    let rules = crate::requests::call_rules(&phone, None, None, window, from);
    let key = row
        .idempotency_key
        .map(|key| {
            if (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                Ok(key)
            } else {
                Err(InvalidValue::new(
                    "idempotencyKey",
                    "must be 1 to 255 printable ASCII characters",
                ))
            }
        })
        .transpose();
    match (
        phone,
        script_id,
        metadata,
        scheduled_at,
        expires_at,
        key,
        rules,
    ) {
        (
            Ok(phone),
            Ok(script_id),
            Ok(metadata),
            Ok(scheduled_at),
            Ok(expires_at),
            Ok(key),
            Ok((rules, window_opens_at)),
        ) => {
            let hash = row_hash(
                campaign,
                &phone,
                &script_id,
                &metadata,
                scheduled_at,
                expires_at,
            );
            Ok(BulkCall {
                idempotency_key: key.unwrap_or_else(|| format!("row:{hash}")),
                request_hash: hash,
                phone,
                script_id,
                metadata,
                scheduled_at,
                expires_at,
                callback_url: campaign.callback_url.clone(),
                rules,
                window_opens_at,
            })
        }
        (phone, script_id, metadata, scheduled_at, expires_at, key, rules) => Err([
            phone.err(),
            script_id.err(),
            metadata.err(),
            scheduled_at.err(),
            expires_at.err(),
            key.err(),
            rules.err(),
        ]
        .into_iter()
        .flatten()
        .collect()),
    }
}

/// SHA-256 (hex) of the campaign's id and the row as it will be stored: the same row sent
/// twice (whatever its column order, metadata key order or time-zone offsets) hashes the
/// same.
fn row_hash(
    campaign: &Campaign,
    phone: &PhoneNumber,
    script_id: &ScriptId,
    metadata: &Metadata,
    scheduled_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
) -> String {
    let instant = |at: Option<DateTime<Utc>>| {
        at.map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    let canonical = serde_json::json!({
        "campaignId": campaign.id,
        "to": phone.as_str(),
        "scriptId": script_id.as_str(),
        "metadata": sorted_keys(&metadata.to_value()),
        "scheduledAt": instant(scheduled_at),
        "expiresAt": instant(expires_at),
    });
    let digest = Sha256::digest(sorted_keys(&canonical).to_string().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebra_shared::store::campaigns::CampaignStatus;
    use uuid::Uuid;

    fn campaign(script: Option<&str>) -> Campaign {
        Campaign {
            id: Uuid::now_v7(),
            name: "c".to_owned(),
            script_id: script.map(str::to_owned),
            max_concurrency: None,
            expires_at: None,
            callback_url: None,
            window: None,
            status: CampaignStatus::Active,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            canceled_at: None,
            completed_at: None,
            sequence: 0,
        }
    }

    #[test]
    fn csv_with_bom_crlf_quotes_and_extra_columns() {
        let body = "\u{feff}to,name,note\r\n+14155550100,\"Doe, Jane\",\"line one\nline \"\"two\"\"\"\r\n+14155550101,Bob,\r\n";
        let rows = parse_csv(body.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.to.as_deref(), Some("+14155550100"));
        let metadata = first.metadata.as_ref().unwrap();
        assert_eq!(metadata["name"], "Doe, Jane");
        assert_eq!(metadata["note"], "line one\nline \"two\"");
        assert_eq!(
            rows[1].as_ref().unwrap().metadata.as_ref().unwrap()["note"],
            ""
        );
    }

    #[test]
    fn csv_rows_with_the_wrong_width_are_rejected_alone() {
        let rows = parse_csv(b"to,scriptId\n+14155550100,s\n+14155550101\n+14155550102,s,extra\n")
            .unwrap();
        assert!(rows[0].is_ok());
        assert!(rows[1].is_err());
        assert!(rows[2].is_err());
    }

    #[test]
    fn csv_without_a_to_column_or_with_a_repeated_one_is_refused_whole() {
        assert!(parse_csv(b"phone,scriptId\n+14155550100,s\n").is_err());
        assert!(parse_csv(b"to,to\n+14155550100,+14155550101\n").is_err());
        assert!(parse_csv(b"").is_err());
    }

    #[test]
    fn too_many_rows_are_refused() {
        let mut body = String::from("to\n");
        for n in 0..=MAX_ROWS {
            body.push_str(&format!("+1415555{:04}\n", n));
        }
        assert!(matches!(
            parse_csv(body.as_bytes()),
            Err(ApiError::TooManyRows)
        ));
    }

    #[test]
    fn rows_take_the_campaign_defaults_and_a_stable_key() {
        let campaign = campaign(Some("renewals"));
        let row = RawRow {
            to: Some("+14155550100".to_owned()),
            metadata: Some(serde_json::json!({"b": "2", "a": "1"})),
            ..RawRow::default()
        };
        let first = validate_row(row.clone(), &campaign, Utc::now(), None).unwrap();
        assert_eq!(first.script_id.as_str(), "renewals");
        let again = RawRow {
            metadata: Some(serde_json::json!({"a": "1", "b": "2"})),
            ..row.clone()
        };
        let second = validate_row(again, &campaign, Utc::now(), None).unwrap();
        assert_eq!(first.idempotency_key, second.idempotency_key);
        let other = validate_row(row, &self::campaign(Some("renewals")), Utc::now(), None).unwrap();
        assert_ne!(
            first.idempotency_key, other.idempotency_key,
            "keys differ per campaign"
        );
    }

    #[test]
    fn every_bad_field_of_a_row_is_listed() {
        let errors = validate_row(
            RawRow {
                to: Some("555".to_owned()),
                scheduled_at: Some("tomorrow".to_owned()),
                idempotency_key: Some(String::new()),
                ..RawRow::default()
            },
            &campaign(None),
            Utc::now(),
            None,
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["to", "scriptId", "scheduledAt", "idempotencyKey"]);
    }
}
