//! `GET /metrics`: the queue in the Prometheus text format.
//!
//! Every metric is named `jobqueue_...`; [`CATALOGUE`] lists them with their
//! type, labels and meaning (`docs/http-api.md` shows the same table,
//! generated from it). Three sources feed them:
//!
//! - **At each scrape**, from the store: jobs by pipeline and status
//!   ([`JobStore::counts`](jobqueue::core::JobStore::counts), which groups
//!   without reading jobs), the queue depth, the last event sequence number,
//!   and the health of the queue's background tasks.
//! - **From the event bus**, followed from the moment the API starts:
//!   completions and failures by pipeline, events by type, and phase
//!   durations (from each `job.phase.started` to its phase's
//!   `job.phase.completed` or `job.phase.failed`, by the events' own times).
//! - **From the webhook dispatcher**: the outcome of every delivery attempt.
//!
//! Counters count from the API's start, as Prometheus counters do; a
//! restart begins them at zero again, which `rate()` handles.
//!
//! The answer is the Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4`), or OpenMetrics text when the scraper asks
//! for it in `Accept` (Prometheus does).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use http::{Method, StatusCode};
use jobqueue::core::{
    Delivery, DeliveryStatus, ErrorKind, Event, EventData, EventFilter, EventType, JobId, JobStatus,
};
use jobqueue::{JobQueue, Subscription};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// The content type of the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The content type of OpenMetrics text, sent when `Accept` asks for it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The upper bounds of the phase duration buckets, in seconds: 10 ms to 3 h.
pub const PHASE_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    10800.0,
];

/// One metric as a scrape shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDoc {
    /// Its name in the output (counters end in `_total`).
    pub name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it measures (the `# HELP` text).
    pub help: &'static str,
}

