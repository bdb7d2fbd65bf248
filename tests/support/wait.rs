#![allow(dead_code)] // shared by several test binaries, each using a part of it

//! Waiting on a condition with a deadline (never sleeping and hoping), and plain checks.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;

/// Polls `probe` until it yields a value or `deadline` passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T, Failed> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= until {
            return Err(format!("timed out after {deadline:?} waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), Failed> {
    if condition { Ok(()) } else { Err(message().into()) }
}

/// Jobs still open plus inserts not yet promoted to jobs: zero once the workers have drained.
pub fn open_work(db: &mut postgres::Client) -> i64 {
    db.query_one(
        "SELECT (SELECT count(*) FROM onboarding.jobs WHERE state IN ('pending', 'running'))
              + (SELECT count(*) FROM onboarding.intake)",
        &[],
    )
    .unwrap()
    .get(0)
}
