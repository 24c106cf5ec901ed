//! The reclaimer Lambda: sets up and runs one pass per EventBridge scheduled event.

use std::sync::Arc;

use anyhow::Context as _;
use ebra_reclaimer::{handle_scheduled_event, ReclaimerState};
use ebra_shared::queue::CallsQueue;
use ebra_shared::{db, telemetry, Config};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let config = Config::from_env()?;
    // One pass at a time per instance; each step holds one connection.
    let pool = db::pool(&config.database_url, db::pool_size_from_env(2)?)?;
    let queue = CallsQueue::from_env(config.require_calls_queue_url()?).await;
    let provider = ebra_shared::provider::build_provider(&config)?;
    let state = ReclaimerState::new(pool, queue, provider, Arc::new(config));
    let state = &state;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            handle_scheduled_event(state, event).await
        },
    ))
    .await
    .map_err(|error| anyhow::anyhow!(error))
    .context("the Lambda runtime stopped")
}
