//! Whose call takes the next rate-budget slot: a signup's (lane 0) before any other.
//!
//! Calls of the lower lanes wait for the budget one at a time, in claim order (a turnstile), so a
//! backfill's thousands of calls do not all poll the budget. A lane-0 call does not queue behind
//! them: it vies for the next slot with the one call at the turnstile's head. Vying alone is not
//! enough: both sleep until the same instant, and the timer wheel wakes them in the order they
//! went to sleep, which favoured the head every time (a signup once waited five minutes behind a
//! backfill at 24/s). So the head steps aside while any lane-0 call waits, and a lane-0 call
//! waits for at most the slot being opened, whatever the backlog.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};

use crate::budget::TIMER_SLACK;

/// How long the head steps aside at most before looking again (in case it missed the wake-up).
const STEP_ASIDE: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct BudgetTurns {
    turnstile: Mutex<()>,
    first_lane_waiting: AtomicUsize,
    first_lane_served: Notify,
}

impl BudgetTurns {
    /// Waits until `take_slot` takes a slot (it answers how long until one opens, otherwise).
    /// `first_lane`: a signup's or an application request's call.
    pub async fn wait_for_slot(&self, first_lane: bool, mut take_slot: impl FnMut() -> Result<(), Duration>) {
        if first_lane {
            self.first_lane_waiting.fetch_add(1, Ordering::AcqRel);
            let _served = Served(self);
            poll_budget(&mut take_slot).await;
            return;
        }
        let _turn = self.turnstile.lock().await;
        loop {
            if self.first_lane_waiting.load(Ordering::Acquire) > 0 {
                let mut served = pin!(self.first_lane_served.notified());
                served.as_mut().enable();
                if self.first_lane_waiting.load(Ordering::Acquire) > 0 {
                    let _ = tokio::time::timeout(STEP_ASIDE, served).await;
                }
                continue;
            }
            match take_slot() {
                Ok(()) => return,
                // Timers fire late, on millisecond ticks: aim a tick early (allowed).
                Err(wait) => tokio::time::sleep(wait.saturating_sub(TIMER_SLACK)).await,
            }
        }
    }
}

async fn poll_budget(take_slot: &mut impl FnMut() -> Result<(), Duration>) {
    while let Err(wait) = take_slot() {
        tokio::time::sleep(wait.saturating_sub(TIMER_SLACK)).await;
    }
}

/// A lane-0 call stopped waiting (served, or dropped at shutdown): the head may go on.
struct Served<'a>(&'a BudgetTurns);

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.0.first_lane_waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.first_lane_served.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use super::*;
    use crate::budget::Gcra;

    /// A GCRA on tokio's (paused) clock, as the worker's shared one on the monotonic clock.
    struct Budget {
        gcra: Gcra,
        tat: StdMutex<Duration>,
        start: tokio::time::Instant,
    }

    impl Budget {
        fn take(&self) -> Result<(), Duration> {
            let now = self.start.elapsed();
            let mut tat = self.tat.lock().unwrap();
            *tat = self.gcra.acquire(*tat, now)?;
            Ok(())
        }
    }

    /// A test key's budget (24/s, no burst), its clock starting now, and the turns to wait in.
    fn at_24_a_second() -> (Gcra, Arc<Budget>, Arc<BudgetTurns>) {
        let gcra = Gcra::new(24, 1).unwrap();
        let budget = Arc::new(Budget { gcra, tat: StdMutex::default(), start: tokio::time::Instant::now() });
        (gcra, budget, Arc::new(BudgetTurns::default()))
    }

    /// `n` lower-lane calls queued for the budget.
    fn backlog(turns: &Arc<BudgetTurns>, budget: &Arc<Budget>, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let (turns, budget) = (turns.clone(), budget.clone());
                tokio::spawn(async move { turns.wait_for_slot(false, || budget.take()).await })
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_signup_waits_for_at_most_the_next_slot_behind_a_backlog() {
        let (gcra, budget, turns) = at_24_a_second();
        // A backfill: 200 calls queued at the turnstile, about eight seconds of budget.
        let backlog = backlog(&turns, &budget, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Signups arrive now and then, at random phases of the slots.
        for arrival in [0u64, 7, 19, 33, 41] {
            tokio::time::sleep(Duration::from_millis(300 + arrival)).await;
            let asked = tokio::time::Instant::now();
            let b = budget.clone();
            turns.wait_for_slot(true, || b.take()).await;
            let waited = asked.elapsed();
            assert!(
                waited <= gcra.interval + TIMER_SLACK,
                "the signup waited {waited:?} for a slot; one slot is {:?}",
                gcra.interval
            );
        }
        for call in backlog {
            call.await.unwrap();
        }
    }

    /// The worker's runtime (one thread, as `runtime::new`) on the real clock: there a task woken
    /// by another is polled next (tokio's LIFO slot), so the turnstile's next head always went to
    /// sleep before the signup and woke first.
    #[test]
    fn on_the_workers_runtime_a_signup_is_not_starved_by_the_turnstile() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
        runtime.block_on(async {
            let gcra = Gcra::new(100, 1).unwrap(); // about 10 ms a slot
            let budget = Arc::new(Budget { gcra, tat: StdMutex::default(), start: tokio::time::Instant::now() });
            let turns = Arc::new(BudgetTurns::default());
            let backlog = backlog(&turns, &budget, 150);
            tokio::time::sleep(Duration::from_millis(100)).await;
            for arrival in [0u64, 3, 6, 8] {
                tokio::time::sleep(Duration::from_millis(50 + arrival)).await;
                let (turns, b) = (turns.clone(), budget.clone());
                let waited = tokio::spawn(async move {
                    let asked = tokio::time::Instant::now();
                    turns.wait_for_slot(true, || b.take()).await;
                    asked.elapsed()
                });
                let waited = waited.await.unwrap();
                // One slot, and as much again for a timer that fires late on a busy machine.
                assert!(waited <= gcra.interval * 3, "the signup waited {waited:?}; a slot is {:?}", gcra.interval);
            }
            for call in backlog {
                call.await.unwrap();
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn the_backlog_keeps_the_whole_rate_when_no_signup_waits() {
        let (gcra, budget, turns) = at_24_a_second();
        let started = tokio::time::Instant::now();
        let backlog = backlog(&turns, &budget, 48);
        for call in backlog {
            call.await.unwrap();
        }
        let took = started.elapsed();
        let at_full_rate = gcra.interval * 47;
        assert!(took <= at_full_rate + gcra.interval, "48 calls took {took:?}, at the full rate {at_full_rate:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_signup_dropped_while_waiting_lets_the_backlog_go_on() {
        let (gcra, budget, turns) = at_24_a_second();
        budget.take().unwrap(); // the next slot is one interval away
        let b = budget.clone();
        let signup = turns.wait_for_slot(true, move || b.take());
        // Shutdown drops the signup's call before its slot opens.
        assert!(tokio::time::timeout(gcra.interval / 4, signup).await.is_err());
        let b = budget.clone();
        tokio::time::timeout(gcra.interval * 2, turns.wait_for_slot(false, move || b.take()))
            .await
            .expect("the backlog's call got the slot");
    }
}
