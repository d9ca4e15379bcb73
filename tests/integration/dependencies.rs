//! Dependencies between jobs through the façade, on every store (and on
//! PostgreSQL when `JOBQUEUE_TEST_POSTGRES_URL` is set): a gate that runs
//! `publish` only after `verify` completed, started at once (the poll
//! interval is an hour), and the cancel or fail of the jobs waiting for a
//! dependency that failed, with events that say why.

use std::time::Duration;

use jobqueue::{
    DependencyFailure, ErrorKind, EventData, EventFilter, EventType, Job, JobId, JobQueue,
    JobQueueBuilder, JobStatus, NewJob, PhaseError, Pipeline, phase_fn,
};
use jobqueue_tests::StoreKind;
use serde_json::json;

use crate::Env;
use crate::everyday::{on_every_store, within};

/// `verify` fails for good when its input says so; `publish` completes.
fn pipelines(builder: JobQueueBuilder) -> JobQueueBuilder {
    builder
        .pipeline(
            Pipeline::new("verify").phase(phase_fn("check", |ctx| async move {
                if ctx.input()["fail"] == json!(true) {
                    return Err(PhaseError::permanent("checksum mismatch"));
                }
                Ok::<_, PhaseError>(json!("verified"))
            })),
        )
        .pipeline(
            Pipeline::new("publish").phase(phase_fn("upload", |_| async {
                Ok::<_, PhaseError>(json!("up"))
            })),
        )
}

/// Every event of job `id`, oldest first.
async fn events_of(queue: &JobQueue, id: JobId) -> Vec<jobqueue::Event> {
    let filter = EventFilter {
        job: Some(id),
        types: vec![],
    };
    queue.store().events_after(0, filter, 1000).await.unwrap()
}

/// The sequence number of the first event of `ty` about job `id`.
async fn seq_of(queue: &JobQueue, id: JobId, ty: EventType) -> u64 {
    events_of(queue, id)
        .await
        .iter()
        .find(|e| e.event_type() == ty)
        .unwrap_or_else(|| panic!("job {id} has no {ty} event"))
        .seq
}

async fn wait(queue: &JobQueue, job: &Job) -> Job {
    within("the job ends", queue.wait(job.id)).await.unwrap()
}

async fn publish_runs_after_verify(builder: JobQueueBuilder) {
    // An hour between polls: only a wake-up can start `publish` in time.
    let queue = pipelines(builder.poll_interval(Duration::from_secs(3600)))
        .start()
        .await
        .unwrap();
    let verify = queue.enqueue("verify", &json!({})).await.unwrap();
    let other = queue.enqueue("verify", &json!({})).await.unwrap();
    let publish = queue
        .enqueue_job(NewJob::new("publish").depends_on([verify.id, other.id, verify.id]))
        .await
        .unwrap();
    assert_eq!(publish.status, JobStatus::Queued);
    let done = wait(&queue, &publish).await;
    assert_eq!(done.status, JobStatus::Completed);
    let started = seq_of(&queue, publish.id, EventType::JobStarted).await;
    for dep in [verify.id, other.id] {
        let completed = seq_of(&queue, dep, EventType::JobCompleted).await;
        assert!(completed < started, "publish started after {dep} completed");
    }

    // A batch may depend on jobs that exist; a completed one is met.
    let jobs = queue
        .enqueue_batch(vec![
            NewJob::new("publish").depends_on([verify.id]),
            NewJob::new("publish").depends_on([publish.id]),
        ])
        .await
        .unwrap();
    for job in &jobs {
        assert_eq!(wait(&queue, job).await.status, JobStatus::Completed);
    }
    queue.shutdown().await;
}

