//! The emulated `/v1` endpoints (routed by [`crate::route`]): parameter validation and object shapes.
//! Everything here is synchronous and runs under the state lock, so one request's
//! read-modify-write never interleaves with another's. Parameter names and shapes are checked
//! first, against Stripe's lists for the pinned version ([`crate::params`]); the handlers then
//! check what those lists cannot say (email syntax, metadata limits, combinations).

use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::auth;
use crate::error::ApiError;
use crate::events::{self, Cause};
use crate::pagination::{created_filter, created_matches, limit_param, list_answer, page_of};
use crate::params;
use crate::random::random_alnum;
use crate::route::Route;
use crate::search::Query;
use crate::store::{Collection, Record, Store, new_id};

pub fn unrecognized(method: &str, path: &str) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        format!(
            "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs \
             or we can help at https://support.stripe.com/."
        ),
    )
}

/// What a handler needs besides the store.
pub struct Ctx<'a> {
    pub now_secs: i64,
    /// The same moment in milliseconds: API v2 timestamps have millisecond precision.
    pub now_ms: i64,
    pub now: Instant,
    /// When writes made by this request become visible to search.
    pub indexed_at: Instant,
    /// Only ever shown masked, in `account_invalid` messages.
    pub api_key: &'a str,
    /// The request, named in the events it causes.
    pub cause: Cause,
}

pub fn execute(route: &Route, params: &Value, store: &mut Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let empty = Map::new();
    let p = params.as_object().unwrap_or(&empty);
    params::check(route.endpoint(), p)?;
    match route {
        Route::CreateCustomer => create_customer(p, store, ctx),
        Route::ListCustomers => list_customers(p, store),
        Route::SearchCustomers => search_customers(p, store, ctx),
        Route::GetCustomer(id) => match store.customers.get(id) {
            Some(r) if r.deleted => Ok(deleted_stub(id, "customer")),
            Some(r) => Ok(r.object.clone()),
            None => Err(no_such_customer(id)),
        },
        Route::UpdateCustomer(id) => update_customer(id, p, store, ctx),
        Route::DeleteCustomer(id) => {
            delete_customer(store, id, &ctx.cause, ctx.now_secs, ctx.indexed_at).ok_or_else(|| no_such_customer(id))
        }
        Route::CreateAccount => create_account(p, store, ctx),
        Route::ListAccounts => list(&store.accounts, "/v1/accounts", "account", p, |_| true),
        Route::GetAccount(id) => match store.accounts.get(id) {
            Some(r) if !r.deleted => Ok(r.object.clone()),
            _ => Err(account_invalid(id, ctx)),
        },
        Route::UpdateAccount(id) => update_account(id, p, store, ctx),
        Route::DeleteAccount(id) => {
            if deauthorize_account(store, id, &ctx.cause, ctx.now_secs, ctx.indexed_at) {
                Ok(deleted_stub(id, "account"))
            } else {
                Err(account_invalid(id, ctx))
            }
        }
        Route::CreateAccountLink => create_account_link(p, store, ctx),
        Route::ListEvents => store.events.list(p, ctx.now_secs),
        Route::GetEvent(id) => store.events.retrieve(id, ctx.now_secs),
        // The server hands these to `v2::api`; never reached.
        Route::CreateV2Account
        | Route::ListV2Accounts
        | Route::GetV2Account(_)
        | Route::UpdateV2Account(_)
        | Route::CloseV2Account(_)
        | Route::CreateV2AccountLink
        | Route::ListV2Events
        | Route::GetV2Event(_) => Err(ApiError::new(500, "api_error", "a /v2 endpoint reached the /v1 handlers")),
    }
}

// ---------------------------------------------------------------------------------------
// Customers

