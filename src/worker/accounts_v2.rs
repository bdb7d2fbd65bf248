//! The Stripe side of an accounts_v2 table's jobs: the same jobs as v1's (the profile's customer,
//! its Connect account, compensation, email sync), done on one Accounts v2 Account. Its customer
//! job makes the Account with the customer configuration; its Connect job adds the merchant and
//! recipient configurations to it; compensation closes it; an email sync sets its contact email.
//! calls.rs plans v1 jobs and dispatches these here; record.rs records both alike.
//!
//! v2 idempotency differs from v1's: a failed request is completed under the same key, a success
//! replayed, another body refused (`policy::classify_v2`). So a retry resends exactly the first
//! attempt's body (rebuilt from `jobs.request_params`), and the Account look-up, which walks an
//! eventually consistent list, is trusted to say "absent" only once the list has settled.

use std::time::Duration;

use onboarding_core::job::{
    AccountPlan, CustomerPlan, DeletePlan, EmailPlan, plan_account, plan_close_account, plan_customer,
    plan_email_update,
};
use onboarding_core::policy::{v2_clean_up_close_key, v2_not_found_is_absent};
use onboarding_core::state::{JobKind, Success, Transition};
use onboarding_core::stripe::v2::{
    ACCOUNTS_PATH, Account, AccountLookUp, AccountUpdate, Dashboard, FeesCollector, LossesCollector, NewAccount,
    Responsibilities,
};
use onboarding_core::stripe::{StripeClient, StripeError};
use serde_json::{Value, json};

use crate::queries::jobs::{AccountsV2Table, ClaimedJob};
use crate::worker::outcome::Outcome;

/// What a claimed accounts_v2 job needs, as [`plan`] decided (calls.rs turns it into its `Planned`).
pub enum V2Plan {
    /// A call, with what its first attempt sends (`jobs.request_params`), if this is it.
    Call(V2Work, Option<Value>),
    /// No call: the job moves on at once, with this event detail.
    Finish(Transition, Value),
    /// A Connect job whose Account is still being made.
    WaitForCustomer,
}

/// What an accounts_v2 job sends.
pub enum V2Work {
    /// The profile's Account, with the customer configuration; with `look_up`, first look for one
    /// Stripe holds for the user (the key may be gone, or was refused).
    Create {
        account: NewAccount,
        look_up: bool,
    },
    /// The Connect policy: the merchant and recipient configurations added to the Account.
    Configure {
        account: String,
        update: AccountUpdate,
        capabilities: Value,
    },
    /// Compensation: the Account closed, all of its configurations.
    Close(String),
    UpdateEmail {
        account: String,
        email: String,
    },
    /// The profile vanished after an attempt whose answer was lost: close whatever Account that
    /// attempt made, found by `metadata.user_id`.
    CleanUp,
}

impl V2Work {
    pub fn describe(&self, user_id: &str) -> String {
        match self {
            V2Work::Create { look_up: false, .. } => format!("creating Stripe Account (v2) for user {user_id}"),
            V2Work::Create { look_up: true, .. } => {
                format!("looking up or creating Stripe Account (v2) for user {user_id}")
            }
            V2Work::Configure { account, .. } => {
                format!("making Stripe Account {account} of user {user_id} a connected account")
            }
            V2Work::Close(account) => format!("closing Stripe Account {account} of user {user_id} (compensation)"),
            V2Work::UpdateEmail { account, .. } => {
                format!("updating the contact email of Stripe Account {account} of user {user_id}")
            }
            V2Work::CleanUp => {
                format!("looking for an Account of deleted user {user_id} to close (compensation)")
            }
        }
    }

