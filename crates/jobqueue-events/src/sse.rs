//! Server-Sent Events (see `docs/events.md`): frames, and streams that replay from
//! the store after `Last-Event-ID` and then follow live events.
//!
//! A stream starts with `retry: 2000`, then sends one frame per event:
//!
//! ```text
//! id: 42
//! event: job.phase.completed
//! data: {"seq":42,"type":"job.phase.completed",...}
//!
//! ```
//!
//! and a `: keepalive` comment every [`SseOptions::keepalive`] (15 s by
//! default), whether events flow or not.
//!
//! # Serving with hyper
//! ```no_run
//! # use std::sync::Arc;
//! # use jobqueue_core::{EventFilter, JobStore};
//! # use jobqueue_events::{EventBus, after_from_request, sse};
//! # fn handle(req: hyper::Request<hyper::body::Incoming>, store: Arc<dyn JobStore>, bus: &EventBus) {
//! let after = match after_from_request(req.headers(), req.uri().query()) {
//!     Ok(after) => after,
//!     Err(e) => return, // answer 400 with e.to_string()
//! };
//! let stream = sse::sse_stream(store, bus, after, EventFilter::default());
//! let response = sse::sse_response(stream); // hyper::Response with a streaming body
//! # }
//! ```
//!
//! # Pitfalls
//! - A client that stops reading holds nothing but its subscription: the
//!   stream is pulled by the connection, and the bus resyncs it from the store
//!   once it reads again.
//! - A store error while replaying ends the stream (it is logged); the client
//!   reconnects after the `retry` delay with `Last-Event-ID` and loses nothing.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderValue};
use jobqueue_core::{Event, EventFilter, EventType, JobStore, UnknownName};
use tokio::time::{Interval, MissedTickBehavior};

use crate::bus::{EventBus, Subscription};
use crate::wire::event_json_string;

/// The first bytes of every stream: clients reconnect after 2 s.
pub const RETRY_FRAME: &str = "retry: 2000\n\n";

/// The comment sent to keep idle connections open.
pub const KEEPALIVE_FRAME: &str = ": keepalive\n\n";

/// The media type of an SSE response.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// How often a stream sends [`KEEPALIVE_FRAME`] by default.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// Options of an SSE stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseOptions {
    /// Send a keep-alive comment this often (at most 15 s by the contract).
    pub keepalive: Duration,
}

impl Default for SseOptions {
    fn default() -> Self {
        Self {
            keepalive: DEFAULT_KEEPALIVE,
        }
    }
}

/// One event as an SSE frame: `id: <seq>\nevent: <type>\ndata: <json>\n\n`.
pub fn encode_event(event: &Event) -> Bytes {
    let json = event_json_string(event);
    let ty = event.event_type().as_str();
    let mut out = String::with_capacity(json.len() + ty.len() + 40);
    out.push_str("id: ");
    out.push_str(&event.seq.to_string());
    out.push_str("\nevent: ");
    out.push_str(ty);
    out.push_str("\ndata: ");
    out.push_str(&json);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// The SSE byte stream of every event after `after` that passes `filter`:
/// replayed from `store`, then live from `bus`, with no gap and no duplicate.
/// Keep-alives every 15 s. `store` must be the store `bus` is the sink of.
pub fn sse_stream(
    store: Arc<dyn JobStore>,
    bus: &EventBus,
    after: u64,
    filter: EventFilter,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + use<> {
    sse_stream_with(store, bus, after, filter, &SseOptions::default())
}

/// [`sse_stream`] with options.
pub fn sse_stream_with(
    store: Arc<dyn JobStore>,
    bus: &EventBus,
    after: u64,
    filter: EventFilter,
    options: &SseOptions,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + use<> {
    // The subscription is taken here, before the stream is first polled, so
    // nothing committed from this call on can be missed.
    let events = bus.subscribe_after(store, after, filter);
    let state = SseState {
        started: false,
        events,
        keepalive: options.keepalive.max(Duration::from_millis(1)),
        ticker: None,
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        let bytes = st.next().await?;
        Some((Ok(bytes), st))
    })
}

struct SseState {
    started: bool,
    events: Subscription,
    keepalive: Duration,
    /// Made on the first poll, inside the runtime.
    ticker: Option<Interval>,
    done: bool,
}

impl SseState {
    async fn next(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            return Some(Bytes::from_static(RETRY_FRAME.as_bytes()));
        }
        if self.done {
            return None;
        }
        let keepalive = self.keepalive;
        let ticker = self.ticker.get_or_insert_with(|| {
            let first = tokio::time::Instant::now() + keepalive;
            let mut ticker = tokio::time::interval_at(first, keepalive);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        tokio::select! {
            // The ticker first: it is ready once per interval, so it cannot
            // starve events, and a busy stream still sends its keep-alives.
            biased;
            _ = ticker.tick() => Some(Bytes::from_static(KEEPALIVE_FRAME.as_bytes())),
            item = self.events.next() => match item {
                Some(Ok(event)) => Some(encode_event(&event)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "SSE stream ends: the store failed while replaying");
                    self.done = true;
                    None
                }
                None => None,
            },
        }
    }
}

/// The body of an SSE response, for hyper (or anything that takes an
/// [`http_body::Body`](hyper::body::Body)).
pub fn sse_body<S>(stream: S) -> UnsyncBoxBody<Bytes, Infallible>
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    StreamBody::new(stream.map(|chunk| chunk.map(Frame::data))).boxed_unsync()
}

/// A `200` response streaming `stream`, with `content-type:
/// text/event-stream`, `cache-control: no-cache` and `x-accel-buffering: no`
/// (so proxies pass frames through at once).
pub fn sse_response<S>(stream: S) -> hyper::Response<UnsyncBoxBody<Bytes, Infallible>>
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut response = hyper::Response::new(sse_body(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A `Last-Event-ID` or `after` that is not a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name} must be an event sequence number (a non-negative integer), got {value:?}")]
pub struct InvalidAfter {
    /// Where it came from: `Last-Event-ID` or `after`.
    pub source_name: &'static str,
    /// What was sent.
    pub value: String,
}

/// Where a stream starts: after the `Last-Event-ID` header if the client
/// sent one (a reconnecting `EventSource` does), else after the query's
/// `?after=SEQ`, else from the beginning (0).
pub fn after_from_request(headers: &HeaderMap, query: Option<&str>) -> Result<u64, InvalidAfter> {
    let header = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let param = query.and_then(|q| query_param(q, "after"));
    parse_after(header.as_deref(), param)
}

/// [`after_from_request`] on plain values: `last_event_id` wins over
/// `after_param`; an empty value counts as absent.
pub fn parse_after(
    last_event_id: Option<&str>,
    after_param: Option<&str>,
) -> Result<u64, InvalidAfter> {
    let candidates = [("Last-Event-ID", last_event_id), ("after", after_param)];
    for (source_name, value) in candidates {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            continue;
        };
        return value.parse().map_err(|_| InvalidAfter {
            source_name,
            value: value.to_owned(),
        });
    }
    Ok(0)
}

/// Event types from a comma-separated list such as the query's
/// `?types=job.completed,job.failed`; empty entries are ignored.
pub fn parse_types(list: &str) -> Result<Vec<EventType>, UnknownName> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .collect()
}

