//! What Stripe's events say about the accounts and customers the extension made, and which of
//! them to apply.
//!
//! A connected account's owner onboards at Stripe, and the Dashboard can delete a customer or
//! change its email: nothing calls the extension when that happens. The worker reads Stripe's
//! Events API oldest first after a stored cursor and applies what the events say. Each event
//! embeds its object as it was when the event happened, a snapshot that may be older than what
//! the worker already stored (from a later event, or from reading the object itself), so every
//! event is weighed against the time of the stored state before it may overwrite it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

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

/// Reads one event of `GET /v1/events`. The error names only the event's id and type: events
/// carry customers' emails, which must not reach the logs.
pub fn parse_event(event: &Value) -> Result<InboundEvent, String> {
    let id = event["id"].as_str().ok_or("event without an id")?;
    let kind = event["type"].as_str().ok_or_else(|| format!("event {id} without a type"))?;
    let malformed = |what: &str| format!("event {id} ({kind}): {what}");
    let created = event["created"].as_i64().ok_or_else(|| malformed("no created time"))?;
    let object = &event["data"]["object"];
    if !object.is_object() {
        return Err(malformed("no data.object"));
    }
    let user_id = || object["metadata"]["user_id"].as_str().map(str::to_string);
    let customer = || match (object["object"].as_str(), object["id"].as_str()) {
        (Some("customer"), Some(id)) => Ok(id.to_string()),
        _ => Err(malformed("data.object is not a customer")),
    };
    let change = match kind {
        "account.updated" => {
            Change::Account(AccountReadiness::from_account(object).ok_or_else(|| malformed("not an account"))?)
        }
        "account.application.deauthorized" => {
            let account = event["account"].as_str().ok_or_else(|| malformed("no account"))?;
            Change::AccountDeauthorized { account: account.to_string() }
        }
        "customer.updated" if event["data"]["previous_attributes"].get("email").is_some() => {
            let email = object["email"].as_str().map(str::to_string);
            let idempotency_key = event["request"]["idempotency_key"].as_str().map(str::to_string);
            Change::CustomerEmail { customer: customer()?, user_id: user_id(), email, idempotency_key }
        }
        "customer.deleted" => Change::CustomerDeleted { customer: customer()?, user_id: user_id() },
        _ => Change::Ignored,
    };
    Ok(InboundEvent { id: id.to_string(), created, change })
}

/// Whether an event's snapshot may replace the stored state of its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than the stored state (or nothing stored): write what the event says.
    Apply,
    /// Older than the stored state: writing it would undo a later change. Skip it.
    Stale,
    /// The same second as the stored state: read the object itself and store that.
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
    /// A later event of the same page for the same object is [`Verdict::Apply`] or
    /// [`Verdict::Refetch`]: that one writes the object's state, this one need not (its id is
    /// still recorded).
    pub superseded: bool,
}

/// Plans one page of events, oldest first. Each event is weighed against the state its object
/// will have when the worker reaches it: the stored `as_of`, or the `created` of the page's last
/// earlier event for the object that applies or re-fetches. Ignored changes are
/// [`Verdict::Apply`] (there is nothing to write, only the id to record). An event id already
/// planned earlier in the page is left out.
pub fn plan(events: Vec<InboundEvent>, stored_as_of: impl Fn(&str) -> Option<i64>) -> Vec<Planned> {
    let mut planned: Vec<Planned> = Vec::with_capacity(events.len());
    let mut seen = HashSet::new();
    // Per object: the as_of the page has set so far, and the entry that writes its state.
    let mut writes: HashMap<String, (i64, usize)> = HashMap::new();
    for event in events {
        if !seen.insert(event.id.clone()) {
            continue;
        }
        let Some(object) = event.change.object_id().map(str::to_string) else {
            planned.push(Planned { event, verdict: Verdict::Apply, superseded: false });
            continue;
        };
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

    fn verdicts(planned: &[Planned]) -> Vec<(&str, Verdict, bool)> {
        planned.iter().map(|p| (p.event.id.as_str(), p.verdict, p.superseded)).collect()
    }

    /// Drives the emulator through every change the worker reads and parses the events it records.
    #[test]
    fn events_as_the_emulator_records_them_parse_to_their_changes() {
        use crate::stripe::{ApiKey, ClientConfig, DEFAULT_SEARCH_RATE, NewAccount, NewCustomer, StripeClient};
        let key = "sk_test_inboundevents0123456789";
        let config = stripe_emulator::EmulatorConfig { api_key: Some(key.into()), ..Default::default() };
        let stripe = stripe_emulator::Emulator::start("127.0.0.1:0", config).unwrap();
        let client = StripeClient::new(&ClientConfig {
            api_base: stripe.base_url(),
            api_key: ApiKey::new(key).unwrap(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            api_version: None,
            search_rate: DEFAULT_SEARCH_RATE,
        })
        .unwrap();
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
            parse_event(&event).unwrap_err()
        };
        assert_eq!(broken(&["id"], Value::Null), "event without an id");
        assert_eq!(broken(&["type"], json!(3)), "event evt_1 without a type");
        assert_eq!(broken(&["created"], json!("10")), "event evt_1 (customer.updated): no created time");
        assert_eq!(broken(&["data"], json!({})), "event evt_1 (customer.updated): no data.object");
        let not_customer = broken(&["data", "object", "object"], json!("account"));
        assert_eq!(not_customer, "event evt_1 (customer.updated): data.object is not a customer");
        assert!(!not_customer.contains("secret"));
        let account = json!({"id": "evt_2", "type": "account.updated", "created": 1, "data": {"object": {"id": "x"}}});
        assert_eq!(parse_event(&account).unwrap_err(), "event evt_2 (account.updated): not an account");
        let deauthorized = json!({"id": "evt_3", "type": "account.application.deauthorized", "created": 1,
            "data": {"object": {"id": "ca_1", "object": "application"}}});
        assert_eq!(
            parse_event(&deauthorized).unwrap_err(),
            "event evt_3 (account.application.deauthorized): no account"
        );
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
