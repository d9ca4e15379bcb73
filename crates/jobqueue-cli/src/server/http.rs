//! The HTTP side of `jobqueue serve`: the one place where the REST + SSE
//! API (`jobqueue-http`) is wired in.
//!
//! Everything else of the server (config, store, queue, command phases,
//! signals, the shutdown order) is in `server/mod.rs`; this module only
//! turns a bound listener and a running queue into a served API.
//!
//! To wire the API in: add `jobqueue-http.workspace = true` to this crate's
//! dependencies, set [`MISSING`] to `None`, and replace the body of
//! [`serve`] with
//!
//! ```text
//! let config = jobqueue_http::ApiConfig {
//!     token: api.token,
//!     max_body: api.max_body,
//!     ..Default::default()
//! };
//! jobqueue_http::serve(listener, jobqueue_http::Api::new(queue, config), shutdown).await
//! ```

use std::io;

use jobqueue::JobQueue;
use tokio::net::TcpListener;

use super::{ApiSettings, HttpShutdown};

/// Why this build serves no HTTP API, if it serves none. `jobqueue serve`
/// refuses to start while this is `Some`: a server whose jobs no one can
/// reach would only look like one.
pub(crate) const MISSING: Option<&str> = Some(
    "this build of jobqueue has no HTTP API yet (the jobqueue-http crate is not wired in), \
     so `jobqueue serve` would run jobs that nothing can reach",
);

/// Serves the API of `queue` on `listener` until `shutdown` resolves, then
/// returns once the connections are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    queue: JobQueue,
    api: ApiSettings,
    shutdown: HttpShutdown,
) -> io::Result<()> {
    drop((listener, queue, api, shutdown));
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        MISSING.unwrap_or("no HTTP API"),
    ))
}
