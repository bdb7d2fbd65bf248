//! Maintenance, apart from the hot path: each concern a service in its own file that owns its
//! state and its schedule (core's `schedule`), run by the [`Supervisor`] between the worker's
//! claims (River's `internal/maintenance/`):
//! - [`failover`]: before the first claim, the WAL timeline noted; after a promotion, the old
//!   primary's jobs taken back and Stripe swept for what it left behind;
//! - [`rescue`]: taking back jobs from workers that exited or overran their lease;
//! - [`retention`]: pruning finished jobs and their events (`onboarding.retention`);
//! - [`events`]: reading Stripe's events back into Postgres (Connect readiness, changed customers).
//!
//! Not scheduled, so not services: [`snapshot`] (a copy of Stripe for the audits, taken when
//! `onboarding.refresh_stripe_snapshot` asks) and [`listing`] (paging through a Stripe list within
//! the rate budget, for the snapshot and the sweep).
//!
//! A new maintenance task: a file here with a type that implements [`Service`] (service.rs; its
//! schedule from core's `schedule`), and a field of the supervisor.

pub mod events;
pub mod failover;
pub mod listing;
pub mod rescue;
pub mod retention;
pub mod service;
pub mod snapshot;

use std::time::Instant;

pub use service::{Context, Service};

/// The worker's maintenance services, run in this order at each step of its loop.
#[derive(Default)]
pub struct Supervisor {
    pub failover: failover::Failover,
    pub rescue: rescue::Rescue,
    pub retention: retention::Retention,
    pub events: events::EventsReader,
}

impl Supervisor {
    fn services(&self) -> [&dyn Service; 4] {
        [&self.failover, &self.rescue, &self.retention, &self.events]
    }

    /// Runs every service whose work is due.
    pub fn run_due(&mut self, context: &Context) {
        let services: [&mut dyn Service; 4] =
            [&mut self.failover, &mut self.rescue, &mut self.retention, &mut self.events];
        for service in services {
            service.run_if_due(context);
        }
    }

    /// The earliest time a service wants the loop awake.
    pub fn next_due(&self) -> Option<Instant> {
        self.services().iter().filter_map(|service| service.next_due()).min()
    }

    pub fn holds_claims(&self) -> bool {
        self.services().iter().any(|service| service.holds_claims())
    }
}
