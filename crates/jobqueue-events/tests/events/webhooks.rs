//! The webhook dispatcher against real receivers on loopback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jobqueue_core::{
    ClaimRequest, DeliveryFilter, DeliveryStatus, DeliveryTarget, EventType, JobStore, ManualClock,
    NewJob, timefmt,
};
use jobqueue_events::{Dispatcher, DispatcherHandle, Endpoint, EventBus, WebhookConfig};
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::{
    JOB_SECRET, Received, Receiver, SECRET, all_ended, store_and_bus, wait_for_deliveries, within,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn endpoint(url: String, schedule: &[u64]) -> WebhookConfig {
    WebhookConfig {
        endpoints: vec![
            Endpoint::new(url, SECRET)
                .retry_schedule(schedule.iter().map(|n| ms(*n)))
                .timeout(Duration::from_secs(5)),
        ],
        ..WebhookConfig::default()
    }
}

/// A dispatcher on `store`, woken by `bus`; its attempt rows are subscribed
/// before it starts, so none is missed.
fn start(
    store: &Arc<dyn JobStore>,
    bus: &EventBus,
    config: &WebhookConfig,
) -> (
    DispatcherHandle,
    tokio::sync::broadcast::Receiver<jobqueue_core::Delivery>,
) {
    store.set_webhook_routes(config.routes());
    let dispatcher = Dispatcher::new(store.clone(), config)
        .unwrap()
        .wake_on(bus.latest());
    let attempts = dispatcher.attempts();
    (dispatcher.spawn(), attempts)
}

fn by_id(requests: Vec<Received>) -> HashMap<String, Vec<Received>> {
    let mut map: HashMap<String, Vec<Received>> = HashMap::new();
    for r in requests {
        assert_eq!(r.verified, Ok(()), "signature of {}", r.id);
        map.entry(r.id.clone()).or_default().push(r);
    }
    map
}

#[tokio::test]
async fn failing_receiver_gets_each_event_once_with_the_same_id() {
    let mut rx = Receiver::start(SECRET, |ask| {
        if ask.earlier_tries < 2 {
            (500, vec![])
        } else {
            (200, vec![])
        }
    })
    .await;
    let (store, bus) = store_and_bus(64);
    let (handle, mut attempts) = start(&store, &bus, &endpoint(rx.url(), &[10, 20, 40]));
    for i in 0..3 {
        store
            .enqueue(NewJob::new("p").input(json!({"i": i})))
            .await
            .unwrap();
    }
    let seen = wait_for_deliveries(&mut attempts, "3 deliveries", |s| {
        all_ended(s, 3, DeliveryStatus::Delivered)
    })
    .await;
    handle.shutdown().await;

    let requests = by_id(rx.drain());
    assert_eq!(requests.len(), 3);
    let events = store
        .events_after(0, Default::default(), 100)
        .await
        .unwrap();
    for (id, tries) in &requests {
        let statuses: Vec<u16> = tries.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [500, 500, 200], "delivery {id}");
        assert!(tries.iter().all(|r| r.body == tries[0].body));
        let row = &seen[id];
        assert_eq!((row.attempts, row.last_status), (3, Some(200)));
        let event = events.iter().find(|e| e.seq == row.event_seq).unwrap();
        assert_eq!(tries[0].body, jobqueue_events::event_json(event));
    }
}

#[tokio::test]
async fn gone_fails_at_once() {
    let mut rx = Receiver::start(SECRET, |_| (410, vec![])).await;
    let (store, bus) = store_and_bus(64);
    let (handle, mut attempts) = start(&store, &bus, &endpoint(rx.url(), &[10, 10, 10]));
    store.enqueue(NewJob::new("p")).await.unwrap();
    let seen = wait_for_deliveries(&mut attempts, "a failed delivery", |s| {
        all_ended(s, 1, DeliveryStatus::Failed)
    })
    .await;
    handle.shutdown().await;
    let row = seen.values().next().unwrap();
    assert_eq!((row.attempts, row.last_status), (1, Some(410)));
    assert!(row.last_error.as_deref().unwrap().contains("410"));
    assert_eq!(rx.drain().len(), 1);
}

