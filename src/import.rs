//! `ebra import FILE.csv --api URL`: adds a CSV file's calls to a campaign, in batches of at
//! most 1,000 rows (and under 1 MiB) through `POST /campaigns/{id}/calls`.
//!
//! - The file is streamed: a few batches (`--parallel`, default 4, answered in file order)
//!   are in memory at a time, whatever the file's size.
//! - Each row's idempotency key defaults (server-side) to a hash of the campaign and the row,
//!   so rerunning after an interruption (Ctrl-C, a network error) answers the rows already
//!   sent as duplicates and creates nothing twice. A batch that failed in transit is sent
//!   again (up to [`SEND_TRIES`] times) for the same reason.
//! - A progress bar (rows/s, ETA, created / duplicate / rejected) when stderr is a terminal,
//!   plain lines otherwise; a summary at the end.
//! - The rejected rows, each with its reason, go to `FILE.rejected.csv`.
//! - `--sigv4` signs each request for `execute-api` with the standard AWS credential chain
//!   (for a deployed API behind IAM authorization); `--token` sends a bearer token.
//! - `--dry-run` reads and checks the file only (the rules the API applies that do not
//!   depend on the campaign), sending nothing.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::SharedCredentialsProvider;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt as _};
use serde_json::Value;

use crate::console::sigv4::{self, Signer};

/// Rows per request (the API's limit).
pub const BATCH_ROWS: usize = 1000;
/// A batch is sent before its CSV passes this size (the API takes at most 1 MiB).
const BATCH_BYTES: usize = 1000 * 1024;
/// Tries per batch before the import stops (rerun it: nothing is created twice).
pub const SEND_TRIES: u32 = 5;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The CSV file: a header row with `to` (required), `scriptId`, `scheduledAt`,
    /// `expiresAt`, `idempotencyKey`; any other column goes into each call's metadata.
    #[arg(value_name = "FILE.csv")]
    pub file: PathBuf,
    /// The API's base URL (`ebra dev`'s http://127.0.0.1:3000, or the stack's `ApiUrl`).
    #[arg(long, value_name = "URL")]
    pub api: String,
    /// The campaign, by name: found among the campaigns not canceled, or created.
    #[arg(long, value_name = "NAME", conflicts_with = "campaign_id")]
    pub campaign: Option<String>,
    /// The campaign, by id.
    #[arg(long, value_name = "ID")]
    pub campaign_id: Option<uuid::Uuid>,
    /// A new campaign's default scriptId (with --campaign, when it is created).
    #[arg(long, value_name = "SCRIPT")]
    pub script_id: Option<String>,
    /// A new campaign's maxConcurrency (with --campaign, when it is created).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<u32>,
    /// The API token (`Authorization: Bearer`), when the deployment sets API_TOKEN.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "EBRA_API_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Sign requests with SigV4 (API Gateway with IAM authorization), with credentials from
    /// the standard AWS chain.
    #[arg(long, conflicts_with = "token")]
    pub sigv4: bool,
    /// The region to sign for (default: from the URL, or the AWS configuration).
    #[arg(long, value_name = "REGION", requires = "sigv4")]
    pub region: Option<String>,
    /// Check the file only; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Batches in flight at once (answered in file order), 1–16.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    pub parallel: usize,
    /// Rows per request, 1–1000.
    #[arg(long, default_value_t = BATCH_ROWS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub batch_rows: usize,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub campaign_id: Option<uuid::Uuid>,
    pub rows: u64,
    pub created: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub batches: u64,
    /// Where the rejected rows were written (when any were).
    pub rejected_file: Option<PathBuf>,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on stderr.
    Bar,
    /// A line per batch on stderr.
    Lines,
    /// Nothing (tests).
    Quiet,
}

impl Progress {
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }
}

/// `ebra import`.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let summary = import(&args, Progress::for_stderr()).await?;
    print_summary(&args, &summary);
    Ok(())
}

fn print_summary(args: &ImportArgs, summary: &ImportSummary) {
    let mut out = std::io::stdout().lock();
    let verb = if args.dry_run { "checked" } else { "imported" };
    let _ = writeln!(
        out,
        "{verb} {}: {} rows in {} batches: {} created, {} duplicate, {} rejected",
        args.file.display(),
        summary.rows,
        summary.batches,
        summary.created,
        summary.duplicate,
        summary.rejected
    );
    if let Some(id) = summary.campaign_id {
        let _ = writeln!(out, "campaign {id}");
    }
    if let Some(path) = &summary.rejected_file {
        let _ = writeln!(out, "rejected rows and their reasons: {}", path.display());
    }
}

