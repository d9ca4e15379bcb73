//! SSE streams: replay then live across reconnects, stalled clients, HTTP.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jobqueue_core::{ClaimRequest, EventFilter, EventType, JobStore, NewJob, Progress};
use jobqueue_events::sse::{self, SseOptions};
use jobqueue_events::{EventBus, after_from_request};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::{store_and_bus, within};

/// One parsed SSE frame.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Retry(u64),
    Keepalive,
    Event { id: u64, ty: String, data: Value },
}

/// Splits complete frames off `buf` and parses them by the SSE grammar of
/// `docs/events.md`.
fn take_frames(buf: &mut BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let raw = buf.split_to(end + 2);
        let text = std::str::from_utf8(&raw[..end]).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        let frame = match lines.as_slice() {
            [retry] if retry.starts_with("retry: ") => Frame::Retry(retry[7..].parse().unwrap()),
            [": keepalive"] => Frame::Keepalive,
            [id, event, data] => {
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                Frame::Event {
                    id: id.strip_prefix("id: ").unwrap().parse().unwrap(),
                    ty: event.strip_prefix("event: ").unwrap().to_owned(),
                    data,
                }
            }
            other => panic!("not a frame of the contract: {other:?}"),
        };
        frames.push(frame);
    }
    frames
}

/// Reads frames from an SSE byte stream.
struct FrameReader<S> {
    stream: S,
    buf: BytesMut,
    ready: std::collections::VecDeque<Frame>,
}

impl<S: Stream<Item = Result<Bytes, Infallible>> + Unpin> FrameReader<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            ready: Default::default(),
        }
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return f;
            }
            let chunk = within("an SSE chunk", self.stream.next())
                .await
                .expect("the stream goes on");
            let Ok(chunk) = chunk;
            self.buf.extend_from_slice(&chunk);
            self.ready.extend(take_frames(&mut self.buf));
        }
    }

    /// The next event frame, skipping keep-alives.
    async fn next_event(&mut self) -> (u64, String, Value) {
        loop {
            match self.next().await {
                Frame::Event { id, ty, data } => return (id, ty, data),
                Frame::Keepalive => {}
                Frame::Retry(_) => panic!("retry: only starts a stream"),
            }
        }
    }
}

/// Runs `jobs` jobs of two phases through the store, yielding between writes
/// so readers interleave.
async fn produce(store: Arc<dyn JobStore>, jobs: usize) {
    for i in 0..jobs {
        store
            .enqueue(NewJob::new("build").phases(["a", "b"]).input(json!(i)))
            .await
            .unwrap();
        let claimed = store.claim(ClaimRequest::new(1)).await.unwrap();
        let lease = claimed[0].lease;
        for phase in 0..2 {
            store.phase_started(&lease, phase).await.unwrap();
            tokio::task::yield_now().await;
            store
                .phase_progress(&lease, phase, Progress::new(50, Some("half".into())))
                .await
                .unwrap();
            store
                .phase_completed(&lease, phase, json!(phase))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        store.complete_job(&lease).await.unwrap();
    }
}

/// A tiny deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn fast() -> SseOptions {
    SseOptions {
        keepalive: Duration::from_millis(25),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_clients_see_every_event_once_in_order() {
    // A small ring, so readers also lag and resync from the store.
    let (store, bus) = store_and_bus(8);
    let jobs = 60;
    let producer = tokio::spawn(produce(store.clone(), jobs));

    let mut rng = Lcg(7);
    let mut seen: Vec<u64> = Vec::new();
    let mut last = 0;
    let mut connections = 0;
    // created, started, 2 x (phase started, progress, completed), completed
    let expected_total = (jobs * 9) as u64;
    while last < expected_total {
        connections += 1;
        let stream =
            sse::sse_stream_with(store.clone(), &bus, last, EventFilter::default(), &fast());
        let mut reader = FrameReader::new(Box::pin(stream));
        assert_eq!(
            reader.next().await,
            Frame::Retry(2000),
            "a stream starts with retry"
        );
        // Read a random number of events, then drop the connection.
        let take = 1 + rng.below(40);
        for _ in 0..take {
            if last == expected_total {
                break;
            }
            let (id, ty, data) = reader.next_event().await;
            assert_eq!(data["seq"], id);
            assert_eq!(data["type"], ty.as_str());
            seen.push(id);
            last = id;
        }
    }
    within("the producer", producer).await.unwrap();
    assert_eq!(store.last_seq().await.unwrap(), expected_total);
    let want: Vec<u64> = (1..=expected_total).collect();
    assert_eq!(seen, want, "every event once, in order");
    assert!(
        connections > 5,
        "the test reconnected ({connections} connections)"
    );
}

#[tokio::test]
async fn a_stalled_client_does_not_slow_the_producer() {
    let (store, bus) = store_and_bus(16);
    let stream = sse::sse_stream_with(store.clone(), &bus, 0, EventFilter::default(), &fast());
    let mut reader = FrameReader::new(Box::pin(stream));
    assert_eq!(reader.next().await, Frame::Retry(2000));
    store.enqueue(NewJob::new("p")).await.unwrap();
    assert_eq!(reader.next_event().await.0, 1);

    // The reader stops reading; 5,000 writes must still finish promptly.
    let writes = 5_000;
    let producer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..writes {
                store.enqueue(NewJob::new("p")).await.unwrap();
            }
        })
    };
    within("the producer while the client stalls", producer)
        .await
        .unwrap();

    // Reading again, it catches up from the store: every event, once.
    for want in 2..=(writes + 1) {
        assert_eq!(reader.next_event().await.0, want);
    }
}

