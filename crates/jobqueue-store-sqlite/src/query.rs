//! Queries shared by the reads and the writes: loading and saving jobs.

use std::collections::HashMap;
use std::marker::PhantomData;

use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Text;
use diesel::sqlite::{Sqlite, SqliteConnection};
use jobqueue_core::{ErrorKind, Job, JobId, Phase, StoreError};

use crate::error::db_err;
use crate::raw::{Key, Query as RawQuery, Statements};
use crate::rows::{EventRow, JobRow, JobState, PhaseRow};
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
    let ids = ids_json(&rows)?;
    let all: Vec<PhaseRow> = Fixed::<kind::PhasesOfJobs, _>::new(PhasesOfJobs {
        columns: PhaseRow::as_select(),
        ids: &ids,
    })
    .load(conn)
    .map_err(db_err)?;
    Ok(assemble(rows, all))
}

/// [`with_phases`] on the writer, through SQLite's own API.
pub(crate) fn with_phases_raw(
    raw: &mut Statements,
    rows: Vec<JobRow>,
) -> Result<Loaded, StoreError> {
    if rows.is_empty() {
        return Ok(Loaded::default());
    }
    let ids = ids_json(&rows)?;
    let mut all = Vec::with_capacity(rows.len());
    let mut q = raw.query(Key::PhasesOf, || {
        format!(
            "SELECT {} FROM phases WHERE job_id IN (SELECT value FROM json_each(?)) \
             ORDER BY job_id, idx",
            PhaseRow::COLUMNS.join(", ")
        )
    })?;
    q.text(&ids)?;
    q.for_each_row(|row| {
        all.push(PhaseRow::read_columns(row)?);
        Ok(())
    })?;
    Ok(assemble(rows, all))
}

/// The ids of `rows` as one JSON array, so the statement that finds their
/// phases has one shape and stays prepared (an `IN (?, ?, ...)` list would
/// be a new statement for every count).
fn ids_json(rows: &[JobRow]) -> Result<String, StoreError> {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    serde_json::to_string(&ids)
        .map_err(|e| StoreError::backend(ErrorKind::Internal, format!("job ids: {e}")))
}

/// The jobs of `rows`, in order, each with its rows of `phases` (in any
/// order of jobs, each job's in index order).
fn assemble(rows: Vec<JobRow>, phases: Vec<PhaseRow>) -> Loaded {
    let mut by_job: HashMap<String, Vec<PhaseRow>> = HashMap::new();
    for p in phases {
        by_job.entry(p.job_id.clone()).or_default().push(p);
    }
    let mut loaded = Loaded {
        jobs: Vec::with_capacity(rows.len()),
        unreadable: Vec::new(),
    };
    for r in rows {
        let phases = by_job.remove(&r.id).unwrap_or_default();
        loaded.push(r, |r| r.into_job(phases));
    }
    loaded
}

/// The jobs of `rows`, each with the phases beside it, already read.
pub(crate) fn with_known_phases(rows: Vec<(JobRow, Vec<Phase>)>) -> Loaded {
    let mut loaded = Loaded {
        jobs: Vec::with_capacity(rows.len()),
        unreadable: Vec::new(),
    };
    for (r, phases) in rows {
        loaded.push(r, |r| r.into_job_with(phases));
    }
    loaded
}

impl Loaded {
    /// Adds the job `make` builds from `r`, or `r` as unreadable.
    fn push(&mut self, r: JobRow, make: impl FnOnce(JobRow) -> Result<Job, StoreError>) {
        let (id, pipeline, webhook_url, attempt) = (
            r.id.clone(),
            r.pipeline.clone(),
            r.webhook_url.clone(),
            r.attempt,
        );
        match make(r) {
            Ok(job) => self.jobs.push(job),
            Err(error) => self.unreadable.push(Unreadable {
                id,
                pipeline,
                webhook_url,
                attempt,
                error,
            }),
        }
    }
}

/// Inserts new jobs and their phases, many rows to a statement (see
/// [`insert_rows`]).
pub(crate) fn insert_jobs(raw: &mut Statements, jobs: &[Job]) -> Result<(), StoreError> {
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
    insert_rows(raw, &rows)?;
    insert_rows(raw, &phases)
}

