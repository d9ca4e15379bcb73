//! The keeper: a running phase's companion task. It keeps the claim's
//! lease registered with the process's renewer (`heartbeats.rs`, which
//! renews every running lease in one store call a heartbeat), acts on what
//! the renewals find (a cancel requested, the lease lost), and persists the
//! phase's progress, coalesced, so that the runner never waits on a store
//! write while the phase runs: a slow store (a busy SQLite file, a network
//! round trip) cannot hold up the phase's timeout, a cancel, or the
//! shutdown deadline.
//!
//! The runner tells the keeper to [`finish`](Keeper::finish) when the phase
//! has ended; the keeper then writes the last reported progress and only
//! then returns, so that progress is persisted before the phase's end
//! transition and no progress event follows it.

use std::sync::Arc;
use std::time::Duration;

use jobqueue_core::{JobStore, Lease, Progress, Renewal};
use tokio::sync::watch;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug};

use crate::clock::{instant_in, sleep_until_some};
use crate::heartbeats::{Beat, Heartbeats, Registration};
use crate::phase::Reported;
use crate::runtime::RuntimeConfig;

/// How a keeper ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeeperEnd {
    /// Told to finish; the last progress is written.
    Finished,
    /// A heartbeat found the lease lost: another worker owns the job, so
    /// nothing more may be written.
    LeaseLost,
}

/// The handle of a running keeper. Dropping it stops the keeper.
pub(crate) struct Keeper {
    finish: CancellationToken,
    task: AbortOnDropHandle<KeeperEnd>,
}

/// What the keeper works with.
struct Work {
    store: Arc<dyn JobStore>,
    lease: Lease,
    index: usize,
    /// The lease, renewed while this is held.
    renewal: Registration,
    /// Progress is written at most this often.
    progress_interval: Duration,
    progress: watch::Receiver<Reported>,
    job_cancel: CancellationToken,
    finish: CancellationToken,
}

impl Keeper {
    /// Starts keeping phase `index` of the job held by `lease`, its lease
    /// renewed by `heartbeats`. A heartbeat that reports a cancel request
    /// made through the store fires `job_cancel`.
    pub(crate) fn spawn(
        store: Arc<dyn JobStore>,
        heartbeats: &Heartbeats,
        lease: Lease,
        index: usize,
        config: &RuntimeConfig,
        progress: watch::Receiver<Reported>,
        job_cancel: CancellationToken,
    ) -> Self {
        let finish = CancellationToken::new();
        let work = Work {
            store,
            lease,
            index,
            renewal: heartbeats.register(lease),
            progress_interval: config.progress_interval,
            progress,
            job_cancel,
            finish: finish.clone(),
        };
        let task = tokio::spawn(work.run().in_current_span());
        Self {
            finish,
            task: AbortOnDropHandle::new(task),
        }
    }

    /// Resolves if the keeper ends before it is told to finish, which only a
    /// lost lease does. Not to be polled again once it resolved.
    pub(crate) async fn ended(&mut self) -> KeeperEnd {
        joined((&mut self.task).await)
    }

    /// Tells the keeper the phase ended and waits until it wrote the last
    /// progress (unless the lease was lost meanwhile).
    pub(crate) async fn finish(mut self) -> KeeperEnd {
        self.finish.cancel();
        joined((&mut self.task).await)
    }
}

/// A keeper's panic is the worker's: it unwinds into the worker task, whose
/// supervision queues the job again or fails it (see `runtime.rs`).
fn joined(result: Result<KeeperEnd, JoinError>) -> KeeperEnd {
    match result {
        Ok(end) => end,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Aborted: only when the tokio runtime shuts down under us.
            Err(_) => KeeperEnd::Finished,
        },
    }
}

impl Work {
    async fn run(mut self) -> KeeperEnd {
        // Progress is looked at on a timer, not awaited report by report:
        // a report then wakes no task. Waking one from the phase's thread
        // would queue it on that thread's worker, in a slot that other
        // workers cannot take over, so a phase that reports and then blocks
        // its thread would strand the keeper (and the runner waiting for
        // it) until the thread is free again.
        let mut next_look = instant_in(self.progress_interval);
        // False once the renewer is gone (the runtime is being dropped).
        let mut renewing = true;
        loop {
            tokio::select! {
                biased;
                () = self.finish.cancelled() => break,
                changed = self.renewal.beats.changed(), if renewing => {
                    if changed.is_err() {
                        renewing = false;
                        continue;
                    }
                    let beat = self.renewal.beats.borrow_and_update().clone();
                    match beat {
                        Some(Beat::Renewed(Renewal::Held { cancel_requested: true })) => {
                            self.job_cancel.cancel();
                        }
                        Some(Beat::Renewed(Renewal::Lost)) => return KeeperEnd::LeaseLost,
                        // The store panicked renewing this lease: the
                        // panic is the worker's, as in any of its calls.
                        Some(Beat::Panicked(message)) => std::panic::resume_unwind(Box::new(message)),
                        Some(Beat::Renewed(Renewal::Held { cancel_requested: false })) | None => {}
                    }
                }
                () = sleep_until_some(next_look) => {
                    self.write_unseen().await;
                    next_look = instant_in(self.progress_interval);
                }
            }
        }
        self.write_unseen().await;
        KeeperEnd::Finished
    }

    /// Writes the latest report if it is not written yet (coalescing those
    /// since the last write). The runner holds the reporter until the
    /// keeper has finished, so the channel is open here.
    async fn write_unseen(&mut self) {
        if !self.progress.has_changed().unwrap_or(false) {
            return;
        }
        let Some(progress) = self.progress.borrow_and_update().latest.clone() else {
            return;
        };
        self.write_progress(progress).await;
    }

    async fn write_progress(&self, progress: Progress) {
        if let Err(e) = self
            .store
            .phase_progress(&self.lease, self.index, progress)
            .await
        {
            debug!(error = %e, "progress not persisted");
        }
    }
}
