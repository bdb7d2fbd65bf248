//! The extension's shared memory at preload, and the registry of its processes in it.
//!
//! Each worker publishes its PGPROC number and database in a slot; so does each database's profile
//! writer, and the launcher its own. Others set their latches through it: a committing transaction
//! wakes the workers of its database, the events reader its profile writer, `CREATE EXTENSION`
//! the launcher (wake.rs), a caller asks the workers for work (requests.rs).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, Ordering};

use pgrx::prelude::*;
use pgrx::{PgAtomic, pg_shmem_init};

use crate::pg::latch::{my_procno, set_latch_of};

const NO_PROCESS: i32 = -1;
const NO_DATABASE: u32 = 0;

/// Worker slots for all databases together; also the upper bound of `onboarding.workers`.
pub const MAX_WORKERS: usize = 64;

pub struct Processes {
    launcher: AtomicI32,
    worker_procnos: [AtomicI32; MAX_WORKERS],
    worker_databases: [AtomicU32; MAX_WORKERS],
    /// Per worker: calls waiting for standbys, and since when (Unix milliseconds; 0: none).
    worker_standby_waits: [AtomicU32; MAX_WORKERS],
    worker_standby_wait_since: [AtomicI64; MAX_WORKERS],
    /// Per worker: the earliest start (PostgreSQL microseconds) of the transactions that made jobs
    /// pending where its claims may have passed, since it last looked; [`NO_RESCAN`] if none.
    worker_rescan_from: [AtomicI64; MAX_WORKERS],
    /// Per worker: what it can do with its Stripe key (stripe_key.rs `KeyState`), for the stats.
    worker_key_states: [AtomicU32; MAX_WORKERS],
    /// Each database's profile writer (profile_writer.rs), one per database at most.
    writer_procnos: [AtomicI32; MAX_WORKERS],
    writer_databases: [AtomicU32; MAX_WORKERS],
}

const NO_RESCAN: i64 = i64::MAX;

// SAFETY: plain atomics, no pointers: valid in every process that maps the segment.
unsafe impl pgrx::PGRXSharedMemory for Processes {}

impl Default for Processes {
    fn default() -> Self {
        Processes {
            launcher: AtomicI32::new(NO_PROCESS),
            worker_procnos: std::array::from_fn(|_| AtomicI32::new(NO_PROCESS)),
            worker_databases: std::array::from_fn(|_| AtomicU32::new(NO_DATABASE)),
            worker_standby_waits: std::array::from_fn(|_| AtomicU32::new(0)),
            worker_standby_wait_since: std::array::from_fn(|_| AtomicI64::new(0)),
            worker_rescan_from: std::array::from_fn(|_| AtomicI64::new(NO_RESCAN)),
            worker_key_states: std::array::from_fn(|_| AtomicU32::new(0)),
            writer_procnos: std::array::from_fn(|_| AtomicI32::new(NO_PROCESS)),
            writer_databases: std::array::from_fn(|_| AtomicU32::new(NO_DATABASE)),
        }
    }
}

static PROCESSES: PgAtomic<Processes> = unsafe { PgAtomic::new(c"onboarding_processes") };

/// Set in the postmaster when preloading; inherited by every backend it forks.
static SHARED_MEMORY_READY: AtomicBool = AtomicBool::new(false);

/// Requests this registry's segment; called from `_PG_init` while the postmaster preloads the
/// library, with the other modules' segments (lib.rs), and marks shared memory as there for
/// every backend forked from now on.
pub fn init_shared_memory() {
    pg_shmem_init!(PROCESSES);
    SHARED_MEMORY_READY.store(true, Ordering::Relaxed);
}

/// True when the library was loaded through `shared_preload_libraries`: the shared memory (and
/// so the workers) exist.
pub fn shared_memory_ready() -> bool {
    SHARED_MEMORY_READY.load(Ordering::Relaxed)
}

