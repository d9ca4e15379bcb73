//! Schedules through the façade, on every store (and on PostgreSQL when
//! `JOBQUEUE_TEST_POSTGRES_URL` is set): each tick enqueued once, with its
//! unique key and `run_at`; two queues on one store enqueue a tick once; the
//! catch-up after downtime runs the one tick enqueued before the stop and
//! skips the rest. Time is a `ManualClock` that the tests move, so ticks
//! come exactly when a test says.

use std::sync::Arc;
use std::time::Duration;

use jobqueue::{
    Clock, EventType, Job, JobFilter, JobQueue, JobQueueBuilder, JobStatus, JobStore, ManualClock,
    MemoryStore, PhaseError, Pipeline, Schedule, TaskState, phase_fn,
};
use jobqueue_tests::{Recorder, StoreKind};
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::everyday::within;

/// Where the clock starts: half a minute before the first tick of a
/// one-minute schedule.
const START: OffsetDateTime = datetime!(2026-01-01 10:00:30 UTC);
const MINUTE: Duration = Duration::from_secs(60);

/// A test's world: a store that outlives queues, and the clock.
struct World {
    backend: Backend,
    clock: Arc<ManualClock>,
}

enum Backend {
    Local {
        kind: StoreKind,
        dir: tempfile::TempDir,
        memory: MemoryStore,
    },
    Postgres(String),
}

impl World {
    fn local(kind: StoreKind) -> Self {
        let clock = Arc::new(ManualClock::new(START));
        Self {
            backend: Backend::Local {
                kind,
                dir: tempfile::tempdir().unwrap(),
                memory: MemoryStore::with_clock(clock.clone()),
            },
            clock,
        }
    }

    fn postgres(url: String) -> Self {
        Self {
            backend: Backend::Postgres(url),
            clock: Arc::new(ManualClock::new(START)),
        }
    }

    /// A builder on this world's store (opened again: a queue's shutdown
    /// closes it) and clock.
    async fn bare_builder(&self) -> JobQueueBuilder {
        let clock: Arc<dyn Clock> = self.clock.clone();
        let builder = match &self.backend {
            Backend::Local { kind, dir, memory } => {
                JobQueue::builder().store(kind.open(dir.path(), memory, clock.clone()).await)
            }
            Backend::Postgres(url) => JobQueue::builder().postgres(url.clone()),
        };
        builder.clock(clock)
    }

    /// A queue's builder with the `tick` pipeline and a one-minute schedule of it.
    async fn builder(&self) -> JobQueueBuilder {
        with_schedule(self.bare_builder().await)
    }

    /// Two queues on one store: two handles of one memory store, or one
    /// SQLite store shared.
    async fn two_builders(&self) -> (JobQueueBuilder, JobQueueBuilder) {
        let Backend::Local { kind, dir, memory } = &self.backend else {
            unreachable!("two queues are built on the local stores");
        };
        let clock: Arc<dyn Clock> = self.clock.clone();
        let store = kind.open(dir.path(), memory, clock.clone()).await;
        let other: Arc<dyn JobStore> = match kind {
            StoreKind::Memory => Arc::new(memory.clone()),
            StoreKind::Sqlite => store.clone(),
        };
        (
            with_schedule(JobQueue::builder().store(store).clock(clock.clone())),
            with_schedule(JobQueue::builder().store(other).clock(clock)),
        )
    }

    /// Every job of the store, read after the queues have stopped.
    async fn jobs(&self) -> Vec<Job> {
        // A queue with no schedule reads the store without adding to it.
        let builder = self.bare_builder().await.pipeline(pipeline());
        let queue = builder.start().await.unwrap();
        let mut jobs = all_jobs(&queue).await;
        queue.shutdown().await;
        jobs.sort_by_key(|j| j.run_at);
        jobs
    }
}

fn pipeline() -> Pipeline {
    Pipeline::new("tick").phase(phase_fn("say", |ctx| async move {
        Ok::<_, PhaseError>(json!({ "said": ctx.input()["say"] }))
    }))
}

fn with_schedule(builder: JobQueueBuilder) -> JobQueueBuilder {
    builder
        .pipeline(pipeline())
        .schedule(Schedule::every("minutely", MINUTE, "tick").input(json!({"say": "hi"})))
        .poll_interval(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_millis(200))
        .stop_grace(Duration::from_millis(200))
}

fn key(tick: OffsetDateTime) -> String {
    format!(
        "schedule:minutely:{}",
        jobqueue::core::timefmt::format(tick)
    )
}

/// The jobs of `queue` (a test makes a few).
async fn all_jobs(queue: &JobQueue) -> Vec<Job> {
    let filter = JobFilter {
        limit: 100,
        ..JobFilter::default()
    };
    queue.list(filter).await.unwrap().jobs
}

/// The job that holds `key`, among the jobs of `queue`.
async fn job_with_key(queue: &JobQueue, key: &str) -> Option<Job> {
    all_jobs(queue)
        .await
        .into_iter()
        .find(|j| j.unique_key.as_deref() == Some(key))
}

/// Waits until a job with `key` is created.
async fn wait_created(queue: &JobQueue, rec: &Recorder, key: &str) -> Job {
    loop {
        if let Some(job) = job_with_key(queue, key).await {
            return job;
        }
        let seen = rec.events().len();
        rec.wait_until(&format!("a job with key {key}"), |evs| evs.len() > seen)
            .await;
    }
}

