//! Transactional enqueue and unique jobs on an SQLite file: an order row of
//! the program's own table and the job that ships it commit together, or
//! neither does; a job unique by its input within a period is enqueued
//! once, however often it is asked for.
//!
//! Run with: `cargo run -p jobqueue --example transactional`

#![expect(
    clippy::print_stdout,
    reason = "an example shows what happens by printing it"
)]

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use jobqueue::{JobQueue, JobStatus, NewJob, PhaseError, Pipeline, TxError, phase_fn};
use serde_json::json;

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("jobqueue-transactional-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let queue = JobQueue::builder()
        .sqlite(dir.join("jobs.db"))
        .pipeline(
            Pipeline::new("ship").phase(phase_fn("ship", |ctx| async move {
                Ok::<_, PhaseError>(json!({ "shipped": ctx.input()["order"] }))
            })),
        )
        .start()
        .await?;

    // The program's own table lives in the same file; the program creates it.
    queue
        .enqueue_with(vec![], |conn| {
            conn.batch_execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
        })
        .await?;

    // The order and its job, in one transaction.
    let ship = |order: i64| NewJob::new("ship").input(json!({ "order": order }));
    let (jobs, ()) = queue
        .enqueue_with(vec![ship(1)], |conn| {
            conn.batch_execute("INSERT INTO orders (id) VALUES (1)")
        })
        .await?;
    let done = queue.wait(jobs[0].id).await?;
    println!("order 1: its job is {}", done.status);
    assert_eq!(done.status, JobStatus::Completed);

    // The closure fails after its insert: neither the row nor the job.
    let failed = queue
        .enqueue_with(vec![ship(2)], |conn| {
            conn.batch_execute("INSERT INTO orders (id) VALUES (2)")?;
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(matches!(failed, Err(TxError::Closure(_))));
    let (_, orders) = queue
        .enqueue_with(vec![], |conn| {
            diesel::RunQueryDsl::get_result::<Count>(
                diesel::sql_query("SELECT count(*) AS n FROM orders"),
                conn,
            )
        })
        .await?;
    println!(
        "order 2 rolled back: {} order(s), {} job(s)",
        orders.n,
        queue.counts().await?.total()
    );
    assert_eq!(orders.n, 1);
    assert_eq!(queue.counts().await?.total(), 1);

    // Unique by input within a day: asked for three times, enqueued once.
    let report = || {
        NewJob::new("ship")
            .input(json!({ "order": 1, "report": true }))
            .unique_by_input()
            .unique_for(Duration::from_secs(24 * 3600))
    };
    let first = queue.enqueue_unique(report()).await?;
    let again = queue.enqueue_unique(report()).await?;
    queue.wait(first.job().id).await?;
    let third = queue.enqueue_unique(report()).await?;
    println!(
        "unique report: created {}, then existing {} and {} (window {})",
        first.is_created(),
        !again.is_created(),
        !third.is_created(),
        first.job().period_key.as_deref().unwrap_or("-")
    );
    assert!(first.is_created() && !again.is_created() && !third.is_created());

    queue.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
