//! Events through the façade: subscriptions, SSE and signed webhooks from
//! the outbox, on every store.

use std::time::Duration;

use futures_util::StreamExt;
use jobqueue::{
    Endpoint, EventFilter, EventType, NewJob, PhaseError, Pipeline, WebhookConfig, phase_fn,
};
use jobqueue_tests::StoreKind;
use jobqueue_tests::receiver::Receiver;
use serde_json::json;

use crate::Env;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn two_phases() -> Pipeline {
    Pipeline::new("p")
        .phase(phase_fn("a", |ctx| async move {
            ctx.report(50, Some("half"));
            Ok::<_, PhaseError>(json!(1))
        }))
        .phase(phase_fn("b", |_ctx| async {
            Ok::<_, PhaseError>(json!(2))
        }))
}

store_tests! {
    async fn subscribe_starts_now_and_sees_every_later_event(kind: StoreKind) {
        let env = Env::new(kind);
        let (queue, rec) = env.start(vec![two_phases()]).await;
        let first = queue.enqueue("p", &json!(null)).await.unwrap();
        rec.wait_for(first.id, EventType::JobCompleted).await;
        queue.shutdown().await;
        drop(queue);
        // A second life on the same store: "now" is its last event.
        let (queue, _rec) = env.start(vec![two_phases()]).await;
        let mut events = queue.subscribe(EventFilter::default());
        let job = queue.enqueue("p", &json!(null)).await.unwrap();
        let mut seen = Vec::new();
        while let Some(e) = tokio::time::timeout(Duration::from_secs(20), events.next()).await.unwrap() {
            let e = e.unwrap();
            assert_eq!(e.job_id, Some(job.id), "nothing from before the call");
            seen.push(e.event_type());
            if e.event_type() == EventType::JobCompleted {
                break;
            }
        }
        assert_eq!(seen.first(), Some(&EventType::JobCreated));
        let mut typed = queue.subscribe_after(0, EventFilter { job: Some(first.id), types: vec![EventType::JobCompleted] });
        let e = typed.next().await.unwrap().unwrap();
        assert_eq!((e.job_id, e.event_type()), (Some(first.id), EventType::JobCompleted), "replay with filters");
        queue.shutdown().await;
    }

    async fn sse_replays_then_follows_live(kind: StoreKind) {
        let env = Env::new(kind);
        let (queue, rec) = env.start(vec![two_phases()]).await;
        let done = queue.enqueue("p", &json!(null)).await.unwrap();
        rec.wait_for(done.id, EventType::JobCompleted).await;
        let mut sse = Box::pin(queue.sse(2, EventFilter::default()));
        let first = sse.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"retry: 2000\n\n");
        let live = queue.enqueue("p", &json!(null)).await.unwrap();
        let mut ids = Vec::new();
        let mut buffer = String::new();
        'read: loop {
            let chunk = tokio::time::timeout(Duration::from_secs(20), sse.next()).await.unwrap().unwrap().unwrap();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                if frame.starts_with(": keepalive") {
                    continue;
                }
                let mut lines = frame.lines();
                let id: u64 = lines.next().unwrap().strip_prefix("id: ").unwrap().parse().unwrap();
                let event = lines.next().unwrap().strip_prefix("event: ").unwrap().to_owned();
                let data: serde_json::Value =
                    serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["seq"], json!(id));
                assert_eq!(data["type"], json!(event));
                ids.push(id);
                if event == "job.completed" && data["job_id"] == json!(live.id.to_string()) {
                    assert_eq!(data["data"]["results"], json!({"a": 1, "b": 2}));
                    break 'read;
                }
            }
        }
        assert_eq!(ids.first(), Some(&3), "replay starts after the given id");
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "no gap, no duplicate: {ids:?}");
        queue.shutdown().await;
    }

    async fn webhooks_are_signed_retried_and_delivered_once(kind: StoreKind) {
        let env = Env::new(kind);
        // 500 twice for every event, then 200.
        let mut receiver = Receiver::start(SECRET, |n| if n < 2 { 500 } else { 200 }).await;
        let webhooks = WebhookConfig {
            endpoints: vec![Endpoint::new(receiver.url("/hooks"), SECRET)
                .events([EventType::JobCreated, EventType::JobCompleted])
                .retry_schedule([Duration::from_millis(20), Duration::from_millis(40), Duration::from_millis(80)])],
            default_secret: Some(SECRET.into()),
            allow_private: true,
            job_retry_schedule: vec![Duration::from_millis(20), Duration::from_millis(20), Duration::from_millis(20)],
            ..WebhookConfig::default()
        };
        let (queue, rec) = env.start_with(vec![two_phases()], |b| b.webhooks(webhooks)).await;
        let job = queue.enqueue_job(NewJob::new("p").webhook_url(receiver.url("/job"))).await.unwrap();
        rec.wait_for(job.id, EventType::JobCompleted).await;
        // Endpoint: created + completed; job URL: every type but progress
        // (created, started, 2x phase started, 2x phase completed, completed).
        let expected_successes = 2 + 7;
        let mut successes = std::collections::HashMap::new();
        let mut tries: std::collections::HashMap<String, Vec<u16>> = Default::default();
        while successes.len() < expected_successes {
            let r = tokio::time::timeout(Duration::from_secs(20), receiver.requests.recv()).await.unwrap().unwrap();
            assert!(r.verified, "standardwebhooks verifies the signature");
            assert_eq!(r.body["job_id"], json!(job.id.to_string()));
            tries.entry(r.id.clone()).or_default().push(r.status);
            if r.status == 200 {
                assert!(successes.insert(r.id.clone(), r.body.clone()).is_none(), "each delivery succeeds once");
            }
        }
        for statuses in tries.values() {
            assert_eq!(statuses, &[500, 500, 200], "same webhook-id on every try");
        }
        let types: Vec<String> = successes.values().map(|b| b["type"].as_str().unwrap().to_owned()).collect();
        assert_eq!(types.iter().filter(|t| *t == "job.completed").count(), 2);
        assert!(!types.iter().any(|t| t == "job.phase.progress"), "progress is not delivered by default");
        queue.shutdown().await;
    }

    async fn bad_webhook_urls_are_refused_at_enqueue(kind: StoreKind) {
        let env = Env::new(kind);
        let (queue, _rec) = env.start(vec![two_phases()]).await;
        let err = queue.enqueue_job(NewJob::new("p").webhook_url("https://example.com/hook")).await.unwrap_err();
        assert!(err.to_string().contains("no webhook secret"), "{err}");
        queue.shutdown().await;
        let strict = WebhookConfig { default_secret: Some(SECRET.into()), ..WebhookConfig::default() };
        let (queue, _rec) = env.start_with(vec![two_phases()], |b| b.webhooks(strict)).await;
        for url in ["http://127.0.0.1:8080/x", "http://10.0.0.1/x", "ftp://example.com/x", "http://[::1]/x"] {
            let before = queue.store().last_seq().await.unwrap();
            assert!(queue.enqueue_job(NewJob::new("p").webhook_url(url)).await.is_err(), "{url} refused");
            assert_eq!(queue.store().last_seq().await.unwrap(), before, "a refused enqueue changes nothing");
        }
        queue.shutdown().await;
    }

    async fn sse_clients_reconnecting_at_random_points_see_every_event_once(kind: StoreKind) {
        let env = Env::new(kind);
        let (queue, rec) = env.start_with(vec![two_phases()], |b| b.concurrency(4)).await;
        // A client that stops reading after the first frame: it must not
        // slow the queue (its buffer is bounded; it would resync later).
        let mut stalled = Box::pin(queue.sse(0, EventFilter::default()));
        let _ = stalled.next().await;
        let mut jobs = Vec::new();
        for i in 0..20 {
            jobs.push(queue.enqueue("p", &json!(i)).await.unwrap().id);
        }
        // A client that drops the connection after a random number of frames
        // and reconnects with the last id it saw, while the jobs run.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut last_id = 0u64;
        let mut seen: Vec<u64> = Vec::new();
        let mut completed = std::collections::HashSet::new();
        while completed.len() < jobs.len() {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let frames_this_time = 1 + (seed >> 33) % 7;
            let mut sse = Box::pin(queue.sse(last_id, EventFilter::default()));
            let mut buffer = String::new();
            let mut got = 0;
            while got < frames_this_time && completed.len() < jobs.len() {
                let chunk = tokio::time::timeout(Duration::from_secs(20), sse.next()).await.unwrap().unwrap().unwrap();
                buffer.push_str(std::str::from_utf8(&chunk).unwrap());
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let Some(rest) = frame.strip_prefix("id: ") else { continue };
                    let id: u64 = rest.lines().next().unwrap().parse().unwrap();
                    let data: serde_json::Value =
                        serde_json::from_str(frame.lines().nth(2).unwrap().strip_prefix("data: ").unwrap()).unwrap();
                    if data["type"] == "job.completed" {
                        completed.insert(data["job_id"].as_str().unwrap().to_owned());
                    }
                    seen.push(id);
                    last_id = id;
                    got += 1;
                }
            }
            // Dropping `sse` here is the disconnect.
        }
        for id in &jobs {
            rec.wait_for(*id, EventType::JobCompleted).await;
        }
        let expected: Vec<u64> = (1..=*seen.last().unwrap()).collect();
        assert_eq!(seen, expected, "every event exactly once, in order, across reconnects");
        drop(stalled);
        queue.shutdown().await;
    }
}