const T1: OffsetDateTime = datetime!(2026-01-01 10:01:00 UTC);
const T2: OffsetDateTime = datetime!(2026-01-01 10:02:00 UTC);

async fn each_tick_is_one_job_due_at_its_tick(world: World) {
    let queue = world.builder().await.start().await.unwrap();
    let rec = Recorder::attach(&queue);
    // Once `start` returns, the next tick is enqueued, due at its time.
    let first = job_with_key(&queue, &key(T1))
        .await
        .expect("the first tick is enqueued at start");
    assert_eq!(first.status, JobStatus::Queued);
    assert_eq!(first.run_at, T1);
    assert_eq!(first.input, json!({"say": "hi"}));
    assert_eq!(first.phases.len(), 1, "the pipeline's phases");
    let scheduler = queue
        .health()
        .tasks
        .into_iter()
        .find(|t| t.name == "scheduler");
    assert_eq!(scheduler.map(|t| t.state), Some(TaskState::Running));

    // The tick comes: its job runs, and the next one is enqueued.
    world.clock.advance(MINUTE);
    let done = within("the first tick's job", queue.wait(first.id))
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    let second = wait_created(&queue, &rec, &key(T2)).await;
    assert_eq!(second.run_at, T2);
    assert_eq!(second.status, JobStatus::Queued);
    queue.shutdown().await;
    let scheduler = queue
        .health()
        .tasks
        .into_iter()
        .find(|t| t.name == "scheduler");
    assert_eq!(scheduler.map(|t| t.state), Some(TaskState::Stopped));

    let keys: Vec<Option<String>> = world
        .jobs()
        .await
        .into_iter()
        .map(|j| j.unique_key)
        .collect();
    assert_eq!(keys, [Some(key(T1)), Some(key(T2))], "one job per tick");
}

async fn after_downtime_one_missed_tick_runs(world: World) {
    let queue = world.builder().await.start().await.unwrap();
    let first = job_with_key(&queue, &key(T1)).await.unwrap();
    queue.shutdown().await;

    // Ten ticks pass while no queue runs.
    world.clock.advance(10 * MINUTE);
    let queue = world.builder().await.start().await.unwrap();
    let done = within("the tick enqueued before the stop", queue.wait(first.id))
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    queue.shutdown().await;

    let jobs = world.jobs().await;
    let keys: Vec<Option<String>> = jobs.iter().map(|j| j.unique_key.clone()).collect();
    let next = datetime!(2026-01-01 10:11:00 UTC);
    assert_eq!(
        keys,
        [Some(key(T1)), Some(key(next))],
        "the missed ticks between are skipped"
    );
    assert_eq!(jobs[1].status, JobStatus::Queued);
}

async fn two_queues_on_one_store_enqueue_a_tick_once(world: World) {
    let (a, b) = world.two_builders().await;
    let a = a.start().await.unwrap();
    // The second queue's first pass finds the tick enqueued.
    let b = b.start().await.unwrap();
    // The store sends its events to the queue that started last.
    let rec = Recorder::attach(&b);
    let first = job_with_key(&b, &key(T1)).await.unwrap();
    assert_eq!(b.counts().await.unwrap().total(), 1);

    world.clock.advance(MINUTE);
    rec.wait_for(first.id, EventType::JobCompleted).await;
    b.shutdown().await;
    a.shutdown().await;

    let jobs = world.jobs().await;
    let mut keys: Vec<String> = jobs.iter().filter_map(|j| j.unique_key.clone()).collect();
    let all = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), all, "no tick was enqueued twice: {keys:?}");
    assert_eq!(keys.first(), Some(&key(T1)));
    assert_eq!(jobs[0].status, JobStatus::Completed);
    assert!(all <= 2, "only the first tick and the next: {keys:?}");
}

#[tokio::test(start_paused = true)]
async fn bad_schedules_are_refused_at_start() {
    let build = |s: Schedule| {
        JobQueue::builder()
            .memory()
            .pipeline(pipeline())
            .schedule(s)
    };
    let err = build(Schedule::cron("c", "*/5 * * *", "tick"))
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("schedule \"c\": bad cron expression"),
        "{err}"
    );
    let err = build(Schedule::cron("c", "*/5 * * * *", "nope"))
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown pipeline \"nope\""),
        "{err}"
    );
    let err = build(Schedule::every("c", MINUTE, "tick"))
        .schedule(Schedule::every("c", MINUTE, "tick"))
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("declared twice"), "{err}");
}

macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod stores {
            $(
                mod $name {
                    use super::super::*;

                    #[tokio::test(start_paused = true)]
                    async fn memory() {
                        $name(World::local(StoreKind::Memory)).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn sqlite() {
                        $name(World::local(StoreKind::Sqlite)).await;
                    }

                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn postgres() {
                        crate::postgres::in_schema("jq_schedules", |url| async move {
                            $name(World::postgres(url)).await;
                        })
                        .await;
                    }
                }
            )*
        }
    };
}

on_every_store!(
    each_tick_is_one_job_due_at_its_tick,
    after_downtime_one_missed_tick_runs,
);

mod shared {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory() {
        two_queues_on_one_store_enqueue_a_tick_once(World::local(StoreKind::Memory)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        two_queues_on_one_store_enqueue_a_tick_once(World::local(StoreKind::Sqlite)).await;
    }
}