async fn a_failed_dependency_ends_its_dependents(builder: JobQueueBuilder) {
    let queue = pipelines(builder).start().await.unwrap();
    // Its dependents are enqueued while it waits for its own dependency.
    let gate = queue
        .enqueue_job(
            NewJob::new("verify")
                .run_at(time::OffsetDateTime::now_utc() + Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let verify = queue
        .enqueue_job(
            NewJob::new("verify")
                .input(json!({"fail": true}))
                .max_attempts(1)
                .depends_on([gate.id]),
        )
        .await
        .unwrap();
    let cancelled = queue
        .enqueue_job(NewJob::new("publish").depends_on([verify.id]))
        .await
        .unwrap();
    let then = queue
        .enqueue_job(NewJob::new("publish").depends_on([cancelled.id]))
        .await
        .unwrap();
    let failed = queue
        .enqueue_job(
            NewJob::new("publish")
                .depends_on([verify.id])
                .on_dependency_failure(DependencyFailure::Fail),
        )
        .await
        .unwrap();
    // Cancelling the gate is what lets nothing run: verify is cancelled
    // in turn, and everything after it.
    queue.cancel(gate.id).await.unwrap();
    let verify_now = wait(&queue, &verify).await;
    assert_eq!(verify_now.status, JobStatus::Cancelled);
    let reason = |dep: JobId, how: &str| EventData::Cancelled {
        reason: Some(format!("dependency {dep} {how}")),
    };
    let last = |events: Vec<jobqueue::Event>| events.last().unwrap().data.clone();
    assert_eq!(
        last(events_of(&queue, verify.id).await),
        reason(gate.id, "was cancelled")
    );
    assert_eq!(wait(&queue, &cancelled).await.status, JobStatus::Cancelled);
    assert_eq!(
        last(events_of(&queue, then.id).await),
        reason(cancelled.id, "was cancelled")
    );
    let failed_now = wait(&queue, &failed).await;
    assert_eq!(failed_now.status, JobStatus::Failed);
    let message = &failed_now.error.as_ref().unwrap().message;
    assert_eq!(*message, format!("dependency {} was cancelled", verify.id));
    for job in [&verify, &cancelled, &then, &failed] {
        let types: Vec<EventType> = events_of(&queue, job.id)
            .await
            .iter()
            .map(jobqueue::Event::event_type)
            .collect();
        assert!(
            !types.contains(&EventType::JobStarted),
            "{} never ran",
            job.id
        );
    }

    // A dependency that runs and fails cancels its dependents the same way.
    let bad = queue
        .enqueue_job(
            NewJob::new("verify")
                .input(json!({"fail": true}))
                .max_attempts(1),
        )
        .await
        .unwrap();
    let after_bad = queue
        .enqueue_job(NewJob::new("publish").depends_on([bad.id]))
        .await
        .unwrap();
    assert_eq!(wait(&queue, &bad).await.status, JobStatus::Failed);
    assert_eq!(wait(&queue, &after_bad).await.status, JobStatus::Cancelled);
    assert_eq!(
        last(events_of(&queue, after_bad.id).await),
        reason(bad.id, "failed")
    );

    // Unknown and ended dependencies are refused, and nothing is written.
    let before = queue.counts().await.unwrap();
    for dep in [JobId::new(), bad.id, after_bad.id] {
        let err = queue
            .enqueue_job(NewJob::new("publish").depends_on([dep]))
            .await
            .unwrap_err();
        match err {
            jobqueue::Error::Store(e) => {
                assert_eq!(e.kind(), ErrorKind::Invalid);
                assert!(e.to_string().contains(&dep.to_string()), "{e}");
            }
            other => panic!("expected a store error, got {other:?}"),
        }
    }
    assert_eq!(queue.counts().await.unwrap(), before);
    queue.shutdown().await;
}

on_every_store!(
    publish_runs_after_verify,
    a_failed_dependency_ends_its_dependents
);

/// On PostgreSQL the process that completes a dependency may not run its
/// dependents: the commit notifies every process, and the one that runs
/// `publish` starts it at once, though it polls only every hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wakes_the_process_that_runs_the_dependent() {
    crate::postgres::in_schema("jq_deps", |url| async move {
        let hour = Duration::from_secs(3600);
        let ok = |name: &'static str| phase_fn(name, |_| async { Ok::<_, PhaseError>(json!(1)) });
        let verifier = JobQueue::builder()
            .postgres(url.clone())
            .poll_interval(hour)
            .pipeline(Pipeline::new("verify").phase(ok("check")))
            .start()
            .await
            .unwrap();
        let publisher = JobQueue::builder()
            .postgres(url)
            .poll_interval(hour)
            .pipeline(Pipeline::new("publish").phase(ok("upload")))
            .start()
            .await
            .unwrap();
        let verify = verifier
            .enqueue_job(
                NewJob::new("verify")
                    .run_at(time::OffsetDateTime::now_utc() + Duration::from_secs(1)),
            )
            .await
            .unwrap();
        let publish = publisher
            .enqueue_job(NewJob::new("publish").depends_on([verify.id]))
            .await
            .unwrap();
        assert_eq!(
            wait(&publisher, &publish).await.status,
            JobStatus::Completed
        );
        let completed = seq_of(&publisher, verify.id, EventType::JobCompleted).await;
        let started = seq_of(&publisher, publish.id, EventType::JobStarted).await;
        assert!(completed < started);
        publisher.shutdown().await;
        verifier.shutdown().await;
    })
    .await;
}
