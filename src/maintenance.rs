//! Maintenance, apart from the hot path, one concern per file:
//! - [`rescue`]: taking back jobs from workers that exited or overran their lease;
//! - [`retention`]: pruning finished jobs and their events (`onboarding.retention`);
//! - [`snapshot`]: copying Stripe's customers and accounts for the audits.
//!
//! The worker runs rescue and retention at the start of a claim, every `onboarding.poll_interval`
//! (worker/claim.rs), and a snapshot when `onboarding.refresh_stripe_snapshot` asks for one.

pub mod rescue;
pub mod retention;
pub mod snapshot;
