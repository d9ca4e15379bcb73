//! Supervision of the runtime's background tasks, and their health.
//!
//! The pump, the retention scheduler, the scheduler of periodic jobs and
//! the lease rescuer each run under
//! [`supervise`]: a panic is logged with `tracing::error!`, counted in the
//! task's [`TaskHealth`], and the task starts again after a short backoff,
//! so a panic (a store bug, a bad row) is visible and never silently ends
//! claiming or retention. Worker tasks are supervised per job instead (see
//! `runner::worker_panicked`): their panics are counted under
//! [`WORKERS`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use jobqueue_core::health::panic_message;
use jobqueue_core::{Health, TaskHealth, TaskState};
use tokio::time::Instant;
use tracing::{error, info};

use crate::runtime::{Inner, lock};

/// The pump: claims jobs and starts workers.
pub(crate) const PUMP: &str = "pump";
/// The worker tasks, counted together: a panic outside a phase.
pub(crate) const WORKERS: &str = "workers";
/// The retention scheduler, when configured.
pub(crate) const RETENTION: &str = "retention";
/// The scheduler of periodic jobs, when there are schedules.
pub(crate) const SCHEDULER: &str = "scheduler";
/// The lease rescuer, with [`RecoverScope::ExpiredLeases`](jobqueue_core::RecoverScope).
pub(crate) const LEASE_RESCUE: &str = "lease-rescue";

/// The first restart waits this long; each quick panic after it doubles it.
const FIRST_RESTART: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
const MAX_RESTART: Duration = Duration::from_secs(5);
/// A task that ran this long before it panicked restarts after
/// [`FIRST_RESTART`] again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The health of each background task, in the order they started.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    tasks: Mutex<Vec<TaskHealth>>,
}

impl Tasks {
    /// Adds a running task called `name`.
    pub(crate) fn add(&self, name: &str) {
        lock(&self.tasks).push(TaskHealth::running(name));
    }

    /// Every task's health now.
    pub(crate) fn health(&self) -> Health {
        Health::new(lock(&self.tasks).clone())
    }

    /// Counts a panic of `name` with its message.
    pub(crate) fn panicked(&self, name: &str, message: String) {
        self.update(name, |t| {
            t.panics = t.panics.saturating_add(1);
            t.last_panic = Some(message);
        });
    }

    /// Sets the state of `name`.
    pub(crate) fn set_state(&self, name: &str, state: TaskState) {
        self.update(name, |t| t.state = state);
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut TaskHealth)) {
        if let Some(t) = lock(&self.tasks).iter_mut().find(|t| t.name == name) {
            change(t);
        }
    }
}

/// Runs the task `start` makes, under the name `name`, until it returns
/// (they return when shutdown stops claiming); after a panic it logs and
/// counts it, waits a short backoff and starts the task again. The state
/// ends [`TaskState::Stopped`].
pub(crate) async fn supervise<F, Fut>(inner: Arc<Inner>, name: &'static str, start: F)
where
    F: Fn(Arc<Inner>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut quick_panics: u32 = 0;
    loop {
        let started = Instant::now();
        // The tasks keep their state in `Inner`, behind locks that ignore
        // poisoning and hold counters changed in single statements, so a
        // restart finds nothing half-changed.
        let run = AssertUnwindSafe(start(inner.clone())).catch_unwind().await;
        let Err(panic) = run else { break };
        let message = panic_message(&*panic);
        error!(task = name, panic = %message, "background task panicked; restarting it");
        inner.tasks.panicked(name, message);
        inner.tasks.set_state(name, TaskState::Restarting);
        if started.elapsed() >= HEALTHY_RUN {
            quick_panics = 0;
        }
        let delay = restart_delay(quick_panics);
        quick_panics = quick_panics.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = inner.stop_claiming.cancelled() => break,
        }
        info!(task = name, "background task restarted");
        inner.tasks.set_state(name, TaskState::Running);
    }
    inner.tasks.set_state(name, TaskState::Stopped);
}

/// The wait before a restart after `quick_panics` panics in quick
/// succession: 100 ms, doubling, at most 5 s.
fn restart_delay(quick_panics: u32) -> Duration {
    FIRST_RESTART
        .saturating_mul(2u32.saturating_pow(quick_panics))
        .min(MAX_RESTART)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_to_a_cap() {
        let delays: Vec<u64> = [0, 1, 2, 5, 6, 40, u32::MAX]
            .into_iter()
            .map(|n| restart_delay(n).as_millis().try_into().unwrap())
            .collect();
        assert_eq!(delays, [100, 200, 400, 3_200, 5_000, 5_000, 5_000]);
    }
}
