//! The everyday API through the façade, on every store (and on PostgreSQL
//! when `JOBQUEUE_TEST_POSTGRES_URL` is set): application state in phases,
//! `wait`, `drain`, `counts`, `enqueue_many`, typed pipelines, unique jobs
//! (by key, by input, within a period).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jobqueue::{
    Enqueued, ErrorKind, JobId, JobInput, JobQueue, JobQueueBuilder, JobResults, JobStatus, NewJob,
    PhaseError, PhaseOptions, PhaseStatus, Pipeline, RetryPolicy, phase_fn,
};
use jobqueue_tests::{DEADLINE, StoreKind};
use serde_json::json;

use crate::Env;

/// `fut`, or a failure naming `what` after the tests' deadline.
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Application state a phase reads.
struct Greeter {
    greeting: String,
}

/// `greet` says hello with the `Greeter` and the `u32` of the state;
/// `flaky` fails for good when its input says so, else completes.
fn pipelines() -> Vec<Pipeline> {
    vec![
        Pipeline::new("greet").phase(phase_fn("hello", |ctx| async move {
            let greeter = ctx.state::<Arc<Greeter>>()?;
            let times = ctx.state::<u32>()?;
            let name = ctx.input()["name"].as_str().unwrap_or("nobody").to_owned();
            Ok::<_, PhaseError>(json!(format!("{} {name} x{times}", greeter.greeting)))
        })),
        Pipeline::new("flaky").phase(phase_fn("maybe", |ctx| async move {
            if ctx.input()["fail"] == json!(true) {
                return Err(PhaseError::permanent("told to fail"));
            }
            Ok::<_, PhaseError>(json!("ok"))
        })),
    ]
}

async fn start(builder: JobQueueBuilder) -> JobQueue {
    let mut b = builder
        .state(Arc::new(Greeter {
            greeting: "hello".into(),
        }))
        .state(3u32);
    for p in pipelines() {
        b = b.pipeline(p);
    }
    b.start().await.unwrap()
}

/// A job of `flaky` due in an hour.
async fn enqueue_for_later(queue: &JobQueue) -> jobqueue::Job {
    let in_an_hour = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    queue
        .enqueue_job(NewJob::new("flaky").run_at(in_an_hour))
        .await
        .unwrap()
}

async fn state_reaches_phases(builder: JobQueueBuilder) {
    let queue = start(builder).await;
    let job = queue
        .enqueue("greet", &json!({"name": "Ada"}))
        .await
        .unwrap();
    let done = within("the greet job", queue.wait(job.id)).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(
        done.phase("hello").and_then(|p| p.result.clone()),
        Some(json!("hello Ada x3"))
    );
    queue.shutdown().await;
}

async fn wait_resolves_with_the_finished_job(builder: JobQueueBuilder) {
    let queue = start(builder).await;
    let failing = queue
        .enqueue("flaky", &json!({"fail": true}))
        .await
        .unwrap();
    let failed = within("the failing job", queue.wait(failing.id))
        .await
        .unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(
        failed.error.as_ref().map(|e| e.message.as_str()),
        Some("told to fail")
    );
    // Finished already: at once.
    let again = within("a finished job", queue.wait(failing.id))
        .await
        .unwrap();
    assert_eq!(again.status, JobStatus::Failed);
    // Cancelled while queued (for later): `wait` sees the cancel.
    let later = enqueue_for_later(&queue).await;
    let waiter = tokio::spawn({
        let queue = queue.clone();
        async move { queue.wait(later.id).await }
    });
    queue.cancel(later.id).await.unwrap();
    let cancelled = within("the cancelled job", waiter).await.unwrap().unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    // A waiter is not left hanging by a shutdown.
    let parked = enqueue_for_later(&queue).await;
    let waiter = tokio::spawn({
        let queue = queue.clone();
        async move { queue.wait(parked.id).await }
    });
    let unknown = queue.wait(JobId::new()).await.unwrap_err();
    match unknown {
        jobqueue::Error::Store(e) => assert_eq!(e.kind(), ErrorKind::NotFound),
        other => panic!("expected not found, got {other:?}"),
    }
    queue.shutdown().await;
    let ended = within("the waiter after shutdown", waiter).await.unwrap();
    assert!(matches!(ended, Err(jobqueue::Error::ShutDown)), "{ended:?}");
}

