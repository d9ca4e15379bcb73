//! `jobqueue-store-postgres`: the [`JobStore`](jobqueue_core::JobStore)
//! contract on PostgreSQL, through diesel, for a queue that several
//! processes on several machines share.
//!
//! Where it sits: it implements the contract of `jobqueue-core` and nothing
//! else; the runtime and the façade (`jobqueue`, feature `postgres`) use it
//! as `Arc<dyn JobStore>`. It passes the same conformance suite as the
//! reference `MemoryStore`. See `README.md` of this crate for its tables,
//! the claim query and its index, and the error mapping.
//!
//! ```no_run
//! use jobqueue_store_postgres::{PostgresOptions, PostgresStore};
//! # async fn demo() -> Result<(), jobqueue_core::StoreError> {
//! let store = PostgresStore::connect(
//!     "postgres://jobqueue@db.internal:5432/jobs",
//!     PostgresOptions::default().schema("jobqueue"),
//! )
//! .await?;
//! # let _ = store; Ok(()) }
//! ```
//!
//! # Design decisions
//!
//! **Driver: diesel-async on tokio-postgres, pooled by deadpool.** The
//! driver is pure Rust: no libpq to install for the build or ship with the
//! binary. Calls are async all the way down, so a waiting call costs a task,
//! not a thread (sync diesel would park a `spawn_blocking` thread per call
//! in flight, up to the pool's size and beyond while they wait for a
//! connection). deadpool's `get` is cancellation-safe and its wait and
//! connect timeouts turn into `Busy` and `Io` errors. This crate may depend
//! on tokio; `jobqueue-core` does not.
//!
//! **Cancellation safety.** Every call runs in a task of its own on the
//! runtime it was connected on; the caller awaits that task. A caller's
//! future that is dropped (a timeout, a `select!`) therefore never cuts a
//! transaction in half: the task commits and publishes its events, or rolls
//! back, either way to the end; a connection whose transaction state is
//! unknown is dropped by the pool, and PostgreSQL rolls back what it held.
//! `src/tx.rs` has the details.
//!
//! **Sequence numbers: reserved, then guarded.** A transaction about to
//! append events reserves their numbers in one short statement on a
//! connection of its own (a counter row bumped and a `seq_reservations` row
//! naming the transaction, committed at once without waiting for a flush),
//! then inserts its events with them and deletes the reservation as it
//! commits. Readers read only below the first reservation whose owner may
//! still commit. Since reservations are committed in number order, each
//! before its events, a reader that sees number `n` has seen, or waits for,
//! every number below it: `events_after` replay has no gap and no duplicate
//! while writes are in flight. Only the reservation step is serialised
//! across processes; the transactions commit in parallel and PostgreSQL
//! flushes them together. The costs: two round trips per event-appending
//! transaction, unused numbers (gaps in the numbering, never in the events)
//! after a transaction that fails once it reserved, and readers held back
//! while such a transaction runs. The simpler alternative, a counter row
//! held locked until each appending transaction commits, serialises those
//! commits and their WAL flushes database-wide; it measured at half the
//! throughput with eight writers here and does not scale with more (see
//! the README). `src/seq.rs` has the argument in full.
//!
//! **Time: the injected [`Clock`](jobqueue_core::Clock), not `now()`.**
//! Every transaction reads its time once from the store's clock
//! ([`PostgresOptions::clock`], the system clock by default) and writes it
//! as a value, as the other stores do: the conformance suite and the
//! runtime's tests drive time with a manual or paused clock, and the times
//! a call returns are the times it stored. With many machines, each reads
//! its own clock, so lease expiry and `run_at` are compared across clocks:
//! keep them synchronised (NTP), and keep leases long against the skew.
//!
//! **Fencing in SQL.** A leased write locks the job with `WHERE id = $1 AND
//! lease = $2` and repeats the comparison in each `UPDATE` it makes; no
//! process-local cache decides a lease (see `src/ops.rs`).
//!
//! **Unique keys** are a partial unique index on active jobs; its
//! violation (SQLSTATE 23505 on `jobs_unique_key`) becomes `Duplicate`,
//! naming the holder.

pub mod codegen;
mod deps;
mod error;
mod group;
mod listen;
mod migrate;
mod ops;
mod options;
mod read;
mod rows;
mod schema;
mod seq;
mod singleton;
mod store;
#[cfg(test)]
mod tests;
mod tx;
mod user_tx;

pub use migrate::MIGRATIONS;
pub use options::PostgresOptions;
pub use store::PostgresStore;

/// diesel-async's PostgreSQL connection, on which
/// [`PostgresStore::enqueue_in`] enqueues.
pub use diesel_async::AsyncPgConnection;
