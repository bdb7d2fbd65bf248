//! Every `/v2` request's parameters are checked against its endpoint's list for the pinned
//! version, generated from the SDK's v2 types like v1's ([`crate::pinned_version`]): an unknown
//! parameter is refused with `parameter_unknown` naming its full path, a value of the wrong JSON
//! type or outside its enum is refused, and a parameter the SDK types as required is refused as
//! `parameter_missing` when it is left out (at the top level, or below a hash that is sent).
//!
//! In a JSON body, values must have their JSON type: `"limit": "5"` is not a number, `null`
//! is accepted only where the SDK's types take it (below `metadata`, which the handlers read).
//! In a query string every value is a string and is read by its listed shape, as on `/v1`; a
//! single value of an array parameter (`include=identity`) is taken as a one-item array.
//!
//! Errors name parameters by their JSON path (`use_case.account_onboarding.refresh_url`,
//! `include[1]`), assumed to be how v2 names them (not confirmed).

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::params::one_of;
use crate::pinned_version::{ParamSpec, parameters_of};

/// Where the parameters came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A POST's JSON body: values have JSON types.
    Json,
    /// A GET's query string: every leaf is a string.
    Query,
}

/// Checks `params` against the list of `endpoint` (`"POST /v2/core/accounts"`). From a query
/// string, single values of array parameters are first made one-item arrays, in place.
pub fn check(endpoint: &str, params: &mut Map<String, Value>, source: Source) -> Result<(), ApiError> {
    let empty = HashMap::new();
    let list = parameters_of(endpoint).unwrap_or(&empty);
    if source == Source::Query {
        for (name, value) in params.iter_mut() {
            if value.is_string() && list.get(name).is_some_and(|spec| spec.takes("array") && !spec.takes("string")) {
                *value = Value::Array(vec![value.take()]);
            }
        }
    }
    let checker = Checker { list, source };
    for (name, value) in params.iter() {
        checker.value(name, name, value)?;
    }
    checker.required("", "", params)
}

struct Checker<'a> {
    list: &'a HashMap<String, ParamSpec>,
    source: Source,
}

impl Checker<'_> {
    /// `path` is the list's spelling (`use_case[account_onboarding]`, `include[]`); `shown` is
    /// the JSON path (`use_case.account_onboarding`, `include[0]`).
    fn value(&self, path: &str, shown: &str, value: &Value) -> Result<(), ApiError> {
        let Some(spec) = self.list.get(path) else {
            return Err(ApiError::unknown_param(shown));
        };
        match value {
            Value::Object(fields) => {
                if !spec.takes("hash") {
                    return Err(wrong_type(spec, shown));
                }
                if spec.free_form {
                    return Ok(());
                }
                for (key, inner) in fields {
                    self.value(&format!("{path}[{key}]"), &format!("{shown}.{key}"), inner)?;
                }
                self.required(path, shown, fields)
            }
            Value::Array(items) => {
                if !spec.takes("array") {
                    return Err(wrong_type(spec, shown));
                }
                let item_path = format!("{path}[]");
                for (i, item) in items.iter().enumerate() {
                    self.value(&item_path, &format!("{shown}[{i}]"), item)?;
                    if let Value::Object(fields) = item {
                        self.required(&item_path, &format!("{shown}[{i}]"), fields)?;
                    }
                }
                Ok(())
            }
            Value::Null if spec.emptyable => Ok(()),
            Value::Null => Err(ApiError::invalid(format!(
                "Invalid null for {shown}: it cannot be null. Remove it from the request or send a value."
            ))
            .param(shown)),
            Value::String(s) if self.source == Source::Query => self.query_scalar(spec, shown, s),
            Value::String(s) if spec.takes("string") => enum_member(spec, shown, s),
            Value::Number(_) if spec.takes("number") => Ok(()),
            Value::Bool(_) if spec.takes("boolean") => Ok(()),
            _ => Err(wrong_type(spec, shown)),
        }
    }

    /// A query-string value, read by its listed shape as on `/v1`.
    fn query_scalar(&self, spec: &ParamSpec, shown: &str, s: &str) -> Result<(), ApiError> {
        if spec.takes("number") && s.parse::<f64>().is_ok_and(f64::is_finite) {
            return Ok(());
        }
        if spec.takes("boolean") && (s == "true" || s == "false") {
            return Ok(());
        }
        if spec.takes("string") {
            return enum_member(spec, shown, s);
        }
        if spec.takes("number") {
            return Err(ApiError::invalid(format!("Invalid integer: {s}"))
                .code("parameter_invalid_integer")
                .param(shown));
        }
        if spec.takes("boolean") {
            return Err(ApiError::invalid(format!("Invalid boolean: {s}")).param(shown));
        }
        Err(wrong_type(spec, shown))
    }

    /// Refuses a hash sent (the top level when `path` is empty) without a child the SDK types
    /// as required.
    fn required(&self, path: &str, shown: &str, fields: &Map<String, Value>) -> Result<(), ApiError> {
        let mut missing: Vec<&str> = self
            .list
            .iter()
            .filter(|(_, spec)| spec.required)
            .filter_map(|(listed, _)| child_name(path, listed))
            .filter(|name| !fields.contains_key(*name))
            .collect();
        missing.sort_unstable();
        match missing.first() {
            None => Ok(()),
            Some(name) => {
                let param = if shown.is_empty() { name.to_string() } else { format!("{shown}.{name}") };
                Err(ApiError::missing_param(&param))
            }
        }
    }
}

/// `listed`'s own name if it is a direct child of `parent` (`""`: the top level).
fn child_name<'a>(parent: &str, listed: &'a str) -> Option<&'a str> {
    if parent.is_empty() {
        return (!listed.contains('[')).then_some(listed);
    }
    let rest = listed.strip_prefix(parent)?.strip_prefix('[')?.strip_suffix(']')?;
    (!rest.contains('[') && !rest.is_empty()).then_some(rest)
}

