//! The read queries. Each is one statement (one snapshot), except a page of
//! jobs, which reads the jobs and their phases in one read-only
//! `REPEATABLE READ` transaction, so a job and its phases always agree.

use diesel::dsl::{count_star, min, sql};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jobqueue_core::memory::DEFAULT_PAGE;
use jobqueue_core::{
    Delivery, DeliveryFilter, DeliveryStatus, Event, EventFilter, Job, JobCount, JobFilter, JobId,
    JobPage, JobStatus, StoreError,
};
use time::OffsetDateTime;

use crate::error::{corrupt, db_err};
use crate::rows::{DeliveryRow, EventRow, JobRow, PhaseRow, jobs_of, sql_count, sql_seq};
use crate::schema::{events, jobs, paused_pipelines, phases, webhook_deliveries};
use crate::seq::{HORIZON_SQL, Number};

/// `status = 'pending'` as literal SQL: the due-delivery index is partial on
/// it, and a bound parameter would not prove the predicate to a generic plan.
fn pending() -> diesel::expression::SqlLiteral<Bool> {
    sql::<Bool>(&format!(
        "webhook_deliveries.status = '{}'",
        DeliveryStatus::Pending.as_str()
    ))
}

pub(crate) async fn job(
    conn: &mut AsyncPgConnection,
    id: JobId,
) -> Result<Option<Job>, StoreError> {
    let rows: Vec<(JobRow, Option<PhaseRow>)> = jobs::table
        .left_join(phases::table)
        .filter(jobs::id.eq(id.as_uuid()))
        .order(phases::idx)
        .select((JobRow::as_select(), Option::<PhaseRow>::as_select()))
        .load(conn)
        .await
        .map_err(db_err)?;
    let mut rows = rows.into_iter();
    let Some((job, first)) = rows.next() else {
        return Ok(None);
    };
    let phases = first
        .into_iter()
        .chain(rows.filter_map(|(_, p)| p))
        .collect();
    job.into_job(phases).map(Some)
}

