//! The write operations, run by the writer inside a group transaction.
//!
//! Each mirrors [`jobqueue_core::MemoryStore`] step by step: the same checks
//! in the same order, the transition table consulted before every change,
//! the same events. A failing check returns before anything is written, so a
//! refused operation leaves nothing to undo; an operation that fails after it
//! wrote is rolled back alone by the writer (see [`crate::writer`]). Writes
//! go through [`Tx::write_conn`], reads through [`Tx::conn`].

use std::time::Duration;

use diesel::prelude::*;
use jobqueue_core::apply::lease_until;
use jobqueue_core::machine::job_transition;
use jobqueue_core::unique::Held;
use jobqueue_core::{
    AttemptOutcome, CancelOutcome, ClaimRequest, Claimed, Delivery, DeliveryId, DeliveryStatus,
    ErrorKind, EventData, FailureOutcome, Job, JobAction, JobError, JobId, JobStatus, Lease,
    NewJob, Next, Progress, Pruned, RecoverScope, Renewal, StoreError,
};
use serde_json::Value;
use time::OffsetDateTime;

use crate::deps;
use crate::error::db_err;
use crate::query::{
    RowInsert, Unreadable, insert_jobs, insert_rows, job_row, load_job, save_job,
    with_known_phases, with_phases, with_phases_raw,
};
use crate::raw::{Bind, Key};
use crate::rows::{DeliveryRow, JobRow, PhaseRow, job_status, micros, sql_count};
use crate::schema::{events, jobs, paused_pipelines, phases, tombstones, webhook_deliveries};
use crate::writer::Tx;

/// A fencing token made by SQLite, so one `UPDATE` gives every claimed
/// job its own: 128 random bits as 32 hex digits, the UUID's "simple" text
/// (which the store writes for every lease; see `rows::JobRow`). Formatting
/// a hyphenated version-4 UUID in SQL cost about four times as much, per
/// claimed job.
const NEW_TOKEN_SQL: &str = "lower(hex(randomblob(16)))";

/// The claim: `UPDATE jobs ... WHERE rowid IN (SELECT rowid ... ORDER BY
/// ... LIMIT ?) RETURNING <the columns of a JobRow>`, with `excluded`
/// pipelines left out and, with `only`, that many pipelines to claim from.
/// Run through SQLite's own API (see [`crate::raw`]), kept prepared under
/// its shape. The statuses are constants of the store, written as
/// literals. By rowid, which every index entry carries, not by `id`: each
/// claimed row is then found in the table directly instead of through the
/// index of ids and its text comparisons (1% of the writer's work).
/// Nothing else depends on a job's rowid.
fn claim_sql(to: &str, from: &str, excluded: usize, only: Option<usize>) -> String {
    debug_assert!(!to.contains('\'') && !from.contains('\''));
    let list = |n: usize| vec!["?"; n].join(", ");
    let only = only.map_or(String::new(), |n| format!(" AND pipeline IN ({})", list(n)));
    format!(
        "UPDATE OR FAIL jobs SET status = '{to}', attempt = attempt + 1, started_at = ?, \
         lease_expires_at = ?, cancel_requested = 0, worker = ?, lease = {NEW_TOKEN_SQL} \
         WHERE rowid IN (SELECT rowid FROM jobs WHERE status = '{from}' AND run_at <= ?\
         {not_waiting} AND pipeline NOT IN ({excluded}){not_paused}{only} \
         ORDER BY priority DESC, run_at, created_at, id LIMIT CAST(? AS INTEGER)) \
         RETURNING {columns}",
        // Not while it waits for a dependency (see `crate::deps`).
        not_waiting = " AND NOT EXISTS (SELECT 1 FROM job_dependencies \
             WHERE job_dependencies.job_id = jobs.id)",
        excluded = list(excluded),
        // Paused pipelines wait (see `pause_pipeline`).
        not_paused = " AND pipeline NOT IN (SELECT pipeline FROM paused_pipelines)",
        // `LIMIT ?` alone would make SQLite re-prepare the statement every
        // time the limit changes (it looks at a bound LIMIT to plan); the
        // CAST hides the parameter from that, so one plan serves every size.
        // The columns by position, in the row's order.
        columns = JobRow::COLUMNS.join(", "),
    )
}

fn emit(tx: &mut Tx<'_>, job: &Job, data: EventData) -> Result<(), StoreError> {
    tx.emit(
        Some(job.id),
        &job.pipeline,
        job.webhook_url.as_deref(),
        data,
    )
}

