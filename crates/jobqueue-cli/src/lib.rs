//! `jobqueue-cli`: the `jobqueue` binary, a job server whose phases are
//! commands from a TOML config, and the client commands that talk to it.
//!
//! Where it sits: on top, over the façade `jobqueue`. It reads the config
//! ([`config`]) and runs each configured step as a command phase
//! ([`command`]): a real process in a process group of its own, ended
//! however the phase ends. The client commands speak the server's HTTP API
//! ([`client`]).
//!
//! The library exists so that the binary's parts can be tested one by one.

pub mod client;
pub mod command;
pub mod config;
