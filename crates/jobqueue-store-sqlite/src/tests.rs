//! Tests of the SQLite store on real files: behaviour next to `MemoryStore`,
//! failures of the file, query plans, concurrency and crash safety.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobqueue_core::{
    ClaimRequest, Clock, ErrorKind, Event, EventFilter, EventSink, EventType, FailureOutcome,
    JobFilter, JobId, JobStatus, JobStore, ManualClock, MemoryStore, NewJob, Progress,
    RecoverScope, WebhookRoute,
};
use serde_json::json;

use crate::{SqliteOptions, SqliteStore};

fn file_store(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(
        dir.path().join("jobs.db"),
        SqliteOptions::default().clock(clock),
    )
    .unwrap()
}

/// Closes `store` and waits until its file is released (dropping it does
/// not wait), for tests that read or reopen the file next.
fn close(store: SqliteStore) {
    futures::executor::block_on(store.close());
}

#[derive(Default)]
struct Collect(Mutex<Vec<Event>>);

impl EventSink for Collect {
    fn publish(&self, events: &[Event]) {
        self.0.lock().unwrap().extend_from_slice(events);
    }
}

/// One scripted scenario, returning what a caller sees, with ids and tokens
/// left out so two stores can be compared.
async fn scenario(store: Arc<dyn JobStore>, clock: Arc<ManualClock>) -> Vec<String> {
    let sink = Arc::new(Collect::default());
    store.set_event_sink(sink.clone());
    store.set_webhook_routes(vec![WebhookRoute {
        url: "http://hook/a".into(),
        events: None,
    }]);
    let mut seen = Vec::new();
    let mut log = |s: String| seen.push(s);
    let a = store
        .enqueue(
            NewJob::new("p")
                .phases(["one", "two"])
                .unique_key("k")
                .webhook_url("http://job/hook")
                .input(json!({"x": 1})),
        )
        .await
        .unwrap();
    let dup = store.enqueue(NewJob::new("p").unique_key("k")).await;
    log(format!("dup {:?}", dup.map_err(|e| e.kind())).replace(&a.id.to_string(), "A"));
    let bad = store.enqueue(NewJob::new(" ")).await;
    log(format!("bad {:?}", bad.map(|_| ()).map_err(|e| e.kind())));
    let b = store
        .enqueue(NewJob::new("p").priority(5).phases(["one"]))
        .await
        .unwrap();
    let claimed = store.claim(ClaimRequest::new(10)).await.unwrap();
    log(format!(
        "claimed {:?}",
        claimed
            .iter()
            .map(|c| if c.job.id == a.id { "A" } else { "B" })
            .collect::<Vec<_>>()
    ));
    let la = claimed.iter().find(|c| c.job.id == a.id).unwrap().lease;
    let lb = claimed.iter().find(|c| c.job.id == b.id).unwrap().lease;
    log(format!(
        "start1 {:?}",
        store.phase_started(&la, 1).await.map_err(|e| e.kind())
    ));
    store.phase_started(&la, 0).await.unwrap();
    store
        .phase_progress(&la, 0, Progress::new(150, Some("half".into())))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    store.phase_completed(&la, 0, json!("r0")).await.unwrap();
    store.phase_started(&la, 1).await.unwrap();
    let again = store
        .phase_failed(&la, 1, "boom".into(), FailureOutcome::RetryAt(clock.now()))
        .await
        .unwrap();
    log(format!(
        "after fail {} {:?}",
        again.status,
        again.phases.iter().map(|p| p.status).collect::<Vec<_>>()
    ));
    log(format!(
        "stale lease {:?}",
        store.complete_job(&la).await.map_err(|e| e.kind())
    ));
    let c2 = store.claim(ClaimRequest::new(1)).await.unwrap();
    let la2 = c2[0].lease;
    log(format!("attempt {}", la2.attempt));
    store.phase_started(&la2, 1).await.unwrap();
    log(format!(
        "cancel {:?}",
        store
            .request_cancel(a.id)
            .await
            .map(|o| matches!(o, jobqueue_core::CancelOutcome::Requested(_)))
    ));
    log(format!(
        "hb {:?}",
        store.heartbeat(&la2, Duration::from_secs(60)).await
    ));
    let interrupted = store.interrupt(&la2).await.unwrap();
    log(format!(
        "interrupted {:?}",
        interrupted.interrupted.map(|i| i.phase)
    ));
    store.phase_started(&lb, 0).await.unwrap();
    let failed = store
        .phase_failed(&lb, 0, "bad".into(), FailureOutcome::Fail)
        .await
        .unwrap();
    log(format!(
        "failed {} {:?}",
        failed.status,
        failed.error.map(|e| e.message)
    ));
    let retried = store.retry(b.id).await.unwrap();
    log(format!("retried {} {}", retried.status, retried.attempt));
    let c3 = store.claim(ClaimRequest::new(5)).await.unwrap();
    log(format!("claim3 {}", c3.len()));
    for c in &c3 {
        let first = c.job.first_incomplete_phase().unwrap();
        for i in first..c.job.phases.len() {
            store.phase_started(&c.lease, i).await.unwrap();
            store.phase_completed(&c.lease, i, json!(i)).await.unwrap();
        }
        let done = store.complete_job(&c.lease).await.unwrap();
        log(format!("done {} {:?}", done.status, done.results()));
    }
    let running = store.enqueue(NewJob::new("q")).await.unwrap();
    store.claim(ClaimRequest::new(1)).await.unwrap();
    log(format!(
        "recovered {}",
        store.recover(RecoverScope::All).await.unwrap().len()
    ));
    log(format!(
        "job q {:?}",
        store.job(running.id).await.unwrap().map(|j| j.status)
    ));
    log(format!(
        "delete running {:?}",
        store.delete(running.id).await.map_err(|e| e.kind())
    ));
    clock.advance(Duration::from_secs(100));
    let stale = store.mark_stale(clock.now(), 10).await.unwrap();
    log(format!("stale {}", stale.len()));
    clock.advance(Duration::from_secs(100));
    let deleted = store.delete_stale(clock.now(), 1).await.unwrap();
    log(format!("deleted {}", deleted.len()));
    log(format!(
        "deleted job {:?}",
        store.job(deleted[0]).await.unwrap().is_none()
    ));
    let page = store
        .list(JobFilter {
            limit: 1,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    log(format!(
        "page {} {}",
        page.jobs.len(),
        page.next_cursor.is_some()
    ));
    let page2 = store
        .list(JobFilter {
            limit: 5,
            cursor: page.next_cursor,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    log(format!(
        "page2 {} {}",
        page2.jobs.len(),
        page2.next_cursor.is_some()
    ));
    let all = store
        .events_after(0, EventFilter::default(), 1000)
        .await
        .unwrap();
    log(format!(
        "events {:?}",
        all.iter()
            .map(|e| (e.seq, e.event_type()))
            .collect::<Vec<_>>()
    ));
    let published = sink.0.lock().unwrap().clone();
    let seqs: Vec<u64> = published.iter().map(|e| e.seq).collect();
    log(format!("published {seqs:?}"));
    log(format!("last {}", store.last_seq().await.unwrap()));
    let types = store
        .events_after(
            0,
            EventFilter {
                job: Some(a.id),
                types: vec![EventType::PhaseFailed],
            },
            10,
        )
        .await
        .unwrap();
    log(format!("a failed events {}", types.len()));
    let due = store.due_deliveries(1000).await.unwrap();
    log(format!(
        "due {:?}",
        due.iter()
            .map(|d| (d.event_seq, d.target, d.url.clone()))
            .collect::<Vec<_>>()
    ));
    let first = &due[0];
    let d = store
        .record_attempt(
            first.id,
            jobqueue_core::AttemptOutcome::Delivered { status: 200 },
        )
        .await
        .unwrap();
    log(format!(
        "delivered {} {:?}",
        d.status,
        d.event == first.event
    ));
    log(format!(
        "again {:?}",
        store
            .record_attempt(
                first.id,
                jobqueue_core::AttemptOutcome::Delivered { status: 200 }
            )
            .await
            .map_err(|e| e.kind())
    ));
    log(format!(
        "next {:?}",
        store.next_delivery_at().await.unwrap()
    ));
    let dels = store
        .deliveries(jobqueue_core::DeliveryFilter {
            job: Some(deleted[0]),
            statuses: vec![],
            limit: 0,
        })
        .await
        .unwrap();
    log(format!("deliveries of deleted {}", dels.len()));
    seen
}

#[tokio::test]
async fn behaves_like_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let memory = scenario(Arc::new(MemoryStore::with_clock(clock.clone())), clock).await;
    let clock = Arc::new(ManualClock::default());
    let sqlite = scenario(Arc::new(file_store(&dir, clock.clone())), clock).await;
    assert_eq!(sqlite, memory);
    let clock = Arc::new(ManualClock::default());
    let mem_db =
        SqliteStore::open_in_memory(SqliteOptions::default().clock(clock.clone())).unwrap();
    assert_eq!(scenario(Arc::new(mem_db), clock).await, memory);
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let store = file_store(&dir, clock.clone());
    let job = store
        .enqueue(NewJob::new("p").phases(["a"]).input(json!([1, 2])))
        .await
        .unwrap();
    let c = store.claim(ClaimRequest::new(1)).await.unwrap();
    store.phase_started(&c[0].lease, 0).await.unwrap();
    store
        .phase_progress(&c[0].lease, 0, Progress::new(40, None))
        .await
        .unwrap();
    let before = store.job(job.id).await.unwrap().unwrap();
    store.close().await;
    let store = file_store(&dir, clock);
    assert_eq!(store.job(job.id).await.unwrap().unwrap(), before);
    assert_eq!(store.last_seq().await.unwrap(), 4);
    let next = store.enqueue(NewJob::new("p")).await.unwrap();
    let ev = store
        .events_after(4, EventFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].seq, ev[0].job_id), (5, Some(next.id)));
    let recovered = store.recover(RecoverScope::All).await.unwrap();
    let ctx = recovered[0].interrupted.clone().unwrap();
    assert_eq!(
        (ctx.phase.as_str(), ctx.progress.map(|p| p.percent)),
        ("a", Some(40))
    );
}

/// A claim hands out each job as the store holds it, whether the writer
/// still knew the queued job's phases (it wrote them) or read them back:
/// a fresh job, a job queued again after a phase failed (with the first
/// phase's result kept), a batch whose enqueue was refused as a whole, and
/// the same jobs after a reopen (nothing known).
#[tokio::test]
async fn claims_see_the_stored_phases_whether_known_or_read() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let store = file_store(&dir, clock.clone());
    let fresh = store
        .enqueue(NewJob::new("p").phases(["a", "b"]))
        .await
        .unwrap();
    let claimed = store.claim(ClaimRequest::new(1)).await.unwrap();
    assert_eq!(claimed[0].job, store.job(fresh.id).await.unwrap().unwrap());
    let lease = claimed[0].lease;
    store.phase_started(&lease, 0).await.unwrap();
    store
        .phase_completed(&lease, 0, json!({"x": 1}))
        .await
        .unwrap();
    store.phase_started(&lease, 1).await.unwrap();
    let requeued = store
        .phase_failed(
            &lease,
            1,
            "boom".into(),
            FailureOutcome::RetryAt(clock.now()),
        )
        .await
        .unwrap();
    assert_eq!(requeued.status, JobStatus::Queued);
    // A batch refused as a whole (a duplicate key) leaves nothing behind,
    // in the database or beside it.
    let refused = store
        .enqueue_batch(vec![
            NewJob::new("p").phases(["z"]).unique_key("k"),
            NewJob::new("p").phases(["z"]).unique_key("k"),
        ])
        .await;
    assert!(refused.is_err());
    let again = store.claim(ClaimRequest::new(5)).await.unwrap();
    assert_eq!(again.len(), 1);
    let stored = store.job(fresh.id).await.unwrap().unwrap();
    assert_eq!(again[0].job, stored);
    assert_eq!(stored.phases[0].result, Some(json!({"x": 1})));
    assert_eq!(stored.phases[1].attempts, 1);
    // The same after a reopen, where every phase is read back.
    let lease = again[0].lease;
    store.phase_started(&lease, 1).await.unwrap();
    store
        .phase_failed(
            &lease,
            1,
            "boom".into(),
            FailureOutcome::RetryAt(clock.now()),
        )
        .await
        .unwrap();
    let before = store.job(fresh.id).await.unwrap().unwrap();
    close(store);
    let store = file_store(&dir, clock);
    let third = store.claim(ClaimRequest::new(5)).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].job.phases, before.phases);
    assert_eq!(third[0].job, store.job(fresh.id).await.unwrap().unwrap());
}

