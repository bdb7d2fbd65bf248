//! Attaching with `stripe_objects`, the account options' checks, and a v1 and a v2 table side by side.

use libtest_mimic::{Failed, Trial};

use super::{column, insert, v1_table, v2_table, wait_for_account};
use crate::helpers::{DEADLINE, db, ensure, sqlstate, stripe_requests_for, wait_for};

pub(super) fn tests() -> Vec<Trial> {
    trials![attach_and_account_options_are_checked, a_v1_table_and_a_v2_table_work_side_by_side,]
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
    let v1 = &v1_table(&mut db, "profiles_side_v1");
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
    // The audits' snapshot holds both models' objects: neither table's profile is called missing.
    let mismatches: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.audit_mismatches()
              WHERE profile_table IN ($1::text::regclass, $2::text::regclass)",
            &[&v2, &v1],
        )
        .unwrap()
        .get(0);
    ensure(mismatches == 0, || format!("{mismatches} audit lines for the two tables"))?;
    let paths = |user: &str| -> Vec<String> { stripe_requests_for(user).into_iter().map(|r| r.path).collect() };
    ensure(paths(&in_v2) == ["/v2/core/accounts"] && paths(&in_v1) == ["/v1/customers"], || {
        format!("v2 table {:?}, v1 table {:?}", paths(&in_v2), paths(&in_v1))
    })
}
