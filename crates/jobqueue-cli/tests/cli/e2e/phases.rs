//! Command phases through the real server: results passed from phase to
//! phase, progress, automatic retry at the failed phase, exit 100, a phase
//! timeout, and manual retries over HTTP and with `jobqueue retry`.

use hyper::Method;
use serde_json::json;

use super::{BLOCK, LOG_RUN, Setup, jobqueue, kinds, phase, text_of};
use crate::support::exited;

/// A pipeline whose phases exercise everything a command gets and gives:
/// a JSON result with progress, a phase that computes from an earlier
/// result read on its stdin, one that echoes its whole stdin, one that
/// prints its environment, plain text, and nothing.
#[tokio::test]
async fn results_pass_from_phase_to_phase_through_stdin() {
    let mut text = "[pipelines.p]\n".to_owned();
    text += &phase(
        "p",
        "one",
        &format!("{LOG_RUN}; echo '::progress::50 halfway' >&2; echo '{{\"n\": 41}}'"),
    );
    // stdin is compact JSON: read results.one.n from it.
    text += &phase(
        "p",
        "two",
        &format!(
            "{LOG_RUN}; n=$(sed -n 's/.*\"one\":{{\"n\":\\([0-9]*\\)}}.*/\\1/p'); echo \"{{\\\"next\\\": $((n + 1))}}\""
        ),
    );
    text += &phase("p", "three", &format!("{LOG_RUN}; cat"));
    text += &phase(
        "p",
        "four",
        &format!(
            "{LOG_RUN}; printf '{{\"job\": \"%s\", \"pipeline\": \"%s\", \"phase\": \"%s\", \"index\": %s, \"attempt\": %s, \"region\": \"%s\"}}' \
             \"$JOBQUEUE_JOB_ID\" \"$JOBQUEUE_PIPELINE\" \"$JOBQUEUE_PHASE\" \"$JOBQUEUE_PHASE_INDEX\" \"$JOBQUEUE_ATTEMPT\" \"$REGION\""
        ),
    );
    text += "env = { REGION = \"eu\" }\n";
    text += &phase("p", "five", &format!("{LOG_RUN}; echo '  plain text  '"));
    text += &phase("p", "six", LOG_RUN);
    let setup = Setup::new(&text).await;
    let server = setup.serve().await;

    let id = server
        .enqueue(json!({"pipeline": "p", "input": {"ref": "main"}}))
        .await;
    let history = server.history(&id).await;
    let job = server.job(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["error"], json!(null));
    let results: Vec<_> = job["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["status"], "completed", "{p}");
            assert_eq!(p["attempts"], 1, "{p}");
            p["result"].clone()
        })
        .collect();
    assert_eq!(results[0], json!({"n": 41}));
    assert_eq!(results[1], json!({"next": 42}), "two read one's result");
    assert_eq!(
        results[2],
        json!({"job_id": id, "pipeline": "p", "phase": "three", "attempt": 1,
               "input": {"ref": "main"}, "results": {"one": {"n": 41}, "two": {"next": 42}}}),
        "the whole stdin of phase three"
    );
    assert_eq!(
        results[3],
        json!({"job": id, "pipeline": "p", "phase": "four", "index": 3, "attempt": 1, "region": "eu"})
    );
    assert_eq!(results[4], json!("plain text"));
    assert_eq!(results[5], json!(null));

    // The events, in order, with the progress of phase one.
    let progress: Vec<_> = history
        .iter()
        .filter(|e| e.kind == "job.phase.progress")
        .collect();
    assert_eq!(
        progress.last().unwrap().data["data"],
        json!({"phase": "one", "percent": 50, "message": "halfway"})
    );
    let without_progress: Vec<_> = kinds(&history)
        .into_iter()
        .filter(|k| *k != "job.phase.progress")
        .collect();
    let mut expected = vec!["job.created", "job.started"];
    for _ in 0..6 {
        expected.extend(["job.phase.started", "job.phase.completed"]);
    }
    expected.push("job.completed");
    assert_eq!(without_progress, expected);
    assert_eq!(
        history.last().unwrap().data["data"]["results"],
        json!({"one": results[0], "two": results[1], "three": results[2],
               "four": results[3], "five": results[4], "six": results[5]})
    );
    for name in ["one", "two", "three", "four", "five", "six"] {
        assert_eq!(setup.runs_of(&id, name), 1, "{name}");
    }
}