/// Under steady writes the WAL is copied back beside the writer and starts
/// over well before the writer's own checkpoint (the backstop) would have
/// to run: the checkpointer copies, the writer finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_copied_back_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    // Each batch appends a few hundred KB to the WAL (50 inputs of 4 KB,
    // their rows, index entries and events).
    let pad = json!({ "pad": "x".repeat(4000) });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut batches = 0;
    while store.wal_restarts() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL never started over after {batches} batches"
        );
        let jobs = (0..50)
            .map(|_| NewJob::new("p").input(pad.clone()))
            .collect();
        store.enqueue_batch(jobs).await.unwrap();
        batches += 1;
    }
    let wal = std::fs::metadata(dir.path().join("wal.db-wal"))
        .unwrap()
        .len();
    let backstop = u64::from(crate::conn::WAL_AUTOCHECKPOINT_PAGES) * 4096;
    assert!(
        wal < backstop,
        "the WAL grew to {wal} bytes before it started over (backstop: {backstop})"
    );
    // And what was copied back reads the same.
    assert_eq!(
        store.counts().await.unwrap()[0].count,
        u64::try_from(batches * 50).unwrap()
    );
    close(store);
}

/// A paused pipeline stays paused after the store is closed and opened
/// again: its job is not claimed until it is resumed, and its events read
/// back without a job id.
#[tokio::test]
async fn pause_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let store = file_store(&dir, clock.clone());
    let job = store.enqueue(NewJob::new("p").phases(["a"])).await.unwrap();
    assert!(store.pause_pipeline("p").await.unwrap());
    store.close().await;
    let store = file_store(&dir, clock);
    assert_eq!(store.paused_pipelines().await.unwrap(), ["p"]);
    assert!(!store.pause_pipeline("p").await.unwrap(), "still paused");
    assert!(store.claim(ClaimRequest::new(5)).await.unwrap().is_empty());
    assert!(store.resume_pipeline("p").await.unwrap());
    let claimed = store.claim(ClaimRequest::new(5)).await.unwrap();
    assert_eq!(claimed[0].job.id, job.id);
    let events = store
        .events_after(0, EventFilter::default(), 10)
        .await
        .unwrap();
    let pipeline: Vec<_> = events
        .iter()
        .filter(|e| e.job_id.is_none())
        .map(|e| (e.seq, e.event_type().as_str(), e.pipeline.as_str()))
        .collect();
    assert_eq!(
        pipeline,
        [(2, "pipeline.paused", "p"), (3, "pipeline.resumed", "p")]
    );
}

