//! The API Lambda's entry point: builds the configuration, the pool and the queue client once
//! (no network until the first request), then hands the router to the Lambda runtime.
//! Migrations are not run here: `ebra migrate` applies them.

use std::sync::Arc;

use anyhow::Context as _;
use ebra_api::{router, AppState};
use ebra_shared::db;
use ebra_shared::queue::CallsQueue;
use ebra_shared::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ebra_shared::telemetry::init();
    let config = Config::from_env()?;
    let pool = db::pool(&config.database_url, db::pool_size_from_env(2)?)?;
    let queue = CallsQueue::from_env(config.require_calls_queue_url()?).await;
    let state = AppState::new(pool, Some(queue), Arc::new(config));
    lambda_http::run(router(state))
        .await
        .map_err(|error| anyhow::anyhow!(error))
        .context("the Lambda runtime stopped")
}
