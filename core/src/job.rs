//! The job state machine and what a `create_customer` job does with the profile it finds.
//!
//! ```text
//!   pending ──claim──▶ running ──▶ succeeded   customer created (or already there) and written back
//!      ▲                  │  ├───▶ skipped     profile gone before any Stripe call
//!      └──retry (run_at)──┤  ├───▶ orphaned    customer created, but the profile vanished before write-back
//!                         └──┴───▶ dead        permanent error, or attempts exhausted; reason kept
//!   (pending ──cancel──▶ cancelled; dead/cancelled ──retry──▶ pending)
//! ```
//!
//! `delete_customer` jobs compensate: they delete a customer that no profile can use (the profile
//! vanished before write-back, or was deleted after provisioning).

use std::time::Duration;

use rand::Rng;

use crate::policy::{Backoff, Disposition};
use crate::stripe::{NewAccount, NewCustomer};

/// The profile as the worker reads it just before calling Stripe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub email: Option<String>,
    pub customer_id: Option<String>,
    pub connect_account_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerPlan {
    /// No committed profile with this id: nothing to do, and nothing may be sent to Stripe.
    ProfileGone,
    /// The profile is gone, but an earlier attempt sent this request and may have created a
    /// customer (its answer lost): find that customer and delete it.
    CleanUp(NewCustomer),
    /// The profile already has a customer; succeed without calling Stripe.
    AlreadyProvisioned(String),
    /// Sending this profile would create a customer Stripe or the app cannot use.
    Unusable(String),
    Create(NewCustomer),
}

/// Stripe's limit on a metadata value.
pub const MAX_METADATA_VALUE: usize = 500;
/// Stripe's limit on a customer's email.
pub const MAX_EMAIL: usize = 512;

/// `first_request` is what the job's first attempt sent, if it made one: retries send exactly
/// that again, so the idempotency key never meets different parameters (Stripe's
/// `idempotency_error`). A changed email is the business of a later update, not of this job.
pub fn plan_customer(user_id: &str, profile: Option<Profile>, first_request: Option<NewCustomer>) -> CustomerPlan {
    let Some(profile) = profile else {
        return first_request.map_or(CustomerPlan::ProfileGone, CustomerPlan::CleanUp);
    };
    if let Some(id) = profile.customer_id.filter(|id| !id.is_empty()) {
        return CustomerPlan::AlreadyProvisioned(id);
    }
    if let Some(request) = first_request {
        return CustomerPlan::Create(request);
    }
    if user_id.len() > MAX_METADATA_VALUE {
        return CustomerPlan::Unusable(format!(
            "user id is {} characters; Stripe metadata values are limited to {MAX_METADATA_VALUE}",
            user_id.len()
        ));
    }
    match profile.email.as_deref().map(str::trim) {
        None | Some("") => CustomerPlan::Unusable("profile has no email".into()),
        Some(email) => match check_email(email) {
            Ok(()) => CustomerPlan::Create(NewCustomer { user_id: user_id.to_string(), email: email.to_string() }),
            Err(why) => CustomerPlan::Unusable(why),
        },
    }
}

/// A deliberately loose check: catch obvious garbage, let Stripe judge the rest.
pub fn check_email(email: &str) -> Result<(), String> {
    if email.len() > MAX_EMAIL {
        return Err(format!("email is {} characters; Stripe allows {MAX_EMAIL}", email.len()));
    }
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !email.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if valid { Ok(()) } else { Err(format!("email {email:?} is not an email address")) }
}

/// What a `delete_customer` (compensation) job does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeletePlan {
    /// The profile (re-created, or never gone) links this very customer: it is in use, keep it.
    InUse,
    Delete(String),
}

pub fn plan_delete(customer: &str, profile: Option<&Profile>) -> DeletePlan {
    match profile {
        Some(p) if p.customer_id.as_deref() == Some(customer) => DeletePlan::InUse,
        _ => DeletePlan::Delete(customer.to_string()),
    }
}

/// What an accounts_v2 compensation job does: the one Account is the profile's customer and its
/// connected account, so the profile uses it if either column links it.
pub fn plan_close_account(account: &str, profile: Option<&Profile>) -> DeletePlan {
    match profile {
        Some(p) if p.customer_id.as_deref() == Some(account) || p.connect_account_id.as_deref() == Some(account) => {
            DeletePlan::InUse
        }
        _ => DeletePlan::Delete(account.to_string()),
    }
}

