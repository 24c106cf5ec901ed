//! `ebra console --api URL`: the operator console on this machine, against a deployed API.
//!
//! A deployed API behind IAM authorization accepts only SigV4-signed requests, which a
//! browser cannot make. This serves the console (the files embedded in the API crate) on
//! 127.0.0.1 and forwards every other request — the console's calls to `/calls…`,
//! `/metrics…` — to the deployed API, signed with SigV4 for `execute-api` with credentials
//! from the standard AWS chain (environment, profile, SSO, web identity, container, instance).
//!
//! This process signs whatever reaches it with the operator's credentials, so it forwards
//! only what the console's own page sends: the `Host` must be the loopback address it
//! listens on (a DNS-rebinding page has another), and `Origin` and `Sec-Fetch-Site`, which
//! browsers send, must say same-origin (another site's page cannot drive it). Clients that
//! send neither (curl) are let through: they run as the operator anyway.

pub mod sigv4;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::SharedCredentialsProvider;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use ebra_shared::problem::Problem;

use sigv4::Signer;

/// Bodies the proxy reads before forwarding (the API itself refuses more than 64 KiB).
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a forwarded request may take (API Gateway's own limit is 30 s).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(35);

/// Request headers forwarded to the API (and signed); the browser's `Authorization` is not.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("idempotency-key"),
];
/// Response headers passed back to the browser.
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::RETRY_AFTER,
    header::ALLOW,
    header::WWW_AUTHENTICATE,
    HeaderName::from_static("idempotent-replayed"),
];

#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// The deployed API's base URL (the stack's `ApiUrl` output), e.g.
    /// https://abc123.execute-api.eu-west-1.amazonaws.com
    #[arg(long, value_name = "URL")]
    pub api: String,
    /// The local port to serve the console on (127.0.0.1).
    #[arg(long, default_value_t = 3100)]
    pub port: u16,
    /// The region to sign for; by default the one in an execute-api URL, else the AWS
    /// configuration's (AWS_REGION, the profile).
    #[arg(long)]
    pub region: Option<String>,
}

/// Where forwarded requests go and how they are signed.
pub struct Proxy {
    /// The API's base URL without a trailing slash (it may have a path: a stage, a base path).
    base: String,
    signer: Signer,
    client: reqwest::Client,
    /// The `Host` values the console's page is served under.
    allowed_hosts: Vec<String>,
}

impl Proxy {
    /// A proxy to `api`, for a console listening on 127.0.0.1:`port`.
    pub fn new(api: &str, port: u16, signer: Signer) -> anyhow::Result<Self> {
        let base = parse_base(api)?;
        let client = reqwest::Client::builder()
            .timeout(UPSTREAM_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base,
            signer,
            client,
            allowed_hosts: ["127.0.0.1", "localhost", "[::1]"]
                .iter()
                .map(|host| format!("{host}:{port}"))
                .collect(),
        })
    }

    /// Why a request may not be forwarded, if it may not.
    fn refusal(&self, headers: &HeaderMap) -> Option<String> {
        let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let host = text(header::HOST).unwrap_or_default();
        if !self.allowed_hosts.iter().any(|allowed| allowed == host) {
            return Some(format!(
                "This proxy serves only http://{}; the request was for host {host:?}.",
                self.allowed_hosts[0]
            ));
        }
        if let Some(origin) = text(header::ORIGIN) {
            if origin != format!("http://{host}") {
                return Some(format!(
                    "Requests from {origin} are not forwarded: only the console's own page may use this proxy."
                ));
            }
        }
        if let Some(site) = text(HeaderName::from_static("sec-fetch-site")) {
            if site != "same-origin" && site != "none" {
                return Some(format!(
                    "A {site} request is not forwarded: only the console's own page may use this proxy."
                ));
            }
        }
        None
    }
}

