//! Claims start in each lane after the last job claimed there (core's claim_cursor), past the dead
//! entries a held snapshot keeps. A job that sorts before that point still goes at once: a
//! profile inserted, or a job enqueued, by a transaction that began before later signups were
//! claimed. (The poll interval here is a minute: only the worker's own bookkeeping, not a
//! periodic full scan, can find them within the deadline.)

use libtest_mimic::{Failed, Trial};

use crate::helpers::{db, insert_profile, profiles_table, wait_for_customer};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        a_profile_inserted_by_an_old_transaction_is_provisioned_after_later_ones,
        a_job_enqueued_by_an_old_transaction_is_claimed_after_later_ones,
        signups_go_through_while_a_snapshot_is_held
    ]
}

/// Provisions a few profiles inserted now, so that the worker's cursor moves past the start of a
/// transaction opened before them.
fn provision_later_signups(db: &mut postgres::Client, table: &str) -> Result<(), Failed> {
    let later: Vec<String> =
        (0..3).map(|i| insert_profile(db, table, Some(&format!("later{i}@example.com")))).collect();
    for user in &later {
        wait_for_customer(db, table, user)?;
    }
    Ok(())
}

fn a_profile_inserted_by_an_old_transaction_is_provisioned_after_later_ones() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_cursor_insert");
    let mut old = crate::helpers::db();
    let mut old_tx = old.transaction().unwrap();
    old_tx.batch_execute("SELECT now()").unwrap(); // its start time is fixed now
    provision_later_signups(&mut db, &table)?;
    let user = insert_profile(&mut old_tx, &table, Some("old-insert@example.com"));
    old_tx.commit().unwrap();
    wait_for_customer(&mut db, &table, &user).map(|_| ())
}

fn a_job_enqueued_by_an_old_transaction_is_claimed_after_later_ones() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_cursor_enqueue");
    // A profile from before the trigger: no job until enqueue_customer.
    let user: String = {
        let mut tx = db.transaction().unwrap();
        tx.batch_execute("SET LOCAL session_replication_role = replica").unwrap();
        let user = insert_profile(&mut tx, &table, Some("enqueued-late@example.com"));
        tx.commit().unwrap();
        user
    };
    let mut old = crate::helpers::db();
    let mut old_tx = old.transaction().unwrap();
    old_tx.batch_execute("SELECT now()").unwrap();
    provision_later_signups(&mut db, &table)?;
    // Its job is due from this transaction's start, before the later signups' jobs.
    old_tx.query_one("SELECT onboarding.enqueue_customer($1, $2::text::regclass)", &[&user, &table]).unwrap();
    old_tx.commit().unwrap();
    wait_for_customer(&mut db, &table, &user).map(|_| ())
}

/// The queue keeps working while another session holds a REPEATABLE READ snapshot (no dead row of
/// the queue can be removed meanwhile): every profile of a flood gets its customer, and a
/// signup after the flood too.
fn signups_go_through_while_a_snapshot_is_held() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_cursor_snapshot");
    let mut holder = crate::helpers::db();
    holder.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM onboarding.jobs").unwrap();
    db.batch_execute(&format!(
        "INSERT INTO {table} (email) SELECT 'flood-' || g || '@example.com' FROM generate_series(1, 500) g"
    ))
    .unwrap();
    let users: Vec<String> =
        db.query(&format!("SELECT id::text FROM {table}"), &[]).unwrap().iter().map(|r| r.get(0)).collect();
    for user in &users {
        wait_for_customer(&mut db, &table, user)?;
    }
    let after = insert_profile(&mut db, &table, Some("after-flood@example.com"));
    let provisioned = wait_for_customer(&mut db, &table, &after).map(|_| ());
    holder.batch_execute("COMMIT").unwrap();
    provisioned
}
