//! The runtime's own tests, on the memory store and tokio's paused time
//! (one test that needs a real blocked thread runs on real time): what a
//! slow or panicking store, a blocking phase, a refused result and extreme
//! settings do to the runner, the pump and the background tasks.

#![expect(
    clippy::unwrap_used,
    reason = "tests: an unexpected error is a failure"
)]

mod runner;
mod settings;
mod supervision;
mod support;
