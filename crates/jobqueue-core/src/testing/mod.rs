//! The store conformance suite: every operation of [`JobStore`] and every
//! guarantee of its contract that a store is responsible for, as cases any
//! store runs, each as its own test. [`MemoryStore`](crate::MemoryStore)
//! passes them all; so must every other store.
//!
//! A store's crate runs the suite with [`conformance_tests!`](crate::conformance_tests),
//! given a factory that makes a fresh, empty store on the suite's clock. It
//! generates one `#[test]` per case, named after the case (`enqueue::round_trip`,
//! `concurrent::racing_claims`, ...), so a test runner lists them, runs them in
//! parallel and reports every failure, not just the first:
//!
//! ```
//! # fn main() {}
//! // In the store's crate, in a test module of its own (e.g. behind
//! // `#[cfg(test)]` in lib.rs, or in a file under `tests/`), with the
//! // store's own constructor in place of MemoryStore's:
//! mod conformance {
//!     use std::sync::Arc;
//!
//!     use jobqueue_core::{JobStore, MemoryStore};
//!
//!     jobqueue_core::conformance_tests!(|clock| {
//!         Box::pin(async move { Arc::new(MemoryStore::with_clock(clock)) as Arc<dyn JobStore> })
//!     });
//! }
//! ```
//!
//! The suite controls time through the [`ManualClock`] it hands the factory,
//! so the store must read the time only from that clock. Each case gets a
//! fresh, empty store; after each case the suite checks that the events the
//! [`EventSink`] received are exactly the committed ones, gap-free and in
//! order.
//!
//! The tests run each case on the calling thread with [`block_on`], which
//! needs no async runtime: a store whose futures need one (a reactor, a
//! runtime's timers) passes its own with `block_on = ...` (see
//! [`conformance_tests!`](crate::conformance_tests)).
//!
//! # Layout, and adding a case
//!
//! Each area of the contract has a file (`enqueue`, `claim`, `phases`,
//! `fencing`, `checkpoints`, `snooze`, `cancel_retry`, `recover`, `list_events`, `retention`,
//! `webhooks`, `dependencies`, `pause`, `concurrent`) whose module doc says which guarantees it checks.
//! A case is an `async fn(&Ctx)` in its area's file, `pub(super)`, that
//! panics on a failure. To add one, write it there and add its name under
//! its area in the list at the top of `__conformance_suite!` in this file:
//! that is the one place a case is named, and every store that invokes
//! [`conformance_tests!`](crate::conformance_tests) gets a test for it. A
//! case written but not listed is dead code: the compiler warns, and
//! clippy with `-D warnings` (CI) refuses it.

#![expect(
    clippy::unwrap_used,
    reason = "the suite is test code: an unexpected error is a failure, reported with the case's name"
)]
#![expect(
    clippy::arithmetic_side_effects,
    reason = "test code: small counts and times that cannot overflow; a panic is a failed case"
)]

mod cancel_retry;
mod checkpoints;
mod claim;
mod concurrent;
mod dependencies;
pub mod differential;
mod enqueue;
mod fencing;
mod list_events;
mod pause;
mod phases;
mod recover;
mod retention;
pub mod shared;
mod snooze;
mod webhooks;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use serde_json::json;

use crate::clock::ManualClock;
use crate::error::{ErrorKind, StoreError};
use crate::event::Event;
use crate::id::JobId;
use crate::job::{Job, NewJob};
use crate::machine::EventType;
use crate::outbox::DeliveryFilter;
use crate::store::{ClaimRequest, Claimed, EventFilter, EventSink, JobFilter, JobStore, Lease};

