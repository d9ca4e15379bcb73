//! Shared test helpers: a scripted webhook receiver, store set-up, waiting.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jobqueue_core::{Delivery, DeliveryStatus, EventSink, JobStore, MemoryStore};
use jobqueue_events::EventBus;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub(crate) const JOB_SECRET: &str = "whsec_c2VjcmV0LWZvci1qb2Itd2ViaG9va3M=";

/// A generous deadline: CI machines are slow, but a hang must fail.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test with `what` after [`DEADLINE`].
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A store (with its concrete type for direct driving) and a bus that is its sink.
pub(crate) fn store_and_bus(capacity: usize) -> (Arc<dyn JobStore>, EventBus) {
    let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
    let bus = EventBus::new(capacity);
    store.set_event_sink(Arc::new(bus.clone()) as Arc<dyn EventSink>);
    (store, bus)
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) id: String,
    pub(crate) body: Value,
    /// What the receiver answered.
    pub(crate) status: u16,
    /// When it arrived.
    pub(crate) at: Instant,
    /// What `standardwebhooks` said of its signature.
    pub(crate) verified: Result<(), String>,
}

/// What the script sees of a request.
pub(crate) struct Ask<'a> {
    /// The request's `webhook-id`.
    #[expect(dead_code, reason = "scripts may tell deliveries apart; none does yet")]
    pub(crate) id: &'a str,
    /// Requests with this id before this one.
    pub(crate) earlier_tries: usize,
}

type Script = dyn Fn(&Ask<'_>) -> (u16, Vec<(&'static str, String)>) + Send + Sync;

/// A webhook receiver on loopback. Every request must carry a signature that
/// `standardwebhooks` accepts with `secret`; one that does not fails the test.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    pub(crate) requests: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts on a fresh port.
    pub(crate) async fn start(
        secret: &str,
        script: impl Fn(&Ask<'_>) -> (u16, Vec<(&'static str, String)>) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, secret, script)
    }

    /// Starts on `listener`.
    pub(crate) fn on(
        listener: TcpListener,
        secret: &str,
        script: impl Fn(&Ask<'_>) -> (u16, Vec<(&'static str, String)>) + Send + Sync + 'static,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let verifier = Arc::new(standardwebhooks::Webhook::new(secret).unwrap());
        let script: Arc<Script> = Arc::new(script);
        let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (tx, verifier, script, tries) =
                    (tx.clone(), verifier.clone(), script.clone(), tries.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (tx, verifier, script, tries) =
                        (tx.clone(), verifier.clone(), script.clone(), tries.clone());
                    async move {
                        let at = Instant::now();
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let verified = verifier
                            .verify(&body, &parts.headers)
                            .map_err(|e| format!("{e:?}"));
                        assert_eq!(parts.method, hyper::Method::POST);
                        assert_eq!(parts.headers["content-type"], "application/json");
                        let id = parts.headers["webhook-id"].to_str().unwrap().to_owned();
                        let earlier_tries = {
                            let mut tries = tries.lock().unwrap();
                            let n = tries.entry(id.clone()).or_default();
                            *n += 1;
                            *n - 1
                        };
                        let (status, headers) = script(&Ask {
                            id: &id,
                            earlier_tries,
                        });
                        let body: Value = serde_json::from_slice(&body).unwrap();
                        let _ = tx.send(Received {
                            id,
                            body,
                            status,
                            at,
                            verified,
                        });
                        let mut response = Response::builder().status(status);
                        for (name, value) in headers {
                            response = response.header(name, value);
                        }
                        Ok::<_, Infallible>(response.body(Full::new(Bytes::new())).unwrap())
                    }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// The next request, within the deadline.
    pub(crate) async fn next(&mut self) -> Received {
        within("a webhook request", self.requests.recv())
            .await
            .expect("receiver is running")
    }

    /// Every request received so far, without waiting.
    pub(crate) fn drain(&mut self) -> Vec<Received> {
        let mut all = Vec::new();
        while let Ok(r) = self.requests.try_recv() {
            all.push(r);
        }
        all
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Aborting the accept loop drops the listener and every connection.
        self.task.abort();
    }
}

/// Waits on `attempts` until `done` holds for the deliveries seen so far
/// (latest row per delivery), and returns them.
pub(crate) async fn wait_for_deliveries(
    attempts: &mut broadcast::Receiver<Delivery>,
    what: &str,
    done: impl Fn(&HashMap<String, Delivery>) -> bool,
) -> HashMap<String, Delivery> {
    let mut seen: HashMap<String, Delivery> = HashMap::new();
    within(what, async {
        while !done(&seen) {
            let row = attempts.recv().await.expect("attempts keep coming");
            seen.insert(row.id.to_string(), row);
        }
    })
    .await;
    seen
}

/// Whether `n` deliveries ended, all in `status`.
pub(crate) fn all_ended(
    seen: &HashMap<String, Delivery>,
    n: usize,
    status: DeliveryStatus,
) -> bool {
    seen.len() == n && seen.values().all(|d| d.status == status)
}
