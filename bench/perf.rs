//! The performance benchmark: one command (`bench/perf`), one run, one table.
//!
//! Against the project's Stripe emulator on loopback, with the release build of the extension:
//! 1. commit → ID written back latency, one profile at a time, 0 ms Stripe (1b: 1 s apart, as
//!    signups arrive; 1c and 1d: where 1b's and 1's milliseconds go, from the jobs' events);
//! 2. throughput, 0 ms Stripe, budget off;
//! 3. throughput with 250 ms Stripe, budget off and at 100/s (peak in-flight, 429s);
//! 4. trigger cost: single-row INSERT+COMMIT per second with and without the trigger (pgbench),
//!    with the worker paused and as deployed;
//! 5. the worker's resident memory before and after many jobs;
//! 6. the price of waiting for a standby: line 1 again on a primary with a streaming standby on
//!    loopback, not waited for, named in `onboarding.wait_for_standbys`, and synchronous;
//! 7. signups arriving during a backfill of 100,000 that waits for the rate budget, with priority
//!    lanes; and during a short one with lanes and with one queue (the backfill's jobs put in the
//!    signups' lane); and the short one with lanes while Stripe's events are read every second
//!    (7c: the reader re-reading 200 Connect accounts, all in the same budget);
//! 8. line 1 while another session holds one profile's row through its write-back;
//! 9. the queue's own history: line 2's throughput after 100,000 finished jobs, and while another
//!    session holds a REPEATABLE READ snapshot open (twice in a row, then once released), each as
//!    a ratio of the run before it;
//! 10. Stripe's limits, all of them: a live key against a test server enforcing Stripe's live
//!     limits (100 a second in all, 25 per endpoint, 20 search), a backfill of 2,000 with signups
//!     at 2/s, with the global budget alone and with every budget: 429s, customers a second,
//!     signups' p99;
//! 11. lines 1, 2 and 4 again on each PostgreSQL major named in BENCH_MAJORS (bench/perf: 15 and
//!     18), a fresh cluster each, side by side;
//! 13. Accounts v2 beside v1: lines 1, 2 and 3b for a table attached with `stripe_objects =>
//!     'accounts_v2'` (one Account per signup) and for the v1 table, measured in turns in this
//!     run, with the WAL each signup writes in all (a v2 Account must cost the database no more
//!     than a v1 Customer);
//! 12. this build against the previous release's package (BENCH_PACKAGES, release builds both),
//!     each installed in turn on a fresh cluster of the same settings: the worker's statements per
//!     job (profiles one at a time), line 1b's idle p50, line 2's throughput and line 4c's trigger cost, side by side.
//!
//! Sizes can be lowered for a quick look: BENCH_THROUGHPUT, BENCH_SLOW, BENCH_MEMORY, BENCH_HISTORY,
//! BENCH_FINISHED (profiles); BENCH_ONLY=1,4 runs only those parts. BENCH_PROFILE=1 loads
//! pg_stat_statements and prints the costliest statements (time, calls, buffers per call) of
//! each of line 9's runs: where the worker's time goes.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use postgres::Client;
use stripe_emulator::{Emulator, EmulatorConfig, Fault};
use support::cluster::{Cluster, StopOnDrop, default_pg_config};
use support::package_tree;
use support::replication::{Replicated, STANDBY_NAME};
use support::wait::open_work;

const API_KEY: &str = "sk_test_benchmark0000000000";
/// A live-mode key (for line 10's budgets: Stripe's live limits); only the test server sees it.
const LIVE_KEY: &str = "sk_live_benchmark0000000000";

