//! Tables attached with `stripe_objects => 'accounts_v2'`: one Accounts v2 Account per profile,
//! made after commit and exactly once, the Connect policy adding configurations to it, links,
//! email sync and compensation on it; v1's promises, repeated for v2; and a v1 and a v2 table
//! side by side.

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use serde_json::Value;
use stripe_emulator::{Fault, Onboarding, Permission, RecordedRequest};

use crate::env;
use crate::helpers::{
    self, API_KEY, DEADLINE, db, ensure, events_for, jobs_for, set_and_reload, sqlstate, steps, stripe_customers_for,
    stripe_requests_for, wait_for, wait_for_customer, wait_for_state, with_fast_event_polls,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        a_committed_profile_gets_one_account_and_a_rolled_back_one_nothing,
        a_lost_answer_is_retried_under_the_same_key_into_the_same_account,
        the_connect_policy_adds_configurations_to_the_same_account,
        email_changes_and_deletions_reach_the_account,
        an_account_past_the_idempotency_horizon_is_looked_up_and_adopted,
        attach_and_account_options_are_checked,
        a_v1_table_and_a_v2_table_work_side_by_side,
        readiness_and_closing_come_back_from_v2_events,
        audits_and_reconcile_cover_v2_accounts,
        a_backfill_gives_existing_profiles_their_accounts,
        a_key_that_may_not_call_v2_holds_back_v2_tables_only,
        dashboard_changes_go_through_the_tables_change_policy,
        a_tenant_naming_anothers_account_reaches_nothing_of_it,
        a_key_still_in_use_is_retried_not_looked_up,
    ]
}

/// A table with the columns an accounts_v2 attachment uses, attached (extra attach arguments in
/// `attach_args`).
fn v2_table(db: &mut Client, name: &str, attach_args: &str) -> String {
    let table = format!("public.{name}");
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, full_name text, role text,
             stripe_account_id text, stripe_connect_account_id text,
             stripe_account_ready boolean NOT NULL DEFAULT false);
         SELECT onboarding.attach('{table}', stripe_objects => 'accounts_v2', display_name_column => 'full_name'{attach_args});"
    ))
    .unwrap();
    table
}

fn insert(db: &mut impl postgres::GenericClient, table: &str, email: &str, role: &str) -> String {
    db.query_one(
        &format!("INSERT INTO {table} (email, full_name, role) VALUES ($1, 'Ada Lovelace', $2) RETURNING id::text"),
        &[&email, &role],
    )
    .unwrap()
    .get(0)
}

fn column(db: &mut Client, table: &str, column: &str, user: &str) -> Option<String> {
    db.query_one(&format!("SELECT {column} FROM {table} WHERE id::text = $1"), &[&user]).unwrap().get(0)
}

fn wait_for_account(db: &mut Client, table: &str, user: &str) -> Result<String, Failed> {
    wait_for("the Account's write-back", DEADLINE, || column(db, table, "stripe_account_id", user))
}

fn v2_accounts_for(user: &str) -> Vec<Value> {
    env().stripe.v2_accounts().into_iter().filter(|a| a["metadata"]["user_id"] == user).collect()
}

/// Requests to one Account's own paths (updates carry no `metadata.user_id` to find them by).
fn requests_on(account: &str) -> Vec<RecordedRequest> {
    env().stripe.requests().into_iter().filter(|r| r.path.contains(account)).collect()
}

fn requests_to(requests: &[RecordedRequest], method: &str, path: &str) -> usize {
    requests.iter().filter(|r| r.method == method && r.path == path).count()
}

