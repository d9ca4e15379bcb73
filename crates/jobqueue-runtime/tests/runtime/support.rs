//! What the runtime's tests share: a store that stalls or panics on cue, an
//! event recorder to wait on, and a runtime wired to both on tokio's clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jobqueue_core::AttemptOutcome;
use jobqueue_core::{
    CancelOutcome, Capabilities, ClaimRequest, Claimed, Delivery, DeliveryFilter, DeliveryId,
    Event, EventFilter, EventSink, EventType, FailureOutcome, Job, JobCount, JobError, JobFilter,
    JobId, JobPage, JobStore, Lease, MemoryStore, NewJob, Progress, Pruned, RecoverScope,
    RetryPolicy, StoreError, WebhookRoute,
};
use jobqueue_runtime::{Pipeline, Pipelines, Runtime, RuntimeConfig, TokioClock};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};

/// How long a test waits for something before it fails. On paused time this
/// is virtual: an idle runtime jumps there at once.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// A [`MemoryStore`] that, on cue, stalls its heartbeat and progress writes
/// until released, or panics in a given operation once.
pub(crate) struct FaultyStore {
    inner: MemoryStore,
    /// `true` while heartbeat and progress writes pass.
    open: watch::Sender<bool>,
    /// Heartbeat and progress writes that found the gate closed.
    stalled: AtomicUsize,
    stalled_changed: Notify,
    /// Calls so far, by operation.
    calls: Mutex<HashMap<&'static str, usize>>,
    /// The call (by count) on which an operation panics.
    panic_on: Mutex<HashMap<&'static str, usize>>,
    /// Whether it claims to commit writes in order
    /// (`Capabilities::ordered_writes`), which the memory store does.
    ordered: AtomicBool,
    /// `true` while `complete_job` answers once written; `false` holds the
    /// answer (the job is completed in the store) until released.
    completions_open: watch::Sender<bool>,
}

impl FaultyStore {
    pub(crate) fn new(inner: MemoryStore) -> Self {
        Self {
            inner,
            open: watch::Sender::new(true),
            stalled: AtomicUsize::new(0),
            stalled_changed: Notify::new(),
            calls: Mutex::default(),
            panic_on: Mutex::default(),
            ordered: AtomicBool::new(false),
            completions_open: watch::Sender::new(true),
        }
    }

    /// Reports `ordered_writes` from now on, as the memory store does.
    pub(crate) fn report_ordered_writes(&self) {
        self.ordered.store(true, Ordering::SeqCst);
    }

    /// From now on, `complete_job` writes and then holds its answer until
    /// [`release_completions`](Self::release_completions).
    pub(crate) fn hold_completions(&self) {
        self.completions_open.send_replace(false);
    }

    /// Answers held and later completions.
    pub(crate) fn release_completions(&self) {
        self.completions_open.send_replace(true);
    }

    /// After `op` wrote: holds a completion's answer while asked to.
    async fn answer(&self, op: &'static str) {
        if op == "complete_job" {
            let mut open = self.completions_open.subscribe();
            open.wait_for(|open| *open).await.unwrap();
        }
    }

    /// From now on, heartbeat and progress writes wait for [`release`](Self::release).
    pub(crate) fn stall_heartbeats_and_progress(&self) {
        self.open.send_replace(false);
    }

    /// Lets stalled and later writes through.
    pub(crate) fn release(&self) {
        self.open.send_replace(true);
    }

