//! Tables attached with `stripe_objects => 'accounts_v2'`: v1's promises repeated for one Accounts
//! v2 Account per profile, one file per behaviour; the helpers they share are here.

mod attach;
mod audits;
mod changes;
mod compensation;
mod connect;
mod intake;
mod security;

use libtest_mimic::{Failed, Trial};
use postgres::Client;
use serde_json::Value;
use stripe_emulator::RecordedRequest;

use crate::env;
use crate::helpers::{DEADLINE, wait_for};

pub(crate) fn tests() -> Vec<Trial> {
    [
        intake::tests(),
        compensation::tests(),
        connect::tests(),
        changes::tests(),
        audits::tests(),
        attach::tests(),
        security::tests(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A table with the columns an accounts_v2 attachment uses, attached (extra attach arguments in
/// `attach_args`).
pub(super) fn v2_table(db: &mut Client, name: &str, attach_args: &str) -> String {
    let table = format!("public.{name}");
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, full_name text, role text,
             stripe_account_id text, stripe_connect_account_id text,
             stripe_account_ready boolean NOT NULL DEFAULT false);
         SELECT onboarding.attach('{table}', stripe_objects => 'accounts_v2', display_name_column => 'full_name'{attach_args});"
    ))
    .unwrap();
    table
}

/// A v1 table (the default model) beside the v2 ones, attached.
pub(super) fn v1_table(db: &mut Client, name: &str) -> String {
    let table = format!("public.{name}");
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text, stripe_customer_id text);
         SELECT onboarding.attach('{table}');"
    ))
    .unwrap();
    table
}

pub(super) fn insert(db: &mut impl postgres::GenericClient, table: &str, email: &str, role: &str) -> String {
    db.query_one(
        &format!("INSERT INTO {table} (email, full_name, role) VALUES ($1, 'Ada Lovelace', $2) RETURNING id::text"),
        &[&email, &role],
    )
    .unwrap()
    .get(0)
}

pub(super) fn column(db: &mut Client, table: &str, column: &str, user: &str) -> Option<String> {
    db.query_one(&format!("SELECT {column} FROM {table} WHERE id::text = $1"), &[&user]).unwrap().get(0)
}

pub(super) fn wait_for_account(db: &mut Client, table: &str, user: &str) -> Result<String, Failed> {
    wait_for("the Account's write-back", DEADLINE, || column(db, table, "stripe_account_id", user))
}

pub(super) fn v2_accounts_for(user: &str) -> Vec<Value> {
    env().stripe.v2_accounts().into_iter().filter(|a| a["metadata"]["user_id"] == user).collect()
}

/// Requests to one Account's own paths (updates carry no `metadata.user_id` to find them by).
pub(super) fn requests_on(account: &str) -> Vec<RecordedRequest> {
    env().stripe.requests().into_iter().filter(|r| r.path.contains(account)).collect()
}

pub(super) fn requests_to(requests: &[RecordedRequest], method: &str, path: &str) -> usize {
    requests.iter().filter(|r| r.method == method && r.path == path).count()
}

pub(super) fn applied(account: &Value) -> Vec<String> {
    let mut names: Vec<String> = account["applied_configurations"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
        .unwrap_or_default();
    names.sort();
    names
}
