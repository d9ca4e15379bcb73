//! Paused pipelines: no claim hands out a queued job of a paused pipeline,
//! while the jobs of other pipelines go on; enqueues still succeed; a running
//! job finishes, and one queued again for a retry waits; resuming makes them
//! claimable again. Pausing and resuming are idempotent: each change appends
//! one `pipeline.paused` or `pipeline.resumed` event, without a job id, and
//! a repeated call appends nothing. Pipeline events go to webhook endpoints
//! that name them, never to one with the default filter nor to a job's own
//! URL. A bad name is `Invalid` and changes nothing.

use std::time::Duration;

use serde_json::json;

use super::{Ctx, assert_kind, claimed_ids, enqueue, snapshot, spec};
use crate::clock::Clock;
use crate::error::ErrorKind;
use crate::event::Event;
use crate::machine::{EventType, JobStatus};
use crate::outbox::{DeliveryFilter, WebhookRoute};
use crate::store::{ClaimRequest, EventFilter, FailureOutcome};

/// Every pipeline event, oldest first.
async fn pipeline_events(ctx: &Ctx) -> Vec<Event> {
    let filter = EventFilter {
        job: None,
        types: vec![EventType::PipelinePaused, EventType::PipelineResumed],
    };
    ctx.store.events_after(0, filter, usize::MAX).await.unwrap()
}

pub(super) async fn paused_pipeline_is_not_claimed(ctx: &Ctx) {
    let s = &ctx.store;
    let p1 = enqueue(ctx, "p", &["a"]).await;
    let q1 = enqueue(ctx, "q", &["a"]).await;
    assert!(s.pause_pipeline("p").await.unwrap(), "a change");
    assert!(!s.pause_pipeline("p").await.unwrap(), "already paused");
    assert_eq!(s.paused_pipelines().await.unwrap(), ["p"]);
    let p2 = enqueue(ctx, "p", &["a"]).await;
    assert_eq!(p2.status, JobStatus::Queued, "enqueue works while paused");
    assert_eq!(
        claimed_ids(ctx, ClaimRequest::new(10)).await,
        [q1.id],
        "only the other pipeline's job"
    );
    let named = ClaimRequest::new(10).pipelines(vec!["p".into()]);
    assert!(claimed_ids(ctx, named).await.is_empty());
    assert!(s.resume_pipeline("p").await.unwrap());
    assert!(!s.resume_pipeline("p").await.unwrap(), "not paused");
    assert!(!s.resume_pipeline("never-paused").await.unwrap());
    assert!(s.paused_pipelines().await.unwrap().is_empty());
    assert_eq!(
        claimed_ids(ctx, ClaimRequest::new(10)).await,
        [p1.id, p2.id]
    );

    let events = pipeline_events(ctx).await;
    let types: Vec<EventType> = events.iter().map(Event::event_type).collect();
    assert_eq!(
        types,
        [EventType::PipelinePaused, EventType::PipelineResumed],
        "one event per change"
    );
    for e in &events {
        assert_eq!(e.job_id, None);
        assert_eq!(e.pipeline, "p");
        assert_eq!(e.data.to_json(), json!({}));
    }
    assert!(events[0].seq < events[1].seq);
    let of_job = EventFilter {
        job: Some(p1.id),
        types: vec![],
    };
    let job_events = s.events_after(0, of_job, usize::MAX).await.unwrap();
    assert!(
        job_events.iter().all(|e| e.job_id == Some(p1.id)),
        "a job's events hold no pipeline event"
    );
}

pub(super) async fn running_jobs_finish_while_paused(ctx: &Ctx) {
    let s = &ctx.store;
    enqueue(ctx, "p", &["a"]).await;
    enqueue(ctx, "p", &["a"]).await;
    let mut claimed = s.claim(ClaimRequest::new(2)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    s.pause_pipeline("p").await.unwrap();
    // One completes normally while paused.
    let done = claimed.remove(0);
    s.phase_started(&done.lease, 0).await.unwrap();
    s.phase_completed(&done.lease, 0, json!(1)).await.unwrap();
    let job = s.complete_job(&done.lease).await.unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    // The other fails with a retry: queued again, it waits while paused.
    let retried = claimed.remove(0);
    s.phase_started(&retried.lease, 0).await.unwrap();
    let at = ctx.clock.now() + Duration::from_secs(1);
    let job = s
        .phase_failed(
            &retried.lease,
            0,
            "flaky".into(),
            FailureOutcome::RetryAt(at),
        )
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    ctx.clock.advance(Duration::from_secs(2));
    assert!(claimed_ids(ctx, ClaimRequest::new(10)).await.is_empty());
    s.resume_pipeline("p").await.unwrap();
    assert_eq!(claimed_ids(ctx, ClaimRequest::new(10)).await, [job.id]);
}

pub(super) async fn pause_refuses_bad_names(ctx: &Ctx) {
    let s = &ctx.store;
    enqueue(ctx, "p", &["a"]).await;
    let before = snapshot(ctx).await;
    let long = "x".repeat(257);
    for bad in ["", "  ", long.as_str()] {
        assert_kind(s.pause_pipeline(bad).await, ErrorKind::Invalid);
        assert_kind(s.resume_pipeline(bad).await, ErrorKind::Invalid);
    }
    assert_eq!(
        snapshot(ctx).await,
        before,
        "a refused pause changes nothing"
    );
    assert!(s.paused_pipelines().await.unwrap().is_empty());
    // Any valid name is accepted, also of a pipeline no job has used.
    assert!(s.pause_pipeline("no jobs yet").await.unwrap());
    assert_eq!(s.paused_pipelines().await.unwrap(), ["no jobs yet"]);
}

pub(super) async fn pipeline_events_route_to_endpoints_that_name_them(ctx: &Ctx) {
    let s = &ctx.store;
    s.set_webhook_routes(vec![
        WebhookRoute {
            url: "https://all.example/hook".into(),
            events: None,
        },
        WebhookRoute {
            url: "https://ops.example/hook".into(),
            events: Some(vec![EventType::PipelinePaused, EventType::PipelineResumed]),
        },
    ]);
    let j = s
        .enqueue(spec("p", &["a"]).webhook_url("https://job.example/cb"))
        .await
        .unwrap();
    s.pause_pipeline("p").await.unwrap();
    s.resume_pipeline("p").await.unwrap();
    let all = s.deliveries(DeliveryFilter::default()).await.unwrap();
    let of_pipeline: Vec<_> = all
        .iter()
        .filter(|d| d.event.event_type().is_pipeline_event())
        .collect();
    assert_eq!(of_pipeline.len(), 2, "paused and resumed, to ops only");
    for d in &of_pipeline {
        assert_eq!(d.url, "https://ops.example/hook");
        assert_eq!(d.job_id, None);
        assert_eq!(d.event.pipeline, "p");
    }
    let of_job = DeliveryFilter {
        job: Some(j.id),
        ..DeliveryFilter::default()
    };
    let job_deliveries = s.deliveries(of_job).await.unwrap();
    assert_eq!(job_deliveries.len(), 2, "job.created to all and to the job");
    assert!(
        job_deliveries
            .iter()
            .all(|d| d.event.event_type() == EventType::JobCreated)
    );
}
