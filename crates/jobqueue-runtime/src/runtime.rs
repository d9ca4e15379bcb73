//! The pump and the worker pool: claims runnable jobs in batches up to the
//! free slots, runs each on its own task through the phase runner, and stops
//! cleanly on shutdown.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use jobqueue_core::apply::lease_until;
use jobqueue_core::{
    CancelOutcome, ClaimRequest, Claimed, Clock, Health, JobCount, JobId, JobStatus, JobStore,
    LeaseToken, Notice, RecoverScope, RetryPolicy, SeededJitter, StoreError, StoreListener,
    SystemClock, TaskState, timefmt,
};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::heartbeats::Heartbeats;
use crate::metrics;
use crate::pipeline::Pipelines;
use crate::retention::{RetentionConfig, retention_loop};
use crate::runner;
use crate::schedule::{Schedule, Ticks, check_schedules, schedule_pass, scheduler_loop};
use crate::state::StateMap;
use crate::supervise::{LEASE_RESCUE, PUMP, RETENTION, SCHEDULER, Tasks, WORKERS, supervise};
use crate::wake::WakeTimes;

/// How the runtime behaves. `Default` gives sensible values for one process
/// on one SQLite file.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Jobs running at once, at most.
    pub concurrency: usize,
    /// The retry policy of pipelines without their own.
    pub retry: RetryPolicy,
    /// How long a claim lasts without a heartbeat.
    pub lease: Duration,
    /// How often a running job renews its lease (and notices cancel requests
    /// made through the store rather than [`Runtime::cancel`]). Longer than
    /// zero and shorter than `lease`.
    pub heartbeat: Duration,
    /// How often a running phase's latest progress is persisted, if it
    /// reported a new one. Longer than zero.
    pub progress_interval: Duration,
    /// The pump also looks for work this often, for jobs that became due
    /// without a wake-up here (enqueued straight through the store, or by
    /// another process on a store several processes share). Longer than
    /// zero.
    pub poll_interval: Duration,
    /// A phase told to stop (cancel, shutdown deadline) gets this long to
    /// return before it is dropped.
    pub stop_grace: Duration,
    /// Which running jobs to recover at startup.
    pub recover: RecoverScope,
    /// Where time comes from (the store should share it).
    pub clock: Arc<dyn Clock>,
    /// Seed of the backoff jitter; `None` seeds from the system.
    pub jitter_seed: Option<u64>,
    /// The retention scheduler's settings; `None` keeps every job forever.
    pub retention: Option<RetentionConfig>,
    /// Application state every phase reads with
    /// [`PhaseContext::state`](crate::PhaseContext::state).
    pub state: Arc<StateMap>,
    /// Periodic jobs (see [`Schedule`]); empty runs no scheduler.
    pub schedules: Vec<Schedule>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            progress_interval: Duration::from_millis(250),
            poll_interval: Duration::from_secs(1),
            stop_grace: Duration::from_secs(5),
            recover: RecoverScope::All,
            clock: Arc::new(SystemClock),
            jitter_seed: None,
            retention: None,
            state: Arc::default(),
            schedules: Vec::new(),
        }
    }
}

impl RuntimeConfig {
    /// Checks the settings, so that a bad one is refused where it is built
    /// with an error that names it, never a panic in a background task
    /// later: `concurrency` at least 1; `heartbeat` longer than zero and
    /// shorter than `lease`; a `lease` whose expiry a store can hold (before
    /// the year 10000); `poll_interval` and `progress_interval` longer than
    /// zero (both are periods something wakes up at); `retry` and
    /// `retention` valid ([`RetryPolicy::validate`],
    /// [`RetentionConfig::validate`]); each schedule valid alone
    /// ([`Schedule::validate`]; that its pipeline exists is checked at
    /// start). Durations too long to count
    /// (`progress_interval`, `stop_grace`) simply never pass.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        if self.heartbeat.is_zero() {
            return Err(format!(
                "heartbeat must be longer than zero (with a lease of {:?} there is no time to renew it)",
                self.lease
            ));
        }
        if self.heartbeat >= self.lease {
            return Err(format!(
                "heartbeat ({:?}) must be shorter than the lease ({:?})",
                self.heartbeat, self.lease
            ));
        }
        let expiry = lease_until(self.clock.now(), self.lease)
            .ok()
            .filter(|t| timefmt::in_range(*t));
        if expiry.is_none() {
            return Err(format!(
                "lease ({:?}) is too long: a claim made now would expire after {}",
                self.lease,
                timefmt::format(timefmt::MAX)
            ));
        }
        if self.poll_interval.is_zero() {
            return Err("poll_interval must be longer than zero".into());
        }
        if self.progress_interval.is_zero() {
            return Err("progress_interval must be longer than zero".into());
        }
        self.retry.validate().map_err(|e| format!("retry: {e}"))?;
        if let Some(retention) = &self.retention {
            retention
                .validate()
                .map_err(|e| format!("retention: {e}"))?;
        }
        for s in &self.schedules {
            s.validate()
                .map_err(|e| format!("schedule {:?}: {e}", s.name()))?;
        }
        Ok(())
    }
}

