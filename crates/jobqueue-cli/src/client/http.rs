//! A small HTTP/1 client for the server's API: JSON requests, the API's
//! error shape turned into [`ClientError::Api`], and event streams.
//!
//! It uses hyper with rustls (the stack the webhook dispatcher uses), so
//! `--url https://...` works without a system TLS library.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long a request (not an event stream) may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JSON answer read (a page of jobs with their results).
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `--url` is not an http(s) URL.
    #[error("invalid --url {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the server at {url}: {message}")]
    Connect {
        /// The server's URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The server answered with the API's error shape.
    #[error("{message} ({code}, HTTP {status}){}", job_id.as_ref().map(|id| format!("; existing job: {id}")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code (`not_found`, `conflict`, ...).
        code: String,
        /// The server's message.
        message: String,
        /// For `duplicate`: the job that holds the unique key.
        job_id: Option<String>,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the server (HTTP {status}): {body}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    /// The URL without a trailing slash, e.g. `http://127.0.0.1:7700`.
    base: String,
    token: Option<String>,
    http: HyperClient<Connector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// An answer: its status and JSON body (`null` when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Value,
}

impl Client {
    /// A client of the server at `url` (http or https, optionally with a
    /// path prefix), sending `token` as a bearer token when set.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(bad("it must start with http:// or https://")),
        }
        if uri.authority().is_none() {
            return Err(bad("it has no host"));
        }
        if uri.query().is_some() {
            return Err(bad("it must not have a query"));
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| bad(&format!("cannot set up TLS: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()),
            http: HyperClient::builder(TokioExecutor::new()).build(tls),
        })
    }

    /// The server's URL as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::Url {
                    url: url.clone(),
                    reason: "JOBQUEUE_TOKEN cannot be sent in a header".into(),
                }
            })?;
            req = req.header(AUTHORIZATION, value);
        }
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        req.header(ACCEPT, "application/json")
            .body(body)
            .map_err(|e| ClientError::Url {
                url,
                reason: e.to_string(),
            })
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError> {
        self.http
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                url: self.base.clone(),
                message: error_chain(&e),
            })
    }

    /// Sends a JSON request and reads the JSON answer; an error status is
    /// [`ClientError::Api`] (or [`ClientError::Unexpected`] if its body is
    /// not the API's error shape).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let req = self.request(method, path, body)?;
        let exchange = async {
            let response = self.send(req).await?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ClientError::Connect {
                    url: self.base.clone(),
                    message: format!("reading the answer failed: {e}"),
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Connect {
                url: self.base.clone(),
                message: format!(
                    "no answer within {}",
                    humantime::format_duration(REQUEST_TIMEOUT)
                ),
            })??;
        answer(status, &bytes)
    }

    /// Opens an event stream at `path`, resuming after `last_event_id`.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<u64>,
    ) -> Result<Incoming, ClientError> {
        let mut req = self.request(Method::GET, path, None)?;
        let headers = req.headers_mut();
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Some(id) = last_event_id {
            headers.insert("last-event-id", HeaderValue::from(id));
        }
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.send(req))
            .await
            .map_err(|_| ClientError::Connect {
                url: self.base.clone(),
                message: "no answer".into(),
            })??;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let bytes = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(answer(status, &bytes)
            .err()
            .unwrap_or(ClientError::Unexpected {
                status: status.as_u16(),
                body: String::new(),
            }))
    }
}

/// Reads an answer: a success with a JSON (or empty) body, or the error.
pub(crate) fn answer(status: StatusCode, bytes: &[u8]) -> Result<Answer, ClientError> {
    let parsed: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        Some(Value::Null)
    } else {
        serde_json::from_slice(bytes).ok()
    };
    let unexpected = || ClientError::Unexpected {
        status: status.as_u16(),
        body: snippet(bytes),
    };
    if status.is_success() {
        return parsed
            .map(|body| Answer { status, body })
            .ok_or_else(unexpected);
    }
    let Some(body) = parsed else {
        return Err(unexpected());
    };
    let error = &body["error"];
    match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) => Err(ClientError::Api {
            status: status.as_u16(),
            code: code.to_owned(),
            message: message.to_owned(),
            job_id: error["job_id"]
                .as_str()
                .or_else(|| body["job_id"].as_str())
                .map(str::to_owned),
        }),
        _ => Err(unexpected()),
    }
}

/// The start of a body, for an error message.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// An error and its sources, joined: hyper's own message is often only
/// "client error (Connect)".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = s.source();
    }
    text
}

/// Percent-encodes a query value.
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b',') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_shape_becomes_an_api_error() {
        let body =
            br#"{"error": {"code": "duplicate", "message": "unique key held", "job_id": "j1"}}"#;
        match answer(StatusCode::CONFLICT, body) {
            Err(ClientError::Api {
                status,
                code,
                message,
                job_id,
            }) => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (409, "duplicate", "unique key held")
                );
                assert_eq!(job_id.as_deref(), Some("j1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            answer(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>"),
            Err(ClientError::Unexpected { status: 502, .. })
        ));
        assert_eq!(
            answer(StatusCode::NO_CONTENT, b"").ok().map(|a| a.body),
            Some(Value::Null)
        );
    }

    #[test]
    fn urls() {
        assert!(Client::new("http://127.0.0.1:7700", None).is_ok());
        assert!(Client::new("https://jobs.example.com/prefix/", None).is_ok());
        assert!(Client::new("ftp://x", None).is_err());
        assert!(Client::new("127.0.0.1:7700", None).is_err());
        assert_eq!(encode("a b&c,d"), "a%20b%26c,d");
    }
}
