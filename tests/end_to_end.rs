//! End-to-end tests: a real PostgreSQL 15 with the extension preloaded, its background worker,
//! and the project's Stripe emulator in this process. Committed data only, as applications see it.
//!
//! Run with `cargo test --test end_to_end` after `cargo pgrx install`. Tests share one cluster
//! and one emulator, so they run one at a time; each uses its own profile table and user ids.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use postgres::Client;
use serde_json::Value;
use stripe_emulator::{Emulator, EmulatorConfig, Fault, RecordedRequest};
use support::cluster::Cluster;

/// A distinctive key: the leak test looks for it everywhere it must not be.
const API_KEY: &str = "sk_test_LEAKCANARY7f3a9c2e51d8b406";
/// Far longer than any wait below, so a prompt result proves the commit woke the worker.
const POLL_INTERVAL: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
const DEADLINE: Duration = Duration::from_secs(20);

struct Env {
    cluster: Cluster,
    stripe: Emulator,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn env() -> &'static Env {
    ENV.get().expect("environment started in main")
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<(&str, fn() -> Result<(), Failed>)> = vec![
        ("committed_insert_creates_one_customer_and_writes_it_back", committed_insert_creates_one_customer),
        ("an_application_role_without_grants_on_onboarding_can_insert_profiles", unprivileged_app_role_inserts),
        ("rolled_back_insert_leaves_no_job_and_calls_nothing", rolled_back_insert_calls_nothing),
        ("the_intake_refuses_additions_and_follows_a_recreated_extension", intake_guards_and_recreation),
        ("open_transaction_gets_no_call_until_commit_then_a_prompt_wake", open_transaction_waits_for_commit),
        ("profile_deleted_before_the_worker_runs_is_skipped", deleted_profile_is_skipped),
        ("profile_deleted_during_the_stripe_call_orphans_then_deletes_the_customer", deleted_during_call_is_orphaned),
        (
            "deleting_a_provisioned_profile_deletes_its_customer_unless_told_not_to",
            deleting_a_profile_deletes_its_customer,
        ),
        ("profile_deleted_after_a_lost_answer_gets_the_lost_customer_deleted", deleted_after_lost_answer),
        ("profile_with_a_customer_id_gets_no_stripe_call", provisioned_profile_gets_no_call),
        ("two_hundred_profiles_in_one_transaction_get_two_hundred_customers", two_hundred_profiles),
        ("transient_failures_are_recorded_and_retried_with_one_idempotency_key", transient_failures_retry),
        ("bad_requests_are_parked_then_retry_dead_and_retry_requeue_them", bad_request_is_parked),
        ("retries_resend_the_first_request_even_if_the_email_changed", retries_resend_the_first_request),
        ("idempotency_error_is_resolved_by_looking_the_customer_up", idempotency_error_adopts),
        ("job_past_the_idempotency_horizon_adopts_the_existing_customer", past_horizon_adopts),
        ("pending_job_can_be_cancelled_and_retried", pending_job_can_be_cancelled_and_retried),
        ("profile_without_email_is_parked_without_a_call", missing_email_is_parked),
        ("stuck_call_times_out_and_is_retried", stuck_call_times_out),
        ("terminated_worker_exits_promptly_restarts_and_finishes_the_job", terminated_worker_restarts),
        ("overrun_lease_is_taken_back_and_late_results_refused", overrun_lease_is_taken_back_and_late_results_refused),
        ("attach_validates_its_target_and_is_idempotent", attach_validates),
        ("awkward_identifiers_are_quoted_and_bad_arguments_refused", awkward_identifiers_are_quoted),
        ("every_database_with_the_extension_gets_workers", every_database_with_the_extension_gets_workers),
        ("enqueue_customer_and_status_functions_for_applications", enqueue_and_status),
        ("get_or_create_customer_returns_at_once_or_joins_the_running_job", get_or_create_joins_the_trigger_job),
        ("get_or_create_customer_refuses_uncommitted_profiles_and_times_out_clearly", get_or_create_refusals),
        ("email_changes_follow_to_the_stripe_customer", email_changes_follow),
        ("connect_accounts_follow_the_policy_after_the_customer", connect_accounts_follow_the_policy),
        ("connect_policy_is_validated", connect_policy_is_validated),
        ("account_links_are_made_fresh_and_only_when_allowed", account_links_are_made_fresh_and_only_when_allowed),
        ("audits_find_the_planted_gaps", audits_find_the_planted_gaps),
        (
            "backfill_provisions_existing_profiles_once_with_progress",
            backfill_provisions_existing_profiles_once_with_progress,
        ),
        ("retention_prunes_finished_jobs_but_keeps_dead_ones", retention_prunes_finished_jobs_but_keeps_dead_ones),
        ("reconcile_repairs_what_the_audits_find", reconcile_repairs_what_the_audits_find),
        ("an_idle_worker_sleeps_instead_of_polling", idle_worker_sleeps),
        ("api_key_never_appears_in_jobs_events_errors_or_logs", api_key_never_leaks),
        ("concurrent_workers_and_sessions_never_process_a_job_twice_at_once", concurrent_workers),
    ];
    // Each test starts with an emulator that has no faults or objects left by the previous one.
    let trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, test)| {
            Trial::test(name, move || {
                env().stripe.reset();
                test()
            })
        })
        .collect();

    if !args.list {
        let stripe =
            Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })
                .expect("start the Stripe emulator");
        let cluster = Cluster::start("main", &settings(&stripe, "log_min_messages = debug1"));
        cluster.connect().batch_execute("CREATE EXTENSION onboarding").expect("CREATE EXTENSION");
        let _ = ENV.set(Env { cluster, stripe });
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(env) = ENV.get() {
        env.cluster.stop();
    }
    conclusion.exit();
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// postgresql.conf lines for a test cluster that talks to `stripe`.
fn settings(stripe: &Emulator, extra: &str) -> String {
    format!(
        "onboarding.stripe_api_base = '{base}'\n\
         onboarding.stripe_api_key = '{API_KEY}'\n\
         onboarding.poll_interval = '{poll}ms'\n\
         onboarding.retry_base_delay = '100ms'\n\
         onboarding.retry_max_delay = '1s'\n\
         onboarding.max_attempts = 6\n\
         onboarding.connect_timeout = '1s'\n\
         onboarding.request_timeout = '{timeout}ms'\n\
         track_commit_timestamp = on\n\
         onboarding.rate_limit = 0\n\
         {extra}\n",
        base = stripe.base_url(),
        poll = POLL_INTERVAL.as_millis(),
        timeout = REQUEST_TIMEOUT.as_millis(),
    )
}

fn db() -> Client {
    env().cluster.connect()
}

/// A Supabase-shaped profile table, attached.
fn profiles_table(db: &mut Client, name: &str) -> String {
    let table = format!("public.{name}");
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (
             id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             email text,
             stripe_customer_id text,
             stripe_connect_account_id text,
             created_at timestamptz NOT NULL DEFAULT now());
         SELECT onboarding.attach('{table}');"
    ))
    .unwrap();
    table
}

fn insert_profile(db: &mut impl postgres::GenericClient, table: &str, email: Option<&str>) -> String {
    db.query_one(&format!("INSERT INTO {table} (email) VALUES ($1) RETURNING id::text"), &[&email]).unwrap().get(0)
}

