//! Taking back abandoned jobs: `running` jobs whose worker exited, or that overran
//! `onboarding.lease`, go back to the queue (`onboarding._requeue_abandoned`), to be retried
//! with their idempotency keys.

use pgrx::prelude::*;

use crate::gucs;

/// Requeues abandoned jobs, in the caller's transaction, and logs how many it took back.
pub fn requeue_abandoned() {
    let requeued = Spi::get_one_with_args::<i32>(
        "SELECT onboarding._requeue_abandoned($1, make_interval(secs => $2))",
        &[(gucs::max_attempts() as i32).into(), gucs::lease().as_secs_f64().into()],
    );
    match requeued {
        Ok(Some(n)) if n > 0 => {
            log!("onboarding: took back {n} job(s) from a worker that exited or overran its lease")
        }
        Ok(_) => {}
        Err(e) => error!("onboarding: requeueing abandoned jobs: {e}"),
    }
}
