//! Changes to Accounts v2 made outside the API, as tests stage them: Stripe moving an Account
//! through onboarding, a Dashboard user closing it or changing its contact email. Each records
//! its thin events as the API would, with `reason: null`, and none appears in the request log.
//! Shared by [`crate::Emulator`] and the `/_emulator/v2/` controls.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::events::Cause;
use crate::onboarding::Onboarding;
use crate::state::State;
use crate::v2::{accounts, onboarding};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn indexed_at(state: &State) -> Instant {
    Instant::now() + state.config.search_lag
}

/// The open Account `id`, whole.
fn open_account(state: &State, id: &str) -> Result<Value, String> {
    match state.v2.accounts.get(id) {
        Some(record) if record.object["closed"] != true => Ok(record.object.clone()),
        Some(_) => Err(format!("no live v2 account {id}: it is closed")),
        None => Err(format!("no live v2 account {id}")),
    }
}

/// Moves open Account `id` to `step` ([`onboarding::apply`]); the Account, whole.
pub fn set_onboarding(state: &mut State, id: &str, step: &Onboarding) -> Result<Value, String> {
    let account = open_account(state, id)?;
    let updated = onboarding::apply(&account, step);
    let at = indexed_at(state);
    state.v2.onboarding.insert(id.to_string(), step.clone());
    accounts::replace(&mut state.v2, id, updated.clone(), &Cause::default(), now_ms(), at);
    Ok(accounts::render_all(&updated))
}

/// Sets (or with `None` clears) open Account `id`'s `contact_email`, any string taken unchecked;
/// the Account, whole.
pub fn set_contact_email(state: &mut State, id: &str, email: Option<&str>) -> Result<Value, String> {
    let mut updated = open_account(state, id)?;
    updated["contact_email"] = json!(email);
    let at = indexed_at(state);
    accounts::replace(&mut state.v2, id, updated.clone(), &Cause::default(), now_ms(), at);
    Ok(accounts::render_all(&updated))
}

/// Closes open Account `id`; false if there was none.
pub fn close(state: &mut State, id: &str) -> bool {
    let at = indexed_at(state);
    accounts::close_account(&mut state.v2, id, &Cause::default(), now_ms(), at).is_some()
}
