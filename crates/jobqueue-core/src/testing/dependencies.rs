//! Dependencies (`NewJob::depends_on`): a job with dependencies not all
//! completed stays `queued` and is never claimed; it becomes claimable in
//! the commit that completes its last one. When a dependency fails or is
//! cancelled, every job waiting for it is cancelled (`job.cancelled` with a
//! `reason`) or failed (`job.failed`, by its option) in the same commit,
//! transitively. Unknown dependencies, and ones that can never complete,
//! are refused with `Invalid` and write nothing, in a batch too. A job
//! retried by hand waits again; a job never waits for one that is gone.

use serde_json::json;

use super::{Ctx, assert_kind, claimed_ids, complete_phases, events_of, job, snapshot, spec};
use crate::error::{ErrorKind, StoreError};
use crate::event::{Event, EventData};
use crate::id::JobId;
use crate::job::{DependencyFailure, Job, JobError, NewJob};
use crate::machine::JobStatus;
use crate::store::{ClaimRequest, FailureOutcome, Lease};

async fn enqueue_after(ctx: &Ctx, deps: &[JobId]) -> Job {
    let new = spec("p", &["a"]).depends_on(deps.iter().copied());
    ctx.store.enqueue(new).await.unwrap()
}

/// Claims every runnable job, returning the ids in claim order.
async fn runnable(ctx: &Ctx) -> Vec<JobId> {
    claimed_ids(ctx, ClaimRequest::new(100)).await
}

/// Claims exactly the job `id` (it must be the only runnable one) and
/// returns its lease.
async fn claim_only(ctx: &Ctx, id: JobId) -> Lease {
    let claimed = ctx.store.claim(ClaimRequest::new(100)).await.unwrap();
    let ids: Vec<JobId> = claimed.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, [id], "only {id} is runnable");
    claimed[0].lease
}

async fn complete(ctx: &Ctx, lease: &Lease) {
    complete_phases(ctx, lease, 0..1).await;
    ctx.store.complete_job(lease).await.unwrap();
}

/// The last event of job `id`.
async fn last_event(ctx: &Ctx, id: JobId) -> Event {
    events_of(ctx, id).await.pop().unwrap()
}

pub(super) async fn waits_for_every_dependency(ctx: &Ctx) {
    let a = enqueue_after(ctx, &[]).await;
    let b = enqueue_after(ctx, &[]).await;
    // Named twice: counts once.
    let c = enqueue_after(ctx, &[a.id, b.id, a.id]).await;
    assert_eq!(c.status, JobStatus::Queued);
    assert_eq!(job(ctx, c.id).await, c);
    let claimed = ctx.store.claim(ClaimRequest::new(100)).await.unwrap();
    let ids: Vec<JobId> = claimed.iter().map(|x| x.job.id).collect();
    assert_eq!(ids, [a.id, b.id], "c waits for a and b");
    complete(ctx, &claimed[0].lease).await;
    assert!(runnable(ctx).await.is_empty(), "c still waits for b");
    assert_eq!(job(ctx, c.id).await.status, JobStatus::Queued);
    complete(ctx, &claimed[1].lease).await;
    let lease = claim_only(ctx, c.id).await;
    complete(ctx, &lease).await;
    assert_eq!(job(ctx, c.id).await.status, JobStatus::Completed);

    // A dependency that already completed is met.
    let d = enqueue_after(ctx, &[a.id, c.id]).await;
    claim_only(ctx, d.id).await;
}

pub(super) async fn refuses_unknown_and_ended_dependencies(ctx: &Ctx) {
    let failed = enqueue_after(ctx, &[]).await;
    let lease = claim_only(ctx, failed.id).await;
    ctx.store.phase_started(&lease, 0).await.unwrap();
    ctx.store
        .phase_failed(&lease, 0, "boom".into(), FailureOutcome::Fail)
        .await
        .unwrap();
    let cancelled = enqueue_after(ctx, &[]).await;
    ctx.store.request_cancel(cancelled.id).await.unwrap();
    let live = enqueue_after(ctx, &[]).await;

    let before = snapshot(ctx).await;
    let unknown = JobId::new();
    let e = assert_kind(
        ctx.store
            .enqueue(spec("p", &["a"]).depends_on([live.id, unknown]))
            .await,
        ErrorKind::Invalid,
    );
    assert!(e.to_string().contains(&unknown.to_string()), "{e}");
    for ended in [failed.id, cancelled.id] {
        let e = assert_kind(
            ctx.store
                .enqueue(spec("p", &["a"]).depends_on([ended]))
                .await,
            ErrorKind::Invalid,
        );
        assert!(e.to_string().contains(&ended.to_string()), "{e}");
    }
    let batch = vec![
        spec("p", &["a"]).depends_on([live.id]),
        spec("p", &["a"]).depends_on([unknown]),
    ];
    match ctx.store.enqueue_batch(batch).await {
        Err(StoreError::Batch { index, error }) => {
            assert_eq!(index, 1);
            assert_eq!(error.kind(), ErrorKind::Invalid);
        }
        other => panic!("expected a Batch error, got {other:?}"),
    }
    let too_many = NewJob::new("p").depends_on((0..=crate::job::MAX_DEPENDENCIES).map(|_| live.id));
    assert_kind(ctx.store.enqueue(too_many).await, ErrorKind::Invalid);
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused enqueue writes nothing"
    );
}

