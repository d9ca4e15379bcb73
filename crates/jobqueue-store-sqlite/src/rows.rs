//! Rows of the tables and their mapping to core types.
//!
//! Core types have no persistence derives (and the orphan rule forbids diesel
//! impls for them here), so each table has a row struct and a conversion each
//! way. Times are unix microseconds, ids hyphenated UUID text, enums their
//! string names, JSON values text.

use std::str::FromStr;

use diesel::prelude::*;
use diesel::sqlite::Sqlite;
use jobqueue_core::{
    Delivery, DeliveryId, DeliveryStatus, DeliveryTarget, Event, EventData, EventType, Interrupted,
    Job, JobError, JobId, JobStatus, LeaseToken, Phase, PhaseStatus, Progress, StoreError,
};
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::corrupt;
use crate::schema::{events, jobs, phases, webhook_deliveries};

/// `t` as unix microseconds (sub-microsecond digits dropped, like
/// [`jobqueue_core::clock::truncate_to_micros`]).
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    let m = t.unix_timestamp_nanos().div_euclid(1000);
    i64::try_from(m).unwrap_or(if m < 0 { i64::MIN } else { i64::MAX })
}

/// Unix microseconds back to a time.
pub(crate) fn from_micros(us: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| corrupt(format!("time {us}: {e}")))
}

fn opt_time(us: Option<i64>) -> Result<Option<OffsetDateTime>, StoreError> {
    us.map(from_micros).transpose()
}

fn parse<T: FromStr>(what: &str, s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| corrupt(format!("{what} {s:?}: {e}")))
}

/// The job id of an event or delivery row; NULL for a pipeline event.
fn opt_job_id(s: Option<&str>) -> Result<Option<JobId>, StoreError> {
    s.map(|s| parse("job id", s)).transpose()
}

fn json(what: &str, s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("{what}: {e}")))
}

fn u32_of(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v}")))
}

/// A `usize` count for SQL (`LIMIT`, indexes), saturating.
pub(crate) fn sql_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One row of `jobs`.
///
/// Inserted through [`crate::query::insert_rows`], updated through
/// [`JobState`]; diesel only reads it.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = jobs, check_for_backend(Sqlite))]
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) pipeline: String,
    pub(crate) status: String,
    pub(crate) input: String,
    pub(crate) priority: i64,
    pub(crate) unique_key: Option<String>,
    pub(crate) attempt: i64,
    pub(crate) max_attempts: i64,
    pub(crate) created_at: i64,
    pub(crate) run_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) stale_at: Option<i64>,
    pub(crate) error_phase: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) error_attempt: Option<i64>,
    pub(crate) interrupted_phase: Option<String>,
    pub(crate) interrupted_at: Option<i64>,
    pub(crate) interrupted_percent: Option<i64>,
    pub(crate) interrupted_message: Option<String>,
    pub(crate) webhook_url: Option<String>,
    pub(crate) cancel_requested: bool,
    pub(crate) lease: Option<String>,
    pub(crate) lease_expires_at: Option<i64>,
    pub(crate) period_key: Option<String>,
}

crate::query::row_insert!(JobRow, jobs;
    id, pipeline, status, input, priority, unique_key, attempt, max_attempts, created_at,
    run_at, started_at, finished_at, stale_at, error_phase, error_message, error_attempt,
    interrupted_phase, interrupted_at, interrupted_percent, interrupted_message, webhook_url,
    cancel_requested, lease, lease_expires_at, period_key);

/// One row of `phases`.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = phases, check_for_backend(Sqlite))]
pub(crate) struct PhaseRow {
    pub(crate) job_id: String,
    pub(crate) idx: i64,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) progress_percent: Option<i64>,
    pub(crate) progress_message: Option<String>,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) checkpoint: Option<String>,
}

crate::query::row_insert!(PhaseRow, phases;
    job_id, idx, name, status, attempts, progress_percent, progress_message, result, error,
    started_at, finished_at, checkpoint);

