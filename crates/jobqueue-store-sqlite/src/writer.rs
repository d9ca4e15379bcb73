//! The writer: one thread that owns the write connection and commits the
//! operations waiting for it in groups.
//!
//! Callers send boxed operations through a channel. The writer takes the
//! first one, drains whatever else is waiting (up to `max_batch`), and runs
//! them all in one `BEGIN IMMEDIATE` transaction. After the `COMMIT` it
//! publishes each operation's events to the [`EventSink`] in sequence order
//! and then answers every caller. One commit (one WAL append, one fsync with
//! `synchronous=FULL`) thus serves many operations.
//!
//! An operation that fails is rolled back alone, the others commit. Most
//! failures are refusals decided before the operation writes anything (lease
//! lost, transition refused, duplicate key): nothing to undo in SQLite, so a
//! group first runs without savepoints. If an operation fails after it
//! wrote (or with an SQL error, or a panic), the writer rolls the whole
//! transaction back and runs the group again with each operation inside its
//! own `SAVEPOINT`, so that one is rolled back alone. No caller is answered
//! before the commit, so the first run is never seen.
//!
//! An operation that must not run twice (a transactional enqueue, whose
//! closure is the caller's code, see [`crate::user_tx`]) makes its group run
//! with savepoints from the start, so a failure is never rolled back by
//! running the group again.
//!
//! An operation on many jobs (an `enqueue_batch` of more than
//! [`LARGE_OP`]) runs in a group of its own, so the claims and small writes
//! that arrive with it are not answered only after it.
//!
//! Events are not inserted one by one: their rows wait in the group and go
//! in with as few multi-row `INSERT`s as their count allows before the
//! commit (before each savepoint in a rerun, and before an operation reads
//! or deletes rows of `events`). A failed operation's waiting rows are
//! dropped with it.
//!
//! The event sequence counter lives here: only the writer appends events,
//! so it hands out numbers without asking the database, and takes them back
//! when an operation or a batch is rolled back.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use foldhash::HashMap;
use futures_channel::oneshot;
use jobqueue_core::clock::truncate_to_micros;
use jobqueue_core::outbox::deliveries_for;
use jobqueue_core::{
    ClaimRequest, Claimed, Clock, ErrorKind, Event, EventData, EventSink, Job, JobId, JobStatus,
    Phase, StoreError, WebhookRoute,
};
use time::OffsetDateTime;

use crate::checkpoint::{Checkpointer, Signal};
use crate::error::db_err;
use crate::guard::FileGuard;
use crate::lock::FileLock;
use crate::query::{Fixed, insert_events, insert_rows, kind};
use crate::raw::{Handle, Statements};
use crate::rows::{DeliveryRow, EventRow};
use crate::schema::store_state;

/// A read, run on some connection; it sends its own answer.
pub(crate) type ReadJob = Box<dyn FnOnce(&mut SqliteConnection) + Send>;

/// What the writer thread receives.
pub(crate) enum Msg {
    /// A write, run in the next group transaction.
    Write(Box<dyn WriteOp>),
    /// A claim. The claims of a group are merged into one statement.
    Claim(ClaimMsg),
    /// A read, run on the writer's connection after the group commits (only
    /// for an in-memory database, which has no other connections).
    Read(ReadJob),
}

/// A claim request and where its answer goes.
pub(crate) struct ClaimMsg {
    pub(crate) req: ClaimRequest,
    pub(crate) reply: oneshot::Sender<Result<Vec<Claimed>, StoreError>>,
}

/// The claims of one group as one operation: consecutive requests with the
/// same lease duration and exclusions become one `UPDATE ... RETURNING` for
/// the sum of their limits, and the claimed jobs are dealt out in claim
/// order, as if the requests had run one after the other.
struct MergedClaims {
    claims: Vec<ClaimMsg>,
    out: Option<Result<Vec<Vec<Claimed>>, StoreError>>,
}

