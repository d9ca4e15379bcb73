//! Retry policy: how many attempts a job gets and how long it waits between
//! them (capped exponential backoff with jitter).

use std::time::Duration;

/// A source of jitter: a uniform number in `[0, 1)`.
///
/// Deterministic implementations make backoff reproducible in tests.
pub trait Jitter: Send {
    /// The next number in `[0, 1)`.
    fn unit(&mut self) -> f64;
}

/// SplitMix64: a tiny, well-known seeded generator. It is here rather than a
/// `rand` dependency because core keeps its dependency tree minimal and jitter
/// needs no cryptographic quality.
#[derive(Debug, Clone)]
pub struct SeededJitter {
    state: u64,
}

impl SeededJitter {
    /// A generator that yields the same sequence for the same seed.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator seeded from the system time and a per-process counter.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::new(nanos ^ u64::from(std::process::id()).rotate_left(32))
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Jitter for SeededJitter {
    fn unit(&mut self) -> f64 {
        // 53 random bits make every f64 in [0, 1) at that resolution equally likely.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How many attempts a job gets and the backoff between them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// The delay after the first failed attempt, before jitter.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Each delay is this many times the one before.
    pub multiplier: f64,
    /// The fraction of the delay that is random: with 0.5 the delay is between
    /// half and all of the exponential value.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: crate::job::DEFAULT_MAX_ATTEMPTS,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy where it is built, so a bad one is a clear
    /// configuration error rather than odd backoff later: at least one
    /// attempt, a finite `multiplier` of at least 1, a `jitter` fraction in
    /// `[0, 1]`, and `initial` no longer than `max`. The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!(
                "multiplier must be a finite number of at least 1, not {}",
                self.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "jitter must be a fraction from 0 to 1, not {}",
                self.jitter
            ));
        }
        if self.initial > self.max {
            return Err(format!(
                "initial ({:?}) must not be longer than max ({:?})",
                self.initial, self.max
            ));
        }
        Ok(())
    }

    /// Whether a job that has started `attempt` attempts of `max_attempts`
    /// may try again.
    pub const fn can_retry(attempt: u32, max_attempts: u32) -> bool {
        attempt < max_attempts
    }

    /// The delay before the attempt after `failed_attempt` (1-based):
    /// `min(max, initial * multiplier^(failed_attempt-1))`, of which the
    /// `jitter` fraction is random.
    pub fn backoff(&self, failed_attempt: u32, jitter: &mut dyn Jitter) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let capped = base.min(self.max.as_secs_f64());
        let j = self.jitter.clamp(0.0, 1.0);
        let secs = capped * (1.0 - j) + capped * j * jitter.unit();
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn seeded_jitter_is_deterministic() {
        let a: Vec<f64> = (0..5)
            .map({
                let mut j = SeededJitter::new(7);
                move |_| j.unit()
            })
            .collect();
        let b: Vec<f64> = (0..5)
            .map({
                let mut j = SeededJitter::new(7);
                move |_| j.unit()
            })
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn backoff_grows_then_caps() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let mut j = SeededJitter::new(1);
        assert_eq!(p.backoff(1, &mut j), Duration::from_secs(1));
        assert_eq!(p.backoff(2, &mut j), Duration::from_secs(2));
        assert_eq!(p.backoff(4, &mut j), Duration::from_secs(8));
        assert_eq!(p.backoff(40, &mut j), Duration::from_secs(300));
    }

    #[test]
    fn validate_names_the_bad_field() {
        assert_eq!(RetryPolicy::default().validate(), Ok(()));
        let huge = RetryPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(huge.validate(), Ok(()), "huge delays are valid settings");
        type Spoiler = (&'static str, fn(&mut RetryPolicy));
        let spoilers: [Spoiler; 8] = [
            ("max_attempts", |p| p.max_attempts = 0),
            ("multiplier", |p| p.multiplier = 0.5),
            ("multiplier", |p| p.multiplier = f64::NAN),
            ("multiplier", |p| p.multiplier = f64::INFINITY),
            ("jitter", |p| p.jitter = -0.1),
            ("jitter", |p| p.jitter = 1.5),
            ("jitter", |p| p.jitter = f64::NAN),
            ("initial", |p| p.initial = p.max + Duration::from_secs(1)),
        ];
        for (field, spoil) in spoilers {
            let mut policy = RetryPolicy::default();
            spoil(&mut policy);
            let err = policy.validate().unwrap_err();
            assert!(err.starts_with(field), "{policy:?}: {err}");
        }
    }

    proptest! {
        #[test]
        fn backoff_stays_within_bounds(attempt in 1u32..100, seed: u64, jitter in 0.0f64..=1.0) {
            let p = RetryPolicy { jitter, ..RetryPolicy::default() };
            let d = p.backoff(attempt, &mut SeededJitter::new(seed));
            prop_assert!(d <= p.max);
            let full = RetryPolicy { jitter: 0.0, ..p }.backoff(attempt, &mut SeededJitter::new(seed));
            prop_assert!(d.as_secs_f64() >= full.as_secs_f64() * (1.0 - jitter) - 1e-9);
        }
    }
}
