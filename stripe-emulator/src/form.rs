//! Stripe-style `application/x-www-form-urlencoded` parsing with bracket nesting.
//!
//! `metadata[user_id]=7&capabilities[card_payments][requested]=true&expand[0]=a`
//! becomes `{"metadata":{"user_id":"7"},"capabilities":{"card_payments":{"requested":"true"}},
//! "expand":["a"]}`. Every leaf stays a string, exactly as sent: endpoints decide what a
//! value means, and the request log shows what the client really put on the wire.

use serde_json::{Map, Value};

/// Two parameters disagree about the shape of one name, e.g. `a=1&a[b]=2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError {
    pub param: String,
}

/// Parses a urlencoded body or query string. Percent-encoded brackets (`%5B`, `%5D`) are
/// decoded before the name is split, so both spellings give the same structure.
pub fn parse(input: &[u8]) -> Result<Value, FormError> {
    let mut root = Map::new();
    for (name, value) in form_urlencoded::parse(input) {
        let path = split_name(&name);
        let (first, rest) = path.split_first().expect("split_name returns at least one part");
        insert(&mut root, first, rest, &value).map_err(|()| FormError { param: name.to_string() })?;
    }
    let mut root = Value::Object(root);
    indexed_maps_to_arrays(&mut root, false);
    Ok(root)
}

/// `a[b][c]` -> `["a", "b", "c"]`; `a[]` -> `["a", ""]`. A segment ends at a `]` that is
/// followed by `[` or the end of the name, so a stray bracket stays inside the key
/// (`metadata[a]b]` has key `a]b`) and reaches metadata validation, which rejects it,
/// instead of silently changing the key.
fn split_name(name: &str) -> Vec<String> {
    let Some(open) = name.find('[') else {
        return vec![name.to_string()];
    };
    if open == 0 {
        return vec![name.to_string()];
    }
    let mut parts = vec![name[..open].to_string()];
    let mut rest = &name[open..];
    while !rest.is_empty() {
        let end = rest
            .match_indices(']')
            .map(|(i, _)| i)
            .find(|&i| rest[i + 1..].is_empty() || rest[i + 1..].starts_with('['));
        match end {
            Some(end) if rest.starts_with('[') => {
                parts.push(rest[1..end].to_string());
                rest = &rest[end + 1..];
            }
            _ => {
                parts.last_mut().expect("non-empty").push_str(rest);
                break;
            }
        }
    }
    parts
}

fn insert(map: &mut Map<String, Value>, key: &str, rest: &[String], value: &str) -> Result<(), ()> {
    let Some((next, rest)) = rest.split_first() else {
        // A repeated scalar keeps the last value, as Rack-style parsers do.
        return match map.get(key) {
            Some(Value::Object(_) | Value::Array(_)) => Err(()),
            _ => {
                map.insert(key.to_string(), Value::String(value.to_string()));
                Ok(())
            }
        };
    };
    let appending = next.is_empty();
    let slot = map
        .entry(key.to_string())
        .or_insert_with(|| if appending { Value::Array(Vec::new()) } else { Value::Object(Map::new()) });
    match (slot, appending) {
        (Value::Object(inner), false) => insert(inner, next, rest, value),
        (Value::Array(items), true) => {
            // `a[]=x` appends; `a[][b]=x` appends a fresh map for each occurrence.
            match rest.split_first() {
                None => items.push(Value::String(value.to_string())),
                Some((k, more)) => {
                    let mut inner = Map::new();
                    insert(&mut inner, k, more, value)?;
                    items.push(Value::Object(inner));
                }
            }
            Ok(())
        }
        _ => Err(()),
    }
}

/// SDKs send arrays as `expand[0]=…&expand[1]=…`; a map whose keys are exactly 0..n becomes
/// an array. Metadata is exempt: it is a string-to-string hash where "0" is a legal key.
fn indexed_maps_to_arrays(value: &mut Value, is_metadata: bool) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                indexed_maps_to_arrays(v, k == "metadata");
            }
            if !is_metadata && !map.is_empty() && is_dense_index(map) {
                let mut entries: Vec<(usize, Value)> =
                    std::mem::take(map).into_iter().map(|(k, v)| (k.parse().expect("checked"), v)).collect();
                entries.sort_by_key(|(i, _)| *i);
                *value = Value::Array(entries.into_iter().map(|(_, v)| v).collect());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| indexed_maps_to_arrays(v, false)),
        _ => {}
    }
}

fn is_dense_index(map: &Map<String, Value>) -> bool {
    let mut seen = vec![false; map.len()];
    for k in map.keys() {
        // Canonical decimal only: "01" or "+1" stay map keys.
        let canonical = !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) && (k == "0" || !k.starts_with('0'));
        match k.parse::<usize>() {
            Ok(i) if canonical && i < seen.len() && !seen[i] => seen[i] = true,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Value {
        parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn flat_and_nested() {
        assert_eq!(
            p("email=a%40b.co&metadata[user_id]=42&capabilities[card_payments][requested]=true"),
            json!({"email": "a@b.co", "metadata": {"user_id": "42"},
                   "capabilities": {"card_payments": {"requested": "true"}}})
        );
    }

    #[test]
    fn percent_encoded_brackets_and_plus() {
        assert_eq!(
            p("metadata%5Buser_id%5D=a+b&name=J%C3%BCrgen"),
            json!({"metadata": {"user_id": "a b"}, "name": "Jürgen"})
        );
    }

    #[test]
    fn arrays() {
        assert_eq!(p("expand[1]=b&expand[0]=a"), json!({"expand": ["a", "b"]}));
        assert_eq!(p("expand[]=a&expand[]=b"), json!({"expand": ["a", "b"]}));
        // Sparse or non-canonical indices stay a map.
        assert_eq!(p("x[0]=a&x[2]=b"), json!({"x": {"0": "a", "2": "b"}}));
        // Metadata keys that look like indices stay keys.
        assert_eq!(p("metadata[0]=a"), json!({"metadata": {"0": "a"}}));
    }

    #[test]
    fn empty_and_odd_names() {
        assert_eq!(p(""), json!({}));
        assert_eq!(p("metadata="), json!({"metadata": ""}));
        assert_eq!(p("metadata[a]b]=x"), json!({"metadata": {"a]b": "x"}}));
        assert_eq!(p("metadata[a[b]=x"), json!({"metadata": {"a[b": "x"}}));
        assert_eq!(p("metadata[a]b=x"), json!({"metadata[a]b": "x"}));
        assert_eq!(p("email=a&email=b"), json!({"email": "b"}));
    }

    #[test]
    fn conflicting_shapes() {
        assert_eq!(parse(b"a[b]=1&a=2"), Err(FormError { param: "a".into() }));
        assert_eq!(parse(b"a=1&a[b]=2"), Err(FormError { param: "a[b]".into() }));
    }
}
