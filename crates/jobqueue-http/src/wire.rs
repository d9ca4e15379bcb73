//! The JSON of the API: jobs and webhook deliveries as clients see them, and
//! the enqueue request read into a [`NewJob`].
//!
//! The core records know nothing of this shape; it is fixed here, at the
//! edge. Times are RFC 3339 in UTC ([`jobqueue::core::timefmt`]). Events use
//! the one event JSON of `jobqueue-events` ([`jobqueue::events::event_json`]).

use jobqueue::core::timefmt;
use jobqueue::core::{
    Delivery, DependencyFailure, Interrupted, Job, JobError, JobId, NewJob, Phase, Progress,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::error::ApiError;

/// A job as the API answers it, its members in this order:
///
/// ```json
/// {"id": "0192f7c5-...", "pipeline": "build", "status": "queued", "input": {},
///  "priority": 0, "unique_key": null, "attempt": 0, "max_attempts": 3,
///  "created_at": "...", "run_at": "...", "started_at": null, "finished_at": null,
///  "error": null, "interrupted": null, "cancel_requested": false, "stale_at": null,
///  "phases": [{"name": "fetch", "status": "pending", "attempts": 0, "progress": null,
///              "result": null, "error": null, "started_at": null, "finished_at": null,
///              "checkpoint": null}]}
/// ```
#[derive(Debug, Serialize)]
pub struct JobJson<'a> {
    id: String,
    pipeline: &'a str,
    status: &'static str,
    input: &'a Value,
    priority: i32,
    unique_key: Option<&'a str>,
    attempt: u32,
    max_attempts: u32,
    created_at: String,
    run_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    error: Option<JobErrorJson<'a>>,
    interrupted: Option<InterruptedJson<'a>>,
    cancel_requested: bool,
    stale_at: Option<String>,
    phases: Vec<PhaseJson<'a>>,
}

impl<'a> From<&'a Job> for JobJson<'a> {
    fn from(job: &'a Job) -> Self {
        Self {
            id: job.id.to_string(),
            pipeline: &job.pipeline,
            status: job.status.as_str(),
            input: &job.input,
            priority: job.priority,
            unique_key: job.unique_key.as_deref(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            created_at: time(job.created_at),
            run_at: time(job.run_at),
            started_at: job.started_at.map(time),
            finished_at: job.finished_at.map(time),
            error: job.error.as_ref().map(JobErrorJson::from),
            interrupted: job.interrupted.as_ref().map(InterruptedJson::from),
            cancel_requested: job.cancel_requested,
            stale_at: job.stale_at.map(time),
            phases: job.phases.iter().map(PhaseJson::from).collect(),
        }
    }
}

/// One phase of a job.
#[derive(Debug, Serialize)]
struct PhaseJson<'a> {
    name: &'a str,
    status: &'static str,
    attempts: u32,
    progress: Option<ProgressJson<'a>>,
    result: Option<&'a Value>,
    error: Option<&'a str>,
    started_at: Option<String>,
    finished_at: Option<String>,
    /// The last checkpoint the phase saved, which its next run resumes
    /// from; null when it saved none or completed.
    checkpoint: Option<&'a Value>,
}

impl<'a> From<&'a Phase> for PhaseJson<'a> {
    fn from(phase: &'a Phase) -> Self {
        Self {
            name: &phase.name,
            status: phase.status.as_str(),
            attempts: phase.attempts,
            progress: phase.progress.as_ref().map(ProgressJson::from),
            result: phase.result.as_ref(),
            error: phase.error.as_deref(),
            started_at: phase.started_at.map(time),
            finished_at: phase.finished_at.map(time),
            checkpoint: phase.checkpoint.as_ref(),
        }
    }
}

/// `{"percent", "message"}`.
#[derive(Debug, Serialize)]
struct ProgressJson<'a> {
    percent: u8,
    message: Option<&'a str>,
}

impl<'a> From<&'a Progress> for ProgressJson<'a> {
    fn from(p: &'a Progress) -> Self {
        Self {
            percent: p.percent,
            message: p.message.as_deref(),
        }
    }
}

/// `{"phase", "message", "attempt"}`; `phase` is null for a failure outside
/// any phase.
#[derive(Debug, Serialize)]
struct JobErrorJson<'a> {
    phase: Option<&'a str>,
    message: &'a str,
    attempt: u32,
}

impl<'a> From<&'a JobError> for JobErrorJson<'a> {
    fn from(e: &'a JobError) -> Self {
        Self {
            phase: e.phase.as_deref(),
            message: &e.message,
            attempt: e.attempt,
        }
    }
}

