//! The store conformance suite: every operation of [`JobStore`] and every
//! invariant of DESIGN.md that a store is responsible for, as a list of
//! cases any store runs. [`MemoryStore`](crate::MemoryStore) passes it; so
//! must every other store.
//!
//! ```
//! use std::sync::Arc;
//! use jobqueue_core::{JobStore, MemoryStore};
//!
//! # futures::executor::block_on(async {
//! // In a store's test, with the store's own constructor in place of MemoryStore's:
//! jobqueue_core::testing::run_all(|clock| {
//!     Box::pin(async move { Arc::new(MemoryStore::with_clock(clock)) as Arc<dyn JobStore> })
//! })
//! .await;
//! # });
//! ```
//!
//! The suite controls time through the [`ManualClock`] it hands the factory,
//! so the store must read the time only from that clock. Each case gets a
//! fresh, empty store; after each case the suite checks that the events the
//! [`EventSink`] received are exactly the committed ones, gap-free and in
//! order.

#![expect(
    clippy::unwrap_used,
    reason = "the suite is test code: an unexpected error is a failure, reported with the case's name"
)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::clock::{Clock, ManualClock};
use crate::error::{ErrorKind, StoreError};
use crate::event::{Event, EventData};
use crate::id::{DeliveryId, JobId};
use crate::job::{Job, JobError, NewJob, Progress};
use crate::machine::{EventType, JobStatus, PhaseStatus};
use crate::outbox::{AttemptOutcome, DeliveryFilter, DeliveryStatus, DeliveryTarget, WebhookRoute};
use crate::store::{
    CancelOutcome, ClaimRequest, Claimed, EventFilter, EventSink, FailureOutcome, JobFilter,
    JobStore, Lease, RecoverScope,
};

/// A boxed future, as the factory and the cases return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Makes a fresh, empty store that reads the time from the given clock.
pub trait StoreFactory: Fn(Arc<ManualClock>) -> BoxFuture<'static, Arc<dyn JobStore>> {}
impl<F> StoreFactory for F where F: Fn(Arc<ManualClock>) -> BoxFuture<'static, Arc<dyn JobStore>> {}

/// What a case works with.
pub struct Ctx {
    /// The store under test.
    pub store: Arc<dyn JobStore>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// Every event the store published.
    pub sink: Arc<RecordingSink>,
}

/// An [`EventSink`] that keeps everything it is given.
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<Event>>,
}

impl RecordingSink {
    /// Everything published so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl EventSink for RecordingSink {
    fn publish(&self, events: &[Event]) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(events);
    }
}

/// One case of the suite.
pub struct Case {
    /// Its name, printed before it runs.
    pub name: &'static str,
    /// The case.
    pub run: fn(&Ctx) -> BoxFuture<'_, ()>,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite, in order.
        pub fn cases() -> Vec<Case> {
            vec![$(Case { name: stringify!($name), run: |ctx| Box::pin($name(ctx)) },)*]
        }
    };
}

cases![
    enqueue_round_trip,
    enqueue_refuses_bad_input,
    unique_keys,
    batch_is_all_or_nothing,
    claim_order_and_run_at,
    claim_never_hands_out_a_job_twice,
    happy_path_events,
    completed_phase_is_final,
    fencing_rejects_stale_tokens,
    retry_resumes_at_failed_phase,
    permanent_failure,
    complete_needs_every_phase,
    cancel,
    manual_retry,
    recover_interrupted,
    heartbeat_and_expired_leases,
    fail_job_without_phases,
    list_filters_and_cursor,
    events_after_filters,
    retention,
    delete_by_user,
    webhook_outbox,
];

/// Runs every case against fresh stores from `factory`, panicking with the
/// case's name at the first failure.
pub async fn run_all<F: StoreFactory>(factory: F) {
    for case in cases() {
        run_case(&factory, &case).await;
    }
}

/// Runs one case against a fresh store from `factory`.
pub async fn run_case<F: StoreFactory>(factory: &F, case: &Case) {
    eprintln!("conformance: {}", case.name);
    let clock = Arc::new(ManualClock::default());
    let store = factory(clock.clone()).await;
    let sink = Arc::new(RecordingSink::default());
    store.set_event_sink(sink.clone());
    let ctx = Ctx { store, clock, sink };
    (case.run)(&ctx).await;
    check_published(&ctx, case.name).await;
}

