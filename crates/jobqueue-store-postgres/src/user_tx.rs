//! Transactional enqueue: jobs enqueued on the program's own connection,
//! inside its own transaction ([`PostgresStore::enqueue_in`]).
//!
//! # How the events get their numbers
//!
//! As every writing transaction does ([`crate::seq`]): the jobs are
//! inserted, then their numbers are reserved on the store's reservation
//! connection (committed at once), then the events are appended with those
//! numbers in the program's transaction, deleting the reservation and
//! notifying the store's channel, which PostgreSQL delivers at the commit.
//! Two things differ:
//!
//! - **The owner is the savepoint, not the transaction.** The enqueue runs
//!   in a savepoint of the program's transaction, and the reservation's
//!   owner is that savepoint's own transaction id (read from the `xmin` of
//!   the job row it inserted). If the program rolls back to a savepoint
//!   around the enqueue and then commits, the owner is aborted and readers
//!   skip the reservation, though the top-level transaction committed
//!   (with the program's transaction id as the owner, the reservation would
//!   have outlived its deletion and held readers back for good).
//! - **No place in the publishing queue.** This process does not see the
//!   program's commit, so the events never go to the store's
//!   [`EventSink`](jobqueue_core::EventSink): subscribers get them from the
//!   store, after the commit's notice, through `events_after` (the façade's
//!   tail does this on PostgreSQL).
//!
//! Readers stay below the reservation until the program's transaction
//! ends: a long transaction after `enqueue_in` delays every reader of the
//! event log (not the writers), so enqueue last, just before the commit.

use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jobqueue_core::{Job, NewJob, StoreError};

use crate::error::{db_err, internal};
use crate::rows::sql_count;
use crate::seq::Number;
use crate::tx::{Inner, Staged, append, release, roll_back_to_savepoint, savepoint};

/// The transaction id, as a full 64-bit id, that wrote the row of job `$1`
/// (its `xmin`, widened with the epoch of the current transaction's id: a
/// savepoint's id is assigned after its transaction's, so it is in the same
/// epoch or the next).
const WRITER_SQL: &str = "\
SELECT CASE WHEN s.lo >= (s.top & 4294967295)
            THEN ((s.top >> 32) << 32) | s.lo
            ELSE (((s.top >> 32) + 1) << 32) | s.lo END AS n
FROM (SELECT pg_current_xact_id()::text::int8 AS top, xmin::text::int8 AS lo
      FROM jobs WHERE id = $1) AS s";

/// The session's isolation level and `search_path`, as the transaction
/// sees them.
#[derive(diesel::QueryableByName)]
struct Session {
    #[diesel(sql_type = Text)]
    isolation: String,
    #[diesel(sql_type = Text)]
    search_path: String,
}

/// Enqueues `specs` on `conn`, inside its transaction (or in one of its own
/// when it has none). See [`PostgresStore::enqueue_in`](crate::PostgresStore::enqueue_in).
pub(crate) async fn enqueue_in(
    inner: &Inner,
    conn: &mut AsyncPgConnection,
    specs: Vec<NewJob>,
) -> Result<Vec<Job>, StoreError> {
    for (index, spec) in specs.iter().enumerate() {
        spec.validate().map_err(|m| StoreError::Batch {
            index,
            error: Box::new(StoreError::Invalid(m)),
        })?;
    }
    let now = inner.now()?;
    savepoint(conn).await?;
    let result = enqueue_in_savepoint(inner, conn, now, specs).await;
    match result {
        Ok((jobs, restore)) => {
            if let Some(path) = restore {
                set_search_path(conn, &path).await?;
            }
            release(conn).await?;
            Ok(jobs)
        }
        Err((e, reserved)) => {
            // Undoes the search_path too (a local setting).
            let rolled_back = roll_back_to_savepoint(conn).await;
            if let Some(first) = reserved {
                inner.sequencer.forget(first).await;
            }
            rolled_back?;
            Err(e)
        }
    }
}

/// The jobs, and the `search_path` to restore; or the error, and the first
/// number reserved if numbers were.
type InSavepoint = Result<(Vec<Job>, Option<String>), (StoreError, Option<u64>)>;

async fn enqueue_in_savepoint(
    inner: &Inner,
    conn: &mut AsyncPgConnection,
    now: time::OffsetDateTime,
    specs: Vec<NewJob>,
) -> InSavepoint {
    let restore = enter_schema(conn, inner.schema.as_deref())
        .await
        .map_err(|e| (e, None))?;
    let jobs = crate::ops::insert_new(conn, now, specs)
        .await
        .map_err(|e| (e, None))?;
    let Some(first_job) = <[Job]>::first(&jobs) else {
        return Ok((jobs, restore));
    };
    let owner: Number = diesel::sql_query(WRITER_SQL)
        .bind::<SqlUuid, _>(*first_job.id.as_uuid())
        .get_result(conn)
        .await
        .map_err(|e| (db_err(e), None))?;
    let base = inner
        .sequencer
        .reserve_detached(sql_count(jobs.len()), owner.n)
        .await
        .map_err(|e| (e, None))?;
    let staged = jobs
        .iter()
        .map(|j| Staged::of(j, j.created_event()))
        .collect();
    let routes = inner.routes();
    append(conn, now, staged, &routes, base, &inner.channel, true)
        .await
        .map_err(|e| (e, Some(base.saturating_add(1))))?;
    Ok((jobs, restore))
}

/// Checks that the transaction reads committed data (what the unique-key
/// checks and the reservation's deletion need), and points its
/// `search_path` at the store's schema, if it has one; returns the
/// `search_path` to restore.
async fn enter_schema(
    conn: &mut AsyncPgConnection,
    schema: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let session: Session = diesel::sql_query(
        "SELECT current_setting('transaction_isolation') AS isolation, \
         current_setting('search_path') AS search_path",
    )
    .get_result(conn)
    .await
    .map_err(db_err)?;
    if session.isolation != "read committed" {
        return Err(StoreError::Invalid(format!(
            "enqueue_in needs a READ COMMITTED transaction, not {}",
            session.isolation.to_uppercase()
        )));
    }
    match schema {
        Some(schema) if session.search_path != schema => {
            set_search_path(conn, schema).await?;
            Ok(Some(session.search_path))
        }
        _ => Ok(None),
    }
}

/// Sets the transaction's `search_path` (until it ends or rolls back).
async fn set_search_path(conn: &mut AsyncPgConnection, path: &str) -> Result<(), StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Set {
        #[diesel(sql_type = Text)]
        #[expect(dead_code, reason = "read only to run the statement")]
        value: String,
    }
    let set: Vec<Set> = diesel::sql_query("SELECT set_config('search_path', $1, true) AS value")
        .bind::<Text, _>(path)
        .load(conn)
        .await
        .map_err(db_err)?;
    if set.len() == 1 {
        Ok(())
    } else {
        Err(internal("postgres: set_config returned no row"))
    }
}
