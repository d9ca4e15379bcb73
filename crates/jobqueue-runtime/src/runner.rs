//! The phase runner: runs one claimed job's phases in order and persists
//! every transition with the claim's fencing token.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use jobqueue_core::health::panic_message;
use jobqueue_core::{
    Claimed, ErrorKind, FailureOutcome, Job, JobError, JobStore, Lease, Next, PhaseStatus,
    RetryPolicy, StoreError, timefmt,
};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::checkpoint::{self, Checkpoints};
use crate::clock::{add, instant_in, sleep_until_some};
use crate::keeper::{Keeper, KeeperEnd};
use crate::metrics::{self, JobOutcome};
use crate::phase::{FailureKind, PhaseContext, PhaseError, ProgressReporter, Reported};
use crate::pipeline::{PhaseSpec, Pipeline};
use crate::runtime::{Inner, SlotGuard};
use crate::supervise::WORKERS;

/// Why a phase was told to stop before it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A user cancelled the job.
    Cancel,
    /// The shutdown deadline passed.
    Shutdown,
    /// The lease was lost: another worker owns the job now.
    LeaseLost,
}

/// A time limit on a phase: when it passes, and what the failure says.
#[derive(Debug, Clone)]
struct Deadline {
    at: Instant,
    message: String,
}

impl Deadline {
    /// The `what` limit of `limit` from now; none when it is too far away
    /// for `Instant` to hold (it would never pass).
    fn after(limit: Duration, what: &str) -> Option<Self> {
        instant_in(limit).map(|at| Self {
            at,
            message: format!("{what} timed out after {limit:?}"),
        })
    }

