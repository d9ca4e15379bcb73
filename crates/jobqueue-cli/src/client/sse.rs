//! Following an event stream (Server-Sent Events): frames parsed as they
//! arrive, and a dropped connection resumed after the last event seen
//! (`Last-Event-ID`), so no event is missed or shown twice.

use std::ops::ControlFlow;
use std::time::Duration;

use http_body_util::BodyExt;

use super::http::{Client, ClientError};

/// The longest line of a stream (an event with large results); a longer
/// one is an error rather than unbounded memory.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// The server sends a keep-alive at least every 15 s; a connection silent
/// for three of those is taken as lost.
const IDLE: Duration = Duration::from_secs(45);

/// The delay before reconnecting when the server named none (`retry:`).
const DEFAULT_RETRY: Duration = Duration::from_secs(2);

/// The longest delay between attempts to reconnect.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` (the event's sequence number here).
    pub id: Option<String>,
    /// `event:` (the event type here).
    pub event: Option<String>,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

/// A line longer than the parser holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event stream sent a line longer than {MAX_LINE} bytes")]
pub struct LineTooLong;

/// An incremental parser of `text/event-stream`.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` that starts this one ends
    /// no second line.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    /// The reconnection delay the server asked for.
    retry: Option<Duration>,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<SseEvent>, LineTooLong> {
        let mut events = Vec::new();
        if self.after_cr {
            bytes = bytes.strip_prefix(b"\n").unwrap_or(bytes);
            self.after_cr = false;
        }
        while let Some(end) = bytes.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.buf.extend_from_slice(&bytes[..end]);
            let line = std::mem::take(&mut self.buf);
            self.line(&String::from_utf8_lossy(&line), &mut events);
            let crlf = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if crlf {
                if bytes.is_empty() {
                    self.after_cr = true;
                } else {
                    bytes = bytes.strip_prefix(b"\n").unwrap_or(bytes);
                }
            }
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > MAX_LINE {
            return Err(LineTooLong);
        }
        Ok(events)
    }

    /// The reconnection delay the server asked for, if it did.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    fn line(&mut self, line: &str, events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(SseEvent {
                    id: self.id.clone(),
                    event: self.event.take(),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
    }
}

/// What [`follow`] hands its caller.
#[derive(Debug, Clone, Copy)]
pub enum Followed<'a> {
    /// An event of the stream.
    Event(&'a SseEvent),
    /// A note for people about the connection (lost, trying again, back),
    /// for the caller to show where it does not disturb its output.
    Notice(&'a str),
}

/// Why following a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The server refused or could not be reached at first.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The stream broke its format.
    #[error(transparent)]
    Stream(#[from] LineTooLong),
    /// Writing an event failed.
    #[error("cannot write the event: {0}")]
    Output(#[from] std::io::Error),
}

/// Follows the stream at `path` from after sequence number `after` (from
/// the server's start without one), handing each event (and each notice
/// about the connection) to `on` until it says stop. A connection that
/// drops is opened again after a delay, with `Last-Event-ID` set to the
/// last event's id; an error answer (401, 404) or a server that cannot be
/// reached on the first try ends it.
pub async fn follow(
    client: &Client,
    path: &str,
    after: Option<u64>,
    mut on: impl FnMut(Followed<'_>) -> std::io::Result<ControlFlow<()>>,
) -> Result<(), FollowError> {
    let mut last: Option<u64> = after;
    let mut connected = false;
    let mut failures: u32 = 0;
    let mut retry = DEFAULT_RETRY;
    loop {
        match client.events(path, last).await {
            Ok(mut body) => {
                if connected {
                    let notice = format!("jobqueue: reconnected to {}", client.base());
                    if on(Followed::Notice(&notice))?.is_break() {
                        return Ok(());
                    }
                }
                connected = true;
                failures = 0;
                let mut parser = SseParser::default();
                let why = loop {
                    let frame = match tokio::time::timeout(IDLE, body.frame()).await {
                        Err(_) => break "no data and no keep-alive for a while".to_owned(),
                        Ok(None) => break "the server closed the stream".to_owned(),
                        Ok(Some(Err(e))) => break e.to_string(),
                        Ok(Some(Ok(frame))) => frame,
                    };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    for event in parser.feed(&data)? {
                        if let Some(seq) = event.id.as_deref().and_then(|id| id.parse().ok()) {
                            last = Some(seq);
                        }
                        if on(Followed::Event(&event))?.is_break() {
                            return Ok(());
                        }
                    }
                };
                retry = parser.retry().unwrap_or(retry);
                let notice = format!(
                    "jobqueue: connection lost ({why}); reconnecting in {}",
                    humantime::format_duration(retry)
                );
                if on(Followed::Notice(&notice))?.is_break() {
                    return Ok(());
                }
            }
            Err(
                e @ (ClientError::Api { .. }
                | ClientError::Unexpected { .. }
                | ClientError::Url { .. }),
            ) => {
                return Err(e.into());
            }
            Err(e) if !connected => return Err(e.into()),
            Err(e) => {
                failures = failures.saturating_add(1);
                let notice = format!(
                    "jobqueue: {e}; trying again in {}",
                    humantime::format_duration(backoff(retry, failures))
                );
                if on(Followed::Notice(&notice))?.is_break() {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(backoff(retry, failures)).await;
    }
}

/// The delay before the next attempt after `failures` failed ones.
fn backoff(retry: Duration, failures: u32) -> Duration {
    retry.saturating_mul(1 << failures.min(4)).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere() {
        let stream = "retry: 2000\n\n: keepalive\n\nid: 1\nevent: job.created\ndata: {\"seq\":1}\n\nid: 2\r\nevent: job.started\r\ndata: a\r\ndata: b\r\n\r\n";
        // Every way of cutting the stream in two gives the same events.
        for cut in 0..stream.len() {
            let mut p = SseParser::default();
            let mut events = p.feed(&stream.as_bytes()[..cut]).unwrap_or_default();
            events.extend(p.feed(&stream.as_bytes()[cut..]).unwrap_or_default());
            assert_eq!(
                events,
                [
                    SseEvent {
                        id: Some("1".into()),
                        event: Some("job.created".into()),
                        data: "{\"seq\":1}".into()
                    },
                    SseEvent {
                        id: Some("2".into()),
                        event: Some("job.started".into()),
                        data: "a\nb".into()
                    },
                ],
                "cut at {cut}"
            );
            assert_eq!(p.retry(), Some(Duration::from_millis(2000)));
        }
    }

    #[test]
    fn backoff_grows_to_a_cap() {
        let r = Duration::from_secs(2);
        assert_eq!(backoff(r, 0), r);
        assert_eq!(backoff(r, 1), Duration::from_secs(4));
        assert_eq!(backoff(r, 10), MAX_RETRY);
    }
}
