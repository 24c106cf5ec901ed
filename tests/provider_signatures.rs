//! Webhook signatures checked against the providers' own SDKs: every case in
//! `tests/fixtures/provider_signatures.json` was signed and judged by Retell's, ElevenLabs'
//! or Twilio's official Python SDK (`scripts/provider-vectors`, which CI runs with
//! `--check`), at a frozen clock recorded in the case. Ebra's verifier, given the same
//! request and clock, must:
//! - refuse every request the SDK refuses;
//! - accept every request the SDK accepts, except the few the fixture marks as SDK quirks
//!   (an unbounded future timestamp, a duplicated parameter counted once...), where a
//!   stricter verdict is allowed.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::DateTime;
use ebra_shared::provider::elevenlabs::ElevenLabsWebhooks;
use ebra_shared::provider::retell::RetellWebhooks;
use ebra_shared::provider::twilio::TwilioWebhooks;
use ebra_shared::provider::{InboundWebhook, WebhookScheme};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    sdk_versions: serde_json::Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    provider: String,
    name: String,
    valid: bool,
    #[serde(default)]
    quirk: bool,
    now: Now,
    secret: String,
    headers: std::collections::BTreeMap<String, String>,
    body: String,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Deserialize)]
struct Now {
    unix_ms: i64,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/provider_signatures.json"
    );
    let raw = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path} is missing ({e}); run scripts/provider-vectors"));
    serde_json::from_str(&raw).expect("the fixture's shape")
}

fn scheme(case: &Case) -> Arc<dyn WebhookScheme> {
    match case.provider.as_str() {
        "retell" => Arc::new(RetellWebhooks::new(case.secret.clone())),
        "elevenlabs" => Arc::new(ElevenLabsWebhooks::new(case.secret.clone())),
        "twilio" => Arc::new(TwilioWebhooks::new(vec![case.secret.clone()])),
        other => panic!("a case for an unknown provider {other:?}"),
    }
}

/// The request's headers; `None` when one of them could not travel over HTTP at all (a
/// control character): such a request never reaches the verifier.
fn headers(case: &Case) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in &case.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_str(value).ok()?;
        map.append(name, value);
    }
    Some(map)
}

#[test]
fn ebra_agrees_with_the_provider_sdks() {
    let fixture = fixture();
    assert!(
        fixture.cases.len() >= 100,
        "the fixture holds {} cases",
        fixture.cases.len()
    );
    let mut checked = std::collections::BTreeMap::<&str, (u32, u32)>::new();
    let mut stricter = Vec::new();
    let mut disagreements = Vec::new();
    for case in &fixture.cases {
        let ours = match headers(case) {
            None => false,
            Some(headers) => {
                let request = InboundWebhook {
                    url: case
                        .url
                        .as_deref()
                        .unwrap_or("https://hooks.example.com/callbacks"),
                    headers: &headers,
                    body: case.body.as_bytes(),
                };
                let now = DateTime::from_timestamp_millis(case.now.unix_ms).expect("a clock");
                scheme(case).verify(&request, now).is_ok()
            }
        };
        let tally = checked.entry(case.provider.as_str()).or_default();
        if case.valid {
            tally.0 += 1;
        } else {
            tally.1 += 1;
        }
        match (case.valid, ours) {
            (sdk, ebra) if sdk == ebra => {}
            (true, false) if case.quirk => {
                stricter.push(format!("{}/{}", case.provider, case.name))
            }
            (sdk, ebra) => disagreements.push(format!(
                "{}/{}: the SDK says {}, Ebra says {}",
                case.provider,
                case.name,
                if sdk { "valid" } else { "forged" },
                if ebra { "valid" } else { "forged" }
            )),
        }
    }
    println!("SDKs: {}", fixture.sdk_versions);
    for (provider, (valid, forged)) in &checked {
        println!(
            "{provider}: {valid} valid and {forged} forged requests judged as the SDK judges them"
        );
    }
    println!("stricter than the SDK, by design: {stricter:?}");
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    assert_eq!(
        checked.len(),
        3,
        "cases for every provider with an SDK verifier"
    );
}
