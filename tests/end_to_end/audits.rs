//! Operations: audits, sequence and stats, backfill of existing profiles, retention, and reconcile.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use stripe_emulator::Fault;

use crate::env;
use crate::helpers::plant_running_job;
use crate::helpers::{
    API_KEY, customer_id, db, ensure, events_for, insert_profile, jobs_for, only_job, profiles_table, wait_for,
    wait_for_customer, wait_for_state,
};

pub(crate) fn tests() -> Vec<Trial> {
    trials![
        audits_find_the_planted_gaps,
        backfill_provisions_existing_profiles_once_with_progress,
        retention_prunes_finished_jobs_but_keeps_dead_ones,
        reconcile_repairs_what_the_audits_find,
        audits_work_on_a_stripe_account_without_connect,
        a_connect_column_alone_needs_no_connect_platform,
        a_customer_made_after_the_snapshot_is_not_missing,
    ]
}

/// Database `name`, made afresh, with the extension and what `setup` adds (a Stripe account of its
/// own shape, apart from the shared test database).
fn fresh_database(name: &str, setup: &str) -> Client {
    let mut db = db();
    // One statement each: neither runs in the implicit transaction of a multi-statement batch.
    db.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    db.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut other = env().cluster.connect_to(name);
    other.batch_execute(&format!("CREATE EXTENSION onboarding; {setup}")).unwrap();
    other
}

/// The server's message of a failed statement.
fn db_error(e: &postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
}

/// A Stripe account without Connect refuses to list accounts (here a 403 on `GET /v1/accounts`).
/// Where no attached table has a Connect-account column, the snapshot lists customers only and
/// says so, and the audits work (before, audit_orphans failed with the listing's error, and every
/// audit on a table without a Connect-account column).
fn audits_work_on_a_stripe_account_without_connect() -> Result<(), Failed> {
    let mut other = fresh_database(
        "no_connect",
        "CREATE TABLE public.members (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
                                      stripe_customer_id text);
         SELECT onboarding.attach('public.members');",
    );
    let user = insert_profile(&mut other, "public.members", Some("member@example.com"));
    let customer = wait_for_customer(&mut other, "public.members", &user)?;
    env().stripe.inject(
        Fault::status(403).on("GET", "/v1/accounts").message("This application does not have Connect enabled."),
    );
    let orphans = other.query("SELECT stripe_id FROM onboarding.audit_orphans()", &[]);
    let snapshot = other
        .query_one("SELECT accounts_listed, customers FROM onboarding.stripe_snapshots ORDER BY id DESC LIMIT 1", &[]);
    let mismatches = other.query("SELECT user_id FROM onboarding.audit_mismatches(false)", &[]);
    // (Every audit formatted a NULL Connect-account column as an identifier: they all failed on
    // a table without one.)
    let missing = other.query("SELECT user_id FROM onboarding.audit_missing()", &[]);
    other.batch_execute("DROP EXTENSION onboarding CASCADE").unwrap(); // its worker leaves
    let orphans = orphans.map_err(|e| format!("audit_orphans failed: {}", db_error(&e)))?;
    ensure(orphans.iter().all(|r| r.get::<_, String>(0) != customer), || "the member's customer is an orphan".into())?;
    let snapshot = snapshot.unwrap();
    ensure(!snapshot.get::<_, bool>(0) && snapshot.get::<_, i32>(1) >= 1, || {
        format!("snapshot: accounts_listed {}, {} customers", snapshot.get::<_, bool>(0), snapshot.get::<_, i32>(1))
    })?;
    let mismatches = mismatches.map_err(|e| format!("audit_mismatches failed: {}", db_error(&e)))?;
    ensure(mismatches.is_empty(), || format!("{} mismatches", mismatches.len()))?;
    let missing = missing.map_err(|e| format!("audit_missing failed: {}", db_error(&e)))?;
    ensure(missing.is_empty(), || format!("{} missing", missing.len()))
}

