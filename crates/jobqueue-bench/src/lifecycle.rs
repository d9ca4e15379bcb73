//! The lifecycle of a job without phases, insert → claim → complete, below
//! the façade: through the store alone, and as a plain diesel loop.
//!
//! - `raw_lifecycle`: one diesel connection doing the three statements
//!   (insert the job, claim it with `UPDATE ... RETURNING`, mark it
//!   completed), one `BEGIN IMMEDIATE` transaction each, no events, on the
//!   store's schema with the store's pragmas (WAL, `synchronous` as asked,
//!   `temp_store=MEMORY`, `wal_autocheckpoint=4000`). It is what a
//!   hand-written queue on SQLite does at the least, and the baseline the
//!   store's group commit is held to.
//! - `store_lifecycle`: `--tasks` tokio tasks, each looping `enqueue` →
//!   `claim(1)` → `complete_job` through [`SqliteStore`]: three writes per
//!   job, each with its events, committed by the writer in groups.
//!
//! Both report `{"jobs": N, "seconds": F}`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use jobqueue::core::ClaimRequest;
use jobqueue::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use jobqueue::{JobId, JobStore, NewJob};
use serde_json::{Value, json};

use crate::Args;

/// The `raw_lifecycle` workload.
pub(crate) fn raw(args: &Args) -> Result<Value> {
    // The store creates the schema, then closes: the loop runs on exactly the
    // tables and indexes the store uses.
    drop(SqliteStore::open(&args.db, SqliteOptions::default()).context("creating the schema")?);
    let mut conn = SqliteConnection::establish(path_str(&args.db)?)?;
    let synchronous = match args.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 4000;"
    ))?;
    let started = Instant::now();
    for i in 0..args.jobs {
        let now = i64::try_from(i)?;
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
        })?;
        let claimed: Vec<Claimed> = conn.immediate_transaction(|c| {
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
        })?;
        let claimed = claimed.first().context("the claim found no job")?;
        conn.immediate_transaction(|c| {
            diesel::sql_query(
                "UPDATE jobs SET status = 'completed', finished_at = ?, lease = NULL, \
                 lease_expires_at = NULL WHERE id = ?",
            )
            .bind::<BigInt, _>(now)
            .bind::<Text, _>(&claimed.id)
            .execute(c)
        })?;
    }
    Ok(report(args.jobs, started.elapsed()))
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    id: String,
}

/// The `store_lifecycle` workload.
pub(crate) fn store(args: &Args) -> Result<Value> {
    let store = SqliteStore::open(
        &args.db,
        SqliteOptions::default().synchronous(args.synchronous),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tasks = args.tasks;
    let per_task = args.jobs / tasks;
    let (done, elapsed) = rt.block_on(async move {
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut done = 0;
                    for _ in 0..per_task {
                        store.enqueue(NewJob::new("bench")).await?;
                        for c in store.claim(ClaimRequest::new(1)).await? {
                            store.complete_job(&c.lease).await?;
                            done += 1;
                        }
                    }
                    Ok::<_, jobqueue::StoreError>(done)
                })
            })
            .collect();
        let mut done = 0;
        for h in handles {
            done += h.await??;
        }
        let elapsed = started.elapsed();
        store.close().await;
        anyhow::Ok((done, elapsed))
    })?;
    ensure!(
        done == per_task * tasks,
        "{done} of {} jobs completed",
        per_task * tasks
    );
    Ok(report(done, elapsed))
}

fn report(jobs: usize, elapsed: Duration) -> Value {
    json!({ "jobs": jobs, "seconds": elapsed.as_secs_f64() })
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