pub(crate) async fn list(
    conn: &mut AsyncPgConnection,
    filter: JobFilter,
) -> Result<JobPage, StoreError> {
    let limit = if filter.limit == 0 {
        DEFAULT_PAGE
    } else {
        filter.limit
    };
    let statuses: Vec<&'static str> = filter.statuses.iter().map(|s| s.as_str()).collect();
    let (rows, phases) = conn
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(async move |conn: &mut AsyncPgConnection| {
            let mut q = jobs::table
                .select(JobRow::as_select())
                .order(jobs::id.desc())
                .limit(sql_count(limit.saturating_add(1)))
                .into_boxed();
            if let Some(cursor) = filter.cursor {
                q = q.filter(jobs::id.lt(*cursor.as_uuid()));
            }
            if !statuses.is_empty() {
                q = q.filter(jobs::status.eq_any(statuses));
            }
            if let Some(pipeline) = filter.pipeline {
                q = q.filter(jobs::pipeline.eq(pipeline));
            }
            let rows: Vec<JobRow> = q.load(conn).await?;
            let ids: Vec<uuid::Uuid> = rows.iter().take(limit).map(|r| r.id).collect();
            let phases: Vec<PhaseRow> = phases::table
                .filter(phases::job_id.eq_any(ids))
                .order((phases::job_id, phases::idx))
                .select(PhaseRow::as_select())
                .load(conn)
                .await?;
            Ok::<_, diesel::result::Error>((rows, phases))
        })
        .await
        .map_err(db_err)?;
    let more = rows.len() > limit;
    let rows: Vec<JobRow> = rows.into_iter().take(limit).collect();
    let jobs = jobs_of(rows, phases)?;
    let next_cursor = if more {
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(JobPage { jobs, next_cursor })
}

pub(crate) async fn counts(conn: &mut AsyncPgConnection) -> Result<Vec<JobCount>, StoreError> {
    let rows: Vec<(String, String, i64)> = jobs::table
        .group_by((jobs::pipeline, jobs::status))
        .select((jobs::pipeline, jobs::status, count_star()))
        .load(conn)
        .await
        .map_err(db_err)?;
    let mut counts = rows
        .into_iter()
        .map(|(pipeline, status, n)| {
            let status: JobStatus = status
                .parse()
                .map_err(|e| corrupt(format!("job status {status:?}: {e}")))?;
            Ok(JobCount {
                pipeline,
                status,
                count: u64::try_from(n).unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // The order of `MemoryStore`: pipeline (by bytes, not the database's
    // collation), then status.
    counts.sort_by(|a, b| (&a.pipeline, a.status).cmp(&(&b.pipeline, b.status)));
    Ok(counts)
}

pub(crate) async fn events_after(
    conn: &mut AsyncPgConnection,
    after: u64,
    filter: EventFilter,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Below the guard only: no event there can still appear (see
    // `crate::seq`).
    let guard = format!("coalesce({HORIZON_SQL}, {})", i64::MAX);
    let mut q = events::table
        .select(EventRow::as_select())
        .filter(events::seq.gt(sql_seq(after)))
        .filter(events::seq.lt(sql::<BigInt>(&guard)))
        .order(events::seq)
        .limit(sql_count(limit))
        .into_boxed();
    if let Some(job) = filter.job {
        q = q.filter(events::job_id.eq(*job.as_uuid()));
    }
    if !filter.types.is_empty() {
        let types: Vec<&'static str> = filter.types.iter().map(|t| t.as_str()).collect();
        q = q.filter(events::event_type.eq_any(types));
    }
    let rows: Vec<EventRow> = q.load(conn).await.map_err(db_err)?;
    rows.into_iter().map(EventRow::into_event).collect()
}

/// The highest number handed out, but below the guard: a subscriber that
/// starts after it misses no event still in flight (see `crate::seq`).
pub(crate) async fn last_seq(conn: &mut AsyncPgConnection) -> Result<u64, StoreError> {
    let last: Number = diesel::sql_query(format!(
        "SELECT least(last_seq, coalesce({HORIZON_SQL} - 1, last_seq)) AS n \
         FROM store_state WHERE id = 1"
    ))
    .get_result(conn)
    .await
    .map_err(db_err)?;
    u64::try_from(last.n).map_err(|_| corrupt(format!("last_seq {}", last.n)))
}

pub(crate) async fn due_deliveries(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let rows: Vec<DeliveryRow> = webhook_deliveries::table
        .filter(pending())
        .filter(webhook_deliveries::next_attempt_at.le(now))
        .order((
            webhook_deliveries::next_attempt_at,
            webhook_deliveries::event_seq,
            webhook_deliveries::id,
        ))
        .limit(sql_count(limit))
        .select(DeliveryRow::as_select())
        .load(conn)
        .await
        .map_err(db_err)?;
    rows.into_iter().map(DeliveryRow::into_delivery).collect()
}

pub(crate) async fn next_delivery_at(
    conn: &mut AsyncPgConnection,
) -> Result<Option<OffsetDateTime>, StoreError> {
    webhook_deliveries::table
        .filter(pending())
        .select(min(webhook_deliveries::next_attempt_at))
        .first(conn)
        .await
        .map_err(db_err)
}

pub(crate) async fn deliveries(
    conn: &mut AsyncPgConnection,
    filter: DeliveryFilter,
) -> Result<Vec<Delivery>, StoreError> {
    let mut q = webhook_deliveries::table
        .select(DeliveryRow::as_select())
        .order((webhook_deliveries::event_seq, webhook_deliveries::id))
        .into_boxed();
    if let Some(job) = filter.job {
        q = q.filter(webhook_deliveries::job_id.eq(*job.as_uuid()));
    }
    if !filter.statuses.is_empty() {
        let statuses: Vec<&'static str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        q = q.filter(webhook_deliveries::status.eq_any(statuses));
    }
    if filter.limit != 0 {
        q = q.limit(sql_count(filter.limit));
    }
    let rows: Vec<DeliveryRow> = q.load(conn).await.map_err(db_err)?;
    rows.into_iter().map(DeliveryRow::into_delivery).collect()
}

/// The paused pipelines, by name (in byte order, as `MemoryStore` sorts).
pub(crate) async fn paused_pipelines(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = paused_pipelines::table
        .select(paused_pipelines::pipeline)
        .load(conn)
        .await
        .map_err(db_err)?;
    names.sort();
    Ok(names)
}