/// Every committed event was published once, in order, gap-free from 1.
async fn check_published(ctx: &Ctx, case: &str) {
    let published = ctx.sink.events();
    let last = ctx.store.last_seq().await.unwrap();
    let seqs: Vec<u64> = published.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(
        seqs, expected,
        "[{case}] published sequence numbers must be 1..=last_seq with no gap"
    );
    let stored = ctx
        .store
        .events_after(0, EventFilter::default(), usize::MAX)
        .await
        .unwrap();
    for e in &stored {
        assert_eq!(
            Some(e),
            published.get(e.seq as usize - 1),
            "[{case}] stored event differs from published one"
        );
    }
}

// ---------------------------------------------------------------- helpers

fn spec(pipeline: &str, phases: &[&str]) -> NewJob {
    NewJob::new(pipeline)
        .phases(phases.iter().copied())
        .input(json!({"n": 1}))
}

async fn enqueue(ctx: &Ctx, pipeline: &str, phases: &[&str]) -> Job {
    ctx.store.enqueue(spec(pipeline, phases)).await.unwrap()
}

async fn claim_one(ctx: &Ctx) -> Claimed {
    let mut c = ctx.store.claim(ClaimRequest::new(1)).await.unwrap();
    assert_eq!(c.len(), 1, "expected one runnable job");
    c.remove(0)
}

async fn job(ctx: &Ctx, id: JobId) -> Job {
    ctx.store.job(id).await.unwrap().expect("job exists")
}

