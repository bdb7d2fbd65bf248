//! Taking back abandoned jobs: `running` jobs whose worker exited, or that overran
//! `onboarding.lease`, go back to the queue (`onboarding._requeue_abandoned`), to be retried
//! with their idempotency keys. Every `onboarding.poll_interval`.

use std::time::Instant;

use onboarding_core::schedule::Periodic;
use pgrx::prelude::*;

use crate::gucs;
use crate::maintenance::service::{Context, Service};
use crate::pg::transaction::in_transaction;
use crate::queries::maintenance;

#[derive(Default)]
pub struct Rescue {
    schedule: Periodic,
}

impl Service for Rescue {
    fn run_if_due(&mut self, context: &Context) {
        if !self.schedule.due(context.now, gucs::poll_interval(), context.woken_by_commit) {
            return;
        }
        self.schedule.ran(context.now);
        let _ = in_transaction("requeueing abandoned jobs", requeue_abandoned);
    }

    fn next_due(&self) -> Option<Instant> {
        self.schedule.next_due(gucs::poll_interval())
    }
}

/// Requeues abandoned jobs, in the caller's transaction, and logs how many it took back.
fn requeue_abandoned() {
    match maintenance::requeue_abandoned(gucs::max_attempts() as i32, gucs::lease().as_secs_f64()) {
        Ok(n) if n > 0 => {
            log!("onboarding: took back {n} job(s) from a worker that exited or overran its lease")
        }
        Ok(_) => {}
        Err(e) => error!("onboarding: requeueing abandoned jobs: {e}"),
    }
}
