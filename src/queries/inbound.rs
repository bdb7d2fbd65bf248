//! Stripe back into Postgres (sql/inbound.sql): the events reader's statements (its turn, the
//! events and object reads it applies, the poll's end) and the profile writer's.

use std::collections::HashMap;
use std::time::Duration;

use pgrx::JsonB;
use pgrx::prelude::*;
use serde_json::Value;

type Result<T> = std::result::Result<T, pgrx::spi::Error>;

/// The reader's turn, as `onboarding._events_poll_begin` answers.
pub struct Turn {
    /// This worker polls now (else another does, or none is due).
    pub polling: bool,
    /// When the next poll is due.
    pub due_in: Duration,
    /// The last event applied (None: no cursor).
    pub last_event_id: Option<String>,
    pub accounts_to_refresh: Vec<String>,
    /// Since the last account link was issued (the fast interval applies for a while after).
    pub since_link: Option<Duration>,
    /// When the last poll read (Unix seconds).
    pub last_polled_at: Option<i64>,
    pub events_to_retry: Vec<String>,
    pub customers_to_refresh: Vec<String>,
    /// Read v2 thin events (an accounts_v2 table is attached).
    pub read_v2_events: bool,
    /// From when (the newest v2 event read's `created`, Unix milliseconds; None: none read yet).
    pub v2_events_since: Option<i64>,
    /// Which of `accounts_to_refresh` are v2 Accounts (read on `/v2/core/accounts`).
    pub v2_accounts_to_refresh: Vec<String>,
}

/// Takes the poller's turn if a poll is due (`every` apart), with at most `refresh_at_most`
/// accounts to read again.
pub fn poll_begin(refresh_at_most: i32, every: Duration) -> Result<Turn> {
    Spi::connect(|spi| {
        let row = spi
            .select(
                "SELECT * FROM onboarding._events_poll_begin($1, make_interval(secs => $2))",
                Some(1),
                &[refresh_at_most.into(), every.as_secs_f64().into()],
            )?
            .first();
        let seconds = |s: f64, max: f64| Duration::from_secs_f64(s.clamp(0.0, max));
        Ok(Turn {
            polling: row.get_by_name::<bool, _>("polling")?.unwrap_or(false),
            due_in: seconds(row.get_by_name::<f64, _>("due_in")?.unwrap_or(0.0), 86_400.0),
            last_event_id: row.get_by_name("last_event_id")?,
            accounts_to_refresh: row.get_by_name("accounts_to_refresh")?.unwrap_or_default(),
            since_link: row.get_by_name::<f64, _>("since_link")?.map(|s| seconds(s, 1e9)),
            last_polled_at: row.get_by_name("last_polled_at")?,
            events_to_retry: row.get_by_name("events_to_retry")?.unwrap_or_default(),
            customers_to_refresh: row.get_by_name("customers_to_refresh")?.unwrap_or_default(),
            read_v2_events: row.get_by_name::<bool, _>("read_v2_events")?.unwrap_or(false),
            v2_events_since: row.get_by_name("v2_events_since")?,
            v2_accounts_to_refresh: row.get_by_name("v2_accounts_to_refresh")?.unwrap_or_default(),
        })
    })
}

/// Ends the poll: the cursor (id, created) moves, `applied` events counted, the next poll due in
/// `next_in`; `read_at`: when the events were read; `lost`: Stripe no longer held the cursor.
pub fn poll_end(
    cursor: Option<(String, Option<i64>)>,
    applied: i32,
    next_in: Duration,
    read_at: Option<i64>,
    lost: bool,
) -> Result<()> {
    let (id, created) = cursor.map_or((None, None), |(id, created)| (Some(id), created));
    Spi::run_with_args(
        "SELECT onboarding._events_poll_end($1, $2, $3, make_interval(secs => $4), $5, $6)",
        &[id.into(), created.into(), applied.into(), next_in.as_secs_f64().into(), read_at.into(), lost.into()],
    )
}

/// The v2 thin events were read up to `since` (Unix milliseconds); `refresh_all`: every v2
/// Account is to be read at the next polls.
pub fn v2_events_read(since: i64, refresh_all: bool) -> Result<()> {
    Spi::run_with_args("SELECT onboarding._v2_events_read($1, $2)", &[since.into(), refresh_all.into()])
}

