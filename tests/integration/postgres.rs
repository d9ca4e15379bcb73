//! The façade on PostgreSQL: one job through a pipeline, on a queue built
//! with `JobQueueBuilder::postgres(url)`.
//!
//! It runs against `JOBQUEUE_TEST_POSTGRES_URL`, in a schema of its own
//! (named in the URL's `search_path` option, dropped afterwards). Without
//! the variable it says so loudly and passes; with `CI` set it fails.

use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;
use jobqueue::{EventType, JobQueue, JobStatus, PhaseError, Pipeline, phase_fn};
use jobqueue_tests::Recorder;
use serde_json::json;

const URL_VAR: &str = "JOBQUEUE_TEST_POSTGRES_URL";

/// The test database, or `None` after saying the test skips.
fn database() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{URL_VAR} is not set, and CI is: the PostgreSQL tests must run in CI"
            );
            // Straight to stderr: the harness captures `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** jobqueue-tests: {URL_VAR} is not set: SKIPPING the façade test on \
                 PostgreSQL ***\n"
            );
            None
        }
    }
}

async fn sql(url: &str, statement: &str) {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    conn.batch_execute(statement).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_through_a_pipeline() {
    in_schema("jq_facade", run).await;
}

/// Runs `test` with the URL of a new schema named after `prefix` in the
/// test database, and drops the schema afterwards (also when `test`
/// panics); skips when there is no test database.
pub(crate) async fn in_schema<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(url) = database() else {
        return;
    };
    let schema = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    sql(&url, &format!("CREATE SCHEMA {schema}")).await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let in_schema = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let outcome = AssertUnwindSafe(test(in_schema)).catch_unwind().await;
    sql(&url, &format!("DROP SCHEMA {schema} CASCADE")).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn run(url: String) {
    let queue = JobQueue::builder()
        .postgres(url)
        .poll_interval(Duration::from_millis(100))
        .pipeline(
            Pipeline::new("greet")
                .phase(phase_fn("hello", |ctx| async move {
                    ctx.report(50, Some("halfway"));
                    let name = ctx.input()["name"].as_str().unwrap_or("nobody").to_owned();
                    Ok::<_, PhaseError>(json!(format!("hello, {name}")))
                }))
                .phase(phase_fn("bye", |_| async move {
                    Ok::<_, PhaseError>(json!("bye"))
                })),
        )
        .start()
        .await
        .unwrap();
    let rec = Recorder::attach(&queue);
    let job = queue
        .enqueue("greet", &json!({"name": "Ada"}))
        .await
        .unwrap();
    rec.wait_for(job.id, EventType::JobCompleted).await;
    let done = queue.get(job.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(
        done.results(),
        json!({"hello": "hello, Ada", "bye": "bye"})
            .as_object()
            .cloned()
            .unwrap()
    );
    assert_eq!(
        done.phases[0].progress.as_ref().map(|p| p.percent),
        Some(50),
        "the last progress is persisted"
    );
    let transitions: Vec<EventType> = rec
        .types_of(job.id)
        .into_iter()
        .filter(|t| *t != EventType::PhaseProgress)
        .collect();
    assert_eq!(
        transitions,
        [
            EventType::JobCreated,
            EventType::JobStarted,
            EventType::PhaseStarted,
            EventType::PhaseCompleted,
            EventType::PhaseStarted,
            EventType::PhaseCompleted,
            EventType::JobCompleted,
        ]
    );
    queue.shutdown().await;
}
