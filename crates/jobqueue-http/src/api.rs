//! [`Api`]: the service. It resolves the route, checks the token, reads the
//! body within its limit, runs the handler, and turns every refusal (and any
//! panic, which would be a bug) into a JSON error.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use jobqueue::JobQueue;
use jobqueue::events::SseOptions;
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::error::{ApiError, Code};
use crate::handlers;
use crate::metrics::Metrics;
use crate::query::Query;
use crate::routes::{self, Resolved};

/// The body of every response: a whole JSON (or HTML, or metrics) text, or
/// an endless Server-Sent Events stream.
pub type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// The future of one response; it never fails (errors are responses).
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ApiBody>, Infallible>> + Send + 'static>>;

/// The error type a request body may have.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A whole body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ApiBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// The REST + SSE API of one [`JobQueue`].
///
/// Cheap to clone; clones share the queue, the configuration and the
/// metrics. It is a [`hyper::service::Service`] for hyper's own connections
/// (see [`serve`](crate::serve)) and a [`tower_service::Service`] for any
/// request body, so it also mounts in axum (`Router::nest_service`,
/// `fallback_service`) and other tower stacks.
///
/// The metrics that count events and webhook attempts follow the queue from
/// the moment the API is made inside a tokio runtime (or, made outside one,
/// from its first request) until the last clone is dropped.
///
/// # Pitfalls
/// - Event streams (`GET /events`, `GET /jobs/{id}/events`) never end by
///   themselves. [`serve`](crate::serve) ends them at shutdown; a server of
///   your own (axum's graceful shutdown, say) calls
///   [`close_event_streams`](Self::close_event_streams) first, or waits for
///   ever.
/// - A response is only as fast as the store: every route but `/health`,
///   the dashboard's page and assets and `/openapi.json` reads or writes it.
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
    /// Ends the event streams opened through this handle (a child of the
    /// root token in the handles [`serve`](crate::serve) makes).
    streams: CancellationToken,
    sse: SseOptions,
    /// More Prometheus text for `GET /metrics` (see
    /// [`extra_metrics`](Self::extra_metrics)).
    extra_metrics: Option<ExtraMetrics>,
}

/// Renders more metrics, as Prometheus text, at each scrape.
pub(crate) type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

struct Inner {
    queue: JobQueue,
    config: ApiConfig,
    metrics: Arc<Metrics>,
    /// Starts the metrics watchers once, inside a runtime.
    watchers: Once,
    /// Stops the watchers when the last handle is gone.
    stop_watchers: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_watchers.cancel();
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("queue", &self.inner.queue)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// The API of `queue`, checking requests as `config` says.
    pub fn new(queue: JobQueue, config: ApiConfig) -> Self {
        let metrics = Metrics::new();
        metrics.prime(&queue);
        let api = Self {
            inner: Arc::new(Inner {
                queue,
                config,
                metrics: Arc::new(metrics),
                watchers: Once::new(),
                stop_watchers: CancellationToken::new(),
            }),
            streams: CancellationToken::new(),
            sse: SseOptions::default(),
            extra_metrics: None,
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            api.start_watchers();
        }
        api
    }

    /// Event streams send a keep-alive comment this often (default 15 s,
    /// the most clients may rely on; shorter for tests or strict proxies).
    pub fn sse_keepalive(mut self, every: Duration) -> Self {
        self.sse.keepalive = every;
        self
    }

