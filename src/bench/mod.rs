//! `ebra bench`: measures what the design claims, against a real Postgres and SQS.
//!
//! Each scenario is a module with a `run` that returns a [`ScenarioReport`]: figures, each
//! with its target and a sentence saying how it was measured, plus raw details for the JSON.
//!
//! - [`dispatch`]: calls claimed and dialed per second by the worker handler.
//! - [`slot_utilisation`]: cap 30, 600 two-second calls through the real local stack.
//! - [`api_latency`]: p50/p99 of `POST /calls` and `GET /calls/{id}` at a fixed rate.
//! - [`db_efficiency`]: Postgres commits per call lifecycle.
//! - [`cold_start`]: each function's size and its init time to the first `/next`.
//! - [`growth`]: claim and list latency with 10 k and 1 M rows.
//! - [`end_to_end`]: the local stack with an HTTP provider, cap 200, on the embedded SQS
//!   endpoint and on moto: calls settled/s, creates/s, SQS requests per call, queue depth.
//! - [`campaigns`]: `ebra import` rows/s and the SQS messages it causes, a campaign's drain
//!   (slot utilisation), and a small campaign's makespan during a large one's drain.
//!
//! SQS comes from [`harness::BenchSqs`]: the embedded endpoint unless a scenario measures
//! against moto, which the bench starts when none answers at `AWS_ENDPOINT_URL_SQS`.
//!
//! Every scenario gets a fresh database `ebra_bench_<uuid>` ([`harness::BenchDatabase`]),
//! dropped afterwards, and stops by itself within a bounded time. All traffic is loopback.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;

pub mod api_latency;
pub mod campaigns;
pub mod cold_start;
mod cpu;
pub mod db_efficiency;
mod db_proxy;
pub mod dispatch;
pub mod end_to_end;
mod fake_provider;
pub mod growth;
mod harness;
mod machine;
mod report;
pub mod slot_utilisation;
mod sqs_proxy;
mod sqs_stub;
mod stats;
mod svg;

pub use report::{Figure, ScenarioReport, Target};

/// `ebra bench [--only NAME] [--out DIR] [--quick] [--repeat N]`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Run one scenario only.
    #[arg(long, value_enum, value_name = "NAME")]
    pub only: Option<Scenario>,
    /// Where `bench.json`, `bench.md` (the table) and `slot-utilisation.svg` are written.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    pub out: PathBuf,
    /// Smaller sizes for a quick look (growth to 100 k rows instead of 1 M, fewer calls).
    #[arg(long)]
    pub quick: bool,
    /// How many times `e2e` runs its main measurement (2,000 calls on the embedded SQS):
    /// its figures are the run with the median settle rate, and every run is printed and
    /// kept in `bench.json`. On a shared 2-core machine single runs of one build vary by a
    /// fifth.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Dispatch,
    Slots,
    Api,
    Db,
    ColdStart,
    Growth,
    E2e,
    Campaigns,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Dispatch,
        Scenario::Slots,
        Scenario::Api,
        Scenario::Db,
        Scenario::ColdStart,
        Scenario::Growth,
        Scenario::E2e,
        Scenario::Campaigns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Dispatch => "dispatch",
            Scenario::Slots => "slots",
            Scenario::Api => "api",
            Scenario::Db => "db",
            Scenario::ColdStart => "cold-start",
            Scenario::Growth => "growth",
            Scenario::E2e => "e2e",
            Scenario::Campaigns => "campaigns",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::Dispatch => "1. dispatch throughput",
            Scenario::Slots => "2. slot utilisation",
            Scenario::Api => "3. API latency",
            Scenario::Db => "4. database efficiency",
            Scenario::ColdStart => "5. cold start and size",
            Scenario::Growth => "6. growth",
            Scenario::E2e => "7. end to end",
            Scenario::Campaigns => "8. campaigns",
        }
    }

    async fn run(
        self,
        args: &BenchArgs,
        sqs: &harness::BenchSqs,
    ) -> anyhow::Result<ScenarioReport> {
        match self {
            Scenario::Dispatch => dispatch::run(args.quick).await,
            Scenario::Slots => slot_utilisation::run(args.quick, &args.out, sqs).await,
            Scenario::Api => api_latency::run(args.quick, sqs).await,
            Scenario::Db => db_efficiency::run(args.quick).await,
            Scenario::ColdStart => cold_start::run(args.quick).await,
            Scenario::Growth => growth::run(args.quick).await,
            Scenario::E2e => end_to_end::run(args.quick, args.repeat, sqs).await,
            Scenario::Campaigns => campaigns::run(args.quick).await,
        }
    }
}

