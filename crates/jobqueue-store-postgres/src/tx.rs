//! How every call runs: in a task of its own, on a pooled connection, in
//! one transaction; and how a transaction appends its events.
//!
//! # A dropped call never leaves half a transaction
//!
//! [`Inner::write`] and [`Inner::run`] spawn the call's work onto the
//! store's runtime and await it. If the caller's future is dropped (a
//! timeout, a `select!`, a shutdown), the task still runs to its end: it
//! commits and publishes its events, or rolls back. The connection goes back
//! to the pool only with no transaction open; one whose transaction state is
//! unknown (an error in `COMMIT`, a lost socket) is dropped by the pool's
//! recycle check, and PostgreSQL rolls back whatever it had open.
//!
//! # Sequence numbers: the counter row
//!
//! Events are numbered by one counter row (`store_state.last_seq`). A
//! transaction that appends events does all its other work first; its last
//! statement adds the number of its events to the counter (which locks the
//! row), inserts the events with the numbers it got and their webhook
//! deliveries, and the transaction commits while still holding the row
//! lock. The next appender waits on that lock until the commit and then
//! reads the new value. So the commit order of event-appending transactions
//! is their sequence order, across every process sharing the database, and a
//! reader (`events_after`, one statement, one snapshot) that sees event `n`
//! sees every event before it: no event can commit behind a reader. A
//! rolled-back transaction rolls its counter change back with it, so the
//! numbers have no gaps either.
//!
//! The cost: event-appending commits are serialised, one at a time, each
//! holding the row lock for one statement, the `COMMIT` round trip and the
//! WAL flush. Their rate is bounded by about 1 / (statement + commit
//! latency) for the whole database, whatever the number of processes (see
//! the crate README for a measurement). Work that appends no events
//! (heartbeats, cancel requests on running jobs, webhook bookkeeping,
//! reads) is not serialised.
//!
//! Within a process, a mutex around that last step (`append`) keeps the
//! process's own appenders in the same order, and the events are published
//! to the [`EventSink`] inside it, after the commit, so the sink receives
//! this process's events in sequence order. The mutex adds no waiting the
//! row lock would not impose anyway, and cannot deadlock with it: whoever
//! holds the counter row waits for nothing but its own commit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use deadpool::managed::Object;
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Integer, Json, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};
use jobqueue_core::clock::truncate_to_micros;
use jobqueue_core::outbox::deliveries_for;
use jobqueue_core::{
    Clock, ErrorKind, Event, EventData, EventSink, Job, JobId, StoreError, WebhookRoute,
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::error::{closed, db_err, internal, pool_err};
use crate::rows::sql_count;

/// A boxed future that may borrow for `'a`, as operations return them.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A pooled connection.
pub(crate) type Conn = Object<AsyncDieselConnectionManager<AsyncPgConnection>>;

/// An event waiting for the commit that numbers it.
struct Staged {
    job_id: JobId,
    pipeline: String,
    webhook_url: Option<String>,
    data: EventData,
}

/// One write transaction: its connection, its time, and the events it
/// appends when it ends.
pub(crate) struct Tx {
    conn: Conn,
    /// The time of the whole transaction, read once from the store's clock.
    pub(crate) now: OffsetDateTime,
    staged: Vec<Staged>,
}

impl Tx {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> &mut AsyncPgConnection {
        &mut self.conn
    }

    /// Appends an event about `job` when the transaction commits.
    pub(crate) fn emit(&mut self, job: &Job, data: EventData) {
        self.emit_for(job.id, &job.pipeline, job.webhook_url.as_deref(), data);
    }

    /// Appends an event about the job `id` of `pipeline`.
    pub(crate) fn emit_for(
        &mut self,
        id: JobId,
        pipeline: &str,
        webhook_url: Option<&str>,
        data: EventData,
    ) {
        self.staged.push(Staged {
            job_id: id,
            pipeline: pipeline.to_owned(),
            webhook_url: webhook_url.map(str::to_owned),
            data,
        });
    }

    /// Opens a savepoint, so a statement that may fail (a unique-key
    /// violation) can be undone without losing the transaction.
    pub(crate) async fn savepoint(&mut self) -> Result<(), StoreError> {
        AnsiTransactionManager::begin_transaction(self.conn())
            .await
            .map_err(db_err)
    }

    /// Releases the savepoint opened last.
    pub(crate) async fn release(&mut self) -> Result<(), StoreError> {
        AnsiTransactionManager::commit_transaction(self.conn())
            .await
            .map_err(db_err)
    }

    /// Rolls back to the savepoint opened last.
    pub(crate) async fn roll_back_to_savepoint(&mut self) -> Result<(), StoreError> {
        AnsiTransactionManager::rollback_transaction(self.conn())
            .await
            .map_err(db_err)
    }
}

/// The state shared by a store and its running calls.
pub(crate) struct Inner {
    pub(crate) pool: Pool<AsyncPgConnection>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sink: RwLock<Option<Arc<dyn EventSink>>>,
    pub(crate) routes: RwLock<Arc<[WebhookRoute]>>,
    /// The last step of event-appending transactions in this process (see
    /// the module docs).
    pub(crate) append: tokio::sync::Mutex<()>,
    pub(crate) closed: AtomicBool,
    pub(crate) tasks: TaskTracker,
    pub(crate) runtime: Handle,
}

impl Inner {
    /// The store's time, to the microsecond, refused when it has no RFC 3339
    /// form (a clock set far outside years 0 to 9999).
    pub(crate) fn now(&self) -> Result<OffsetDateTime, StoreError> {
        let now = truncate_to_micros(self.clock.now());
        jobqueue_core::timefmt::check("the clock's time", now).map_err(StoreError::Invalid)?;
        Ok(now)
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Runs `work` to its end in a task of its own (see the module docs).
    async fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        if AtomicBool::load(&self.closed, Ordering::Acquire) {
            return Err(closed());
        }
        match self.tasks.spawn_on(work, &self.runtime).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(internal(format!(
                "a postgres store call panicked: {}",
                panic_text(e.into_panic())
            ))),
            // The runtime is shutting down.
            Err(_) => Err(closed()),
        }
    }

    /// Runs `op` in one write transaction, appends the events it staged,
    /// commits and publishes them. A failed `op` rolls everything back.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T, StoreError>> + Send + 'static,
    {
        let inner = Arc::clone(self);
        self.spawn(async move { inner.run_write(op).await }).await
    }

    async fn run_write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T, StoreError>>,
    {
        let now = self.now()?;
        let mut tx = Tx {
            conn: self.conn().await?,
            now,
            staged: Vec::new(),
        };
        AnsiTransactionManager::begin_transaction(tx.conn())
            .await
            .map_err(db_err)?;
        let out = match op(&mut tx).await {
            Ok(out) => out,
            Err(e) => return Err(rollback(&mut tx, e).await),
        };
        if tx.staged.is_empty() {
            AnsiTransactionManager::commit_transaction(tx.conn())
                .await
                .map_err(db_err)?;
            return Ok(out);
        }
        let _in_order = self.append.lock().await;
        let routes = Arc::clone(&*self.routes.read().unwrap_or_else(|e| e.into_inner()));
        let events = match append(&mut tx, &routes).await {
            Ok(events) => events,
            Err(e) => return Err(rollback(&mut tx, e).await),
        };
        AnsiTransactionManager::commit_transaction(tx.conn())
            .await
            .map_err(db_err)?;
        self.publish(&events);
        Ok(out)
    }

    /// Runs `op` on a pooled connection, outside any transaction unless `op`
    /// opens one.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AsyncPgConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let inner = Arc::clone(self);
        self.spawn(async move {
            let mut conn = inner.conn().await?;
            match op(&mut conn).await {
                Err(e) => Err(blame_connection(&mut conn, e).await),
                ok => ok,
            }
        })
        .await
    }

    fn publish(&self, events: &[Event]) {
        let sink = self.sink.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(sink) = sink {
            // The change is committed: a panicking sink must not turn a
            // successful write into a failed one. Subscribers resync from
            // the store.
            let publish = std::panic::AssertUnwindSafe(|| sink.publish(events));
            if std::panic::catch_unwind(publish).is_err() {
                tracing::warn!("the event sink panicked; its subscribers resync from the store");
            }
        }
    }
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Rolls the transaction back, savepoints and all, after `e`, and returns
/// `e`. A rollback that fails leaves the connection marked broken (the pool
/// drops it, and PostgreSQL rolls back what it held); then the connection
/// is what failed, whatever `e` said.
async fn rollback(tx: &mut Tx, e: StoreError) -> StoreError {
    loop {
        let status = AnsiTransactionManager::transaction_manager_status_mut(tx.conn());
        if !matches!(status.transaction_depth(), Ok(Some(_))) {
            return e;
        }
        if let Err(failed) = AnsiTransactionManager::rollback_transaction(tx.conn()).await {
            tracing::debug!(error = %failed, "rollback failed; the connection is dropped");
            return if e.kind() == ErrorKind::Internal {
                connection_gone(e)
            } else {
                e
            };
        }
    }
}

