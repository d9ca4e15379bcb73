//! The phase runner against a slow store, a blocking phase, a panicking
//! phase and a result the store refuses.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobqueue_core::{EventType, JobStatus, NewJob, PhaseStatus};
use jobqueue_runtime::{PhaseError, Pipeline, phase_fn};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::support::{World, within_deadline};

/// When a phase's future was dropped, measured from its first poll.
#[derive(Default)]
struct Dropped {
    after: Mutex<Option<Duration>>,
    notify: Notify,
}

impl Dropped {
    async fn wait(&self) -> Duration {
        within_deadline("the phase to be dropped", async {
            loop {
                let dropped = self.notify.notified();
                if let Some(after) = *self.after.lock().unwrap() {
                    return after;
                }
                dropped.await;
            }
        })
        .await
    }
}

/// Records in [`Dropped`] when it is dropped.
struct DropClock(Instant, Arc<Dropped>);

impl Drop for DropClock {
    fn drop(&mut self) {
        *self.1.after.lock().unwrap() = Some(self.0.elapsed());
        self.1.notify.notify_waiters();
    }
}

#[tokio::test(start_paused = true)]
async fn slow_store_writes_do_not_hold_the_phase_timeout() {
    let world = World::new();
    let dropped = Arc::new(Dropped::default());
    let seen = dropped.clone();
    let slow = phase_fn("slow", move |ctx| {
        let _clock = DropClock(Instant::now(), seen.clone());
        async move {
            let _clock = _clock;
            ctx.report(10, Some("started"));
            std::future::pending::<Result<Value, PhaseError>>().await
        }
    });
    let config = jobqueue_runtime::RuntimeConfig {
        heartbeat: Duration::from_millis(100),
        lease: Duration::from_secs(1),
        ..world.config()
    };
    let pipeline = Pipeline::new("p").phase_with_timeout(slow, Duration::from_millis(300));
    let rt = world.start(vec![pipeline], config).await;
    world.store.stall_heartbeats_and_progress();
    let job = world.enqueue(&rt, NewJob::new("p").max_attempts(1)).await;

    let after = dropped.wait().await;
    assert_eq!(
        after,
        Duration::from_millis(300),
        "the timeout fires on time"
    );
    world.store.wait_for_a_stall().await;
    assert_eq!(
        world.job(job.id).await.status,
        JobStatus::Running,
        "the end waits for the last progress to be written"
    );

    world.store.release();
    world.events.wait_for(job.id, EventType::JobFailed).await;
    let done = world.job(job.id).await;
    assert_eq!(
        done.phases[0].error.as_deref(),
        Some("phase timed out after 300ms")
    );
    assert_eq!(
        done.phases[0].progress.as_ref().map(|p| p.percent),
        Some(10)
    );
    let types = rt_types_after_progress(&world, job.id);
    assert_eq!(types, [EventType::PhaseFailed, EventType::JobFailed]);
    rt.shutdown(Duration::from_secs(1)).await;
}

/// The events of `job` after its last progress event.
fn rt_types_after_progress(world: &World, job: jobqueue_core::JobId) -> Vec<EventType> {
    let types = world.events.types_of(job);
    let last = types
        .iter()
        .rposition(|t| *t == EventType::PhaseProgress)
        .expect("a progress event");
    types[last + 1..].to_vec()
}