    /// The one of `a` and `b` that passes first.
    fn earlier(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if a.at <= b.at { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// How one run of a phase ended.
struct Ended {
    /// What the phase returned, if it returned (`None`: dropped).
    result: Option<Result<Value, PhaseError>>,
    /// Why it was told to stop, if it was.
    stop: Option<Stop>,
}

impl Ended {
    /// The run's `outcome` label in the metrics, in the order
    /// [`JobRun::run_phase`] judges it.
    fn outcome(&self) -> &'static str {
        match (&self.result, self.stop) {
            (_, Some(Stop::LeaseLost)) => "lease_lost",
            (Some(Ok(_)), _) => "completed",
            (_, Some(Stop::Cancel)) => "cancelled",
            (_, Some(Stop::Shutdown)) => "interrupted",
            (Some(Err(e)), None) if e.kind == FailureKind::CancelJob => "cancelled",
            (Some(Err(e)), None) if matches!(e.kind, FailureKind::Snooze(_)) => "snoozed",
            _ => "failed",
        }
    }
}

pub(crate) async fn run_job(slot: &SlotGuard, claimed: Claimed, cancel: CancellationToken) {
    let Claimed { lease, mut job } = claimed;
    // Every phase of this run shares the input; nothing else reads it.
    let input = Arc::new(std::mem::take(&mut job.input));
    let span =
        info_span!("job", job_id = %job.id, pipeline = %job.pipeline, attempt = lease.attempt);
    JobRun {
        inner: &slot.inner,
        slot,
        pipeline: Arc::from(job.pipeline.as_str()),
        lease,
        cancel,
        input,
    }
    .run(job)
    .instrument(span)
    .await;
}

struct JobRun<'a> {
    inner: &'a Arc<Inner>,
    /// The worker's slot, given back early when the job's last write is
    /// handed over (see [`SlotGuard::free`]).
    slot: &'a SlotGuard,
    /// The job's pipeline, for the metrics' labels.
    pipeline: Arc<str>,
    lease: Lease,
    cancel: CancellationToken,
    input: Arc<Value>,
}

impl JobRun<'_> {
    fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    async fn run(&self, job: Job) {
        info!("job started");
        let Some(pipeline) = self.inner.pipelines.get(&job.pipeline).cloned() else {
            // Claims name only this process's pipelines; a store that
            // handed this one out anyway gets it back, queued for a process
            // that defines it (it is never failed for being unknown here).
            warn!(
                "claimed a job of pipeline {:?}, which this process does not define; \
                 putting it back",
                job.pipeline
            );
            self.end_interrupted().await;
            return;
        };
        let names = pipeline.phase_names();
        let recorded: Vec<&str> = job.phases.iter().map(|p| p.name.as_str()).collect();
        let job = if recorded == names {
            job
        } else {
            // A deploy changed the pipeline's phases: match them by name, so
            // completed phases keep their results and new ones run.
            match self
                .store()
                .reshape_phases(&self.lease, names.clone())
                .await
            {
                Ok(job) => {
                    info!(from = ?recorded, to = ?names, "the pipeline's phases changed since the job was enqueued; matched by name");
                    job
                }
                Err(e) => {
                    self.store_failed("match the pipeline's phases", &e);
                    return;
                }
            }
        };
        let deadline = pipeline
            .attempt_timeout
            .and_then(|t| Deadline::after(t, "attempt"));
        let mut results = job.results();
        // Phases left to run, in pipeline order; a phase that completed
        // already (after a reordering, a later one may have) is skipped.
        let todo: Vec<usize> = (0..pipeline.phases.len())
            .filter(|i| {
                job.phases
                    .get(*i)
                    .is_none_or(|p| p.status != PhaseStatus::Completed)
            })
            .collect();
        // The claim may have started the first of them already.
        let mut started = todo.first().copied().filter(|i| {
            job.phases
                .get(*i)
                .is_some_and(|p| p.status == PhaseStatus::Running)
        });
        for (pos, &index) in todo.iter().enumerate() {
            let spec = &pipeline.phases[index];
            if started != Some(index) {
                if self.cancel.is_cancelled() {
                    self.end_cancelled().await;
                    return;
                }
                if self.inner.stop_phases.is_cancelled() {
                    self.end_interrupted().await;
                    return;
                }
                if let Err(e) = self.store().phase_started(&self.lease, index).await {
                    self.store_failed("start phase", &e);
                    return;
                }
            }
            let span = info_span!("phase", phase = %names[index], index);
            let Some(value) = self
                .run_phase(&job, &pipeline, index, spec, &results, deadline.clone())
                .instrument(span)
                .await
            else {
                return;
            };
            // The phase's completion and what follows, in one write: the
            // next phase starts (unless the job was told to stop
            // meanwhile), or the job completes.
            let stopping = self.cancel.is_cancelled() || self.inner.stop_phases.is_cancelled();
            let next = match todo.get(pos.saturating_add(1)) {
                Some(n) if !stopping => Some(Next::Phase(*n)),
                Some(_) => None,
                None => Some(Next::Complete),
            };
            let written = match next {
                Some(Next::Complete) => {
                    let write =
                        self.store()
                            .advance(&self.lease, index, value.clone(), Next::Complete);
                    self.hand_over_last(write).await
                }
                Some(next) => {
                    self.store()
                        .advance(&self.lease, index, value.clone(), next)
                        .await
                }
                None => {
                    self.store()
                        .phase_completed(&self.lease, index, value.clone())
                        .await
                }
            };
            match written {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Invalid => {
                    // A result the store refuses (nested too deep, too
                    // large) would be refused on every run: the phase
                    // fails for good rather than leave the job running
                    // until recovery runs it again, forever.
                    let err =
                        PhaseError::permanent(format!("the store refused the phase's result: {e}"));
                    self.phase_failed(&job, &pipeline, index, err).await;
                    return;
                }
                Err(e) => {
                    self.store_failed("complete phase", &e);
                    return;
                }
            }
            debug!("phase completed");
            results.insert(names[index].clone(), value);
            match next {
                Some(Next::Phase(n)) => started = Some(n),
                Some(Next::Complete) => {
                    info!("job completed");
                    metrics::job_finished(&self.pipeline, JobOutcome::Completed);
                    return;
                }
                None if self.cancel.is_cancelled() => {
                    self.end_cancelled().await;
                    return;
                }
                None => {
                    self.end_interrupted().await;
                    return;
                }
            }
        }
        // Nothing was left to run (every phase had completed).
        match self.store().complete_job(&self.lease).await {
            Ok(_) => {
                info!("job completed");
                metrics::job_finished(&self.pipeline, JobOutcome::Completed);
            }
            Err(e) => self.store_failed("complete job", &e),
        }
    }

    /// Awaits `write`, the job's last write, and frees the worker's slot as
    /// soon as the store has it, when the store commits writes in the order
    /// it receives them (see [`SlotGuard::free`]). One poll hands it over:
    /// the store sends the write before it waits for the commit.
    async fn hand_over_last<T>(&self, write: impl Future<Output = T>) -> T {
        if !self.store().capabilities().ordered_writes {
            return write.await;
        }
        let mut write = std::pin::pin!(write);
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        self.slot.free();
        match first {
            Poll::Ready(out) => out,
            Poll::Pending => write.await,
        }
    }