/// Inserts `rows` with as few statements as their count allows: chunks of
/// 64, 16, 4 and 1 rows, each chunk size one statement kept prepared. A
/// statement costs about as much again as a small row it inserts, so one
/// statement a row was a large part of the writer's time.
pub(crate) fn insert_rows<R: RowInsert>(
    raw: &mut Statements,
    rows: &[R],
) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let n = match rest.len() {
            64.. => 64,
            16.. => 16,
            4.. => 4,
            _ => 1,
        };
        let (chunk, tail) = rest.split_at(n);
        let mut q = raw.query(Key::Insert(R::TABLE, n), || insert_sql::<R>(n))?;
        for row in chunk {
            row.bind_columns(&mut q)?;
        }
        q.execute()?;
        rest = tail;
    }
    Ok(())
}

/// `INSERT OR FAIL INTO table (columns) VALUES (?, ...), ...` of `n` rows
/// (on `OR FAIL`, see [`crate::raw`]).
pub(crate) fn insert_sql<R: RowInsert>(n: usize) -> String {
    let one = format!("({})", vec!["?"; R::COLUMNS.len()].join(", "));
    format!(
        "INSERT OR FAIL INTO `{}` ({}) VALUES {}",
        R::TABLE,
        R::COLUMNS
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", "),
        vec![one; n].join(", ")
    )
}

/// A row type that can be inserted many to a statement: its table, its
/// columns and their bound values, in one order.
pub(crate) trait RowInsert {
    /// The table.
    const TABLE: &'static str;
    /// The columns, in the order [`RowInsert::bind_columns`] binds them.
    const COLUMNS: &'static [&'static str];
    /// Binds every column's value to the next parameters of `q`.
    fn bind_columns<'a>(&'a self, q: &mut RawQuery<'_, 'a>) -> Result<(), StoreError>;
    /// The row from the columns of `row`, in [`RowInsert::COLUMNS`] order.
    fn read_columns(row: &crate::raw::Row<'_>) -> Result<Self, StoreError>
    where
        Self: Sized;
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
            fn bind_columns<'a>(
                &'a self,
                q: &mut $crate::raw::Query<'_, 'a>,
            ) -> Result<(), jobqueue_core::StoreError> {
                let Self { $($col),+ } = self;
                $( $crate::raw::Bind::bind($col, q)?; )+
                Ok(())
            }
            fn read_columns(
                row: &$crate::raw::Row<'_>,
            ) -> Result<Self, jobqueue_core::StoreError> {
                let mut i = 0;
                $(
                    let $col = $crate::raw::Read::read(row, i)?;
                    i += 1;
                )+
                let _ = i;
                Ok(Self { $($col),+ })
            }
        }
    };
}
pub(crate) use row_insert;

/// Writes what changed from `before` to `after` (the same job): the changed
/// columns of the job row, and each changed phase's row.
pub(crate) fn save_job(raw: &mut Statements, before: &Job, after: &Job) -> Result<(), StoreError> {
    let id = after.id.to_string();
    let state = JobState::of(after);
    let shape = state.changed_from(&JobState::of(before));
    if shape != 0 {
        // The SQL depends only on the set of changed columns, so each set
        // is prepared once.
        let mut q = raw.query(Key::UpdateJob(shape), || JobState::sql(shape))?;
        state.bind_changed(shape, &mut q)?;
        q.text(&id)?;
        q.execute()?;
    }
    for (i, p) in after.phases.iter().enumerate() {
        if before.phases.get(i).is_none_or(|old| old == p) {
            continue;
        }
        // A phase row has no index but its key, so it is written whole:
        // one statement shape, and no diff to build.
        let new = PhaseRow::of(&id, i, p);
        let mut q = raw.query(Key::SavePhase, PhaseRow::update_sql)?;
        new.bind_update(&mut q)?;
        q.execute()?;
    }
    Ok(())
}

/// A diesel statement whose SQL is fixed by its kind `K`, which diesel then
/// keeps prepared under `K` (its cheapest path: no SQL built per run), for
/// the writer's frequent statements that stay on diesel (the readers' phase
/// lookup, the sequence counter). Only for statements that cannot change
/// shape. The hottest statements run through SQLite's own API instead (see
/// [`crate::raw`]).
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
    /// [`super::PhasesOfJobs`].
    pub(crate) struct PhasesOfJobs;
    /// `UPDATE store_state SET last_seq = ?`.
    pub(crate) struct SaveLastSeq;
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
pub(crate) fn insert_events(raw: &mut Statements, rows: &[EventRow]) -> Result<(), StoreError> {
    insert_rows(raw, rows)
}
