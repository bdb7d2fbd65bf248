//! After a promotion: the old primary may have called Stripe for commits this server never
//! received. Each worker notes the WAL timeline before its first claim; the first on a new one
//! takes back the old primary's running jobs and marks what it attempted to look up before
//! creating (`onboarding._note_timeline`); then (a worker that finds the sweep unfinished) sweeps
//! Stripe's customers and accounts created since shortly before the last replicated commit, and
//! sql/failover.sql decides what each needs (nothing, adoption by its profile's job, or deletion
//! as an orphan).

use std::time::Instant;

use onboarding_core::stripe::{ListKind, StripeClient};
use pgrx::prelude::*;
use serde_json::{Value, json};

use crate::gucs;
use crate::maintenance::listing::for_each_page;
use crate::pg::replication;
use crate::pg::transaction::in_transaction;
use crate::tables;

/// A sweep to do: objects created since `from` (Unix seconds), for `timeline`, once
/// `not_before` has passed.
pub struct Sweep {
    timeline: u32,
    from: i64,
    /// A request the old primary sent just before it died may still be executing at Stripe: the
    /// sweep waits one `onboarding.request_timeout` after the promotion was noticed.
    not_before: Instant,
}

impl Sweep {
    pub fn due(&self) -> bool {
        Instant::now() >= self.not_before
    }
}

/// Records the timeline this worker runs on (`onboarding._note_timeline`); returns the sweep due,
/// if this server was promoted (or a sweep was left unfinished).
pub fn note_timeline() -> Result<Option<Sweep>, String> {
    let timeline = replication::timeline();
    let from = in_transaction("noting the WAL timeline", || {
        Spi::get_one_with_args::<f64>(
            "SELECT extract(epoch FROM onboarding._note_timeline($1))::float8",
            &[(timeline as i32).into()],
        )
    })?
    .map_err(|e| e.to_string())?;
    let not_before = Instant::now() + gucs::request_timeout();
    Ok(from.map(|from| Sweep { timeline, from: from.floor() as i64, not_before }))
}

/// Sweeps customers, then (where a table has a Connect column) accounts. Returns whether the
/// sweep is done; a failed one is tried again at the next maintenance.
pub fn sweep(sweep: &Sweep, runtime: &tokio::runtime::Runtime, client: &StripeClient) -> bool {
    let started = Instant::now();
    let uses_connect = in_transaction("looking for Connect columns", tables::connect_in_use);
    let Ok(Ok(uses_connect)) = uses_connect else { return false };
    let (mut checked, mut orphans) = (0i32, 0i32);
    let kinds: &[(ListKind, &str)] = if uses_connect {
        &[(ListKind::Customers, "customer"), (ListKind::Accounts, "account")]
    } else {
        &[(ListKind::Customers, "customer")]
    };
    for &(kind, object) in kinds {
        let listed = for_each_page(runtime, client, kind, Some(sweep.from), |objects| {
            let page: Vec<Value> = objects
                .iter()
                .filter(|o| !o.deleted)
                .map(|o| json!({"id": o.summary.id, "user_id": o.summary.metadata_user_id}))
                .collect();
            checked += page.len() as i32;
            let found = in_transaction("checking Stripe objects after a promotion", || {
                Spi::get_one_with_args::<i32>(
                    "SELECT onboarding._check_after_failover($1, $2)",
                    &[object.into(), pgrx::JsonB(Value::Array(page)).into()],
                )
            });
            match found {
                Ok(Ok(found)) => {
                    orphans += found.unwrap_or(0);
                    Ok(())
                }
                _ => Err("could not check a page".into()),
            }
        });
        match listed {
            Ok(()) => {}
            Err(error) if kind == ListKind::Accounts && error.refused() => {
                // Not a Connect platform (or no Connect read permission): there is nothing of
                // Connect's to sweep that the extension could have made.
                warning!(
                    "onboarding: the sweep after promotion could not list Connect accounts ({error}); swept customers only"
                );
            }
            Err(error) => {
                warning!(
                    "onboarding: the sweep after promotion failed listing {object}s ({error}); trying again later"
                );
                return false;
            }
        }
    }
    let recorded = in_transaction("recording the sweep after a promotion", || {
        Spi::run_with_args(
            "SELECT onboarding._failover_swept($1, $2, $3)",
            &[(sweep.timeline as i32).into(), checked.into(), orphans.into()],
        )
    });
    log!(
        "onboarding: swept Stripe after the promotion to timeline {}: {checked} object(s) checked, {orphans} orphan(s) \
         queued for deletion, in {:?}",
        sweep.timeline,
        started.elapsed()
    );
    matches!(recorded, Ok(Ok(())))
}