/// Polls `probe` until it yields a value or the deadline passes.
fn wait_for<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T, Failed> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= until {
            return Err(format!("timed out after {deadline:?} waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn customer_id(db: &mut Client, table: &str, user: &str) -> Option<String> {
    db.query_one(&format!("SELECT stripe_customer_id FROM {table} WHERE id::text = $1"), &[&user]).unwrap().get(0)
}

fn wait_for_customer(db: &mut Client, table: &str, user: &str) -> Result<String, Failed> {
    wait_for(&format!("a customer for {user}"), DEADLINE, || customer_id(db, table, user))
}

#[derive(Debug)]
struct Job {
    kind: String,
    state: String,
    attempts: i32,
    stripe_id: Option<String>,
    last_error: Option<String>,
    idempotency_key: String,
}

fn jobs_for(db: &mut Client, user: &str) -> Vec<Job> {
    db.query(
        "SELECT kind, state, attempts, stripe_id, last_error, idempotency_key FROM onboarding.jobs
          WHERE user_id = $1 ORDER BY id",
        &[&user],
    )
    .unwrap()
    .iter()
    .map(|r| Job {
        kind: r.get(0),
        state: r.get(1),
        attempts: r.get(2),
        stripe_id: r.get(3),
        last_error: r.get(4),
        idempotency_key: r.get(5),
    })
    .collect()
}

fn only_job(db: &mut Client, user: &str) -> Result<Job, Failed> {
    let mut jobs = jobs_for(db, user);
    if jobs.len() != 1 {
        return Err(format!("expected one job for {user}, found {jobs:?}").into());
    }
    Ok(jobs.remove(0))
}

fn wait_for_state(db: &mut Client, user: &str, state: &str) -> Result<Job, Failed> {
    wait_for(&format!("job of {user} to be {state}"), DEADLINE, || {
        jobs_for(db, user).into_iter().find(|j| j.state == state)
    })
}

/// (step, detail) in sequence order.
fn events_for(db: &mut Client, user: &str) -> Vec<(String, Value)> {
    db.query("SELECT step, detail FROM onboarding.events WHERE user_id = $1 ORDER BY at, id", &[&user])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn steps(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(s, _)| s.as_str()).collect()
}

/// Requests the emulator received that concern this user (by `metadata[user_id]`).
fn stripe_requests_for(user: &str) -> Vec<RecordedRequest> {
    env().stripe.requests().into_iter().filter(|r| r.params["metadata"]["user_id"] == user).collect()
}

fn stripe_customers_for(user: &str) -> Vec<Value> {
    env().stripe.customers().into_iter().filter(|c| c["metadata"]["user_id"] == user).collect()
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), Failed> {
    if condition { Ok(()) } else { Err(message().into()) }
}

fn worker_pid(db: &mut Client) -> Option<i32> {
    db.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'onboarding worker' AND datname = current_database()",
        &[],
    )
    .unwrap()
    .map(|r| r.get(0))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

fn committed_insert_creates_one_customer() -> Result<(), Failed> {
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
fn unprivileged_app_role_inserts() -> Result<(), Failed> {
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

/// Column and table names that need quoting, one of them shaped like an injection.
fn awkward_identifiers_are_quoted() -> Result<(), Failed> {
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

fn rolled_back_insert_calls_nothing() -> Result<(), Failed> {
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
fn intake_guards_and_recreation() -> Result<(), Failed> {
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

fn open_transaction_waits_for_commit() -> Result<(), Failed> {
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

/// Holds the worker inside a Stripe call (a stalled request for a decoy profile) while the test
/// changes another profile after its commit, so the worker sees the change deterministically.
/// Runs `change` while the worker has no room for another call: as many decoy calls as it keeps in
/// flight (onboarding.batch_size, default 25) are stalled at Stripe for 2 s, so a profile inserted
/// meanwhile becomes a pending job that waits.
fn while_worker_is_busy(db: &mut Client, table: &str, change: impl FnOnce(&mut Client)) -> Result<(), Failed> {
    const CALLS_IN_FLIGHT: usize = 25;
    env().stripe.inject(Fault::stall(Duration::from_secs(2)).on("POST", "/v1/customers").times(CALLS_IN_FLIGHT as u32));
    let mut tx = db.transaction().unwrap();
    let decoys: Vec<String> =
        (0..CALLS_IN_FLIGHT).map(|_| insert_profile(&mut tx, table, Some("decoy@example.com"))).collect();
    tx.commit().unwrap();
    wait_for("every decoy's request to reach Stripe", DEADLINE, || {
        decoys.iter().all(|decoy| !stripe_requests_for(decoy).is_empty()).then_some(())
    })?;
    change(db);
    for decoy in &decoys {
        wait_for_customer(db, table, decoy)?;
    }
    Ok(())
}

fn deleted_profile_is_skipped() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_deleted");
    let mut user = String::new();
    while_worker_is_busy(&mut db, &table, |db| {
        user = insert_profile(db, &table, Some("gone@example.com"));
        db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    })?;
    let job = wait_for_state(&mut db, &user, "skipped")?;
    ensure(job.stripe_id.is_none(), || format!("{job:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events) == ["enqueued", "claimed", "skipped"], || format!("steps {:?}", steps(&events)))?;
    ensure(events[2].1["reason"] == "profile not found", || format!("{}", events[2].1))?;
    let requests = stripe_requests_for(&user);
    ensure(requests.is_empty(), || format!("Stripe called for a deleted profile: {requests:?}"))
}

fn deleted_during_call_is_orphaned() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_vanishing");
    env().stripe.inject(Fault::stall(Duration::from_secs(2)).on("POST", "/v1/customers").times(1));
    let user = insert_profile(&mut db, &table, Some("vanishing@example.com"));
    wait_for("the request to reach Stripe", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();

    // Nothing silently lost: the creation job names the customer that has no profile...
    let job = wait_for_state(&mut db, &user, "orphaned")?;
    let created = job.stripe_id.clone().ok_or("the orphaned job does not name its customer")?;
    ensure(job.last_error.as_deref().is_some_and(|e| e.contains("profile deleted")), || format!("{job:?}"))?;
    // ...and a compensation job deletes it.
    wait_for("the compensation job", DEADLINE, || {
        jobs_for(&mut db, &user).into_iter().find(|j| j.kind == "delete_customer" && j.state == "succeeded")
    })?;
    let live = stripe_customers_for(&user);
    ensure(live.is_empty(), || format!("{created} was not deleted: {live:?}"))?;
    let deletes: Vec<_> = env().stripe.requests().into_iter().filter(|r| r.method == "DELETE").collect();
    ensure(deletes.len() == 1 && deletes[0].path == format!("/v1/customers/{created}"), || format!("{deletes:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(
        steps(&events).ends_with(&[
            "orphaned",
            "enqueued",
            "claimed",
            "stripe_request",
            "stripe_response",
            "compensated",
        ]),
        || format!("steps {:?}", steps(&events)),
    )
}

/// Stripe created the customer but the answer was lost; before the retry, the profile is deleted.
/// The job must not just skip: it finds the customer its lost attempt created and deletes it.
fn deleted_after_lost_answer() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_lost_then_deleted");
    let user = created_then_lost(&mut db, &table, Fault::rate_limit()); // then a retry at least 0.5 s later
    wait_for("the lost attempt and the rate-limited one", DEADLINE, || {
        (stripe_requests_for(&user).len() == 2).then_some(())
    })?;
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    let job = wait_for_state(&mut db, &user, "skipped")?;
    ensure(stripe_customers_for(&user).is_empty(), || format!("the lost attempt's customer survived: {job:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).last() == Some(&"compensated"), || format!("steps {:?}", steps(&events)))
}

fn deleting_a_profile_deletes_its_customer() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_delete_cascade");
    let user = insert_profile(&mut db, &table, Some("leaving@example.com"));
    let customer = wait_for_customer(&mut db, &table, &user)?;
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    wait_for("the compensation job", DEADLINE, || {
        jobs_for(&mut db, &user).into_iter().find(|j| j.kind == "delete_customer" && j.state == "succeeded")
    })?;
    ensure(stripe_customers_for(&user).is_empty(), || format!("{customer} survived its profile"))?;

    // Not when the setting is off for this session, nor for a customer the extension did not create.
    let kept = insert_profile(&mut db, &table, Some("kept@example.com"));
    wait_for_customer(&mut db, &table, &kept)?;
    let foreign: String = db
        .query_one(
            &format!("INSERT INTO {table} (email, stripe_customer_id) VALUES ('foreign@example.com', 'cus_madeElsewhere') RETURNING id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    db.batch_execute("SET onboarding.delete_customers_with_profiles = off").unwrap();
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&kept]).unwrap();
    db.batch_execute("RESET onboarding.delete_customers_with_profiles").unwrap();
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&foreign]).unwrap();
    // The trigger decides within the DELETE: no compensation job now means none ever.
    for u in [&kept, &foreign] {
        let compensations = jobs_for(&mut db, u).into_iter().filter(|j| j.kind == "delete_customer").count();
        ensure(compensations == 0, || format!("a compensation job for {u}"))?;
    }
    ensure(stripe_customers_for(&kept).len() == 1, || "the kept customer is gone".into())
}

fn provisioned_profile_gets_no_call() -> Result<(), Failed> {
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

fn two_hundred_profiles() -> Result<(), Failed> {
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

fn transient_failures_retry() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_transient");
    let stripe = &env().stripe;
    stripe.inject(Fault::status(503).on("POST", "/v1/customers").times(1));
    stripe.inject(Fault::rate_limit().on("POST", "/v1/customers").times(1));
    stripe.inject(Fault::drop_before().on("POST", "/v1/customers").times(1));
    // Executed by Stripe, but the answer is lost: the retry must replay it, not create another.
    stripe.inject(Fault::drop_after().on("POST", "/v1/customers").times(1));
    let user = insert_profile(&mut db, &table, Some("flaky@example.com"));

    let customer = wait_for_customer(&mut db, &table, &user)?;
    let job = only_job(&mut db, &user)?;
    ensure(job.state == "succeeded" && job.attempts == 5, || format!("{job:?}"))?;
    ensure(job.last_error.is_some(), || "the failures left no last_error".into())?;

    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let requests = stripe_requests_for(&user);
    ensure(requests.len() == 5, || format!("expected 5 requests, got {requests:?}"))?;
    ensure(requests.iter().all(|r| r.idempotency_key.as_deref() == Some(job.idempotency_key.as_str())), || {
        "retries used different idempotency keys".into()
    })?;
    ensure(requests[4].replayed, || "the last attempt was not an idempotent replay".into())?;

    let events = events_for(&mut db, &user);
    let failures: Vec<&Value> = events.iter().filter(|(s, _)| s == "failed").map(|(_, d)| d).collect();
    ensure(failures.len() == 4, || format!("expected 4 failed events, got {:?}", steps(&events)))?;
    for (failure, (status, request)) in failures.iter().zip([(503, &requests[0]), (429, &requests[1])]) {
        ensure(failure["status"] == status && failure["request_id"] == request.request_id.as_deref().unwrap(), || {
            format!("failure {failure} vs request {request:?}")
        })?;
    }
    ensure(failures[2]["kind"] == "transport" && failures[3]["kind"] == "transport", || format!("{failures:?}"))?;
    ensure(steps(&events).last() == Some(&"written_back"), || format!("steps {:?}", steps(&events)))
}

fn bad_request_is_parked() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_bad_request");
    for code in ["parameter_invalid_empty", "email_invalid"] {
        env().stripe.inject(Fault::status(400).on("POST", "/v1/customers").code(code).message("Invalid email address"));
    }
    let users: Vec<String> = (0..2).map(|_| insert_profile(&mut db, &table, Some("rejected@example.com"))).collect();
    let mut jobs = Vec::new();
    for user in &users {
        let job = wait_for_state(&mut db, user, "dead")?;
        ensure(job.attempts == 1, || format!("a 400 was retried: {job:?}"))?;
        let requests = stripe_requests_for(user);
        ensure(requests.len() == 1, || format!("{requests:?}"))?;
        let error = job.last_error.clone().unwrap_or_default();
        let request_id = requests[0].request_id.clone().unwrap();
        for needle in ["400", "Invalid email address", request_id.as_str()] {
            ensure(error.contains(needle), || format!("last_error {error:?} lacks {needle:?}"))?;
        }
        ensure(customer_id(&mut db, &table, user).is_none(), || "a customer was written".into())?;
        jobs.push(job);
    }

    // retry_dead(code) picks only the jobs that failed with that code.
    let retried: Vec<(i64, String)> = db
        .query("SELECT id, user_id FROM onboarding.retry_dead('email_invalid')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ensure(retried.len() == 1, || format!("retry_dead('email_invalid') retried {retried:?}"))?;
    let (retried_id, retried_user) = retried[0].clone();
    wait_for_customer(&mut db, &table, &retried_user)?;
    let other = users.iter().find(|u| **u != retried_user).unwrap();
    ensure(only_job(&mut db, other)?.state == "dead", || "retry_dead retried a job with another code".into())?;

    // retry(id) for the other one; refused for jobs that are not dead or cancelled.
    let other_id: i64 = db.query_one("SELECT id FROM onboarding.jobs WHERE user_id = $1", &[other]).unwrap().get(0);
    let state: String = db.query_one("SELECT state FROM onboarding.retry($1)", &[&other_id]).unwrap().get(0);
    ensure(state == "pending", || format!("retry returned {state}"))?;
    wait_for_customer(&mut db, &table, other)?;
    let (code, message) = sqlstate(db.query("SELECT * FROM onboarding.retry($1)", &[&retried_id]))?;
    ensure(code == "55000" && message.contains("succeeded"), || format!("retrying a finished job: {code} {message}"))?;
    let (code, _) = sqlstate(db.query("SELECT * FROM onboarding.retry(-1)", &[]))?;
    ensure(code == "P0002", || format!("retrying a missing job: {code}"))?;
    let requests = stripe_requests_for(other);
    ensure(requests.len() == 2 && requests[0].idempotency_key == requests[1].idempotency_key, || {
        format!("a retried job must reuse its idempotency key: {requests:?}")
    })
}

fn retries_resend_the_first_request() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_email_change");
    env().stripe.inject(Fault::rate_limit().on("POST", "/v1/customers")); // retried after at least 0.5 s
    let user = insert_profile(&mut db, &table, Some("first@example.com"));
    wait_for("the first attempt", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;
    db.execute(&format!("UPDATE {table} SET email = 'second@example.com' WHERE id::text = $1"), &[&user]).unwrap();
    wait_for_customer(&mut db, &table, &user)?;
    let requests = stripe_requests_for(&user);
    ensure(requests.len() == 2, || format!("{requests:?}"))?;
    ensure(requests.iter().all(|r| r.params == requests[0].params && r.params["email"] == "first@example.com"), || {
        format!("the retry changed its parameters under the same idempotency key: {requests:?}")
    })
}

/// Stripe executes the first attempt but the answer is lost (`drop_after`); `second` answers the retry.
fn created_then_lost(db: &mut Client, table: &str, second: Fault) -> String {
    env().stripe.inject(Fault::drop_after().on("POST", "/v1/customers"));
    env().stripe.inject(second.on("POST", "/v1/customers"));
    insert_profile(db, table, Some("lost@example.com"))
}

fn idempotency_error_adopts() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_idempotency_error");
    let refused = Fault::status(400)
        .error_type("idempotency_error")
        .message("Keys for idempotent requests can only be used with the same parameters they were first used with.");
    let user = created_then_lost(&mut db, &table, refused);
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).contains(&"adopted"), || format!("steps {:?}", steps(&events)))
}

fn past_horizon_adopts() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_horizon");
    let user = created_then_lost(&mut db, &table, Fault::status(400).message("refused for the test"));
    wait_for_state(&mut db, &user, "dead")?;
    ensure(stripe_customers_for(&user).len() == 1, || "the first attempt created nothing".into())?;
    // Two days later: Stripe has forgotten the key, so a plain retry would create a second customer.
    env().stripe.expire_idempotency_keys();
    db.execute("UPDATE onboarding.jobs SET first_attempt_at = now() - interval '2 days' WHERE user_id = $1", &[&user])
        .unwrap();
    db.query("SELECT * FROM onboarding.retry((SELECT id FROM onboarding.jobs WHERE user_id = $1))", &[&user]).unwrap();
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).ends_with(&["adopted", "written_back"]), || format!("steps {:?}", steps(&events)))
}

fn pending_job_can_be_cancelled_and_retried() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_cancel");
    let mut job_id = 0i64;
    let mut user = String::new();
    while_worker_is_busy(&mut db, &table, |db| {
        user = insert_profile(db, &table, Some("cancel@example.com"));
        // The worker turns the insert into a job within milliseconds, even while busy.
        let pending = wait_for("the insert's job", DEADLINE, || jobs_for(db, &user).into_iter().next());
        assert_eq!(pending.map(|job| job.state).ok().as_deref(), Some("pending"));
        let row = db
            .query_one(
                "SELECT id, state FROM onboarding.cancel((SELECT id FROM onboarding.jobs WHERE user_id = $1))",
                &[&user],
            )
            .unwrap();
        job_id = row.get(0);
        assert_eq!(row.get::<_, String>(1), "cancelled");
    })?;
    // The worker has moved on (the decoy is done); a cancelled job is never sent.
    let sentinel = insert_profile(&mut db, &table, Some("sentinel@example.com"));
    wait_for_customer(&mut db, &table, &sentinel)?;
    ensure(stripe_requests_for(&user).is_empty(), || "a cancelled job reached Stripe".into())?;
    let (code, message) = sqlstate(db.query("SELECT * FROM onboarding.cancel($1)", &[&job_id]))?;
    ensure(code == "55000" && message.contains("cancelled"), || format!("cancelling twice: {code} {message}"))?;
    db.query("SELECT * FROM onboarding.retry($1)", &[&job_id]).unwrap();
    wait_for_customer(&mut db, &table, &user)?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events)[..3] == ["enqueued", "cancelled", "retried"], || format!("steps {:?}", steps(&events)))
}

