//! A `stripe_request` event tells when its request was sent, not when it was claimed: under the
//! rate budget a call may wait seconds for its slot, and `sequence()` and the Stripe-call metrics
//! read the event's time.

use std::time::{Duration, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};

use crate::env;
use crate::helpers::{
    DEADLINE, db, ensure, insert_profile, profiles_table, set_and_reload, wait_for, wait_for_customer,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![a_request_event_is_timed_when_the_budget_lets_it_go, a_late_call_moves_its_own_attempts_event_only]
}

/// Three signups committed together under a budget of two requests a second go out about half a
/// second apart; each one's stripe_request event is within 100 ms of the request's arrival at the
/// test server (before, the last one's was logged about a second early, at the claim).
fn a_request_event_is_timed_when_the_budget_lets_it_go() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_request_times");
    set_and_reload(&mut db, "onboarding.rate_limit = 2");
    set_and_reload(&mut db, "onboarding.rate_burst = 1");
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
    set_and_reload(&mut db, "onboarding.rate_limit = 0");
    set_and_reload(&mut db, "onboarding.rate_burst = 5");
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

/// A call recorded late (its lease overran, the job was claimed again meanwhile) moves its own
/// attempt's stripe_request event, not the newer attempt's (before, the job's latest was moved).
fn a_late_call_moves_its_own_attempts_event_only() -> Result<(), Failed> {
    let mut db = db();
    let job: i64 = db.query_one("SELECT -(extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[]).unwrap().get(0);
    db.execute(
        "INSERT INTO onboarding.events (job_id, user_id, step, at, detail)
         SELECT $1, 'late-call-user', 'stripe_request', now() - interval '1 minute' * (3 - a), jsonb_build_object('attempt', a)
           FROM generate_series(1, 2) a",
        &[&job],
    )
    .unwrap();
    let sent = 1_000_000_000.0f64; // 2001-09-09: unmistakable
    db.execute("SELECT onboarding._requests_sent(ARRAY[$1::bigint], ARRAY[1], ARRAY[$2::float8])", &[&job, &sent])
        .unwrap();
    let rows = db
        .query(
            "SELECT (detail->>'attempt')::int, extract(epoch FROM at)::float8 FROM onboarding.events
              WHERE job_id = $1 ORDER BY id",
            &[&job],
        )
        .unwrap();
    let at: Vec<(i32, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    db.execute("DELETE FROM onboarding.events WHERE job_id = $1", &[&job]).unwrap();
    ensure(at.len() == 2 && at[0] == (1, sent) && at[1].0 == 2 && at[1].1 != sent, || {
        format!("attempt 1's event should have moved, attempt 2's not: {at:?}")
    })
}
