//! Upgrade tests: a database made by the previous release keeps everything through the path a DBA
//! follows (install the new package, restart PostgreSQL, `ALTER EXTENSION onboarding UPDATE`), and
//! a fresh install and an upgraded one have the same schema.
//!
//! They install packages (`cargo pgrx package` trees) into the system's PostgreSQL directories, so
//! `scripts/test` runs them alone, after the other suites, and they leave the current package
//! installed. Packages: `ONBOARDING_PREVIOUS_PACKAGE` (default
//! target/releases/onboarding-<previous>-pg<major>, built by `scripts/package-release <previous>`)
//! and `ONBOARDING_CURRENT_PACKAGE` (default target/package/current-pg<major>, from `cargo pgrx
//! package --debug --out-dir …`), for the server `PG_CONFIG` names (Debian's 15 by default).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use postgres::Client;
use stripe_emulator::{Emulator, EmulatorConfig, Fault};
use support::cluster::{Cluster, StopOnDrop, default_pg_config};
use support::package_tree::{self, in_package};
use support::schema::{differences, fingerprint};
use support::upgrade_script::{expand, statements};
use support::wait::{ensure, open_work};

/// The release before this one: its package makes the database the in-place upgrade test upgrades.
const PREVIOUS: &str = "0.3.0";
/// Every release, oldest first, whose install script is kept as `sql/onboarding--A.sql`: each must
/// reach this release's schema through the chain of upgrade scripts.
const RELEASED: [&str; 3] = ["0.1.0", "0.2.0", "0.3.0"];
const CURRENT: &str = env!("CARGO_PKG_VERSION");
const API_KEY: &str = "sk_test_upgrade_4b1d7e0c9a";
const DEADLINE: Duration = Duration::from_secs(30);

/// Registers each test under its function's name.
macro_rules! trials {
    ($($test:ident),* $(,)?) => { vec![$(Trial::test(stringify!($test), $test)),*] };
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let trials = trials![
        the_previous_release_install_script_is_kept_verbatim,
        the_upgrade_script_is_its_source_expanded,
        a_fresh_install_and_an_upgraded_one_have_the_same_schema,
        the_schema_check_catches_an_upgrade_script_that_forgets_a_change,
        a_previous_release_database_upgrades_in_place_keeping_every_job,
        public_can_execute_exactly_the_functions_the_docs_list,
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    // Whatever happened, leave the current release installed for whoever comes next.
    if !args.list {
        install(&package(Release::Current));
    }
    conclusion.exit();
}

// ---------------------------------------------------------------------------------------------
// Packages and clusters
// ---------------------------------------------------------------------------------------------

enum Release {
    Previous,
    Current,
}

fn package(release: Release) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let major = pg_major();
    let (var, default) = match release {
        Release::Previous => {
            ("ONBOARDING_PREVIOUS_PACKAGE", format!("target/releases/onboarding-{PREVIOUS}-pg{major}"))
        }
        Release::Current => ("ONBOARDING_CURRENT_PACKAGE", format!("target/package/current-pg{major}")),
    };
    let dir = std::env::var_os(var).map_or_else(|| root.join(default), PathBuf::from);
    let library = in_package(&dir, &pg_config("--pkglibdir")).join("onboarding.so");
    assert!(library.is_file(), "no package at {} (see the top of tests/upgrade.rs)", dir.display());
    dir
}

/// `PG_CONFIG`'s answer to `arg` (Debian's PostgreSQL 15 by default).
fn pg_config(arg: &str) -> String {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into());
    let out = std::process::Command::new(&pg_config).arg(arg).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The server's major version: 15, 16, 18.
fn pg_major() -> String {
    pg_config("--version").split_whitespace().nth(1).and_then(|v| v.split('.').next()).unwrap().to_string()
}

/// Copies a package tree onto `/` (tests/support/package_tree.rs), for `PG_CONFIG`'s server.
fn install(package: &Path) {
    package_tree::install(&default_pg_config(), package);
}

fn extension_dir() -> PathBuf {
    PathBuf::from(pg_config("--sharedir")).join("extension")
}