fn size(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |n: &str| only.is_empty() || only.split(',').any(|p| p.trim() == n);
    let stripe = Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })
        .expect("start the Stripe emulator");
    let settings = format!(
        "onboarding.stripe_api_base = '{}'\n\
         onboarding.stripe_api_key = '{API_KEY}'\n\
         onboarding.rate_limit = 0\n\
         onboarding.endpoint_rate_limit = 0\n\
         onboarding.search_rate_limit = 0\n\
         onboarding.poll_interval = '1s'\n\
         onboarding.request_timeout = '5s'\n\
         track_commit_timestamp = on\n\
         synchronous_commit = on\n\
         log_min_messages = warning\n\
         shared_buffers = '256MB'\n",
        stripe.base_url()
    ) + if std::env::var("BENCH_PROFILE").is_ok() {
        "shared_preload_libraries = 'onboarding,pg_stat_statements'\npg_stat_statements.track = all\n"
    } else {
        ""
    };
    let cluster = Cluster::start("bench", &settings);
    let stop_on_panic = StopOnDrop(&cluster);
    let mut db = cluster.connect();
    db.batch_execute(TABLES).unwrap();

    let row = |what: &str, value: String, target: &str| println!("  {what:<58} {value:>34}   (target {target})");
    println!(
        "\nonboarding benchmark — {} cores, PostgreSQL {}, release build, Stripe emulator on loopback\n",
        cores(),
        server_version(&mut db)
    );

    let mut busy_phases = None;
    if part("1") {
        // 1. Latency, one at a time.
        let (users, (p50, p95, p99)) = latency_of(&mut db, 300, Duration::ZERO);
        busy_phases = Some(phases(&mut db, &users));
        row(
            "1. commit -> written back, one at a time: p50 / p95 / p99",
            format!("{p50:.1} / {p95:.1} / {p99:.1} ms"),
            "p50 <= 3, p99 <= 10 ms",
        );
    }
    if part("1b") {
        // 1b. The same for signups as they really arrive: one now and then, the worker idle between.
        let samples = size("BENCH_SPACED", 60) as usize;
        top_statements(&mut db, "before 1b"); // resets the counts
        let (users, (p50, p95, p99)) = latency_of(&mut db, samples, Duration::from_secs(1));
        top_statements(&mut db, "1b");
        row(
            &format!("1b. the same, {samples} inserts 1 s apart (worker idle between)"),
            format!("{p50:.1} / {p95:.1} / {p99:.1} ms"),
            "p50 <= 2, p99 <= 5 ms",
        );
        let show = |[wake, send, answer, write]: [f64; 4]| format!("{wake:.2} / {send:.2} / {answer:.2} / {write:.2}");
        row(
            "1c. medians of 1b: commit->claimed / ->sent / ->answer recorded / ->written back",
            format!("{} ms", show(phases(&mut db, &users))),
            "-",
        );
        if let Some(busy) = busy_phases {
            row("1d. the same of line 1 (one at a time)", format!("{} ms", show(busy)), "-");
        }
    }
    if part("2") {
        // 2. Throughput, 0 ms.
        let n = size("BENCH_THROUGHPUT", 20_000);
        let rate = line2_throughput(&mut db, n);
        row(
            &format!("2. throughput, 0 ms Stripe, budget off ({n} profiles)"),
            format!("{rate:.0} profiles/s"),
            ">= 2000/s",
        );
        // What the state machine's trigger on onboarding.jobs costs the worker: end-to-end runs
        // with and without it differ by less than their own spread on 2 cores (1.19x and 1.45x
        // seen for the same code), so the trigger is measured alone, on a copy of the jobs table
        // driven the way the worker drives it (claim 100, finish them), with and without it, in
        // turns; then set against line 2's time per profile.
        let per_job = state_machine_cost_per_job(&mut db);
        row(
            "2b. state-machine trigger: cost per job (2 moves) / share of line 2",
            format!("{:.1} us / {:.1} %", per_job * 1e6, per_job * rate * 100.0),
            "-",
        );
        // What running the worker's statements on a profile table as its owner costs: the claim's
        // profile read and the write-back, through onboarding._as_owner vs plain EXECUTE.
        let per_job = owner_switch_cost_per_job(&mut db);
        row(
            "2c. owner switch (read + write-back as the table's owner): per job / share",
            format!("{:.1} us / {:.1} %", per_job * 1e6, per_job * rate * 100.0),
            "-",
        );
    }
    if part("3") {
        // 3. 250 ms at Stripe.
        stripe.set_latency(Duration::from_millis(250));
        let slow = size("BENCH_SLOW", 3000);
        set(&mut db, &[("onboarding.batch_size", "200")]);
        stripe.reset_max_in_flight();
        let rate = throughput(&mut db, slow, 500);
        row(
            &format!("3a. throughput, 250 ms Stripe, budget off ({slow})"),
            format!("{rate:.0}/s, {} in flight", stripe.max_in_flight()),
            ">= 400/s",
        );
        stripe.set_rate_limit(Some(100));
        let before_429 = count_429(&stripe);
        // Budget: at most 100 requests in any second (the emulator answers 429 above that). About
        // 25 calls in flight sustain it at 250 ms; the rest of the batch waits for budget slots.
        set(
            &mut db,
            &[("onboarding.rate_limit", "100"), ("onboarding.rate_burst", "1"), ("onboarding.batch_size", "100")],
        );
        stripe.reset_max_in_flight();
        let budgeted = (slow * 2 / 3).max(300);
        let rate = throughput(&mut db, budgeted, 500);
        row(
            &format!("3b. throughput, 250 ms Stripe, budget 100/s ({budgeted})"),
            format!("{rate:.0}/s, {} in flight, {} 429s", stripe.max_in_flight(), count_429(&stripe) - before_429),
            ">= 95/s, zero 429s",
        );
        stripe.set_rate_limit(None);
        stripe.set_latency(Duration::ZERO);
        set(&mut db, &[("onboarding.rate_limit", "0"), ("onboarding.batch_size", "100")]);
    }
    if part("4") {
        let trigger = TriggerCost::measure(&cluster, &mut db);
        row("4a. INSERT+COMMIT/s without the trigger", format!("{:.0} tps", trigger.plain_tps()), "baseline");
        row("4b. cost with the trigger, worker paused", trigger.paused(), "<= 1.10x");
        row("4c. cost with the trigger, as deployed (budget 95/s)", trigger.deployed(), "<= 1.15x");
        row("4d. the same, budget off (worker flat out)", trigger.flat_out(), "-");
    }
    if part("5") {
        // 5. Memory (of the worker, once it runs: alone, this line may come before it has started).
        let pid: i32 = support::wait::wait_for("the worker", Duration::from_secs(30), || {
            db.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'onboarding worker' LIMIT 1", &[])
                .unwrap()
                .map(|row| row.get(0))
        })
        .unwrap();
        let before = rss_kib(pid);
        let m = size("BENCH_MEMORY", 100_000);
        throughput(&mut db, m, 2000);
        let after = rss_kib(pid);
        row(
            &format!("5. worker private resident memory before / after {m} jobs"),
            format!("{:.1} / {:.1} MiB", before as f64 / 1024.0, after as f64 / 1024.0),
            "growth < 10 MB",
        );
    }
    if part("8") {
        // 8. One profile's row held by another session while others arrive one at a time.
        let samples = size("BENCH_LOCKED", 200) as usize;
        stripe.inject(Fault::stall(Duration::from_millis(300)).on("POST", "/v1/customers").times(1));
        let held: String = db
            .query_one("INSERT INTO public.profiles (email) VALUES ('held@example.com') RETURNING id::text", &[])
            .unwrap()
            .get(0);
        let mut holder = cluster.connect();
        let mut lock = holder.transaction().unwrap();
        lock.query("SELECT 1 FROM public.profiles WHERE id::text = $1 FOR UPDATE", &[&held]).unwrap();
        let (p50, _, p99) = latency(&mut db, samples, Duration::ZERO);
        let still_unlinked: bool = db
            .query_one("SELECT stripe_customer_id IS NULL FROM public.profiles WHERE id::text = $1", &[&held])
            .unwrap()
            .get(0);
        lock.commit().unwrap();
        row(
            &format!("8. {samples} profiles while another's row is locked: p50 / p99"),
            format!("{p50:.1} / {p99:.1} ms{}", if still_unlinked { "" } else { " (the row was not held!)" }),
            "p99 <= 50 ms",
        );
    }
    if part("7") {
        // 7. Priority lanes: signups at 2/s while a backfill waits for a test key's budget.
        // With lanes the signups' wait does not grow with the backfill (100,000 as issue 13 asks);
        // with one queue it is the whole backlog ahead, so that comparison runs on a short one.
        let backlog = size("BENCH_BACKFILL", 100_000);
        let short = size("BENCH_BACKFILL_SHORT", 480);
        set(
            &mut db,
            &[("onboarding.rate_limit", "24"), ("onboarding.rate_burst", "1"), ("onboarding.batch_size", "25")],
        );
        let (lanes50, lanes99) = signups_during_backfill(&mut db, backlog, 20, Duration::from_millis(500), false);
        let (short50, short99) = signups_during_backfill(&mut db, short, 20, Duration::from_millis(500), false);
        let (fifo50, fifo99) = signups_during_backfill(&mut db, short, 20, Duration::from_millis(500), true);
        let (events50, events99, reads, busiest) = signups_during_events_reads(&mut db, &stripe, short);
        row(
            &format!("7. signups at 2/s during a backfill of {backlog} at 24/s: p50 / p99"),
            format!("{lanes50:.2} / {lanes99:.2} s"),
            "p99 <= 1.5 s",
        );
        row(
            &format!("7b. the same during a backfill of {short}, with lanes / one queue"),
            format!("{short50:.2} / {short99:.2} s / {fifo50:.1} / {fifo99:.1} s"),
            "-",
        );
        row(
            "7c. 7b with lanes, Stripe's events read every 1 s (200 accounts)",
            format!("{events50:.2} / {events99:.2} s, {reads} reads, busiest second {busiest}"),
            "p99 as 7b's; <= 25 requests a second",
        );
        set(
            &mut db,
            &[("onboarding.rate_limit", "0"), ("onboarding.rate_burst", "5"), ("onboarding.batch_size", "100")],
        );
    }
    if part("10") {
        // 10. Stripe's per-endpoint limit: side by side, the global budget alone (as before issue
        // 27) and with each endpoint's budget too, at Stripe's live limits.
        let backlog = size("BENCH_LIMITS", 2_000);
        let live =
            Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(LIVE_KEY.into()), ..Default::default() })
                .expect("start a live-keyed Stripe emulator");
        live.enforce_stripe_live_limits();
        let base = live.base_url();
        let settings = [
            ("onboarding.stripe_api_base", base.as_str()),
            ("onboarding.stripe_api_key", LIVE_KEY),
            ("onboarding.rate_limit", "-1"),
            ("onboarding.rate_burst", "5"),
            ("onboarding.batch_size", "100"),
        ];
        let mut results = Vec::new();
        for (label, per_endpoint) in [("global budget only", "0"), ("every budget", "-1")] {
            set(&mut db, &settings);
            set(
                &mut db,
                &[("onboarding.endpoint_rate_limit", per_endpoint), ("onboarding.search_rate_limit", per_endpoint)],
            );
            std::thread::sleep(Duration::from_secs(2)); // the worker rebuilds its client with them
            live.clear_requests();
            let per_second = backfill_under_stripe_limits(&mut db, backlog);
            let (_, p99) = per_second.1;
            results.push((label, live.rate_limited().len(), per_second.0, p99));
        }
        for (i, (label, refused, per_second, p99)) in results.iter().enumerate() {
            row(
                &format!("10{}. backfill of {backlog} + signups at 2/s, live key, {label}", ["", "b"][i.min(1)]),
                format!("{refused} 429s, {per_second:.1} customers/s, p99 {p99:.2} s"),
                ["-", "0 429s, >= 23/s, p99 <= 1.5 s"][i.min(1)],
            );
        }
        set(
            &mut db,
            &[
                ("onboarding.stripe_api_base", stripe.base_url().as_str()),
                ("onboarding.stripe_api_key", API_KEY),
                ("onboarding.rate_limit", "0"),
                ("onboarding.endpoint_rate_limit", "0"),
                ("onboarding.search_rate_limit", "0"),
            ],
        );
    }
    if part("13") {
        accounts_v2_beside_v1(&mut db, &stripe, &row);
    }
    if part("9") {
        queue_history(&mut db, &cluster, &row);
    }
    drop(stop_on_panic); // stops it: line 6 starts its own pair
    if part("6") {
        standby_wait_cost(&settings, &row);
    }
    if part("11") {
        majors_side_by_side(&settings);
    }
    if part("12") {
        releases_side_by_side(&settings);
    }
    println!();
}

