//! The API as an OpenAPI 3.1 document: every route, the job, event and
//! delivery schemas, and the error shape.
//!
//! It is written here as data, next to the code it describes, and kept true
//! in two ways: its paths are made from the route table (so a route cannot
//! be missing), and the crate's tests validate real responses against its
//! schemas (so a member cannot drift). `cargo xtask codegen` writes it to
//! `docs/openapi.json`; the server also answers it at `GET /openapi.json`.

use jobqueue::core::{DeliveryStatus, EventType, JobStatus, PhaseStatus};
use serde_json::{Map, Value, json};

use crate::error::Code;
use crate::handlers::{DEFAULT_DELIVERIES, DEFAULT_PAGE, MAX_DELIVERIES, MAX_PAGE};
use crate::routes::Endpoint;

/// The whole document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "jobqueue",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "A durable job queue: enqueue jobs, follow their phases and events, retry, cancel.",
            "description": "JSON over HTTP. When the server has a token, every route but `GET /health` needs it, \
                as `Authorization: Bearer <token>` or as `?token=<token>` (for EventSource). Every error is \
                `{\"error\": {\"code\", \"message\"}}` with the status of its code.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:7700"}],
        "security": [{"bearer": []}, {"query_token": []}],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "parameters": parameters(),
            "responses": error_responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "query_token": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    })
}

/// Every route, from the route table.
fn paths() -> Value {
    let mut paths = Map::new();
    for endpoint in Endpoint::ALL {
        let item = paths
            .entry(endpoint.path())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(
                endpoint.method().as_str().to_ascii_lowercase(),
                operation(endpoint),
            );
        }
    }
    Value::Object(paths)
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn param_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/parameters/{name}")})
}

fn error_ref(code: Code) -> Value {
    json!({"$ref": format!("#/components/responses/{}", response_name(code))})
}

/// A JSON response of schema `name`.
fn json_body(description: &str, name: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schema_ref(name)}},
    })
}

