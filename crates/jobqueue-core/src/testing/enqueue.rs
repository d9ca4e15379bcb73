//! Enqueue: a job reads back exactly as `enqueue` returned it, with one
//! `job.created` event; bad input is refused with `Invalid` and writes
//! nothing; a unique key is held while its job is queued or running
//! (`Duplicate` names the holder); a batch is written all or nothing.

use std::time::Duration;

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