/// Counts of running jobs, and the cancel signal of each.
#[derive(Default)]
pub(crate) struct Running {
    pub(crate) total: usize,
    pub(crate) per_pipeline: HashMap<String, usize>,
    pub(crate) cancels: HashMap<JobId, CancellationToken>,
    /// The most jobs that ever ran at once (for tests and metrics).
    pub(crate) peak: usize,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) pipelines: Pipelines,
    pub(crate) config: RuntimeConfig,
    pub(crate) wake: Notify,
    wake_times: Mutex<WakeTimes>,
    pub(crate) running: Mutex<Running>,
    /// Fired when shutdown starts: stop claiming.
    pub(crate) stop_claiming: CancellationToken,
    /// Fired when the shutdown deadline passes: stop running phases.
    pub(crate) stop_phases: CancellationToken,
    pub(crate) jitter: Mutex<SeededJitter>,
    tracker: TaskTracker,
    /// The health of the background tasks.
    pub(crate) tasks: Tasks,
    /// This runtime's name as a leader of singleton work (retention, lease
    /// rescue) in a shared store: unique per process and start.
    pub(crate) holder: String,
    /// Renews the leases of every running phase, together.
    pub(crate) heartbeats: Heartbeats,
}

/// Wakes the pump on the store's notices of new work, and after its
/// listener came back (work may have been missed meanwhile).
struct PumpWaker(std::sync::Weak<Inner>);

impl StoreListener for PumpWaker {
    fn notice(&self, notice: Notice) {
        if matches!(notice, Notice::JobsAvailable | Notice::Resumed)
            && let Some(inner) = self.0.upgrade()
        {
            inner.wake.notify_one();
        }
    }
}

/// How long a leader's term lasts when it renews it every `period`:
/// three periods, at most a day.
pub(crate) fn leader_term(period: Duration) -> Duration {
    period
        .saturating_mul(3)
        .min(Duration::from_secs(24 * 60 * 60))
}

/// The leader role of lease rescue in a shared store.
pub(crate) const LEASE_RESCUE_ROLE: &str = "lease-rescue";

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are counters and maps updated in single statements;
    // a panic elsewhere cannot leave them half-changed.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn running(&self) -> MutexGuard<'_, Running> {
        lock(&self.running)
    }

    /// Wakes the pump now, and again at `at` if that is in the future.
    pub(crate) fn wake_at(&self, at: OffsetDateTime) {
        if at > self.config.clock.now() {
            lock(&self.wake_times).insert(at);
        }
        self.wake.notify_one();
    }

    pub(crate) fn backoff(&self, policy: &RetryPolicy, failed_attempt: u32) -> Duration {
        policy.backoff(failed_attempt, &mut *lock(&self.jitter))
    }

    /// How long the pump may sleep before it must look again.
    fn next_wait(&self) -> Duration {
        let now = self.config.clock.now();
        let next = lock(&self.wake_times).next_after(now);
        #[expect(
            clippy::arithmetic_side_effects,
            reason = "the difference of two OffsetDateTimes always fits a time::Duration"
        )]
        let until_next = next.map(|t| (t - now).unsigned_abs());
        until_next.map_or(self.config.poll_interval, |d| {
            d.min(self.config.poll_interval)
        })
    }
}

