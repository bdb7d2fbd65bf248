//! The client-side rate budget: never send Stripe more than `rate` requests per second (with a
//! small burst), across every worker using the same key, so its 429s are never tripped.
//!
//! GCRA (the "generic cell rate algorithm"): a single number, the theoretical arrival time (TAT)
//! of the next request, says when it may go. Each request reserves a slot by moving the TAT one
//! interval later and waits until its slot. One number means the state fits in one atomic in
//! shared memory, updated with compare-and-swap by every worker (see the extension's wake.rs).

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gcra {
    /// Time between requests at the sustained rate.
    pub interval: Duration,
    /// How many requests may go back to back after a quiet spell.
    pub burst: u32,
}

/// When a 429 arrives anyway, everyone pauses this long (Stripe's advice: back off about 1 s).
pub const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(1);

impl Gcra {
    /// `None` when `per_second` is 0: no budget.
    pub fn new(per_second: f64, burst: u32) -> Option<Gcra> {
        (per_second > 0.0).then(|| Gcra { interval: Duration::from_secs_f64(1.0 / per_second), burst: burst.max(1) })
    }

    /// Given the stored TAT and the time now (both on one monotonic clock), returns the new TAT
    /// and how long this request must wait before it is sent.
    pub fn reserve(&self, tat: Duration, now: Duration) -> (Duration, Duration) {
        let tat = tat.max(now);
        let tolerance = self.interval * (self.burst - 1);
        let wait = tat.saturating_sub(tolerance).saturating_sub(now);
        (tat + self.interval, wait)
    }

    /// After a 429: nobody sends before `now + RATE_LIMITED_PAUSE`.
    pub fn penalize(&self, tat: Duration, now: Duration) -> Duration {
        tat.max(now + RATE_LIMITED_PAUSE + self.interval * (self.burst - 1))
    }
}

/// A monotonic clock shared by every process on the machine (CLOCK_MONOTONIC).
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `n` requests as fast as the budget allows; returns their send times.
    fn send_times(gcra: &Gcra, n: usize, start: Duration) -> Vec<Duration> {
        let mut tat = Duration::ZERO;
        (0..n)
            .map(|_| {
                let (next, wait) = gcra.reserve(tat, start);
                tat = next;
                start + wait
            })
            .collect()
    }

    #[test]
    fn sustained_rate_never_exceeds_the_budget_in_any_second() {
        let gcra = Gcra::new(100.0, 10).unwrap();
        let times = send_times(&gcra, 1000, Duration::from_secs(5));
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < *t + Duration::from_secs(1)).count();
            assert!(in_window <= 100 + 10, "{in_window} requests in the second after request {i}");
        }
        let span = *times.last().unwrap() - times[0];
        assert!((9.8..=10.0).contains(&span.as_secs_f64()), "1000 requests at 100/s took {span:?}");
    }

    #[test]
    fn a_quiet_budget_allows_a_burst_then_paces() {
        let gcra = Gcra::new(10.0, 5).unwrap();
        let times = send_times(&gcra, 7, Duration::from_secs(100));
        assert!(times[..5].iter().all(|t| *t == Duration::from_secs(100)), "{times:?}");
        assert_eq!(times[5] - times[0], Duration::from_millis(100));
        assert_eq!(times[6] - times[0], Duration::from_millis(200));
    }

    #[test]
    fn a_429_pauses_everyone_then_the_rate_recovers() {
        let gcra = Gcra::new(50.0, 1).unwrap();
        let now = Duration::from_secs(10);
        let tat = gcra.penalize(Duration::ZERO, now);
        let (tat, wait) = gcra.reserve(tat, now);
        assert_eq!(wait, RATE_LIMITED_PAUSE);
        let (_, next) = gcra.reserve(tat, now + RATE_LIMITED_PAUSE);
        assert_eq!(next, Duration::from_millis(20));
        assert!(Gcra::new(0.0, 10).is_none());
    }
}
