//! SQS for the local stack: the endpoint in `AWS_ENDPOINT_URL_SQS`, or a `moto_server`
//! started (and stopped) here.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use aws_sdk_sqs::types::QueueAttributeName;
use tokio::process::{Child, Command};

pub struct LocalSqs {
    pub endpoint: String,
    child: Option<Child>,
}

impl LocalSqs {
    /// Uses `AWS_ENDPOINT_URL_SQS` when set; otherwise starts `moto_server` on a free port.
    pub async fn start_or_connect() -> anyhow::Result<Self> {
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL_SQS") {
            if !endpoint.trim().is_empty() {
                return Ok(Self {
                    endpoint,
                    child: None,
                });
            }
        }
        let port = free_port()?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "AWS_ENDPOINT_URL_SQS is not set and moto_server could not be started ({e}).\n\
                     Install it with `pip install 'moto[server]'`, or point AWS_ENDPOINT_URL_SQS at an SQS endpoint."
                )
            })?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut sqs = Self {
            endpoint,
            child: Some(child),
        };
        sqs.wait_ready().await?;
        Ok(sqs)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("moto_server exited at start ({status})");
                }
            }
            if client.get(&self.endpoint).send().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "moto_server did not answer on {} within 10 s",
            self.endpoint
        )
    }

    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
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
