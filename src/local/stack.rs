//! `ebra dev`: the whole stack in one process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use ebra_shared::config::ProviderSettings;
use ebra_shared::config::WEBHOOK_PATH;
use ebra_shared::events::nudge::EventsNudge;
use ebra_shared::provider::{build_provider, webhook_schemes, Provider};
use ebra_shared::queue::CallsQueue;
use ebra_shared::Config;
use tokio::sync::watch;

use super::{ensure_queues, local_sqs_client, EventSourceMapping, LocalPostgres, LocalSqs};

/// Connections in each of `ebra dev`'s two pools (the worker's, and the rest's): twice the
/// machine's cores, unless `DB_POOL_SIZE` says otherwise. Each connection is a Postgres
/// backend competing for the same cores: on 2 cores, `ebra bench --only e2e` settled
/// 350–365 calls/s with pools of 3, 4 or 6 and 325–347 with 20 or 40 (README ¹⁵).
pub fn dev_pool_size() -> anyhow::Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    ebra_shared::db::pool_size_from_env((2 * cores).max(2))
}

/// The local queue's visibility timeout: six times a 30 s worker, as in the template.
const VISIBILITY_SECONDS: u32 = 180;
/// How often the local notifier looks for deliveries coming due (commits wake it at once).
const NOTIFIER_TICK: Duration = Duration::from_secs(1);
/// How long one local notifier pass may run.
const NOTIFIER_BUDGET: Duration = Duration::from_secs(20);
/// The least time between the starts of two local notifier passes: commits that come
/// within it are answered by one pass (under load, a pass per commit cost three queries
/// per change for nothing when no endpoint is registered), at the price of delivering an
/// event up to this much later.
const NOTIFIER_COALESCE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct DevOptions {
    /// How often the reclaimer runs.
    pub reclaim_every: Duration,
    /// The calls queue's name.
    pub queue_name: String,
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            reclaim_every: Duration::from_secs(10),
            queue_name: "ebra-calls".to_owned(),
        }
    }
}

pub async fn run_dev(options: DevOptions) -> anyhow::Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let get = |name: &str| env.get(name).filter(|v| !v.trim().is_empty()).cloned();

    let postgres = LocalPostgres::start_or_connect(get("DATABASE_URL")).await?;
    let sqs = match LocalSqs::start_or_connect().await {
        Ok(sqs) => sqs,
        Err(error) => {
            postgres.stop().await;
            return Err(error);
        }
    };
    let result = serve(&options, &env, &postgres, &sqs).await;
    sqs.stop().await;
    postgres.stop().await;
    result
}

