//! Paging through a Stripe list (customers or accounts) from a worker: each page waits for the
//! rate budgets (the client's admission), a page that fails is retried as the retry policy says, and the caller takes each
//! page in turn (to store it in a transaction of its own, never one open across a call).

use std::time::Duration;

use onboarding_core::policy::{Disposition, classify, classify_v2};
use onboarding_core::stripe::v2::{Account, AccountsFilter, ListedAccount, NextPage, Page};
use onboarding_core::stripe::{ListKind, ListedObject, StripeClient, StripeError};
use pgrx::prelude::*;

use crate::gucs;
use crate::pg::latch::shutdown_requested;

/// Why a listing stopped.
#[derive(Debug)]
pub enum ListingError {
    /// Stripe's answer, after the retries the policy allows.
    Stripe(Box<StripeError>),
    /// The caller's `take` failed, or the worker is shutting down.
    Stopped(String),
}

impl ListingError {
    /// Stripe refuses for good to list what was asked: for accounts, a Stripe account that is not
    /// a Connect platform, or a key without Connect's read permission (400, 403 or 404). Whoever
    /// lists accounts then goes on without them, and says so.
    pub fn refused(&self) -> bool {
        matches!(self, ListingError::Stripe(error) if matches!(&**error, StripeError::Api(e) if matches!(e.status, 400 | 403 | 404)))
    }
}

impl std::fmt::Display for ListingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListingError::Stripe(error) => error.fmt(f),
            ListingError::Stopped(why) => f.write_str(why),
        }
    }
}

/// Lists every object of `kind` (created at or after `created_since`, a Unix time, when given),
/// newest first, handing each page to `take`. Stops at the first error: Stripe's, `take`'s, or
/// shutdown.
pub fn for_each_page(
    runtime: &tokio::runtime::Runtime,
    client: &StripeClient,
    kind: ListKind,
    created_since: Option<i64>,
    mut take: impl FnMut(&[ListedObject]) -> Result<(), String>,
) -> Result<(), ListingError> {
    let mut after: Option<String> = None;
    loop {
        if shutdown_requested() {
            return Err(ListingError::Stopped("the worker is shutting down".into()));
        }
        let page = read_page(runtime, classify, || client.list_page_since(kind, after.as_deref(), created_since));
        check_for_interrupts!();
        let (objects, more) = page.map_err(|error| ListingError::Stripe(Box::new(error)))?;
        take(&objects).map_err(ListingError::Stopped)?;
        after = objects.last().map(|o| o.summary.id.clone());
        if !more || after.is_none() {
            return Ok(());
        }
    }
}

/// Lists every v2 Account Stripe holds that is not closed (Stripe's default), page by page
/// (`next_page_url`), handing each page's readable Accounts to `take`, as [`for_each_page`] does
/// for v1's lists. (The v2 list takes no `created` filter: a caller wanting recent ones filters.)
pub fn for_each_v2_accounts_page(
    runtime: &tokio::runtime::Runtime,
    client: &StripeClient,
    mut take: impl FnMut(&[Account]) -> Result<(), String>,
) -> Result<(), ListingError> {
    let v2 = client.v2();
    let mut next: Option<NextPage> = None;
    loop {
        if shutdown_requested() {
            return Err(ListingError::Stopped("the worker is shutting down".into()));
        }
        let filter = AccountsFilter::default();
        let page: Result<Page<ListedAccount>, StripeError> = read_page(runtime, classify_v2, || async {
            match &next {
                None => v2.list_accounts(&filter).await,
                Some(next) => v2.next_accounts_page(next).await,
            }
        });
        check_for_interrupts!();
        let page = page.map_err(|error| ListingError::Stripe(Box::new(error)))?;
        let accounts: Vec<Account> = page
            .data
            .into_iter()
            .filter_map(|listed| match listed {
                ListedAccount::Account(account) => Some(account),
                ListedAccount::Unreadable => None,
            })
            .collect();
        take(&accounts).map_err(ListingError::Stopped)?;
        match page.next {
            Some(more) => next = Some(more),
            None => return Ok(()),
        }
    }
}

/// Reads one page, again after a failure the retry policy (`classify`: v1's or v2's) retries, at
/// most `onboarding.max_attempts` times, backing off on this thread (30 s at most). (The error is
/// the client's own, as every call of it returns it.)
#[allow(clippy::result_large_err)]
fn read_page<T, F: Future<Output = Result<T, StripeError>>>(
    runtime: &tokio::runtime::Runtime,
    classify: fn(&StripeError, bool) -> Disposition,
    mut read: impl FnMut() -> F,
) -> Result<T, StripeError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match runtime.block_on(read()) {
            Ok(page) => return Ok(page),
            Err(error) => match classify(&error, false) {
                Disposition::Retry { rate_limited } if attempt < gucs::max_attempts() => {
                    let delay = gucs::backoff().delay(attempt, rate_limited, &mut rand::rng());
                    std::thread::sleep(delay.min(Duration::from_secs(30)));
                }
                _ => return Err(error),
            },
        }
    }
}
