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
//! # Appending events
//!
//! A transaction stages its events while it works. At its end it reserves
//! their sequence numbers, inserts them with their webhook deliveries in
//! one statement, commits, and hands them to the process's publishing
//! queue, which passes them to the [`EventSink`] in number order; see
//! [`crate::seq`] for why readers never see a number out of order.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use deadpool::managed::Object;
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
use jobqueue_core::listen::makes_work;
use jobqueue_core::outbox::deliveries_for;
use jobqueue_core::{
    Clock, ErrorKind, Event, EventData, EventSink, Job, JobId, StoreError, WebhookRoute,
};
use time::OffsetDateTime;
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::error::{closed, db_err, internal, pool_err};
use crate::group::Grouper;
use crate::listen::{EVENTS, Listener, WORK};
use crate::rows::{DeliveryRow, EventRow, columns, sql_count, sql_seq};
use crate::seq::{Number, OWNER_SQL, Sequencer};

/// A boxed future that may borrow for `'a`, as operations return them.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A pooled connection.
pub(crate) type Conn = Object<AsyncDieselConnectionManager<AsyncPgConnection>>;

/// An event waiting for the commit that numbers it.
pub(crate) struct Staged {
    job_id: Option<JobId>,
    pipeline: String,
    webhook_url: Option<String>,
    data: EventData,
}

impl Staged {
    /// The event `data` about `job`.
    pub(crate) fn of(job: &Job, data: EventData) -> Self {
        Self {
            job_id: Some(job.id),
            pipeline: job.pipeline.clone(),
            webhook_url: job.webhook_url.clone(),
            data,
        }
    }
}

/// One write transaction: its connection, its time, and the events it
/// appends when it ends.
pub(crate) struct Tx {
    conn: Conn,
    /// The time of the whole transaction, read once from the store's clock.
    pub(crate) now: OffsetDateTime,
    /// The transaction's id, once a statement returned it (see
    /// [`crate::seq`]); asked for before the reservation otherwise.
    pub(crate) owner: Option<i64>,
    staged: Vec<Staged>,
    /// The commit makes jobs runnable that its events do not show (a
    /// completion released waiting dependents): announce work.
    work: bool,
}

impl Tx {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> &mut AsyncPgConnection {
        &mut self.conn
    }

    /// Announces work with the commit, whatever its events are (see
    /// [`crate::listen`]).
    pub(crate) fn announce_work(&mut self) {
        self.work = true;
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
            job_id: Some(id),
            pipeline: pipeline.to_owned(),
            webhook_url: webhook_url.map(str::to_owned),
            data,
        });
    }

    /// Appends an event about the whole `pipeline` (no job, so no job
    /// webhook) when the transaction commits.
    pub(crate) fn emit_pipeline(&mut self, pipeline: &str, data: EventData) {
        self.staged.push(Staged {
            job_id: None,
            pipeline: pipeline.to_owned(),
            webhook_url: None,
            data,
        });
    }

    /// Opens a savepoint, so a statement that may fail (a unique-key
    /// violation) can be undone without losing the transaction.
    pub(crate) async fn savepoint(&mut self) -> Result<(), StoreError> {
        savepoint(self.conn()).await
    }

    /// Releases the savepoint opened last.
    pub(crate) async fn release(&mut self) -> Result<(), StoreError> {
        release(self.conn()).await
    }

    /// Rolls back to the savepoint opened last.
    pub(crate) async fn roll_back_to_savepoint(&mut self) -> Result<(), StoreError> {
        roll_back_to_savepoint(self.conn()).await
    }
}

/// Opens a transaction on `conn`, or a savepoint in the one it has open.
pub(crate) async fn savepoint(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    AnsiTransactionManager::begin_transaction(conn)
        .await
        .map_err(db_err)
}

/// Commits what [`savepoint`] opened last (releases a savepoint).
pub(crate) async fn release(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    AnsiTransactionManager::commit_transaction(conn)
        .await
        .map_err(db_err)
}

/// Rolls back what [`savepoint`] opened last.
pub(crate) async fn roll_back_to_savepoint(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    AnsiTransactionManager::rollback_transaction(conn)
        .await
        .map_err(db_err)
}

