//! Stripe back into Postgres: Connect accounts' readiness follows Stripe's events (no webhook).

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;
use stripe_emulator::Onboarding;

use crate::env;
use crate::helpers::{
    DEADLINE, customer_id, db, ensure, insert_profile, profiles_table, set_and_reload, sqlstate, wait_for,
    with_fast_event_polls,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        an_account_onboarded_at_stripe_is_ready_within_a_poll,
        events_read_again_or_out_of_order_leave_the_newest_state,
        a_cursor_past_stripe_retention_starts_again_from_the_accounts,
        a_stalled_read_of_events_delays_no_signup,
        profile_columns_named_at_attach_follow_the_account,
        readiness_follows_a_linked_account_without_its_events,
        a_turn_left_by_a_reader_that_is_gone_is_taken_at_once,
    ]
}

/// A table with Connect always on and one provider, whose account the worker created.
fn provider(db: &mut Client, table: &str) -> (String, String) {
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
             stripe_customer_id text, stripe_connect_account_id text);
         SELECT onboarding.attach('{table}', connect_policy => 'always');"
    ))
    .unwrap();
    let user: String = db
        .query_one(&format!("INSERT INTO {table} (email) VALUES ('seller@example.com') RETURNING id::text"), &[])
        .unwrap()
        .get(0);
    let account = wait_for_account(db, table, &user).unwrap();
    (user, account)
}

/// The Connect account the worker wrote to `user`'s profile.
fn wait_for_account(db: &mut Client, table: &str, user: &str) -> Result<String, Failed> {
    wait_for("the Connect account", DEADLINE, || {
        db.query_one(&format!("SELECT stripe_connect_account_id FROM {table} WHERE id::text = $1"), &[&user])
            .unwrap()
            .get::<_, Option<String>>(0)
    })
}

fn ready(db: &mut Client, user: &str) -> bool {
    db.query_one("SELECT onboarding.account_ready($1::text::uuid)", &[&user]).unwrap().get(0)
}

/// (ready, charges, payouts, details submitted, currently due, disabled reason, deauthorized)
type Status = (bool, bool, bool, bool, Vec<String>, Option<String>, bool);

