//! Transactions of a background worker, which has no statement loop to open them for it.

use std::panic::AssertUnwindSafe;

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
