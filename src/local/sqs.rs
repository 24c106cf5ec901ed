//! SQS for the local stack: the endpoint in `AWS_ENDPOINT_URL_SQS`, or the embedded one
//! ([`super::sqs_server`]) served in this process; and a `moto_server` for the bench's
//! comparisons.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use aws_sdk_sqs::types::QueueAttributeName;
use tokio::process::{Child, Command};

use super::sqs_server::{SqsHandle, SqsServer};

/// The SQS endpoint of a local run, and what was started for it.
pub struct LocalSqs {
    pub endpoint: String,
    kind: Kind,
}

enum Kind {
    /// An endpoint given in `AWS_ENDPOINT_URL_SQS`, or a moto already answering there.
    External,
    Embedded(SqsServer),
    Moto(Child),
}

impl LocalSqs {
    /// `AWS_ENDPOINT_URL_SQS` when set (moto, or anything else speaking SQS); otherwise the
    /// embedded endpoint, served in this process on a free port of 127.0.0.1.
    pub async fn start_or_connect() -> anyhow::Result<Self> {
        match configured_endpoint() {
            Some(endpoint) => Ok(Self {
                endpoint,
                kind: Kind::External,
            }),
            None => Self::embedded().await,
        }
    }

    /// The embedded endpoint on a free port of 127.0.0.1.
    pub async fn embedded() -> anyhow::Result<Self> {
        let server = SqsServer::start_on_loopback().await?;
        Ok(Self {
            endpoint: server.endpoint().to_owned(),
            kind: Kind::Embedded(server),
        })
    }

    /// moto: the one answering at `AWS_ENDPOINT_URL_SQS`; else a `moto_server` started here,
    /// on that URL's port when it names this machine, or on a free port when it is unset.
    pub async fn moto() -> anyhow::Result<Self> {
        let configured = configured_endpoint();
        let port = match &configured {
            Some(endpoint) if answers(endpoint).await => {
                return Ok(Self {
                    endpoint: endpoint.clone(),
                    kind: Kind::External,
                })
            }
            Some(endpoint) => loopback_port(endpoint).with_context(|| {
                format!(
                    "no SQS endpoint answers at AWS_ENDPOINT_URL_SQS={endpoint}, and moto_server can only be \
                     started here on a port of 127.0.0.1 or localhost"
                )
            })?,
            None => free_port()?,
        };
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "moto_server could not be started ({e}).\n\
                     Install it with `pip install 'moto[server]'`, or point AWS_ENDPOINT_URL_SQS at a running one."
                )
            })?;
        let mut sqs = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            kind: Kind::Moto(child),
        };
        sqs.wait_for_moto().await?;
        Ok(sqs)
    }

    async fn wait_for_moto(&mut self) -> anyhow::Result<()> {
        for _ in 0..100 {
            if let Kind::Moto(child) = &mut self.kind {
                if let Some(status) = child.try_wait()? {
                    bail!("moto_server exited at start ({status})");
                }
            }
            if answers(&self.endpoint).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "moto_server did not answer on {} within 10 s",
            self.endpoint
        )
    }

    /// The embedded endpoint's handle (request counts, queue depths), when it is that.
    pub fn embedded_handle(&self) -> Option<SqsHandle> {
        match &self.kind {
            Kind::Embedded(server) => Some(server.handle()),
            _ => None,
        }
    }

    /// What serves SQS, for banners: "embedded", "moto_server started here", or the
    /// configured endpoint.
    pub fn describe(&self) -> &'static str {
        match self.kind {
            Kind::External => "AWS_ENDPOINT_URL_SQS",
            Kind::Embedded(_) => "embedded",
            Kind::Moto(_) => "moto_server started here",
        }
    }

    pub async fn stop(self) {
        match self.kind {
            Kind::External => {}
            Kind::Embedded(server) => server.stop().await,
            Kind::Moto(mut child) => {
                let _ = child.kill().await;
            }
        }
    }
}

fn configured_endpoint() -> Option<String> {
    std::env::var("AWS_ENDPOINT_URL_SQS")
        .ok()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
}

/// Whether anything answers HTTP at `endpoint` within 2 s.
async fn answers(endpoint: &str) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return false;
    };
    client.get(endpoint).send().await.is_ok()
}

/// The port of an `http://127.0.0.1:<port>` or `http://localhost:<port>` URL.
fn loopback_port(endpoint: &str) -> Option<u16> {
    let rest = endpoint.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost")
        .then(|| port.parse().ok())
        .flatten()
}

/// Creates the calls queue and its DLQ (redrive after `max_receive_count` receives) if
/// missing; returns (calls queue URL, DLQ URL).
pub async fn ensure_queues(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    max_receive_count: u32,
    visibility_seconds: u32,
) -> anyhow::Result<(String, String)> {
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))
        .context("creating the dead-letter queue")?
        .queue_url
        .context("SQS returned no DLQ URL")?;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))
        .context("reading the DLQ's ARN")?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .context("SQS returned no DLQ ARN")?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    });
    let queue_url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_seconds.to_string(),
        )
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e).to_string()))
        .context("creating the calls queue")?
        .queue_url
        .context("SQS returned no queue URL")?;
    Ok((queue_url, dlq_url))
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// An SQS client for a local endpoint. Credentials and region come from the environment
/// when set; otherwise placeholders, which a local SQS accepts.
pub fn local_sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".to_owned());
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "local".to_owned());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "local".to_owned());
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(Credentials::new(key, secret, None, None, "ebra-dev"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moto_is_started_only_on_this_machine() {
        assert_eq!(loopback_port("http://127.0.0.1:5101"), Some(5101));
        assert_eq!(loopback_port("http://localhost:5000/"), Some(5000));
        assert_eq!(loopback_port("https://sqs.us-east-1.amazonaws.com"), None);
        assert_eq!(loopback_port("http://10.0.0.2:5000"), None);
    }
}
