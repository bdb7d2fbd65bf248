//! Failures and retries: backoff, parking, idempotency, timeouts, lost workers and leases, cancel and retry.

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use serde_json::Value;
use stripe_emulator::Fault;

use crate::env;
use crate::helpers::plant_running_job;
use crate::helpers::{
    DEADLINE, REQUEST_TIMEOUT, created_then_lost, customer_id, db, ensure, events_for, insert_profile, jobs_for,
    only_job, profiles_table, sqlstate, steps, stripe_customers_for, stripe_requests_for, wait_for, wait_for_customer,
    wait_for_state, while_worker_is_busy, worker_pid,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        transient_failures_are_recorded_and_retried_with_one_idempotency_key,
        bad_requests_are_parked_then_retry_dead_and_retry_requeue_them,
        retries_resend_the_first_request_even_if_the_email_changed,
        idempotency_error_is_resolved_by_looking_the_customer_up,
        job_past_the_idempotency_horizon_adopts_the_existing_customer,
        pending_job_can_be_cancelled_and_retried,
        profile_without_email_is_parked_without_a_call,
        stuck_call_times_out_and_is_retried,
        terminated_worker_exits_promptly_restarts_and_finishes_the_job,
        overrun_lease_is_taken_back_and_late_results_refused,
        a_live_pid_that_did_not_claim_a_job_does_not_hold_it,
    ]
}

fn transient_failures_are_recorded_and_retried_with_one_idempotency_key() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_transient");
    let stripe = &env().stripe;
    stripe.inject(Fault::status(503).on("POST", "/v1/customers").times(1));
    stripe.inject(Fault::rate_limit().on("POST", "/v1/customers").times(1));
    stripe.inject(Fault::drop_before().on("POST", "/v1/customers").times(1));
    // Executed by Stripe, but the answer is lost: the retry must replay it, not create another.
    stripe.inject(Fault::drop_after().on("POST", "/v1/customers").times(1));
    let user = insert_profile(&mut db, &table, Some("flaky@example.com"));

    let customer = wait_for_customer(&mut db, &table, &user)?;
    let job = only_job(&mut db, &user)?;
    ensure(job.state == "succeeded" && job.attempts == 5, || format!("{job:?}"))?;
    ensure(job.last_error.is_some(), || "the failures left no last_error".into())?;

    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let requests = stripe_requests_for(&user);
    ensure(requests.len() == 5, || format!("expected 5 requests, got {requests:?}"))?;
    ensure(requests.iter().all(|r| r.idempotency_key.as_deref() == Some(job.idempotency_key.as_str())), || {
        "retries used different idempotency keys".into()
    })?;
    ensure(requests[4].replayed, || "the last attempt was not an idempotent replay".into())?;

    let events = events_for(&mut db, &user);
    let failures: Vec<&Value> = events.iter().filter(|(s, _)| s == "failed").map(|(_, d)| d).collect();
    ensure(failures.len() == 4, || format!("expected 4 failed events, got {:?}", steps(&events)))?;
    for (failure, (status, request)) in failures.iter().zip([(503, &requests[0]), (429, &requests[1])]) {
        ensure(failure["status"] == status && failure["request_id"] == request.request_id.as_deref().unwrap(), || {
            format!("failure {failure} vs request {request:?}")
        })?;
    }
    ensure(failures[2]["kind"] == "transport" && failures[3]["kind"] == "transport", || format!("{failures:?}"))?;
    ensure(steps(&events).last() == Some(&"written_back"), || format!("steps {:?}", steps(&events)))
}

