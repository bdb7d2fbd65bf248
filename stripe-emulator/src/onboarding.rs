//! Connect onboarding as a test drives it: the states an account moves through while its owner
//! onboards at Stripe (which the emulator never serves), and what each does to the account.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::requirements;

/// What a test's [`crate::Emulator::set_onboarding`] (or `POST /_emulator/accounts/{id}/onboarding`)
/// moves an account to. Each step rewrites `charges_enabled`, `payouts_enabled`,
/// `details_submitted`, `requirements` and `capabilities` (and `tos_acceptance` on submission),
/// and records `account.updated` with the previous values of what changed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum Onboarding {
    /// Information due: nothing enabled, `details_submitted` false, `currently_due` (and
    /// `eventually_due`) the given fields, [`Onboarding::DEFAULT_DUE`] if empty;
    /// `disabled_reason` as given (`"requirements.past_due"` also lists the fields in
    /// `past_due`; `null` means the account is not yet restricted). Capabilities `inactive`.
    RequirementsDue {
        #[serde(default)]
        currently_due: Vec<String>,
        #[serde(default)]
        disabled_reason: Option<String>,
    },
    /// The owner finished the onboarding form: `details_submitted` true, nothing due, still
    /// nothing enabled while Stripe verifies (`disabled_reason`
    /// `"requirements.pending_verification"`, `pending_verification` lists the identity
    /// document). Capabilities `pending`; `tos_acceptance.date` set.
    DetailsSubmitted,
    /// Verified: charges and payouts enabled, nothing due or pending, `disabled_reason` null.
    /// Capabilities `active`.
    Enabled,
    /// Stripe disabled the account: charges and payouts off, `disabled_reason` as given (e.g.
    /// `"rejected.fraud"`, `"requirements.past_due"`). With `requirements.past_due` the fields
    /// given (or, if none, the ones already due, else [`Onboarding::DEFAULT_DUE`]) are
    /// currently and past due; otherwise nothing is due. Capabilities `inactive`.
    Disabled {
        disabled_reason: String,
        #[serde(default)]
        currently_due: Vec<String>,
    },
}

impl Onboarding {
    /// What an Express account typically has due before onboarding.
    pub const DEFAULT_DUE: [&'static str; 3] =
        ["external_account", "individual.verification.document", "tos_acceptance.date"];

    /// [`Onboarding::RequirementsDue`] with the default fields, already past due.
    pub fn requirements_due() -> Onboarding {
        Onboarding::RequirementsDue { currently_due: vec![], disabled_reason: Some("requirements.past_due".into()) }
    }

    /// [`Onboarding::Disabled`] for `reason`, nothing given as due.
    pub fn disabled(reason: &str) -> Onboarding {
        Onboarding::Disabled { disabled_reason: reason.into(), currently_due: vec![] }
    }

    /// The account after this step, `now_secs` being the time of the change.
    pub fn apply(&self, account: &Value, now_secs: i64) -> Value {
        let mut next = account.clone();
        let default_due = || Onboarding::DEFAULT_DUE.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let capabilities = |next: &mut Value, status: &str| {
            if let Some(caps) = next["capabilities"].as_object_mut() {
                for v in caps.values_mut() {
                    *v = json!(status);
                }
            }
        };
        match self {
            Onboarding::RequirementsDue { currently_due, disabled_reason } => {
                let due = if currently_due.is_empty() { default_due() } else { currently_due.clone() };
                let past_due = disabled_reason.as_deref() == Some("requirements.past_due");
                next["requirements"] = reqs(&due, if past_due { &due } else { &[] }, &[], disabled_reason.as_deref());
                set_flags(&mut next, false, false, false);
                capabilities(&mut next, "inactive");
            }
            Onboarding::DetailsSubmitted => {
                let pending = vec!["individual.verification.document".to_string()];
                next["requirements"] = reqs(&[], &[], &pending, Some("requirements.pending_verification"));
                set_flags(&mut next, true, false, false);
                if next["tos_acceptance"]["date"].is_null() {
                    next["tos_acceptance"]["date"] = json!(now_secs);
                }
                capabilities(&mut next, "pending");
            }
            Onboarding::Enabled => {
                next["requirements"] = requirements(&[]);
                set_flags(&mut next, true, true, true);
                if next["tos_acceptance"]["date"].is_null() {
                    next["tos_acceptance"]["date"] = json!(now_secs);
                }
                capabilities(&mut next, "active");
            }
            Onboarding::Disabled { disabled_reason, currently_due } => {
                let due = if disabled_reason != "requirements.past_due" {
                    vec![]
                } else if !currently_due.is_empty() {
                    currently_due.clone()
                } else {
                    let already: Vec<String> = account["requirements"]["currently_due"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                        .unwrap_or_default();
                    if already.is_empty() { default_due() } else { already }
                };
                next["requirements"] = reqs(&due, &due, &[], Some(disabled_reason));
                let submitted = account["details_submitted"].as_bool().unwrap_or(false);
                set_flags(&mut next, submitted, false, false);
                capabilities(&mut next, "inactive");
            }
        }
        next
    }
}

fn set_flags(account: &mut Value, details_submitted: bool, charges: bool, payouts: bool) {
    account["details_submitted"] = json!(details_submitted);
    account["charges_enabled"] = json!(charges);
    account["payouts_enabled"] = json!(payouts);
}

fn reqs(due: &[String], past_due: &[String], pending: &[String], disabled_reason: Option<&str>) -> Value {
    let mut r = requirements(&[]);
    r["currently_due"] = json!(due);
    r["eventually_due"] = json!(due);
    r["past_due"] = json!(past_due);
    r["pending_verification"] = json!(pending);
    r["disabled_reason"] = json!(disabled_reason);
    r
}
