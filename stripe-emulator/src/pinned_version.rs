//! The API version the emulator speaks and what Stripe's official SDK lists for it: each
//! endpoint's parameters (names, value shapes, enum values) and every error code. Generated from
//! the SDK's type definitions by `params/generate.mjs` and embedded as data.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde::Deserialize;

/// The API version the emulator speaks, the one the lists were generated for. Requests must
/// pin it with `Stripe-Version`.
pub const PINNED_API_VERSION: &str = "2026-10-28.endive";

const LISTS_JSON: &str = include_str!("../params/2026-10-28.endive.json");

#[derive(Deserialize)]
struct Lists {
    api_version: String,
    /// Every `code` a Stripe API error can carry in this version.
    error_codes: HashSet<String>,
    /// Every thin event type the SDK declares (`v2.core.account.created`, …).
    v2_event_types: HashSet<String>,
    /// `"POST /v1/customers"` -> bracketed path -> what it accepts.
    endpoints: HashMap<String, HashMap<String, ParamSpec>>,
}

/// What one parameter path accepts.
#[derive(Deserialize)]
pub struct ParamSpec {
    /// Value shapes: `string`, `number`, `boolean`, `hash`, `array`.
    #[serde(rename = "type")]
    pub kinds: Vec<String>,
    /// Allowed string values, when the API defines an enum.
    #[serde(default, rename = "enum")]
    pub values: Vec<String>,
    /// "" is accepted (it unsets the field).
    #[serde(default)]
    pub emptyable: bool,
    /// A hash with arbitrary keys (`metadata`): nothing below it is listed.
    #[serde(default)]
    pub free_form: bool,
    /// The SDK types it as required: at the top level, in every request; below, whenever its
    /// parent hash is sent. Checked for `/v2` endpoints (`/v1` handlers check what they need).
    #[serde(default)]
    pub required: bool,
}

impl ParamSpec {
    pub fn takes(&self, kind: &str) -> bool {
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

/// Whether the SDK declares this thin event type (served by `GET /v2/core/events`).
pub fn is_v2_event_type(kind: &str) -> bool {
    lists().v2_event_types.contains(kind)
}

/// The parameters of `endpoint` (`"POST /v1/accounts"`) by bracketed path; `None` for an endpoint
/// without a list.
pub fn parameters_of(endpoint: &str) -> Option<&'static HashMap<String, ParamSpec>> {
    lists().endpoints.get(endpoint)
}

/// Whether `path` (`controller[fees][payer]`, `expand[]`) is a parameter of `endpoint`.
pub fn is_known(endpoint: &str, path: &str) -> bool {
    parameters_of(endpoint).is_some_and(|list| list.contains_key(path))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "POST /v2/core/accounts",
            "POST /v2/core/accounts/{id}",
            "GET /v2/core/accounts",
            "GET /v2/core/accounts/{id}",
            "POST /v2/core/accounts/{id}/close",
            "POST /v2/core/account_links",
            "GET /v2/core/events",
            "GET /v2/core/events/{id}",
        ] {
            assert!(lists().endpoints.contains_key(endpoint), "{endpoint}");
        }
        assert!(is_known("POST /v1/accounts", "controller[stripe_dashboard][type]"));
        assert!(is_known("GET /v1/customers", "expand[]"));
        assert!(is_stripe_error_code("parameter_unknown") && !is_stripe_error_code("idempotency_key_reused"));
        assert!(is_known("POST /v2/core/accounts", "configuration[merchant][capabilities][card_payments][requested]"));
        assert!(is_known("GET /v2/core/accounts", "page") && is_known("GET /v2/core/events", "created[gte]"));
        // Removed from Account Links v2 in 2026-09-30.endive, before the pin.
        assert!(!is_known("POST /v2/core/account_links", "use_case[account_onboarding][configurations]"));
        assert!(is_v2_event_type("v2.core.account[requirements].updated") && !is_v2_event_type("account.updated"));
    }
}