/// The profile tables every benchmark cluster starts with: two attached, one plain (line 4's
/// baseline).
const TABLES: &str = "CREATE EXTENSION onboarding;
     CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
         stripe_customer_id text, stripe_connect_account_id text);
     CREATE TABLE public.profiles_plain (LIKE public.profiles INCLUDING ALL);
     CREATE TABLE public.signups (LIKE public.profiles INCLUDING ALL);
     CREATE TABLE public.members_v2 (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
         stripe_account_id text);
     SELECT onboarding.attach('public.profiles');
     SELECT onboarding.attach('public.signups');
     SELECT onboarding.attach('public.members_v2', stripe_objects => 'accounts_v2');";

fn server_version(db: &mut Client) -> String {
    db.query_one("SHOW server_version", &[]).unwrap().get(0)
}

/// Line 2: profiles provisioned a second, 0 ms Stripe, budget off, inserted 1,000 a statement.
fn line2_throughput(db: &mut Client, n: i64) -> f64 {
    set(db, &[("onboarding.batch_size", "100")]);
    throughput(db, n, 1000)
}

/// A variable's `label=path` pairs, space-separated (BENCH_MAJORS, BENCH_PACKAGES: bench/perf sets them).
fn labelled_paths(variable: &str) -> Vec<(String, PathBuf)> {
    std::env::var(variable)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pair| pair.split_once('=').map(|(label, path)| (label.to_string(), PathBuf::from(path))))
        .collect()
}

/// Line 11: lines 1, 2 and 4 on each PostgreSQL major `bench/perf` installed the release build
/// into (BENCH_MAJORS, "15=<pg_config> 18=<pg_config>"), each on a fresh cluster of its own, one
/// after the other, side by side with the ratio of the last major to the first.
fn majors_side_by_side(settings: &str) {
    let majors = labelled_paths("BENCH_MAJORS");
    if majors.len() < 2 {
        println!("  11. (skipped: BENCH_MAJORS names fewer than two majors; bench/perf sets it from BENCH_VERSIONS)");
        return;
    }
    struct Figures {
        version: String,
        latency: (f64, f64, f64),
        throughput: f64,
        trigger: TriggerCost,
    }
    let n = size("BENCH_THROUGHPUT", 20_000);
    let figures: Vec<Figures> = majors
        .iter()
        .map(|(major, pg_config)| {
            let cluster = Cluster::start_with(pg_config, &format!("bench-pg{major}"), settings);
            let _stop = StopOnDrop(&cluster);
            let mut db = cluster.connect();
            db.batch_execute(TABLES).unwrap();
            // "15.20" of "15.20 (Debian 15.20-0+deb12u1)"
            let version = server_version(&mut db).split_whitespace().next().unwrap_or_default().to_string();
            let latency = latency(&mut db, size("BENCH_MAJORS_LATENCY", 300) as usize, Duration::ZERO);
            let throughput = line2_throughput(&mut db, n);
            let trigger = TriggerCost::measure(&cluster, &mut db);
            Figures { version, latency, throughput, trigger }
        })
        .collect();
    let (first, last) = (&figures[0], &figures[figures.len() - 1]);
    let line = |what: &str, cells: Vec<String>, ratio: String| {
        let cells: String = cells.iter().map(|c| format!("{c:>22}")).collect();
        println!("  {what:<46}{cells}   {ratio}");
    };
    println!();
    line(
        "11. lines 1, 2 and 4 on each major",
        figures.iter().map(|f| format!("PostgreSQL {}", f.version)).collect(),
        format!("{} / {}", last.version, first.version),
    );
    line(
        "11-1. commit -> written back: p50 / p99",
        figures.iter().map(|f| format!("{:.1} / {:.1} ms", f.latency.0, f.latency.2)).collect(),
        format!("{:.2}x / {:.2}x", last.latency.0 / first.latency.0, last.latency.2 / first.latency.2),
    );
    line(
        &format!("11-2. throughput ({n} profiles)"),
        figures.iter().map(|f| format!("{:.0}/s", f.throughput)).collect(),
        format!("{:.2}x", last.throughput / first.throughput),
    );
    line(
        "11-4a. INSERT+COMMIT/s without the trigger",
        figures.iter().map(|f| format!("{:.0} tps", f.trigger.plain_tps())).collect(),
        format!("{:.2}x", last.trigger.plain_tps() / first.trigger.plain_tps()),
    );
    for (what, cost) in [
        ("11-4b. trigger's cost, worker paused", TriggerCost::paused_ratio as fn(&TriggerCost) -> f64),
        ("11-4c. trigger's cost, as deployed (95/s)", TriggerCost::deployed_ratio),
        ("11-4d. trigger's cost, budget off", TriggerCost::flat_out_ratio),
    ] {
        line(
            what,
            figures.iter().map(|f| format!("{:.2}x", cost(&f.trigger))).collect(),
            format!("{:.2}x", cost(&last.trigger) / cost(&first.trigger)),
        );
    }
}

