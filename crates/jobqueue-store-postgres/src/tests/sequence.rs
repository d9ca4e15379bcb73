//! Event numbers under concurrent writers: two stores on one schema (as two
//! processes would share a database), each with several tasks writing on
//! connections of their own, while a reader follows `events_after` page by
//! page. Commits of different sizes race; the reader must never see a
//! number before every smaller one has committed, or replay would skip it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use jobqueue_core::testing::RecordingSink;
use jobqueue_core::{ClaimRequest, Clock, Event, EventFilter, JobStore, NewJob, SystemClock};
use serde_json::json;

// Not `RunQueryDsl` here: its `load` would shadow `AtomicBool::load`.
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};

use super::db::in_schema;
use crate::seq::Number;

/// Tasks per store.
const WRITERS: usize = 4;
/// Rounds per task; each round commits five transactions of one to three
/// events.
const ROUNDS: usize = 12;
/// Events per page of the reader.
const PAGE: usize = 7;

/// One writer: enqueues (single and batched), claims, runs and completes
/// jobs, each step its own transaction.
async fn write(store: Arc<dyn JobStore>, pipeline: String) {
    for _ in 0..ROUNDS {
        store
            .enqueue(NewJob::new(pipeline.clone()).phases(["a"]))
            .await
            .unwrap();
        let batch = (0..3)
            .map(|_| NewJob::new(pipeline.clone()).phases(["a"]))
            .collect();
        store.enqueue_batch(batch).await.unwrap();
        let claimed = store
            .claim(ClaimRequest::new(2).pipelines(vec![pipeline.clone()]))
            .await
            .unwrap();
        for c in claimed {
            store.phase_started(&c.lease, 0).await.unwrap();
            store
                .phase_completed(&c.lease, 0, json!({"ok": true}))
                .await
                .unwrap();
            store.complete_job(&c.lease).await.unwrap();
        }
    }
}

#[test]
fn replay_has_no_gap_and_no_duplicate_while_writes_are_in_flight() {
    in_schema(|scratch| async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut stores = Vec::new();
        let mut sinks = Vec::new();
        for _ in 0..2 {
            let store = Arc::new(scratch.store(clock.clone()).await);
            let sink = Arc::new(RecordingSink::default());
            store.set_event_sink(sink.clone());
            stores.push(store as Arc<dyn JobStore>);
            sinks.push(sink);
        }
        let reader_store = stores[0].clone();
        let writing = Arc::new(AtomicBool::new(true));
        let reads_in_flight = Arc::new(AtomicUsize::new(0));

        // The reader: pages of `events_after` from where it got to. Every
        // page must continue exactly at the next number.
        let reader = {
            let writing = writing.clone();
            let reads_in_flight = reads_in_flight.clone();
            tokio::spawn(async move {
                let mut seen: Vec<Event> = Vec::new();
                let mut after = 0;
                loop {
                    let still_writing = writing.load(Ordering::Acquire);
                    let page = reader_store
                        .events_after(after, EventFilter::default(), PAGE)
                        .await
                        .unwrap();
                    if !page.is_empty() && still_writing {
                        reads_in_flight.fetch_add(1, Ordering::Relaxed);
                    }
                    for e in &page {
                        assert_eq!(
                            e.seq,
                            after + 1,
                            "replay skipped or repeated a number: {after} then {}",
                            e.seq
                        );
                        after = e.seq;
                    }
                    seen.extend(page);
                    let last = reader_store.last_seq().await.unwrap();
                    if !still_writing && after == last {
                        return seen;
                    }
                    tokio::task::yield_now().await;
                }
            })
        };

        let mut writers = Vec::new();
        for (s, store) in stores.iter().enumerate() {
            for w in 0..WRITERS {
                writers.push(tokio::spawn(write(store.clone(), format!("p{s}-{w}"))));
            }
        }
        let deadline = Duration::from_secs(120);
        tokio::time::timeout(deadline, async {
            for w in writers {
                w.await.unwrap();
            }
        })
        .await
        .expect("the writers finish in time");
        writing.store(false, Ordering::Release);
        let seen = tokio::time::timeout(deadline, reader)
            .await
            .expect("the reader catches up in time")
            .unwrap();

        let last = stores[1].last_seq().await.unwrap();
        let created = (2 * WRITERS * ROUNDS * 4) as u64;
        assert!(
            last >= created,
            "{last} events, fewer than the {created} enqueues"
        );
        let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "replay is 1..=last_seq"
        );
        assert!(
            reads_in_flight.load(Ordering::Relaxed) > 0,
            "the reader read while the writers were writing"
        );

        // Each store published its own events in order; together, every
        // event exactly once, as stored.
        let mut all = BTreeSet::new();
        for sink in &sinks {
            let published = sink.events();
            assert!(
                published.windows(2).all(|w| w[0].seq < w[1].seq),
                "a store publishes in sequence order"
            );
            for e in published {
                assert_eq!(
                    Some(&e),
                    seen.get(e.seq as usize - 1),
                    "published as stored"
                );
                assert!(all.insert(e.seq), "event {} published twice", e.seq);
            }
        }
        assert_eq!(all.len() as u64, last, "every event published once");
    });
}

