//! The Connect policy adds configurations to the profile's Account; links, readiness and closing
//! come back from v2 thin events.

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use stripe_emulator::{Onboarding, RecordedRequest};

use super::{applied, column, insert, requests_on, requests_to, v2_accounts_for, v2_table, wait_for_account};
use crate::env;
use crate::helpers::{DEADLINE, db, ensure, stripe_requests_for, wait_for, with_fast_event_polls};

pub(super) fn tests() -> Vec<Trial> {
    trials![the_connect_policy_adds_configurations_to_the_same_account, readiness_and_closing_come_back_from_v2_events,]
}

fn the_connect_policy_adds_configurations_to_the_same_account() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(
        &mut db,
        "profiles_v2_connect",
        ", connect_account_column => 'stripe_connect_account_id', connect_policy => 'when', \
         connect_condition => $$role = 'provider'$$",
    );
    let buyer = insert(&mut db, &table, "buyer@example.com", "buyer");
    let provider = insert(&mut db, &table, "provider@example.com", "provider");
    let connected = wait_for("the provider's connected Account", DEADLINE, || {
        column(&mut db, &table, "stripe_connect_account_id", &provider)
    })?;
    let account = column(&mut db, &table, "stripe_account_id", &provider);
    ensure(account.as_deref() == Some(connected.as_str()), || format!("account {account:?}, connected {connected}"))?;
    let accounts = v2_accounts_for(&provider);
    ensure(accounts.len() == 1, || format!("Stripe holds {accounts:?}"))?;
    let a = &accounts[0];
    ensure(
        applied(a) == ["customer", "merchant", "recipient"]
            && a["configuration"]["merchant"]["capabilities"]["card_payments"].is_object()
            && a["configuration"]["recipient"]["capabilities"]["stripe_balance"]["stripe_transfers"].is_object(),
        || format!("account {a}"),
    )?;
    let requests = [stripe_requests_for(&provider), requests_on(&connected)].concat();
    ensure(
        requests_to(&requests, "POST", "/v2/core/accounts") == 1
            && requests_to(&requests, "POST", &format!("/v2/core/accounts/{connected}")) == 1,
        || format!("requests {:?}", requests.iter().map(|r| &r.path).collect::<Vec<_>>()),
    )?;
    wait_for_account(&mut db, &table, &buyer)?;
    ensure(column(&mut db, &table, "stripe_connect_account_id", &buyer).is_none(), || "a buyer got Connect".into())?;
    ensure(applied(&v2_accounts_for(&buyer)[0]) == ["customer"], || "a buyer's Account got Connect".into())?;

    // An onboarding link for the provider: Account Links v2, for the Account.
    let link: String = db
        .query_one(
            "SELECT onboarding.create_account_link($1, 'https://example.com/refresh', 'https://example.com/return',
                                                   profile_table => $2::text::regclass)",
            &[&provider, &table],
        )
        .unwrap()
        .get(0);
    let links: Vec<RecordedRequest> =
        env().stripe.requests().into_iter().filter(|r| r.path == "/v2/core/account_links").collect();
    ensure(link.starts_with("http") && links.len() == 1 && links[0].params["account"] == connected.as_str(), || {
        format!("link {link}, requests {links:?}")
    })?;

    // Options: recipient only, from now on.
    db.batch_execute(&format!("SELECT onboarding.set_account_options('{table}', merchant_capabilities => '{{}}')"))
        .unwrap();
    let recipient = insert(&mut db, &table, "recipient@example.com", "provider");
    wait_for("the recipient's connected Account", DEADLINE, || {
        column(&mut db, &table, "stripe_connect_account_id", &recipient)
    })?;
    let a = &v2_accounts_for(&recipient)[0];
    ensure(applied(a) == ["customer", "recipient"], || format!("account {a}"))
}

fn ready(db: &mut Client, user: &str) -> bool {
    db.query_one("SELECT onboarding.account_ready($1::text)", &[&user]).unwrap().get(0)
}

fn readiness_and_closing_come_back_from_v2_events() -> Result<(), Failed> {
    let mut db = db();
    let table = v2_table(
        &mut db,
        "profiles_v2_readiness",
        ", connect_account_column => 'stripe_connect_account_id', connect_policy => 'always', \
         readiness_columns => '{\"ready\": \"stripe_account_ready\"}'",
    );
    with_fast_event_polls(&mut db, |db| {
        let user = insert(db, &table, "seller@example.com", "seller");
        let account =
            wait_for("the connected Account", DEADLINE, || column(db, &table, "stripe_connect_account_id", &user))?;
        // Followed from its Connect job on, read on /v2/core/accounts (the poll after the first
        // reads every v2 Account): not ready, with what is due.
        wait_for("the Account's first read", DEADLINE, || {
            let due: Option<Vec<String>> = db
                .query_opt(
                    "SELECT requirements_currently_due FROM onboarding.account_status($1::text) WHERE account_id = $2",
                    &[&user, &account],
                )
                .unwrap()
                .map(|row| row.get(0));
            due.filter(|due| !due.is_empty()).map(|_| ())
        })?;
        ensure(!ready(db, &user), || "ready before onboarding".into())?;
        let reads_before = requests_to(&requests_on(&account), "GET", &format!("/v2/core/accounts/{account}"));

        // Onboarding completes in Stripe: a thin event names the Account, which is read, and
        // account_ready and the profile's readiness column follow.
        env().stripe.set_v2_onboarding(&account, Onboarding::Enabled).map_err(|e| e.to_string())?;
        wait_for("account_ready", DEADLINE, || ready(db, &user).then_some(()))?;
        wait_for("the readiness column", DEADLINE, || {
            let on: bool = db
                .query_one(&format!("SELECT stripe_account_ready FROM {table} WHERE id::text = $1"), &[&user])
                .unwrap()
                .get(0);
            on.then_some(())
        })?;
        let reads = requests_to(&requests_on(&account), "GET", &format!("/v2/core/accounts/{account}"));
        let event_reads = env().stripe.requests().into_iter().filter(|r| r.path == "/v2/core/events").count();
        ensure(reads > reads_before && event_reads > 0, || {
            format!("{reads} Account reads, {event_reads} event reads")
        })?;

        // Closed in the Dashboard: never ready again.
        ensure(env().stripe.dashboard_close_v2_account(&account), || "the test server did not close it".into())?;
        wait_for("the closing", DEADLINE, || (!ready(db, &user)).then_some(()))?;
        let closed: Option<bool> = db
            .query_one("SELECT deauthorized_at IS NOT NULL FROM onboarding.account_status($1::text)", &[&user])
            .unwrap()
            .get(0);
        ensure(closed == Some(true), || "a closed Account is not marked".into())
    })
}
