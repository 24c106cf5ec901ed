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

#[tokio::test]
async fn every_column_rule_refuses_what_it_refused_before() {
    let env = TestEnv::new().await;
    let call_id = rows(&env).await;
    let of_call = format!("WHERE id = '{call_id}'");
    let of_attempt = format!("WHERE call_id = '{call_id}'");
    // (table, assignment, the domain that must refuse it)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("calls", "phone = '555'", of_call.as_str(), "e164_phone"),
        ("calls", "phone = '+0123'", of_call.as_str(), "e164_phone"),
        ("calls", "script_id = ''", of_call.as_str(), "script_id"),
        (
            "calls",
            "script_id = repeat('s', 129)",
            of_call.as_str(),
            "script_id",
        ),
        ("calls", "metadata = '[]'", of_call.as_str(), "json_object"),
        ("calls", "status = 'DONE'", of_call.as_str(), "call_status"),
        (
            "calls",
            "attempts = -1",
            of_call.as_str(),
            "nonnegative_int",
        ),
        (
            "calls",
            "max_attempts = 0",
            of_call.as_str(),
            "positive_int",
        ),
        (
            "calls",
            "outcome = 'MAYBE'",
            of_call.as_str(),
            "call_outcome",
        ),
        (
            "calls",
            "outcome = 'LIMITED'",
            of_call.as_str(),
            "call_outcome",
        ),
        (
            "calls",
            "duration_sec = -1",
            of_call.as_str(),
            "nonnegative_int",
        ),
        (
            "calls",
            "idempotency_key = ''",
            of_call.as_str(),
            "external_id",
        ),
        (
            "calls",
            "sequence = -1",
            of_call.as_str(),
            "nonnegative_bigint",
        ),
        (
            "calls",
            "result = '\"done\"'",
            of_call.as_str(),
            "json_object",
        ),
        (
            "calls",
            "callback_url = ''",
            of_call.as_str(),
            "callback_url",
        ),
        (
            "calls",
            "callback_url = repeat('u', 2049)",
            of_call.as_str(),
            "callback_url",
        ),
        (
            "calls",
            "calling_window = '[1]'",
            of_call.as_str(),
            "json_object",
        ),
        (
            "calls",
            "timezone = repeat('z', 65)",
            of_call.as_str(),
            "time_zone_name",
        ),
        (
            "call_attempts",
            "attempt_no = 0",
            of_attempt.as_str(),
            "positive_int",
        ),
        (
            "call_attempts",
            "dial_state = 'RINGING'",
            of_attempt.as_str(),
            "dial_state",
        ),
        (
            "call_attempts",
            "provider_call_id = repeat('p', 256)",
            of_attempt.as_str(),
            "external_id",
        ),
        (
            "call_attempts",
            "outcome = 'MAYBE'",
            of_attempt.as_str(),
            "report_outcome",
        ),
        (
            "call_attempts",
            "duration_sec = -5",
            of_attempt.as_str(),
            "nonnegative_int",
        ),
        (
            "call_attempts",
            "end_reason = repeat('r', 256)",
            of_attempt.as_str(),
            "end_reason",
        ),
        (
            "provider_webhooks",
            "webhook_id = ''",
            "WHERE webhook_id = 'wh-1'",
            "external_id",
        ),
        (
            "provider_webhooks",
            "status = 'MAYBE'",
            "WHERE webhook_id = 'wh-1'",
            "report_outcome",
        ),
        (
            "provider_webhooks",
            "duration_sec = -1",
            "WHERE webhook_id = 'wh-1'",
            "nonnegative_int",
        ),
        (
            "provider_webhooks",
            "result = '1'",
            "WHERE webhook_id = 'wh-1'",
            "json_object",
        ),
        (
            "provider_webhooks",
            "provider = 'acme'",
            "WHERE webhook_id = 'wh-1'",
            "provider_name",
        ),
        (
            "provider_webhooks",
            "end_reason = repeat('r', 256)",
            "WHERE webhook_id = 'wh-1'",
            "end_reason",
        ),
        (
            "call_events",
            "type = 'call.rang'",
            of_attempt.as_str(),
            "event_type",
        ),
        (
            "call_events",
            "data = 'null'",
            of_attempt.as_str(),
            "json_object",
        ),
        (
            "call_events",
            "sequence = 0",
            of_attempt.as_str(),
            "positive_bigint",
        ),
        (
            "call_slots",
            "slot_no = 10001",
            of_attempt.as_str(),
            "slot_number",
        ),
    ];
    let client = env.pool.get().await.expect("pool");
    let before = snapshot(&client).await;
    let mut refused = Vec::new();
    for (table, assignment, filter, domain) in cases {
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
        refused.push((sql.clone(), outcome, format!("refused by {domain}")));
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
    client
        .query_one(
            "SELECT concat_ws(' | ', \
                    (SELECT json_agg(c ORDER BY c.id)::text FROM calls c), \
                    (SELECT json_agg(a ORDER BY a.id)::text FROM call_attempts a), \
                    (SELECT json_agg(w ORDER BY w.webhook_id)::text FROM provider_webhooks w), \
                    (SELECT json_agg(e ORDER BY e.id)::text FROM call_events e), \
                    (SELECT json_agg(s ORDER BY s.slot_no)::text FROM call_slots s))",
            &[],
        )
        .await
        .expect("reading the rows")
        .get(0)
}
