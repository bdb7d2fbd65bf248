//! A v2 Account's readiness, as the same facts v1's readiness holds (`inbound::AccountReadiness`:
//! `charges_enabled`, `payouts_enabled`, `details_submitted`, requirements currently due,
//! `disabled_reason`) plus what only v2 has (closed, transfers), so `account_ready` and
//! `connect_accounts` can serve both models.
//!
//! v2 has none of v1's flags: an Account says what it can do per configuration and capability,
//! each with a `status` (`active`, `pending`, `restricted`, `rejected`, `unsupported`) and
//! `status_details` (`{code, resolution}`), and what it must still provide as `requirements
//! .entries` (stripe-node 23.1.0, `Account.Configuration.*.Capabilities`, `Account.Requirements`).
//! Stripe's own advice for v2 readiness is to read the capability statuses: "ALWAYS verify
//! capability status using the v2 configuration path. Do NOT use deprecated v1 fields … Check:
//! `configuration.merchant.capabilities.card_payments.status === 'active'`; Do NOT use:
//! `charges_enabled`" (docs.stripe.com/.well-known/skills/stripe-best-practices/references/
//! connect.md, "Go-live readiness"). The mapping:
//!
//! - `charges_enabled`: the merchant configuration is applied and
//!   `configuration.merchant.capabilities.card_payments.status` is `active`. Card payments are
//!   what v1's flag gated, and the advice above names this very path.
//! - `payouts_enabled`: `stripe_balance.payouts.status` is `active` on an applied merchant or
//!   recipient configuration. "We've made payouts a capability in both the merchant and recipient
//!   configurations … You can use this capability to check that funds in the connected account's
//!   Stripe balance can be paid out" (docs.stripe.com/changelog/basil/2025-04-30/payouts-are-now-
//!   a-capability). Both draw on the one Stripe balance, so either one active is enough.
//! - `transfers_enabled` (new): the recipient configuration is applied and
//!   `configuration.recipient.capabilities.stripe_balance.stripe_transfers.status` is `active`:
//!   "Enables this Account to receive /v1/transfers into their Stripe Balance" (the capability's
//!   doc in the SDK), what a recipient exists for. v1's readiness did not hold it.
//! - `requirements_currently_due`: the `description` ("Machine-readable string describing the
//!   requirement") of each `requirements.entries` entry awaiting the user (`awaiting_action_from`
//!   is `user`) whose `minimum_deadline.status` is `currently_due` or `past_due`, each once. v1's
//!   list is what the user must provide now, past-due fields included; entries awaiting Stripe
//!   are v1's `pending_verification`, not something the user owes.
//! - `details_submitted`: `requirements` was read and none of its entries is due from the user
//!   now (the list above is empty). v2 keeps no record that onboarding was completed once; "nothing
//!   is asked of the user now" is its nearest fact. It is stricter than v1's flag (new requirements
//!   after onboarding make it false again), which can only delay "ready", never hasten it.
//! - `disabled_reason`: the first `status_details[].code` of the first key capability that is
//!   not active (card payments, transfers, then the payouts of the applied configurations), in
//!   v1's words where v1 has them ([`in_v1_words`]: `requirements_past_due` →
//!   `requirements.past_due`, `rejected_fraud` → `rejected.fraud`, `restricted_other` → `other`);
//!   failing that, `requirements.past_due` when `requirements.summary.minimum_deadline.status` is
//!   `past_due`. v1's reason says why the account cannot do what it exists for, which v2 says per
//!   capability.
//! - `closed` (new): `closed` is `true`. A closed Account "can no longer be operated on" and is
//!   never ready; every flag reads false.
//!
//! Include-dependent parts (`configuration.*`, `requirements`) answer `null` unless asked for,
//! so the Account must be read with [`READINESS_INCLUDE`](super::accounts::READINESS_INCLUDE);
//! read without them, every flag reads false: never ready by omission.

use serde_json::Value;

use super::accounts::Configuration;
use crate::stripe::objects::is_stripe_id;

/// The capability statuses that say a capability works.
const ACTIVE: &str = "active";

