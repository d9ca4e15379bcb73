//! Differential testing: a store against [`MemoryStore`], the reference the
//! state machine is written in. Random sequences of every write a caller can
//! make (claims with and without the first phase, phase steps, progress,
//! checkpoints, snoozes, failures with and without a retry, cancels,
//! retries, interruptions, recovery, dependencies, unique keys and periods,
//! pauses, retention, stale leases, heartbeats one by one and together,
//! reshaped phases, webhook deliveries and their attempts) run on both, and
//! after every step both must have answered alike (the value, or the
//! error's kind) and hold the same jobs, the same list (whole, and a
//! filtered one page by page), the same counts in the same order, the same
//! events and the same deliveries. Ids and lease tokens
//! differ between two stores by construction; ids are replaced by the job's
//! place in creation order and tokens by `"held"` before comparing.
//!
//! A store's crate runs it with proptest, in a test module (with `#[test]`
//! on the function):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use jobqueue_core::testing::differential::{compare, ops};
//! use jobqueue_core::{JobStore, ManualClock, MemoryStore};
//! use proptest::prelude::*;
//!
//! proptest! {
//!     fn agrees_with_the_memory_store(ops in ops()) {
//!         let clock = Arc::new(ManualClock::default());
//!         // The store under test, on `clock`, in place of this one:
//!         let store = Arc::new(MemoryStore::with_clock(clock.clone())) as Arc<dyn JobStore>;
//!         let outcome = futures::executor::block_on(compare(store, clock, &ops));
//!         prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
//!     }
//! }
//!
//! fn main() {
//!     agrees_with_the_memory_store();
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::StoreError;
use crate::clock::{Clock, ManualClock};
use crate::id::JobId;
use crate::job::{DependencyFailure, JobError, NewJob, Progress};
use crate::machine::EventType;
use crate::machine::PhaseStatus;
use crate::memory::MemoryStore;
use crate::outbox::{AttemptOutcome, Delivery, DeliveryFilter, WebhookRoute};
use crate::store::{
    CancelOutcome, ClaimRequest, EventFilter, FailureOutcome, JobFilter, JobStore, Lease, Next,
    RecoverScope,
};

/// One write (or a step of the clock) of a sequence.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Op {
    Enqueue {
        phases: usize,
        key: Option<u8>,
        delay: bool,
        priority: i32,
        dep: Option<(usize, bool)>,
        hook: bool,
    },
    /// A job whose key is held for its minute, in every state.
    EnqueuePeriodic {
        key: u8,
    },
    /// Records an attempt of the `d`-th due webhook delivery (by event and
    /// URL): 0 delivered, 1 to retry, 2 failed for good.
    Deliver {
        d: usize,
        outcome: u8,
    },
    /// Renews every lease held, in one call.
    HeartbeatAll,
    /// The `j`-th running job's pipeline changed its phases.
    Reshape {
        j: usize,
        to: usize,
    },
    Batch {
        n: usize,
        key: Option<u8>,
    },
    Claim {
        n: usize,
        start: bool,
    },
    Start {
        j: usize,
        idx: Option<usize>,
    },
    Progress {
        j: usize,
        idx: Option<usize>,
    },
    Checkpoint {
        j: usize,
        idx: Option<usize>,
    },
    CompletePhase {
        j: usize,
        idx: Option<usize>,
    },
    Advance {
        j: usize,
        idx: Option<usize>,
        complete: bool,
    },
    FailPhase {
        j: usize,
        idx: Option<usize>,
        retry: bool,
    },
    Snooze {
        j: usize,
        idx: Option<usize>,
    },
    CompleteJob {
        j: usize,
    },
    FailJob {
        j: usize,
    },
    RequestCancel {
        j: usize,
    },
    CancelRunning {
        j: usize,
    },
    Retry {
        j: usize,
    },
    Interrupt {
        j: usize,
    },
    Heartbeat {
        j: usize,
    },
    StaleLease {
        j: usize,
    },
    Recover {
        expired: bool,
    },
    Tick {
        secs: u64,
    },
    MarkStale,
    DeleteStale,
    Delete {
        j: usize,
    },
    Prune,
    Pause {
        resume: bool,
    },
}

/// Sequences of 1 to 59 operations.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..60)
}