/// Line 12: the previous release's package and this build's (BENCH_PACKAGES, "0.3.0=<tree>
/// current=<tree>", release builds both, made by bench/perf), each installed in turn into
/// `PG_CONFIG`'s server and measured on a fresh cluster of the same settings, with
/// pg_stat_statements counting the worker's statements; the last package stays installed.
fn releases_side_by_side(settings: &str) {
    let packages = labelled_paths("BENCH_PACKAGES");
    if packages.len() < 2 {
        println!("  12. (skipped: BENCH_PACKAGES names fewer than two packages; bench/perf sets it)");
        return;
    }
    struct Figures {
        label: String,
        statements_per_job: (f64, f64),
        idle_p50: f64,
        throughput: f64,
        trigger: TriggerCost,
    }
    let settings = format!(
        "{settings}shared_preload_libraries = 'onboarding,pg_stat_statements'\npg_stat_statements.track = all\n"
    );
    let (n, spaced) = (size("BENCH_THROUGHPUT", 20_000), size("BENCH_SPACED", 60) as usize);
    let figures: Vec<Figures> = packages
        .iter()
        .map(|(label, tree)| {
            package_tree::install(&default_pg_config(), tree);
            let cluster = Cluster::start(&format!("bench-{label}"), &settings);
            let _stop = StopOnDrop(&cluster);
            let mut db = cluster.connect();
            db.batch_execute(TABLES).unwrap();
            let statements_per_job = worker_statements_per_job(&mut db, size("BENCH_STATEMENTS", 300) as usize);
            let (_, (idle_p50, _, _)) = latency_of(&mut db, spaced, Duration::from_secs(1));
            let throughput = line2_throughput(&mut db, n);
            let trigger = TriggerCost::measure(&cluster, &mut db);
            Figures { label: label.clone(), statements_per_job, idle_p50, throughput, trigger }
        })
        .collect();
    let (first, last) = (&figures[0], &figures[figures.len() - 1]);
    let line = |what: &str, cells: Vec<String>, ratio: String, target: &str| {
        let cells: String = cells.iter().map(|c| format!("{c:>16}")).collect();
        println!("  {what:<52}{cells}   {ratio:>8}   (target {target})");
    };
    println!();
    line(
        "12. this build against the previous release",
        figures.iter().map(|f| f.label.clone()).collect(),
        format!("{} / {}", last.label, first.label),
        "-",
    );
    line(
        "12a. background statements per job, sent / all run",
        figures.iter().map(|f| format!("{:.1} / {:.1}", f.statements_per_job.0, f.statements_per_job.1)).collect(),
        format!("{:.2}x", last.statements_per_job.1 / first.statements_per_job.1),
        "<= 10",
    );
    line(
        &format!("12b. line 1b: commit -> written back, {spaced} 1 s apart, p50"),
        figures.iter().map(|f| format!("{:.2} ms", f.idle_p50)).collect(),
        format!("{:.2}x", last.idle_p50 / first.idle_p50),
        "<= 0.6x",
    );
    line(
        &format!("12c. line 2: throughput ({n} profiles)"),
        figures.iter().map(|f| format!("{:.0}/s", f.throughput)).collect(),
        format!("{:.2}x", last.throughput / first.throughput),
        ">= 1.3x",
    );
    line(
        "12d. line 4c: the trigger's cost as deployed (95/s)",
        figures.iter().map(|f| format!("{:.2}x", f.trigger.deployed_ratio())).collect(),
        format!("{:.2}x", last.trigger.deployed_ratio() / first.trigger.deployed_ratio()),
        "no worse",
    );
}

/// The statements the extension's background processes (the worker, and the profile writer
/// beside it) run per job while `n` profiles arrive one at a time (line 1's
/// pattern, where nothing is batched): those it sends (SPI calls: pg_stat_statements' top level)
/// and all it runs (with those inside the SQL functions and triggers they call). The harness's
/// own statements run as another role, so they are not counted.
fn worker_statements_per_job(db: &mut Client, n: usize) -> (f64, f64) {
    db.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         DROP ROLE IF EXISTS bench_app;
         CREATE ROLE bench_app;
         GRANT USAGE ON SCHEMA onboarding TO bench_app;
         GRANT SELECT ON ALL TABLES IN SCHEMA onboarding TO bench_app;
         GRANT SELECT, INSERT ON public.profiles TO bench_app;",
    )
    .unwrap();
    drain(db, Duration::from_secs(600));
    db.batch_execute("SELECT pg_stat_statements_reset(); SET ROLE bench_app").unwrap();
    one_at_a_time(db, n, Duration::ZERO);
    db.batch_execute("RESET ROLE").unwrap();
    let row = db
        .query_one(
            "SELECT coalesce(sum(calls) FILTER (WHERE toplevel), 0)::float8, coalesce(sum(calls), 0)::float8
               FROM pg_stat_statements
              WHERE userid = 'postgres'::regrole AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .unwrap();
    (row.get::<_, f64>(0) / n as f64, row.get::<_, f64>(1) / n as f64)
}

/// Line 4: single-row INSERT+COMMIT per second (pgbench, 2 clients) into the plain table and into
/// an attached one with the worker paused, as deployed (the worker provisioning what pgbench
/// inserts under the rate budget a live key gets by default: 95/s, Stripe allows 100) and with the
/// budget off. The four alternate, three turns of 5 s, so the machine's drift hits all alike; each
/// turn's ratio is against that turn's plain run.
struct TriggerCost {
    plain: Vec<f64>,
    paused: Vec<f64>,
    /// (tps, profiles provisioned a second) of each turn.
    deployed: Vec<(f64, f64)>,
    flat_out: Vec<(f64, f64)>,
}

impl TriggerCost {
    fn measure(cluster: &Cluster, db: &mut Client) -> TriggerCost {
        // Start from a steady state: no autovacuum of the earlier parts' rows during the runs.
        db.batch_execute("VACUUM ANALYZE").unwrap();
        db.batch_execute("CHECKPOINT").unwrap();
        // As deployed: the default batch (the earlier lines leave 100), whichever lines ran before.
        set(db, &[("onboarding.batch_size", "25")]);
        let deployed_at = |rate_limit: &str, db: &mut Client| {
            set(db, &[("onboarding.stripe_api_key", API_KEY), ("onboarding.rate_limit", rate_limit)]);
            let before = provisioned(db);
            let tps = pgbench(cluster, "public.signups", 5);
            let provisioned_per_second = (provisioned(db) - before) as f64 / 5.0;
            set(db, &[("onboarding.stripe_api_key", "")]); // no key: the workers claim nothing
            clear_backlog(db);
            (tps, provisioned_per_second)
        };
        let mut runs =
            TriggerCost { plain: Vec::new(), paused: Vec::new(), deployed: Vec::new(), flat_out: Vec::new() };
        set(db, &[("onboarding.stripe_api_key", "")]);
        for _ in 0..3 {
            runs.plain.push(pgbench(cluster, "public.profiles_plain", 5));
            runs.paused.push(pgbench(cluster, "public.signups", 5));
            clear_backlog(db);
            runs.deployed.push(deployed_at("95", db));
            runs.flat_out.push(deployed_at("0", db));
        }
        set(
            db,
            &[("onboarding.stripe_api_key", API_KEY), ("onboarding.rate_limit", "0"), ("onboarding.batch_size", "100")],
        );
        runs
    }

    fn plain_tps(&self) -> f64 {
        mean(&self.plain)
    }

    /// Each turn's plain tps over these runs' tps.
    fn ratios(&self, runs: &[f64]) -> Vec<f64> {
        self.plain.iter().zip(runs).map(|(plain, run)| plain / run).collect()
    }

    /// The mean ratio, the spread of the turns' ratios and the runs' tps.
    fn describe(&self, runs: &[f64]) -> String {
        let ratios = self.ratios(runs);
        let (lo, hi) = ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        format!("{:.2}x ({lo:.2}-{hi:.2}, {:.0} tps", mean(&ratios), mean(runs))
    }

    fn paused(&self) -> String {
        self.describe(&self.paused) + ")"
    }

