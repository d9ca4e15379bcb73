//! The [`JobStore`] contract: everything the runtime, the event layer and the
//! server need from persistence.
//!
//! # Roles
//! - The **façade** enqueues, reads, cancels, retries and deletes.
//! - The **pump** claims runnable jobs, each with a [`Lease`] (fencing token).
//! - The **phase runner** writes phase and job transitions with that lease.
//! - The **event layer** reads events after a sequence number and works the
//!   webhook outbox; the **retention scheduler** marks stale and deletes.
//!
//! # Guarantees every implementation gives
//! - A write returns only after it is durable (for a durable store).
//! - A write that changes state appends its event(s), and the webhook
//!   deliveries those events route to, in the same atomic step.
//! - A write the transition table refuses, or whose lease is stale, returns an
//!   error and changes nothing.
//! - Event sequence numbers are strictly increasing and published to the
//!   [`EventSink`] in that order, after the commit.
//!
//! The conformance suite (`jobqueue_core::testing`, feature `testing`) checks
//! all of this; [`MemoryStore`](crate::MemoryStore) is the reference.
//!
//! # Pitfalls
//! - Do not hold a store call across a user's phase code: the lease may be
//!   lost meanwhile; every write re-checks it.
//! - [`EventSink::publish`] runs on the writer's path: it must not block.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::StoreError;
use crate::event::Event;
use crate::id::{DeliveryId, JobId, LeaseToken};
use crate::job::{Job, JobError, NewJob, Progress};
use crate::listen::{Capabilities, StoreListener};
use crate::machine::{EventType, JobStatus};
use crate::outbox::{AttemptOutcome, Delivery, DeliveryFilter, WebhookRoute};

/// A claim on a running job: the job and the fencing token its writes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job.
    pub job_id: JobId,
    /// The claim's fencing token.
    pub token: LeaseToken,
    /// The attempt this claim started (1-based).
    pub attempt: u32,
}

/// What a heartbeat found for one lease (see [`JobStore::heartbeat_many`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Renewal {
    /// The lease is still held and now runs until `now + extend`.
    Held {
        /// Whether a cancel was requested meanwhile.
        cancel_requested: bool,
    },
    /// The lease is no longer held (another claim took the job, it ended,
    /// or it is gone): nothing was written for it.
    Lost,
}

impl Renewal {
    /// What the result of one [`JobStore::heartbeat`] says: a lost lease
    /// (`LeaseLost`, or `JobNotFound` for a job deleted meanwhile) is
    /// [`Lost`](Self::Lost); any other error stays an error.
    pub fn of(heartbeat: Result<bool, StoreError>) -> Result<Self, StoreError> {
        match heartbeat {
            Ok(cancel_requested) => Ok(Self::Held { cancel_requested }),
            Err(StoreError::LeaseLost(_) | StoreError::JobNotFound(_)) => Ok(Self::Lost),
            Err(e) => Err(e),
        }
    }
}

/// [`JobStore::heartbeat_many`] made of one [`JobStore::heartbeat`] per
/// lease: the trait's default, and what a store falls back on for a batch
/// it cannot renew in one step.
pub async fn heartbeat_each<S: JobStore + ?Sized>(
    store: &S,
    leases: &[Lease],
    extend: Duration,
) -> Result<Vec<Renewal>, StoreError> {
    let mut renewals = Vec::with_capacity(leases.len());
    for lease in leases {
        renewals.push(Renewal::of(store.heartbeat(lease, extend).await)?);
    }
    Ok(renewals)
}

/// A job handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// Its lease.
    pub lease: Lease,
    /// The job as it was after the claim (status `running`).
    pub job: Job,
}

/// What to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimRequest {
    /// At most this many jobs.
    pub limit: usize,
    /// The lease lasts this long unless a heartbeat renews it.
    pub lease_for: Duration,
    /// Skip jobs of these pipelines (e.g. those at their concurrency cap).
    pub exclude_pipelines: Vec<String>,
    /// Claim only jobs of these pipelines (those the claiming process can
    /// run); `None` claims any. A job of a pipeline no process defines then
    /// stays queued instead of being claimed and failed.
    pub pipelines: Option<Vec<String>>,
    /// Also start each claimed job's first phase not completed, in the same
    /// step (event `job.phase.started` after `job.started`), so the worker
    /// does not come back for it. A store may ignore this: the worker starts
    /// a phase the claimed job does not show as running.
    pub start_phase: bool,
    /// Caps on running jobs per pipeline that hold across every process
    /// sharing the store: a job of a listed pipeline is claimed only while
    /// fewer than its cap of that pipeline's jobs are running, counted in
    /// the store. A store one process owns may ignore this (the runtime's
    /// own count is then the whole count).
    pub pipeline_caps: Vec<(String, usize)>,
    /// Who claims (a process or worker name), recorded on each attempt it
    /// starts, for operators; `None` records nothing.
    pub worker: Option<String>,
}