fn active_statuses() -> Vec<&'static str> {
    JobStatus::ALL
        .iter()
        .filter(|s| s.is_active())
        .map(|s| s.as_str())
        .collect()
}

fn finished_statuses() -> Vec<&'static str> {
    JobStatus::ALL
        .iter()
        .filter(|s| s.is_finished())
        .map(|s| s.as_str())
        .collect()
}

/// `+status IN ('a', …)`: a filter on the status that the planner does not
/// serve from an index (the unary `+`), for queries that have a better index
/// on another column (retention by `finished_at`/`stale_at`, whose partial
/// indexes give the order and the range). Without it SQLite prefers
/// `jobs_status_id` and sorts every finished job. The statuses are core's
/// fixed names, so the text is safe to inline and the statement keeps one
/// shape.
fn status_among_not_indexed(
    statuses: &[&'static str],
) -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    let list: Vec<String> = statuses.iter().map(|s| format!("'{s}'")).collect();
    diesel::dsl::sql(&format!("+`jobs`.`status` IN ({})", list.join(", ")))
}

fn active_holder(tx: &mut Tx<'_>, key: &str) -> Result<Option<JobId>, StoreError> {
    // No `.first()`: see `query::job_row`. At most one active job holds a key.
    let ids: Vec<String> = jobs::table
        .filter(jobs::unique_key.eq(key))
        .filter(jobs::status.eq_any(active_statuses()))
        .select(jobs::id)
        .load(tx.conn())
        .map_err(db_err)?;
    ids.into_iter().next().map(|id| parse_id(&id)).transpose()
}

/// The job, in any state, that holds the period key `key`.
fn period_holder(tx: &mut Tx<'_>, key: &str) -> Result<Option<JobId>, StoreError> {
    let ids: Vec<String> = jobs::table
        .filter(jobs::period_key.eq(key))
        .select(jobs::id)
        .load(tx.conn())
        .map_err(db_err)?;
    ids.into_iter().next().map(|id| parse_id(&id)).transpose()
}

fn parse_id(id: &str) -> Result<JobId, StoreError> {
    id.parse()
        .map_err(|e| crate::error::corrupt(format!("job id {id:?}: {e}")))
}

fn job_of(tx: &mut Tx<'_>, id: JobId) -> Result<Job, StoreError> {
    if let Some(job) = tx.cache.get(id) {
        return Ok(job.clone());
    }
    load_job(tx.conn(), id)?.ok_or(StoreError::JobNotFound(id))
}

/// Writes what changed from `before` to `after` and notes it in the cache.
fn save(tx: &mut Tx<'_>, before: &Job, after: &Job) -> Result<(), StoreError> {
    save_job(tx.raw(), before, after)?;
    tx.cache.put(after);
    Ok(())
}

fn leased(tx: &mut Tx<'_>, lease: &Lease) -> Result<Job, StoreError> {
    let job = job_of(tx, lease.job_id)?;
    if job.status != JobStatus::Running || job.lease != Some(lease.token) {
        return Err(StoreError::LeaseLost(lease.job_id));
    }
    Ok(job)
}

/// Saves `after` and appends `events` about it.
pub(crate) fn save_and_emit(
    tx: &mut Tx<'_>,
    before: &Job,
    after: &Job,
    events: Vec<EventData>,
) -> Result<(), StoreError> {
    save(tx, before, after)?;
    for data in events {
        emit(tx, after, data)?;
    }
    Ok(())
}

/// Saves `after` and appends `events` about it; if it ended, settles its
/// dependents (see [`deps::settle`]).
fn commit(
    tx: &mut Tx<'_>,
    before: &Job,
    after: &Job,
    events: Vec<EventData>,
) -> Result<(), StoreError> {
    save_and_emit(tx, before, after, events)?;
    deps::settle(tx, after.id, after.status)
}

pub(crate) fn enqueue(tx: &mut Tx<'_>, spec: NewJob) -> Result<Job, StoreError> {
    let mut jobs = enqueue_batch(tx, vec![spec]).map_err(|e| match e {
        StoreError::Batch { error, .. } => *error,
        other => other,
    })?;
    jobs.pop().ok_or_else(|| {
        StoreError::backend(ErrorKind::Internal, "sqlite store: enqueue wrote no job")
    })
}

