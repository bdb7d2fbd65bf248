//! The chaos test: profiles inserted in batches while Stripe fails about one request in five, the
//! worker is SIGKILLed three times and PostgreSQL is stopped with `-m immediate` once, and 1 % of
//! the profiles are deleted right after insert. Then it checks that every profile has exactly one
//! Stripe customer, no customer is left without a profile, and no job was lost, and prints the
//! figures. It runs twice: for a v1 table (Customers), then for a table attached with
//! `stripe_objects => 'accounts_v2'` (one Account v2 per profile, closed when its profile is
//! deleted), each on its own cluster and test server.
//!
//!   cargo test --test chaos                          # 300 profiles (part of scripts/test)
//!   CHAOS_PROFILES=10000 cargo test --test chaos     # the full run (bench/chaos)
//!
//! Needs the extension installed (`cargo pgrx install`), like the end-to-end tests.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use postgres::Client;
use rand::Rng;
use rand::seq::IndexedRandom;
use stripe_emulator::{Emulator, EmulatorConfig, Fault};
use support::cluster::Cluster;

const API_KEY: &str = "sk_test_CHAOSCANARY0c7b1e94f2a6";
const FAULT_RATE: f64 = 0.2;
const BATCH: usize = 50;

/// Which Stripe objects the run's table gets.
#[derive(Clone, Copy, PartialEq)]
enum Model {
    V1,
    AccountsV2,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::V1 => "v1",
            Model::AccountsV2 => "accounts_v2",
        }
    }

    /// The profile column the object is written to.
    fn column(self) -> &'static str {
        match self {
            Model::V1 => "stripe_customer_id",
            Model::AccountsV2 => "stripe_account_id",
        }
    }

    /// The objects Stripe holds that count (v2: not closed).
    fn live_objects(self, stripe: &Emulator) -> Vec<serde_json::Value> {
        match self {
            Model::V1 => stripe.customers(),
            Model::AccountsV2 => stripe.v2_accounts().into_iter().filter(|a| a["closed"] != true).collect(),
        }
    }

    /// The dead jobs the faults may leave (v1: a POST's 500 without Stripe-Should-Retry is
    /// permanent; v2 retries a POST's 500 under the same key: none).
    fn expected_dead(self, reason: &str) -> bool {
        self == Model::V1 && reason.starts_with("500 no header")
    }

    fn faults(self) -> Vec<Fault> {
        match self {
            Model::V1 => faults(),
            Model::AccountsV2 => {
                let post = |f: Fault| f.on("POST", "/v2/core/accounts");
                vec![
                    post(Fault::rate_limit()),
                    post(Fault::status(409).error_type("idempotency_error").code("idempotency_key_in_use")),
                    post(Fault::status(500)),
                    post(Fault::status(503)),
                    post(Fault::drop_before()),
                    post(Fault::drop_after()),
                    post(Fault::stall(Duration::from_millis(1500))), // beyond the 1 s request timeout
                    Fault::status(503).on("GET", "/v2/core/accounts/"),
                ]
            }
        }
    }
}

fn faults() -> Vec<Fault> {
    let post = |f: Fault| f.on("POST", "/v1/customers");
    vec![
        post(Fault::rate_limit()),
        post(Fault::status(409).error_type("idempotency_error").code("idempotency_key_in_use")),
        // A POST's 500 without Stripe-Should-Retry is permanent: the only faults that may park jobs.
        post(Fault::status(500)),
        post(Fault::status(500).should_retry(true)),
        post(Fault::status(503)),
        post(Fault::drop_before()),
        post(Fault::drop_after()),
        post(Fault::stall(Duration::from_millis(1500))), // beyond the 1 s request timeout
        Fault::status(503).on("DELETE", "/v1/customers/"),
        Fault::drop_before().on("DELETE", "/v1/customers/"),
    ]
}

