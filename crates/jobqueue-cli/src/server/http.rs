//! The HTTP side of `jobqueue serve`: the one place where the REST + SSE
//! API (`jobqueue-http`) is wired in.
//!
//! Everything else of the server (config, store, queue, command phases,
//! signals, the shutdown order) is in `server/mod.rs`; this module only
//! turns a bound listener and a running queue into a served API.

use std::io;

use jobqueue::JobQueue;
use jobqueue_http::{Api, ApiConfig};
use tokio::net::TcpListener;

use super::{ApiSettings, HttpShutdown};

/// Serves the API of `queue` on `listener` until `shutdown` resolves, then
/// returns once the connections are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    queue: JobQueue,
    api: ApiSettings,
    shutdown: HttpShutdown,
) -> io::Result<()> {
    let config = ApiConfig {
        token: api.token,
        max_body: api.max_body,
    };
    jobqueue_http::serve(listener, Api::new(queue, config), shutdown).await
}
