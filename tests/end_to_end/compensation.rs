//! Compensation: a profile deleted before, during or after its Stripe call leaves no live customer.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use stripe_emulator::Fault;

use crate::env;
use crate::helpers::{
    DEADLINE, created_then_lost, db, ensure, events_for, insert_profile, jobs_for, profiles_table, steps,
    stripe_customers_for, stripe_requests_for, wait_for, wait_for_customer, wait_for_state, while_worker_is_busy,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        profile_deleted_before_the_worker_runs_is_skipped,
        profile_deleted_during_the_stripe_call_orphans_then_deletes_the_customer,
        deleting_a_provisioned_profile_deletes_its_customer_unless_told_not_to,
        profile_deleted_after_a_lost_answer_gets_the_lost_customer_deleted,
    ]
}

fn profile_deleted_before_the_worker_runs_is_skipped() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_deleted");
    let mut user = String::new();
    while_worker_is_busy(&mut db, &table, |db| {
        user = insert_profile(db, &table, Some("gone@example.com"));
        db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    })?;
    let job = wait_for_state(&mut db, &user, "skipped")?;
    ensure(job.stripe_id.is_none(), || format!("{job:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events) == ["enqueued", "claimed", "skipped"], || format!("steps {:?}", steps(&events)))?;
    ensure(events[2].1["reason"] == "profile not found", || format!("{}", events[2].1))?;
    let requests = stripe_requests_for(&user);
    ensure(requests.is_empty(), || format!("Stripe called for a deleted profile: {requests:?}"))
}

fn profile_deleted_during_the_stripe_call_orphans_then_deletes_the_customer() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_vanishing");
    env().stripe.inject(Fault::stall(Duration::from_secs(2)).on("POST", "/v1/customers").times(1));
    let user = insert_profile(&mut db, &table, Some("vanishing@example.com"));
    wait_for("the request to reach Stripe", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();

    // Nothing silently lost: the creation job names the customer that has no profile...
    let job = wait_for_state(&mut db, &user, "orphaned")?;
    let created = job.stripe_id.clone().ok_or("the orphaned job does not name its customer")?;
    ensure(job.last_error.as_deref().is_some_and(|e| e.contains("profile deleted")), || format!("{job:?}"))?;
    // ...and a compensation job deletes it.
    wait_for("the compensation job", DEADLINE, || {
        jobs_for(&mut db, &user).into_iter().find(|j| j.kind == "delete_customer" && j.state == "succeeded")
    })?;
    let live = stripe_customers_for(&user);
    ensure(live.is_empty(), || format!("{created} was not deleted: {live:?}"))?;
    let deletes: Vec<_> = env().stripe.requests().into_iter().filter(|r| r.method == "DELETE").collect();
    ensure(deletes.len() == 1 && deletes[0].path == format!("/v1/customers/{created}"), || format!("{deletes:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(
        steps(&events).ends_with(&[
            "orphaned",
            "enqueued",
            "claimed",
            "stripe_request",
            "stripe_response",
            "compensated",
        ]),
        || format!("steps {:?}", steps(&events)),
    )
}

fn deleting_a_provisioned_profile_deletes_its_customer_unless_told_not_to() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_delete_cascade");
    let user = insert_profile(&mut db, &table, Some("leaving@example.com"));
    let customer = wait_for_customer(&mut db, &table, &user)?;
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    wait_for("the compensation job", DEADLINE, || {
        jobs_for(&mut db, &user).into_iter().find(|j| j.kind == "delete_customer" && j.state == "succeeded")
    })?;
    ensure(stripe_customers_for(&user).is_empty(), || format!("{customer} survived its profile"))?;

    // Not when the setting is off for this session, nor for a customer the extension did not create.
    let kept = insert_profile(&mut db, &table, Some("kept@example.com"));
    wait_for_customer(&mut db, &table, &kept)?;
    let foreign: String = db
        .query_one(
            &format!("INSERT INTO {table} (email, stripe_customer_id) VALUES ('foreign@example.com', 'cus_madeElsewhere') RETURNING id::text"),
            &[],
        )
        .unwrap()
        .get(0);
    db.batch_execute("SET onboarding.delete_customers_with_profiles = off").unwrap();
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&kept]).unwrap();
    db.batch_execute("RESET onboarding.delete_customers_with_profiles").unwrap();
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&foreign]).unwrap();
    // The trigger decides within the DELETE: no compensation job now means none ever.
    for u in [&kept, &foreign] {
        let compensations = jobs_for(&mut db, u).into_iter().filter(|j| j.kind == "delete_customer").count();
        ensure(compensations == 0, || format!("a compensation job for {u}"))?;
    }
    ensure(stripe_customers_for(&kept).len() == 1, || "the kept customer is gone".into())
}

/// Stripe created the customer but the answer was lost; before the retry, the profile is deleted.
/// The job must not just skip: it finds the customer its lost attempt created and deletes it.
fn profile_deleted_after_a_lost_answer_gets_the_lost_customer_deleted() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_lost_then_deleted");
    let user = created_then_lost(&mut db, &table, Fault::rate_limit()); // then a retry at least 0.5 s later
    wait_for("the lost attempt and the rate-limited one", DEADLINE, || {
        (stripe_requests_for(&user).len() == 2).then_some(())
    })?;
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    let job = wait_for_state(&mut db, &user, "skipped")?;
    ensure(stripe_customers_for(&user).is_empty(), || format!("the lost attempt's customer survived: {job:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).last() == Some(&"compensated"), || format!("steps {:?}", steps(&events)))
}
