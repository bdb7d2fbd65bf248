//! The Stripe snapshot behind the audits: every customer and account in Stripe copied into
//! `onboarding.stripe_objects`, taken by a worker (which alone holds the key) when
//! `onboarding.refresh_stripe_snapshot` asks through the request channel (requests.rs).

use std::time::Duration;

use onboarding_core::budget::Gcra;
use onboarding_core::policy::{Disposition, classify};
use onboarding_core::stripe::{ListKind, StripeClient};
use pgrx::prelude::*;

use crate::pg::latch::shutdown_requested;
use crate::pg::transaction::in_transaction;
use crate::{gucs, rate_budget, requests};

/// Copies every customer and account from Stripe into `onboarding.stripe_objects`, a page per
/// transaction (never one open across a call), retrying pages the policy says to retry, and
/// answers the request `ticket` with the snapshot id. Each page waits for the rate budget.
pub fn take_snapshot(ticket: u64, runtime: &tokio::runtime::Runtime, client: &StripeClient, budget: Option<&Gcra>) {
    let started =
        in_transaction("starting a Stripe snapshot", || Spi::get_one::<i64>("SELECT onboarding._snapshot_begin()"));
    let Ok(Ok(Some(snapshot))) = started else {
        requests::fail(ticket, "could not start a snapshot");
        return;
    };
    for (kind, object) in [(ListKind::Customers, "customer"), (ListKind::Accounts, "account")] {
        let mut after: Option<String> = None;
        loop {
            if shutdown_requested() {
                requests::fail(ticket, "the worker is shutting down");
                return;
            }
            let mut attempt = 0;
            let page = loop {
                attempt += 1;
                if let Some(gcra) = budget {
                    rate_budget::wait_for_slot(gcra);
                }
                match runtime.block_on(client.list_page(kind, after.as_deref())) {
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
            let (objects, more) = match page {
                Ok(page) => page,
                Err(error) => {
                    requests::fail(ticket, &format!("listing {object}s: {error}"));
                    return;
                }
            };
            after = objects.last().map(|o| o.summary.id.clone());
            let rows: Vec<serde_json::Value> = objects
                .iter()
                .filter(|o| !o.deleted)
                .map(|o| {
                    serde_json::json!({"id": o.summary.id, "user_id": o.summary.metadata_user_id,
                                       "email": o.summary.email})
                })
                .collect();
            let stored = in_transaction("storing a snapshot page", || {
                Spi::run_with_args(
                    "SELECT onboarding._snapshot_add($1, $2, $3)",
                    &[snapshot.into(), object.into(), pgrx::JsonB(serde_json::Value::Array(rows.clone())).into()],
                )
            });
            if !matches!(stored, Ok(Ok(()))) {
                requests::fail(ticket, "could not store a snapshot page");
                return;
            }
            if !more || after.is_none() {
                break;
            }
        }
    }
    let finished = in_transaction("finishing a Stripe snapshot", || {
        Spi::run_with_args("SELECT onboarding._snapshot_finish($1)", &[snapshot.into()])
    });
    match finished {
        Ok(Ok(())) => requests::succeed(ticket, &snapshot.to_string()),
        _ => requests::fail(ticket, "could not finish the snapshot"),
    }
}
