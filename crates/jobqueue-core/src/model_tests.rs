//! Property tests of the state machine: random sequences of operations run
//! against [`MemoryStore`](crate::MemoryStore) and against a small reference
//! model written independently of the transition table; after every step the
//! two must agree and the invariants of `docs/architecture.md` must hold.
//!
//! Failing cases are recorded in `proptest-regressions/model_tests.txt`,
//! which is committed so they run again forever.

#![expect(
    clippy::arithmetic_side_effects,
    reason = "test code: small counts that cannot overflow"
)]

use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use proptest::prelude::*;
use serde_json::json;

use crate::clock::{Clock, ManualClock};
use crate::id::JobId;
use crate::job::{NewJob, Progress};
use crate::machine::{JobStatus, PhaseStatus};
use crate::memory::MemoryStore;
use crate::store::{
    CancelOutcome, ClaimRequest, EventFilter, FailureOutcome, JobStore, Lease, RecoverScope,
};

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        phases: usize,
        key: Option<u8>,
        delay: bool,
    },
    Claim {
        n: usize,
    },
    Start {
        j: usize,
    },
    Progress {
        j: usize,
    },
    CompletePhase {
        j: usize,
    },
    FailPhase {
        j: usize,
        retry: bool,
    },
    CompleteJob {
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
    Recover,
    Advance {
        secs: u64,
    },
    MarkStale,
    DeleteStale,
    Delete {
        j: usize,
    },
    StaleLeaseWrite {
        j: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let j = 0usize..6;
    prop_oneof![
        3 => (0usize..4, proptest::option::of(0u8..3), proptest::bool::weighted(0.2))
            .prop_map(|(phases, key, delay)| Op::Enqueue { phases, key, delay }),
        3 => (0usize..4).prop_map(|n| Op::Claim { n }),
        4 => j.clone().prop_map(|j| Op::Start { j }),
        1 => j.clone().prop_map(|j| Op::Progress { j }),
        4 => j.clone().prop_map(|j| Op::CompletePhase { j }),
        2 => (j.clone(), any::<bool>()).prop_map(|(j, retry)| Op::FailPhase { j, retry }),
        2 => j.clone().prop_map(|j| Op::CompleteJob { j }),
        1 => j.clone().prop_map(|j| Op::RequestCancel { j }),
        1 => j.clone().prop_map(|j| Op::CancelRunning { j }),
        1 => j.clone().prop_map(|j| Op::Retry { j }),
        1 => j.clone().prop_map(|j| Op::Interrupt { j }),
        1 => Just(Op::Recover),
        1 => (1u64..100).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::MarkStale),
        1 => Just(Op::DeleteStale),
        1 => j.clone().prop_map(|j| Op::Delete { j }),
        1 => j.prop_map(|j| Op::StaleLeaseWrite { j }),
    ]
}

/// The reference model of one job.
#[derive(Debug, Clone)]
struct MJob {
    id: JobId,
    status: JobStatus,
    phases: Vec<PhaseStatus>,
    key: Option<String>,
    lease: Option<Lease>,
    old_leases: Vec<Lease>,
    cancel_requested: bool,
    /// Results of completed phases: they must never change.
    results: Vec<Option<serde_json::Value>>,
    /// Attempts started (claims since the job was enqueued or retried by hand).
    attempt: u32,
}

