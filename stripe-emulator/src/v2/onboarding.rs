//! An Account v2 moving through onboarding, as a test drives it with the same steps as a v1
//! account ([`crate::Onboarding`]): what each step does to the Account's `requirements` and to
//! the status of the capabilities its `merchant` and `recipient` configurations requested
//! (`card_payments`, `stripe_balance.stripe_transfers`, …). The `customer` configuration's
//! capabilities are left alone.
//!
//! | Step | `requirements.entries` | merchant and recipient capabilities |
//! |---|---|---|
//! | `requirements_due` | one per field due (`awaiting_action_from: user`), `minimum_deadline.status` `past_due` with `disabled_reason: requirements.past_due`, else `currently_due` | `restricted`, `requirements_past_due` / `provide_info` |
//! | `details_submitted` | one per field Stripe is verifying (`awaiting_action_from: stripe`, `currently_due`) | `pending`, `requirements_pending_verification` / `no_resolution` |
//! | `enabled` | none | `active`, no details |
//! | `disabled` with `requirements.past_due` | the fields due, `past_due` | `restricted`, `requirements_past_due` / `provide_info` |
//! | `disabled` with `rejected.fraud` (`.terms_of_service`, `.listed`, `.other`, `.incomplete_verification`, `.platform_fraud`, `.platform_other`, `.platform_terms_of_service`) | none | `rejected`, `rejected_fraud` (…) / `contact_stripe` |
//! | `disabled` for another reason | none | `restricted`, `restricted_other` / `contact_stripe` |
//!
//! The status codes and resolutions are the SDK's (`StatusDetail.Code`, `StatusDetail.Resolution`);
//! which step shows which is the emulator's choice. An Account that no test moved shows its
//! requested merchant and recipient capabilities as `restricted` (`requirements_past_due`) with
//! [`Onboarding::DEFAULT_DUE`] past due, as a new v1 account shows its requirements past due.

use serde_json::{Value, json};

use crate::onboarding::Onboarding;
use crate::v2::capabilities;

/// How a requested merchant or recipient capability shows at this step (`None`: before any).
pub fn capability_status(step: Option<&Onboarding>) -> Value {
    match step {
        None | Some(Onboarding::RequirementsDue { .. }) => past_due(),
        Some(Onboarding::DetailsSubmitted) => {
            capabilities::status("pending", &[("requirements_pending_verification", "no_resolution")])
        }
        Some(Onboarding::Enabled) => capabilities::status("active", &[]),
        Some(Onboarding::Disabled { disabled_reason, .. }) => match disabled_reason.as_str() {
            "requirements.past_due" => past_due(),
            reason => match rejection_code(reason) {
                Some(code) => capabilities::status("rejected", &[(code, "contact_stripe")]),
                None => capabilities::status("restricted", &[("restricted_other", "contact_stripe")]),
            },
        },
    }
}

fn past_due() -> Value {
    capabilities::status("restricted", &[("requirements_past_due", "provide_info")])
}

/// v1's `rejected.*` disabled reasons as v2 status codes.
fn rejection_code(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "rejected.fraud" => "rejected_fraud",
        "rejected.incomplete_verification" => "rejected_incomplete_verification",
        "rejected.listed" => "rejected_listed",
        "rejected.other" => "rejected_other",
        "rejected.platform_fraud" => "rejected_platform_fraud",
        "rejected.platform_other" => "rejected_platform_other",
        "rejected.platform_terms_of_service" => "rejected_platform_terms_of_service",
        "rejected.terms_of_service" => "rejected_terms_of_service",
        _ => return None,
    })
}

/// The Account's `requirements` at this step (`None`: before any), its requested merchant and
/// recipient capabilities (dotted name, configuration) being the ones the entries restrict, and
/// `previously_due` the fields its requirements listed before.
pub fn requirements(step: Option<&Onboarding>, restricted: &[(String, &str)], previously_due: &[String]) -> Value {
    let default_due = || Onboarding::DEFAULT_DUE.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let given_or = |given: &[String], fallback: Vec<String>| if given.is_empty() { fallback } else { given.to_vec() };
    match step {
        None => entries(&default_due(), "user", "past_due", restricted),
        Some(Onboarding::RequirementsDue { currently_due, disabled_reason }) => {
            let deadline =
                if disabled_reason.as_deref() == Some("requirements.past_due") { "past_due" } else { "currently_due" };
            entries(&given_or(currently_due, default_due()), "user", deadline, restricted)
        }
        Some(Onboarding::DetailsSubmitted) => {
            entries(&["individual.verification.document".to_string()], "stripe", "currently_due", &[])
        }
        Some(Onboarding::Enabled) => entries(&[], "user", "currently_due", &[]),
        Some(Onboarding::Disabled { disabled_reason, currently_due }) if disabled_reason == "requirements.past_due" => {
            let already = given_or(previously_due, default_due());
            entries(&given_or(currently_due, already), "user", "past_due", restricted)
        }
        Some(Onboarding::Disabled { .. }) => entries(&[], "user", "currently_due", &[]),
    }
}