/// A running job queue runtime: the pump, its workers and their signals.
pub struct Runtime {
    inner: Arc<Inner>,
    pump: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// Recovering interrupted jobs failed.
    #[error("recovering interrupted jobs failed")]
    Recover(#[source] StoreError),
}

impl Runtime {
    /// Recovers jobs a previous process left running, then starts the pump.
    /// Must be called within a tokio runtime. Settings that fail
    /// [`RuntimeConfig::validate`] are [`StartError::Config`], and nothing
    /// is started.
    pub async fn start(
        store: Arc<dyn JobStore>,
        pipelines: Pipelines,
        config: RuntimeConfig,
    ) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        check_schedules(&config.schedules, &pipelines).map_err(StartError::Config)?;
        let recovered = store
            .recover(config.recover)
            .await
            .map_err(StartError::Recover)?;
        for job in &recovered {
            info!(job_id = %job.id, pipeline = %job.pipeline, interrupted = ?job.interrupted, "recovered interrupted job");
        }
        match stranded(&*store, &pipelines).await {
            Ok(counts) => {
                for c in counts {
                    warn!(pipeline = %c.pipeline, queued = c.count, "queued jobs of a pipeline this process does not define: they wait for a process that defines it");
                }
            }
            Err(e) => debug!(error = %e, "could not count jobs of unknown pipelines"),
        }
        let seed = config.jitter_seed;
        let heartbeats = Heartbeats::spawn(store.clone(), config.heartbeat, config.lease);
        let inner = Arc::new(Inner {
            store,
            pipelines,
            config,
            wake: Notify::new(),
            wake_times: Mutex::default(),
            running: Mutex::default(),
            stop_claiming: CancellationToken::new(),
            stop_phases: CancellationToken::new(),
            jitter: Mutex::new(seed.map_or_else(SeededJitter::from_entropy, SeededJitter::new)),
            tracker: TaskTracker::new(),
            tasks: Tasks::default(),
            holder: format!("pid{}-{}", std::process::id(), LeaseToken::new()),
            heartbeats,
        });
        // Work enqueued by another process (or retried, rescued) wakes the
        // pump at once; without a listener, or while it is lost, the pump
        // polls every `poll_interval`.
        let listening = inner
            .store
            .listen(Arc::new(PumpWaker(Arc::downgrade(&inner))));
        debug!(listening, "store listener");
        inner.tasks.add(PUMP);
        inner.tasks.add(WORKERS);
        if let Some(retention) = inner.config.retention {
            inner.tasks.add(RETENTION);
            inner
                .tracker
                .spawn(supervise(inner.clone(), RETENTION, move |inner| {
                    let (store, clock) = (inner.store.clone(), inner.config.clock.clone());
                    let holder = inner.holder.clone();
                    retention_loop(store, clock, retention, inner.stop_claiming.clone(), holder)
                }));
        }
        if inner.config.recover == RecoverScope::ExpiredLeases {
            inner.tasks.add(LEASE_RESCUE);
            inner
                .tracker
                .spawn(supervise(inner.clone(), LEASE_RESCUE, rescue_loop));
        }
        if !inner.config.schedules.is_empty() {
            // The first pass runs before `start` returns, so each
            // schedule's next tick is enqueued once the queue is up. A
            // panic in it (a store bug) is the scheduler's, counted as
            // under `supervise`; the loop's first pass tries again.
            inner.tasks.add(SCHEDULER);
            let mut ticks = Ticks::default();
            let first = AssertUnwindSafe(schedule_pass(&inner, &mut ticks));
            if let Err(panic) = first.catch_unwind().await {
                let message = jobqueue_core::health::panic_message(&*panic);
                tracing::error!(task = SCHEDULER, panic = %message, "the scheduler's first pass panicked; its loop tries again");
                inner.tasks.panicked(SCHEDULER, message);
            }
            inner
                .tracker
                .spawn(supervise(inner.clone(), SCHEDULER, scheduler_loop));
        }
        let pump = tokio::spawn(supervise(inner.clone(), PUMP, pump));
        Ok(Self {
            inner,
            pump: Mutex::new(Some(pump)),
        })
    }

    /// How the background tasks are doing: one entry each for `"pump"`,
    /// `"workers"` (the worker tasks together: panics outside a phase),
    /// `"retention"` when it is configured, `"scheduler"` when there are
    /// schedules, and `"lease-rescue"` when
    /// expired leases are rescued ([`RecoverScope::ExpiredLeases`]). A task
    /// that panicked was restarted and counts the panic; after
    /// [`shutdown`](Self::shutdown) every task is
    /// [`Stopped`](jobqueue_core::TaskState::Stopped).
    pub fn health(&self) -> Health {
        self.inner.tasks.health()
    }

    /// Queued jobs of pipelines this process does not define, counted by
    /// pipeline. Claims name only this process's pipelines, so such jobs
    /// are neither run nor failed here: they wait for a process that
    /// defines their pipeline (a deploy that renamed or dropped one leaves
    /// them here to be seen). Logged as a warning at start.
    pub async fn stranded(&self) -> Result<Vec<JobCount>, StoreError> {
        stranded(&*self.inner.store, &self.inner.pipelines).await
    }

