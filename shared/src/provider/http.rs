//! The real provider over HTTP: `POST {PROVIDER_BASE_URL}/api/v1/calls`.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use serde::Deserialize;

use super::{Dial, DialResult, Provider};

pub struct HttpProvider {
    client: reqwest::Client,
    calls_url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    call_id: Option<serde_json::Value>,
}

impl HttpProvider {
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("ebra/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            calls_url: format!("{}/api/v1/calls", base_url.trim_end_matches('/')),
        })
    }

    async fn dial_once(&self, dial: &Dial) -> DialResult {
        let response = match self
            .client
            .post(&self.calls_url)
            .header("Idempotency-Key", dial.idempotency_key.to_string())
            .json(dial)
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => {
                // A refused connection never reached the provider; anything later might have.
                let maybe_placed = !error.is_connect();
                return DialResult::Retryable {
                    error: format!("provider unreachable: {}", describe(&error)),
                    retry_after: None,
                    maybe_placed,
                };
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => {
                return DialResult::Retryable {
                    error: format!(
                        "provider answered {status} but the body failed: {}",
                        describe(&error)
                    ),
                    retry_after: None,
                    maybe_placed: true,
                }
            }
        };
        classify(status, retry_after, &body)
    }
}

impl Provider for HttpProvider {
    fn dial<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult> {
        self.dial_once(dial).boxed()
    }
}

/// Maps the provider's answer to a [`DialResult`] (invariant 7).
pub(crate) fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> DialResult {
    let snippet = || String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    match status.as_u16() {
        200..=299 => match serde_json::from_slice::<Accepted>(body)
            .ok()
            .and_then(|a| a.call_id)
        {
            Some(serde_json::Value::String(id)) if !id.is_empty() && id.len() <= 255 => {
                DialResult::Accepted {
                    provider_call_id: id,
                }
            }
            _ => DialResult::Retryable {
                error: format!("provider answered {status} without a callId: {}", snippet()),
                retry_after: None,
                maybe_placed: true,
            },
        },
        429 => DialResult::Retryable {
            error: format!("provider rate-limited the dial (429): {}", snippet()),
            retry_after,
            maybe_placed: false,
        },
        // The provider answered that it failed: a definite failure, retried (with the same
        // key, in case it placed the call all the same).
        408 | 500..=599 => DialResult::Retryable {
            error: format!("provider error {status}: {}", snippet()),
            retry_after,
            maybe_placed: false,
        },
        400..=499 => DialResult::Permanent {
            error: format!("provider refused the call ({status}): {}", snippet()),
        },
        _ => DialResult::Retryable {
            error: format!("unexpected provider answer {status}: {}", snippet()),
            retry_after: None,
            maybe_placed: true,
        },
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = raw.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    let wait = at.signed_duration_since(chrono::Utc::now()).num_seconds();
    Some(Duration::from_secs(wait.max(0) as u64))
}

fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if error.is_timeout() {
        text.push_str(" (timed out)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn classifies_answers() {
        assert_eq!(
            classify(StatusCode::ACCEPTED, None, br#"{"callId":"p-1"}"#),
            DialResult::Accepted {
                provider_call_id: "p-1".into()
            }
        );
        assert!(matches!(
            classify(StatusCode::OK, None, b"{}"),
            DialResult::Retryable {
                maybe_placed: true,
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::OK, None, br#"{"callId":""}"#),
            DialResult::Retryable { .. }
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(7)), b""),
            DialResult::Retryable { retry_after: Some(d), maybe_placed: false, .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, b""),
            DialResult::Retryable { .. }
        ));
        assert!(matches!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, None, b"bad number"),
            DialResult::Permanent { .. }
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, None, b""),
            DialResult::Permanent { .. }
        ));
    }
}
