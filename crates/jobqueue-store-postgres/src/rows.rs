//! Rows of the tables and their mapping to core types.
//!
//! Core types have no persistence derives (and the orphan rule forbids diesel
//! impls for them here), so each table has a row struct and a conversion each
//! way. Columns are typed (UUID, TIMESTAMPTZ, JSON), so the mapping only
//! narrows integers and reads enum names back.

use std::str::FromStr;

use diesel::pg::Pg;
use diesel::prelude::*;
use jobqueue_core::{
    Delivery, DeliveryId, DeliveryStatus, DeliveryTarget, Event, EventData, EventType, Interrupted,
    Job, JobError, JobId, LeaseToken, Phase, PhaseStatus, Progress, StoreError,
};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::corrupt;
use crate::schema::{events, jobs, phases, webhook_deliveries};

fn parse<T: FromStr>(what: &str, s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| corrupt(format!("{what} {s:?}: {e}")))
}

fn u32_of(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v}")))
}

/// A `usize` count for SQL (`LIMIT`), saturating.
pub(crate) fn sql_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A sequence number for SQL, saturating (numbers never get near it).
pub(crate) fn sql_seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A phase index for SQL.
pub(crate) fn sql_index(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// Declares one `Vec` per named field of `rows` (`n` of them), named like
/// the field: `unnest($1::t[], $2::u[], ...)` takes a table column by
/// column.
macro_rules! columns {
    ($rows:expr, $n:expr => $($field:ident),+ $(,)?) => {
        $( let mut $field = Vec::with_capacity($n); )+
        for row in $rows {
            $( $field.push(row.$field); )+
        }
    };
}
pub(crate) use columns;

/// One row of `jobs`.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = jobs, check_for_backend(Pg), treat_none_as_null = true)]
pub(crate) struct JobRow {
    pub(crate) id: Uuid,
    pub(crate) pipeline: String,
    pub(crate) status: String,
    pub(crate) input: Value,
    pub(crate) priority: i32,
    pub(crate) unique_key: Option<String>,
    pub(crate) attempt: i64,
    pub(crate) max_attempts: i64,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) run_at: OffsetDateTime,
    pub(crate) started_at: Option<OffsetDateTime>,
    pub(crate) finished_at: Option<OffsetDateTime>,
    pub(crate) stale_at: Option<OffsetDateTime>,
    pub(crate) error_phase: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) error_attempt: Option<i64>,
    pub(crate) interrupted_phase: Option<String>,
    pub(crate) interrupted_at: Option<OffsetDateTime>,
    pub(crate) interrupted_percent: Option<i16>,
    pub(crate) interrupted_message: Option<String>,
    pub(crate) webhook_url: Option<String>,
    pub(crate) cancel_requested: bool,
    pub(crate) lease: Option<Uuid>,
    pub(crate) lease_expires_at: Option<OffsetDateTime>,
    pub(crate) period_key: Option<String>,
}

/// One row of `phases`.
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(
    table_name = phases,
    primary_key(job_id, idx),
    check_for_backend(Pg),
    treat_none_as_null = true
)]
pub(crate) struct PhaseRow {
    pub(crate) job_id: Uuid,
    pub(crate) idx: i32,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) progress_percent: Option<i16>,
    pub(crate) progress_message: Option<String>,
    pub(crate) result: Option<Value>,
    pub(crate) error: Option<String>,
    pub(crate) started_at: Option<OffsetDateTime>,
    pub(crate) finished_at: Option<OffsetDateTime>,
    pub(crate) checkpoint: Option<Value>,
}

/// One row of `events`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(Pg))]
pub(crate) struct EventRow {
    pub(crate) seq: i64,
    pub(crate) job_id: Option<Uuid>,
    pub(crate) pipeline: String,
    pub(crate) event_type: String,
    pub(crate) at: OffsetDateTime,
    pub(crate) data: Value,
}

