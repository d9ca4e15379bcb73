//! `[[schedules]]` in a served config: the real `jobqueue serve` enqueues
//! each tick as a job of the schedule's pipeline, with its input and the
//! tick's unique key.

use serde_json::{Value, json};

use crate::served::{Served, eventually, pipelines};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_schedules_of_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[store]\nsqlite = \"jobs.db\"\n{}\n[[schedules]]\nname = \"beat\"\npipeline = \"echo\"\nevery = \"1s\"\ninput = {{ n = 1 }}\n",
        pipelines(dir.path())
    );
    let served = Served::start(dir.path(), &config, "127.0.0.1:0").await;
    let client = served.client();
    let done: Value = eventually("a completed tick of the schedule", async || {
        let page = client
            .call(
                hyper::Method::GET,
                "/jobs?status=completed&pipeline=echo",
                None,
            )
            .await
            .ok()?;
        page.body["jobs"].as_array()?.first().cloned()
    })
    .await;
    let key = done["unique_key"].as_str().unwrap();
    assert!(key.starts_with("schedule:beat:"), "{key}");
    assert_eq!(done["input"], json!({"n": 1}));
    // The tick's job is due at its tick, the one in its key.
    assert_eq!(
        key.strip_prefix("schedule:beat:"),
        done["run_at"].as_str(),
        "{done}"
    );
    served.stop().await;
}
