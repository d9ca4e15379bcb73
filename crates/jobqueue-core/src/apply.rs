//! The transition table applied to [`Job`] values: what every store does to
//! its in-memory copy of a job before it writes it, so all stores share one
//! implementation of each change (and `MemoryStore` is the reference by
//! construction, not by imitation).

use std::time::Duration;

use time::OffsetDateTime;

use crate::clock::truncate_to_micros;
use crate::error::StoreError;
use crate::event::EventData;
use crate::id::{JobId, LeaseToken};
use crate::job::{DependencyFailure, Interrupted, Job, JobError, NewJob, Phase, Progress};
use crate::machine::{
    JobAction, JobStatus, PhaseAction, PhaseStatus, job_transition, phase_transition,
};
use crate::store::FailureOutcome;

/// When a lease taken at `now` for `extend` runs out (to the microsecond, as
/// stores keep times), or `Invalid` when that is past what a time can hold.
pub fn lease_until(now: OffsetDateTime, extend: Duration) -> Result<OffsetDateTime, StoreError> {
    time::Duration::try_from(extend)
        .ok()
        .and_then(|d| now.checked_add(d))
        .map(truncate_to_micros)
        .ok_or_else(|| StoreError::Invalid(format!("lease duration {extend:?} is too long")))
}

/// Whether a job may depend on job `id`, found in status `status` (`None`:
/// no such job) at enqueue: `Ok(true)` when the dependency is still to
/// complete (queued or running), `Ok(false)` when it already completed,
/// and `Invalid` when it does not exist or can never complete (failed,
/// cancelled, or stale: retention no longer says how it ended).
pub fn check_dependency(id: JobId, status: Option<JobStatus>) -> Result<bool, StoreError> {
    match status {
        None => Err(StoreError::Invalid(format!(
            "depends_on: job {id} does not exist"
        ))),
        Some(JobStatus::Queued | JobStatus::Running) => Ok(true),
        Some(JobStatus::Completed) => Ok(false),
        Some(
            s @ (JobStatus::Failed | JobStatus::Cancelled | JobStatus::Stale | JobStatus::Deleted),
        ) => Err(StoreError::Invalid(format!(
            "depends_on: job {id} is {s} and can never complete; \
                 a job may depend only on queued, running or completed jobs"
        ))),
    }
}

/// Why a job waiting for `dependency` can no longer start, now that the
/// dependency ended in `ended` (failed or cancelled): the `reason` of its
/// `job.cancelled` event, or the message of its error.
pub fn dependency_reason(dependency: JobId, ended: JobStatus) -> String {
    match ended {
        JobStatus::Cancelled => format!("dependency {dependency} was cancelled"),
        other => format!("dependency {dependency} {other}"),
    }
}

impl Job {
    /// The queued job waited for `dependency`, which ended `ended` (failed
    /// or cancelled) at `now`: it is cancelled or fails, as `policy` says,
    /// with the reason naming the dependency. Returns `job.cancelled` (with
    /// its `reason`) or `job.failed`.
    pub fn dependency_ended(
        &mut self,
        dependency: JobId,
        ended: JobStatus,
        policy: DependencyFailure,
        now: OffsetDateTime,
    ) -> Result<EventData, StoreError> {
        let reason = dependency_reason(dependency, ended);
        match policy {
            DependencyFailure::Cancel => {
                self.step(JobAction::Cancel)?;
                self.finished_at = Some(now);
                self.release_lease();
                Ok(EventData::Cancelled {
                    reason: Some(reason),
                })
            }
            DependencyFailure::Fail => {
                let error = JobError {
                    phase: None,
                    message: reason,
                    attempt: self.attempt,
                };
                self.step(JobAction::Fail)?;
                self.error = Some(error.clone());
                self.finished_at = Some(now);
                self.release_lease();
                Ok(EventData::Failed { error })
            }
        }
    }

