//! Reading a `/v2` request's parameters. "Request and responses use JSON encoding
//! (`application/json`)" (<https://docs.stripe.com/api-v2-overview>, "Send data to the API"): a
//! POST's parameters are its JSON body, an object; a form-encoded body is refused. A GET's
//! parameters travel in the query string with v1's bracket syntax; arrays may be indexed
//! (`include[0]=identity`, what the SDKs send since November 2025) or repeated
//! (`include=identity&include=defaults`, what they sent before: "While that format is still
//! accepted, it is deprecated", stripe/stripe-node#2497). Query values stay strings; the
//! parameter check ([`crate::v2::params`]) reads them by their listed shape.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::form;

/// The parameters of a `/v2` request, or why they cannot be read.
pub fn parse(method: &str, query: &str, content_type: Option<&str>, body: &[u8]) -> Result<Value, ApiError> {
    if method != "POST" {
        // GET (and anything else) ignores a body, as on /v1.
        return parse_query(query);
    }
    if !query.is_empty() {
        return Err(ApiError::invalid(
            "Query parameters are not accepted on a POST to a /v2 endpoint: send every parameter in the JSON \
             request body.",
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let media_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if media_type.as_deref() != Some("application/json") {
        return Err(ApiError::invalid(format!(
            "Invalid request: /v2 endpoints take a JSON request body (Content-Type: application/json), not {}.",
            content_type.map_or("a body without a Content-Type".to_string(), |c| format!("`{c}`"))
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::invalid("Invalid request body: expected a JSON object.")),
        Err(e) => Err(ApiError::invalid(format!("Invalid JSON in the request body: {e}."))),
    }
}

/// A v2 query string: v1's bracket syntax, where a name repeated without brackets is an array.
fn parse_query(query: &str) -> Result<Value, ApiError> {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let repeated = |name: &str| pairs.iter().filter(|(k, _)| k == name).count() > 1;
    let mut rewritten = form_urlencoded::Serializer::new(String::new());
    for (name, value) in &pairs {
        if !name.contains('[') && repeated(name) {
            rewritten.append_pair(&format!("{name}[]"), value);
        } else {
            rewritten.append_pair(name, value);
        }
    }
    form::parse(rewritten.finish().as_bytes()).map_err(|e| {
        ApiError::invalid(format!("Invalid parameters: conflicting values for `{}`", e.param)).param(&e.param)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn posts_take_a_json_object_only() {
        let json = Some("application/json");
        assert_eq!(
            parse("POST", "", json, br#"{"contact_email":"a@b.co"}"#).unwrap(),
            json!({"contact_email": "a@b.co"})
        );
        assert_eq!(parse("POST", "", Some("application/json; charset=utf-8"), b"{}").unwrap(), json!({}));
        assert_eq!(parse("POST", "", None, b"").unwrap(), json!({}));
        let form = parse("POST", "", Some("application/x-www-form-urlencoded"), b"contact_email=a%40b.co").unwrap_err();
        assert_eq!(form.status, 400);
        assert!(form.message.contains("application/json"), "{}", form.message);
        assert!(parse("POST", "", json, b"[1]").is_err());
        assert!(parse("POST", "", json, b"{").is_err());
        assert!(parse("POST", "include[0]=identity", json, b"{}").is_err());
    }

    #[test]
    fn query_arrays_may_be_indexed_or_repeated() {
        let indexed = parse("GET", "include[0]=identity&include[1]=defaults", None, b"").unwrap();
        let repeated = parse("GET", "include=identity&include=defaults", None, b"").unwrap();
        assert_eq!(indexed, json!({"include": ["identity", "defaults"]}));
        assert_eq!(repeated, indexed);
        // One value without brackets stays a string: the check reads it by its listed shape.
        assert_eq!(
            parse("GET", "include=identity&limit=2", None, b"").unwrap(),
            json!({"include": "identity", "limit": "2"})
        );
        assert_eq!(parse("GET", "created[gte]=5", None, b"ignored").unwrap(), json!({"created": {"gte": "5"}}));
    }
}
