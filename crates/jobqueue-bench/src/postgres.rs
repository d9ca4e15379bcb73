//! The PostgreSQL workload: `noop_1phase` on a queue that one or several
//! processes share.
//!
//! | workload | what it does | report |
//! |---|---|---|
//! | `pg_noop_1phase` | in a fresh schema of `--postgres`, starts `--nodes` − 1 node processes (`pg_node`), each a queue running the one-phase `noop` pipeline, and one queue itself; once every node is up, enqueues `--jobs` jobs in batches of `--batch` and waits until all are completed, wherever they ran; drops the schema | `jobs`, `nodes`, `seconds` |
//! | `pg_node` | a node of the above: a queue on `--schema` with `--concurrency` workers; prints `ready`, runs until its stdin closes | — |
//!
//! Run with: `cargo run --release -p jobqueue-bench -- pg_noop_1phase
//! --db - --postgres postgres://postgres@127.0.0.1:5432/test --nodes 3 --jobs 10000`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jobqueue::postgres::{PostgresOptions, PostgresStore};
use jobqueue::{JobQueue, JobStatus, JobStore, PhaseError, Pipeline, RecoverScope, phase_fn};
use serde_json::{Value, json};

use crate::Args;

/// A queue of `concurrency` workers with the `noop` pipeline on `store`.
async fn node(store: Arc<dyn JobStore>, concurrency: usize) -> Result<JobQueue> {
    let noop = Pipeline::new("noop").phase(phase_fn("phase1", |_ctx| async move {
        Ok::<_, PhaseError>(Value::Null)
    }));
    Ok(JobQueue::builder()
        .store(store)
        .recover(RecoverScope::ExpiredLeases)
        .concurrency(concurrency)
        .pipeline(noop)
        .start()
        .await?)
}

async fn connect(args: &Args, schema: &str) -> Result<Arc<dyn JobStore>> {
    let url = args
        .postgres
        .as_deref()
        .context("--postgres URL is required")?;
    let options = PostgresOptions::default()
        .schema(schema)
        .max_connections(args.concurrency.clamp(4, 24));
    Ok(Arc::new(PostgresStore::connect(url, options).await?))
}

/// `pg_node`: runs until stdin closes.
pub(crate) async fn run_node(args: &Args) -> Result<Value> {
    let schema = args.schema.as_deref().context("--schema is required")?;
    let queue = node(connect(args, schema).await?, args.concurrency).await?;
    #[expect(clippy::print_stdout, reason = "the parent waits for this line")]
    {
        println!("ready");
    }
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    queue.shutdown().await;
    Ok(json!({}))
}

/// The other nodes: killed when dropped, if they have not ended.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // Closing stdin asks it to stop; a kill makes sure.
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `pg_noop_1phase`.
pub(crate) async fn run(args: &Args) -> Result<Value> {
    let url = args
        .postgres
        .clone()
        .context("--postgres URL is required")?;
    let schema = format!("jq_bench_{}", std::process::id());
    let store = connect(args, &schema).await?;
    let queue = node(store.clone(), args.concurrency).await?;
    let mut nodes = Nodes(Vec::new());
    for _ in 1..args.nodes.max(1) {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "pg_node",
                "--db",
                "-",
                "--postgres",
                &url,
                "--schema",
                &schema,
            ])
            .args(["--concurrency", &args.concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("could not start a node")?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        nodes.0.push(child);
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        if line.trim() != "ready" {
            bail!("a node did not start: {line:?}");
        }
    }
    let began = Instant::now();
    let mut left = args.jobs;
    while left > 0 {
        let n = left.min(args.batch);
        queue
            .enqueue_batch((0..n).map(|_| jobqueue::NewJob::new("noop")).collect())
            .await?;
        left -= n;
    }
    loop {
        let counts = store.counts().await?;
        let completed: u64 = counts
            .iter()
            .filter(|c| c.status == JobStatus::Completed)
            .map(|c| c.count)
            .sum();
        if usize::try_from(completed)? >= args.jobs {
            break;
        }
        if let Some(c) = counts
            .iter()
            .find(|c| matches!(c.status, JobStatus::Failed | JobStatus::Cancelled))
        {
            bail!("{} jobs ended {:?}", c.count, c.status);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = began.elapsed().as_secs_f64();
    drop(nodes);
    queue.shutdown().await;
    drop_schema(&url, &schema).await?;
    Ok(json!({
        "jobs": args.jobs,
        "nodes": args.nodes.max(1),
        "seconds": seconds,
        "jobs_per_second": args.jobs as f64 / seconds,
    }))
}

async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}
