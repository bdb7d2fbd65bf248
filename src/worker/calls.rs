//! The Stripe side of a job: what a claimed job needs ([`plan`], around core's planning; it runs
//! no SQL), the [`Call`] that does it and the [`Outcome`] it comes back with. The claim (claim.rs)
//! carries out the plans, the loop (worker.rs) runs the calls, record.rs records their outcomes.

use std::time::{Duration, SystemTime};

use onboarding_core::job::{
    AccountPlan, CustomerPlan, DeletePlan, EmailPlan, plan_account, plan_customer, plan_delete, plan_email_update,
};
use onboarding_core::state::{JobKind, Success, Transition};
use onboarding_core::stripe::{LookUp, NewAccount, NewCustomer, Response, StripeClient, StripeError, StripeObject};
use pgrx::prelude::*;
use serde_json::{Value, json};

use crate::queries::jobs::ClaimedJob;
use crate::worker::accounts_v2::{self, V2Plan, V2Work};
pub use crate::worker::outcome::Outcome;

/// A claimed job that needs a Stripe call.
pub struct Call {
    pub job_id: i64,
    pub user_id: String,
    pub attempts: u32,
    /// Lane 0 (a signup or an application's request) does not queue behind other calls for the
    /// rate budget.
    pub lane: i16,
    idempotency_key: String,
    pub work: Work,
    /// When its first request went out, after the rate budget's wait (set by the call itself):
    /// its `stripe_request` event, logged at the claim, is moved to this time.
    pub sent_at: Option<SystemTime>,
    /// What a look-up by `metadata.user_id` must never find: the objects this extension made for
    /// another table's profile with the same user id.
    made_for_others: Vec<String>,
    /// How long ago its first attempt was claimed: what an Accounts v2 look-up's "not found" is worth.
    since_first_attempt: Duration,
}

pub enum Work {
    /// With `look_up` (the emails to search by), first look for a customer Stripe already holds for
    /// the user: past the idempotency horizon, or after Stripe refused the key.
    CreateCustomer {
        customer: NewCustomer,
        look_up: Option<Vec<String>>,
    },
    /// Compensation: delete a customer no profile can use.
    DeleteCustomer(String),
    /// With `look_up`, first look for an account Stripe already holds for the user (same cases as
    /// customers).
    CreateAccount {
        account: NewAccount,
        look_up: bool,
    },
    DeleteAccount(String),
    /// Copy the profile's changed email to its customer.
    UpdateEmail {
        customer: String,
        email: String,
    },
    /// The profile vanished after an attempt whose answer was lost: delete whatever customer that
    /// attempt created, found by `metadata.user_id` (the list by these emails is consistent).
    CleanUpCustomer {
        emails: Vec<String>,
    },
    /// A job of an accounts_v2 table: the same jobs, done on one Accounts v2 Account (accounts_v2.rs).
    AccountsV2(V2Work),
}

