//! [`MemoryStore`]: a complete in-memory [`JobStore`], the reference every
//! other store is checked against, and a store users can use in their tests.
//!
//! Every operation runs under one mutex: it checks everything first, then
//! applies the change, its events and their webhook deliveries together, so
//! a refused operation changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use crate::apply::{check_dependency, lease_until};
use crate::clock::{Clock, SystemClock, truncate_to_micros};
use crate::error::StoreError;
use crate::event::{Event, EventData};
use crate::id::{DeliveryId, JobId, LeaseToken};
use crate::job::{DependencyFailure, Job, JobError, NewJob, Progress, check_name};
use crate::listen::{Capabilities, Listeners, StoreListener};
use crate::machine::{JobAction, JobStatus, job_transition};
use crate::outbox::{
    AttemptOutcome, Delivery, DeliveryFilter, DeliveryStatus, WebhookRoute, deliveries_for,
};
use crate::store::{
    CancelOutcome, ClaimRequest, Claimed, EventFilter, EventSink, FailureOutcome, JobCount,
    JobFilter, JobPage, JobStore, Lease, Next, Pruned, RecoverScope,
};
use crate::unique::Held;

/// The page size of [`JobStore::list`] when the filter gives none.
pub const DEFAULT_PAGE: usize = 50;

/// An event waiting for the commit that assigns its sequence number.
struct Staged {
    job_id: Option<JobId>,
    pipeline: String,
    webhook_url: Option<String>,
    data: EventData,
}

impl Staged {
    fn new(job: &Job, data: EventData) -> Self {
        Self {
            job_id: Some(job.id),
            pipeline: job.pipeline.clone(),
            webhook_url: job.webhook_url.clone(),
            data,
        }
    }

    /// An event about a whole pipeline (no job, no per-job webhook).
    fn pipeline(pipeline: &str, data: EventData) -> Self {
        Self {
            job_id: None,
            pipeline: pipeline.to_owned(),
            webhook_url: None,
            data,
        }
    }
}

/// The dependencies a job still waits for, and what becomes of it if one
/// of them fails.
struct Waiting {
    on: BTreeSet<JobId>,
    policy: DependencyFailure,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<JobId, Job>,
    /// The jobs with dependencies not completed yet, by dependent. An entry
    /// stays while its job is cancelled or failed, so that a manual retry
    /// still waits.
    waiting: BTreeMap<JobId, Waiting>,
    events: BTreeMap<u64, Event>,
    last_seq: u64,
    deliveries: BTreeMap<DeliveryId, Delivery>,
    paused: BTreeSet<String>,
    routes: Vec<WebhookRoute>,
    sink: Option<Arc<dyn EventSink>>,
    listeners: Arc<Listeners>,
}

impl State {
    fn active_holder(&self, key: &str) -> Option<JobId> {
        self.jobs
            .values()
            .find(|j| j.status.is_active() && j.unique_key.as_deref() == Some(key))
            .map(|j| j.id)
    }

    /// The job, in any state, that holds the period key `key`.
    fn period_holder(&self, key: &str) -> Option<JobId> {
        self.jobs
            .values()
            .find(|j| j.period_key.as_deref() == Some(key))
            .map(|j| j.id)
    }

    fn leased(&self, lease: &Lease) -> Result<Job, StoreError> {
        let job = self
            .jobs
            .get(&lease.job_id)
            .ok_or(StoreError::JobNotFound(lease.job_id))?;
        if job.status != JobStatus::Running || job.lease != Some(lease.token) {
            return Err(StoreError::LeaseLost(lease.job_id));
        }
        Ok(job.clone())
    }

    fn job(&self, id: JobId) -> Result<Job, StoreError> {
        self.jobs
            .get(&id)
            .cloned()
            .ok_or(StoreError::JobNotFound(id))
    }