/// Of the parameters Stripe accepts, the emulator stores those in [`set_customer_fields`] and
/// metadata; the others are accepted and not modelled.
fn create_customer(p: &Map<String, Value>, store: &mut Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let mut metadata = Map::new();
    apply_metadata(&mut metadata, p)?;
    let id = new_id("cus_", 14, &store.customers);
    let mut customer = json!({
        "id": id,
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": ctx.now_secs,
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": null,
        "discount": null,
        "email": null,
        "invoice_prefix": random_alnum(8).to_ascii_uppercase(),
        "invoice_settings": {
            "custom_fields": null,
            "default_payment_method": null,
            "footer": null,
            "rendering_options": null
        },
        "livemode": false,
        "metadata": metadata,
        "name": null,
        "next_invoice_sequence": 1,
        "phone": null,
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null
    });
    set_customer_fields(&mut customer, p)?;
    let seq = store.next_seq();
    store.customers.insert(seq, customer.clone(), ctx.indexed_at);
    store.events.record("customer.created", &customer, None, None, &ctx.cause, ctx.now_secs);
    Ok(customer)
}

fn update_customer(id: &str, p: &Map<String, Value>, store: &mut Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let customer = store.customers.live_mut(id).ok_or_else(|| no_such_customer(id))?;
    // Validate everything on a copy so a rejected update changes nothing.
    let mut updated = customer.clone();
    let metadata = updated["metadata"].as_object_mut().expect("customers have metadata");
    apply_metadata(metadata, p)?;
    set_customer_fields(&mut updated, p)?;
    replace_customer(store, id, updated.clone(), &ctx.cause, ctx.now_secs, ctx.indexed_at);
    Ok(updated)
}

/// Stores `updated` as customer `id` (live) and records `customer.updated` if anything changed.
pub fn replace_customer(
    store: &mut Store,
    id: &str,
    updated: Value,
    cause: &Cause,
    now_secs: i64,
    indexed_at: Instant,
) {
    let Some(customer) = store.customers.live_mut(id) else {
        return;
    };
    let previous = events::previous_attributes(customer, &updated);
    *customer = updated.clone();
    store.customers.reindex(id, indexed_at);
    // Assumed, not confirmed: Stripe sends no event for an update that changes nothing.
    if !previous.is_empty() {
        store.events.record("customer.updated", &updated, Some(previous), None, cause, now_secs);
    }
}

/// Deletes live customer `id`, recording `customer.deleted` with the customer as it was.
/// Returns the deletion stub, or `None` if there was no live customer.
pub fn delete_customer(
    store: &mut Store,
    id: &str,
    cause: &Cause,
    now_secs: i64,
    indexed_at: Instant,
) -> Option<Value> {
    let last = store.customers.live_mut(id)?.clone();
    store.customers.delete(id, indexed_at);
    store.events.record("customer.deleted", &last, None, None, cause, now_secs);
    Some(deleted_stub(id, "customer"))
}

/// Removes live account `id` from the platform (an API delete or a deauthorization), recording
/// `account.application.deauthorized`. False if there was no live account.
pub fn deauthorize_account(store: &mut Store, id: &str, cause: &Cause, now_secs: i64, indexed_at: Instant) -> bool {
    if !store.accounts.delete(id, indexed_at) {
        return false;
    }
    store.onboarding_controlled.remove(id);
    let application = events::platform_application();
    store.events.record("account.application.deauthorized", &application, None, Some(id), cause, now_secs);
    true
}

fn set_customer_fields(customer: &mut Value, p: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(email) = string_param(p, "email")? {
        if let Value::String(e) = &email {
            check_email(e, "email")?;
        }
        customer["email"] = email;
    }
    for field in ["name", "description", "phone", "invoice_prefix"] {
        if let Some(v) = string_param(p, field)? {
            customer[field] = v;
        }
    }
    if let Some(v) = string_param(p, "tax_exempt")? {
        match v.as_str() {
            Some("none" | "exempt" | "reverse") => customer["tax_exempt"] = v,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "Invalid tax_exempt: must be one of none, exempt, or reverse (got '{other}')"
                ))
                .param("tax_exempt"));
            }
            None => customer["tax_exempt"] = json!("none"),
        }
    }
    for field in ["address", "shipping"] {
        match p.get(field) {
            None => {}
            Some(Value::String(s)) if s.is_empty() => customer[field] = Value::Null,
            Some(v @ Value::Object(_)) => customer[field] = v.clone(),
            Some(_) => return Err(invalid_hash(field)),
        }
    }
    match p.get("preferred_locales") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => customer["preferred_locales"] = json!([]),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            customer["preferred_locales"] = Value::Array(items.clone());
        }
        Some(_) => {
            return Err(ApiError::invalid("Invalid array").param("preferred_locales"));
        }
    }
    Ok(())
}

