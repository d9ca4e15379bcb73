//! A store that watches how the dispatcher reads the outbox and panics on
//! demand: faults a real store cannot produce when a test wants them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jobqueue_core::{
    AttemptOutcome, CancelOutcome, ClaimRequest, Claimed, Delivery, DeliveryFilter, DeliveryId,
    Event, EventFilter, EventSink, FailureOutcome, Job, JobCount, JobError, JobFilter, JobId,
    JobPage, JobStore, Lease, MemoryStore, NewJob, Progress, Pruned, RecoverScope, StoreError,
    WebhookRoute,
};
use jobqueue_events::EventBus;
use serde_json::Value;
use time::OffsetDateTime;

/// A [`MemoryStore`] that records every `limit` the outbox is read with and
/// panics in `due_deliveries` or `record_attempt` as often as it is told.
#[derive(Default)]
pub(crate) struct ProbeStore {
    inner: MemoryStore,
    due_limits: Mutex<Vec<usize>>,
    due_panics: AtomicU32,
    record_panics: AtomicU32,
}

impl ProbeStore {
    /// A probe whose events go to a new bus, as the probe and as a store.
    pub(crate) fn with_bus() -> (Arc<Self>, Arc<dyn JobStore>, EventBus) {
        let probe = Arc::new(Self::default());
        let bus = EventBus::new(256);
        probe.set_event_sink(Arc::new(bus.clone()) as Arc<dyn EventSink>);
        let store: Arc<dyn JobStore> = probe.clone();
        (probe, store, bus)
    }

    /// The next `n` reads of due deliveries panic.
    pub(crate) fn panic_in_due_deliveries(&self, n: u32) {
        self.due_panics.store(n, Ordering::SeqCst);
    }

    /// The next `n` recorded attempts panic (before anything is recorded).
    pub(crate) fn panic_in_record_attempt(&self, n: u32) {
        self.record_panics.store(n, Ordering::SeqCst);
    }

    /// Every `limit` `due_deliveries` was called with so far.
    pub(crate) fn due_limits(&self) -> Vec<usize> {
        self.due_limits.lock().unwrap().clone()
    }
}

/// Takes one from `left` if it is above zero, and says whether it did.
fn take_one(left: &AtomicU32) -> bool {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl JobStore for ProbeStore {
    async fn due_deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.due_limits.lock().unwrap().push(limit);
        if take_one(&self.due_panics) {
            panic!("injected panic in due_deliveries");
        }
        self.inner.due_deliveries(limit).await
    }

    async fn record_attempt(
        &self,
        id: DeliveryId,
        outcome: AttemptOutcome,
    ) -> Result<Delivery, StoreError> {
        if take_one(&self.record_panics) {
            panic!("injected panic in record_attempt");
        }
        self.inner.record_attempt(id, outcome).await
    }

    // Everything else is the memory store's.

    fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        self.inner.set_event_sink(sink);
    }

    fn set_webhook_routes(&self, routes: Vec<WebhookRoute>) {
        self.inner.set_webhook_routes(routes);
    }

    async fn enqueue(&self, job: NewJob) -> Result<Job, StoreError> {
        self.inner.enqueue(job).await
    }

    async fn pause_pipeline(&self, pipeline: &str) -> Result<bool, StoreError> {
        self.inner.pause_pipeline(pipeline).await
    }

    async fn resume_pipeline(&self, pipeline: &str) -> Result<bool, StoreError> {
        self.inner.resume_pipeline(pipeline).await
    }

    async fn paused_pipelines(&self) -> Result<Vec<String>, StoreError> {
        self.inner.paused_pipelines().await
    }

    async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>, StoreError> {
        self.inner.enqueue_batch(jobs).await
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
        self.inner.claim(req).await
    }

    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<bool, StoreError> {
        self.inner.heartbeat(lease, extend).await
    }

    async fn phase_started(&self, lease: &Lease, index: usize) -> Result<(), StoreError> {
        self.inner.phase_started(lease, index).await
    }

    async fn phase_progress(
        &self,
        lease: &Lease,
        index: usize,
        progress: Progress,
    ) -> Result<(), StoreError> {
        self.inner.phase_progress(lease, index, progress).await
    }

    async fn phase_completed(
        &self,
        lease: &Lease,
        index: usize,
        result: Value,
    ) -> Result<(), StoreError> {
        self.inner.phase_completed(lease, index, result).await
    }

    async fn save_checkpoint(
        &self,
        lease: &Lease,
        index: usize,
        checkpoint: Value,
    ) -> Result<(), StoreError> {
        self.inner.save_checkpoint(lease, index, checkpoint).await
    }

    async fn snooze(
        &self,
        lease: &Lease,
        index: usize,
        run_at: OffsetDateTime,
    ) -> Result<Job, StoreError> {
        self.inner.snooze(lease, index, run_at).await
    }

    async fn phase_failed(
        &self,
        lease: &Lease,
        index: usize,
        error: String,
        outcome: FailureOutcome,
    ) -> Result<Job, StoreError> {
        self.inner.phase_failed(lease, index, error, outcome).await
    }

    async fn complete_job(&self, lease: &Lease) -> Result<Job, StoreError> {
        self.inner.complete_job(lease).await
    }

    async fn fail_job(&self, lease: &Lease, error: JobError) -> Result<Job, StoreError> {
        self.inner.fail_job(lease, error).await
    }

    async fn cancel_running(&self, lease: &Lease) -> Result<Job, StoreError> {
        self.inner.cancel_running(lease).await
    }

    async fn interrupt(&self, lease: &Lease) -> Result<Job, StoreError> {
        self.inner.interrupt(lease).await
    }

    async fn recover(&self, scope: RecoverScope) -> Result<Vec<Job>, StoreError> {
        self.inner.recover(scope).await
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome, StoreError> {
        self.inner.request_cancel(id).await
    }

    async fn retry(&self, id: JobId) -> Result<Job, StoreError> {
        self.inner.retry(id).await
    }

    async fn delete(&self, id: JobId) -> Result<(), StoreError> {
        self.inner.delete(id).await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.job(id).await
    }

    async fn list(&self, filter: JobFilter) -> Result<JobPage, StoreError> {
        self.inner.list(filter).await
    }

    async fn events_after(
        &self,
        after: u64,
        filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.events_after(after, filter, limit).await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_seq().await
    }

    async fn reshape_phases(&self, lease: &Lease, phases: Vec<String>) -> Result<Job, StoreError> {
        self.inner.reshape_phases(lease, phases).await
    }

    async fn counts(&self) -> Result<Vec<JobCount>, StoreError> {
        self.inner.counts().await
    }

    async fn prune(&self, before: OffsetDateTime, limit: usize) -> Result<Pruned, StoreError> {
        self.inner.prune(before, limit).await
    }

    async fn mark_stale(
        &self,
        finished_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.inner.mark_stale(finished_before, limit).await
    }

    async fn delete_stale(
        &self,
        stale_before: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.inner.delete_stale(stale_before, limit).await
    }

    async fn next_delivery_at(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        self.inner.next_delivery_at().await
    }

    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        self.inner.deliveries(filter).await
    }
}
