//! SQLite's own C API for the writer's most frequent statements.
//!
//! The writer runs a few statements for every job (the multi-row inserts of
//! jobs, phases and events; the updates of a job and of a phase), each
//! thousands of times a second. Through diesel, each run renders or hashes
//! the statement's key to find it in the cache, walks the query to collect
//! its parameters into a buffer, asks once more whether it may be cached,
//! and binds the buffer: about a fifth of the writer's instructions in the
//! `noop_1phase` benchmark (see `docs/performance.md`). Here a statement is
//! prepared once under a small key and its values are bound straight from
//! the rows, in order.
//!
//! diesel 2.3 does not hand out its connection's `sqlite3` handle. SQLite
//! tells it to every *auto extension* when a connection opens, on the
//! opening thread, so [`connect`] registers one that notes the handle in a
//! thread-local slot, has diesel open the connection, and takes the handle
//! from the slot. The same connection then serves diesel's statements and
//! these, inside the same transactions. The writer's own transaction
//! control (`BEGIN IMMEDIATE`, `COMMIT`, its savepoints) runs here too,
//! prepared once instead of parsed at every group ([`Key::Control`]); the
//! rare `ROLLBACK`s stay on diesel's `batch_execute`. diesel keeps no
//! transaction state of its own for statements it did not begin, so it
//! sees no difference.
//!
//! The inserts and updates are written `INSERT OR FAIL` and `UPDATE OR
//! FAIL`: a statement that fails part way does not undo the rows it already
//! wrote, so SQLite keeps no statement journal for it (a copy of every page
//! it touches; about 2% of the writer). Nothing is lost by that: no
//! operation goes on after an error of one of these statements, and the
//! writer undoes a failed operation whole, with `ROLLBACK` or `ROLLBACK TO`
//! its savepoint (see [`crate::writer`]).
//!
//! # Soundness
//!
//! Every `unsafe` block below calls SQLite's C API. What makes each call
//! sound is the same few facts, stated once here and referred to in each
//! block:
//!
//! 1. **The handle is live.** A [`Handle`] exists only beside the
//!    `SqliteConnection` it came from, and a [`Statements`] is dropped (its
//!    statements finalized) before that connection closes: the writer keeps
//!    both in one struct, statements first (Rust drops fields in order).
//!    The checkpointer keeps its connection and handle in one struct too,
//!    and uses the handle only for [`sync_database`].
//! 2. **One thread at a time.** The connection and its handle (the
//!    writer's with its statements) move together to the thread that uses
//!    them, the writer's or the checkpointer's, and are used only there;
//!    SQLite allows a connection to be used by one thread at a time in its
//!    multi-thread and serialized modes, which is diesel's own assumption
//!    when it makes `SqliteConnection` `Send`.
//! 3. **Bound text outlives its use.** Text is bound with `SQLITE_STATIC`
//!    (no copy), so it must stay valid until the statement no longer reads
//!    it. A [`Query`] borrows every value it binds for its own lifetime
//!    `'a`, and its `Drop` resets the statement and clears the bindings, so
//!    no later step can read a value after that borrow ends.
//! 4. **Pointers from SQLite are read before the next call.** Column text
//!    is copied out before the statement is stepped or reset again, as
//!    SQLite requires.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use diesel::sqlite::SqliteConnection;
use foldhash::HashMap;
use jobqueue_core::{ErrorKind, StoreError};
use libsqlite3_sys as ffi;

thread_local! {
    /// The handle of the connection this thread opened last, noted by
    /// [`note_opened`].
    static OPENED: Cell<Option<NonNull<ffi::sqlite3>>> = const { Cell::new(None) };
}

/// The auto extension: SQLite calls it on the thread that opens a
/// connection, with that connection's handle, for every connection of the
/// process. It only notes the handle, so on other connections (of this
/// store or of other code in the program) it does nothing that matters.
unsafe extern "C" fn note_opened(
    db: *mut ffi::sqlite3,
    _error: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    OPENED.with(|slot| slot.set(NonNull::new(db)));
    ffi::SQLITE_OK
}

