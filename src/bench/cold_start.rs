//! Scenario 5: each function's deployable size and its init time.
//!
//! Size: the arm64 `bootstrap` that `cargo lambda build --release --arm64` produces, built
//! here when `cargo lambda` is on the PATH. Without it the bench says so and falls back to an
//! arm64 `bootstrap` already in `target/lambda/` (with its build time), else to the native
//! release binary, labelled as such.
//!
//! Init: the native release binary is started as Lambda starts a `provided.al2023`
//! function — the runtime's environment variables, `AWS_LAMBDA_RUNTIME_API` pointing at a
//! small Runtime API stand-in here — and the time from spawning the process to its first
//! `GET /2018-06-01/runtime/invocation/next` is its init. That request is held, never
//! answered, and the process is killed; the median of several starts is reported.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::harness;
use super::report::round;
use super::stats::{median, ms};
use super::{Figure, ScenarioReport, Target};

const FUNCTIONS: [(&str, &str); 4] = [
    ("api", "ebra-api"),
    ("worker", "ebra-worker"),
    ("webhook", "ebra-webhook"),
    ("reclaimer", "ebra-reclaimer"),
];
const SIZE_TARGET_MB: f64 = 10.0;
const INIT_TARGET_MS: f64 = 30.0;
/// A start that has not asked for its first event by then has failed.
const START_LIMIT: Duration = Duration::from_secs(10);
/// `cargo lambda build` of all four, at most.
const BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);
const RUNTIME_NEXT: &str = "GET /2018-06-01/runtime/invocation/next";

pub async fn run(quick: bool) -> anyhow::Result<ScenarioReport> {
    let starts = if quick { 5 } else { 10 };
    let exe = std::env::current_exe().context("finding the ebra executable")?;
    let release_dir = exe
        .parent()
        .context("the ebra executable has no directory")?
        .to_path_buf();
    let target_dir = release_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| release_dir.clone());
    let workspace = target_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| target_dir.clone());

    let mut report = ScenarioReport::new("cold-start");
    let sizes = measure_sizes(&release_dir, &target_dir, &workspace, &mut report).await;
    let mut details = Vec::new();
    for ((function, package), size) in FUNCTIONS.iter().zip(sizes) {
        let mut detail = json!({"function": function});
        if let Some(size) = size {
            let mb = size.bytes as f64 / 1e6;
            report.figures.push(
                Figure::new(
                    format!("cold start: {function} size"),
                    mb,
                    "MB",
                    format!("{mb:.2} MB ({} bytes)", size.bytes),
                )
                .target(Target::AtMost(SIZE_TARGET_MB))
                .how(format!("{} ({})", size.label, size.path.display())),
            );
            detail["sizeBytes"] = json!(size.bytes);
            detail["sizeOf"] = json!(size.label);
            detail["sizePath"] = json!(size.path.display().to_string());
        }

        let binary = release_dir.join(function);
        if !binary.is_file() {
            report.notes.push(format!(
                "{function}: no native release binary at {}; build it with `cargo build --release -p {package}` \
                 (init time not measured)",
                binary.display()
            ));
            details.push(detail);
            continue;
        }
        let times = time_starts(&binary, function, starts)
            .await
            .with_context(|| format!("timing the init of {}", binary.display()))?;
        let millis: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        let median_ms = median(&millis);
        let min_ms = millis.iter().copied().fold(f64::INFINITY, f64::min);
        let max_ms = millis.iter().copied().fold(0.0, f64::max);
        report.figures.push(
            Figure::new(
                format!("cold start: {function} init"),
                median_ms,
                "ms",
                format!("median {} ms (min {}, max {}, n = {starts})", ms(median_ms), ms(min_ms), ms(max_ms)),
            )
            .target(Target::AtMost(INIT_TARGET_MS))
            .how(format!(
                "native release binary {} spawned with the Lambda runtime's environment \
                 (AWS_LAMBDA_RUNTIME_API → a stand-in on 127.0.0.1, 128 MB, DATABASE_URL, CALLS_QUEUE_URL, \
                 WEBHOOK_SECRET/URL, dummy AWS credentials); time from spawn to its first GET …/invocation/next; \
                 median of {starts} starts",
                binary.display()
            )),
        );
        detail["initMs"] = json!(millis.iter().map(|m| round(*m, 3)).collect::<Vec<_>>());
        detail["initMedianMs"] = json!(round(median_ms, 3));
        detail["nativeBinary"] = json!(binary.display().to_string());
        detail["nativeBinaryBytes"] = json!(std::fs::metadata(&binary).map(|m| m.len()).ok());
        detail["nativeBinaryModified"] = json!(modified(&binary));
        details.push(detail);
    }
    report.details = json!({ "functions": details, "startsPerFunction": starts });
    Ok(report)
}

