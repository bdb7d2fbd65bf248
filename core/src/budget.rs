//! The client-side rate budget: never send Stripe more than `rate` requests per second (with a
//! small burst), across every worker using the same key, so its 429s are never tripped.
//!
//! GCRA (the "generic cell rate algorithm"): a single number, the theoretical arrival time (TAT)
//! of the next request, says when it may go. A request about to be sent takes a slot by moving
//! the TAT one interval on, or learns how long to wait before trying again. One number means the state fits in one atomic in
//! shared memory, updated with compare-and-swap by every worker (see the extension's rate_budget.rs).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::endpoint::Endpoint;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gcra {
    /// Time between requests at the sustained rate.
    pub interval: Duration,
    /// How many requests may go back to back after a quiet spell.
    pub burst: u32,
}

/// How early a slot may be taken: the resolution of the timers that wait for slots.
pub const TIMER_SLACK: Duration = Duration::from_millis(1);

/// How late a request may go and still count as sent in its slot (a timer fired late, the
/// thread was descheduled).
pub const LATE_SLACK: Duration = Duration::from_millis(5);

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

    /// Takes a slot if one is open at `now` (both on one monotonic clock): returns the new TAT,
    /// or how long until a slot opens. Slots are taken at the moment of sending, never reserved
    /// ahead: a request delayed after its slot (say, while the worker was in a transaction)
    /// would otherwise go out bunched with the next ones.
    ///
    /// Timers fire on millisecond ticks, early or late: a slot may be taken up to [`TIMER_SLACK`]
    /// before it opens, and a request up to [`LATE_SLACK`] late keeps its slot instead of pushing
    /// the next one back. Neither accumulates (the TAT moves on by whole intervals) and the rate's
    /// 2 % margin (20 ms in every second) covers both.
    pub fn acquire(&self, tat: Duration, now: Duration) -> Result<Duration, Duration> {
        let tolerance = self.interval * (self.burst - 1);
        let opens = tat.saturating_sub(tolerance);
        if opens > now + TIMER_SLACK {
            return Err(opens - now);
        }
        let on_time = now <= tat + LATE_SLACK;
        Ok(if on_time { tat } else { now } + self.interval)
    }

    /// After a 429: nobody sends before `now + RATE_LIMITED_PAUSE`.
    pub fn penalize(&self, tat: Duration, now: Duration) -> Duration {
        tat.max(now + RATE_LIMITED_PAUSE + self.interval * (self.burst - 1))
    }
}

/// Every budget a request must fit, as Stripe publishes its limits: all requests together
/// (`global`), each endpoint apart (`per_endpoint`: `POST /v1/customers` is one, `GET
/// /v1/customers/{id}` another), and search (`search`, instead of the per-endpoint one). `None`:
/// that limit is not kept.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Budgets {
    pub global: Option<Gcra>,
    pub per_endpoint: Option<Gcra>,
    pub search: Option<Gcra>,
}

impl Budgets {
    /// The budget of `endpoint`'s own limit.
    pub fn of_endpoint(&self, endpoint: Endpoint) -> Option<Gcra> {
        if endpoint.is_search() { self.search } else { self.per_endpoint }
    }

    /// No limit is kept at all.
    pub fn is_unlimited(&self) -> bool {
        self.global.is_none() && self.per_endpoint.is_none() && self.search.is_none()
    }
}

/// What lets each request of a client go (see [`crate::stripe::StripeClient::admitted_by`]): it
/// waits until the request fits every budget that applies, and hears of Stripe's 429s. The
/// extension keeps its budgets in shared memory, for every worker together.
pub trait Admission: Send + Sync {
    /// Waits until a request to `endpoint` may be sent now, its slots taken.
    fn admit(&self, endpoint: Endpoint) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Stripe answered a request to `endpoint` with 429 anyway.
    fn rate_limited(&self, endpoint: Endpoint);
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

    /// Sends `n` requests as fast as the budget allows, each `delay(i)` after its slot opened;
    /// returns their send times.
    fn send_times(gcra: &Gcra, n: usize, start: Duration, delay: impl Fn(usize) -> Duration) -> Vec<Duration> {
        let mut tat = Duration::ZERO;
        let mut now = start;
        (0..n)
            .map(|i| {
                loop {
                    match gcra.acquire(tat, now) {
                        Ok(next) => {
                            tat = next;
                            break now;
                        }
                        Err(wait) => now += wait + delay(i),
                    }
                }
            })
            .collect()
    }