fn op() -> impl Strategy<Value = Op> {
    let j = 0usize..8;
    // Mostly the phase the job is at; now and then any phase, to be refused.
    let idx = prop_oneof![4 => Just(None), 1 => (0usize..3).prop_map(Some)];
    prop_oneof![
        6 => (
            1usize..4,
            proptest::option::weighted(0.3, 0u8..3),
            proptest::bool::weighted(0.2),
            -1i32..2,
            proptest::option::weighted(0.25, (0usize..8, any::<bool>())),
            proptest::bool::weighted(0.3),
        )
            .prop_map(|(phases, key, delay, priority, dep, hook)| Op::Enqueue {
                phases,
                key,
                delay,
                priority,
                dep,
                hook,
            }),
        1 => (0u8..2).prop_map(|key| Op::EnqueuePeriodic { key }),
        2 => (0usize..6, 0u8..3).prop_map(|(d, outcome)| Op::Deliver { d, outcome }),
        1 => Just(Op::HeartbeatAll),
        1 => (0usize..8, 0usize..3).prop_map(|(j, to)| Op::Reshape { j, to }),
        1 => (1usize..4, proptest::option::of(0u8..3)).prop_map(|(n, key)| Op::Batch { n, key }),
        8 => (1usize..4, any::<bool>()).prop_map(|(n, start)| Op::Claim { n, start }),
        3 => (j.clone(), idx.clone()).prop_map(|(j, idx)| Op::Start { j, idx }),
        1 => (j.clone(), idx.clone()).prop_map(|(j, idx)| Op::Progress { j, idx }),
        1 => (j.clone(), idx.clone()).prop_map(|(j, idx)| Op::Checkpoint { j, idx }),
        3 => (j.clone(), idx.clone()).prop_map(|(j, idx)| Op::CompletePhase { j, idx }),
        3 => (j.clone(), idx.clone(), any::<bool>())
            .prop_map(|(j, idx, complete)| Op::Advance { j, idx, complete }),
        2 => (j.clone(), idx.clone(), any::<bool>())
            .prop_map(|(j, idx, retry)| Op::FailPhase { j, idx, retry }),
        1 => (j.clone(), idx).prop_map(|(j, idx)| Op::Snooze { j, idx }),
        2 => j.clone().prop_map(|j| Op::CompleteJob { j }),
        1 => j.clone().prop_map(|j| Op::FailJob { j }),
        1 => j.clone().prop_map(|j| Op::RequestCancel { j }),
        1 => j.clone().prop_map(|j| Op::CancelRunning { j }),
        1 => j.clone().prop_map(|j| Op::Retry { j }),
        1 => j.clone().prop_map(|j| Op::Interrupt { j }),
        1 => j.clone().prop_map(|j| Op::Heartbeat { j }),
        1 => j.clone().prop_map(|j| Op::StaleLease { j }),
        1 => proptest::bool::weighted(0.8).prop_map(|expired| Op::Recover { expired }),
        2 => (1u64..120).prop_map(|secs| Op::Tick { secs }),
        1 => Just(Op::MarkStale),
        1 => Just(Op::DeleteStale),
        1 => j.prop_map(|j| Op::Delete { j }),
        1 => Just(Op::Prune),
        1 => proptest::bool::weighted(0.7).prop_map(|resume| Op::Pause { resume }),
    ]
}

/// One store, the ids of its jobs in creation order and the leases its
/// claims gave.
struct Side {
    store: Arc<dyn JobStore>,
    clock: Arc<ManualClock>,
    ids: Vec<JobId>,
    /// The current lease of each job, by creation order.
    leases: Vec<Option<Lease>>,
    /// Every lease each job was ever given.
    old: Vec<Vec<Lease>>,
}

impl Side {
    fn new(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) -> Self {
        store.set_webhook_routes(vec![
            WebhookRoute {
                url: "http://example.com/all".into(),
                events: None,
            },
            WebhookRoute {
                url: "http://example.com/ends".into(),
                events: Some(vec![EventType::JobCompleted, EventType::JobFailed]),
            },
        ]);
        Self {
            store,
            clock,
            ids: Vec::new(),
            leases: Vec::new(),
            old: Vec::new(),
        }
    }

    fn id(&self, j: usize) -> Option<JobId> {
        (!self.ids.is_empty()).then(|| self.ids[j % self.ids.len()])
    }

