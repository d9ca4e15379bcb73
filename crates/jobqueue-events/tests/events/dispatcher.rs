//! The dispatcher's own robustness: a panic in its loop or in an attempt is
//! counted and survived, and a large outbox is read in bounded pages.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jobqueue_core::{
    Clock, Delivery, DeliveryFilter, DeliveryStatus, JobStore, NewJob, SystemClock, TaskState,
};
use jobqueue_events::{Dispatcher, DispatcherHandle, Endpoint, EventBus, WebhookConfig};
use time::OffsetDateTime;

use crate::probe::ProbeStore;
use crate::support::{Receiver, SECRET, all_ended, wait_for_deliveries, within};

fn config(url: String, schedule: &[Duration]) -> WebhookConfig {
    WebhookConfig {
        endpoints: vec![Endpoint::new(url, SECRET).retry_schedule(schedule.to_vec())],
        ..WebhookConfig::default()
    }
}

/// A receiver that answers 200, a dispatcher for it on a probe store that
/// `arm` sets faults in before it starts, and one job enqueued. Waits for
/// the job's delivery to be recorded as delivered.
async fn deliver_one_despite(
    arm: impl FnOnce(&ProbeStore),
) -> (Receiver, DispatcherHandle, HashMap<String, Delivery>) {
    let rx = Receiver::start(SECRET, |_| (200, vec![])).await;
    let (probe, store, bus) = ProbeStore::with_bus();
    let config = config(rx.url(), &[Duration::from_millis(10)]);
    store.set_webhook_routes(config.routes());
    arm(&probe);
    let dispatcher = Dispatcher::new(store.clone(), &config)
        .unwrap()
        .wake_on(bus.latest());
    let mut attempts = dispatcher.attempts();
    let handle = dispatcher.spawn();
    store.enqueue(NewJob::new("p")).await.unwrap();
    let seen = wait_for_deliveries(&mut attempts, "the delivery", |s| {
        all_ended(s, 1, DeliveryStatus::Delivered)
    })
    .await;
    (rx, handle, seen)
}

#[tokio::test]
async fn a_panic_in_the_loop_is_counted_and_the_loop_restarts() {
    // The loop's first look at the outbox panics.
    let (mut rx, handle, _) = deliver_one_despite(|p| p.panic_in_due_deliveries(1)).await;
    assert_eq!(rx.next().await.verified, Ok(()));
    let health = handle.health();
    assert_eq!(health.name, "webhook-dispatcher");
    assert_eq!((health.state, health.panics), (TaskState::Running, 1));
    let message = health.last_panic.unwrap();
    assert!(
        message.contains("injected panic in due_deliveries"),
        "{message}"
    );

    handle.shutdown().await;
    assert_eq!(handle.health().state, TaskState::Stopped);
}

#[tokio::test]
async fn a_panic_in_an_attempt_task_is_counted_and_the_delivery_still_ends() {
    // The first outcome is lost to a panic: the delivery stays pending.
    let (mut rx, handle, seen) = deliver_one_despite(|p| p.panic_in_record_attempt(1)).await;
    handle.shutdown().await;
    // Sent twice with the same webhook-id; recorded once.
    let first = rx.next().await;
    let second = rx.next().await;
    assert_eq!(first.id, second.id);
    assert_eq!(seen.values().next().unwrap().attempts, 1);
    let health = handle.health();
    assert_eq!((health.state, health.panics), (TaskState::Stopped, 1));
    let message = health.last_panic.unwrap();
    assert!(
        message.contains("injected panic in record_attempt"),
        "{message}"
    );
}

/// A clock whose first reading panics.
#[derive(Debug, Default)]
struct PanicsOnce(AtomicBool);

impl Clock for PanicsOnce {
    fn now(&self) -> OffsetDateTime {
        if !self.0.swap(true, Ordering::SeqCst) {
            panic!("injected panic in the clock");
        }
        SystemClock.now()
    }
}

