//! The workspace's integration tests: one binary, every test run once per
//! store kind (see [`store_tests!`]).

#![expect(
    clippy::unwrap_used,
    reason = "tests: an unexpected error is a failure"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jobqueue::{
    Clock, JobQueue, JobQueueBuilder, JobStore, MemoryStore, Pipeline, RetryPolicy, TokioClock,
};
use jobqueue_tests::{Recorder, StoreKind};

/// Defines each test once as `async fn name(kind: StoreKind)` and runs it
/// against every store: the memory store on tokio's paused time, the SQLite
/// store on real time (its writer thread does real I/O, which paused time
/// would skip over).
macro_rules! store_tests {
    ($(async fn $name:ident($kind:ident: StoreKind) $body:block)*) => {
        $(async fn $name($kind: StoreKind) $body)*

        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(jobqueue_tests::StoreKind::Memory).await
                }
            )*
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(jobqueue_tests::StoreKind::Sqlite).await
                }
            )*
        }
    };
}

mod dependencies;
mod events;
#[macro_use]
mod everyday;
mod hardening;
mod inside;
mod kill;
mod metrics;
mod pause;
mod poison;
mod postgres;
mod retention;
mod runtime;
mod schedules;
mod transactional;

/// A test's world: a store (that survives "restarts"), a clock, a temp dir.
struct Env {
    kind: StoreKind,
    dir: tempfile::TempDir,
    memory: MemoryStore,
    clock: Arc<dyn Clock>,
}

impl Env {
    fn new(kind: StoreKind) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        Self {
            kind,
            dir: tempfile::tempdir().unwrap(),
            memory: MemoryStore::with_clock(clock.clone()),
            clock,
        }
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("jobs.db")
    }

    /// This env's store, opened (again). A queue's shutdown closes its
    /// store, so tests look at the jobs of a stopped queue through this.
    async fn store(&self) -> Arc<dyn JobStore> {
        self.kind
            .open(self.dir.path(), &self.memory, self.clock.clone())
            .await
    }

    /// A builder with fast test settings on this env's store.
    async fn builder(&self) -> JobQueueBuilder {
        let store = self.store().await;
        JobQueue::builder()
            .store(store)
            .clock(self.clock.clone())
            .retry_policy(fast_retry(3))
            .stop_grace(Duration::from_millis(200))
            .shutdown_timeout(Duration::from_millis(200))
            .poll_interval(Duration::from_millis(100))
            .jitter_seed(7)
    }

    /// Starts a queue with `pipelines` and records its events.
    async fn start(&self, pipelines: Vec<Pipeline>) -> (JobQueue, Arc<Recorder>) {
        self.start_with(pipelines, |b| b).await
    }

    async fn start_with(
        &self,
        pipelines: Vec<Pipeline>,
        tweak: impl FnOnce(JobQueueBuilder) -> JobQueueBuilder,
    ) -> (JobQueue, Arc<Recorder>) {
        let mut b = self.builder().await;
        for p in pipelines {
            b = b.pipeline(p);
        }
        let queue = tweak(b).start().await.unwrap();
        let rec = Recorder::attach(&queue);
        (queue, rec)
    }
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        multiplier: 2.0,
        jitter: 0.5,
    }
}
