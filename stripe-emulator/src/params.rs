//! Every `/v1` request's parameters are checked against its endpoint's list for the pinned
//! version ([`crate::pinned_version`]) before it runs, nested keys included, as Stripe does: an
//! unknown parameter is a 400 `parameter_unknown` naming its full bracketed path.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::pinned_version::{ParamSpec, parameters_of};

/// Checks parsed parameters against the list of `endpoint` (`"POST /v1/accounts"`): names,
/// value shapes and enum values. Endpoints without a list accept nothing.
pub fn check(endpoint: &str, params: &Map<String, Value>) -> Result<(), ApiError> {
    let empty = HashMap::new();
    let list = parameters_of(endpoint).unwrap_or(&empty);
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