pub(crate) fn enqueue_batch(tx: &mut Tx<'_>, specs: Vec<NewJob>) -> Result<Vec<Job>, StoreError> {
    let now = tx.now;
    let mut waits = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let unmet = deps::unmet(tx, spec).map_err(|e| StoreError::Batch {
            index: i,
            error: Box::new(e),
        })?;
        waits.push((unmet, spec.on_dependency_failure));
    }
    let jobs: Vec<Job> = specs.into_iter().map(|s| Job::queued(s, now)).collect();
    let duplicate = jobqueue_core::unique::first_duplicate(&jobs, |held| match held {
        Held::Active(key) => active_holder(tx, key),
        Held::Period(key) => period_holder(tx, key),
    })?;
    if let Some((index, error)) = duplicate {
        return Err(StoreError::Batch {
            index,
            error: Box::new(error),
        });
    }
    insert_jobs(tx.raw(), &jobs)?;
    tx.cache.put_new(&jobs);
    for (job, (unmet, policy)) in jobs.iter().zip(&waits) {
        deps::insert(tx, job, unmet, *policy)?;
    }
    for job in &jobs {
        emit(tx, job, job.created_event())?;
    }
    Ok(jobs)
}

pub(crate) fn claim(tx: &mut Tx<'_>, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
    if req.limit == 0 {
        return Ok(Vec::new());
    }
    let now = tx.now;
    let rule = job_transition(JobStatus::Queued, JobAction::Claim)?;
    let until = micros(lease_until(now, req.lease_for)?);
    let now_us = micros(now);
    // One statement claims the whole batch.
    let (excluded, only) = (&req.exclude_pipelines, req.pipelines.as_deref());
    let key = Key::Claim(excluded.len(), only.map(<[String]>::len));
    let mut q = tx.raw().query(key, || {
        claim_sql(
            rule.to.as_str(),
            JobStatus::Queued.as_str(),
            excluded.len(),
            only.map(<[String]>::len),
        )
    })?;
    q.int(now_us)?;
    q.int(until)?;
    req.worker.bind(&mut q)?;
    q.int(now_us)?;
    for p in excluded.iter().chain(only.into_iter().flatten()) {
        q.text(p)?;
    }
    q.int(sql_count(req.limit))?;
    let mut rows: Vec<JobRow> = Vec::with_capacity(req.limit.min(1024));
    q.for_each_row(|row| {
        rows.push(JobRow::read_columns(row)?);
        Ok(())
    })?;
    // RETURNING gives no order; claims (and their events) go in claim order.
    rows.sort_by(|a, b| {
        (std::cmp::Reverse(a.priority), a.run_at, a.created_at, &a.id).cmp(&(
            std::cmp::Reverse(b.priority),
            b.run_at,
            b.created_at,
            &b.id,
        ))
    });
    // The phases of jobs this writer enqueued are in its cache; only
    // others' are read (and those of a row whose id does not parse, which
    // the read sets aside as unreadable).
    let ids: Option<Vec<JobId>> = rows.iter().map(|r| r.job_id().ok()).collect();
    let loaded = match ids.and_then(|ids| tx.cache.take_queued_phases(&ids)) {
        Some(phases) => with_known_phases(rows.into_iter().zip(phases).collect()),
        None => with_phases_raw(tx.raw(), rows)?,
    };
    fail_unreadable(tx, loaded.unreadable)?;
    let jobs = loaded.jobs;
    let mut claimed = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let token = job
            .lease
            .ok_or_else(|| crate::error::corrupt("claimed job without a lease"))?;
        emit(
            tx,
            &job,
            EventData::Started {
                attempt: job.attempt,
            },
        )?;
        match job.first_incomplete_phase().filter(|_| req.start_phase) {
            Some(i) => {
                let before = job.clone();
                let started = job.start_phase(i, job.attempt, now)?;
                save(tx, &before, &job)?;
                emit(tx, &job, started)?;
            }
            None => tx.cache.put(&job),
        }
        let lease = Lease {
            job_id: job.id,
            token,
            attempt: job.attempt,
        };
        claimed.push(Claimed { lease, job });
    }
    Ok(claimed)
}

