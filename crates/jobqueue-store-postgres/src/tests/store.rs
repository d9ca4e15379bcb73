//! What is particular to the PostgreSQL store: its schema against the
//! database's catalogue, the claim's plan, migrations, errors, several
//! stores sharing one schema, cancelled calls and closing.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jobqueue_core::testing::RecordingSink;
use jobqueue_core::{
    ClaimRequest, Clock, ErrorKind, EventFilter, FailureOutcome, JobFilter, JobStore, ManualClock,
    NewJob, RecoverScope, StoreError,
};
use serde_json::json;

use super::db::{in_schema, runtime, url};
use crate::{PostgresOptions, PostgresStore, codegen};

fn manual() -> Arc<ManualClock> {
    Arc::new(ManualClock::default())
}

#[track_caller]
fn assert_kind<T: std::fmt::Debug>(r: Result<T, StoreError>, kind: ErrorKind) -> StoreError {
    match r {
        Ok(v) => panic!("expected a {kind:?} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "wrong kind for {e}");
            e
        }
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct CatalogColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    pg_type: String,
    #[diesel(sql_type = Text)]
    nullable: String,
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    line: String,
}

#[derive(QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The model `codegen` parses from the migrations (and renders schema.rs
/// from) is what PostgreSQL reports after running them.
#[test]
fn the_parsed_schema_is_the_databases() {
    in_schema(|scratch| async move {
        let _store = scratch.store(manual()).await;
        let mut conn = scratch.connection().await;
        let names: Vec<Line> = diesel::sql_query(
            "SELECT table_name::text AS line FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name <> '__diesel_schema_migrations' \
             ORDER BY table_name",
        )
        .load(&mut conn)
        .await
        .unwrap();
        let parsed = codegen::tables().unwrap();
        let parsed_names: Vec<&str> = parsed.iter().map(|t| t.name.as_str()).collect();
        let names: Vec<&str> = names.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(parsed_names, names);
        for table in &parsed {
            let columns: Vec<CatalogColumn> = diesel::sql_query(
                "SELECT column_name::text AS name, udt_name::text AS pg_type, \
                        is_nullable::text AS nullable \
                 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 \
                 ORDER BY ordinal_position",
            )
            .bind::<Text, _>(&table.name)
            .load(&mut conn)
            .await
            .unwrap();
            let expected: Vec<CatalogColumn> = table
                .columns
                .iter()
                .map(|c| CatalogColumn {
                    name: c.name.clone(),
                    pg_type: c.pg_type.to_owned(),
                    nullable: if c.nullable { "YES" } else { "NO" }.to_owned(),
                })
                .collect();
            assert_eq!(columns, expected, "columns of {}", table.name);
            let key: Vec<Line> = diesel::sql_query(
                "SELECT a.attname::text AS line FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::regclass AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
            )
            .bind::<Text, _>(&table.name)
            .load(&mut conn)
            .await
            .unwrap();
            let key: Vec<&str> = key.iter().map(|l| l.line.as_str()).collect();
            assert_eq!(key, table.primary_key, "primary key of {}", table.name);
        }
    });
}

/// The claim walks `jobs_claim` in its order (no sort), also as a generic
/// plan, which is what a long-lived prepared statement ends up with.
#[test]
fn the_claim_walks_its_index_in_order() {
    in_schema(|scratch| async move {
        let store = scratch.store(manual()).await;
        let specs = (0..500)
            .map(|i| NewJob::new(format!("p{}", i % 5)).priority(i % 3))
            .collect();
        store.enqueue_batch(specs).await.unwrap();
        let mut conn = scratch.connection().await;
        conn.batch_execute("ANALYZE jobs; SET plan_cache_mode = force_generic_plan")
            .await
            .unwrap();
        conn.batch_execute(&format!(
            "PREPARE claim (timestamptz, text[], text[], int8) AS {}",
            crate::ops::CLAIM_SQL.as_str()
        ))
        .await
        .unwrap();
        for args in ["now(), '{}', NULL, 10", "now(), '{p1}', '{p2,p3}', 64"] {
            let plan: Vec<PlanLine> =
                diesel::sql_query(format!("EXPLAIN (COSTS OFF) EXECUTE claim ({args})"))
                    .load(&mut conn)
                    .await
                    .unwrap();
            let plan: Vec<&str> = plan.iter().map(|l| l.line.as_str()).collect();
            let text = plan.join("\n");
            assert!(
                text.contains("Index Scan using jobs_claim on jobs"),
                "the claim does not use jobs_claim:\n{text}"
            );
            assert!(!text.contains("Sort"), "the claim sorts:\n{text}");
            assert!(text.contains("LockRows"), "{text}");
        }
    });
}

/// Stores starting together on a fresh schema migrate it once; a later
/// one finds it migrated.
#[test]
fn migrations_run_once_under_the_schema_lock() {
    in_schema(|scratch| async move {
        let starts = (0..4).map(|_| {
            let scratch = scratch.clone();
            tokio::spawn(async move { scratch.store(manual()).await })
        });
        for start in starts {
            start.await.unwrap();
        }
        let again = scratch.store(manual()).await;
        again.enqueue(NewJob::new("p")).await.unwrap();
        let mut conn = scratch.connection().await;
        let applied: Vec<Line> =
            diesel::sql_query("SELECT version::text AS line FROM __diesel_schema_migrations")
                .load(&mut conn)
                .await
                .unwrap();
        let known =
            diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&crate::MIGRATIONS)
                .unwrap();
        assert_eq!(applied.len(), known.len());
    });
}

