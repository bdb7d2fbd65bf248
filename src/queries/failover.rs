//! The statements of the failover service (sql/failover.sql): the WAL timeline noted, Stripe's
//! objects checked after a promotion, the sweep recorded.

use pgrx::JsonB;
use pgrx::prelude::*;
use serde_json::Value;

type Result<T> = std::result::Result<T, pgrx::spi::Error>;

/// Notes the timeline this worker runs on; returns, as Unix seconds, from when a sweep must read
/// Stripe's objects (None: no sweep due).
pub fn note_timeline(timeline: i32) -> Result<Option<f64>> {
    Spi::get_one_with_args::<f64>(
        "SELECT extract(epoch FROM onboarding._note_timeline($1))::float8",
        &[timeline.into()],
    )
}

/// Checks a page of Stripe `object`s (`[{id, user_id}]`) made since the sweep's start; returns
/// how many were orphans, queued for deletion.
pub fn check_after_failover(object: &str, page: Vec<Value>) -> Result<i32> {
    Spi::get_one_with_args::<i32>(
        "SELECT onboarding._check_after_failover($1, $2)",
        &[object.into(), JsonB(Value::Array(page)).into()],
    )
    .map(Option::unwrap_or_default)
}

/// Records the sweep of `timeline` done.
pub fn swept(timeline: i32, checked: i32, orphans: i32) -> Result<()> {
    Spi::run_with_args(
        "SELECT onboarding._failover_swept($1, $2, $3)",
        &[timeline.into(), checked.into(), orphans.into()],
    )
}
