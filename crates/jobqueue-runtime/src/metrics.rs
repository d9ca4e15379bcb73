//! The runtime's figures, recorded through the [`metrics`] facade: a
//! program that installs a recorder (`metrics-exporter-prometheus`, an
//! OpenTelemetry bridge, statsd, ...) sees them; without one they cost
//! almost nothing. The names are listed here and in `docs/guide.md`.
//!
//! These are the library's figures. The server's `GET /metrics` keeps its
//! own registry (see `jobqueue-http`), with other names, so that the two
//! never count one thing under one name twice.

use std::time::Duration;

/// Counter: jobs that ended, by `pipeline` and `outcome` (`completed`,
/// `failed`, `cancelled`).
pub const JOBS_FINISHED: &str = "jobqueue_runtime_jobs_finished_total";
/// Histogram, in seconds: one run of a phase, by `pipeline`, `phase` and
/// `outcome` (`completed`, `failed`, `cancelled`, `interrupted`,
/// `snoozed`, `lease_lost`).
pub const PHASE_DURATION: &str = "jobqueue_runtime_phase_duration_seconds";
/// Gauge: queued jobs by `pipeline`, including those due later or waiting
/// for a retry; sampled by the pump at most once per ten seconds (or poll interval, if longer).
pub const QUEUE_DEPTH: &str = "jobqueue_runtime_queue_depth";
/// Histogram, in seconds: how long a job was due (its `run_at` passed)
/// before this process claimed it, by `pipeline`.
pub const CLAIM_LATENCY: &str = "jobqueue_runtime_claim_latency_seconds";
/// Gauge: jobs running in this process.
pub const JOBS_RUNNING: &str = "jobqueue_runtime_jobs_running";

/// Every name above, for documentation and tests.
pub const ALL: [&str; 5] = [
    JOBS_FINISHED,
    PHASE_DURATION,
    QUEUE_DEPTH,
    CLAIM_LATENCY,
    JOBS_RUNNING,
];

/// How a job ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobOutcome {
    Completed,
    Failed,
    Cancelled,
}

impl JobOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

pub(crate) fn job_finished(pipeline: &str, outcome: JobOutcome) {
    metrics::counter!(JOBS_FINISHED, "pipeline" => pipeline.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
}

pub(crate) fn phase_ran(pipeline: &str, phase: &str, outcome: &'static str, took: Duration) {
    metrics::histogram!(
        PHASE_DURATION,
        "pipeline" => pipeline.to_owned(),
        "phase" => phase.to_owned(),
        "outcome" => outcome
    )
    .record(took.as_secs_f64());
}

pub(crate) fn claimed(pipeline: &str, waited: Duration) {
    metrics::histogram!(CLAIM_LATENCY, "pipeline" => pipeline.to_owned())
        .record(waited.as_secs_f64());
}

pub(crate) fn queue_depth(pipeline: &str, queued: u64) {
    // A gauge is an f64: counts past 2^53 jobs would round, harmlessly.
    metrics::gauge!(QUEUE_DEPTH, "pipeline" => pipeline.to_owned()).set(queued as f64);
}

pub(crate) fn running(total: usize) {
    metrics::gauge!(JOBS_RUNNING).set(total as f64);
}