    /// Runs one phase, started already, to its end. Returns its result when
    /// it completed and the job goes on; otherwise persists how the run
    /// ended (a failure, a cancel, a shutdown; nothing when the lease was
    /// lost) and returns `None`.
    async fn run_phase(
        &self,
        job: &Job,
        pipeline: &Pipeline,
        index: usize,
        spec: &PhaseSpec,
        results: &Map<String, Value>,
        attempt_deadline: Option<Deadline>,
    ) -> Option<Value> {
        let name = spec.phase.name().to_owned();
        debug!("phase started");
        let (reporter, progress_rx) = ProgressReporter::new();
        let checkpoints = Checkpoints::new(
            job.phases.get(index).and_then(|p| p.checkpoint.clone()),
            checkpoint::Target::Store {
                store: self.store().clone(),
                lease: self.lease,
                index,
            },
        );
        let ctx = PhaseContext {
            job_id: job.id,
            pipeline: Arc::from(job.pipeline.as_str()),
            phase: Arc::from(name.as_str()),
            index,
            attempt: self.lease.attempt,
            input: self.input.clone(),
            results: Arc::new(results.clone()),
            interrupted: job.interrupted.clone(),
            progress: reporter,
            cancel: CancellationToken::new(),
            state: self.inner.config.state.clone(),
            checkpoints,
        };
        let phase_deadline = spec.timeout.and_then(|t| Deadline::after(t, "phase"));
        let deadline = Deadline::earlier(phase_deadline, attempt_deadline);
        let began = Instant::now();
        let ended = self.drive(spec, ctx, index, progress_rx, deadline).await;
        metrics::phase_ran(&self.pipeline, &name, ended.outcome(), began.elapsed());

        match ended {
            Ended {
                stop: Some(Stop::LeaseLost),
                ..
            } => {
                warn!(
                    "lease lost: another worker owns the job now; this run stops without writing"
                );
                None
            }
            // Completed; a stop that came meanwhile is the caller's to see.
            Ended {
                result: Some(Ok(value)),
                ..
            } => Some(value),
            Ended {
                stop: Some(Stop::Cancel),
                ..
            } => {
                self.end_cancelled().await;
                None
            }
            Ended {
                stop: Some(Stop::Shutdown),
                ..
            } => {
                self.end_interrupted().await;
                None
            }
            Ended {
                result: Some(Err(err)),
                stop: None,
            } if err.kind == FailureKind::CancelJob => {
                info!(reason = %err.message, "the phase cancelled its job");
                self.end_cancelled().await;
                None
            }
            Ended {
                result:
                    Some(Err(PhaseError {
                        kind: FailureKind::Snooze(delay),
                        ..
                    })),
                stop: None,
            } => {
                self.snooze(job, pipeline, index, delay).await;
                None
            }
            Ended {
                result: Some(Err(err)),
                stop: None,
            } => {
                self.phase_failed(job, pipeline, index, err).await;
                None
            }
            Ended {
                result: None,
                stop: None,
            } => {
                // `drive` returns without a result only when told to stop.
                self.phase_failed(
                    job,
                    pipeline,
                    index,
                    PhaseError::retryable("phase ended without a result"),
                )
                .await;
                None
            }
        }
    }