    fn deployed(&self) -> String {
        format!("{}, {:.0} prov/s)", self.describe(&tps(&self.deployed)), mean(&provisioned_rate(&self.deployed)))
    }

    fn flat_out(&self) -> String {
        format!("{}, {:.0} prov/s)", self.describe(&tps(&self.flat_out)), mean(&provisioned_rate(&self.flat_out)))
    }

    fn paused_ratio(&self) -> f64 {
        mean(&self.ratios(&self.paused))
    }

    fn deployed_ratio(&self) -> f64 {
        mean(&self.ratios(&tps(&self.deployed)))
    }

    fn flat_out_ratio(&self) -> f64 {
        mean(&self.ratios(&tps(&self.flat_out)))
    }
}

fn tps(runs: &[(f64, f64)]) -> Vec<f64> {
    runs.iter().map(|r| r.0).collect()
}

fn provisioned_rate(runs: &[(f64, f64)]) -> Vec<f64> {
    runs.iter().map(|r| r.1).collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Line 9: what the queue's history does to its throughput. Line 2's run (budget off, 0 ms
/// Stripe, 1,000-row inserts) in an emptied queue, then after 100,000 more provisioned (finished
/// jobs with their events, retention not yet due), then twice while another session holds a REPEATABLE READ
/// snapshot (no dead row can be removed meanwhile), then once more after it is released.
fn queue_history(db: &mut Client, cluster: &Cluster, row: &dyn Fn(&str, String, &str)) {
    let n = size("BENCH_HISTORY", 20_000);
    set(db, &[("onboarding.batch_size", "100")]);
    drain(db, Duration::from_secs(600));
    db.batch_execute("DELETE FROM onboarding.events; DELETE FROM onboarding.jobs;").unwrap();
    // One statement each: VACUUM cannot run in the implicit transaction of a multi-statement batch.
    for table in ["onboarding.jobs", "onboarding.events", "onboarding.intake"] {
        db.batch_execute(&format!("VACUUM FULL {table}")).unwrap();
    }
    db.batch_execute("VACUUM ANALYZE").unwrap();
    let fresh = throughput(db, n, 1000);
    let finished = size("BENCH_FINISHED", 100_000);
    // History made the way users make it: provisioned by the worker, left to autovacuum (a
    // synthesized history with a manual VACUUM ANALYZE hid that autovacuum never saw the
    // worker's writes until 0.3.0).
    throughput(db, finished, 1000);
    let history = throughput(db, n, 1000);
    top_statements(db, "history");
    let mut holder = cluster.connect();
    holder.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM onboarding.jobs;").unwrap();
    let held1 = throughput(db, n, 1000);
    top_statements(db, "held1");
    let held2 = throughput(db, n, 1000);
    top_statements(db, "held2");
    holder.batch_execute("COMMIT").unwrap();
    let released = throughput(db, n, 1000);
    row(
        &format!("9a. line 2 ({n}), emptied queue / after {finished} finished jobs"),
        format!("{fresh:.0} / {history:.0}/s ({:.2}x)", history / fresh),
        ">= 0.9x",
    );
    row(
        "9b. then under a held REPEATABLE READ snapshot, twice",
        format!("{held1:.0} / {held2:.0}/s ({:.2}x / {:.2}x)", held1 / history, held2 / history),
        ">= 0.7x both",
    );
    row("9c. then with the snapshot released", format!("{released:.0}/s ({:.2}x)", released / history), ">= 0.9x");
}

fn top_statements(db: &mut Client, label: &str) {
    if std::env::var("BENCH_PROFILE").is_err() {
        return;
    }
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").unwrap();
    println!("--- {label}");
    for r in db
        .query(
            "SELECT round(total_exec_time)::int, calls, round((shared_blks_hit + shared_blks_read)::numeric / greatest(calls, 1), 1)::float8, round(mean_exec_time * 1000)::int, left(regexp_replace(query, '\\s+', ' ', 'g'), 150)
               FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 40",
            &[],
        )
        .unwrap()
    {
        println!(
            "{:>7} ms {:>7} calls {:>6} us/call {:>9} blks/call  {}",
            r.get::<_, i32>(0),
            r.get::<_, i64>(1),
            r.get::<_, i32>(3),
            r.get::<_, f64>(2),
            r.get::<_, String>(4)
        );
    }
    db.batch_execute("SELECT pg_stat_statements_reset()").unwrap();
}

/// Line 13: lines 1, 2 and 3b for the accounts_v2 table beside the v1 table, in turns (v1, v2,
/// v1, v2: the machine's drift lands on both), and the worker's statements per job of each.
fn accounts_v2_beside_v1(db: &mut Client, stripe: &Emulator, row: &dyn Fn(&str, String, &str)) {
    let both = |measure: &mut dyn FnMut(&mut Client, Table) -> f64, db: &mut Client| -> (f64, f64) {
        let mut runs = [Vec::new(), Vec::new()];
        for _ in 0..2 {
            for (i, table) in [V1, V2].into_iter().enumerate() {
                runs[i].push(measure(db, table));
            }
        }
        (mean(&runs[0]), mean(&runs[1]))
    };
    let side = |v1: f64, v2: f64, unit: &str| format!("{v1:.1} / {v2:.1} {unit} ({:.2}x)", v2 / v1);
    let samples = size("BENCH_V2_SAMPLES", 200) as usize;
    let mut phases_of = [Vec::new(), Vec::new()];
    let (v1, v2) = both(
        &mut |db, table| {
            let users = one_at_a_time_in(db, table, samples, Duration::ZERO);
            phases_of[usize::from(table == V2)].push(phases(db, &users));
            written_back_percentiles(db, &users).0
        },
        db,
    );
    row("13a. line 1's p50, v1 Customer / v2 Account", side(v1, v2, "ms"), "v2 <= 1.10x");
    let medians = |runs: &[[f64; 4]]| -> String {
        (0..4)
            .map(|i| format!("{:.2}", mean(&runs.iter().map(|r| r[i]).collect::<Vec<_>>())))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    row("13a'. its phases (1c's), v1 | v2", format!("{} | {} ms", medians(&phases_of[0]), medians(&phases_of[1])), "-");
    // The database's work per signup, insert to write-back, as the WAL it writes (the harness's
    // polls write none): the intake, the job and its moves, the events, the write-back.
    let wal = |db: &mut Client, table: Table| -> f64 {
        let before = wal_lsn(db);
        one_at_a_time_in(db, table, 100, Duration::ZERO);
        drain(db, Duration::from_secs(60));
        let after = wal_lsn(db);
        let bytes: f64 = db
            .query_one("SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::float8", &[&after, &before])
            .unwrap()
            .get(0);
        bytes / 100.0
    };
    let (v1_wal, v2_wal) = both(&mut |db, table| wal(db, table), db);
    row("13b. WAL per signup, v1 / v2", side(v1_wal / 1024.0, v2_wal / 1024.0, "KiB"), "v2 <= 1.05x");
    set(db, &[("onboarding.batch_size", "100")]);
    let n = size("BENCH_V2_THROUGHPUT", 5000);
    let (v1, v2) = both(&mut |db, table| throughput_in(db, table, n, 1000), db);
    row(&format!("13c. line 2's throughput ({n}), v1 / v2"), side(v1, v2, "/s"), "v2 >= 0.90x");
    stripe.set_latency(Duration::from_millis(250));
    stripe.set_rate_limit(Some(100));
    set(db, &[("onboarding.rate_limit", "100"), ("onboarding.rate_burst", "1")]);
    let before_429 = count_429(stripe);
    let budgeted = size("BENCH_V2_SLOW", 1000);
    let (v1, v2) = both(&mut |db, table| throughput_in(db, table, budgeted, 500), db);
    row(
        &format!("13d. line 3b ({budgeted}, 250 ms, 100/s), v1 / v2"),
        format!("{} , {} 429s", side(v1, v2, "/s"), count_429(stripe) - before_429),
        ">= 95/s each, zero 429s",
    );
    stripe.set_rate_limit(None);
    stripe.set_latency(Duration::ZERO);
    set(db, &[("onboarding.rate_limit", "0")]);
}

/// The current WAL position.
fn wal_lsn(db: &mut Client) -> String {
    db.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0)
}

/// Line 6: commit -> written back, one at a time, on a primary with a streaming standby, as
/// deployed three ways. fsync is off on both servers (as everywhere here): what a standby adds is
/// its round trip and WAL receiver, not its disk.
fn standby_wait_cost(settings: &str, row: &dyn Fn(&str, String, &str)) {
    let pair = Replicated::start("bench-standby", settings, "");
    let mut db = pair.primary.connect();
    db.batch_execute(
        "CREATE EXTENSION onboarding;
         CREATE TABLE public.profiles (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text,
             stripe_customer_id text, stripe_connect_account_id text);
         SELECT onboarding.attach('public.profiles');",
    )
    .unwrap();
    pair.wait_streaming(false).expect("the standby streams");
    let samples = size("BENCH_STANDBY", 300) as usize;
    let (base50, _, base99) = latency(&mut db, samples, Duration::ZERO);
    row("6a. line 1 with an async standby, not waited for: p50 / p99", format!("{base50:.1} / {base99:.1} ms"), "-");
    let against_base = |label: &str, (p50, _, p99): (f64, f64, f64)| {
        row(label, format!("{p50:.1} / {p99:.1} ms ({:.2}x / {:.2}x)", p50 / base50, p99 / base99), "-");
    };
    set(&mut db, &[("onboarding.wait_for_standbys", STANDBY_NAME)]);
    against_base("6b. the same, standby in onboarding.wait_for_standbys", latency(&mut db, samples, Duration::ZERO));
    set(&mut db, &[("onboarding.wait_for_standbys", ""), ("synchronous_standby_names", STANDBY_NAME)]);
    pair.wait_streaming(true).expect("the standby is synchronous");
    against_base("6c. the same, synchronous standby (commits wait too)", latency(&mut db, samples, Duration::ZERO));
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// ALTER SYSTEM + reload. The worker applies it at its next wake-up: a short settle time is
/// enough here (a benchmark, not a test), and each phase starts with the queue drained.
fn set(db: &mut Client, settings: &[(&str, &str)]) {
    for (name, value) in settings {
        db.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'")).unwrap();
    }
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
}

/// Commit -> written back of `samples` profiles inserted one at a time, each `gap` after the
/// previous one was written back (the arrival pattern being measured, not a wait for anything).
fn latency(db: &mut Client, samples: usize, gap: Duration) -> (f64, f64, f64) {
    latency_of(db, samples, gap).1
}

/// [`latency`], with the users it inserted.
fn latency_of(db: &mut Client, samples: usize, gap: Duration) -> (Vec<String>, (f64, f64, f64)) {
    let users = one_at_a_time(db, samples, gap);
    let percentiles = written_back_percentiles(db, &users);
    (users, percentiles)
}

/// Inserts `samples` profiles one at a time, each `gap` after the previous one was written back
/// (the arrival pattern being measured, not a wait for anything); returns their users.
fn one_at_a_time(db: &mut Client, samples: usize, gap: Duration) -> Vec<String> {
    one_at_a_time_in(db, V1, samples, gap)
}

/// A benchmark table: its name and the column its objects are written back to.
type Table = (&'static str, &'static str);
const V1: Table = ("public.profiles", "stripe_customer_id");
const V2: Table = ("public.members_v2", "stripe_account_id");

/// [`one_at_a_time`] into `table`.
fn one_at_a_time_in(db: &mut Client, (table, column): Table, samples: usize, gap: Duration) -> Vec<String> {
    let mut users = Vec::new();
    for i in 0..samples {
        std::thread::sleep(gap);
        let user: String = db
            .query_one(
                &format!("INSERT INTO {table} (email) VALUES ($1) RETURNING id::text"),
                &[&format!("lat{i}@example.com")],
            )
            .unwrap()
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while db
            .query_one(&format!("SELECT {column} IS NULL FROM {table} WHERE id::text = $1"), &[&user])
            .unwrap()
            .get::<_, bool>(0)
        {
            assert!(Instant::now() < deadline, "profile {user} not provisioned");
            std::thread::sleep(Duration::from_micros(200));
        }
        users.push(user);
    }
    users
}

/// Where the milliseconds from commit to write-back go, medians over these users' jobs: the
/// profile's commit to the claim's `claimed` event (the wake-up and the claim), to the request's
/// send (`stripe_request`, moved to when it went out), to the answer's record (`stripe_response`,
/// in the record transaction), to the write-back's commit.
fn phases(db: &mut Client, users: &[String]) -> [f64; 4] {
    let row = db
        .query_one(
            "WITH e AS (
                SELECT q.job_id, onboarding._queued_commit_time(q.detail, q.xmin) AS committed,
                       (SELECT min(at) FROM onboarding.events x WHERE x.job_id = q.job_id AND x.step = 'claimed') AS claimed,
                       (SELECT min(at) FROM onboarding.events x WHERE x.job_id = q.job_id AND x.step = 'stripe_request') AS sent,
                       (SELECT min(at) FROM onboarding.events x WHERE x.job_id = q.job_id AND x.step = 'stripe_response') AS answered,
                       (SELECT min(at) FROM onboarding.events x WHERE x.job_id = q.job_id AND x.step = 'written_back') AS written
                  FROM onboarding.events q WHERE q.step = 'enqueued' AND q.user_id = ANY($1)),
             ms AS (
                SELECT extract(epoch FROM claimed - committed) * 1000 AS a, extract(epoch FROM sent - claimed) * 1000 AS b,
                       extract(epoch FROM answered - sent) * 1000 AS c, extract(epoch FROM written - answered) * 1000 AS d
                  FROM e)
             SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a), percentile_cont(0.5) WITHIN GROUP (ORDER BY b),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY c), percentile_cont(0.5) WITHIN GROUP (ORDER BY d)
               FROM ms",
            &[&users],
        )
        .unwrap();
    [row.get(0), row.get(1), row.get(2), row.get(3)]
}