    /// The store the runtime works on.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    /// The pipelines it runs.
    pub fn pipelines(&self) -> &Pipelines {
        &self.inner.pipelines
    }

    /// Its configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Tells the pump that a job was enqueued that becomes runnable at
    /// `run_at`: it claims at once, or wakes at that time.
    pub fn notify_enqueued(&self, run_at: OffsetDateTime) {
        self.inner.wake_at(run_at);
    }

    /// Tells the pump that queued jobs may have become claimable (say, a
    /// pipeline was resumed): it claims at once.
    pub fn notify_runnable(&self) {
        self.inner.wake.notify_one();
    }

    /// Cancels a job: a queued one at once, a running one through its
    /// cancellation signal (it ends `cancelled` after its phase returns or
    /// the stop grace ends).
    pub async fn cancel(&self, id: JobId) -> Result<CancelOutcome, StoreError> {
        let outcome = self.inner.store.request_cancel(id).await?;
        if let CancelOutcome::Requested(_) = &outcome
            && let Some(token) = self.inner.running().cancels.get(&id)
        {
            token.cancel();
        }
        Ok(outcome)
    }

    /// Jobs running in this process now.
    pub fn running_jobs(&self) -> usize {
        self.inner.running().total
    }

    /// The most jobs that ran at once in this process.
    pub fn peak_running(&self) -> usize {
        self.inner.running().peak
    }

    /// Stops claiming, lets running phases finish within `timeout`, then
    /// tells the rest to stop and records them as interrupted: they resume
    /// at the next start. Returns once every worker has ended.
    pub async fn shutdown(&self, timeout: Duration) {
        info!(?timeout, "shutting down: no more claims");
        self.inner.stop_claiming.cancel();
        let pump = lock(&self.pump).take();
        if let Some(pump) = pump
            && let Err(e) = pump.await
        {
            warn!(error = %e, "pump task ended abnormally");
        }
        self.inner.tracker.close();
        if tokio::time::timeout(timeout, self.inner.tracker.wait())
            .await
            .is_err()
        {
            let left = self.running_jobs();
            info!(
                left,
                "shutdown deadline passed: stopping running phases as interrupted"
            );
            self.inner.stop_phases.cancel();
            self.inner.tracker.wait().await;
        }
        self.inner.tasks.set_state(WORKERS, TaskState::Stopped);
        info!("shutdown complete");
    }
}

async fn stranded(
    store: &dyn JobStore,
    pipelines: &Pipelines,
) -> Result<Vec<JobCount>, StoreError> {
    Ok(store
        .counts()
        .await?
        .into_iter()
        .filter(|c| c.status == JobStatus::Queued && pipelines.get(&c.pipeline).is_none())
        .collect())
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropping without `shutdown` stops claiming; running workers end with
        // their tasks when the tokio runtime goes, and recovery resumes them.
        self.inner.stop_claiming.cancel();
    }
}

/// The least time between two samples of the queue-depth gauge. A sample
/// counts the store's jobs by status and pipeline, which reads the whole
/// jobs table: once a second it cost a busy queue of a million jobs a
/// tenth of a core and a large sort in memory.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(10);

async fn pump(inner: Arc<Inner>) {
    let mut sampled: Option<tokio::time::Instant> = None;
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let every = inner.config.poll_interval.max(QUEUE_DEPTH_EVERY);
    loop {
        if inner.stop_claiming.is_cancelled() {
            break;
        }
        claim_round(&inner).await;
        if sampled.is_none_or(|at| at.elapsed() >= every)
            && !sampling.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            // On a task of its own: the pump never waits for the count,
            // and one sample at a time runs.
            let (inner, sampling) = (Arc::clone(&inner), Arc::clone(&sampling));
            tokio::spawn(async move {
                sample_queue_depth(&inner).await;
                sampling.store(false, std::sync::atomic::Ordering::Release);
            });
            sampled = Some(tokio::time::Instant::now());
        }
        let wait = inner.next_wait();
        tokio::select! {
            () = inner.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = inner.stop_claiming.cancelled() => break,
        }
    }
    debug!("pump stopped");
}

