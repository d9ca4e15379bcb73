//! Opening connections: options, per-connection pragmas and the WAL check.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::sqlite::SqliteConnection;
use jobqueue_core::{Clock, ErrorKind, StoreError, SystemClock};

use crate::error::{conn_err, db_err};

/// SQLite's `synchronous` setting for every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `NORMAL`: in WAL mode a commit survives a crash of the process; a power
    /// loss may lose the last commits but never corrupts the database.
    #[default]
    Normal,
    /// `FULL`: every commit is synced to disk before it is acknowledged, so
    /// it survives a power loss too, at the cost of one fsync per batch.
    Full,
}

impl Synchronous {
    fn as_sql(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// How to open a [`SqliteStore`](crate::SqliteStore).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Where the store reads the time.
    pub clock: Arc<dyn Clock>,
    /// The `synchronous` pragma.
    pub synchronous: Synchronous,
    /// How long a connection waits for a lock before it reports `Busy`.
    pub busy_timeout: Duration,
    /// How many read connections (each with its own thread) serve reads.
    pub readers: usize,
    /// The most write operations the writer gathers into one transaction.
    pub max_batch: usize,
    /// The largest the database file may grow, in bytes (`None`: no limit
    /// but the disk's). A write that would pass it fails with an `Io` error,
    /// as on a full disk, and changes nothing.
    pub max_size: Option<u64>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            readers: 2,
            max_batch: 512,
            max_size: None,
        }
    }
}

impl SqliteOptions {
    /// Reads the time from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the `synchronous` pragma.
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets the busy timeout.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Caps the size of the database file (see [`SqliteOptions::max_size`]).
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Sets the number of read connections (at least 1).
    pub fn readers(mut self, n: usize) -> Self {
        self.readers = n.max(1);
        self
    }
}

/// Where the database lives.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// A file (with its `-wal` and `-shm` companions).
    File(PathBuf),
    /// A private in-memory database, on one connection.
    Memory,
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The one connection that writes jobs: it opens its file through the
    /// writer's VFS (see [`crate::vfs`]), when that is available.
    Writer,
    /// The checkpointer's connection (see [`crate::checkpoint`]).
    Checkpointer,
    /// A read connection (`query_only`).
    Reader,
}

impl Location {
    /// What SQLite is given to open the database for `role`.
    fn url(&self, role: Role) -> Result<String, StoreError> {
        match self {
            Self::Memory => Ok(":memory:".to_owned()),
            Self::File(path) => {
                let s = path.to_str().ok_or_else(|| {
                    StoreError::Invalid(format!("database path {path:?} is not valid UTF-8"))
                })?;
                if s.starts_with("file:") || s == ":memory:" || s.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "database path {s:?} must name a file"
                    )));
                }
                if role == Role::Writer && crate::vfs::register() {
                    return Ok(crate::vfs::uri(s));
                }
                Ok(s.to_owned())
            }
        }
    }

    /// Checks what SQLite would report unclearly: a missing directory, a
    /// directory in place of the file, a file marked read-only.
    pub(crate) fn precheck(&self) -> Result<(), StoreError> {
        let Self::File(path) = self else {
            return Ok(());
        };
        self.url(Role::Reader)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(StoreError::backend(
                ErrorKind::Io,
                format!(
                    "cannot open sqlite database {}: directory {} does not exist",
                    path.display(),
                    dir.display()
                ),
            ));
        }
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_dir() {
                return Err(StoreError::backend(
                    ErrorKind::Io,
                    format!(
                        "cannot open sqlite database {}: it is a directory",
                        path.display()
                    ),
                ));
            }
            // Refused even for root, who could write it anyway: a file marked
            // read-only says it must not change.
            if meta.permissions().readonly() {
                return Err(StoreError::backend(
                    ErrorKind::Io,
                    format!(
                        "cannot open sqlite database {}: the file is read-only",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Pages in the WAL before the commit that passes it checkpoints (SQLite's
/// default is 1000): four times the length at which the checkpointer has
/// the WAL start over, 128 MiB. The checkpointer thread (see
/// [`crate::checkpoint`]) keeps the WAL well below this: it is the
/// backstop for when that thread cannot keep up or fails, or a long read
/// holds the WAL, and the writer then checkpoints itself. (A checkpointer alone cannot bound the WAL under
/// steady load: the WAL restarts only when a write transaction begins with
/// all of it copied back, which the writer, appending, never lets another
/// thread see; so the checkpointer asks the writer to finish.)
pub(crate) const WAL_AUTOCHECKPOINT_PAGES: u32 =
    4 * crate::checkpoint::RESTART_PAGES.unsigned_abs();

#[derive(QueryableByName)]
struct JournalMode {
    #[diesel(sql_type = Text)]
    journal_mode: String,
}

/// Opens a connection and sets the pragmas every connection has. A file
/// database must be in WAL mode; anything else is refused.
pub(crate) fn connect(
    location: &Location,
    options: &SqliteOptions,
    role: Role,
) -> Result<SqliteConnection, StoreError> {
    let read_only = role == Role::Reader;
    let url = location.url(role)?;
    // Messages name the database as given, not the URI of the writer's VFS.
    let named = location.url(Role::Reader)?;
    let mut conn = SqliteConnection::establish(&url).map_err(|e| conn_err(e, &named))?;
    let busy_ms = options.busy_timeout.as_millis().min(i32::MAX as u128);
    conn.batch_execute(&format!("PRAGMA busy_timeout = {busy_ms};"))
        .map_err(db_err)?;
    if !read_only {
        // Before anything is changed (switching to WAL rewrites the header):
        // a database of a newer version or of another program is refused
        // untouched.
        crate::migrate::check_version(&mut conn)?;
    }
    let mode: Vec<JournalMode> = diesel::sql_query("PRAGMA journal_mode = WAL")
        .load(&mut conn)
        .map_err(db_err)?;
    let mode = mode
        .into_iter()
        .next()
        .map(|m| m.journal_mode.to_ascii_lowercase())
        .unwrap_or_default();
    let expected = match location {
        Location::File(_) => "wal",
        // An in-memory database has no WAL; its journal stays in memory.
        Location::Memory => "memory",
    };
    if mode != expected {
        return Err(StoreError::backend(
            ErrorKind::Io,
            format!(
                "sqlite database {named:?} is in journal mode {mode:?}, not {expected:?}; \
                 the store refuses to run without WAL"
            ),
        ));
    }
    // temp_store = MEMORY keeps the savepoint sub-journals (the writer runs
    // each operation in a SAVEPOINT) in memory instead of temp files.
    conn.batch_execute(&format!(
        "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY; \
         PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};{}",
        options.synchronous.as_sql(),
        if read_only {
            " PRAGMA query_only = ON;"
        } else {
            ""
        }
    ))
    .map_err(db_err)?;
    if let (Some(bytes), false) = (options.max_size, read_only) {
        let page: Vec<PageSize> = diesel::sql_query("PRAGMA page_size")
            .load(&mut conn)
            .map_err(db_err)?;
        let page = page.first().map_or(4096, |p| p.page_size.max(512));
        let pages = (bytes / u64::try_from(page).unwrap_or(4096)).max(1);
        conn.batch_execute(&format!("PRAGMA max_page_count = {pages};"))
            .map_err(db_err)?;
    }
    Ok(conn)
}

#[derive(QueryableByName)]
struct PageSize {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    page_size: i64,
}