    /// Appends the staged events with the next sequence numbers, routes them
    /// to webhook deliveries, and publishes them. Runs only after every check
    /// of the operation passed.
    fn commit(&mut self, now: OffsetDateTime, staged: Vec<Staged>) {
        let mut published = Vec::with_capacity(staged.len());
        for s in staged {
            self.last_seq = self.last_seq.saturating_add(1);
            let event = Event {
                seq: self.last_seq,
                job_id: s.job_id,
                pipeline: s.pipeline,
                at: now,
                data: s.data,
            };
            let url = s.webhook_url.as_deref();
            for d in deliveries_for(&event, &self.routes, url, now) {
                self.deliveries.insert(d.id, d);
            }
            self.events.insert(event.seq, event.clone());
            published.push(event);
        }
        if let (Some(sink), false) = (&self.sink, published.is_empty()) {
            // The change is already applied: a panicking sink must not turn a
            // successful write into a panic in the caller.
            let publish = std::panic::AssertUnwindSafe(|| sink.publish(&published));
            if std::panic::catch_unwind(publish).is_err() {
                // Subscribers resync from the store; nothing is lost.
            }
        }
        self.listeners.notify_for(&published);
    }

    /// The dependencies of `spec` still to complete, or `Invalid` when one
    /// does not exist or can never complete.
    fn unmet_dependencies(&self, spec: &NewJob) -> Result<BTreeSet<JobId>, StoreError> {
        let mut unmet = BTreeSet::new();
        for id in spec.dependencies() {
            if check_dependency(id, self.jobs.get(&id).map(|j| j.status))? {
                unmet.insert(id);
            }
        }
        Ok(unmet)
    }

    /// Records that `job` waits for `unmet`, if it waits for any.
    fn wait_for(&mut self, job: &Job, unmet: BTreeSet<JobId>, policy: DependencyFailure) {
        if !unmet.is_empty() {
            self.waiting.insert(job.id, Waiting { on: unmet, policy });
        }
    }

    /// Job `id` completed or is gone: no job waits for it any longer.
    fn release(&mut self, id: JobId) {
        self.waiting.retain(|_, w| {
            w.on.remove(&id);
            !w.on.is_empty()
        });
    }

    /// Stores `job` as changed by an operation and stages `events` about it;
    /// if it ended, its dependents are released (completed) or, transitively,
    /// cancelled or failed (failed, cancelled), each with its own event.
    fn put_job(
        &mut self,
        job: Job,
        events: Vec<EventData>,
        now: OffsetDateTime,
        staged: &mut Vec<Staged>,
    ) {
        staged.extend(events.into_iter().map(|d| Staged::new(&job, d)));
        let mut ended = vec![(job.id, job.status)];
        self.jobs.insert(job.id, job);
        while let Some((id, status)) = ended.pop() {
            match status {
                JobStatus::Completed => self.release(id),
                JobStatus::Failed | JobStatus::Cancelled => {
                    ended.extend(self.cascade(id, status, now, staged));
                }
                _ => {}
            }
        }
    }

    /// Stores `job` with `events` (see [`State::put_job`]) and commits.
    fn commit_job(&mut self, now: OffsetDateTime, job: Job, events: Vec<EventData>) {
        let mut staged = Vec::new();
        self.put_job(job, events, now, &mut staged);
        self.commit(now, staged);
    }

    /// Ends the queued jobs that wait for `id`, which ended in `status`.
    /// Returns them with their new statuses.
    fn cascade(
        &mut self,
        id: JobId,
        status: JobStatus,
        now: OffsetDateTime,
        staged: &mut Vec<Staged>,
    ) -> Vec<(JobId, JobStatus)> {
        let dependents: Vec<(JobId, DependencyFailure)> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.on.contains(&id))
            .map(|(d, w)| (*d, w.policy))
            .collect();
        let mut ended = Vec::new();
        for (d, policy) in dependents {
            let Some(job) = self
                .jobs
                .get_mut(&d)
                .filter(|j| j.status == JobStatus::Queued)
            else {
                continue;
            };
            // A queued job may always be cancelled or failed.
            if let Ok(data) = job.dependency_ended(id, status, policy, now) {
                staged.push(Staged::new(job, data));
                ended.push((d, job.status));
            }
        }
        ended
    }

    /// Removes a job and its events, keeping the `job.deleted` tombstone
    /// (sequence `keep_from` and later). Deliveries keep their own snapshots.
    fn remove_job(&mut self, id: JobId, keep_from: u64) {
        self.jobs.remove(&id);
        self.waiting.remove(&id);
        self.release(id);
        self.events
            .retain(|seq, e| e.job_id != Some(id) || *seq >= keep_from);
    }
}