/// Fails running jobs whose rows do not read back (claimed just now, or
/// found by recovery), each with an error that says so and a `job.failed`
/// event, so they leave the queue instead of failing every claim after
/// them. Written as SQL on the row itself: the row is what cannot be read.
fn fail_unreadable(tx: &mut Tx<'_>, jobs: Vec<Unreadable>) -> Result<(), StoreError> {
    let rule = job_transition(JobStatus::Running, JobAction::Fail)?;
    for bad in jobs {
        let message = format!(
            "the stored job cannot be read back ({}); it was failed so that the rest of \
             the queue keeps running (delete it, or repair its row)",
            bad.error
        );
        let attempt = u32::try_from(bad.attempt).unwrap_or(0);
        let now = micros(tx.now);
        diesel::update(jobs::table.find(&bad.id))
            .set((
                jobs::status.eq(rule.to.as_str()),
                jobs::finished_at.eq(Some(now)),
                jobs::error_phase.eq(None::<String>),
                jobs::error_message.eq(Some(&message)),
                jobs::error_attempt.eq(Some(i64::from(attempt))),
                jobs::lease.eq(None::<String>),
                jobs::lease_expires_at.eq(None::<i64>),
                jobs::cancel_requested.eq(false),
            ))
            .execute(tx.write_conn())
            .map_err(db_err)?;
        // The id column is what every other query finds the row by; a row
        // whose id does not even parse is left as it is (and skipped).
        if let Ok(id) = bad.id.parse::<JobId>() {
            tx.cache.forget(id);
            let error = JobError {
                phase: None,
                message,
                attempt,
            };
            tx.emit(
                Some(id),
                &bad.pipeline,
                bad.webhook_url.as_deref(),
                EventData::Failed { error },
            )?;
            deps::settle(tx, id, rule.to)?;
        }
    }
    Ok(())
}

pub(crate) fn heartbeat(
    tx: &mut Tx<'_>,
    lease: &Lease,
    extend: Duration,
) -> Result<bool, StoreError> {
    let before = leased(tx, lease)?;
    let mut job = before.clone();
    job.lease_expires_at = Some(lease_until(tx.now, extend)?);
    save(tx, &before, &job)?;
    Ok(job.cancel_requested)
}

/// Renews each lease of `leases` still held (see [`heartbeat`]); a lost
/// one is reported, not an error.
pub(crate) fn heartbeat_many(
    tx: &mut Tx<'_>,
    leases: &[Lease],
    extend: Duration,
) -> Result<Vec<Renewal>, StoreError> {
    leases
        .iter()
        .map(|lease| Renewal::of(heartbeat(tx, lease, extend)))
        .collect()
}

pub(crate) fn reshape_phases(
    tx: &mut Tx<'_>,
    lease: &Lease,
    names: &[String],
) -> Result<Job, StoreError> {
    let mut job = leased(tx, lease)?;
    job.reshape_phases(names)?;
    let id = job.id.to_string();
    diesel::delete(phases::table.filter(phases::job_id.eq(&id)))
        .execute(tx.write_conn())
        .map_err(db_err)?;
    let rows: Vec<PhaseRow> = job
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| PhaseRow::of(&id, i, p))
        .collect();
    insert_rows(tx.raw(), &rows)?;
    tx.cache.put(&job);
    Ok(job)
}

/// Loads the job `lease` holds, applies `change` (one of core's `Job`
/// transition methods) at the writer's time, and saves the job with the
/// events it returned. A refused change writes nothing.
fn change_leased(
    tx: &mut Tx<'_>,
    lease: &Lease,
    change: impl FnOnce(&mut Job, OffsetDateTime) -> Result<Vec<EventData>, StoreError>,
) -> Result<Job, StoreError> {
    let now = tx.now;
    let before = leased(tx, lease)?;
    let mut job = before.clone();
    let events = change(&mut job, now)?;
    commit(tx, &before, &job, events)?;
    Ok(job)
}

pub(crate) fn phase_started(
    tx: &mut Tx<'_>,
    lease: &Lease,
    index: usize,
) -> Result<(), StoreError> {
    change_leased(tx, lease, |job, now| {
        Ok(vec![job.start_phase(index, lease.attempt, now)?])
    })
    .map(drop)
}

pub(crate) fn phase_progress(
    tx: &mut Tx<'_>,
    lease: &Lease,
    index: usize,
    progress: Progress,
) -> Result<(), StoreError> {
    change_leased(tx, lease, |job, _| {
        Ok(vec![job.report_progress(index, progress)?])
    })
    .map(drop)
}

