//! `ebra console --api URL`: the console served locally, every other request forwarded to
//! the deployed API signed with SigV4. The "deployed API" here is a loopback server that
//! checks each signature the way API Gateway does, with an implementation of its own (written
//! from AWS's description of SigV4 and checked against AWS's published test vector), so a
//! request passes only if the proxy signed exactly what it sent.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use common::http::send;
use ebra::console::sigv4::Signer;
use ebra::console::{router, Proxy};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

const PORT: u16 = 3100;
const HOST: &str = "127.0.0.1:3100";
const REGION: &str = "eu-west-1";
const ACCESS_KEY: &str = "AKIDCONSOLETEST";
const SECRET_KEY: &str = "console/test/secret/key";
const SESSION_TOKEN: &str = "session-token-for-the-console-test";

// ---------------------------------------------------------------------------------------------
// A SigV4 verifier of our own, as API Gateway checks a request.

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn uri_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8 query")
}

/// Checks a request's SigV4 signature; `Err` says what is wrong.
fn verify(
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
    region: &str,
    service: &str,
) -> Result<(), String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = text("authorization").ok_or("no Authorization header")?;
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| format!("not AWS4-HMAC-SHA256: {authorization}"))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(", ") {
        match part.split_once('=') {
            Some(("Credential", value)) => credential = Some(value),
            Some(("SignedHeaders", value)) => signed_headers = Some(value),
            Some(("Signature", value)) => signature = Some(value),
            _ => return Err(format!("unexpected part {part:?}")),
        }
    }
    let (credential, signed_headers, signature) = (
        credential.ok_or("no Credential")?,
        signed_headers.ok_or("no SignedHeaders")?,
        signature.ok_or("no Signature")?,
    );
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("signature {signature:?} is not 64 hex digits"));
    }
    let amz_date = text("x-amz-date").ok_or("no x-amz-date")?;
    let date_ok = amz_date.len() == 16
        && amz_date.as_bytes()[8] == b'T'
        && amz_date.ends_with('Z')
        && amz_date[..8].bytes().all(|b| b.is_ascii_digit())
        && amz_date[9..15].bytes().all(|b| b.is_ascii_digit());
    if !date_ok {
        return Err(format!("x-amz-date {amz_date:?} is not YYYYMMDDTHHMMSSZ"));
    }
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5
        || scope[1] != &amz_date[..8]
        || scope[2] != region
        || scope[3] != service
        || scope[4] != "aws4_request"
    {
        return Err(format!(
            "credential scope {credential:?} is not <key>/{}/{region}/{service}/aws4_request",
            &amz_date[..8]
        ));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    if names != sorted || names.iter().any(|n| n.to_ascii_lowercase() != *n) {
        return Err(format!(
            "SignedHeaders {signed_headers:?} is not sorted lower case"
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !names.contains(&required) {
            return Err(format!("SignedHeaders {signed_headers:?} lacks {required}"));
        }
    }
    if headers.contains_key("x-amz-security-token") && !names.contains(&"x-amz-security-token") {
        return Err("x-amz-security-token is sent but not signed".to_owned());
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                v.to_str()
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} is not sent"));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    // Every segment encoded once more (SigV4 for services other than S3).
    let canonical_uri = uri
        .path()
        .split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut query: Vec<(String, String)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                uri_encode(&percent_decode(name)),
                uri_encode(&percent_decode(value)),
            )
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(body)
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/{region}/{service}/aws4_request\n{}",
        &amz_date[..8],
        sha256_hex(canonical_request.as_bytes())
    );
    let key = [region, service, "aws4_request"].iter().fold(
        hmac(format!("AWS4{secret}").as_bytes(), &amz_date[..8]),
        |key, part| hmac(&key, part),
    );
    let expected = hex(&hmac(&key, &string_to_sign));
    if expected != signature {
        return Err(format!(
            "signature mismatch: expected {expected}, got {signature}\ncanonical request:\n{canonical_request}"
        ));
    }
    Ok(())
}

