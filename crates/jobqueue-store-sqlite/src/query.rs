//! Queries shared by the reads and the writes: loading and saving jobs.

use std::collections::HashMap;
use std::marker::PhantomData;

use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Text, Untyped};
use diesel::sqlite::{Sqlite, SqliteConnection};
use jobqueue_core::{ErrorKind, Job, JobId, StoreError};

use crate::error::db_err;
use crate::rows::{EventRow, JobPatch, JobRow, PhaseRow};
use crate::schema::{jobs, phases};

/// The row of job `id`, without its phases.
pub(crate) fn job_row(
    conn: &mut SqliteConnection,
    id: JobId,
) -> Result<Option<JobRow>, StoreError> {
    jobs::table
        .find(id.to_string())
        .select(JobRow::as_select())
        .first(conn)
        .optional()
        .map_err(db_err)
}

/// Job `id` with its phases.
pub(crate) fn load_job(conn: &mut SqliteConnection, id: JobId) -> Result<Option<Job>, StoreError> {
    let Some(row) = job_row(conn, id)? else {
        return Ok(None);
    };
    let phases = phases::table
        .filter(phases::job_id.eq(&row.id))
        .order(phases::idx)
        .select(PhaseRow::as_select())
        .load(conn)
        .map_err(db_err)?;
    row.into_job(phases).map(Some)
}

/// A stored job that does not read back (a value written by something
/// else, or damaged): what is needed to fail it or to say which it is.
#[derive(Debug)]
pub(crate) struct Unreadable {
    pub(crate) id: String,
    pub(crate) pipeline: String,
    pub(crate) webhook_url: Option<String>,
    pub(crate) attempt: i64,
    pub(crate) error: StoreError,
}

/// The jobs of some rows: those that read back, in order, and those that
/// did not, each on its own, so one bad row never hides the others.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) jobs: Vec<Job>,
    pub(crate) unreadable: Vec<Unreadable>,
}