/// `e`, or the connection's failure (`Io`) when `e` came with a code diesel
/// does not classify and the connection turns out to be closed: a query
/// that cannot run says so.
pub(crate) async fn blame_connection(conn: &mut AsyncPgConnection, e: StoreError) -> StoreError {
    if e.kind() != ErrorKind::Internal || conn.batch_execute("SELECT 1").await.is_ok() {
        e
    } else {
        connection_gone(e)
    }
}

/// `e`, which came with a code diesel does not classify (say 57P01, the
/// server ending the session), re-classified as the connection's failure:
/// the connection is closed, so it was not the query's fault.
fn connection_gone(e: StoreError) -> StoreError {
    StoreError::backend(ErrorKind::Io, format!("{e} (the connection is closed)"))
}

/// The counter step: numbers the staged events, inserts them and their
/// webhook deliveries, in one statement (see the module docs).
const APPEND_SQL: &str = "\
WITH s AS (
    UPDATE store_state SET last_seq = last_seq + $1 WHERE id = 1
    RETURNING last_seq - $1 AS base
), e AS (
    INSERT INTO events (seq, job_id, pipeline, event_type, at, data)
    SELECT s.base + u.n, u.job_id, u.pipeline, u.event_type, $2, u.data
    FROM s CROSS JOIN unnest($3::int8[], $4::uuid[], $5::text[], $6::text[], $7::json[])
        AS u (n, job_id, pipeline, event_type, data)
    RETURNING seq, job_id, pipeline, event_type, at, data
), d AS (
    INSERT INTO webhook_deliveries (id, event_seq, job_id, target, url, event_pipeline,
        event_type, event_at, event_data, status, attempts, last_status, last_error,
        next_attempt_at, created_at)
    SELECT u.id, e.seq, e.job_id, u.target, u.url, e.pipeline, e.event_type, e.at, e.data,
        u.status, u.attempts, u.last_status, u.last_error, u.next_attempt_at, u.created_at
    FROM s CROSS JOIN unnest($8::int8[], $9::uuid[], $10::text[], $11::text[], $12::text[],
            $13::int8[], $14::int4[], $15::text[], $16::timestamptz[], $17::timestamptz[])
        AS u (n, id, target, url, status, attempts, last_status, last_error, next_attempt_at,
            created_at)
    JOIN e ON e.seq = s.base + u.n
)
SELECT base FROM s";

