//! Stripe's limits, all of them (docs.stripe.com/rate-limits): all requests together, each
//! endpoint apart (25 a second by default: `POST /v1/customers` is one endpoint) and search. The
//! test server enforces them as Stripe does, so a budget that ignores one shows as a 429.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::env;
use crate::helpers::{db, ensure, profiles_table, set_and_reload, wait_for};

pub(crate) fn tests() -> Vec<Trial> {
    trials![a_flood_of_signups_stays_under_each_endpoints_limit]
}

/// Stripe's live limits at the test server (100 a second in all, 25 per endpoint), a global budget
/// of 90 and the per-endpoint budget at its default: 150 signups in one commit are created without
/// a single 429. Before the fix only the global budget was kept, and `POST /v1/customers` went out
/// at over 80 a second: Stripe's per-endpoint limit answered 429s.
fn a_flood_of_signups_stays_under_each_endpoints_limit() -> Result<(), Failed> {
    const SIGNUPS: i64 = 150;
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_endpoint_limit");
    let stripe = &env().stripe;
    stripe.enforce_stripe_live_limits();
    let log_before = env().cluster.server_log().len();
    set_and_reload(&mut db, "onboarding.rate_limit = 90");
    set_and_reload(&mut db, "onboarding.endpoint_rate_limit = -1"); // its default, Stripe's 25 less one
    let result = (|| {
        wait_for("the worker to take the budgets", Duration::from_secs(20), || {
            let log = env().cluster.server_log();
            log[log_before..]
                .lines()
                .any(|l| {
                    l.contains("Stripe client ready")
                        && l.contains("rate budget 84.28/s")
                        && !l.contains("each endpoint off")
                })
                .then_some(())
        })?;
        stripe.clear_requests();
        db.execute(
            &format!("INSERT INTO {table} (email) SELECT 'flood' || n || '@example.com' FROM generate_series(1, $1::bigint) n"),
            &[&SIGNUPS],
        )?;
        wait_for("every signup's customer", Duration::from_secs(60), || {
            let left: i64 = db
                .query_one(&format!("SELECT count(*) FROM {table} WHERE stripe_customer_id IS NULL"), &[])
                .unwrap()
                .get(0);
            (left == 0).then_some(())
        })?;
        let refused = stripe.rate_limited();
        ensure(refused.is_empty(), || {
            format!("Stripe answered 429 to {} requests: {:?}", refused.len(), &refused[..refused.len().min(5)])
        })
    })();
    stripe.set_rate_limit(None);
    stripe.set_endpoint_rate_limit(None);
    stripe.set_search_rate_limit(None);
    set_and_reload(&mut db, "onboarding.rate_limit = 0");
    set_and_reload(&mut db, "onboarding.endpoint_rate_limit = 0");
    result
}
