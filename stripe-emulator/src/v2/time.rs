//! API v2's timestamps: "a RFC 3339 date & time UTC value in millisecond precision, for example:
//! 2022-09-18T13:22:18.123Z" (the SDK's description of `Account.created`,
//! `esm/resources/V2/Core/Accounts.d.ts`). Kept as milliseconds since the Unix epoch inside; the
//! `time` crate reads and writes them.

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

const STRIPE_V2: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `1663507338123` -> `"2022-09-18T13:22:18.123Z"`.
pub fn format_millis(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(STRIPE_V2).ok())
        .unwrap_or_default()
}

/// Milliseconds since the epoch of an RFC 3339 date-time (`2022-09-18T13:22:18Z`,
/// `2022-09-18T13:22:18.123456+02:00`); `None` if it is not one. Fractions beyond milliseconds
/// are truncated.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(format_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_663_507_338_123), "2022-09-18T13:22:18.123Z");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_other_offsets() {
        for ms in [0, 1_663_507_338_123, 951_782_400_000, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339(&format_millis(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2022-09-18T15:22:18+02:00"), Some(1_663_507_338_000));
        assert_eq!(parse_rfc3339("2022-09-18T13:22:18.1234567Z"), Some(1_663_507_338_123));
        assert_eq!(parse_rfc3339("2022-09-18T13:22:18.5Z"), Some(1_663_507_338_500));
        for bad in
            ["", "2022-09-18", "2022-09-18T13:22:18", "2022-02-30T00:00:00Z", "2022-09-18T13:22:18.Z", "1663507338"]
        {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
