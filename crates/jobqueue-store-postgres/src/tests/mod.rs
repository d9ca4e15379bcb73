//! Tests of the PostgreSQL store against a real database: the conformance
//! suite, random sequences of writes against the memory store, event numbering under concurrent writers on many connections,
//! and what is particular to this store (migrations, the claim's plan,
//! errors, several stores sharing one database, cancellation).
//!
//! They read the database's URL from `JOBQUEUE_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); see [`db`] for what happens
//! without it. Each test works in a schema of its own, dropped afterwards.

mod conformance;
pub(crate) mod db;
mod differential;
mod sequence;
mod store;
