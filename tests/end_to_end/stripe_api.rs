//! Today's Stripe API, as the worker meets it: a restricted key missing a permission, and a POST
//! whose 500 leaves the outcome unknown.

use libtest_mimic::{Failed, Trial};
use stripe_emulator::{Fault, Permission};

use crate::env;
use crate::helpers::{
    API_KEY, DEADLINE, db, ensure, events_for, insert_profile, jobs_for, only_job, profiles_table, set_and_reload,
    steps, stripe_customers_for, wait_for, wait_for_customer, wait_for_state,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        a_restricted_key_without_a_permission_is_named_once_and_no_job_dies_of_it,
        a_key_without_connect_permissions_holds_back_connect_only,
        a_500_whose_create_went_through_is_resolved_by_the_look_up,
        a_500_whose_create_did_not_go_through_is_retried_under_a_new_key,
        a_look_up_that_cannot_decide_creates_nothing_and_says_why,
    ]
}

const RESTRICTED_KEY: &str = "rk_test_onboardingE2Erestricted9a7c";

fn use_key(db: &mut postgres::Client, key: &str) {
    set_and_reload(db, &format!("onboarding.stripe_api_key = '{key}'"));
}

/// A restricted key that may read customers but not write them: the worker says so once, naming
/// `rak_customer_write`, and claims nothing; once the key may, the waiting profile gets its
/// customer at its first attempt.
fn a_restricted_key_without_a_permission_is_named_once_and_no_job_dies_of_it() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_restricted_key");
    let stripe = &env().stripe;
    stripe.set_restricted_key(RESTRICTED_KEY, [Permission::CustomerRead])?;
    let log_before = env().cluster.server_log().len();
    use_key(&mut db, RESTRICTED_KEY);
    let refused = wait_for("the worker to name the missing permission", DEADLINE, || {
        let log = env().cluster.server_log();
        let new = &log[log_before..];
        new.lines().find(|l| l.contains("WARNING") && l.contains("rak_customer_write")).map(str::to_string)
    });
    let result = (|| {
        let refused = refused?;
        ensure(!refused.contains(RESTRICTED_KEY), || format!("the key is in the log: {refused}"))?;
        // The stats say it too, where an operator's dashboard reads (before, only the log did).
        let without_key = |db: &mut postgres::Client| -> f64 {
            db.query_one(
                "SELECT value::float8 FROM onboarding.stats WHERE metric = 'workers without a usable Stripe key'",
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(-1.0)
        };
        wait_for("the stats to count the worker without a usable key", DEADLINE, || {
            (without_key(&mut db) >= 1.0).then_some(())
        })?;
        let user = insert_profile(&mut db, &table, Some("restricted@example.com"));
        // Let the worker see it (it promotes inserts only while it may call Stripe: the intake keeps it).
        // What docs/src/guides/stripe-key.md ("Restricted keys") lists (the test tables have a Connect column).
        let needed = [Permission::CustomerWrite, Permission::ConnectedAccountWrite, Permission::AccountLinkWrite];
        stripe.set_restricted_key(RESTRICTED_KEY, needed)?;
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
        wait_for_customer(&mut db, &table, &user)?;
        let job = only_job(&mut db, &user)?;
        ensure(job.attempts == 1 && job.last_error.is_none(), || format!("attempts were spent meanwhile: {job:?}"))?;
        let usable = without_key(&mut db);
        ensure(usable == 0.0, || format!("{usable} workers still counted without a usable key"))?;
        let log = env().cluster.server_log();
        let warnings = log[log_before..].matches("rak_customer_write").count();
        ensure(warnings == 1, || format!("the missing permission was logged {warnings} times, not once"))?;
        ensure(!log.contains(RESTRICTED_KEY), || "the restricted key is in the server log".into())
    })();
    use_key(&mut db, API_KEY);
    stripe.remove_restricted_key(RESTRICTED_KEY);
    result
}

/// A restricted key that may write customers (and read events) but do nothing of Connect's, on a
/// table with a Connect column and policy `never`: customers go on; a Connect job asked for
/// explicitly waits, spending no attempt, with one WARNING; once the key may, it goes through.
/// Before the fix a Connect column made Connect "in use" and, lacking its permissions, no job at
/// all was claimed: a platform that only wants customers got none.
fn a_key_without_connect_permissions_holds_back_connect_only() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_no_connect_key");
    let stripe = &env().stripe;
    stripe.set_restricted_key(RESTRICTED_KEY, [Permission::CustomerWrite, Permission::EventRead])?;
    let log_before = env().cluster.server_log().len();
    use_key(&mut db, RESTRICTED_KEY);
    let result = (|| {
        wait_for("the worker to take the key", DEADLINE, || {
            env().cluster.server_log()[log_before..].contains("Stripe client ready").then_some(())
        })?;
        let user = insert_profile(&mut db, &table, Some("customers-only@example.com"));
        wait_for_customer(&mut db, &table, &user)?;
        db.query_one("SELECT onboarding.enqueue_connect_account($1, $2::text::regclass)", &[&user, &table])?;
        let postponed = |db: &mut postgres::Client| {
            events_for(db, &user).iter().any(|(step, detail)| {
                step == "postponed" && detail["reason"].as_str().is_some_and(|r| r.contains("Connect permission"))
            })
        };
        wait_for("the Connect job to wait for the key", DEADLINE, || postponed(&mut db).then_some(()))?;
        let account_job = |db: &mut postgres::Client| {
            jobs_for(db, &user).into_iter().find(|j| j.kind == "create_connect_account").ok_or("no Connect job")
        };
        let waiting = account_job(&mut db)?;
        ensure(waiting.state == "pending" && waiting.attempts == 0, || format!("{waiting:?}"))?;
        let needed = [Permission::CustomerWrite, Permission::ConnectedAccountWrite, Permission::AccountLinkWrite];
        stripe.set_restricted_key(RESTRICTED_KEY, needed.into_iter().chain([Permission::EventRead]))?;
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
        let account = wait_for("the account once the key may", DEADLINE, || {
            db.query_one(&format!("SELECT stripe_connect_account_id FROM {table} WHERE id::text = $1"), &[&user])
                .unwrap()
                .get::<_, Option<String>>(0)
        })?;
        ensure(account.starts_with("acct_"), || account.clone())?;
        let done = account_job(&mut db)?;
        ensure(done.state == "succeeded" && done.last_error.is_none(), || format!("{done:?}"))?;
        let log = env().cluster.server_log();
        let warnings = log[log_before..].lines().filter(|l| l.contains("Connect jobs wait")).count();
        ensure(warnings == 1, || format!("the refusal was said {warnings} times, not once"))
    })();
    use_key(&mut db, API_KEY);
    stripe.remove_restricted_key(RESTRICTED_KEY);
    result
}

