//! Panics in the runtime's background tasks: each is logged, counted in
//! `Runtime::health`, and the task goes on; no job is left `running`.

use std::time::Duration;

use jobqueue_core::{
    ClaimRequest, EventType, Health, Job, JobStatus, JobStore, NewJob, RecoverScope, TaskHealth,
    TaskState,
};
use jobqueue_runtime::{
    PhaseError, Pipeline, RetentionConfig, Runtime, RuntimeConfig, Schedule, phase_fn,
};
use serde_json::json;

use crate::support::World;

/// A phase that takes `ms` milliseconds of (tokio) time.
fn work(ms: u64) -> impl jobqueue_runtime::Phase {
    phase_fn("work", move |_ctx| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, PhaseError>(json!("done"))
    })
}

/// Starts a runtime with `config` on a store whose next call of `op`
/// panics, and enqueues one job with `max_attempts` whose phase takes 500 ms.
async fn one_job_with_a_panic_in(
    world: &World,
    op: &'static str,
    config: RuntimeConfig,
    max_attempts: u32,
) -> (Runtime, Job) {
    world.store.panic_once(op, 1);
    let rt = world
        .start(vec![Pipeline::new("p").phase(work(500))], config)
        .await;
    let job = world
        .enqueue(&rt, NewJob::new("p").max_attempts(max_attempts))
        .await;
    (rt, job)
}

fn task(health: &Health, name: &str) -> TaskHealth {
    health
        .tasks
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no task {name:?} in {health:?}"))
        .clone()
}

/// Checks that `name` panicked once with the store's injected panic in `op`
/// and runs again.
fn panicked_once_and_runs(health: &Health, name: &str, op: &str) {
    let t = task(health, name);
    assert_eq!(t.panics, 1, "{t:?}");
    assert_eq!(
        t.last_panic.as_deref(),
        Some(&*format!("injected panic in {op}"))
    );
    assert_eq!(t.state, TaskState::Running, "{t:?}");
    assert!(health.is_healthy(), "{health:?}");
}

fn all_stopped(health: &Health) -> bool {
    health.tasks.iter().all(|t| t.state == TaskState::Stopped)
}

#[tokio::test(start_paused = true)]
async fn health_names_each_background_task() {
    let world = World::new();
    let rt = world
        .start(vec![Pipeline::new("p").phase(work(1))], world.config())
        .await;
    let names: Vec<String> = rt.health().tasks.into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["pump", "workers"]);
    rt.shutdown(Duration::from_secs(1)).await;
    assert!(all_stopped(&rt.health()), "{:?}", rt.health());

    let config = RuntimeConfig {
        retention: Some(RetentionConfig::default()),
        recover: RecoverScope::ExpiredLeases,
        ..world.config()
    };
    let rt = world
        .start(vec![Pipeline::new("p").phase(work(1))], config)
        .await;
    let health = rt.health();
    let names: Vec<&str> = health.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["pump", "workers", "retention", "lease-rescue"]);
    assert!(health.is_healthy());
    rt.shutdown(Duration::from_secs(1)).await;
    assert!(all_stopped(&rt.health()), "{:?}", rt.health());
}

#[tokio::test(start_paused = true)]
async fn a_pump_panic_is_counted_and_the_pump_restarts() {
    let world = World::new();
    let (rt, job) = one_job_with_a_panic_in(&world, "claim", world.config(), 3).await;
    world.events.wait_for(job.id, EventType::JobCompleted).await;
    panicked_once_and_runs(&rt.health(), "pump", "claim");
    rt.shutdown(Duration::from_secs(1)).await;
    assert!(all_stopped(&rt.health()), "{:?}", rt.health());
}

