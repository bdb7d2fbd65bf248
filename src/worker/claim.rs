//! Phase 1 of the pipeline, one short transaction: maintenance when due, committed inserts turned
//! into jobs, due jobs claimed up to the free capacity, and each planned (calls.rs): jobs that need
//! no Stripe call are finished here, the others log `stripe_request` and come back as [`Call`]s
//! to start once the claim commits.

use std::time::Duration;

use crate::gucs;
use crate::maintenance::{rescue, retention};
use crate::release::Installed;
use crate::worker::calls::{self, Call, Planned};
use crate::worker::queue;

/// Claims and plans up to `batch_size` jobs, doing maintenance first when `maintain`. Returns the
/// calls to start, how many jobs were claimed, and when the next pending job is due. Refuses
/// (with what is installed) unless this database holds this library's SQL.
pub fn claim_and_plan(batch_size: i32, maintain: bool) -> Result<(Vec<Call>, usize, Option<Duration>), Installed> {
    match queue::installed_release() {
        Installed::Current => {}
        other => return Err(other),
    }
    if maintain {
        rescue::requeue_abandoned();
        retention::prune();
    }

    queue::promote_intake(batch_size);

    let claimed = queue::claim(batch_size, gucs::idempotency_horizon());
    let claimed_count = claimed.len();
    let mut starting = queue::CallsStarting::default();
    let calls = claimed
        .into_iter()
        .filter_map(|job| {
            let id = job.id;
            match calls::plan(job) {
                Planned::Finish(transition, detail) => {
                    queue::finish(id, transition, detail);
                    None
                }
                Planned::WaitForCustomer => {
                    queue::wait_for_customer(id);
                    None
                }
                Planned::WriteBack(object) => {
                    queue::write_back(id, &object); // or postponed again, if the row is still locked
                    None
                }
                Planned::Call { call, first_params, request } => {
                    starting.push(id, first_params, request);
                    Some(call)
                }
            }
        })
        .collect();
    starting.record();
    Ok((calls, claimed_count, queue::next_due_in()))
}
