//! Customers changed in Stripe outside the extension (the Dashboard): a deletion follows the
//! table's policy (flag by default, or recreate), an email changed there is drift in
//! audit_mismatches unless the table copies it to the profile. Read from Stripe's events.

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::env;
use crate::helpers::{
    DEADLINE, customer_id, db, ensure, handled, insert_profile, jobs_for, profiles_table, sqlstate,
    stripe_customers_for, wait_for, wait_for_customer, with_fast_event_polls,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        a_customer_deleted_in_stripe_is_flagged_by_default,
        a_customer_deleted_in_stripe_is_recreated_when_the_table_says_so,
        an_email_changed_in_stripe_is_drift_unless_the_table_copies_it,
        a_held_table_holds_up_only_its_own_customers_changes,
        two_email_changes_in_one_second_end_with_stripes_own,
    ]
}

/// Runs `test` with the events read every 200 ms, after a poll that began after this call (the
/// emulator starts every test empty: that poll found the stored cursor lost and went on).
fn with_fast_polls(test: impl FnOnce(&mut Client) -> Result<(), Failed>) -> Result<(), Failed> {
    let mut db = db();
    with_fast_event_polls(&mut db, |db| {
        let asked_at: std::time::SystemTime = db.query_one("SELECT now()", &[]).unwrap().get(0);
        db.execute("UPDATE onboarding.events_cursor SET next_poll_at = now()", &[]).unwrap();
        wait_for("a poll after the emulator's reset", DEADLINE, || {
            let polled: Option<std::time::SystemTime> =
                db.query_one("SELECT polled_at FROM onboarding.events_cursor", &[]).unwrap().get(0);
            polled.filter(|at| *at > asked_at).map(|_| ())
        })?;
        test(db)
    })
}

