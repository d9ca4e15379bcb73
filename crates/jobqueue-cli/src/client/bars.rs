//! `jobqueue tail` on a terminal: one live progress bar per running phase
//! (with `indicatif`: phase name, bar, percent, elapsed time, message), and
//! every other event, finished jobs among them, printed as a line above the
//! bars. Where stdout is not a terminal, `tail` prints plain lines instead
//! (see [`event_line`]).
//!
//! A bar appears when its phase starts (or on its first progress, when the
//! stream began in the middle of the phase) and goes when the phase
//! completes or fails, or when its job ends, is interrupted or deleted.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::render::{event_line, text};

/// How often a bar is redrawn when no event moves it (its elapsed time).
const TICK: Duration = Duration::from_millis(200);

/// The bars of the running phases, and the lines above them.
pub struct Bars {
    multi: MultiProgress,
    /// By (job id, phase name).
    bars: BTreeMap<(String, String), ProgressBar>,
    show_job: bool,
    style: ProgressStyle,
}

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bars")
            .field("bars", &self.bars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Bars {
    /// Bars drawn to `target` (stdout on a terminal); `show_job` names the
    /// job in each bar and line (for the stream of every job).
    pub fn new(target: ProgressDrawTarget, show_job: bool) -> Self {
        let style = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30.cyan/blue}] {pos:>3}% {elapsed:>4} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars: BTreeMap::new(),
            show_job,
            style,
        }
    }

    /// Shows `event`: moves or ends bars, and prints it as a line above
    /// them unless it is progress.
    pub fn event(&mut self, event: &Value) -> io::Result<()> {
        let job = text(&event["job_id"]);
        let data = &event["data"];
        let phase = text(&data["phase"]);
        match event["type"].as_str().unwrap_or_default() {
            "job.phase.progress" => {
                let bar = self.bar(event, &job, &phase);
                bar.set_position(data["percent"].as_u64().unwrap_or(0).min(100));
                bar.set_message(data["message"].as_str().unwrap_or_default().to_owned());
                return Ok(());
            }
            "job.phase.started" => {
                self.bar(event, &job, &phase);
            }
            "job.phase.completed" | "job.phase.failed" => self.remove(&job, Some(&phase)),
            "job.completed" | "job.failed" | "job.cancelled" | "job.interrupted" | "job.stale"
            | "job.deleted" | "job.snoozed" => self.remove(&job, None),
            _ => {}
        }
        self.line(&event_line(event, self.show_job))
    }

    /// Prints `line` above the bars.
    pub fn line(&self, line: &str) -> io::Result<()> {
        self.multi.println(line)
    }

    /// Removes every bar (before the program ends).
    pub fn finish(&mut self) -> io::Result<()> {
        for (_, bar) in std::mem::take(&mut self.bars) {
            bar.finish_and_clear();
        }
        self.multi.clear()
    }

    /// The number of bars shown.
    pub fn len(&self) -> usize {
        self.bars.len()
    }

    /// Whether no bar is shown.
    pub fn is_empty(&self) -> bool {
        self.bars.is_empty()
    }

    /// The bar of `phase` of `job`, made when it has none: its clock starts
    /// at the event's time (a phase that started before `tail` did shows
    /// how long it has really run).
    fn bar(&mut self, event: &Value, job: &str, phase: &str) -> &ProgressBar {
        let key = (job.to_owned(), phase.to_owned());
        let (multi, style, show_job) = (&self.multi, &self.style, self.show_job);
        self.bars.entry(key).or_insert_with(|| {
            let prefix = if show_job {
                format!("{} {phase}", short_id(job))
            } else {
                phase.to_owned()
            };
            let bar = ProgressBar::new(100)
                .with_style(style.clone())
                .with_prefix(prefix)
                .with_elapsed(since(&event["at"]));
            let bar = multi.add(bar);
            bar.enable_steady_tick(TICK);
            bar
        })
    }

    /// Ends the bar of `phase` of `job`, or every bar of `job`.
    fn remove(&mut self, job: &str, phase: Option<&str>) {
        let keys: Vec<(String, String)> = self
            .bars
            .keys()
            .filter(|(j, p)| j == job && phase.is_none_or(|phase| p == phase))
            .cloned()
            .collect();
        for key in keys {
            if let Some(bar) = self.bars.remove(&key) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
        }
    }
}

/// The last 8 characters of a job id: the random part of a UUID v7 (its
/// first characters are a timestamp, alike for jobs made together).
fn short_id(id: &str) -> &str {
    let cut = id.char_indices().rev().nth(7).map_or(0, |(i, _)| i);
    &id[cut..]
}

/// How long ago the RFC 3339 time `at` was (zero if it is not a time or
/// lies ahead).
fn since(at: &Value) -> Duration {
    at.as_str()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .and_then(|at| Duration::try_from(OffsetDateTime::now_utc() - at).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: &str, job: &str, data: Value) -> Value {
        json!({"seq": 1, "type": kind, "job_id": job, "pipeline": "build",
               "at": "2024-05-01T12:00:03Z", "data": data})
    }

    #[test]
    fn a_bar_per_running_phase() {
        let mut bars = Bars::new(ProgressDrawTarget::hidden(), true);
        let started = |job, phase| {
            event(
                "job.phase.started",
                job,
                json!({"phase": phase, "index": 0, "attempt": 1}),
            )
        };
        bars.event(&started("j1", "fetch")).unwrap_or_default();
        bars.event(&event(
            "job.phase.progress",
            "j2",
            json!({"phase": "build", "percent": 40, "message": "m"}),
        ))
        .unwrap_or_default();
        assert_eq!(bars.len(), 2);
        let key = ("j2".to_owned(), "build".to_owned());
        assert_eq!(bars.bars[&key].position(), 40);
        assert_eq!(bars.bars[&key].prefix(), "j2 build");
        assert!(
            bars.bars[&key].elapsed() > Duration::from_secs(60),
            "the clock starts at the event's time"
        );
        bars.event(&event(
            "job.phase.completed",
            "j1",
            json!({"phase": "fetch", "index": 0, "result": null}),
        ))
        .unwrap_or_default();
        assert_eq!(bars.len(), 1);
        bars.event(&started("j2", "test")).unwrap_or_default();
        bars.event(&event("job.failed", "j2", json!({"error": null})))
            .unwrap_or_default();
        assert!(bars.is_empty());
        bars.event(&started("j3", "x")).unwrap_or_default();
        bars.finish().unwrap_or_default();
        assert!(bars.is_empty());
    }

    #[test]
    fn short_ids_keep_the_random_end() {
        assert_eq!(short_id("0192f7c5-0000-7000-8000-00000000abcd"), "0000abcd");
        assert_eq!(short_id("abc"), "abc");
    }
}