fn applied(account: &Value) -> Vec<String> {
    let mut names: Vec<String> = account["applied_configurations"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
        .unwrap_or_default();
    names.sort();
    names
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

fn the_connect_policy_adds_configurations_to_the_same_account() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(
        &mut db,
        "profiles_v2_connect",
        ", connect_account_column => 'stripe_connect_account_id', connect_policy => 'when', \
         connect_condition => $$role = 'provider'$$",
    );
    let buyer = insert(&mut db, &table, "buyer@example.com", "buyer");
    let provider = insert(&mut db, &table, "provider@example.com", "provider");
    let connected = wait_for("the provider's connected Account", DEADLINE, || {
        column(&mut db, &table, "stripe_connect_account_id", &provider)
    })?;
    let account = column(&mut db, &table, "stripe_account_id", &provider);
    ensure(account.as_deref() == Some(connected.as_str()), || format!("account {account:?}, connected {connected}"))?;
    let accounts = v2_accounts_for(&provider);
    ensure(accounts.len() == 1, || format!("Stripe holds {accounts:?}"))?;
    let a = &accounts[0];
    ensure(
        applied(a) == ["customer", "merchant", "recipient"]
            && a["configuration"]["merchant"]["capabilities"]["card_payments"].is_object()
            && a["configuration"]["recipient"]["capabilities"]["stripe_balance"]["stripe_transfers"].is_object(),
        || format!("account {a}"),
    )?;
    let requests = [stripe_requests_for(&provider), requests_on(&connected)].concat();
    ensure(
        requests_to(&requests, "POST", "/v2/core/accounts") == 1
            && requests_to(&requests, "POST", &format!("/v2/core/accounts/{connected}")) == 1,
        || format!("requests {:?}", requests.iter().map(|r| &r.path).collect::<Vec<_>>()),
    )?;
    wait_for_account(&mut db, &table, &buyer)?;
    ensure(column(&mut db, &table, "stripe_connect_account_id", &buyer).is_none(), || "a buyer got Connect".into())?;
    ensure(applied(&v2_accounts_for(&buyer)[0]) == ["customer"], || "a buyer's Account got Connect".into())?;

    // An onboarding link for the provider: Account Links v2, for the Account.
    let link: String = db
        .query_one(
            "SELECT onboarding.create_account_link($1, 'https://example.com/refresh', 'https://example.com/return',
                                                   profile_table => $2::text::regclass)",
            &[&provider, &table],
        )
        .unwrap()
        .get(0);
    let links: Vec<RecordedRequest> =
        env().stripe.requests().into_iter().filter(|r| r.path == "/v2/core/account_links").collect();
    ensure(link.starts_with("http") && links.len() == 1 && links[0].params["account"] == connected.as_str(), || {
        format!("link {link}, requests {links:?}")
    })?;

    // Options: recipient only, from now on.
    db.batch_execute(&format!("SELECT onboarding.set_account_options('{table}', merchant_capabilities => '{{}}')"))
        .unwrap();
    let recipient = insert(&mut db, &table, "recipient@example.com", "provider");
    wait_for("the recipient's connected Account", DEADLINE, || {
        column(&mut db, &table, "stripe_connect_account_id", &recipient)
    })?;
    let a = &v2_accounts_for(&recipient)[0];
    ensure(applied(a) == ["customer", "recipient"], || format!("account {a}"))
}

fn email_changes_and_deletions_reach_the_account() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(
        &mut db,
        "profiles_v2_changes",
        ", connect_account_column => 'stripe_connect_account_id', connect_policy => 'always'",
    );
    let user = insert(&mut db, &table, "old@example.com", "provider");
    let account =
        wait_for("the connected Account", DEADLINE, || column(&mut db, &table, "stripe_connect_account_id", &user))?;
    db.execute(&format!("UPDATE {table} SET email = 'new@example.com' WHERE id::text = $1"), &[&user]).unwrap();
    wait_for("the contact email's update", DEADLINE, || {
        (v2_accounts_for(&user)[0]["contact_email"] == "new@example.com").then_some(())
    })?;

    // Deleting the profile closes its one Account, once (both columns name it).
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    wait_for("the Account's closing", DEADLINE, || (v2_accounts_for(&user)[0]["closed"] == true).then_some(()))?;
    let closes = requests_to(&requests_on(&account), "POST", &format!("/v2/core/accounts/{account}/close"));
    let closing_jobs: Vec<_> =
        jobs_for(&mut db, &user).into_iter().filter(|j| j.kind.starts_with("delete_")).map(|j| j.kind).collect();
    ensure(closes == 1 && closing_jobs == ["delete_customer"], || format!("{closes} closes by jobs {closing_jobs:?}"))?;
    wait_for_state(&mut db, &user, "succeeded").map(|_| ())
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

