//! The everyday API on an SQLite file: a typed pipeline whose steps pass
//! typed values along, application state the steps read, a batch of typed
//! inputs, a phase that cancels its job, per-phase options, then `drain`,
//! `wait` and `counts`.
//!
//! Run with: `cargo run -p jobqueue --example everyday`

#![expect(
    clippy::print_stdout,
    reason = "an example shows what happens by printing it"
)]

use std::sync::Arc;
use std::time::Duration;

use jobqueue::{
    JobInput, JobQueue, JobResults, JobStatus, PhaseError, PhaseOptions, Pipeline, RetryPolicy,
};
use serde::{Deserialize, Serialize};

/// The input of the `thumbnail` pipeline.
#[derive(Serialize, Deserialize)]
struct Thumbnail {
    url: String,
    width: u32,
}

impl JobInput for Thumbnail {
    const PIPELINE: &'static str = "thumbnail";
}

/// What the download step hands to the resize step.
#[derive(Serialize, Deserialize)]
struct Downloaded {
    bytes: u64,
    width: u32,
}

/// Application state: something every phase needs, given once.
struct Storage {
    bucket: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("jobqueue-everyday-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let thumbnail = Pipeline::typed::<Thumbnail>()
        .step("download", |ctx, job: Thumbnail| async move {
            if job.url.ends_with(".exe") {
                // Not a failure to retry: this job should not go on.
                return Err(PhaseError::cancel_job("not an image"));
            }
            ctx.report(100, Some("downloaded"));
            Ok(Downloaded {
                bytes: 1000 + u64::from(job.width),
                width: job.width,
            })
        })
        // The compiler checks that this step takes what `download` returns.
        .step_with_timeout(
            "resize",
            Duration::from_secs(30),
            |ctx, d: Downloaded| async move {
                let storage = ctx.state::<Arc<Storage>>()?;
                Ok::<_, PhaseError>(format!(
                    "s3://{}/{}px-{}b.webp",
                    storage.bucket, d.width, d.bytes
                ))
            },
        )
        .build();

    // A plain JSON pipeline whose one flaky phase has its own retry policy.
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = attempts.clone();
    let notify = Pipeline::new("notify").phase_with(
        jobqueue::phase_fn("send", move |_ctx| {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return Err(PhaseError::retryable("mail server busy"));
                }
                Ok(serde_json::json!("sent"))
            }
        }),
        PhaseOptions::new().retry(RetryPolicy {
            max_attempts: 5,
            initial: Duration::ZERO,
            ..RetryPolicy::default()
        }),
    );

    let queue = JobQueue::builder()
        .sqlite(dir.join("jobs.db"))
        .state(Arc::new(Storage {
            bucket: "thumbs".into(),
        }))
        .pipeline(thumbnail)
        .pipeline(notify)
        .start()
        .await?;

    let inputs = [
        Thumbnail {
            url: "https://example.com/cat.png".into(),
            width: 64,
        },
        Thumbnail {
            url: "https://example.com/dog.png".into(),
            width: 128,
        },
        Thumbnail {
            url: "https://example.com/setup.exe".into(),
            width: 64,
        },
    ];
    let jobs = queue.enqueue_many_typed(&inputs).await?;
    let mail = queue
        .enqueue("notify", &serde_json::json!({"to": "ada@example.com"}))
        .await?;

    let summary = queue.drain().await?;
    println!(
        "drained: {} completed, {} failed, {} cancelled",
        summary.completed, summary.failed, summary.cancelled
    );

    for job in &jobs {
        let job = queue.wait(job.id).await?;
        let url: Option<String> = job.result_of("resize")?;
        println!("{} {} -> {:?}", job.id, job.status, url);
    }
    let mail = queue.wait(mail.id).await?;
    println!("notify: {} after {} attempts", mail.status, mail.attempt);

    let counts = queue.counts().await?;
    println!(
        "thumbnail: {} completed, {} cancelled",
        counts.of("thumbnail", JobStatus::Completed),
        counts.of("thumbnail", JobStatus::Cancelled)
    );
    queue.shutdown().await;
    std::fs::remove_dir_all(&dir)?;

    assert_eq!((summary.completed, summary.cancelled), (3, 1));
    assert_eq!(mail.status, JobStatus::Completed);
    Ok(())
}
