//! The client commands: `enqueue`, `jobs`, `show`, `cancel`, `retry` and
//! `tail`, over the server's HTTP API.
//!
//! Each prints for people by default (tables, details, event lines, and on
//! a terminal live progress bars) and the server's JSON with `--json` (one
//! document per line; `tail --json` prints one event per line), for scripts. An error
//! answer of the server is a [`ClientError::Api`] with its code and message.

pub mod bars;
pub mod http;
pub mod render;
pub mod sse;

use std::io::{self, Write};
use std::ops::ControlFlow;

use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use self::bars::Bars;
use self::http::encode;
pub use self::http::{Answer, Client, ClientError};
use self::sse::{FollowError, Followed, SseEvent, follow};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Talking to the server failed, or it answered with an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Following events failed.
    #[error(transparent)]
    Follow(#[from] FollowError),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    /// An argument is wrong.
    #[error("{0}")]
    Argument(String),
}

impl CommandError {
    /// Whether the output was closed by its reader (`jobqueue jobs | head`):
    /// not worth an error message.
    pub fn is_broken_pipe(&self) -> bool {
        let io = match self {
            Self::Output(e) | Self::Follow(FollowError::Output(e)) => e,
            _ => return false,
        };
        io.kind() == io::ErrorKind::BrokenPipe
    }
}

/// Reads the `--input` argument: JSON text, `@FILE` for a file of JSON, or
/// `-` for JSON on standard input.
pub fn read_input(arg: &str) -> Result<Value, CommandError> {
    let (text, from) = if arg == "-" {
        let text = io::read_to_string(io::stdin()).map_err(|e| {
            CommandError::Argument(format!("--input -: cannot read standard input: {e}"))
        })?;
        (text, "standard input".to_owned())
    } else if let Some(path) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CommandError::Argument(format!("--input @{path}: {e}")))?;
        (text, path.to_owned())
    } else {
        (arg.to_owned(), "--input".to_owned())
    };
    serde_json::from_str(&text)
        .map_err(|e| CommandError::Argument(format!("{from} is not JSON: {e}")))
}

/// A job to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// The pipeline.
    pub pipeline: String,
    /// The input; without one the server's default applies.
    pub input: Option<Value>,
    /// Higher runs first.
    pub priority: Option<i64>,
    /// At most one queued or running job holds it.
    pub unique_key: Option<String>,
    /// The unique key is made from the pipeline and the input.
    pub unique_by_input: bool,
    /// The key is also held for the window of this period (`"1d"`), in
    /// every state; passed to the server as written.
    pub unique_for: Option<String>,
}

fn print_json(out: &mut dyn Write, value: &Value) -> io::Result<()> {
    writeln!(out, "{value}")
}

/// `jobqueue enqueue`: prints the new job's id (or the job with `--json`).
pub async fn enqueue(
    client: &Client,
    job: &NewJob,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let mut body = Map::new();
    body.insert("pipeline".into(), json!(job.pipeline));
    if let Some(input) = &job.input {
        body.insert("input".into(), input.clone());
    }
    if let Some(priority) = job.priority {
        body.insert("priority".into(), json!(priority));
    }
    if let Some(key) = &job.unique_key {
        body.insert("unique_key".into(), json!(key));
    }
    if job.unique_by_input {
        body.insert("unique_by_input".into(), json!(true));
    }
    if let Some(period) = &job.unique_for {
        body.insert("unique_for".into(), json!(period));
    }
    let answer = client
        .call(Method::POST, "/jobs", Some(&Value::Object(body)))
        .await?;
    if json {
        print_json(out, &answer.body)?;
    } else {
        writeln!(out, "{}", answer.body["id"].as_str().unwrap_or("-"))?;
    }
    Ok(())
}

/// What `jobqueue jobs` lists.
#[derive(Debug, Clone, Default)]
pub struct JobsQuery {
    /// Statuses, comma-separated.
    pub status: Option<String>,
    /// Only this pipeline.
    pub pipeline: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
    /// The page after this cursor.
    pub cursor: Option<String>,
}

impl JobsQuery {
    fn to_path(&self) -> String {
        let params: Vec<String> = [
            ("status", self.status.clone()),
            ("pipeline", self.pipeline.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(&v))))
        .collect();
        if params.is_empty() {
            "/jobs".to_owned()
        } else {
            format!("/jobs?{}", params.join("&"))
        }
    }
}

/// `jobqueue jobs`: a table of jobs, newest first; when there are more, a
/// note on stderr says how to see them.
pub async fn jobs(
    client: &Client,
    query: &JobsQuery,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client.call(Method::GET, &query.to_path(), None).await?;
    if json {
        print_json(out, &answer.body)?;
        return Ok(());
    }
    let jobs = answer.body["jobs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if jobs.is_empty() {
        writeln!(out, "no jobs")?;
    } else {
        write!(out, "{}", render::jobs_table(jobs))?;
    }
    if let Some(cursor) = answer.body["next_cursor"].as_str() {
        eprintln!("more jobs: add --cursor {cursor}");
    }
    Ok(())
}

/// `jobqueue show`: one job with its phases.
pub async fn show(
    client: &Client,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client
        .call(Method::GET, &format!("/jobs/{}", encode(id)), None)
        .await?;
    if json {
        print_json(out, &answer.body)?;
    } else {
        write!(out, "{}", render::job_details(&answer.body))?;
    }
    Ok(())
}