fn bad_requests_are_parked_then_retry_dead_and_retry_requeue_them() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_bad_request");
    for code in ["parameter_invalid_empty", "email_invalid"] {
        env().stripe.inject(Fault::status(400).on("POST", "/v1/customers").code(code).message("Invalid email address"));
    }
    let users: Vec<String> = (0..2).map(|_| insert_profile(&mut db, &table, Some("rejected@example.com"))).collect();
    let mut jobs = Vec::new();
    for user in &users {
        let job = wait_for_state(&mut db, user, "dead")?;
        ensure(job.attempts == 1, || format!("a 400 was retried: {job:?}"))?;
        let requests = stripe_requests_for(user);
        ensure(requests.len() == 1, || format!("{requests:?}"))?;
        let error = job.last_error.clone().unwrap_or_default();
        let request_id = requests[0].request_id.clone().unwrap();
        for needle in ["400", "Invalid email address", request_id.as_str()] {
            ensure(error.contains(needle), || format!("last_error {error:?} lacks {needle:?}"))?;
        }
        ensure(customer_id(&mut db, &table, user).is_none(), || "a customer was written".into())?;
        jobs.push(job);
    }

    // retry_dead(code) picks only the jobs that failed with that code.
    let retried: Vec<(i64, String)> = db
        .query("SELECT id, user_id FROM onboarding.retry_dead('email_invalid')", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ensure(retried.len() == 1, || format!("retry_dead('email_invalid') retried {retried:?}"))?;
    let (retried_id, retried_user) = retried[0].clone();
    wait_for_customer(&mut db, &table, &retried_user)?;
    let other = users.iter().find(|u| **u != retried_user).unwrap();
    ensure(only_job(&mut db, other)?.state == "dead", || "retry_dead retried a job with another code".into())?;

    // retry(id) for the other one; refused for jobs that are not dead or cancelled.
    let other_id: i64 = db.query_one("SELECT id FROM onboarding.jobs WHERE user_id = $1", &[other]).unwrap().get(0);
    let state: String = db.query_one("SELECT state FROM onboarding.retry($1)", &[&other_id]).unwrap().get(0);
    ensure(state == "pending", || format!("retry returned {state}"))?;
    wait_for_customer(&mut db, &table, other)?;
    let (code, message) = sqlstate(db.query("SELECT * FROM onboarding.retry($1)", &[&retried_id]))?;
    ensure(code == "55000" && message.contains("succeeded"), || format!("retrying a finished job: {code} {message}"))?;
    let (code, _) = sqlstate(db.query("SELECT * FROM onboarding.retry(-1)", &[]))?;
    ensure(code == "P0002", || format!("retrying a missing job: {code}"))?;
    let requests = stripe_requests_for(other);
    ensure(requests.len() == 2 && requests[0].idempotency_key == requests[1].idempotency_key, || {
        format!("a retried job must reuse its idempotency key: {requests:?}")
    })
}

fn retries_resend_the_first_request_even_if_the_email_changed() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_email_change");
    env().stripe.inject(Fault::rate_limit().on("POST", "/v1/customers")); // retried after at least 0.5 s
    let user = insert_profile(&mut db, &table, Some("first@example.com"));
    wait_for("the first attempt", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;
    db.execute(&format!("UPDATE {table} SET email = 'second@example.com' WHERE id::text = $1"), &[&user]).unwrap();
    wait_for_customer(&mut db, &table, &user)?;
    let requests = stripe_requests_for(&user);
    ensure(requests.len() == 2, || format!("{requests:?}"))?;
    ensure(requests.iter().all(|r| r.params == requests[0].params && r.params["email"] == "first@example.com"), || {
        format!("the retry changed its parameters under the same idempotency key: {requests:?}")
    })
}

fn idempotency_error_is_resolved_by_looking_the_customer_up() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_idempotency_error");
    let refused = Fault::status(400)
        .error_type("idempotency_error")
        .message("Keys for idempotent requests can only be used with the same parameters they were first used with.");
    let user = created_then_lost(&mut db, &table, refused);
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).contains(&"adopted"), || format!("steps {:?}", steps(&events)))
}

fn job_past_the_idempotency_horizon_adopts_the_existing_customer() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_horizon");
    let user = created_then_lost(&mut db, &table, Fault::status(400).message("refused for the test"));
    wait_for_state(&mut db, &user, "dead")?;
    ensure(stripe_customers_for(&user).len() == 1, || "the first attempt created nothing".into())?;
    // Two days later: Stripe has forgotten the key, so a plain retry would create a second customer.
    env().stripe.expire_idempotency_keys();
    db.execute("UPDATE onboarding.jobs SET first_attempt_at = now() - interval '2 days' WHERE user_id = $1", &[&user])
        .unwrap();
    db.query("SELECT * FROM onboarding.retry((SELECT id FROM onboarding.jobs WHERE user_id = $1))", &[&user]).unwrap();
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).ends_with(&["adopted", "written_back"]), || format!("steps {:?}", steps(&events)))
}

