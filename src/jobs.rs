//! What the worker does with each job, as pgrx glue around the pure planning in `core/`:
//! claiming and planning (phase 1), the Stripe call of each job (phase 2), and recording its outcome
//! (phase 3). The loop that drives these phases is in `worker.rs`; the SQL they call is in
//! `sql/onboarding.sql`.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use onboarding_core::job::{
    AccountPlan, AfterFailure, CustomerPlan, DeletePlan, EmailPlan, Profile, after_failure, plan_account,
    plan_customer, plan_delete, plan_email_update,
};
use onboarding_core::policy::classify;
use onboarding_core::state::{JobKind, JobState, Success, Transition};
use onboarding_core::stripe::{NewAccount, NewCustomer, Response, StripeClient, StripeError, StripeObject};
use pgrx::JsonB;
use pgrx::prelude::*;
use serde_json::{Value, json};

use crate::gucs;
use crate::release::{self, Installed};
use crate::worker::in_transaction;

/// A claimed job that needs a Stripe call.
pub struct Call {
    pub job_id: i64,
    pub user_id: String,
    pub attempts: u32,
    idempotency_key: String,
    work: Work,
}

enum Work {
    /// With `look_up` (the emails to search by), first look for a customer Stripe already holds for
    /// the user: past the idempotency horizon, or after Stripe refused the key.
    CreateCustomer {
        customer: NewCustomer,
        look_up: Option<Vec<String>>,
    },
    /// Compensation: delete a customer no profile can use.
    DeleteCustomer(String),
    CreateAccount(NewAccount),
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
}

pub enum Outcome {
    Created(StripeObject, Response),
    /// Found in Stripe by `metadata.user_id` instead of created.
    Adopted(StripeObject),
    /// A customer or account deleted; `response` is `None` when Stripe says it was already gone.
    Deleted {
        object: String,
        response: Option<Response>,
    },
    /// A clean-up found no customer: the earlier attempt never executed.
    NothingToCleanUp,
    EmailUpdated(Response),
    Failed(StripeError),
}

impl Call {
    pub fn describe(&self) -> String {
        match &self.work {
            Work::CreateCustomer { look_up: None, .. } => format!("creating Stripe customer for user {}", self.user_id),
            Work::CreateCustomer { look_up: Some(_), .. } => {
                format!("looking up or creating Stripe customer for user {}", self.user_id)
            }
            Work::DeleteCustomer(id) => {
                format!("deleting Stripe customer {id} of user {} (compensation)", self.user_id)
            }
            Work::CreateAccount(_) => format!("creating Stripe Connect account for user {}", self.user_id),
            Work::DeleteAccount(id) => {
                format!("deleting Stripe Connect account {id} of user {} (compensation)", self.user_id)
            }
            Work::UpdateEmail { customer, .. } => {
                format!("updating the email of Stripe customer {customer} of user {}", self.user_id)
            }
            Work::CleanUpCustomer { .. } => {
                format!("looking for a customer of deleted user {} to delete (compensation)", self.user_id)
            }
        }
    }

    pub async fn perform(&self, client: &StripeClient) -> Outcome {
        match &self.work {
            Work::CreateCustomer { customer, look_up } => {
                if let Some(emails) = look_up {
                    let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
                    match client.find_customer(&self.user_id, &emails).await {
                        Ok(Some(existing)) => return Outcome::Adopted(existing),
                        Ok(None) => {}
                        Err(error) => return Outcome::Failed(error),
                    }
                }
                match client.create_customer(customer, &self.idempotency_key).await {
                    Ok((customer, response)) => Outcome::Created(customer, response),
                    Err(error) => Outcome::Failed(error),
                }
            }
            Work::DeleteCustomer(id) => delete(client, StripeCollection::Customers, id).await,
            Work::CreateAccount(account) => match client.create_account(account, &self.idempotency_key).await {
                Ok((account, response)) => Outcome::Created(account, response),
                Err(error) => Outcome::Failed(error),
            },
            Work::DeleteAccount(id) => delete(client, StripeCollection::Accounts, id).await,
            Work::UpdateEmail { customer, email } => {
                match client.update_customer_email(customer, email, &self.idempotency_key).await {
                    Ok((_, response)) => Outcome::EmailUpdated(response),
                    Err(error) => Outcome::Failed(error),
                }
            }
            Work::CleanUpCustomer { emails } => {
                let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
                match client.find_customer(&self.user_id, &emails).await {
                    Ok(Some(found)) => delete(client, StripeCollection::Customers, &found.id).await,
                    Ok(None) => Outcome::NothingToCleanUp,
                    Err(error) => Outcome::Failed(error),
                }
            }
        }
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

/// Turns up to `at_most` committed inserts into jobs, set-based (see intake.rs). Each claim
/// promotes about as many as it can take, so a backlog waits in the intake, not all at once here.
fn promote_intake(at_most: i32) {
    Spi::get_one_with_args::<i64>("SELECT onboarding._promote_intake($1)", &[at_most.into()])
        .unwrap_or_else(|e| error!("onboarding: turning inserted profiles into jobs: {e}"));
}

/// Promotes inserts until `pending` jobs wait (or the intake is empty).
pub fn top_up_pending(pending: i32) {
    let sql = "SELECT onboarding._promote_intake($1 - (SELECT count(*) FROM (SELECT FROM onboarding.jobs
                                                        WHERE state = $2 LIMIT $1) p)::integer)";
    Spi::get_one_with_args::<i64>(sql, &[pending.into(), JobState::Pending.as_str().into()])
        .unwrap_or_else(|e| error!("onboarding: turning inserted profiles into jobs: {e}"));
}

