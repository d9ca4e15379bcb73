//! A webhook receiver on loopback for the integration tests: real HTTP
//! (hyper), every request's signature checked by the independent
//! `standardwebhooks` crate, answers scripted per try.

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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its `webhook-id`.
    pub id: String,
    /// Its JSON body.
    pub body: Value,
    /// What the receiver answered.
    pub status: u16,
    /// Whether `standardwebhooks` accepted its signature.
    pub verified: bool,
}

/// A receiver that answers the `n`th try of each webhook id with
/// `script(n)` (0-based).
#[derive(Debug)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request, in arrival order.
    pub requests: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts on a fresh loopback port.
    pub async fn start(
        secret: &str,
        script: impl Fn(usize) -> u16 + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, requests) = mpsc::unbounded_channel();
        let verifier = Arc::new(standardwebhooks::Webhook::new(secret).expect("valid secret"));
        let script = Arc::new(script);
        let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, verifier, script, tries) =
                    (tx.clone(), verifier.clone(), script.clone(), tries.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (tx, verifier, script, tries) =
                        (tx.clone(), verifier.clone(), script.clone(), tries.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let verified = verifier.verify(&body, &parts.headers).is_ok();
                        let id = parts
                            .headers
                            .get("webhook-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let n = {
                            let mut tries = tries.lock().unwrap_or_else(|e| e.into_inner());
                            let n = tries.entry(id.clone()).or_default();
                            *n += 1;
                            *n - 1
                        };
                        let status = script(n);
                        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let _ = tx.send(Received {
                            id,
                            body,
                            status,
                            verified,
                        });
                        let response = Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()));
                        Ok::<_, Infallible>(response.unwrap_or_default())
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
            task,
        }
    }

    /// The URL of its `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
