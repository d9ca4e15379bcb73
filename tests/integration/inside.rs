//! Control from inside a phase, through the façade, on every store (and on
//! PostgreSQL when `JOBQUEUE_TEST_POSTGRES_URL` is set): durable
//! checkpoints that a phase resumes from after a shutdown or a failure,
//! and snoozes that queue the job again without spending an attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use jobqueue::{
    EventData, EventFilter, Job, JobQueue, JobQueueBuilder, JobStatus, PhaseError, PhaseStatus,
    Pipeline, phase_fn,
};
use jobqueue_tests::StoreKind;
use serde_json::json;
use tokio::sync::watch;

use crate::Env;
use crate::everyday::within;

/// Makes builders on one store, again and again: a "restart" of the queue.
type Builders =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = JobQueueBuilder> + Send>> + Send + Sync>;

/// What the copying phase tells the test: where each run started, and the
/// last checkpoint it saved.
struct Probe {
    saved: watch::Sender<u64>,
    starts: std::sync::Mutex<Vec<u64>>,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            saved: watch::channel(0).0,
            starts: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn starts(&self) -> Vec<u64> {
        self.starts.lock().unwrap().clone()
    }
}

/// `copy` copies rows 1 to 4, one at a time, saving a checkpoint after
/// each; on its first run it stops after row 2 and `stop` says how (waits
/// for the shutdown, or fails retryably).
fn copy_pipeline(stop: &'static str) -> Pipeline {
    Pipeline::new("copy").phase(phase_fn("copy", move |ctx| async move {
        let probe = ctx.state::<Arc<Probe>>()?.clone();
        let mut next = ctx.checkpoint_as::<u64>()?.unwrap_or(0);
        let first_run = {
            let mut starts = probe.starts.lock().unwrap();
            starts.push(next);
            starts.len() == 1
        };
        while next < 4 {
            next += 1;
            ctx.checkpoint(&next).await?;
            probe.saved.send_replace(next);
            if first_run && next == 2 {
                if stop == "shutdown" {
                    ctx.cancelled().await;
                }
                return Err(PhaseError::retryable("stopped half way"));
            }
        }
        Ok(json!({ "rows": next }))
    }))
}

/// A queue on `builders`' store that runs `copy_pipeline(stop)` with `probe`.
async fn start_copy(builders: &Builders, probe: &Arc<Probe>, stop: &'static str) -> JobQueue {
    builders()
        .await
        .state(probe.clone())
        .pipeline(copy_pipeline(stop))
        .start()
        .await
        .unwrap()
}

async fn wait_for(queue: &JobQueue, job: &Job) -> Job {
    within("the job to finish", queue.wait(job.id))
        .await
        .unwrap()
}

async fn resumes_from_its_checkpoint_after_a_shutdown(builders: Builders) {
    let probe = Probe::new();
    let queue = start_copy(&builders, &probe, "shutdown").await;
    let job = queue.enqueue("copy", &json!({})).await.unwrap();
    let mut saved = probe.saved.subscribe();
    within("the second checkpoint", saved.wait_for(|n| *n == 2))
        .await
        .unwrap();
    queue.shutdown().await;
    // The process is gone; a new one on the same store takes the job up.
    let queue = start_copy(&builders, &probe, "shutdown").await;
    let done = wait_for(&queue, &job).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(probe.starts(), [0, 2], "the second run resumed at row 2");
    let copy = &done.phases[0];
    assert_eq!(copy.result, Some(json!({ "rows": 4 })));
    assert_eq!(copy.checkpoint, None, "cleared once the phase completed");
    assert!(
        done.interrupted.is_some(),
        "it was cut short by the shutdown"
    );
    queue.shutdown().await;
}

async fn resumes_from_its_checkpoint_after_a_failure(builders: Builders) {
    let probe = Probe::new();
    let queue = start_copy(&builders, &probe, "fail").await;
    let job = queue.enqueue("copy", &json!({})).await.unwrap();
    let done = wait_for(&queue, &job).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.attempt, 2);
    assert_eq!(probe.starts(), [0, 2], "the retry resumed at row 2");
    assert_eq!(done.phases[0].result, Some(json!({ "rows": 4 })));
    assert_eq!(done.phases[0].checkpoint, None);
    queue.shutdown().await;
}

