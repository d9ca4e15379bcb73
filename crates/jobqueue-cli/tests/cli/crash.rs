//! A command never outlives a crashed server: the supervisor kills the
//! command's group when its parent dies, and the records of a crashed
//! server's groups are swept.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;

use jobqueue::JobId;
use jobqueue_cli::command::Records;
use rustix::process::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{BIN, DEADLINE, alive, exited, pgid_of, pids, ppid_of};

#[tokio::test]
async fn a_server_killed_with_sigkill_takes_its_commands_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let command = format!(
        "sleep 300 & echo $! > {f}; echo $$ >> {f}; echo ready; wait",
        f = file.display()
    );
    // A stand-in for the server: a shell, in a process group of its own,
    // that starts the supervisor the way the server does (its own pid as
    // the server's) and is then killed with SIGKILL, like a crash.
    let mut server = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("\"$0\" __phase-shim $$ -- sh -c \"$1\" & wait")
        .arg(BIN)
        .arg(&command)
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));
    let pids = pids(&file);
    let supervisor = ppid_of(pids[1]);
    assert!(pids.iter().all(|p| alive(*p)));

    server.start_kill().unwrap();
    let status = server.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9));
    for pid in [pids[0], pids[1], supervisor] {
        exited(pid).await;
    }
}

#[tokio::test]
async fn the_sweep_kills_recorded_groups_that_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let records = Records::in_dir(dir.path().join("db.processes"));
    // A command left behind by a crash: a shell and its grandchild, in a
    // group of their own.
    let mut left = std::process::Command::new("sh")
        .args(["-c", "sleep 300 & echo $!; wait"])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(left.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let grandchild: i32 = line.trim().parse().unwrap();
    let pgid = i32::try_from(left.id()).unwrap();
    assert_eq!(pgid_of(grandchild), pgid);
    // The crash: the record stays behind.
    std::mem::forget(records.record(JobId::new(), Pid::from_raw(pgid).unwrap()));
    // A record of a group that is gone is removed without harm.
    std::mem::forget(records.record(JobId::new(), Pid::from_raw(i32::MAX - 1).unwrap()));

    assert_eq!(records.sweep().unwrap(), 2);
    assert_eq!(left.wait().unwrap().signal(), Some(9));
    exited(grandchild).await;
    assert_eq!(std::fs::read_dir(records.dir()).unwrap().count(), 0);
    assert_eq!(records.sweep().unwrap(), 0);
}
