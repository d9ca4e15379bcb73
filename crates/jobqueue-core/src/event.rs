//! Event records: what every persisted transition appends.
//!
//! An [`Event`] carries its store-wide sequence number and typed
//! [`EventData`]. The JSON of `data` follows the event catalogue
//! (`docs/events.md`); the envelope
//! (`{"seq", "type", "job_id", ...}`) and SSE framing live in `jobqueue-events`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::id::JobId;
use crate::job::{JobError, Progress};
use crate::machine::EventType;

/// One persisted event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Strictly increasing across the whole store; never reused.
    pub seq: u64,
    /// The job it is about; `None` for an event about a whole pipeline
    /// (`pipeline.paused`, `pipeline.resumed`, see
    /// [`EventType::is_pipeline_event`]).
    pub job_id: Option<JobId>,
    /// That job's pipeline, or the pipeline a pipeline event is about.
    pub pipeline: String,
    /// When it happened.
    pub at: OffsetDateTime,
    /// What happened.
    pub data: EventData,
}

impl Event {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }
}

/// What happened, by event type (the catalogue in `docs/events.md`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[expect(
    missing_docs,
    reason = "fields are documented by the event catalogue, variant by variant"
)]
pub enum EventData {
    /// `job.created`
    Created {
        #[serde(with = "crate::timefmt::rfc3339")]
        run_at: OffsetDateTime,
        priority: i32,
    },
    /// `job.started`
    Started { attempt: u32 },
    /// `job.phase.started`
    PhaseStarted {
        phase: String,
        index: usize,
        attempt: u32,
    },
    /// `job.phase.progress`
    PhaseProgress {
        phase: String,
        percent: u8,
        message: Option<String>,
    },
    /// `job.phase.completed`
    PhaseCompleted {
        phase: String,
        index: usize,
        result: Value,
    },
    /// `job.phase.failed`; `retry_at` is `None` when no retry follows.
    PhaseFailed {
        phase: String,
        index: usize,
        error: String,
        #[serde(with = "crate::timefmt::rfc3339::option")]
        retry_at: Option<OffsetDateTime>,
    },
    /// `job.completed`
    Completed { results: Map<String, Value> },
    /// `job.failed`
    Failed { error: JobError },
    /// `job.cancelled`; `reason` is set only when the job was cancelled
    /// because a dependency failed or was cancelled (a plain cancel's data
    /// stays `{}`).
    Cancelled {
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// `job.retried` (a manual retry)
    Retried { from_phase: Option<String> },
    /// `job.interrupted`
    Interrupted {
        phase: String,
        progress: Option<Progress>,
    },
    /// `job.stale`
    Stale {},
    /// `job.deleted`
    Deleted {},
    /// `pipeline.paused`
    PipelinePaused {},
    /// `pipeline.resumed`
    PipelineResumed {},
    /// `job.snoozed`: phase `phase` (at `index`) runs again at `run_at`.
    Snoozed {
        phase: String,
        index: usize,
        #[serde(with = "crate::timefmt::rfc3339")]
        run_at: OffsetDateTime,
    },
}

/// Event data that does not fit its type.
#[derive(Debug, thiserror::Error)]
#[error("malformed {ty} event data: {error}")]
pub struct MalformedEvent {
    /// The type the data was read as.
    pub ty: EventType,
    /// Why it did not fit. Part of the message, so not also the error's
    /// `source()` (a chain would print it twice).
    pub error: serde_json::Error,
}

impl EventData {
    /// The event's type.
    pub const fn event_type(&self) -> EventType {
        match self {
            Self::Created { .. } => EventType::JobCreated,
            Self::Started { .. } => EventType::JobStarted,
            Self::PhaseStarted { .. } => EventType::PhaseStarted,
            Self::PhaseProgress { .. } => EventType::PhaseProgress,
            Self::PhaseCompleted { .. } => EventType::PhaseCompleted,
            Self::PhaseFailed { .. } => EventType::PhaseFailed,
            Self::Completed { .. } => EventType::JobCompleted,
            Self::Failed { .. } => EventType::JobFailed,
            Self::Cancelled { .. } => EventType::JobCancelled,
            Self::Retried { .. } => EventType::JobRetried,
            Self::Interrupted { .. } => EventType::JobInterrupted,
            Self::Stale {} => EventType::JobStale,
            Self::Deleted {} => EventType::JobDeleted,
            Self::PipelinePaused {} => EventType::PipelinePaused,
            Self::PipelineResumed {} => EventType::PipelineResumed,
            Self::Snoozed { .. } => EventType::JobSnoozed,
        }
    }