    /// The lease of the `j`-th job (modulo their number) that holds one.
    fn lease(&self, j: usize) -> Option<Lease> {
        let held: Vec<Lease> = self.leases.iter().flatten().copied().collect();
        (!held.is_empty()).then(|| held[j % held.len()])
    }

    /// `idx`, or else the phase job `lease` runs (or, with none running,
    /// the first not completed), as the store holds it.
    async fn phase(&self, lease: &Lease, idx: Option<usize>) -> usize {
        if let Some(i) = idx {
            return i;
        }
        let job = self.store.job(lease.job_id).await.ok().flatten();
        job.and_then(|job| {
            job.phases
                .iter()
                .position(|p| p.status == PhaseStatus::Running)
                .or_else(|| job.first_incomplete_phase())
        })
        .unwrap_or(0)
    }

    fn place(&self, id: JobId) -> Option<usize> {
        self.ids.iter().position(|i| *i == id)
    }

    fn created(&mut self, id: JobId) {
        self.ids.push(id);
        self.leases.push(None);
        self.old.push(Vec::new());
    }

    fn claimed(&mut self, lease: Lease) {
        if let Some(p) = self.place(lease.job_id) {
            self.leases[p] = Some(lease);
            self.old[p].push(lease);
        }
    }

    /// Text with every job id replaced by its place (`J0`, `J1`, ...).
    fn normal(&self, text: String) -> String {
        self.ids.iter().enumerate().fold(text, |t, (i, id)| {
            t.replace(&id.to_string(), &format!("J{i}"))
        })
    }

    fn answer<T: serde::Serialize>(&self, out: Result<T, StoreError>) -> String {
        match out {
            Ok(v) => {
                let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
                strip_leases(&mut v);
                self.normal(format!("ok {v}"))
            }
            Err(e) => format!("err {:?}", e.kind()),
        }
    }

