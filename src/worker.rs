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
//! - [`claim`]: phase 1, claiming and planning;
//! - [`calls`]: the Stripe side of a job (planning it into a call, the call, its outcome);
//! - [`record`]: phase 3, recording outcomes;
//! - [`queue`]: every SQL statement of these steps, and of the loop's own reads;
//! - [`standby_gate`]: between claim and call, the wait for standbys to have the claim's commit.
//!
//! Maintenance (requeueing abandoned jobs, retention, the Stripe snapshot, the sweep after a
//! promotion) is in maintenance/.

mod calls;
mod claim;
mod queue;
mod record;
mod standby_gate;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use onboarding_core::budget::{Budgets, Gcra};
use onboarding_core::budget_turns::BudgetTurns;
use onboarding_core::claim_cursor::ClaimCursor;
use onboarding_core::lane_shares::LaneCredit;
use onboarding_core::pacing::{self, Pacing};
use onboarding_core::permissions::{PermissionCheckError, permission_refused};
use onboarding_core::runtime::signal_safe_runtime;
use onboarding_core::state::JobState;
use onboarding_core::stripe::{ApiKey, ClientConfig, DEFAULT_SEARCH_RATE, StripeClient};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::maintenance::events;
use crate::maintenance::failover::{self, Sweep};
use crate::maintenance::snapshot::take_snapshot;
use crate::pg::latch::{handle_sigterm_in_commits, shutdown_requested, take_latch, wait_for_latch};
use crate::pg::transaction::{in_transaction, report_table_stats};
use crate::pg::{processes, replication};
use crate::rate_budget::SharedAdmission;
use crate::release::{self, Installed};
use crate::requests::{self, RequestKind};
use crate::worker::calls::{Call, Outcome};
use crate::worker::claim::claim_and_plan;
use crate::worker::queue::TakenOn;
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
/// How often to ask at most whether a read of Stripe's events is due (maintenance/events.rs).
const EVENTS_CHECK_EVERY: Duration = Duration::from_secs(5);
const REQUEST_WATCH: Duration = Duration::from_millis(50);

/// Pause after an unexpected database error, so a persistent one does not spin.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// While the key's permissions are refused, how often the worker checks them again by itself.
const PERMISSION_RECHECK: Duration = Duration::from_secs(60);

/// While the database's SQL is another release's, how often to look for `ALTER EXTENSION … UPDATE`
/// (its commit also wakes the workers).
const UPDATE_POLL: Duration = Duration::from_secs(1);