/// A v2 Account's readiness (see the module for how each fact is read and why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V2Readiness {
    pub account: String,
    pub closed: bool,
    pub applied_configurations: Vec<Configuration>,
    pub charges_enabled: bool,
    pub transfers_enabled: bool,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
    pub requirements_currently_due: Vec<String>,
    pub disabled_reason: Option<String>,
}

impl V2Readiness {
    /// Reads a v2 Account object; `None` if it is not one (no `object: "v2.core.account"` or no
    /// Stripe id). Missing statuses read as not active, missing requirements as not submitted.
    pub fn from_account(object: &Value) -> Option<V2Readiness> {
        if object.get("object").and_then(Value::as_str) != Some("v2.core.account") {
            return None;
        }
        let account = object.get("id").and_then(Value::as_str).filter(|id| is_stripe_id(id))?.to_string();
        let closed = object.get("closed").and_then(Value::as_bool) == Some(true);
        let applied: Vec<Configuration> = object
            .get("applied_configurations")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .filter_map(Configuration::parse)
            .collect();
        let capability = |configuration: Configuration, path: &str| -> Option<&Value> {
            applied
                .contains(&configuration)
                .then(|| object.pointer(&format!("/configuration/{}/capabilities/{path}", configuration.as_str())))
                .flatten()
        };
        let active = |configuration, path| {
            !closed
                && capability(configuration, path).and_then(|c| c.get("status")).and_then(Value::as_str) == Some(ACTIVE)
        };
        let payouts = "stripe_balance/payouts";
        let charges_enabled = active(Configuration::Merchant, "card_payments");
        let transfers_enabled = active(Configuration::Recipient, "stripe_balance/stripe_transfers");
        let payouts_enabled = active(Configuration::Merchant, payouts) || active(Configuration::Recipient, payouts);

        let requirements = object.get("requirements").filter(|r| r.is_object());
        let mut requirements_currently_due: Vec<String> = Vec::new();
        for entry in
            requirements.and_then(|r| r.get("entries")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
        {
            let from_user = entry.get("awaiting_action_from").and_then(Value::as_str) == Some("user");
            let deadline = entry.pointer("/minimum_deadline/status").and_then(Value::as_str);
            let due_now = matches!(deadline, Some("currently_due" | "past_due"));
            if let Some(description) = entry.get("description").and_then(Value::as_str).filter(|_| from_user && due_now)
                && !requirements_currently_due.iter().any(|d| d == description)
            {
                requirements_currently_due.push(description.to_string());
            }
        }
        let details_submitted = !closed && requirements.is_some() && requirements_currently_due.is_empty();

        let key_capabilities = [
            (Configuration::Merchant, "card_payments"),
            (Configuration::Recipient, "stripe_balance/stripe_transfers"),
            (Configuration::Merchant, payouts),
            (Configuration::Recipient, payouts),
        ];
        let capability_reason = key_capabilities.into_iter().find_map(|(configuration, path)| {
            let capability = capability(configuration, path)?;
            if capability.get("status").and_then(Value::as_str) == Some(ACTIVE) {
                return None;
            }
            let details = capability.get("status_details").and_then(Value::as_array)?;
            details.iter().find_map(|d| d.get("code").and_then(Value::as_str)).map(in_v1_words)
        });
        let past_due = requirements.and_then(|r| r.pointer("/summary/minimum_deadline/status")).and_then(Value::as_str)
            == Some("past_due");
        let disabled_reason = capability_reason.or_else(|| past_due.then(|| "requirements.past_due".to_string()));

        Some(V2Readiness {
            account,
            closed,
            applied_configurations: applied,
            charges_enabled,
            transfers_enabled,
            payouts_enabled,
            details_submitted,
            requirements_currently_due,
            disabled_reason,
        })
    }

    /// Whether the Account can do what a table asked of it (`wanted`: the configurations the
    /// extension added, merchant and/or recipient): each wanted configuration applied with its key
    /// capability active (card payments; transfers), payouts active, nothing due from the user,
    /// no disabled reason, not closed. v1's `ready()` with charges read per configuration; false
    /// when neither merchant nor recipient is wanted (a customer-only Account is no connected
    /// account).
    pub fn ready(&self, wanted: &[Configuration]) -> bool {
        let merchant = wanted.contains(&Configuration::Merchant);
        let recipient = wanted.contains(&Configuration::Recipient);
        (merchant || recipient)
            && (!merchant || self.charges_enabled)
            && (!recipient || self.transfers_enabled)
            && self.payouts_enabled
            && self.details_submitted
            && self.disabled_reason.is_none()
            && !self.closed
    }
}

/// A v2 capability status code in v1's `requirements.disabled_reason` words, where v1 has them.
pub fn in_v1_words(code: &str) -> String {
    match code {
        "requirements_past_due" => "requirements.past_due".into(),
        "requirements_pending_verification" => "requirements.pending_verification".into(),
        "restricted_other" => "other".into(),
        _ => match code.strip_prefix("rejected_") {
            Some(why) => format!("rejected.{why}"),
            None => code.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// An Account as `GET /v2/core/accounts/{id}?include[0]=configuration.merchant&…` gives it.
    fn account(card_payments: &str, transfers: &str, payouts: &str, entries: Value) -> Value {
        let capability = |status: &str| match status {
            "active" => json!({"status": "active", "status_details": []}),
            "restricted" => json!({
                "status": "restricted",
                "status_details": [{"code": "requirements_past_due", "resolution": "provide_info"}],
            }),
            "rejected" => json!({"status": "rejected",
                                  "status_details": [{"code": "rejected_fraud", "resolution": "contact_stripe"}]}),
            other => json!({"status": other, "status_details": []}),
        };
        json!({
            "id": "acct_1", "object": "v2.core.account",
            "applied_configurations": ["customer", "merchant", "recipient"],
            "closed": false,
            "configuration": {
                "customer": {"applied": true},
                "merchant": {"applied": true, "capabilities": {
                    "card_payments": capability(card_payments),
                    "stripe_balance": {"payouts": capability(payouts)},
                }},
                "recipient": {"applied": true, "capabilities": {
                    "stripe_balance": {"stripe_transfers": capability(transfers), "payouts": capability(payouts)},
                }},
            },
            "requirements": {"entries": entries, "summary": {"minimum_deadline": {"status": "eventually_due"}}},
        })
    }

    fn due(description: &str, from: &str, deadline: &str) -> Value {
        json!({"description": description, "awaiting_action_from": from, "errors": [],
               "impact": {}, "minimum_deadline": {"status": deadline}, "requested_reasons": []})
    }

    const BOTH: [Configuration; 2] = [Configuration::Merchant, Configuration::Recipient];

    #[test]
    fn an_onboarded_account_is_ready_for_what_the_table_wanted() {
        let ready = V2Readiness::from_account(&account("active", "active", "active", json!([]))).unwrap();
        assert_eq!(
            ready,
            V2Readiness {
                account: "acct_1".into(),
                closed: false,
                applied_configurations: vec![
                    Configuration::Customer,
                    Configuration::Merchant,
                    Configuration::Recipient
                ],
                charges_enabled: true,
                transfers_enabled: true,
                payouts_enabled: true,
                details_submitted: true,
                requirements_currently_due: vec![],
                disabled_reason: None,
            }
        );
        assert!(
            ready.ready(&BOTH) && ready.ready(&[Configuration::Merchant]) && ready.ready(&[Configuration::Recipient])
        );
        assert!(!ready.ready(&[Configuration::Customer]) && !ready.ready(&[]), "no connected account wanted");
    }

    #[test]
    fn a_fresh_account_owes_requirements_and_is_not_ready() {
        let entries = json!([
            due("individual.dob", "user", "currently_due"),
            due("external_account", "user", "past_due"),
            due("individual.dob", "user", "past_due"),
            due("individual.verification.document", "stripe", "currently_due"),
            due("business_profile.url", "user", "eventually_due"),
        ]);
        let fresh = V2Readiness::from_account(&account("pending", "pending", "pending", entries)).unwrap();
        assert_eq!(
            fresh.requirements_currently_due,
            ["individual.dob", "external_account"],
            "the user's, due now, once each"
        );
        assert!(
            !fresh.details_submitted && !fresh.charges_enabled && !fresh.transfers_enabled && !fresh.payouts_enabled
        );
        assert_eq!(fresh.disabled_reason, None, "pending without details is no reason");
        assert!(!fresh.ready(&BOTH));
        // Only Stripe's own verification left: submitted, and ready once the capabilities are.
        let verifying = json!([due("individual.verification.document", "stripe", "currently_due")]);
        let submitted = V2Readiness::from_account(&account("active", "active", "active", verifying)).unwrap();
        assert!(submitted.details_submitted && submitted.ready(&BOTH));
    }

    #[test]
    fn a_restricted_or_rejected_capability_gives_v1s_disabled_reason() {
        let restricted = V2Readiness::from_account(&account("restricted", "active", "active", json!([]))).unwrap();
        assert_eq!(restricted.disabled_reason.as_deref(), Some("requirements.past_due"));
        assert!(
            !restricted.charges_enabled && !restricted.ready(&BOTH) && !restricted.ready(&[Configuration::Merchant])
        );
        let rejected = V2Readiness::from_account(&account("active", "rejected", "active", json!([]))).unwrap();
        assert_eq!(rejected.disabled_reason.as_deref(), Some("rejected.fraud"));
        assert!(!rejected.ready(&[Configuration::Recipient]));
        // Card payments come first.
        let both = V2Readiness::from_account(&account("rejected", "restricted", "active", json!([]))).unwrap();
        assert_eq!(both.disabled_reason.as_deref(), Some("rejected.fraud"));
        // No capability says why, the requirements' summary does.
        let mut past_due = account("active", "active", "active", json!([]));
        past_due["requirements"]["summary"]["minimum_deadline"]["status"] = json!("past_due");
        let past_due = V2Readiness::from_account(&past_due).unwrap();
        assert_eq!(past_due.disabled_reason.as_deref(), Some("requirements.past_due"));
        assert!(!past_due.ready(&BOTH));
    }

    #[test]
    fn v2_codes_in_v1_words() {
        for (code, v1) in [
            ("requirements_past_due", "requirements.past_due"),
            ("requirements_pending_verification", "requirements.pending_verification"),
            ("rejected_fraud", "rejected.fraud"),
            ("rejected_platform_terms_of_service", "rejected.platform_terms_of_service"),
            ("restricted_other", "other"),
            ("unsupported_country", "unsupported_country"),
            ("determining_status", "determining_status"),
        ] {
            assert_eq!(in_v1_words(code), v1);
        }
    }

    #[test]
    fn only_applied_configurations_count() {
        // The merchant hash is there but the configuration is not applied (deactivated): no charges.
        let mut account = account("active", "active", "active", json!([]));
        account["applied_configurations"] = json!(["customer", "recipient"]);
        let read = V2Readiness::from_account(&account).unwrap();
        assert!(!read.charges_enabled && read.transfers_enabled && read.payouts_enabled);
        assert!(read.ready(&[Configuration::Recipient]) && !read.ready(&BOTH));
    }

    #[test]
    fn a_closed_account_is_never_ready() {
        let mut closed = account("active", "active", "active", json!([]));
        closed["closed"] = json!(true);
        let read = V2Readiness::from_account(&closed).unwrap();
        assert!(read.closed && !read.charges_enabled && !read.payouts_enabled && !read.details_submitted);
        assert!(!read.ready(&BOTH));
    }

    #[test]
    fn read_without_include_it_is_never_ready_by_omission() {
        // What a retrieve without `include` gives: the include-dependent hashes are null.
        let bare = json!({
            "id": "acct_1", "object": "v2.core.account", "applied_configurations": ["customer", "merchant"],
            "configuration": null, "requirements": null,
        });
        let read = V2Readiness::from_account(&bare).unwrap();
        assert!(!read.charges_enabled && !read.payouts_enabled && !read.details_submitted);
        assert_eq!((read.requirements_currently_due.len(), &read.disabled_reason), (0, &None));
        assert!(!read.ready(&[Configuration::Merchant]));
        assert_eq!(V2Readiness::from_account(&json!({"id": "acct_1", "object": "account"})), None, "a v1 account");
        assert_eq!(V2Readiness::from_account(&json!({"id": "acct 1", "object": "v2.core.account"})), None);
    }
}
