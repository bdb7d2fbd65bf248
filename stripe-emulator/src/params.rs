//! Stripe's parameter allow-lists for the pinned API version, generated from the official
//! SDK's type definitions by `params/generate.mjs` and embedded as data. Every `/v1` request
//! is checked against its endpoint's list before it runs, nested keys included, as Stripe
//! does: an unknown parameter is a 400 `parameter_unknown` naming its full bracketed path.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The API version the emulator speaks, the one the lists were generated for. Requests must
/// pin it with `Stripe-Version`.
pub const PINNED_API_VERSION: &str = "2026-10-28.endive";

const LISTS_JSON: &str = include_str!("../params/2026-10-28.endive.json");

#[derive(Deserialize)]
struct Lists {
    api_version: String,
    /// Every `code` a Stripe API error can carry in this version.
    error_codes: HashSet<String>,
    /// `"POST /v1/customers"` -> bracketed path -> what it accepts.
    endpoints: HashMap<String, HashMap<String, ParamSpec>>,
}

/// What one parameter path accepts.
#[derive(Deserialize)]
struct ParamSpec {
    /// Value shapes: `string`, `number`, `boolean`, `hash`, `array`.
    #[serde(rename = "type")]
    kinds: Vec<String>,
    /// Allowed string values, when the API defines an enum.
    #[serde(default, rename = "enum")]
    values: Vec<String>,
    /// "" is accepted (it unsets the field).
    #[serde(default)]
    emptyable: bool,
    /// A hash with arbitrary keys (`metadata`): nothing below it is listed.
    #[serde(default)]
    free_form: bool,
}

impl ParamSpec {
    fn takes(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }
}

fn lists() -> &'static Lists {
    static LISTS: OnceLock<Lists> = OnceLock::new();
    LISTS.get_or_init(|| {
        let lists: Lists = serde_json::from_str(LISTS_JSON).expect("the embedded parameter lists are valid JSON");
        assert_eq!(lists.api_version, PINNED_API_VERSION, "the embedded lists are for another version");
        lists
    })
}

/// True for the versions the emulator can answer in: the one its lists were generated for.
pub fn is_served_version(version: &str) -> bool {
    version == lists().api_version
}

/// Whether Stripe has this error code in the pinned version.
pub fn is_stripe_error_code(code: &str) -> bool {
    lists().error_codes.contains(code)
}

/// Whether `path` (`controller[fees][payer]`, `expand[]`) is a parameter of `endpoint`.
pub fn is_known(endpoint: &str, path: &str) -> bool {
    lists().endpoints.get(endpoint).is_some_and(|list| list.contains_key(path))
}

/// Checks parsed parameters against the list of `endpoint` (`"POST /v1/accounts"`): names,
/// value shapes and enum values. Endpoints without a list accept nothing.
pub fn check(endpoint: &str, params: &Map<String, Value>) -> Result<(), ApiError> {
    let empty = HashMap::new();
    let list = lists().endpoints.get(endpoint).unwrap_or(&empty);
    for (name, value) in params {
        check_value(list, name, name, value)?;
    }
    Ok(())
}

