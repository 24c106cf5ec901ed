//! Scenario 6: do claims and listings stay flat as `calls` grows? Claim latency
//! (`store::claim::claim_call` on a due PENDING call) and list latency
//! (`store::calls::list_calls`: the first page as the API asks for it by default — page 1,
//! which counts the total up to 10,000 — and a keyset page after a cursor) with 10 k and then 1 M rows.
//!
//! Rows are bulk-inserted by one `INSERT … SELECT generate_series` statement each time:
//! a realistic mix of finished calls (COMPLETED, FAILED, CANCELED, EXPIRED) and scheduled
//! PENDING ones, time-ordered UUIDv7-like ids, then `VACUUM ANALYZE` (what autovacuum
//! would have done). The timed calls are fresh ones created untimed just before.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use ebra_shared::store::calls::{
    create_call, list_calls, CallFilter, Created, ListCursor, ListPosition,
};
use ebra_shared::store::claim::{claim_call, Claim};
use ebra_shared::store::Pool;
use serde_json::json;
use uuid::Uuid;

use super::harness::{self, BenchDatabase};
use super::report::round;
use super::stats::{ms, Summary};
use super::{Figure, ScenarioReport, Target};

const OPERATIONS: usize = 200;
const WARM_UP: usize = 20;
const PAGE_SIZE: u32 = 20;
const CAP: u32 = 10_000;
const TARGET_RATIO: f64 = 1.5;

/// Adds rows `from..=to` (1-based) to `calls`; row `g` was created `g` seconds after a
/// start 30 days ago, so later rows are newer.
const BULK_INSERT: &str = "\
INSERT INTO calls (id, phone, script_id, metadata, status, attempts, max_attempts, last_error, outcome,
                   duration_sec, next_run_at, created_at, updated_at, started_at, ended_at)
