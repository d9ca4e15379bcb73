//! Lease renewal for the whole process, batched: every running phase's
//! keeper registers its lease here, and one task renews all registered
//! leases once a heartbeat period with a single
//! [`JobStore::heartbeat_many`] call (in chunks of [`CHUNK`]), instead of
//! one store call per lease. With many jobs running, a database store then
//! takes one statement a period for all of them.
//!
//! A lease registered just before a tick is renewed early (harmless: it
//! only moves the expiry later); one registered just after is renewed one
//! period later, as a keeper of its own would have. Each registration sees
//! the latest outcome for its lease: still held (and whether a cancel was
//! requested), or lost. A failed call is logged and the leases are renewed
//! at the next tick, as a failed heartbeat always was. A call that panics
//! is reported to the keepers of its leases, which panic with its message:
//! as before, a panic in a heartbeat is the worker's (see `keeper.rs`),
//! and the renewing task goes on for the others.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use jobqueue_core::health::panic_message;
use jobqueue_core::{JobStore, Lease, Renewal};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, warn};

/// The most leases one store call renews.
const CHUNK: usize = 500;

/// The latest outcome of renewing one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Beat {
    /// The store said (see [`Renewal`]).
    Renewed(Renewal),
    /// The store call panicked with this message.
    Panicked(String),
}

/// Where a lease's outcomes go.
type Outcomes = watch::Sender<Option<Beat>>;

/// The registered leases, by registration.
#[derive(Default)]
struct Registered {
    next: u64,
    leases: HashMap<u64, (Lease, Outcomes)>,
}

/// The process's lease renewer; renewing stops when it is dropped.
pub(crate) struct Heartbeats {
    registered: Arc<Mutex<Registered>>,
    _task: AbortOnDropHandle<()>,
}

/// A lease kept renewed until this is dropped.
pub(crate) struct Registration {
    id: u64,
    registered: Arc<Mutex<Registered>>,
    /// The latest outcome for the lease (`None` before the first).
    pub(crate) beats: watch::Receiver<Option<Beat>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registered).leases.remove(&self.id);
    }
}

fn lock(registered: &Mutex<Registered>) -> std::sync::MutexGuard<'_, Registered> {
    registered.lock().unwrap_or_else(|e| e.into_inner())
}

impl Heartbeats {
    /// Renews the registered leases on `store` every `period`, each for
    /// `lease_for`. Must be called inside a tokio runtime.
    pub(crate) fn spawn(store: Arc<dyn JobStore>, period: Duration, lease_for: Duration) -> Self {
        let registered = Arc::new(Mutex::new(Registered::default()));
        let task = renew(store, Arc::clone(&registered), period, lease_for);
        Self {
            registered,
            _task: AbortOnDropHandle::new(tokio::spawn(task.in_current_span())),
        }
    }

    /// Keeps `lease` renewed until the registration is dropped.
    pub(crate) fn register(&self, lease: Lease) -> Registration {
        let (tx, rx) = watch::channel(None);
        let mut registered = lock(&self.registered);
        let id = registered.next;
        registered.next = id.wrapping_add(1);
        registered.leases.insert(id, (lease, tx));
        Registration {
            id,
            registered: Arc::clone(&self.registered),
            beats: rx,
        }
    }
}

/// The renewing task.
async fn renew(
    store: Arc<dyn JobStore>,
    registered: Arc<Mutex<Registered>>,
    period: Duration,
    lease_for: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.reset();
    loop {
        tick.tick().await;
        let batch: Vec<(Lease, Outcomes)> = lock(&registered).leases.values().cloned().collect();
        for chunk in batch.chunks(CHUNK) {
            renew_chunk(store.as_ref(), chunk, lease_for).await;
        }
    }
}

/// Renews the leases of `chunk` in one call and tells each its outcome.
async fn renew_chunk(store: &dyn JobStore, chunk: &[(Lease, Outcomes)], lease_for: Duration) {
    let leases: Vec<Lease> = chunk.iter().map(|(lease, _)| *lease).collect();
    let call = AssertUnwindSafe(store.heartbeat_many(&leases, lease_for));
    match call.catch_unwind().await {
        Ok(Ok(renewals)) => {
            for ((_, outcomes), renewal) in chunk.iter().zip(renewals) {
                outcomes.send_replace(Some(Beat::Renewed(renewal)));
            }
        }
        Ok(Err(e)) => {
            warn!(error = %e, kind = ?e.kind(), leases = leases.len(), "heartbeat failed");
        }
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            for (_, outcomes) in chunk {
                outcomes.send_replace(Some(Beat::Panicked(message.clone())));
            }
        }
    }
}
