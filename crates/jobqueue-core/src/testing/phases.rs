//! Phases: the events of a job that runs to completion, in order; phases run
//! only in order, and a completed phase is final (never started, completed
//! or failed again, not even after a retry or an interruption); a job
//! completes only when every phase completed.

use serde_json::json;

use super::{Ctx, assert_kind, claim_one, complete_phases, enqueue, job, snapshot};
use crate::clock::Clock;
use crate::error::ErrorKind;
use crate::event::EventData;
use crate::job::Progress;
use crate::machine::{JobStatus, PhaseStatus};
use crate::store::{EventFilter, FailureOutcome};

pub(super) async fn happy_path_events(ctx: &Ctx) {
    let j = enqueue(ctx, "build", &["fetch", "compile"]).await;
    let c = claim_one(ctx).await;
    let s = &ctx.store;
    s.phase_started(&c.lease, 0).await.unwrap();
    s.phase_progress(&c.lease, 0, Progress::new(40, Some("4 of 10".into())))
        .await
        .unwrap();
    let mid = job(ctx, j.id).await;
    assert_eq!(mid.phases[0].status, PhaseStatus::Running);
    assert_eq!(mid.phases[0].attempts, 1);
    assert_eq!(
        mid.phases[0].progress,
        Some(Progress::new(40, Some("4 of 10".into())))
    );
    s.phase_completed(&c.lease, 0, json!({"bytes": 12}))
        .await
        .unwrap();
    s.phase_started(&c.lease, 1).await.unwrap();
    s.phase_completed(&c.lease, 1, json!("ok")).await.unwrap();
    let done = s.complete_job(&c.lease).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.finished_at, Some(ctx.clock.now()));
    assert!(done.lease.is_none());
    assert_eq!(
        done.results(),
        json!({"fetch": {"bytes": 12}, "compile": "ok"})
            .as_object()
            .cloned()
            .unwrap()
    );
    assert_eq!(job(ctx, j.id).await, done);
    let events = s
        .events_after(0, EventFilter::default(), 100)
        .await
        .unwrap();
    let data: Vec<EventData> = events.iter().map(|e| e.data.clone()).collect();
    let now = ctx.clock.now();
    assert_eq!(
        data,
        [
            EventData::Created {
                run_at: now,
                priority: 0
            },
            EventData::Started { attempt: 1 },
            EventData::PhaseStarted {
                phase: "fetch".into(),
                index: 0,
                attempt: 1
            },
            EventData::PhaseProgress {
                phase: "fetch".into(),
                percent: 40,
                message: Some("4 of 10".into())
            },
            EventData::PhaseCompleted {
                phase: "fetch".into(),
                index: 0,
                result: json!({"bytes": 12})
            },
            EventData::PhaseStarted {
                phase: "compile".into(),
                index: 1,
                attempt: 1
            },
            EventData::PhaseCompleted {
                phase: "compile".into(),
                index: 1,
                result: json!("ok")
            },
            EventData::Completed {
                results: done.results()
            },
        ]
    );
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "strictly increasing"
    );
}