    /// A new job from `spec`, enqueued at `now`: `queued`, a fresh id, its
    /// phases `pending`, `run_at` now unless the spec says later. The spec
    /// must have passed [`NewJob::validate`].
    pub fn queued(spec: NewJob, now: OffsetDateTime) -> Self {
        let unique_key = spec.effective_unique_key();
        let period_key = match (&unique_key, spec.unique_for) {
            (Some(key), Some(period)) => crate::unique::period_key(key, period, now),
            _ => None,
        };
        Self {
            id: JobId::new(),
            pipeline: spec.pipeline,
            status: JobStatus::Queued,
            input: spec.input,
            priority: spec.priority,
            unique_key,
            period_key,
            attempt: 0,
            max_attempts: spec
                .max_attempts
                .unwrap_or(crate::job::DEFAULT_MAX_ATTEMPTS),
            created_at: now,
            run_at: spec.run_at.map_or(now, truncate_to_micros),
            started_at: None,
            finished_at: None,
            stale_at: None,
            error: None,
            interrupted: None,
            webhook_url: spec.webhook_url,
            cancel_requested: false,
            lease: None,
            lease_expires_at: None,
            phases: spec.phases.into_iter().map(Phase::pending).collect(),
        }
    }

    /// The phase at `index`, or `NoSuchPhase`.
    pub fn phase_at(&self, index: usize) -> Result<&Phase, StoreError> {
        self.phases.get(index).ok_or(StoreError::NoSuchPhase {
            job: self.id,
            index,
        })
    }

    /// Moves the job to the status the transition table gives for `action`,
    /// or says why the table refuses it (and changes nothing).
    pub fn step(&mut self, action: JobAction) -> Result<(), StoreError> {
        let rule = job_transition(self.status, action)?;
        self.status = rule.to;
        Ok(())
    }

    /// Moves phase `index` to the status the table gives for `action`, or
    /// says why not (and changes nothing).
    pub fn step_phase(&mut self, index: usize, action: PhaseAction) -> Result<(), StoreError> {
        let phase = self.phase_at(index)?;
        let rule = phase_transition(&phase.name, phase.status, action)?;
        self.phases[index].status = rule.to;
        Ok(())
    }

    /// Forgets the current claim: no lease, no expiry, no cancel request.
    pub fn release_lease(&mut self) {
        self.lease = None;
        self.lease_expires_at = None;
        self.cancel_requested = false;
    }

    /// The `job.created` event of this job.
    pub fn created_event(&self) -> EventData {
        EventData::Created {
            run_at: self.run_at,
            priority: self.priority,
        }
    }

    /// Interrupts the running job at `now`: back to `queued`, its running
    /// phase back to `pending`, and that phase's name and last progress kept
    /// as the job's interrupted context (the next phase to run, without
    /// progress, if it was between phases). Returns the `job.interrupted`
    /// event data.
    pub fn interrupt(&mut self, now: OffsetDateTime) -> Result<EventData, StoreError> {
        self.step(JobAction::Interrupt)?;
        let (phase, progress) = self.where_cut_short();
        if let Some(i) = self
            .phases
            .iter()
            .position(|p| p.status == PhaseStatus::Running)
        {
            self.step_phase(i, PhaseAction::Interrupt)?;
        }
        self.interrupted = Some(Interrupted {
            phase: phase.clone(),
            at: now,
            progress: progress.clone(),
        });
        self.run_at = now;
        self.release_lease();
        Ok(EventData::Interrupted { phase, progress })
    }

    /// The process that ran the job is gone (a crash, a kill, a lease that
    /// expired): the job is interrupted at `now` like [`interrupt`](Self::interrupt)
    /// and queued again, unless that was its last attempt. A run that ended
    /// this way spent its attempt, so a phase that crashes the process every
    /// time cannot be run forever: once the attempts are spent the job fails,
    /// with its interrupted context kept and an error that says why. Returns
    /// `job.interrupted`, or `job.failed`.
    pub fn recover(&mut self, now: OffsetDateTime) -> Result<EventData, StoreError> {
        if crate::retry::RetryPolicy::can_retry(self.attempt, self.max_attempts) {
            return self.interrupt(now);
        }
        let (phase, progress) = self.where_cut_short();
        self.interrupted = Some(Interrupted {
            phase: phase.clone(),
            at: now,
            progress,
        });
        let error = JobError {
            phase: (!phase.is_empty()).then(|| phase.clone()),
            message: format!(
                "interrupted: the process running attempt {} stopped before it \
                 finished (crashed, killed or lost its lease), and no attempts are left; \
                 a job whose run ends the process every time is not retried forever",
                // A graceful shutdown during the last attempt gives the job
                // one more run (it was not the job's fault), so this can be
                // past the budget.
                if self.attempt <= self.max_attempts {
                    format!("{} of {}", self.attempt, self.max_attempts)
                } else {
                    format!("{} (of {} allowed)", self.attempt, self.max_attempts)
                }
            ),
            attempt: self.attempt,
        };
        self.fail(error, now)
    }

