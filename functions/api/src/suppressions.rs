//! The `/suppressions` routes: the do-not-call list (issue 14). A number on it is never
//! dialed: creating a call to it is refused (422 `urn:ebra:problem:suppressed`), and a
//! PENDING call to it is CANCELED when it comes due. Every change records who made it (the
//! caller's identity when one is known, see [`crate::auth::caller_identity`]) and when.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ebra_shared::domain::{InvalidValue, PhoneNumber};
use ebra_shared::problem::Problem;
use ebra_shared::store::suppressions::{
    self as store, BulkAdded, ChangeSource, Suppression, SuppressionChange, SuppressionEntry,
    MAX_REASON_CHARS,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::caller_identity_for_records;
use crate::error::ApiError;
use crate::extract::{has_json_content_type, QueryParams};
use crate::AppState;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Most rows one CSV may hold (the body limit allows about this many anyway).
pub const MAX_CSV_ROWS: usize = 5000;
/// Invalid CSV rows listed in one answer, at most.
const MAX_ROW_ERRORS: usize = 20;

/// A number as clients write it, normalised to E.164: spaces, dots, dashes and parentheses
/// dropped, a leading `00` read as `+`. It must then be a valid number.
pub fn normalise_number(field: &'static str, raw: &str) -> Result<PhoneNumber, InvalidValue> {
    let compact: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')' | '\u{a0}'))
        .collect();
    let e164 = match compact.strip_prefix("00") {
        Some(rest) if !compact.starts_with('+') => format!("+{rest}"),
        _ => compact,
    };
    PhoneNumber::parse(&e164).map_err(|invalid| InvalidValue::new(field, invalid.message))
}

fn check_reason(
    field: &'static str,
    reason: Option<String>,
) -> Result<Option<String>, InvalidValue> {
    match reason.map(|r| r.trim().to_owned()) {
        Some(r) if r.chars().count() > MAX_REASON_CHARS => Err(InvalidValue::new(
            field,
            format!("must be at most {MAX_REASON_CHARS} characters"),
        )),
        Some(r) if r.chars().any(char::is_control) => Err(InvalidValue::new(
            field,
            "must not contain control characters",
        )),
        Some(r) if r.is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// The `{phone}` of a suppression route, normalised.
pub struct PhonePath(pub PhoneNumber);

impl<S: Send + Sync> FromRequestParts<S> for PhonePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        normalise_number("phone", &raw)
            .map(Self)
            .map_err(|invalid| ApiError::Invalid(vec![invalid]))
    }
}

/// `PUT /suppressions/{phone}`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutSuppressionRequest {
    /// Why the number must not be called (kept, with who added it and when): at most 500
    /// characters.
    #[schema(example = "asked not to be called, 2030-01-02")]
    pub reason: Option<String>,
}

/// A number on the list, with every change made to it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionWithHistory {
    #[serde(flatten)]
    pub suppression: Suppression,
    /// Who changed it and when, oldest first.
    pub history: Vec<SuppressionChange>,
}

/// One page of the list, by number.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionList {
    pub items: Vec<Suppression>,
    /// Pass as `cursor` for the next page; null when this page is the last.
    pub next_cursor: Option<String>,
}

/// `GET /suppressions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct ListSuppressionsParams {
    /// Numbers per page, 1–1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub page_size: Option<String>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// Add a number to the do-not-call list (or replace its reason).
#[utoipa::path(
    put,
    path = "/suppressions/{phone}",
    tag = "suppressions",
    operation_id = "putSuppression",
    params(("phone" = String, Path, description = "The number, E.164 (`%2B14155550100`); spaces, dots, dashes and parentheses are dropped.")),
    request_body(content = Option<PutSuppressionRequest>, content_type = "application/json",
        description = "Optional: `{\"reason\": \"...\"}`. An empty body adds the number without one."),
    responses(
        (status = 201, description = "The number is now on the list.", body = Suppression),
        (status = 200, description = "The number was on the list already (its reason replaced when one is given).", body = Suppression),
        (status = 400, description = "Malformed JSON or an unknown field.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid phone number, or a reason over 500 characters.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_suppression(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
    PhonePath(phone): PhonePath,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: PutSuppressionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PutSuppressionRequest::default()
    } else {
        if !has_json_content_type(&headers) {
            return Err(ApiError::UnsupportedMediaType(
                "Send the body as JSON with `Content-Type: application/json`, or none.".to_owned(),
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("malformed-body", e.to_string()))?
    };
    let reason = check_reason("reason", request.reason).map_err(|e| ApiError::Invalid(vec![e]))?;
    let actor = caller_identity_for_records(&extensions, state.config.api_token.is_some());
    let entry = SuppressionEntry { phone, reason };
    let mut changed = store::add_suppressions(
        &state.pool,
        std::slice::from_ref(&entry),
        actor.as_deref(),
        ChangeSource::Put,
    )
    .await?;
    let (suppression, added) = changed
        .pop()
        .ok_or_else(|| ApiError::Internal("adding a suppression answered nothing".to_owned()))?;
    tracing::info!(phone = %suppression.phone, added, actor = ?actor, "number suppressed");
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(suppression)).into_response())
}