/// `{"phase", "at", "progress"}`.
#[derive(Debug, Serialize)]
struct InterruptedJson<'a> {
    phase: &'a str,
    at: String,
    progress: Option<ProgressJson<'a>>,
}

impl<'a> From<&'a Interrupted> for InterruptedJson<'a> {
    fn from(i: &'a Interrupted) -> Self {
        Self {
            phase: &i.phase,
            at: time(i.at),
            progress: i.progress.as_ref().map(ProgressJson::from),
        }
    }
}

/// [`JobJson`] as a JSON value.
pub fn job_json(job: &Job) -> Value {
    // Serializing these types cannot fail: every map key is a string.
    serde_json::to_value(JobJson::from(job)).unwrap_or_default()
}

/// A webhook delivery as `GET /webhooks/deliveries` lists it.
#[derive(Debug, Serialize)]
pub struct DeliveryJson<'a> {
    id: String,
    event_seq: u64,
    /// `null` for a delivery of a pipeline event.
    job_id: Option<String>,
    #[serde(rename = "type")]
    event_type: &'static str,
    url: &'a str,
    status: &'static str,
    attempts: u32,
    last_status: Option<u16>,
    last_error: Option<&'a str>,
    next_attempt_at: Option<String>,
    created_at: String,
}

impl<'a> From<&'a Delivery> for DeliveryJson<'a> {
    fn from(d: &'a Delivery) -> Self {
        Self {
            id: d.id.to_string(),
            event_seq: d.event_seq,
            job_id: d.job_id.map(|id| id.to_string()),
            event_type: d.event.event_type().as_str(),
            url: &d.url,
            status: d.status.as_str(),
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error.as_deref(),
            next_attempt_at: d.next_attempt_at.map(time),
            created_at: time(d.created_at),
        }
    }
}

fn time(t: OffsetDateTime) -> String {
    timefmt::format(t)
}

/// `{"jobs": [...]}`, and `"next_cursor"` for a page.
#[derive(Debug, Serialize)]
pub(crate) struct JobsJson<'a> {
    pub(crate) jobs: Vec<JobJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_cursor: Option<Option<String>>,
}

impl<'a> JobsJson<'a> {
    pub(crate) fn new(jobs: &'a [Job]) -> Self {
        Self {
            jobs: jobs.iter().map(JobJson::from).collect(),
            next_cursor: None,
        }
    }
}

/// The body of `POST /jobs` and each item of `POST /jobs/batch`. Unknown
/// members are refused, so a misspelt option is an error, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueRequest {
    pipeline: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default, with = "jobqueue::core::timefmt::rfc3339::option")]
    run_at: Option<OffsetDateTime>,
    #[serde(default)]
    unique_key: Option<String>,
    /// The key is made from the pipeline and the input instead.
    #[serde(default)]
    unique_by_input: Option<bool>,
    /// The key is also held, in every state, for the window of this period
    /// (`"30m"`, `"1h"`, `"1d"`) in which the job is created.
    #[serde(default)]
    unique_for: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    webhook_url: Option<String>,
    /// Ids of jobs that must complete before this one starts.
    #[serde(default)]
    depends_on: Option<Vec<JobId>>,
    /// `"cancel"` (the default) or `"fail"`: what becomes of the job if a
    /// dependency fails or is cancelled.
    #[serde(default)]
    on_dependency_failure: Option<DependencyFailure>,
}

/// The body of `POST /jobs/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    jobs: Vec<Value>,
}

/// Reads a request body as JSON: anything that is not JSON text is a
/// `bad_request`.
pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Reads one job of an enqueue request. Wrong types, unknown members and
/// values no store accepts are `invalid`; whether the pipeline exists is
/// the queue's to say.
pub(crate) fn new_job(value: Value) -> Result<NewJob, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid(format!(
            "a job must be a JSON object, got {}",
            kind(&value)
        )));
    }
    let request: EnqueueRequest = from_value(value)?;
    let mut job = NewJob::new(request.pipeline).input(request.input);
    job.priority = request.priority.unwrap_or(0);
    job.run_at = request.run_at;
    job.unique_key = request.unique_key;
    job.unique_by_input = request.unique_by_input.unwrap_or(false);
    if let Some(period) = request.unique_for {
        let period = humantime::parse_duration(period.trim()).map_err(|e| {
            ApiError::invalid(format!(
                "unique_for: {e} (a period such as \"30m\", \"1h\" or \"1d\")"
            ))
        })?;
        job.unique_for = Some(period);
    }
    job.max_attempts = request.max_attempts;
    job.webhook_url = request.webhook_url;
    job.depends_on = request.depends_on.unwrap_or_default();
    job.on_dependency_failure = request.on_dependency_failure.unwrap_or_default();
    job.validate().map_err(ApiError::invalid)?;
    Ok(job)
}