/// On a store several processes share (not an SQLite file, which one
/// process has), a process that dies leaves its jobs `running` until their
/// leases expire; every lease period this recovers such jobs (queued again
/// as interrupted, or failed on their last attempt) so a live process picks
/// them up. In one process it rescues a job whose worker stopped renewing
/// its lease. Fencing keeps a worker that was only slow from writing after
/// that.
async fn rescue_loop(inner: Arc<Inner>) {
    // Every half lease, with a term of one lease: a job of a dead process
    // is rescued within about one and a half leases of its last heartbeat,
    // and a dead leader is replaced within about one lease and a half too.
    let period = inner
        .config
        .lease
        .checked_div(2)
        .unwrap_or_default()
        .max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let term = inner.config.lease;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = inner.stop_claiming.cancelled() => break,
        }
        // One process rescues for all: the leader (see `JobStore::try_lead`).
        match inner
            .store
            .try_lead(LEASE_RESCUE_ROLE, &inner.holder, term)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(error = %e, "lease rescue: could not take the lead; trying again next period");
                continue;
            }
        }
        match inner.store.recover(RecoverScope::ExpiredLeases).await {
            Ok(jobs) if !jobs.is_empty() => {
                info!(rescued = jobs.len(), "queued jobs whose lease expired");
                inner.wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "rescuing expired leases failed; trying again next period"),
        }
    }
}

/// Records the queued jobs of each pipeline (this process's, and any other
/// with queued jobs) as the queue-depth gauge.
async fn sample_queue_depth(inner: &Inner) {
    let counts = match inner.store.counts().await {
        Ok(counts) => counts,
        Err(e) => {
            debug!(error = %e, "could not count queued jobs for the queue-depth metric");
            return;
        }
    };
    let mut depth: HashMap<String, u64> = inner
        .pipelines
        .names()
        .into_iter()
        .map(|p| (p, 0))
        .collect();
    for c in counts.into_iter().filter(|c| c.status == JobStatus::Queued) {
        *depth.entry(c.pipeline).or_default() = c.count;
    }
    for (pipeline, queued) in depth {
        metrics::queue_depth(&pipeline, queued);
    }
}

/// Claims while there are free slots and jobs to claim.
async fn claim_round(inner: &Arc<Inner>) {
    loop {
        let (limit, exclude, caps) = {
            let running = inner.running();
            let free = inner.config.concurrency.saturating_sub(running.total);
            let mut exclude = Vec::new();
            // A batch may hold jobs of any pipeline, so it is no larger than
            // the room left under the tightest pipeline cap it could hit.
            let mut room = usize::MAX;
            let mut caps = Vec::new();
            for p in inner.pipelines.iter() {
                if let Some(cap) = p.concurrency {
                    caps.push((p.name().to_owned(), cap));
                    let used = running.per_pipeline.get(p.name()).copied().unwrap_or(0);
                    if used >= cap {
                        exclude.push(p.name().to_owned());
                    } else {
                        room = room.min(cap.saturating_sub(used));
                    }
                }
            }
            (free.min(room), exclude, caps)
        };
        if limit == 0 {
            return;
        }
        // Only the pipelines this process runs: a job of another pipeline
        // stays queued for a process that defines it (see `Runtime::stranded`).
        // The claim also starts each job's first phase: one write fewer a
        // job (the runner starts a phase the claim did not).
        // The caps also go to the store, which holds them across every
        // process sharing it (a store one process owns may ignore them).
        let req = ClaimRequest::new(limit)
            .lease_for(inner.config.lease)
            .exclude_pipelines(exclude)
            .pipelines(inner.pipelines.names())
            .pipeline_caps(caps)
            .worker(inner.holder.clone())
            .start_phase();
        let claimed = match inner.store.claim(req).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, kind = ?e.kind(), "claim failed; trying again at the next wake-up");
                return;
            }
        };
        let n = claimed.len();
        let now = inner.config.clock.now();
        for c in claimed {
            #[expect(
                clippy::arithmetic_side_effects,
                reason = "the difference of two OffsetDateTimes always fits a time::Duration"
            )]
            let waited = (now - c.job.run_at)
                .max(time::Duration::ZERO)
                .unsigned_abs();
            metrics::claimed(&c.job.pipeline, waited);
            spawn_worker(inner, c);
        }
        if n < limit {
            return;
        }
    }
}

