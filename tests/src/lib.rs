//! Shared harness of the workspace-level integration tests: a store of each
//! kind, an event recorder to wait on, and counting phases.
//!
//! Every test in `integration/` runs once per store kind ([`StoreKind`]);
//! tests wait on events with deadlines, never on sleeps.

#![expect(
    clippy::unwrap_used,
    reason = "test harness: an unexpected error is a test failure"
)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use jobqueue::{Clock, Event, EventFilter, EventType, JobId, JobQueue, JobStore, MemoryStore};
use jobqueue_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::sync::Notify;

pub mod receiver;

/// The stores every integration test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// [`MemoryStore`].
    Memory,
    /// The SQLite store on a file in a temporary directory.
    Sqlite,
}

impl StoreKind {
    /// Opens (or reopens) a store of this kind. `dir` holds the SQLite file;
    /// `memory` is reused for the memory kind so a "restart" sees its jobs.
    pub async fn open(
        self,
        dir: &Path,
        memory: &MemoryStore,
        clock: Arc<dyn Clock>,
    ) -> Arc<dyn JobStore> {
        match self {
            StoreKind::Memory => Arc::new(memory.clone()),
            StoreKind::Sqlite => {
                let options = SqliteOptions::default().clock(clock);
                Arc::new(SqliteStore::open(dir.join("jobs.db"), options).unwrap())
            }
        }
    }
}

/// Records every event of a queue (through its subscription) and wakes waiters.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    changed: Notify,
}

impl Recorder {
    fn push(&self, event: Event) {
        self.events.lock().unwrap().push(event);
        self.changed.notify_waiters();
    }
}

/// How long a test waits for something before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

impl Recorder {
    /// A recorder fed by a subscription to every event of `queue`, from the
    /// first one in its store.
    pub fn attach(queue: &JobQueue) -> Arc<Self> {
        let r = Arc::new(Self::default());
        let mut events = queue.subscribe_after(0, EventFilter::default());
        let rec = r.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                rec.push(event);
            }
        });
        r
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// The types of `job`'s events, in order.
    pub fn types_of(&self, job: JobId) -> Vec<EventType> {
        self.events()
            .iter()
            .filter(|e| e.job_id == Some(job))
            .map(Event::event_type)
            .collect()
    }

    /// Waits until `pred` holds for the recorded events, or fails after
    /// [`DEADLINE`] of real time (paused tokio time does not stop it).
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&[Event]) -> bool) {
        let start = std::time::Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&self.events.lock().unwrap()) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; events: {:#?}",
                self.summary()
            );
            // Wake on the next event, or re-check now and then (paused time
            // auto-advances through this timeout when nothing else is due).
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// Waits for an event of type `ty` of `job`.
    pub async fn wait_for(&self, job: JobId, ty: EventType) {
        self.wait_until(&format!("{ty} of {job}"), |evs| {
            evs.iter()
                .any(|e| e.job_id == Some(job) && e.event_type() == ty)
        })
        .await;
    }

    /// Waits for `n` events of type `ty` of `job`.
    pub async fn wait_for_n(&self, job: JobId, ty: EventType, n: usize) {
        self.wait_until(&format!("{n}x {ty} of {job}"), |evs| {
            evs.iter()
                .filter(|e| e.job_id == Some(job) && e.event_type() == ty)
                .count()
                >= n
        })
        .await;
    }

    fn summary(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| format!("{} {:?} {}", e.seq, e.job_id, e.event_type()))
            .collect()
    }
}

/// Counts calls, e.g. how often a phase ran.
#[derive(Debug, Default)]
pub struct Counter(AtomicUsize);

impl Counter {
    /// Adds one and returns the new count.
    pub fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The count.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Tracks how many things run at once, and the most that ever did.
#[derive(Debug, Default)]
pub struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    /// One more runs; the returned guard ends it.
    pub fn enter(self: &Arc<Self>) -> GaugeGuard {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }

    /// The most that ever ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Ends one run of a [`Gauge`] when dropped.
#[derive(Debug)]
pub struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}