struct Size {
    bytes: u64,
    path: PathBuf,
    label: String,
}

/// One size per function (in [`FUNCTIONS`] order), `None` where there is nothing to measure.
async fn measure_sizes(
    release_dir: &Path,
    target_dir: &Path,
    workspace: &Path,
    report: &mut ScenarioReport,
) -> Vec<Option<Size>> {
    let lambda_dir = target_dir.join("lambda");
    let built_here = if cargo_lambda_installed().await {
        match build_bootstraps(workspace).await {
            Ok(()) => true,
            Err(error) => {
                report.notes.push(format!(
                    "cargo lambda build failed, sizes fall back: {error:#}"
                ));
                false
            }
        }
    } else {
        report
            .notes
            .push("cargo lambda not installed: pip install cargo-lambda ziglang".to_owned());
        false
    };
    FUNCTIONS
        .iter()
        .map(|(function, _)| {
            let bootstrap = lambda_dir.join(function).join("bootstrap");
            if elf_machine(&bootstrap) == Some(ELF_AARCH64) {
                let bytes = std::fs::metadata(&bootstrap).map(|m| m.len()).ok()?;
                let label = if built_here {
                    "arm64 bootstrap built by this run (cargo lambda build --release --arm64)".to_owned()
                } else {
                    format!(
                        "arm64 bootstrap already in target/lambda, built {} and NOT rebuilt by this run (cargo lambda \
                         not on PATH)",
                        modified(&bootstrap).unwrap_or_else(|| "at an unknown time".to_owned())
                    )
                };
                return Some(Size { bytes, path: bootstrap, label });
            }
            let native = release_dir.join(function);
            let bytes = std::fs::metadata(&native).map(|m| m.len()).ok()?;
            Some(Size {
                bytes,
                path: native,
                label: format!("NATIVE {} release binary, not the arm64 bootstrap", std::env::consts::ARCH),
            })
        })
        .collect()
}

async fn cargo_lambda_installed() -> bool {
    let probe = tokio::process::Command::new("cargo")
        .args(["lambda", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(tokio::time::timeout(Duration::from_secs(30), probe).await, Ok(Ok(status)) if status.success())
}

async fn build_bootstraps(workspace: &Path) -> anyhow::Result<()> {
    for (function, package) in FUNCTIONS {
        println!("   cargo lambda build --release --arm64 -p {package} --bin {function} ...");
        let build = tokio::process::Command::new("cargo")
            .args([
                "lambda",
                "build",
                "--release",
                "--arm64",
                "-p",
                package,
                "--bin",
                function,
            ])
            .current_dir(workspace)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(BUILD_LIMIT, build)
            .await
            .with_context(|| {
                format!(
                    "cargo lambda build of {function} took over {} s",
                    BUILD_LIMIT.as_secs()
                )
            })?
            .context("running cargo lambda build")?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            anyhow::bail!(
                "cargo lambda build --bin {function} failed ({}): {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    Ok(())
}

const ELF_AARCH64: u16 = 0xB7;

/// The ELF `e_machine` of a file, if it is an ELF file.
fn elf_machine(path: &Path) -> Option<u16> {
    use std::io::Read as _;
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    (header[..4] == *b"\x7fELF").then(|| u16::from_le_bytes([header[18], header[19]]))
}

fn modified(path: &Path) -> Option<String> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        chrono::DateTime::<chrono::Utc>::from(modified)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
    )
}

/// Starts `binary` `starts` times; returns each start's time to its first `/next`.
async fn time_starts(
    binary: &Path,
    function: &str,
    starts: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (runtime_api, mut ready) = RuntimeApiStandIn::start().await?;
    let mut times = Vec::with_capacity(starts);
    let result = async {
        for _ in 0..starts {
            times.push(start_once(binary, function, &runtime_api.address, &mut ready).await?);
        }
        anyhow::Ok(())
    }
    .await;
    runtime_api.stop();
    result.map(|()| times)
}

async fn start_once(
    binary: &Path,
    function: &str,
    runtime_api: &str,
    ready: &mut mpsc::UnboundedReceiver<Instant>,
) -> anyhow::Result<Duration> {
    while ready.try_recv().is_ok() {}
    let spawned = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .envs(lambda_environment(function, runtime_api))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))?;
    let outcome = tokio::select! {
        at = ready.recv() => at.map(|at| at.saturating_duration_since(spawned)).context("the runtime stand-in stopped"),
        status = child.wait() => {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            Err(anyhow::anyhow!(
                "{function} exited before asking for an event ({}): {}",
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                stderr.trim()
            ))
        }
        _ = tokio::time::sleep(START_LIMIT) => Err(anyhow::anyhow!("{function} did not ask for an event within {} s", START_LIMIT.as_secs())),
    };
    let _ = child.kill().await;
    outcome
}