#[test]
fn a_schema_from_a_newer_version_is_refused_unchanged() {
    in_schema(|scratch| async move {
        let store = scratch.store(manual()).await;
        store.enqueue(NewJob::new("p")).await.unwrap();
        store.close().await;
        let mut conn = scratch.connection().await;
        conn.batch_execute(
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('99990101000000')",
        )
        .await
        .unwrap();
        let e = assert_kind(
            PostgresStore::connect(&scratch.url, scratch.options(manual())).await,
            ErrorKind::SchemaTooNew,
        );
        assert!(e.to_string().contains("99990101000000"), "{e}");
    });
}

#[test]
fn a_schema_that_belongs_to_something_else_is_refused() {
    in_schema(|scratch| async move {
        let mut conn = AsyncPgConnection::establish(&scratch.url).await.unwrap();
        conn.batch_execute(&format!(
            "CREATE SCHEMA {0}; CREATE TABLE {0}.jobs (name text)",
            scratch.schema
        ))
        .await
        .unwrap();
        let e = assert_kind(
            PostgresStore::connect(&scratch.url, scratch.options(manual())).await,
            ErrorKind::Incompatible,
        );
        assert!(e.to_string().contains("jobs"), "{e}");
        let mut conn = scratch.connection().await;
        let tables: Vec<Line> = diesel::sql_query(
            "SELECT table_name::text AS line FROM information_schema.tables \
             WHERE table_schema = current_schema()",
        )
        .load(&mut conn)
        .await
        .unwrap();
        assert_eq!(tables.len(), 1, "nothing was added to it");
    });
}

/// Bad settings and unreachable databases are errors of the right kind,
/// never panics; these need no database.
#[test]
fn bad_settings_and_unreachable_databases() {
    let rt = runtime();
    rt.block_on(async {
        let options = PostgresOptions::default;
        assert_kind(
            PostgresStore::connect("not a url at all", options()).await,
            ErrorKind::Invalid,
        );
        assert_kind(
            PostgresStore::connect("postgres://localhost/db", options().schema("Bad-Name")).await,
            ErrorKind::Invalid,
        );
        assert_kind(
            PostgresStore::connect("postgres://localhost/db", options().max_connections(0)).await,
            ErrorKind::Invalid,
        );
        // Nothing listens on port 1.
        assert_kind(
            PostgresStore::connect(
                "postgres://postgres@127.0.0.1:1/test",
                options().connect_timeout(Duration::from_secs(5)),
            )
            .await,
            ErrorKind::Io,
        );
    });
    // Outside a tokio runtime there is no one to run the store's tasks.
    assert_kind(
        jobqueue_core::testing::block_on(PostgresStore::connect(
            "postgres://localhost/db",
            PostgresOptions::default(),
        )),
        ErrorKind::Invalid,
    );
    if let Some(url) = url() {
        let mut wrong_db = url.clone();
        if let Some(i) = wrong_db.rfind('/') {
            wrong_db.truncate(i);
        }
        wrong_db.push_str("/jobqueue_no_such_database");
        rt.block_on(async {
            assert_kind(
                PostgresStore::connect(&wrong_db, PostgresOptions::default()).await,
                ErrorKind::Io,
            );
        });
    }
}

