//! The background worker: the loop that turns committed jobs into Stripe customers.
//!
//! The loop is a pipeline, and no transaction is ever open during an HTTP call:
//! - a short transaction turns committed inserts into jobs, claims due jobs up to the free
//!   capacity (`onboarding.batch_size` calls in flight, `FOR UPDATE SKIP LOCKED`), re-reads their
//!   profiles, finishes those that need no call, logs `stripe_request` for the rest, and commits;
//! - their Stripe calls join the ones already in flight (paced by the shared rate budget);
//! - as calls finish, one transaction records the finished batch (write-back, retry schedule or
//!   dead letter), which frees capacity for the next claim.
//!
//! Between those steps the loop serves `get_or_create_customer` requests and notices commit
//! wake-ups within a tick, so new work never waits for the slowest call in flight.
//!
//! This file is the loop; what each step does with a job is apart:
//! - [`claim`]: phase 1, claiming and planning (its statements, and every other of the hot path,
//!   are `queries::jobs`);
//! - [`calls`]: the Stripe side of a job (planning it into a call, the call, its outcome);
//! - [`record`]: phase 3, recording outcomes;
//! - [`standby_gate`]: between claim and call, the wait for standbys to have the claim's commit;
//! - [`serving`]: `get_or_create_customer`, account link and snapshot requests;
//! - [`sql_release`]: waiting for `ALTER EXTENSION onboarding UPDATE` when the SQL is behind.
//!
//! The Stripe key's life cycle (client, permission checks, rate budgets) is stripe_key.rs; the
//! maintenance services (failover, rescue, retention, the events reader) are maintenance/, run by
//! its supervisor at each step.

mod accounts_v2;
mod calls;
mod claim;
mod outcome;
mod record;
mod serving;
mod sql_release;
mod standby_gate;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use onboarding_core::claim_cursor::ClaimCursor;
use onboarding_core::lane_shares::LaneCredit;
use onboarding_core::pacing::{self, Pacing};
use onboarding_core::permissions::permission_refused;
use onboarding_core::runtime::signal_safe_runtime;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::maintenance::{Context, Supervisor};
use crate::pg::latch::{handle_sigterm_in_commits, shutdown_requested, take_latch, wait_for_latch};
use crate::pg::transaction::{in_transaction, report_table_stats};
use crate::pg::{processes, replication};
use crate::queries::jobs;
use crate::release::Installed;
use crate::stripe_key::StripeKey;
use crate::worker::calls::{Call, Outcome};
use crate::worker::claim::claim_and_plan;
use crate::worker::record::record_results;
use crate::worker::standby_gate::StandbyGate;
use crate::{gucs, tables, wake};

/// Shortest wait before looking for due jobs again when a claim found fewer than it could take.
const MIN_SLEEP: Duration = Duration::from_millis(20);

/// While calls are in flight, how often the loop looks up from them (wake-ups, requests).
const TICK: Duration = Duration::from_millis(5);

/// While calls wait for standbys (and none are in flight), how often to look whether they may go.
const STANDBY_POLL: Duration = Duration::from_millis(1);

