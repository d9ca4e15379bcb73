//! Phases: the steps of a pipeline, and what a phase sees while it runs.
//!
//! A phase is a [`Phase`] trait object with a name and an async `run` that
//! returns a JSON result or a typed [`PhaseError`] saying whether a retry may
//! help. [`phase_fn`] makes one from an async closure.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jobqueue_core::{Interrupted, JobId, Progress};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoints;
use crate::state::StateMap;

/// One step of a pipeline.
///
/// `run` may be called more than once for the same job (after a retryable
/// failure, a crash or a shutdown) but never again once it returned `Ok` and
/// that result was stored.
///
/// # Blocking
///
/// Each run is its own tokio task, and tokio cannot preempt a task that
/// blocks its thread (`std::thread::sleep`, blocking I/O, a long computation
/// without an `.await`). On a multi-thread runtime the runner, on another
/// thread, still ends the run on time: at the phase or attempt timeout the
/// job fails or is queued for a retry, and a cancel or the shutdown deadline
/// still takes effect. The blocked thread itself runs on until the call
/// returns; nothing it does after the end is persisted (its result is
/// dropped, its progress reports are ignored, and its task is aborted at its
/// next `.await`), but its effects outside the queue (files, requests) happen.
/// On a `current_thread` runtime nothing runs while a phase blocks, so its
/// deadlines pass only when it returns.
///
/// Run blocking work with [`tokio::task::spawn_blocking`] and await it (see
/// [`phase_fn`]): the phase stays responsive, and at a deadline only the
/// blocking closure runs on, to its end.
#[async_trait]
pub trait Phase: Send + Sync + 'static {
    /// The phase's name, unique within its pipeline.
    fn name(&self) -> &str;

    /// Runs the phase.
    async fn run(&self, ctx: PhaseContext) -> Result<Value, PhaseError>;
}

/// Whether a failed phase may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again while attempts remain (network blip, timeout, busy).
    Retryable,
    /// Do not retry: the job fails now (bad input, missing file).
    Permanent,
    /// Not a failure: the phase decided its job should not go on (the
    /// order was withdrawn, the file is gone for good on purpose). The job
    /// ends `cancelled`, as if a user had cancelled it; see
    /// [`PhaseError::cancel_job`].
    CancelJob,
    /// Not a failure: the phase asks to run again after this delay,
    /// without spending an attempt; see [`PhaseError::snooze`].
    Snooze(Duration),
}

/// Why a phase failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PhaseError {
    /// Retryable or permanent.
    pub kind: FailureKind,
    /// What went wrong, stored as the phase's error.
    pub message: String,
}

impl PhaseError {
    /// A failure that a retry may fix.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self {
            kind: FailureKind::Retryable,
            message: message.to_string(),
        }
    }

    /// A failure no retry will fix.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.to_string(),
        }
    }

    /// Ends the job `cancelled` from inside its phase: no retry, no
    /// failure; the phase is recorded cancelled, earlier results are kept,
    /// and the event is `job.cancelled` (whose data is empty: the message
    /// goes to the log, not the store). A user may still retry the job.
    ///
    /// ```
    /// use jobqueue_runtime::{PhaseError, phase_fn};
    /// let ship = phase_fn("ship", |ctx| async move {
    ///     if ctx.input()["withdrawn"] == serde_json::json!(true) {
    ///         return Err(PhaseError::cancel_job("the order was withdrawn"));
    ///     }
    ///     Ok(serde_json::json!("shipped"))
    /// });
    /// # let _ = ship;
    /// ```
    pub fn cancel_job(message: impl fmt::Display) -> Self {
        Self {
            kind: FailureKind::CancelJob,
            message: message.to_string(),
        }
    }

    /// Runs this phase again after `delay`, from its start, without
    /// spending an attempt: the job goes back to `queued` with `run_at` that
    /// far ahead (event `job.snoozed`), the phase to `pending` (its
    /// checkpoint and last progress kept), and the attempt the claim
    /// counted, of the job and of the phase, is given back, so snoozes
    /// never use up `max_attempts`. For waiting on something outside
    /// (a report that is not ready, a rate limit) without holding a worker
    /// or a lease meanwhile. A zero delay queues the job due at once; a
    /// delay that would end after the year 9999 fails the phase for good,
    /// saying so. A phase that snoozes every time runs forever: count its
    /// snoozes in a [checkpoint](PhaseContext::checkpoint) if it needs a limit.
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobqueue_runtime::{PhaseError, phase_fn};
    /// let wait = phase_fn("wait-for-report", |ctx| async move {
    ///     if ctx.input()["ready"] != serde_json::json!(true) {
    ///         return Err(PhaseError::snooze(Duration::from_secs(300)));
    ///     }
    ///     Ok(serde_json::json!("fetched"))
    /// });
    /// # let _ = wait;
    /// ```
    pub fn snooze(delay: Duration) -> Self {
        Self {
            kind: FailureKind::Snooze(delay),
            message: format!("snoozed for {delay:?}"),
        }
    }
}