/// One row of `webhook_deliveries`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, AsChangeset)]
#[diesel(
    table_name = webhook_deliveries,
    check_for_backend(Pg),
    treat_none_as_null = true
)]
pub(crate) struct DeliveryRow {
    pub(crate) id: Uuid,
    pub(crate) event_seq: i64,
    pub(crate) job_id: Option<Uuid>,
    pub(crate) target: String,
    pub(crate) url: String,
    pub(crate) event_pipeline: String,
    pub(crate) event_type: String,
    pub(crate) event_at: OffsetDateTime,
    pub(crate) event_data: Value,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) last_status: Option<i32>,
    pub(crate) last_error: Option<String>,
    pub(crate) next_attempt_at: Option<OffsetDateTime>,
    pub(crate) created_at: OffsetDateTime,
}

impl JobRow {
    /// The row of `job` (its phases go to [`PhaseRow`]s).
    pub(crate) fn of(job: &Job) -> Self {
        let (error_phase, error_message, error_attempt) = match &job.error {
            Some(e) => (
                e.phase.clone(),
                Some(e.message.clone()),
                Some(i64::from(e.attempt)),
            ),
            None => (None, None, None),
        };
        let (interrupted_phase, interrupted_at, interrupted_percent, interrupted_message) =
            match &job.interrupted {
                Some(i) => (
                    Some(i.phase.clone()),
                    Some(i.at),
                    i.progress.as_ref().map(|p| i16::from(p.percent)),
                    i.progress.as_ref().and_then(|p| p.message.clone()),
                ),
                None => (None, None, None, None),
            };
        Self {
            id: *job.id.as_uuid(),
            pipeline: job.pipeline.clone(),
            status: job.status.as_str().to_owned(),
            input: job.input.clone(),
            priority: job.priority,
            unique_key: job.unique_key.clone(),
            attempt: i64::from(job.attempt),
            max_attempts: i64::from(job.max_attempts),
            created_at: job.created_at,
            run_at: job.run_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            stale_at: job.stale_at,
            error_phase,
            error_message,
            error_attempt,
            interrupted_phase,
            interrupted_at,
            interrupted_percent,
            interrupted_message,
            webhook_url: job.webhook_url.clone(),
            cancel_requested: job.cancel_requested,
            lease: job.lease.map(|l| *l.as_uuid()),
            lease_expires_at: job.lease_expires_at,
            period_key: job.period_key.clone(),
        }
    }

    /// The job of this row with `phases` (in pipeline order).
    pub(crate) fn into_job(self, phases: Vec<PhaseRow>) -> Result<Job, StoreError> {
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
                at,
                progress: progress(self.interrupted_percent, self.interrupted_message)?,
            }),
            _ => None,
        };
        Ok(Job {
            id: JobId::from_uuid(self.id),
            pipeline: self.pipeline,
            status: parse("job status", &self.status)?,
            input: self.input,
            priority: self.priority,
            unique_key: self.unique_key,
            period_key: self.period_key,
            attempt: u32_of("attempt", self.attempt)?,
            max_attempts: u32_of("max_attempts", self.max_attempts)?,
            created_at: self.created_at,
            run_at: self.run_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            stale_at: self.stale_at,
            error,
            interrupted,
            webhook_url: self.webhook_url,
            cancel_requested: self.cancel_requested,
            lease: self.lease.map(LeaseToken::from_uuid),
            lease_expires_at: self.lease_expires_at,
            phases: phases
                .into_iter()
                .map(PhaseRow::into_phase)
                .collect::<Result<_, _>>()?,
        })
    }
}

fn progress(percent: Option<i16>, message: Option<String>) -> Result<Option<Progress>, StoreError> {
    percent
        .map(|p| {
            let percent = u8::try_from(p).map_err(|_| corrupt(format!("percent {p}")))?;
            Ok(Progress { percent, message })
        })
        .transpose()
}

impl PhaseRow {
    /// The row of phase `index` of job `job_id`.
    pub(crate) fn of(job_id: Uuid, index: usize, p: &Phase) -> Self {
        Self {
            job_id,
            idx: sql_index(index),
            name: p.name.clone(),
            status: p.status.as_str().to_owned(),
            attempts: i64::from(p.attempts),
            progress_percent: p.progress.as_ref().map(|p| i16::from(p.percent)),
            progress_message: p.progress.as_ref().and_then(|p| p.message.clone()),
            result: p.result.clone(),
            error: p.error.clone(),
            started_at: p.started_at,
            finished_at: p.finished_at,
            checkpoint: p.checkpoint.clone(),
        }
    }

