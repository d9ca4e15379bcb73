//! Integration tests of jobqueue-events against real HTTP on loopback: a
//! webhook receiver built on hyper that checks every signature with the
//! `standardwebhooks` crate, and SSE streams read as bytes and over HTTP.
//!
//! Tests wait for what they expect with deadlines, never with sleeps.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions; a panic is the failure report"
)]

mod dispatcher;
mod probe;
mod sse;
mod support;
mod webhooks;