/// The log filter the bench runs under unless `RUST_LOG` says otherwise: the handlers log
/// every call at `info`, which would bury the table and time the terminal, not Ebra.
const BENCH_LOG_FILTER: &str = "warn";

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // The global subscriber is installed before the command is parsed; the one way to
    // quieten it is to run again with RUST_LOG set.
    if std::env::var_os("RUST_LOG").is_none() {
        return rerun_with_log_filter(BENCH_LOG_FILTER).await;
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; figures are only meaningful from `cargo build --release`");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output directory {}", args.out.display()))?;

    let started = chrono::Utc::now();
    let machine = machine::Machine::probe().await?;
    println!("ebra bench: {}", machine.summary());
    if args.quick {
        println!("--quick: smaller sizes (stated in each figure)");
    }

    let scenarios: Vec<Scenario> = match args.only {
        Some(only) => vec![only],
        None => Scenario::ALL.to_vec(),
    };
    let sqs = harness::BenchSqs::default();
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for scenario in scenarios {
        println!();
        let load_before = machine::load_average();
        println!(
            "== {} ({}; load average {})",
            scenario.title(),
            scenario.name(),
            load_before
                .map(|l| format!("{l:.2}"))
                .unwrap_or_else(|| "unknown".to_owned())
        );
        let clock = Instant::now();
        match scenario.run(&args, &sqs).await {
            Ok(mut report) => {
                report.elapsed_seconds = clock.elapsed().as_secs_f64();
                report.load_before = load_before;
                report.load_after = machine::load_average();
                for figure in &report.figures {
                    println!("   {}: {}", figure.name, figure.display);
                }
                for note in &report.notes {
                    println!("   note: {note}");
                }
                reports.push(report);
            }
            Err(error) => {
                let message = format!("{error:#}");
                eprintln!("   {} failed: {message}", scenario.name());
                errors.push((scenario.name(), message));
            }
        }
    }

    sqs.stop().await;

    println!();
    let table = report::table(&reports);
    print!("{table}");
    let markdown_path = args.out.join("bench.md");
    std::fs::write(
        &markdown_path,
        format!("Machine: {}\n\n{table}", machine.summary()),
    )
    .with_context(|| format!("writing {}", markdown_path.display()))?;
    let json = report::to_json(&machine, started, &args, &reports, &errors);
    let json_path = args.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!();
    println!("Machine: {}", machine.summary());
    println!(
        "Wrote {} and {}",
        json_path.display(),
        markdown_path.display()
    );
    for report in &reports {
        for file in &report.files {
            println!("Wrote {}", file.display());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = errors.iter().map(|(name, _)| *name).collect();
        anyhow::bail!("scenario(s) failed to run: {}", names.join(", "))
    }
}

/// Runs this same command again with `RUST_LOG=<filter>` and returns its outcome.
async fn rerun_with_log_filter(filter: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the ebra executable to run the bench")?;
    let status = tokio::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env("RUST_LOG", filter)
        .status()
        .await
        .with_context(|| format!("running {} with RUST_LOG={filter}", exe.display()))?;
    if status.success() {
        Ok(())
    } else {
        anyhow::bail!("the bench did not complete ({status})")
    }
}
