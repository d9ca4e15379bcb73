//! The write operations, each inside one transaction (see [`crate::tx`]).
//!
//! Each mirrors [`jobqueue_core::MemoryStore`] step by step: it locks the
//! rows it changes, applies core's transition method to the job as read
//! (so the transition table decides, as in every store), writes what
//! changed, and stages the events the method returned. A check that fails
//! returns before anything is written; one that fails later rolls the whole
//! transaction back.
//!
//! # Fencing
//!
//! A leased operation starts with
//! `SELECT ... FROM jobs WHERE id = $1 AND lease = $2 AND status = 'running' FOR UPDATE`:
//! the database compares the token and locks the row in one step, so no
//! other transaction can change the lease until this one ends. Every
//! `UPDATE` of a job or its phases then repeats the comparison in its own
//! `WHERE` (`lease IS NOT DISTINCT FROM` the lease the job was read with),
//! and an update that matches fewer rows than it should fails the
//! operation with `LeaseLost`. No process-local state decides a lease.
//!
//! # Lock order
//!
//! Job rows are locked before anything else, one job at a time or many in
//! one statement in a fixed order (`ORDER BY id` for recovery) or with
//! `SKIP LOCKED` (claims, retention). The event counter is locked only by
//! the reservation step, one statement on a connection of its own that
//! waits for nothing else (see [`crate::seq`]). So no two transactions wait
//! on each other in a cycle.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Json, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jobqueue_core::apply::lease_until;
use jobqueue_core::machine::job_transition;
use jobqueue_core::unique::Held;
use jobqueue_core::{
    AttemptOutcome, CancelOutcome, ClaimRequest, Claimed, Delivery, DeliveryId, DeliveryStatus,
    ErrorKind, EventData, FailureOutcome, Job, JobAction, JobError, JobId, JobStatus, Lease,
    LeaseToken, NewJob, Next, Progress, Pruned, RecoverScope, Renewal, StoreError,
};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::deps;
use crate::error::{db_err, internal, is_period_key_violation, is_unique_key_violation};
use crate::rows::{DeliveryRow, JobRow, PhaseRow, columns, jobs_of, sql_count};
use crate::schema::{jobs, paused_pipelines, phases, webhook_deliveries};
use crate::seq::txid_current;
use crate::tx::{Tx, release, roll_back_to_savepoint, savepoint};

/// How often an insert that lost a unique-key race looks for the holder
/// again before it gives up with `Busy`: the holder it raced can only end
/// (and free the key) between two looks, and another take it, so a few
/// rounds settle it.
const UNIQUE_KEY_ROUNDS: usize = 8;

/// The most jobs one `INSERT` writes (PostgreSQL takes at most 65535
/// parameters a statement; a job row has 25).
const INSERT_CHUNK: usize = 1000;

/// `'a', 'b'`: the names of the job statuses `pick` selects, as SQL
/// literals, so a query repeats an index's predicate as text.
fn status_literals(pick: fn(JobStatus) -> bool) -> String {
    JobStatus::ALL
        .iter()
        .filter(|s| pick(**s))
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

// ------------------------------------------------------------- text checks

/// Refuses a name, key or URL PostgreSQL's text cannot hold (U+0000).
fn check_text(what: &str, s: &str) -> Result<(), StoreError> {
    if s.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "{what} contains the NUL character (U+0000), which PostgreSQL text cannot hold"
        )));
    }
    Ok(())
}

/// A diagnostic message (an error, a progress note) PostgreSQL's text can
/// hold: U+0000 becomes U+FFFD. Messages come from code the queue does not
/// control; refusing one would leave its job running until recovery.
fn clean(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

fn check_spec(spec: &NewJob) -> Result<(), StoreError> {
    spec.validate().map_err(StoreError::Invalid)?;
    check_text("pipeline", &spec.pipeline)?;
    if let Some(key) = &spec.unique_key {
        check_text("unique_key", key)?;
    }
    if let Some(url) = &spec.webhook_url {
        check_text("webhook_url", url)?;
    }
    for name in &spec.phases {
        check_text("phase name", name)?;
    }
    Ok(())
}

// ------------------------------------------------------------ loading jobs

/// The jobs of `rows` with their phases, in the order of `rows`.
async fn with_phases(
    conn: &mut AsyncPgConnection,
    rows: Vec<JobRow>,
) -> Result<Vec<Job>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let phases: Vec<PhaseRow> = phases::table
        .filter(phases::job_id.eq_any(&ids))
        .order((phases::job_id, phases::idx))
        .select(PhaseRow::as_select())
        .load(conn)
        .await
        .map_err(db_err)?;
    jobs_of(rows, phases)
}

/// Job `id`, its row locked until the transaction ends.
pub(crate) async fn lock_job(tx: &mut Tx, id: JobId) -> Result<Job, StoreError> {
    let rows: Vec<JobRow> = jobs::table
        .find(id.as_uuid())
        .select(JobRow::as_select())
        .for_update()
        .load(tx.conn())
        .await
        .map_err(db_err)?;
    let mut jobs = with_phases(tx.conn(), rows).await?;
    jobs.pop().ok_or(StoreError::JobNotFound(id))
}

/// The job `lease` holds, its row locked; `JobNotFound` or `LeaseLost`
/// otherwise. The token is compared by the database, in the locking read.
async fn leased(tx: &mut Tx, lease: &Lease) -> Result<Job, StoreError> {
    let ids = [*lease.job_id.as_uuid()];
    let tokens = [*lease.token.as_uuid()];
    match lock_leased(tx, &ids, &tokens).await?.pop() {
        Some(job) => Ok(job),
        None => Err(lease_error(tx.conn(), lease.job_id).await),
    }
}

