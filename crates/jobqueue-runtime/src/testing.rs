//! Running one phase in a unit test, without a store or a queue.
//!
//! [`PhaseHarness`] builds the [`PhaseContext`] the runner would build (the
//! job's input, the results of earlier phases, where a crash interrupted
//! the job, the attempt, application state), runs a phase with it and
//! returns what the phase did: its result and every progress report, in
//! order.
//!
//! ```
//! use jobqueue_runtime::testing::PhaseHarness;
//! use jobqueue_runtime::{PhaseError, phase_fn};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let resize = phase_fn("resize", |ctx| async move {
//!     let bytes: u64 = ctx.result_of("download")?;
//!     ctx.report(50, Some("resizing"));
//!     Ok::<_, PhaseError>(json!({ "bytes": bytes / 2 }))
//! });
//!
//! let run = PhaseHarness::new("images", "resize")
//!     .input(&json!({ "url": "https://example.com/cat.png" }))
//!     .result("download", &1024)
//!     .run(&resize)
//!     .await;
//! assert_eq!(run.result, Ok(json!({ "bytes": 512 })));
//! assert_eq!(run.reports[0].percent, 50);
//! # }
//! ```

use std::sync::{Arc, Mutex};

use jobqueue_core::{Interrupted, JobId, Progress};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoints, Target};
use crate::phase::{Phase, PhaseContext, PhaseError, ProgressReporter};
use crate::pipeline::Pipeline;
use crate::runtime::lock;
use crate::state::StateMap;

/// Builds a [`PhaseContext`] for a test and runs a phase with it; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct PhaseHarness {
    job_id: JobId,
    pipeline: String,
    phase: String,
    index: usize,
    attempt: u32,
    input: Value,
    results: Map<String, Value>,
    interrupted: Option<Interrupted>,
    checkpoint: Option<Value>,
    state: StateMap,
    cancelled: bool,
    /// The first value that could not be turned into JSON: the run fails
    /// with it rather than the builder panicking.
    bad_json: Option<String>,
}

impl PhaseHarness {
    /// A context for phase `phase` of pipeline `pipeline`: a new job id,
    /// index 0, attempt 1, input `null`, no earlier results, not
    /// interrupted, no state.
    pub fn new(pipeline: impl Into<String>, phase: impl Into<String>) -> Self {
        Self {
            job_id: JobId::new(),
            pipeline: pipeline.into(),
            phase: phase.into(),
            index: 0,
            attempt: 1,
            input: Value::Null,
            results: Map::new(),
            interrupted: None,
            checkpoint: None,
            state: StateMap::new(),
            cancelled: false,
            bad_json: None,
        }
    }

    fn json<T: Serialize + ?Sized>(&mut self, what: &str, value: &T) -> Value {
        serde_json::to_value(value).unwrap_or_else(|e| {
            self.bad_json
                .get_or_insert_with(|| format!("the harness's {what} is not JSON: {e}"));
            Value::Null
        })
    }

    /// The job's id.
    pub fn job_id(mut self, id: JobId) -> Self {
        self.job_id = id;
        self
    }

    /// The phase's 0-based position in its pipeline.
    pub fn index(mut self, index: usize) -> Self {
        self.index = index;
        self
    }

    /// The job's attempt (1-based).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The job's input.
    pub fn input<T: Serialize + ?Sized>(mut self, input: &T) -> Self {
        self.input = self.json("input", input);
        self
    }

    /// The result of the earlier phase `phase`.
    pub fn result<T: Serialize + ?Sized>(mut self, phase: impl Into<String>, result: &T) -> Self {
        let phase = phase.into();
        let value = self.json(&format!("result of {phase:?}"), result);
        self.results.insert(phase, value);
        self
    }

    /// Where a crash or shutdown cut the job short before.
    pub fn interrupted(mut self, interrupted: Interrupted) -> Self {
        self.interrupted = Some(interrupted);
        self
    }