#[tokio::test]
async fn filters_by_job_and_type() {
    let (store, bus) = store_and_bus(64);
    let a = store.enqueue(NewJob::new("p")).await.unwrap();
    let b = store.enqueue(NewJob::new("p")).await.unwrap();
    let filter = EventFilter {
        job: Some(b.id),
        types: vec![EventType::JobCreated, EventType::JobCancelled],
    };
    let stream = sse::sse_stream_with(store.clone(), &bus, 0, filter, &fast());
    let mut reader = FrameReader::new(Box::pin(stream));
    assert_eq!(reader.next().await, Frame::Retry(2000));
    let (id, ty, data) = reader.next_event().await;
    assert_eq!((id, ty.as_str()), (2, "job.created"));
    assert_eq!(data["job_id"], b.id.to_string());
    store.request_cancel(a.id).await.unwrap();
    store.request_cancel(b.id).await.unwrap();
    let (id, ty, data) = reader.next_event().await;
    assert_eq!((id, ty.as_str()), (4, "job.cancelled"));
    assert_eq!(data["data"], json!({}));
}

#[tokio::test]
async fn idle_streams_send_keepalives() {
    let (store, bus) = store_and_bus(64);
    let stream = sse::sse_stream_with(store, &bus, 0, EventFilter::default(), &fast());
    let mut reader = FrameReader::new(Box::pin(stream));
    assert_eq!(reader.next().await, Frame::Retry(2000));
    assert_eq!(reader.next().await, Frame::Keepalive);
    assert_eq!(reader.next().await, Frame::Keepalive);
}

/// Serves `GET /events` from `store` and `bus` on loopback.
async fn serve(store: Arc<dyn JobStore>, bus: EventBus) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (store, bus) = (store.clone(), bus.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let after = after_from_request(req.headers(), req.uri().query()).unwrap();
                let stream = sse::sse_stream_with(
                    store.clone(),
                    &bus,
                    after,
                    EventFilter::default(),
                    &fast(),
                );
                async move { Ok::<_, Infallible>(sse::sse_response(stream)) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/events")
}

#[tokio::test]
async fn serves_over_http_with_last_event_id() {
    let (store, bus) = store_and_bus(64);
    for _ in 0..3 {
        store.enqueue(NewJob::new("p")).await.unwrap();
    }
    let url = serve(store.clone(), bus).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::get(format!("{url}?after=0"))
        .header("last-event-id", "2")
        .body(Empty::new())
        .unwrap();
    let response: Response<Incoming> = within("the response", client.request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let body = response
        .into_body()
        .into_data_stream()
        .map(|chunk| Ok::<_, Infallible>(chunk.unwrap()));
    let mut reader = FrameReader::new(Box::pin(body));
    assert_eq!(reader.next().await, Frame::Retry(2000));
    assert_eq!(
        reader.next_event().await.0,
        3,
        "replay starts after Last-Event-ID"
    );
    store.enqueue(NewJob::new("p")).await.unwrap();
    let (id, ty, _) = reader.next_event().await;
    assert_eq!((id, ty.as_str()), (4, "job.created"), "then live");
}