    fn into_phase(self) -> Result<Phase, StoreError> {
        Ok(Phase {
            name: self.name,
            status: parse::<PhaseStatus>("phase status", &self.status)?,
            attempts: u32_of("phase attempts", self.attempts)?,
            progress: progress(self.progress_percent, self.progress_message)?,
            result: self.result,
            error: self.error,
            started_at: self.started_at,
            finished_at: self.finished_at,
            checkpoint: self.checkpoint,
        })
    }
}

/// The event read from its stored columns.
fn event_of(
    seq: i64,
    job_id: Option<Uuid>,
    pipeline: String,
    ty: &str,
    at: OffsetDateTime,
    data: Value,
) -> Result<Event, StoreError> {
    let ty: EventType = parse("event type", ty)?;
    Ok(Event {
        seq: u64::try_from(seq).map_err(|_| corrupt(format!("event seq {seq}")))?,
        job_id: job_id.map(JobId::from_uuid),
        pipeline,
        at,
        data: EventData::from_json(ty, data).map_err(corrupt)?,
    })
}

impl EventRow {
    /// The event of this row.
    pub(crate) fn into_event(self) -> Result<Event, StoreError> {
        event_of(
            self.seq,
            self.job_id,
            self.pipeline,
            &self.event_type,
            self.at,
            self.data,
        )
    }
}

impl DeliveryRow {
    /// The row of `d`.
    pub(crate) fn of(d: &Delivery) -> Self {
        Self {
            id: *d.id.as_uuid(),
            event_seq: sql_seq(d.event_seq),
            job_id: d.job_id.map(|id| *id.as_uuid()),
            target: d.target.as_str().to_owned(),
            url: d.url.clone(),
            event_pipeline: d.event.pipeline.clone(),
            event_type: d.event.event_type().as_str().to_owned(),
            event_at: d.event.at,
            event_data: d.event.data.to_json(),
            status: d.status.as_str().to_owned(),
            attempts: i64::from(d.attempts),
            last_status: d.last_status.map(i32::from),
            last_error: d.last_error.clone(),
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
        }
    }

    /// The delivery of this row.
    pub(crate) fn into_delivery(self) -> Result<Delivery, StoreError> {
        Ok(Delivery {
            id: DeliveryId::from_uuid(self.id),
            event_seq: u64::try_from(self.event_seq)
                .map_err(|_| corrupt(format!("event seq {}", self.event_seq)))?,
            job_id: self.job_id.map(JobId::from_uuid),
            target: parse::<DeliveryTarget>("delivery target", &self.target)?,
            url: self.url,
            event: event_of(
                self.event_seq,
                self.job_id,
                self.event_pipeline,
                &self.event_type,
                self.event_at,
                self.event_data,
            )?,
            status: parse::<DeliveryStatus>("delivery status", &self.status)?,
            attempts: u32_of("delivery attempts", self.attempts)?,
            last_status: self
                .last_status
                .map(|s| u16::try_from(s).map_err(|_| corrupt(format!("http status {s}"))))
                .transpose()?,
            last_error: self.last_error,
            next_attempt_at: self.next_attempt_at,
            created_at: self.created_at,
        })
    }
}

/// Groups phase rows (ordered by job, then index) under their jobs' rows,
/// and reads the jobs back, in the order of `rows`.
pub(crate) fn jobs_of(rows: Vec<JobRow>, phases: Vec<PhaseRow>) -> Result<Vec<Job>, StoreError> {
    let mut by_job: std::collections::HashMap<Uuid, Vec<PhaseRow>> =
        std::collections::HashMap::with_capacity(rows.len());
    for p in phases {
        by_job.entry(p.job_id).or_default().push(p);
    }
    rows.into_iter()
        .map(|r| {
            let phases = by_job.remove(&r.id).unwrap_or_default();
            r.into_job(phases)
        })
        .collect()
}