fn missing_email_is_parked() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_no_email");
    let user = insert_profile(&mut db, &table, None);
    let job = wait_for_state(&mut db, &user, "dead")?;
    ensure(job.last_error.as_deref() == Some("profile has no email"), || format!("{job:?}"))?;
    ensure(stripe_requests_for(&user).is_empty(), || "a profile without email was sent to Stripe".into())
}

fn stuck_call_times_out() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_stuck");
    env().stripe.inject(Fault::stall(REQUEST_TIMEOUT * 3).on("POST", "/v1/customers").times(1));
    let user = insert_profile(&mut db, &table, Some("slow@example.com"));
    wait_for_customer(&mut db, &table, &user)?;
    let events = events_for(&mut db, &user);
    let failure = events.iter().find(|(s, _)| s == "failed").map(|(_, d)| d.clone());
    ensure(failure.as_ref().is_some_and(|f| f["transport"] == "timeout"), || format!("events {events:?}"))
}

fn terminated_worker_restarts() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_terminate");
    let before = wait_for("the worker", DEADLINE, || worker_pid(&mut db))?;
    env().stripe.inject(Fault::stall(Duration::from_secs(30)).on("POST", "/v1/customers").times(1));
    let user = insert_profile(&mut db, &table, Some("interrupted@example.com"));
    wait_for("the request to reach Stripe", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;

    // A job whose every attempt so far killed its worker (claimed by a process that is gone, no
    // attempts left): the restarted worker parks it instead of looping.
    let crash_looper: i64 = db
        .query_one(
            &format!(
                "INSERT INTO onboarding.jobs (kind, profile_table, user_id, state, attempts, claimed_by, claimed_at)
                 VALUES ('create_customer', '{table}'::regclass, 'crash-looper', 'running', 6, 2147483647, now())
                 RETURNING id"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let terminated_at = Instant::now();
    db.execute("SELECT pg_terminate_backend($1)", &[&before]).unwrap();
    wait_for("the worker to exit", Duration::from_secs(2), || (worker_pid(&mut db) != Some(before)).then_some(()))?;
    let exit = terminated_at.elapsed();
    ensure(exit < Duration::from_millis(1500), || format!("the worker took {exit:?} to exit mid-call"))?;

    let after = wait_for("a restarted worker", DEADLINE, || worker_pid(&mut db))?;
    ensure(after != before, || "the same worker pid".into())?;
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let job = only_job(&mut db, &user)?;
    ensure(job.state == "succeeded" && job.attempts == 2, || format!("{job:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).contains(&"requeued"), || format!("steps {:?}", steps(&events)))?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let parked = only_job(&mut db, "crash-looper")?;
    ensure(parked.state == "dead" && parked.last_error.as_deref().is_some_and(|e| e.contains("every attempt")), || {
        format!("crash-looping job {crash_looper}: {parked:?}")
    })
}

/// A worker that is alive but stuck past the lease loses its job, and its late result is refused.
fn overrun_lease_is_taken_back_and_late_results_refused() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_lease");
    let job: i64 = db
        .query_one(
            &format!(
                "INSERT INTO onboarding.jobs (kind, profile_table, user_id, state, attempts, claimed_by, claimed_at)
                 VALUES ('create_customer', '{table}'::regclass, 'stuck-user', 'running', 1, pg_backend_pid(),
                         now() - interval '1 hour')
                 RETURNING id"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    // This session plays the stuck worker: alive (its pid is in pg_stat_activity) but past the lease.
    // The operator session plays the worker that takes it back and claims it, in one transaction so
    // that the real worker cannot pick it up in between.
    let mut operator = env().cluster.connect();
    let mut takeover = operator.transaction().unwrap();
    let taken: i32 =
        takeover.query_one("SELECT onboarding._requeue_abandoned(6, interval '5 minutes')", &[]).unwrap().get(0);
    let state: String = takeover.query_one("SELECT state FROM onboarding.jobs WHERE id = $1", &[&job]).unwrap().get(0);
    takeover
        .execute("UPDATE onboarding.jobs SET state = 'running', claimed_by = pg_backend_pid() WHERE id = $1", &[&job])
        .unwrap();
    takeover.commit().unwrap();
    ensure(taken >= 1 && state == "pending", || format!("a job past its lease was not taken back ({taken}, {state})"))?;

    // The stuck worker's late result is refused; the new owner's is taken.
    let finish = "SELECT onboarding._finish_job($1, 'skipped', 'skipped', '{}')";
    let (code, _) = sqlstate(db.query(finish, &[&job]))?;
    ensure(code == "55000", || format!("a late result was accepted: {code}"))?;
    operator.query(finish, &[&job]).unwrap();
    ensure(only_job(&mut db, "stuck-user")?.state == "skipped", || "the new owner's result was lost".into())
}

fn sqlstate(result: Result<impl Sized, postgres::Error>) -> Result<(String, String), Failed> {
    match result {
        Ok(_) => Err("expected an error".into()),
        Err(e) => {
            let db = e.as_db_error().ok_or_else(|| format!("not a database error: {e}"))?;
            Ok((db.code().code().to_string(), format!("{} {}", db.message(), db.hint().unwrap_or(""))))
        }
    }
}

fn attach_validates() -> Result<(), Failed> {
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

fn workers_in(db: &mut Client, database: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'onboarding worker' AND datname = $1",
        &[&database],
    )
    .unwrap()
    .get(0)
}

/// The launcher serves every database with the extension: CREATE EXTENSION starts a worker there
/// (no warning, no setting to change), both databases provision at once, and DROP EXTENSION lets
/// the worker go.
fn every_database_with_the_extension_gets_workers() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute("DROP DATABASE IF EXISTS other_app").unwrap();
    db.batch_execute("CREATE DATABASE other_app").unwrap();
    let out = env().cluster.psql("other_app", "CREATE EXTENSION onboarding");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.success() && !stderr.contains("WARNING"), || format!("CREATE EXTENSION: {stderr}"))?;
    wait_for("a worker for other_app", DEADLINE, || (workers_in(&mut db, "other_app") == 1).then_some(()))?;

    let mut other = env().cluster.connect_to("other_app");
    let table = profiles_table(&mut db, "profiles_db_one");
    let other_table = profiles_table(&mut other, "profiles_db_two");
    // Twenty profiles in each database, committed at the same moment.
    let sql =
        |t: &str| format!("INSERT INTO {t} (email) SELECT 'twin' || g || '@example.com' FROM generate_series(1, 20) g");
    let mut here = db.transaction().unwrap();
    let mut there = other.transaction().unwrap();
    here.execute(&sql(&table), &[]).unwrap();
    there.execute(&sql(&other_table), &[]).unwrap();
    here.commit().unwrap();
    there.commit().unwrap();
    for (client, t) in [(&mut db, &table), (&mut other, &other_table)] {
        wait_for(&format!("20 customers in {t}"), DEADLINE, || {
            let done: i64 =
                client.query_one(&format!("SELECT count(stripe_customer_id) FROM {t}"), &[]).unwrap().get(0);
            (done == 20).then_some(())
        })?;
    }
    let distinct: i64 =
        other.query_one(&format!("SELECT count(DISTINCT stripe_customer_id) FROM {other_table}"), &[]).unwrap().get(0);
    ensure(distinct == 20, || format!("{distinct} distinct customers in other_app"))?;

    // DROP EXTENSION: its worker leaves.
    other.batch_execute("DROP EXTENSION onboarding CASCADE").unwrap();
    wait_for("other_app's worker to exit", DEADLINE, || (workers_in(&mut db, "other_app") == 0).then_some(()))?;
    // And reinstalling where a worker runs raises no warning and keeps it serving.
    let out = env().cluster.psql("postgres", "DROP EXTENSION onboarding CASCADE; CREATE EXTENSION onboarding");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.success() && !stderr.contains("WARNING"), || format!("reinstall: {stderr}"))?;
    drop(other);
    db.batch_execute("DROP DATABASE other_app").unwrap();
    Ok(())
}

fn enqueue_and_status() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_api");
    // A profile that existed before attach has no job; enqueue_customer gives it one, once.
    db.batch_execute("SELECT onboarding.detach('public.profiles_api')").unwrap();
    let user = insert_profile(&mut db, &table, Some("api@example.com"));
    db.batch_execute("SELECT onboarding.attach('public.profiles_api')").unwrap();
    let sql = "SELECT onboarding.enqueue_customer($1, 'public.profiles_api')";
    let mut tx = db.transaction().unwrap();
    let first: i64 = tx.query_one(sql, &[&user]).unwrap().get(0);
    let again: i64 = tx.query_one(sql, &[&user]).unwrap().get(0);
    tx.commit().unwrap();
    ensure(first == again, || format!("enqueueing twice made jobs {first} and {again}"))?;
    let customer = wait_for_customer(&mut db, &table, &user)?;

    let row = db.query_one("SELECT state, stripe_id, attempts FROM onboarding.job_status($1)", &[&first]).unwrap();
    let (state, stripe_id, attempts): (String, Option<String>, i32) = (row.get(0), row.get(1), row.get(2));
    ensure(state == "succeeded" && stripe_id.as_deref() == Some(customer.as_str()) && attempts == 1, || {
        format!("job_status: {state} {stripe_id:?} {attempts}")
    })?;
    let row = db
        .query_one(
            "SELECT stripe_customer_id, kind, job_id, state FROM onboarding.profile_status($1, $2::text::regclass)",
            &[&user, &table],
        )
        .unwrap();
    let (linked, kind, job, state): (Option<String>, String, i64, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    ensure(
        linked.as_deref() == Some(customer.as_str())
            && kind == "create_customer"
            && job == first
            && state == "succeeded",
        || format!("profile_status: {linked:?} {kind} {job} {state}"),
    )?;

    // Bad input: each with its own SQLSTATE. (A second attached table makes a call without
    // profile_table ambiguous.)
    profiles_table(&mut db, "profiles_api_other");
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("SELECT onboarding.enqueue_customer($1, 'public.profiles_api')", None, "22004"),
        ("SELECT onboarding.enqueue_customer($1, 'public.profiles_api')", Some(" "), "22023"),
        ("SELECT onboarding.enqueue_customer($1, 'public.profiles_api')", Some("not-a-uuid"), "22P02"),
        (
            "SELECT onboarding.enqueue_customer($1, 'public.profiles_api')",
            Some("7b0a5a1e-7c53-4a5e-9a43-2b2f1c3f9d11"),
            "P0002",
        ),
        ("SELECT onboarding.enqueue_customer($1)", Some("7b0a5a1e-7c53-4a5e-9a43-2b2f1c3f9d11"), "42P08"),
    ];
    for (sql, id, code) in cases {
        let (got, message) = sqlstate(db.query(sql, &[&id]))?;
        ensure(got == code, || format!("{sql} with {id:?}: expected {code}, got {got} {message}"))?;
    }
    let (got, _) = sqlstate(db.query("SELECT * FROM onboarding.job_status(-1)", &[]))?;
    ensure(got == "P0002", || format!("job_status of a missing job: {got}"))
}

fn get_or_create_joins_the_trigger_job() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_get_or_create");
    let sql = "SELECT onboarding.get_or_create_customer($1, 10000, 'public.profiles_get_or_create')";
    // The trigger's job is mid-call (stalled) when an application asks for the customer.
    env().stripe.inject(Fault::stall(Duration::from_secs(2)).on("POST", "/v1/customers"));
    let user = insert_profile(&mut db, &table, Some("racing@example.com"));
    wait_for("the trigger's job to call Stripe", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;
    let asked_at = Instant::now();
    let returned: String = db.query_one(sql, &[&user]).unwrap().get(0);
    ensure(asked_at.elapsed() < Duration::from_secs(5), || format!("took {:?}", asked_at.elapsed()))?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == returned.as_str(), || format!("{returned} vs {customers:?}"))?;
    ensure(customer_id(&mut db, &table, &user).as_deref() == Some(returned.as_str()), || "not written back".into())?;
    ensure(jobs_for(&mut db, &user).len() == 1, || "get_or_create_customer made a second job".into())?;

    // Provisioned already: answered from the profile, without Stripe.
    let before = env().stripe.requests().len();
    let again: String = db.query_one(sql, &[&user]).unwrap().get(0);
    ensure(again == returned && env().stripe.requests().len() == before, || "a second call reached Stripe".into())?;

    // A profile that predates attach (no job yet): created synchronously, in the caller's wait.
    db.batch_execute(&format!("SELECT onboarding.detach('{table}')")).unwrap();
    let old = insert_profile(&mut db, &table, Some("old@example.com"));
    db.batch_execute(&format!("SELECT onboarding.attach('{table}')")).unwrap();
    let created: String = db.query_one(sql, &[&old]).unwrap().get(0);
    let customers = stripe_customers_for(&old);
    ensure(customers.len() == 1 && customers[0]["id"] == created.as_str(), || format!("{customers:?}"))
}

