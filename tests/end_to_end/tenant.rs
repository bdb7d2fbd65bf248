//! A hostile tenant: a role that owns one attached table and nothing else. Whatever she attaches
//! to her table (triggers, CHECK constraints, generated columns, index expressions, policies, casts,
//! functions in the Connect condition) runs with her rights when the extension reads or writes the
//! table — never as the worker's superuser or the extension's owner — and never sees the key.

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::helpers::{
    DEADLINE, db, ensure, insert_profile, jobs_for, profiles_table, sqlstate, wait_for, wait_for_customer,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        a_table_owners_code_runs_with_her_rights_only,
        a_cast_on_a_profile_column_runs_no_code_of_the_owner,
        the_connect_condition_is_one_bounded_expression,
        a_slow_statement_of_the_owner_is_cut_off_and_parks_only_its_job,
    ]
}

/// The tenant, her schema, and `tenant.capture(vector)`: tries to become superuser, then records
/// who it ran as, what it read of the key and whether it could read the extension's queue. `capture_immutable` is the same, declared immutable
/// (as she may, for generated columns and index expressions).
fn tenant(db: &mut Client) {
    db.batch_execute(
        "DROP SCHEMA IF EXISTS tenant CASCADE;
         DROP ROLE IF EXISTS tenant;
         CREATE ROLE tenant LOGIN;
         CREATE SCHEMA tenant AUTHORIZATION tenant;
         SET ROLE tenant;
         CREATE TABLE tenant.seen (vector text, ran_as text, superuser boolean, key text, pid integer, reached_queue boolean);
         CREATE FUNCTION tenant.capture(vector text) RETURNS text LANGUAGE plpgsql AS $$
         DECLARE
             key text;
             reached_queue boolean;
         BEGIN
             BEGIN
                 ALTER ROLE tenant SUPERUSER;
             EXCEPTION WHEN OTHERS THEN NULL;
             END;
             BEGIN
                 key := current_setting('onboarding.stripe_api_key', true);
             EXCEPTION WHEN OTHERS THEN key := 'denied';
             END;
             BEGIN
                 PERFORM count(*) FROM onboarding.jobs;
                 reached_queue := true;
             EXCEPTION WHEN OTHERS THEN reached_queue := false;
             END;
             INSERT INTO tenant.seen VALUES (vector, current_user,
                 (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), key, pg_backend_pid(),
                 reached_queue);
             RETURN vector;
         END $$;
         CREATE FUNCTION tenant.capture_immutable(vector text, anything text) RETURNS text
             LANGUAGE sql IMMUTABLE AS $$ SELECT tenant.capture(vector) $$;
         RESET ROLE;",
    )
    .unwrap();
}

/// (vector, ran as, as a superuser, the key it read, process id, whether it could read the
/// queue) of every capture.
type Seen = (String, String, bool, Option<String>, i32, bool);

