//! Idling: with nothing due, the worker and the profile writer sleep on their latches instead of
//! polling.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::helpers::{DEADLINE, db, ensure, wait_for, worker_pid};

pub(crate) fn tests() -> Vec<Trial> {
    trials![an_idle_worker_sleeps_instead_of_polling, an_idle_profile_writer_sleeps_instead_of_polling]
}

/// CPU time (user + system, in clock ticks) a process has used, from /proc.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// With nothing due, the worker waits on its latch (poll interval 60 s) and burns no CPU.
fn an_idle_worker_sleeps_instead_of_polling() -> Result<(), Failed> {
    let mut db = db();
    let open: i64 =
        db.query_one("SELECT count(*) FROM onboarding.jobs WHERE state IN ('pending', 'running')", &[]).unwrap().get(0);
    ensure(open == 0, || format!("{open} jobs still open: the worker is not idle"))?;
    let pid = wait_for("the worker", DEADLINE, || worker_pid(&mut db))?;
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(1500)); // the measurement window
    let used = cpu_ticks(pid) - before;
    ensure(used <= 10, || format!("the idle worker used {used} ticks of CPU in 1.5 s"))
}

/// With no profile write due, the profile writer sleeps until woken (or its safety-net wake-up)
/// and burns no CPU. Until 0.4.0 "nothing due" read as "due now" (greatest(NULL, 0) is 0) and it
/// ran its pass back to back: about 80 % of a core in every database, for ever.
fn an_idle_profile_writer_sleeps_instead_of_polling() -> Result<(), Failed> {
    let mut db = db();
    let due_in: Option<f64> = db.query_one("SELECT onboarding._profile_writes_due_in()", &[]).unwrap().get(0);
    ensure(due_in.is_none(), || format!("nothing is due, yet the next profile write is due in {due_in:?} s"))?;
    let pid = wait_for("the profile writer", DEADLINE, || {
        db.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'onboarding profile writer' AND datname = current_database()",
            &[],
        )
        .unwrap()
        .map(|r| r.get::<_, i32>(0))
    })?;
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(1500)); // the measurement window
    let used = cpu_ticks(pid) - before;
    ensure(used <= 10, || format!("the idle profile writer used {used} ticks of CPU in 1.5 s"))
}
