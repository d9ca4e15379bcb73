//! Pausing and resuming a pipeline through the façade, on every store (and
//! on PostgreSQL when `JOBQUEUE_TEST_POSTGRES_URL` is set): a running job
//! finishes while its pipeline is paused, queued ones wait while the other
//! pipelines go on, `drain` does not wait for them, and resuming wakes the
//! pump at once (the poll interval is an hour, so nothing else would).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use jobqueue::{
    ErrorKind, EventFilter, EventType, JobQueue, JobQueueBuilder, JobStatus, PhaseError, Pipeline,
    phase_fn,
};
use jobqueue_tests::StoreKind;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::Env;
use crate::everyday::within;

/// `gated` waits for a permit of the queue's semaphore; `other` completes.
async fn start(builder: JobQueueBuilder, gate: Arc<Semaphore>) -> JobQueue {
    builder
        .state(gate)
        .poll_interval(Duration::from_secs(3600))
        .pipeline(
            Pipeline::new("gated").phase(phase_fn("wait", |ctx| async move {
                let gate = ctx.state::<Arc<Semaphore>>()?;
                let permit = gate
                    .acquire()
                    .await
                    .map_err(|e| PhaseError::permanent(e.to_string()))?;
                permit.forget();
                Ok::<_, PhaseError>(json!("through"))
            })),
        )
        .pipeline(
            Pipeline::new("other")
                .phase(phase_fn("a", |_| async { Ok::<_, PhaseError>(json!(1)) })),
        )
        .start()
        .await
        .unwrap()
}

async fn pause_holds_queued_jobs_until_resume(builder: JobQueueBuilder) {
    let gate = Arc::new(Semaphore::new(0));
    let queue = start(builder, gate.clone()).await;
    let mut started = queue.subscribe(EventFilter {
        job: None,
        types: vec![EventType::PhaseStarted],
    });
    let running = queue.enqueue("gated", &json!({})).await.unwrap();
    let first = within("the gated job starts", started.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.job_id, Some(running.id));

    assert!(queue.pause("gated").await.unwrap());
    assert!(!queue.pause("gated").await.unwrap(), "paused already");
    assert_eq!(queue.paused().await.unwrap(), ["gated"]);
    let held = queue.enqueue("gated", &json!({})).await.unwrap();
    let other = queue.enqueue("other", &json!({})).await.unwrap();
    let done = within("the other pipeline's job", queue.wait(other.id))
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed, "other pipelines go on");

    // The running job finishes while its pipeline is paused.
    gate.add_permits(10);
    let finished = within("the running job", queue.wait(running.id))
        .await
        .unwrap();
    assert_eq!(finished.status, JobStatus::Completed);
    let summary = within("drain", queue.drain()).await.unwrap();
    assert_eq!(
        summary.paused, 1,
        "drain does not wait for a paused pipeline"
    );
    let still = queue.get(held.id).await.unwrap().unwrap();
    assert_eq!((still.status, still.attempt), (JobStatus::Queued, 0));

    // Resuming wakes the pump at once (its poll interval is an hour).
    assert!(queue.resume("gated").await.unwrap());
    assert!(!queue.resume("gated").await.unwrap(), "not paused");
    let resumed = within("the held job after resume", queue.wait(held.id))
        .await
        .unwrap();
    assert_eq!(resumed.status, JobStatus::Completed);
    assert!(queue.paused().await.unwrap().is_empty());

    // One event per change, about the pipeline, not a job.
    let filter = EventFilter {
        job: None,
        types: vec![EventType::PipelinePaused, EventType::PipelineResumed],
    };
    let events = queue.store().events_after(0, filter, 10).await.unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.event_type(), e.job_id, e.pipeline.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (EventType::PipelinePaused, None, "gated"),
            (EventType::PipelineResumed, None, "gated"),
        ]
    );
    queue.shutdown().await;
}

async fn pause_refuses_a_bad_name(builder: JobQueueBuilder) {
    let queue = start(builder, Arc::new(Semaphore::new(0))).await;
    let before = queue.store().last_seq().await.unwrap();
    let err = queue.pause("").await.unwrap_err();
    assert!(
        matches!(&err, jobqueue::Error::Store(e) if e.kind() == ErrorKind::Invalid),
        "{err}"
    );
    assert_eq!(queue.store().last_seq().await.unwrap(), before);
    // A pipeline this queue does not define may be paused (another process
    // may run it).
    assert!(queue.pause("elsewhere").await.unwrap());
    queue.shutdown().await;
}

on_every_store!(
    pause_holds_queued_jobs_until_resume,
    pause_refuses_a_bad_name
);
