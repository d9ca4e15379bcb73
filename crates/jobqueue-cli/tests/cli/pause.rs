//! `jobqueue pipelines`, `pause` and `resume` against the real server: a
//! job of a paused pipeline waits in the queue, and runs once the pipeline
//! is resumed.

use std::process::Output;

use serde_json::json;

use crate::served::{Served, eventually, pipelines};
use crate::support::{BIN, DEADLINE};

async fn jobqueue(served: &Served, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(BIN)
        .args(args)
        .args(["--url", &served.url])
        .env_remove("JOBQUEUE_URL")
        .env_remove("JOBQUEUE_TOKEN")
        .output();
    let out = tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_pipeline_holds_its_jobs_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("[store]\nsqlite = \"jobs.db\"\n{}", pipelines(dir.path()));
    let served = Served::start(dir.path(), &config, "127.0.0.1:0").await;

    let out = jobqueue(&served, &["pause", "echo"]).await;
    assert_eq!(
        text(&out),
        "pipeline echo paused: its queued jobs wait until it is resumed\n"
    );
    let out = jobqueue(&served, &["pause", "echo"]).await;
    assert_eq!(text(&out), "pipeline echo was paused already\n");
    let listed = text(&jobqueue(&served, &["pipelines"]).await);
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().eq(["echo", "paused"])),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().eq(["steps", "running"])),
        "{listed}"
    );

    // Enqueued while paused: it stays queued. The pause is in the store,
    // so it holds across a restart too.
    let id = served.enqueue("echo", json!({"n": 1})).await;
    let served = served.restart(async || {}).await;
    assert_eq!(served.job(&id).await["status"], "queued");
    let listed = text(&jobqueue(&served, &["pipelines", "--json"]).await);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert!(
        listed["pipelines"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "echo", "paused": true})),
        "{listed}"
    );

    let out = jobqueue(&served, &["resume", "echo"]).await;
    assert_eq!(text(&out), "pipeline echo resumed\n");
    eventually("the job to complete once resumed", async || {
        (served.job(&id).await["status"] == "completed").then_some(())
    })
    .await;
    let out = jobqueue(&served, &["resume", "echo"]).await;
    assert_eq!(text(&out), "pipeline echo was not paused\n");
    served.stop().await;
}
