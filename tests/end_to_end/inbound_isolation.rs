//! From Stripe back to Postgres, one tenant's table holds up nobody else's: what the events reader
//! writes to profiles (readiness columns, customer changes) is applied change by change, every
//! error caught (assertions included), and a table whose writes wait or fail delays only itself.
//! Those writes run in the profile writer, never on the loop that serves signups; an event that
//! cannot be applied is set aside and read again later, and never stops the others.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::env;
use crate::helpers::{
    self, DEADLINE, db, ensure, insert_profile, profiles_table, wait_for, wait_for_customer, with_fast_event_polls,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        an_owners_assertion_holds_up_no_other_tables_readiness,
        a_held_table_keeps_no_other_tables_change_waiting,
        an_event_that_cannot_be_read_is_set_aside_and_the_reader_goes_on,
        a_slow_readiness_trigger_delays_no_signup,
        an_event_that_cannot_be_applied_is_set_aside_then_read_again,
    ]
}

/// A table owned by role `isolation_tenant`, attached by a superuser, with a readiness column.
fn her_table(db: &mut Client, name: &str, setup: &str) -> String {
    let table = format!("isolation_tenant.{name}");
    helpers::tenant_table(db, "isolation_tenant", &table, ", ready boolean NOT NULL DEFAULT false", setup);
    db.batch_execute(&format!(
        "SELECT onboarding.attach('{table}', connect_account_column => 'stripe_connect_account_id',
                                  readiness_columns => '{{\"ready\": \"ready\"}}');"
    ))
    .unwrap();
    table
}

/// A profile with a Connect account the events reader just found ready (recorded as it records
/// what Stripe says), its readiness column still to be written.
fn ready_account(db: &mut Client, table: &str, account: &str) -> String {
    let user: String = db
        .query_one(
            &format!(
                "INSERT INTO {table} (email, stripe_customer_id, stripe_connect_account_id)
                 VALUES ('seller@example.com', 'cus_' || $1, $1) RETURNING id::text"
            ),
            &[&account],
        )
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO onboarding.connect_accounts (account_id, profile_table, user_id, charges_enabled, payouts_enabled,
                                                  details_submitted, as_of, profile_behind)
         VALUES ($1, $2::text::regclass, $3, true, true, true, extract(epoch FROM now())::bigint, true)",
        &[&account, &table, &user],
    )
    .unwrap();
    user
}

/// Before the fix her `ASSERT` (SQLSTATE P0004, which `WHEN OTHERS` does not catch) in a trigger
/// on her readiness column rolled back the whole apply at every poll: no other table's readiness
/// (or customer change) landed until she removed it.
fn an_owners_assertion_holds_up_no_other_tables_readiness() -> Result<(), Failed> {
    let mut db = db();
    let hers = her_table(
        &mut db,
        "asserting",
        "CREATE FUNCTION isolation_tenant.assert_never() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN ASSERT false, 'never ready'; RETURN NEW; END $$;
         CREATE TRIGGER assert_never BEFORE UPDATE OF ready ON isolation_tenant.asserting
             FOR EACH ROW EXECUTE FUNCTION isolation_tenant.assert_never();",
    );
    let others = profiles_table(&mut db, "profiles_isolation_ready");
    db.batch_execute(&format!(
        "ALTER TABLE {others} ADD COLUMN ready boolean NOT NULL DEFAULT false;
         SELECT onboarding.attach('{others}', connect_account_column => 'stripe_connect_account_id',
                                  readiness_columns => '{{\"ready\": \"ready\"}}');"
    ))
    .unwrap();
    // Hers first in any order the reader may take them in.
    ready_account(&mut db, &hers, "acct_isolation_a");
    let other = ready_account(&mut db, &others, "acct_isolation_b");
    let result = with_fast_event_polls(&mut db, |db| {
        wait_for("the other table's readiness column", DEADLINE, || {
            db.query_one(&format!("SELECT ready FROM {others} WHERE id::text = $1"), &[&other])
                .unwrap()
                .get::<_, bool>(0)
                .then_some(())
        })?;
        let hers_behind: bool = db
            .query_one(
                "SELECT profile_behind FROM onboarding.connect_accounts WHERE account_id = 'acct_isolation_a'",
                &[],
            )?
            .get(0);
        ensure(!hers_behind, || "her failing write was not given up".into())
    });
    db.batch_execute("DELETE FROM onboarding.connect_accounts WHERE account_id LIKE 'acct_isolation_%'").unwrap();
    result
}

