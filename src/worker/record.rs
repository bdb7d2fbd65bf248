//! Phase 3 of the pipeline: what a finished call's outcome does to its job — the write-back,
//! the retry schedule or the dead letter, with the events and log lines that tell of it. All of a
//! batch's outcomes are recorded in one transaction (the statements are queue.rs's).

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use onboarding_core::claim_cursor::ScanFrom;
use onboarding_core::job::{AfterFailure, after_failure};
use onboarding_core::permissions::permission_refused;
use onboarding_core::policy::{Disposition, classify, classify_v2, key_after_unknown_outcome};
use onboarding_core::state::{Success, Transition};
use onboarding_core::stripe::{Response, StripeObject};
use pgrx::prelude::*;
use serde_json::{Value, json};

use crate::gucs;
use crate::pg::transaction::in_transaction;
use crate::queries::jobs::{self, WriteBack};
use crate::worker::accounts_v2::V2Work;
use crate::worker::calls::{Call, Outcome, Work};

/// Why a Connect job waits (its `postponed` event) while the key lacks Connect's permissions.
pub const CONNECT_REFUSED: &str =
    "the Stripe key lacks a Connect permission (docs/src/guides/stripe-key.md, \"Restricted keys\")";
/// Why an accounts_v2 table's job waits while the key may not call `/v2`.
pub const ACCOUNTS_V2_REFUSED: &str =
    "the Stripe key may not call /v2, which Accounts v2 need (docs/src/guides/stripe-key.md, \"Restricted keys\")";

/// Phase 3: all outcomes in one transaction; if that fails, each job on its own, so one bad
/// write-back (say, a failing trigger on the profile table) cannot hold the others hostage.
/// Returns when the next pending job is due, as seen after recording.
pub fn record_results(calls: &[Call], results: Vec<(Outcome, Duration)>, scan: &ScanFrom) -> Option<Duration> {
    let outcomes: Vec<_> = calls.iter().zip(results).collect();
    let all = in_transaction(
        "recording Stripe results",
        AssertUnwindSafe(|| {
            // Customers created as asked, the common outcome: set-based, with when every request
            // was sent, in one statement; everything else one by one.
            let (created, others): (Vec<_>, Vec<_>) =
                outcomes.iter().partition(|(call, (outcome, _))| created_as_asked(call, outcome).is_some());
            record_created(&sent_times(calls.iter()), &created);
            for (call, (result, elapsed)) in others {
                record_one(call, result, *elapsed);
            }
            jobs::next_due_in(scan)
        }),
    );
    if let Ok(next_due) = all {
        return next_due;
    }
    for (call, (result, elapsed)) in &outcomes {
        let one = in_transaction(
            "recording a Stripe result",
            AssertUnwindSafe(|| {
                record_created(&sent_times(std::iter::once(*call)), &[]);
                record_one(call, result, *elapsed)
            }),
        );
        if let Err(message) = one {
            let stripe_id = match (&call.work, result) {
                (_, Outcome::Created(customer, _) | Outcome::Adopted(customer)) => Some(customer.id.as_str()),
                (_, Outcome::Deleted { object, .. }) => Some(object.as_str()),
                (Work::DeleteCustomer(id) | Work::AccountsV2(V2Work::Close(id)), _) => Some(id.as_str()),
                _ => None,
            };
            let reason = format!("could not record the Stripe result: {message}");
            let _ = in_transaction(
                "parking a job",
                AssertUnwindSafe(|| {
                    let detail = json!({"reason": reason, "stripe_id": stripe_id});
                    let parked = Transition::Die { error: reason.clone(), object: stripe_id.map(Into::into) };
                    jobs::finish(call.job_id, parked, detail)
                }),
            );
        }
    }
    Some(Duration::ZERO) // look again at once
}

/// When the calls' requests were sent, as `(job id, attempt, seconds since the epoch)`.
fn sent_times<'a>(calls: impl Iterator<Item = &'a Call>) -> Vec<(i64, u32, f64)> {
    calls
        .filter_map(|call| {
            let since_epoch = call.sent_at?.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some((call.job_id, call.attempts, since_epoch.as_secs_f64()))
        })
        .collect()
}

/// The customer (or, for an accounts_v2 table, the Account) a create_customer call created for
/// its own user (the common outcome), if so.
fn created_as_asked<'a>(call: &Call, outcome: &'a Outcome) -> Option<(&'a StripeObject, &'a Response)> {
    match (&call.work, outcome) {
        (
            Work::CreateCustomer { .. } | Work::AccountsV2(V2Work::Create { .. }),
            Outcome::Created(customer, response),
        ) if customer.metadata_user_id.as_deref() == Some(call.user_id.as_str()) => Some((customer, response)),
        _ => None,
    }
}

