//! The worker hands its table statistics to PostgreSQL, as a backend does when it goes idle:
//! autovacuum decides from them when to vacuum and analyze the queue's tables. Without them it
//! never saw the jobs and events the worker writes or the intake rows it deletes, and the queue
//! kept every dead row and the plans of empty tables (170 ms from commit to write-back after
//! 100,000 signups instead of 3 ms).

use libtest_mimic::{Failed, Trial};
use postgres::Client;

use crate::helpers::{DEADLINE, db, insert_profile, profiles_table, wait_for, wait_for_customer};

pub(crate) fn tests() -> Vec<Trial> {
    trials![autovacuum_sees_what_the_worker_writes]
}

/// Rows inserted into onboarding.jobs and deleted from onboarding.intake, as the cumulative
/// statistics (what autovacuum reads) have them.
fn counted(db: &mut Client) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT n_tup_ins FROM pg_stat_all_tables WHERE relid = 'onboarding.jobs'::regclass),
                    (SELECT n_tup_del FROM pg_stat_all_tables WHERE relid = 'onboarding.intake'::regclass)",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn autovacuum_sees_what_the_worker_writes() -> Result<(), Failed> {
    let mut db = db();
    let table = profiles_table(&mut db, "profiles_statistics");
    let (jobs_before, intake_before) = counted(&mut db);
    let users: Vec<String> =
        (0..3).map(|i| insert_profile(&mut db, &table, Some(&format!("stats{i}@example.com")))).collect();
    for user in &users {
        wait_for_customer(&mut db, &table, user)?;
    }
    // The worker flushes at most once a second, also when it then goes idle; each query here is
    // its own transaction, so it reads the statistics afresh.
    wait_for("the worker's job inserts and intake deletions in pg_stat_all_tables", DEADLINE, || {
        let (jobs, intake) = counted(&mut db);
        (jobs >= jobs_before + 3 && intake >= intake_before + 3).then_some(())
    })
}