fn attach_and_account_options_are_checked() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_checks", "");
    let v1 = "public.profiles_v2_checks_v1";
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {v1};
         CREATE TABLE {v1} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, full_name text,
                            stripe_customer_id text, stripe_account_id text);"
    ))
    .unwrap();
    let options = |args: &str| format!("SELECT onboarding.set_account_options('{table}', {args})");
    for (sql, code, says) in [
        (format!("SELECT onboarding.attach('{v1}', stripe_objects => 'v3')"), "22023", "v1 or accounts_v2"),
        (format!("SELECT onboarding.attach('{v1}', display_name_column => 'full_name')"), "22023", "accounts_v2"),
        (
            format!("SELECT onboarding.attach('{v1}', stripe_objects => 'accounts_v2', customer_column => 'nope')"),
            "42703",
            "customer_column",
        ),
        (options("merchant_capabilities => '{teleport_payments}'"), "22023", "card_payments"),
        (options("merchant_capabilities => '{}', recipient_capabilities => '{}'"), "22023", "at least one"),
        (options("dashboard => 'fancy'"), "22023", "express, full or none"),
        (format!("SELECT onboarding.set_account_options('{v1}')"), "55000", "attach() it first"),
    ] {
        let (got, message) = sqlstate(db.query(&sql, &[]))?;
        ensure(got == code && message.contains(says), || format!("{sql}: {got} {message}"))?;
    }
    // An attached v1 table is told it makes v1 objects.
    db.batch_execute(&format!("SELECT onboarding.attach('{v1}')")).unwrap();
    let (got, message) = sqlstate(db.query(&format!("SELECT onboarding.set_account_options('{v1}')"), &[]))?;
    ensure(got == "55000" && message.contains("v1 objects"), || format!("{got} {message}"))?;

    // Once a profile has its Account, the table keeps its model.
    let user = insert(&mut db, &table, "kept@example.com", "buyer");
    wait_for_account(&mut db, &table, &user)?;
    let (got, message) = sqlstate(db.query(&format!("SELECT onboarding.attach('{table}')"), &[]))?;
    ensure(got == "55000" && message.contains("switches model only before"), || format!("{got} {message}"))?;
    // Attached again with its model, its options stay.
    db.batch_execute(&options("dashboard => 'none'")).unwrap();
    db.batch_execute(&format!("SELECT onboarding.attach('{table}', stripe_objects => 'accounts_v2')")).unwrap();
    let dashboard: String = db
        .query_one(
            "SELECT account_options->>'dashboard' FROM onboarding.attachments WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .get(0);
    ensure(dashboard == "none", || format!("options after re-attach: dashboard {dashboard}"))
}

fn a_v1_table_and_a_v2_table_work_side_by_side() -> Result<(), Failed> {
    let mut db = db();
    let v2 = v2_table(&mut db, "profiles_side_v2", "");
    let v1 = "public.profiles_side_v1";
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {v1};
         CREATE TABLE {v1} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, stripe_customer_id text);
         SELECT onboarding.attach('{v1}');"
    ))
    .unwrap();
    // One transaction signs a user up in both.
    let mut tx = db.transaction().unwrap();
    let in_v2 = insert(&mut tx, &v2, "both@example.com", "buyer");
    let in_v1: String = tx
        .query_one(&format!("INSERT INTO {v1} (email) VALUES ('both@example.com') RETURNING id::text"), &[])
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    let account = wait_for_account(&mut db, &v2, &in_v2)?;
    let customer = wait_for("the v1 customer", DEADLINE, || column(&mut db, v1, "stripe_customer_id", &in_v1))?;
    ensure(account.starts_with("acct_") && customer.starts_with("cus_"), || format!("{account}, {customer}"))?;
    // The audits read a snapshot of v1 objects: they leave the v2 table out rather than call its
    // Accounts missing (readiness and audits for v2 come with the v2 reader).
    let mismatches: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.audit_mismatches() WHERE profile_table = $1::text::regclass",
            &[&v2],
        )
        .unwrap()
        .get(0);
    ensure(mismatches == 0, || format!("{mismatches} audit lines for the v2 table"))?;
    let paths = |user: &str| -> Vec<String> { stripe_requests_for(user).into_iter().map(|r| r.path).collect() };
    ensure(paths(&in_v2) == ["/v2/core/accounts"] && paths(&in_v1) == ["/v1/customers"], || {
        format!("v2 table {:?}, v1 table {:?}", paths(&in_v2), paths(&in_v1))
    })
}