/// The Account after a test moved it to `step`: every capability its `merchant` and `recipient`
/// configurations requested in the step's status, its `requirements` the step's.
pub fn apply(account: &Value, step: &Onboarding) -> Value {
    let mut next = account.clone();
    let status = capability_status(Some(step));
    for c in CONNECTED {
        if next["configuration"][c].is_object() {
            capabilities::set_every(&mut next["configuration"][c]["capabilities"], &status);
        }
    }
    let restricted = restricted_capabilities(&next);
    next["requirements"] = requirements(Some(step), &restricted, &fields_due(&account["requirements"]));
    next
}

/// The configurations whose capabilities onboarding moves.
const CONNECTED: [&str; 2] = ["merchant", "recipient"];

/// The capabilities the applied `merchant` and `recipient` configurations requested: dotted name
/// and configuration, what requirements restrict.
pub fn restricted_capabilities(account: &Value) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    for c in CONNECTED {
        let configuration = &account["configuration"][c];
        if configuration["applied"] == true {
            found.extend(capabilities::shown(&configuration["capabilities"]).into_iter().map(|(name, _)| (name, c)));
        }
    }
    found
}

/// `requirements` listing `fields`, each awaiting `from` by `deadline`, each restricting the
/// `restricted` capabilities.
pub fn entries(fields: &[String], from: &str, deadline: &str, restricted: &[(String, &str)]) -> Value {
    let impact: Vec<Value> = restricted
        .iter()
        .map(|(capability, configuration)| {
            json!({"capability": capability, "configuration": configuration, "deadline": {"status": deadline}})
        })
        .collect();
    let entries: Vec<Value> = fields
        .iter()
        .map(|field| {
            json!({
                "awaiting_action_from": from,
                "description": field,
                "errors": [],
                "impact": {"restricts_capabilities": impact},
                "minimum_deadline": {"status": deadline},
                "requested_reasons": [{"code": "routine_onboarding"}],
            })
        })
        .collect();
    let summary = if entries.is_empty() {
        json!({"minimum_deadline": null})
    } else {
        json!({"minimum_deadline": {"status": deadline, "time": null}})
    };
    json!({"entries": entries, "summary": summary})
}

/// The fields an Account's `requirements` list (their `description`s).
pub fn fields_due(requirements: &Value) -> Vec<String> {
    requirements["entries"]
        .as_array()
        .map(|entries| entries.iter().filter_map(|e| e["description"].as_str()).map(str::to_string).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_shows_a_status_the_sdk_knows() {
        let steps = [
            Onboarding::requirements_due(),
            Onboarding::DetailsSubmitted,
            Onboarding::Enabled,
            Onboarding::disabled("rejected.fraud"),
            Onboarding::disabled("requirements.past_due"),
            Onboarding::disabled("under_review"),
        ];
        let statuses: Vec<Value> = steps.iter().map(|s| capability_status(Some(s))["status"].clone()).collect();
        assert_eq!(statuses, ["restricted", "pending", "active", "rejected", "restricted", "restricted"]);
        assert_eq!(capability_status(Some(&steps[3]))["status_details"][0]["code"], "rejected_fraud");
        let restricted = [("card_payments".to_string(), "merchant")];
        let due = requirements(Some(&steps[0]), &restricted, &[]);
        assert_eq!(fields_due(&due), Onboarding::DEFAULT_DUE);
        assert_eq!(due["entries"][0]["minimum_deadline"]["status"], "past_due");
        assert_eq!(due["entries"][0]["impact"]["restricts_capabilities"][0]["capability"], "card_payments");
        let enabled = requirements(Some(&Onboarding::Enabled), &restricted, &[]);
        assert_eq!(enabled, json!({"entries": [], "summary": {"minimum_deadline": null}}));
        let kept = requirements(Some(&steps[4]), &restricted, &["external_account".to_string()]);
        assert_eq!(fields_due(&kept), ["external_account"]);
    }

    #[test]
    fn a_step_moves_merchant_and_recipient_capabilities_only() {
        let account = json!({
            "configuration": {
                "customer": {"applied": true, "capabilities": {"automatic_indirect_tax": capabilities::status("active", &[])}},
                "merchant": {"applied": true, "capabilities": {"card_payments": capability_status(None)}},
                "recipient": {"applied": true, "capabilities": {"stripe_balance": {"stripe_transfers": capability_status(None)}}},
            },
            "requirements": requirements(None, &[], &[]),
        });
        let enabled = apply(&account, &Onboarding::Enabled);
        assert_eq!(enabled["configuration"]["merchant"]["capabilities"]["card_payments"]["status"], "active");
        assert_eq!(
            enabled["configuration"]["recipient"]["capabilities"]["stripe_balance"]["stripe_transfers"]["status"],
            "active"
        );
        assert_eq!(enabled["configuration"]["customer"], account["configuration"]["customer"]);
        assert_eq!(fields_due(&enabled["requirements"]), Vec::<String>::new());
        let names: Vec<String> =
            restricted_capabilities(&account).into_iter().map(|(n, c)| format!("{c}:{n}")).collect();
        assert_eq!(names, ["merchant:card_payments", "recipient:stripe_balance.stripe_transfers"]);
    }
}