/// The list of cases, by area, and what is generated from it: the test
/// functions of [`conformance_tests!`](crate::conformance_tests) (`@tests`)
/// and, in this crate, the [`cases`] module (`@table`). Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_suite {
    // The one list of the suite: every case, under its area (its file).
    ($mode:ident $args:tt) => {
        $crate::__conformance_suite! { @$mode $args
            enqueue {
                round_trip,
                refuses_bad_input,
                unique_keys,
                unique_by_input,
                unique_periods,
                batch_is_all_or_nothing,
            }
            claim {
                order_and_run_at,
                never_hands_out_a_job_twice,
                only_the_named_pipelines,
            }
            phases {
                happy_path_events,
                completed_phase_is_final,
                complete_needs_every_phase,
                reshaped_phases_keep_completed_results,
            }
            fencing {
                rejects_stale_tokens,
            }
            checkpoints {
                saved_and_read_back,
                kept_until_the_phase_completes,
                refused_checkpoints_change_nothing,
            }
            snooze {
                queued_again_without_spending_an_attempt,
                refused_snoozes_change_nothing,
            }
            cancel_retry {
                retry_resumes_at_failed_phase,
                permanent_failure,
                fail_job_without_phases,
                cancel,
                manual_retry,
            }
            recover {
                interrupted_jobs_keep_their_context,
                heartbeat_and_expired_leases,
                heartbeat_many_reports_lost_leases,
                crash_loops_end_when_attempts_are_spent,
            }
            list_events {
                list_filters_and_cursor,
                events_after_filters,
                counts_by_pipeline_and_status,
            }
            retention {
                stale_then_deleted,
                delete_by_user,
                prune_removes_old_history_only,
            }
            webhooks {
                outbox,
            }
            dependencies {
                waits_for_every_dependency,
                refuses_unknown_and_ended_dependencies,
                failure_cancels_dependents_transitively,
                cancel_cascades_with_a_reason,
                batch_waits_too,
                manual_retry_waits_again,
            }
            pause {
                paused_pipeline_is_not_claimed,
                running_jobs_finish_while_paused,
                pause_refuses_bad_names,
                pipeline_events_route_to_endpoints_that_name_them,
            }
            concurrent {
                racing_claims,
                racing_unique_enqueues,
                cancel_racing_completion,
                cancel_racing_claim,
                racing_retries,
            }
        }
    };

    // A store's tests: a module per area, a `#[test]` per case.
    (@tests { [$factory:expr] [$block_on:expr] } $($area:ident { $($case:ident),* $(,)? })*) => {
        /// Makes the store under test; shared by the generated tests.
        #[cfg_attr(not(test), expect(dead_code, reason = "only the generated tests call it"))]
        fn conformance_factory() -> impl $crate::testing::StoreFactory {
            $factory
        }

        /// Drives one case to its end; shared by the generated tests.
        #[cfg_attr(not(test), expect(dead_code, reason = "only the generated tests call it"))]
        fn conformance_block_on(case: impl ::core::future::Future<Output = ()>) {
            ($block_on)(case)
        }

        $(
            mod $area {
                $(
                    #[test]
                    fn $case() {
                        super::conformance_block_on($crate::testing::run_case(
                            super::conformance_factory(),
                            $crate::testing::cases::$area::$case(),
                        ));
                    }
                )*
            }
        )*
    };

    // This crate's table of cases: a function per case, for the tests above.
    (@table {} $($area:ident { $($case:ident),* $(,)? })*) => {
        /// Every case of the suite, by area, as the tests of
        /// [`conformance_tests!`](crate::conformance_tests) run them; pass
        /// one to [`run_case`](crate::testing::run_case) to run it by hand.
        pub mod cases {
            $(
                #[doc = concat!("The cases of `", stringify!($area), "`.")]
                pub mod $area {
                    $(
                        #[doc = concat!(
                            "The case `", stringify!($area), "::", stringify!($case), "`."
                        )]
                        pub fn $case() -> $crate::testing::Case {
                            $crate::testing::Case {
                                name: concat!(stringify!($area), "::", stringify!($case)),
                                run: |ctx| ::std::boxed::Box::pin($crate::testing::$area::$case(ctx)),
                            }
                        }
                    )*
                }
            )*
        }
    };
}

crate::__conformance_suite!(table {});

