//! Stripe's API v2 (`/v2/...`), kept apart from v1: Accounts v2, Account Links v2, thin events.
//!
//! What it shares with v1 is the client itself ([`V2Client`] is a
//! [`StripeClient`](crate::stripe::StripeClient) speaking `/v2`, made by `StripeClient::v2`):
//! the key (never shown), the pinned `Stripe-Version`, admission by the rate budgets (each v2
//! endpoint its own, `endpoint.rs`), transport errors, the key redacted from answers, and the
//! error envelope read into [`StripeError`](crate::stripe::StripeError).
//! What is v2's own is here, one file per concern:
//!
//! - `wire`: JSON bodies, query strings with `include[0]`, idempotency keys checked, [`V2Client`];
//! - `errors`: v2 errors told apart as the official SDK does ([`V2ErrorKind`]);
//! - `pages`: URL-based pagination, `next_page_url` followed only on the configured base ([`Page`]);
//! - `time`: v2's RFC 3339 timestamps;
//! - `accounts`: create, add configurations, retrieve with `include`, list, close ([`NewAccount`],
//!   [`AccountUpdate`], [`Account`]);
//! - `look_up`: a bounded look-up of a user's Account, which can say "not found in N" but never
//!   "absent" ([`AccountLookUp`]);
//! - `options`: what a table's Accounts get, set per table ([`AccountOptions`]);
//! - `account_links`: onboarding links ([`AccountLink`]);
//! - `events`: thin events, `related_object` and no snapshot ([`ThinEvent`]);
//! - `readiness`: v1's readiness facts read from a v2 Account ([`V2Readiness`]);
//! - `keys`: `/v2` takes secret keys only ([`v2_key_refusal`]).
//!
//! How v2 failures are retried is `policy::classify_v2`, next to v1's.
//!
//! The submodules use each other directly, never through this module (as in `stripe`), and use
//! v1's modules (`stripe::client`, `stripe::error`, …) directly, never through `stripe`: no
//! module cycle goes through here.

mod account_links;
mod accounts;
mod errors;
mod events;
mod keys;
mod look_up;
mod options;
mod pages;
mod readiness;
mod time;
mod wire;

#[cfg(test)]
mod tests;

pub use account_links::{ACCOUNT_LINKS_PATH, AccountLink, account_link_body};
pub use accounts::{
    ACCOUNTS_PATH, Account, AccountUpdate, AccountsFilter, Capabilities, Configuration, DEFAULT_MERCHANT_CAPABILITIES,
    DEFAULT_RECIPIENT_CAPABILITIES, Dashboard, FeesCollector, Include, ListedAccount, LossesCollector,
    MERCHANT_CAPABILITIES, NewAccount, READ_BACK_INCLUDE, READINESS_INCLUDE, RECIPIENT_CAPABILITIES, Responsibilities,
};
pub use errors::{V2_ERROR_TYPES, V2ErrorKind};
pub use events::{
    ACCOUNT_EVENT_TYPES, CreatedRange, EVENTS_PATH, EventsFilter, ListedThinEvent, MAX_EVENT_TYPES, MalformedEvent,
    RelatedObject, ThinEvent,
};
pub use keys::{KeyKind, v2_key_refusal};
pub use look_up::AccountLookUp;
pub use options::{AccountOptions, BadOption};
pub use pages::{MAX_NEXT_PAGE_URL_LEN, NextPage, Page, next_page};
pub use readiness::{V2Readiness, in_v1_words};
pub use time::{rfc3339, unix_millis};
pub use wire::{MAX_IDEMPOTENCY_KEY_LEN, Query, V2Client, array_param, checked_idempotency_key, encode_query};
