//! Idling: with nothing due, the worker sleeps on its latch instead of polling.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::helpers::{DEADLINE, db, ensure, wait_for, worker_pid};

pub(crate) fn tests() -> Vec<Trial> {
    trials![an_idle_worker_sleeps_instead_of_polling]
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