/// Real time on two worker threads: a phase that blocks its thread cannot be
/// preempted, so only a runner on another thread can keep its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_that_blocks_its_thread_still_times_out() {
    let world = World::new();
    let returned = Arc::new((AtomicBool::new(false), Notify::new()));
    let done = returned.clone();
    let blocking = phase_fn("blocking", move |ctx| {
        let done = done.clone();
        async move {
            ctx.report(10, None);
            std::thread::sleep(Duration::from_secs(2));
            ctx.report(99, Some("too late"));
            done.0.store(true, Ordering::SeqCst);
            done.1.notify_one();
            Ok::<_, PhaseError>(json!("too late"))
        }
    });
    let pipeline = Pipeline::new("p").phase_with_timeout(blocking, Duration::from_millis(300));
    let rt = world.start(vec![pipeline], world.config()).await;
    let job = world.enqueue(&rt, NewJob::new("p").max_attempts(1)).await;

    world.events.wait_for(job.id, EventType::JobFailed).await;
    assert!(
        !returned.0.load(Ordering::SeqCst),
        "the job failed at its deadline, while its phase was still blocked"
    );
    within_deadline("the blocked phase to return", returned.1.notified()).await;
    let failed = world.job(job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.phases[0].status, PhaseStatus::Failed);
    assert_eq!(
        failed.phases[0].error.as_deref(),
        Some("phase timed out after 300ms")
    );
    assert_eq!(
        failed.phases[0].result, None,
        "the late result is discarded"
    );
    assert_eq!(
        failed.phases[0].progress.as_ref().map(|p| p.percent),
        Some(10),
        "progress reported after the timeout is not persisted"
    );
    assert_eq!(
        rt_types_after_progress(&world, job.id),
        [EventType::PhaseFailed, EventType::JobFailed]
    );
    rt.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_phase_fails_with_its_message() {
    let world = World::new();
    let boom = phase_fn("boom", |_ctx| async move {
        if true {
            panic!("kaboom");
        }
        Ok::<_, PhaseError>(Value::Null)
    });
    let rt = world
        .start(vec![Pipeline::new("p").phase(boom)], world.config())
        .await;
    let job = world.enqueue(&rt, NewJob::new("p").max_attempts(1)).await;
    world.events.wait_for(job.id, EventType::JobFailed).await;
    let failed = world.job(job.id).await;
    assert_eq!(
        failed.phases[0].error.as_deref(),
        Some("phase panicked: kaboom")
    );
    rt.shutdown(Duration::from_secs(1)).await;
}

/// JSON arrays nested `depth` levels deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
}

#[tokio::test(start_paused = true)]
async fn a_result_the_store_refuses_fails_the_job_for_good() {
    let world = World::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let deep = phase_fn("deep", move |_ctx| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, PhaseError>(nested(100)) }
    });
    let rt = world
        .start(vec![Pipeline::new("p").phase(deep)], world.config())
        .await;
    let job = world.enqueue(&rt, NewJob::new("p").max_attempts(3)).await;

    world.events.wait_for(job.id, EventType::JobFailed).await;
    let failed = world.job(job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.phases[0].status, PhaseStatus::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.message.contains("refused") && error.message.contains("nested deeper than 64"),
        "{}",
        error.message
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a refused result is not retried"
    );
    rt.shutdown(Duration::from_secs(1)).await;
}

/// Two one-phase jobs at concurrency 1, with the first job's completion
/// written but its answer held by the store: the second starts at once when
/// the store commits writes in order, and only after the answer otherwise.
async fn second_job_starts_while_the_first_completion_is_answered(ordered: bool) -> bool {
    let world = World::new();
    if ordered {
        world.store.report_ordered_writes();
    }
    let noop = phase_fn("a", |_ctx| async { Ok::<_, PhaseError>(Value::Null) });
    let config = jobqueue_runtime::RuntimeConfig {
        concurrency: 1,
        ..world.config()
    };
    let rt = world
        .start(vec![Pipeline::new("p").phase(noop)], config)
        .await;
    world.store.hold_completions();
    let first = world.enqueue(&rt, NewJob::new("p").priority(1)).await;
    let second = world.enqueue(&rt, NewJob::new("p")).await;
    world
        .events
        .wait_for(first.id, EventType::JobCompleted)
        .await;
    // Virtual time: an idle runtime jumps ahead, so this only waits for the
    // pump to do what it would do at all.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started_before_the_answer = world.job(second.id).await.status != JobStatus::Queued;
    world.store.release_completions();
    world
        .events
        .wait_for(second.id, EventType::JobCompleted)
        .await;
    assert!(rt.peak_running() <= 1);
    rt.shutdown(Duration::from_secs(1)).await;
    started_before_the_answer
}

#[tokio::test(start_paused = true)]
async fn a_slot_is_free_once_the_last_write_is_handed_to_an_ordered_store() {
    assert!(
        second_job_starts_while_the_first_completion_is_answered(true).await,
        "the slot was freed when the completion was handed over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slot_is_free_only_after_the_last_write_on_other_stores() {
    assert!(
        !second_job_starts_while_the_first_completion_is_answered(false).await,
        "a store that does not commit in order keeps the slot until the answer"
    );
}
