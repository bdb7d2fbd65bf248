//! What a Stripe call came back with, v1's (calls.rs) and v2's (accounts_v2.rs) alike; record.rs
//! records it.

use std::time::Duration;

use onboarding_core::stripe::{Response, StripeError, StripeObject};

pub enum Outcome {
    Created(StripeObject, Response),
    /// Found in Stripe by `metadata.user_id` instead of created.
    Adopted(StripeObject),
    /// A customer or account deleted; `response` is `None` when Stripe says it was already gone.
    Deleted {
        object: String,
        response: Option<Response>,
    },
    /// A clean-up found no customer: the earlier attempt never executed.
    NothingToCleanUp,
    EmailUpdated(Response),
    /// A look-up could not tell whether Stripe holds the object (search refused, too many pages):
    /// creating one could make a second, so the job waits for an operator, with the reason.
    Undecided(String),
    /// An Accounts v2 look-up did not find the Account, but the list may not show it yet (it is
    /// eventually consistent): look again after this long.
    NotYetListed(Duration),
    Failed(StripeError),
}
