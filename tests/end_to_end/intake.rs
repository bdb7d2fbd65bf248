//! Intake: which inserts become jobs and when (commit, rollback, open transactions, app roles, attach).

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::env;
use crate::helpers::{
    DEADLINE, db, ensure, events_for, insert_profile, jobs_for, profiles_table, sqlstate, steps, stripe_customers_for,
    stripe_requests_for, wait_for, wait_for_customer, wait_for_state, while_worker_is_busy,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        committed_insert_creates_one_customer_and_writes_it_back,
        an_application_role_without_grants_on_onboarding_can_insert_profiles,
        rolled_back_insert_leaves_no_job_and_calls_nothing,
        the_intake_refuses_additions_and_follows_a_recreated_extension,
        open_transaction_gets_no_call_until_commit_then_a_prompt_wake,
        profile_with_a_customer_id_gets_no_stripe_call,
        two_hundred_profiles_in_one_transaction_get_two_hundred_customers,
        attach_validates_its_target_and_is_idempotent,
        awkward_identifiers_are_quoted_and_bad_arguments_refused,
    ]
}

fn committed_insert_creates_one_customer_and_writes_it_back() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_basic");
    let user = insert_profile(&mut db, &table, Some("ada@example.com"));

    let customer = wait_for_customer(&mut db, &table, &user)?;
    let job = wait_for_state(&mut db, &user, "succeeded")?;
    ensure(job.stripe_id.as_deref() == Some(customer.as_str()), || format!("job {job:?} vs {customer}"))?;

    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1, || format!("expected one Stripe customer, got {customers:?}"))?;
    ensure(customers[0]["id"] == customer.as_str(), || format!("{customers:?} vs {customer}"))?;
    ensure(customers[0]["email"] == "ada@example.com", || format!("email: {}", customers[0]))?;

    let requests = stripe_requests_for(&user);
    ensure(requests.len() == 1, || format!("expected one request, got {requests:?}"))?;
    ensure(requests[0].idempotency_key.as_deref() == Some(job.idempotency_key.as_str()), || {
        format!("idempotency key {:?} vs job {:?}", requests[0].idempotency_key, job.idempotency_key)
    })?;

    let events = events_for(&mut db, &user);
    let expected = ["enqueued", "claimed", "stripe_request", "stripe_response", "written_back"];
    ensure(steps(&events) == expected, || format!("steps {:?}", steps(&events)))?;
    let response = &events[3].1;
    ensure(response["status"] == 200 && response["request_id"] == requests[0].request_id.as_deref().unwrap(), || {
        format!("stripe_response detail {response}")
    })
}

/// Applications insert as their own role (Supabase: `authenticated`), which has no access to the
/// extension's schema, tables or functions: the trigger must still enqueue.
fn an_application_role_without_grants_on_onboarding_can_insert_profiles() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_app_role");
    db.batch_execute(&format!(
        "DROP ROLE IF EXISTS onboarding_test_app; CREATE ROLE onboarding_test_app;
         GRANT USAGE ON SCHEMA public TO onboarding_test_app;
         GRANT SELECT, INSERT ON {table} TO onboarding_test_app;"
    ))
    .unwrap();
    // Even with USAGE on the schema, the tables and the state-changing functions stay closed.
    db.batch_execute("GRANT USAGE ON SCHEMA onboarding TO onboarding_test_app").unwrap();
    db.batch_execute("SET ROLE onboarding_test_app").unwrap();
    let user = insert_profile(&mut db, &table, Some("app@example.com"));
    let mut refused = Vec::new();
    for sql in [
        "SELECT count(*) FROM onboarding.jobs",
        "SELECT count(*) FROM onboarding.events",
        "SELECT count(*) FROM onboarding.intake",
        "SELECT * FROM onboarding.retry(1)",
        "SELECT * FROM onboarding.cancel(1)",
        "SELECT * FROM onboarding.retry_dead()",
        "SELECT onboarding.attach('public.profiles_app_role')",
        "SELECT onboarding._wake_worker_after_commit()",
        "INSERT INTO onboarding.jobs (kind, profile_table, user_id) VALUES ('create_customer', 1, 'x')",
    ] {
        refused.push((sql, sqlstate(db.simple_query(sql)).map(|(code, _)| code).unwrap_or_else(|e| format!("{e:?}"))));
    }
    db.batch_execute("RESET ROLE").unwrap();
    for (sql, code) in refused {
        ensure(code == "42501", || format!("{sql}: expected 42501, got {code}"))?;
    }
    wait_for_customer(&mut db, &table, &user)?;
    // SECURITY DEFINER functions pin their search_path.
    let unpinned: Vec<String> = db
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'onboarding'::regnamespace AND p.prosecdef
                AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure(unpinned.is_empty(), || format!("SECURITY DEFINER without a pinned search_path: {unpinned:?}"))
}

