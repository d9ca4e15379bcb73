//! The tests of the `jobqueue` binary and its parts, one binary: the config
//! file, `check-config`, command phases with real processes, the server's
//! start and shutdown, the client commands against a loopback stub, (`e2e/`)
//! the real `jobqueue serve` end to end over HTTP, `jobqueue tail` against
//! the real server in a terminal and a pipe, and the dashboard in a
//! headless browser against the real server.

#![expect(
    clippy::unwrap_used,
    reason = "tests: an unexpected error is a failure"
)]

mod check_config;
mod client;
mod command;
mod config;
mod crash;
mod dashboard;
mod e2e;
mod pause;
mod schedules;
mod served;
mod server;
mod support;
mod tail;
