//! `effectum-peer`: runs one workload of `cargo xtask bench` on effectum 0.7
//! and prints one JSON line that xtask reads.
//!
//! It takes the same arguments and prints the same report as the
//! `jobqueue-bench` driver, so xtask can put both side by side:
//!
//! ```text
//! effectum-peer WORKLOAD --db PATH [--jobs N] [--batch N] [--concurrency N]
//!               [--tasks N] [--samples N]
//! {"workload":"noop_1phase","jobs":100000,"seconds":4.2,"peak_rss_mb":31.5}
//! ```
//!
//! Workloads: `noop_1phase`, `noop_3phase`, `enqueue_single`,
//! `enqueue_concurrent`, `latency_idle` (its report adds `latencies_ms`).
//!
//! effectum has no phases. A three-phase job is emulated the nearest way its
//! API allows: two `checkpoint_json` calls (each one a write, committed by
//! its writer like our phase transitions) and the completion. A job counts
//! as done when `complete` has returned, that is after its commit.
//!
//! Durability: effectum 0.7 opens its file with `PRAGMA journal = wal`, a
//! pragma SQLite does not know and silently ignores, so the database keeps
//! the default rollback journal (`journal_mode=delete`) with
//! `synchronous=normal`; every commit of its writer then syncs the journal
//! and the database file. xtask reads the journal mode back from the file's
//! header after the run, so the table shows what ran, not what was asked.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use effectum::{Job, JobRunner, Queue, RunningJob, Worker};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// The job type of every workload.
const JOB_TYPE: &str = "noop";

/// What the command line asks for; the defaults are the full-size run's.
struct Args {
    workload: String,
    db: PathBuf,
    jobs: usize,
    batch: usize,
    concurrency: u16,
    tasks: usize,
    samples: usize,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let workload = it
        .next()
        .context("usage: effectum-peer WORKLOAD --db PATH ...")?;
    let mut args = Args {
        workload,
        db: PathBuf::new(),
        jobs: 100_000,
        batch: 1_000,
        concurrency: 64,
        tasks: 64,
        samples: 1_000,
    };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--db" => args.db = value.into(),
            "--jobs" => args.jobs = value.parse().context("--jobs")?,
            "--batch" => args.batch = value.parse().context("--batch")?,
            "--concurrency" => args.concurrency = value.parse().context("--concurrency")?,
            "--tasks" => args.tasks = value.parse().context("--tasks")?,
            "--samples" => args.samples = value.parse().context("--samples")?,
            // Our driver's durability switch; effectum has none to set.
            "--sync" => bail!("effectum has no synchronous setting (it is always NORMAL)"),
            other => bail!("unknown flag {other}"),
        }
    }
    if args.db.as_os_str().is_empty() {
        bail!("--db PATH is required");
    }
    Ok(args)
}

/// Shared with every running job: counts finished jobs, and for the latency
/// workload says when each job started.
#[derive(Debug)]
struct Ctx {
    phases: usize,
    done: AtomicUsize,
    /// Told after each completion (`notify_one` keeps a permit, so a
    /// completion before the wait is not lost).
    finished: Notify,
    started: mpsc::UnboundedSender<Instant>,
}

async fn run_job(job: RunningJob, ctx: Arc<Ctx>) -> Result<(), effectum::Error> {
    // Ignoring a send error is right: only the latency workload listens.
    let _ = ctx.started.send(Instant::now());
    // The phases before the last one are checkpoints; the last is the
    // completion itself.
    for phase in 1..ctx.phases {
        job.checkpoint_json(json!({ "phase": phase })).await?;
    }
    job.complete(json!({ "phase": ctx.phases })).await?;
    ctx.done.fetch_add(1, Ordering::AcqRel);
    ctx.finished.notify_one();
    Ok(())
}

struct Running {
    queue: Queue,
    ctx: Arc<Ctx>,
    started: mpsc::UnboundedReceiver<Instant>,
    _worker: Worker,
}

