//! Checkpoints: a running phase saves its own state under its lease, no
//! event, durably; the job's record shows the last one. It is kept through
//! failures, retries, interruptions, cancels and manual retries (the next
//! run resumes from it) and cleared when the phase completes. A checkpoint
//! past the JSON limits, of a phase that is not running, or under a stale
//! lease is refused and changes nothing.

use serde_json::{Value, json};

use super::{Ctx, assert_kind, claim_one, enqueue, events_of, job, snapshot};
use crate::clock::Clock;
use crate::error::ErrorKind;
use crate::id::JobId;
use crate::job::MAX_JSON_DEPTH;
use crate::machine::{JobStatus, PhaseStatus};
use crate::store::{FailureOutcome, Lease, RecoverScope};

pub(super) async fn saved_and_read_back(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["copy", "report"]).await;
    let c = claim_one(ctx).await;
    let s = &ctx.store;
    s.phase_started(&c.lease, 0).await.unwrap();
    assert_eq!(job(ctx, j.id).await.phases[0].checkpoint, None);
    let events = events_of(ctx, j.id).await.len();
    s.save_checkpoint(&c.lease, 0, json!({"rows": 10}))
        .await
        .unwrap();
    assert_eq!(
        job(ctx, j.id).await.phases[0].checkpoint,
        Some(json!({"rows": 10}))
    );
    // The next one replaces it; neither appends an event.
    s.save_checkpoint(&c.lease, 0, json!({"rows": 20, "file": "b.csv"}))
        .await
        .unwrap();
    let saved = job(ctx, j.id).await;
    assert_eq!(
        saved.phases[0].checkpoint,
        Some(json!({"rows": 20, "file": "b.csv"}))
    );
    assert_eq!(saved.phases[0].status, PhaseStatus::Running);
    assert_eq!(saved.phases[1].checkpoint, None);
    assert_eq!(events_of(ctx, j.id).await.len(), events, "no event");
    // Any JSON value is a checkpoint, null included.
    s.save_checkpoint(&c.lease, 0, Value::Null).await.unwrap();
    assert_eq!(job(ctx, j.id).await.phases[0].checkpoint, Some(Value::Null));
    s.save_checkpoint(&c.lease, 0, json!(["x", 1]))
        .await
        .unwrap();
    // Completing the phase clears it: nothing resumes a completed phase.
    s.phase_completed(&c.lease, 0, json!("copied"))
        .await
        .unwrap();
    let done = job(ctx, j.id).await;
    assert_eq!(done.phases[0].checkpoint, None);
    assert_eq!(done.phases[0].result, Some(json!("copied")));
}

pub(super) async fn kept_until_the_phase_completes(ctx: &Ctx) {
    let j = ctx
        .store
        .enqueue(super::spec("p", &["a"]).max_attempts(5))
        .await
        .unwrap();
    let s = &ctx.store;
    let first = claim_one(ctx).await;
    s.phase_started(&first.lease, 0).await.unwrap();
    s.save_checkpoint(&first.lease, 0, json!(1)).await.unwrap();
    // A retryable failure keeps it, and the next claim hands it out.
    s.phase_failed(
        &first.lease,
        0,
        "blip".into(),
        FailureOutcome::RetryAt(ctx.clock.now()),
    )
    .await
    .unwrap();
    assert_eq!(job(ctx, j.id).await.phases[0].checkpoint, Some(json!(1)));
    let second = claim_one(ctx).await;
    assert_eq!(second.job.phases[0].checkpoint, Some(json!(1)));
    s.phase_started(&second.lease, 0).await.unwrap();
    assert_eq!(
        job(ctx, j.id).await.phases[0].checkpoint,
        Some(json!(1)),
        "a new run of the phase starts from its checkpoint"
    );
    s.save_checkpoint(&second.lease, 0, json!(2)).await.unwrap();
    // A crash keeps it.
    s.recover(RecoverScope::All).await.unwrap();
    let recovered = job(ctx, j.id).await;
    assert_eq!(recovered.status, JobStatus::Queued);
    assert_eq!(recovered.phases[0].checkpoint, Some(json!(2)));
    // So do a permanent failure and the manual retry after it.
    let third = claim_one(ctx).await;
    s.phase_started(&third.lease, 0).await.unwrap();
    s.phase_failed(&third.lease, 0, "bad".into(), FailureOutcome::Fail)
        .await
        .unwrap();
    assert_eq!(job(ctx, j.id).await.phases[0].checkpoint, Some(json!(2)));
    let retried = s.retry(j.id).await.unwrap();
    assert_eq!(retried.phases[0].checkpoint, Some(json!(2)));
    // And a cancel.
    let fourth = claim_one(ctx).await;
    s.phase_started(&fourth.lease, 0).await.unwrap();
    s.request_cancel(j.id).await.unwrap();
    s.cancel_running(&fourth.lease).await.unwrap();
    assert_eq!(job(ctx, j.id).await.phases[0].checkpoint, Some(json!(2)));
}

pub(super) async fn refused_checkpoints_change_nothing(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["a", "b"]).await;
    let c = claim_one(ctx).await;
    let s = &ctx.store;
    s.phase_started(&c.lease, 0).await.unwrap();
    s.save_checkpoint(&c.lease, 0, json!({"kept": true}))
        .await
        .unwrap();
    let before = snapshot(ctx).await;
    // A phase that is not running, or not there.
    let e = assert_kind(
        s.save_checkpoint(&c.lease, 1, json!(1)).await,
        ErrorKind::Conflict,
    );
    assert!(e.to_string().contains("checkpoint"), "{e}");
    assert_kind(
        s.save_checkpoint(&c.lease, 7, json!(1)).await,
        ErrorKind::Invalid,
    );
    // Past the JSON limits, like a result.
    let deep = (0..=MAX_JSON_DEPTH).fold(json!(1), |inner, _| Value::Array(vec![inner]));
    let e = assert_kind(
        s.save_checkpoint(&c.lease, 0, deep).await,
        ErrorKind::Invalid,
    );
    assert!(e.to_string().contains("checkpoint of phase \"a\""), "{e}");
    // A stale lease, and a job that does not exist.
    let stale = Lease {
        token: crate::id::LeaseToken::new(),
        ..c.lease
    };
    assert_kind(
        s.save_checkpoint(&stale, 0, json!(1)).await,
        ErrorKind::LeaseLost,
    );
    let missing = Lease {
        job_id: JobId::new(),
        ..c.lease
    };
    assert_kind(
        s.save_checkpoint(&missing, 0, json!(1)).await,
        ErrorKind::NotFound,
    );
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused checkpoint writes nothing"
    );
    // Once the job left running, its last lease saves nothing either.
    s.phase_failed(&c.lease, 0, "x".into(), FailureOutcome::Fail)
        .await
        .unwrap();
    assert_kind(
        s.save_checkpoint(&c.lease, 0, json!(2)).await,
        ErrorKind::LeaseLost,
    );
    assert_eq!(
        job(ctx, j.id).await.phases[0].checkpoint,
        Some(json!({"kept": true}))
    );
}