fn status(db: &mut Client, user: &str) -> Option<Status> {
    db.query_opt(
        "SELECT ready, charges_enabled, payouts_enabled, details_submitted, requirements_currently_due,
                disabled_reason, deauthorized_at IS NOT NULL FROM onboarding.account_status($1::text::uuid)",
        &[&user],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
}

fn wait_for_status(
    db: &mut Client,
    user: &str,
    what: &str,
    deadline: Duration,
    want: impl Fn(&Status) -> bool,
) -> Result<Status, Failed> {
    wait_for(what, deadline, || status(db, user).filter(|s| want(s)))
}

/// At the default intervals: after an account link (2 s polls for 10 minutes), each onboarding
/// step shows in account_status, readiness within one poll of Stripe enabling the account, with
/// a NOTIFY; disabling and disconnecting take it back.
fn an_account_onboarded_at_stripe_is_ready_within_a_poll() -> Result<(), Failed> {
    let mut db = db();
    let table = "public.profiles_inbound";
    let (user, account) = provider(&mut db, table);
    ensure(!ready(&mut db, &user), || "a new account is ready".into())?;
    let link: String = db
        .query_one(
            "SELECT onboarding.create_account_link($1, 'https://example.com/refresh', 'https://example.com/return',
                                                   profile_table => $2::text::regclass)",
            &[&user, &table],
        )
        .unwrap()
        .get(0);
    ensure(link.starts_with("http"), || format!("link {link}"))?;
    let mut listener = crate::helpers::db();
    listener.batch_execute("LISTEN onboarding_accounts").unwrap();
    let poll = Duration::from_secs(2) + Duration::from_secs(3); // the fast interval, and a margin

    env().stripe.set_onboarding(&account, Onboarding::requirements_due()).unwrap();
    wait_for_status(&mut db, &user, "requirements due", poll, |s| {
        !s.0 && !s.4.is_empty() && s.5.as_deref() == Some("requirements.past_due")
    })?;
    env().stripe.set_onboarding(&account, Onboarding::DetailsSubmitted).unwrap();
    wait_for_status(&mut db, &user, "details submitted", poll, |s| s.3 && !s.0)?;
    let enabled_at = Instant::now();
    env().stripe.set_onboarding(&account, Onboarding::Enabled).unwrap();
    wait_for("account_ready", poll, || ready(&mut db, &user).then_some(()))?;
    println!("    account enabled at Stripe -> account_ready true: {:?}", enabled_at.elapsed());
    let status = status(&mut db, &user).unwrap();
    ensure(status == (true, true, true, true, vec![], None, false), || format!("{status:?}"))?;
    // A hint for whoever listens, naming the table only: any role may LISTEN.
    let heard: Vec<String> = listener
        .notifications()
        .timeout_iter(Duration::from_secs(1))
        .iterator()
        .filter_map(Result::ok)
        .map(|n| n.payload().to_string())
        .collect();
    ensure(
        heard.iter().any(|p| p == table) && heard.iter().all(|p| !p.contains(&user) && !p.contains(&account)),
        || format!("NOTIFY onboarding_accounts: {heard:?}"),
    )?;

    // The user's sequence() tells what Stripe said, and stats how far the reader is.
    let lines: Vec<String> = db
        .query("SELECT line FROM onboarding.sequence($1) WHERE step = 'stripe_account_updated'", &[&user])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ready_line = format!("Stripe says account {account} is ready");
    ensure(
        lines
            .iter()
            // What is due, as the event or a read of the account lists it.
            .any(|l| l.contains("not ready (disabled: requirements.past_due, due: ") && l.contains("external_account"))
            && lines.last() == Some(&ready_line),
        || format!("sequence lines: {lines:?}"),
    )?;
    let lag: Option<f64> = db
        .query_one("SELECT value::float8 FROM onboarding.stats WHERE metric = 'Stripe events cursor lag (s)'", &[])
        .unwrap()
        .get(0);
    ensure(lag.is_some_and(|l| l < 60.0), || format!("cursor lag {lag:?}"))?;

    env().stripe.set_onboarding(&account, Onboarding::disabled("rejected.fraud")).unwrap();
    wait_for_status(&mut db, &user, "disabled", poll, |s| !s.0 && s.5.as_deref() == Some("rejected.fraud"))?;
    env().stripe.set_onboarding(&account, Onboarding::Enabled).unwrap();
    wait_for("ready again", poll, || ready(&mut db, &user).then_some(()))?;
    ensure(env().stripe.deauthorize_account(&account), || "no account to deauthorize".into())?;
    wait_for_status(&mut db, &user, "deauthorized", poll, |s| s.6 && !s.0)?;
    ensure(!ready(&mut db, &user), || "a disconnected account is ready".into())?;
    // A disconnected account answers nothing but "no access": it is no longer read, though it is
    // not ready and its link's fast minutes are not over (it was, at every poll, and daily after).
    env().stripe.clear_requests();
    let account_path = format!("/v1/accounts/{account}");
    wait_for("two polls of Stripe's events", poll * 2, || {
        let polls = env().stripe.requests().iter().filter(|r| r.method == "GET" && r.path == "/v1/events").count();
        (polls >= 2).then_some(())
    })?;
    let reads = env().stripe.requests().iter().filter(|r| r.method == "GET" && r.path == account_path).count();
    ensure(reads == 0, || format!("the disconnected account was read {reads} times in two polls"))
}

/// Moves the cursor back to before every event of the account, and forgets or keeps what was
/// applied: events read again are skipped, and old ones applied again never undo newer state.
fn events_read_again_or_out_of_order_leave_the_newest_state() -> Result<(), Failed> {
    let mut db = db();
    with_fast_event_polls(&mut db, |db| {
        let table = "public.profiles_inbound_order";
        let (user, account) = provider(db, table);
        env().stripe.set_onboarding(&account, Onboarding::requirements_due()).unwrap();
        env().stripe.set_onboarding(&account, Onboarding::Enabled).unwrap();
        wait_for("account_ready", DEADLINE, || ready(db, &user).then_some(()))?;
        let first_event = env()
            .stripe
            .events()
            .into_iter()
            .find(|e| e["data"]["object"]["id"] == account.as_str())
            .and_then(|e| e["id"].as_str().map(str::to_string))
            .unwrap();
        // Read from there once (the first poll started at Stripe's newest event and read the
        // account itself: what came before may not be applied yet), then again.
        rewind(db, &first_event, false);
        wait_for("the rewound poll", DEADLINE, || polled_past(db, &first_event))?;
        ensure(ready(db, &user), || "older events applied late undid readiness".into())?;
        let applied_before: i64 =
            db.query_one("SELECT events_applied FROM onboarding.events_cursor", &[]).unwrap().get(0);
        rewind(db, &first_event, false);
        wait_for("the second rewound poll", DEADLINE, || polled_past(db, &first_event))?;
        let applied_after: i64 =
            db.query_one("SELECT events_applied FROM onboarding.events_cursor", &[]).unwrap().get(0);
        ensure(applied_after == applied_before, || format!("applied {applied_before} then {applied_after}"))?;
        ensure(ready(db, &user), || "reading events again undid readiness".into())?;

        // Applied again as if new (ids forgotten) over state from a later read (as a read of
        // the account a minute on would give): every event is older, none may overwrite it.
        db.execute(
            "UPDATE onboarding.connect_accounts SET charges_enabled = false, disabled_reason = 'rejected.other',
                    as_of = as_of + 60 WHERE account_id = $1",
            &[&account],
        )
        .unwrap();
        rewind(db, &first_event, true);
        wait_for("the rewound poll", DEADLINE, || polled_past(db, &first_event))?;
        let s = status(db, &user).unwrap();
        ensure(s == (false, false, true, true, vec![], Some("rejected.other".into()), false), || {
            format!("older events overwrote newer state: {s:?}")
        })
    })
}