async fn serve(
    options: &DevOptions,
    env: &HashMap<String, String>,
    postgres: &LocalPostgres,
    sqs: &LocalSqs,
) -> anyhow::Result<()> {
    let sqs_client = local_sqs_client(&sqs.endpoint);
    let probe = Config::from_lookup(|name| {
        lookup(env, name)
            .or_else(|| (name == "DATABASE_URL").then(|| postgres.database_url.clone()))
    })?;
    let (queue_url, dlq_url) = ensure_queues(
        &sqs_client,
        &options.queue_name,
        probe.max_receive_count,
        VISIBILITY_SECONDS,
    )
    .await
    .with_context(|| format!("creating the queues on {}", sqs.endpoint))?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", probe.port))
        .await
        .with_context(|| {
            format!(
                "listening on 127.0.0.1:{} (set PORT to use another port)",
                probe.port
            )
        })?;
    let port = listener.local_addr()?.port();
    let local_webhook = format!("http://127.0.0.1:{port}{WEBHOOK_PATH}");
    let generated_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes())
    );

    let generated_callback_secret = ebra_shared::events::delivery::new_secret();
    let config = Arc::new(Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(postgres.database_url.clone()),
        "CALLS_QUEUE_URL" => Some(queue_url.clone()),
        "WEBHOOK_URL" => lookup(env, "WEBHOOK_URL").or_else(|| {
            lookup(env, "PUBLIC_BASE_URL")
                .is_none()
                .then(|| local_webhook.clone())
        }),
        "WEBHOOK_SECRET" => lookup(env, name).or_else(|| Some(generated_secret.clone())),
        // Locally, receivers run on this machine: events may go to loopback and private
        // addresses (never set it in AWS).
        "ALLOW_PRIVATE_WEBHOOK_URLS" => lookup(env, name).or_else(|| Some("true".to_owned())),
        "CALLBACK_SECRET" => lookup(env, name).or_else(|| Some(generated_callback_secret.clone())),
        _ => lookup(env, name),
    })?);

    let pool_size = dev_pool_size()?;
    let pool = ebra_shared::db::pool(&config.database_url, pool_size)?;
    let worker_pool = ebra_shared::db::pool(&config.database_url, pool_size)?;
    let applied = ebra_shared::db::migrate(&pool).await?;
    tracing::info!(applied, "migrations applied");

    let queue = CallsQueue::new(sqs_client.clone(), queue_url.clone());
    let provider = build_provider(&config).context("building the provider")?;

    let stack = start_stack(
        listener,
        StackParts {
            config: config.clone(),
            pool,
            worker_pool,
            queue,
            provider,
            reclaim_every: options.reclaim_every,
        },
    )
    .await?;

    let base = format!("http://127.0.0.1:{port}");
    let auth = if config.api_token.is_some() {
        " -H \"Authorization: Bearer $API_TOKEN\""
    } else {
        ""
    };
    println!();
    println!("Ebra is running.");
    println!("  API + webhook   {base}  (OpenAPI: {base}/openapi.json, metrics: {base}/metrics)");
    println!(
        "  console         {base}{}{}",
        ebra_api::console::PATH,
        if config.api_token.is_some() {
            "  (it asks for API_TOKEN)"
        } else {
            ""
        }
    );
    let routes: Vec<String> = webhook_schemes(&config)
        .iter()
        .map(|scheme| format!("{base}{}", scheme.provider().webhook_path()))
        .collect();
    println!("  webhooks        {}", routes.join("  "));
    println!(
        "  Postgres        {}{}",
        ebra_shared::config::redact_url(&config.database_url),
        if postgres.started_here() {
            "  (throwaway cluster)"
        } else {
            ""
        }
    );
    println!(
        "  SQS             {}{}  queue {queue_url}, DLQ {dlq_url}",
        sqs.endpoint,
        match sqs.describe() {
            "AWS_ENDPOINT_URL_SQS" => String::new(),
            what => format!("  ({what})"),
        }
    );
    println!("  provider        {}", describe_provider(&config.provider));
    println!(
        "  cap             {} calls in progress",
        config.global_concurrency
    );
    println!(
        "  events          POST {base}/webhook-endpoints to receive them (private URLs allowed here){}",
        if lookup(env, "CALLBACK_SECRET").is_none() {
            format!("; callbackUrl events are signed with {generated_callback_secret}")
        } else {
            String::new()
        }
    );
    println!();
    println!("Try:  curl -s{auth} -X POST {base}/calls -H 'content-type: application/json' -d '{{\"to\":\"+14155550100\",\"scriptId\":\"welcome\"}}'");
    println!("Then: curl -s{auth} {base}/calls/<id>        Stop with Ctrl-C.");
    println!();

    shutdown_signal().await;
    tracing::info!("shutting down");
    stack.stop().await;
    Ok(())
}

/// The provider line of the banner: which one, and where it is dialed.
fn describe_provider(provider: &ProviderSettings) -> String {
    match provider {
        ProviderSettings::Simulator => "simulator (calls back after SIM_CALL_SECONDS)".to_owned(),
        ProviderSettings::Http { base_url } => format!("http  {base_url}/api/v1/calls"),
        ProviderSettings::Retell(s) => format!("retell  {}  from {}", s.base_url, s.from_number),
        ProviderSettings::Vapi(s) => {
            format!("vapi  {}  phone number {}", s.base_url, s.phone_number_id)
        }
        ProviderSettings::Twilio(s) => format!("twilio  {}  from {}", s.base_url, s.from_number),
        ProviderSettings::ElevenLabs(s) => format!(
            "elevenlabs  {}  agent phone number {}",
            s.base_url, s.agent_phone_number_id
        ),
    }
}

/// What the local stack runs on.
pub struct StackParts {
    pub config: Arc<Config>,
    /// The connections of the API, the webhook, the reclaimer and the notifier.
    pub pool: ebra_shared::store::Pool,
    /// The worker's own connections, as its Lambda function has: with one pool for all, a
    /// burst of webhooks (every call of a wave ending at once) queued the worker's claims
    /// behind it, and the freed slots stayed empty until the burst was settled.
    pub worker_pool: ebra_shared::store::Pool,
    pub queue: CallsQueue,
    pub provider: Arc<dyn Provider>,
    /// How often the reclaimer runs.
    pub reclaim_every: Duration,
}