/// The running jobs among `ids` whose lease is among `tokens`, locked in id
/// order, with their phases. The caller pairs each job with its own token:
/// the read only narrows, the database compares.
///
/// The same statement learns the transaction's id (see [`Tx::owner`]), so
/// appending the events later takes no round trip of its own for it.
async fn lock_leased(tx: &mut Tx, ids: &[Uuid], tokens: &[Uuid]) -> Result<Vec<Job>, StoreError> {
    let found: Vec<(JobRow, i64)> = jobs::table
        .filter(jobs::id.eq_any(ids))
        .filter(jobs::lease.eq_any(tokens))
        .filter(jobs::status.eq(JobStatus::Running.as_str()))
        .order(jobs::id)
        .select((JobRow::as_select(), txid_current()))
        .for_update()
        .load(tx.conn())
        .await
        .map_err(db_err)?;
    let mut rows = Vec::with_capacity(found.len());
    for (row, owner) in found {
        tx.owner = Some(owner);
        rows.push(row);
    }
    with_phases(tx.conn(), rows).await
}

/// Why a lease check found no row: the job is gone, or its lease is not
/// that one.
async fn lease_error(conn: &mut AsyncPgConnection, id: JobId) -> StoreError {
    let found: Result<Option<Uuid>, _> = jobs::table
        .find(id.as_uuid())
        .select(jobs::id)
        .first(conn)
        .await
        .optional();
    match found {
        Ok(Some(_)) => StoreError::LeaseLost(id),
        Ok(None) => StoreError::JobNotFound(id),
        Err(e) => db_err(e),
    }
}

// ------------------------------------------------------------- saving jobs

/// Rewrites the job columns a transition may change, for each job whose
/// lease is still the one it was read with (`fence`).
const SAVE_JOBS_SQL: &str = "\
UPDATE jobs SET status = u.status, attempt = u.attempt, run_at = u.run_at,
    started_at = u.started_at, finished_at = u.finished_at, stale_at = u.stale_at,
    error_phase = u.error_phase, error_message = u.error_message,
    error_attempt = u.error_attempt, interrupted_phase = u.interrupted_phase,
    interrupted_at = u.interrupted_at, interrupted_percent = u.interrupted_percent,
    interrupted_message = u.interrupted_message, cancel_requested = u.cancel_requested,
    lease = u.lease, lease_expires_at = u.lease_expires_at
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::timestamptz[],
        $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[],
        $11::int8[], $12::text[], $13::timestamptz[], $14::int2[], $15::text[], $16::bool[],
        $17::uuid[], $18::timestamptz[])
    AS u (id, fence, status, attempt, run_at, started_at, finished_at, stale_at,
        error_phase, error_message, error_attempt, interrupted_phase, interrupted_at,
        interrupted_percent, interrupted_message, cancel_requested, lease, lease_expires_at)
WHERE jobs.id = u.id AND jobs.lease IS NOT DISTINCT FROM u.fence";

/// Rewrites phases, each only while its job's lease is still `fence`.
const SAVE_PHASES_SQL: &str = "\
UPDATE phases SET name = u.name, status = u.status, attempts = u.attempts,
    progress_percent = u.progress_percent, progress_message = u.progress_message,
    result = u.result, error = u.error, started_at = u.started_at,
    finished_at = u.finished_at, checkpoint = u.checkpoint
FROM unnest($1::uuid[], $2::int4[], $3::uuid[], $4::text[], $5::text[], $6::int8[],
        $7::int2[], $8::text[], $9::json[], $10::text[], $11::timestamptz[],
        $12::timestamptz[], $13::json[])
    AS u (job_id, idx, fence, name, status, attempts, progress_percent, progress_message,
        result, error, started_at, finished_at, checkpoint),
    jobs
WHERE phases.job_id = u.job_id AND phases.idx = u.idx
    AND jobs.id = u.job_id AND jobs.lease IS NOT DISTINCT FROM u.fence";

/// The failure when a fenced write matched fewer rows than it should.
fn fence_failed(before: &[Job]) -> StoreError {
    match before {
        [job] if job.lease.is_some() => StoreError::LeaseLost(job.id),
        _ => internal("postgres: a locked job changed underneath its transaction"),
    }
}

/// Refuses a change to a column the save does not write: they are fixed at
/// enqueue, and a core change that altered one must not be lost silently.
fn check_fixed(before: &Job, after: &Job) -> Result<(), StoreError> {
    let same = before.id == after.id
        && before.pipeline == after.pipeline
        && before.priority == after.priority
        && before.unique_key == after.unique_key
        && before.period_key == after.period_key
        && before.max_attempts == after.max_attempts
        && before.created_at == after.created_at
        && before.webhook_url == after.webhook_url
        && before.phases.len() == after.phases.len();
    if same {
        Ok(())
    } else {
        Err(internal(format!(
            "postgres: job {}: a transition changed a column this store writes only at enqueue",
            before.id
        )))
    }
}

