//! Reading: `list` pages newest first with a cursor and filters by status and
//! pipeline; `events_after` reads the gap-free event sequence in order,
//! filtered by job and type.

use super::{Ctx, claim_one, enqueue, run_to_completion};
use crate::event::Event;
use crate::machine::{EventType, JobStatus};
use crate::store::{ClaimRequest, EventFilter, JobFilter};

pub(super) async fn list_filters_and_cursor(ctx: &Ctx) {
    let mut ids = Vec::new();
    for i in 0..7 {
        let p = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(enqueue(ctx, p, &["a"]).await.id);
    }
    let c = claim_one(ctx).await;
    assert_eq!(c.job.id, ids[0]);
    let s = &ctx.store;
    let all = s.list(JobFilter::default()).await.unwrap();
    assert_eq!(
        all.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );
    assert_eq!(all.next_cursor, None);
    // Pages of 3 walk every job once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s
            .list(JobFilter {
                limit: 3,
                cursor,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().copied().collect::<Vec<_>>());
    let exact = s
        .list(JobFilter {
            limit: 7,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (exact.jobs.len(), exact.next_cursor),
        (7, None),
        "no cursor when nothing follows"
    );
    let even = s
        .list(JobFilter {
            pipeline: Some("even".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(even.jobs.len(), 4);
    assert!(even.jobs.iter().all(|j| j.pipeline == "even"));
    let running = s
        .list(JobFilter {
            statuses: vec![JobStatus::Running],
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        running.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[0]]
    );
    let both = s
        .list(JobFilter {
            statuses: vec![JobStatus::Running, JobStatus::Queued],
            pipeline: Some("odd".into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(both.jobs.len(), 3);
    let page = s
        .list(JobFilter {
            statuses: vec![JobStatus::Completed],
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(page.jobs.is_empty() && page.next_cursor.is_none());
    assert_eq!(
        all.jobs[0].phases.len(),
        1,
        "listed jobs carry their phases"
    );
}

pub(super) async fn events_after_filters(ctx: &Ctx) {
    let a = run_to_completion(ctx, &["x", "y"]).await;
    let b = enqueue(ctx, "p", &["x"]).await;
    let s = &ctx.store;
    let all = s
        .events_after(0, EventFilter::default(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(all.len() as u64, s.last_seq().await.unwrap());
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let page = s.events_after(2, EventFilter::default(), 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    let of_b = s
        .events_after(
            0,
            EventFilter {
                job: Some(b.id),
                types: vec![],
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(of_b.len(), 1);
    let typed = EventFilter {
        job: None,
        types: vec![EventType::PhaseCompleted, EventType::JobCompleted],
    };
    let t = s.events_after(0, typed, 100).await.unwrap();
    assert_eq!(
        t.iter().map(Event::event_type).collect::<Vec<_>>(),
        [
            EventType::PhaseCompleted,
            EventType::PhaseCompleted,
            EventType::JobCompleted
        ]
    );
    assert!(t.iter().all(|e| e.job_id == Some(a.id)));
    let last = s.last_seq().await.unwrap();
    assert!(
        s.events_after(last, EventFilter::default(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(super) async fn counts_by_pipeline_and_status(ctx: &Ctx) {
    let s = &ctx.store;
    assert!(s.counts().await.unwrap().is_empty());
    enqueue(ctx, "a", &["x"]).await;
    enqueue(ctx, "a", &["x"]).await;
    let cancelled = enqueue(ctx, "b", &["x"]).await;
    enqueue(ctx, "b", &["x"]).await;
    s.request_cancel(cancelled.id).await.unwrap();
    let claimed = s.claim(ClaimRequest::new(1)).await.unwrap();
    // In the promised order: pipeline, then status in `JobStatus` order
    // (`cancelled` after `queued`, unlike the names' alphabetical order).
    let counts: Vec<(String, JobStatus, u64)> = s
        .counts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.pipeline, c.status, c.count))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("a".to_owned(), JobStatus::Queued, 1),
            ("a".to_owned(), JobStatus::Running, 1),
            ("b".to_owned(), JobStatus::Queued, 1),
            ("b".to_owned(), JobStatus::Cancelled, 1),
        ],
        "claimed {:?}",
        claimed[0].job.pipeline
    );
}
