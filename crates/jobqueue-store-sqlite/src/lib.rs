//! `jobqueue-store-sqlite`: the default, embedded store of jobqueue: a
//! [`JobStore`](jobqueue_core::JobStore) on one SQLite file, through diesel.
//!
//! Where it sits: it implements the contract of `jobqueue-core` and nothing
//! else; the runtime and the façade use it as `Arc<dyn JobStore>`. It passes
//! the same conformance suite as the reference `MemoryStore`.
//!
//! How it works (see `README.md` of this crate for the files and pragmas):
//! - [`SqliteStore::open`] opens the file in WAL mode, checks the schema
//!   version and applies the embedded migrations ([`migrate`](crate::MIGRATIONS)).
//! - One **writer thread** owns the write connection and commits the
//!   operations waiting for it together (group commit), each in its own
//!   savepoint; a small **pool of reader threads** serves the reads.
//! - `src/schema.rs` is generated from the migrations by [`codegen`].
//!
//! ```no_run
//! use jobqueue_store_sqlite::{SqliteOptions, SqliteStore};
//! let store = SqliteStore::open("jobs.db", SqliteOptions::default())?;
//! # Ok::<(), jobqueue_core::StoreError>(())
//! ```

pub mod codegen;
mod conn;
mod error;
mod guard;
mod lock;
mod migrate;
mod ops;
mod query;
mod read;
#[cfg(test)]
mod robustness_tests;
mod rows;
mod schema;
mod store;
#[cfg(test)]
mod tests;
mod writer;

pub use conn::{SqliteOptions, Synchronous};
pub use migrate::MIGRATIONS;
pub use store::SqliteStore;