    /// The `stripe_request` event's detail (what is sent, never the key's secret).
    pub fn request(&self, job: &ClaimedJob) -> Value {
        let attempt = job.attempts;
        match self {
            V2Work::Create { account, look_up } => json!({
                "method": "POST", "path": ACCOUNTS_PATH, "attempt": attempt, "idempotency_key": job.idempotency_key,
                "email": account.contact_email, "look_up_first": look_up,
            }),
            V2Work::Configure { account, capabilities, .. } => json!({
                "method": "POST", "path": format!("{ACCOUNTS_PATH}/{account}"), "attempt": attempt,
                "idempotency_key": job.idempotency_key, "configuration": capabilities,
            }),
            V2Work::Close(account) => json!({
                "method": "POST", "path": format!("{ACCOUNTS_PATH}/{account}/close"), "attempt": attempt,
            }),
            V2Work::UpdateEmail { account, email } => json!({
                "method": "POST", "path": format!("{ACCOUNTS_PATH}/{account}"), "attempt": attempt,
                "idempotency_key": job.idempotency_key, "email": email,
            }),
            V2Work::CleanUp => json!({
                "method": "GET", "path": ACCOUNTS_PATH, "attempt": attempt,
                "reason": "profile deleted after an attempt whose answer was lost",
            }),
        }
    }

    pub fn is_post(&self) -> bool {
        !matches!(self, V2Work::CleanUp)
    }

    pub fn is_connect(&self) -> bool {
        matches!(self, V2Work::Configure { .. })
    }

    pub async fn perform(
        &self,
        client: &StripeClient,
        user_id: &str,
        key: &str,
        made_for_others: &[String],
        since_first_attempt: Duration,
    ) -> Outcome {
        let v2 = client.v2();
        match self {
            V2Work::Create { account, look_up } => {
                if *look_up {
                    match v2.find_account(user_id, made_for_others).await {
                        Ok(AccountLookUp::Found { account, .. }) => return Outcome::Adopted(account.summary()),
                        Ok(AccountLookUp::NotFound { .. }) => {
                            if let Err(wait) = v2_not_found_is_absent(since_first_attempt) {
                                return Outcome::NotYetListed(wait);
                            }
                        }
                        Ok(AccountLookUp::Undecided(reason)) => return Outcome::Undecided(reason),
                        Err(error) => return Outcome::Failed(error),
                    }
                }
                match v2.create_account(account, key).await {
                    Ok((made, response)) => Outcome::Created(made.summary(), response),
                    Err(error) => Outcome::Failed(error),
                }
            }
            V2Work::Configure { account, update, .. } => match v2.update_account(account, update, key).await {
                Ok((configured, response)) => Outcome::Created(configured.summary(), response),
                Err(error) => Outcome::Failed(error),
            },
            V2Work::Close(account) => close(client, account, key).await,
            V2Work::UpdateEmail { account, email } => {
                match v2.update_account(account, &AccountUpdate::new().contact_email(email), key).await {
                    Ok((_, response)) => Outcome::EmailUpdated(response),
                    Err(error) => Outcome::Failed(error),
                }
            }
            V2Work::CleanUp => match v2.find_account(user_id, made_for_others).await {
                Ok(AccountLookUp::Found { account, .. }) => {
                    close(client, &account.id, &v2_clean_up_close_key(key)).await
                }
                Ok(AccountLookUp::NotFound { .. }) => match v2_not_found_is_absent(since_first_attempt) {
                    Ok(()) => Outcome::NothingToCleanUp,
                    Err(wait) => Outcome::NotYetListed(wait),
                },
                Ok(AccountLookUp::Undecided(reason)) => Outcome::Undecided(reason),
                Err(error) => Outcome::Failed(error),
            },
        }
    }
}