/// Records when the requests were `sent` and the created customers in one statement
/// ([`jobs::record_sent_and_created`]): responses, write-backs, finished jobs. Jobs it could not
/// write back (the profile vanished or got another customer meanwhile) go through the one-by-one
/// write-back, which handles those cases.
fn record_created(sent: &[(i64, u32, f64)], created: &[&(&Call, (Outcome, Duration))]) {
    let mut job_ids = Vec::with_capacity(created.len());
    let mut objects = Vec::with_capacity(created.len());
    let mut responses = Vec::with_capacity(created.len());
    for (call, (outcome, elapsed)) in created {
        let (customer, response) = created_as_asked(call, outcome).expect("partitioned by created_as_asked");
        job_ids.push(call.job_id);
        objects.push(customer.id.clone());
        responses.push(created_response(call, customer, response, *elapsed));
    }
    let written = jobs::record_sent_and_created(sent, job_ids, objects, responses);
    let written: std::collections::HashSet<i64> = written.into_iter().collect();
    for (call, (outcome, _)) in created {
        if !written.contains(&call.job_id) {
            let (customer, _) = created_as_asked(call, outcome).expect("partitioned by created_as_asked");
            link_object(call, customer);
        }
    }
}

/// Logs a created object and returns its `stripe_response` event detail.
fn created_response(call: &Call, object: &StripeObject, response: &Response, elapsed: Duration) -> Value {
    log!(
        "onboarding: created Stripe {} {} for user {} (job {}, request {})",
        object_noun(call, &object.id),
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
            jobs::log_event(job_id, "stripe_response", created_response(call, customer, response, elapsed));
            link_object(call, customer);
        }
        Outcome::Adopted(existing) => {
            log!(
                "onboarding: found existing Stripe {} {} for user {user_id}; adopting it (job {job_id})",
                object_noun(call, &existing.id),
                existing.id
            );
            jobs::log_event(job_id, "adopted", json!({"stripe_id": existing.id, "duration_ms": elapsed_ms}));
            link_object(call, existing);
        }
        Outcome::Deleted { object, response } => {
            let detail = match response {
                Some(r) => json!({"status": r.status, "request_id": r.request_id, "duration_ms": elapsed_ms}),
                None => json!({"note": "already gone", "duration_ms": elapsed_ms}),
            };
            jobs::log_event(job_id, "stripe_response", detail);
            log!("onboarding: deleted Stripe {} {object} of user {user_id} (job {job_id})", object_noun(call, object));
            let detail = json!({"stripe_id": object});
            let done = if call.cleans_up() {
                // A creation job whose profile is gone: skipped, after undoing its lost attempt.
                let because =
                    format!("profile not found; the {} of a lost attempt was deleted", object_noun(call, object));
                Transition::Skip { because, undone: Some(object.clone()) }
            } else {
                Transition::Succeed { how: Success::Compensated, stripe_id: None }
            };
            jobs::finish(job_id, done, detail);
        }
        Outcome::EmailUpdated(response) => {
            let (Work::UpdateEmail { customer, email }
            | Work::AccountsV2(V2Work::UpdateEmail { account: customer, email })) = &call.work
            else {
                unreachable!("only email updates update")
            };
            let detail = json!({
                "status": response.status, "request_id": response.request_id, "stripe_id": customer,
                "idempotent_replayed": response.replayed, "duration_ms": elapsed_ms,
            });
            jobs::log_event(job_id, "stripe_response", detail);
            log!("onboarding: updated the email of Stripe customer {customer} of user {user_id} (job {job_id})");
            jobs::finish_email_update(job_id, email, json!({"stripe_id": customer, "email": email}));
        }
        Outcome::NothingToCleanUp => {
            let because = format!("profile not found; no {} from earlier attempts", object_noun(call, ""));
            jobs::finish(job_id, Transition::skip(&because), json!({"reason": because}));
        }
        Outcome::Undecided(reason) => {
            let what = call.describe();
            let reason = format!("the look-up could not decide whether Stripe holds the object: {reason}");
            warning!("onboarding: {what}: {reason}; run onboarding.retry({job_id}) once it can (job {job_id})");
            let detail = json!({"reason": reason, "attempt": call.attempts});
            jobs::finish(job_id, Transition::die(&reason), detail);
        }
        Outcome::NotYetListed(wait) if call.attempts < gucs::max_attempts() => {
            let error = "the Account was not found, but the v2 Accounts list may not show it yet (it is eventually \
                         consistent)";
            log!("onboarding: {}: {error}; looking again in {}s (job {job_id})", call.describe(), wait.as_secs());
            let detail = json!({"reason": error, "attempt": call.attempts, "retry_in_ms": wait.as_millis() as u64});
            jobs::finish(job_id, Transition::RetryIn { delay: *wait, error: error.into() }, detail);
        }
        Outcome::NotYetListed(_) => {
            let reason = "the v2 Accounts list never showed the Account an earlier attempt may have made, and its \
                          attempts are used up";
            warning!(
                "onboarding: {}: {reason}; run onboarding.retry({job_id}) to look again (job {job_id})",
                call.describe()
            );
            jobs::finish(job_id, Transition::die(reason), json!({"reason": reason, "attempt": call.attempts}));
        }
        Outcome::Failed(error) if call.is_connect() && permission_refused(error) => {
            // Not the job's fault: it waits for a key that may (the worker says so once).
            log!("onboarding: {} refused: the Stripe key lacks a Connect permission (job {job_id})", call.describe());
            jobs::postpone(job_id, CONNECT_REFUSED);
        }
        Outcome::Failed(error) if call.is_v2() && permission_refused(error) => {
            log!("onboarding: {} refused: the Stripe key may not call /v2 (job {job_id})", call.describe());
            jobs::postpone(job_id, ACCOUNTS_V2_REFUSED);
        }
        Outcome::Failed(error) => {
            if let Some(status) = error.status() {
                let detail = json!({"status": status, "request_id": error.request_id(), "duration_ms": elapsed_ms});
                jobs::log_event(job_id, "stripe_response", detail);
            }
            let message = error.to_string();
            let mut detail = error.to_json();
            detail["attempt"] = call.attempts.into();
            let disposition =
                if call.is_v2() { classify_v2(error, call.is_post()) } else { classify(error, call.is_post()) };
            let next =
                after_failure(call.attempts, gucs::max_attempts(), disposition, &gucs::backoff(), &mut rand::rng());
            let what = call.describe();
            match next {
                AfterFailure::RetryIn(delay) => {
                    detail["retry_in_ms"] = (delay.as_millis() as u64).into();
                    if disposition == Disposition::OutcomeUnknown {
                        // Fixed here, before the retry can be claimed (and replicated with it).
                        let key = key_after_unknown_outcome(call.idempotency_key(), call.attempts);
                        jobs::look_up_then_use_key(job_id, &key);
                        detail["next_idempotency_key"] = key.into();
                        detail["outcome"] = "unknown: the next attempt looks the object up, then creates it under \
                                             next_idempotency_key if Stripe holds none"
                            .into();
                    }
                    warning!(
                        "onboarding: {what} failed: {message}; retrying in {:.1}s (job {job_id}, attempt {})",
                        delay.as_secs_f64(),
                        call.attempts
                    );
                    jobs::finish(job_id, Transition::RetryIn { delay, error: message }, detail);
                }
                AfterFailure::Dead => {
                    warning!("onboarding: {what} failed for good: {message} (job {job_id}, attempt {})", call.attempts);
                    jobs::finish(job_id, Transition::die(&message), detail);
                }
            }
        }
    }
}

