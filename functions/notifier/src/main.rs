//! The notifier Lambda: sets up once per instance (no network until the first event), then
//! runs a pass per batch of nudges from its SQS queue.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_lambda_events::event::sqs::SqsEvent;
use ebra_notifier::{handle_nudges, NotifierState};
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::{db, telemetry, Config};
use lambda_runtime::{service_fn, LambdaEvent};

/// A pass stops taking new deliveries after this long, well inside the function's 60 s
/// timeout (an attempt takes at most EVENT_DELIVERY_TIMEOUT_MS, 15 s at most).
const PASS_BUDGET: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let config = Config::from_env()?;
    let pool = db::pool(&config.database_url, db::pool_size_from_env(2)?)?;
    let sdk_config = aws_config::load_from_env().await;
    let nudge = EventsNudge::from_queue(
        &aws_sdk_sqs::Client::new(&sdk_config),
        config.events.queue_url.as_deref(),
    );
    let state = NotifierState::new(pool, Arc::new(config), nudge)?;
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        handle_nudges(state, event, PASS_BUDGET).await
    }))
    .await
    .map_err(|error| anyhow::anyhow!(error))
    .context("the Lambda runtime stopped")
}