/// Writes what changed from `before` to `after` (pairwise the same jobs):
/// the changed phases first, then the job rows, each fenced on the lease
/// the job was read with.
async fn save(tx: &mut Tx, before: &[Job], after: &[Job]) -> Result<(), StoreError> {
    for (b, a) in before.iter().zip(after) {
        check_fixed(b, a)?;
    }
    save_phases(tx, before, after).await?;
    let changed: Vec<(&Job, &Job)> = before
        .iter()
        .zip(after)
        .filter(|(b, a)| JobRow::of(b) != JobRow::of(a))
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let n = changed.len();
    let fences: Vec<Option<Uuid>> = changed
        .iter()
        .map(|(b, _)| b.lease.map(|l| *l.as_uuid()))
        .collect();
    let rows = changed.iter().map(|(_, a)| JobRow::of(a));
    columns!(rows, n => id, status, attempt, run_at, started_at, finished_at, stale_at,
        error_phase, error_message, error_attempt, interrupted_phase, interrupted_at,
        interrupted_percent, interrupted_message, cancel_requested, lease, lease_expires_at);
    let updated = diesel::sql_query(SAVE_JOBS_SQL)
        .bind::<Array<SqlUuid>, _>(id)
        .bind::<Array<Nullable<SqlUuid>>, _>(fences)
        .bind::<Array<Text>, _>(status)
        .bind::<Array<BigInt>, _>(attempt)
        .bind::<Array<Timestamptz>, _>(run_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(started_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(finished_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(stale_at)
        .bind::<Array<Nullable<Text>>, _>(error_phase)
        .bind::<Array<Nullable<Text>>, _>(error_message)
        .bind::<Array<Nullable<BigInt>>, _>(error_attempt)
        .bind::<Array<Nullable<Text>>, _>(interrupted_phase)
        .bind::<Array<Nullable<Timestamptz>>, _>(interrupted_at)
        .bind::<Array<Nullable<SmallInt>>, _>(interrupted_percent)
        .bind::<Array<Nullable<Text>>, _>(interrupted_message)
        .bind::<Array<Bool>, _>(cancel_requested)
        .bind::<Array<Nullable<SqlUuid>>, _>(lease)
        .bind::<Array<Nullable<Timestamptz>>, _>(lease_expires_at)
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    if updated != n {
        return Err(fence_failed(before));
    }
    Ok(())
}

async fn save_phases(tx: &mut Tx, before: &[Job], after: &[Job]) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    let mut fences = Vec::new();
    for (b, a) in before.iter().zip(after) {
        for (i, (old, new)) in b.phases.iter().zip(&a.phases).enumerate() {
            if old != new {
                rows.push(PhaseRow::of(*a.id.as_uuid(), i, new));
                fences.push(b.lease.map(|l| *l.as_uuid()));
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    columns!(rows, n => job_id, idx, name, status, attempts, progress_percent,
        progress_message, result, error, started_at, finished_at, checkpoint);
    let updated = diesel::sql_query(SAVE_PHASES_SQL)
        .bind::<Array<SqlUuid>, _>(job_id)
        .bind::<Array<Integer>, _>(idx)
        .bind::<Array<Nullable<SqlUuid>>, _>(fences)
        .bind::<Array<Text>, _>(name)
        .bind::<Array<Text>, _>(status)
        .bind::<Array<BigInt>, _>(attempts)
        .bind::<Array<Nullable<SmallInt>>, _>(progress_percent)
        .bind::<Array<Nullable<Text>>, _>(progress_message)
        .bind::<Array<Nullable<Json>>, _>(result)
        .bind::<Array<Nullable<Text>>, _>(error)
        .bind::<Array<Nullable<Timestamptz>>, _>(started_at)
        .bind::<Array<Nullable<Timestamptz>>, _>(finished_at)
        .bind::<Array<Nullable<Json>>, _>(checkpoint)
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    if updated != n {
        return Err(fence_failed(before));
    }
    Ok(())
}

/// Saves one job and stages its events.
pub(crate) async fn save_and_emit(
    tx: &mut Tx,
    before: &Job,
    after: &Job,
    events: Vec<EventData>,
) -> Result<(), StoreError> {
    save(
        tx,
        std::slice::from_ref(before),
        std::slice::from_ref(after),
    )
    .await?;
    for data in events {
        tx.emit(after, data);
    }
    Ok(())
}

/// Saves one job and stages its events; if it ended, settles its
/// dependents (see [`deps::settle`]).
async fn commit(
    tx: &mut Tx,
    before: &Job,
    after: &Job,
    events: Vec<EventData>,
) -> Result<(), StoreError> {
    save_and_emit(tx, before, after, events).await?;
    deps::settle(tx, after.id, after.status).await
}

// ------------------------------------------------------------------ enqueue

/// Inserts new jobs and their phases.
async fn insert_jobs(
    conn: &mut AsyncPgConnection,
    jobs: &[Job],
) -> Result<(), diesel::result::Error> {
    for chunk in jobs.chunks(INSERT_CHUNK) {
        let rows: Vec<JobRow> = chunk.iter().map(JobRow::of).collect();
        diesel::insert_into(jobs::table)
            .values(&rows)
            .execute(conn)
            .await?;
        let phases: Vec<PhaseRow> = chunk
            .iter()
            .flat_map(|j| {
                j.phases
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PhaseRow::of(*j.id.as_uuid(), i, p))
            })
            .collect();
        for rows in phases.chunks(INSERT_CHUNK) {
            diesel::insert_into(phases::table)
                .values(rows)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
}

/// The holders of the keys of `jobs`: the active (queued or running)
/// holders of their unique keys, and the holders of their period keys in
/// any state.
async fn holders(
    conn: &mut AsyncPgConnection,
    jobs: &[Job],
) -> Result<(HashMap<String, JobId>, HashMap<String, JobId>), StoreError> {
    let keys: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.unique_key.as_deref())
        .collect();
    let period_keys: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.period_key.as_deref())
        .collect();
    let active_holders = if keys.is_empty() {
        HashMap::new()
    } else {
        active_holders(conn, &keys).await?
    };
    let mut period_holders = HashMap::new();
    if !period_keys.is_empty() {
        let rows: Vec<(Option<String>, Uuid)> = jobs::table
            .filter(jobs::period_key.eq_any(period_keys))
            .select((jobs::period_key, jobs::id))
            .load(conn)
            .await
            .map_err(db_err)?;
        period_holders = by_key(rows);
    }
    Ok((active_holders, period_holders))
}

/// The active (queued or running) holders of `keys`.
async fn active_holders(
    conn: &mut AsyncPgConnection,
    keys: &[&str],
) -> Result<HashMap<String, JobId>, StoreError> {
    let active: Vec<&str> = JobStatus::ALL
        .iter()
        .filter(|s| s.is_active())
        .map(|s| s.as_str())
        .collect();
    let rows: Vec<(Option<String>, Uuid)> = jobs::table
        .filter(jobs::unique_key.eq_any(keys))
        .filter(jobs::status.eq_any(active))
        .select((jobs::unique_key, jobs::id))
        .load(conn)
        .await
        .map_err(db_err)?;
    Ok(by_key(rows))
}

fn by_key(rows: Vec<(Option<String>, Uuid)>) -> HashMap<String, JobId> {
    rows.into_iter()
        .filter_map(|(k, id)| k.map(|k| (k, JobId::from_uuid(id))))
        .collect()
}

/// The first job of `jobs` whose key is held, as every store decides it
/// ([`jobqueue_core::unique::first_duplicate`]), as the batch's error.
fn first_duplicate(
    jobs: &[Job],
    (active, period): &(HashMap<String, JobId>, HashMap<String, JobId>),
) -> Option<StoreError> {
    let found = jobqueue_core::unique::first_duplicate(jobs, |held| {
        Ok::<_, std::convert::Infallible>(match held {
            Held::Active(key) => active.get(key).copied(),
            Held::Period(key) => period.get(key).copied(),
        })
    });
    match found {
        Ok(Some((index, error))) => Some(StoreError::Batch {
            index,
            error: Box::new(error),
        }),
        Ok(None) | Err(_) => None,
    }
}

/// Persists `specs` (all or none) with their `job.created` events. A unique
/// key held by an active job, or a period key held by any job, or either
/// twice in the batch, is refused by its unique index (SQLSTATE 23505 on
/// `jobs_unique_key` or `jobs_period_key`) and reported as `Duplicate` or
/// `DuplicateInPeriod` naming the holder, at the first job of the batch that
/// has one.
pub(crate) async fn enqueue(tx: &mut Tx, specs: Vec<NewJob>) -> Result<Vec<Job>, StoreError> {
    let now = tx.now;
    let jobs = insert_new(tx.conn(), now, specs).await?;
    for job in &jobs {
        tx.emit(job, job.created_event());
    }
    Ok(jobs)
}

/// Inserts the jobs of `specs`, enqueued at `now`, on `conn` (inside its
/// transaction), as [`enqueue`] does, without their events: the caller
/// appends them.
pub(crate) async fn insert_new(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
    specs: Vec<NewJob>,
) -> Result<Vec<Job>, StoreError> {
    for (i, spec) in specs.iter().enumerate() {
        check_spec(spec).map_err(|e| StoreError::Batch {
            index: i,
            error: Box::new(e),
        })?;
    }
    let mut waits = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let unmet = deps::unmet(conn, spec)
            .await
            .map_err(|e| StoreError::Batch {
                index: i,
                error: Box::new(e),
            })?;
        waits.push((unmet, spec.on_dependency_failure));
    }
    let jobs: Vec<Job> = specs.into_iter().map(|s| Job::queued(s, now)).collect();
    if jobs
        .iter()
        .all(|j| j.unique_key.is_none() && j.period_key.is_none())
    {
        insert_jobs(conn, &jobs).await.map_err(db_err)?;
    } else {
        insert_keyed(conn, &jobs).await?;
    }
    for (job, (unmet, policy)) in jobs.iter().zip(&waits) {
        deps::insert(conn, job, unmet, *policy).await?;
    }
    Ok(jobs)
}

/// Inserts jobs that hold keys: a savepoint around the insert, so a
/// violation can be undone and its holder looked up in the same transaction.
async fn insert_keyed(conn: &mut AsyncPgConnection, jobs: &[Job]) -> Result<(), StoreError> {
    for _ in 0..UNIQUE_KEY_ROUNDS {
        let held = holders(conn, jobs).await?;
        if let Some(e) = first_duplicate(jobs, &held) {
            return Err(e);
        }
        savepoint(conn).await?;
        match insert_jobs(conn, jobs).await {
            Ok(()) => return release(conn).await,
            // A job that took a key after the look above committed first;
            // look again.
            Err(e) if is_unique_key_violation(&e) || is_period_key_violation(&e) => {
                roll_back_to_savepoint(conn).await?;
            }
            Err(e) => {
                roll_back_to_savepoint(conn).await?;
                return Err(db_err(e));
            }
        }
    }
    Err(busy_key())
}

fn busy_key() -> StoreError {
    StoreError::backend(
        ErrorKind::Busy,
        "postgres: a unique key kept changing hands while it was checked; try again",
    )
}

// -------------------------------------------------------------------- claim

/// The claim's read: the queued jobs whose time has come, in claim order,
/// locked, skipping those another claim holds. It walks `jobs_claim`.
pub(crate) static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM jobs \
         WHERE status = '{}' AND run_at <= $1 \
           AND NOT EXISTS (SELECT 1 FROM job_dependencies d WHERE d.job_id = jobs.id) \
           AND NOT (pipeline = ANY($2)) \
           AND pipeline NOT IN (SELECT pipeline FROM paused_pipelines) \
           AND ($3::text[] IS NULL OR pipeline = ANY($3)) \
         ORDER BY priority DESC, run_at, created_at, id \
         LIMIT $4 \
         FOR UPDATE SKIP LOCKED",
        JobStatus::Queued.as_str()
    )
});

