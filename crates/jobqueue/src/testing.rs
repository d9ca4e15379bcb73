//! Helpers for testing programs that use jobqueue.
//!
//! - [`PhaseHarness`] runs one phase in a unit test, with the input,
//!   earlier results, interrupted context and application state you give
//!   it, and returns its result and every progress report.
//! - [`JobQueue::drain`](crate::JobQueue::drain) runs every runnable job to
//!   its end, for integration tests; [`JobQueue::wait`](crate::JobQueue::wait)
//!   waits for one job.
//!
//! `docs/testing.md` is the guide.

pub use jobqueue_runtime::testing::{PhaseHarness, PhaseRun};