    /// Runs `op`; returns what the caller saw.
    async fn apply(&mut self, op: &Op) -> String {
        let s = Arc::clone(&self.store);
        let now = self.clock.now();
        let out = match op {
            Op::Enqueue {
                phases,
                key,
                delay,
                priority,
                dep,
                hook,
            } => {
                let names: Vec<String> = (0..*phases).map(|i| format!("p{i}")).collect();
                let mut spec = NewJob::new("pipe")
                    .phases(names)
                    .priority(*priority)
                    .input(json!({"n": self.ids.len()}));
                if let Some(k) = key {
                    spec = spec.unique_key(format!("k{k}"));
                }
                if *delay {
                    spec = spec.run_at(now + time::Duration::seconds(30));
                }
                if *hook {
                    spec = spec.webhook_url("http://example.com/job-hook");
                }
                if let Some((d, fail)) = dep
                    && let Some(id) = self.id(*d)
                {
                    spec = spec.depends_on([id]).on_dependency_failure(if *fail {
                        DependencyFailure::Fail
                    } else {
                        DependencyFailure::Cancel
                    });
                }
                let out = s.enqueue(spec).await;
                if let Ok(job) = &out {
                    self.created(job.id);
                }
                self.answer(out)
            }
            Op::EnqueuePeriodic { key } => {
                let spec = NewJob::new("pipe")
                    .phases(["p0"])
                    .unique_key(format!("period{key}"))
                    .unique_for(Duration::from_secs(60));
                let out = s.enqueue(spec).await;
                if let Ok(job) = &out {
                    self.created(job.id);
                }
                self.answer(out)
            }
            Op::Deliver { d, outcome } => {
                let mut due = s.due_deliveries(100).await.unwrap_or_default();
                due.sort_by(|a, b| (a.event_seq, &a.url).cmp(&(b.event_seq, &b.url)));
                match due.get(*d) {
                    Some(delivery) => {
                        let outcome = match outcome {
                            0 => AttemptOutcome::Delivered { status: 204 },
                            1 => AttemptOutcome::Retry {
                                status: Some(503),
                                error: "busy".into(),
                                next_attempt_at: now + time::Duration::seconds(20),
                            },
                            _ => AttemptOutcome::Failed {
                                status: Some(410),
                                error: "gone".into(),
                            },
                        };
                        let out = s.record_attempt(delivery.id, outcome).await;
                        self.answer(out.map(|d| delivery_view(&d)))
                    }
                    None => "skip".into(),
                }
            }
            Op::HeartbeatAll => {
                let held: Vec<Lease> = self.leases.iter().flatten().copied().collect();
                let out = s.heartbeat_many(&held, Duration::from_secs(90)).await;
                self.answer(out.map(|r| format!("{r:?}")))
            }
            Op::Reshape { j, to } => match self.lease(*j) {
                Some(l) => {
                    let names: Vec<String> = match to {
                        0 => vec!["p0".into()],
                        1 => vec!["p1".into(), "p0".into()],
                        _ => vec!["p0".into(), "p1".into(), "p2".into(), "p3".into()],
                    };
                    self.answer(s.reshape_phases(&l, names).await)
                }
                None => "skip".into(),
            },
            Op::Batch { n, key } => {
                let specs: Vec<NewJob> = (0..*n)
                    .map(|i| {
                        let spec = NewJob::new("other").phases(["only"]);
                        match key {
                            Some(k) if i == 0 => spec.unique_key(format!("b{k}")),
                            _ => spec,
                        }
                    })
                    .collect();
                let out = s.enqueue_batch(specs).await;
                if let Ok(jobs) = &out {
                    for job in jobs {
                        self.created(job.id);
                    }
                }
                self.answer(out)
            }
            Op::Claim { n, start } => {
                let mut req = ClaimRequest::new(*n).lease_for(Duration::from_secs(60));
                if *start {
                    req = req.start_phase();
                }
                let out = s.claim(req).await;
                if let Ok(claimed) = &out {
                    for c in claimed {
                        self.claimed(c.lease);
                    }
                }
                self.answer(out.map(|c| c.into_iter().map(|c| c.job).collect::<Vec<_>>()))
            }
            Op::Start { j, idx } => match self.lease(*j) {
                Some(l) => {
                    let i = self.phase(&l, *idx).await;
                    self.answer(s.phase_started(&l, i).await)
                }
                None => "skip".into(),
            },
            Op::Progress { j, idx } => match self.lease(*j) {
                Some(l) => {
                    let p = Progress::new(40, Some("half".into()));
                    let i = self.phase(&l, *idx).await;
                    self.answer(s.phase_progress(&l, i, p).await)
                }
                None => "skip".into(),
            },
            Op::Checkpoint { j, idx } => match self.lease(*j) {
                Some(l) => {
                    let i = self.phase(&l, *idx).await;
                    self.answer(s.save_checkpoint(&l, i, json!({"at": i})).await)
                }
                None => "skip".into(),
            },
            Op::CompletePhase { j, idx } => match self.lease(*j) {
                Some(l) => {
                    let i = self.phase(&l, *idx).await;
                    self.answer(s.phase_completed(&l, i, json!({"r": i})).await)
                }
                None => "skip".into(),
            },
            Op::Advance { j, idx, complete } => match self.lease(*j) {
                Some(l) => {
                    let i = self.phase(&l, *idx).await;
                    let phases = s
                        .job(l.job_id)
                        .await
                        .ok()
                        .flatten()
                        .map_or(0, |job| job.phases.len());
                    // With the phase it is at, the step that follows; with
                    // any phase, either step.
                    let last = match idx {
                        None => i + 1 >= phases,
                        Some(_) => *complete,
                    };
                    let next = if last {
                        Next::Complete
                    } else {
                        Next::Phase(i + 1)
                    };
                    self.answer(s.advance(&l, i, json!({"a": i}), next).await)
                }
                None => "skip".into(),
            },
            Op::FailPhase { j, idx, retry } => match self.lease(*j) {
                Some(l) => {
                    let outcome = if *retry {
                        FailureOutcome::RetryAt(now + time::Duration::seconds(5))
                    } else {
                        FailureOutcome::Fail
                    };
                    let i = self.phase(&l, *idx).await;
                    self.answer(s.phase_failed(&l, i, "boom".into(), outcome).await)
                }
                None => "skip".into(),
            },
            Op::Snooze { j, idx } => match self.lease(*j) {
                Some(l) => {
                    let at = now + time::Duration::seconds(10);
                    let i = self.phase(&l, *idx).await;
                    self.answer(s.snooze(&l, i, at).await)
                }
                None => "skip".into(),
            },
            Op::CompleteJob { j } => match self.lease(*j) {
                Some(l) => self.answer(s.complete_job(&l).await),
                None => "skip".into(),
            },
            Op::FailJob { j } => match self.lease(*j) {
                Some(l) => {
                    let error = JobError {
                        phase: None,
                        message: "gave up".into(),
                        attempt: l.attempt,
                    };
                    self.answer(s.fail_job(&l, error).await)
                }
                None => "skip".into(),
            },
            Op::RequestCancel { j } => match self.id(*j) {
                Some(id) => self.answer(s.request_cancel(id).await.map(|o| match o {
                    CancelOutcome::Cancelled(job) => ("cancelled", job),
                    CancelOutcome::Requested(job) => ("requested", job),
                })),
                None => "skip".into(),
            },
            Op::CancelRunning { j } => match self.lease(*j) {
                Some(l) => self.answer(s.cancel_running(&l).await),
                None => "skip".into(),
            },
            Op::Retry { j } => match self.id(*j) {
                Some(id) => self.answer(s.retry(id).await),
                None => "skip".into(),
            },
            Op::Interrupt { j } => match self.lease(*j) {
                Some(l) => self.answer(s.interrupt(&l).await),
                None => "skip".into(),
            },
            Op::Heartbeat { j } => match self.lease(*j) {
                Some(l) => self.answer(s.heartbeat(&l, Duration::from_secs(60)).await),
                None => "skip".into(),
            },
            Op::StaleLease { j } => {
                let stale = (!self.ids.is_empty())
                    .then(|| {
                        let p = j % self.ids.len();
                        let current = self.leases[p];
                        self.old[p]
                            .iter()
                            .rev()
                            .find(|l| Some(**l) != current)
                            .copied()
                    })
                    .flatten();
                match stale {
                    Some(l) => self.answer(s.phase_completed(&l, 0, json!("late")).await),
                    None => "skip".into(),
                }
            }
            Op::Recover { expired } => {
                let scope = if *expired {
                    RecoverScope::ExpiredLeases
                } else {
                    RecoverScope::All
                };
                self.answer(s.recover(scope).await)
            }
            Op::Tick { secs } => {
                self.clock.advance(Duration::from_secs(*secs));
                "tick".into()
            }
            Op::MarkStale => {
                let before = now - time::Duration::seconds(30);
                self.answer(s.mark_stale(before, 10).await)
            }
            Op::DeleteStale => {
                let before = now - time::Duration::seconds(10);
                self.answer(s.delete_stale(before, 10).await)
            }
            Op::Delete { j } => match self.id(*j) {
                Some(id) => self.answer(s.delete(id).await),
                None => "skip".into(),
            },
            Op::Prune => {
                let out = s.prune(now, 10).await.map(|p| (p.deliveries, p.tombstones));
                self.answer(out)
            }
            Op::Pause { resume } => {
                let out = if *resume {
                    s.resume_pipeline("pipe").await
                } else {
                    s.pause_pipeline("pipe").await
                };
                self.answer(out)
            }
        };
        // A job that is no longer running has no lease to use; a stale
        // write with an old one is its own op.
        for (p, id) in self.ids.clone().into_iter().enumerate() {
            if self.leases[p].is_some() {
                let running = s
                    .job(id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|job| job.lease.is_some());
                if !running {
                    self.leases[p] = None;
                }
            }
        }
        out
    }