impl MergedClaims {
    fn run(&self, tx: &mut Tx<'_>) -> Result<Vec<Vec<Claimed>>, StoreError> {
        let mut answers = Vec::with_capacity(self.claims.len());
        let mut i = 0;
        while i < self.claims.len() {
            let first = &self.claims[i].req;
            let run = self.claims[i..]
                .iter()
                .take_while(|c| {
                    c.req.lease_for == first.lease_for
                        && c.req.exclude_pipelines == first.exclude_pipelines
                        && c.req.pipelines == first.pipelines
                        && c.req.start_phase == first.start_phase
                        && c.req.worker == first.worker
                })
                .count();
            let total = self.claims[i..i + run]
                .iter()
                .fold(0usize, |n, c| n.saturating_add(c.req.limit));
            let mut merged = ClaimRequest::new(total)
                .lease_for(first.lease_for)
                .exclude_pipelines(first.exclude_pipelines.clone());
            merged.pipelines.clone_from(&first.pipelines);
            merged.start_phase = first.start_phase;
            merged.worker.clone_from(&first.worker);
            let mut claimed = crate::ops::claim(tx, merged)?.into_iter();
            for c in &self.claims[i..i + run] {
                answers.push(claimed.by_ref().take(c.req.limit).collect());
            }
            i += run;
        }
        Ok(answers)
    }
}

impl WriteOp for MergedClaims {
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), OpFailure> {
        let out = catch_unwind(AssertUnwindSafe(|| self.run(tx))).unwrap_or_else(|_| {
            Err(StoreError::backend(
                ErrorKind::Internal,
                "sqlite store: a claim panicked; it was rolled back",
            ))
        });
        let failed = out.as_ref().err().map(OpFailure::of);
        self.out = Some(out);
        failed.map_or(Ok(()), Err)
    }

    fn finish(self: Box<Self>, group_failure: Option<&StoreError>) {
        let error = match (self.out, group_failure) {
            (Some(Ok(answers)), None) => {
                for (claim, answer) in self.claims.into_iter().zip(answers) {
                    // The caller may have stopped waiting; the claim stands
                    // (its lease expires and recovery requeues the job).
                    let _ = claim.reply.send(Ok(answer));
                }
                return;
            }
            (Some(Err(e)), _) => e,
            (_, Some(failure)) => failure.clone(),
            (None, None) => {
                StoreError::backend(ErrorKind::Internal, "sqlite store: claim was not run")
            }
        };
        for claim in self.claims {
            let _ = claim.reply.send(Err(error.clone()));
        }
    }
}

/// State the store's handle and the writer share.
pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) routes: Mutex<Arc<Vec<WebhookRoute>>>,
    pub(crate) sink: Mutex<Option<Arc<dyn EventSink>>>,
    /// The store's listeners, told after each commit in process (one
    /// process owns the file, so no other process has anything to tell).
    pub(crate) listeners: jobqueue_core::Listeners,
    /// How many groups were run again with savepoints.
    pub(crate) reruns: AtomicU64,
    /// How many times the writer finished a checkpoint the checkpointer
    /// began, so the WAL started over.
    pub(crate) wal_restarts: AtomicU64,
}

impl Shared {
    pub(crate) fn now(&self) -> OffsetDateTime {
        truncate_to_micros(self.clock.now())
    }

