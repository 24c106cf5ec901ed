//! The schema's column rules (migration V13's domains): every value a column's rule refused
//! before is refused now, by the column's domain, with SQLSTATE 23514 (check_violation), and
//! the row is left as it was.

mod common;

use common::TestEnv;
use tokio_postgres::error::SqlState;

/// A row of each table every call writes: a claimed call (its attempt, slot and events) and a
/// stored provider report.
async fn rows(env: &TestEnv) -> uuid::Uuid {
    let config = env.config(&[]);
    let call_id = env.pending_call(&config, "+14155550100", None).await;
    env.claim(&config, call_id).await;
    env.execute(
        "INSERT INTO provider_webhooks (webhook_id, provider_call_id, status, provider) \
         VALUES ('wh-1', 'pc-1', 'COMPLETED', 'http')",
    )
    .await;
    call_id
}

/// An assignment, and the domain that must refuse it.
type Refusal = (&'static str, &'static str);

#[tokio::test]
async fn every_column_rule_refuses_what_it_refused_before() {
    let env = TestEnv::new().await;
    let call_id = rows(&env).await;
    let of_call = format!("WHERE id = '{call_id}'");
    let of_attempt = format!("WHERE call_id = '{call_id}'");
    // Per table, the rows written and, for each assignment, the domain that must refuse it.
    let webhook = "WHERE webhook_id = 'wh-1'";
    let cases: &[(&str, &str, &[Refusal])] = &[
        (
            "calls",
            &of_call,
            &[
                ("phone = '555'", "e164_phone"),
                ("phone = '+0123'", "e164_phone"),
                ("script_id = ''", "script_id"),
                ("script_id = repeat('s', 129)", "script_id"),
                ("metadata = '[]'", "json_object"),
                ("status = 'DONE'", "call_status"),
                ("attempts = -1", "nonnegative_int"),
                ("max_attempts = 0", "positive_int"),
                ("outcome = 'MAYBE'", "call_outcome"),
                ("outcome = 'LIMITED'", "call_outcome"),
                ("duration_sec = -1", "nonnegative_int"),
                ("idempotency_key = ''", "external_id"),
                ("sequence = -1", "nonnegative_bigint"),
                ("result = '\"done\"'", "json_object"),
                ("callback_url = ''", "callback_url"),
                ("callback_url = repeat('u', 2049)", "callback_url"),
                ("calling_window = '[1]'", "json_object"),
                ("timezone = repeat('z', 65)", "time_zone_name"),
            ],
        ),
        (
            "call_attempts",
            &of_attempt,
            &[
                ("attempt_no = 0", "positive_int"),
                ("dial_state = 'RINGING'", "dial_state"),
                ("provider_call_id = repeat('p', 256)", "external_id"),
                ("outcome = 'MAYBE'", "report_outcome"),
                ("duration_sec = -5", "nonnegative_int"),
                ("end_reason = repeat('r', 256)", "end_reason"),
            ],
        ),
        (
            "provider_webhooks",
            webhook,
            &[
                ("webhook_id = ''", "external_id"),
                ("status = 'MAYBE'", "report_outcome"),
                ("duration_sec = -1", "nonnegative_int"),
                ("result = '1'", "json_object"),
                ("provider = 'acme'", "provider_name"),
                ("end_reason = repeat('r', 256)", "end_reason"),
            ],
        ),
        (
            "call_events",
            &of_attempt,
            &[
                ("type = 'call.rang'", "event_type"),
                ("data = 'null'", "json_object"),
                ("sequence = 0", "positive_bigint"),
            ],
        ),
        (
            "call_slots",
            &of_attempt,
            &[("slot_no = 10001", "slot_number")],
        ),
    ];
    let client = env.pool.get().await.expect("pool");
    let before = snapshot(&client).await;
    let mut refused = Vec::new();
    for (table, filter, assignments) in cases {
        for (assignment, domain) in *assignments {
            let sql = format!("UPDATE {table} SET {assignment} {filter}");
            let outcome = match client.execute(sql.as_str(), &[]).await {
                Ok(rows) => format!("accepted ({rows} rows)"),
                Err(error) => match error.as_db_error() {
                    Some(db) if error.code() == Some(&SqlState::CHECK_VIOLATION) => {
                        format!("refused by {}", db.datatype().unwrap_or("a table CHECK"))
                    }
                    _ => format!("failed otherwise: {error}"),
                },
            };
            refused.push((sql, outcome, format!("refused by {domain}")));
        }
    }
    let wrong: Vec<_> = refused
        .iter()
        .filter(|(_, outcome, expected)| outcome != expected)
        .collect();
    assert!(wrong.is_empty(), "rules not held as before V13: {wrong:#?}");
    assert_eq!(
        snapshot(&client).await,
        before,
        "a refused write changed a row"
    );

    // NULL passes a domain's rule, as it passed the column's CHECK.
    client
        .execute(
            format!(
                "UPDATE calls SET outcome = NULL, result = NULL, callback_url = NULL {of_call}"
            )
            .as_str(),
            &[],
        )
        .await
        .expect("NULL passes the nullable columns' rules");
}

/// Every row of the tables above, as text.
async fn snapshot(client: &tokio_postgres::Client) -> String {
    common::rows_as_json(
        client,
        &[
            ("calls t", "t.id"),
            ("call_attempts t", "t.id"),
            ("provider_webhooks t", "t.webhook_id"),
            ("call_events t", "t.id"),
            ("call_slots t", "t.slot_no"),
        ],
    )
    .await
}