    /// [`EventData::to_json`] as JSON text, written straight from the data
    /// (no `Value` tree in between: this runs for every stored event). The
    /// same object, though its keys may come in another order.
    pub fn to_json_string(&self) -> String {
        // The derived `Serialize` writes the catalogue's shape (a test
        // compares it with `to_json` for every type); it cannot fail, as
        // every map key is text and times format infallibly, but should it,
        // the value-built form is the answer.
        serde_json::to_string(self).unwrap_or_else(|_| self.to_json().to_string())
    }

    /// The `data` object of the event catalogue (`docs/events.md`). Built
    /// value by value, so it cannot fail: times are RFC 3339 text (see
    /// [`crate::timefmt`]), never `null` in place of a value.
    pub fn to_json(&self) -> Value {
        use serde_json::json;
        let time = |t: &OffsetDateTime| Value::String(crate::timefmt::format(*t));
        let progress = |p: &Option<Progress>| match p {
            Some(p) => json!({"percent": p.percent, "message": p.message}),
            None => Value::Null,
        };
        match self {
            Self::Created { run_at, priority } => {
                json!({"run_at": time(run_at), "priority": priority})
            }
            Self::Started { attempt } => json!({"attempt": attempt}),
            Self::PhaseStarted {
                phase,
                index,
                attempt,
            } => json!({"phase": phase, "index": index, "attempt": attempt}),
            Self::PhaseProgress {
                phase,
                percent,
                message,
            } => json!({"phase": phase, "percent": percent, "message": message}),
            Self::PhaseCompleted {
                phase,
                index,
                result,
            } => json!({"phase": phase, "index": index, "result": result}),
            Self::PhaseFailed {
                phase,
                index,
                error,
                retry_at,
            } => json!({
                "phase": phase,
                "index": index,
                "error": error,
                "retry_at": retry_at.as_ref().map_or(Value::Null, time),
            }),
            Self::Completed { results } => json!({"results": results}),
            Self::Failed { error } => json!({"error": {
                "phase": error.phase,
                "message": error.message,
                "attempt": error.attempt,
            }}),
            Self::Cancelled { reason: None }
            | Self::Stale {}
            | Self::Deleted {}
            | Self::PipelinePaused {}
            | Self::PipelineResumed {} => json!({}),
            Self::Cancelled {
                reason: Some(reason),
            } => json!({"reason": reason}),
            Self::Retried { from_phase } => json!({"from_phase": from_phase}),
            Self::Interrupted { phase, progress: p } => {
                json!({"phase": phase, "progress": progress(p)})
            }
            Self::Snoozed {
                phase,
                index,
                run_at,
            } => json!({"phase": phase, "index": index, "run_at": time(run_at)}),
        }
    }

