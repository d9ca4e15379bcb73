//! `jobqueue tail` against a running `jobqueue serve`: in a pseudo-terminal
//! it draws progress bars whose percent moves on; into a pipe it prints
//! plain lines, with no escape codes.
//!
//! The pseudo-terminal comes from rustix (already a dependency), with no
//! `unsafe`: the child's stdin, stdout and stderr are the terminal's
//! secondary side, which is all `isatty` and `indicatif` look at.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use rustix::process::{Pid, Signal, kill_process};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::served::{STEPS, Served, eventually, open_gate, pipelines};
use crate::support::{BIN, DEADLINE};

/// `jobqueue tail ID` against `served`, its output going to `stdout` (and
/// stderr, like a terminal would have it).
fn tail(served: &Served, id: &str, stdout: Stdio, stderr: Stdio) -> Child {
    Command::new(BIN)
        .args(["tail", id, "--url", &served.url])
        .env_remove("JOBQUEUE_TOKEN")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A pseudo-terminal of 120 columns: the primary side to read, and the
/// secondary side for a child.
fn pty() -> (File, OwnedFd) {
    let primary = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&primary).unwrap();
    unlockpt(&primary).unwrap();
    let name = ptsname(&primary, Vec::new()).unwrap();
    let secondary: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap()
        .into();
    let size = Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    tcsetwinsize(&primary, size).unwrap();
    (File::from(primary), secondary)
}

/// `text` without ANSI escape sequences, each `\r` a line break.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    // A CSI sequence ends with a byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}

/// The percents of phase `fetch`'s bar, in the order they were drawn.
fn bar_percents(screen: &str) -> Vec<u64> {
    let mut percents: Vec<u64> = Vec::new();
    for line in screen.lines() {
        let Some(rest) = line.trim_start().strip_prefix("fetch [") else {
            continue;
        };
        let Some((_, after)) = rest.split_once(']') else {
            continue;
        };
        let percent = after
            .split_whitespace()
            .next()
            .and_then(|p| p.strip_suffix('%'))
            .and_then(|p| p.parse().ok());
        if let Some(p) = percent
            && percents.last() != Some(&p)
        {
            percents.push(p);
        }
    }
    percents
}

async fn served(dir: &Path) -> Served {
    let config = format!("[store]\nsqlite = \"jobs.db\"\n{}", pipelines(dir));
    Served::start(dir, &config, "127.0.0.1:0").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_tail_draws_bars_that_move() {
    let dir = tempfile::tempdir().unwrap();
    let served = served(dir.path()).await;
    let id = served.enqueue("steps", json!({})).await;

    let (mut primary, secondary) = pty();
    let mut child = tail(
        &served,
        &id,
        Stdio::from(secondary.try_clone().unwrap()),
        Stdio::from(secondary),
    );
    let screen = Arc::new(Mutex::new(String::new()));
    let sink = screen.clone();
    // Reads until the child is gone (the read then fails with EIO).
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = primary.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let seen = || strip_escapes(&screen.lock().unwrap());

    for step in STEPS {
        eventually(&format!("the bar at {step}%"), async || {
            bar_percents(&seen()).contains(&step).then_some(())
        })
        .await;
        open_gate(dir.path(), &id, step);
    }
    eventually("the job's end, printed above the bars", async || {
        seen().contains("job.completed").then_some(())
    })
    .await;

    let raw = screen.lock().unwrap().clone();
    assert!(
        raw.contains('\x1b'),
        "a terminal gets escape codes: {raw:?}"
    );
    let percents = bar_percents(&seen());
    assert!(
        percents.is_sorted() && STEPS.iter().all(|s| percents.contains(s)),
        "the bar moves on: {percents:?}\n{}",
        seen()
    );
    let screen_text = seen();
    let line = screen_text
        .lines()
        .find(|l| l.contains("fetch [") && l.contains("50%"))
        .unwrap();
    assert!(line.contains("fetching, step 50"), "the message: {line:?}");

    // Ctrl-C ends it cleanly.
    let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    kill_process(pid, Signal::INT).unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("tail exits after Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_a_pipe_tail_prints_plain_lines() {
    let dir = tempfile::tempdir().unwrap();
    let served = served(dir.path()).await;
    let id = served.enqueue("steps", json!({})).await;
    let mut child = tail(&served, &id, Stdio::piped(), Stdio::inherit());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output: Vec<String> = Vec::new();
    let mut steps = STEPS.iter().peekable();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // Each progress value the phase waits at shows as a line of its
            // own; then the phase is let go on.
            if let Some(&&step) = steps.peek()
                && line.contains("job.phase.progress")
                && line.contains(&format!("{step:>3}% fetching"))
            {
                open_gate(dir.path(), &id, step);
                steps.next();
            }
            let done = line.contains("job.completed");
            output.push(line);
            if done {
                return;
            }
        }
        panic!("tail ended: {output:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no job.completed in time: {output:?}"));
    child.kill().await.unwrap();

    let text = output.join("\n");
    assert!(
        !text.contains('\x1b'),
        "no escape codes in a pipe: {text:?}"
    );
    assert!(!text.contains('\r'), "no redrawn lines in a pipe: {text:?}");
    let progress: Vec<&String> = output
        .iter()
        .filter(|l| l.contains("job.phase.progress"))
        .collect();
    assert!(progress.len() >= STEPS.len(), "{text}");
    for kind in [
        "job.created",
        "job.started",
        "job.phase.started",
        "job.phase.completed",
    ] {
        assert!(text.contains(kind), "{kind} in {text}");
    }
    assert_eq!(
        served.job(&id).await["status"],
        "completed",
        "the job finished"
    );
    served.stop().await;
}
