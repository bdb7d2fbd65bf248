//! Retention: finished jobs and their events are deleted after `onboarding.retention`
//! (`onboarding.prune()`, a small batch at a time; dead and orphaned jobs are kept until dealt
//! with). Every `onboarding.poll_interval`.

use std::time::Instant;

use onboarding_core::schedule::Periodic;
use pgrx::prelude::*;

use crate::gucs;
use crate::maintenance::service::{Context, Service};
use crate::pg::transaction::in_transaction;
use crate::queries::maintenance;

#[derive(Default)]
pub struct Retention {
    schedule: Periodic,
}

impl Service for Retention {
    fn run_if_due(&mut self, context: &Context) {
        if !self.schedule.due(context.now, gucs::poll_interval(), context.woken_by_commit) {
            return;
        }
        self.schedule.ran(context.now);
        let _ = in_transaction("pruning finished jobs", || {
            maintenance::prune().unwrap_or_else(|e| error!("onboarding: pruning: {e}"))
        });
    }

    fn next_due(&self) -> Option<Instant> {
        self.schedule.next_due(gucs::poll_interval())
    }
}