    /// Reads the `data` object of an event of type `ty`.
    pub fn from_json(ty: EventType, data: Value) -> Result<Self, MalformedEvent> {
        #[derive(Deserialize)]
        struct CreatedD {
            #[serde(with = "crate::timefmt::rfc3339")]
            run_at: OffsetDateTime,
            priority: i32,
        }
        #[derive(Deserialize)]
        struct StartedD {
            attempt: u32,
        }
        #[derive(Deserialize)]
        struct PhaseStartedD {
            phase: String,
            index: usize,
            attempt: u32,
        }
        #[derive(Deserialize)]
        struct ProgressD {
            phase: String,
            percent: u8,
            message: Option<String>,
        }
        #[derive(Deserialize)]
        struct PhaseCompletedD {
            phase: String,
            index: usize,
            result: Value,
        }
        #[derive(Deserialize)]
        struct PhaseFailedD {
            phase: String,
            index: usize,
            error: String,
            #[serde(with = "crate::timefmt::rfc3339::option")]
            retry_at: Option<OffsetDateTime>,
        }
        #[derive(Deserialize)]
        struct CompletedD {
            results: Map<String, Value>,
        }
        #[derive(Deserialize)]
        struct FailedD {
            error: JobError,
        }
        #[derive(Deserialize)]
        struct RetriedD {
            from_phase: Option<String>,
        }
        #[derive(Deserialize)]
        struct InterruptedD {
            phase: String,
            progress: Option<Progress>,
        }
        #[derive(Deserialize)]
        struct SnoozedD {
            phase: String,
            index: usize,
            #[serde(with = "crate::timefmt::rfc3339")]
            run_at: OffsetDateTime,
        }
        #[derive(Deserialize)]
        struct EmptyD {}
        #[derive(Deserialize)]
        struct CancelledD {
            #[serde(default)]
            reason: Option<String>,
        }

        let err = |error| MalformedEvent { ty, error };
        let d = data;
        Ok(match ty {
            EventType::JobCreated => {
                let v: CreatedD = serde_json::from_value(d).map_err(err)?;
                Self::Created {
                    run_at: v.run_at,
                    priority: v.priority,
                }
            }
            EventType::JobStarted => {
                let v: StartedD = serde_json::from_value(d).map_err(err)?;
                Self::Started { attempt: v.attempt }
            }
            EventType::PhaseStarted => {
                let v: PhaseStartedD = serde_json::from_value(d).map_err(err)?;
                Self::PhaseStarted {
                    phase: v.phase,
                    index: v.index,
                    attempt: v.attempt,
                }
            }
            EventType::PhaseProgress => {
                let v: ProgressD = serde_json::from_value(d).map_err(err)?;
                Self::PhaseProgress {
                    phase: v.phase,
                    percent: v.percent,
                    message: v.message,
                }
            }
            EventType::PhaseCompleted => {
                let v: PhaseCompletedD = serde_json::from_value(d).map_err(err)?;
                Self::PhaseCompleted {
                    phase: v.phase,
                    index: v.index,
                    result: v.result,
                }
            }
            EventType::PhaseFailed => {
                let v: PhaseFailedD = serde_json::from_value(d).map_err(err)?;
                Self::PhaseFailed {
                    phase: v.phase,
                    index: v.index,
                    error: v.error,
                    retry_at: v.retry_at,
                }
            }
            EventType::JobCompleted => {
                let v: CompletedD = serde_json::from_value(d).map_err(err)?;
                Self::Completed { results: v.results }
            }
            EventType::JobFailed => {
                let v: FailedD = serde_json::from_value(d).map_err(err)?;
                Self::Failed { error: v.error }
            }
            EventType::JobCancelled => {
                let v: CancelledD = serde_json::from_value(d).map_err(err)?;
                Self::Cancelled { reason: v.reason }
            }
            EventType::JobRetried => {
                let v: RetriedD = serde_json::from_value(d).map_err(err)?;
                Self::Retried {
                    from_phase: v.from_phase,
                }
            }
            EventType::JobInterrupted => {
                let v: InterruptedD = serde_json::from_value(d).map_err(err)?;
                Self::Interrupted {
                    phase: v.phase,
                    progress: v.progress,
                }
            }
            EventType::JobStale => {
                let _: EmptyD = serde_json::from_value(d).map_err(err)?;
                Self::Stale {}
            }
            EventType::JobDeleted => {
                let _: EmptyD = serde_json::from_value(d).map_err(err)?;
                Self::Deleted {}
            }
            EventType::PipelinePaused => {
                let _: EmptyD = serde_json::from_value(d).map_err(err)?;
                Self::PipelinePaused {}
            }
            EventType::PipelineResumed => {
                let _: EmptyD = serde_json::from_value(d).map_err(err)?;
                Self::PipelineResumed {}
            }
            EventType::JobSnoozed => {
                let v: SnoozedD = serde_json::from_value(d).map_err(err)?;
                Self::Snoozed {
                    phase: v.phase,
                    index: v.index,
                    run_at: v.run_at,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn samples() -> Vec<EventData> {
        let at = datetime!(2030-01-02 03:04:05 UTC);
        vec![
            EventData::Created {
                run_at: at,
                priority: 3,
            },
            EventData::Started { attempt: 1 },
            EventData::PhaseStarted {
                phase: "fetch".into(),
                index: 0,
                attempt: 2,
            },
            EventData::PhaseProgress {
                phase: "fetch".into(),
                percent: 40,
                message: Some("x".into()),
            },
            EventData::PhaseCompleted {
                phase: "fetch".into(),
                index: 0,
                result: json!({"n": 1}),
            },
            EventData::PhaseFailed {
                phase: "fetch".into(),
                index: 0,
                error: "boom".into(),
                retry_at: Some(at),
            },
            EventData::PhaseFailed {
                phase: "fetch".into(),
                index: 0,
                error: "boom".into(),
                retry_at: None,
            },
            EventData::Completed {
                results: Map::new(),
            },
            EventData::Failed {
                error: JobError {
                    phase: None,
                    message: "m".into(),
                    attempt: 1,
                },
            },
            EventData::Cancelled { reason: None },
            EventData::Cancelled {
                reason: Some("dependency x failed".into()),
            },
            EventData::Retried {
                from_phase: Some("b".into()),
            },
            EventData::Interrupted {
                phase: "b".into(),
                progress: Some(Progress::new(5, None)),
            },
            EventData::Stale {},
            EventData::Deleted {},
            EventData::PipelinePaused {},
            EventData::PipelineResumed {},
            EventData::Snoozed {
                phase: "b".into(),
                index: 1,
                run_at: at,
            },
        ]
    }

    #[test]
    fn every_type_round_trips() {
        let all = samples();
        for ty in EventType::ALL {
            assert!(
                all.iter().any(|d| d.event_type() == *ty),
                "no sample for {ty}"
            );
        }
        for d in all {
            let back = EventData::from_json(d.event_type(), d.to_json()).unwrap();
            assert_eq!(back, d);
        }
    }

    #[test]
    fn data_matches_the_contract() {
        let at = datetime!(2030-01-02 03:04:05 UTC);
        assert_eq!(
            EventData::PhaseFailed {
                phase: "a".into(),
                index: 1,
                error: "e".into(),
                retry_at: Some(at)
            }
            .to_json(),
            json!({"phase": "a", "index": 1, "error": "e", "retry_at": "2030-01-02T03:04:05Z"})
        );
        assert_eq!(EventData::Cancelled { reason: None }.to_json(), json!({}));
        assert_eq!(
            EventData::Cancelled {
                reason: Some("dependency x failed".into())
            }
            .to_json(),
            json!({"reason": "dependency x failed"})
        );
        assert_eq!(
            EventData::Created {
                run_at: at,
                priority: 0
            }
            .to_json(),
            json!({"run_at": "2030-01-02T03:04:05Z", "priority": 0})
        );
    }

    #[test]
    fn to_json_agrees_with_serialize() {
        for d in samples() {
            assert_eq!(d.to_json(), serde_json::to_value(&d).unwrap(), "{d:?}");
            let text: serde_json::Value = serde_json::from_str(&d.to_json_string()).unwrap();
            assert_eq!(d.to_json(), text, "{d:?}");
        }
    }

    #[test]
    fn times_out_of_range_are_never_null() {
        let d = EventData::Created {
            run_at: time::macros::datetime!(-0001-01-01 00:00:00 UTC),
            priority: 0,
        };
        let json = d.to_json();
        assert_eq!(json["run_at"], "-0001-01-01T00:00:00Z");
        let text: serde_json::Value = serde_json::from_str(&d.to_json_string()).unwrap();
        assert_eq!(text, json);
        assert_eq!(
            EventData::from_json(EventType::JobCreated, json).unwrap(),
            d
        );
    }

    #[test]
    fn malformed_data_is_an_error() {
        let err = EventData::from_json(EventType::JobStarted, json!({"nope": 1})).unwrap_err();
        assert!(err.to_string().contains("job.started"));
    }
}