pub(crate) fn save_checkpoint(
    tx: &mut Tx<'_>,
    lease: &Lease,
    index: usize,
    checkpoint: Value,
) -> Result<(), StoreError> {
    change_leased(tx, lease, |job, _| {
        job.save_checkpoint(index, checkpoint)?;
        Ok(Vec::new())
    })
    .map(drop)
}

pub(crate) fn snooze(
    tx: &mut Tx<'_>,
    lease: &Lease,
    index: usize,
    run_at: OffsetDateTime,
) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, _| Ok(vec![job.snooze(index, run_at)?]))
}

pub(crate) fn phase_completed(
    tx: &mut Tx<'_>,
    lease: &Lease,
    index: usize,
    result: Value,
) -> Result<(), StoreError> {
    change_leased(tx, lease, |job, now| {
        Ok(vec![job.complete_phase(index, result, now)?])
    })
    .map(drop)
}

pub(crate) fn phase_failed(
    tx: &mut Tx<'_>,
    lease: &Lease,
    index: usize,
    error: String,
    outcome: FailureOutcome,
) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, now| {
        job.fail_phase(index, error, outcome, now)
    })
}

pub(crate) fn advance(
    tx: &mut Tx<'_>,
    lease: &Lease,
    index: usize,
    result: Value,
    next: Next,
) -> Result<(), StoreError> {
    change_leased(tx, lease, |job, now| {
        job.advance(index, result, next, lease.attempt, now)
    })
    .map(drop)
}

pub(crate) fn complete_job(tx: &mut Tx<'_>, lease: &Lease) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, now| Ok(vec![job.complete(now)?]))
}

pub(crate) fn fail_job(tx: &mut Tx<'_>, lease: &Lease, error: JobError) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, now| Ok(vec![job.fail(error, now)?]))
}

pub(crate) fn cancel_running(tx: &mut Tx<'_>, lease: &Lease) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, now| Ok(vec![job.cancel(now)?]))
}

pub(crate) fn interrupt(tx: &mut Tx<'_>, lease: &Lease) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, now| Ok(vec![job.interrupt(now)?]))
}

pub(crate) fn recover(tx: &mut Tx<'_>, scope: RecoverScope) -> Result<Vec<Job>, StoreError> {
    let now = tx.now;
    let now_us = micros(now);
    let mut q = jobs::table
        .filter(jobs::status.eq(JobStatus::Running.as_str()))
        .select(JobRow::as_select())
        .order(jobs::id)
        .into_boxed();
    if scope == RecoverScope::ExpiredLeases {
        q = q.filter(
            jobs::lease_expires_at
                .is_null()
                .or(jobs::lease_expires_at.le(now_us)),
        );
    }
    let rows = q.load(tx.conn()).map_err(db_err)?;
    let loaded = with_phases(tx.conn(), rows)?;
    fail_unreadable(tx, loaded.unreadable)?;
    let found = loaded.jobs;
    let mut out = Vec::with_capacity(found.len());
    let mut staged = Vec::with_capacity(found.len());
    for before in found {
        let mut job = before.clone();
        let data = job.recover(now)?;
        staged.push((before, job.clone(), data));
        out.push(job);
    }
    for (before, job, _) in &staged {
        save(tx, before, job)?;
    }
    for (_, job, data) in staged {
        emit(tx, &job, data)?;
        deps::settle(tx, job.id, job.status)?;
    }
    Ok(out)
}

pub(crate) fn request_cancel(tx: &mut Tx<'_>, id: JobId) -> Result<CancelOutcome, StoreError> {
    let now = tx.now;
    let before = job_of(tx, id)?;
    let mut job = before.clone();
    if job.status == JobStatus::Running {
        job.cancel_requested = true;
        save(tx, &before, &job)?;
        return Ok(CancelOutcome::Requested(job));
    }
    let events = vec![job.cancel(now)?];
    commit(tx, &before, &job, events)?;
    Ok(CancelOutcome::Cancelled(job))
}

pub(crate) fn retry(tx: &mut Tx<'_>, id: JobId) -> Result<Job, StoreError> {
    let now = tx.now;
    let before = job_of(tx, id)?;
    let mut job = before.clone();
    let events = vec![job.manual_retry(now)?];
    if let Some(key) = &job.unique_key
        && let Some(existing) = active_holder(tx, key)?
    {
        return Err(StoreError::Duplicate {
            key: key.clone(),
            existing,
        });
    }
    commit(tx, &before, &job, events)?;
    Ok(job)
}