fn main() {
    let profiles: usize = std::env::var("CHAOS_PROFILES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test -- --list`: nothing to list, this binary is one run
    }
    let mut failed = false;
    for model in [Model::V1, Model::AccountsV2] {
        let stripe =
            Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })
                .expect("start the Stripe emulator");
        stripe.set_random_faults(FAULT_RATE, model.faults());
        let settings = support::settings::fast_recovery(&stripe.base_url(), API_KEY, 2, 10);
        let cluster = Cluster::start(&format!("chaos-{}", model.name()), &settings);
        let outcome = run(&cluster, &stripe, profiles, model);
        cluster.stop();
        match outcome {
            Ok(0) => {}
            Ok(_) => failed = true,
            Err(e) => {
                eprintln!("chaos ({}): {e}", model.name());
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// Jobs not finished, counting inserts the worker has not turned into jobs yet.
fn open_jobs(db: &mut Client) -> Result<i64, postgres::Error> {
    let sql = "SELECT (SELECT count(*) FROM onboarding.jobs WHERE state IN ('pending', 'running'))
                    + (SELECT count(*) FROM onboarding.intake)";
    Ok(db.query_one(sql, &[])?.get(0))
}

/// Waits until no job is open, reconnecting through restarts.
fn drain(cluster: &Cluster, db: &mut Client, deadline: Duration) -> Result<(), String> {
    let until = Instant::now() + deadline;
    loop {
        match open_jobs(db) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(_) => *db = cluster.connect(),
        }
        if Instant::now() > until {
            // What is still open, and why, for whoever reads the failure.
            let open: Vec<String> = db
                .query(
                    "SELECT kind || ' ' || state || ' (' || count(*) || '): ' || coalesce(min(last_error), '-')
                       FROM onboarding.jobs WHERE state IN ('pending', 'running') GROUP BY kind, state",
                    &[],
                )
                .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                .unwrap_or_default();
            return Err(format!("jobs still open after {deadline:?}: {open:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILLs a worker (the postmaster then restarts every process), waiting for one to exist: the
/// launcher may still be starting them after the previous disruption.
fn kill_a_worker(cluster: &Cluster, db: &mut Client) -> bool {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let pid: Option<i32> = db
            .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'onboarding worker' LIMIT 1", &[])
            .unwrap_or_else(|_| {
                *db = cluster.connect();
                None
            })
            .map(|r| r.get(0));
        // The pid may be of a worker that is already going away (crash restart): then try again.
        if let Some(pid) = pid
            && Command::new("kill").args(["-9", &pid.to_string()]).status().is_ok_and(|s| s.success())
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn run(cluster: &Cluster, stripe: &Emulator, profiles: usize, model: Model) -> Result<usize, String> {
    let started = Instant::now();
    let mut db = cluster.connect();
    db.batch_execute(&format!(
        "CREATE EXTENSION onboarding;
         CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
             {column} text, stripe_connect_account_id text);
         SELECT onboarding.attach('public.profiles', stripe_objects => '{model}');",
        column = model.column(),
        model = model.name()
    ))
    .map_err(|e| e.to_string())?;

    // Disruptions at these shares of the inserts: SIGKILL a worker (the postmaster then restarts
    // every process), or stop PostgreSQL with -m immediate and start it again.
    let mut disruptions = vec![(0.2, "kill"), (0.45, "kill"), (0.55, "immediate"), (0.7, "kill")];
    let (mut kills, mut restarts, mut inserted, mut deleted, mut failed_batches) = (0, 0, 0usize, 0usize, 0);
    let mut rng = rand::rng();
    let batches = profiles.div_ceil(BATCH);
    for batch in 0..batches {
        let size = BATCH.min(profiles - batch * BATCH) as i32;
        let ids: Result<Vec<String>, _> = db
            .query(
                "INSERT INTO public.profiles (email) SELECT 'chaos' || g || '-' || md5(random()::text) || '@example.com'
                   FROM generate_series(1, $1::int) g RETURNING id::text",
                &[&size],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect());
        match ids {
            Ok(ids) => {
                inserted += ids.len();
                // 1 % deleted right after their insert committed.
                let how_many = ids.len() / 100 + usize::from(rng.random_bool(0.5));
                let doomed: Vec<String> = ids.choose_multiple(&mut rng, how_many).cloned().collect();
                match db.execute("DELETE FROM public.profiles WHERE id::text = ANY($1)", &[&doomed]) {
                    Ok(n) => deleted += n as usize,
                    Err(_) => db = cluster.connect(),
                }
            }
            Err(_) => {
                failed_batches += 1; // the server went away mid-statement; whatever committed counts
                db = cluster.connect();
            }
        }
        let progress = (batch + 1) as f64 / batches as f64;
        while disruptions.first().is_some_and(|(at, _)| progress >= *at) {
            let (_, what) = disruptions.remove(0);
            if what == "kill" {
                kills += usize::from(kill_a_worker(cluster, &mut db));
            } else {
                cluster.restart_immediately();
                restarts += 1;
            }
            db = cluster.connect();
        }
    }

    drain(cluster, &mut db, Duration::from_secs(60 + profiles as u64 / 10))?;
    let q = |db: &mut Client, sql: &str| -> Result<Vec<postgres::Row>, String> {
        db.query(sql, &[]).map_err(|e| e.to_string())
    };
    // Dead jobs: only the injected permanent failures (a POST's 500 without Stripe-Should-Retry).
    let dead = q(
        &mut db,
        "SELECT coalesce(last_error_detail->>'status', '-') || ' ' || coalesce(last_error_detail->>'should_retry', 'no header')
                || ': ' || coalesce(last_error_detail->>'message', last_error, ''), count(*)
           FROM onboarding.jobs WHERE state = 'dead' GROUP BY 1 ORDER BY 2 DESC",
    )?;
    let dead: Vec<(String, i64)> = dead.iter().map(|r| (r.get(0), r.get(1))).collect();
    let unexpected_dead: i64 = dead.iter().filter(|(reason, _)| !model.expected_dead(reason)).map(|(_, n)| n).sum();
    let dead_total: i64 = dead.iter().map(|(_, n)| n).sum();

    // Stripe recovers; the operator retries the parked jobs.
    stripe.set_random_faults(0.0, vec![]);
    q(&mut db, "SELECT * FROM onboarding.retry_dead()")?;
    drain(cluster, &mut db, Duration::from_secs(60))?;

    let rows = q(&mut db, &format!("SELECT id::text, {} FROM public.profiles", model.column()))?;
    let profiles_now: HashMap<String, Option<String>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let customers = model.live_objects(stripe);
    let mut by_user: HashMap<&str, Vec<&str>> = HashMap::new();
    for c in &customers {
        by_user
            .entry(c["metadata"]["user_id"].as_str().unwrap_or(""))
            .or_default()
            .push(c["id"].as_str().unwrap_or(""));
    }
    let provisioned = profiles_now.values().filter(|c| c.is_some()).count();
    let exactly_one = profiles_now
        .iter()
        .filter(|(user, linked)| {
            by_user.get(user.as_str()).is_some_and(|ids| ids.len() == 1 && Some(ids[0]) == linked.as_deref())
        })
        .count();
    let orphans = customers
        .iter()
        .filter(|c| {
            let (user, id) = (c["metadata"]["user_id"].as_str().unwrap_or(""), c["id"].as_str().unwrap_or(""));
            profiles_now.get(user).is_none_or(|linked| linked.as_deref() != Some(id))
        })
        .count();
    let with_job: HashSet<String> =
        q(&mut db, "SELECT DISTINCT user_id FROM onboarding.jobs WHERE kind = 'create_customer'")?
            .iter()
            .map(|r| r.get(0))
            .collect();
    let lost = profiles_now.keys().filter(|u| !with_job.contains(*u)).count() as i64
        + open_jobs(&mut db).map_err(|e| e.to_string())?;
    let secret = &API_KEY["sk_test_".len()..];
    let key_in_log = cluster.server_log().matches(secret).count();
    let requests = stripe.requests();
    let faulted = requests.iter().filter(|r| r.status.is_none_or(|s| s >= 400)).count();

    let expected = profiles_now.len();
    println!(
        "\nchaos ({}): {profiles} profiles requested, {inserted} inserted, {deleted} deleted after insert, {failed_batches} batches lost to restarts",
        model.name()
    );
    println!(
        "       {kills} worker SIGKILLs, {restarts} immediate restarts, {} Stripe requests, {faulted} failed or dropped",
        requests.len()
    );
    println!("       dead before retry_dead: {dead_total}");
    for (reason, n) in &dead {
        println!("         {n:>5}  {reason}");
    }
    let checks: Vec<(String, bool)> = vec![
        (format!("profiles provisioned / expected        {provisioned} / {expected}"), provisioned == expected),
        (format!("profiles with exactly one object       {exactly_one} / {expected}"), exactly_one == expected),
        (format!("live Stripe objects without a profile  {orphans}"), orphans == 0),
        (format!("jobs lost                              {lost}"), lost == 0),
        (format!("dead jobs not from injected faults     {unexpected_dead}"), unexpected_dead == 0),
        (format!("key occurrences in the server log      {key_in_log}"), key_in_log == 0),
        (
            format!("disruptions carried out                {kills} kills, {restarts} restart"),
            kills == 3 && restarts == 1,
        ),
    ];
    for (line, ok) in &checks {
        println!("  {} {line}", if *ok { "ok  " } else { "FAIL" });
    }
    println!("  wall time                              {:.1} s", started.elapsed().as_secs_f64());
    let failed = checks.iter().filter(|(_, ok)| !ok).count();
    println!("chaos ({}): {} passed, {failed} failed", model.name(), checks.len() - failed);
    Ok(failed)
}