    /// The checkpoint an earlier run of the phase saved, which it reads
    /// back with [`PhaseContext::checkpoint_as`]: to test that it resumes
    /// from it. The checkpoints the run saves are in
    /// [`PhaseRun::checkpoints`].
    pub fn checkpoint<T: Serialize + ?Sized>(mut self, checkpoint: &T) -> Self {
        self.checkpoint = Some(self.json("checkpoint", checkpoint));
        self
    }

    /// Application state the phase reads with
    /// [`PhaseContext::state`]; one value per type.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// The phase starts told to stop, as when its job was cancelled or the
    /// process shuts down ([`PhaseContext::cancelled`] resolves at once).
    pub fn cancelled(mut self) -> Self {
        self.cancelled = true;
        self
    }

    /// The context, and the logs its progress reports and checkpoints go to.
    fn context(&self) -> (PhaseContext, Logs) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let saved = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        if self.cancelled {
            cancel.cancel();
        }
        let ctx = PhaseContext {
            job_id: self.job_id,
            pipeline: Arc::from(self.pipeline.as_str()),
            phase: Arc::from(self.phase.as_str()),
            index: self.index,
            attempt: self.attempt,
            input: Arc::new(self.input.clone()),
            results: Arc::new(self.results.clone()),
            interrupted: self.interrupted.clone(),
            progress: ProgressReporter::recording(log.clone()),
            cancel,
            state: Arc::new(self.state.clone()),
            checkpoints: Checkpoints::new(self.checkpoint.clone(), Target::Log(saved.clone())),
        };
        (
            ctx,
            Logs {
                reports: log,
                checkpoints: saved,
            },
        )
    }

    /// Builds the context alone, for a phase written as a plain async
    /// function of it rather than a [`Phase`].
    pub fn build(&self) -> PhaseContext {
        self.context().0
    }

    /// Runs `phase` with the context, on this task (a panic in the phase
    /// reaches the test), and returns what it did. The harness can run the
    /// phase again, for a test of a second attempt.
    pub async fn run<P: Phase + ?Sized>(&self, phase: &P) -> PhaseRun {
        if let Some(message) = &self.bad_json {
            return PhaseRun::failed(PhaseError::permanent(message));
        }
        let (ctx, logs) = self.context();
        let result = phase.run(ctx).await;
        PhaseRun {
            result,
            reports: std::mem::take(&mut *lock(&logs.reports)),
            checkpoints: std::mem::take(&mut *lock(&logs.checkpoints)),
        }
    }
}

impl PhaseHarness {
    /// Runs the harness's phase of `pipeline` (found by name, its index set
    /// from its position): the way to test one step of a typed pipeline,
    /// which reads the previous step's result from
    /// [`result`](Self::result). A name the pipeline does not have is a
    /// permanent failure of the run.
    ///
    /// ```
    /// use jobqueue_runtime::testing::PhaseHarness;
    /// use jobqueue_runtime::{JobInput, PhaseError, Pipeline};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Order { items: u32 }
    /// impl JobInput for Order { const PIPELINE: &'static str = "orders"; }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pipeline = Pipeline::typed::<Order>()
    ///     .step("count", |_ctx, o: Order| async move { Ok::<_, PhaseError>(o.items) })
    ///     .step("label", |_ctx, n: u32| async move { Ok::<_, PhaseError>(format!("{n} items")) })
    ///     .build();
    /// let run = PhaseHarness::new("orders", "label")
    ///     .result("count", &3)
    ///     .run_in(&pipeline)
    ///     .await;
    /// assert_eq!(run.output::<String>(), Ok("3 items".to_owned()));
    /// # }
    /// ```
    pub async fn run_in(&self, pipeline: &Pipeline) -> PhaseRun {
        let found = pipeline
            .phases()
            .iter()
            .enumerate()
            .find(|(_, spec)| spec.phase.name() == self.phase);
        match found {
            Some((index, spec)) => self.clone().index(index).run(&*spec.phase).await,
            None => PhaseRun::failed(PhaseError::permanent(format!(
                "pipeline {:?} has no phase {:?}",
                pipeline.name(),
                self.phase
            ))),
        }
    }
}

