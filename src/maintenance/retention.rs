//! Retention: finished jobs and their events are deleted after `onboarding.retention`
//! (`onboarding.prune()`; dead and orphaned jobs are kept until dealt with).

use pgrx::prelude::*;

/// Retention, a small batch at a time (onboarding.retention), in the caller's transaction.
pub fn prune() {
    Spi::get_one::<i64>("SELECT onboarding.prune()").unwrap_or_else(|e| error!("onboarding: pruning: {e}"));
}