/// v2 thin events' Accounts and their requests' idempotency keys: those that are an accounts_v2
/// profile's customer, changed outside the extension, are read at the next poll. Returns how many.
pub fn v2_customers_changed(accounts: Vec<String>, keys: Vec<Option<String>>) -> Result<i32> {
    Spi::get_one_with_args::<i32>("SELECT onboarding._v2_customers_changed($1, $2)", &[accounts.into(), keys.into()])
        .map(Option::unwrap_or_default)
}

/// Marks accounts to be read again by the next polls (None: every followed account).
pub fn refresh_accounts(accounts: Option<Vec<String>>) -> Result<()> {
    Spi::run_with_args("SELECT onboarding._refresh_accounts($1)", &[accounts.into()])
}

/// Stores accounts' readiness (`[{account, as_of, charges_enabled, …}]`), newest wins.
pub fn apply_account_states(states: Vec<Value>) -> Result<()> {
    Spi::run_with_args("SELECT onboarding._apply_account_states($1)", &[JsonB(Value::Array(states)).into()])
}

/// Records customers changed outside the extension, for the profile writer.
pub fn record_customer_changes(changes: Vec<Value>) -> Result<()> {
    Spi::run_with_args("SELECT onboarding._record_customer_changes($1)", &[JsonB(Value::Array(changes)).into()])
}

/// Sets events aside (`ids`, each `why`), read again later if `retry`.
pub fn set_events_aside(ids: Vec<Option<String>>, reasons: Vec<String>, retry: bool) -> Result<()> {
    Spi::run_with_args("SELECT onboarding._set_events_aside($1, $2, $3)", &[ids.into(), reasons.into(), retry.into()])
}

/// The ids of these events not applied before, now recorded as applied.
pub fn events_not_applied(ids: Vec<String>, types: Vec<String>, created: Vec<i64>) -> Result<Vec<String>> {
    Spi::get_one_with_args::<Vec<String>>(
        "SELECT onboarding._events_not_applied($1, $2, $3)",
        &[ids.into(), types.into(), created.into()],
    )
    .map(Option::unwrap_or_default)
}

/// The time of the state held for each of these accounts and customers (Unix seconds; None:
/// held without one).
pub fn held_as_of(objects: Vec<String>) -> Result<HashMap<String, Option<i64>>> {
    Spi::connect(|spi| {
        let rows = spi.select(
            "SELECT account_id AS object, as_of FROM onboarding.connect_accounts WHERE account_id = ANY ($1)
             UNION ALL
             SELECT customer_id, email_as_of FROM onboarding.customer_changes WHERE customer_id = ANY ($1)",
            None,
            &[objects.into()],
        )?;
        let mut held = HashMap::new();
        for row in rows {
            if let Some(object) = row.get_by_name::<String, _>("object")? {
                held.insert(object, row.get_by_name::<i64, _>("as_of")?);
            }
        }
        Ok(held)
    })
}

/// An account link was issued for `account`: polls come every `fast` for `fast_for`, and read
/// the account itself until it is ready.
pub fn account_link_issued(fast: Duration, account: &str, fast_for: Duration) -> Result<()> {
    Spi::run_with_args(
        "SELECT onboarding._account_link_issued(make_interval(secs => $1), $2, make_interval(secs => $3))",
        &[fast.as_secs_f64().into(), account.into(), fast_for.as_secs_f64().into()],
    )
}

/// The profile writer: writes up to `at_most` readiness columns (`per_table` a table); returns
/// how many waited on a held row.
pub fn write_profile_readiness(at_most: i32, per_table: i32) -> Result<i32> {
    Spi::get_one_with_args::<i32>(
        "SELECT onboarding._write_profile_readiness($1, $2)",
        &[at_most.into(), per_table.into()],
    )
    .map(Option::unwrap_or_default)
}

/// The profile writer: handles up to `at_most` customer changes (`per_table` a table); returns
/// how many waited on a held row.
pub fn handle_customer_changes(at_most: i32, per_table: i32) -> Result<i32> {
    Spi::get_one_with_args::<i32>(
        "SELECT onboarding._handle_customer_changes($1, $2)",
        &[at_most.into(), per_table.into()],
    )
    .map(Option::unwrap_or_default)
}

/// When the next profile write is due (None: none waits).
pub fn profile_writes_due_in() -> Result<Option<Duration>> {
    Spi::get_one::<f64>("SELECT onboarding._profile_writes_due_in()")
        .map(|seconds| seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}