fn event_stream(description: &str) -> Value {
    json!({
        "description": format!(
            "{description} A `text/event-stream`: `retry: 2000` first, then one frame per event \
             (`id: <seq>`, `event: <type>`, `data: <Event as JSON on one line>`), and a \
             `: keepalive` comment at least every 15 s. It does not end by itself."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    })
}

/// Adds the error responses of `codes` (and 401, which every route but
/// `/health` may answer) to `responses`.
fn with_errors(mut responses: Value, codes: &[Code], public: bool) -> Value {
    if let Value::Object(map) = &mut responses {
        let mut codes = codes.to_vec();
        if !public {
            codes.push(Code::Unauthorized);
        }
        codes.push(Code::Internal);
        for code in codes {
            let status = code.status().as_str().to_owned();
            // Two codes share 409: one entry describes both.
            let value = if status == "409" {
                json!({"$ref": "#/components/responses/Conflict"})
            } else {
                error_ref(code)
            };
            map.entry(status).or_insert(value);
        }
    }
    responses
}

fn operation(endpoint: Endpoint) -> Value {
    use Code::{BadRequest, Conflict, Invalid, NotFound, PayloadTooLarge, Unavailable};
    let public = endpoint.is_public();
    let (id, summary, parameters, request, responses, errors): (
        &str,
        &str,
        Vec<Value>,
        Option<Value>,
        Value,
        &[Code],
    ) = match endpoint {
        Endpoint::Enqueue => (
            "enqueue",
            "Enqueue a job",
            vec![],
            Some(schema_ref("NewJob")),
            json!({"201": json_body("The job, durable and queued.", "Job")}),
            &[BadRequest, PayloadTooLarge, Invalid, Conflict, Unavailable],
        ),
        Endpoint::EnqueueBatch => (
            "enqueue_batch",
            "Enqueue several jobs, all or none",
            vec![],
            Some(schema_ref("BatchRequest")),
            json!({"201": json_body("Every job, in the order sent.", "JobBatch")}),
            &[BadRequest, PayloadTooLarge, Invalid, Conflict, Unavailable],
        ),
        Endpoint::ListJobs => (
            "list_jobs",
            "List jobs, newest first, a page at a time",
            vec![
                param_ref("Status"),
                param_ref("Pipeline"),
                param_ref("Limit"),
                param_ref("Cursor"),
            ],
            None,
            json!({"200": json_body("A page of jobs.", "JobList")}),
            &[Invalid, Unavailable],
        ),
        Endpoint::GetJob => (
            "get_job",
            "One job with its phases",
            vec![param_ref("JobId")],
            None,
            json!({"200": json_body("The job.", "Job")}),
            &[NotFound, Unavailable],
        ),
        Endpoint::CancelJob => (
            "cancel_job",
            "Cancel a job",
            vec![param_ref("JobId")],
            None,
            json!({
                "200": json_body("It was queued and is now cancelled.", "Job"),
                "202": json_body("It is running: its phase is being stopped, then it is cancelled (`cancel_requested` is true).", "Job"),
            }),
            &[NotFound, Conflict, Unavailable],
        ),
        Endpoint::RetryJob => (
            "retry_job",
            "Queue a failed or cancelled job again; it resumes at its first phase not completed",
            vec![param_ref("JobId")],
            None,
            json!({"200": json_body("The job, queued.", "Job")}),
            &[NotFound, Conflict, Unavailable],
        ),
        Endpoint::DeleteJob => (
            "delete_job",
            "Delete a finished job with all its rows",
            vec![param_ref("JobId")],
            None,
            json!({"204": {"description": "Deleted."}}),
            &[NotFound, Conflict, Unavailable],
        ),
        Endpoint::JobEvents => (
            "job_events",
            "One job's events from its start (or after Last-Event-ID), then live",
            vec![
                param_ref("JobId"),
                param_ref("After"),
                param_ref("LastEventId"),
                param_ref("Types"),
            ],
            None,
            json!({"200": event_stream("The job's events.")}),
            &[NotFound, Invalid],
        ),
        Endpoint::Events => (
            "events",
            "Every event from the start (or after Last-Event-ID), then live",
            vec![
                param_ref("After"),
                param_ref("LastEventId"),
                param_ref("Types"),
            ],
            None,
            json!({"200": event_stream("The events.")}),
            &[Invalid],
        ),
        Endpoint::Deliveries => (
            "list_deliveries",
            "Webhook deliveries, oldest first",
            vec![
                param_ref("DeliveryJob"),
                param_ref("DeliveryStatus"),
                param_ref("DeliveryLimit"),
            ],
            None,
            json!({"200": json_body("The deliveries.", "DeliveryList")}),
            &[Invalid, Unavailable],
        ),
        Endpoint::ListPipelines => (
            "list_pipelines",
            "The pipelines this server runs, each with whether it is paused",
            vec![],
            None,
            json!({"200": json_body("The pipelines, by name.", "PipelineList")}),
            &[Unavailable],
        ),
        Endpoint::PausePipeline => (
            "pause_pipeline",
            "Pause a pipeline: running jobs finish, no queued job of it is claimed until it is resumed",
            vec![param_ref("PipelineName")],
            None,
            json!({"200": json_body("The pipeline is paused (`changed` is false if it was already).", "PipelinePause")}),
            &[NotFound, Unavailable],
        ),
        Endpoint::ResumePipeline => (
            "resume_pipeline",
            "Resume a paused pipeline: its queued jobs are claimed again at once",
            vec![param_ref("PipelineName")],
            None,
            json!({"200": json_body("The pipeline is not paused (`changed` is false if it was not).", "PipelinePause")}),
            &[NotFound, Unavailable],
        ),
        Endpoint::Health => (
            "health",
            "Whether the queue's background tasks are running (no token needed)",
            vec![],
            None,
            json!({
                "200": json_body("Every task is running.", "Health"),
                "503": json_body("A task is down; the message and `tasks` say which.", "Unhealthy"),
            }),
            &[],
        ),
        Endpoint::Metrics => (
            "metrics",
            "Metrics in the Prometheus text format (OpenMetrics when Accept asks for it)",
            vec![],
            None,
            json!({"200": {
                "description": "Every metric is named `jobqueue_...`.",
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            }}),
            &[Unavailable],
        ),
        Endpoint::OpenApi => (
            "openapi",
            "This document",
            vec![],
            None,
            json!({"200": {
                "description": "The OpenAPI 3.1 document of this API.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }}),
            &[],
        ),
        Endpoint::Stats => (
            "stats",
            "How many jobs there are by status and pipeline, and the last event's sequence number",
            vec![],
            None,
            json!({"200": json_body("The counts.", "Stats")}),
            &[Unavailable],
        ),
        Endpoint::Index => (
            "dashboard",
            "The dashboard: a live page of the jobs (with a token configured, open `/?token=...`)",
            vec![],
            None,
            json!({"200": {
                "description": "The dashboard's HTML page. It holds no data: the page reads the API with the token it was opened with.",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }}),
            &[],
        ),
        Endpoint::Asset => (
            "dashboard_asset",
            "A script, style sheet or icon of the dashboard (no token needed)",
            vec![param_ref("AssetName")],
            None,
            json!({
                "200": {
                    "description": "The file (`ETag`, `Cache-Control: no-cache`).",
                    "content": {
                        "text/javascript": {"schema": {"type": "string"}},
                        "text/css": {"schema": {"type": "string"}},
                        "image/svg+xml": {"schema": {"type": "string"}},
                    },
                },
                "304": {"description": "The client's copy (`If-None-Match`) is this version."},
            }),
            &[NotFound],
        ),
    };
    let mut op = json!({
        "operationId": id,
        "summary": summary,
        "responses": with_errors(responses, errors, public),
    });
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if let Some(schema) = request {
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        });
    }
    if public {
        op["security"] = json!([]);
    }
    op
}

fn response_name(code: Code) -> &'static str {
    match code {
        Code::BadRequest => "BadRequest",
        Code::Unauthorized => "Unauthorized",
        Code::NotFound => "NotFound",
        Code::MethodNotAllowed => "MethodNotAllowed",
        Code::Conflict | Code::Duplicate => "Conflict",
        Code::PayloadTooLarge => "PayloadTooLarge",
        Code::Invalid => "Invalid",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
    }
}

fn error_responses() -> Value {
    let describe = |code: Code| match code {
        Code::BadRequest => "`bad_request`: the body is not JSON.",
        Code::Unauthorized => "`unauthorized`: the token is missing or wrong.",
        Code::NotFound => "`not_found`: no such job (or route).",
        Code::MethodNotAllowed => {
            "`method_not_allowed`: the path exists with other methods (see `Allow`)."
        }
        Code::Conflict | Code::Duplicate => {
            "`conflict`: the job's state does not allow it; or `duplicate`: a queued or running job \
             holds the unique key, and `job_id` names it."
        }
        Code::PayloadTooLarge => "`payload_too_large`: the body is larger than the server's limit.",
        Code::Invalid => {
            "`invalid`: well-formed but wrong (unknown pipeline, bad member or value); in a batch, \
             `index` names the job."
        }
        Code::Internal => "`internal`: the server failed.",
        Code::Unavailable => "`unavailable`: the store is busy or shutting down; try again.",
    };
    let mut out = Map::new();
    for code in Code::ALL {
        out.entry(response_name(code))
            .or_insert_with(|| json_body(describe(code), "Error"));
    }
    Value::Object(out)
}

fn parameters() -> Value {
    let query = |name: &str, description: &str, schema: Value| json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema});
    let statuses: Vec<&str> = JobStatus::ALL
        .iter()
        .filter(|s| **s != JobStatus::Deleted)
        .map(|s| s.as_str())
        .collect();
    let delivery_statuses: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
    let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    json!({
        "JobId": {"name": "id", "in": "path", "required": true, "description": "The job's id.",
                  "schema": {"type": "string", "format": "uuid"}},
        "PipelineName": {"name": "name", "in": "path", "required": true,
                         "description": "A pipeline this server runs (percent-encoded in the path).",
                         "schema": {"type": "string"}},
        "AssetName": {"name": "name", "in": "path", "required": true,
                      "description": "The file's name: `app.js`, `app.css` or `favicon.svg`.",
                      "schema": {"type": "string"}},
        "Status": query("status", &format!("Only jobs in these statuses, comma-separated: {}.", statuses.join(", ")),
                        json!({"type": "string"})),
        "Pipeline": query("pipeline", "Only jobs of this pipeline.", json!({"type": "string"})),
        "Limit": query("limit", &format!("Jobs per page (default {DEFAULT_PAGE})."),
                       json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE})),
        "Cursor": query("cursor", "The `next_cursor` of the previous page.", json!({"type": "string"})),
        "After": query("after", "Start after this event sequence number (`Last-Event-ID` wins).",
                       json!({"type": "integer", "minimum": 0})),
        "LastEventId": {"name": "Last-Event-ID", "in": "header", "required": false,
                        "description": "Start after this event sequence number; EventSource sends it when it reconnects.",
                        "schema": {"type": "integer", "minimum": 0}},
        "Types": query("types", &format!("Only events of these types, comma-separated: {}.", types.join(", ")),
                       json!({"type": "string"})),
        "DeliveryJob": query("job", "Only deliveries of this job's events.",
                             json!({"type": "string", "format": "uuid"})),
        "DeliveryStatus": query("status", &format!("Only deliveries in these statuses, comma-separated: {}.",
                                                   delivery_statuses.join(", ")),
                                json!({"type": "string"})),
        "DeliveryLimit": query("limit", &format!("At most this many (default {DEFAULT_DELIVERIES})."),
                               json!({"type": "integer", "minimum": 1, "maximum": MAX_DELIVERIES})),
    })
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn nullable_time() -> Value {
    json!({"type": ["string", "null"], "format": "date-time"})
}