SELECT (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid,
       '+1' || (201 + g % 700)::text || '555' || lpad((g % 10000)::text, 4, '0'),
       'bench-growth',
       jsonb_build_object('row', g),
       status,
       CASE status WHEN 'COMPLETED' THEN 1 WHEN 'FAILED' THEN 3 ELSE 0 END,
       3,
       CASE status WHEN 'FAILED' THEN 'provider reported FAILED (after 3 attempts)'
                   WHEN 'EXPIRED' THEN 'expired before it could be dialed' END,
       CASE status WHEN 'COMPLETED' THEN 'COMPLETED' WHEN 'FAILED' THEN 'FAILED' END,
       CASE WHEN status IN ('COMPLETED', 'FAILED') THEN 30 + g % 300 END,
       CASE status WHEN 'PENDING' THEN now() + interval '40 days' ELSE created END,
       created,
       created + interval '5 minutes',
       CASE WHEN status IN ('COMPLETED', 'FAILED') THEN created + interval '2 seconds' END,
       CASE WHEN status <> 'PENDING' THEN created + interval '5 minutes' END
  FROM (SELECT g,
               date_trunc('day', now()) - interval '30 days' + g * interval '1 second' AS created,
               CASE WHEN g % 100 < 85 THEN 'COMPLETED'
                    WHEN g % 100 < 93 THEN 'FAILED'
                    WHEN g % 100 < 96 THEN 'CANCELED'
                    WHEN g % 100 < 98 THEN 'EXPIRED'
                    ELSE 'PENDING' END AS status
          FROM generate_series($1::bigint, $2::bigint) AS g) AS rows";

pub async fn run(quick: bool) -> anyhow::Result<ScenarioReport> {
    let large: i64 = if quick { 100_000 } else { 1_000_000 };
    let db = BenchDatabase::create(2).await?;
    let result = measure(&db, large).await;
    db.drop().await;
    result
}

/// Which operation's latencies to read from an [`AtSize`].
type PickSummary = fn(&AtSize) -> &Summary;

/// Latencies at one table size.
struct AtSize {
    rows: i64,
    claim: Summary,
    first_page: Summary,
    cursor_page: Summary,
    insert_seconds: f64,
}

async fn measure(db: &BenchDatabase, large: i64) -> anyhow::Result<ScenarioReport> {
    let small = measure_at(db, 0, 10_000, 0).await?;
    let big = measure_at(db, 10_000, large, 1).await?;
    let label = |rows: i64| {
        if rows >= 1_000_000 {
            format!("{}M", rows / 1_000_000)
        } else {
            format!("{}k", rows / 1_000)
        }
    };
    let (small_label, big_label) = (label(small.rows), label(big.rows));

    let mut report = ScenarioReport::new("growth");
    let setup = format!(
        "rows bulk-inserted by one INSERT … SELECT generate_series (85 % COMPLETED, 8 % FAILED, 3 % CANCELED, 2 % \
         EXPIRED, 2 % scheduled PENDING; {small_label} took {:.1} s, growing to {big_label} {:.1} s more), then VACUUM \
         ANALYZE; {OPERATIONS} timed operations after {WARM_UP} warm-up ones, one at a time",
        small.insert_seconds, big.insert_seconds
    );
    let ops: [(&str, &str, PickSummary); 3] = [
        ("claim", "store::claim::claim_call on a fresh due PENDING call (created untimed just before)", |a| &a.claim),
        (
            "list first page",
            "store::calls::list_calls(page 1, 20 per page) — the API's default listing, which counts the total up to 10,000",
            |a| &a.first_page,
        ),
        (
            "list cursor page",
            "store::calls::list_calls(after a cursor, 20 per page), cursors at random rows",
            |a| &a.cursor_page,
        ),
    ];
    for (name, what, pick) in ops {
        let (at_small, at_big) = (pick(&small), pick(&big));
        let ratio = at_big.p50_ms / at_small.p50_ms;
        report.figures.push(
            Figure::new(
                format!("growth: {name} p50 {big_label}/{small_label}"),
                ratio,
                "×",
                format!(
                    "{ratio:.2}× ({small_label}: {}; {big_label}: {})",
                    at_small.p50_p99(),
                    at_big.p50_p99()
                ),
            )
            .target(Target::AtMost(TARGET_RATIO))
            .how(format!(
                "{what}; median latency at {big_label} rows / at {small_label} rows; {setup}"
            )),
        );
    }
    if large < 1_000_000 {
        report.notes.push(format!(
            "--quick: the large table has {big_label} rows, not 1M"
        ));
    }
    let at_json = |a: &AtSize| {
        json!({
            "rows": a.rows,
            "insertSeconds": round(a.insert_seconds, 2),
            "claim": a.claim,
            "listFirstPage": a.first_page,
            "listCursorPage": a.cursor_page,
        })
    };
    report.details = json!({
        "operations": OPERATIONS,
        "warmUp": WARM_UP,
        "pageSize": PAGE_SIZE,
        "sizes": [at_json(&small), at_json(&big)],
    });
    println!(
        "   claim p50 {} → {} ms, first page p50 {} → {} ms, cursor page p50 {} → {} ms",
        ms(small.claim.p50_ms),
        ms(big.claim.p50_ms),
        ms(small.first_page.p50_ms),
        ms(big.first_page.p50_ms),
        ms(small.cursor_page.p50_ms),
        ms(big.cursor_page.p50_ms)
    );
    Ok(report)
}

/// Grows the bulk rows from `have` to `rows`, then times each operation. `round` keeps the
/// fresh calls' phones apart between sizes.
async fn measure_at(
    db: &BenchDatabase,
    have: i64,
    rows: i64,
    round_no: usize,
) -> anyhow::Result<AtSize> {
    println!("   growing calls to {rows} rows ...");
    let started = Instant::now();
    {
        let client = db.pool.get().await.context("a bench database connection")?;
        client
            .execute(BULK_INSERT, &[&(have + 1), &rows])
            .await
            .context("bulk-inserting calls")?;
    }
    let insert_seconds = started.elapsed().as_secs_f64();
    // Undo the previous size's claims so the slot table starts empty each time.
    db.execute(
        "UPDATE call_slots SET call_id = NULL, claimed_at = NULL, phone = NULL WHERE call_id IS NOT NULL;
         UPDATE calls SET status = 'COMPLETED', outcome = 'COMPLETED', ended_at = now() WHERE status = 'IN_PROGRESS';",
    )
    .await?;
    // One statement each: VACUUM cannot run inside the implicit transaction of a batch.
    for table in ["calls", "call_slots", "call_attempts"] {
        db.execute(&format!("VACUUM ANALYZE {table}")).await?;
    }
    let pool = &db.pool;

    // Claims: fresh due calls, created untimed.
    let base = 50_000 + round_no * (OPERATIONS + WARM_UP);
    let mut fresh = Vec::with_capacity(OPERATIONS + WARM_UP);
    for n in 0..OPERATIONS + WARM_UP {
        match create_call(pool, &harness::new_call(base + n), 3, 30)
            .await
            .context("create_call")?
        {
            Created::New { call, .. } => fresh.push(call.id),
            other => anyhow::bail!("expected a new call, got {other:?}"),
        }
    }
    let claim = time_each(&fresh, |id| async move {
        match claim_call(pool, id, CAP, None)
            .await
            .context("claim_call")?
        {
            Claim::Claimed(_) => Ok(()),
            other => anyhow::bail!("expected a claim, got {other:?}"),
        }
    })
    .await?;

    let first_page = time_each(&[(); OPERATIONS + WARM_UP], |()| async move {
        let page = list_calls(
            pool,
            &CallFilter::default(),
            &ListPosition::Page(1),
            PAGE_SIZE,
        )
        .await
        .context("list_calls page 1")?;
        anyhow::ensure!(
            page.items.len() == PAGE_SIZE as usize,
            "page 1 has {} calls",
            page.items.len()
        );
        Ok(())
    })
    .await?;

    let cursors = random_cursors(pool, OPERATIONS + WARM_UP).await?;
    let cursor_page = time_each(&cursors, |cursor| async move {
        list_calls(
            pool,
            &CallFilter::default(),
            &ListPosition::After(cursor),
            PAGE_SIZE,
        )
        .await
        .context("list_calls after a cursor")?;
        Ok(())
    })
    .await?;

    let total = db.count("SELECT count(*) FROM calls").await?;
    Ok(AtSize {
        rows: total,
        claim,
        first_page,
        cursor_page,
        insert_seconds,
    })
}

/// Runs `op` on each input in turn; the first [`WARM_UP`] are untimed.
async fn time_each<T, F, Fut>(inputs: &[T], op: F) -> anyhow::Result<Summary>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut samples: Vec<Duration> = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let started = Instant::now();
        op(input.clone()).await?;
        if i >= WARM_UP {
            samples.push(started.elapsed());
        }
    }
    Summary::of(&samples).context("no samples")
}

/// Cursors at `count` random rows of the table.
async fn random_cursors(pool: &Pool, count: usize) -> anyhow::Result<Vec<ListCursor>> {
    let client = pool.get().await.context("a bench database connection")?;
    let rows = client
        .query(
            "SELECT created_at, id FROM calls ORDER BY random() LIMIT $1",
            &[&(count as i64)],
        )
        .await
        .context("sampling cursors")?;
    rows.iter()
        .map(|row| {
            Ok(ListCursor {
                created_at: row.try_get("created_at")?,
                id: row.try_get::<_, Uuid>("id")?,
            })
        })
        .collect()
}
