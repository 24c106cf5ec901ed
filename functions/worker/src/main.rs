//! The worker Lambda's entry point: sets up telemetry, configuration, the Postgres pool, the
//! queue and the provider once per instance, then hands SQS batches to
//! [`ebra_worker::handle_batch`].

use std::sync::Arc;

use anyhow::Context as _;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use ebra_shared::provider::build_provider;
use ebra_shared::queue::CallsQueue;
use ebra_shared::{db, telemetry, Config};
use ebra_worker::{handle_batch, WorkerState};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let state = match worker_state().await {
        Ok(state) => state,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "the worker cannot start");
            eprintln!("{error:#}");
            std::process::exit(1);
        }
    };
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(handle_batch(state, event.payload).await)
    }))
    .await
}

async fn worker_state() -> anyhow::Result<WorkerState> {
    let config = Config::from_env()?;
    let pool = db::pool(&config.database_url, db::pool_size_from_env(10)?)?;
    let queue = CallsQueue::from_env(config.require_calls_queue_url()?).await;
    let provider = build_provider(&config).context("building the provider")?;
    Ok(WorkerState::new(pool, queue, provider, Arc::new(config))?)
}
