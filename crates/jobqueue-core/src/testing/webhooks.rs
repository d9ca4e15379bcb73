//! The webhook outbox: each event gets one delivery per matching endpoint and
//! one to the job's own URL, committed with the event and carrying its own
//! snapshot of it; attempts are recorded (retry, delivered, failed), and a
//! delivery survives the deletion of its job.

use std::time::Duration;

use serde_json::json;

use super::{Ctx, assert_kind, claim_one, spec};
use crate::clock::Clock;
use crate::error::ErrorKind;
use crate::id::DeliveryId;
use crate::job::Progress;
use crate::machine::EventType;
use crate::outbox::{AttemptOutcome, DeliveryFilter, DeliveryStatus, DeliveryTarget, WebhookRoute};
use crate::store::EventFilter;

pub(super) async fn outbox(ctx: &Ctx) {
    let s = &ctx.store;
    s.set_webhook_routes(vec![
        WebhookRoute {
            url: "https://all.example/hook".into(),
            events: None,
        },
        WebhookRoute {
            url: "https://done.example/hook".into(),
            events: Some(vec![EventType::JobCompleted]),
        },
    ]);
    let j = s
        .enqueue(spec("p", &["a"]).webhook_url("https://job.example/cb"))
        .await
        .unwrap();
    let c = claim_one(ctx).await;
    s.phase_started(&c.lease, 0).await.unwrap();
    s.phase_progress(&c.lease, 0, Progress::new(50, None))
        .await
        .unwrap();
    s.phase_completed(&c.lease, 0, json!(1)).await.unwrap();
    s.complete_job(&c.lease).await.unwrap();
    let events = s
        .events_after(0, EventFilter::default(), 100)
        .await
        .unwrap();
    let all = s.deliveries(DeliveryFilter::default()).await.unwrap();
    // created, started, phase.started, phase.completed, completed: 5 events
    // without progress, to "all" and to the job's url; completed also to "done".
    assert_eq!(all.len(), 5 + 5 + 1);
    for d in &all {
        let e = events
            .iter()
            .find(|e| e.seq == d.event_seq)
            .expect("delivery of a stored event");
        assert_eq!(&d.event, e, "the payload snapshot is the event");
        assert_eq!(d.job_id, Some(j.id));
        assert_ne!(
            d.event.event_type(),
            EventType::PhaseProgress,
            "progress is not delivered by default"
        );
        assert_eq!(
            (d.status, d.attempts, d.next_attempt_at),
            (DeliveryStatus::Pending, 0, Some(ctx.clock.now()))
        );
        let expected_target = if d.url == "https://job.example/cb" {
            DeliveryTarget::Job
        } else {
            DeliveryTarget::Endpoint
        };
        assert_eq!(d.target, expected_target);
    }
    let done: Vec<_> = all
        .iter()
        .filter(|d| d.url == "https://done.example/hook")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].event.event_type(), EventType::JobCompleted);
    let mut ids: Vec<DeliveryId> = all.iter().map(|d| d.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "one id per event and endpoint");

    let due = s.due_deliveries(100).await.unwrap();
    assert_eq!(due.len(), all.len());
    assert_eq!(s.next_delivery_at().await.unwrap(), Some(ctx.clock.now()));
    let first = &due[0];
    let later = ctx.clock.now() + Duration::from_secs(5);
    let d = s
        .record_attempt(
            first.id,
            AttemptOutcome::Retry {
                status: Some(500),
                error: "server error".into(),
                next_attempt_at: later,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (d.attempts, d.last_status, d.next_attempt_at, d.status),
        (1, Some(500), Some(later), DeliveryStatus::Pending)
    );
    assert!(
        !s.due_deliveries(100)
            .await
            .unwrap()
            .iter()
            .any(|x| x.id == first.id),
        "not due before its time"
    );
    ctx.clock.advance(Duration::from_secs(5));
    assert!(
        s.due_deliveries(100)
            .await
            .unwrap()
            .iter()
            .any(|x| x.id == first.id)
    );
    let d = s
        .record_attempt(first.id, AttemptOutcome::Delivered { status: 200 })
        .await
        .unwrap();
    assert_eq!(
        (d.attempts, d.status, d.last_status, d.next_attempt_at),
        (2, DeliveryStatus::Delivered, Some(200), None)
    );
    assert_kind(
        s.record_attempt(first.id, AttemptOutcome::Delivered { status: 200 })
            .await,
        ErrorKind::Conflict,
    );
    assert_kind(
        s.record_attempt(DeliveryId::new(), AttemptOutcome::Delivered { status: 200 })
            .await,
        ErrorKind::NotFound,
    );
    let gone = s
        .record_attempt(
            due[1].id,
            AttemptOutcome::Failed {
                status: Some(410),
                error: "gone".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (gone.status, gone.next_attempt_at),
        (DeliveryStatus::Failed, None)
    );
    let delivered = s
        .deliveries(DeliveryFilter {
            job: Some(j.id),
            statuses: vec![DeliveryStatus::Delivered],
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);

    // Deleting the job keeps its deliveries whole; the delete itself is delivered.
    s.delete(j.id).await.unwrap();
    let pending = s
        .deliveries(DeliveryFilter {
            job: Some(j.id),
            statuses: vec![DeliveryStatus::Pending],
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        pending.len(),
        all.len() - 2 + 2,
        "the job.deleted event goes to \"all\" and the job's url"
    );
    for d in &pending {
        let r = s
            .record_attempt(d.id, AttemptOutcome::Delivered { status: 204 })
            .await
            .unwrap();
        assert_eq!(r.event, d.event, "the snapshot survives the job");
    }
    assert!(s.due_deliveries(100).await.unwrap().is_empty());
    assert_eq!(s.next_delivery_at().await.unwrap(), None);
    assert_eq!(
        s.deliveries(DeliveryFilter {
            limit: 3,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap()
        .len(),
        3
    );
}
