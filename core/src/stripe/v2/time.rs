//! v2 timestamps: RFC 3339 strings in UTC with millisecond precision (`2022-09-18T13:22:18.123Z`,
//! the SDK's `Account.created` and `Event.created`), where v1 has Unix seconds. Read into Unix
//! milliseconds, and written for the `created` filters of `GET /v2/core/events` (format
//! `date-time`, as the OpenAPI-generated SDKs type them).

/// Unix milliseconds of an RFC 3339 date-time (`Z` or a `±HH:MM` offset, any fraction of a
/// second, truncated to milliseconds); `None` if it is not one.
pub fn unix_millis(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = bytes.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separator = |at: usize, expected: &[u8]| bytes.get(at).is_some_and(|b| expected.contains(b));
    if !(separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt ")
        && separator(13, b":")
        && separator(16, b":"))
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 {
        return None;
    }
    // A leap second (`:60`) reads as the last millisecond before the next minute.
    let leap = match second {
        0..=59 => false,
        60 => true,
        _ => return None,
    };
    let mut at = 19;
    let mut millis = 0;
    if separator(at, b".") {
        at += 1;
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        let fraction = &text[start..at.min(start + 3)];
        millis = fraction.parse::<i64>().ok()? * 10i64.pow(3 - fraction.len() as u32);
    }
    let offset_minutes = match bytes.get(at) {
        Some(b'Z' | b'z') if at + 1 == bytes.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == bytes.len() && separator(at + 3, b":") => {
            let (hours, minutes) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 60 + minutes;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let second = if leap { 59 } else { second };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + if leap { 999 } else { millis })
}

/// `unix_millis` as RFC 3339 in UTC with milliseconds, as Stripe writes v2 timestamps (for
/// years 0000 to 9999, the ones RFC 3339 writes).
pub fn rfc3339(unix_millis: i64) -> String {
    let (seconds, millis) = (unix_millis.div_euclid(1000), unix_millis.rem_euclid(1000));
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stripes_v2_timestamps() {
        // The SDK's example (`Account.created`), and `date -u -d 2022-09-18T13:22:18Z +%s` = 1663507338.
        assert_eq!(unix_millis("2022-09-18T13:22:18.123Z"), Some(1_663_507_338_123));
        assert_eq!(unix_millis("2022-09-18T13:22:18Z"), Some(1_663_507_338_000));
        assert_eq!(unix_millis("2022-09-18T13:22:18.1Z"), Some(1_663_507_338_100));
        assert_eq!(unix_millis("2022-09-18T13:22:18.123456789Z"), Some(1_663_507_338_123));
        assert_eq!(unix_millis("2022-09-18T15:22:18.123+02:00"), Some(1_663_507_338_123));
        assert_eq!(unix_millis("2022-09-18T08:52:18.123-04:30"), Some(1_663_507_338_123));
        assert_eq!(unix_millis("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(unix_millis("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(unix_millis("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(unix_millis("2016-12-31T23:59:60Z"), Some(1_483_228_799_999), "a leap second");
        for bad in [
            "",
            "2022-09-18",
            "2022-09-18T13:22:18",
            "2022-09-18T13:22:18.Z",
            "2022-13-18T13:22:18Z",
            "2023-02-29T00:00:00Z",
            "2022-09-18T24:00:00Z",
            "2022-09-18T13:22:18+0200",
            "2022-09-18T13:22:18Zjunk",
            "1663507338",
            "２022-09-18T13:22:18Z",
        ] {
            assert_eq!(unix_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn writes_and_reads_back_every_kind_of_day() {
        assert_eq!(rfc3339(1_663_507_338_123), "2022-09-18T13:22:18.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        for millis in [0, 951_782_400_000, 1_709_164_800_000, 4_107_542_399_999, -86_400_001, 1_663_507_338_123] {
            assert_eq!(unix_millis(&rfc3339(millis)), Some(millis), "{}", rfc3339(millis));
        }
        // Every 97th day of RFC 3339's four-digit years (0001-01-01 is day -719162).
        let mut day = -719_162;
        while day < 2_932_896 {
            let millis = day * 86_400_000 + 45_296_789;
            assert_eq!(unix_millis(&rfc3339(millis)), Some(millis));
            day += 97;
        }
    }
}