/// PostgreSQL text cannot hold U+0000: a name with it is refused and
/// nothing is written; a message (an error from a phase) keeps the rest of
/// its text.
#[test]
fn nul_characters() {
    in_schema(|scratch| async move {
        let store = scratch.store(manual()).await;
        assert_kind(store.enqueue(NewJob::new("a\0b")).await, ErrorKind::Invalid);
        let e = assert_kind(
            store
                .enqueue_batch(vec![NewJob::new("ok"), NewJob::new("ok").unique_key("k\0")])
                .await,
            ErrorKind::Invalid,
        );
        assert!(matches!(e, StoreError::Batch { index: 1, .. }), "{e:?}");
        assert_eq!(store.last_seq().await.unwrap(), 0, "nothing was written");
        store.enqueue(NewJob::new("p").phases(["a"])).await.unwrap();
        let c = store.claim(ClaimRequest::new(1)).await.unwrap().remove(0);
        store.phase_started(&c.lease, 0).await.unwrap();
        let job = store
            .phase_failed(&c.lease, 0, "bad\0byte".into(), FailureOutcome::Fail)
            .await
            .unwrap();
        assert_eq!(job.phases[0].error.as_deref(), Some("bad\u{FFFD}byte"));
        assert_eq!(store.job(job.id).await.unwrap(), Some(job));
    });
}

#[derive(QueryableByName, Debug)]
struct One {
    #[diesel(sql_type = Integer)]
    one: i32,
}

/// Error kinds come from the SQLSTATE diesel reports.
#[test]
fn error_kinds_from_the_database() {
    use crate::error::db_err;
    use crate::tx::blame_connection;
    in_schema(|scratch| async move {
        let store = scratch.store(manual()).await;
        let job = store
            .enqueue(NewJob::new("p").unique_key("k"))
            .await
            .unwrap();
        let mut conn = scratch.connection().await;
        let insert_again = format!(
            "INSERT INTO jobs SELECT gen_random_uuid(), pipeline, status, input, priority, \
             unique_key, attempt, max_attempts, created_at, run_at, started_at, finished_at, \
             stale_at, error_phase, error_message, error_attempt, interrupted_phase, \
             interrupted_at, interrupted_percent, interrupted_message, webhook_url, \
             cancel_requested, lease, lease_expires_at FROM jobs WHERE id = '{}'",
            job.id
        );
        let e = diesel::sql_query(&insert_again)
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(
            db_err(e).kind(),
            ErrorKind::Duplicate,
            "23505 on jobs_unique_key"
        );
        let e = diesel::sql_query("UPDATE jobs SET status = 'lost'")
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(db_err(e).kind(), ErrorKind::Conflict, "23514");
        let e = diesel::sql_query("SELECT one FROM no_such_table")
            .load::<One>(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(db_err(e).kind(), ErrorKind::Internal, "42P01");
        // The server ends a session mid-query (a restart, a failover, an
        // administrator): PostgreSQL sends 57P01, which diesel does not
        // classify, and closes the socket. The store blames the connection.
        let mut doomed = scratch.connection().await;
        let pid: Vec<One> = diesel::sql_query("SELECT pg_backend_pid() AS one")
            .load(&mut doomed)
            .await
            .unwrap();
        let pid = pid[0].one;
        let sleeping = tokio::spawn(async move {
            let e = diesel::sql_query("SELECT 1 AS one FROM pg_sleep(30)")
                .load::<One>(&mut doomed)
                .await
                .unwrap_err();
            let e = db_err(e);
            (e.kind(), blame_connection(&mut doomed, e).await)
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let active: Vec<One> = diesel::sql_query(
                "SELECT pid AS one FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
            )
            .bind::<Integer, _>(pid)
            .load(&mut conn)
            .await
            .unwrap();
            if !active.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the query never started"
            );
            tokio::task::yield_now().await;
        }
        diesel::sql_query("SELECT 1 AS one FROM pg_terminate_backend($1)")
            .bind::<Integer, _>(pid)
            .execute(&mut conn)
            .await
            .unwrap();
        let (raw, blamed) = sleeping.await.unwrap();
        assert_eq!(raw, ErrorKind::Internal, "diesel does not classify 57P01");
        assert_eq!(blamed.kind(), ErrorKind::Io, "{blamed}");
        // The store's idle connections ended the same way are dropped by
        // the pool; a call meets at most the one it had already taken.
        let one = scratch.store(manual()).await;
        let _ = one.last_seq().await.unwrap();
        conn.batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{}'",
            scratch.schema
        ))
        .await
        .unwrap();
        match one.last_seq().await {
            Ok(n) => assert_eq!(n, 1),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Io, "{e}"),
        }
        assert_eq!(one.last_seq().await.unwrap(), 1);
    });
}