/// The rejected rows' file: `FILE.rejected.csv` next to `FILE`.
pub fn rejected_path(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".to_owned());
    file.with_file_name(format!("{stem}.rejected.csv"))
}

/// Imports `args.file`; see the module's documentation.
pub async fn import(args: &ImportArgs, progress: Progress) -> anyhow::Result<ImportSummary> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let mut headers = reader
        .byte_headers()
        .with_context(|| format!("reading the header row of {}", args.file.display()))?
        .clone();
    // A UTF-8 BOM before the first column's name.
    if let Some(first) = headers.get(0) {
        if let Some(stripped) = first.strip_prefix(b"\xEF\xBB\xBF") {
            let mut fixed = csv::ByteRecord::new();
            fixed.push_field(stripped);
            for field in headers.iter().skip(1) {
                fixed.push_field(field);
            }
            headers = fixed;
        }
    }
    if !headers.iter().any(|h| h.trim_ascii() == b"to") {
        bail!(
            "{} has no `to` column in its header row (the number to dial)",
            args.file.display()
        );
    }

    let client = if args.dry_run {
        None
    } else {
        Some(Client::new(args).await?)
    };
    let campaign_id = match &client {
        Some(client) => Some(client.campaign(args).await?),
        None => args.campaign_id,
    };
    let bar = ProgressView::new(progress, total_bytes);
    let mut summary = ImportSummary {
        campaign_id,
        ..ImportSummary::default()
    };
    let mut rejected = RejectedRows::new(rejected_path(&args.file), &headers);
    let started = Instant::now();
    let mut batch: Vec<csv::ByteRecord> = Vec::with_capacity(args.batch_rows);
    let mut batch_bytes = 0;
    let mut record = csv::ByteRecord::new();
    // Up to `parallel` batches in flight, answered in file order (the rejected rows' file
    // and the counts follow the file).
    let mut in_flight = FuturesOrdered::new();
    let parallel = args.parallel.max(1);
    loop {
        let more = reader.read_byte_record(&mut record).with_context(|| {
            format!("reading {} after row {}", args.file.display(), summary.rows)
        })?;
        let size = record.as_slice().len() + record.len() * 3 + 2;
        let full = more && !batch.is_empty() && batch_bytes + size > BATCH_BYTES;
        if full {
            let rows = std::mem::take(&mut batch);
            in_flight.push_back(answer_batch(client.as_ref(), campaign_id, &headers, rows));
            batch_bytes = 0;
        }
        if more {
            batch.push(record.clone());
            batch_bytes += size;
        }
        if batch.len() >= args.batch_rows || (!more && !batch.is_empty()) {
            let rows = std::mem::take(&mut batch);
            in_flight.push_back(answer_batch(client.as_ref(), campaign_id, &headers, rows));
            batch_bytes = 0;
        }
        while in_flight.len() >= parallel || (!more && !in_flight.is_empty()) {
            let Some(answered) = in_flight.next().await else {
                break;
            };
            let (rows, answers) = answered?;
            record_answers(&rows, answers, &mut summary, &mut rejected)?;
            bar.update(reader.position().byte(), &summary, started.elapsed());
        }
        if !more {
            break;
        }
    }
    bar.finish(&summary, started.elapsed());
    summary.rejected_file = rejected.finish()?;
    Ok(summary)
}

/// Sends one batch (or checks it, in a dry run): its rows and one answer per row.
async fn answer_batch(
    client: Option<&Client>,
    campaign_id: Option<uuid::Uuid>,
    headers: &csv::ByteRecord,
    rows: Vec<csv::ByteRecord>,
) -> anyhow::Result<(Vec<csv::ByteRecord>, Vec<RowAnswer>)> {
    let answers = match (client, campaign_id) {
        (Some(client), Some(campaign_id)) => {
            let body = to_csv(headers, &rows)?;
            client.add_calls(campaign_id, body).await?
        }
        _ => check_locally(headers, &rows)?,
    };
    if answers.len() != rows.len() {
        bail!(
            "the API answered {} rows for a batch of {}",
            answers.len(),
            rows.len()
        );
    }
    Ok((rows, answers))
}