/// The writer skips the dependency statements while no job has a
/// dependency, and learns at start that one has: a dependent enqueued
/// before a reopen starts when its dependency completes after it, and is
/// cancelled when its other dependency fails.
#[tokio::test]
async fn dependencies_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let store = file_store(&dir, clock.clone());
    let a = store.enqueue(NewJob::new("p").phases(["a"])).await.unwrap();
    let b = store.enqueue(NewJob::new("p").phases(["a"])).await.unwrap();
    let waits_a = store
        .enqueue(NewJob::new("q").phases(["a"]).depends_on([a.id]))
        .await
        .unwrap();
    let waits_b = store
        .enqueue(NewJob::new("q").phases(["a"]).depends_on([b.id]))
        .await
        .unwrap();
    store.close().await;

    let store = file_store(&dir, clock);
    let only_p = || ClaimRequest::new(5).pipelines(vec!["p".into()]);
    let claimed = store.claim(only_p().start_phase()).await.unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        if c.job.id == a.id {
            store
                .advance(&c.lease, 0, json!(1), jobqueue_core::Next::Complete)
                .await
                .unwrap();
        } else {
            let error = jobqueue_core::JobError {
                phase: Some("a".into()),
                message: "broken".into(),
                attempt: c.lease.attempt,
            };
            store.fail_job(&c.lease, error).await.unwrap();
        }
    }
    let runnable = store.claim(ClaimRequest::new(5)).await.unwrap();
    let ids: Vec<JobId> = runnable.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, [waits_a.id], "a completed; b failed");
    let cancelled = store.job(waits_b.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
}

