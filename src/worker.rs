//! The background worker: the loop that turns committed jobs into Stripe customers.
//!
//! Each round has three phases, and no transaction is ever open during an HTTP call:
//! 1. one transaction claims due jobs (`FOR UPDATE SKIP LOCKED`), re-reads their profiles,
//!    finishes those that need no call, logs `stripe_request` for the rest, and commits;
//! 2. the Stripe calls run concurrently, bounded by timeouts and abandoned on shutdown;
//! 3. one transaction records every outcome (write-back, retry schedule or dead letter).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use onboarding_core::job::{
    AfterFailure, CustomerPlan, DeletePlan, Profile, after_failure, plan_customer, plan_delete,
};
use onboarding_core::policy::classify;
use onboarding_core::runtime::signal_safe_runtime;
use onboarding_core::stripe::{ApiKey, ClientConfig, Customer, NewCustomer, Response, StripeClient, StripeError};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{JsonB, PgTryBuilder};
use serde_json::{Value, json};

use crate::{gucs, wake};

/// Shortest sleep between rounds that claimed less than a full batch.
const MIN_SLEEP: Duration = Duration::from_millis(20);

/// Pause after an unexpected database error, so a persistent one does not spin.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Registers `onboarding.workers` workers; each gets its slot number as argument.
pub fn register() {
    for slot in 0..gucs::workers() {
        BackgroundWorkerBuilder::new(&format!("onboarding worker {}", slot + 1))
            .set_type("onboarding worker")
            .set_library("onboarding")
            .set_function("onboarding_worker_main")
            .set_argument(Some(pg_sys::Datum::from(slot)))
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            // Restarted after any exit other than a requested shutdown.
            .set_restart_time(Some(Duration::from_secs(5)))
            .load();
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn onboarding_worker_main(arg: pg_sys::Datum) {
    let slot = arg.value().min(wake::MAX_WORKERS - 1);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // The postmaster we were forked from holds no Stripe key (gucs.rs): read the files ourselves.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    let runtime = signal_safe_runtime().unwrap_or_else(|e| error!("onboarding: cannot start the HTTP runtime: {e}"));
    wake::publish_this_worker(slot);
    log!("onboarding: worker started for database \"{database}\"");

    let mut worker = Worker { runtime, client: None, warned_no_key: false, last_requeue: None };
    while !shutdown_requested() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            worker.client = None;
            worker.warned_no_key = false;
        }
        let sleep = worker.run_round();
        if !sleep.is_zero() && !BackgroundWorker::wait_latch(Some(sleep)) {
            break;
        }
    }
    wake::unpublish_this_worker(slot);
    log!("onboarding: worker stopped");
    // Exit status 1 lets the postmaster restart us after pg_terminate_backend(); during a server
    // shutdown it restarts nothing. (Status 0 would mean "never restart".)
    unsafe { pg_sys::proc_exit(1) };
}

