//! The runtime's figures through the `metrics` facade, read with a
//! `DebuggingRecorder` installed for this test's thread only (no global
//! recorder, so tests running at once do not see each other's figures).

use std::time::Duration;

use jobqueue::runtime::metrics as names;
use jobqueue::{JobQueue, JobStatus, NewJob, PhaseError, Pipeline, phase_fn};
use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;

use crate::everyday::within;

/// One snapshot (a snapshot drains the histograms, so take one).
type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// The value of `name` with exactly these labels.
fn value<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(key, _, _, _)| {
            let key = key.key();
            let mut got: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            let mut want = labels.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            key.name() == name && got == want
        })
        .map(|(_, _, _, v)| v)
}

fn counter(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(s, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn gauge(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(s, name, labels) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

fn samples(s: &Snapshot, name: &str, labels: &[(&str, &str)]) -> usize {
    match value(s, name, labels) {
        Some(DebugValue::Histogram(v)) => v.len(),
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

/// `outcome` says how the job's one phase ends: "ok", "fail" or "cancel".
fn pipeline() -> Pipeline {
    Pipeline::new("m").phase(phase_fn("work", |ctx| async move {
        match ctx.input()["outcome"].as_str() {
            Some("fail") => Err(PhaseError::permanent("told to fail")),
            Some("cancel") => Err(PhaseError::cancel_job("told to cancel")),
            _ => Ok(json!("done")),
        }
    }))
}

async fn run_jobs() -> JobQueue {
    let queue = JobQueue::builder()
        .memory()
        .poll_interval(Duration::from_millis(100))
        .pipeline(pipeline())
        .start()
        .await
        .unwrap();
    let later = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    for _ in 0..2 {
        queue
            .enqueue_job(NewJob::new("m").run_at(later))
            .await
            .unwrap();
    }
    // The pump samples the queue depth at most once per ten seconds (or
    // poll interval, if longer): the next sample, after this, sees the two
    // jobs due later.
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut ended = Vec::new();
    for outcome in ["ok", "fail", "cancel"] {
        let job = queue
            .enqueue("m", &json!({ "outcome": outcome }))
            .await
            .unwrap();
        ended.push(within("a job", queue.wait(job.id)).await.unwrap().status);
    }
    assert_eq!(
        ended,
        [
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled
        ]
    );
    queue
}

#[test]
fn the_runtime_records_outcomes_durations_depth_and_latency() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    // A current-thread runtime runs every task of the queue on this
    // thread, inside the local recorder's scope.
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let queue = run_jobs().await;
            queue.shutdown().await;
        });
    });

    let s = &snapshotter.snapshot().into_vec();
    for outcome in ["completed", "failed", "cancelled"] {
        let labels = [("pipeline", "m"), ("outcome", outcome)];
        assert_eq!(counter(s, names::JOBS_FINISHED, &labels), 1, "{outcome}");
        let labels = [("pipeline", "m"), ("phase", "work"), ("outcome", outcome)];
        assert_eq!(samples(s, names::PHASE_DURATION, &labels), 1, "{outcome}");
    }
    assert_eq!(
        samples(s, names::CLAIM_LATENCY, &[("pipeline", "m")]),
        3,
        "one per claimed job"
    );
    assert_eq!(gauge(s, names::QUEUE_DEPTH, &[("pipeline", "m")]), 2.0);
    assert_eq!(gauge(s, names::JOBS_RUNNING, &[]), 0.0);
}
