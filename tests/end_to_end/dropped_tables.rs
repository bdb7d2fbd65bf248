//! Dropping an attached table (DROP TABLE, DROP SCHEMA … CASCADE) takes its attachment and waiting
//! jobs with it; the extension's own tables cannot be attached.

use libtest_mimic::{Failed, Trial};

use crate::helpers::{db, ensure, insert_profile, only_job, profiles_table, sqlstate, wait_for_customer};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        dropping_an_attached_table_detaches_it_and_cancels_its_waiting_jobs,
        the_extensions_own_tables_cannot_be_attached
    ]
}

/// Attachments whose table no longer exists (0.2.0 kept them: backfill() of all tables then failed).
fn dangling_attachments(db: &mut postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM onboarding.attachments a WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = a.profile_table)",
        &[],
    )
    .unwrap()
    .get(0)
}

/// A job that waits (due never) for a profile of `table`.
fn waiting_job(db: &mut postgres::Client, table: &str, user: &str) {
    db.execute(
        &format!(
            "INSERT INTO onboarding.jobs (kind, profile_table, user_id, run_at)
             VALUES ('create_customer', '{table}'::regclass, $1, 'infinity')"
        ),
        &[&user],
    )
    .unwrap();
}

fn dropping_an_attached_table_detaches_it_and_cancels_its_waiting_jobs() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_dropped");
    waiting_job(&mut db, &table, "dropped-waiting");
    db.batch_execute(&format!("DROP TABLE {table}")).unwrap();
    let job = only_job(&mut db, "dropped-waiting")?;
    ensure(job.state == "cancelled" && job.last_error.as_deref().is_some_and(|e| e.contains("was dropped")), || {
        format!("the waiting job of a dropped table: {job:?}")
    })?;

    db.batch_execute(
        "DROP SCHEMA IF EXISTS onboarding_tenant_drop CASCADE;
         CREATE SCHEMA onboarding_tenant_drop;
         CREATE TABLE onboarding_tenant_drop.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
                                                       stripe_customer_id text);
         SELECT onboarding.attach('onboarding_tenant_drop.profiles');
         DROP SCHEMA onboarding_tenant_drop CASCADE;",
    )
    .unwrap();
    let dangling = dangling_attachments(&mut db);
    ensure(dangling == 0, || format!("{dangling} attachment(s) of dropped tables left behind"))?;

    // The Connect accounts of its profiles are no longer followed (they were read daily, for ever).
    db.batch_execute(
        "DROP TABLE IF EXISTS public.profiles_dropped_sellers;
         CREATE TABLE public.profiles_dropped_sellers (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
             stripe_customer_id text, stripe_connect_account_id text);
         SELECT onboarding.attach('public.profiles_dropped_sellers', connect_policy => 'always');",
    )
    .unwrap();
    let seller = insert_profile(&mut db, "public.profiles_dropped_sellers", Some("seller@example.com"));
    let oid: u32 = db.query_one("SELECT 'public.profiles_dropped_sellers'::regclass::oid", &[]).unwrap().get(0);
    crate::helpers::wait_for("the seller's account to be followed", crate::helpers::DEADLINE, || {
        let followed: i64 = db
            .query_one("SELECT count(*) FROM onboarding.connect_accounts WHERE user_id = $1", &[&seller])
            .unwrap()
            .get(0);
        (followed == 1).then_some(())
    })?;
    db.batch_execute("DROP TABLE public.profiles_dropped_sellers").unwrap();
    let followed: i64 = db
        .query_one("SELECT count(*) FROM onboarding.connect_accounts WHERE profile_table = $1::oid", &[&oid])
        .unwrap()
        .get(0);
    ensure(followed == 0, || format!("{followed} account(s) of the dropped table still followed"))
}

fn the_extensions_own_tables_cannot_be_attached() -> Result<(), Failed> {
    let mut db = db();
    // Columns that exist and have usable types: only being the extension's own table is wrong.
    for own in [
        "'onboarding.intake', id_column => 'user_id', email_column => 'user_id', customer_column => 'user_id'",
        "'onboarding.jobs', id_column => 'user_id', email_column => 'user_id', customer_column => 'stripe_id'",
    ] {
        let (code, message) = sqlstate(db.execute(&format!("SELECT onboarding.attach({own})"), &[]))?;
        ensure(code == "42809" && message.contains("extension"), || format!("attach('{own}'): {code} {message}"))?;
    }
    // Profiles still go through (0.2.0 accepted the intake, after which every profile insert failed).
    let table = profiles_table(&mut db, "profiles_after_own");
    let user = insert_profile(&mut db, &table, Some("after-own@example.com"));
    wait_for_customer(&mut db, &table, &user).map(|_| ())
}
