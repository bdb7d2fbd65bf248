//! The background worker: the loop that turns committed jobs into Stripe customers.
//!
//! Each round has three phases, and no transaction is ever open during an HTTP call:
//! 1. one transaction claims due jobs (`FOR UPDATE SKIP LOCKED`), re-reads their profiles,
//!    finishes those that need no call, logs `stripe_request` for the rest, and commits;
//! 2. the Stripe calls run concurrently, bounded by timeouts and abandoned on shutdown;
//! 3. one transaction records every outcome (write-back, retry schedule or dead letter).
//!
//! What each phase does with a job is in `jobs.rs`.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use onboarding_core::budget::Gcra;
use onboarding_core::policy::{Disposition, classify};
use onboarding_core::runtime::signal_safe_runtime;
use onboarding_core::stripe::{ApiKey, ClientConfig, ListKind, StripeClient, StripeError};
use pgrx::PgTryBuilder;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::jobs::{Call, Outcome, claim_and_plan, record_results};
use crate::requests::{self, RequestKind};
use crate::{gucs, wake};

/// Shortest sleep between rounds that claimed less than a full batch.
const MIN_SLEEP: Duration = Duration::from_millis(20);

/// How often a worker checks the jobs that get_or_create_customer callers wait for.
const REQUEST_WATCH: Duration = Duration::from_millis(50);

/// Pause after an unexpected database error, so a persistent one does not spin.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// A worker serves one database (its oid is the argument; the launcher starts it, see
/// launcher.rs) until shutdown, or until it finds the extension is not installed there.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn onboarding_worker_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    let database_name = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    // The postmaster we were forked from holds no Stripe key (gucs.rs): read the files ourselves.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    let runtime = signal_safe_runtime().unwrap_or_else(|e| error!("onboarding: cannot start the HTTP runtime: {e}"));
    if wake::publish_this_worker().is_none() {
        warning!("onboarding: all {} worker slots are taken; not serving \"{database_name}\"", wake::MAX_WORKERS);
        return;
    }
    log!("onboarding: worker started for database \"{database_name}\"");

    let mut worker = Worker { runtime, client: None, budget: None, warned_no_key: false, last_requeue: None };
    while !shutdown_requested() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            worker.client = None;
            worker.warned_no_key = false;
        }
        if worker.stripe_client().is_none() {
            // Paused (no key): ignore commit wake-ups, which would otherwise spin the loop; a
            // reload is noticed within a second.
            worker.serve_new_requests(); // refuses them
            std::thread::sleep(Duration::from_secs(1).min(gucs::poll_interval()));
            continue;
        }
        let Some(sleep) = worker.run_round() else {
            // Not installed here (any more): make way, until CREATE EXTENSION wakes the launcher.
            wake::mark_without_extension(database);
            log!("onboarding: extension not installed in database \"{database_name}\"; worker exiting");
            return;
        };
        if !sleep.is_zero() && !BackgroundWorker::wait_latch(Some(sleep)) {
            break;
        }
    }
    log!("onboarding: worker for database \"{database_name}\" stopped");
}