/// While waiting for that update, the shortest gap between two looks (wake-ups come per commit).
const UPDATE_RECHECK: Duration = Duration::from_millis(50);

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
        client: None,
        budgets: Budgets::default(),
        warned_no_key: false,
        key_refused_at: None,
        connect_refused_at: None,
        connect_checked: false,
        next_permission_look: Instant::now() + PERMISSION_RECHECK,
        permissions_checked_for: None,
        last_maintenance: None,
        in_flight: FuturesUnordered::new(),
        budget_turns: Arc::default(),
        next_claim: Instant::now(),
        last_top_up: Instant::now(),
        last_resolve: Instant::now(),
        sql_release: SqlRelease::Unchecked,
        slot,
        standby_gate: StandbyGate::new(slot),
        timeline_noted: false,
        sweep: None,
        claim_cursor: ClaimCursor::default(),
        lane_credit: LaneCredit::default(),
        pacing: Pacing::default(),
        waiting_for_slot: Arc::default(),
        unrecorded: Vec::new(),
        events_poll: None,
        next_events_check: Instant::now(),
        events_warned: false,
    };
    let mut woken = true;
    while !shutdown_requested() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            worker.client = None; // calls in flight keep the client they started with
            worker.warned_no_key = false;
            worker.key_refused_at = None;
            if worker.connect_refused_at.is_some() {
                // The key's Connect permissions may have been granted: check them again now.
                worker.permissions_checked_for = None;
            }
        }
        if worker.sql_release != SqlRelease::Current {
            match worker.check_sql_release(&database_name) {
                Some(true) => woken = true,
                Some(false) => {
                    // Every insert's commit sets the latch: look at most every UPDATE_RECHECK, not
                    // once per commit (requests are refused within that time).
                    if wait_for_latch(UPDATE_POLL) {
                        std::thread::sleep(UPDATE_RECHECK);
                    }
                    continue;
                }
                None => {
                    wake::mark_without_extension(database);
                    log!("onboarding: extension not installed in database \"{database_name}\"; worker exiting");
                    return;
                }
            }
        }
        if worker.stripe_client().is_none() && worker.in_flight.is_empty() {
            // Paused (no key): ignore commit wake-ups, which would otherwise spin the loop; a
            // reload is noticed within a second.
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
    client: Option<StripeClient>,
    /// The shared rate budgets for the configured key (global, per endpoint, search); rebuilt
    /// with the client.
    budgets: Budgets,
    warned_no_key: bool,
    /// When the key's permission check last refused it (see `key_has_permissions`).
    key_refused_at: Option<Instant>,
    /// Since when the key may do customers' work but not Connect's: Connect's jobs wait, the
    /// rest go on (a check refused only Connect's permissions, or a Connect call got a 403).
    connect_refused_at: Option<Instant>,
    /// Whether the last passed check covered Connect, and when to look again whether it should
    /// (a table's Connect policy set, an account link asked for, without a reload).
    connect_checked: bool,
    next_permission_look: Instant,
    /// What the last passed permission check was for (a digest of the key, the API base and
    /// version, and whether Connect is in use): a reload that changed none of them (a new rate
    /// budget, say) checks nothing again. The check's probes wait for the budget on this thread,
    /// and a signup behind them waited past 2 s at a 10/s budget.
    permissions_checked_for: Option<u64>,
    /// When the claim last did maintenance (maintenance/: rescue and retention).
    last_maintenance: Option<Instant>,
    in_flight: FuturesUnordered<CallInFlight>,
    /// Which waiting call takes the next rate-budget slot (core's budget_turns): a signup's first.
    budget_turns: Arc<BudgetTurns>,
    /// Look for due jobs again at this time, even without a wake-up.
    next_claim: Instant,
    last_top_up: Instant,
    last_resolve: Instant,
    sql_release: SqlRelease,
    /// This worker's slot in the process registry (pg/processes.rs).
    slot: usize,
    /// Claimed calls waiting for standbys to have their claim's commit.
    standby_gate: StandbyGate,
    /// Whether this worker has recorded the WAL timeline it runs on (once, before its first claim).
    timeline_noted: bool,
    /// A sweep of Stripe after a promotion, still to do (maintenance/failover.rs).
    sweep: Option<Sweep>,
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
    /// A read of Stripe's events in the background (maintenance/events.rs).
    events_poll: Option<events::Poll>,
    /// When to ask again whether a read of Stripe's events is due.
    next_events_check: Instant,
    /// A failed read of Stripe's events was told (once, until one succeeds).
    events_warned: bool,
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
    /// One pass of the pipeline: requests, then (when woken, due, or with capacity freed) claim
    /// and start calls. Returns what to wait for next, or None when the extension is not
    /// installed in this database.
    fn step(&mut self, woken: bool) -> Option<Wait> {
        let poll = gucs::poll_interval();
        self.look_at_permissions_again();
        self.serve_new_requests();
        if !self.timeline_noted {
            // Before the first claim: on a promoted standby, take back the old primary's jobs.
            match failover::note_timeline() {
                Ok(sweep) => (self.timeline_noted, self.sweep) = (true, sweep),
                Err(_) => return Some(Wait::Latch(ERROR_PAUSE)),
            }
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
        } else if self.client.is_some() && capacity > 0 && (woken || now >= self.next_claim) {
            self.pacing.claimed(now);
            // Maintenance (rescue, retention, a sweep) rides along with a claim, but not with one
            // a commit woke us for, unless it is overdue: a signup's claim should be all signup.
            let maintain = self.last_maintenance.is_none_or(|t| {
                let since = t.elapsed();
                (since >= poll && !woken) || since >= 2 * poll
            });
            if maintain {
                self.sweep_after_promotion();
            }
            // AssertUnwindSafe: a failed claim leaves the cursor half-moved, and it is dropped below.
            let connect_refused = self.connect_refused_at.is_some();
            let (cursor, credit) = (&mut self.claim_cursor, &mut self.lane_credit);
            let announced_from = processes::take_announced_rescan(self.slot);
            let claimed = in_transaction(
                "claiming jobs",
                AssertUnwindSafe(|| {
                    claim_and_plan(capacity as i32, connect_refused, maintain, cursor, announced_from, credit)
                }),
            );
            if claimed.is_err() {
                self.claim_cursor = ClaimCursor::default(); // its claims were undone: start from the front
            }
            match claimed {
                Ok(Ok((calls, claimed, next_due))) => {
                    if maintain {
                        self.last_maintenance = Some(now);
                    }
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
                let _ = in_transaction("turning inserts into jobs", || queue::top_up_pending(gucs::batch_size()));
            }
        }
        self.poll_events();
        if !self.in_flight.is_empty() {
            // Not every tick: a watched job finishes when a batch is recorded or (in another
            // worker) on its own time, which REQUEST_WATCH covers as when idle.
            if self.last_resolve.elapsed() >= REQUEST_WATCH {
                self.resolve_requests();
            }
            return Some(Wait::Calls);
        }
        let mut wait = self.next_claim.saturating_duration_since(Instant::now());
        wait = wait.min(match self.events_poll {
            Some(_) => MIN_SLEEP, // its answer does not wake us: look again soon
            None => self.next_events_check.saturating_duration_since(Instant::now()),
        });
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

    /// Reads Stripe's events in the background when a read is due, and applies a finished read.
    fn poll_events(&mut self) {
        if self.events_poll.as_ref().is_some_and(events::Poll::is_finished) {
            let poll = self.events_poll.take().expect("checked above");
            let next_in = poll.finish(&self.runtime, &mut self.events_warned);
            self.next_events_check = Instant::now() + next_in.min(EVENTS_CHECK_EVERY);
        }
        let now = Instant::now();
        if self.events_poll.is_some() || now < self.next_events_check || gucs::events_poll().is_none() {
            return;
        }
        let Some(client) = self.client.as_ref() else { return };
        let client = client.admitted_by(Arc::new(SharedAdmission::new(self.budgets, self.budget_turns.clone(), false)));
        match events::start(&self.runtime, &client) {
            Ok(poll) => self.events_poll = Some(poll),
            Err(ask_again_in) => self.next_events_check = now + ask_again_in.max(MIN_SLEEP),
        }
    }

    /// Starts the calls whose claims the standbys now have.
    fn release_confirmed_calls(&mut self) {
        for call in self.standby_gate.release() {
            self.start(call);
        }
    }

    /// After a promotion: sweeps Stripe for objects the old primary left behind, until done.
    fn sweep_after_promotion(&mut self) {
        let Some(sweep) = self.sweep.as_ref().filter(|sweep| sweep.due()) else { return };
        let client = self.admitted_client(false).expect("sweeps run with a client");
        if failover::sweep(sweep, &self.runtime, &client) {
            self.sweep = None;
        }
    }

    /// Looks at the database's extension release while it is not known to be this library's.
    /// Returns Some(true) when the worker may go on, Some(false) while it must wait for
    /// `ALTER EXTENSION onboarding UPDATE` (warned once, requests refused meanwhile), None when
    /// the extension is not installed here.
    fn check_sql_release(&mut self, database_name: &str) -> Option<bool> {
        let installed = match in_transaction("reading the extension version", release::installed) {
            Ok(installed) => installed,
            Err(_) => return Some(false), // logged; look again after the pause
        };
        match installed {
            Installed::No => None,
            Installed::Current => {
                if let SqlRelease::Behind(old) = &self.sql_release {
                    log!(
                        "onboarding: database \"{database_name}\" now has version {} (was {old}); worker resumes",
                        release::LIBRARY_VERSION
                    );
                }
                self.sql_release = SqlRelease::Current;
                Some(true)
            }
            Installed::Other(version) => {
                let message = release::update_needed(&version);
                if self.sql_release != SqlRelease::Behind(version.clone()) {
                    ereport!(
                        WARNING,
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!("onboarding: in database \"{database_name}\", {message}"),
                        "Run ALTER EXTENSION onboarding UPDATE; in this database (as its owner or a superuser). \
                         Inserted profiles keep queueing meanwhile and are provisioned right after."
                    );
                    self.sql_release = SqlRelease::Behind(version);
                }
                for request in requests::take_new() {
                    requests::fail(request.ticket, &message);
                }
                Some(false)
            }
        }
    }

    /// Whether the calls waiting for budget slots keep the budget busy for a pacing spacing.
    fn budget_saturated(&self) -> bool {
        // The slower of the global budget and an endpoint's: a flood of one kind of call meets
        // its endpoint's limit first.
        let interval = [self.budgets.global, self.budgets.per_endpoint].into_iter().flatten().map(|g| g.interval).max();
        pacing::saturated(self.waiting_for_slot.load(Ordering::Relaxed), interval)
    }

    /// Starts a claimed job's Stripe call on the runtime's thread, so it goes out when its budget
    /// slot opens even while this thread is in a transaction.
    fn start(&mut self, call: Call) {
        let client = self.client.clone().expect("calls are claimed only with a client");
        let mut admission = SharedAdmission::new(self.budgets, self.budget_turns.clone(), call.lane == 0);
        if !self.budgets.is_unlimited() {
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
                && call.is_connect()
                && permission_refused(error)
            {
                // Recorded as postponed (record.rs).
                self.refuse_connect(&format!("Stripe refused a Connect call: {error}"));
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

    /// Takes on new get_or_create_customer / create_account_link requests: answers at once what
    /// can be (the profile already has the object), else enqueues or joins the job, in our own
    /// transaction, and watches it.
    fn serve_new_requests(&mut self) {
        for request in requests::take_new() {
            if self.client.is_none() {
                requests::fail(request.ticket, "onboarding.stripe_api_key is not set");
                continue;
            }
            if request.kind == RequestKind::AccountLink && self.connect_refused_at.is_some() {
                requests::fail(request.ticket, &format!("no account link: {}", record::CONNECT_REFUSED));
                continue;
            }
            if request.kind == RequestKind::Snapshot {
                let client = self.admitted_client(false).expect("requests are refused without a client");
                take_snapshot(request.ticket, &self.runtime, &client);
                continue;
            }
            let found = in_transaction("taking on a request", || {
                queue::take_on_request(request.kind, request.table, &request.user_id)
            });
            match found {
                Ok(Ok(TakenOn::Exists(object))) => self.answer(&request, &object),
                Ok(Ok(TakenOn::Job(job))) => requests::accept(request.ticket, job),
                Ok(Ok(TakenOn::Refused(refusal))) => {
                    requests::fail(request.ticket, refusal.as_deref().unwrap_or("no job was enqueued"))
                }
                Ok(Err(e)) => requests::fail(request.ticket, &e.to_string()),
                Err(message) => requests::fail(request.ticket, &message),
            }
        }
    }

    /// The client, each of whose requests waits for the shared rate budgets (`first_lane`: ahead
    /// of the queue's requests, as a signup's).
    fn admitted_client(&self, first_lane: bool) -> Option<StripeClient> {
        let admission = SharedAdmission::new(self.budgets, self.budget_turns.clone(), first_lane);
        self.client.as_ref().map(|client| client.admitted_by(Arc::new(admission)))
    }

    /// Answers a request whose Stripe object exists: the id itself, or a fresh account link
    /// (made here, outside any transaction; links are single-use and never stored).
    fn answer(&mut self, request: &requests::Request, object: &str) {
        match request.kind {
            RequestKind::Customer | RequestKind::Snapshot => requests::succeed(request.ticket, object),
            RequestKind::AccountLink => {
                // An application waits for it: ahead of the queue's requests, as a signup's.
                let client = self.admitted_client(true).expect("requests are refused without a client");
                let link = client.create_account_link(object, &request.refresh_url, &request.return_url);
                match self.runtime.block_on(link) {
                    Ok(url) => {
                        requests::succeed(request.ticket, &url);
                        events::account_link_issued(object);
                        self.next_events_check = Instant::now(); // the next poll is due sooner
                    }
                    Err(error) => requests::fail(request.ticket, &error.to_string()),
                }
                check_for_interrupts!();
            }
        }
    }

    /// Answers the callers whose jobs have finished. Returns whether any are still waiting.
    fn resolve_requests(&mut self) -> bool {
        self.last_resolve = Instant::now();
        let watched = requests::watched();
        if watched.is_empty() {
            return false;
        }
        let ids: Vec<i64> = watched.iter().map(|(_, job)| *job).collect();
        let jobs = in_transaction("checking jobs that callers wait for", || queue::watched_jobs(&ids));
        let Ok(Ok(jobs)) = jobs else { return true };
        let mut waiting = false;
        for (request, job_id) in watched {
            match jobs.iter().find(|job| job.id == job_id) {
                None => requests::fail(request.ticket, &format!("job {job_id} no longer exists")),
                Some(job) if JobState::parse(&job.state).is_some_and(JobState::is_open) => waiting = true,
                Some(queue::WatchedJob { state, object: Some(object), .. })
                    if JobState::parse(state) == Some(JobState::Succeeded) =>
                {
                    self.answer(&request, object)
                }
                Some(queue::WatchedJob { state, error, .. }) => requests::fail(
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
            let api_key_text = match gucs::stripe_api_key() {
                Ok(gucs::KeySource::File(key) | gucs::KeySource::Setting(key)) => key,
                Ok(gucs::KeySource::None) => String::new(),
                Err(why) => {
                    if !std::mem::replace(&mut self.warned_no_key, true) {
                        warning!("onboarding: {why}; jobs wait until it is fixed (then SELECT pg_reload_conf())");
                    }
                    return None;
                }
            };
            let Some(api_key) = ApiKey::new(api_key_text.clone()) else {
                if !std::mem::replace(&mut self.warned_no_key, true) {
                    warning!(
                        "onboarding: no Stripe key: onboarding.stripe_api_key_file and onboarding.stripe_api_key \
                         are not set; jobs wait until one is (a file readable only by the postgres OS user, then \
                         ALTER SYSTEM SET onboarding.stripe_api_key_file = '/path'; SELECT pg_reload_conf();)"
                    );
                }
                return None;
            };
            self.budgets = gucs::rate_budget(&api_key_text);
            let config = ClientConfig {
                api_base: gucs::stripe_api_base(),
                api_key,
                connect_timeout: gucs::connect_timeout(),
                request_timeout: gucs::request_timeout(),
                api_version: gucs::stripe_api_version(),
                search_rate: DEFAULT_SEARCH_RATE,
            };
            if self.key_refused_at.is_some_and(|at| at.elapsed() < PERMISSION_RECHECK) {
                return None;
            }
            match StripeClient::new(&config) {
                Ok(client) => {
                    let checked = (api_key_text.as_str(), config.api_base.as_str(), config.api_version.as_deref());
                    if !self.key_has_permissions(&client, checked) {
                        return None;
                    }
                    // Says when a reload took effect (never the key).
                    let per_second = |g: Option<Gcra>| {
                        g.map_or("off".into(), |g| format!("{:.2}/s", 1.0 / g.interval.as_secs_f64()))
                    };
                    let budget = format!(
                        "{} (each endpoint {}, search {})",
                        per_second(self.budgets.global),
                        per_second(self.budgets.per_endpoint),
                        per_second(self.budgets.search)
                    );
                    log!(
                        "onboarding: Stripe client ready: {}, API version {}, rate budget {budget}",
                        config.api_base,
                        config.api_version.as_deref().unwrap_or(onboarding_core::stripe::STRIPE_API_VERSION)
                    );
                    self.client = Some(client)
                }
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

    /// The key may not do Connect's work (`why`): Connect's jobs wait from now on, said once until
    /// a check passes; the check runs again every [`PERMISSION_RECHECK`].
    fn refuse_connect(&mut self, why: &str) {
        if self.connect_refused_at.replace(Instant::now()).is_none() {
            ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("onboarding: {why}; Connect jobs wait until the key may, customers go on"),
                "Give the restricted key the Connect permissions README \"Restricted keys\" lists, then \
                 SELECT pg_reload_conf(); the worker also checks again every minute."
            );
        }
    }

    /// Every [`PERMISSION_RECHECK`]: while Connect's permissions are refused, or once Connect came
    /// into use since a check that did not cover it, the client is built and the key checked again
    /// at the next step (calls in flight keep the client they started with).
    fn look_at_permissions_again(&mut self) {
        let now = Instant::now();
        if now < self.next_permission_look || self.client.is_none() {
            return;
        }
        self.next_permission_look = now + PERMISSION_RECHECK;
        let newly_in_use = !self.connect_checked
            && matches!(in_transaction("looking for Connect's use", tables::connect_in_use), Ok(Ok(true)));
        if self.connect_refused_at.is_some() || newly_in_use {
            self.client = None;
            self.permissions_checked_for = None;
        }
    }

    /// Checks once per key (again every [`PERMISSION_RECHECK`] while refused, and at a reload that
    /// changed the key, the API base or version, or Connect's use) that it may do what this
    /// database needs: customers, and Connect accounts and their links once Connect is in use
    /// (`tables::connect_in_use`: a Connect policy, an account, a Connect job; a column alone is
    /// not). A restricted key without a permission gets one WARNING naming it: without customers'
    /// no job is claimed, without only Connect's no Connect job is (customers go on); none dies
    /// of it, until a reload or the next check.
    /// A check that gets no answer lets the worker go on: its calls retry as any.
    fn key_has_permissions(&mut self, client: &StripeClient, checked: (&str, &str, Option<&str>)) -> bool {
        let connect = match in_transaction("looking for Connect columns", tables::connect_in_use) {
            Ok(Ok(connect)) => connect,
            _ => true,
        };
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (checked, connect).hash(&mut hasher);
            hasher.finish()
        };
        if self.permissions_checked_for == Some(digest) {
            return true;
        }
        let admission = SharedAdmission::new(self.budgets, self.budget_turns.clone(), false);
        let client = client.admitted_by(Arc::new(admission));
        match self.runtime.block_on(client.check_permissions(connect)) {
            Ok(()) => {
                if self.connect_refused_at.take().is_some() {
                    log!("onboarding: the Stripe key may do Connect's work now; Connect jobs go on");
                }
                self.key_refused_at = None;
                self.permissions_checked_for = Some(digest);
                self.connect_checked = connect;
                true
            }
            Err(refused) if refused.connect_only() => {
                self.refuse_connect(&refused.to_string());
                self.key_refused_at = None;
                self.permissions_checked_for = Some(digest);
                self.connect_checked = connect;
                true
            }
            Err(PermissionCheckError::Inconclusive(e)) => {
                warning!("onboarding: could not check the Stripe key's permissions ({e}); going on");
                true
            }
            Err(refused) => {
                self.permissions_checked_for = None;
                if self.key_refused_at.is_none() {
                    ereport!(
                        WARNING,
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        format!("onboarding: {refused}; no job is claimed until the key may"),
                        "Give the restricted key the permissions README \"Restricted keys\" lists (or use another \
                         key), then SELECT pg_reload_conf(); the worker also checks again every minute."
                    );
                }
                self.key_refused_at = Some(Instant::now());
                false
            }
        }
    }
}
