//! `jobqueue-events`: the edge where jobqueue's events leave the process.
//!
//! The store appends an [`Event`](jobqueue_core::Event) with every state
//! transition and hands it, after the commit, to an
//! [`EventSink`](jobqueue_core::EventSink). This crate provides that sink and
//! everything downstream of it:
//!
//! - [`wire`]: the one JSON shape of an event (`docs/events.md`), used by SSE
//!   `data:` lines and webhook bodies alike.
//! - [`bus`]: [`EventBus`], the in-process fan-out. Subscribers get every
//!   event exactly once and in order; one that lags is resynced from the
//!   store, and never slows the publisher.
//! - [`sse`]: Server-Sent Events frames and [`sse_stream`], replay from the
//!   store after `Last-Event-ID` followed by live events, with no gap and no
//!   duplicate, ready to serve as a hyper body.
//! - [`webhook`]: configuration, Standard Webhooks signing, URL checks, and
//!   the [`Dispatcher`] that works the store's durable outbox.
//!
//! Where it sits: above `jobqueue-core` (whose [`JobStore`](jobqueue_core::JobStore)
//! it reads) and beside `jobqueue-runtime`; the façade `jobqueue` wires the
//! bus into the store and spawns the dispatcher, and the HTTP server serves
//! the SSE streams.
//!
//! Architecture Invariant: nothing here writes job state. The store writes
//! deliveries in the same step as their events (the outbox); this crate only
//! sends them and records each attempt's outcome.

pub mod bus;
pub mod sse;
pub mod tail;
pub mod webhook;
pub mod wire;

pub use bus::{EventBus, Subscription};
pub use sse::{SseOptions, after_from_request, sse_body, sse_stream};
pub use tail::Tail;
pub use webhook::{
    Dispatcher, DispatcherHandle, Endpoint, WebhookConfig, WebhookError, check_webhook_url,
    check_webhook_url_resolved,
};
pub use wire::{event_json, event_json_string};
