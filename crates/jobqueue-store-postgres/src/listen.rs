//! The store's listener: `LISTEN/NOTIFY` on a dedicated connection.
//!
//! Every transaction that appends events also calls `pg_notify` on the
//! store's channel (in the statement that appends them, so the notice is
//! sent at its commit and never for a rolled-back transaction), with the
//! payload `w` when one of its events put a job in the queue and `e`
//! otherwise. PostgreSQL folds identical notices of one transaction into
//! one and delivers them to every session listening on the channel, in
//! this process and in every other.
//!
//! Each process that has listeners holds one more connection, outside the
//! pool, that listens on the channel and turns notices into
//! [`Notice`]s. When that connection drops (the database restarted, the
//! network went away) the listeners hear [`Notice::Lost`] and poll; the
//! connection is opened again with a capped backoff, and once it listens
//! again they hear [`Notice::Resumed`] and resync from the store.
//!
//! The channel is per schema, so tests (and tenants) in separate schemas
//! of one database do not wake each other.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use futures_util::StreamExt;
use jobqueue_core::{Listeners, Notice, StoreListener};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The longest a channel name may be (PostgreSQL's `NAMEDATALEN - 1`).
const MAX_CHANNEL: usize = 63;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The payload of a commit that made work.
pub(crate) const WORK: &str = "w";

/// The payload of a commit that only appended events.
pub(crate) const EVENTS: &str = "e";

/// The notification channel of the store in `schema`.
pub(crate) fn channel(schema: Option<&str>) -> String {
    let mut name = format!("jobqueue_{}", schema.unwrap_or("public"));
    // Schema names are ASCII (checked), so any byte is a char boundary.
    name.truncate(MAX_CHANNEL);
    name
}

/// A process's listener connection and the listeners it serves.
pub(crate) struct Listener {
    url: String,
    setup: String,
    channel: String,
    connect_timeout: Duration,
    listeners: Arc<Listeners>,
    started: AtomicBool,
    stop: CancellationToken,
}

impl Listener {
    pub(crate) fn new(url: &str, setup: &str, channel: String, connect_timeout: Duration) -> Self {
        Self {
            url: url.to_owned(),
            setup: setup.to_owned(),
            channel,
            connect_timeout,
            listeners: Arc::new(Listeners::default()),
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    /// Adds `listener`, and starts the connection on `runtime` with the first.
    pub(crate) fn add(&self, listener: Arc<dyn StoreListener>, runtime: &Handle) {
        self.listeners.add(listener);
        if !self.started.swap(true, Ordering::AcqRel) && !self.stop.is_cancelled() {
            let task = Task {
                url: self.url.clone(),
                setup: self.setup.clone(),
                channel: self.channel.clone(),
                connect_timeout: self.connect_timeout,
                listeners: Arc::clone(&self.listeners),
                stop: self.stop.clone(),
            };
            runtime.spawn(task.run());
        }
    }

    /// Stops listening (the store is closing).
    pub(crate) fn close(&self) {
        self.stop.cancel();
    }
}

/// The listening task.
struct Task {
    url: String,
    setup: String,
    channel: String,
    connect_timeout: Duration,
    listeners: Arc<Listeners>,
    stop: CancellationToken,
}

impl Task {
    async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        let mut lost = false;
        loop {
            let listened = tokio::select! {
                r = self.listen_once(&mut backoff, &mut lost) => r,
                () = self.stop.cancelled() => return,
            };
            if let Err(e) = listened {
                tracing::debug!(error = %e, "postgres listener: not listening");
            }
            if !lost {
                lost = true;
                tracing::warn!(
                    channel = %self.channel,
                    "postgres listener lost its connection; polling until it is back"
                );
                self.listeners.notify(Notice::Lost);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return,
            }
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
        }
    }

    /// Connects, listens, and forwards notices until the connection ends.
    /// Once it listens it resets `backoff`, clears `lost` (the listeners
    /// heard `Lost` once per outage) and says `Resumed`.
    async fn listen_once(&self, backoff: &mut Duration, lost: &mut bool) -> Result<(), String> {
        let mut conn = crate::store::establish(&self.url, self.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let listen = format!(
            "{}; LISTEN \"{}\"",
            self.setup,
            self.channel.replace('"', "\"\"")
        );
        conn.batch_execute(&listen)
            .await
            .map_err(|e| e.to_string())?;
        *backoff = FIRST_BACKOFF;
        *lost = false;
        tracing::debug!(channel = %self.channel, "postgres listener listening");
        // Whatever was committed before this point was not announced.
        self.listeners.notify(Notice::Resumed);
        let mut notices = pin!(conn.notifications_stream());
        while let Some(n) = notices.next().await {
            let n = n.map_err(|e| e.to_string())?;
            if n.payload == WORK {
                self.listeners.notify(Notice::JobsAvailable);
            }
            self.listeners.notify(Notice::EventsCommitted);
        }
        Err("the connection ended".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_per_schema_and_fit_postgres() {
        assert_eq!(channel(None), "jobqueue_public");
        assert_eq!(channel(Some("t1")), "jobqueue_t1");
        assert_eq!(channel(Some(&"x".repeat(63))).len(), MAX_CHANNEL);
    }
}
