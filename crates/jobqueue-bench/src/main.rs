//! `jobqueue-bench`: runs one workload of `cargo xtask bench` and prints one
//! JSON line that xtask reads.
//!
//! xtask starts this binary once per workload and round, on a fresh SQLite
//! file, so each measurement has a process of its own (a clean heap, its own
//! peak RSS) and nothing carries over from one workload to the next. Every
//! size comes from the command line; xtask owns the table of sizes (full and
//! `--quick`) and the effectum peer (`xtask/peers/effectum`) takes the same
//! arguments and prints the same report.
//!
//! ```text
//! jobqueue-bench WORKLOAD --db PATH [--jobs N] [--batch N] [--concurrency N]
//!                [--tasks N] [--samples N] [--sync normal|full]
//!                [--postgres URL] [--nodes N] [--schema NAME]
//! {"workload":"noop_1phase","jobs":100000,"seconds":6.1,"peak_rss_mb":48.2}
//! ```
//!
//! The workloads and what each report holds are in [`queue`] (through the
//! `jobqueue` façade), [`lifecycle`] (the store alone, and the plain
//! diesel loop) and [`postgres`] (`noop_1phase` on PostgreSQL with one or
//! several processes; `--db` is unused there). Run with:
//! `cargo run --release -p jobqueue-bench -- noop_1phase --db /tmp/b.db --jobs 10000`.

mod lifecycle;
mod postgres;
mod queue;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use jobqueue::sqlite::Synchronous;
use serde_json::{Value, json};

/// What the command line asks for; the defaults are the full-size run's.
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) workload: String,
    pub(crate) db: PathBuf,
    /// Jobs of the workload (for the latency workloads: of the load).
    pub(crate) jobs: usize,
    /// Jobs per `enqueue_batch`.
    pub(crate) batch: usize,
    /// The queue's concurrency (jobs running at once).
    pub(crate) concurrency: usize,
    /// Tasks enqueueing (or, in `store_lifecycle`, cycling jobs) at once.
    pub(crate) tasks: usize,
    /// Latency samples.
    pub(crate) samples: usize,
    pub(crate) synchronous: Synchronous,
    /// The PostgreSQL database of the `pg_` workloads.
    pub(crate) postgres: Option<String>,
    /// The schema a `pg_node` joins.
    pub(crate) schema: Option<String>,
    /// Processes sharing the queue in `pg_noop_1phase`.
    pub(crate) nodes: usize,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let workload = it
        .next()
        .context("usage: jobqueue-bench WORKLOAD --db PATH ...")?;
    let mut args = Args {
        workload,
        db: PathBuf::new(),
        jobs: 100_000,
        batch: 1_000,
        concurrency: 64,
        tasks: 64,
        samples: 1_000,
        synchronous: Synchronous::Normal,
        postgres: None,
        schema: None,
        nodes: 1,
    };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || -> Result<usize> {
            value
                .parse()
                .with_context(|| format!("{flag} takes a number, got {value:?}"))
        };
        match flag.as_str() {
            "--db" => args.db = PathBuf::from(&value),
            "--jobs" => args.jobs = number()?,
            "--batch" => args.batch = number()?.max(1),
            "--concurrency" => args.concurrency = number()?,
            "--tasks" => args.tasks = number()?.max(1),
            "--samples" => args.samples = number()?,
            "--postgres" => args.postgres = Some(value),
            "--schema" => args.schema = Some(value),
            "--nodes" => args.nodes = number()?.max(1),
            "--sync" => {
                args.synchronous = match value.as_str() {
                    "normal" => Synchronous::Normal,
                    "full" => Synchronous::Full,
                    other => bail!("--sync takes normal or full, got {other:?}"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if args.db.as_os_str().is_empty() {
        bail!("--db PATH is required");
    }
    Ok(args)
}

/// The peak resident set of this process (`VmHWM` of `/proc/self/status`),
/// in MiB.
fn peak_rss_mb() -> Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("could not read /proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("VmHWM is not a number")?;
    Ok(kb / 1024.0)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut report: Value = match args.workload.as_str() {
        "raw_lifecycle" => lifecycle::raw(&args)?,
        "store_lifecycle" => lifecycle::store(&args)?,
        _ => {
            // The multi-threaded runtime with one worker per core, as
            // `#[tokio::main]` gives a user's program (and the peer).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("could not start tokio")?;
            match args.workload.as_str() {
                "pg_noop_1phase" => rt.block_on(postgres::run(&args))?,
                "pg_node" => return rt.block_on(postgres::run_node(&args)).map(drop),
                _ => rt.block_on(queue::run(&args))?,
            }
        }
    };
    report["workload"] = json!(args.workload);
    report["peak_rss_mb"] = json!(peak_rss_mb()?);
    #[expect(
        clippy::print_stdout,
        reason = "the report on stdout is this binary's output"
    )]
    {
        println!("{report}");
    }
    Ok(())
}