/// SIGTERM (smart/fast shutdown, pg_terminate_backend) sets this; pgrx's own flag resets on read.
fn shutdown_requested() -> bool {
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

struct Worker {
    runtime: tokio::runtime::Runtime,
    client: Option<StripeClient>,
    warned_no_key: bool,
    last_requeue: Option<Instant>,
}

/// A claimed job that needs a Stripe call.
struct Call {
    job_id: i64,
    user_id: String,
    attempts: u32,
    idempotency_key: String,
    work: Work,
}

enum Work {
    /// With `look_up` (the emails to search by), first look for a customer Stripe already holds for
    /// the user: past the idempotency horizon, or after Stripe refused the key.
    CreateCustomer { customer: NewCustomer, look_up: Option<Vec<String>> },
    /// Compensation: delete a customer no profile can use.
    DeleteCustomer(String),
    /// The profile vanished after an attempt whose answer was lost: delete whatever customer that
    /// attempt created, found by `metadata.user_id` (the list by these emails is consistent).
    CleanUpCustomer { emails: Vec<String> },
}

enum Outcome {
    Created(Customer, Response),
    /// Found in Stripe by `metadata.user_id` instead of created.
    Adopted(Customer),
    /// `response` is `None` when Stripe says the customer is already gone (404): just as good.
    Deleted {
        customer: String,
        response: Option<Response>,
    },
    /// A clean-up found no customer: the earlier attempt never executed.
    NothingToCleanUp,
    Failed(StripeError),
}

impl Call {
    fn describe(&self) -> String {
        match &self.work {
            Work::CreateCustomer { look_up: None, .. } => format!("creating Stripe customer for user {}", self.user_id),
            Work::CreateCustomer { look_up: Some(_), .. } => {
                format!("looking up or creating Stripe customer for user {}", self.user_id)
            }
            Work::DeleteCustomer(id) => {
                format!("deleting Stripe customer {id} of user {} (compensation)", self.user_id)
            }
            Work::CleanUpCustomer { .. } => {
                format!("looking for a customer of deleted user {} to delete (compensation)", self.user_id)
            }
        }
    }

    async fn perform(&self, client: &StripeClient) -> Outcome {
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
            Work::DeleteCustomer(id) => delete(client, id).await,
            Work::CleanUpCustomer { emails } => {
                let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
                match client.find_customer(&self.user_id, &emails).await {
                    Ok(Some(found)) => delete(client, &found.id).await,
                    Ok(None) => Outcome::NothingToCleanUp,
                    Err(error) => Outcome::Failed(error),
                }
            }
        }
    }
}

async fn delete(client: &StripeClient, id: &str) -> Outcome {
    match client.delete_customer(id).await {
        Ok(response) => Outcome::Deleted { customer: id.to_string(), response: Some(response) },
        Err(StripeError::Api(e)) if e.status == 404 && e.code.as_deref() == Some("resource_missing") => {
            Outcome::Deleted { customer: id.to_string(), response: None }
        }
        Err(error) => Outcome::Failed(error),
    }
}

impl Worker {
    /// One claim/call/record round. Returns how long to sleep before the next one.
    fn run_round(&mut self) -> Duration {
        let poll = gucs::poll_interval();
        if self.stripe_client().is_none() {
            return poll;
        }
        let requeue = self.last_requeue.is_none_or(|t| t.elapsed() >= poll);
        let claimed = in_transaction("claiming jobs", || claim_and_plan(gucs::batch_size(), requeue));
        let Ok(Some((calls, claimed_count, mut next_due))) = claimed else {
            return if claimed.is_err() { ERROR_PAUSE } else { poll };
        };
        if requeue {
            self.last_requeue = Some(Instant::now());
        }
        if !calls.is_empty() {
            let Some(results) = self.call_stripe(&calls) else {
                return Duration::ZERO;
            };
            // Failed calls were just rescheduled: the next due time comes from after recording.
            next_due = record_results(&calls, results);
        }
        if claimed_count >= gucs::batch_size() as usize {
            return Duration::ZERO;
        }
        // A due job we could not claim is being claimed by another worker: look again shortly,
        // but never spin.
        next_due.map_or(poll, |due| due.clamp(MIN_SLEEP, poll))
    }

    /// The client, rebuilt after each configuration reload. None while no key is configured.
    fn stripe_client(&mut self) -> Option<&StripeClient> {
        if self.client.is_none() {
            let Some(api_key) = gucs::stripe_api_key().and_then(ApiKey::new) else {
                if !std::mem::replace(&mut self.warned_no_key, true) {
                    warning!(
                        "onboarding: onboarding.stripe_api_key is not set; jobs wait until it is \
                         (ALTER SYSTEM SET onboarding.stripe_api_key = '...'; SELECT pg_reload_conf();)"
                    );
                }
                return None;
            };
            let config = ClientConfig {
                api_base: gucs::stripe_api_base(),
                api_key,
                connect_timeout: gucs::connect_timeout(),
                request_timeout: gucs::request_timeout(),
            };
            match StripeClient::new(&config) {
                Ok(client) => self.client = Some(client),
                Err(e) => {
                    if !std::mem::replace(&mut self.warned_no_key, true) {
                        warning!("onboarding: {e}; jobs wait until the configuration is fixed");
                    }
                    return None;
                }
            }
        }
        self.client.as_ref()
    }

