//! A partitioned profile table: attaching the parent provisions rows inserted into any partition,
//! present or future, through the parent or straight into the partition; attaching a partition
//! (or a view) is refused with a hint.

use libtest_mimic::{Failed, Trial};

use crate::helpers::{DEADLINE, db, ensure, sqlstate, wait_for};

pub(crate) fn tests() -> Vec<Trial> {
    trials![rows_of_every_partition_present_and_future_are_provisioned, a_partition_or_a_view_cannot_be_attached]
}

const PARENT: &str = "public.profiles_parted";

fn partitioned_profiles(db: &mut postgres::Client) {
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {PARENT};
         CREATE TABLE {PARENT} (
             id uuid NOT NULL DEFAULT gen_random_uuid(),
             region text NOT NULL,
             email text,
             stripe_customer_id text,
             PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE public.profiles_parted_eu PARTITION OF {PARENT} FOR VALUES IN ('eu');"
    ))
    .unwrap();
}

fn rows_of_every_partition_present_and_future_are_provisioned() -> Result<(), Failed> {
    let mut db = db();
    partitioned_profiles(&mut db);
    db.batch_execute(&format!(
        "SELECT onboarding.attach('{PARENT}');
         CREATE TABLE public.profiles_parted_us PARTITION OF {PARENT} FOR VALUES IN ('us');"
    ))
    .unwrap();
    let mut inserted = Vec::new();
    for (target, region) in
        [(PARENT, "eu"), (PARENT, "us"), ("public.profiles_parted_eu", "eu"), ("public.profiles_parted_us", "us")]
    {
        let id: String = db
            .query_one(
                &format!("INSERT INTO {target} (region, email) VALUES ($1, $2) RETURNING id::text"),
                &[&region, &format!("{region}@example.com")],
            )
            .unwrap()
            .get(0);
        inserted.push(id);
    }
    for id in &inserted {
        wait_for(&format!("a customer for {id}"), DEADLINE, || {
            db.query_one(&format!("SELECT stripe_customer_id FROM {PARENT} WHERE id::text = $1"), &[id])
                .unwrap()
                .get::<_, Option<String>>(0)
        })?;
    }
    let tables: Vec<String> = db
        .query("SELECT DISTINCT profile_table::text FROM onboarding.jobs WHERE user_id = ANY($1)", &[&inserted])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    ensure(tables == [PARENT.trim_start_matches("public.")], || format!("jobs name the tables {tables:?}"))?;
    // An email changed through a partition reaches the customer too (the email trigger is cloned).
    db.execute("UPDATE public.profiles_parted_us SET email = 'moved@example.com' WHERE id::text = $1", &[&inserted[1]])
        .unwrap();
    wait_for("the email update", DEADLINE, || {
        db.query_opt(
            "SELECT 1 FROM onboarding.jobs WHERE user_id = $1 AND kind = 'update_customer_email'
                AND profile_table = $2::text::regclass AND state = 'succeeded'",
            &[&inserted[1], &PARENT],
        )
        .unwrap()
    })?;
    Ok(())
}

fn a_partition_or_a_view_cannot_be_attached() -> Result<(), Failed> {
    let mut db = db();
    partitioned_profiles(&mut db);
    let (code, message) = sqlstate(db.execute("SELECT onboarding.attach('public.profiles_parted_eu')", &[]))?;
    ensure(
        code == "42809"
            && message.contains("partition")
            && message.contains("onboarding.attach('public.profiles_parted')"),
        || format!("attaching a partition: {code} {message}"),
    )?;
    db.batch_execute(&format!(
        "SELECT onboarding.attach('{PARENT}');
         CREATE OR REPLACE VIEW public.profiles_parted_view AS SELECT * FROM {PARENT};"
    ))
    .unwrap();
    let (code, message) = sqlstate(db.execute("SELECT onboarding.attach('public.profiles_parted_view')", &[]))?;
    ensure(code == "42809", || format!("attaching a view: {code} {message}"))?;
    db.batch_execute(&format!("DROP VIEW public.profiles_parted_view; SELECT onboarding.detach('{PARENT}');")).unwrap();
    Ok(())
}
