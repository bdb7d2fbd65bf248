//! Paging through a Stripe list (customers or accounts) from a worker: each page waits for the
//! rate budget, a page that fails is retried as the retry policy says, and the caller takes each
//! page in turn (to store it in a transaction of its own, never one open across a call).

use std::time::Duration;

use onboarding_core::budget::Gcra;
use onboarding_core::policy::{Disposition, classify};
use onboarding_core::stripe::{ListKind, ListedObject, StripeClient};
use pgrx::prelude::*;

use crate::pg::latch::shutdown_requested;
use crate::{gucs, rate_budget};

/// Lists every object of `kind` (created at or after `created_since`, a Unix time, when given),
/// newest first, handing each page to `take`. Stops at the first error: Stripe's, `take`'s, or
/// shutdown.
pub fn for_each_page(
    runtime: &tokio::runtime::Runtime,
    client: &StripeClient,
    budget: Option<&Gcra>,
    kind: ListKind,
    created_since: Option<i64>,
    mut take: impl FnMut(&[ListedObject]) -> Result<(), String>,
) -> Result<(), String> {
    let mut after: Option<String> = None;
    loop {
        if shutdown_requested() {
            return Err("the worker is shutting down".into());
        }
        let mut attempt = 0;
        let page = loop {
            attempt += 1;
            if let Some(gcra) = budget {
                rate_budget::wait_for_slot(gcra);
            }
            match runtime.block_on(client.list_page_since(kind, after.as_deref(), created_since)) {
                Ok(page) => break Ok(page),
                Err(error) => match classify(&error, false) {
                    Disposition::Retry { rate_limited } if attempt < gucs::max_attempts() => {
                        let delay = gucs::backoff().delay(attempt, rate_limited, &mut rand::rng());
                        std::thread::sleep(delay.min(Duration::from_secs(30)));
                    }
                    _ => break Err(error),
                },
            }
        };
        check_for_interrupts!();
        let (objects, more) = page.map_err(|error| error.to_string())?;
        take(&objects)?;
        after = objects.last().map(|o| o.summary.id.clone());
        if !more || after.is_none() {
            return Ok(());
        }
    }
}
