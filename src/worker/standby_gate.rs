//! Claimed calls wait here until the standbys have the claim's commit: a Stripe object made for a
//! commit that a failover then loses would belong to no profile.
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

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgrx::prelude::*;

use crate::gucs;
use crate::pg::processes;
use crate::pg::replication::{self, WalPosition, format_position};
use crate::pg::transaction::in_transaction;
use crate::worker::calls::Call;

/// The calls of one claim, held until the standbys have its commit.
struct HeldClaim {
    commit_end: WalPosition,
    since: Instant,
    calls: Vec<Call>,
}

pub struct StandbyGate {
    /// In claim (and so WAL) order.
    held: VecDeque<HeldClaim>,
    /// This worker's slot, where `onboarding.stats` reads what waits.
    slot: usize,
}

/// How far the standbys that matter have flushed WAL.
struct Confirmed {
    /// By the synchronous standbys (no limit when none are configured).
    synchronous: WalPosition,
    /// By the standbys of `onboarding.wait_for_standbys` (no limit when it is empty).
    named: WalPosition,
}

impl StandbyGate {
    pub fn new(slot: usize) -> StandbyGate {
        StandbyGate { held: VecDeque::new(), slot }
    }

    /// Takes the calls of a claim whose commit ended at `commit_end`; returns those that may start
    /// now (all of them unless standbys are to be waited for).
    pub fn admit(&mut self, commit_end: WalPosition, calls: Vec<Call>) -> Vec<Call> {
        if calls.is_empty() {
            return calls;
        }
        self.held.push_back(HeldClaim { commit_end, since: Instant::now(), calls });
        self.release()
    }

    /// The held calls whose claims the standbys now have, oldest claim first.
    pub fn release(&mut self) -> Vec<Call> {
        let Some(oldest) = self.held.front() else { return Vec::new() };
        let confirmed = confirmed_positions(oldest.commit_end);
        let timeout = gucs::standby_wait_timeout();
        let mut released = Vec::new();
        while let Some(claim) = self.held.front() {
            let synchronous_ok = claim.commit_end <= confirmed.synchronous;
            let named_ok = claim.commit_end <= confirmed.named;
            let timed_out = timeout.is_some_and(|limit| claim.since.elapsed() >= limit);
            if !synchronous_ok || !(named_ok || timed_out) {
                break;
            }
            let claim = self.held.pop_front().expect("looked at just now");
            if !named_ok {
                warning!(
                    "onboarding: {} call(s) go ahead after waiting {:?} for the standbys of onboarding.wait_for_standbys \
                     to reach {}: a failover now could leave their Stripe objects without a profile",
                    claim.calls.len(),
                    claim.since.elapsed(),
                    format_position(claim.commit_end)
                );
            }
            released.extend(claim.calls);
        }
        self.publish();
        released
    }

    /// Calls held here.
    pub fn held_calls(&self) -> usize {
        self.held.iter().map(|claim| claim.calls.len()).sum()
    }

    fn publish(&self) {
        let since = self.held.front().map_or(0, |claim| unix_millis_at(claim.since));
        processes::publish_standby_wait(self.slot, self.held_calls() as u32, since);
    }
}

/// Where the standbys that matter stand. `wanted` spares the `pg_stat_replication` read when the
/// synchronous standbys alone decide (or nothing is configured).
fn confirmed_positions(wanted: WalPosition) -> Confirmed {
    let synchronous = if replication::synchronous_standbys_configured() {
        replication::synchronous_standbys_flushed()
    } else {
        WalPosition::MAX
    };
    let names = gucs::wait_for_standbys();
    let named = if names.is_empty() {
        WalPosition::MAX
    } else if synchronous < wanted {
        0 // not worth a read: the synchronous standbys hold the oldest claim anyway
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
    let ago = instant.elapsed();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    now.saturating_sub(ago).as_millis() as i64
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