    /// Appends what `render` returns, Prometheus text of other metrics, to
    /// every `GET /metrics` answered in the Prometheus text format: e.g. the
    /// runtime's own figures (`jobqueue_runtime_...`, recorded through the
    /// `metrics` facade) rendered by a recorder the program installed.
    /// `jobqueue serve` does this. The OpenMetrics form leaves them out
    /// (a facade exporter's text is not OpenMetrics).
    pub fn extra_metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.extra_metrics = Some(Arc::new(render));
        self
    }

    /// The extra metrics' renderer, if one was given.
    pub(crate) fn extra_metrics_text(&self) -> Option<String> {
        self.extra_metrics.as_ref().map(|render| render())
    }

    /// The queue it serves.
    pub fn queue(&self) -> &JobQueue {
        &self.inner.queue
    }

    /// Its configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Ends every event stream opened through this handle or its clones,
    /// now and from now on (a new stream ends at once after its `retry`
    /// line): call it before a graceful shutdown waits for responses to
    /// finish. [`serve`](crate::serve) does it for the streams it serves.
    pub fn close_event_streams(&self) {
        self.streams.cancel();
    }

    /// A handle whose streams [`close_event_streams`](Self::close_event_streams)
    /// on it ends without ending those of `self` (closing `self` ends both).
    pub(crate) fn scoped(&self) -> Self {
        Self {
            streams: self.streams.child_token(),
            ..self.clone()
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn sse_options(&self) -> &SseOptions {
        &self.sse
    }

    pub(crate) fn streams(&self) -> &CancellationToken {
        &self.streams
    }

    fn start_watchers(&self) {
        self.inner.watchers.call_once(|| {
            self.inner
                .metrics
                .clone()
                .watch(&self.inner.queue, self.inner.stop_watchers.child_token());
        });
    }

    /// Answers one request.
    fn respond<B>(&self, req: Request<B>) -> ResponseFuture
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let api = self.clone();
        Box::pin(async move {
            api.start_watchers();
            let method = req.method().clone();
            let path = req.uri().path().to_owned();
            let resolved = routes::resolve(&method, &path);
            let label = resolved.label();
            let outcome = AssertUnwindSafe(api.dispatch(resolved, req))
                .catch_unwind()
                .await;
            let response = match outcome {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => error.into_response(),
                Err(panic) => {
                    let message = jobqueue::core::health::panic_message(&*panic);
                    tracing::error!(%method, path = %clip(&path), panic = %message, "a request handler panicked");
                    ApiError::new(Code::Internal, "the server failed on this request")
                        .into_response()
                }
            };
            api.metrics()
                .observe_request(&method, label, response.status());
            Ok(response)
        })
    }

    async fn dispatch<B>(
        &self,
        resolved: Resolved<'_>,
        req: Request<B>,
    ) -> Result<Response<ApiBody>, ApiError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let query = Query::parse(req.uri().query());
        let public = matches!(resolved, Resolved::Found(e, _) if e.is_public());
        if !public {
            self.authorize(req.headers(), &query)?;
        }
        match resolved {
            Resolved::Found(endpoint, id) => {
                let id = id.map(str::to_owned);
                handlers::handle(self, endpoint, id.as_deref(), query, req).await
            }
            Resolved::MethodNotAllowed(allow) => {
                Err(ApiError::method_not_allowed(req.method(), &allow))
            }
            Resolved::NotFound => Err(ApiError::not_found(format!(
                "no route {} {}",
                req.method(),
                clip(req.uri().path())
            ))),
        }
    }

    /// Checks the token, when one is configured.
    fn authorize(&self, headers: &HeaderMap, query: &Query) -> Result<(), ApiError> {
        let Some(expected) = &self.inner.config.token else {
            return Ok(());
        };
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        let param = query.get("token").map(str::as_bytes);
        if [bearer, param]
            .into_iter()
            .flatten()
            .any(|t| token_matches(expected, t))
        {
            return Ok(());
        }
        let message = if bearer.is_none() && param.is_none() {
            "this route needs a token: send `Authorization: Bearer <token>` or `?token=<token>`"
        } else {
            "the token is not valid"
        };
        Err(ApiError::new(Code::Unauthorized, message))
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in
/// any case).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// Whether `presented` is the configured token, compared in constant time
/// (for tokens of the same length). An empty token matches nothing.
fn token_matches(expected: &str, presented: &[u8]) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented))
}

/// At most 200 characters of `text`, for messages and logs.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Reads a request body of at most `max` bytes: a larger one is a
/// `payload_too_large` (refused by its `Content-Length` before reading when
/// it says so), one that fails to arrive a `bad_request`.
pub(crate) async fn read_body<B>(
    body: B,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("the request body is larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

impl hyper::service::Service<Request<Incoming>> for Api {
    type Response = Response<ApiBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.respond(req)
    }
}

impl<B> tower_service::Service<Request<B>> for Api
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ApiBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: each request is its own task, and the store applies
        // backpressure where it matters.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.respond(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b""), None);
        assert!(token_matches("abc", b"abc"));
        assert!(!token_matches("abc", b"abd"));
        assert!(!token_matches("abc", b"ab"));
        assert!(!token_matches("", b""));
    }

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 203);
    }
}