fn list_customers(p: &Map<String, Value>, store: &Store) -> Result<Value, ApiError> {
    let email = match p.get("email") {
        None => None,
        Some(Value::String(e)) => Some(e.clone()),
        Some(_) => return Err(ApiError::invalid_string("email")),
    };
    // Exact and case-sensitive, as Stripe documents for this filter.
    list(&store.customers, "/v1/customers", "customer", p, |c| {
        email.as_ref().is_none_or(|e| c["email"].as_str() == Some(e))
    })
}

fn search_customers(p: &Map<String, Value>, store: &Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let query = match p.get("query") {
        None => return Err(ApiError::missing_param("query")),
        Some(Value::String(q)) => Query::parse(q).map_err(|m| ApiError::invalid(m).param("query"))?,
        Some(_) => return Err(ApiError::invalid_string("query")),
    };
    let limit = limit_param(p)?;
    let before_seq = match p.get("page") {
        None => u64::MAX,
        Some(Value::String(page)) => {
            parse_page(page).ok_or_else(|| ApiError::invalid(format!("Invalid page: '{page}'")).param("page"))?
        }
        Some(_) => return Err(ApiError::invalid_string("page")),
    };
    let mut hits = store
        .customers
        .records()
        .rev()
        .filter(|r| r.seq < before_seq && !r.deleted)
        .filter(|r| r.indexed(ctx.now).is_some_and(|v| query.matches(v)));
    let data: Vec<&Record> = hits.by_ref().take(limit).collect();
    let has_more = data.len() == limit && hits.next().is_some();
    let next_page = match data.last() {
        Some(last) if has_more => json!(page_token(last.seq)),
        _ => Value::Null,
    };
    Ok(json!({
        "object": "search_result",
        "url": "/v1/customers/search",
        "has_more": has_more,
        "data": data.iter().map(|r| r.object.clone()).collect::<Vec<_>>(),
        "next_page": next_page,
    }))
}

/// Opaque to clients; it carries the creation sequence number of the last result returned.
fn page_token(seq: u64) -> String {
    format!("page_{seq:x}")
}

fn parse_page(token: &str) -> Option<u64> {
    u64::from_str_radix(token.strip_prefix("page_")?, 16).ok()
}

pub fn no_such_customer(id: &str) -> ApiError {
    ApiError::resource_missing(404, "customer", id, "id")
}

fn deleted_stub(id: &str, object: &str) -> Value {
    json!({ "id": id, "object": object, "deleted": true })
}

// ---------------------------------------------------------------------------------------
// Accounts and account links