/// Phase 1. Refuses (with what is installed) unless this database holds this library's SQL.
pub fn claim_and_plan(batch_size: i32, requeue: bool) -> Result<(Vec<Call>, usize, Option<Duration>), Installed> {
    match release::installed() {
        Installed::Current => {}
        other => return Err(other),
    }
    if requeue {
        let requeued = Spi::get_one_with_args::<i32>(
            "SELECT onboarding._requeue_abandoned($1, make_interval(secs => $2))",
            &[(gucs::max_attempts() as i32).into(), gucs::lease().as_secs_f64().into()],
        );
        match requeued {
            Ok(Some(n)) if n > 0 => {
                log!("onboarding: took back {n} job(s) from a worker that exited or overran its lease")
            }
            Ok(_) => {}
            Err(e) => error!("onboarding: requeueing abandoned jobs: {e}"),
        }
        // Retention, a small batch at a time (onboarding.retention).
        Spi::get_one::<i64>("SELECT onboarding.prune()").unwrap_or_else(|e| error!("onboarding: pruning: {e}"));
    }

    promote_intake(batch_size);

    let claimed = Spi::connect_mut(|spi| {
        let rows = spi.update(
            "SELECT * FROM onboarding._claim_jobs($1, make_interval(secs => $2))",
            None,
            &[batch_size.into(), gucs::idempotency_horizon().as_secs_f64().into()],
        )?;
        let mut claimed = Vec::new();
        for row in rows {
            let profile = row
                .get::<bool>(9)?
                .unwrap_or(false)
                .then(|| -> Result<Profile, pgrx::spi::Error> {
                    Ok(Profile { email: row.get(10)?, customer_id: row.get(11)?, connect_account_id: row.get(12)? })
                })
                .transpose()?;
            claimed.push(ClaimedJob {
                id: row.get(1)?.unwrap_or_default(),
                kind: row.get(2)?.unwrap_or_default(),
                user_id: row.get(3)?.unwrap_or_default(),
                idempotency_key: row.get(4)?.unwrap_or_default(),
                attempts: row.get::<i32>(5)?.unwrap_or_default().max(0) as u32,
                stripe_id: row.get(6)?,
                first_request: row.get::<JsonB>(7)?.and_then(|JsonB(v)| {
                    Some(NewCustomer { user_id: v["user_id"].as_str()?.into(), email: v["email"].as_str()?.into() })
                }),
                look_up_first: row.get(8)?.unwrap_or(false),
                profile,
            });
        }
        Ok::<_, pgrx::spi::Error>(claimed)
    })
    .unwrap_or_else(|e| error!("onboarding: claiming jobs: {e}"));

    let claimed_count = claimed.len();
    let mut starting = CallsStarting::default();
    let calls = claimed.into_iter().filter_map(|job| plan(job, &mut starting)).collect();
    starting.record();
    Ok((calls, claimed_count, next_due_in()))
}

/// Time until the next pending job is due (zero if overdue), None if nothing is pending.
fn next_due_in() -> Option<Duration> {
    Spi::get_one::<f64>("SELECT onboarding._next_due_in()")
        .unwrap_or_else(|e| error!("onboarding: reading the next due time: {e}"))
        .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)))
}

