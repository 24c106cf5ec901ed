//! A provider that lives in the process: it answers dials like the real one and, after a
//! while, posts the outcome to the webhook, signed like a real provider. It is what makes
//! the local stack a working demo. Its knobs are environment variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SIM_CALL_SECONDS` | how long a simulated call lasts before its webhook | `3` |
//! | `SIM_OUTCOMES` | weights of the outcomes, `COMPLETED=85,FAILED=5,BUSY=5,NO_ANSWER=5` | that |
//! | `SIM_FAULT_5XX_PERCENT` | share of dials answered 503 (not placed) | `0` |
//! | `SIM_FAULT_TIMEOUT_PERCENT` | share of dials placed but answered too late (a timeout) | `0` |
//!
//! Like a real provider it honours `Idempotency-Key`: a repeated key returns the first
//! call's id and places nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt as _;
use rand::Rng as _;
use uuid::Uuid;

use super::{CallLookup, Dial, DialResult, OutcomeReport, Provider, ProviderKind, StatusQuery};
use crate::domain::CallOutcome;
use crate::webhook_signature::WebhookSecret;

#[derive(Debug, Clone)]
pub struct SimulatorSettings {
    pub call_duration: Duration,
    pub outcome_weights: Vec<(CallOutcome, u32)>,
    pub fault_5xx_percent: u32,
    pub fault_timeout_percent: u32,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        Self {
            call_duration: Duration::from_secs(3),
            outcome_weights: vec![
                (CallOutcome::Completed, 85),
                (CallOutcome::Failed, 5),
                (CallOutcome::Busy, 5),
                (CallOutcome::NoAnswer, 5),
            ],
            fault_5xx_percent: 0,
            fault_timeout_percent: 0,
        }
    }
}

impl SimulatorSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let mut settings = Self::default();
        if let Some(raw) = var("SIM_CALL_SECONDS") {
            let seconds: f64 = raw
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && (0.0..=3600.0).contains(s))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "configuration: SIM_CALL_SECONDS must be 0 to 3600, got {raw:?}"
                    )
                })?;
            settings.call_duration = Duration::from_secs_f64(seconds);
        }
        if let Some(raw) = var("SIM_OUTCOMES") {
            settings.outcome_weights = parse_weights(&raw)?;
        }
        if let Some(raw) = var("SIM_FAULT_5XX_PERCENT") {
            settings.fault_5xx_percent = percent("SIM_FAULT_5XX_PERCENT", &raw)?;
        }
        if let Some(raw) = var("SIM_FAULT_TIMEOUT_PERCENT") {
            settings.fault_timeout_percent = percent("SIM_FAULT_TIMEOUT_PERCENT", &raw)?;
        }
        Ok(settings)
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn percent(name: &str, raw: &str) -> anyhow::Result<u32> {
    raw.trim()
        .parse()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| anyhow::anyhow!("configuration: {name} must be 0 to 100, got {raw:?}"))
}

fn parse_weights(raw: &str) -> anyhow::Result<Vec<(CallOutcome, u32)>> {
    let weights: Vec<(CallOutcome, u32)> = raw
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|pair| {
            let (name, weight) = pair.split_once('=').unwrap_or((pair, "1"));
            let outcome: CallOutcome = name.trim().parse().map_err(|_| {
                anyhow::anyhow!("configuration: SIM_OUTCOMES has unknown outcome {name:?}")
            })?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "configuration: SIM_OUTCOMES weight for {name} must be a whole number"
                )
            })?;
            Ok((outcome, weight))
        })
        .collect::<anyhow::Result<_>>()?;
    if weights.iter().map(|(_, w)| w).sum::<u32>() == 0 {
        anyhow::bail!("configuration: SIM_OUTCOMES needs at least one positive weight");
    }
    Ok(weights)
}

pub struct Simulator {
    settings: SimulatorSettings,
    secret: WebhookSecret,
    http: reqwest::Client,
    placed: Arc<Mutex<HashMap<Uuid, String>>>,
}

impl Simulator {
    pub fn new(settings: SimulatorSettings, secret: WebhookSecret) -> anyhow::Result<Self> {
        Ok(Self {
            settings,
            secret,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            placed: Arc::default(),
        })
    }

