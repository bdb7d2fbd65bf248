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
//! retry). Those transactions tell the workers at commit (`_wake_worker_after_commit` bumps a
//! shared rescan count), and the next claim scans every lane from the front. What nothing
//! announces (a prepared transaction committed later, a pending row another session held while
//! a claim skipped it) is found by a periodic full scan, at most every `max(interval, 20 x what
//! the last full scan took)`: rescans never take more than about a twentieth of the worker.
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
    /// The shared rescan count as of the last full scan.
    rescans_seen: u64,
    last_full_scan: Option<Instant>,
    full_scan_took: Duration,
}

impl ClaimCursor {
    /// Where the next claim starts. `rescans` is the shared count of announced early jobs;
    /// `interval` how often to scan from the front when nothing is announced. A full scan is
    /// started (and the cursors dropped) when something was announced or the interval has
    /// passed, and the last full scan is at least 20 times its own duration ago.
    pub fn scan_from(&mut self, rescans: u64, interval: Duration, now: Instant) -> ScanFrom {
        let due = match self.last_full_scan {
            None => true,
            Some(at) => {
                let since = now.saturating_duration_since(at);
                let spaced = since >= self.full_scan_took * FULL_SCAN_SHARE;
                spaced && (rescans != self.rescans_seen || since >= interval)
            }
        };
        if due {
            self.after = [None; LANES];
            self.rescans_seen = rescans;
            self.last_full_scan = Some(now);
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
        let first = cursor.scan_from(0, INTERVAL, t0);
        assert!(ClaimCursor::is_full(&first));
        cursor.claimed(0, key(100, 7));
        cursor.claimed(0, key(100, 5)); // claims come back in any order: the cursor keeps the last
        cursor.claimed(3, key(50, 9));
        let next = cursor.scan_from(0, INTERVAL, t0 + Duration::from_millis(1));
        assert_eq!(next, [Some(key(100, 7)), None, None, Some(key(50, 9))]);
        assert!(!ClaimCursor::is_full(&next));
    }

    #[test]
    fn an_announced_early_job_starts_a_full_scan() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        cursor.scan_from(0, INTERVAL, t0);
        cursor.full_scan_took(Duration::from_micros(200));
        cursor.claimed(0, key(100, 7));
        let announced = cursor.scan_from(1, INTERVAL, t0 + Duration::from_millis(5));
        assert!(ClaimCursor::is_full(&announced));
        cursor.claimed(0, key(200, 8));
        // The same count again: no new announcement, the cursor holds.
        assert_eq!(cursor.scan_from(1, INTERVAL, t0 + Duration::from_millis(6))[0], Some(key(200, 8)));
    }

    #[test]
    fn without_announcements_the_front_is_scanned_again_after_the_interval() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        cursor.scan_from(0, INTERVAL, t0);
        cursor.claimed(1, key(1, 1));
        assert!(!ClaimCursor::is_full(&cursor.scan_from(0, INTERVAL, t0 + INTERVAL / 2)));
        assert!(ClaimCursor::is_full(&cursor.scan_from(0, INTERVAL, t0 + INTERVAL)));
    }

    #[test]
    fn full_scans_are_spaced_by_twenty_times_their_cost() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        cursor.scan_from(0, INTERVAL, t0);
        // Under a held snapshot the front is full of dead entries: a full scan took 50 ms.
        cursor.full_scan_took(Duration::from_millis(50));
        cursor.claimed(0, key(100, 7));
        // Announcements keep coming (say, retries): the cursor holds for 1 s, then a full scan.
        assert!(!ClaimCursor::is_full(&cursor.scan_from(1, INTERVAL, t0 + Duration::from_millis(999))));
        assert!(ClaimCursor::is_full(&cursor.scan_from(2, INTERVAL, t0 + Duration::from_millis(1000))));
    }

    #[test]
    fn an_exhausted_claim_moves_every_lane_to_its_start_time() {
        let mut cursor = ClaimCursor::default();
        let t0 = Instant::now();
        cursor.scan_from(0, INTERVAL, t0);
        cursor.claimed(0, key(100, 7));
        cursor.claimed(2, key(900, 3)); // keys never go back
        cursor.exhausted(500);
        let next = cursor.scan_from(0, INTERVAL, t0 + Duration::from_millis(1));
        let past = Some(key(500, i64::MAX));
        assert_eq!(next, [past, past, Some(key(900, 3)), past]);
    }

    #[test]
    fn an_unknown_lane_is_ignored() {
        let mut cursor = ClaimCursor::default();
        cursor.scan_from(0, INTERVAL, Instant::now());
        cursor.claimed(LANES, key(1, 1));
        assert!(ClaimCursor::is_full(&cursor.current()));
    }
}
