//! Records of running commands' process groups, and the sweep that ends the
//! groups a crashed server left behind.
//!
//! While a command runs, a small file in a directory beside the database
//! (`jobqueue.db.processes/`) names its process group. A server that exits
//! normally has removed every file; a server that crashed leaves the files
//! of the commands it was running. The next server on the same database
//! calls [`Records::sweep`] after it has opened the database (and so holds
//! its lock: no other server is using these records) and before it recovers
//! the interrupted jobs, and kills each recorded group that still runs.
//!
//! Why a file and not the job's row: the store's interrupted context is
//! written by the store's own schema, which knows nothing of processes;
//! a file per command is written and removed without a database round trip
//! on the phase's path, and needs nothing from the layers below.
//!
//! The sweep is a second line of defence. On Linux each command's
//! supervisor (see `shim.rs`) already kills its group when the server dies.
//! A record holds the boot id and the start time of the group's leader, so
//! that after a reboot, or once the pid was reused by another process, the
//! sweep kills nothing it does not own.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use jobqueue::JobId;
use rustix::process::{Pid, Signal};

use super::group::signal_group;

/// The directory of a database's records: `<database>.processes`.
pub fn records_dir(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".processes");
    PathBuf::from(name)
}

/// Where the process groups of running commands are recorded.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

/// A record of one running command; the file is removed on drop.
#[derive(Debug)]
pub struct RecordFile {
    path: PathBuf,
}

impl Drop for RecordFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a process record")
            }
        }
    }
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    pgid: i32,
    boot: Option<String>,
    start: Option<u64>,
}

impl Record {
    fn to_text(&self) -> String {
        let mut text = format!("pgid={}\n", self.pgid);
        if let Some(boot) = &self.boot {
            text.push_str(&format!("boot={boot}\n"));
        }
        if let Some(start) = self.start {
            text.push_str(&format!("start={start}\n"));
        }
        text
    }

    fn parse(text: &str) -> Option<Self> {
        let mut record = Record {
            pgid: 0,
            boot: None,
            start: None,
        };
        for line in text.lines() {
            match line.split_once('=') {
                Some(("pgid", v)) => record.pgid = v.trim().parse().ok()?,
                Some(("boot", v)) => record.boot = Some(v.trim().to_owned()),
                Some(("start", v)) => record.start = Some(v.trim().parse().ok()?),
                _ => {}
            }
        }
        (record.pgid > 0).then_some(record)
    }
}

impl Records {
    /// The records of the database at `db` (see [`records_dir`]).
    pub fn beside(db: &Path) -> Self {
        Self::in_dir(records_dir(db))
    }

    /// Records in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records that `pgid` runs a phase of `job`; the record goes when the
    /// returned file is dropped. A record that cannot be written is logged
    /// and skipped: the command still runs, only the sweep after a crash
    /// would not know it.
    pub fn record(&self, job: JobId, pgid: Pid) -> Option<RecordFile> {
        let record = Record {
            pgid: pgid.as_raw_pid(),
            boot: boot_id(),
            start: start_time(pgid.as_raw_pid()),
        };
        let path = self.dir.join(format!("{job}-{}", record.pgid));
        let written =
            fs::create_dir_all(&self.dir).and_then(|()| fs::write(&path, record.to_text()));
        match written {
            Ok(()) => Some(RecordFile { path }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot record the command's process group");
                None
            }
        }
    }

    /// Kills the recorded groups that still run (left by a server that
    /// crashed) and removes every record. Returns how many groups were
    /// signalled. Only call it while holding the database, so that no live
    /// server owns these records.
    pub fn sweep(&self) -> io::Result<usize> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let boot = boot_id();
        let mut killed = 0;
        for entry in entries {
            let path = entry?.path();
            let text = fs::read_to_string(&path).unwrap_or_default();
            if let Some(record) = Record::parse(&text)
                && owns(&record, boot.as_deref())
                && let Some(pgid) = Pid::from_raw(record.pgid)
            {
                tracing::warn!(
                    pgid = record.pgid,
                    record = %path.display(),
                    "killing the process group of a command left running by a server that stopped without cleaning up"
                );
                signal_group(pgid, Signal::KILL);
                killed += 1;
            }
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(e);
            }
        }
        Ok(killed)
    }
}

/// Whether the group of `record` is still the one that was recorded: same
/// boot, and its leader (if it still lives) is the same process. Without a
/// boot id (not Linux) nothing can be checked, and nothing is killed.
fn owns(record: &Record, boot: Option<&str>) -> bool {
    let (Some(recorded), Some(now)) = (record.boot.as_deref(), boot) else {
        return false;
    };
    if recorded != now {
        // Every process of that boot is gone.
        return false;
    }
    match (record.start, start_time(record.pgid)) {
        // The leader lives: it is ours if it started when ours did.
        (Some(recorded), Some(now)) => recorded == now,
        // The leader is gone; its group may still have members, and its id
        // cannot have been reused while they live.
        _ => true,
    }
}

/// This boot's id (Linux); `None` elsewhere.
fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// When process `pid` started, in clock ticks since boot (Linux); `None` if
/// it does not exist or this is not Linux.
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces;
    // the fields after its closing parenthesis start at field 3, and the
    // start time is field 22.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            pgid: 42,
            boot: Some("b".into()),
            start: Some(7),
        };
        assert_eq!(Record::parse(&r.to_text()), Some(r));
        assert_eq!(Record::parse("garbage"), None);
        assert_eq!(Record::parse("pgid=x"), None);
    }

    #[test]
    fn a_record_of_another_boot_or_process_is_not_ours() {
        let me = rustix::process::getpid().as_raw_pid();
        let Some(boot) = boot_id() else { return };
        let mine = Record {
            pgid: me,
            boot: Some(boot.clone()),
            start: start_time(me),
        };
        assert!(owns(&mine, Some(&boot)));
        let other_boot = Record {
            boot: Some("another".into()),
            ..mine.clone()
        };
        assert!(!owns(&other_boot, Some(&boot)));
        let reused = Record {
            start: mine.start.map(|s| s + 1),
            ..mine
        };
        assert!(!owns(&reused, Some(&boot)));
    }
}