/// What an `update_customer_email` job does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmailPlan {
    /// Nothing to do (profile gone, or it links another customer now).
    Skip(String),
    Unusable(String),
    Update(String),
}

/// `first_email` is what the job's first attempt sent, resent as is under the same key; a later
/// change gets a job of its own once this one is done.
pub fn plan_email_update(customer: &str, profile: Option<&Profile>, first_email: Option<&str>) -> EmailPlan {
    let Some(profile) = profile else { return EmailPlan::Skip("profile not found".into()) };
    if profile.customer_id.as_deref() != Some(customer) {
        return EmailPlan::Skip(format!("the profile no longer links {customer}"));
    }
    if let Some(sent) = first_email {
        return EmailPlan::Update(sent.to_string());
    }
    match profile.email.as_deref().map(str::trim) {
        None | Some("") => EmailPlan::Unusable("profile has no email".into()),
        Some(email) => match check_email(email) {
            Ok(()) => EmailPlan::Update(email.to_string()),
            Err(why) => EmailPlan::Unusable(why),
        },
    }
}

/// What a `create_connect_account` job does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountPlan {
    ProfileGone,
    AlreadyProvisioned(String),
    /// Connect accounts come after the customer: wait for it.
    WaitForCustomer,
    Unusable(String),
    Create(NewAccount),
}

pub fn plan_account(user_id: &str, profile: Option<&Profile>, first_request: Option<NewAccount>) -> AccountPlan {
    let Some(profile) = profile else { return AccountPlan::ProfileGone };
    if let Some(id) = profile.connect_account_id.clone().filter(|id| !id.is_empty()) {
        return AccountPlan::AlreadyProvisioned(id);
    }
    if profile.customer_id.as_deref().is_none_or(str::is_empty) {
        return AccountPlan::WaitForCustomer;
    }
    if let Some(request) = first_request {
        return AccountPlan::Create(request);
    }
    match profile.email.as_deref().map(str::trim) {
        None | Some("") => AccountPlan::Unusable("profile has no email".into()),
        Some(email) => match check_email(email) {
            Ok(()) => AccountPlan::Create(NewAccount { user_id: user_id.into(), email: email.into() }),
            Err(why) => AccountPlan::Unusable(why),
        },
    }
}

/// Where a job goes after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    RetryIn(Duration),
    Dead,
}

