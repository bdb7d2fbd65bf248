//! Waking the worker when, and only when, an enqueuing transaction commits (pg_net's pattern).
//!
//! Each worker publishes its PGPROC number in a shared-memory slot. The insert trigger calls
//! `onboarding._wake_worker_after_commit()`, which registers a commit callback once per
//! transaction; on COMMIT the callback sets every worker's latch (they share the queue through
//! `SKIP LOCKED`, so the idle ones compete for the new jobs), on ABORT nothing happens.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use pgrx::prelude::*;
use pgrx::{PgAtomic, PgXactCallbackEvent, pg_shmem_init, register_xact_callback};

const NO_WORKER: i32 = -1;

/// Upper bound of `onboarding.workers`.
pub const MAX_WORKERS: usize = 16;

/// One PGPROC number per worker slot, `NO_WORKER` when the slot's worker is not running.
pub struct WorkerSlots([AtomicI32; MAX_WORKERS]);

// SAFETY: plain atomics, no pointers: valid in every process that maps the segment.
unsafe impl pgrx::PGRXSharedMemory for WorkerSlots {}

impl Default for WorkerSlots {
    fn default() -> Self {
        WorkerSlots(std::array::from_fn(|_| AtomicI32::new(NO_WORKER)))
    }
}

static WORKERS: PgAtomic<WorkerSlots> = unsafe { PgAtomic::new(c"onboarding_worker_slots") };

/// Set in the postmaster when preloading; inherited by every backend it forks.
static SHARED_MEMORY_READY: AtomicBool = AtomicBool::new(false);

/// Backend-local: a wake-up is already registered for the current transaction.
static WAKE_REGISTERED: AtomicBool = AtomicBool::new(false);

pub fn init_shared_memory() {
    pg_shmem_init!(WORKERS);
    crate::requests::init_shared_memory();
    SHARED_MEMORY_READY.store(true, Ordering::Relaxed);
}

pub fn shared_memory_ready() -> bool {
    SHARED_MEMORY_READY.load(Ordering::Relaxed)
}

/// Called by worker `slot` once connected: from now on commits wake this process.
pub fn publish_this_worker(slot: usize) {
    WORKERS.get().0[slot].store(my_procno(), Ordering::Release);
}

pub fn unpublish_this_worker(slot: usize) {
    WORKERS.get().0[slot].store(NO_WORKER, Ordering::Release);
}

#[pg_extern(name = "_wake_worker_after_commit", volatile, parallel_unsafe)]
fn wake_worker_after_commit() {
    if !shared_memory_ready() || WAKE_REGISTERED.swap(true, Ordering::Relaxed) {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_REGISTERED.store(false, Ordering::Relaxed);
        set_worker_latches();
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || WAKE_REGISTERED.store(false, Ordering::Relaxed));
}

/// Runs inside a commit callback, where an ERROR would be a PANIC: no locks, no allocation, no
/// failure path. A stale PGPROC number (worker restarting) only causes a harmless spurious wake.
pub fn set_worker_latches() {
    for slot in &WORKERS.get().0 {
        set_latch_of(slot.load(Ordering::Acquire));
    }
}

/// This process's PGPROC number, which others use to wake it with [`set_latch_of`].
pub fn my_procno() -> i32 {
    unsafe { (*pg_sys::MyProc).pgprocno }
}

/// Sets the latch of the process with this PGPROC number; ignores numbers out of range.
pub fn set_latch_of(procno: i32) {
    unsafe {
        let proc_global = pg_sys::ProcGlobal;
        if procno < 0 || proc_global.is_null() || procno as u32 >= (*proc_global).allProcCount {
            return;
        }
        let target = (*proc_global).allProcs.add(procno as usize);
        pg_sys::SetLatch(&raw mut (*target).procLatch);
    }
}
