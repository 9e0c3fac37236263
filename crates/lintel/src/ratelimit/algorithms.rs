//! The five rate-limit algorithms as plain state machines over an explicit clock
//! (milliseconds), so each can be checked against its definition at exact instants.
//! All but the sliding log keep O(1) state per key.

use std::collections::VecDeque;

pub use crate::config::RateAlgorithm as Algorithm;

/// The limit as a rule states it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub limit: u32,
    pub period_ms: u64,
    /// Token bucket: capacity; leaky bucket: queue length. At least 1.
    pub burst: u32,
}

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed now.
    pub remaining: u32,
    /// Milliseconds until the limit is fully available again.
    pub reset_ms: u64,
    /// When refused: milliseconds until a retry can succeed.
    pub retry_after_ms: u64,
    /// Leaky bucket: how long the request waits in the queue before it runs.
    pub delay_ms: u64,
}

/// Per-key state.
#[derive(Debug, Clone)]
pub enum State {
    Fixed {
        start: u64,
        count: u32,
    },
    Log(VecDeque<u64>),
    Sliding {
        start: u64,
        count: u32,
        prev: u32,
    },
    /// Tokens scaled by the period (one token = `period_ms` units), so refill is
    /// exact integer arithmetic: `limit` units per millisecond.
    Bucket {
        tokens: u64,
        at: u64,
    },
    /// Theoretical arrival time of the next request (GCRA virtual scheduling).
    Leaky {
        tat: u64,
    },
}

impl State {
    pub fn new(a: Algorithm, now: u64, q: &Quota) -> Self {
        match a {
            Algorithm::FixedWindow => State::Fixed {
                start: now - now % q.period_ms.max(1),
                count: 0,
            },
            Algorithm::SlidingLog => State::Log(VecDeque::new()),
            Algorithm::SlidingWindow => State::Sliding {
                start: now - now % q.period_ms.max(1),
                count: 0,
                prev: 0,
            },
            Algorithm::TokenBucket => State::Bucket {
                tokens: u64::from(q.burst.max(1)) * q.period_ms.max(1),
                at: now,
            },
            Algorithm::LeakyBucket => State::Leaky { tat: now },
        }
    }

    /// Takes one request at `now`.
    pub fn hit(&mut self, now: u64, q: &Quota) -> Decision {
        let period = q.period_ms.max(1);
        let limit = q.limit.max(1);
        match self {
            State::Fixed { start, count } => {
                let window = now - now % period;
                if window != *start {
                    *start = window;
                    *count = 0;
                }
                let reset = *start + period - now;
                if *count < limit {
                    *count += 1;
                    ok(limit - *count, reset)
                } else {
                    refused(reset, reset)
                }
            }
            State::Log(log) => {
                while log.front().is_some_and(|&t| t + period <= now) {
                    log.pop_front();
                }
                if (log.len() as u32) < limit {
                    log.push_back(now);
                    let reset = log.front().map_or(0, |&t| t + period - now);
                    ok(limit - log.len() as u32, reset)
                } else {
                    // The oldest hit leaves the window first.
                    let wait = log.front().map_or(0, |&t| t + period - now);
                    refused(wait, wait)
                }
            }
            State::Sliding { start, count, prev } => {
                let window = now - now % period;
                if window != *start {
                    *prev = if window == *start + period { *count } else { 0 };
                    *count = 0;
                    *start = window;
                }
                let elapsed = now - *start;
                let weight = (period - elapsed) as f64 / period as f64;
                let estimate = f64::from(*prev) * weight + f64::from(*count);
                let reset = *start + period - now;
                if estimate + 1.0 <= f64::from(limit) {
                    *count += 1;
                    let left = (f64::from(limit) - estimate - 1.0).floor().max(0.0) as u32;
                    ok(left, reset)
                } else if *prev == 0 {
                    refused(reset, reset)
                } else {
                    // The previous window's share shrinks linearly: wait until it has
                    // shrunk enough for one more request (or the window ends).
                    let need = estimate + 1.0 - f64::from(limit);
                    let wait = ((need / f64::from(*prev)) * period as f64).ceil() as u64;
                    let wait = wait.clamp(1, reset.max(1));
                    refused(wait, reset)
                }
            }
            State::Bucket { tokens, at } => {
                let cap = u64::from(q.burst.max(1)) * period;
                let rate = u64::from(limit);
                *tokens = (*tokens + now.saturating_sub(*at) * rate).min(cap);
                *at = now;
                if *tokens >= period {
                    *tokens -= period;
                    ok((*tokens / period) as u32, (cap - *tokens).div_ceil(rate))
                } else {
                    let wait = (period - *tokens).div_ceil(rate);
                    refused(wait, (cap - *tokens).div_ceil(rate))
                }
            }
            State::Leaky { tat } => {
                let interval = period / u64::from(limit);
                let interval = interval.max(1);
                let start = (*tat).max(now);
                let queued = start - now;
                // `burst` requests may wait; the next slot must be within that queue.
                let max_wait = interval * u64::from(q.burst.max(1)).saturating_sub(1);
                if queued > max_wait {
                    return refused(queued - max_wait, queued);
                }
                *tat = start + interval;
                let in_queue = ((*tat - now).div_ceil(interval)) as u32;
                Decision {
                    allowed: true,
                    remaining: q.burst.max(1).saturating_sub(in_queue),
                    reset_ms: *tat - now,
                    retry_after_ms: 0,
                    delay_ms: queued,
                }
            }
        }
    }

