//! A hostile owner of an accounts_v2 table, a key that may not call /v2, and a tenant naming
//! another's Account.

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use stripe_emulator::Permission;

use super::{column, insert, requests_on, v1_table, v2_accounts_for, v2_table, wait_for_account};
use crate::env;
use crate::helpers::{
    self, API_KEY, DEADLINE, db, ensure, events_for, jobs_for, set_and_reload, wait_for, wait_for_customer,
};

pub(super) fn tests() -> Vec<Trial> {
    trials![
        an_accounts_v2_table_owners_code_runs_with_her_rights_only,
        a_key_that_may_not_call_v2_holds_back_v2_tables_only,
        a_tenant_naming_anothers_account_reaches_nothing_of_it,
    ]
}

const RESTRICTED_KEY: &str = "rk_test_onboardingE2Ev2restricted3b1d";

/// A restricted key with customers' permissions but not the connected accounts' (which the test
/// server, as Stripe is assumed to, asks of `/v2/core/accounts`): the worker names the missing
/// permission once; a v1 table's customers go on, an accounts_v2 table's jobs wait without
/// spending an attempt, and go through once the key may.
fn a_key_that_may_not_call_v2_holds_back_v2_tables_only() -> Result<(), Failed> {
    let mut db = db();
    let v2 = v2_table(&mut db, "profiles_v2_restricted", "");
    let v1 = &v1_table(&mut db, "profiles_v2_restricted_v1");
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

/// The hostile owner of tenant.rs, her table attached with `accounts_v2`: the Account's write-back
/// and the Connect column's and her condition run her code as her only.
fn an_accounts_v2_table_owners_code_runs_with_her_rights_only() -> Result<(), Failed> {
    crate::tenant::owners_code_runs_with_her_rights_only(
        ", stripe_objects => 'accounts_v2', customer_column => 'stripe_customer_id'",
    )
}
