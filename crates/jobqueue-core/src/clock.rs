//! Time as the queue sees it. Stores and the runtime read the time from an
//! injected [`Clock`], so tests can control it.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time, truncated to microseconds (the precision stores keep).
    fn now(&self) -> OffsetDateTime;
}

/// Truncates `t` to whole microseconds, the precision every store keeps.
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let micros = t.microsecond();
    t.replace_microsecond(micros).unwrap_or(t)
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        truncate_to_micros(OffsetDateTime::now_utc())
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            now: Mutex::new(truncate_to_micros(start)),
        }
    }

    /// Moves the clock forward by `by` (to the latest time a store keeps,
    /// [`timefmt::MAX`](crate::timefmt::MAX), at most).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = time::Duration::try_from(by)
            .ok()
            .and_then(|by| now.checked_add(by))
            .map_or(crate::timefmt::MAX, |t| t.min(crate::timefmt::MAX));
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = truncate_to_micros(to);
    }
}

impl Default for ManualClock {
    /// Stopped at 2030-01-01 00:00:00 UTC.
    fn default() -> Self {
        Self::new(time::macros::datetime!(2030-01-01 00:00:00 UTC))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}
