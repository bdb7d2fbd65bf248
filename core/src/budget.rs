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
    /// A budget under which no one-second window ever holds more than `ceiling` requests, bursts
    /// of `burst` included: the sustained rate is `ceiling - burst + 1`, less 2 % for the jitter
    /// between our clock and Stripe's counting. `None` when `ceiling` is 0: no budget.
    pub fn new(ceiling: u32, burst: u32) -> Option<Gcra> {
        if ceiling == 0 {
            return None;
        }
        let burst = burst.clamp(1, ceiling);
        let sustained = f64::from(ceiling - burst + 1) * 0.98;
        Some(Gcra { interval: Duration::from_secs_f64(1.0 / sustained), burst })
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
    fn no_second_ever_holds_more_than_the_ceiling() {
        for (ceiling, burst) in [(100, 1), (100, 10), (25, 5), (95, 5)] {
            let gcra = Gcra::new(ceiling, burst).unwrap();
            let times = send_times(&gcra, 1000, Duration::from_secs(5));
            for (i, t) in times.iter().enumerate() {
                let in_window = times[i..].iter().take_while(|u| **u < *t + Duration::from_secs(1)).count();
                assert!(in_window <= ceiling as usize, "{in_window} requests in one second under {ceiling}/{burst}");
            }
            let rate = 999.0 / (*times.last().unwrap() - times[0]).as_secs_f64();
            let sustained = f64::from(ceiling - burst + 1);
            assert!(rate > 0.97 * sustained && rate < sustained, "{rate}/s under {ceiling}/{burst}");
        }
    }

    #[test]
    fn a_quiet_budget_allows_a_burst_then_paces() {
        let gcra = Gcra::new(54, 5).unwrap(); // sustained 49/s
        let times = send_times(&gcra, 7, Duration::from_secs(100));
        assert!(times[..5].iter().all(|t| *t == Duration::from_secs(100)), "{times:?}");
        assert_eq!(times[5] - times[0], gcra.interval);
        assert_eq!(times[6] - times[0], gcra.interval * 2);
    }

    #[test]
    fn a_429_pauses_everyone_then_the_rate_recovers() {
        let gcra = Gcra::new(50, 1).unwrap();
        let now = Duration::from_secs(10);
        let tat = gcra.penalize(Duration::ZERO, now);
        let (tat, wait) = gcra.reserve(tat, now);
        assert_eq!(wait, RATE_LIMITED_PAUSE);
        let (_, next) = gcra.reserve(tat, now + RATE_LIMITED_PAUSE);
        assert_eq!(next, gcra.interval);
        assert!(Gcra::new(0, 10).is_none());
    }
}