/// Closes an Account: "all configurations on the Account must be passed in", so it is read first.
/// One closed already, or unknown, counts as closed.
async fn close(client: &StripeClient, id: &str, key: &str) -> Outcome {
    let v2 = client.v2();
    let gone = |error: &StripeError| matches!(error, StripeError::Api(e) if e.status == 404);
    let current = match v2.retrieve_account(id, &[]).await {
        Ok(body) => Account::from_json(&body),
        Err(error) if gone(&error) => return Outcome::Deleted { object: id.to_string(), response: None },
        Err(error) => return Outcome::Failed(error),
    };
    let Some(current) = current else {
        return Outcome::Failed(StripeError::InvalidResponse {
            status: 200,
            request_id: None,
            message: "the body is not a v2 Account with an id".into(),
        });
    };
    if current.closed {
        return Outcome::Deleted { object: id.to_string(), response: None };
    }
    match v2.close_account(id, &current.applied_configurations, key).await {
        Ok((_, response)) => Outcome::Deleted { object: id.to_string(), response: Some(response) },
        Err(error) if gone(&error) => Outcome::Deleted { object: id.to_string(), response: None },
        Err(error) => Outcome::Failed(error),
    }
}

/// What the first attempt of a creation sends, stored (`jobs.request_params`) so that every retry
/// sends exactly the same body: `email` and `user_id` as v1's (the write-back compares the email),
/// and only what differs from the defaults (the Express equivalent: a job row carries it through
/// each of its moves, so a signup writes no more than a v1 one). Should the defaults change under a
/// job in flight, its retry sends another body: Stripe refuses the key (`idempotency_error`) and
/// the job looks its Account up first, as after any refusal.
fn creation_params(account: &NewAccount) -> Value {
    let mut params = json!({"email": account.contact_email, "user_id": account.user_id});
    if let Some(name) = &account.display_name {
        params["display_name"] = json!(name);
    }
    if account.dashboard != Dashboard::default() {
        params["dashboard"] = json!(account.dashboard.as_str());
    }
    let Responsibilities { fees_collector, losses_collector } = account.responsibilities;
    if fees_collector != FeesCollector::default() {
        params["fees_collector"] = json!(fees_collector.as_str());
    }
    if losses_collector != LossesCollector::default() {
        params["losses_collector"] = json!(losses_collector.as_str());
    }
    params
}

/// An Account to make for `user_id`: the write-back needs its id, `metadata.user_id` and contact
/// email only, so nothing is asked to be included in the answer (smaller answers, at every signup).
fn new_account(user_id: impl Into<String>, email: impl Into<String>) -> NewAccount {
    NewAccount { include: Vec::new(), ..NewAccount::new(user_id, email) }
}

/// The first attempt's Account, from what [`creation_params`] stored; `None` if unreadable.
fn stored_creation(params: &Value) -> Option<NewAccount> {
    let text = |key: &str| params.get(key).and_then(Value::as_str);
    let mut account = new_account(text("user_id")?, text("email")?);
    account.display_name = text("display_name").map(String::from);
    if let Some(name) = text("dashboard") {
        account.dashboard = Dashboard::parse(name)?;
    }
    if let Some(name) = text("fees_collector") {
        account.responsibilities.fees_collector = FeesCollector::parse(name)?;
    }
    if let Some(name) = text("losses_collector") {
        account.responsibilities.losses_collector = LossesCollector::parse(name)?;
    }
    Some(account)
}