/// Commit -> written back of these users' profiles, p50 / p95 / p99 in milliseconds.
fn written_back_percentiles(db: &mut Client, users: &[String]) -> (f64, f64, f64) {
    let row = db
        .query_one(
            "WITH l AS (
                -- From the profile's own commit (an insert's 'enqueued' event is written by the
                -- worker's transaction: its commit time is in the detail), as onboarding.stats does.
                SELECT extract(epoch FROM w.at - onboarding._queued_commit_time(q.detail, q.xmin)) * 1000 AS ms
                  FROM onboarding.events w
                  JOIN onboarding.events q ON q.job_id = w.job_id AND q.step = 'enqueued'
                 WHERE w.step = 'written_back' AND w.user_id = ANY($1))
             SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM l",
            &[&users],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Fills `public.<table>` (attached, emptied first) with `profiles` existing profiles, without
/// jobs (as if they predated the extension), then backfills it: the jobs wait in lane 3.
fn backfill_of(db: &mut Client, table: &str, profiles: i64) {
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS public.{table} (LIKE public.profiles INCLUDING ALL);
         SELECT onboarding.attach('public.{table}');
         TRUNCATE public.{table};"
    ))
    .unwrap();
    let mut tx = db.transaction().unwrap();
    tx.batch_execute("SET LOCAL session_replication_role = replica").unwrap(); // no insert trigger: no jobs yet
    tx.execute(
        &format!(
            "INSERT INTO public.{table} (email) SELECT '{table}-' || g || '@example.com' FROM generate_series(1, $1::bigint) g"
        ),
        &[&profiles],
    )
    .unwrap();
    tx.commit().unwrap();
    db.batch_execute(&format!("CALL onboarding.backfill('public.{table}', 1000)")).unwrap();
}