/// At capacity, how often commit wake-ups may top up the pending jobs from the intake.
const TOP_UP_EVERY: Duration = pacing::SPACING;

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
    handle_sigterm_in_commits();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    // Every commit of a worker is durable here and, where synchronous standbys are configured,
    // waits for them whatever the role's or database's setting (standby_gate.rs checks it did).
    unsafe {
        pg_sys::SetConfigOption(
            c"synchronous_commit".as_ptr(),
            c"on".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
    // The postmaster we were forked from holds no Stripe key (gucs.rs): read the files ourselves,
    // as the one kind of process that keeps it.
    gucs::hold_the_key();
    tables::wait_briefly_for_locks();
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    let runtime = signal_safe_runtime().unwrap_or_else(|e| error!("onboarding: cannot start the HTTP runtime: {e}"));
    let Some(slot) = processes::publish_this_worker() else {
        warning!("onboarding: all {} worker slots are taken; not serving \"{database_name}\"", processes::MAX_WORKERS);
        return;
    };
    log!("onboarding: worker started for database \"{database_name}\"");

    let mut worker = Worker {
        runtime,
        key: StripeKey::new(),
        maintenance: Supervisor::default(),
        in_flight: FuturesUnordered::new(),
        next_claim: Instant::now(),
        last_top_up: Instant::now(),
        last_resolve: Instant::now(),
        sql_release: SqlRelease::Unchecked,
        slot,
        standby_gate: StandbyGate::new(slot),
        claim_cursor: ClaimCursor::default(),
        lane_credit: LaneCredit::default(),
        pacing: Pacing::default(),
        waiting_for_slot: Arc::default(),
        unrecorded: Vec::new(),
    };
    let mut woken = true;
    while !shutdown_requested() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            worker.key.reloaded();
        }
        if worker.sql_release != SqlRelease::Current {
            match worker.check_sql_release(&database_name) {
                Some(true) => woken = true,
                Some(false) => {
                    Worker::wait_for_update();
                    continue;
                }
                None => {
                    wake::mark_without_extension(database);
                    log!("onboarding: extension not installed in database \"{database_name}\"; worker exiting");
                    return;
                }
            }
        }
        let usable = worker.key.client(&worker.runtime).is_some();
        processes::publish_key_state(worker.slot, worker.key.state() as u32);
        if !usable && worker.in_flight.is_empty() {
            // Paused (no key): ignore commit wake-ups, which would otherwise spin the loop; a
            // reload is noticed within a second, and so is DROP EXTENSION (this worker would
            // otherwise hold its slot and connection until a key came).
            if matches!(in_transaction("reading the extension version", crate::release::installed), Ok(Installed::No)) {
                wake::mark_without_extension(database);
                log!("onboarding: extension not installed in database \"{database_name}\"; worker exiting");
                return;
            }
            worker.serve_new_requests(); // refuses them
            std::thread::sleep(Duration::from_secs(1).min(gucs::poll_interval()));
            continue;
        }
        let Some(wait) = worker.step(std::mem::take(&mut woken)) else {
            // Not installed here (any more): make way, until CREATE EXTENSION wakes the launcher.
            wake::mark_without_extension(database);
            log!("onboarding: extension not installed in database \"{database_name}\"; worker exiting");
            return;
        };
        let flush_stats_in = report_table_stats();
        woken = match wait {
            Wait::Latch(timeout) => wait_for_latch(flush_stats_in.map_or(timeout, |t| t.min(timeout))),
            // Places the finished calls free are claimed by next_claim (now, when the last claim was
            // full): a call that finishes is no sign of more work, a commit is.
            Wait::Calls => {
                worker.collect_finished_calls();
                take_latch()
            }
        };
    }
    worker.record_finished_calls(true);
    log!("onboarding: worker for database \"{database_name}\" stopped");
}

/// A Stripe call in flight on the runtime's thread, resolving to what it needs recorded.
type CallInFlight = tokio::task::JoinHandle<(Call, Outcome, Duration)>;

struct Worker {
    runtime: tokio::runtime::Runtime,
    /// The Stripe key: client, permission checks, rate budgets (stripe_key.rs).
    key: StripeKey,
    /// Failover, rescue, retention, the events reader (maintenance/).
    maintenance: Supervisor,
    in_flight: FuturesUnordered<CallInFlight>,
    /// Look for due jobs again at this time, even without a wake-up.
    next_claim: Instant,
    last_top_up: Instant,
    last_resolve: Instant,
    sql_release: SqlRelease,
    /// This worker's slot in the process registry (pg/processes.rs).
    slot: usize,
    /// Claimed calls waiting for standbys to have their claim's commit.
    standby_gate: StandbyGate,
    /// Where claims start in each lane (core's claim_cursor): past earlier claims' dead entries.
    claim_cursor: ClaimCursor,
    /// What the lower lanes' shares have earned (core's lane_shares).
    lane_credit: LaneCredit,
    /// Claims and records spaced while the rate budget is the limit (core's pacing).
    pacing: Pacing,
    /// Calls in flight that have not got their budget slot yet.
    waiting_for_slot: Arc<AtomicUsize>,
    /// Finished calls not recorded yet (while paced, they wait to be recorded together).
    unrecorded: Vec<(Call, (Outcome, Duration))>,
}

/// Whether the database's SQL is this library's release (release.rs), as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
enum SqlRelease {
    /// Not looked yet (worker start), or a claim found it changed.
    Unchecked,
    Current,
    /// Another release's: the worker waits, touching nothing, and has said so once at WARNING.
    Behind(String),
}

/// What the loop waits for after a step.
enum Wait {
    /// Nothing in flight: the latch (a commit, a request, a signal), at most this long.
    Latch(Duration),
    /// Calls in flight: the first to finish, or a tick.
    Calls,
}