/// The state shared by a store and its running calls.
pub(crate) struct Inner {
    pub(crate) pool: Pool<AsyncPgConnection>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sink: RwLock<Option<Arc<dyn EventSink>>>,
    pub(crate) routes: RwLock<Arc<[WebhookRoute]>>,
    /// Sequence numbers and the publishing queue (see [`crate::seq`]).
    pub(crate) sequencer: Sequencer,
    /// The notification channel commits notify (see [`crate::listen`]).
    pub(crate) channel: String,
    /// The schema of the store's tables, if not the connection's default.
    pub(crate) schema: Option<String>,
    /// This process's listener connection, opened with the first listener.
    pub(crate) listener: Listener,
    /// The `advance` calls waiting to be written together.
    pub(crate) grouper: Grouper,
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

    /// Runs `op` like [`Self::write`], in a task of its own that hands the
    /// result to `done`, without waiting for it: the result reaches `done`
    /// even if the caller stops waiting (see [`crate::group`]). On a closed
    /// store `done` gets the error at once.
    pub(crate) fn write_detached<T, F, D>(self: &Arc<Self>, op: F, done: D)
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T, StoreError>> + Send + 'static,
        D: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        if AtomicBool::load(&self.closed, Ordering::Acquire) {
            return done(Err(closed()));
        }
        let inner = Arc::clone(self);
        self.tasks.spawn_on(
            async move { done(inner.run_write(op).await) },
            &self.runtime,
        );
    }

    async fn run_write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T, StoreError>>,
    {
        let now = self.now()?;
        let mut tx = Tx {
            conn: self.conn().await?,
            now,
            owner: None,
            staged: Vec::new(),
            work: false,
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
        let count = sql_count(tx.staged.len());
        let base = match self.reserve(&mut tx, count).await {
            Ok(base) => base,
            Err(e) => return Err(rollback(&mut tx, e).await),
        };
        let place = Place {
            inner: self,
            first: base.saturating_add(1),
            settled: false,
        };
        let routes = self.routes();
        let staged = std::mem::take(&mut tx.staged);
        let work = tx.work;
        let events = match append(tx.conn(), now, staged, &routes, base, &self.channel, work).await
        {
            Ok(events) => events,
            Err(e) => {
                let e = rollback(&mut tx, e).await;
                place.fail().await;
                return Err(e);
            }
        };
        if let Err(e) = AnsiTransactionManager::commit_transaction(tx.conn()).await {
            // Whether it committed is unknown; its events are not published
            // (they are in the store if it did, where subscribers resync).
            place.fail().await;
            return Err(db_err(e));
        }
        place.commit(events);
        Ok(out)
    }

    /// Reserves `count` numbers for the transaction of `tx`.
    async fn reserve(&self, tx: &mut Tx, count: i64) -> Result<u64, StoreError> {
        let owner = match tx.owner {
            Some(owner) => owner,
            None => {
                let owner: Number = diesel::sql_query(OWNER_SQL)
                    .get_result(tx.conn())
                    .await
                    .map_err(db_err)?;
                owner.n
            }
        };
        self.sequencer.reserve(count, owner).await
    }

    /// The webhook routes of the moment.
    pub(crate) fn routes(&self) -> Arc<[WebhookRoute]> {
        Arc::clone(&*self.routes.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn settle(&self, first: u64, events: Option<Vec<Event>>) {
        let sink = self.sink.read().unwrap_or_else(|e| e.into_inner()).clone();
        self.sequencer.settle(first, events, sink.as_ref());
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
}

/// A transaction's place in the publishing queue. Dropped unsettled (its
/// task cut short), it empties itself, so later events are not held back.
struct Place<'a> {
    inner: &'a Inner,
    first: u64,
    settled: bool,
}

impl Place<'_> {
    /// The transaction committed `events`.
    fn commit(mut self, events: Vec<Event>) {
        self.settled = true;
        self.inner.settle(self.first, Some(events));
    }

    /// The transaction failed: its numbers stay unused.
    async fn fail(mut self) {
        self.settled = true;
        self.inner.settle(self.first, None);
        self.inner.sequencer.forget(self.first).await;
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.inner.settle(self.first, None);
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

/// Inserts the staged events with their reserved numbers (those after
/// `$1`) and their webhook deliveries (the event snapshot copied from the
/// event row), deletes the reservation, and notifies the store's channel
/// `$18` with `$19` at the commit (see [`crate::listen`]), in one
/// statement; returns how many events it inserted.
const APPEND_SQL: &str = "\
WITH e AS (
    INSERT INTO events (seq, job_id, pipeline, event_type, at, data)
    SELECT u.seq, u.job_id, u.pipeline, u.event_type, $2, u.data
    FROM unnest($3::int8[], $4::uuid[], $5::text[], $6::text[], $7::json[])
        AS u (seq, job_id, pipeline, event_type, data)
    RETURNING seq, job_id, pipeline, event_type, at, data
), d AS (
    INSERT INTO webhook_deliveries (id, event_seq, job_id, target, url, event_pipeline,
        event_type, event_at, event_data, status, attempts, last_status, last_error,
        next_attempt_at, created_at)
    SELECT u.id, e.seq, e.job_id, u.target, u.url, e.pipeline, e.event_type, e.at, e.data,
        u.status, u.attempts, u.last_status, u.last_error, u.next_attempt_at, u.created_at
    FROM unnest($8::uuid[], $9::int8[], $10::text[], $11::text[], $12::text[],
            $13::int8[], $14::int4[], $15::text[], $16::timestamptz[], $17::timestamptz[])
        AS u (id, event_seq, target, url, status, attempts, last_status, last_error,
            next_attempt_at, created_at)
    JOIN e ON e.seq = u.event_seq
), r AS (
    DELETE FROM seq_reservations WHERE first_seq = $1 + 1
), nt AS (
    SELECT pg_notify($18, $19)
)
SELECT (SELECT count(*) FROM e) AS n FROM nt";

/// Appends the `staged` events of the transaction on `conn`, at `now`, with
/// the numbers after `base`, and the deliveries `routes` give them; returns
/// the events as numbered. The commit's notice says there is work when
/// `work` is set (see [`Tx::announce_work`]) or the events make some.
pub(crate) async fn append(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
    staged: Vec<Staged>,
    routes: &[WebhookRoute],
    base: u64,
    channel: &str,
    work: bool,
) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::with_capacity(staged.len());
    let mut deliveries = Vec::new();
    for (seq, s) in (base.saturating_add(1)..).zip(staged) {
        let event = Event {
            seq,
            job_id: s.job_id,
            pipeline: s.pipeline,
            at: now,
            data: s.data,
        };
        deliveries.extend(deliveries_for(
            &event,
            routes,
            s.webhook_url.as_deref(),
            now,
        ));
        events.push(event);
    }
    let n = events.len();
    let payload = if work || makes_work(&events) {
        WORK
    } else {
        EVENTS
    };
    let rows = events.iter().map(|e| EventRow {
        seq: sql_seq(e.seq),
        job_id: e.job_id.map(|id| *id.as_uuid()),
        pipeline: e.pipeline.clone(),
        event_type: e.event_type().as_str().to_owned(),
        at: e.at,
        data: e.data.to_json(),
    });
    columns!(rows, n => seq, job_id, pipeline, event_type, data);
    let d_rows = deliveries.iter().map(DeliveryRow::of);
    let d_n = deliveries.len();
    columns!(d_rows, d_n => id, event_seq, target, url, status, attempts, last_status,
        last_error, next_attempt_at, created_at);
    let inserted: Number = diesel::sql_query(APPEND_SQL)
        .bind::<BigInt, _>(sql_seq(base))
        .bind::<Timestamptz, _>(now)
        .bind::<Array<BigInt>, _>(seq)
        .bind::<Array<Nullable<SqlUuid>>, _>(job_id)
        .bind::<Array<Text>, _>(pipeline)
        .bind::<Array<Text>, _>(event_type)
        .bind::<Array<Json>, _>(data)
        .bind::<Array<SqlUuid>, _>(id)
        .bind::<Array<BigInt>, _>(event_seq)
        .bind::<Array<Text>, _>(target)
        .bind::<Array<Text>, _>(url)
        .bind::<Array<Text>, _>(status)
        .bind::<Array<BigInt>, _>(attempts)
        .bind::<Array<Nullable<Integer>>, _>(last_status)
        .bind::<Array<Nullable<Text>>, _>(last_error)
        .bind::<Array<Nullable<Timestamptz>>, _>(next_attempt_at)
        .bind::<Array<Timestamptz>, _>(created_at)
        .bind::<Text, _>(channel)
        .bind::<Text, _>(payload)
        .get_result(conn)
        .await
        .map_err(db_err)?;
    if inserted.n != sql_count(n) {
        return Err(internal(format!(
            "postgres: {} of {n} events were appended",
            inserted.n
        )));
    }
    Ok(events)
}