/// The account's `controller` and `type`. `type` is deprecated in favour of the controller
/// properties but still accepted; each legacy type stands for a fixed set of them, reported
/// with the legacy fee payers `application_express` and `application_custom`.
fn account_controller(p: &Map<String, Value>) -> Result<(Value, &'static str), ApiError> {
    let requested = match p.get("controller") {
        None => None,
        Some(Value::Object(c)) => Some(c),
        Some(_) => return Err(invalid_hash("controller")),
    };
    let legacy_type = match string_param(p, "type")? {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.as_str().expect("string").to_string()),
    };
    // Assumed, not confirmed: Stripe takes a legacy type or controller properties, not both.
    if legacy_type.is_some() && requested.is_some() {
        return Err(ApiError::invalid("You may only specify one of these parameters: controller, type.")
            .code("parameters_exclusive")
            .param("controller"));
    }
    // (fees payer, losses payments, requirement collection, dashboard, type)
    let (fees, losses, collection, dashboard, account_type) = match legacy_type.as_deref() {
        Some("express") => ("application_express", "application", "stripe", "express", "express"),
        Some("custom") => ("application_custom", "application", "application", "none", "custom"),
        Some("standard") => ("account", "stripe", "stripe", "full", "standard"),
        // The parameter lists admit no other value.
        Some(other) => unreachable!("type {other} passed the enum check"),
        None => {
            let requested = requested.map_or(Value::Null, |c| Value::Object(c.clone()));
            let text = |pointer: &str| requested.pointer(pointer).and_then(Value::as_str).map(str::to_string);
            // Stripe's defaults for each property left out.
            let fees = text("/fees/payer").unwrap_or_else(|| "account".into());
            let losses = text("/losses/payments").unwrap_or_else(|| "stripe".into());
            let collection = text("/requirement_collection").unwrap_or_else(|| "stripe".into());
            let dashboard = text("/stripe_dashboard/type").unwrap_or_else(|| "full".into());
            check_controller_combination(&fees, &losses, &dashboard)?;
            let controller = controller_object(&fees, &losses, &collection, &dashboard);
            // Assumed, not confirmed: accounts configured by controller properties report
            // `type: none` (the value added to `Account.type` together with them).
            return Ok((controller, "none"));
        }
    };
    Ok((controller_object(fees, losses, collection, dashboard), account_type))
}

/// The combinations of controller properties the pinned version refuses.
fn check_controller_combination(fees: &str, losses: &str, dashboard: &str) -> Result<(), ApiError> {
    // Stated in the SDK's (OpenAPI) description of `controller.fees.payer`.
    if losses == "application" && fees != "application" {
        return Err(ApiError::invalid(
            "Setting `controller[losses][payments]=application` requires `controller[fees][payer]=application`.",
        )
        .param("controller[fees][payer]"));
    }
    // Express Dashboard accounts with Stripe liable for losses arrived in 2026-11-18.endive,
    // after the pinned version.
    if dashboard == "express" && losses != "application" {
        return Err(ApiError::invalid(
            "Accounts with `controller[stripe_dashboard][type]=express` require \
             `controller[losses][payments]=application` and `controller[fees][payer]=application`.",
        )
        .param("controller[losses][payments]"));
    }
    Ok(())
}

/// `Account.controller` as Stripe returns it to the platform that controls the account.
fn controller_object(fees: &str, losses: &str, collection: &str, dashboard: &str) -> Value {
    json!({
        "fees": { "payer": fees },
        "is_controller": true,
        "losses": { "payments": losses },
        "requirement_collection": collection,
        "stripe_dashboard": { "type": dashboard },
        "type": "application",
    })
}

fn create_account(p: &Map<String, Value>, store: &mut Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let (controller, account_type) = account_controller(p)?;
    let country = match string_param(p, "country")? {
        None | Some(Value::Null) => "US".to_string(),
        Some(c) => {
            let c = c.as_str().expect("string").to_ascii_uppercase();
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ApiError::invalid(format!("Country '{c}' is unknown. Try using a 2-character alphanumeric country code instead, such as 'US', 'EG', or 'GB'."))
                    .param("country"));
            }
            c
        }
    };
    let mut metadata = Map::new();
    apply_metadata(&mut metadata, p)?;
    let mut capabilities = Map::new();
    apply_capabilities(&mut capabilities, p)?;
    // Accounts without a Stripe-hosted Dashboard (Custom ones included) must say what they
    // are for.
    if controller["stripe_dashboard"]["type"] == "none" && !p.contains_key("capabilities") {
        return Err(ApiError::missing_param("capabilities"));
    }
    let id = new_id("acct_", 16, &store.accounts);
    let mut account = json!({
        "id": id,
        "object": "account",
        "business_profile": {
            "mcc": null, "name": null, "product_description": null, "support_address": null,
            "support_email": null, "support_phone": null, "support_url": null, "url": null
        },
        "business_type": null,
        "capabilities": capabilities,
        "charges_enabled": false,
        "controller": controller,
        "country": country,
        "created": ctx.now_secs,
        "default_currency": default_currency(&country),
        "details_submitted": false,
        "email": null,
        "external_accounts": {
            "object": "list", "data": [], "has_more": false, "total_count": 0,
            "url": format!("/v1/accounts/{id}/external_accounts")
        },
        "future_requirements": requirements(&[]),
        "metadata": metadata,
        "payouts_enabled": false,
        "requirements": {},
        "tos_acceptance": { "date": null, "ip": null, "user_agent": null },
        "type": account_type,
    });
    set_account_fields(&mut account, p, true)?;
    let seq = store.next_seq();
    store.accounts.insert(seq, account.clone(), ctx.indexed_at);
    // Stripe has no `account.created`: a new connected account is announced by `account.updated`
    // (without `previous_attributes`, there being no earlier state).
    store.events.record("account.updated", &account, None, Some(&id), &ctx.cause, ctx.now_secs);
    Ok(account)
}

