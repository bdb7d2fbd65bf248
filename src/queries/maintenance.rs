//! Maintenance's statements: rescue and retention (sql/maintenance.sql), and the Stripe snapshot
//! behind the audits, page by page.

use pgrx::JsonB;
use pgrx::prelude::*;
use serde_json::Value;

type Result<T> = std::result::Result<T, pgrx::spi::Error>;

/// Requeues `running` jobs whose worker exited or that overran `lease_secs`
/// (`onboarding._requeue_abandoned`); returns how many.
pub fn requeue_abandoned(max_attempts: i32, lease_secs: f64) -> Result<i32> {
    Spi::get_one_with_args::<i32>(
        "SELECT onboarding._requeue_abandoned($1, make_interval(secs => $2))",
        &[max_attempts.into(), lease_secs.into()],
    )
    .map(Option::unwrap_or_default)
}

/// One batch of retention (`onboarding.prune()`); returns how many jobs it deleted.
pub fn prune() -> Result<i64> {
    Spi::get_one::<i64>("SELECT onboarding.prune()").map(Option::unwrap_or_default)
}

/// Starts a snapshot; returns its id.
pub fn snapshot_begin() -> Result<Option<i64>> {
    Spi::get_one::<i64>("SELECT onboarding._snapshot_begin()")
}

/// Stores a page of `object`s (`customer`, `account`): `[{id, user_id, email}]`.
pub fn snapshot_add(snapshot: i64, object: &str, rows: Vec<Value>) -> Result<()> {
    Spi::run_with_args(
        "SELECT onboarding._snapshot_add($1, $2, $3)",
        &[snapshot.into(), object.into(), JsonB(Value::Array(rows)).into()],
    )
}

/// Finishes a snapshot; `accounts_not_listed_why`: Stripe refused to list accounts, and why.
pub fn snapshot_finish(snapshot: i64, accounts_not_listed_why: Option<&str>) -> Result<()> {
    if let Some(why) = accounts_not_listed_why {
        Spi::run_with_args(
            "UPDATE onboarding.stripe_snapshots SET accounts_listed = false, accounts_not_listed_why = $2
              WHERE id = $1",
            &[snapshot.into(), why.into()],
        )?;
    }
    Spi::run_with_args("SELECT onboarding._snapshot_finish($1)", &[snapshot.into()])
}

/// Progress of the snapshot being taken, as committed page by page: "3 pages: 250 customers, …".
pub fn snapshot_progress() -> Result<Option<String>> {
    Spi::get_one::<String>(
        "SELECT format('%s pages: %s customers, %s accounts', pages, customers, accounts)
           FROM onboarding.stripe_snapshots WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1",
    )
}
