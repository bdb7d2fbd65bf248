//! Accounts v2 (`/v2/core/accounts`): one Account per user, which configurations make a
//! `customer` (it can be charged), a `merchant` (a connected account taking payments) and a
//! `recipient` (it receives transfers). Shapes follow the SDK's `Account`
//! (`esm/resources/V2/Core/Accounts.d.ts`, object `v2.core.account`, `created` an RFC 3339
//! string); parameters are checked against its `AccountCreateParams`, `AccountUpdateParams`,
//! `AccountListParams`, `AccountRetrieveParams` and `AccountCloseParams` first
//! ([`crate::v2::params`]), then what the lists cannot say is checked here.
//!
//! **`include`.** "Some API v2 responses contain null values for certain properties by default,
//! regardless of their actual values. … To retrieve the actual values for those properties,
//! specify them in the include array request parameter"; "to return actual values for the
//! configuration hash, you must specify individual configurations"
//! (<https://docs.stripe.com/api-includable-response-values>). So `configuration`, `defaults`,
//! `future_requirements`, `identity` and `requirements` are `null` in an answer unless the
//! request included them (`configuration.customer`, … each on its own; `configuration` is `null`
//! when none of the three is included, and a configuration not included is `null` inside it).
//! The list endpoint takes no `include`: its Accounts show all of them `null`.
//!
//! **Configurations.** Sending `configuration.merchant` (on create or update) applies it:
//! `applied: true`, listed in `applied_configurations`. An update may set `applied: false`,
//! which takes it out of `applied_configurations`, and for `customer` and `recipient` also
//! "will unrequest all capabilities within the configuration" (the SDK's description of
//! `applied`); `merchant` keeps its capabilities. A capability `requested: true` is added in the
//! status [`crate::v2::onboarding::capability_status`] gives (`customer`'s
//! `automatic_indirect_tax`: `active`), `requested: false` removes it. `contact_email` is
//! "Required when configuring the account as a merchant or recipient" (Stripe's OpenAPI
//! description of `contact_email`, as rendered in <https://hexdocs.pm/tiger_stripe>).
//!
//! **Requirements.** An Account with an applied `merchant` or `recipient` configuration that no
//! test moved through onboarding has [`crate::Onboarding::DEFAULT_DUE`] past due; one without
//! has none. Once a test moved it ([`crate::v2::dashboard::set_onboarding`]), API updates leave
//! its requirements alone.
//!
//! **Metadata.** Values are strings (numbers are taken as their text); `null` removes a key
//! (the SDK's `MetadataParam`: `string | number | null`; stripe-php 20.0.0: "The SDK now
//! preserves and sends null when set in V2 API metadata … enabling you to clear metadata
//! entries"). v1's limits apply: 50 keys, keys up to 40 characters, values up to 500.
//!
//! **Closing.** `POST /v2/core/accounts/{id}/close` sets `closed: true`; "All configurations on
//! the Account must be passed in" `applied_configurations` when it is sent (the SDK). A closed
//! Account is still retrieved and listed with `closed=true`, and refuses updates, closing and
//! Account Links with `account_closed`. An unknown id is 404 `resource_missing`.
//!
//! **Events.** Creating records `v2.core.account.created`, closing `v2.core.account.closed`.
//! Any other change records, in this order and only for what changed:
//!
//! | Change | Event |
//! |---|---|
//! | `applied_configurations`, `contact_email`, `contact_phone`, `dashboard`, `display_name`, `metadata` | `v2.core.account.updated` |
//! | a configuration's settings or the capabilities it requested | `v2.core.account[configuration.<name>].updated` |
//! | a capability's `status` (including a newly requested one) | `v2.core.account[configuration.<name>].capability_status_updated`, one per capability, `data.updated_capability` its dotted name |
//! | `identity`, `defaults`, `requirements`, `future_requirements` | `v2.core.account[<field>].updated` |

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::api::{Ctx, METADATA_MAX_KEY_LEN, METADATA_MAX_KEYS, METADATA_MAX_VALUE_LEN, check_email};
use crate::error::ApiError;
use crate::events::Cause;
use crate::onboarding::Onboarding;
use crate::store::new_id;
use crate::v2::capabilities;
use crate::v2::events::Related;
use crate::v2::onboarding;
use crate::v2::pages::{answer, cursor_param, limit_param, page_of};
use crate::v2::store::V2Store;
use crate::v2::time::format_millis;

