//! Nothing waits behind a locked profile row or table: a write-back that finds its row (or its
//! table) held by another transaction keeps its object and tries again later, without a second
//! Stripe call, while every other profile goes through.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
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

fn a_locked_profile_row_holds_up_only_its_own_job() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_locked");
    // The first profile's call is held at Stripe while another session takes its row.
    env().stripe.inject(Fault::stall(Duration::from_millis(1500)).on("POST", "/v1/customers").times(1));
    let locked = insert_profile(&mut db, &table, Some("locked@example.com"));
    wait_for("its request to reach Stripe", DEADLINE, || (!stripe_requests_for(&locked).is_empty()).then_some(()))?;
    let mut holder = env().cluster.connect();
    let mut held = holder.transaction().unwrap();
    held.query(&format!("SELECT 1 FROM {table} WHERE id::text = $1 FOR UPDATE"), &[&locked]).unwrap();

    // Once Stripe has answered, the worker goes to write the customer back: into the held row.
    wait_for("Stripe's answer for the locked profile", DEADLINE, || {
        stripe_requests_for(&locked).iter().any(|r| r.status == Some(200)).then_some(())
    })?;
    let others: Vec<String> =
        (0..5).map(|i| insert_profile(&mut db, &table, Some(&format!("free-{i}@example.com")))).collect();
    for user in &others {
        wait_for(&format!("a customer for {user} while another row is locked"), OTHERS_DEADLINE, || {
            customer_id(&mut db, &table, user)
        })?;
    }
    ensure(customer_id(&mut db, &table, &locked).is_none(), || "the locked row was written".into())?;
    let steps_so_far = steps(&events_for(&mut db, &locked)).join(", ");
    ensure(steps_so_far.contains("postponed"), || format!("steps of the locked profile: {steps_so_far}"))?;

    held.commit().unwrap();
    let customer = wait_for_customer(&mut db, &table, &locked)?;
    let creations = stripe_requests_for(&locked).into_iter().filter(|r| r.method == "POST").count();
    let customers = stripe_customers_for(&locked);
    ensure(creations == 1 && customers.len() == 1 && customers[0]["id"] == customer.as_str(), || {
        format!("{creations} creation(s) for the locked profile; Stripe holds {customers:?}, the profile {customer}")
    })
}

/// `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` (what ALTER TABLE and VACUUM FULL take) on one attached
/// table while its profile's customer is being created: other tables' profiles go through.
fn a_locked_table_holds_up_only_its_own_jobs() -> Result<(), Failed> {
    let mut db = db();
    let locked_table = profiles_table(&mut db, "profiles_table_locked");
    let free_table = profiles_table(&mut db, "profiles_table_free");
    env().stripe.inject(Fault::stall(Duration::from_millis(1500)).on("POST", "/v1/customers").times(1));
    let locked = insert_profile(&mut db, &locked_table, Some("in-locked-table@example.com"));
    wait_for("its request to reach Stripe", DEADLINE, || (!stripe_requests_for(&locked).is_empty()).then_some(()))?;
    let mut holder = env().cluster.connect();
    let mut held = holder.transaction().unwrap();
    held.batch_execute(&format!("LOCK TABLE {locked_table} IN ACCESS EXCLUSIVE MODE")).unwrap();
    wait_for("Stripe's answer for it", DEADLINE, || {
        stripe_requests_for(&locked).iter().any(|r| r.status == Some(200)).then_some(())
    })?;
    let others: Vec<String> =
        (0..5).map(|i| insert_profile(&mut db, &free_table, Some(&format!("free-table-{i}@example.com")))).collect();
    for user in &others {
        wait_for(&format!("a customer for {user} while another table is locked"), OTHERS_DEADLINE, || {
            customer_id(&mut db, &free_table, user)
        })?;
    }
    wait_for("its write-back to be postponed", DEADLINE, || {
        steps(&events_for(&mut db, &locked)).contains(&"postponed").then_some(())
    })?;
    held.commit().unwrap();
    let customer = wait_for_customer(&mut db, &locked_table, &locked)?;
    let creations = stripe_requests_for(&locked).into_iter().filter(|r| r.method == "POST").count();
    ensure(creations == 1, || format!("{creations} creations for {locked} (customer {customer})"))
}
