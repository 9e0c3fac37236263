//! When a failed attempt runs again: exponential backoff with full jitter (a uniform
//! delay between zero and `base * 2^(attempt - 1)`, capped), so many jobs failing
//! together do not retry together.

/// The backoff settings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: i64,
    pub max_ms: i64,
}

impl Backoff {
    pub fn from_config(c: &crate::config::JobsConfig) -> Self {
        let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
        Self {
            base_ms: ms(c.backoff_base_seconds),
            max_ms: ms(c.backoff_max_seconds),
        }
    }

    /// The upper bound of the delay after the `attempt`-th failed attempt (1-based).
    pub fn ceiling_ms(&self, attempt: i64) -> i64 {
        let shift = u32::try_from(attempt.saturating_sub(1).clamp(0, 62)).unwrap_or(62);
        let grown = self
            .base_ms
            .saturating_mul(1i64.checked_shl(shift).unwrap_or(i64::MAX));
        grown.clamp(0, self.max_ms.max(0))
    }

    /// The delay after the `attempt`-th failed attempt, given a uniform `r` in `0..1`.
    pub fn delay_ms(&self, attempt: i64, r: f64) -> i64 {
        let ceiling = self.ceiling_ms(attempt) as f64;
        (ceiling * r.clamp(0.0, 1.0)).floor() as i64
    }

    /// When the next attempt runs: after the jittered delay, or after `retry_after_ms`
    /// when the failure said how long to wait (capped at the maximum).
    pub fn next_run(&self, now: i64, attempt: i64, retry_after_ms: Option<i64>) -> i64 {
        let delay = match retry_after_ms {
            Some(ms) => ms.clamp(0, self.max_ms.max(0)),
            None => self.delay_ms(attempt, crate::ids::unit_random()),
        };
        now.saturating_add(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_then_caps() {
        let b = Backoff {
            base_ms: 5_000,
            max_ms: 3_600_000,
        };
        let ceilings: Vec<i64> = (1..=12).map(|a| b.ceiling_ms(a)).collect();
        assert_eq!(
            &ceilings[..6],
            &[5_000, 10_000, 20_000, 40_000, 80_000, 160_000]
        );
        assert_eq!(ceilings[10], 3_600_000, "capped at the maximum");
        assert_eq!(
            b.ceiling_ms(1000),
            3_600_000,
            "no overflow on many attempts"
        );
        assert_eq!(b.delay_ms(3, 0.0), 0);
        assert_eq!(b.delay_ms(3, 0.5), 10_000);
        assert_eq!(b.delay_ms(3, 0.999_999), 19_999);
        assert_eq!(b.next_run(100, 3, Some(7_000)), 7_100);
        assert_eq!(b.next_run(0, 3, Some(i64::MAX)), 3_600_000);
        for _ in 0..100 {
            let at = b.next_run(0, 4, None);
            assert!((0..40_000).contains(&at), "{at}");
        }
    }
}
