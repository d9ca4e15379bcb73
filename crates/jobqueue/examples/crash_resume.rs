//! Crash and resume: a child process runs a job on an SQLite file and dies
//! (abort, as a crash would) half way through a phase. A new process on the
//! same file finds the job interrupted, hands the phase its interrupted
//! context, skips the phase that had completed, and finishes the job.
//!
//! Run with: `cargo run -p jobqueue --example crash_resume`

#![expect(
    clippy::print_stdout,
    reason = "an example shows what happens by printing it"
)]

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use jobqueue::{EventFilter, EventType, JobQueue, PhaseError, Pipeline, phase_fn};
use serde_json::json;

fn pipeline() -> Pipeline {
    Pipeline::new("render")
        .phase(phase_fn("prepare", |_ctx| async move {
            println!("  prepare: running (it must run only once)");
            Ok::<_, PhaseError>(json!({"scenes": 10}))
        }))
        .phase(phase_fn("render", |ctx| async move {
            match ctx.interrupted() {
                None => {
                    for scene in 1..=4u8 {
                        ctx.report(scene * 10, Some(&format!("scene {scene}")));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // Give the progress writer a moment, then crash hard.
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    println!("  render: crashing at 40%");
                    std::process::abort();
                }
                Some(i) => {
                    println!(
                        "  render: resuming; interrupted at {} with progress {:?}",
                        i.at, i.progress
                    );
                    Ok(json!({"frames": 240}))
                }
            }
        }))
}

async fn child(db: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let queue = JobQueue::builder()
        .sqlite(db)
        .pipeline(pipeline())
        .start()
        .await?;
    let job = queue.enqueue("render", &json!({"film": "demo"})).await?;
    println!("child: enqueued {}", job.id);
    // Runs until the phase aborts the process.
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    if let (Some(mode), Some(db)) = (args.next(), args.next())
        && mode == "child"
    {
        return child(Path::new(&db)).await;
    }
    let dir = std::env::temp_dir().join(format!("jobqueue-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("jobs.db");

    println!("first life: a child process runs the job and crashes");
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("child")
        .arg(&db)
        .status()?;
    println!("child ended: {status}");

    println!("second life: the same file, a new process");
    let queue = JobQueue::builder()
        .sqlite(&db)
        .pipeline(pipeline())
        .start()
        .await?;
    let mut events = queue.subscribe_after(0, EventFilter::default());
    while let Some(event) = events.next().await {
        let event = event?;
        println!("#{:<3} {}", event.seq, event.event_type());
        if let (EventType::JobCompleted, Some(id)) = (event.event_type(), event.job_id) {
            let job = queue.get(id).await?.ok_or("job vanished")?;
            println!(
                "completed; interrupted context kept on the job: {:?}",
                job.interrupted
            );
            break;
        }
    }
    queue.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
