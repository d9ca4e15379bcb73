//! The state machine of jobs and phases: **one transition table** decides every
//! status change, and the string names of states, actions and event types are
//! defined here and nowhere else.
//!
//! A store applies a change only after [`job_transition`] or
//! [`phase_transition`] allowed it; the conformance suite and the proptest model
//! check that it does. `cargo xtask codegen` renders [`JOB_TRANSITIONS`] and
//! [`PHASE_TRANSITIONS`] into `docs/architecture.md`.

use crate::names::named_enum;

named_enum! {
    /// The status of a job.
    ///
    /// `Deleted` is never stored: it is the target of the delete transition,
    /// after which the job's rows are gone.
    pub enum JobStatus ("job status") {
        /// Waiting to be claimed (possibly not before its `run_at`).
        Queued => "queued",
        /// Claimed by a worker that holds its lease.
        Running => "running",
        /// Every phase completed.
        Completed => "completed",
        /// A phase failed permanently or the attempts ran out (or, by its
        /// option, a dependency failed or was cancelled).
        Failed => "failed",
        /// Cancelled by a user or a phase (or because a dependency failed
        /// or was cancelled).
        Cancelled => "cancelled",
        /// Finished long enough ago that retention marked it.
        Stale => "stale",
        /// Removed with all its rows.
        Deleted => "deleted",
    }
}

impl JobStatus {
    /// Completed, failed or cancelled: the job will not run again unless a
    /// user retries it.
    pub const fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Queued or running: the states in which a unique key is held.
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

named_enum! {
    /// The status of one phase of a job.
    pub enum PhaseStatus ("phase status") {
        /// Not started in this job yet, or interrupted and waiting to run again.
        Pending => "pending",
        /// Running in a worker.
        Running => "running",
        /// Done; its result is stored. Final for the life of the job.
        Completed => "completed",
        /// Its last run failed.
        Failed => "failed",
        /// Its job was cancelled while it ran.
        Cancelled => "cancelled",
    }
}

named_enum! {
    /// The type of an event. Every persisted transition appends one or more.
    pub enum EventType ("event type") {
        /// A job was enqueued.
        JobCreated => "job.created",
        /// A worker claimed the job and started an attempt.
        JobStarted => "job.started",
        /// A phase started running.
        PhaseStarted => "job.phase.started",
        /// A phase reported progress (may be coalesced).
        PhaseProgress => "job.phase.progress",
        /// A phase completed with its result.
        PhaseCompleted => "job.phase.completed",
        /// A phase failed; `retry_at` says whether a retry follows.
        PhaseFailed => "job.phase.failed",
        /// Every phase completed.
        JobCompleted => "job.completed",
        /// The job failed for good.
        JobFailed => "job.failed",
        /// The job was cancelled.
        JobCancelled => "job.cancelled",
        /// A user retried a failed or cancelled job.
        JobRetried => "job.retried",
        /// A running job was cut short by a crash or a shutdown and queued again.
        JobInterrupted => "job.interrupted",
        /// Retention marked the finished job stale.
        JobStale => "job.stale",
        /// The job was deleted.
        JobDeleted => "job.deleted",
        /// A phase asked to run again later: the job is queued at `run_at`,
        /// and the attempt it was in is not counted.
        JobSnoozed => "job.snoozed",
        /// A pipeline was paused: its queued jobs are not claimed until it
        /// is resumed. About a pipeline, not a job (no `job_id`).
        PipelinePaused => "pipeline.paused",
        /// A paused pipeline was resumed. About a pipeline, not a job.
        PipelineResumed => "pipeline.resumed",
    }
}

impl EventType {
    /// Whether events of this type are about a pipeline rather than one job
    /// (`pipeline.paused`, `pipeline.resumed`): they carry no job id.
    pub const fn is_pipeline_event(self) -> bool {
        matches!(self, Self::PipelinePaused | Self::PipelineResumed)
    }
}

named_enum! {
    /// What happens to a job; the rows of [`JOB_TRANSITIONS`] say from which
    /// status each is allowed.
    pub enum JobAction ("job action") {
        /// A worker claims a queued job.
        Claim => "claim",
        /// The last phase completed.
        Complete => "complete",
        /// A permanent failure, or the attempts ran out; or a queued job
        /// whose dependency failed, by its option.
        Fail => "fail",
        /// A retryable failure with attempts left: queued again at `run_at`.
        ScheduleRetry => "schedule_retry",
        /// A crash or a shutdown cut the running attempt short.
        Interrupt => "interrupt",
        /// A user cancels the job.
        Cancel => "cancel",
        /// A user retries a failed or cancelled job.
        ManualRetry => "manual_retry",
        /// Retention marks a finished job stale.
        MarkStale => "mark_stale",
        /// Retention or a user deletes the job.
        Delete => "delete",
        /// The running phase asks to run again later: queued at `run_at`,
        /// without spending an attempt.
        Snooze => "snooze",
    }
}

named_enum! {
    /// What happens to a phase; see [`PHASE_TRANSITIONS`].
    pub enum PhaseAction ("phase action") {
        /// The phase starts (first run, a retry, or a resume).
        Start => "start",
        /// The running phase reports progress.
        Progress => "progress",
        /// The phase returns its result.
        Complete => "complete",
        /// The phase returns an error (or panics, or times out).
        Fail => "fail",
        /// The job is cancelled while this phase runs.
        Cancel => "cancel",
        /// A crash or a shutdown cut the phase short.
        Interrupt => "interrupt",
        /// The phase asks to run again later (its job is snoozed).
        Snooze => "snooze",
        /// The running phase saves a checkpoint: its status does not change.
        Checkpoint => "checkpoint",
    }
}

/// One allowed change of a job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRule {
    /// The status the job must be in.
    pub from: JobStatus,
    /// What happens.
    pub action: JobAction,
    /// The status it ends in.
    pub to: JobStatus,
    /// The event appended with the change, if the change has its own event.
    /// A scheduled retry has none: the `job.phase.failed` event of the phase
    /// that failed carries its `retry_at`.
    pub event: Option<EventType>,
}

