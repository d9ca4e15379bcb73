//! Command phases: a pipeline step that runs a program.
//!
//! A [`CommandPhase`] runs its argv (no shell is implied) with:
//!
//! - **stdin**: one JSON object, then end of file:
//!   `{"job_id", "pipeline", "phase", "attempt", "input", "results"}`, where
//!   `results` holds the results of the phases before it;
//! - **environment**: the server's, plus `JOBQUEUE_JOB_ID`,
//!   `JOBQUEUE_PIPELINE`, `JOBQUEUE_PHASE`, `JOBQUEUE_PHASE_INDEX` (from 0),
//!   `JOBQUEUE_ATTEMPT` (from 1) and the phase's own `env`;
//! - **working directory**: its `workdir`.
//!
//! Its **result** is its stdout, trimmed: JSON as is, other text as a JSON
//! string, nothing as `null`; more than [`DEFAULT_STDOUT_LIMIT`] (by
//! default) fails the phase for good. A stderr line
//! `::progress::<percent> <message>` reports progress; other stderr lines
//! are logged, and the last 4 KiB of them become the error text of a
//! failure. **Exit 0** completes the phase, **exit 100** fails it for good,
//! anything else (another code, a signal) fails it with a retry while
//! attempts remain.
//!
//! The command runs in a process group of its own under a small supervisor
//! (see [`shim`]). A cancel, a timeout or a shutdown sends `SIGTERM` to the
//! whole group and `SIGKILL` after the grace period; when the command exits,
//! whatever it left running in its group is killed; a crash of the server
//! kills the group through the supervisor, and the next start sweeps the
//! groups recorded for the interrupted jobs ([`Records`]).

mod group;
mod launch;
mod output;
mod records;
pub mod shim;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jobqueue::{Phase, PhaseContext, PhaseError};
use rustix::process::Pid;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::Instrument;

use self::group::ProcessGroup;
pub use self::launch::Launcher;
pub use self::output::{MAX_LINE, PROGRESS_PREFIX, TAIL};
use self::output::{Tail, TooLarge, read_limited, read_lines, result_of, stderr_line};
pub use self::records::{RecordFile, Records, records_dir};

/// The most stdout a command may write: its result (16 MiB, the largest
/// result a store takes).
pub const DEFAULT_STDOUT_LIMIT: usize = 16 * 1024 * 1024;

/// How long a command told to stop (`SIGTERM`) has before `SIGKILL`.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// The exit code that fails a phase for good.
pub const EXIT_PERMANENT: i32 = 100;

/// After a command exited and its group was killed, how long its output
/// may still take to close: only a process that left the group can hold it
/// open, and it is not waited for.
const DRAIN: Duration = Duration::from_secs(2);

/// A phase that runs a program; see the module doc.
#[derive(Debug, Clone)]
pub struct CommandPhase {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<PathBuf>,
    stdout_limit: usize,
    kill_grace: Duration,
    launcher: Arc<Launcher>,
}

impl CommandPhase {
    /// A phase called `name` that runs `argv` through `launcher`.
    pub fn new(name: impl Into<String>, argv: Vec<String>, launcher: Arc<Launcher>) -> Self {
        Self {
            name: name.into(),
            argv,
            env: Vec::new(),
            workdir: None,
            stdout_limit: DEFAULT_STDOUT_LIMIT,
            kill_grace: DEFAULT_KILL_GRACE,
            launcher,
        }
    }

    /// Adds these variables to the command's environment.
    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// Runs the command in `dir` (else in the server's current directory).
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Fails the phase for good when stdout passes `bytes`.
    pub fn stdout_limit(mut self, bytes: usize) -> Self {
        self.stdout_limit = bytes;
        self
    }

