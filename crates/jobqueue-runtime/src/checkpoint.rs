//! A phase's checkpoint as its context holds it: the value it resumes from
//! (as the job was claimed, then as last saved in this run) and where a
//! new one goes (the store, under the claim's lease; or a test harness's
//! log).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use jobqueue_core::{ErrorKind, JobStore, Lease};
use serde_json::Value;

use crate::phase::PhaseError;
use crate::runtime::lock;

/// Where saved checkpoints go.
pub(crate) enum Target {
    /// The store, as phase `index` of the job `lease` holds.
    Store {
        store: Arc<dyn JobStore>,
        lease: Lease,
        index: usize,
    },
    /// A test harness keeps every one, in order.
    Log(Arc<Mutex<Vec<Value>>>),
}

struct State {
    last: Mutex<Option<Value>>,
    target: Target,
    sealed: AtomicBool,
}

/// The checkpoint of one run of a phase. Cheap to clone: clones share it.
#[derive(Clone)]
pub(crate) struct Checkpoints(Arc<State>);

impl fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoints")
            .field("last", &*lock(&self.0.last))
            .finish_non_exhaustive()
    }
}

impl Checkpoints {
    /// The checkpoint `last` (as the job was claimed), saved to `target`.
    pub(crate) fn new(last: Option<Value>, target: Target) -> Self {
        Self(Arc::new(State {
            last: Mutex::new(last),
            target,
            sealed: AtomicBool::new(false),
        }))
    }

    /// The last checkpoint: as claimed, or as saved since.
    pub(crate) fn last(&self) -> Option<Value> {
        lock(&self.0.last).clone()
    }

    /// The run is over: later saves are refused, so nothing the phase does
    /// after its end is persisted.
    pub(crate) fn seal(&self) {
        self.0.sealed.store(true, Ordering::Release);
    }

    /// Saves `value`, returning once it is durable.
    pub(crate) async fn save(&self, value: Value) -> Result<(), PhaseError> {
        if self.0.sealed.load(Ordering::Acquire) {
            return Err(PhaseError::retryable(
                "the phase's run has ended: its checkpoint was not saved",
            ));
        }
        match &self.0.target {
            Target::Store {
                store,
                lease,
                index,
            } => store
                .save_checkpoint(lease, *index, value.clone())
                .await
                .map_err(|e| match e.kind() {
                    // Refused on every run: retrying cannot help.
                    ErrorKind::Invalid => {
                        PhaseError::permanent(format!("the store refused the checkpoint: {e}"))
                    }
                    _ => PhaseError::retryable(format!("saving the checkpoint failed: {e}")),
                })?,
            Target::Log(log) => {
                jobqueue_core::job::check_json("checkpoint", &value).map_err(|e| {
                    PhaseError::permanent(format!("the store refused the checkpoint: {e}"))
                })?;
                lock(log).push(value.clone());
            }
        }
        *lock(&self.0.last) = Some(value);
        Ok(())
    }
}