/// Running jobs of the capped pipelines `$1`, counted by pipeline.
const RUNNING_SQL: &str = "\
SELECT pipeline, count(*) AS n FROM jobs \
WHERE status = 'running' AND pipeline = ANY($1) GROUP BY pipeline";

#[derive(QueryableByName)]
struct Running {
    #[diesel(sql_type = Text)]
    pipeline: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The claim's limit and excluded pipelines under the request's caps that
/// hold across processes. The capped pipelines' advisory locks (one per
/// pipeline, held to the commit, taken in name order so two claims never
/// wait on each other crosswise) serialise the claims that may take their
/// jobs, so each counts the running jobs the others committed. As in the
/// runtime, a batch may hold jobs of any pipeline, so its size is at most
/// the room left under the tightest cap it could reach.
async fn within_caps(tx: &mut Tx, req: &ClaimRequest) -> Result<(usize, Vec<String>), StoreError> {
    let mut exclude = req.exclude_pipelines.clone();
    let mut caps: Vec<&(String, usize)> = req
        .pipeline_caps
        .iter()
        .filter(|(p, _)| !exclude.contains(p))
        .filter(|(p, _)| req.pipelines.as_ref().is_none_or(|ps| ps.contains(p)))
        .collect();
    if caps.is_empty() {
        return Ok((req.limit, exclude));
    }
    caps.sort();
    for (pipeline, _) in &caps {
        diesel::sql_query(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.cap.' || $1))",
        )
        .bind::<Text, _>(pipeline)
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    }
    let names: Vec<&str> = caps.iter().map(|(p, _)| p.as_str()).collect();
    let running: Vec<Running> = diesel::sql_query(RUNNING_SQL)
        .bind::<Array<Text>, _>(&names)
        .load(tx.conn())
        .await
        .map_err(db_err)?;
    let mut limit = req.limit;
    for (pipeline, cap) in caps {
        let used = running
            .iter()
            .find(|r| &r.pipeline == pipeline)
            .map_or(0, |r| usize::try_from(r.n).unwrap_or(usize::MAX));
        if used >= *cap {
            exclude.push(pipeline.clone());
        } else {
            limit = limit.min(cap.saturating_sub(used));
        }
    }
    Ok((limit, exclude))
}

pub(crate) async fn claim(tx: &mut Tx, req: ClaimRequest) -> Result<Vec<Claimed>, StoreError> {
    let now = tx.now;
    let until = lease_until(now, req.lease_for)?;
    if req.limit == 0 {
        return Ok(Vec::new());
    }
    let (limit, exclude) = within_caps(tx, &req).await?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<JobRow> = diesel::sql_query(CLAIM_SQL.as_str())
        .bind::<Timestamptz, _>(now)
        .bind::<Array<Text>, _>(&exclude)
        .bind::<Nullable<Array<Text>>, _>(req.pipelines.as_ref())
        .bind::<BigInt, _>(sql_count(limit))
        .load(tx.conn())
        .await
        .map_err(db_err)?;
    let before = with_phases(tx.conn(), rows).await?;
    let mut after = before.clone();
    let mut events = Vec::with_capacity(after.len());
    for job in &mut after {
        events.push(job.claim_and_start(LeaseToken::new(), until, now, req.start_phase)?);
    }
    save(tx, &before, &after).await?;
    // Each attempt records who runs it, or that no one said.
    if !after.is_empty() {
        let ids: Vec<Uuid> = after.iter().map(|j| *j.id.as_uuid()).collect();
        diesel::sql_query("UPDATE jobs SET worker = $1 WHERE id = ANY($2)")
            .bind::<Nullable<Text>, _>(req.worker.as_deref())
            .bind::<Array<diesel::sql_types::Uuid>, _>(&ids)
            .execute(tx.conn())
            .await
            .map_err(db_err)?;
    }
    let mut claimed = Vec::with_capacity(after.len());
    for (job, data) in after.into_iter().zip(events) {
        for data in data {
            tx.emit(&job, data);
        }
        let token = job
            .lease
            .ok_or_else(|| internal("postgres: a claimed job has no lease"))?;
        let lease = Lease {
            job_id: job.id,
            token,
            attempt: job.attempt,
        };
        claimed.push(Claimed { lease, job });
    }
    Ok(claimed)
}

// ------------------------------------------------------------ leased writes

/// Renews a lease in one statement, fenced on the token. Runs outside a
/// transaction: it changes one row and appends no event.
pub(crate) async fn heartbeat(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
    lease: &Lease,
    extend: Duration,
) -> Result<bool, StoreError> {
    let until = match lease_until(now, extend) {
        Ok(until) => until,
        // As `MemoryStore`: a lost lease is reported before a bad duration.
        Err(e) => {
            let fenced: Option<Uuid> = jobs::table
                .filter(jobs::id.eq(lease.job_id.as_uuid()))
                .filter(jobs::lease.eq(lease.token.as_uuid()))
                .filter(jobs::status.eq(JobStatus::Running.as_str()))
                .select(jobs::id)
                .first(conn)
                .await
                .optional()
                .map_err(db_err)?;
            return match fenced {
                Some(_) => Err(e),
                None => Err(lease_error(conn, lease.job_id).await),
            };
        }
    };
    let requested: Option<bool> = diesel::update(
        jobs::table
            .filter(jobs::id.eq(lease.job_id.as_uuid()))
            .filter(jobs::lease.eq(lease.token.as_uuid()))
            .filter(jobs::status.eq(JobStatus::Running.as_str())),
    )
    .set(jobs::lease_expires_at.eq(Some(until)))
    .returning(jobs::cancel_requested)
    .get_result(conn)
    .await
    .optional()
    .map_err(db_err)?;
    match requested {
        Some(requested) => Ok(requested),
        None => Err(lease_error(conn, lease.job_id).await),
    }
}

/// Renews each lease of `$1`/`$2` (job ids and tokens) still held until
/// `$3`, locking the rows in id order (as the rescue does, so the two never
/// deadlock), fenced on the token; returns the renewed leases.
const HEARTBEAT_MANY_SQL: &str = "\
WITH l AS (
    SELECT jobs.id, jobs.lease FROM jobs
    JOIN unnest($1::uuid[], $2::uuid[]) AS u (id, lease)
        ON jobs.id = u.id AND jobs.lease = u.lease
    WHERE jobs.status = 'running'
    ORDER BY jobs.id
    FOR UPDATE OF jobs
)
UPDATE jobs SET lease_expires_at = $3 FROM l
WHERE jobs.id = l.id AND jobs.lease = l.lease
RETURNING jobs.id, jobs.lease, jobs.cancel_requested";