/// Two stores on one schema, as two processes: fencing and unique keys are
/// decided by the database, not by either store.
#[test]
fn stores_sharing_a_schema_fence_each_other() {
    in_schema(|scratch| async move {
        let clock = manual();
        let a = scratch.store(clock.clone()).await;
        let b = scratch.store(clock.clone()).await;
        let held = a.enqueue(NewJob::new("p").unique_key("k")).await.unwrap();
        match b.enqueue(NewJob::new("p").unique_key("k")).await {
            Err(StoreError::Duplicate { existing, .. }) => assert_eq!(existing, held.id),
            other => panic!("expected Duplicate, got {other:?}"),
        }
        b.request_cancel(held.id).await.unwrap();
        a.enqueue(NewJob::new("p").phases(["x"])).await.unwrap();
        let first = a
            .claim(ClaimRequest::new(1).lease_for(Duration::from_secs(1)))
            .await
            .unwrap()
            .remove(0);
        clock.advance(Duration::from_secs(2));
        let recovered = b.recover(RecoverScope::ExpiredLeases).await.unwrap();
        assert_eq!(recovered.len(), 1);
        let second = b.claim(ClaimRequest::new(1)).await.unwrap().remove(0);
        assert_eq!(second.job.id, first.job.id);
        assert_kind(a.phase_started(&first.lease, 0).await, ErrorKind::LeaseLost);
        assert_kind(
            a.heartbeat(&first.lease, Duration::from_secs(30)).await,
            ErrorKind::LeaseLost,
        );
        assert_kind(a.complete_job(&first.lease).await, ErrorKind::LeaseLost);
        b.phase_started(&second.lease, 0).await.unwrap();
        b.phase_completed(&second.lease, 0, json!(1)).await.unwrap();
        let done = b.complete_job(&second.lease).await.unwrap();
        assert_eq!(a.job(done.id).await.unwrap(), Some(done));
    });
}

