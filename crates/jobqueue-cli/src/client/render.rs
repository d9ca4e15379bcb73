//! How the client commands show jobs and events to people: tables, a job's
//! details, event lines with progress bars. (`--json` prints the server's
//! JSON instead, for scripts.)
//!
//! Everything here reads the API's JSON loosely: a field that is missing or
//! of another type shows as `-`, never as an error, so a newer server with
//! more fields still shows well.

use std::fmt::Write as _;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Lays `rows` out under `headers` in columns two spaces apart; the last
/// column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push('\n');
    }
    out
}

/// The text of a string field, or `-`.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC, as the server wrote it),
/// or `-`.
pub fn datetime(v: &Value) -> String {
    let Some(s) = v.as_str() else {
        return "-".to_owned();
    };
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .and_then(|t| {
            t.to_offset(time::UtcOffset::UTC)
                .format(format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]"
                ))
                .ok()
        })
        .unwrap_or_else(|| s.to_owned())
}

/// An RFC 3339 time as `HH:MM:SS` (UTC), or `--:--:--`.
fn clock(v: &Value) -> String {
    v.as_str()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .and_then(|t| {
            t.to_offset(time::UtcOffset::UTC)
                .format(format_description!("[hour]:[minute]:[second]"))
                .ok()
        })
        .unwrap_or_else(|| "--:--:--".to_owned())
}

/// `text` cut to `max` characters with an ellipsis.
pub fn truncate(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    match one_line.char_indices().nth(max.saturating_sub(1)) {
        Some((i, _)) if one_line.chars().count() > max => format!("{}…", &one_line[..i]),
        _ => one_line,
    }
}

/// A progress bar of `width` cells: `[#####-----]`.
pub fn bar(percent: u64, width: usize) -> String {
    let percent = percent.min(100) as usize;
    let filled = (percent * width + 50) / 100;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// The phase a job is at, for the jobs table: the running phase with its
/// progress, else the failed or cancelled one, else the next pending one.
fn current_phase(job: &Value) -> String {
    let phases = job["phases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let by_status = |status: &str| phases.iter().find(|p| p["status"] == status);
    if let Some(p) = by_status("running") {
        return match p["progress"]["percent"].as_u64() {
            Some(percent) => format!("{} {percent}%", text(&p["name"])),
            None => text(&p["name"]),
        };
    }
    if job["status"] == "completed" {
        return "-".to_owned();
    }
    by_status("failed")
        .or_else(|| by_status("cancelled"))
        .or_else(|| by_status("pending"))
        .map_or_else(|| "-".to_owned(), |p| text(&p["name"]))
}

/// The jobs table of `jobqueue jobs`.
pub fn jobs_table(jobs: &[Value]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            vec![
                text(&job["id"]),
                text(&job["pipeline"]),
                text(&job["status"]),
                current_phase(job),
                format!("{}/{}", text(&job["attempt"]), text(&job["max_attempts"])),
                datetime(&job["created_at"]),
            ]
        })
        .collect();
    table(
        &["ID", "PIPELINE", "STATUS", "PHASE", "ATTEMPT", "CREATED"],
        &rows,
    )
}

/// The table of `jobqueue pipelines`: each pipeline, `running` or
/// `paused`.
pub fn pipelines_table(pipelines: &[Value]) -> String {
    let rows: Vec<Vec<String>> = pipelines
        .iter()
        .map(|p| {
            let state = if p["paused"].as_bool() == Some(true) {
                "paused"
            } else {
                "running"
            };
            vec![text(&p["name"]), state.to_owned()]
        })
        .collect();
    table(&["PIPELINE", "STATE"], &rows)
}

/// A JSON value on one line, cut to `max` characters.
fn json_short(v: &Value, max: usize) -> String {
    match v {
        Value::Null => "-".to_owned(),
        other => truncate(&other.to_string(), max),
    }
}