/// The seed's own schema: `profiles` has a `stripe_connect_account_id` column, which `attach`
/// picks up, and the platform wants customers only (policy `never`), on a Stripe account that is
/// not a Connect platform (it answers 404 to listing accounts). Before the fix the column made
/// Connect "in use": the snapshot listed accounts and failed, and every audit with it. Now the
/// audits check customers; once Connect is in use and Stripe still refuses, they say what they
/// could not check, in their result and in the snapshot.
fn a_connect_column_alone_needs_no_connect_platform() -> Result<(), Failed> {
    let mut other = fresh_database(
        "connect_column_only",
        "CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
                                       stripe_customer_id text, stripe_connect_account_id text);
         SELECT onboarding.attach('public.profiles');",
    );
    let user = insert_profile(&mut other, "public.profiles", Some("seed@example.com"));
    let customer = wait_for_customer(&mut other, "public.profiles", &user)?;
    let not_connect =
        Fault::status(404).on("GET", "/v1/accounts").message("Unrecognized request URL (GET: /v1/accounts).");
    env().stripe.set_random_faults(1.0, vec![not_connect]);
    let result = (|| -> Result<(), Failed> {
        let orphans = other.query("SELECT stripe_id FROM onboarding.audit_orphans()", &[]);
        let orphans = orphans.map_err(|e| format!("audit_orphans failed: {}", db_error(&e)))?;
        ensure(orphans.iter().all(|r| r.get::<_, Option<String>>(0).as_deref() != Some(customer.as_str())), || {
            "the customer is an orphan".into()
        })?;
        let mismatches = other.query("SELECT problem FROM onboarding.audit_mismatches(false)", &[]);
        let mismatches = mismatches.map_err(|e| format!("audit_mismatches failed: {}", db_error(&e)))?;
        ensure(mismatches.is_empty(), || format!("{} mismatches", mismatches.len()))?;
        // Connect in use now, and Stripe still refuses: the snapshot and the audits say so.
        other.batch_execute("SELECT onboarding.set_connect_policy('public.profiles', 'always')")?;
        let unchecked: Vec<String> = other
            .query("SELECT problem FROM onboarding.audit_orphans() WHERE stripe_id IS NULL", &[])
            .map_err(|e| format!("audit_orphans failed: {}", db_error(&e)))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ensure(unchecked.len() == 1 && unchecked[0].starts_with("not checked: Stripe refused to list them"), || {
            format!("audit_orphans: {unchecked:?}")
        })?;
        let why: Option<String> = other
            .query_one("SELECT accounts_not_listed_why FROM onboarding.stripe_snapshots ORDER BY id DESC LIMIT 1", &[])?
            .get(0);
        ensure(why.as_deref().is_some_and(|w| w.contains("404")), || format!("accounts_not_listed_why {why:?}"))?;
        // reconcile reads that line for what it is, not as an orphan (with no id) to delete.
        let planned: Vec<(String, Option<String>)> = other
            .query("SELECT action, stripe_id FROM onboarding.reconcile()", &[])
            .map_err(|e| format!("reconcile failed: {}", db_error(&e)))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        ensure(!planned.iter().any(|(action, id)| action == "delete orphan" && id.is_none()), || {
            format!("reconcile plans {planned:?}")
        })?;
        other
            .query("SELECT * FROM onboarding.reconcile(dry_run => false)", &[])
            .map_err(|e| format!("reconcile(dry_run => false) failed: {}", db_error(&e)))?;
        Ok(())
    })();
    env().stripe.set_random_faults(0.0, vec![]);
    other.batch_execute("DROP EXTENSION onboarding CASCADE").unwrap(); // its worker leaves
    result
}

