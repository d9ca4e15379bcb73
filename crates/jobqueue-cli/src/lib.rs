//! `jobqueue-cli`: the `jobqueue` binary, a job server whose phases are
//! commands from a TOML config, and the client commands that talk to it.
//!
//! Where it sits: on top. It reads the config ([`config`]), builds a
//! [`jobqueue::JobQueue`] through the façade with one command phase
//! ([`command`]) per configured step, and runs it in `jobqueue serve`
//! ([`server`]); the REST + SSE API is served by `jobqueue-http`. The client
//! commands (`enqueue`, `jobs`, `show`, `cancel`, `retry`, `tail`) speak that
//! API over HTTP ([`client`]). The command line itself is [`cli`].
//!
//! The library exists so that the binary's parts can be tested one by one;
//! `docs/server.md` describes the binary for its users.

pub mod cli;
pub mod client;
pub mod command;
pub mod config;
pub mod demo;
pub mod server;
