//! A phase that fails twice with a retryable error, then succeeds: the job
//! is retried with backoff and resumes at the failed phase, so the phase
//! before it runs only once.
//!
//! Run with: `cargo run -p jobqueue --example retry`

#![expect(
    clippy::print_stdout,
    reason = "an example shows what happens by printing it"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use jobqueue::{
    EventData, EventFilter, EventType, JobQueue, PhaseError, Pipeline, RetryPolicy, phase_fn,
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fetch_runs = Arc::new(AtomicU32::new(0));
    let upload_runs = Arc::new(AtomicU32::new(0));
    let pipeline = Pipeline::new("publish")
        .phase({
            let runs = fetch_runs.clone();
            phase_fn("fetch", move |_ctx| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, PhaseError>(json!({"artifact": "app.tar.gz"}))
                }
            })
        })
        .phase({
            let runs = upload_runs.clone();
            phase_fn("upload", move |ctx| {
                let runs = runs.clone();
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    if n < 3 {
                        return Err(PhaseError::retryable(format!("registry answered 503 (run {n})")));
                    }
                    Ok(json!({"uploaded": ctx.result_of::<serde_json::Value>("fetch")?["artifact"]}))
                }
            })
        })
        .retry(RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.5,
        });

    // In memory: this example is about retries, not durability.
    let queue = JobQueue::builder()
        .memory()
        .pipeline(pipeline)
        .start()
        .await?;
    let mut events = queue.subscribe(EventFilter::default());
    let job = queue
        .enqueue("publish", &json!({"version": "1.2.3"}))
        .await?;
    while let Some(event) = events.next().await {
        let event = event?;
        match &event.data {
            EventData::PhaseFailed {
                phase,
                error,
                retry_at,
                ..
            } => {
                let when = retry_at.map_or("no retry".to_owned(), |t| {
                    format!("retry in {}", t - event.at)
                });
                println!("{phase} failed: {error} ({when})");
            }
            EventData::Started { attempt } => println!("attempt {attempt} started"),
            other => println!("{}: {}", event.event_type(), other.to_json()),
        }
        if event.job_id == Some(job.id)
            && matches!(
                event.event_type(),
                EventType::JobCompleted | EventType::JobFailed
            )
        {
            break;
        }
    }
    println!(
        "fetch ran {} time(s), upload ran {} time(s)",
        fetch_runs.load(Ordering::SeqCst),
        upload_runs.load(Ordering::SeqCst)
    );
    queue.shutdown().await;
    Ok(())
}
