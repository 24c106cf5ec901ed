//! The fault-injection run once per real provider (issue 11): calls through Ebra's real
//! handlers — created as the API creates them (parked when no slot has room), delivered by
//! the local SQS event source to the worker's `handle_batch`, reported to the webhook
//! router, reclaimed by the reclaimer's `run_pass` on a short timer — against each
//! provider's contract fake, with every fault the fakes can play, drawn from one seeded RNG:
//!
//! - dials: placed but answered after Ebra's dial timeout (fate unknown, the call exists),
//!   dropped before anything was placed (fate unknown, no call), the concurrency-limit
//!   refusal, rate limits, 5xx, permanent refusals;
//! - webhooks: duplicated, lost (the reclaimer's lookup must settle the call), forged before
//!   the genuine one, and answered for every documented end reason;
//! - lookups: the provider cannot be asked, for stretches of the run;
//! - phones shared by several calls.
//!
//! It asserts and prints, per provider, the same zeros as tests/faults.rs:
//! `lost=0 double_dials=0` (never two provider calls for one attempt key, and never two
//! live at once for one phone), the cap (Ebra's calls in progress, sampled, and the
//! provider's live calls never above it), no two calls in progress for one phone in
//! Postgres, and no forged webhook accepted.
//!
//! Size: 40 calls per provider (CI). `EBRA_PROVIDER_FAULTS_CALLS=<n>` for more,
//! `EBRA_PROVIDER_FAULTS_SEED=<u64>` to replay a seed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::contract::{Stage, PUBLIC_BASE};
use common::fakes::{Contract, DialPlan, Placement};
use ebra_shared::domain::{CallStatus, Metadata, PhoneNumber, ScriptId};
use ebra_shared::store::calls::{create_call, Created, NewCall};
use futures::FutureExt as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use uuid::Uuid;

const CAP: u32 = 6;
const DEFAULT_CALLS: usize = 40;
const DEFAULT_SEED: u64 = 0x0eb4_a11c;

struct Settings {
    calls: usize,
    seed: u64,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str| {
            std::env::var(name).ok().map(|raw| {
                raw.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} must be a whole number"))
            })
        };
        Self {
            calls: number("EBRA_PROVIDER_FAULTS_CALLS")
                .map_or(DEFAULT_CALLS, |n| n as usize)
                .max(10),
            seed: number("EBRA_PROVIDER_FAULTS_SEED").unwrap_or(DEFAULT_SEED),
        }
    }
}

/// A dial answer drawn for the fake.
fn roll_plan(rng: &mut StdRng) -> DialPlan {
    let stall = Duration::from_millis(900);
    match rng.random_range(0..100u32) {
        0..=63 => DialPlan::Accept,
        64..=71 => DialPlan::PlaceThenStall(stall),
        72..=77 => DialPlan::StallWithoutPlacing(stall),
        78..=83 => DialPlan::ConcurrencyLimit,
        84..=89 => DialPlan::RateLimited,
        90..=97 => DialPlan::ServerError,
        _ => DialPlan::Permanent,
    }
}

/// How the provider reports one placed call.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    Once,
    Twice,
    Lost,
    ForgedFirst,
}

#[derive(Default)]
struct Tally {
    forged: AtomicU64,
    forged_accepted: AtomicU64,
    genuine_refused: AtomicU64,
    lost_webhooks: AtomicU64,
    duplicates: AtomicU64,
}

