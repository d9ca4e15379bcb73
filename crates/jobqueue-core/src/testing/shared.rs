//! The cases only a shared store can fail: two store handles on one
//! database, as two processes have them, racing each other.
//!
//! - Claims from both handles hand out every job once.
//! - A lease rescued through one handle fences the other's late writes.
//! - A unique key enqueued through both: one wins, the other is `Duplicate`;
//!   with a unique period, a window held by a finished job refuses both.
//! - Deliveries claimed through both: no delivery is handed to both.
//! - Leadership: one holder at a time, kept by renewing, taken over once
//!   the term ended unrenewed.
//! - The listener: a commit through one handle is announced to the other's
//!   listeners.
//! - A pipeline paused through one handle is not claimed through the other;
//!   resumed through one, the other's listeners hear of work.
//!
//! A store's crate runs them with
//! [`shared_conformance_tests!`](crate::shared_conformance_tests), whose
//! factory makes two handles on one fresh database. A store one process
//! owns (SQLite, `MemoryStore`) hands the same store twice: the cases about
//! races then check the store against itself, and those about what only a
//! shared store does (delivery claims, leaders, notices across handles) pass
//! at once when [`Capabilities::shared`](crate::Capabilities) is false.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use serde_json::json;

use super::{BoxFuture, assert_kind, join_all, spec};
use crate::clock::ManualClock;
use crate::error::ErrorKind;
use crate::id::JobId;
use crate::listen::{Notice, StoreListener};
use crate::outbox::WebhookRoute;
use crate::store::{ClaimRequest, JobStore, RecoverScope};

/// Two handles on one database, and the clock both read.
pub struct Pair {
    /// The first handle.
    pub a: Arc<dyn JobStore>,
    /// The second handle.
    pub b: Arc<dyn JobStore>,
    /// The clock of both.
    pub clock: Arc<ManualClock>,
}

/// Makes two handles on one fresh, empty database that read the time from
/// the given clock.
pub trait PairFactory:
    Fn(Arc<ManualClock>) -> BoxFuture<'static, (Arc<dyn JobStore>, Arc<dyn JobStore>)>
{
}
impl<F> PairFactory for F where
    F: Fn(Arc<ManualClock>) -> BoxFuture<'static, (Arc<dyn JobStore>, Arc<dyn JobStore>)>
{
}

/// One shared case, as [`shared_conformance_tests!`](crate::shared_conformance_tests) runs it.
pub struct SharedCase {
    /// Its name, `shared::case`.
    pub name: &'static str,
    /// The case: it panics on a failure.
    pub run: fn(&Pair) -> BoxFuture<'_, ()>,
}

/// Runs one shared case on two fresh handles from `factory`.
pub async fn run_shared_case<F: PairFactory>(factory: F, case: SharedCase) {
    let clock = Arc::new(ManualClock::default());
    let (a, b) = factory(clock.clone()).await;
    let pair = Pair { a, b, clock };
    (case.run)(&pair).await;
    let _ = case.name;
}

/// Generates the shared cases' tests for a store: one `#[test]` per case
/// in a module `shared`. The factory is a [`PairFactory`]; `block_on` as in
/// [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! shared_conformance_tests {
    ($factory:expr, block_on = $block_on:expr $(,)?) => {
        $crate::shared_conformance_tests!(@cases [$factory] [$block_on]
            racing_claims_across_handles,
            fencing_across_handles,
            unique_keys_across_handles,
            unique_periods_across_handles,
            delivery_claims_across_handles,
            leader_takeover,
            notices_across_handles,
            pause_across_handles,
        );
    };
    ($factory:expr $(,)?) => {
        $crate::shared_conformance_tests!($factory, block_on = $crate::testing::block_on);
    };
    (@cases [$factory:expr] [$block_on:expr] $($case:ident),* $(,)?) => {
        /// Makes the two handles; shared by the generated tests.
        #[cfg_attr(not(test), expect(dead_code, reason = "only the generated tests call it"))]
        fn shared_conformance_factory() -> impl $crate::testing::shared::PairFactory {
            $factory
        }

        /// Drives one case to its end; shared by the generated tests.
        #[cfg_attr(not(test), expect(dead_code, reason = "only the generated tests call it"))]
        fn shared_conformance_block_on(case: impl ::core::future::Future<Output = ()>) {
            ($block_on)(case)
        }

        mod shared {
            $(
                #[test]
                fn $case() {
                    super::shared_conformance_block_on($crate::testing::shared::run_shared_case(
                        super::shared_conformance_factory(),
                        $crate::testing::shared::SharedCase {
                            name: concat!("shared::", stringify!($case)),
                            run: |pair| ::std::boxed::Box::pin(
                                $crate::testing::shared::$case(pair)
                            ),
                        },
                    ));
                }
            )*
        }
    };
}

