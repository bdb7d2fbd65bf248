//! What a maintenance service is to the supervisor (maintenance.rs): something that runs when its
//! schedule says, and says when it wants the worker's loop awake.

use std::time::Instant;

use crate::stripe_key::StripeKey;

/// What a service gets to run with.
pub struct Context<'a> {
    pub now: Instant,
    /// A commit woke the loop for this step: periodic work keeps out of that signup's way.
    pub woken_by_commit: bool,
    pub runtime: &'a tokio::runtime::Runtime,
    /// The key, for a client whose requests wait behind every signup's (`admitted(false)`).
    pub key: &'a StripeKey,
}

/// One maintenance concern.
pub trait Service {
    /// Does what is due at `context.now`, if anything.
    fn run_if_due(&mut self, context: &Context);

    /// When the worker's loop should be awake for it next, at the latest (None: nothing planned).
    fn next_due(&self) -> Option<Instant>;

    /// Whether the worker must not claim yet (the timeline not noted before the first claim).
    fn holds_claims(&self) -> bool {
        false
    }
}