impl PhaseRow {
    /// `UPDATE phases` of every column but the key, bound by
    /// [`PhaseRow::bind_update`].
    pub(crate) fn update_sql() -> String {
        "UPDATE OR FAIL `phases` SET `name` = ?, `status` = ?, `attempts` = ?, \
         `progress_percent` = ?, `progress_message` = ?, `result` = ?, `error` = ?, \
         `started_at` = ?, `finished_at` = ?, `checkpoint` = ? \
         WHERE `job_id` = ? AND `idx` = ?"
            .to_owned()
    }

    /// Binds the row for [`PhaseRow::update_sql`]: every column but the key,
    /// then the key. Destructured, so a column added to the row and not
    /// here does not compile.
    pub(crate) fn bind_update<'a>(
        &'a self,
        q: &mut crate::raw::Query<'_, 'a>,
    ) -> Result<(), StoreError> {
        use crate::raw::Bind;
        let Self {
            job_id,
            idx,
            name,
            status,
            attempts,
            progress_percent,
            progress_message,
            result,
            error,
            started_at,
            finished_at,
            checkpoint,
        } = self;
        name.bind(q)?;
        status.bind(q)?;
        attempts.bind(q)?;
        progress_percent.bind(q)?;
        progress_message.bind(q)?;
        result.bind(q)?;
        error.bind(q)?;
        started_at.bind(q)?;
        finished_at.bind(q)?;
        checkpoint.bind(q)?;
        job_id.bind(q)?;
        idx.bind(q)
    }
}

/// One row of `events`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(Sqlite))]
pub(crate) struct EventRow {
    pub(crate) seq: i64,
    pub(crate) job_id: Option<String>,
    pub(crate) pipeline: String,
    pub(crate) event_type: String,
    pub(crate) at: i64,
    pub(crate) data: String,
    /// The type and data of the row's second event (number `seq + 1`, the
    /// same job, pipeline and time), for a pair stored as one row.
    pub(crate) event_type2: Option<String>,
    pub(crate) data2: Option<String>,
}

crate::query::row_insert!(EventRow, events;
    seq, job_id, pipeline, event_type, at, data, event_type2, data2);

/// One row of `webhook_deliveries`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, AsChangeset)]
#[diesel(
    table_name = webhook_deliveries,
    check_for_backend(Sqlite),
    treat_none_as_null = true
)]
pub(crate) struct DeliveryRow {
    pub(crate) id: String,
    pub(crate) event_seq: i64,
    pub(crate) job_id: Option<String>,
    pub(crate) target: String,
    pub(crate) url: String,
    pub(crate) event_pipeline: String,
    pub(crate) event_type: String,
    pub(crate) event_at: i64,
    pub(crate) event_data: String,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) last_status: Option<i64>,
    pub(crate) last_error: Option<String>,
    pub(crate) next_attempt_at: Option<i64>,
    pub(crate) created_at: i64,
}

crate::query::row_insert!(DeliveryRow, webhook_deliveries;
    id, event_seq, job_id, target, url, event_pipeline, event_type, event_at, event_data,
    status, attempts, last_status, last_error, next_attempt_at, created_at);

impl JobRow {
    /// The row of `job` (its phases go to [`PhaseRow`]s): the columns a
    /// write may change as [`JobState`] maps them, so an insert and an
    /// update write a job alike.
    pub(crate) fn of(job: &Job) -> Self {
        let s = JobState::of(job);
        let owned = |v: Option<&str>| v.map(str::to_owned);
        Self {
            id: job.id.to_string(),
            pipeline: job.pipeline.clone(),
            status: s.status.to_owned(),
            input: job.input.to_string(),
            priority: s.priority,
            unique_key: owned(s.unique_key),
            attempt: s.attempt,
            max_attempts: s.max_attempts,
            created_at: micros(job.created_at),
            run_at: s.run_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
            stale_at: s.stale_at,
            error_phase: owned(s.error_phase),
            error_message: owned(s.error_message),
            error_attempt: s.error_attempt,
            interrupted_phase: owned(s.interrupted_phase),
            interrupted_at: s.interrupted_at,
            interrupted_percent: s.interrupted_percent,
            interrupted_message: owned(s.interrupted_message),
            webhook_url: owned(s.webhook_url),
            cancel_requested: s.cancel_requested,
            lease: s.lease.as_ref().map(|l| l.as_str().to_owned()),
            lease_expires_at: s.lease_expires_at,
            period_key: job.period_key.clone(),
        }
    }

