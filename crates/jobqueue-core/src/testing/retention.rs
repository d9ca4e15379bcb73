//! Retention and deletion: only old finished jobs are marked stale, oldest
//! first; stale jobs are deleted with all their rows except the
//! `job.deleted` tombstone; a user deletes only finished or stale jobs.

use std::time::Duration;

use super::{Ctx, assert_kind, enqueue, job, run_to_completion, snapshot, types_of};
use crate::clock::Clock;
use crate::error::ErrorKind;
use crate::id::JobId;
use crate::machine::{EventType, JobStatus};
use crate::store::{ClaimRequest, JobFilter};

pub(super) async fn stale_then_deleted(ctx: &Ctx) {
    let s = &ctx.store;
    let done = run_to_completion(ctx, &["a"]).await;
    let cancelled = enqueue(ctx, "p", &["a"]).await;
    s.request_cancel(cancelled.id).await.unwrap();
    let queued = enqueue(ctx, "p", &["a"]).await;
    let running = enqueue(ctx, "p", &["a"]).await;
    // Claim both, then put `queued` back through its lease.
    let claimed = s.claim(ClaimRequest::new(2)).await.unwrap();
    for c in &claimed {
        if c.job.id == queued.id {
            s.interrupt(&c.lease).await.unwrap();
        }
    }
    assert_eq!(job(ctx, running.id).await.status, JobStatus::Running);
    ctx.clock.advance(Duration::from_secs(3600));
    let recent = run_to_completion(ctx, &["a"]).await;
    let cutoff = ctx.clock.now() - Duration::from_secs(60);
    // Nothing finished before a cutoff in the past of every job.
    assert!(
        s.mark_stale(done.finished_at.unwrap(), 10)
            .await
            .unwrap()
            .is_empty(),
        "strictly before"
    );
    let marked = s.mark_stale(cutoff, 1).await.unwrap();
    assert_eq!(marked, [done.id], "oldest first, at most limit");
    let marked = s.mark_stale(cutoff, 10).await.unwrap();
    assert_eq!(marked, [cancelled.id]);
    let stale = job(ctx, done.id).await;
    assert_eq!(stale.status, JobStatus::Stale);
    assert_eq!(stale.stale_at, Some(ctx.clock.now()));
    assert_eq!(
        *types_of(ctx, done.id).await.last().unwrap(),
        EventType::JobStale
    );
    for id in [queued.id, running.id, recent.id] {
        assert_ne!(
            job(ctx, id).await.status,
            JobStatus::Stale,
            "retention touches only old finished jobs"
        );
    }
    // Stale jobs are deleted once stale long enough.
    assert!(
        s.delete_stale(ctx.clock.now(), 10)
            .await
            .unwrap()
            .is_empty(),
        "strictly before"
    );
    ctx.clock.advance(Duration::from_secs(10));
    let deleted = s.delete_stale(ctx.clock.now(), 10).await.unwrap();
    assert_eq!(deleted.len(), 2);
    for id in [done.id, cancelled.id] {
        assert!(s.job(id).await.unwrap().is_none());
        assert_eq!(
            types_of(ctx, id).await,
            [EventType::JobDeleted],
            "only the tombstone stays"
        );
    }
    for id in [queued.id, running.id, recent.id] {
        assert!(s.job(id).await.unwrap().is_some());
    }
    assert_eq!(job(ctx, queued.id).await.status, JobStatus::Queued);
    assert_eq!(job(ctx, running.id).await.status, JobStatus::Running);
}

pub(super) async fn delete_by_user(ctx: &Ctx) {
    let s = &ctx.store;
    let done = run_to_completion(ctx, &["a"]).await;
    let queued = enqueue(ctx, "p", &["a"]).await;
    let before = snapshot(ctx).await;
    assert_kind(s.delete(queued.id).await, ErrorKind::Conflict);
    assert_kind(s.delete(JobId::new()).await, ErrorKind::NotFound);
    assert_eq!(snapshot(ctx).await, before);
    s.delete(done.id).await.unwrap();
    assert!(s.job(done.id).await.unwrap().is_none());
    assert_kind(s.delete(done.id).await, ErrorKind::NotFound);
    let list = s.list(JobFilter::default()).await.unwrap();
    assert_eq!(
        list.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [queued.id]
    );
}