    fn routes(&self) -> Arc<Vec<WebhookRoute>> {
        Arc::clone(&self.routes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn sink(&self) -> Option<Arc<dyn EventSink>> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the listeners are told of a group's commit: one notice of each
/// kind at most, however many operations the group held.
#[derive(Clone, Copy)]
struct Notices {
    /// The commit appended events.
    events: bool,
    /// Among them, events that make work for a pump.
    work: bool,
}

impl Notices {
    /// The notices of `published` for `listeners`; none to work out when
    /// nobody listens.
    fn of(published: &[Vec<Event>], listeners: &jobqueue_core::Listeners) -> Self {
        let events = !listeners.is_empty() && published.iter().any(|e| !e.is_empty());
        Self {
            events,
            work: events
                && published
                    .iter()
                    .any(|e| jobqueue_core::listen::makes_work(e)),
        }
    }

    fn tell(self, listeners: &jobqueue_core::Listeners) {
        if !self.events {
            return;
        }
        if self.work {
            listeners.notify(jobqueue_core::Notice::JobsAvailable);
        }
        listeners.notify(jobqueue_core::Notice::EventsCommitted);
    }
}

/// The running jobs as the writer last wrote them, so the operations of a
/// worker (phase changes, heartbeats, completion) need no `SELECT`; and the
/// phases of the queued jobs it wrote, so a claim need not read them back.
/// Sound because this writer is the only one: each entry is exactly what
/// the database holds, or the database is read instead. Every write of a
/// job goes through [`JobCache::put`] or [`JobCache::forget`] (a write that
/// only changes a queued job's status leaves its phase rows, and so its
/// entry, as they were). An operation's changes to the cache are undone
/// with its savepoint, and a failed group empties it.
#[derive(Default)]
pub(crate) struct JobCache {
    jobs: HashMap<JobId, Job>,
    undo: Vec<(JobId, Option<Job>)>,
    /// The phases of queued jobs, shared by the jobs of a batch that have
    /// the same ones.
    queued: HashMap<JobId, Arc<[Phase]>>,
    queued_undo: Vec<(JobId, Option<Arc<[Phase]>>)>,
}

impl JobCache {
    /// Running jobs beyond this many are read from the database instead.
    const CAPACITY: usize = 65_536;
    /// Queued jobs beyond this many have their phases read by the claim.
    /// An entry is a key and a shared pointer, about 6 MB in all when full
    /// (262,144 cost 25 MB of peak RSS in the million-job benchmark); claims
    /// take the oldest jobs first, which are the ones kept.
    const QUEUED_CAPACITY: usize = 65_536;

    pub(crate) fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Records `job` as written: kept while it runs, dropped otherwise; its
    /// phases kept while it is queued.
    pub(crate) fn put(&mut self, job: &Job) {
        self.put_with(job, None);
    }

    /// [`JobCache::put`] for jobs enqueued together: consecutive jobs with
    /// the same phases share one list.
    pub(crate) fn put_new(&mut self, jobs: &[Job]) {
        let mut last: Option<Arc<[Phase]>> = None;
        for job in jobs {
            let shared = match last.take() {
                Some(phases) if *phases == *job.phases => phases,
                _ => Arc::from(job.phases.as_slice()),
            };
            self.put_with(job, Some(Arc::clone(&shared)));
            last = Some(shared);
        }
    }

    fn put_with(&mut self, job: &Job, phases: Option<Arc<[Phase]>>) {
        let old = if job.status == JobStatus::Running
            && (self.jobs.len() < Self::CAPACITY || self.jobs.contains_key(&job.id))
        {
            self.jobs.insert(job.id, job.clone())
        } else {
            self.jobs.remove(&job.id)
        };
        self.undo.push((job.id, old));
        let old = if job.status == JobStatus::Queued
            && (self.queued.len() < Self::QUEUED_CAPACITY || self.queued.contains_key(&job.id))
        {
            let phases = phases.unwrap_or_else(|| Arc::from(job.phases.as_slice()));
            self.queued.insert(job.id, phases)
        } else {
            self.queued.remove(&job.id)
        };
        self.queued_undo.push((job.id, old));
    }

    /// Drops job `id`.
    pub(crate) fn forget(&mut self, id: JobId) {
        let old = self.jobs.remove(&id);
        self.undo.push((id, old));
        let old = self.queued.remove(&id);
        self.queued_undo.push((id, old));
    }

    /// The phases of the queued jobs `ids`, in that order, if the cache
    /// has them all; their entries go (a claimed job is not queued).
    pub(crate) fn take_queued_phases(&mut self, ids: &[JobId]) -> Option<Vec<Vec<Phase>>> {
        if !ids.iter().all(|id| self.queued.contains_key(id)) {
            return None;
        }
        let mut all = Vec::with_capacity(ids.len());
        for &id in ids {
            let phases = self.queued.remove(&id)?;
            all.push(phases.to_vec());
            self.queued_undo.push((id, Some(phases)));
        }
        Some(all)
    }

    fn begin(&mut self) {
        self.undo.clear();
        self.queued_undo.clear();
    }

    fn rollback(&mut self) {
        while let Some((id, old)) = self.undo.pop() {
            match old {
                Some(job) => self.jobs.insert(id, job),
                None => self.jobs.remove(&id),
            };
        }
        while let Some((id, old)) = self.queued_undo.pop() {
            match old {
                Some(phases) => self.queued.insert(id, phases),
                None => self.queued.remove(&id),
            };
        }
    }

    fn clear(&mut self) {
        self.jobs.clear();
        self.undo.clear();
        self.queued.clear();
        self.queued_undo.clear();
    }
}

/// One operation's view of the group transaction.
pub(crate) struct Tx<'a> {
    /// The write connection, inside the transaction (and the op's savepoint
    /// if it has one). Reached through [`Tx::conn`] to read and
    /// [`Tx::write_conn`] to write.
    db: &'a mut SqliteConnection,
    /// The same connection's statements run through SQLite's own API,
    /// reached through [`Tx::raw`].
    raw: &'a mut Statements,
    /// Whether the operation ran a statement that writes.
    wrote: bool,
    /// The time of this operation.
    pub(crate) now: OffsetDateTime,
    /// The running jobs as last written.
    pub(crate) cache: &'a mut JobCache,
    routes: &'a [WebhookRoute],
    last_seq: &'a mut u64,
    events: Vec<Event>,
    /// The rows of the events appended in this group and not inserted yet.
    pending: &'a mut Vec<EventRow>,
    /// Where this operation's rows in `pending` begin: only those may take
    /// a second event (an operation that fails takes its rows with it).
    op_pending: usize,
    /// Whether `job_dependencies` may have rows (see
    /// [`Writer::dependencies`]).
    pub(crate) dependencies: &'a mut bool,
}

impl Tx<'_> {
    /// The connection, to read.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        self.db
    }

