//! Store notices: wake-ups for runnable work and for committed events, sent
//! by a store to the [`StoreListener`]s of its process whichever process
//! made the change.
//!
//! This is the store's *listener*, in the spirit of River's driver
//! `Listener`: the pump wakes on [`Notice::JobsAvailable`] (so a job
//! enqueued by another process starts at once, not at the next poll), and an
//! event bus that tails a shared store reads `events_after(last_seq)` on
//! [`Notice::EventsCommitted`].
//!
//! A notice carries no data and may be spurious or coalesced: a listener
//! only learns that it should look at the store. What it must never do is
//! rely on notices alone: between [`Notice::Lost`] and [`Notice::Resumed`]
//! notices are missed, so a listener polls meanwhile and resyncs from the
//! store after `Resumed`.
//!
//! # Roles
//! - A **single-process store** (`MemoryStore`, SQLite) sends notices in
//!   process, derived from the events each commit appended
//!   ([`Listeners::notify_for`]); it never sends `Lost`.
//! - A **shared store** (PostgreSQL) sends them for the commits of every
//!   process, through the database (`LISTEN/NOTIFY`), and `Lost`/`Resumed`
//!   around a dropped notification connection.
//! - A store that cannot notify keeps the default of
//!   [`JobStore::listen`](crate::JobStore::listen): it returns `false`, and
//!   its users poll.
//!
//! # Pitfalls
//! - [`StoreListener::notice`] runs on the store's path (its writer, or its
//!   notification connection): it must not block. Set a flag or wake a task.

use std::sync::{Arc, RwLock};

use crate::event::{Event, EventData};

/// What a store's listener is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Notice {
    /// Jobs may have become runnable: enqueued, retried, rescued or queued
    /// again after a failure (for now or for a later `run_at`).
    JobsAvailable,
    /// Events were committed (by any process sharing the store).
    EventsCommitted,
    /// Notices may be missed from now on (the notification connection
    /// dropped): poll until [`Notice::Resumed`].
    Lost,
    /// Notices flow again after [`Notice::Lost`]; what happened meanwhile
    /// was not announced, so resync from the store.
    Resumed,
}

/// Receives a store's [`Notice`]s. Must not block.
pub trait StoreListener: Send + Sync {
    /// One notice.
    fn notice(&self, notice: Notice);
}

/// What a store supports, for the layers that adapt to it (see
/// [`JobStore::capabilities`](crate::JobStore::capabilities)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Other processes may write the store: the [`EventSink`](crate::EventSink)
    /// sees only this handle's commits, so a bus that must show every
    /// process's events tails the store on [`Notice::EventsCommitted`]; and
    /// running jobs of a dead process are found by their expired leases, not
    /// at startup.
    pub shared: bool,
    /// [`JobStore::listen`](crate::JobStore::listen) sends notices.
    pub listener: bool,
    /// Writes commit in the order the store receives them: a write whose
    /// future was polled once commits no later than any write sent after
    /// it (one writer, one queue). The runtime then frees a worker's slot
    /// as soon as the job's last write is handed over, and the claim that
    /// fills the slot commits after that write.
    pub ordered_writes: bool,
}

impl Capabilities {
    /// A store one process owns, with an in-process listener, that commits
    /// writes in the order it receives them.
    pub const fn single_process() -> Self {
        Self {
            shared: false,
            listener: true,
            ordered_writes: true,
        }
    }

    /// A store several processes share, with a listener.
    pub const fn shared() -> Self {
        Self {
            shared: true,
            listener: true,
            ordered_writes: false,
        }
    }
}

/// The listeners of a store; a helper for store implementations.
#[derive(Default)]
pub struct Listeners {
    listeners: RwLock<Vec<Arc<dyn StoreListener>>>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("count", &self.len())
            .finish()
    }
}

impl Listeners {
    /// Adds a listener.
    pub fn add(&self, listener: Arc<dyn StoreListener>) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    /// How many listeners there are.
    pub fn len(&self) -> usize {
        self.listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `notice` to every listener. A listener that panics is
    /// skipped: the store's write is committed whatever a listener does.
    pub fn notify(&self, notice: Notice) {
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for l in listeners {
            let send = std::panic::AssertUnwindSafe(|| l.notice(notice));
            let _ = std::panic::catch_unwind(send);
        }
    }

    /// Sends the notices a commit that appended `events` calls for:
    /// [`Notice::JobsAvailable`] when one made a job runnable (see
    /// [`makes_work`]), then [`Notice::EventsCommitted`].
    pub fn notify_for(&self, events: &[Event]) {
        if events.is_empty() || self.is_empty() {
            return;
        }
        if makes_work(events) {
            self.notify(Notice::JobsAvailable);
        }
        self.notify(Notice::EventsCommitted);
    }
}

/// Whether one of `events` put a job in the queue: `job.created`,
/// `job.retried`, `job.interrupted`, `job.snoozed`, or `job.phase.failed`
/// with a retry; or made queued jobs claimable again: `pipeline.resumed`.
pub fn makes_work(events: &[Event]) -> bool {
    events.iter().any(|e| {
        matches!(
            e.data,
            EventData::Created { .. }
                | EventData::Retried { .. }
                | EventData::Interrupted { .. }
                | EventData::PipelineResumed {}
                | EventData::Snoozed { .. }
                | EventData::PhaseFailed {
                    retry_at: Some(_),
                    ..
                }
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{EventData, JobId};

    #[derive(Default)]
    struct Seen(Mutex<Vec<Notice>>);
    impl StoreListener for Seen {
        fn notice(&self, notice: Notice) {
            self.0.lock().unwrap().push(notice);
        }
    }

    fn event(data: EventData) -> Event {
        Event {
            seq: 1,
            job_id: Some(JobId::new()),
            pipeline: "p".into(),
            at: time::OffsetDateTime::UNIX_EPOCH,
            data,
        }
    }

    #[test]
    fn work_is_announced_before_events_and_only_when_made() {
        let listeners = Listeners::default();
        let seen = Arc::new(Seen::default());
        listeners.add(seen.clone());
        listeners.notify_for(&[event(EventData::PhaseProgress {
            phase: "a".into(),
            percent: 1,
            message: None,
        })]);
        listeners.notify_for(&[event(EventData::Retried { from_phase: None })]);
        listeners.notify_for(&[]);
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                Notice::EventsCommitted,
                Notice::JobsAvailable,
                Notice::EventsCommitted
            ]
        );
    }

    #[test]
    fn a_panicking_listener_does_not_stop_the_others() {
        struct Boom;
        impl StoreListener for Boom {
            fn notice(&self, _: Notice) {
                panic!("listener bug");
            }
        }
        let listeners = Listeners::default();
        let seen = Arc::new(Seen::default());
        listeners.add(Arc::new(Boom));
        listeners.add(seen.clone());
        listeners.notify(Notice::Resumed);
        assert_eq!(*seen.0.lock().unwrap(), [Notice::Resumed]);
    }
}