impl MJob {
    fn running_phase(&self) -> Option<usize> {
        self.phases.iter().position(|p| *p == PhaseStatus::Running)
    }
    fn next_phase(&self) -> Option<usize> {
        self.phases
            .iter()
            .position(|p| *p != PhaseStatus::Completed)
    }
    fn active(&self) -> bool {
        matches!(self.status, JobStatus::Queued | JobStatus::Running)
    }
    fn finished(&self) -> bool {
        matches!(
            self.status,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
    fn drop_lease(&mut self) {
        if let Some(l) = self.lease.take() {
            self.old_leases.push(l);
        }
        self.cancel_requested = false;
    }
    fn interrupt(&mut self) {
        if let Some(i) = self.running_phase() {
            self.phases[i] = PhaseStatus::Pending;
        }
        self.status = JobStatus::Queued;
        self.drop_lease();
    }
    /// Found running after a crash: interrupted while attempts remain,
    /// failed (its running phase with it) on its last one.
    fn recover(&mut self) {
        if self.attempt < crate::job::DEFAULT_MAX_ATTEMPTS {
            self.interrupt();
            return;
        }
        if let Some(i) = self.running_phase() {
            self.phases[i] = PhaseStatus::Failed;
        }
        self.status = JobStatus::Failed;
        self.drop_lease();
    }
}

struct Harness {
    store: MemoryStore,
    clock: Arc<ManualClock>,
    jobs: Vec<MJob>,
    last_seq: u64,
}

impl Harness {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::default());
        Self {
            store: MemoryStore::with_clock(clock.clone()),
            clock,
            jobs: Vec::new(),
            last_seq: 0,
        }
    }

    fn pick(&self, j: usize) -> Option<usize> {
        (!self.jobs.is_empty()).then(|| j % self.jobs.len())
    }

