//! One function per route. Each reads and checks everything it needs before
//! the one queue call that may write, so a refusal changes nothing.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use futures_util::StreamExt as _;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use jobqueue::core::{
    CancelOutcome, DeliveryFilter, DeliveryStatus, EventFilter, EventType, Health, JobFilter,
    JobId, JobStatus,
};
use serde_json::{Map, Value, json};

use crate::api::{Api, ApiBody, BoxError, clip, full, read_body};
use crate::error::{ApiError, Code, json_response};
use crate::query::{Query, decode_cursor, encode_cursor};
use crate::routes::Endpoint;
use crate::wire::{self, DeliveryJson, JobJson, JobsJson};

/// Jobs per page when `limit` is not given.
pub(crate) const DEFAULT_PAGE: usize = 50;
/// The largest `limit` of `GET /jobs`.
pub(crate) const MAX_PAGE: usize = 1000;
/// Deliveries listed when `limit` is not given.
pub(crate) const DEFAULT_DELIVERIES: usize = 100;
/// The largest `limit` of `GET /webhooks/deliveries`.
pub(crate) const MAX_DELIVERIES: usize = 1000;

type Answer = Result<Response<ApiBody>, ApiError>;

/// Runs `endpoint`; `id` is the path's `{id}` segment when it has one.
pub(crate) async fn handle<B>(
    api: &Api,
    endpoint: Endpoint,
    id: Option<&str>,
    query: Query,
    req: Request<B>,
) -> Answer
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    match endpoint {
        Endpoint::Index => Ok(crate::dashboard::index(req.headers())),
        Endpoint::Asset => crate::dashboard::asset(id.unwrap_or_default(), req.headers()),
        Endpoint::Stats => stats(api).await,
        Endpoint::Health => Ok(health(&api.queue().health())),
        Endpoint::Metrics => metrics(api, req.headers()).await,
        Endpoint::OpenApi => Ok(openapi()),
        Endpoint::Enqueue => {
            let (parts, body) = req.into_parts();
            let bytes = read_body(body, &parts.headers, api.config().max_body).await?;
            enqueue(api, &bytes).await
        }
        Endpoint::EnqueueBatch => {
            let (parts, body) = req.into_parts();
            let bytes = read_body(body, &parts.headers, api.config().max_body).await?;
            enqueue_batch(api, &bytes).await
        }
        Endpoint::ListJobs => list(api, &query).await,
        Endpoint::GetJob => get(api, job_id(id)?).await,
        Endpoint::CancelJob => cancel(api, job_id(id)?).await,
        Endpoint::RetryJob => retry(api, job_id(id)?).await,
        Endpoint::DeleteJob => delete(api, job_id(id)?).await,
        Endpoint::JobEvents => {
            let id = job_id(id)?;
            // A stream of a job that does not exist would wait for ever.
            if api.queue().get(id).await?.is_none() {
                return Err(ApiError::job_not_found(&id.to_string()));
            }
            events(api, req.headers(), &query, Some(id))
        }
        Endpoint::Events => events(api, req.headers(), &query, None),
        Endpoint::Deliveries => deliveries(api, &query).await,
        Endpoint::ListPipelines => pipelines(api).await,
        Endpoint::PausePipeline => pause(api, pipeline_name(api, id)?, true).await,
        Endpoint::ResumePipeline => pause(api, pipeline_name(api, id)?, false).await,
    }
}

/// The `{name}` of a pipeline route, percent-decoded: a pipeline this
/// server defines, or `not_found`.
fn pipeline_name(api: &Api, name: Option<&str>) -> Result<String, ApiError> {
    let raw = name.unwrap_or_default();
    let not_found = || ApiError::not_found(format!("pipeline {:?} not found", clip(raw)));
    let name = percent_decode(raw).ok_or_else(not_found)?;
    if api.queue().runtime().pipelines().get(&name).is_none() {
        return Err(not_found());
    }
    Ok(name)
}

/// A path segment with its `%XX` escapes decoded; `None` when an escape is
/// malformed or the bytes are not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(segment.len());
    let mut rest = segment.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let text = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(text, 16).ok()?);
            rest = tail.get(2..)?;
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// `GET /pipelines`: the server's pipelines by name, each with whether it
/// is paused.
async fn pipelines(api: &Api) -> Answer {
    let paused = api.queue().paused().await?;
    let mut names = api.queue().runtime().pipelines().names();
    names.sort();
    let list: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let is_paused = paused.contains(&name);
            json!({"name": name, "paused": is_paused})
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"pipelines": list})))
}