/// `type`, `country` and `controller` are fixed at creation: the update list has none of them.
fn update_account(id: &str, p: &Map<String, Value>, store: &mut Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let recompute = !store.onboarding_controlled.contains(id);
    let account = store.accounts.live_mut(id).ok_or_else(|| account_invalid(id, ctx))?;
    let mut updated = account.clone();
    apply_metadata(updated["metadata"].as_object_mut().expect("map"), p)?;
    apply_capabilities(updated["capabilities"].as_object_mut().expect("map"), p)?;
    set_account_fields(&mut updated, p, recompute)?;
    replace_account(store, id, updated.clone(), &ctx.cause, ctx.now_secs, ctx.indexed_at);
    Ok(updated)
}

/// Stores `updated` as account `id` (live) and records `account.updated` if anything changed.
pub fn replace_account(store: &mut Store, id: &str, updated: Value, cause: &Cause, now_secs: i64, indexed_at: Instant) {
    let Some(account) = store.accounts.live_mut(id) else {
        return;
    };
    let previous = events::previous_attributes(account, &updated);
    *account = updated.clone();
    store.accounts.reindex(id, indexed_at);
    if !previous.is_empty() {
        store.events.record("account.updated", &updated, Some(previous), Some(id), cause, now_secs);
    }
}

/// `recompute_requirements` is false for accounts whose onboarding state a test set.
fn set_account_fields(
    account: &mut Value,
    p: &Map<String, Value>,
    recompute_requirements: bool,
) -> Result<(), ApiError> {
    if let Some(email) = string_param(p, "email")? {
        if let Value::String(e) = &email {
            check_email(e, "email")?;
        }
        account["email"] = email;
    }
    if let Some(bt) = string_param(p, "business_type")? {
        match bt.as_str() {
            None | Some("individual" | "company" | "non_profit" | "government_entity") => {
                account["business_type"] = bt;
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "Invalid business_type: must be one of company, government_entity, individual, or non_profit",
                )
                .param("business_type"));
            }
        }
    }
    if let Some(dc) = string_param(p, "default_currency")? {
        account["default_currency"] = json!(dc.as_str().map(str::to_ascii_lowercase));
    }
    match p.get("business_profile") {
        None => {}
        Some(Value::Object(fields)) => {
            let profile = account["business_profile"].as_object_mut().expect("map");
            for (k, v) in fields {
                profile.insert(k.clone(), v.clone());
            }
        }
        Some(_) => return Err(invalid_hash("business_profile")),
    }
    if !recompute_requirements {
        return Ok(());
    }
    let caps: Vec<String> = account["capabilities"].as_object().expect("map").keys().cloned().collect();
    let mut due = vec![
        "business_type",
        "external_account",
        "representative.first_name",
        "representative.last_name",
        "tos_acceptance.date",
        "tos_acceptance.ip",
    ];
    if account["business_profile"]["url"].is_null() {
        due.push("business_profile.url");
    }
    if caps.iter().any(|c| c == "card_payments") && account["business_profile"]["mcc"].is_null() {
        due.push("business_profile.mcc");
    }
    if !account["business_type"].is_null() {
        due.retain(|f| *f != "business_type");
    }
    due.sort_unstable();
    account["requirements"] = requirements(&due);
    Ok(())
}