fn record_answers(
    rows: &[csv::ByteRecord],
    answers: Vec<RowAnswer>,
    summary: &mut ImportSummary,
    rejected: &mut RejectedRows,
) -> anyhow::Result<()> {
    for (row, answer) in rows.iter().zip(answers) {
        match answer {
            RowAnswer::Created => summary.created += 1,
            RowAnswer::Duplicate => summary.duplicate += 1,
            RowAnswer::Rejected(reason) => {
                summary.rejected += 1;
                rejected.write(row, &reason)?;
            }
        }
    }
    summary.rows += rows.len() as u64;
    summary.batches += 1;
    Ok(())
}

/// The batch as CSV: the header row and the rows as read.
fn to_csv(headers: &csv::ByteRecord, rows: &[csv::ByteRecord]) -> anyhow::Result<Bytes> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_byte_record(headers)?;
    for row in rows {
        // A row of another width than the header is sent as is: the API rejects it with
        // its reason.
        writer.write_byte_record(row)?;
    }
    writer.flush()?;
    Ok(Bytes::from(
        writer.into_inner().context("writing a batch as CSV")?,
    ))
}

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RowAnswer {
    Created,
    Duplicate,
    Rejected(String),
}

/// `--dry-run`: the API's rules that do not depend on the campaign (a placeholder default
/// scriptId stands in for the campaign's).
fn check_locally(
    headers: &csv::ByteRecord,
    rows: &[csv::ByteRecord],
) -> anyhow::Result<Vec<RowAnswer>> {
    let body = to_csv(headers, rows)?;
    let parsed = ebra_api::bulk::parse_csv(&body)
        .map_err(|error| anyhow::anyhow!("the file is not CSV the API takes: {error}"))?;
    let campaign = ebra_shared::store::campaigns::Campaign {
        id: uuid::Uuid::nil(),
        name: "dry run".to_owned(),
        script_id: Some("dry-run".to_owned()),
        max_concurrency: None,
        expires_at: None,
        callback_url: None,
        window: None,
        status: ebra_shared::store::campaigns::CampaignStatus::Active,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
        canceled_at: None,
        completed_at: None,
        sequence: 0,
    };
    let now = chrono::Utc::now();
    Ok(parsed
        .into_iter()
        .map(|row| {
            match row.and_then(|raw| ebra_api::bulk::validate_row(raw, &campaign, now, None)) {
                Ok(_) => RowAnswer::Created,
                Err(errors) => RowAnswer::Rejected(
                    errors
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.message))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
            }
        })
        .collect())
}

/// `FILE.rejected.csv`: the header row plus `reason`, then each rejected row; created on
/// the first rejected row, removed when an import has none (a stale one from an earlier
/// run would mislead).
struct RejectedRows {
    path: PathBuf,
    headers: csv::ByteRecord,
    writer: Option<csv::Writer<std::fs::File>>,
}

impl RejectedRows {
    fn new(path: PathBuf, headers: &csv::ByteRecord) -> Self {
        Self {
            path,
            headers: headers.clone(),
            writer: None,
        }
    }