fn enum_member(spec: &ParamSpec, shown: &str, s: &str) -> Result<(), ApiError> {
    if spec.values.is_empty() || spec.values.iter().any(|v| v == s) {
        return Ok(());
    }
    Err(ApiError::invalid(format!("Invalid {shown}: must be one of {}", one_of(&spec.values))).param(shown))
}

/// A value of the wrong JSON type.
fn wrong_type(spec: &ParamSpec, shown: &str) -> ApiError {
    let expected: Vec<&str> = spec
        .kinds
        .iter()
        .map(|k| match k.as_str() {
            "string" => "a string",
            "number" => "a number",
            "boolean" => "a boolean",
            "hash" => "an object",
            "array" => "an array",
            other => other,
        })
        .collect();
    ApiError::invalid(format!("Invalid {shown}: expected {}", expected.join(" or "))).param(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check_json(endpoint: &str, params: Value) -> Result<(), ApiError> {
        check(endpoint, params.clone().as_object_mut().unwrap(), Source::Json)
    }

    #[test]
    fn unknown_parameters_are_named_by_their_json_path() {
        let err = check_json("POST /v2/core/accounts", json!({"configuration": {"merchant": {"colour": "red"}}}))
            .unwrap_err();
        assert_eq!(
            (err.code.as_deref(), err.param.as_deref()),
            (Some("parameter_unknown"), Some("configuration.merchant.colour"))
        );
        // v1's names are not v2's.
        let err = check_json("POST /v2/core/accounts", json!({"email": "a@b.co"})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("email"));
        // Removed from the pinned version (changelog 2026-09-30.endive).
        let link = json!({"account": "acct_1", "use_case": {"type": "account_onboarding",
            "account_onboarding": {"refresh_url": "https://x", "configurations": ["merchant"]}}});
        let err = check_json("POST /v2/core/account_links", link).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("use_case.account_onboarding.configurations"));
        assert!(
            check_json("POST /v2/core/accounts", json!({"metadata": {"any": "thing", "n": 1, "gone": null}})).is_ok()
        );
    }

    #[test]
    fn json_values_must_have_their_type() {
        let accounts = "POST /v2/core/accounts";
        let err = check_json(accounts, json!({"contact_email": 5})).unwrap_err();
        assert_eq!(err.message, "Invalid contact_email: expected a string");
        let err = check_json(
            accounts,
            json!({"configuration": {"merchant": {"capabilities": {"card_payments": {"requested": "true"}}}}}),
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("configuration.merchant.capabilities.card_payments.requested"));
        let err = check_json(accounts, json!({"dashboard": "partial"})).unwrap_err();
        assert_eq!(err.message, "Invalid dashboard: must be one of express, full, or none");
        let err = check_json(accounts, json!({"include": ["identity", "everything"]})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("include[1]"));
        let err = check_json(accounts, json!({"display_name": null})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("display_name"));
    }

    #[test]
    fn required_parameters_are_required_where_their_parent_is_sent() {
        let err = check_json("POST /v2/core/account_links", json!({"account": "acct_1"})).unwrap_err();
        assert_eq!((err.code.as_deref(), err.param.as_deref()), (Some("parameter_missing"), Some("use_case")));
        let err = check_json(
            "POST /v2/core/account_links",
            json!({"account": "acct_1", "use_case": {"type": "account_onboarding", "account_onboarding": {}}}),
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("use_case.account_onboarding.refresh_url"));
        let err = check_json(
            "POST /v2/core/accounts",
            json!({"defaults": {"responsibilities": {"fees_collector": "stripe"}}}),
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("defaults.responsibilities.losses_collector"));
        // A capability requested on create must say whether.
        let err = check_json(
            "POST /v2/core/accounts",
            json!({"configuration": {"merchant": {"capabilities": {"card_payments": {}}}}}),
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("configuration.merchant.capabilities.card_payments.requested"));
        assert!(
            check_json(
                "POST /v2/core/accounts/{id}",
                json!({"configuration": {"merchant": {"capabilities": {"card_payments": {}}}}})
            )
            .is_ok()
        );
    }

    #[test]
    fn query_values_are_read_by_their_shape() {
        let mut p = json!({"limit": "ten"});
        let err = check("GET /v2/core/accounts", p.as_object_mut().unwrap(), Source::Query).unwrap_err();
        assert_eq!(err.code.as_deref(), Some("parameter_invalid_integer"));
        let mut p = json!({"closed": "yes"});
        assert!(check("GET /v2/core/accounts", p.as_object_mut().unwrap(), Source::Query).is_err());
        let mut p = json!({"applied_configurations": "merchant", "closed": "true", "limit": "5", "page": "x"});
        check("GET /v2/core/accounts", p.as_object_mut().unwrap(), Source::Query).unwrap();
        assert_eq!(p["applied_configurations"], json!(["merchant"]));
        let mut p = json!({"include": "identity"});
        check("GET /v2/core/accounts/{id}", p.as_object_mut().unwrap(), Source::Query).unwrap();
        assert_eq!(p["include"], json!(["identity"]));
        let mut p = json!({"created": {"gte": "2026-01-01T00:00:00Z", "lt": "1767225600"}, "types": ["v2.core.account.created"]});
        assert!(check("GET /v2/core/events", p.as_object_mut().unwrap(), Source::Query).is_ok());
        let mut p = json!({"starting_after": "evt_1"});
        assert!(check("GET /v2/core/events", p.as_object_mut().unwrap(), Source::Query).is_err());
    }
}