fn spawn_worker(inner: &Arc<Inner>, claimed: Claimed) {
    let token = CancellationToken::new();
    {
        let mut running = inner.running();
        running.total = running.total.saturating_add(1);
        running.peak = running.peak.max(running.total);
        metrics::running(running.total);
        let of_pipeline = running
            .per_pipeline
            .entry(claimed.job.pipeline.clone())
            .or_default();
        *of_pipeline = of_pipeline.saturating_add(1);
        running.cancels.insert(claimed.job.id, token.clone());
    }
    let guard = SlotGuard {
        inner: inner.clone(),
        job: claimed.job.id,
        pipeline: claimed.job.pipeline.clone(),
        freed: std::sync::atomic::AtomicBool::new(false),
    };
    let (lease, max_attempts) = (claimed.lease, claimed.job.max_attempts);
    inner.tracker.spawn(async move {
        let guard = guard;
        // A panic outside the phase (the phase's own is its failure) must not
        // leave the job `running` under a lease no one holds.
        let run = AssertUnwindSafe(runner::run_job(&guard, claimed, token));
        if let Err(panic) = run.catch_unwind().await {
            runner::worker_panicked(&guard.inner, lease, max_attempts, panic).await;
        }
    });
}

/// Frees the worker's slot when its task ends, however it ends, and wakes
/// the pump to fill it.
pub(crate) struct SlotGuard {
    pub(crate) inner: Arc<Inner>,
    job: JobId,
    pipeline: String,
    /// Set once the slot was given back (see [`SlotGuard::free`]).
    freed: std::sync::atomic::AtomicBool,
}

impl SlotGuard {
    /// Gives the slot back and wakes the pump to fill it; once, however
    /// often it is called. The worker calls it when its job's last write
    /// was handed to a store that commits writes in the order it receives
    /// them, before that write commits: a claim the pump makes then is
    /// committed after the write, so the store never holds more running
    /// jobs than the limit, and the next job's claim need not wait for a
    /// round trip of its own.
    pub(crate) fn free(&self) {
        if self.freed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        {
            let mut running = self.inner.running();
            running.total = running.total.saturating_sub(1);
            metrics::running(running.total);
            if let Some(n) = running.per_pipeline.get_mut(&self.pipeline) {
                *n = n.saturating_sub(1);
            }
            running.cancels.remove(&self.job);
        }
        self.inner.wake.notify_one();
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.free();
    }
}

#[cfg(test)]
mod tests {
    use jobqueue_core::{MemoryStore, NewJob};
    use serde_json::Value;

    use super::*;
    use crate::TokioClock;
    use crate::clock::add;
    use crate::phase::{PhaseError, phase_fn};
    use crate::pipeline::Pipeline;

    /// When a job's phase ran, as its clock read then.
    #[derive(Default)]
    struct Ran {
        at: Mutex<Option<OffsetDateTime>>,
        notify: Notify,
    }

    #[tokio::test(start_paused = true)]
    async fn many_future_jobs_keep_few_wake_times_and_the_earliest_on_time() {
        let clock = Arc::new(TokioClock::new());
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        let ran = Arc::new(Ran::default());
        let seen = ran.clone();
        let record_clock = clock.clone();
        let record = phase_fn("record", move |_ctx| {
            lock(&seen.at).get_or_insert(record_clock.now());
            seen.notify.notify_one();
            async { Ok::<_, PhaseError>(Value::Null) }
        });
        let pipelines = Pipelines::new([Pipeline::new("p").phase(record)]).unwrap();
        let config = RuntimeConfig {
            clock: clock.clone(),
            poll_interval: Duration::from_secs(3600),
            ..RuntimeConfig::default()
        };
        let rt = Runtime::start(store.clone(), pipelines, config)
            .await
            .unwrap();

        let start = clock.now();
        let in_two_hours = add(start, Duration::from_secs(7200)).unwrap();
        let later: Vec<NewJob> = (0..5000)
            .map(|i| {
                let at = add(in_two_hours, Duration::from_secs(i)).unwrap();
                NewJob::new("p").phases(["record"]).run_at(at)
            })
            .collect();
        for job in store.enqueue_batch(later).await.unwrap() {
            rt.notify_enqueued(job.run_at);
            rt.notify_enqueued(job.run_at);
        }
        let soon = add(start, Duration::from_secs(5)).unwrap();
        let early = NewJob::new("p").phases(["record"]).run_at(soon);
        rt.notify_enqueued(store.enqueue(early).await.unwrap().run_at);

        let kept = lock(&rt.inner.wake_times).len();
        assert!(
            kept <= crate::wake::MAX_WAKE_TIMES,
            "{kept} wake-up times kept"
        );
        tokio::time::timeout(Duration::from_secs(60), ran.notify.notified())
            .await
            .unwrap();
        assert_eq!(*lock(&ran.at), Some(soon), "the earliest job ran on time");
        rt.shutdown(Duration::from_secs(1)).await;
    }
}
