//! A router's reply as the HTTP tests read it: [`send`] a request to an axum [`Router`]
//! in-process and get a [`Reply`] (status, headers, the whole body), with assertions on it
//! that name the test's line when they fail.

#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `request` to `router` and collects its reply.
pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|infallible| match infallible {});
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("reading the body").to_bytes(),
    }
}

/// Sends `method path` to `router`, with `body` as `application/json` when there is one.
pub async fn send_json(router: &Router, method: Method, path: &str, body: Option<&Value>) -> Reply {
    let mut builder = Request::builder().method(method).uri(path);
    let body = match body {
        Some(json) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    send(router, builder.body(body).expect("a request")).await
}

impl Reply {
    /// The body as JSON (panics, showing the body, if it is not JSON).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a success (2xx), and returns the JSON body.
    #[track_caller]
    pub fn ok(&self) -> Value {
        assert!(
            self.status.is_success(),
            "status {}: {}",
            self.status,
            self.text()
        );
        self.json()
    }

    /// Asserts this status, and returns the JSON body (`Null` when the body is empty, as a
    /// 204's is).
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status; body: {}",
            self.text()
        );
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts an RFC 9457 problem with this status (`application/problem+json`, an
    /// `urn:ebra:problem:` type, a title, the status, a detail), and returns its body.
    #[track_caller]
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status; body: {}",
            self.text()
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text()
        );
        let body = self.json();
        assert!(
            body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:ebra:problem:")),
            "problem type: {body}"
        );
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "problem title: {body}"
        );
        assert_eq!(body["status"], status, "problem status: {body}");
        assert!(body["detail"].is_string(), "problem detail: {body}");
        body
    }

    /// The `field`s of a validation problem's `errors`.
    pub fn fields(&self) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e["field"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}