    /// The connection, to write: noted, so that a failure after it rolls
    /// the operation back with a savepoint (see the module docs).
    pub(crate) fn write_conn(&mut self) -> &mut SqliteConnection {
        self.wrote = true;
        self.db
    }

    /// The statements run through SQLite's own API, to write: noted like
    /// [`Tx::write_conn`].
    pub(crate) fn raw(&mut self) -> &mut Statements {
        self.wrote = true;
        self.raw
    }

    /// Inserts the events appended so far in this group, for an operation
    /// about to read or delete rows of `events`.
    pub(crate) fn flush_events(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.wrote = true;
        insert_events(self.raw, self.pending)?;
        self.pending.clear();
        self.op_pending = 0;
        Ok(())
    }

    /// The last sequence number handed out so far.
    pub(crate) fn last_seq(&self) -> u64 {
        *self.last_seq
    }

    /// Appends an event about a job (or, without `job_id`, about a whole
    /// pipeline), with its webhook deliveries: one per configured endpoint
    /// that wants its type, and one to the job's own `webhook_url` under the
    /// default filter.
    pub(crate) fn emit(
        &mut self,
        job_id: Option<JobId>,
        pipeline: &str,
        webhook_url: Option<&str>,
        data: EventData,
    ) -> Result<(), StoreError> {
        let event = Event {
            seq: *self.last_seq + 1,
            job_id,
            pipeline: pipeline.to_owned(),
            at: self.now,
            data,
        };
        // Inserted with the group's other events when it ends (or before a
        // statement of the operation that reads or deletes events); an event
        // right after one of the same job in this operation shares its row.
        let paired = self.pending.len() > self.op_pending
            && match (self.pending.last_mut(), self.events.last()) {
                (Some(row), Some(first)) => row.pair(first, &event),
                _ => false,
            };
        if !paired {
            self.pending.push(EventRow::of(&event));
        }
        for d in deliveries_for(&event, self.routes, webhook_url, self.now) {
            let row = DeliveryRow::of(&d);
            insert_rows(self.raw(), std::slice::from_ref(&row))?;
        }
        *self.last_seq = event.seq;
        self.events.push(event);
        Ok(())
    }
}