/// A [`JobStore`] in memory. Cheap to clone: clones share the same state.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store that reads the time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::default(),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation checks before it mutates, so a panic while the lock
        // was held cannot have left a half-applied change behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> OffsetDateTime {
        truncate_to_micros(self.clock.now())
    }
}

fn created(job: &Job) -> Staged {
    Staged::new(job, job.created_event())
}

#[async_trait]
impl JobStore for MemoryStore {
    fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        self.lock().sink = Some(sink);
    }

    fn set_webhook_routes(&self, routes: Vec<WebhookRoute>) {
        self.lock().routes = routes;
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::single_process()
    }

    fn listen(&self, listener: Arc<dyn StoreListener>) -> bool {
        self.lock().listeners.add(listener);
        true
    }

    async fn enqueue(&self, spec: NewJob) -> Result<Job, StoreError> {
        let mut jobs = self.enqueue_batch(vec![spec]).await.map_err(|e| match e {
            StoreError::Batch { error, .. } => *error,
            other => other,
        })?;
        jobs.pop()
            .ok_or_else(|| StoreError::Conflict("enqueue wrote no job".into()))
    }

    async fn enqueue_batch(&self, specs: Vec<NewJob>) -> Result<Vec<Job>, StoreError> {
        let batch_err = |index, e| StoreError::Batch {
            index,
            error: Box::new(e),
        };
        for (i, spec) in specs.iter().enumerate() {
            spec.validate()
                .map_err(|m| batch_err(i, StoreError::Invalid(m)))?;
        }
        let now = self.now();
        let mut st = self.lock();
        let mut waits = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let unmet = st.unmet_dependencies(spec).map_err(|e| batch_err(i, e))?;
            waits.push((unmet, spec.on_dependency_failure));
        }
        let jobs: Vec<Job> = specs.into_iter().map(|s| Job::queued(s, now)).collect();
        let duplicate = crate::unique::first_duplicate(&jobs, |held| {
            Ok::<_, StoreError>(match held {
                Held::Active(key) => st.active_holder(key),
                Held::Period(key) => st.period_holder(key),
            })
        })?;
        if let Some((i, e)) = duplicate {
            return Err(batch_err(i, e));
        }
        let staged = jobs.iter().map(created).collect();
        for (job, (unmet, policy)) in jobs.iter().zip(waits) {
            st.wait_for(job, unmet, policy);
            st.jobs.insert(job.id, job.clone());
        }
        st.commit(now, staged);
        Ok(jobs)
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        let now = self.now();
        let until = lease_until(now, req.lease_for)?;
        let mut st = self.lock();
        let mut runnable: Vec<&Job> = st
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued && j.run_at <= now)
            .filter(|j| !st.waiting.contains_key(&j.id))
            .filter(|j| !req.exclude_pipelines.contains(&j.pipeline))
            .filter(|j| !st.paused.contains(&j.pipeline))
            .filter(|j| {
                req.pipelines
                    .as_ref()
                    .is_none_or(|p| p.contains(&j.pipeline))
            })
            .collect();
        runnable.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.run_at, j.created_at, j.id));
        let ids: Vec<JobId> = runnable.iter().take(req.limit).map(|j| j.id).collect();
        let mut claimed = Vec::with_capacity(ids.len());
        let mut staged = Vec::with_capacity(ids.len());
        for id in ids {
            let mut job = st.job(id)?;
            let token = LeaseToken::new();
            for data in job.claim_and_start(token, until, now, req.start_phase)? {
                staged.push(Staged::new(&job, data));
            }
            let lease = Lease {
                job_id: id,
                token,
                attempt: job.attempt,
            };
            claimed.push(Claimed { lease, job });
        }
        for c in &claimed {
            st.jobs.insert(c.job.id, c.job.clone());
        }
        st.commit(now, staged);
        Ok(claimed)
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<bool, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        job.lease_expires_at = Some(lease_until(now, extend)?);
        let requested = job.cancel_requested;
        st.jobs.insert(job.id, job);
        Ok(requested)
    }

    async fn reshape_phases(&self, lease: &Lease, phases: Vec<String>) -> Result<Job, StoreError> {
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        job.reshape_phases(&phases)?;
        st.jobs.insert(job.id, job.clone());
        Ok(job)
    }

    async fn phase_started(&self, lease: &Lease, index: usize) -> Result<(), StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = vec![job.start_phase(index, lease.attempt, now)?];
        st.commit_job(now, job, events);
        Ok(())
    }

    async fn phase_progress(
        &self,
        lease: &Lease,
        index: usize,
        progress: Progress,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = vec![job.report_progress(index, progress)?];
        st.commit_job(now, job, events);
        Ok(())
    }

    async fn save_checkpoint(
        &self,
        lease: &Lease,
        index: usize,
        checkpoint: Value,
    ) -> Result<(), StoreError> {
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        job.save_checkpoint(index, checkpoint)?;
        st.jobs.insert(job.id, job);
        Ok(())
    }

    async fn snooze(
        &self,
        lease: &Lease,
        index: usize,
        run_at: OffsetDateTime,
    ) -> Result<Job, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = vec![job.snooze(index, run_at)?];
        let staged = events.into_iter().map(|d| Staged::new(&job, d)).collect();
        st.jobs.insert(job.id, job.clone());
        st.commit(now, staged);
        Ok(job)
    }

    async fn phase_completed(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = vec![job.complete_phase(index, result, now)?];
        st.commit_job(now, job, events);
        Ok(())
    }

    async fn phase_failed(
        &self,
        lease: &Lease,
        index: usize,
        error: String,
        outcome: FailureOutcome,
    ) -> Result<Job, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = job.fail_phase(index, error, outcome, now)?;
        st.commit_job(now, job.clone(), events);
        Ok(job)
    }

    async fn advance(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
        next: Next,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = job.advance(index, result, next, lease.attempt, now)?;
        st.commit_job(now, job, events);
        Ok(())
    }

    async fn complete_job(&self, lease: &Lease) -> Result<Job, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = vec![job.complete(now)?];
        st.commit_job(now, job.clone(), events);
        Ok(job)
    }

    async fn fail_job(&self, lease: &Lease, error: JobError) -> Result<Job, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = vec![job.fail(error, now)?];
        st.commit_job(now, job.clone(), events);
        Ok(job)
    }

    async fn cancel_running(&self, lease: &Lease) -> Result<Job, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = vec![job.cancel(now)?];
        st.commit_job(now, job.clone(), events);
        Ok(job)
    }

    async fn interrupt(&self, lease: &Lease) -> Result<Job, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.leased(lease)?;
        let events = vec![job.interrupt(now)?];
        st.commit_job(now, job.clone(), events);
        Ok(job)
    }

    async fn recover(&self, scope: RecoverScope) -> Result<Vec<Job>, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let ids: Vec<JobId> = st
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Running)
            .filter(|j| scope == RecoverScope::All || j.lease_expires_at.is_none_or(|t| t <= now))
            .map(|j| j.id)
            .collect();
        let mut jobs = Vec::with_capacity(ids.len());
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            let mut job = st.job(id)?;
            events.push(job.recover(now)?);
            jobs.push(job);
        }
        let mut staged = Vec::with_capacity(jobs.len());
        for (job, data) in jobs.iter().zip(events) {
            st.put_job(job.clone(), vec![data], now, &mut staged);
        }
        st.commit(now, staged);
        Ok(jobs)
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.job(id)?;
        if job.status == JobStatus::Running {
            job.cancel_requested = true;
            st.jobs.insert(id, job.clone());
            return Ok(CancelOutcome::Requested(job));
        }
        let data = job.cancel(now)?;
        st.commit_job(now, job.clone(), vec![data]);
        Ok(CancelOutcome::Cancelled(job))
    }

    async fn retry(&self, id: JobId) -> Result<Job, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.job(id)?;
        let data = job.manual_retry(now)?;
        if let Some(key) = &job.unique_key
            && let Some(existing) = st.active_holder(key)
        {
            return Err(StoreError::Duplicate {
                key: key.clone(),
                existing,
            });
        }
        let staged = vec![Staged::new(&job, data)];
        st.jobs.insert(id, job.clone());
        st.commit(now, staged);
        Ok(job)
    }

    async fn delete(&self, id: JobId) -> Result<(), StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut job = st.job(id)?;
        job.step(JobAction::Delete)?;
        let keep_from = st.last_seq.saturating_add(1);
        st.commit(now, vec![Staged::new(&job, EventData::Deleted {})]);
        st.remove_job(id, keep_from);
        Ok(())
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.lock().jobs.get(&id).cloned())
    }

    async fn list(&self, filter: JobFilter) -> Result<JobPage, StoreError> {
        let limit = if filter.limit == 0 {
            DEFAULT_PAGE
        } else {
            filter.limit
        };
        let st = self.lock();
        let upper = match filter.cursor {
            Some(c) => std::ops::Bound::Excluded(c),
            None => std::ops::Bound::Unbounded,
        };
        let mut matching = st
            .jobs
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .map(|(_, j)| j)
            .filter(|j| filter.statuses.is_empty() || filter.statuses.contains(&j.status))
            .filter(|j| filter.pipeline.as_ref().is_none_or(|p| *p == j.pipeline));
        let jobs: Vec<Job> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        let next_cursor = if more {
            jobs.last().map(|j| j.id)
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }

    async fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        let st = self.lock();
        let mut by: BTreeMap<(&str, JobStatus), u64> = BTreeMap::new();
        for job in st.jobs.values() {
            let n = by.entry((job.pipeline.as_str(), job.status)).or_default();
            *n = n.saturating_add(1);
        }
        Ok(by
            .into_iter()
            .map(|((pipeline, status), count)| JobCount {
                pipeline: pipeline.to_owned(),
                status,
                count,
            })
            .collect())
    }

    async fn events_after(
        &self,
        after: u64,
        filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let st = self.lock();
        Ok(st
            .events
            .range(after.saturating_add(1)..)
            .map(|(_, e)| e)
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.lock().last_seq)
    }

    async fn mark_stale(
        &self,
        finished_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut due: Vec<&Job> = st
            .jobs
            .values()
            .filter(|j| {
                j.status.is_finished() && j.finished_at.is_some_and(|t| t < finished_before)
            })
            .collect();
        due.sort_by_key(|j| (j.finished_at, j.id));
        let ids: Vec<JobId> = due.iter().take(limit).map(|j| j.id).collect();
        let mut staged = Vec::with_capacity(ids.len());
        let mut marked = Vec::with_capacity(ids.len());
        for id in &ids {
            let mut job = st.job(*id)?;
            let data = job.mark_stale(now)?;
            staged.push(Staged::new(&job, data));
            marked.push(job);
        }
        for job in marked {
            st.jobs.insert(job.id, job);
        }
        st.commit(now, staged);
        Ok(ids)
    }

    async fn delete_stale(
        &self,
        stale_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let now = self.now();
        let mut st = self.lock();
        let mut due: Vec<&Job> = st
            .jobs
            .values()
            .filter(|j| {
                j.status == JobStatus::Stale && j.stale_at.is_some_and(|t| t < stale_before)
            })
            .collect();
        due.sort_by_key(|j| (j.stale_at, j.id));
        let jobs: Vec<Job> = due.into_iter().take(limit).cloned().collect();
        for job in &jobs {
            job_transition(job.status, JobAction::Delete)?;
        }
        let keep_from = st.last_seq.saturating_add(1);
        st.commit(
            now,
            jobs.iter()
                .map(|j| Staged::new(j, EventData::Deleted {}))
                .collect(),
        );
        for job in &jobs {
            st.remove_job(job.id, keep_from);
        }
        Ok(jobs.into_iter().map(|j| j.id).collect())
    }

    async fn prune(&self, before: OffsetDateTime, limit: usize) -> Result<Pruned, StoreError> {
        let mut st = self.lock();
        let ended: Vec<DeliveryId> = st
            .deliveries
            .values()
            .filter(|d| d.status != DeliveryStatus::Pending && d.created_at < before)
            .map(|d| d.id)
            .take(limit)
            .collect();
        for id in &ended {
            st.deliveries.remove(id);
        }
        // A job's events all go with it but its `job.deleted` event; so an
        // event whose job is gone is such a tombstone.
        let tombstones: Vec<u64> = st
            .events
            .values()
            .filter(|e| e.at < before && matches!(e.data, EventData::Deleted {}))
            .filter(|e| e.job_id.is_some_and(|id| !st.jobs.contains_key(&id)))
            .map(|e| e.seq)
            .take(limit)
            .collect();
        for seq in &tombstones {
            st.events.remove(seq);
        }
        Ok(Pruned {
            deliveries: ended.len(),
            tombstones: tombstones.len(),
        })
    }

    async fn pause_pipeline(&self, pipeline: &str) -> Result<bool, StoreError> {
        check_name("pipeline name", pipeline).map_err(StoreError::Invalid)?;
        let now = self.now();
        let mut st = self.lock();
        if !st.paused.insert(pipeline.to_owned()) {
            return Ok(false);
        }
        st.commit(
            now,
            vec![Staged::pipeline(pipeline, EventData::PipelinePaused {})],
        );
        Ok(true)
    }

    async fn resume_pipeline(&self, pipeline: &str) -> Result<bool, StoreError> {
        check_name("pipeline name", pipeline).map_err(StoreError::Invalid)?;
        let now = self.now();
        let mut st = self.lock();
        if !st.paused.remove(pipeline) {
            return Ok(false);
        }
        st.commit(
            now,
            vec![Staged::pipeline(pipeline, EventData::PipelineResumed {})],
        );
        Ok(true)
    }

    async fn paused_pipelines(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().paused.iter().cloned().collect())
    }

    async fn due_deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let now = self.now();
        let st = self.lock();
        let mut due: Vec<&Delivery> = st
            .deliveries
            .values()
            .filter(|d| {
                d.status == DeliveryStatus::Pending && d.next_attempt_at.is_some_and(|t| t <= now)
            })
            .collect();
        due.sort_by_key(|d| (d.next_attempt_at, d.event_seq, d.id));
        Ok(due.into_iter().take(limit).cloned().collect())
    }

    async fn next_delivery_at(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let st = self.lock();
        Ok(st
            .deliveries
            .values()
            .filter(|d| d.status == DeliveryStatus::Pending)
            .filter_map(|d| d.next_attempt_at)
            .min())
    }

    async fn record_attempt(
        &self,
        id: DeliveryId,
        outcome: AttemptOutcome,
    ) -> Result<Delivery, StoreError> {
        let mut st = self.lock();
        let mut d = st
            .deliveries
            .get(&id)
            .cloned()
            .ok_or(StoreError::DeliveryNotFound(id))?;
        d.record(outcome)?;
        st.deliveries.insert(id, d.clone());
        Ok(d)
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let st = self.lock();
        let mut all: Vec<&Delivery> = st
            .deliveries
            .values()
            .filter(|d| filter.job.is_none_or(|j| Some(j) == d.job_id))
            .filter(|d| filter.statuses.is_empty() || filter.statuses.contains(&d.status))
            .collect();
        all.sort_by_key(|d| (d.event_seq, d.id));
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        Ok(all.into_iter().take(limit).cloned().collect())
    }
}

/// The conformance suite, a test per case: the reference store passes them all.
#[cfg(all(test, feature = "testing"))]
mod conformance {
    use std::sync::Arc;

    use super::MemoryStore;
    use crate::store::JobStore;

    crate::conformance_tests!(|clock| {
        Box::pin(async move { Arc::new(MemoryStore::with_clock(clock)) as Arc<dyn JobStore> })
    });

    // One process's store, handed out twice: the races against itself.
    crate::shared_conformance_tests!(|clock| {
        Box::pin(async move {
            let store = Arc::new(MemoryStore::with_clock(clock)) as Arc<dyn JobStore>;
            (store.clone(), store)
        })
    });
}