fn settings(stripe: &Emulator) -> String {
    format!(
        "onboarding.stripe_api_base = '{}'\n\
         onboarding.stripe_api_key = '{API_KEY}'\n\
         onboarding.poll_interval = '60s'\n\
         onboarding.request_timeout = '4s'\n\
         onboarding.connect_timeout = '1s'\n\
         onboarding.rate_limit = 0\n\
         track_commit_timestamp = on\n\
         # A failed attempt waits an hour: it is still waiting when the upgrade comes.\n\
         onboarding.retry_base_delay = '1h'\n\
         onboarding.retry_max_delay = '1h'\n",
        stripe.base_url()
    )
}

fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> Result<T, Failed> {
    support::wait::wait_for(what, DEADLINE, probe)
}

fn extversion(db: &mut Client) -> String {
    db.query_one("SELECT extversion FROM pg_extension WHERE extname = 'onboarding'", &[]).unwrap().get(0)
}

/// A database holding `version` of the extension (its install script must be in the extension
/// directory), connected.
fn database_with(cluster: &Cluster, name: &str, version: &str) -> Client {
    let mut postgres = cluster.connect();
    postgres.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap(); // its worker too
    postgres.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut db = cluster.connect_to(name);
    db.batch_execute(&format!("CREATE EXTENSION onboarding VERSION '{version}'")).unwrap();
    db
}

// ---------------------------------------------------------------------------------------------
// Schema parity
// ---------------------------------------------------------------------------------------------

fn the_previous_release_install_script_is_kept_verbatim() -> Result<(), Failed> {
    let kept =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("sql/onboarding--{PREVIOUS}.sql")))?;
    let built = in_package(&package(Release::Previous), &pg_config("--sharedir"))
        .join(format!("extension/onboarding--{PREVIOUS}.sql"));
    let built = std::fs::read_to_string(built)?;
    // pgrx orders the files of one build nondeterministically (two builds of the v0.2.0 tag put
    // sql/transitions.sql in different places), so the same statements in any order pass.
    let sorted = |script: &str| {
        let mut parts: Vec<String> = statements(script).iter().map(|s| s.trim().to_string()).collect();
        parts.sort();
        parts
    };
    ensure(sorted(&kept) == sorted(&built), || {
        format!(
            "sql/onboarding--{PREVIOUS}.sql is not the install script of the v{PREVIOUS} tag: never edit a released script"
        )
    })
}

/// A cluster running the current package, with every release's install script beside it (so that
/// `CREATE EXTENSION … VERSION` can make a database of any release to upgrade).
/// `sql/onboarding--<previous>--<current>.sql` is what `sql/upgrades/<previous>--<current>.sql`
/// expands to with this release's install script (tests/support/upgrade_script.rs): no function is
/// written twice, and the shipped script is not stale. `ONBOARDING_BLESS=1` writes it instead
/// (`scripts/upgrade-script`).
fn the_upgrade_script_is_its_source_expanded() -> Result<(), Failed> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source_name = format!("sql/upgrades/{PREVIOUS}--{CURRENT}.sql");
    let shipped_name = format!("sql/onboarding--{PREVIOUS}--{CURRENT}.sql");
    let source = std::fs::read_to_string(root.join(&source_name))?;
    let install_script = std::fs::read_to_string(
        in_package(&package(Release::Current), &format!("{}/extension", pg_config("--sharedir")))
            .join(format!("onboarding--{CURRENT}.sql")),
    )?;
    let expanded = expand(&source, &source_name, &install_script)?;
    if std::env::var_os("ONBOARDING_BLESS").is_some() {
        std::fs::write(root.join(&shipped_name), &expanded)?;
        return Ok(());
    }
    let shipped = std::fs::read_to_string(root.join(&shipped_name))?;
    ensure(shipped == expanded, || {
        format!("{shipped_name} is not what {source_name} expands to: edit the source, then run scripts/upgrade-script")
    })
}