/// `poll` snoozes twice (at once, then for 50 ms), counting its snoozes
/// in its checkpoint, then completes; `forever` snoozes past the year 9999.
fn snoozing_pipelines() -> Vec<Pipeline> {
    vec![
        Pipeline::new("poll")
            .phase(phase_fn("fetch", |_| async move {
                Ok::<_, PhaseError>(json!("fetched"))
            }))
            .phase(phase_fn("poll", |ctx| async move {
                let snoozes = ctx.checkpoint_as::<u32>()?.unwrap_or(0);
                if snoozes < 2 {
                    ctx.checkpoint(&(snoozes + 1)).await?;
                    let delay = Duration::from_millis(50 * u64::from(snoozes));
                    return Err(PhaseError::snooze(delay));
                }
                Ok(json!({ "snoozes": snoozes, "attempt": ctx.attempt() }))
            })),
        Pipeline::new("forever").phase(phase_fn("wait", |_| async move {
            Err::<serde_json::Value, _>(PhaseError::snooze(Duration::MAX))
        })),
    ]
}

async fn snoozes_do_not_spend_attempts(builders: Builders) {
    let mut builder = builders().await.retry_policy(crate::fast_retry(1));
    for p in snoozing_pipelines() {
        builder = builder.pipeline(p);
    }
    let queue = builder.start().await.unwrap();
    let job = queue.enqueue("poll", &json!({})).await.unwrap();
    let done = wait_for(&queue, &job).await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(done.attempt, 1, "two snoozes, one attempt");
    assert_eq!(
        done.phases[1].result,
        Some(json!({ "snoozes": 2, "attempt": 1 }))
    );
    assert_eq!(done.phases[1].attempts, 1);
    assert_eq!(
        done.phases[0].attempts, 1,
        "a completed phase never runs again"
    );
    let filter = EventFilter {
        job: Some(job.id),
        types: vec![],
    };
    let events = queue.store().events_after(0, filter, 100).await.unwrap();
    let snoozes: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::Snoozed {
                phase,
                index,
                run_at,
            } => Some((phase.as_str(), *index, e.at, *run_at)),
            _ => None,
        })
        .collect();
    let names: Vec<_> = snoozes.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(names, [("poll", 1), ("poll", 1)]);
    // The second snooze was for 50 ms, counted from after the first.
    assert!(snoozes[1].3 >= snoozes[0].2 + Duration::from_millis(50));
    // A delay no store can hold fails the phase for good, saying so.
    let never = queue.enqueue("forever", &json!({})).await.unwrap();
    let failed = wait_for(&queue, &never).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.phases[0].status, PhaseStatus::Failed);
    let message = failed.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("cannot snooze"), "{message}");
    queue.shutdown().await;
}

/// Runs each test on the memory, SQLite and PostgreSQL stores, with a
/// maker of builders on one store (so a test can restart its queue).
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod stores {
            $(
                mod $name {
                    use super::super::*;

                    fn on_env(kind: StoreKind) -> Builders {
                        let env = Arc::new(Env::new(kind));
                        Arc::new(move || {
                            let env = env.clone();
                            Box::pin(async move { env.builder().await })
                        })
                    }

                    #[tokio::test(start_paused = true)]
                    async fn memory() {
                        $name(on_env(StoreKind::Memory)).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn sqlite() {
                        $name(on_env(StoreKind::Sqlite)).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn postgres() {
                        crate::postgres::in_schema("jq_inside", |url| async move {
                            let builders: Builders = Arc::new(move || {
                                let url = url.clone();
                                Box::pin(async move {
                                    JobQueue::builder()
                                        .postgres(url)
                                        .retry_policy(crate::fast_retry(3))
                                        .stop_grace(Duration::from_millis(200))
                                        .shutdown_timeout(Duration::from_millis(200))
                                        .poll_interval(Duration::from_millis(100))
                                })
                            });
                            $name(builders).await;
                        })
                        .await;
                    }
                }
            )*
        }
    };
}

on_every_store!(
    resumes_from_its_checkpoint_after_a_shutdown,
    resumes_from_its_checkpoint_after_a_failure,
    snoozes_do_not_spend_attempts,
);