/// A write operation in a group.
pub(crate) trait WriteOp: Send {
    /// Runs the operation inside the group transaction; on failure returns
    /// the kind and text of its error. May run twice (see the module docs):
    /// the second run's result is the one answered.
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), OpFailure>;
    /// Answers the caller: with the operation's own result, or with the
    /// failure that ended the whole group.
    fn finish(self: Box<Self>, group_failure: Option<&StoreError>);
    /// About how many jobs the operation writes: one past [`LARGE_OP`]
    /// runs in a group of its own.
    fn weight(&self) -> usize {
        1
    }
    /// Whether the operation must not be run a second time: its group then
    /// runs with savepoints from the start.
    fn runs_once(&self) -> bool {
        false
    }
}

/// The weight from which an operation runs in a group of its own. A group
/// answers its callers only when it commits, so a claim or a single
/// enqueue in the same group as a batch of a thousand jobs would wait for
/// the whole batch; alone, the batch delays only what arrives while it
/// runs.
pub(crate) const LARGE_OP: usize = 64;

/// Why an operation failed.
pub(crate) struct OpFailure {
    error: StoreError,
    /// A refusal of the store's rules (not an SQL error, not a panic): by
    /// itself it leaves the transaction as it was.
    refusal: bool,
}

impl OpFailure {
    /// A failure that may have left writes behind, whatever its error.
    pub(crate) fn wrote(error: StoreError) -> Self {
        Self {
            error,
            refusal: false,
        }
    }

    pub(crate) fn of(e: &StoreError) -> Self {
        Self {
            error: e.clone(),
            refusal: !matches!(e, StoreError::Backend { .. }),
        }
    }
}

type OpFn<T> = Box<dyn for<'a> FnMut(&mut Tx<'a>) -> Result<T, StoreError> + Send>;

/// A [`WriteOp`] made of a closure and the channel of its answer.
pub(crate) struct FnOp<T> {
    f: OpFn<T>,
    weight: usize,
    out: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send + 'static> FnOp<T> {
    pub(crate) fn new(
        f: impl for<'a> FnMut(&mut Tx<'a>) -> Result<T, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Self {
            f: Box::new(f),
            weight: 1,
            out: None,
            reply,
        }
    }

    /// Sets the operation's weight (see [`WriteOp::weight`]).
    pub(crate) fn weight(mut self, weight: usize) -> Self {
        self.weight = weight;
        self
    }
}

impl<T: Send + 'static> WriteOp for FnOp<T> {
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), OpFailure> {
        // A panic in an operation fails that operation only: its savepoint
        // is rolled back like any failure, and the writer goes on.
        let f = &mut self.f;
        let out = catch_unwind(AssertUnwindSafe(|| f(tx))).unwrap_or_else(|_| {
            Err(StoreError::backend(
                ErrorKind::Internal,
                "sqlite store: a write operation panicked; it was rolled back",
            ))
        });
        let failed = out.as_ref().err().map(OpFailure::of);
        self.out = Some(out);
        failed.map_or(Ok(()), Err)
    }

    fn finish(self: Box<Self>, group_failure: Option<&StoreError>) {
        let answer = match (self.out, group_failure) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(failure)) => Err(failure.clone()),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::backend(
                ErrorKind::Internal,
                "sqlite store: operation was not run",
            )),
        };
        // The caller may have stopped waiting; the write stands regardless.
        let _ = self.reply.send(answer);
    }

    fn weight(&self) -> usize {
        self.weight
    }
}

/// Operations that may wait for the writer before callers wait to send:
/// the backpressure of a writer that cannot keep up.
pub(crate) const WRITE_QUEUE: usize = 4096;

/// What the writer thread owns besides its connection, and gives up in this
/// order when it ends: the reader threads are joined (their connections
/// close), then its own connection closes, then the file lock is released,
/// and last `done` is dropped, which wakes every `close()` waiting for it.
pub(crate) struct Lifetime {
    pub(crate) readers: Vec<JoinHandle<()>>,
    /// Stopped after the readers, before the writer's connection closes.
    pub(crate) checkpointer: Option<Checkpointer>,
    pub(crate) lock: Option<FileLock>,
    pub(crate) guard: Option<FileGuard>,
    pub(crate) done: async_channel::Sender<()>,
}