    /// Runs the phase on its own task and waits for it to return while
    /// watching the cancel, shutdown and timeout signals; its keeper renews
    /// the lease and persists progress meanwhile (see `keeper.rs`), so no
    /// store write, however slow, holds up a deadline here.
    ///
    /// On its own task, a phase that blocks its thread holds up only that
    /// task: on a multi-thread runtime this one still ends the run at the
    /// deadline. What is left of the phase is aborted (at its next `.await`;
    /// a blocked thread runs on until it returns) and nothing it does after
    /// that is persisted: its result is dropped and its progress sealed.
    async fn drive(
        &self,
        spec: &PhaseSpec,
        ctx: PhaseContext,
        index: usize,
        progress: watch::Receiver<Reported>,
        deadline: Option<Deadline>,
    ) -> Ended {
        let config = &self.inner.config;
        let reporter = ctx.progress.clone();
        let checkpoints = ctx.checkpoints.clone();
        let phase_token = ctx.cancel.clone();
        let phase = spec.phase.clone();
        let run = async move { phase.run(ctx).await };
        let mut task = AbortOnDropHandle::new(tokio::spawn(run.in_current_span()));
        let mut keeper = Keeper::spawn(
            self.store().clone(),
            &self.inner.heartbeats,
            self.lease,
            index,
            config,
            progress,
            self.cancel.clone(),
        );
        let mut keeper_end: Option<KeeperEnd> = None;
        let timeout_at = deadline.as_ref().map(|d| d.at);
        let mut stop: Option<Stop> = None;
        let mut grace_until: Option<Instant> = None;

        let result = loop {
            tokio::select! {
                biased;
                joined = &mut task => break Some(phase_outcome(joined)),
                end = keeper.ended(), if keeper_end.is_none() => {
                    keeper_end = Some(end);
                    if end == KeeperEnd::LeaseLost {
                        stop = Some(Stop::LeaseLost);
                        break None;
                    }
                }
                () = self.cancel.cancelled(), if stop.is_none() => {
                    info!("cancel requested: telling the phase to stop");
                    stop = Some(Stop::Cancel);
                    phase_token.cancel();
                    grace_until = instant_in(config.stop_grace);
                }
                () = self.inner.stop_phases.cancelled(), if stop.is_none() => {
                    info!("shutdown deadline: telling the phase to stop");
                    stop = Some(Stop::Shutdown);
                    phase_token.cancel();
                    grace_until = instant_in(config.stop_grace);
                }
                () = sleep_until_some(grace_until), if stop.is_some() => {
                    warn!("phase did not stop within the grace period; dropping it");
                    break None;
                }
                () = sleep_until_some(timeout_at), if stop.is_none() => {
                    let message = deadline.as_ref().map_or_else(String::new, |d| d.message.clone());
                    warn!(%message, "timeout");
                    break Some(Err(PhaseError::retryable(message)));
                }
            }
        };
        // The run is over: what is left of the phase is cut loose.
        phase_token.cancel();
        task.abort();
        reporter.seal();
        checkpoints.seal();
        if stop != Some(Stop::LeaseLost) {
            // The last reported progress is persisted before the phase's end,
            // so an interruption keeps it and no progress event follows.
            let end = match keeper_end {
                Some(end) => end,
                None => keeper.finish().await,
            };
            if end == KeeperEnd::LeaseLost {
                stop = Some(Stop::LeaseLost);
            }
        }
        Ended { result, stop }
    }

    async fn phase_failed(&self, job: &Job, pipeline: &Pipeline, index: usize, err: PhaseError) {
        let own = pipeline.phases.get(index).and_then(|spec| spec.retry);
        let policy = own.or(pipeline.retry).unwrap_or(self.inner.config.retry);
        // A phase with its own policy is retried while it has run fewer
        // times than that policy allows (within the job's budget). The
        // claimed job counts this run already if the claim started the
        // phase; a phase started since then is one run more.
        let runs = job.phases.get(index).map_or(1, |p| {
            if p.status == PhaseStatus::Running {
                p.attempts
            } else {
                p.attempts.saturating_add(1)
            }
        });
        let phase_allows = own.is_none_or(|own| runs < own.max_attempts);
        // The backoff grows with the phase's own runs under its own policy,
        // with the job's attempts under the pipeline's.
        let failed_run = if own.is_some() {
            runs
        } else {
            self.lease.attempt
        };
        let retry = err.kind == FailureKind::Retryable
            && self.lease.attempt < job.max_attempts
            && phase_allows;
        let mut message = err.message;
        let outcome = if retry {
            let delay = self.inner.backoff(&policy, failed_run);
            // A retry time no store can hold (after the year 9999) means the
            // policy's backoff is effectively "never": the job fails now,
            // saying why, rather than wait queued until the end of time.
            match add(self.inner.config.clock.now(), delay).filter(|t| timefmt::in_range(*t)) {
                Some(at) => FailureOutcome::RetryAt(at),
                None => {
                    message = format!(
                        "{message}; not retried: a retry {delay:?} from now would be after {}, the latest time a store can hold",
                        timefmt::format(timefmt::MAX)
                    );
                    FailureOutcome::Fail
                }
            }
        } else {
            FailureOutcome::Fail
        };
        warn!(error = %message, kind = ?err.kind, ?outcome, "phase failed");
        match self
            .store()
            .phase_failed(&self.lease, index, message, outcome.clone())
            .await
        {
            Ok(_) => match outcome {
                FailureOutcome::RetryAt(at) => self.inner.wake_at(at),
                FailureOutcome::Fail => metrics::job_finished(&self.pipeline, JobOutcome::Failed),
            },
            Err(e) => self.store_failed("fail phase", &e),
        }
    }

