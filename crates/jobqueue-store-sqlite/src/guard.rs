//! Noticing that the database file was deleted, replaced or truncated under
//! a running store.
//!
//! SQLite keeps writing through the file descriptor it opened, so after
//! `rm jobs.db` (or a restore that renames another file over it) every
//! later commit lands in a file nobody will ever open again: acknowledged,
//! then lost. The writer therefore checks, before each `COMMIT`, that the
//! path still names the file the store opened (same device and inode, still
//! linked) and that the file has not shrunk (the store never shrinks it: no
//! `VACUUM`, no auto-vacuum). Once the check fails, every later write fails
//! with a clear [`ErrorKind::Io`] error: nothing more is acknowledged.
//! The check is a `stat` of the path and an `fstat` of a descriptor of our
//! own, about a microsecond per group commit.

use std::fs::File;
use std::path::PathBuf;

use jobqueue_core::{ErrorKind, StoreError};

/// Watches one database file.
#[derive(Debug)]
pub(crate) struct FileGuard {
    path: PathBuf,
    /// Our own descriptor of the file opened at start: it follows the file
    /// whatever happens to the path.
    file: File,
    identity: (u64, u64),
    /// The largest size seen; the file never shrinks while we run.
    largest: u64,
    /// Set once the file was found gone; every later check fails with it.
    broken: Option<String>,
}

impl FileGuard {
    /// Starts watching the database at `path` (which must exist).
    pub(crate) fn new(path: PathBuf) -> Result<Self, StoreError> {
        let file = File::open(&path).map_err(|e| {
            StoreError::backend(
                ErrorKind::Io,
                format!("cannot open sqlite database {}: {e}", path.display()),
            )
        })?;
        let meta = file.metadata().map_err(|e| io(&path, &e))?;
        Ok(Self {
            identity: identity(&meta),
            largest: meta.len(),
            path,
            file,
            broken: None,
        })
    }

    /// Fails if the path no longer names the file the store opened, or the
    /// file shrank.
    pub(crate) fn check(&mut self) -> Result<(), StoreError> {
        if self.broken.is_none() {
            self.broken = self.find_fault();
        }
        match &self.broken {
            None => Ok(()),
            Some(fault) => Err(StoreError::backend(
                ErrorKind::Io,
                format!(
                    "the sqlite database {} {fault} while the store had it open; \
                     writes are refused (nothing after that was committed) until the \
                     store is reopened",
                    self.path.display()
                ),
            )),
        }
    }

    fn find_fault(&mut self) -> Option<String> {
        let ours = match self.file.metadata() {
            Ok(m) => m,
            Err(e) => return Some(format!("could not be checked ({e})")),
        };
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some("was deleted".to_owned());
            }
            Err(e) => return Some(format!("could not be checked ({e})")),
            Ok(now) if identity(&now) != self.identity => {
                return Some("was replaced by another file".to_owned());
            }
            Ok(_) => {}
        }
        // The path may be a hard link of ours while the name we opened went.
        if links(&ours) == 0 {
            return Some("was deleted".to_owned());
        }
        let len = ours.len();
        if len < self.largest {
            return Some(format!(
                "was truncated (from {} to {len} bytes)",
                self.largest
            ));
        }
        self.largest = len;
        None
    }
}

fn io(path: &std::path::Path, e: &std::io::Error) -> StoreError {
    StoreError::backend(
        ErrorKind::Io,
        format!("cannot read sqlite database {}: {e}", path.display()),
    )
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(unix)]
fn links(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.nlink()
}

// Elsewhere only deletion of the path and truncation are noticed.
#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

#[cfg(not(unix))]
fn links(_meta: &std::fs::Metadata) -> u64 {
    1
}
