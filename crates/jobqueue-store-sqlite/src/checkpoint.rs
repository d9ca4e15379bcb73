//! The checkpointer: a thread with a connection of its own that copies the
//! WAL back into the database file, so the writer does not.
//!
//! In WAL mode every commit appends to the `-wal` file, and a checkpoint
//! copies those pages back into the database file: it syncs the WAL, writes
//! the pages, and syncs the database file. Run by the writer (SQLite's
//! `wal_autocheckpoint`), each checkpoint stops every write for as long as
//! the two syncs of megabytes take, which is little on a quiet disk and a
//! great deal while the machine writes back other files (a build, a copy):
//! 16 MB took 16 ms to sync on the development machine's idle disk and
//! 20 to 310 ms beside another program's writes. See `docs/performance.md`
//! ("Checkpoints off the writer") for what moving them bought.
//!
//! Here the copying is split in two:
//!
//! - This thread runs `PRAGMA wal_checkpoint(PASSIVE)` once the writer has
//!   appended [`PASS_EVENTS`] events since the last pass, or the `-wal`
//!   file grew by [`PASS_BYTES`], or, on a quiet store, [`QUIET_PASS`]
//!   after a commit; at most every [`PACE`]. A passive checkpoint takes no
//!   lock the writer needs: the writer keeps appending while it copies and
//!   syncs. SQLite syncs the database file only at the end of a pass that
//!   reached the WAL's end, which under steady writes none of this
//!   thread's does; so after each pass that copied pages, this thread
//!   syncs the database file itself (through SQLite's file handle, see
//!   [`sync_database`]). Otherwise the writer's finishing pass (below)
//!   would sync every page copied since the WAL last started over: 5 to
//!   15 ms of its time, measured. Not after every commit: a pass
//!   that catches up makes the writer's next commit start the WAL over,
//!   and SQLite syncs the WAL's new header in that commit, which a job
//!   started one at a time then waits for (passes after every commit took
//!   `latency_idle` p99 from 0.6 ms to 2 ms).
//! - The WAL starts over from its beginning (instead of growing) only when
//!   a write transaction begins with every page of it copied back, which
//!   the writer, appending all the time, never lets this thread see. So
//!   once the WAL is longer than [`RESTART_PAGES`], this thread asks the
//!   writer to finish: between two groups the writer runs a passive
//!   checkpoint itself, which copies only what was appended since this
//!   thread's last pass, and its next transaction restarts the WAL.
//!
//! The writer keeps SQLite's own automatic checkpoint as a backstop at a
//! larger size (see [`crate::conn`]), so the WAL stays bounded even if this
//! thread cannot keep up or fails. A checkpoint never changes what the
//! database holds, only where the pages live, so none of this affects what
//! a commit guarantees.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::Integer;
use diesel::sqlite::SqliteConnection;
use jobqueue_core::{ErrorKind, StoreError};
use tracing::{debug, warn};

use crate::raw::{Handle, sync_database};

/// The least time between two of this thread's passes: each pass syncs the
/// WAL and the database file.
const PACE: Duration = Duration::from_millis(10);

/// Events appended (a one-phase job appends five) after which a pass runs:
/// about 400 one-phase jobs, a megabyte or two of WAL.
const PASS_EVENTS: u64 = 2000;

/// Growth of the `-wal` file after which a pass runs, however few events
/// came (large inputs and results). The file grows only past the longest
/// the WAL has been since the store opened, so this catches the first
/// cycles and unusually large writes; the events count the rest.
const PASS_BYTES: u64 = 1 << 20;

/// How long after a commit a pass runs when fewer than [`PASS_EVENTS`]
/// events came: a quiet store's WAL is copied back too.
const QUIET_PASS: Duration = Duration::from_secs(1);