    /// Waits until a heartbeat or progress write is stalled.
    pub(crate) async fn wait_for_a_stall(&self) {
        within_deadline("a stalled write", async {
            loop {
                let changed = self.stalled_changed.notified();
                if self.stalled.load(Ordering::SeqCst) > 0 {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }

    /// The `nth` call of `op` from now on (1: the next one) panics.
    pub(crate) fn panic_once(&self, op: &'static str, nth: usize) {
        let done = self.calls.lock().unwrap().get(op).copied().unwrap_or(0);
        self.panic_on.lock().unwrap().insert(op, done + nth);
    }

    async fn cue(&self, op: &'static str) {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(op).or_default();
            *n += 1;
            *n
        };
        let panic_now = {
            let mut panic_on = self.panic_on.lock().unwrap();
            let due = panic_on.get(op) == Some(&call);
            if due {
                panic_on.remove(op);
            }
            due
        };
        if panic_now {
            panic!("injected panic in {op}");
        }
        if matches!(op, "heartbeat" | "phase_progress") && !*self.open.borrow() {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            self.stalled_changed.notify_waiters();
            let mut open = self.open.subscribe();
            open.wait_for(|open| *open).await.unwrap();
        }
    }
}

/// Implements [`JobStore`] for [`FaultyStore`]: each operation passes its cue,
/// then goes to the memory store.
macro_rules! delegate {
    ($(async fn $op:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        #[async_trait]
        impl JobStore for FaultyStore {
            fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
                self.inner.set_event_sink(sink);
            }

            fn set_webhook_routes(&self, routes: Vec<WebhookRoute>) {
                self.inner.set_webhook_routes(routes);
            }

            fn capabilities(&self) -> Capabilities {
                let mut caps = Capabilities::default();
                caps.ordered_writes = self.ordered.load(Ordering::SeqCst);
                caps
            }

            $(
                async fn $op(&self $(, $arg: $ty)*) -> $ret {
                    self.cue(stringify!($op)).await;
                    let out = self.inner.$op($($arg),*).await;
                    self.answer(stringify!($op)).await;
                    out
                }
            )*
        }
    };
}

delegate! {
    async fn enqueue(&self, job: NewJob) -> Result<Job, StoreError>;
    async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>, StoreError>;
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError>;
    async fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<bool, StoreError>;
    async fn reshape_phases(&self, lease: &Lease, phases: Vec<String>) -> Result<Job, StoreError>;
    async fn phase_started(&self, lease: &Lease, index: usize) -> Result<(), StoreError>;
    async fn phase_progress(&self, lease: &Lease, index: usize, progress: Progress) -> Result<(), StoreError>;
    async fn phase_completed(&self, lease: &Lease, index: usize, result: Value) -> Result<(), StoreError>;
    async fn save_checkpoint(&self, lease: &Lease, index: usize, checkpoint: Value) -> Result<(), StoreError>;
    async fn snooze(&self, lease: &Lease, index: usize, run_at: OffsetDateTime) -> Result<Job, StoreError>;
    async fn phase_failed(&self, lease: &Lease, index: usize, error: String, outcome: FailureOutcome) -> Result<Job, StoreError>;
    async fn complete_job(&self, lease: &Lease) -> Result<Job, StoreError>;
    async fn fail_job(&self, lease: &Lease, error: JobError) -> Result<Job, StoreError>;
    async fn cancel_running(&self, lease: &Lease) -> Result<Job, StoreError>;
    async fn interrupt(&self, lease: &Lease) -> Result<Job, StoreError>;
    async fn recover(&self, scope: RecoverScope) -> Result<Vec<Job>, StoreError>;
    async fn request_cancel(&self, id: JobId) -> Result<CancelOutcome, StoreError>;
    async fn retry(&self, id: JobId) -> Result<Job, StoreError>;
    async fn delete(&self, id: JobId) -> Result<(), StoreError>;
    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    async fn list(&self, filter: JobFilter) -> Result<JobPage, StoreError>;
    async fn events_after(&self, after: u64, filter: EventFilter, limit: usize) -> Result<Vec<Event>, StoreError>;
    async fn last_seq(&self) -> Result<u64, StoreError>;
    async fn mark_stale(&self, finished_before: OffsetDateTime, limit: usize) -> Result<Vec<JobId>, StoreError>;
    async fn delete_stale(&self, stale_before: OffsetDateTime, limit: usize) -> Result<Vec<JobId>, StoreError>;
    async fn prune(&self, before: OffsetDateTime, limit: usize) -> Result<Pruned, StoreError>;
    async fn counts(&self) -> Result<Vec<JobCount>, StoreError>;
    async fn due_deliveries(&self, limit: usize) -> Result<Vec<Delivery>, StoreError>;
    async fn next_delivery_at(&self) -> Result<Option<OffsetDateTime>, StoreError>;
    async fn record_attempt(&self, id: DeliveryId, outcome: AttemptOutcome) -> Result<Delivery, StoreError>;
    async fn deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError>;
    async fn pause_pipeline(&self, pipeline: &str) -> Result<bool, StoreError>;
    async fn resume_pipeline(&self, pipeline: &str) -> Result<bool, StoreError>;
    async fn paused_pipelines(&self) -> Result<Vec<String>, StoreError>;
}

/// Records every committed event and wakes waiters.
#[derive(Default)]
pub(crate) struct Recorder {
    events: Mutex<Vec<Event>>,
    changed: Notify,
}

impl EventSink for Recorder {
    fn publish(&self, events: &[Event]) {
        self.events.lock().unwrap().extend_from_slice(events);
        self.changed.notify_waiters();
    }
}

impl Recorder {
    /// The first `ty` event of `job`, waiting for it until the deadline.
    pub(crate) async fn wait_for(&self, job: JobId, ty: EventType) -> Event {
        within_deadline(&format!("{ty} of job {job}"), async {
            loop {
                let changed = self.changed.notified();
                if let Some(e) = self.find(job, ty) {
                    return e;
                }
                changed.await;
            }
        })
        .await
    }

    /// The first `ty` event of any job, waiting for it until the deadline.
    pub(crate) async fn wait_for_any(&self, ty: EventType) -> Event {
        within_deadline(&format!("{ty} of any job"), async {
            loop {
                let changed = self.changed.notified();
                let found = self
                    .events
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|e| e.event_type() == ty)
                    .cloned();
                if let Some(e) = found {
                    return e;
                }
                changed.await;
            }
        })
        .await
    }

    fn find(&self, job: JobId, ty: EventType) -> Option<Event> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.job_id == Some(job) && e.event_type() == ty)
            .cloned()
    }

