//! What every list endpoint shares: `limit`, the `created` filter, cursor pages shown newest
//! first, and the list envelope.

use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// `limit`: 10 when absent, else 1 to 100.
pub fn limit_param(p: &Map<String, Value>) -> Result<usize, ApiError> {
    match p.get("limit") {
        None => Ok(10),
        Some(Value::String(s)) => match s.parse::<usize>() {
            Ok(n @ 1..=100) => Ok(n),
            Ok(_) => Err(ApiError::invalid("Invalid limit: must be at least 1 and at most 100").param("limit")),
            Err(_) => Err(ApiError::invalid(format!("Invalid integer: {s}")).param("limit")),
        },
        Some(_) => Err(ApiError::invalid_string("limit")),
    }
}

/// `created=N` or `created[gt|gte|lt|lte]=N`.
pub fn created_filter(p: &Map<String, Value>) -> Result<Vec<(String, i64)>, ApiError> {
    let int = |name: &str, v: &Value| match v {
        Value::String(s) => {
            s.parse::<i64>().map_err(|_| ApiError::invalid(format!("Invalid integer: {s}")).param(name))
        }
        _ => Err(ApiError::invalid_string(name)),
    };
    match p.get("created") {
        None => Ok(vec![]),
        Some(Value::Object(ops)) => ops
            .iter()
            .map(|(op, v)| {
                let param = format!("created[{op}]");
                if !["gt", "gte", "lt", "lte"].contains(&op.as_str()) {
                    return Err(ApiError::unknown_param(&param));
                }
                Ok((op.clone(), int(&param, v)?))
            })
            .collect(),
        Some(v) => Ok(vec![("eq".to_string(), int("created", v)?)]),
    }
}

/// One page of a list shown newest first: up to `limit` of the `wanted` records (in `seq` order,
/// oldest first) after cursor `after` or before `before` (their `seq`), and whether more follow.
pub fn page_of<'a, R>(
    records: impl DoubleEndedIterator<Item = &'a R>,
    seq: impl Fn(&R) -> u64,
    after: Option<u64>,
    before: Option<u64>,
    limit: usize,
    wanted: impl Fn(&&'a R) -> bool,
) -> Result<(Vec<&'a R>, bool), ApiError> {
    if after.is_some() && before.is_some() {
        return Err(ApiError::invalid("You may only specify one of these parameters: starting_after, ending_before.")
            .param("ending_before"));
    }
    let mut page: Vec<&R> = match before {
        // Walk forward in time from the cursor, then present newest first.
        Some(b) => records.filter(|r| seq(r) > b).filter(wanted).take(limit + 1).collect(),
        None => records.rev().filter(|r| after.is_none_or(|a| seq(r) < a)).filter(wanted).take(limit + 1).collect(),
    };
    let has_more = page.len() > limit;
    page.truncate(limit);
    if before.is_some() {
        page.reverse();
    }
    Ok((page, has_more))
}

/// A list answer's envelope.
pub fn list_answer(url: &str, has_more: bool, data: Vec<Value>) -> Value {
    json!({"object": "list", "url": url, "has_more": has_more, "data": data})
}

/// Whether an object `created` (Unix seconds) passes a `created[...]` filter.
pub fn created_matches(filter: &[(String, i64)], created: Option<i64>) -> bool {
    let c = created.unwrap_or(0);
    filter.iter().all(|(op, n)| match op.as_str() {
        "gt" => c > *n,
        "gte" => c >= *n,
        "lt" => c < *n,
        "lte" => c <= *n,
        _ => c == *n,
    })
}