async fn types_of(ctx: &Ctx, id: JobId) -> Vec<EventType> {
    let filter = EventFilter {
        job: Some(id),
        types: vec![],
    };
    ctx.store
        .events_after(0, filter, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(Event::event_type)
        .collect()
}

/// Everything observable about the store, to check that a refused write
/// changed nothing.
async fn snapshot(ctx: &Ctx) -> (Vec<Job>, u64, usize) {
    let jobs = ctx
        .store
        .list(JobFilter {
            limit: 10_000,
            ..JobFilter::default()
        })
        .await
        .unwrap()
        .jobs;
    let deliveries = ctx
        .store
        .deliveries(DeliveryFilter::default())
        .await
        .unwrap()
        .len();
    (jobs, ctx.store.last_seq().await.unwrap(), deliveries)
}

#[track_caller]
fn assert_kind<T: std::fmt::Debug>(r: Result<T, StoreError>, kind: ErrorKind) -> StoreError {
    match r {
        Ok(v) => panic!("expected a {kind:?} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "wrong kind for error {e}");
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

/// Runs a job's phases `0..n` to completion under `lease`.
async fn complete_phases(ctx: &Ctx, lease: &Lease, range: std::ops::Range<usize>) {
    for i in range {
        ctx.store.phase_started(lease, i).await.unwrap();
        ctx.store
            .phase_completed(lease, i, json!({"phase": i}))
            .await
            .unwrap();
    }
}

/// Enqueues a job ahead of every other and runs it to completion.
async fn run_to_completion(ctx: &Ctx, phases: &[&str]) -> Job {
    let j = ctx
        .store
        .enqueue(spec("p", phases).priority(i32::MAX))
        .await
        .unwrap();
    let c = claim_one(ctx).await;
    assert_eq!(c.job.id, j.id);
    complete_phases(ctx, &c.lease, 0..phases.len()).await;
    ctx.store.complete_job(&c.lease).await.unwrap()
}

// ---------------------------------------------------------------- cases

async fn enqueue_round_trip(ctx: &Ctx) {
    let now = ctx.clock.now();
    let j = ctx
        .store
        .enqueue(
            spec("build", &["fetch", "compile"])
                .priority(5)
                .unique_key("k1")
                .max_attempts(4),
        )
        .await
        .unwrap();
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!((j.attempt, j.max_attempts, j.priority), (0, 4, 5));
    assert_eq!((j.created_at, j.run_at), (now, now));
    assert_eq!(j.unique_key.as_deref(), Some("k1"));
    assert_eq!(
        j.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["fetch", "compile"]
    );
    assert!(
        j.phases
            .iter()
            .all(|p| p.status == PhaseStatus::Pending && p.attempts == 0)
    );
    assert!(
        j.lease.is_none()
            && j.error.is_none()
            && j.interrupted.is_none()
            && j.finished_at.is_none()
    );
    assert_eq!(
        job(ctx, j.id).await,
        j,
        "read back equals what enqueue returned"
    );
    assert!(ctx.store.job(JobId::new()).await.unwrap().is_none());
    let events = ctx
        .store
        .events_after(0, EventFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].job_id, j.id);
    assert_eq!(events[0].pipeline, "build");
    assert_eq!(events[0].at, now);
    assert_eq!(
        events[0].data,
        EventData::Created {
            run_at: now,
            priority: 5
        }
    );
    let later = now + Duration::from_secs(60);
    let k = ctx
        .store
        .enqueue(spec("build", &["a"]).run_at(later))
        .await
        .unwrap();
    assert_eq!(k.run_at, later);
}

async fn enqueue_refuses_bad_input(ctx: &Ctx) {
    enqueue(ctx, "p", &["a"]).await;
    let before = snapshot(ctx).await;
    let bad = [
        NewJob::new(""),
        NewJob::new("p").max_attempts(0),
        spec("p", &["a", "a"]),
        spec("p", &["a", ""]),
        spec("p", &["a"]).unique_key(""),
        spec("p", &["a"]).webhook_url("ftp://example.com/x"),
        NewJob::new("x".repeat(10_000)),
    ];
    for b in bad {
        assert_kind(ctx.store.enqueue(b).await, ErrorKind::Invalid);
    }
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused enqueue changes nothing"
    );
}

async fn unique_keys(ctx: &Ctx) {
    let first = ctx
        .store
        .enqueue(spec("p", &["a"]).unique_key("k"))
        .await
        .unwrap();
    let before = snapshot(ctx).await;
    let err = assert_kind(
        ctx.store.enqueue(spec("p", &["a"]).unique_key("k")).await,
        ErrorKind::Duplicate,
    );
    assert!(matches!(err, StoreError::Duplicate { existing, .. } if existing == first.id));
    assert_eq!(snapshot(ctx).await, before);
    // Other keys are free; running still holds the key.
    ctx.store
        .enqueue(spec("p", &["a"]).unique_key("other"))
        .await
        .unwrap();
    let c = claim_one(ctx).await;
    assert_eq!(c.job.id, first.id);
    assert_kind(
        ctx.store.enqueue(spec("p", &["a"]).unique_key("k")).await,
        ErrorKind::Duplicate,
    );
    // Once finished, the key is free again.
    complete_phases(ctx, &c.lease, 0..1).await;
    ctx.store.complete_job(&c.lease).await.unwrap();
    let again = ctx
        .store
        .enqueue(spec("p", &["a"]).unique_key("k"))
        .await
        .unwrap();
    assert_ne!(again.id, first.id);
}

async fn batch_is_all_or_nothing(ctx: &Ctx) {
    let held = ctx
        .store
        .enqueue(spec("p", &["a"]).unique_key("held"))
        .await
        .unwrap();
    let before = snapshot(ctx).await;
    let r = ctx
        .store
        .enqueue_batch(vec![spec("p", &["a"]), spec("p", &["a"]), NewJob::new("")])
        .await;
    let err = assert_kind(r, ErrorKind::Invalid);
    assert!(
        matches!(err, StoreError::Batch { index: 2, .. }),
        "names the bad job: {err}"
    );
    let r = ctx
        .store
        .enqueue_batch(vec![
            spec("p", &["a"]).unique_key("x"),
            spec("p", &["a"]).unique_key("x"),
        ])
        .await;
    let err = assert_kind(r, ErrorKind::Duplicate);
    assert!(matches!(err, StoreError::Batch { index: 1, .. }), "{err}");
    let r = ctx
        .store
        .enqueue_batch(vec![
            spec("p", &["a"]),
            spec("p", &["a"]).unique_key("held"),
        ])
        .await;
    let err = assert_kind(r, ErrorKind::Duplicate);
    assert!(
        matches!(&err, StoreError::Batch { index: 1, error } if matches!(**error, StoreError::Duplicate { existing, .. } if existing == held.id))
    );
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused batch writes nothing"
    );
    let jobs = ctx
        .store
        .enqueue_batch(vec![spec("p", &["a"]), spec("q", &["b"]), spec("r", &[])])
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3);
    let events = ctx
        .store
        .events_after(before.1, EventFilter::default(), 10)
        .await
        .unwrap();
    let ids: Vec<JobId> = events.iter().map(|e| e.job_id).collect();
    assert_eq!(
        ids,
        jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        "one job.created each, in batch order"
    );
    for j in &jobs {
        assert_eq!(&job(ctx, j.id).await, j);
    }
    assert!(ctx.store.enqueue_batch(vec![]).await.unwrap().is_empty());
}