/// The `sqlite3` handle of one diesel connection. `Send` (see the module's
/// soundness notes, 1 and 2): it moves with its connection.
pub(crate) struct Handle(NonNull<ffi::sqlite3>);

// SAFETY: see the module docs, "Soundness" 2: the handle moves with its
// connection to the thread that uses it (the writer's or the
// checkpointer's) and is used there only.
unsafe impl Send for Handle {}

/// Opens a connection with `open` (which must open exactly one, on this
/// thread) and returns it with its handle.
pub(crate) fn connect(
    open: impl FnOnce() -> Result<SqliteConnection, StoreError>,
) -> Result<(SqliteConnection, Handle), StoreError> {
    // SAFETY: `note_opened` has the signature SQLite calls an extension's
    // entry point with; registering it again is a no-op, per SQLite's docs.
    let rc = unsafe { ffi::sqlite3_auto_extension(Some(note_opened)) };
    if rc != ffi::SQLITE_OK {
        return Err(StoreError::backend(
            ErrorKind::Internal,
            format!("sqlite: cannot register the connection hook (code {rc})"),
        ));
    }
    OPENED.with(|slot| slot.set(None));
    let conn = open()?;
    match OPENED.with(Cell::take) {
        Some(db) => Ok((conn, Handle(db))),
        None => Err(StoreError::backend(
            ErrorKind::Internal,
            "sqlite: the writer's connection opened without telling its handle",
        )),
    }
}

/// Syncs the database file of connection `db` to the disk (`fsync`), through
/// SQLite's own file handle: the checkpointer's way to write back the pages
/// its passive checkpoints copied, which SQLite syncs only when a pass
/// reaches the end of the WAL (see [`crate::checkpoint`]). A descriptor of
/// our own would do the same, but closing it would drop every POSIX lock
/// this process holds on the file, SQLite's included.
pub(crate) fn sync_database(db: &Handle) -> Result<(), StoreError> {
    let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
    // SAFETY: "Soundness" 1 and 2: the handle is live and used by this
    // thread alone. `SQLITE_FCNTL_FILE_POINTER` writes one
    // `sqlite3_file *` through the pointer it is given, which points at
    // `file`.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            db.0.as_ptr(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        )
    };
    let unavailable = |why: &str| {
        StoreError::backend(
            ErrorKind::Internal,
            format!("sqlite: cannot sync the database file: {why}"),
        )
    };
    if rc != ffi::SQLITE_OK || file.is_null() {
        return Err(unavailable(&format!("no file handle (code {rc})")));
    }
    // SAFETY: `file` is the connection's open main database file, which
    // lives as long as the connection ("Soundness" 1); a file that is not
    // open has null methods, checked here.
    let sync = unsafe { (*file).pMethods.as_ref() }
        .and_then(|methods| methods.xSync)
        .ok_or_else(|| unavailable("the file is not open"))?;
    // SAFETY: the file's own `xSync`, called with that file and a sync flag
    // from SQLite's list, on the only thread that uses the connection
    // ("Soundness" 2); it only flushes the file to the disk.
    let rc = unsafe { sync(file, ffi::SQLITE_SYNC_NORMAL) };
    if rc != ffi::SQLITE_OK {
        return Err(StoreError::backend(
            ErrorKind::Io,
            format!("sqlite: syncing the database file failed (code {rc})"),
        ));
    }
    Ok(())
}