/// One allowed change of a phase's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseRule {
    /// The status the phase must be in.
    pub from: PhaseStatus,
    /// What happens.
    pub action: PhaseAction,
    /// The status it ends in.
    pub to: PhaseStatus,
    /// The event appended with the change, if any. A cancelled, interrupted
    /// or snoozed phase has none of its own: the job's event covers it. A
    /// checkpoint has none: it is the phase's own state, not a change of
    /// status, and shows on the job's record.
    pub event: Option<EventType>,
}

const fn job(
    from: JobStatus,
    action: JobAction,
    to: JobStatus,
    event: Option<EventType>,
) -> JobRule {
    JobRule {
        from,
        action,
        to,
        event,
    }
}

const fn phase(
    from: PhaseStatus,
    action: PhaseAction,
    to: PhaseStatus,
    event: Option<EventType>,
) -> PhaseRule {
    PhaseRule {
        from,
        action,
        to,
        event,
    }
}

/// Every allowed change of a job's status. Anything not listed is refused.
pub const JOB_TRANSITIONS: &[JobRule] = {
    use EventType as E;
    use JobAction as A;
    use JobStatus as S;
    &[
        job(S::Queued, A::Claim, S::Running, Some(E::JobStarted)),
        job(S::Running, A::Complete, S::Completed, Some(E::JobCompleted)),
        job(S::Running, A::Fail, S::Failed, Some(E::JobFailed)),
        job(S::Queued, A::Fail, S::Failed, Some(E::JobFailed)),
        job(S::Running, A::ScheduleRetry, S::Queued, None),
        job(S::Running, A::Interrupt, S::Queued, Some(E::JobInterrupted)),
        job(S::Running, A::Snooze, S::Queued, Some(E::JobSnoozed)),
        job(S::Queued, A::Cancel, S::Cancelled, Some(E::JobCancelled)),
        job(S::Running, A::Cancel, S::Cancelled, Some(E::JobCancelled)),
        job(S::Failed, A::ManualRetry, S::Queued, Some(E::JobRetried)),
        job(S::Cancelled, A::ManualRetry, S::Queued, Some(E::JobRetried)),
        job(S::Completed, A::MarkStale, S::Stale, Some(E::JobStale)),
        job(S::Failed, A::MarkStale, S::Stale, Some(E::JobStale)),
        job(S::Cancelled, A::MarkStale, S::Stale, Some(E::JobStale)),
        job(S::Completed, A::Delete, S::Deleted, Some(E::JobDeleted)),
        job(S::Failed, A::Delete, S::Deleted, Some(E::JobDeleted)),
        job(S::Cancelled, A::Delete, S::Deleted, Some(E::JobDeleted)),
        job(S::Stale, A::Delete, S::Deleted, Some(E::JobDeleted)),
    ]
};

