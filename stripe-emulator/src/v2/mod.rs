//! Stripe's `/v2` namespace, as far as the extension uses it: Accounts v2, Account Links v2 and
//! thin Events (<https://docs.stripe.com/api-v2-overview>). What differs from `/v1` lives here:
//! JSON request bodies ([`request`]), parameter checks on JSON values ([`params`]), `include`
//! instead of `expand` and URL pagination ([`pages`]), RFC 3339 timestamps ([`time`]), thin
//! events ([`events`]), and the objects themselves ([`accounts`], [`account_links`]). What is
//! shared with `/v1` (authentication, the pinned version, rate limits, faults, the request log)
//! stays in the server's pipeline, which also applies v2's idempotency rules
//! ([`crate::idempotency`]) and error envelope ([`crate::error::ApiError::body_v2`]).
//!
//! Submodules refer to one another directly, never to this module, so the module graph keeps no
//! cycle through it.

pub mod account_links;
pub mod accounts;
pub mod api;
pub mod capabilities;
pub mod dashboard;
pub mod events;
pub mod onboarding;
pub mod pages;
pub mod params;
pub mod request;
pub mod store;
pub mod time;
