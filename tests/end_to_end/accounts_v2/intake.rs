//! A profile's one Account: made after commit and exactly once, across lost answers, a key still in
//! use, the idempotency horizon and a backfill.

use libtest_mimic::{Failed, Trial};
use serde_json::Value;
use stripe_emulator::Fault;

use super::{applied, insert, v2_accounts_for, v2_table, wait_for_account};
use crate::env;
use crate::helpers::{
    DEADLINE, db, ensure, events_for, jobs_for, steps, stripe_customers_for, stripe_requests_for, wait_for,
    wait_for_state,
};

pub(super) fn tests() -> Vec<Trial> {
    trials![
        a_committed_profile_gets_one_account_and_a_rolled_back_one_nothing,
        a_lost_answer_is_retried_under_the_same_key_into_the_same_account,
        a_key_still_in_use_is_retried_not_looked_up,
        an_account_past_the_idempotency_horizon_is_looked_up_and_adopted,
        a_backfill_gives_existing_profiles_their_accounts,
    ]
}

fn a_committed_profile_gets_one_account_and_a_rolled_back_one_nothing() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_basic", "");
    let mut tx = db.transaction().unwrap();
    let rolled_back = insert(&mut tx, &table, "never@example.com", "buyer");
    tx.rollback().unwrap();
    let user = insert(&mut db, &table, "ada@example.com", "buyer");
    let account = wait_for_account(&mut db, &table, &user)?;

    let accounts = v2_accounts_for(&user);
    ensure(accounts.len() == 1 && accounts[0]["id"] == account.as_str(), || format!("Stripe holds {accounts:?}"))?;
    let a = &accounts[0];
    ensure(
        a["contact_email"] == "ada@example.com"
            && a["display_name"] == "Ada Lovelace"
            && applied(a) == ["customer"]
            && a["dashboard"] == "express",
        || format!("account {a}"),
    )?;
    // One POST /v2/core/accounts under the job's key, and no v1 call at all.
    let requests = stripe_requests_for(&user);
    let job = jobs_for(&mut db, &user).into_iter().next().ok_or("no job")?;
    ensure(
        requests.len() == 1
            && requests[0].path == "/v2/core/accounts"
            && requests[0].idempotency_key.as_deref() == Some(job.idempotency_key.as_str()),
        || format!("requests {:?}", requests.iter().map(|r| (&r.method, &r.path)).collect::<Vec<_>>()),
    )?;
    ensure(job.kind == "create_customer" && job.state == "succeeded", || format!("job {job:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).ends_with(&["stripe_request", "stripe_response", "written_back"]), || {
        format!("steps {:?}", steps(&events))
    })?;
    // The rolled-back profile: no job, no request, no Account (the committed one shows the worker ran).
    ensure(
        jobs_for(&mut db, &rolled_back).is_empty()
            && stripe_requests_for(&rolled_back).is_empty()
            && v2_accounts_for(&rolled_back).is_empty(),
        || "a rolled-back profile reached Stripe".into(),
    )?;
    ensure(stripe_customers_for(&user).is_empty(), || "a v1 customer was made too".into())
}

fn a_lost_answer_is_retried_under_the_same_key_into_the_same_account() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_lost", "");
    // The first attempt makes the Account but its answer is lost; the second fails (503) before
    // Stripe does anything; the third is answered: by v2 idempotency, with the first's Account.
    env().stripe.inject(Fault::drop_after().on_exact("POST", "/v2/core/accounts"));
    env().stripe.inject(Fault::status(503).on_exact("POST", "/v2/core/accounts"));
    let user = insert(&mut db, &table, "lost@example.com", "buyer");
    let account = wait_for_account(&mut db, &table, &user)?;
    let accounts = v2_accounts_for(&user);
    ensure(accounts.len() == 1 && accounts[0]["id"] == account.as_str(), || format!("Stripe holds {accounts:?}"))?;
    let requests = stripe_requests_for(&user);
    let keys: Vec<_> = requests.iter().map(|r| r.idempotency_key.clone()).collect();
    ensure(requests.len() == 3 && keys.iter().all(|k| k.is_some() && *k == keys[0]), || {
        format!("{} requests, keys {keys:?}", requests.len())
    })?;
    // Every attempt sent the same body (v2 refuses another body under the key).
    ensure(requests.iter().all(|r| r.params == requests[0].params), || "the retries changed the body".into())
}