    /// The job id of the row.
    pub(crate) fn job_id(&self) -> Result<JobId, StoreError> {
        parse("job id", &self.id)
    }

    /// The job of this row with `phases` (in pipeline order).
    pub(crate) fn into_job(self, phases: Vec<PhaseRow>) -> Result<Job, StoreError> {
        let phases = phases
            .into_iter()
            .map(PhaseRow::into_phase)
            .collect::<Result<_, _>>()?;
        self.into_job_with(phases)
    }

    /// The job of this row with `phases`, already read.
    pub(crate) fn into_job_with(self, phases: Vec<Phase>) -> Result<Job, StoreError> {
        let error = match self.error_message {
            Some(message) => Some(JobError {
                phase: self.error_phase,
                message,
                attempt: u32_of("error attempt", self.error_attempt.unwrap_or(0))?,
            }),
            None => None,
        };
        let interrupted = match (self.interrupted_phase, self.interrupted_at) {
            (Some(phase), Some(at)) => Some(Interrupted {
                phase,
                at: from_micros(at)?,
                progress: progress(self.interrupted_percent, self.interrupted_message)?,
            }),
            _ => None,
        };
        Ok(Job {
            id: parse("job id", &self.id)?,
            pipeline: self.pipeline,
            status: parse("job status", &self.status)?,
            input: json("job input", &self.input)?,
            priority: i32::try_from(self.priority)
                .map_err(|_| corrupt(format!("priority {}", self.priority)))?,
            unique_key: self.unique_key,
            period_key: self.period_key,
            attempt: u32_of("attempt", self.attempt)?,
            max_attempts: u32_of("max_attempts", self.max_attempts)?,
            created_at: from_micros(self.created_at)?,
            run_at: from_micros(self.run_at)?,
            started_at: opt_time(self.started_at)?,
            finished_at: opt_time(self.finished_at)?,
            stale_at: opt_time(self.stale_at)?,
            error,
            interrupted,
            webhook_url: self.webhook_url,
            cancel_requested: self.cancel_requested,
            lease: self
                .lease
                .as_deref()
                .map(|l| parse::<LeaseToken>("lease", l))
                .transpose()?,
            lease_expires_at: opt_time(self.lease_expires_at)?,
            phases,
        })
    }
}

fn progress(percent: Option<i64>, message: Option<String>) -> Result<Option<Progress>, StoreError> {
    percent
        .map(|p| {
            let percent = u8::try_from(p).map_err(|_| corrupt(format!("percent {p}")))?;
            Ok(Progress { percent, message })
        })
        .transpose()
}

impl PhaseRow {
    /// The row of phase `index` of `job`.
    pub(crate) fn of(job_id: &str, index: usize, p: &Phase) -> Self {
        Self {
            job_id: job_id.to_owned(),
            idx: sql_count(index),
            name: p.name.clone(),
            status: p.status.as_str().to_owned(),
            attempts: i64::from(p.attempts),
            progress_percent: p.progress.as_ref().map(|p| i64::from(p.percent)),
            progress_message: p.progress.as_ref().and_then(|p| p.message.clone()),
            result: p.result.as_ref().map(Value::to_string),
            error: p.error.clone(),
            started_at: p.started_at.map(micros),
            finished_at: p.finished_at.map(micros),
            checkpoint: p.checkpoint.as_ref().map(Value::to_string),
        }
    }

