//! A [`Clock`] that follows tokio's time, so tests with paused time move the
//! store's timestamps too, and the deadline helpers the runtime shares.

use std::fmt;
use std::time::Duration;

use jobqueue_core::Clock;
use jobqueue_core::clock::truncate_to_micros;
use time::OffsetDateTime;
use tokio::time::Instant;

/// Wall-clock time anchored at creation and advanced by tokio's clock.
///
/// With `tokio::time::pause()` the time moves only when the test advances
/// it (or auto-advances while idle), and store timestamps such as `run_at`
/// move with it.
pub struct TokioClock {
    base_wall: OffsetDateTime,
    base: Instant,
}

impl TokioClock {
    /// A clock that reads the current wall time now and follows tokio from here.
    pub fn new() -> Self {
        Self::starting_at(OffsetDateTime::now_utc())
    }

    /// A clock that reads `start` now and follows tokio from here.
    pub fn starting_at(start: OffsetDateTime) -> Self {
        Self {
            base_wall: start,
            base: Instant::now(),
        }
    }

    /// The tokio instant at which this clock will read `at` (now, if past).
    pub fn instant_at(&self, at: OffsetDateTime) -> Instant {
        let now = self.now();
        let ahead = (at - now).max(time::Duration::ZERO);
        Instant::now() + ahead.unsigned_abs()
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TokioClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        truncate_to_micros(self.base_wall + self.base.elapsed())
    }
}

/// The instant `d` from now, or `None` when `Instant` cannot hold it: a
/// deadline so far away that it never comes.
pub(crate) fn instant_in(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Sleeps until `at`; forever when `None` (a deadline that never comes).
pub(crate) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