fn ready(db: &mut Client, user: &str) -> bool {
    db.query_one("SELECT onboarding.account_ready($1::text)", &[&user]).unwrap().get(0)
}

fn readiness_and_closing_come_back_from_v2_events() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(
        &mut db,
        "profiles_v2_readiness",
        ", connect_account_column => 'stripe_connect_account_id', connect_policy => 'always', \
         readiness_columns => '{\"ready\": \"stripe_account_ready\"}'",
    );
    with_fast_event_polls(&mut db, |db| {
        let user = insert(db, &table, "seller@example.com", "seller");
        let account =
            wait_for("the connected Account", DEADLINE, || column(db, &table, "stripe_connect_account_id", &user))?;
        // Followed from its Connect job on, read on /v2/core/accounts (the poll after the first
        // reads every v2 Account): not ready, with what is due.
        wait_for("the Account's first read", DEADLINE, || {
            let due: Option<Vec<String>> = db
                .query_opt(
                    "SELECT requirements_currently_due FROM onboarding.account_status($1::text) WHERE account_id = $2",
                    &[&user, &account],
                )
                .unwrap()
                .map(|row| row.get(0));
            due.filter(|due| !due.is_empty()).map(|_| ())
        })?;
        ensure(!ready(db, &user), || "ready before onboarding".into())?;
        let reads_before = requests_to(&requests_on(&account), "GET", &format!("/v2/core/accounts/{account}"));

        // Onboarding completes in Stripe: a thin event names the Account, which is read, and
        // account_ready and the profile's readiness column follow.
        env().stripe.set_v2_onboarding(&account, Onboarding::Enabled).map_err(|e| e.to_string())?;
        wait_for("account_ready", DEADLINE, || ready(db, &user).then_some(()))?;
        wait_for("the readiness column", DEADLINE, || {
            let on: bool = db
                .query_one(&format!("SELECT stripe_account_ready FROM {table} WHERE id::text = $1"), &[&user])
                .unwrap()
                .get(0);
            on.then_some(())
        })?;
        let reads = requests_to(&requests_on(&account), "GET", &format!("/v2/core/accounts/{account}"));
        let event_reads = env().stripe.requests().into_iter().filter(|r| r.path == "/v2/core/events").count();
        ensure(reads > reads_before && event_reads > 0, || {
            format!("{reads} Account reads, {event_reads} event reads")
        })?;

        // Closed in the Dashboard: never ready again.
        ensure(env().stripe.dashboard_close_v2_account(&account), || "the test server did not close it".into())?;
        wait_for("the closing", DEADLINE, || (!ready(db, &user)).then_some(()))?;
        let closed: Option<bool> = db
            .query_one("SELECT deauthorized_at IS NOT NULL FROM onboarding.account_status($1::text)", &[&user])
            .unwrap()
            .get(0);
        ensure(closed == Some(true), || "a closed Account is not marked".into())
    })
}