    /// Every job (in creation order) and every event, normalised.
    async fn state(&self) -> String {
        let s = &self.store;
        let mut jobs = Vec::new();
        for id in &self.ids {
            let job = s.job(*id).await.unwrap();
            let mut v = serde_json::to_value(job).unwrap();
            strip_leases(&mut v);
            jobs.push(v);
        }
        let page = s
            .list(JobFilter {
                limit: 1000,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        let listed: Vec<Option<usize>> = page.jobs.iter().map(|j| self.place(j.id)).collect();
        let events = s
            .events_after(0, EventFilter::default(), 100_000)
            .await
            .unwrap();
        let events: Vec<Value> = events
            .iter()
            .map(|e| {
                json!([
                    e.seq,
                    e.event_type().to_string(),
                    e.job_id,
                    e.at.unix_timestamp(),
                    e.data
                ])
            })
            .collect();
        let counts = s.counts().await.unwrap();
        // In the order `JobStore::counts` promises, which is compared too.
        let counts: Vec<String> = counts
            .iter()
            .map(|c| format!("{}/{}={}", c.pipeline, c.status, c.count))
            .collect();
        // The queued jobs of one pipeline, two to a page, as far as three
        // pages go.
        let mut pages = Vec::new();
        let mut cursor = None;
        for _ in 0..3 {
            let page = s
                .list(JobFilter {
                    statuses: vec![crate::JobStatus::Queued],
                    pipeline: Some("pipe".into()),
                    limit: 2,
                    cursor,
                })
                .await
                .unwrap();
            pages.push(
                page.jobs
                    .iter()
                    .map(|j| self.place(j.id))
                    .collect::<Vec<_>>(),
            );
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        // Deliveries by event and URL (their ids differ between stores).
        let mut deliveries: Vec<String> = s
            .deliveries(DeliveryFilter::default())
            .await
            .unwrap()
            .iter()
            .map(delivery_view)
            .collect();
        deliveries.sort();
        let mut due: Vec<String> = s
            .due_deliveries(1000)
            .await
            .unwrap()
            .iter()
            .map(delivery_view)
            .collect();
        due.sort();
        let next_delivery = s
            .next_delivery_at()
            .await
            .unwrap()
            .map(|t| t.unix_timestamp());
        self.normal(format!(
            "jobs {}\nlisted {listed:?}\npages {pages:?}\nevents {}\ncounts {counts:?}\nlast {:?}\n\
             deliveries {deliveries:#?}\ndue {due:#?}\nnext delivery {next_delivery:?}",
            Value::Array(jobs),
            Value::Array(events),
            s.last_seq().await.ok(),
        ))
    }
}

/// A delivery without its id (random per store), as text.
fn delivery_view(d: &Delivery) -> String {
    format!(
        "{} {:?} {:?} {} {} {:?} {} {:?} {:?} {:?} {}",
        d.event_seq,
        d.job_id,
        d.target,
        d.url,
        d.event.event_type(),
        d.status,
        d.attempts,
        d.last_status,
        d.last_error,
        d.next_attempt_at.map(|t| t.unix_timestamp()),
        d.created_at.unix_timestamp(),
    )
}

/// Drops lease tokens (random per store) from a job's or a list's JSON.
fn strip_leases(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(lease) = map.get_mut("lease")
                && !lease.is_null()
            {
                *lease = json!("held");
            }
            map.values_mut().for_each(strip_leases);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_leases),
        _ => {}
    }
}

/// Where `got` first differs from `expected`: the line, and the text of
/// both around that place.
fn first_difference(expected: &str, got: &str) -> String {
    let at = expected
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map_or(expected.len().min(got.len()), |((i, _), _)| i);
    let window = |s: &str| {
        let from = (0..=at.saturating_sub(160))
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        let to = ((at + 160).min(s.len())..=s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[from..to].to_owned()
    };
    format!(
        "memory: ...{}...\nsqlite: ...{}...",
        window(expected),
        window(got)
    )
}

/// Runs `ops` on `store` (on `clock`, which it must read the time from)
/// and on a fresh [`MemoryStore`]; `Err` says at which step they first
/// differed, and how.
pub async fn compare(
    store: Arc<dyn JobStore>,
    clock: Arc<ManualClock>,
    ops: &[Op],
) -> Result<(), String> {
    let mem_clock = Arc::new(ManualClock::default());
    mem_clock.set(clock.now());
    let mut memory = Side::new(
        Arc::new(MemoryStore::with_clock(mem_clock.clone())),
        mem_clock,
    );
    let mut subject = Side::new(store, clock);
    for (step, op) in ops.iter().enumerate() {
        let expected = memory.apply(op).await;
        let got = subject.apply(op).await;
        if got != expected {
            return Err(format!(
                "answer of step {step} ({op:?}) differs:\nmemory: {expected}\nstore:  {got}"
            ));
        }
        let (expected, got) = (memory.state().await, subject.state().await);
        if got != expected {
            return Err(format!(
                "state after step {step} ({op:?}) differs:\n{}",
                first_difference(&expected, &got)
            ));
        }
    }
    Ok(())
}
