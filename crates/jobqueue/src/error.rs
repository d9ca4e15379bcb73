//! The façade's error type.

use jobqueue_core::StoreError;
use jobqueue_runtime::StartError;

/// An error from [`JobQueue`](crate::JobQueue).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store refused or failed; see [`StoreError::kind`].
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No pipeline of that name is registered with this queue.
    #[error("unknown pipeline {0:?}")]
    UnknownPipeline(String),
    /// The queue's configuration is wrong.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The runtime could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The webhook configuration is wrong, or a job's `webhook_url` is refused.
    #[error(transparent)]
    Webhook(#[from] jobqueue_events::WebhookError),
    /// A job's `webhook_url` is not allowed.
    #[error("invalid webhook_url: {0}")]
    WebhookUrl(String),
    /// The queue was shut down while [`wait`](crate::JobQueue::wait) or
    /// [`drain`](crate::JobQueue::drain) waited.
    #[error("the queue was shut down")]
    ShutDown,
    /// A value could not be converted to or from JSON.
    /// (The serde error is part of the message, so it is not also the
    /// `source()`: a chain would print it twice.)
    #[error("JSON conversion failed: {0}")]
    Json(serde_json::Error),
}

/// Why [`JobQueue::enqueue_with`](crate::JobQueue::enqueue_with) wrote
/// nothing: neither the closure's statements nor the jobs.
#[cfg(feature = "sqlite")]
#[derive(Debug, thiserror::Error)]
pub enum TxError<E> {
    /// The closure returned this error; its statements were rolled back.
    #[error("the transaction's own statements failed, nothing was written: {0}")]
    Closure(E),
    /// The queue refused the jobs (unknown pipeline, invalid, a duplicate
    /// key) or the store failed.
    #[error(transparent)]
    Queue(#[from] Error),
}
