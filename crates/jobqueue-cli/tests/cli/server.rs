//! The server without its HTTP API (which another crate serves): built from
//! a config, shut down in order, resumed at the next start, the demo
//! pipeline, and the sweep at start.
//!
//! The API is replaced by a stand-in that holds the listener until the
//! shutdown; these tests run the queue side of `jobqueue serve` in process.

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;

use futures_util::StreamExt;
use jobqueue::{EventFilter, EventType, JobId, JobQueue, JobStatus, PhaseStatus};
use jobqueue_cli::command::{Launcher, Records, records_dir};
use jobqueue_cli::config::{Config, Store};
use jobqueue_cli::server::{ApiSettings, HttpShutdown, ServeError, Server, Settings};
use rustix::process::Pid;
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::{BIN, DEADLINE, events, exited, finished, next_event, pids, spawn_and_wait};

/// Stands in for the HTTP API: holds the listener until told to stop.
async fn no_api(
    listener: TcpListener,
    _queue: JobQueue,
    _api: ApiSettings,
    stop: HttpShutdown,
) -> io::Result<()> {
    stop.await;
    drop(listener);
    Ok(())
}

fn settings(dir: &Path, text: &str) -> Settings {
    let config =
        Config::parse(&format!("listen = \"127.0.0.1:0\"\n{text}"), dir, "t.toml").unwrap();
    Settings {
        config,
        demo: false,
    }
}

fn launcher() -> Launcher {
    Launcher::with_program(BIN)
}

/// Runs `server` with the stand-in API, signals its shutdown at once, and
/// waits (with a deadline) for it to return `Ok`.
async fn shut_down(server: Server) {
    let run = server.run(no_api, std::future::ready(()));
    tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_running_commands_and_the_next_start_resumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let second = format!(
        "if [ -f go ]; then echo resumed; else {}; fi",
        spawn_and_wait(&pid_file)
    );
    let text = format!(
        "shutdown_timeout = \"200ms\"\n[store]\nsqlite = \"jobs.db\"\n[pipelines.p]\n\
         [[pipelines.p.phases]]\nname = \"one\"\ncommand = [\"sh\", \"-c\", \"echo first\"]\n\
         [[pipelines.p.phases]]\nname = \"two\"\ncommand = [\"sh\", \"-c\", {second:?}]\n"
    );
    let server = Server::start(settings(dir.path(), &text), launcher())
        .await
        .unwrap();
    let queue = server.queue().clone();
    let mut events = events(&queue);
    let job = queue.enqueue("p", &json!({})).await.unwrap();
    next_event(&mut events, job.id, |e| {
        e.event_type() == EventType::PhaseProgress
    })
    .await;
    let pids = pids(&pid_file);
    shut_down(server).await;
    for pid in pids {
        exited(pid).await;
    }
    // The database is released and the records are gone.
    assert_eq!(
        std::fs::read_dir(records_dir(&dir.path().join("jobs.db")))
            .unwrap()
            .count(),
        0
    );

    std::fs::write(dir.path().join("go"), "").unwrap();
    let server = Server::start(settings(dir.path(), &text), launcher())
        .await
        .unwrap();
    let queue = server.queue().clone();
    // Replayed from the start: the resumed run may be done already.
    let mut events = queue.subscribe_after(
        0,
        EventFilter {
            job: Some(job.id),
            types: vec![],
        },
    );
    let interrupted = next_event(&mut events, job.id, |e| {
        e.event_type() == EventType::JobInterrupted
    })
    .await;
    assert_eq!(interrupted.data.to_json()["phase"], "two");
    let job = finished(&queue, &mut events, job.id).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        job.interrupted.as_ref().map(|i| i.phase.as_str()),
        Some("two")
    );
    assert_eq!(
        job.phases[0].attempts, 1,
        "a completed phase never runs again"
    );
    assert_eq!(job.phases[0].result, Some(json!("first")));
    assert_eq!(job.phases[1].result, Some(json!("resumed")));
    shut_down(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_config_the_demo_pipeline_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".into();
    config.store = Store::Sqlite(dir.path().join("jobqueue.db"));
    let server = Server::start(Settings { config, demo: true }, launcher())
        .await
        .unwrap();
    let queue = server.queue().clone();
    let mut events = queue.subscribe(EventFilter::default());
    let job = queue
        .enqueue("demo", &json!({"seconds": 0.5}))
        .await
        .unwrap();
    let mut progress = 0;
    let done = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            match event.event_type() {
                EventType::PhaseProgress => progress += 1,
                EventType::JobCompleted => return event,
                EventType::JobFailed => panic!("{event:?}"),
                _ => {}
            }
        }
        panic!("the stream ended")
    })
    .await
    .unwrap();
    assert!(progress >= 3, "every phase reports progress ({progress})");
    assert_eq!(
        done.data.to_json()["results"],
        json!({"prepare": {"items": 10}, "process": {"processed": 10}, "finish": {"summary": "10 items processed"}})
    );
    let job = queue.get(job.id).await.unwrap().unwrap();
    assert!(
        job.phases
            .iter()
            .all(|p| p.status == PhaseStatus::Completed)
    );
    shut_down(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_sweeps_process_groups_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let mut left = std::process::Command::new("sh")
        .args(["-c", "sleep 300"])
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = i32::try_from(left.id()).unwrap();
    std::mem::forget(Records::beside(&db).record(JobId::new(), Pid::from_raw(pgid).unwrap()));
    let server = Server::start(
        settings(dir.path(), "[store]\nsqlite = \"jobs.db\"\n"),
        launcher(),
    )
    .await
    .unwrap();
    assert_eq!(left.wait().unwrap().signal(), Some(9));
    shut_down(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_database_is_refused_and_sweeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[store]\nsqlite = \"jobs.db\"\n";
    let first = Server::start(settings(dir.path(), text), launcher())
        .await
        .unwrap();
    let records = Records::beside(&dir.path().join("jobs.db"));
    let mut running_child = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let record = records.record(
        JobId::new(),
        Pid::from_raw(i32::try_from(running_child.id()).unwrap()).unwrap(),
    );
    match Server::start(settings(dir.path(), text), launcher()).await {
        Err(ServeError::Store { message, .. }) => assert!(message.contains("in use"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(
        running_child.try_wait().unwrap().is_none(),
        "the live server's command was left alone"
    );
    running_child.kill().unwrap();
    running_child.wait().unwrap();
    drop(record);
    shut_down(first).await;
}

#[tokio::test]
async fn an_unreachable_postgres_and_a_taken_address_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(
        dir.path(),
        "[store]\npostgres = \"postgres://jobs@127.0.0.1:1/jobs\"\n",
    );
    match Server::start(s, launcher()).await {
        Err(ServeError::Store { path, .. }) => assert_eq!(path, "postgres://jobs@127.0.0.1:1/jobs"),
        other => panic!("{other:?}"),
    }
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut s = settings(dir.path(), "");
    s.config.listen = taken.local_addr().unwrap().to_string();
    match Server::start(s, launcher()).await {
        Err(e @ ServeError::Listen { .. }) => assert!(
            e.to_string().starts_with("cannot listen on 127.0.0.1:"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    // Nothing was opened.
    assert!(!dir.path().join("jobqueue.db").exists());
}
