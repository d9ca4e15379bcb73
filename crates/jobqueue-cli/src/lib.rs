//! `jobqueue-cli`: the `jobqueue` binary, a job server whose phases are
//! commands from a TOML config, and the client commands that talk to it.
//!
//! Where it sits: on top, over the façade `jobqueue`. This first part is
//! the config file ([`config`]): TOML read into typed settings, every error
//! reported with its place.
//!
//! The library exists so that the binary's parts can be tested one by one.

pub mod config;