impl Call {
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }

    pub fn describe(&self) -> String {
        match &self.work {
            Work::CreateCustomer { look_up: None, .. } => format!("creating Stripe customer for user {}", self.user_id),
            Work::CreateCustomer { look_up: Some(_), .. } => {
                format!("looking up or creating Stripe customer for user {}", self.user_id)
            }
            Work::DeleteCustomer(id) => {
                format!("deleting Stripe customer {id} of user {} (compensation)", self.user_id)
            }
            Work::CreateAccount { look_up: false, .. } => {
                format!("creating Stripe Connect account for user {}", self.user_id)
            }
            Work::CreateAccount { look_up: true, .. } => {
                format!("looking up or creating Stripe Connect account for user {}", self.user_id)
            }
            Work::DeleteAccount(id) => {
                format!("deleting Stripe Connect account {id} of user {} (compensation)", self.user_id)
            }
            Work::UpdateEmail { customer, .. } => {
                format!("updating the email of Stripe customer {customer} of user {}", self.user_id)
            }
            Work::CleanUpCustomer { .. } => {
                format!("looking for a customer of deleted user {} to delete (compensation)", self.user_id)
            }
            Work::AccountsV2(work) => work.describe(&self.user_id),
        }
    }

    /// Whether it speaks API v2 (whose failures `policy::classify_v2` reads).
    pub fn is_v2(&self) -> bool {
        matches!(self.work, Work::AccountsV2(_))
    }

    /// Whether it sends a POST (whose 500 Stripe keeps under its idempotency key).
    pub fn is_post(&self) -> bool {
        match &self.work {
            Work::CreateCustomer { .. } | Work::CreateAccount { .. } | Work::UpdateEmail { .. } => true,
            Work::AccountsV2(work) => work.is_post(),
            _ => false,
        }
    }

    /// What it undoes a lost attempt of (the profile is gone): its outcome skips the job.
    pub fn cleans_up(&self) -> bool {
        matches!(self.work, Work::CleanUpCustomer { .. } | Work::AccountsV2(V2Work::CleanUp))
    }

    /// Whether the call is Connect's (an account to create or delete): a key without Connect's
    /// permissions holds these back only.
    pub fn is_connect(&self) -> bool {
        match &self.work {
            Work::CreateAccount { .. } | Work::DeleteAccount(_) => true,
            Work::AccountsV2(work) => work.is_connect(),
            _ => false,
        }
    }

    pub async fn perform(&self, client: &StripeClient) -> Outcome {
        match &self.work {
            Work::CreateCustomer { customer, look_up } => {
                let emails: Option<Vec<&str>> = look_up.as_ref().map(|e| e.iter().map(String::as_str).collect());
                let find = emails
                    .as_deref()
                    .map(|emails| client.find_customer_except(&self.user_id, emails, &self.made_for_others));
                look_up_or_create(find, client.create_customer(customer, &self.idempotency_key)).await
            }
            Work::DeleteCustomer(id) => delete(client, StripeCollection::Customers, id).await,
            Work::CreateAccount { account, look_up } => {
                let find = look_up.then(|| client.find_account_except(&self.user_id, &self.made_for_others));
                look_up_or_create(find, client.create_account(account, &self.idempotency_key)).await
            }
            Work::DeleteAccount(id) => delete(client, StripeCollection::Accounts, id).await,
            Work::UpdateEmail { customer, email } => {
                match client.update_customer_email(customer, email, &self.idempotency_key).await {
                    Ok((_, response)) => Outcome::EmailUpdated(response),
                    Err(error) => Outcome::Failed(error),
                }
            }
            Work::CleanUpCustomer { emails } => {
                let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
                match client.find_customer_except(&self.user_id, &emails, &self.made_for_others).await {
                    Ok(LookUp::Found(found)) => delete(client, StripeCollection::Customers, &found.id).await,
                    Ok(LookUp::NotFound) => Outcome::NothingToCleanUp,
                    Ok(LookUp::Undecided(reason)) => Outcome::Undecided(reason),
                    Err(error) => Outcome::Failed(error),
                }
            }
            Work::AccountsV2(work) => {
                let key = &self.idempotency_key;
                work.perform(client, &self.user_id, key, &self.made_for_others, self.since_first_attempt).await
            }
        }
    }
}

/// Adopts what `find` finds, if there is a `find`; otherwise runs `create` (futures are lazy: it
/// sends nothing unless awaited).
async fn look_up_or_create(
    find: Option<impl Future<Output = Result<LookUp, StripeError>>>,
    create: impl Future<Output = Result<(StripeObject, Response), StripeError>>,
) -> Outcome {
    if let Some(find) = find {
        match find.await {
            Ok(LookUp::Found(existing)) => return Outcome::Adopted(existing),
            Ok(LookUp::NotFound) => {}
            Ok(LookUp::Undecided(reason)) => return Outcome::Undecided(reason),
            Err(error) => return Outcome::Failed(error),
        }
    }
    match create.await {
        Ok((created, response)) => Outcome::Created(created, response),
        Err(error) => Outcome::Failed(error),
    }
}

enum StripeCollection {
    Customers,
    Accounts,
}

/// Deletes a customer or account; one already gone counts as deleted (customers answer 404
/// `resource_missing`, unknown accounts 403 `account_invalid` or 404).
async fn delete(client: &StripeClient, collection: StripeCollection, id: &str) -> Outcome {
    let result = match collection {
        StripeCollection::Customers => client.delete_customer(id).await,
        StripeCollection::Accounts => client.delete_account(id).await,
    };
    match result {
        Ok(response) => Outcome::Deleted { object: id.to_string(), response: Some(response) },
        Err(StripeError::Api(e))
            if e.status == 404 || (e.status == 403 && e.code.as_deref() == Some("account_invalid")) =>
        {
            Outcome::Deleted { object: id.to_string(), response: None }
        }
        Err(error) => Outcome::Failed(error),
    }
}

