//! The application functions act only on profiles the calling role may read itself — its
//! privileges and the table's row-level security — and say so (42501) without saying whether a
//! hidden profile or job exists. Supabase-style: a policy lets each session see its own user only.

use libtest_mimic::{Failed, Trial};

use crate::helpers::{db, ensure, insert_profile, jobs_for, sqlstate, wait_for_customer};

pub(crate) fn tests() -> Vec<Trial> {
    trials![application_functions_act_only_on_profiles_the_caller_may_read]
}

/// Before 0.3.0 an application role that row-level security let see only alice's profile read
/// bob's customer through profile_status and get_or_create_customer, read everyone's jobs with
/// job_status, and had Stripe create a Connect account for bob.
fn application_functions_act_only_on_profiles_the_caller_may_read() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute(
        "DROP TABLE IF EXISTS public.profiles_rls;
         CREATE TABLE public.profiles_rls (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
                                           stripe_customer_id text, stripe_connect_account_id text);
         SELECT onboarding.attach('public.profiles_rls', connect_account_column => 'stripe_connect_account_id');
         DROP ROLE IF EXISTS rls_app;
         CREATE ROLE rls_app;
         GRANT SELECT, INSERT, UPDATE ON public.profiles_rls TO rls_app;
         ALTER TABLE public.profiles_rls ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_profile ON public.profiles_rls TO rls_app
             USING (id::text = current_setting('app.user_id', true));
         GRANT USAGE ON SCHEMA onboarding TO rls_app;
         GRANT EXECUTE ON FUNCTION onboarding.get_or_create_customer(text, integer, regclass),
             onboarding.enqueue_customer(text, regclass), onboarding.enqueue_connect_account(text, regclass),
             onboarding.job_status(bigint), onboarding.profile_status(text, regclass) TO rls_app;",
    )
    .unwrap();
    let table = "public.profiles_rls";
    let alice = insert_profile(&mut db, table, Some("alice@example.com"));
    let bob = insert_profile(&mut db, table, Some("bob@example.com"));
    let bob_customer = wait_for_customer(&mut db, table, &bob)?;
    wait_for_customer(&mut db, table, &alice)?;
    let job_of = |db: &mut postgres::Client, user: &str| -> i64 {
        db.query_one("SELECT id FROM onboarding.jobs WHERE user_id = $1 ORDER BY id LIMIT 1", &[&user]).unwrap().get(0)
    };
    let (alice_job, bob_job) = (job_of(&mut db, &alice), job_of(&mut db, &bob));

    db.batch_execute(&format!("SET ROLE rls_app; SET app.user_id = '{alice}'")).unwrap();
    let own: Option<String> = db
        .query_one(
            "SELECT stripe_customer_id FROM onboarding.profile_status($1, 'public.profiles_rls') LIMIT 1",
            &[&alice],
        )?
        .get(0);
    let own_job: i64 = db.query_one("SELECT id FROM onboarding.job_status($1)", &[&alice_job])?.get(0);
    let mut refusals = Vec::new();
    for (what, sql, arg) in [
        ("profile_status", "SELECT * FROM onboarding.profile_status($1, 'public.profiles_rls')", bob.clone()),
        (
            "get_or_create_customer",
            "SELECT onboarding.get_or_create_customer($1, 1000, 'public.profiles_rls')",
            bob.clone(),
        ),
        ("enqueue_customer", "SELECT onboarding.enqueue_customer($1, 'public.profiles_rls')", bob.clone()),
        (
            "enqueue_connect_account",
            "SELECT onboarding.enqueue_connect_account($1, 'public.profiles_rls')",
            bob.clone(),
        ),
    ] {
        refusals.push((what, sqlstate(db.query(sql, &[&arg]))?));
    }
    for (what, job) in [("job_status of bob's job", bob_job), ("job_status of no job", 987_654_321)] {
        refusals.push((what, sqlstate(db.query("SELECT * FROM onboarding.job_status($1)", &[&job]))?));
    }
    db.batch_execute("RESET ROLE; RESET app.user_id").unwrap();

    ensure(own.is_some() && own_job == alice_job, || format!("alice's own status: {own:?}, job {own_job}"))?;
    for (what, (code, message)) in &refusals {
        ensure(code == "42501", || format!("{what}: {code} {message}"))?;
        ensure(!message.contains(&bob_customer), || format!("{what} revealed bob's customer: {message}"))?;
    }
    // The two job_status refusals are the same words: nothing tells a hidden job from a missing one.
    let words = |m: &str| -> Vec<String> {
        m.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).map(str::to_string).collect()
    };
    ensure(words(&refusals[4].1.1) == words(&refusals[5].1.1), || format!("{refusals:?}"))?;
    let bob_jobs: Vec<String> = jobs_for(&mut db, &bob).into_iter().map(|j| j.kind).collect();
    ensure(bob_jobs == ["create_customer"], || format!("jobs made for bob by alice's session: {bob_jobs:?}"))?;
    db.batch_execute("SELECT onboarding.detach('public.profiles_rls')").unwrap();
    Ok(())
}