/// Stripe made the customer, then answered 500 and stored it for the key (its replay is the same
/// 500 forever). The next attempt looks the customer up and adopts it: one customer, no dead job.
fn a_500_whose_create_went_through_is_resolved_by_the_look_up() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_500_executed");
    env().stripe.inject(Fault::status(500).on("POST", "/v1/customers").after_execute().stored().times(1));
    let user = insert_profile(&mut db, &table, Some("five-hundred@example.com"));
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).ends_with(&["adopted", "written_back"]), || format!("steps {:?}", steps(&events)))?;
    let failed = events.iter().find(|(s, _)| s == "failed").map(|(_, d)| d).ok_or("no failed event")?;
    ensure(failed["status"] == 500 && failed["next_idempotency_key"].is_string(), || format!("{failed}"))
}

/// Stripe stored a 500 without making anything: the look-up finds no customer, and the create goes
/// out again under the new key the failure recorded (the old one would replay the 500).
fn a_500_whose_create_did_not_go_through_is_retried_under_a_new_key() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_500_not_executed");
    env().stripe.inject(Fault::status(500).on("POST", "/v1/customers").stored().times(1));
    let user = insert_profile(&mut db, &table, Some("five-hundred-again@example.com"));
    let first_key = wait_for("the job's first key", DEADLINE, || {
        env()
            .stripe
            .requests()
            .into_iter()
            .find(|r| r.method == "POST" && r.params["metadata"]["user_id"] == user.as_str())
            .and_then(|r| r.idempotency_key)
    })?;
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let job = only_job(&mut db, &user)?;
    ensure(job.state == "succeeded" && job.idempotency_key != first_key, || {
        format!("{job:?} (first key {first_key})")
    })?;
    let events = events_for(&mut db, &user);
    let failed = events.iter().find(|(s, _)| s == "failed").map(|(_, d)| d).ok_or("no failed event")?;
    ensure(failed["next_idempotency_key"] == job.idempotency_key.as_str(), || format!("{failed} vs {job:?}"))?;
    let creates: Vec<_> = env()
        .stripe
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/customers" && r.params["metadata"]["user_id"] == user.as_str())
        .map(|r| r.idempotency_key)
        .collect();
    ensure(creates == [Some(first_key), Some(job.idempotency_key.clone())], || format!("creates {creates:?}"))?;
    ensure(steps(&events).ends_with(&["written_back"]), || format!("steps {:?}", steps(&events)))
}

/// Past the idempotency horizon a job looks its customer up before creating one; when the email
/// list holds none and search is refused (not every account has it), it cannot tell whether one
/// exists under another email: it creates nothing and is parked with the reason.
fn a_look_up_that_cannot_decide_creates_nothing_and_says_why() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_undecided");
    let stripe = &env().stripe;
    stripe.inject(Fault::status(400).on("POST", "/v1/customers").message("refused for the test").times(1));
    let user = insert_profile(&mut db, &table, Some("undecided@example.com"));
    wait_for_state(&mut db, &user, "dead")?;
    let job: i64 = db.query_one("SELECT id FROM onboarding.jobs WHERE user_id = $1", &[&user]).unwrap().get(0);
    db.execute("UPDATE onboarding.jobs SET first_attempt_at = now() - interval '2 days' WHERE id = $1", &[&job])
        .unwrap();
    stripe.inject(
        Fault::status(400).on("GET", "/v1/customers/search").message("Search is not available for this account"),
    );
    db.query("SELECT * FROM onboarding.retry($1)", &[&job]).unwrap();
    // The search fault stays until the next test's reset.
    let parked = wait_for("the retry to be parked", DEADLINE, || {
        let job = only_job(&mut db, &user).ok()?;
        (job.state == "dead" && job.attempts == 1 && job.last_error.as_deref()?.contains("could not decide"))
            .then_some(job)
    })?;
    ensure(stripe_customers_for(&user).is_empty(), || "a customer was created without a decision".into())?;
    ensure(parked.last_error.as_deref().is_some_and(|e| e.contains("search")), || format!("{parked:?}"))
}