struct ClaimedJob {
    id: i64,
    kind: String,
    user_id: String,
    idempotency_key: String,
    attempts: u32,
    stripe_id: Option<String>,
    first_request: Option<NewCustomer>,
    look_up_first: bool,
    profile: Option<Profile>,
}

/// Decides what a claimed job needs, inside the claim transaction: jobs that need no Stripe call
/// are finished here; the others get their `stripe_request` event and become a [`Call`].
fn plan(job: ClaimedJob, starting: &mut CallsStarting) -> Option<Call> {
    let (id, user_id) = (job.id, job.user_id.as_str());
    // What a first attempt sends, stored before it is sent (retries resend it).
    let mut first_params = None;
    let Some(kind) = JobKind::parse(&job.kind) else {
        let reason = format!("unknown job kind {:?}", job.kind);
        finish(id, die(&reason), json!({"reason": reason}));
        return None;
    };
    let work = match kind {
        JobKind::CreateCustomer => match plan_customer(user_id, job.profile.clone(), job.first_request.clone()) {
            CustomerPlan::ProfileGone => {
                log!("onboarding: profile of user {user_id} no longer exists; skipping job {id}");
                finish(id, skip("profile not found"), json!({"reason": "profile not found"}));
                return None;
            }
            CustomerPlan::CleanUp(sent) => Work::CleanUpCustomer { emails: vec![sent.email] },
            CustomerPlan::AlreadyProvisioned(existing) => {
                // The job's stripe_id names only objects it created; this one it found.
                let detail = json!({"reason": "profile already has a customer", "stripe_id": existing});
                finish(id, Transition::Succeed { how: Success::AlreadyThere, stripe_id: None }, detail);
                return None;
            }
            CustomerPlan::Unusable(reason) => {
                warning!("onboarding: not creating a Stripe customer for user {user_id}: {reason} (job {id})");
                finish(id, die(&reason), json!({"reason": reason}));
                return None;
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
                    finish(id, skip("the profile links this customer again"), detail);
                    return None;
                }
                DeletePlan::Delete(customer) => Work::DeleteCustomer(customer),
            }
        }
        JobKind::CreateConnectAccount => {
            let first =
                job.first_request.as_ref().map(|r| NewAccount { user_id: r.user_id.clone(), email: r.email.clone() });
            match plan_account(user_id, job.profile.as_ref(), first) {
                AccountPlan::ProfileGone => {
                    finish(id, skip("profile not found"), json!({"reason": "profile not found"}));
                    return None;
                }
                AccountPlan::AlreadyProvisioned(existing) => {
                    let detail = json!({"reason": "profile already has a Connect account", "stripe_id": existing});
                    finish(id, Transition::Succeed { how: Success::AlreadyThere, stripe_id: None }, detail);
                    return None;
                }
                AccountPlan::WaitForCustomer => {
                    Spi::get_one_with_args::<String>("SELECT onboarding._wait_for_customer($1)", &[id.into()])
                        .unwrap_or_else(|e| error!("onboarding: postponing job {id}: {e}"));
                    return None;
                }
                AccountPlan::Unusable(reason) => {
                    finish(id, die(&reason), json!({"reason": reason}));
                    return None;
                }
                AccountPlan::Create(account) => {
                    if job.first_request.is_none() {
                        first_params = Some(request_params(&account.email, user_id));
                    }
                    Work::CreateAccount(account)
                }
            }
        }
        JobKind::DeleteConnectAccount => {
            let target = job.stripe_id.clone().unwrap_or_default();
            if job.profile.as_ref().and_then(|p| p.connect_account_id.as_deref()) == Some(target.as_str()) {
                let detail = json!({"reason": "the profile links this account again", "stripe_id": target});
                finish(id, skip("the profile links this account again"), detail);
                return None;
            }
            Work::DeleteAccount(target)
        }
        JobKind::UpdateCustomerEmail => {
            let target = job.stripe_id.clone().unwrap_or_default();
            let first_email = job.first_request.as_ref().map(|r| r.email.as_str());
            match plan_email_update(&target, job.profile.as_ref(), first_email) {
                EmailPlan::Skip(reason) => {
                    finish(id, skip(&reason), json!({"reason": reason}));
                    return None;
                }
                EmailPlan::Unusable(reason) => {
                    finish(id, die(&reason), json!({"reason": reason}));
                    return None;
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
        Work::CreateAccount(account) => json!({
            "method": "POST", "path": "/v1/accounts", "attempt": job.attempts,
            "idempotency_key": job.idempotency_key, "email": account.email, "type": "express",
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
    };
    starting.push(id, first_params, detail);
    Some(Call { job_id: id, user_id: job.user_id, attempts: job.attempts, idempotency_key: job.idempotency_key, work })
}

/// Phase 3: all outcomes in one transaction; if that fails, each job on its own, so one bad
/// write-back (say, a failing trigger on the profile table) cannot hold the others hostage.
/// Returns when the next pending job is due, as seen after recording.
pub fn record_results(calls: &[Call], results: Vec<(Outcome, Duration)>) -> Option<Duration> {
    let outcomes: Vec<_> = calls.iter().zip(results).collect();
    let all = in_transaction(
        "recording Stripe results",
        AssertUnwindSafe(|| {
            // Customers created as asked, the common outcome: set-based; everything else one by one.
            let (created, others): (Vec<_>, Vec<_>) =
                outcomes.iter().partition(|(call, (outcome, _))| created_as_asked(call, outcome).is_some());
            record_created(&created);
            for (call, (result, elapsed)) in others {
                record_one(call, result, *elapsed);
            }
            next_due_in()
        }),
    );
    if let Ok(next_due) = all {
        return next_due;
    }
    for (call, (result, elapsed)) in &outcomes {
        let one = in_transaction("recording a Stripe result", AssertUnwindSafe(|| record_one(call, result, *elapsed)));
        if let Err(message) = one {
            let stripe_id = match (&call.work, result) {
                (_, Outcome::Created(customer, _) | Outcome::Adopted(customer)) => Some(customer.id.as_str()),
                (_, Outcome::Deleted { object, .. }) => Some(object.as_str()),
                (Work::DeleteCustomer(id), _) => Some(id.as_str()),
                _ => None,
            };
            let reason = format!("could not record the Stripe result: {message}");
            let _ = in_transaction(
                "parking a job",
                AssertUnwindSafe(|| {
                    let detail = json!({"reason": reason, "stripe_id": stripe_id});
                    let parked = Transition::Die { error: reason.clone(), object: stripe_id.map(Into::into) };
                    finish(call.job_id, parked, detail)
                }),
            );
        }
    }
    Some(Duration::ZERO) // look again at once
}

/// The customer a create_customer call created for its own user (the common outcome), if so.
fn created_as_asked<'a>(call: &Call, outcome: &'a Outcome) -> Option<(&'a StripeObject, &'a Response)> {
    match (&call.work, outcome) {
        (Work::CreateCustomer { .. }, Outcome::Created(customer, response))
            if customer.metadata_user_id.as_deref() == Some(call.user_id.as_str()) =>
        {
            Some((customer, response))
        }
        _ => None,
    }
}

/// Records created customers in one statement (`onboarding._record_created`): responses,
/// write-backs, finished jobs. Jobs it could not write back (the profile vanished or got another
/// customer meanwhile) go through the one-by-one write-back, which handles those cases.
fn record_created(created: &[&(&Call, (Outcome, Duration))]) {
    if created.is_empty() {
        return;
    }
    let mut job_ids = Vec::with_capacity(created.len());
    let mut objects = Vec::with_capacity(created.len());
    let mut responses = Vec::with_capacity(created.len());
    for (call, (outcome, elapsed)) in created {
        let (customer, response) = created_as_asked(call, outcome).expect("partitioned by created_as_asked");
        job_ids.push(call.job_id);
        objects.push(customer.id.clone());
        responses.push(JsonB(created_response(call, customer, response, *elapsed)));
    }
    let written = Spi::get_one_with_args::<Vec<i64>>(
        "SELECT onboarding._record_created($1, $2, $3)",
        &[job_ids.into(), objects.into(), responses.into()],
    )
    .unwrap_or_else(|e| error!("onboarding: recording created customers: {e}"))
    .unwrap_or_default();
    let written: std::collections::HashSet<i64> = written.into_iter().collect();
    for (call, (outcome, _)) in created {
        if !written.contains(&call.job_id) {
            let (customer, _) = created_as_asked(call, outcome).expect("partitioned by created_as_asked");
            link_object(call.job_id, &call.user_id, customer);
        }
    }
}

/// Logs a created object and returns its `stripe_response` event detail.
fn created_response(call: &Call, object: &StripeObject, response: &Response, elapsed: Duration) -> Value {
    log!(
        "onboarding: created Stripe {} {} for user {} (job {}, request {})",
        object_noun(&object.id),
        object.id,
        call.user_id,
        call.job_id,
        response.request_id.as_deref().unwrap_or("unknown")
    );
    json!({
        "status": response.status, "request_id": response.request_id, "stripe_id": object.id,
        "idempotent_replayed": response.replayed, "duration_ms": elapsed.as_millis() as u64,
    })
}

fn record_one(call: &Call, outcome: &Outcome, elapsed: Duration) {
    let (job_id, user_id) = (call.job_id, call.user_id.as_str());
    let elapsed_ms = elapsed.as_millis() as u64;
    match outcome {
        Outcome::Created(customer, response) => {
            log_event(job_id, "stripe_response", created_response(call, customer, response, elapsed));
            link_object(job_id, user_id, customer);
        }
        Outcome::Adopted(customer) => {
            log!(
                "onboarding: found existing Stripe customer {} for user {user_id}; adopting it (job {job_id})",
                customer.id
            );
            log_event(job_id, "adopted", json!({"stripe_id": customer.id, "duration_ms": elapsed_ms}));
            link_object(job_id, user_id, customer);
        }
        Outcome::Deleted { object, response } => {
            let detail = match response {
                Some(r) => json!({"status": r.status, "request_id": r.request_id, "duration_ms": elapsed_ms}),
                None => json!({"note": "already gone", "duration_ms": elapsed_ms}),
            };
            log_event(job_id, "stripe_response", detail);
            log!("onboarding: deleted Stripe {} {object} of user {user_id} (job {job_id})", object_noun(object));
            let detail = json!({"stripe_id": object});
            let done = if matches!(call.work, Work::CleanUpCustomer { .. }) {
                // A creation job whose profile is gone: skipped, after undoing its lost attempt.
                let because = "profile not found; the customer of a lost attempt was deleted".into();
                Transition::Skip { because, undone: Some(object.clone()) }
            } else {
                Transition::Succeed { how: Success::Compensated, stripe_id: None }
            };
            finish(job_id, done, detail);
        }
        Outcome::EmailUpdated(response) => {
            let Work::UpdateEmail { customer, email } = &call.work else { unreachable!("only email updates update") };
            let detail = json!({
                "status": response.status, "request_id": response.request_id, "stripe_id": customer,
                "idempotent_replayed": response.replayed, "duration_ms": elapsed_ms,
            });
            log_event(job_id, "stripe_response", detail);
            log!("onboarding: updated the email of Stripe customer {customer} of user {user_id} (job {job_id})");
            Spi::run_with_args(
                "SELECT onboarding._finish_email_update($1, $2, $3)",
                &[job_id.into(), email.as_str().into(), JsonB(json!({"stripe_id": customer, "email": email})).into()],
            )
            .unwrap_or_else(|e| error!("onboarding: finishing email update job {job_id}: {e}"));
        }
        Outcome::NothingToCleanUp => {
            let because = "profile not found; no customer from earlier attempts";
            finish(job_id, skip(because), json!({"reason": because}));
        }
        Outcome::Failed(error) => {
            if let Some(status) = error.status() {
                let detail = json!({"status": status, "request_id": error.request_id(), "duration_ms": elapsed_ms});
                log_event(job_id, "stripe_response", detail);
            }
            let message = error.to_string();
            let mut detail = error.to_json();
            detail["attempt"] = call.attempts.into();
            let is_post =
                matches!(call.work, Work::CreateCustomer { .. } | Work::CreateAccount(_) | Work::UpdateEmail { .. });
            let next = after_failure(
                call.attempts,
                gucs::max_attempts(),
                classify(error, is_post),
                &gucs::backoff(),
                &mut rand::rng(),
            );
            let what = call.describe();
            match next {
                AfterFailure::RetryIn(delay) => {
                    detail["retry_in_ms"] = (delay.as_millis() as u64).into();
                    warning!(
                        "onboarding: {what} failed: {message}; retrying in {:.1}s (job {job_id}, attempt {})",
                        delay.as_secs_f64(),
                        call.attempts
                    );
                    finish(job_id, Transition::RetryIn { delay, error: message }, detail);
                }
                AfterFailure::Dead => {
                    warning!("onboarding: {what} failed for good: {message} (job {job_id}, attempt {})", call.attempts);
                    finish(job_id, die(&message), detail);
                }
            }
        }
    }
}

/// "customer" or "Connect account", for log lines.
fn object_noun(id: &str) -> &'static str {
    if id.starts_with("acct_") { "Connect account" } else { "customer" }
}

/// Writes a created or adopted customer or account back to the profile (in the results transaction).
fn link_object(job_id: i64, user_id: &str, customer: &StripeObject) {
    if customer.metadata_user_id.as_deref() != Some(user_id) {
        // Never link, nor delete, a customer that Stripe says belongs to someone else.
        let reason = format!(
            "customer {} has metadata.user_id {:?}, expected {user_id:?}",
            customer.id, customer.metadata_user_id
        );
        warning!("onboarding: not linking {}: {reason} (job {job_id})", customer.id);
        let detail = json!({"reason": reason, "stripe_id": customer.id});
        finish(job_id, die(&reason), detail);
        return;
    }
    let outcome = Spi::get_one_with_args::<String>(
        "SELECT onboarding._write_back($1, $2)",
        &[job_id.into(), customer.id.as_str().into()],
    )
    .unwrap_or_else(|e| error!("onboarding: writing back {}: {e}", customer.id))
    .unwrap_or_default();
    match outcome.as_str() {
        "written_back" => log!(
            "onboarding: wrote Stripe {} {} back to the profile of user {user_id} (job {job_id})",
            object_noun(&customer.id),
            customer.id
        ),
        "already_linked" => {}
        other => warning!(
            "onboarding: Stripe {} {} for user {user_id} is not linked ({other}); \
                 job {job_id} is orphaned and the object will be deleted",
            object_noun(&customer.id),
            customer.id
        ),
    }
}

/// Moves a running job on (`onboarding._finish_job`, whose table trigger checks the move),
/// recording `detail` as the transition's event.
fn finish(job_id: i64, transition: Transition, detail: Value) {
    Spi::run_with_args(
        "SELECT onboarding._finish_job($1, $2, $3, $4, stripe_id => $5, error => $6, \
         retry_in => make_interval(secs => $7))",
        &[
            job_id.into(),
            transition.to().as_str().into(),
            transition.step().into(),
            JsonB(detail).into(),
            transition.stripe_id().into(),
            transition.error().into(),
            transition.run_in().map(|d| d.as_secs_f64()).into(),
        ],
    )
    .unwrap_or_else(|e| error!("onboarding: finishing job {job_id} ({}): {e}", transition.step()));
}

fn skip(because: &str) -> Transition {
    Transition::Skip { because: because.into(), undone: None }
}

fn die(error: &str) -> Transition {
    Transition::Die { error: error.into(), object: None }
}

/// What a job's first attempt sends (`jobs.request_params`); retries resend exactly that.
fn request_params(email: &str, user_id: &str) -> Value {
    json!({"email": email, "user_id": user_id})
}

/// The calls a claim is about to start: their first attempts' parameters and `stripe_request`
/// events, written in one statement (`onboarding._calls_starting`) before the claim commits.
#[derive(Default)]
struct CallsStarting {
    job_ids: Vec<i64>,
    params: Vec<Option<JsonB>>,
    details: Vec<JsonB>,
}

impl CallsStarting {
    fn push(&mut self, job_id: i64, first_params: Option<Value>, detail: Value) {
        self.job_ids.push(job_id);
        self.params.push(first_params.map(JsonB));
        self.details.push(JsonB(detail));
    }

    fn record(self) {
        if self.job_ids.is_empty() {
            return;
        }
        Spi::run_with_args(
            "SELECT onboarding._calls_starting($1, $2, $3)",
            &[self.job_ids.into(), self.params.into(), self.details.into()],
        )
        .unwrap_or_else(|e| error!("onboarding: logging the calls about to start: {e}"));
    }
}

fn log_event(job_id: i64, step: &str, detail: Value) {
    Spi::run_with_args("SELECT onboarding._log_event($1, $2, $3)", &[job_id.into(), step.into(), JsonB(detail).into()])
        .unwrap_or_else(|e| error!("onboarding: logging {step} for job {job_id}: {e}"));
}
