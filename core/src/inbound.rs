//! What Stripe's events say about the accounts and customers the extension made, and which of
//! them to apply.
//!
//! A connected account's owner onboards at Stripe, and the Dashboard can delete a customer or
//! change its email: nothing calls the extension when that happens. The worker reads Stripe's
//! Events API oldest first after a stored cursor and applies what the events say. Each event
//! embeds its object as it was when the event happened, a snapshot that may be older than what
//! the worker already stored (from a later event, or from reading the object itself), so every
//! event is weighed against the time of the stored state before it may overwrite it.
//!
//! What an event carries is input from anyone who can edit a customer: [`parse_event`] refuses
//! an event that could not be stored safely ([`Malformed`]), so that the reader sets that one
//! aside and goes on, instead of failing downstream on it at every poll.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::stripe::is_stripe_id;
use crate::stripe::v2::V2Readiness;

/// A connected account's readiness, as the account object says.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountReadiness {
    pub account: String,
    pub charges_enabled: bool,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
    pub requirements_currently_due: Vec<String>,
    pub disabled_reason: Option<String>,
}

/// A v2 Account's readiness in v1's facts, the ones the readiness columns and `account_status`
/// hold (its transfers, configurations and closing have no v1 field: a caller reads `closed`).
impl From<V2Readiness> for AccountReadiness {
    fn from(v2: V2Readiness) -> AccountReadiness {
        AccountReadiness {
            account: v2.account,
            charges_enabled: v2.charges_enabled,
            payouts_enabled: v2.payouts_enabled,
            details_submitted: v2.details_submitted,
            requirements_currently_due: v2.requirements_currently_due,
            disabled_reason: v2.disabled_reason,
        }
    }
}

impl AccountReadiness {
    /// Reads a Stripe account object; None if it is not one (no `object: "account"` or no id).
    /// Missing flags read as false, missing requirements as nothing due.
    pub fn from_account(object: &Value) -> Option<AccountReadiness> {
        if object["object"] != "account" {
            return None;
        }
        let flag = |name: &str| object[name].as_bool().unwrap_or(false);
        let requirements = &object["requirements"];
        let due = requirements["currently_due"].as_array().map(|due| due.iter().filter_map(Value::as_str));
        Some(AccountReadiness {
            account: object["id"].as_str()?.to_string(),
            charges_enabled: flag("charges_enabled"),
            payouts_enabled: flag("payouts_enabled"),
            details_submitted: flag("details_submitted"),
            requirements_currently_due: due.map(|due| due.map(str::to_string).collect()).unwrap_or_default(),
            disabled_reason: requirements["disabled_reason"].as_str().map(str::to_string),
        })
    }

    /// The account can take charges and receive payouts: onboarded and not disabled.
    pub fn ready(&self) -> bool {
        self.charges_enabled && self.payouts_enabled && self.details_submitted && self.disabled_reason.is_none()
    }
}

/// What one event changes for the extension.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `account.updated`: the account's readiness after the update.
    Account(AccountReadiness),
    /// `account.application.deauthorized`: the account left the platform.
    AccountDeauthorized { account: String },
    /// `customer.updated` that changed the email (`None`: cleared); the email after the update.
    /// `user_id`: the customer's `metadata.user_id` (the extension sets it on every customer).
    /// `idempotency_key`: the `Idempotency-Key` of the API request that made the change (Stripe's
    /// `request.idempotency_key`; none for the Dashboard): the extension knows its own email
    /// syncs by it.
    CustomerEmail { customer: String, user_id: Option<String>, email: Option<String>, idempotency_key: Option<String> },
    /// `customer.deleted` (in the Dashboard, or by any API client).
    CustomerDeleted { customer: String, user_id: Option<String> },
    /// Anything else, including a `customer.updated` that left the email alone.
    Ignored,
}

impl Change {
    /// The account or customer the change is about; None for [`Change::Ignored`].
    pub fn object_id(&self) -> Option<&str> {
        match self {
            Change::Account(readiness) => Some(&readiness.account),
            Change::AccountDeauthorized { account } => Some(account),
            Change::CustomerEmail { customer, .. } | Change::CustomerDeleted { customer, .. } => Some(customer),
            Change::Ignored => None,
        }
    }
}

/// An event as the worker uses it: its id (to record it and move the cursor), when it happened
/// (unix seconds, Stripe's clock) and what it changes.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    pub id: String,
    pub created: i64,
    pub change: Change,
}

/// Why an event (or a customer read back) cannot be applied safely. It names no content of the
/// event (events carry customers' emails, which must not reach the logs): only a short, safe
/// form of the id and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The event's (or customer's) id, at most [`SHOWN_ID_CHARS`] characters of it; `None` when
    /// the id itself is unusable (absent, too long, not a Stripe id).
    pub id: Option<String>,
    pub why: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{id}: {}", self.why),
            None => write!(f, "(unusable id): {}", self.why),
        }
    }
}

impl std::error::Error for Malformed {}

/// The most characters of an id a [`Malformed`] shows: ids are about 30, and a longer one only
/// needs to be recognisable.
pub const SHOWN_ID_CHARS: usize = 60;
/// The longest `metadata.user_id` applied: Stripe's limit on a metadata value.
pub const USER_ID_MAX_CHARS: usize = 500;
/// The longest email applied, as Stripe's own check on an email.
pub const EMAIL_MAX_CHARS: usize = 512;
/// The longest idempotency key applied: Stripe's limit on the header.
pub const IDEMPOTENCY_KEY_MAX_CHARS: usize = 255;

