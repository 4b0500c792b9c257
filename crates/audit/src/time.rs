//! Wall-clock times as the log writes them: RFC 3339 in UTC with
//! microseconds (`2026-12-04T07:44:46.123456Z`).
//!
//! ```
//! use portcullis_audit::time::{format_utc, parse_utc};
//! let t = parse_utc("2026-12-04T07:44:46.123456Z").unwrap();
//! assert_eq!(format_utc(t), "2026-12-04T07:44:46.123456Z");
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as RFC 3339 in UTC with microseconds (times before 1970 are written
/// as 1970).
pub fn format_utc(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// The last time formatted, kept to format the next one cheaply: the
/// same time (the records of one batch) is not formatted again, and
/// within the same second only the microseconds are written again.
#[derive(Debug, Default)]
pub(crate) struct TimeText {
    /// The time `text` holds, and `text` ([`format_utc`]'s form, ASCII;
    /// when 27 bytes long the microseconds are rewritten in place,
    /// otherwise it is formatted every time).
    last: Option<(Duration, Vec<u8>)>,
}

impl TimeText {
    /// `t` as [`format_utc`] writes it, as bytes (ASCII).
    pub(crate) fn format(&mut self, t: SystemTime) -> &[u8] {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let micros = Duration::new(since.as_secs(), since.subsec_micros() * 1000);
        match &mut self.last {
            Some((last, _)) if *last == micros => {}
            // Fixed width: the six digits before the `Z`.
            Some((last, text)) if last.as_secs() == micros.as_secs() && text.len() == 27 => {
                let mut n = micros.subsec_micros();
                if let Some(slot) = text.get_mut(20..26) {
                    for d in slot.iter_mut().rev() {
                        *d = b'0' + (n % 10) as u8;
                        n /= 10;
                    }
                }
                *last = micros;
            }
            last => *last = Some((micros, format_utc(t).into_bytes())),
        }
        self.last.as_ref().map_or(&[], |(_, text)| text.as_slice())
    }
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (or `+00:00`), or a date alone
/// (`YYYY-MM-DD`, midnight UTC).
pub fn parse_utc(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, rest) = match text.split_once(['T', 't', ' ']) {
        Some((d, r)) => (d, Some(r)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    let mut secs = u64::try_from(days).ok()?.checked_mul(86_400)?;
    let mut micros = 0u64;
    if let Some(rest) = rest {
        let rest = rest.strip_suffix(['Z', 'z']).or_else(|| rest.strip_suffix("+00:00"))?;
        let (hms, fraction) = match rest.split_once('.') {
            Some((h, f)) => (h, Some(f)),
            None => (rest, None),
        };
        let mut hms = hms.splitn(3, ':');
        let h: u64 = hms.next()?.parse().ok()?;
        let mi: u64 = hms.next()?.parse().ok()?;
        let s: u64 = hms.next().unwrap_or("0").parse().ok()?;
        if h > 23 || mi > 59 || s > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + s;
        if let Some(f) = fraction {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let digits: String = f.chars().chain(std::iter::repeat('0')).take(6).collect();
            micros = digits.parse().ok()?;
        }
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_text_matches_a_fresh_one() {
        let mut kept = TimeText::default();
        let base = UNIX_EPOCH + Duration::from_secs(1_796_380_000);
        // Within a second, across seconds, back in time, the same time
        // again (to the microsecond, not the nanosecond), and micros of
        // every width.
        let nanos = [0u64, 7_000, 7_000, 7_999, 999_999_000, 1_000_000_000, 1_000_001_000, 5_000, 5_000]
            .into_iter()
            .chain([86_400_123_456_000, 86_400_123_456_321, 3_600_000_010_000, 0]);
        for offset in nanos {
            let t = base + Duration::from_nanos(offset);
            assert_eq!(kept.format(t), format_utc(t).as_bytes(), "{offset}");
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_utc(t), "2000-02-29T00:00:00.000000Z");
        assert_eq!(parse_utc("2000-02-29"), Some(t));
        assert_eq!(parse_utc("2000-02-29T00:00:00Z"), Some(t));
        assert_eq!(parse_utc("2000-02-29T00:00:00.5Z"), Some(t + Duration::from_millis(500)));
        assert_eq!(parse_utc("2000-13-01"), None);
        assert_eq!(parse_utc("yesterday"), None);
    }

    #[test]
    fn round_trips_every_day_for_a_few_centuries() {
        for day in (0..(400 * 366)).step_by(7) {
            let t = UNIX_EPOCH + Duration::from_secs(day * 86_400 + 45_296) + Duration::from_micros(789);
            assert_eq!(parse_utc(&format_utc(t)), Some(t), "day {day}");
        }
    }
}