#[tokio::test]
async fn a_checkpoint_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let store = file_store(&dir, clock.clone());
    let job = store
        .enqueue(NewJob::new("p").phases(["copy", "report"]))
        .await
        .unwrap();
    let c = store.claim(ClaimRequest::new(1)).await.unwrap();
    store.phase_started(&c[0].lease, 0).await.unwrap();
    let saved = json!({"copied": ["a.csv", "b.csv"], "next": 2, "note": "ü\u{1F600}"});
    store
        .save_checkpoint(&c[0].lease, 0, saved.clone())
        .await
        .unwrap();
    // A new store on the file reads it back from the file alone.
    store.close().await;
    let store = file_store(&dir, clock.clone());
    assert_eq!(
        store.job(job.id).await.unwrap().unwrap().phases[0].checkpoint,
        Some(saved.clone())
    );
    store.recover(RecoverScope::All).await.unwrap();
    let again = store.claim(ClaimRequest::new(1)).await.unwrap();
    assert_eq!(again[0].job.phases[0].checkpoint, Some(saved));
    // A completed phase's checkpoint is gone from the file too.
    store.phase_started(&again[0].lease, 0).await.unwrap();
    store
        .phase_completed(&again[0].lease, 0, json!("copied"))
        .await
        .unwrap();
    let lease = again[0].lease;
    store.close().await;
    let store = file_store(&dir, clock);
    let reread = store.job(lease.job_id).await.unwrap().unwrap();
    assert_eq!(reread.phases[0].checkpoint, None);
    assert_eq!(reread.phases[0].result, Some(json!("copied")));
}

#[tokio::test]
async fn a_failing_operation_in_a_group_is_rolled_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir, Arc::new(ManualClock::default()));
    // Many enqueues at once, every other one a duplicate of a key: they land
    // in shared groups, and each duplicate must fail without taking the others.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enqueue(NewJob::new("p").unique_key(format!("k{}", i / 2)))
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Duplicate),
        }
    }
    assert_eq!(ok, 100);
    assert_eq!(store.last_seq().await.unwrap(), 100);
    let events = store
        .events_after(0, EventFilter::default(), 1000)
        .await
        .unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    // Refusals are decided before anything is written: no group needed its
    // savepoints.
    assert_eq!(store.reruns(), 0);

    // Operations that fail after they wrote (a job and its event): their
    // groups run again with savepoints, and only they are rolled back.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                store.enqueue(NewJob::new("ok")).await.map(|_| ())
            } else {
                store
                    .write_op(|tx| {
                        crate::ops::enqueue(tx, NewJob::new("doomed"))?;
                        Err::<(), _>(jobqueue_core::StoreError::Conflict("late".into()))
                    })
                    .await
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(ok, 100);
    assert!(store.reruns() > 0, "no group ran again with savepoints");
    assert_eq!(store.last_seq().await.unwrap(), 200);
    let events = store
        .events_after(0, EventFilter::default(), 1000)
        .await
        .unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert!(events[100..].iter().all(|e| e.pipeline == "ok"));
    let doomed = store
        .list(JobFilter {
            pipeline: Some("doomed".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(doomed.jobs.is_empty());
}

/// Two events of one job appended by one write share a row, and read back
/// as two, each with its own number: page by page, filtered by type (the
/// second of a pair alone), by job, and the highest number after a reopen
/// when the last row is a pair.
#[tokio::test]
async fn paired_events_read_back_one_by_one() {
    use diesel::Connection;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::default());
    let store = file_store(&dir, clock.clone());
    let job = store
        .enqueue(NewJob::new("p").phases(["a", "b"]))
        .await
        .unwrap();
    let other = store.enqueue(NewJob::new("p")).await.unwrap();
    let c = store
        .claim(ClaimRequest::new(1).start_phase())
        .await
        .unwrap();
    let lease = c[0].lease;
    store
        .advance(&lease, 0, json!(1), jobqueue_core::Next::Phase(1))
        .await
        .unwrap();
    store
        .advance(&lease, 1, json!(2), jobqueue_core::Next::Complete)
        .await
        .unwrap();
    let all = store
        .events_after(0, EventFilter::default(), 100)
        .await
        .unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    let types: Vec<&str> = all.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(
        types,
        [
            "job.created",
            "job.created",
            "job.started",
            "job.phase.started",
            "job.phase.completed",
            "job.phase.started",
            "job.phase.completed",
            "job.completed"
        ]
    );
    // Three pairs: six events in three rows.
    close(store);
    let mut conn =
        diesel::SqliteConnection::establish(dir.path().join("jobs.db").to_str().unwrap()).unwrap();
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM events"), 5);
    drop(conn);
    let store = file_store(&dir, clock);
    assert_eq!(store.last_seq().await.unwrap(), 8);
    // One at a time, from every point, including the middle of a pair.
    for after in 0..8 {
        let one = store
            .events_after(after, EventFilter::default(), 1)
            .await
            .unwrap();
        assert_eq!(one, vec![all[after as usize].clone()], "after {after}");
    }
    let started = store
        .events_after(
            0,
            EventFilter {
                types: vec![EventType::PhaseStarted],
                ..EventFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(started.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 6]);
    let theirs = store
        .events_after(
            3,
            EventFilter {
                job: Some(job.id),
                ..EventFilter::default()
            },
            3,
        )
        .await
        .unwrap();
    assert_eq!(theirs.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5, 6]);
    let others = store
        .events_after(
            0,
            EventFilter {
                job: Some(other.id),
                ..EventFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(others.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
}

/// The number in the one row of `SELECT count(*) AS n ...`.
fn count(conn: &mut diesel::SqliteConnection, sql: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql).get_result::<N>(conn).unwrap().n
}

/// Transactional enqueues share groups with other writes: each commits its
/// own rows and jobs together, and one whose closure fails (after it wrote)
/// or whose job is refused is rolled back alone, with nothing published.
#[tokio::test]
async fn enqueue_with_commits_or_rolls_back_alone_in_a_group() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir, Arc::new(ManualClock::default()));
    let sink = Arc::new(Collect::default());
    store.set_event_sink(sink.clone());
    store
        .enqueue_with(vec![], |conn| {
            conn.batch_execute("CREATE TABLE orders (id INTEGER PRIMARY KEY NOT NULL)")
        })
        .await
        .unwrap();
    store
        .enqueue(NewJob::new("tx").unique_key("held"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 => store.enqueue(NewJob::new("plain")).await.map(|_| "plain"),
                1 => {
                    let jobs = vec![NewJob::new("tx").input(json!(i))];
                    let (jobs, n) = store
                        .enqueue_with(jobs, move |conn| {
                            diesel::sql_query("INSERT INTO orders (id) VALUES (?)")
                                .bind::<diesel::sql_types::BigInt, _>(i)
                                .execute(conn)
                        })
                        .await
                        .unwrap();
                    assert_eq!((jobs.len(), n), (1, 1));
                    Ok("committed")
                }
                2 => {
                    let r = store
                        .enqueue_with(vec![NewJob::new("tx")], move |conn| {
                            conn.batch_execute(&format!("INSERT INTO orders (id) VALUES ({i})"))?;
                            Err::<(), _>(diesel::result::Error::RollbackTransaction)
                        })
                        .await;
                    assert!(matches!(r, Err(crate::UserTxError::Closure(_))));
                    Ok("closure failed")
                }
                _ => {
                    let r = store
                        .enqueue_with(vec![NewJob::new("tx").unique_key("held")], move |conn| {
                            conn.batch_execute(&format!("INSERT INTO orders (id) VALUES ({i})"))
                        })
                        .await;
                    match r {
                        Err(crate::UserTxError::Store(e)) => {
                            assert_eq!(e.kind(), ErrorKind::Duplicate);
                        }
                        other => panic!("{other:?}"),
                    }
                    Ok("refused")
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut conn =
        diesel::SqliteConnection::establish(dir.path().join("jobs.db").to_str().unwrap()).unwrap();
    // Only the committed closures' rows, each with its job.
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM orders"), 50);
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM orders WHERE id % 4 != 1"
        ),
        0
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM jobs WHERE pipeline = 'tx'"
        ),
        51
    );
    assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM jobs"), 101);
    // Gap-free events, all published once.
    let seqs: Vec<u64> = sink.0.lock().unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=101).collect::<Vec<_>>());
    assert_eq!(store.last_seq().await.unwrap(), 101);
    // Bad input is refused before the closure runs.
    let r = store
        .enqueue_with(vec![NewJob::new(" ")], |_| -> Result<(), String> {
            panic!("the closure must not run")
        })
        .await;
    assert!(matches!(r, Err(crate::UserTxError::Store(e)) if e.kind() == ErrorKind::Invalid));
    // A panicking closure fails its call only.
    let r = store
        .enqueue_with(vec![NewJob::new("tx")], |_| -> Result<(), String> {
            panic!("boom")
        })
        .await;
    assert!(matches!(r, Err(crate::UserTxError::Store(e)) if e.kind() == ErrorKind::Internal));
    store.enqueue(NewJob::new("after")).await.unwrap();
    assert_eq!(store.last_seq().await.unwrap(), 102);
}

