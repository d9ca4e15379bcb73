//! Dependencies between jobs, as [`jobqueue_core::MemoryStore`] keeps them:
//! a row of `job_dependencies` per job and dependency it still waits for.
//! The claim skips a queued job that has a row; a dependency that completes
//! or is deleted drops its rows; one that fails or is cancelled ends its
//! queued dependents in the same transaction, transitively.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use jobqueue_core::apply::check_dependency;
use jobqueue_core::{DependencyFailure, Job, JobId, JobStatus, NewJob, StoreError};

use crate::error::{corrupt, db_err};
use crate::query::load_job;
use crate::rows::job_status;
use crate::schema::{job_dependencies, jobs};
use crate::writer::Tx;

/// The dependencies of `spec` still to complete, or `Invalid` when one does
/// not exist or can never complete. Reads only.
pub(crate) fn unmet(tx: &mut Tx<'_>, spec: &NewJob) -> Result<Vec<JobId>, StoreError> {
    let ids = spec.dependencies();
    if ids.is_empty() {
        return Ok(ids);
    }
    let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let found: Vec<(String, String)> = jobs::table
        .filter(jobs::id.eq_any(&texts))
        .select((jobs::id, jobs::status))
        .load(tx.conn())
        .map_err(db_err)?;
    let mut unmet = Vec::with_capacity(ids.len());
    for (id, text) in ids.into_iter().zip(&texts) {
        let status = found
            .iter()
            .find(|(found, _)| found == text)
            .map(|(_, s)| job_status(s))
            .transpose()?;
        if check_dependency(id, status)? {
            unmet.push(id);
        }
    }
    Ok(unmet)
}

/// Records that `job` waits for `unmet`.
pub(crate) fn insert(
    tx: &mut Tx<'_>,
    job: &Job,
    unmet: &[JobId],
    policy: DependencyFailure,
) -> Result<(), StoreError> {
    if unmet.is_empty() {
        return Ok(());
    }
    let id = job.id.to_string();
    let rows: Vec<_> = unmet
        .iter()
        .map(|dep| {
            (
                job_dependencies::job_id.eq(id.clone()),
                job_dependencies::depends_on.eq(dep.to_string()),
                job_dependencies::on_failure.eq(policy.as_str()),
            )
        })
        .collect();
    *tx.dependencies = true;
    diesel::insert_into(job_dependencies::table)
        .values(rows)
        .execute(tx.write_conn())
        .map_err(db_err)?;
    Ok(())
}

/// Whether `job_dependencies` has a row, read when the writer starts; a
/// failed read counts as yes (the releases then run, as they may always).
pub(crate) fn any(conn: &mut SqliteConnection) -> bool {
    diesel::select(diesel::dsl::exists(
        job_dependencies::table.select(job_dependencies::job_id),
    ))
    .get_result(conn)
    .unwrap_or(true)
}

/// No job waits for job `id` any longer (it completed, or is gone).
pub(crate) fn release(tx: &mut Tx<'_>, id: &str) -> Result<(), StoreError> {
    if !*tx.dependencies {
        return Ok(());
    }
    diesel::delete(job_dependencies::table.filter(job_dependencies::depends_on.eq(id)))
        .execute(tx.write_conn())
        .map_err(db_err)?;
    Ok(())
}

/// After job `id` was written in `status`: a completed job releases its
/// dependents; a failed or cancelled one ends its queued dependents (each
/// with its event), and theirs, transitively. Nothing to do while no job
/// has a dependency.
pub(crate) fn settle(tx: &mut Tx<'_>, id: JobId, status: JobStatus) -> Result<(), StoreError> {
    if !*tx.dependencies {
        return Ok(());
    }
    let mut ended = vec![(id, status)];
    while let Some((id, status)) = ended.pop() {
        match status {
            JobStatus::Completed => release(tx, &id.to_string())?,
            JobStatus::Failed | JobStatus::Cancelled => ended.extend(cascade(tx, id, status)?),
            _ => {}
        }
    }
    Ok(())
}

/// Ends the queued jobs that wait for `id`, which ended in `status`, and
/// returns them with their new statuses.
fn cascade(
    tx: &mut Tx<'_>,
    id: JobId,
    status: JobStatus,
) -> Result<Vec<(JobId, JobStatus)>, StoreError> {
    let dependents: Vec<(String, String)> = job_dependencies::table
        .filter(job_dependencies::depends_on.eq(id.to_string()))
        .select((job_dependencies::job_id, job_dependencies::on_failure))
        .order(job_dependencies::job_id)
        .load(tx.conn())
        .map_err(db_err)?;
    let mut ended = Vec::new();
    for (dependent, policy) in dependents {
        let dependent: JobId = dependent
            .parse()
            .map_err(|e| corrupt(format!("job id {dependent:?}: {e}")))?;
        let policy: DependencyFailure = policy
            .parse()
            .map_err(|e| corrupt(format!("dependency of job {dependent}: {e}")))?;
        let Some(before) =
            load_job(tx.conn(), dependent)?.filter(|j| j.status == JobStatus::Queued)
        else {
            continue;
        };
        let mut job = before.clone();
        let data = job.dependency_ended(id, status, policy, tx.now)?;
        crate::ops::save_and_emit(tx, &before, &job, vec![data])?;
        ended.push((dependent, job.status));
    }
    Ok(ended)
}