fn seen(db: &mut Client) -> Vec<Seen> {
    db.query("SELECT vector, ran_as, superuser, key, pid, reached_queue FROM tenant.seen ORDER BY vector", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

fn tenant_is_superuser(db: &mut Client) -> bool {
    db.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'tenant'", &[]).unwrap().get(0)
}

/// Before 0.3.0 the worker's write-back ran all of these as the bootstrap superuser: she became
/// superuser and copied the live key into her table.
fn a_table_owners_code_runs_with_her_rights_only() -> Result<(), Failed> {
    owners_code_runs_with_her_rights_only("")
}

/// Her table attached with `attach_args` added (the Stripe object model): every vector of her code
/// runs in the worker, as her, without the key or the queue.
pub(crate) fn owners_code_runs_with_her_rights_only(attach_args: &str) -> Result<(), Failed> {
    let mut db = db();
    tenant(&mut db);
    db.batch_execute(&format!(
        "SET ROLE tenant;
         CREATE TABLE tenant.profiles (
             id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             email text,
             stripe_customer_id text,
             stripe_connect_account_id text,
             generated text GENERATED ALWAYS AS (tenant.capture_immutable('generated column', stripe_customer_id)) STORED,
             CONSTRAINT checked CHECK (tenant.capture_immutable('check constraint', stripe_customer_id) IS NOT NULL));
         CREATE INDEX indexed ON tenant.profiles ((tenant.capture_immutable('index expression', stripe_customer_id)));
         CREATE FUNCTION tenant.on_update() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM tenant.capture('trigger'); RETURN NEW; END $$;
         CREATE TRIGGER spy BEFORE UPDATE ON tenant.profiles FOR EACH ROW EXECUTE FUNCTION tenant.on_update();
         ALTER TABLE tenant.profiles ENABLE ROW LEVEL SECURITY;
         ALTER TABLE tenant.profiles FORCE ROW LEVEL SECURITY;
         CREATE POLICY watched ON tenant.profiles USING (tenant.capture_immutable('policy', id::text) IS NOT NULL);
         RESET ROLE;
         SELECT onboarding.attach('tenant.profiles', connect_account_column => 'stripe_connect_account_id',
                                  connect_policy => 'when',
                                  connect_condition => 'tenant.capture_immutable(''connect condition'', email) IS NOT NULL'
                                  {attach_args});",
    ))
    .unwrap();
    db.batch_execute("SET ROLE tenant").unwrap();
    let user: String = db
        .query_one("INSERT INTO tenant.profiles (email) VALUES ('victim@example.com') RETURNING id::text", &[])?
        .get(0);
    db.batch_execute("RESET ROLE").unwrap();
    wait_for("the tenant's customer and Connect account", DEADLINE, || {
        db.query_one(
            "SELECT stripe_connect_account_id FROM tenant.profiles WHERE id::text = $1 AND stripe_customer_id IS NOT NULL",
            &[&user],
        )
        .ok()
        .and_then(|r| r.get::<_, Option<String>>(0))
    })?;
    let seen = seen(&mut db);
    let superuser = tenant_is_superuser(&mut db);
    db.batch_execute("ALTER ROLE tenant NOSUPERUSER").unwrap();
    ensure(!superuser, || format!("the tenant became superuser; her code saw: {seen:?}"))?;
    // Her code also runs at her own insert, as her: each vector must have run in the worker.
    let this_session: i32 = db.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    for vector in ["check constraint", "connect condition", "generated column", "index expression", "policy", "trigger"]
    {
        ensure(seen.iter().any(|(v, _, _, _, pid, _)| v == vector && *pid != this_session), || {
            format!("{vector} never ran in the worker: {seen:?}")
        })?;
    }
    let wrong: Vec<_> = seen
        .iter()
        .filter(|(_, ran_as, superuser, key, _, reached_queue)| {
            ran_as != "tenant" || *superuser || key.as_deref() != Some("denied") || *reached_queue
        })
        .collect();
    ensure(wrong.is_empty(), || format!("her code ran with more than her rights: {wrong:?}"))?;
    db.batch_execute("SELECT onboarding.detach('tenant.profiles')").unwrap();
    Ok(())
}

/// Before 0.3.0 the email-update and Connect triggers serialized the whole row with to_jsonb(NEW),
/// which ran a cast of hers as the extension's owner. Now they read only the named columns, of the
/// types attach() allows; one whose type she changed since is refused.
fn a_cast_on_a_profile_column_runs_no_code_of_the_owner() -> Result<(), Failed> {
    let mut db = db();
    tenant(&mut db);
    db.batch_execute(
        "SET ROLE tenant;
         CREATE TYPE tenant.badge AS ENUM ('gold');
         CREATE FUNCTION tenant.badge_json(tenant.badge) RETURNS json LANGUAGE sql AS
             $$ SELECT to_json(tenant.capture('cast')) $$;
         CREATE CAST (tenant.badge AS json) WITH FUNCTION tenant.badge_json(tenant.badge);
         CREATE TABLE tenant.members (
             id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             email text,
             stripe_customer_id text,
             badge tenant.badge);
         RESET ROLE;
         SELECT onboarding.attach('tenant.members');
         SET ROLE tenant;
         INSERT INTO tenant.members (email, stripe_customer_id, badge)
              VALUES ('member@example.com', 'cus_tenant_member', 'gold');
         UPDATE tenant.members SET email = 'renamed@example.com';
         RESET ROLE;",
    )
    .unwrap();
    let captured = seen(&mut db);
    let superuser = tenant_is_superuser(&mut db);
    db.batch_execute("ALTER ROLE tenant NOSUPERUSER").unwrap();
    ensure(!superuser && captured.is_empty(), || format!("the extension ran her cast: {captured:?}"))?;
    // The trigger read the named columns: the customer it names is not one this extension made
    // for the profile, so the sync is refused (tenant_objects.rs), and says so.
    let refused: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.events WHERE step = 'untied_object_refused'
                AND detail->>'table' = 'tenant.members' AND detail->>'stripe_id' = 'cus_tenant_member'",
            &[],
        )?
        .get(0);
    ensure(refused == 1, || format!("{refused} email syncs refused, expected 1"))?;

    // The customer column changed to a type of hers after attach(): refused, her code not run.
    db.batch_execute("SET ROLE tenant").unwrap();
    db.batch_execute("ALTER TABLE tenant.members ALTER COLUMN stripe_customer_id TYPE tenant.badge USING 'gold'")?;
    let (code, message) = sqlstate(db.simple_query("UPDATE tenant.members SET email = 'again@example.com'"))?;
    db.batch_execute("RESET ROLE").unwrap();
    ensure(code == "42804", || format!("changed column type: {code} {message}"))?;
    ensure(seen_count(&mut db) == 0, || format!("her code ran: {:?}", seen(&mut db)))?;
    db.batch_execute("SELECT onboarding.detach('tenant.members')").unwrap();
    Ok(())
}

fn seen_count(db: &mut Client) -> i64 {
    db.query_one("SELECT count(*) FROM tenant.seen", &[]).unwrap().get(0)
}

/// Before 0.3.0 a condition carrying `; SELECT …` ran extra statements when it was validated, and
/// a 1 MB condition was echoed whole in the error.
fn the_connect_condition_is_one_bounded_expression() -> Result<(), Failed> {
    let mut db = db();
    tenant(&mut db);
    db.batch_execute(
        "CREATE TABLE tenant.sellers (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
                                      stripe_customer_id text, stripe_connect_account_id text, role text);
         SELECT onboarding.attach('tenant.sellers', connect_account_column => 'stripe_connect_account_id');",
    )
    .unwrap();
    let policy = |condition: &str| {
        format!(
            "SELECT onboarding.set_connect_policy('tenant.sellers', 'when', {})",
            postgres_protocol_quote(condition)
        )
    };
    let injections = [
        "true)::boolean; SELECT set_config('work_mem', '1234kB', false); SELECT (true",
        "true) FROM pg_authid WHERE (rolpassword IS NOT NULL",
        "true) UNION SELECT (false",
        "true)) AS x, (SELECT set_config('work_mem', '1234kB', false)",
    ];
    for condition in injections {
        let (code, message) = sqlstate(db.simple_query(&policy(condition)))?;
        ensure(code == "22023", || format!("{condition}: {code} {message}"))?;
    }
    // One expression calling a function is a condition; it is planned, not run, when set.
    db.batch_execute(&policy("true AND set_config('work_mem', '1234kB', false) IS NOT NULL"))?;
    let work_mem: String = db.query_one("SHOW work_mem", &[])?.get(0);
    ensure(work_mem != "1234kB", || "the condition ran when it was set".into())?;
    let long = format!("role = '{}'", "x".repeat(1 << 20));
    let (code, message) = sqlstate(db.simple_query(&policy(&long)))?;
    ensure(code == "22023" && message.len() < 500, || {
        format!("1 MB condition: {code}, message of {} bytes", message.len())
    })?;
    // A good one still works.
    db.batch_execute(&policy("role = 'seller'"))?;
    db.batch_execute("SELECT onboarding.detach('tenant.sellers')").unwrap();
    Ok(())
}