/// The jobs of `rows`, in that order, with their phases.
pub(crate) fn with_phases(
    conn: &mut SqliteConnection,
    rows: Vec<JobRow>,
) -> Result<Loaded, StoreError> {
    if rows.is_empty() {
        return Ok(Loaded::default());
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let mut by_job: HashMap<String, Vec<PhaseRow>> = HashMap::new();
    // The ids go in as one JSON array, so the statement has one shape and
    // stays prepared (an `IN (?, ?, ...)` list is prepared anew each time).
    let ids = serde_json::to_string(&ids)
        .map_err(|e| StoreError::backend(ErrorKind::Internal, format!("job ids: {e}")))?;
    let all: Vec<PhaseRow> = Fixed::<kind::PhasesOfJobs, _>::new(PhasesOfJobs {
        columns: PhaseRow::as_select(),
        ids: &ids,
    })
    .load(conn)
    .map_err(db_err)?;
    for p in all {
        by_job.entry(p.job_id.clone()).or_default().push(p);
    }
    let mut loaded = Loaded {
        jobs: Vec::with_capacity(rows.len()),
        unreadable: Vec::new(),
    };
    for r in rows {
        let phases = by_job.remove(&r.id).unwrap_or_default();
        let (id, pipeline, webhook_url, attempt) = (
            r.id.clone(),
            r.pipeline.clone(),
            r.webhook_url.clone(),
            r.attempt,
        );
        match r.into_job(phases) {
            Ok(job) => loaded.jobs.push(job),
            Err(error) => loaded.unreadable.push(Unreadable {
                id,
                pipeline,
                webhook_url,
                attempt,
                error,
            }),
        }
    }
    Ok(loaded)
}

/// Inserts a new job and its phases.
pub(crate) fn insert_job(conn: &mut SqliteConnection, job: &Job) -> Result<(), StoreError> {
    let row = JobRow::of(job);
    Fixed::<kind::InsertJob, _>::new(diesel::insert_into(jobs::table).values(&row))
        .execute(conn)
        .map_err(db_err)?;
    for (i, p) in job.phases.iter().enumerate() {
        diesel::insert_into(phases::table)
            .values(PhaseRow::of(&row.id, i, p))
            .execute(conn)
            .map_err(db_err)?;
    }
    Ok(())
}

/// Writes what changed from `before` to `after` (the same job): the changed
/// columns of the job row, and each changed phase's row.
pub(crate) fn save_job(
    conn: &mut SqliteConnection,
    before: &Job,
    after: &Job,
) -> Result<(), StoreError> {
    // The input is compared as a value, not as text: it never changes
    // after the enqueue, and this runs on every write of a job.
    let (mut old, mut row) = (JobRow::of_state(before), JobRow::of_state(after));
    if before.input != after.input {
        old.input = before.input.to_string();
        row.input = after.input.to_string();
    }
    if let Some((patch, shape)) = JobPatch::between(&old, &row) {
        let update = Update::new("jobs", patch.as_changeset(), jobs::id.eq(&row.id));
        // The SQL depends only on the set of changed columns: the frequent
        // sets are kept prepared under a type, the others by their text.
        match shape {
            JobPatch::COMPLETE => Fixed::<kind::CompleteJob, _>::new(update).execute(conn),
            JobPatch::HEARTBEAT => Fixed::<kind::Heartbeat, _>::new(update).execute(conn),
            _ => update.execute(conn),
        }
        .map_err(db_err)?;
    }
    for (i, p) in after.phases.iter().enumerate() {
        if before.phases.get(i).is_none_or(|old| old == p) {
            continue;
        }
        // A phase row has no index but its key, so it is written whole:
        // one statement shape, kept prepared, and no diff to build.
        let new = PhaseRow::of(&row.id, i, p);
        let key = phases::job_id.eq(&row.id).and(phases::idx.eq(new.idx));
        Fixed::<kind::SavePhase, _>::new(Update::new("phases", new.as_changeset(), key))
            .execute(conn)
            .map_err(db_err)?;
    }
    Ok(())
}

/// `UPDATE table SET set WHERE filter`, which diesel keeps prepared (keyed by
/// its SQL text) where its own `UPDATE` is prepared afresh on every run.
/// Sound because the writer's changesets come in few shapes (the columns a
/// kind of operation changes), so the cache stays small.
pub(crate) struct Update<C, W> {
    table: &'static str,
    set: C,
    filter: W,
}

impl<C, W> Update<C, W> {
    pub(crate) fn new(table: &'static str, set: C, filter: W) -> Self {
        Self { table, set, filter }
    }
}

impl<C, W> QueryFragment<Sqlite> for Update<C, W>
where
    C: QueryFragment<Sqlite>,
    W: QueryFragment<Sqlite>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("UPDATE ");
        out.push_identifier(self.table)?;
        out.push_sql(" SET ");
        self.set.walk_ast(out.reborrow())?;
        out.push_sql(" WHERE ");
        self.filter.walk_ast(out.reborrow())?;
        Ok(())
    }
}

impl<C, W> QueryId for Update<C, W> {
    type QueryId = ();
    // Not keyed by type: the SQL depends on which columns are set.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<C, W> RunQueryDsl<SqliteConnection> for Update<C, W> {}

/// A statement whose SQL is fixed by its kind `K`, which diesel then keeps
/// prepared under `K` (its cheapest path: no SQL built per run). diesel's
/// derived `Insertable` inserts are otherwise keyed by their SQL text, built
/// anew on every run. Only for statements that cannot change shape, e.g. an
/// insert of a row whose `None`s are inserted as NULL (a test checks the
/// SQL does not vary).
pub(crate) struct Fixed<K, Q> {
    query: Q,
    kind: PhantomData<K>,
}

impl<K, Q> Fixed<K, Q> {
    pub(crate) fn new(query: Q) -> Self {
        Self {
            query,
            kind: PhantomData,
        }
    }
}

impl<K, Q: QueryFragment<Sqlite>> QueryFragment<Sqlite> for Fixed<K, Q> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        self.query.walk_ast(out)
    }
}

impl<K: 'static, Q> QueryId for Fixed<K, Q> {
    type QueryId = K;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<K, Q> RunQueryDsl<SqliteConnection> for Fixed<K, Q> {}

