//! Command phases with real processes (`sh -c`): input, environment,
//! results, progress, exit codes, the error tail, limits, and the process
//! group ended by a timeout or a cancel.

use std::time::Duration;

use jobqueue::{
    EventType, Job, JobId, JobQueue, JobStatus, PhaseStatus, Pipeline, Progress, Subscription,
};
use serde_json::json;

use jobqueue_cli::command::{CommandPhase, TAIL};

use crate::support::{
    alive, events, exited, finished, launcher, next_event, pgid_of, pids, queue, quick_retry, run,
    run_one, sh, spawn_and_wait,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_input_and_environment_pass_from_phase_to_phase() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new("p")
        .phase(sh("a", "cat > in_a.json; echo '{\"n\": 1}'").workdir(dir.path()))
        .phase(
            sh(
                "b",
                "cat > in_b.json; echo \"$JOBQUEUE_PHASE $JOBQUEUE_PHASE_INDEX $JOBQUEUE_ATTEMPT $JOBQUEUE_PIPELINE $JOBQUEUE_JOB_ID $REGION\"",
            )
            .workdir(dir.path())
            .env([("REGION".to_owned(), "eu".to_owned())]),
        )
        .phase(sh("c", "printf '  \\n'"));
    let queue = queue(vec![pipeline]).await;
    let job = run(&queue, "p", json!({"x": [1, 2]})).await;
    assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    let id = job.id.to_string();
    assert_eq!(job.phases[0].result, Some(json!({"n": 1})));
    assert_eq!(
        job.phases[1].result,
        Some(json!(format!("b 1 1 p {id} eu")))
    );
    assert_eq!(job.phases[2].result, Some(json!(null)));
    let stdin_a: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("in_a.json")).unwrap()).unwrap();
    assert_eq!(
        stdin_a,
        json!({"job_id": id, "pipeline": "p", "phase": "a", "attempt": 1, "input": {"x": [1, 2]}, "results": {}})
    );
    let stdin_b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("in_b.json")).unwrap()).unwrap();
    assert_eq!(stdin_b["phase"], "b");
    assert_eq!(stdin_b["results"], json!({"a": {"n": 1}}));
    queue.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_become_progress_and_other_lines_do_not() {
    let pipeline = Pipeline::new("p").phase(sh(
        "work",
        "echo '::progress::30 fetching' >&2; echo 'plain line' >&2; echo '::progress::abc' >&2; \
         echo '::progress::75.4 almost there' >&2; echo done",
    ));
    let queue = queue(vec![pipeline]).await;
    let mut events = events(&queue);
    let job = queue.enqueue("p", &json!({})).await.unwrap();
    let progress = next_event(&mut events, job.id, |e| {
        e.event_type() == EventType::PhaseProgress
    })
    .await;
    assert_eq!(
        progress.data.to_json(),
        json!({"phase": "work", "percent": 75, "message": "almost there"})
    );
    let job = finished(&queue, &mut events, job.id).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        job.phases[0].progress,
        Some(Progress::new(75, Some("almost there".into())))
    );
    assert_eq!(job.phases[0].result, Some(json!("done")));
    queue.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_100_fails_for_good_with_the_stderr_as_error() {
    let job = run_one(sh("check", "echo 'the input is bad' >&2; exit 100"), 3).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempt, 1, "exit 100 is not retried");
    let error = job.error.unwrap();
    assert_eq!(error.phase.as_deref(), Some("check"));
    assert_eq!(
        error.message,
        "the command exited with status 100: the input is bad"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_1_is_retried_and_the_retry_succeeds() {
    let pipeline = Pipeline::new("p").retry(quick_retry(3)).phase(sh(
        "flaky",
        "if [ \"$JOBQUEUE_ATTEMPT\" = 1 ]; then echo 'network blip' >&2; exit 1; fi; echo ok",
    ));
    let queue = queue(vec![pipeline]).await;
    let mut events = events(&queue);
    let job = queue.enqueue("p", &json!({})).await.unwrap();
    let failed = next_event(&mut events, job.id, |e| {
        e.event_type() == EventType::PhaseFailed
    })
    .await;
    let data = failed.data.to_json();
    assert_eq!(
        data["error"],
        "the command exited with status 1: network blip"
    );
    assert!(data["retry_at"].is_string(), "{data}");
    let job = finished(&queue, &mut events, job.id).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.attempt, 2);
    assert_eq!(job.phases[0].result, Some(json!("ok")));
    queue.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_keeps_only_the_last_4_kib_of_stderr() {
    // 20,000 lines (about 200 KiB) of stderr, then a failure.
    let script =
        "i=0; while [ $i -lt 20000 ]; do echo \"line $i of the log\"; i=$((i+1)); done >&2; exit 3";
    let message = run_one(sh("noisy", script), 1).await.error.unwrap().message;
    let prefix = "the command exited with status 3: ";
    assert!(message.starts_with(prefix), "{message}");
    let tail = &message[prefix.len()..];
    assert!(tail.len() <= TAIL, "{}", tail.len());
    assert!(tail.len() > TAIL - 40, "{}", tail.len());
    assert!(tail.ends_with("line 19999 of the log"), "{tail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_stderr_without_newlines_stays_bounded() {
    // 32 MiB on one line: cut into bounded pieces, and only the tail kept.
    let script = "head -c 33554432 /dev/zero | tr '\\0' 'x' >&2; echo ' the end' >&2; exit 1";
    let message = run_one(sh("flood", script), 1).await.error.unwrap().message;
    assert!(message.len() < TAIL + 100, "{}", message.len());
    // The line was cut into pieces of MAX_LINE; 32 MiB is a multiple of it,
    // so the end is a piece of its own.
    let end = &message[message.len() - 20..];
    assert!(end.ends_with("xxx\n the end"), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_past_its_limit_stops_the_command_and_fails_for_good() {
    // `yes` never ends on its own: only the limit stops it.
    let job = run_one(sh("endless", "yes").stdout_limit(64 * 1024), 3).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.attempt, 1, "too much output is not retried");
    assert_eq!(
        job.error.unwrap().message,
        "the command wrote more than 64 KiB to stdout, the limit of a result; it was stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_does_not_exist_fails_clearly() {
    let missing = CommandPhase::new("missing", vec!["/nonexistent/program".into()], launcher());
    let message = run_one(missing, 1).await.error.unwrap().message;
    let expected = "the command exited with status 127: jobqueue: cannot run /nonexistent/program";
    assert!(message.starts_with(expected), "{message}");
}

/// A job whose one phase is a shell that started a grandchild and waits.
struct Started {
    queue: JobQueue,
    events: Subscription,
    job: JobId,
    /// The grandchild (`sleep`), the shell, and the supervisor.
    processes: [i32; 3],
    _dir: tempfile::TempDir,
}

/// Starts a job of the pipeline that `pipeline` makes around the shell
/// script it is given; returns once the script runs.
async fn start(pipeline: impl FnOnce(String) -> Pipeline) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pids");
    let queue = queue(vec![pipeline(spawn_and_wait(&file))]).await;
    let mut events = events(&queue);
    let job = queue.enqueue("p", &json!({})).await.unwrap().id;
    next_event(&mut events, job, |e| {
        e.event_type() == EventType::PhaseProgress
    })
    .await;
    let pids = pids(&file);
    let processes = [pids[0], pids[1], pgid_of(pids[1])];
    assert!(processes.iter().all(|p| alive(*p)));
    Started {
        queue,
        events,
        job,
        processes,
        _dir: dir,
    }
}

impl Started {
    /// Waits for the job to end with `status`, then for every process of
    /// its command to be gone.
    async fn ends_as(mut self, status: JobStatus) -> Job {
        let job = finished(&self.queue, &mut self.events, self.job).await;
        assert_eq!(job.status, status, "{job:?}");
        for pid in self.processes {
            exited(pid).await;
        }
        self.queue.shutdown().await;
        job
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_ends_the_whole_process_group() {
    let started = start(|script| {
        Pipeline::new("p")
            .retry(quick_retry(1))
            .phase_with_timeout(sh("slow", &script), Duration::from_secs(4))
    })
    .await;
    let job = started.ends_as(JobStatus::Failed).await;
    assert!(job.error.unwrap().message.contains("timed out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_the_whole_process_group() {
    let started = start(|script| Pipeline::new("p").phase(sh("slow", &script))).await;
    started.queue.cancel(started.job).await.unwrap();
    let job = started.ends_as(JobStatus::Cancelled).await;
    assert_eq!(job.phases[0].status, PhaseStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_ignores_sigterm_is_killed_after_its_grace() {
    // An ignored signal stays ignored in the children too.
    let started = start(|script| {
        let stubborn = sh("stubborn", &format!("trap '' TERM; {script}"));
        Pipeline::new("p").phase(stubborn.kill_grace(Duration::from_millis(300)))
    })
    .await;
    started.queue.cancel(started.job).await.unwrap();
    started.ends_as(JobStatus::Cancelled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_command_leaves_running_in_its_group_is_killed_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pid");
    // The background sleep would keep stdout open for five minutes.
    let script = format!("sleep 300 & echo $! > {}; echo finished", file.display());
    let pipeline = Pipeline::new("p").phase(sh("leaky", &script));
    let queue = queue(vec![pipeline]).await;
    let job = run(&queue, "p", json!({})).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.phases[0].result, Some(json!("finished")));
    exited(pids(&file)[0]).await;
    queue.shutdown().await;
}