/// A 409 `idempotency_key_in_use` (the first request under the key still runs) is retried under
/// the same key, which gets the first request's Account: not looked up in the v2 list, which could
/// not show a minutes-old Account and would have kept the job waiting for it to settle (seen in
/// the chaos run: jobs open after 90 s).
fn a_key_still_in_use_is_retried_not_looked_up() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_key_in_use", "");
    env().stripe.inject(
        Fault::status(409)
            .error_type("idempotency_error")
            .code("idempotency_key_in_use")
            .on_exact("POST", "/v2/core/accounts"),
    );
    let user = insert(&mut db, &table, "in-use@example.com", "buyer");
    let account = wait_for_account(&mut db, &table, &user)?;
    let lists =
        env().stripe.requests().into_iter().filter(|r| r.method == "GET" && r.path == "/v2/core/accounts").count();
    let accounts = v2_accounts_for(&user);
    ensure(lists == 0 && accounts.len() == 1 && accounts[0]["id"] == account.as_str(), || {
        format!("{lists} list requests, Accounts {accounts:?}")
    })
}

fn an_account_past_the_idempotency_horizon_is_looked_up_and_adopted() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_horizon", "");
    // Stripe makes the Account but the answer is lost; the retry is refused, parking the job.
    env().stripe.inject(Fault::drop_after().on_exact("POST", "/v2/core/accounts"));
    env().stripe.inject(Fault::status(400).message("refused for the test").on_exact("POST", "/v2/core/accounts"));
    let user = insert(&mut db, &table, "horizon@example.com", "buyer");
    wait_for_state(&mut db, &user, "dead")?;
    ensure(v2_accounts_for(&user).len() == 1, || "the first attempt made no Account".into())?;

    // Two days later Stripe may have forgotten the key: a retry looks the Account up first.
    env().stripe.expire_idempotency_keys();
    let job = "(SELECT id FROM onboarding.jobs WHERE user_id = $1 AND kind = 'create_customer')";
    db.execute(
        &format!("UPDATE onboarding.jobs SET first_attempt_at = now() - interval '2 days' WHERE id = {job}"),
        &[&user],
    )
    .unwrap();
    db.query(&format!("SELECT * FROM onboarding.retry({job})"), &[&user]).unwrap();
    let account = wait_for_account(&mut db, &table, &user)?;
    let accounts: Vec<Value> = v2_accounts_for(&user).into_iter().map(|a| a["id"].clone()).collect();
    ensure(accounts == [account.as_str()], || format!("the profile has {account}; Stripe holds {accounts:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).ends_with(&["adopted", "written_back"]), || format!("steps {:?}", steps(&events)))
}

fn a_backfill_gives_existing_profiles_their_accounts() -> Result<(), Failed> {
    let mut db = db();
    let table = "public.profiles_v2_backfill";
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, stripe_account_id text);
         INSERT INTO {table} (email) SELECT 'existing-' || g || '@example.com' FROM generate_series(1, 5) g;
         SELECT onboarding.attach('{table}', stripe_objects => 'accounts_v2');"
    ))
    .unwrap();
    // On its own: the procedure commits between batches.
    db.batch_execute(&format!("CALL onboarding.backfill('{table}')")).unwrap();
    wait_for("every existing profile's Account", DEADLINE, || {
        let missing: i64 =
            db.query_one(&format!("SELECT count(*) FROM {table} WHERE stripe_account_id IS NULL"), &[]).unwrap().get(0);
        (missing == 0).then_some(())
    })?;
    let users: Vec<String> =
        db.query(&format!("SELECT id::text FROM {table}"), &[]).unwrap().iter().map(|r| r.get(0)).collect();
    ensure(users.iter().all(|u| v2_accounts_for(u).len() == 1), || "a profile has not exactly one Account".into())
}
