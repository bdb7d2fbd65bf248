//! Nothing waits behind a locked profile row or table: a write-back that finds its row (or its
//! table) held by another transaction keeps its object and tries again later, without a second
//! Stripe call, while every other profile goes through.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use stripe_emulator::Fault;

use crate::env;
use crate::helpers::{
    DEADLINE, customer_id, db, ensure, events_for, insert_profile, profiles_table, steps, stripe_customers_for,
    stripe_requests_for, wait_for, wait_for_customer,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![a_locked_profile_row_holds_up_only_its_own_job, a_locked_table_holds_up_only_its_own_jobs]
}

/// Long enough for others to go through, short next to a row held for minutes.
const OTHERS_DEADLINE: Duration = Duration::from_secs(5);

/// Inserts a profile into `table` whose Stripe call is held at Stripe for 1.5 s, has another
/// session take `lock` (SQL for the profile's id, in a transaction left open) meanwhile, and waits
/// for Stripe's answer: the worker is then writing the customer back into what is held. Returns the
/// profile's id and the holding session (`COMMIT` releases the lock).
fn provision_into_a_held_lock(
    db: &mut Client,
    table: &str,
    lock: impl FnOnce(&str) -> String,
) -> Result<(String, Client), Failed> {
    env().stripe.inject(Fault::stall(Duration::from_millis(1500)).on("POST", "/v1/customers").times(1));
    let user = insert_profile(db, table, Some("held@example.com"));
    wait_for("its request to reach Stripe", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;
    let mut holder = env().cluster.connect();
    holder.batch_execute(&format!("BEGIN; {}", lock(&user))).unwrap();
    wait_for("Stripe's answer for it", DEADLINE, || {
        stripe_requests_for(&user).iter().any(|r| r.status == Some(200)).then_some(())
    })?;
    Ok((user, holder))
}

/// Five new profiles of `table`, each provisioned within [`OTHERS_DEADLINE`].
fn others_go_through(db: &mut Client, table: &str) -> Result<(), Failed> {
    let others: Vec<String> =
        (0..5).map(|i| insert_profile(db, table, Some(&format!("free-{i}@example.com")))).collect();
    for user in &others {
        wait_for(&format!("a customer for {user} while something else is locked"), OTHERS_DEADLINE, || {
            customer_id(db, table, user)
        })?;
    }
    Ok(())
}

/// Once released, the held profile gets the customer Stripe made for it, with no second call.
fn provisioned_once_released(db: &mut Client, table: &str, user: &str, mut holder: Client) -> Result<(), Failed> {
    let steps_so_far = steps(&events_for(db, user)).join(", ");
    ensure(steps_so_far.contains("postponed"), || format!("steps of the held profile: {steps_so_far}"))?;
    holder.batch_execute("COMMIT").unwrap();
    let customer = wait_for_customer(db, table, user)?;
    let creations = stripe_requests_for(user).into_iter().filter(|r| r.method == "POST").count();
    let customers = stripe_customers_for(user);
    ensure(creations == 1 && customers.len() == 1 && customers[0]["id"] == customer.as_str(), || {
        format!("{creations} creation(s) for the held profile; Stripe holds {customers:?}, the profile {customer}")
    })
}

fn a_locked_profile_row_holds_up_only_its_own_job() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_locked");
    let (held, holder) = provision_into_a_held_lock(&mut db, &table, |user| {
        format!("SELECT 1 FROM {table} WHERE id = '{user}' FOR UPDATE")
    })?;
    others_go_through(&mut db, &table)?;
    ensure(customer_id(&mut db, &table, &held).is_none(), || "the locked row was written".into())?;
    provisioned_once_released(&mut db, &table, &held, holder)
}

/// `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` (what ALTER TABLE and VACUUM FULL take) on one attached
/// table while its profile's customer is being created: other tables' profiles go through.
fn a_locked_table_holds_up_only_its_own_jobs() -> Result<(), Failed> {
    let mut db = db();
    let locked_table = profiles_table(&mut db, "profiles_table_locked");
    let free_table = profiles_table(&mut db, "profiles_table_free");
    let (held, holder) = provision_into_a_held_lock(&mut db, &locked_table, |_| {
        format!("LOCK TABLE {locked_table} IN ACCESS EXCLUSIVE MODE")
    })?;
    others_go_through(&mut db, &free_table)?;
    wait_for("its write-back to be postponed", DEADLINE, || {
        steps(&events_for(&mut db, &held)).contains(&"postponed").then_some(())
    })?;
    provisioned_once_released(&mut db, &locked_table, &held, holder)
}
