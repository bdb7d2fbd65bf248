//! Pure logic of the `onboarding` extension, testable with plain `cargo test`:
//!
//! - [`budget`]: the client-side rate budgets (GCRA) shared by every worker, and the admission
//!   each request waits for;
//! - [`endpoint`]: Stripe's endpoints as its rate limits count them;
//! - [`local_budget`]: the same budget for one process's async tasks (customer search's own);
//! - [`budget_turns`]: whose call takes the next budget slot (a signup's first);
//! - [`stripe`]: the Stripe HTTP client, one file per concern: the client (auth, the pinned
//!   version, idempotency keys, sending), errors, answers, form encoding, customers, accounts,
//!   lists, events, look-ups by `metadata.user_id`;
//! - [`permissions`]: checking, without creating anything, that a key may do what the extension needs;
//! - [`inbound`]: what Stripe's events say about the accounts and customers the extension made, and
//!   which of them to apply;
//! - [`policy`]: which failures are retried, and how long to wait before the next attempt;
//! - [`state`]: the job state machine: kinds, states and the named transitions between them;
//! - [`job`]: what a job does with the profile it finds, and where it goes after an attempt;
//! - [`runtime`]: an async runtime whose helper threads never receive PostgreSQL's signals;
//! - [`standby_wait`]: holding calls until the standbys have the commit they came from;
//! - [`claim_cursor`]: where claims start in each lane, past the dead entries of earlier claims;
//! - [`lane_shares`]: the share of the claimed work kept for the lower priority lanes;
//! - [`pacing`]: spacing claims and records while the rate budget is what limits the worker;
//! - [`schedule`]: when the worker's maintenance services run.
//!
//! Nothing here touches PostgreSQL; the extension (`src/` at the top of the repository) is the glue.

// `StripeError` carries Stripe's whole error envelope (type, code, message, request id), returned
// at most once per HTTP call: boxing it would cost an allocation per error and buy nothing.
#![allow(clippy::result_large_err)]

pub mod budget;
pub mod budget_turns;
pub mod claim_cursor;
pub mod endpoint;
pub mod inbound;
pub mod job;
pub mod lane_shares;
pub mod local_budget;
pub mod pacing;
pub mod permissions;
pub mod policy;
pub mod runtime;
pub mod schedule;
pub mod standby_wait;
pub mod state;
pub mod stripe;