/// One renewed lease, as [`HEARTBEAT_MANY_SQL`] returns it.
#[derive(QueryableByName)]
struct Renewed {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    lease: Uuid,
    #[diesel(sql_type = Bool)]
    cancel_requested: bool,
}

/// Renews the leases still held in one statement, outside a transaction
/// (it appends no event); `None` when `extend` is too long to represent,
/// for the caller to report lease by lease as [`heartbeat`] does.
pub(crate) async fn heartbeat_many(
    conn: &mut AsyncPgConnection,
    now: OffsetDateTime,
    leases: &[Lease],
    extend: Duration,
) -> Result<Option<Vec<Renewal>>, StoreError> {
    let Ok(until) = lease_until(now, extend) else {
        return Ok(None);
    };
    let ids: Vec<Uuid> = leases.iter().map(|l| *l.job_id.as_uuid()).collect();
    let tokens: Vec<Uuid> = leases.iter().map(|l| *l.token.as_uuid()).collect();
    let renewed: Vec<Renewed> = diesel::sql_query(HEARTBEAT_MANY_SQL)
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<SqlUuid>, _>(&tokens)
        .bind::<Timestamptz, _>(until)
        .load(conn)
        .await
        .map_err(db_err)?;
    let held: HashMap<(Uuid, Uuid), bool> = renewed
        .into_iter()
        .map(|r| ((r.id, r.lease), r.cancel_requested))
        .collect();
    Ok(Some(
        ids.iter()
            .zip(&tokens)
            .map(|(id, token)| match held.get(&(*id, *token)) {
                Some(&cancel_requested) => Renewal::Held { cancel_requested },
                None => Renewal::Lost,
            })
            .collect(),
    ))
}