/// `path` is the list's spelling (`tax_id_data[][type]`); `shown` is what the client sent
/// (`tax_id_data[0][type]`), the form Stripe names in its errors.
fn check_value(list: &HashMap<String, ParamSpec>, path: &str, shown: &str, value: &Value) -> Result<(), ApiError> {
    let Some(spec) = list.get(path) else {
        return Err(ApiError::unknown_param(shown));
    };
    match value {
        Value::Object(fields) => {
            if !spec.takes("hash") {
                return Err(wrong_shape(spec, shown));
            }
            if spec.free_form {
                return Ok(());
            }
            for (key, inner) in fields {
                check_value(list, &format!("{path}[{key}]"), &format!("{shown}[{key}]"), inner)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            if !spec.takes("array") {
                return Err(wrong_shape(spec, shown));
            }
            let item_path = format!("{path}[]");
            for (i, item) in items.iter().enumerate() {
                check_value(list, &item_path, &format!("{shown}[{i}]"), item)?;
            }
            Ok(())
        }
        Value::String(s) => check_scalar(spec, shown, s),
        // The form parser only makes strings, hashes and arrays.
        _ => Err(wrong_shape(spec, shown)),
    }
}

fn check_scalar(spec: &ParamSpec, shown: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() {
        // Strings take "" too: endpoints decide whether it unsets them.
        if spec.emptyable || spec.takes("string") {
            return Ok(());
        }
        return Err(ApiError::invalid(format!(
            "You passed an empty string for '{shown}'. We assume empty values are an attempt to unset a \
             parameter; however '{shown}' cannot be unset. You should remove '{shown}' from your request or \
             supply a non-empty value."
        ))
        .code("parameter_invalid_empty")
        .param(shown));
    }
    let is_number = s.parse::<f64>().is_ok_and(f64::is_finite);
    if spec.takes("number") && is_number {
        return Ok(());
    }
    if spec.takes("boolean") && (s == "true" || s == "false") {
        return Ok(());
    }
    if spec.takes("string") {
        if spec.values.is_empty() || spec.values.iter().any(|v| v == s) {
            return Ok(());
        }
        return Err(ApiError::invalid(format!("Invalid {shown}: must be one of {}", one_of(&spec.values))).param(shown));
    }
    if spec.takes("number") {
        return Err(ApiError::invalid(format!("Invalid integer: {s}")).code("parameter_invalid_integer").param(shown));
    }
    if spec.takes("boolean") {
        return Err(ApiError::invalid(format!("Invalid boolean: {s}")).param(shown));
    }
    Err(wrong_shape(spec, shown))
}

/// A value of the wrong shape: a scalar where a hash or array belongs, or the reverse.
fn wrong_shape(spec: &ParamSpec, shown: &str) -> ApiError {
    let message = if spec.takes("string") || spec.takes("number") || spec.takes("boolean") {
        "Invalid string: expected a single value, not a hash or array"
    } else if spec.takes("hash") {
        "Invalid hash"
    } else {
        "Invalid array"
    };
    ApiError::invalid(message).param(shown)
}

/// `a, b, or c`, Stripe's way of listing enum values.
pub fn one_of(values: &[String]) -> String {
    match values {
        [] => String::new(),
        [only] => only.clone(),
        [first, second] => format!("{first} or {second}"),
        [init @ .., last] => format!("{}, or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check_json(endpoint: &str, params: Value) -> Result<(), ApiError> {
        check(endpoint, params.as_object().unwrap())
    }

    #[test]
    fn the_embedded_lists_cover_every_endpoint_the_emulator_serves() {
        for endpoint in [
            "POST /v1/customers",
            "POST /v1/customers/{id}",
            "GET /v1/customers",
            "GET /v1/customers/search",
            "GET /v1/customers/{id}",
            "DELETE /v1/customers/{id}",
            "POST /v1/accounts",
            "POST /v1/accounts/{id}",
            "GET /v1/accounts",
            "GET /v1/accounts/{id}",
            "DELETE /v1/accounts/{id}",
            "POST /v1/account_links",
            "GET /v1/events",
            "GET /v1/events/{id}",
        ] {
            assert!(lists().endpoints.contains_key(endpoint), "{endpoint}");
        }
        assert!(is_known("POST /v1/accounts", "controller[stripe_dashboard][type]"));
        assert!(is_known("GET /v1/customers", "expand[]"));
        assert!(is_stripe_error_code("parameter_unknown") && !is_stripe_error_code("idempotency_key_reused"));
    }

    #[test]
    fn nested_unknown_parameters_are_named_in_full() {
        let err = check_json("POST /v1/customers", json!({"address": {"line1": "x", "foo": "y"}})).unwrap_err();
        assert_eq!((err.code.as_deref(), err.param.as_deref()), (Some("parameter_unknown"), Some("address[foo]")));
        assert_eq!(err.message, "Received unknown parameter: address[foo]");
        let err =
            check_json("POST /v1/customers", json!({"tax_id_data": [{"type": "eu_vat", "value": "1", "x": "2"}]}))
                .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("tax_id_data[0][x]"));
        // Anything goes below a free-form hash.
        assert!(check_json("POST /v1/customers", json!({"metadata": {"any": "thing"}})).is_ok());
    }

    #[test]
    fn shapes_and_enums() {
        let accounts = "POST /v1/accounts";
        let err = check_json(accounts, json!({"controller": {"fees": {"payer": "nobody"}}})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("controller[fees][payer]"));
        assert_eq!(err.message, "Invalid controller[fees][payer]: must be one of account or application");
        let err = check_json(accounts, json!({"capabilities": {"transfers": {"requested": "yes"}}})).unwrap_err();
        assert_eq!(err.message, "Invalid boolean: yes");
        let err = check_json(accounts, json!({"controller": "express"})).unwrap_err();
        assert_eq!((err.message.as_str(), err.param.as_deref()), ("Invalid hash", Some("controller")));
        let err = check_json(accounts, json!({"controller": ""})).unwrap_err();
        assert_eq!(err.code.as_deref(), Some("parameter_invalid_empty"));
        let err = check_json("GET /v1/customers", json!({"limit": "ten"})).unwrap_err();
        assert_eq!(err.code.as_deref(), Some("parameter_invalid_integer"));
        assert!(check_json("GET /v1/customers", json!({"created": "5"})).is_ok());
        assert!(check_json("GET /v1/customers", json!({"created": {"gte": "5"}})).is_ok());
        assert!(check_json("POST /v1/customers", json!({"metadata": "", "tax_exempt": ""})).is_ok());
    }

    #[test]
    fn lists_read_like_stripe() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(one_of(&v(&["a"])), "a");
        assert_eq!(one_of(&v(&["a", "b"])), "a or b");
        assert_eq!(one_of(&v(&["a", "b", "c"])), "a, b, or c");
    }
}
