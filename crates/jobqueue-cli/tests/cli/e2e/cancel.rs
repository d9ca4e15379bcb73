//! Cancelling through the real server: a running command's whole process
//! group is ended, a queued job is cancelled at once, a finished one cannot
//! be, and a cancelled job retried resumes where it stopped.

use hyper::Method;
use serde_json::json;

use super::{BLOCK, LOG_RUN, Setup, phase};
use crate::support::{alive, exited, pgid_of};

#[tokio::test]
async fn cancelling_a_running_command_ends_its_process_group() {
    let mut text = "[pipelines.p]\n".to_owned();
    text += &phase("p", "a", &format!("{LOG_RUN}; echo '\"a\"'"));
    // b blocks until it is resumed (the file resume-<job> exists).
    text += &phase(
        "p",
        "b",
        &format!(
            "{LOG_RUN}; if [ -f resume-$JOBQUEUE_JOB_ID ]; then echo '\"b\"'; else {BLOCK}; fi"
        ),
    );
    text += &phase("p", "c", &format!("{LOG_RUN}; echo '\"c\"'"));
    let setup = Setup::new(&text).await;
    let server = setup.serve().await;

    let id = server.enqueue(json!({"pipeline": "p"})).await;
    let progress = server.wait_event(&id, 0, &["job.phase.progress"]).await;
    assert_eq!(progress.data["data"]["phase"], "b");
    // The grandchild, the shell, and the supervisor that leads their group.
    let group = setup.pids(&id);
    assert!(group.iter().all(|p| alive(*p)), "{group:?}");
    assert!(
        group.iter().all(|p| pgid_of(*p) == group[2]),
        "one process group, led by the supervisor"
    );

    let reply = server
        .call(Method::POST, &format!("/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let stopping = reply.json();
    assert_eq!(stopping["status"], "running");
    assert_eq!(stopping["cancel_requested"], true);

    let cancelled = server
        .wait_event(&id, progress.seq, &["job.cancelled"])
        .await;
    assert_eq!(cancelled.data["data"], json!({}));
    for pid in group {
        exited(pid).await;
        assert!(!alive(pid), "process {pid} survived the cancel");
    }
    let job = server.job(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let statuses: Vec<_> = job["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["completed", "cancelled", "pending"]);

    // A finished job cannot be cancelled.
    server
        .call(Method::POST, &format!("/jobs/{id}/cancel"), None)
        .await
        .assert_error(409, "conflict");

    // Retried, it resumes at b.
    setup.touch(&format!("resume-{id}"));
    let reply = server
        .call(Method::POST, &format!("/jobs/{id}/retry"), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let job = server.finished_after(&id, cancelled.seq).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        (
            setup.runs_of(&id, "a"),
            setup.runs_of(&id, "b"),
            setup.runs_of(&id, "c")
        ),
        (1, 2, 1)
    );
}

#[tokio::test]
async fn a_queued_job_is_cancelled_at_once() {
    let setup = Setup::new(&format!("[pipelines.p]\n{}", phase("p", "a", LOG_RUN))).await;
    let server = setup.serve().await;
    let id = server
        .enqueue(json!({"pipeline": "p", "run_at": "2999-01-01T00:00:00Z"}))
        .await;
    let reply = server
        .call(Method::POST, &format!("/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "cancelled");
    let history = server.history(&id).await;
    assert_eq!(
        super::kinds(&history),
        ["job.created", "job.cancelled"],
        "it never started"
    );
    assert!(setup.runs().is_empty());
}