/// Remove a number from the do-not-call list.
#[utoipa::path(
    delete,
    path = "/suppressions/{phone}",
    tag = "suppressions",
    operation_id = "deleteSuppression",
    params(("phone" = String, Path, description = "The number, E.164 (`%2B14155550100`).")),
    responses(
        (status = 204, description = "Removed (the change is kept in its history)."),
        (status = 404, description = "The number is not on the list.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid phone number.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_suppression(
    State(state): State<AppState>,
    extensions: Extensions,
    PhonePath(phone): PhonePath,
) -> Result<StatusCode, ApiError> {
    let actor = caller_identity_for_records(&extensions, state.config.api_token.is_some());
    if store::remove_suppression(&state.pool, &phone, actor.as_deref()).await? {
        tracing::info!(phone = %phone, actor = ?actor, "number removed from the do-not-call list");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::SuppressionNotFound(phone.as_str().to_owned()))
    }
}

/// A number on the do-not-call list, with who changed it and when.
#[utoipa::path(
    get,
    path = "/suppressions/{phone}",
    tag = "suppressions",
    operation_id = "getSuppression",
    params(("phone" = String, Path, description = "The number, E.164 (`%2B14155550100`).")),
    responses(
        (status = 200, description = "The number and its history.", body = SuppressionWithHistory),
        (status = 404, description = "The number is not on the list.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid phone number.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_suppression(
    State(state): State<AppState>,
    PhonePath(phone): PhonePath,
) -> Result<Json<SuppressionWithHistory>, ApiError> {
    let suppression = store::get_suppression(&state.pool, &phone)
        .await?
        .ok_or_else(|| ApiError::SuppressionNotFound(phone.as_str().to_owned()))?;
    let history = store::suppression_history(&state.pool, &phone).await?;
    Ok(Json(SuppressionWithHistory {
        suppression,
        history,
    }))
}

/// List the do-not-call list, by number.
#[utoipa::path(
    get,
    path = "/suppressions",
    tag = "suppressions",
    operation_id = "listSuppressions",
    params(ListSuppressionsParams),
    responses(
        (status = 200, description = "One page of numbers.", body = SuppressionList),
        (status = 400, description = "pageSize outside 1–1000, a cursor this API did not return, or an unknown parameter.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_suppressions(
    State(state): State<AppState>,
    QueryParams(params): QueryParams<ListSuppressionsParams>,
) -> Result<Json<SuppressionList>, ApiError> {
    let mut errors = Vec::new();
    let page_size = match params.page_size {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => match raw.parse::<u32>() {
            Ok(size) if (1..=MAX_PAGE_SIZE).contains(&size) => size,
            _ => {
                errors.push(InvalidValue::new(
                    "pageSize",
                    format!("must be a whole number from 1 to {MAX_PAGE_SIZE}, got {raw:?}"),
                ));
                DEFAULT_PAGE_SIZE
            }
        },
    };
    let after = match params.cursor {
        None => None,
        Some(raw) => match decode_cursor(&raw) {
            Some(phone) => Some(phone),
            None => {
                errors.push(InvalidValue::new(
                    "cursor",
                    "is not a cursor this API returned (nextCursor)",
                ));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::InvalidQuery(errors));
    }
    let (items, next) = store::list_suppressions(&state.pool, after.as_deref(), page_size).await?;
    Ok(Json(SuppressionList {
        items,
        next_cursor: next.map(|phone| URL_SAFE_NO_PAD.encode(phone)),
    }))
}

fn decode_cursor(raw: &str) -> Option<String> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    PhoneNumber::parse(&text)
        .ok()
        .map(|p| p.as_str().to_owned())
}

/// Add many numbers at once from CSV: one number per line, optionally a reason after a
/// comma (`+14155550100,asked not to be called`); a first line `phone,reason` is a header.
/// All or nothing: one invalid row refuses the whole file.
#[utoipa::path(
    post,
    path = "/suppressions",
    tag = "suppressions",
    operation_id = "addSuppressions",
    request_body(content = String, content_type = "text/csv",
        description = "`phone[,reason]` per line, at most 5000 lines; a `phone,reason` header line is skipped. A reason may be quoted (\"...\" with \"\" for a quote)."),
    responses(
        (status = 200, description = "How many numbers were added and how many were on the list already.", body = BulkAdded),
        (status = 413, description = "Body over 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `text/csv`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid rows (listed in `errors`, by line), no rows, or over 5000: nothing was added.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_suppressions(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BulkAdded>, ApiError> {
    if crate::extract::media_type(&headers) != "text/csv" {
        return Err(ApiError::UnsupportedMediaType(
            "Send the numbers as CSV with `Content-Type: text/csv`.".to_owned(),
        ));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::Invalid(vec![InvalidValue::new("csv", "must be UTF-8 text")]))?;
    let entries = parse_csv(text).map_err(ApiError::Invalid)?;
    let actor = caller_identity_for_records(&extensions, state.config.api_token.is_some());
    let changed =
        store::add_suppressions(&state.pool, &entries, actor.as_deref(), ChangeSource::Csv).await?;
    let added = changed.iter().filter(|(_, added)| *added).count() as u64;
    let result = BulkAdded {
        added,
        updated: changed.len() as u64 - added,
    };
    tracing::info!(added = result.added, updated = result.updated, actor = ?actor, "numbers suppressed from CSV");
    Ok(Json(result))
}

/// The rows of a suppression CSV, each number once (the last row of a number wins), or
/// every invalid row (up to [`MAX_ROW_ERRORS`]).
pub fn parse_csv(text: &str) -> Result<Vec<SuppressionEntry>, Vec<InvalidValue>> {
    let mut entries: Vec<SuppressionEntry> = Vec::new();
    let mut errors = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (phone, reason) = match line.split_once(',') {
            Some((phone, reason)) => (phone.trim(), Some(reason.trim())),
            None => (line.trim(), None),
        };
        if line_no == 1 && phone.eq_ignore_ascii_case("phone") {
            continue;
        }
        let phone = normalise_number("csv", unquote(phone).as_str());
        let reason = reason
            .map(unquote)
            .map_or(Ok(None), |r| check_reason("csv", Some(r)));
        match (phone, reason) {
            (Ok(phone), Ok(reason)) => {
                entries.retain(|e| e.phone != phone);
                entries.push(SuppressionEntry { phone, reason });
            }
            (phone, reason) => {
                for invalid in [phone.err(), reason.err()].into_iter().flatten() {
                    if errors.len() < MAX_ROW_ERRORS {
                        errors.push(InvalidValue::new(
                            "csv",
                            format!("line {line_no}: {}", invalid.message),
                        ));
                    }
                }
            }
        }
        if entries.len() > MAX_CSV_ROWS {
            return Err(vec![InvalidValue::new(
                "csv",
                format!("has more than {MAX_CSV_ROWS} numbers; send them in several files"),
            )]);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if entries.is_empty() {
        return Err(vec![InvalidValue::new("csv", "has no numbers")]);
    }
    Ok(entries)
}

/// A CSV field without its surrounding quotes (`""` inside read as `"`).
fn unquote(field: &str) -> String {
    match field
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
    {
        Some(inner) => inner.replace("\"\"", "\""),
        None => field.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_normalised_to_e164() {
        for raw in [
            "+1 (415) 555-0100",
            "+1.415.555.0100",
            "0014155550100",
            " +14155550100 ",
        ] {
            assert_eq!(
                normalise_number("phone", raw).map(|p| p.as_str().to_owned()),
                Ok("+14155550100".to_owned()),
                "{raw}"
            );
        }
        assert!(normalise_number("phone", "4155550100").is_err());
        assert!(normalise_number("phone", "+1555").is_err());
    }

    #[test]
    fn csv_rows_header_quotes_and_errors() {
        let entries = parse_csv(
            "phone,reason\r\n+14155550100,\"asked, politely\"\n\n+1 212 555 0100\n+14155550100,again\n",
        )
        .unwrap();
        let got: Vec<(&str, Option<&str>)> = entries
            .iter()
            .map(|e| (e.phone.as_str(), e.reason.as_deref()))
            .collect();
        assert_eq!(
            got,
            [("+12125550100", None), ("+14155550100", Some("again"))]
        );
        let errors = parse_csv("+14155550100\nnot a number\n+1555,x\n").unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].starts_with("line 2:"));
        assert!(messages[1].starts_with("line 3:"));
        assert!(parse_csv("phone,reason\n").is_err());
    }
}
