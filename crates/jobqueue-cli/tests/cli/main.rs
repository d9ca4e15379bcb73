//! The tests of the `jobqueue` binary and its parts, one binary: the config
//! file, and command phases with real processes.

#![expect(
    clippy::unwrap_used,
    reason = "tests: an unexpected error is a failure"
)]

mod command;
mod config;
mod crash;
mod support;