/// Plans a claimed job of an accounts_v2 table, as `calls::plan` does a v1 job's.
pub fn plan(job: &ClaimedJob, kind: JobKind, table: &AccountsV2Table) -> V2Plan {
    let user_id = job.user_id.as_str();
    let target = || job.stripe_id.clone().unwrap_or_default();
    let (work, first_params) = match kind {
        JobKind::CreateCustomer => {
            // plan_customer judges the profile as for v1 (gone, provisioned, unusable email); a
            // retry resends the stored body.
            let stored = job.request_params.as_ref().and_then(stored_creation);
            let first = stored.as_ref().map(|a| onboarding_core::stripe::NewCustomer {
                user_id: a.user_id.clone(),
                email: a.contact_email.clone(),
            });
            match plan_customer(user_id, job.profile.clone(), first) {
                CustomerPlan::ProfileGone => {
                    return V2Plan::Finish(
                        Transition::skip("profile not found"),
                        json!({"reason": "profile not found"}),
                    );
                }
                CustomerPlan::CleanUp(_) => (V2Work::CleanUp, None),
                CustomerPlan::AlreadyProvisioned(existing) => {
                    let detail = json!({"reason": "profile already has an Account", "stripe_id": existing});
                    let done = Transition::Succeed { how: Success::AlreadyThere, stripe_id: None };
                    return V2Plan::Finish(done, detail);
                }
                CustomerPlan::Unusable(reason) => {
                    return V2Plan::Finish(Transition::die(&reason), json!({"reason": reason}));
                }
                CustomerPlan::Create(customer) => {
                    let look_up = job.look_up_first;
                    match stored {
                        Some(account) => (V2Work::Create { account, look_up }, None),
                        None => {
                            let mut account = new_account(customer.user_id, customer.email);
                            account.display_name = table
                                .display_name
                                .as_deref()
                                .map(str::trim)
                                .filter(|n| !n.is_empty())
                                .map(String::from);
                            account.dashboard = table.options.dashboard;
                            account.responsibilities = table.options.responsibilities;
                            let params = creation_params(&account);
                            (V2Work::Create { account, look_up }, Some(params))
                        }
                    }
                }
            }
        }
        JobKind::CreateConnectAccount => {
            // The same Account, so "after the customer" means: once the Account is on the profile.
            match plan_account(user_id, job.profile.as_ref(), None) {
                AccountPlan::ProfileGone => {
                    return V2Plan::Finish(
                        Transition::skip("profile not found"),
                        json!({"reason": "profile not found"}),
                    );
                }
                AccountPlan::AlreadyProvisioned(existing) => {
                    let detail = json!({"reason": "profile already has a connected Account", "stripe_id": existing});
                    let done = Transition::Succeed { how: Success::AlreadyThere, stripe_id: None };
                    return V2Plan::Finish(done, detail);
                }
                AccountPlan::WaitForCustomer => return V2Plan::WaitForCustomer,
                AccountPlan::Unusable(_) | AccountPlan::Create(_) => {
                    let account = job.profile.as_ref().and_then(|p| p.customer_id.clone()).unwrap_or_default();
                    // Retries send the first attempt's configurations, whatever the options are now.
                    let stored = job.request_params.as_ref().and_then(|p| p.get("configuration")).cloned();
                    let capabilities = stored.clone().unwrap_or_else(|| {
                        let chosen = table.options.to_json();
                        json!({"merchant": chosen["merchant"], "recipient": chosen["recipient"]})
                    });
                    let options = onboarding_core::stripe::v2::AccountOptions::from_json(&capabilities)
                        .unwrap_or_else(|_| table.options.clone());
                    let params = stored.is_none().then(|| json!({"user_id": user_id, "configuration": capabilities}));
                    (V2Work::Configure { account, update: options.connect_update(), capabilities }, params)
                }
            }
        }
        JobKind::DeleteCustomer | JobKind::DeleteConnectAccount => {
            match plan_close_account(&target(), job.profile.as_ref()) {
                DeletePlan::InUse => {
                    let detail = json!({"reason": "the profile links this Account again", "stripe_id": target()});
                    return V2Plan::Finish(Transition::skip("the profile links this Account again"), detail);
                }
                DeletePlan::Delete(account) => (V2Work::Close(account), None),
            }
        }
        JobKind::UpdateCustomerEmail => {
            let first_email = job.request_params.as_ref().and_then(|p| p.get("email")).and_then(Value::as_str);
            match plan_email_update(&target(), job.profile.as_ref(), first_email) {
                EmailPlan::Skip(reason) => return V2Plan::Finish(Transition::skip(&reason), json!({"reason": reason})),
                EmailPlan::Unusable(reason) => {
                    return V2Plan::Finish(Transition::die(&reason), json!({"reason": reason}));
                }
                EmailPlan::Update(email) => {
                    let params = first_email.is_none().then(|| json!({"email": email, "user_id": user_id}));
                    (V2Work::UpdateEmail { account: target(), email }, params)
                }
            }
        }
    };
    V2Plan::Call(work, first_params)
}
