//! Schedules: periodic jobs from a cron expression or a fixed interval, and
//! the supervised task that enqueues them.
//!
//! Each tick is one job with the unique key `schedule:<name>:<tick>` (the
//! tick in RFC 3339, UTC) and `run_at` at the tick. A tick's job is enqueued
//! *before* its time: when the queue starts (the first tick after now) and
//! then whenever a tick comes (the one after it). Every process that runs
//! the same schedule on one store therefore tries each tick while its job
//! is still queued (it cannot run before its `run_at`), and all but one get
//! `Duplicate`: the tick runs once, without a leader.
//!
//! Catch-up after downtime: the tick enqueued before the stop stays queued
//! and runs once when a process comes back, late; the other ticks missed
//! meanwhile are skipped, and the schedule goes on with the next tick after
//! the restart. A scheduler that wakes late (a suspended machine, a clock
//! jump) behaves the same way: it never enqueues more than the next tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jobqueue_core::job::check_name;
use jobqueue_core::{NewJob, StoreError, timefmt};
use serde_json::Value;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use crate::pipeline::Pipelines;
use crate::runtime::Inner;

/// When a schedule ticks.
#[derive(Debug, Clone)]
enum Every {
    /// A cron expression, kept as written, with its parse.
    Cron(String, Result<Box<croner::Cron>, String>),
    /// A fixed period, ticking at multiples of it since the Unix epoch.
    Interval(Duration),
}

/// A periodic job: every tick of a cron expression or of a fixed interval,
/// a job of `pipeline` with the schedule's input and priority.
///
/// ```
/// use std::time::Duration;
/// use jobqueue_runtime::Schedule;
/// use serde_json::json;
///
/// let nightly = Schedule::cron("nightly-report", "0 3 * * *", "report")
///     .input(json!({"scope": "all"}));
/// let poll = Schedule::every("poll-feeds", Duration::from_secs(300), "poll");
/// assert!(nightly.validate().is_ok() && poll.validate().is_ok());
///
/// let bad = Schedule::cron("bad", "61 * * * *", "report");
/// assert!(bad.validate().is_err());
/// ```
///
/// Cron expressions are read in UTC, with five fields (minute, hour, day
/// of month, month, day of week) or six (seconds first), and the nicknames
/// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. An interval ticks
/// at whole multiples of itself since 1970-01-01T00:00:00Z (every 5 minutes
/// is at :00, :05, :10, ...), so that every process agrees on the ticks.
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    pipeline: String,
    every: Every,
    input: Value,
    priority: i32,
}

/// The shortest interval of [`Schedule::every`].
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

impl Schedule {
    /// A job of `pipeline` at every tick of the cron expression `expr`.
    /// A bad expression is refused by [`validate`](Self::validate), which
    /// the queue calls when it starts.
    pub fn cron(name: impl Into<String>, expr: &str, pipeline: impl Into<String>) -> Self {
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build();
        let parsed = parser
            .parse(expr)
            .map(Box::new)
            .map_err(|e| format!("bad cron expression {expr:?}: {e}"));
        Self::new(name, Every::Cron(expr.to_owned(), parsed), pipeline)
    }

    /// A job of `pipeline` every `period` (at least [`MIN_INTERVAL`]).
    pub fn every(name: impl Into<String>, period: Duration, pipeline: impl Into<String>) -> Self {
        Self::new(name, Every::Interval(period), pipeline)
    }

