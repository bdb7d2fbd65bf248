//! Maintenance, apart from the hot path, one concern per file:
//! - [`rescue`]: taking back jobs from workers that exited or overran their lease;
//! - [`retention`]: pruning finished jobs and their events (`onboarding.retention`);
//! - [`snapshot`]: copying Stripe's customers and accounts for the audits;
//! - [`failover`]: after a promotion, taking back the old primary's jobs and sweeping Stripe for
//!   what it left behind;
//! - [`events`]: reading Stripe's events back into Postgres (Connect accounts' readiness);
//! - [`listing`]: paging through a Stripe list within the rate budget (snapshot and sweep).
//!
//! The worker runs rescue and retention at the start of a claim, every `onboarding.poll_interval`
//! (worker/claim.rs), a snapshot when `onboarding.refresh_stripe_snapshot` asks for one, and
//! notes its timeline before its first claim (a sweep, when due, at the next maintenance).

pub mod events;
pub mod failover;
pub mod listing;
pub mod rescue;
pub mod retention;
pub mod snapshot;
