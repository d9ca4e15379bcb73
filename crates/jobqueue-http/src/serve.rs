//! [`serve`]: an HTTP/1.1 server for an [`Api`] on a TCP listener, with
//! graceful shutdown.

use std::future::Future;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::api::Api;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before accepting again after the listener failed for a
/// reason that is not about one connection (too many open files, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// Serves `api` on `listener` until `shutdown` resolves.
///
/// Then it stops accepting connections, ends the event streams it serves
/// (their clients reconnect elsewhere or later with `Last-Event-ID`), lets
/// the responses in flight finish, closes idle keep-alive connections, and
/// returns. It does not shut the queue down: do that after it returns.
/// A client that is slow to take its answer holds the return up; to bound
/// the wait, race this future against a timer.
///
/// Each connection is HTTP/1.1 with keep-alive; a client has 30 s to send
/// a request's headers. Failing to accept one connection never stops the
/// server; every error is logged with `tracing`.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    // Closing the streams of this server leaves those of other servers of
    // the same `Api` alone.
    let api = api.scoped();
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "a connection failed before it was accepted");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting connections failed; trying again shortly");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        // Event frames go out at once, not after Nagle's delay.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), api.clone()));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    api.close_event_streams();
    graceful.shutdown().await;
    Ok(())
}

/// Errors about one connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}
