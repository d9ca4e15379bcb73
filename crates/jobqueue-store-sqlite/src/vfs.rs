//! The writer's VFS: the WAL frames of a commit reach the file in one
//! `pwrite` instead of two per page.
//!
//! SQLite appends a commit to the WAL one frame at a time, and each frame
//! with two writes: its 24-byte header, then the page. In the `noop_1phase`
//! benchmark that is about four `pwrite` calls per job, and they took close
//! to a fifth of the writer thread, mostly in the kernel's fixed cost per call
//! rather than in copying bytes (see `docs/performance.md`). This VFS, which
//! only the writer's connection opens (`?vfs=jobqueue-wal`), wraps SQLite's
//! default one. It passes every file through untouched but two:
//!
//! - **The WAL file** collects a run of contiguous writes in a buffer and
//!   writes it with one call (one per 128 KiB; SQLite's unix VFS takes no
//!   more at once) when the run ends: when the page of a commit
//!   frame (a header whose "database size" field is not zero) has been
//!   added. SQLite reports an error of that write as the commit's error, so
//!   the commit fails as it would have without the buffer. Any write that
//!   does not continue the run, any read that overlaps it, and every other
//!   call on the file (sync, truncate, size, locks, close) writes the buffer
//!   first, so SQLite never sees the file differ from what it wrote. After
//!   the commit frame, writes go straight to the file until the connection
//!   takes the write lock again (the only later writes of a commit rewrite
//!   frame checksums in place, and they must be in the file before the
//!   commit is published).
//! - **The main database file** forwards everything, and before the memory
//!   barrier that SQLite raises just before it publishes a commit to other
//!   connections (the second copy of the WAL index header), and before it
//!   releases the WAL write lock, it writes its WAL's buffer if anything is
//!   left in it. Normally nothing is: the commit frame wrote it. This is the
//!   guard that no other connection (the checkpointer, the readers, another
//!   process) ever learns of a frame that is not in the file, and that a
//!   rolled-back transaction's frames never land after another process's.
//!
//! So every commit is in the file, in the operating system's cache, before
//! `COMMIT` returns, as it is without this VFS: a crash of the process loses
//! nothing committed, and `synchronous=FULL` still syncs the WAL (the sync
//! writes the buffer first).
//!
//! # Soundness
//!
//! The `unsafe` code here implements SQLite's VFS and file interfaces. It is
//! sound because of these facts, which each block refers to:
//!
//! 1. **SQLite's contract for files.** SQLite allocates `szOsFile` bytes for
//!    every file it opens through this VFS, aligned for any C type, passes
//!    that memory to `xOpen`, then passes the same pointer to every method
//!    of the file until `xClose`, and never after. A [`ShimFile`] sits at
//!    the start of that memory (it is `repr(C)` with the `sqlite3_file`
//!    first, as SQLite requires) and the wrapped file right after it, at an
//!    offset aligned to 8 bytes; `szOsFile` counts both.
//! 2. **One thread at a time.** SQLite calls a file's methods only from the
//!    thread that is using its connection, one call at a time; a WAL file
//!    and its database file belong to the same connection. So the state
//!    behind a [`ShimFile`] is never touched by two threads at once.
//! 3. **Links do not dangle.** A WAL file's [`Wal`] state is boxed and
//!    linked from its database file's state while the WAL file is open; the
//!    WAL's `xClose` unlinks it before freeing it. SQLite closes a WAL file
//!    before its database file, and opens it after.
//! 4. **The wrapped VFS lives forever.** SQLite's built-in VFSes are static;
//!    this one is leaked once and registered once.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

/// The name under which the VFS is registered.
pub(crate) const NAME: &str = "jobqueue-wal";
const NAME_C: &CStr = c"jobqueue-wal";

/// The most a WAL buffer holds before it is written, whatever the run.
const MAX_BUFFER: usize = 4 << 20;

/// The most one call of the wrapped file's `xWrite` is given.
const MAX_WRITE: usize = 0x1_ffff;

/// A frame header's size; its bytes 4..8 hold the database size in pages
/// after the commit for a commit frame, and 0 otherwise.
const FRAME_HEADER: usize = 24;

