//! Event streams: replay after `Last-Event-ID` or `?after=`, then live, with
//! no gap and no duplicate; filters; keep-alives; the end at shutdown.

use jobqueue::EventType;
use jobqueue::core::{EventFilter, JobId};
use serde_json::{Value, json};

use crate::{Backend, Frame, Options, Server, SseClient};

/// What the store holds after `after` (with `filter`): `(seq, type)`.
async fn stored(server: &Server, after: u64, filter: EventFilter) -> Vec<(u64, String)> {
    server
        .queue
        .store()
        .events_after(after, filter, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.event_type().as_str().to_owned()))
        .collect()
}

/// Reads events until `job`'s `job.completed`; returns `(seq, type)`.
async fn until_completed(stream: &mut SseClient, job: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    loop {
        let (seq, ty, data) = stream.event().await;
        let done = ty == "job.completed" && data["job_id"] == job;
        out.push((seq, ty));
        if done {
            return out;
        }
    }
}

fn id(job: &Value) -> String {
    job["id"].as_str().unwrap().to_owned()
}

both! {
    async fn replay_then_live_has_no_gap_and_no_duplicate(b: Backend) {
        let server = Server::start(b).await;
        let first = id(&server.enqueue(json!({"pipeline": "quick"})).await);
        server.wait_for(&first, EventType::JobCompleted).await;

        let mut stream = server.sse("/events", &[]).await;
        assert_eq!(stream.frame().await, Some(Frame::Retry("2000".into())));
        let replayed = until_completed(&mut stream, &first).await;
        assert_eq!(replayed, stored(&server, 0, EventFilter::default()).await);
        assert_eq!(replayed[0].1, "job.created");

        // Live, on the same stream.
        let second = id(&server.enqueue(json!({"pipeline": "quick"})).await);
        let live = until_completed(&mut stream, &second).await;
        let all: Vec<_> = replayed.iter().chain(&live).cloned().collect();
        assert_eq!(all, stored(&server, 0, EventFilter::default()).await);

        // Reconnecting after any event continues right after it.
        let middle = replayed[replayed.len() / 2].0;
        let expected: Vec<_> = all.iter().filter(|(s, _)| *s > middle).cloned().collect();
        let header = middle.to_string();
        let mut resumed = server.sse("/events", &[("last-event-id", &header)]).await;
        assert_eq!(until_completed(&mut resumed, &second).await, expected);
        let mut by_query = server.sse(&format!("/events?after={middle}"), &[]).await;
        assert_eq!(until_completed(&mut by_query, &second).await, expected);
        // Last-Event-ID wins over ?after=.
        let mut both = server.sse("/events?after=0", &[("last-event-id", &header)]).await;
        assert_eq!(until_completed(&mut both, &second).await, expected);
        server.stop().await;
    }

    async fn replay_while_jobs_run_misses_nothing(b: Backend) {
        let server = Server::start(b).await;
        let jobs: Vec<Value> = (0..20).map(|i| json!({"pipeline": "quick", "input": i})).collect();
        let batch = server.post("/jobs/batch", &json!({"jobs": jobs})).await.expect(201, None);
        // The stream starts while the jobs run: part replay, part live.
        let mut stream = server.sse("/events", &[]).await;
        let mut seen = Vec::new();
        let mut completed = 0;
        while completed < 20 {
            let (seq, ty, _) = stream.event().await;
            completed += usize::from(ty == "job.completed");
            seen.push((seq, ty));
        }
        assert_eq!(seen, stored(&server, 0, EventFilter::default()).await);
        assert_eq!(batch["jobs"].as_array().unwrap().len(), 20);
        server.stop().await;
    }

    async fn streams_filter_by_type_and_job(b: Backend) {
        let server = Server::start(b).await;
        let one = id(&server.enqueue(json!({"pipeline": "quick"})).await);
        let two = id(&server.enqueue(json!({"pipeline": "quick"})).await);
        server.wait_for(&one, EventType::JobCompleted).await;
        server.wait_for(&two, EventType::JobCompleted).await;

        let types = vec![EventType::JobCreated, EventType::JobCompleted];
        let mut typed = server.sse("/events?types=job.created,job.completed", &[]).await;
        let want = stored(&server, 0, EventFilter { job: None, types }).await;
        assert_eq!(want.len(), 4);
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let (seq, ty, _) = typed.event().await;
            got.push((seq, ty));
        }
        assert_eq!(got, want);

        let mut own = server.sse(&format!("/jobs/{two}/events"), &[]).await;
        let got = until_completed(&mut own, &two).await;
        let filter = EventFilter { job: Some(two.parse::<JobId>().unwrap()), types: vec![] };
        assert_eq!(got, stored(&server, 0, filter).await);
        assert_eq!(got[0].1, "job.created");
        server.stop().await;
    }

    async fn streams_send_keepalives(b: Backend) {
        let server = Options { keepalive: Some(std::time::Duration::from_millis(50)), ..Options::new(b) }
            .start()
            .await;
        let mut stream = server.sse("/events", &[]).await;
        assert_eq!(stream.frame().await, Some(Frame::Retry("2000".into())));
        assert_eq!(stream.frame().await, Some(Frame::Comment("keepalive".into())));
        server.stop().await;
    }

    async fn streams_end_when_the_server_shuts_down(b: Backend) {
        let mut server = Server::start(b).await;
        let mut stream = server.sse("/events", &[]).await;
        assert_eq!(stream.frame().await, Some(Frame::Retry("2000".into())));
        // serve() returns only once every response finished, the stream
        // included.
        server.stop_serving().await;
        assert_eq!(stream.frame().await, None);
        // And it no longer accepts connections.
        assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
        server.queue.shutdown().await;
    }
}
