//! Waking the worker when, and only when, an enqueuing transaction commits (pg_net's pattern).
//!
//! The worker publishes its PGPROC number in shared memory. The insert trigger calls
//! `onboarding._wake_worker_after_commit()`, which registers a commit callback once per
//! transaction; on COMMIT the callback sets the worker's latch, on ABORT nothing happens.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use pgrx::prelude::*;
use pgrx::{PgAtomic, PgXactCallbackEvent, pg_shmem_init, register_xact_callback};

const NO_WORKER: i32 = -1;

static WORKER_PROCNO: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"onboarding_worker_procno") };

/// Set in the postmaster when preloading; inherited by every backend it forks.
static SHARED_MEMORY_READY: AtomicBool = AtomicBool::new(false);

/// Backend-local: a wake-up is already registered for the current transaction.
static WAKE_REGISTERED: AtomicBool = AtomicBool::new(false);

pub fn init_shared_memory() {
    pg_shmem_init!(WORKER_PROCNO = AtomicI32::new(NO_WORKER));
    SHARED_MEMORY_READY.store(true, Ordering::Relaxed);
}

pub fn shared_memory_ready() -> bool {
    SHARED_MEMORY_READY.load(Ordering::Relaxed)
}

/// Called by the worker once connected: from now on commits wake this process.
pub fn publish_this_worker() {
    let procno = unsafe { (*pg_sys::MyProc).pgprocno };
    WORKER_PROCNO.get().store(procno, Ordering::Release);
}

pub fn unpublish_this_worker() {
    WORKER_PROCNO.get().store(NO_WORKER, Ordering::Release);
}

#[pg_extern(name = "_wake_worker_after_commit", volatile, parallel_unsafe)]
fn wake_worker_after_commit() {
    if !shared_memory_ready() || WAKE_REGISTERED.swap(true, Ordering::Relaxed) {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_REGISTERED.store(false, Ordering::Relaxed);
        set_worker_latch();
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || WAKE_REGISTERED.store(false, Ordering::Relaxed));
}

/// Runs inside a commit callback, where an ERROR would be a PANIC: no locks, no allocation, no
/// failure path. A stale PGPROC number (worker restarting) only causes a harmless spurious wake.
fn set_worker_latch() {
    let procno = WORKER_PROCNO.get().load(Ordering::Acquire);
    if procno == NO_WORKER {
        return;
    }
    unsafe {
        let proc_global = pg_sys::ProcGlobal;
        if proc_global.is_null() || procno < 0 || procno as u32 >= (*proc_global).allProcCount {
            return;
        }
        let worker_proc = (*proc_global).allProcs.add(procno as usize);
        pg_sys::SetLatch(&raw mut (*worker_proc).procLatch);
    }
}
