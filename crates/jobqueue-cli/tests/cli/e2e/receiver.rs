//! A webhook receiver on loopback: a small hyper server that checks each
//! request's signature with the independent `standardwebhooks` crate (the
//! secret chosen by the request's path), and answers as a test scripts it,
//! possibly holding an answer until the test opens a gate.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::support::DEADLINE;

/// How the receiver answers one try.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    /// At once, with this status.
    Now(u16),
    /// With this status, once the gate is open.
    AfterGate(u16),
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// The request's path.
    pub(crate) path: String,
    /// Its `webhook-id`.
    pub(crate) id: String,
    /// Its body, as JSON.
    pub(crate) body: Value,
    /// Which try of this `webhook-id` it is, from 0.
    pub(crate) try_n: usize,
    /// Why `standardwebhooks` refused it, if it did (checked by [`Receiver::next`]).
    refused: Option<String>,
}

type Script = dyn Fn(&str, &Value, usize) -> Answer + Send + Sync;

/// The receiver; dropping it stops it.
pub(crate) struct Receiver {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Received>,
    gate: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts on a free loopback port. `secrets` maps a path to the secret
    /// its requests are signed with; a request to another path, or whose
    /// signature `standardwebhooks` refuses, fails the test. `script`
    /// answers each try (of a path, an event body, the try's number).
    pub(crate) async fn start(
        secrets: &[(&str, &str)],
        script: impl Fn(&str, &Value, usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let verifiers: Arc<HashMap<String, standardwebhooks::Webhook>> = Arc::new(
            secrets
                .iter()
                .map(|(path, secret)| {
                    (
                        (*path).to_owned(),
                        standardwebhooks::Webhook::new(secret).unwrap(),
                    )
                })
                .collect(),
        );
        let script: Arc<Script> = Arc::new(script);
        let (tx, requests) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(false);
        let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (verifiers, script, tx, gate_rx, tries) = (
                    verifiers.clone(),
                    script.clone(),
                    tx.clone(),
                    gate_rx.clone(),
                    tries.clone(),
                );
                let service = service_fn(move |req: Request<Incoming>| {
                    let (verifiers, script, tx, mut gate_rx, tries) = (
                        verifiers.clone(),
                        script.clone(),
                        tx.clone(),
                        gate_rx.clone(),
                        tries.clone(),
                    );
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let path = parts.uri.path().to_owned();
                        let refused = match verifiers.get(&path) {
                            None => Some(format!("no secret for the path {path}")),
                            Some(v) => v
                                .verify(&body, &parts.headers)
                                .err()
                                .map(|e| format!("{e:?}: {:?}", parts.headers)),
                        };
                        let id = parts
                            .headers
                            .get("webhook-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let try_n = {
                            let mut tries = tries.lock().unwrap();
                            let n = tries.entry(id.clone()).or_default();
                            *n += 1;
                            *n - 1
                        };
                        let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let answer = script(&path, &body, try_n);
                        let _ = tx.send(Received {
                            path,
                            id,
                            body,
                            try_n,
                            refused,
                        });
                        let status = match answer {
                            Answer::Now(status) => status,
                            Answer::AfterGate(status) => {
                                let _ = gate_rx.wait_for(|open| *open).await;
                                status
                            }
                        };
                        let response = Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            gate,
            task,
        }
    }

    /// The URL of `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Lets the answers held by [`Answer::AfterGate`] go (and every later one).
    pub(crate) fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// The next request, within the deadline; its signature must be good.
    pub(crate) async fn next(&mut self) -> Received {
        let received = tokio::time::timeout(DEADLINE, self.requests.recv())
            .await
            .expect("no webhook request before the deadline")
            .unwrap();
        if let Some(why) = &received.refused {
            panic!("a webhook request standardwebhooks refuses: {why}");
        }
        received
    }

    /// Requests until `done` holds of all received so far; returns them all.
    pub(crate) async fn until(&mut self, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let mut all = Vec::new();
        while !done(&all) {
            all.push(self.next().await);
        }
        all
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
