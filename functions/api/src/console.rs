//! `/console`: the operator console. Static files embedded in the binary at build time
//! (`build.rs`, from `functions/api/console/`) that call this API from the browser with
//! relative URLs, so the same files work under `ebra dev`, behind API Gateway and behind
//! `ebra console --api URL`. They hold no data: the routes are public and every API call the
//! page makes is authenticated as any client's is.
//!
//! The page is `/console` and its files `/console/<name>`. Each file is served gzip-encoded
//! when the client accepts it, with a strong ETag (304 on `If-None-Match`), `no-cache` (so a
//! new deployment shows at once) and a Content-Security-Policy that allows only this origin.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its name under `/console/`.
    pub path: &'static str,
    pub content_type: &'static str,
    /// The ETag of `raw`, quoted.
    pub etag: &'static str,
    /// The ETag of `gzip`, quoted.
    pub gzip_etag: &'static str,
    pub raw: &'static [u8],
    pub gzip: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// The console's page.
pub const PATH: &str = "/console";
const INDEX: &str = "index.html";

/// Only this origin's scripts, styles and API; no framing, no inline code.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The console's routes (stateless, public: merge them outside any auth layer).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PATH, get(index))
        .route("/console/", get(to_canonical_path))
        .route("/console/{*path}", get(file))
}

/// An embedded file by its name under `/console/`.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

async fn index(headers: HeaderMap) -> Response {
    match asset(INDEX) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::Internal("the console's index.html is not embedded".to_owned())
            .into_response(),
    }
}

/// `/console/` → `/console`, where the page's relative links resolve. The Location is
/// relative, so it stays right under an API Gateway base path.
async fn to_canonical_path() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static("../console"))],
    )
        .into_response()
}

async fn file(Path(path): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    match asset(&path) {
        // The page has one address, `/console`, where its relative links resolve.
        Some(asset) if asset.path != INDEX => serve(asset, &headers),
        _ => ApiError::RouteNotFound(uri.path().to_owned()).into_response(),
    }
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let gzip = accepts_gzip(request);
    let (etag, body) = if gzip {
        (asset.gzip_etag, asset.gzip)
    } else {
        (asset.etag, asset.raw)
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::ETAG, HeaderValue::from_static(etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if not_modified(request, etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (StatusCode::OK, headers, Body::from(body)).into_response()
}

/// Whether `Accept-Encoding` lists `gzip` (or `*`) with a non-zero q-value.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let q = parts
                .filter_map(|param| param.strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (name.eq_ignore_ascii_case("gzip") || name == "*") && q > 0.0
        })
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;

    fn with(name: HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn gzip_negotiation() {
        let accepts = |value: &str| accepts_gzip(&with(header::ACCEPT_ENCODING, value));
        assert!(accepts("gzip, deflate, br, zstd"));
        assert!(accepts("GZIP"));
        assert!(accepts("br;q=1.0, gzip;q=0.8"));
        assert!(accepts("*"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn etag_matching() {
        let matches = |value: &str| not_modified(&with(header::IF_NONE_MATCH, value), "\"abc\"");
        assert!(matches("\"abc\""));
        assert!(matches("\"x\", \"abc\""));
        assert!(matches("W/\"abc\""));
        assert!(matches("*"));
        assert!(!matches("\"abcd\""));
        assert!(!not_modified(&HeaderMap::new(), "\"abc\""));
    }

    #[test]
    fn every_file_is_embedded_with_its_gzip_form() {
        let index = asset(INDEX).expect("index.html is embedded");
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        for asset in ASSETS {
            assert!(!asset.raw.is_empty(), "{}", asset.path);
            // The gzip magic number.
            assert_eq!(&asset.gzip[..2], &[0x1f, 0x8b], "{}", asset.path);
            assert_ne!(asset.etag, asset.gzip_etag);
        }
        assert!(asset("main.js").is_some());
    }
}
