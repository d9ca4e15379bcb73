//! A command's process group, ended however the phase ends.
//!
//! Every command runs in a process group of its own. [`ProcessGroup`] sends
//! it signals and, when dropped while the command still runs (the runtime
//! aborted the phase at a deadline, or a cancel's grace ran out), sends
//! `SIGTERM` at once and `SIGKILL` after the grace period from a detached
//! task. If that task never gets to run (the runtime shuts down first), the
//! `SIGKILL` is sent as it is dropped. So an aborted phase never leaves its
//! command running.
//!
//! Process group ids are pids, and a pid is reused only after every process
//! of the group is gone; a signal sent late to a group that already ended
//! finds nothing (`ESRCH`), unless the system went through all its pids in
//! between, which the grace period (seconds) makes negligible.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

use super::records::RecordFile;

/// Sends `signal` to the group `pgid`; a group that is already gone is fine.
pub(crate) fn signal_group(pgid: Pid, signal: Signal) {
    match kill_process_group(pgid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => {
            tracing::warn!(pgid = pgid.as_raw_pid(), ?signal, error = %e, "cannot signal the command's process group")
        }
    }
}

/// The process group of a running command.
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    pgid: Pid,
    grace: Duration,
    /// When `SIGTERM` was sent, if it was.
    terminated_at: Option<Instant>,
    /// The command ended and its group was cleared: nothing to do on drop.
    done: bool,
    /// The group's record for the sweep after a crash; removed on drop.
    record: Option<RecordFile>,
}

impl ProcessGroup {
    pub(crate) fn new(pgid: Pid, grace: Duration, record: Option<RecordFile>) -> Self {
        Self {
            pgid,
            grace,
            terminated_at: None,
            done: false,
            record,
        }
    }

    /// Asks every process of the group to stop (`SIGTERM`).
    pub(crate) fn terminate(&mut self) {
        signal_group(self.pgid, Signal::TERM);
        self.terminated_at.get_or_insert_with(Instant::now);
    }

    /// Kills every process of the group (`SIGKILL`).
    pub(crate) fn kill(&mut self) {
        signal_group(self.pgid, Signal::KILL);
    }

    /// The command ended: whatever it left running in its group is killed.
    pub(crate) fn finish(mut self) {
        self.kill();
        self.done = true;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The phase was dropped while its command ran.
        let remaining = match self.terminated_at {
            Some(at) => self.grace.saturating_sub(at.elapsed()),
            None => {
                signal_group(self.pgid, Signal::TERM);
                self.grace
            }
        };
        let killer = KillOnDrop {
            pgid: self.pgid,
            _record: self.record.take(),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !remaining.is_zero() => {
                handle.spawn(async move {
                    tokio::time::sleep(remaining).await;
                    drop(killer);
                });
            }
            _ => drop(killer),
        }
    }
}

/// Kills a group when dropped, then drops its record.
struct KillOnDrop {
    pgid: Pid,
    _record: Option<RecordFile>,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal_group(self.pgid, Signal::KILL);
    }
}