    fn apply(&mut self, op: &Op) {
        let s = self.store.clone();
        let now = self.clock.now();
        match *op {
            Op::Enqueue { phases, key, delay } => {
                let key = key.map(|k| format!("k{k}"));
                let names: Vec<String> = (0..phases).map(|i| format!("p{i}")).collect();
                let mut spec = NewJob::new("pipe").phases(names);
                if let Some(k) = &key {
                    spec = spec.unique_key(k.clone());
                }
                if delay {
                    spec = spec.run_at(now + Duration::from_secs(30));
                }
                let held = key.as_ref().is_some_and(|k| {
                    self.jobs
                        .iter()
                        .any(|m| m.active() && m.key.as_ref() == Some(k))
                });
                let r = block_on(s.enqueue(spec));
                assert_eq!(
                    r.is_err(),
                    held,
                    "enqueue: duplicate key iff held by an active job: {r:?}"
                );
                if let Ok(job) = r {
                    self.jobs.push(MJob {
                        id: job.id,
                        status: JobStatus::Queued,
                        phases: vec![PhaseStatus::Pending; phases],
                        key,
                        lease: None,
                        old_leases: vec![],
                        cancel_requested: false,
                        results: vec![None; phases],
                        attempt: 0,
                    });
                }
            }
            Op::Claim { n } => {
                let runnable: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|m| m.status == JobStatus::Queued)
                    .filter(|m| {
                        block_on(s.job(m.id))
                            .unwrap()
                            .is_some_and(|j| j.run_at <= now)
                    })
                    .map(|m| m.id)
                    .collect();
                let claimed = block_on(s.claim(ClaimRequest::new(n))).unwrap();
                assert_eq!(claimed.len(), n.min(runnable.len()));
                for c in claimed {
                    assert!(
                        runnable.contains(&c.job.id),
                        "claimed a job that was not runnable"
                    );
                    let m = self.jobs.iter_mut().find(|m| m.id == c.job.id).unwrap();
                    m.status = JobStatus::Running;
                    m.lease = Some(c.lease);
                    m.attempt += 1;
                    assert_eq!(c.lease.attempt, m.attempt);
                }
            }
            Op::Start { j } => {
                let Some(i) = self.pick(j) else { return };
                let m = &self.jobs[i];
                let Some(lease) = m.lease else { return };
                let Some(next) = m.next_phase() else { return };
                let ok = m.phases[next] != PhaseStatus::Running;
                let r = block_on(s.phase_started(&lease, next));
                assert_eq!(r.is_ok(), ok, "start: {r:?}");
                if ok {
                    self.jobs[i].phases[next] = PhaseStatus::Running;
                }
                // Starting any completed phase is always refused.
                if let Some(done) = self.jobs[i]
                    .phases
                    .iter()
                    .position(|p| *p == PhaseStatus::Completed)
                {
                    assert!(block_on(s.phase_started(&lease, done)).is_err());
                }
            }
            Op::Progress { j } => {
                let Some(i) = self.pick(j) else { return };
                let m = &self.jobs[i];
                let Some(lease) = m.lease else { return };
                let idx = m.running_phase();
                let r =
                    block_on(s.phase_progress(&lease, idx.unwrap_or(0), Progress::new(50, None)));
                assert_eq!(r.is_ok(), idx.is_some(), "progress: {r:?}");
            }
            Op::CompletePhase { j } => {
                let Some(i) = self.pick(j) else { return };
                let m = &self.jobs[i];
                let Some(lease) = m.lease else { return };
                let idx = m.running_phase();
                let result = json!({"i": i, "seq": self.last_seq});
                let r = block_on(s.phase_completed(&lease, idx.unwrap_or(0), result.clone()));
                assert_eq!(r.is_ok(), idx.is_some(), "complete phase: {r:?}");
                if let Some(idx) = idx {
                    self.jobs[i].phases[idx] = PhaseStatus::Completed;
                    self.jobs[i].results[idx] = Some(result);
                }
            }
            Op::FailPhase { j, retry } => {
                let Some(i) = self.pick(j) else { return };
                let m = &self.jobs[i];
                let Some(lease) = m.lease else { return };
                let idx = m.running_phase();
                let outcome = if retry {
                    FailureOutcome::RetryAt(now)
                } else {
                    FailureOutcome::Fail
                };
                let r = block_on(s.phase_failed(&lease, idx.unwrap_or(0), "e".into(), outcome));
                assert_eq!(r.is_ok(), idx.is_some(), "fail phase: {r:?}");
                if let Some(idx) = idx {
                    let m = &mut self.jobs[i];
                    m.phases[idx] = PhaseStatus::Failed;
                    m.status = if retry {
                        JobStatus::Queued
                    } else {
                        JobStatus::Failed
                    };
                    m.drop_lease();
                }
            }
            Op::CompleteJob { j } => {
                let Some(i) = self.pick(j) else { return };
                let m = &self.jobs[i];
                let Some(lease) = m.lease else { return };
                let ok = m.phases.iter().all(|p| *p == PhaseStatus::Completed);
                let r = block_on(s.complete_job(&lease));
                assert_eq!(r.is_ok(), ok, "complete job: {r:?}");
                if ok {
                    self.jobs[i].status = JobStatus::Completed;
                    self.jobs[i].drop_lease();
                }
            }
            Op::RequestCancel { j } => {
                let Some(i) = self.pick(j) else { return };
                let m = &mut self.jobs[i];
                let r = block_on(s.request_cancel(m.id));
                match m.status {
                    JobStatus::Queued => {
                        assert!(matches!(r, Ok(CancelOutcome::Cancelled(_))), "{r:?}");
                        m.status = JobStatus::Cancelled;
                    }
                    JobStatus::Running => {
                        assert!(matches!(r, Ok(CancelOutcome::Requested(_))), "{r:?}");
                        m.cancel_requested = true;
                    }
                    _ => assert!(r.is_err(), "cancel of a {} job: {r:?}", m.status),
                }
            }
            Op::CancelRunning { j } => {
                let Some(i) = self.pick(j) else { return };
                let Some(lease) = self.jobs[i].lease else {
                    return;
                };
                block_on(s.cancel_running(&lease)).unwrap();
                let m = &mut self.jobs[i];
                if let Some(p) = m.running_phase() {
                    m.phases[p] = PhaseStatus::Cancelled;
                }
                m.status = JobStatus::Cancelled;
                m.drop_lease();
            }
            Op::Retry { j } => {
                let Some(i) = self.pick(j) else { return };
                let m = &self.jobs[i];
                let retryable = matches!(m.status, JobStatus::Failed | JobStatus::Cancelled);
                let held = m.key.as_ref().is_some_and(|k| {
                    self.jobs
                        .iter()
                        .any(|o| o.id != m.id && o.active() && o.key.as_ref() == Some(k))
                });
                let r = block_on(s.retry(m.id));
                assert_eq!(
                    r.is_ok(),
                    retryable && !held,
                    "retry of a {} job: {r:?}",
                    m.status
                );
                if r.is_ok() {
                    self.jobs[i].status = JobStatus::Queued;
                    self.jobs[i].attempt = 0;
                }
            }
            Op::Interrupt { j } => {
                let Some(i) = self.pick(j) else { return };
                let Some(lease) = self.jobs[i].lease else {
                    return;
                };
                block_on(s.interrupt(&lease)).unwrap();
                self.jobs[i].interrupt();
            }
            Op::Recover => {
                let n = block_on(s.recover(RecoverScope::All)).unwrap().len();
                let running = self
                    .jobs
                    .iter()
                    .filter(|m| m.status == JobStatus::Running)
                    .count();
                assert_eq!(n, running);
                for m in &mut self.jobs {
                    if m.status == JobStatus::Running {
                        m.recover();
                    }
                }
            }
            Op::Advance { secs } => self.clock.advance(Duration::from_secs(secs)),
            Op::MarkStale => {
                let marked = block_on(s.mark_stale(now, usize::MAX)).unwrap();
                for id in &marked {
                    let m = self.jobs.iter_mut().find(|m| m.id == *id).unwrap();
                    assert!(m.finished(), "retention touched a {} job", m.status);
                    m.status = JobStatus::Stale;
                }
            }
            Op::DeleteStale => {
                let deleted = block_on(s.delete_stale(now, usize::MAX)).unwrap();
                for id in &deleted {
                    let m = self.jobs.iter_mut().find(|m| m.id == *id).unwrap();
                    assert_eq!(
                        m.status,
                        JobStatus::Stale,
                        "deleted a job that was not stale"
                    );
                    m.status = JobStatus::Deleted;
                }
            }
            Op::Delete { j } => {
                let Some(i) = self.pick(j) else { return };
                let m = &mut self.jobs[i];
                let ok = m.finished() || m.status == JobStatus::Stale;
                let r = block_on(s.delete(m.id));
                assert_eq!(r.is_ok(), ok, "delete of a {} job: {r:?}", m.status);
                if ok {
                    m.status = JobStatus::Deleted;
                }
            }
            Op::StaleLeaseWrite { j } => {
                let Some(i) = self.pick(j) else { return };
                let Some(old) = self.jobs[i].old_leases.last().copied() else {
                    return;
                };
                let before = block_on(s.last_seq()).unwrap();
                assert!(block_on(s.phase_completed(&old, 0, json!("late"))).is_err());
                assert!(block_on(s.complete_job(&old)).is_err());
                assert_eq!(
                    block_on(s.last_seq()).unwrap(),
                    before,
                    "a stale lease wrote an event"
                );
            }
        }
    }

    fn check(&mut self) {
        let s = &self.store;
        let mut active_keys = std::collections::HashSet::new();
        for m in &self.jobs {
            let got = block_on(s.job(m.id)).unwrap();
            if m.status == JobStatus::Deleted {
                assert!(got.is_none(), "deleted job still there");
                continue;
            }
            let job = got.expect("model job exists in the store");
            assert_eq!(job.status, m.status, "job status");
            assert_eq!(
                job.phases.iter().map(|p| p.status).collect::<Vec<_>>(),
                m.phases,
                "phase statuses"
            );
            assert_eq!(
                job.lease.is_some(),
                job.status == JobStatus::Running,
                "lease iff running"
            );
            assert_eq!(job.lease, m.lease.map(|l| l.token));
            assert_eq!(job.cancel_requested, m.cancel_requested);
            for (p, expected) in job.phases.iter().zip(&m.results) {
                assert_eq!(
                    p.result.is_some(),
                    p.status == PhaseStatus::Completed,
                    "result iff completed"
                );
                assert_eq!(
                    &p.result, expected,
                    "a completed phase's result never changes"
                );
            }
            if job.status.is_active()
                && let Some(k) = &job.unique_key
            {
                assert!(
                    active_keys.insert(k.clone()),
                    "two active jobs hold key {k}"
                );
            }
        }
        let events =
            block_on(s.events_after(self.last_seq, EventFilter::default(), usize::MAX)).unwrap();
        for e in &events {
            assert!(e.seq > self.last_seq, "sequence numbers strictly increase");
            self.last_seq = e.seq;
        }
        assert_eq!(block_on(s.last_seq()).unwrap(), self.last_seq);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
            h.check();
        }
    }
}