fn kind_of_open(path: &std::path::Path) -> ErrorKind {
    match SqliteStore::open(path, SqliteOptions::default()) {
        Ok(_) => panic!("opened {}", path.display()),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e.kind()
        }
    }
}

#[test]
fn a_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    assert_eq!(kind_of_open(&path), ErrorKind::Corrupt);
    // The file is left as it was.
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
}

#[test]
fn a_damaged_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    close(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    // Keep the header, smash the pages after it.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().skip(100) {
        *b = 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    // A -wal file left behind would still hold good copies of the pages.
    let _ = std::fs::remove_file(dir.path().join("jobs.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("jobs.db-shm"));
    assert_eq!(kind_of_open(&path), ErrorKind::Corrupt);
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/jobs.db");
    assert_eq!(kind_of_open(&path), ErrorKind::Io);
    assert!(!dir.path().join("no").exists());
}

#[test]
fn a_read_only_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    close(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&path, perms).unwrap();
    assert_eq!(kind_of_open(&path), ErrorKind::Io);
}

/// Each claim records its worker on the attempt it starts (`jobs.worker`),
/// as the PostgreSQL store does; a claim that names none records none. Claims
/// of different workers merged in one writer group keep theirs.
#[tokio::test]
async fn claims_record_their_worker() {
    use diesel::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir, Arc::new(ManualClock::default()));
    for _ in 0..3 {
        store.enqueue(NewJob::new("p").phases(["x"])).await.unwrap();
    }
    let (a, b) = tokio::join!(
        store.claim(ClaimRequest::new(1).worker("node-a")),
        store.claim(ClaimRequest::new(1).worker("node-b")),
    );
    let (a, b) = (a.unwrap().remove(0), b.unwrap().remove(0));
    let anonymous = store.claim(ClaimRequest::new(1)).await.unwrap().remove(0);
    close(store);
    let path = dir.path().join("jobs.db");
    let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    let mut worker_of = |id: JobId| -> Option<String> {
        crate::schema::jobs::table
            .find(id.to_string())
            .select(crate::schema::jobs::worker)
            .first(&mut conn)
            .unwrap()
    };
    assert_eq!(worker_of(a.job.id).as_deref(), Some("node-a"));
    assert_eq!(worker_of(b.job.id).as_deref(), Some("node-b"));
    assert_eq!(worker_of(anonymous.job.id), None);
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    close(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('29990101000000');
         CREATE TABLE from_the_future (x INTEGER);",
    )
    .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path, SqliteOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaTooNew, "{err}");
    assert!(err.to_string().contains("29990101000000"), "{err}");
}

