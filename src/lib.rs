//! `onboarding`: a PostgreSQL extension that creates Stripe customers for new profiles, after the
//! profile's transaction commits, exactly once.
//!
//! Where things are:
//! - `sql/onboarding.sql`: tables, `attach()`/`detach()`, the triggers, the SQL API, job transitions;
//! - `sql/audits.sql`: audits and metrics for DBAs;
//! - [`intake`]: the insert trigger (the outbox write on the application's path);
//! - [`launcher`]: starts the workers of every database where the extension is installed;
//! - [`worker`]: the background worker loop (claim → call Stripe → record);
//! - [`jobs`]: what each phase does with a job (planning, the Stripe call, recording the outcome);
//! - [`wake`]: waking the worker when an enqueuing transaction commits;
//! - [`requests`]: `get_or_create_customer`'s channel to the worker through shared memory;
//! - [`gucs`]: the `onboarding.*` settings;
//! - `core/`: pure logic (Stripe client, retry policy, job planning), tested without PostgreSQL.

use pgrx::prelude::*;

mod gucs;
mod intake;
mod jobs;
mod launcher;
mod release;
mod requests;
mod wake;
mod worker;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/onboarding.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/audits.sql", name = "audits", requires = ["schema"]);
extension_sql_file!("../sql/job_states.sql", name = "job_states", requires = ["schema"]);

extension_sql!(
    r#"
REVOKE EXECUTE ON FUNCTION onboarding._wake_worker_after_commit(), onboarding._worker_preloaded(),
    onboarding._job_may_become(text, text), onboarding._job_state_machine(),
    onboarding._launch_after_commit(),
    onboarding._inserted_by_this_transaction(bigint), onboarding._request_customer(oid, text, integer),
    onboarding._request_account_link(oid, text, text, text, integer), onboarding._request_snapshot(integer) FROM PUBLIC;

DO $$
BEGIN
    IF NOT onboarding._worker_preloaded() THEN
        RAISE WARNING 'onboarding: the background worker is not running, so no Stripe customer will be created'
            USING HINT = 'Add onboarding to shared_preload_libraries (ALTER SYSTEM SET shared_preload_libraries = ''onboarding'') and restart PostgreSQL.';
    ELSIF coalesce(current_setting('onboarding.database'), '') NOT IN ('', current_database()) THEN
        RAISE WARNING 'onboarding: onboarding.database restricts the workers to database "%", not "%"',
                current_setting('onboarding.database'), current_database()
            USING HINT = 'Empty onboarding.database (ALTER SYSTEM RESET onboarding.database) and restart PostgreSQL to serve every database.';
    END IF;
    -- Once this commits, the launcher starts this database's workers.
    PERFORM onboarding._launch_after_commit();
END $$;
"#,
    name = "preload_check",
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    // Shared memory and background workers can only be set up while the postmaster loads us.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        wake::init_shared_memory();
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

/// True when the library was loaded through `shared_preload_libraries`, i.e. the worker exists.
#[pg_extern(name = "_worker_preloaded")]
fn worker_preloaded() -> bool {
    wake::shared_memory_ready()
}
