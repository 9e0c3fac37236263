//! Cron expressions (five fields: minute, hour, day of month, month, day of week, with
//! lists, ranges, steps, month and day names, and `@hourly`, `@daily`, `@weekly`,
//! `@monthly`, `@yearly`) and the next slot after an instant in an IANA time zone.
//!
//! As in Vixie cron, when both day fields are restricted a day matches either. A slot
//! whose local time does not exist (a daylight-saving gap) fires at the first instant
//! after the gap; a local time that happens twice fires once, at the first.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + offset);
    }
    s.parse::<u32>()
        .map_err(|_| format!("{s:?} is not a number"))
}

/// Parses one field into a bit set of `lo..=hi`.
fn field(text: &str, lo: u32, hi: u32, names: &[&str], offset: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let any = text == "*";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, names, offset)?, value(b, names, offset)?)
        } else {
            let a = value(range, names, offset)?;
            // `a/n` runs from a to the end.
            (a, if part.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{part:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, any))
}

impl Cron {
    /// Parses an expression; the error says what is wrong.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let expr = expr.trim();
        let expanded = match expr.to_ascii_lowercase().as_str() {
            "@hourly" => "0 * * * *".to_owned(),
            "@daily" | "@midnight" => "0 0 * * *".to_owned(),
            "@weekly" => "0 0 * * 0".to_owned(),
            "@monthly" => "0 0 1 * *".to_owned(),
            "@yearly" | "@annually" => "0 0 1 1 *".to_owned(),
            _ if expr.starts_with('@') => return Err(format!("unknown macro {expr}")),
            _ => expr.to_owned(),
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err("five fields: minute hour day-of-month month day-of-week".into());
        }
        let (minutes, _) = field(parts[0], 0, 59, &[], 0).map_err(|e| format!("minute: {e}"))?;
        let (hours, _) = field(parts[1], 0, 23, &[], 0).map_err(|e| format!("hour: {e}"))?;
        let (days, days_any) =
            field(parts[2], 1, 31, &[], 0).map_err(|e| format!("day of month: {e}"))?;
        let (months, _) = field(parts[3], 1, 12, &MONTHS, 1).map_err(|e| format!("month: {e}"))?;
        let (mut weekdays, weekdays_any) =
            field(parts[4], 0, 7, &DAYS, 0).map_err(|e| format!("day of week: {e}"))?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        Ok(Self {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_any,
            weekdays_any,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first slot strictly after `after_ms` (epoch milliseconds) in `tz`, within
    /// five years; `None` when there is none (such as February 30th).
    pub fn next_after(&self, after_ms: i64, tz: &TimeZone) -> Option<i64> {
        let start = jiff::Timestamp::from_millisecond(after_ms)
            .ok()?
            .to_zoned(tz.clone())
            .datetime();
        let mut date = start.date();
        for day in 0..(5 * 366) {
            if self.day_matches(date) {
                for hour in 0..24i8 {
                    if self.hours & (1 << hour) == 0 || (day == 0 && hour < start.hour()) {
                        continue;
                    }
                    for minute in 0..60i8 {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        if day == 0 && hour == start.hour() && minute < start.minute() {
                            continue;
                        }
                        let local = DateTime::new(
                            date.year(),
                            date.month(),
                            date.day(),
                            hour,
                            minute,
                            0,
                            0,
                        )
                        .ok()?;
                        let at = local
                            .to_zoned(tz.clone())
                            .ok()?
                            .timestamp()
                            .as_millisecond();
                        if at > after_ms {
                            return Some(at);
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// The time zone of a name (`UTC` when empty); the error names the problem.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name.eq_ignore_ascii_case("utc") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| format!("{name:?} is not a known IANA time zone"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn parses_and_refuses() {
        assert!(Cron::parse("*/5 * * * *").is_ok());
        assert!(Cron::parse("0 9-17/2 * jan-mar mon-fri").is_ok());
        assert!(Cron::parse("@daily").is_ok());
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "@often",
            "x * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_slots_in_utc() {
        let utc = TimeZone::UTC;
        let c = Cron::parse("*/5 * * * *").unwrap();
        assert_eq!(
            c.next_after(ms("2026-01-01T10:02:30Z"), &utc),
            Some(ms("2026-01-01T10:05:00Z"))
        );
        assert_eq!(
            c.next_after(ms("2026-01-01T10:05:00Z"), &utc),
            Some(ms("2026-01-01T10:10:00Z"))
        );
        let c = Cron::parse("30 2 29 2 *").unwrap();
        assert_eq!(
            c.next_after(ms("2026-03-01T00:00:00Z"), &utc),
            Some(ms("2028-02-29T02:30:00Z"))
        );
        assert_eq!(Cron::parse("0 0 30 2 *").unwrap().next_after(0, &utc), None);
        // Day of month or day of week when both are restricted.
        let c = Cron::parse("0 12 1 * mon").unwrap();
        assert_eq!(
            c.next_after(ms("2026-12-01T13:00:00Z"), &utc),
            Some(ms("2026-12-07T12:00:00Z"))
        );
        let c = Cron::parse("0 0 * * 7").unwrap();
        assert_eq!(
            c.next_after(ms("2026-12-01T00:00:00Z"), &utc),
            Some(ms("2026-12-06T00:00:00Z"))
        );
    }

    #[test]
    fn next_slots_in_a_time_zone_with_daylight_saving() {
        let Ok(paris) = time_zone("Europe/Paris") else {
            panic!("the system time zone database has Europe/Paris");
        };
        let c = Cron::parse("30 2 * * *").unwrap();
        // 2026-03-29: 02:30 does not exist in Paris (clocks jump 02:00 -> 03:00).
        assert_eq!(
            c.next_after(ms("2026-03-28T12:00:00Z"), &paris),
            Some(ms("2026-03-29T01:30:00Z"))
        );
        let c = Cron::parse("0 9 * * *").unwrap();
        assert_eq!(
            c.next_after(ms("2026-07-01T00:00:00Z"), &paris),
            Some(ms("2026-07-01T07:00:00Z"))
        );
        assert!(time_zone("Mars/Olympus").is_err());
    }
}