/// Reads the body of `POST /jobs/batch`: every job, or the error of the
/// first bad one, named by its index (`jobs[2]: ...`, and `"index": 2`).
pub(crate) fn new_jobs(value: Value) -> Result<Vec<NewJob>, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid(format!(
            "the body must be a JSON object {{\"jobs\": [...]}}, got {}",
            kind(&value)
        )));
    }
    let batch: BatchRequest = from_value(value)?;
    let mut jobs = Vec::with_capacity(batch.jobs.len());
    for (index, item) in batch.jobs.into_iter().enumerate() {
        let job = new_job(item).map_err(|e| at_index(e, index))?;
        // Two jobs of one batch with one key: the store would name a job
        // that never existed as the holder, so say what is wrong here.
        if let Some(key) = job.effective_unique_key()
            && let Some(first) = jobs
                .iter()
                .position(|j: &NewJob| j.effective_unique_key().as_ref() == Some(&key))
        {
            let what = if job.unique_by_input {
                "the unique key made from its input".to_owned()
            } else {
                format!("unique_key {key:?}")
            };
            return Err(at_index(
                ApiError::invalid(format!(
                    "{what} is also the key of jobs[{first}] of this batch"
                )),
                index,
            ));
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// `error` about the job at `index` of a batch.
pub(crate) fn at_index(error: ApiError, index: usize) -> ApiError {
    error
        .at(&format!("jobs[{index}]"))
        .with("index", json!(index))
}

/// Deserializes `value` as `T`; the error says which member is wrong.
fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(inner.to_string())
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use jobqueue::core::{JobStatus, PhaseStatus};
    use time::macros::datetime;

    use super::*;

    fn message(e: ApiError) -> String {
        e.body()["error"]["message"].as_str().unwrap().to_owned()
    }

    #[test]
    fn enqueue_request_reads_every_option() {
        let job = new_job(json!({
            "pipeline": "build", "input": {"a": 1}, "priority": -3,
            "run_at": "2030-01-02T03:04:05+01:00", "unique_key": "k",
            "max_attempts": 5, "webhook_url": "https://example.com/h"
        }))
        .unwrap();
        assert_eq!(job.pipeline, "build");
        assert_eq!(job.input, json!({"a": 1}));
        assert_eq!(job.priority, -3);
        assert_eq!(job.run_at, Some(datetime!(2030-01-02 02:04:05 UTC)));
        assert_eq!(job.unique_key.as_deref(), Some("k"));
        assert_eq!(job.max_attempts, Some(5));
        let id = JobId::new();
        let waiting = new_job(json!({
            "pipeline": "p", "depends_on": [id.to_string()], "on_dependency_failure": "fail"
        }))
        .unwrap();
        assert_eq!(waiting.depends_on, [id]);
        assert_eq!(waiting.on_dependency_failure, DependencyFailure::Fail);
        let periodic = new_job(json!({
            "pipeline": "p", "unique_key": "daily", "unique_for": "1d"
        }))
        .unwrap();
        assert_eq!(
            periodic.unique_for,
            Some(std::time::Duration::from_secs(86_400))
        );
        let by_input = new_job(json!({
            "pipeline": "p", "input": [1], "unique_by_input": true, "unique_for": "90s"
        }))
        .unwrap();
        assert!(by_input.unique_by_input);
        assert_eq!(
            by_input.unique_for,
            Some(std::time::Duration::from_secs(90))
        );
        let minimal = new_job(json!({"pipeline": "p", "priority": null})).unwrap();
        assert_eq!((minimal.input, minimal.priority), (Value::Null, 0));
    }

    #[test]
    fn enqueue_request_errors_name_the_member() {
        let cases = [
            (json!({"pipeline": "p", "priority": "high"}), "priority"),
            (json!({"pipeline": "p", "priority": 1.5}), "priority"),
            (
                json!({"pipeline": "p", "priority": 3_000_000_000_i64}),
                "priority",
            ),
            (json!({"pipeline": "p", "max_attempts": -1}), "max_attempts"),
            (json!({"pipeline": "p", "max_attempts": 0}), "max_attempts"),
            (json!({"pipeline": "p", "run_at": "tomorrow"}), "run_at"),
            (json!({"pipeline": "p", "run_at": 5}), "run_at"),
            (json!({"pipeline": "p", "priorty": 1}), "priorty"),
            (json!({"pipeline": 7}), "pipeline"),
            (json!({"pipeline": ""}), "pipeline"),
            (json!({}), "pipeline"),
            (json!({"pipeline": "p", "unique_key": 1}), "unique_key"),
            (json!({"pipeline": "p", "depends_on": ["x"]}), "depends_on"),
            (json!({"pipeline": "p", "depends_on": "x"}), "depends_on"),
            (
                json!({"pipeline": "p", "on_dependency_failure": "ignore"}),
                "on_dependency_failure",
            ),
            (
                json!({"pipeline": "p", "webhook_url": "ftp://x"}),
                "webhook_url",
            ),
            (
                json!({"pipeline": "p", "unique_key": "k", "unique_for": "soon"}),
                "unique_for",
            ),
            (
                json!({"pipeline": "p", "unique_key": "k", "unique_for": "500ms"}),
                "unique_for",
            ),
            (json!({"pipeline": "p", "unique_for": "1h"}), "unique_for"),
            (
                json!({"pipeline": "p", "unique_key": "k", "unique_for": 60}),
                "unique_for",
            ),
            (
                json!({"pipeline": "p", "unique_key": "k", "unique_by_input": true}),
                "unique_by_input",
            ),
            (
                json!({"pipeline": "p", "unique_by_input": "yes"}),
                "unique_by_input",
            ),
        ];
        for (body, member) in cases {
            let e = new_job(body.clone()).unwrap_err();
            assert_eq!(e.code().as_str(), "invalid", "{body}");
            let m = message(e);
            assert!(m.contains(member), "{body}: {m}");
        }
        assert!(message(new_job(json!([1])).unwrap_err()).contains("an array"));
    }

    #[test]
    fn a_batch_refuses_two_jobs_with_one_input_key() {
        let e = new_jobs(json!({"jobs": [
            {"pipeline": "p", "input": {"a": 1}, "unique_by_input": true},
            {"pipeline": "p", "input": {"a": 2}, "unique_by_input": true},
            {"pipeline": "p", "input": {"a": 1}, "unique_by_input": true},
        ]}))
        .unwrap_err();
        assert_eq!(e.body()["error"]["index"], 2);
        assert!(message(e).contains("jobs[0]"));
    }

    #[test]
    fn batch_errors_name_the_index() {
        let e = new_jobs(json!({"jobs": [{"pipeline": "p"}, {"pipeline": "p", "priority": "x"}]}))
            .unwrap_err();
        let body = e.body();
        assert_eq!(body["error"]["index"], 1);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("jobs[1]: priority")
        );
        let e = new_jobs(json!({"jobs": [
            {"pipeline": "p", "unique_key": "k"}, {"pipeline": "p"}, {"pipeline": "p", "unique_key": "k"}
        ]}))
        .unwrap_err();
        assert_eq!(e.body()["error"]["index"], 2);
        assert!(new_jobs(json!({"jobs": {}})).is_err());
        assert!(new_jobs(json!({"jobs": [], "x": 1})).is_err());
        assert!(new_jobs(json!({"jobs": []})).unwrap().is_empty());
    }

    #[test]
    fn bodies_that_are_not_json_are_bad_requests() {
        for body in [&b""[..], b"  ", b"{", b"nope", b"{\"a\":1}x", b"\xff"] {
            assert_eq!(parse_body(body).unwrap_err().code().as_str(), "bad_request");
        }
        let deep = "[".repeat(10_000);
        assert_eq!(
            parse_body(deep.as_bytes()).unwrap_err().code().as_str(),
            "bad_request"
        );
    }

    #[test]
    fn job_json_has_the_documented_members() {
        let mut job = Job::queued(
            NewJob::new("build").phases(["fetch"]),
            datetime!(2030-01-02 03:04:05 UTC),
        );
        job.status = JobStatus::Failed;
        job.error = Some(JobError {
            phase: Some("fetch".into()),
            message: "boom".into(),
            attempt: 1,
        });
        job.phases[0].status = PhaseStatus::Failed;
        job.phases[0].progress = Some(Progress::new(40, Some("m".into())));
        job.phases[0].checkpoint = Some(json!({"next_row": 3}));
        let v = job_json(&job);
        assert_eq!(v["status"], "failed");
        assert_eq!(v["created_at"], "2030-01-02T03:04:05Z");
        assert_eq!(
            v["error"],
            json!({"phase": "fetch", "message": "boom", "attempt": 1})
        );
        assert_eq!(
            v["phases"][0]["progress"],
            json!({"percent": 40, "message": "m"})
        );
        assert_eq!(v["interrupted"], Value::Null);
        assert_eq!(v["phases"][0]["checkpoint"], json!({"next_row": 3}));
        let members: Vec<&str> = v["phases"][0]
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(members.len(), 9, "every member of a phase: {members:?}");
    }
}