/// Refuses text PostgreSQL cannot hold (NUL) and text that lost characters on its way
/// (U+FFFD: how lenient decoding replaces a byte that was not UTF-8, or an unpaired surrogate).
fn clean(field: &str, text: &str) -> Result<(), String> {
    if text.contains('\0') {
        return Err(format!("{field} contains NUL (U+0000), which PostgreSQL text cannot hold"));
    }
    if text.contains('\u{FFFD}') {
        return Err(format!(
            "{field} contains U+FFFD: a byte that was not UTF-8, or an unpaired surrogate, in Stripe's answer"
        ));
    }
    Ok(())
}

/// An id used as a key, in an index and in requests: clean, at most 255 bytes, Stripe's form.
fn checked_id(field: &str, id: &str) -> Result<(), String> {
    clean(field, id)?;
    if id.len() > 255 {
        return Err(format!("{field} is longer than 255 bytes ({} bytes)", id.len()));
    }
    if !is_stripe_id(id) {
        return Err(format!("{field} is not a Stripe id (prefix_alphanumerics)"));
    }
    Ok(())
}

/// Clean text of at most `max` characters.
fn checked_text(field: &str, text: &str, max: usize) -> Result<(), String> {
    clean(field, text)?;
    match text.chars().count() {
        n if n > max => Err(format!("{field} is longer than {max} characters ({n})")),
        _ => Ok(()),
    }
}

/// An event type as Stripe writes them (`customer.updated`, `v2.core.account[requirements].updated`):
/// safe to store and to name in a message.
fn checked_type(kind: &str) -> Result<(), String> {
    clean("type", kind)?;
    let form = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'[' | b']');
    if kind.is_empty() || kind.len() > 255 || !kind.bytes().all(form) {
        return Err("type is not an event type (letters, digits, _ . [ ], at most 255 bytes)".into());
    }
    Ok(())
}

/// The id as [`Malformed`] shows it, once it has proved usable.
fn shown(id: &str) -> String {
    id.chars().take(SHOWN_ID_CHARS).collect()
}

/// `metadata.user_id` of a customer, checked.
fn user_id_of(object: &Value) -> Result<Option<String>, String> {
    let user_id = object["metadata"]["user_id"].as_str();
    user_id.map(|u| checked_text("metadata.user_id", u, USER_ID_MAX_CHARS).map(|()| u.to_string())).transpose()
}

/// The email of a customer, checked.
fn email_of(object: &Value) -> Result<Option<String>, String> {
    let email = object["email"].as_str();
    email.map(|e| checked_text("email", e, EMAIL_MAX_CHARS).map(|()| e.to_string())).transpose()
}

/// The id of a customer object, checked.
fn customer_id_of(object: &Value) -> Result<String, String> {
    match (object["object"].as_str(), object["id"].as_str()) {
        (Some("customer"), Some(id)) => checked_id("customer id", id).map(|()| id.to_string()),
        _ => Err("data.object is not a customer".into()),
    }
}

/// Reads one event of `GET /v1/events` (`stripe::ListedEvent::Read`), refusing what cannot be
/// applied safely: an event id or object id (account, customer) that is not a Stripe id of at
/// most 255 bytes; any string the extension uses (ids, type, email, `metadata.user_id`,
/// idempotency key, `disabled_reason`, requirements) with a NUL, which PostgreSQL text cannot
/// hold, or a U+FFFD, which stands for what was lost in decoding; a `user_id` over
/// [`USER_ID_MAX_CHARS`] or an email over [`EMAIL_MAX_CHARS`]. The error names only the event's
/// id (see [`Malformed`]).
pub fn parse_event(event: &Value) -> Result<InboundEvent, Malformed> {
    let Some(id) = event["id"].as_str() else {
        return Err(Malformed { id: None, why: "no id".into() });
    };
    checked_id("the event id", id).map_err(|why| Malformed { id: None, why })?;
    let malformed = |why: String| Malformed { id: Some(shown(id)), why };
    let kind = event["type"].as_str().ok_or_else(|| malformed("no type".into()))?;
    checked_type(kind).map_err(malformed)?;
    change_of(event, kind)
        .map(|(created, change)| InboundEvent { id: id.to_string(), created, change })
        .map_err(|what| malformed(format!("{kind}: {what}")))
}

/// What an event of type `kind` changes, and when it happened; the error says why not.
fn change_of(event: &Value, kind: &str) -> Result<(i64, Change), String> {
    let created = event["created"].as_i64().ok_or("no created time")?;
    let object = &event["data"]["object"];
    if !object.is_object() {
        return Err("no data.object".into());
    }
    let change = match kind {
        "account.updated" => Change::Account(readiness_of(object)?),
        "account.application.deauthorized" => {
            let account = event["account"].as_str().ok_or("no account")?;
            checked_id("account", account)?;
            Change::AccountDeauthorized { account: account.to_string() }
        }
        "customer.updated" if event["data"]["previous_attributes"].get("email").is_some() => {
            let idempotency_key = event["request"]["idempotency_key"].as_str();
            if let Some(key) = idempotency_key {
                checked_text("request.idempotency_key", key, IDEMPOTENCY_KEY_MAX_CHARS)?;
            }
            Change::CustomerEmail {
                customer: customer_id_of(object)?,
                user_id: user_id_of(object)?,
                email: email_of(object)?,
                idempotency_key: idempotency_key.map(str::to_string),
            }
        }
        "customer.deleted" => {
            Change::CustomerDeleted { customer: customer_id_of(object)?, user_id: user_id_of(object)? }
        }
        _ => Change::Ignored,
    };
    Ok((created, change))
}

