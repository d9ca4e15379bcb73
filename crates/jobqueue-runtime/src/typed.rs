//! Typed pipelines: the job's input type and each step's output type are
//! declared, so that the chain is checked by the compiler and the input
//! when a job is enqueued.
//!
//! A type that implements [`JobInput`] names its pipeline.
//! [`Pipeline::typed`] starts a chain whose first step receives that input;
//! each later step receives the output of the step before it, read back
//! from the stored result (so after a crash or retry a step gets what the
//! completed step before it returned). Inputs and outputs are serde types,
//! stored as JSON.
//!
//! ```
//! use jobqueue_runtime::{JobInput, PhaseError, Pipeline};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { url: String, width: u32 }
//! impl JobInput for Resize { const PIPELINE: &'static str = "resize"; }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Downloaded { bytes: u64, width: u32 }
//!
//! let pipeline: Pipeline = Pipeline::typed::<Resize>()
//!     .step("download", |_ctx, job: Resize| async move {
//!         Ok::<_, PhaseError>(Downloaded { bytes: job.url.len() as u64, width: job.width })
//!     })
//!     .step("resize", |ctx, d: Downloaded| async move {
//!         ctx.report(100, Some("resized"));
//!         Ok::<_, PhaseError>(d.bytes / u64::from(d.width.max(1)))
//!     })
//!     .build();
//! assert_eq!(pipeline.phase_names(), ["download", "resize"]);
//! ```
//!
//! A step that expects anything but the previous step's output does not
//! compile:
//!
//! ```compile_fail
//! use jobqueue_runtime::{JobInput, PhaseError, Pipeline};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { url: String }
//! impl JobInput for Resize { const PIPELINE: &'static str = "resize"; }
//!
//! let pipeline = Pipeline::typed::<Resize>()
//!     .step("download", |_ctx, job: Resize| async move { Ok::<_, PhaseError>(42u64) })
//!     // The download step returns a u64, not a String.
//!     .step("resize", |_ctx, url: String| async move { Ok::<_, PhaseError>(url) })
//!     .build();
//! ```
//!
//! Nor does a first step that expects anything but the input:
//!
//! ```compile_fail
//! use jobqueue_runtime::{JobInput, PhaseError, Pipeline};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { url: String }
//! impl JobInput for Resize { const PIPELINE: &'static str = "resize"; }
//!
//! let pipeline = Pipeline::typed::<Resize>()
//!     .step("download", |_ctx, width: u32| async move { Ok::<_, PhaseError>(width) })
//!     .build();
//! ```
//!
//! The built [`Pipeline`] remembers its input type: the façade's
//! `enqueue_typed(&input)` finds the pipeline by [`JobInput::PIPELINE`] and
//! refuses an input type that is not the pipeline's, and every enqueue
//! (also of plain JSON, also through the HTTP API) refuses an input that
//! does not deserialize into it, before anything is written.
//!
//! Pipelines of plain JSON phases ([`Pipeline::new`] with
//! [`phase_fn`]) keep working as before, and a typed chain
//! is a pipeline like any other (retry policy, timeouts, concurrency).

use std::any::{TypeId, type_name};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use jobqueue_core::RetryPolicy;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::phase::{PhaseContext, PhaseError, phase_fn, to_result};
use crate::pipeline::Pipeline;

/// The input of a typed pipeline, naming the pipeline it belongs to.
pub trait JobInput: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name of the pipeline that runs jobs with this input.
    const PIPELINE: &'static str;
}

/// The input type a typed pipeline declared, and how to check a JSON
/// input against it.
#[derive(Debug, Clone, Copy)]
pub struct InputType {
    /// The type's id.
    pub id: TypeId,
    /// The type's name, for error messages.
    pub name: &'static str,
    check: fn(&Value) -> Result<(), String>,
}

impl InputType {
    /// The declaration of `I`.
    pub fn of<I: DeserializeOwned + 'static>() -> Self {
        Self {
            id: TypeId::of::<I>(),
            name: type_name::<I>(),
            check: |value| I::deserialize(value).map(drop).map_err(|e| e.to_string()),
        }
    }

    /// Whether `input` deserializes into the type; the error says why not.
    pub fn check(&self, input: &Value) -> Result<(), String> {
        (self.check)(input)
    }
}

/// A typed pipeline being built: `I` is the job's input, `Last` the output
/// of its last step so far (the input before the first step). See the
/// [module docs](self).
#[must_use = "a typed pipeline does nothing until it is built and registered"]
pub struct TypedPipeline<I, Last> {
    pipeline: Pipeline,
    /// The step whose result the next step reads; `None`: the input.
    last_step: Option<Arc<str>>,
    types: PhantomData<fn(I) -> Last>,
}

