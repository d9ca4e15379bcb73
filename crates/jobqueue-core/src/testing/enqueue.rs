//! Enqueue: a job reads back exactly as `enqueue` returned it, with one
//! `job.created` event; bad input is refused with `Invalid` and writes
//! nothing; a unique key is held while its job is queued or running
//! (`Duplicate` names the holder), also a key made from the input; a key
//! with a unique period is held by every job created in the same window, in
//! any state, until it is deleted (`DuplicateInPeriod`); a batch is written
//! all or nothing.

use std::time::Duration;

use serde_json::json;

use super::{Ctx, assert_kind, claim_one, complete_phases, enqueue, job, snapshot, spec};
use crate::clock::Clock;
use crate::error::{ErrorKind, StoreError};
use crate::event::EventData;
use crate::id::JobId;
use crate::job::NewJob;
use crate::machine::{JobStatus, PhaseStatus};
use crate::store::EventFilter;

pub(super) async fn round_trip(ctx: &Ctx) {
    let now = ctx.clock.now();
    let j = ctx
        .store
        .enqueue(
            spec("build", &["fetch", "compile"])
                .priority(5)
                .unique_key("k1")
                .max_attempts(4),
        )
        .await
        .unwrap();
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!((j.attempt, j.max_attempts, j.priority), (0, 4, 5));
    assert_eq!((j.created_at, j.run_at), (now, now));
    assert_eq!(j.unique_key.as_deref(), Some("k1"));
    assert_eq!(
        j.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["fetch", "compile"]
    );
    assert!(
        j.phases
            .iter()
            .all(|p| p.status == PhaseStatus::Pending && p.attempts == 0)
    );
    assert!(
        j.lease.is_none()
            && j.error.is_none()
            && j.interrupted.is_none()
            && j.finished_at.is_none()
    );
    assert_eq!(
        job(ctx, j.id).await,
        j,
        "read back equals what enqueue returned"
    );
    assert!(ctx.store.job(JobId::new()).await.unwrap().is_none());
    let events = ctx
        .store
        .events_after(0, EventFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].job_id, Some(j.id));
    assert_eq!(events[0].pipeline, "build");
    assert_eq!(events[0].at, now);
    assert_eq!(
        events[0].data,
        EventData::Created {
            run_at: now,
            priority: 5
        }
    );
    let later = now + Duration::from_secs(60);
    let k = ctx
        .store
        .enqueue(spec("build", &["a"]).run_at(later))
        .await
        .unwrap();
    assert_eq!(k.run_at, later);
}

pub(super) async fn refuses_bad_input(ctx: &Ctx) {
    enqueue(ctx, "p", &["a"]).await;
    let before = snapshot(ctx).await;
    let bad = [
        NewJob::new(""),
        NewJob::new("p").max_attempts(0),
        spec("p", &["a", "a"]),
        spec("p", &["a", ""]),
        spec("p", &["a"]).unique_key(""),
        spec("p", &["a"]).webhook_url("ftp://example.com/x"),
        NewJob::new("x".repeat(10_000)),
    ];
    for b in bad {
        assert_kind(ctx.store.enqueue(b).await, ErrorKind::Invalid);
    }
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused enqueue changes nothing"
    );
}

pub(super) async fn unique_keys(ctx: &Ctx) {
    let first = ctx
        .store
        .enqueue(spec("p", &["a"]).unique_key("k"))
        .await
        .unwrap();
    let before = snapshot(ctx).await;
    let err = assert_kind(
        ctx.store.enqueue(spec("p", &["a"]).unique_key("k")).await,
        ErrorKind::Duplicate,
    );
    assert!(matches!(err, StoreError::Duplicate { existing, .. } if existing == first.id));
    assert_eq!(snapshot(ctx).await, before);
    // Other keys are free; running still holds the key.
    ctx.store
        .enqueue(spec("p", &["a"]).unique_key("other"))
        .await
        .unwrap();
    let c = claim_one(ctx).await;
    assert_eq!(c.job.id, first.id);
    assert_kind(
        ctx.store.enqueue(spec("p", &["a"]).unique_key("k")).await,
        ErrorKind::Duplicate,
    );
    // Once finished, the key is free again.
    complete_phases(ctx, &c.lease, 0..1).await;
    ctx.store.complete_job(&c.lease).await.unwrap();
    let again = ctx
        .store
        .enqueue(spec("p", &["a"]).unique_key("k"))
        .await
        .unwrap();
    assert_ne!(again.id, first.id);
}

