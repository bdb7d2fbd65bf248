//! End-to-end tests: a real PostgreSQL 15 with the extension preloaded, its background worker,
//! and the project's Stripe emulator in this process. Committed data only, as applications see it.
//!
//! Run with `cargo test --test end_to_end` after `cargo pgrx install`. Tests share one cluster
//! and one emulator, so they run one at a time; each uses its own profile table and user ids.

#[path = "../support/mod.rs"]
mod support;

use std::sync::OnceLock;

use helpers::{API_KEY, settings};
use libtest_mimic::{Arguments, Trial};
use stripe_emulator::{Emulator, EmulatorConfig};
use support::cluster::Cluster;

struct Env {
    cluster: Cluster,
    stripe: Emulator,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn env() -> &'static Env {
    ENV.get().expect("environment started in main")
}

/// `trials![a, b]`: one trial per test function, named after it. Each test starts with an emulator
/// that has no faults or objects left by the previous one.
macro_rules! trials {
    ($($test:ident),* $(,)?) => {
        vec![$(::libtest_mimic::Trial::test(stringify!($test), || {
            $crate::env().stripe.reset();
            $test()
        })),*]
    };
}

// Declared after `trials!` so that they can use it.
mod accounts_v2;
mod api;
mod attach_checks;
mod audits;
mod claim_cursor;
mod compensation;
mod concurrency;
mod connect;
mod customer_changes;
mod dropped_tables;
mod granted_roles;
mod helpers;
mod idle;
mod inbound;
mod inbound_isolation;
mod intake;
mod lanes;
mod locked_rows;
mod partitions;
mod rate_limits;
mod request_times;
mod retries;
mod row_security;
mod security;
mod slow_condition;
mod spellings;
mod statistics;
mod stripe_api;
mod tenant;
mod tenant_objects;

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    // Tests run one at a time, in this order.
    let trials: Vec<Trial> = [
        intake::tests(),
        compensation::tests(),
        retries::tests(),
        api::tests(),
        attach_checks::tests(),
        connect::tests(),
        audits::tests(),
        idle::tests(),
        security::tests(),
        tenant::tests(),
        granted_roles::tests(),
        tenant_objects::tests(),
        row_security::tests(),
        concurrency::tests(),
        spellings::tests(),
        partitions::tests(),
        dropped_tables::tests(),
        locked_rows::tests(),
        lanes::tests(),
        rate_limits::tests(),
        statistics::tests(),
        request_times::tests(),
        slow_condition::tests(),
        claim_cursor::tests(),
        stripe_api::tests(),
        inbound::tests(),
        customer_changes::tests(),
        inbound_isolation::tests(),
        accounts_v2::tests(),
    ]
    .into_iter()
    .flatten()
    .collect();

    if !args.list {
        let stripe =
            Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(API_KEY.into()), ..Default::default() })
                .expect("start the Stripe emulator");
        let cluster = Cluster::start("main", &settings(&stripe, "log_min_messages = debug1"));
        cluster.connect().batch_execute("CREATE EXTENSION onboarding").expect("CREATE EXTENSION");
        let _ = ENV.set(Env { cluster, stripe });
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(env) = ENV.get() {
        env.cluster.stop();
    }
    conclusion.exit();
}
