//! Audits and reconcile over v2 Accounts.

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use super::{column, insert, v2_accounts_for, v2_table, wait_for_account};
use crate::env;
use crate::helpers::{DEADLINE, db, ensure, wait_for};

pub(super) fn tests() -> Vec<Trial> {
    trials![audits_and_reconcile_cover_v2_accounts,]
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
