//! The phase runner: runs one claimed job's phases in order and persists
//! every transition with the claim's fencing token.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use jobqueue_core::{
    Claimed, FailureOutcome, Job, JobError, JobStore, Lease, Progress, StoreError,
};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::phase::{FailureKind, PhaseContext, PhaseError, ProgressReporter};
use crate::pipeline::{PhaseSpec, Pipeline};
use crate::runtime::Inner;

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

/// How one run of a phase ended.
struct Ended {
    /// What the phase returned, if it returned (`None`: dropped).
    result: Option<Result<Value, PhaseError>>,
    /// Why it was told to stop, if it was.
    stop: Option<Stop>,
}

pub(crate) async fn run_job(inner: &Arc<Inner>, claimed: Claimed, cancel: CancellationToken) {
    let Claimed { lease, mut job } = claimed;
    // Every phase of this run shares the input; nothing else reads it.
    let input = Arc::new(std::mem::take(&mut job.input));
    let span =
        info_span!("job", job_id = %job.id, pipeline = %job.pipeline, attempt = lease.attempt);
    JobRun {
        inner,
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
            let message = format!(
                "unknown pipeline {:?}: this process does not define it",
                job.pipeline
            );
            self.fail(message).await;
            return;
        };
        let names = pipeline.phase_names();
        let recorded: Vec<&str> = job.phases.iter().map(|p| p.name.as_str()).collect();
        if recorded != names {
            let message = format!(
                "pipeline {:?} has phases {names:?} but the job was enqueued with {recorded:?}",
                job.pipeline
            );
            self.fail(message).await;
            return;
        }
        let deadline = pipeline.attempt_timeout.map(|t| (Instant::now() + t, t));
        let mut results = job.results();
        let first = job.first_incomplete_phase().unwrap_or(names.len());
        for (index, spec) in pipeline.phases.iter().enumerate().skip(first) {
            if self.cancel.is_cancelled() {
                self.end_cancelled().await;
                return;
            }
            if self.inner.stop_phases.is_cancelled() {
                self.end_interrupted().await;
                return;
            }
            let span = info_span!("phase", phase = %names[index], index);
            let go_on = self
                .run_phase(&job, &pipeline, index, spec, &mut results, deadline)
                .instrument(span)
                .await;
            if !go_on {
                return;
            }
        }
        match self.store().complete_job(&self.lease).await {
            Ok(_) => info!("job completed"),
            Err(e) => self.store_failed("complete job", &e),
        }
    }

    /// Runs one phase and persists how it ended. Returns whether the job
    /// goes on to its next phase.
    async fn run_phase(
        &self,
        job: &Job,
        pipeline: &Pipeline,
        index: usize,
        spec: &PhaseSpec,
        results: &mut Map<String, Value>,
        attempt_deadline: Option<(Instant, Duration)>,
    ) -> bool {
        let name = spec.phase.name().to_owned();
        if let Err(e) = self.store().phase_started(&self.lease, index).await {
            self.store_failed("start phase", &e);
            return false;
        }
        debug!("phase started");
        let (reporter, progress_rx) = ProgressReporter::new();
        let phase_token = CancellationToken::new();
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
            cancel: phase_token.clone(),
        };
        let phase_deadline = spec.timeout.map(|t| (Instant::now() + t, t));
        let deadline = match (phase_deadline, attempt_deadline) {
            (Some(p), Some(a)) => Some(if p.0 <= a.0 {
                (p.0, format!("phase timed out after {:?}", p.1))
            } else {
                (a.0, format!("attempt timed out after {:?}", a.1))
            }),
            (Some(p), None) => Some((p.0, format!("phase timed out after {:?}", p.1))),
            (None, Some(a)) => Some((a.0, format!("attempt timed out after {:?}", a.1))),
            (None, None) => None,
        };
        let ended = self
            .drive(spec, ctx, index, progress_rx, phase_token, deadline)
            .await;

        match ended {
            Ended {
                stop: Some(Stop::LeaseLost),
                ..
            } => {
                warn!(
                    "lease lost: another worker owns the job now; this run stops without writing"
                );
                false
            }
            Ended {
                result: Some(Ok(value)),
                stop,
            } => {
                if let Err(e) = self
                    .store()
                    .phase_completed(&self.lease, index, value.clone())
                    .await
                {
                    self.store_failed("complete phase", &e);
                    return false;
                }
                debug!("phase completed");
                results.insert(name, value);
                match stop {
                    Some(Stop::Cancel) => {
                        self.end_cancelled().await;
                        false
                    }
                    Some(Stop::Shutdown) => {
                        self.end_interrupted().await;
                        false
                    }
                    _ => true,
                }
            }
            Ended {
                stop: Some(Stop::Cancel),
                ..
            } => {
                self.end_cancelled().await;
                false
            }
            Ended {
                stop: Some(Stop::Shutdown),
                ..
            } => {
                self.end_interrupted().await;
                false
            }
            Ended {
                result: Some(Err(err)),
                stop: None,
            } => {
                self.phase_failed(job, pipeline, index, err).await;
                false
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
                false
            }
        }
    }

    /// Polls the phase while persisting coalesced progress, renewing the
    /// lease, and watching the cancel, shutdown and timeout signals.
    async fn drive(
        &self,
        spec: &PhaseSpec,
        ctx: PhaseContext,
        index: usize,
        mut progress_rx: watch::Receiver<Option<Progress>>,
        phase_token: CancellationToken,
        deadline: Option<(Instant, String)>,
    ) -> Ended {
        let config = &self.inner.config;
        let phase = spec.phase.clone();
        let fut = AssertUnwindSafe(async move { phase.run(ctx).await }).catch_unwind();
        tokio::pin!(fut);
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let timeout_at = deadline.as_ref().map_or(far, |d| d.0);
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + config.heartbeat, config.heartbeat);
        let mut pending: Option<Progress> = None;
        let mut last_write = Instant::now() - config.progress_interval;
        let mut stop: Option<Stop> = None;
        let mut grace_until = far;
        let mut progress_open = true;

        let result = loop {
            tokio::select! {
                biased;
                out = &mut fut => {
                    break Some(match out {
                        Ok(r) => r,
                        Err(panic) => {
                            let msg = panic_message(&*panic);
                            error!(panic = %msg, "phase panicked");
                            Err(PhaseError::retryable(format!("phase panicked: {msg}")))
                        }
                    });
                }
                () = self.cancel.cancelled(), if stop.is_none() => {
                    info!("cancel requested: telling the phase to stop");
                    stop = Some(Stop::Cancel);
                    phase_token.cancel();
                    grace_until = Instant::now() + config.stop_grace;
                }
                () = self.inner.stop_phases.cancelled(), if stop.is_none() => {
                    info!("shutdown deadline: telling the phase to stop");
                    stop = Some(Stop::Shutdown);
                    phase_token.cancel();
                    grace_until = Instant::now() + config.stop_grace;
                }
                () = sleep_until(grace_until), if stop.is_some() => {
                    warn!("phase did not stop within the grace period; dropping it");
                    break None;
                }
                () = sleep_until(timeout_at), if stop.is_none() => {
                    let message = deadline.as_ref().map_or_else(String::new, |d| d.1.clone());
                    warn!(%message, "timeout");
                    break Some(Err(PhaseError::retryable(message)));
                }
                _ = heartbeat.tick() => {
                    match self.store().heartbeat(&self.lease, config.lease).await {
                        Ok(true) if stop.is_none() => self.cancel.cancel(),
                        Ok(_) => {}
                        Err(StoreError::LeaseLost(_)) => {
                            stop = Some(Stop::LeaseLost);
                            phase_token.cancel();
                            break None;
                        }
                        Err(e) => warn!(error = %e, "heartbeat failed"),
                    }
                }
                changed = progress_rx.changed(), if progress_open && pending.is_none() => {
                    match changed {
                        Ok(()) => pending = progress_rx.borrow_and_update().clone(),
                        Err(_) => progress_open = false,
                    }
                }
                () = sleep_until(last_write + config.progress_interval), if pending.is_some() => {
                    if let Some(p) = pending.take() {
                        self.write_progress(index, p).await;
                        last_write = Instant::now();
                    }
                }
            }
        };
        // The last reported progress is persisted before the phase's end, so
        // an interruption keeps it and no progress event follows the phase.
        let unwritten = pending.is_some() || progress_rx.has_changed().unwrap_or(false);
        let latest = progress_rx.borrow().clone();
        if let (true, Some(p), false) = (unwritten, latest, stop == Some(Stop::LeaseLost)) {
            self.write_progress(index, p).await;
        }
        Ended { result, stop }
    }

    async fn write_progress(&self, index: usize, progress: Progress) {
        if let Err(e) = self
            .store()
            .phase_progress(&self.lease, index, progress)
            .await
        {
            debug!(error = %e, "progress not persisted");
        }
    }

    async fn phase_failed(&self, job: &Job, pipeline: &Pipeline, index: usize, err: PhaseError) {
        let policy = pipeline.retry.unwrap_or(self.inner.config.retry);
        let retry = err.kind == FailureKind::Retryable && self.lease.attempt < job.max_attempts;
        let outcome = if retry {
            let delay = self.inner.backoff(&policy, self.lease.attempt);
            FailureOutcome::RetryAt(self.inner.config.clock.now() + delay)
        } else {
            FailureOutcome::Fail
        };
        warn!(error = %err.message, kind = ?err.kind, ?outcome, "phase failed");
        match self
            .store()
            .phase_failed(&self.lease, index, err.message, outcome.clone())
            .await
        {
            Ok(_) => {
                if let FailureOutcome::RetryAt(at) = outcome {
                    self.inner.wake_at(at);
                }
            }
            Err(e) => self.store_failed("fail phase", &e),
        }
    }

    async fn fail(&self, message: String) {
        error!(%message, "job failed");
        let err = JobError {
            phase: None,
            message,
            attempt: self.lease.attempt,
        };
        if let Err(e) = self.store().fail_job(&self.lease, err).await {
            self.store_failed("fail job", &e);
        }
    }

    async fn end_cancelled(&self) {
        match self.store().cancel_running(&self.lease).await {
            Ok(_) => info!("job cancelled"),
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

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