fn mismatches(db: &mut Client, user: &str) -> Vec<(String, String, String)> {
    db.query("SELECT object, stripe_id, problem FROM onboarding.audit_mismatches(false) WHERE user_id = $1", &[&user])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn sequence_lines(db: &mut Client, user: &str, step: &str) -> Vec<String> {
    db.query("SELECT line FROM onboarding.sequence($1) WHERE step = $2", &[&user, &step])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// By default a deleted customer is never recreated behind anyone's back: the profile keeps the
/// ID, and the deletion shows in sequence() and in audit_mismatches at once, even against a
/// snapshot of Stripe taken before it; reconcile then offers to recreate it.
fn a_customer_deleted_in_stripe_is_flagged_by_default() -> Result<(), Failed> {
    with_fast_polls(|db| {
        let table = profiles_table(db, "profiles_deleted_flag");
        let user = insert_profile(db, &table, Some("flag@example.com"));
        let customer = wait_for_customer(db, &table, &user)?;
        db.query_one("SELECT onboarding.refresh_stripe_snapshot()", &[]).unwrap();
        ensure(mismatches(db, &user).is_empty(), || format!("before: {:?}", mismatches(db, &user)))?;

        ensure(env().stripe.dashboard_delete_customer(&customer), || "no customer to delete".into())?;
        let outcome = wait_for("the deletion handled", DEADLINE, || handled(db, &customer))?;
        ensure(outcome == "flagged", || format!("outcome {outcome}"))?;
        ensure(customer_id(db, &table, &user).as_deref() == Some(customer.as_str()), || {
            "the profile's customer ID was cleared".into()
        })?;
        let creations = jobs_for(db, &user).iter().filter(|j| j.kind == "create_customer").count();
        ensure(creations == 1, || format!("{creations} customer creations"))?;
        let found = mismatches(db, &user);
        ensure(found == [("customer".into(), customer.clone(), "missing or deleted in Stripe".into())], || {
            format!("audit_mismatches from the old snapshot: {found:?}")
        })?;
        let lines = sequence_lines(db, &user, "stripe_customer_deleted");
        ensure(lines == [format!("Stripe says customer {customer} was deleted: flagged (audit_mismatches)")], || {
            format!("sequence: {lines:?}")
        })?;
        let actions: Vec<String> = db
            .query("SELECT action FROM onboarding.reconcile(dry_run => true) WHERE user_id = $1", &[&user])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        ensure(actions == ["recreate"], || format!("reconcile would: {actions:?}"))
    })
}

/// With customer_deleted => 'recreate' the ID is cleared and a new customer created, under a new
/// idempotency key; while another transaction holds the profile's row, the change waits (and
/// nothing else does), then goes through.
fn a_customer_deleted_in_stripe_is_recreated_when_the_table_says_so() -> Result<(), Failed> {
    with_fast_polls(|db| {
        let table = profiles_table(db, "profiles_deleted_recreate");
        let said: String = db
            .query_one(
                "SELECT onboarding.set_stripe_change_policy($1::text::regclass, customer_deleted => 'recreate')",
                &[&table],
            )
            .unwrap()
            .get(0);
        ensure(said.contains("deleted in Stripe is recreated; an email changed in Stripe is audited"), || {
            said.clone()
        })?;
        let (code, message) = sqlstate(db.query_one(
            "SELECT onboarding.set_stripe_change_policy($1::text::regclass, customer_deleted => 'destroy')",
            &[&table],
        ))?;
        ensure(code == "22023" && message.contains("flag or recreate"), || format!("{code}: {message}"))?;
        let (code, _) = sqlstate(
            db.query_one("SELECT onboarding.set_stripe_change_policy('pg_class', email_changed => 'audit')", &[]),
        )?;
        ensure(code == "55000", || format!("an unattached table: {code}"))?;

        let user = insert_profile(db, &table, Some("recreate@example.com"));
        let deleted = wait_for_customer(db, &table, &user)?;
        let mut holder = crate::helpers::db();
        let mut lock = holder.transaction().unwrap();
        lock.execute(&format!("SELECT 1 FROM {table} WHERE id::text = $1 FOR UPDATE"), &[&user]).unwrap();
        ensure(env().stripe.dashboard_delete_customer(&deleted), || "no customer to delete".into())?;
        wait_for("the deletion seen, waiting for the row", DEADLINE, || {
            db.query_opt("SELECT FROM onboarding.customer_changes WHERE customer_id = $1 AND NOT handled", &[&deleted])
                .unwrap()
                .map(|_| ())
        })?;
        let other = insert_profile(db, &table, Some("meanwhile@example.com"));
        wait_for_customer(db, &table, &other)?;
        ensure(customer_id(db, &table, &user).as_deref() == Some(deleted.as_str()), || {
            "the locked row was written".into()
        })?;
        lock.commit().unwrap();

        let recreated =
            wait_for("a new customer", DEADLINE, || customer_id(db, &table, &user).filter(|c| *c != deleted))?;
        let live: Vec<String> =
            stripe_customers_for(&user).iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
        ensure(live == [recreated.clone()], || format!("live customers in Stripe: {live:?}"))?;
        let keys: Vec<String> = jobs_for(db, &user)
            .into_iter()
            .filter(|j| j.kind == "create_customer" && j.state == "succeeded")
            .map(|j| j.idempotency_key)
            .collect();
        ensure(keys.len() == 2 && keys[0] != keys[1], || format!("creation keys {keys:?}"))?;
        ensure(handled(db, &deleted).as_deref() == Some("recreated"), || "outcome".into())?;
        let lines = sequence_lines(db, &user, "stripe_customer_deleted");
        ensure(lines == [format!("Stripe says customer {deleted} was deleted: cleared, a new one queued")], || {
            format!("sequence: {lines:?}")
        })
    })
}

/// The profile is the source of truth: an email changed in Stripe is drift in audit_mismatches
/// (from the event, the snapshot being older), and the extension's own sync of a profile's email
/// is not. With email_changed => 'update_profile' Stripe's email goes to the profile instead,
/// and is not sent back to Stripe.
fn an_email_changed_in_stripe_is_drift_unless_the_table_copies_it() -> Result<(), Failed> {
    with_fast_polls(|db| {
        let table = profiles_table(db, "profiles_email_drift");
        let user = insert_profile(db, &table, Some("profile@example.com"));
        let customer = wait_for_customer(db, &table, &user)?;
        db.query_one("SELECT onboarding.refresh_stripe_snapshot()", &[]).unwrap();
        env().stripe.dashboard_set_customer_email(&customer, Some("dashboard@example.com")).unwrap();
        wait_for("the drift in audit_mismatches", DEADLINE, || {
            let found = mismatches(db, &user);
            (found == [("customer".into(), customer.clone(), "email differs: Stripe has dashboard@example.com".into())])
                .then_some(())
        })?;
        ensure(handled(db, &customer).as_deref() == Some("email differs"), || "outcome".into())?;
        let email: Option<String> =
            db.query_one(&format!("SELECT email FROM {table} WHERE id::text = $1"), &[&user]).unwrap().get(0);
        ensure(email.as_deref() == Some("profile@example.com"), || format!("the profile's email became {email:?}"))?;

        // The profile changes; the extension sends it to Stripe; its own event is no drift, known
        // by its job's idempotency key: no look-up in the profiles, no line in sequence().
        db.execute(&format!("UPDATE {table} SET email = 'again@example.com' WHERE id::text = $1"), &[&user]).unwrap();
        wait_for("the synced email read back", DEADLINE, || {
            (handled(db, &customer).as_deref() == Some("synced by this extension") && mismatches(db, &user).is_empty())
                .then_some(())
        })?;
        let lines = sequence_lines(db, &user, "stripe_customer_updated");
        ensure(lines.len() == 1, || format!("Stripe's changes in sequence(): {lines:?}"))?;

        let copied = profiles_table(db, "profiles_email_copied");
        db.query_one(
            "SELECT onboarding.set_stripe_change_policy($1::text::regclass, email_changed => 'update_profile')",
            &[&copied],
        )
        .unwrap();
        let user = insert_profile(db, &copied, Some("before@example.com"));
        let customer = wait_for_customer(db, &copied, &user)?;
        env().stripe.dashboard_set_customer_email(&customer, Some("from-stripe@example.com")).unwrap();
        wait_for("Stripe's email in the profile", DEADLINE, || {
            let email: Option<String> =
                db.query_one(&format!("SELECT email FROM {copied} WHERE id::text = $1"), &[&user]).unwrap().get(0);
            (email.as_deref() == Some("from-stripe@example.com")).then_some(())
        })?;
        ensure(handled(db, &customer).as_deref() == Some("profile email updated"), || "outcome".into())?;
        let synced = jobs_for(db, &user).iter().filter(|j| j.kind == "update_customer_email").count();
        ensure(synced == 0, || format!("{synced} email updates sent back to Stripe"))
    })
}

/// A table another transaction holds (ACCESS EXCLUSIVE) holds up the changes of its own
/// customers only: a deletion in another table is handled meanwhile, even with no job left to say
/// which table made the customer (retention pruned it), and the held table's goes through once it
/// is free.
fn a_held_table_holds_up_only_its_own_customers_changes() -> Result<(), Failed> {
    with_fast_polls(|db| {
        let held = profiles_table(db, "profiles_changes_held"); // the older table: looked in first
        let free = profiles_table(db, "profiles_changes_free");
        let held_user = insert_profile(db, &held, Some("held@example.com"));
        let held_customer = wait_for_customer(db, &held, &held_user)?;
        let user = insert_profile(db, &free, Some("free@example.com"));
        let customer = wait_for_customer(db, &free, &user)?;
        db.execute("DELETE FROM onboarding.jobs WHERE user_id = ANY ($1)", &[&vec![&user, &held_user]]).unwrap();

        let mut locker = crate::helpers::db();
        let mut holding = locker.transaction().unwrap();
        holding.batch_execute(&format!("LOCK TABLE {held} IN ACCESS EXCLUSIVE MODE")).unwrap();
        ensure(env().stripe.dashboard_delete_customer(&held_customer), || "no customer to delete".into())?;
        ensure(env().stripe.dashboard_delete_customer(&customer), || "no customer to delete".into())?;
        let outcome = wait_for("the other table's deletion handled", DEADLINE, || handled(db, &customer))?;
        ensure(outcome == "flagged", || format!("outcome {outcome}"))?;
        ensure(handled(db, &held_customer).is_none(), || "the held table's change was handled".into())?;
        holding.commit().unwrap();
        let outcome = wait_for("the held table's deletion handled", DEADLINE, || handled(db, &held_customer))?;
        ensure(outcome == "flagged", || format!("outcome {outcome}"))
    })
}

/// Two email changes of one customer in the same second: nothing orders two events of one second,
/// so the customer is read from Stripe. Before the fix the later event cancelled the earlier and
/// was itself ignored: no change was recorded at all, and audit_mismatches showed nothing.
fn two_email_changes_in_one_second_end_with_stripes_own() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_same_second");
    let user = insert_profile(&mut db, &table, Some("before@example.com"));
    let customer = wait_for_customer(&mut db, &table, &user)?;
    with_fast_polls(|db| {
        db.query_one("SELECT onboarding.refresh_stripe_snapshot()", &[]).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        env().stripe.set_event_clock(Some(now));
        env().stripe.clear_requests();
        let changes = ["first@example.com", "second@example.com"]
            .map(|email| env().stripe.dashboard_set_customer_email(&customer, Some(email)));
        env().stripe.set_event_clock(None);
        for change in changes {
            change?;
        }
        let recorded = wait_for("the change read from Stripe itself", DEADLINE, || {
            db.query_opt(
                "SELECT stripe_email FROM onboarding.customer_changes
                  WHERE customer_id = $1 AND handled AND NOT refresh_due",
                &[&customer],
            )
            .unwrap()
            .map(|r| r.get::<_, Option<String>>(0))
        })?;
        ensure(recorded.as_deref() == Some("second@example.com"), || format!("recorded {recorded:?}"))?;
        let read =
            env().stripe.requests().iter().any(|r| r.method == "GET" && r.path == format!("/v1/customers/{customer}"));
        ensure(read, || "the customer was not read".into())?;
        let drift = mismatches(db, &user);
        ensure(drift.iter().any(|(_, id, _)| *id == customer), || format!("audit_mismatches: {drift:?}"))
    })
}
