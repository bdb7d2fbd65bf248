//! The failover test (issue 12, "exactly once across replicas and failover"): profiles inserted in
//! batches on a primary with a streaming standby, the primary killed with `-m immediate` while the
//! worker provisions them, the standby promoted and more profiles inserted there. Each scenario then
//! waits until every profile on the new primary has its customer and prints what the switch cost:
//!
//! 1. backlog: a low rate budget leaves a backlog in the intake; the asynchronous standby has
//!    every insert but not the worker's last promotions and claims when the primary dies;
//! 2. sync, stalled: a synchronous standby whose walreceiver is stopped before a batch that the
//!    application commits with `synchronous_commit = local`; `onboarding.wait_for_standbys` set;
//! 3. async, no waiting: the standby stalled for the last batch, `onboarding.wait_for_standbys`
//!    off, a Connect account for every profile: the old primary creates customers and accounts the
//!    new primary has no profile for, which the new primary must find and delete by itself.
//!
//! 6. scenario 3 for a table attached with `stripe_objects => 'accounts_v2'`: the old primary
//!    makes Accounts v2 (and makes them connected accounts) that the new primary must find in the
//!    v2 list and close, while every surviving profile keeps exactly one live Account.
//!
//! Plus checks that need a standby: `get_or_create_customer` refused at once on a standby; a worker
//! waiting for a stalled synchronous standby that still obeys pg_terminate_backend and a fast
//! shutdown; calls held for a stalled asynchronous standby named in `onboarding.wait_for_standbys`
//! (shown by `onboarding.stats`) until it resumes, or until `onboarding.standby_wait_timeout`.
//!
//!   cargo test -p onboarding --test failover
//!   cargo test -p onboarding --test failover -- backlog     # only the runs whose title says so
//!
//! Needs the extension installed (`cargo pgrx install`), like the end-to-end tests.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use postgres::Client;
use stripe_emulator::{Emulator, EmulatorConfig};
use support::cluster::Cluster;
use support::replication::{Replicated, STANDBY_NAME};
use support::wait::wait_for;