/// `text` as an SQL string literal.
fn postgres_protocol_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A statement on her table that runs longer than onboarding.owner_statement_timeout (here: a
/// policy that sleeps) is cancelled; its job is parked with the reason and the others go on.
fn a_slow_statement_of_the_owner_is_cut_off_and_parks_only_its_job() -> Result<(), Failed> {
    let mut db = db();
    tenant(&mut db);
    db.batch_execute(
        "SET ROLE tenant;
         CREATE TABLE tenant.slow (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, stripe_customer_id text);
         CREATE FUNCTION tenant.sleepy() RETURNS boolean LANGUAGE sql AS $$ SELECT pg_sleep(1) IS NOT NULL $$;
         ALTER TABLE tenant.slow ENABLE ROW LEVEL SECURITY;
         ALTER TABLE tenant.slow FORCE ROW LEVEL SECURITY;
         CREATE POLICY reads ON tenant.slow FOR SELECT USING (tenant.sleepy());
         CREATE POLICY inserts ON tenant.slow FOR INSERT WITH CHECK (true);
         CREATE POLICY updates ON tenant.slow FOR UPDATE USING (true) WITH CHECK (true);
         RESET ROLE;
         SELECT onboarding.attach('tenant.slow');",
    )
    .unwrap();
    db.batch_execute("ALTER SYSTEM SET onboarding.owner_statement_timeout = '300ms'").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let fast_table = profiles_table(&mut db, "profiles_beside_slow");
    // The worker applies the reload a moment later: probes until one is cut off (each takes 1 s
    // while the worker still has the default of 10 s).
    let outcome = wait_for("a probe's profile read to be cut off", DEADLINE, || {
        let user = insert_profile(&mut db, "tenant.slow", Some("slow@example.com"));
        let finished = wait_for("the probe to finish", DEADLINE, || {
            jobs_for(&mut db, &user).into_iter().find(|j| !["pending", "running"].contains(&j.state.as_str()))
        })
        .ok()?;
        (finished.state == "dead").then_some(finished)
    });
    let beside = insert_profile(&mut db, &fast_table, Some("beside@example.com"));
    let provisioned = wait_for_customer(&mut db, &fast_table, &beside);
    db.batch_execute("ALTER SYSTEM RESET onboarding.owner_statement_timeout").unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let dead = outcome?;
    provisioned?;
    let error = dead.last_error.unwrap_or_default();
    ensure(error.contains("statement timeout"), || format!("last_error: {error}"))?;
    db.batch_execute("SELECT onboarding.detach('tenant.slow')").unwrap();
    Ok(())
}
