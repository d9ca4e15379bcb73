//! The tests of the `jobqueue` binary and its parts, one binary: so far the
//! config file.

mod config;
