//! Failure, cancel and retry: an automatic retry queues the job at its
//! `run_at` and resumes at the failed phase; a permanent failure fails the
//! job (`job.phase.failed`, then `job.failed`); a job fails outside any
//! phase; a queued job is cancelled at once, a running one is flagged for its
//! worker; a manual retry requeues a failed or cancelled job with a fresh
//! attempt budget, unless another job holds its unique key.

use std::time::Duration;

use super::{
    Ctx, assert_kind, claim_one, complete_phases, enqueue, events_of, job, run_to_completion,
    snapshot, spec, types_of,
};
use crate::clock::Clock;
use crate::error::ErrorKind;
use crate::event::EventData;
use crate::id::JobId;
use crate::job::{JobError, NewJob};
use crate::machine::{EventType, JobStatus, PhaseStatus};
use crate::store::{CancelOutcome, ClaimRequest, FailureOutcome};

pub(super) async fn retry_resumes_at_failed_phase(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["a", "b", "c"]).await;
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    ctx.store.phase_started(&c.lease, 1).await.unwrap();
    let at = ctx.clock.now() + Duration::from_secs(5);
    let after = ctx
        .store
        .phase_failed(&c.lease, 1, "timeout".into(), FailureOutcome::RetryAt(at))
        .await
        .unwrap();
    assert_eq!(after.status, JobStatus::Queued);
    assert_eq!(after.run_at, at);
    assert!(after.lease.is_none() && after.error.is_none() && after.finished_at.is_none());
    assert_eq!(after.phases[1].status, PhaseStatus::Failed);
    assert_eq!(after.phases[1].error.as_deref(), Some("timeout"));
    assert_eq!(job(ctx, j.id).await, after);
    let last = events_of(ctx, j.id).await.pop().unwrap();
    assert_eq!(
        last.data,
        EventData::PhaseFailed {
            phase: "b".into(),
            index: 1,
            error: "timeout".into(),
            retry_at: Some(at)
        }
    );
    assert!(
        ctx.store
            .claim(ClaimRequest::new(5))
            .await
            .unwrap()
            .is_empty(),
        "not before retry_at"
    );
    ctx.clock.advance(Duration::from_secs(5));
    let c2 = claim_one(ctx).await;
    assert_eq!((c2.job.attempt, c2.lease.attempt), (2, 2));
    assert_eq!(
        c2.job.first_incomplete_phase(),
        Some(1),
        "resumes at the failed phase"
    );
    assert_eq!(c2.job.results().len(), 1);
    complete_phases(ctx, &c2.lease, 1..3).await;
    let done = ctx.store.complete_job(&c2.lease).await.unwrap();
    assert_eq!(
        done.phases.iter().map(|p| p.attempts).collect::<Vec<_>>(),
        [1, 2, 1]
    );
}

pub(super) async fn permanent_failure(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["a", "b"]).await;
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    ctx.store.phase_started(&c.lease, 1).await.unwrap();
    let failed = ctx
        .store
        .phase_failed(&c.lease, 1, "bad input".into(), FailureOutcome::Fail)
        .await
        .unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(
        failed.error,
        Some(JobError {
            phase: Some("b".into()),
            message: "bad input".into(),
            attempt: 1
        })
    );
    assert_eq!(failed.finished_at, Some(ctx.clock.now()));
    assert!(failed.lease.is_none());
    assert_eq!(job(ctx, j.id).await, failed);
    let evs = events_of(ctx, j.id).await;
    let tail: Vec<EventData> = evs[evs.len() - 2..]
        .iter()
        .map(|e| e.data.clone())
        .collect();
    assert_eq!(
        tail,
        [
            EventData::PhaseFailed {
                phase: "b".into(),
                index: 1,
                error: "bad input".into(),
                retry_at: None
            },
            EventData::Failed {
                error: failed.error.clone().unwrap()
            },
        ]
    );
    assert!(
        ctx.store
            .claim(ClaimRequest::new(5))
            .await
            .unwrap()
            .is_empty()
    );
}

pub(super) async fn fail_job_without_phases(ctx: &Ctx) {
    let j = ctx.store.enqueue(NewJob::new("unknown")).await.unwrap();
    assert!(j.phases.is_empty());
    let c = claim_one(ctx).await;
    let err = JobError {
        phase: None,
        message: "unknown pipeline \"unknown\"".into(),
        attempt: 1,
    };
    let failed = ctx.store.fail_job(&c.lease, err.clone()).await.unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error, Some(err.clone()));
    assert_eq!(job(ctx, j.id).await, failed);
    let last = events_of(ctx, j.id).await.pop().unwrap();
    assert_eq!(last.data, EventData::Failed { error: err });
    // fail_job on a running phase fails that phase too.
    let k = enqueue(ctx, "p", &["a"]).await;
    let c = claim_one(ctx).await;
    ctx.store.phase_started(&c.lease, 0).await.unwrap();
    let err = JobError {
        phase: Some("a".into()),
        message: "attempt timed out".into(),
        attempt: 1,
    };
    let f = ctx.store.fail_job(&c.lease, err).await.unwrap();
    assert_eq!(f.phases[0].status, PhaseStatus::Failed);
    assert_eq!(job(ctx, k.id).await, f);
}