    /// Runs the calls concurrently. None if shutdown was requested meanwhile: the jobs stay
    /// `running` and are requeued by the next worker, whose retry reuses their idempotency keys.
    fn call_stripe(&mut self, calls: &[Call]) -> Option<Vec<(Outcome, Duration)>> {
        let client = self.client.as_ref().expect("client checked by run_round");
        for call in calls {
            log!("onboarding: {} (job {}, attempt {})", call.describe(), call.job_id, call.attempts);
        }
        let results = self.runtime.block_on(async {
            let requests = join_all(calls.iter().map(|call| async {
                let started = Instant::now();
                let outcome = call.perform(client).await;
                (outcome, started.elapsed())
            }));
            tokio::select! {
                results = requests => Some(results),
                () = until_shutdown_requested() => None,
            }
        });
        check_for_interrupts!();
        results
    }
}

async fn until_shutdown_requested() {
    while !shutdown_requested() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Phase 1. Returns None when the extension is not installed in this database yet.
fn claim_and_plan(batch_size: i32, requeue: bool) -> Option<(Vec<Call>, usize, Option<Duration>)> {
    let installed = Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'onboarding')")
        .ok()
        .flatten()
        .unwrap_or(false);
    if !installed {
        return None;
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
    }

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
                    Ok(Profile { email: row.get(10)?, customer_id: row.get(11)? })
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
    let calls = claimed.into_iter().filter_map(plan).collect();
    Some((calls, claimed_count, next_due_in()))
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
fn plan(job: ClaimedJob) -> Option<Call> {
    let (id, user_id) = (job.id, job.user_id.as_str());
    let work = match job.kind.as_str() {
        "create_customer" => match plan_customer(user_id, job.profile.clone(), job.first_request.clone()) {
            CustomerPlan::ProfileGone => {
                log!("onboarding: profile of user {user_id} no longer exists; skipping job {id}");
                finish(id, "skipped", "skipped", json!({"reason": "profile not found"}), None, None, None);
                return None;
            }
            CustomerPlan::CleanUp(sent) => Work::CleanUpCustomer { emails: vec![sent.email] },
            CustomerPlan::AlreadyProvisioned(existing) => {
                // The job's stripe_id names only objects it created; this one it found.
                let detail = json!({"reason": "profile already has a customer", "stripe_id": existing});
                finish(id, "succeeded", "skipped", detail, None, None, None);
                return None;
            }
            CustomerPlan::Unusable(reason) => {
                warning!("onboarding: not creating a Stripe customer for user {user_id}: {reason} (job {id})");
                finish(id, "dead", "dead", json!({"reason": reason}), None, Some(&reason), None);
                return None;
            }
            CustomerPlan::Create(customer) => {
                if job.first_request.is_none() {
                    let params = json!({"email": customer.email, "user_id": customer.user_id});
                    Spi::run_with_args(
                        "SELECT onboarding._remember_request($1, $2)",
                        &[id.into(), JsonB(params).into()],
                    )
                    .unwrap_or_else(|e| error!("onboarding: remembering the request of job {id}: {e}"));
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
        "delete_customer" => {
            let target = job.stripe_id.clone().unwrap_or_default();
            match plan_delete(&target, job.profile.as_ref()) {
                DeletePlan::InUse => {
                    let detail = json!({"reason": "the profile links this customer again", "stripe_id": target});
                    finish(id, "skipped", "skipped", detail, None, None, None);
                    return None;
                }
                DeletePlan::Delete(customer) => Work::DeleteCustomer(customer),
            }
        }
        other => {
            let reason = format!("unknown job kind {other:?}");
            finish(id, "dead", "dead", json!({"reason": reason}), None, Some(&reason), None);
            return None;
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
        Work::CleanUpCustomer { emails } => json!({
            "method": "GET", "path": "/v1/customers", "attempt": job.attempts, "emails": emails,
            "reason": "profile deleted after an attempt whose answer was lost",
        }),
    };
    log_event(id, "stripe_request", detail);
    Some(Call { job_id: id, user_id: job.user_id, attempts: job.attempts, idempotency_key: job.idempotency_key, work })
}

/// Phase 3: all outcomes in one transaction; if that fails, each job on its own, so one bad
/// write-back (say, a failing trigger on the profile table) cannot hold the others hostage.
/// Returns when the next pending job is due, as seen after recording.
fn record_results(calls: &[Call], results: Vec<(Outcome, Duration)>) -> Option<Duration> {
    let outcomes: Vec<_> = calls.iter().zip(results).collect();
    let all = in_transaction(
        "recording Stripe results",
        AssertUnwindSafe(|| {
            for (call, (result, elapsed)) in &outcomes {
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
                (_, Outcome::Deleted { customer, .. }) => Some(customer.as_str()),
                (Work::DeleteCustomer(id), _) => Some(id.as_str()),
                _ => None,
            };
            let reason = format!("could not record the Stripe result: {message}");
            let _ = in_transaction(
                "parking a job",
                AssertUnwindSafe(|| {
                    let detail = json!({"reason": reason, "stripe_id": stripe_id});
                    finish(call.job_id, "dead", "dead", detail, stripe_id, Some(&reason), None)
                }),
            );
        }
    }
    Some(Duration::ZERO) // look again at once
}

fn record_one(call: &Call, outcome: &Outcome, elapsed: Duration) {
    let (job_id, user_id) = (call.job_id, call.user_id.as_str());
    let elapsed_ms = elapsed.as_millis() as u64;
    match outcome {
        Outcome::Created(customer, response) => {
            log!(
                "onboarding: created Stripe customer {} for user {user_id} (job {job_id}, request {})",
                customer.id,
                response.request_id.as_deref().unwrap_or("unknown")
            );
            let detail = json!({
                "status": response.status, "request_id": response.request_id, "stripe_id": customer.id,
                "idempotent_replayed": response.replayed, "duration_ms": elapsed_ms,
            });
            log_event(job_id, "stripe_response", detail);
            link_customer(job_id, user_id, customer);
        }
        Outcome::Adopted(customer) => {
            log!(
                "onboarding: found existing Stripe customer {} for user {user_id}; adopting it (job {job_id})",
                customer.id
            );
            log_event(job_id, "adopted", json!({"stripe_id": customer.id, "duration_ms": elapsed_ms}));
            link_customer(job_id, user_id, customer);
        }
        Outcome::Deleted { customer, response } => {
            let detail = match response {
                Some(r) => json!({"status": r.status, "request_id": r.request_id, "duration_ms": elapsed_ms}),
                None => json!({"status": 404, "note": "already deleted", "duration_ms": elapsed_ms}),
            };
            log_event(job_id, "stripe_response", detail);
            log!("onboarding: deleted Stripe customer {customer} of user {user_id} (job {job_id})");
            let detail = json!({"stripe_id": customer});
            if matches!(call.work, Work::CleanUpCustomer { .. }) {
                // A creation job whose profile is gone: skipped, after undoing its lost attempt.
                finish(job_id, "skipped", "compensated", detail, Some(customer), None, None);
            } else {
                finish(job_id, "succeeded", "compensated", detail, None, None, None);
            }
        }
        Outcome::NothingToCleanUp => {
            let detail = json!({"reason": "profile not found; no customer from earlier attempts"});
            finish(job_id, "skipped", "skipped", detail, None, None, None);
        }
        Outcome::Failed(error) => {
            if let Some(status) = error.status() {
                let detail = json!({"status": status, "request_id": error.request_id(), "duration_ms": elapsed_ms});
                log_event(job_id, "stripe_response", detail);
            }
            let message = error.to_string();
            let mut detail = error.to_json();
            detail["attempt"] = call.attempts.into();
            let is_post = matches!(call.work, Work::CreateCustomer { .. });
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
                    finish(job_id, "pending", "failed", detail, None, Some(&message), Some(delay));
                }
                AfterFailure::Dead => {
                    warning!("onboarding: {what} failed for good: {message} (job {job_id}, attempt {})", call.attempts);
                    finish(job_id, "dead", "dead", detail, None, Some(&message), None);
                }
            }
        }
    }
}

/// Writes a created or adopted customer back to the profile (in the results transaction).
fn link_customer(job_id: i64, user_id: &str, customer: &Customer) {
    if customer.metadata_user_id.as_deref() != Some(user_id) {
        // Never link, nor delete, a customer that Stripe says belongs to someone else.
        let reason = format!(
            "customer {} has metadata.user_id {:?}, expected {user_id:?}",
            customer.id, customer.metadata_user_id
        );
        warning!("onboarding: not linking {}: {reason} (job {job_id})", customer.id);
        let detail = json!({"reason": reason, "stripe_id": customer.id});
        finish(job_id, "dead", "dead", detail, None, Some(&reason), None);
        return;
    }
    let outcome = Spi::get_one_with_args::<String>(
        "SELECT onboarding._write_back_customer($1, $2)",
        &[job_id.into(), customer.id.as_str().into()],
    )
    .unwrap_or_else(|e| error!("onboarding: writing back {}: {e}", customer.id))
    .unwrap_or_default();
    match outcome.as_str() {
        "written_back" => log!(
            "onboarding: wrote Stripe customer {} back to the profile of user {user_id} (job {job_id})",
            customer.id
        ),
        "already_linked" => {}
        other => warning!(
            "onboarding: Stripe customer {} for user {user_id} is not linked ({other}); \
                 job {job_id} is orphaned and the customer will be deleted",
            customer.id
        ),
    }
}

fn finish(
    job_id: i64,
    state: &str,
    step: &str,
    detail: Value,
    stripe_id: Option<&str>,
    error: Option<&str>,
    retry_in: Option<Duration>,
) {
    Spi::run_with_args(
        "SELECT onboarding._finish_job($1, $2, $3, $4, stripe_id => $5, error => $6, \
         retry_in => make_interval(secs => $7))",
        &[
            job_id.into(),
            state.into(),
            step.into(),
            JsonB(detail).into(),
            stripe_id.into(),
            error.into(),
            retry_in.map(|d| d.as_secs_f64()).into(),
        ],
    )
    .unwrap_or_else(|e| error!("onboarding: finishing job {job_id}: {e}"));
}

fn log_event(job_id: i64, step: &str, detail: Value) {
    Spi::run_with_args("SELECT onboarding._log_event($1, $2, $3)", &[job_id.into(), step.into(), JsonB(detail).into()])
        .unwrap_or_else(|e| error!("onboarding: logging {step} for job {job_id}: {e}"));
}

/// Runs `body` in its own transaction. An ERROR inside is caught, logged as a WARNING and the
/// transaction aborted, so one bad job or statement never takes the worker down.
fn in_transaction<R>(what: &str, body: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    let body = AssertUnwindSafe(body);
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    PgTryBuilder::new(move || {
        let result = (body.0)();
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(result)
    })
    .catch_others(|caught| {
        let message = match &caught {
            pg_sys::panic::CaughtError::PostgresError(report)
            | pg_sys::panic::CaughtError::ErrorReport(report)
            | pg_sys::panic::CaughtError::RustPanic { ereport: report, .. } => report.message().to_string(),
        };
        Err(message)
    })
    .execute()
    .inspect_err(|message| {
        unsafe { pg_sys::AbortCurrentTransaction() };
        warning!("onboarding: {what} failed: {message}");
    })
}
