//! The profile writer: one background process per database (the launcher starts it beside the
//! workers) that writes what Stripe said back into application tables, as each table's owner:
//! Connect readiness columns (`onboarding._write_profile_readiness`) and each table's policy for
//! customers changed in Stripe (`onboarding._handle_customer_changes`), both in sql/inbound.sql.
//!
//! Why apart from the workers: those writes run owners' triggers and policies, each up to
//! `onboarding.owner_statement_timeout`. On the workers' loop one owner's slow trigger held every
//! table's signups behind it (20 s seen); here it delays only other profile writes, and those only
//! for its own table's turn (each table gets at most a few writes a pass, and one that timed out or
//! waited on a lock gets no more that pass). It holds no Stripe key and makes no Stripe call.
//!
//! The events reader wakes it after a poll that recorded something to write (wake.rs); otherwise
//! it sleeps until the next write is due (a held row's retry), at most [`IDLE_AT_MOST`].

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::pg::latch::{shutdown_requested, wait_for_latch};
use crate::pg::processes;
use crate::pg::transaction::{in_transaction, report_table_stats};
use crate::queries::inbound;
use crate::release::{self, Installed};
use crate::{tables, wake};

/// Readiness columns written per pass, and at most per table (each a statement as its owner).
const READINESS_AT_MOST: i32 = 100;
const READINESS_PER_TABLE: i32 = 10;

/// Customer changes handled per pass, and at most per table (each reads its profile, may write it).
const CHANGES_AT_MOST: i32 = 50;
const CHANGES_PER_TABLE: i32 = 10;

/// The longest sleep with nothing due: a safety net, since every poll that records something
/// wakes the writer.
const IDLE_AT_MOST: Duration = Duration::from_secs(10);

/// After a pass where some writes waited on a table someone holds: the shortest sleep, so a held
/// table's rows (each backing off after its 50 ms lock wait) do not keep the writer spinning.
const AFTER_HELD_AT_LEAST: Duration = Duration::from_millis(200);

/// While the database's SQL is another release's (or a pass failed), how long to wait.
const PAUSE: Duration = Duration::from_secs(1);

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn onboarding_profile_writer_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    let database_name = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    tables::wait_briefly_for_locks();
    if !processes::publish_profile_writer() {
        warning!("onboarding: all profile writer slots are taken; not serving \"{database_name}\"");
        return;
    }
    log!("onboarding: profile writer started for database \"{database_name}\"");
    while !shutdown_requested() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let sleep = match in_transaction("reading the extension version", release::installed) {
            Ok(Installed::No) => {
                wake::mark_without_extension(database);
                log!("onboarding: extension not installed in database \"{database_name}\"; profile writer exiting");
                return;
            }
            Ok(Installed::Current) => write_due_profiles(),
            // Another release's SQL: its functions may differ; wait for ALTER EXTENSION … UPDATE.
            Ok(Installed::Other(_)) | Err(_) => PAUSE,
        };
        let flush_stats_in = report_table_stats();
        wait_for_latch(flush_stats_in.map_or(sleep, |t| t.min(sleep)));
    }
    log!("onboarding: profile writer for database \"{database_name}\" stopped");
}

/// One pass: the readiness columns due, then the customer changes due, each in its own
/// transaction. Returns how long to sleep.
fn write_due_profiles() -> Duration {
    let readiness = in_transaction("writing Connect readiness to profiles", || {
        inbound::write_profile_readiness(READINESS_AT_MOST, READINESS_PER_TABLE)
    });
    let changes = in_transaction("applying customer changes to profiles", || {
        inbound::handle_customer_changes(CHANGES_AT_MOST, CHANGES_PER_TABLE)
    });
    let held = match (readiness, changes) {
        (Ok(Ok(waiting_a)), Ok(Ok(waiting_b))) => waiting_a + waiting_b > 0,
        _ => return PAUSE, // said as a WARNING; try again after a pause
    };
    let sleep = match in_transaction("reading when the next profile write is due", inbound::profile_writes_due_in) {
        Ok(Ok(Some(due_in))) => due_in.min(IDLE_AT_MOST),
        Ok(Ok(None)) => IDLE_AT_MOST,
        _ => PAUSE,
    };
    if held { sleep.max(AFTER_HELD_AT_LEAST) } else { sleep }
}
