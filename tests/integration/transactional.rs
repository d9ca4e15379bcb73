//! Transactional enqueue through the façade, with a table of the program's
//! own: `enqueue_with` on SQLite (the closure and the jobs in one writer
//! transaction) and `enqueue_in` on PostgreSQL (inside the program's diesel
//! transaction, when `JOBQUEUE_TEST_POSTGRES_URL` is set). Each commits
//! both or neither, and a committed job runs.

use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl as _};
use jobqueue::{
    ErrorKind, EventType, JobQueue, JobStatus, NewJob, PhaseError, Pipeline, TxError, phase_fn,
};
use jobqueue_tests::{Recorder, StoreKind};
use serde_json::json;

use crate::Env;
use crate::everyday::within;

/// `ship` completes with the order number of its input.
fn ship() -> Pipeline {
    Pipeline::new("ship").phase(phase_fn("ship", |ctx| async move {
        Ok::<_, PhaseError>(json!({ "shipped": ctx.input()["order"] }))
    }))
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The orders with id `id` in the SQLite file, read in the writer's
/// transaction.
async fn sqlite_orders(queue: &JobQueue, id: i64) -> i64 {
    let (_, n) = queue
        .enqueue_with(vec![], move |conn| {
            let query = diesel::sql_query("SELECT count(*) AS n FROM orders WHERE id = ?")
                .bind::<BigInt, _>(id);
            diesel::RunQueryDsl::get_result::<Count>(query, conn).map(|c| c.n)
        })
        .await
        .unwrap();
    n
}

fn order(id: i64) -> NewJob {
    NewJob::new("ship").input(json!({ "order": id }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_with_commits_or_rolls_back_with_the_programs_writes() {
    let env = Env::new(StoreKind::Sqlite);
    // The façade's own SQLite store (`.sqlite(path)`), not a handed store.
    let queue = JobQueue::builder()
        .sqlite(env.db_path())
        .poll_interval(Duration::from_millis(100))
        .pipeline(ship())
        .start()
        .await
        .unwrap();
    let rec = Recorder::attach(&queue);
    queue
        .enqueue_with(vec![], |conn| {
            conn.batch_execute("CREATE TABLE orders (id INTEGER PRIMARY KEY NOT NULL)")
        })
        .await
        .unwrap();

    // Commit: the row and the job, and the job runs.
    let (jobs, inserted) = queue
        .enqueue_with(vec![order(1)], |conn| {
            conn.batch_execute("INSERT INTO orders (id) VALUES (1)")
                .map(|()| 1)
        })
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    let done = within("the committed job", queue.wait(jobs[0].id))
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(sqlite_orders(&queue, 1).await, 1);
    let last = queue.store().last_seq().await.unwrap();

    // The closure fails after it wrote: neither its row nor the job.
    let r = queue
        .enqueue_with(vec![order(2)], |conn| {
            conn.batch_execute("INSERT INTO orders (id) VALUES (2)")?;
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(matches!(r, Err(TxError::Closure(_))), "{r:?}");
    // A job refused by the store (its key is held): neither.
    let held = queue
        .enqueue_job(order(9).unique_key("held").run_at(in_an_hour()))
        .await
        .unwrap();
    let last = last.max(queue.store().last_seq().await.unwrap());
    let r = queue
        .enqueue_with(vec![order(3).unique_key("held")], |conn| {
            conn.batch_execute("INSERT INTO orders (id) VALUES (3)")
        })
        .await;
    match r {
        Err(TxError::Queue(jobqueue::Error::Store(e))) => {
            assert_eq!(e.kind(), ErrorKind::Duplicate);
            assert_eq!(e.duplicate_of(), Some(held.id));
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // An unknown pipeline: refused before the closure runs.
    let r = queue
        .enqueue_with(vec![NewJob::new("nope")], |_| -> Result<(), String> {
            panic!("the closure must not run")
        })
        .await;
    assert!(matches!(r, Err(TxError::Queue(_))), "{r:?}");
    assert_eq!(sqlite_orders(&queue, 2).await, 0);
    assert_eq!(sqlite_orders(&queue, 3).await, 0);
    assert_eq!(queue.store().last_seq().await.unwrap(), last, "no event");
    assert_eq!(queue.counts().await.unwrap().total(), 2);
    assert!(
        rec.events()
            .iter()
            .all(|e| e.job_id == Some(jobs[0].id) || e.job_id == Some(held.id)),
        "only the committed jobs' events were published"
    );
    queue.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_with_needs_the_sqlite_store() {
    let queue = JobQueue::builder()
        .memory()
        .pipeline(ship())
        .start()
        .await
        .unwrap();
    let r = queue
        .enqueue_with(vec![order(1)], |_| Ok::<_, String>(()))
        .await;
    assert!(
        matches!(r, Err(TxError::Queue(jobqueue::Error::Config(ref m))) if m.contains("SQLite")),
        "{r:?}"
    );
    assert_eq!(queue.counts().await.unwrap().total(), 0);
    queue.shutdown().await;
}

fn in_an_hour() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + Duration::from_secs(3600)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts the orders with id `id` on `conn`.
async fn pg_orders(conn: &mut AsyncPgConnection, id: i64) -> i64 {
    diesel::sql_query("SELECT count(*) AS n FROM orders WHERE id = $1")
        .bind::<BigInt, _>(id)
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}

async fn insert_order(conn: &mut AsyncPgConnection, id: i64) -> Result<(), BoxError> {
    diesel::sql_query("INSERT INTO orders (id) VALUES ($1)")
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_commits_or_rolls_back_with_the_programs_transaction() {
    crate::postgres::in_schema("jq_tx", |url| async move {
        let queue = JobQueue::builder()
            .postgres(url.clone())
            .poll_interval(Duration::from_secs(60))
            .pipeline(ship())
            .start()
            .await
            .unwrap();
        let rec = Recorder::attach(&queue);
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        diesel_async::SimpleAsyncConnection::batch_execute(
            &mut conn,
            "CREATE TABLE orders (id BIGINT PRIMARY KEY)",
        )
        .await
        .unwrap();
        let queue = Arc::new(queue);

        // Commit: the row and the job; the commit's notice wakes the pump
        // (its poll interval is a minute) and the job runs.
        let q = queue.clone();
        let job = conn
            .transaction::<_, BoxError, _>(async |conn| {
                insert_order(conn, 1).await?;
                Ok(q.enqueue_in(conn, order(1)).await?)
            })
            .await
            .unwrap();
        rec.wait_for(job.id, EventType::JobCompleted).await;
        assert_eq!(pg_orders(&mut conn, 1).await, 1);

        // Rollback: no row, no job, no event.
        let q = queue.clone();
        let mut rolled_back = None;
        let r = conn
            .transaction::<(), BoxError, _>(async |conn| {
                let rolled_back = &mut rolled_back;
                insert_order(conn, 2).await?;
                *rolled_back = Some(q.enqueue_in(conn, order(2)).await?.id);
                Err("the program changed its mind".into())
            })
            .await;
        assert!(r.is_err());
        let rolled_back = rolled_back.unwrap();
        assert_eq!(pg_orders(&mut conn, 2).await, 0);
        assert!(queue.get(rolled_back).await.unwrap().is_none());

        // Rolled back to a savepoint around the enqueue, then committed:
        // the program's row stays, the job does not.
        let q = queue.clone();
        let mut in_savepoint = None;
        conn.transaction::<(), BoxError, _>(async |conn| {
            let in_savepoint = &mut in_savepoint;
            insert_order(conn, 3).await?;
            let inner = conn
                .transaction::<(), BoxError, _>(async |conn| {
                    *in_savepoint = Some(q.enqueue_in(conn, order(3)).await?.id);
                    Err("undo the enqueue only".into())
                })
                .await;
            assert!(inner.is_err());
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(pg_orders(&mut conn, 3).await, 1);
        assert!(queue.get(in_savepoint.unwrap()).await.unwrap().is_none());

        // A refused job (its key is held) leaves the transaction usable.
        let held = queue
            .enqueue_job(order(9).unique_key("held").run_at(in_an_hour()))
            .await
            .unwrap();
        let q = queue.clone();
        conn.transaction::<(), BoxError, _>(async |conn| {
            let e = q
                .enqueue_in(conn, order(4).unique_key("held"))
                .await
                .unwrap_err();
            assert!(
                matches!(&e, jobqueue::Error::Store(e) if e.duplicate_of() == Some(held.id)),
                "{e:?}"
            );
            insert_order(conn, 4).await
        })
        .await
        .unwrap();
        assert_eq!(pg_orders(&mut conn, 4).await, 1);

        // None of the rolled-back reservations holds readers back: a later
        // job's events reach the subscribers, and every event arrived once,
        // in order, without gaps but the rolled-back numbers.
        let later = queue.enqueue_job(order(5)).await.unwrap();
        rec.wait_for(later.id, EventType::JobCompleted).await;
        let seqs: Vec<u64> = rec.events().iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert!(
            rec.events()
                .iter()
                .all(|e| e.job_id != Some(rolled_back) && e.job_id != in_savepoint),
            "no event of a rolled-back job"
        );
        assert_eq!(queue.counts().await.unwrap().total(), 3);
        queue.shutdown().await;
    })
    .await;
}

/// A transaction left open after `enqueue_in` holds back readers of the
/// event log, not writers: a job enqueued meanwhile runs, and once the
/// transaction commits, every event arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_holds_back_readers_not_writers() {
    crate::postgres::in_schema("jq_tx_long", |url| async move {
        let queue = JobQueue::builder()
            .postgres(url.clone())
            .poll_interval(Duration::from_millis(100))
            .pipeline(ship())
            .start()
            .await
            .unwrap();
        let rec = Recorder::attach(&queue);
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        diesel_async::SimpleAsyncConnection::batch_execute(
            &mut conn,
            "CREATE TABLE orders (id BIGINT PRIMARY KEY)",
        )
        .await
        .unwrap();
        let (opened, open) = tokio::sync::oneshot::channel::<jobqueue::JobId>();
        let (commit, committed) = tokio::sync::oneshot::channel::<()>();
        let q = queue.clone();
        let tx = tokio::spawn(async move {
            conn.transaction::<_, BoxError, _>(async |conn| {
                insert_order(conn, 1).await?;
                let job = q.enqueue_in(conn, order(1)).await?;
                let _ = opened.send(job.id);
                let _ = committed.await;
                Ok(job)
            })
            .await
        });
        let in_tx = within("the enqueue in the open transaction", open)
            .await
            .unwrap();
        // A writer is not held back: this job runs to its end meanwhile.
        let other = queue.enqueue_job(order(2)).await.unwrap();
        within("the other job to complete", async {
            loop {
                let j = queue.get(other.id).await.unwrap().unwrap();
                if j.status == JobStatus::Completed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            !rec.types_of(other.id).contains(&EventType::JobCompleted),
            "a reader passed a number that may still commit"
        );
        let _ = commit.send(());
        let job = tx.await.unwrap().unwrap();
        assert_eq!(job.id, in_tx);
        rec.wait_for(in_tx, EventType::JobCompleted).await;
        rec.wait_for(other.id, EventType::JobCompleted).await;
        let events = rec.events();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (seqs[0]..seqs[0] + seqs.len() as u64).collect::<Vec<_>>(),
            "gap-free and in order"
        );
        assert_eq!(
            events[0].job_id,
            Some(in_tx),
            "the reserved number comes first"
        );
        queue.shutdown().await;
    })
    .await;
}
