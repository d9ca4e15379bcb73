//! Webhooks and retention through the real server: signed deliveries to a
//! configured endpoint and to a job's own `webhook_url`, retried with the
//! same `webhook-id`; finished jobs going stale and deleted, with their
//! pending deliveries still delivered.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::receiver::{Answer, Receiver};
use super::{Setup, phase};

const ENDPOINT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const JOB_SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLXBlci1qb2ItdXJscw==";

#[tokio::test]
async fn deliveries_to_endpoints_and_job_urls_are_signed_and_retried() {
    // The first try of the endpoint's job.completed is refused with 503.
    let mut receiver = Receiver::start(
        &[("/hooks", ENDPOINT_SECRET), ("/job", JOB_SECRET)],
        |path, body, try_n| {
            if path == "/hooks" && body["type"] == "job.completed" && try_n == 0 {
                Answer::Now(503)
            } else {
                Answer::Now(204)
            }
        },
    )
    .await;
    let text = format!(
        "webhook_secret = {JOB_SECRET:?}\nallow_private_webhook_urls = true\n\
         [[webhooks]]\nurl = {:?}\nsecret = {ENDPOINT_SECRET:?}\nretry_schedule = [\"10ms\"]\n\
         [pipelines.p]\n{}{}",
        receiver.url("/hooks"),
        phase("p", "a", "echo '::progress::50 half' >&2; echo '\"a\"'"),
        phase("p", "b", "echo '\"b\"'"),
    );
    let setup = Setup::new(&text).await;
    let server = setup.serve().await;
    let id = server
        .enqueue(json!({"pipeline": "p", "webhook_url": receiver.url("/job")}))
        .await;
    let history = server.history(&id).await;
    // Every event but progress, to both URLs.
    let expected: Vec<&Value> = history
        .iter()
        .filter(|e| e.kind != "job.phase.progress")
        .map(|e| &e.data)
        .collect();
    let want = expected.len() * 2 + 1; // and the retried try
    let received = receiver.until(|all| all.len() == want).await;

    for path in ["/hooks", "/job"] {
        let mut bodies: Vec<&Value> = received
            .iter()
            .filter(|r| r.path == path && r.try_n == 0)
            .map(|r| &r.body)
            .collect();
        bodies.sort_by_key(|b| b["seq"].as_u64());
        assert_eq!(bodies, expected, "{path}: the events' JSON, as SSE has it");
    }
    // One webhook-id per event and URL; the retry kept its id.
    let mut ids: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for r in &received {
        ids.entry(&r.id).or_default().push(r.try_n);
    }
    assert_eq!(ids.len(), expected.len() * 2);
    let retried: Vec<_> = received.iter().filter(|r| r.try_n == 1).collect();
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0].path.as_str(), &retried[0].body["type"]),
        ("/hooks", &json!("job.completed"))
    );

    // The server's record of them (the receiver answered before the
    // server recorded the outcome).
    let path = format!("/webhooks/deliveries?job={id}&status=delivered");
    let deliveries = server
        .eventually(&path, |d| {
            d["deliveries"].as_array().unwrap().len() == expected.len() * 2
        })
        .await["deliveries"]
        .as_array()
        .unwrap()
        .clone();
    let retried_delivery = deliveries
        .iter()
        .find(|d| d["id"] == retried[0].id.as_str())
        .unwrap();
    assert_eq!(retried_delivery["attempts"], 2);
    assert_eq!(retried_delivery["last_status"], 204);
    assert_eq!(retried_delivery["url"], receiver.url("/hooks"));
    for d in &deliveries {
        for key in [
            "id",
            "event_seq",
            "url",
            "status",
            "attempts",
            "last_status",
            "last_error",
            "next_attempt_at",
        ] {
            assert!(d.get(key).is_some(), "{key} in {d}");
        }
    }
}

