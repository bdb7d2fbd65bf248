//! Pacing the worker's transactions while the rate budget, not the database, is what limits it.
//!
//! Under a budget (a live key's 95/s, a test key's 24/s) the calls in flight mostly wait for
//! their slots. Claiming one job each time a call frees its place, and recording each finished
//! call on its own, then costs a claim and a record transaction per job: at 95/s that was half a
//! core of the database server, taken from the application sharing it (bench/perf line 4c), for
//! no gain, since the calls already waiting keep Stripe as busy as the budget allows.
//!
//! So while the calls waiting for a slot cover at least [`SPACING`] of the budget, claims (and
//! top-ups of the pending jobs) wait until [`SPACING`] has passed since the last one, and finished
//! calls wait up to [`SPACING`] to be recorded together. A job's commit-to-write-back grows by at
//! most two spacings then, against a budget wait of seconds; without a budget, or with too few
//! calls waiting to keep it busy, nothing waits.

use std::time::{Duration, Instant};

/// The least time between two claims, or two records, while the budget is saturated.
pub const SPACING: Duration = Duration::from_millis(50);

/// When the worker last claimed and last recorded.
#[derive(Debug, Default, Clone)]
pub struct Pacing {
    last_claim: Option<Instant>,
    last_record: Option<Instant>,
}

/// Whether `waiting_for_slot` calls keep a budget of `interval` per request busy for a spacing.
pub fn saturated(waiting_for_slot: usize, interval: Option<Duration>) -> bool {
    interval.is_some_and(|interval| interval * waiting_for_slot as u32 >= SPACING)
}

impl Pacing {
    /// When the next claim may run: now, or (saturated) a spacing after the last one.
    pub fn claim_at(&self, saturated: bool, now: Instant) -> Instant {
        Self::spaced(self.last_claim, saturated, now)
    }

    /// When finished calls may be recorded: now, or (saturated) a spacing after the last record.
    pub fn record_at(&self, saturated: bool, now: Instant) -> Instant {
        Self::spaced(self.last_record, saturated, now)
    }

    pub fn claimed(&mut self, at: Instant) {
        self.last_claim = Some(at);
    }

    pub fn recorded(&mut self, at: Instant) {
        self.last_record = Some(at);
    }

    fn spaced(last: Option<Instant>, saturated: bool, now: Instant) -> Instant {
        match last {
            Some(last) if saturated => (last + SPACING).max(now),
            _ => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Option<Duration> = Some(Duration::from_micros(10_740)); // 93/s

    #[test]
    fn saturated_once_the_waiting_calls_cover_a_spacing() {
        assert!(!saturated(4, LIVE), "4 calls are 43 ms of a 93/s budget");
        assert!(saturated(5, LIVE), "5 calls are 54 ms");
        assert!(!saturated(1000, None), "no budget: the database is the limit, never pace");
        assert!(!saturated(0, LIVE));
    }

    #[test]
    fn unsaturated_nothing_waits() {
        let now = Instant::now();
        let mut pacing = Pacing::default();
        pacing.claimed(now);
        pacing.recorded(now);
        assert_eq!(pacing.claim_at(false, now), now);
        assert_eq!(pacing.record_at(false, now), now);
    }

    #[test]
    fn saturated_claims_and_records_are_a_spacing_apart() {
        let start = Instant::now();
        let mut pacing = Pacing::default();
        assert_eq!(pacing.claim_at(true, start), start, "the first claim goes at once");
        pacing.claimed(start);
        let soon = start + Duration::from_millis(5);
        assert_eq!(pacing.claim_at(true, soon), start + SPACING);
        assert_eq!(pacing.record_at(true, soon), soon, "records are paced on their own");
        pacing.recorded(soon);
        assert_eq!(pacing.record_at(true, soon + Duration::from_millis(10)), soon + SPACING);
        let late = start + SPACING * 3;
        assert_eq!(pacing.claim_at(true, late), late, "never later than now once a spacing passed");
    }
}
