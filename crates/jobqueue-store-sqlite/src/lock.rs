//! One store per database file: an OS lock held for the store's life.
//!
//! The store's writer thread is the only writer of its file, and it relies
//! on that: it counts event sequence numbers itself, caches the running
//! jobs it wrote, and recovers every `running` job at startup as left by a
//! dead process. A second store on the same file (in another process or in
//! this one) would break all three, so [`FileLock::acquire`] takes an
//! exclusive `flock` on a lock file beside the database (`<file>.lock`,
//! holding the owner's pid for the error message) and a second open is
//! refused with [`ErrorKind::InUse`]. The lock is released when the store
//! has finished: its writer thread drops it after the last connection
//! closed. A lock file that stays behind after a crash is harmless: the OS
//! drops the lock with the process.
//!
//! The lock file, not the database, is locked: SQLite itself uses POSIX
//! record locks on the database file, and on some file systems `flock` is
//! emulated with those, where it would collide with SQLite's own locking.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jobqueue_core::{ErrorKind, StoreError};

/// An exclusive lock on a database file, released on drop.
#[derive(Debug)]
pub(crate) struct FileLock {
    /// Holding the handle holds the lock.
    _file: File,
    /// True while the store that holds the lock takes work; see [`HELD`].
    open: Arc<AtomicBool>,
}

/// The locks this process holds, by lock file, each with its store's "still
/// open" flag: a second open in this process is refused at once while the
/// first store is open, and waits for it while it is closing (its threads
/// still finishing what was sent).
static HELD: OnceLock<Mutex<HashMap<PathBuf, Arc<AtomicBool>>>> = OnceLock::new();

fn held() -> std::sync::MutexGuard<'static, HashMap<PathBuf, Arc<AtomicBool>>> {
    HELD.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The lock file of the database at `db`.
pub(crate) fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl FileLock {
    /// Locks the database at `db`. If a store of this same process holds it
    /// (one that is closing, say: its threads finish what was sent before
    /// they let go), waits up to `patience` for it; a holder in another
    /// process is refused at once.
    pub(crate) fn acquire(db: &Path, patience: Duration) -> Result<Self, StoreError> {
        let path = lock_path(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                StoreError::backend(
                    ErrorKind::Io,
                    format!("cannot open the lock file {}: {e}", path.display()),
                )
            })?;
        // The same file under another name (relative, a symlink) is the
        // same lock.
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let deadline = Instant::now() + patience;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let holder = holder_pid(&mut file);
                    let ours = holder == Some(std::process::id());
                    let still_open = held()
                        .get(&key)
                        .is_some_and(|open| open.load(Ordering::Acquire));
                    if ours && !still_open && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    return Err(in_use(db, holder, ours));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(StoreError::backend(
                        ErrorKind::Io,
                        format!("cannot lock {}: {e}", path.display()),
                    ));
                }
            }
        }
        // Ours now: say who holds it, for the next one who tries.
        let pid = format!("{}\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()));
        if let Err(e) = written {
            return Err(StoreError::backend(
                ErrorKind::Io,
                format!("cannot write the lock file {}: {e}", path.display()),
            ));
        }
        let open = Arc::new(AtomicBool::new(true));
        held().insert(key, Arc::clone(&open));
        Ok(Self { _file: file, open })
    }

    /// The flag the store clears when it stops taking work.
    pub(crate) fn open_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.open)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        self.open.store(false, Ordering::Release);
    }
}

fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn in_use(db: &Path, holder: Option<u32>, ours: bool) -> StoreError {
    let who = match (holder, ours) {
        (Some(pid), true) => format!("a store of this process (pid {pid})"),
        (Some(pid), false) => format!("process {pid}"),
        (None, _) => "another store".to_owned(),
    };
    StoreError::backend(
        ErrorKind::InUse,
        format!(
            "the sqlite database {} is in use by {who}: one store (one process) per \
             database file; shut the other one down first",
            db.display()
        ),
    )
}