/// The details of `jobqueue show`.
pub fn job_details(job: &Value) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<12}{value}");
    };
    field("job", text(&job["id"]));
    field("pipeline", text(&job["pipeline"]));
    field("status", text(&job["status"]));
    field(
        "attempt",
        format!(
            "{} of {}",
            text(&job["attempt"]),
            text(&job["max_attempts"])
        ),
    );
    field("priority", text(&job["priority"]));
    if !job["unique_key"].is_null() {
        field("unique key", text(&job["unique_key"]));
    }
    field("created", datetime(&job["created_at"]));
    field("run at", datetime(&job["run_at"]));
    field("started", datetime(&job["started_at"]));
    field("finished", datetime(&job["finished_at"]));
    let error = &job["error"];
    if !error.is_null() {
        field(
            "error",
            format!(
                "phase {} (attempt {}): {}",
                text(&error["phase"]),
                text(&error["attempt"]),
                text(&error["message"])
            ),
        );
    }
    let interrupted = &job["interrupted"];
    if !interrupted.is_null() {
        let progress = &interrupted["progress"];
        let at = match progress["percent"].as_u64() {
            Some(p) => format!(" at {p}%"),
            None => String::new(),
        };
        field(
            "interrupted",
            format!(
                "phase {}{at}, {}",
                text(&interrupted["phase"]),
                datetime(&interrupted["at"])
            ),
        );
    }
    field("input", json_short(&job["input"], 100));
    let phases = job["phases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !phases.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = phases
            .iter()
            .map(|p| {
                let progress = match p["progress"]["percent"].as_u64() {
                    Some(percent) => {
                        let message = p["progress"]["message"].as_str().unwrap_or_default();
                        truncate(&format!("{percent:>3}% {message}"), 30)
                    }
                    None => "-".to_owned(),
                };
                let outcome = if p["error"].is_null() {
                    json_short(&p["result"], 60)
                } else {
                    format!("error: {}", truncate(&text(&p["error"]), 60))
                };
                vec![
                    text(&p["name"]),
                    text(&p["status"]),
                    text(&p["attempts"]),
                    progress,
                    outcome,
                ]
            })
            .collect();
        out.push_str(&table(
            &["PHASE", "STATUS", "ATTEMPTS", "PROGRESS", "RESULT"],
            &rows,
        ));
    }
    out
}