    /// The phase asked to run again after `delay`: the job is queued that
    /// far ahead without spending the attempt, and the pump woken then. A
    /// delay past the latest time a store holds fails the phase for good.
    async fn snooze(&self, job: &Job, pipeline: &Pipeline, index: usize, delay: Duration) {
        let now = self.inner.config.clock.now();
        let Some(at) = add(now, delay).filter(|t| timefmt::in_range(*t)) else {
            let err = PhaseError::permanent(format!(
                "cannot snooze for {delay:?}: that is after {}, the latest time a store can hold",
                timefmt::format(timefmt::MAX)
            ));
            self.phase_failed(job, pipeline, index, err).await;
            return;
        };
        match self.store().snooze(&self.lease, index, at).await {
            Ok(_) => {
                info!(run_at = %timefmt::format(at), "phase snoozed; it runs again then");
                self.inner.wake_at(at);
            }
            Err(e) if e.kind() == ErrorKind::Invalid => {
                let err = PhaseError::permanent(format!("the store refused the snooze: {e}"));
                self.phase_failed(job, pipeline, index, err).await;
            }
            Err(e) => self.store_failed("snooze phase", &e),
        }
    }

    async fn end_cancelled(&self) {
        match self.store().cancel_running(&self.lease).await {
            Ok(_) => {
                info!("job cancelled");
                metrics::job_finished(&self.pipeline, JobOutcome::Cancelled);
            }
            Err(e) => self.store_failed("cancel job", &e),
        }
    }

    async fn end_interrupted(&self) {
        match self.store().interrupt(&self.lease).await {
            Ok(_) => info!("job interrupted by shutdown; it resumes at the next start"),
            Err(e) => self.store_failed("interrupt job", &e),
        }
    }

    fn store_failed(&self, what: &str, e: &StoreError) {
        if matches!(e, StoreError::LeaseLost(_)) {
            warn!(error = %e, "{what}: lease lost, another worker owns the job now");
        } else {
            // The job stays `running` with this lease; recovery (restart or
            // lease expiry) queues it again, so nothing is lost.
            error!(error = %e, kind = ?e.kind(), "{what} failed");
        }
    }
}

/// The worker running `lease`'s job panicked outside the phase: in the
/// runner's bookkeeping, its keeper, or a store call. The panic is logged
/// and counted under the `"workers"` task, and the job is not left
/// `running` under a lease no one holds: with attempts left it is queued
/// again as interrupted (it resumes at the phase it was in, which keeps its
/// progress), otherwise it fails with the panic's message. A claim counts
/// as an attempt, so a panic that happens on every run ends in `failed`
/// rather than looping.
pub(crate) async fn worker_panicked(
    inner: &Arc<Inner>,
    lease: Lease,
    max_attempts: u32,
    panic: Box<dyn std::any::Any + Send>,
) {
    let message = panic_message(&*panic);
    let span = info_span!("job", job_id = %lease.job_id, attempt = lease.attempt);
    async {
        error!(panic = %message, "the worker panicked outside the phase");
        inner.tasks.panicked(WORKERS, message.clone());
        let store = &inner.store;
        let write = async {
            if RetryPolicy::can_retry(lease.attempt, max_attempts) {
                store.interrupt(&lease).await.map(|_| "queued again")
            } else {
                let error = JobError {
                    phase: None,
                    message: format!("the worker running this job panicked: {message}"),
                    attempt: lease.attempt,
                };
                store.fail_job(&lease, error).await.map(|_| "failed")
            }
        };
        match AssertUnwindSafe(write).catch_unwind().await {
            Ok(Ok(what)) => info!("job {what} after the worker's panic"),
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::LeaseLost | ErrorKind::Conflict) => {
                info!(error = %e, "the job had already ended or moved on before the worker's panic");
            }
            Ok(Err(e)) => {
                error!(error = %e, kind = ?e.kind(), "recording the worker's panic failed; the job stays running until recovery");
            }
            Err(again) => {
                let again = panic_message(&*again);
                error!(panic = %again, "recording the worker's panic panicked too; the job stays running until recovery");
            }
        }
    }
    .instrument(span)
    .await;
}

/// What the phase's task came to: its result, or its panic as a retryable
/// failure of the phase.
fn phase_outcome(
    joined: Result<Result<Value, PhaseError>, JoinError>,
) -> Result<Value, PhaseError> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let message = panic_message(&*e.into_panic());
            error!(panic = %message, "phase panicked");
            Err(PhaseError::retryable(format!("phase panicked: {message}")))
        }
        Err(_) => Err(PhaseError::retryable("the phase's task was aborted")),
    }
}