/// What a prepared statement is kept under: its kind and, for statements
/// whose text has a variable part, the number that fixes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// `INSERT INTO <table>` of this many rows.
    Insert(&'static str, usize),
    /// `UPDATE jobs` of the columns whose bits are set (see
    /// `rows::JobState`).
    UpdateJob(u32),
    /// `UPDATE phases` of every column but the key.
    SavePhase,
    /// The phases of a list of jobs.
    PhasesOf,
    /// The claim, with this many excluded pipelines and, if it names the
    /// only pipelines to claim from, this many of them.
    Claim(usize, Option<usize>),
    /// A statement without parameters whose text is the key: the writer's
    /// transaction control.
    Control(&'static str),
}

/// One prepared statement, finalized when dropped.
struct Stmt(NonNull<ffi::sqlite3_stmt>);

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: "Soundness" 1: the connection is still open. The
        // statement is finalized once, here.
        unsafe {
            ffi::sqlite3_finalize(self.0.as_ptr());
        }
    }
}

/// The writer's prepared statements on its connection.
pub(crate) struct Statements {
    db: Handle,
    prepared: HashMap<Key, Stmt>,
}

impl Statements {
    /// Runs `sql`, a statement without parameters, prepared the first
    /// time.
    pub(crate) fn run(&mut self, sql: &'static str) -> Result<(), StoreError> {
        self.query(Key::Control(sql), || sql.to_owned())?
            .execute()
            .map(drop)
    }

    pub(crate) fn new(db: Handle) -> Self {
        Self {
            db,
            prepared: HashMap::default(),
        }
    }

    /// The statement kept under `key`, prepared from `sql()` the first
    /// time, ready to bind from its first parameter.
    pub(crate) fn query<'a>(
        &mut self,
        key: Key,
        sql: impl FnOnce() -> String,
    ) -> Result<Query<'_, 'a>, StoreError> {
        let db = self.db.0;
        let stmt = match self.prepared.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(prepare(db, &sql())?),
        };
        Ok(Query {
            db,
            stmt: stmt.0,
            next: 1,
            _stmt: PhantomData,
            _data: PhantomData,
        })
    }
}

fn prepare(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<Stmt, StoreError> {
    let len = c_int::try_from(sql.len())
        .map_err(|_| StoreError::backend(ErrorKind::Internal, "sqlite: statement too long"))?;
    let mut stmt = ptr::null_mut();
    // SAFETY: "Soundness" 1 and 2. `sql` is valid for `len` bytes (SQLite
    // reads no further and keeps no pointer into it); `stmt` is written.
    let rc = unsafe {
        ffi::sqlite3_prepare_v3(
            db.as_ptr(),
            sql.as_ptr().cast(),
            len,
            ffi::SQLITE_PREPARE_PERSISTENT,
            &mut stmt,
            ptr::null_mut(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(error(db));
    }
    NonNull::new(stmt).map(Stmt).ok_or_else(|| {
        StoreError::backend(
            ErrorKind::Internal,
            format!("sqlite: empty statement {sql:?}"),
        )
    })
}

/// The connection's last error, classified by its code.
fn error(db: NonNull<ffi::sqlite3>) -> StoreError {
    // SAFETY: "Soundness" 1 and 2; the message is copied out at once.
    let (code, message) = unsafe {
        let code = ffi::sqlite3_extended_errcode(db.as_ptr());
        let text = ffi::sqlite3_errmsg(db.as_ptr());
        let message = if text.is_null() {
            String::new()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        };
        (code, message)
    };
    StoreError::backend(
        crate::error::kind_of_code(code),
        format!("sqlite: {message}"),
    )
}

/// One run of a prepared statement: bind its parameters in order, then
/// [`execute`](Query::execute) it or read its rows. Holds every bound
/// value for `'a`; dropping it resets the statement and clears them.
pub(crate) struct Query<'s, 'a> {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
    /// The next parameter's number (SQLite counts from 1).
    next: c_int,
    _stmt: PhantomData<&'s mut Stmt>,
    _data: PhantomData<&'a str>,
}

impl<'a> Query<'_, 'a> {
    fn bound(&mut self, rc: c_int) -> Result<(), StoreError> {
        self.next += 1;
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db))
        }
    }

    /// Binds an integer to the next parameter.
    pub(crate) fn int(&mut self, v: i64) -> Result<(), StoreError> {
        // SAFETY: "Soundness" 1 and 2.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), self.next, v) };
        self.bound(rc)
    }

    /// Binds NULL to the next parameter.
    pub(crate) fn null(&mut self) -> Result<(), StoreError> {
        // SAFETY: "Soundness" 1 and 2.
        let rc = unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), self.next) };
        self.bound(rc)
    }

    /// Binds text to the next parameter, without copying it.
    pub(crate) fn text(&mut self, v: &'a str) -> Result<(), StoreError> {
        let len = c_int::try_from(v.len()).map_err(|_| {
            StoreError::backend(ErrorKind::Invalid, "sqlite: a text value is too long")
        })?;
        // SAFETY: "Soundness" 1, 2 and 3: `v` is borrowed for `'a`, which
        // outlives this query, whose drop clears the binding.
        let rc = unsafe {
            ffi::sqlite3_bind_text(
                self.stmt.as_ptr(),
                self.next,
                v.as_ptr().cast(),
                len,
                ffi::SQLITE_STATIC(),
            )
        };
        self.bound(rc)
    }

    /// Runs the statement to its end and returns how many rows it changed.
    pub(crate) fn execute(self) -> Result<usize, StoreError> {
        loop {
            // SAFETY: "Soundness" 1, 2 and 3.
            match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
                ffi::SQLITE_ROW => continue,
                ffi::SQLITE_DONE => break,
                _ => return Err(error(self.db)),
            }
        }
        // SAFETY: "Soundness" 1 and 2.
        let changes = unsafe { ffi::sqlite3_changes64(self.db.as_ptr()) };
        Ok(usize::try_from(changes).unwrap_or(0))
    }
}

