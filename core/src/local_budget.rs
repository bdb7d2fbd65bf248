//! A rate budget for the async tasks of one process: the GCRA of [`crate::budget`] (same
//! guarantees: no one-second window over the ceiling, bursts included), its TAT behind a mutex
//! instead of in shared memory, waited for with tokio timers. The Stripe client keeps one for
//! customer search, which Stripe limits apart from everything else.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::budget::{Gcra, monotonic_now};

#[derive(Debug)]
pub struct LocalBudget {
    gcra: Gcra,
    /// The theoretical arrival time of the next request, on [`monotonic_now`]'s clock. Never
    /// locked across an `.await`.
    tat: Mutex<Duration>,
}

impl LocalBudget {
    /// At most `ceiling` requests in any second, one at a time (no burst: a look-up's pages go
    /// one after the other anyway). `None` when `ceiling` is 0: no budget.
    pub fn new(ceiling: u32) -> Option<LocalBudget> {
        Some(LocalBudget { gcra: Gcra::new(ceiling, 1)?, tat: Mutex::new(Duration::ZERO) })
    }

    /// Time between requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.gcra.interval
    }

    /// Waits until a slot is open and takes it. Safe to call from any number of tasks at once;
    /// each wait ends with a fresh try, so a slot taken meanwhile by another task only means
    /// waiting again.
    pub async fn take_slot(&self) {
        loop {
            let wait = {
                let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
                match self.gcra.acquire(*tat, monotonic_now()) {
                    Ok(next) => {
                        *tat = next;
                        return;
                    }
                    Err(wait) => wait,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// After a 429 anyway: nobody takes a slot for [`crate::budget::RATE_LIMITED_PAUSE`].
    pub fn penalize(&self) {
        let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        *tat = self.gcra.penalize(*tat, monotonic_now());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn concurrent_tasks_share_the_rate() {
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let budget = Arc::new(LocalBudget::new(10).unwrap());
        let started = Instant::now();
        let times = rt.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let budget = budget.clone();
                    tokio::spawn(async move {
                        let mut times = Vec::new();
                        for _ in 0..2 {
                            budget.take_slot().await;
                            times.push(started.elapsed());
                        }
                        times
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        });
        let mut times = times;
        times.sort();
        // 16 slots one interval apart (less a timer tick each): the last at least 15 intervals in.
        let interval = budget.interval();
        assert!(*times.last().unwrap() + crate::budget::TIMER_SLACK * 15 >= interval * 15, "{times:?}");
        for window in times.windows(11) {
            assert!(window[10] - window[0] >= Duration::from_millis(990), "11 slots within a second: {window:?}");
        }
    }

    #[test]
    fn a_penalty_pauses_every_taker() {
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let budget = LocalBudget::new(50).unwrap();
        let started = Instant::now();
        budget.penalize();
        rt.block_on(budget.take_slot());
        assert!(started.elapsed() + crate::budget::TIMER_SLACK >= crate::budget::RATE_LIMITED_PAUSE);
        assert!(LocalBudget::new(0).is_none());
    }
}
