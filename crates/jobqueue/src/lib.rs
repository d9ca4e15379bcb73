//! `jobqueue`: a durable job orchestrator for Rust programs.
//!
//! This is the façade: one handle, [`JobQueue`], over the layers below it.
//! A program builds a queue with a store (an SQLite file by default), its
//! pipelines and options, then enqueues jobs; the runtime runs each job's
//! phases in order, persisting every transition, retrying from the failed
//! phase, and resuming interrupted jobs after a crash or shutdown.
//!
//! ```no_run
//! use jobqueue::{JobQueue, Pipeline, PhaseError, phase_fn};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), jobqueue::Error> {
//! let queue = JobQueue::builder()
//!     .sqlite("jobs.db")
//!     .pipeline(
//!         Pipeline::new("greet")
//!             .phase(phase_fn("hello", |ctx| async move {
//!                 ctx.report(100, Some("said hello"));
//!                 Ok::<_, PhaseError>(json!("hello"))
//!             })),
//!     )
//!     .start()
//!     .await?;
//! let job = queue.enqueue("greet", &json!({"name": "Ada"})).await?;
//! # let _ = job;
//! queue.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The layers are re-exported as modules: [`core`] (types, state machine,
//! store contract), [`runtime`] (pump, pool, phases), [`events`] (event bus,
//! SSE, webhooks) and, with the `sqlite` feature, [`sqlite`] (with the
//! `postgres` feature, `postgres`).

mod error;
mod observe;
mod queue;
pub mod testing;

// The README's quick start compiles as a doctest, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

// So do the user guide and the testing guide.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide.md")]
struct GuideDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../../docs/testing.md")]
struct TestingGuideDoctests;

pub use error::Error;
#[cfg(feature = "sqlite")]
pub use error::TxError;
pub use jobqueue_core as core;
pub use jobqueue_core::{
    CancelOutcome, Clock, DependencyFailure, ErrorKind, Event, EventData, EventFilter, EventType,
    Health, Interrupted, Job, JobError, JobFilter, JobId, JobPage, JobStatus, JobStore,
    ManualClock, MemoryStore, NewJob, Phase as PhaseRecord, PhaseStatus, Progress, RecoverScope,
    RetryPolicy, StoreError, SystemClock, TaskHealth, TaskState,
};
pub use jobqueue_events as events;
pub use jobqueue_events::{Endpoint, EventBus, Subscription, WebhookConfig};
pub use jobqueue_runtime as runtime;
pub use jobqueue_runtime::{
    FailureKind, JobInput, Phase, PhaseContext, PhaseError, PhaseOptions, Pipeline,
    ProgressReporter, Schedule, StateMap, TokioClock, TypedPipeline, phase_fn, to_result,
};
#[cfg(feature = "postgres")]
pub use jobqueue_store_postgres as postgres;
#[cfg(feature = "sqlite")]
pub use jobqueue_store_sqlite as sqlite;
pub use observe::{DrainSummary, JobCounts};
pub use queue::{Enqueued, JobQueue, JobQueueBuilder, JobResults};
