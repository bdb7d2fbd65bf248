//! Waking processes only after commit (pg_net's pattern), and the databases the launcher leaves
//! alone until such a wake-up.
//!
//! The insert trigger (intake.rs) and the plpgsql enqueuers (`onboarding._wake_worker_after_commit()`)
//! flag the transaction; a transaction callback, installed once per backend, then on COMMIT sets
//! the latches of the workers of this database (they share the queue through `SKIP LOCKED`, so the
//! idle ones compete for the new jobs); on ABORT nothing happens. `CREATE EXTENSION` likewise wakes
//! the launcher after commit. Whose latches those are is in the process registry
//! (pg/processes.rs).
//!
//! The plpgsql enqueuers (and every move of a job back to pending) also announce their
//! transaction's start to this database's workers at commit: their jobs are keyed at or after
//! it, maybe before where the workers' claims start (core's `claim_cursor`), so the next claim
//! looks again from there. Inserted profiles need no announcement: the worker keys the jobs it
//! makes of them after its cursors.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use pgrx::prelude::*;
use pgrx::{PgAtomic, pg_shmem_init};

use crate::pg::processes::{self, MAX_WORKERS, my_database, shared_memory_ready};

const NO_DATABASE: u32 = 0;

/// Databases a worker found without the extension: the launcher leaves them alone until
/// `CREATE EXTENSION` there (or its periodic full rescan).
pub struct WithoutExtension {
    databases: [AtomicU32; MAX_WORKERS],
}

// SAFETY: plain atomics, no pointers: valid in every process that maps the segment.
unsafe impl pgrx::PGRXSharedMemory for WithoutExtension {}

impl Default for WithoutExtension {
    fn default() -> Self {
        WithoutExtension { databases: std::array::from_fn(|_| AtomicU32::new(NO_DATABASE)) }
    }
}

static WITHOUT_EXTENSION: PgAtomic<WithoutExtension> =
    unsafe { PgAtomic::new(c"onboarding_databases_without_extension") };

/// Backend-local: what the current transaction wants done at commit, and whether the callback
/// that does it is installed.
static WAKE_WORKERS: AtomicBool = AtomicBool::new(false);
static RESCAN_QUEUE: AtomicBool = AtomicBool::new(false);
static WAKE_LAUNCHER: AtomicBool = AtomicBool::new(false);
static WAKE_PROFILE_WRITER: AtomicBool = AtomicBool::new(false);
static CALLBACK_INSTALLED: AtomicBool = AtomicBool::new(false);

pub fn init_shared_memory() {
    pg_shmem_init!(WITHOUT_EXTENSION);
}

pub fn mark_without_extension(database: pg_sys::Oid) {
    let marks = &WITHOUT_EXTENSION.get().databases;
    if marks.iter().any(|m| m.load(Ordering::Acquire) == database.to_u32()) {
        return;
    }
    // When the list is full the database just stays unmarked: the launcher retries it later.
    let _ = marks
        .iter()
        .find(|m| m.compare_exchange(NO_DATABASE, database.to_u32(), Ordering::AcqRel, Ordering::Relaxed).is_ok());
}

pub fn without_extension(database: pg_sys::Oid) -> bool {
    WITHOUT_EXTENSION.get().databases.iter().any(|m| m.load(Ordering::Acquire) == database.to_u32())
}

pub fn forget_databases_without_extension() {
    WITHOUT_EXTENSION.get().databases.iter().for_each(|m| m.store(NO_DATABASE, Ordering::Release));
}

/// The plpgsql enqueuers' wake-up: their jobs may also sort before the workers' cursors.
#[pg_extern(name = "_wake_worker_after_commit", volatile, parallel_unsafe)]
fn wake_worker_after_commit() {
    if shared_memory_ready() {
        RESCAN_QUEUE.store(true, Ordering::Relaxed);
    }
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

/// Wakes this database's profile writer once the current transaction commits (the events reader's
/// way to say "profiles to write").
pub fn wake_profile_writer_after_commit() {
    after_commit(&WAKE_PROFILE_WRITER);
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
            if RESCAN_QUEUE.swap(false, Ordering::Relaxed) {
                processes::announce_early_jobs(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() });
            }
            if WAKE_WORKERS.swap(false, Ordering::Relaxed) {
                processes::set_worker_latches();
            }
            if WAKE_PROFILE_WRITER.swap(false, Ordering::Relaxed) {
                processes::set_profile_writer_latch();
            }
            if WAKE_LAUNCHER.swap(false, Ordering::Relaxed) {
                let database = my_database();
                let marks = &WITHOUT_EXTENSION.get().databases;
                marks.iter().for_each(|m| {
                    let _ = m.compare_exchange(database, NO_DATABASE, Ordering::AcqRel, Ordering::Relaxed);
                });
                processes::set_launcher_latch();
            }
        }
        // A prepared transaction commits later, maybe elsewhere: the workers' poll finds its jobs.
        XACT_EVENT_ABORT | XACT_EVENT_PREPARE => {
            WAKE_WORKERS.store(false, Ordering::Relaxed);
            RESCAN_QUEUE.store(false, Ordering::Relaxed);
            WAKE_LAUNCHER.store(false, Ordering::Relaxed);
            WAKE_PROFILE_WRITER.store(false, Ordering::Relaxed);
        }
        _ => {}
    }
}

static mut PREVIOUS_OBJECT_ACCESS_HOOK: pg_sys::object_access_hook_type = None;

/// `DROP EXTENSION onboarding` wakes this database's workers and profile writer after commit, so
/// they notice at once that the extension is gone and exit (see worker.rs, profile_writer.rs).
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
            after_commit(&WAKE_PROFILE_WRITER);
        }
    }
}