/// Generates the store conformance suite's tests for a store: one `#[test]`
/// per case, in a module per area, so `cargo test` and `cargo nextest` list
/// and run each case on its own (the list of cases is in [`testing`](crate::testing)).
///
/// Invoke it once per store configuration, in a test module of its own (it
/// adds a module per area and two helper functions to it). The argument is
/// the factory, anything that is a [`StoreFactory`](crate::testing::StoreFactory):
/// called once per case with the case's clock, it makes a fresh, empty store
/// that reads the time only from that clock.
///
/// The tests drive each case with [`testing::block_on`](crate::testing::block_on),
/// which needs no runtime. A store whose futures need one passes its own
/// executor as `block_on = ...`: anything callable as `block_on(future)`
/// that runs the future to its end on the calling thread, e.g.
/// `|case| tokio::runtime::Runtime::new().unwrap().block_on(case)`.
///
/// ```
/// # fn main() {}
/// mod conformance_on_my_executor {
///     use std::sync::Arc;
///
///     use jobqueue_core::{JobStore, MemoryStore};
///
///     /// The executor of the store's choice; here it also could do the
///     /// set-up and clean-up around each case.
///     fn run(case: impl std::future::Future<Output = ()>) {
///         jobqueue_core::testing::block_on(case)
///     }
///
///     jobqueue_core::conformance_tests!(
///         |clock| Box::pin(async move { Arc::new(MemoryStore::with_clock(clock)) as Arc<dyn JobStore> }),
///         block_on = run,
///     );
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr, block_on = $block_on:expr $(,)?) => {
        $crate::__conformance_suite! { tests { [$factory] [$block_on] } }
    };
    ($factory:expr $(,)?) => {
        $crate::__conformance_suite! { tests { [$factory] [$crate::testing::block_on] } }
    };
}

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

/// One case of the suite (see [`cases`]).
#[derive(Clone, Copy)]
pub struct Case {
    /// Its name, `area::case`, as in the path of its test.
    pub name: &'static str,
    /// The case: it panics on a failure.
    pub run: fn(&Ctx) -> BoxFuture<'_, ()>,
}

/// Runs one case against a fresh store from `factory`, then checks that the
/// events published to the store's sink are exactly the committed ones,
/// gap-free and in order. Panics, naming the case, on a failure.
pub async fn run_case<F: StoreFactory>(factory: F, case: Case) {
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

/// Runs `future` to its end on the calling thread, parking the thread while
/// the future waits: the executor of the generated tests. It needs no
/// runtime, so it suits stores whose futures are woken by their own threads
/// (channels) or are ready at once.
pub fn block_on<F: Future>(future: F) -> F::Output {
    /// Wakes the thread that runs the future.
    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        // A wake-up that came before this park makes it return at once, so
        // none is lost; a spurious return just polls again.
        std::thread::park();
    }
}

/// Polls every future of `futures` each time one is woken until all are
/// done, and returns their outputs in order: the racing calls of a case start
/// together, as they would from separate tasks.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(&mut outputs) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(out) => *output = Some(out),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(outputs.iter_mut().map(|o| o.take().unwrap()).collect())
        }
    })
    .await
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

/// Every event of job `id`, oldest first.
async fn events_of(ctx: &Ctx, id: JobId) -> Vec<Event> {
    let filter = EventFilter {
        job: Some(id),
        types: vec![],
    };
    ctx.store.events_after(0, filter, usize::MAX).await.unwrap()
}

/// The types of every event of job `id`, oldest first.
async fn types_of(ctx: &Ctx, id: JobId) -> Vec<EventType> {
    events_of(ctx, id)
        .await
        .iter()
        .map(Event::event_type)
        .collect()
}

/// The ids of the jobs one claim hands out, in claim order.
async fn claimed_ids(ctx: &Ctx, req: ClaimRequest) -> Vec<JobId> {
    let claimed = ctx.store.claim(req).await.unwrap();
    claimed.iter().map(|c| c.job.id).collect()
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