    fn most_in_one_second(times: &[Duration]) -> usize {
        (0..times.len())
            .map(|i| times[i..].iter().take_while(|u| **u < times[i] + Duration::from_secs(1)).count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_second_ever_holds_more_than_the_ceiling() {
        for (ceiling, burst) in [(100, 1), (100, 10), (25, 5), (95, 5)] {
            let gcra = Gcra::new(ceiling, burst).unwrap();
            let times = send_times(&gcra, 1000, Duration::from_secs(5), |_| Duration::ZERO);
            let most = most_in_one_second(&times);
            assert!(most <= ceiling as usize, "{most} requests in one second under {ceiling}/{burst}");
            let rate = 999.0 / (*times.last().unwrap() - times[0]).as_secs_f64();
            let sustained = f64::from(ceiling - burst + 1);
            assert!(rate > 0.97 * sustained && rate < sustained, "{rate}/s under {ceiling}/{burst}");
        }
    }

    #[test]
    fn late_senders_never_bunch_up() {
        // Every third request is held up 25 ms after its slot opened (the worker was busy): the
        // ones behind it must not catch up by going out back to back.
        let gcra = Gcra::new(100, 1).unwrap();
        let delay = |i: usize| if i % 3 == 0 { Duration::from_millis(25) } else { Duration::ZERO };
        let times = send_times(&gcra, 500, Duration::from_secs(5), delay);
        let closest = times.windows(2).map(|w| w[1] - w[0]).min().unwrap();
        assert!(closest + TIMER_SLACK >= gcra.interval, "two requests {closest:?} apart");
        assert!(most_in_one_second(&times) <= 100);
    }

    #[test]
    fn timer_jitter_neither_breaks_the_ceiling_nor_costs_the_rate() {
        // Every wake-up up to 3 ms late, in a fixed pseudo-random pattern.
        for (ceiling, burst) in [(100, 1), (100, 5), (25, 1)] {
            let gcra = Gcra::new(ceiling, burst).unwrap();
            let jitter = |i: usize| Duration::from_micros((i as u64 * 7919) % 3000);
            let times = send_times(&gcra, 2000, Duration::from_secs(5), jitter);
            let most = most_in_one_second(&times);
            assert!(most <= ceiling as usize, "{most} requests in one second under {ceiling}/{burst}");
            let rate = 1999.0 / (*times.last().unwrap() - times[0]).as_secs_f64();
            let sustained = f64::from(ceiling - burst + 1) * 0.98;
            assert!(rate > 0.97 * sustained, "{rate}/s under {ceiling}/{burst} (sustained {sustained}/s)");
        }
    }

    #[test]
    fn a_quiet_budget_allows_a_burst_then_paces() {
        let gcra = Gcra::new(54, 5).unwrap(); // sustained 49/s
        let times = send_times(&gcra, 7, Duration::from_secs(100), |_| Duration::ZERO);
        assert!(times[..5].iter().all(|t| *t == Duration::from_secs(100)), "{times:?}");
        assert_eq!(times[5] - times[0], gcra.interval);
        assert_eq!(times[6] - times[0], gcra.interval * 2);
    }

    #[test]
    fn a_429_pauses_everyone_then_the_rate_recovers() {
        let gcra = Gcra::new(50, 1).unwrap();
        let now = Duration::from_secs(10);
        let tat = gcra.penalize(Duration::ZERO, now);
        assert_eq!(gcra.acquire(tat, now), Err(RATE_LIMITED_PAUSE));
        assert!(gcra.acquire(tat, now + RATE_LIMITED_PAUSE - TIMER_SLACK).is_ok(), "a timer tick early is on time");
        let later = now + RATE_LIMITED_PAUSE;
        let tat = gcra.acquire(tat, later).expect("a slot once the pause is over");
        assert_eq!(gcra.acquire(tat, later), Err(gcra.interval));
        assert!(gcra.acquire(tat, later + gcra.interval / 2).is_err(), "more than a tick early");
        assert!(Gcra::new(0, 10).is_none());
    }
}