impl ClaimRequest {
    /// Up to `limit` jobs with a 30 s lease.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            lease_for: Duration::from_secs(30),
            exclude_pipelines: Vec::new(),
            pipelines: None,
            start_phase: false,
            pipeline_caps: Vec::new(),
            worker: None,
        }
    }

    /// Caps running jobs per pipeline across every process (see
    /// [`ClaimRequest::pipeline_caps`]).
    pub fn pipeline_caps(mut self, caps: Vec<(String, usize)>) -> Self {
        self.pipeline_caps = caps;
        self
    }

    /// Records `worker` on each attempt this claim starts.
    pub fn worker(mut self, worker: impl Into<String>) -> Self {
        self.worker = Some(worker.into());
        self
    }

    /// Starts each claimed job's first phase not completed with the claim
    /// (see [`ClaimRequest::start_phase`]).
    pub fn start_phase(mut self) -> Self {
        self.start_phase = true;
        self
    }

    /// Leases last `lease_for` unless a heartbeat renews them.
    pub fn lease_for(mut self, lease_for: Duration) -> Self {
        self.lease_for = lease_for;
        self
    }

    /// Skips jobs of these pipelines.
    pub fn exclude_pipelines(mut self, pipelines: Vec<String>) -> Self {
        self.exclude_pipelines = pipelines;
        self
    }

    /// Claims only jobs of these pipelines.
    pub fn pipelines(mut self, pipelines: Vec<String>) -> Self {
        self.pipelines = Some(pipelines);
        self
    }
}

/// What [`JobStore::advance`] does after it completes a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start this phase (event `job.phase.started`).
    Phase(usize),
    /// Complete the job (event `job.completed`); every phase must then be
    /// completed.
    Complete,
}

/// How a phase failure ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Queue the job again at this time; it resumes at the failed phase.
    RetryAt(OffsetDateTime),
    /// Fail the job for good.
    Fail,
}

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled.
    Cancelled(Job),
    /// The job is running; it is flagged, and its worker finishes the cancel.
    Requested(Job),
}

/// Which running jobs [`JobStore::recover`] interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoverScope {
    /// Every running job: the process that ran them is known to be gone
    /// (one process per store, at startup).
    All,
    /// Only jobs whose lease expired: for a store several processes share
    /// (other processes may be alive and running theirs), or to rescue a
    /// job of this process whose worker stopped renewing its lease.
    ExpiredLeases,
}

/// One line of [`JobStore::counts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCount {
    /// The pipeline.
    pub pipeline: String,
    /// The status.
    pub status: JobStatus,
    /// How many jobs of that pipeline are in that status.
    pub count: u64,
}

/// What [`JobStore::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Ended webhook deliveries.
    pub deliveries: usize,
    /// `job.deleted` events of long-deleted jobs.
    pub tombstones: usize,
}

/// Which jobs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only these statuses; empty means all.
    pub statuses: Vec<JobStatus>,
    /// Only this pipeline.
    pub pipeline: Option<String>,
    /// At most this many per page (0 means the default, 50).
    pub limit: usize,
    /// Continue after this job (the previous page's `next_cursor`).
    pub cursor: Option<JobId>,
}

/// One page of jobs, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<JobId>,
}

/// Which events to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this job's.
    pub job: Option<JobId>,
    /// Only these types; empty means all.
    pub types: Vec<EventType>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.job.is_none_or(|j| Some(j) == event.job_id)
            && (self.types.is_empty() || self.types.contains(&event.event_type()))
    }
}

