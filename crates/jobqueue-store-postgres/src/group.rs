//! Phase completions of many jobs written together, in one transaction.
//!
//! A job's progress is one [`advance`](jobqueue_core::JobStore::advance)
//! per phase, and on PostgreSQL each was a transaction of its own whose
//! commit waits for the WAL to be flushed. The flushes are what bounded the
//! throughput: PostgreSQL flushed about once per commit (it groups commits
//! only with `commit_delay`), so a job cost at least one flush per phase.
//!
//! So calls to `advance` that arrive while others are being written wait,
//! and the next group writes all of them (at most [`MAX_GROUP`]) in one
//! transaction, set-based ([`ops::advance_many`]): one statement locks
//! every job of the group (in id order, as every statement that locks
//! several jobs does, so groups never deadlock with the rescue or with
//! each other), one reads their phases, one writes the changed phases and
//! one the changed jobs (each fenced on the lease, in SQL), and their events
//! are appended with one reservation. A group's commit is one flush for all
//! of them. A call alone is a group of one: it waits for nothing.
//!
//! Each call keeps its own outcome: a lease lost or a step the transition
//! table refuses fails that call and writes nothing for it, and the others
//! go on (such a refusal is found before anything is written for the job).
//! An error of the transaction itself (the connection, the commit) fails
//! every call of the group, as it would have failed each alone. At most
//! [`GROUPS`] groups are written at once by a process, so one group's
//! round trips overlap another's flush. A group is written by a task of its
//! own that answers every call, so a caller that stops waiting does not
//! take the answers of the others with it (see [`crate::tx`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use jobqueue_core::{JobId, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::internal;
use crate::ops::{self, Advance};
use crate::tx::Inner;

/// How many groups one process writes at once.
const GROUPS: usize = 2;

/// The most calls one group writes.
const MAX_GROUP: usize = 256;

/// A call waiting for its group, and where its outcome goes.
struct Waiting {
    op: Advance,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The calls waiting to be written, and the turns of the groups.
pub(crate) struct Grouper {
    waiting: Mutex<Vec<Waiting>>,
    turns: Arc<Semaphore>,
}

impl Grouper {
    /// No call waiting.
    pub(crate) fn new() -> Self {
        Self {
            waiting: Mutex::new(Vec::new()),
            turns: Arc::new(Semaphore::new(GROUPS)),
        }
    }

    /// Writes `op` in the next group; returns its own outcome.
    pub(crate) async fn advance(&self, inner: &Arc<Inner>, op: Advance) -> Result<(), StoreError> {
        let (reply, mut answer) = oneshot::channel();
        self.lock().push(Waiting { op, reply });
        let turn = Arc::clone(&self.turns)
            .acquire_owned()
            .await
            .map_err(|_| internal("postgres: the write groups are closed"))?;
        // A group that took this call while it waited for a turn may have
        // answered it already.
        match answer.try_recv() {
            Ok(outcome) => return outcome,
            Err(oneshot::error::TryRecvError::Closed) => return Err(abandoned()),
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let group = self.take();
        if group.is_empty() {
            drop(turn);
        } else {
            write(inner, group, turn);
        }
        answer.await.unwrap_or_else(|_| Err(abandoned()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next group: the waiting calls in the order they came, at most
    /// [`MAX_GROUP`], one per job (a second call about a job waits for the
    /// next group, which sees what the first wrote).
    fn take(&self) -> Vec<Waiting> {
        let mut waiting = self.lock();
        let mut jobs: HashSet<JobId> = HashSet::new();
        let mut group = Vec::new();
        let mut later = Vec::new();
        for w in waiting.drain(..) {
            if group.len() < MAX_GROUP && jobs.insert(w.op.lease.job_id) {
                group.push(w);
            } else {
                later.push(w);
            }
        }
        *waiting = later;
        group
    }
}

/// Writes `group` in a task of its own, which answers each call and then
/// gives the turn back.
fn write(inner: &Arc<Inner>, group: Vec<Waiting>, turn: OwnedSemaphorePermit) {
    let (ops, replies): (Vec<Advance>, Vec<_>) = group.into_iter().map(|w| (w.op, w.reply)).unzip();
    inner.write_detached(
        move |tx| Box::pin(async move { ops::advance_many(tx, ops).await }),
        move |written| {
            drop(turn);
            match written {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        },
    );
}

/// The outcome of a call whose group's task ended without answering (it
/// panicked, or the runtime shut down).
fn abandoned() -> StoreError {
    internal("postgres: a grouped write ended without an answer")
}