/// Every allowed change of a phase's status. `Completed` appears in no `from`:
/// a completed phase is final for the life of its job.
pub const PHASE_TRANSITIONS: &[PhaseRule] = {
    use EventType as E;
    use PhaseAction as A;
    use PhaseStatus as S;
    &[
        phase(S::Pending, A::Start, S::Running, Some(E::PhaseStarted)),
        phase(S::Failed, A::Start, S::Running, Some(E::PhaseStarted)),
        phase(S::Cancelled, A::Start, S::Running, Some(E::PhaseStarted)),
        phase(S::Running, A::Progress, S::Running, Some(E::PhaseProgress)),
        phase(
            S::Running,
            A::Complete,
            S::Completed,
            Some(E::PhaseCompleted),
        ),
        phase(S::Running, A::Fail, S::Failed, Some(E::PhaseFailed)),
        phase(S::Running, A::Cancel, S::Cancelled, None),
        phase(S::Running, A::Interrupt, S::Pending, None),
        phase(S::Running, A::Snooze, S::Pending, None),
        phase(S::Running, A::Checkpoint, S::Running, None),
    ]
};

/// A change the transition table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// A job cannot take this action in its current status.
    #[error("cannot {action} a job that is {from}")]
    Job {
        /// The job's current status.
        from: JobStatus,
        /// The refused action.
        action: JobAction,
    },
    /// A phase cannot take this action in its current status.
    #[error("cannot {action} phase {phase:?}, which is {from}")]
    Phase {
        /// The phase's name.
        phase: String,
        /// The phase's current status.
        from: PhaseStatus,
        /// The refused action.
        action: PhaseAction,
    },
}

/// Looks up the rule for `action` on a job in status `from`.
pub fn job_transition(
    from: JobStatus,
    action: JobAction,
) -> Result<&'static JobRule, TransitionError> {
    JOB_TRANSITIONS
        .iter()
        .find(|r| r.from == from && r.action == action)
        .ok_or(TransitionError::Job { from, action })
}

/// Looks up the rule for `action` on the phase `name` in status `from`.
pub fn phase_transition(
    name: &str,
    from: PhaseStatus,
    action: PhaseAction,
) -> Result<&'static PhaseRule, TransitionError> {
    PHASE_TRANSITIONS
        .iter()
        .find(|r| r.from == from && r.action == action)
        .ok_or_else(|| TransitionError::Phase {
            phase: name.to_owned(),
            from,
            action,
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_round_trip() {
        fn check<T>(all: &[T])
        where
            T: Copy
                + PartialEq
                + std::fmt::Debug
                + std::str::FromStr
                + std::fmt::Display
                + serde::Serialize,
            <T as std::str::FromStr>::Err: std::fmt::Debug,
        {
            let mut seen = HashSet::new();
            for v in all {
                let text = v.to_string();
                assert!(seen.insert(text.clone()), "duplicate name {text}");
                assert_eq!(text.parse::<T>().unwrap(), *v);
                assert_eq!(
                    serde_json::to_value(v).unwrap(),
                    serde_json::Value::String(text)
                );
            }
        }
        check(JobStatus::ALL);
        check(PhaseStatus::ALL);
        check(EventType::ALL);
        check(JobAction::ALL);
        check(PhaseAction::ALL);
        assert!("bogus".parse::<JobStatus>().is_err());
    }

    #[test]
    fn table_is_a_function() {
        let mut seen = HashSet::new();
        for r in JOB_TRANSITIONS {
            assert!(seen.insert((r.from, r.action)), "two job rules for {r:?}");
            assert_ne!(r.from, JobStatus::Deleted, "nothing leaves deleted");
        }
        let mut seen = HashSet::new();
        for r in PHASE_TRANSITIONS {
            assert!(seen.insert((r.from, r.action)), "two phase rules for {r:?}");
            assert_ne!(r.from, PhaseStatus::Completed, "a completed phase is final");
        }
    }

    #[test]
    fn refused_transitions_say_why() {
        let err = job_transition(JobStatus::Completed, JobAction::Claim).unwrap_err();
        assert_eq!(err.to_string(), "cannot claim a job that is completed");
        let err =
            phase_transition("fetch", PhaseStatus::Completed, PhaseAction::Start).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot start phase \"fetch\", which is completed"
        );
    }

    #[test]
    fn every_job_event_type_has_a_source() {
        // Each job event type is emitted by some rule, or by enqueue
        // (job.created); pipeline events by pausing and resuming.
        for ty in EventType::ALL.iter().filter(|t| !t.is_pipeline_event()) {
            let by_rule = JOB_TRANSITIONS.iter().any(|r| r.event == Some(*ty))
                || PHASE_TRANSITIONS.iter().any(|r| r.event == Some(*ty));
            assert!(
                by_rule || *ty == EventType::JobCreated,
                "{ty} has no source"
            );
        }
    }
}
