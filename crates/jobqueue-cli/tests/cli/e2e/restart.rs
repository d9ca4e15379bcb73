//! The server stopped mid-phase, then started again on the same database:
//! by SIGKILL (a crash), and by SIGTERM (a shutdown). Every job completes,
//! the interrupted phase resumes, and completed phases ran exactly once.

use std::collections::BTreeSet;

use rustix::process::Signal;
use serde_json::json;

use super::{BLOCK, LOG_RUN, Server, Setup, phase};
use crate::support::exited;

/// Pipeline `p`: `a`, then `b`, which blocks until the file `go` exists,
/// then `c`; every run logged.
fn config(top: &str) -> String {
    let mut text = format!("{top}\n[pipelines.p]\n");
    text += &phase("p", "a", &format!("{LOG_RUN}; echo '\"a\"'"));
    text += &phase(
        "p",
        "b",
        &format!("{LOG_RUN}; if [ -f go ]; then echo '\"b\"'; else {BLOCK}; fi"),
    );
    text += &phase("p", "c", &format!("{LOG_RUN}; echo '\"c\"'"));
    text
}

/// Waits until phase `b` of each of `jobs` blocks, and returns the
/// processes of each: the command's grandchild, its shell, the supervisor.
async fn blocked(server: &Server, setup: &Setup, jobs: &[&String]) -> Vec<i32> {
    let mut events = server.sse("/events?types=job.phase.progress", &[]).await;
    let mut waiting: BTreeSet<&str> = jobs.iter().map(|j| j.as_str()).collect();
    while !waiting.is_empty() {
        let event = events.next().await;
        waiting.remove(event.job());
    }
    jobs.iter().flat_map(|job| setup.pids(job)).collect()
}

#[tokio::test]
async fn after_a_sigkill_every_job_completes_and_completed_phases_ran_once() {
    let setup = Setup::new(&config("concurrency = 2")).await;
    let server = setup.serve().await;
    let jobs: Vec<String> = vec![
        server
            .enqueue(json!({"pipeline": "p", "priority": 2}))
            .await,
        server
            .enqueue(json!({"pipeline": "p", "priority": 1}))
            .await,
        // Waits for a free slot: queued when the server dies.
        server.enqueue(json!({"pipeline": "p"})).await,
    ];
    let pids = blocked(&server, &setup, &[&jobs[0], &jobs[1]]).await;
    assert_eq!(server.job(&jobs[2]).await["status"], "queued");

    server.crash().await;
    // A command never outlives the server.
    for pid in pids {
        exited(pid).await;
    }

    setup.touch("go");
    let server = setup.serve().await;
    for (i, id) in jobs.iter().enumerate() {
        let history = server.history(id).await;
        let job = server.job(id).await;
        assert_eq!(job["status"], "completed", "{job}");
        let interrupted = i < 2;
        let b_runs = if interrupted { 2 } else { 1 };
        assert_eq!(
            (
                setup.runs_of(id, "a"),
                setup.runs_of(id, "b"),
                setup.runs_of(id, "c")
            ),
            (1, b_runs, 1),
            "job {i}: a and c ran once, b again only if it was cut short"
        );
        assert_eq!(job["phases"][0]["attempts"], 1);
        if interrupted {
            assert_eq!(job["interrupted"]["phase"], "b", "{job}");
            let event = history
                .iter()
                .find(|e| e.kind == "job.interrupted")
                .expect("a job.interrupted event");
            assert_eq!(event.data["data"]["phase"], "b");
            assert_eq!(job["attempt"], 2, "the crashed attempt counts");
        } else {
            assert_eq!(job["interrupted"], json!(null), "{job}");
            assert_eq!(job["attempt"], 1);
        }
    }
}

#[tokio::test]
async fn sigterm_stops_the_running_phase_exits_0_and_the_next_start_resumes_it() {
    let setup = Setup::new(&config("shutdown_timeout = \"200ms\"")).await;
    let server = setup.serve().await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;
    let pids = blocked(&server, &setup, &[&id]).await;

    server.signal(Signal::TERM);
    let (status, stderr) = server.exit().await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    for pid in pids {
        exited(pid).await;
    }

    setup.touch("go");
    let server = setup.serve().await;
    let history = server.history(&id).await;
    let job = server.job(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["interrupted"]["phase"], "b", "{job}");
    assert!(
        history.iter().any(|e| e.kind == "job.interrupted"),
        "{history:?}"
    );
    assert_eq!(
        (
            setup.runs_of(&id, "a"),
            setup.runs_of(&id, "b"),
            setup.runs_of(&id, "c")
        ),
        (1, 2, 1)
    );
    assert_eq!(job["phases"][1]["result"], "b");
}

#[tokio::test]
async fn sigterm_lets_a_running_job_finish_within_shutdown_timeout() {
    // Phase a waits for a line on the FIFO `gate`, which the test writes
    // once the shutdown has begun; then b runs, and the job completes.
    let mut text = "shutdown_timeout = \"1m\"\n[pipelines.p]\n".to_owned();
    text += &phase(
        "p",
        "a",
        &format!(
            "{LOG_RUN}; echo '::progress::10 waiting' >&2; read line < gate; echo \"\\\"$line\\\"\""
        ),
    );
    text += &phase("p", "b", &format!("{LOG_RUN}; echo '\"b\"'"));
    let setup = Setup::new(&text).await;
    let mkfifo = std::process::Command::new("mkfifo")
        .arg(setup.path("gate"))
        .status()
        .unwrap();
    assert!(mkfifo.success());
    let server = setup.serve().await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;
    server.wait_event(&id, 0, &["job.phase.progress"]).await;

    server.signal(Signal::TERM);
    server.wait_stderr("shutting down: no new jobs start").await;
    let gate = setup.path("gate");
    tokio::task::spawn_blocking(move || std::fs::write(gate, "opened\n"))
        .await
        .unwrap()
        .unwrap();
    let (status, stderr) = server.exit().await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");

    let server = setup.serve().await;
    let job = server.job(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["interrupted"], json!(null));
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["phases"][0]["result"], "opened");
    assert_eq!(job["phases"][1]["result"], "b");
    assert_eq!((setup.runs_of(&id, "a"), setup.runs_of(&id, "b")), (1, 1));
}
