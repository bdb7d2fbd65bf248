//! A hostile tenant (a role that owns one attached table, as in tenant.rs) writes another tenant's
//! Stripe IDs into her own rows: the extension acts on a Stripe object only for the profile it made
//! it for (onboarding.stripe_ties), so her columns reach nothing of anyone else's.

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::env;
use crate::helpers::{
    self, DEADLINE, customer_id, db, ensure, events_for, insert_profile, profiles_table, sqlstate, steps,
    stripe_customers_for, wait_for, wait_for_customer, wait_for_state, with_fast_event_polls,
};
use stripe_emulator::Fault;

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        a_tenant_naming_anothers_customer_cannot_change_its_email,
        a_tenant_naming_anothers_connect_account_gets_no_link_to_it,
        another_tables_schema_never_decides_what_happens_to_a_customer,
        a_look_up_never_adopts_another_tables_customer_of_the_same_user_id,
    ]
}

/// The tenant's own attached table `tenant_objects.<name>` (she owns it; a superuser attached it).
fn tenant_table(db: &mut Client, name: &str) -> String {
    let table = format!("tenant_objects.{name}");
    helpers::tenant_table(db, "tenant_objects", &table, "", "");
    db.batch_execute(&format!(
        "SELECT onboarding.attach('{table}', connect_account_column => 'stripe_connect_account_id');"
    ))
    .unwrap();
    table
}