/// Claims from both handles, racing, hand out every job exactly once.
pub async fn racing_claims_across_handles(p: &Pair) {
    let mut ids = BTreeSet::new();
    for i in 0..40 {
        let j =
            p.a.enqueue(spec("p", &["x"]).input(json!({"i": i})))
                .await
                .unwrap();
        ids.insert(j.id);
    }
    let mut seen: BTreeSet<JobId> = BTreeSet::new();
    loop {
        let claims = join_all([
            p.a.claim(ClaimRequest::new(3)),
            p.b.claim(ClaimRequest::new(3)),
            p.a.claim(ClaimRequest::new(2)),
            p.b.claim(ClaimRequest::new(2)),
        ])
        .await;
        let mut any = false;
        for c in claims {
            for claimed in c.unwrap() {
                any = true;
                assert!(
                    seen.insert(claimed.job.id),
                    "job {} claimed twice",
                    claimed.job.id
                );
            }
        }
        if !any {
            break;
        }
    }
    assert_eq!(seen, ids, "every job claimed once");
}

/// A lease that expired and was rescued through one handle fences the
/// worker of the other: its writes fail with `LeaseLost` and change nothing.
pub async fn fencing_across_handles(p: &Pair) {
    let j = p.a.enqueue(spec("p", &["x", "y"])).await.unwrap();
    let old =
        p.a.claim(ClaimRequest::new(1).lease_for(Duration::from_secs(10)))
            .await
            .unwrap()
            .remove(0);
    p.a.phase_started(&old.lease, 0).await.unwrap();
    p.clock.advance(Duration::from_secs(11));
    let rescued = p.b.recover(RecoverScope::ExpiredLeases).await.unwrap();
    assert_eq!(rescued.iter().map(|j| j.id).collect::<Vec<_>>(), [j.id]);
    let new = p.b.claim(ClaimRequest::new(1)).await.unwrap().remove(0);
    assert_eq!(new.job.id, j.id);
    assert_ne!(new.lease.token, old.lease.token);
    assert_kind(
        p.a.phase_completed(&old.lease, 0, json!("late")).await,
        ErrorKind::LeaseLost,
    );
    assert_kind(
        p.a.heartbeat(&old.lease, Duration::from_secs(10)).await,
        ErrorKind::LeaseLost,
    );
    p.b.phase_started(&new.lease, 0).await.unwrap();
    p.b.phase_completed(&new.lease, 0, json!("on time"))
        .await
        .unwrap();
    let now = p.a.job(j.id).await.unwrap().unwrap();
    assert_eq!(now.phases[0].result, Some(json!("on time")));
}

/// One unique key enqueued through both handles at once: exactly one wins.
pub async fn unique_keys_across_handles(p: &Pair) {
    for round in 0..4 {
        let key = format!("k{round}");
        let results = join_all([
            p.a.enqueue(spec("p", &["x"]).unique_key(key.clone())),
            p.b.enqueue(spec("p", &["x"]).unique_key(key.clone())),
        ])
        .await;
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "exactly one enqueue of {key} wins");
        let lost = results.into_iter().find(Result::is_err).unwrap();
        assert_kind(lost, ErrorKind::Duplicate);
    }
}