/// The WAL write lock's slot in SQLite's shared-memory locks.
const WAL_WRITE_LOCK: c_int = 0;

/// Registers the VFS (once per process; not as the default). Returns
/// whether it is available: if SQLite has no default VFS to wrap, or
/// refuses the registration, the writer opens its file without it.
pub(crate) fn register() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| register_once().is_some())
}

fn register_once() -> Option<()> {
    // SAFETY: `sqlite3_initialize` may be called any number of times;
    // `sqlite3_vfs_find(NULL)` returns the default VFS, which is static
    // (fact 4), or NULL.
    let real = unsafe {
        if ffi::sqlite3_initialize() != ffi::SQLITE_OK {
            return None;
        }
        ffi::sqlite3_vfs_find(ptr::null())
    };
    if real.is_null() {
        return None;
    }
    // SAFETY: `real` is non-null and points to a live VFS (fact 4).
    let real_ref = unsafe { &*real };
    let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
        iVersion: real_ref.iVersion.min(3),
        szOsFile: c_int::try_from(real_offset())
            .ok()?
            .checked_add(real_ref.szOsFile)?,
        mxPathname: real_ref.mxPathname,
        pNext: ptr::null_mut(),
        zName: NAME_C.as_ptr(),
        pAppData: real.cast(),
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        xDlOpen: Some(x_dl_open),
        xDlError: Some(x_dl_error),
        xDlSym: Some(x_dl_sym),
        xDlClose: Some(x_dl_close),
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: real_ref
            .xCurrentTimeInt64
            .map(|_| x_current_time_int64 as _),
        xSetSystemCall: real_ref.xSetSystemCall.map(|_| x_set_system_call as _),
        xGetSystemCall: real_ref.xGetSystemCall.map(|_| x_get_system_call as _),
        xNextSystemCall: real_ref.xNextSystemCall.map(|_| x_next_system_call as _),
    }));
    // SAFETY: `vfs` is leaked, so it outlives the registration (fact 4).
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    (rc == ffi::SQLITE_OK).then_some(())
}

/// Where the wrapped file starts in a file's memory.
const fn real_offset() -> usize {
    std::mem::size_of::<ShimFile>().next_multiple_of(8)
}

/// The start of a file this VFS wrapped.
#[repr(C)]
struct ShimFile {
    /// What SQLite sees; its methods are [`WAL_METHODS`] or [`DB_METHODS`].
    base: ffi::sqlite3_file,
    /// The wrapped file, in the same allocation right after this struct.
    real: *mut ffi::sqlite3_file,
    /// The state of a WAL file, or of a main database file.
    state: *mut State,
}

enum State {
    Wal(Wal),
    /// A main database file, and the state of its WAL while that is open.
    Db(*mut State),
}

/// A WAL file's buffer.
struct Wal {
    /// The bytes of the run not yet written, which go at `start`.
    buf: Vec<u8>,
    start: i64,
    /// After a commit frame, until the write lock is taken again: writes
    /// go straight to the file.
    sealed: bool,
    /// Where the page of the last written commit header goes, if the last
    /// header written was a commit's.
    commit_page_at: Option<i64>,
    /// The database file that links to this state, to unlink on close.
    db: *mut State,
    /// The wrapped WAL file.
    real: *mut ffi::sqlite3_file,
}

impl Wal {
    fn end(&self) -> i64 {
        self.start + self.buf.len() as i64
    }

    /// Writes the buffer to the file.
    ///
    /// # Safety
    /// `self.real` is the open wrapped file (fact 1).
    unsafe fn flush(&mut self) -> c_int {
        let mut rc = ffi::SQLITE_OK;
        let mut at = self.start;
        // In pieces the wrapped file takes whole: SQLite's unix VFS writes
        // at most 128 KiB - 1 bytes per call (it masks the length).
        for piece in self.buf.chunks(MAX_WRITE) {
            // SAFETY: the caller's promise; the piece is live for the call
            // and shorter than `c_int::MAX`.
            rc = unsafe { real_write(self.real, piece.as_ptr().cast(), piece.len() as c_int, at) };
            if rc != ffi::SQLITE_OK {
                break;
            }
            at += piece.len() as i64;
        }
        // On failure the bytes are dropped too: the error goes to SQLite,
        // which then treats the transaction as failed.
        self.buf.clear();
        rc
    }