/// `jobqueue cancel`: a queued job is cancelled at once, a running one is
/// told to stop (the server answers 202 while it stops).
pub async fn cancel(
    client: &Client,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client
        .call(Method::POST, &format!("/jobs/{}/cancel", encode(id)), None)
        .await?;
    if json {
        print_json(out, &answer.body)?;
    } else if answer.status == StatusCode::ACCEPTED {
        writeln!(
            out,
            "job {id} is stopping: its running phase was told to stop"
        )?;
    } else {
        let status = answer.body["status"].as_str().unwrap_or("cancelled");
        writeln!(out, "job {id} {status}")?;
    }
    Ok(())
}

/// `jobqueue retry`: a failed or cancelled job is queued again and resumes
/// at its first phase not completed.
pub async fn retry(
    client: &Client,
    id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client
        .call(Method::POST, &format!("/jobs/{}/retry", encode(id)), None)
        .await?;
    if json {
        print_json(out, &answer.body)?;
        return Ok(());
    }
    let from = answer.body["phases"]
        .as_array()
        .and_then(|phases| phases.iter().find(|p| p["status"] != "completed"))
        .and_then(|p| p["name"].as_str());
    match from {
        Some(phase) => writeln!(out, "job {id} queued again; it resumes at phase {phase}")?,
        None => writeln!(out, "job {id} queued again")?,
    }
    Ok(())
}

/// `jobqueue pipelines`: the server's pipelines, one a line, each with
/// whether it is paused.
pub async fn pipelines(
    client: &Client,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client.call(Method::GET, "/pipelines", None).await?;
    if json {
        print_json(out, &answer.body)?;
        return Ok(());
    }
    let list = answer.body["pipelines"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if list.is_empty() {
        writeln!(out, "no pipelines")?;
    } else {
        write!(out, "{}", render::pipelines_table(list))?;
    }
    Ok(())
}

/// `jobqueue pause` (`pause`) and `jobqueue resume`: says whether this call
/// changed the pipeline or it was so already (both are idempotent).
pub async fn pause(
    client: &Client,
    pipeline: &str,
    pause: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let verb = if pause { "pause" } else { "resume" };
    let answer = client
        .call(
            Method::POST,
            &format!("/pipelines/{}/{verb}", encode(pipeline)),
            None,
        )
        .await?;
    if json {
        print_json(out, &answer.body)?;
        return Ok(());
    }
    let changed = answer.body["changed"].as_bool() == Some(true);
    match (pause, changed) {
        (true, true) => writeln!(
            out,
            "pipeline {pipeline} paused: its queued jobs wait until it is resumed"
        )?,
        (true, false) => writeln!(out, "pipeline {pipeline} was paused already")?,
        (false, true) => writeln!(out, "pipeline {pipeline} resumed")?,
        (false, false) => writeln!(out, "pipeline {pipeline} was not paused")?,
    }
    Ok(())
}

/// What `jobqueue tail` follows.
#[derive(Debug, Clone, Default)]
pub struct TailQuery {
    /// One job's events; else every job's.
    pub job: Option<String>,
    /// Only these event types (comma-separated).
    pub types: Option<String>,
    /// Only events after this sequence number.
    pub after: Option<u64>,
}

impl TailQuery {
    fn to_path(&self) -> String {
        let base = match &self.job {
            Some(id) => format!("/jobs/{}/events", encode(id)),
            None => "/events".to_owned(),
        };
        // The position goes in `Last-Event-ID` (see `follow`), which a
        // reconnection moves on; the URL stays the same.
        match &self.types {
            Some(types) => format!("{base}?types={}", encode(types)),
            None => base,
        }
    }
}

/// `jobqueue tail`: follows the event stream of one job or of every job
/// (replayed as the server replays it, then live), showing each event as it
/// comes, until interrupted (Ctrl-C ends it cleanly). A dropped connection
/// is resumed after the last event shown.
///
/// On a `terminal` (and without `json`) each running phase is a live
/// progress bar drawn on stdout, with the other events as lines above the
/// bars; otherwise every event is a plain line on `out`, progress included,
/// with no escape codes.
pub async fn tail(
    client: &Client,
    query: &TailQuery,
    json: bool,
    terminal: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let path = query.to_path();
    let show_job = query.job.is_none();
    let mut bars =
        (terminal && !json).then(|| Bars::new(indicatif::ProgressDrawTarget::stdout(), show_job));
    let followed = {
        let bars = &mut bars;
        let out = &mut *out;
        let run = follow(client, &path, query.after, |followed| {
            match (followed, bars.as_mut()) {
                (Followed::Notice(notice), Some(bars)) => bars.line(notice)?,
                (Followed::Notice(notice), None) => eprintln!("{notice}"),
                (Followed::Event(event), _) if json => {
                    writeln!(out, "{}", event.data)?;
                    out.flush()?;
                }
                (Followed::Event(event), Some(bars)) => match parse(event) {
                    Some(value) => bars.event(&value)?,
                    None => bars.line(&event.data)?,
                },
                (Followed::Event(event), None) => {
                    match parse(event) {
                        Some(value) => writeln!(out, "{}", render::event_line(&value, show_job))?,
                        None => writeln!(out, "{}", event.data)?,
                    }
                    out.flush()?;
                }
            }
            Ok(ControlFlow::Continue(()))
        });
        tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    };
    if let Some(bars) = bars.as_mut() {
        bars.finish()?;
    }
    out.flush()?;
    Ok(followed?)
}

/// An event's JSON, or `None` if it is not JSON (shown as it came).
fn parse(event: &SseEvent) -> Option<Value> {
    serde_json::from_str(&event.data).ok()
}