/// What a phase did in a [`PhaseHarness`] run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PhaseRun {
    /// What it returned.
    pub result: Result<Value, PhaseError>,
    /// Every progress report it made, in order (the runner persists only
    /// the latest of them every progress interval).
    pub reports: Vec<Progress>,
    /// Every checkpoint it saved, in order (the runner stores each one).
    pub checkpoints: Vec<Value>,
}

/// Where a harness's context logs what the phase reports and saves.
struct Logs {
    reports: Arc<Mutex<Vec<Progress>>>,
    checkpoints: Arc<Mutex<Vec<Value>>>,
}

impl PhaseRun {
    /// A run that did not get to run the phase.
    fn failed(error: PhaseError) -> Self {
        Self {
            result: Err(error),
            reports: Vec::new(),
            checkpoints: Vec::new(),
        }
    }

    /// The last checkpoint it saved read as `T`: `None` if it saved none;
    /// one that does not fit `T` is the error.
    pub fn last_checkpoint<T: DeserializeOwned>(&self) -> Result<Option<T>, PhaseError> {
        self.checkpoints
            .last()
            .map(|value| {
                T::deserialize(value).map_err(|e| {
                    PhaseError::permanent(format!("the phase's checkpoint does not fit: {e}"))
                })
            })
            .transpose()
    }

    /// The result read as `T`; a failure of the phase, or a result that
    /// does not fit `T`, is the error.
    pub fn output<T: DeserializeOwned>(&self) -> Result<T, PhaseError> {
        let value = self.result.as_ref().map_err(Clone::clone)?;
        T::deserialize(value)
            .map_err(|e| PhaseError::permanent(format!("the phase's result does not fit: {e}")))
    }

    /// The last progress report, if any.
    pub fn last_report(&self) -> Option<&Progress> {
        self.reports.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FailureKind, phase_fn};
    use serde_json::json;

    #[tokio::test]
    async fn the_phase_sees_what_the_harness_was_given() {
        let phase = phase_fn("b", |ctx| async move {
            ctx.report(10, Some("start"));
            ctx.progress().percent(90);
            Ok(json!({
                "input": ctx.input(),
                "a": ctx.results().get("a"),
                "attempt": ctx.attempt(),
                "index": ctx.index(),
                "interrupted_at": ctx.interrupted().and_then(|i| i.progress.as_ref()).map(|p| p.percent),
                "state": ctx.state::<u32>()?,
                "cancelled": ctx.is_cancelled(),
            }))
        });
        let interrupted = Interrupted {
            phase: "b".into(),
            at: time::OffsetDateTime::UNIX_EPOCH,
            progress: Some(Progress::new(40, None)),
        };
        let run = PhaseHarness::new("p", "b")
            .input(&json!({"n": 1}))
            .result("a", &"done")
            .attempt(2)
            .index(1)
            .interrupted(interrupted)
            .state(7u32)
            .cancelled()
            .run(&phase)
            .await;
        assert_eq!(
            run.result,
            Ok(json!({
                "input": {"n": 1}, "a": "done", "attempt": 2, "index": 1,
                "interrupted_at": 40, "state": 7, "cancelled": true,
            }))
        );
        let percents: Vec<u8> = run.reports.iter().map(|p| p.percent).collect();
        assert_eq!(percents, [10, 90]);
        assert_eq!(run.last_report().map(|p| p.percent), Some(90));
    }

    #[tokio::test]
    async fn missing_state_is_a_permanent_failure_naming_the_type() {
        let phase = phase_fn("a", |ctx| async move {
            ctx.state::<String>()?;
            Ok(Value::Null)
        });
        let run = PhaseHarness::new("p", "a").state(1u8).run(&phase).await;
        let err = run.result.expect_err("no String state");
        assert_eq!(err.kind, FailureKind::Permanent);
        assert!(err.message.contains("alloc::string::String"), "{err}");
        assert!(err.message.contains("u8"), "{err}");
    }