#[test]
fn a_path_that_is_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(kind_of_open(dir.path()), ErrorKind::Io);
}

/// The claim, list and retention queries use an index, not a scan of jobs.
#[test]
fn hot_queries_use_indexes() {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    #[derive(QueryableByName)]
    struct Plan {
        #[diesel(sql_type = Text)]
        detail: String,
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    close(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    let queries = [
        // claim (the subquery of the claim UPDATE)
        "SELECT id FROM jobs WHERE status = 'queued' AND run_at <= ?2 \
         AND NOT EXISTS (SELECT 1 FROM job_dependencies WHERE job_dependencies.job_id = jobs.id) \
         AND pipeline NOT IN (?3) \
         AND pipeline NOT IN (SELECT pipeline FROM paused_pipelines) \
         ORDER BY priority DESC, run_at, created_at, id LIMIT ?4",
        // list, unfiltered, by status, by pipeline, next page
        "SELECT * FROM jobs ORDER BY id DESC LIMIT ?1",
        "SELECT * FROM jobs WHERE status IN (?1, ?2) ORDER BY id DESC LIMIT ?3",
        "SELECT * FROM jobs WHERE pipeline = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        // retention
        "SELECT * FROM jobs WHERE finished_at < ?1 AND +status IN ('completed', 'failed', \
         'cancelled') ORDER BY finished_at, id LIMIT ?5",
        "SELECT * FROM jobs WHERE stale_at < ?1 AND +status = 'stale' ORDER BY stale_at, id LIMIT ?3",
        // recovery, unique keys
        "SELECT * FROM jobs WHERE status = ?1 ORDER BY id",
        "SELECT id FROM jobs WHERE unique_key = ?1 AND status IN (?2, ?3)",
        "SELECT id FROM jobs WHERE period_key = ?1",
        // due deliveries, event replay
        "SELECT * FROM webhook_deliveries WHERE status = ?1 AND next_attempt_at <= ?2 \
         ORDER BY next_attempt_at, event_seq, id LIMIT ?3",
        "SELECT * FROM events WHERE seq > ?1 AND job_id = ?2 ORDER BY seq LIMIT ?3",
        // the dependents of a job that ended
        "SELECT job_id, on_failure FROM job_dependencies WHERE depends_on = ?1 ORDER BY job_id",
    ];
    let mut plan_of = |q: &str| -> Vec<String> {
        let plan: Vec<Plan> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {q}"))
            .load(&mut conn)
            .unwrap();
        plan.into_iter().map(|p| p.detail).collect()
    };
    // The partial indexes serve the queries they were made for.
    for (q, index) in [
        (queries[0], "jobs_claim"),
        (queries[4], "jobs_finished"),
        (queries[5], "jobs_stale"),
        (queries[7], "jobs_unique_key"),
        (queries[8], "jobs_period_key"),
        (queries[11], "job_dependencies_depends_on"),
    ] {
        let plan = plan_of(q);
        assert!(
            plan.iter().any(|s| s.contains(&format!("INDEX {index}"))),
            "{q}: {plan:?}"
        );
    }
    for q in queries {
        let plan = plan_of(q);
        for step in &plan {
            let full_scan = step.starts_with("SCAN jobs") && !step.contains("USING")
                || step.starts_with("SCAN webhook_deliveries") && !step.contains("USING")
                || step.starts_with("SCAN events") && !step.contains("USING")
                || step.starts_with("SCAN job_dependencies") && !step.contains("USING");
            assert!(!full_scan, "{q}\nscans a whole table: {plan:?}");
        }
        assert!(
            plan.iter()
                .any(|s| s.contains("INDEX") || s.contains("PRIMARY KEY")),
            "{q}: {plan:?}"
        );
    }
    // A claim looks a candidate's dependencies up by their key.
    let claim = plan_of(queries[0]);
    assert!(
        claim
            .iter()
            .any(|s| s.contains("job_dependencies") && s.contains("PRIMARY KEY")),
        "{claim:?}"
    );
}

/// Many tasks enqueue and claim at once for a while: every job is claimed
/// exactly once and the event sequence has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueue_and_claim() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("jobs.db"), SqliteOptions::default()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let producers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                while tokio::time::Instant::now() < deadline {
                    ids.push(store.enqueue(NewJob::new("p")).await.unwrap().id);
                }
                ids
            })
        })
        .collect();
    let consumers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                while tokio::time::Instant::now() < deadline {
                    for c in store.claim(ClaimRequest::new(4)).await.unwrap() {
                        ids.push(c.job.id);
                        store.complete_job(&c.lease).await.unwrap();
                    }
                    tokio::task::yield_now().await;
                }
                ids
            })
        })
        .collect();
    let mut enqueued = Vec::new();
    for p in producers {
        enqueued.extend(p.await.unwrap());
    }
    let mut claimed = Vec::new();
    for c in consumers {
        claimed.extend(c.await.unwrap());
    }
    // Claim what is left after the deadline.
    loop {
        let batch = store.claim(ClaimRequest::new(256)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for c in batch {
            claimed.push(c.job.id);
            store.complete_job(&c.lease).await.unwrap();
        }
    }
    assert!(enqueued.len() > 100, "only {} jobs", enqueued.len());
    let mut a = enqueued.clone();
    a.sort();
    let mut b = claimed.clone();
    b.sort();
    let n = b.len();
    b.dedup();
    assert_eq!(b.len(), n, "a job was claimed twice");
    assert_eq!(a, b, "claimed jobs differ from enqueued ones");
    let last = store.last_seq().await.unwrap();
    assert_eq!(last, 3 * enqueued.len() as u64);
    let mut seq = 0;
    while seq < last {
        let page = store
            .events_after(seq, EventFilter::default(), 1000)
            .await
            .unwrap();
        for e in page {
            assert_eq!(e.seq, seq + 1, "gap in the event sequence");
            seq = e.seq;
        }
    }
    let done = store
        .list(JobFilter {
            statuses: vec![JobStatus::Completed],
            limit: 1,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(done.jobs.len(), 1);
}

/// The conformance suite of core, a test per case, on a fresh file per case
/// and on a fresh in-memory database per case. The store's futures are woken
/// by its own threads, so the suite's runtime-free executor drives them.
mod conformance {
    use std::cell::RefCell;
    use std::future::Future;
    use std::sync::Arc;

    use jobqueue_core::testing::BoxFuture;
    use jobqueue_core::{JobStore, ManualClock};

    use crate::{SqliteOptions, SqliteStore};

    thread_local! {
        /// The directories of the file stores the running case opened.
        static CASE_DIRS: RefCell<Vec<tempfile::TempDir>> = const { RefCell::new(Vec::new()) };
    }

    /// A store on a new file in a new temporary directory, removed when the
    /// case ends (see [`run_then_remove_dirs`]).
    fn on_a_new_file(clock: Arc<ManualClock>) -> BoxFuture<'static, Arc<dyn JobStore>> {
        let dir = tempfile::tempdir().unwrap();
        let store = super::file_store(&dir, clock);
        CASE_DIRS.with_borrow_mut(|dirs| dirs.push(dir));
        Box::pin(async move { Arc::new(store) as Arc<dyn JobStore> })
    }

    /// A store on a new in-memory database.
    fn on_a_new_memory_database(clock: Arc<ManualClock>) -> BoxFuture<'static, Arc<dyn JobStore>> {
        let store = SqliteStore::open_in_memory(SqliteOptions::default().clock(clock)).unwrap();
        Box::pin(async move { Arc::new(store) as Arc<dyn JobStore> })
    }

    /// Runs a case, then removes the directories its stores used, also when
    /// it failed. The case's future, and with it the store, is gone by then:
    /// dropping the store closes the database first.
    fn run_then_remove_dirs(case: impl Future<Output = ()>) {
        struct RemoveDirs;
        impl Drop for RemoveDirs {
            fn drop(&mut self) {
                drop(CASE_DIRS.take());
            }
        }
        let _remove = RemoveDirs;
        jobqueue_core::testing::block_on(case);
    }

    mod on_a_file {
        jobqueue_core::conformance_tests!(
            super::on_a_new_file,
            block_on = super::run_then_remove_dirs
        );
    }

    mod in_memory {
        jobqueue_core::conformance_tests!(super::on_a_new_memory_database);

        // One process per database: the one store, handed out twice.
        jobqueue_core::shared_conformance_tests!(|clock| {
            let store = super::on_a_new_memory_database(clock);
            Box::pin(async move {
                let store = store.await;
                (store.clone(), store)
            }) as jobqueue_core::testing::BoxFuture<'static, _>
        });
    }
}

