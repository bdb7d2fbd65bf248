//! The application API: enqueue and status, get_or_create_customer, email sync, every database served.

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use stripe_emulator::Fault;

use crate::env;
use crate::helpers::{
    DEADLINE, customer_id, db, ensure, events_for, insert_profile, jobs_for, profiles_table, sqlstate, steps,
    stripe_customers_for, stripe_requests_for, wait_for, wait_for_customer,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        every_database_with_the_extension_gets_workers,
        a_worker_without_a_key_leaves_when_the_extension_is_dropped,
        enqueue_customer_and_status_functions_for_applications,
        get_or_create_customer_returns_at_once_or_joins_the_running_job,
        get_or_create_customer_refuses_uncommitted_profiles_and_times_out_clearly,
        a_profile_updated_in_the_calling_transaction_is_not_taken_for_inserted,
        email_changes_follow_to_the_stripe_customer,
    ]
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

/// A worker paused for want of a Stripe key still leaves its database when the extension is
/// dropped there (it slept through DROP EXTENSION, holding a worker slot and a connection, until
/// a key came).
fn a_worker_without_a_key_leaves_when_the_extension_is_dropped() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute("DROP DATABASE IF EXISTS keyless_app").unwrap();
    db.batch_execute("CREATE DATABASE keyless_app").unwrap();
    crate::helpers::set_and_reload(&mut db, "onboarding.stripe_api_key = ''");
    let result = (|| -> Result<(), Failed> {
        let out = env().cluster.psql("keyless_app", "CREATE EXTENSION onboarding");
        ensure(out.status.success(), || format!("CREATE EXTENSION: {}", String::from_utf8_lossy(&out.stderr)))?;
        wait_for("a worker for keyless_app", DEADLINE, || (workers_in(&mut db, "keyless_app") == 1).then_some(()))?;
        let mut other = env().cluster.connect_to("keyless_app");
        wait_for("the worker to find no key", DEADLINE, || {
            let without: f64 = other
                .query_one(
                    "SELECT value::float8 FROM onboarding.stats WHERE metric = 'workers without a usable Stripe key'",
                    &[],
                )
                .unwrap()
                .get(0);
            (without == 1.0).then_some(())
        })?;
        other.batch_execute("DROP EXTENSION onboarding CASCADE").unwrap();
        drop(other);
        wait_for("the keyless worker to exit", DEADLINE, || (workers_in(&mut db, "keyless_app") == 0).then_some(()))
    })();
    crate::helpers::set_and_reload(&mut db, &format!("onboarding.stripe_api_key = '{}'", crate::helpers::API_KEY));
    let _ = db.batch_execute("DROP DATABASE IF EXISTS keyless_app WITH (FORCE)");
    result
}

fn enqueue_customer_and_status_functions_for_applications() -> Result<(), Failed> {
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

fn get_or_create_customer_returns_at_once_or_joins_the_running_job() -> Result<(), Failed> {
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

fn get_or_create_customer_refuses_uncommitted_profiles_and_times_out_clearly() -> Result<(), Failed> {
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

/// An RPC that updates the caller's profile and then asks for its customer, in one transaction:
/// the profile is committed (an earlier transaction inserted it), so the worker can serve it. The
/// check once took any row this transaction wrote (its xmin, which an UPDATE sets too) for one
/// it inserted, and refused with 55000 "inserted by this transaction".
fn a_profile_updated_in_the_calling_transaction_is_not_taken_for_inserted() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_updated_then_asked");
    // Inserted before attach: committed, and no job yet.
    db.batch_execute(&format!("SELECT onboarding.detach('{table}')")).unwrap();
    let user = insert_profile(&mut db, &table, Some("updated@example.com"));
    db.batch_execute(&format!("SELECT onboarding.attach('{table}')")).unwrap();
    let mut tx = db.transaction().unwrap();
    tx.execute(&format!("UPDATE {table} SET email = email WHERE id::text = $1"), &[&user]).unwrap();
    let answer = tx.query_one(
        "SELECT onboarding.get_or_create_customer($1, 10000, 'public.profiles_updated_then_asked')",
        &[&user],
    );
    let outcome = match answer {
        Ok(row) => Ok(row.get::<_, String>(0)),
        Err(e) => Err(sqlstate(Err::<(), _>(e)).map(|(code, message)| format!("{code} {message}"))?),
    };
    let _ = tx.commit();
    let customer =
        outcome.map_err(|e| format!("get_or_create_customer after an UPDATE in the same transaction: {e}"))?;
    ensure(customer.starts_with("cus_"), || format!("answered {customer}"))?;
    let written = wait_for_customer(&mut db, &table, &user)?;
    ensure(written == customer, || format!("answered {customer}, wrote {written}"))
}

fn stripe_email_of(user: &str) -> Option<String> {
    stripe_customers_for(user).first().and_then(|c| c["email"].as_str().map(str::to_string))
}

fn email_changes_follow_to_the_stripe_customer() -> Result<(), Failed> {
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