fn audits_and_reconcile_cover_v2_accounts() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_audits", "");
    let closed_user = insert(&mut db, &table, "closed@example.com", "buyer");
    let orphan_user = insert(&mut db, &table, "orphan@example.com", "buyer");
    let closed = wait_for_account(&mut db, &table, &closed_user)?;
    let orphan = wait_for_account(&mut db, &table, &orphan_user)?;
    // Closed in the Dashboard; and a profile that lets go of its Account (an orphan now).
    ensure(env().stripe.dashboard_close_v2_account(&closed), || "the test server did not close it".into())?;
    db.execute(&format!("UPDATE {table} SET stripe_account_id = NULL WHERE id::text = $1"), &[&orphan_user]).unwrap();

    let mismatches: Vec<(String, String, String)> = db
        .query(
            "SELECT object, stripe_id, problem FROM onboarding.audit_mismatches() WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    ensure(
        mismatches == [("account_v2".to_string(), closed.clone(), "missing or deleted in Stripe".to_string())],
        || format!("mismatches {mismatches:?}"),
    )?;
    let orphans: Vec<(String, String)> = db
        .query("SELECT object, stripe_id FROM onboarding.audit_orphans(false) WHERE user_id = $1", &[&orphan_user])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ensure(orphans == [("account_v2".to_string(), orphan.clone())], || format!("orphans {orphans:?}"))?;

    // Reconcile: the closed one recreated, the orphan closed (through the profile's table).
    let actions: Vec<(String, Option<String>)> = db
        .query(
            "SELECT action, stripe_id FROM onboarding.reconcile(dry_run => false, profile_table => $1::text::regclass)",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ensure(
        actions.contains(&("recreate".to_string(), Some(closed.clone())))
            && actions.contains(&("delete orphan".to_string(), Some(orphan.clone()))),
        || format!("reconcile did {actions:?}"),
    )?;
    let recreated = wait_for("the recreated Account", DEADLINE, || {
        column(&mut db, &table, "stripe_account_id", &closed_user).filter(|id| *id != closed)
    })?;
    wait_for("the orphan's closing", DEADLINE, || {
        env().stripe.v2_accounts().iter().any(|a| a["id"] == orphan.as_str() && a["closed"] == true).then_some(())
    })?;
    let live: Vec<Value> = v2_accounts_for(&closed_user).into_iter().filter(|a| a["closed"] != true).collect();
    ensure(live.len() == 1 && live[0]["id"] == recreated.as_str(), || format!("live Accounts {live:?}"))?;
    // Nothing left to say.
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.audit_mismatches() WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .get(0);
    ensure(left == 0, || format!("{left} mismatches after reconcile"))
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

const RESTRICTED_KEY: &str = "rk_test_onboardingE2Ev2restricted3b1d";

/// A restricted key with customers' permissions but not the connected accounts' (which the test
/// server, as Stripe is assumed to, asks of `/v2/core/accounts`): the worker names the missing
/// permission once; a v1 table's customers go on, an accounts_v2 table's jobs wait without
/// spending an attempt, and go through once the key may.
fn a_key_that_may_not_call_v2_holds_back_v2_tables_only() -> Result<(), Failed> {
    let mut db = db();
    let v2 = v2_table(&mut db, "profiles_v2_restricted", "");
    let v1 = "public.profiles_v2_restricted_v1";
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {v1};
         CREATE TABLE {v1} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, stripe_customer_id text);
         SELECT onboarding.attach('{v1}');"
    ))
    .unwrap();
    let stripe = &env().stripe;
    stripe.set_restricted_key(RESTRICTED_KEY, [Permission::CustomerWrite, Permission::EventRead])?;
    let log_before = env().cluster.server_log().len();
    set_and_reload(&mut db, &format!("onboarding.stripe_api_key = '{RESTRICTED_KEY}'"));
    let result = (|| {
        let warning = wait_for("the worker to name the permission /v2 needs", DEADLINE, || {
            let log = env().cluster.server_log();
            log[log_before..]
                .lines()
                .find(|l| l.contains("WARNING") && l.contains("accounts_v2 tables' jobs wait"))
                .map(str::to_string)
        })?;
        ensure(warning.contains("rak_connected_account_write") && warning.contains("/v2/core/accounts"), || {
            format!("the warning names no permission: {warning}")
        })?;
        let customer: String = db
            .query_one(&format!("INSERT INTO {v1} (email) VALUES ('v1@example.com') RETURNING id::text"), &[])?
            .get(0);
        wait_for_customer(&mut db, v1, &customer)?;
        let user = insert(&mut db, &v2, "v2@example.com", "buyer");
        wait_for("the v2 job to wait for the key", DEADLINE, || {
            events_for(&mut db, &user)
                .iter()
                .any(|(step, detail)| {
                    step == "postponed" && detail["reason"].as_str().is_some_and(|r| r.contains("/v2"))
                })
                .then_some(())
        })?;
        let waiting = jobs_for(&mut db, &user).into_iter().next().ok_or("no job")?;
        ensure(waiting.state == "pending" && waiting.attempts == 0, || format!("{waiting:?}"))?;
        ensure(v2_accounts_for(&user).is_empty(), || "an Account was made".into())?;
        // Where an operator's dashboard reads (onboarding_stats_workers_key_v2_refused).
        let v2_refused = |db: &mut Client| -> f64 {
            db.query_one(
                "SELECT value::float8 FROM onboarding.stats WHERE metric = 'workers whose key may not call /v2'",
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(-1.0)
        };
        wait_for("the stats to count the worker", DEADLINE, || (v2_refused(&mut db) >= 1.0).then_some(()))?;

        let may = [
            Permission::CustomerWrite,
            Permission::EventRead,
            Permission::ConnectedAccountWrite,
            Permission::AccountLinkWrite,
        ];
        stripe.set_restricted_key(RESTRICTED_KEY, may)?;
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
        wait_for_account(&mut db, &v2, &user)?;
        let job = jobs_for(&mut db, &user).into_iter().next().ok_or("no job")?;
        ensure(job.attempts == 1 && job.last_error.is_none(), || format!("attempts were spent meanwhile: {job:?}"))?;
        let still = v2_refused(&mut db);
        ensure(still == 0.0, || format!("{still} workers still counted as refused /v2"))?;
        let log = env().cluster.server_log();
        ensure(!log.contains(RESTRICTED_KEY), || "the restricted key is in the server log".into())
    })();
    set_and_reload(&mut db, &format!("onboarding.stripe_api_key = '{API_KEY}'"));
    stripe.remove_restricted_key(RESTRICTED_KEY);
    result
}

