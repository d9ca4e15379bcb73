//! The pump's wake-up times: the future `run_at`s and retry times it was
//! told about, so that it claims those jobs when they come due rather than
//! at its next poll.
//!
//! The set is bounded: a time is kept once however often it is told, and
//! past [`MAX_WAKE_TIMES`] the latest are dropped. That loses no work: the
//! pump also looks every poll interval, so a job whose time was dropped is
//! claimed at the latest one poll interval after it came due, and the
//! dropped times are the furthest away.

use std::collections::BTreeSet;

use time::OffsetDateTime;

/// The most wake-up times kept.
pub(crate) const MAX_WAKE_TIMES: usize = 1024;

/// Future times at which the pump must look again, earliest first.
#[derive(Debug, Default)]
pub(crate) struct WakeTimes {
    /// At most [`MAX_WAKE_TIMES`], without duplicates.
    times: BTreeSet<OffsetDateTime>,
}

impl WakeTimes {
    /// Remembers `at`; past the cap, the latest time is dropped.
    pub(crate) fn insert(&mut self, at: OffsetDateTime) {
        self.times.insert(at);
        if self.times.len() > MAX_WAKE_TIMES {
            self.times.pop_last();
        }
    }

    /// Forgets the times up to `now` and returns the next one after it.
    pub(crate) fn next_after(&mut self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        while let Some(first) = self.times.first().copied() {
            if first > now {
                return Some(first);
            }
            self.times.pop_first();
        }
        None
    }

    /// How many times are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::*;
    use crate::clock::add;

    #[test]
    fn kept_once_bounded_and_earliest_first() {
        let t0 = datetime!(2030-01-01 00:00 UTC);
        let at = |secs: u64| add(t0, Duration::from_secs(secs)).unwrap();
        let mut times = WakeTimes::default();
        for _ in 0..3 {
            times.insert(at(10));
        }
        assert_eq!(times.len(), 1, "a time told again is kept once");
        for s in (100..5_000).rev() {
            times.insert(at(s));
        }
        times.insert(at(5));
        assert_eq!(times.len(), MAX_WAKE_TIMES);
        assert_eq!(times.next_after(t0), Some(at(5)));
        assert_eq!(
            times.next_after(at(5)),
            Some(at(10)),
            "past times are forgotten"
        );
        assert_eq!(times.next_after(at(10)), Some(at(100)));
        assert_eq!(times.len(), MAX_WAKE_TIMES - 2);
        assert_eq!(times.next_after(at(10_000)), None);
        assert_eq!(times.len(), 0);
    }
}