impl Worker {
    /// One pass of the pipeline: requests and the maintenance due, then (when woken, due, or with
    /// capacity freed) claim and start calls. Returns what to wait for next, or None when the
    /// extension is not installed in this database.
    fn step(&mut self, woken: bool) -> Option<Wait> {
        let poll = gucs::poll_interval();
        self.key.look_at_permissions_again();
        self.serve_new_requests();
        let context = Context { now: Instant::now(), woken_by_commit: woken, runtime: &self.runtime, key: &self.key };
        self.maintenance.run_due(&context);
        if self.maintenance.holds_claims() {
            return Some(Wait::Latch(ERROR_PAUSE));
        }
        self.release_confirmed_calls();
        self.record_finished_calls(false);
        let busy = self.in_flight.len() + self.standby_gate.held_calls();
        let capacity = (gucs::batch_size().max(1) as usize).saturating_sub(busy);
        let now = Instant::now();
        let paced_until = self.pacing.claim_at(self.budget_saturated(), now);
        if paced_until > now && (woken || now >= self.next_claim) {
            // The calls waiting for budget slots keep Stripe busy meanwhile: claim then, together.
            self.next_claim = self.next_claim.min(paced_until);
        } else if self.key.current().is_some() && capacity > 0 && (woken || now >= self.next_claim) {
            self.pacing.claimed(now);
            // AssertUnwindSafe: a failed claim leaves the cursor half-moved, and it is dropped below.
            let held_back = self.key.held_back();
            let (cursor, credit) = (&mut self.claim_cursor, &mut self.lane_credit);
            let announced_from = processes::take_announced_rescan(self.slot);
            let claimed = in_transaction(
                "claiming jobs",
                AssertUnwindSafe(|| claim_and_plan(capacity as i32, held_back, cursor, announced_from, credit)),
            );
            if claimed.is_err() {
                self.claim_cursor = ClaimCursor::default(); // its claims were undone: start from the front
            }
            match claimed {
                Ok(Ok((calls, claimed, next_due))) => {
                    let ready = self.standby_gate.admit(replication::last_commit_end(), calls);
                    ready.into_iter().for_each(|call| self.start(call));
                    // A full claim may have left more behind: claim again as soon as there is room.
                    self.next_claim = if claimed >= capacity {
                        now
                    } else {
                        now + next_due.map_or(poll, |due| due.clamp(MIN_SLEEP, poll))
                    };
                }
                Ok(Err(Installed::No)) => return None,
                Ok(Err(Installed::Other(_) | Installed::Current)) => {
                    // Updated (or downgraded) under us: look again before touching anything.
                    self.sql_release = SqlRelease::Unchecked;
                    return Some(Wait::Latch(Duration::ZERO));
                }
                Err(_) => self.next_claim = now + ERROR_PAUSE,
            }
        } else if woken && capacity == 0 {
            // New work at capacity: claim it as soon as calls free their places.
            self.next_claim = now;
            if self.last_top_up.elapsed() >= TOP_UP_EVERY {
                // Keep a batch of new inserts as pending jobs (their status and cancel work by job
                // id), but leave a backlog in the intake, where it costs least.
                self.last_top_up = now;
                let _ = in_transaction("turning inserts into jobs", || jobs::top_up_pending(gucs::batch_size()));
            }
        }
        if !self.in_flight.is_empty() {
            // Not every tick: a watched job finishes when a batch is recorded or (in another
            // worker) on its own time, which REQUEST_WATCH covers as when idle.
            if self.last_resolve.elapsed() >= REQUEST_WATCH {
                self.resolve_requests();
            }
            return Some(Wait::Calls);
        }
        let next = self.maintenance.next_due().map_or(self.next_claim, |due| due.min(self.next_claim));
        let mut wait = next.saturating_duration_since(Instant::now());
        if self.standby_gate.held_calls() > 0 {
            // Standbys confirm without waking us: look again soon (a read of shared memory, or
            // of pg_stat_replication for onboarding.wait_for_standbys).
            wait = wait.min(STANDBY_POLL);
        }
        // Another worker may finish a watched job without waking us: watch closely meanwhile.
        if self.resolve_requests() {
            wait = wait.min(REQUEST_WATCH);
        }
        Some(Wait::Latch(wait))
    }

