//! Run ids: the names of history run folders (`20261130T031705Z`, or `20261130T031705Z-2` for the second
//! run of that second), formatted from and parsed to a time. Pure and dependency-free, so that the fuzz
//! target builds it alone: any folder name whatever, UTF-8 or not, must parse or be refused, never panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The id of a run that started at `t` (UTC, whole seconds).
pub fn format(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The start time a run folder's name gives, if the name is exactly a run id: 16 characters
/// `YYYYMMDDTHHMMSSZ` naming a real instant, optionally followed by `-N` with N a number from 2 up
/// without leading zeros (the suffix `History::open` gives a second run of the same second). Anything
/// else (`20200101T000000Z-before-migration`, `202é101T000000Z`, `20261301T000000Z`) is no run folder.
pub fn parse(name: &str) -> Option<SystemTime> {
    let b = name.as_bytes();
    if b.len() < 16 {
        return None;
    }
    let (base, suffix) = b.split_at(16);
    if !suffix.is_empty() {
        let n = suffix.strip_prefix(b"-")?;
        let numeric = !n.is_empty() && n.len() <= 9 && n.iter().all(u8::is_ascii_digit);
        if !numeric || n[0] == b'0' || n == b"1" {
            return None;
        }
    }
    if base[8] != b'T' || base[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        base[r].iter().try_fold(0u64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if y < 1970 || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let secs = days as u64 * 86_400 + h * 3600 + mi * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of `days_from_civil`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_every_day_of_a_leap_cycle() {
        // 1970..2370 in steps of 13 h 17 min: every month, leap day and year boundary is crossed.
        let mut t = 0u64;
        while t < 400 * 366 * 86_400 {
            let at = UNIX_EPOCH + Duration::from_secs(t);
            let id = format(at);
            assert_eq!(id.len(), 16, "{id}");
            assert_eq!(parse(&id), Some(at), "{id}");
            assert_eq!(parse(&format!("{id}-2")), Some(at));
            assert_eq!(parse(&format!("{id}-17")), Some(at));
            t += 13 * 3600 + 17 * 60 + 1;
        }
        assert_eq!(format(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            format(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "20261118T110640Z"
        );
    }

    #[test]
    fn only_exact_ids_are_run_folders() {
        for stranger in [
            "",
            "notes",
            "2026113xT031705Z",
            "20261130T031705",
            "20200101T000000Z-before-migration",
            "20200101T000000Z-",
            "20200101T000000Z-1",
            "20200101T000000Z-02",
            "20200101T000000Z-2x",
            "20200101T000000Z-1234567890",
            "20200101T000000Z.tmp",
            "202é101T000000Z",
            "2026é101T00000Z",
            "20261301T000000Z",
            "20260230T000000Z",
            "20250229T000000Z",
            "20261130T241705Z",
            "19691231T235959Z",
            "+0261130T031705Z",
        ] {
            assert_eq!(parse(stranger), None, "{stranger:?}");
        }
        assert!(parse("20240229T235959Z").is_some());
        assert!(parse("20240229T235959Z-10").is_some());
    }
}