    fn into_phase(self) -> Result<Phase, StoreError> {
        Ok(Phase {
            name: self.name,
            status: parse::<PhaseStatus>("phase status", &self.status)?,
            attempts: u32_of("phase attempts", self.attempts)?,
            progress: progress(self.progress_percent, self.progress_message)?,
            result: self
                .result
                .as_deref()
                .map(|r| json("phase result", r))
                .transpose()?,
            error: self.error,
            started_at: opt_time(self.started_at)?,
            finished_at: opt_time(self.finished_at)?,
            checkpoint: self
                .checkpoint
                .as_deref()
                .map(|c| json("phase checkpoint", c))
                .transpose()?,
        })
    }
}

impl EventRow {
    /// The row of `event`.
    pub(crate) fn of(event: &Event) -> Self {
        Self {
            seq: i64::try_from(event.seq).unwrap_or(i64::MAX),
            job_id: event.job_id.map(|id| id.to_string()),
            pipeline: event.pipeline.clone(),
            event_type: event.event_type().as_str().to_owned(),
            at: micros(event.at),
            data: event.data.to_json_string(),
            event_type2: None,
            data2: None,
        }
    }

    /// Stores `second` in this row, which holds `first`, as its second
    /// event, if it may be: the row holds one event, `second` comes right
    /// after it, about the same job (not a pipeline) at the same time. A
    /// `job.deleted` event keeps a row of its own (its tombstone names the
    /// row). Says whether it did.
    pub(crate) fn pair(&mut self, first: &Event, second: &Event) -> bool {
        let pairs = self.event_type2.is_none()
            && i64::try_from(first.seq).ok() == Some(self.seq)
            && first.seq.checked_add(1) == Some(second.seq)
            && first.job_id.is_some()
            && first.job_id == second.job_id
            && first.at == second.at
            && first.event_type() != EventType::JobDeleted
            && second.event_type() != EventType::JobDeleted;
        if pairs {
            self.event_type2 = Some(second.event_type().as_str().to_owned());
            self.data2 = Some(second.data.to_json_string());
        }
        pairs
    }

    /// The events of this row, in order: one, or two for a pair. A second
    /// event that does not read back is an error of its own, so the first
    /// still reads.
    pub(crate) fn into_events(self) -> [Option<Result<Event, StoreError>>; 2] {
        let second = match (&self.event_type2, &self.data2) {
            (Some(ty), Some(data)) => Some(event_of(
                self.seq.saturating_add(1),
                self.job_id.as_deref(),
                self.pipeline.clone(),
                ty,
                self.at,
                data,
            )),
            (None, None) => None,
            _ => Some(Err(corrupt(format!(
                "event {}: a second event's type without its data, or the reverse",
                self.seq.saturating_add(1)
            )))),
        };
        let first = event_of(
            self.seq,
            self.job_id.as_deref(),
            self.pipeline,
            &self.event_type,
            self.at,
            &self.data,
        );
        [Some(first), second]
    }
}

fn event_of(
    seq: i64,
    job_id: Option<&str>,
    pipeline: String,
    ty: &str,
    at: i64,
    data: &str,
) -> Result<Event, StoreError> {
    let ty: EventType = parse("event type", ty)?;
    Ok(Event {
        seq: u64::try_from(seq).map_err(|_| corrupt(format!("event seq {seq}")))?,
        job_id: opt_job_id(job_id)?,
        pipeline,
        at: from_micros(at)?,
        data: EventData::from_json(ty, json("event data", data)?).map_err(corrupt)?,
    })
}

