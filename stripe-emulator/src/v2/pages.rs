//! API v2's lists: "Specify the page token for list API requests. Use the previous_page_url and
//! next_page_url properties in the API response to paginate through a list"
//! (<https://docs.stripe.com/api-v2-overview>). An answer is `{data, next_page_url,
//! previous_page_url}` (the SDK's `V2List`, `esm/lib.d.ts`): the next page's URL, `null` when
//! nothing follows, and the previous page's, `null` on the first page. The SDK fetches
//! `next_page_url` as it is, with no parameters of its own (`V2ListIterator` in
//! `esm/autoPagination.js`), so each URL carries the request's filters and `limit` besides the
//! opaque `page` token, as Stripe's do (`/v2/core/events?object_id=obj_123&page=page_2` in
//! stripe-python's `tests/api_resources/test_list_object_v2.py`).
//!
//! Lists are newest first. A token names a position in the list's order, so a page follows on
//! from where the last one ended even when objects are added meanwhile. Stripe documents v2
//! lists as eventually consistent; the emulator's are immediately consistent.

use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// Where a page starts: after (older than) or before (newer than) an object's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    Older(u64),
    Newer(u64),
}

impl Cursor {
    fn token(self) -> String {
        match self {
            Cursor::Older(seq) => format!("page_o{seq:x}"),
            Cursor::Newer(seq) => format!("page_n{seq:x}"),
        }
    }

    fn parse(token: &str) -> Option<Cursor> {
        let rest = token.strip_prefix("page_")?;
        let (kind, hex) = rest.split_at_checked(1)?;
        let seq = u64::from_str_radix(hex, 16).ok().filter(|_| !hex.is_empty() && !hex.starts_with('+'))?;
        match kind {
            "o" => Some(Cursor::Older(seq)),
            "n" => Some(Cursor::Newer(seq)),
            _ => None,
        }
    }
}

/// `page`: a token from an earlier answer's URL.
pub fn cursor_param(p: &Map<String, Value>) -> Result<Option<Cursor>, ApiError> {
    match p.get("page") {
        None => Ok(None),
        Some(Value::String(token)) => Cursor::parse(token).map(Some).ok_or_else(|| {
            ApiError::invalid(format!("Invalid page: '{token}' is not a page token from this list.")).param("page")
        }),
        Some(_) => Err(ApiError::invalid("Invalid page: expected a string").param("page")),
    }
}

/// `limit`: 10 when absent, else 1 to 100. Assumed, not confirmed: v1's default and range (the
/// SDK says only "The page size").
pub fn limit_param(p: &Map<String, Value>) -> Result<usize, ApiError> {
    let n = match p.get("limit") {
        None => return Ok(10),
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        Some(_) => None,
    };
    match n {
        Some(n @ 1..=100) => Ok(n as usize),
        _ => Err(ApiError::invalid("Invalid limit: must be an integer from 1 to 100").param("limit")),
    }
}

/// One page, newest first, and the cursors of the pages on either side.
pub struct Page<'a, R> {
    pub items: Vec<&'a R>,
    pub older: Option<Cursor>,
    pub newer: Option<Cursor>,
}

/// The page at `cursor` (`None`: the first) of the `wanted` records, given oldest first.
pub fn page_of<'a, R>(
    records: impl DoubleEndedIterator<Item = &'a R> + Clone,
    seq: impl Fn(&R) -> u64,
    cursor: Option<Cursor>,
    limit: usize,
    wanted: impl Fn(&R) -> bool,
) -> Page<'a, R> {
    let items: Vec<&R> = match cursor {
        None => records.clone().rev().filter(|r| wanted(r)).take(limit).collect(),
        Some(Cursor::Older(s)) => records.clone().rev().filter(|r| seq(r) < s && wanted(r)).take(limit).collect(),
        Some(Cursor::Newer(s)) => {
            let mut forward: Vec<&R> = records.clone().filter(|r| seq(r) > s && wanted(r)).take(limit).collect();
            forward.reverse();
            forward
        }
    };
    // The page's bounds in the list's order: what is newer than `newest` comes before it, what
    // is older than `oldest` after it. An empty page sits where its cursor points.
    let (newest, oldest) = match (items.first(), items.last(), cursor) {
        (Some(first), Some(last), _) => (seq(first), seq(last)),
        (_, _, None) => (u64::MAX, u64::MAX),
        (_, _, Some(Cursor::Older(s))) => (s.saturating_sub(1), s),
        (_, _, Some(Cursor::Newer(s))) => (s, s.saturating_add(1)),
    };
    let any = |f: &dyn Fn(u64) -> bool| records.clone().any(|r| f(seq(r)) && wanted(r));
    let older = any(&|s| s < oldest).then_some(Cursor::Older(oldest));
    // The first page has no previous page.
    let newer = (cursor.is_some() && any(&|s| s > newest)).then_some(Cursor::Newer(newest));
    Page { items, older, newer }
}