impl Query<'_, '_> {
    /// Runs the statement to its end, handing each row it returns to `f`.
    pub(crate) fn for_each_row(
        self,
        mut f: impl FnMut(&Row<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        loop {
            // SAFETY: "Soundness" 1, 2 and 3.
            match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
                ffi::SQLITE_ROW => f(&Row {
                    stmt: self.stmt,
                    _query: PhantomData,
                })?,
                ffi::SQLITE_DONE => return Ok(()),
                _ => return Err(error(self.db)),
            }
        }
    }
}

/// The current row of a running statement; its values are read by column
/// number, from 0.
pub(crate) struct Row<'r> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    _query: PhantomData<&'r ()>,
}

impl Row<'_> {
    fn is_null(&self, i: c_int) -> bool {
        // SAFETY: "Soundness" 1, 2 and 4: the statement is on a row.
        unsafe { ffi::sqlite3_column_type(self.stmt.as_ptr(), i) == ffi::SQLITE_NULL }
    }

    /// Column `i` as an integer (SQLite's conversion for another type, 0
    /// for NULL).
    pub(crate) fn int(&self, i: c_int) -> i64 {
        // SAFETY: "Soundness" 1, 2 and 4: the statement is on a row.
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), i) }
    }

    /// Column `i` as text, copied out (invalid UTF-8 replaced, as diesel
    /// reads it), or `None` for NULL.
    pub(crate) fn opt_text(&self, i: c_int) -> Option<String> {
        if self.is_null(i) {
            return None;
        }
        // SAFETY: "Soundness" 1, 2 and 4: the text pointer and its length
        // are taken in this order (as SQLite requires: the length after the
        // conversion to text) and copied before anything else runs on the
        // statement. A NULL pointer (out of memory) reads as empty.
        let bytes = unsafe {
            let text = ffi::sqlite3_column_text(self.stmt.as_ptr(), i);
            let len = ffi::sqlite3_column_bytes(self.stmt.as_ptr(), i);
            match (text.is_null(), usize::try_from(len)) {
                (false, Ok(len)) => std::slice::from_raw_parts(text, len),
                _ => &[],
            }
        };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// A value read from one column of a [`Row`].
pub(crate) trait Read: Sized {
    fn read(row: &Row<'_>, i: c_int) -> Result<Self, StoreError>;
}

impl Read for i64 {
    fn read(row: &Row<'_>, i: c_int) -> Result<Self, StoreError> {
        if row.is_null(i) {
            return Err(null_column(i));
        }
        Ok(row.int(i))
    }
}

impl Read for bool {
    fn read(row: &Row<'_>, i: c_int) -> Result<Self, StoreError> {
        i64::read(row, i).map(|v| v != 0)
    }
}

impl Read for String {
    fn read(row: &Row<'_>, i: c_int) -> Result<Self, StoreError> {
        row.opt_text(i).ok_or_else(|| null_column(i))
    }
}

impl Read for Option<i64> {
    fn read(row: &Row<'_>, i: c_int) -> Result<Self, StoreError> {
        Ok((!row.is_null(i)).then(|| row.int(i)))
    }
}

impl Read for Option<String> {
    fn read(row: &Row<'_>, i: c_int) -> Result<Self, StoreError> {
        Ok(row.opt_text(i))
    }
}

fn null_column(i: c_int) -> StoreError {
    crate::error::corrupt(format!("NULL in column {i}, which may not be NULL"))
}

impl Drop for Query<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: "Soundness" 1, 2 and 3: after this no binding of this
        // query is left on the statement.
        unsafe {
            ffi::sqlite3_reset(self.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.stmt.as_ptr());
        }
    }
}

