//! Starting commands: through the supervisor (`shim.rs`), from one thread
//! that lives as long as the process.
//!
//! The kernel sends the parent-death signal when the *thread* that started
//! a process ends, not the process. Tokio's blocking threads end when idle,
//! and a worker thread may become one (`block_in_place`), so commands are
//! started from a dedicated thread that never ends: the signal then comes
//! exactly when the server process dies.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::records::Records;
use super::shim::SHIM_ARG;

/// How commands are started: which program acts as their supervisor, and
/// where their process groups are recorded.
#[derive(Debug, Clone)]
pub struct Launcher {
    program: PathBuf,
    records: Option<Records>,
}

impl Launcher {
    /// Supervises commands with the running executable, which must be the
    /// `jobqueue` binary (it answers `jobqueue __phase-shim`); another
    /// program that runs command phases names the `jobqueue` binary with
    /// [`with_program`](Self::with_program). On Linux the running executable
    /// is `/proc/self/exe`, which still works when the file was replaced by
    /// an upgrade.
    pub fn current_exe() -> io::Result<Self> {
        let program = if cfg!(target_os = "linux") {
            PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        Ok(Self::with_program(program))
    }

    /// Supervises commands with the `jobqueue` binary at `program` (tests
    /// point it at the built binary).
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            records: None,
        }
    }

    /// Records each command's process group in `records`, for the sweep
    /// after a crash.
    pub fn record_in(mut self, records: Records) -> Self {
        self.records = Some(records);
        self
    }

    /// Where process groups are recorded, if anywhere.
    pub fn records(&self) -> Option<&Records> {
        self.records.as_ref()
    }

    /// A command that runs `argv` under the supervisor, in a new process
    /// group.
    pub(crate) fn command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg(SHIM_ARG)
            .arg(std::process::id().to_string())
            .arg("--")
            .args(argv.iter().map(OsString::from))
            .process_group(0);
        cmd
    }

    /// Starts `cmd` from the spawner thread.
    pub(crate) async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let Some(spawner) = spawner() else {
            // No spawner thread could be started: start from this thread,
            // where the parent-death signal may come early if the thread
            // ends (documented above), rather than not at all.
            let mut cmd = cmd;
            return cmd.spawn();
        };
        let (reply, answer) = oneshot::channel();
        let request = SpawnRequest {
            command: cmd,
            handle: tokio::runtime::Handle::current(),
            reply,
        };
        spawner
            .send(request)
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
    }
}

struct SpawnRequest {
    command: Command,
    /// The runtime that will wait for the child.
    handle: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// The spawner thread's queue, started on first use.
fn spawner() -> Option<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            let started = std::thread::Builder::new()
                .name("jobqueue-spawner".into())
                .spawn(move || {
                    for mut request in rx {
                        let _runtime = request.handle.enter();
                        let _ = request.reply.send(request.command.spawn());
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the spawner thread; commands start from worker threads");
                    None
                }
            }
        })
        .as_ref()
}