#[tokio::test(start_paused = true)]
async fn a_retention_panic_is_counted_and_retention_restarts() {
    let world = World::new();
    world.store.panic_once("mark_stale", 1);
    let config = RuntimeConfig {
        retention: Some(RetentionConfig {
            stale_after: Duration::from_secs(1),
            delete_after: Duration::from_secs(3600),
            interval: Duration::from_secs(10),
            batch: 10,
            ..RetentionConfig::default()
        }),
        ..world.config()
    };
    let rt = world
        .start(vec![Pipeline::new("p").phase(work(1))], config)
        .await;
    let job = world.enqueue(&rt, NewJob::new("p")).await;
    world.events.wait_for(job.id, EventType::JobStale).await;
    panicked_once_and_runs(&rt.health(), "retention", "mark_stale");
    rt.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_rescue_panic_is_counted_and_rescue_goes_on() {
    let world = World::new();
    let config = RuntimeConfig {
        recover: RecoverScope::ExpiredLeases,
        lease: Duration::from_secs(1),
        heartbeat: Duration::from_millis(300),
        ..world.config()
    };
    // Another process claimed this job and died: its lease runs out in 1 s.
    let names = ["work"];
    let orphan = world
        .store
        .enqueue(NewJob::new("p").phases(names))
        .await
        .unwrap();
    let claim = ClaimRequest::new(1).lease_for(Duration::from_secs(1));
    assert_eq!(world.store.claim(claim).await.unwrap().len(), 1);
    // The first call is recovery at start, the second the rescuer's first.
    world.store.panic_once("recover", 2);
    let rt = world
        .start(vec![Pipeline::new("p").phase(work(1))], config)
        .await;

    world
        .events
        .wait_for(orphan.id, EventType::JobInterrupted)
        .await;
    world
        .events
        .wait_for(orphan.id, EventType::JobCompleted)
        .await;
    panicked_once_and_runs(&rt.health(), "lease-rescue", "recover");
    rt.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_panic_outside_its_phase_queues_the_job_again() {
    let world = World::new();
    // The claim starts the phase; the worker's own first write is the
    // phase's completion, and it panics there.
    let (rt, job) = one_job_with_a_panic_in(&world, "phase_completed", world.config(), 3).await;

    world.events.wait_for(job.id, EventType::JobCompleted).await;
    let types = world.events.types_of(job.id);
    assert_eq!(
        types,
        [
            EventType::JobCreated,
            EventType::JobStarted,
            EventType::PhaseStarted,
            EventType::JobInterrupted,
            EventType::JobStarted,
            EventType::PhaseStarted,
            EventType::PhaseCompleted,
            EventType::JobCompleted,
        ]
    );
    panicked_once_and_runs(&rt.health(), "workers", "phase_completed");
    rt.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_keeper_panic_is_the_workers_and_the_job_runs_again() {
    let world = World::new();
    let config = RuntimeConfig {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_secs(1),
        ..world.config()
    };
    let (rt, job) = one_job_with_a_panic_in(&world, "heartbeat", config, 3).await;

    world.events.wait_for(job.id, EventType::JobCompleted).await;
    let interrupted = world
        .events
        .wait_for(job.id, EventType::JobInterrupted)
        .await;
    let jobqueue_core::EventData::Interrupted { phase, .. } = interrupted.data else {
        unreachable!()
    };
    assert_eq!(phase, "work", "the job was queued again in its phase");
    assert_eq!(world.job(job.id).await.attempt, 2);
    panicked_once_and_runs(&rt.health(), "workers", "heartbeat");
    rt.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_panic_on_the_last_attempt_fails_the_job_clearly() {
    let world = World::new();
    let (rt, job) = one_job_with_a_panic_in(&world, "complete_job", world.config(), 1).await;

    world.events.wait_for(job.id, EventType::JobFailed).await;
    let failed = world.job(job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let message = failed.error.unwrap().message;
    assert!(
        message.contains("panicked") && message.contains("injected panic in complete_job"),
        "{message}"
    );
    assert_eq!(
        failed.phases[0].result,
        Some(json!("done")),
        "the completed phase keeps its result"
    );
    panicked_once_and_runs(&rt.health(), "workers", "complete_job");
    rt.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_scheduler_is_counted_and_the_tick_enqueued_after_all() {
    let world = World::new();
    // The scheduler's first pass, inside `start`, panics in its enqueue.
    world.store.panic_once("enqueue", 1);
    let config = RuntimeConfig {
        schedules: vec![Schedule::every("s", Duration::from_secs(3600), "p")],
        ..world.config()
    };
    let rt = world
        .start(vec![Pipeline::new("p").phase(work(1))], config)
        .await;
    panicked_once_and_runs(&rt.health(), "scheduler", "enqueue");
    // The loop's first pass enqueues the tick after all.
    let created = world.events.wait_for_any(EventType::JobCreated).await;
    let job = world.job(created.job_id.expect("a job event")).await;
    assert!(
        job.unique_key
            .as_deref()
            .is_some_and(|k| k.starts_with("schedule:s:")),
        "{job:?}"
    );
    assert_eq!(job.status, JobStatus::Queued);
    rt.shutdown(Duration::from_secs(1)).await;
    assert!(all_stopped(&rt.health()), "{:?}", rt.health());
}