pub fn requirements(due: &[&str]) -> Value {
    json!({
        "alternatives": [],
        "current_deadline": null,
        "currently_due": due,
        "disabled_reason": if due.is_empty() { Value::Null } else { json!("requirements.past_due") },
        "errors": [],
        "eventually_due": due,
        "past_due": due,
        "pending_verification": [],
    })
}

/// `capabilities[card_payments][requested]=true` adds `card_payments: "inactive"`; a
/// capability stays inactive until a test moves the account through onboarding
/// ([`crate::Onboarding`]).
fn apply_capabilities(caps: &mut Map<String, Value>, p: &Map<String, Value>) -> Result<(), ApiError> {
    let requested = match p.get("capabilities") {
        None => return Ok(()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid_hash("capabilities")),
    };
    for (name, spec) in requested {
        let param = format!("capabilities[{name}]");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(ApiError::invalid(format!("Invalid capability: {name}")).param(&param));
        }
        let Some(spec) = spec.as_object() else {
            return Err(invalid_hash(&param));
        };
        for key in spec.keys() {
            if key != "requested" {
                return Err(ApiError::unknown_param(&format!("{param}[{key}]")));
            }
        }
        match spec.get("requested") {
            Some(Value::String(b)) if b == "true" => {
                caps.entry(name.clone()).or_insert_with(|| json!("inactive"));
            }
            Some(Value::String(b)) if b == "false" => {
                caps.remove(name);
            }
            Some(_) => {
                return Err(ApiError::invalid("Invalid boolean").param(&format!("{param}[requested]")));
            }
            None => return Err(ApiError::missing_param(&format!("{param}[requested]"))),
        }
    }
    Ok(())
}

fn default_currency(country: &str) -> Value {
    const EURO: &[&str] = &[
        "AT", "BE", "CY", "DE", "EE", "ES", "FI", "FR", "GR", "HR", "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PT",
        "SI", "SK",
    ];
    let currency = match country {
        "US" => "usd",
        "GB" => "gbp",
        "CA" => "cad",
        "AU" => "aud",
        "JP" => "jpy",
        c if EURO.contains(&c) => "eur",
        _ => return Value::Null,
    };
    json!(currency)
}

fn account_invalid(id: &str, ctx: &Ctx) -> ApiError {
    ApiError::new(
        403,
        "invalid_request_error",
        format!(
            "The provided key '{}' does not have access to account '{id}' (or that account does \
             not exist). Application access may have been revoked.",
            auth::mask(ctx.api_key)
        ),
    )
    .code("account_invalid")
}

fn create_account_link(p: &Map<String, Value>, store: &Store, ctx: &Ctx) -> Result<Value, ApiError> {
    let required = |name: &str| match string_param(p, name)? {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::missing_param(name)),
    };
    let account = required("account")?;
    let link_type = required("type")?;
    let refresh_url = required("refresh_url")?;
    let return_url = required("return_url")?;
    if !["account_onboarding", "account_update"].contains(&link_type.as_str()) {
        return Err(
            ApiError::invalid("Invalid type: must be one of account_onboarding or account_update").param("type")
        );
    }
    for (name, url) in [("refresh_url", &refresh_url), ("return_url", &return_url)] {
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
            return Err(ApiError::invalid("Not a valid URL").code("url_invalid").param(name));
        }
    }
    match store.accounts.get(&account) {
        Some(r) if !r.deleted => {}
        _ => {
            return Err(ApiError::resource_missing(400, "account", &account, "account"));
        }
    }
    Ok(json!({
        "object": "account_link",
        "created": ctx.now_secs,
        "expires_at": ctx.now_secs + 300,
        "url": format!("https://connect.stripe.com/setup/e/{account}/{}", random_alnum(12)),
    }))
}

