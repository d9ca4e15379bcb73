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
//! **Sequence numbers: a counter row, taken last.** Event numbers come
//! from one row (`store_state.last_seq`) that an appending transaction
//! updates in its last statement and holds locked until it commits. So
//! event-appending commits happen in sequence order across all processes,
//! and a reader never sees number `n` before every number below it
//! committed: `events_after` replay has no gaps and no duplicates while
//! writes are in flight. The cost is that event-appending commits are
//! serialised database-wide, each holding the lock for one statement plus
//! its commit (round trip and WAL flush); the README gives the measured
//! rate. The alternative, a sequence with a visibility guard (readers stop
//! below the oldest number still in flight, found through
//! `pg_snapshot_xmin` or a watermark), commits in parallel but has to find
//! the numbers of transactions it cannot see, and lets one long transaction
//! anywhere in the database hold every reader back; it is the path if the
//! serialised commit ever becomes the bottleneck.
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
mod error;
mod migrate;
mod ops;
mod options;
mod read;
mod rows;
mod schema;
mod store;
#[cfg(test)]
mod tests;
mod tx;

pub use migrate::MIGRATIONS;
pub use options::PostgresOptions;
pub use store::PostgresStore;
