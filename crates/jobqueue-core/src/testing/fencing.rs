//! Fencing: once a job was claimed again, every write under the old lease
//! fails with `LeaseLost` and changes nothing; after the job leaves
//! `running`, even its last lease is dead.

use std::time::Duration;

use serde_json::json;

use super::{Ctx, assert_kind, claim_one, complete_phases, enqueue, snapshot};
use crate::error::ErrorKind;
use crate::id::JobId;
use crate::job::{JobError, Progress};
use crate::store::{FailureOutcome, Lease, RecoverScope};

pub(super) async fn rejects_stale_tokens(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["a", "b"]).await;
    let old = claim_one(ctx).await;
    ctx.store.phase_started(&old.lease, 0).await.unwrap();
    // The worker is presumed dead; its job is recovered and claimed again.
    ctx.store.recover(RecoverScope::All).await.unwrap();
    let new = claim_one(ctx).await;
    assert_eq!(new.job.id, j.id);
    assert_ne!(new.lease.token, old.lease.token);
    assert_eq!(new.lease.attempt, 2);
    let before = snapshot(ctx).await;
    let s = &ctx.store;
    let l = &old.lease;
    assert_kind(s.phase_started(l, 0).await, ErrorKind::LeaseLost);
    assert_kind(
        s.phase_progress(l, 0, Progress::new(5, None)).await,
        ErrorKind::LeaseLost,
    );
    assert_kind(
        s.phase_completed(l, 0, json!(1)).await,
        ErrorKind::LeaseLost,
    );
    assert_kind(
        s.phase_failed(l, 0, "x".into(), FailureOutcome::Fail).await,
        ErrorKind::LeaseLost,
    );
    assert_kind(s.complete_job(l).await, ErrorKind::LeaseLost);
    assert_kind(
        s.fail_job(
            l,
            JobError {
                phase: None,
                message: "x".into(),
                attempt: 1,
            },
        )
        .await,
        ErrorKind::LeaseLost,
    );
    assert_kind(s.cancel_running(l).await, ErrorKind::LeaseLost);
    assert_kind(s.interrupt(l).await, ErrorKind::LeaseLost);
    assert_kind(
        s.save_checkpoint(l, 0, json!({"at": 1})).await,
        ErrorKind::LeaseLost,
    );
    assert_kind(
        s.snooze(l, 0, time::OffsetDateTime::UNIX_EPOCH).await,
        ErrorKind::LeaseLost,
    );
    assert_kind(
        s.heartbeat(l, Duration::from_secs(30)).await,
        ErrorKind::LeaseLost,
    );
    assert_eq!(snapshot(ctx).await, before, "a stale token writes nothing");
    // After the job leaves running, even its last token is dead.
    complete_phases(ctx, &new.lease, 0..2).await;
    s.complete_job(&new.lease).await.unwrap();
    assert_kind(s.phase_started(&new.lease, 0).await, ErrorKind::LeaseLost);
    let missing = Lease {
        job_id: JobId::new(),
        ..new.lease
    };
    assert_kind(s.complete_job(&missing).await, ErrorKind::NotFound);
}