/// Reports a phase's progress. Cheap to clone; the runner persists the
/// latest value at most every progress interval (about 250 ms).
///
/// Reports made after the phase's run ended (a phase that timed out but
/// still runs on a blocked thread, a task it spawned) are ignored.
#[derive(Debug, Clone)]
pub struct ProgressReporter {
    tx: Arc<watch::Sender<Reported>>,
    /// Every report, in order, when a test harness watches the phase
    /// (the runner keeps only the latest).
    log: Option<Arc<Mutex<Vec<Progress>>>>,
}

/// What a phase reported, as the runner's companion task reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reported {
    /// The latest report.
    pub(crate) latest: Option<Progress>,
    /// Set when the run ended: later reports are dropped.
    sealed: bool,
}

impl ProgressReporter {
    pub(crate) fn new() -> (Self, watch::Receiver<Reported>) {
        let (tx, rx) = watch::channel(Reported::default());
        (
            Self {
                tx: Arc::new(tx),
                log: None,
            },
            rx,
        )
    }

    /// A reporter that also keeps every report in `log`.
    pub(crate) fn recording(log: Arc<Mutex<Vec<Progress>>>) -> Self {
        let (mut reporter, _rx) = Self::new();
        reporter.log = Some(log);
        reporter
    }

    /// Freezes the latest report: what the phase reports from now on is
    /// dropped, so nothing it does after its end is persisted.
    pub(crate) fn seal(&self) {
        self.tx.send_if_modified(|r| {
            r.sealed = true;
            false
        });
    }

    /// Reports `percent` (0 to 100, clamped) with an optional message.
    pub fn report(&self, percent: u8, message: Option<&str>) {
        let progress = Progress::new(percent, message.map(str::to_owned));
        self.tx.send_if_modified(|r| {
            if r.sealed {
                return false;
            }
            if let Some(log) = &self.log {
                crate::runtime::lock(log).push(progress.clone());
            }
            r.latest = Some(progress);
            true
        });
    }

    /// Reports `percent` without a message.
    pub fn percent(&self, percent: u8) {
        self.report(percent, None);
    }

    /// Reports a message, keeping the last percent.
    pub fn message(&self, message: &str) {
        let percent = self.tx.borrow().latest.as_ref().map_or(0, |p| p.percent);
        self.report(percent, Some(message));
    }
}

/// What a running phase sees.
#[derive(Debug, Clone)]
pub struct PhaseContext {
    pub(crate) job_id: JobId,
    pub(crate) pipeline: Arc<str>,
    pub(crate) phase: Arc<str>,
    pub(crate) index: usize,
    pub(crate) attempt: u32,
    pub(crate) input: Arc<Value>,
    pub(crate) results: Arc<Map<String, Value>>,
    pub(crate) interrupted: Option<Interrupted>,
    pub(crate) progress: ProgressReporter,
    pub(crate) cancel: CancellationToken,
    /// The application state given to the queue's builder.
    pub(crate) state: Arc<StateMap>,
    /// The phase's checkpoint: as claimed, then as saved in this run.
    pub(crate) checkpoints: Checkpoints,
}

