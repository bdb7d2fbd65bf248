//! attach() and the policy setters refuse, at once and with a clear SQLSTATE, what would make every
//! later write fail, and quote at most a short prefix of any argument; bad input elsewhere (a
//! dropped table, a table not attached, a malformed id) is named for what it is.

use libtest_mimic::{Failed, Trial};

use crate::helpers::{db, ensure, sqlstate};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        attach_refuses_a_column_for_two_purposes_a_generated_column_and_echoes_no_huge_argument,
        bad_input_is_answered_with_what_is_wrong,
    ]
}

/// Before the fix, attach accepted the same column as customer and Connect account, and a generated
/// customer column: every write-back then failed with a WARNING. A 1 MB policy was echoed whole.
fn attach_refuses_a_column_for_two_purposes_a_generated_column_and_echoes_no_huge_argument() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute(
        "DROP TABLE IF EXISTS public.profiles_attach_checks;
         CREATE TABLE public.profiles_attach_checks (id uuid PRIMARY KEY, email text, stripe_customer_id text,
             stripe_connect_account_id text, ready boolean,
             generated_customer text GENERATED ALWAYS AS ('cus_' || id::text) STORED);",
    )
    .unwrap();
    let cases = [
        (
            "same column twice",
            "SELECT onboarding.attach('public.profiles_attach_checks', \
          connect_account_column => 'stripe_customer_id')",
        ),
        (
            "readiness on the email",
            "SELECT onboarding.attach('public.profiles_attach_checks', \
          connect_account_column => 'stripe_connect_account_id', \
          readiness_columns => '{\"ready\": \"ready\", \"payouts_enabled\": \"ready\"}')",
        ),
        (
            "generated customer",
            "SELECT onboarding.attach('public.profiles_attach_checks', \
          customer_column => 'generated_customer')",
        ),
    ];
    for (what, sql) in cases {
        let (code, message) = sqlstate(db.simple_query(sql))?;
        ensure(code == "22023", || format!("{what}: {code} {message}"))?;
    }
    db.batch_execute("SELECT onboarding.attach('public.profiles_attach_checks')").unwrap();
    let huge = "x".repeat(1 << 20);
    for sql in [
        "SELECT onboarding.set_connect_policy('public.profiles_attach_checks', $1)",
        "SELECT onboarding.set_stripe_change_policy('public.profiles_attach_checks', customer_deleted => $1)",
    ] {
        let (code, message) = sqlstate(db.query(sql, &[&huge]))?;
        ensure(code == "22023" && message.len() < 1000, || {
            format!("{sql}: {code}, a message of {} characters", message.len())
        })?;
    }
    db.batch_execute("SELECT onboarding.detach('public.profiles_attach_checks')").unwrap();
    Ok(())
}

/// Before the fix: attach() of a dropped table's oid said "has no column id" (42703); backfill()
/// of a table not attached returned nothing, silently; a malformed id for a bigint id column was
/// answered 42501 "no profile that this role may read" even to a role that may read the whole
/// table. A role that may not read it still learns nothing about which ids exist.
fn bad_input_is_answered_with_what_is_wrong() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute(
        "DROP TABLE IF EXISTS public.profiles_bad_input, public.profiles_not_attached;
         CREATE TABLE public.profiles_bad_input (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text,
                                                 stripe_customer_id text);
         SELECT onboarding.attach('public.profiles_bad_input');
         CREATE TABLE public.profiles_not_attached (id bigint PRIMARY KEY, email text, stripe_customer_id text);
         DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bad_input_app') THEN CREATE ROLE bad_input_app; END IF;
         END $$;
         GRANT USAGE ON SCHEMA onboarding TO bad_input_app;
         GRANT EXECUTE ON FUNCTION onboarding.enqueue_customer(text, regclass) TO bad_input_app;
         DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bad_input_reader') THEN
                 CREATE ROLE bad_input_reader IN ROLE bad_input_app;
             END IF;
         END $$;
         GRANT SELECT ON public.profiles_bad_input TO bad_input_reader;",
    )?;
    let cases = [
        ("a dropped table's oid", "42P01", "SELECT onboarding.attach(987654321::oid::regclass)"),
        ("backfill of a table not attached", "55000", "CALL onboarding.backfill('public.profiles_not_attached')"),
        ("a malformed bigint id", "22P02", "SELECT onboarding.enqueue_customer('12abc', 'public.profiles_bad_input')"),
        (
            "an out-of-range bigint id",
            "22003",
            "SELECT onboarding.enqueue_customer('99999999999999999999', 'public.profiles_bad_input')",
        ),
        (
            "a malformed id, to a role that may read the table",
            "22P02",
            "SET ROLE bad_input_reader; SELECT onboarding.enqueue_customer('12abc', 'public.profiles_bad_input')",
        ),
        (
            "an out-of-range id, to a role that may read the table",
            "22003",
            "SET ROLE bad_input_reader; \
             SELECT onboarding.enqueue_customer('99999999999999999999', 'public.profiles_bad_input')",
        ),
        (
            "a malformed id, to a role that may not read the table",
            "42501",
            "SET ROLE bad_input_app; SELECT onboarding.enqueue_customer('12abc', 'public.profiles_bad_input')",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, code, statement) in cases {
        match sqlstate(db.batch_execute(statement)) {
            Ok((got, _)) if got == code => {}
            Ok((got, message)) => wrong.push(format!("{what}: expected {code}, got {got} {message}")),
            Err(_) => wrong.push(format!("{what}: expected {code}, got no error")),
        }
        db.batch_execute("RESET ROLE")?;
    }
    ensure(wrong.is_empty(), || wrong.join("\n"))
}
