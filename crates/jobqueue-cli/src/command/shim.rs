//! The supervisor between the server and a command: `jobqueue __phase-shim
//! SERVER_PID -- PROGRAM ARGS...`.
//!
//! The server starts this (its own binary) as the leader of a new process
//! group, and the supervisor starts the command in that same group, with
//! the same standard input, output and error. It exists so that a command
//! never outlives a crashed server:
//!
//! - It asks the kernel for `SIGHUP` when its parent dies
//!   (`PR_SET_PDEATHSIG` on Linux, `PROC_PDEATHSIG_CTL` on FreeBSD, through
//!   `rustix`), then checks that the server is still its parent (it may
//!   have died before the request).
//! - On that `SIGHUP`, if the server is indeed gone, it kills its whole
//!   process group, itself included: the command and everything the
//!   command started.
//! - `SIGTERM` and `SIGINT` reach the command directly (they are sent to
//!   the group); the supervisor outlives them to report how the command
//!   ended.
//!
//! The kernel's parent-death signal covers the command itself only when set
//! in the command's own process, which needs code between `fork` and `exec`
//! (`unsafe` in Rust); a supervisor process gets it for the whole group
//! with safe calls. Its exit status is the command's: the same code, or
//! 128 + N when the command was killed by signal N (as shells report it);
//! 127 when the program cannot be found, 126 when it cannot be started.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;

use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};

/// The first argument that makes the binary act as the supervisor.
pub const SHIM_ARG: &str = "__phase-shim";

/// Runs the supervisor with the arguments after [`SHIM_ARG`]; returns its
/// exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let mut args = args.into_iter();
    let server = args
        .next()
        .and_then(|a| a.into_string().ok())
        .and_then(|a| a.parse::<i32>().ok())
        .and_then(Pid::from_raw);
    let separator = args.next();
    let (Some(server), Some(true)) = (server, separator.map(|s| s == "--")) else {
        eprintln!(
            "jobqueue: {SHIM_ARG} is internal: jobqueue {SHIM_ARG} SERVER_PID -- PROGRAM [ARGS...]"
        );
        return 2;
    };
    let Some(program) = args.next() else {
        eprintln!("jobqueue: {SHIM_ARG}: no program to run");
        return 2;
    };
    let rest: Vec<OsString> = args.collect();

    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::HUP)) {
        eprintln!("jobqueue: cannot ask for the parent-death signal: {e}");
    }
    if rustix::process::getppid() != Some(server) {
        // The server died before the request above took effect.
        return 1;
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jobqueue: cannot start the command's supervisor: {e}");
            return 126;
        }
    };
    runtime.block_on(supervise(server, program, rest))
}

async fn supervise(server: Pid, program: OsString, args: Vec<OsString>) -> i32 {
    // Handlers first: a signal that comes before them would end the
    // supervisor with the command still running.
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("jobqueue: cannot install the supervisor's signal handlers");
        return 126;
    };
    let mut child = match tokio::process::Command::new(&program).args(&args).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("jobqueue: cannot run {}: {e}", program.to_string_lossy());
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                    Err(e) => {
                        eprintln!("jobqueue: cannot wait for the command: {e}");
                        126
                    }
                };
            }
            _ = hup.recv() => {
                if rustix::process::getppid() != Some(server) {
                    // The server is gone: nothing may outlive it.
                    let _ = rustix::process::kill_current_process_group(Signal::KILL);
                }
            }
            // The command got these too (they are sent to the group).
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
