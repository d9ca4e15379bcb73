//! [`EventBus`]: the in-process fan-out of committed events.
//!
//! The store calls [`EventSink::publish`] after each commit, in sequence
//! order. The bus copies the events into a bounded ring (a tokio
//! `broadcast` channel) and returns: it never waits for a subscriber.
//!
//! A [`Subscription`] is the reader's side. It subscribes to the ring
//! *first*, then reads from the store what it needs (a replay after a
//! sequence number, or the current position), then follows the ring,
//! dropping what it has already seen. When it falls so far behind that the
//! ring overwrote events it had not read, it reads the missing ones from the
//! store and carries on. So every subscriber sees every event that passes its
//! filter exactly once, in sequence order, and a slow one costs the
//! publisher nothing.
//!
//! # Example
//! ```
//! # use std::sync::Arc;
//! # use jobqueue_core::{EventFilter, JobStore, MemoryStore, NewJob};
//! # use jobqueue_events::EventBus;
//! # use futures::StreamExt;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
//! let bus = EventBus::new(1024);
//! store.set_event_sink(Arc::new(bus.clone()));
//!
//! let mut events = bus.subscribe_after(store.clone(), 0, EventFilter::default());
//! store.enqueue(NewJob::new("build")).await.unwrap();
//! let first = events.next().await.unwrap().unwrap();
//! assert_eq!(first.event_type().as_str(), "job.created");
//! # }
//! ```
//!
//! # Pitfalls
//! - Events of one store must reach the bus in sequence order, each once
//!   (the [`JobStore`] contract); the bus trusts it.
//! - A subscription that ends with an error (the store failed while it was
//!   replaying) is over; start a new one after the last event seen.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;
use jobqueue_core::{Event, EventFilter, EventSink, JobStore, StoreError};
use tokio::sync::{broadcast, watch};

/// Events a subscriber may fall behind by before it is resynced from the
/// store, when [`EventBus::default`] is used.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Events read from the store per page while replaying or resyncing.
pub const REPLAY_PAGE: usize = 256;

/// The in-process fan-out of committed events. Cheap to clone: clones share
/// one bus. Give it to the store with
/// `store.set_event_sink(Arc::new(bus.clone()))`.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    ring: broadcast::Sender<Event>,
    /// The highest sequence number published, for wake-ups.
    latest: watch::Sender<u64>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("latest", &*self.inner.latest.borrow())
            .field("subscribers", &self.inner.ring.receiver_count())
            .finish()
    }
}

impl Default for EventBus {
    /// A bus with a ring of [`DEFAULT_CAPACITY`] events.
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl EventBus {
    /// A bus whose subscribers may fall `capacity` events behind before they
    /// are resynced from the store (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (ring, _) = broadcast::channel(capacity.max(1));
        let (latest, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner { ring, latest }),
        }
    }

    /// Every event after `after` that passes `filter`: first those already in
    /// `store`, then live ones as they are committed. `store` must be the
    /// store this bus is the sink of.
    pub fn subscribe_after(
        &self,
        store: Arc<dyn JobStore>,
        after: u64,
        filter: EventFilter,
    ) -> Subscription {
        // Subscribing to the ring before anything is read from the store is
        // what makes replay-then-live gapless: every event committed after
        // this line is in the ring, every one before it is in the store.
        let rx = self.inner.ring.subscribe();
        Subscription::new(store, rx, Some(after), filter)
    }

    /// Every event committed from now on that passes `filter`. "Now" is the
    /// store's last sequence number when the subscription is first polled.
    pub fn subscribe(&self, store: Arc<dyn JobStore>, filter: EventFilter) -> Subscription {
        let rx = self.inner.ring.subscribe();
        Subscription::new(store, rx, None, filter)
    }

    /// The highest sequence number published so far; it changes after every
    /// publish. The webhook dispatcher waits on it to learn that new
    /// deliveries may be due.
    pub fn latest(&self) -> watch::Receiver<u64> {
        self.inner.latest.subscribe()
    }

    /// How many subscriptions are open.
    pub fn subscriber_count(&self) -> usize {
        self.inner.ring.receiver_count()
    }

    /// Notes `seq` as the latest event published, if it is newer.
    fn note_latest(&self, seq: u64) {
        self.inner.latest.send_if_modified(|latest| {
            let newer = seq > *latest;
            if newer {
                *latest = seq;
            }
            newer
        });
    }
}

impl EventSink for EventBus {
    fn publish(&self, events: &[Event]) {
        self.publish_owned(events.to_vec());
    }

    fn publish_owned(&self, events: Vec<Event>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        for event in events {
            // An error only means nobody is subscribed right now; the event
            // is in the store for whoever subscribes later.
            let _ = self.inner.ring.send(event);
        }
        self.note_latest(last);
    }
}