/// `POST /pipelines/{name}/pause` (`pause`) and `/resume`: idempotent;
/// `changed` says whether this call changed it.
async fn pause(api: &Api, name: String, pause: bool) -> Answer {
    let changed = if pause {
        api.queue().pause(&name).await?
    } else {
        api.queue().resume(&name).await?
    };
    let body = json!({"pipeline": name, "paused": pause, "changed": changed});
    Ok(json_response(StatusCode::OK, &body))
}

/// The `{id}` of a job route: anything that is not a job id names no job.
fn job_id(id: Option<&str>) -> Result<JobId, ApiError> {
    let id = id.unwrap_or_default();
    id.parse()
        .map_err(|_| ApiError::job_not_found(&format!("{:?}", clip(id))))
}

async fn enqueue(api: &Api, body: &[u8]) -> Answer {
    let job = wire::new_job(wire::parse_body(body)?)?;
    let job = api.queue().enqueue_job(job).await?;
    Ok(json_response(StatusCode::CREATED, &JobJson::from(&job)))
}

async fn enqueue_batch(api: &Api, body: &[u8]) -> Answer {
    let jobs = wire::new_jobs(wire::parse_body(body)?)?;
    // What the queue knows (the pipeline, the webhook URL) is checked job
    // by job first, so a refusal names its job; the store checks the rest
    // (a unique key held by an existing job) and names it too.
    for (index, job) in jobs.iter().enumerate() {
        api.queue()
            .check_job(job)
            .await
            .map_err(|e| wire::at_index(e.into(), index))?;
    }
    let jobs = if jobs.is_empty() {
        Vec::new()
    } else {
        api.queue().enqueue_batch(jobs).await?
    };
    Ok(json_response(StatusCode::CREATED, &JobsJson::new(&jobs)))
}

async fn list(api: &Api, query: &Query) -> Answer {
    let statuses: Vec<JobStatus> = query.parsed_list("status")?;
    if statuses.contains(&JobStatus::Deleted) {
        return Err(ApiError::invalid(
            "status: deleted jobs are gone; list queued, running, completed, failed, cancelled or stale",
        ));
    }
    let cursor = match query.get("cursor").map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c)?),
    };
    let filter = JobFilter {
        statuses,
        pipeline: query
            .get("pipeline")
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
        limit: query.limit(DEFAULT_PAGE, MAX_PAGE)?,
        cursor,
    };
    let page = api.queue().list(filter).await?;
    let body = JobsJson {
        next_cursor: Some(page.next_cursor.map(encode_cursor)),
        ..JobsJson::new(&page.jobs)
    };
    Ok(json_response(StatusCode::OK, &body))
}

async fn get(api: &Api, id: JobId) -> Answer {
    match api.queue().get(id).await? {
        Some(job) => Ok(json_response(StatusCode::OK, &JobJson::from(&job))),
        None => Err(ApiError::job_not_found(&id.to_string())),
    }
}

async fn cancel(api: &Api, id: JobId) -> Answer {
    Ok(match api.queue().cancel(id).await? {
        CancelOutcome::Cancelled(job) => json_response(StatusCode::OK, &JobJson::from(&job)),
        CancelOutcome::Requested(job) => json_response(StatusCode::ACCEPTED, &JobJson::from(&job)),
    })
}

async fn retry(api: &Api, id: JobId) -> Answer {
    let job = api.queue().retry(id).await?;
    Ok(json_response(StatusCode::OK, &JobJson::from(&job)))
}