fn get_or_create_refusals() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_get_or_create_errors");
    let sql = "SELECT onboarding.get_or_create_customer($1, $2, 'public.profiles_get_or_create_errors')";

    // In the transaction that inserted the profile: refused, with a hint, and nothing sent.
    let mut tx = db.transaction().unwrap();
    let fresh = insert_profile(&mut tx, &table, Some("fresh@example.com"));
    let (code, message) = sqlstate(tx.query(sql, &[&fresh, &1000i32]))?;
    tx.rollback().unwrap();
    ensure(code == "55000" && message.contains("COMMIT"), || format!("same-transaction call: {code} {message}"))?;
    ensure(stripe_requests_for(&fresh).is_empty(), || "Stripe was called for an uncommitted profile".into())?;

    // Too short a wait: a clear timeout naming the job, which then completes in the background.
    env().stripe.inject(Fault::stall(Duration::from_secs(2)).on("POST", "/v1/customers"));
    db.batch_execute(&format!("SELECT onboarding.detach('{table}')")).unwrap();
    let slow = insert_profile(&mut db, &table, Some("slow@example.com"));
    db.batch_execute(&format!("SELECT onboarding.attach('{table}')")).unwrap();
    let (code, message) = sqlstate(db.query(sql, &[&slow, &300i32]))?;
    ensure(code == "57014" && message.contains("job "), || format!("timeout: {code} {message}"))?;
    wait_for_customer(&mut db, &table, &slow)?;

    // A job that fails for good: its reason comes back as the error.
    env().stripe.inject(Fault::status(400).on("POST", "/v1/customers").message("Invalid email address"));
    db.batch_execute(&format!("SELECT onboarding.detach('{table}')")).unwrap();
    let rejected = insert_profile(&mut db, &table, Some("rejected@example.com"));
    db.batch_execute(&format!("SELECT onboarding.attach('{table}')")).unwrap();
    let (code, message) = sqlstate(db.query(sql, &[&rejected, &10000i32]))?;
    ensure(code == "55000" && message.contains("Invalid email address"), || format!("dead job: {code} {message}"))?;

    // Bad input.
    for (id, wait, code) in
        [(None, 10000, "22004"), (Some("nope"), 10000, "22P02"), (Some(rejected.as_str()), -1, "22023")]
    {
        let (got, message) = sqlstate(db.query(sql, &[&id, &wait]))?;
        ensure(got == code, || format!("{id:?}/{wait}: expected {code}, got {got} {message}"))?;
    }
    Ok(())
}

