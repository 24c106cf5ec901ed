//! Where retry delays are computed (invariant 7).
//!
//! The delay before attempt `n + 1`, after attempt `n` failed, is
//! `BASE_RETRY_SECONDS · 2^(n−1)`, stretched by up to 25 % of random jitter so that calls
//! failing together do not retry together. A provider's `Retry-After` is a floor.

use std::time::Duration;

use rand::Rng;

/// Backoffs are capped at a day: a larger exponent would only overflow.
pub const MAX_BACKOFF: Duration = Duration::from_secs(86_400);

/// The un-jittered delay after `failed_attempt` (1-based) failed.
pub fn base_delay(base_retry_seconds: u64, failed_attempt: u32) -> Duration {
    let exponent = failed_attempt.saturating_sub(1).min(32);
    let seconds = base_retry_seconds.saturating_mul(1u64 << exponent);
    Duration::from_secs(seconds).min(MAX_BACKOFF)
}

/// The delay to wait after `failed_attempt` failed: the base delay plus up to 25 % jitter,
/// and never less than `retry_after`.
pub fn retry_delay(
    base_retry_seconds: u64,
    failed_attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let base = base_delay(base_retry_seconds, failed_attempt);
    let jitter = base.mul_f64(rand::rng().random_range(0.0..0.25));
    let delay = (base + jitter).min(MAX_BACKOFF);
    match retry_after {
        Some(floor) => delay.max(floor.min(MAX_BACKOFF)),
        None => delay,
    }
}

/// A sleep before re-checking for a free slot or phone, jittered ±50 % so a backlog does
/// not come back all at once.
pub fn wait_recheck_delay(wait_recheck_seconds: u64) -> Duration {
    let base = Duration::from_secs(wait_recheck_seconds.max(1));
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt() {
        assert_eq!(base_delay(30, 1), Duration::from_secs(30));
        assert_eq!(base_delay(30, 2), Duration::from_secs(60));
        assert_eq!(base_delay(30, 3), Duration::from_secs(120));
        assert_eq!(base_delay(30, 200), MAX_BACKOFF);
        assert_eq!(base_delay(0, 5), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for attempt in 1..6 {
            let base = base_delay(10, attempt);
            for _ in 0..100 {
                let d = retry_delay(10, attempt, None);
                assert!(d >= base && d <= base.mul_f64(1.25), "{d:?} vs {base:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let d = retry_delay(1, 1, Some(Duration::from_secs(90)));
        assert!(d >= Duration::from_secs(90));
        let d = retry_delay(100, 1, Some(Duration::from_secs(1)));
        assert!(d >= Duration::from_secs(100));
    }
}