fn current_cluster(name: &str, stripe: &Emulator) -> Cluster {
    install(&package(Release::Current));
    for version in RELEASED {
        let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("sql/onboarding--{version}.sql"));
        std::fs::copy(kept, extension_dir().join(format!("onboarding--{version}.sql"))).unwrap();
    }
    Cluster::start(name, &settings(stripe))
}

fn emulator() -> Emulator {
    // The previous release sends no Stripe-Version (it predates the pin).
    Emulator::start(
        "127.0.0.1:0",
        EmulatorConfig { api_key: Some(API_KEY.into()), accept_unpinned: true, ..Default::default() },
    )
    .expect("start the Stripe emulator")
}

fn a_fresh_install_and_an_upgraded_one_have_the_same_schema() -> Result<(), Failed> {
    let stripe = emulator();
    let cluster = current_cluster("parity", &stripe);
    let _stop = StopOnDrop(&cluster);
    {
        let expected = fingerprint(&mut database_with(&cluster, "fresh", CURRENT));
        for version in RELEASED {
            let mut upgraded = database_with(&cluster, "upgraded", version);
            upgraded.batch_execute("ALTER EXTENSION onboarding UPDATE")?;
            ensure(extversion(&mut upgraded) == CURRENT, || format!("upgraded to {}", extversion(&mut upgraded)))?;
            let diff =
                differences("fresh", &expected, &format!("upgraded from {version}"), &fingerprint(&mut upgraded));
            ensure(diff.is_empty(), || format!("the upgrade scripts from {version} miss changes:\n{diff}"))?;
        }
        Ok(())
    }
}

/// The statements of a script that change the schema, by their position.
fn schema_changes(statements: &[String]) -> Vec<usize> {
    let code = |s: &str| s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    statements
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            let first = code(s).split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            ["CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE"].contains(&first.as_str())
        })
        .map(|(i, _)| i)
        .collect()
}

/// Mutation check of the parity check itself: the upgrade script with one schema change left out
/// (first, middle and last) must give a schema that differs from a fresh install, or fail.
fn the_schema_check_catches_an_upgrade_script_that_forgets_a_change() -> Result<(), Failed> {
    let script_name = format!("onboarding--{PREVIOUS}--{CURRENT}.sql");
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql").join(&script_name))?;
    let parts = statements(&script);
    let changes = schema_changes(&parts);
    let stripe = emulator();
    let cluster = current_cluster("mutants", &stripe);
    let _stop = StopOnDrop(&cluster);
    {
        let mut fresh = database_with(&cluster, "fresh", CURRENT);
        let expected = fingerprint(&mut fresh);
        if changes.is_empty() {
            // Nothing to leave out: then the previous release's schema must already be this one's.
            let mut previous = database_with(&cluster, "previous", PREVIOUS);
            let diff = differences("fresh", &expected, "previous", &fingerprint(&mut previous));
            return ensure(diff.is_empty(), || format!("{script_name} changes no schema, yet:\n{diff}"));
        }
        let mut picks = vec![changes[0], changes[changes.len() / 2], changes[changes.len() - 1]];
        picks.dedup();
        let mutant_version = format!("{CURRENT}-mutant");
        let mutant_path = extension_dir().join(format!("onboarding--{PREVIOUS}--{mutant_version}.sql"));
        for pick in picks {
            let mutant: String =
                parts.iter().enumerate().filter(|(i, _)| *i != pick).map(|(_, s)| s.as_str()).collect();
            std::fs::write(&mutant_path, mutant)?;
            let mut db = database_with(&cluster, "mutant", PREVIOUS);
            let caught = match db.batch_execute(&format!("ALTER EXTENSION onboarding UPDATE TO '{mutant_version}'")) {
                Err(_) => true, // a later statement needed the missing one
                Ok(()) => !differences("fresh", &expected, "mutant", &fingerprint(&mut db)).is_empty(),
            };
            drop(db);
            if !caught {
                let _ = std::fs::remove_file(&mutant_path);
                return Err(
                    format!("without statement {pick} the upgrade still matched:\n{}", parts[pick].trim()).into()
                );
            }
        }
        let _ = std::fs::remove_file(&mutant_path);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrading a database in use
// ---------------------------------------------------------------------------------------------

/// What a job is before the upgrade; compared with what it is after.
#[derive(Clone, Debug, PartialEq)]
struct JobRow {
    kind: String,
    user_id: String,
    state: String,
    attempts: i32,
    idempotency_key: String,
    stripe_id: Option<String>,
    run_at: String,
    updated_at: String,
}

fn jobs(db: &mut Client) -> BTreeMap<i64, JobRow> {
    db.query(
        "SELECT id, kind, user_id, state, attempts, idempotency_key, stripe_id, run_at::text, updated_at::text
           FROM onboarding.jobs ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            JobRow {
                kind: r.get(1),
                user_id: r.get(2),
                state: r.get(3),
                attempts: r.get(4),
                idempotency_key: r.get(5),
                stripe_id: r.get(6),
                run_at: r.get(7),
                updated_at: r.get(8),
            },
        )
    })
    .collect()
}