    fn write(&mut self, row: &csv::ByteRecord, reason: &str) -> anyhow::Result<()> {
        if self.writer.is_none() {
            let mut writer = csv::WriterBuilder::new()
                .flexible(true)
                .from_path(&self.path)
                .with_context(|| format!("creating {}", self.path.display()))?;
            let mut header = self.headers.clone();
            header.push_field(b"reason");
            writer.write_byte_record(&header)?;
            self.writer = Some(writer);
        }
        if let Some(writer) = self.writer.as_mut() {
            let mut out = csv::ByteRecord::new();
            // Padded to the header's width, so `reason` stays in its column.
            for n in 0..self.headers.len().max(row.len()) {
                out.push_field(row.get(n).unwrap_or_default());
            }
            out.push_field(reason.as_bytes());
            writer
                .write_byte_record(&out)
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<Option<PathBuf>> {
        match self.writer {
            Some(mut writer) => {
                writer
                    .flush()
                    .with_context(|| format!("writing {}", self.path.display()))?;
                Ok(Some(self.path))
            }
            None => {
                if self.path.exists() {
                    std::fs::remove_file(&self.path)
                        .with_context(|| format!("removing the stale {}", self.path.display()))?;
                }
                Ok(None)
            }
        }
    }
}

/// The API, as the import talks to it.
struct Client {
    base: String,
    http: reqwest::Client,
    auth: Auth,
}

enum Auth {
    None,
    Bearer(String),
    SigV4(Arc<Signer>),
}

impl Client {
    async fn new(args: &ImportArgs) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(args.api.trim())
            .with_context(|| format!("--api {:?} is not a URL", args.api))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!(
                "--api must be an http:// or https:// URL with a host, got {:?}",
                args.api
            );
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let auth = if args.sigv4 {
            let host = url.host_str().unwrap_or_default().to_owned();
            let mut loader = aws_config::defaults(BehaviorVersion::latest());
            if let Some(region) = args
                .region
                .clone()
                .or_else(|| sigv4::region_from_host(&host))
            {
                loader = loader.region(Region::new(region));
            }
            let sdk = loader.load().await;
            let region = sdk
                .region()
                .map(|r| r.to_string())
                .context("no region to sign for: pass --region, or set AWS_REGION")?;
            let provider: SharedCredentialsProvider = sdk
                .credentials_provider()
                .context("no AWS credentials provider is configured")?;
            let signer = Signer::new(region, provider);
            signer
                .credentials()
                .await
                .context("no AWS credentials found in the standard chain (try `aws sso login` or AWS_PROFILE)")?;
            Auth::SigV4(Arc::new(signer))
        } else if let Some(token) = &args.token {
            Auth::Bearer(token.clone())
        } else {
            Auth::None
        };
        Ok(Self { base, http, auth })
    }

    /// Sends one request (signed or with the token), retrying transport errors, 429 and
    /// 5xx: every request the import makes is safe to repeat.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<(reqwest::StatusCode, Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut last_error = String::new();
        for attempt in 1..=SEND_TRIES {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(250 * 2u64.pow(attempt - 1))).await;
            }
            let mut request = http::Request::builder().method(method.clone()).uri(&url);
            if let Some(content_type) = content_type {
                request = request.header(http::header::CONTENT_TYPE, content_type);
            }
            request = request.header(http::header::ACCEPT, "application/json");
            if let Auth::Bearer(token) = &self.auth {
                request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let mut request = request
                .body(body.clone())
                .with_context(|| format!("building the request to {url}"))?;
            if let Auth::SigV4(signer) = &self.auth {
                signer
                    .sign(&mut request)
                    .await
                    .context("signing the request with AWS credentials")?;
            }
            let request = reqwest::Request::try_from(request)
                .with_context(|| format!("building the request to {url}"))?;
            match self.http.execute(request).await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(bytes) if status.is_server_error() || status.as_u16() == 429 => {
                            last_error = format!("{status}: {}", String::from_utf8_lossy(&bytes));
                        }
                        Ok(bytes) => return Ok((status, bytes)),
                        Err(error) => last_error = sigv4::error_chain(&error),
                    }
                }
                Err(error) => last_error = sigv4::error_chain(&error),
            }
            tracing::warn!(url, attempt, error = %last_error, "request failed; retrying");
        }
        bail!(
            "{method} {url} failed {SEND_TRIES} times ({last_error}); rerun the import: rows already sent are not created twice"
        )
    }

    async fn json(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let (content_type, bytes) = match body {
            Some(body) => (Some("application/json"), Bytes::from(body.to_string())),
            None => (None, Bytes::new()),
        };
        let (status, answer) = self.send(method, path, content_type, bytes).await?;
        let value = serde_json::from_slice(&answer).with_context(|| {
            format!(
                "{path} answered {status} with a body that is not JSON: {}",
                String::from_utf8_lossy(&answer)
            )
        })?;
        Ok((status, value))
    }

    /// The campaign to import into: by id (it must exist), or by name (the newest one of
    /// that name not canceled, else a new one).
    async fn campaign(&self, args: &ImportArgs) -> anyhow::Result<uuid::Uuid> {
        if let Some(id) = args.campaign_id {
            let (status, body) = self
                .json(http::Method::GET, &format!("/campaigns/{id}"), None)
                .await?;
            if !status.is_success() {
                bail!("campaign {id}: {status} {}", problem_detail(&body));
            }
            return Ok(id);
        }
        let Some(name) = &args.campaign else {
            bail!("name the campaign: --campaign NAME (found or created) or --campaign-id ID");
        };
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(cursor) => format!("/campaigns?pageSize=100&cursor={cursor}"),
                None => "/campaigns?pageSize=100".to_owned(),
            };
            let (status, body) = self.json(http::Method::GET, &path, None).await?;
            if !status.is_success() {
                bail!("listing campaigns: {status} {}", problem_detail(&body));
            }
            let found =
                body["items"].as_array().into_iter().flatten().find(|c| {
                    c["name"].as_str() == Some(name.as_str()) && c["status"] != "CANCELED"
                });
            if let Some(id) = found.and_then(|c| c["id"].as_str()) {
                return id
                    .parse()
                    .context("the API answered a campaign id that is not a UUID");
            }
            match body["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let mut new = serde_json::json!({ "name": name });
        if let Some(script) = &args.script_id {
            new["scriptId"] = Value::String(script.clone());
        }
        if let Some(max) = args.max_concurrency {
            new["maxConcurrency"] = Value::from(max);
        }
        let (status, body) = self
            .json(http::Method::POST, "/campaigns", Some(new))
            .await?;
        if status != reqwest::StatusCode::CREATED {
            bail!(
                "creating campaign {name:?}: {status} {}",
                problem_detail(&body)
            );
        }
        body["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("the API answered a campaign without an id")
    }

    async fn add_calls(&self, campaign: uuid::Uuid, csv: Bytes) -> anyhow::Result<Vec<RowAnswer>> {
        let path = format!("/campaigns/{campaign}/calls");
        let (status, answer) = self
            .send(http::Method::POST, &path, Some("text/csv"), csv)
            .await?;
        let body: Value = serde_json::from_slice(&answer).with_context(|| {
            format!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            )
        })?;
        if !status.is_success() {
            bail!("{path}: {status} {}", problem_detail(&body));
        }
        body["rows"]
            .as_array()
            .context("the answer has no `rows`")?
            .iter()
            .map(|row| match row["status"].as_str() {
                Some("created") => Ok(RowAnswer::Created),
                Some("duplicate") => Ok(RowAnswer::Duplicate),
                Some("rejected") => Ok(RowAnswer::Rejected(
                    row["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| {
                            format!(
                                "{}: {}",
                                e["field"].as_str().unwrap_or("row"),
                                e["message"].as_str().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                )),
                other => bail!("a row's answer has status {other:?}"),
            })
            .collect()
    }
}

fn problem_detail(body: &Value) -> String {
    body["detail"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string())
}

/// The progress bar, or plain lines.
struct ProgressView {
    mode: Progress,
    bar: Option<indicatif::ProgressBar>,
    last_line: std::sync::Mutex<Option<Instant>>,
}

impl ProgressView {
    fn new(mode: Progress, total_bytes: u64) -> Self {
        let bar = (mode == Progress::Bar).then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes.max(1));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {percent:>3}% {binary_bytes}/{binary_total_bytes} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar
        });
        Self {
            mode,
            bar,
            last_line: std::sync::Mutex::new(None),
        }
    }

    fn message(summary: &ImportSummary, elapsed: Duration) -> String {
        let rate = summary.rows as f64 / elapsed.as_secs_f64().max(0.001);
        format!(
            "{} rows · {:.0} rows/s · created {} · duplicate {} · rejected {}",
            summary.rows, rate, summary.created, summary.duplicate, summary.rejected
        )
    }

    fn update(&self, position: u64, summary: &ImportSummary, elapsed: Duration) {
        match self.mode {
            Progress::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(position);
                    bar.set_message(Self::message(summary, elapsed));
                }
            }
            Progress::Lines => {
                // A line a second at most (and one per batch when slower).
                let Ok(mut last) = self.last_line.lock() else {
                    return;
                };
                if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    *last = Some(Instant::now());
                    eprintln!("{}", Self::message(summary, elapsed));
                }
            }
            Progress::Quiet => {}
        }
    }

    fn finish(&self, summary: &ImportSummary, elapsed: Duration) {
        match self.mode {
            Progress::Bar => {
                if let Some(bar) = &self.bar {
                    bar.finish_with_message(Self::message(summary, elapsed));
                    // The bar stays on its line; the summary starts on the next.
                    eprintln!();
                }
            }
            Progress::Lines => eprintln!("{}", Self::message(summary, elapsed)),
            Progress::Quiet => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rejected_file_sits_next_to_the_input() {
        assert_eq!(
            rejected_path(Path::new("/data/list.csv")),
            PathBuf::from("/data/list.rejected.csv")
        );
        assert_eq!(
            rejected_path(Path::new("list")),
            PathBuf::from("list.rejected.csv")
        );
    }

    #[test]
    fn a_dry_run_checks_rows_without_the_api() {
        let mut headers = csv::ByteRecord::new();
        headers.push_field(b"to");
        headers.push_field(b"name");
        let row = |to: &str| {
            let mut record = csv::ByteRecord::new();
            record.push_field(to.as_bytes());
            record.push_field(b"x");
            record
        };
        let answers = check_locally(&headers, &[row("+14155550100"), row("555")]).unwrap();
        assert_eq!(answers[0], RowAnswer::Created);
        assert!(matches!(&answers[1], RowAnswer::Rejected(reason) if reason.starts_with("to:")));
    }
}
