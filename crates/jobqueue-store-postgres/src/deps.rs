//! Dependencies between jobs, as [`jobqueue_core::MemoryStore`] keeps them:
//! a row of `job_dependencies` per job and dependency it still waits for.
//! The claim skips a queued job that has a row; a dependency that completes
//! or is deleted drops its rows (and the commit announces work, so every
//! process's pump looks at once); one that fails or is cancelled ends its
//! queued dependents in the same transaction, transitively.
//!
//! # Races
//!
//! An enqueue locks each dependency `FOR SHARE` while it reads its status
//! and writes its rows; every change of a job's status locks the job `FOR
//! UPDATE` first. So a dependency cannot end between the enqueue's look
//! and its commit: its transaction waits, then sees the new rows (or the
//! enqueue waits, then sees how it ended).

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jobqueue_core::apply::check_dependency;
use jobqueue_core::{DependencyFailure, Job, JobId, JobStatus, NewJob, StoreError};
use uuid::Uuid;

use crate::error::{corrupt, db_err};
use crate::schema::{job_dependencies, jobs};
use crate::tx::Tx;

/// The dependencies of `spec` still to complete, each locked `FOR SHARE`
/// until the transaction ends, or `Invalid` when one does not exist or can
/// never complete.
pub(crate) async fn unmet(
    conn: &mut AsyncPgConnection,
    spec: &NewJob,
) -> Result<Vec<JobId>, StoreError> {
    let ids = spec.dependencies();
    if ids.is_empty() {
        return Ok(ids);
    }
    let uuids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
    let found: Vec<(Uuid, String)> = jobs::table
        .filter(jobs::id.eq_any(&uuids))
        .select((jobs::id, jobs::status))
        .order(jobs::id)
        .for_share()
        .load(conn)
        .await
        .map_err(db_err)?;
    let mut unmet = Vec::with_capacity(ids.len());
    for id in ids {
        let status = found
            .iter()
            .find(|(found, _)| found == id.as_uuid())
            .map(|(_, s)| {
                s.parse::<JobStatus>()
                    .map_err(|e| corrupt(format!("job status {s:?}: {e}")))
            })
            .transpose()?;
        if check_dependency(id, status)? {
            unmet.push(id);
        }
    }
    Ok(unmet)
}

/// Records that `job` waits for `unmet`.
pub(crate) async fn insert(
    conn: &mut AsyncPgConnection,
    job: &Job,
    unmet: &[JobId],
    policy: DependencyFailure,
) -> Result<(), StoreError> {
    if unmet.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = unmet
        .iter()
        .map(|dep| {
            (
                job_dependencies::job_id.eq(*job.id.as_uuid()),
                job_dependencies::depends_on.eq(*dep.as_uuid()),
                job_dependencies::on_failure.eq(policy.as_str()),
            )
        })
        .collect();
    diesel::insert_into(job_dependencies::table)
        .values(rows)
        .execute(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// No job waits for the jobs `ids` any longer (they completed, or are
/// gone); a commit that released a job announces work.
pub(crate) async fn release(tx: &mut Tx, ids: &[Uuid]) -> Result<(), StoreError> {
    let released =
        diesel::delete(job_dependencies::table.filter(job_dependencies::depends_on.eq_any(ids)))
            .execute(tx.conn())
            .await
            .map_err(db_err)?;
    if released > 0 {
        tx.announce_work();
    }
    Ok(())
}

/// After job `id` was written in `status`: a completed job releases its
/// dependents; a failed or cancelled one ends its queued dependents (each
/// with its event), and theirs, transitively.
pub(crate) async fn settle(tx: &mut Tx, id: JobId, status: JobStatus) -> Result<(), StoreError> {
    let mut ended = vec![(id, status)];
    while let Some((id, status)) = ended.pop() {
        match status {
            JobStatus::Completed => release(tx, &[*id.as_uuid()]).await?,
            JobStatus::Failed | JobStatus::Cancelled => {
                ended.extend(cascade(tx, id, status).await?);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Ends the queued jobs that wait for `id`, which ended in `status`, and
/// returns them with their new statuses. Each is locked `FOR UPDATE`, in id
/// order, before it is read.
async fn cascade(
    tx: &mut Tx,
    id: JobId,
    status: JobStatus,
) -> Result<Vec<(JobId, JobStatus)>, StoreError> {
    let dependents: Vec<(Uuid, String)> = job_dependencies::table
        .filter(job_dependencies::depends_on.eq(id.as_uuid()))
        .select((job_dependencies::job_id, job_dependencies::on_failure))
        .order(job_dependencies::job_id)
        .load(tx.conn())
        .await
        .map_err(db_err)?;
    let mut ended = Vec::new();
    for (dependent, policy) in dependents {
        let dependent = JobId::from_uuid(dependent);
        let policy: DependencyFailure = policy
            .parse()
            .map_err(|e| corrupt(format!("dependency of job {dependent}: {e}")))?;
        let before = match crate::ops::lock_job(tx, dependent).await {
            Ok(job) if job.status == JobStatus::Queued => job,
            Ok(_) | Err(StoreError::JobNotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let mut job = before.clone();
        let data = job.dependency_ended(id, status, policy, tx.now)?;
        crate::ops::save_and_emit(tx, &before, &job, vec![data]).await?;
        ended.push((dependent, job.status));
    }
    Ok(ended)
}