/// Starts the writer thread on `conn`; `last_seq` is the highest sequence
/// number the database ever handed out.
pub(crate) fn spawn(
    conn: SqliteConnection,
    handle: Handle,
    shared: Arc<Shared>,
    last_seq: u64,
    max_batch: usize,
    life: Lifetime,
) -> Result<async_channel::Sender<Msg>, StoreError> {
    let (tx, rx) = async_channel::bounded(WRITE_QUEUE);
    std::thread::Builder::new()
        .name("jobqueue-sqlite-writer".to_owned())
        .spawn(move || {
            let Lifetime {
                readers,
                checkpointer,
                lock,
                guard,
                done,
            } = life;
            let mut conn = conn;
            let dependencies = crate::deps::any(&mut conn);
            let mut writer = Writer {
                raw: Statements::new(handle),
                conn,
                dependencies,
                cache: JobCache::default(),
                shared,
                last_seq,
                max_batch: max_batch.max(1),
                guard,
                pending: Vec::new(),
                checkpoints: checkpointer.as_ref().map(Checkpointer::signal),
            };
            writer.run(&rx);
            for reader in readers {
                let _ = reader.join();
            }
            if let Some(checkpointer) = checkpointer {
                checkpointer.stop();
            }
            // Closing the last connection checkpoints the WAL into the
            // database file and removes the -wal file; only then may
            // another store have the file.
            drop(writer);
            drop(lock);
            drop(done);
        })
        .map_err(|e| {
            StoreError::backend(ErrorKind::Internal, format!("cannot start writer: {e}"))
        })?;
    Ok(tx)
}

struct Writer {
    /// The prepared statements run through SQLite's own API (see
    /// [`crate::raw`]). Declared before `conn`, so they are finalized
    /// before it closes.
    raw: Statements,
    conn: SqliteConnection,
    cache: JobCache,
    shared: Arc<Shared>,
    last_seq: u64,
    max_batch: usize,
    /// Watches the database file (none for an in-memory database).
    guard: Option<FileGuard>,
    /// The rows of the events of the running group, inserted at its end.
    pending: Vec<EventRow>,
    /// The checkpointer's (none for an in-memory database): told of every
    /// commit, and asks the writer to finish a checkpoint now and then.
    checkpoints: Option<Arc<Signal>>,
    /// Whether `job_dependencies` may have rows: read when the writer
    /// starts, set by every write that inserts one, never cleared while the
    /// writer runs. While it is false, a job that ends has no dependent to
    /// release or cancel, so the write skips those statements (a `DELETE`
    /// per completion was 5% of a one-phase job's time).
    dependencies: bool,
}

/// Why a group ended before its commit: every caller of the group gets a
/// clone of this error, kind and all.
type GroupFailure = StoreError;

fn fail(e: diesel::result::Error, during: &str) -> GroupFailure {
    fail_with(db_err(e), during)
}

fn fail_with(e: StoreError, during: &str) -> GroupFailure {
    StoreError::backend(
        e.kind(),
        format!("{e} (during {during}; nothing of this write was committed)"),
    )
}

