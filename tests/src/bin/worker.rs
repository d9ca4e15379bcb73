//! The kill tests' child process: runs a queue of multi-phase jobs on an
//! SQLite file until it is killed, or until every job finished.
//!
//! Usage: `jobqueue-test-worker DB LOG (enqueue N | enqueue-crash | run)`
//! - `enqueue N` enqueues N jobs of pipeline `multi`, then runs the queue.
//! - `enqueue-crash` enqueues one job of pipeline `crash`, whose phase
//!   aborts the process, then runs the queue.
//! - `run` only runs the queue; it exits 0 once no job is queued or running.
//!
//! Each phase run appends `run <job> <phase> <attempt>` to LOG as it starts,
//! so the parent can tell which phases ran in which process.

#![expect(
    clippy::print_stdout,
    reason = "stdout is how the child reports acknowledgements to the parent"
)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobqueue::{JobFilter, JobQueue, JobStatus, PhaseError, Pipeline, RetryPolicy, phase_fn};
use serde_json::json;

fn phase(name: &'static str, log: Arc<Mutex<std::fs::File>>) -> impl jobqueue::Phase {
    phase_fn(name, move |ctx| {
        let log = log.clone();
        async move {
            {
                let mut f = log
                    .lock()
                    .map_err(|_| PhaseError::permanent("log lock poisoned"))?;
                writeln!(f, "run {} {} {}", ctx.job_id(), ctx.phase(), ctx.attempt())
                    .and_then(|()| f.flush())
                    .map_err(|e| PhaseError::permanent(format!("log: {e}")))?;
            }
            for step in 1..=5u8 {
                tokio::time::sleep(Duration::from_millis(15)).await;
                ctx.report(step * 20, Some("working"));
            }
            Ok::<_, PhaseError>(
                json!({ "phase": name, "interrupted_before": ctx.interrupted().is_some() }),
            )
        }
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (db, log_path, mode) = match args.as_slice() {
        [_, db, log, mode, rest @ ..] => (db.clone(), log.clone(), (mode.clone(), rest.to_vec())),
        _ => {
            return Err(
                "usage: jobqueue-test-worker DB LOG (enqueue N | enqueue-crash | run)".into(),
            );
        }
    };
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?,
    ));
    let pipeline = Pipeline::new("multi")
        .phase(phase("fetch", log.clone()))
        .phase(phase("build", log.clone()))
        .phase(phase("publish", log));
    let crash = Pipeline::new("crash")
        .retry(RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        })
        .phase(phase_fn("boom", |_ctx| async move {
            // What a segfault or an OOM kill does to the process.
            std::process::abort();
            #[expect(unreachable_code, reason = "the phase's type needs a result")]
            Ok::<_, PhaseError>(json!(null))
        }));
    let queue = JobQueue::builder()
        .sqlite(db)
        .pipeline(pipeline)
        .pipeline(crash)
        // Every kill spends the attempt of each job it cuts short (a job
        // whose run kills its process every time must not loop forever);
        // the parent kills up to six lives, so leave room for all of them.
        .retry_policy(RetryPolicy {
            max_attempts: 20,
            ..RetryPolicy::default()
        })
        .concurrency(4)
        .start()
        .await?;
    if mode.0 == "enqueue" {
        let n: usize = mode.1.first().ok_or("enqueue needs N")?.parse()?;
        // Half in one batch, half one by one: both must be durable once acknowledged.
        let batch = (0..n / 2)
            .map(|i| jobqueue::NewJob::new("multi").input(json!({ "i": i })))
            .collect();
        for job in queue.enqueue_batch(batch).await? {
            println!("enqueued {}", job.id);
        }
        for i in n / 2..n {
            let job = queue.enqueue("multi", &json!({ "i": i })).await?;
            println!("enqueued {}", job.id);
        }
    }
    if mode.0 == "enqueue-crash" {
        let job = queue.enqueue("crash", &json!(null)).await?;
        println!("enqueued {}", job.id);
    }
    println!("running");
    loop {
        let active = queue
            .list(JobFilter {
                statuses: vec![JobStatus::Queued, JobStatus::Running],
                limit: 1,
                ..JobFilter::default()
            })
            .await?;
        if active.jobs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    queue.shutdown().await;
    println!("done");
    Ok(())
}
