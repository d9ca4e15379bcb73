//! Uniqueness beyond a plain unique key: keys made from a job's input, and
//! keys held for a window of time in every state.
//!
//! Two rules, and a job may be under both:
//!
//! - **The unique key** (`NewJob::unique_key`, or the key made from the
//!   input with `NewJob::unique_by_input`): at most one *queued or running*
//!   job holds it.
//! - **The unique period** (`NewJob::unique_for`): the job also holds its
//!   key for the window of the period in which it is created, in *every*
//!   state (queued, running, completed, failed, cancelled, stale), until its
//!   row is deleted. Windows are fixed, not sliding: the window of a job
//!   created at `t` (the store's clock, Unix seconds) is `[floor(t / p) * p,
//!   floor(t / p) * p + p)` for a period of `p` seconds, so with a period of
//!   an hour the windows are 00:00 to 01:00, 01:00 to 02:00, ... UTC. The
//!   key and window are stored together as the job's *period key*
//!   ([`period_key`]), which stores hold under a unique index across all
//!   states, so two processes cannot both win.
//!
//! Every store decides a batch's duplicates with [`first_duplicate`], so
//! they agree on which job of a batch is refused and why.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::StoreError;
use crate::id::JobId;
use crate::job::Job;

/// The prefix of a key made from a job's pipeline and input.
pub const INPUT_KEY_PREFIX: &str = "input:";

/// The longest unique period: ten years (as the longest retry delay).
pub const MAX_UNIQUE_PERIOD: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The key of a job of `pipeline` with `input`, for uniqueness by input:
/// `input:` and the SHA-256, in lowercase hex, of the pipeline name, a NUL
/// byte and the input as [`canonical_json`]. Two inputs that are the same
/// JSON value (object keys in any order, any whitespace) give the same key.
pub fn input_key(pipeline: &str, input: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(pipeline.as_bytes());
    hasher.update([0u8]);
    hasher.update(canonical_json(input).as_bytes());
    let digest = hasher.finalize();
    let mut key = String::with_capacity(INPUT_KEY_PREFIX.len().saturating_add(64));
    key.push_str(INPUT_KEY_PREFIX);
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// `value` as compact JSON with every object's keys in byte order, whatever
/// order the value holds them in: one text per JSON value.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(&mut out, value);
    out
}

fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(out, item);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Checks a unique period: a whole number of seconds, from one second to
/// [`MAX_UNIQUE_PERIOD`].
pub fn check_period(period: Duration) -> Result<(), String> {
    if period < Duration::from_secs(1) || period.subsec_nanos() != 0 {
        return Err(format!(
            "unique_for must be a whole number of seconds, at least 1, got {period:?}"
        ));
    }
    if period > MAX_UNIQUE_PERIOD {
        return Err(format!(
            "unique_for must be at most ten years ({} s), got {} s",
            MAX_UNIQUE_PERIOD.as_secs(),
            period.as_secs()
        ));
    }
    Ok(())
}

/// The window of `period` that `at` falls in: its start (inclusive) and end
/// (exclusive). `None` for a period [`check_period`] refuses or a window
/// past what a time can hold.
pub fn window(at: OffsetDateTime, period: Duration) -> Option<(OffsetDateTime, OffsetDateTime)> {
    check_period(period).ok()?;
    let p = i64::try_from(period.as_secs()).ok()?;
    let index = at.unix_timestamp().checked_div_euclid(p)?;
    let start = index.checked_mul(p)?;
    let end = start.checked_add(p)?;
    Some((
        OffsetDateTime::from_unix_timestamp(start).ok()?,
        OffsetDateTime::from_unix_timestamp(end).ok()?,
    ))
}

/// The period key of a job holding `key` for `period`, created at `at`:
/// `<key>@<window start, RFC 3339>/<period in seconds>s`, e.g.
/// `report@2026-12-02T10:00:00Z/3600s`. Jobs with the same key and period
/// created in the same window have the same period key. `None` when
/// [`window`] has none.
pub fn period_key(key: &str, period: Duration, at: OffsetDateTime) -> Option<String> {
    let (start, _) = window(at, period)?;
    Some(format!(
        "{key}@{}/{}s",
        crate::timefmt::format(start),
        period.as_secs()
    ))
}