fn pending_job_can_be_cancelled_and_retried() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_cancel");
    let mut job_id = 0i64;
    let mut user = String::new();
    while_worker_is_busy(&mut db, &table, |db| {
        user = insert_profile(db, &table, Some("cancel@example.com"));
        // The worker turns the insert into a job within milliseconds, even while busy.
        let pending = wait_for("the insert's job", DEADLINE, || jobs_for(db, &user).into_iter().next());
        assert_eq!(pending.map(|job| job.state).ok().as_deref(), Some("pending"));
        let row = db
            .query_one(
                "SELECT id, state FROM onboarding.cancel((SELECT id FROM onboarding.jobs WHERE user_id = $1))",
                &[&user],
            )
            .unwrap();
        job_id = row.get(0);
        assert_eq!(row.get::<_, String>(1), "cancelled");
    })?;
    // The worker has moved on (the decoy is done); a cancelled job is never sent.
    let sentinel = insert_profile(&mut db, &table, Some("sentinel@example.com"));
    wait_for_customer(&mut db, &table, &sentinel)?;
    ensure(stripe_requests_for(&user).is_empty(), || "a cancelled job reached Stripe".into())?;
    let (code, message) = sqlstate(db.query("SELECT * FROM onboarding.cancel($1)", &[&job_id]))?;
    ensure(code == "55000" && message.contains("cancelled"), || format!("cancelling twice: {code} {message}"))?;
    db.query("SELECT * FROM onboarding.retry($1)", &[&job_id]).unwrap();
    wait_for_customer(&mut db, &table, &user)?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events)[..3] == ["enqueued", "cancelled", "retried"], || format!("steps {:?}", steps(&events)))
}

fn profile_without_email_is_parked_without_a_call() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_no_email");
    let user = insert_profile(&mut db, &table, None);
    let job = wait_for_state(&mut db, &user, "dead")?;
    ensure(job.last_error.as_deref() == Some("profile has no email"), || format!("{job:?}"))?;
    ensure(stripe_requests_for(&user).is_empty(), || "a profile without email was sent to Stripe".into())
}

fn stuck_call_times_out_and_is_retried() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_stuck");
    env().stripe.inject(Fault::stall(REQUEST_TIMEOUT * 3).on("POST", "/v1/customers").times(1));
    let user = insert_profile(&mut db, &table, Some("slow@example.com"));
    wait_for_customer(&mut db, &table, &user)?;
    let events = events_for(&mut db, &user);
    let failure = events.iter().find(|(s, _)| s == "failed").map(|(_, d)| d.clone());
    ensure(failure.as_ref().is_some_and(|f| f["transport"] == "timeout"), || format!("events {events:?}"))
}

