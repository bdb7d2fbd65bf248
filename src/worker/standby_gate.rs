//! Claimed calls wait here until the standbys have the claim's commit: a Stripe object made for a
//! commit that a failover then loses would belong to no profile. (The holding itself is core's
//! `standby_wait`; this is where the positions come from.)
//!
//! A claim's commit record comes after every profile commit the claim read (it saw them committed)
//! and carries the claim itself, so once the standbys have flushed WAL to its end, a promoted
//! standby knows the profiles, the jobs and their idempotency keys. Which standbys:
//! - the synchronous ones, whenever `synchronous_standby_names` is set: the workers commit with
//!   `synchronous_commit = on`, so the claim's commit normally waited for them already, but a
//!   cancelled wait returns with only a WARNING, so the position is checked, not trusted;
//! - those named in `onboarding.wait_for_standbys`, for asynchronous replication, up to
//!   `onboarding.standby_wait_timeout`.
//!
//! Without either, calls start at once (what an asynchronous failover can then leave behind is
//! swept after promotion: maintenance/failover.rs).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onboarding_core::standby_wait::{Confirmed, StandbyWait, WalPosition};
use pgrx::prelude::*;

use crate::gucs;
use crate::pg::processes;
use crate::pg::replication::{self, format_position};
use crate::pg::transaction::in_transaction;
use crate::worker::calls::Call;

pub struct StandbyGate {
    held: StandbyWait<Call>,
    /// This worker's slot, where `onboarding.stats` reads what waits.
    slot: usize,
}

impl StandbyGate {
    pub fn new(slot: usize) -> StandbyGate {
        StandbyGate { held: StandbyWait::default(), slot }
    }

    /// Takes the calls of a claim whose commit ended at `commit_end`; returns those that may start
    /// now (all of them unless standbys are to be waited for).
    pub fn admit(&mut self, commit_end: WalPosition, calls: Vec<Call>) -> Vec<Call> {
        self.held.hold(commit_end, calls, Instant::now());
        self.release()
    }

    /// The held calls whose claims the standbys now have, oldest claim first.
    pub fn release(&mut self) -> Vec<Call> {
        let Some(needed) = self.held.oldest_needs() else { return Vec::new() };
        let released = self.held.release(confirmed(needed), gucs::standby_wait_timeout(), Instant::now());
        for (commit_end, waited, calls) in released.unconfirmed {
            warning!(
                "onboarding: {calls} call(s) go ahead after waiting {waited:?} for the standbys of \
                 onboarding.wait_for_standbys to reach {}: a failover now could leave their Stripe objects \
                 without a profile",
                format_position(commit_end)
            );
        }
        let since = self.held.waiting_since().map_or(0, unix_millis_at);
        processes::publish_standby_wait(self.slot, self.held.len() as u32, since);
        released.work
    }

    /// Calls held here.
    pub fn held_calls(&self) -> usize {
        self.held.len()
    }
}

/// Where the standbys that matter stand. `needed` spares the `pg_stat_replication` read while the
/// synchronous standbys hold the oldest claim anyway.
fn confirmed(needed: WalPosition) -> Confirmed {
    let synchronous = if replication::synchronous_standbys_configured() {
        replication::synchronous_standbys_flushed()
    } else {
        WalPosition::MAX
    };
    let names = gucs::wait_for_standbys();
    let named = if names.is_empty() {
        WalPosition::MAX
    } else if synchronous < needed {
        0
    } else {
        // None: a named standby is not connected, so it has nothing.
        in_transaction("reading how far the standbys are", || replication::named_standbys_flushed(&names))
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or(0)
    };
    Confirmed { synchronous, named }
}

fn unix_millis_at(instant: Instant) -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    now.saturating_sub(instant.elapsed()).as_millis() as i64
}

/// Calls waiting for standbys in this database's workers, for `onboarding.stats`: how many, and
/// for how long the longest has waited.
#[pg_extern(name = "_standby_wait", stable, parallel_safe)]
fn standby_wait() -> TableIterator<'static, (name!(calls, i64), name!(waiting_seconds, Option<f64>))> {
    if !processes::shared_memory_ready() {
        return TableIterator::once((0, None));
    }
    let (calls, since) = processes::standby_waits_here();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as i64;
    let waited = since.map(|since| (now - since).max(0) as f64 / 1000.0);
    TableIterator::once((calls as i64, waited))
}
