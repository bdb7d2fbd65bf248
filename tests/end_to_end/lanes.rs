//! Priority lanes: a backfill queued ahead of a signup does not make the signup wait for it, and a
//! flood of signups does not stop the backfill (its share, onboarding.lane_shares).

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::helpers::{DEADLINE, customer_id, db, ensure, insert_profile, profiles_table, set_and_reload, wait_for};

pub(crate) fn tests() -> Vec<Trial> {
    trials![a_signup_goes_ahead_of_a_queued_backfill, a_backfill_keeps_its_share_during_a_flood_of_signups]
}

/// A few budget slots, far less than the backfill queued ahead of the signup (80 at 10/s: 8 s).
const SIGNUP_DEADLINE: Duration = Duration::from_secs(2);

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

/// `n` profiles inserted without the trigger (as if from before `attach`): no job until a backfill.
fn profiles_without_jobs(db: &mut postgres::Client, table: &str, n: i32) {
    db.batch_execute(&format!(
        "BEGIN; SET LOCAL session_replication_role = replica;
         INSERT INTO {table} (email) SELECT 'old-' || g || '@example.com' FROM generate_series(1, {n}) g;
         COMMIT;"
    ))
    .unwrap();
}

fn a_signup_goes_ahead_of_a_queued_backfill() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_lanes");
    // 80 profiles from before the trigger, then a rate budget of 10 calls a second.
    profiles_without_jobs(&mut db, &table, 80);
    set_and_reload(&mut db, "onboarding.rate_limit = 10");
    set_and_reload(&mut db, "onboarding.rate_burst = 1");
    db.batch_execute(&format!("CALL onboarding.backfill('{table}')")).unwrap();

    let started = Instant::now();
    let signup = insert_profile(&mut db, &table, Some("signup@example.com"));
    let provisioned =
        wait_for("the signup's customer", SIGNUP_DEADLINE, || customer_id(&mut db, &table, &signup)).map(|_| ());
    let took = started.elapsed();
    let still_queued = pending_backfill_jobs(&mut db, &table);
    set_and_reload(&mut db, "onboarding.rate_limit = 0");
    set_and_reload(&mut db, "onboarding.rate_burst = 5");
    provisioned?;
    ensure(still_queued > 0, || format!("the backfill was done before the signup ({took:?}): nothing proven"))?;
    // The backfill itself goes on.
    wait_for("the backfill to finish", DEADLINE, || (pending_backfill_jobs(&mut db, &table) == 0).then_some(()))
}

fn unprovisioned(db: &mut postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table} WHERE stripe_customer_id IS NULL"), &[]).unwrap().get(0)
}

fn a_backfill_keeps_its_share_during_a_flood_of_signups() -> Result<(), Failed> {
    let mut db = db();
    // Shares that leave lane 0 nothing are refused, saying why and how to write them.
    let refused = db.batch_execute("ALTER SYSTEM SET onboarding.lane_shares = '50,50,50'").unwrap_err();
    let refused = refused.as_db_error().expect("a database error");
    ensure(
        refused.code().code() == "22023"
            && refused.detail().is_some_and(|d| d.contains("add up to 150%"))
            && refused.hint().is_some_and(|h| h.contains("'10,5,5'")),
        || format!("unexpected refusal: {refused:?}"),
    )?;
    let old = profiles_table(&mut db, "profiles_share_backfill");
    let signups = profiles_table(&mut db, "profiles_share_signups");
    profiles_without_jobs(&mut db, &old, 30);
    // 10 calls a second: the flood of 100 signups below takes 10 s of budget.
    set_and_reload(&mut db, "onboarding.rate_limit = 10");
    set_and_reload(&mut db, "onboarding.rate_burst = 1");
    set_and_reload(&mut db, "onboarding.batch_size = 10");
    set_and_reload(&mut db, "onboarding.lane_shares = '0,0,20'");
    db.batch_execute(&format!("CALL onboarding.backfill('{old}')")).unwrap();
    db.batch_execute(&format!(
        "INSERT INTO {signups} (email) SELECT 'flood-' || g || '@example.com' FROM generate_series(1, 100) g"
    ))
    .unwrap();
    // Some of the backfill is provisioned while the flood is still going through.
    let seen = wait_for("backfilled profiles", DEADLINE, || {
        let backfilled = 30 - unprovisioned(&mut db, &old);
        (backfilled >= 3).then(|| (backfilled, unprovisioned(&mut db, &signups)))
    });
    set_and_reload(&mut db, "onboarding.rate_limit = 0");
    set_and_reload(&mut db, "onboarding.rate_burst = 5");
    set_and_reload(&mut db, "onboarding.batch_size = 25");
    db.batch_execute("ALTER SYSTEM RESET onboarding.lane_shares").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let (backfilled, flood_left) = seen?;
    ensure(flood_left > 0, || {
        format!("{backfilled} backfilled profiles only after the whole flood: the backfill had no share")
    })?;
    wait_for("everything provisioned", DEADLINE, || {
        (unprovisioned(&mut db, &old) + unprovisioned(&mut db, &signups) == 0).then_some(())
    })
}
