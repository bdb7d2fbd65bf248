//! `onboarding`: a PostgreSQL extension that creates Stripe customers for new profiles, after the
//! profile's transaction commits, exactly once.
//!
//! Where things are:
//! - `sql/`: the extension's SQL, one file per concern, installed in the order given below (what
//!   each holds: docs/src/architecture.md);
//! - [`intake`]: the insert trigger (the outbox write on the application's path);
//! - [`wake`]: waking the workers (or the launcher) when a transaction commits;
//! - [`launcher`]: starts the workers of every database where the extension is installed;
//! - [`profile_writer`]: the process that writes what Stripe said (readiness, customer changes)
//!   back into profiles, as each table's owner, apart from the workers' loop;
//! - [`worker`]: the background worker's loop, a pipeline (claim → calls in flight → record); its
//!   steps are in `worker/`: `claim`, `calls` (the Stripe side of a job), `record`, `serving`
//!   (requests from SQL sessions) and `queue` (every SQL statement they and the loop run);
//! - [`stripe_key`]: the Stripe key's life cycle in a worker (client, permission checks, budgets);
//! - [`maintenance`]: apart from the hot path, each concern a service owning its state and
//!   schedule, run by one supervisor: `failover` (the timeline, the sweep after a promotion),
//!   `rescue` (taking back abandoned jobs), `retention` (pruning), `events` (Stripe's events
//!   read back); and `snapshot` (the Stripe snapshot for the audits, on request);
//! - [`requests`]: `get_or_create_customer`'s channel to the worker through shared memory;
//! - [`rate_budget`]: the rate budget for Stripe requests that all workers share;
//! - [`release`]: this library's release, against the one whose SQL a database holds;
//! - [`gucs`]: the `onboarding.*` settings;
//! - [`pg`]: PostgreSQL plumbing that knows nothing about jobs: transactions, latches, the shared
//!   memory set up at preload and the registry of processes to wake;
//! - `core/`: pure logic (Stripe client, retry policy, job planning, the job state machine), tested
//!   without PostgreSQL.

use pgrx::prelude::*;

mod account_options;
mod condition;
mod gucs;
mod intake;
mod launcher;
mod maintenance;
mod pg;
mod profile_writer;
mod queries;
mod rate_budget;
mod release;
mod requests;
mod stripe_key;
mod tables;
mod wake;
mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/job_states.sql", name = "job_states", requires = ["schema"]);
extension_sql_file!("../sql/ties.sql", name = "ties", requires = ["schema", "job_states"]);
extension_sql_file!("../sql/attach.sql", name = "attach", requires = ["schema", "job_states", "ties"]);
extension_sql_file!("../sql/api.sql", name = "api", requires = ["schema", "job_states", "attach", "ties"]);
extension_sql_file!(
    "../sql/transitions.sql",
    name = "transitions",
    requires = ["schema", "job_states", "attach", "api"]
);
extension_sql_file!("../sql/maintenance.sql", name = "maintenance", requires = ["schema", "job_states"]);
extension_sql_file!("../sql/failover.sql", name = "failover", requires = ["schema", "job_states", "api", "ties"]);
extension_sql_file!(
    "../sql/audits.sql",
    name = "audits",
    requires = ["schema", "job_states", "attach", "maintenance", "inbound", "ties", stripe_key::worker_key_states]
);
extension_sql_file!(
    "../sql/operations.sql",
    name = "operations",
    requires = ["schema", "job_states", "api", "maintenance", "audits"]
);
extension_sql_file!("../sql/inbound.sql", name = "inbound", requires = ["schema", "job_states", "api", "ties"]);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    // Shared memory and background workers can only be set up while the postmaster loads us.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg::processes::init_shared_memory();
        wake::init_shared_memory();
        rate_budget::init_shared_memory();
        requests::init_shared_memory();
        wake::install_drop_extension_hook();
        launcher::register();
    }
}

/// Whether a row's `xmin` is this transaction or one of its subtransactions: such a profile is
/// not committed, so no Stripe work may be done for it yet.
#[pg_extern(name = "_inserted_by_this_transaction", stable, parallel_safe)]
fn inserted_by_this_transaction(xmin: i64) -> bool {
    let xid = pg_sys::TransactionId::from_inner(xmin as u32);
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xid) }
}

/// This backend's start time, as `pg_stat_activity.backend_start` shows it: with its pid, it names
/// one process (a pid alone may be reused, or be another server's after a failover).
#[pg_extern(name = "_backend_started_at", stable, parallel_safe)]
fn backend_started_at() -> pgrx::datum::TimestampWithTimeZone {
    pgrx::datum::TimestampWithTimeZone::try_from(unsafe { pg_sys::MyStartTimestamp })
        .unwrap_or_else(|e| error!("onboarding: this backend's start time is out of range: {e:?}"))
}

/// True when the library was loaded through `shared_preload_libraries`, i.e. the worker exists.
#[pg_extern(name = "_worker_preloaded")]
fn worker_preloaded() -> bool {
    pg::processes::shared_memory_ready()
}
