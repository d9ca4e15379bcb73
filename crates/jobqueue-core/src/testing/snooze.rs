//! Snooze: the running phase asks to run again later. The job is queued at
//! the time it gives (`job.snoozed`, in the same step), the phase back to
//! `pending` with its checkpoint and progress, the lease released, and the
//! attempt the claim counted given back to the job and the phase, so
//! snoozes never spend `max_attempts`. A snooze under a stale lease, of a
//! phase that is not running, or to a time no store holds is refused and
//! changes nothing.

use std::time::Duration;

use serde_json::json;

use super::{Ctx, assert_kind, claim_one, claimed_ids, enqueue, events_of, job, snapshot};
use crate::clock::Clock;
use crate::error::ErrorKind;
use crate::event::EventData;
use crate::id::{JobId, LeaseToken};
use crate::job::Progress;
use crate::machine::{EventType, JobStatus, PhaseStatus};
use crate::store::{ClaimRequest, Lease};

pub(super) async fn queued_again_without_spending_an_attempt(ctx: &Ctx) {
    let j = ctx
        .store
        .enqueue(super::spec("p", &["fetch", "wait"]).max_attempts(1))
        .await
        .unwrap();
    let s = &ctx.store;
    let c = claim_one(ctx).await;
    s.phase_started(&c.lease, 0).await.unwrap();
    s.phase_completed(&c.lease, 0, json!("fetched"))
        .await
        .unwrap();
    s.phase_started(&c.lease, 1).await.unwrap();
    s.phase_progress(&c.lease, 1, Progress::new(30, None))
        .await
        .unwrap();
    s.save_checkpoint(&c.lease, 1, json!({"polls": 1}))
        .await
        .unwrap();
    let later = ctx.clock.now() + Duration::from_secs(60);
    let snoozed = s.snooze(&c.lease, 1, later).await.unwrap();
    assert_eq!(snoozed.status, JobStatus::Queued);
    assert_eq!(snoozed.run_at, later);
    assert_eq!(snoozed.attempt, 0, "the attempt is given back");
    assert!(snoozed.lease.is_none() && snoozed.lease_expires_at.is_none());
    let wait = &snoozed.phases[1];
    assert_eq!(wait.status, PhaseStatus::Pending);
    assert_eq!(wait.attempts, 0);
    assert_eq!(wait.checkpoint, Some(json!({"polls": 1})));
    assert_eq!(wait.progress, Some(Progress::new(30, None)));
    assert_eq!(snoozed.phases[0].result, Some(json!("fetched")));
    assert_eq!(job(ctx, j.id).await, snoozed, "stored as returned");
    let last = events_of(ctx, j.id).await.pop().unwrap();
    assert_eq!(
        last.data,
        EventData::Snoozed {
            phase: "wait".into(),
            index: 1,
            run_at: later,
        }
    );
    // The old lease is dead; the job is not due before its time.
    assert_kind(s.phase_started(&c.lease, 1).await, ErrorKind::LeaseLost);
    assert!(claimed_ids(ctx, ClaimRequest::new(1)).await.is_empty());
    ctx.clock.advance(Duration::from_secs(60));
    // Its one attempt is still there: the claim is attempt 1 again.
    let again = claim_one(ctx).await;
    assert_eq!(again.lease.attempt, 1);
    s.phase_started(&again.lease, 1).await.unwrap();
    let running = job(ctx, j.id).await;
    assert_eq!(running.phases[1].attempts, 1);
    assert_eq!(running.phases[1].checkpoint, Some(json!({"polls": 1})));
    // A zero delay: due at once.
    let now = ctx.clock.now();
    s.snooze(&again.lease, 1, now).await.unwrap();
    let third = claim_one(ctx).await;
    assert_eq!(third.lease.attempt, 1);
    s.phase_started(&third.lease, 1).await.unwrap();
    s.phase_completed(&third.lease, 1, json!("done"))
        .await
        .unwrap();
    let done = s.complete_job(&third.lease).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.attempt, 1);
    assert_eq!(done.phases[1].attempts, 1);
    let snoozes = events_of(ctx, j.id)
        .await
        .iter()
        .filter(|e| e.event_type() == EventType::JobSnoozed)
        .count();
    assert_eq!(snoozes, 2);
}

pub(super) async fn refused_snoozes_change_nothing(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["a", "b"]).await;
    let c = claim_one(ctx).await;
    let s = &ctx.store;
    s.phase_started(&c.lease, 0).await.unwrap();
    let later = ctx.clock.now() + Duration::from_secs(5);
    let before = snapshot(ctx).await;
    // A phase that is not running, or not there.
    assert_kind(s.snooze(&c.lease, 1, later).await, ErrorKind::Conflict);
    assert_kind(s.snooze(&c.lease, 9, later).await, ErrorKind::Invalid);
    // A time past what a store can hold (after 9999-12-31 in UTC).
    let e = assert_kind(
        s.snooze(
            &c.lease,
            0,
            time::macros::datetime!(9999-12-31 23:30:00 -01:00),
        )
        .await,
        ErrorKind::Invalid,
    );
    assert!(e.to_string().contains("snooze time"), "{e}");
    // A stale lease, and a job that does not exist.
    let stale = Lease {
        token: LeaseToken::new(),
        ..c.lease
    };
    assert_kind(s.snooze(&stale, 0, later).await, ErrorKind::LeaseLost);
    let missing = Lease {
        job_id: JobId::new(),
        ..c.lease
    };
    assert_kind(s.snooze(&missing, 0, later).await, ErrorKind::NotFound);
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused snooze writes nothing"
    );
    // A completed phase cannot snooze; nor can a job that ended.
    s.phase_completed(&c.lease, 0, json!(1)).await.unwrap();
    assert_kind(s.snooze(&c.lease, 0, later).await, ErrorKind::Conflict);
    s.phase_started(&c.lease, 1).await.unwrap();
    s.phase_completed(&c.lease, 1, json!(2)).await.unwrap();
    s.complete_job(&c.lease).await.unwrap();
    assert_kind(s.snooze(&c.lease, 1, later).await, ErrorKind::LeaseLost);
    assert_eq!(job(ctx, j.id).await.status, JobStatus::Completed);
}