fn rolled_back_insert_leaves_no_job_and_calls_nothing() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_rollback");
    let mut tx = db.transaction().unwrap();
    let rolled_back = insert_profile(&mut tx, &table, Some("ghost@example.com"));
    tx.rollback().unwrap();
    // A committed profile afterwards proves the worker ran after the rollback.
    let committed = insert_profile(&mut db, &table, Some("real@example.com"));
    wait_for_customer(&mut db, &table, &committed)?;

    ensure(jobs_for(&mut db, &rolled_back).is_empty(), || "a rolled-back insert left a job".into())?;
    ensure(events_for(&mut db, &rolled_back).is_empty(), || "a rolled-back insert left events".into())?;
    let requests = stripe_requests_for(&rolled_back);
    ensure(requests.is_empty(), || format!("Stripe was called for a rolled-back profile: {requests:?}"))
}

/// The insert trigger writes `onboarding.intake` without the executor: it must refuse to run
/// once someone gives the table an index (which it would not maintain), and a session that
/// cached the table keeps working after the extension is dropped and created again.
fn the_intake_refuses_additions_and_follows_a_recreated_extension() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_intake");
    let first = insert_profile(&mut db, &table, Some("first@example.com"));
    wait_for_customer(&mut db, &table, &first)?;

    db.batch_execute("CREATE INDEX intake_by_user ON onboarding.intake (user_id)").unwrap();
    let refused = sqlstate(db.query(&format!("INSERT INTO {table} (email) VALUES ('x@example.com')"), &[]));
    db.batch_execute("DROP INDEX onboarding.intake_by_user").unwrap();
    let (code, message) = refused?;
    ensure(code == "55000" && message.contains("no indexes") && message.contains("drop what was added"), || {
        format!("insert with an index on the intake: {code} {message}")
    })?;

    // Same session, so its cached oid of the intake goes stale.
    db.batch_execute(&format!(
        "DROP EXTENSION onboarding CASCADE; CREATE EXTENSION onboarding; SELECT onboarding.attach('{table}')"
    ))
    .unwrap();
    let second = insert_profile(&mut db, &table, Some("second@example.com"));
    wait_for_customer(&mut db, &table, &second)?;
    let jobs = jobs_for(&mut db, &second);
    ensure(jobs.len() == 1 && jobs[0].state == "succeeded", || format!("after recreating: {jobs:?}"))
}

fn open_transaction_gets_no_call_until_commit_then_a_prompt_wake() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_open_tx");
    let mut writer = env().cluster.connect();
    let mut tx = writer.transaction().unwrap();
    let user = insert_profile(&mut tx, &table, Some("patient@example.com"));

    // While it is open, another committed profile is provisioned: the worker is active...
    let other = insert_profile(&mut db, &table, Some("other@example.com"));
    wait_for_customer(&mut db, &table, &other)?;
    // ...and for several seconds it must not touch the uncommitted one.
    let open_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < open_until {
        let requests = stripe_requests_for(&user);
        ensure(requests.is_empty(), || format!("Stripe called before COMMIT: {requests:?}"))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure(jobs_for(&mut db, &user).is_empty(), || "job visible before COMMIT".into())?;

    let committed_at = Instant::now();
    let committed_wall = std::time::SystemTime::now();
    tx.commit().unwrap();
    wait_for_customer(&mut db, &table, &user)?;
    let latency = committed_at.elapsed();
    // The poll interval is 60 s: only the commit-time wake explains a result within seconds.
    ensure(latency < Duration::from_secs(5), || format!("customer took {latency:?} after COMMIT"))?;
    let first = &stripe_requests_for(&user)[0];
    ensure(first.arrived_at >= committed_wall, || "the Stripe request predates the COMMIT".into())
}