    /// Whether the state has returned to its initial value by `now` (so it can be
    /// dropped to bound memory).
    pub fn idle(&self, now: u64, q: &Quota) -> bool {
        let period = q.period_ms.max(1);
        match self {
            State::Fixed { start, .. } => now >= start + period,
            State::Log(log) => log.back().is_none_or(|&t| t + period <= now),
            State::Sliding { start, .. } => now >= start + 2 * period,
            State::Bucket { tokens, at } => {
                *tokens + now.saturating_sub(*at) * u64::from(q.limit.max(1))
                    >= u64::from(q.burst.max(1)) * period
            }
            State::Leaky { tat } => *tat <= now,
        }
    }
}

fn ok(remaining: u32, reset_ms: u64) -> Decision {
    Decision {
        allowed: true,
        remaining,
        reset_ms,
        retry_after_ms: 0,
        delay_ms: 0,
    }
}

fn refused(retry_after_ms: u64, reset_ms: u64) -> Decision {
    Decision {
        allowed: false,
        remaining: 0,
        reset_ms,
        retry_after_ms: retry_after_ms.max(1),
        delay_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(limit: u32, period_ms: u64, burst: u32) -> Quota {
        Quota {
            limit,
            period_ms,
            burst,
        }
    }

    fn run(a: Algorithm, quota: Quota, times: &[u64]) -> Vec<bool> {
        let mut s = State::new(a, times[0], &quota);
        times.iter().map(|&t| s.hit(t, &quota).allowed).collect()
    }

    #[test]
    fn fixed_window_counts_per_aligned_window() {
        let quota = q(3, 1000, 3);
        // Three in the window [1000, 2000), the fourth refused; a new window at 2000.
        assert_eq!(
            run(
                Algorithm::FixedWindow,
                quota,
                &[1000, 1500, 1999, 1999, 2000, 2001]
            ),
            [true, true, true, false, true, true]
        );
        let mut s = State::new(Algorithm::FixedWindow, 1000, &quota);
        let d = s.hit(1200, &quota);
        assert_eq!((d.remaining, d.reset_ms), (2, 800));
        s.hit(1300, &quota);
        s.hit(1400, &quota);
        let d = s.hit(1500, &quota);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 500, "until the window ends");
        // The known weakness: a burst of 2x at a window edge.
        assert_eq!(
            run(
                Algorithm::FixedWindow,
                quota,
                &[1997, 1998, 1999, 2000, 2001, 2002]
            ),
            [true; 6]
        );
    }

    #[test]
    fn sliding_log_allows_limit_in_any_period() {
        let quota = q(3, 1000, 3);
        // No edge burst: 1997..1999 fill the log until 2997.
        assert_eq!(
            run(
                Algorithm::SlidingLog,
                quota,
                &[1997, 1998, 1999, 2000, 2996, 2997, 2998]
            ),
            [true, true, true, false, false, true, true]
        );
        let mut s = State::new(Algorithm::SlidingLog, 0, &quota);
        for t in [0, 10, 20] {
            assert!(s.hit(t, &quota).allowed);
        }
        let d = s.hit(500, &quota);
        assert_eq!(d.retry_after_ms, 500, "the first hit leaves at 1000");
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let quota = q(10, 1000, 10);
        let mut s = State::new(Algorithm::SlidingWindow, 0, &quota);
        for t in 0..10 {
            assert!(s.hit(900 + t, &quota).allowed);
        }
        assert!(!s.hit(950, &quota).allowed);
        // At 1500 the previous window counts for half: 5 + 0 -> 5 more allowed.
        let allowed = (0..10).filter(|_| s.hit(1500, &quota).allowed).count();
        assert_eq!(allowed, 5);
        // At 1900 the previous window counts 1 (10 * 0.1) plus 5 here: 4 more.
        let allowed = (0..10).filter(|_| s.hit(1900, &quota).allowed).count();
        assert_eq!(allowed, 4);
        // Two windows later nothing of it is left.
        let allowed = (0..20).filter(|_| s.hit(3000, &quota).allowed).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn token_bucket_refills_at_the_rate_up_to_the_burst() {
        // 10 per second, bucket of 5.
        let quota = q(10, 1000, 5);
        let mut s = State::new(Algorithm::TokenBucket, 0, &quota);
        let burst = (0..10).filter(|_| s.hit(0, &quota).allowed).count();
        assert_eq!(burst, 5, "the burst size");
        let d = s.hit(0, &quota);
        assert_eq!(d.retry_after_ms, 100, "one token per 100 ms");
        assert!(!s.hit(99, &quota).allowed);
        assert!(s.hit(100, &quota).allowed);
        // A long pause refills to the capacity, not beyond.
        let after = (0..10).filter(|_| s.hit(60_000, &quota).allowed).count();
        assert_eq!(after, 5);
    }

    #[test]
    fn leaky_bucket_delays_bursts_into_a_steady_flow() {
        // 10 per second (one per 100 ms), a queue of 3.
        let quota = q(10, 1000, 3);
        let mut s = State::new(Algorithm::LeakyBucket, 0, &quota);
        let d: Vec<Decision> = (0..5).map(|_| s.hit(0, &quota)).collect();
        assert_eq!(
            d.iter()
                .map(|d| (d.allowed, d.delay_ms))
                .collect::<Vec<_>>(),
            [(true, 0), (true, 100), (true, 200), (false, 0), (false, 0)],
            "the burst is spread out; past the queue it is refused"
        );
        assert_eq!(d[3].retry_after_ms, 100);
        // Once the queue drains, the flow continues.
        let d = s.hit(300, &quota);
        assert!(d.allowed);
        assert_eq!(d.delay_ms, 0);
    }

    #[test]
    fn idle_state_can_be_dropped() {
        let quota = q(2, 1000, 2);
        for a in [
            Algorithm::FixedWindow,
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::TokenBucket,
            Algorithm::LeakyBucket,
        ] {
            let mut s = State::new(a, 5000, &quota);
            s.hit(5000, &quota);
            assert!(!s.idle(5001, &quota), "{a:?} is busy right after a hit");
            assert!(s.idle(8000, &quota), "{a:?} is idle later");
        }
    }
}