/// Receives every event after its commit, in sequence order.
pub trait EventSink: Send + Sync {
    /// Called once per committed write with the events it appended. Must not
    /// block: buffer or drop, never wait. It runs on the store's write path;
    /// a panic in it is caught by the store (the write stays committed and
    /// those events are only in the store, where subscribers resync from).
    fn publish(&self, events: &[Event]);

    /// [`publish`](EventSink::publish), with the events handed over: a sink
    /// that keeps them (a ring of recent events, a channel) can move them
    /// instead of cloning each. The stores call this one; the default lends
    /// the events to `publish`.
    fn publish_owned(&self, events: Vec<Event>) {
        self.publish(&events);
    }
}

/// The persistence contract of jobqueue. Object safe: use it as
/// `Arc<dyn JobStore>`.
///
/// Every method that takes a [`Lease`] fails with
/// [`StoreError::LeaseLost`] and changes nothing when the job's current lease
/// is not that one.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Sets the receiver of committed events (replaces any earlier one).
    fn set_event_sink(&self, sink: Arc<dyn EventSink>);

    /// Sets the configured webhook endpoints that future events route to.
    fn set_webhook_routes(&self, routes: Vec<WebhookRoute>);

    /// What this store supports (see [`Capabilities`]). The default: a
    /// store one process owns, without a listener.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Adds a listener for [`Notice`](crate::Notice)s: runnable work and
    /// committed events, of every process sharing the store (see
    /// [`crate::listen`]). Returns whether the store will send any; the
    /// default sends none (`false`), and its users poll.
    fn listen(&self, listener: Arc<dyn StoreListener>) -> bool {
        let _ = listener;
        false
    }

    /// Takes or keeps the leadership of `role` (say `"retention"`) for
    /// `holder` until `now + ttl`, and returns whether `holder` leads. A
    /// holder that leads stays leader while it calls this again before its
    /// term ends; once a term ended without renewal, the next caller takes
    /// over. Singleton work (retention, lease rescue) runs only on the
    /// leader of a shared store. The default, for a store one process
    /// owns, always answers `true`: a shared store must override it.
    async fn try_lead(&self, role: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let _ = (role, holder, ttl);
        Ok(true)
    }

    /// Claims up to `limit` due deliveries for `lease_for`: no other call
    /// returns them again before that time has passed, unless
    /// [`record_attempt`](Self::record_attempt) recorded an attempt that
    /// made them due again. So two dispatchers sharing a store never post
    /// one delivery at the same time. The default, for a store one process
    /// (and one dispatcher) owns, is [`due_deliveries`](Self::due_deliveries).
    async fn claim_deliveries(
        &self,
        limit: usize,
        lease_for: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let _ = lease_for;
        self.due_deliveries(limit).await
    }

    /// Stops the store: the writes already sent still commit, later calls
    /// fail with [`ErrorKind::Closed`](crate::ErrorKind::Closed), and once
    /// this returns the store has let go of what it held (a database file's
    /// lock, connections), so a new store can open it at once. Idempotent.
    /// The default does nothing, for stores that hold nothing.
    async fn close(&self) {}

    /// Persists a job (event `job.created`). Fails with `Duplicate` when a
    /// queued or running job holds its unique key, and with `Invalid` when
    /// one of its [`depends_on`](NewJob::depends_on) does not exist or
    /// failed, was cancelled or is stale.
    ///
    /// Dependencies: a job waits while a dependency it named is not
    /// completed (and still exists): [`claim`](Self::claim) skips it. The
    /// write that completes or deletes a dependency releases its dependents;
    /// every write that fails or cancels one ends its queued dependents in
    /// the same atomic step, transitively, each as its
    /// [`on_dependency_failure`](NewJob::on_dependency_failure) says (see
    /// [`Job::dependency_ended`]), with its own event.
    async fn enqueue(&self, job: NewJob) -> Result<Job, StoreError>;

    /// Persists all the jobs or none (`Batch` names the bad one).
    async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>, StoreError>;

    /// Claims up to `limit` queued jobs whose `run_at` has come and that
    /// wait for no dependency (of the request's pipelines only, if it names
    /// them; never of a paused pipeline, see
    /// [`pause_pipeline`](Self::pause_pipeline)), highest priority first,
    /// then earliest `run_at`, then oldest. Each claim starts
    /// an attempt (event `job.started`) with a new fencing token.
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError>;

    /// Renews the lease until `now + extend`; returns whether a cancel was
    /// requested meanwhile.
    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<bool, StoreError>;

    /// Renews every lease of `leases` that is still held until
    /// `now + extend`, in one step where the store can; returns, lease by
    /// lease in the order given, whether it is still held (and whether a
    /// cancel was requested) or lost. A lost lease changes nothing and does
    /// not fail the others. Fails as a whole only on a store error (or, as
    /// [`heartbeat`](Self::heartbeat), an `extend` too long to represent).
    /// The default calls [`heartbeat`](Self::heartbeat) lease by lease.
    async fn heartbeat_many(
        &self,
        leases: &[Lease],
        extend: Duration,
    ) -> Result<Vec<Renewal>, StoreError> {
        heartbeat_each(self, leases, extend).await
    }

    /// The claimed job takes the pipeline's current phase list, matched by
    /// name (see [`Job::reshape_phases`]): a deploy that renamed, added or
    /// removed phases does not fail its queued jobs. No event.
    async fn reshape_phases(&self, lease: &Lease, phases: Vec<String>) -> Result<Job, StoreError>;

    /// Phase `index` starts (event `job.phase.started`).
    async fn phase_started(&self, lease: &Lease, index: usize) -> Result<(), StoreError>;

    /// The running phase `index` reports progress (event `job.phase.progress`).
    async fn phase_progress(
        &self,
        lease: &Lease,
        index: usize,
        progress: Progress,
    ) -> Result<(), StoreError>;

    /// The running phase `index` saves `checkpoint` (see
    /// [`Job::save_checkpoint`]), durably before this returns: its next run,
    /// after a failure, a crash, a shutdown or a snooze, reads it back. No
    /// event. `Invalid` past the JSON limits, `Conflict` when the phase is
    /// not running; either way nothing changes.
    async fn save_checkpoint(
        &self,
        lease: &Lease,
        index: usize,
        checkpoint: Value,
    ) -> Result<(), StoreError>;

    /// The running phase `index` asks to run again at `run_at` (see
    /// [`Job::snooze`]): the job is queued at that time, the phase
    /// `pending`, and the attempt is not counted (event `job.snoozed`).
    /// `Invalid` for a time past what a store holds.
    async fn snooze(
        &self,
        lease: &Lease,
        index: usize,
        run_at: OffsetDateTime,
    ) -> Result<Job, StoreError>;

    /// Phase `index` completed with `result`, stored with the status change
    /// (event `job.phase.completed`).
    async fn phase_completed(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
    ) -> Result<(), StoreError>;

    /// Phase `index` failed (event `job.phase.failed`), and the job is queued
    /// again or fails (then also `job.failed`), in one step.
    async fn phase_failed(
        &self,
        lease: &Lease,
        index: usize,
        error: String,
        outcome: FailureOutcome,
    ) -> Result<Job, StoreError>;

    /// Phase `index` completed with `result` and the job goes on, in one
    /// atomic step: the next phase starts, or the job completes (see
    /// [`Next`]). The same events, in the same order, as
    /// [`phase_completed`](Self::phase_completed) followed by
    /// [`phase_started`](Self::phase_started) or
    /// [`complete_job`](Self::complete_job); if the second step is refused,
    /// nothing is written. The default makes the two calls, which is correct
    /// but not atomic; stores override it to save a round trip per phase.
    async fn advance(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
        next: Next,
    ) -> Result<(), StoreError> {
        self.phase_completed(lease, index, result).await?;
        match next {
            Next::Phase(n) => self.phase_started(lease, n).await,
            Next::Complete => self.complete_job(lease).await.map(drop),
        }
    }

    /// Every phase completed: the job completes (event `job.completed` with
    /// all results). Refused while a phase is not completed.
    async fn complete_job(&self, lease: &Lease) -> Result<Job, StoreError>;

    /// The job fails outside any phase (e.g. its worker panicked outside
    /// the phase on its last attempt; event `job.failed`).
    async fn fail_job(&self, lease: &Lease, error: JobError) -> Result<Job, StoreError>;

    /// The running job is cancelled by its worker after a cancel request
    /// (event `job.cancelled`); its running phase becomes `cancelled`.
    async fn cancel_running(&self, lease: &Lease) -> Result<Job, StoreError>;

    /// The running job is cut short by a shutdown: queued again with its
    /// interrupted context (event `job.interrupted`).
    async fn interrupt(&self, lease: &Lease) -> Result<Job, StoreError>;

    /// Recovers running jobs left by a process that is gone (see
    /// [`RecoverScope`] and [`Job::recover`]): each keeps its interrupted
    /// context and is queued again (event `job.interrupted`), or fails
    /// (event `job.failed`) if that run was its last attempt, so a job that
    /// crashes its process every time is not run forever.
    async fn recover(&self, scope: RecoverScope) -> Result<Vec<Job>, StoreError>;

    /// A user cancels a job: queued ones at once, running ones are flagged.
    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome, StoreError>;

    /// A user retries a failed or cancelled job: queued now with a fresh
    /// attempt budget, resuming at the first phase not completed (event
    /// `job.retried`).
    async fn retry(&self, id: JobId) -> Result<Job, StoreError>;

    /// A user deletes a finished or stale job with all its rows (event
    /// `job.deleted`, which webhooks still receive).
    async fn delete(&self, id: JobId) -> Result<(), StoreError>;

    /// One job with its phases.
    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// A page of jobs, newest first.
    async fn list(&self, filter: JobFilter) -> Result<JobPage, StoreError>;

    /// How many jobs there are, by pipeline and status (only the pairs that
    /// have any), without reading the jobs themselves. In order: by
    /// pipeline (compared as bytes), then by status in the order of
    /// [`JobStatus::ALL`](crate::JobStatus::ALL).
    async fn counts(&self) -> Result<Vec<JobCount>, StoreError>;

    /// Up to `limit` events with `seq > after`, oldest first.
    async fn events_after(
        &self,
        after: u64,
        filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The highest sequence number used so far (0 before the first event).
    async fn last_seq(&self) -> Result<u64, StoreError>;

    /// Marks up to `limit` finished jobs whose `finished_at` is before
    /// `finished_before` stale (event `job.stale`).
    async fn mark_stale(
        &self,
        finished_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError>;

    /// Deletes up to `limit` stale jobs whose `stale_at` is before
    /// `stale_before`, each with all its rows (event `job.deleted`).
    async fn delete_stale(
        &self,
        stale_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError>;

    /// Removes history retention no longer needs, up to `limit` rows of
    /// each kind: webhook deliveries that ended (delivered or failed) and
    /// were created before `before`, and the `job.deleted` events of jobs
    /// deleted before `before` (the only events that outlive their jobs).
    /// Pending deliveries and the events of jobs that still exist are never
    /// touched, and sequence numbers are never reused afterwards.
    async fn prune(&self, before: OffsetDateTime, limit: usize) -> Result<Pruned, StoreError>;

    /// Pauses `pipeline`: from the commit on, no claim returns its queued
    /// jobs (running ones go on and finish; a job queued again for a retry
    /// waits), until [`resume_pipeline`](Self::resume_pipeline). Enqueues
    /// still succeed. Persisted, so it holds across restarts and for every
    /// process sharing the store. Appends `pipeline.paused` (no job id) and
    /// returns `true`; pausing a paused pipeline changes nothing, appends no
    /// event and returns `false`. Any valid name is accepted, also of a
    /// pipeline no job has used yet; an invalid one (empty, longer than 256
    /// bytes) is `Invalid`.
    async fn pause_pipeline(&self, pipeline: &str) -> Result<bool, StoreError>;

    /// Resumes a paused `pipeline`: its queued jobs are claimable again, and
    /// the store's listeners are told that jobs are available. Appends
    /// `pipeline.resumed` and returns `true`; resuming a pipeline that is
    /// not paused changes nothing, appends no event and returns `false`.
    async fn resume_pipeline(&self, pipeline: &str) -> Result<bool, StoreError>;

    /// The paused pipelines, by name.
    async fn paused_pipelines(&self) -> Result<Vec<String>, StoreError>;

    /// Pending deliveries whose next attempt is due, oldest first.
    async fn due_deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// The earliest `next_attempt_at` of any pending delivery.
    async fn next_delivery_at(&self) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Records what an attempt came to.
    async fn record_attempt(
        &self,
        id: DeliveryId,
        outcome: AttemptOutcome,
    ) -> Result<Delivery, StoreError>;

    /// Lists deliveries, oldest first.
    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError>;
}
