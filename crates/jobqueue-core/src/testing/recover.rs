//! Recovery and leases: an interrupted job is queued again keeping which
//! phase was running, its last progress and the results of earlier phases;
//! heartbeats renew a lease, an absurd lease is refused, and recovering
//! expired leases takes only the ones not renewed.

use std::time::Duration;

use super::{Ctx, assert_kind, claim_one, complete_phases, enqueue, events_of, job, snapshot};
use crate::clock::Clock;
use crate::error::ErrorKind;
use crate::event::EventData;
use crate::job::Job;
use crate::job::Progress;
use crate::machine::{JobStatus, PhaseStatus};
use crate::store::{ClaimRequest, RecoverScope, Renewal};

pub(super) async fn interrupted_jobs_keep_their_context(ctx: &Ctx) {
    let s = &ctx.store;
    let j = enqueue(ctx, "p", &["a", "b", "c"]).await;
    let idle = enqueue(ctx, "p", &["a"]).await;
    let c = claim_one(ctx).await;
    assert_eq!(c.job.id, j.id);
    complete_phases(ctx, &c.lease, 0..1).await;
    s.phase_started(&c.lease, 1).await.unwrap();
    s.phase_progress(&c.lease, 1, Progress::new(60, Some("most".into())))
        .await
        .unwrap();
    let c2 = claim_one(ctx).await;
    assert_eq!(c2.job.id, idle.id);
    ctx.clock.advance(Duration::from_secs(1));
    let at = ctx.clock.now();
    let recovered = s.recover(RecoverScope::All).await.unwrap();
    assert_eq!(recovered.len(), 2);
    let r = job(ctx, j.id).await;
    assert_eq!(r.status, JobStatus::Queued);
    assert!(r.lease.is_none());
    assert_eq!(r.run_at, at);
    assert_eq!(
        r.interrupted,
        Some(crate::job::Interrupted {
            phase: "b".into(),
            at,
            progress: Some(Progress::new(60, Some("most".into())))
        })
    );
    assert_eq!(r.phases[0].status, PhaseStatus::Completed);
    assert_eq!(r.phases[1].status, PhaseStatus::Pending);
    assert_eq!(r.results().len(), 1);
    let last = events_of(ctx, j.id).await.pop().unwrap();
    assert_eq!(
        last.data,
        EventData::Interrupted {
            phase: "b".into(),
            progress: Some(Progress::new(60, Some("most".into())))
        }
    );
    // A job claimed but between phases is interrupted at its next phase.
    let i = job(ctx, idle.id).await;
    assert_eq!(i.interrupted.as_ref().map(|x| x.phase.as_str()), Some("a"));
    assert!(
        s.recover(RecoverScope::All).await.unwrap().is_empty(),
        "nothing running now"
    );
    // The context survives the next claim, and the phase runs again.
    let c = ctx.store.claim(ClaimRequest::new(5)).await.unwrap();
    let again = c.iter().find(|c| c.job.id == j.id).unwrap();
    assert_eq!(again.job.interrupted, r.interrupted);
    s.phase_started(&again.lease, 1).await.unwrap();
    assert_eq!(
        job(ctx, j.id).await.interrupted,
        r.interrupted,
        "kept after the job resumes"
    );
    // Shutdown interrupts through the lease.
    s.phase_progress(&again.lease, 1, Progress::new(10, None))
        .await
        .unwrap();
    let stopped = s.interrupt(&again.lease).await.unwrap();
    assert_eq!(stopped.status, JobStatus::Queued);
    assert_eq!(
        stopped.interrupted.unwrap().progress,
        Some(Progress::new(10, None))
    );
}

pub(super) async fn heartbeat_and_expired_leases(ctx: &Ctx) {
    let s = &ctx.store;
    // A lease too long to represent is refused, and nothing changes.
    let j = enqueue(ctx, "p", &["a"]).await;
    let before = snapshot(ctx).await;
    let mut absurd = ClaimRequest::new(1);
    absurd.lease_for = Duration::MAX;
    assert_kind(s.claim(absurd).await, ErrorKind::Invalid);
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused claim changes nothing"
    );
    let c = claim_one(ctx).await;
    assert_eq!(c.job.id, j.id);
    let before = snapshot(ctx).await;
    assert_kind(
        s.heartbeat(&c.lease, Duration::MAX).await,
        ErrorKind::Invalid,
    );
    assert_eq!(snapshot(ctx).await, before);
    s.request_cancel(j.id).await.unwrap();
    s.cancel_running(&c.lease).await.unwrap();

    let a = enqueue(ctx, "p", &["a"]).await;
    let b = enqueue(ctx, "p", &["a"]).await;
    let mut req = ClaimRequest::new(2);
    req.lease_for = Duration::from_secs(10);
    let claimed = s.claim(req).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let la = claimed.iter().find(|c| c.job.id == a.id).unwrap().lease;
    ctx.clock.advance(Duration::from_secs(8));
    s.heartbeat(&la, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        job(ctx, a.id).await.lease_expires_at,
        Some(ctx.clock.now() + Duration::from_secs(10))
    );
    assert!(
        s.recover(RecoverScope::ExpiredLeases)
            .await
            .unwrap()
            .is_empty(),
        "no lease expired yet"
    );
    ctx.clock.advance(Duration::from_secs(3));
    let rescued = s.recover(RecoverScope::ExpiredLeases).await.unwrap();
    assert_eq!(
        rescued.iter().map(|j| j.id).collect::<Vec<_>>(),
        [b.id],
        "only the lease that was not renewed"
    );
    assert_eq!(job(ctx, a.id).await.status, JobStatus::Running);
    assert_eq!(job(ctx, b.id).await.status, JobStatus::Queued);
}

