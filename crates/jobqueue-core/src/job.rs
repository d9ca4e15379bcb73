//! Job and phase records, and [`NewJob`], what a caller enqueues.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::id::{JobId, LeaseToken};
use crate::machine::{JobStatus, PhaseStatus};

/// The attempts a job gets when its [`NewJob`] does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The longest pipeline name, unique key or phase name a store accepts.
pub const MAX_NAME_LEN: usize = 256;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// The pipeline that runs it.
    pub pipeline: String,
    /// The job's input, handed to every phase.
    pub input: Value,
    /// Higher runs first.
    pub priority: i32,
    /// Not before this time; `None` means now.
    pub run_at: Option<OffsetDateTime>,
    /// At most one queued or running job holds a given key.
    pub unique_key: Option<String>,
    /// Attempts before the job fails for good (at least 1).
    pub max_attempts: u32,
    /// Events of this job are also delivered here, signed with the default secret.
    pub webhook_url: Option<String>,
    /// The names of the pipeline's phases, in order, so the job shows them as
    /// `pending` from the start and a store can check phase indexes. Empty
    /// only for a job whose pipeline the enqueuing process does not know.
    pub phases: Vec<String>,
}

impl NewJob {
    /// A job for `pipeline` with a `null` input and default options.
    pub fn new(pipeline: impl Into<String>) -> Self {
        Self {
            pipeline: pipeline.into(),
            input: Value::Null,
            priority: 0,
            run_at: None,
            unique_key: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            webhook_url: None,
            phases: Vec::new(),
        }
    }

    /// Sets the input.
    pub fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// Sets the priority (higher first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Runs the job no earlier than `at`.
    pub fn run_at(mut self, at: OffsetDateTime) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Sets the unique key.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Sets the attempt budget.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the per-job webhook URL.
    pub fn webhook_url(mut self, url: impl Into<String>) -> Self {
        self.webhook_url = Some(url.into());
        self
    }

    /// Sets the pipeline's phase names.
    pub fn phases<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.phases = names.into_iter().map(Into::into).collect();
        self
    }

    /// Checks what any store must refuse; the error text says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        check_name("pipeline", &self.pipeline)?;
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".to_owned());
        }
        if let Some(key) = &self.unique_key {
            check_name("unique_key", key)?;
        }
        for (i, name) in self.phases.iter().enumerate() {
            check_name("phase name", name)?;
            if self.phases[..i].contains(name) {
                return Err(format!("phase name {name:?} appears twice"));
            }
        }
        if let Some(url) = &self.webhook_url {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(format!(
                    "webhook_url must be an http or https URL, got {url:?}"
                ));
            }
        }
        Ok(())
    }
}

fn check_name(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("{what} is longer than {MAX_NAME_LEN} bytes"));
    }
    Ok(())
}

/// The last progress a phase reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 0 to 100.
    pub percent: u8,
    /// Optional text, e.g. "3 of 8 files".
    pub message: Option<String>,
}

impl Progress {
    /// Progress at `percent` (clamped to 100) with an optional message.
    pub fn new(percent: u8, message: Option<String>) -> Self {
        Self {
            percent: percent.min(100),
            message,
        }
    }
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// The phase that failed, if the failure was in a phase.
    pub phase: Option<String>,
    /// What went wrong.
    pub message: String,
    /// The attempt in which it failed.
    pub attempt: u32,
}

/// Where a crash or a shutdown cut a job short. Kept on the job after it
/// resumes, and handed to the phase when it runs again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupted {
    /// The phase that was running.
    pub phase: String,
    /// When the interruption was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The phase's last reported progress.
    pub progress: Option<Progress>,
}

/// One phase of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// The phase's name, unique within the pipeline.
    pub name: String,
    /// Its status.
    pub status: PhaseStatus,
    /// How many times it started.
    pub attempts: u32,
    /// The last progress it reported in its current or last run.
    pub progress: Option<Progress>,
    /// Its result. Invariant: `Some` exactly when `status` is `Completed`.
    pub result: Option<Value>,
    /// The error of its last failed run.
    pub error: Option<String>,
    /// When it last started.
    pub started_at: Option<OffsetDateTime>,
    /// When it last finished.
    pub finished_at: Option<OffsetDateTime>,
}

impl Phase {
    /// A phase that has not run.
    pub fn pending(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: PhaseStatus::Pending,
            attempts: 0,
            progress: None,
            result: None,
            error: None,
            started_at: None,
            finished_at: None,
        }
    }
}

/// A job as a store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its pipeline.
    pub pipeline: String,
    /// Its status.
    pub status: JobStatus,
    /// Its input.
    pub input: Value,
    /// Higher runs first.
    pub priority: i32,
    /// Its unique key, held while it is queued or running.
    pub unique_key: Option<String>,
    /// Attempts started so far.
    pub attempt: u32,
    /// The attempt budget.
    pub max_attempts: u32,
    /// When it was enqueued.
    pub created_at: OffsetDateTime,
    /// Not claimed before this time.
    pub run_at: OffsetDateTime,
    /// When its current or last attempt started.
    pub started_at: Option<OffsetDateTime>,
    /// When it finished (completed, failed or cancelled).
    pub finished_at: Option<OffsetDateTime>,
    /// When retention marked it stale.
    pub stale_at: Option<OffsetDateTime>,
    /// Why it failed, if it did.
    pub error: Option<JobError>,
    /// Where a crash or shutdown last cut it short.
    pub interrupted: Option<Interrupted>,
    /// The per-job webhook URL.
    pub webhook_url: Option<String>,
    /// A user asked to cancel it while it was running.
    pub cancel_requested: bool,
    /// The fencing token of the current claim. Invariant: `Some` exactly when
    /// `status` is `Running`.
    pub lease: Option<LeaseToken>,
    /// When the current lease runs out unless renewed by a heartbeat.
    pub lease_expires_at: Option<OffsetDateTime>,
    /// Its phases in pipeline order.
    pub phases: Vec<Phase>,
}

impl Job {
    /// The results of the completed phases, by phase name.
    pub fn results(&self) -> Map<String, Value> {
        self.phases
            .iter()
            .filter(|p| p.status == PhaseStatus::Completed)
            .map(|p| (p.name.clone(), p.result.clone().unwrap_or(Value::Null)))
            .collect()
    }

    /// The index of the first phase that has not completed: where a run resumes.
    pub fn first_incomplete_phase(&self) -> Option<usize> {
        self.phases
            .iter()
            .position(|p| p.status != PhaseStatus::Completed)
    }

    /// The phase called `name`.
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }
}