fn audits_find_the_planted_gaps() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_audit");
    // A normal run, readable as a sequence.
    let user = insert_profile(&mut db, &table, Some("audited@example.com"));
    let customer = wait_for_customer(&mut db, &table, &user)?;
    let lines: Vec<String> =
        db.query("SELECT line FROM onboarding.sequence($1)", &[&user]).unwrap().iter().map(|r| r.get(0)).collect();
    let text = lines.join("\n");
    for needle in ["Profile committed", "Calling Stripe: POST /v1/customers", &format!("Stripe ID {customer} written")]
    {
        ensure(text.contains(needle), || format!("sequence lacks {needle:?}:\n{text}"))?;
    }

    // Ordering: clean after normal runs; a planted early request is caught.
    let ordering = |db: &mut Client| -> Vec<(bool, Option<i64>, String)> {
        db.query("SELECT violation, job_id, detail FROM onboarding.audit_ordering()", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    let clean = ordering(&mut db);
    ensure(clean.len() == 1 && !clean[0].0 && !clean[0].2.starts_with("0 jobs"), || format!("{clean:?}"))?;
    let job: i64 = db.query_one("SELECT id FROM onboarding.jobs WHERE user_id = $1", &[&user]).unwrap().get(0);
    db.execute(
        "INSERT INTO onboarding.events (job_id, user_id, step, at) VALUES ($1, $2, 'stripe_request', now() - interval '1 hour')",
        &[&job, &user],
    )
    .unwrap();
    let caught = ordering(&mut db);
    db.execute("DELETE FROM onboarding.events WHERE job_id = $1 AND at < now() - interval '30 minutes'", &[&job])
        .unwrap();
    ensure(caught.iter().filter(|(v, _, _)| *v).map(|(_, j, _)| *j).collect::<Vec<_>>() == [Some(job)], || {
        format!("the planted violation: {caught:?}")
    })?;

    // Gaps: a profile with no job, a dead job, a job stuck past its lease.
    db.batch_execute(&format!("SELECT onboarding.detach('{table}')")).unwrap();
    let jobless = insert_profile(&mut db, &table, Some("jobless@example.com"));
    db.batch_execute(&format!("SELECT onboarding.attach('{table}')")).unwrap();
    env().stripe.inject(Fault::status(400).on("POST", "/v1/customers").message("refused for the audit"));
    let rejected = insert_profile(&mut db, &table, Some("rejected@example.com"));
    let dead = wait_for_state(&mut db, &rejected, "dead")?;
    let stuck = plant_running_job(&mut db, &table, "stuck-audit", 1, "pg_backend_pid()", "now() - interval '1 hour'");
    let missing: Vec<(String, String)> = db
        .query(
            "SELECT user_id, state FROM onboarding.audit_missing('0 seconds') WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = vec![(jobless.clone(), "no job".to_string()), (rejected.clone(), "dead".to_string())];
    let mut sorted = missing.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    ensure(sorted == want, || format!("audit_missing found {missing:?}, expected {expected:?} ({dead:?})"))?;
    let problems: Vec<(i64, String)> = db
        .query("SELECT job_id, problem FROM onboarding.audit_jobs() WHERE user_id IN ($1, 'stuck-audit')", &[&rejected])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ensure(problems.len() == 2 && problems.iter().any(|(id, p)| *id == stuck && p == "stuck past its lease"), || {
        format!("audit_jobs: {problems:?}")
    })?;
    db.execute("UPDATE onboarding.jobs SET state = 'dead', claimed_by = NULL WHERE id = $1", &[&stuck]).unwrap();

    // Metrics: latency from commit to write-back is measured.
    let metrics: Vec<String> = db
        .query("SELECT metric FROM onboarding.stats WHERE value IS NOT NULL", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for metric in
        ["jobs dead", "commit to written back p50", "commit to written back p99", "stripe call p50", "failure rate"]
    {
        ensure(metrics.iter().any(|m| m == metric), || format!("stats lacks {metric}: {metrics:?}"))?;
    }
    Ok(())
}

fn backfill_provisions_existing_profiles_once_with_progress() -> Result<(), Failed> {
    const PROFILES: i64 = 5000;
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_backfill");
    db.batch_execute(&format!(
        "SELECT onboarding.detach('{table}');
         INSERT INTO {table} (email) SELECT 'old' || g || '@example.com' FROM generate_series(1, {PROFILES}) g;
         SELECT onboarding.attach('{table}');"
    ))
    .unwrap();
    let call = format!("CALL onboarding.backfill('{table}', 1000)");
    let out = env().cluster.psql("postgres", &call);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let progress_lines = stderr.lines().filter(|l| l.contains("NOTICE") && l.contains(" of 5000 profiles")).count();
    ensure(out.status.success() && progress_lines >= 5, || format!("backfill: {stderr}"))?;
    wait_for("5,000 customers", Duration::from_secs(120), || {
        let done: i64 = db.query_one(&format!("SELECT count(stripe_customer_id) FROM {table}"), &[]).unwrap().get(0);
        (done == PROFILES).then_some(())
    })?;
    let distinct: i64 =
        db.query_one(&format!("SELECT count(DISTINCT stripe_customer_id) FROM {table}"), &[]).unwrap().get(0);
    let stripe_side: usize = {
        let users: std::collections::HashSet<String> =
            db.query(&format!("SELECT id::text FROM {table}"), &[]).unwrap().iter().map(|r| r.get(0)).collect();
        env()
            .stripe
            .customers()
            .iter()
            .filter(|c| users.contains(c["metadata"]["user_id"].as_str().unwrap_or("")))
            .count()
    };
    ensure(distinct == PROFILES && stripe_side == PROFILES as usize, || {
        format!("{distinct} linked, {stripe_side} in Stripe")
    })?;
    let row = db
        .query_one(
            "SELECT total, enqueued, provisioned, percent::float8 FROM onboarding.backfill_progress
              WHERE profile_table = $1::text::regclass ORDER BY id DESC LIMIT 1",
            &[&table],
        )
        .unwrap();
    let (total, enqueued, provisioned, percent): (i64, i64, i64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    ensure(total == PROFILES && enqueued == PROFILES && provisioned == PROFILES && percent == 100.0, || {
        format!("progress {total} {enqueued} {provisioned} {percent}")
    })?;
    // Idempotent: a second run finds nothing to do.
    let again = env().cluster.psql("postgres", &call);
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure(stderr.contains("0 jobs enqueued"), || format!("second backfill: {stderr}"))
}

fn retention_prunes_finished_jobs_but_keeps_dead_ones() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_retention");
    let user = insert_profile(&mut db, &table, Some("old-news@example.com"));
    wait_for_customer(&mut db, &table, &user)?;
    env().stripe.inject(Fault::status(400).on("POST", "/v1/customers").message("kept for a human"));
    let parked = insert_profile(&mut db, &table, Some("parked@example.com"));
    wait_for_state(&mut db, &parked, "dead")?;
    db.execute(
        "UPDATE onboarding.jobs SET finished_at = now() - interval '40 days' WHERE user_id IN ($1, $2)",
        &[&user, &parked],
    )
    .unwrap();
    // Events outside any job (the events reader's, reconcile's): an old one and a recent one.
    db.batch_execute(
        "INSERT INTO onboarding.events (job_id, user_id, step, at) VALUES
             (NULL, 'outside-jobs', 'stripe_account_updated', now() - interval '40 days'),
             (NULL, 'outside-jobs', 'stripe_account_updated', now() - interval '1 day')",
    )
    .unwrap();
    // What Stripe said of customers, handled 40 days ago unless said otherwise: prune keeps what
    // the audits still read (an email newer than the snapshot, a flagged deletion).
    db.query_one("SELECT onboarding.refresh_stripe_snapshot()", &[]).unwrap();
    db.batch_execute(
        "INSERT INTO onboarding.customer_changes
                (customer_id, user_id, stripe_email, email_as_of, deleted_at, handled, outcome, updated_at)
         SELECT c.id, 'retention', c.email, extract(epoch FROM c.as_of)::bigint,
                CASE WHEN c.outcome IN ('recreated', 'flagged') THEN c.as_of END, true, c.outcome, c.handled_at
           FROM (VALUES ('cus_retention_email_old', 'old@example.com', now() - interval '40 days', 'email differs', now() - interval '40 days'),
                        ('cus_retention_email_new', 'new@example.com', now() + interval '1 minute', 'email differs', now() - interval '40 days'),
                        ('cus_retention_recreated', NULL, now() - interval '40 days', 'recreated', now() - interval '40 days'),
                        ('cus_retention_flagged', NULL, now() - interval '40 days', 'flagged', now() - interval '40 days'),
                        ('cus_retention_recent', 'recent@example.com', now() - interval '40 days', 'email differs', now()))
                c(id, email, as_of, outcome, handled_at)",
    )
    .unwrap();
    let pruned: i64 = db.query_one("SELECT onboarding.prune('30 days')", &[]).unwrap().get(0);
    ensure(pruned >= 1, || "nothing pruned".into())?;
    let changes_left: Vec<String> = db
        .query(
            "WITH left_over AS (DELETE FROM onboarding.customer_changes WHERE user_id = 'retention' RETURNING customer_id)
             SELECT customer_id FROM left_over ORDER BY 1",
            &[],
        )
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap();
    ensure(changes_left == ["cus_retention_email_new", "cus_retention_flagged", "cus_retention_recent"], || {
        format!("customer changes left: {changes_left:?}")
    })?;
    let outside: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.events WHERE user_id = 'outside-jobs' AND at > now() - interval '2 days'",
            &[],
        )
        .unwrap()
        .get(0);
    let all_outside: i64 =
        db.query_one("SELECT count(*) FROM onboarding.events WHERE user_id = 'outside-jobs'", &[]).unwrap().get(0);
    ensure(outside == 1 && all_outside == 1, || format!("events outside jobs left: {all_outside} ({outside} recent)"))?;
    ensure(jobs_for(&mut db, &user).is_empty() && events_for(&mut db, &user).is_empty(), || {
        "the old job stayed".into()
    })?;
    ensure(only_job(&mut db, &parked)?.state == "dead", || "a dead job was pruned".into())?;
    ensure(customer_id(&mut db, &table, &user).is_some(), || "pruning touched the profile".into())
}

/// Seeds each gap between Stripe and the profiles on purpose; the audits find exactly those,
/// reconcile (dry run, then for real) repairs them, and the audits come back clean.
fn reconcile_repairs_what_the_audits_find() -> Result<(), Failed> {
    use onboarding_core::stripe::{ApiKey, ClientConfig, NewCustomer, StripeClient};
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_reconcile");
    let stripe = StripeClient::new(&ClientConfig {
        api_base: env().stripe.base_url(),
        api_key: ApiKey::new(API_KEY).unwrap(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        api_version: None,
        search_rate: onboarding_core::stripe::DEFAULT_SEARCH_RATE,
    })
    .unwrap();
    let rt = onboarding_core::runtime::signal_safe_runtime().unwrap();

    let drifted = insert_profile(&mut db, &table, Some("drift@example.com"));
    let gone = insert_profile(&mut db, &table, Some("gone@example.com"));
    let relink = insert_profile(&mut db, &table, Some("relink@example.com"));
    for u in [&drifted, &gone, &relink] {
        wait_for_customer(&mut db, &table, u)?;
    }
    // The customer of `gone` is deleted in Stripe behind our back.
    let gone_customer = customer_id(&mut db, &table, &gone).unwrap();
    rt.block_on(stripe.delete_customer(&gone_customer)).unwrap();
    // `relink` points at a customer that never existed; its real one is now an orphan.
    let real = customer_id(&mut db, &table, &relink).unwrap();
    db.execute(&format!("UPDATE {table} SET stripe_customer_id = 'cus_neverexisted' WHERE id::text = $1"), &[&relink])
        .unwrap();
    // A customer for a user id no profile has.
    let ghost = NewCustomer { user_id: "ghost-user".into(), email: "ghost@example.com".into() };
    let (ghost_customer, _) = rt.block_on(stripe.create_customer(&ghost, "ghost-key")).unwrap();
    // An email changed while syncing was off.
    db.batch_execute("SET onboarding.sync_email = off").unwrap();
    db.execute(&format!("UPDATE {table} SET email = 'drifted@example.com' WHERE id::text = $1"), &[&drifted]).unwrap();
    db.batch_execute("RESET onboarding.sync_email").unwrap();
    // A profile that never got a job.
    db.batch_execute(&format!("SELECT onboarding.detach('{table}')")).unwrap();
    let jobless = insert_profile(&mut db, &table, Some("jobless@example.com"));
    db.batch_execute(&format!("SELECT onboarding.attach('{table}')")).unwrap();

    let orphans = |db: &mut Client, refresh: bool| -> Vec<(String, String)> {
        db.query("SELECT user_id, stripe_id FROM onboarding.audit_orphans($1)", &[&refresh])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let mismatches = |db: &mut Client| -> Vec<(String, String)> {
        db.query(
            "SELECT user_id, problem FROM onboarding.audit_mismatches(false) WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let mut found = orphans(&mut db, true);
    found.sort();
    let mut want = vec![("ghost-user".to_string(), ghost_customer.id.clone()), (relink.clone(), real.clone())];
    want.sort();
    ensure(found == want, || format!("audit_orphans found {found:?}, expected {want:?}"))?;
    let found = mismatches(&mut db);
    let problems: std::collections::HashMap<String, String> = found.iter().cloned().collect();
    ensure(
        found.len() == 3
            && problems[&gone] == "missing or deleted in Stripe"
            && problems[&relink] == "missing or deleted in Stripe"
            && problems[&drifted].starts_with("email differs"),
        || format!("audit_mismatches found {found:?}"),
    )?;

    let plan = |db: &mut Client, dry_run: bool| -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = db
            .query("SELECT action, user_id FROM onboarding.reconcile($1, $2::text::regclass)", &[&dry_run, &table])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        rows.sort();
        rows
    };
    let mut expected = vec![
        ("delete orphan".to_string(), "ghost-user".to_string()),
        ("enqueue customer".to_string(), jobless.clone()),
        ("recreate".to_string(), gone.clone()),
        ("relink".to_string(), relink.clone()),
        ("sync email".to_string(), drifted.clone()),
    ];
    expected.sort();
    let dry = plan(&mut db, true);
    ensure(dry == expected, || format!("dry run planned {dry:?}, expected {expected:?}"))?;
    ensure(customer_id(&mut db, &table, &gone).as_deref() == Some(gone_customer.as_str()), || {
        "the dry run changed data".into()
    })?;
    let done = plan(&mut db, false);
    ensure(done == expected, || format!("reconcile did {done:?}"))?;

    wait_for("the repairs", Duration::from_secs(30), || {
        let open: i64 = db
            .query_one("SELECT count(*) FROM onboarding.jobs WHERE state IN ('pending', 'running')", &[])
            .unwrap()
            .get(0);
        (open == 0 && customer_id(&mut db, &table, &gone).is_some() && customer_id(&mut db, &table, &jobless).is_some())
            .then_some(())
    })?;
    ensure(customer_id(&mut db, &table, &relink).as_deref() == Some(real.as_str()), || "relink did not relink".into())?;
    ensure(customer_id(&mut db, &table, &gone).as_deref() != Some(gone_customer.as_str()), || {
        "gone kept its dead id".into()
    })?;
    let left = orphans(&mut db, true);
    ensure(left.is_empty(), || format!("orphans left: {left:?}"))?;
    let left = mismatches(&mut db);
    ensure(left.is_empty(), || format!("mismatches left: {left:?}"))?;
    let missing: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.audit_missing('0 seconds') WHERE profile_table = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .get(0);
    ensure(missing == 0, || format!("{missing} profiles still missing"))?;
    let recorded: i64 = db
        .query_one(
            "SELECT count(*) FROM onboarding.events WHERE step = 'reconciled' AND user_id = ANY($1)",
            &[&vec![gone.clone(), relink.clone(), jobless.clone(), "ghost-user".to_string()]],
        )
        .unwrap()
        .get(0);
    ensure(recorded == 4, || format!("{recorded} reconcile events"))
}

/// `audit_mismatches(refresh => false)` compares with the last snapshot of Stripe: a customer made
/// since (a signup after the snapshot) is not in it, and is not "missing or deleted in Stripe"
/// (it was, before: every signup since the last snapshot showed as a mismatch).
fn a_customer_made_after_the_snapshot_is_not_missing() -> Result<(), Failed> {
    let mut db = fresh_database(
        "snapshot_then_signup",
        "CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
                                       stripe_customer_id text);
         SELECT onboarding.attach('public.profiles');",
    );
    let result = (|| -> Result<(), Failed> {
        let before = insert_profile(&mut db, "public.profiles", Some("before@example.com"));
        wait_for_customer(&mut db, "public.profiles", &before)?;
        db.batch_execute("SELECT onboarding.refresh_stripe_snapshot()")?;
        let after = insert_profile(&mut db, "public.profiles", Some("after@example.com"));
        wait_for_customer(&mut db, "public.profiles", &after)?;
        let mismatches: Vec<(String, String)> = db
            .query("SELECT user_id, problem FROM onboarding.audit_mismatches(refresh => false)", &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        ensure(mismatches.is_empty(), || format!("mismatches against the older snapshot: {mismatches:?}"))?;
        // A customer deleted in Stripe after the snapshot is still found missing, from its event.
        let customer = customer_id(&mut db, "public.profiles", &after).unwrap();
        ensure(env().stripe.dashboard_delete_customer(&customer), || "no such customer".into())?;
        db.batch_execute("UPDATE onboarding.events_cursor SET next_poll_at = now()")?;
        wait_for("the deletion to be read back", crate::helpers::DEADLINE, || {
            let found: bool = db
                .query_one(
                    "SELECT EXISTS (SELECT FROM onboarding.audit_mismatches(refresh => false)
                                     WHERE user_id = $1 AND problem = 'missing or deleted in Stripe')",
                    &[&after],
                )
                .unwrap()
                .get(0);
            found.then_some(())
        })
    })();
    db.batch_execute("DROP EXTENSION onboarding CASCADE").unwrap(); // its worker leaves
    result
}
