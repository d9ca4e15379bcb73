//! [`SqliteStore`]: the [`JobStore`] handle, opening, and the plumbing that
//! sends writes to the writer and reads to the reader pool.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_channel::oneshot;
use jobqueue_core::job::check_name;
use jobqueue_core::{
    AttemptOutcome, CancelOutcome, ClaimRequest, Claimed, Delivery, DeliveryFilter, DeliveryId,
    Event, EventFilter, EventSink, FailureOutcome, Job, JobCount, JobError, JobFilter, JobId,
    JobPage, JobStore, Lease, NewJob, Next, Progress, Pruned, RecoverScope, Renewal, StoreError,
    WebhookRoute,
};
use serde_json::Value;
use time::OffsetDateTime;

use crate::checkpoint::Checkpointer;
use crate::conn::{Location, Role, SqliteOptions, connect};
use crate::error::closed;
use crate::guard::FileGuard;
use crate::lock::FileLock;
use crate::user_tx::{EnqueueWith, UserTxError};
use crate::writer::{ClaimMsg, FnOp, Lifetime, Msg, ReadJob, Shared, Tx};
use crate::{migrate, ops, read};

/// A [`JobStore`] on a SQLite database. Cheap to clone: clones share the
/// writer, the readers and the database.
///
/// One store per database file: opening a file that another store has open
/// (in this process or another) fails with [`ErrorKind::InUse`](jobqueue_core::ErrorKind::InUse).
///
/// The async methods never block the executor: each hands its work to the
/// writer thread or a reader thread and awaits the answer (and waits, without
/// blocking, for room in their bounded queues when they are full). Dropping a
/// call's future after it was sent does not cancel it: the write still
/// commits. [`close`](JobStore::close) stops the store and waits until the
/// file is released; dropping the last clone does the same without waiting:
/// the threads commit what was already sent, close the database and release
/// its lock on their own.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    location: Location,
    shared: Arc<Shared>,
    writer: async_channel::Sender<Msg>,
    /// `None` for an in-memory database: its reads go to the writer.
    readers: Option<async_channel::Sender<ReadJob>>,
    /// Closed when the writer thread has ended: every connection is closed
    /// and the file lock released.
    done: async_channel::Receiver<()>,
    /// Cleared when the store stops taking work (a file store's lock flag,
    /// so another open in this process knows to wait for the release).
    open: Arc<AtomicBool>,
}