impl DeliveryRow {
    /// The row of `d`.
    pub(crate) fn of(d: &Delivery) -> Self {
        Self {
            id: d.id.to_string(),
            event_seq: i64::try_from(d.event_seq).unwrap_or(i64::MAX),
            job_id: d.job_id.map(|id| id.to_string()),
            target: d.target.as_str().to_owned(),
            url: d.url.clone(),
            event_pipeline: d.event.pipeline.clone(),
            event_type: d.event.event_type().as_str().to_owned(),
            event_at: micros(d.event.at),
            event_data: d.event.data.to_json_string(),
            status: d.status.as_str().to_owned(),
            attempts: i64::from(d.attempts),
            last_status: d.last_status.map(i64::from),
            last_error: d.last_error.clone(),
            next_attempt_at: d.next_attempt_at.map(micros),
            created_at: micros(d.created_at),
        }
    }

    /// The delivery of this row.
    pub(crate) fn into_delivery(self) -> Result<Delivery, StoreError> {
        Ok(Delivery {
            id: parse::<DeliveryId>("delivery id", &self.id)?,
            event_seq: u64::try_from(self.event_seq)
                .map_err(|_| corrupt(format!("event seq {}", self.event_seq)))?,
            job_id: opt_job_id(self.job_id.as_deref())?,
            target: parse::<DeliveryTarget>("delivery target", &self.target)?,
            url: self.url,
            event: event_of(
                self.event_seq,
                self.job_id.as_deref(),
                self.event_pipeline,
                &self.event_type,
                self.event_at,
                &self.event_data,
            )?,
            status: parse::<DeliveryStatus>("delivery status", &self.status)?,
            attempts: u32_of("delivery attempts", self.attempts)?,
            last_status: self
                .last_status
                .map(|s| u16::try_from(s).map_err(|_| corrupt(format!("http status {s}"))))
                .transpose()?,
            last_error: self.last_error,
            next_attempt_at: opt_time(self.next_attempt_at)?,
            created_at: from_micros(self.created_at)?,
        })
    }
}

/// Checks a stored status string names a job status.
pub(crate) fn job_status(s: &str) -> Result<JobStatus, StoreError> {
    parse("job status", s)
}

/// Defines [`JobState`] from the columns of `jobs` that a write may change,
/// in one order: the fields, their bits (the first column is bit 0), the
/// SQL and the binding all follow it.
macro_rules! job_state {
    ($($f:ident: $t:ty),+ $(,)?) => {
        /// The columns of a job's row that a write may change, as borrowed
        /// views of the job (nothing is copied to compare two states).
        /// [`JobState::changed_from`] says which columns differ; updating
        /// only those keeps each `UPDATE` small: SQLite touches only the
        /// indexes on the columns it sets.
        #[derive(Debug, PartialEq)]
        pub(crate) struct JobState<'j> {
            $($f: $t,)+
        }

        impl JobState<'_> {
            /// The columns, bit `i` naming `COLUMNS[i]`.
            const COLUMNS: &'static [&'static str] = &[$(stringify!($f)),+];

            /// The set of columns whose values differ from `before`, as
            /// bits (see [`JobState::sql`]); 0 if none.
            pub(crate) fn changed_from(&self, before: &Self) -> u32 {
                let mut changed = 0u32;
                let mut bit = 1u32;
                $(
                    if before.$f != self.$f {
                        changed |= bit;
                    }
                    bit <<= 1;
                )+
                let _ = bit;
                changed
            }

            /// Binds the values of the columns in `shape`, in column order.
            pub(crate) fn bind_changed<'a>(
                &'a self,
                shape: u32,
                q: &mut crate::raw::Query<'_, 'a>,
            ) -> Result<(), StoreError> {
                let mut bit = 1u32;
                $(
                    if shape & bit != 0 {
                        crate::raw::Bind::bind(&self.$f, q)?;
                    }
                    bit <<= 1;
                )+
                let _ = bit;
                Ok(())
            }
        }
    };
}

