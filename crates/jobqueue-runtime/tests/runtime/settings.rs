//! Settings that used to panic a background task: each is refused where it
//! is built with an error that names it, or handled with checked time
//! arithmetic.

use std::time::Duration;

use jobqueue_core::{EventType, JobStatus, NewJob, RetryPolicy};
use jobqueue_runtime::{
    PhaseError, Pipeline, Pipelines, RetentionConfig, RetentionPass, Runtime, RuntimeConfig,
    StartError, phase_fn, run_retention_pass,
};
use serde_json::json;

use crate::support::World;

fn ok_phase() -> impl jobqueue_runtime::Phase {
    phase_fn("work", |ctx| async move {
        ctx.report(10, None);
        ctx.report(20, Some("almost"));
        Ok::<_, PhaseError>(json!("done"))
    })
}

type Spoiler = (&'static str, fn(&mut RuntimeConfig));

#[tokio::test(start_paused = true)]
async fn start_refuses_settings_that_would_panic_later() {
    let world = World::new();
    let spoilers: [Spoiler; 10] = [
        ("concurrency", |c| c.concurrency = 0),
        ("heartbeat", |c| {
            // What a lease of a few nanoseconds gives with heartbeat = lease / 3.
            c.lease = Duration::from_nanos(2);
            c.heartbeat = c.lease / 3;
        }),
        ("heartbeat", |c| c.heartbeat = c.lease),
        ("lease", |c| c.lease = Duration::MAX),
        ("poll_interval", |c| c.poll_interval = Duration::ZERO),
        ("progress_interval", |c| {
            c.progress_interval = Duration::ZERO
        }),
        ("retry", |c| c.retry.multiplier = f64::NAN),
        ("retry", |c| c.retry.max_attempts = 0),
        ("retention", |c| {
            c.retention = Some(RetentionConfig {
                interval: Duration::ZERO,
                ..RetentionConfig::default()
            });
        }),
        ("retention", |c| {
            c.retention = Some(RetentionConfig {
                batch: 0,
                ..RetentionConfig::default()
            });
        }),
    ];
    for (setting, spoil) in spoilers {
        let mut config = world.config();
        spoil(&mut config);
        let pipelines = Pipelines::new([Pipeline::new("p").phase(ok_phase())]).unwrap();
        let started = Runtime::start(world.store.clone(), pipelines, config.clone()).await;
        match started {
            Err(StartError::Config(message)) => {
                assert!(message.contains(setting), "{setting}: {message}");
            }
            Err(e) => panic!("{setting}: {e}"),
            Ok(rt) => panic!("{setting}: started with {:?}", rt.config()),
        }
    }
}

#[test]
fn pipelines_refuse_a_bad_retry_policy() {
    let policy = RetryPolicy {
        jitter: 2.0,
        ..RetryPolicy::default()
    };
    let err = Pipelines::new([Pipeline::new("p").phase(ok_phase()).retry(policy)]).unwrap_err();
    assert!(err.contains("\"p\"") && err.contains("jitter"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_past_year_9999_fails_the_job_clearly() {
    let world = World::new();
    let config = RuntimeConfig {
        retry: RetryPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
            ..RetryPolicy::default()
        },
        ..world.config()
    };
    let flaky = phase_fn("flaky", |_ctx| async move {
        Err::<serde_json::Value, _>(PhaseError::retryable("network blip"))
    });
    let rt = world
        .start(vec![Pipeline::new("p").phase(flaky)], config)
        .await;
    let job = world.enqueue(&rt, NewJob::new("p").max_attempts(3)).await;

    world.events.wait_for(job.id, EventType::JobFailed).await;
    let failed = world.job(job.id).await;
    assert_eq!(failed.attempt, 1, "no retry was scheduled");
    let message = failed.error.unwrap().message;
    assert!(
        message.starts_with("network blip") && message.contains("9999"),
        "{message}"
    );
    assert!(rt.health().tasks.iter().all(|t| t.panics == 0));
    rt.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn limits_too_long_to_represent_mean_never() {
    let world = World::new();
    let config = RuntimeConfig {
        progress_interval: Duration::MAX,
        stop_grace: Duration::MAX,
        ..world.config()
    };
    let pipeline = Pipeline::new("p")
        .phase_with_timeout(ok_phase(), Duration::MAX)
        .attempt_timeout(Duration::MAX);
    let rt = world.start(vec![pipeline], config).await;
    let job = world.enqueue(&rt, NewJob::new("p")).await;

    world.events.wait_for(job.id, EventType::JobCompleted).await;
    let done = world.job(job.id).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(
        done.phases[0].progress.as_ref().map(|p| p.percent),
        Some(20)
    );
    rt.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn retention_periods_too_long_to_represent_mean_nothing_is_old_enough() {
    let world = World::new();
    let rt = world
        .start(vec![Pipeline::new("p").phase(ok_phase())], world.config())
        .await;
    let job = world.enqueue(&rt, NewJob::new("p")).await;
    world.events.wait_for(job.id, EventType::JobCompleted).await;
    rt.shutdown(Duration::from_secs(1)).await;
    tokio::time::advance(Duration::from_secs(60)).await;

    let never = RetentionConfig {
        stale_after: Duration::MAX,
        delete_after: Duration::MAX,
        prune_after: Duration::MAX,
        ..RetentionConfig::default()
    };
    let pass = run_retention_pass(&*world.store, &*world.clock, &never).await;
    assert_eq!(pass.unwrap(), RetentionPass::default());

    let stale_only = RetentionConfig {
        stale_after: Duration::from_secs(1),
        ..never
    };
    let pass = run_retention_pass(&*world.store, &*world.clock, &stale_only).await;
    assert_eq!(
        pass.unwrap(),
        RetentionPass {
            marked_stale: 1,
            deleted: 0,
            pruned: 0
        }
    );
    assert_eq!(world.job(job.id).await.status, JobStatus::Stale);

    let no_batch = RetentionConfig { batch: 0, ..never };
    let err = run_retention_pass(&*world.store, &*world.clock, &no_batch)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("batch"), "{err}");
}