impl<I, Last> std::fmt::Debug for TypedPipeline<I, Last> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedPipeline")
            .field("pipeline", &self.pipeline)
            .field("input", &type_name::<I>())
            .field("last", &type_name::<Last>())
            .finish()
    }
}

impl Pipeline {
    /// Starts a typed pipeline named [`I::PIPELINE`](JobInput::PIPELINE)
    /// whose jobs take an `I`; see [`typed`](crate::typed).
    pub fn typed<I: JobInput>() -> TypedPipeline<I, I> {
        let mut pipeline = Pipeline::new(I::PIPELINE);
        pipeline.input_type = Some(InputType::of::<I>());
        TypedPipeline {
            pipeline,
            last_step: None,
            types: PhantomData,
        }
    }
}

impl<I: JobInput, Last: DeserializeOwned + Send + 'static> TypedPipeline<I, Last> {
    /// Appends a step called `name` that receives the previous step's
    /// output (the job's input, for the first step) and returns its own.
    /// A value that does not deserialize as expected (a result stored by
    /// an older version of the step) is a permanent failure.
    pub fn step<O, F, Fut>(self, name: impl Into<String>, f: F) -> TypedPipeline<I, O>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(PhaseContext, Last) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, PhaseError>> + Send + 'static,
    {
        self.step_with_timeout(name, None, f)
    }

    /// [`step`](Self::step) with a time limit on each run (a run that takes
    /// longer fails, retryable).
    pub fn step_with_timeout<O, F, Fut>(
        self,
        name: impl Into<String>,
        timeout: impl Into<Option<Duration>>,
        f: F,
    ) -> TypedPipeline<I, O>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(PhaseContext, Last) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, PhaseError>> + Send + 'static,
    {
        let name: Arc<str> = Arc::from(name.into());
        let previous = self.last_step.clone();
        let f = Arc::new(f);
        let phase = phase_fn(name.to_string(), move |ctx| {
            let f = f.clone();
            let previous = previous.clone();
            async move {
                let arg: Last = match &previous {
                    Some(step) => ctx.result_of(step)?,
                    None => ctx.input_as()?,
                };
                let output = f(ctx, arg).await?;
                to_result(&output)
            }
        });
        TypedPipeline {
            pipeline: self.pipeline.phase_with_timeout(phase, timeout),
            last_step: Some(name),
            types: PhantomData,
        }
    }

    /// The retry policy of this pipeline's jobs (else the queue's default).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.pipeline = self.pipeline.retry(policy);
        self
    }

    /// A whole attempt that takes longer fails (retryable).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.pipeline = self.pipeline.attempt_timeout(timeout);
        self
    }

    /// At most `n` jobs of this pipeline run at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.pipeline = self.pipeline.concurrency(n);
        self
    }

    /// The pipeline, to register with a queue.
    pub fn build(self) -> Pipeline {
        self.pipeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::PhaseHarness;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Order {
        items: u32,
    }
    impl JobInput for Order {
        const PIPELINE: &'static str = "orders";
    }

    #[tokio::test]
    async fn each_step_gets_the_previous_output() {
        let pipeline = Pipeline::typed::<Order>()
            .step("count", |_ctx, order: Order| async move {
                Ok::<_, PhaseError>(order.items * 2)
            })
            .step("label", |_ctx, n: u32| async move {
                Ok::<_, PhaseError>(format!("{n} parts"))
            })
            .build();
        assert_eq!(pipeline.name(), "orders");
        let input = pipeline.input_type().expect("typed");
        assert_eq!(input.id, TypeId::of::<Order>());
        assert!(input.check(&json!({"items": 3})).is_ok());
        assert!(input.check(&json!({"items": "three"})).is_err());

        let first = pipeline.phases[0].phase.clone();
        let run = PhaseHarness::new("orders", "count")
            .input(&Order { items: 3 })
            .run(&*first)
            .await;
        assert_eq!(run.result, Ok(json!(6)));
        let second = pipeline.phases[1].phase.clone();
        let run = PhaseHarness::new("orders", "label")
            .result("count", &6)
            .run(&*second)
            .await;
        assert_eq!(run.result, Ok(json!("6 parts")));
        // A stored result of another shape is a permanent failure.
        let run = PhaseHarness::new("orders", "label")
            .result("count", &"six")
            .run(&*second)
            .await;
        assert_eq!(
            run.result.map_err(|e| e.kind),
            Err(crate::FailureKind::Permanent)
        );
    }
}