pub(crate) async fn reshape_phases(
    tx: &mut Tx,
    lease: &Lease,
    names: Vec<String>,
) -> Result<Job, StoreError> {
    let mut job = leased(tx, lease).await?;
    for name in &names {
        check_text("phase name", name)?;
    }
    job.reshape_phases(&names)?;
    let id = *job.id.as_uuid();
    let token = lease.token.as_uuid();
    // Fenced like every leased write: the phases go only while the lease
    // is this one (and the row stays locked until the commit).
    let fenced = jobs::table
        .filter(jobs::id.eq(id))
        .filter(jobs::lease.eq(token))
        .select(jobs::id);
    diesel::delete(
        phases::table
            .filter(phases::job_id.eq(id))
            .filter(phases::job_id.eq_any(fenced)),
    )
    .execute(tx.conn())
    .await
    .map_err(db_err)?;
    let rows: Vec<PhaseRow> = job
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| PhaseRow::of(id, i, p))
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(phases::table)
            .values(&rows)
            .execute(tx.conn())
            .await
            .map_err(db_err)?;
    }
    Ok(job)
}

/// Loads the job `lease` holds, applies `change` (one of core's `Job`
/// transition methods) at the transaction's time, and saves the job with
/// the events it returned. A refused change writes nothing.
async fn change_leased(
    tx: &mut Tx,
    lease: &Lease,
    change: impl FnOnce(&mut Job, OffsetDateTime) -> Result<Vec<EventData>, StoreError>,
) -> Result<Job, StoreError> {
    let now = tx.now;
    let before = leased(tx, lease).await?;
    let mut job = before.clone();
    let events = change(&mut job, now)?;
    commit(tx, &before, &job, events).await?;
    Ok(job)
}

pub(crate) async fn phase_started(
    tx: &mut Tx,
    lease: &Lease,
    index: usize,
) -> Result<(), StoreError> {
    change_leased(tx, lease, |job, now| {
        Ok(vec![job.start_phase(index, lease.attempt, now)?])
    })
    .await
    .map(drop)
}

pub(crate) async fn phase_progress(
    tx: &mut Tx,
    lease: &Lease,
    index: usize,
    progress: Progress,
) -> Result<(), StoreError> {
    let progress = Progress {
        percent: progress.percent,
        message: progress.message.map(clean),
    };
    change_leased(tx, lease, |job, _| {
        Ok(vec![job.report_progress(index, progress)?])
    })
    .await
    .map(drop)
}

pub(crate) async fn save_checkpoint(
    tx: &mut Tx,
    lease: &Lease,
    index: usize,
    checkpoint: Value,
) -> Result<(), StoreError> {
    change_leased(tx, lease, |job, _| {
        job.save_checkpoint(index, checkpoint)?;
        Ok(Vec::new())
    })
    .await
    .map(drop)
}

pub(crate) async fn snooze(
    tx: &mut Tx,
    lease: &Lease,
    index: usize,
    run_at: OffsetDateTime,
) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, _| Ok(vec![job.snooze(index, run_at)?])).await
}

pub(crate) async fn phase_completed(
    tx: &mut Tx,
    lease: &Lease,
    index: usize,
    result: Value,
) -> Result<(), StoreError> {
    change_leased(tx, lease, |job, now| {
        Ok(vec![job.complete_phase(index, result, now)?])
    })
    .await
    .map(drop)
}

/// One call of [`advance_many`]: what `JobStore::advance` takes.
pub(crate) struct Advance {
    pub(crate) lease: Lease,
    pub(crate) index: usize,
    pub(crate) result: Value,
    pub(crate) next: Next,
}

/// `JobStore::advance` for several jobs (one call per job) in one
/// transaction,
/// set-based: the jobs are locked in id order in one statement, their
/// phases read in one, and what changed written in one per table, fenced
/// on each lease. Returns each call's outcome, in order: a lost lease or a
/// refused step fails that call alone, and nothing is written for it.
pub(crate) async fn advance_many(
    tx: &mut Tx,
    calls: Vec<Advance>,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let now = tx.now;
    let ids: Vec<Uuid> = calls.iter().map(|c| *c.lease.job_id.as_uuid()).collect();
    let tokens: Vec<Uuid> = calls.iter().map(|c| *c.lease.token.as_uuid()).collect();
    let mut held: HashMap<JobId, Job> = lock_leased(tx, &ids, &tokens)
        .await?
        .into_iter()
        .map(|job| (job.id, job))
        .collect();
    let mut outcomes = Vec::with_capacity(calls.len());
    let (mut before, mut after, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for c in calls {
        let job = held
            .remove(&c.lease.job_id)
            .filter(|job| job.lease == Some(c.lease.token));
        let Some(job) = job else {
            outcomes.push(Err(lease_error(tx.conn(), c.lease.job_id).await));
            continue;
        };
        let mut changed = job.clone();
        match changed.advance(c.index, c.result, c.next, c.lease.attempt, now) {
            Ok(data) => {
                before.push(job);
                after.push(changed);
                events.push(data);
                outcomes.push(Ok(()));
            }
            Err(e) => outcomes.push(Err(e)),
        }
    }
    save(tx, &before, &after).await?;
    for (job, data) in after.iter().zip(events) {
        for data in data {
            tx.emit(job, data);
        }
    }
    // The jobs that completed release their dependents, in one statement
    // (what `deps::settle` does for one completed job).
    let completed: Vec<Uuid> = after
        .iter()
        .filter(|job| job.status == JobStatus::Completed)
        .map(|job| *job.id.as_uuid())
        .collect();
    if !completed.is_empty() {
        deps::release(tx, &completed).await?;
    }
    Ok(outcomes)
}

pub(crate) async fn phase_failed(
    tx: &mut Tx,
    lease: &Lease,
    index: usize,
    error: String,
    outcome: FailureOutcome,
) -> Result<Job, StoreError> {
    let error = clean(error);
    change_leased(tx, lease, |job, now| {
        job.fail_phase(index, error, outcome, now)
    })
    .await
}

pub(crate) async fn complete_job(tx: &mut Tx, lease: &Lease) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, now| Ok(vec![job.complete(now)?])).await
}