/// Her policy answers 55P03 (as a held lock does) for every read of her table, so her 60 customer
/// changes wait. Before the fix they kept the head of the queue (50 a poll, oldest first, never
/// moved): another table's customer deleted in Stripe later was never handled.
fn a_held_table_keeps_no_other_tables_change_waiting() -> Result<(), Failed> {
    const HERS: usize = 60;
    let mut db = db();
    let hers = her_table(
        &mut db,
        "held",
        "CREATE TABLE isolation_tenant.held_flag (held boolean);
         INSERT INTO isolation_tenant.held_flag VALUES (false);
         CREATE FUNCTION isolation_tenant.visible() RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT held FROM isolation_tenant.held_flag) THEN
                 RAISE EXCEPTION 'held' USING ERRCODE = '55P03';
             END IF;
             RETURN true;
         END $$;
         ALTER TABLE isolation_tenant.held ENABLE ROW LEVEL SECURITY;
         ALTER TABLE isolation_tenant.held FORCE ROW LEVEL SECURITY;
         CREATE POLICY held ON isolation_tenant.held USING (isolation_tenant.visible());",
    );
    let others = profiles_table(&mut db, "profiles_isolation_held");
    let result = with_fast_event_polls(&mut db, |db| {
        let mut customers = Vec::new();
        for n in 0..HERS {
            let user = insert_profile(db, &hers, Some(&format!("held{n}@example.com")));
            customers.push(wait_for_customer(db, &hers, &user)?);
        }
        let other = insert_profile(db, &others, Some("other@example.com"));
        let other_customer = wait_for_customer(db, &others, &other)?;
        db.batch_execute("UPDATE isolation_tenant.held_flag SET held = true").unwrap();
        for customer in &customers {
            env().stripe.dashboard_delete_customer(customer);
        }
        wait_for("her changes recorded", DEADLINE, || {
            let recorded: i64 = db
                .query_one(
                    "SELECT count(*) FROM onboarding.customer_changes WHERE customer_id = ANY ($1)",
                    &[&customers],
                )
                .unwrap()
                .get(0);
            (recorded == HERS as i64).then_some(())
        })?;
        env().stripe.dashboard_delete_customer(&other_customer);
        let outcome =
            wait_for("the other table's deletion handled", DEADLINE, || helpers::handled(db, &other_customer))?;
        ensure(outcome == "flagged", || format!("outcome {outcome}"))
    });
    db.batch_execute("UPDATE isolation_tenant.held_flag SET held = false").unwrap();
    result
}

/// A `customer.updated` of Stripe's shape around `email_json` (already JSON-escaped, or raw bytes).
fn hostile_event(id: &str, email_json: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "{{\"id\": \"{id}\", \"object\": \"event\", \"type\": \"customer.updated\", \"created\": 1, \
          \"data\": {{\"object\": {{\"id\": \"cus_hostile\", \"object\": \"customer\", \"email\": \""
    )
    .into_bytes();
    bytes.extend_from_slice(email_json);
    bytes.extend_from_slice(b"\", \"metadata\": {\"user_id\": \"u\"}}, \"previous_attributes\": {\"email\": null}}}");
    bytes
}

/// Events Stripe keeps for 30 days, each of which failed its whole page before the fix (and the
/// reader with it, for everyone): a byte that is not UTF-8, a lone surrogate, a NUL (which
/// PostgreSQL cannot store), a 3,000-character id. Each is set aside with its reason; a change
/// after them is applied.
fn an_event_that_cannot_be_read_is_set_aside_and_the_reader_goes_on() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_isolation_events");
    with_fast_event_polls(&mut db, |db| {
        let user = insert_profile(db, &table, Some("after@example.com"));
        let customer = wait_for_customer(db, &table, &user)?;
        let long_id = format!("evt_{}", "L".repeat(3000));
        let hostile: [(&str, Vec<u8>); 4] = [
            ("evt_hostile_byte", hostile_event("evt_hostile_byte", b"a\xffb@example.com")),
            ("evt_hostile_surrogate", hostile_event("evt_hostile_surrogate", b"a\\ud800b@example.com")),
            ("evt_hostile_nul", hostile_event("evt_hostile_nul", b"a\\u0000b@example.com")),
            (&long_id, hostile_event(&long_id, b"long@example.com")),
        ];
        for (id, bytes) in hostile {
            env().stripe.push_raw_event(id, "customer.updated", None, bytes)?;
        }
        env().stripe.dashboard_delete_customer(&customer);
        let outcome = wait_for("the deletion after them handled", DEADLINE, || helpers::handled(db, &customer))?;
        ensure(outcome == "flagged", || format!("outcome {outcome}"))?;
        let set_aside: Vec<String> = db
            .query(
                "SELECT event_id FROM onboarding.stripe_events_set_aside WHERE event_id LIKE 'evt_hostile%' ORDER BY 1",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ensure(set_aside == ["evt_hostile_byte", "evt_hostile_nul", "evt_hostile_surrogate"], || {
            format!("set aside: {set_aside:?}")
        })?;
        let unusable: i64 = db
            .query_one(
                "SELECT count(*) FROM onboarding.stripe_events_set_aside WHERE event_id LIKE 'unusable id %'",
                &[],
            )?
            .get(0);
        ensure(unusable >= 1, || "the 3,000-character id was not set aside".into())
    })
}