async fn drain_runs_every_runnable_job(builder: JobQueueBuilder) {
    let queue = start(builder).await;
    let names = [json!({"name": "Ada"}), json!({"name": "Grace"})];
    let jobs = queue.enqueue_many("greet", &names).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        jobs[1].input,
        json!({"name": "Grace"}),
        "in the inputs' order"
    );
    queue
        .enqueue("flaky", &json!({"fail": true}))
        .await
        .unwrap();
    let later = enqueue_for_later(&queue).await;
    let summary = within("drain", queue.drain()).await.unwrap();
    assert_eq!(
        (
            summary.completed,
            summary.failed,
            summary.cancelled,
            summary.scheduled
        ),
        (2, 1, 0, 1),
        "{summary:?}"
    );
    for job in &jobs {
        let job = queue.get(job.id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Completed);
    }
    assert_eq!(
        queue.get(later.id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    // Nothing left to run: at once, and nothing counted.
    let again = within("a second drain", queue.drain()).await.unwrap();
    assert_eq!((again.completed, again.failed, again.scheduled), (0, 0, 1));

    let counts = queue.counts().await.unwrap();
    assert_eq!(counts.of("greet", JobStatus::Completed), 2);
    assert_eq!(counts.of("flaky", JobStatus::Failed), 1);
    assert_eq!(counts.status(JobStatus::Queued), 1);
    assert_eq!(counts.pipeline("flaky"), 2);
    assert_eq!(counts.total(), 4);
    queue.shutdown().await;
}

async fn enqueue_many_is_all_or_nothing(builder: JobQueueBuilder) {
    let queue = start(builder).await;
    let err = queue
        .enqueue_many("nope", &[json!(1), json!(2)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let none: [serde_json::Value; 0] = [];
    assert!(queue.enqueue_many("greet", &none).await.unwrap().is_empty());
    assert_eq!(queue.counts().await.unwrap().total(), 0);
    queue.shutdown().await;
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Order {
    items: u32,
}
impl JobInput for Order {
    const PIPELINE: &'static str = "orders";
}

/// Claims to be an order's input, but is not the type the pipeline declared.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct NotAnOrder {
    items: u32,
}
impl JobInput for NotAnOrder {
    const PIPELINE: &'static str = "orders";
}

async fn typed_pipelines_check_their_input(builder: JobQueueBuilder) {
    let orders = Pipeline::typed::<Order>()
        .step("count", |_ctx, order: Order| async move {
            Ok::<_, PhaseError>(order.items * 2)
        })
        .step("label", |ctx, n: u32| async move {
            let region = ctx.state::<String>()?.clone();
            Ok::<_, PhaseError>(format!("{n} parts to {region}"))
        })
        .build();
    let queue = builder
        .state(String::from("eu"))
        .pipeline(orders)
        .start()
        .await
        .unwrap();
    let job = queue.enqueue_typed(&Order { items: 3 }).await.unwrap();
    let done = within("the order", queue.wait(job.id)).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.result_of::<u32>("count").unwrap(), Some(6));
    assert_eq!(
        done.result_of::<String>("label").unwrap().as_deref(),
        Some("6 parts to eu")
    );
    let many = queue
        .enqueue_many_typed(&[Order { items: 1 }, Order { items: 2 }])
        .await
        .unwrap();
    assert_eq!(many.len(), 2);

    // Plain JSON that does not fit the input type: refused, nothing written.
    let before = queue.counts().await.unwrap().total();
    let err = queue
        .enqueue("orders", &json!({"items": "three"}))
        .await
        .unwrap_err();
    match &err {
        jobqueue::Error::Store(e) => assert_eq!(e.kind(), ErrorKind::Invalid, "{err}"),
        other => panic!("expected invalid, got {other:?}"),
    }
    assert!(err.to_string().contains("Order"), "{err}");
    let err = queue
        .enqueue_batch(vec![
            NewJob::new("orders").input(json!({"items": 1})),
            NewJob::new("orders").input(json!(null)),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("1"), "names the bad job: {err}");
    // The other type that names the pipeline is refused before any write.
    let err = queue
        .enqueue_typed(&NotAnOrder { items: 1 })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NotAnOrder"), "{err}");
    assert_eq!(queue.counts().await.unwrap().total(), before);
    queue.shutdown().await;
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial: Duration::ZERO,
        ..crate::fast_retry(max_attempts)
    }
}

async fn phase_options_override_the_pipeline(builder: JobQueueBuilder) {
    // The pipeline allows no retry; its upload phase allows three runs.
    let upload = Pipeline::new("upload").retry(policy(1)).phase_with(
        phase_fn("upload", |ctx| async move {
            if ctx.attempt() < 3 {
                return Err(PhaseError::retryable("flaky network"));
            }
            Ok::<_, PhaseError>(json!("uploaded"))
        }),
        PhaseOptions::new().retry(policy(3)),
    );
    // The pipeline allows five attempts; its phase only two runs.
    let capped = Pipeline::new("capped").retry(policy(5)).phase_with(
        phase_fn("always", |_| async move {
            Err::<serde_json::Value, _>(PhaseError::retryable("still broken"))
        }),
        PhaseOptions::new().retry(policy(2)),
    );
    // A phase's own timeout.
    let slow = Pipeline::new("slow").retry(policy(1)).phase_with(
        phase_fn("sleep", |_| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, PhaseError>(json!("woke"))
        }),
        PhaseOptions::new().timeout(Duration::from_millis(50)),
    );
    let queue = builder
        .pipeline(upload)
        .pipeline(capped)
        .pipeline(slow)
        .start()
        .await
        .unwrap();

    let job = queue.enqueue("upload", &json!(null)).await.unwrap();
    assert_eq!(job.max_attempts, 3, "the budget covers the phase's policy");
    let done = within("upload", queue.wait(job.id)).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed, "{done:?}");
    assert_eq!(done.attempt, 3);

    let job = queue.enqueue("capped", &json!(null)).await.unwrap();
    let done = within("capped", queue.wait(job.id)).await.unwrap();
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(
        done.attempt, 2,
        "the phase's policy stops it before the job's budget"
    );
    assert_eq!(done.phases[0].attempts, 2);

    let job = queue.enqueue("slow", &json!(null)).await.unwrap();
    let done = within("slow", queue.wait(job.id)).await.unwrap();
    assert_eq!(done.status, JobStatus::Failed);
    let message = done.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("timed out"), "{message}");
    queue.shutdown().await;
}