pub(crate) async fn fail_job(
    tx: &mut Tx,
    lease: &Lease,
    error: JobError,
) -> Result<Job, StoreError> {
    let error = JobError {
        phase: error.phase.map(clean),
        message: clean(error.message),
        attempt: error.attempt,
    };
    change_leased(tx, lease, |job, now| Ok(vec![job.fail(error, now)?])).await
}

pub(crate) async fn cancel_running(tx: &mut Tx, lease: &Lease) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, now| Ok(vec![job.cancel(now)?])).await
}

pub(crate) async fn interrupt(tx: &mut Tx, lease: &Lease) -> Result<Job, StoreError> {
    change_leased(tx, lease, |job, now| Ok(vec![job.interrupt(now)?])).await
}

// ----------------------------------------------------------------- recovery

static RECOVER_ALL_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM jobs WHERE status = '{}' ORDER BY id FOR UPDATE",
        JobStatus::Running.as_str()
    )
});

static RECOVER_EXPIRED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM jobs WHERE status = '{}' \
           AND (lease_expires_at IS NULL OR lease_expires_at <= $1) \
         ORDER BY id FOR UPDATE",
        JobStatus::Running.as_str()
    )
});

pub(crate) async fn recover(tx: &mut Tx, scope: RecoverScope) -> Result<Vec<Job>, StoreError> {
    let now = tx.now;
    // Locked in id order, waiting for the workers' writes in flight (a
    // write that ends the job meanwhile takes it out of the result).
    let rows: Vec<JobRow> = match scope {
        RecoverScope::All => {
            diesel::sql_query(RECOVER_ALL_SQL.as_str())
                .load(tx.conn())
                .await
        }
        RecoverScope::ExpiredLeases => {
            diesel::sql_query(RECOVER_EXPIRED_SQL.as_str())
                .bind::<Timestamptz, _>(now)
                .load(tx.conn())
                .await
        }
    }
    .map_err(db_err)?;
    let before = with_phases(tx.conn(), rows).await?;
    let mut after = before.clone();
    let mut events = Vec::with_capacity(after.len());
    for job in &mut after {
        events.push(job.recover(now)?);
    }
    save(tx, &before, &after).await?;
    for (job, data) in after.iter().zip(events) {
        tx.emit(job, data);
        deps::settle(tx, job.id, job.status).await?;
    }
    Ok(after)
}

// ------------------------------------------------------------- user actions

pub(crate) async fn request_cancel(tx: &mut Tx, id: JobId) -> Result<CancelOutcome, StoreError> {
    let now = tx.now;
    let before = lock_job(tx, id).await?;
    let mut job = before.clone();
    if job.status == JobStatus::Running {
        job.cancel_requested = true;
        save(
            tx,
            std::slice::from_ref(&before),
            std::slice::from_ref(&job),
        )
        .await?;
        return Ok(CancelOutcome::Requested(job));
    }
    let events = vec![job.cancel(now)?];
    commit(tx, &before, &job, events).await?;
    Ok(CancelOutcome::Cancelled(job))
}

pub(crate) async fn retry(tx: &mut Tx, id: JobId) -> Result<Job, StoreError> {
    let now = tx.now;
    let before = lock_job(tx, id).await?;
    let mut job = before.clone();
    let events = vec![job.manual_retry(now)?];
    let Some(key) = job.unique_key.clone() else {
        commit(tx, &before, &job, events).await?;
        return Ok(job);
    };
    // The job takes its key again: refused by the unique index while an
    // active job holds it.
    for _ in 0..UNIQUE_KEY_ROUNDS {
        if let Some(existing) = active_holders(tx.conn(), &[&key]).await?.remove(&key) {
            return Err(StoreError::Duplicate { key, existing });
        }
        tx.savepoint().await?;
        match save(
            tx,
            std::slice::from_ref(&before),
            std::slice::from_ref(&job),
        )
        .await
        {
            Ok(()) => {
                tx.release().await?;
                for data in events {
                    tx.emit(&job, data);
                }
                return Ok(job);
            }
            // A job that took the key after the look above committed
            // first; look again.
            Err(e) if e.kind() == ErrorKind::Duplicate => tx.roll_back_to_savepoint().await?,
            Err(e) => {
                tx.roll_back_to_savepoint().await?;
                return Err(e);
            }
        }
    }
    Err(busy_key())
}

/// Deletes jobs (their phases cascade) and their events so far: the
/// `job.deleted` events are staged, and inserted at the commit, after this.
async fn remove_jobs(tx: &mut Tx, ids: &[Uuid]) -> Result<(), StoreError> {
    use crate::schema::events;
    diesel::delete(events::table.filter(events::job_id.eq_any(ids)))
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    diesel::delete(jobs::table.filter(jobs::id.eq_any(ids)))
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    deps::release(tx, ids).await
}

pub(crate) async fn delete(tx: &mut Tx, id: JobId) -> Result<(), StoreError> {
    let job = lock_job(tx, id).await?;
    job.clone().step(JobAction::Delete)?;
    remove_jobs(tx, &[*id.as_uuid()]).await?;
    tx.emit(&job, EventData::Deleted {});
    Ok(())
}

// ---------------------------------------------------------------- retention

static MARK_STALE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM jobs WHERE status IN ({}) AND finished_at < $1 \
         ORDER BY finished_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
        status_literals(JobStatus::is_finished)
    )
});

static DELETE_STALE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT * FROM jobs WHERE status = '{}' AND stale_at < $1 \
         ORDER BY stale_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
        JobStatus::Stale.as_str()
    )
});