impl PhaseContext {
    /// The job's id.
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// The job's pipeline.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// This phase's name.
    pub fn phase(&self) -> &str {
        &self.phase
    }

    /// This phase's 0-based position in the pipeline.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The job's attempt (1-based).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The job's input as JSON.
    pub fn input(&self) -> &Value {
        &self.input
    }

    /// The job's input read as `T`; a mismatch is a permanent failure.
    pub fn input_as<T: DeserializeOwned>(&self) -> Result<T, PhaseError> {
        T::deserialize(&*self.input)
            .map_err(|e| PhaseError::permanent(format!("job input does not fit: {e}")))
    }

    /// The results of the phases that completed before this one.
    pub fn results(&self) -> &Map<String, Value> {
        &self.results
    }

    /// The result of the earlier phase `name` read as `T`; a missing or
    /// mismatched result is a permanent failure.
    pub fn result_of<T: DeserializeOwned>(&self, name: &str) -> Result<T, PhaseError> {
        let value = self
            .results
            .get(name)
            .ok_or_else(|| PhaseError::permanent(format!("no result of phase {name:?}")))?;
        T::deserialize(value).map_err(|e| {
            PhaseError::permanent(format!("result of phase {name:?} does not fit: {e}"))
        })
    }

    /// Where a crash or shutdown cut this job short before, if it did.
    pub fn interrupted(&self) -> Option<&Interrupted> {
        self.interrupted.as_ref()
    }

    /// Saves `state` as this phase's checkpoint, durably (in the store,
    /// under the job's lease) before it returns, replacing the one saved
    /// before. If this run ends without completing (a crash, a shutdown, a
    /// retryable failure or timeout, a snooze, or a failure or cancel that
    /// a user retries), the phase's next run reads it back with
    /// [`checkpoint_as`](Self::checkpoint_as), so a long phase resumes
    /// where it was rather than at its start; once the phase completes it
    /// is cleared. It appends no event (it is the phase's own state); the
    /// job's record shows it on the phase.
    ///
    /// The value is JSON within the limits of a result (64 levels, 16 MiB);
    /// one past them, or one that is not JSON, is a permanent failure. A
    /// store that cannot write now (busy, unreachable), or a run that has
    /// ended or lost its lease, is a retryable one: return it with `?` and
    /// the next run resumes from the last checkpoint that was saved. Await
    /// each save before the next.
    ///
    /// ```
    /// use jobqueue_runtime::{PhaseError, phase_fn};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, Default)]
    /// struct Copied { next_row: u64 }
    ///
    /// let copy = phase_fn("copy", |ctx| async move {
    ///     let mut at = ctx.checkpoint_as::<Copied>()?.unwrap_or_default();
    ///     while at.next_row < 3_000 {
    ///         at.next_row += 1_000; // copy a batch of rows
    ///         ctx.checkpoint(&at).await?;
    ///     }
    ///     Ok(serde_json::json!({ "rows": at.next_row }))
    /// });
    /// # let _ = copy;
    /// ```
    pub async fn checkpoint<T: Serialize + ?Sized>(&self, state: &T) -> Result<(), PhaseError> {
        let value = serde_json::to_value(state)
            .map_err(|e| PhaseError::permanent(format!("checkpoint is not JSON: {e}")))?;
        self.checkpoints.save(value).await
    }

    /// This phase's last checkpoint read as `T`: the one it saved in an
    /// earlier run (as the job was claimed), or the last one saved in this
    /// run; `None` if it never saved one. A checkpoint that does not fit
    /// `T` is a permanent failure.
    pub fn checkpoint_as<T: DeserializeOwned>(&self) -> Result<Option<T>, PhaseError> {
        self.checkpoints
            .last()
            .map(|value| {
                T::deserialize(value).map_err(|e| {
                    PhaseError::permanent(format!(
                        "checkpoint of phase {:?} does not fit: {e}",
                        self.phase
                    ))
                })
            })
            .transpose()
    }