/// Moves the cursor to `event` (events after it are read again), forgetting the applied ids if
/// `forget`.
fn rewind(db: &mut Client, event: &str, forget: bool) {
    if forget {
        db.execute("DELETE FROM onboarding.stripe_events_applied", &[]).unwrap();
    }
    // Between polls: a poll in flight would move the cursor past the rewind.
    wait_for("a moment between polls", DEADLINE, || {
        let moved = db
            .execute(
                "UPDATE onboarding.events_cursor SET last_event_id = $1, next_poll_at = now() WHERE polling_pid IS NULL",
                &[&event],
            )
            .unwrap();
        (moved == 1).then_some(())
    })
    .unwrap();
}

/// The cursor moved past `event` and no account waits to be read again (a same-second event's).
fn polled_past(db: &mut Client, event: &str) -> Option<()> {
    let row = db
        .query_one(
            "SELECT last_event_id IS DISTINCT FROM $1
                    AND NOT EXISTS (SELECT FROM onboarding.connect_accounts WHERE refresh_due)
               FROM onboarding.events_cursor",
            &[&event],
        )
        .unwrap();
    row.get::<_, bool>(0).then_some(())
}

/// Stripe keeps 30 days of events: a cursor older than that is lost, the reader says so, starts
/// at the newest event and reads the accounts themselves, so a change made meanwhile still shows.
fn a_cursor_past_stripe_retention_starts_again_from_the_accounts() -> Result<(), Failed> {
    let mut db = db();
    with_fast_event_polls(&mut db, |db| {
        let table = "public.profiles_inbound_lost";
        let (user, account) = provider(db, table);
        env().stripe.set_onboarding(&account, Onboarding::requirements_due()).unwrap();
        wait_for_status(db, &user, "requirements due", DEADLINE, |s| !s.4.is_empty())?;
        // A stored cursor of this test server's events to lose (not one left by an earlier test,
        // whose loss the next poll notes anyway); the reader may have learnt the state by reading
        // the account.
        wait_for("a stored cursor of these events", DEADLINE, || {
            let cursor: Option<String> =
                db.query_one("SELECT last_event_id FROM onboarding.events_cursor", &[]).unwrap().get(0);
            let held = |id: &String| env().stripe.events().iter().any(|e| e["id"].as_str() == Some(id.as_str()));
            cursor.filter(held)
        })?;
        // Slow polls while Stripe forgets every event, the enabling one too. A poll in flight
        // would set its own next poll when it ends: put the next one off only when none is.
        set_and_reload(db, "onboarding.events_poll_interval = '1h'");
        wait_for("no poll in flight", DEADLINE, || {
            let put_off = db
                .execute(
                    "UPDATE onboarding.events_cursor SET next_poll_at = now() + interval '1 hour'
                      WHERE polling_pid IS NULL",
                    &[],
                )
                .unwrap();
            (put_off == 1).then_some(())
        })?;
        let lost_before: Option<std::time::SystemTime> =
            db.query_one("SELECT cursor_lost_at FROM onboarding.events_cursor", &[]).unwrap().get(0);
        env().stripe.set_onboarding(&account, Onboarding::Enabled).unwrap();
        env().stripe.age_events(31);
        set_and_reload(db, "onboarding.events_poll_interval = '200ms'");
        db.execute("UPDATE onboarding.events_cursor SET next_poll_at = now()", &[]).unwrap();
        wait_for("the lost cursor to be noted", DEADLINE, || {
            let lost: Option<std::time::SystemTime> =
                db.query_one("SELECT cursor_lost_at FROM onboarding.events_cursor", &[]).unwrap().get(0);
            (lost.is_some() && lost != lost_before).then_some(())
        })?;
        wait_for("account_ready after the lost cursor", DEADLINE, || ready(db, &user).then_some(()))
    })
}