#[tokio::test]
async fn retention_marks_finished_jobs_stale_then_deletes_them_and_their_deliveries_still_go() {
    // The job.completed delivery is refused once, then its retry is held
    // until the test has seen the job deleted.
    let mut receiver = Receiver::start(&[("/hooks", ENDPOINT_SECRET)], |_, body, try_n| {
        match (body["type"].as_str(), try_n) {
            (Some("job.completed"), 0) => Answer::Now(503),
            (Some("job.completed"), _) => Answer::AfterGate(200),
            _ => Answer::Now(200),
        }
    })
    .await;
    let text = format!(
        "[retention]\nstale_after = \"100ms\"\ndelete_after = \"100ms\"\ninterval = \"100ms\"\n\
         [[webhooks]]\nurl = {:?}\nsecret = {ENDPOINT_SECRET:?}\n\
         events = [\"job.completed\", \"job.stale\", \"job.deleted\"]\n\
         retry_schedule = [\"10ms\"]\ntimeout = \"1m\"\n\
         [pipelines.p]\n{}",
        receiver.url("/hooks"),
        phase("p", "a", "echo '\"a\"'"),
    );
    let setup = Setup::new(&text).await;
    let server = setup.serve().await;
    let waiting = server
        .enqueue(json!({"pipeline": "p", "run_at": "2999-01-01T00:00:00Z"}))
        .await;
    let mut events = server
        .sse("/events?types=job.completed,job.stale,job.deleted", &[])
        .await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;
    let seen = events
        .collect_until(|e| e.job() == id && e.kind == "job.deleted")
        .await;
    assert_eq!(
        super::kinds(&seen),
        ["job.completed", "job.stale", "job.deleted"]
    );
    server
        .get(&format!("/jobs/{id}"))
        .await
        .assert_error(404, "not_found");
    assert_eq!(
        server.job(&waiting).await["status"],
        "queued",
        "retention leaves unfinished jobs alone"
    );

    // The job is gone; its job.completed delivery is still pending, its
    // second try held by the receiver.
    let completed_seq = seen[0].seq;
    let pending = server
        .get(&format!("/webhooks/deliveries?job={id}&status=pending"))
        .await
        .json();
    assert!(
        pending["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["event_seq"] == completed_seq),
        "{pending}"
    );
    receiver.open_gate();
    let path = format!("/webhooks/deliveries?job={id}");
    let deliveries = server
        .eventually(&path, |d| {
            let list = d["deliveries"].as_array().unwrap();
            list.len() == 3 && list.iter().all(|d| d["status"] == "delivered")
        })
        .await;
    let completed = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_seq"] == completed_seq)
        .unwrap()
        .clone();
    assert_eq!(completed["attempts"], 2, "{completed}");
    assert_eq!(completed["last_status"], 200, "{completed}");
    // The receiver saw each event, job.completed twice.
    let received = receiver.until(|all| all.len() == 4).await;
    let mut types: Vec<_> = received
        .iter()
        .map(|r| r.body["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["job.completed", "job.completed", "job.deleted", "job.stale"]
    );
}

#[tokio::test]
async fn a_stale_job_is_listed_as_stale_and_can_still_be_deleted() {
    let text = format!(
        "[retention]\nstale_after = \"10ms\"\ndelete_after = \"1h\"\ninterval = \"100ms\"\n\
         [pipelines.p]\n{}",
        phase("p", "a", "echo '\"a\"'"),
    );
    let setup = Setup::new(&text).await;
    let server = setup.serve().await;
    let id = server.enqueue(json!({"pipeline": "p"})).await;
    server.wait_event(&id, 0, &["job.stale"]).await;
    let job = server.job(&id).await;
    assert_eq!(job["status"], "stale", "{job}");
    assert!(job["stale_at"].is_string(), "{job}");
    assert_eq!(
        job["phases"][0]["result"], "a",
        "a stale job keeps its results"
    );
    let listed = server.get("/jobs?status=stale").await.json();
    assert_eq!(listed["jobs"][0]["id"], id.as_str(), "{listed}");
    let reply = server
        .call(hyper::Method::DELETE, &format!("/jobs/{id}"), None)
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text());
    server
        .get(&format!("/jobs/{id}"))
        .await
        .assert_error(404, "not_found");
}