pub(super) async fn failure_cancels_dependents_transitively(ctx: &Ctx) {
    let a = enqueue_after(ctx, &[]).await;
    let b = enqueue_after(ctx, &[a.id]).await;
    let c = enqueue_after(ctx, &[b.id]).await;
    let d = ctx
        .store
        .enqueue(
            spec("p", &["a"])
                .depends_on([a.id])
                .on_dependency_failure(DependencyFailure::Fail),
        )
        .await
        .unwrap();
    let lease = claim_only(ctx, a.id).await;
    ctx.store.phase_started(&lease, 0).await.unwrap();
    let seq_before = ctx.store.last_seq().await.unwrap();
    ctx.store
        .phase_failed(&lease, 0, "boom".into(), FailureOutcome::Fail)
        .await
        .unwrap();

    let b_now = job(ctx, b.id).await;
    assert_eq!(b_now.status, JobStatus::Cancelled);
    assert!(b_now.finished_at.is_some() && b_now.error.is_none());
    let reason = |dep: JobId, how: &str| Some(format!("dependency {dep} {how}"));
    assert_eq!(
        last_event(ctx, b.id).await.data,
        EventData::Cancelled {
            reason: reason(a.id, "failed")
        }
    );
    assert_eq!(job(ctx, c.id).await.status, JobStatus::Cancelled);
    assert_eq!(
        last_event(ctx, c.id).await.data,
        EventData::Cancelled {
            reason: reason(b.id, "was cancelled")
        }
    );
    let d_now = job(ctx, d.id).await;
    assert_eq!(d_now.status, JobStatus::Failed);
    let error = JobError {
        phase: None,
        message: format!("dependency {} failed", a.id),
        attempt: 0,
    };
    assert_eq!(d_now.error.as_ref(), Some(&error));
    assert_eq!(
        last_event(ctx, d.id).await.data,
        EventData::Failed { error }
    );
    // All in the commit of a's failure: a's events, then its dependents'.
    let after = ctx
        .store
        .events_after(seq_before, Default::default(), 100)
        .await
        .unwrap();
    let jobs: Vec<JobId> = after.iter().filter_map(|e| e.job_id).collect();
    assert_eq!(jobs.len(), 5, "{after:?}");
    assert_eq!(&jobs[..2], [a.id, a.id]);
    assert!(runnable(ctx).await.is_empty());
}

pub(super) async fn cancel_cascades_with_a_reason(ctx: &Ctx) {
    let a = enqueue_after(ctx, &[]).await;
    let b = enqueue_after(ctx, &[a.id]).await;
    ctx.store.request_cancel(a.id).await.unwrap();
    assert_eq!(
        last_event(ctx, a.id).await.data,
        EventData::Cancelled { reason: None },
        "a plain cancel has no reason"
    );
    assert_eq!(
        last_event(ctx, a.id).await.data.to_json(),
        json!({}),
        "and its data stays {{}}"
    );
    assert_eq!(job(ctx, b.id).await.status, JobStatus::Cancelled);
    assert_eq!(
        last_event(ctx, b.id).await.data.to_json(),
        json!({"reason": format!("dependency {} was cancelled", a.id)})
    );
}

pub(super) async fn batch_waits_too(ctx: &Ctx) {
    let a = enqueue_after(ctx, &[]).await;
    let jobs = ctx
        .store
        .enqueue_batch(vec![
            spec("p", &["a"]).depends_on([a.id]),
            spec("p", &["a"]),
            spec("p", &["a"]).depends_on([a.id]),
        ])
        .await
        .unwrap();
    let claimed = ctx.store.claim(ClaimRequest::new(100)).await.unwrap();
    let ids: Vec<JobId> = claimed.iter().map(|x| x.job.id).collect();
    assert_eq!(ids, [a.id, jobs[1].id]);
    complete(ctx, &claimed[0].lease).await;
    assert_eq!(runnable(ctx).await, [jobs[0].id, jobs[2].id]);
}

pub(super) async fn manual_retry_waits_again(ctx: &Ctx) {
    let a = enqueue_after(ctx, &[]).await;
    let b = enqueue_after(ctx, &[a.id]).await;
    ctx.store.request_cancel(a.id).await.unwrap();
    assert_eq!(job(ctx, b.id).await.status, JobStatus::Cancelled);
    // Retried by hand, b waits for a again.
    ctx.store.retry(b.id).await.unwrap();
    assert!(runnable(ctx).await.is_empty(), "b waits for a");
    ctx.store.retry(a.id).await.unwrap();
    let lease = claim_only(ctx, a.id).await;
    complete(ctx, &lease).await;
    claim_only(ctx, b.id).await;

    // A job never waits for one that is gone.
    let x = enqueue_after(ctx, &[]).await;
    let y = enqueue_after(ctx, &[x.id]).await;
    ctx.store.request_cancel(x.id).await.unwrap();
    ctx.store.retry(y.id).await.unwrap();
    assert!(runnable(ctx).await.is_empty(), "y waits for x");
    ctx.store.delete(x.id).await.unwrap();
    claim_only(ctx, y.id).await;
}
