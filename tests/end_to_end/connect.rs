//! Stripe Connect: the per-table policy, Express accounts after the customer, and account links.

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use serde_json::Value;
use stripe_emulator::{Fault, RecordedRequest};

use crate::env;
use crate::helpers::{
    DEADLINE, customer_id, db, ensure, events_for, insert_profile, jobs_for, profiles_table, sqlstate, steps,
    stripe_customers_for, wait_for, wait_for_customer, wait_for_state,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        connect_accounts_follow_the_policy_after_the_customer,
        connect_policy_is_validated,
        account_links_are_made_fresh_and_only_when_allowed,
        account_job_past_the_idempotency_horizon_adopts_the_existing_account,
    ]
}

fn stripe_accounts_for(user: &str) -> Vec<Value> {
    env().stripe.accounts().into_iter().filter(|a| a["metadata"]["user_id"] == user).collect()
}

fn account_id(db: &mut Client, table: &str, user: &str) -> Option<String> {
    db.query_one(&format!("SELECT stripe_connect_account_id FROM {table} WHERE id::text = $1"), &[&user])
        .unwrap()
        .get(0)
}

fn connect_accounts_follow_the_policy_after_the_customer() -> Result<(), Failed> {
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

    // always: the customer, then an Express account (by controller properties, as the pinned API
    // version has it) with both capabilities, linked; its request event names the controller.
    let user = insert(&mut db, "seller");
    let account = wait_for("the Connect account", DEADLINE, || account_id(&mut db, table, &user))?;
    let accounts = stripe_accounts_for(&user);
    ensure(accounts.len() == 1 && accounts[0]["id"] == account.as_str(), || format!("{accounts:?}"))?;
    let a = &accounts[0];
    let capabilities = &a["capabilities"];
    ensure(
        is_express(&a["controller"])
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
    let sent: Value = db
        .query_one(
            "SELECT detail->'controller' FROM onboarding.events WHERE user_id = $1 AND step = 'stripe_request'
                AND detail->>'path' = '/v1/accounts'",
            &[&user],
        )
        .unwrap()
        .get(0);
    ensure(is_express(&sent), || format!("event's controller: {sent}"))?;

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

/// Like customers (retries.rs): a retry whose key Stripe has forgotten looks the account up first.
fn account_job_past_the_idempotency_horizon_adopts_the_existing_account() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_connect_horizon");
    db.batch_execute(&format!("SELECT onboarding.set_connect_policy('{table}', 'always')")).unwrap();
    // Stripe creates the account but the answer is lost; the retry is refused, parking the job.
    env().stripe.inject(Fault::drop_after().on("POST", "/v1/accounts"));
    env().stripe.inject(Fault::status(400).message("refused for the test").on("POST", "/v1/accounts"));
    let user = insert_profile(&mut db, &table, Some("lost-seller@example.com"));
    wait_for_state(&mut db, &user, "dead")?;
    let first = stripe_accounts_for(&user).len();
    ensure(first == 1, || format!("the first attempt created {first} accounts, not one"))?;
    ensure(account_id(&mut db, &table, &user).is_none(), || "a lost answer was written back".into())?;

    // Two days later: Stripe has forgotten the key, so a plain retry would create a second account.
    env().stripe.expire_idempotency_keys();
    let job = "(SELECT id FROM onboarding.jobs WHERE user_id = $1 AND kind = 'create_connect_account')";
    db.execute(
        &format!("UPDATE onboarding.jobs SET first_attempt_at = now() - interval '2 days' WHERE id = {job}"),
        &[&user],
    )
    .unwrap();
    db.query(&format!("SELECT * FROM onboarding.retry({job})"), &[&user]).unwrap();
    let account = wait_for("the account's write-back", DEADLINE, || account_id(&mut db, &table, &user))?;
    let accounts: Vec<Value> = stripe_accounts_for(&user).into_iter().map(|a| a["id"].clone()).collect();
    ensure(accounts == [account.as_str()], || format!("the profile has {account}; Stripe holds {accounts:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).ends_with(&["adopted", "written_back"]), || format!("steps {:?}", steps(&events)))
}

/// A `controller` (as Stripe returns it, or as the request event records it) that makes an Express
/// account: every property the client sends, with its value (Stripe adds others of its own).
fn is_express(controller: &Value) -> bool {
    holds(controller, &onboarding_core::stripe::express_controller_object())
}

/// Whether `outer` has every key of `inner`, nested, with the same values.
fn holds(outer: &Value, inner: &Value) -> bool {
    match inner {
        Value::Object(keys) => keys.iter().all(|(key, value)| holds(&outer[key], value)),
        leaf => outer == leaf,
    }
}
