//! `jobqueue-http`: the REST + Server-Sent Events API of a [`JobQueue`].
//!
//! Where it sits: on top of the façade `jobqueue`, below the `jobqueue`
//! binary. It turns HTTP requests into calls on a running [`JobQueue`]
//! (enqueue, list, counts, cancel, retry, delete, event streams, webhook
//! deliveries, health, metrics) and encodes the answers as the JSON that
//! clients of the server rely on. It also serves the dashboard at `GET /`:
//! a live page of plain HTML, CSS and JavaScript embedded in the binary,
//! which uses the same API. The core types stay free of wire formats: this crate is
//! where a job becomes JSON ([`wire`]).
//!
//! [`Api`] is the whole API as one value. It is a
//! [`hyper::service::Service`] (serve it on a connection yourself, or with
//! [`serve`]) and a [`tower_service::Service`] for any request body, so it
//! mounts in axum or any tower stack:
//!
//! ```no_run
//! use jobqueue::JobQueue;
//! use jobqueue_http::{Api, ApiConfig, serve};
//!
//! # async fn demo(queue: JobQueue) -> std::io::Result<()> {
//! let api = Api::new(queue, ApiConfig { token: Some("s3cret".into()), ..ApiConfig::default() });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7700").await?;
//! serve(listener, api, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! Mounted in axum (`examples/axum.rs` runs it):
//!
//! ```no_run
//! # fn demo(api: jobqueue_http::Api) {
//! let app: axum::Router = axum::Router::new()
//!     .route("/hello", axum::routing::get(|| async { "hello" }))
//!     .nest_service("/queue", api);
//! # }
//! ```
//!
//! The routes, their answers and the error shape are described for users in
//! `docs/http-api.md`; [`openapi::document`] is the same API as an OpenAPI
//! 3.1 document (`docs/openapi.json`, also served at `GET /openapi.json`).
//!
//! Architecture Invariant: a request the API refuses changes nothing. Every
//! check that can refuse runs before the one call that writes, and every
//! refusal is a JSON error with a status and a code; no input panics.
//!
//! [`JobQueue`]: jobqueue::JobQueue

mod api;
mod config;
mod dashboard;
mod error;
mod handlers;
pub mod metrics;
pub mod openapi;
mod query;
mod routes;
mod serve;
pub mod wire;

pub use api::{Api, ApiBody, ResponseFuture};
pub use config::{ApiConfig, DEFAULT_MAX_BODY};
pub use serve::serve;
