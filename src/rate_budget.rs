//! The rate budgets shared by every worker: the cluster has one Stripe key, and Stripe counts its
//! requests globally, per endpoint and for search (core's `endpoint`), so there is one GCRA
//! (core/src/budget.rs) for all requests and one per endpoint, each a theoretical arrival time in
//! shared memory, updated with compare-and-swap. A request takes its endpoint's slot and a global
//! one at the moment it is sent, never ahead; priority (a signup's request before the queue's) is
//! core's `budget_turns`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use onboarding_core::budget::{Admission, Budgets, monotonic_now};
use onboarding_core::budget_turns::BudgetTurns;
use onboarding_core::endpoint::Endpoint;
use pgrx::prelude::*;
use pgrx::{PgAtomic, pg_shmem_init};

pub struct RateBudget {
    /// The theoretical arrival times (nanoseconds on CLOCK_MONOTONIC): all requests', and each
    /// endpoint's (by `Endpoint::index`).
    global_tat_nanos: AtomicU64,
    endpoint_tat_nanos: [AtomicU64; Endpoint::COUNT],
}

// SAFETY: plain atomics, no pointers: valid in every process that maps the segment.
unsafe impl pgrx::PGRXSharedMemory for RateBudget {}

impl Default for RateBudget {
    fn default() -> Self {
        RateBudget {
            global_tat_nanos: AtomicU64::new(0),
            endpoint_tat_nanos: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

static RATE_BUDGET: PgAtomic<RateBudget> = unsafe { PgAtomic::new(c"onboarding_rate_budget") };

pub fn init_shared_memory() {
    pg_shmem_init!(RATE_BUDGET);
}

/// Takes the slots a request to `endpoint` needs now (its endpoint's, then a global one), or says
/// how long until they may open. Nothing is taken unless both are: an endpoint slot taken while
/// the global budget refuses is given back when no one moved it since (if someone did, it stays
/// spent: a slot lost, never one too many).
pub fn take_slots(budgets: &Budgets, endpoint: Endpoint) -> Result<(), Duration> {
    let shared = RATE_BUDGET.get();
    let own = &shared.endpoint_tat_nanos[endpoint.index()];
    let taken = match budgets.of_endpoint(endpoint) {
        Some(gcra) => Some(update_tat(own, |tat, now| gcra.acquire(tat, now))?),
        None => None,
    };
    let Some(global) = budgets.global else { return Ok(()) };
    update_tat(&shared.global_tat_nanos, |tat, now| global.acquire(tat, now)).map(|_| ()).inspect_err(|_| {
        if let Some((before, after)) = taken {
            let _ = own.compare_exchange(after, before, Ordering::AcqRel, Ordering::Relaxed);
        }
    })
}

/// A 429 came back anyway: every worker pauses before its next request to `endpoint` (to every
/// endpoint, when no per-endpoint budget is kept). Stripe does not say which limit it was; the
/// global one, if it was, answers the other endpoints' requests with 429s of their own.
pub fn penalize(budgets: &Budgets, endpoint: Endpoint) {
    let shared = RATE_BUDGET.get();
    let (cell, gcra) = match (budgets.of_endpoint(endpoint), budgets.global) {
        (Some(gcra), _) => (&shared.endpoint_tat_nanos[endpoint.index()], gcra),
        (None, Some(gcra)) => (&shared.global_tat_nanos, gcra),
        (None, None) => return,
    };
    let _ = update_tat(cell, |tat, now| Ok::<_, Duration>(gcra.penalize(tat, now)));
}

/// Moves a shared TAT (compare-and-swap, so every worker's update lands) unless `step` declines.
/// Returns the TAT before and after, in nanoseconds.
fn update_tat(
    cell: &AtomicU64,
    step: impl Fn(Duration, Duration) -> Result<Duration, Duration>,
) -> Result<(u64, u64), Duration> {
    let mut current = cell.load(Ordering::Acquire);
    loop {
        let next = step(Duration::from_nanos(current), monotonic_now())?.as_nanos() as u64;
        match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok((current, next)),
            Err(actual) => current = actual,
        }
    }
}

/// The admission of one user of the client (a job's call, the events reader, a snapshot): each
/// of its requests waits for its turn (`first_lane`: a signup's, ahead of the queue's) and its
/// slots in the shared budgets.
pub struct SharedAdmission {
    budgets: Budgets,
    turns: Arc<BudgetTurns>,
    first_lane: bool,
    /// Decremented once, when the first request got its slots: how many calls still wait for the
    /// budget (the worker's pacing reads it).
    waiting: Option<Arc<AtomicUsize>>,
    admitted_once: AtomicBool,
    /// When the first request went out (a job's `stripe_request` event is moved to it).
    first_sent_at: Mutex<Option<SystemTime>>,
}

impl SharedAdmission {
    pub fn new(budgets: Budgets, turns: Arc<BudgetTurns>, first_lane: bool) -> SharedAdmission {
        SharedAdmission {
            budgets,
            turns,
            first_lane,
            waiting: None,
            admitted_once: AtomicBool::new(false),
            first_sent_at: Mutex::new(None),
        }
    }

    /// Counted in `waiting` until its first request gets its slots (the caller counted it in).
    pub fn counted_in(mut self, waiting: Arc<AtomicUsize>) -> SharedAdmission {
        self.waiting = Some(waiting);
        self
    }

    /// When its first request was let go, if one was.
    pub fn first_sent_at(&self) -> Option<SystemTime> {
        *self.first_sent_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user is done: if no request ever went (the call failed before sending one), it no
    /// longer counts as waiting.
    pub fn done(&self) {
        if !self.admitted_once.swap(true, Ordering::AcqRel)
            && let Some(waiting) = &self.waiting
        {
            waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Admission for SharedAdmission {
    fn admit(&self, endpoint: Endpoint) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if !self.budgets.is_unlimited() {
                let budgets = self.budgets;
                self.turns.wait_for_slot(self.first_lane, || take_slots(&budgets, endpoint)).await;
            }
            if !self.admitted_once.swap(true, Ordering::AcqRel) {
                *self.first_sent_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
                if let Some(waiting) = &self.waiting {
                    waiting.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })
    }

    fn rate_limited(&self, endpoint: Endpoint) {
        penalize(&self.budgets, endpoint);
    }
}