/// The list answer for `path`, whose next and previous URLs repeat the request's parameters
/// (all but `page`) with the token of the page on that side.
pub fn answer<R>(path: &str, p: &Map<String, Value>, page: &Page<'_, R>, data: Vec<Value>) -> Value {
    let url = |cursor: Option<Cursor>| match cursor {
        None => Value::Null,
        Some(c) => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (name, value) in p.iter().filter(|(name, _)| name.as_str() != "page") {
                append(&mut query, name, value);
            }
            query.append_pair("page", &c.token());
            json!(format!("{path}?{}", query.finish()))
        }
    };
    json!({ "data": data, "next_page_url": url(page.older), "previous_page_url": url(page.newer) })
}

/// `value` under `name` in bracket form, arrays indexed.
fn append(query: &mut form_urlencoded::Serializer<'_, String>, name: &str, value: &Value) {
    match value {
        Value::Object(fields) => fields.iter().for_each(|(k, v)| append(query, &format!("{name}[{k}]"), v)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| append(query, &format!("{name}[{i}]"), v)),
        Value::String(s) => {
            query.append_pair(name, s);
        }
        Value::Null => {}
        other => {
            query.append_pair(name, &other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(page: &Page<'_, u64>) -> Vec<u64> {
        page.items.iter().map(|s| **s).collect()
    }

    #[test]
    fn pages_walk_both_ways_newest_first() {
        let records: Vec<u64> = (1..=7).collect();
        let all = |_: &u64| true;
        let first = page_of(records.iter(), |s| *s, None, 3, all);
        assert_eq!((seqs(&first), first.newer), (vec![7, 6, 5], None));
        let second = page_of(records.iter(), |s| *s, first.older, 3, all);
        assert_eq!(seqs(&second), vec![4, 3, 2]);
        let third = page_of(records.iter(), |s| *s, second.older, 3, all);
        assert_eq!((seqs(&third), third.older), (vec![1], None));
        let back = page_of(records.iter(), |s| *s, third.newer, 3, all);
        assert_eq!(seqs(&back), vec![4, 3, 2]);
        let front = page_of(records.iter(), |s| *s, back.newer, 3, all);
        assert_eq!((seqs(&front), front.newer.is_none()), (vec![7, 6, 5], true));
        // Filters apply on both sides.
        let odd = |s: &u64| s % 2 == 1;
        let page = page_of(records.iter(), |s| *s, Some(Cursor::Older(7)), 2, odd);
        assert_eq!((seqs(&page), page.older, page.newer), (vec![5, 3], Some(Cursor::Older(3)), Some(Cursor::Newer(5))));
    }

    #[test]
    fn tokens_round_trip_and_urls_carry_the_filters() {
        for c in [Cursor::Older(0), Cursor::Newer(255)] {
            assert_eq!(Cursor::parse(&c.token()), Some(c));
        }
        for bad in ["", "page_", "page_x1", "page_o", "page_o+1", "o1", "page_ozz"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
        let records: Vec<u64> = (1..=3).collect();
        let page = page_of(records.iter(), |s| *s, None, 1, |_| true);
        let p = serde_json::json!({"limit": "1", "types": ["a.b", "c[d]"], "page": "page_o9"});
        let answer = answer("/v2/core/events", p.as_object().unwrap(), &page, vec![]);
        assert_eq!(
            answer["next_page_url"],
            "/v2/core/events?limit=1&types%5B0%5D=a.b&types%5B1%5D=c%5Bd%5D&page=page_o3"
        );
        assert_eq!(answer["previous_page_url"], Value::Null);
    }
}
