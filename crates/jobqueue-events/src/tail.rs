//! [`Tail`]: an [`EventBus`] that follows a store several processes share.
//!
//! A shared store's [`EventSink`] sees only the commits of its own process,
//! and the numbers of one process's events have holes where other processes'
//! events go. Publishing them straight to the bus would show each node only
//! its own events, and merging them with the others' would need to know
//! which holes will be filled. So on a shared store the bus is fed by one
//! reader instead: the tail reads `events_after(last)` (which a shared store
//! answers only up to the first number that may still commit, so it never
//! passes an event that is still to come) and publishes what it read, in
//! sequence order, once each. Every node's SSE streams and subscribers then
//! show every node's events in the same order.
//!
//! The tail reads when something may be new: a commit of this process (the
//! tail is the store's sink, and only takes the call as a wake-up), a
//! [`Notice::EventsCommitted`] from the store's listener (another process
//! committed), and a timer. The timer is a safety net while the listener
//! works (a notice may come before the events are readable; a transaction
//! that reserved numbers and failed sends none) and the way to follow the
//! store while it does not: after [`Notice::Lost`] it polls with a backoff
//! from [`POLL_MIN`] up to [`POLL_MAX`], reset by every event read, and after
//! [`Notice::Resumed`] it reads at once.
//!
//! # Pitfalls
//! - Give the store the tail, not the bus, as its sink
//!   (`store.set_event_sink(tail.sink())`): a bus that got a shared store's
//!   events directly as well would see them twice and out of order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jobqueue_core::{Event, EventFilter, EventSink, JobStore, Notice, StoreListener};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::bus::{EventBus, REPLAY_PAGE};

/// The shortest wait between two polls while the listener is lost.
pub const POLL_MIN: Duration = Duration::from_millis(50);

/// The longest wait between two reads: the poll of a quiet store, and the
/// safety net while the listener works.
pub const POLL_MAX: Duration = Duration::from_secs(1);

/// The wake-ups of a tail: from the store's sink and from its listener.
struct Wake {
    notify: Notify,
    /// The listener is lost: poll.
    lost: AtomicBool,
}

impl EventSink for Wake {
    fn publish(&self, _events: &[Event]) {
        self.notify.notify_one();
    }
}

impl StoreListener for Wake {
    fn notice(&self, notice: Notice) {
        match notice {
            Notice::Lost => self.lost.store(true, Ordering::Release),
            Notice::Resumed => {
                self.lost.store(false, Ordering::Release);
                self.notify.notify_one();
            }
            Notice::EventsCommitted => self.notify.notify_one(),
            _ => {}
        }
    }
}

/// A running tail: feeds a bus from a shared store until it is stopped.
#[derive(Debug)]
pub struct Tail {
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Tail {
    /// Makes `bus` follow `store` from the event after `after` (the store's
    /// `last_seq` when the bus starts): sets itself as the store's sink,
    /// listens to the store, and starts reading on the tokio runtime.
    pub fn start(store: Arc<dyn JobStore>, bus: EventBus, after: u64) -> Self {
        let wake = Arc::new(Wake {
            notify: Notify::new(),
            lost: AtomicBool::new(false),
        });
        store.set_event_sink(wake.clone());
        if !store.listen(wake.clone()) {
            // No notices from other processes: the timer alone follows them.
            wake.lost.store(true, Ordering::Release);
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(store, bus, after, wake, stopped));
        Self {
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Stops reading; returns once the task has ended.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn run(
    store: Arc<dyn JobStore>,
    bus: EventBus,
    mut last: u64,
    wake: Arc<Wake>,
    mut stop: watch::Receiver<bool>,
) {
    let mut poll = POLL_MIN;
    loop {
        let mut read_any = false;
        let mut failed = false;
        // Read until the store has nothing more right now.
        loop {
            if *stop.borrow() {
                return;
            }
            match store
                .events_after(last, EventFilter::default(), REPLAY_PAGE)
                .await
            {
                Ok(page) => {
                    let full = page.len() >= REPLAY_PAGE;
                    if let Some(e) = page.last() {
                        last = e.seq;
                        read_any = true;
                        bus.publish_owned(page);
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, after = last, "event tail: reading the store failed; trying again");
                    failed = true;
                    break;
                }
            }
        }
        let wait = if wake.lost.load(Ordering::Acquire) || failed {
            // Polling: quickly while events come, backing off while quiet.
            poll = if read_any {
                POLL_MIN
            } else {
                poll.saturating_mul(2).min(POLL_MAX)
            };
            poll
        } else {
            POLL_MAX
        };
        tokio::select! {
            () = wake.notify.notified() => {}
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use jobqueue_core::{MemoryStore, NewJob};

    use super::*;

    /// Writes that bypass the tail's sink (another process, in effect) still
    /// reach the bus, in order, by the timer or a notice.
    #[tokio::test]
    async fn follows_writes_it_was_not_told_about() {
        let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
        let bus = EventBus::new(16);
        let tail = Tail::start(store.clone(), bus.clone(), 0);
        let mut sub = bus.subscribe_after(store.clone(), 0, EventFilter::default());
        // Another "process": the sink is replaced, so the tail is not told.
        struct Nobody;
        impl EventSink for Nobody {
            fn publish(&self, _: &[Event]) {}
        }
        store.set_event_sink(Arc::new(Nobody));
        for _ in 0..5 {
            store.enqueue(NewJob::new("p")).await.unwrap();
        }
        for want in 1..=5 {
            let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("an event within the deadline")
                .unwrap()
                .unwrap();
            assert_eq!(e.seq, want);
        }
        let mut latest = bus.latest();
        tokio::time::timeout(Duration::from_secs(10), latest.wait_for(|s| *s == 5))
            .await
            .expect("the bus reaches 5")
            .unwrap();
        tail.shutdown().await;
    }
}
