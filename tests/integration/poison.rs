//! Poison among ordinary jobs: nothing a caller sends, no phase result and
//! no row damaged from outside may stall the queue, break listing or stop
//! SSE replay.

use jobqueue::{ErrorKind, EventType, JobQueue, NewJob, PhaseError, Pipeline, phase_fn};
use jobqueue_tests::StoreKind;
use serde_json::json;

use crate::Env;

fn one_phase(name: &str) -> Pipeline {
    Pipeline::new(name).phase(phase_fn("only", |_ctx| async move {
        Ok::<_, PhaseError>(json!("done"))
    }))
}

/// Reads SSE frames from `after` until the frame of event `last`; returns
/// the ids seen, in order.
async fn replay_ids(queue: &JobQueue, after: u64, last: u64) -> Vec<u64> {
    use futures_util::StreamExt;
    let mut stream = Box::pin(queue.sse(after, jobqueue::EventFilter::default()));
    let mut ids = Vec::new();
    let mut text = String::new();
    tokio::time::timeout(jobqueue_tests::DEADLINE, async {
        while ids.last() != Some(&last) {
            let chunk = stream.next().await.expect("the stream ended").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id: ")) {
                    ids.push(id.parse().unwrap());
                }
            }
        }
    })
    .await
    .expect("SSE replay reached the last event");
    ids
}

fn nested(depth: usize) -> serde_json::Value {
    (0..depth).fold(json!(1), |inner, _| serde_json::Value::Array(vec![inner]))
}

store_tests! {
    // Poison between ordinary jobs: inputs and times the store cannot hold
    // are refused at the edge, results it cannot hold fail their job with a
    // clear error, and on SQLite a row damaged from outside fails only its
    // job (claims) or is skipped (replay). Every ordinary job completes,
    // listing works, and SSE replay from 0 reaches the last event.
    async fn poison_never_stalls_the_queue(kind: StoreKind) {
        let env = Env::new(kind);
        let deep_result = Pipeline::new("deep-result")
            .phase(phase_fn("only", |_ctx| async move { Ok::<_, PhaseError>(nested(100)) }));
        let huge_result = Pipeline::new("huge-result").phase(phase_fn("only", |_ctx| async move {
            Ok::<_, PhaseError>(json!("x".repeat(jobqueue::core::job::MAX_JSON_BYTES + 1)))
        }));
        let (queue, rec) = env
            .start_with(vec![one_phase("p"), deep_result, huge_result], |b| b.concurrency(4))
            .await;
        let mut ordinary = Vec::new();
        let mut failing = Vec::new();
        let far_past = time::macros::datetime!(-0001-06-01 00:00:00 UTC);
        let far_future = time::macros::datetime!(9999-12-31 23:30:00 -01:00);
        let mut damaged = None;
        for i in 0..10 {
            ordinary.push(queue.enqueue("p", &json!({"i": i})).await.unwrap().id);
            let refused = match i {
                0 => queue.enqueue("p", &nested(65)).await,
                1 => queue.enqueue("p", &json!("x".repeat(jobqueue::core::job::MAX_JSON_BYTES + 1))).await,
                2 => queue.enqueue_job(NewJob::new("p").run_at(far_past)).await,
                3 => queue.enqueue_job(NewJob::new("p").run_at(far_future)).await,
                _ => Ok(queue.enqueue("p", &json!(null)).await.unwrap()),
            };
            if i < 4 {
                let err = refused.unwrap_err();
                assert!(matches!(&err, jobqueue::Error::Store(e) if e.kind() == ErrorKind::Invalid), "{err}");
            }
            match i {
                // A large but allowed input flows through like any other.
                4 => ordinary.push(queue.enqueue("p", &json!("y".repeat(1 << 20))).await.unwrap().id),
                5 => failing.push(queue.enqueue("deep-result", &json!(null)).await.unwrap().id),
                6 => failing.push(queue.enqueue("huge-result", &json!(null)).await.unwrap().id),
                7 if kind == StoreKind::Sqlite => {
                    // Due in a moment; damaged before that.
                    let later = jobqueue::Clock::now(&*env.clock) + std::time::Duration::from_millis(300);
                    let job = queue.enqueue_job(NewJob::new("p").run_at(later)).await.unwrap();
                    damage(&env, &format!("UPDATE jobs SET input = '[[[' WHERE id = '{}'", job.id));
                    damaged = Some(job.id);
                }
                _ => {}
            }
        }
        for id in &ordinary {
            rec.wait_for(*id, EventType::JobCompleted).await;
        }
        for id in &failing {
            rec.wait_for(*id, EventType::JobFailed).await;
            let job = queue.get(*id).await.unwrap().unwrap();
            let message = job.error.unwrap().message;
            assert!(message.contains("refused the phase's result"), "{message}");
        }
        if let Some(id) = damaged {
            rec.wait_for(id, EventType::JobFailed).await;
            let failed = rec.events().into_iter().find(|e| e.job_id == Some(id) && e.event_type() == EventType::JobFailed).unwrap();
            assert!(failed.data.to_json().to_string().contains("cannot be read back"));
            // And an event of an ordinary job goes bad too: event 3 is the
            // row numbered 3, or the second event of row 2 (the store keeps
            // two events of one job from one write in one row).
            damage(
                &env,
                "UPDATE events SET data = CASE WHEN seq = 3 THEN '{' ELSE data END, \
                 data2 = CASE WHEN seq = 2 THEN '{' ELSE data2 END \
                 WHERE seq = 3 OR (seq = 2 AND event_type2 IS NOT NULL)",
            );
        }
        // Listing works, page by page, and finds every ordinary job.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = queue.list(jobqueue::JobFilter { limit: 4, cursor, ..jobqueue::JobFilter::default() }).await.unwrap();
            seen.extend(page.jobs.iter().map(|j| j.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        for id in &ordinary {
            assert!(seen.contains(id), "job {id} listed");
        }
        // SSE replay from 0 reaches the end.
        let last = queue.store().last_seq().await.unwrap();
        let ids = replay_ids(&queue, 0, last).await;
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate");
        if damaged.is_some() {
            assert!(!ids.contains(&3), "the damaged event is skipped");
        }
        queue.shutdown().await;
    }
}

/// Runs `sql` on the env's SQLite file through a connection of its own, as
/// damage from outside the queue would come.
fn damage(env: &Env, sql: &str) {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let path = env.db_path();
    let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(&format!("PRAGMA busy_timeout = 5000; {sql}"))
        .unwrap();
}