/// The events are read in the background: while Stripe takes 5 s to answer a read, a signup's
/// customer is created and written back as at any other time.
fn a_stalled_read_of_events_delays_no_signup() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_inbound_stall");
    env().stripe.inject(stripe_emulator::Fault::stall(Duration::from_secs(5)).on("GET", "/v1/events").times(1));
    with_fast_event_polls(&mut db, |db| {
        db.execute("UPDATE onboarding.events_cursor SET next_poll_at = now()", &[]).unwrap();
        wait_for("the read to stall", DEADLINE, || (env().stripe.pending_faults() == 0).then_some(()))?;
        let started = Instant::now();
        let user = insert_profile(db, &table, Some("signup@example.com"));
        wait_for("the signup's customer", DEADLINE, || customer_id(db, &table, &user))?;
        let took = started.elapsed();
        ensure(took < Duration::from_secs(2), || format!("the signup waited {took:?} behind a stalled read"))?;
        let polling: bool =
            db.query_one("SELECT polling_pid IS NOT NULL FROM onboarding.events_cursor", &[]).unwrap().get(0);
        ensure(polling, || "the read was no longer stalled: the test shows nothing".into())
    })
}

/// attach(readiness_columns => ...) names boolean profile columns that follow the account's
/// readiness; a held profile row waits (the readiness table does not), and columns named later
/// are filled in for accounts that exist already. Bad mappings are refused with the reason.
fn profile_columns_named_at_attach_follow_the_account() -> Result<(), Failed> {
    let mut db = db();
    let table = "public.profiles_inbound_columns";
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
             stripe_customer_id text, stripe_connect_account_id text,
             stripe_account_ready boolean NOT NULL DEFAULT false, stripe_payouts_enabled boolean);"
    ))
    .unwrap();
    for (columns, code) in [
        (r#"{"rdy": "stripe_account_ready"}"#, "22023"),
        (r#"{"ready": "email"}"#, "42804"),
        (r#"{"ready": "no_such_column"}"#, "42804"),
    ] {
        let (got, message) = sqlstate(db.query_one(
            &format!(
                "SELECT onboarding.attach('{table}', connect_policy => 'always', readiness_columns => $1::text::jsonb)"
            ),
            &[&columns],
        ))?;
        ensure(got == code, || format!("{columns}: {got} {message}"))?;
    }
    db.batch_execute(&format!(
        r#"SELECT onboarding.attach('{table}', connect_policy => 'always',
               readiness_columns => '{{"ready": "stripe_account_ready", "payouts_enabled": "stripe_payouts_enabled"}}')"#
    ))
    .unwrap();
    // Lowered by a reload, the interval applies at once (not after a poll already due in 15 s).
    with_fast_event_polls(&mut db, |db| {
        let user: String = db
            .query_one(&format!("INSERT INTO {table} (email) VALUES ('columns@example.com') RETURNING id::text"), &[])
            .unwrap()
            .get(0);
        let account = wait_for_account(db, table, &user)?;
        let columns = |db: &mut Client| -> (bool, Option<bool>) {
            let row = db
                .query_one(
                    &format!("SELECT stripe_account_ready, stripe_payouts_enabled FROM {table} WHERE id::text = $1"),
                    &[&user],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        env().stripe.set_onboarding(&account, Onboarding::Enabled).unwrap();
        wait_for("the profile's columns", DEADLINE, || (columns(db) == (true, Some(true))).then_some(()))?;

        let mut holder = crate::helpers::db();
        let mut lock = holder.transaction().unwrap();
        lock.execute(&format!("SELECT 1 FROM {table} WHERE id::text = $1 FOR UPDATE"), &[&user]).unwrap();
        env().stripe.set_onboarding(&account, Onboarding::disabled("rejected.fraud")).unwrap();
        wait_for_status(db, &user, "disabled", DEADLINE, |s| !s.0)?;
        let behind: bool = db
            .query_one("SELECT profile_behind FROM onboarding.connect_accounts WHERE account_id = $1", &[&account])
            .unwrap()
            .get(0);
        ensure(behind && columns(db) == (true, Some(true)), || "the held row was written".into())?;
        lock.commit().unwrap();
        wait_for("the profile's columns after the lock", DEADLINE, || {
            (columns(db) == (false, Some(false))).then_some(())
        })?;

        // A column named later is filled in for the account that exists.
        db.batch_execute(&format!(
            r#"ALTER TABLE {table} ADD COLUMN stripe_charges_enabled boolean;
               SELECT onboarding.attach('{table}', connect_policy => 'always',
                   readiness_columns => '{{"ready": "stripe_account_ready", "charges_enabled": "stripe_charges_enabled"}}')"#
        ))
        .unwrap();
        wait_for("the new column", DEADLINE, || {
            let charges: Option<bool> = db
                .query_one(&format!("SELECT stripe_charges_enabled FROM {table} WHERE id::text = $1"), &[&user])
                .unwrap()
                .get(0);
            charges.is_some().then_some(())
        })
        .map(|_| ())
    })
}

/// Stripe may list a connected account's events only under its `Stripe-Account`, not in the
/// platform's `GET /v1/events`: after an account link the account itself is read at each poll
/// until it is ready, so readiness follows within a poll either way.
fn readiness_follows_a_linked_account_without_its_events() -> Result<(), Failed> {
    let mut db = db();
    let table = "public.profiles_inbound_unlisted";
    let (user, account) = provider(&mut db, table);
    env().stripe.set_connect_events_listed(false);
    db.query_one(
        "SELECT onboarding.create_account_link($1, 'https://example.com/refresh', 'https://example.com/return',
                                               profile_table => $2::text::regclass)",
        &[&user, &table],
    )
    .unwrap();
    let poll = Duration::from_secs(2) + Duration::from_secs(3); // the fast interval, and a margin
    // Read once already (a new account is read at the next poll): what follows is news.
    wait_for("the first read of the account", DEADLINE, || {
        db.query_opt("SELECT FROM onboarding.connect_accounts WHERE account_id = $1 AND as_of IS NOT NULL", &[&account])
            .unwrap()
            .map(|_| ())
    })?;
    env().stripe.set_onboarding(&account, Onboarding::Enabled).unwrap();
    let enabled_at = Instant::now();
    let result = wait_for("account_ready without account events", poll, || ready(&mut db, &user).then_some(()));
    let listed = env()
        .stripe
        .events()
        .iter()
        .any(|e| e["type"] == "account.updated" && e["data"]["object"]["id"] == account.as_str());
    env().stripe.set_connect_events_listed(true);
    result?;
    println!("    account enabled (its events unlisted) -> account_ready true: {:?}", enabled_at.elapsed());
    ensure(listed, || "the emulator recorded no account.updated: the test shows nothing".into())
}

/// A worker stopped in the middle of a poll (a restart, a crash, a failover) leaves its turn taken
/// (`events_cursor.polling_pid`): the next poll takes it over at once, since that process is gone,
/// instead of reading no event for a minute.
fn a_turn_left_by_a_reader_that_is_gone_is_taken_at_once() -> Result<(), Failed> {
    let mut db = db();
    let gone: i32 = {
        let mut other = crate::env().cluster.connect();
        other.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
    };
    wait_for("the closed session to leave pg_stat_activity", DEADLINE, || {
        let left: bool =
            db.query_one("SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", &[&gone]).unwrap().get(0);
        left.then_some(())
    })?;
    with_fast_event_polls(&mut db, |db| {
        // Let any poll in flight finish, then leave the turn to the gone process, as a stop would.
        let polled_before = wait_for("no poll in flight", DEADLINE, || {
            db.query_opt(
                "UPDATE onboarding.events_cursor SET polling_pid = $1, polling_since = now(), next_poll_at = now()
                  WHERE polling_pid IS NULL
                  RETURNING coalesce(polled_at, 'epoch')",
                &[&gone],
            )
            .unwrap()
            .map(|row| row.get::<_, std::time::SystemTime>(0))
        })?;
        let left_at = Instant::now();
        // Well under the minute after which a live reader's turn is taken over.
        wait_for("another worker to take the turn and poll", Duration::from_secs(10), || {
            let polled: bool = db
                .query_one("SELECT polled_at > $1 FROM onboarding.events_cursor", &[&polled_before])
                .unwrap()
                .get::<_, Option<bool>>(0)
                .unwrap_or(false);
            polled.then_some(())
        })?;
        ensure(left_at.elapsed() < Duration::from_secs(10), || "took the minute's takeover".into())
    })
}