/// The stack `ebra dev` runs, started by [`start_stack`]: the API and webhook routers on
/// one listener, the worker behind the SQS event source mapping (at most
/// `GLOBAL_CONCURRENCY` invocations at once, as `MaximumConcurrency`), the reclaimer on a
/// timer.
pub struct RunningStack {
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    event_source: tokio::task::JoinHandle<()>,
    reclaim_loop: tokio::task::JoinHandle<()>,
    notifier_loop: tokio::task::JoinHandle<()>,
}

pub async fn start_stack(
    listener: tokio::net::TcpListener,
    parts: StackParts,
) -> anyhow::Result<RunningStack> {
    let StackParts {
        config,
        pool,
        worker_pool,
        queue,
        provider,
        reclaim_every,
    } = parts;
    // Every connection open and its catalog loaded before the first request, as a
    // long-running server should (a Lambda function keeps its lazy connection instead).
    futures::future::try_join(
        ebra_shared::db::warm_up(&pool),
        ebra_shared::db::warm_up(&worker_pool),
    )
    .await
    .context("warming the Postgres pools")?;
    // Events: the notifier runs as a loop here, woken at once by every commit that wrote
    // events (and every second, for retries coming due).
    let wake_notifier = Arc::new(tokio::sync::Notify::new());
    let events = EventsNudge::Local(wake_notifier.clone());
    let notifier = ebra_notifier::NotifierState::new(pool.clone(), config.clone(), events.clone())?;
    let mut api = ebra_api::AppState::new(pool.clone(), Some(queue.clone()), config.clone());
    api.events = events.clone();
    let mut webhook = ebra_webhook::WebhookState::new(pool.clone(), queue.clone(), config.clone())?;
    webhook.events = events.clone();
    let app = ebra_api::routes(api)
        .merge(ebra_webhook::routes(webhook))
        .fallback(ebra_api::not_found);
    let mut worker = ebra_worker::WorkerState::new(
        worker_pool,
        queue.clone(),
        provider.clone(),
        config.clone(),
    )?;
    worker.events = events.clone();
    let mut reclaimer =
        ebra_reclaimer::ReclaimerState::new(pool, queue.clone(), provider, config.clone());
    reclaimer.events = events;

    let (stop, stopped) = watch::channel(false);
    let server = serve_until_stopped(listener, app, stopped.clone());
    let mapping = EventSourceMapping {
        queue,
        worker: Arc::new(worker),
        max_concurrency: config.global_concurrency as usize,
    };
    let event_source = tokio::spawn(mapping.run(stopped.clone()));
    let mut reclaim_stop = stopped.clone();
    let reclaim_loop = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(reclaim_every) => {}
                _ = reclaim_stop.wait_for(|s| *s) => break,
            }
            if let Err(error) = ebra_reclaimer::run_pass(&reclaimer).await {
                tracing::warn!(error = format!("{error:#}"), "reclaimer pass failed");
            }
        }
    });
    let mut notify_stop = stopped;
    let notifier_loop = tokio::spawn(async move {
        let mut last_pass: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = wake_notifier.notified() => {}
                _ = tokio::time::sleep(NOTIFIER_TICK) => {}
                _ = notify_stop.wait_for(|s| *s) => break,
            }
            if let Some(last) = last_pass {
                tokio::select! {
                    _ = tokio::time::sleep_until(last + NOTIFIER_COALESCE) => {}
                    _ = notify_stop.wait_for(|s| *s) => break,
                }
            }
            last_pass = Some(tokio::time::Instant::now());
            // A pass cut short by Ctrl-C is safe: what it took but did not record is sent
            // again once its lease runs out.
            tokio::select! {
                result = ebra_notifier::run_pass(&notifier, NOTIFIER_BUDGET) => {
                    if let Err(error) = result {
                        tracing::warn!(error = format!("{error:#}"), "notifier pass failed");
                    }
                }
                _ = notify_stop.wait_for(|s| *s) => break,
            }
        }
    });
    Ok(RunningStack {
        stop,
        server,
        event_source,
        reclaim_loop,
        notifier_loop,
    })
}

impl RunningStack {
    /// Stops polling, the reclaimer and the listener, and waits (at most 30 s) for the
    /// invocations and requests in flight.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            let _ = self.event_source.await;
            let _ = self.reclaim_loop.await;
            let _ = self.notifier_loop.await;
            let _ = self.server.await;
        })
        .await;
    }
}

fn lookup(env: &HashMap<String, String>, name: &str) -> Option<String> {
    env.get(name).filter(|v| !v.trim().is_empty()).cloned()
}

/// Serves `app` on `listener` until `stopped` turns true, then finishes the requests in
/// flight.
pub fn serve_until_stopped(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stopped: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