/// Line 7: signups arriving every `gap` (`signups` of them) while a backfill of `backlog` profiles
/// waits for a rate budget of 24/s. `fifo` puts the backfill's jobs in the signups' lane, as every
/// job was before lanes. Returns the signups' commit -> written back p50 / p99 in seconds.
fn signups_during_backfill(db: &mut Client, backlog: i64, signups: usize, gap: Duration, fifo: bool) -> (f64, f64) {
    backfill_of(db, "backlog", backlog);
    if fifo {
        db.batch_execute(
            "UPDATE onboarding.jobs SET lane = 0 WHERE profile_table = 'public.backlog'::regclass AND state = 'pending'",
        )
        .unwrap();
    }
    let mut users = Vec::new();
    for i in 0..signups {
        std::thread::sleep(gap);
        let user: String = db
            .query_one(
                "INSERT INTO public.profiles (email) VALUES ($1) RETURNING id::text",
                &[&format!("during-backfill-{fifo}-{i}@example.com")],
            )
            .unwrap()
            .get(0);
        users.push(user);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while db
        .query_one(
            "SELECT count(*) FROM public.profiles WHERE id::text = ANY($1) AND stripe_customer_id IS NULL",
            &[&users],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(Instant::now() < deadline, "signups not provisioned during the backfill");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What is left of the backfill is not this line's business.
    db.batch_execute(
        "UPDATE onboarding.jobs SET state = 'cancelled' WHERE profile_table = 'public.backlog'::regclass AND state = 'pending'",
    )
    .unwrap();
    drain(db, Duration::from_secs(60));
    let (p50, _, p99) = written_back_percentiles(db, &users);
    (p50 / 1000.0, p99 / 1000.0)
}

/// Line 10: a backfill of `backlog` profiles with 20 signups at 2/s arriving as it starts.
/// Returns the backfill's customers a second (from its call to its last write-back) and the
/// signups' commit -> written back p50 and p99 in seconds.
fn backfill_under_stripe_limits(db: &mut Client, backlog: i64) -> (f64, (f64, f64)) {
    let started = Instant::now();
    backfill_of(db, "limited", backlog);
    let mut users = Vec::new();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let user: String = db
            .query_one(
                "INSERT INTO public.profiles (email) VALUES ($1) RETURNING id::text",
                &[&format!("limited-signup-{i}@example.com")],
            )
            .unwrap()
            .get(0);
        users.push(user);
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let left: i64 =
            db.query_one("SELECT count(*) FROM public.limited WHERE stripe_customer_id IS NULL", &[]).unwrap().get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} of the backfill not provisioned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seconds = started.elapsed().as_secs_f64();
    drain(db, Duration::from_secs(60));
    let (p50, _, p99) = written_back_percentiles(db, &users);
    (backlog as f64 / seconds, (p50 / 1000.0, p99 / 1000.0))
}

/// Line 7c: line 7b with lanes while the events reader (issue 15) is as busy as it gets: polls
/// every second, each re-reading 20 of 200 followed Connect accounts (`refresh_due`, as after a
/// lost cursor), every request in the lowest lane of the same 24/s budget. Returns the signups'
/// p50 / p99 (s), how many requests the reader sent, and the most requests Stripe received in any
/// one second meanwhile.
fn signups_during_events_reads(db: &mut Client, stripe: &Emulator, short: i64) -> (f64, f64, usize, usize) {
    set(db, &[("onboarding.rate_limit", "0")]);
    db.batch_execute(
        "CREATE TABLE public.sellers (LIKE public.profiles INCLUDING ALL);
         SELECT onboarding.attach('public.sellers', connect_policy => 'always');
         INSERT INTO public.sellers (email) SELECT 'seller-' || g || '@example.com' FROM generate_series(1, 200) g;",
    )
    .unwrap();
    drain(db, Duration::from_secs(120));
    set(
        db,
        &[
            ("onboarding.rate_limit", "24"),
            ("onboarding.events_poll_interval", "1s"),
            ("onboarding.events_poll_fast_interval", "1s"),
        ],
    );
    db.batch_execute(
        "UPDATE onboarding.connect_accounts SET refresh_due = true;
         UPDATE onboarding.events_cursor SET next_poll_at = now();",
    )
    .unwrap();
    let since = std::time::SystemTime::now();
    let (p50, p99) = signups_during_backfill(db, short, 20, Duration::from_millis(500), false);
    let reader = |path: &str| path.starts_with("/v1/accounts/") || path.starts_with("/v1/events");
    let reads = stripe.requests().iter().filter(|r| r.arrived_at >= since && reader(&r.path)).count();
    assert!(reads > 0, "the events reader sent nothing: the line shows nothing");
    let busiest = busiest_second(stripe, since);
    set(db, &[("onboarding.events_poll_interval", "15s"), ("onboarding.events_poll_fast_interval", "2s")]);
    (p50, p99, reads, busiest)
}

/// The most requests Stripe received in any one second (a sliding window) since `since`.
fn busiest_second(stripe: &Emulator, since: std::time::SystemTime) -> usize {
    let mut times: Vec<std::time::SystemTime> =
        stripe.requests().iter().map(|r| r.arrived_at).filter(|t| *t >= since).collect();
    times.sort();
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]).unwrap_or_default() >= Duration::from_secs(1) {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    busiest
}

/// Inserts `n` profiles in statements of `per_statement` rows and times them until all are
/// written back. Returns profiles per second.
fn throughput(db: &mut Client, n: i64, per_statement: i64) -> f64 {
    throughput_in(db, V1, n, per_statement)
}

/// [`throughput`] into `table`.
fn throughput_in(db: &mut Client, (table, _): Table, n: i64, per_statement: i64) -> f64 {
    drain(db, Duration::from_secs(600));
    let start = Instant::now();
    let marker: String = db.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0);
    let mut left = n;
    while left > 0 {
        let k = left.min(per_statement);
        db.execute(
            &format!(
                "INSERT INTO {table} (email) SELECT $1 || '-' || g || '@example.com' FROM generate_series(1, $2::bigint) g"
            ),
            &[&marker, &k],
        )
        .unwrap();
        left -= k;
    }
    drain(db, Duration::from_secs(1800));
    n as f64 / start.elapsed().as_secs_f64()
}

