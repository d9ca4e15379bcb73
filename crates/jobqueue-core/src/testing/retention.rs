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

/// Pruning removes the history retention no longer needs, oldest first and
/// at most `limit` of each kind: ended deliveries and the `job.deleted`
/// events of deleted jobs. Pending deliveries, the events of jobs that
/// still exist, and the sequence counter are left alone.
pub(super) async fn prune_removes_old_history_only(ctx: &Ctx) {
    use crate::outbox::{AttemptOutcome, DeliveryFilter, DeliveryStatus, WebhookRoute};
    use crate::store::{EventFilter, Pruned};
    let s = &ctx.store;
    s.set_webhook_routes(vec![WebhookRoute {
        url: "https://hook.example/".into(),
        events: Some(vec![EventType::JobCompleted, EventType::JobDeleted]),
    }]);
    let old = run_to_completion(ctx, &["a"]).await;
    let kept = run_to_completion(ctx, &["a"]).await;
    s.delete(old.id).await.unwrap();
    // Deliveries: old's completion delivered, its deletion failed; kept's
    // completion still pending.
    for d in s.deliveries(DeliveryFilter::default()).await.unwrap() {
        let outcome = match (d.job_id == Some(old.id), d.event.event_type()) {
            (true, EventType::JobCompleted) => AttemptOutcome::Delivered { status: 200 },
            (true, _) => AttemptOutcome::Failed {
                status: Some(410),
                error: "gone".into(),
            },
            (false, _) => continue,
        };
        s.record_attempt(d.id, outcome).await.unwrap();
    }
    let last = s.last_seq().await.unwrap();
    ctx.clock.advance(Duration::from_secs(3600));
    let recent = run_to_completion(ctx, &["a"]).await;
    s.delete(recent.id).await.unwrap();
    let cutoff = ctx.clock.now() - Duration::from_secs(60);
    assert_eq!(
        s.prune(cutoff, 1).await.unwrap(),
        Pruned {
            deliveries: 1,
            tombstones: 1
        },
        "at most limit of each"
    );
    assert_eq!(
        s.prune(cutoff, 10).await.unwrap(),
        Pruned {
            deliveries: 1,
            tombstones: 0
        }
    );
    assert_eq!(s.prune(cutoff, 10).await.unwrap(), Pruned::default());
    // What is left: kept's pending delivery, recent's two, every event of
    // the live job, recent's tombstone; the counter did not go back.
    let left = s.deliveries(DeliveryFilter::default()).await.unwrap();
    assert!(left.iter().all(|d| d.job_id != Some(old.id)));
    assert!(
        left.iter()
            .any(|d| d.job_id == Some(kept.id) && d.status == DeliveryStatus::Pending)
    );
    assert!(types_of(ctx, old.id).await.is_empty(), "tombstone pruned");
    assert_eq!(types_of(ctx, recent.id).await, [EventType::JobDeleted]);
    assert!(types_of(ctx, kept.id).await.len() >= 5);
    let after = s.last_seq().await.unwrap();
    assert!(after > last);
    let next = enqueue(ctx, "p", &["a"]).await;
    let events = s
        .events_after(
            after,
            EventFilter {
                job: Some(next.id),
                ..EventFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(events[0].seq, after + 1, "numbers are never reused");
}