    #[tokio::test]
    async fn output_reads_the_result_typed() {
        let phase = phase_fn("a", |_| async { Ok(json!(3)) });
        let run = PhaseHarness::new("p", "a").run(&phase).await;
        assert_eq!(run.output::<u32>(), Ok(3));
        assert!(run.output::<String>().is_err());
    }

    #[tokio::test]
    async fn run_in_finds_the_phase_and_its_index() {
        let pipeline = Pipeline::new("p")
            .phase(phase_fn("a", |_| async { Ok(json!("a")) }))
            .phase(phase_fn("b", |ctx| async move { Ok(json!(ctx.index())) }));
        let run = PhaseHarness::new("p", "b").run_in(&pipeline).await;
        assert_eq!(run.result, Ok(json!(1)));
        let run = PhaseHarness::new("p", "zzz").run_in(&pipeline).await;
        let err = run.result.expect_err("no such phase");
        assert!(err.message.contains("no phase \"zzz\""), "{err}");
    }

    /// Copies rows up to 5 from its checkpoint on, saving one after each.
    fn copy() -> impl Phase {
        phase_fn("copy", |ctx| async move {
            let mut next = ctx.checkpoint_as::<u32>()?.unwrap_or(0);
            while next < 5 {
                next = next.saturating_add(1);
                ctx.checkpoint(&next).await?;
                assert_eq!(ctx.checkpoint_as::<u32>()?, Some(next), "read back at once");
            }
            Ok(json!(next))
        })
    }

    #[tokio::test]
    async fn a_phase_resumes_from_the_checkpoint_given_and_its_saves_are_kept() {
        let fresh = PhaseHarness::new("p", "copy").run(&copy()).await;
        assert_eq!(
            fresh.checkpoints,
            [json!(1), json!(2), json!(3), json!(4), json!(5)]
        );
        let resumed = PhaseHarness::new("p", "copy")
            .checkpoint(&3)
            .run(&copy())
            .await;
        assert_eq!(resumed.result, Ok(json!(5)));
        assert_eq!(resumed.checkpoints, [json!(4), json!(5)]);
        assert_eq!(resumed.last_checkpoint::<u32>(), Ok(Some(5)));
        assert!(resumed.last_checkpoint::<String>().is_err());
    }

    #[tokio::test]
    async fn a_checkpoint_that_does_not_fit_or_is_too_deep_is_a_permanent_failure() {
        let run = PhaseHarness::new("p", "copy")
            .checkpoint(&"not a number")
            .run(&copy())
            .await;
        let err = run.result.expect_err("a string checkpoint");
        assert_eq!(err.kind, FailureKind::Permanent);
        assert!(
            err.message
                .contains("checkpoint of phase \"copy\" does not fit"),
            "{err}"
        );
        let deep = phase_fn("deep", |ctx| async move {
            let deep = (0..100).fold(json!(1), |inner, _| Value::Array(vec![inner]));
            ctx.checkpoint(&deep).await?;
            Ok(Value::Null)
        });
        let run = PhaseHarness::new("p", "deep").run(&deep).await;
        let err = run.result.expect_err("too deep");
        assert_eq!(err.kind, FailureKind::Permanent);
        assert!(err.message.contains("nested deeper"), "{err}");
        assert!(run.checkpoints.is_empty(), "nothing saved");
    }

    #[tokio::test]
    async fn snooze_is_its_own_kind_with_its_delay() {
        let phase = phase_fn("wait", |_| async {
            Err::<Value, _>(PhaseError::snooze(std::time::Duration::from_secs(5)))
        });
        let run = PhaseHarness::new("p", "wait").run(&phase).await;
        let err = run.result.expect_err("snoozed");
        assert_eq!(
            err.kind,
            FailureKind::Snooze(std::time::Duration::from_secs(5))
        );
        assert_eq!(err.message, "snoozed for 5s");
    }
}
