//! `ebra import` against a local stack (the API on a loopback listener, the worker, the
//! reclaimer), with a real Postgres and a real SQS endpoint: batches, per-row answers, the
//! rejected rows' file, reruns that create nothing twice, an interrupted import finished by
//! a rerun, `--dry-run`, the bearer token, and the binary's plain progress lines; and the
//! stack's worker, on connections of its own.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::TestEnv;
use ebra::import::{import, ImportArgs, ImportSummary, Progress};
use ebra::local::{start_stack, RunningStack, StackParts};

struct Stack {
    env: TestEnv,
    config: Arc<ebra_shared::config::Config>,
    base: String,
    running: Option<RunningStack>,
    dir: PathBuf,
}

impl Stack {
    async fn start(overrides: &[(&str, &str)]) -> Self {
        let env = TestEnv::new().await;
        let pool = env.pool.clone();
        Self::start_with_api_pool(env, pool, overrides).await
    }

    /// The stack with `api_pool` for the API, the webhook, the reclaimer and the notifier
    /// (the worker keeps the environment's own pool).
    async fn start_with_api_pool(
        env: TestEnv,
        api_pool: ebra_shared::store::Pool,
        overrides: &[(&str, &str)],
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback listener");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let mut vars = vec![("GLOBAL_CONCURRENCY", "5")];
        vars.extend_from_slice(overrides);
        let config = Arc::new(env.config(&vars));
        let running = start_stack(
            listener,
            StackParts {
                config: config.clone(),
                pool: api_pool,
                worker_pool: env.pool.clone(),
                queue: env.queue.clone(),
                provider: common::generic_provider(),
                reclaim_every: Duration::from_secs(3600),
            },
        )
        .await
        .expect("the local stack starts");
        let dir = std::env::temp_dir().join(format!("ebra-import-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self {
            env,
            config,
            base,
            running: Some(running),
            dir,
        }
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, content).expect("writing the CSV");
        path
    }

    fn args(&self, file: &Path) -> ImportArgs {
        ImportArgs {
            file: file.to_owned(),
            api: self.base.clone(),
            campaign: Some("Spring renewals".to_owned()),
            campaign_id: None,
            script_id: Some("renewals-v2".to_owned()),
            max_concurrency: Some(3),
            token: None,
            sigv4: false,
            region: None,
            dry_run: false,
            batch_rows: 1000,
            parallel: 4,
        }
    }