    /// The phase a crash or shutdown cuts short, and its last progress: the
    /// running phase, or the next one to run (without progress) if the job
    /// was between phases; an empty name if every phase completed.
    fn where_cut_short(&self) -> (String, Option<Progress>) {
        match self
            .phases
            .iter()
            .position(|p| p.status == PhaseStatus::Running)
        {
            Some(i) => (self.phases[i].name.clone(), self.phases[i].progress.clone()),
            None => {
                let next = self
                    .first_incomplete_phase()
                    .map(|i| self.phases[i].name.clone());
                (next.unwrap_or_default(), None)
            }
        }
    }

    /// A claim at `now`: `running`, one more attempt, the new fencing
    /// `token` valid `until`. Returns the `job.started` event.
    pub fn claim(
        &mut self,
        token: LeaseToken,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<EventData, StoreError> {
        self.step(JobAction::Claim)?;
        self.attempt = self.attempt.saturating_add(1);
        self.started_at = Some(now);
        self.lease = Some(token);
        self.lease_expires_at = Some(until);
        self.cancel_requested = false;
        Ok(EventData::Started {
            attempt: self.attempt,
        })
    }

    /// The pipeline's phases changed since the job was enqueued (a deploy
    /// renamed, added, removed or reordered some): the job takes the new
    /// list `names`, matched by name. A phase of the new list keeps its
    /// record (a completed one its result: it never runs again), a new one
    /// is `pending`, and a completed phase the pipeline no longer has keeps
    /// its result after the others; one that had not completed is dropped.
    /// Only for a running job, right after its claim: a phase the claim
    /// started goes back to `pending` (the worker starts the right one in
    /// the new list). No event: the job's state does not change.
    pub fn reshape_phases(&mut self, names: &[String]) -> Result<(), StoreError> {
        if self.status != JobStatus::Running {
            return Err(StoreError::Conflict(format!(
                "job {} is {}: only a running job's phases can be changed",
                self.id, self.status
            )));
        }
        for (i, name) in names.iter().enumerate() {
            crate::job::check_name("phase name", name).map_err(StoreError::Invalid)?;
            if names[..i].contains(name) {
                return Err(StoreError::Invalid(format!(
                    "phase name {name:?} appears twice"
                )));
            }
        }
        if let Some(i) = self
            .phases
            .iter()
            .position(|p| p.status == PhaseStatus::Running)
        {
            self.step_phase(i, PhaseAction::Interrupt)?;
        }
        let mut old = std::mem::take(&mut self.phases);
        let mut phases = Vec::with_capacity(names.len());
        for name in names {
            match old.iter().position(|p| p.name == *name) {
                Some(i) => phases.push(old.remove(i)),
                None => phases.push(Phase::pending(name.clone())),
            }
        }
        phases.extend(
            old.into_iter()
                .filter(|p| p.status == PhaseStatus::Completed),
        );
        self.phases = phases;
        Ok(())
    }

    /// Phase `index` starts at `now` in `attempt`. Refused if an earlier
    /// phase has not completed. Returns `job.phase.started`.
    pub fn start_phase(
        &mut self,
        index: usize,
        attempt: u32,
        now: OffsetDateTime,
    ) -> Result<EventData, StoreError> {
        self.phase_at(index)?;
        if let Some(first) = self.first_incomplete_phase().filter(|first| *first < index) {
            return Err(StoreError::Conflict(format!(
                "phase {:?} cannot start before phase {:?} completed",
                self.phases[index].name, self.phases[first].name
            )));
        }
        self.step_phase(index, PhaseAction::Start)?;
        let p = &mut self.phases[index];
        p.attempts = p.attempts.saturating_add(1);
        p.started_at = Some(now);
        p.finished_at = None;
        p.error = None;
        p.progress = None;
        Ok(EventData::PhaseStarted {
            phase: p.name.clone(),
            index,
            attempt,
        })
    }

    /// The running phase `index` reports `progress`. Returns
    /// `job.phase.progress`.
    pub fn report_progress(
        &mut self,
        index: usize,
        progress: Progress,
    ) -> Result<EventData, StoreError> {
        self.step_phase(index, PhaseAction::Progress)?;
        let progress = Progress::new(progress.percent, progress.message);
        let p = &mut self.phases[index];
        p.progress = Some(progress.clone());
        Ok(EventData::PhaseProgress {
            phase: p.name.clone(),
            percent: progress.percent,
            message: progress.message,
        })
    }

    /// Phase `index` completed at `now` with `result`. Returns
    /// `job.phase.completed`.
    pub fn complete_phase(
        &mut self,
        index: usize,
        result: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<EventData, StoreError> {
        let name = &self.phase_at(index)?.name;
        crate::job::check_json(&format!("result of phase {name:?}"), &result)
            .map_err(StoreError::Invalid)?;
        self.step_phase(index, PhaseAction::Complete)?;
        let p = &mut self.phases[index];
        p.result = Some(result.clone());
        p.finished_at = Some(now);
        p.error = None;
        // Done for good: nothing will resume from it.
        p.checkpoint = None;
        Ok(EventData::PhaseCompleted {
            phase: p.name.clone(),
            index,
            result,
        })
    }

    /// The running phase `index` saves `checkpoint`, replacing the one it
    /// saved before: where its next run resumes after a failure, a crash, a
    /// shutdown or a snooze. Refused when the value passes the limits of
    /// [`check_json`](crate::job::check_json) or the phase is not running.
    /// No event: the phase's status does not change, and the checkpoint
    /// shows on the job's record.
    pub fn save_checkpoint(
        &mut self,
        index: usize,
        checkpoint: serde_json::Value,
    ) -> Result<(), StoreError> {
        let name = &self.phase_at(index)?.name;
        crate::job::check_json(&format!("checkpoint of phase {name:?}"), &checkpoint)
            .map_err(StoreError::Invalid)?;
        self.step_phase(index, PhaseAction::Checkpoint)?;
        self.phases[index].checkpoint = Some(checkpoint);
        Ok(())
    }

    /// The running phase `index` asks to run again at `run_at`: the job is
    /// queued at that time (to the microsecond), the phase back to
    /// `pending` with its checkpoint and last progress kept, and
    /// the attempt the claim counted is given back, to the job and to the
    /// phase, so snoozes never spend `max_attempts`. Returns `job.snoozed`.
    pub fn snooze(
        &mut self,
        index: usize,
        run_at: OffsetDateTime,
    ) -> Result<EventData, StoreError> {
        crate::timefmt::check("snooze time", run_at).map_err(StoreError::Invalid)?;
        self.phase_at(index)?;
        let mut after = self.clone();
        after.step_phase(index, PhaseAction::Snooze)?;
        after.step(JobAction::Snooze)?;
        let run_at = truncate_to_micros(run_at);
        after.attempt = after.attempt.saturating_sub(1);
        let p = &mut after.phases[index];
        p.attempts = p.attempts.saturating_sub(1);
        let phase = p.name.clone();
        after.run_at = run_at;
        after.release_lease();
        *self = after;
        Ok(EventData::Snoozed {
            phase,
            index,
            run_at,
        })
    }

    /// Phase `index` completed at `now` with `result`, and the job goes on
    /// as `next` says (the next phase starts in `attempt`, or the job
    /// completes). All or nothing: if the second step is refused, the job
    /// is left as it was. Returns the events of both steps, in order.
    pub fn advance(
        &mut self,
        index: usize,
        result: serde_json::Value,
        next: crate::store::Next,
        attempt: u32,
        now: OffsetDateTime,
    ) -> Result<Vec<EventData>, StoreError> {
        let mut after = self.clone();
        let completed = after.complete_phase(index, result, now)?;
        let then = match next {
            crate::store::Next::Phase(n) => after.start_phase(n, attempt, now)?,
            crate::store::Next::Complete => after.complete(now)?,
        };
        *self = after;
        Ok(vec![completed, then])
    }

    /// Claims the job like [`claim`](Self::claim) and, if it has one, also
    /// starts its first phase not completed (`start`). Returns the events.
    pub fn claim_and_start(
        &mut self,
        token: LeaseToken,
        until: OffsetDateTime,
        now: OffsetDateTime,
        start: bool,
    ) -> Result<Vec<EventData>, StoreError> {
        let mut events = vec![self.claim(token, until, now)?];
        if let Some(i) = self.first_incomplete_phase().filter(|_| start) {
            events.push(self.start_phase(i, self.attempt, now)?);
        }
        Ok(events)
    }

    /// Phase `index` failed at `now` with `error`; the job is queued again
    /// at the retry time or fails. Returns `job.phase.failed`, and
    /// `job.failed` when the job fails.
    pub fn fail_phase(
        &mut self,
        index: usize,
        error: String,
        outcome: FailureOutcome,
        now: OffsetDateTime,
    ) -> Result<Vec<EventData>, StoreError> {
        if let FailureOutcome::RetryAt(at) = &outcome {
            crate::timefmt::check("retry time", *at).map_err(StoreError::Invalid)?;
        }
        self.step_phase(index, PhaseAction::Fail)?;
        let phase = self.phases[index].name.clone();
        let p = &mut self.phases[index];
        p.error = Some(error.clone());
        p.finished_at = Some(now);
        match outcome {
            FailureOutcome::RetryAt(at) => {
                let at = truncate_to_micros(at);
                self.step(JobAction::ScheduleRetry)?;
                self.run_at = at;
                self.release_lease();
                Ok(vec![EventData::PhaseFailed {
                    phase,
                    index,
                    error,
                    retry_at: Some(at),
                }])
            }
            FailureOutcome::Fail => {
                self.step(JobAction::Fail)?;
                let job_error = JobError {
                    phase: Some(phase.clone()),
                    message: error.clone(),
                    attempt: self.attempt,
                };
                self.error = Some(job_error.clone());
                self.finished_at = Some(now);
                self.release_lease();
                Ok(vec![
                    EventData::PhaseFailed {
                        phase,
                        index,
                        error,
                        retry_at: None,
                    },
                    EventData::Failed { error: job_error },
                ])
            }
        }
    }

    /// Every phase completed: the job completes at `now`. Refused while a
    /// phase is not completed. Returns `job.completed` with all results.
    pub fn complete(&mut self, now: OffsetDateTime) -> Result<EventData, StoreError> {
        if let Some(i) = self.first_incomplete_phase() {
            return Err(StoreError::Conflict(format!(
                "job {} cannot complete: phase {:?} is {}",
                self.id, self.phases[i].name, self.phases[i].status
            )));
        }
        self.step(JobAction::Complete)?;
        self.finished_at = Some(now);
        self.error = None;
        self.release_lease();
        Ok(EventData::Completed {
            results: self.results(),
        })
    }

    /// The running job fails at `now` with `error`; a running phase fails
    /// with it. Returns `job.failed`.
    pub fn fail(&mut self, error: JobError, now: OffsetDateTime) -> Result<EventData, StoreError> {
        self.step(JobAction::Fail)?;
        self.end_running_phases(PhaseAction::Fail, Some(&error.message), now)?;
        self.error = Some(error.clone());
        self.finished_at = Some(now);
        self.release_lease();
        Ok(EventData::Failed { error })
    }

    /// The job is cancelled at `now` (queued, or running after a cancel
    /// request); a running phase is cancelled with it. Returns `job.cancelled`.
    pub fn cancel(&mut self, now: OffsetDateTime) -> Result<EventData, StoreError> {
        self.step(JobAction::Cancel)?;
        self.end_running_phases(PhaseAction::Cancel, None, now)?;
        self.finished_at = Some(now);
        self.release_lease();
        Ok(EventData::Cancelled { reason: None })
    }

    fn end_running_phases(
        &mut self,
        action: PhaseAction,
        error: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        for i in 0..self.phases.len() {
            if self.phases[i].status == PhaseStatus::Running {
                self.step_phase(i, action)?;
                if let Some(e) = error {
                    self.phases[i].error = Some(e.to_owned());
                }
                self.phases[i].finished_at = Some(now);
            }
        }
        Ok(())
    }

    /// A user retries the failed or cancelled job at `now`: queued, with its
    /// whole attempt budget again, resuming at its first phase not
    /// completed. The caller checks the unique key. Returns `job.retried`.
    pub fn manual_retry(&mut self, now: OffsetDateTime) -> Result<EventData, StoreError> {
        self.step(JobAction::ManualRetry)?;
        self.attempt = 0;
        self.run_at = now;
        self.finished_at = None;
        self.error = None;
        self.cancel_requested = false;
        let from_phase = self
            .first_incomplete_phase()
            .map(|i| self.phases[i].name.clone());
        Ok(EventData::Retried { from_phase })
    }

    /// Retention marks the finished job stale at `now`. Returns `job.stale`.
    pub fn mark_stale(&mut self, now: OffsetDateTime) -> Result<EventData, StoreError> {
        self.step(JobAction::MarkStale)?;
        self.stale_at = Some(now);
        Ok(EventData::Stale {})
    }
}