/// An account object's readiness, checked.
fn readiness_of(object: &Value) -> Result<AccountReadiness, String> {
    let readiness = AccountReadiness::from_account(object).ok_or("not an account")?;
    checked_id("account id", &readiness.account)?;
    if let Some(reason) = &readiness.disabled_reason {
        clean("requirements.disabled_reason", reason)?;
    }
    for due in &readiness.requirements_currently_due {
        clean("requirements.currently_due", due)?;
    }
    Ok(readiness)
}

/// What a customer read back (`GET /v1/customers/{id}`, `stripe::StripeClient::retrieve_customer`)
/// says, as the change to apply, with the checks of [`parse_event`]: [`Change::CustomerDeleted`]
/// for a deleted customer (whose answer carries no metadata: `user_id` is `None`), else
/// [`Change::CustomerEmail`] with its email and `metadata.user_id` now (no idempotency key: a
/// read is no change). How a caller settles a [`Verdict::Refetch`] of a customer.
pub fn customer_change(customer: &Value) -> Result<Change, Malformed> {
    let unusable = |why: String| Malformed { id: None, why };
    let id = customer["id"].as_str().ok_or_else(|| unusable("no id".into()))?;
    checked_id("the customer id", id).map_err(unusable)?;
    let malformed = |why: String| Malformed { id: Some(shown(id)), why };
    if customer["object"] != "customer" {
        return Err(malformed("not a customer".into()));
    }
    if customer["deleted"] == true {
        return Ok(Change::CustomerDeleted { customer: id.to_string(), user_id: None });
    }
    Ok(Change::CustomerEmail {
        customer: id.to_string(),
        user_id: user_id_of(customer).map_err(malformed)?,
        email: email_of(customer).map_err(malformed)?,
        idempotency_key: None,
    })
}

/// Whether an event's snapshot may replace the stored state of its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than the stored state (or nothing stored), or a customer's deletion: write what the
    /// event says.
    Apply,
    /// Older than the stored state: writing it would undo a later change; or an email change of
    /// a customer deleted in the same page, in the same second or after. Skip it.
    Stale,
    /// The same second as the stored state: read the object itself and store that (an account
    /// with `retrieve_account`, a customer with `retrieve_customer` and [`customer_change`]).
    Refetch,
}

/// Weighs an event against its object's stored `as_of`: the `created` of the event whose state
/// was last applied, or the time of the last read of the object (the second its request was
/// sent, on Stripe's clock as near as can be told: a read answered later may miss events of that
/// second). Stripe's `created` counts whole seconds and nothing orders events inside one, so an
/// event of the stored second may be older or newer than the stored state: only the object
/// itself can say.
pub fn verdict(event_created: i64, stored_as_of: Option<i64>) -> Verdict {
    match stored_as_of {
        Some(as_of) if event_created < as_of => Verdict::Stale,
        Some(as_of) if event_created == as_of => Verdict::Refetch,
        _ => Verdict::Apply,
    }
}

/// One event of a page and what to do with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub event: InboundEvent,
    pub verdict: Verdict,
    /// Another event of the same page writes the object's state, so this one need not (its id is
    /// still recorded): a later event of the object that is [`Verdict::Apply`] or
    /// [`Verdict::Refetch`], or the customer's deletion, before or after it.
    pub superseded: bool,
}

/// Plans one page of events, oldest first. Each event is weighed against the state its object
/// will have when the worker reaches it: the stored `as_of`, or the `created` of the page's last
/// earlier event for the object that applies or re-fetches. Ignored changes are
/// [`Verdict::Apply`] (there is nothing to write, only the id to record). An event id already
/// planned earlier in the page is left out.
///
/// A customer's deletion is final (a deleted customer never comes back), and a customer, unlike
/// an account, cannot be re-read into anything but "deleted" once gone: its first
/// `customer.deleted` in the page is [`Verdict::Apply`] whatever the stored `as_of`, and
/// supersedes every other event of the customer in the page, earlier or later; an email change
/// listed after it or in its second (or later) is [`Verdict::Stale`]. Without a deletion,
/// customers' email changes are weighed as accounts' are (two in one second: the later is
/// [`Verdict::Refetch`]).
pub fn plan(events: Vec<InboundEvent>, stored_as_of: impl Fn(&str) -> Option<i64>) -> Vec<Planned> {
    let mut seen = HashSet::new();
    let events: Vec<InboundEvent> = events.into_iter().filter(|e| seen.insert(e.id.clone())).collect();
    let deletions = first_deletions(&events);
    let mut planned: Vec<Planned> = Vec::with_capacity(events.len());
    // Per object: the as_of the page has set so far, and the entry that writes its state.
    let mut writes: HashMap<String, (i64, usize)> = HashMap::new();
    for (at, event) in events.into_iter().enumerate() {
        let Some(object) = event.change.object_id().map(str::to_string) else {
            planned.push(Planned { event, verdict: Verdict::Apply, superseded: false });
            continue;
        };
        if let Some(&(deletion_at, deleted)) = deletions.get(&object) {
            let verdict = if at == deletion_at {
                Verdict::Apply
            } else if at > deletion_at || event.created >= deleted {
                Verdict::Stale
            } else {
                verdict(event.created, stored_as_of(&object))
            };
            planned.push(Planned { event, verdict, superseded: at != deletion_at });
            continue;
        }
        let as_of = writes.get(&object).map(|&(as_of, _)| as_of).or_else(|| stored_as_of(&object));
        let verdict = verdict(event.created, as_of);
        if verdict != Verdict::Stale {
            if let Some((_, earlier)) = writes.insert(object, (event.created, planned.len())) {
                planned[earlier].superseded = true;
            }
        }
        planned.push(Planned { event, verdict, superseded: false });
    }
    planned
}