async fn a_phase_can_cancel_its_job(builder: JobQueueBuilder) {
    let ship = Pipeline::new("ship")
        .phase(phase_fn("check", |_| async move {
            Ok::<_, PhaseError>(json!("checked"))
        }))
        .phase(phase_fn("ship", |ctx| async move {
            if ctx.input()["withdrawn"] == json!(true) {
                return Err(PhaseError::cancel_job("the order was withdrawn"));
            }
            Ok(json!("shipped"))
        }))
        .phase(phase_fn("never", |_| async move {
            Ok::<_, PhaseError>(json!("ran"))
        }));
    let queue = builder.pipeline(ship).start().await.unwrap();
    let job = queue
        .enqueue("ship", &json!({"withdrawn": true}))
        .await
        .unwrap();
    let done = within("the withdrawn order", queue.wait(job.id))
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Cancelled);
    assert_eq!(done.attempt, 1, "not retried");
    assert_eq!(done.error, None, "not a failure");
    let statuses: Vec<PhaseStatus> = done.phases.iter().map(|p| p.status).collect();
    assert_eq!(
        statuses,
        [
            PhaseStatus::Completed,
            PhaseStatus::Cancelled,
            PhaseStatus::Pending
        ]
    );
    assert_eq!(
        done.result_of::<String>("check").unwrap().as_deref(),
        Some("checked")
    );
    queue.shutdown().await;
}

async fn enqueue_unique_returns_the_existing_job(builder: JobQueueBuilder) {
    let queue = start(builder).await;
    let in_an_hour = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let job = NewJob::new("flaky")
        .unique_key("nightly:2026-12-02")
        .run_at(in_an_hour);
    let first = queue.enqueue_unique(job.clone()).await.unwrap();
    assert!(first.is_created());
    let second = queue
        .enqueue_unique(job.clone().input(json!({"other": "input"})))
        .await
        .unwrap();
    match &second {
        Enqueued::Existing(existing) => {
            assert_eq!(existing.id, first.job().id);
            assert_eq!(existing.input, json!(null), "the existing job, unchanged");
        }
        Enqueued::Created(j) => panic!("enqueued a second job {j:?}"),
    }
    // `enqueue_job` still says Duplicate.
    let err = queue.enqueue_job(job.clone()).await.unwrap_err();
    match err {
        jobqueue::Error::Store(e) => assert_eq!(e.kind(), ErrorKind::Duplicate),
        other => panic!("expected duplicate, got {other:?}"),
    }
    // Once the holder has finished, the key is free again.
    queue.cancel(first.job().id).await.unwrap();
    let third = queue.enqueue_unique(job).await.unwrap();
    assert!(third.is_created());
    assert_ne!(third.job().id, first.job().id);
    // Without a key: always created.
    let plain = queue
        .enqueue_unique(NewJob::new("flaky").run_at(in_an_hour))
        .await
        .unwrap();
    assert!(plain.is_created());
    assert_eq!(queue.counts().await.unwrap().total(), 3);
    queue.shutdown().await;
}

