//! Changes made outside the API, as tests stage them: a Dashboard user editing or deleting a
//! customer, Stripe moving a connected account through onboarding, an account deauthorizing
//! the platform. Each records its event as the API would (with `request.id` null), and none
//! appears in the `/v1` request log. Shared by [`crate::Emulator`] and `/_emulator/` controls.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::api;
use crate::events::Cause;
use crate::onboarding::Onboarding;
use crate::state::State;

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn indexed_at(state: &State) -> Instant {
    Instant::now() + state.config.search_lag
}

/// Sets (or with `None` clears) a live customer's email; the updated customer.
pub fn set_customer_email(state: &mut State, id: &str, email: Option<&str>) -> Result<Value, String> {
    let at = indexed_at(state);
    let store = &mut state.store;
    let Some(customer) = store.customers.live_mut(id) else {
        return Err(format!("no live customer {id}"));
    };
    let mut updated = customer.clone();
    updated["email"] = json!(email);
    api::replace_customer(store, id, updated.clone(), &Cause::default(), now_secs(), at);
    Ok(updated)
}

/// Deletes a live customer; false if there was none.
pub fn delete_customer(state: &mut State, id: &str) -> bool {
    let at = indexed_at(state);
    api::delete_customer(&mut state.store, id, &Cause::default(), now_secs(), at).is_some()
}

/// Moves a live account to `step`; the updated account.
pub fn set_onboarding(state: &mut State, id: &str, step: &Onboarding) -> Result<Value, String> {
    let at = indexed_at(state);
    let store = &mut state.store;
    let Some(account) = store.accounts.live_mut(id) else {
        return Err(format!("no live account {id}"));
    };
    let now = now_secs();
    let updated = step.apply(account, now);
    store.onboarding_controlled.insert(id.to_string());
    api::replace_account(store, id, updated.clone(), &Cause::default(), now, at);
    Ok(updated)
}

/// Appends an event served as exactly `bytes` (see [`crate::events::EventLog::push_raw`]),
/// created at `created`, else as any new event (the pinned clock, else now).
pub fn push_raw_event(
    state: &mut State,
    id: &str,
    kind: &str,
    created: Option<i64>,
    bytes: Vec<u8>,
) -> Result<(), String> {
    let events = &mut state.store.events;
    let created = created.or(events.clock).unwrap_or_else(now_secs);
    events.push_raw(id, kind, created, bytes)
}

/// The account disconnects from the platform; false if there was no live account.
pub fn deauthorize_account(state: &mut State, id: &str) -> bool {
    let at = indexed_at(state);
    api::deauthorize_account(&mut state.store, id, &Cause::default(), now_secs(), at)
}
