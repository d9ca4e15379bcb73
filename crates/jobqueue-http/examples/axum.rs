//! A program of your own that serves the job queue's API from its axum app,
//! under `/queue`, next to its own routes.
//!
//! Run with: `cargo run -p jobqueue-http --example axum`
//!
//! Then, in another terminal:
//!
//! ```sh
//! curl -X POST localhost:3000/queue/jobs -d '{"pipeline": "greet", "input": {"name": "Ada"}}'
//! curl localhost:3000/queue/jobs
//! curl -N localhost:3000/queue/events      # every event, then live; Ctrl-C to stop
//! curl localhost:3000/hello                # the app's own route
//! ```
//!
//! Ctrl-C stops it: the event streams end, axum finishes the requests in
//! flight, then the queue shuts down.

use jobqueue::{JobQueue, PhaseError, Pipeline, phase_fn};
use jobqueue_http::{Api, ApiConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = JobQueue::builder()
        .memory()
        .pipeline(
            Pipeline::new("greet")
                .phase(phase_fn("look-up", |ctx| async move {
                    ctx.report(50, Some("looking"));
                    let name = ctx.input()["name"]
                        .as_str()
                        .unwrap_or("stranger")
                        .to_owned();
                    Ok::<_, PhaseError>(json!({ "name": name }))
                }))
                .phase(phase_fn("greet", |ctx| async move {
                    let name: String = ctx.result_of::<serde_json::Value>("look-up")?["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    Ok(json!(format!("hello, {name}")))
                })),
        )
        .start()
        .await?;

    // No token here; set `token: Some(..)` to require one.
    let api = Api::new(queue.clone(), ApiConfig::default());
    let app = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(|| async { "hello from the app" }),
        )
        .nest_service("/queue", api.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Event streams never end by themselves; graceful shutdown
            // waits for every response, so end them first.
            api.close_event_streams();
        })
        .await?;
    queue.shutdown().await;
    Ok(())
}