    /// How long a command told to stop has before it is killed.
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    fn command(&self, ctx: &PhaseContext) -> tokio::process::Command {
        let mut cmd = self.launcher.command(&self.argv);
        if let Some(dir) = &self.workdir {
            cmd.current_dir(dir);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("JOBQUEUE_JOB_ID", ctx.job_id().to_string())
            .env("JOBQUEUE_PIPELINE", ctx.pipeline())
            .env("JOBQUEUE_PHASE", ctx.phase())
            .env("JOBQUEUE_PHASE_INDEX", ctx.index().to_string())
            .env("JOBQUEUE_ATTEMPT", ctx.attempt().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// How a run ended.
enum Ended {
    Exited(ExitStatus),
    /// Stdout passed its limit; the group was killed.
    TooLarge,
}

#[async_trait]
impl Phase for CommandPhase {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, ctx: PhaseContext) -> Result<Value, PhaseError> {
        let span = tracing::info_span!("command", job = %ctx.job_id(), phase = %ctx.phase());
        self.run_command(ctx).instrument(span).await
    }
}

impl CommandPhase {
    async fn run_command(&self, ctx: PhaseContext) -> Result<Value, PhaseError> {
        let mut input = serde_json::to_vec(&json!({
            "job_id": ctx.job_id().to_string(),
            "pipeline": ctx.pipeline(),
            "phase": ctx.phase(),
            "attempt": ctx.attempt(),
            "input": ctx.input(),
            "results": ctx.results(),
        }))
        .map_err(|e| PhaseError::permanent(format!("cannot encode the command's input: {e}")))?;
        input.push(b'\n');

        let mut child = self
            .launcher
            .spawn(self.command(&ctx))
            .await
            .map_err(|e| PhaseError::retryable(format!("cannot start the command: {e}")))?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| PhaseError::retryable("the command ended before it could be watched"))?;
        let record = self
            .launcher
            .records()
            .and_then(|r| r.record(ctx.job_id(), pgid));
        let mut group = ProcessGroup::new(pgid, self.kill_grace, record);
        tracing::debug!(pgid = pgid.as_raw_pid(), argv = ?self.argv, "command started");

        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let mut out = Vec::new();
        let mut tail = Tail::default();
        let mut stopped = false;
        let ended = {
            let write_input = async {
                if let Some(mut stdin) = stdin {
                    // A command that does not read its input may close it:
                    // that is its business, not an error.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let read_output = async {
                match stdout {
                    Some(stdout) => read_limited(stdout, self.stdout_limit, &mut out).await,
                    None => Ok(()),
                }
            };
            let read_errors = async {
                if let Some(stderr) = stderr {
                    read_lines(stderr, |line| stderr_line(&ctx, &mut tail, line)).await;
                }
            };
            tokio::pin!(write_input, read_output, read_errors);
            let (mut written, mut output_done, mut errors_done) = (false, false, false);
            let mut status: Option<ExitStatus> = None;
            let mut kill_at: Option<Instant> = None;
            let mut drain_until: Option<Instant> = None;
            loop {
                if let Some(s) = status
                    && output_done
                    && errors_done
                {
                    break Ended::Exited(s);
                }
                tokio::select! {
                    exited = child.wait(), if status.is_none() => {
                        let s = exited.map_err(|e| PhaseError::retryable(format!("cannot wait for the command: {e}")))?;
                        // What the command left running in its group goes with it.
                        group.kill();
                        status = Some(s);
                        drain_until = deadline_in(DRAIN);
                    }
                    read = &mut read_output, if !output_done => {
                        output_done = true;
                        if read == Err(TooLarge) {
                            group.kill();
                            break Ended::TooLarge;
                        }
                    }
                    () = &mut read_errors, if !errors_done => errors_done = true,
                    () = &mut write_input, if !written => written = true,
                    () = ctx.cancelled(), if !stopped && status.is_none() => {
                        tracing::info!(pgid = pgid.as_raw_pid(), "stopping the command (SIGTERM)");
                        stopped = true;
                        group.terminate();
                        // `None` (a grace too long to count) never kills.
                        kill_at = deadline_in(self.kill_grace);
                    }
                    () = sleep_until(kill_at), if kill_at.is_some() => {
                        tracing::warn!(pgid = pgid.as_raw_pid(), "the command did not stop within its grace period (SIGKILL)");
                        group.kill();
                        kill_at = None;
                    }
                    () = sleep_until(drain_until), if drain_until.is_some() => {
                        tracing::warn!("a process outside the command's group still holds its output open; not waiting for it");
                        if let Some(s) = status {
                            break Ended::Exited(s);
                        }
                    }
                }
            }
        };
        if matches!(ended, Ended::TooLarge) {
            // Killed above; reaped here so that no zombie waits for the
            // runtime's orphan reaper.
            let _ = child.wait().await;
        }
        group.finish();
        let tail = tail.text();
        match ended {
            Ended::TooLarge => Err(PhaseError::permanent(format!(
                "the command wrote more than {} to stdout, the limit of a result; it was stopped",
                size_text(self.stdout_limit)
            ))),
            Ended::Exited(_) if stopped => Err(PhaseError::retryable(with_tail(
                "the command was stopped (the job was cancelled or the server is shutting down)"
                    .into(),
                tail,
            ))),
            Ended::Exited(status) if status.success() => Ok(result_of(&out)),
            Ended::Exited(status) => {
                let message = with_tail(describe(status), tail);
                if status.code() == Some(EXIT_PERMANENT) {
                    Err(PhaseError::permanent(message))
                } else {
                    Err(PhaseError::retryable(message))
                }
            }
        }
    }
}

/// A size in the largest binary unit that divides it: `16 MiB`, `64 KiB`,
/// `1000 bytes`.
fn size_text(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    match bytes {
        0 => "0 bytes".to_owned(),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

/// The time `d` from now; `None` if it cannot be represented (a duration
/// meant as "never").
fn deadline_in(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Sleeps until `at`; never resolves for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `message: tail`, or the message alone without a tail.
fn with_tail(message: String, tail: &str) -> String {
    if tail.is_empty() {
        message
    } else {
        format!("{message}: {tail}")
    }
}

/// How the command ended, in words. The supervisor reports a command killed
/// by signal N as exit code 128 + N, as shells do.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) if code > 128 && code <= 128 + 64 => {
            let signal = code - 128;
            format!(
                "the command was killed by signal {signal}{} (exit status {code})",
                signal_name(signal)
            )
        }
        (Some(code), _) => format!("the command exited with status {code}"),
        (None, Some(signal)) => format!(
            "the command was killed by signal {signal}{}",
            signal_name(signal)
        ),
        (None, None) => "the command ended without a status".to_owned(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        3 => " (SIGQUIT)",
        4 => " (SIGILL)",
        6 => " (SIGABRT)",
        8 => " (SIGFPE)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        13 => " (SIGPIPE)",
        14 => " (SIGALRM)",
        15 => " (SIGTERM)",
        _ => "",
    }
}
