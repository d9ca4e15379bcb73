//! The API over real HTTP on loopback: every test starts a queue (in memory
//! or on an SQLite file, see [`both!`]), serves its [`Api`] on a free port,
//! and talks to it with a hyper client. Responses are validated against the
//! OpenAPI document's schemas as they arrive ([`assert_schema`]).

#![expect(
    clippy::unwrap_used,
    reason = "tests: an unexpected error is a failure"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jobqueue::core::{EventFilter, EventType, JobId};
use jobqueue::{JobQueue, JobQueueBuilder, PhaseError, Pipeline, WebhookConfig, phase_fn};
use jobqueue_http::{Api, ApiConfig, serve};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Defines each test once as `async fn name(backend: Backend)` and runs it
/// on the memory store and on an SQLite file.
macro_rules! both {
    ($(async fn $name:ident($b:ident: Backend) $body:block)*) => {
        $(async fn $name($b: Backend) $body)*

        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::Backend::Memory).await
                }
            )*
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::Backend::Sqlite).await
                }
            )*
        }
    };
}

mod auth;
mod axum_mount;
mod dashboard;
mod errors;
mod fuzz;
mod jobs;
mod metrics;
mod pipelines;
mod sse;
mod webhooks;

/// How long any wait in these tests may take before it is a failure.
const DEADLINE: Duration = Duration::from_secs(20);

/// The token of servers that have one.
const TOKEN: &str = "s3cret-token";

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Memory,
    Sqlite,
}

/// What a test's queue runs:
/// - `quick`: phases `a` and `b`, each reports progress and returns at once.
/// - `slow`: phase `wait` runs until the job is cancelled (or shut down).
/// - `flaky`: phase `once` fails permanently the first time it runs in this
///   server, then succeeds.
/// - `fail`: phase `boom` always fails permanently.
/// - `order`: typed (input `{"items": <u32>}`), phase `count`.
fn pipelines(builder: JobQueueBuilder, flaky_runs: Arc<AtomicUsize>) -> JobQueueBuilder {
    builder
        .pipeline(
            Pipeline::new("quick")
                .phase(phase_fn("a", |ctx| async move {
                    ctx.report(50, Some("half way"));
                    Ok::<_, PhaseError>(json!({"n": 1}))
                }))
                .phase(phase_fn("b", |_ctx| async move { Ok(json!("done")) })),
        )
        .pipeline(
            Pipeline::new("slow").phase(phase_fn("wait", |ctx| async move {
                ctx.report(10, Some("waiting"));
                ctx.cancelled().await;
                Err::<Value, _>(PhaseError::retryable("stopped"))
            })),
        )
        .pipeline(Pipeline::new("flaky").phase(phase_fn("once", move |_ctx| {
            let runs = flaky_runs.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(PhaseError::permanent("first run fails"))
                } else {
                    Ok(json!("second run works"))
                }
            }
        })))
        .pipeline(
            Pipeline::new("fail").phase(phase_fn("boom", |_ctx| async move {
                Err::<Value, _>(PhaseError::permanent("boom"))
            })),
        )
        .pipeline(
            Pipeline::typed::<Order>()
                .step("count", |_ctx, order: Order| async move {
                    Ok::<_, PhaseError>(order.items)
                })
                .build(),
        )
}

/// The input of the typed pipeline `order`: the API refuses inputs that do
/// not fit it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    items: u32,
}

impl jobqueue::JobInput for Order {
    const PIPELINE: &'static str = "order";
}

/// A queue served on a free loopback port.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) queue: JobQueue,
    pub(crate) api: Api,
    token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    client: Client<HttpConnector, Full<Bytes>>,
    _dir: tempfile::TempDir,
}

/// How to build a [`Server`].
pub(crate) struct Options {
    pub(crate) backend: Backend,
    pub(crate) config: ApiConfig,
    pub(crate) webhooks: Option<WebhookConfig>,
    pub(crate) keepalive: Option<Duration>,
}

impl Options {
    pub(crate) fn new(backend: Backend) -> Self {
        Self {
            backend,
            config: ApiConfig::default(),
            webhooks: None,
            keepalive: None,
        }
    }