/// A pipeline `p` of phases `a`, `b` (running `b_script`) and `c`, each
/// logging its runs; retries come after 10 ms.
fn abc(b_script: &str) -> String {
    let mut text =
        "[pipelines.p]\nmax_attempts = 3\nbackoff_initial = \"10ms\"\nbackoff_max = \"10ms\"\n"
            .to_owned();
    text += &phase("p", "a", &format!("{LOG_RUN}; echo '\"a\"'"));
    text += &phase("p", "b", &format!("{LOG_RUN}; {b_script}"));
    text += &phase("p", "c", &format!("{LOG_RUN}; echo '\"c\"'"));
    text
}

#[tokio::test]
async fn a_failed_attempt_is_retried_at_the_failed_phase() {
    let setup = Setup::new(&abc(
        "if [ \"$JOBQUEUE_ATTEMPT\" = 1 ]; then echo 'flaky' >&2; exit 3; fi; echo '\"b\"'",
    ))
    .await;
    let server = setup.serve().await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;
    let history = server.history(&id).await;
    let job = server.job(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempt"], 2);
    let attempts: Vec<_> = job["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 1]);
    assert_eq!(job["phases"][1]["result"], "b");
    assert_eq!(
        (
            setup.runs_of(&id, "a"),
            setup.runs_of(&id, "b"),
            setup.runs_of(&id, "c")
        ),
        (1, 2, 1),
        "a completed phase is not run again"
    );

    let failed = history
        .iter()
        .find(|e| e.kind == "job.phase.failed")
        .unwrap();
    let data = &failed.data["data"];
    assert_eq!((&data["phase"], &data["index"]), (&json!("b"), &json!(1)));
    assert!(data["retry_at"].is_string(), "a retry follows: {data}");
    let error = data["error"].as_str().unwrap();
    assert!(
        error.contains("status 3") && error.contains("flaky"),
        "{error}"
    );
    let started: Vec<_> = history
        .iter()
        .filter(|e| e.kind == "job.started")
        .map(|e| e.data["data"]["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(started, [1, 2]);
    // The second attempt starts at b.
    let phases_after_retry: Vec<_> = history
        .iter()
        .skip_while(|e| e.kind != "job.phase.failed")
        .filter(|e| e.kind == "job.phase.started")
        .map(|e| e.data["data"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases_after_retry, ["b", "c"]);
}

#[tokio::test]
async fn exit_100_fails_the_job_at_once() {
    let setup = Setup::new(&abc("echo 'no such input' >&2; exit 100")).await;
    let server = setup.serve().await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;
    let history = server.history(&id).await;
    let job = server.job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        (&job["attempt"], &job["max_attempts"]),
        (&json!(1), &json!(3))
    );
    assert_eq!(job["error"]["phase"], "b");
    assert_eq!(job["error"]["attempt"], 1);
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("100") && message.contains("no such input"),
        "{message}"
    );
    let statuses: Vec<_> = job["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["completed", "failed", "pending"]);
    let failed = history
        .iter()
        .find(|e| e.kind == "job.phase.failed")
        .unwrap();
    assert_eq!(failed.data["data"]["retry_at"], json!(null), "no retry");
    assert_eq!(history.last().unwrap().kind, "job.failed");
    assert_eq!(history.last().unwrap().data["data"]["error"], job["error"]);
    assert_eq!((setup.runs_of(&id, "b"), setup.runs_of(&id, "c")), (1, 0));
}

#[tokio::test]
async fn a_manual_retry_resumes_at_the_first_phase_not_completed() {
    // b fails for good until the file ok-<job> exists.
    let setup = Setup::new(&abc(
        "[ -f ok-$JOBQUEUE_JOB_ID ] || { echo 'not yet' >&2; exit 100; }; echo '\"b\"'",
    ))
    .await;
    let server = setup.serve().await;
    let by_http = server.enqueue(json!({"pipeline": "p"})).await;
    let by_cli = server.enqueue(json!({"pipeline": "p"})).await;
    for id in [&by_http, &by_cli] {
        assert_eq!(server.finished(id).await["status"], "failed");
    }
    let failed_at = |history: &[super::Event]| history.last().unwrap().seq;
    let http_failed = failed_at(&server.history(&by_http).await);
    let cli_failed = failed_at(&server.history(&by_cli).await);

    // Over HTTP.
    setup.touch(&format!("ok-{by_http}"));
    let reply = server
        .call(Method::POST, &format!("/jobs/{by_http}/retry"), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "queued");
    let retried = server
        .wait_event(&by_http, http_failed, &["job.retried"])
        .await;
    assert_eq!(retried.data["data"], json!({"from_phase": "b"}));
    let job = server.finished_after(&by_http, http_failed).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["phases"][0]["attempts"], 1);

    // With the client command.
    setup.touch(&format!("ok-{by_cli}"));
    let out = jobqueue(&["retry", &by_cli, "--url", &server.url()], &[]).await;
    assert!(out.status.success(), "{}", text_of(&out.stderr));
    assert_eq!(
        text_of(&out.stdout),
        format!("job {by_cli} queued again; it resumes at phase b\n")
    );
    let job = server.finished_after(&by_cli, cli_failed).await;
    assert_eq!(job["status"], "completed", "{job}");

    for id in [&by_http, &by_cli] {
        assert_eq!(
            (
                setup.runs_of(id, "a"),
                setup.runs_of(id, "b"),
                setup.runs_of(id, "c")
            ),
            (1, 2, 1),
            "job {id}: a ran once, b twice, c once"
        );
    }
}

#[tokio::test]
async fn a_phase_timeout_ends_its_process_group_and_the_job_is_retried() {
    // The first attempt blocks for ever: only the phase's timeout ends it.
    let mut text = "[pipelines.p]\nbackoff_initial = \"10ms\"\nbackoff_max = \"10ms\"\n".to_owned();
    text += &phase(
        "p",
        "a",
        &format!("{LOG_RUN}; if [ \"$JOBQUEUE_ATTEMPT\" = 1 ]; then {BLOCK}; fi; echo '\"a\"'"),
    );
    text += "timeout = \"1s\"\n";
    let setup = Setup::new(&text).await;
    let server = setup.serve().await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;

    let history = server.history(&id).await;
    let job = server.job(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempt"], 2);
    assert_eq!(
        kinds(&history)[..5],
        [
            "job.created",
            "job.started",
            "job.phase.started",
            "job.phase.progress",
            "job.phase.failed"
        ],
        "the first run blocked, then timed out"
    );
    let failed = &history[4].data["data"];
    assert!(failed["retry_at"].is_string(), "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("timed out after 1s"), "{error}");
    // The blocked run's grandchild, shell and supervisor are all gone.
    for pid in setup.pids(&id) {
        exited(pid).await;
    }
    assert_eq!(setup.runs_of(&id, "a"), 2);
}

/// `/metrics` shows the runtime's own figures (`jobqueue_runtime_...`, which
/// it records through the `metrics` facade) beside the server's, in the
/// Prometheus text format; the OpenMetrics form keeps to the server's.
#[tokio::test]
async fn metrics_show_the_runtimes_own_figures() {
    let setup = Setup::new(&abc("echo '\"b\"'")).await;
    let server = setup.serve().await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;
    assert_eq!(server.finished(&id).await["status"], "completed");
    // The runtime counts the job once the store has it completed, which the
    // client may see first: ask until the count is there.
    let finished = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("jobqueue_runtime_jobs_finished_total{")
                && l.contains("pipeline=\"p\"")
                && l.contains("outcome=\"completed\"")
                && l.ends_with(" 1")
        })
    };
    let text = tokio::time::timeout(crate::support::DEADLINE, async {
        loop {
            let reply = server.get("/metrics").await;
            assert_eq!(reply.status, 200);
            let text = reply.text();
            if finished(&text) {
                return text;
            }
        }
    })
    .await
    .expect("the runtime's count of finished jobs reached /metrics");
    for name in [
        "jobqueue_runtime_phase_duration_seconds",
        "jobqueue_runtime_claim_latency_seconds",
        "jobqueue_jobs_completed_total",
    ] {
        assert!(text.contains(name), "{name}:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(line.starts_with("jobqueue_"), "{line}");
    }
    let open = server
        .raw(
            Method::GET,
            "/metrics",
            &[("accept", "application/openmetrics-text; version=1.0.0")],
            None,
        )
        .await;
    let open = super::Reply::read(open).await;
    assert_eq!(open.status, 200);
    assert!(
        !open.text().contains("jobqueue_runtime_"),
        "{}",
        open.text()
    );
}
