//! Random and malformed requests thrown at the service in-process (the tower
//! `Service`, no network): methods, paths, query strings, headers and
//! bodies, many of them nearly right. For every one: no panic (a panic
//! would be a 500), every error in the `{"error": {"code", "message"}}`
//! shape with the status of its code, and a refused request leaves the queue
//! as it was (the same jobs, no new event).
//!
//! The queue holds jobs in several states. It runs one pipeline, `p`, whose
//! one slot is taken by a job that runs until the end, so nothing changes
//! by itself: every change is a request's doing.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use jobqueue::core::{EventFilter, JobId};
use jobqueue::{EventType, JobQueue, NewJob, PhaseError, Pipeline, phase_fn};
use jobqueue_http::{Api, ApiConfig};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower_service::Service as _;

const TOKEN: &str = "t0k";

struct World {
    rt: tokio::runtime::Runtime,
    queue: JobQueue,
    api: Api,
    /// Jobs requests may name (not the one that holds the slot).
    ids: Vec<String>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (queue, ids) = rt.block_on(async {
            let queue = JobQueue::builder()
                .memory()
                .lease(Duration::from_secs(3600))
                .pipeline(Pipeline::new("p").concurrency(1).phase(phase_fn(
                    "only",
                    |ctx| async move {
                        ctx.cancelled().await;
                        Err::<Value, _>(PhaseError::retryable("stopped"))
                    },
                )))
                .start()
                .await
                .unwrap();
            let blocker = queue.enqueue("p", &json!("blocker")).await.unwrap();
            let mut started = queue.subscribe_after(
                0,
                EventFilter {
                    job: Some(blocker.id),
                    types: vec![EventType::PhaseStarted],
                },
            );
            use futures_util::StreamExt as _;
            tokio::time::timeout(Duration::from_secs(20), started.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let mut ids = Vec::new();
            for i in 0..4 {
                let job = queue
                    .enqueue_job(NewJob::new("p").input(json!(i)).unique_key(format!("k{i}")))
                    .await
                    .unwrap();
                if i % 2 == 1 {
                    queue.cancel(job.id).await.unwrap();
                }
                ids.push(job.id.to_string());
            }
            (queue, ids)
        });
        let api = rt.block_on(async {
            Api::new(
                queue.clone(),
                ApiConfig {
                    token: Some(TOKEN.into()),
                    max_body: 2048,
                },
            )
        });
        World {
            rt,
            queue,
            api,
            ids,
        }
    })
}

/// A random request, as parts that may not make a valid request.
#[derive(Debug, Clone)]
struct Fuzzed {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::GET),
        4 => Just(Method::POST),
        2 => Just(Method::DELETE),
        1 => Just(Method::PUT),
        1 => Just(Method::PATCH),
        1 => Just(Method::HEAD),
        1 => Just(Method::OPTIONS),
        1 => Just(Method::from_bytes(b"BREW").unwrap()),
    ]
}

/// An id segment: a job of the world, one that does not exist, or junk.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0usize..4).prop_map(|i| world().ids[i].clone()),
        1 => Just(JobId::new().to_string()),
        1 => "[a-zA-Z0-9%._~-]{0,40}",
        1 => Just("batch".to_owned()),
    ]
}

/// A path, with the method its route answers.
fn path() -> impl Strategy<Value = (Method, String)> {
    let fixed = |method: Method, path: &str| Just((method, path.to_owned()));
    let with_id = |method: Method, pattern: &'static str| {
        id().prop_map(move |id| (method.clone(), pattern.replace("{id}", &id)))
    };
    prop_oneof![
        1 => fixed(Method::GET, "/"),
        1 => fixed(Method::GET, "/health"),
        1 => fixed(Method::GET, "/metrics"),
        1 => fixed(Method::GET, "/openapi.json"),
        1 => fixed(Method::GET, "/stats"),
        1 => with_id(Method::GET, "/assets/{id}"),
        1 => fixed(Method::GET, "/assets/app.js"),
        5 => fixed(Method::POST, "/jobs"),
        2 => fixed(Method::GET, "/jobs"),
        4 => fixed(Method::POST, "/jobs/batch"),
        2 => with_id(Method::GET, "/jobs/{id}"),
        2 => with_id(Method::DELETE, "/jobs/{id}"),
        2 => with_id(Method::POST, "/jobs/{id}/cancel"),
        2 => with_id(Method::POST, "/jobs/{id}/retry"),
        1 => with_id(Method::GET, "/jobs/{id}/events"),
        1 => fixed(Method::GET, "/events"),
        1 => fixed(Method::GET, "/webhooks/deliveries"),
        2 => "/[a-z/%.0-9]{0,30}".prop_map(|p| (Method::GET, p)),
    ]
}

fn query() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        Just("status"),
        Just("pipeline"),
        Just("limit"),
        Just("cursor"),
        Just("token"),
        Just("after"),
        Just("types"),
        Just("job"),
        Just("x"),
    ];
    let value = prop_oneof![
        3 => "[a-z0-9,._%+-]{0,16}",
        1 => Just(TOKEN.to_owned()),
        1 => Just("queued,cancelled".to_owned()),
        1 => Just("job.created,job.nope".to_owned()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => Just("18446744073709551616".to_owned()),
    ];
    prop::collection::vec((key.prop_map(str::to_owned), value), 0..4)
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let auth = prop_oneof![
        2 => Just(None),
        12 => Just(Some(format!("Bearer {TOKEN}"))),
        1 => Just(Some("Bearer nope".to_owned())),
        1 => "[ -~]{0,20}".prop_map(Some),
    ];
    let last_event_id = prop_oneof![
        3 => Just(None),
        1 => "[0-9a-z-]{0,24}".prop_map(Some),
    ];
    let length = prop_oneof![
        4 => Just(None),
        1 => "[0-9]{1,22}".prop_map(Some),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("text/plain".to_owned())),
    ];
    (auth, last_event_id, length, content_type).prop_map(|(a, l, n, c)| {
        let mut out = Vec::new();
        out.extend(a.map(|v| ("authorization", v)));
        out.extend(l.map(|v| ("last-event-id", v)));
        out.extend(n.map(|v| ("content-length", v)));
        out.extend(c.map(|v| ("content-type", v)));
        out
    })
}