    async fn calls(&self) -> i64 {
        self.env.count("SELECT count(*) FROM calls").await
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `rows` rows with a BOM and CRLF line endings; every 100th row has a bad number, every
/// 250th repeats the row before it, and one row has a quoted note with a comma and a
/// newline.
fn list(rows: usize) -> String {
    let mut csv = String::from("\u{feff}to,first_name,note\r\n");
    for n in 0..rows {
        let line = if n % 100 == 99 {
            format!("555-{n},Bad,\r\n")
        } else if n % 250 == 249 {
            // The previous row again (n - 1 is not a multiple of 100 minus one here).
            format!("+1415555{:04},Name {},\r\n", n - 1, n - 1)
        } else if n == 7 {
            format!("+1415555{n:04},Name {n},\"Called before, twice\nthen no answer\"\r\n")
        } else {
            format!("+1415555{n:04},Name {n},\r\n")
        };
        csv.push_str(&line);
    }
    csv
}

fn expected(rows: usize) -> (u64, u64, u64) {
    let bad = (0..rows).filter(|n| n % 100 == 99).count() as u64;
    let repeats = (0..rows)
        .filter(|n| n % 100 != 99 && n % 250 == 249)
        .count() as u64;
    (rows as u64 - bad - repeats, repeats, bad)
}

#[tokio::test]
async fn an_import_creates_each_row_once_and_writes_the_rejected_rows() {
    let stack = Stack::start(&[]).await;
    let rows = 2_600;
    let file = stack.file("list.csv", &list(rows));
    let summary = import(&stack.args(&file), Progress::Quiet)
        .await
        .expect("the import runs");
    let (created, duplicate, rejected) = expected(rows);
    assert_eq!(
        (
            summary.rows,
            summary.created,
            summary.duplicate,
            summary.rejected
        ),
        (rows as u64, created, duplicate, rejected)
    );
    assert_eq!(summary.batches, 3, "batches of at most 1,000 rows");
    assert_eq!(stack.calls().await, created as i64);
    // The campaign was created with the options, and holds the calls.
    let campaign = summary.campaign_id.expect("a campaign");
    assert_eq!(
        stack
            .env
            .count(&format!(
                "SELECT count(*) FROM campaigns WHERE id = '{campaign}' AND name = 'Spring renewals' \
                  AND script_id = 'renewals-v2' AND max_concurrency = 3"
            ))
            .await,
        1
    );
    assert_eq!(
        stack
            .env
            .count(&format!(
                "SELECT count(*) FROM calls WHERE campaign_id = '{campaign}' AND script_id = 'renewals-v2'"
            ))
            .await,
        created as i64
    );
    // The quoted note kept its comma and newline.
    assert_eq!(
        stack
            .env
            .count(
                "SELECT count(*) FROM calls WHERE phone = '+14155550007' \
                  AND metadata->>'note' = E'Called before, twice\\nthen no answer'"
            )
            .await,
        1
    );
    // The rejected rows, with their reasons.
    let rejected_file = summary.rejected_file.clone().expect("a rejected file");
    assert_eq!(rejected_file, stack.dir.join("list.rejected.csv"));
    let mut reader = csv::Reader::from_path(&rejected_file).expect("the rejected file");
    let headers = reader.headers().expect("headers").clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        ["to", "first_name", "note", "reason"]
    );
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a row")).collect();
    assert_eq!(records.len() as u64, rejected);
    assert_eq!(&records[0][0], "555-99");
    assert!(records[0][3].starts_with("to:"), "{:?}", &records[0]);

    // Rerun: nothing new.
    let again = import(&stack.args(&file), Progress::Quiet)
        .await
        .expect("rerun");
    assert_eq!(
        (again.created, again.duplicate, again.rejected),
        (0, created + duplicate, rejected)
    );
    assert_eq!(
        again.campaign_id, summary.campaign_id,
        "the campaign found by name"
    );
    assert_eq!(stack.calls().await, created as i64);
    // No more SQS messages than the cap for the whole import (the rest are parked).
    assert!(
        stack
            .env
            .count("SELECT count(*) FROM calls WHERE outbox_due_at IS NOT NULL OR nudged_at IS NOT NULL")
            .await
            <= 5
    );
    stack.stop().await;
}

#[tokio::test]
async fn an_interrupted_import_is_finished_by_a_rerun() {
    let stack = Stack::start(&[]).await;
    let rows = 1_500;
    let full = list(rows);
    // The import stopped after 600 rows (a Ctrl-C, a network error)...
    let first_part: String = full.split_inclusive("\r\n").take(601).collect();
    let partial = stack.file("list.csv", &first_part);
    let first = import(&stack.args(&partial), Progress::Quiet)
        .await
        .expect("part");
    assert_eq!(first.rows, 600);
    // ...then ran again on the whole file.
    let file = stack.file("list.csv", &full);
    let rest = import(&stack.args(&file), Progress::Quiet)
        .await
        .expect("rerun");
    let (created, _, _) = expected(rows);
    assert_eq!(first.created + rest.created, created);
    assert_eq!(stack.calls().await, created as i64);
    stack.stop().await;
}

#[tokio::test]
async fn a_dry_run_sends_nothing_and_a_token_is_sent() {
    let stack = Stack::start(&[("API_TOKEN", "import-token")]).await;
    let file = stack.file("list.csv", &list(300));
    let mut args = stack.args(&file);
    args.dry_run = true;
    let checked: ImportSummary = import(&args, Progress::Quiet).await.expect("dry run");
    assert_eq!(checked.rows, 300);
    assert_eq!(checked.rejected, 3);
    assert_eq!(checked.campaign_id, None);
    assert_eq!(stack.calls().await, 0);
    assert_eq!(stack.env.count("SELECT count(*) FROM campaigns").await, 0);

    // Without the token the API refuses, and the import says so.
    args.dry_run = false;
    let refused = import(&args, Progress::Quiet).await.expect_err("401");
    assert!(format!("{refused:#}").contains("401"), "{refused:#}");
    args.token = Some("import-token".to_owned());
    let done = import(&args, Progress::Quiet)
        .await
        .expect("with the token");
    assert_eq!(done.created, expected(300).0);
    stack.stop().await;
}

#[tokio::test]
async fn a_file_without_a_to_column_is_refused_before_anything_is_sent() {
    let stack = Stack::start(&[]).await;
    let file = stack.file("list.csv", "phone,name\n+14155550100,Ann\n");
    let error = import(&stack.args(&file), Progress::Quiet)
        .await
        .expect_err("no `to` column");
    assert!(format!("{error:#}").contains("`to`"), "{error:#}");
    assert_eq!(stack.env.count("SELECT count(*) FROM campaigns").await, 0);
    stack.stop().await;
}

#[tokio::test]
async fn the_binary_prints_plain_progress_lines_and_a_summary_when_not_a_terminal() {
    let stack = Stack::start(&[]).await;
    let file = stack.file("list.csv", &list(1200));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ebra"))
        .arg("import")
        .arg(&file)
        .args([
            "--api",
            &stack.base,
            "--campaign",
            "CLI",
            "--script-id",
            "s",
        ])
        .output()
        .await
        .expect("running ebra import");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let (created, duplicate, rejected) = expected(1200);
    assert!(
        stdout.contains(&format!(
            "1200 rows in 2 batches: {created} created, {duplicate} duplicate, {rejected} rejected"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("list.rejected.csv"), "{stdout}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("1200 rows · ") && l.contains("rows/s")),
        "plain lines: {stderr}"
    );
    stack.stop().await;
}

/// The local stack gives the worker its own connections, as its Lambda has: with every
/// connection of the API's and webhook's pool taken (a burst of webhooks, say), a queued
/// call is still claimed. With one pool for all, the claim waited behind the burst, and
/// the slots it freed stayed empty (README, "Campaign figures").
#[tokio::test]
async fn the_local_worker_claims_while_every_api_connection_is_taken() {
    let env = TestEnv::new().await;
    let api_pool = ebra_shared::db::pool(&env.database_url, 1).expect("the API's pool");
    let taken = api_pool.get().await.expect("the API pool's one connection");
    let stack = Stack::start_with_api_pool(env, api_pool, &[]).await;

    let call = stack
        .env
        .pending_call(&stack.config, "+14155550101", None)
        .await;
    stack
        .env
        .queue
        .send(ebra_shared::queue::Enqueue::now(call))
        .await
        .expect("the call's message is sent");
    let claimed = format!("SELECT count(*) FROM call_attempts WHERE call_id = '{call}'");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while stack.env.count(&claimed).await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = stack.env.count(&claimed).await;

    drop(taken);
    stack.stop().await;
    assert_eq!(
        attempts, 1,
        "the worker claimed and dialed the call while the API's pool was exhausted"
    );
}