pub(super) async fn completed_phase_is_final(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["a", "b"]).await;
    let c = claim_one(ctx).await;
    let s = &ctx.store;
    // Out of order: b cannot start before a completed.
    let before = snapshot(ctx).await;
    assert_kind(s.phase_started(&c.lease, 1).await, ErrorKind::Conflict);
    assert_kind(s.phase_started(&c.lease, 7).await, ErrorKind::Invalid);
    assert_kind(
        s.phase_completed(&c.lease, 0, json!(1)).await,
        ErrorKind::Conflict,
    );
    assert_kind(
        s.phase_progress(&c.lease, 0, Progress::new(1, None)).await,
        ErrorKind::Conflict,
    );
    assert_eq!(snapshot(ctx).await, before);
    complete_phases(ctx, &c.lease, 0..1).await;
    let before = snapshot(ctx).await;
    assert_kind(s.phase_started(&c.lease, 0).await, ErrorKind::Conflict);
    assert_kind(
        s.phase_completed(&c.lease, 0, json!("again")).await,
        ErrorKind::Conflict,
    );
    assert_kind(
        s.phase_failed(&c.lease, 0, "x".into(), FailureOutcome::Fail)
            .await,
        ErrorKind::Conflict,
    );
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a completed phase is never reset"
    );
    // A retry, an interruption and a manual retry keep it completed.
    s.phase_started(&c.lease, 1).await.unwrap();
    s.phase_failed(
        &c.lease,
        1,
        "flaky".into(),
        FailureOutcome::RetryAt(ctx.clock.now()),
    )
    .await
    .unwrap();
    let c = claim_one(ctx).await;
    s.interrupt(&c.lease).await.unwrap();
    let c = claim_one(ctx).await;
    s.phase_started(&c.lease, 1).await.unwrap();
    s.phase_failed(&c.lease, 1, "broken".into(), FailureOutcome::Fail)
        .await
        .unwrap();
    s.retry(j.id).await.unwrap();
    let now = job(ctx, j.id).await;
    assert_eq!(now.phases[0].status, PhaseStatus::Completed);
    assert_eq!(now.phases[0].attempts, 1);
    assert_eq!(now.phases[0].result, Some(json!({"phase": 0})));
    assert_eq!(now.first_incomplete_phase(), Some(1));
}

pub(super) async fn complete_needs_every_phase(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["a", "b"]).await;
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    let before = snapshot(ctx).await;
    assert_kind(ctx.store.complete_job(&c.lease).await, ErrorKind::Conflict);
    assert_eq!(snapshot(ctx).await, before);
    assert_eq!(job(ctx, j.id).await.status, JobStatus::Running);
}

/// A deploy changed the pipeline's phases: the claimed job takes the new
/// list by name; completed phases keep their results (also one the
/// pipeline dropped), new ones are pending, and the job runs to the end.
pub(super) async fn reshaped_phases_keep_completed_results(ctx: &Ctx) {
    let s = &ctx.store;
    let j = enqueue(ctx, "p", &["a", "b", "old"]).await;
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    s.phase_started(&c.lease, 2).await.unwrap_err();
    complete_phases(ctx, &c.lease, 1..3).await;
    // Then a deploy renamed "b" to "b2", added "c" first and dropped "old":
    // the results of "b" and "old" stay, after the pipeline's phases.
    let names: Vec<String> = ["c", "a", "b2"].iter().map(|n| (*n).to_owned()).collect();
    let before = job(ctx, j.id).await;
    let last_seq = s.last_seq().await.unwrap();
    let after = s.reshape_phases(&c.lease, names).await.unwrap();
    assert_eq!(after, job(ctx, j.id).await);
    assert_eq!(s.last_seq().await.unwrap(), last_seq, "no event");
    let shape: Vec<(&str, PhaseStatus)> = after
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.status))
        .collect();
    assert_eq!(
        shape,
        [
            ("c", PhaseStatus::Pending),
            ("a", PhaseStatus::Completed),
            ("b2", PhaseStatus::Pending),
            ("b", PhaseStatus::Completed),
            ("old", PhaseStatus::Completed),
        ]
    );
    assert_eq!(after.phase("a"), before.phase("a"), "kept whole");
    assert_eq!(after.phase("old"), before.phase("old"), "result kept");
    // Refused for a stale lease, and with duplicate names; nothing changes.
    assert_kind(
        s.reshape_phases(&c.lease, vec!["x".into(), "x".into()])
            .await,
        ErrorKind::Invalid,
    );
    // A phase already started (say by the claim) goes back to pending.
    s.phase_started(&c.lease, 0).await.unwrap();
    let names: Vec<String> = ["c", "a", "b2"].iter().map(|n| (*n).to_owned()).collect();
    let again = s.reshape_phases(&c.lease, names).await.unwrap();
    assert_eq!(again.phases[0].status, PhaseStatus::Pending);
    s.phase_started(&c.lease, 0).await.unwrap();
    s.phase_completed(&c.lease, 0, serde_json::json!("c"))
        .await
        .unwrap();
    s.phase_started(&c.lease, 2).await.unwrap();
    s.phase_completed(&c.lease, 2, serde_json::json!("b2"))
        .await
        .unwrap();
    let done = s.complete_job(&c.lease).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.results().len(), 5);
}
