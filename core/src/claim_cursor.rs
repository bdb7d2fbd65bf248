//! Where the worker's claims start in each priority lane.
//!
//! A claimed job leaves a dead entry at the front of the pending-jobs index (`jobs_due`, ordered
//! by lane, run_at, id) until VACUUM removes it, and VACUUM cannot while any snapshot older than
//! it is held (a long report, a `pg_dump`, a session idle in transaction). A claim that scans
//! from the front reads every one of them, every time: the queue slows down with its own history.
//! The cursor remembers the last key claimed in each lane and the next claim starts after it.
//!
//! A job can sort before a cursor only if it became pending in a transaction that started
//! earlier, or under an earlier key (an enqueue, a retry by hand, a requeue, another worker's
//! retry). Every job such a transaction makes pending is keyed at or after its start, and it
//! announces that start to the workers at commit (`_wake_worker_after_commit`): the next claim
//! looks again in every lane from there, past only the dead entries of claims made since (not
//! the whole history: a backfill's 100,000 claimed jobs once made each announced rescan cost
//! most of a second, spaced 16 s apart, and an early signup waited for it). What nothing announces
//! (a prepared transaction committed later, a pending row another session held while a claim
//! skipped it) is found by a periodic full scan, at most every `max(interval, 20 x what the last
//! full scan took)`: full scans never take more than about a twentieth of the worker.
//! The worker's own new jobs (promoted inserts) are keyed by the claiming transaction's start
//! time and a new id, so they always sort after its cursors.

use std::time::{Duration, Instant};

/// Priority lanes (`jobs.lane`): 0 signups and requests, 1 retries, 2 email syncs and
/// compensation, 3 backfill and reconcile.
pub const LANES: usize = 4;

/// A job's place in its lane: `run_at` (PostgreSQL microseconds) then `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobKey {
    pub run_at: i64,
    pub id: i64,
}

/// Where a claim starts scanning, per lane: after this key, or (None) from the front.
pub type ScanFrom = [Option<JobKey>; LANES];

/// A full scan costs at most this share of the time between full scans.
const FULL_SCAN_SHARE: u32 = 20;

#[derive(Debug, Default)]
pub struct ClaimCursor {
    after: ScanFrom,
    last_full_scan: Option<Instant>,
    full_scan_took: Duration,
}

impl ClaimCursor {
    /// Where the next claim starts. `announced_from`: the earliest start (PostgreSQL
    /// microseconds) of the transactions announced since the last claim, whose jobs may sort
    /// before the cursors; every lane then starts at it at the latest. `interval`: how often to
    /// scan from the front for what nothing announces, if the last full scan is at least 20 times
    /// its own duration ago.
    pub fn scan_from(&mut self, announced_from: Option<i64>, interval: Duration, now: Instant) -> ScanFrom {
        let full_scan_due = match self.last_full_scan {
            None => true,
            Some(at) => {
                let since = now.saturating_duration_since(at);
                since >= interval && since >= self.full_scan_took * FULL_SCAN_SHARE
            }
        };
        if full_scan_due {
            self.after = [None; LANES];
            self.last_full_scan = Some(now);
        } else if let Some(from) = announced_from {
            // Keys are (run_at, id) with ids from 1: (from, 0) sorts before every job keyed at `from`.
            let before = JobKey { run_at: from, id: 0 };
            for after in self.after.iter_mut().flatten() {
                *after = (*after).min(before);
            }
        }
        self.after
    }

    /// Whether the scan [`scan_from`](Self::scan_from) last returned was a full one.
    pub fn is_full(scan: &ScanFrom) -> bool {
        scan.iter().all(Option::is_none)
    }

    /// Records what a full scan took (the claim's statement), which spaces the next one.
    pub fn full_scan_took(&mut self, took: Duration) {
        self.full_scan_took = took;
    }

    /// A job was claimed in `lane` under `key`: later claims in that lane start after it.
    pub fn claimed(&mut self, lane: usize, key: JobKey) {
        if let Some(after) = self.after.get_mut(lane) {
            *after = Some(after.map_or(key, |k| k.max(key)));
        }
    }