/// A profile's Account changed in the Dashboard (its contact email, then closed) goes through the
/// table's change policy as a v1 customer does; the extension's own changes (the email sync) are
/// not read back as changes.
fn dashboard_changes_go_through_the_tables_change_policy() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_dashboard", "");
    db.batch_execute(&format!(
        "SELECT onboarding.set_stripe_change_policy('{table}', customer_deleted => 'recreate', email_changed => 'update_profile')"
    ))
    .unwrap();
    with_fast_event_polls(&mut db, |db| {
        let user = insert(db, &table, "first@example.com", "buyer");
        let account = wait_for_account(db, &table, &user)?;
        // The extension's own email sync: Stripe's thin event carries its job's key.
        db.execute(&format!("UPDATE {table} SET email = 'synced@example.com' WHERE id::text = $1"), &[&user])?;
        wait_for("the email sync", DEADLINE, || {
            (v2_accounts_for(&user)[0]["contact_email"] == "synced@example.com").then_some(())
        })?;
        let changes = |db: &mut Client| -> i64 {
            db.query_one("SELECT count(*) FROM onboarding.customer_changes WHERE customer_id = $1", &[&account])
                .unwrap()
                .get(0)
        };

        // Changed in the Dashboard: the table copies Stripe's email to the profile.
        env().stripe.dashboard_set_v2_contact_email(&account, Some("dashboard@example.com"))?;
        wait_for("the profile to take Stripe's email", DEADLINE, || {
            let email: Option<String> =
                db.query_one(&format!("SELECT email FROM {table} WHERE id::text = $1"), &[&user]).unwrap().get(0);
            (email.as_deref() == Some("dashboard@example.com")).then_some(())
        })?;
        ensure(changes(db) == 1, || "the Dashboard's change was not recorded once".into())?;

        // Closed in the Dashboard: the table recreates it, a new Account.
        ensure(env().stripe.dashboard_close_v2_account(&account), || "the test server did not close it".into())?;
        let recreated = wait_for("the recreated Account", DEADLINE, || {
            column(db, &table, "stripe_account_id", &user).filter(|id| *id != account)
        })?;
        let live: Vec<Value> = v2_accounts_for(&user).into_iter().filter(|a| a["closed"] != true).collect();
        ensure(live.len() == 1 && live[0]["id"] == recreated.as_str(), || format!("live Accounts {live:?}"))?;
        let outcomes: Vec<String> = events_for(db, &user)
            .into_iter()
            .filter(|(step, _)| step.starts_with("stripe_customer_"))
            .map(|(step, detail)| format!("{step}: {}", detail["outcome"].as_str().unwrap_or_default()))
            .collect();
        ensure(
            outcomes == ["stripe_customer_updated: profile email updated", "stripe_customer_deleted: recreated"],
            || format!("outcomes {outcomes:?}"),
        )
    })
}