/// The raw value of `name` in a query string (no percent-decoding: the
/// values this module reads are digits and event type names).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use jobqueue_core::{EventData, JobId};
    use serde_json::{Value, json};
    use time::macros::datetime;

    use super::*;

    fn event(seq: u64, data: EventData) -> Event {
        Event {
            seq,
            job_id: Some(
                "0192f7c5-0000-7000-8000-000000000001"
                    .parse::<JobId>()
                    .unwrap(),
            ),
            pipeline: "build".into(),
            at: datetime!(2030-01-02 03:04:05 UTC),
            data,
        }
    }

    #[test]
    fn frame_matches_the_contract() {
        let frame = encode_event(&event(
            42,
            EventData::PhaseCompleted {
                phase: "fetch".into(),
                index: 0,
                result: json!("line\nbreak"),
            },
        ));
        let text = std::str::from_utf8(&frame).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 5, "{text:?}");
        assert_eq!(lines[0], "id: 42");
        assert_eq!(lines[1], "event: job.phase.completed");
        assert!(lines[2].starts_with("data: {"));
        assert_eq!(
            (lines[3], lines[4]),
            ("", ""),
            "a frame ends with a blank line"
        );
        let data: Value = serde_json::from_str(&lines[2]["data: ".len()..]).unwrap();
        assert_eq!(
            data,
            json!({"seq": 42, "type": "job.phase.completed",
                   "job_id": "0192f7c5-0000-7000-8000-000000000001", "pipeline": "build",
                   "at": "2030-01-02T03:04:05Z",
                   "data": {"phase": "fetch", "index": 0, "result": "line\nbreak"}})
        );
    }

    #[test]
    fn fixed_frames_match_the_contract() {
        assert_eq!(RETRY_FRAME, "retry: 2000\n\n");
        assert_eq!(KEEPALIVE_FRAME, ": keepalive\n\n");
        assert!(DEFAULT_KEEPALIVE <= Duration::from_secs(15));
    }

    #[test]
    fn after_prefers_last_event_id() {
        let mut headers = HeaderMap::new();
        assert_eq!(after_from_request(&headers, None), Ok(0));
        assert_eq!(after_from_request(&headers, Some("types=a&after=7")), Ok(7));
        headers.insert("last-event-id", HeaderValue::from_static("12"));
        assert_eq!(after_from_request(&headers, Some("after=7")), Ok(12));
        headers.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(after_from_request(&headers, Some("after=7")), Ok(7));
        let err = parse_after(None, Some("-1")).unwrap_err();
        assert!(err.to_string().contains("after"), "{err}");
        assert!(parse_after(Some("x"), None).is_err());
    }

    #[test]
    fn types_parse_from_a_list() {
        assert_eq!(
            parse_types("job.completed, job.failed,").unwrap(),
            vec![EventType::JobCompleted, EventType::JobFailed]
        );
        assert!(parse_types("job.nope").is_err());
    }
}