/// Deletes a job's row (its phases cascade) and its events older than
/// `keep_from`, so the `job.deleted` tombstone stays. Deliveries keep their
/// own snapshots and are left alone.
fn remove_job(tx: &mut Tx<'_>, id: &str, keep_from: u64) -> Result<(), StoreError> {
    if let Ok(job_id) = id.parse() {
        tx.cache.forget(job_id);
    }
    // The job's events of this group go in first, to be deleted with the
    // others.
    tx.flush_events()?;
    diesel::delete(jobs::table.find(id))
        .execute(tx.write_conn())
        .map_err(db_err)?;
    deps::release(tx, id)?;
    diesel::delete(
        events::table
            .filter(events::job_id.eq(id))
            .filter(events::seq.lt(i64::try_from(keep_from).unwrap_or(i64::MAX))),
    )
    .execute(tx.write_conn())
    .map_err(db_err)?;
    Ok(())
}

/// Appends the `job.deleted` event of the job of `row`, noted as a
/// tombstone for [`prune`].
fn emit_deleted(tx: &mut Tx<'_>, id: JobId, row: &JobRow) -> Result<(), StoreError> {
    tx.emit(
        Some(id),
        &row.pipeline,
        row.webhook_url.as_deref(),
        EventData::Deleted {},
    )?;
    let seq = i64::try_from(tx.last_seq()).unwrap_or(i64::MAX);
    let at = micros(tx.now);
    diesel::insert_into(tombstones::table)
        .values((tombstones::seq.eq(seq), tombstones::at.eq(at)))
        .execute(tx.write_conn())
        .map_err(db_err)?;
    Ok(())
}

pub(crate) fn delete(tx: &mut Tx<'_>, id: JobId) -> Result<(), StoreError> {
    let row = job_row(tx.conn(), id)?.ok_or(StoreError::JobNotFound(id))?;
    job_transition(job_status(&row.status)?, JobAction::Delete)?;
    let keep_from = tx.last_seq() + 1;
    emit_deleted(tx, id, &row)?;
    remove_job(tx, &row.id, keep_from)
}

pub(crate) fn mark_stale(
    tx: &mut Tx<'_>,
    finished_before: OffsetDateTime,
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let now = tx.now;
    let rows: Vec<JobRow> = jobs::table
        .filter(jobs::finished_at.lt(micros(finished_before)))
        .filter(status_among_not_indexed(&finished_statuses()))
        .order((jobs::finished_at, jobs::id))
        .limit(sql_count(limit))
        .select(JobRow::as_select())
        .load(tx.conn())
        .map_err(db_err)?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let rule = job_transition(job_status(&row.status)?, JobAction::MarkStale)?;
        let id = row.job_id()?;
        tx.cache.forget(id);
        diesel::update(jobs::table.find(&row.id))
            .set((
                jobs::status.eq(rule.to.as_str()),
                jobs::stale_at.eq(Some(micros(now))),
            ))
            .execute(tx.write_conn())
            .map_err(db_err)?;
        tx.emit(
            Some(id),
            &row.pipeline,
            row.webhook_url.as_deref(),
            EventData::Stale {},
        )?;
        ids.push(id);
    }
    Ok(ids)
}

pub(crate) fn delete_stale(
    tx: &mut Tx<'_>,
    stale_before: OffsetDateTime,
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let rows: Vec<JobRow> = jobs::table
        .filter(jobs::stale_at.lt(micros(stale_before)))
        .filter(status_among_not_indexed(&[JobStatus::Stale.as_str()]))
        .order((jobs::stale_at, jobs::id))
        .limit(sql_count(limit))
        .select(JobRow::as_select())
        .load(tx.conn())
        .map_err(db_err)?;
    for row in &rows {
        job_transition(job_status(&row.status)?, JobAction::Delete)?;
    }
    let keep_from = tx.last_seq() + 1;
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = row.job_id()?;
        emit_deleted(tx, id, row)?;
        ids.push(id);
    }
    for row in &rows {
        remove_job(tx, &row.id, keep_from)?;
    }
    Ok(ids)
}