async fn claim_order_and_run_at(ctx: &Ctx) {
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
    let got: Vec<JobId> = ctx
        .store
        .claim(req)
        .await
        .unwrap()
        .iter()
        .map(|c| c.job.id)
        .collect();
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
    let got: Vec<JobId> = ctx
        .store
        .claim(ClaimRequest::new(1))
        .await
        .unwrap()
        .iter()
        .map(|c| c.job.id)
        .collect();
    assert_eq!(got, [later.id], "due now, highest priority");
    let got: Vec<JobId> = ctx
        .store
        .claim(ClaimRequest::new(5))
        .await
        .unwrap()
        .iter()
        .map(|c| c.job.id)
        .collect();
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
    let got: Vec<JobId> = ctx
        .store
        .claim(ClaimRequest::new(5))
        .await
        .unwrap()
        .iter()
        .map(|c| c.job.id)
        .collect();
    assert_eq!(got, [b.id, a.id]);
}

async fn claim_never_hands_out_a_job_twice(ctx: &Ctx) {
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

async fn happy_path_events(ctx: &Ctx) {
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

async fn completed_phase_is_final(ctx: &Ctx) {
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

async fn fencing_rejects_stale_tokens(ctx: &Ctx) {
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

async fn retry_resumes_at_failed_phase(ctx: &Ctx) {
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
    let last = ctx
        .store
        .events_after(0, EventFilter::default(), 100)
        .await
        .unwrap()
        .pop()
        .unwrap();
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

async fn permanent_failure(ctx: &Ctx) {
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
    let evs = ctx
        .store
        .events_after(
            0,
            EventFilter {
                job: Some(j.id),
                types: vec![],
            },
            100,
        )
        .await
        .unwrap();
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

async fn complete_needs_every_phase(ctx: &Ctx) {
    let j = enqueue(ctx, "p", &["a", "b"]).await;
    let c = claim_one(ctx).await;
    complete_phases(ctx, &c.lease, 0..1).await;
    let before = snapshot(ctx).await;
    assert_kind(ctx.store.complete_job(&c.lease).await, ErrorKind::Conflict);
    assert_eq!(snapshot(ctx).await, before);
    assert_eq!(job(ctx, j.id).await.status, JobStatus::Running);
}

async fn cancel(ctx: &Ctx) {
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

async fn manual_retry(ctx: &Ctx) {
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
    let last = s
        .events_after(
            0,
            EventFilter {
                job: Some(j.id),
                types: vec![],
            },
            100,
        )
        .await
        .unwrap()
        .pop()
        .unwrap();
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

async fn recover_interrupted(ctx: &Ctx) {
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
    let last = s
        .events_after(
            0,
            EventFilter {
                job: Some(j.id),
                types: vec![],
            },
            100,
        )
        .await
        .unwrap()
        .pop()
        .unwrap();
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

async fn heartbeat_and_expired_leases(ctx: &Ctx) {
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

async fn fail_job_without_phases(ctx: &Ctx) {
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
    let last = ctx
        .store
        .events_after(0, EventFilter::default(), 100)
        .await
        .unwrap()
        .pop()
        .unwrap();
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

async fn list_filters_and_cursor(ctx: &Ctx) {
    let mut ids = Vec::new();
    for i in 0..7 {
        let p = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(enqueue(ctx, p, &["a"]).await.id);
    }
    let c = claim_one(ctx).await;
    assert_eq!(c.job.id, ids[0]);
    let s = &ctx.store;
    let all = s.list(JobFilter::default()).await.unwrap();
    assert_eq!(
        all.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );
    assert_eq!(all.next_cursor, None);
    // Pages of 3 walk every job once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list(JobFilter {
                limit: 3,
                cursor,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().copied().collect::<Vec<_>>());
    let exact = s
        .list(JobFilter {
            limit: 7,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (exact.jobs.len(), exact.next_cursor),
        (7, None),
        "no cursor when nothing follows"
    );
    let even = s
        .list(JobFilter {
            pipeline: Some("even".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(even.jobs.len(), 4);
    assert!(even.jobs.iter().all(|j| j.pipeline == "even"));
    let running = s
        .list(JobFilter {
            statuses: vec![JobStatus::Running],
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        running.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    let both = s
        .list(JobFilter {
            statuses: vec![JobStatus::Running, JobStatus::Queued],
            pipeline: Some("odd".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(both.jobs.len(), 3);
    let page = s
        .list(JobFilter {
            statuses: vec![JobStatus::Completed],
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(page.jobs.is_empty() && page.next_cursor.is_none());
    assert_eq!(
        all.jobs[0].phases.len(),
        1,
        "listed jobs carry their phases"
    );
}

async fn events_after_filters(ctx: &Ctx) {
    let a = run_to_completion(ctx, &["x", "y"]).await;
    let b = enqueue(ctx, "p", &["x"]).await;
    let s = &ctx.store;
    let all = s
        .events_after(0, EventFilter::default(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(all.len() as u64, s.last_seq().await.unwrap());
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let page = s.events_after(2, EventFilter::default(), 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    let of_b = s
        .events_after(
            0,
            EventFilter {
                job: Some(b.id),
                types: vec![],
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(of_b.len(), 1);
    let typed = EventFilter {
        job: None,
        types: vec![EventType::PhaseCompleted, EventType::JobCompleted],
    };
    let t = s.events_after(0, typed, 100).await.unwrap();
    assert_eq!(
        t.iter().map(Event::event_type).collect::<Vec<_>>(),
        [
            EventType::PhaseCompleted,
            EventType::PhaseCompleted,
            EventType::JobCompleted
        ]
    );
    assert!(t.iter().all(|e| e.job_id == a.id));
    let last = s.last_seq().await.unwrap();
    assert!(
        s.events_after(last, EventFilter::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn retention(ctx: &Ctx) {
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
        let left = s
            .events_after(
                0,
                EventFilter {
                    job: Some(id),
                    types: vec![],
                },
                100,
            )
            .await
            .unwrap();
        assert_eq!(
            left.iter().map(Event::event_type).collect::<Vec<_>>(),
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

async fn delete_by_user(ctx: &Ctx) {
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

async fn webhook_outbox(ctx: &Ctx) {
    let s = &ctx.store;
    s.set_webhook_routes(vec![
        WebhookRoute {
            url: "https://all.example/hook".into(),
            events: None,
        },
        WebhookRoute {
            url: "https://done.example/hook".into(),
            events: Some(vec![EventType::JobCompleted]),
        },
    ]);
    let j = s
        .enqueue(spec("p", &["a"]).webhook_url("https://job.example/cb"))
        .await
        .unwrap();
    let c = claim_one(ctx).await;
    s.phase_started(&c.lease, 0).await.unwrap();
    s.phase_progress(&c.lease, 0, Progress::new(50, None))
        .await
        .unwrap();
    s.phase_completed(&c.lease, 0, json!(1)).await.unwrap();
    s.complete_job(&c.lease).await.unwrap();
    let events = s
        .events_after(0, EventFilter::default(), 100)
        .await
        .unwrap();
    let all = s.deliveries(DeliveryFilter::default()).await.unwrap();
    // created, started, phase.started, phase.completed, completed: 5 events
    // without progress, to "all" and to the job's url; completed also to "done".
    assert_eq!(all.len(), 5 + 5 + 1);
    for d in &all {
        let e = events
            .iter()
            .find(|e| e.seq == d.event_seq)
            .expect("delivery of a stored event");
        assert_eq!(&d.event, e, "the payload snapshot is the event");
        assert_eq!(d.job_id, j.id);
        assert_ne!(
            d.event.event_type(),
            EventType::PhaseProgress,
            "progress is not delivered by default"
        );
        assert_eq!(
            (d.status, d.attempts, d.next_attempt_at),
            (DeliveryStatus::Pending, 0, Some(ctx.clock.now()))
        );
        let expected_target = if d.url == "https://job.example/cb" {
            DeliveryTarget::Job
        } else {
            DeliveryTarget::Endpoint
        };
        assert_eq!(d.target, expected_target);
    }
    let done: Vec<_> = all
        .iter()
        .filter(|d| d.url == "https://done.example/hook")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].event.event_type(), EventType::JobCompleted);
    let mut ids: Vec<DeliveryId> = all.iter().map(|d| d.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "one id per event and endpoint");

    let due = s.due_deliveries(100).await.unwrap();
    assert_eq!(due.len(), all.len());
    assert_eq!(s.next_delivery_at().await.unwrap(), Some(ctx.clock.now()));
    let first = &due[0];
    let later = ctx.clock.now() + Duration::from_secs(5);
    let d = s
        .record_attempt(
            first.id,
            AttemptOutcome::Retry {
                status: Some(500),
                error: "server error".into(),
                next_attempt_at: later,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (d.attempts, d.last_status, d.next_attempt_at, d.status),
        (1, Some(500), Some(later), DeliveryStatus::Pending)
    );
    assert!(
        !s.due_deliveries(100)
            .await
            .unwrap()
            .iter()
            .any(|x| x.id == first.id),
        "not due before its time"
    );
    ctx.clock.advance(Duration::from_secs(5));
    assert!(
        s.due_deliveries(100)
            .await
            .unwrap()
            .iter()
            .any(|x| x.id == first.id)
    );
    let d = s
        .record_attempt(first.id, AttemptOutcome::Delivered { status: 200 })
        .await
        .unwrap();
    assert_eq!(
        (d.attempts, d.status, d.last_status, d.next_attempt_at),
        (2, DeliveryStatus::Delivered, Some(200), None)
    );
    assert_kind(
        s.record_attempt(first.id, AttemptOutcome::Delivered { status: 200 })
            .await,
        ErrorKind::Conflict,
    );
    assert_kind(
        s.record_attempt(DeliveryId::new(), AttemptOutcome::Delivered { status: 200 })
            .await,
        ErrorKind::NotFound,
    );
    let gone = s
        .record_attempt(
            due[1].id,
            AttemptOutcome::Failed {
                status: Some(410),
                error: "gone".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (gone.status, gone.next_attempt_at),
        (DeliveryStatus::Failed, None)
    );
    let delivered = s
        .deliveries(DeliveryFilter {
            job: Some(j.id),
            statuses: vec![DeliveryStatus::Delivered],
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);

    // Deleting the job keeps its deliveries whole; the delete itself is delivered.
    s.delete(j.id).await.unwrap();
    let pending = s
        .deliveries(DeliveryFilter {
            job: Some(j.id),
            statuses: vec![DeliveryStatus::Pending],
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        pending.len(),
        all.len() - 2 + 2,
        "the job.deleted event goes to \"all\" and the job's url"
    );
    for d in &pending {
        let r = s
            .record_attempt(d.id, AttemptOutcome::Delivered { status: 204 })
            .await
            .unwrap();
        assert_eq!(r.event, d.event, "the snapshot survives the job");
    }
    assert!(s.due_deliveries(100).await.unwrap().is_empty());
    assert_eq!(s.next_delivery_at().await.unwrap(), None);
    assert_eq!(
        s.deliveries(DeliveryFilter {
            limit: 3,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap()
        .len(),
        3
    );
}
