//! Throughput of the SQLite store: jobs/s through insert -> claim -> complete.
//!
//! Run with: `cargo bench -p jobqueue-store-sqlite --bench store`
//! (or `cargo xtask bench store`). Set `JOBQUEUE_BENCH_JOBS` to change the
//! number of jobs (default 20000).
//!
//! Two measurements on fresh files in the same run, same schema, same
//! pragmas (WAL, `synchronous=NORMAL`, `temp_store=MEMORY`,
//! `wal_autocheckpoint=4000`), alternated over three rounds; the medians are
//! printed, since other work on the machine moves single runs a lot:
//! - **store**: 64 tokio tasks, each looping `enqueue` -> `claim(1)` ->
//!   `complete_job` on a job without phases, through [`SqliteStore`]: three
//!   writes per job, each with its events, committed by the writer in groups.
//! - **plain loop**: one diesel connection doing the same three statements
//!   (insert the job, claim it with `UPDATE ... RETURNING`, mark it
//!   completed), one `BEGIN IMMEDIATE` transaction each, no events.
//!
//! It prints both rates and their ratio; the target is at least 2.5x.

#![expect(clippy::print_stdout, reason = "a benchmark prints its results")]
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use jobqueue_core::{ClaimRequest, JobId, JobStore, NewJob};
use jobqueue_store_sqlite::{SqliteOptions, SqliteStore};

const TASKS: usize = 64;

fn jobs_wanted() -> usize {
    std::env::var("JOBQUEUE_BENCH_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn bench_store(dir: &std::path::Path, jobs: usize) -> Duration {
    let store = SqliteStore::open(dir.join("store.db"), SqliteOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let per_task = jobs / TASKS;
    rt.block_on(async move {
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut done = 0;
                    for _ in 0..per_task {
                        store.enqueue(NewJob::new("bench")).await.unwrap();
                        for c in store.claim(ClaimRequest::new(1)).await.unwrap() {
                            store.complete_job(&c.lease).await.unwrap();
                            done += 1;
                        }
                    }
                    done
                })
            })
            .collect();
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap();
        }
        let elapsed = started.elapsed();
        assert_eq!(done, per_task * TASKS, "every job completes");
        elapsed
    })
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    id: String,
}

fn bench_plain(dir: &std::path::Path, jobs: usize) -> Duration {
    let path = dir.join("plain.db");
    // The store creates the same schema; then it is closed.
    drop(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(
        "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 4000;",
    )
    .unwrap();
    let jobs = (jobs / TASKS) * TASKS;
    let started = Instant::now();
    for i in 0..jobs {
        let now = i64::try_from(i).unwrap();
        let id = JobId::new().to_string();
        conn.immediate_transaction(|c| {
            diesel::sql_query(
                "INSERT INTO jobs (id, pipeline, status, input, priority, attempt, max_attempts, \
                 created_at, run_at, cancel_requested) \
                 VALUES (?, 'bench', 'queued', 'null', 0, 0, 3, ?, ?, 0)",
            )
            .bind::<Text, _>(&id)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(now)
            .execute(c)
        })
        .unwrap();
        let claimed: Vec<Claimed> = conn
            .immediate_transaction(|c| {
                diesel::sql_query(
                    "UPDATE jobs SET status = 'running', attempt = attempt + 1, started_at = ?, \
                     lease = ?, lease_expires_at = ? WHERE id IN (SELECT id FROM jobs \
                     WHERE status = 'queued' AND run_at <= ? \
                     ORDER BY priority DESC, run_at, created_at, id LIMIT 1) RETURNING id",
                )
                .bind::<BigInt, _>(now)
                .bind::<Text, _>(JobId::new().to_string())
                .bind::<BigInt, _>(now + 30_000_000)
                .bind::<BigInt, _>(now)
                .load(c)
            })
            .unwrap();
        conn.immediate_transaction(|c| {
            diesel::sql_query(
                "UPDATE jobs SET status = 'completed', finished_at = ?, lease = NULL, \
                 lease_expires_at = NULL WHERE id = ?",
            )
            .bind::<BigInt, _>(now)
            .bind::<Text, _>(&claimed[0].id)
            .execute(c)
        })
        .unwrap();
    }
    started.elapsed()
}

fn rate(jobs: usize, d: Duration) -> f64 {
    jobs as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    const ROUNDS: usize = 3;
    let jobs = (jobs_wanted() / TASKS).max(1) * TASKS;
    let mut plain_rates = Vec::new();
    let mut store_rates = Vec::new();
    println!("insert -> claim -> complete, {jobs} jobs per run, WAL, synchronous=NORMAL");
    for round in 1..=ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let plain = rate(jobs, bench_plain(dir.path(), jobs));
        let store = rate(jobs, bench_store(dir.path(), jobs));
        println!("round {round}: store {store:>8.0} jobs/s, plain loop {plain:>8.0} jobs/s");
        plain_rates.push(plain);
        store_rates.push(store);
    }
    let plain_rate = median(plain_rates);
    let store_rate = median(store_rates);
    let ratio = store_rate / plain_rate;
    println!("median of {ROUNDS} rounds:");
    println!("store (group commit, {TASKS} tasks):  {store_rate:>10.0} jobs/s");
    println!("plain diesel loop (1 tx/statement): {plain_rate:>10.0} jobs/s");
    println!(
        "ratio: {ratio:.2}x (target >= 2.5x){}",
        if ratio >= 2.5 { "" } else { "  BELOW TARGET" }
    );
}
