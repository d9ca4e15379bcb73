//! Tests of the store against what happens around it: a second store or
//! process on the same file, a file deleted or replaced under it, a foreign
//! database, rows it cannot read back.

use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;

use jobqueue_core::{ErrorKind, JobStore, ManualClock, NewJob};

use crate::{SqliteOptions, SqliteStore};

fn open(path: &std::path::Path) -> Result<SqliteStore, jobqueue_core::StoreError> {
    SqliteStore::open(path, SqliteOptions::default())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

#[test]
fn a_second_store_in_this_process_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let first = open(&path).unwrap();
    let started = std::time::Instant::now();
    let err = open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InUse, "{err}");
    let text = err.to_string();
    assert!(text.contains("jobs.db"), "{text}");
    assert!(text.contains(&std::process::id().to_string()), "{text}");
    // Refused, not waited for: the first store is open, not closing.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // The refusal changed nothing for the first store.
    block_on(first.enqueue(NewJob::new("p"))).unwrap();
}

#[test]
fn close_releases_the_file_at_once_and_drop_soon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let store = open(&path).unwrap();
    let job = block_on(store.enqueue(NewJob::new("p"))).unwrap();
    block_on(store.close());
    let err = block_on(store.enqueue(NewJob::new("p"))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    // A clone of the closed store still holds nothing.
    let reopened = open(&path).unwrap();
    assert!(block_on(reopened.job(job.id)).unwrap().is_some());
    // Dropping without close: the next open in this process waits for the
    // threads to let go instead of failing.
    drop(reopened);
    let again = open(&path).unwrap();
    assert!(block_on(again.job(job.id)).unwrap().is_some());
    drop(store);
}

/// The child of `another_process_is_refused_with_its_pid`: opens the store,
/// says so, and holds it until its stdin closes.
const HOLDER_ENV: &str = "JOBQUEUE_SQLITE_HOLDER_DB";

#[test]
fn holder_child() {
    let Ok(path) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let store = open(std::path::Path::new(&path)).unwrap();
    println!("HOLDER-OPEN");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    block_on(store.close());
}

#[test]
fn another_process_is_refused_with_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "robustness_tests::holder_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("HOLDER-OPEN")),
        "the child never opened the store"
    );
    let err = open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InUse, "{err}");
    assert!(
        err.to_string().contains(&format!("process {}", child.id())),
        "{err}"
    );
    // Once the holder is gone (here: killed), the file opens.
    child.kill().unwrap();
    child.wait().unwrap();
    let store = open(&path).unwrap();
    block_on(store.enqueue(NewJob::new("p"))).unwrap();
}

#[test]
fn a_foreign_database_is_incompatible_and_left_untouched() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT);
         INSERT INTO jobs (title) VALUES ('engineer');",
    )
    .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let err = open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
    assert!(err.to_string().contains("jobs"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was changed"
    );
    assert!(!dir.path().join("app.db-wal").exists());
}

fn broken_write(store: &SqliteStore) -> String {
    let err = block_on(store.enqueue(NewJob::new("p"))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    err.to_string()
}

#[test]
fn a_deleted_database_refuses_writes_instead_of_losing_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let store = open(&path).unwrap();
    block_on(store.enqueue(NewJob::new("p"))).unwrap();
    std::fs::remove_file(&path).unwrap();
    let text = broken_write(&store);
    assert!(text.contains("deleted"), "{text}");
    // And it stays refused.
    assert!(broken_write(&store).contains("deleted"));
}

#[test]
fn a_replaced_database_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let store = open(&path).unwrap();
    block_on(store.enqueue(NewJob::new("p"))).unwrap();
    let other = dir.path().join("other.db");
    std::fs::write(&other, b"").unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert!(broken_write(&store).contains("replaced"));
}

#[test]
fn a_truncated_database_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let store = open(&path).unwrap();
    block_on(store.enqueue(NewJob::new("p"))).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let text = broken_write(&store);
    assert!(
        text.contains("truncated") || text.contains("malformed"),
        "{text}"
    );
}

/// While the writer is busy, callers wait to send instead of queueing
/// without bound; every one of them gets its answer once it catches up.
#[test]
fn a_busy_writer_pushes_back() {
    use futures::FutureExt as _;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        dir.path().join("jobs.db"),
        SqliteOptions::default().clock(Arc::new(ManualClock::default())),
    )
    .unwrap();
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let busy = store.clone();
    let blocker = std::thread::spawn(move || {
        block_on(busy.write_op(move |_tx| {
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv();
            Ok(())
        }))
    });
    entered.recv().unwrap();
    let callers = crate::writer::WRITE_QUEUE + 100;
    let mut waiting: Vec<_> = (0..callers)
        .map(|i| store.enqueue(NewJob::new(format!("p{i}"))).boxed())
        .collect();
    // Poll each once: the first WRITE_QUEUE are queued, the rest wait.
    for f in &mut waiting {
        assert!(f.as_mut().now_or_never().is_none());
    }
    assert_eq!(store.queued_writes(), crate::writer::WRITE_QUEUE);
    release.send(()).unwrap();
    blocker.join().unwrap().unwrap();
    let done = block_on(futures::future::join_all(waiting));
    assert!(done.iter().all(Result::is_ok));
    assert_eq!(store.queued_writes(), 0);
}