/// Any JSON value, small.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A job object that is nearly right: known members with values of any type.
fn job_object() -> impl Strategy<Value = Value> {
    let member = prop_oneof![
        Just("pipeline"),
        Just("input"),
        Just("priority"),
        Just("run_at"),
        Just("unique_key"),
        Just("max_attempts"),
        Just("webhook_url"),
        Just("phases"),
        Just("extra"),
    ];
    let value = prop_oneof![
        2 => Just(json!("p")),
        1 => Just(json!("k1")),
        1 => Just(json!("2999-01-01T00:00:00Z")),
        1 => Just(json!("https://example.com/hook")),
        1 => Just(json!(3)),
        1 => Just(json!(0)),
        1 => Just(json!(-1)),
        1 => Just(json!(4_294_967_296_u64)),
        2 => json_value(),
    ];
    (
        prop::collection::vec((member, value), 0..6),
        prop_oneof![Just(Some("p")), Just(Some("nope")), Just(None)],
    )
        .prop_map(|(members, pipeline)| {
            let mut object = serde_json::Map::new();
            if let Some(p) = pipeline {
                object.insert("pipeline".into(), json!(p));
            }
            for (k, v) in members {
                object.insert(k.to_owned(), v);
            }
            Value::Object(object)
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        4 => job_object().prop_map(|v| v.to_string().into_bytes()),
        3 => prop::collection::vec(job_object(), 0..4)
            .prop_map(|jobs| json!({"jobs": jobs}).to_string().into_bytes()),
        1 => job_object().prop_map(|v| {
            // Cut short: not JSON any more.
            let text = v.to_string();
            text.as_bytes()[..text.len() / 2].to_vec()
        }),
        1 => Just(vec![b'['; 3000]),
    ]
}

fn fuzzed() -> impl Strategy<Value = Fuzzed> {
    // Mostly the route's own method, so most requests get past routing.
    let request_line =
        (path(), method(), 0..4u8).prop_map(|((route_method, path), other, pick)| {
            let method = if pick == 0 { other } else { route_method };
            (method, path)
        });
    (request_line, query(), headers(), body()).prop_map(|((method, path), query, headers, body)| {
        Fuzzed {
            method,
            path,
            query,
            headers,
            body,
        }
    })
}

impl Fuzzed {
    /// The request, or `None` when its parts make no valid URI.
    fn request(&self) -> Option<Request<Full<Bytes>>> {
        let mut uri = self.path.clone();
        if !self.query.is_empty() {
            let pairs: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            uri.push('?');
            uri.push_str(&pairs.join("&"));
        }
        let uri = Uri::try_from(uri).ok()?;
        let mut builder = Request::builder().method(self.method.clone()).uri(uri);
        for (k, v) in &self.headers {
            builder = builder.header(*k, v.as_str());
        }
        builder.body(Full::new(Bytes::from(self.body.clone()))).ok()
    }
}

/// The status of each error code.
fn status_of(code: &str) -> Option<u16> {
    Some(match code {
        "bad_request" => 400,
        "unauthorized" => 401,
        "not_found" => 404,
        "method_not_allowed" => 405,
        "conflict" | "duplicate" => 409,
        "payload_too_large" => 413,
        "invalid" => 422,
        "internal" => 500,
        "unavailable" => 503,
        _ => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_get_clean_answers_and_refusals_change_nothing(
        requests in prop::collection::vec(fuzzed(), 1..4)
    ) {
        let w = world();
        w.rt.block_on(async {
            for fuzzed in &requests {
                let Some(req) = fuzzed.request() else { continue };
                let before = crate::snapshot(&w.queue).await;
                let mut api = w.api.clone();
                let response = tokio::time::timeout(Duration::from_secs(10), api.call(req))
                    .await
                    .expect("an answer in time")
                    .unwrap();
                let status = response.status().as_u16();
                prop_assert_ne!(status, 500, "{:?}", fuzzed);
                let event_stream = response
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v == "text/event-stream");
                if event_stream {
                    prop_assert_eq!(status, 200);
                    continue;
                }
                let content_type = response
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                if status >= 400 {
                    prop_assert_eq!(content_type.as_deref(), Some("application/json"));
                    let body: Value = serde_json::from_slice(&bytes).unwrap();
                    let code = body["error"]["code"].as_str().unwrap_or_default();
                    prop_assert_eq!(status_of(code), Some(status), "{} for {:?}", body, fuzzed);
                    let message = body["error"]["message"].as_str().unwrap_or_default();
                    prop_assert!(!message.is_empty(), "{}", body);
                    crate::assert_schema("Error", &body);
                    prop_assert_eq!(crate::snapshot(&w.queue).await, before, "refused {:?} changed the queue", fuzzed);
                } else if content_type.as_deref() == Some("application/json") {
                    prop_assert!(serde_json::from_slice::<Value>(&bytes).is_ok());
                }
            }
            Ok(())
        })?;
    }
}
