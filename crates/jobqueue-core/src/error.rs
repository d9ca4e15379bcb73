//! Store errors. Each carries a [`ErrorKind`] so the layers above decide what
//! to do (retry, report 404, 409, ...) without knowing the backend.

use crate::id::{DeliveryId, JobId};
use crate::machine::TransitionError;

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The job or delivery does not exist.
    NotFound,
    /// A queued or running job already holds the unique key.
    Duplicate,
    /// The input is wrong (bad field, empty name, ...).
    Invalid,
    /// The transition table refuses the change in the current state.
    Conflict,
    /// The caller's lease was lost: its fencing token is stale.
    LeaseLost,
    /// The database is busy or locked; trying again may succeed.
    Busy,
    /// The database file is damaged or not a database.
    Corrupt,
    /// The database was written by a newer version of this software.
    SchemaTooNew,
    /// The database belongs to something else (e.g. an SQLite file with its
    /// own `jobs` table); nothing was changed.
    Incompatible,
    /// Another store (in this or another process) has the database open,
    /// and the store allows one at a time.
    InUse,
    /// The disk or file system failed (missing directory, read-only, full).
    Io,
    /// The store has shut down.
    Closed,
    /// Anything else.
    Internal,
}

/// An error from a [`JobStore`](crate::JobStore).
///
/// `Clone`, so that a store that fails a group of operations at once can
/// give each caller the same typed error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No job with this id.
    #[error("job {0} not found")]
    JobNotFound(JobId),
    /// No delivery with this id.
    #[error("webhook delivery {0} not found")]
    DeliveryNotFound(DeliveryId),
    /// The unique key is held by a queued or running job.
    #[error("unique key {key:?} is held by job {existing}, which is queued or running")]
    Duplicate {
        /// The key.
        key: String,
        /// The job that holds it.
        existing: JobId,
    },
    /// A job created in the same window of its unique period holds the
    /// period key, in whatever state it is (see [`crate::unique`]).
    #[error(
        "job {existing} holds the period key {period_key:?}: it was created in the same window of the unique period"
    )]
    DuplicateInPeriod {
        /// The period key: the unique key, the window's start and the period.
        period_key: String,
        /// The job that holds it.
        existing: JobId,
    },
    /// The input is wrong; nothing was written.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// One job of a batch was refused; nothing of the batch was written.
    #[error("job {index} of the batch: {error}")]
    Batch {
        /// Its 0-based position in the batch.
        index: usize,
        /// Why it was refused. Part of the message, so not also the
        /// error's `source()` (a chain would print it twice).
        error: Box<StoreError>,
    },
    /// The transition table refuses the change.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The phase index is outside the job's pipeline.
    #[error("job {job} has no phase {index}")]
    NoSuchPhase {
        /// The job.
        job: JobId,
        /// The index asked for.
        index: usize,
    },
    /// The change conflicts with the job's state in a way the transition
    /// table alone does not express (e.g. a phase started out of order).
    #[error("{0}")]
    Conflict(String),
    /// The caller's fencing token is not the job's current lease.
    #[error("lease on job {0} was lost: its fencing token is stale")]
    LeaseLost(JobId),
    /// A backend failure, classified.
    #[error("{message}")]
    Backend {
        /// Its kind.
        kind: ErrorKind,
        /// What happened, with the backend's own text.
        message: String,
    },
}

impl StoreError {
    /// A backend failure of `kind`.
    pub fn backend(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Backend {
            kind,
            message: message.into(),
        }
    }

    /// The job that holds the key a refused enqueue wanted, for
    /// [`Duplicate`](Self::Duplicate) and
    /// [`DuplicateInPeriod`](Self::DuplicateInPeriod) (also inside a
    /// [`Batch`](Self::Batch) error).
    pub fn duplicate_of(&self) -> Option<JobId> {
        match self {
            Self::Duplicate { existing, .. } | Self::DuplicateInPeriod { existing, .. } => {
                Some(*existing)
            }
            Self::Batch { error, .. } => error.duplicate_of(),
            _ => None,
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::JobNotFound(_) | Self::DeliveryNotFound(_) => ErrorKind::NotFound,
            Self::Duplicate { .. } | Self::DuplicateInPeriod { .. } => ErrorKind::Duplicate,
            Self::Invalid(_) | Self::NoSuchPhase { .. } => ErrorKind::Invalid,
            Self::Batch { error, .. } => error.kind(),
            Self::Transition(_) | Self::Conflict(_) => ErrorKind::Conflict,
            Self::LeaseLost(_) => ErrorKind::LeaseLost,
            Self::Backend { kind, .. } => *kind,
        }
    }
}