    fn new(name: impl Into<String>, every: Every, pipeline: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            pipeline: pipeline.into(),
            every,
            input: Value::Null,
            priority: 0,
        }
    }

    /// The input of every job it enqueues (default `null`).
    pub fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// The priority of every job it enqueues (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Its name, unique among the queue's schedules.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pipeline of its jobs.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Checks what it can alone: the name, the cron expression, the
    /// interval, and that its jobs are ones a store accepts (unique keys
    /// not too long, an input within the limits of JSON depth and size). That
    /// its pipeline exists is checked when the queue starts.
    pub fn validate(&self) -> Result<(), String> {
        check_name("schedule name", &self.name)?;
        match &self.every {
            Every::Cron(_, Err(e)) => return Err(e.clone()),
            Every::Cron(_, Ok(_)) => {}
            Every::Interval(period) if *period < MIN_INTERVAL => {
                return Err(format!(
                    "interval must be at least {MIN_INTERVAL:?}, not {period:?}"
                ));
            }
            Every::Interval(_) => {}
        }
        // Its jobs as a store will see them: the pipeline's name, the
        // longest key a tick can have, an input within the limits.
        NewJob::new(self.pipeline.clone())
            .input(self.input.clone())
            .unique_key(tick_key(&self.name, timefmt::MAX))
            .validate()
    }

    /// The first tick strictly after `now`; `None` when there is none (a
    /// cron expression that never matches again, a time past what a store
    /// holds, or a schedule that fails [`validate`](Self::validate)).
    pub fn next_after(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let next = match &self.every {
            Every::Cron(_, Ok(cron)) => {
                let now = chrono::DateTime::from_timestamp(now.unix_timestamp(), now.nanosecond())?;
                let next = cron.find_next_occurrence(&now, false).ok()?;
                let nanos = i128::from(next.timestamp())
                    .checked_mul(1_000_000_000)?
                    .checked_add(i128::from(next.timestamp_subsec_nanos()))?;
                OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?
            }
            Every::Cron(_, Err(_)) => return None,
            Every::Interval(period) => {
                let period = i128::try_from(period.as_nanos()).ok()?;
                if period == 0 {
                    return None;
                }
                let now = now.unix_timestamp_nanos();
                let ticks = now.div_euclid(period).checked_add(1)?;
                OffsetDateTime::from_unix_timestamp_nanos(ticks.checked_mul(period)?).ok()?
            }
        };
        Some(next).filter(|t| timefmt::in_range(*t))
    }

    /// The unique key of the job of `tick`: `schedule:<name>:<tick>`.
    pub fn key_of(&self, tick: OffsetDateTime) -> String {
        tick_key(&self.name, tick)
    }

    /// How it ticks, for logs: the cron expression or the interval.
    pub fn describe(&self) -> String {
        match &self.every {
            Every::Cron(expr, _) => format!("cron {expr:?}"),
            Every::Interval(period) => format!("every {period:?}"),
        }
    }
}

fn tick_key(name: &str, tick: OffsetDateTime) -> String {
    format!("schedule:{name}:{}", timefmt::format(tick))
}