    pub(crate) fn token(mut self) -> Self {
        self.config.token = Some(TOKEN.into());
        self
    }

    pub(crate) async fn start(self) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = pipelines(JobQueue::builder(), Arc::new(AtomicUsize::new(0)))
            .shutdown_timeout(Duration::from_millis(200))
            .stop_grace(Duration::from_secs(2));
        builder = match self.backend {
            Backend::Memory => builder.memory(),
            Backend::Sqlite => builder.sqlite(dir.path().join("jobs.db")),
        };
        if let Some(webhooks) = self.webhooks {
            builder = builder.webhooks(webhooks);
        }
        let queue = builder.start().await.unwrap();
        let mut api = Api::new(queue.clone(), self.config.clone());
        if let Some(every) = self.keepalive {
            api = api.sse_keepalive(every);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, api.clone(), async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            queue,
            api,
            token: self.config.token,
            shutdown: Some(tx),
            task: Some(task),
            client: Client::builder(TokioExecutor::new()).build_http(),
            _dir: dir,
        }
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    /// Checks the status and, for errors, the error shape and code; returns
    /// the JSON body.
    #[track_caller]
    pub(crate) fn expect(&self, status: u16, code: Option<&str>) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        if status == 204 {
            assert!(self.body.is_empty());
            return Value::Null;
        }
        let body = self.json();
        if let Some(code) = code {
            assert_error(&body, code);
        }
        body
    }
}

/// `body` is the error shape with `code`.
#[track_caller]
pub(crate) fn assert_error(body: &Value, code: &str) {
    assert_schema("Error", body);
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        !body["error"]["message"].as_str().unwrap().is_empty(),
        "{body}"
    );
}