async fn start(args: &Args, phases: usize) -> Result<Running> {
    let queue = Queue::new(&args.db)
        .await
        .context("opening effectum's queue")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        phases,
        done: AtomicUsize::new(0),
        finished: Notify::new(),
        started: tx,
    });
    let runner = JobRunner::builder(JOB_TYPE, run_job).build();
    let worker = Worker::builder(&queue, ctx.clone())
        .max_concurrency(args.concurrency)
        .jobs([runner])
        .build()
        .await
        .context("starting effectum's worker")?;
    Ok(Running {
        queue,
        ctx,
        started: rx,
        _worker: worker,
    })
}

/// Enqueues `args.jobs` jobs in batches and waits until every one completed.
async fn noop(args: &Args, phases: usize) -> Result<Value> {
    let run = start(args, phases).await?;
    let began = Instant::now();
    let mut left = args.jobs;
    while left > 0 {
        let n = left.min(args.batch);
        let jobs = (0..n).map(|_| Job::builder(JOB_TYPE).build()).collect();
        run.queue.add_jobs(jobs).await?;
        left -= n;
    }
    while run.ctx.done.load(Ordering::Acquire) < args.jobs {
        run.ctx.finished.notified().await;
    }
    let seconds = began.elapsed().as_secs_f64();
    run.queue.close(Duration::from_secs(10)).await?;
    Ok(json!({ "jobs": args.jobs, "seconds": seconds }))
}

/// A job an hour ahead, so no worker competes for the writer while the
/// enqueue workloads measure enqueue alone.
fn later() -> Job {
    Job::builder(JOB_TYPE)
        .run_at(time::OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .build()
}

async fn enqueue_single(args: &Args) -> Result<Value> {
    let queue = Queue::new(&args.db).await?;
    let began = Instant::now();
    for _ in 0..args.jobs {
        queue.add_job(later()).await?;
    }
    let seconds = began.elapsed().as_secs_f64();
    queue.close(Duration::from_secs(10)).await?;
    Ok(json!({ "jobs": args.jobs, "seconds": seconds }))
}

async fn enqueue_concurrent(args: &Args) -> Result<Value> {
    let queue = Arc::new(Queue::new(&args.db).await?);
    let per_task = args.jobs / args.tasks;
    let began = Instant::now();
    let tasks: Vec<_> = (0..args.tasks)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    queue.add_job(later()).await?;
                }
                Ok::<_, effectum::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let seconds = began.elapsed().as_secs_f64();
    queue.close(Duration::from_secs(10)).await?;
    Ok(json!({ "jobs": per_task * args.tasks, "seconds": seconds }))
}

/// One job at a time: the time from `add_job` to the job's start, then wait
/// for its completion before the next.
async fn latency_idle(args: &Args) -> Result<Value> {
    let mut run = start(args, 1).await?;
    let mut latencies = Vec::with_capacity(args.samples);
    let began = Instant::now();
    for i in 0..args.samples {
        let sent = Instant::now();
        run.queue.add_job(Job::builder(JOB_TYPE).build()).await?;
        let started = run.started.recv().await.context("the worker stopped")?;
        latencies.push(started.duration_since(sent).as_secs_f64() * 1e3);
        while run.ctx.done.load(Ordering::Acquire) <= i {
            run.ctx.finished.notified().await;
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    run.queue.close(Duration::from_secs(10)).await?;
    Ok(json!({ "jobs": args.samples, "seconds": seconds, "latencies_ms": latencies }))
}

/// The peak resident set of this process (`VmHWM`), in MiB.
fn peak_rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut report = match args.workload.as_str() {
        "noop_1phase" => noop(&args, 1).await?,
        "noop_3phase" => noop(&args, 3).await?,
        "enqueue_single" => enqueue_single(&args).await?,
        "enqueue_concurrent" => enqueue_concurrent(&args).await?,
        "latency_idle" => latency_idle(&args).await?,
        other => bail!("effectum-peer has no workload {other:?}"),
    };
    report["workload"] = json!(args.workload);
    report["peak_rss_mb"] = json!(peak_rss_mb()?);
    println!("{report}");
    Ok(())
}