/// A hostile tenant (she owns her accounts_v2 table) writes another table's Account into her
/// profile's columns: her email change, her link request and her deletion reach nothing of it
/// (the extension acts on an Account only for the profile it made it for: sql/ties.sql).
fn a_tenant_naming_anothers_account_reaches_nothing_of_it() -> Result<(), Failed> {
    let mut db = db();
    let victims = v2_table(
        &mut db,
        "profiles_v2_victims",
        ", connect_account_column => 'stripe_connect_account_id', connect_policy => 'always'",
    );
    let victim = insert(&mut db, &victims, "victim@example.com", "seller");
    let target = wait_for("the victim's connected Account", DEADLINE, || {
        column(&mut db, &victims, "stripe_connect_account_id", &victim)
    })?;
    let hers = "tenant_objects_v2.profiles";
    helpers::tenant_table(&mut db, "tenant_objects_v2", hers, ", stripe_account_id text", "");
    db.batch_execute(&format!(
        "SELECT onboarding.attach('{hers}', stripe_objects => 'accounts_v2',
                                  connect_account_column => 'stripe_connect_account_id');"
    ))
    .unwrap();
    let attacker: String = db
        .query_one(&format!("INSERT INTO {hers} (email) VALUES ('attacker@example.com') RETURNING id::text"), &[])?
        .get(0);
    wait_for_account(&mut db, hers, &attacker)?;
    db.batch_execute("SET ROLE tenant_objects_v2").unwrap();
    db.execute(
        &format!(
            "UPDATE {hers} SET stripe_account_id = $2, stripe_connect_account_id = $2,
                               email = 'attacker+owned@example.com' WHERE id::text = $1"
        ),
        &[&attacker, &target],
    )?;
    db.batch_execute("RESET ROLE").unwrap();
    let refused = |db: &mut Client| -> Vec<String> {
        db.query(
            "SELECT detail->>'action' FROM onboarding.events WHERE user_id = $1 AND step = 'untied_object_refused'",
            &[&attacker],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    wait_for("the email sync refused", DEADLINE, || Some(refused(&mut db)).filter(|r| !r.is_empty()))?;
    let link = db.query(
        "SELECT onboarding.create_account_link($1, 'https://example.com/r', 'https://example.com/b',
                                               profile_table => $2::text::regclass)",
        &[&attacker, &hers],
    );
    ensure(link.is_err(), || "she got a link to the victim's Account".into())?;
    db.execute(&format!("DELETE FROM {hers} WHERE id::text = $1"), &[&attacker])?;
    // Her own Account (now named by no profile) is hers to lose; the victim's stays as it was.
    let untouched = || {
        let a = env().stripe.v2_accounts().into_iter().find(|a| a["id"] == target.as_str()).unwrap_or_default();
        a["closed"] == false && a["contact_email"] == "victim@example.com"
    };
    let actions = refused(&mut db);
    ensure(untouched(), || format!("the victim's Account was changed; refusals {actions:?}"))?;
    ensure(actions.iter().any(|a| a == "email sync") && actions.iter().any(|a| a == "account link"), || {
        format!("refusals {actions:?}")
    })?;
    let posts_to_target = requests_on(&target)
        .iter()
        .filter(|r| r.method == "POST" && r.path != format!("/v2/core/accounts/{target}"))
        .count();
    ensure(posts_to_target == 0, || format!("{posts_to_target} requests closed or linked the victim's Account"))
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
