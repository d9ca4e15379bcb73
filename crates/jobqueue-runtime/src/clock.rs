//! A [`Clock`] that follows tokio's time, so tests with paused time move the
//! store's timestamps too, and the deadline helpers the runtime shares.

use std::fmt;
use std::time::Duration;

use jobqueue_core::Clock;
use jobqueue_core::clock::truncate_to_micros;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::time::Instant;

/// Thirty years: as far as [`TokioClock::instant_at`] reaches when the
/// platform's `Instant` cannot hold a later time.
const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);

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
        #[expect(
            clippy::arithmetic_side_effects,
            reason = "the difference of two OffsetDateTimes always fits a time::Duration"
        )]
        let ahead = (at - self.now()).max(time::Duration::ZERO).unsigned_abs();
        let now = Instant::now();
        now.checked_add(ahead)
            .or_else(|| now.checked_add(FAR))
            .unwrap_or(now)
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
        // Past the last time `OffsetDateTime` holds, the clock stops there.
        let now = add(self.base_wall, self.base.elapsed())
            .unwrap_or_else(|| PrimitiveDateTime::MAX.assume_utc());
        truncate_to_micros(now)
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

/// `t + d`, or `None` past the last time `OffsetDateTime` holds.
pub(crate) fn add(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
}

/// `t - d`, or `None` before the first time `OffsetDateTime` holds.
pub(crate) fn sub(t: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_sub(d))
}
