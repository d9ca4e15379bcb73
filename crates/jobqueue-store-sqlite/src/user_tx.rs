//! Transactional enqueue: the program's own statements and the enqueue of
//! jobs in one transaction of the writer ([`SqliteStore::enqueue_with`]).
//!
//! The operation runs the caller's closure on the writer's connection, then
//! enqueues the jobs, as one operation of a group. A failure of either (the
//! closure's error, a refused job, a panic) rolls back both, and nothing
//! else of the group: a group that holds such an operation runs every
//! operation in a savepoint of its own from the start, so it is never run a
//! second time (the closure is `FnOnce`; see [`crate::writer`]). Nothing is
//! answered, and no event published, before the group commits.
//!
//! [`SqliteStore::enqueue_with`]: crate::SqliteStore::enqueue_with

use std::panic::{AssertUnwindSafe, catch_unwind};

use diesel::sqlite::SqliteConnection;
use futures_channel::oneshot;
use jobqueue_core::{ErrorKind, Job, NewJob, StoreError};

use crate::writer::{OpFailure, Tx, WriteOp};

/// Why [`SqliteStore::enqueue_with`](crate::SqliteStore::enqueue_with)
/// wrote nothing: neither the closure's statements nor the jobs.
#[derive(Debug, thiserror::Error)]
pub enum UserTxError<E> {
    /// The closure returned this error.
    #[error("the transaction's own statements failed: {0}")]
    Closure(E),
    /// The store refused the jobs (invalid, a duplicate key) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The closure an [`EnqueueWith`] runs.
pub(crate) type UserFn<T, E> = Box<dyn FnOnce(&mut SqliteConnection) -> Result<T, E> + Send>;

/// What an [`EnqueueWith`] answers.
pub(crate) type Answer<T, E> = Result<(Vec<Job>, T), UserTxError<E>>;

/// The operation: the closure, then the enqueue of the jobs.
pub(crate) struct EnqueueWith<T, E> {
    f: Option<UserFn<T, E>>,
    jobs: Vec<NewJob>,
    out: Option<Answer<T, E>>,
    reply: oneshot::Sender<Answer<T, E>>,
}

impl<T, E> EnqueueWith<T, E> {
    pub(crate) fn new(
        f: UserFn<T, E>,
        jobs: Vec<NewJob>,
        reply: oneshot::Sender<Answer<T, E>>,
    ) -> Self {
        Self {
            f: Some(f),
            jobs,
            out: None,
            reply,
        }
    }

    fn run(&mut self, tx: &mut Tx<'_>) -> Answer<T, E> {
        let f = self.f.take().ok_or_else(|| {
            StoreError::backend(
                ErrorKind::Internal,
                "sqlite store: a transactional enqueue was run twice",
            )
        })?;
        let value = f(tx.write_conn()).map_err(UserTxError::Closure)?;
        let jobs = crate::ops::enqueue_batch(tx, std::mem::take(&mut self.jobs))?;
        Ok((jobs, value))
    }
}

impl<T: Send + 'static, E: Send + 'static> WriteOp for EnqueueWith<T, E> {
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), OpFailure> {
        let out = catch_unwind(AssertUnwindSafe(|| self.run(tx))).unwrap_or_else(|_| {
            Err(UserTxError::Store(StoreError::backend(
                ErrorKind::Internal,
                "sqlite store: a transactional enqueue panicked; it was rolled back",
            )))
        });
        let failed = match &out {
            Ok(_) => None,
            Err(UserTxError::Store(e)) => Some(OpFailure::of(e)),
            // Whatever the closure wrote before it failed is undone.
            Err(UserTxError::Closure(_)) => Some(OpFailure::wrote(StoreError::Conflict(
                "the transaction's own statements failed".into(),
            ))),
        };
        self.out = Some(out);
        failed.map_or(Ok(()), Err)
    }

    fn finish(self: Box<Self>, group_failure: Option<&StoreError>) {
        let answer = match (self.out, group_failure) {
            (Some(Err(e)), _) => Err(e),
            (_, Some(failure)) => Err(UserTxError::Store(failure.clone())),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(UserTxError::Store(StoreError::backend(
                ErrorKind::Internal,
                "sqlite store: operation was not run",
            ))),
        };
        // The caller may have stopped waiting; the write stands regardless.
        let _ = self.reply.send(answer);
    }

    fn weight(&self) -> usize {
        self.jobs.len().max(1)
    }

    fn runs_once(&self) -> bool {
        true
    }
}