pub const CONFIGURATIONS: [&str; 3] = ["customer", "merchant", "recipient"];

/// The fields that are `null` unless included, besides `configuration`.
const INCLUDE_DEPENDENT: [&str; 4] = ["defaults", "future_requirements", "identity", "requirements"];

/// The top-level fields whose change is `v2.core.account.updated`.
const TOP_LEVEL: [&str; 6] =
    ["applied_configurations", "contact_email", "contact_phone", "dashboard", "display_name", "metadata"];

pub fn url(id: &str) -> String {
    format!("/v2/core/accounts/{id}")
}

pub fn related(id: &str) -> Related<'_> {
    Related { id, kind: "v2.core.account", url: url(id) }
}

/// The request's `include` values.
fn includes(p: &Map<String, Value>) -> Vec<String> {
    p.get("include")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The Account as an answer shows it, given what the request included.
pub fn render(account: &Value, includes: &[String]) -> Value {
    let mut shown = account.clone();
    let included = |name: &str| includes.iter().any(|i| i == name);
    for field in INCLUDE_DEPENDENT {
        if !included(field) {
            shown[field] = Value::Null;
        }
    }
    if CONFIGURATIONS.iter().any(|c| included(&format!("configuration.{c}"))) {
        for c in CONFIGURATIONS {
            if !included(&format!("configuration.{c}")) {
                shown["configuration"][c] = Value::Null;
            }
        }
    } else {
        shown["configuration"] = Value::Null;
    }
    shown
}

/// The Account whole, every include-dependent field shown.
pub fn render_all(account: &Value) -> Value {
    let all: Vec<String> = INCLUDE_DEPENDENT
        .iter()
        .map(|f| f.to_string())
        .chain(CONFIGURATIONS.iter().map(|c| format!("configuration.{c}")))
        .collect();
    render(account, &all)
}

pub fn no_such_account(id: &str, param: &str) -> ApiError {
    ApiError::resource_missing(404, "account", id, param)
}

pub fn account_closed(id: &str) -> ApiError {
    ApiError::invalid(format!("The account {id} is closed: a closed account can no longer be operated on."))
        .code("account_closed")
}

fn is_closed(account: &Value) -> bool {
    account["closed"].as_bool().unwrap_or(false)
}

pub fn create(p: &Map<String, Value>, store: &mut V2Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let id = new_id("acct_", 16, &store.accounts);
    let mut account = json!({
        "id": id,
        "object": "v2.core.account",
        "applied_configurations": [],
        "closed": false,
        "configuration": {"customer": null, "merchant": null, "recipient": null},
        "contact_email": null,
        "contact_phone": null,
        "created": format_millis(ctx.now_ms),
        "dashboard": null,
        "defaults": {
            "currency": null,
            "locales": [],
            "profile": {"business_url": null, "doing_business_as": null, "product_description": null},
            "responsibilities": {"fees_collector": "stripe", "losses_collector": "stripe", "requirements_collector": "stripe"},
        },
        "display_name": null,
        "future_requirements": {"entries": [], "minimum_transition_date": null, "summary": null},
        "identity": {},
        "livemode": false,
        "metadata": {},
        "requirements": onboarding::entries(&[], "user", "currently_due", &[]),
    });
    apply(&mut account, p, None)?;
    let seq = store.next_seq();
    store.accounts.insert(seq, account.clone(), ctx.indexed_at);
    store.events.record("v2.core.account.created", Some(related(&id)), None, &ctx.cause, ctx.now_ms);
    Ok(render(&account, &includes(p)))
}

/// A retried create whose first attempt created `done` and then failed: the Account as it is
/// now, nothing created again, no event.
pub fn completed_create(done: &Value, p: &Map<String, Value>, store: &V2Store) -> Result<Value, ApiError> {
    let id = done["id"].as_str().unwrap_or("");
    let record = store.accounts.get(id).ok_or_else(|| no_such_account(id, "id"))?;
    Ok(render(&record.object, &includes(p)))
}

pub fn retrieve(id: &str, p: &Map<String, Value>, store: &V2Store) -> Result<Value, ApiError> {
    let record = store.accounts.get(id).ok_or_else(|| no_such_account(id, "id"))?;
    Ok(render(&record.object, &includes(p)))
}

pub fn update(id: &str, p: &Map<String, Value>, store: &mut V2Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let step = store.onboarding.get(id).cloned();
    let record = store.accounts.get(id).ok_or_else(|| no_such_account(id, "id"))?;
    if is_closed(&record.object) {
        return Err(account_closed(id));
    }
    let mut updated = record.object.clone();
    apply(&mut updated, p, step.as_ref())?;
    replace(store, id, updated.clone(), &ctx.cause, ctx.now_ms, ctx.indexed_at);
    Ok(render(&updated, &includes(p)))
}

/// Closes the Account. `completing`: a retry of a close that closed it and then failed, which
/// answers the closed Account again.
pub fn close(
    id: &str,
    p: &Map<String, Value>,
    store: &mut V2Store,
    ctx: &Ctx,
    completing: bool,
) -> Result<Value, ApiError> {
    let record = store.accounts.get(id).ok_or_else(|| no_such_account(id, "id"))?;
    let account = record.object.clone();
    if is_closed(&account) {
        return if completing { Ok(render(&account, &[])) } else { Err(account_closed(id)) };
    }
    if let Some(Value::Array(asked)) = p.get("applied_configurations") {
        let asked: BTreeSet<&str> = asked.iter().filter_map(Value::as_str).collect();
        let applied: BTreeSet<&str> =
            account["applied_configurations"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if asked != applied {
            return Err(ApiError::invalid(format!(
                "All configurations on the Account must be passed in applied_configurations to close it: it has [{}], \
                 the request passed [{}].",
                applied.into_iter().collect::<Vec<_>>().join(", "),
                asked.into_iter().collect::<Vec<_>>().join(", ")
            ))
            .param("applied_configurations"));
        }
    }
    let closed = close_account(store, id, &ctx.cause, ctx.now_ms, ctx.indexed_at).expect("the account is open");
    Ok(render(&closed, &[]))
}

/// Closes open Account `id`, recording `v2.core.account.closed`; the closed Account, or `None`
/// if there was no open one.
pub fn close_account(store: &mut V2Store, id: &str, cause: &Cause, now_ms: i64, indexed_at: Instant) -> Option<Value> {
    let account = store.accounts.live_mut(id)?;
    if is_closed(account) {
        return None;
    }
    account["closed"] = json!(true);
    let closed = account.clone();
    store.accounts.reindex(id, indexed_at);
    store.onboarding.remove(id);
    store.events.record("v2.core.account.closed", Some(related(id)), None, cause, now_ms);
    Some(closed)
}

pub fn list(p: &Map<String, Value>, store: &V2Store) -> Result<Value, ApiError> {
    let limit = limit_param(p)?;
    let cursor = cursor_param(p)?;
    // "If omitted, returns only Accounts that are not closed" (the SDK's `closed`).
    let closed = match p.get("closed") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => v.as_str() == Some("true"),
    };
    let wanted_configurations: Vec<&str> = p
        .get("applied_configurations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let wanted = |r: &crate::store::Record| {
        let applied = r.object["applied_configurations"].as_array();
        is_closed(&r.object) == closed
            && wanted_configurations.iter().all(|c| applied.is_some_and(|a| a.iter().any(|x| x.as_str() == Some(c))))
    };
    let page = page_of(store.accounts.records(), |r| r.seq, cursor, limit, wanted);
    let data = page.items.iter().map(|r| render(&r.object, &[])).collect();
    Ok(answer("/v2/core/accounts", p, &page, data))
}

/// Applies the parameters of a create or update to `account` (whole), `step` being where a test
/// moved its onboarding to, if it did.
fn apply(account: &mut Value, p: &Map<String, Value>, step: Option<&Onboarding>) -> Result<(), ApiError> {
    if let Some(Value::String(token)) = p.get("account_token") {
        // Account tokens are made by the Account Tokens API, which the emulator does not serve.
        return Err(ApiError::resource_missing(400, "account token", token, "account_token"));
    }
    if let Some(Value::String(email)) = p.get("contact_email") {
        check_email(email, "contact_email")?;
    }
    for field in ["contact_email", "contact_phone", "display_name", "dashboard"] {
        if let Some(Value::String(s)) = p.get(field) {
            account[field] = json!(s);
        }
    }
    if let Some(given) = p.get("metadata") {
        apply_metadata(account["metadata"].as_object_mut().expect("accounts have metadata"), given)?;
    }
    if let Some(identity) = p.get("identity") {
        merge(&mut account["identity"], identity);
    }
    if let Some(defaults) = p.get("defaults") {
        apply_defaults(&mut account["defaults"], defaults);
    }
    if let Some(Value::Object(configurations)) = p.get("configuration") {
        for (name, given) in configurations {
            apply_configuration(&mut account["configuration"][name.as_str()], name, given, step);
        }
    }
    let applied: Vec<&str> = CONFIGURATIONS
        .into_iter()
        .filter(|c| account["configuration"][*c]["applied"].as_bool() == Some(true))
        .collect();
    account["applied_configurations"] = json!(applied);
    let connected = applied.iter().any(|c| *c == "merchant" || *c == "recipient");
    if connected && account["contact_email"].is_null() {
        return Err(ApiError::invalid(
            "Missing required param: contact_email. It is required when configuring the account as a merchant or recipient.",
        )
        .code("parameter_missing")
        .param("contact_email"));
    }
    // Assumed, not confirmed: the platform collects requirements for Accounts without a
    // Stripe-hosted Dashboard whose losses it bears (as v1's controller properties), else Stripe.
    let collector = if account["dashboard"] == "none"
        && account["defaults"]["responsibilities"]["losses_collector"] == "application"
    {
        "application"
    } else {
        "stripe"
    };
    account["defaults"]["responsibilities"]["requirements_collector"] = json!(collector);
    if step.is_none() {
        let restricted = onboarding::restricted_capabilities(account);
        account["requirements"] = if connected {
            onboarding::requirements(None, &restricted, &[])
        } else {
            onboarding::entries(&[], "user", "currently_due", &[])
        };
    }
    Ok(())
}

fn apply_defaults(defaults: &mut Value, given: &Value) {
    for (name, value) in given.as_object().into_iter().flatten() {
        match name.as_str() {
            "currency" => defaults["currency"] = json!(value.as_str().map(str::to_ascii_lowercase)),
            "responsibilities" => merge(&mut defaults["responsibilities"], value),
            "profile" | "payout_methods" => {
                if defaults[name.as_str()].is_null() {
                    defaults[name.as_str()] = json!({});
                }
                merge(&mut defaults[name.as_str()], value);
            }
            _ => defaults[name.as_str()] = value.clone(),
        }
    }
}

/// Applies `configuration.<name>` (`slot`: the Account's, `null` until first applied). A merchant
/// or recipient configuration also gets `stripe_balance.payouts`, which Stripe requests itself
/// ("We've made payouts a capability in both the merchant and recipient configurations",
/// docs.stripe.com/changelog/basil/2025-04-30/payouts-are-now-a-capability; the SDK's request
/// types do not let a platform ask for it), its status following onboarding as the others'.
fn apply_configuration(slot: &mut Value, name: &str, given: &Value, step: Option<&Onboarding>) {
    if slot.is_null() {
        *slot = json!({"applied": true, "capabilities": {}});
        if name == "merchant" || name == "recipient" {
            let payouts = ["stripe_balance".to_string(), "payouts".to_string()];
            capabilities::set(&mut slot["capabilities"], &payouts, onboarding::capability_status(step));
        }
    }
    for (field, value) in given.as_object().into_iter().flatten() {
        match field.as_str() {
            "capabilities" => {
                for (path, requested) in capabilities::requested(value) {
                    match requested {
                        Some(true) if !capabilities::has(&slot["capabilities"], &path) => {
                            let status = if name == "customer" {
                                capabilities::status("active", &[])
                            } else {
                                onboarding::capability_status(step)
                            };
                            capabilities::set(&mut slot["capabilities"], &path, status);
                        }
                        Some(false) => capabilities::remove(&mut slot["capabilities"], &path),
                        _ => {}
                    }
                }
            }
            "applied" => slot["applied"] = value.clone(),
            _ => {
                if slot[field.as_str()].is_null() {
                    slot[field.as_str()] = json!({});
                }
                if value.is_object() {
                    merge(&mut slot[field.as_str()], value);
                } else {
                    slot[field.as_str()] = value.clone();
                }
            }
        }
    }
    if slot["applied"] == false && name != "merchant" {
        slot["capabilities"] = json!({});
    }
}

/// Merges `patch` into `target`: hashes key by key, anything else replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(fields), Some(changes)) => {
            for (key, value) in changes {
                merge(fields.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        _ => *target = patch.clone(),
    }
}

fn apply_metadata(metadata: &mut Map<String, Value>, given: &Value) -> Result<(), ApiError> {
    let Some(changes) = given.as_object() else {
        return Err(ApiError::invalid("Invalid metadata: expected an object").param("metadata"));
    };
    for (key, value) in changes {
        let param = format!("metadata.{key}");
        if key.is_empty() {
            return Err(ApiError::invalid("Invalid metadata: keys cannot be empty.").param("metadata"));
        }
        if key.chars().count() > METADATA_MAX_KEY_LEN {
            return Err(ApiError::invalid(format!(
                "Invalid metadata key '{key}': keys can be at most {METADATA_MAX_KEY_LEN} characters."
            ))
            .param(&param));
        }
        let value = match value {
            Value::Null => {
                metadata.remove(key);
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(ApiError::invalid(format!(
                    "Invalid value for metadata key '{key}': values must be strings, numbers, or null (to remove the key)."
                ))
                .param(&param));
            }
        };
        if value.chars().count() > METADATA_MAX_VALUE_LEN {
            return Err(ApiError::invalid(format!(
                "Invalid value for metadata key '{key}': values can be at most {METADATA_MAX_VALUE_LEN} characters, but \
                 this one has {}.",
                value.chars().count()
            ))
            .param(&param));
        }
        metadata.insert(key.clone(), Value::String(value));
    }
    if metadata.len() > METADATA_MAX_KEYS {
        return Err(ApiError::invalid(format!(
            "Metadata can have up to {METADATA_MAX_KEYS} keys, but you've set {}.",
            metadata.len()
        ))
        .param("metadata"));
    }
    Ok(())
}

/// Stores `updated` as open Account `id`, recording the events of what changed.
pub fn replace(store: &mut V2Store, id: &str, updated: Value, cause: &Cause, now_ms: i64, indexed_at: Instant) {
    let Some(account) = store.accounts.live_mut(id) else {
        return;
    };
    let changes = change_events(account, &updated);
    *account = updated;
    store.accounts.reindex(id, indexed_at);
    for (kind, data) in changes {
        store.events.record(&kind, Some(related(id)), data, cause, now_ms);
    }
}

/// The thin events a change from `before` to `after` records, in recording order.
pub fn change_events(before: &Value, after: &Value) -> Vec<(String, Option<Value>)> {
    let mut events = Vec::new();
    if TOP_LEVEL.iter().any(|f| before[f] != after[f]) {
        events.push(("v2.core.account.updated".to_string(), None));
    }
    for c in CONFIGURATIONS {
        let (b, a) = (&before["configuration"][c], &after["configuration"][c]);
        if capabilities::without_statuses(b) != capabilities::without_statuses(a) {
            events.push((format!("v2.core.account[configuration.{c}].updated"), None));
        }
        let was = capabilities::shown(&b["capabilities"]);
        for (name, now) in capabilities::shown(&a["capabilities"]) {
            let before_status = was.iter().find(|(n, _)| *n == name).map(|(_, v)| v["status"].clone());
            if before_status.as_ref() != Some(&now["status"]) {
                events.push((
                    format!("v2.core.account[configuration.{c}].capability_status_updated"),
                    Some(json!({"updated_capability": name})),
                ));
            }
        }
    }
    for field in ["identity", "defaults", "requirements", "future_requirements"] {
        if before[field] != after[field] {
            events.push((format!("v2.core.account[{field}].updated"), None));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Value {
        json!({
            "applied_configurations": ["customer"], "closed": false, "contact_email": "a@b.co",
            "configuration": {"customer": {"applied": true, "capabilities": {}}, "merchant": null, "recipient": null},
            "defaults": {}, "future_requirements": {}, "identity": {"country": "us"}, "metadata": {},
            "requirements": {"entries": []},
        })
    }

    #[test]
    fn includes_decide_what_is_null() {
        let a = account();
        let bare = render(&a, &[]);
        assert!(bare["configuration"].is_null() && bare["identity"].is_null() && bare["requirements"].is_null());
        assert_eq!(bare["contact_email"], "a@b.co");
        let some = render(&a, &["configuration.customer".into(), "identity".into()]);
        assert_eq!(some["configuration"]["customer"]["applied"], true);
        assert!(some["configuration"]["merchant"].is_null() && some["defaults"].is_null());
        assert_eq!(some["identity"]["country"], "us");
        assert_eq!(render_all(&a)["requirements"], json!({"entries": []}));
    }

    #[test]
    fn a_change_records_one_event_per_part_that_changed() {
        let before = account();
        let mut after = before.clone();
        after["metadata"] = json!({"k": "v"});
        after["configuration"]["merchant"] =
            json!({"applied": true, "capabilities": {"card_payments": {"status": "restricted", "status_details": []}}});
        after["applied_configurations"] = json!(["customer", "merchant"]);
        after["requirements"] = json!({"entries": [{"description": "external_account"}]});
        let kinds: Vec<(String, Option<Value>)> = change_events(&before, &after);
        assert_eq!(
            kinds,
            vec![
                ("v2.core.account.updated".to_string(), None),
                ("v2.core.account[configuration.merchant].updated".to_string(), None),
                (
                    "v2.core.account[configuration.merchant].capability_status_updated".to_string(),
                    Some(json!({"updated_capability": "card_payments"}))
                ),
                ("v2.core.account[requirements].updated".to_string(), None),
            ]
        );
        for (kind, _) in &kinds {
            assert!(crate::pinned_version::is_v2_event_type(kind), "{kind}");
        }
        // A status change alone is not a change of the configuration.
        let mut moved = after.clone();
        moved["configuration"]["merchant"]["capabilities"]["card_payments"]["status"] = json!("active");
        let kinds: Vec<String> = change_events(&after, &moved).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, ["v2.core.account[configuration.merchant].capability_status_updated"]);
        assert!(change_events(&after, &after).is_empty());
    }

    #[test]
    fn metadata_takes_strings_numbers_and_null_to_remove() {
        let mut m = Map::new();
        apply_metadata(&mut m, &json!({"a": "1", "b": 2, "c": "x"})).unwrap();
        apply_metadata(&mut m, &json!({"c": null})).unwrap();
        assert_eq!(Value::Object(m.clone()), json!({"a": "1", "b": "2"}));
        assert!(apply_metadata(&mut m, &json!({"d": true})).is_err());
        assert!(apply_metadata(&mut m, &json!({"k".repeat(41): "v"})).is_err());
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(apply_metadata(&mut Map::new(), &Value::Object(many)).is_err());
    }
}
