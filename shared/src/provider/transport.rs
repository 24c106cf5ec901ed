//! What every HTTP adapter shares: the client, and how an answer that is not a success maps
//! onto a [`DialResult`] (invariant 7: 429, 5xx and connection failures are retried, other
//! 4xx are permanent).

use std::time::Duration;

use super::DialResult;

/// The HTTP client of an adapter: rustls, the dial timeout, no redirects (a provider API
/// that redirects a POST is misconfigured, and following it could repeat the dial).
pub(crate) fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ebra/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// A provider's answer, read whole.
pub(crate) struct Answer {
    pub status: reqwest::StatusCode,
    pub retry_after: Option<Duration>,
    pub body: bytes::Bytes,
}

impl Answer {
    /// The start of the body, for error messages.
    pub fn snippet(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned()
    }
}

/// Sends a dial request. `Err` is the [`DialResult`] for a request that got no whole
/// answer: a refused connection never reached the provider; anything later might have.
pub(crate) async fn send_dial(request: reqwest::RequestBuilder) -> Result<Answer, DialResult> {
    let response = request
        .send()
        .await
        .map_err(|error| DialResult::Retryable {
            error: format!("provider unreachable: {}", describe(&error)),
            retry_after: None,
            maybe_placed: !error.is_connect(),
        })?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|error| DialResult::Retryable {
            error: format!(
                "provider answered {status} but the body failed: {}",
                describe(&error)
            ),
            retry_after: None,
            maybe_placed: true,
        })?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// Sends a read-only request (a status lookup) and reads the answer; `Err` says why none
/// came.
pub(crate) async fn send_lookup(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    let response = request
        .send()
        .await
        .map_err(|error| format!("provider unreachable: {}", describe(&error)))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|error| format!("reading the provider's answer: {}", describe(&error)))?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// Maps an answer that is not a success. 429 and 5xx are definite failures worth retrying
/// (with the same key, should the provider have placed the call all the same); other 4xx
/// are permanent; anything else is of unknown fate.
pub(crate) fn failure(answer: &Answer) -> DialResult {
    let status = answer.status;
    match status.as_u16() {
        429 => DialResult::Retryable {
            error: format!("provider rate-limited the dial (429): {}", answer.snippet()),
            retry_after: answer.retry_after,
            maybe_placed: false,
        },
        408 | 500..=599 => DialResult::Retryable {
            error: format!("provider error {status}: {}", answer.snippet()),
            retry_after: answer.retry_after,
            maybe_placed: false,
        },
        400..=499 => DialResult::Permanent {
            error: format!("provider refused the call ({status}): {}", answer.snippet()),
        },
        _ => DialResult::Retryable {
            error: format!("unexpected provider answer {status}: {}", answer.snippet()),
            retry_after: None,
            maybe_placed: true,
        },
    }
}

/// A 2xx without the call's id: the call may have been placed.
pub(crate) fn accepted_without_id(answer: &Answer, field: &str) -> DialResult {
    DialResult::Retryable {
        error: format!(
            "provider answered {} without a {field}: {}",
            answer.status,
            answer.snippet()
        ),
        retry_after: None,
        maybe_placed: true,
    }
}

/// A provider call id as Ebra stores it: 1 to 255 characters, no control characters.
pub(crate) fn valid_call_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= 255 && !id.chars().any(char::is_control)
}

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
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

/// A reqwest error with its whole cause chain.
pub(crate) fn describe(error: &reqwest::Error) -> String {
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

/// A lookup answer that is not a success: 404 means the provider has no such call; the
/// rest cannot decide.
pub(crate) fn lookup_failure(answer: &Answer) -> super::CallLookup {
    if answer.status == reqwest::StatusCode::NOT_FOUND {
        return super::CallLookup::NotFound;
    }
    super::CallLookup::Undecided {
        reason: format!(
            "the provider answered {}: {}",
            answer.status,
            answer.snippet()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn answer(status: StatusCode, body: &'static str) -> Answer {
        Answer {
            status,
            retry_after: Some(Duration::from_secs(7)),
            body: bytes::Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn classifies_failures() {
        assert!(matches!(
            failure(&answer(StatusCode::TOO_MANY_REQUESTS, "")),
            DialResult::Retryable { retry_after: Some(d), maybe_placed: false, .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            failure(&answer(StatusCode::BAD_GATEWAY, "")),
            DialResult::Retryable {
                maybe_placed: false,
                ..
            }
        ));
        assert!(matches!(
            failure(&answer(StatusCode::UNPROCESSABLE_ENTITY, "bad number")),
            DialResult::Permanent { .. }
        ));
        assert!(matches!(
            failure(&answer(StatusCode::NOT_FOUND, "")),
            DialResult::Permanent { .. }
        ));
        assert!(matches!(
            failure(&answer(StatusCode::MOVED_PERMANENTLY, "")),
            DialResult::Retryable {
                maybe_placed: true,
                ..
            }
        ));
    }

    #[test]
    fn call_ids_are_bounded() {
        assert!(valid_call_id("call_1"));
        assert!(!valid_call_id(""));
        assert!(!valid_call_id(&"x".repeat(256)));
        assert!(!valid_call_id("a\0b"));
    }
}