// ---------------------------------------------------------------------------------------
// Shared parameter handling

/// A string parameter: `None` if absent, `Null` if sent empty (Stripe's way to unset).
fn string_param(p: &Map<String, Value>, name: &str) -> Result<Option<Value>, ApiError> {
    match p.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(Some(Value::Null)),
        Some(Value::String(s)) => Ok(Some(Value::String(s.clone()))),
        Some(_) => Err(ApiError::invalid_string(name)),
    }
}

fn invalid_hash(name: &str) -> ApiError {
    ApiError::invalid("Invalid hash").param(name)
}

/// Loose on purpose: enough to catch obviously malformed addresses, as Stripe does.
pub fn check_email(email: &str, param: &str) -> Result<(), ApiError> {
    let valid = email.len() <= 512
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("Invalid email address: {email}")).code("email_invalid").param(param))
    }
}

pub const METADATA_MAX_KEYS: usize = 50;
pub const METADATA_MAX_KEY_LEN: usize = 40;
pub const METADATA_MAX_VALUE_LEN: usize = 500;

/// Merges `metadata[...]` into `metadata`: a key set to "" is removed, and `metadata=""`
/// clears everything. Limits are checked on the result.
fn apply_metadata(metadata: &mut Map<String, Value>, p: &Map<String, Value>) -> Result<(), ApiError> {
    let changes = match p.get("metadata") {
        None => return Ok(()),
        Some(Value::String(s)) if s.is_empty() => {
            metadata.clear();
            return Ok(());
        }
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid_hash("metadata")),
    };
    for (key, value) in changes {
        let invalid = |msg: String| Err(ApiError::invalid(msg).param("metadata"));
        if key.contains('[') || key.contains(']') {
            return invalid(format!("Invalid metadata key '{key}': keys cannot contain '[' or ']'."));
        }
        if key.is_empty() {
            return invalid("Invalid metadata: keys cannot be empty.".into());
        }
        if key.chars().count() > METADATA_MAX_KEY_LEN {
            return invalid(format!(
                "Invalid metadata key '{key}': keys can be at most {METADATA_MAX_KEY_LEN} characters."
            ));
        }
        let Value::String(value) = value else {
            return invalid(format!("Invalid value for metadata key '{key}': values must be strings."));
        };
        if value.chars().count() > METADATA_MAX_VALUE_LEN {
            return invalid(format!(
                "Invalid value for metadata key '{key}': values can be at most \
                 {METADATA_MAX_VALUE_LEN} characters, but this one has {}.",
                value.chars().count()
            ));
        }
        if value.is_empty() {
            metadata.remove(key);
        } else {
            metadata.insert(key.clone(), Value::String(value.clone()));
        }
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

/// Cursor pagination over live objects, newest first. Cursors may name deleted objects:
/// their position in the order still exists.
fn list(
    coll: &Collection,
    url: &str,
    what: &str,
    p: &Map<String, Value>,
    keep: impl Fn(&Value) -> bool,
) -> Result<Value, ApiError> {
    let limit = limit_param(p)?;
    let created = created_filter(p)?;
    let cursor = |name: &str| -> Result<Option<u64>, ApiError> {
        match string_param(p, name)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(id)) => {
                coll.get(&id).map(|r| Some(r.seq)).ok_or_else(|| ApiError::resource_missing(400, what, &id, name))
            }
            Some(_) => unreachable!("string_param returns strings or null"),
        }
    };
    let (after, before) = (cursor("starting_after")?, cursor("ending_before")?);
    let wanted = |r: &&Record| !r.deleted && keep(&r.object) && created_matches(&created, r.object["created"].as_i64());
    let (page, has_more) = page_of(coll.records(), |r| r.seq, after, before, limit, wanted)?;
    Ok(list_answer(url, has_more, page.iter().map(|r| r.object.clone()).collect()))
}