/// What a claimed job needs, as [`plan`] decided.
pub enum Planned {
    /// No Stripe call: the job moves on at once, with this event detail.
    Finish(Transition, Value),
    /// A Connect account whose customer is still being created: postponed behind it.
    WaitForCustomer,
    /// A creation job that holds its object already (its write-back found the profile's row
    /// locked): write it back, no Stripe call.
    WriteBack(String),
    /// A call to start, with its `stripe_request` event detail and, for a first attempt, what it
    /// sends (`jobs.request_params`).
    Call { call: Box<Call>, first_params: Option<Value>, request: Value },
}

/// Decides what a claimed job needs (inside the claim transaction, which carries it out): jobs
/// that need no Stripe call are finished at once; the others get their `stripe_request` event and
/// become a [`Call`].
pub fn plan(job: ClaimedJob) -> Planned {
    let (id, user_id) = (job.id, job.user_id.as_str());
    // What a first attempt sends, stored before it is sent (retries resend it).
    let mut first_params = None;
    let Some(kind) = JobKind::parse(&job.kind) else {
        let reason = format!("unknown job kind {:?}", job.kind);
        return Planned::Finish(Transition::die(&reason), json!({"reason": reason}));
    };
    if let (JobKind::CreateCustomer | JobKind::CreateConnectAccount, Some(object)) = (kind, &job.stripe_id) {
        return Planned::WriteBack(object.clone());
    }
    if let Some(table) = &job.accounts_v2 {
        return match accounts_v2::plan(&job, kind, table) {
            V2Plan::Call(work, first_params) => {
                let request = work.request(&job);
                Planned::Call { call: Box::new(Call::new(job, Work::AccountsV2(work))), first_params, request }
            }
            V2Plan::Finish(transition, detail) => Planned::Finish(transition, detail),
            V2Plan::WaitForCustomer => Planned::WaitForCustomer,
        };
    }
    let work = match kind {
        JobKind::CreateCustomer => match plan_customer(user_id, job.profile.clone(), job.first_request.clone()) {
            CustomerPlan::ProfileGone => {
                log!("onboarding: profile of user {user_id} no longer exists; skipping job {id}");
                return Planned::Finish(Transition::skip("profile not found"), json!({"reason": "profile not found"}));
            }
            CustomerPlan::CleanUp(sent) => Work::CleanUpCustomer { emails: vec![sent.email] },
            CustomerPlan::AlreadyProvisioned(existing) => {
                // The job's stripe_id names only objects it created; this one it found.
                let detail = json!({"reason": "profile already has a customer", "stripe_id": existing});
                return Planned::Finish(Transition::Succeed { how: Success::AlreadyThere, stripe_id: None }, detail);
            }
            CustomerPlan::Unusable(reason) => {
                warning!("onboarding: not creating a Stripe customer for user {user_id}: {reason} (job {id})");
                return Planned::Finish(Transition::die(&reason), json!({"reason": reason}));
            }
            CustomerPlan::Create(customer) => {
                if job.first_request.is_none() {
                    first_params = Some(request_params(&customer.email, user_id));
                }
                let look_up = job.look_up_first.then(|| {
                    let current = job.profile.as_ref().and_then(|p| p.email.clone());
                    let mut emails = vec![customer.email.clone()];
                    emails.extend(current.filter(|e| *e != customer.email));
                    emails
                });
                Work::CreateCustomer { customer, look_up }
            }
        },
        JobKind::DeleteCustomer => {
            let target = job.stripe_id.clone().unwrap_or_default();
            match plan_delete(&target, job.profile.as_ref()) {
                DeletePlan::InUse => {
                    let detail = json!({"reason": "the profile links this customer again", "stripe_id": target});
                    return Planned::Finish(Transition::skip("the profile links this customer again"), detail);
                }
                DeletePlan::Delete(customer) => Work::DeleteCustomer(customer),
            }
        }
        JobKind::CreateConnectAccount => {
            let first =
                job.first_request.as_ref().map(|r| NewAccount { user_id: r.user_id.clone(), email: r.email.clone() });
            match plan_account(user_id, job.profile.as_ref(), first) {
                AccountPlan::ProfileGone => {
                    return Planned::Finish(
                        Transition::skip("profile not found"),
                        json!({"reason": "profile not found"}),
                    );
                }
                AccountPlan::AlreadyProvisioned(existing) => {
                    let detail = json!({"reason": "profile already has a Connect account", "stripe_id": existing});
                    return Planned::Finish(
                        Transition::Succeed { how: Success::AlreadyThere, stripe_id: None },
                        detail,
                    );
                }
                AccountPlan::WaitForCustomer => return Planned::WaitForCustomer,
                AccountPlan::Unusable(reason) => {
                    return Planned::Finish(Transition::die(&reason), json!({"reason": reason}));
                }
                AccountPlan::Create(account) => {
                    if job.first_request.is_none() {
                        first_params = Some(request_params(&account.email, user_id));
                    }
                    Work::CreateAccount { account, look_up: job.look_up_first }
                }
            }
        }
        JobKind::DeleteConnectAccount => {
            let target = job.stripe_id.clone().unwrap_or_default();
            if job.profile.as_ref().and_then(|p| p.connect_account_id.as_deref()) == Some(target.as_str()) {
                let detail = json!({"reason": "the profile links this account again", "stripe_id": target});
                return Planned::Finish(Transition::skip("the profile links this account again"), detail);
            }
            Work::DeleteAccount(target)
        }
        JobKind::UpdateCustomerEmail => {
            let target = job.stripe_id.clone().unwrap_or_default();
            let first_email = job.first_request.as_ref().map(|r| r.email.as_str());
            match plan_email_update(&target, job.profile.as_ref(), first_email) {
                EmailPlan::Skip(reason) => {
                    return Planned::Finish(Transition::skip(&reason), json!({"reason": reason}));
                }
                EmailPlan::Unusable(reason) => {
                    return Planned::Finish(Transition::die(&reason), json!({"reason": reason}));
                }
                EmailPlan::Update(email) => {
                    if job.first_request.is_none() {
                        first_params = Some(request_params(&email, user_id));
                    }
                    Work::UpdateEmail { customer: target, email }
                }
            }
        }
    };
    let detail = match &work {
        Work::CreateCustomer { customer, look_up } => json!({
            "method": "POST", "path": "/v1/customers", "attempt": job.attempts,
            "idempotency_key": job.idempotency_key, "email": customer.email, "look_up_first": look_up.is_some(),
        }),
        Work::DeleteCustomer(customer) => json!({
            "method": "DELETE", "path": format!("/v1/customers/{customer}"), "attempt": job.attempts,
        }),
        Work::CreateAccount { account, look_up } => json!({
            "method": "POST", "path": "/v1/accounts", "attempt": job.attempts,
            "idempotency_key": job.idempotency_key, "email": account.email,
            "controller": onboarding_core::stripe::express_controller_object(),
            "look_up_first": look_up,
        }),
        Work::DeleteAccount(account) => json!({
            "method": "DELETE", "path": format!("/v1/accounts/{account}"), "attempt": job.attempts,
        }),
        Work::UpdateEmail { customer, email } => json!({
            "method": "POST", "path": format!("/v1/customers/{customer}"), "attempt": job.attempts,
            "idempotency_key": job.idempotency_key, "email": email,
        }),
        Work::CleanUpCustomer { emails } => json!({
            "method": "GET", "path": "/v1/customers", "attempt": job.attempts, "emails": emails,
            "reason": "profile deleted after an attempt whose answer was lost",
        }),
        Work::AccountsV2(work) => work.request(&job),
    };
    Planned::Call { call: Box::new(Call::new(job, work)), first_params, request: detail }
}

impl Call {
    fn new(job: ClaimedJob, work: Work) -> Call {
        Call {
            job_id: job.id,
            user_id: job.user_id,
            attempts: job.attempts,
            lane: job.lane,
            idempotency_key: job.idempotency_key,
            work,
            sent_at: None,
            made_for_others: job.made_for_others,
            since_first_attempt: job.since_first_attempt,
        }
    }
}

/// What a job's first attempt sends (`jobs.request_params`); retries resend exactly that.
fn request_params(email: &str, user_id: &str) -> Value {
    json!({"email": email, "user_id": user_id})
}