const API_KEY: &str = "sk_test_FAILOVERCANARY5d2e8a17";
/// Profiles per inserting transaction.
const BATCH: i32 = 20;
/// How long the new primary may take to find and delete the customers the old one made for
/// profiles it never received (scenario 3).
const SWEEP_DEADLINE: Duration = Duration::from_secs(60);
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test -- --list`: nothing to list, this binary is one run
    }
    let started = Instant::now();
    let runs: [(&str, Run); 6] = [
        ("1. backlog: async standby with every insert, rate budget 30/s, its claims after them lost", backlog),
        ("2. sync standby stalled, application commits local, wait_for_standbys = 'standby1'", sync_stalled),
        ("3. async standby stalled for the last batch, wait_for_standbys off, Connect accounts too", async_lagging),
        ("4. a standby and a stalled synchronous standby", standby_checks),
        ("5. an async standby in wait_for_standbys, stalled, then a timeout", named_standby_wait),
        ("6. as 3, for a table of Accounts v2 (accounts_v2)", async_lagging_accounts_v2),
    ];
    // `cargo test --test failover -- sync` runs the runs whose title contains "sync".
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut failed = 0;
    for (title, run) in runs.into_iter().filter(|(title, _)| filters.iter().all(|f| title.contains(f.as_str()))) {
        println!("\nfailover {title}");
        let report = run().unwrap_or_else(|e| {
            let mut report = Report::default();
            report.check(format!("ran to the end: {}", e.message().unwrap_or("failed")), false);
            report
        });
        failed += report.print();
    }
    println!("\nfailover: total wall time {:.1} s, {failed} checks failed", started.elapsed().as_secs_f64());
    if failed > 0 {
        std::process::exit(1);
    }
}

/// One scenario or group of checks, on its own servers and emulator.
type Run = fn() -> Result<Report, Failed>;

/// Figures and checks of one run, printed like chaos.rs prints them.
#[derive(Default)]
struct Report {
    /// A line and its verdict (None: a figure without a target).
    lines: Vec<(String, Option<bool>)>,
}

impl Report {
    fn check(&mut self, line: String, ok: bool) {
        self.lines.push((line, Some(ok)));
    }

    fn figure(&mut self, line: String) {
        self.lines.push((line, None));
    }

    /// Prints the lines; returns how many checks failed.
    fn print(&self) -> usize {
        for (line, verdict) in &self.lines {
            let mark = match verdict {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "    ",
            };
            println!("  {mark} {line}");
        }
        self.lines.iter().filter(|(_, verdict)| *verdict == Some(false)).count()
    }
}

fn start_emulator() -> Emulator {
    Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })
        .expect("start the Stripe emulator")
}

/// The primary's settings: chaos.rs's, with one worker claiming small batches (so it claims often),
/// then `extra` (later lines win).
fn primary_settings(stripe: &Emulator, extra: &str) -> String {
    support::settings::fast_recovery(&stripe.base_url(), API_KEY, 1, 5) + extra
}

/// The standby's copy of postgresql.conf, once promoted, has no standby behind it: its commits
/// must not wait for one, and it drains at full speed (a rate budget only makes the backlog).
const STANDBY_SETTINGS: &str =
    "synchronous_standby_names = ''\nonboarding.wait_for_standbys = ''\nonboarding.rate_limit = 0\n";

/// Creates the profiles table on the primary, attached, and waits for the standby to stream.
/// Returns an application session: it commits without waiting for standbys
/// (`synchronous_commit = local`; with an asynchronous standby that changes nothing).
fn set_up(pair: &Replicated, sync: bool) -> Result<Client, Failed> {
    pair.wait_streaming(sync)?;
    pair.primary.connect().batch_execute(
        "CREATE EXTENSION onboarding;
         CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
             stripe_customer_id text, stripe_connect_account_id text);
         SELECT onboarding.attach('public.profiles');",
    )?;
    app_session(&pair.primary)
}

fn app_session(server: &Cluster) -> Result<Client, Failed> {
    let mut db = server.connect();
    db.batch_execute("SET synchronous_commit = local")?;
    Ok(db)
}

/// Inserts `batches` transactions of [`BATCH`] profiles; returns the ids whose COMMIT returned OK.
fn insert_batches(db: &mut Client, batches: usize) -> Result<Vec<String>, Failed> {
    let mut acknowledged = Vec::new();
    for _ in 0..batches {
        let mut tx = db.transaction()?;
        let rows = tx.query(
            "INSERT INTO public.profiles (email)
             SELECT 'failover-' || g || '-' || md5(random()::text) || '@example.com' FROM generate_series(1, $1) g
             RETURNING id::text",
            &[&BATCH],
        )?;
        tx.commit()?;
        acknowledged.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(acknowledged)
}

fn count(db: &mut Client, sql: &str) -> Option<i64> {
    db.query_one(sql, &[]).ok().map(|row| row.get(0))
}

/// Every profile's id and its `column` (the customer, or the Connect account).
fn profiles_with(db: &mut Client, column: &str) -> Result<HashMap<String, Option<String>>, Failed> {
    let rows = db.query(&format!("SELECT id::text, {column} FROM public.profiles"), &[])?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Of the profiles (id -> the object they link), how many have exactly one live Stripe object
/// among `objects`, the one they link; and how many have more than one.
fn one_object_each(objects: &[serde_json::Value], profiles: &HashMap<String, Option<String>>) -> (usize, usize) {
    let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
    for object in objects {
        by_user.entry(user_of(object)).or_default().push(object["id"].as_str().unwrap_or_default().to_string());
    }
    let exactly_one = profiles
        .iter()
        .filter(|(user, linked)| {
            by_user.get(*user).is_some_and(|ids| ids.len() == 1 && Some(&ids[0]) == linked.as_ref())
        })
        .count();
    let duplicated = profiles.keys().filter(|user| by_user.get(*user).is_some_and(|ids| ids.len() > 1)).count();
    (exactly_one, duplicated)
}

/// POSTs to /v1/customers so far.
fn customer_posts(stripe: &Emulator) -> Vec<stripe_emulator::RecordedRequest> {
    stripe.requests().into_iter().filter(|r| r.method == "POST" && r.path == "/v1/customers").collect()
}

/// `metadata[user_id]` of a customer, or of a create request's parameters.
fn user_of(object: &serde_json::Value) -> String {
    object["metadata"]["user_id"].as_str().unwrap_or_default().to_string()
}

fn scenario(
    name: &str,
    primary_extra: &str,
    sync: bool,
    before_the_kill: impl FnOnce(&Replicated, &Emulator, &mut Client) -> Result<Vec<String>, Failed>,
    expect: Expect,
) -> Result<Report, Failed> {
    let stripe = start_emulator();
    let pair = Replicated::start(name, &primary_settings(&stripe, primary_extra), STANDBY_SETTINGS);
    let mut db = set_up(&pair, sync)?;
    let acknowledged = before_the_kill(&pair, &stripe, &mut db)?;
    let promotion = pair.fail_over()?;
    after_failover(&pair, &stripe, &acknowledged, promotion, expect)
}

/// What a scenario asserts beyond zero duplicates.
enum Expect {
    /// The standby was caught up: no acknowledged commit is lost.
    NothingLost,
    /// The last `n` acknowledged commits never reached the standby, and no customer was ever
    /// created for them.
    LostWithoutCustomers(usize),
    /// The last `n` acknowledged commits never reached the standby; their customers are deleted
    /// by the new primary within [`SWEEP_DEADLINE`].
    LostAndSwept(usize),
}

/// Scenario 1.
fn backlog() -> Result<Report, Failed> {
    let budget = "onboarding.rate_limit = 30\nonboarding.rate_burst = 1\n";
    scenario("backlog", budget, false, kill_at_a_call_with_backlog, Expect::NothingLost)
}

/// Inserts 160 profiles, waits for the standby to have them all and for the worker to be well
/// into them with a backlog left, then stops the standby's WAL receiver: the intake rows are
/// replicated, but the promotions and claims of the next 20 Stripe calls are not. Crashes the
/// primary once those calls have arrived: the new primary promotes the same intake rows again.
fn kill_at_a_call_with_backlog(pair: &Replicated, stripe: &Emulator, db: &mut Client) -> Result<Vec<String>, Failed> {
    let acknowledged = insert_batches(db, 8)?;
    pair.wait_caught_up()?;
    wait_for("30 Stripe calls with a backlog left in the intake", Duration::from_secs(30), || {
        let backlog = count(db, "SELECT count(*) FROM onboarding.intake")?;
        (customer_posts(stripe).len() >= 30 && backlog > 0).then_some(())
    })?;
    pair.stall_walreceiver()?;
    let calls = customer_posts(stripe).len();
    if !stripe.wait_for(Duration::from_secs(10), |s| customer_posts(s).len() >= calls + 20) {
        return Err("fewer than 20 Stripe calls in 10 s while a backlog waited".into());
    }
    Ok(acknowledged)
}

/// Scenario 2.
fn sync_stalled() -> Result<Report, Failed> {
    let settings =
        format!("synchronous_standby_names = '{STANDBY_NAME}'\nonboarding.wait_for_standbys = '{STANDBY_NAME}'\n");
    scenario("sync", &settings, true, stall_then_insert_and_wait_for_the_worker, Expect::LostWithoutCustomers(40))
}

/// 60 profiles the standby gets, then its walreceiver stopped and 40 more committed locally;
/// waits until the worker either waits for the standby (a commit in SyncRep) or calls Stripe for
/// one of the 40 (which the check after the failover then counts).
fn stall_then_insert_and_wait_for_the_worker(
    pair: &Replicated,
    stripe: &Emulator,
    db: &mut Client,
) -> Result<Vec<String>, Failed> {
    let (mut acknowledged, unreplicated) = replicate_then_stall(pair, db)?;
    let unreplicated_users: HashSet<&String> = unreplicated.iter().collect();
    let waiting = wait_for("the worker to wait for the standby or call Stripe", Duration::from_secs(10), || {
        let in_sync_rep = count(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'onboarding worker' AND wait_event = 'SyncRep'",
        )? > 0;
        let called = customer_posts(stripe).iter().any(|r| unreplicated_users.contains(&user_of(&r.params)));
        (in_sync_rep || called).then_some(())
    });
    if waiting.is_err() {
        println!("       (the worker neither waited in SyncRep nor called Stripe within 10 s; failing over anyway)");
    }
    acknowledged.extend(unreplicated);
    Ok(acknowledged)
}

/// Inserts 60 profiles the standby gets, stops its walreceiver, then inserts 40 more. Returns
/// both sets.
fn replicate_then_stall(pair: &Replicated, db: &mut Client) -> Result<(Vec<String>, Vec<String>), Failed> {
    let replicated = insert_batches(db, 3)?;
    pair.wait_caught_up()?;
    pair.stall_walreceiver()?;
    Ok((replicated, insert_batches(db, 2)?))
}

/// Scenario 3.
fn async_lagging() -> Result<Report, Failed> {
    scenario(
        "async",
        "onboarding.wait_for_standbys = ''\n",
        false,
        stall_then_insert_and_wait_for_customers,
        Expect::LostAndSwept(40),
    )
}

/// With a Connect account for every profile: 60 profiles the standby gets, then its walreceiver
/// stopped and 40 more; waits until the old primary has created customers and accounts for all
/// 40, which the new primary will never see.
fn stall_then_insert_and_wait_for_customers(
    pair: &Replicated,
    stripe: &Emulator,
    db: &mut Client,
) -> Result<Vec<String>, Failed> {
    db.batch_execute("SELECT onboarding.set_connect_policy('public.profiles', 'always')")?;
    let (mut acknowledged, unreplicated) = replicate_then_stall(pair, db)?;
    let provisioned = stripe.wait_for(Duration::from_secs(30), |s| {
        let customers: HashSet<String> = s.customers().iter().map(user_of).collect();
        let accounts: HashSet<String> = s.accounts().iter().map(user_of).collect();
        unreplicated.iter().all(|u| customers.contains(u) && accounts.contains(u))
    });
    if !provisioned {
        return Err(
            "the old primary did not provision the unreplicated profiles (customer and account) within 30 s".into()
        );
    }
    acknowledged.extend(unreplicated);
    Ok(acknowledged)
}

/// After the promotion: another batch on the new primary, the wait for every profile's customer
/// (and, in scenario 3, for the old primary's orphans to go), then the figures.
fn after_failover(
    pair: &Replicated,
    stripe: &Emulator,
    acknowledged: &[String],
    promotion: Duration,
    expect: Expect,
) -> Result<Report, Failed> {
    let promoted_at = Instant::now();
    let mut report = Report::default();
    report.figure(format!("promotion                                      {:.1} s", promotion.as_secs_f64()));
    let mut db = app_session(&pair.standby)?;
    insert_batches(&mut db, 1)?;
    let connect =
        count(&mut db, "SELECT count(*) FROM onboarding.attachments WHERE connect_policy <> 'never'") == Some(1);
    let profiles = profiles_with(&mut db, "stripe_customer_id")?;
    let orphans = |stripe: &Emulator| {
        let accounts = if connect { stripe.accounts() } else { Vec::new() };
        stripe.customers().iter().chain(&accounts).filter(|o| !profiles.contains_key(&user_of(o))).count()
    };

    if let Expect::LostAndSwept(_) = expect {
        let swept = stripe.wait_for(SWEEP_DEADLINE.saturating_sub(promoted_at.elapsed()), |s| orphans(s) == 0);
        let took = promoted_at.elapsed().as_secs_f64();
        report.check(
            if swept {
                format!("orphans deleted by the new primary after        {took:.1} s")
            } else {
                format!("orphans deleted by the new primary            still {} after {took:.1} s", orphans(stripe))
            },
            swept,
        );
    }
    let drained = wait_for("every profile's customer, no open job", DRAIN_DEADLINE, || {
        count(
            &mut db,
            "SELECT (SELECT count(*) FROM public.profiles WHERE stripe_customer_id IS NULL
                                                            OR (stripe_connect_account_id IS NULL AND EXISTS (
                                                                SELECT FROM onboarding.attachments
                                                                 WHERE connect_policy <> 'never')))
                  + (SELECT count(*) FROM onboarding.jobs WHERE state IN ('pending', 'running'))
                  + (SELECT count(*) FROM onboarding.intake)",
        )
        .filter(|open| *open == 0)
    });
    report.check(format!("new primary drained (deadline {DRAIN_DEADLINE:?})"), drained.is_ok());

    // Re-read: the customers written back since.
    let profiles = profiles_with(&mut db, "stripe_customer_id")?;
    let lost = acknowledged.iter().filter(|id| !profiles.contains_key(*id)).count();
    match expect {
        Expect::NothingLost => {
            report.check(format!("acknowledged commits lost                      {lost}"), lost == 0)
        }
        Expect::LostWithoutCustomers(n) | Expect::LostAndSwept(n) => report.check(
            format!("acknowledged commits lost                      {lost} (the stalled batches: {n})"),
            lost == n,
        ),
    }

    let customers = stripe.customers();
    let (exactly_one, duplicated) = one_object_each(&customers, &profiles);
    report.check(
        format!(
            "surviving profiles with exactly one customer   {exactly_one} / {} ({duplicated} with more than one)",
            profiles.len()
        ),
        exactly_one == profiles.len() && duplicated == 0,
    );
    if connect {
        let accounts = profiles_with(&mut db, "stripe_connect_account_id")?;
        let (exactly_one, duplicated) = one_object_each(&stripe.accounts(), &accounts);
        report.check(
            format!(
                "surviving profiles with exactly one account    {exactly_one} / {} ({duplicated} with more than one)",
                accounts.len()
            ),
            exactly_one == accounts.len() && duplicated == 0,
        );
        let orphan_accounts = stripe.accounts().iter().filter(|a| !accounts.contains_key(&user_of(a))).count();
        report.check(format!("accounts without a profile (live)              {orphan_accounts}"), orphan_accounts == 0);
    }

    let orphans_left = customers.iter().filter(|c| !profiles.contains_key(&user_of(c))).count();
    let posts = customer_posts(stripe);
    let created_for_lost = posts
        .iter()
        .filter(|r| r.status == Some(200) && !r.replayed && !profiles.contains_key(&user_of(&r.params)))
        .count();
    let orphan_line = format!("customers without a profile (live)             {orphans_left}");
    let created_line = format!("customers ever created for lost profiles       {created_for_lost}");
    match expect {
        Expect::LostWithoutCustomers(_) => {
            report.check(orphan_line, orphans_left == 0);
            report.check(created_line, created_for_lost == 0);
        }
        Expect::NothingLost | Expect::LostAndSwept(_) => {
            report.figure(orphan_line);
            report.figure(created_line);
        }
    }

    // The first create the emulator saw for a profile carries the key its job was created with;
    // a job created again after the failover (its claim lost) shows as a different key.
    let mut first_key: HashMap<String, Option<String>> = HashMap::new();
    for r in &posts {
        first_key.entry(user_of(&r.params)).or_insert_with(|| r.idempotency_key.clone());
    }
    let mut succeeded_keys: HashMap<String, Vec<String>> = HashMap::new();
    for r in &db.query(
        "SELECT user_id, idempotency_key FROM onboarding.jobs WHERE kind = 'create_customer' AND state = 'succeeded'",
        &[],
    )? {
        succeeded_keys.entry(r.get(0)).or_default().push(r.get(1));
    }
    let original_key = profiles
        .keys()
        .filter(|user| {
            let first = first_key.get(*user).cloned().flatten();
            succeeded_keys.get(*user).is_some_and(|keys| keys.iter().any(|k| Some(k) == first.as_ref()))
        })
        .count();
    report.figure(format!("jobs finished under their original key         {original_key} / {}", profiles.len()));
    Ok(report)
}

/// Scenario 6: scenario 3's loss for an accounts_v2 table. The old primary makes an Account (and
/// makes it a connected account) for each of the 40 profiles the standby never gets; the new
/// primary's sweep must find them in the v2 list and close them, and every surviving profile ends
/// with exactly one live Account, on both its columns.
fn async_lagging_accounts_v2() -> Result<Report, Failed> {
    let stripe = start_emulator();
    let pair = Replicated::start(
        "async-v2",
        &primary_settings(&stripe, "onboarding.wait_for_standbys = ''\n"),
        STANDBY_SETTINGS,
    );
    pair.wait_streaming(false)?;
    pair.primary.connect().batch_execute(
        "CREATE EXTENSION onboarding;
         CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
             stripe_account_id text, stripe_connect_account_id text);
         SELECT onboarding.attach('public.profiles', stripe_objects => 'accounts_v2',
                                  connect_account_column => 'stripe_connect_account_id', connect_policy => 'always');",
    )?;
    let mut db = app_session(&pair.primary)?;
    let (mut acknowledged, unreplicated) = replicate_then_stall(&pair, &mut db)?;
    let connected = |s: &Emulator, user: &String| {
        s.v2_accounts()
            .iter()
            .any(|a| user_of(a) == *user && a["applied_configurations"].to_string().contains("merchant"))
    };
    if !stripe.wait_for(Duration::from_secs(30), |s| unreplicated.iter().all(|u| connected(s, u))) {
        return Err("the old primary did not make connected Accounts for the unreplicated profiles within 30 s".into());
    }
    acknowledged.extend(unreplicated.iter().cloned());
    let promotion = pair.fail_over()?;
    let promoted_at = Instant::now();
    let mut report = Report::default();
    report.figure(format!("promotion                                      {:.1} s", promotion.as_secs_f64()));
    let mut db = app_session(&pair.standby)?;
    insert_batches(&mut db, 1)?;

    let live = |s: &Emulator| -> Vec<serde_json::Value> {
        s.v2_accounts().into_iter().filter(|a| a["closed"] != true).collect()
    };
    let lost: HashSet<&String> = unreplicated.iter().collect();
    let swept = stripe.wait_for(SWEEP_DEADLINE, |s| live(s).iter().all(|a| !lost.contains(&user_of(a))));
    report.check(
        format!("Accounts of lost profiles closed after         {:.1} s", promoted_at.elapsed().as_secs_f64()),
        swept,
    );
    let drained = wait_for("every profile's Account on both columns, no open job", DRAIN_DEADLINE, || {
        count(
            &mut db,
            "SELECT (SELECT count(*) FROM public.profiles
                      WHERE stripe_account_id IS NULL OR stripe_connect_account_id IS DISTINCT FROM stripe_account_id)
                  + (SELECT count(*) FROM onboarding.jobs WHERE state IN ('pending', 'running'))
                  + (SELECT count(*) FROM onboarding.intake)",
        )
        .filter(|open| *open == 0)
    });
    report.check(format!("new primary drained (deadline {DRAIN_DEADLINE:?})"), drained.is_ok());
    let profiles = profiles_with(&mut db, "stripe_account_id")?;
    let lost_count = acknowledged.iter().filter(|id| !profiles.contains_key(*id)).count();
    report.check(
        format!("acknowledged commits lost                      {lost_count} (the stalled batches: 40)"),
        lost_count == 40,
    );
    let accounts = live(&stripe);
    let (exactly_one, duplicated) = one_object_each(&accounts, &profiles);
    report.check(
        format!(
            "surviving profiles with exactly one live Account {exactly_one} / {} ({duplicated} with more than one)",
            profiles.len()
        ),
        exactly_one == profiles.len() && duplicated == 0,
    );
    let without_profile = accounts.iter().filter(|a| !profiles.contains_key(&user_of(a))).count();
    report.check(format!("live Accounts without a profile                {without_profile}"), without_profile == 0);
    Ok(report)
}

/// The two checks on one primary with a synchronous standby: `get_or_create_customer` on the
/// standby, then a worker stuck behind the stalled standby.
fn standby_checks() -> Result<Report, Failed> {
    let stripe = start_emulator();
    let settings = primary_settings(&stripe, &format!("synchronous_standby_names = '{STANDBY_NAME}'\n"));
    let pair = Replicated::start("checks", &settings, STANDBY_SETTINGS);
    let mut db = set_up(&pair, true)?;
    let mut report = Report::default();
    refused_on_the_standby(&pair, &mut db, &mut report)?;
    worker_stuck_behind_a_stalled_standby(&pair, &mut db, &mut report)?;
    Ok(report)
}

/// `get_or_create_customer` on a standby (no worker runs there) must fail at once with 25006.
fn refused_on_the_standby(pair: &Replicated, db: &mut Client, report: &mut Report) -> Result<(), Failed> {
    // Without the trigger (replica role), so the profile stays without a customer.
    let mut tx = db.transaction()?;
    tx.batch_execute("SET LOCAL session_replication_role = replica")?;
    let user: String = tx
        .query_one("INSERT INTO public.profiles (email) VALUES ('standby@example.com') RETURNING id::text", &[])?
        .get(0);
    tx.commit()?;
    pair.wait_caught_up()?;
    let wait_ms = 4000;
    let started = Instant::now();
    let outcome =
        pair.standby.connect().query_one("SELECT onboarding.get_or_create_customer($1, $2)", &[&user, &wait_ms]);
    let took = started.elapsed();
    let (code, message) = match &outcome {
        Ok(row) => ("none".to_string(), format!("returned {:?}", row.get::<_, Option<String>>(0))),
        Err(e) => match e.as_db_error() {
            Some(db_error) => (db_error.code().code().to_string(), db_error.message().to_string()),
            None => ("none".to_string(), e.to_string()),
        },
    };
    report.check(
        format!(
            "get_or_create_customer on the standby          {code} after {} ms (wait_ms {wait_ms}): {message}",
            took.as_millis()
        ),
        code == "25006" && message.contains("standby") && took < Duration::from_secs(1),
    );
    // A profile that has its customer is answered there: nothing needs a worker.
    let provisioned: String = db
        .query_one("INSERT INTO public.profiles (email) VALUES ('on-both@example.com') RETURNING id::text", &[])?
        .get(0);
    let customer = wait_for("a customer on the primary", Duration::from_secs(20), || {
        db.query_one("SELECT stripe_customer_id FROM public.profiles WHERE id::text = $1", &[&provisioned])
            .ok()?
            .get::<_, Option<String>>(0)
    })?;
    pair.wait_caught_up()?;
    let answered: Option<String> = pair
        .standby
        .connect()
        .query_one("SELECT onboarding.get_or_create_customer($1)", &[&provisioned])
        .ok()
        .and_then(|row| row.get(0));
    report.check(
        format!("get_or_create_customer of a provisioned profile on the standby  {answered:?}"),
        answered.as_deref() == Some(customer.as_str()),
    );
    Ok(())
}

/// A worker whose commit waits for a stalled synchronous standby must still exit on
/// pg_terminate_backend within a few seconds, and a fast shutdown must complete.
fn worker_stuck_behind_a_stalled_standby(
    pair: &Replicated,
    db: &mut Client,
    report: &mut Report,
) -> Result<(), Failed> {
    pair.stall_walreceiver()?;
    insert_batches(db, 1)?;
    let worker = wait_for("the worker's commit to wait for the standby", Duration::from_secs(10), || {
        db.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'onboarding worker' AND wait_event = 'SyncRep'",
            &[],
        )
        .ok()
        .flatten()
        .map(|row| row.get::<_, i32>(0))
    })?;
    let shown: (i64, Option<String>) = db
        .query_one(
            "SELECT value::bigint, detail FROM onboarding.stats WHERE metric = 'workers waiting for a synchronous standby'",
            &[],
        )
        .map(|row| (row.get(0), row.get(1)))?;
    report.check(format!("onboarding.stats shows it                        {shown:?}"), shown.0 == 1);
    let started = Instant::now();
    db.execute("SELECT pg_terminate_backend($1)", &[&worker])?;
    let exited = wait_for("the terminated worker to exit", Duration::from_secs(5), || {
        let row = db.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&worker]).ok()?;
        (row.get::<_, i64>(0) == 0).then_some(())
    });
    report.check(
        match exited {
            Ok(()) => format!("worker in SyncRep exits on pg_terminate_backend  {} ms", started.elapsed().as_millis()),
            Err(_) => "worker in SyncRep exits on pg_terminate_backend  still there after 5 s".to_string(),
        },
        exited.is_ok(),
    );
    let deadline = 15;
    let started = Instant::now();
    let stopped = pair.primary.try_pg_ctl(&["stop", "-m", "fast", "-w", "-t", &deadline.to_string()]);
    report.check(
        format!(
            "pg_ctl stop -m fast with the standby stalled   {} after {:.1} s (deadline {deadline} s)",
            if stopped { "stopped" } else { "still running" },
            started.elapsed().as_secs_f64()
        ),
        stopped,
    );
    Ok(())
}

/// Run 5: with `onboarding.wait_for_standbys` naming an asynchronous standby whose walreceiver is
/// stopped, calls are held (and `onboarding.stats` says so) while the application's commits go
/// through; `onboarding.standby_wait_timeout` lets them go; a resumed standby releases the rest.
fn named_standby_wait() -> Result<Report, Failed> {
    let stripe = start_emulator();
    let settings = primary_settings(&stripe, &format!("onboarding.wait_for_standbys = '{STANDBY_NAME}'\n"));
    let pair = Replicated::start("named", &settings, STANDBY_SETTINGS);
    let mut db = set_up(&pair, false)?;
    let mut report = Report::default();
    pair.stall_walreceiver()?;
    let first = insert_batches(&mut db, 1)?;
    let shown = calls_shown_waiting(&mut db);
    let created = held_posts(&stripe, &first);
    report.check(
        format!("calls held while the standby is stalled          {}, {created} created", describe(&shown)),
        shown.as_ref().is_ok_and(|(_, detail)| detail.contains("onboarding.wait_for_standbys")) && created == 0,
    );
    set_and_reload(&mut db, "onboarding.standby_wait_timeout = '300ms'")?;
    let timed_out = stripe.wait_for(Duration::from_secs(10), |s| held_posts(s, &first) == first.len());
    report.check(
        format!(
            "standby_wait_timeout 300ms lets them go           {} of {} created",
            held_posts(&stripe, &first),
            first.len()
        ),
        timed_out,
    );
    set_and_reload(&mut db, "onboarding.standby_wait_timeout TO DEFAULT")?;
    let second = insert_batches(&mut db, 1)?;
    // Wait until the new calls are held, so no reload lag lets them through unseen.
    let shown = calls_shown_waiting(&mut db);
    let early = held_posts(&stripe, &second);
    pair.resume_walreceiver();
    let released = stripe.wait_for(Duration::from_secs(20), |s| held_posts(s, &second) == second.len());
    report.check(
        format!(
            "without a timeout held again                     {}, {early} created; released on resume: {released}",
            describe(&shown)
        ),
        shown.is_ok() && early == 0 && released,
    );
    Ok(report)
}

/// `ALTER SYSTEM SET <setting>` (which cannot share a transaction), then a reload.
fn set_and_reload(db: &mut Client, setting: &str) -> Result<(), Failed> {
    db.batch_execute(&format!("ALTER SYSTEM SET {setting}"))?;
    db.batch_execute("SELECT pg_reload_conf()")?;
    Ok(())
}

/// Waits until `onboarding.stats` shows calls waiting for standbys; returns how many and its detail.
fn calls_shown_waiting(db: &mut Client) -> Result<(i64, String), Failed> {
    wait_for("onboarding.stats to show calls waiting for standbys", Duration::from_secs(10), || {
        let row = db
            .query_one(
                "SELECT value::bigint, coalesce(detail, '') FROM onboarding.stats
                  WHERE metric = 'calls waiting for standbys'",
                &[],
            )
            .ok()?;
        let (calls, detail): (i64, String) = (row.get(0), row.get(1));
        (calls > 0).then_some((calls, detail))
    })
}

fn describe(shown: &Result<(i64, String), Failed>) -> String {
    match shown {
        Ok((calls, detail)) => format!("stats: {calls} waiting ({detail})"),
        Err(_) => "stats: none waiting".into(),
    }
}

/// Customer creations the emulator has seen for `users`.
fn held_posts(stripe: &Emulator, users: &[String]) -> usize {
    let users: HashSet<&String> = users.iter().collect();
    customer_posts(stripe).iter().filter(|r| users.contains(&user_of(&r.params))).count()
}