pub(super) async fn unique_by_input(ctx: &Ctx) {
    let first = ctx
        .store
        .enqueue(
            spec("p", &["a"])
                .input(json!({"a": 1, "b": 2}))
                .unique_by_input(),
        )
        .await
        .unwrap();
    let key = first.unique_key.clone().unwrap();
    assert_eq!(key, crate::unique::input_key("p", &json!({"a": 1, "b": 2})));
    assert_eq!(
        job(ctx, first.id).await.unique_key.as_deref(),
        Some(key.as_str())
    );
    let before = snapshot(ctx).await;
    // The same JSON, its keys in another order: the same key.
    let err = assert_kind(
        ctx.store
            .enqueue(
                spec("p", &["a"])
                    .input(json!({"b": 2, "a": 1}))
                    .unique_by_input(),
            )
            .await,
        ErrorKind::Duplicate,
    );
    assert!(matches!(err, StoreError::Duplicate { existing, .. } if existing == first.id));
    assert_eq!(snapshot(ctx).await, before);
    // Another input, or another pipeline, is another key.
    ctx.store
        .enqueue(spec("p", &["a"]).input(json!({"a": 2})).unique_by_input())
        .await
        .unwrap();
    ctx.store
        .enqueue(
            spec("q", &["a"])
                .input(json!({"a": 1, "b": 2}))
                .unique_by_input(),
        )
        .await
        .unwrap();
    // A key given and one made from the input exclude each other.
    let both = spec("p", &["a"]).unique_key("k").unique_by_input();
    assert_kind(ctx.store.enqueue(both).await, ErrorKind::Invalid);
}

