//! One profile is one key whatever its spelling: user ids given to the application functions are
//! taken in the id column's own text form before they are compared, stored or sent to Stripe.

use libtest_mimic::{Failed, Trial};

use crate::helpers::{DEADLINE, customer_id, db, ensure, jobs_for, stripe_requests_for, wait_for};

pub(crate) fn tests() -> Vec<Trial> {
    trials![spellings_of_a_bigint_id_are_one_job_and_one_customer, spellings_of_a_uuid_are_one_job_and_one_customer]
}

/// A profile that exists before attach (so no insert queued it), enqueued three times in one
/// transaction under three spellings: one job, one customer, created under the canonical id.
fn enqueue_under_spellings(table: &str, canonical: &str, spellings: &[&str]) -> Result<String, Failed> {
    let mut db = db();
    let mut tx = db.transaction().unwrap();
    let jobs: Vec<i64> = spellings
        .iter()
        .map(|spelling| {
            tx.query_one("SELECT onboarding.enqueue_customer($1, $2::text::regclass)", &[spelling, &table])
                .unwrap()
                .get(0)
        })
        .collect();
    tx.commit().unwrap();
    ensure(jobs.iter().all(|job| *job == jobs[0]), || format!("{spellings:?} enqueued jobs {jobs:?}"))?;
    let customer = wait_for("the customer", DEADLINE, || customer_id(&mut db, table, canonical))?;
    let jobs = jobs_for(&mut db, canonical);
    ensure(jobs.len() == 1 && jobs[0].state == "succeeded", || format!("jobs of {canonical}: {jobs:?}"))?;
    let creates = stripe_requests_for(canonical).into_iter().filter(|r| r.method == "POST").count();
    ensure(creates == 1, || format!("{creates} customer creations for {canonical}"))?;
    for spelling in spellings.iter().filter(|s| **s != canonical) {
        ensure(stripe_requests_for(spelling).is_empty(), || format!("a request went out for {spelling:?}"))?;
    }
    Ok(customer)
}

fn spellings_of_a_bigint_id_are_one_job_and_one_customer() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute(
        "DROP TABLE IF EXISTS public.profiles_bigint;
         CREATE TABLE public.profiles_bigint (id bigint PRIMARY KEY, email text, stripe_customer_id text);
         INSERT INTO public.profiles_bigint VALUES (42, 'forty-two@example.com', NULL);
         SELECT onboarding.attach('public.profiles_bigint');",
    )
    .unwrap();
    let customer = enqueue_under_spellings("public.profiles_bigint", "42", &["42", " 42", "+042"])?;
    // Asked again under yet another spelling: the same customer, at once.
    let again: String = db
        .query_one("SELECT onboarding.get_or_create_customer('0042', 1000, 'public.profiles_bigint')", &[])
        .unwrap()
        .get(0);
    ensure(again == customer, || format!("get_or_create_customer('0042') gave {again}, not {customer}"))
}

fn spellings_of_a_uuid_are_one_job_and_one_customer() -> Result<(), Failed> {
    let mut db = db();
    let id = "7d1e1c9a-5b0e-4a8e-9d7f-3c2b1a0f9e8d";
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS public.profiles_uuid_case;
         CREATE TABLE public.profiles_uuid_case (id uuid PRIMARY KEY, email text, stripe_customer_id text);
         INSERT INTO public.profiles_uuid_case VALUES ('{id}', 'uuid-case@example.com', NULL);
         SELECT onboarding.attach('public.profiles_uuid_case');"
    ))
    .unwrap();
    let upper = id.to_uppercase();
    let braced = format!("{{{id}}}");
    enqueue_under_spellings("public.profiles_uuid_case", id, &[id, &upper, &braced]).map(|_| ())
}
