//! Claim: runnable jobs are handed out highest priority first, then earliest
//! `run_at`, then oldest; future `run_at` and excluded pipelines wait; each
//! claim starts an attempt (`job.started`) with its own fencing token, and no
//! job is handed out twice.

use std::time::Duration;

use super::{Ctx, claimed_ids, enqueue, job, spec, types_of};
use crate::clock::Clock;
use crate::id::JobId;
use crate::machine::{EventType, JobStatus};
use crate::store::ClaimRequest;

pub(super) async fn order_and_run_at(ctx: &Ctx) {
    let now = ctx.clock.now();
    let low = enqueue(ctx, "p", &["a"]).await;
    let high = ctx
        .store
        .enqueue(spec("p", &["a"]).priority(10))
        .await
        .unwrap();
    let later = ctx
        .store
        .enqueue(
            spec("p", &["a"])
                .priority(100)
                .run_at(now + Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let low2 = enqueue(ctx, "p", &["a"]).await;
    let other = ctx
        .store
        .enqueue(spec("q", &["a"]).priority(50))
        .await
        .unwrap();
    let mut req = ClaimRequest::new(10);
    req.exclude_pipelines = vec!["q".into()];
    let got = claimed_ids(ctx, req).await;
    assert_eq!(
        got,
        [high.id, low.id, low2.id],
        "priority first, then creation; future run_at and excluded pipelines wait"
    );
    assert!(
        ctx.store
            .claim(ClaimRequest::new(0))
            .await
            .unwrap()
            .is_empty()
    );
    ctx.clock.advance(Duration::from_secs(10));
    let got = claimed_ids(ctx, ClaimRequest::new(1)).await;
    assert_eq!(got, [later.id], "due now, highest priority");
    let got = claimed_ids(ctx, ClaimRequest::new(5)).await;
    assert_eq!(got, [other.id]);
    // Equal priority: earlier run_at first.
    let a = ctx
        .store
        .enqueue(spec("p", &["a"]).run_at(now))
        .await
        .unwrap();
    let b = ctx
        .store
        .enqueue(spec("p", &["a"]).run_at(now - Duration::from_secs(5)))
        .await
        .unwrap();
    let got = claimed_ids(ctx, ClaimRequest::new(5)).await;
    assert_eq!(got, [b.id, a.id]);
}

pub(super) async fn never_hands_out_a_job_twice(ctx: &Ctx) {
    let now = ctx.clock.now();
    for _ in 0..5 {
        enqueue(ctx, "p", &["a"]).await;
    }
    let first = ctx.store.claim(ClaimRequest::new(3)).await.unwrap();
    let second = ctx.store.claim(ClaimRequest::new(10)).await.unwrap();
    assert_eq!((first.len(), second.len()), (3, 2));
    assert!(
        ctx.store
            .claim(ClaimRequest::new(10))
            .await
            .unwrap()
            .is_empty()
    );
    let mut ids: Vec<JobId> = first.iter().chain(&second).map(|c| c.job.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    let mut tokens: Vec<_> = first.iter().chain(&second).map(|c| c.lease.token).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 5, "every claim has its own fencing token");
    for c in first.iter().chain(&second) {
        assert_eq!(c.job.status, JobStatus::Running);
        assert_eq!((c.job.attempt, c.lease.attempt), (1, 1));
        assert_eq!(c.job.lease, Some(c.lease.token));
        assert_eq!(c.job.started_at, Some(now));
        assert_eq!(
            c.job.lease_expires_at,
            Some(now + ClaimRequest::new(1).lease_for)
        );
        assert_eq!(job(ctx, c.job.id).await, c.job);
        assert_eq!(
            types_of(ctx, c.job.id).await,
            [EventType::JobCreated, EventType::JobStarted]
        );
    }
}

/// A claim that names pipelines takes only their jobs; the others stay
/// queued, untouched, for a process that runs them.
pub(super) async fn only_the_named_pipelines(ctx: &Ctx) {
    let s = &ctx.store;
    let other = enqueue(ctx, "other", &["x"]).await;
    let mine = enqueue(ctx, "mine", &["x"]).await;
    let claimed = s
        .claim(ClaimRequest::new(10).pipelines(vec!["mine".into()]))
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        [mine.id]
    );
    assert_eq!(job(ctx, other.id).await, other, "left as it was");
    let none = s
        .claim(ClaimRequest::new(10).pipelines(Vec::new()))
        .await
        .unwrap();
    assert!(none.is_empty(), "no pipelines, no claims");
    let rest = s.claim(ClaimRequest::new(10)).await.unwrap();
    assert_eq!(
        rest.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        [other.id]
    );
}