fn stripe_email_of(user: &str) -> Option<String> {
    stripe_customers_for(user).first().and_then(|c| c["email"].as_str().map(str::to_string))
}

fn email_changes_follow() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_email_sync");
    let set_email = |db: &mut Client, user: &str, email: &str| {
        db.execute(&format!("UPDATE {table} SET email = $2 WHERE id::text = $1"), &[&user, &email]).unwrap();
    };
    let user = insert_profile(&mut db, &table, Some("before@example.com"));
    wait_for_customer(&mut db, &table, &user)?;
    set_email(&mut db, &user, "after@example.com");
    wait_for("the customer's email to follow", DEADLINE, || {
        (stripe_email_of(&user).as_deref() == Some("after@example.com")).then_some(())
    })?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).last() == Some(&"email_updated"), || format!("steps {:?}", steps(&events)))?;

    // Off for one session: no update job.
    db.batch_execute("SET onboarding.sync_email = off").unwrap();
    set_email(&mut db, &user, "quiet@example.com");
    db.batch_execute("RESET onboarding.sync_email").unwrap();
    let updates = jobs_for(&mut db, &user).iter().filter(|j| j.kind == "update_customer_email").count();
    ensure(updates == 1, || format!("{updates} email update jobs with sync_email off for the second change"))?;

    // Changed while the customer is being created with the old one: the customer ends up current.
    env().stripe.inject(Fault::stall(Duration::from_secs(1)).on("POST", "/v1/customers"));
    let racing = insert_profile(&mut db, &table, Some("first@example.com"));
    wait_for("the creation to reach Stripe", DEADLINE, || (!stripe_requests_for(&racing).is_empty()).then_some(()))?;
    set_email(&mut db, &racing, "second@example.com");
    wait_for("the new customer's email to follow", DEADLINE, || {
        (stripe_email_of(&racing).as_deref() == Some("second@example.com")).then_some(())
    })?;
    ensure(stripe_customers_for(&racing).len() == 1, || "more than one customer".into())
}

fn stripe_accounts_for(user: &str) -> Vec<Value> {
    env().stripe.accounts().into_iter().filter(|a| a["metadata"]["user_id"] == user).collect()
}

fn account_id(db: &mut Client, table: &str, user: &str) -> Option<String> {
    db.query_one(&format!("SELECT stripe_connect_account_id FROM {table} WHERE id::text = $1"), &[&user])
        .unwrap()
        .get(0)
}

