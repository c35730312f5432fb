//! RFC 3339 UTC timestamps with microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
//!
//! Written by hand (days ↔ civil date, after Howard Hinnant's algorithms) so that
//! formatting on the append path cannot fail.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Formats `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds). Times before 1970
/// are clamped to the epoch.
pub(crate) fn format_rfc3339_micros(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses a timestamp written by [`format_rfc3339_micros`] (any number of fraction
/// digits from 0 to 9 is accepted, the zone must be `Z`).
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if b.get(10) != Some(&b'T') || b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> {
        let part = s.get(from..to)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo)
        || d == 0
        || d > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || sec > 59
    {
        return None;
    }
    let rest = s.get(19..)?;
    let nanos = if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.strip_suffix('Z')?;
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let v: u32 = digits.parse().ok()?;
        v * 10u32.pow(9 - u32::try_from(digits.len()).ok()?)
    } else if rest == "Z" {
        0
    } else {
        return None;
    };
    let days = days_from_civil(y, mo, d)?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01; `None` before the epoch.
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn known_instants() {
        assert_eq!(
            format_rfc3339_micros(at(0, 0)),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            format_rfc3339_micros(at(951_782_400, 7)),
            "2000-02-29T00:00:00.000007Z"
        );
        assert_eq!(
            format_rfc3339_micros(at(1_764_000_000, 123_456)),
            "2025-11-24T16:00:00.123456Z"
        );
        assert_eq!(
            format_rfc3339_micros(at(4_107_542_399, 999_999)),
            "2100-02-28T23:59:59.999999Z"
        );
    }

    #[test]
    fn matches_the_time_crate_and_round_trips() {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        // A spread of instants across leap years and century boundaries.
        let mut secs: u64 = 1;
        while secs < 10_000_000_000 {
            for micros in [0, 1, 499_999, 999_999] {
                let t = at(secs, micros);
                let ours = format_rfc3339_micros(t);
                let theirs = time::OffsetDateTime::from(t).format(&fmt).unwrap();
                assert_eq!(ours, theirs);
                assert_eq!(parse_rfc3339(&ours), Some(t));
            }
            secs = secs * 3 + 7_777;
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "2025-11-24T16:00:00",
            "2025-11-24 16:00:00Z",
            "2025-13-24T16:00:00Z",
            "2025-02-29T16:00:00Z",
            "2025-11-24T24:00:00Z",
            "2025-11-24T16:00:00.Z",
            "2025-11-24T16:00:00.1234567890Z",
            "2025-11-24T16:00:00+01:00",
            "1969-12-31T23:59:59Z",
            "+025-11-24T16:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(
            parse_rfc3339("2025-11-24T16:00:00Z"),
            Some(at(1_764_000_000, 0))
        );
        assert_eq!(
            parse_rfc3339("2025-11-24T16:00:00.5Z"),
            Some(at(1_764_000_000, 500_000))
        );
    }
}