#[tokio::test]
async fn the_schedule_runs_out() {
    let mut rx = Receiver::start(SECRET, |_| (503, vec![])).await;
    let (store, bus) = store_and_bus(64);
    let (handle, mut attempts) = start(&store, &bus, &endpoint(rx.url(), &[10, 10]));
    store.enqueue(NewJob::new("p")).await.unwrap();
    let seen = wait_for_deliveries(&mut attempts, "a failed delivery", |s| {
        all_ended(s, 1, DeliveryStatus::Failed)
    })
    .await;
    handle.shutdown().await;
    let row = seen.values().next().unwrap();
    assert_eq!((row.attempts, row.last_status), (3, Some(503)));
    let error = row.last_error.as_deref().unwrap();
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    assert_eq!(rx.drain().len(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured_when_longer() {
    let mut rx = Receiver::start(SECRET, |ask| {
        if ask.earlier_tries == 0 {
            (503, vec![("retry-after", "1".to_owned())])
        } else {
            (200, vec![])
        }
    })
    .await;
    let (store, bus) = store_and_bus(64);
    let (handle, mut attempts) = start(&store, &bus, &endpoint(rx.url(), &[10]));
    store.enqueue(NewJob::new("p")).await.unwrap();
    let first = rx.next().await;
    let retry = within("the retry row", attempts.recv()).await.unwrap();
    assert_eq!(retry.status, DeliveryStatus::Pending);
    let second = rx.next().await;
    handle.shutdown().await;
    assert_eq!((first.status, second.status), (503, 200));
    let waited = second.at - first.at;
    assert!(waited >= ms(990), "waited only {waited:?}");
    let asked = retry.next_attempt_at.unwrap() - retry.created_at;
    assert!(asked >= time::Duration::milliseconds(990), "{asked}");
}

#[tokio::test]
async fn retry_delays_count_from_the_failed_attempt() {
    // A receiver that takes connections and never answers: every attempt
    // times out.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let (store, bus) = store_and_bus(64);
    let mut config = endpoint(url, &[300]);
    config.endpoints[0].timeout = ms(200);
    let (handle, mut attempts) = start(&store, &bus, &config);
    store.enqueue(NewJob::new("p")).await.unwrap();
    let row = within("the timed-out attempt", attempts.recv())
        .await
        .unwrap();
    handle.shutdown().await;
    silent.abort();
    assert_eq!(row.status, DeliveryStatus::Pending);
    let error = row.last_error.as_deref().unwrap();
    assert!(error.contains("no answer"), "{error}");
    // The attempt began when the delivery was written; the delay counts
    // from its timeout, 200 ms later.
    let waits = row.next_attempt_at.unwrap() - row.created_at;
    assert!(waits >= time::Duration::milliseconds(500), "{waits}");
}

#[tokio::test]
async fn a_clock_at_the_end_of_time_fails_deliveries_instead_of_panicking() {
    let rx = Receiver::start(SECRET, |_| (503, vec![])).await;
    let (store, bus) = store_and_bus(64);
    let config = endpoint(rx.url(), &[10]);
    store.set_webhook_routes(config.routes());
    // 10 ms after this is year 10000, which no store keeps.
    let clock = Arc::new(ManualClock::new(timefmt::MAX - ms(5)));
    let dispatcher = Dispatcher::new(store.clone(), &config)
        .unwrap()
        .with_clock(clock)
        .wake_on(bus.latest());
    let mut attempts = dispatcher.attempts();
    let handle = dispatcher.spawn();
    store.enqueue(NewJob::new("p")).await.unwrap();
    let row = within("the failed delivery", attempts.recv())
        .await
        .unwrap();
    handle.shutdown().await;
    assert_eq!((row.status, row.attempts), (DeliveryStatus::Failed, 1));
    let error = row.last_error.unwrap();
    assert!(error.starts_with("HTTP 503"), "{error}");
    assert!(error.contains("9999-12-31"), "{error}");
}

#[tokio::test]
async fn a_receiver_that_was_down_gets_everything_once_back() {
    // Reserve a port, then close it: connections are refused until the
    // receiver starts on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let (store, bus) = store_and_bus(64);
    let (handle, mut attempts) = start(&store, &bus, &endpoint(url, &[20; 500]));
    for _ in 0..5 {
        store.enqueue(NewJob::new("p")).await.unwrap();
    }
    // Every delivery fails at least twice while nobody listens.
    let refused = wait_for_deliveries(&mut attempts, "refused attempts", |s| {
        s.len() == 5 && s.values().all(|d| d.attempts >= 2)
    })
    .await;
    let error = refused.values().next().unwrap().last_error.clone().unwrap();
    assert!(error.to_lowercase().contains("connect"), "{error}");

    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let mut rx = Receiver::on(listener, SECRET, |_| (204, vec![]));
    wait_for_deliveries(&mut attempts, "5 deliveries", |s| {
        all_ended(s, 5, DeliveryStatus::Delivered)
    })
    .await;
    handle.shutdown().await;
    let requests = by_id(rx.drain());
    assert_eq!(requests.len(), 5);
    assert!(requests.values().all(|tries| tries.len() == 1));
}

#[tokio::test]
async fn a_restart_loses_no_delivery() {
    let mut rx = Receiver::start(SECRET, |ask| {
        if ask.earlier_tries == 0 {
            (500, vec![])
        } else {
            (200, vec![])
        }
    })
    .await;
    let (store, bus) = store_and_bus(64);
    let config = endpoint(rx.url(), &[30, 30, 30, 30]);
    let (first, mut attempts) = start(&store, &bus, &config);
    for _ in 0..10 {
        store.enqueue(NewJob::new("p")).await.unwrap();
    }
    within("some attempts before the restart", async {
        for _ in 0..5 {
            attempts.recv().await.unwrap();
        }
    })
    .await;
    first.shutdown().await;
    // Written while no dispatcher runs.
    for _ in 0..5 {
        store.enqueue(NewJob::new("p")).await.unwrap();
    }

    let (second, mut attempts) = start(&store, &bus, &config);
    within("every delivery", async {
        loop {
            let pending = store
                .deliveries(DeliveryFilter {
                    statuses: vec![DeliveryStatus::Pending, DeliveryStatus::Failed],
                    ..Default::default()
                })
                .await
                .unwrap();
            if pending.is_empty() {
                break;
            }
            attempts.recv().await.unwrap();
        }
    })
    .await;
    second.shutdown().await;

    let requests = by_id(rx.drain());
    assert_eq!(requests.len(), 15);
    for (id, tries) in requests {
        let ok = tries.iter().filter(|r| r.status == 200).count();
        assert_eq!(ok, 1, "delivery {id} succeeded once");
    }
}

#[tokio::test]
async fn deliveries_of_a_deleted_job_still_complete() {
    let mut rx = Receiver::start(SECRET, |ask| {
        if ask.earlier_tries == 0 {
            (500, vec![])
        } else {
            (200, vec![])
        }
    })
    .await;
    let (store, bus) = store_and_bus(64);
    let config = endpoint(rx.url(), &[10, 10]);
    store.set_webhook_routes(config.routes());

    let job = store
        .enqueue(NewJob::new("p").phases(["only"]))
        .await
        .unwrap();
    let claimed = store.claim(ClaimRequest::new(1)).await.unwrap();
    let lease = claimed[0].lease;
    store.phase_started(&lease, 0).await.unwrap();
    store.phase_completed(&lease, 0, json!(7)).await.unwrap();
    store.complete_job(&lease).await.unwrap();
    store.delete(job.id).await.unwrap();
    assert!(store.job(job.id).await.unwrap().is_none());

    let (handle, mut attempts) = start(&store, &bus, &config);
    // created, started, phase started, phase completed, completed, deleted.
    wait_for_deliveries(&mut attempts, "6 deliveries", |s| {
        all_ended(s, 6, DeliveryStatus::Delivered)
    })
    .await;
    handle.shutdown().await;
    let delivered: Vec<Received> = rx.drain().into_iter().filter(|r| r.status == 200).collect();
    let mut types: Vec<String> = delivered
        .iter()
        .map(|r| r.body["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    let mut want: Vec<String> = [
        EventType::JobCreated,
        EventType::JobStarted,
        EventType::PhaseStarted,
        EventType::PhaseCompleted,
        EventType::JobCompleted,
        EventType::JobDeleted,
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    want.sort();
    assert_eq!(types, want);
    let completed = delivered
        .iter()
        .find(|r| r.body["type"] == "job.completed")
        .unwrap();
    assert_eq!(completed.body["data"], json!({"results": {"only": 7}}));
}

#[tokio::test]
async fn per_job_urls_are_signed_with_the_default_secret() {
    let mut rx = Receiver::start(JOB_SECRET, |_| (200, vec![])).await;
    let (store, bus) = store_and_bus(64);
    let config = WebhookConfig {
        default_secret: Some(JOB_SECRET.to_owned()),
        allow_private: true,
        ..WebhookConfig::default()
    };
    let (handle, mut attempts) = start(&store, &bus, &config);
    let job = store
        .enqueue(NewJob::new("p").webhook_url(rx.url()))
        .await
        .unwrap();
    let seen = wait_for_deliveries(&mut attempts, "the delivery", |s| {
        all_ended(s, 1, DeliveryStatus::Delivered)
    })
    .await;
    handle.shutdown().await;
    assert_eq!(seen.values().next().unwrap().target, DeliveryTarget::Job);
    let got = rx.next().await;
    assert_eq!(got.verified, Ok(()));
    assert_eq!(got.body["job_id"], job.id.to_string());
}

#[tokio::test]
async fn per_job_urls_to_private_addresses_fail_at_delivery() {
    let mut rx = Receiver::start(JOB_SECRET, |_| (200, vec![])).await;
    let (store, bus) = store_and_bus(64);
    let config = WebhookConfig {
        default_secret: Some(JOB_SECRET.to_owned()),
        ..WebhookConfig::default()
    };
    let (handle, mut attempts) = start(&store, &bus, &config);
    let port = rx.addr.port();
    // An IP literal is refused before connecting; 2130706433 is 127.0.0.1
    // written as one number, which only the resolver sees as loopback.
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://2130706433:{port}/"),
    ] {
        store
            .enqueue(NewJob::new("p").webhook_url(url))
            .await
            .unwrap();
    }
    let seen = wait_for_deliveries(&mut attempts, "2 refused deliveries", |s| {
        all_ended(s, 2, DeliveryStatus::Failed)
    })
    .await;
    handle.shutdown().await;
    for row in seen.values() {
        assert_eq!(row.attempts, 1);
        let error = row.last_error.as_deref().unwrap();
        assert!(error.contains("not allowed"), "{}: {error}", row.url);
    }
    assert!(rx.drain().is_empty(), "nothing reached the receiver");
}

#[tokio::test]
async fn per_job_urls_without_a_secret_fail_cleanly() {
    let (store, bus) = store_and_bus(64);
    let config = WebhookConfig {
        allow_private: true,
        ..WebhookConfig::default()
    };
    let (handle, mut attempts) = start(&store, &bus, &config);
    store
        .enqueue(NewJob::new("p").webhook_url("http://127.0.0.1:9/"))
        .await
        .unwrap();
    let seen = wait_for_deliveries(&mut attempts, "a failed delivery", |s| {
        all_ended(s, 1, DeliveryStatus::Failed)
    })
    .await;
    handle.shutdown().await;
    let error = seen.values().next().unwrap().last_error.clone().unwrap();
    assert!(error.contains("no webhook secret"), "{error}");
}

#[tokio::test]
async fn run_once_sends_what_is_due() {
    let mut rx = Receiver::start(SECRET, |_| (200, vec![])).await;
    let (store, _bus) = store_and_bus(64);
    let config = endpoint(rx.url(), &[10]);
    store.set_webhook_routes(config.routes());
    store.enqueue(NewJob::new("p")).await.unwrap();
    store.enqueue(NewJob::new("p")).await.unwrap();
    let dispatcher = Dispatcher::new(store.clone(), &config).unwrap();
    assert_eq!(within("run_once", dispatcher.run_once()).await.unwrap(), 2);
    assert_eq!(within("run_once", dispatcher.run_once()).await.unwrap(), 0);
    assert_eq!(by_id(rx.drain()).len(), 2);
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn https_urls_go_through_tls() {
    // A plain-HTTP receiver cannot complete a TLS handshake: the attempt
    // fails as a connection error and is retried, which shows the client
    // spoke TLS for an https URL.
    let mut rx = Receiver::start(SECRET, |_| (200, vec![])).await;
    let (store, bus) = store_and_bus(64);
    let url = format!("https://127.0.0.1:{}/hooks", rx.addr.port());
    let (handle, mut attempts) = start(&store, &bus, &endpoint(url, &[60_000]));
    store.enqueue(NewJob::new("p")).await.unwrap();
    let row = within("the first attempt", attempts.recv()).await.unwrap();
    handle.shutdown().await;
    assert_eq!((row.status, row.attempts), (DeliveryStatus::Pending, 1));
    let error = row.last_error.unwrap();
    assert!(!error.contains("feature"), "{error}");
    assert!(rx.drain().is_empty(), "no request was understood as HTTP");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_loop() {
    let (store, bus) = store_and_bus(64);
    let config = endpoint("http://127.0.0.1:9/hooks".to_owned(), &[10]);
    let (handle, mut attempts) = start(&store, &bus, &config);
    drop(handle);
    // The loop ends and drops its side of the attempts channel.
    within("the loop to end", async {
        loop {
            match attempts.recv().await {
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                _ => continue,
            }
        }
    })
    .await;
}