pub fn after_failure(
    attempts: u32,
    max_attempts: u32,
    disposition: Disposition,
    backoff: &Backoff,
    rng: &mut impl Rng,
) -> AfterFailure {
    match disposition {
        Disposition::Retry { rate_limited } if attempts < max_attempts => {
            AfterFailure::RetryIn(backoff.delay(attempts, rate_limited, rng))
        }
        Disposition::LookUpFirst | Disposition::OutcomeUnknown if attempts < max_attempts => {
            AfterFailure::RetryIn(backoff.delay(1, false, rng))
        }
        _ => AfterFailure::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(email: Option<&str>, customer: Option<&str>) -> Option<Profile> {
        Some(Profile { email: email.map(Into::into), customer_id: customer.map(Into::into), connect_account_id: None })
    }

    #[test]
    fn plans_follow_the_profile() {
        assert_eq!(plan_customer("u1", None, None), CustomerPlan::ProfileGone);
        let sent = NewCustomer { user_id: "u1".into(), email: "a@b.co".into() };
        assert_eq!(plan_customer("u1", None, Some(sent.clone())), CustomerPlan::CleanUp(sent));
        assert_eq!(
            plan_customer("u1", profile(Some("a@b.co"), Some("cus_1")), None),
            CustomerPlan::AlreadyProvisioned("cus_1".into())
        );
        assert_eq!(
            plan_customer("u1", profile(Some(" a@b.co "), None), None),
            CustomerPlan::Create(NewCustomer { user_id: "u1".into(), email: "a@b.co".into() })
        );
        assert!(matches!(plan_customer("u1", profile(None, None), None), CustomerPlan::Unusable(_)));
        assert!(matches!(plan_customer("u1", profile(Some("  "), None), None), CustomerPlan::Unusable(_)));
        assert!(matches!(plan_customer("u1", profile(Some("nope"), None), None), CustomerPlan::Unusable(_)));
        // A retry resends the first attempt's request, whatever the profile says now.
        let first = NewCustomer { user_id: "u1".into(), email: "first@b.co".into() };
        assert_eq!(
            plan_customer("u1", profile(Some("changed"), None), Some(first.clone())),
            CustomerPlan::Create(first)
        );
        assert!(matches!(
            plan_customer(&"x".repeat(501), profile(Some("a@b.co"), None), None),
            CustomerPlan::Unusable(_)
        ));
    }

    #[test]
    fn compensation_never_deletes_a_customer_in_use() {
        let linked = profile(Some("a@b.co"), Some("cus_1"));
        assert_eq!(plan_delete("cus_1", linked.as_ref()), DeletePlan::InUse);
        let other = profile(Some("a@b.co"), Some("cus_2"));
        assert_eq!(plan_delete("cus_1", other.as_ref()), DeletePlan::Delete("cus_1".into()));
        assert_eq!(plan_delete("cus_1", None), DeletePlan::Delete("cus_1".into()));
    }

    #[test]
    fn an_account_is_never_closed_while_either_column_links_it() {
        let both =
            Profile { email: None, customer_id: Some("acct_1".into()), connect_account_id: Some("acct_1".into()) };
        let connect_only = Profile { customer_id: Some("acct_2".into()), ..both.clone() };
        assert_eq!(plan_close_account("acct_1", Some(&both)), DeletePlan::InUse);
        assert_eq!(plan_close_account("acct_1", Some(&connect_only)), DeletePlan::InUse);
        assert_eq!(plan_close_account("acct_3", Some(&both)), DeletePlan::Delete("acct_3".into()));
        assert_eq!(plan_close_account("acct_1", None), DeletePlan::Delete("acct_1".into()));
    }

    #[test]
    fn email_updates_follow_the_profile() {
        let linked = profile(Some(" new@b.co "), Some("cus_1"));
        assert_eq!(plan_email_update("cus_1", linked.as_ref(), None), EmailPlan::Update("new@b.co".into()));
        assert_eq!(
            plan_email_update("cus_1", linked.as_ref(), Some("first@b.co")),
            EmailPlan::Update("first@b.co".into())
        );
        assert!(matches!(plan_email_update("cus_2", linked.as_ref(), None), EmailPlan::Skip(_)));
        assert!(matches!(plan_email_update("cus_1", None, None), EmailPlan::Skip(_)));
        let bad = profile(Some("nope"), Some("cus_1"));
        assert!(matches!(plan_email_update("cus_1", bad.as_ref(), None), EmailPlan::Unusable(_)));
    }

    #[test]
    fn accounts_come_after_the_customer() {
        let with = |customer: Option<&str>, account: Option<&str>| Profile {
            email: Some("a@b.co".into()),
            customer_id: customer.map(Into::into),
            connect_account_id: account.map(Into::into),
        };
        assert_eq!(plan_account("u", None, None), AccountPlan::ProfileGone);
        assert_eq!(plan_account("u", Some(&with(None, None)), None), AccountPlan::WaitForCustomer);
        assert_eq!(
            plan_account("u", Some(&with(Some("cus_1"), Some("acct_1"))), None),
            AccountPlan::AlreadyProvisioned("acct_1".into())
        );
        assert_eq!(
            plan_account("u", Some(&with(Some("cus_1"), None)), None),
            AccountPlan::Create(NewAccount { user_id: "u".into(), email: "a@b.co".into() })
        );
    }

    #[test]
    fn email_check_catches_garbage_only() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org", "x@localhost"] {
            assert_eq!(check_email(ok), Ok(()), "{ok}");
        }
        for bad in ["", "plain", "@b.co", "a@", "a@b@c", "a b@c.d", &format!("{}@b.co", "a".repeat(600))] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failures_retry_until_attempts_run_out() {
        let backoff = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        let retry = Disposition::Retry { rate_limited: false };
        let mut rng = rand::rng();
        assert!(matches!(after_failure(1, 3, retry, &backoff, &mut rng), AfterFailure::RetryIn(_)));
        assert_eq!(after_failure(3, 3, retry, &backoff, &mut rng), AfterFailure::Dead);
        assert_eq!(after_failure(1, 3, Disposition::Permanent, &backoff, &mut rng), AfterFailure::Dead);
    }
}
