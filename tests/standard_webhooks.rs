//! Ebra's outbound events are signed the Standard Webhooks way; every case in
//! `tests/fixtures/standard_webhooks.json` was signed or judged by the official library
//! (PyPI `standardwebhooks`, `scripts/standardwebhooks-vectors`, which CI runs with
//! `--check`) at a frozen clock. Ebra must:
//! - sign exactly as the library does (one signature per secret, the current one first,
//!   during a rotation), so that any receiver using the library accepts its deliveries;
//! - verify as the library does (its test receivers use this verifier), except where a case
//!   is marked a quirk of the library, where Ebra's verdict may only be stricter.

use ebra_shared::webhook_signature::WebhookSecret;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    library: serde_json::Value,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Case {
    Sign {
        name: String,
        secrets: Vec<String>,
        msg_id: String,
        timestamp: i64,
        body: String,
        signature: String,
    },
    Verify {
        name: String,
        secret: String,
        now: i64,
        headers: std::collections::BTreeMap<String, String>,
        body: String,
        valid: bool,
        library_says: String,
        #[serde(default)]
        quirk: bool,
    },
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/standard_webhooks.json"
    );
    let raw = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("{path} is missing ({e}); run scripts/standardwebhooks-vectors")
    });
    serde_json::from_str(&raw).expect("the fixture's shape")
}

#[test]
fn events_are_signed_as_the_official_library_signs_them() {
    let fixture = fixture();
    assert!(fixture.library["standardwebhooks"].is_string());
    let mut signed = 0;
    for case in &fixture.cases {
        let Case::Sign {
            name,
            secrets,
            msg_id,
            timestamp,
            body,
            signature,
        } = case
        else {
            continue;
        };
        // The notifier signs with the endpoint's secret, then its previous one while it
        // still signs: a WebhookSecret of both, in that order.
        let secret = WebhookSecret::parse(&secrets.join(" ")).expect("the case's secrets");
        assert_eq!(
            &secret.sign_with_every_key(msg_id, *timestamp, body.as_bytes()),
            signature,
            "{name}"
        );
        signed += 1;
    }
    assert!(signed >= 4, "{signed} signing cases");
}

#[test]
fn deliveries_are_verified_as_the_official_library_verifies_them() {
    let fixture = fixture();
    let mut judged = 0;
    for case in &fixture.cases {
        let Case::Verify {
            name,
            secret,
            now,
            headers,
            body,
            valid,
            library_says,
            quirk,
        } = case
        else {
            continue;
        };
        let secret = WebhookSecret::parse(secret).expect("the case's secret");
        let ours = secret
            .verify(
                headers.get("webhook-id").map(String::as_str),
                headers.get("webhook-timestamp").map(String::as_str),
                headers.get("webhook-signature").map(String::as_str),
                body.as_bytes(),
                *now,
            )
            .is_ok();
        if *quirk {
            assert!(
                !ours,
                "{name}: a quirk of the library ({library_says}); Ebra refuses it"
            );
        } else {
            assert_eq!(ours, *valid, "{name}: the library says {library_says}");
        }
        judged += 1;
    }
    assert!(judged >= 15, "{judged} verification cases");
}