impl Writer {
    /// Runs groups until the channel is closed (by `close()` or the last
    /// handle's drop) and empty.
    fn run(&mut self, rx: &async_channel::Receiver<Msg>) {
        let mut writes: Vec<Box<dyn WriteOp>> = Vec::new();
        let mut reads: Vec<ReadJob> = Vec::new();
        let mut claims: Vec<ClaimMsg> = Vec::new();
        // A large operation that came after a group had begun: it starts
        // the next group.
        let mut held: Option<Msg> = None;
        while let Some(first) = held.take().or_else(|| rx.recv_blocking().ok()) {
            let mut next = Some(first);
            while let Some(msg) = next {
                let large = matches!(&msg, Msg::Write(op) if op.weight() > LARGE_OP);
                if large && !(writes.is_empty() && claims.is_empty()) {
                    held = Some(msg);
                    break;
                }
                match msg {
                    Msg::Write(op) => writes.push(op),
                    Msg::Claim(c) => claims.push(c),
                    Msg::Read(job) => reads.push(job),
                }
                next = if !large && writes.len() + claims.len() < self.max_batch {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !claims.is_empty() {
                // After the other writes, so jobs enqueued in this group can
                // be claimed at once.
                writes.push(Box::new(MergedClaims {
                    claims: std::mem::take(&mut claims),
                    out: None,
                }));
            }
            if !writes.is_empty() {
                self.group(&mut writes);
            }
            for job in reads.drain(..) {
                job(&mut self.conn);
            }
        }
    }

    /// Runs one group of writes and answers every caller.
    fn group(&mut self, ops: &mut Vec<Box<dyn WriteOp>>) {
        let start_seq = self.last_seq;
        let mut published: Vec<Vec<Event>> = Vec::with_capacity(ops.len());
        // One operation needs no savepoint: a failure rolls back the whole
        // transaction, which is that operation alone.
        let mut savepoints = ops.len() == 1 || ops.iter().any(|op| op.runs_once());
        let failure = loop {
            match self.run_group(ops, &mut published, savepoints) {
                Ok(()) => break None,
                Err(Stop::Failed(failure)) => break Some(failure),
                Err(Stop::NeedsSavepoints) => {
                    // Nothing of this run is committed nor answered: undo
                    // it and run the group again, each op in a savepoint.
                    let _ = self.conn.batch_execute("ROLLBACK");
                    self.last_seq = start_seq;
                    self.cache.clear();
                    published.clear();
                    savepoints = true;
                    self.shared.reruns.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        if failure.is_some() {
            // Best effort: the transaction may already be gone. Nothing of
            // the group committed, so its sequence numbers are free again
            // and the cache may hold its uncommitted jobs.
            let _ = self.conn.batch_execute("ROLLBACK");
            self.last_seq = start_seq;
            self.cache.clear();
        } else {
            // Read before the events are handed to the sink.
            let notices = Notices::of(&published, &self.shared.listeners);
            if let Some(sink) = self.shared.sink() {
                for events in published.drain(..).filter(|e| !e.is_empty()) {
                    // The sink is someone else's code on the writer's thread:
                    // if it panics, that batch of events is not delivered to
                    // it (they are committed and can be read back), and the
                    // writer lives on.
                    let _ = catch_unwind(AssertUnwindSafe(|| sink.publish_owned(events)));
                }
            }
            notices.tell(&self.shared.listeners);
            if let Some(checkpoints) = &self.checkpoints {
                checkpoints.committed(self.last_seq.saturating_sub(start_seq));
            }
        }
        for op in ops.drain(..) {
            op.finish(failure.as_ref());
        }
        // After the callers are answered: the pass delays the next group
        // only.
        if let Some(checkpoints) = &self.checkpoints
            && checkpoints.finish_if_asked(&mut self.conn)
        {
            self.shared.wal_restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Inserts the group's waiting event rows.
    fn insert_pending(&mut self) -> Result<(), GroupFailure> {
        insert_events(&mut self.raw, &self.pending)
            .map_err(|e| fail_with(e, "inserting the events"))?;
        self.pending.clear();
        Ok(())
    }

    /// Runs the group in one transaction. Without `savepoints`, stops with
    /// [`Stop::NeedsSavepoints`] at the first operation whose failure may
    /// have left writes behind.
    fn run_group(
        &mut self,
        ops: &mut [Box<dyn WriteOp>],
        published: &mut Vec<Vec<Event>>,
        savepoints: bool,
    ) -> Result<(), Stop> {
        let routes = self.shared.routes();
        let first_seq = self.last_seq;
        let single = ops.len() == 1;
        let savepoints = savepoints && !single;
        self.raw
            .run("BEGIN IMMEDIATE")
            .map_err(|e| fail_with(e, "BEGIN IMMEDIATE"))?;
        let mut any_ok = false;
        self.pending.clear();
        for op in ops.iter_mut() {
            if savepoints {
                // The events of the operations before go in outside this
                // one's savepoint: should this one flush them and then be
                // rolled back, they must stay.
                self.insert_pending()?;
                self.raw
                    .run("SAVEPOINT op")
                    .map_err(|e| fail_with(e, "SAVEPOINT"))?;
            }
            #[cfg(debug_assertions)]
            let changes_before = total_changes(&mut self.conn);
            let before = self.last_seq;
            let pending_before = self.pending.len();
            self.cache.begin();
            let mut tx = Tx {
                db: &mut self.conn,
                raw: &mut self.raw,
                wrote: false,
                now: self.shared.now(),
                cache: &mut self.cache,
                routes: &routes,
                last_seq: &mut self.last_seq,
                events: Vec::new(),
                pending: &mut self.pending,
                op_pending: pending_before,
                dependencies: &mut self.dependencies,
            };
            let applied = op.apply(&mut tx);
            let (events, wrote) = (tx.events, tx.wrote);
            #[cfg(debug_assertions)]
            assert!(
                wrote || total_changes(&mut self.conn) == changes_before,
                "an operation wrote through Tx::conn instead of Tx::write_conn"
            );
            let Err(failure) = applied else {
                any_ok = true;
                published.push(events);
                if savepoints {
                    self.raw
                        .run("RELEASE op")
                        .map_err(|e| fail_with(e, "RELEASE"))?;
                }
                continue;
            };
            self.last_seq = before;
            // Its events not inserted yet go with it. (An operation that
            // flushed them did so after writing: it is rolled back below.)
            self.pending
                .truncate(pending_before.min(self.pending.len()));
            self.cache.rollback();
            published.push(Vec::new());
            if single {
                // If SQLite already rolled back, this fails harmlessly:
                // either way nothing of the one operation remains.
                let _ = self.conn.batch_execute("ROLLBACK");
                return Ok(());
            }
            if !savepoints {
                if failure.refusal && !wrote {
                    // Refused before it wrote: nothing to undo.
                    continue;
                }
                return Err(Stop::NeedsSavepoints);
            }
            // Some failures (a full disk, an I/O error) make SQLite roll
            // back the whole transaction; the savepoint is then gone and
            // the group fails with the operation's error as its cause.
            let error = failure.error;
            self.conn
                .batch_execute("ROLLBACK TO op; RELEASE op")
                .map_err(|_| {
                    Stop::Failed(StoreError::backend(
                        error.kind(),
                        format!(
                            "{error} (SQLite rolled back the whole group of writes \
                             this one was in; nothing of them was committed)"
                        ),
                    ))
                })?;
        }
        if any_ok {
            self.insert_pending()?;
            if self.last_seq != first_seq {
                // The counter only goes up, in the same commit as the
                // events, so pruned events never give their numbers back.
                let seq = i64::try_from(self.last_seq).unwrap_or(i64::MAX);
                let save = diesel::update(store_state::table).set(store_state::last_seq.eq(seq));
                Fixed::<kind::SaveLastSeq, _>::new(save)
                    .execute(&mut self.conn)
                    .map_err(|e| fail(e, "saving the event sequence"))?;
            }
            // Nothing is acknowledged into a file that is gone.
            if let Some(guard) = &mut self.guard {
                guard.check().map_err(Stop::Failed)?;
            }
        }
        let end = if any_ok { "COMMIT" } else { "ROLLBACK" };
        self.raw.run(end).map_err(|e| fail_with(e, end))?;
        Ok(())
    }
}

/// Why a run of a group stopped before its commit.
enum Stop {
    /// The group failed; every caller gets this error.
    Failed(GroupFailure),
    /// An operation failed after it may have written: run the group again
    /// with savepoints.
    NeedsSavepoints,
}

impl From<GroupFailure> for Stop {
    fn from(failure: GroupFailure) -> Self {
        Self::Failed(failure)
    }
}

/// SQLite's count of rows changed on this connection, to check in debug
/// builds that every write goes through [`Tx::write_conn`].
#[cfg(debug_assertions)]
fn total_changes(conn: &mut SqliteConnection) -> i64 {
    #[derive(QueryableByName)]
    struct Changes {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT total_changes() AS n")
        .load::<Changes>(conn)
        .ok()
        .and_then(|v| v.into_iter().next())
        .map_or(-1, |c| c.n)
}
