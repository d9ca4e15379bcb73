//! Retention: finished jobs become stale, then deleted; queued and running
//! jobs are never touched, and deleted jobs' webhook deliveries end cleanly.

use std::sync::Arc;
use std::time::Duration;

use jobqueue::core::{AttemptOutcome, DeliveryFilter, DeliveryStatus};
use jobqueue::runtime::{RetentionConfig, run_retention_pass};
use jobqueue::{
    Clock, Endpoint, EventType, JobStatus, JobStore, ManualClock, MemoryStore, NewJob, PhaseError,
    Pipeline, WebhookConfig, phase_fn,
};
use jobqueue_tests::StoreKind;
use proptest::prelude::*;
use serde_json::json;
use tokio::sync::Notify;

use crate::Env;

const HOUR: Duration = Duration::from_secs(3600);
/// Nothing listens on port 1 of loopback: connections are refused.
const DOWN: &str = "http://127.0.0.1:1/hook";

store_tests! {
    async fn stale_then_deleted_and_active_jobs_untouched(kind: StoreKind) {
        let env = Env::new(kind);
        let started = Arc::new(Notify::new());
        let pipelines = vec![
            Pipeline::new("quick").phase(phase_fn("a", |_ctx| async { Ok::<_, PhaseError>(json!(1)) })),
            Pipeline::new("long").phase({
                let started = started.clone();
                phase_fn("wait", move |ctx| {
                    let started = started.clone();
                    async move {
                        started.notify_one();
                        ctx.cancelled().await;
                        Err(PhaseError::retryable("stopped"))
                    }
                })
            }),
        ];
        // Hours on paused time; the SQLite store runs on real time, scaled down.
        let (age, interval) = match kind {
            StoreKind::Memory => (HOUR, Duration::from_secs(60)),
            StoreKind::Sqlite => (Duration::from_millis(300), Duration::from_millis(50)),
        };
        let retention = RetentionConfig { stale_after: age, delete_after: age, interval, batch: 2, ..RetentionConfig::default() };
        // A receiver that is down, with a retry far in the future: the
        // deliveries stay pending while their jobs are deleted.
        let webhooks = WebhookConfig {
            endpoints: vec![Endpoint::new(DOWN, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .retry_schedule([Duration::from_secs(400 * 86_400)])],
            ..WebhookConfig::default()
        };
        let (queue, rec) = env.start_with(pipelines, |b| b.retention(retention).webhooks(webhooks)).await;
        let mut done = Vec::new();
        for _ in 0..5 {
            done.push(queue.enqueue("quick", &json!(null)).await.unwrap().id);
        }
        let running = queue.enqueue("long", &json!(null)).await.unwrap();
        started.notified().await;
        let far = env.clock.now() + Duration::from_secs(365 * 86_400);
        let queued = queue.enqueue_job(NewJob::new("quick").run_at(far)).await.unwrap();
        for id in &done {
            rec.wait_for(*id, EventType::JobStale).await;
        }
        for id in &done {
            rec.wait_for(*id, EventType::JobDeleted).await;
            assert!(queue.get(*id).await.unwrap().is_none());
            assert_eq!(rec.types_of(*id).iter().filter(|t| **t == EventType::JobStale).count(), 1);
        }
        assert_eq!(queue.get(running.id).await.unwrap().unwrap().status, JobStatus::Running);
        assert_eq!(queue.get(queued.id).await.unwrap().unwrap().status, JobStatus::Queued);
        queue.shutdown().await;
        // The deleted jobs' deliveries were kept whole, each with its event,
        // the deletion's own included, and can still end.
        let store = env.store().await;
        for id in &done {
            let deliveries =
                store.deliveries(DeliveryFilter { job: Some(*id), ..DeliveryFilter::default() }).await.unwrap();
            let types: Vec<EventType> = deliveries.iter().map(|d| d.event.event_type()).collect();
            for ty in [EventType::JobCreated, EventType::JobCompleted, EventType::JobStale, EventType::JobDeleted] {
                assert!(types.contains(&ty), "delivery of {ty} kept: {types:?}");
            }
            for d in deliveries {
                assert_eq!(d.status, DeliveryStatus::Pending, "the receiver was down");
                assert_eq!(d.url, DOWN);
                let r = store.record_attempt(d.id, AttemptOutcome::Delivered { status: 200 }).await.unwrap();
                assert_eq!(r.status, DeliveryStatus::Delivered);
            }
        }
    }
}

/// What a generated job becomes before retention runs.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Complete,
    Fail,
    Cancel,
    StayQueued,
    StayRunning,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        Just(Fate::Complete),
        Just(Fate::Fail),
        Just(Fate::Cancel),
        Just(Fate::StayQueued),
        Just(Fate::StayRunning),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Over random job sets with random ages, a retention pass marks stale
    /// exactly the finished jobs older than `stale_after`, deletes exactly
    /// the stale jobs older than `delete_after`, and leaves queued and
    /// running jobs alone.
    #[test]
    fn retention_touches_only_old_finished_jobs(
        jobs in proptest::collection::vec((fate(), 0u64..10), 1..25),
        passes in proptest::collection::vec(0u64..6, 1..5),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let clock = Arc::new(ManualClock::default());
            let store = MemoryStore::with_clock(clock.clone());
            let config = RetentionConfig { stale_after: 3 * HOUR, delete_after: 2 * HOUR, interval: HOUR, batch: 3, ..RetentionConfig::default() };
            let mut ids = Vec::new();
            for (fate, age_hours) in &jobs {
                let job = store.enqueue(NewJob::new("p").phases(["a"])).await.unwrap();
                if !matches!(fate, Fate::StayQueued) {
                    let c = store.claim(jobqueue::core::ClaimRequest::new(1)).await.unwrap().remove(0);
                    match fate {
                        Fate::Complete => {
                            store.phase_started(&c.lease, 0).await.unwrap();
                            store.phase_completed(&c.lease, 0, json!(1)).await.unwrap();
                            store.complete_job(&c.lease).await.unwrap();
                        }
                        Fate::Fail => {
                            store.phase_started(&c.lease, 0).await.unwrap();
                            store.phase_failed(&c.lease, 0, "x".into(), jobqueue::core::FailureOutcome::Fail).await.unwrap();
                        }
                        Fate::Cancel => {
                            store.request_cancel(job.id).await.unwrap();
                            store.cancel_running(&c.lease).await.unwrap();
                        }
                        _ => {}
                    }
                }
                ids.push(job.id);
                clock.advance(HOUR * (*age_hours as u32));
            }
            for step in passes {
                clock.advance(HOUR * step as u32);
                // Expected from the jobs as they were before this pass.
                let now = clock.now();
                let mut expected = Vec::new();
                for id in &ids {
                    let before = store.job(*id).await.unwrap();
                    expected.push(before.map(|j| {
                        if j.status.is_finished() && j.finished_at.unwrap() < now - config.stale_after {
                            // Marked now; deleted in the same pass only if
                            // delete_after were zero, which it is not.
                            Some(JobStatus::Stale)
                        } else if j.status == JobStatus::Stale && j.stale_at.unwrap() < now - config.delete_after {
                            None
                        } else {
                            Some(j.status)
                        }
                    }));
                }
                run_retention_pass(&store, &*clock, &config).await.unwrap();
                for (id, exp) in ids.iter().zip(expected) {
                    let after = store.job(*id).await.unwrap().map(|j| j.status);
                    let exp = exp.flatten();
                    assert_eq!(after, exp, "job {id}");
                }
            }
        });
    }
}