pub(crate) async fn mark_stale(
    tx: &mut Tx,
    finished_before: OffsetDateTime,
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let now = tx.now;
    let rows: Vec<JobRow> = diesel::sql_query(MARK_STALE_SQL.as_str())
        .bind::<Timestamptz, _>(finished_before)
        .bind::<BigInt, _>(sql_count(limit))
        .load(tx.conn())
        .await
        .map_err(db_err)?;
    let before = with_phases(tx.conn(), rows).await?;
    let mut after = before.clone();
    let mut events = Vec::with_capacity(after.len());
    for job in &mut after {
        events.push(job.mark_stale(now)?);
    }
    save(tx, &before, &after).await?;
    for (job, data) in after.iter().zip(events) {
        tx.emit(job, data);
    }
    Ok(after.iter().map(|j| j.id).collect())
}

pub(crate) async fn delete_stale(
    tx: &mut Tx,
    stale_before: OffsetDateTime,
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let rows: Vec<JobRow> = diesel::sql_query(DELETE_STALE_SQL.as_str())
        .bind::<Timestamptz, _>(stale_before)
        .bind::<BigInt, _>(sql_count(limit))
        .load(tx.conn())
        .await
        .map_err(db_err)?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let status: JobStatus = row
            .status
            .parse()
            .map_err(|e| crate::error::corrupt(format!("job status {:?}: {e}", row.status)))?;
        job_transition(status, JobAction::Delete)?;
        ids.push(row.id);
    }
    remove_jobs(tx, &ids).await?;
    for row in &rows {
        tx.emit_for(
            JobId::from_uuid(row.id),
            &row.pipeline,
            row.webhook_url.as_deref(),
            EventData::Deleted {},
        );
    }
    Ok(ids.into_iter().map(JobId::from_uuid).collect())
}

static PRUNE_DELIVERIES_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM webhook_deliveries WHERE id IN ( \
           SELECT id FROM webhook_deliveries \
           WHERE status <> '{}' AND created_at < $1 \
           ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)",
        DeliveryStatus::Pending.as_str()
    )
});

static PRUNE_TOMBSTONES_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM events WHERE seq IN ( \
           SELECT seq FROM events e \
           WHERE event_type = '{}' AND at < $1 \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = e.job_id) \
           ORDER BY at, seq LIMIT $2 FOR UPDATE SKIP LOCKED)",
        jobqueue_core::EventType::JobDeleted.as_str()
    )
});

pub(crate) async fn prune(
    tx: &mut Tx,
    before: OffsetDateTime,
    limit: usize,
) -> Result<Pruned, StoreError> {
    let deliveries = diesel::sql_query(PRUNE_DELIVERIES_SQL.as_str())
        .bind::<Timestamptz, _>(before)
        .bind::<BigInt, _>(sql_count(limit))
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    let tombstones = diesel::sql_query(PRUNE_TOMBSTONES_SQL.as_str())
        .bind::<Timestamptz, _>(before)
        .bind::<BigInt, _>(sql_count(limit))
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    // Reservations left by transactions that died with their process.
    diesel::sql_query(crate::seq::FORGET_ABORTED_SQL)
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    Ok(Pruned {
        deliveries,
        tombstones,
    })
}

// ----------------------------------------------------------------- webhooks

pub(crate) async fn record_attempt(
    tx: &mut Tx,
    id: DeliveryId,
    outcome: AttemptOutcome,
) -> Result<Delivery, StoreError> {
    let outcome = match outcome {
        AttemptOutcome::Retry {
            status,
            error,
            next_attempt_at,
        } => AttemptOutcome::Retry {
            status,
            error: clean(error),
            next_attempt_at,
        },
        AttemptOutcome::Failed { status, error } => AttemptOutcome::Failed {
            status,
            error: clean(error),
        },
        delivered => delivered,
    };
    let row: Option<DeliveryRow> = webhook_deliveries::table
        .find(id.as_uuid())
        .select(DeliveryRow::as_select())
        .for_update()
        .first(tx.conn())
        .await
        .optional()
        .map_err(db_err)?;
    let mut d = row
        .ok_or(StoreError::DeliveryNotFound(id))?
        .into_delivery()?;
    d.record(outcome)?;
    let row = DeliveryRow::of(&d);
    diesel::update(webhook_deliveries::table.find(row.id))
        .set((
            webhook_deliveries::status.eq(&row.status),
            webhook_deliveries::attempts.eq(row.attempts),
            webhook_deliveries::last_status.eq(row.last_status),
            webhook_deliveries::last_error.eq(&row.last_error),
            webhook_deliveries::next_attempt_at.eq(row.next_attempt_at),
        ))
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    Ok(d)
}

// ------------------------------------------------------- paused pipelines

/// Pauses `pipeline` (see `JobStore::pause_pipeline`): a row in
/// `paused_pipelines` and a `pipeline.paused` event, or nothing when the row
/// is there already (also when another process's pause committed first:
/// the insert waits for it, then does nothing). The caller checked the name.
pub(crate) async fn pause_pipeline(tx: &mut Tx, pipeline: &str) -> Result<bool, StoreError> {
    let now = tx.now;
    let inserted = diesel::insert_into(paused_pipelines::table)
        .values((
            paused_pipelines::pipeline.eq(pipeline),
            paused_pipelines::paused_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    if inserted == 0 {
        return Ok(false);
    }
    tx.emit_pipeline(pipeline, EventData::PipelinePaused {});
    Ok(true)
}

/// Resumes `pipeline`: deletes its row and appends `pipeline.resumed`, whose
/// notification wakes every process's pump; or does nothing when it was not
/// paused.
pub(crate) async fn resume_pipeline(tx: &mut Tx, pipeline: &str) -> Result<bool, StoreError> {
    let deleted = diesel::delete(paused_pipelines::table.find(pipeline))
        .execute(tx.conn())
        .await
        .map_err(db_err)?;
    if deleted == 0 {
        return Ok(false);
    }
    tx.emit_pipeline(pipeline, EventData::PipelineResumed {});
    Ok(true)
}
