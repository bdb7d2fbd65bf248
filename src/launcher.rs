//! The launcher: one background worker (registered at preload) that keeps `onboarding.workers`
//! workers and one profile writer (profile_writer.rs) running for every database where the
//! extension is installed, or only for `onboarding.database` when that is set.
//!
//! It cannot look inside databases (it connects to none; pg_database is a shared catalog), so it
//! starts workers for every database that allows connections; a worker that finds no extension
//! marks its database in shared memory and exits, and the launcher leaves that database alone
//! until `CREATE EXTENSION` there wakes it (or its periodic full rescan). Workers that exit for
//! any other reason (pg_terminate_backend, an error) are started again at once: the postmaster
//! tells the launcher when one stops.

use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::pg::latch::shutdown_requested;
use crate::pg::processes;
use crate::{gucs, wake};

/// How often the launcher forgets which databases lacked the extension and looks again (covers
/// databases created from a template that has it).
const FULL_RESCAN: Duration = Duration::from_secs(300);
/// Safety-net wake-up; starts and stops of workers and CREATE EXTENSION wake the launcher at once.
const LAUNCHER_POLL: Duration = Duration::from_secs(30);

pub fn register() {
    BackgroundWorkerBuilder::new("onboarding launcher")
        .set_type("onboarding launcher")
        .set_library("onboarding")
        .set_function("onboarding_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

struct Database {
    oid: pg_sys::Oid,
    name: String,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn onboarding_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    processes::publish_launcher();
    log!("onboarding: launcher started");

    let mut running: Vec<(pg_sys::Oid, Process, DynamicBackgroundWorker)> = Vec::new();
    let mut last_full_rescan = Instant::now();
    let mut warned_full = false;
    while !shutdown_requested() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if last_full_rescan.elapsed() >= FULL_RESCAN {
            wake::forget_databases_without_extension();
            last_full_rescan = Instant::now();
        }
        running.retain(|(_, _, process)| !matches!(process.pid(), Err(BackgroundWorkerStatus::Stopped)));
        for database in databases() {
            if wake::without_extension(database.oid) {
                continue;
            }
            let have = |kind| running.iter().filter(|(oid, k, _)| *oid == database.oid && *k == kind).count();
            let mut missing: Vec<(Process, usize)> =
                (have(Process::Worker)..gucs::workers()).map(|n| (Process::Worker, n + 1)).collect();
            // No workers (onboarding.workers = 0: paused), no profile writer either.
            if gucs::workers() > 0 && have(Process::ProfileWriter) == 0 {
                missing.push((Process::ProfileWriter, 1));
            }
            for (kind, number) in missing {
                match start(kind, &database, number) {
                    Some(process) => running.push((database.oid, kind, process)),
                    None => {
                        if !std::mem::replace(&mut warned_full, true) {
                            ereport!(
                                WARNING,
                                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                                format!("onboarding: could not start a worker for database \"{}\"", database.name),
                                "Raise max_worker_processes: the launcher takes one, and each database onboarding.workers \
                                 plus one profile writer."
                            );
                        }
                        break;
                    }
                }
            }
        }
        if !BackgroundWorker::wait_latch(Some(LAUNCHER_POLL)) {
            break;
        }
    }
    log!("onboarding: launcher stopped");
}

/// What the launcher keeps running for each database.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Process {
    /// `onboarding.workers` of them: the queue and Stripe's events (worker.rs).
    Worker,
    /// One: what Stripe said, written to profiles as their owners (profile_writer.rs).
    ProfileWriter,
}

/// Registered outside any transaction: the handle must outlive it.
fn start(kind: Process, database: &Database, number: usize) -> Option<DynamicBackgroundWorker> {
    let (name, kind_name, function) = match kind {
        Process::Worker => {
            (format!("onboarding worker {number} for {}", database.name), "onboarding worker", "onboarding_worker_main")
        }
        Process::ProfileWriter => (
            format!("onboarding profile writer for {}", database.name),
            "onboarding profile writer",
            "onboarding_profile_writer_main",
        ),
    };
    BackgroundWorkerBuilder::new(&name)
        .set_type(kind_name)
        .set_library("onboarding")
        .set_function(function)
        .set_argument(Some(pg_sys::Datum::from(database.oid.to_u32() as usize)))
        .set_extra(&database.name)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None) // the launcher restarts it, or not if its database lost the extension
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// Databases that accept connections, read straight from the shared catalog pg_database.
fn databases() -> Vec<Database> {
    let only = gucs::database();
    let mut found = Vec::new();
    unsafe {
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let row = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            let name = std::ffi::CStr::from_ptr((*row).datname.data.as_ptr()).to_string_lossy().into_owned();
            if (*row).datallowconn && !(*row).datistemplate && only.as_deref().is_none_or(|o| o == name) {
                found.push(Database { oid: (*row).oid, name });
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as i32);
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    found
}
