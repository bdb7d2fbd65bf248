//! attach() and the policy setters refuse, at once and with a clear SQLSTATE, what would make every
//! later write fail, and quote at most a short prefix of any argument.

use libtest_mimic::{Failed, Trial};

use crate::helpers::{db, ensure, sqlstate};

pub(crate) fn tests() -> Vec<Trial> {
    trials![attach_refuses_a_column_for_two_purposes_a_generated_column_and_echoes_no_huge_argument]
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