/// "customer" or "Connect account", for log lines.
fn object_noun(call: &Call, id: &str) -> &'static str {
    if call.is_v2() {
        "Account (v2)"
    } else if id.starts_with("acct_") {
        "Connect account"
    } else {
        "customer"
    }
}

/// Writes a created or adopted customer or account back to the profile (in the results transaction).
fn link_object(call: &Call, customer: &StripeObject) {
    let (job_id, user_id) = (call.job_id, call.user_id.as_str());
    if customer.metadata_user_id.as_deref() != Some(user_id) {
        // Never link, nor delete, a customer that Stripe says belongs to someone else.
        let reason = format!(
            "customer {} has metadata.user_id {:?}, expected {user_id:?}",
            customer.id, customer.metadata_user_id
        );
        warning!("onboarding: not linking {}: {reason} (job {job_id})", customer.id);
        let detail = json!({"reason": reason, "stripe_id": customer.id});
        jobs::finish(job_id, Transition::die(&reason), detail);
        return;
    }
    match jobs::write_back(job_id, &customer.id) {
        WriteBack::WrittenBack => log!(
            "onboarding: wrote Stripe {} {} back to the profile of user {user_id} (job {job_id})",
            object_noun(call, &customer.id),
            customer.id
        ),
        WriteBack::AlreadyLinked => {}
        WriteBack::Postponed => log!(
            "onboarding: the profile of user {user_id} is locked by another transaction; Stripe {} {} will be \
             written back later (job {job_id})",
            object_noun(call, &customer.id),
            customer.id
        ),
        WriteBack::NotLinked(other) => warning!(
            "onboarding: Stripe {} {} for user {user_id} is not linked ({other}); \
                 job {job_id} is orphaned and the object will be deleted",
            object_noun(call, &customer.id),
            customer.id
        ),
    }
}