/// Set in the environment of the child process of [`acknowledged_writes_survive_sigkill`]:
/// the database it writes to.
const CRASH_CHILD_ENV: &str = "JOBQUEUE_SQLITE_CRASH_CHILD";

/// The child of [`acknowledged_writes_survive_sigkill`]: when the parent
/// runs it (with [`CRASH_CHILD_ENV`] set), it writes through the store until
/// it is killed, printing `ACK <id>` after each enqueue returned and
/// `DONE <id>` after each job it completed. Run without the variable, it
/// does nothing.
#[test]
fn crash_child() {
    use std::io::Write as _;
    let Ok(path) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        let out = Arc::new(Mutex::new(std::io::stdout()));
        // A safety net only: the parent kills the child long before.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = store.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let job = store
                        .enqueue(NewJob::new("crash").phases(["only"]).input(json!({"t": t})))
                        .await
                        .unwrap();
                    {
                        let mut o = out.lock().unwrap();
                        writeln!(o, "ACK {}", job.id).unwrap();
                        o.flush().unwrap();
                    }
                    if t % 2 == 0 {
                        for c in store.claim(ClaimRequest::new(2)).await.unwrap() {
                            // A job recovered after an earlier kill may have
                            // its phase completed already: it resumes after it.
                            if c.job.first_incomplete_phase() == Some(0) {
                                store.phase_started(&c.lease, 0).await.unwrap();
                                store.phase_completed(&c.lease, 0, json!(t)).await.unwrap();
                            }
                            store.complete_job(&c.lease).await.unwrap();
                            let mut o = out.lock().unwrap();
                            writeln!(o, "DONE {}", c.job.id).unwrap();
                            o.flush().unwrap();
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// A child process writes through the store and is killed with SIGKILL at
/// random moments; after each kill the database opens cleanly and holds
/// every write the child had acknowledged.
#[test]
fn acknowledged_writes_survive_sigkill() {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher as _;
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let exe = std::env::current_exe().unwrap();
    let mut acked = Vec::new();
    let mut done = Vec::new();
    let random = RandomState::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..5u64 {
        // Kill after a random number of acknowledgements, 1 to 400.
        let kill_after = 1 + random.hash_one(round) % 400;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < kill_after {
            let Some(line) = lines.next() else { break };
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.push(id.parse::<jobqueue_core::JobId>().unwrap());
                seen += 1;
            } else if let Some(id) = line.strip_prefix("DONE ") {
                done.push(id.parse::<jobqueue_core::JobId>().unwrap());
            }
        }
        if seen < kill_after {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("the child stopped early in round {round}:\n{err}");
        }
        child.kill().unwrap();
        // What was printed before the kill was acknowledged too.
        for line in lines {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.push(id.parse().unwrap());
            } else if let Some(id) = line.strip_prefix("DONE ") {
                done.push(id.parse().unwrap());
            }
        }
        child.wait().unwrap();

        rt.block_on(async {
            let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
            for id in &acked {
                assert!(
                    store.job(*id).await.unwrap().is_some(),
                    "round {round}: acknowledged job {id} is lost"
                );
            }
            for id in &done {
                let job = store.job(*id).await.unwrap().unwrap();
                assert_eq!(job.status, JobStatus::Completed, "round {round}: job {id}");
            }
            let last = store.last_seq().await.unwrap();
            let mut seq = 0;
            while seq < last {
                for e in store
                    .events_after(seq, EventFilter::default(), 1000)
                    .await
                    .unwrap()
                {
                    assert_eq!(e.seq, seq + 1, "round {round}: gap in the event sequence");
                    seq = e.seq;
                }
            }
            // Jobs the child held when it died are recovered.
            store.recover(RecoverScope::All).await.unwrap();
            // The next child needs the file: one store per file.
            store.close().await;
        });
    }
    assert!(acked.len() >= 5);
}

/// A full disk (here: the database at its size cap) fails the write that
/// hits it with an `Io` error, never a panic; what was acknowledged stays,
/// the event sequence stays gap-free, and the store keeps serving.
#[tokio::test]
async fn a_full_disk_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    close(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    let store =
        SqliteStore::open(&path, SqliteOptions::default().max_size(size + 64 * 1024)).unwrap();
    let big = json!("x".repeat(2000));
    let mut acked = Vec::new();
    let err = loop {
        match store.enqueue(NewJob::new("p").input(big.clone())).await {
            Ok(job) => acked.push(job.id),
            Err(e) => break e,
        }
        assert!(acked.len() < 10_000, "the cap was never reached");
    };
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    // Concurrent writers all get clean errors too.
    let results = futures::future::join_all(
        (0..20).map(|_| store.enqueue(NewJob::new("p").input(big.clone()))),
    )
    .await;
    for r in results {
        if let Err(e) = r {
            assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        }
    }
    // Small writes may still fit; reads work; nothing acknowledged is lost.
    for id in &acked {
        assert!(store.job(*id).await.unwrap().is_some());
    }
    let last = store.last_seq().await.unwrap();
    let events = store
        .events_after(0, EventFilter::default(), 100_000)
        .await
        .unwrap();
    assert_eq!(events.len() as u64, last);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1)
    );
    store.close().await;
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    for id in &acked {
        assert!(store.job(*id).await.unwrap().is_some());
    }
}