fn nullable(name: &str) -> Value {
    json!({"anyOf": [schema_ref(name), {"type": "null"}]})
}

/// An object with exactly these members, all required.
fn object(members: Value) -> Value {
    let required: Vec<String> = members
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": members})
}

fn schemas() -> Value {
    let job_statuses: Vec<&str> = JobStatus::ALL
        .iter()
        .filter(|s| **s != JobStatus::Deleted)
        .map(|s| s.as_str())
        .collect();
    let phase_statuses: Vec<&str> = PhaseStatus::ALL.iter().map(|s| s.as_str()).collect();
    let delivery_statuses: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
    let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    let status_counts: Value = job_statuses
        .iter()
        .map(|s| ((*s).to_owned(), json!({"type": "integer", "minimum": 0})))
        .collect::<Map<String, Value>>()
        .into();
    let uuid = json!({"type": "string", "format": "uuid"});
    let count = json!({"type": "integer", "minimum": 0});
    let name = json!({"type": "string"});
    let nullable_string = json!({"type": ["string", "null"]});
    let error_details = json!({
        "job_id": {"type": "string", "format": "uuid", "description": "`duplicate`: the job that holds the unique key."},
        "index": {"type": "integer", "minimum": 0, "description": "`POST /jobs/batch`: the position of the bad job."},
    });
    let mut error_members = json!({
        "code": {"type": "string", "enum": codes},
        "message": {"type": "string", "description": "What is wrong, for people."},
    });
    let mut top_members = json!({});
    if let (Some(inner), Some(top), Some(extra)) = (
        error_members.as_object_mut(),
        top_members.as_object_mut(),
        error_details.as_object(),
    ) {
        inner.extend(extra.clone());
        top.extend(extra.clone());
    }
    let error_object = json!({"type": "object", "additionalProperties": false,
                              "required": ["code", "message"], "properties": error_members});
    let mut error_top = top_members;
    error_top["error"] = error_object.clone();
    json!({
        "Error": {
            "description": "Every error. `job_id` and `index`, when present, are in the error object and repeated at the top level.",
            "type": "object", "additionalProperties": false, "required": ["error"],
            "properties": error_top,
        },
        "Progress": object(json!({
            "percent": {"type": "integer", "minimum": 0, "maximum": 100},
            "message": nullable_string,
        })),
        "JobError": object(json!({
            "phase": {"type": ["string", "null"], "description": "null when the job failed outside any phase."},
            "message": name,
            "attempt": {"type": "integer", "minimum": 1},
        })),
        "Interrupted": object(json!({
            "phase": name,
            "at": time(),
            "progress": nullable("Progress"),
        })),
        "Phase": object(json!({
            "name": name,
            "status": {"type": "string", "enum": phase_statuses},
            "attempts": count,
            "progress": nullable("Progress"),
            "result": {"description": "The phase's JSON result; null until it completed."},
            "error": nullable_string,
            "started_at": nullable_time(),
            "finished_at": nullable_time(),
            "checkpoint": {"description": "The last JSON checkpoint the phase saved while it ran, which its next run resumes from; null when it saved none, and once it completed."},
        })),
        "Job": object(json!({
            "id": uuid,
            "pipeline": name,
            "status": {"type": "string", "enum": job_statuses},
            "input": {"description": "The job's JSON input."},
            "priority": {"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX},
            "unique_key": nullable_string,
            "attempt": {"type": "integer", "minimum": 0, "description": "Attempts started."},
            "max_attempts": {"type": "integer", "minimum": 1},
            "created_at": time(),
            "run_at": time(),
            "started_at": nullable_time(),
            "finished_at": nullable_time(),
            "error": nullable("JobError"),
            "interrupted": nullable("Interrupted"),
            "cancel_requested": {"type": "boolean", "description": "A cancel is stopping the running job."},
            "stale_at": nullable_time(),
            "phases": {"type": "array", "items": schema_ref("Phase")},
        })),
        "NewJob": {
            "type": "object", "additionalProperties": false, "required": ["pipeline"],
            "properties": {
                "pipeline": {"type": "string", "minLength": 1},
                "input": {"description": "Any JSON; null when absent."},
                "priority": {"type": ["integer", "null"], "minimum": i32::MIN, "maximum": i32::MAX,
                             "description": "Higher runs first; default 0."},
                "run_at": {"type": ["string", "null"], "format": "date-time", "description": "Not before this time."},
                "unique_key": {"type": ["string", "null"], "minLength": 1,
                               "description": "At most one queued or running job holds a key."},
                "unique_by_input": {"type": ["boolean", "null"],
                                    "description": "The unique key is made from the pipeline and the input (not with unique_key)."},
                "unique_for": {"type": ["string", "null"], "minLength": 1,
                               "description": "Also hold the key, in every state, for the window of this period in which the job is created: \"30m\", \"1h\", \"1d\" (whole seconds, at most ten years). Needs unique_key or unique_by_input."},
                "max_attempts": {"type": ["integer", "null"], "minimum": 1,
                                 "description": "Default: the pipeline's."},
                "webhook_url": {"type": ["string", "null"], "format": "uri",
                                "description": "Also deliver this job's events here (http or https, public addresses)."},
                "depends_on": {"type": ["array", "null"], "maxItems": jobqueue::core::job::MAX_DEPENDENCIES,
                               "items": {"type": "string", "format": "uuid"},
                               "description": "Ids of jobs that must complete before this one starts; each must exist and be queued, running or completed."},
                "on_dependency_failure": {"type": ["string", "null"], "enum": ["cancel", "fail", null],
                                          "description": "What becomes of the job if a dependency fails or is cancelled; default cancel."},
            },
        },
        "BatchRequest": object(json!({"jobs": {"type": "array", "items": schema_ref("NewJob")}})),
        "JobBatch": object(json!({"jobs": {"type": "array", "items": schema_ref("Job")}})),
        "JobList": object(json!({
            "jobs": {"type": "array", "items": schema_ref("Job")},
            "next_cursor": {"type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last."},
        })),
        "Event": event_schema(),
        "Delivery": object(json!({
            "id": uuid,
            "event_seq": {"type": "integer", "minimum": 1},
            "job_id": {"type": ["string", "null"], "format": "uuid", "description": "The event's job; null for a pipeline event."},
            "type": {"type": "string", "enum": types},
            "url": name,
            "status": {"type": "string", "enum": delivery_statuses},
            "attempts": count,
            "last_status": {"type": ["integer", "null"], "description": "The HTTP status of the last attempt."},
            "last_error": nullable_string,
            "next_attempt_at": nullable_time(),
            "created_at": time(),
        })),
        "DeliveryList": object(json!({"deliveries": {"type": "array", "items": schema_ref("Delivery")}})),
        "StatusCounts": object(status_counts),
        "Pipeline": object(json!({
            "name": {"type": "string"},
            "paused": {"type": "boolean", "description": "Whether its queued jobs wait (see `POST /pipelines/{name}/pause`)."},
        })),
        "PipelineList": object(json!({"pipelines": {"type": "array", "items": schema_ref("Pipeline")}})),
        "PipelinePause": object(json!({
            "pipeline": {"type": "string"},
            "paused": {"type": "boolean", "description": "Whether it is paused now."},
            "changed": {"type": "boolean", "description": "Whether this call changed it (false when it was so already)."},
        })),
        "Stats": object(json!({
            "total": {"type": "integer", "minimum": 0, "description": "Jobs in the store."},
            "statuses": schema_ref("StatusCounts"),
            "pipelines": {
                "type": "object",
                "description": "By pipeline: every pipeline the server runs (with zeros), and any other that still has jobs.",
                "additionalProperties": object(json!({
                    "total": {"type": "integer", "minimum": 0},
                    "statuses": schema_ref("StatusCounts"),
                })),
            },
            "last_event_seq": {"type": "integer", "minimum": 0,
                               "description": "The last event committed when the counts were read: follow `/events?after=` it."},
        })),
        "Health": object(json!({"status": {"const": "ok"}})),
        "Unhealthy": object(json!({
            "status": {"const": "unhealthy"},
            "error": error_object,
            "tasks": {"type": "array", "items": object(json!({
                "name": name,
                "state": {"type": "string", "enum": ["running", "restarting", "stopped", "failed"]},
                "panics": count,
                "last_panic": nullable_string,
            }))},
        })),
    })
}

/// The `data` of each event type. The match is exhaustive: a new type does
/// not compile until it is described here.
fn event_data(ty: EventType) -> Value {
    let phase = json!({"type": "string"});
    let index = json!({"type": "integer", "minimum": 0});
    let attempt = json!({"type": "integer", "minimum": 1});
    match ty {
        EventType::JobCreated => object(json!({
            "run_at": time(),
            "priority": {"type": "integer"},
        })),
        EventType::JobStarted => object(json!({"attempt": attempt})),
        EventType::PhaseStarted => {
            object(json!({"phase": phase, "index": index, "attempt": attempt}))
        }
        EventType::PhaseProgress => object(json!({
            "phase": phase,
            "percent": {"type": "integer", "minimum": 0, "maximum": 100},
            "message": {"type": ["string", "null"]},
        })),
        EventType::PhaseCompleted => object(json!({"phase": phase, "index": index, "result": {}})),
        EventType::PhaseFailed => object(json!({
            "phase": phase,
            "index": index,
            "error": {"type": "string"},
            "retry_at": nullable_time(),
        })),
        EventType::JobCompleted => object(json!({
            "results": {"type": "object", "description": "Each phase's result by phase name."},
        })),
        EventType::JobFailed => object(json!({"error": schema_ref("JobError")})),
        EventType::JobRetried => object(json!({"from_phase": {"type": ["string", "null"]}})),
        EventType::JobInterrupted => {
            object(json!({"phase": phase, "progress": nullable("Progress")}))
        }
        EventType::JobCancelled
        | EventType::JobStale
        | EventType::JobDeleted
        | EventType::PipelinePaused
        | EventType::PipelineResumed => object(json!({})),
        EventType::JobSnoozed => object(json!({"phase": phase, "index": index, "run_at": time()})),
    }
}

fn event_schema() -> Value {
    let variants: Vec<Value> = EventType::ALL
        .iter()
        .map(|ty| {
            // A pipeline event is about no job.
            let job_id = if ty.is_pipeline_event() {
                json!({"type": "null"})
            } else {
                json!({"type": "string", "format": "uuid"})
            };
            object(json!({
                "seq": {"type": "integer", "minimum": 1},
                "type": {"const": ty.as_str()},
                "job_id": job_id,
                "pipeline": {"type": "string"},
                "at": time(),
                "data": event_data(*ty),
            }))
        })
        .collect();
    json!({
        "description": "One event: the `data` of an SSE frame and the body of a webhook. `seq` increases strictly across the queue.",
        "oneOf": variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in `value`.
    fn refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves() {
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 20);
        for r in found {
            let pointer = r.strip_prefix('#').unwrap();
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn paths_are_the_route_table() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                operations += 1;
                assert!(
                    Endpoint::ALL
                        .iter()
                        .any(|e| e.path() == path
                            && e.method().as_str().eq_ignore_ascii_case(method)),
                    "{method} {path}"
                );
            }
        }
        assert_eq!(operations, Endpoint::ALL.len());
        let health = &paths["/health"]["get"];
        assert_eq!(health["security"], json!([]));
        assert!(health["responses"].get("401").is_none());
        assert!(paths["/jobs"]["get"]["responses"].get("401").is_some());
    }
}
