//! `jobqueue-core`: the integration crate of jobqueue.
//!
//! It holds what every layer agrees on, and nothing that runs: ids, job,
//! phase and event records, the state machine as one transition table
//! ([`machine`], applied to job values by [`apply`]), the retry policy, the [`JobStore`] contract with its
//! errors, the [`EventSink`] hook, and [`MemoryStore`], the reference store.
//!
//! Where it sits: at the bottom. `jobqueue-store-sqlite` implements
//! [`JobStore`]; `jobqueue-runtime` drives it; `jobqueue-events` turns
//! [`Event`]s into SSE frames and webhooks; the façade `jobqueue` wires them.
//! A third-party store depends on this crate alone and proves itself with the
//! conformance suite in `testing` (feature `testing`).
//!
//! Architecture Invariant: this crate knows no async runtime, database or
//! HTTP library: no tokio, diesel or hyper in its dependency tree
//! (`cargo xtask tidy` checks it).

#![warn(clippy::arithmetic_side_effects)]

pub mod apply;
pub mod clock;
pub mod error;
pub mod event;
pub mod health;
pub mod id;
pub mod job;
pub mod listen;
pub mod machine;
pub mod memory;
#[cfg(test)]
mod model_tests;
mod names;
pub mod outbox;
pub mod retry;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timefmt;
pub mod unique;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorKind, StoreError};
pub use event::{Event, EventData};
pub use health::{Health, TaskHealth, TaskState};
pub use id::{DeliveryId, JobId, LeaseToken};
pub use job::{DependencyFailure, Interrupted, Job, JobError, NewJob, Phase, Progress};
pub use listen::{Capabilities, Listeners, Notice, StoreListener};
pub use machine::{EventType, JobAction, JobStatus, PhaseAction, PhaseStatus, TransitionError};
pub use memory::MemoryStore;
pub use names::UnknownName;
pub use outbox::{
    AttemptOutcome, Delivery, DeliveryFilter, DeliveryStatus, DeliveryTarget, WebhookRoute,
};
pub use retry::{Jitter, RetryPolicy, SeededJitter};
pub use store::{
    CancelOutcome, ClaimRequest, Claimed, EventFilter, EventSink, FailureOutcome, JobCount,
    JobFilter, JobPage, JobStore, Lease, Next, Pruned, RecoverScope, Renewal, heartbeat_each,
};