/// This backend's database, as the registry stores it.
pub fn my_database() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Called by a worker once connected: from now on commits in its database wake it. Returns its
/// slot, or None when all are taken. The slot is freed when the process exits, however it exits.
pub fn publish_this_worker() -> Option<usize> {
    let shared = PROCESSES.get();
    let slot = (0..MAX_WORKERS).find(|&i| {
        shared.worker_procnos[i].compare_exchange(NO_PROCESS, my_procno(), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    })?;
    // A new worker's first claim scans from the front anyway.
    shared.worker_rescan_from[slot].store(NO_RESCAN, Ordering::Release);
    shared.worker_key_states[slot].store(0, Ordering::Release);
    shared.worker_databases[slot].store(my_database(), Ordering::Release);
    unsafe { pg_sys::before_shmem_exit(Some(unpublish_worker), pg_sys::Datum::from(slot)) };
    Some(slot)
}

#[pg_guard]
unsafe extern "C-unwind" fn unpublish_worker(_code: i32, slot: pg_sys::Datum) {
    let shared = PROCESSES.get();
    shared.worker_standby_waits[slot.value()].store(0, Ordering::Release);
    shared.worker_databases[slot.value()].store(NO_DATABASE, Ordering::Release);
    shared.worker_procnos[slot.value()].store(NO_PROCESS, Ordering::Release);
}

/// Records what this worker can do with its Stripe key (an opaque code; stripe_key.rs names them).
pub fn publish_key_state(slot: usize, state: u32) {
    PROCESSES.get().worker_key_states[slot].store(state, Ordering::Release);
}

/// The key states of this database's live workers, one per worker.
pub fn key_states_of_my_database() -> Vec<u32> {
    let shared = PROCESSES.get();
    let database = my_database();
    (0..MAX_WORKERS)
        .filter(|&slot| {
            shared.worker_databases[slot].load(Ordering::Acquire) == database
                && shared.worker_procnos[slot].load(Ordering::Acquire) != NO_PROCESS
        })
        .map(|slot| shared.worker_key_states[slot].load(Ordering::Acquire))
        .collect()
}

/// Called by a profile writer once connected: from now on [`set_profile_writer_latch`] in its
/// database wakes it. False when all slots are taken. Freed when the process exits.
pub fn publish_profile_writer() -> bool {
    let shared = PROCESSES.get();
    let Some(slot) = (0..MAX_WORKERS).find(|&i| {
        shared.writer_procnos[i].compare_exchange(NO_PROCESS, my_procno(), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }) else {
        return false;
    };
    shared.writer_databases[slot].store(my_database(), Ordering::Release);
    unsafe { pg_sys::before_shmem_exit(Some(unpublish_profile_writer), pg_sys::Datum::from(slot)) };
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn unpublish_profile_writer(_code: i32, slot: pg_sys::Datum) {
    let shared = PROCESSES.get();
    shared.writer_databases[slot.value()].store(NO_DATABASE, Ordering::Release);
    shared.writer_procnos[slot.value()].store(NO_PROCESS, Ordering::Release);
}

/// Wakes this database's profile writer (atomics and a latch only, like [`set_worker_latches`]).
pub fn set_profile_writer_latch() {
    let shared = PROCESSES.get();
    let database = my_database();
    for slot in 0..MAX_WORKERS {
        if shared.writer_databases[slot].load(Ordering::Acquire) == database {
            set_latch_of(shared.writer_procnos[slot].load(Ordering::Acquire));
        }
    }
}

pub fn publish_launcher() {
    PROCESSES.get().launcher.store(my_procno(), Ordering::Release);
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

/// Tells this database's workers that the committing transaction, which started at `started`
/// (PostgreSQL microseconds), made jobs pending: each keyed at or after its start, maybe before
/// where a worker's claims have got to. Atomics only, like [`set_worker_latches`].
pub fn announce_early_jobs(started: i64) {
    let shared = PROCESSES.get();
    let database = my_database();
    for slot in 0..MAX_WORKERS {
        if shared.worker_databases[slot].load(Ordering::Acquire) == database {
            shared.worker_rescan_from[slot].fetch_min(started, Ordering::AcqRel);
        }
    }
}

/// The earliest start announced to this worker since it last asked (see [`announce_early_jobs`]).
pub fn take_announced_rescan(slot: usize) -> Option<i64> {
    let from = PROCESSES.get().worker_rescan_from[slot].swap(NO_RESCAN, Ordering::AcqRel);
    (from != NO_RESCAN).then_some(from)
}

/// Wakes the launcher (atomics and a latch only, like [`set_worker_latches`]).
pub fn set_launcher_latch() {
    set_latch_of(PROCESSES.get().launcher.load(Ordering::Acquire));
}

/// Publishes how many of this worker's calls wait for standbys, and since when (Unix ms).
pub fn publish_standby_wait(slot: usize, calls: u32, since_unix_ms: i64) {
    let shared = PROCESSES.get();
    shared.worker_standby_wait_since[slot].store(since_unix_ms, Ordering::Relaxed);
    shared.worker_standby_waits[slot].store(calls, Ordering::Release);
}

/// The calls waiting for standbys in this database's workers, and the earliest wait's start
/// (Unix ms), if any waits.
pub fn standby_waits_here() -> (u64, Option<i64>) {
    let shared = PROCESSES.get();
    let database = my_database();
    let (mut calls, mut since) = (0u64, None::<i64>);
    for slot in 0..MAX_WORKERS {
        let waiting = shared.worker_standby_waits[slot].load(Ordering::Acquire);
        if waiting > 0 && shared.worker_databases[slot].load(Ordering::Acquire) == database {
            calls += u64::from(waiting);
            let started = shared.worker_standby_wait_since[slot].load(Ordering::Relaxed);
            since = Some(since.map_or(started, |s: i64| s.min(started)));
        }
    }
    (calls, since)
}