fn connect_accounts_follow_the_policy() -> Result<(), Failed> {
    let mut db = db();
    let table = "public.profiles_connect";
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, role text,
             stripe_customer_id text, stripe_connect_account_id text);
         SELECT onboarding.attach('{table}', connect_policy => 'always');"
    ))
    .unwrap();
    let insert = |db: &mut Client, role: &str| -> String {
        let email = format!("{role}@example.com");
        db.query_one(&format!("INSERT INTO {table} (email, role) VALUES ($1, $2) RETURNING id::text"), &[&email, &role])
            .unwrap()
            .get(0)
    };

    // always: the customer, then an Express account with both capabilities, linked.
    let user = insert(&mut db, "seller");
    let account = wait_for("the Connect account", DEADLINE, || account_id(&mut db, table, &user))?;
    let accounts = stripe_accounts_for(&user);
    ensure(accounts.len() == 1 && accounts[0]["id"] == account.as_str(), || format!("{accounts:?}"))?;
    let a = &accounts[0];
    let capabilities = &a["capabilities"];
    ensure(
        a["type"] == "express"
            && a["email"] == "seller@example.com"
            && capabilities["card_payments"].is_string()
            && capabilities["transfers"].is_string(),
        || format!("account {a}"),
    )?;
    let paths: Vec<String> = env()
        .stripe
        .requests()
        .iter()
        .filter(|r| r.params["metadata"]["user_id"] == user.as_str())
        .map(|r| r.path.clone())
        .collect();
    ensure(paths == ["/v1/customers", "/v1/accounts"], || format!("requests in order: {paths:?}"))?;
    ensure(customer_id(&mut db, table, &user).is_some(), || "account without customer".into())?;

    // when: only once the condition holds, and updating into it enqueues the account.
    let when = format!("SELECT onboarding.set_connect_policy('{table}', 'when', $$role = 'provider'$$)");
    db.batch_execute(&when).unwrap();
    let buyer = insert(&mut db, "buyer");
    wait_for_customer(&mut db, table, &buyer)?;
    let provider = insert(&mut db, "provider");
    wait_for("the provider's account", DEADLINE, || account_id(&mut db, table, &provider))?;
    ensure(account_id(&mut db, table, &buyer).is_none(), || "a buyer got an account".into())?;
    ensure(stripe_accounts_for(&buyer).is_empty(), || "Stripe got an account for a buyer".into())?;
    db.execute(&format!("UPDATE {table} SET role = 'provider' WHERE id::text = $1"), &[&buyer]).unwrap();
    wait_for("the promoted buyer's account", DEADLINE, || account_id(&mut db, table, &buyer))?;

    // never: no account unless asked for explicitly.
    db.batch_execute(&format!("SELECT onboarding.set_connect_policy('{table}', 'never')")).unwrap();
    let other = insert(&mut db, "provider");
    wait_for_customer(&mut db, table, &other)?;
    let kinds: Vec<String> = jobs_for(&mut db, &other).into_iter().map(|j| j.kind).collect();
    ensure(kinds == ["create_customer"], || format!("policy never made jobs {kinds:?}"))?;
    db.query("SELECT onboarding.enqueue_connect_account($1, 'public.profiles_connect')", &[&other]).unwrap();
    wait_for("the explicitly requested account", DEADLINE, || account_id(&mut db, table, &other))?;

    // Deleting a profile deletes its account too.
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    wait_for("the account's deletion", DEADLINE, || stripe_accounts_for(&user).is_empty().then_some(()))?;
    ensure(stripe_customers_for(&user).is_empty(), || "the customer survived".into())
}

fn connect_policy_is_validated() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_connect_policy");
    let policy = |args: &str| format!("SELECT onboarding.set_connect_policy('{table}', {args})");
    let cases = [
        (policy("'sometimes'"), "22023"),
        (policy("'when'"), "22023"),
        (policy("'always', 'true'"), "22023"),
        (policy("'when', 'no_such_column = 1'"), "22023"),
        (policy(&format!("'when', $$true); DROP TABLE {table}; --$$")), "22023"),
        ("SELECT onboarding.set_connect_policy('public.attach_target', 'always')".to_string(), "55000"),
    ];
    for (sql, code) in cases {
        let (got, message) = sqlstate(db.simple_query(&sql))?;
        ensure(got == code, || format!("{sql}: expected {code}, got {got} {message}"))?;
    }
    let exists: bool = db.query_one(&format!("SELECT to_regclass('{table}') IS NOT NULL"), &[]).unwrap().get(0);
    ensure(exists, || "the injected condition dropped the table".into())
}

fn account_links_are_made_fresh_and_only_when_allowed() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_links");
    let link = "SELECT onboarding.create_account_link($1, 'https://app.example.com/refresh', \
                'https://app.example.com/return', 10000, 'public.profiles_links')";
    let user = insert_profile(&mut db, &table, Some("payee@example.com"));
    wait_for_customer(&mut db, &table, &user)?;

    // Policy never and no account: refused, nothing created.
    let (code, message) = sqlstate(db.query(link, &[&user]))?;
    ensure(code == "55000" && message.contains("Connect policy"), || format!("policy never: {code} {message}"))?;
    ensure(stripe_accounts_for(&user).is_empty(), || "an account was created against the policy".into())?;

    // Allowed: the account is created first, then a link to it; each call makes a new link.
    db.batch_execute(&format!("SELECT onboarding.set_connect_policy('{table}', 'always')")).unwrap();
    let first: String = db.query_one(link, &[&user]).unwrap().get(0);
    let second: String = db.query_one(link, &[&user]).unwrap().get(0);
    let account = account_id(&mut db, &table, &user).ok_or("no account was linked")?;
    ensure(first.starts_with("https://") && first != second, || format!("links {first} and {second}"))?;
    let links: Vec<RecordedRequest> =
        env().stripe.requests().into_iter().filter(|r| r.path == "/v1/account_links").collect();
    ensure(links.len() == 2, || format!("{} account link requests", links.len()))?;
    let p = &links[0].params;
    ensure(
        p["account"] == account.as_str()
            && p["type"] == "account_onboarding"
            && p["refresh_url"] == "https://app.example.com/refresh"
            && p["return_url"] == "https://app.example.com/return",
        || format!("account link params {p}"),
    )?;

    // Bad URLs.
    let bad = "SELECT onboarding.create_account_link($1, 'javascript:alert(1)', 'https://x.example', 1000, 'public.profiles_links')";
    let (code, _) = sqlstate(db.query(bad, &[&user]))?;
    ensure(code == "22023", || format!("bad URL: {code}"))
}

