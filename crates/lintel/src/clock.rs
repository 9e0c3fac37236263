//! Timestamps as Lintel writes them: RFC 3339, UTC, millisecond precision, so that
//! their text order is their time order in every store.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The current time as a record timestamp.
pub fn now() -> String {
    format_ts(OffsetDateTime::now_utc())
}

/// Milliseconds since the Unix epoch.
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
    fn http_dates_round_trip() {
        let d = http_date("2024-01-02T03:04:05.000Z");
        assert_eq!(d.as_deref(), Some("Tue, 02 Jan 2024 03:04:05 GMT"));
        assert_eq!(
            parse_http_date("Tue, 02 Jan 2024 03:04:05 GMT"),
            ts_seconds("2024-01-02T03:04:05Z")
        );
    }
}
