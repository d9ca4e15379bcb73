//! The read queries and the pool of read connections they run on.
//!
//! In WAL mode readers never block the writer nor each other, so reads go to
//! their own connections, each owned by a thread that takes jobs from a
//! shared queue. Every read runs in a (deferred) transaction, so a job and
//! its phases come from one snapshot.

use std::thread::JoinHandle;

use diesel::connection::SimpleConnection;
use diesel::dsl::{max, min};
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use jobqueue_core::memory::DEFAULT_PAGE;
use jobqueue_core::{
    Delivery, DeliveryFilter, DeliveryStatus, ErrorKind, Event, EventFilter, JobCount, JobFilter,
    JobPage, StoreError,
};
use time::OffsetDateTime;

use crate::error::db_err;
use crate::query::with_phases;
use crate::rows::{DeliveryRow, EventRow, JobRow, from_micros, job_status, micros, sql_count};
use crate::schema::{events, jobs, paused_pipelines, store_state, webhook_deliveries};
use crate::writer::ReadJob;

/// Runs `f` in a read transaction.
pub(crate) fn in_read_tx<T>(
    conn: &mut SqliteConnection,
    f: impl FnOnce(&mut SqliteConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.batch_execute("BEGIN").map_err(db_err)?;
    let out = f(conn);
    let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
    match conn.batch_execute(end) {
        Ok(()) => out,
        Err(e) => {
            let _ = conn.batch_execute("ROLLBACK");
            out.and(Err(db_err(e)))
        }
    }
}

/// Reads that may wait for a reader before callers wait to send.
pub(crate) const READ_QUEUE: usize = 1024;

/// Starts one thread per connection, all serving one bounded queue of
/// reads. Each thread ends (closing its connection) when the queue is
/// closed and empty.
pub(crate) fn spawn_pool(
    conns: Vec<SqliteConnection>,
) -> Result<(async_channel::Sender<ReadJob>, Vec<JoinHandle<()>>), StoreError> {
    let (tx, rx) = async_channel::bounded::<ReadJob>(READ_QUEUE);
    let mut handles = Vec::with_capacity(conns.len());
    for (i, mut conn) in conns.into_iter().enumerate() {
        let rx = rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("jobqueue-sqlite-reader-{i}"))
            .spawn(move || {
                while let Ok(job) = rx.recv_blocking() {
                    job(&mut conn);
                }
            })
            .map_err(|e| {
                StoreError::backend(ErrorKind::Internal, format!("cannot start reader: {e}"))
            })?;
        handles.push(handle);
    }
    Ok((tx, handles))
}

pub(crate) fn list(conn: &mut SqliteConnection, filter: JobFilter) -> Result<JobPage, StoreError> {
    let limit = if filter.limit == 0 {
        DEFAULT_PAGE
    } else {
        filter.limit
    };
    let mut q = jobs::table.select(JobRow::as_select()).into_boxed();
    if !filter.statuses.is_empty() {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        q = q.filter(jobs::status.eq_any(statuses));
    }
    if let Some(p) = filter.pipeline {
        q = q.filter(jobs::pipeline.eq(p));
    }
    if let Some(c) = filter.cursor {
        q = q.filter(jobs::id.lt(c.to_string()));
    }
    let mut rows = q
        .order(jobs::id.desc())
        .limit(sql_count(limit).saturating_add(1))
        .load(conn)
        .map_err(db_err)?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    // The cursor is the last row of the page, read back or not.
    let last = rows.last().map(|r| r.id.clone());
    let loaded = with_phases(conn, rows)?;
    for bad in &loaded.unreadable {
        tracing::warn!(job_id = %bad.id, error = %bad.error, "skipping a stored job that cannot be read back");
    }
    let next_cursor = match last.filter(|_| more) {
        Some(id) => Some(
            id.parse()
                .map_err(|e| crate::error::corrupt(format!("job id {id:?}: {e}")))?,
        ),
        None => None,
    };
    Ok(JobPage {
        jobs: loaded.jobs,
        next_cursor,
    })
}

