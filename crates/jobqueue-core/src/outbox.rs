//! The webhook outbox: which events go to which URLs, and the delivery rows a
//! store writes in the same atomic step as the event.
//!
//! Core only routes and records; signing and sending live in `jobqueue-events`.

use time::OffsetDateTime;

use crate::clock::truncate_to_micros;
use crate::error::StoreError;
use crate::event::Event;
use crate::id::{DeliveryId, JobId};
use crate::machine::EventType;
use crate::names::named_enum;

/// A configured webhook endpoint, as far as routing is concerned. Its secret,
/// retry schedule and timeout belong to the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRoute {
    /// Where to POST.
    pub url: String,
    /// The event types it wants; `None` means every job event but
    /// `job.phase.progress` (pipeline events only go to endpoints that name
    /// them).
    pub events: Option<Vec<EventType>>,
}

impl WebhookRoute {
    /// Whether an event of type `ty` goes to this endpoint.
    pub fn wants(&self, ty: EventType) -> bool {
        match &self.events {
            Some(types) => types.contains(&ty),
            None => default_filter(ty),
        }
    }
}

/// The default filter of an endpoint and of a per-job `webhook_url`: every
/// job event type but progress, which is frequent and coalesced. Pipeline
/// events (`pipeline.paused`, `pipeline.resumed`) are not in it: an endpoint
/// receives them only when it names them, so the receivers of the default
/// filter see exactly the events they saw before pipeline events existed.
pub fn default_filter(ty: EventType) -> bool {
    ty != EventType::PhaseProgress && !ty.is_pipeline_event()
}

named_enum! {
    /// Where a delivery is in its life.
    pub enum DeliveryStatus ("delivery status") {
        /// Waiting for its next attempt.
        Pending => "pending",
        /// A 2xx answer arrived.
        Delivered => "delivered",
        /// Gave up: the schedule ran out, or the receiver said 410 Gone.
        Failed => "failed",
    }
}

named_enum! {
    /// Whose endpoint a delivery goes to, which decides its secret.
    pub enum DeliveryTarget ("delivery target") {
        /// A `[[webhooks]]` endpoint of the configuration, found by its URL.
        Endpoint => "endpoint",
        /// The job's own `webhook_url`, signed with the default secret.
        Job => "job",
    }
}

/// One event to one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Its id; the `webhook-id` header.
    pub id: DeliveryId,
    /// The event's sequence number.
    pub event_seq: u64,
    /// The event's job; `None` for a pipeline event.
    pub job_id: Option<JobId>,
    /// Whose endpoint.
    pub target: DeliveryTarget,
    /// Where to POST.
    pub url: String,
    /// A snapshot of the event, so the delivery never needs the job's rows.
    pub event: Event,
    /// Its status.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The HTTP status of the last attempt, if one arrived.
    pub last_status: Option<u16>,
    /// What went wrong in the last attempt.
    pub last_error: Option<String>,
    /// When the next attempt is due (`None` once it ended).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// When it was written.
    pub created_at: OffsetDateTime,
}

/// The deliveries `event` routes to, pending and due at `now`: one per
/// configured endpoint that wants its type, and one to the job's own
/// `webhook_url` (default filter). A store writes them in the same atomic
/// step as the event.
pub fn deliveries_for(
    event: &Event,
    routes: &[WebhookRoute],
    webhook_url: Option<&str>,
    now: OffsetDateTime,
) -> Vec<Delivery> {
    let ty = event.event_type();
    let endpoints = routes
        .iter()
        .filter(|r| r.wants(ty))
        .map(|r| (DeliveryTarget::Endpoint, r.url.as_str()));
    let own = webhook_url
        .filter(|_| default_filter(ty))
        .map(|url| (DeliveryTarget::Job, url));
    endpoints
        .chain(own)
        .map(|(target, url)| Delivery {
            id: DeliveryId::new(),
            event_seq: event.seq,
            job_id: event.job_id,
            target,
            url: url.to_owned(),
            event: event.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            next_attempt_at: Some(now),
            created_at: now,
        })
        .collect()
}

impl Delivery {
    /// Records what an attempt came to: one more attempt, its status and
    /// error, and either the next attempt's time or the end. Refused (and
    /// nothing changed) when the delivery already ended.
    pub fn record(&mut self, outcome: AttemptOutcome) -> Result<(), StoreError> {
        if self.status != DeliveryStatus::Pending {
            return Err(StoreError::Conflict(format!(
                "webhook delivery {} already ended as {}",
                self.id, self.status
            )));
        }
        if let AttemptOutcome::Retry {
            next_attempt_at, ..
        } = &outcome
        {
            crate::timefmt::check("next_attempt_at", *next_attempt_at)
                .map_err(StoreError::Invalid)?;
        }
        self.attempts = self.attempts.saturating_add(1);
        match outcome {
            AttemptOutcome::Delivered { status } => {
                self.status = DeliveryStatus::Delivered;
                self.last_status = Some(status);
                self.last_error = None;
                self.next_attempt_at = None;
            }
            AttemptOutcome::Retry {
                status,
                error,
                next_attempt_at,
            } => {
                self.last_status = status;
                self.last_error = Some(error);
                self.next_attempt_at = Some(truncate_to_micros(next_attempt_at));
            }
            AttemptOutcome::Failed { status, error } => {
                self.status = DeliveryStatus::Failed;
                self.last_status = status;
                self.last_error = Some(error);
                self.next_attempt_at = None;
            }
        }
        Ok(())
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer.
    Delivered {
        /// The status code.
        status: u16,
    },
    /// It failed; try again at `next_attempt_at`.
    Retry {
        /// The status code, if an answer arrived.
        status: Option<u16>,
        /// What went wrong.
        error: String,
        /// When to try again.
        next_attempt_at: OffsetDateTime,
    },
    /// It failed for good.
    Failed {
        /// The status code, if an answer arrived.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only this job's.
    pub job: Option<JobId>,
    /// Only these statuses; empty means all.
    pub statuses: Vec<DeliveryStatus>,
    /// At most this many (0 means no limit).
    pub limit: usize,
}