/// WAL pages (4 KiB each by default, so 32 MiB) after which the writer is
/// asked to finish the checkpoint so the WAL starts over. SQLite's own
/// default automatic checkpoint is at 1,000. Each restart costs the writer
/// a finishing pass (two syncs, 5 to 15 ms under load) and the next commit
/// a sync of the new WAL header, so fewer restarts are fewer stalls: at
/// 8,000 pages instead of 1,000, the `latency_loaded` p99 went from 23–26
/// to about 10 ms and `noop_1phase` rose by about 15% (see
/// `docs/performance.md`, "Fewer, shorter finishing passes"). The file
/// keeps its largest size until the store closes.
pub(crate) const RESTART_PAGES: i32 = 8000;

/// How long this thread waits after a failed pass (a full disk, an I/O
/// error) before it tries again.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the writer and the checkpointer share.
#[derive(Default)]
pub(crate) struct Signal {
    state: Mutex<State>,
    changed: Condvar,
    /// Set by the checkpointer when the WAL is long and nearly all copied
    /// back; taken by the writer, which then finishes the checkpoint.
    finish: AtomicBool,
}

#[derive(Default)]
struct State {
    /// When the writer made its first commit since the checkpointer's last
    /// pass (none: no commit since).
    first_commit: Option<Instant>,
    /// Events the commits since then appended.
    events: u64,
    stop: bool,
}

impl Signal {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves a counter and a flag: still
        // meaningful.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by the writer after each commit, with the number of events
    /// it appended.
    pub(crate) fn committed(&self, events: u64) {
        let mut state = self.state();
        let before = state.events;
        state.events = before.saturating_add(events);
        let first = state.first_commit.is_none();
        if first {
            state.first_commit = Some(Instant::now());
        }
        let crossed = before < PASS_EVENTS && state.events >= PASS_EVENTS;
        drop(state);
        // Woken only when that changes what it waits for, not per commit.
        if first || crossed {
            self.changed.notify_one();
        }
    }

    /// Called by the writer between groups: runs the finishing passive
    /// checkpoint if the checkpointer asked for it. Returns whether it ran
    /// and copied the whole WAL back (the next write transaction then
    /// starts the WAL over).
    pub(crate) fn finish_if_asked(&self, conn: &mut SqliteConnection) -> bool {
        if !self.finish.swap(false, Ordering::AcqRel) {
            return false;
        }
        let done = match passive(conn) {
            Ok(r) => {
                debug!(
                    wal_pages = r.log,
                    copied = r.checkpointed,
                    "writer finished a checkpoint"
                );
                r.busy == 0 && r.log == r.checkpointed
            }
            // Harmless: the backstop or a later pass copies the pages.
            Err(e) => {
                debug!(error = %e, "the writer's finishing checkpoint failed");
                false
            }
        };
        // The checkpointer may go on.
        self.changed.notify_one();
        done
    }

    fn stop(&self) {
        self.state().stop = true;
        self.changed.notify_one();
    }
}

/// The running checkpointer thread.
pub(crate) struct Checkpointer {
    signal: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a read-write connection to the file the
    /// writer writes.
    /// `db` is the database file's path; its `-wal` companion is watched.
    pub(crate) fn spawn(
        conn: SqliteConnection,
        handle: Handle,
        db: &Path,
    ) -> Result<Self, StoreError> {
        let signal = Arc::new(Signal::default());
        let theirs = Arc::clone(&signal);
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let thread = std::thread::Builder::new()
            .name("jobqueue-sqlite-checkpointer".to_owned())
            .spawn(move || {
                let mut conn = Conn { handle, conn };
                run(&theirs, &mut conn, &wal);
            })
            .map_err(|e| {
                StoreError::backend(
                    ErrorKind::Internal,
                    format!("cannot start the checkpointer: {e}"),
                )
            })?;
        Ok(Self {
            signal,
            thread: Some(thread),
        })
    }

    /// What the writer uses to tell this thread about commits.
    pub(crate) fn signal(&self) -> Arc<Signal> {
        Arc::clone(&self.signal)
    }

