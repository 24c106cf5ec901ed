//! `ebra`: run the local stack, migrate a database, measure, open the console on a deployed
//! stack.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The whole stack runs in this one process under `ebra dev` and `ebra bench`: glibc's
/// malloc and free took about a sixth of its CPU in `ebra bench --only e2e` (`perf record`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ebra",
    version,
    about = "Ebra: an orchestrator of outbound AI phone calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack locally: API + webhook on 127.0.0.1:$PORT, the worker behind a
    /// local SQS event source, the reclaimer on a timer, the provider simulator.
    Dev {
        /// Seconds between reclaimer passes.
        #[arg(long, default_value_t = 10)]
        reclaim_every: u64,
        /// Name of the calls queue (its DLQ is <name>-dlq).
        #[arg(long, default_value = "ebra-calls")]
        queue_name: String,
    },
    /// Apply pending schema migrations to DATABASE_URL (or DB_HOST...).
    Migrate {
        /// Create the database first if it does not exist.
        #[arg(long)]
        create_database: bool,
    },
    /// Measure throughput, slot utilisation, latency, commits, cold start and growth.
    Bench(ebra::bench::BenchArgs),
    /// Serve the operator console on 127.0.0.1 against a deployed API, signing its requests
    /// with SigV4 (IAM authorization) using the standard AWS credential chain.
    Console(ebra::console::ConsoleArgs),
    /// Add a CSV file's calls to a campaign (found by name or created, or by id), in
    /// batches of up to 1,000 rows, with a progress bar; rejected rows go to
    /// FILE.rejected.csv. Rerunning creates no duplicates.
    Import(ebra::import::ImportArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    ebra_shared::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev {
            reclaim_every,
            queue_name,
        } => {
            ebra::local::run_dev(ebra::local::DevOptions {
                reclaim_every: Duration::from_secs(reclaim_every.max(1)),
                queue_name,
            })
            .await
        }
        Command::Migrate { create_database } => migrate(create_database).await,
        Command::Bench(args) => ebra::bench::run(args).await,
        Command::Console(args) => ebra::console::run(args).await,
        Command::Import(args) => ebra::import::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ebra: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(create_database: bool) -> anyhow::Result<()> {
    let config = ebra_shared::Config::from_env()?;
    if create_database {
        ebra_shared::db::ensure_database(&config.database_url).await?;
    }
    let pool = ebra_shared::db::pool(&config.database_url, 1)?;
    let applied = ebra_shared::db::migrate(&pool).await?;
    println!("migrations applied: {applied}");
    Ok(())
}