const fn doc(
    name: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

/// Every metric of `/metrics`.
pub const CATALOGUE: [MetricDoc; 10] = [
    doc(
        "jobqueue_jobs",
        "gauge",
        &["pipeline", "status"],
        "Jobs in the store by pipeline and status, counted at each scrape",
    ),
    doc(
        "jobqueue_queue_depth",
        "gauge",
        &["pipeline"],
        "Queued jobs by pipeline, including those scheduled for later or waiting for a retry",
    ),
    doc(
        "jobqueue_jobs_completed_total",
        "counter",
        &["pipeline"],
        "Jobs that completed since the server started, by pipeline",
    ),
    doc(
        "jobqueue_jobs_failed_total",
        "counter",
        &["pipeline"],
        "Jobs that failed for good since the server started, by pipeline",
    ),
    doc(
        "jobqueue_events_total",
        "counter",
        &["type"],
        "Events committed since the server started, by event type",
    ),
    doc(
        "jobqueue_phase_duration_seconds",
        "histogram",
        &["pipeline", "phase", "outcome"],
        "How long phase runs took, from job.phase.started to job.phase.completed (outcome completed) or job.phase.failed (outcome failed)",
    ),
    doc(
        "jobqueue_webhook_attempts_total",
        "counter",
        &["outcome"],
        "Webhook delivery attempts by outcome: delivered, retrying (failed, another attempt follows) or failed (the delivery gave up)",
    ),
    doc(
        "jobqueue_event_seq",
        "gauge",
        &[],
        "The sequence number of the last event committed",
    ),
    doc(
        "jobqueue_task_healthy",
        "gauge",
        &["task"],
        "1 while the queue's background task is running (or stopped by shutdown), 0 when it failed or is restarting",
    ),
    doc(
        "jobqueue_http_requests_total",
        "counter",
        &["method", "route", "status"],
        "HTTP requests answered, by method, route template and status",
    ),
];

/// Phase starts remembered at most; more means events were missed, and the
/// oldest knowledge is dropped rather than kept for ever.
const MAX_TRACKED_PHASES: usize = 100_000;

type Labels<const N: usize> = [(&'static str, String); N];

/// The metrics of one API.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    jobs: Family<Labels<2>, Gauge>,
    queue_depth: Family<Labels<1>, Gauge>,
    completed: Family<Labels<1>, Counter>,
    failed: Family<Labels<1>, Counter>,
    events: Family<Labels<1>, Counter>,
    phase_duration: Family<Labels<3>, Histogram>,
    webhook_attempts: Family<Labels<1>, Counter>,
    event_seq: Gauge,
    tasks: Family<Labels<1>, Gauge>,
    http_requests: Family<Labels<3>, Counter>,
    /// One scrape at a time: each resets and refills the store-fed gauges.
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            jobs: Family::default(),
            queue_depth: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            events: Family::default(),
            phase_duration: Family::new_with_constructor(|| Histogram::new(PHASE_BUCKETS)),
            webhook_attempts: Family::default(),
            event_seq: Gauge::default(),
            tasks: Family::default(),
            http_requests: Family::default(),
            scrape: tokio::sync::Mutex::new(()),
        };
        let mut registry = Registry::default();
        let r = &mut registry;
        register(r, 0, metrics.jobs.clone());
        register(r, 1, metrics.queue_depth.clone());
        register(r, 2, metrics.completed.clone());
        register(r, 3, metrics.failed.clone());
        register(r, 4, metrics.events.clone());
        register(r, 5, metrics.phase_duration.clone());
        register(r, 6, metrics.webhook_attempts.clone());
        register(r, 7, metrics.event_seq.clone());
        register(r, 8, metrics.tasks.clone());
        register(r, 9, metrics.http_requests.clone());
        Self {
            registry,
            ..metrics
        }
    }

    /// Starts the counters whose labels are known in advance at zero, so
    /// their series exist before the first event: completions and failures
    /// of every pipeline the queue runs, events of every type, and every
    /// webhook outcome. (A series that appears only with its first increment
    /// makes `rate()` miss that increment.)
    pub(crate) fn prime(&self, queue: &JobQueue) {
        for pipeline in queue.runtime().pipelines().iter() {
            let labels = [("pipeline", pipeline.name().to_owned())];
            self.completed.get_or_create(&labels).inc_by(0);
            self.failed.get_or_create(&labels).inc_by(0);
        }
        for ty in EventType::ALL {
            self.events
                .get_or_create(&[("type", ty.as_str().to_owned())])
                .inc_by(0);
        }
        for outcome in ["delivered", "retrying", "failed"] {
            self.webhook_attempts
                .get_or_create(&[("outcome", outcome.to_owned())])
                .inc_by(0);
        }
    }

    /// Counts one answered request.
    pub(crate) fn observe_request(&self, method: &Method, route: &'static str, status: StatusCode) {
        let method = match *method {
            Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::PATCH
            | Method::OPTIONS => method.as_str().to_owned(),
            _ => "other".to_owned(),
        };
        self.http_requests
            .get_or_create(&[
                ("method", method),
                ("route", route.to_owned()),
                ("status", status.as_str().to_owned()),
            ])
            .inc();
    }

    /// The text of a scrape: reads what the store knows now, then encodes
    /// every metric (OpenMetrics text when `openmetrics`).
    pub(crate) async fn render(
        &self,
        queue: &JobQueue,
        openmetrics: bool,
    ) -> Result<String, ApiError> {
        let counts = queue.store().counts().await?;
        let last_seq = queue.store().last_seq().await?;
        let health = queue.health();

        let _one_at_a_time = self.scrape.lock().await;
        self.jobs.clear();
        self.queue_depth.clear();
        self.tasks.clear();
        // Every pipeline the queue runs shows every status, zero or not, so
        // a series does not vanish when its last job moves on.
        let mut pipelines: BTreeSet<&str> = queue
            .runtime()
            .pipelines()
            .iter()
            .map(|p| p.name())
            .collect();
        pipelines.extend(counts.iter().map(|c| c.pipeline.as_str()));
        for pipeline in pipelines {
            for status in JobStatus::ALL.iter().filter(|s| **s != JobStatus::Deleted) {
                self.jobs
                    .get_or_create(&job_labels(pipeline, *status))
                    .set(0);
            }
            self.queue_depth
                .get_or_create(&[("pipeline", pipeline.to_owned())])
                .set(0);
        }
        for c in &counts {
            let n = i64::try_from(c.count).unwrap_or(i64::MAX);
            self.jobs
                .get_or_create(&job_labels(&c.pipeline, c.status))
                .set(n);
            if c.status == JobStatus::Queued {
                self.queue_depth
                    .get_or_create(&[("pipeline", c.pipeline.clone())])
                    .set(n);
            }
        }
        self.event_seq
            .set(i64::try_from(last_seq).unwrap_or(i64::MAX));
        for task in &health.tasks {
            self.tasks
                .get_or_create(&[("task", task.name.clone())])
                .set(i64::from(task.is_ok()));
        }

        let mut text = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        };
        encoded.map_err(|_| {
            ApiError::new(
                crate::error::Code::Internal,
                "the metrics could not be encoded",
            )
        })?;
        Ok(text)
    }

    /// Follows `queue`'s events and webhook attempts until `stop`.
    pub(crate) fn watch(self: Arc<Self>, queue: &JobQueue, stop: CancellationToken) {
        let events = queue.subscribe(EventFilter::default());
        if let Some(attempts) = queue.webhook_attempts() {
            tokio::spawn(self.clone().watch_webhooks(attempts, stop.clone()));
        }
        tokio::spawn(self.watch_events(queue.clone(), events, stop));
    }

    async fn watch_events(
        self: Arc<Self>,
        queue: JobQueue,
        mut events: Subscription,
        stop: CancellationToken,
    ) {
        let mut phases = PhaseStarts::default();
        let mut last_seq = None;
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = events.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    last_seq = Some(event.seq);
                    self.record_event(&event, &mut phases);
                }
                Some(Err(e)) if e.kind() == ErrorKind::Closed => return,
                Some(Err(e)) => {
                    // The subscription is over; a new one continues after
                    // the last event seen, so nothing is counted twice.
                    tracing::warn!(error = %e, "metrics: the event subscription failed; resubscribing");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    events = match last_seq {
                        Some(seq) => queue.subscribe_after(seq, EventFilter::default()),
                        None => queue.subscribe(EventFilter::default()),
                    };
                }
                None => return,
            }
        }
    }

    fn record_event(&self, event: &Event, phases: &mut PhaseStarts) {
        self.events
            .get_or_create(&[("type", event.event_type().as_str().to_owned())])
            .inc();
        let pipeline = || [("pipeline", event.pipeline.clone())];
        // Pipeline events (no job) count by type only.
        let Some(job_id) = event.job_id else {
            return;
        };
        match &event.data {
            EventData::PhaseStarted { index, .. } => phases.started(job_id, *index, event.at),
            EventData::PhaseCompleted { phase, index, .. } => {
                self.phase_ended(phases, job_id, event, phase, *index, "completed");
            }
            EventData::PhaseFailed { phase, index, .. } => {
                self.phase_ended(phases, job_id, event, phase, *index, "failed");
            }
            EventData::Completed { .. } => {
                self.completed.get_or_create(&pipeline()).inc();
                phases.forget(job_id);
            }
            EventData::Failed { .. } => {
                self.failed.get_or_create(&pipeline()).inc();
                phases.forget(job_id);
            }
            EventData::Cancelled { .. }
            | EventData::Interrupted { .. }
            | EventData::Snoozed { .. }
            | EventData::Deleted { .. } => phases.forget(job_id),
            _ => {}
        }
    }

    fn phase_ended(
        &self,
        phases: &mut PhaseStarts,
        job_id: JobId,
        event: &Event,
        phase: &str,
        index: usize,
        outcome: &str,
    ) {
        if let Some(seconds) = phases.ended(job_id, index, event.at) {
            self.phase_duration
                .get_or_create(&[
                    ("pipeline", event.pipeline.clone()),
                    ("phase", phase.to_owned()),
                    ("outcome", outcome.to_owned()),
                ])
                .observe(seconds);
        }
    }

    async fn watch_webhooks(
        self: Arc<Self>,
        mut attempts: broadcast::Receiver<Delivery>,
        stop: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = attempts.recv() => next,
            };
            match next {
                Ok(delivery) => {
                    let outcome = match delivery.status {
                        DeliveryStatus::Delivered => "delivered",
                        DeliveryStatus::Pending => "retrying",
                        DeliveryStatus::Failed => "failed",
                    };
                    self.webhook_attempts
                        .get_or_create(&[("outcome", outcome.to_owned())])
                        .inc();
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "metrics: fell behind the webhook attempts; some are not counted"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Registers `metric` under the name and help of `CATALOGUE[index]`.
fn register(
    registry: &mut Registry,
    index: usize,
    metric: impl prometheus_client::registry::Metric,
) {
    let d = CATALOGUE[index];
    // The encoder adds `_total` to counters itself (and refuses a name
    // that already has it).
    let name = d.name.strip_suffix("_total").unwrap_or(d.name);
    registry.register(name, d.help, metric);
}

fn job_labels(pipeline: &str, status: JobStatus) -> Labels<2> {
    [
        ("pipeline", pipeline.to_owned()),
        ("status", status.as_str().to_owned()),
    ]
}

/// When each job's running phase started. Phases of a job run one at a
/// time, so one entry per job is enough.
#[derive(Debug, Default)]
struct PhaseStarts {
    running: HashMap<JobId, (usize, OffsetDateTime)>,
}

impl PhaseStarts {
    fn started(&mut self, job: JobId, index: usize, at: OffsetDateTime) {
        if self.running.len() >= MAX_TRACKED_PHASES && !self.running.contains_key(&job) {
            self.running.clear();
        }
        self.running.insert(job, (index, at));
    }

    /// The seconds phase `index` of `job` ran, if its start was seen.
    fn ended(&mut self, job: JobId, index: usize, at: OffsetDateTime) -> Option<f64> {
        match self.running.remove(&job) {
            Some((i, start)) if i == index => Some((at - start).as_seconds_f64().max(0.0)),
            _ => None,
        }
    }

    fn forget(&mut self, job: JobId) {
        self.running.remove(&job);
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn phase_durations_pair_starts_with_ends() {
        let mut p = PhaseStarts::default();
        let job = JobId::new();
        p.started(job, 0, datetime!(2030-01-01 00:00:00 UTC));
        assert_eq!(
            p.ended(job, 0, datetime!(2030-01-01 00:00:01.5 UTC)),
            Some(1.5)
        );
        assert_eq!(
            p.ended(job, 0, datetime!(2030-01-01 00:00:02 UTC)),
            None,
            "once"
        );
        p.started(job, 1, datetime!(2030-01-01 00:00:00 UTC));
        assert_eq!(
            p.ended(job, 2, datetime!(2030-01-01 00:00:01 UTC)),
            None,
            "another phase"
        );
        p.started(job, 1, datetime!(2030-01-01 00:00:00 UTC));
        p.forget(job);
        assert_eq!(p.ended(job, 1, datetime!(2030-01-01 00:00:01 UTC)), None);
    }

    #[test]
    fn catalogue_names_are_prefixed_and_unique() {
        for (i, d) in CATALOGUE.iter().enumerate() {
            assert!(d.name.starts_with("jobqueue_"), "{}", d.name);
            assert_eq!(
                d.kind == "counter",
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
            assert!(CATALOGUE[..i].iter().all(|o| o.name != d.name));
        }
    }
}