/// Size of the database file. (Its WAL is bounded on its own: the writer
/// checkpoints it every few thousand pages and then reuses it.)
/// The size of the database as of its last commit, in bytes: its pages,
/// wherever they are (the file, or the WAL until the next checkpoint). The
/// file's own length would move only at checkpoints, which come when the
/// WAL fills, so it would say more about the checkpoint's timing.
async fn footprint(store: &SqliteStore) -> u64 {
    use diesel::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Pages {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    store
        .write_op(|tx| {
            let page = |sql: &str, tx: &mut crate::writer::Tx<'_>| {
                diesel::sql_query(sql)
                    .load::<Pages>(tx.conn())
                    .map_err(crate::error::db_err)
                    .map(|p| p.first().map_or(0, |p| p.n))
            };
            let count = page("SELECT page_count AS n FROM pragma_page_count()", tx)?;
            let size = page("SELECT page_size AS n FROM pragma_page_size()", tx)?;
            Ok(u64::try_from(count * size).unwrap_or(0))
        })
        .await
        .unwrap()
}

/// Runs `rounds` rounds of 200 one-phase jobs through the store, each
/// completion routed to a webhook that answers, then retention (stale after an
/// hour, deleted an hour later, history pruned after two) if `prune`; returns
/// the file's size after each round.
async fn churn(dir: &std::path::Path, rounds: usize, prune: bool) -> Vec<u64> {
    use jobqueue_core::{AttemptOutcome, ClaimRequest, Clock as _, WebhookRoute};
    let clock = Arc::new(ManualClock::default());
    let store = SqliteStore::open(
        dir.join("jobs.db"),
        SqliteOptions::default().clock(clock.clone()),
    )
    .unwrap();
    store.set_webhook_routes(vec![WebhookRoute {
        url: "http://hook/".into(),
        events: Some(vec![jobqueue_core::EventType::JobCompleted]),
    }]);
    let hour = std::time::Duration::from_secs(3600);
    let mut sizes = Vec::new();
    for round in 0..rounds {
        let specs = (0..200)
            .map(|i| {
                NewJob::new("p")
                    .phases(["only"])
                    .input(serde_json::json!({"round": round, "i": i, "pad": "x".repeat(200)}))
            })
            .collect();
        store.enqueue_batch(specs).await.unwrap();
        let claimed = store.claim(ClaimRequest::new(200)).await.unwrap();
        futures::future::join_all(claimed.iter().map(|c| async {
            store.phase_started(&c.lease, 0).await.unwrap();
            store
                .phase_completed(&c.lease, 0, serde_json::json!({"ok": round}))
                .await
                .unwrap();
            store.complete_job(&c.lease).await.unwrap();
        }))
        .await;
        loop {
            let due = store.due_deliveries(500).await.unwrap();
            if due.is_empty() {
                break;
            }
            futures::future::join_all(
                due.iter()
                    .map(|d| store.record_attempt(d.id, AttemptOutcome::Delivered { status: 200 })),
            )
            .await;
        }
        clock.advance(hour);
        if prune {
            let now = clock.now();
            while !store.mark_stale(now - hour, 500).await.unwrap().is_empty() {}
            while !store
                .delete_stale(now - hour, 500)
                .await
                .unwrap()
                .is_empty()
            {}
            while store.prune(now - 2 * hour, 500).await.unwrap() != Default::default() {}
        }
        sizes.push(footprint(&store).await);
    }
    store.close().await;
    sizes
}

/// With retention the file stops growing: freed pages are reused, ended
/// deliveries and tombstones go too. Without it, the file grows every round.
#[test]
fn retention_keeps_the_file_at_a_steady_size() {
    let kept = tempfile::tempdir().unwrap();
    let sizes = block_on(churn(kept.path(), 16, true));
    let settled = sizes[7];
    let last = *sizes.last().unwrap();
    assert!(
        last <= settled + settled / 20,
        "the file kept growing with retention: {sizes:?}"
    );
    let grown = tempfile::tempdir().unwrap();
    let without = block_on(churn(grown.path(), 16, false));
    assert!(
        *without.last().unwrap() > last * 2,
        "without retention: {without:?}, with: {sizes:?}"
    );
}

