//! The workloads that run through the `jobqueue` façade: a [`JobQueue`] on
//! an SQLite file, built the way a user's program builds it, with the
//! `synchronous` setting of `--sync`.
//!
//! | workload | what it does | report |
//! |---|---|---|
//! | `noop_1phase` | `--jobs` jobs of one phase that does nothing, enqueued in batches of `--batch` while `--concurrency` run at once; the clock runs from the first enqueue until every job is completed | `jobs`, `phases`, `seconds` |
//! | `noop_3phase` | the same with three phases, each one persisted | the same |
//! | `enqueue_single` | one task, `--jobs` single `enqueue`s one after the other | `jobs`, `seconds` |
//! | `enqueue_concurrent` | `--tasks` tasks, `--jobs` single `enqueue`s in all | `jobs`, `seconds` |
//! | `latency_idle` | `--samples` times: enqueue one job, note when its phase starts, wait until it is completed | `latencies_ms` (enqueue call → phase start), `enqueue_ms` (the `enqueue` call alone) |
//! | `latency_loaded` | the same while `--jobs` jobs of the `noop_1phase` kind run beside it; it stops when the load is done | `latencies_ms`, `enqueue_ms` (the `enqueue` call alone), `load_jobs_done` |
//! | `memory_enqueue` | enqueues `--jobs` jobs in batches of `--batch` (nothing runs them) and lists the first page | `jobs`, `seconds`, `list_ms` |
//! | `memory_drain` | opens the file `memory_enqueue` left and runs every job to completion | `jobs`, `seconds` |
//!
//! The enqueue workloads enqueue jobs due in an hour, so no worker competes
//! with them for the writer: they measure the enqueue path alone. The latency
//! probes have priority 1 over the load's 0, so `latency_loaded` measures
//! how long the queue takes to start a job that is first in line while the
//! writer and the pool are busy, not how long the load's backlog is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jobqueue::sqlite::SqliteOptions;
use jobqueue::{
    Clock, JobFilter, JobId, JobQueue, JobQueueBuilder, JobStatus, NewJob, PhaseError, Pipeline,
    SystemClock, phase_fn,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::Args;

/// Runs the façade workload `args.workload`.
pub(crate) async fn run(args: &Args) -> Result<Value> {
    match args.workload.as_str() {
        "noop_1phase" => noop(args, 1).await,
        "noop_3phase" => noop(args, 3).await,
        "enqueue_single" => enqueue_single(args).await,
        "enqueue_concurrent" => enqueue_concurrent(args).await,
        "latency_idle" => latency(args, false).await,
        "latency_loaded" => latency(args, true).await,
        "memory_enqueue" => memory_enqueue(args).await,
        "memory_drain" => memory_drain(args).await,
        other => bail!("jobqueue-bench has no workload {other:?}"),
    }
}

/// The queue every workload starts from.
fn builder(args: &Args) -> JobQueueBuilder {
    JobQueue::builder()
        .sqlite(&args.db)
        .sqlite_options(SqliteOptions::default().synchronous(args.synchronous))
        .concurrency(args.concurrency)
}

/// Counts the jobs whose last phase ran. The phase runs before its
/// completion is committed, so the workloads wait for the commits with
/// [`wait_completed`] once the count is reached.
#[derive(Default)]
struct Counter {
    done: AtomicUsize,
    changed: Notify,
}

impl Counter {
    fn bump(&self) {
        self.done.fetch_add(1, Ordering::AcqRel);
        // `notify_one` keeps a permit when nobody waits, so a bump between
        // the check and the wait in `reach` is not lost.
        self.changed.notify_one();
    }

    fn count(&self) -> usize {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until `n` jobs counted. Every second without a count it looks
    /// whether a job of `pipeline` ended otherwise, so a failing workload
    /// stops with an error instead of waiting for ever.
    async fn reach(&self, n: usize, queue: &JobQueue, pipeline: &str) -> Result<()> {
        while self.count() < n {
            let quiet = tokio::time::timeout(Duration::from_secs(1), self.changed.notified())
                .await
                .is_err();
            if quiet {
                let ended_badly = queue.store().counts().await?.into_iter().find(|c| {
                    c.pipeline == pipeline
                        && matches!(c.status, JobStatus::Failed | JobStatus::Cancelled)
                });
                if let Some(c) = ended_badly {
                    bail!("{} jobs of {pipeline} ended {:?}", c.count, c.status);
                }
            }
        }
        Ok(())
    }
}

/// A pipeline of `phases` phases that do nothing; the last one counts.
fn noop_pipeline(name: &str, phases: usize, counter: &Arc<Counter>) -> Pipeline {
    let mut pipeline = Pipeline::new(name);
    for i in 1..=phases {
        let counter = (i == phases).then(|| counter.clone());
        pipeline = pipeline.phase(phase_fn(format!("phase{i}"), move |_ctx| {
            let counter = counter.clone();
            async move {
                if let Some(c) = counter {
                    c.bump();
                }
                Ok::<_, PhaseError>(Value::Null)
            }
        }));
    }
    pipeline
}

/// Enqueues `jobs` jobs of `pipeline`, `batch` per call.
async fn enqueue_all(queue: &JobQueue, pipeline: &str, jobs: usize, batch: usize) -> Result<()> {
    let mut left = jobs;
    while left > 0 {
        let n = left.min(batch);
        queue
            .enqueue_batch((0..n).map(|_| NewJob::new(pipeline)).collect())
            .await?;
        left -= n;
    }
    Ok(())
}

/// Waits until the store has `jobs` completed jobs of `pipeline`, looking
/// every millisecond (only the last few jobs are still in flight when this
/// is called, so it looks a few times).
async fn wait_completed(queue: &JobQueue, pipeline: &str, jobs: usize) -> Result<()> {
    loop {
        let completed: u64 = queue
            .store()
            .counts()
            .await?
            .iter()
            .filter(|c| c.pipeline == pipeline && c.status == JobStatus::Completed)
            .map(|c| c.count)
            .sum();
        if usize::try_from(completed)? >= jobs {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until job `id` has finished.
async fn wait_finished(queue: &JobQueue, id: JobId) -> Result<()> {
    loop {
        let job = queue.get(id).await?.context("the probe job vanished")?;
        match job.status {
            JobStatus::Completed => return Ok(()),
            JobStatus::Queued | JobStatus::Running => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => bail!("the probe job ended {other:?}"),
        }
    }
}

fn seconds_since(began: Instant) -> f64 {
    began.elapsed().as_secs_f64()
}

async fn noop(args: &Args, phases: usize) -> Result<Value> {
    let counter = Arc::new(Counter::default());
    let queue = builder(args)
        .pipeline(noop_pipeline("noop", phases, &counter))
        .start()
        .await?;
    let began = Instant::now();
    enqueue_all(&queue, "noop", args.jobs, args.batch).await?;
    counter.reach(args.jobs, &queue, "noop").await?;
    wait_completed(&queue, "noop", args.jobs).await?;
    let seconds = seconds_since(began);
    queue.shutdown().await;
    Ok(json!({ "jobs": args.jobs, "phases": phases, "seconds": seconds }))
}

/// A job due in an hour (see the module doc).
fn later() -> NewJob {
    NewJob::new("noop").run_at(SystemClock.now() + Duration::from_secs(3600))
}

/// A queue with the one-phase `noop` pipeline, for the enqueue workloads.
async fn noop_queue(args: &Args) -> Result<JobQueue> {
    let counter = Arc::new(Counter::default());
    Ok(builder(args)
        .pipeline(noop_pipeline("noop", 1, &counter))
        .start()
        .await?)
}

async fn enqueue_single(args: &Args) -> Result<Value> {
    let queue = noop_queue(args).await?;
    let began = Instant::now();
    for _ in 0..args.jobs {
        queue.enqueue_job(later()).await?;
    }
    let seconds = seconds_since(began);
    queue.shutdown().await;
    Ok(json!({ "jobs": args.jobs, "seconds": seconds }))
}

async fn enqueue_concurrent(args: &Args) -> Result<Value> {
    let queue = noop_queue(args).await?;
    let per_task = args.jobs / args.tasks;
    let began = Instant::now();
    let tasks: Vec<_> = (0..args.tasks)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    queue.enqueue_job(later()).await?;
                }
                Ok::<_, jobqueue::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let seconds = seconds_since(began);
    queue.shutdown().await;
    Ok(json!({ "jobs": per_task * args.tasks, "seconds": seconds }))
}

async fn latency(args: &Args, loaded: bool) -> Result<Value> {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let probe = Pipeline::new("probe").phase(phase_fn("probe", move |_ctx| {
        // Ignoring a send error is right: the receiver lives as long as the
        // workload.
        let _ = started_tx.send(Instant::now());
        async { Ok::<_, PhaseError>(Value::Null) }
    }));
    let counter = Arc::new(Counter::default());
    let queue = builder(args)
        .pipeline(probe)
        .pipeline(noop_pipeline("load", 1, &counter))
        .start()
        .await?;
    let load = loaded.then(|| {
        let queue = queue.clone();
        let (jobs, batch) = (args.jobs, args.batch);
        tokio::spawn(async move { enqueue_all(&queue, "load", jobs, batch).await })
    });
    if loaded {
        // Probe only once the load is running.
        counter.reach(1, &queue, "load").await?;
    }
    let began = Instant::now();
    let mut latencies = Vec::with_capacity(args.samples);
    let mut enqueues = Vec::with_capacity(args.samples);
    while latencies.len() < args.samples && !(loaded && counter.count() >= args.jobs) {
        let sent = Instant::now();
        let job = queue.enqueue_job(NewJob::new("probe").priority(1)).await?;
        enqueues.push(sent.elapsed().as_secs_f64() * 1e3);
        let started = started_rx.recv().await.context("the probe phase is gone")?;
        latencies.push(started.duration_since(sent).as_secs_f64() * 1e3);
        wait_finished(&queue, job.id).await?;
    }
    let seconds = seconds_since(began);
    let load_jobs_done = counter.count();
    if let Some(load) = load {
        load.abort();
    }
    queue.shutdown().await;
    ensure!(
        !latencies.is_empty(),
        "the load ended before the first probe"
    );
    Ok(json!({
        "jobs": latencies.len(),
        "seconds": seconds,
        "latencies_ms": latencies,
        "enqueue_ms": enqueues,
        "load_jobs_done": load_jobs_done,
    }))
}

async fn memory_enqueue(args: &Args) -> Result<Value> {
    // One job runs a phase that holds until shutdown (it is then queued
    // again, interrupted); with a concurrency of one, every other job stays
    // queued and the pump, with no free slot, claims nothing. (A pipeline
    // cap instead would make every wake-up run a claim that skips the
    // capped pipeline's whole backlog.) The phase has the name
    // `memory_drain`'s has: a job keeps the phase names it was enqueued with.
    let hold = Pipeline::new("mem").phase(phase_fn("phase1", |ctx| async move {
        ctx.cancelled().await;
        Err(PhaseError::retryable("stopped by shutdown"))
    }));
    let queue = JobQueue::builder()
        .sqlite(&args.db)
        .sqlite_options(SqliteOptions::default().synchronous(args.synchronous))
        .concurrency(1)
        .pipeline(hold)
        .shutdown_timeout(Duration::ZERO)
        .start()
        .await?;
    let began = Instant::now();
    enqueue_all(&queue, "mem", args.jobs, args.batch).await?;
    let seconds = seconds_since(began);
    let listed = Instant::now();
    let page = queue.list(JobFilter::default()).await?;
    let list_ms = listed.elapsed().as_secs_f64() * 1e3;
    ensure!(!page.jobs.is_empty(), "the first page is empty");
    queue.shutdown().await;
    Ok(json!({ "jobs": args.jobs, "seconds": seconds, "list_ms": list_ms }))
}

async fn memory_drain(args: &Args) -> Result<Value> {
    let counter = Arc::new(Counter::default());
    let began = Instant::now();
    let queue = builder(args)
        .pipeline(noop_pipeline("mem", 1, &counter))
        .start()
        .await?;
    counter.reach(args.jobs, &queue, "mem").await?;
    wait_completed(&queue, "mem", args.jobs).await?;
    let seconds = seconds_since(began);
    queue.shutdown().await;
    Ok(json!({ "jobs": args.jobs, "seconds": seconds }))
}