impl Inner {
    /// Stops taking work; what was sent is still done. Never blocks.
    fn stop(&self) {
        self.open.store(false, Ordering::Release);
        if let Some(readers) = &self.readers {
            readers.close();
        }
        self.writer.close();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never joins: this may run on an async executor's thread. The
        // threads finish on their own (see `writer::Lifetime`).
        self.stop();
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if needed) the database file at `path`, applies
    /// the pending migrations and starts the writer and the readers.
    ///
    /// Blocks while it opens and migrates; from async code call it in
    /// `spawn_blocking` if the database may be large. Fails with `InUse` if
    /// another store (in this or another process) has the file open,
    /// `Incompatible` (and changes nothing) if it is another program's
    /// database, `SchemaTooNew` (and changes nothing) if it was written by
    /// a newer version, `Corrupt` if the file is not a sound database, `Io`
    /// if the directory is missing or the file is read-only.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        Self::start(Location::File(path.as_ref().to_path_buf()), options)
    }

    /// A new private in-memory database, for tests. It has one connection,
    /// owned by the writer, which also serves the reads.
    pub fn open_in_memory(options: SqliteOptions) -> Result<Self, StoreError> {
        Self::start(Location::Memory, options)
    }

    fn start(location: Location, options: SqliteOptions) -> Result<Self, StoreError> {
        // Checked before anything is created, the lock file included.
        location.precheck()?;
        let lock = match &location {
            Location::File(path) => Some(FileLock::acquire(path, options.busy_timeout)?),
            Location::Memory => None,
        };
        let open = lock
            .as_ref()
            .map_or_else(|| Arc::new(AtomicBool::new(true)), FileLock::open_flag);
        // The writer's connection, with its handle for the statements it
        // runs through SQLite's own API (see `crate::raw`).
        let (mut conn, handle) =
            crate::raw::connect(|| connect(&location, &options, Role::Writer))?;
        migrate::migrate(&mut conn)?;
        let last_seq = read::last_seq(&mut conn)?;
        let guard = match &location {
            Location::File(path) => Some(FileGuard::new(path.clone())?),
            Location::Memory => None,
        };
        let shared = Arc::new(Shared {
            clock: Arc::clone(&options.clock),
            routes: Mutex::new(Arc::new(Vec::new())),
            sink: Mutex::new(None),
            listeners: jobqueue_core::Listeners::default(),
            reruns: AtomicU64::new(0),
            wal_restarts: AtomicU64::new(0),
        });
        let (readers, reader_threads, checkpointer) = match &location {
            Location::Memory => (None, Vec::new(), None),
            Location::File(path) => {
                let conns = (0..options.readers.max(1))
                    .map(|_| connect(&location, &options, Role::Reader))
                    .collect::<Result<Vec<_>, _>>()?;
                let (conn, handle) =
                    crate::raw::connect(|| connect(&location, &options, Role::Checkpointer))?;
                let checkpointer = Checkpointer::spawn(conn, handle, path)?;
                let (tx, handles) = read::spawn_pool(conns)?;
                (Some(tx), handles, Some(checkpointer))
            }
        };
        let (done_tx, done) = async_channel::bounded(1);
        let life = Lifetime {
            readers: reader_threads,
            checkpointer,
            lock,
            guard,
            done: done_tx,
        };
        let writer = crate::writer::spawn(
            conn,
            handle,
            Arc::clone(&shared),
            last_seq,
            options.max_batch,
            life,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                location,
                shared,
                writer,
                readers,
                done,
                open,
            }),
        })
    }

    /// Runs `f` on the writer's connection and enqueues `jobs`, in one
    /// transaction: both commit, or neither does. Returns the jobs (in the
    /// given order) and what `f` returned, after the commit; their
    /// `job.created` events are published after it too.
    ///
    /// `f` runs on the writer thread, inside the store's transaction (and a
    /// savepoint of its own when other writes share the transaction): it
    /// may read and write the program's own tables in the same file with
    /// any diesel statement, but must not begin, commit or roll back a
    /// transaction (`conn.transaction(..)` is refused: one is open). It
    /// holds up every write of the store while it runs, so it should be
    /// short. The program creates its own tables (with a call whose `jobs`
    /// are empty, say): the store's migrations own only the store's
    /// tables, and leave other tables alone.
    ///
    /// Nothing is written when `f` returns an error
    /// ([`UserTxError::Closure`]) or panics, or when a job is refused
    /// ([`UserTxError::Store`]: invalid, or a duplicate key, as
    /// [`enqueue_batch`](JobStore::enqueue_batch) refuses it).
    ///
    /// ```no_run
    /// use diesel::connection::SimpleConnection;
    /// use jobqueue_core::NewJob;
    /// use jobqueue_store_sqlite::{SqliteOptions, SqliteStore, UserTxError};
    ///
    /// # async fn demo() -> Result<(), UserTxError<diesel::result::Error>> {
    /// let store = SqliteStore::open("jobs.db", SqliteOptions::default())?;
    /// let (jobs, ()) = store
    ///     .enqueue_with(vec![NewJob::new("ship")], |conn| {
    ///         conn.batch_execute("INSERT INTO orders (id) VALUES (1)")
    ///     })
    ///     .await?;
    /// # let _ = jobs;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_with<T, E, F>(
        &self,
        jobs: Vec<NewJob>,
        f: F,
    ) -> Result<(Vec<Job>, T), UserTxError<E>>
    where
        F: FnOnce(&mut diesel::SqliteConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        for (index, spec) in jobs.iter().enumerate() {
            spec.validate().map_err(|m| StoreError::Batch {
                index,
                error: Box::new(StoreError::Invalid(m)),
            })?;
        }
        let (reply, answer) = oneshot::channel();
        let op = Box::new(EnqueueWith::new(Box::new(f), jobs, reply));
        self.send(Msg::Write(op)).await?;
        answer.await.map_err(|_| UserTxError::Store(closed()))?
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl for<'a> FnMut(&mut Tx<'a>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // `FnMut`: the writer may run an operation again (see `writer`), so
        // the closures clone what they pass on.
        self.write_weighted(1, f).await
    }

    /// [`Self::write`] of an operation about `weight` jobs: one of many
    /// jobs runs in a group of its own (see `writer`).
    async fn write_weighted<T: Send + 'static>(
        &self,
        weight: usize,
        f: impl for<'a> FnMut(&mut Tx<'a>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let op = Box::new(FnOp::new(f, reply).weight(weight));
        self.send(Msg::Write(op)).await?;
        answer.await.map_err(|_| closed())?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut diesel::SqliteConnection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = reply.send(read::in_read_tx(conn, f));
        });
        match &self.inner.readers {
            Some(readers) => readers.send(job).await.map_err(|_| closed())?,
            None => self.send(Msg::Read(job)).await?,
        }
        answer.await.map_err(|_| closed())?
    }

    /// Hands `msg` to the writer, waiting for room in its queue.
    async fn send(&self, msg: Msg) -> Result<(), StoreError> {
        self.inner.writer.send(msg).await.map_err(|_| closed())
    }

    fn now(&self) -> OffsetDateTime {
        self.inner.shared.now()
    }

    /// Runs `f` as a write operation, for tests of the writer.
    #[cfg(test)]
    pub(crate) async fn write_op<T: Send + 'static>(
        &self,
        f: impl for<'a> FnMut(&mut Tx<'a>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write(f).await
    }

    /// How many operations wait in the writer's queue.
    #[cfg(test)]
    pub(crate) fn queued_writes(&self) -> usize {
        self.inner.writer.len()
    }

    /// How many times the writer finished a checkpoint so the WAL started
    /// over (see [`crate::checkpoint`]).
    #[cfg(test)]
    pub(crate) fn wal_restarts(&self) -> u64 {
        self.inner
            .shared
            .wal_restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many groups the writer ran again with savepoints.
    #[cfg(test)]
    pub(crate) fn reruns(&self) -> u64 {
        self.inner
            .shared
            .reruns
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        *self
            .inner
            .shared
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    fn capabilities(&self) -> jobqueue_core::Capabilities {
        jobqueue_core::Capabilities::single_process()
    }

    fn listen(&self, listener: Arc<dyn jobqueue_core::StoreListener>) -> bool {
        self.inner.shared.listeners.add(listener);
        true
    }

    fn set_webhook_routes(&self, routes: Vec<WebhookRoute>) {
        *self
            .inner
            .shared
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }

    async fn close(&self) {
        self.inner.stop();
        // Ends with an error once the writer thread dropped its sender:
        // every connection is closed and the file lock released.
        let _ = self.inner.done.recv().await;
    }

    async fn enqueue(&self, job: NewJob) -> Result<Job, StoreError> {
        job.validate().map_err(StoreError::Invalid)?;
        self.write(move |tx| ops::enqueue(tx, job.clone())).await
    }

    async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>, StoreError> {
        for (index, spec) in jobs.iter().enumerate() {
            spec.validate().map_err(|m| StoreError::Batch {
                index,
                error: Box::new(StoreError::Invalid(m)),
            })?;
        }
        self.write_weighted(jobs.len(), move |tx| ops::enqueue_batch(tx, jobs.clone()))
            .await
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        // Refuse a lease the clock cannot express here, so a bad request
        // never fails the claims merged with it.
        jobqueue_core::apply::lease_until(self.now(), req.lease_for)?;
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Claim(ClaimMsg { req, reply })).await?;
        answer.await.map_err(|_| closed())?
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<bool, StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::heartbeat(tx, &lease, extend))
            .await
    }

    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Renewal>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let leases = leases.to_vec();
        self.write_weighted(leases.len(), move |tx| {
            ops::heartbeat_many(tx, &leases, extend)
        })
        .await
    }

    async fn reshape_phases(&self, lease: &Lease, phases: Vec<String>) -> Result<Job, StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::reshape_phases(tx, &lease, &phases))
            .await
    }

    async fn phase_started(&self, lease: &Lease, index: usize) -> Result<(), StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::phase_started(tx, &lease, index))
            .await
    }

    async fn phase_progress(
        &self,
        lease: &Lease,
        index: usize,
        progress: Progress,
    ) -> Result<(), StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::phase_progress(tx, &lease, index, progress.clone()))
            .await
    }

    async fn save_checkpoint(
        &self,
        lease: &Lease,
        index: usize,
        checkpoint: Value,
    ) -> Result<(), StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::save_checkpoint(tx, &lease, index, checkpoint.clone()))
            .await
    }

    async fn snooze(
        &self,
        lease: &Lease,
        index: usize,
        run_at: OffsetDateTime,
    ) -> Result<Job, StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::snooze(tx, &lease, index, run_at))
            .await
    }

    async fn phase_completed(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
    ) -> Result<(), StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::phase_completed(tx, &lease, index, result.clone()))
            .await
    }

    async fn phase_failed(
        &self,
        lease: &Lease,
        index: usize,
        error: String,
        outcome: FailureOutcome,
    ) -> Result<Job, StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::phase_failed(tx, &lease, index, error.clone(), outcome.clone()))
            .await
    }

    async fn advance(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
        next: Next,
    ) -> Result<(), StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::advance(tx, &lease, index, result.clone(), next))
            .await
    }

    async fn complete_job(&self, lease: &Lease) -> Result<Job, StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::complete_job(tx, &lease)).await
    }

    async fn fail_job(&self, lease: &Lease, error: JobError) -> Result<Job, StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::fail_job(tx, &lease, error.clone()))
            .await
    }

    async fn cancel_running(&self, lease: &Lease) -> Result<Job, StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::cancel_running(tx, &lease)).await
    }

    async fn interrupt(&self, lease: &Lease) -> Result<Job, StoreError> {
        let lease = *lease;
        self.write(move |tx| ops::interrupt(tx, &lease)).await
    }

    async fn recover(&self, scope: RecoverScope) -> Result<Vec<Job>, StoreError> {
        self.write(move |tx| ops::recover(tx, scope)).await
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome, StoreError> {
        self.write(move |tx| ops::request_cancel(tx, id)).await
    }

    async fn retry(&self, id: JobId) -> Result<Job, StoreError> {
        self.write(move |tx| ops::retry(tx, id)).await
    }

    async fn delete(&self, id: JobId) -> Result<(), StoreError> {
        self.write(move |tx| ops::delete(tx, id)).await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read(move |conn| crate::query::load_job(conn, id))
            .await
    }

    async fn list(&self, filter: JobFilter) -> Result<JobPage, StoreError> {
        self.read(move |conn| read::list(conn, filter)).await
    }

    async fn pause_pipeline(&self, pipeline: &str) -> Result<bool, StoreError> {
        check_name("pipeline name", pipeline).map_err(StoreError::Invalid)?;
        let pipeline = pipeline.to_owned();
        self.write(move |tx| ops::pause_pipeline(tx, &pipeline))
            .await
    }

    async fn resume_pipeline(&self, pipeline: &str) -> Result<bool, StoreError> {
        check_name("pipeline name", pipeline).map_err(StoreError::Invalid)?;
        let pipeline = pipeline.to_owned();
        self.write(move |tx| ops::resume_pipeline(tx, &pipeline))
            .await
    }

    async fn paused_pipelines(&self) -> Result<Vec<String>, StoreError> {
        self.read(read::paused_pipelines).await
    }

    async fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        self.read(read::counts).await
    }

    async fn events_after(
        &self,
        after: u64,
        filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read(move |conn| read::events_after(conn, after, filter, limit))
            .await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.read(read::last_seq).await
    }

    async fn mark_stale(
        &self,
        finished_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.write(move |tx| ops::mark_stale(tx, finished_before, limit))
            .await
    }

    async fn delete_stale(
        &self,
        stale_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.write(move |tx| ops::delete_stale(tx, stale_before, limit))
            .await
    }

    async fn prune(&self, before: OffsetDateTime, limit: usize) -> Result<Pruned, StoreError> {
        self.write(move |tx| ops::prune(tx, before, limit)).await
    }

    async fn due_deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let now = self.now();
        let (due, unreadable) = self
            .read(move |conn| read::due_deliveries(conn, now, limit))
            .await?;
        if !unreadable.is_empty() {
            // Failed with the reason, or they would stay due for ever and
            // keep the dispatcher looking at them.
            self.write(move |tx| ops::fail_unreadable_deliveries(tx, &unreadable))
                .await?;
        }
        Ok(due)
    }

    async fn next_delivery_at(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        self.read(read::next_delivery_at).await
    }

    async fn record_attempt(
        &self,
        id: DeliveryId,
        outcome: AttemptOutcome,
    ) -> Result<Delivery, StoreError> {
        self.write(move |tx| ops::record_attempt(tx, id, outcome.clone()))
            .await
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        self.read(move |conn| read::deliveries(conn, filter)).await
    }
}
