//! The Stripe snapshot behind the audits: every customer and account in Stripe copied into
//! `onboarding.stripe_objects`, taken by a worker (which alone holds the key) when
//! `onboarding.refresh_stripe_snapshot` asks through the request channel (requests.rs).
//! Accounts are listed only while Connect is in use (`tables::connect_in_use`); a Stripe account
//! that is not a Connect platform refuses to list them, and the snapshot then holds customers
//! only and says why (`accounts_not_listed_why`): the audits check customers and say what they
//! could not check, instead of failing. While an accounts_v2 table is attached, its Accounts are
//! listed too, from `/v2/core/accounts` (object `account_v2`).

use onboarding_core::stripe::{ListKind, StripeClient};
use pgrx::prelude::*;

use crate::maintenance::listing::{for_each_page, for_each_v2_accounts_page};
use crate::pg::transaction::in_transaction;
use crate::queries::{catalog, maintenance};
use crate::requests;

/// Copies every customer and account from Stripe into `onboarding.stripe_objects`, a page per
/// transaction (listing.rs), and answers the request `ticket` with the snapshot id.
pub fn take_snapshot(ticket: u64, runtime: &tokio::runtime::Runtime, client: &StripeClient) {
    let started = in_transaction("starting a Stripe snapshot", || {
        let in_use = (catalog::connect_in_use()?, catalog::accounts_v2_in_use()?);
        Ok::<_, pgrx::spi::Error>((maintenance::snapshot_begin()?, in_use))
    });
    let Ok(Ok((Some(snapshot), (connect_in_use, accounts_v2_in_use)))) = started else {
        requests::fail(ticket, "could not start a snapshot");
        return;
    };
    let mut accounts_not_listed = (!connect_in_use).then_some(None::<String>);
    let customers = (ListKind::Customers, "customer");
    let kinds: &[_] = if connect_in_use { &[customers, (ListKind::Accounts, "account")] } else { &[customers] };
    for &(kind, object) in kinds {
        let listed = for_each_page(runtime, client, kind, None, |objects| {
            let rows: Vec<serde_json::Value> = objects
                .iter()
                .filter(|o| !o.deleted)
                .map(|o| {
                    serde_json::json!({"id": o.summary.id, "user_id": o.summary.metadata_user_id,
                                       "email": o.summary.email})
                })
                .collect();
            let stored =
                in_transaction("storing a snapshot page", || maintenance::snapshot_add(snapshot, object, rows));
            match stored {
                Ok(Ok(())) => Ok(()),
                _ => Err("could not store a snapshot page".into()),
            }
        });
        match listed {
            Ok(()) => {}
            Err(error) if kind == ListKind::Accounts && error.refused() => {
                warning!(
                    "onboarding: Stripe refused to list Connect accounts ({error}); the snapshot holds customers only"
                );
                accounts_not_listed = Some(Some(error.to_string()));
            }
            Err(error) => {
                requests::fail(ticket, &format!("listing {object}s: {error}"));
                return;
            }
        }
    }
    // The Accounts of accounts_v2 tables, from /v2/core/accounts (closed ones are not listed: for
    // the audits they are gone, as deleted customers are).
    if accounts_v2_in_use {
        let listed = for_each_v2_accounts_page(runtime, client, |accounts| {
            let rows: Vec<serde_json::Value> = accounts
                .iter()
                .filter(|a| !a.closed)
                .map(|a| serde_json::json!({"id": a.id, "user_id": a.metadata_user_id, "email": a.contact_email}))
                .collect();
            let stored =
                in_transaction("storing a snapshot page", || maintenance::snapshot_add(snapshot, "account_v2", rows));
            match stored {
                Ok(Ok(())) => Ok(()),
                _ => Err("could not store a snapshot page".into()),
            }
        });
        if let Err(error) = listed {
            requests::fail(ticket, &format!("listing v2 Accounts: {error}"));
            return;
        }
    }
    let finished = in_transaction("finishing a Stripe snapshot", || {
        maintenance::snapshot_finish(
            snapshot,
            accounts_not_listed.as_ref().map(|why| why.as_deref().unwrap_or_default()),
        )
    });
    match finished {
        Ok(Ok(())) => requests::succeed(ticket, &snapshot.to_string()),
        _ => requests::fail(ticket, "could not finish the snapshot"),
    }
}