    /// A claim found fewer due jobs than it had room for, in every lane: nothing pending sorted
    /// before `as_of` (its transaction's start, PostgreSQL microseconds) that it could see. Later
    /// claims start there, past the dead entries of jobs claimed before it (an idle worker's claim
    /// would otherwise scan every quiet lane from the front).
    pub fn exhausted(&mut self, as_of: i64) {
        let past = JobKey { run_at: as_of, id: i64::MAX };
        for after in &mut self.after {
            *after = Some(after.map_or(past, |k| k.max(past)));
        }
    }

    /// Where the lanes stand now (for the next-due look-up after a claim).
    pub fn current(&self) -> ScanFrom {
        self.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    fn key(run_at: i64, id: i64) -> JobKey {
        JobKey { run_at, id }
    }

    #[test]
    fn the_first_claim_scans_from_the_front_and_later_ones_after_the_last_claimed_key() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        let first = cursor.scan_from(None, INTERVAL, t0);
        assert!(ClaimCursor::is_full(&first));
        cursor.claimed(0, key(100, 7));
        cursor.claimed(0, key(100, 5)); // claims come back in any order: the cursor keeps the last
        cursor.claimed(3, key(50, 9));
        let next = cursor.scan_from(None, INTERVAL, t0 + Duration::from_millis(1));
        assert_eq!(next, [Some(key(100, 7)), None, None, Some(key(50, 9))]);
        assert!(!ClaimCursor::is_full(&next));
    }

    #[test]
    fn an_announced_transaction_moves_every_lane_back_to_its_start_and_no_further() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        cursor.scan_from(None, INTERVAL, t0);
        cursor.full_scan_took(Duration::from_millis(800)); // a front full of dead entries
        cursor.claimed(0, key(100, 7));
        cursor.claimed(3, key(50, 9));
        // A transaction that started at 60 made jobs pending: lane 0 looks again from there at
        // once (no full scan, however costly those are), lane 3 is already before it.
        let announced = cursor.scan_from(Some(60), INTERVAL, t0 + Duration::from_millis(5));
        assert_eq!(announced, [Some(key(60, 0)), None, None, Some(key(50, 9))]);
        cursor.claimed(0, key(60, 12));
        cursor.claimed(0, key(200, 8));
        // Nothing new announced: the cursor holds.
        assert_eq!(cursor.scan_from(None, INTERVAL, t0 + Duration::from_millis(6))[0], Some(key(200, 8)));
    }

    #[test]
    fn without_announcements_the_front_is_scanned_again_after_the_interval() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        cursor.scan_from(None, INTERVAL, t0);
        cursor.claimed(1, key(1, 1));
        assert!(!ClaimCursor::is_full(&cursor.scan_from(None, INTERVAL, t0 + INTERVAL / 2)));
        assert!(ClaimCursor::is_full(&cursor.scan_from(None, INTERVAL, t0 + INTERVAL)));
    }

    #[test]
    fn full_scans_are_spaced_by_twenty_times_their_cost() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        cursor.scan_from(None, INTERVAL, t0);
        // Under a held snapshot the front is full of dead entries: a full scan took 1 s.
        cursor.full_scan_took(Duration::from_secs(1));
        cursor.claimed(0, key(100, 7));
        assert!(!ClaimCursor::is_full(&cursor.scan_from(None, INTERVAL, t0 + Duration::from_secs(19))));
        assert!(ClaimCursor::is_full(&cursor.scan_from(None, INTERVAL, t0 + Duration::from_secs(20))));
    }

    #[test]
    fn an_exhausted_claim_moves_every_lane_to_its_start_time() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        cursor.scan_from(None, INTERVAL, t0);
        cursor.claimed(0, key(100, 7));
        cursor.claimed(2, key(900, 3)); // keys never go back
        cursor.exhausted(500);
        let next = cursor.scan_from(None, INTERVAL, t0 + Duration::from_millis(1));
        let past = Some(key(500, i64::MAX));
        assert_eq!(next, [past, past, Some(key(900, 3)), past]);
    }

    #[test]
    fn an_unknown_lane_is_ignored() {
        let mut cursor = ClaimCursor::default();
        cursor.scan_from(None, INTERVAL, Instant::now());
        cursor.claimed(LANES, key(1, 1));
        assert!(ClaimCursor::is_full(&cursor.current()));
    }
}