fn intake(db: &mut Client) -> Vec<String> {
    db.query("SELECT user_id FROM onboarding.intake ORDER BY user_id", &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

/// The attachments as 0.2.0 held them (later releases add settings, with their defaults).
fn attachments(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT (profile_table, id_column, id_type, email_column, customer_column, connect_account_column,
                 connect_policy, connect_condition, attached_at)::text
           FROM onboarding.attachments ORDER BY profile_table::text",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn insert(db: &mut Client, table: &str, email: Option<&str>, role: &str) -> String {
    db.query_one(&format!("INSERT INTO {table} (email, role) VALUES ($1, $2) RETURNING id::text"), &[&email, &role])
        .unwrap()
        .get(0)
}

fn job_of(db: &mut Client, user: &str, kind: &str) -> Option<(i64, String, i32, Option<String>)> {
    db.query_opt(
        "SELECT id, state, attempts, last_error FROM onboarding.jobs WHERE user_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1",
        &[&user, &kind],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

fn wait_for_state(db: &mut Client, user: &str, kind: &str, state: &str) -> Result<i64, Failed> {
    wait_for(&format!("{kind} job of {user} to be {state}"), || {
        job_of(db, user, kind).filter(|(_, s, ..)| s == state).map(|(id, ..)| id)
    })
}

fn a_previous_release_database_upgrades_in_place_keeping_every_job() -> Result<(), Failed> {
    let stripe = emulator();
    install(&package(Release::Previous));
    let cluster = Cluster::start("upgrade", &settings(&stripe));
    let _stop = StopOnDrop(&cluster);
    let result = upgrade_scenario(&cluster, &stripe);
    if result.is_err() {
        eprintln!("--- server log ---\n{}", cluster.server_log());
    }
    result
}

fn upgrade_scenario(cluster: &Cluster, stripe: &Emulator) -> Result<(), Failed> {
    let mut db = cluster.connect();
    db.batch_execute("CREATE EXTENSION onboarding")?;
    ensure(extversion(&mut db) == PREVIOUS, || format!("installed {}", extversion(&mut db)))?;
    db.batch_execute(
        "CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
             stripe_customer_id text, stripe_connect_account_id text, role text);
         CREATE TABLE public.sellers (LIKE public.profiles INCLUDING ALL);
         SELECT onboarding.attach('public.profiles', connect_policy => 'when', connect_condition => 'role = ''provider''');
         SELECT onboarding.attach('public.sellers', connect_policy => 'always');",
    )?;

    // Finished jobs of every kind of ending, made by the previous release's worker.
    let provider = insert(&mut db, "public.profiles", Some("provider@example.com"), "provider");
    let member = insert(&mut db, "public.profiles", Some("member@example.com"), "member");
    let seller = insert(&mut db, "public.sellers", Some("seller@example.com"), "seller");
    wait_for_state(&mut db, &provider, "create_connect_account", "succeeded")?;
    wait_for_state(&mut db, &seller, "create_connect_account", "succeeded")?;
    wait_for_state(&mut db, &member, "create_customer", "succeeded")?;
    let no_email = insert(&mut db, "public.profiles", None, "member");
    wait_for_state(&mut db, &no_email, "create_customer", "dead")?;
    stripe.inject(Fault::stall(Duration::from_secs(2)).on("POST", "/v1/customers"));
    let vanishing = insert(&mut db, "public.profiles", Some("vanishing@example.com"), "member");
    wait_for("the vanishing profile's request", || {
        stripe.requests().iter().any(|r| r.params["metadata"]["user_id"] == vanishing.as_str()).then_some(())
    })?;
    db.execute("DELETE FROM public.profiles WHERE id::text = $1", &[&vanishing])?;
    wait_for_state(&mut db, &vanishing, "create_customer", "orphaned")?;
    wait_for_state(&mut db, &vanishing, "delete_customer", "succeeded")?;

    // Failed and waiting an hour for its retry.
    stripe.inject(Fault::drop_before().on("POST", "/v1/customers"));
    let failed = insert(&mut db, "public.profiles", Some("failed@example.com"), "member");
    wait_for("the failed attempt to be recorded", || {
        job_of(&mut db, &failed, "create_customer").filter(|(_, s, a, e)| s == "pending" && *a == 1 && e.is_some())
    })?;

    // Running, with a live lease: its call stalls at Stripe until the restart cuts it off.
    stripe.inject(Fault::stall(Duration::from_secs(600)).on("POST", "/v1/customers"));
    let running = insert(&mut db, "public.profiles", Some("running@example.com"), "member");
    wait_for_state(&mut db, &running, "create_customer", "running")?;
    wait_for("the running job's request to reach Stripe", || {
        stripe.requests().iter().any(|r| r.params["metadata"]["user_id"] == running.as_str()).then_some(())
    })?;

    // Then the worker is paused (no key): new inserts stay in the intake, enqueued jobs pending.
    cluster.append_settings("onboarding.stripe_api_key = ''");
    db.batch_execute("SELECT pg_reload_conf()")?;
    wait_for("the worker to notice it has no key", || {
        // (0.2.0 said "onboarding.stripe_api_key is not set"; 0.3.0 names the key file too.)
        let log = cluster.server_log();
        (log.contains("no Stripe key") || log.contains("onboarding.stripe_api_key is not set")).then_some(())
    })?;
    let in_intake: Vec<String> =
        (0..3).map(|n| insert(&mut db, "public.profiles", Some(&format!("intake{n}@example.com")), "member")).collect();
    db.batch_execute("ALTER TABLE public.profiles DISABLE TRIGGER onboarding_enqueue")?;
    let enqueued = insert(&mut db, "public.profiles", Some("enqueued@example.com"), "member");
    let cancelled = insert(&mut db, "public.profiles", Some("cancelled@example.com"), "member");
    db.batch_execute("ALTER TABLE public.profiles ENABLE TRIGGER onboarding_enqueue")?;
    db.query_one("SELECT onboarding.enqueue_customer($1, 'public.profiles')", &[&enqueued])?;
    let cancel_job: i64 =
        db.query_one("SELECT onboarding.enqueue_customer($1, 'public.profiles')", &[&cancelled])?.get(0);
    db.query("SELECT * FROM onboarding.cancel($1)", &[&cancel_job])?;
    db.query_one("SELECT onboarding.enqueue_connect_account($1, 'public.profiles')", &[&member])?;

    let before = jobs(&mut db);
    let count = |state: &str| before.values().filter(|j| j.state == state).count();
    for state in ["pending", "running", "succeeded", "dead", "orphaned", "cancelled"] {
        ensure(count(state) > 0, || format!("no {state} job before the upgrade: {before:#?}"))?;
    }
    ensure(intake(&mut db) == sorted(&in_intake), || format!("intake before the upgrade: {:?}", intake(&mut db)))?;
    let (events_before, last_event): (i64, i64) =
        db.query_one("SELECT count(*), max(id) FROM onboarding.events", &[]).map(|r| (r.get(0), r.get(1)))?;
    let attached = attachments(&mut db);
    drop(db);

    // The DBA's path: install the new package, restart, ALTER EXTENSION … UPDATE.
    cluster.stop_keeping_data();
    install(&package(Release::Current));
    cluster.append_settings(&format!("onboarding.stripe_api_key = '{API_KEY}'"));
    cluster.start_again();
    let mut db = cluster.connect();
    wait_for("the worker's WARNING that the SQL is behind", || {
        cluster
            .server_log()
            .contains("no job is touched until you run: ALTER EXTENSION onboarding UPDATE")
            .then_some(())
    })?;
    // The waiting worker still answers, saying what to do; and it has touched nothing.
    let refused = db.query_one("SELECT onboarding.get_or_create_customer($1, 5000, 'public.profiles')", &[&enqueued]);
    let refusal = refused.err().map(|e| e.as_db_error().map_or(e.to_string(), |d| d.message().to_string()));
    ensure(refusal.as_deref().is_some_and(|m| m.contains("ALTER EXTENSION onboarding UPDATE")), || {
        format!("get_or_create_customer before the update: {refusal:?}")
    })?;
    ensure(jobs(&mut db) == before, || "the queue changed before ALTER EXTENSION UPDATE".into())?;
    ensure(intake(&mut db) == sorted(&in_intake), || "the intake changed before ALTER EXTENSION UPDATE".into())?;
    let warnings =
        cluster.server_log().lines().filter(|l| l.contains("WARNING") && l.contains("no job is touched")).count();
    ensure(warnings == 1, || "the worker warned more than once".into())?;

    db.batch_execute("ALTER EXTENSION onboarding UPDATE")?;
    ensure(extversion(&mut db) == CURRENT, || format!("updated to {}", extversion(&mut db)))?;
    // An hour passes for the failed job's retry.
    db.execute(
        "UPDATE onboarding.jobs SET run_at = now() WHERE state = 'pending' AND run_at > now() AND user_id = $1",
        &[&failed],
    )?;
    wait_for("every open job and intake row to finish", || (open_work(&mut db) == 0).then_some(()))?;

    ensure(cluster.server_log().contains("worker resumes"), || "no log line of the worker resuming".into())?;

    // Nothing lost: every job, with its key; finished ones as they were; open ones finished well.
    let after = jobs(&mut db);
    for (id, old) in &before {
        let new = after.get(id).ok_or_else(|| format!("job {id} is gone: {old:?}"))?;
        ensure(
            new.idempotency_key == old.idempotency_key && new.kind == old.kind && new.user_id == old.user_id,
            || format!("job {id} changed identity: {old:?} -> {new:?}"),
        )?;
        match old.state.as_str() {
            "pending" | "running" => {
                ensure(new.state == "succeeded" && new.stripe_id.is_some(), || format!("open job {id} ended {new:?}"))?
            }
            _ => ensure(new.state == old.state && new.stripe_id == old.stripe_id, || {
                format!("finished job {id} changed: {old:?} -> {new:?}")
            })?,
        }
    }
    for user in in_intake.iter().chain([&enqueued, &running, &failed]) {
        ensure(job_of(&mut db, user, "create_customer").is_some_and(|(_, s, ..)| s == "succeeded"), || {
            format!("{user}: {:?}", job_of(&mut db, user, "create_customer"))
        })?;
    }
    ensure(job_of(&mut db, &member, "create_connect_account").is_some_and(|(_, s, ..)| s == "succeeded"), || {
        "the member's requested Connect account was not created".into()
    })?;
    // Exactly one Stripe customer per living profile that should have one, each request of a job
    // under that job's key, and none for the orphan (compensated) or the cancelled profile.
    let requests = stripe.requests();
    for (_, job) in after.iter().filter(|(_, j)| j.kind == "create_customer") {
        let sent: Vec<_> = requests
            .iter()
            .filter(|r| {
                r.method == "POST"
                    && r.path == "/v1/customers"
                    && r.params["metadata"]["user_id"] == job.user_id.as_str()
            })
            .collect();
        ensure(sent.iter().all(|r| r.idempotency_key.as_deref() == Some(job.idempotency_key.as_str())), || {
            format!("a request for {} went out under another key: {sent:?}", job.user_id)
        })?;
    }
    let customers = stripe.customers();
    let customers_of = |user: &str| customers.iter().filter(|c| c["metadata"]["user_id"] == user).count();
    for user in in_intake.iter().chain([&provider, &member, &enqueued, &running, &failed]) {
        ensure(customers_of(user) == 1, || format!("{user} has {} Stripe customers", customers_of(user)))?;
    }
    ensure(customers_of(&seller) == 1 && customers_of(&vanishing) == 0 && customers_of(&cancelled) == 0, || {
        "wrong customers for the seller, the orphan or the cancelled profile".into()
    })?;
    let accounts = stripe.accounts();
    for user in [&provider, &seller, &member] {
        let n = accounts.iter().filter(|a| a["metadata"]["user_id"] == user.as_str()).count();
        ensure(n == 1, || format!("{user} has {n} Connect accounts"))?;
    }
    // The event log and the attachments survive; the log only grew.
    let kept: i64 = db.query_one("SELECT count(*) FROM onboarding.events WHERE id <= $1", &[&last_event])?.get(0);
    ensure(kept == events_before, || format!("{} of {events_before} events survived", kept))?;
    ensure(attachments(&mut db) == attached, || format!("attachments changed: {:?}", attachments(&mut db)))?;
    let policies: Vec<String> = db
        .query("SELECT DISTINCT on_customer_deleted || '/' || on_stripe_email_changed FROM onboarding.attachments", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure(policies == ["flag/audit"], || format!("Stripe change policies after the upgrade: {policies:?}"))?;

    // And the upgraded database has the schema of a fresh install.
    let mut fresh = database_with(cluster, "fresh", CURRENT);
    let diff = differences("fresh", &fingerprint(&mut fresh), "upgraded", &fingerprint(&mut db));
    ensure(diff.is_empty(), || format!("the upgraded schema differs from a fresh install:\n{diff}"))
}

fn sorted(users: &[String]) -> Vec<String> {
    let mut users = users.to_vec();
    users.sort();
    users
}

// ---------------------------------------------------------------------------------------------
// Privileges of a fresh install
// ---------------------------------------------------------------------------------------------

/// The functions the security model's "Roles and grants" section (docs/src/operations/security.md)
/// lists between its markers as executable by PUBLIC.
fn documented_public_functions() -> Vec<String> {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/operations/security.md");
    let page_text = std::fs::read_to_string(page).unwrap();
    let start = page_text.find("<!-- public functions: begin -->").expect("marker in docs/src/operations/security.md");
    let end = page_text.find("<!-- public functions: end -->").expect("marker in docs/src/operations/security.md");
    let mut listed: Vec<String> = page_text[start..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- `")?.split('`').next().map(str::to_string))
        .collect();
    listed.sort();
    listed
}

fn public_can_execute_exactly_the_functions_the_docs_list() -> Result<(), Failed> {
    let stripe = emulator();
    let cluster = current_cluster("privileges", &stripe);
    let _stop = StopOnDrop(&cluster);
    {
        let mut db = database_with(&cluster, "fresh", CURRENT);
        let mut executable: Vec<String> = db
            .query(
                "SELECT p.oid::regprocedure::text FROM pg_proc p
                  WHERE p.pronamespace = 'onboarding'::regnamespace
                    AND (p.proacl IS NULL OR EXISTS (SELECT FROM aclexplode(p.proacl) a
                                                      WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        executable.sort();
        let documented = documented_public_functions();
        ensure(executable == documented, || {
            format!("PUBLIC can execute {executable:#?}\nbut docs/src/operations/security.md lists {documented:#?}")
        })?;
        // And PUBLIC has no rights on the queue (a NULL relacl gives PUBLIC nothing).
        let open: Vec<String> = db
            .query(
                "SELECT c.oid::regclass::text FROM pg_class c
                  WHERE c.relnamespace = 'onboarding'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'S', 'p')
                    AND EXISTS (SELECT FROM aclexplode(c.relacl) a WHERE a.grantee = 0)",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ensure(open.is_empty(), || format!("PUBLIC has rights on {open:?}"))
    }
}
