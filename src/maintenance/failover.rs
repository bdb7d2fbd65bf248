//! After a promotion: the old primary may have called Stripe for commits this server never
//! received. Each worker notes the WAL timeline before its first claim; the first on a new one
//! takes back the old primary's running jobs and marks what it attempted to look up before
//! creating (`onboarding._note_timeline`); then (a worker that finds the sweep unfinished) sweeps
//! Stripe's customers and accounts created since shortly before the last replicated commit, and
//! sql/failover.sql decides what each needs (nothing, adoption by its profile's job, or deletion
//! as an orphan). Claims wait until the timeline is noted; the sweep, when due, runs every
//! `onboarding.poll_interval` until it succeeds.

use std::time::{Duration, Instant};

use onboarding_core::schedule::{Deadline, Periodic};
use onboarding_core::stripe::{ListKind, StripeClient};
use pgrx::prelude::*;
use serde_json::{Value, json};

use crate::gucs;
use crate::maintenance::listing::{for_each_page, for_each_v2_accounts_page};
use crate::maintenance::service::{Context, Service};
use crate::pg::replication;
use crate::pg::transaction::in_transaction;
use crate::queries::{catalog, failover};

/// After a failed note of the timeline, how long until the next try (claims wait meanwhile).
const NOTE_RETRY: Duration = Duration::from_secs(1);

pub struct Failover {
    /// Whether this worker has recorded the WAL timeline it runs on (once, before its first claim).
    noted: bool,
    /// When to try noting it (again).
    next_note: Deadline,
    /// A sweep of Stripe after a promotion, still to do.
    sweep: Option<Sweep>,
    schedule: Periodic,
}

impl Default for Failover {
    fn default() -> Failover {
        Failover { noted: false, next_note: Deadline::now(Instant::now()), sweep: None, schedule: Periodic::default() }
    }
}

impl Service for Failover {
    fn run_if_due(&mut self, context: &Context) {
        if !self.noted {
            if !self.next_note.due(context.now) {
                return;
            }
            // Before the first claim: on a promoted standby, take back the old primary's jobs.
            match note_timeline() {
                Ok(sweep) => (self.noted, self.sweep) = (true, sweep),
                Err(_) => self.next_note.set(context.now, NOTE_RETRY),
            }
            return;
        }
        let Some(due) = self.sweep.as_ref().filter(|sweep| sweep.due()) else { return };
        if !self.schedule.due(context.now, gucs::poll_interval(), context.woken_by_commit) {
            return;
        }
        let Some(client) = context.key.admitted(false) else { return };
        self.schedule.ran(context.now);
        if sweep(due, context.runtime, &client) {
            self.sweep = None;
        }
    }

    fn next_due(&self) -> Option<Instant> {
        if !self.noted {
            return Some(self.next_note.at());
        }
        let sweep = self.sweep.as_ref()?;
        let next = self.schedule.next_due(gucs::poll_interval()).unwrap_or(sweep.not_before);
        Some(next.max(sweep.not_before))
    }

    fn holds_claims(&self) -> bool {
        !self.noted
    }
}

/// A sweep to do: objects created since `from` (Unix seconds), for `timeline`, once
/// `not_before` has passed.
struct Sweep {
    timeline: u32,
    from: i64,
    /// A request the old primary sent just before it died may still be executing at Stripe: the
    /// sweep waits one `onboarding.request_timeout` after the promotion was noticed.
    not_before: Instant,
}

impl Sweep {
    fn due(&self) -> bool {
        Instant::now() >= self.not_before
    }
}

/// Records the timeline this worker runs on (`onboarding._note_timeline`); returns the sweep due,
/// if this server was promoted (or a sweep was left unfinished).
fn note_timeline() -> Result<Option<Sweep>, String> {
    let timeline = replication::timeline();
    let from = in_transaction("noting the WAL timeline", || failover::note_timeline(timeline as i32))?
        .map_err(|e| e.to_string())?;
    let not_before = Instant::now() + gucs::request_timeout();
    Ok(from.map(|from| Sweep { timeline, from: from.floor() as i64, not_before }))
}

/// Sweeps customers, then (where a table has a Connect column) accounts. Returns whether the
/// sweep is done; a failed one is tried again at the next maintenance.
fn sweep(sweep: &Sweep, runtime: &tokio::runtime::Runtime, client: &StripeClient) -> bool {
    let started = Instant::now();
    let uses_connect = in_transaction("looking for Connect columns", catalog::connect_in_use);
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
                failover::check_after_failover(object, page)
            });
            match found {
                Ok(Ok(found)) => {
                    orphans += found;
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
    // The Accounts of accounts_v2 tables: the v2 list takes no `created` filter, so the whole
    // list is read and those made since the sweep's start checked.
    let uses_v2 = in_transaction("looking for accounts_v2 tables", catalog::accounts_v2_in_use);
    if matches!(uses_v2, Ok(Ok(true))) {
        let since_ms = sweep.from * 1000;
        let listed = for_each_v2_accounts_page(runtime, client, |accounts| {
            let page: Vec<Value> = accounts
                .iter()
                .filter(|a| !a.closed && a.created_ms.is_none_or(|created| created >= since_ms))
                .map(|a| json!({"id": a.id, "user_id": a.metadata_user_id}))
                .collect();
            checked += page.len() as i32;
            match in_transaction("checking Stripe objects after a promotion", || {
                failover::check_after_failover("account_v2", page)
            }) {
                Ok(Ok(found)) => {
                    orphans += found;
                    Ok(())
                }
                _ => Err("could not check a page".into()),
            }
        });
        if let Err(error) = listed {
            warning!("onboarding: the sweep after promotion failed listing v2 Accounts ({error}); trying again later");
            return false;
        }
    }
    let recorded = in_transaction("recording the sweep after a promotion", || {
        failover::swept(sweep.timeline as i32, checked, orphans)
    });
    log!(
        "onboarding: swept Stripe after the promotion to timeline {}: {checked} object(s) checked, {orphans} orphan(s) \
         queued for deletion, in {:?}",
        sweep.timeline,
        started.elapsed()
    );
    matches!(recorded, Ok(Ok(())))
}