fn profile_with_a_customer_id_gets_no_stripe_call() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_provisioned");
    // Inserted with an ID already: nothing to enqueue.
    let inserted_with_id: String = db
        .query_one(
            &format!("INSERT INTO {table} (email, stripe_customer_id) VALUES ('has@example.com', 'cus_existing1') RETURNING id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    // Given an ID after enqueueing but before the worker gets to it: the job succeeds without a call.
    let mut user = String::new();
    while_worker_is_busy(&mut db, &table, |db| {
        user = insert_profile(db, &table, Some("later@example.com"));
        db.execute(&format!("UPDATE {table} SET stripe_customer_id = 'cus_existing2' WHERE id::text = $1"), &[&user])
            .unwrap();
    })?;
    let job = wait_for_state(&mut db, &user, "succeeded")?;
    // The job's stripe_id names only what it created; the one it found is in its event.
    ensure(job.stripe_id.is_none(), || format!("{job:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(events.last().is_some_and(|(_, d)| d["stripe_id"] == "cus_existing2"), || format!("{events:?}"))?;
    ensure(jobs_for(&mut db, &inserted_with_id).is_empty(), || "a job for a provisioned profile".into())?;
    for u in [&user, &inserted_with_id] {
        let requests = stripe_requests_for(u);
        ensure(requests.is_empty(), || format!("Stripe called for a provisioned profile: {requests:?}"))?;
    }
    Ok(())
}

fn two_hundred_profiles_in_one_transaction_get_two_hundred_customers() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_bulk");
    let users: Vec<String> = db
        .query(
            &format!("INSERT INTO {table} (email) SELECT 'bulk' || g || '@example.com' FROM generate_series(1, 200) g RETURNING id::text"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    wait_for("200 customers written back", Duration::from_secs(60), || {
        let done: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table} WHERE stripe_customer_id IS NOT NULL"), &[])
            .unwrap()
            .get(0);
        (done == 200).then_some(())
    })?;
    let distinct: i64 =
        db.query_one(&format!("SELECT count(DISTINCT stripe_customer_id) FROM {table}"), &[]).unwrap().get(0);
    ensure(distinct == 200, || format!("{distinct} distinct customer ids for 200 profiles"))?;
    let all = env().stripe.customers();
    for user in &users {
        let theirs = all.iter().filter(|c| c["metadata"]["user_id"] == user.as_str()).count();
        ensure(theirs == 1, || format!("user {user} has {theirs} Stripe customers"))?;
    }
    Ok(())
}

fn attach_validates_its_target_and_is_idempotent() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute(
        "DROP TABLE IF EXISTS public.attach_target, public.attach_wrong CASCADE;
         CREATE TABLE public.attach_target (id uuid PRIMARY KEY, email text, stripe_customer_id text);
         CREATE TABLE public.attach_wrong (id uuid PRIMARY KEY, email integer, stripe_customer_id text);
         CREATE OR REPLACE VIEW public.attach_view AS SELECT * FROM public.attach_target;",
    )
    .unwrap();
    let cases = [
        ("SELECT onboarding.attach('public.no_such_table')", "42P01", "no_such_table"),
        ("SELECT onboarding.attach('public.attach_target', email_column => 'mail')", "42703", "mail"),
        ("SELECT onboarding.attach('public.attach_wrong')", "42804", "integer"),
        ("SELECT onboarding.attach('public.attach_view')", "42809", "not a table"),
        ("SELECT onboarding.attach('public.attach_target', connect_account_column => 'acct')", "42703", "acct"),
    ];
    for (sql, code, needle) in cases {
        let (got, message) = sqlstate(db.simple_query(sql))?;
        ensure(got == code && message.contains(needle), || format!("{sql}: {got} {message}"))?;
    }
    let (_, hint) =
        sqlstate(db.simple_query("SELECT onboarding.attach('public.attach_target', email_column => 'mail')"))?;
    ensure(hint.contains("Columns of"), || format!("no hint listing the columns: {hint}"))?;

    for _ in 0..2 {
        db.execute("SELECT onboarding.attach('public.attach_target')", &[]).unwrap();
    }
    let triggers = |db: &mut Client| -> i64 {
        db.query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.attach_target'::regclass AND NOT tgisinternal",
            &[],
        )
        .unwrap()
        .get(0)
    };
    // An insert, a delete (compensation) and an email-update trigger, not two of each.
    ensure(triggers(&mut db) == 3, || "attach twice left other than its three triggers".into())?;
    db.execute("SELECT onboarding.detach('public.attach_target')", &[]).unwrap();
    ensure(triggers(&mut db) == 0, || "detach left the trigger".into())?;
    let user: String = db
        .query_one(
            "INSERT INTO public.attach_target VALUES (gen_random_uuid(), 'x@example.com') RETURNING id::text",
            &[],
        )
        .unwrap()
        .get(0);
    ensure(jobs_for(&mut db, &user).is_empty(), || "a detached table still enqueues".into())
}

/// Column and table names that need quoting, one of them shaped like an injection.
fn awkward_identifiers_are_quoted_and_bad_arguments_refused() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute(
        r#"DROP SCHEMA IF EXISTS "Odd Schema" CASCADE;
           CREATE SCHEMA "Odd Schema";
           CREATE TABLE "Odd Schema"."User Profiles" (
               "User Id" uuid PRIMARY KEY DEFAULT gen_random_uuid(),
               "e-mail'); DROP TABLE x; --" text,
               "Stripe ""Customer""" text);
           SELECT onboarding.attach('"Odd Schema"."User Profiles"', id_column => 'User Id',
                                    email_column => 'e-mail''); DROP TABLE x; --',
                                    customer_column => 'Stripe "Customer"');"#,
    )
    .unwrap();
    let user: String = db
        .query_one(
            r#"INSERT INTO "Odd Schema"."User Profiles" ("e-mail'); DROP TABLE x; --") VALUES ('odd@example.com')
               RETURNING "User Id"::text"#,
            &[],
        )
        .unwrap()
        .get(0);
    let customer = wait_for("the odd profile's customer", DEADLINE, || {
        db.query_one(
            r#"SELECT "Stripe ""Customer""" FROM "Odd Schema"."User Profiles" WHERE "User Id"::text = $1"#,
            &[&user],
        )
        .unwrap()
        .get::<_, Option<String>>(0)
    })?;
    let customers = stripe_customers_for(&user);
    ensure(
        customers.len() == 1 && customers[0]["id"] == customer.as_str() && customers[0]["email"] == "odd@example.com",
        || format!("{customers:?}"),
    )?;
    for sql in [
        "SELECT * FROM onboarding.retry(NULL)",
        "SELECT * FROM onboarding.cancel(NULL)",
        "SELECT onboarding.attach(NULL)",
    ] {
        let (code, _) = sqlstate(db.simple_query(sql))?;
        ensure(code == "22004", || format!("{sql}: {code}"))?;
    }
    let (code, _) = sqlstate(db.simple_query("SELECT onboarding.attach('public.profiles_basic', email_column => '')"))?;
    ensure(code == "22023", || format!("empty column name: {code}"))?;
    db.batch_execute(r#"DROP SCHEMA "Odd Schema" CASCADE"#).unwrap();
    Ok(())
}
