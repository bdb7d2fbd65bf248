//! The Stripe API key: never in jobs, events, activity or logs; held by the workers alone (after
//! reloads too), best from a file only the postgres OS user can read.

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::env;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use stripe_emulator::Fault;

use crate::helpers::{
    API_KEY, DEADLINE, Job, db, ensure, insert_profile, jobs_for, only_job, profiles_table, sqlstate, wait_for,
    wait_for_customer, wait_for_state,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        api_key_never_appears_in_jobs_events_errors_or_logs,
        key_is_empty_outside_the_workers_after_a_reload,
        key_file_is_read_by_the_workers_and_refused_when_others_can_read_it,
        an_answer_that_echoes_the_key_is_stored_without_it,
    ]
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
    // log the new value, and the 401 (where keys get echoed) must not leak it either. The worker's
    // key check meets the 401 and says so once; no job is claimed (and none dies) meanwhile.
    let log_before = env().cluster.server_log().len();
    db.batch_execute(&format!("ALTER SYSTEM SET onboarding.stripe_api_key = '{ROTATED_KEY}'")).unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let waiting = insert_profile(&mut db, &table, Some("waiting@example.com"));
    wait_for("the worker to report the refused key", DEADLINE, || {
        let log = env().cluster.server_log();
        log[log_before..].lines().find(|l| l.contains("WARNING") && l.contains("Stripe refused the API key")).map(drop)
    })?;
    db.batch_execute("ALTER SYSTEM RESET onboarding.stripe_api_key").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    probe_until(&mut db, &table, "succeeded")?;
    wait_for_customer(&mut db, &table, &waiting)?;
    let job = only_job(&mut db, &waiting)?;
    ensure(job.attempts == 1, || format!("attempts were spent under the refused key: {job:?}"))?;

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

/// Reloads the configuration and waits until this session has applied it (a setting changed in
/// the same reload shows it): backends apply a reload between commands, some time after
/// `pg_reload_conf()` returns.
fn reload_and_wait(db: &mut Client, marker_ms: i32) -> Result<(), Failed> {
    db.batch_execute(&format!("ALTER SYSTEM SET log_autovacuum_min_duration = {marker_ms}")).unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for("this session to apply the reload", DEADLINE, || {
        let shown: String = db.query_one("SHOW log_autovacuum_min_duration", &[]).unwrap().get(0);
        (shown == format!("{marker_ms}ms")).then_some(())
    })
}

/// Before 0.3.0 every backend that processed a reload held the real key, and any member of
/// pg_read_all_settings (pg_monitor) could SHOW it. Now only the workers hold it.
fn key_is_empty_outside_the_workers_after_a_reload() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_key_reload");
    db.batch_execute(
        "DROP ROLE IF EXISTS onboarding_monitor; CREATE ROLE onboarding_monitor IN ROLE pg_read_all_settings",
    )
    .unwrap();
    reload_and_wait(&mut db, 12_345)?;
    let as_superuser: String = db.query_one("SELECT current_setting('onboarding.stripe_api_key')", &[]).unwrap().get(0);
    db.batch_execute("SET ROLE onboarding_monitor").unwrap();
    let as_monitor: String = db.query_one("SHOW onboarding.stripe_api_key", &[]).unwrap().get(0);
    db.batch_execute("RESET ROLE").unwrap();
    db.batch_execute("ALTER SYSTEM RESET log_autovacuum_min_duration").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    ensure(as_superuser.is_empty(), || format!("a superuser's session holds the key: {as_superuser:?}"))?;
    ensure(as_monitor.is_empty(), || format!("pg_read_all_settings reads the key: {as_monitor:?}"))?;
    // The workers still have it.
    probe_until(&mut db, &table, "succeeded").map(|_| ())
}

/// The recommended way: the key in a file that only the postgres OS user can read, in no setting.
/// A file others can read is refused (as PostgreSQL refuses such an ssl_key_file): jobs wait.
fn key_file_is_read_by_the_workers_and_refused_when_others_can_read_it() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_key_file");
    let data_dir = &env().cluster.data_dir;
    let owner = std::fs::metadata(data_dir).unwrap();
    let path = data_dir.join("onboarding-test-stripe.key");
    std::fs::write(&path, format!("{API_KEY}\n")).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    let chmod = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    chmod(0o600);
    // A wrong key in the setting: a success proves the file was used.
    db.batch_execute("ALTER SYSTEM SET onboarding.stripe_api_key = 'sk_test_NOTTHEKEY0000000000'").unwrap();
    db.batch_execute(&format!("ALTER SYSTEM SET onboarding.stripe_api_key_file = '{}'", path.display()))
        .map_err(|e| format!("setting onboarding.stripe_api_key_file: {e}"))?;
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let outcome = (|| -> Result<(), Failed> {
        probe_until(&mut db, &table, "succeeded")?;
        chmod(0o644);
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
        wait_for("the worker to refuse the world-readable key file", DEADLINE, || {
            env().cluster.server_log().contains("has group or world access (mode 644)").then_some(())
        })?;
        let waiting = insert_profile(&mut db, &table, Some("waiting@example.com"));
        chmod(0o600);
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
        wait_for_customer(&mut db, &table, &waiting).map(|_| ())
    })();
    for reset in ["ALTER SYSTEM RESET onboarding.stripe_api_key", "ALTER SYSTEM RESET onboarding.stripe_api_key_file"] {
        db.batch_execute(reset).unwrap();
    }
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::fs::remove_file(&path).unwrap();
    outcome?;
    probe_until(&mut db, &table, "succeeded").map(|_| ())
}

/// A proxy or gateway may echo the request's key in its error: job rows and events (which DBA and
/// audit roles read) get the masked form.
fn an_answer_that_echoes_the_key_is_stored_without_it() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_key_echo");
    env()
        .stripe
        .inject(Fault::status(400).on("POST", "/v1/customers").message(&format!("Bad request from key {API_KEY}")));
    let user = insert_profile(&mut db, &table, Some("echo@example.com"));
    let dead = wait_for_state(&mut db, &user, "dead")?;
    let secret = &API_KEY["sk_test_".len()..];
    let error = dead.last_error.unwrap_or_default();
    ensure(error.contains("Bad request from key sk_test_****") && !error.contains(secret), || {
        format!("last_error: {error:?}")
    })?;
    let leaks: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM onboarding.jobs j WHERE strpos(to_jsonb(j)::text, $1) > 0)
                  + (SELECT count(*) FROM onboarding.events e WHERE strpos(to_jsonb(e)::text, $1) > 0)",
            &[&secret],
        )
        .unwrap()
        .get(0);
    ensure(leaks == 0, || format!("the key appears in {leaks} job or event rows"))
}
