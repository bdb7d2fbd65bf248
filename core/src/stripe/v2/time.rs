//! v2 timestamps: RFC 3339 strings in UTC with millisecond precision (`2022-09-18T13:22:18.123Z`,
//! the SDK's `Account.created` and `Event.created`), where v1 has Unix seconds. Read into Unix
//! milliseconds, and written for the `created` filters of `GET /v2/core/events` (format
//! `date-time`, as the OpenAPI-generated SDKs type them). The `time` crate reads and writes them.

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// How Stripe writes v2 timestamps: UTC, milliseconds.
const STRIPE_V2: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Unix milliseconds of an RFC 3339 date-time (`Z` or a `±HH:MM` offset, any fraction of a
/// second, truncated to milliseconds); `None` if it is not one.
pub fn unix_millis(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// `unix_millis` as RFC 3339 in UTC with milliseconds, as Stripe writes v2 timestamps (for
/// years 0000 to 9999, the ones RFC 3339 writes).
pub fn rfc3339(unix_millis: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_millis) * 1_000_000)
        .ok()
        .and_then(|at| at.format(STRIPE_V2).ok())
        .unwrap_or_default()
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
