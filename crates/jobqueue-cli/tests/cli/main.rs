//! The tests of the `jobqueue` binary and its parts, one binary: the config
//! file, `check-config`, command phases with real processes, the server's
//! start and shutdown, and the client commands against a loopback stub.

#![expect(
    clippy::unwrap_used,
    reason = "tests: an unexpected error is a failure"
)]

mod check_config;
mod client;
mod command;
mod config;
mod crash;
mod server;
mod support;
