//! The wire JSON of an event (see `docs/events.md`): one shape for SSE `data:`
//! lines and webhook bodies.
//!
//! ```json
//! {"seq": 42, "type": "job.phase.completed", "job_id": "...", "pipeline": "build",
//!  "at": "2030-01-01T00:00:00Z", "data": {...}}
//! ```
//!
//! An event about a whole pipeline (`pipeline.paused`, `pipeline.resumed`)
//! has `"job_id": null`; every job event has its job's id, as before.

use jobqueue_core::Event;
use serde_json::{Map, Value};

/// The event as the JSON object of `docs/events.md`.
pub fn event_json(event: &Event) -> Value {
    let mut obj = Map::with_capacity(6);
    obj.insert("seq".into(), Value::from(event.seq));
    obj.insert("type".into(), Value::from(event.event_type().as_str()));
    let job_id = event
        .job_id
        .map_or(Value::Null, |id| Value::from(id.to_string()));
    obj.insert("job_id".into(), job_id);
    obj.insert("pipeline".into(), Value::from(event.pipeline.clone()));
    obj.insert(
        "at".into(),
        Value::from(jobqueue_core::timefmt::format(event.at)),
    );
    obj.insert("data".into(), event.data.to_json());
    Value::Object(obj)
}

/// [`event_json`] serialized on one line, as SSE and webhooks send it.
pub fn event_json_string(event: &Event) -> String {
    // serde_json escapes newlines inside strings, so the text is one line.
    event_json(event).to_string()
}

#[cfg(test)]
mod tests {
    use jobqueue_core::{EventData, JobId};
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn envelope_matches_the_contract() {
        let id: JobId = "0192f7c5-0000-7000-8000-000000000001".parse().unwrap();
        let event = Event {
            seq: 42,
            job_id: Some(id),
            pipeline: "build".into(),
            at: datetime!(2030-01-02 03:04:05.25 +01:00),
            data: EventData::PhaseCompleted {
                phase: "fetch".into(),
                index: 0,
                result: json!({"n": 1}),
            },
        };
        assert_eq!(
            event_json(&event),
            json!({
                "seq": 42,
                "type": "job.phase.completed",
                "job_id": "0192f7c5-0000-7000-8000-000000000001",
                "pipeline": "build",
                "at": "2030-01-02T02:04:05.25Z",
                "data": {"phase": "fetch", "index": 0, "result": {"n": 1}},
            })
        );
    }

    #[test]
    fn a_pipeline_event_has_a_null_job_id() {
        let event = Event {
            seq: 7,
            job_id: None,
            pipeline: "build".into(),
            at: datetime!(2030-01-02 03:04:05 UTC),
            data: EventData::PipelinePaused {},
        };
        assert_eq!(
            event_json(&event),
            json!({
                "seq": 7,
                "type": "pipeline.paused",
                "job_id": null,
                "pipeline": "build",
                "at": "2030-01-02T03:04:05Z",
                "data": {},
            })
        );
    }

    #[test]
    fn string_form_is_one_line() {
        let event = Event {
            seq: 1,
            job_id: Some(JobId::new()),
            pipeline: "p".into(),
            at: datetime!(2030-01-01 00:00:00 UTC),
            data: EventData::PhaseProgress {
                phase: "a".into(),
                percent: 5,
                message: Some("line one\nline two\r\n".into()),
            },
        };
        let text = event_json_string(&event);
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["data"]["message"], "line one\nline two\r\n");
        assert_eq!(back["at"], "2030-01-01T00:00:00Z");
    }
}
