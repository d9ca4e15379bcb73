//! The client commands, run as the real binary against a loopback stub of
//! the API: what they send, what they print, how they fail, and `tail`
//! resuming a dropped stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

use crate::support::{BIN, DEADLINE};

/// A request the stub received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    authorization: Option<String>,
    last_event_id: Option<String>,
    body: Value,
}

type Body = BoxBody<Bytes, Infallible>;

fn json_reply(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// A loopback stub of the API: answers each request with `reply` and
/// remembers it.
struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    async fn start(reply: impl Fn(&Seen, usize) -> Response<Body> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(reply);
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (reply, log) = (reply.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (reply, log) = (reply.clone(), log.clone());
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let (method, uri) = (req.method().to_string(), req.uri().to_string());
                            let (authorization, last_event_id) =
                                (header("authorization"), header("last-event-id"));
                            let bytes = req.into_body().collect().await.unwrap().to_bytes();
                            let seen = Seen {
                                method,
                                uri,
                                authorization,
                                last_event_id,
                                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                            };
                            let n = {
                                let mut log = log.lock().unwrap();
                                log.push(seen.clone());
                                log.len()
                            };
                            Ok::<_, Infallible>(reply(&seen, n))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn jobqueue(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(BIN)
        .args(args)
        .env("JOBQUEUE_TOKEN", "t0k3n")
        .env_remove("JOBQUEUE_URL")
        .output();
    tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn job(id: &str, status: &str) -> Value {
    json!({"id": id, "pipeline": "build", "status": status, "input": {}, "priority": 0, "unique_key": null,
           "attempt": 1, "max_attempts": 3, "created_at": "2024-05-01T12:00:01Z", "run_at": "2024-05-01T12:00:01Z",
           "started_at": null, "finished_at": null, "error": null, "interrupted": null,
           "phases": [{"name": "fetch", "status": "failed", "attempts": 1, "progress": null, "result": null,
                       "error": "boom", "started_at": null, "finished_at": null}]})
}

#[tokio::test]
async fn enqueue_sends_the_job_with_the_token_and_prints_its_id() {
    let stub = Stub::start(|_, _| json_reply(201, &job("j-1", "queued"))).await;
    let url = stub.url();
    let out = jobqueue(&[
        "enqueue",
        "build",
        "--input",
        "{\"n\": 1}",
        "--priority",
        "-2",
        "--unique-key",
        "k",
        "--url",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "j-1\n");
    let seen = stub.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("POST", "/jobs")
    );
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer t0k3n"));
    assert_eq!(
        seen[0].body,
        json!({"pipeline": "build", "input": {"n": 1}, "priority": -2, "unique_key": "k"})
    );

    let out = jobqueue(&["enqueue", "build", "--json", "--url", &url]).await;
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, job("j-1", "queued"));
    assert_eq!(stub.seen()[1].body, json!({"pipeline": "build"}));

    let out = jobqueue(&[
        "enqueue",
        "build",
        "--input",
        "[1]",
        "--unique-by-input",
        "--unique-for",
        "1d",
        "--url",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        stub.seen()[2].body,
        json!({"pipeline": "build", "input": [1], "unique_by_input": true, "unique_for": "1d"})
    );
    let out = jobqueue(&[
        "enqueue",
        "build",
        "--unique-key",
        "k",
        "--unique-by-input",
        "--url",
        &url,
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "one key, not two");
}

#[tokio::test]
async fn a_server_error_is_printed_with_its_code_and_exits_1() {
    let stub = Stub::start(|seen, _| {
        if seen.uri == "/jobs" {
            json_reply(
                409,
                &json!({"error": {"code": "duplicate", "message": "a job with this unique key is queued"}, "job_id": "j-9"}),
            )
        } else {
            json_reply(404, &json!({"error": {"code": "not_found", "message": "no job j-404"}}))
        }
    })
    .await;
    let url = stub.url();
    let out = jobqueue(&["enqueue", "build", "--unique-key", "k", "--url", &url]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        "error: a job with this unique key is queued (duplicate, HTTP 409); existing job: j-9\n"
    );
    let out = jobqueue(&["show", "j-404", "--url", &url]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: no job j-404 (not_found, HTTP 404)\n"
    );
}

#[tokio::test]
async fn an_answer_that_is_not_the_error_shape_is_shown_as_it_came() {
    let stub = Stub::start(|_, _| {
        Response::builder()
            .status(502)
            .body(Full::new(Bytes::from("<html>bad gateway</html>")).boxed())
            .unwrap()
    })
    .await;
    let out = jobqueue(&["jobs", "--url", &stub.url()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: unexpected answer from the server (HTTP 502): <html>bad gateway</html>\n"
    );
}

#[tokio::test]
async fn jobs_prints_a_table_or_json_and_passes_the_filters() {
    let stub = Stub::start(|_, _| {
        json_reply(
            200,
            &json!({"jobs": [job("j-2", "failed"), job("j-1", "queued")], "next_cursor": "c2"}),
        )
    })
    .await;
    let url = stub.url();
    let out = jobqueue(&[
        "jobs",
        "--status",
        "failed,queued",
        "--pipeline",
        "build",
        "--limit",
        "2",
        "--url",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ID   PIPELINE  STATUS  PHASE  ATTEMPT  CREATED\n\
         j-2  build     failed  fetch  1/3      2024-05-01 12:00:01\n\
         j-1  build     queued  fetch  1/3      2024-05-01 12:00:01\n"
    );
    assert_eq!(text(&out.stderr), "more jobs: add --cursor c2\n");
    assert_eq!(
        stub.seen()[0].uri,
        "/jobs?status=failed,queued&pipeline=build&limit=2"
    );
    let out = jobqueue(&["jobs", "--json", "--cursor", "c2", "--url", &url]).await;
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["next_cursor"], "c2");
    assert_eq!(stub.seen()[1].uri, "/jobs?cursor=c2");
}

#[tokio::test]
async fn show_cancel_and_retry() {
    let stub = Stub::start(|seen, _| match (seen.method.as_str(), seen.uri.as_str()) {
        ("GET", "/jobs/j-1") => json_reply(200, &job("j-1", "failed")),
        ("POST", "/jobs/j-1/cancel") => json_reply(202, &job("j-1", "running")),
        ("POST", "/jobs/j-2/cancel") => json_reply(200, &job("j-2", "cancelled")),
        ("POST", "/jobs/j-1/retry") => json_reply(200, &job("j-1", "queued")),
        _ => json_reply(
            409,
            &json!({"error": {"code": "conflict", "message": "the job is completed"}}),
        ),
    })
    .await;
    let url = stub.url();
    let out = jobqueue(&["show", "j-1", "--url", &url]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.starts_with("job         j-1\npipeline    build\nstatus      failed\n"),
        "{shown}"
    );
    assert!(
        shown.contains("fetch  failed  1         -         error: boom"),
        "{shown}"
    );
    let out = jobqueue(&["cancel", "j-1", "--url", &url]).await;
    assert_eq!(
        text(&out.stdout),
        "job j-1 is stopping: its running phase was told to stop\n"
    );
    let out = jobqueue(&["cancel", "j-2", "--url", &url]).await;
    assert_eq!(text(&out.stdout), "job j-2 cancelled\n");
    let out = jobqueue(&["retry", "j-1", "--url", &url]).await;
    assert_eq!(
        text(&out.stdout),
        "job j-1 queued again; it resumes at phase fetch\n"
    );
    let out = jobqueue(&["retry", "j-3", "--url", &url]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: the job is completed (conflict, HTTP 409)\n"
    );
}

#[tokio::test]
async fn the_url_comes_from_the_environment_and_an_unreachable_server_is_an_error() {
    let stub = Stub::start(|_, _| json_reply(200, &json!({"jobs": [], "next_cursor": null}))).await;
    let out = tokio::process::Command::new(BIN)
        .args(["jobs"])
        .env("JOBQUEUE_URL", stub.url())
        .env_remove("JOBQUEUE_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no jobs\n");
    assert_eq!(stub.seen()[0].authorization, None);

    // A port that was free a moment ago: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let out = jobqueue(&["show", "j-1", "--url", &format!("http://{addr}")]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(&format!(
            "error: cannot reach the server at http://{addr}: "
        )),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn bad_arguments_are_errors_before_any_request() {
    let out = jobqueue(&[
        "enqueue",
        "build",
        "--input",
        "{not json",
        "--url",
        "http://127.0.0.1:9",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: --input is not JSON: "),
        "{}",
        text(&out.stderr)
    );
    let out = jobqueue(&["jobs", "--url", "ftp://example.com"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: invalid --url \"ftp://example.com\": it must start with http:// or https://\n"
    );
}

fn sse(frames: &str) -> Bytes {
    Bytes::from(frames.to_owned())
}

fn event(seq: u64, kind: &str) -> String {
    let json = json!({"seq": seq, "type": kind, "job_id": "j-1", "pipeline": "build", "at": "2024-05-01T12:00:01Z", "data": {}});
    format!("id: {seq}\nevent: {kind}\ndata: {json}\n\n")
}

#[tokio::test]
async fn tail_follows_and_resumes_after_a_dropped_connection() {
    let stub = Stub::start(|seen, _| {
        let head = Response::builder()
            .status(200)
            .header("content-type", "text/event-stream");
        match seen.last_event_id.as_deref() {
            // The first connection: two events, then the server drops it.
            None => head
                .body(
                    Full::new(sse(&format!(
                        "retry: 50\n\n{}: keepalive\n\n{}",
                        event(1, "job.created"),
                        event(2, "job.started")
                    )))
                    .boxed(),
                )
                .unwrap(),
            // The resumed one: the next event, then it stays open.
            Some(_) => {
                let first = stream::iter([Ok::<_, Infallible>(Frame::data(sse(&event(
                    3,
                    "job.phase.started",
                ))))]);
                head.body(BodyExt::boxed(StreamBody::new(
                    first.chain(stream::pending()),
                )))
                .unwrap()
            }
        }
    })
    .await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["tail", "j-1", "--json", "--url", &stub.url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_str(&line).unwrap();
        seqs.push(event["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3], "every event once, in order");
    let seen = stub.seen();
    assert_eq!(seen[0].uri, "/jobs/j-1/events");
    assert_eq!(seen[0].last_event_id, None);
    assert_eq!(seen[1].last_event_id.as_deref(), Some("2"));
    // Ctrl-C ends it cleanly.
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains("connection lost (the server closed the stream); reconnecting in 50ms"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tail_of_every_job_passes_the_filter_and_position() {
    let stub = Stub::start(|_, _| {
        Response::builder()
            .status(401)
            .header("content-type", "application/json")
            .body(
                Full::new(Bytes::from(
                    r#"{"error": {"code": "unauthorized", "message": "a token is needed"}}"#,
                ))
                .boxed(),
            )
            .unwrap()
    })
    .await;
    let out = jobqueue(&[
        "tail",
        "--types",
        "job.failed,job.completed",
        "--after",
        "41",
        "--url",
        &stub.url(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: a token is needed (unauthorized, HTTP 401)\n"
    );
    let seen = stub.seen();
    assert_eq!(seen[0].uri, "/events?types=job.failed,job.completed");
    assert_eq!(seen[0].last_event_id.as_deref(), Some("41"));
}

#[tokio::test]
async fn pipelines_pause_and_resume() {
    let stub = Stub::start(|seen, _| match (seen.method.as_str(), seen.uri.as_str()) {
        ("GET", "/pipelines") => json_reply(
            200,
            &json!({"pipelines": [
                {"name": "build", "paused": false},
                {"name": "emails", "paused": true},
            ]}),
        ),
        ("POST", "/pipelines/build/pause") => json_reply(
            200,
            &json!({"pipeline": "build", "paused": true, "changed": true}),
        ),
        ("POST", "/pipelines/emails/pause") => json_reply(
            200,
            &json!({"pipeline": "emails", "paused": true, "changed": false}),
        ),
        ("POST", "/pipelines/emails/resume") => json_reply(
            200,
            &json!({"pipeline": "emails", "paused": false, "changed": true}),
        ),
        ("POST", "/pipelines/build/resume") => json_reply(
            200,
            &json!({"pipeline": "build", "paused": false, "changed": false}),
        ),
        ("POST", "/pipelines/a%20b/pause") => json_reply(
            404,
            &json!({"error": {"code": "not_found", "message": "pipeline \"a b\" not found"}}),
        ),
        _ => json_reply(500, &json!({"error": {"code": "internal", "message": "?"}})),
    })
    .await;
    let url = stub.url();
    let out = jobqueue(&["pipelines", "--url", &url]).await;
    assert_eq!(
        text(&out.stdout),
        "PIPELINE  STATE\nbuild     running\nemails    paused\n"
    );
    let out = jobqueue(&["pipelines", "--json", "--url", &url]).await;
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["pipelines"][1]["paused"], true);
    let out = jobqueue(&["pause", "build", "--url", &url]).await;
    assert_eq!(
        text(&out.stdout),
        "pipeline build paused: its queued jobs wait until it is resumed\n"
    );
    let out = jobqueue(&["pause", "emails", "--url", &url]).await;
    assert_eq!(text(&out.stdout), "pipeline emails was paused already\n");
    let out = jobqueue(&["resume", "emails", "--url", &url]).await;
    assert_eq!(text(&out.stdout), "pipeline emails resumed\n");
    let out = jobqueue(&["resume", "build", "--json", "--url", &url]).await;
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["changed"], false);
    let out = jobqueue(&["pause", "a b", "--url", &url]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: pipeline \"a b\" not found (not_found, HTTP 404)\n"
    );
    let seen: Vec<String> = stub
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert_eq!(seen[2], "POST /pipelines/build/pause");
}
