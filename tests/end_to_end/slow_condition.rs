//! A slow Connect condition delays only its own profiles: the application's UPDATE never runs it,
//! and the worker gives it `onboarding.connect_condition_timeout` (250 ms), then parks that job.

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::helpers::{DEADLINE, customer_id, db, ensure, insert_profile, profiles_table, wait_for};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        a_slow_connect_condition_parks_only_its_own_jobs,
        the_connect_trigger_fires_on_the_columns_the_condition_reads
    ]
}

/// Far less than three evaluations of the slow condition (4.5 s).
const NEIGHBOUR_DEADLINE: Duration = Duration::from_secs(2);

fn a_slow_connect_condition_parks_only_its_own_jobs() -> Result<(), Failed> {
    let mut db = db();
    let slow = profiles_table(&mut db, "profiles_slow_condition");
    let neighbour = profiles_table(&mut db, "profiles_fast_neighbour");
    db.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION public.slow_yes() RETURNS boolean LANGUAGE sql AS $$ SELECT pg_sleep(1.5) IS NOT NULL $$;
         SELECT onboarding.set_connect_policy('{slow}', 'when', 'public.slow_yes()');"
    ))
    .unwrap();
    // Three profiles whose Connect condition takes 1.5 s, then another table's signups at once.
    let slow_users: Vec<String> =
        (0..3).map(|i| insert_profile(&mut db, &slow, Some(&format!("slow-{i}@example.com")))).collect();
    let started = Instant::now();
    let neighbours: Vec<String> =
        (0..3).map(|i| insert_profile(&mut db, &neighbour, Some(&format!("near-{i}@example.com")))).collect();
    for user in &neighbours {
        wait_for(&format!("the customer of {user}"), NEIGHBOUR_DEADLINE, || customer_id(&mut db, &neighbour, user))?;
    }
    let neighbours_took = started.elapsed();

    // The application's own update of a row with a customer and no account runs no condition.
    db.execute(
        &format!("INSERT INTO {slow} (email, stripe_customer_id) VALUES ('app@example.com', 'cus_from_app')"),
        &[],
    )
    .unwrap();
    let started = Instant::now();
    db.execute(&format!("UPDATE {slow} SET created_at = now() WHERE stripe_customer_id = 'cus_from_app'"), &[])
        .unwrap();
    let update_took = started.elapsed();
    ensure(update_took < Duration::from_millis(500), || format!("an UPDATE of the table took {update_took:?}"))?;

    for user in &slow_users {
        let error: Option<String> = wait_for(&format!("the account job of {user} to be parked"), DEADLINE, || {
            db.query_opt(
                "SELECT last_error FROM onboarding.jobs WHERE user_id = $1 AND kind = 'create_connect_account'
                    AND state = 'dead'",
                &[user],
            )
            .unwrap()
            .map(|row| row.get(0))
        })?;
        ensure(error.as_deref().is_some_and(|e| e.contains("onboarding.connect_condition_timeout")), || {
            format!("parked with {error:?} (the neighbours took {neighbours_took:?})")
        })?;
    }
    Ok(())
}

/// The trigger's UPDATE OF list: the customer column and what the condition reads; a condition
/// whose columns cannot be told (a whole-row reference, a subquery) fires on every update.
fn the_connect_trigger_fires_on_the_columns_the_condition_reads() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_condition_columns");
    db.batch_execute(&format!("ALTER TABLE {table} ADD COLUMN role text, ADD COLUMN country text")).unwrap();
    let cases = [
        ("role = 'provider' AND p.country IN ('US', 'CA')", "AFTER UPDATE OF country, role, stripe_customer_id ON"),
        ("coalesce(role, 'user') = 'provider'", "AFTER UPDATE OF role, stripe_customer_id ON"),
        ("p IS NOT NULL", "AFTER UPDATE ON"),
        ("EXISTS (SELECT 1 FROM pg_class WHERE relname = role)", "AFTER UPDATE ON"),
    ];
    for (condition, expected) in cases {
        db.execute(&format!("SELECT onboarding.set_connect_policy('{table}', 'when', $1)"), &[&condition]).unwrap();
        let definition: String = db
            .query_one(
                &format!("SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = '{table}'::regclass AND tgname = 'onboarding_connect'"),
                &[],
            )
            .unwrap()
            .get(0);
        ensure(definition.contains(expected), || format!("condition {condition:?}: {definition}"))?;
    }
    Ok(())
}