/// Her readiness column has a trigger that takes 2 s a row (under owner_statement_timeout), and
/// six of her accounts just became ready. Before the fix those writes ran on the worker's loop,
/// up to 10 of one table a poll: another table's signup waited for all of them (20 s seen).
fn a_slow_readiness_trigger_delays_no_signup() -> Result<(), Failed> {
    let mut db = db();
    let hers = her_table(
        &mut db,
        "slow",
        "CREATE TABLE isolation_tenant.slow_flag (slow boolean);
         INSERT INTO isolation_tenant.slow_flag VALUES (true);
         CREATE FUNCTION isolation_tenant.slow_ready() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT slow FROM isolation_tenant.slow_flag) THEN
                 PERFORM pg_sleep(2);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER slow_ready BEFORE UPDATE OF ready ON isolation_tenant.slow
             FOR EACH ROW EXECUTE FUNCTION isolation_tenant.slow_ready();",
    );
    let others = profiles_table(&mut db, "profiles_isolation_slow");
    let result = with_fast_event_polls(&mut db, |db| {
        for n in 0..6 {
            ready_account(db, &hers, &format!("acct_isolation_slow_{n}"));
        }
        wait_for("her trigger sleeping", DEADLINE, || {
            let sleeping: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'onboarding%' AND wait_event = 'PgSleep'",
                    &[],
                )
                .unwrap()
                .get(0);
            (sleeping > 0).then_some(())
        })?;
        // Her remaining writes take 10 s more; a signup takes milliseconds.
        let user = insert_profile(db, &others, Some("not-held-up@example.com"));
        wait_for("another table's signup while her trigger sleeps", Duration::from_secs(4), || {
            helpers::customer_id(db, &others, &user)
        })?;
        Ok(())
    });
    db.batch_execute(
        "UPDATE isolation_tenant.slow_flag SET slow = false;
         DELETE FROM onboarding.connect_accounts WHERE account_id LIKE 'acct_isolation_slow_%';",
    )
    .unwrap();
    result
}

/// Applying one event fails (here a fault planted on the extension's own table: any error while
/// applying one event, a bug included). Before the fix the whole apply failed at every poll, the
/// cursor stayed, and no later event of anyone was applied; the reader also paused a minute
/// after each failure. Now the event is set aside, every other event applied, and once the cause
/// is gone the event set aside is read again on its own and applied.
fn an_event_that_cannot_be_applied_is_set_aside_then_read_again() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_isolation_poison");
    let poisoned_user = insert_profile(&mut db, &table, Some("poisoned@example.com"));
    let poisoned = wait_for_customer(&mut db, &table, &poisoned_user)?;
    let other_user = insert_profile(&mut db, &table, Some("other@example.com"));
    let other = wait_for_customer(&mut db, &table, &other_user)?;
    db.batch_execute(&format!(
        "CREATE FUNCTION public.isolation_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.customer_id = '{poisoned}' THEN
                 RAISE EXCEPTION 'planted fault';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER isolation_poison BEFORE INSERT OR UPDATE ON onboarding.customer_changes
             FOR EACH ROW EXECUTE FUNCTION public.isolation_poison();"
    ))
    .unwrap();
    let result = with_fast_event_polls(&mut db, |db| {
        env().stripe.dashboard_delete_customer(&poisoned);
        env().stripe.dashboard_delete_customer(&other);
        let outcome = wait_for("the other deletion handled", DEADLINE, || helpers::handled(db, &other))?;
        ensure(outcome == "flagged", || format!("outcome {outcome}"))?;
        let aside: Vec<(String, bool)> = db
            .query(
                "SELECT reason, retry_at IS NOT NULL FROM onboarding.stripe_events_set_aside
                  WHERE reason LIKE '%planted fault%'",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        ensure(aside.len() == 1 && aside[0].1 && aside[0].0.contains("applying it failed"), || {
            format!("set aside: {aside:?}")
        })?;
        db.batch_execute(
            "DROP TRIGGER isolation_poison ON onboarding.customer_changes;
             UPDATE onboarding.stripe_events_set_aside SET retry_at = now() WHERE reason LIKE '%planted fault%';",
        )?;
        let outcome =
            wait_for("the event set aside, read again and applied", DEADLINE, || helpers::handled(db, &poisoned))?;
        ensure(outcome == "flagged", || format!("outcome {outcome}"))?;
        let left: i64 = db
            .query_one(
                "SELECT count(*) FROM onboarding.stripe_events_set_aside WHERE reason LIKE '%planted fault%'",
                &[],
            )?
            .get(0);
        ensure(left == 0, || "the event applied is still set aside".into())
    });
    db.batch_execute(
        "DROP TRIGGER IF EXISTS isolation_poison ON onboarding.customer_changes;
         DROP FUNCTION public.isolation_poison();",
    )
    .unwrap();
    result
}
