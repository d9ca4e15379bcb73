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

/// The longest per-job `webhook_url` a store accepts, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// The most jobs one job may depend on ([`NewJob::depends_on`]).
pub const MAX_DEPENDENCIES: usize = 1024;

crate::names::named_enum! {
    /// What becomes of a job waiting for its dependencies
    /// ([`NewJob::depends_on`]) when one of them ends `failed` or
    /// `cancelled` instead of `completed`: it can then never start.
    #[derive(Default)]
    pub enum DependencyFailure ("dependency failure policy") {
        /// The job is cancelled (`job.cancelled` with a `reason` naming the
        /// dependency). The default.
        #[default]
        Cancel => "cancel",
        /// The job fails (`job.failed`, its error naming the dependency).
        Fail => "fail",
    }
}

/// The deepest nesting of arrays and objects a job input or a phase result
/// may have. Events wrap results a few levels deeper (`job.completed` holds
/// every result, the wire envelope holds the event), and every JSON reader
/// has a recursion limit (serde_json's is 128), so what a store accepts
/// stays well inside what every reader can read back.
pub const MAX_JSON_DEPTH: usize = 64;

/// The largest a job input or a phase result may be, as JSON text, in bytes.
pub const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;

/// Checks that `value` (a job input or a phase result, named by `what`) is
/// within [`MAX_JSON_DEPTH`] and [`MAX_JSON_BYTES`]; the error says which
/// limit it passes. The walk is iterative, so a value nested too deep for
/// recursion is refused, not a stack overflow.
pub fn check_json(what: &str, value: &Value) -> Result<(), String> {
    // (value, its depth): containers count one level each.
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    let mut bytes: usize = 0;
    while let Some((v, depth)) = stack.pop() {
        let (size, children) = match v {
            Value::Null => (4, None),
            Value::Bool(b) => (if *b { 4 } else { 5 }, None),
            // Digits of an f64 as serde_json writes it: at most 24.
            Value::Number(_) => (24, None),
            Value::String(s) => (s.len().saturating_add(2), None),
            Value::Array(a) => (a.len().saturating_add(2), Some(Either::Array(a))),
            Value::Object(o) => {
                let keys = o.keys().map(|k| k.len().saturating_add(4)).sum::<usize>();
                (keys.saturating_add(2), Some(Either::Object(o)))
            }
        };
        bytes = bytes.saturating_add(size);
        if bytes > MAX_JSON_BYTES {
            return Err(format!(
                "{what} is larger than {} MiB as JSON",
                MAX_JSON_BYTES / (1024 * 1024)
            ));
        }
        if let Some(children) = children {
            let depth = depth.saturating_add(1);
            if depth > MAX_JSON_DEPTH {
                return Err(format!(
                    "{what} is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"
                ));
            }
            match children {
                Either::Array(a) => stack.extend(a.iter().map(|c| (c, depth))),
                Either::Object(o) => stack.extend(o.values().map(|c| (c, depth))),
            }
        }
    }
    Ok(())
}

