//! A role granted the application functions, as docs/src/operations/security.md advises, gets no further than its
//! grants: no code of its own runs with the extension's rights, and it reads the readiness of
//! the profiles it may read itself, nobody else's.

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::helpers::{db, ensure};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        a_callers_own_cast_never_runs_with_the_extensions_rights,
        account_ready_and_status_answer_only_for_profiles_the_caller_may_read,
    ]
}

/// Before the fix, `account_ready(anyelement)` (SECURITY DEFINER) cast its argument to text: a
/// role's own enum type with its own `CREATE CAST (… AS text)` ran the cast function as the
/// extension's owner, and the role made itself superuser.
fn a_callers_own_cast_never_runs_with_the_extensions_rights() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute(
        "DROP SCHEMA IF EXISTS caster CASCADE;
         DROP ROLE IF EXISTS caster;
         CREATE ROLE caster LOGIN;
         CREATE SCHEMA caster AUTHORIZATION caster;
         GRANT USAGE ON SCHEMA onboarding TO caster;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA onboarding TO caster;
         REVOKE EXECUTE ON FUNCTION onboarding._as_owner(oid, text, text[]) FROM caster;
         SET ROLE caster;
         CREATE TABLE caster.ran (as_role text, superuser boolean);
         CREATE TYPE caster.uid AS ENUM ('x');
         CREATE FUNCTION caster.uid_text(caster.uid) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN
             BEGIN
                 ALTER ROLE caster SUPERUSER;
             EXCEPTION WHEN OTHERS THEN NULL;
             END;
             INSERT INTO caster.ran SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
             RETURN 'x';
         END $$;
         CREATE CAST (caster.uid AS text) WITH FUNCTION caster.uid_text(caster.uid) AS IMPLICIT;
         RESET ROLE;
         -- A followed account: the cast ran once per row compared (none ran on an empty table).
         INSERT INTO onboarding.connect_accounts (account_id, profile_table, user_id)
         VALUES ('acct_caster', 'caster.ran', 'someone');",
    )
    .unwrap();
    db.batch_execute("SET ROLE caster").unwrap();
    // Resolved to account_ready(text) through the caller's implicit cast (run as the caller, before
    // the call), or refused: either way, never cast inside the function.
    let answers: Vec<String> = [
        "SELECT onboarding.account_ready('x'::caster.uid)::text",
        "SELECT count(*)::text FROM onboarding.account_status('x'::caster.uid)",
    ]
    .iter()
    .map(|call| match db.query_one(*call, &[]) {
        Ok(row) => row.get(0),
        Err(e) => format!("{}: {e}", e.code().map_or("?", |c| c.code())),
    })
    .collect();
    db.batch_execute("RESET ROLE").unwrap();
    let superuser: bool = db.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'caster'", &[])?.get(0);
    let ran: Vec<(String, bool)> =
        db.query("SELECT as_role, superuser FROM caster.ran", &[])?.iter().map(|r| (r.get(0), r.get(1))).collect();
    db.batch_execute(
        "ALTER ROLE caster NOSUPERUSER; DELETE FROM onboarding.connect_accounts WHERE account_id = 'acct_caster'",
    )
    .unwrap();
    ensure(!superuser, || format!("the caller's cast made it superuser (it ran as {ran:?}; answers {answers:?})"))?;
    ensure(ran.iter().all(|(role, superuser)| role == "caster" && !superuser), || {
        format!("the caller's cast ran with other rights: {ran:?}")
    })?;
    ensure(answers.iter().all(|a| a == "false" || a == "0" || a.starts_with("42883")), || {
        format!("answers: {answers:?}")
    })?;
    Ok(())
}

/// The application role sees only its own profile (row-level security, Supabase style). Before the
/// fix, account_status and account_ready answered for any user id: the role read another user's
/// account id, requirements and disabled reason.
fn account_ready_and_status_answer_only_for_profiles_the_caller_may_read() -> Result<(), Failed> {
    let mut db = db();
    db.batch_execute(
        "DROP TABLE IF EXISTS public.profiles_ready_rls;
         CREATE TABLE public.profiles_ready_rls (id uuid PRIMARY KEY, email text, stripe_customer_id text,
                                                 stripe_connect_account_id text);
         SELECT onboarding.attach('public.profiles_ready_rls', connect_account_column => 'stripe_connect_account_id');
         DROP ROLE IF EXISTS ready_app;
         CREATE ROLE ready_app;
         GRANT SELECT ON public.profiles_ready_rls TO ready_app;
         ALTER TABLE public.profiles_ready_rls ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_profile ON public.profiles_ready_rls TO ready_app
             USING (id::text = current_setting('app.user_id', true));
         GRANT USAGE ON SCHEMA onboarding TO ready_app;
         GRANT EXECUTE ON FUNCTION onboarding.account_ready(text), onboarding.account_ready(uuid),
             onboarding.account_status(text), onboarding.account_status(uuid) TO ready_app;",
    )
    .unwrap();
    // Two ready accounts, as the events reader records them (no Stripe involved: this is about
    // who may read them). The profiles carry a customer already, so nothing is provisioned.
    let users: Vec<(String, String)> = ["alice", "bob"]
        .iter()
        .map(|name| {
            let row = db
                .query_one(
                    "WITH p AS (INSERT INTO public.profiles_ready_rls
                                 VALUES (gen_random_uuid(), $1 || '@example.com', 'cus_' || $1, 'acct_rls' || $1)
                                 RETURNING id::text, stripe_connect_account_id)
                     INSERT INTO onboarding.connect_accounts (account_id, profile_table, user_id, charges_enabled,
                                                              payouts_enabled, details_submitted, as_of)
                     SELECT p.stripe_connect_account_id, 'public.profiles_ready_rls', p.id, true, true, true,
                            extract(epoch FROM now())::bigint
                       FROM p RETURNING user_id, account_id",
                    &[name],
                )
                .unwrap();
            (row.get(0), row.get(1))
        })
        .collect();
    let [(alice, alice_account), (bob, bob_account)] = &users[..] else { unreachable!() };
    let as_alice = |db: &mut Client, sql: &str, user: &str| -> Result<(Option<bool>, Vec<String>), Failed> {
        db.batch_execute(&format!("SET ROLE ready_app; SET app.user_id = '{alice}'")).unwrap();
        let ready =
            db.query_one(&format!("SELECT onboarding.account_ready($1::text::{sql})"), &[&user]).map(|r| r.get(0));
        let accounts = db
            .query(&format!("SELECT account_id FROM onboarding.account_status($1::text::{sql})"), &[&user])
            .map(|rows| rows.iter().map(|r| r.get(0)).collect());
        db.batch_execute("RESET ROLE; RESET app.user_id").unwrap();
        Ok((ready?, accounts?))
    };
    for sql_type in ["text", "uuid"] {
        let own = as_alice(&mut db, sql_type, alice)?;
        ensure(own == (Some(true), vec![alice_account.clone()]), || format!("alice's own ({sql_type}): {own:?}"))?;
        let other = as_alice(&mut db, sql_type, bob)?;
        ensure(other == (Some(false), vec![]), || {
            format!("bob's {bob_account} seen by alice ({sql_type}): {other:?}")
        })?;
    }
    // A superuser still sees every account.
    let ready: bool = db.query_one("SELECT onboarding.account_ready($1::text::uuid)", &[bob])?.get(0);
    ensure(ready, || format!("the superuser no longer sees {bob}'s ready account"))?;
    db.batch_execute(
        "DELETE FROM onboarding.connect_accounts WHERE profile_table = 'public.profiles_ready_rls'::regclass",
    )
    .unwrap();
    Ok(())
}
