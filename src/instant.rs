//! Instants as people write them: `--as-of` (RFC 3339, or a date meaning its end, UTC) read here, and
//! every time the time machine prints written here (RFC 3339, UTC, whole seconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

/// `2026-11-20T14:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DateTime::from_secs(secs as i64)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// `--as-of T`: `2026-11-20T14:00:00Z` (any RFC 3339 offset), or `2026-11-20`, meaning the end of that
/// day in UTC (its last nanosecond: what the bucket held when the day ended).
pub fn parse_as_of(s: &str) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "--as-of {s:?}: expected an RFC 3339 time (2026-11-20T14:00:00Z) or a date (2026-11-20)"
        )
    };
    let t = s.trim();
    if t.len() == 10 && t.as_bytes()[4] == b'-' && t.as_bytes()[7] == b'-' {
        let start =
            DateTime::from_str(&format!("{t}T00:00:00Z"), Format::DateTime).map_err(|_| bad())?;
        let start = SystemTime::try_from(start).map_err(|_| bad())?;
        return Ok(start + Duration::from_secs(86_400) - Duration::from_nanos(1));
    }
    // The SDK's parser takes `Z` only: a numeric offset is applied here.
    let (base, offset) = match t.len().checked_sub(6).map(|i| t.split_at(i)) {
        Some((base, off))
            if (off.starts_with('+') || off.starts_with('-')) && off.as_bytes()[3] == b':' =>
        {
            let num = |r: std::ops::Range<usize>, max: i64| {
                let digits = &off[r];
                match digits.parse::<i64>() {
                    Ok(n) if digits.bytes().all(|b| b.is_ascii_digit()) && n <= max => Ok(n),
                    _ => Err(bad()),
                }
            };
            let secs = num(1..3, 23)? * 3600 + num(4..6, 59)? * 60;
            (
                format!("{base}Z"),
                if off.starts_with('-') { -secs } else { secs },
            )
        }
        _ => (t.to_owned(), 0),
    };
    let dt = DateTime::from_str(&base, Format::DateTime).map_err(|_| bad())?;
    let local = SystemTime::try_from(dt).map_err(|_| bad())?;
    let shift = Duration::from_secs(offset.unsigned_abs());
    if offset >= 0 {
        local.checked_sub(shift).ok_or_else(bad)
    } else {
        local.checked_add(shift).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_mean_their_end_and_times_round_trip() {
        let t = parse_as_of("2026-11-20T14:00:00Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-20T14:00:00Z");
        let d = parse_as_of("2026-11-20").unwrap();
        assert_eq!(rfc3339(d), "2026-11-20T23:59:59Z");
        assert!(d > parse_as_of("2026-11-20T23:59:59Z").unwrap());
        assert!(d < parse_as_of("2026-11-21T00:00:00Z").unwrap());
        assert_eq!(
            parse_as_of("2026-11-20T15:00:00+01:00").unwrap(),
            parse_as_of("2026-11-20T14:00:00Z").unwrap()
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-20 14:00",
            "20261120",
            "2026-11-20T14:00:00+24:00",
            "2026-11-20T14:00:00+01:60",
            "2026-11-20T14:00:00+-1:00",
            "2026-11-20T14:00:00+99:99",
        ] {
            let e = parse_as_of(bad).unwrap_err();
            assert!(e.starts_with("--as-of"), "{e}");
        }
    }
}
