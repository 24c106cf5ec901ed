//! Posting one event to one receiver: signed the Standard Webhooks way, with a timeout of a
//! few seconds, no redirects followed, and a connection only to addresses that passed
//! [`super::destination`]'s check (the client's own DNS resolution is that check).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore as _;

use super::destination::{socket_addrs, DestinationError, DestinationPolicy};
use crate::webhook_signature::WebhookSecret;

/// How much of an error is kept.
const ERROR_MAX_CHARS: usize = 500;

/// A fresh signing secret: `whsec_` and 32 random bytes in base64 (what Standard Webhooks
/// libraries expect).
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// One request to send.
#[derive(Clone)]
pub struct Outgoing<'a> {
    pub url: &'a str,
    /// The event's id: the same on every retry.
    pub webhook_id: &'a str,
    pub body: &'a [u8],
    /// The receiver's secret; during a rotation also the previous one (a second signature).
    pub secret: &'a WebhookSecret,
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    pub latency: Duration,
    /// Why it is not a success (anything but a 2xx).
    pub error: Option<String>,
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// The HTTP client of the notifier.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    policy: DestinationPolicy,
    timeout: Duration,
}

/// The client's DNS resolution: the policy's vetted addresses only.
struct VettedResolver {
    policy: DestinationPolicy,
}

impl reqwest::dns::Resolve for VettedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips: Vec<IpAddr> = policy.vetted(&host).await?;
            let addrs: reqwest::dns::Addrs = Box::new(socket_addrs(&ips).into_iter());
            Ok(addrs)
        })
    }
}

impl Deliverer {
    /// `timeout` bounds a whole attempt (connect, send, answer).
    pub fn new(policy: DestinationPolicy, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would connect on our behalf, past the check.
            .no_proxy()
            .dns_resolver(Arc::new(VettedResolver {
                policy: policy.clone(),
            }))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("ebra-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            policy,
            timeout,
        })
    }

    pub fn policy(&self) -> &DestinationPolicy {
        &self.policy
    }

    /// Posts `outgoing` once, signed at the current time. Never fails: every problem is an
    /// [`AttemptResult`] with an error.
    pub async fn send(&self, outgoing: &Outgoing<'_>) -> AttemptResult {
        let started = Instant::now();
        let failed = |error: String| AttemptResult {
            status_code: None,
            latency: started.elapsed(),
            error: Some(bounded(&error)),
        };
        // The shape, then an address in the URL itself (the resolver never sees those).
        let url = match super::destination::parse_url(outgoing.url) {
            Ok(url) => url,
            Err(error) => return failed(format!("refused: the URL {error}")),
        };
        if let Some(host) = url.host_str() {
            if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
                if let Err(error) = self.policy.vetted(host).await {
                    return failed(format!("refused: {error}"));
                }
            }
        }
        let timestamp = chrono::Utc::now().timestamp();
        let signature =
            outgoing
                .secret
                .sign_with_every_key(outgoing.webhook_id, timestamp, outgoing.body);
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", outgoing.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(outgoing.body.to_vec())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return failed(self.describe(&error)),
        };
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect::<String>());
        // The answer's body is not needed; dropping the response ends the exchange.
        drop(response);
        let latency = started.elapsed();
        let error = if status.is_success() {
            None
        } else if status.is_redirection() {
            Some(format!(
                "HTTP {}: redirects are not followed{}",
                status.as_u16(),
                location
                    .map(|l| format!(" (Location: {l})"))
                    .unwrap_or_default()
            ))
        } else {
            Some(format!("HTTP {}", status.as_u16()))
        };
        AttemptResult {
            status_code: Some(status.as_u16()),
            latency,
            error: error.map(|e| bounded(&e)),
        }
    }

    /// An error of the client, with the destination check's own words when it refused.
    fn describe(&self, error: &reqwest::Error) -> String {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<DestinationError>() {
                return format!("refused: {refused}");
            }
            source = cause.source();
        }
        let kind = if error.is_timeout() {
            format!("timed out after {} ms", self.timeout.as_millis())
        } else if error.is_connect() {
            "could not connect".to_owned()
        } else {
            "the exchange failed".to_owned()
        };
        let mut text = kind;
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

fn bounded(text: &str) -> String {
    text.chars().take(ERROR_MAX_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_secrets_are_standard_webhooks_secrets() {
        let a = new_secret();
        assert!(WebhookSecret::parse(&a).is_ok(), "{a}");
        assert_ne!(a, new_secret());
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(a.trim_start_matches("whsec_"))
                .unwrap()
                .len(),
            32
        );
    }

    #[tokio::test]
    async fn an_address_in_the_url_is_checked_before_connecting() {
        let deliverer =
            Deliverer::new(DestinationPolicy::system(false), Duration::from_millis(500)).unwrap();
        let secret = WebhookSecret::parse(&new_secret()).unwrap();
        for url in [
            "http://127.0.0.1:9/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:9/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            let result = deliverer
                .send(&Outgoing {
                    url,
                    webhook_id: "evt",
                    body: b"{}",
                    secret: &secret,
                })
                .await;
            assert_eq!(result.status_code, None, "{url}");
            assert!(
                result
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("refused")),
                "{url}: {result:?}"
            );
        }
    }
}
