//! Server-Sent Events through the real server: the frames, replay after
//! `Last-Event-ID` and after `?after=`, then live events, with no gap and
//! no duplicate.

use serde_json::json;

use super::{Event, Setup, Sse, phase};

/// A pipeline of three quick phases (no progress, which may be coalesced).
fn config() -> String {
    let mut text = "[pipelines.p]\n".to_owned();
    for name in ["a", "b", "c"] {
        text += &phase("p", name, &format!("echo '\"{name}\"'"));
    }
    text
}

/// Whether `event` ends job `id`.
fn ends(id: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e: &Event| e.job() == id && e.kind == "job.completed"
}

#[tokio::test]
async fn replay_after_last_event_id_or_after_then_live_has_no_gap_and_no_duplicate() {
    let setup = Setup::new(&config()).await;
    let server = setup.serve().await;
    let first = server.enqueue(json!({"pipeline": "p"})).await;
    let history = server.history(&first).await;
    assert_eq!(
        history.len(),
        9,
        "created, started, 3 × 2 phase events, completed"
    );
    let middle = history[3].seq;
    let last_of_first = history.last().unwrap().seq;

    // Streams that resume in the middle of the first job's events.
    let mut streams: Vec<(&str, Sse)> = vec![
        (
            "/events + Last-Event-ID",
            server
                .sse("/events", &[("last-event-id", &middle.to_string())])
                .await,
        ),
        (
            "/events?after=",
            server.sse(&format!("/events?after={middle}"), &[]).await,
        ),
        (
            "/jobs/{id}/events + Last-Event-ID",
            server
                .sse(
                    &format!("/jobs/{first}/events"),
                    &[("last-event-id", &middle.to_string())],
                )
                .await,
        ),
        (
            "/jobs/{id}/events?after=",
            server
                .sse(&format!("/jobs/{first}/events?after={middle}"), &[])
                .await,
        ),
    ];
    // Each replays the rest of the first job's events, exactly.
    for (name, stream) in &mut streams {
        let replayed = stream.collect_until(ends(&first)).await;
        assert_eq!(replayed, history[4..], "{name}");
        assert_eq!(stream.retry.as_deref(), Some("2000"), "{name}");
    }

    // Then live: a second job while the streams are open.
    let second = server.enqueue(json!({"pipeline": "p"})).await;
    let second_history = server.history(&second).await;
    // The whole log, from a stream that starts at the beginning.
    let mut everything = server.sse("/events", &[]).await;
    let log = everything.collect_until(ends(&second)).await;
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {seqs:?}"
    );
    assert_eq!(&log[..history.len()], history.as_slice());
    assert_eq!(&log[history.len()..], second_history.as_slice());
    assert!(second_history[0].seq > last_of_first);

    let (all_streams, job_streams) = streams.split_at_mut(2);
    for (name, stream) in all_streams {
        let live = stream.collect_until(ends(&second)).await;
        assert_eq!(live, second_history, "{name}: live, no gap, no duplicate");
    }
    // The first job's streams see nothing of the second job; a new event
    // of their job comes next (its deletion).
    let reply = server
        .call(hyper::Method::DELETE, &format!("/jobs/{first}"), None)
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text());
    for (name, stream) in job_streams {
        let next = stream.next().await;
        assert_eq!(
            (next.job(), next.kind.as_str()),
            (first.as_str(), "job.deleted"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn types_filter_the_stream_and_a_bad_position_is_invalid() {
    let setup = Setup::new(&config()).await;
    let server = setup.serve().await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;
    server.finished(&id).await;
    let mut completed = server
        .sse("/events?types=job.created,job.completed", &[])
        .await;
    let kinds: Vec<String> = vec![completed.next().await.kind, completed.next().await.kind];
    assert_eq!(kinds, ["job.created", "job.completed"]);
    server
        .get("/events?after=soon")
        .await
        .assert_error(422, "invalid");
    server
        .get("/events?types=job.exploded")
        .await
        .assert_error(422, "invalid");
}
