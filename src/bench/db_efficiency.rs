//! Scenario 4: Postgres commits per successful call lifecycle — create, claim, record the
//! dial, settle by webhook — through the store functions the handlers call.
//!
//! Each step runs for every call in turn, and `pg_stat_database.xact_commit` is read after
//! each step (the connection flushes its statistics first), so the figure splits per step. The pool has one
//! connection and a few lifecycles run first, so statement preparation (itself a
//! transaction in Postgres' count) is out of the way, as on a warm Lambda instance.

use anyhow::Context as _;
use ebra_shared::domain::{CallOutcome, CallStatus};
use ebra_shared::provider::DialResult;
use ebra_shared::provider::ReportedOutcome;
use ebra_shared::store::calls::{create_call, Created};
use ebra_shared::store::claim::{claim_call, Claim, ClaimedCall};
use ebra_shared::store::dial::{record_dial, DialRecorded, RetryPolicy};
use ebra_shared::store::settle::{settle_from_webhook, ProviderReport, Settlement};
use ebra_shared::store::Pool;
use serde_json::json;
use uuid::Uuid;

use super::harness::{self, BenchDatabase};
use super::report::round;
use super::{Figure, ScenarioReport, Target};

const CAP: u32 = 10_000;
const WARM_UP: usize = 5;

pub async fn run(quick: bool) -> anyhow::Result<ScenarioReport> {
    let calls = if quick { 300 } else { 1_000 };
    let db = BenchDatabase::create(1).await?;
    let result = measure(&db, calls).await;
    db.drop().await;
    result
}

async fn measure(db: &BenchDatabase, calls: usize) -> anyhow::Result<ScenarioReport> {
    let config = harness::config(&db.url, "http://127.0.0.1:9/000000000000/unused", &[])?;
    let policy = RetryPolicy::from(&config);
    let pool = &db.pool;

    // Warm-up lifecycles: every statement of the path prepared on the one connection.
    for n in 0..WARM_UP {
        let id = create(pool, n).await?;
        let claimed = claim(pool, id).await?;
        dial(pool, &claimed, &policy).await?;
        settle(pool, &claimed, &policy).await?;
    }

    println!("   {calls} lifecycles, step by step, reading xact_commit after each step ...");
    let mut counts = vec![db.settled_commits().await?];
    let offset = 1_000; // phones distinct from the warm-up's
    let mut ids = Vec::with_capacity(calls);
    for n in 0..calls {
        ids.push(create(pool, offset + n).await?);
    }
    counts.push(db.settled_commits().await?);
    let mut claimed = Vec::with_capacity(calls);
    for id in &ids {
        claimed.push(claim(pool, *id).await?);
    }
    counts.push(db.settled_commits().await?);
    for call in &claimed {
        dial(pool, call, &policy).await?;
    }
    counts.push(db.settled_commits().await?);
    for call in &claimed {
        settle(pool, call, &policy).await?;
    }
    counts.push(db.settled_commits().await?);

    let completed = db
        .count("SELECT count(*) FROM calls WHERE status = 'COMPLETED'")
        .await?;
    anyhow::ensure!(
        completed == (calls + WARM_UP) as i64,
        "expected {} COMPLETED calls, found {completed}",
        calls + WARM_UP
    );
    let steps = ["create", "claim", "record dial", "settle by webhook"];
    let per_step: Vec<f64> = counts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / calls as f64)
        .collect();
    let total = (counts[4] - counts[0]) as f64 / calls as f64;
    let breakdown = steps
        .iter()
        .zip(&per_step)
        .map(|(step, commits)| format!("{step} {commits:.2}"))
        .collect::<Vec<_>>()
        .join(", ");

    let mut report = ScenarioReport::new("db");
    report.figures.push(
        Figure::new("db: commits per call lifecycle", total, "commits", format!("{total:.2} ({breakdown})"))
            .target(Target::AtMost(4.0))
            .how(format!(
                "{calls} lifecycles through store::calls::create_call → claim::claim_call → dial::record_dial \
                 (Accepted) → settle::settle_from_webhook (COMPLETED), one pooled connection after {WARM_UP} warm-up \
                 lifecycles; delta of pg_stat_database.xact_commit for the bench database (read from another \
                 database after pg_stat_force_next_flush() on the connection, its own commit subtracted) / {calls}"
            )),
    );
    report.details = json!({
        "calls": calls,
        "warmUpLifecycles": WARM_UP,
        "xactCommitReadings": counts,
        "commitsPerStep": steps.iter().zip(&per_step).map(|(s, c)| json!({"step": s, "commitsPerCall": round(*c, 3)})).collect::<Vec<_>>(),
        "commitsPerLifecycle": round(total, 3),
    });
    Ok(report)
}

async fn create(pool: &Pool, n: usize) -> anyhow::Result<Uuid> {
    match create_call(pool, &harness::new_call(n), 3, 30)
        .await
        .context("create_call")?
    {
        Created::New { call, .. } => Ok(call.id),
        other => anyhow::bail!("expected a new call, got {other:?}"),
    }
}

async fn claim(pool: &Pool, id: Uuid) -> anyhow::Result<ClaimedCall> {
    match claim_call(pool, id, CAP, None)
        .await
        .context("claim_call")?
    {
        Claim::Claimed(claimed) => Ok(claimed),
        other => anyhow::bail!("expected the call to be claimed, got {other:?}"),
    }
}

async fn dial(pool: &Pool, claimed: &ClaimedCall, policy: &RetryPolicy) -> anyhow::Result<()> {
    let accepted = DialResult::Accepted {
        provider_call_id: provider_call_id(claimed),
    };
    match record_dial(pool, claimed, &accepted, policy)
        .await
        .context("record_dial")?
    {
        (DialRecorded::Dialed { .. }, _) => Ok(()),
        (other, _) => anyhow::bail!("expected the dial to be recorded, got {other:?}"),
    }
}

async fn settle(pool: &Pool, claimed: &ClaimedCall, policy: &RetryPolicy) -> anyhow::Result<()> {
    let report = ProviderReport {
        webhook_id: format!("msg_{}", Uuid::new_v4().simple()),
        source: "http",
        provider_call_id: provider_call_id(claimed),
        attempt_key: None,
        outcome: ReportedOutcome::Outcome(CallOutcome::Completed),
        end_reason: None,
        duration_sec: Some(2),
        completed_at: Some(chrono::Utc::now()),
        result: None,
    };
    match settle_from_webhook(pool, &report, policy)
        .await
        .context("settle_from_webhook")?
    {
        (
            Settlement::Applied {
                status: CallStatus::Completed,
                ..
            },
            _,
        ) => Ok(()),
        (other, _) => anyhow::bail!("expected the call to complete, got {other:?}"),
    }
}

fn provider_call_id(claimed: &ClaimedCall) -> String {
    format!("bench_{}", claimed.idempotency_key.simple())
}
