//! A `stripe_request` event tells when its request was sent, not when it was claimed: under the
//! rate budget a call may wait seconds for its slot, and `sequence()` and the Stripe-call metrics
//! read the event's time.

use std::time::{Duration, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};

use crate::env;
use crate::helpers::{DEADLINE, db, ensure, insert_profile, profiles_table, wait_for, wait_for_customer};

pub(crate) fn tests() -> Vec<Trial> {
    trials![a_request_event_is_timed_when_the_budget_lets_it_go]
}

fn set(db: &mut postgres::Client, setting: &str) {
    db.batch_execute(&format!("ALTER SYSTEM SET {setting}")).unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// Three signups committed together under a budget of two requests a second go out about half a
/// second apart; each one's stripe_request event is within 100 ms of the request's arrival at the
/// test server (before, the last one's was logged about a second early, at the claim).
fn a_request_event_is_timed_when_the_budget_lets_it_go() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_request_times");
    set(&mut db, "onboarding.rate_limit = 2");
    set(&mut db, "onboarding.rate_burst = 1");
    // Once the worker says so, the budget holds (2 a second less one burst slot: 1.96/s).
    wait_for("the worker to take the budget", DEADLINE, || {
        env().cluster.server_log().contains("rate budget 1.96/s").then_some(())
    })?;
    let mut tx = db.transaction().unwrap();
    let users: Vec<String> =
        (0..3).map(|i| insert_profile(&mut tx, &table, Some(&format!("timed{i}@example.com")))).collect();
    tx.commit().unwrap();
    let provisioned: Result<Vec<String>, Failed> =
        users.iter().map(|user| wait_for_customer(&mut db, &table, user)).collect();
    set(&mut db, "onboarding.rate_limit = 0");
    set(&mut db, "onboarding.rate_burst = 5");
    provisioned?;
    let arrivals = env().stripe.requests();
    let mut waited = Duration::ZERO;
    for user in &users {
        let arrived = arrivals
            .iter()
            .find(|r| {
                r.method == "POST" && r.path == "/v1/customers" && r.params["metadata"]["user_id"] == user.as_str()
            })
            .ok_or_else(|| format!("no request for {user}"))?
            .arrived_at
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let row = db
            .query_one(
                "SELECT extract(epoch FROM at)::float8, extract(epoch FROM (detail->>'queued_at')::timestamptz)::float8
                   FROM onboarding.events WHERE user_id = $1 AND step = 'stripe_request'",
                &[user],
            )
            .unwrap();
        let (logged, queued): (f64, Option<f64>) = (row.get(0), row.get(1));
        ensure((logged - arrived).abs() < 0.1, || {
            format!("{user}: stripe_request at {logged:.3}, the request arrived at {arrived:.3}")
        })?;
        waited = waited.max(Duration::from_secs_f64((logged - queued.unwrap_or(logged)).max(0.0)));
    }
    // The budget did hold one back (else this test shows nothing).
    ensure(waited >= Duration::from_millis(400), || format!("the longest budget wait was only {waited:?}"))
}