#[derive(QueryableByName)]
struct Base {
    #[diesel(sql_type = BigInt)]
    base: i64,
}

/// Appends the transaction's staged events with the next sequence numbers,
/// and the deliveries `routes` give them; returns the events as numbered.
async fn append(tx: &mut Tx, routes: &[WebhookRoute]) -> Result<Vec<Event>, StoreError> {
    let now = tx.now;
    let staged = std::mem::take(&mut tx.staged);
    let count = staged.len();
    let mut events = Vec::with_capacity(count);
    let mut e_n = Vec::with_capacity(count);
    let mut e_job = Vec::with_capacity(count);
    let mut e_pipeline = Vec::with_capacity(count);
    let mut e_type = Vec::with_capacity(count);
    let mut e_data: Vec<Value> = Vec::with_capacity(count);
    let mut d_n = Vec::new();
    let mut d_id = Vec::new();
    let mut d_target = Vec::new();
    let mut d_url = Vec::new();
    let mut d_status = Vec::new();
    let mut d_attempts = Vec::new();
    let mut d_last_status: Vec<Option<i32>> = Vec::new();
    let mut d_last_error: Vec<Option<String>> = Vec::new();
    let mut d_next: Vec<Option<OffsetDateTime>> = Vec::new();
    let mut d_created = Vec::new();
    for (i, s) in staged.into_iter().enumerate() {
        // 1-based offset from the counter's old value; the real number is
        // only known inside the statement.
        let n = sql_count(i).saturating_add(1);
        let event = Event {
            seq: 0,
            job_id: s.job_id,
            pipeline: s.pipeline,
            at: now,
            data: s.data,
        };
        for d in deliveries_for(&event, routes, s.webhook_url.as_deref(), now) {
            d_n.push(n);
            d_id.push(*d.id.as_uuid());
            d_target.push(d.target.as_str().to_owned());
            d_url.push(d.url);
            d_status.push(d.status.as_str().to_owned());
            d_attempts.push(i64::from(d.attempts));
            d_last_status.push(d.last_status.map(i32::from));
            d_last_error.push(d.last_error);
            d_next.push(d.next_attempt_at);
            d_created.push(d.created_at);
        }
        e_n.push(n);
        e_job.push(*event.job_id.as_uuid());
        e_pipeline.push(event.pipeline.clone());
        e_type.push(event.event_type().as_str().to_owned());
        e_data.push(event.data.to_json());
        events.push(event);
    }
    let row: Base = diesel::sql_query(APPEND_SQL)
        .bind::<BigInt, _>(sql_count(count))
        .bind::<Timestamptz, _>(now)
        .bind::<Array<BigInt>, _>(e_n)
        .bind::<Array<SqlUuid>, _>(e_job)
        .bind::<Array<Text>, _>(e_pipeline)
        .bind::<Array<Text>, _>(e_type)
        .bind::<Array<Json>, _>(e_data)
        .bind::<Array<BigInt>, _>(d_n)
        .bind::<Array<SqlUuid>, _>(d_id)
        .bind::<Array<Text>, _>(d_target)
        .bind::<Array<Text>, _>(d_url)
        .bind::<Array<Text>, _>(d_status)
        .bind::<Array<BigInt>, _>(d_attempts)
        .bind::<Array<Nullable<Integer>>, _>(d_last_status)
        .bind::<Array<Nullable<Text>>, _>(d_last_error)
        .bind::<Array<Nullable<Timestamptz>>, _>(d_next)
        .bind::<Array<Timestamptz>, _>(d_created)
        .get_result(tx.conn())
        .await
        .map_err(db_err)?;
    let base = u64::try_from(row.base)
        .map_err(|_| internal(format!("the event counter is negative: {}", row.base)))?;
    for (i, event) in events.iter_mut().enumerate() {
        event.seq = base
            .saturating_add(u64::try_from(i).unwrap_or(u64::MAX))
            .saturating_add(1);
    }
    Ok(events)
}