/// The environment Lambda gives a `provided.al2023` function, plus what Ebra's functions
/// read at start. Nothing here is contacted during init.
fn lambda_environment(function: &str, runtime_api: &str) -> Vec<(String, String)> {
    [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", format!("ebra-{function}")),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "1".to_owned()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/ebra-{function}"),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2025/01/01/[1]bench".to_owned(),
        ),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "bench".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "bench".to_owned()),
        ("AWS_SESSION_TOKEN", "bench".to_owned()),
        ("_HANDLER", "bootstrap".to_owned()),
        ("TZ", ":UTC".to_owned()),
        ("DATABASE_URL", harness::admin_url()),
        (
            "CALLS_QUEUE_URL",
            "http://127.0.0.1:9/000000000000/ebra-calls".to_owned(),
        ),
        ("WEBHOOK_SECRET", harness::WEBHOOK_SECRET.to_owned()),
        (
            "WEBHOOK_URL",
            "http://127.0.0.1:9/callbacks/call-status".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Answers nothing: it notes when `GET …/invocation/next` arrives and holds the request
/// open until it is stopped.
struct RuntimeApiStandIn {
    address: String,
    stop: watch::Sender<bool>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl RuntimeApiStandIn {
    /// The stand-in, and the receiver of the instants at which `/next` was asked for.
    async fn start() -> anyhow::Result<(Self, mpsc::UnboundedReceiver<Instant>)> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the Runtime API stand-in")?;
        let address = listener.local_addr()?.to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = requests.clone();
        let mut accept_stop = stopped.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = accept_stop.wait_for(|s| *s) => break,
                };
                let Ok((mut stream, _)) = accepted else {
                    continue;
                };
                let tx = tx.clone();
                let seen = seen.clone();
                let mut hold = stopped.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let at = Instant::now();
                    let request_line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    if request_line.starts_with(RUNTIME_NEXT) {
                        let _ = tx.send(at);
                        // Held: the function waits for an event that never comes.
                        let _ = hold.wait_for(|s| *s).await;
                    } else {
                        let _ = stream
                            .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                    if let Ok(mut seen) = seen.lock() {
                        seen.push(request_line);
                    }
                });
            }
        });
        Ok((
            Self {
                address,
                stop,
                requests,
            },
            rx,
        ))
    }

    fn stop(self) {
        let _ = self.stop.send(true);
        if let Ok(requests) = self.requests.lock() {
            let unexpected: Vec<&String> = requests
                .iter()
                .filter(|r| !r.starts_with(RUNTIME_NEXT))
                .collect();
            if !unexpected.is_empty() {
                eprintln!(
                    "   note: the functions also sent {unexpected:?} to the Runtime API stand-in"
                );
            }
        }
    }
}
