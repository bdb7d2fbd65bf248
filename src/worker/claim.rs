//! Phase 1 of the pipeline, one short transaction: committed inserts turned into jobs, due jobs claimed up to the free capacity (each lane from where the last claim there
//! stopped: core's `claim_cursor`), and each planned (calls.rs): jobs that need no Stripe call are
//! finished here, the others log `stripe_request` and come back as [`Call`]s to start once the
//! claim commits.

use std::time::{Duration, Instant};

use onboarding_core::claim_cursor::{ClaimCursor, LANES};
use onboarding_core::lane_shares::LaneCredit;
use onboarding_core::state::JobKind;

use pgrx::pg_sys;

use crate::gucs;
use crate::queries::jobs;
use crate::release::{self, Installed};
use crate::stripe_key::HeldBack;
use crate::worker::calls::{self, Call, Planned};
use crate::worker::record;

/// Claims and plans up to `batch_size` jobs (Connect's, or accounts_v2 tables', put back while
/// `held_back` says the key lacks their permissions), moving
/// `cursor` on past what it claims (back first to `announced_from`, the earliest start of the
/// transactions announced to this worker since its last claim: pg/processes.rs) (the caller drops it if the transaction fails: the claims
/// are then undone) and spending the lower lanes' `credit`. Returns the calls to start, how many
/// jobs were claimed, and when the next pending job is due. Refuses (with what is installed)
/// unless this database holds this library's SQL.
pub fn claim_and_plan(
    batch_size: i32,
    held_back: HeldBack,
    cursor: &mut ClaimCursor,
    announced_from: Option<i64>,
    credit: &mut LaneCredit,
) -> Result<(Vec<Call>, usize, Option<Duration>), Installed> {
    match release::installed() {
        Installed::Current => {}
        other => return Err(other),
    }
    let scan = cursor.scan_from(announced_from, gucs::poll_interval(), Instant::now());
    let reserved = credit.reserve(gucs::lane_shares(), batch_size.max(0) as usize);
    let started = Instant::now();
    let jobs::Claimed { promoted, jobs: claimed } =
        jobs::claim(batch_size, gucs::idempotency_horizon(), &scan, reserved);
    if ClaimCursor::is_full(&scan) {
        cursor.full_scan_took(started.elapsed());
    }
    let mut per_lane = [0; LANES];
    for job in &claimed {
        cursor.claimed(job.lane as usize, job.key);
        if let Some(n) = per_lane.get_mut(job.lane as usize) {
            *n += 1;
        }
    }
    credit.taken(reserved, per_lane);
    let claimed_count = claimed.len();
    if claimed_count < batch_size.max(0) as usize {
        // Every lane gave all it had due: the next claims start after this transaction's start.
        cursor.exhausted(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() });
    }
    let mut starting = jobs::CallsStarting::default();
    let calls = claimed
        .into_iter()
        .filter(|job| !job.finished)
        .filter_map(|mut job| {
            let id = job.id;
            if held_back.connect && JobKind::parse(&job.kind).is_some_and(JobKind::is_connect) {
                jobs::postpone(id, record::CONNECT_REFUSED);
                return None;
            }
            if held_back.accounts_v2 && job.accounts_v2.is_some() {
                jobs::postpone(id, record::ACCOUNTS_V2_REFUSED);
                return None;
            }
            if job.looks_up() {
                // What another table's profile with this user id holds: never adopted or deleted.
                job.made_for_others = jobs::made_for_other_profiles(id);
            }
            match calls::plan(job) {
                Planned::Finish(transition, detail) => {
                    jobs::finish(id, transition, detail);
                    None
                }
                Planned::WaitForCustomer => {
                    jobs::wait_for_customer(id);
                    None
                }
                Planned::WriteBack(object) => {
                    jobs::write_back(id, &object); // or postponed again, if the row is still locked
                    None
                }
                Planned::Call { call, first_params, request } => {
                    starting.push(id, first_params, request);
                    Some(*call)
                }
            }
        })
        .collect();
    starting.record();
    // A full promotion may have left more inserts behind (they woke us once, not again).
    let next_due =
        if promoted >= i64::from(batch_size) { Some(Duration::ZERO) } else { jobs::next_due_in(&cursor.current()) };
    Ok((calls, claimed_count, next_due))
}