/// Seconds per job that the state-machine trigger adds to claiming and finishing it: 40,000 jobs
/// in a copy of onboarding.jobs (its columns, checks and indexes) claimed 100 at a time and
/// finished, with the trigger and without, three turns each; the medians' difference.
fn state_machine_cost_per_job(db: &mut Client) -> f64 {
    const JOBS: i64 = 40_000;
    db.batch_execute(
        "DROP TABLE IF EXISTS public.bench_jobs;
         CREATE TABLE public.bench_jobs (LIKE onboarding.jobs INCLUDING ALL);
         CREATE TRIGGER jobs_state_machine BEFORE UPDATE OF state ON public.bench_jobs
             FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION onboarding._job_state_machine();",
    )
    .unwrap();
    let turn = |with_trigger: bool| -> f64 {
        db.batch_execute(&format!(
            "TRUNCATE public.bench_jobs;
             ALTER TABLE public.bench_jobs {} TRIGGER jobs_state_machine;
             INSERT INTO public.bench_jobs (kind, profile_table, user_id)
             SELECT 'create_customer', 'public.profiles', g::text FROM generate_series(1, {JOBS}) g;",
            if with_trigger { "ENABLE" } else { "DISABLE" }
        ))
        .unwrap();
        db.batch_execute("VACUUM ANALYZE public.bench_jobs").unwrap();
        let start = Instant::now();
        db.batch_execute(
            "DO $$ BEGIN
               LOOP
                 WITH due AS (SELECT j.id FROM public.bench_jobs j WHERE j.state = 'pending' AND j.run_at <= now()
                               ORDER BY j.run_at, j.id LIMIT 100 FOR UPDATE SKIP LOCKED)
                 UPDATE public.bench_jobs j SET state = 'running', attempts = j.attempts + 1,
                        claimed_by = pg_backend_pid(), claimed_at = now()
                   FROM due WHERE j.id = due.id;
                 EXIT WHEN NOT FOUND;
                 -- finished_at by hand: without the trigger, the check would refuse the move
                 UPDATE public.bench_jobs SET state = 'succeeded', stripe_id = 'cus_bench', claimed_by = NULL,
                        finished_at = now() WHERE state = 'running';
               END LOOP;
             END $$;",
        )
        .unwrap();
        start.elapsed().as_secs_f64()
    };
    let extra = extra_seconds(turn);
    db.batch_execute("DROP TABLE public.bench_jobs").unwrap();
    extra / JOBS as f64
}

/// What `turn(true)` takes longer than `turn(false)`: three turns each, alternating, medians'
/// difference (never below 0).
fn extra_seconds(mut turn: impl FnMut(bool) -> f64) -> f64 {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        with.push(turn(true));
        without.push(turn(false));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut with) - median(&mut without)).max(0.0)
}

/// Seconds per job that `onboarding._as_owner` adds to the worker's two statements on a profile
/// (read by id, write-back by id): 5,000 profiles each way, three turns, medians' difference.
fn owner_switch_cost_per_job(db: &mut Client) -> f64 {
    const PROFILES: i64 = 5_000;
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS public.bench_owned;
         CREATE TABLE public.bench_owned (id bigint PRIMARY KEY, email text, stripe_customer_id text);
         INSERT INTO public.bench_owned SELECT g, 'p' || g || '@example.com', NULL FROM generate_series(1, {PROFILES}) g;"
    ))
    .unwrap();
    db.batch_execute("VACUUM ANALYZE public.bench_owned").unwrap();
    let turn = |as_owner: bool| -> f64 {
        db.batch_execute("UPDATE public.bench_owned SET stripe_customer_id = NULL").unwrap();
        db.batch_execute("VACUUM public.bench_owned").unwrap();
        let body = if as_owner {
            "PERFORM FROM onboarding._as_owner('public.bench_owned'::regclass,
                 'SELECT email::text, stripe_customer_id::text FROM public.bench_owned WHERE id = $1::bigint', ARRAY[i::text]);
             PERFORM FROM onboarding._as_owner('public.bench_owned'::regclass,
                 'UPDATE public.bench_owned SET stripe_customer_id = $2 WHERE id = $1::bigint AND stripe_customer_id IS NULL
                  RETURNING id::text', ARRAY[i::text, 'cus_bench']);"
        } else {
            "EXECUTE 'SELECT email::text, stripe_customer_id::text FROM public.bench_owned WHERE id = $1::bigint'
                 INTO e, c USING i::text;
             EXECUTE 'UPDATE public.bench_owned SET stripe_customer_id = $2 WHERE id = $1::bigint AND stripe_customer_id IS NULL
                  RETURNING id::text' INTO c USING i::text, 'cus_bench';"
        };
        let start = Instant::now();
        db.batch_execute(&format!(
            "DO $$ DECLARE e text; c text; BEGIN FOR i IN 1..{PROFILES} LOOP {body} END LOOP; END $$;"
        ))
        .unwrap();
        start.elapsed().as_secs_f64()
    };
    let extra = extra_seconds(turn);
    db.batch_execute("DROP TABLE public.bench_owned").unwrap();
    extra / PROFILES as f64
}

/// Waits until no job is open and no insert waits to become one. The probe counts through the
/// queue's dead rows too (many under a held snapshot): it looks again after ten times what the
/// last look took, so the harness never takes more than a tenth of a core from the worker.
fn drain(db: &mut Client, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        let looked = Instant::now();
        let open = open_work(db);
        if open == 0 {
            return;
        }
        assert!(Instant::now() < until, "{open} jobs still open");
        std::thread::sleep((looked.elapsed() * 10).max(Duration::from_millis(5)));
    }
}

/// Profiles the worker has written a customer to (across the benchmark's tables).
fn provisioned(db: &mut Client) -> i64 {
    db.query_one("SELECT count(*) FROM onboarding.events WHERE step = 'written_back'", &[]).unwrap().get(0)
}

/// Drops what the pgbench runs left queued (the worker is paused meanwhile), so later parts start
/// from an empty queue instead of working through hundreds of thousands of test rows.
fn clear_backlog(db: &mut Client) {
    std::thread::sleep(Duration::from_secs(1)); // calls in flight finish and are recorded
    db.batch_execute(
        "DELETE FROM onboarding.intake;
         DELETE FROM onboarding.jobs WHERE profile_table = 'public.signups'::regclass AND state = 'pending';",
    )
    .unwrap();
    // What autovacuum does within its naptime (a minute) after such a mass delete, which no
    // application makes: the hundreds of thousands of dead intake rows pgbench's backlog leaves
    // would otherwise be walked by every promotion of the next lines (line 8 read 33 ms at p50).
    db.batch_execute("VACUUM onboarding.intake").unwrap();
    drain(db, Duration::from_secs(60));
}

fn count_429(stripe: &Emulator) -> usize {
    stripe.requests().iter().filter(|r| r.status == Some(429)).count()
}

/// Single-row INSERT+COMMIT transactions per second, two clients (one per core: a single client
/// mostly measures how fast idle cores wake up), for `seconds`.
fn pgbench(cluster: &Cluster, table: &str, seconds: u32) -> f64 {
    let script = std::env::temp_dir().join(format!("onboarding-bench-{}.sql", std::process::id()));
    std::fs::write(&script, format!("INSERT INTO {table} (email) VALUES ('bench@example.com');\n")).unwrap();
    let out = Command::new(cluster.bin("pgbench"))
        .args([
            "-n",
            "-c",
            "2",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &cluster.port.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg("postgres")
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

/// Private (anonymous) resident memory: shared buffers the worker touches are not its own.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
