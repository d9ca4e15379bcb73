//! The HTTP side of `jobqueue serve`: the one place where the REST + SSE
//! API (`jobqueue-http`) is wired in.
//!
//! Everything else of the server (config, store, queue, command phases,
//! signals, the shutdown order) is in `server/mod.rs`; this module only
//! turns a bound listener and a running queue into a served API.

use std::io;

use jobqueue::JobQueue;
use jobqueue_http::{Api, ApiConfig};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
    let mut api = Api::new(queue, config);
    if let Some(handle) = runtime_metrics() {
        api = api.extra_metrics(move || {
            handle.run_upkeep();
            handle.render()
        });
    }
    jobqueue_http::serve(listener, api, shutdown).await
}

/// Installs a Prometheus recorder for the `metrics` facade, through which
/// the runtime records its figures (`jobqueue_runtime_...`), so `/metrics`
/// shows them beside the server's own; `None` when the process has a
/// recorder already (one per process: a second `serve` in a test process
/// keeps the first's).
fn runtime_metrics() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    Some(handle)
}