    /// Stops the thread and closes its connection (before the writer's, so
    /// the writer's is the last one and its close removes the WAL).
    pub(crate) fn stop(mut self) {
        self.signal.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.stop();
    }
}

/// The checkpointer's connection with its handle, for [`sync_database`]
/// (the handle first: dropped before the connection closes).
struct Conn {
    handle: Handle,
    conn: SqliteConnection,
}

fn run(signal: &Signal, conn: &mut Conn, wal: &Path) {
    // Said once per run of failures, not every second.
    let mut failing = false;
    // The `-wal` file's size at the last pass.
    let mut wal_size: u64 = 0;
    // Pages of the WAL copied back and synced to the database file.
    let mut synced: i32 = 0;
    loop {
        {
            let mut state = signal.state();
            loop {
                if state.stop {
                    return;
                }
                let now = Instant::now();
                let quiet_due = state.first_commit.map(|at| at + QUIET_PASS);
                // Nothing to do while the writer has a finishing pass to run.
                let asked = signal.finish.load(Ordering::Acquire);
                let grown =
                    quiet_due.is_some() && file_size(wal) >= wal_size.saturating_add(PASS_BYTES);
                if !asked
                    && (state.events >= PASS_EVENTS
                        || grown
                        || quiet_due.is_some_and(|due| now >= due))
                {
                    break;
                }
                // While commits come, the file's size is looked at every
                // `PACE`.
                let wait = if quiet_due.is_some() && !asked {
                    PACE
                } else {
                    QUIET_PASS
                };
                state = signal
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.first_commit = None;
            state.events = 0;
        }
        wal_size = file_size(wal);
        match passive(&mut conn.conn).and_then(|r| {
            // A pass that stops short of the WAL's end (the writer appends
            // all the time) leaves the pages it copied unsynced; synced
            // here, they are not left for the writer's finishing pass.
            // Even `checkpointed == log` does not say SQLite synced: `log`
            // is the WAL as this pass began, SQLite compares with the WAL
            // as it ends, which the writer has lengthened meanwhile (tried:
            // skipping the sync then left nearly every pass unsynced).
            if r.checkpointed > 0 && r.checkpointed != synced {
                sync_database(&conn.handle)?;
                synced = r.checkpointed;
            }
            Ok(r)
        }) {
            Ok(r) => {
                if failing {
                    warn!("WAL checkpoints work again");
                    failing = false;
                }
                if r.busy == 0 && r.log >= RESTART_PAGES && r.checkpointed > 0 {
                    signal.finish.store(true, Ordering::Release);
                }
                pause(signal, PACE);
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "WAL checkpoint failed; the writer's own checkpoint covers it, trying again every second");
                    failing = true;
                }
                pause(signal, AFTER_FAILURE);
            }
        }
    }
}

/// The size of `path`, 0 if it cannot be read (no WAL yet).
fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits `how_long`, or less if the store stops.
fn pause(signal: &Signal, how_long: Duration) {
    let state = signal.state();
    if !state.stop {
        let _ = signal
            .changed
            .wait_timeout_while(state, how_long, |s| !s.stop)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// The answer of `PRAGMA wal_checkpoint`.
#[derive(QueryableByName, Debug)]
struct Passive {
    /// 1 if the checkpoint could not run to its end (a reader or another
    /// checkpoint was in the way).
    #[diesel(sql_type = Integer)]
    busy: i32,
    /// Pages in the WAL.
    #[diesel(sql_type = Integer)]
    log: i32,
    /// Pages of it copied back into the database file.
    #[diesel(sql_type = Integer)]
    checkpointed: i32,
}

fn passive(conn: &mut SqliteConnection) -> Result<Passive, StoreError> {
    let rows: Vec<Passive> = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
        .load(conn)
        .map_err(crate::error::db_err)?;
    Ok(rows.into_iter().next().unwrap_or(Passive {
        busy: 1,
        log: -1,
        checkpointed: -1,
    }))
}