/// Uniqueness by input, and within a period: a job created in the same
/// window holds the key in every state, `enqueue_unique` returns it, and a
/// key without a period is free again once its job ended.
async fn uniqueness_by_input_and_period(builder: JobQueueBuilder) {
    let queue = start(builder).await;
    // About ten years: no test run straddles a window's end.
    let decade = Duration::from_secs(3650 * 24 * 3600);
    let job = NewJob::new("flaky")
        .input(json!({"fail": false, "order": 7}))
        .unique_by_input()
        .unique_for(decade);
    let first = queue.enqueue_unique(job.clone()).await.unwrap().into_job();
    let key = first.unique_key.clone().unwrap();
    assert!(key.starts_with("input:"), "{key}");
    assert!(
        first
            .period_key
            .as_deref()
            .is_some_and(|p| p.starts_with(&key))
    );
    let done = within("the first job", queue.wait(first.id)).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    // Completed, it still holds the window: the same input (keys in
    // another order) is refused, or returned.
    let same = NewJob::new("flaky")
        .input(json!({"order": 7, "fail": false}))
        .unique_by_input()
        .unique_for(decade);
    match queue.enqueue_job(same.clone()).await.unwrap_err() {
        jobqueue::Error::Store(e) => {
            assert_eq!(e.kind(), ErrorKind::Duplicate);
            assert_eq!(e.duplicate_of(), Some(first.id));
            assert!(e.to_string().contains("same window"), "{e}");
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    match queue.enqueue_unique(same).await.unwrap() {
        Enqueued::Existing(j) => {
            assert_eq!(j.id, first.id);
            assert_eq!(j.status, JobStatus::Completed);
        }
        Enqueued::Created(j) => panic!("enqueued a second job {j:?}"),
    }
    // Another input is another key.
    let other = NewJob::new("flaky")
        .input(json!({"fail": false, "order": 8}))
        .unique_by_input()
        .unique_for(decade);
    assert!(queue.enqueue_unique(other).await.unwrap().is_created());
    // Without a period, a key made from the input is held only while its
    // job is queued or running.
    let active_only = NewJob::new("flaky")
        .input(json!({"fail": false, "order": 7}))
        .unique_by_input();
    let again = queue.enqueue_job(active_only).await.unwrap();
    assert_eq!(again.unique_key.as_deref(), Some(key.as_str()));
    assert_eq!(again.period_key, None);
    queue.shutdown().await;
}

#[test]
fn a_bad_phase_policy_is_refused_at_build() {
    let bad = Pipeline::new("bad").phase_with(
        phase_fn("a", |_| async move { Ok::<_, PhaseError>(json!(null)) }),
        PhaseOptions::new().retry(RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        }),
    );
    let err = jobqueue::runtime::Pipelines::new([bad]).unwrap_err();
    assert!(err.contains("phase \"a\": retry: max_attempts"), "{err}");
}

/// Runs each test on the memory, SQLite and PostgreSQL stores.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod stores {
            $(
                mod $name {
                    use super::super::*;

                    #[tokio::test(start_paused = true)]
                    async fn memory() {
                        let env = Env::new(StoreKind::Memory);
                        $name(env.builder().await).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn sqlite() {
                        let env = Env::new(StoreKind::Sqlite);
                        $name(env.builder().await).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn postgres() {
                        crate::postgres::in_schema("jq_everyday", |url| async move {
                            let builder = JobQueue::builder()
                                .postgres(url)
                                .retry_policy(crate::fast_retry(3))
                                .stop_grace(Duration::from_millis(200))
                                .shutdown_timeout(Duration::from_millis(200))
                                .poll_interval(Duration::from_millis(100));
                            $name(builder).await;
                        })
                        .await;
                    }
                }
            )*
        }
    };
}

pub(crate) use on_every_store;

on_every_store!(
    state_reaches_phases,
    wait_resolves_with_the_finished_job,
    drain_runs_every_runnable_job,
    enqueue_many_is_all_or_nothing,
    typed_pipelines_check_their_input,
    phase_options_override_the_pipeline,
    a_phase_can_cancel_its_job,
    enqueue_unique_returns_the_existing_job,
    uniqueness_by_input_and_period,
);
