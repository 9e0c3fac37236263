//! Timestamps as Lintel writes them: RFC 3339, UTC, millisecond precision, so that
//! their text order is their time order in every store; and the [`Clock`] a server
//! reads them from ([`AppState::clock`](crate::state::Inner::clock)).
//!
//! Request handling reads the time through the state's clock: session and token
//! lifetimes, expiry checks, lockout and rate-limit windows, record timestamps, the
//! rules' `@now`, purges and audit windows. [`SystemClock`] is the real one;
//! [`ManualClock`] stands still until moved, so a test can step past an expiry
//! instead of sleeping. Timeouts (`tokio::time`) do not use it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Where a server reads the time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Milliseconds on a clock that never goes backwards, from an arbitrary start
    /// (rate-limit buckets and windows: a wall-clock jump must not refill them).
    fn monotonic_ms(&self) -> u64;
    /// The current time as a record timestamp.
    fn now(&self) -> String {
        format_ms(self.now_ms())
    }
}

/// The system's clocks.
pub struct SystemClock {
    epoch: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
    fn monotonic_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told to: both readings advance together.
pub struct ManualClock {
    wall_ms: AtomicI64,
    monotonic_ms: AtomicU64,
}

impl ManualClock {
    /// Starts at the system's current time.
    pub fn new() -> Self {
        Self::at(now_ms())
    }

    /// Starts at `wall_ms` (milliseconds since the Unix epoch).
    pub fn at(wall_ms: i64) -> Self {
        Self {
            wall_ms: AtomicI64::new(wall_ms),
            monotonic_ms: AtomicU64::new(0),
        }
    }

    /// Moves both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = by.as_millis().min(i64::MAX as u128) as i64;
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.monotonic_ms.fetch_add(ms as u64, Ordering::SeqCst);
    }

    /// Sets the wall clock (the monotonic reading moves forward by the difference, or
    /// stays when it is set back).
    pub fn set(&self, wall_ms: i64) {
        let before = self.wall_ms.swap(wall_ms, Ordering::SeqCst);
        if wall_ms > before {
            self.monotonic_ms
                .fetch_add((wall_ms - before) as u64, Ordering::SeqCst);
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.wall_ms.load(Ordering::SeqCst)
    }
    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms.load(Ordering::SeqCst)
    }
}

/// A time in milliseconds since the Unix epoch as a record timestamp.
pub fn format_ms(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format_ts(t),
        Err(_) => format_ts(OffsetDateTime::UNIX_EPOCH),
    }
}

/// The system's current time as a record timestamp (request handling reads
/// [`Clock::now`] instead).
pub fn now() -> String {
    format_ts(OffsetDateTime::now_utc())
}

/// The system's milliseconds since the Unix epoch (request handling reads
/// [`Clock::now_ms`] instead).
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// `2026-11-28T08:36:11.123Z`
pub fn format_ts(t: OffsetDateTime) -> String {
    // Out-of-range instants (beyond year 9999 in UTC) cannot be written; they are
    // refused by `normalize_datetime`, so this only clamps defensively.
    let t = t.checked_to_offset(UtcOffset::UTC).unwrap_or(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 date-time (any offset) or a plain `YYYY-MM-DD` date, and returns
/// it in the canonical form. `None` when it is neither.
pub fn normalize_datetime(s: &str) -> Option<String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        let utc = t.checked_to_offset(UtcOffset::UTC)?;
        if !(0..=9999).contains(&utc.year()) {
            return None;
        }
        return Some(format_ts(utc));
    }
    let date =
        time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(format_ts(date.midnight().assume_utc()))
}

/// The HTTP-date (RFC 9110) of a record timestamp, for `Last-Modified`.
pub fn http_date(ts: &str) -> Option<String> {
    let t = OffsetDateTime::parse(ts, &Rfc3339).ok()?;
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.checked_to_offset(UtcOffset::UTC)?.format(&fmt).ok()
}

/// Parses an HTTP-date into a Unix time in seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::PrimitiveDateTime::parse(s, &fmt).ok()?;
    Some(t.assume_utc().unix_timestamp())
}

/// A record timestamp as Unix seconds.
pub fn ts_seconds(ts: &str) -> Option<i64> {
    OffsetDateTime::parse(ts, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// A record timestamp as Unix milliseconds.
pub fn ts_millis(ts: &str) -> Option<i64> {
    OffsetDateTime::parse(ts, &Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_offsets_and_dates() {
        assert_eq!(
            normalize_datetime("2024-01-02T03:04:05+02:00").as_deref(),
            Some("2024-01-02T01:04:05.000Z")
        );
        assert_eq!(
            normalize_datetime("2024-01-02").as_deref(),
            Some("2024-01-02T00:00:00.000Z")
        );
        assert_eq!(normalize_datetime("yesterday"), None);
        assert_eq!(normalize_datetime("9999-12-31T23:59:59-01:00"), None);
        assert_eq!(normalize_datetime("0000-01-01T00:30:00+01:00"), None);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_700_000_000_123);
        assert_eq!(c.now(), "2023-11-14T22:13:20.123Z");
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_ms(), 1_700_000_001_623);
        assert_eq!(c.monotonic_ms(), 1_500);
        c.set(1_700_000_000_000);
        assert_eq!(c.monotonic_ms(), 1_500, "never backwards");
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn http_dates_round_trip() {
        let d = http_date("2024-01-02T03:04:05.000Z");
        assert_eq!(d.as_deref(), Some("Tue, 02 Jan 2024 03:04:05 GMT"));
        assert_eq!(
            parse_http_date("Tue, 02 Jan 2024 03:04:05 GMT"),
            ts_seconds("2024-01-02T03:04:05Z")
        );
    }
}