async fn delete(api: &Api, id: JobId) -> Answer {
    api.queue().delete(id).await?;
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// An event stream: after `Last-Event-ID` (or `?after=`), only `?types=`,
/// only `job`'s when given; it ends when the API's streams are closed.
fn events(api: &Api, headers: &http::HeaderMap, query: &Query, job: Option<JobId>) -> Answer {
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let after = jobqueue::events::sse::parse_after(last_event_id.as_deref(), query.get("after"))
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let types: Vec<EventType> = query.parsed_list("types")?;
    let stream = jobqueue::events::sse::sse_stream_with(
        api.queue().store().clone(),
        api.queue().bus(),
        after,
        EventFilter { job, types },
        api.sse_options(),
    )
    .take_until(api.streams().clone().cancelled_owned());
    Ok(jobqueue::events::sse::sse_response(stream))
}

async fn deliveries(api: &Api, query: &Query) -> Answer {
    let job = match query.get("job").map(str::trim) {
        None | Some("") => None,
        Some(id) => Some(
            id.parse::<JobId>()
                .map_err(|_| ApiError::invalid(format!("job: {:?} is not a job id", clip(id))))?,
        ),
    };
    let filter = DeliveryFilter {
        job,
        statuses: query.parsed_list::<DeliveryStatus>("status")?,
        limit: query.limit(DEFAULT_DELIVERIES, MAX_DELIVERIES)?,
    };
    let rows = api.queue().store().deliveries(filter).await?;
    #[derive(serde::Serialize)]
    struct Deliveries<'a> {
        deliveries: Vec<DeliveryJson<'a>>,
    }
    let body = Deliveries {
        deliveries: rows.iter().map(DeliveryJson::from).collect(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// How many jobs there are by status and by pipeline, and the last event's
/// sequence number (where a client that has just read the jobs starts
/// following events).
async fn stats(api: &Api) -> Answer {
    // The sequence number first: a client that follows events after it
    // sees every change made after the counts, perhaps some twice, never
    // none.
    let last_event_seq = api.queue().store().last_seq().await?;
    let counts = api.queue().store().counts().await?;
    let statuses = || -> Map<String, Value> {
        JobStatus::ALL
            .iter()
            .filter(|s| **s != JobStatus::Deleted)
            .map(|s| (s.as_str().to_owned(), json!(0)))
            .collect()
    };
    // Every pipeline the queue runs, with or without jobs, and any other
    // that still has jobs (its config entry was removed).
    let mut pipelines: BTreeMap<String, (u64, Map<String, Value>)> = api
        .queue()
        .runtime()
        .pipelines()
        .iter()
        .map(|p| (p.name().to_owned(), (0, statuses())))
        .collect();
    let mut total: u64 = 0;
    let mut by_status = statuses();
    for c in &counts {
        if c.status == JobStatus::Deleted {
            continue;
        }
        total = total.saturating_add(c.count);
        add(&mut by_status, c.status.as_str(), c.count);
        let (n, by) = pipelines
            .entry(c.pipeline.clone())
            .or_insert_with(|| (0, statuses()));
        *n = n.saturating_add(c.count);
        add(by, c.status.as_str(), c.count);
    }
    let pipelines: Map<String, Value> = pipelines
        .into_iter()
        .map(|(name, (n, by))| (name, json!({"total": n, "statuses": by})))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"total": total, "statuses": by_status, "pipelines": pipelines,
                "last_event_seq": last_event_seq}),
    ))
}

/// Adds `n` to the count at `key`.
fn add(counts: &mut Map<String, Value>, key: &str, n: u64) {
    let sum = counts
        .get(key)
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .saturating_add(n);
    counts.insert(key.to_owned(), json!(sum));
}

/// `{"status": "ok"}`, or 503 naming the tasks that are down.
pub(crate) fn health(health: &Health) -> Response<ApiBody> {
    if health.is_healthy() {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    let down: Vec<String> = health
        .tasks
        .iter()
        .filter(|t| !t.is_ok())
        .map(|t| format!("{} ({})", t.name, t.state.as_str()))
        .collect();
    let tasks: Vec<Value> = health
        .tasks
        .iter()
        .map(|t| {
            json!({"name": t.name, "state": t.state.as_str(), "panics": t.panics,
                   "last_panic": t.last_panic})
        })
        .collect();
    let error = ApiError::new(
        Code::Unavailable,
        format!("background tasks are down: {}", down.join(", ")),
    );
    let mut body = error.body();
    body["status"] = json!("unhealthy");
    body["tasks"] = Value::Array(tasks);
    json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
}

/// The metrics text: OpenMetrics when `Accept` asks for it, else the
/// Prometheus text format.
async fn metrics(api: &Api, headers: &http::HeaderMap) -> Answer {
    let openmetrics = headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    });
    let mut text = api.metrics().render(api.queue(), openmetrics).await?;
    if !openmetrics && let Some(extra) = api.extra_metrics_text() {
        text.push_str(&extra);
    }
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS_CONTENT_TYPE
    } else {
        crate::metrics::CONTENT_TYPE
    };
    let mut response = Response::new(full(text));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

fn openapi() -> Response<ApiBody> {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let text = DOCUMENT.get_or_init(|| crate::openapi::document().to_string());
    let mut response = Response::new(full(text.clone()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use jobqueue::core::{TaskHealth, TaskState};

    use super::*;

    async fn body_json(response: Response<ApiBody>) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn health_names_the_tasks_that_are_down() {
        let mut pump = TaskHealth::running("pump");
        let ok = health(&Health::new(vec![pump.clone()]));
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(body_json(ok).await, json!({"status": "ok"}));

        pump.state = TaskState::Failed;
        pump.panics = 5;
        let down = health(&Health::new(vec![pump, TaskHealth::running("retention")]));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_json(down).await;
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(body["error"]["code"], "unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("pump (failed)"), "{message}");
        assert!(!message.contains("retention"), "{message}");
        assert_eq!(body["tasks"][0]["panics"], 5);
    }
}
