//! The Stripe API key: never in jobs, events, activity or logs, and hidden from non-superusers.

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::env;
use crate::helpers::{
    API_KEY, DEADLINE, Job, db, ensure, insert_profile, jobs_for, profiles_table, sqlstate, wait_for,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![api_key_never_appears_in_jobs_events_errors_or_logs]
}

/// Inserts probe profiles until one's job ends in `state` (the worker applies a reload a moment
/// after `pg_reload_conf()` returns, so earlier probes may still see the previous settings).
fn probe_until(db: &mut Client, table: &str, state: &str) -> Result<Job, Failed> {
    wait_for(&format!("a probe job to end {state}"), DEADLINE, || {
        let user = insert_profile(db, table, Some("probe@example.com"));
        let finished = wait_for("the probe job to finish", DEADLINE, || {
            jobs_for(db, &user).into_iter().find(|j| !["pending", "running"].contains(&j.state.as_str()))
        })
        .ok()?;
        (finished.state == state).then_some(finished)
    })
}

fn api_key_never_appears_in_jobs_events_errors_or_logs() -> Result<(), Failed> {
    const ROTATED_KEY: &str = "sk_test_ROTATEDCANARY5e1f0a7d93c2";
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_secret");
    // Rotate to a key the emulator rejects: the reload must reach the worker, PostgreSQL must not
    // log the new value, and the 401 (where keys get echoed) must not leak it either.
    db.batch_execute(&format!("ALTER SYSTEM SET onboarding.stripe_api_key = '{ROTATED_KEY}'")).unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let rejected = probe_until(&mut db, &table, "dead")?;
    ensure(rejected.last_error.as_deref().is_some_and(|e| e.contains("401")), || format!("{rejected:?}"))?;
    db.batch_execute("ALTER SYSTEM RESET onboarding.stripe_api_key").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    probe_until(&mut db, &table, "succeeded")?;

    for key in [API_KEY, ROTATED_KEY] {
        let secret = &key["sk_test_".len()..];
        let leaks: i64 = db
            .query_one(
                "SELECT (SELECT count(*) FROM onboarding.jobs j WHERE strpos(to_jsonb(j)::text, $1) > 0)
                      + (SELECT count(*) FROM onboarding.events e WHERE strpos(to_jsonb(e)::text, $1) > 0)
                      + (SELECT count(*) FROM pg_stat_activity a WHERE strpos(coalesce(a.query, ''), $1) > 0
                            AND a.pid <> pg_backend_pid())",
                &[&secret],
            )
            .unwrap()
            .get(0);
        ensure(leaks == 0, || format!("{key} appears in {leaks} job, event or activity rows"))?;
        ensure(!env().cluster.server_log().contains(secret), || format!("{key} appears in the server log"))?;
    }

    // Non-superusers can neither read it nor see it listed.
    db.batch_execute("DROP ROLE IF EXISTS onboarding_app; CREATE ROLE onboarding_app LOGIN").unwrap();
    db.batch_execute("SET ROLE onboarding_app").unwrap();
    let (code, _) = sqlstate(db.simple_query("SELECT current_setting('onboarding.stripe_api_key')"))?;
    ensure(code == "42501", || format!("current_setting gave {code}"))?;
    let listed: i64 =
        db.query_one("SELECT count(*) FROM pg_settings WHERE name = 'onboarding.stripe_api_key'", &[]).unwrap().get(0);
    db.batch_execute("RESET ROLE").unwrap();
    ensure(listed == 0, || "pg_settings shows the key to a non-superuser".into())
}