#[test]
fn the_verifier_accepts_the_published_get_vanilla_vector_and_nothing_else() {
    // aws-sig-v4-test-suite/get-vanilla.
    let mut headers = HeaderMap::new();
    headers.insert("host", "example.amazonaws.com".parse().unwrap());
    headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
    headers.insert(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
         SignedHeaders=host;x-amz-date, \
         Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            .parse()
            .unwrap(),
    );
    let uri: Uri = "/".parse().unwrap();
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    verify("GET", &uri, &headers, b"", secret, "us-east-1", "service").unwrap();
    assert!(verify("POST", &uri, &headers, b"", secret, "us-east-1", "service").is_err());
    assert!(verify("GET", &uri, &headers, b"x", secret, "us-east-1", "service").is_err());
    assert!(verify("GET", &uri, &headers, b"", "other", "us-east-1", "service").is_err());
    assert!(verify("GET", &uri, &headers, b"", secret, "eu-west-1", "service").is_err());
    let other: Uri = "/?a=b".parse().unwrap();
    assert!(verify("GET", &other, &headers, b"", secret, "us-east-1", "service").is_err());
}

// ---------------------------------------------------------------------------------------------
// The deployed API, as a loopback server that verifies every request.

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
    verdict: Result<(), String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn upstream(log: Log, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let verdict = verify(
        method.as_str(),
        &uri,
        &headers,
        &body,
        SECRET_KEY,
        REGION,
        "execute-api",
    );
    log.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        headers: headers.clone(),
        body: body.clone(),
        verdict: verdict.clone(),
    });
    if let Err(reason) = verdict {
        // What API Gateway answers a bad signature with.
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"message": reason}).to_string(),
        )
            .into_response();
    }
    if uri.path().ends_with("/cancel") {
        return (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json!({"type": "urn:ebra:problem:not-pending", "title": "Conflict", "status": 409, "detail": "Call x is COMPLETED."}).to_string(),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"path": uri.path(), "query": uri.query(), "body": String::from_utf8_lossy(&body)})
            .to_string(),
    )
        .into_response()
}

struct Setup {
    router: Router,
    log: Log,
    _server: tokio::task::JoinHandle<()>,
}

async fn setup(session_token: Option<&str>) -> Setup {
    let log: Log = Arc::default();
    let handler_log = log.clone();
    let app = Router::new().fallback(move |method, uri, headers, body| {
        upstream(handler_log.clone(), method, uri, headers, body)
    });
    let (base, server) = common::serve_on_loopback(app).await;
    let credentials = Credentials::new(
        ACCESS_KEY,
        SECRET_KEY,
        session_token.map(str::to_owned),
        Some(SystemTime::now() + Duration::from_secs(3600)),
        "console-test",
    );
    let signer = Signer::new(REGION, SharedCredentialsProvider::new(credentials));
    // A stage in the base URL, as API Gateway REST stages or base path mappings have.
    let proxy = Proxy::new(&format!("{base}/prod/"), PORT, signer).expect("proxy");
    Setup {
        router: router(Arc::new(proxy)),
        log,
        _server: server,
    }
}