#[tokio::test]
async fn a_panic_in_an_attempt_is_its_failure() {
    let mut rx = Receiver::start(SECRET, |_| (200, vec![])).await;
    let (_probe, store, _bus) = ProbeStore::with_bus();
    let config = config(rx.url(), &[Duration::ZERO]);
    store.set_webhook_routes(config.routes());
    store.enqueue(NewJob::new("p")).await.unwrap();
    // The attempt reads the clock first, for `webhook-timestamp`.
    let dispatcher = Dispatcher::new(store.clone(), &config)
        .unwrap()
        .with_clock(Arc::new(PanicsOnce::default()));

    assert_eq!(within("run_once", dispatcher.run_once()).await.unwrap(), 1);
    let rows = store.deliveries(DeliveryFilter::default()).await.unwrap();
    assert_eq!(
        (rows[0].status, rows[0].attempts),
        (DeliveryStatus::Pending, 1)
    );
    let error = rows[0].last_error.as_deref().unwrap();
    assert!(
        error.contains("the attempt panicked: injected panic in the clock"),
        "{error}"
    );
    assert!(rx.drain().is_empty(), "nothing was sent");

    // Retried on its schedule (at once here), like any failed attempt.
    assert_eq!(within("run_once", dispatcher.run_once()).await.unwrap(), 1);
    let rows = store.deliveries(DeliveryFilter::default()).await.unwrap();
    assert_eq!(rows[0].status, DeliveryStatus::Delivered);
    assert_eq!(rx.next().await.verified, Ok(()));
}

/// A dispatcher config with `concurrency` and the outbox of `jobs` jobs (one
/// delivery each) on a probe store.
async fn backlog(
    url: String,
    schedule: &[Duration],
    concurrency: usize,
    jobs: usize,
) -> (Arc<ProbeStore>, Arc<dyn JobStore>, EventBus, WebhookConfig) {
    let (probe, store, bus) = ProbeStore::with_bus();
    let config = WebhookConfig {
        concurrency,
        ..config(url, schedule)
    };
    store.set_webhook_routes(config.routes());
    for _ in 0..jobs {
        store.enqueue(NewJob::new("p")).await.unwrap();
    }
    (probe, store, bus, config)
}

#[tokio::test]
async fn run_once_reads_the_outbox_in_pages() {
    let mut rx = Receiver::start(SECRET, |_| (200, vec![])).await;
    let (probe, store, _bus, config) = backlog(rx.url(), &[Duration::ZERO], 4, 30).await;
    let dispatcher = Dispatcher::new(store.clone(), &config).unwrap();
    assert_eq!(within("run_once", dispatcher.run_once()).await.unwrap(), 30);

    let limits = probe.due_limits();
    assert!(limits.iter().all(|n| *n <= 4), "{limits:?}");
    let ids: HashSet<String> = rx.drain().into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 30);
    let rows = store.deliveries(DeliveryFilter::default()).await.unwrap();
    assert!(rows.iter().all(|d| d.status == DeliveryStatus::Delivered));
}

#[tokio::test]
async fn run_once_attempts_each_due_delivery_once() {
    // A failed attempt with a zero delay is due again at once.
    let mut rx = Receiver::start(SECRET, |_| (500, vec![])).await;
    let (_probe, store, _bus, config) = backlog(rx.url(), &[Duration::ZERO; 3], 2, 5).await;
    let dispatcher = Dispatcher::new(store.clone(), &config).unwrap();
    assert_eq!(within("run_once", dispatcher.run_once()).await.unwrap(), 5);

    assert_eq!(rx.drain().len(), 5);
    let rows = store.deliveries(DeliveryFilter::default()).await.unwrap();
    assert!(rows.iter().all(|d| d.attempts == 1), "{rows:?}");
}

#[tokio::test]
async fn the_loop_reads_the_outbox_in_pages() {
    let rx = Receiver::start(SECRET, |_| (200, vec![])).await;
    let (probe, store, bus, config) = backlog(rx.url(), &[Duration::ZERO], 4, 30).await;
    let dispatcher = Dispatcher::new(store.clone(), &config)
        .unwrap()
        .wake_on(bus.latest());
    let mut attempts = dispatcher.attempts();
    let handle = dispatcher.spawn();
    wait_for_deliveries(&mut attempts, "30 deliveries", |s| {
        all_ended(s, 30, DeliveryStatus::Delivered)
    })
    .await;
    handle.shutdown().await;

    let limits = probe.due_limits();
    assert!(limits.iter().all(|n| *n <= 4), "{limits:?}");
}