    fn pick_outcome(&self) -> CallOutcome {
        let total: u32 = self.settings.outcome_weights.iter().map(|(_, w)| w).sum();
        let mut roll = rand::rng().random_range(0..total.max(1));
        for (outcome, weight) in &self.settings.outcome_weights {
            if roll < *weight {
                return *outcome;
            }
            roll -= weight;
        }
        CallOutcome::Completed
    }

    async fn simulate(&self, dial: &Dial) -> DialResult {
        let roll = rand::rng().random_range(0..100u32);
        if roll < self.settings.fault_5xx_percent {
            return DialResult::Retryable {
                error: "provider error 503 Service Unavailable: simulated".into(),
                retry_after: None,
                maybe_placed: false,
            };
        }
        let existing = self
            .placed
            .lock()
            .ok()
            .and_then(|p| p.get(&dial.idempotency_key).cloned());
        if let Some(provider_call_id) = existing {
            return DialResult::Accepted { provider_call_id };
        }
        let provider_call_id = format!("sim_{}", Uuid::new_v4().simple());
        if let Ok(mut placed) = self.placed.lock() {
            placed.insert(dial.idempotency_key, provider_call_id.clone());
        }
        self.schedule_callback(
            dial.webhook_url.clone(),
            provider_call_id.clone(),
            dial.script_id.clone(),
        );
        if roll < self.settings.fault_5xx_percent + self.settings.fault_timeout_percent {
            // Placed, but the answer is lost: the worker must retry with the same key.
            return DialResult::Retryable {
                error: "provider unreachable: simulated timeout".into(),
                retry_after: None,
                maybe_placed: true,
            };
        }
        DialResult::Accepted { provider_call_id }
    }

    fn schedule_callback(&self, webhook_url: String, provider_call_id: String, script_id: String) {
        let outcome = self.pick_outcome();
        let duration = self.settings.call_duration;
        let secret = self.secret.clone();
        let http = self.http.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let report = OutcomeReport {
                call_id: provider_call_id.clone(),
                status: outcome,
                duration_sec: duration.as_secs() as u32,
                completed_at: chrono::Utc::now(),
                result: Some(simulated_result(outcome, &script_id)),
            };
            let Ok(body) = serde_json::to_vec(&report) else {
                return;
            };
            let webhook_id = format!("msg_{}", Uuid::new_v4().simple());
            // Providers retry webhooks that did not get a 2xx.
            for attempt in 0..5u32 {
                let timestamp = chrono::Utc::now().timestamp();
                let signature = secret.sign(&webhook_id, timestamp, &body);
                let sent = http
                    .post(&webhook_url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &webhook_id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => return,
                    Ok(response) => {
                        tracing::warn!(provider_call_id, status = %response.status(), "simulator webhook refused")
                    }
                    Err(error) => {
                        tracing::warn!(provider_call_id, %error, "simulator webhook failed")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
            }
        });
    }
}

/// What a real provider reports beyond the outcome, simulated: a conversation for an
/// answered call, the end reason for every one.
fn simulated_result(outcome: CallOutcome, script_id: &str) -> crate::call_result::CallResult {
    let result = crate::call_result::CallResult::default().with_end_reason(Some(&format!(
        "simulated_{}",
        outcome.as_str().to_ascii_lowercase()
    )));
    if outcome != CallOutcome::Completed {
        return result;
    }
    result
        .with_summary(Some(&format!(
            "Simulated call: the callee answered and the agent ran script {script_id}."
        )))
        .with_transcript(Some(
            "agent: Hello, this is a simulated call from Ebra.\nuser: Hi! Yes, that works for me.\nagent: Great, thank you. Goodbye.",
        ))
        .with_analysis(Some(&serde_json::json!({"simulated": true, "callSuccessful": true})))
}

impl Provider for Simulator {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Simulator
    }

    /// Like the generic contract, it honours the idempotency key.
    fn deduplicates_by_key(&self) -> bool {
        true
    }

    fn place<'a>(&'a self, dial: &'a Dial) -> BoxFuture<'a, DialResult> {
        self.simulate(dial).boxed()
    }

    fn status<'a>(&'a self, _query: &'a StatusQuery) -> BoxFuture<'a, CallLookup> {
        async { CallLookup::Unsupported }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights() {
        let w = parse_weights("COMPLETED=1,BUSY=3").unwrap();
        assert_eq!(w, vec![(CallOutcome::Completed, 1), (CallOutcome::Busy, 3)]);
        assert!(parse_weights("MAYBE=1").is_err());
        assert!(parse_weights("COMPLETED=0").is_err());
    }
}