fn from_page(method: Method, path: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, HOST)
        .header(header::ORIGIN, format!("http://{HOST}"))
        .header("sec-fetch-site", "same-origin")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_console_is_served_here_and_the_api_calls_are_signed() {
    let setup = setup(Some(SESSION_TOKEN)).await;

    let page = send(
        &setup.router,
        from_page(Method::GET, "/console")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("console/main.js"));
    assert!(
        setup.log.lock().unwrap().is_empty(),
        "served here, not upstream"
    );

    // A read, with the query the console sends and a bearer token the page may hold.
    let list = send(
        &setup.router,
        from_page(
            Method::GET,
            "/calls?status=FAILED&to=%2B14155550100&pageSize=25",
        )
        .header(header::ACCEPT, "application/json")
        .header(header::AUTHORIZATION, "Bearer page-token")
        .body(Body::empty())
        .unwrap(),
    )
    .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(
        list.json(),
        json!({"path": "/prod/calls", "query": "status=FAILED&to=%2B14155550100&pageSize=25", "body": ""})
    );
    assert_eq!(list.headers["content-type"], "application/json");
    assert_eq!(list.headers["cache-control"], "no-store");

    // A write with a body and an Idempotency-Key: both signed.
    let body = json!({"to": "+14155550100", "scriptId": "welcome"}).to_string();
    let created = send(
        &setup.router,
        from_page(Method::POST, "/calls")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", "order-1")
            .body(Body::from(body.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(created.json()["body"], body.as_str());

    // The API's problem comes back as it was answered.
    let refused = send(
        &setup.router,
        from_page(
            Method::POST,
            "/calls/0190b7d2-0000-7000-8000-000000000000/cancel",
        )
        .body(Body::empty())
        .unwrap(),
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    assert_eq!(refused.json()["detail"], "Call x is COMPLETED.");

    let log = setup.log.lock().unwrap().clone();
    assert_eq!(log.len(), 3);
    for seen in &log {
        assert_eq!(seen.verdict, Ok(()), "{} {}", seen.method, seen.uri);
        let authorization = seen.headers["authorization"].to_str().unwrap();
        assert!(
            authorization.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"))
                && authorization.contains(&format!("/{REGION}/execute-api/aws4_request")),
            "{authorization}"
        );
        assert!(
            !authorization.contains("page-token"),
            "the page's token is not forwarded"
        );
        assert_eq!(seen.headers["x-amz-security-token"], SESSION_TOKEN);
        let signed = authorization
            .split("SignedHeaders=")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap();
        assert!(
            signed.contains("host")
                && signed.contains("x-amz-date")
                && signed.contains("x-amz-security-token"),
            "{signed}"
        );
        assert!(!seen.headers.contains_key("origin") && !seen.headers.contains_key("cookie"));
    }
    let post = &log[1];
    assert_eq!(post.method, "POST");
    assert_eq!(post.body, body.as_bytes());
    assert_eq!(post.headers["idempotency-key"], "order-1");
    let signed = post.headers["authorization"].to_str().unwrap();
    assert!(
        signed.contains(
            "SignedHeaders=content-type;host;idempotency-key;x-amz-date;x-amz-security-token"
        ),
        "{signed}"
    );
    assert_eq!(log[0].uri.split('?').next(), Some("/prod/calls"));
}

#[tokio::test]
async fn long_lived_keys_sign_without_a_session_token() {
    let setup = setup(None).await;
    let reply = send(
        &setup.router,
        from_page(Method::GET, "/metrics")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let log = setup.log.lock().unwrap().clone();
    assert_eq!(log[0].verdict, Ok(()));
    assert!(!log[0].headers.contains_key("x-amz-security-token"));
    assert!(log[0].headers["authorization"]
        .to_str()
        .unwrap()
        .contains("SignedHeaders=host;x-amz-date,"));
}

#[tokio::test]
async fn other_pages_and_hosts_cannot_use_the_proxy() {
    let setup = setup(Some(SESSION_TOKEN)).await;
    let cases = [
        // A DNS-rebinding page: the browser sends its own host name.
        Request::builder()
            .uri("/calls")
            .header(header::HOST, "evil.example:3100")
            .body(Body::empty())
            .unwrap(),
        // Another site's page posting here.
        Request::builder()
            .method(Method::POST)
            .uri("/calls/x/cancel")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, "https://evil.example")
            .body(Body::empty())
            .unwrap(),
        // A cross-site request a browser labels so (no Origin on a GET).
        Request::builder()
            .uri("/calls")
            .header(header::HOST, HOST)
            .header("sec-fetch-site", "cross-site")
            .body(Body::empty())
            .unwrap(),
        // Another port on this machine is another origin.
        Request::builder()
            .uri("/calls")
            .header(header::HOST, HOST)
            .header(header::ORIGIN, "http://127.0.0.1:8080")
            .body(Body::empty())
            .unwrap(),
    ];
    for request in cases {
        let what = format!("{} {:?}", request.uri(), request.headers());
        let reply = send(&setup.router, request).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{what}");
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{what}"
        );
        assert_eq!(
            reply.json()["type"],
            "urn:ebra:problem:console-proxy-forbidden"
        );
    }
    assert!(
        setup.log.lock().unwrap().is_empty(),
        "nothing was forwarded"
    );

    // curl on this machine (no Origin, no Sec-Fetch-Site) and localhost are the operator.
    for host in ["localhost:3100", HOST] {
        let reply = send(
            &setup.router,
            Request::builder()
                .uri("/metrics")
                .header(header::HOST, host)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn an_api_that_does_not_answer_is_a_502_problem() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let credentials = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "console-test");
    let signer = Signer::new(REGION, SharedCredentialsProvider::new(credentials));
    let proxy = Proxy::new(&closed, PORT, signer).unwrap();
    let reply = send(
        &router(Arc::new(proxy)),
        from_page(Method::GET, "/metrics")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    let problem = reply.json();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{problem}"
    );
}

#[test]
fn bad_api_urls_are_refused_before_anything_starts() {
    let signer = || {
        Signer::new(
            REGION,
            SharedCredentialsProvider::new(Credentials::new("a", "b", None, None, "t")),
        )
    };
    for bad in [
        "",
        "api.example.com",
        "ftp://api.example.com",
        "https://api.example.com/?stage=1",
    ] {
        assert!(Proxy::new(bad, PORT, signer()).is_err(), "{bad:?}");
    }
}
