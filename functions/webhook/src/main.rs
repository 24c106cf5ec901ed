//! The webhook Lambda: sets up and hands the router to `lambda_http` (Function URL events).

use std::sync::Arc;

use anyhow::Context as _;
use ebra_shared::queue::CallsQueue;
use ebra_shared::{db, telemetry, Config};
use ebra_webhook::{router, WebhookState};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let config = Config::from_env()?;
    // Two connections: one request at a time per instance, plus a spare.
    let pool = db::pool(&config.database_url, db::pool_size_from_env(2)?)?;
    let queue = CallsQueue::from_env(config.require_calls_queue_url()?).await;
    let state = WebhookState::new(pool, queue, Arc::new(config))?;
    lambda_http::run(router(state))
        .await
        .map_err(|error| anyhow::anyhow!(error))
        .context("the Lambda runtime stopped")
}