/// A key a store looks up for [`first_duplicate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held<'a> {
    /// A unique key: the queued or running job that holds it.
    Active(&'a str),
    /// A period key: the job, in any state, that holds it.
    Period(&'a str),
}

/// The first job of `jobs` (a batch about to be inserted) that another job
/// already holds a key of, as every store decides it: its unique key held by
/// a queued or running job or by an earlier job of the batch, else its
/// period key held by any job or an earlier job of the batch. `holder` looks
/// a key up in the store. Returns the job's index and the error that
/// refuses it.
pub fn first_duplicate<E>(
    jobs: &[Job],
    mut holder: impl FnMut(Held<'_>) -> Result<Option<JobId>, E>,
) -> Result<Option<(usize, StoreError)>, E> {
    for (i, job) in jobs.iter().enumerate() {
        let earlier = &jobs[..i];
        if let Some(key) = &job.unique_key {
            let in_batch = earlier.iter().find(|j| j.unique_key.as_ref() == Some(key));
            let holder = match in_batch {
                Some(j) => Some(j.id),
                None => holder(Held::Active(key))?,
            };
            if let Some(existing) = holder {
                let key = key.clone();
                return Ok(Some((i, StoreError::Duplicate { key, existing })));
            }
        }
        if let Some(pkey) = &job.period_key {
            let in_batch = earlier.iter().find(|j| j.period_key.as_ref() == Some(pkey));
            let holder = match in_batch {
                Some(j) => Some(j.id),
                None => holder(Held::Period(pkey))?,
            };
            if let Some(existing) = holder {
                return Ok(Some((i, period_duplicate(pkey, existing))));
            }
        }
    }
    Ok(None)
}

/// The error that refuses a job whose period key `period_key` the job
/// `existing` holds.
pub fn period_duplicate(period_key: &str, existing: JobId) -> StoreError {
    StoreError::DuplicateInPeriod {
        period_key: period_key.to_owned(),
        existing,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    #[test]
    fn input_keys_ignore_key_order_and_name_the_pipeline() {
        let a = input_key("p", &json!({"a": 1, "b": [1, {"y": 2, "x": 1}]}));
        let b = input_key("p", &json!({"b": [1, {"x": 1, "y": 2}], "a": 1}));
        assert_eq!(a, b);
        assert!(a.starts_with(INPUT_KEY_PREFIX));
        assert_eq!(a.len(), INPUT_KEY_PREFIX.len() + 64);
        assert_ne!(
            a,
            input_key("q", &json!({"a": 1, "b": [1, {"y": 2, "x": 1}]}))
        );
        assert_ne!(
            a,
            input_key("p", &json!({"a": 2, "b": [1, {"y": 2, "x": 1}]}))
        );
        // Pipeline and input cannot run into each other.
        assert_ne!(input_key("ab", &json!("c")), input_key("a", &json!("bc")));
    }

    #[test]
    fn canonical_json_is_compact_and_sorted() {
        let v = json!({"b": "x\"y", "a": [null, true, 1.5, {"d": 1, "c": 2}]});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":[null,true,1.5,{"c":2,"d":1}],"b":"x\"y"}"#
        );
    }

    #[test]
    fn windows_are_fixed_multiples_of_the_period() {
        let hour = Duration::from_secs(3600);
        let (start, end) = window(datetime!(2026-12-02 10:59:59.999 UTC), hour).unwrap();
        assert_eq!(start, datetime!(2026-12-02 10:00 UTC));
        assert_eq!(end, datetime!(2026-12-02 11:00 UTC));
        // The end belongs to the next window.
        let (next, _) = window(datetime!(2026-12-02 11:00 UTC), hour).unwrap();
        assert_eq!(next, end);
        // Before 1970 too (floor, not truncation toward zero).
        let (old, _) = window(datetime!(1969-12-31 23:30 UTC), hour).unwrap();
        assert_eq!(old, datetime!(1969-12-31 23:00 UTC));
        assert_eq!(
            period_key("k", hour, datetime!(2026-12-02 10:30 UTC)).unwrap(),
            "k@2026-12-02T10:00:00Z/3600s"
        );
    }

    #[test]
    fn periods_are_checked() {
        assert!(check_period(Duration::from_secs(1)).is_ok());
        assert!(check_period(MAX_UNIQUE_PERIOD).is_ok());
        for bad in [
            Duration::ZERO,
            Duration::from_millis(1500),
            MAX_UNIQUE_PERIOD + Duration::from_secs(1),
        ] {
            assert!(check_period(bad).is_err(), "{bad:?}");
            assert!(window(OffsetDateTime::UNIX_EPOCH, bad).is_none());
        }
    }
}
