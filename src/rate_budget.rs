//! The rate budget shared by every worker: the cluster has one Stripe key, so one GCRA
//! (core/src/budget.rs) whose theoretical arrival time lives in shared memory, updated with
//! compare-and-swap. A slot is taken at the moment a request is sent, never ahead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use onboarding_core::budget::{Gcra, monotonic_now};
use pgrx::prelude::*;
use pgrx::{PgAtomic, pg_shmem_init};

pub struct RateBudget {
    /// The theoretical arrival time (nanoseconds on CLOCK_MONOTONIC).
    tat_nanos: AtomicU64,
}

// SAFETY: a plain atomic, no pointers: valid in every process that maps the segment.
unsafe impl pgrx::PGRXSharedMemory for RateBudget {}

impl Default for RateBudget {
    fn default() -> Self {
        RateBudget { tat_nanos: AtomicU64::new(0) }
    }
}

static RATE_BUDGET: PgAtomic<RateBudget> = unsafe { PgAtomic::new(c"onboarding_rate_budget") };

pub fn init_shared_memory() {
    pg_shmem_init!(RATE_BUDGET);
}

/// Takes a slot of the shared rate budget for a request about to be sent, or says how long until
/// one opens.
pub fn take_slot(gcra: &Gcra) -> Result<(), Duration> {
    update_tat(|tat, now| gcra.acquire(tat, now)).map(|_| ())
}

/// Waits for a slot, sleeping this thread (outside the async batch: snapshots and links).
pub fn wait_for_slot(gcra: &Gcra) {
    while let Err(wait) = take_slot(gcra) {
        std::thread::sleep(wait);
    }
}

/// A 429 came back anyway: every worker pauses before its next request.
pub fn penalize(gcra: &Gcra) {
    let _ = update_tat(|tat, now| Ok::<_, Duration>(gcra.penalize(tat, now)));
}

/// Moves the shared TAT (compare-and-swap, so every worker's update lands) unless `step` declines.
fn update_tat(step: impl Fn(Duration, Duration) -> Result<Duration, Duration>) -> Result<Duration, Duration> {
    let cell = &RATE_BUDGET.get().tat_nanos;
    let mut current = cell.load(Ordering::Acquire);
    loop {
        let next = step(Duration::from_nanos(current), monotonic_now())?;
        match cell.compare_exchange_weak(current, next.as_nanos() as u64, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(next),
            Err(actual) => current = actual,
        }
    }
}
