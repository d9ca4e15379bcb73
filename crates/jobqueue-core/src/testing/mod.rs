//! The store conformance suite: every operation of [`JobStore`] and every
//! guarantee of its contract that a store is responsible for, as a list of
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

mod cancel_retry;
mod claim;
mod enqueue;
mod fencing;
mod list_events;
mod phases;
mod recover;
mod retention;
mod webhooks;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::clock::ManualClock;
use crate::error::{ErrorKind, StoreError};
use crate::event::Event;
use crate::id::JobId;
use crate::job::{Job, NewJob};
use crate::machine::EventType;
use crate::outbox::DeliveryFilter;
use crate::store::{ClaimRequest, Claimed, EventFilter, EventSink, JobFilter, JobStore, Lease};

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
    ($($area:ident :: $name:ident),* $(,)?) => {
        /// Every case of the suite, in order.
        pub fn cases() -> Vec<Case> {
            vec![$(Case {
                name: concat!(stringify!($area), "::", stringify!($name)),
                run: |ctx| Box::pin($area::$name(ctx)),
            },)*]
        }
    };
}

cases![
    enqueue::round_trip,
    enqueue::refuses_bad_input,
    enqueue::unique_keys,
    enqueue::batch_is_all_or_nothing,
    claim::order_and_run_at,
    claim::never_hands_out_a_job_twice,
    phases::happy_path_events,
    phases::completed_phase_is_final,
    phases::complete_needs_every_phase,
    fencing::rejects_stale_tokens,
    cancel_retry::retry_resumes_at_failed_phase,
    cancel_retry::permanent_failure,
    cancel_retry::fail_job_without_phases,
    cancel_retry::cancel,
    cancel_retry::manual_retry,
    recover::interrupted_jobs_keep_their_context,
    recover::heartbeat_and_expired_leases,
    list_events::list_filters_and_cursor,
    list_events::events_after_filters,
    retention::stale_then_deleted,
    retention::delete_by_user,
    webhooks::outbox,
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
