//! The transition table applied to [`Job`] values: what every store does to
//! its in-memory copy of a job before it writes it, so all stores share one
//! implementation of each change (and `MemoryStore` is the reference by
//! construction, not by imitation).

use time::OffsetDateTime;

use crate::error::StoreError;
use crate::event::EventData;
use crate::job::{Interrupted, Job, Phase};
use crate::machine::{JobAction, PhaseAction, PhaseStatus, job_transition, phase_transition};

impl Job {
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
