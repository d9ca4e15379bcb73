//! The transition table applied to [`Job`] values: what every store does to
//! its in-memory copy of a job before it writes it, so all stores share one
//! implementation of each change (and `MemoryStore` is the reference by
//! construction, not by imitation).

use std::time::Duration;

use time::OffsetDateTime;

use crate::clock::truncate_to_micros;
use crate::error::StoreError;
use crate::event::EventData;
use crate::id::JobId;
use crate::job::{Interrupted, Job, NewJob, Phase};
use crate::machine::{
    JobAction, JobStatus, PhaseAction, PhaseStatus, job_transition, phase_transition,
};

/// When a lease taken at `now` for `extend` runs out (to the microsecond, as
/// stores keep times), or `Invalid` when that is past what a time can hold.
pub fn lease_until(now: OffsetDateTime, extend: Duration) -> Result<OffsetDateTime, StoreError> {
    time::Duration::try_from(extend)
        .ok()
        .and_then(|d| now.checked_add(d))
        .map(truncate_to_micros)
        .ok_or_else(|| StoreError::Invalid(format!("lease duration {extend:?} is too long")))
}

impl Job {
    /// A new job from `spec`, enqueued at `now`: `queued`, a fresh id, its
    /// phases `pending`, `run_at` now unless the spec says later. The spec
    /// must have passed [`NewJob::validate`].
    pub fn queued(spec: NewJob, now: OffsetDateTime) -> Self {
        Self {
            id: JobId::new(),
            pipeline: spec.pipeline,
            status: JobStatus::Queued,
            input: spec.input,
            priority: spec.priority,
            unique_key: spec.unique_key,
            attempt: 0,
            max_attempts: spec.max_attempts,
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
        let running = self
            .phases
            .iter()
            .position(|p| p.status == PhaseStatus::Running);
        let (phase, progress) = match running {
            Some(i) => {
                self.step_phase(i, PhaseAction::Interrupt)?;
                (self.phases[i].name.clone(), self.phases[i].progress.clone())
            }
            None => {
                let next = self
                    .first_incomplete_phase()
                    .map(|i| self.phases[i].name.clone());
                (next.unwrap_or_default(), None)
            }
        };
        self.interrupted = Some(Interrupted {
            phase: phase.clone(),
            at: now,
            progress: progress.clone(),
        });
        self.run_at = now;
        self.release_lease();
        Ok(EventData::Interrupted { phase, progress })
    }
}