pub(super) async fn cancel(ctx: &Ctx) {
    let s = &ctx.store;
    let queued = enqueue(ctx, "p", &["a"]).await;
    match s.request_cancel(queued.id).await.unwrap() {
        CancelOutcome::Cancelled(j) => {
            assert_eq!(j.status, JobStatus::Cancelled);
            assert_eq!(j.finished_at, Some(ctx.clock.now()));
            assert_eq!(job(ctx, queued.id).await, j);
        }
        other => panic!("queued job is cancelled at once, got {other:?}"),
    }
    assert_eq!(
        types_of(ctx, queued.id).await,
        [EventType::JobCreated, EventType::JobCancelled]
    );
    let before = snapshot(ctx).await;
    assert_kind(s.request_cancel(queued.id).await, ErrorKind::Conflict);
    assert_kind(s.request_cancel(JobId::new()).await, ErrorKind::NotFound);
    assert_eq!(snapshot(ctx).await, before);

    let running = enqueue(ctx, "p", &["a", "b"]).await;
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    s.phase_started(&c.lease, 1).await.unwrap();
    assert!(
        !s.heartbeat(&c.lease, Duration::from_secs(30))
            .await
            .unwrap()
    );
    match s.request_cancel(running.id).await.unwrap() {
        CancelOutcome::Requested(j) => {
            assert_eq!(j.status, JobStatus::Running);
            assert!(j.cancel_requested);
        }
        other => panic!("running job is flagged, got {other:?}"),
    }
    assert!(
        s.heartbeat(&c.lease, Duration::from_secs(30))
            .await
            .unwrap(),
        "heartbeat reports the request"
    );
    let done = s.cancel_running(&c.lease).await.unwrap();
    assert_eq!(done.status, JobStatus::Cancelled);
    assert_eq!(done.phases[0].status, PhaseStatus::Completed);
    assert_eq!(done.phases[1].status, PhaseStatus::Cancelled);
    assert!(done.lease.is_none());
    assert_eq!(job(ctx, running.id).await, done);
    assert_eq!(
        *types_of(ctx, running.id).await.last().unwrap(),
        EventType::JobCancelled
    );
}

pub(super) async fn manual_retry(ctx: &Ctx) {
    let s = &ctx.store;
    let j = ctx
        .store
        .enqueue(spec("p", &["a", "b"]).unique_key("k").max_attempts(1))
        .await
        .unwrap();
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    s.phase_started(&c.lease, 1).await.unwrap();
    s.phase_failed(&c.lease, 1, "nope".into(), FailureOutcome::Fail)
        .await
        .unwrap();
    // Someone else takes the key meanwhile: the retry is refused.
    let other = ctx
        .store
        .enqueue(spec("p", &["a"]).unique_key("k"))
        .await
        .unwrap();
    let before = snapshot(ctx).await;
    assert_kind(s.retry(j.id).await, ErrorKind::Duplicate);
    assert_eq!(snapshot(ctx).await, before);
    s.request_cancel(other.id).await.unwrap();
    let r = s.retry(j.id).await.unwrap();
    assert_eq!(r.status, JobStatus::Queued);
    assert_eq!(
        r.attempt, 0,
        "a manual retry gives the whole attempt budget again"
    );
    assert!(r.error.is_none() && r.finished_at.is_none());
    assert_eq!(r.run_at, ctx.clock.now());
    assert_eq!(job(ctx, j.id).await, r);
    let last = events_of(ctx, j.id).await.pop().unwrap();
    assert_eq!(
        last.data,
        EventData::Retried {
            from_phase: Some("b".into())
        }
    );
    let c = claim_one(ctx).await;
    assert_eq!(c.job.attempt, 1);
    assert_eq!(c.job.first_incomplete_phase(), Some(1));
    // Only failed and cancelled jobs can be retried.
    let before = snapshot(ctx).await;
    assert_kind(s.retry(j.id).await, ErrorKind::Conflict);
    assert_kind(s.retry(JobId::new()).await, ErrorKind::NotFound);
    let done = run_to_completion(ctx, &["a"]).await;
    let before2 = snapshot(ctx).await;
    assert_kind(s.retry(done.id).await, ErrorKind::Conflict);
    assert_eq!(snapshot(ctx).await, before2);
    assert_ne!(before, before2);
    // `other` was cancelled, but `j` holds the key again now.
    assert_kind(s.retry(other.id).await, ErrorKind::Duplicate);
    // A cancelled job can be retried.
    let c = enqueue(ctx, "p", &["a"]).await;
    s.request_cancel(c.id).await.unwrap();
    let cancelled = s.retry(c.id).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Queued);
}