pub(super) async fn heartbeat_many_reports_lost_leases(ctx: &Ctx) {
    let s = &ctx.store;
    assert!(
        s.heartbeat_many(&[], Duration::from_secs(10))
            .await
            .unwrap()
            .is_empty()
    );
    let held = enqueue(ctx, "p", &["a"]).await;
    let done = enqueue(ctx, "p", &["a"]).await;
    let moved = enqueue(ctx, "p", &["a"]).await;
    let mut req = ClaimRequest::new(3);
    req.lease_for = Duration::from_secs(10);
    let claimed = s.claim(req).await.unwrap();
    let lease_of = |id| claimed.iter().find(|c| c.job.id == id).unwrap().lease;
    let (held_l, done_l, stale_l) = (lease_of(held.id), lease_of(done.id), lease_of(moved.id));
    // `done` ends; `moved` is interrupted and claimed again: its first
    // lease is stale. `held` has a cancel requested.
    complete_phases(ctx, &done_l, 0..1).await;
    s.complete_job(&done_l).await.unwrap();
    s.interrupt(&stale_l).await.unwrap();
    let again = claim_one(ctx).await;
    assert_eq!(again.job.id, moved.id);
    s.request_cancel(held.id).await.unwrap();
    ctx.clock.advance(Duration::from_secs(8));

    // A lease too long to represent is refused, and nothing changes.
    let before = snapshot(ctx).await;
    assert_kind(
        s.heartbeat_many(&[held_l, again.lease], Duration::MAX)
            .await,
        ErrorKind::Invalid,
    );
    assert_eq!(snapshot(ctx).await, before);

    let renewals = s
        .heartbeat_many(
            &[held_l, stale_l, done_l, again.lease],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        renewals,
        [
            Renewal::Held {
                cancel_requested: true
            },
            Renewal::Lost,
            Renewal::Lost,
            Renewal::Held {
                cancel_requested: false
            },
        ]
    );
    let until = Some(ctx.clock.now() + Duration::from_secs(10));
    assert_eq!(job(ctx, held.id).await.lease_expires_at, until);
    assert_eq!(job(ctx, moved.id).await.lease_expires_at, until);
    let (jobs, seq, deliveries) = snapshot(ctx).await;
    let unchanged = |id| {
        let find = |list: &[Job]| list.iter().find(|j| j.id == id).cloned();
        assert_eq!(
            find(&jobs),
            find(&before.0),
            "nothing changes for a lost lease"
        );
    };
    unchanged(done.id);
    assert_eq!((seq, deliveries), (before.1, before.2), "no event");
    // Only the renewed leases outlive the old expiry.
    ctx.clock.advance(Duration::from_secs(3));
    assert!(
        s.recover(RecoverScope::ExpiredLeases)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(job(ctx, moved.id).await.lease, Some(again.lease.token));
}

/// A run that ended with its process spent an attempt: a job whose phase
/// kills the process every time fails once its attempts are spent, with
/// its interrupted context and a clear error, instead of running forever.
pub(super) async fn crash_loops_end_when_attempts_are_spent(ctx: &Ctx) {
    let s = &ctx.store;
    let j = s
        .enqueue(
            crate::job::NewJob::new("p")
                .phases(["a", "b"])
                .max_attempts(2),
        )
        .await
        .unwrap();
    // Attempt 1 completes "a", then the process dies in "b".
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    s.phase_started(&c.lease, 1).await.unwrap();
    s.phase_progress(&c.lease, 1, Progress::new(30, None))
        .await
        .unwrap();
    s.recover(RecoverScope::All).await.unwrap();
    assert_eq!(
        job(ctx, j.id).await.status,
        JobStatus::Queued,
        "one attempt left"
    );
    // Attempt 2 dies in "b" too: no attempt is left.
    let c = claim_one(ctx).await;
    assert_eq!(c.lease.attempt, 2);
    s.phase_started(&c.lease, 1).await.unwrap();
    let recovered = s.recover(RecoverScope::All).await.unwrap();
    assert_eq!(recovered.len(), 1);
    let failed = job(ctx, j.id).await;
    assert_eq!(failed, recovered[0]);
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(failed.lease.is_none());
    assert!(failed.finished_at.is_some());
    let error = failed.error.clone().unwrap();
    assert_eq!(error.phase.as_deref(), Some("b"));
    assert_eq!(error.attempt, 2);
    assert!(error.message.contains("interrupted"), "{}", error.message);
    assert!(
        error.message.contains("attempt 2 of 2"),
        "{}",
        error.message
    );
    assert_eq!(
        failed.interrupted.as_ref().map(|i| i.phase.as_str()),
        Some("b")
    );
    assert_eq!(
        failed.phases[0].status,
        PhaseStatus::Completed,
        "results kept"
    );
    assert_eq!(failed.phases[1].status, PhaseStatus::Failed);
    let last = events_of(ctx, j.id).await.pop().unwrap();
    assert_eq!(last.data, EventData::Failed { error });
    // Nothing left to claim or recover.
    assert!(s.claim(ClaimRequest::new(1)).await.unwrap().is_empty());
    assert!(s.recover(RecoverScope::All).await.unwrap().is_empty());
}