/// The API's base URL, checked: http(s), a host, no query; without a trailing slash.
fn parse_base(api: &str) -> anyhow::Result<String> {
    let url =
        reqwest::Url::parse(api.trim()).with_context(|| format!("--api {api:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--api must be an http:// or https:// URL, got {api:?}");
    }
    if url.host_str().is_none() {
        bail!("--api {api:?} has no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--api {api:?} must not have a query or fragment");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The console's files, and every other path forwarded to the API.
pub fn router(proxy: Arc<Proxy>) -> Router {
    ebra_api::console::routes()
        .fallback(forward)
        .with_state(proxy)
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    if let Some(reason) = proxy.refusal(request.headers()) {
        return Problem::new(StatusCode::FORBIDDEN, "console-proxy-forbidden", reason)
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("The console proxy forwards bodies of at most {MAX_BODY_BYTES} bytes."),
            )
            .into_response()
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{path}", proxy.base);
    match send_signed(&proxy, parts.method, &url, &parts.headers, body).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn send_signed(
    proxy: &Proxy,
    method: Method,
    url: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let bad_gateway =
        |detail: String| Problem::new(StatusCode::BAD_GATEWAY, "console-proxy", detail);
    let mut upstream = http::Request::builder().method(method).uri(url);
    for name in FORWARDED_REQUEST_HEADERS {
        for value in headers.get_all(&name) {
            upstream = upstream.header(&name, value);
        }
    }
    let mut upstream = upstream
        .body(body)
        .map_err(|error| bad_gateway(format!("Could not build the request to {url}: {error}")))?;
    proxy.signer.sign(&mut upstream).await.map_err(|error| {
        bad_gateway(format!(
            "Could not sign the request with AWS credentials: {error}. Check `aws sts get-caller-identity`."
        ))
    })?;
    let upstream = reqwest::Request::try_from(upstream)
        .map_err(|error| bad_gateway(format!("Could not build the request to {url}: {error}")))?;
    let answer = proxy.client.execute(upstream).await.map_err(|error| {
        bad_gateway(format!(
            "The API at {} did not answer: {}",
            proxy.base,
            sigv4::error_chain(&error)
        ))
    })?;
    let status = answer.status();
    let mut response_headers = HeaderMap::new();
    for name in FORWARDED_RESPONSE_HEADERS {
        for value in answer.headers().get_all(&name) {
            response_headers.append(name.clone(), value.clone());
        }
    }
    let body = answer.bytes().await.map_err(|error| {
        bad_gateway(format!(
            "The API's answer broke off: {}",
            sigv4::error_chain(&error)
        ))
    })?;
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((status, response_headers, Body::from(body)).into_response())
}

/// `ebra console`: resolves the region and the credentials (failing before it listens when
/// either is missing), then serves until Ctrl-C.
pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let base = parse_base(&args.api)?;
    let host = reqwest::Url::parse(&base)?
        .host_str()
        .map(str::to_owned)
        .unwrap_or_default();
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    let explicit = args
        .region
        .clone()
        .or_else(|| sigv4::region_from_host(&host));
    if let Some(region) = &explicit {
        loader = loader.region(Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .context("no region to sign for: pass --region, or set AWS_REGION (the URL is not an execute-api URL that names one)")?;
    let provider: SharedCredentialsProvider = sdk
        .credentials_provider()
        .context("no AWS credentials provider is configured")?;
    let signer = Signer::new(region.clone(), provider);
    signer.credentials().await.context(
        "no AWS credentials found in the standard chain (environment, profile, SSO, web identity, container, instance): \
         try `aws configure`, `aws sso login`, or AWS_PROFILE",
    )?;
    let proxy = Arc::new(Proxy::new(&base, args.port, signer)?);

    let address = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} (choose another with --port)"))?;
    println!();
    println!("Ebra console for {base}");
    println!("  console   http://{address}/console");
    println!(
        "  signing   SigV4, service {}, region {region}, credentials from the AWS chain",
        sigv4::SERVICE
    );
    println!("Stop with Ctrl-C.");
    println!();
    axum::serve(listener, router(proxy))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the console")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base("https://abc.execute-api.eu-west-1.amazonaws.com/").unwrap(),
            "https://abc.execute-api.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            parse_base("https://api.example.com/ebra/").unwrap(),
            "https://api.example.com/ebra"
        );
        assert!(parse_base("ftp://example.com").is_err());
        assert!(parse_base("not a url").is_err());
        assert!(parse_base("https://example.com/?x=1").is_err());
    }
}