fn audits_find_the_planted_gaps() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_audit");
    // A normal run, readable as a sequence.
    let user = insert_profile(&mut db, &table, Some("audited@example.com"));
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let lines: Vec<String> =
        db.query("SELECT line FROM onboarding.sequence($1)", &[&user]).unwrap().iter().map(|r| r.get(0)).collect();
    let text = lines.join("\n");
    for needle in ["Profile committed", "Calling Stripe: POST /v1/customers", &format!("Stripe ID {customer} written")]
    {
        ensure(text.contains(needle), || format!("sequence lacks {needle:?}:\n{text}"))?;
    }

    // Ordering: clean after normal runs; a planted early request is caught.
    let ordering = |db: &mut Client| -> Vec<(bool, Option<i64>, String)> {
        db.query("SELECT violation, job_id, detail FROM onboarding.audit_ordering()", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    let clean = ordering(&mut db);
    ensure(clean.len() == 1 && !clean[0].0 && !clean[0].2.starts_with("0 jobs"), || format!("{clean:?}"))?;
    let job: i64 = db.query_one("SELECT id FROM onboarding.jobs WHERE user_id = $1", &[&user]).unwrap().get(0);
    db.execute(
        "INSERT INTO onboarding.events (job_id, user_id, step, at) VALUES ($1, $2, 'stripe_request', now() - interval '1 hour')",
        &[&job, &user],
    )
    .unwrap();
    let caught = ordering(&mut db);
    db.execute("DELETE FROM onboarding.events WHERE job_id = $1 AND at < now() - interval '30 minutes'", &[&job])
        .unwrap();
    ensure(caught.iter().filter(|(v, _, _)| *v).map(|(_, j, _)| *j).collect::<Vec<_>>() == [Some(job)], || {
        format!("the planted violation: {caught:?}")
    })?;

    // Gaps: a profile with no job, a dead job, a job stuck past its lease.
    db.batch_execute(&format!("SELECT onboarding.detach('{table}')")).unwrap();
    let jobless = insert_profile(&mut db, &table, Some("jobless@example.com"));
    db.batch_execute(&format!("SELECT onboarding.attach('{table}')")).unwrap();
    env().stripe.inject(Fault::status(400).on("POST", "/v1/customers").message("refused for the audit"));
    let rejected = insert_profile(&mut db, &table, Some("rejected@example.com"));
    let dead = wait_for_state(&mut db, &rejected, "dead")?;
    let stuck: i64 = db
        .query_one(
            &format!(
                "INSERT INTO onboarding.jobs (kind, profile_table, user_id, state, attempts, claimed_by, claimed_at)
                 VALUES ('create_customer', '{table}'::regclass, 'stuck-audit', 'running', 1, pg_backend_pid(),
                         now() - interval '1 hour') RETURNING id"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let missing: Vec<(String, String)> = db
        .query(
            "SELECT user_id, state FROM onboarding.audit_missing('0 seconds') WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = vec![(jobless.clone(), "no job".to_string()), (rejected.clone(), "dead".to_string())];
    let mut sorted = missing.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    ensure(sorted == want, || format!("audit_missing found {missing:?}, expected {expected:?} ({dead:?})"))?;
    let problems: Vec<(i64, String)> = db
        .query("SELECT job_id, problem FROM onboarding.audit_jobs() WHERE user_id IN ($1, 'stuck-audit')", &[&rejected])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ensure(problems.len() == 2 && problems.iter().any(|(id, p)| *id == stuck && p == "stuck past its lease"), || {
        format!("audit_jobs: {problems:?}")
    })?;
    db.execute("UPDATE onboarding.jobs SET state = 'dead', claimed_by = NULL WHERE id = $1", &[&stuck]).unwrap();

    // Metrics: latency from commit to write-back is measured.
    let metrics: Vec<String> = db
        .query("SELECT metric FROM onboarding.stats WHERE value IS NOT NULL", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for metric in
        ["jobs dead", "commit to written back p50", "commit to written back p99", "stripe call p50", "failure rate"]
    {
        ensure(metrics.iter().any(|m| m == metric), || format!("stats lacks {metric}: {metrics:?}"))?;
    }
    Ok(())
}

fn backfill_provisions_existing_profiles_once_with_progress() -> Result<(), Failed> {
    const PROFILES: i64 = 5000;
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_backfill");
    db.batch_execute(&format!(
        "SELECT onboarding.detach('{table}');
         INSERT INTO {table} (email) SELECT 'old' || g || '@example.com' FROM generate_series(1, {PROFILES}) g;
         SELECT onboarding.attach('{table}');"
    ))
    .unwrap();
    let call = format!("CALL onboarding.backfill('{table}', 1000)");
    let out = env().cluster.psql("postgres", &call);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let progress_lines = stderr.lines().filter(|l| l.contains("NOTICE") && l.contains(" of 5000 profiles")).count();
    ensure(out.status.success() && progress_lines >= 5, || format!("backfill: {stderr}"))?;
    wait_for("5,000 customers", Duration::from_secs(120), || {
        let done: i64 = db.query_one(&format!("SELECT count(stripe_customer_id) FROM {table}"), &[]).unwrap().get(0);
        (done == PROFILES).then_some(())
    })?;
    let distinct: i64 =
        db.query_one(&format!("SELECT count(DISTINCT stripe_customer_id) FROM {table}"), &[]).unwrap().get(0);
    let stripe_side: usize = {
        let users: std::collections::HashSet<String> =
            db.query(&format!("SELECT id::text FROM {table}"), &[]).unwrap().iter().map(|r| r.get(0)).collect();
        env()
            .stripe
            .customers()
            .iter()
            .filter(|c| users.contains(c["metadata"]["user_id"].as_str().unwrap_or("")))
            .count()
    };
    ensure(distinct == PROFILES && stripe_side == PROFILES as usize, || {
        format!("{distinct} linked, {stripe_side} in Stripe")
    })?;
    let row = db
        .query_one(
            "SELECT total, enqueued, provisioned, percent::float8 FROM onboarding.backfill_progress
              WHERE profile_table = $1::text::regclass ORDER BY id DESC LIMIT 1",
            &[&table],
        )
        .unwrap();
    let (total, enqueued, provisioned, percent): (i64, i64, i64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    ensure(total == PROFILES && enqueued == PROFILES && provisioned == PROFILES && percent == 100.0, || {
        format!("progress {total} {enqueued} {provisioned} {percent}")
    })?;
    // Idempotent: a second run finds nothing to do.
    let again = env().cluster.psql("postgres", &call);
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure(stderr.contains("0 jobs enqueued"), || format!("second backfill: {stderr}"))
}

fn retention_prunes_finished_jobs_but_keeps_dead_ones() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_retention");
    let user = insert_profile(&mut db, &table, Some("old-news@example.com"));
    wait_for_customer(&mut db, &table, &user)?;
    env().stripe.inject(Fault::status(400).on("POST", "/v1/customers").message("kept for a human"));
    let parked = insert_profile(&mut db, &table, Some("parked@example.com"));
    wait_for_state(&mut db, &parked, "dead")?;
    db.execute(
        "UPDATE onboarding.jobs SET finished_at = now() - interval '40 days' WHERE user_id IN ($1, $2)",
        &[&user, &parked],
    )
    .unwrap();
    let pruned: i64 = db.query_one("SELECT onboarding.prune('30 days')", &[]).unwrap().get(0);
    ensure(pruned >= 1, || "nothing pruned".into())?;
    ensure(jobs_for(&mut db, &user).is_empty() && events_for(&mut db, &user).is_empty(), || {
        "the old job stayed".into()
    })?;
    ensure(only_job(&mut db, &parked)?.state == "dead", || "a dead job was pruned".into())?;
    ensure(customer_id(&mut db, &table, &user).is_some(), || "pruning touched the profile".into())
}

/// Seeds each gap between Stripe and the profiles on purpose; the audits find exactly those,
/// reconcile (dry run, then for real) repairs them, and the audits come back clean.
fn reconcile_repairs_what_the_audits_find() -> Result<(), Failed> {
    use onboarding_core::stripe::{ApiKey, ClientConfig, NewCustomer, StripeClient};
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_reconcile");
    let stripe = StripeClient::new(&ClientConfig {
        api_base: env().stripe.base_url(),
        api_key: ApiKey::new(API_KEY).unwrap(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
    })
    .unwrap();
    let rt = onboarding_core::runtime::signal_safe_runtime().unwrap();

    let drifted = insert_profile(&mut db, &table, Some("drift@example.com"));
    let gone = insert_profile(&mut db, &table, Some("gone@example.com"));
    let relink = insert_profile(&mut db, &table, Some("relink@example.com"));
    for u in [&drifted, &gone, &relink] {
        wait_for_customer(&mut db, &table, u)?;
    }
    // The customer of `gone` is deleted in Stripe behind our back.
    let gone_customer = customer_id(&mut db, &table, &gone).unwrap();
    rt.block_on(stripe.delete_customer(&gone_customer)).unwrap();
    // `relink` points at a customer that never existed; its real one is now an orphan.
    let real = customer_id(&mut db, &table, &relink).unwrap();
    db.execute(&format!("UPDATE {table} SET stripe_customer_id = 'cus_neverexisted' WHERE id::text = $1"), &[&relink])
        .unwrap();
    // A customer for a user id no profile has.
    let ghost = NewCustomer { user_id: "ghost-user".into(), email: "ghost@example.com".into() };
    let (ghost_customer, _) = rt.block_on(stripe.create_customer(&ghost, "ghost-key")).unwrap();
    // An email changed while syncing was off.
    db.batch_execute("SET onboarding.sync_email = off").unwrap();
    db.execute(&format!("UPDATE {table} SET email = 'drifted@example.com' WHERE id::text = $1"), &[&drifted]).unwrap();
    db.batch_execute("RESET onboarding.sync_email").unwrap();
    // A profile that never got a job.
    db.batch_execute(&format!("SELECT onboarding.detach('{table}')")).unwrap();
    let jobless = insert_profile(&mut db, &table, Some("jobless@example.com"));
    db.batch_execute(&format!("SELECT onboarding.attach('{table}')")).unwrap();

    let orphans = |db: &mut Client, refresh: bool| -> Vec<(String, String)> {
        db.query("SELECT user_id, stripe_id FROM onboarding.audit_orphans($1)", &[&refresh])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let mismatches = |db: &mut Client| -> Vec<(String, String)> {
        db.query(
            "SELECT user_id, problem FROM onboarding.audit_mismatches(false) WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let mut found = orphans(&mut db, true);
    found.sort();
    let mut want = vec![("ghost-user".to_string(), ghost_customer.id.clone()), (relink.clone(), real.clone())];
    want.sort();
    ensure(found == want, || format!("audit_orphans found {found:?}, expected {want:?}"))?;
    let found = mismatches(&mut db);
    let problems: std::collections::HashMap<String, String> = found.iter().cloned().collect();
    ensure(
        found.len() == 3
            && problems[&gone] == "missing or deleted in Stripe"
            && problems[&relink] == "missing or deleted in Stripe"
            && problems[&drifted].starts_with("email differs"),
        || format!("audit_mismatches found {found:?}"),
    )?;

    let plan = |db: &mut Client, dry_run: bool| -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = db
            .query("SELECT action, user_id FROM onboarding.reconcile($1, $2::text::regclass)", &[&dry_run, &table])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        rows.sort();
        rows
    };
    let mut expected = vec![
        ("delete orphan".to_string(), "ghost-user".to_string()),
        ("enqueue customer".to_string(), jobless.clone()),
        ("recreate".to_string(), gone.clone()),
        ("relink".to_string(), relink.clone()),
        ("sync email".to_string(), drifted.clone()),
    ];
    expected.sort();
    let dry = plan(&mut db, true);
    ensure(dry == expected, || format!("dry run planned {dry:?}, expected {expected:?}"))?;
    ensure(customer_id(&mut db, &table, &gone).as_deref() == Some(gone_customer.as_str()), || {
        "the dry run changed data".into()
    })?;
    let done = plan(&mut db, false);
    ensure(done == expected, || format!("reconcile did {done:?}"))?;

    wait_for("the repairs", Duration::from_secs(30), || {
        let open: i64 = db
            .query_one("SELECT count(*) FROM onboarding.jobs WHERE state IN ('pending', 'running')", &[])
            .unwrap()
            .get(0);
        (open == 0 && customer_id(&mut db, &table, &gone).is_some() && customer_id(&mut db, &table, &jobless).is_some())
            .then_some(())
    })?;
    ensure(customer_id(&mut db, &table, &relink).as_deref() == Some(real.as_str()), || "relink did not relink".into())?;
    ensure(customer_id(&mut db, &table, &gone).as_deref() != Some(gone_customer.as_str()), || {
        "gone kept its dead id".into()
    })?;
    let left = orphans(&mut db, true);
    ensure(left.is_empty(), || format!("orphans left: {left:?}"))?;
    let left = mismatches(&mut db);
    ensure(left.is_empty(), || format!("mismatches left: {left:?}"))?;
    let missing: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.audit_missing('0 seconds') WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .get(0);
    ensure(missing == 0, || format!("{missing} profiles still missing"))?;
    let recorded: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.events WHERE step = 'reconciled' AND user_id = ANY($1)",
            &[&vec![gone.clone(), relink.clone(), jobless.clone(), "ghost-user".to_string()]],
        )
        .unwrap()
        .get(0);
    ensure(recorded == 4, || format!("{recorded} reconcile events"))
}

/// CPU time (user + system, in clock ticks) a process has used, from /proc.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// With nothing due, the worker waits on its latch (poll interval 60 s) and burns no CPU.
fn idle_worker_sleeps() -> Result<(), Failed> {
    let mut db = db();
    let open: i64 =
        db.query_one("SELECT count(*) FROM onboarding.jobs WHERE state IN ('pending', 'running')", &[]).unwrap().get(0);
    ensure(open == 0, || format!("{open} jobs still open: the worker is not idle"))?;
    let pid = wait_for("the worker", DEADLINE, || worker_pid(&mut db))?;
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(1500)); // the measurement window
    let used = cpu_ticks(pid) - before;
    ensure(used <= 10, || format!("the idle worker used {used} ticks of CPU in 1.5 s"))
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

fn api_key_never_leaks() -> Result<(), Failed> {
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

/// Four workers, four sessions inserting at once, a DBA session retrying dead jobs, and Stripe
/// failing now and then: every profile still gets exactly one customer, and no job is ever
/// worked on by two workers at once. Runs its own cluster (the main one has a single worker).
fn concurrent_workers() -> Result<(), Failed> {
    const SESSIONS: usize = 4;
    const TRANSACTIONS: usize = 5;
    const PER_TRANSACTION: usize = 20;
    let stripe =
        Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })?;
    stripe.set_latency(Duration::from_millis(20)); // keeps several calls in flight per worker
    stripe.inject(Fault::status(503).on("POST", "/v1/customers").times(25));
    stripe.inject(Fault::drop_after().on("POST", "/v1/customers").times(5));
    // The rate budget is shared by the four workers: at most 50 requests in any second.
    let extra =
        "onboarding.workers = 4\nonboarding.batch_size = 5\nonboarding.rate_limit = 50\nonboarding.rate_burst = 10";
    let cluster = Cluster::start("workers", &settings(&stripe, extra));
    let result = (|| {
        let mut db = cluster.connect();
        db.batch_execute("CREATE EXTENSION onboarding").unwrap();
        let table = profiles_table(&mut db, "profiles_concurrent");
        let finished = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let dba = scope.spawn(|| {
                let mut dba = cluster.connect();
                while !finished.load(std::sync::atomic::Ordering::Relaxed) {
                    dba.query("SELECT * FROM onboarding.retry_dead()", &[]).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            let sessions: Vec<_> = (0..SESSIONS)
                .map(|_| {
                    scope.spawn(|| {
                        let mut session = cluster.connect();
                        for _ in 0..TRANSACTIONS {
                            session
                                .execute(
                                    &format!("INSERT INTO {table} (email) SELECT 'c' || g || '@example.com' FROM generate_series(1, $1::int) g"),
                                    &[&(PER_TRANSACTION as i32)],
                                )
                                .unwrap();
                        }
                    })
                })
                .collect();
            sessions.into_iter().for_each(|s| s.join().unwrap());
            let expected = (SESSIONS * TRANSACTIONS * PER_TRANSACTION) as i64;
            let done = wait_for("every profile to get a customer", Duration::from_secs(90), || {
                let missing: i64 = db
                    .query_one(&format!("SELECT count(*) FROM {table} WHERE stripe_customer_id IS NULL"), &[])
                    .unwrap()
                    .get(0);
                (missing == 0).then_some(())
            });
            finished.store(true, std::sync::atomic::Ordering::Relaxed);
            dba.join().unwrap();
            done?;
            let profiles: Vec<(String, String)> = db
                .query(&format!("SELECT id::text, stripe_customer_id FROM {table}"), &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            ensure(profiles.len() as i64 == expected, || format!("{} profiles, expected {expected}", profiles.len()))?;
            let customers = stripe.customers();
            for (user, customer) in &profiles {
                let theirs: Vec<&Value> =
                    customers.iter().filter(|c| c["metadata"]["user_id"] == user.as_str()).collect();
                ensure(theirs.len() == 1 && theirs[0]["id"] == customer.as_str(), || {
                    format!("user {user} has Stripe customers {theirs:?}, profile says {customer}")
                })?;
            }
            // A job's steps never interleave: every `claimed` is followed by its outcome before the next one.
            let mut interleaved = Vec::new();
            let mut pids = std::collections::HashSet::new();
            for row in db.query(
                "SELECT job_id, array_agg(step ORDER BY id), array_agg(detail->>'worker_pid' ORDER BY id)
                   FROM onboarding.events GROUP BY job_id",
                &[],
            )? {
                let (job, steps, workers): (i64, Vec<String>, Vec<Option<String>>) =
                    (row.get(0), row.get(1), row.get(2));
                pids.extend(workers.into_iter().flatten());
                let mut open = false;
                for step in &steps {
                    match step.as_str() {
                        "claimed" if open => interleaved.push(job),
                        "claimed" => open = true,
                        "failed" | "written_back" | "dead" | "skipped" | "orphaned" | "requeued" => open = false,
                        _ => {}
                    }
                }
            }
            ensure(interleaved.is_empty(), || format!("jobs claimed twice at once: {interleaved:?}"))?;
            ensure(pids.len() >= 2, || format!("only workers {pids:?} took part: no concurrency was tested"))?;
            let requests = stripe.requests();
            let failures = requests.iter().filter(|r| r.status != Some(200)).count();
            ensure(failures >= 25, || format!("only {failures} failed requests: the faults did not fire"))?;
            // No second ever saw more than the budget (plus its burst), across all workers.
            let times: Vec<std::time::SystemTime> = requests.iter().map(|r| r.arrived_at).collect();
            let busiest = (0..times.len())
                .map(|i| times[i..].iter().take_while(|t| **t < times[i] + Duration::from_secs(1)).count())
                .max()
                .unwrap_or(0);
            ensure(busiest <= 50, || format!("{busiest} requests within one second under a 50/s budget"))
        })
    })();
    cluster.stop();
    result
}