/// A sink that panics does not take the writer down.
#[tokio::test]
async fn a_panicking_sink_does_not_stop_the_store() {
    struct Boom;
    impl EventSink for Boom {
        fn publish(&self, _: &[Event]) {
            panic!("sink bug");
        }
    }
    let store = SqliteStore::open_in_memory(SqliteOptions::default()).unwrap();
    store.set_event_sink(Arc::new(Boom));
    let a = store.enqueue(NewJob::new("p")).await.unwrap();
    let b = store.enqueue(NewJob::new("p")).await.unwrap();
    assert!(store.job(a.id).await.unwrap().is_some());
    assert!(store.job(b.id).await.unwrap().is_some());
    assert_eq!(store.last_seq().await.unwrap(), 2);
}

/// A multi-row insert names every column of its row type once and has one
/// group of parameters per row, each as wide as the columns.
#[test]
fn multi_row_inserts_have_a_parameter_per_column_and_row() {
    use crate::query::{RowInsert, insert_sql};
    use crate::rows::{DeliveryRow, EventRow, JobRow, PhaseRow};

    fn check<R: RowInsert>(n: usize) {
        let sql = insert_sql::<R>(n);
        assert!(
            sql.starts_with(&format!("INSERT OR FAIL INTO `{}` (", R::TABLE)),
            "{sql}"
        );
        for c in R::COLUMNS {
            assert_eq!(sql.matches(&format!("`{c}`")).count(), 1, "{c} in {sql}");
        }
        assert_eq!(sql.matches('?').count(), R::COLUMNS.len() * n, "{sql}");
        assert_eq!(sql.matches('(').count(), n + 1, "{sql}");
    }
    for n in [1, 4, 16, 64] {
        check::<JobRow>(n);
        check::<PhaseRow>(n);
        check::<EventRow>(n);
        check::<DeliveryRow>(n);
    }
}

/// A job's update sets exactly the columns its operation changed: a
/// heartbeat the lease's expiry, a completion the status, the end time and
/// the lease.
#[test]
fn job_updates_set_only_the_changed_columns() {
    use crate::rows::JobState;
    use jobqueue_core::{Job, LeaseToken};
    let t0 = time::OffsetDateTime::UNIX_EPOCH;
    let t1 = t0 + Duration::from_secs(60);
    let mut job = Job::queued(NewJob::new("p"), t0);
    job.claim(LeaseToken::new(), t1, t0).unwrap();
    let running = job.clone();
    job.lease_expires_at = Some(t1 + Duration::from_secs(60));
    let sql = |a: &Job, b: &Job| {
        let shape = JobState::of(b).changed_from(&JobState::of(a));
        (shape != 0).then(|| JobState::sql(shape))
    };
    assert_eq!(
        sql(&running, &job).as_deref(),
        Some("UPDATE OR FAIL `jobs` SET `lease_expires_at` = ? WHERE `id` = ?")
    );
    let mut done = running.clone();
    done.complete(t1).unwrap();
    assert_eq!(
        sql(&running, &done).as_deref(),
        Some(
            "UPDATE OR FAIL `jobs` SET `status` = ?, `finished_at` = ?, `lease` = ?, \
             `lease_expires_at` = ? WHERE `id` = ?"
        )
    );
    assert_eq!(sql(&running, &running), None);
}
