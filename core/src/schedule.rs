//! When the worker's maintenance services run (src/maintenance/): each owns a schedule and asks it
//! whether it is due; the rules live here, where they are tested without PostgreSQL.

use std::time::{Duration, Instant};

/// Work done every `period` (rescue, retention, the sweep after a promotion), kept out of a
/// signup's way: not in a step a commit woke the worker for, unless a whole period overdue.
#[derive(Clone, Debug, Default)]
pub struct Periodic {
    last: Option<Instant>,
}

impl Periodic {
    /// Whether the work is due at `now` (always, before it first ran).
    pub fn due(&self, now: Instant, period: Duration, woken_by_commit: bool) -> bool {
        self.last.is_none_or(|last| {
            let since = now.saturating_duration_since(last);
            (since >= period && !woken_by_commit) || since >= 2 * period
        })
    }

    pub fn ran(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// When the work is next due in a step no commit woke (the loop's sleep ends by then).
    pub fn next_due(&self, period: Duration) -> Option<Instant> {
        self.last.map(|last| last + period)
    }
}

/// Work that says itself when it wants to run next (the events reader: when Stripe's events are
/// due to be read; the timeline note: after a failed try).
#[derive(Clone, Debug)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// Due at once.
    pub fn now(now: Instant) -> Deadline {
        Deadline { at: now }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.at
    }

    /// Due `after` from `now`.
    pub fn set(&mut self, now: Instant, after: Duration) {
        self.at = now + after;
    }

    /// Due no later than `now` (an account link was issued: a read of events is due sooner).
    pub fn bring_forward(&mut self, now: Instant) {
        self.at = self.at.min(now);
    }

    pub fn at(&self) -> Instant {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(10);

    #[test]
    fn periodic_work_runs_first_then_every_period_out_of_signups_way() {
        let start = Instant::now();
        let mut work = Periodic::default();
        assert!(work.due(start, PERIOD, true), "never ran: due even in a commit's step");
        assert_eq!(work.next_due(PERIOD), None);
        work.ran(start);
        assert_eq!(work.next_due(PERIOD), Some(start + PERIOD));
        assert!(!work.due(start + PERIOD - Duration::from_millis(1), PERIOD, false));
        assert!(work.due(start + PERIOD, PERIOD, false));
        // A commit woke the loop: a signup's step stays all signup, until a period overdue.
        assert!(!work.due(start + PERIOD, PERIOD, true));
        assert!(!work.due(start + 2 * PERIOD - Duration::from_millis(1), PERIOD, true));
        assert!(work.due(start + 2 * PERIOD, PERIOD, true));
    }

    #[test]
    fn a_deadline_moves_later_when_set_and_earlier_when_brought_forward() {
        let start = Instant::now();
        let mut deadline = Deadline::now(start);
        assert!(deadline.due(start));
        deadline.set(start, PERIOD);
        assert!(!deadline.due(start + PERIOD - Duration::from_millis(1)));
        assert!(deadline.due(start + PERIOD));
        deadline.bring_forward(start + Duration::from_secs(1));
        assert_eq!(deadline.at(), start + Duration::from_secs(1));
        deadline.bring_forward(start + Duration::from_secs(5)); // never later
        assert_eq!(deadline.at(), start + Duration::from_secs(1));
    }
}