    /// Starts the calls whose claims the standbys now have.
    fn release_confirmed_calls(&mut self) {
        for call in self.standby_gate.release() {
            self.start(call);
        }
    }

    /// Whether the calls waiting for budget slots keep the budget busy for a pacing spacing.
    fn budget_saturated(&self) -> bool {
        // The slower of the global budget and an endpoint's: a flood of one kind of call meets
        // its endpoint's limit first.
        let budgets = self.key.budgets();
        let interval = [budgets.global, budgets.per_endpoint].into_iter().flatten().map(|g| g.interval).max();
        pacing::saturated(self.waiting_for_slot.load(Ordering::Relaxed), interval)
    }

    /// Starts a claimed job's Stripe call on the runtime's thread, so it goes out when its budget
    /// slot opens even while this thread is in a transaction.
    fn start(&mut self, call: Call) {
        let client = self.key.current().cloned().expect("calls are claimed only with a client");
        let mut admission = self.key.admission(call.lane == 0);
        if !self.key.budgets().is_unlimited() {
            self.waiting_for_slot.fetch_add(1, Ordering::Relaxed);
            admission = admission.counted_in(self.waiting_for_slot.clone());
        }
        let admission = Arc::new(admission);
        let client = client.admitted_by(admission.clone());
        log!("onboarding: {} (job {}, attempt {})", call.describe(), call.job_id, call.attempts);
        self.in_flight.push(self.runtime.spawn(async move {
            let mut call = call;
            let outcome = call.perform(&client).await;
            admission.done();
            // Timed from its first request's slot: the wait for the budget is not Stripe's time.
            call.sent_at = admission.first_sent_at();
            let elapsed = call.sent_at.and_then(|at| at.elapsed().ok()).unwrap_or_default();
            (call, outcome, elapsed)
        }));
    }

    /// Runs the calls in flight until one finishes (or a tick passes), then records every call
    /// that has finished in one transaction (while paced, with those of the next ticks). Calls
    /// still in flight at shutdown are dropped: their jobs stay `running` and the next worker
    /// requeues them; the retry reuses their idempotency keys.
    fn collect_finished_calls(&mut self) {
        let in_flight = &mut self.in_flight;
        let finished = self.runtime.block_on(async {
            let mut finished = Vec::new();
            tokio::select! {
                Some(first) = in_flight.next() => finished.push(first),
                () = tokio::time::sleep(TICK) => return finished,
            }
            while let Some(Some(more)) = in_flight.next().now_or_never() {
                finished.push(more);
            }
            finished
        });
        check_for_interrupts!();
        // A call that panicked leaves its job `running`: the lease brings it back.
        let finished: Vec<_> = finished
            .into_iter()
            .filter_map(|joined| joined.inspect_err(|e| warning!("onboarding: a Stripe call failed: {e}")).ok())
            .collect();
        for (call, outcome, _) in &finished {
            if let Outcome::Failed(error) = outcome
                && permission_refused(error)
            {
                // Recorded as postponed (record.rs).
                if call.is_connect() {
                    self.key.refuse_connect(&format!("Stripe refused a Connect call: {error}"));
                } else if call.is_v2() {
                    self.key.refuse_accounts_v2(&format!("Stripe refused a /v2 call: {error}"));
                }
            }
        }
        self.unrecorded.extend(finished.into_iter().map(|(call, outcome, elapsed)| (call, (outcome, elapsed))));
        self.record_finished_calls(false);
    }

    /// Records the finished calls in one transaction: at once, or while the budget is saturated
    /// and other calls are in flight, once a pacing spacing has passed since the last record
    /// (`all`: at once whatever the pacing, as at shutdown).
    fn record_finished_calls(&mut self, all: bool) {
        if self.unrecorded.is_empty() {
            return;
        }
        let now = Instant::now();
        if !all && !self.in_flight.is_empty() && self.pacing.record_at(self.budget_saturated(), now) > now {
            return;
        }
        self.pacing.recorded(now);
        let (calls, results): (Vec<Call>, Vec<(Outcome, Duration)>) =
            std::mem::take(&mut self.unrecorded).into_iter().unzip();
        // Failed calls were just rescheduled: look for due work again by their retry time.
        if let Some(due) = record_results(&calls, results, &self.claim_cursor.current()) {
            self.next_claim = self.next_claim.min(Instant::now() + due.max(MIN_SLEEP));
        }
        self.resolve_requests(); // callers waiting on these jobs hear at once
    }
}
