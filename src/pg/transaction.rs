//! Transactions of a background worker, which has no statement loop to open them for it.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::PgTryBuilder;
use pgrx::prelude::*;

use crate::pg::latch::commit_interruptibly;

/// Runs `body` in its own transaction. An ERROR inside is caught, logged as a WARNING and the
/// transaction aborted, so one bad job or statement never takes the worker down.
pub fn in_transaction<R>(what: &str, body: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    let body = AssertUnwindSafe(body);
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    PgTryBuilder::new(move || {
        let result = (body.0)();
        unsafe { pg_sys::PopActiveSnapshot() };
        // The commit may wait for synchronous standbys (workers commit with synchronous_commit = on).
        commit_interruptibly(|| unsafe { pg_sys::CommitTransactionCommand() });
        Ok(result)
    })
    .catch_others(|caught| {
        let message = match &caught {
            pg_sys::panic::CaughtError::PostgresError(report)
            | pg_sys::panic::CaughtError::ErrorReport(report)
            | pg_sys::panic::CaughtError::RustPanic { ereport: report, .. } => report.message().to_string(),
        };
        Err(message)
    })
    .execute()
    .inspect_err(|message| {
        unsafe { pg_sys::AbortCurrentTransaction() };
        warning!("onboarding: {what} failed: {message}");
    })
}

/// Hands this process's table statistics (rows inserted, updated, deleted) to the cumulative
/// statistics system, as a backend does whenever it goes idle: autovacuum decides from them when
/// to vacuum and analyze the queue's tables. A background worker must do it itself; without it
/// autovacuum never saw the worker's jobs, events and intake deletions, so the queue grew dead rows
/// and kept plans made on empty tables (commit -> written back went from 3 ms to 170 ms after
/// 100,000 signups). Outside a transaction; it may run on every pass of the loop. PostgreSQL
/// flushes at most once a second and tells an idle backend to come back in 10 s, forced; it also
/// judges that second by the last commit's time, which stands still while the worker idles, so
/// statistics left over are forced out here once the second has passed. Returns how soon to call
/// again while some are left.
pub fn report_table_stats() -> Option<Duration> {
    thread_local! {
        static LEFT_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LEFT_SINCE.with(|left_since| {
        let force = left_since.get().is_some_and(|since| since.elapsed() >= FLUSH_INTERVAL);
        let left = unsafe { pg_sys::pgstat_report_stat(force) } > 0;
        left_since.set(if left { Some(left_since.get().unwrap_or_else(Instant::now)) } else { None });
        left.then_some(FLUSH_INTERVAL)
    })
}

/// PGSTAT_MIN_INTERVAL: the least time between two flushes of a process's statistics.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