/// Per customer deleted in `events`: the position of its first deletion and that event's time.
fn first_deletions(events: &[InboundEvent]) -> HashMap<String, (usize, i64)> {
    let mut deletions = HashMap::new();
    for (at, event) in events.iter().enumerate() {
        if let Change::CustomerDeleted { customer, .. } = &event.change {
            deletions.entry(customer.clone()).or_insert((at, event.created));
        }
    }
    deletions
}

/// How often the worker reads new events when no account is onboarding.
pub const POLL_EVERY: Duration = Duration::from_secs(15);
/// How often while someone may be onboarding: an owner back from Stripe waits for the answer.
pub const POLL_FAST: Duration = Duration::from_secs(2);
/// How long after an account link is issued polling stays fast (links expire in minutes).
pub const POLL_FAST_FOR: Duration = Duration::from_secs(10 * 60);

/// When to read events next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollInterval {
    pub every: Duration,
    pub fast: Duration,
    pub fast_for: Duration,
}

impl Default for PollInterval {
    fn default() -> PollInterval {
        PollInterval { every: POLL_EVERY, fast: POLL_FAST, fast_for: POLL_FAST_FOR }
    }
}

impl PollInterval {
    /// `fast` while the last account link was issued less than `fast_for` ago, else `every`.
    pub fn next_poll_in(&self, since_last_account_link: Option<Duration>) -> Duration {
        match since_last_account_link {
            Some(since) if since < self.fast_for => self.fast,
            _ => self.every,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn account_event(id: &str, created: i64, account: &str) -> InboundEvent {
        let readiness = AccountReadiness::from_account(&json!({"id": account, "object": "account"})).unwrap();
        InboundEvent { id: id.into(), created, change: Change::Account(readiness) }
    }

    fn enabled(account: &str) -> AccountReadiness {
        AccountReadiness {
            account: account.into(),
            charges_enabled: true,
            payouts_enabled: true,
            details_submitted: true,
            requirements_currently_due: vec![],
            disabled_reason: None,
        }
    }

    /// Changes a test event in place and hands it back.
    trait Tap: Sized {
        fn tap(self, change: impl FnOnce(&mut Self)) -> Self;
        fn tap_id(self, id: &str) -> Self;
    }

    impl Tap for Value {
        fn tap(mut self, change: impl FnOnce(&mut Value)) -> Value {
            change(&mut self);
            self
        }

        fn tap_id(self, id: &str) -> Value {
            self.tap(|e| e["id"] = json!(id))
        }
    }

    fn verdicts(planned: &[Planned]) -> Vec<(&str, Verdict, bool)> {
        planned.iter().map(|p| (p.event.id.as_str(), p.verdict, p.superseded)).collect()
    }

    /// Drives the emulator through every change the worker reads and parses the events it records.
    #[test]
    fn events_as_the_emulator_records_them_parse_to_their_changes() {
        use crate::stripe::emulated::emulated_stripe_with_key;
        use crate::stripe::{NewAccount, NewCustomer};
        let (stripe, client) = emulated_stripe_with_key("sk_test_inboundevents0123456789");
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let new = NewCustomer { user_id: "u1".into(), email: "old@example.com".into() };
        let cus = rt.block_on(client.create_customer(&new, "inbound-c")).unwrap().0.id;
        let new = NewAccount { user_id: "u1".into(), email: "old@example.com".into() };
        let acct = rt.block_on(client.create_account(&new, "inbound-a")).unwrap().0.id;
        stripe.set_onboarding(&acct, stripe_emulator::Onboarding::Enabled).unwrap();
        let renamed = [("name".to_string(), "Ann".to_string())];
        rt.block_on(client.post(&format!("/v1/customers/{cus}"), &renamed, None)).unwrap();
        rt.block_on(client.update_customer_email(&cus, "synced@example.com", "inbound-e")).unwrap();
        stripe.dashboard_set_customer_email(&cus, Some("new@example.com")).unwrap();
        stripe.dashboard_set_customer_email(&cus, None).unwrap();
        stripe.dashboard_delete_customer(&cus);
        let user = Some("u1".to_string()); // metadata.user_id
        stripe.deauthorize_account(&acct);

        let events = stripe.events();
        let parsed: Vec<InboundEvent> = events.iter().map(|e| parse_event(e).unwrap()).collect();
        assert_eq!(parsed[0].id, events[0]["id"].as_str().unwrap());
        assert_eq!(parsed[0].created, events[0]["created"].as_i64().unwrap());
        let Change::Account(created) = &parsed[1].change else { panic!("{:?}", parsed[1]) };
        assert_eq!((created.account.as_str(), created.ready()), (acct.as_str(), false));
        let changes: Vec<Change> = parsed.into_iter().map(|e| e.change).collect();
        assert_eq!(
            changes[2..],
            [
                Change::Account(enabled(&acct)),
                Change::Ignored, // the name changed, not the email
                Change::CustomerEmail {
                    customer: cus.clone(),
                    user_id: user.clone(),
                    email: Some("synced@example.com".into()),
                    idempotency_key: Some("inbound-e".into()),
                },
                Change::CustomerEmail {
                    customer: cus.clone(),
                    user_id: user.clone(),
                    email: Some("new@example.com".into()),
                    idempotency_key: None,
                },
                Change::CustomerEmail {
                    customer: cus.clone(),
                    user_id: user.clone(),
                    email: None,
                    idempotency_key: None
                },
                Change::CustomerDeleted { customer: cus.clone(), user_id: user.clone() },
                Change::AccountDeauthorized { account: acct.clone() },
            ]
        );
        assert_eq!(changes[0], Change::Ignored); // customer.created
    }

    #[test]
    fn account_objects_read_with_defaults_and_others_do_not() {
        let due = json!({"id": "acct_1", "object": "account", "charges_enabled": true,
            "requirements": {"currently_due": ["external_account", 7], "disabled_reason": "requirements.past_due"}});
        let readiness = AccountReadiness::from_account(&due).unwrap();
        assert_eq!(readiness.requirements_currently_due, ["external_account"]);
        assert_eq!(readiness.disabled_reason.as_deref(), Some("requirements.past_due"));
        assert!(readiness.charges_enabled && !readiness.payouts_enabled && !readiness.details_submitted);
        let bare = AccountReadiness::from_account(&json!({"id": "acct_2", "object": "account"})).unwrap();
        assert_eq!((bare.requirements_currently_due.len(), bare.disabled_reason), (0, None));
        assert_eq!(AccountReadiness::from_account(&json!({"id": "cus_1", "object": "customer"})), None);
        assert_eq!(AccountReadiness::from_account(&json!({"object": "account"})), None);
    }

    #[test]
    fn an_account_is_ready_only_when_enabled_submitted_and_not_disabled() {
        let due_later = vec!["tos_acceptance.date".to_string()];
        let ready = AccountReadiness { requirements_currently_due: due_later, ..enabled("acct_1") };
        assert!(ready.ready());
        assert!(!AccountReadiness { charges_enabled: false, ..ready.clone() }.ready());
        assert!(!AccountReadiness { payouts_enabled: false, ..ready.clone() }.ready());
        assert!(!AccountReadiness { details_submitted: false, ..ready.clone() }.ready());
        assert!(!AccountReadiness { disabled_reason: Some("rejected.fraud".into()), ..ready }.ready());
    }

    #[test]
    fn malformed_events_are_refused_naming_only_their_id_and_type() {
        let good = json!({"id": "evt_1", "object": "event", "type": "customer.updated", "created": 10,
            "data": {"object": {"id": "cus_1", "object": "customer", "email": "secret@example.com"},
                     "previous_attributes": {"email": "old-secret@example.com"}}});
        assert!(parse_event(&good).is_ok());
        let broken = |path: &[&str], value: Value| {
            let mut event = good.clone();
            let (last, parents) = path.split_last().unwrap();
            parents.iter().fold(&mut event, |v, k| &mut v[*k])[*last] = value;
            parse_event(&event).unwrap_err().to_string()
        };
        assert_eq!(broken(&["id"], Value::Null), "(unusable id): no id");
        assert_eq!(broken(&["type"], json!(3)), "evt_1: no type");
        assert_eq!(broken(&["created"], json!("10")), "evt_1: customer.updated: no created time");
        assert_eq!(broken(&["data"], json!({})), "evt_1: customer.updated: no data.object");
        let not_customer = broken(&["data", "object", "object"], json!("account"));
        assert_eq!(not_customer, "evt_1: customer.updated: data.object is not a customer");
        assert!(!not_customer.contains("secret"));
        let account = json!({"id": "evt_2", "type": "account.updated", "created": 1, "data": {"object": {"id": "x"}}});
        assert_eq!(parse_event(&account).unwrap_err().to_string(), "evt_2: account.updated: not an account");
        let deauthorized = json!({"id": "evt_3", "type": "account.application.deauthorized", "created": 1,
            "data": {"object": {"id": "ca_1", "object": "application"}}});
        assert_eq!(
            parse_event(&deauthorized).unwrap_err(),
            Malformed { id: Some("evt_3".into()), why: "account.application.deauthorized: no account".into() }
        );
    }

    /// An email change of `cus_1` with `field` (a JSON pointer under the event) set to `value`.
    fn email_event_with(pointer: &str, value: Value) -> Value {
        let mut event = json!({"id": "evt_1", "object": "event", "type": "customer.updated", "created": 10,
            "data": {"object": {"id": "cus_1", "object": "customer", "email": "a@example.com",
                                "metadata": {"user_id": "u-1"}},
                     "previous_attributes": {"email": null}},
            "request": {"id": null, "idempotency_key": "key-1"}});
        *event.pointer_mut(pointer).unwrap() = value;
        event
    }

    #[test]
    fn ids_that_are_not_short_stripe_ids_are_refused_without_showing_them() {
        let huge = format!("evt_{}", "a".repeat(3000));
        for (id, why) in [
            (huge.as_str(), "the event id is longer than 255 bytes (3004 bytes)"),
            ("evt_1; drop", "the event id is not a Stripe id (prefix_alphanumerics)"),
            ("", "the event id is not a Stripe id (prefix_alphanumerics)"),
            ("evt_\0", "the event id contains NUL (U+0000), which PostgreSQL text cannot hold"),
        ] {
            let refused = parse_event(&email_event_with("/id", json!(id))).unwrap_err();
            assert_eq!(refused, Malformed { id: None, why: why.into() });
            assert!(refused.to_string().len() < 120, "{refused}");
        }
        // A usable id longer than a message needs is cut.
        let long = format!("evt_{}", "b".repeat(200));
        let refused = parse_event(&email_event_with("/created", json!(null)).tap_id(&long)).unwrap_err();
        assert_eq!(refused.id.as_deref(), Some(&long[..SHOWN_ID_CHARS]));
        // The objects' ids too.
        let customer = parse_event(&email_event_with("/data/object/id", json!(format!("cus_{}", "c".repeat(300)))));
        assert_eq!(customer.unwrap_err().why, "customer.updated: customer id is longer than 255 bytes (304 bytes)");
        let deleted = email_event_with("/type", json!("customer.deleted"));
        let deleted = parse_event(&deleted.tap(|e| e["data"]["object"]["id"] = json!("cus/1")));
        assert_eq!(deleted.unwrap_err().why, "customer.deleted: customer id is not a Stripe id (prefix_alphanumerics)");
        let account = json!({"id": "evt_2", "type": "account.application.deauthorized", "created": 1,
            "account": "acct_1?x=1", "data": {"object": {"id": "ca_1", "object": "application"}}});
        assert_eq!(
            parse_event(&account).unwrap_err().why,
            "account.application.deauthorized: account is not a Stripe id (prefix_alphanumerics)"
        );
        let updated = json!({"id": "evt_3", "type": "account.updated", "created": 1,
            "data": {"object": {"id": "acct_\u{FFFD}", "object": "account"}}});
        assert!(parse_event(&updated).unwrap_err().why.starts_with("account.updated: account id contains U+FFFD"));
        let kind = parse_event(&email_event_with("/type", json!("customer.updated\n"))).unwrap_err();
        assert_eq!(kind.why, "type is not an event type (letters, digits, _ . [ ], at most 255 bytes)");
    }

    #[test]
    fn text_with_nul_or_lost_characters_or_too_long_is_refused_naming_the_field_only() {
        let secret = "secret-user@example.com";
        for (pointer, value, why) in [
            ("/data/object/email", format!("a\0{secret}"), "email contains NUL (U+0000)"),
            (
                "/data/object/email",
                format!("a\u{FFFD}{secret}"),
                "email contains U+FFFD: a byte that was not UTF-8, or an unpaired surrogate",
            ),
            ("/data/object/email", format!("{}{secret}", "e".repeat(500)), "email is longer than 512 characters (523)"),
            ("/data/object/metadata/user_id", format!("u\0{secret}"), "metadata.user_id contains NUL"),
            ("/data/object/metadata/user_id", format!("\u{FFFD}{secret}"), "metadata.user_id contains U+FFFD"),
            ("/data/object/metadata/user_id", "é".repeat(501), "metadata.user_id is longer than 500 characters (501)"),
            ("/request/idempotency_key", format!("k\0{secret}"), "request.idempotency_key contains NUL"),
            ("/request/idempotency_key", "k".repeat(256), "request.idempotency_key is longer than 255 characters"),
        ] {
            let refused = parse_event(&email_event_with(pointer, json!(value))).unwrap_err();
            assert_eq!(refused.id.as_deref(), Some("evt_1"));
            assert!(refused.why.starts_with(&format!("customer.updated: {why}")), "{refused}");
            assert!(!refused.to_string().contains(secret), "{refused}");
        }
        // At the limits, and the multi-byte characters counted as characters.
        let at_limits = email_event_with("/data/object/email", json!("é".repeat(512)))
            .tap(|e| e["data"]["object"]["metadata"]["user_id"] = json!("ü".repeat(500)));
        assert!(parse_event(&at_limits).is_ok());
        // A deletion's user_id, an account's requirements.
        let deleted = email_event_with("/type", json!("customer.deleted"))
            .tap(|e| e["data"]["object"]["metadata"]["user_id"] = json!("u\0"));
        assert!(parse_event(&deleted).unwrap_err().why.starts_with("customer.deleted: metadata.user_id contains NUL"));
        let account = |requirements: Value| {
            json!({"id": "evt_4", "type": "account.updated", "created": 1,
                   "data": {"object": {"id": "acct_1", "object": "account", "requirements": requirements}}})
        };
        let reason = parse_event(&account(json!({"disabled_reason": "rejected\u{FFFD}"}))).unwrap_err();
        assert!(reason.why.starts_with("account.updated: requirements.disabled_reason contains U+FFFD"), "{reason}");
        let due = parse_event(&account(json!({"currently_due": ["ok", "bad\0"]}))).unwrap_err();
        assert!(due.why.starts_with("account.updated: requirements.currently_due contains NUL"), "{due}");
        // Text the extension does not use may hold anything.
        let name = email_event_with("/data/object/metadata", json!({"user_id": "u-1", "note": "\0\u{FFFD}"}));
        assert!(parse_event(&name).is_ok());
    }

    #[test]
    fn a_customer_read_back_is_the_change_it_says() {
        let live = json!({"id": "cus_1", "object": "customer", "email": "a@example.com",
                          "metadata": {"user_id": "u-1"}});
        assert_eq!(
            customer_change(&live).unwrap(),
            Change::CustomerEmail {
                customer: "cus_1".into(),
                user_id: Some("u-1".into()),
                email: Some("a@example.com".into()),
                idempotency_key: None,
            }
        );
        let cleared = json!({"id": "cus_1", "object": "customer", "email": null, "metadata": {}});
        assert!(matches!(customer_change(&cleared).unwrap(), Change::CustomerEmail { email: None, user_id: None, .. }));
        let deleted = json!({"id": "cus_1", "object": "customer", "deleted": true});
        assert_eq!(
            customer_change(&deleted).unwrap(),
            Change::CustomerDeleted { customer: "cus_1".into(), user_id: None }
        );
        // The checks of events.
        let nul = json!({"id": "cus_1", "object": "customer", "email": "a\0@example.com"});
        assert_eq!(
            customer_change(&nul).unwrap_err().to_string(),
            "cus_1: email contains NUL (U+0000), which PostgreSQL text cannot hold"
        );
        let user = json!({"id": "cus_1", "object": "customer", "metadata": {"user_id": "\u{FFFD}"}});
        assert!(customer_change(&user).unwrap_err().why.starts_with("metadata.user_id contains U+FFFD"));
        let huge = json!({"id": format!("cus_{}", "x".repeat(3000)), "object": "customer", "deleted": true});
        assert_eq!(customer_change(&huge).unwrap_err().id, None);
        let account = json!({"id": "acct_1", "object": "account"});
        assert_eq!(customer_change(&account).unwrap_err().to_string(), "acct_1: not a customer");
    }

    #[test]
    fn unknown_types_and_updates_without_an_email_change_are_ignored() {
        let update = json!({"id": "evt_1", "type": "customer.updated", "created": 10,
            "data": {"object": {"id": "cus_1", "object": "customer", "email": "a@example.com"},
                     "previous_attributes": {"name": null}}});
        assert_eq!(parse_event(&update).unwrap().change, Change::Ignored);
        let payout = json!({"id": "evt_2", "type": "payout.paid", "created": 10, "data": {"object": {"id": "po_1"}}});
        assert_eq!(
            parse_event(&payout).unwrap(),
            InboundEvent { id: "evt_2".into(), created: 10, change: Change::Ignored }
        );
        assert_eq!(Change::Ignored.object_id(), None);
        assert_eq!(Change::CustomerDeleted { customer: "cus_1".into(), user_id: None }.object_id(), Some("cus_1"));
        assert_eq!(Change::AccountDeauthorized { account: "acct_1".into() }.object_id(), Some("acct_1"));
    }

    #[test]
    fn an_event_applies_only_over_older_state_and_the_same_second_is_read_again() {
        assert_eq!(verdict(10, None), Verdict::Apply);
        assert_eq!(verdict(11, Some(10)), Verdict::Apply);
        assert_eq!(verdict(9, Some(10)), Verdict::Stale);
        assert_eq!(verdict(10, Some(10)), Verdict::Refetch);
    }

    #[test]
    fn a_page_writes_each_objects_state_once_from_its_last_event() {
        let ignored = InboundEvent { id: "evt_x".into(), created: 5, change: Change::Ignored };
        let events = vec![
            account_event("evt_1", 10, "acct_a"),
            ignored,
            account_event("evt_2", 12, "acct_a"), // a second update: it writes, evt_1 need not
            account_event("evt_3", 11, "acct_a"), // older than evt_2, planned earlier in the page
            account_event("evt_4", 20, "acct_b"), // older than acct_b's stored state
            account_event("evt_5", 30, "acct_c"),
            account_event("evt_5", 30, "acct_c"), // the same event twice
            account_event("evt_6", 30, "acct_c"), // the same second as evt_5: order unknown
        ];
        let stored = |object: &str| (object == "acct_b").then_some(25);
        assert_eq!(
            verdicts(&plan(events, stored)),
            [
                ("evt_1", Verdict::Apply, true),
                ("evt_x", Verdict::Apply, false),
                ("evt_2", Verdict::Apply, false),
                ("evt_3", Verdict::Stale, false),
                ("evt_4", Verdict::Stale, false),
                ("evt_5", Verdict::Apply, true),
                ("evt_6", Verdict::Refetch, false),
            ]
        );
    }

    #[test]
    fn a_newer_event_supersedes_a_refetch_and_stored_state_of_the_same_second_is_refetched() {
        let events = vec![account_event("evt_1", 10, "acct_a"), account_event("evt_2", 11, "acct_a")];
        let planned = plan(events, |_| Some(10));
        assert_eq!(verdicts(&planned), [("evt_1", Verdict::Refetch, true), ("evt_2", Verdict::Apply, false)]);
    }

    fn email_change(id: &str, created: i64, customer: &str) -> InboundEvent {
        let change = Change::CustomerEmail {
            customer: customer.into(),
            user_id: Some("u-1".into()),
            email: Some(format!("{id}@example.com")),
            idempotency_key: None,
        };
        InboundEvent { id: id.into(), created, change }
    }

    fn deletion(id: &str, created: i64, customer: &str) -> InboundEvent {
        InboundEvent {
            id: id.into(),
            created,
            change: Change::CustomerDeleted { customer: customer.into(), user_id: None },
        }
    }

    #[test]
    fn a_customers_deletion_in_the_second_of_an_email_change_is_applied_and_nothing_refetched() {
        // The email change, then the deletion, in one second: the deletion is what holds.
        let planned = plan(vec![email_change("evt_e", 10, "cus_1"), deletion("evt_d", 10, "cus_1")], |_| None);
        assert_eq!(verdicts(&planned), [("evt_e", Verdict::Stale, true), ("evt_d", Verdict::Apply, false)]);
        // Listed the other way round (nothing orders events inside a second): the same.
        let planned = plan(vec![deletion("evt_d", 10, "cus_1"), email_change("evt_e", 10, "cus_1")], |_| None);
        assert_eq!(verdicts(&planned), [("evt_d", Verdict::Apply, false), ("evt_e", Verdict::Stale, true)]);
        // The accounts' rule would have lost it: the deletion a mere Refetch of a customer gone.
        let stored_same_second = |_: &str| Some(10);
        let planned = plan(vec![deletion("evt_d", 10, "cus_1")], stored_same_second);
        assert_eq!(verdicts(&planned), [("evt_d", Verdict::Apply, false)]);
    }

    #[test]
    fn a_customers_deletion_is_final_and_supersedes_every_other_event_of_it_in_the_page() {
        let events = vec![
            email_change("evt_1", 8, "cus_1"),  // earlier, before the deletion
            email_change("evt_2", 9, "cus_1"),  // later than evt_1, still before the deletion
            email_change("evt_3", 12, "cus_2"), // another customer: its own rules
            deletion("evt_4", 10, "cus_1"),
            deletion("evt_5", 10, "cus_1"), // the same deletion seen again under another id
            email_change("evt_6", 10, "cus_1"),
            email_change("evt_7", 11, "cus_1"), // after it: nothing comes back from a deletion
            deletion("evt_8", 5, "cus_3"),      // older than what is stored: applied all the same
        ];
        let stored = |object: &str| if object == "cus_3" { Some(20) } else { Some(1) };
        assert_eq!(
            verdicts(&plan(events, stored)),
            [
                ("evt_1", Verdict::Apply, true),
                ("evt_2", Verdict::Apply, true),
                ("evt_3", Verdict::Apply, false),
                ("evt_4", Verdict::Apply, false),
                ("evt_5", Verdict::Stale, true),
                ("evt_6", Verdict::Stale, true),
                ("evt_7", Verdict::Stale, true),
                ("evt_8", Verdict::Apply, false),
            ]
        );
    }

    #[test]
    fn two_email_changes_of_a_customer_in_one_second_are_refetched() {
        let events = vec![email_change("evt_1", 10, "cus_1"), email_change("evt_2", 10, "cus_1")];
        assert_eq!(
            verdicts(&plan(events, |_| None)),
            [("evt_1", Verdict::Apply, true), ("evt_2", Verdict::Refetch, false)]
        );
        // In the second of the stored state; and older than it.
        let planned = plan(vec![email_change("evt_3", 10, "cus_1"), email_change("evt_4", 9, "cus_2")], |_| Some(10));
        assert_eq!(verdicts(&planned), [("evt_3", Verdict::Refetch, false), ("evt_4", Verdict::Stale, false)]);
        // A later second settles it.
        let events = vec![email_change("evt_5", 10, "cus_1"), email_change("evt_6", 11, "cus_1")];
        assert_eq!(
            verdicts(&plan(events, |_| Some(10))),
            [("evt_5", Verdict::Refetch, true), ("evt_6", Verdict::Apply, false)]
        );
    }

    #[test]
    fn polling_is_fast_for_a_while_after_an_account_link() {
        let poll = PollInterval::default();
        assert_eq!(poll, PollInterval { every: POLL_EVERY, fast: POLL_FAST, fast_for: POLL_FAST_FOR });
        assert_eq!((POLL_EVERY.as_secs(), POLL_FAST.as_secs(), POLL_FAST_FOR.as_secs()), (15, 2, 600));
        assert_eq!(poll.next_poll_in(None), POLL_EVERY);
        assert_eq!(poll.next_poll_in(Some(Duration::ZERO)), POLL_FAST);
        assert_eq!(poll.next_poll_in(Some(POLL_FAST_FOR - Duration::from_millis(1))), POLL_FAST);
        assert_eq!(poll.next_poll_in(Some(POLL_FAST_FOR)), POLL_EVERY);
    }
}
