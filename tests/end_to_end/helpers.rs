//! Helpers shared by the behaviour modules: settings, profile tables, waiting, jobs, events, Stripe's side.

use std::time::Duration;

use libtest_mimic::Failed;
use postgres::Client;
use serde_json::Value;
use stripe_emulator::{Emulator, Fault, RecordedRequest};

use crate::env;

pub(crate) use crate::support::wait::{ensure, wait_for};

/// A distinctive key: the leak test looks for it everywhere it must not be.
pub(crate) const API_KEY: &str = "sk_test_LEAKCANARY7f3a9c2e51d8b406";

/// Far longer than any wait below, so a prompt result proves the commit woke the worker.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(60);

pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// postgresql.conf lines for a test cluster that talks to `stripe`.
pub(crate) fn settings(stripe: &Emulator, extra: &str) -> String {
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
         onboarding.endpoint_rate_limit = 0\n\
         onboarding.search_rate_limit = 0\n\
         {extra}\n",
        base = stripe.base_url(),
        poll = POLL_INTERVAL.as_millis(),
        timeout = REQUEST_TIMEOUT.as_millis(),
    )
}

/// `ALTER SYSTEM SET <setting>` and a reload (the workers apply it a moment later).
pub(crate) fn set_and_reload(db: &mut Client, setting: &str) {
    db.batch_execute(&format!("ALTER SYSTEM SET {setting}")).unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// Runs `test` with Stripe's events read every 200 ms, and at the default interval again after.
pub(crate) fn with_fast_event_polls(
    db: &mut Client,
    test: impl FnOnce(&mut Client) -> Result<(), Failed>,
) -> Result<(), Failed> {
    set_and_reload(db, "onboarding.events_poll_interval = '200ms'");
    let result = test(db);
    set_and_reload(db, "onboarding.events_poll_interval = DEFAULT");
    result
}

pub(crate) fn db() -> Client {
    env().cluster.connect()
}

/// A Supabase-shaped profile table, attached.
pub(crate) fn profiles_table(db: &mut Client, name: &str) -> String {
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

/// `schema.table` owned by `role`, a tenant who owns her schema and nothing else (both made if
/// missing): created by her with the usual profile columns, `extra_columns` and whatever `setup`
/// (run as her) adds. A superuser attaches it.
pub(crate) fn tenant_table(db: &mut Client, role: &str, table: &str, extra_columns: &str, setup: &str) {
    let schema = table.split('.').next().expect("schema.table");
    db.batch_execute(&format!(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} LOGIN;
             END IF;
         END $$;
         CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role};
         DROP TABLE IF EXISTS {table};
         SET ROLE {role};
         CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, stripe_customer_id text,
                               stripe_connect_account_id text{extra_columns});
         {setup}
         RESET ROLE;"
    ))
    .unwrap();
}

pub(crate) fn insert_profile(db: &mut impl postgres::GenericClient, table: &str, email: Option<&str>) -> String {
    db.query_one(&format!("INSERT INTO {table} (email) VALUES ($1) RETURNING id::text"), &[&email]).unwrap().get(0)
}

pub(crate) fn customer_id(db: &mut Client, table: &str, user: &str) -> Option<String> {
    db.query_one(&format!("SELECT stripe_customer_id FROM {table} WHERE id::text = $1"), &[&user]).unwrap().get(0)
}

/// The change recorded for `customer` once handled: its outcome.
pub(crate) fn handled(db: &mut Client, customer: &str) -> Option<String> {
    db.query_opt("SELECT outcome FROM onboarding.customer_changes WHERE customer_id = $1 AND handled", &[&customer])
        .unwrap()
        .map(|r| r.get(0))
}

pub(crate) fn wait_for_customer(db: &mut Client, table: &str, user: &str) -> Result<String, Failed> {
    wait_for(&format!("a customer for {user}"), DEADLINE, || customer_id(db, table, user))
}

#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) kind: String,
    pub(crate) state: String,
    pub(crate) attempts: i32,
    pub(crate) stripe_id: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) idempotency_key: String,
}