/// Kinds of [`Fixed`] statements.
pub(crate) mod kind {
    /// `INSERT INTO jobs` of a whole [`crate::rows::JobRow`].
    pub(crate) struct InsertJob;
    /// `INSERT INTO webhook_deliveries` of a [`crate::rows::DeliveryRow`].
    pub(crate) struct InsertDelivery;
    /// [`super::PhasesOfJobs`].
    pub(crate) struct PhasesOfJobs;
    /// `UPDATE store_state SET last_seq = ?`.
    pub(crate) struct SaveLastSeq;
    /// `UPDATE jobs` of the columns a completion changes.
    pub(crate) struct CompleteJob;
    /// `UPDATE jobs` of the lease's expiry.
    pub(crate) struct Heartbeat;
    /// `UPDATE phases` of every column of a [`crate::rows::PhaseRow`] but
    /// its key.
    pub(crate) struct SavePhase;
}

impl<K, Q: Query> Query for Fixed<K, Q> {
    type SqlType = Q::SqlType;
}

/// The phases of the jobs whose ids are in the JSON array `ids`, by job and
/// index.
struct PhasesOfJobs<'a> {
    columns: diesel::dsl::AsSelect<PhaseRow, Sqlite>,
    ids: &'a str,
}

impl QueryFragment<Sqlite> for PhasesOfJobs<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        self.columns.walk_ast(out.reborrow())?;
        out.push_sql(" FROM `phases` WHERE `phases`.`job_id` IN (SELECT value FROM json_each(");
        out.push_bind_param::<Text, _>(self.ids)?;
        out.push_sql(")) ORDER BY `phases`.`job_id`, `phases`.`idx`");
        Ok(())
    }
}

impl Query for PhasesOfJobs<'_> {
    type SqlType = Untyped;
}

/// Inserts `rows` into `events` with as few statements as their count
/// allows: chunks of 64, 16, 4 and 1 rows, each chunk size one statement
/// that diesel keeps prepared. A statement costs about as much again as the
/// rows it inserts (diesel's binding, SQLite's setup), so an event a
/// statement was a third of the writer's time.
pub(crate) fn insert_events(conn: &mut SqliteConnection, rows: &[EventRow]) -> QueryResult<()> {
    let mut rest = rows;
    while !rest.is_empty() {
        rest = match rest.len() {
            64.. => insert_chunk::<64>(conn, rest)?,
            16.. => insert_chunk::<16>(conn, rest)?,
            4.. => insert_chunk::<4>(conn, rest)?,
            _ => insert_chunk::<1>(conn, rest)?,
        };
    }
    Ok(())
}

/// Inserts the first `N` of `rows` and returns the others.
fn insert_chunk<'r, const N: usize>(
    conn: &mut SqliteConnection,
    rows: &'r [EventRow],
) -> QueryResult<&'r [EventRow]> {
    let (chunk, rest) = rows.split_at(N.min(rows.len()));
    InsertEvents::<N> { rows: chunk }.execute(conn)?;
    Ok(rest)
}

/// `INSERT INTO events (...) VALUES (...), ...` of exactly `N` rows, so its
/// SQL is fixed by `N` and diesel keeps it prepared under its type.
struct InsertEvents<'a, const N: usize> {
    rows: &'a [EventRow],
}

impl<const N: usize> QueryFragment<Sqlite> for InsertEvents<'_, N> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        debug_assert_eq!(self.rows.len(), N);
        out.push_sql(
            "INSERT INTO `events` (`seq`, `job_id`, `pipeline`, `event_type`, `at`, `data`) VALUES ",
        );
        for (i, row) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<BigInt, _>(&row.seq)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&row.job_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&row.pipeline)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&row.event_type)?;
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(&row.at)?;
            out.push_sql(", ");
            out.push_bind_param::<Text, _>(&row.data)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

/// The type diesel keys the prepared statement of an [`InsertEvents`] by.
struct InsertEventsKind<const N: usize>;

impl<const N: usize> QueryId for InsertEvents<'_, N> {
    type QueryId = InsertEventsKind<N>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<const N: usize> RunQueryDsl<SqliteConnection> for InsertEvents<'_, N> {}