    /// The application state of type `T` given to the queue (its builder's
    /// `.state(value)`), such as a connection pool or a client. A type that
    /// was never given is a permanent failure naming it: a program error
    /// that no retry fixes.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use jobqueue_runtime::{PhaseError, phase_fn};
    ///
    /// struct Mailer { from: String }
    ///
    /// let send = phase_fn("send", |ctx| async move {
    ///     let mailer = ctx.state::<Arc<Mailer>>()?;
    ///     Ok::<_, PhaseError>(serde_json::json!({ "from": mailer.from }))
    /// });
    /// # let _ = send;
    /// ```
    pub fn state<T: Send + Sync + 'static>(&self) -> Result<&T, PhaseError> {
        self.state.get::<T>().ok_or_else(|| {
            PhaseError::permanent(format!(
                "no application state of type {} was given to the queue (it has: {:?})",
                std::any::type_name::<T>(),
                self.state.type_names()
            ))
        })
    }

    /// All the application state.
    pub fn state_map(&self) -> &StateMap {
        &self.state
    }

    /// The progress reporter.
    pub fn progress(&self) -> &ProgressReporter {
        &self.progress
    }

    /// Reports progress; shorthand for `progress().report(..)`.
    pub fn report(&self, percent: u8, message: Option<&str>) {
        self.progress.report(percent, message);
    }

    /// Resolves when the phase should stop: the job was cancelled, or the
    /// process is shutting down. A phase that notices returns early; one that
    /// does not is stopped after a grace period.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether [`cancelled`](Self::cancelled) has resolved.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Turns a serializable value into a phase result.
pub fn to_result<T: Serialize>(value: &T) -> Result<Value, PhaseError> {
    serde_json::to_value(value)
        .map_err(|e| PhaseError::permanent(format!("result is not JSON: {e}")))
}

/// A phase made from an async function; see [`phase_fn`].
pub struct FnPhase<F> {
    name: String,
    f: F,
}

impl<F> fmt::Debug for FnPhase<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnPhase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Makes a phase from an async function of its context.
///
/// ```
/// use jobqueue_runtime::{phase_fn, PhaseError};
/// let fetch = phase_fn("fetch", |ctx| async move {
///     ctx.report(50, Some("half way"));
///     Ok::<_, PhaseError>(serde_json::json!({"bytes": 42}))
/// });
/// # let _ = fetch;
/// ```
///
/// Blocking work goes to [`tokio::task::spawn_blocking`], so that it cannot
/// hold up the async threads (see [`Phase`] on what a timeout does to a
/// phase that blocks):
///
/// ```
/// use jobqueue_runtime::{phase_fn, PhaseError};
/// let checksum = phase_fn("checksum", |ctx| async move {
///     let text = ctx.input().to_string();
///     let sum = tokio::task::spawn_blocking(move || {
///         text.bytes().fold(0u32, |sum, b| sum.rotate_left(5) ^ u32::from(b))
///     })
///     .await
///     .map_err(|e| PhaseError::retryable(format!("checksum task failed: {e}")))?;
///     Ok(serde_json::json!({ "sum": sum }))
/// });
/// # let _ = checksum;
/// ```
pub fn phase_fn<F, Fut>(name: impl Into<String>, f: F) -> FnPhase<F>
where
    F: Fn(PhaseContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, PhaseError>> + Send + 'static,
{
    FnPhase {
        name: name.into(),
        f,
    }
}

#[async_trait]
impl<F, Fut> Phase for FnPhase<F>
where
    F: Fn(PhaseContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, PhaseError>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: PhaseContext) -> Result<Value, PhaseError> {
        (self.f)(ctx).await
    }
}