/// Checks the schedules against each other and the pipelines: each valid,
/// names unique, pipelines defined, inputs that fit typed pipelines.
/// [`Runtime::start`](crate::Runtime::start) calls it; a builder calls it
/// to refuse a bad schedule before it opens a store.
pub fn check_schedules(schedules: &[Schedule], pipelines: &Pipelines) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for s in schedules {
        let what = format!("schedule {:?}", s.name);
        s.validate().map_err(|e| format!("{what}: {e}"))?;
        if !seen.insert(s.name.as_str()) {
            return Err(format!("{what} is declared twice"));
        }
        let pipeline = pipelines
            .get(&s.pipeline)
            .ok_or_else(|| format!("{what}: unknown pipeline {:?}", s.pipeline))?;
        pipeline
            .check_input(&s.input)
            .map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

/// What the scheduler remembers between passes: the tick each schedule
/// last enqueued (or found enqueued by another process).
#[derive(Debug, Default)]
pub(crate) struct Ticks {
    done: HashMap<String, OffsetDateTime>,
}

/// One pass: enqueues each schedule's next tick unless done already, and
/// returns the earliest of those ticks (when the next pass is due).
pub(crate) async fn schedule_pass(inner: &Inner, ticks: &mut Ticks) -> Option<OffsetDateTime> {
    let now = inner.config.clock.now();
    let mut earliest: Option<OffsetDateTime> = None;
    for s in &inner.config.schedules {
        let Some(tick) = s.next_after(now) else {
            continue;
        };
        earliest = Some(earliest.map_or(tick, |e| e.min(tick)));
        if ticks.done.get(&s.name) == Some(&tick) {
            continue;
        }
        match enqueue_tick(inner, s, tick).await {
            Ok(true) => {
                info!(schedule = %s.name, pipeline = %s.pipeline, tick = %timefmt::format(tick), "scheduled a tick");
                ticks.done.insert(s.name.clone(), tick);
            }
            Ok(false) => {
                debug!(schedule = %s.name, tick = %timefmt::format(tick), "tick already enqueued (by another process)");
                ticks.done.insert(s.name.clone(), tick);
            }
            Err(e) => {
                warn!(schedule = %s.name, error = %e, kind = ?e.kind(), "enqueueing a tick failed; trying again");
            }
        }
    }
    earliest
}

/// Enqueues the job of `tick`: `true` if this call did, `false` if a
/// queued or running job already holds its key.
async fn enqueue_tick(
    inner: &Inner,
    schedule: &Schedule,
    tick: OffsetDateTime,
) -> Result<bool, StoreError> {
    let Some(pipeline) = inner.pipelines.get(&schedule.pipeline) else {
        // Checked at start; a schedule cannot lose its pipeline afterwards.
        return Err(StoreError::Invalid(format!(
            "unknown pipeline {:?}",
            schedule.pipeline
        )));
    };
    let mut job = NewJob::new(schedule.pipeline.clone())
        .input(schedule.input.clone())
        .priority(schedule.priority)
        .run_at(tick)
        .unique_key(schedule.key_of(tick));
    job.phases = pipeline.phase_names();
    job.max_attempts = Some(pipeline.default_max_attempts(&inner.config.retry));
    match inner.store.enqueue(job).await {
        Ok(job) => {
            inner.wake_at(job.run_at);
            Ok(true)
        }
        Err(StoreError::Duplicate { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The scheduler: a pass at every tick (and at least every poll interval,
/// so a clock that jumps, or a failed enqueue, is seen soon); ends when
/// shutdown stops claiming.
pub(crate) async fn scheduler_loop(inner: Arc<Inner>) {
    let mut ticks = Ticks::default();
    loop {
        let earliest = schedule_pass(&inner, &mut ticks).await;
        let poll = inner.config.poll_interval;
        let now = inner.config.clock.now();
        #[expect(
            clippy::arithmetic_side_effects,
            reason = "the difference of two OffsetDateTimes always fits a time::Duration"
        )]
        let wait = earliest.map_or(poll, |t| (t - now).unsigned_abs().min(poll));
        tokio::select! {
            () = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
            () = inner.stop_claiming.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn cron_ticks_are_the_next_match_in_utc() {
        let s = Schedule::cron("s", "*/5 * * * *", "p");
        assert_eq!(
            s.next_after(datetime!(2026-01-01 10:02:30 UTC)),
            Some(datetime!(2026-01-01 10:05:00 UTC))
        );
        // Strictly after: a tick is never its own successor.
        assert_eq!(
            s.next_after(datetime!(2026-01-01 10:05:00 UTC)),
            Some(datetime!(2026-01-01 10:10:00 UTC))
        );
        let seconds = Schedule::cron("s", "*/10 * * * * *", "p");
        assert_eq!(
            seconds.next_after(datetime!(2026-01-01 10:00:01.5 UTC)),
            Some(datetime!(2026-01-01 10:00:10 UTC))
        );
        assert_eq!(
            Schedule::cron("d", "@daily", "p").next_after(datetime!(2026-01-01 10:00 UTC)),
            Some(datetime!(2026-01-02 00:00 UTC))
        );
    }

    #[test]
    fn intervals_tick_at_multiples_since_the_epoch() {
        let s = Schedule::every("s", Duration::from_secs(300), "p");
        assert_eq!(
            s.next_after(datetime!(2026-01-01 10:02:30 UTC)),
            Some(datetime!(2026-01-01 10:05:00 UTC))
        );
        assert_eq!(
            s.next_after(datetime!(2026-01-01 10:05:00 UTC)),
            Some(datetime!(2026-01-01 10:10:00 UTC))
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        let err = Schedule::cron("s", "not cron", "p").validate().unwrap_err();
        assert!(err.contains("bad cron expression \"not cron\""), "{err}");
        assert!(Schedule::cron("s", "* * * *", "p").validate().is_err());
        assert!(
            Schedule::every("s", Duration::ZERO, "p")
                .validate()
                .unwrap_err()
                .contains("at least")
        );
        assert!(
            Schedule::every("", Duration::from_secs(1), "p")
                .validate()
                .is_err()
        );
        assert!(
            Schedule::every("x".repeat(1000), Duration::from_secs(1), "p")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn an_input_no_store_accepts_is_refused() {
        let mut deep = serde_json::json!(1);
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        let err = Schedule::every("s", Duration::from_secs(1), "p")
            .input(deep)
            .validate()
            .unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn keys_name_the_schedule_and_the_tick() {
        let s = Schedule::every("s", Duration::from_secs(60), "p");
        assert_eq!(
            s.key_of(datetime!(2026-01-01 10:05 UTC)),
            "schedule:s:2026-01-01T10:05:00Z"
        );
    }
}