/// A stream of events, exactly once each and in sequence order (see the
/// [module docs](self)). Made by [`EventBus::subscribe`] and
/// [`EventBus::subscribe_after`].
///
/// It yields `Err` once, and then ends, if the store fails while the
/// subscription reads from it; it ends without error when the bus is gone.
pub struct Subscription {
    inner: BoxStream<'static, Result<Event, StoreError>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    fn new(
        store: Arc<dyn JobStore>,
        rx: broadcast::Receiver<Event>,
        after: Option<u64>,
        filter: EventFilter,
    ) -> Self {
        let state = Reader {
            store,
            rx,
            filter,
            last: after,
            replaying: after.is_some(),
            buffered: VecDeque::new(),
            done: false,
        };
        let inner = futures::stream::unfold(state, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        });
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Event, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The state of one subscription.
struct Reader {
    store: Arc<dyn JobStore>,
    rx: broadcast::Receiver<Event>,
    filter: EventFilter,
    /// Every event up to this sequence number has been handed out or
    /// skipped by the filter. `None` until the store said where "now" is.
    last: Option<u64>,
    /// Reading from the store rather than the ring.
    replaying: bool,
    /// A replayed page not yet handed out.
    buffered: VecDeque<Event>,
    /// Ended after an error.
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let Some(last) = self.last else {
                match self.store.last_seq().await {
                    Ok(seq) => self.last = Some(seq),
                    Err(e) => return Some(Err(self.fail(e))),
                }
                continue;
            };
            if self.replaying {
                let page = match self
                    .store
                    .events_after(last, self.filter.clone(), REPLAY_PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => return Some(Err(self.fail(e))),
                };
                // A short page means the store has nothing more right now;
                // whatever it commits next is in the ring.
                self.replaying = page.len() >= REPLAY_PAGE;
                if let Some(e) = page.last() {
                    self.last = Some(e.seq);
                }
                self.buffered.extend(page);
                continue;
            }
            match self.rx.recv().await {
                Ok(event) => {
                    // Events at or before `last` were replayed already (they
                    // were committed before the replay read them).
                    if event.seq > last {
                        self.last = Some(event.seq);
                        if self.filter.matches(&event) {
                            return Some(Ok(event));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        after = last,
                        "subscriber lagged; resyncing from the store"
                    );
                    self.replaying = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn fail(&mut self, e: StoreError) -> StoreError {
        tracing::warn!(error = %e, "event subscription ends: the store failed");
        self.done = true;
        e
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use jobqueue_core::{EventType, MemoryStore, NewJob};

    use super::*;

    fn setup(capacity: usize) -> (Arc<dyn JobStore>, EventBus) {
        let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
        let bus = EventBus::new(capacity);
        store.set_event_sink(Arc::new(bus.clone()));
        (store, bus)
    }

    async fn next(sub: &mut Subscription) -> Event {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an event within the deadline")
            .expect("the stream goes on")
            .expect("no store error")
    }

    #[tokio::test]
    async fn replays_then_follows_live() {
        let (store, bus) = setup(16);
        for _ in 0..3 {
            store.enqueue(NewJob::new("p")).await.unwrap();
        }
        let mut sub = bus.subscribe_after(store.clone(), 1, EventFilter::default());
        assert_eq!(next(&mut sub).await.seq, 2);
        assert_eq!(next(&mut sub).await.seq, 3);
        store.enqueue(NewJob::new("p")).await.unwrap();
        assert_eq!(next(&mut sub).await.seq, 4);
    }

    #[tokio::test]
    async fn live_subscription_starts_now() {
        let (store, bus) = setup(16);
        store.enqueue(NewJob::new("p")).await.unwrap();
        let mut sub = bus.subscribe(store.clone(), EventFilter::default());
        // Polling once pins "now" (seq 1) before the next write.
        assert!(sub.next().now_or_never().is_none(), "nothing new yet");
        store.enqueue(NewJob::new("p")).await.unwrap();
        assert_eq!(next(&mut sub).await.seq, 2);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_resynced_exactly_once_in_order() {
        let (store, bus) = setup(4);
        let mut sub = bus.subscribe_after(store.clone(), 0, EventFilter::default());
        // 100 events into a ring of 4 while the subscriber reads nothing.
        for _ in 0..100 {
            store.enqueue(NewJob::new("p")).await.unwrap();
        }
        for want in 1..=100 {
            assert_eq!(next(&mut sub).await.seq, want);
        }
        // Lag again in the middle of following live.
        for _ in 0..50 {
            store.enqueue(NewJob::new("p")).await.unwrap();
        }
        for want in 101..=150 {
            assert_eq!(next(&mut sub).await.seq, want);
        }
    }

    #[tokio::test]
    async fn filters_by_job_and_type() {
        let (store, bus) = setup(2);
        let a = store.enqueue(NewJob::new("p")).await.unwrap();
        let filter = EventFilter {
            job: Some(a.id),
            types: vec![EventType::JobCancelled],
        };
        let mut sub = bus.subscribe_after(store.clone(), 0, filter);
        for _ in 0..10 {
            store.enqueue(NewJob::new("p")).await.unwrap();
        }
        store.request_cancel(a.id).await.unwrap();
        let e = next(&mut sub).await;
        assert_eq!(
            (e.job_id, e.event_type()),
            (Some(a.id), EventType::JobCancelled)
        );
    }

    #[tokio::test]
    async fn latest_follows_publishes() {
        let (store, bus) = setup(2);
        let mut latest = bus.latest();
        store.enqueue(NewJob::new("p")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), latest.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*latest.borrow(), 1);
    }
}
