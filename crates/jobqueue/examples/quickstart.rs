//! A three-phase pipeline (download, transcode, upload) with progress, on an
//! SQLite file, printing every event as it happens.
//!
//! Run with: `cargo run -p jobqueue --example quickstart`

#![expect(
    clippy::print_stdout,
    reason = "an example shows what happens by printing it"
)]

use std::time::Duration;

use futures_util::StreamExt;
use jobqueue::{
    EventData, EventFilter, EventType, JobQueue, JobResults, PhaseError, Pipeline, phase_fn,
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("jobqueue-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("jobs.db");

    let pipeline = Pipeline::new("media")
        .phase(phase_fn("download", |ctx| async move {
            let url = ctx.input()["url"].as_str().unwrap_or("?").to_owned();
            for step in 1..=4u8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                ctx.report(step * 25, Some(&format!("{} of 4 chunks", step)));
            }
            Ok::<_, PhaseError>(json!({"url": url, "bytes": 4096}))
        }))
        .phase(phase_fn("transcode", |ctx| async move {
            let bytes: u64 = ctx.result_of::<serde_json::Value>("download")?["bytes"]
                .as_u64()
                .unwrap_or(0);
            for step in 1..=2u8 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                ctx.report(step * 50, None);
            }
            Ok(json!({"frames": bytes / 16}))
        }))
        .phase(phase_fn("upload", |_ctx| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(json!("s3://bucket/video.webm"))
        }));

    let queue = JobQueue::builder()
        .sqlite(&db)
        .pipeline(pipeline)
        .start()
        .await?;
    let mut events = queue.subscribe(EventFilter::default());
    let job = queue
        .enqueue("media", &json!({"url": "https://example.com/video.mp4"}))
        .await?;
    println!("enqueued job {} into {}", job.id, db.display());

    while let Some(event) = events.next().await {
        let event = event?;
        match &event.data {
            EventData::PhaseProgress {
                phase,
                percent,
                message,
            } => {
                println!(
                    "#{:<3} {:<20} {phase:<10} {percent:>3}% {}",
                    event.seq,
                    event.event_type(),
                    message.as_deref().unwrap_or("")
                );
            }
            other => println!(
                "#{:<3} {:<20} {}",
                event.seq,
                event.event_type(),
                other.to_json()
            ),
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

    let done = queue.get(job.id).await?.ok_or("job vanished")?;
    println!("status: {}", done.status);
    println!("upload result: {:?}", done.result_of::<String>("upload")?);
    queue.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