/// SIGTERM (smart/fast shutdown, pg_terminate_backend) sets this; pgrx's own flag resets on read.
pub fn shutdown_requested() -> bool {
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

struct Worker {
    runtime: tokio::runtime::Runtime,
    client: Option<StripeClient>,
    /// The shared rate budget for the configured key (None: unlimited); rebuilt with the client.
    budget: Option<Gcra>,
    warned_no_key: bool,
    last_requeue: Option<Instant>,
}

impl Worker {
    /// One claim/call/record round. Returns how long to sleep before the next one, or None when
    /// the extension is not installed in this database.
    fn run_round(&mut self) -> Option<Duration> {
        let poll = gucs::poll_interval();
        if self.stripe_client().is_none() {
            self.serve_new_requests(); // refuses them: nothing can be done without a key
            return Some(poll);
        }
        self.serve_new_requests();
        let requeue = self.last_requeue.is_none_or(|t| t.elapsed() >= poll);
        let claimed = in_transaction("claiming jobs", || claim_and_plan(gucs::batch_size(), requeue));
        let (calls, claimed_count, mut next_due) = match claimed {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return None,
            Err(_) => return Some(ERROR_PAUSE),
        };
        if requeue {
            self.last_requeue = Some(Instant::now());
        }
        if !calls.is_empty() {
            let Some(results) = self.call_stripe(&calls) else {
                return Some(Duration::ZERO);
            };
            // Failed calls were just rescheduled: the next due time comes from after recording.
            next_due = record_results(&calls, results);
        }
        // Another worker may finish a watched job without waking us: watch closely meanwhile.
        let watching = self.resolve_requests();
        if claimed_count >= gucs::batch_size() as usize {
            return Some(Duration::ZERO);
        }
        if watching {
            next_due = Some(next_due.map_or(REQUEST_WATCH, |due| due.min(REQUEST_WATCH)));
        }
        // A due job we could not claim is being claimed by another worker: look again shortly,
        // but never spin.
        Some(next_due.map_or(poll, |due| due.clamp(MIN_SLEEP, poll)))
    }

    /// Takes on new get_or_create_customer / create_account_link requests: answers at once what
    /// can be (the profile already has the object), else enqueues or joins the job, in our own
    /// transaction, and watches it.
    fn serve_new_requests(&mut self) {
        for request in requests::take_new() {
            if self.client.is_none() {
                requests::fail(request.ticket, "onboarding.stripe_api_key is not set");
                continue;
            }
            // The profile may have got its object since the caller looked (say, from the insert
            // trigger's job, which we were busy with): then there is nothing to enqueue.
            if request.kind == RequestKind::Snapshot {
                self.take_snapshot(request.ticket);
                continue;
            }
            let sql = match request.kind {
                RequestKind::Customer => {
                    "SELECT c, CASE WHEN c IS NULL
                                   THEN onboarding._enqueue($1::regclass, $2, 'create_customer', 'get_or_create_customer')
                               END, NULL::text
                       FROM onboarding._customer_of($1::regclass, $2) c"
                }
                RequestKind::AccountLink => "SELECT * FROM onboarding._account_or_enqueue($1::regclass, $2)",
                RequestKind::Snapshot => unreachable!("handled above"),
            };
            let found = in_transaction("taking on a request", || {
                Spi::get_three_with_args::<String, i64, String>(
                    sql,
                    &[request.table.into(), request.user_id.as_str().into()],
                )
            });
            match found {
                Ok(Ok((Some(object), _, _))) => self.answer(&request, &object),
                Ok(Ok((None, Some(job), _))) => requests::accept(request.ticket, job),
                Ok(Ok((None, None, refusal))) => {
                    requests::fail(request.ticket, refusal.as_deref().unwrap_or("no job was enqueued"))
                }
                Ok(Err(e)) => requests::fail(request.ticket, &e.to_string()),
                Err(message) => requests::fail(request.ticket, &message),
            }
        }
    }

    /// Copies every customer and account from Stripe into `onboarding.stripe_objects`, a page per
    /// transaction (never one open across a call), retrying pages the policy says to retry.
    fn take_snapshot(&mut self, ticket: u64) {
        let started =
            in_transaction("starting a Stripe snapshot", || Spi::get_one::<i64>("SELECT onboarding._snapshot_begin()"));
        let Ok(Ok(Some(snapshot))) = started else {
            requests::fail(ticket, "could not start a snapshot");
            return;
        };
        let client = self.client.as_ref().expect("requests are refused without a client");
        for (kind, object) in [(ListKind::Customers, "customer"), (ListKind::Accounts, "account")] {
            let mut after: Option<String> = None;
            loop {
                if shutdown_requested() {
                    requests::fail(ticket, "the worker is shutting down");
                    return;
                }
                let mut attempt = 0;
                let page = loop {
                    attempt += 1;
                    self.wait_for_budget();
                    match self.runtime.block_on(client.list_page(kind, after.as_deref())) {
                        Ok(page) => break Ok(page),
                        Err(error) => match classify(&error, false) {
                            Disposition::Retry { rate_limited } if attempt < gucs::max_attempts() => {
                                let delay = gucs::backoff().delay(attempt, rate_limited, &mut rand::rng());
                                std::thread::sleep(delay.min(Duration::from_secs(30)));
                            }
                            _ => break Err(error),
                        },
                    }
                };
                check_for_interrupts!();
                let (objects, more) = match page {
                    Ok(page) => page,
                    Err(error) => {
                        requests::fail(ticket, &format!("listing {object}s: {error}"));
                        return;
                    }
                };
                after = objects.last().map(|o| o.summary.id.clone());
                let rows: Vec<serde_json::Value> = objects
                    .iter()
                    .filter(|o| !o.deleted)
                    .map(|o| {
                        serde_json::json!({"id": o.summary.id, "user_id": o.summary.metadata_user_id,
                                           "email": o.summary.email})
                    })
                    .collect();
                let stored = in_transaction("storing a snapshot page", || {
                    Spi::run_with_args(
                        "SELECT onboarding._snapshot_add($1, $2, $3)",
                        &[snapshot.into(), object.into(), pgrx::JsonB(serde_json::Value::Array(rows.clone())).into()],
                    )
                });
                if !matches!(stored, Ok(Ok(()))) {
                    requests::fail(ticket, "could not store a snapshot page");
                    return;
                }
                if !more || after.is_none() {
                    break;
                }
            }
        }
        let finished = in_transaction("finishing a Stripe snapshot", || {
            Spi::run_with_args("SELECT onboarding._snapshot_finish($1)", &[snapshot.into()])
        });
        match finished {
            Ok(Ok(())) => requests::succeed(ticket, &snapshot.to_string()),
            _ => requests::fail(ticket, "could not finish the snapshot"),
        }
    }

    /// Waits for a slot of the rate budget (outside the async batch: snapshots and links).
    fn wait_for_budget(&self) {
        if let Some(gcra) = &self.budget {
            std::thread::sleep(wake::reserve_rate_slot(gcra));
        }
    }

    /// Answers a request whose Stripe object exists: the id itself, or a fresh account link
    /// (made here, outside any transaction; links are single-use and never stored).
    fn answer(&self, request: &requests::Request, object: &str) {
        match request.kind {
            RequestKind::Customer | RequestKind::Snapshot => requests::succeed(request.ticket, object),
            RequestKind::AccountLink => {
                self.wait_for_budget();
                let client = self.client.as_ref().expect("requests are refused without a client");
                let link = client.create_account_link(object, &request.refresh_url, &request.return_url);
                match self.runtime.block_on(link) {
                    Ok(url) => requests::succeed(request.ticket, &url),
                    Err(error) => requests::fail(request.ticket, &error.to_string()),
                }
                check_for_interrupts!();
            }
        }
    }

    /// Answers the callers whose jobs have finished. Returns whether any are still waiting.
    fn resolve_requests(&mut self) -> bool {
        let watched = requests::watched();
        if watched.is_empty() {
            return false;
        }
        let ids: Vec<i64> = watched.iter().map(|(_, job)| *job).collect();
        let jobs = in_transaction("checking jobs that callers wait for", || {
            Spi::connect(|spi| {
                let rows = spi.select(
                    "SELECT id, state, coalesce(stripe_id, CASE kind
                                WHEN 'create_customer' THEN onboarding._customer_of(profile_table, user_id)
                                ELSE onboarding._connect_account_of(profile_table, user_id) END),
                            last_error
                       FROM onboarding.jobs WHERE id = ANY($1)",
                    None,
                    &[ids.clone().into()],
                )?;
                let mut jobs = Vec::new();
                for row in rows {
                    jobs.push((
                        row.get::<i64>(1)?.unwrap_or_default(),
                        row.get::<String>(2)?.unwrap_or_default(),
                        row.get::<String>(3)?,
                        row.get::<String>(4)?,
                    ));
                }
                Ok::<_, pgrx::spi::Error>(jobs)
            })
        });
        let Ok(Ok(jobs)) = jobs else { return true };
        let mut waiting = false;
        for (request, job_id) in watched {
            match jobs.iter().find(|(id, ..)| *id == job_id) {
                None => requests::fail(request.ticket, &format!("job {job_id} no longer exists")),
                Some((_, state, _, _)) if state == "pending" || state == "running" => waiting = true,
                Some((_, state, Some(object), _)) if state == "succeeded" => self.answer(&request, object),
                Some((_, state, _, error)) => requests::fail(
                    request.ticket,
                    &format!("job {job_id} ended {state}: {}", error.as_deref().unwrap_or("nothing on the profile")),
                ),
            }
        }
        waiting
    }

    /// The client, rebuilt after each configuration reload. None while no key is configured.
    fn stripe_client(&mut self) -> Option<&StripeClient> {
        if self.client.is_none() {
            let api_key_text = gucs::stripe_api_key().unwrap_or_default();
            let Some(api_key) = ApiKey::new(api_key_text.clone()) else {
                if !std::mem::replace(&mut self.warned_no_key, true) {
                    warning!(
                        "onboarding: onboarding.stripe_api_key is not set; jobs wait until it is \
                         (ALTER SYSTEM SET onboarding.stripe_api_key = '...'; SELECT pg_reload_conf();)"
                    );
                }
                return None;
            };
            self.budget = gucs::rate_budget(&api_key_text);
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
        let budget = self.budget;
        let results = self.runtime.block_on(async {
            let requests = join_all(calls.iter().map(|call| async move {
                if let Some(gcra) = &budget {
                    let wait = wake::reserve_rate_slot(gcra);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                let started = Instant::now();
                let outcome = call.perform(client).await;
                if let (Some(gcra), Outcome::Failed(StripeError::Api(e))) = (&budget, &outcome)
                    && e.status == 429
                {
                    wake::penalize_rate(gcra);
                }
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

/// Runs `body` in its own transaction. An ERROR inside is caught, logged as a WARNING and the
/// transaction aborted, so one bad job or statement never takes the worker down.
pub fn in_transaction<R>(what: &str, body: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
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
