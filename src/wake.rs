//! Shared memory that ties the processes together, and waking them only after commit (pg_net's
//! pattern).
//!
//! Each worker publishes its PGPROC number and database in a slot; the launcher publishes its own.
//! The insert trigger (intake.rs) and the plpgsql enqueuers (`onboarding._wake_worker_after_commit()`)
//! flag the transaction; a transaction callback, installed once per backend, then on COMMIT sets
//! the latches of the workers of this database (they share the queue through `SKIP LOCKED`, so the
//! idle ones compete for the new jobs); on ABORT nothing happens. `CREATE EXTENSION` likewise wakes
//! the launcher after commit.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use onboarding_core::budget::{Gcra, monotonic_now};

use pgrx::prelude::*;
use pgrx::{PgAtomic, pg_shmem_init};

const NO_PROCESS: i32 = -1;
const NO_DATABASE: u32 = 0;

/// Worker slots for all databases together; also the upper bound of `onboarding.workers`.
pub const MAX_WORKERS: usize = 64;

pub struct Processes {
    launcher: AtomicI32,
    worker_procnos: [AtomicI32; MAX_WORKERS],
    worker_databases: [AtomicU32; MAX_WORKERS],
    /// Databases a worker found without the extension: the launcher leaves them alone until
    /// `CREATE EXTENSION` there (or its periodic full rescan).
    without_extension: [AtomicU32; MAX_WORKERS],
    /// The rate budget's theoretical arrival time (nanoseconds on CLOCK_MONOTONIC), shared by
    /// every worker: the cluster has one Stripe key.
    rate_tat_nanos: AtomicU64,
}

// SAFETY: plain atomics, no pointers: valid in every process that maps the segment.
unsafe impl pgrx::PGRXSharedMemory for Processes {}

impl Default for Processes {
    fn default() -> Self {
        Processes {
            launcher: AtomicI32::new(NO_PROCESS),
            worker_procnos: std::array::from_fn(|_| AtomicI32::new(NO_PROCESS)),
            worker_databases: std::array::from_fn(|_| AtomicU32::new(NO_DATABASE)),
            without_extension: std::array::from_fn(|_| AtomicU32::new(NO_DATABASE)),
            rate_tat_nanos: AtomicU64::new(0),
        }
    }
}

static PROCESSES: PgAtomic<Processes> = unsafe { PgAtomic::new(c"onboarding_processes") };

/// Set in the postmaster when preloading; inherited by every backend it forks.
static SHARED_MEMORY_READY: AtomicBool = AtomicBool::new(false);

/// Backend-local: what the current transaction wants done at commit, and whether the callback
/// that does it is installed.
static WAKE_WORKERS: AtomicBool = AtomicBool::new(false);
static WAKE_LAUNCHER: AtomicBool = AtomicBool::new(false);
static CALLBACK_INSTALLED: AtomicBool = AtomicBool::new(false);

pub fn init_shared_memory() {
    pg_shmem_init!(PROCESSES);
    crate::requests::init_shared_memory();
    SHARED_MEMORY_READY.store(true, Ordering::Relaxed);
}

pub fn shared_memory_ready() -> bool {
    SHARED_MEMORY_READY.load(Ordering::Relaxed)
}

fn my_database() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Called by a worker once connected: from now on commits in its database wake it. Returns its
/// slot, or None when all are taken. The slot is freed when the process exits, however it exits.
pub fn publish_this_worker() -> Option<usize> {
    let shared = PROCESSES.get();
    let slot = (0..MAX_WORKERS).find(|&i| {
        shared.worker_procnos[i].compare_exchange(NO_PROCESS, my_procno(), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    })?;
    shared.worker_databases[slot].store(my_database(), Ordering::Release);
    unsafe { pg_sys::before_shmem_exit(Some(unpublish_worker), pg_sys::Datum::from(slot)) };
    Some(slot)
}

#[pg_guard]
unsafe extern "C-unwind" fn unpublish_worker(_code: i32, slot: pg_sys::Datum) {
    let shared = PROCESSES.get();
    shared.worker_databases[slot.value()].store(NO_DATABASE, Ordering::Release);
    shared.worker_procnos[slot.value()].store(NO_PROCESS, Ordering::Release);
}

pub fn publish_launcher() {
    PROCESSES.get().launcher.store(my_procno(), Ordering::Release);
}

pub fn mark_without_extension(database: pg_sys::Oid) {
    let marks = &PROCESSES.get().without_extension;
    if marks.iter().any(|m| m.load(Ordering::Acquire) == database.to_u32()) {
        return;
    }
    // When the list is full the database just stays unmarked: the launcher retries it later.
    let _ = marks
        .iter()
        .find(|m| m.compare_exchange(NO_DATABASE, database.to_u32(), Ordering::AcqRel, Ordering::Relaxed).is_ok());
}

pub fn without_extension(database: pg_sys::Oid) -> bool {
    PROCESSES.get().without_extension.iter().any(|m| m.load(Ordering::Acquire) == database.to_u32())
}

pub fn forget_databases_without_extension() {
    PROCESSES.get().without_extension.iter().for_each(|m| m.store(NO_DATABASE, Ordering::Release));
}

#[pg_extern(name = "_wake_worker_after_commit", volatile, parallel_unsafe)]
fn wake_worker_after_commit() {
    wake_workers_after_commit();
}

/// Called by `CREATE EXTENSION`: once it commits, the launcher starts this database's workers.
#[pg_extern(name = "_launch_after_commit", volatile, parallel_unsafe)]
fn launch_after_commit() {
    after_commit(&WAKE_LAUNCHER);
}

/// Wakes this database's workers once the current transaction commits (the insert trigger's and
/// the plpgsql enqueuers' way to say "new work").
pub fn wake_workers_after_commit() {
    after_commit(&WAKE_WORKERS);
}

fn after_commit(wanted: &AtomicBool) {
    if !shared_memory_ready() {
        return;
    }
    wanted.store(true, Ordering::Relaxed);
    // One plain callback for the backend's lifetime: it costs a branch per transaction, where
    // registering closures per transaction cost more than the insert trigger's own work.
    if !CALLBACK_INSTALLED.swap(true, Ordering::Relaxed) {
        unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut()) };
    }
}