fn refusals(db: &mut Client, user: &str) -> Vec<String> {
    db.query(
        "SELECT detail->>'action' FROM onboarding.events WHERE user_id = $1 AND step = 'untied_object_refused'",
        &[&user],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Before the fix, the email sync sent her email to the victim's customer (200 OK), Stripe's
/// `customer.updated` was not known as the extension's own, and with `update_profile` on the
/// victim's table her email was written into the victim's profile: an account takeover wherever
/// the app signs users in by email.
fn a_tenant_naming_anothers_customer_cannot_change_its_email() -> Result<(), Failed> {
    let mut db = db();
    with_fast_event_polls(&mut db, |db| {
        let victims = profiles_table(db, "profiles_victim_email");
        db.execute(
            "SELECT onboarding.set_stripe_change_policy($1::text::regclass, email_changed => 'update_profile')",
            &[&victims],
        )?;
        let victim = insert_profile(db, &victims, Some("victim@example.com"));
        let victim_customer = wait_for_customer(db, &victims, &victim)?;
        let hers = tenant_table(db, "profiles_email");
        let attacker = insert_profile(db, &hers, Some("attacker@example.com"));
        wait_for_customer(db, &hers, &attacker)?;

        db.batch_execute("SET ROLE tenant_objects").unwrap();
        db.execute(
            &format!(
                "UPDATE {hers} SET stripe_customer_id = $2, email = 'attacker+owned@example.com' WHERE id::text = $1"
            ),
            &[&attacker, &victim_customer],
        )
        .map_err(|e| format!("her update: {:?}", e.as_db_error()))?;
        db.batch_execute("RESET ROLE").unwrap();

        let refused =
            wait_for("the email sync refused", DEADLINE, || Some(refusals(db, &attacker)).filter(|r| !r.is_empty()))?;
        ensure(refused == ["email sync"], || format!("refused: {refused:?}"))?;
        let syncs: i64 = db
            .query_one(
                "SELECT count(*) FROM onboarding.jobs WHERE kind = 'update_customer_email' AND stripe_id = $1",
                &[&victim_customer],
            )?
            .get(0);
        let stripe_email = env()
            .stripe
            .customers()
            .into_iter()
            .find(|c| c["id"] == victim_customer.as_str())
            .and_then(|c| c["email"].as_str().map(str::to_string));
        let victim_email: Option<String> =
            db.query_one(&format!("SELECT email FROM {victims} WHERE id::text = $1"), &[&victim])?.get(0);
        ensure(syncs == 0, || format!("{syncs} email syncs queued for the victim's customer"))?;
        ensure(stripe_email.as_deref() == Some("victim@example.com"), || {
            format!("the victim's customer has {stripe_email:?} in Stripe")
        })?;
        ensure(victim_email.as_deref() == Some("victim@example.com"), || {
            format!("the victim's profile: {victim_email:?}")
        })?;
        let problems: Vec<String> = db
            .query("SELECT problem FROM onboarding.audit_mismatches(true) WHERE user_id = $1", &[&attacker])
            .map_err(|e| format!("audit: {:?}", e.as_db_error()))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ensure(
            problems
                .iter()
                .any(|p| p == "not made for this profile by this extension" || p.starts_with("belongs to user")),
            || format!("audit_mismatches of her profile: {problems:?}"),
        )
    })
}

/// An account link opens an account's onboarding (its bank details included) to whoever holds it.
/// Before the fix, create_account_link made one for whatever account her column named.
fn a_tenant_naming_anothers_connect_account_gets_no_link_to_it() -> Result<(), Failed> {
    let mut db = db();
    let sellers = profiles_table(&mut db, "profiles_victim_account");
    db.batch_execute(&format!("SELECT onboarding.set_connect_policy('{sellers}', 'always')")).unwrap();
    let seller = insert_profile(&mut db, &sellers, Some("seller@example.com"));
    let account = wait_for("the seller's account", DEADLINE, || {
        db.query_one(&format!("SELECT stripe_connect_account_id FROM {sellers} WHERE id::text = $1"), &[&seller])
            .unwrap()
            .get::<_, Option<String>>(0)
    })?;
    let hers = tenant_table(&mut db, "profiles_account");
    let attacker = insert_profile(&mut db, &hers, Some("attacker@example.com"));
    wait_for_customer(&mut db, &hers, &attacker)?;
    db.batch_execute("SET ROLE tenant_objects").unwrap();
    db.execute(
        &format!("UPDATE {hers} SET stripe_connect_account_id = $2 WHERE id::text = $1"),
        &[&attacker, &account],
    )?;
    db.batch_execute("RESET ROLE").unwrap();
    env().stripe.clear_requests();

    let link = format!(
        "SELECT onboarding.create_account_link($1, 'https://app.example.com/refresh', \
         'https://app.example.com/return', 5000, '{hers}')"
    );
    let (code, message) = sqlstate(db.query(&link, &[&attacker]))?;
    let links = env().stripe.requests().into_iter().filter(|r| r.path == "/v1/account_links").count();
    ensure(links == 0, || format!("{links} account links made for the victim's account ({code} {message})"))?;
    ensure(code == "55000" && message.contains("not made for it"), || format!("refusal: {code} {message}"))?;
    ensure(refusals(&mut db, &attacker) == ["account link"], || format!("refused: {:?}", refusals(&mut db, &attacker)))
}

/// A customer of the victim's table is deleted in Stripe (policy recreate) while retention has
/// pruned its job. Before the fix the change was looked for in every attached table, hers first
/// (older), and her retyped id column failed it ("operator does not exist: text = uuid"): the
/// victim's customer was never recreated.
fn another_tables_schema_never_decides_what_happens_to_a_customer() -> Result<(), Failed> {
    let mut db = db();
    let hers = tenant_table(&mut db, "profiles_retyped");
    with_fast_event_polls(&mut db, |db| {
        let victims = profiles_table(db, "profiles_victim_recreate");
        db.execute(
            "SELECT onboarding.set_stripe_change_policy($1::text::regclass, customer_deleted => 'recreate')",
            &[&victims],
        )?;
        let victim = insert_profile(db, &victims, Some("recreate@example.com"));
        let customer = wait_for_customer(db, &victims, &victim)?;
        // Retention pruned the victim's jobs; she retyped her id column.
        db.execute("DELETE FROM onboarding.events WHERE user_id = $1", &[&victim])?;
        db.execute("DELETE FROM onboarding.jobs WHERE user_id = $1", &[&victim])?;
        db.batch_execute(&format!(
            "SET ROLE tenant_objects; ALTER TABLE {hers} ALTER COLUMN id TYPE text; RESET ROLE;"
        ))
        .unwrap();

        ensure(env().stripe.dashboard_delete_customer(&customer), || "no customer to delete".into())?;
        let outcome = wait_for("the deletion handled", DEADLINE, || helpers::handled(db, &customer))?;
        ensure(outcome == "recreated", || format!("outcome {outcome}"))?;
        let new_customer =
            wait_for("a new customer", DEADLINE, || customer_id(db, &victims, &victim).filter(|c| *c != customer))?;
        ensure(new_customer.starts_with("cus_"), || format!("new customer {new_customer}"))
    })
}

/// Two tables keyed by the same user ids (auth.users' uuid, say: a `profiles` and a `sellers`
/// table), each with its own customer. Before the fix, a job of one table that looks Stripe up by
/// `metadata.user_id` (past the idempotency horizon) adopted the other table's customer and wrote
/// it into its profile; now it never finds what the extension made for another profile, and
/// creates its own.
fn a_look_up_never_adopts_another_tables_customer_of_the_same_user_id() -> Result<(), Failed> {
    let mut db = db();
    let first = profiles_table(&mut db, "profiles_same_ids_a");
    let second = profiles_table(&mut db, "profiles_same_ids_b");
    let user: String = db
        .query_one(&format!("INSERT INTO {first} (email) VALUES ('same@example.com') RETURNING id::text"), &[])?
        .get(0);
    let theirs = wait_for_customer(&mut db, &first, &user)?;
    // The second table's first attempt is refused, so its job dies having made nothing.
    env().stripe.inject(Fault::status(400).message("refused for the test").on("POST", "/v1/customers"));
    db.execute(&format!("INSERT INTO {second} (id, email) VALUES ($1::text::uuid, 'same@example.com')"), &[&user])?;
    wait_for_state(&mut db, &user, "dead")?;
    // Two days later: Stripe has forgotten the key, so the retry looks the user up first.
    env().stripe.expire_idempotency_keys();
    db.execute(
        &format!(
            "UPDATE onboarding.jobs SET first_attempt_at = now() - interval '2 days'
                  WHERE user_id = $1 AND profile_table = '{second}'::regclass"
        ),
        &[&user],
    )?;
    db.query(
        &format!(
            "SELECT * FROM onboarding.retry((SELECT id FROM onboarding.jobs
                                                  WHERE user_id = $1 AND profile_table = '{second}'::regclass))"
        ),
        &[&user],
    )?;
    let ours = wait_for_customer(&mut db, &second, &user)?;
    ensure(ours != theirs, || format!("{second} adopted {first}'s customer {theirs}"))?;
    let customers = stripe_customers_for(&user);
    ensure(customers.len() == 2, || format!("customers of the user id: {customers:?}"))?;
    let events = events_for(&mut db, &user);
    ensure(!steps(&events).contains(&"adopted"), || format!("steps {:?}", steps(&events)))
}