pub(crate) fn prune(
    tx: &mut Tx<'_>,
    before: OffsetDateTime,
    limit: usize,
) -> Result<Pruned, StoreError> {
    let before = micros(before);
    let limit = sql_count(limit);
    let ended: Vec<String> = webhook_deliveries::table
        .filter(webhook_deliveries::status.eq_any([
            DeliveryStatus::Delivered.as_str(),
            DeliveryStatus::Failed.as_str(),
        ]))
        .filter(webhook_deliveries::created_at.lt(before))
        .order((webhook_deliveries::created_at, webhook_deliveries::id))
        .limit(limit)
        .select(webhook_deliveries::id)
        .load(tx.conn())
        .map_err(db_err)?;
    if !ended.is_empty() {
        diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::id.eq_any(&ended)))
            .execute(tx.write_conn())
            .map_err(db_err)?;
    }
    let old: Vec<i64> = tombstones::table
        .filter(tombstones::at.lt(before))
        .order((tombstones::at, tombstones::seq))
        .limit(limit)
        .select(tombstones::seq)
        .load(tx.conn())
        .map_err(db_err)?;
    if !old.is_empty() {
        tx.flush_events()?;
        diesel::delete(events::table.filter(events::seq.eq_any(&old)))
            .execute(tx.write_conn())
            .map_err(db_err)?;
        diesel::delete(tombstones::table.filter(tombstones::seq.eq_any(&old)))
            .execute(tx.write_conn())
            .map_err(db_err)?;
    }
    Ok(Pruned {
        deliveries: ended.len(),
        tombstones: old.len(),
    })
}

/// Ends deliveries whose rows do not read back as `failed`, with the reason.
pub(crate) fn fail_unreadable_deliveries(
    tx: &mut Tx<'_>,
    bad: &[(String, StoreError)],
) -> Result<(), StoreError> {
    for (id, error) in bad {
        let message = format!("the stored delivery cannot be read back ({error}); it was ended");
        diesel::update(
            webhook_deliveries::table
                .find(id)
                .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str())),
        )
        .set((
            webhook_deliveries::status.eq(DeliveryStatus::Failed.as_str()),
            webhook_deliveries::last_error.eq(Some(message)),
            webhook_deliveries::next_attempt_at.eq(None::<i64>),
        ))
        .execute(tx.write_conn())
        .map_err(db_err)?;
    }
    Ok(())
}

pub(crate) fn record_attempt(
    tx: &mut Tx<'_>,
    id: DeliveryId,
    outcome: AttemptOutcome,
) -> Result<Delivery, StoreError> {
    let rows: Vec<DeliveryRow> = webhook_deliveries::table
        .find(id.to_string())
        .select(DeliveryRow::as_select())
        .load(tx.conn())
        .map_err(db_err)?;
    let row = rows
        .into_iter()
        .next()
        .ok_or(StoreError::DeliveryNotFound(id))?;
    let mut d = row.into_delivery()?;
    d.record(outcome)?;
    let new_row = DeliveryRow::of(&d);
    diesel::update(webhook_deliveries::table.find(&new_row.id))
        .set(&new_row)
        .execute(tx.write_conn())
        .map_err(db_err)?;
    Ok(d)
}

/// Pauses `pipeline` (see `JobStore::pause_pipeline`): a row in
/// `paused_pipelines` and a `pipeline.paused` event, or nothing when the row
/// is there already. The caller checked the name.
pub(crate) fn pause_pipeline(tx: &mut Tx<'_>, pipeline: &str) -> Result<bool, StoreError> {
    let inserted = diesel::insert_into(paused_pipelines::table)
        .values((
            paused_pipelines::pipeline.eq(pipeline),
            paused_pipelines::paused_at.eq(micros(tx.now)),
        ))
        .on_conflict_do_nothing()
        .execute(tx.write_conn())
        .map_err(db_err)?;
    if inserted == 0 {
        return Ok(false);
    }
    tx.emit(None, pipeline, None, EventData::PipelinePaused {})?;
    Ok(true)
}

/// Resumes `pipeline`: deletes its row and appends `pipeline.resumed`, or
/// does nothing when it was not paused.
pub(crate) fn resume_pipeline(tx: &mut Tx<'_>, pipeline: &str) -> Result<bool, StoreError> {
    let deleted = diesel::delete(paused_pipelines::table.find(pipeline))
        .execute(tx.write_conn())
        .map_err(db_err)?;
    if deleted == 0 {
        return Ok(false);
    }
    tx.emit(None, pipeline, None, EventData::PipelineResumed {})?;
    Ok(true)
}