/// A value that binds to one parameter.
pub(crate) trait Bind {
    fn bind<'a>(&'a self, q: &mut Query<'_, 'a>) -> Result<(), StoreError>;
}

impl Bind for i64 {
    fn bind<'a>(&'a self, q: &mut Query<'_, 'a>) -> Result<(), StoreError> {
        q.int(*self)
    }
}

impl Bind for bool {
    fn bind<'a>(&'a self, q: &mut Query<'_, 'a>) -> Result<(), StoreError> {
        q.int(i64::from(*self))
    }
}

impl Bind for String {
    fn bind<'a>(&'a self, q: &mut Query<'_, 'a>) -> Result<(), StoreError> {
        q.text(self)
    }
}

impl Bind for &str {
    fn bind<'a>(&'a self, q: &mut Query<'_, 'a>) -> Result<(), StoreError> {
        q.text(self)
    }
}

impl<T: Bind> Bind for Option<T> {
    fn bind<'a>(&'a self, q: &mut Query<'_, 'a>) -> Result<(), StoreError> {
        match self {
            Some(v) => v.bind(q),
            None => q.null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;

    use super::*;
    use crate::SqliteOptions;
    use crate::conn::{Location, Role, connect as open};

    /// The database file of a connection is synced through SQLite's own
    /// handle, after a write and again with nothing to write, and the
    /// connection goes on working.
    #[test]
    fn the_database_file_syncs_through_sqlites_handle() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::File(dir.path().join("sync.db"));
        let options = SqliteOptions::default();
        let (mut conn, handle) = connect(|| open(&location, &options, Role::Writer)).unwrap();
        conn.batch_execute("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        sync_database(&handle).unwrap();
        sync_database(&handle).unwrap();
        conn.batch_execute("INSERT INTO t VALUES (2);").unwrap();
    }

    /// An in-memory database has no file to sync: a clear error, not a
    /// crash. (The store runs no checkpointer for one.)
    #[test]
    fn an_in_memory_database_has_no_file_to_sync() {
        let options = SqliteOptions::default();
        let (_conn, handle) = connect(|| open(&Location::Memory, &options, Role::Writer)).unwrap();
        let error = sync_database(&handle).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert!(
            error.to_string().contains("the file is not open"),
            "{error}"
        );
    }
}