/// One key held for a period, enqueued through both handles at once after
/// a job of the same window finished: both are refused by the window.
/// Then in a new window, exactly one wins.
pub async fn unique_periods_across_handles(p: &Pair) {
    let hour = Duration::from_secs(3600);
    let keyed = || spec("p", &["x"]).unique_key("kp").unique_for(hour);
    let first = p.a.enqueue(keyed()).await.unwrap();
    p.a.request_cancel(first.id).await.unwrap();
    let results = join_all([p.a.enqueue(keyed()), p.b.enqueue(keyed())]).await;
    for r in results {
        let e = assert_kind(r, ErrorKind::Duplicate);
        assert_eq!(e.duplicate_of(), Some(first.id), "{e}");
    }
    for round in 0..4 {
        let key = format!("kp{round}");
        let results = join_all([
            p.a.enqueue(spec("p", &["x"]).unique_key(key.clone()).unique_for(hour)),
            p.b.enqueue(spec("p", &["x"]).unique_key(key.clone()).unique_for(hour)),
        ])
        .await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{key}");
        let lost = results.into_iter().find(Result::is_err).unwrap();
        assert_kind(lost, ErrorKind::Duplicate);
    }
}

/// Deliveries claimed through both handles at once: none is handed to
/// both, and a claimed one is not handed out again before its claim ends.
pub async fn delivery_claims_across_handles(p: &Pair) {
    if !p.a.capabilities().shared {
        return;
    }
    let route = WebhookRoute {
        url: "https://example.com/hook".into(),
        events: None,
    };
    p.a.set_webhook_routes(vec![route.clone()]);
    p.b.set_webhook_routes(vec![route]);
    for _ in 0..10 {
        p.a.enqueue(spec("p", &["x"])).await.unwrap();
    }
    let lease = Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    let mut total = 0;
    loop {
        let claims = join_all([
            p.a.claim_deliveries(3, lease),
            p.b.claim_deliveries(3, lease),
        ])
        .await;
        let mut any = false;
        for c in claims {
            for d in c.unwrap() {
                any = true;
                total += 1;
                assert!(seen.insert(d.id), "delivery {} claimed twice", d.id);
            }
        }
        if !any {
            break;
        }
    }
    assert_eq!(total, 10, "every delivery claimed once");
    // The claims end: the deliveries are due again.
    p.clock.advance(Duration::from_secs(61));
    let again = p.b.claim_deliveries(100, lease).await.unwrap();
    assert_eq!(again.len(), 10);
}

/// One leader at a time; it keeps the role by renewing; once its term ends
/// unrenewed, another takes over and the old one is told it no longer
/// leads.
pub async fn leader_takeover(p: &Pair) {
    if !p.a.capabilities().shared {
        return;
    }
    let term = Duration::from_secs(30);
    assert!(p.a.try_lead("rescue", "A", term).await.unwrap());
    assert!(!p.b.try_lead("rescue", "B", term).await.unwrap());
    // Another role is another leadership.
    assert!(p.b.try_lead("retention", "B", term).await.unwrap());
    p.clock.advance(Duration::from_secs(20));
    assert!(p.a.try_lead("rescue", "A", term).await.unwrap(), "renewed");
    p.clock.advance(Duration::from_secs(20));
    assert!(
        !p.b.try_lead("rescue", "B", term).await.unwrap(),
        "A renewed 20 s ago: its term runs"
    );
    p.clock.advance(Duration::from_secs(11));
    let races = join_all([
        p.b.try_lead("rescue", "B", term),
        p.b.try_lead("rescue", "C", term),
    ])
    .await;
    let winners = races.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(winners, 1, "one of two racing takers wins");
    assert!(!p.a.try_lead("rescue", "A", term).await.unwrap());
}

/// Counts notices of work, and wakes whoever waits for the next one.
#[derive(Default)]
struct Count {
    state: Mutex<(usize, Vec<Waker>)>,
}

