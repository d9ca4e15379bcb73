//! `jobqueue-store-sqlite`: the default, embedded store of jobqueue: a
//! [`JobStore`](jobqueue_core::JobStore) on one SQLite file, through diesel.
//!
//! Where it sits: it implements the contract of `jobqueue-core` and nothing
//! else; the runtime and the façade use it as `Arc<dyn JobStore>`. It passes
//! the same conformance suite as the reference `MemoryStore`.
//!
//! How it works (see `README.md` of this crate for the files and pragmas):
//! - One process per file: [`SqliteStore::open`] first takes an exclusive
//!   OS lock on `<file>.lock`, held until the store is closed; a second
//!   store on the file fails with `ErrorKind::InUse`.
//! - It then checks that the file is a jobqueue database of a schema this
//!   build knows (before anything is written to it), switches it to WAL and
//!   applies the embedded migrations ([`migrate`](crate::MIGRATIONS)).
//! - One **writer thread** owns the write connection and commits the
//!   operations waiting for it together (group commit), with a savepoint
//!   per operation only when one fails after it wrote, and checks before
//!   each commit that the file is still the one it opened; a small **pool
//!   of reader threads** serves the reads. Both take work through bounded
//!   queues. A **checkpointer thread** copies the WAL back into the file
//!   beside the writer, so the writer does not stop for it.
//! - [`SqliteStore::enqueue_with`] runs the program's own diesel
//!   statements and the enqueue of jobs in one transaction of the writer.
//! - `src/schema.rs` is generated from the migrations by [`codegen`].
//!
//! ```no_run
//! use jobqueue_store_sqlite::{SqliteOptions, SqliteStore};
//! let store = SqliteStore::open("jobs.db", SqliteOptions::default())?;
//! # Ok::<(), jobqueue_core::StoreError>(())
//! ```

mod checkpoint;
pub mod codegen;
mod conn;
mod deps;
#[cfg(test)]
mod differential_tests;
mod error;
mod guard;
mod lock;
mod migrate;
mod ops;
mod query;
mod raw;
mod read;
#[cfg(test)]
mod robustness_tests;
mod rows;
mod schema;
mod store;
#[cfg(test)]
mod tests;
mod user_tx;
mod vfs;
mod writer;

pub use conn::{SqliteOptions, Synchronous};
pub use migrate::MIGRATIONS;
pub use store::SqliteStore;
pub use user_tx::UserTxError;

/// diesel's SQLite connection, which [`SqliteStore::enqueue_with`] hands
/// its closure (so a program names it without depending on the same
/// diesel version by accident).
pub use diesel::sqlite::SqliteConnection;