/// Runs raw SQL through the writer, as damage from outside would look.
async fn damage(store: &SqliteStore, sql: String) {
    use diesel::RunQueryDsl as _;
    store
        .write_op(move |tx| {
            diesel::sql_query(sql.clone())
                .execute(tx.write_conn())
                .map_err(crate::error::db_err)?;
            Ok(())
        })
        .await
        .unwrap();
}

fn memory_store() -> SqliteStore {
    SqliteStore::open_in_memory(SqliteOptions::default().clock(Arc::new(ManualClock::default())))
        .unwrap()
}

/// A job row that does not read back is failed by the claim that finds it,
/// with a clear error, and every other job is still claimed; listings skip
/// it; it can be deleted.
#[test]
fn an_unreadable_job_is_isolated_not_a_stalled_queue() {
    use jobqueue_core::{ClaimRequest, EventFilter, EventType, JobFilter, JobStatus};
    block_on(async {
        let store = memory_store();
        let a = store.enqueue(NewJob::new("p").phases(["x"])).await.unwrap();
        let bad = store
            .enqueue(NewJob::new("p").phases(["x"]).priority(9))
            .await
            .unwrap();
        let c = store.enqueue(NewJob::new("p").phases(["x"])).await.unwrap();
        damage(
            &store,
            format!("UPDATE jobs SET input = '[[[' WHERE id = '{}'", bad.id),
        )
        .await;
        let err = store.job(bad.id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        // Listing skips it and still pages correctly.
        let page = store
            .list(JobFilter {
                limit: 2,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [c.id]);
        let rest = store
            .list(JobFilter {
                cursor: page.next_cursor,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(rest.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [a.id]);
        // The claim (it would take `bad` first) fails it and goes on.
        let claimed = store.claim(ClaimRequest::new(10)).await.unwrap();
        let mut ids: Vec<_> = claimed.iter().map(|c| c.job.id).collect();
        ids.sort();
        let mut want = vec![a.id, c.id];
        want.sort();
        assert_eq!(ids, want);
        let events = store
            .events_after(
                0,
                EventFilter {
                    job: Some(bad.id),
                    ..EventFilter::default()
                },
                100,
            )
            .await
            .unwrap();
        let failed = events.last().unwrap();
        assert_eq!(failed.event_type(), EventType::JobFailed);
        assert!(
            failed.data.to_json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot be read back")
        );
        assert!(store.claim(ClaimRequest::new(10)).await.unwrap().is_empty());
        let counts = store.counts().await.unwrap();
        assert!(
            counts
                .iter()
                .any(|c| c.status == JobStatus::Failed && c.count == 1)
        );
        // It can be removed.
        store.delete(bad.id).await.unwrap();
        assert!(store.job(bad.id).await.unwrap().is_none());
    });
}

/// A running job whose row goes bad is failed by recovery; the others are
/// recovered as usual.
#[test]
fn recovery_isolates_an_unreadable_running_job() {
    use jobqueue_core::{ClaimRequest, JobStatus, RecoverScope};
    block_on(async {
        let store = memory_store();
        let good = store.enqueue(NewJob::new("p").phases(["x"])).await.unwrap();
        let bad = store.enqueue(NewJob::new("p").phases(["x"])).await.unwrap();
        assert_eq!(store.claim(ClaimRequest::new(2)).await.unwrap().len(), 2);
        damage(
            &store,
            format!("UPDATE jobs SET input = 'nope' WHERE id = '{}'", bad.id),
        )
        .await;
        let recovered = store.recover(RecoverScope::All).await.unwrap();
        assert_eq!(
            recovered.iter().map(|j| j.id).collect::<Vec<_>>(),
            [good.id]
        );
        assert_eq!(
            store.job(good.id).await.unwrap().unwrap().status,
            JobStatus::Queued
        );
        assert!(store.recover(RecoverScope::All).await.unwrap().is_empty());
    });
}

/// An event row that does not read back is skipped by every reader, which
/// still reaches the end of the log.
#[test]
fn an_unreadable_event_is_skipped_by_replay() {
    use jobqueue_core::EventFilter;
    block_on(async {
        let store = memory_store();
        for _ in 0..5 {
            store.enqueue(NewJob::new("p")).await.unwrap();
        }
        damage(
            &store,
            "UPDATE events SET data = '{' WHERE seq IN (2, 3)".to_owned(),
        )
        .await;
        let all = store
            .events_after(0, EventFilter::default(), 100)
            .await
            .unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 4, 5]);
        // A page that starts with unreadable rows is filled from after them.
        let page = store
            .events_after(1, EventFilter::default(), 1)
            .await
            .unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
        assert_eq!(store.last_seq().await.unwrap(), 5);
    });
}

/// A delivery row that does not read back is ended as failed with the
/// reason, so it is not due for ever; the others go out.
#[test]
fn an_unreadable_delivery_is_failed_not_due_for_ever() {
    use jobqueue_core::{DeliveryFilter, DeliveryStatus, WebhookRoute};
    block_on(async {
        let store = memory_store();
        store.set_webhook_routes(vec![WebhookRoute {
            url: "http://hook/".into(),
            events: None,
        }]);
        store.enqueue(NewJob::new("p")).await.unwrap();
        store.enqueue(NewJob::new("p")).await.unwrap();
        damage(
            &store,
            "UPDATE webhook_deliveries SET event_data = '[' WHERE event_seq = 1".to_owned(),
        )
        .await;
        let due = store.due_deliveries(10).await.unwrap();
        assert_eq!(due.iter().map(|d| d.event_seq).collect::<Vec<_>>(), [2]);
        assert_eq!(
            store.next_delivery_at().await.unwrap(),
            Some(due[0].next_attempt_at.unwrap())
        );
        let failed = store
            .deliveries(DeliveryFilter {
                statuses: vec![DeliveryStatus::Failed],
                ..DeliveryFilter::default()
            })
            .await
            .unwrap();
        // Still unreadable, so still skipped in the listing; but no longer due.
        assert!(failed.is_empty());
        assert_eq!(store.due_deliveries(10).await.unwrap().len(), 1);
    });
}

/// The sequence counter is saved with the events: after the newest events
/// were pruned and the store reopened, numbers go on from where they were.
#[test]
fn sequence_numbers_are_never_reused_after_pruning_and_a_restart() {
    use jobqueue_core::{ClaimRequest, Clock as _, EventFilter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let clock = Arc::new(ManualClock::default());
    let options = || SqliteOptions::default().clock(clock.clone());
    let last = block_on(async {
        let store = SqliteStore::open(&path, options()).unwrap();
        store.enqueue(NewJob::new("p")).await.unwrap();
        let c = store.claim(ClaimRequest::new(1)).await.unwrap().remove(0);
        store.complete_job(&c.lease).await.unwrap();
        store.delete(c.job.id).await.unwrap();
        let last = store.last_seq().await.unwrap();
        clock.advance(std::time::Duration::from_secs(3600));
        let pruned = store.prune(clock.now(), 100).await.unwrap();
        assert_eq!(pruned.tombstones, 1);
        // Every event is gone now: max(seq) would say 0.
        assert!(
            store
                .events_after(0, EventFilter::default(), 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.last_seq().await.unwrap(), last);
        store.close().await;
        last
    });
    block_on(async {
        let store = SqliteStore::open(&path, options()).unwrap();
        assert_eq!(store.last_seq().await.unwrap(), last);
        store.enqueue(NewJob::new("p")).await.unwrap();
        let events = store
            .events_after(0, EventFilter::default(), 10)
            .await
            .unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [last + 1]);
        store.close().await;
    });
}

/// A write whose statement fails part way (here a trigger refuses the
/// second row of a multi-row insert, after the first went in) leaves none
/// of its rows: the writer's statements do not undo themselves (they run
/// without a statement journal), the writer rolls the operation back. The
/// writes beside it in the same group commit.
#[test]
fn a_statement_that_fails_part_way_leaves_nothing() {
    let store = memory_store();
    block_on(damage(
        &store,
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON jobs WHEN NEW.pipeline = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            .to_owned(),
    ));
    // Four rows go in one statement: three are in when the fourth fails.
    let batch = vec![
        NewJob::new("fine"),
        NewJob::new("fine"),
        NewJob::new("fine"),
        NewJob::new("boom"),
        NewJob::new("fine"),
    ];
    let (refused, beside) = block_on(async {
        futures::join!(
            store.enqueue_batch(batch),
            store.enqueue(NewJob::new("beside"))
        )
    });
    let err = refused.unwrap_err();
    assert!(err.to_string().contains("refused by a trigger"), "{err}");
    let beside = beside.unwrap();
    let page = block_on(store.list(jobqueue_core::JobFilter::default())).unwrap();
    let ids: Vec<_> = page.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![beside.id]);
    let events =
        block_on(store.events_after(0, jobqueue_core::EventFilter::default(), 10)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].job_id, Some(beside.id));
    // The store goes on: the next batch of good jobs goes in whole.
    let jobs = block_on(store.enqueue_batch(vec![NewJob::new("a"), NewJob::new("b")])).unwrap();
    assert_eq!(jobs.len(), 2);
}
