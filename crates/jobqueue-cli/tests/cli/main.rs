//! The tests of the `jobqueue` binary and its parts, one binary: the config
//! file, `check-config`, command phases with real processes, the server's
//! start and shutdown, the client commands against a loopback stub, and
//! (`e2e/`) the real `jobqueue serve` end to end over HTTP.

#![expect(
    clippy::unwrap_used,
    reason = "tests: an unexpected error is a failure"
)]

mod check_config;
mod client;
mod command;
mod config;
mod crash;
mod e2e;
mod server;
mod support;