impl Server {
    pub(crate) async fn start(backend: Backend) -> Self {
        Options::new(backend).start().await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request as it is (no token added).
    pub(crate) async fn raw(&self, req: Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(DEADLINE, self.client.request(req))
            .await
            .unwrap()
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A request with the server's token, if it has one.
    pub(crate) fn request(&self, method: Method, path: &str) -> http::request::Builder {
        let builder = Request::builder().method(method).uri(self.url(path));
        match &self.token {
            Some(t) => builder.header("authorization", format!("Bearer {t}")),
            None => builder,
        }
    }

    pub(crate) async fn send(&self, method: Method, path: &str, body: Option<&str>) -> Reply {
        let mut builder = self.request(method, path);
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
        self.raw(builder.body(body).unwrap()).await
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Some(&body.to_string())).await
    }

    /// Enqueues through the API; returns the job's JSON.
    pub(crate) async fn enqueue(&self, job: Value) -> Value {
        let job = self.post("/jobs", &job).await.expect(201, None);
        assert_schema("Job", &job);
        job
    }

    /// Opens an event stream.
    pub(crate) async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut builder = self.request(Method::GET, path);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Full::new(Bytes::new())).unwrap();
        let response = tokio::time::timeout(DEADLINE, self.client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{response:?}"
        );
        SseClient {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// Waits until `job` has an event of type `ty` (replayed from the start,
    /// so it cannot be missed); returns that event's sequence number.
    pub(crate) async fn wait_for(&self, job: &str, ty: EventType) -> u64 {
        let filter = EventFilter {
            job: Some(job.parse::<JobId>().unwrap()),
            types: vec![ty],
        };
        let mut events = self.queue.subscribe_after(0, filter);
        let event = tokio::time::timeout(DEADLINE, events.next())
            .await
            .unwrap_or_else(|_| panic!("no {ty} for job {job} in time"))
            .unwrap()
            .unwrap();
        event.seq
    }

    /// Stops the server (as a signal would) and then the queue.
    pub(crate) async fn stop(mut self) {
        self.stop_serving().await;
        self.queue.shutdown().await;
    }

    /// Stops the server only; the queue keeps running.
    pub(crate) async fn stop_serving(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("serve() returns after shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

/// What `queue` holds: every job (as the API shows it) and the last event
/// sequence number. A refused request must leave both as they were.
pub(crate) async fn snapshot(queue: &JobQueue) -> (Vec<Value>, u64) {
    let page = queue
        .list(jobqueue::JobFilter {
            limit: 1000,
            ..jobqueue::JobFilter::default()
        })
        .await
        .unwrap();
    let jobs = page
        .jobs
        .iter()
        .map(jobqueue_http::wire::job_json)
        .collect();
    (jobs, queue.store().last_seq().await.unwrap())
}

/// One Server-Sent Events frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Frame {
    Retry(String),
    Comment(String),
    Event { id: u64, event: String, data: Value },
}

/// Reads frames off an event stream.
pub(crate) struct SseClient {
    body: Incoming,
    buffer: String,
}

impl SseClient {
    /// The next frame, or `None` when the stream ended; fails after the
    /// deadline.
    pub(crate) async fn frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(DEADLINE, self.frame_now())
            .await
            .expect("an SSE frame in time")
    }

    async fn frame_now(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                return Some(parse_frame(text.trim_end_matches('\n')));
            }
            let frame = self.body.frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next event frame, skipping `retry` and comments.
    pub(crate) async fn event(&mut self) -> (u64, String, Value) {
        loop {
            match self.frame().await.expect("the stream goes on") {
                Frame::Event { id, event, data } => return (id, event, data),
                _ => continue,
            }
        }
    }
}

fn parse_frame(text: &str) -> Frame {
    if let Some(comment) = text.strip_prefix(':') {
        return Frame::Comment(comment.trim().to_owned());
    }
    if let Some(retry) = text.strip_prefix("retry: ") {
        return Frame::Retry(retry.to_owned());
    }
    let mut fields = HashMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once(": ").unwrap();
        assert!(fields.insert(k, v).is_none(), "{k} twice in {text:?}");
    }
    assert_eq!(fields.len(), 3, "{text:?}");
    let data: Value = serde_json::from_str(fields["data"]).unwrap();
    assert_schema("Event", &data);
    let id: u64 = fields["id"].parse().unwrap();
    assert_eq!(data["seq"], id);
    assert_eq!(data["type"], fields["event"]);
    Frame::Event {
        id,
        event: fields["event"].to_owned(),
        data,
    }
}

/// Validators for the OpenAPI document's schemas, by name.
fn validators() -> &'static HashMap<String, jsonschema::Validator> {
    static VALIDATORS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let doc = jobqueue_http::openapi::document();
        let components = doc["components"].clone();
        components["schemas"]
            .as_object()
            .unwrap()
            .keys()
            .map(|name| {
                // The schema refers to its siblings as
                // `#/components/schemas/...`: give it the same root.
                let schema = json!({
                    "$ref": format!("#/components/schemas/{name}"),
                    "components": components,
                });
                let validator = jsonschema::draft202012::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("schema {name}: {e}"));
                (name.clone(), validator)
            })
            .collect()
    })
}

/// `value` is valid against the document's schema `name`.
#[track_caller]
pub(crate) fn assert_schema(name: &str, value: &Value) {
    let validator = validators()
        .get(name)
        .unwrap_or_else(|| panic!("no schema {name}"));
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not a valid {name}: {errors:?}\n{value:#}"
    );
}

#[test]
fn schemas_refuse_what_they_should() {
    // The validators are strict: a missing or extra member is an error.
    let error = json!({"error": {"code": "invalid", "message": "m"}});
    assert!(validators()["Error"].is_valid(&error));
    assert!(!validators()["Error"].is_valid(&json!({"error": {"code": "invalid"}})));
    assert!(!validators()["Error"].is_valid(&json!({"error": {"code": "nope", "message": "m"}})));
    assert!(!validators()["Health"].is_valid(&json!({"status": "ok", "x": 1})));
    let event = json!({"seq": 1, "type": "job.cancelled", "job_id": JobId::new().to_string(),
                       "pipeline": "p", "at": "2030-01-01T00:00:00Z", "data": {}});
    assert!(validators()["Event"].is_valid(&event));
    let mut wrong = event.clone();
    wrong["data"] = json!({"attempt": 1});
    assert!(!validators()["Event"].is_valid(&wrong));
    let mut bad_time = event;
    bad_time["at"] = json!("yesterday");
    assert!(
        !validators()["Event"].is_valid(&bad_time),
        "formats are checked"
    );
}
