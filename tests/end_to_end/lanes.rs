//! Priority lanes: a backfill queued ahead of a signup does not make the signup wait for it.

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::helpers::{DEADLINE, customer_id, db, ensure, insert_profile, profiles_table, wait_for};

pub(crate) fn tests() -> Vec<Trial> {
    trials![a_signup_goes_ahead_of_a_queued_backfill]
}

/// A few budget slots, far less than the backfill queued ahead of the signup (80 at 10/s: 8 s).
const SIGNUP_DEADLINE: Duration = Duration::from_secs(2);

fn set(db: &mut postgres::Client, setting: &str) {
    db.batch_execute(&format!("ALTER SYSTEM SET {setting}")).unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
}

fn pending_backfill_jobs(db: &mut postgres::Client, table: &str) -> i64 {
    db.query_one(
        &format!(
            "SELECT count(*) FROM onboarding.jobs WHERE profile_table = '{table}'::regclass AND state = 'pending'"
        ),
        &[],
    )
    .unwrap()
    .get(0)
}

fn a_signup_goes_ahead_of_a_queued_backfill() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_lanes");
    // 80 profiles from before the trigger (no job), then a rate budget of 10 calls a second.
    db.batch_execute(&format!(
        "BEGIN; SET LOCAL session_replication_role = replica;
         INSERT INTO {table} (email) SELECT 'old-' || g || '@example.com' FROM generate_series(1, 80) g;
         COMMIT;"
    ))
    .unwrap();
    set(&mut db, "onboarding.rate_limit = 10");
    set(&mut db, "onboarding.rate_burst = 1");
    db.batch_execute(&format!("CALL onboarding.backfill('{table}')")).unwrap();

    let started = Instant::now();
    let signup = insert_profile(&mut db, &table, Some("signup@example.com"));
    let provisioned =
        wait_for("the signup's customer", SIGNUP_DEADLINE, || customer_id(&mut db, &table, &signup)).map(|_| ());
    let took = started.elapsed();
    let still_queued = pending_backfill_jobs(&mut db, &table);
    set(&mut db, "onboarding.rate_limit = 0");
    set(&mut db, "onboarding.rate_burst = 5");
    provisioned?;
    ensure(still_queued > 0, || format!("the backfill was done before the signup ({took:?}): nothing proven"))?;
    // The backfill itself goes on.
    wait_for("the backfill to finish", DEADLINE, || (pending_backfill_jobs(&mut db, &table) == 0).then_some(()))
}