/// One event as a line for people: time, (job,) pipeline, type, details.
pub fn event_line(event: &Value, show_job: bool) -> String {
    let data = &event["data"];
    let kind = event["type"].as_str().unwrap_or("?");
    let details = match kind {
        "job.created" => format!(
            "priority {}, run at {}",
            text(&data["priority"]),
            datetime(&data["run_at"])
        ),
        "job.started" => format!("attempt {}", text(&data["attempt"])),
        "job.phase.started" => format!(
            "{} (attempt {})",
            text(&data["phase"]),
            text(&data["attempt"])
        ),
        "job.phase.progress" => {
            let percent = data["percent"].as_u64().unwrap_or(0);
            let message = data["message"].as_str().unwrap_or_default();
            format!(
                "{} {} {percent:>3}% {message}",
                text(&data["phase"]),
                bar(percent, 20)
            )
            .trim_end()
            .to_owned()
        }
        "job.phase.completed" => format!(
            "{} -> {}",
            text(&data["phase"]),
            json_short(&data["result"], 80)
        ),
        "job.phase.failed" => {
            let retry = match data["retry_at"].as_str() {
                Some(_) => format!("; retry at {}", datetime(&data["retry_at"])),
                None => "; no retry".to_owned(),
            };
            format!(
                "{}: {}{retry}",
                text(&data["phase"]),
                truncate(&text(&data["error"]), 120)
            )
        }
        "job.completed" => "results ".to_owned() + &json_short(&data["results"], 80),
        "job.failed" => {
            let error = &data["error"];
            if error.is_object() {
                format!(
                    "phase {}: {}",
                    text(&error["phase"]),
                    truncate(&text(&error["message"]), 120)
                )
            } else {
                truncate(&text(error), 120)
            }
        }
        "job.retried" => format!("from phase {}", text(&data["from_phase"])),
        "job.interrupted" => {
            let at = match data["progress"]["percent"].as_u64() {
                Some(p) => format!(" at {p}%"),
                None => String::new(),
            };
            format!("phase {}{at}", text(&data["phase"]))
        }
        "job.snoozed" => format!(
            "phase {} again at {}",
            text(&data["phase"]),
            datetime(&data["run_at"])
        ),
        _ => String::new(),
    };
    let mut line = clock(&event["at"]);
    if show_job {
        let _ = write!(line, "  {}", text(&event["job_id"]));
    }
    let _ = write!(
        line,
        "  {:<8}  {kind:<20}  {details}",
        text(&event["pipeline"])
    );
    line.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn job() -> Value {
        json!({"id": "0192f7c5-0000-7000-8000-000000000001", "pipeline": "build", "status": "running",
               "input": {"x": 1}, "priority": 0, "unique_key": null, "attempt": 1, "max_attempts": 3,
               "created_at": "2024-05-01T12:00:01.123456Z", "run_at": "2024-05-01T12:00:01Z",
               "started_at": "2024-05-01T12:00:02Z", "finished_at": null, "error": null, "interrupted": null,
               "phases": [
                   {"name": "fetch", "status": "completed", "attempts": 1, "progress": {"percent": 100, "message": "done"},
                    "result": {"bytes": 42}, "error": null, "started_at": null, "finished_at": null},
                   {"name": "build", "status": "running", "attempts": 1, "progress": {"percent": 40, "message": "compiling"},
                    "result": null, "error": null, "started_at": null, "finished_at": null}]})
    }

    #[test]
    fn a_table_of_jobs() {
        let out = jobs_table(&[job()]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID                                    PIPELINE  STATUS   PHASE      ATTEMPT  CREATED"
        );
        assert_eq!(
            lines[1],
            "0192f7c5-0000-7000-8000-000000000001  build     running  build 40%  1/3      2024-05-01 12:00:01"
        );
    }

    #[test]
    fn details_of_a_job() {
        let out = job_details(&job());
        assert!(out.contains("status      running\n"), "{out}");
        assert!(out.contains("attempt     1 of 3\n"), "{out}");
        assert!(
            out.contains("fetch  completed  1         100% done       {\"bytes\":42}"),
            "{out}"
        );
        assert!(
            out.contains("build  running    1          40% compiling  -"),
            "{out}"
        );
    }

    #[test]
    fn event_lines() {
        let progress = json!({"seq": 4, "type": "job.phase.progress", "job_id": "j", "pipeline": "build",
                              "at": "2024-05-01T12:00:03Z", "data": {"phase": "fetch", "percent": 40, "message": "m"}});
        assert_eq!(
            event_line(&progress, false),
            "12:00:03  build     job.phase.progress    fetch [########------------]  40% m"
        );
        let done = json!({"seq": 9, "type": "job.completed", "job_id": "j", "pipeline": "build",
                          "at": "2024-05-01T12:00:04Z", "data": {"results": {"fetch": 1}}});
        assert_eq!(
            event_line(&done, true),
            "12:00:04  j  build     job.completed         results {\"fetch\":1}"
        );
        // A pipeline event has no job: its job column is `-`.
        let paused = json!({"seq": 10, "type": "pipeline.paused", "job_id": null, "pipeline": "build",
                            "at": "2024-05-01T12:00:05Z", "data": {}});
        assert_eq!(
            event_line(&paused, true),
            "12:00:05  -  build     pipeline.paused"
        );
        let snoozed = json!({"seq": 10, "type": "job.snoozed", "job_id": "j", "pipeline": "build",
                             "at": "2024-05-01T12:00:05Z",
                             "data": {"phase": "poll", "index": 1, "run_at": "2024-05-01T12:05:05Z"}});
        assert_eq!(
            event_line(&snoozed, false),
            "12:00:05  build     job.snoozed           phase poll again at 2024-05-01 12:05:05"
        );
    }

    #[test]
    fn bars_and_cuts() {
        assert_eq!(bar(0, 10), "[----------]");
        assert_eq!(bar(55, 10), "[######----]");
        assert_eq!(bar(250, 4), "[####]");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
