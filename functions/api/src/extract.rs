//! axum's extractors, with their rejections turned into [`ApiError`] problems: without these
//! wrappers axum answers bad JSON, paths and queries with plain-text bodies.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// A JSON object body (`application/json` or `application/*+json`), limited by the router's
/// `DefaultBodyLimit`.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "Send the body as JSON with `Content-Type: application/json`.".to_owned(),
            ));
        }
        let body = Bytes::from_request(request, state).await?;
        // axum's parser: its messages name the offending field's path.
        let Json(value) = Json::<T>::from_bytes(&body)?;
        // serde also fills a struct from a JSON array, by position; a body must be an object.
        // The JSON parsed, so its first significant byte tells an object from anything else.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request(
                "malformed-body",
                "The body must be a JSON object.",
            ));
        }
        Ok(Self(value))
    }
}

/// The request's media type: its `Content-Type` without parameters, lower-cased
/// (`text/csv; charset=utf-8` → `text/csv`); empty when there is none.
pub(crate) fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// `application/json`, or a JSON-based type such as `application/merge-patch+json`.
pub(crate) fn has_json_content_type(headers: &HeaderMap) -> bool {
    let essence = media_type(headers);
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The `{id}` of `/calls/{id}...`.
pub struct CallIdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for CallIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<Uuid>::from_request_parts(parts, state).await?;
        Ok(Self(id))
    }
}

/// The `{id}` of `/webhook-endpoints/{id}...` and `/events/{id}/...`.
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<Uuid>::from_request_parts(parts, state).await?;
        Ok(Self(id))
    }
}

/// A query string deserialised into `T` (unknown or repeated parameters are refused by `T`).
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let accepts = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(content_type).unwrap(),
            );
            has_json_content_type(&headers)
        };
        assert!(accepts("application/json"));
        assert!(accepts("Application/JSON; charset=utf-8"));
        assert!(accepts("application/merge-patch+json"));
        assert!(!accepts("text/json"));
        assert!(!accepts("text/plain"));
        assert!(!accepts("application/x-www-form-urlencoded"));
        assert!(!has_json_content_type(&HeaderMap::new()));
    }
}