    /// Takes one write of SQLite's: buffered, or written through.
    ///
    /// # Safety
    /// As for [`Wal::flush`], and `data` is valid for `amt` bytes.
    unsafe fn write(&mut self, data: *const c_void, amt: c_int, off: i64) -> c_int {
        let Ok(len) = usize::try_from(amt) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        // SAFETY: the caller's promise.
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
        let continues =
            !self.buf.is_empty() && off == self.end() && self.buf.len() + len <= MAX_BUFFER;
        if !continues {
            // SAFETY: the caller's promise.
            let rc = unsafe { self.flush() };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if continues || !self.sealed {
            if self.buf.is_empty() {
                self.start = off;
            }
            self.buf.extend_from_slice(bytes);
        } else {
            // SAFETY: the caller's promise.
            let rc = unsafe { real_write(self.real, data, amt, off) };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if len == FRAME_HEADER {
            let commit = bytes[4..8] != [0, 0, 0, 0];
            self.commit_page_at = commit.then_some(off + FRAME_HEADER as i64);
        } else if self.commit_page_at.take() == Some(off) {
            // The commit frame is complete: the commit goes to the file
            // now, and its error, if any, is the commit's.
            self.sealed = true;
            // SAFETY: the caller's promise.
            return unsafe { self.flush() };
        }
        ffi::SQLITE_OK
    }
}

/// # Safety
/// `real` is an open file (fact 1) and `data` is valid for `amt` bytes.
unsafe fn real_write(
    real: *mut ffi::sqlite3_file,
    data: *const c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe {
        match (*(*real).pMethods).xWrite {
            Some(write) => write(real, data, amt, off),
            None => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

/// The wrapped VFS.
///
/// # Safety
/// `vfs` is this VFS (its `pAppData` is the wrapped one; fact 4).
unsafe fn real_vfs(vfs: *mut ffi::sqlite3_vfs) -> *mut ffi::sqlite3_vfs {
    // SAFETY: the caller's promise.
    unsafe { (*vfs).pAppData.cast() }
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes this VFS and `szOsFile` bytes at `file` (fact
    // 1); the wrapped file's memory is inside them, after the `ShimFile`.
    unsafe {
        let real = real_vfs(vfs);
        let Some(open) = (*real).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let wal = flags & ffi::SQLITE_OPEN_WAL != 0;
        let main = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
        if !wal && !main {
            // Journals and temporary files: the wrapped VFS's own file, in
            // the same memory (it is larger than that file needs).
            return open(real, name, file, flags, out_flags);
        }
        let shim = file.cast::<ShimFile>();
        let inner = file
            .cast::<u8>()
            .add(real_offset())
            .cast::<ffi::sqlite3_file>();
        (*shim).base.pMethods = ptr::null();
        (*shim).real = inner;
        (*shim).state = ptr::null_mut();
        (*inner).pMethods = ptr::null();
        let rc = open(real, name, inner, flags, out_flags);
        if (*inner).pMethods.is_null() {
            // Nothing to close: SQLite will not call `xClose` either.
            return if rc == ffi::SQLITE_OK {
                ffi::SQLITE_CANTOPEN
            } else {
                rc
            };
        }
        let state = if wal {
            let db = ffi::sqlite3_database_file_object(name);
            let db_state = if !db.is_null() && ptr::eq((*db).pMethods, &DB_METHODS) {
                (*db.cast::<ShimFile>()).state
            } else {
                ptr::null_mut()
            };
            let state = Box::into_raw(Box::new(State::Wal(Wal {
                buf: Vec::new(),
                start: 0,
                sealed: true,
                commit_page_at: None,
                db: db_state,
                real: inner,
            })));
            if let Some(State::Db(link)) = db_state.as_mut() {
                *link = state;
            }
            state
        } else {
            Box::into_raw(Box::new(State::Db(ptr::null_mut())))
        };
        (*shim).state = state;
        (*shim).base.pMethods = if wal { &WAL_METHODS } else { &DB_METHODS };
        rc
    }
}

/// The parts of a wrapped file.
///
/// # Safety
/// `file` is an open file of this VFS with its methods (fact 1).
unsafe fn parts<'f>(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, &'f mut State) {
    // SAFETY: the caller's promise; the state is ours until `xClose`, and
    // only this thread touches it (fact 2).
    unsafe {
        let shim = file.cast::<ShimFile>();
        ((*shim).real, &mut *(*shim).state)
    }
}

/// The WAL buffer of a wrapped file (its own, or its database's WAL's).
///
/// # Safety
/// As for [`parts`].
unsafe fn wal_of<'f>(file: *mut ffi::sqlite3_file) -> Option<&'f mut Wal> {
    // SAFETY: the caller's promise; a linked WAL state is live (fact 3).
    unsafe {
        match parts(file).1 {
            State::Wal(wal) => Some(wal),
            State::Db(link) => match link.as_mut() {
                Some(State::Wal(wal)) => Some(wal),
                _ => None,
            },
        }
    }
}

/// Writes the buffer of `file`'s WAL, if any, before a call that must see
/// the file as SQLite wrote it.
///
/// # Safety
/// As for [`parts`].
unsafe fn flush_before(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { wal_of(file).map_or(ffi::SQLITE_OK, |wal| wal.flush()) }
}

/// Calls the wrapped file's method `$m` with `$args`, or returns `$none`
/// if it has none.
macro_rules! forward {
    ($file:expr, $m:ident, $none:expr $(, $arg:expr)*) => {{
        let real = (*$file.cast::<ShimFile>()).real;
        match (*(*real).pMethods).$m {
            Some(f) => f(real $(, $arg)*),
            None => $none,
        }
    }};
}

/// A method that writes the WAL buffer first, then forwards.
macro_rules! flushing {
    ($name:ident, $m:ident, $none:expr; $($arg:ident: $ty:ty),*) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: SQLite calls a method with its open file (fact 1).
            unsafe {
                let rc = flush_before(file);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                forward!(file, $m, $none $(, $arg)*)
            }
        }
    };
}

flushing!(x_truncate, xTruncate, ffi::SQLITE_IOERR_TRUNCATE; size: i64);
flushing!(x_sync, xSync, ffi::SQLITE_IOERR_FSYNC; flags: c_int);
flushing!(x_file_size, xFileSize, ffi::SQLITE_IOERR_FSTAT; size: *mut i64);
flushing!(x_lock, xLock, ffi::SQLITE_IOERR_LOCK; level: c_int);
flushing!(x_unlock, xUnlock, ffi::SQLITE_IOERR_UNLOCK; level: c_int);
flushing!(x_check_reserved_lock, xCheckReservedLock, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK; out: *mut c_int);
flushing!(x_file_control, xFileControl, ffi::SQLITE_NOTFOUND; op: c_int, arg: *mut c_void);

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls `xClose` once, with the open file (fact 1); the
    // state is unlinked before it is freed (fact 3).
    unsafe {
        let flushed = flush_before(file);
        let shim = file.cast::<ShimFile>();
        let state = Box::from_raw((*shim).state);
        (*shim).state = ptr::null_mut();
        match *state {
            State::Wal(wal) => {
                if let Some(State::Db(link)) = wal.db.as_mut() {
                    *link = ptr::null_mut();
                }
            }
            State::Db(link) => {
                if let Some(State::Wal(wal)) = link.as_mut() {
                    wal.db = ptr::null_mut();
                }
            }
        }
        let closed = forward!(file, xClose, ffi::SQLITE_OK);
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe {
        if let Some(wal) = wal_of(file)
            && !wal.buf.is_empty()
            && off < wal.end()
            && off + i64::from(amt) > wal.start
        {
            let rc = wal.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        forward!(file, xRead, ffi::SQLITE_IOERR_READ, buf, amt, off)
    }
}

unsafe extern "C" fn x_write_wal(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1) and data
    // valid for `amt` bytes.
    unsafe {
        match parts(file).1 {
            State::Wal(wal) => wal.write(data, amt, off),
            State::Db(_) => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

unsafe extern "C" fn x_write_db(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe { forward!(file, xWrite, ffi::SQLITE_IOERR_WRITE, data, amt, off) }
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe { forward!(file, xSectorSize, 4096) }
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe { forward!(file, xDeviceCharacteristics, 0) }
}

unsafe extern "C" fn x_shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe {
        forward!(
            file,
            xShmMap,
            ffi::SQLITE_IOERR_SHMMAP,
            page,
            size,
            extend,
            out
        )
    }
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe {
        let write_lock =
            offset == WAL_WRITE_LOCK && n >= 1 && flags & ffi::SQLITE_SHM_EXCLUSIVE != 0;
        if write_lock && flags & ffi::SQLITE_SHM_UNLOCK != 0 {
            // Whatever is left (frames of a transaction that did not
            // commit) goes before another writer may append there.
            if let Some(wal) = wal_of(file) {
                let _ = wal.flush();
                wal.sealed = true;
            }
        }
        let rc = forward!(file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags);
        if write_lock
            && flags & ffi::SQLITE_SHM_LOCK != 0
            && rc == ffi::SQLITE_OK
            && let Some(wal) = wal_of(file)
        {
            wal.sealed = false;
            wal.commit_page_at = None;
        }
        rc
    }
}

unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe {
        if let Some(wal) = wal_of(file)
            && !wal.buf.is_empty()
        {
            // Not expected (the commit frame wrote the buffer), and this
            // call has no way to report an error: a failed write here is
            // left for SQLite's own checks (the frames' checksums) to find.
            let rc = wal.flush();
            if rc != ffi::SQLITE_OK {
                tracing::error!(rc, "writing the WAL before a commit was published failed");
            }
        }
        let real = (*file.cast::<ShimFile>()).real;
        if let Some(barrier) = (*(*real).pMethods).xShmBarrier {
            barrier(real);
        }
    }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe { forward!(file, xShmUnmap, ffi::SQLITE_OK, delete) }
}

unsafe extern "C" fn x_fetch(
    file: *mut ffi::sqlite3_file,
    off: i64,
    amt: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe {
        *out = ptr::null_mut();
        forward!(file, xFetch, ffi::SQLITE_OK, off, amt, out)
    }
}

unsafe extern "C" fn x_unfetch(file: *mut ffi::sqlite3_file, off: i64, page: *mut c_void) -> c_int {
    // SAFETY: SQLite calls a method with its open file (fact 1).
    unsafe { forward!(file, xUnfetch, ffi::SQLITE_OK, off, page) }
}

const fn methods(
    write: unsafe extern "C" fn(*mut ffi::sqlite3_file, *const c_void, c_int, i64) -> c_int,
) -> ffi::sqlite3_io_methods {
    ffi::sqlite3_io_methods {
        iVersion: 3,
        xClose: Some(x_close),
        xRead: Some(x_read),
        xWrite: Some(write),
        xTruncate: Some(x_truncate),
        xSync: Some(x_sync),
        xFileSize: Some(x_file_size),
        xLock: Some(x_lock),
        xUnlock: Some(x_unlock),
        xCheckReservedLock: Some(x_check_reserved_lock),
        xFileControl: Some(x_file_control),
        xSectorSize: Some(x_sector_size),
        xDeviceCharacteristics: Some(x_device_characteristics),
        xShmMap: Some(x_shm_map),
        xShmLock: Some(x_shm_lock),
        xShmBarrier: Some(x_shm_barrier),
        xShmUnmap: Some(x_shm_unmap),
        xFetch: Some(x_fetch),
        xUnfetch: Some(x_unfetch),
    }
}

static WAL_METHODS: ffi::sqlite3_io_methods = methods(x_write_wal);
static DB_METHODS: ffi::sqlite3_io_methods = methods(x_write_db);

// The VFS's own methods: each calls the wrapped VFS's.

/// Calls the wrapped VFS's method `$m`, or returns `$none`.
macro_rules! forward_vfs {
    ($vfs:expr, $m:ident, $none:expr $(, $arg:expr)*) => {{
        let real = real_vfs($vfs);
        match (*real).$m {
            Some(f) => f(real $(, $arg)*),
            None => $none,
        }
    }};
}

unsafe extern "C" fn x_delete(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync: c_int,
) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xDelete, ffi::SQLITE_IOERR_DELETE, name, sync) }
}

unsafe extern "C" fn x_access(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xAccess, ffi::SQLITE_IOERR_ACCESS, name, flags, out) }
}

unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xFullPathname, ffi::SQLITE_CANTOPEN, name, n, out) }
}

unsafe extern "C" fn x_dl_open(vfs: *mut ffi::sqlite3_vfs, name: *const c_char) -> *mut c_void {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xDlOpen, ptr::null_mut(), name) }
}

unsafe extern "C" fn x_dl_error(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xDlError, (), n, out) }
}

type DlSym = Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)>;

unsafe extern "C" fn x_dl_sym(
    vfs: *mut ffi::sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> DlSym {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xDlSym, None, handle, symbol) }
}

unsafe extern "C" fn x_dl_close(vfs: *mut ffi::sqlite3_vfs, handle: *mut c_void) {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xDlClose, (), handle) }
}

unsafe extern "C" fn x_randomness(vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xRandomness, 0, n, out) }
}

unsafe extern "C" fn x_sleep(vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xSleep, 0, micros) }
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xCurrentTime, ffi::SQLITE_ERROR, out) }
}

unsafe extern "C" fn x_get_last_error(
    vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xGetLastError, 0, n, out) }
}

unsafe extern "C" fn x_current_time_int64(vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xCurrentTimeInt64, ffi::SQLITE_ERROR, out) }
}

unsafe extern "C" fn x_set_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    call: ffi::sqlite3_syscall_ptr,
) -> c_int {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xSetSystemCall, ffi::SQLITE_NOTFOUND, name, call) }
}