pub(crate) fn jobs_for(db: &mut Client, user: &str) -> Vec<Job> {
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

pub(crate) fn only_job(db: &mut Client, user: &str) -> Result<Job, Failed> {
    let mut jobs = jobs_for(db, user);
    if jobs.len() != 1 {
        return Err(format!("expected one job for {user}, found {jobs:?}").into());
    }
    Ok(jobs.remove(0))
}

pub(crate) fn wait_for_state(db: &mut Client, user: &str, state: &str) -> Result<Job, Failed> {
    wait_for(&format!("job of {user} to be {state}"), DEADLINE, || {
        jobs_for(db, user).into_iter().find(|j| j.state == state)
    })
}

/// (step, detail) in sequence order.
pub(crate) fn events_for(db: &mut Client, user: &str) -> Vec<(String, Value)> {
    db.query("SELECT step, detail FROM onboarding.events WHERE user_id = $1 ORDER BY at, id", &[&user])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub(crate) fn steps(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(s, _)| s.as_str()).collect()
}

/// Requests the emulator received that concern this user (by `metadata[user_id]`).
pub(crate) fn stripe_requests_for(user: &str) -> Vec<RecordedRequest> {
    env().stripe.requests().into_iter().filter(|r| r.params["metadata"]["user_id"] == user).collect()
}

pub(crate) fn stripe_customers_for(user: &str) -> Vec<Value> {
    env().stripe.customers().into_iter().filter(|c| c["metadata"]["user_id"] == user).collect()
}

pub(crate) fn worker_pid(db: &mut Client) -> Option<i32> {
    db.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'onboarding worker' AND datname = current_database()",
        &[],
    )
    .unwrap()
    .map(|r| r.get(0))
}

pub(crate) fn sqlstate(result: Result<impl Sized, postgres::Error>) -> Result<(String, String), Failed> {
    match result {
        Ok(_) => Err("expected an error".into()),
        Err(e) => {
            let db = e.as_db_error().ok_or_else(|| format!("not a database error: {e}"))?;
            Ok((db.code().code().to_string(), format!("{} {}", db.message(), db.hint().unwrap_or(""))))
        }
    }
}

/// Holds the worker inside a Stripe call (a stalled request for a decoy profile) while the test
/// changes another profile after its commit, so the worker sees the change deterministically.
/// Runs `change` while the worker has no room for another call: as many decoy calls as it keeps in
/// flight (onboarding.batch_size, default 25) are stalled at Stripe for 2 s, so a profile inserted
/// meanwhile becomes a pending job that waits.
pub(crate) fn while_worker_is_busy(
    db: &mut Client,
    table: &str,
    change: impl FnOnce(&mut Client),
) -> Result<(), Failed> {
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

/// Stripe executes the first attempt but the answer is lost (`drop_after`); `second` answers the retry.
pub(crate) fn created_then_lost(db: &mut Client, table: &str, second: Fault) -> String {
    env().stripe.inject(Fault::drop_after().on("POST", "/v1/customers"));
    env().stripe.inject(second.on("POST", "/v1/customers"));
    insert_profile(db, table, Some("lost@example.com"))
}

/// Plants a job that a worker claimed (`claimed_by`, `claimed_at` are SQL expressions), the way the
/// state machine allows: inserted pending (due never, so no worker takes it first), then claimed,
/// in one transaction.
pub(crate) fn plant_running_job(
    db: &mut Client,
    table: &str,
    user: &str,
    attempts: i32,
    claimed_by: &str,
    claimed_at: &str,
) -> i64 {
    let mut tx = db.transaction().unwrap();
    let id: i64 = tx
        .query_one(
            &format!(
                "INSERT INTO onboarding.jobs (kind, profile_table, user_id, run_at)
                 VALUES ('create_customer', '{table}'::regclass, $1, 'infinity') RETURNING id"
            ),
            &[&user],
        )
        .unwrap()
        .get(0);
    tx.execute(
        &format!(
            "UPDATE onboarding.jobs SET state = 'running', attempts = $2, claimed_by = {claimed_by},
                    claimed_at = {claimed_at}, run_at = now() WHERE id = $1"
        ),
        &[&id, &attempts],
    )
    .unwrap();
    tx.commit().unwrap();
    id
}
