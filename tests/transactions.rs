//! The store's transactions (`ebra_shared::store::Transaction`): `START TRANSACTION` sent
//! with the first statement and `COMMIT` with the last must leave every statement in one
//! transaction, commit only what they should, and leave the connection clean when a
//! transaction is dropped or fails.

mod common;

use common::TestEnv;
use ebra_shared::store::{Executor, StoreError, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

/// Runs `sql` (no parameters) on `on`.
async fn run<E: Executor>(on: &E, sql: &str) -> Result<Vec<Row>, StoreError> {
    let statement = on.prepare_cached(sql).await?;
    on.query(&statement, &[]).await
}

/// A fresh database with a table for the test's rows, and a connection of its pool.
async fn stage() -> (TestEnv, deadpool_postgres::Client) {
    let env = TestEnv::new().await;
    env.execute("CREATE TABLE notes (n int PRIMARY KEY)").await;
    let client = env.pool.get().await.expect("pool");
    (env, client)
}

/// The notes another connection sees committed.
async fn committed_notes(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM notes").await
}

/// The current transaction's id, as a statement of `on` sees it.
async fn transaction_id<E: Executor>(on: &E) -> i64 {
    run(on, "SELECT txid_current()").await.expect("txid")[0].get(0)
}

/// The connection is outside any transaction: two statements run in two.
async fn assert_idle(client: &deadpool_postgres::Client) {
    assert_ne!(
        transaction_id(client).await,
        transaction_id(client).await,
        "the connection was left in a transaction"
    );
}

#[tokio::test]
async fn every_statement_runs_in_the_one_transaction_the_first_began() {
    let (env, mut client) = stage().await;
    let tx = Transaction::begin(&mut client);
    let first = transaction_id(&tx).await;
    run(&tx, "INSERT INTO notes VALUES (1)")
        .await
        .expect("insert");
    assert_eq!(
        transaction_id(&tx).await,
        first,
        "the first statement ran outside the transaction its START TRANSACTION began"
    );
    assert_eq!(committed_notes(&env).await, 0, "seen before the commit");
    tx.commit().await.expect("commit");
    assert_eq!(committed_notes(&env).await, 1);
    assert_idle(&client).await;
}

#[tokio::test]
async fn a_dropped_transaction_is_rolled_back_and_its_connection_is_clean() {
    let (env, mut client) = stage().await;
    {
        let tx = Transaction::begin(&mut client);
        run(&tx, "INSERT INTO notes VALUES (1)")
            .await
            .expect("insert");
    }
    assert_idle(&client).await;
    assert_eq!(
        committed_notes(&env).await,
        0,
        "a dropped transaction committed"
    );

    // A first statement that fails: the transaction it began is rolled back too.
    {
        let tx = Transaction::begin(&mut client);
        let error = run(&tx, "SELECT 1/0").await.expect_err("division by zero");
        assert_eq!(error.sql_state(), Some(&SqlState::DIVISION_BY_ZERO));
    }
    assert_idle(&client).await;
    run(&client, "INSERT INTO notes VALUES (2)")
        .await
        .expect("the connection works after a failed transaction");
    assert_eq!(committed_notes(&env).await, 1);
}

#[tokio::test]
async fn the_commit_sent_with_the_last_statement_commits_everything_once() {
    let (env, mut client) = stage().await;
    let tx = Transaction::begin(&mut client);
    run(&tx, "INSERT INTO notes VALUES (1)")
        .await
        .expect("insert");
    tx.commit_with_next_statement();
    run(&tx, "INSERT INTO notes VALUES (2)")
        .await
        .expect("insert");
    assert_eq!(
        committed_notes(&env).await,
        2,
        "the last statement's COMMIT did not commit the transaction"
    );
    // A statement after it would run outside the transaction: it is refused, unsent.
    let after = run(&tx, "INSERT INTO notes VALUES (3)").await;
    assert!(
        matches!(after, Err(StoreError::AfterCommit)),
        "a statement after the commit: {after:?}"
    );
    tx.commit().await.expect("nothing left to commit");
    assert_eq!(committed_notes(&env).await, 2);
    assert_idle(&client).await;
}

#[tokio::test]
async fn a_last_statement_that_fails_rolls_back_the_whole_transaction() {
    let (env, mut client) = stage().await;
    env.execute("INSERT INTO notes VALUES (9)").await;
    let tx = Transaction::begin(&mut client);
    run(&tx, "INSERT INTO notes VALUES (1)")
        .await
        .expect("insert");
    tx.commit_with_next_statement();
    let error = run(&tx, "INSERT INTO notes VALUES (9)")
        .await
        .expect_err("a duplicate key");
    assert_eq!(
        error.sql_state(),
        Some(&SqlState::UNIQUE_VIOLATION),
        "the statement's error, not the commit's"
    );
    drop(tx);
    assert_eq!(
        committed_notes(&env).await,
        1,
        "the failed transaction's first insert was committed"
    );
    assert_idle(&client).await;
}

#[tokio::test]
async fn a_sole_statement_and_an_empty_transaction_commit_as_they_should() {
    let (env, mut client) = stage().await;
    let tx = Transaction::begin(&mut client);
    tx.commit().await.expect("an empty transaction commits");
    assert_idle(&client).await;

    // Armed before any statement: the one statement is the whole transaction.
    let tx = Transaction::begin(&mut client);
    tx.commit_with_next_statement();
    run(&tx, "INSERT INTO notes VALUES (1)")
        .await
        .expect("insert");
    assert_eq!(committed_notes(&env).await, 1);
    assert!(matches!(
        run(&tx, "INSERT INTO notes VALUES (2)").await,
        Err(StoreError::AfterCommit)
    ));
    tx.commit().await.expect("nothing left to commit");

    // Armed, but no statement came: the commit still commits what ran.
    let tx = Transaction::begin(&mut client);
    run(&tx, "INSERT INTO notes VALUES (3)")
        .await
        .expect("insert");
    tx.commit_with_next_statement();
    tx.commit().await.expect("commit");
    assert_eq!(committed_notes(&env).await, 2);
    assert_idle(&client).await;
}