pub(crate) fn counts(conn: &mut SqliteConnection) -> Result<Vec<JobCount>, StoreError> {
    let rows: Vec<(String, String, i64)> = jobs::table
        .group_by((jobs::pipeline, jobs::status))
        .select((jobs::pipeline, jobs::status, diesel::dsl::count_star()))
        .load(conn)
        .map_err(db_err)?;
    let mut counts = rows
        .into_iter()
        .map(|(pipeline, status, count)| {
            Ok(JobCount {
                pipeline,
                status: job_status(&status)?,
                count: u64::try_from(count).unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // The order `JobStore::counts` promises: pipeline, then status in
    // `JobStatus` order (not the status's text, which SQLite would sort by).
    counts.sort_by(|a, b| (&a.pipeline, a.status).cmp(&(&b.pipeline, b.status)));
    Ok(counts)
}

pub(crate) fn events_after(
    conn: &mut SqliteConnection,
    after: u64,
    filter: EventFilter,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let Ok(after_row) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let job = filter.job.map(|j| j.to_string());
    let types: Vec<&str> = filter.types.iter().map(|t| t.as_str()).collect();
    let mut out = Vec::new();
    // A row may hold two events, `seq` and `seq + 1` (see the
    // `paired_events` migration), so the row numbered `after` is read too,
    // for its second event.
    let mut rows_after = after_row - 1;
    // Rows that do not read back are skipped (and logged), and the page is
    // filled from after them, so they never look like the end of the log.
    while out.len() < limit {
        let want = limit - out.len();
        let mut q = events::table
            .select(EventRow::as_select())
            .filter(events::seq.gt(rows_after))
            .into_boxed();
        if let Some(job) = &job {
            q = q.filter(events::job_id.eq(job));
        }
        if !types.is_empty() {
            q = q.filter(
                events::event_type
                    .eq_any(&types)
                    .nullable()
                    .or(events::event_type2.eq_any(&types)),
            );
        }
        let rows: Vec<EventRow> = q
            .order(events::seq)
            .limit(sql_count(want))
            .load(conn)
            .map_err(db_err)?;
        let page = rows.len();
        for row in rows {
            rows_after = row.seq;
            for event in row.into_events().into_iter().flatten() {
                match event {
                    Ok(event) => {
                        if event.seq > after && filter.matches(&event) && out.len() < limit {
                            out.push(event);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(seq = rows_after, %error, "skipping a stored event that cannot be read back");
                    }
                }
            }
        }
        if page < want {
            break;
        }
    }
    Ok(out)
}

/// The highest sequence number ever handed out: the saved counter, or the
/// highest event if that is higher (it never is, but reading both costs
/// nothing and keeps a number from being reused whatever happened).
pub(crate) fn last_seq(conn: &mut SqliteConnection) -> Result<u64, StoreError> {
    let saved: Vec<i64> = store_state::table
        .select(store_state::last_seq)
        .load(conn)
        .map_err(db_err)?;
    // The second event of a paired row is numbered one past the row.
    let highest: Option<i64> = events::table
        .select(max(events::seq
            + diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(event_type2 IS NOT NULL)",
            )))
        .first(conn)
        .map_err(db_err)?;
    let seq = saved.into_iter().chain(highest).max().unwrap_or(0);
    Ok(u64::try_from(seq).unwrap_or(0))
}

/// Deliveries that read back, and the ids and errors of those that do not.
pub(crate) type Readable = (Vec<Delivery>, Vec<(String, StoreError)>);

/// Reads delivery rows one by one; one that does not read back is set
/// aside (and logged), never failing the rest.
fn deliveries_of(rows: Vec<DeliveryRow>) -> Readable {
    let mut ok = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        let id = row.id.clone();
        match row.into_delivery() {
            Ok(d) => ok.push(d),
            Err(error) => {
                tracing::warn!(delivery_id = %id, %error, "skipping a stored webhook delivery that cannot be read back");
                bad.push((id, error));
            }
        }
    }
    (ok, bad)
}

pub(crate) fn due_deliveries(
    conn: &mut SqliteConnection,
    now: OffsetDateTime,
    limit: usize,
) -> Result<Readable, StoreError> {
    let rows = webhook_deliveries::table
        .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()))
        .filter(webhook_deliveries::next_attempt_at.le(micros(now)))
        .order((
            webhook_deliveries::next_attempt_at,
            webhook_deliveries::event_seq,
            webhook_deliveries::id,
        ))
        .limit(sql_count(limit))
        .select(DeliveryRow::as_select())
        .load(conn)
        .map_err(db_err)?;
    Ok(deliveries_of(rows))
}

pub(crate) fn next_delivery_at(
    conn: &mut SqliteConnection,
) -> Result<Option<OffsetDateTime>, StoreError> {
    let at: Option<i64> = webhook_deliveries::table
        .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()))
        .select(min(webhook_deliveries::next_attempt_at))
        .first(conn)
        .map_err(db_err)?;
    at.map(from_micros).transpose()
}

pub(crate) fn deliveries(
    conn: &mut SqliteConnection,
    filter: DeliveryFilter,
) -> Result<Vec<Delivery>, StoreError> {
    let mut q = webhook_deliveries::table
        .select(DeliveryRow::as_select())
        .into_boxed();
    if let Some(job) = filter.job {
        q = q.filter(webhook_deliveries::job_id.eq(job.to_string()));
    }
    if !filter.statuses.is_empty() {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        q = q.filter(webhook_deliveries::status.eq_any(statuses));
    }
    q = q.order((webhook_deliveries::event_seq, webhook_deliveries::id));
    if filter.limit != 0 {
        q = q.limit(sql_count(filter.limit));
    }
    let rows = q.load(conn).map_err(db_err)?;
    Ok(deliveries_of(rows).0)
}

/// The paused pipelines, by name.
pub(crate) fn paused_pipelines(conn: &mut SqliteConnection) -> Result<Vec<String>, StoreError> {
    paused_pipelines::table
        .select(paused_pipelines::pipeline)
        .order(paused_pipelines::pipeline)
        .load(conn)
        .map_err(db_err)
}