fn terminated_worker_exits_promptly_restarts_and_finishes_the_job() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_terminate");
    let before = wait_for("the worker", DEADLINE, || worker_pid(&mut db))?;
    env().stripe.inject(Fault::stall(Duration::from_secs(30)).on("POST", "/v1/customers").times(1));
    let user = insert_profile(&mut db, &table, Some("interrupted@example.com"));
    wait_for("the request to reach Stripe", DEADLINE, || (!stripe_requests_for(&user).is_empty()).then_some(()))?;

    // A job whose every attempt so far killed its worker (claimed by a process that is gone, no
    // attempts left): the restarted worker parks it instead of looping.
    let crash_looper = plant_running_job(&mut db, &table, "crash-looper", 6, "2147483647", "now()");
    let terminated_at = Instant::now();
    db.execute("SELECT pg_terminate_backend($1)", &[&before]).unwrap();
    wait_for("the worker to exit", Duration::from_secs(2), || (worker_pid(&mut db) != Some(before)).then_some(()))?;
    let exit = terminated_at.elapsed();
    ensure(exit < Duration::from_millis(1500), || format!("the worker took {exit:?} to exit mid-call"))?;

    let after = wait_for("a restarted worker", DEADLINE, || worker_pid(&mut db))?;
    ensure(after != before, || "the same worker pid".into())?;
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let job = only_job(&mut db, &user)?;
    ensure(job.state == "succeeded" && job.attempts == 2, || format!("{job:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(steps(&events).contains(&"requeued"), || format!("steps {:?}", steps(&events)))?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 1 && customers[0]["id"] == customer.as_str(), || format!("{customers:?}"))?;
    let parked = only_job(&mut db, "crash-looper")?;
    ensure(parked.state == "dead" && parked.last_error.as_deref().is_some_and(|e| e.contains("every attempt")), || {
        format!("crash-looping job {crash_looper}: {parked:?}")
    })
}

/// A worker that is alive but stuck past the lease loses its job, and its late result is refused.
fn overrun_lease_is_taken_back_and_late_results_refused() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_lease");
    let job = plant_running_job(&mut db, &table, "stuck-user", 1, "pg_backend_pid()", "now() - interval '1 hour'");
    // This session plays the stuck worker: alive (its pid is in pg_stat_activity) but past the lease.
    // The operator session plays the worker that takes it back and claims it, in one transaction so
    // that the real worker cannot pick it up in between.
    let mut operator = env().cluster.connect();
    let mut takeover = operator.transaction().unwrap();
    let taken: i32 =
        takeover.query_one("SELECT onboarding._requeue_abandoned(6, interval '5 minutes')", &[]).unwrap().get(0);
    let state: String = takeover.query_one("SELECT state FROM onboarding.jobs WHERE id = $1", &[&job]).unwrap().get(0);
    takeover
        .execute("UPDATE onboarding.jobs SET state = 'running', claimed_by = pg_backend_pid() WHERE id = $1", &[&job])
        .unwrap();
    takeover.commit().unwrap();
    ensure(taken >= 1 && state == "pending", || format!("a job past its lease was not taken back ({taken}, {state})"))?;

    // The stuck worker's late result is refused; the new owner's is taken.
    let finish = "SELECT onboarding._finish_job($1, 'skipped', 'skipped', '{}')";
    let (code, _) = sqlstate(db.query(finish, &[&job]))?;
    ensure(code == "55000", || format!("a late result was accepted: {code}"))?;
    operator.query(finish, &[&job]).unwrap();
    ensure(only_job(&mut db, "stuck-user")?.state == "skipped", || "the new owner's result was lost".into())
}

/// A job is held by the process that claimed it, named by pid and start time: a live process that
/// merely has the same pid (reused, or on a promoted standby) does not keep it for the whole lease.
fn a_live_pid_that_did_not_claim_a_job_does_not_hold_it() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_reused_pid");
    let job = plant_running_job(&mut db, &table, "reused-pid-user", 1, "pg_backend_pid()", "now()");
    // Claimed by "this pid" an hour before this session started: another process with the same pid.
    db.execute(
        "UPDATE onboarding.jobs SET claimer_started_at =
                (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) - interval '1 hour'
          WHERE id = $1",
        &[&job],
    )
    .unwrap();
    let mut tx = db.transaction().unwrap();
    let taken: i32 = tx.query_one("SELECT onboarding._requeue_abandoned(6, interval '5 minutes')", &[]).unwrap().get(0);
    let state: String = tx.query_one("SELECT state FROM onboarding.jobs WHERE id = $1", &[&job]).unwrap().get(0);
    tx.commit().unwrap();
    ensure(taken >= 1 && state == "pending", || {
        format!("a job claimed by an earlier process with a live pid stayed claimed ({taken}, {state})")
    })?;
    // The real claimer, pid and start time, keeps its job.
    let held = plant_running_job(&mut db, &table, "live-claimer-user", 1, "pg_backend_pid()", "now()");
    db.execute(
        "UPDATE onboarding.jobs SET claimer_started_at =
                (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) WHERE id = $1",
        &[&held],
    )
    .unwrap();
    let mut tx = db.transaction().unwrap();
    tx.query_one("SELECT onboarding._requeue_abandoned(6, interval '5 minutes')", &[]).unwrap();
    let state: String = tx.query_one("SELECT state FROM onboarding.jobs WHERE id = $1", &[&held]).unwrap().get(0);
    tx.commit().unwrap();
    ensure(state == "running", || format!("a job of a live claimer was taken back ({state})"))
}