pub(super) async fn unique_periods(ctx: &Ctx) {
    let hour = Duration::from_secs(3600);
    ctx.clock.set(time::macros::datetime!(2026-12-02 10:10 UTC));
    let keyed = || spec("p", &["a"]).unique_key("k").unique_for(hour);
    let first = ctx.store.enqueue(keyed()).await.unwrap();
    assert_eq!(
        first.period_key.as_deref(),
        Some("k@2026-12-02T10:00:00Z/3600s")
    );
    assert_eq!(job(ctx, first.id).await.period_key, first.period_key);
    // Finished, it frees the key but not the window.
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    ctx.store.complete_job(&c.lease).await.unwrap();
    ctx.clock.advance(Duration::from_secs(49 * 60 + 59));
    let before = snapshot(ctx).await;
    let err = assert_kind(ctx.store.enqueue(keyed()).await, ErrorKind::Duplicate);
    assert!(
        matches!(&err, StoreError::DuplicateInPeriod { existing, .. } if *existing == first.id),
        "{err}"
    );
    assert_eq!(err.duplicate_of(), Some(first.id));
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused enqueue changes nothing"
    );
    // Without the period, only the active rule holds.
    let plain = ctx
        .store
        .enqueue(spec("p", &["a"]).unique_key("k"))
        .await
        .unwrap();
    ctx.store.request_cancel(plain.id).await.unwrap();
    // The next window starts at 11:00 sharp.
    ctx.clock.advance(Duration::from_secs(1));
    let second = ctx.store.enqueue(keyed()).await.unwrap();
    assert_eq!(
        second.period_key.as_deref(),
        Some("k@2026-12-02T11:00:00Z/3600s")
    );
    // Queued, it holds the key itself.
    let err = assert_kind(ctx.store.enqueue(keyed()).await, ErrorKind::Duplicate);
    assert!(matches!(err, StoreError::Duplicate { existing, .. } if existing == second.id));
    // Cancelled, it still holds the window; deleted, it frees it.
    ctx.store.request_cancel(second.id).await.unwrap();
    let err = assert_kind(ctx.store.enqueue(keyed()).await, ErrorKind::Duplicate);
    assert_eq!(err.duplicate_of(), Some(second.id));
    // Another period is another window key.
    let daily = spec("p", &["a"]).unique_key("k").unique_for(hour * 24);
    let day = ctx.store.enqueue(daily).await.unwrap();
    ctx.store.request_cancel(day.id).await.unwrap();
    ctx.store.delete(second.id).await.unwrap();
    let third = ctx.store.enqueue(keyed()).await.unwrap();
    assert_eq!(third.period_key, second.period_key);
    // A batch is refused at the job whose window is held.
    ctx.store.request_cancel(third.id).await.unwrap();
    let r = ctx
        .store
        .enqueue_batch(vec![spec("p", &["a"]), keyed()])
        .await;
    let err = assert_kind(r, ErrorKind::Duplicate);
    assert!(matches!(err, StoreError::Batch { index: 1, .. }), "{err}");
    // By input, within a period.
    let by_input = || {
        spec("p", &["a"])
            .input(json!({"x": 1}))
            .unique_by_input()
            .unique_for(hour)
    };
    let j = ctx.store.enqueue(by_input()).await.unwrap();
    ctx.store.request_cancel(j.id).await.unwrap();
    assert_kind(ctx.store.enqueue(by_input()).await, ErrorKind::Duplicate);
    // Bad periods and a period without a key are refused.
    for bad in [
        spec("p", &["a"]).unique_for(hour),
        spec("p", &["a"]).unique_key("z").unique_for(Duration::ZERO),
        spec("p", &["a"])
            .unique_key("z")
            .unique_for(Duration::from_millis(1500)),
    ] {
        assert_kind(ctx.store.enqueue(bad).await, ErrorKind::Invalid);
    }
}

pub(super) async fn batch_is_all_or_nothing(ctx: &Ctx) {
    let held = ctx
        .store
        .enqueue(spec("p", &["a"]).unique_key("held"))
        .await
        .unwrap();
    let before = snapshot(ctx).await;
    let r = ctx
        .store
        .enqueue_batch(vec![spec("p", &["a"]), spec("p", &["a"]), NewJob::new("")])
        .await;
    let err = assert_kind(r, ErrorKind::Invalid);
    assert!(
        matches!(err, StoreError::Batch { index: 2, .. }),
        "names the bad job: {err}"
    );
    let r = ctx
        .store
        .enqueue_batch(vec![
            spec("p", &["a"]).unique_key("x"),
            spec("p", &["a"]).unique_key("x"),
        ])
        .await;
    let err = assert_kind(r, ErrorKind::Duplicate);
    assert!(matches!(err, StoreError::Batch { index: 1, .. }), "{err}");
    let r = ctx
        .store
        .enqueue_batch(vec![
            spec("p", &["a"]),
            spec("p", &["a"]).unique_key("held"),
        ])
        .await;
    let err = assert_kind(r, ErrorKind::Duplicate);
    assert!(
        matches!(&err, StoreError::Batch { index: 1, error } if matches!(**error, StoreError::Duplicate { existing, .. } if existing == held.id))
    );
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused batch writes nothing"
    );
    let jobs = ctx
        .store
        .enqueue_batch(vec![spec("p", &["a"]), spec("q", &["b"]), spec("r", &[])])
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3);
    let events = ctx
        .store
        .events_after(before.1, EventFilter::default(), 10)
        .await
        .unwrap();
    let ids: Vec<JobId> = events.iter().filter_map(|e| e.job_id).collect();
    assert_eq!(
        ids,
        jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        "one job.created each, in batch order"
    );
    for j in &jobs {
        assert_eq!(&job(ctx, j.id).await, j);
    }
    assert!(ctx.store.enqueue_batch(vec![]).await.unwrap().is_empty());
}
