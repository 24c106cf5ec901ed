//! Ebra's transactions: `START TRANSACTION` travels with the transaction's first statement,
//! and `COMMIT` may travel with its last, instead of each taking a round trip of its own.
//!
//! Postgres runs what one connection sends strictly in order, each statement with a
//! snapshot taken when it starts, so sending `START TRANSACTION` together with the first
//! statement (pipelining: tokio-postgres sends a request on its first poll, before any
//! earlier one is answered) changes nothing the transaction sees or locks; it saves the
//! wait for the first answer. The same holds for the last statement and `COMMIT`: should
//! the statement fail, Postgres ends the aborted transaction at the `COMMIT` with a
//! rollback, and the statement's error is what the caller gets.
//!
//! A transaction dropped before its `COMMIT` was sent (an error returned with `?`, a
//! future cancelled) is rolled back: its `ROLLBACK` is sent, not awaited, ahead of
//! anything the connection runs next, as tokio-postgres does for its own transactions.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use deadpool_postgres::Client;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::{StoreError, StoreResult};

/// What runs the store's statements: a pooled connection (each statement a transaction of
/// its own) or a [`Transaction`]. The store's `query`, `execute`, ... helpers take either.
pub trait Executor: Sync {
    fn prepare_cached(&self, sql: &str) -> impl Future<Output = StoreResult<Statement>> + Send;

    fn query(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = StoreResult<Vec<Row>>> + Send;

    fn query_opt(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = StoreResult<Option<Row>>> + Send;

    fn query_one(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = StoreResult<Row>> + Send;

    fn execute(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = StoreResult<u64>> + Send;
}

impl Executor for Client {
    async fn prepare_cached(&self, sql: &str) -> StoreResult<Statement> {
        Ok(deadpool_postgres::ClientWrapper::prepare_cached(self, sql).await?)
    }

    async fn query(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        Ok(tokio_postgres::Client::query(self, statement, params).await?)
    }

    async fn query_opt(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Option<Row>> {
        Ok(tokio_postgres::Client::query_opt(self, statement, params).await?)
    }

    async fn query_one(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Row> {
        Ok(tokio_postgres::Client::query_one(self, statement, params).await?)
    }

    async fn execute(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<u64> {
        Ok(tokio_postgres::Client::execute(self, statement, params).await?)
    }
}

/// Where a [`Transaction`] is, as far as the connection has been told.
const NOT_BEGUN: u8 = 0;
const BEGUN: u8 = 1;
/// Begun, and the next statement is the last: `COMMIT` goes right behind it.
const ENDING: u8 = 2;
/// `COMMIT` sent (or nothing to commit): no statement may follow.
const ENDED: u8 = 3;
/// Not begun, and the next statement is the last: it runs on its own, which is the same
/// transaction.
const SOLE: u8 = 4;

/// A transaction on a pooled connection, which it holds until it ends. Nothing is sent
/// when it begins: its `START TRANSACTION` goes with its first statement. Its statements
/// run one after another, each awaited before the next is made (the store never joins two
/// on one transaction): which one is first or last is decided as each is made.
pub struct Transaction<'a> {
    client: &'a mut Client,
    state: AtomicU8,
}

impl<'a> Transaction<'a> {
    /// Begins a transaction on `client`.
    pub fn begin(client: &'a mut Client) -> Self {
        Transaction {
            client,
            state: AtomicU8::new(NOT_BEGUN),
        }
    }

    /// Has the `COMMIT` sent with the next statement, which must be the transaction's last
    /// (one that follows it fails, as it would run outside the transaction). The caller
    /// still ends with [`Transaction::commit`], which then sends nothing; when no statement
    /// followed after all, it commits as usual.
    pub fn commit_with_next_statement(&self) {
        let armed = match self.state.load(Ordering::Acquire) {
            NOT_BEGUN => SOLE,
            BEGUN => ENDING,
            _ => return,
        };
        self.state.store(armed, Ordering::Release);
    }

    /// Commits, unless the `COMMIT` already went with the last statement. A transaction
    /// that ran no statement has nothing to commit.
    pub async fn commit(self) -> StoreResult<()> {
        match self.state.swap(ENDED, Ordering::AcqRel) {
            // Begun: by statements only, or armed for a last one that never came.
            BEGUN | ENDING => Ok(self.client.batch_execute("COMMIT").await?),
            // Nothing was sent, or the COMMIT already went with the last statement.
            _ => Ok(()),
        }
    }

    /// Runs `statement`, an answer to a statement built on this transaction's connection
    /// but not yet polled: with `START TRANSACTION` before it when it is the first, with
    /// `COMMIT` after it when [`Transaction::commit_with_next_statement`] asked for it.
    async fn run<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> StoreResult<T> {
        match self.state.load(Ordering::Acquire) {
            NOT_BEGUN => {
                self.state.store(BEGUN, Ordering::Release);
                let begin = self.client.batch_execute("START TRANSACTION");
                let (begun, answer) = sent_in_order(begin, statement).await;
                begun?;
                Ok(answer?)
            }
            BEGUN => Ok(statement.await?),
            SOLE => {
                self.state.store(ENDED, Ordering::Release);
                Ok(statement.await?)
            }
            ENDING => {
                self.state.store(ENDED, Ordering::Release);
                let commit = self.client.batch_execute("COMMIT");
                let (answer, committed) = sent_in_order(statement, commit).await;
                // A failed statement's error first: the COMMIT then rolled back.
                let answer = answer?;
                committed?;
                Ok(answer)
            }
            _ => Err(StoreError::AfterCommit),
        }
    }
}

impl Executor for Transaction<'_> {
    async fn prepare_cached(&self, sql: &str) -> StoreResult<Statement> {
        Ok(deadpool_postgres::ClientWrapper::prepare_cached(self.client, sql).await?)
    }

    async fn query(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<Row>> {
        self.run(tokio_postgres::Client::query(
            self.client,
            statement,
            params,
        ))
        .await
    }

    async fn query_opt(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Option<Row>> {
        self.run(tokio_postgres::Client::query_opt(
            self.client,
            statement,
            params,
        ))
        .await
    }

    async fn query_one(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Row> {
        self.run(tokio_postgres::Client::query_one(
            self.client,
            statement,
            params,
        ))
        .await
    }

    async fn execute(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<u64> {
        self.run(tokio_postgres::Client::execute(
            self.client,
            statement,
            params,
        ))
        .await
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if matches!(*self.state.get_mut(), BEGUN | ENDING) {
            // Sent on its first poll; the answer is not awaited (the connection reads past
            // an answer nobody waits for).
            let rollback = pin!(self.client.batch_execute("ROLLBACK"));
            let _ = poll_once(rollback);
        }
    }
}

/// Awaits two requests on one connection, `first` sent before `second`: both are sent
/// before either answer is awaited.
async fn sent_in_order<A: Future, B: Future>(first: A, second: B) -> (A::Output, B::Output) {
    let mut first = pin!(first);
    // A tokio-postgres request is sent on its first poll, before its answer is awaited.
    let early = poll_once(first.as_mut());
    match early {
        Poll::Ready(first) => (first, second.await),
        Poll::Pending => futures::future::join(first, second).await,
    }
}

/// Polls `future` once, with a waker that does nothing.
fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}