/// Runs at every transaction end of a backend that ever asked for a wake-up. On commit it only
/// touches atomics and latches: an ERROR here would be a PANIC.
#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT => {
            if WAKE_WORKERS.swap(false, Ordering::Relaxed) {
                set_worker_latches();
            }
            if WAKE_LAUNCHER.swap(false, Ordering::Relaxed) {
                let database = my_database();
                let marks = &PROCESSES.get().without_extension;
                marks.iter().for_each(|m| {
                    let _ = m.compare_exchange(database, NO_DATABASE, Ordering::AcqRel, Ordering::Relaxed);
                });
                set_latch_of(PROCESSES.get().launcher.load(Ordering::Acquire));
            }
        }
        // A prepared transaction commits later, maybe elsewhere: the workers' poll finds its jobs.
        XACT_EVENT_ABORT | XACT_EVENT_PREPARE => {
            WAKE_WORKERS.store(false, Ordering::Relaxed);
            WAKE_LAUNCHER.store(false, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// Takes a slot of the shared rate budget for a request about to be sent, or says how long until
/// one opens.
pub fn take_rate_slot(gcra: &Gcra) -> Result<(), Duration> {
    update_rate_tat(|tat, now| gcra.acquire(tat, now)).map(|_| ())
}

/// A 429 came back anyway: every worker pauses before its next request.
pub fn penalize_rate(gcra: &Gcra) {
    let _ = update_rate_tat(|tat, now| Ok::<_, Duration>(gcra.penalize(tat, now)));
}

/// Moves the shared TAT (compare-and-swap, so every worker's update lands) unless `step` declines.
fn update_rate_tat(step: impl Fn(Duration, Duration) -> Result<Duration, Duration>) -> Result<Duration, Duration> {
    let cell = &PROCESSES.get().rate_tat_nanos;
    let mut current = cell.load(Ordering::Acquire);
    loop {
        let next = step(Duration::from_nanos(current), monotonic_now())?;
        match cell.compare_exchange_weak(current, next.as_nanos() as u64, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(next),
            Err(actual) => current = actual,
        }
    }
}

static mut PREVIOUS_OBJECT_ACCESS_HOOK: pg_sys::object_access_hook_type = None;

/// `DROP EXTENSION onboarding` wakes this database's workers after commit, so they notice at once
/// that the extension is gone and exit (see worker.rs).
pub fn install_drop_extension_hook() {
    unsafe {
        PREVIOUS_OBJECT_ACCESS_HOOK = pg_sys::object_access_hook;
        pg_sys::object_access_hook = Some(on_object_access);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_object_access(
    access: pg_sys::ObjectAccessType::Type,
    class_id: pg_sys::Oid,
    object_id: pg_sys::Oid,
    sub_id: i32,
    arg: *mut std::ffi::c_void,
) {
    unsafe {
        if let Some(previous) = PREVIOUS_OBJECT_ACCESS_HOOK {
            previous(access, class_id, object_id, sub_id, arg);
        }
        if access == pg_sys::ObjectAccessType::OAT_DROP
            && class_id == pg_sys::ExtensionRelationId
            && pg_sys::get_extension_oid(c"onboarding".as_ptr(), true) == object_id
        {
            after_commit(&WAKE_WORKERS);
        }
    }
}

/// Wakes the workers of this database. Runs inside a commit callback, where an ERROR would be a
/// PANIC: atomics only, no locks, no allocation, no failure path. A stale slot (a worker
/// restarting) only causes a harmless spurious wake.
pub fn set_worker_latches() {
    let shared = PROCESSES.get();
    let database = my_database();
    for slot in 0..MAX_WORKERS {
        if shared.worker_databases[slot].load(Ordering::Acquire) == database {
            set_latch_of(shared.worker_procnos[slot].load(Ordering::Acquire));
        }
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
