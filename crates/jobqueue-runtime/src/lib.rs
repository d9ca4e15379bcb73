//! `jobqueue-runtime`: the part of jobqueue that runs jobs.
//!
//! It sits between the store (any [`JobStore`](jobqueue_core::JobStore),
//! used as `Arc<dyn JobStore>`) and the façade `jobqueue`. The [`Runtime`]
//! recovers jobs a previous process left running, then its pump claims
//! runnable jobs in batches up to the free slots of the worker pool; each
//! claimed job runs on its own task through the phase runner, which persists
//! every transition with the claim's fencing token. Retries resume at the
//! failed phase; completed phases never run again. Shutdown stops claiming,
//! lets phases finish within a deadline and records the rest as interrupted.
//! The retention scheduler marks old finished jobs stale and deletes them,
//! and the scheduler enqueues periodic jobs ([`Schedule`]), once per tick
//! even when several processes share a store.
//! Every background task is supervised: a panic is logged, counted in
//! [`Runtime::health`] and the task restarted, and a worker that panics
//! outside its phase never leaves its job `running`.
//!
//! The runtime records its figures through the `metrics` facade (see
//! [`metrics`] for the names), so any exporter the program installs sees
//! them.
//!
//! See `docs/runtime-lifecycle.md` for the walk from startup to shutdown.

// The runtime runs unattended in background tasks, where an overflow panic
// would stall the queue: time and counter arithmetic is checked or
// saturating, and each exception says why it cannot overflow.
#![warn(clippy::arithmetic_side_effects)]

mod checkpoint;
mod clock;
mod heartbeats;
mod keeper;
pub mod metrics;
mod phase;
mod pipeline;
mod retention;
mod runner;
mod runtime;
mod schedule;
mod state;
mod supervise;
pub mod testing;
pub mod typed;
mod wake;

pub use clock::TokioClock;
pub use phase::{
    FailureKind, FnPhase, Phase, PhaseContext, PhaseError, ProgressReporter, phase_fn, to_result,
};
pub use pipeline::{PhaseOptions, PhaseSpec, Pipeline, Pipelines};
pub use retention::{RetentionConfig, RetentionPass, run_retention_pass};
pub use runtime::{Runtime, RuntimeConfig, StartError};
pub use schedule::{MIN_INTERVAL, Schedule, check_schedules};
pub use state::StateMap;
pub use typed::{InputType, JobInput, TypedPipeline};