/// A pipeline's cap holds across stores (processes): racing claims of two
/// stores never run more of its jobs at once than the cap, and each claim
/// records its worker on the job.
#[test]
fn pipeline_caps_hold_across_stores_and_workers_are_recorded() {
    in_schema(|scratch| async move {
        let clock = manual();
        let a = scratch.store(clock.clone()).await;
        let b = scratch.store(clock.clone()).await;
        for _ in 0..6 {
            a.enqueue(NewJob::new("capped").phases(["x"]))
                .await
                .unwrap();
        }
        let caps = vec![("capped".to_owned(), 2)];
        let req = |w: &str| ClaimRequest::new(10).pipeline_caps(caps.clone()).worker(w);
        let (one, two) = tokio::join!(a.claim(req("node-a")), b.claim(req("node-b")));
        let (one, two) = (one.unwrap(), two.unwrap());
        assert_eq!(
            one.len() + two.len(),
            2,
            "two of the cap, across both stores"
        );
        assert!(b.claim(req("node-b")).await.unwrap().is_empty());
        // One ends: one more may run, on either store.
        let done = <[_]>::first(&one).or(<[_]>::first(&two)).unwrap();
        b.fail_job(
            &done.lease,
            jobqueue_core::JobError {
                phase: None,
                message: "done".into(),
                attempt: done.lease.attempt,
            },
        )
        .await
        .unwrap();
        assert_eq!(a.claim(req("node-a")).await.unwrap().len(), 1);
        assert!(b.claim(req("node-b")).await.unwrap().is_empty());
        let mut conn = scratch.connection().await;
        #[derive(diesel::QueryableByName)]
        struct Worker {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            worker: Option<String>,
        }
        let workers: Vec<Worker> = diesel_async::RunQueryDsl::load(
            diesel::sql_query("SELECT worker FROM jobs WHERE status <> 'queued' ORDER BY worker"),
            &mut conn,
        )
        .await
        .unwrap();
        assert_eq!(workers.len(), 3);
        assert!(
            workers
                .iter()
                .all(|w| w.worker.as_deref().is_some_and(|w| w.starts_with("node-")))
        );
    });
}

/// A caller that stops waiting does not stop the call: it commits and
/// publishes its events (no half-done transaction), and `close` waits for it.
#[test]
fn a_dropped_call_still_commits_and_publishes() {
    in_schema(|scratch| async move {
        let store = scratch.store(manual()).await;
        let sink = Arc::new(RecordingSink::default());
        store.set_event_sink(sink.clone());
        // Polled once (which starts the call's task), then dropped.
        let dropped = tokio::time::timeout(Duration::ZERO, store.enqueue(NewJob::new("p"))).await;
        assert!(dropped.is_err(), "the call was still running when dropped");
        store.close().await;
        assert_eq!(sink.events().len(), 1, "its event was published");
        let reopened = scratch.store(manual()).await;
        assert_eq!(reopened.last_seq().await.unwrap(), 1);
        let page = reopened.list(JobFilter::default()).await.unwrap();
        assert_eq!(page.jobs.len(), 1, "its job was committed");
    });
}

#[test]
fn close_refuses_later_calls_and_lets_go() {
    in_schema(|scratch| async move {
        let store = scratch.store(manual()).await;
        store.enqueue(NewJob::new("p")).await.unwrap();
        store.close().await;
        store.close().await;
        assert_kind(store.enqueue(NewJob::new("p")).await, ErrorKind::Closed);
        assert_kind(
            store.events_after(0, EventFilter::default(), 10).await,
            ErrorKind::Closed,
        );
        // Its connections are gone (the server ends their sessions soon
        // after their sockets close).
        let mut conn = AsyncPgConnection::establish(&scratch.url).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<One> = diesel::sql_query(
                "SELECT count(*)::int4 AS one FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind::<Text, _>(&scratch.schema)
            .load(&mut conn)
            .await
            .unwrap();
            if left[0].one == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} sessions left",
                left[0].one
            );
            tokio::task::yield_now().await;
        }
        conn.batch_execute("SET lock_timeout = '5s'").await.unwrap();
        conn.batch_execute(&format!("DROP SCHEMA {} CASCADE", scratch.schema))
            .await
            .unwrap();
    });
}

/// The store's times are its clock's, not the database's.
#[test]
fn times_come_from_the_stores_clock() {
    in_schema(|scratch| async move {
        let clock = manual();
        let store = scratch.store(clock.clone()).await;
        let job = store.enqueue(NewJob::new("p")).await.unwrap();
        assert_eq!(job.created_at, clock.now());
        let events = store
            .events_after(0, EventFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(events[0].at, clock.now());
        // A clock outside what a time can be stored as is refused, not
        // written.
        clock.set(time::macros::datetime!(-0001-06-01 00:00:00 UTC));
        assert_kind(store.enqueue(NewJob::new("p")).await, ErrorKind::Invalid);
        assert_eq!(store.last_seq().await.unwrap(), 1);
    });
}