/// Opens a transaction on `owner` that reserves the next number, as a
/// store's transaction would; returns the number.
async fn reserve_by_hand(owner: &mut AsyncPgConnection, other: &mut AsyncPgConnection) -> u64 {
    use diesel_async::RunQueryDsl;
    owner.batch_execute("BEGIN").await.unwrap();
    let xid: Number = diesel::sql_query(crate::seq::OWNER_SQL)
        .get_result(owner)
        .await
        .unwrap();
    // A group of one: one number, the first of the group's.
    let base: Number = diesel::sql_query(crate::seq::RESERVE_SQL)
        .bind::<diesel::sql_types::BigInt, _>(1)
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(vec![0_i64])
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(vec![1_i64])
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(vec![xid.n])
        .get_result(other)
        .await
        .unwrap();
    base.n as u64 + 1
}

async fn seqs(store: &dyn JobStore) -> Vec<u64> {
    store
        .events_after(0, EventFilter::default(), 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// Readers stop below a number reserved by a transaction still running,
/// and go on when it commits or aborts; an aborted one leaves a gap in the
/// numbers, never in the events, and retention clears its reservation.
#[test]
fn readers_stop_below_numbers_in_flight() {
    use diesel_async::RunQueryDsl;
    in_schema(|scratch| async move {
        let store = scratch.store(Arc::new(SystemClock)).await;
        let first = store.enqueue(NewJob::new("p")).await.unwrap();
        let mut owner = scratch.connection().await;
        let mut other = scratch.connection().await;

        // An owner that commits its event.
        let held = reserve_by_hand(&mut owner, &mut other).await;
        assert_eq!(held, 2);
        store.enqueue(NewJob::new("p")).await.unwrap();
        assert_eq!(seqs(&store).await, [1], "event 3 waits behind number 2");
        assert_eq!(store.last_seq().await.unwrap(), 1);
        owner
            .batch_execute(&format!(
                "INSERT INTO events (seq, job_id, pipeline, event_type, at, data) \
                 VALUES (2, '{}', 'p', 'job.cancelled', now(), '{{}}'); \
                 DELETE FROM seq_reservations WHERE first_seq = 2; COMMIT",
                first.id
            ))
            .await
            .unwrap();
        assert_eq!(seqs(&store).await, [1, 2, 3]);
        assert_eq!(store.last_seq().await.unwrap(), 3);

        // An owner that aborts (say its process died).
        let lost = reserve_by_hand(&mut owner, &mut other).await;
        assert_eq!(lost, 4);
        store.enqueue(NewJob::new("p")).await.unwrap();
        assert_eq!(seqs(&store).await, [1, 2, 3]);
        owner.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(seqs(&store).await, [1, 2, 3, 5], "number 4 holds nothing");
        assert_eq!(store.last_seq().await.unwrap(), 5);
        store
            .prune(time::OffsetDateTime::now_utc(), 10)
            .await
            .unwrap();
        let left: Vec<Number> = diesel::sql_query("SELECT count(*) AS n FROM seq_reservations")
            .load(&mut other)
            .await
            .unwrap();
        assert_eq!(left[0].n, 0, "retention forgets the aborted reservation");
    });
}
