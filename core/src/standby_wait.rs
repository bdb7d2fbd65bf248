//! Holding work until the standbys have the commit it came from: a claim's calls wait here until
//! the WAL position where the claim's commit ends is flushed by the standbys that matter, released
//! in claim (and so WAL) order.
//!
//! Two kinds of standbys matter: the synchronous ones (waited for without limit, as PostgreSQL's
//! own commits wait for them) and the ones named for asynchronous replication, waited for up to a
//! timeout, after which the work goes ahead and says so.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A WAL position (an LSN).
pub type WalPosition = u64;

/// How far the standbys that matter have flushed WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirmed {
    /// By the synchronous standbys (`WalPosition::MAX` when none are configured).
    pub synchronous: WalPosition,
    /// By the named standbys (`WalPosition::MAX` when none are named; 0 while one is away).
    pub named: WalPosition,
}

impl Confirmed {
    /// Nothing to wait for.
    pub const EVERYTHING: Confirmed = Confirmed { synchronous: WalPosition::MAX, named: WalPosition::MAX };
}

/// Work of one commit, held until the standbys have it.
struct Held<T> {
    commit_end: WalPosition,
    since: Instant,
    work: Vec<T>,
}

/// Work released by [`StandbyWait::release`].
pub struct Released<T> {
    pub work: Vec<T>,
    /// Commits (end position, how long they waited, how much work) that went ahead after the
    /// timeout without the named standbys: a failover now could lose them.
    pub unconfirmed: Vec<(WalPosition, Duration, usize)>,
}

pub struct StandbyWait<T> {
    /// In commit order.
    held: VecDeque<Held<T>>,
}

impl<T> Default for StandbyWait<T> {
    fn default() -> Self {
        StandbyWait { held: VecDeque::new() }
    }
}

impl<T> StandbyWait<T> {
    /// Holds the work of a commit that ended at `commit_end` (nothing for no work).
    pub fn hold(&mut self, commit_end: WalPosition, work: Vec<T>, now: Instant) {
        if !work.is_empty() {
            self.held.push_back(Held { commit_end, since: now, work });
        }
    }

    /// The position the oldest held commit needs, if anything is held.
    pub fn oldest_needs(&self) -> Option<WalPosition> {
        self.held.front().map(|held| held.commit_end)
    }

    /// When the oldest held work started waiting.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.held.front().map(|held| held.since)
    }

    /// Work held.
    pub fn len(&self) -> usize {
        self.held.iter().map(|held| held.work.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Releases, oldest first, the work whose commits the standbys have (`timeout` excuses the
    /// named ones, never the synchronous ones). Stops at the first commit still waiting: later
    /// commits end later in the WAL.
    pub fn release(&mut self, confirmed: Confirmed, timeout: Option<Duration>, now: Instant) -> Released<T> {
        let mut released = Released { work: Vec::new(), unconfirmed: Vec::new() };
        while let Some(held) = self.held.front() {
            let waited = now.saturating_duration_since(held.since);
            let named_ok = held.commit_end <= confirmed.named;
            let timed_out = timeout.is_some_and(|limit| waited >= limit);
            if held.commit_end > confirmed.synchronous || !(named_ok || timed_out) {
                break;
            }
            let held = self.held.pop_front().expect("looked at just now");
            if !named_ok {
                released.unconfirmed.push((held.commit_end, waited, held.work.len()));
            }
            released.work.extend(held.work);
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(positions: &[WalPosition], now: Instant) -> StandbyWait<WalPosition> {
        let mut wait = StandbyWait::default();
        for &position in positions {
            wait.hold(position, vec![position], now);
        }
        wait
    }

    #[test]
    fn without_standbys_everything_goes_at_once() {
        let now = Instant::now();
        let mut wait = held(&[10, 20], now);
        let released = wait.release(Confirmed::EVERYTHING, None, now);
        assert_eq!(released.work, vec![10, 20]);
        assert!(released.unconfirmed.is_empty() && wait.is_empty());
    }

    #[test]
    fn work_goes_in_commit_order_as_far_as_the_standbys_have_flushed() {
        let now = Instant::now();
        let mut wait = held(&[10, 20, 30], now);
        let confirmed = Confirmed { synchronous: 20, named: WalPosition::MAX };
        assert_eq!(wait.release(confirmed, None, now).work, vec![10, 20]);
        assert_eq!((wait.len(), wait.oldest_needs()), (1, Some(30)));
        assert!(wait.release(confirmed, None, now).work.is_empty());
    }

    #[test]
    fn both_kinds_of_standby_must_have_the_commit() {
        let now = Instant::now();
        let mut wait = held(&[10], now);
        assert!(wait.release(Confirmed { synchronous: 50, named: 5 }, None, now).work.is_empty());
        assert!(wait.release(Confirmed { synchronous: 5, named: 50 }, None, now).work.is_empty());
        assert_eq!(wait.release(Confirmed { synchronous: 10, named: 10 }, None, now).work, vec![10]);
    }

    #[test]
    fn the_timeout_excuses_the_named_standbys_only_and_says_so() {
        let start = Instant::now();
        let later = start + Duration::from_secs(3);
        let mut wait = held(&[10], start);
        let timeout = Some(Duration::from_secs(2));
        // A synchronous standby behind: held whatever the timeout.
        assert!(wait.release(Confirmed { synchronous: 5, named: 0 }, timeout, later).work.is_empty());
        // Named standbys away (0): before the timeout held, after it released and reported.
        assert!(wait.release(Confirmed { synchronous: 50, named: 0 }, timeout, start).work.is_empty());
        let released = wait.release(Confirmed { synchronous: 50, named: 0 }, timeout, later);
        assert_eq!(released.work, vec![10]);
        assert_eq!(released.unconfirmed, vec![(10, Duration::from_secs(3), 1)]);
    }

    #[test]
    fn an_empty_claim_holds_nothing() {
        let now = Instant::now();
        let mut wait: StandbyWait<u8> = StandbyWait::default();
        wait.hold(10, Vec::new(), now);
        assert!(wait.is_empty() && wait.oldest_needs().is_none());
    }
}
