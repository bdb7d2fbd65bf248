//! Changes both ways: the profile's email and deletion reach its Account; the Dashboard's changes
//! reach the profile through the table's change policy.

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use serde_json::Value;

use super::{column, insert, requests_on, requests_to, v2_accounts_for, v2_table, wait_for_account};
use crate::env;
use crate::helpers::{DEADLINE, db, ensure, events_for, jobs_for, wait_for, wait_for_state, with_fast_event_polls};

pub(super) fn tests() -> Vec<Trial> {
    trials![email_changes_and_deletions_reach_the_account, dashboard_changes_go_through_the_tables_change_policy,]
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