    /// The types of `job`'s events so far, in order.
    pub(crate) fn types_of(&self, job: JobId) -> Vec<EventType> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.job_id == Some(job))
            .map(Event::event_type)
            .collect()
    }
}

/// Runs `fut`, failing the test if it takes longer than [`DEADLINE`].
pub(crate) async fn within_deadline<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(t) => t,
        Err(_) => panic!("waited {DEADLINE:?} for {what}"),
    }
}

/// A store, its events and a clock that follows tokio's (paused) time.
pub(crate) struct World {
    pub(crate) clock: Arc<TokioClock>,
    pub(crate) store: Arc<FaultyStore>,
    pub(crate) events: Arc<Recorder>,
}

impl World {
    pub(crate) fn new() -> Self {
        let clock = Arc::new(TokioClock::new());
        let store = Arc::new(FaultyStore::new(MemoryStore::with_clock(clock.clone())));
        let events = Arc::new(Recorder::default());
        store.set_event_sink(events.clone());
        Self {
            clock,
            store,
            events,
        }
    }

    /// Test settings: this world's clock, fixed jitter, quick retries.
    pub(crate) fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            clock: self.clock.clone(),
            jitter_seed: Some(7),
            retry: RetryPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
                ..RetryPolicy::default()
            },
            ..RuntimeConfig::default()
        }
    }

    /// Starts a runtime with these pipelines and settings on this world's store.
    pub(crate) async fn start(&self, pipelines: Vec<Pipeline>, config: RuntimeConfig) -> Runtime {
        let pipelines = Pipelines::new(pipelines).unwrap();
        Runtime::start(self.store.clone(), pipelines, config)
            .await
            .unwrap()
    }

    /// Enqueues `job` (its phases filled in from its pipeline) and tells `rt`.
    pub(crate) async fn enqueue(&self, rt: &Runtime, job: NewJob) -> Job {
        let names = rt.pipelines().get(&job.pipeline).unwrap().phase_names();
        let job = self.store.enqueue(job.phases(names)).await.unwrap();
        rt.notify_enqueued(job.run_at);
        job
    }

    /// The job as stored now.
    pub(crate) async fn job(&self, id: JobId) -> Job {
        self.store.job(id).await.unwrap().unwrap()
    }
}