/// Plays every call the fake places: it lasts a while, ends at the provider with a drawn
/// end reason, and is reported (or not) as drawn.
async fn play_calls(
    stage: Arc<Stage>,
    contract: Arc<dyn Contract>,
    rng: Arc<Mutex<StdRng>>,
    tally: Arc<Tally>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut played = 0;
    let reasons = contract.end_reasons();
    let completed: Vec<&'static str> = reasons
        .iter()
        .filter(|(_, s)| s.status == CallStatus::Completed)
        .map(|(r, _)| *r)
        .collect();
    let mut tasks = Vec::new();
    loop {
        let placements: Vec<Placement> = stage.fake.placements();
        for placement in placements.into_iter().skip(played) {
            played += 1;
            if placement.ended.is_some() {
                continue; // ended at birth (a call the provider refused after creating it)
            }
            let (lasts, reason, delivery) = {
                let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
                let lasts = Duration::from_millis(rng.random_range(30..500));
                let reason = if rng.random_bool(0.7) {
                    completed[rng.random_range(0..completed.len())]
                } else {
                    reasons[rng.random_range(0..reasons.len())].0
                };
                let delivery = match rng.random_range(0..100u32) {
                    0..=69 => Delivery::Once,
                    70..=79 => Delivery::Twice,
                    80..=91 => Delivery::Lost,
                    _ => Delivery::ForgedFirst,
                };
                (lasts, reason, delivery)
            };
            let (stage, contract, tally) = (stage.clone(), contract.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(lasts).await;
                stage.fake.end(&placement.provider_call_id, reason);
                let genuine = contract.end_of_call(&placement, reason, PUBLIC_BASE);
                let deliveries = match delivery {
                    Delivery::Lost => {
                        tally.lost_webhooks.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                    Delivery::Once => 1,
                    Delivery::Twice => {
                        tally.duplicates.fetch_add(1, Ordering::Relaxed);
                        2
                    }
                    Delivery::ForgedFirst => {
                        for (name, forged) in contract.forgeries(&placement, PUBLIC_BASE) {
                            tally.forged.fetch_add(1, Ordering::Relaxed);
                            let (status, body) = stage.post(&forged).await;
                            if status != StatusCode::UNAUTHORIZED {
                                tally.forged_accepted.fetch_add(1, Ordering::Relaxed);
                                eprintln!("provider_faults: forgery {name} got {status}: {body}");
                            }
                        }
                        1
                    }
                };
                for _ in 0..deliveries {
                    let (status, body) = stage.post(&genuine).await;
                    if !status.is_success() {
                        tally.genuine_refused.fetch_add(1, Ordering::Relaxed);
                        eprintln!("provider_faults: a genuine report got {status}: {body}");
                    }
                }
            }));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// What the samplers saw.
#[derive(Default)]
struct Peaks {
    in_progress: AtomicU64,
    provider_live: AtomicU64,
    phone_overlaps: AtomicU64,
    samples: AtomicU64,
}

async fn sample(stage: Arc<Stage>, peaks: Arc<Peaks>, mut stopped: watch::Receiver<bool>) {
    loop {
        if let Ok(client) = stage.env.pool.get().await {
            if let Ok(row) = client
                .query_one(
                    "SELECT (SELECT count(*) FROM calls WHERE status = 'IN_PROGRESS'), \
                            (SELECT count(*) FROM (SELECT phone FROM calls WHERE status = 'IN_PROGRESS' \
                              GROUP BY phone HAVING count(*) > 1) AS p)",
                    &[],
                )
                .await
            {
                let in_progress: i64 = row.get(0);
                let overlaps: i64 = row.get(1);
                peaks
                    .in_progress
                    .fetch_max(in_progress as u64, Ordering::Relaxed);
                peaks
                    .phone_overlaps
                    .fetch_add(overlaps as u64, Ordering::Relaxed);
            }
        }
        let live = stage
            .fake
            .placements()
            .iter()
            .filter(|p| p.ended.is_none())
            .count();
        peaks
            .provider_live
            .fetch_max(live as u64, Ordering::Relaxed);
        peaks.samples.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(15)) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
}

/// Now and then the provider cannot be asked, for a stretch.
async fn flaky_lookups(
    stage: Arc<Stage>,
    rng: Arc<Mutex<StdRng>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let fail = rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random_bool(0.2);
        stage.fake.book().lookups_fail = fail;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(400)) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    stage.fake.book().lookups_fail = false;
}

async fn run(contract: Arc<dyn Contract>) {
    let settings = Settings::from_env();
    // One seed per provider, from the run's.
    let seed = contract
        .kind()
        .as_str()
        .bytes()
        .fold(settings.seed, |seed, b| {
            seed.wrapping_mul(31).wrapping_add(u64::from(b))
        });
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let stage = Arc::new(
        Stage::new(
            contract.as_ref(),
            &[
                ("GLOBAL_CONCURRENCY", &CAP.to_string()),
                ("MAX_ATTEMPTS", "6"),
                ("DIAL_TIMEOUT_MS", "300"),
                ("STALE_INPROG_SECONDS", "2"),
                ("WAIT_RECHECK_SECONDS", "1"),
                ("OUTBOX_GRACE_SECONDS", "2"),
            ],
        )
        .await,
    );
    {
        let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
        let plans: Vec<DialPlan> = (0..settings.calls * 8)
            .map(|_| roll_plan(&mut rng))
            .collect();
        stage.fake.plan(plans);
    }
    let tally = Arc::new(Tally::default());
    let peaks = Arc::new(Peaks::default());
    let (stop, stopped) = watch::channel(false);

    let mapping = ebra::local::EventSourceMapping {
        queue: stage.env.queue.clone(),
        worker: Arc::new(
            ebra_worker::WorkerState::new(
                ebra_shared::db::pool(&stage.env.database_url, 8).expect("worker pool"),
                stage.env.queue.clone(),
                stage.worker.provider.clone(),
                stage.config.clone(),
            )
            .expect("worker state"),
        ),
        max_concurrency: CAP as usize,
    };
    let event_source = tokio::spawn(mapping.run(stopped.clone()));
    let player = tokio::spawn(play_calls(
        stage.clone(),
        contract.clone(),
        rng.clone(),
        tally.clone(),
        stopped.clone(),
    ));
    let sampler = tokio::spawn(sample(stage.clone(), peaks.clone(), stopped.clone()));
    let flaky = tokio::spawn(flaky_lookups(stage.clone(), rng.clone(), stopped.clone()));
    let reclaimer = {
        let stage = stage.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let mut errors = 0u64;
            loop {
                if ebra_reclaimer::run_pass(&stage.reclaimer).await.is_err() {
                    errors += 1;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            errors
        })
    };

    // Create the calls as the API does: parked unless a slot has room.
    let shared_phones: Vec<String> = (0..4).map(|i| format!("+1415555{:04}", 7000 + i)).collect();
    let mut call_ids = Vec::with_capacity(settings.calls);
    for n in 0..settings.calls {
        let phone = {
            let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
            if rng.random_bool(0.2) {
                shared_phones[rng.random_range(0..shared_phones.len())].clone()
            } else {
                format!("+1415555{:04}", 8000 + n)
            }
        };
        let new = NewCall {
            phone: PhoneNumber::parse(&phone).expect("phone"),
            script_id: ScriptId::parse("agent_faults").expect("script"),
            metadata: Metadata::parse(serde_json::json!({"n": n})).expect("metadata"),
            scheduled_at: None,
            expires_at: None,
            idempotency: None,
            callback_url: None,
            campaign_id: None,
            rules: Default::default(),
            timezone: None,
            window_opens_at: None,
        };
        match create_call(&stage.env.pool, &new, stage.config.max_attempts, CAP)
            .await
            .expect("create")
        {
            Created::New { call, enqueue } => {
                call_ids.push(call.id);
                if let Some(enqueue) = enqueue {
                    stage.env.queue.send_best_effort(&[enqueue]).await;
                }
            }
            other => panic!("expected a new call, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }

    // Until every call is terminal, or the deadline.
    let started = Instant::now();
    let deadline = Duration::from_secs(120 + settings.calls as u64);
    let open = loop {
        let open = stage
            .env
            .count("SELECT count(*) FROM calls WHERE ended_at IS NULL")
            .await;
        if open == 0 || started.elapsed() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = stop.send(true);
    let _ = event_source.await;
    let _ = player.await;
    let _ = sampler.await;
    let _ = flaky.await;
    let reclaimer_errors = reclaimer.await.unwrap_or_default();

    let placements = stage.fake.placements();
    let mut per_key: HashMap<Uuid, usize> = HashMap::new();
    for placement in &placements {
        if let Some(key) = placement.attempt_key {
            *per_key.entry(key).or_default() += 1;
        }
    }
    let keys_placed_twice = per_key.values().filter(|n| **n > 1).count();
    // Two provider calls to one phone live at once (a second call while the first rang).
    let mut by_phone: HashMap<&str, Vec<&Placement>> = HashMap::new();
    for placement in &placements {
        by_phone
            .entry(placement.to.as_str())
            .or_default()
            .push(placement);
    }
    let mut provider_phone_overlaps = 0;
    for calls in by_phone.values() {
        for (i, a) in calls.iter().enumerate() {
            for b in calls.iter().skip(i + 1) {
                let a_end = a.ended_at.unwrap_or(a.placed_at);
                let b_end = b.ended_at.unwrap_or(b.placed_at);
                if a.placed_at < b_end && b.placed_at < a_end {
                    provider_phone_overlaps += 1;
                }
            }
        }
    }
    let statuses = {
        let client = stage.env.pool.get().await.expect("pool");
        client
            .query(
                "SELECT status, count(*) FROM calls GROUP BY status ORDER BY status",
                &[],
            )
            .await
            .expect("statuses")
            .iter()
            .map(|row| format!("{}={}", row.get::<_, String>(0), row.get::<_, i64>(1)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let lost = call_ids.len() as i64
        - stage
            .env
            .count("SELECT count(*) FROM calls WHERE ended_at IS NOT NULL")
            .await;
    let double_dials = keys_placed_twice + provider_phone_overlaps;
    let max_in_progress = peaks.in_progress.load(Ordering::Relaxed);
    let provider_live = peaks.provider_live.load(Ordering::Relaxed);
    let db_phone_overlaps = peaks.phone_overlaps.load(Ordering::Relaxed);
    let forged_accepted = tally.forged_accepted.load(Ordering::Relaxed);
    println!(
        "provider_faults[{}]: calls={} lost={lost} double_dials={double_dials} max_in_progress={max_in_progress} \
         provider_max_live={provider_live} cap={CAP} phone_overlaps={db_phone_overlaps} forged_accepted={forged_accepted}",
        contract.kind(),
        call_ids.len()
    );
    println!(
        "provider_faults[{}]: seed={seed} statuses: {statuses}; placements={} lookups={} forged={} duplicates={} \
         lost_webhooks={} genuine_refused={} reclaimer_errors={reclaimer_errors} samples={} elapsed={:.1}s",
        contract.kind(),
        placements.len(),
        stage.fake.book().lookups.len(),
        tally.forged.load(Ordering::Relaxed),
        tally.duplicates.load(Ordering::Relaxed),
        tally.lost_webhooks.load(Ordering::Relaxed),
        tally.genuine_refused.load(Ordering::Relaxed),
        peaks.samples.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(open, 0, "calls still open at the deadline: {statuses}");
    assert_eq!(lost, 0);
    assert_eq!(keys_placed_twice, 0, "an attempt key placed twice");
    assert_eq!(
        provider_phone_overlaps, 0,
        "two provider calls to one phone at once"
    );
    assert!(
        max_in_progress <= u64::from(CAP),
        "{max_in_progress} in progress"
    );
    assert!(
        provider_live <= u64::from(CAP),
        "{provider_live} live at the provider"
    );
    assert_eq!(db_phone_overlaps, 0);
    assert_eq!(forged_accepted, 0);
    assert_eq!(tally.genuine_refused.load(Ordering::Relaxed), 0);
    assert!(
        peaks.samples.load(Ordering::Relaxed) > 10,
        "the sampler ran"
    );
    assert!(placements.len() >= call_ids.len() / 2, "calls were placed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retell_under_faults() {
    run(Arc::new(common::fakes::retell::Retell)).boxed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vapi_under_faults() {
    run(Arc::new(common::fakes::vapi::Vapi)).boxed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twilio_under_faults() {
    run(Arc::new(common::fakes::twilio::Twilio)).boxed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elevenlabs_under_faults() {
    run(Arc::new(common::fakes::elevenlabs::ElevenLabs))
        .boxed()
        .await;
}
