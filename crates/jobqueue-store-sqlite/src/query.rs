//! Queries shared by the reads and the writes: loading and saving jobs.

use std::collections::HashMap;
use std::marker::PhantomData;

use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Text;
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

/// Inserts new jobs and their phases, many rows to a statement (see
/// [`insert_rows`]).
pub(crate) fn insert_jobs(conn: &mut SqliteConnection, jobs: &[Job]) -> Result<(), StoreError> {
    let rows: Vec<JobRow> = jobs.iter().map(JobRow::of).collect();
    let phases: Vec<PhaseRow> = jobs
        .iter()
        .zip(&rows)
        .flat_map(|(job, row)| {
            job.phases
                .iter()
                .enumerate()
                .map(|(i, p)| PhaseRow::of(&row.id, i, p))
        })
        .collect();
    insert_rows::<kind::InsertJobs, _>(conn, &rows).map_err(db_err)?;
    insert_rows::<kind::InsertPhases, _>(conn, &phases).map_err(db_err)?;
    Ok(())
}

/// Inserts `rows` with as few statements as their count allows: chunks of
/// 64, 16, 4 and 1 rows, each chunk size one statement that diesel keeps
/// prepared under `K`. A statement costs about as much again as a small
/// row it inserts (diesel's cache lookup and binding, SQLite's setup), so
/// one statement a row was a large part of the writer's time.
pub(crate) fn insert_rows<K: 'static, R: RowInsert>(
    conn: &mut SqliteConnection,
    rows: &[R],
) -> QueryResult<()> {
    let mut rest = rows;
    while !rest.is_empty() {
        rest = match rest.len() {
            64.. => insert_chunk::<K, R, 64>(conn, rest)?,
            16.. => insert_chunk::<K, R, 16>(conn, rest)?,
            4.. => insert_chunk::<K, R, 4>(conn, rest)?,
            _ => insert_chunk::<K, R, 1>(conn, rest)?,
        };
    }
    Ok(())
}

/// Inserts the first `N` of `rows` and returns the others.
fn insert_chunk<'r, K: 'static, R: RowInsert, const N: usize>(
    conn: &mut SqliteConnection,
    rows: &'r [R],
) -> QueryResult<&'r [R]> {
    let (chunk, rest) = rows.split_at(N.min(rows.len()));
    MultiInsert::<K, R, N> {
        rows: chunk,
        kind: PhantomData,
    }
    .execute(conn)?;
    Ok(rest)
}

/// A row type that can be inserted many to a statement: its table, its
/// columns and their bound values, in one order.
pub(crate) trait RowInsert {
    /// The table.
    const TABLE: &'static str;
    /// The columns, in the order [`RowInsert::walk_binds`] binds them.
    const COLUMNS: &'static [&'static str];
    /// Binds every column's value: `?, ?, ...`.
    fn walk_binds<'b>(&'b self, out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()>;
}

/// Implements [`RowInsert`] for a row struct from its table's columns.
/// Every field must be named (the struct is destructured), so a column
/// added to the row and not here does not compile.
macro_rules! row_insert {
    ($row:ty, $table:ident; $($col:ident),+ $(,)?) => {
        impl $crate::query::RowInsert for $row {
            const TABLE: &'static str = stringify!($table);
            const COLUMNS: &'static [&'static str] =
                &[$(<$crate::schema::$table::$col as diesel::Column>::NAME),+];
            fn walk_binds<'b>(
                &'b self,
                mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
            ) -> diesel::QueryResult<()> {
                let Self { $($col),+ } = self;
                let mut sep = "";
                $(
                    out.push_sql(sep);
                    sep = ", ";
                    out.push_bind_param::<
                        <$crate::schema::$table::$col as diesel::Expression>::SqlType,
                        _,
                    >($col)?;
                )+
                let _ = sep;
                Ok(())
            }
        }
    };
}
pub(crate) use row_insert;

/// `INSERT INTO table (columns) VALUES (...), ...` of exactly `N` rows, so
/// its SQL is fixed by `N` and diesel keeps it prepared under `(K, N)`.
struct MultiInsert<'a, K, R, const N: usize> {
    rows: &'a [R],
    kind: PhantomData<K>,
}

impl<K, R: RowInsert, const N: usize> QueryFragment<Sqlite> for MultiInsert<'_, K, R, N> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        debug_assert_eq!(self.rows.len(), N);
        out.push_sql("INSERT INTO ");
        out.push_identifier(R::TABLE)?;
        out.push_sql(" (");
        for (i, column) in R::COLUMNS.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_identifier(column)?;
        }
        out.push_sql(") VALUES ");
        for (i, row) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            row.walk_binds(out.reborrow())?;
            out.push_sql(")");
        }
        Ok(())
    }
}

/// The type diesel keys the prepared statement of a [`MultiInsert`] by.
struct MultiInsertKind<K, const N: usize>(PhantomData<K>);

impl<K: 'static, R, const N: usize> QueryId for MultiInsert<'_, K, R, N> {
    type QueryId = MultiInsertKind<K, N>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<K, R, const N: usize> RunQueryDsl<SqliteConnection> for MultiInsert<'_, K, R, N> {}

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
    /// `INSERT INTO jobs` of whole [`crate::rows::JobRow`]s.
    pub(crate) struct InsertJobs;
    /// `INSERT INTO phases` of whole [`crate::rows::PhaseRow`]s.
    pub(crate) struct InsertPhases;
    /// `INSERT INTO events` of [`crate::rows::EventRow`]s.
    pub(crate) struct InsertEvents;
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
    // Typed by the row's columns, so diesel reads them by position rather
    // than looking each one up by name in every row.
    type SqlType = <diesel::dsl::AsSelect<PhaseRow, Sqlite> as Expression>::SqlType;
}

/// Inserts event rows, many to a statement.
pub(crate) fn insert_events(conn: &mut SqliteConnection, rows: &[EventRow]) -> QueryResult<()> {
    insert_rows::<kind::InsertEvents, _>(conn, rows)
}