job_state!(
    status: &'static str,
    input: Input<'j>,
    priority: i64,
    unique_key: Option<&'j str>,
    attempt: i64,
    max_attempts: i64,
    run_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    stale_at: Option<i64>,
    error_phase: Option<&'j str>,
    error_message: Option<&'j str>,
    error_attempt: Option<i64>,
    interrupted_phase: Option<&'j str>,
    interrupted_at: Option<i64>,
    interrupted_percent: Option<i64>,
    interrupted_message: Option<&'j str>,
    webhook_url: Option<&'j str>,
    cancel_requested: bool,
    lease: Option<LeaseText>,
    lease_expires_at: Option<i64>,
);

impl<'j> JobState<'j> {
    /// The state of `job`, as its row holds it.
    pub(crate) fn of(job: &'j Job) -> Self {
        let error = job.error.as_ref();
        let interrupted = job.interrupted.as_ref();
        let progress = interrupted.and_then(|i| i.progress.as_ref());
        Self {
            status: job.status.as_str(),
            input: Input {
                value: &job.input,
                text: std::cell::OnceCell::new(),
            },
            priority: i64::from(job.priority),
            unique_key: job.unique_key.as_deref(),
            attempt: i64::from(job.attempt),
            max_attempts: i64::from(job.max_attempts),
            run_at: micros(job.run_at),
            started_at: job.started_at.map(micros),
            finished_at: job.finished_at.map(micros),
            stale_at: job.stale_at.map(micros),
            error_phase: error.and_then(|e| e.phase.as_deref()),
            error_message: error.map(|e| e.message.as_str()),
            error_attempt: error.map(|e| i64::from(e.attempt)),
            interrupted_phase: interrupted.map(|i| i.phase.as_str()),
            interrupted_at: interrupted.map(|i| micros(i.at)),
            interrupted_percent: progress.map(|p| i64::from(p.percent)),
            interrupted_message: progress.and_then(|p| p.message.as_deref()),
            webhook_url: job.webhook_url.as_deref(),
            cancel_requested: job.cancel_requested,
            lease: job.lease.map(LeaseText::of),
            lease_expires_at: job.lease_expires_at.map(micros),
        }
    }

    /// `UPDATE OR FAIL jobs SET <the columns of shape> WHERE id = ?` (on
    /// `OR FAIL`, see [`crate::raw`]), the changed
    /// columns bound first (see [`JobState::bind_changed`]), then the id.
    pub(crate) fn sql(shape: u32) -> String {
        let set: Vec<String> = Self::COLUMNS
            .iter()
            .enumerate()
            .filter(|(i, _)| shape & (1 << i) != 0)
            .map(|(_, c)| format!("`{c}` = ?"))
            .collect();
        format!(
            "UPDATE OR FAIL `jobs` SET {} WHERE `id` = ?",
            set.join(", ")
        )
    }
}

/// A job's input, compared as a value and written as JSON text only when
/// it changed (it never does after the enqueue; the text is the dearest
/// part of the row).
#[derive(Debug)]
pub(crate) struct Input<'j> {
    value: &'j Value,
    text: std::cell::OnceCell<String>,
}

impl PartialEq for Input<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl crate::raw::Bind for Input<'_> {
    fn bind<'a>(&'a self, q: &mut crate::raw::Query<'_, 'a>) -> Result<(), StoreError> {
        q.text(self.text.get_or_init(|| self.value.to_string()))
    }
}

/// A lease token as the store writes it: the UUID's 32 hex digits, like
/// the tokens the claim makes, formatted without an allocation.
#[derive(Debug, PartialEq)]
pub(crate) struct LeaseText([u8; 32]);

impl LeaseText {
    fn of(token: LeaseToken) -> Self {
        let mut hex = [0u8; 32];
        token.as_uuid().simple().encode_lower(&mut hex);
        Self(hex)
    }

    fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl crate::raw::Bind for LeaseText {
    fn bind<'a>(&'a self, q: &mut crate::raw::Query<'_, 'a>) -> Result<(), StoreError> {
        q.text(self.as_str())
    }
}