impl StoreListener for Count {
    fn notice(&self, notice: Notice) {
        if notice == Notice::JobsAvailable {
            let mut state = self.state.lock().unwrap();
            state.0 += 1;
            for w in state.1.drain(..) {
                w.wake();
            }
        }
    }
}

impl Count {
    fn get(&self) -> usize {
        self.state.lock().unwrap().0
    }

    /// Waits until more than `seen` notices came, or `within` passed (a
    /// thread of its own keeps the deadline, so this needs no runtime);
    /// returns whether they came.
    async fn wait_past(self: &Arc<Self>, seen: usize, within: Duration) -> bool {
        let timed_out = Arc::new(AtomicBool::new(false));
        let timer = {
            let (me, timed_out) = (Arc::clone(self), Arc::clone(&timed_out));
            std::thread::spawn(move || {
                std::thread::park_timeout(within);
                timed_out.store(true, Ordering::SeqCst);
                for w in me.state.lock().unwrap().1.drain(..) {
                    w.wake();
                }
            })
        };
        let came = std::future::poll_fn(|cx| {
            let mut state = self.state.lock().unwrap();
            if state.0 > seen {
                Poll::Ready(true)
            } else if timed_out.load(Ordering::SeqCst) {
                Poll::Ready(false)
            } else {
                state.1.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        timer.thread().unpark();
        came
    }
}

/// A job enqueued through one handle is announced to the listeners of the
/// other as work, within a deadline. A shared store's listener connects in
/// the background, so an enqueue made before it listens is not announced:
/// the case enqueues again until one is, for at most 20 s.
pub async fn notices_across_handles(p: &Pair) {
    let count = Arc::new(Count::default());
    if !p.b.listen(count.clone()) {
        return;
    }
    until_announced(p, &count, "p").await;
}

/// Enqueues jobs of `pipeline` through `a` until `count`, a listener of
/// `b`, hears of work, for at most 20 s.
async fn until_announced(p: &Pair, count: &Arc<Count>, pipeline: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = count.get();
        p.a.enqueue(spec(pipeline, &["x"])).await.unwrap();
        if count.wait_past(seen, Duration::from_millis(500)).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no notice of work within 20 s"
        );
    }
}

/// A pipeline paused through one handle is paused for the other: its claims
/// skip the pipeline's jobs, it lists it as paused, and a repeated pause
/// through it changes nothing. Resumed through the first handle, the jobs
/// are claimable through the second, whose listeners are told of work.
pub async fn pause_across_handles(p: &Pair) {
    let count = Arc::new(Count::default());
    let listening = p.b.listen(count.clone());
    let paused = p.a.enqueue(spec("p", &["x"])).await.unwrap();
    let other = p.a.enqueue(spec("q", &["x"])).await.unwrap();
    assert!(p.a.pause_pipeline("p").await.unwrap());
    assert!(!p.b.pause_pipeline("p").await.unwrap(), "paused already");
    assert_eq!(p.b.paused_pipelines().await.unwrap(), ["p"]);
    let got: Vec<JobId> =
        p.b.claim(ClaimRequest::new(10))
            .await
            .unwrap()
            .iter()
            .map(|c| c.job.id)
            .collect();
    assert_eq!(got, [other.id]);
    // The listener of a shared store connects in the background: wait for
    // it to hear anything at all (an enqueue announced) before resuming.
    if listening {
        until_announced(p, &count, "r").await;
    }
    let seen = count.get();
    assert!(p.a.resume_pipeline("p").await.unwrap());
    if listening {
        assert!(
            count.wait_past(seen, Duration::from_secs(20)).await,
            "resuming announces work to the other handle"
        );
    }
    let got: Vec<JobId> =
        p.b.claim(ClaimRequest::new(10).pipelines(vec!["p".into()]))
            .await
            .unwrap()
            .iter()
            .map(|c| c.job.id)
            .collect();
    assert_eq!(got, [paused.id]);
}