enum Either<'a> {
    Array(&'a Vec<Value>),
    Object(&'a Map<String, Value>),
}

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
    #[serde(default, with = "crate::timefmt::rfc3339::option")]
    pub run_at: Option<OffsetDateTime>,
    /// At most one queued or running job holds a given key.
    pub unique_key: Option<String>,
    /// The unique key is made from the pipeline and the input
    /// ([`crate::unique::input_key`]) instead of given; exclusive with
    /// `unique_key`.
    #[serde(default)]
    pub unique_by_input: bool,
    /// The job also holds its key (given or made from the input) for the
    /// window of this period it is created in, in every state, until it is
    /// deleted ([`crate::unique`]). A whole number of seconds, at least one.
    #[serde(default)]
    pub unique_for: Option<std::time::Duration>,
    /// Attempts before the job fails for good (at least 1). `None` takes
    /// the pipeline's retry policy's where the enqueuer knows the pipeline
    /// (the façade does), else [`DEFAULT_MAX_ATTEMPTS`].
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Events of this job are also delivered here, signed with the default secret.
    pub webhook_url: Option<String>,
    /// The names of the pipeline's phases, in order, so the job shows them as
    /// `pending` from the start and a store can check phase indexes. Empty
    /// only for a job whose pipeline the enqueuing process does not know.
    pub phases: Vec<String>,
    /// Jobs that must complete before this one starts. Each must exist when
    /// this job is enqueued and be queued, running or completed (a job that
    /// failed, was cancelled or is stale is refused with `Invalid`); ids
    /// given twice count once. The job stays `queued`, and is not claimed,
    /// until every one of them has completed (or no longer exists).
    #[serde(default)]
    pub depends_on: Vec<JobId>,
    /// What happens to this job if a dependency ends failed or cancelled.
    #[serde(default)]
    pub on_dependency_failure: DependencyFailure,
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
            unique_by_input: false,
            unique_for: None,
            max_attempts: None,
            webhook_url: None,
            phases: Vec::new(),
            depends_on: Vec::new(),
            on_dependency_failure: DependencyFailure::Cancel,
        }
    }

    /// Adds jobs that must complete before this one starts (see
    /// [`NewJob::depends_on`]).
    pub fn depends_on(mut self, ids: impl IntoIterator<Item = JobId>) -> Self {
        self.depends_on.extend(ids);
        self
    }

    /// Sets what happens to this job if a dependency fails or is cancelled
    /// (see [`DependencyFailure`]; cancel by default).
    pub fn on_dependency_failure(mut self, policy: DependencyFailure) -> Self {
        self.on_dependency_failure = policy;
        self
    }

    /// The distinct ids of [`NewJob::depends_on`], in order.
    pub fn dependencies(&self) -> Vec<JobId> {
        let mut ids = self.depends_on.clone();
        ids.sort_unstable();
        ids.dedup();
        ids
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

    /// Makes the unique key from the pipeline and the input (whatever input
    /// the job has when it is enqueued): at most one queued or running job
    /// of a pipeline has a given input. See [`crate::unique::input_key`].
    pub fn unique_by_input(mut self) -> Self {
        self.unique_by_input = true;
        self
    }

    /// Holds the job's key (its `unique_key`, or the key made from its input)
    /// for the window of `period` in which it is created, in every state:
    /// another job with the key created in the same window is refused with
    /// [`DuplicateInPeriod`](crate::StoreError::DuplicateInPeriod). Windows
    /// are fixed multiples of the period since the Unix epoch
    /// ([`crate::unique`]).
    pub fn unique_for(mut self, period: std::time::Duration) -> Self {
        self.unique_for = Some(period);
        self
    }

    /// The key the job will hold while queued or running: its `unique_key`,
    /// or the key made from its input with `unique_by_input`.
    pub fn effective_unique_key(&self) -> Option<String> {
        if self.unique_by_input {
            Some(crate::unique::input_key(&self.pipeline, &self.input))
        } else {
            self.unique_key.clone()
        }
    }

    /// Sets the attempt budget.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
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
        if self.max_attempts == Some(0) {
            return Err("max_attempts must be at least 1".to_owned());
        }
        if let Some(key) = &self.unique_key {
            check_name("unique_key", key)?;
            if self.unique_by_input {
                return Err("set unique_key or unique_by_input, not both".to_owned());
            }
        }
        if let Some(period) = self.unique_for {
            crate::unique::check_period(period)?;
            if self.unique_key.is_none() && !self.unique_by_input {
                return Err("unique_for needs a unique_key or unique_by_input".to_owned());
            }
        }
        for (i, name) in self.phases.iter().enumerate() {
            check_name("phase name", name)?;
            if self.phases[..i].contains(name) {
                return Err(format!("phase name {name:?} appears twice"));
            }
        }
        check_json("job input", &self.input)?;
        if self.depends_on.len() > MAX_DEPENDENCIES {
            return Err(format!(
                "depends_on names more than {MAX_DEPENDENCIES} jobs"
            ));
        }
        if let Some(at) = self.run_at {
            crate::timefmt::check("run_at", at)?;
        }
        if let Some(url) = &self.webhook_url {
            if url.len() > MAX_URL_LEN {
                return Err(format!("webhook_url is longer than {MAX_URL_LEN} bytes"));
            }
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

/// Checks a pipeline name, phase name or unique key (named by `what`): not
/// empty, at most [`MAX_NAME_LEN`] bytes. Builders call it too, so a name
/// they accept is one every store accepts.
pub fn check_name(what: &str, value: &str) -> Result<(), String> {
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
    #[serde(with = "crate::timefmt::rfc3339")]
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
    #[serde(with = "crate::timefmt::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When it last finished.
    #[serde(with = "crate::timefmt::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The last checkpoint the phase saved while it ran (within the limits
    /// of [`check_json`]): kept through failures, retries, interruptions,
    /// snoozes and cancels, so the next run resumes from it; cleared when
    /// the phase completes.
    #[serde(default)]
    pub checkpoint: Option<Value>,
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
            checkpoint: None,
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
    /// Its unique key, held while it is queued or running (made from the
    /// input for a job enqueued with `unique_by_input`).
    pub unique_key: Option<String>,
    /// Its key and the window of its unique period
    /// ([`crate::unique::period_key`]), held in every state until the job is
    /// deleted; `None` without a unique period.
    #[serde(default)]
    pub period_key: Option<String>,
    /// Attempts started so far.
    pub attempt: u32,
    /// The attempt budget.
    pub max_attempts: u32,
    /// When it was enqueued.
    #[serde(with = "crate::timefmt::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Not claimed before this time.
    #[serde(with = "crate::timefmt::rfc3339")]
    pub run_at: OffsetDateTime,
    /// When its current or last attempt started.
    #[serde(with = "crate::timefmt::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When it finished (completed, failed or cancelled).
    #[serde(with = "crate::timefmt::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// When retention marked it stale.
    #[serde(with = "crate::timefmt::rfc3339::option")]
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
    #[serde(with = "crate::timefmt::rfc3339::option")]
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn nested(depth: usize) -> Value {
        (0..depth).fold(json!(1), |inner, _| Value::Array(vec![inner]))
    }

    #[test]
    fn json_depth_limit() {
        assert!(check_json("input", &nested(MAX_JSON_DEPTH)).is_ok());
        let err = check_json("input", &nested(MAX_JSON_DEPTH + 1)).unwrap_err();
        assert!(err.contains("nested deeper than 64"), "{err}");
        // Far deeper than any recursive walk could take: refused, no overflow.
        let deep = nested(100_000);
        assert!(check_json("input", &deep).is_err());
        // Dropping a Value this deep recurses; forget it instead.
        std::mem::forget(deep);
    }

    #[test]
    fn json_size_limit() {
        let big = Value::String("x".repeat(MAX_JSON_BYTES));
        let err = check_json("input", &big).unwrap_err();
        assert!(err.contains("larger than 16 MiB"), "{err}");
        assert!(check_json("input", &Value::String("x".repeat(1000))).is_ok());
    }

    #[test]
    fn validate_checks_input_run_at_and_url() {
        let ok = NewJob::new("p").input(nested(3));
        assert!(ok.validate().is_ok());
        assert!(NewJob::new("p").input(nested(65)).validate().is_err());
        let early = NewJob::new("p").run_at(datetime!(-0001-01-01 00:00:00 UTC));
        assert!(early.validate().unwrap_err().contains("run_at"));
        let late = NewJob::new("p").run_at(datetime!(9999-12-31 23:30:00 -01:00));
        assert!(late.validate().unwrap_err().contains("RFC 3339"));
        let long = NewJob::new("p").webhook_url(format!("https://e.com/{}", "a".repeat(3000)));
        assert!(long.validate().is_err());
    }

    #[test]
    fn job_times_serialize_as_rfc3339() {
        let mut job = Job::queued(NewJob::new("p"), datetime!(2030-01-02 03:04:05.5 UTC));
        job.phases.push(Phase {
            started_at: Some(datetime!(2030-01-02 03:04:06 UTC)),
            ..Phase::pending("a")
        });
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["created_at"], "2030-01-02T03:04:05.5Z");
        assert_eq!(v["run_at"], "2030-01-02T03:04:05.5Z");
        assert_eq!(v["started_at"], Value::Null);
        assert_eq!(v["phases"][0]["started_at"], "2030-01-02T03:04:06Z");
        let back: Job = serde_json::from_value(v).unwrap();
        assert_eq!(back, job);
    }
}