unsafe extern "C" fn x_get_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
) -> ffi::sqlite3_syscall_ptr {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xGetSystemCall, None, name) }
}

unsafe extern "C" fn x_next_system_call(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
) -> *const c_char {
    // SAFETY: SQLite calls it with this VFS (fact 4).
    unsafe { forward_vfs!(vfs, xNextSystemCall, ptr::null(), name) }
}

/// The URI that opens `path` through this VFS: SQLite's `file:` form, with
/// the characters it decodes (`%`, `?`, `#`) escaped.
pub(crate) fn uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 24);
    // An absolute path gets an empty authority (`file:///…`), so a path
    // that starts with `//` is not read as a host name.
    out.push_str(if path.starts_with('/') {
        "file://"
    } else {
        "file:"
    });
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out.push_str("?vfs=");
    out.push_str(NAME);
    out
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;

    use super::*;

    #[test]
    fn uri_escapes_what_sqlite_decodes() {
        assert_eq!(uri("/tmp/a.db"), "file:///tmp/a.db?vfs=jobqueue-wal");
        assert_eq!(uri("a%b?c#d.db"), "file:a%25b%3fc%23d.db?vfs=jobqueue-wal");
        assert_eq!(uri("//x/y"), "file:////x/y?vfs=jobqueue-wal");
    }

    #[test]
    fn odd_paths_open_the_file_they_name() {
        assert!(register());
        let dir = tempfile::tempdir().unwrap();
        for name in ["a b.db", "p%41ct.db", "q?x=1.db", "h#frag.db", "ünï.db"] {
            let path = dir.path().join(name);
            let mut conn = SqliteConnection::establish(&uri(path.to_str().unwrap()))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            conn.batch_execute("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);")
                .unwrap();
            drop(conn);
            assert!(path.is_file(), "{name}: no file at {path:?}");
        }
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    fn count(conn: &mut SqliteConnection, sql: &str) -> i64 {
        diesel::sql_query(sql).load::<Count>(conn).unwrap()[0].n
    }

    fn plain(path: &std::path::Path) -> SqliteConnection {
        let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        conn.batch_execute("PRAGMA busy_timeout = 5000;").unwrap();
        conn
    }

    fn integrity(conn: &mut SqliteConnection) {
        #[derive(QueryableByName)]
        struct Check {
            #[diesel(sql_type = diesel::sql_types::Text)]
            integrity_check: String,
        }
        let rows: Vec<Check> = diesel::sql_query("PRAGMA integrity_check")
            .load(conn)
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].integrity_check, "ok");
    }

    /// What is in the files right after a commit, as a crash would leave
    /// them: the database and its WAL copied (no shared memory), opened
    /// fresh, so SQLite recovers the WAL from the file and its checksums.
    fn crash_copy(path: &std::path::Path, dir: &std::path::Path) -> SqliteConnection {
        let copy = dir.join("copy.db");
        for suffix in ["", "-wal"] {
            let from = format!("{}{suffix}", path.display());
            let to = format!("{}{suffix}", copy.display());
            let _ = std::fs::remove_file(&to);
            std::fs::copy(&from, &to).unwrap();
        }
        let _ = std::fs::remove_file(format!("{}-shm", copy.display()));
        plain(&copy)
    }

    /// Big transactions that spill pages to the WAL before they commit, a
    /// page written twice in one transaction (SQLite then rewrites frame
    /// checksums in place after the commit frame), a rolled-back spill, and
    /// another writer taking turns on the same WAL: after each commit every
    /// other connection, and a copy of the files, sees exactly what was
    /// committed.
    #[test]
    fn commits_reach_the_file_whatever_the_write_pattern() {
        assert!(register());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        let mut writer = SqliteConnection::establish(&uri(path.to_str().unwrap())).unwrap();
        writer
            .batch_execute(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = 20; \
                 CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
            )
            .unwrap();
        let mut other = plain(&path);
        let mut expected = 0;
        for round in 0..3 {
            // Spills: far more pages than the cache of 20 holds.
            writer
                .batch_execute(
                    "BEGIN IMMEDIATE; \
                     WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 2000) \
                     INSERT INTO t (v) SELECT randomblob(900) FROM s; \
                     UPDATE t SET v = randomblob(900) WHERE id % 7 = 0; \
                     UPDATE t SET v = randomblob(900) WHERE id % 5 = 0; \
                     COMMIT;",
                )
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            expected += 2000;
            assert_eq!(count(&mut other, "SELECT count(*) AS n FROM t"), expected);
            let mut copy = crash_copy(&path, dir.path());
            assert_eq!(count(&mut copy, "SELECT count(*) AS n FROM t"), expected);
            integrity(&mut copy);
            drop(copy);
            // A spill that is rolled back, then the other connection
            // writes where its frames were.
            writer
                .batch_execute(
                    "BEGIN IMMEDIATE; \
                     WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 500) \
                     INSERT INTO t (v) SELECT randomblob(900) FROM s; \
                     ROLLBACK;",
                )
                .unwrap();
            other
                .batch_execute(
                    "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 300) \
                     INSERT INTO t (v) SELECT randomblob(100) FROM s;",
                )
                .unwrap();
            expected += 300;
            writer
                .batch_execute("INSERT INTO t (v) VALUES (x'01');")
                .unwrap();
            expected += 1;
            assert_eq!(count(&mut other, "SELECT count(*) AS n FROM t"), expected);
            let mut copy = crash_copy(&path, dir.path());
            assert_eq!(count(&mut copy, "SELECT count(*) AS n FROM t"), expected);
            integrity(&mut copy);
        }
        // A checkpoint that restarts the WAL; the writer starts it over.
        other
            .batch_execute("PRAGMA wal_checkpoint(RESTART);")
            .unwrap();
        writer
            .batch_execute(
                "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 100) \
                     INSERT INTO t (v) SELECT randomblob(900) FROM s;",
            )
            .unwrap();
        expected += 100;
        let mut copy = crash_copy(&path, dir.path());
        assert_eq!(count(&mut copy, "SELECT count(*) AS n FROM t"), expected);
        integrity(&mut copy);
        drop(writer);
        let mut reopened = plain(&path);
        assert_eq!(
            count(&mut reopened, "SELECT count(*) AS n FROM t"),
            expected
        );
        integrity(&mut reopened);
    }
}
