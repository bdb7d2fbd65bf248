//! Compensation for Accounts: a profile deleted before, during or after its Stripe call leaves no
//! open Account.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use stripe_emulator::Fault;

use crate::env;
use crate::helpers::{
    DEADLINE, db, ensure, events_for, jobs_for, profiles_table, steps, stripe_requests_for, wait_for, wait_for_state,
    while_worker_is_busy,
};

use super::{insert, requests_on, requests_to, v2_accounts_for, v2_table};

pub(super) fn tests() -> Vec<Trial> {
    trials![
        a_profile_deleted_before_the_worker_runs_gets_no_account,
        a_profile_deleted_during_the_call_gets_its_account_closed,
        a_profile_deleted_after_a_lost_answer_gets_the_lost_account_closed,
    ]
}

fn open_accounts_for(user: &str) -> Vec<String> {
    v2_accounts_for(user)
        .into_iter()
        .filter(|a| a["closed"] != true)
        .filter_map(|a| a["id"].as_str().map(String::from))
        .collect()
}

fn a_profile_deleted_before_the_worker_runs_gets_no_account() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_deleted", "");
    // The workers are held by a v1 table's slow calls while the profile comes and goes.
    let decoys = profiles_table(&mut db, "profiles_v2_deleted_decoys");
    let mut user = String::new();
    while_worker_is_busy(&mut db, &decoys, |db| {
        user = insert(db, &table, "gone@example.com", "buyer");
        db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    })?;
    let job = wait_for_state(&mut db, &user, "skipped")?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events) == ["enqueued", "claimed", "skipped"], || format!("steps {:?} ({job:?})", steps(&events)))?;
    ensure(events[2].1["reason"] == "profile not found", || format!("{}", events[2].1))?;
    let requests = stripe_requests_for(&user);
    ensure(requests.is_empty() && v2_accounts_for(&user).is_empty(), || {
        format!("Stripe called for a deleted profile: {requests:?}")
    })
}

fn a_profile_deleted_during_the_call_gets_its_account_closed() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_vanishing", "");
    env().stripe.inject(Fault::stall(Duration::from_secs(2)).on_exact("POST", "/v2/core/accounts").times(1));
    let user = insert(&mut db, &table, "vanishing@example.com", "buyer");
    wait_for("the request to reach Stripe", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();

    // The creation job names the Account that has no profile, and a compensation job closes it.
    let job = wait_for_state(&mut db, &user, "orphaned")?;
    let made = job.stripe_id.clone().ok_or("the orphaned job does not name its Account")?;
    ensure(job.last_error.as_deref().is_some_and(|e| e.contains("profile deleted")), || format!("{job:?}"))?;
    wait_for("the compensation job", DEADLINE, || {
        jobs_for(&mut db, &user).into_iter().find(|j| j.kind == "delete_customer" && j.state == "succeeded")
    })?;
    let open = open_accounts_for(&user);
    ensure(open.is_empty(), || format!("{made} was not closed: open {open:?}"))?;
    let closes = requests_to(&requests_on(&made), "POST", &format!("/v2/core/accounts/{made}/close"));
    ensure(closes == 1, || format!("{closes} close requests"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).contains(&"orphaned") && steps(&events).last() == Some(&"compensated"), || {
        format!("steps {:?}", steps(&events))
    })
}

/// Stripe made the Account but the answer was lost; before the retry the profile is deleted. The
/// job must not just skip: it finds the Account its lost attempt made (by `metadata.user_id`) and
/// closes it.
fn a_profile_deleted_after_a_lost_answer_gets_the_lost_account_closed() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(&mut db, "profiles_v2_lost_then_deleted", "");
    env().stripe.inject(Fault::drop_after().on_exact("POST", "/v2/core/accounts"));
    env().stripe.inject(Fault::rate_limit().on_exact("POST", "/v2/core/accounts"));
    let user = insert(&mut db, &table, "lost@example.com", "buyer");
    wait_for("the lost attempt and the rate-limited one", DEADLINE, || {
        (stripe_requests_for(&user).len() == 2).then_some(())
    })?;
    ensure(v2_accounts_for(&user).len() == 1, || "the lost attempt made no Account".into())?;
    db.execute(&format!("DELETE FROM {table} WHERE id::text = $1"), &[&user]).unwrap();
    let job = wait_for_state(&mut db, &user, "skipped")?;
    let open = open_accounts_for(&user);
    ensure(open.is_empty(), || format!("the lost attempt's Account is open: {open:?} ({job:?})"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).last() == Some(&"compensated"), || format!("steps {:?}", steps(&events)))
}
