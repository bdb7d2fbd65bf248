//! Stripe back into Postgres, with no webhook endpoint: a worker reads Stripe's Events API from the
//! cursor in `onboarding.events_cursor` and keeps `onboarding.connect_accounts` (sql/inbound.sql)
//! in step with what Stripe says of the accounts the extension created; customers deleted or
//! given another email outside the extension go to `onboarding.customer_changes`, where each
//! table's policy is applied to them (flag or recreate; audit or copy the email).
//!
//! A poll is three steps, none holding a transaction across a call: take the turn (one worker
//! at a time, when `onboarding.events_poll_interval` says one is due); read a page of events
//! and the accounts due to be read again, in the background on the worker's runtime, each
//! request behind every signup's call for the rate budget; apply them in one transaction. Events
//! already applied (ids in `onboarding.stripe_events_applied`) are skipped, and an event older
//! than the state held never overwrites it (core's `inbound`). Without a cursor (the first poll)
//! or with one past Stripe's 30 days, the reader starts at Stripe's newest event and reads every
//! followed account itself, so nothing that happened meanwhile is missed. (Customers changed
//! meanwhile show in `audit_mismatches(refresh => true)`, which reads Stripe itself.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use onboarding_core::budget::Gcra;
use onboarding_core::budget_turns::BudgetTurns;
use onboarding_core::inbound::{AccountReadiness, Change, Verdict, parse_event, plan};
use onboarding_core::stripe::{ListedEvent, StripeClient, StripeError, account_gone, lost_event_cursor};
use pgrx::JsonB;
use pgrx::prelude::*;
use serde_json::{Value, json};

use crate::gucs;
use crate::pg::transaction::in_transaction;
use crate::rate_budget;

/// The events read: accounts' readiness, and customers deleted or changed outside the extension.
pub const TYPES: &[&str] =
    &["account.updated", "account.application.deauthorized", "customer.updated", "customer.deleted"];

/// Profiles whose readiness columns are written per poll (each a statement as the table's owner).
const PROFILES_WRITTEN_AT_MOST: i32 = 100;

/// Customer changes handled per poll (each reads its profile, and may write it): the rest wait.
const CUSTOMER_CHANGES_AT_MOST: i32 = 50;

/// Accounts read directly per poll (each a request): the rest wait for the next polls. (Polls
/// following at once while more waited delayed signups past a lane test's 2 s at a 10/s budget.)
const REFRESH_AT_MOST: i32 = 20;

/// How long Stripe keeps events (30 days).
const RETENTION_SECS: i64 = 30 * 86_400;

/// Pages of events read at most without a cursor (100 each); the newest are kept, and what came
/// before them is read from the accounts themselves, as after a lost cursor.
const SINCE_PAGES_AT_MOST: usize = 10;

/// How far before the last poll a reader without a cursor reads events from: Stripe's clock and
/// this server's may differ.
const CLOCK_MARGIN_SECS: i64 = 60;

/// How long to wait before asking again whether a poll is due, at most: another worker may
/// have issued an account link meanwhile (which makes one due sooner).
const CHECK_AT_LEAST_EVERY: Duration = Duration::from_secs(5);

/// A poll whose requests run in the background.
pub struct Poll {
    reading: tokio::task::JoinHandle<Read>,
    since_link: Option<Duration>,
}

/// What a poll read from Stripe.
struct Read {
    page: Result<Page, StripeError>,
    /// When the events were read (Unix seconds).
    read_at: i64,
    /// Each account read again: when its request was sent (Unix seconds) and Stripe's answer.
    accounts: Vec<(String, i64, Result<Value, StripeError>)>,
}

enum Page {
    /// Events after the cursor, oldest first, and whether newer ones follow.
    After(Vec<ListedEvent>, bool),
    /// No cursor (the last poll found no event at all, or `lost`: Stripe no longer holds it):
    /// the events since the last poll, oldest first. `truncated`: more came than were read (the
    /// newest are; what came before them is read from the accounts themselves).
    Since { events: Vec<ListedEvent>, lost: bool, truncated: bool },
    /// The very first poll (or a lost cursor and no poll ever read): where to start, Stripe's
    /// newest event.
    Start { newest: Option<String>, lost: bool },
}

/// Takes the poller's turn if a poll is due and starts reading. Returns the poll, or when to ask
/// again.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    client: &StripeClient,
    budget: Option<Gcra>,
    turns: Arc<BudgetTurns>,
) -> Result<Poll, Duration> {
    let every = gucs::events_poll().map_or(Duration::from_secs(3600), |p| p.every);
    let taken = in_transaction("taking the events poll", || {
        Spi::connect(|spi| {
            let row = spi
                .select(
                    "SELECT * FROM onboarding._events_poll_begin($1, make_interval(secs => $2))",
                    Some(1),
                    &[REFRESH_AT_MOST.into(), every.as_secs_f64().into()],
                )?
                .first();
            let polling = row.get::<bool>(1)?.unwrap_or(false);
            let due_in = Duration::from_secs_f64(row.get::<f64>(2)?.unwrap_or(0.0).clamp(0.0, 86_400.0));
            let cursor = row.get::<String>(3)?;
            let accounts = row.get::<Vec<String>>(4)?.unwrap_or_default();
            let since_link = row.get::<f64>(5)?.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e9)));
            let last_polled_at = row.get::<i64>(6)?;
            Ok::<_, pgrx::spi::Error>((polling, due_in, cursor, accounts, since_link, last_polled_at))
        })
    });
    let (cursor, accounts, since_link, last_polled_at) = match taken {
        Ok(Ok((true, _, cursor, accounts, since_link, last_polled_at))) => {
            (cursor, accounts, since_link, last_polled_at)
        }
        Ok(Ok((false, due_in, ..))) => return Err(due_in.min(CHECK_AT_LEAST_EVERY)),
        // Not installed at this release yet, or a standby: ask again later.
        _ => return Err(CHECK_AT_LEAST_EVERY),
    };
    let client = client.clone();
    let reading = runtime.spawn(async move {
        let slot = || async {
            if let Some(gcra) = &budget {
                turns.wait_for_slot(false, || rate_budget::take_slot(gcra)).await;
            }
        };
        slot().await;
        let read_at = unix_now();
        // Without a cursor, every event since the last poll that read (a margin for Stripe's
        // clock; ids already applied are skipped), so that none between two polls is missed.
        // Stripe lists them newest first: each page is a request of its own for the budget.
        let since = |lost| {
            let (client, slot) = (&client, &slot);
            async move {
                let Some(polled_at) = last_polled_at else {
                    return client.newest_event(TYPES).await.map(|newest| Page::Start { newest, lost });
                };
                // Stripe keeps 30 days: a last poll further back than that misses some.
                let lost = lost || unix_now() - polled_at > RETENTION_SECS - CLOCK_MARGIN_SECS;
                let (mut events, mut more) = (Vec::<ListedEvent>::new(), true);
                for page in 0..SINCE_PAGES_AT_MOST {
                    if page > 0 {
                        slot().await;
                    }
                    let older_than = events.iter().rev().find_map(ListedEvent::cursor).map(str::to_string);
                    let read;
                    (read, more) =
                        client.events_since_page(polled_at - CLOCK_MARGIN_SECS, older_than.as_deref(), TYPES).await?;
                    events.extend(read);
                    if !more {
                        break;
                    }
                }
                events.reverse();
                Ok(Page::Since { events, lost, truncated: more })
            }
        };
        let page = match &cursor {
            None => since(false).await,
            Some(cursor) => match client.events_after(cursor, TYPES).await {
                Err(e) if lost_event_cursor(&e) => {
                    slot().await;
                    since(true).await
                }
                read => read.map(|(events, more)| Page::After(events, more)),
            },
        };
        let mut read_accounts = Vec::with_capacity(accounts.len());
        if page.is_ok() {
            for account in accounts {
                slot().await;
                let sent_at = unix_now();
                let answer = client.retrieve_account(&account).await;
                read_accounts.push((account, sent_at, answer));
            }
        }
        Read { page, read_at, accounts: read_accounts }
    });
    Ok(Poll { reading, since_link })
}

impl Poll {
    pub fn is_finished(&self) -> bool {
        self.reading.is_finished()
    }

    /// Applies what the poll read (call once [`Poll::is_finished`]), in one transaction, and
    /// returns when to ask again whether a poll is due; `warned` says a failure was already told.
    pub fn finish(self, runtime: &tokio::runtime::Runtime, warned: &mut bool) -> Duration {
        let Poll { reading, since_link } = self;
        let Ok(read) = runtime.block_on(reading) else {
            return CHECK_AT_LEAST_EVERY; // the task panicked: the turn lapses in a minute
        };
        let interval = gucs::events_poll().map_or(Duration::from_secs(3600), |p| p.next_poll_in(since_link));
        // AssertUnwindSafe: a failed transaction leaves `warned` as good as any value.
        let applied =
            in_transaction("applying Stripe's events", std::panic::AssertUnwindSafe(|| apply(read, interval, warned)));
        match applied {
            Ok(Ok(next_in)) => next_in,
            Ok(Err(e)) => {
                warning!("onboarding: applying Stripe's events: {e}");
                interval
            }
            Err(_) => interval,
        }
    }
}

/// Applies a poll's read and ends the poll; returns when the next one is due.
fn apply(read: Read, interval: Duration, warned: &mut bool) -> Result<Duration, pgrx::spi::Error> {
    let mut states: HashMap<String, Value> = HashMap::new();
    let mut customers: HashMap<String, Value> = HashMap::new();
    let mut refetch: Vec<String> = Vec::new();
    let mut next_in = interval;
    let mut cursor = None::<(String, Option<i64>)>;
    // `unread_before`: what happened before the events read is not in them (the first poll, or
    // more came since the last poll than were read).
    let (events, more, lost, unread_before) = match read.page {
        Err(error) => {
            if !*warned {
                warning!("onboarding: could not read Stripe's events: {error}; trying again every {interval:?}");
                *warned = true;
            }
            end_poll(None, 0, interval, None, false)?;
            return Ok(interval);
        }
        Ok(Page::After(events, more)) => (events, more, false, false),
        Ok(Page::Since { events, lost, truncated }) => (events, false, lost, truncated),
        Ok(Page::Start { newest, lost }) => {
            cursor = newest.map(|id| (id, None));
            (Vec::new(), false, lost, true)
        }
    };
    if lost {
        warning!(
            "onboarding: Stripe no longer holds the events after the stored cursor (it keeps 30 days): \
             reading the events since the last poll that Stripe still has, and every followed account"
        );
    }
    if lost || unread_before {
        // What happened before the events read is read from the accounts themselves.
        Spi::run("SELECT onboarding._refresh_accounts(NULL)")?;
    }
    // Never a huge or malformed id as the cursor: every later read would fail on it.
    if let Some((id, last)) = events.iter().rev().find_map(|e| Some((e.cursor()?, e))) {
        let created = match last {
            ListedEvent::Read(event) => event["created"].as_i64(),
            ListedEvent::Unreadable(_) => None,
        };
        cursor = Some((id.to_string(), created));
    }
    if more {
        next_in = Duration::ZERO;
    }
    // One event that cannot be read or applied safely (bytes that are not UTF-8, a NUL, a 3 kB
    // id) is set aside, said and recorded; it never stops its page, the cursor or anyone else.
    let mut readable = Vec::with_capacity(events.len());
    let mut set_aside = Vec::new();
    for event in &events {
        match event {
            ListedEvent::Read(value) => match parse_event(value) {
                // Its type was checked by parse_event: safe to store.
                Ok(parsed) => readable.push((parsed, value["type"].as_str().unwrap_or_default().to_string())),
                Err(malformed) => set_aside.push((malformed.id.clone(), malformed.to_string())),
            },
            ListedEvent::Unreadable(unreadable) => {
                set_aside.push((Some(unreadable.id.clone()), format!("{}: {}", unreadable.id, unreadable.why)))
            }
        }
    }
    record_set_aside(&set_aside)?;
    let fresh = not_applied_before(&readable)?;
    let parsed = readable.into_iter().map(|(e, _)| e).filter(|e| fresh.contains(&e.id)).collect::<Vec<_>>();
    let applied = parsed.len() as i32;
    let as_of = stored_as_of(&parsed)?;
    for step in plan(parsed, |account| as_of.get(account).copied().flatten()) {
        let created = step.event.created;
        match (step.verdict, step.superseded, step.event.change) {
            (Verdict::Stale, ..) | (_, true, _) => {}
            // Accounts are read again; a customer's two emails of one second are not yet (its
            // deletion always applies: core's plan).
            (Verdict::Refetch, false, change @ (Change::Account(_) | Change::AccountDeauthorized { .. })) => {
                refetch.extend(change.object_id().map(str::to_string))
            }
            (Verdict::Refetch, false, _) => {}
            (Verdict::Apply, false, Change::Account(readiness)) => {
                states.insert(readiness.account.clone(), readiness_state(&readiness, created));
            }
            (Verdict::Apply, false, Change::AccountDeauthorized { account }) => {
                states.insert(account.clone(), json!({"account": account, "as_of": created, "deauthorized": true}));
            }
            (Verdict::Apply, false, Change::CustomerDeleted { customer, user_id }) => {
                let deleted = json!({"customer": customer, "user_id": user_id, "as_of": created, "deleted": true});
                customers.insert(customer, deleted);
            }
            (Verdict::Apply, false, Change::CustomerEmail { customer, user_id, email, idempotency_key }) => {
                let changed = json!({"customer": customer, "user_id": user_id, "as_of": created, "email": email,
                                     "idempotency_key": idempotency_key});
                customers.insert(customer, changed);
            }
            (Verdict::Apply, false, Change::Ignored) => {}
        }
    }
    for (account, sent_at, answer) in read.accounts {
        let state = match answer {
            Ok(object) => match AccountReadiness::from_account(&object) {
                Some(readiness) => readiness_state(&readiness, sent_at),
                None => continue,
            },
            Err(e) if account_gone(&e) => json!({"account": account, "as_of": sent_at, "deauthorized": true}),
            Err(e) => {
                warning!("onboarding: reading Connect account {account}: {e}");
                continue; // still due: read again at the next poll
            }
        };
        // A read is as new as any event of the poll before it: the later of the two wins.
        let newer = states.get(&account).is_none_or(|s| s["as_of"].as_i64() <= Some(sent_at));
        if newer {
            states.insert(account, state);
        }
    }
    *warned = false;
    if !states.is_empty() {
        let states: Vec<Value> = states.into_values().collect();
        Spi::run_with_args("SELECT onboarding._apply_account_states($1)", &[JsonB(Value::Array(states)).into()])?;
    }
    // Profiles' readiness columns, for the accounts just changed and those held at earlier polls.
    Spi::run_with_args("SELECT onboarding._write_profile_readiness($1)", &[PROFILES_WRITTEN_AT_MOST.into()])?;
    if !customers.is_empty() {
        let changes: Vec<Value> = customers.into_values().collect();
        Spi::run_with_args("SELECT onboarding._record_customer_changes($1)", &[JsonB(Value::Array(changes)).into()])?;
    }
    // Also those that waited for a locked profile at an earlier poll.
    Spi::run_with_args("SELECT onboarding._handle_customer_changes($1)", &[CUSTOMER_CHANGES_AT_MOST.into()])?;
    if !refetch.is_empty() {
        // Read at once, by the next poll: an owner may be waiting for exactly this change.
        Spi::run_with_args("SELECT onboarding._refresh_accounts($1)", &[refetch.into()])?;
        next_in = Duration::ZERO;
    }
    end_poll(cursor, applied, next_in, Some(read.read_at), lost)?;
    Ok(next_in)
}

/// The readiness as `_apply_account_states` takes it, as of `as_of` (Unix seconds).
fn readiness_state(readiness: &AccountReadiness, as_of: i64) -> Value {
    json!({
        "account": readiness.account, "as_of": as_of,
        "charges_enabled": readiness.charges_enabled, "payouts_enabled": readiness.payouts_enabled,
        "details_submitted": readiness.details_submitted,
        "requirements_currently_due": readiness.requirements_currently_due,
        "disabled_reason": readiness.disabled_reason,
    })
}

/// Events set aside unread or unapplied (an id when one is usable, and why): a WARNING each, and
/// a row of `onboarding.stripe_events_set_aside`.
fn record_set_aside(set_aside: &[(Option<String>, String)]) -> Result<(), pgrx::spi::Error> {
    if set_aside.is_empty() {
        return Ok(());
    }
    for (_, why) in set_aside {
        warning!("onboarding: skipping Stripe event {why}");
    }
    let ids: Vec<Option<String>> = set_aside.iter().map(|(id, _)| id.clone()).collect();
    let reasons: Vec<String> = set_aside.iter().map(|(_, why)| why.clone()).collect();
    Spi::run_with_args("SELECT onboarding._set_events_aside($1, $2)", &[ids.into(), reasons.into()])
}

/// The ids of `events` not applied before, now recorded as applied.
fn not_applied_before(
    events: &[(onboarding_core::inbound::InboundEvent, String)],
) -> Result<std::collections::HashSet<String>, pgrx::spi::Error> {
    let (mut ids, mut types, mut created) = (Vec::new(), Vec::new(), Vec::new());
    for (event, kind) in events {
        ids.push(event.id.clone());
        types.push(kind.clone());
        created.push(event.created);
    }
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let fresh = Spi::get_one_with_args::<Vec<String>>(
        "SELECT onboarding._events_not_applied($1, $2, $3)",
        &[ids.into(), types.into(), created.into()],
    )?;
    Ok(fresh.unwrap_or_default().into_iter().collect())
}

/// The time of the state held for each followed account the events are about.
fn stored_as_of(
    events: &[onboarding_core::inbound::InboundEvent],
) -> Result<HashMap<String, Option<i64>>, pgrx::spi::Error> {
    let accounts: Vec<String> = events.iter().filter_map(|e| e.change.object_id().map(str::to_string)).collect();
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    Spi::connect(|spi| {
        let rows = spi.select(
            "SELECT account_id, as_of FROM onboarding.connect_accounts WHERE account_id = ANY ($1)",
            None,
            &[accounts.into()],
        )?;
        let mut held = HashMap::new();
        for row in rows {
            if let Some(account) = row.get::<String>(1)? {
                held.insert(account, row.get::<i64>(2)?);
            }
        }
        Ok(held)
    })
}

fn end_poll(
    cursor: Option<(String, Option<i64>)>,
    applied: i32,
    next_in: Duration,
    read_at: Option<i64>,
    lost: bool,
) -> Result<(), pgrx::spi::Error> {
    let (id, created) = cursor.map_or((None, None), |(id, created)| (Some(id), created));
    Spi::run_with_args(
        "SELECT onboarding._events_poll_end($1, $2, $3, make_interval(secs => $4), $5, $6)",
        &[id.into(), created.into(), applied.into(), next_in.as_secs_f64().into(), read_at.into(), lost.into()],
    )
}

/// Records that an account link was issued for `account`: the next polls come at the fast
/// interval, and read the account itself until it is ready.
pub fn account_link_issued(account: &str) {
    let Some(poll) = gucs::events_poll() else { return };
    let _ = in_transaction("noting an account link", || {
        Spi::run_with_args(
            "SELECT onboarding._account_link_issued(make_interval(secs => $1), $2, make_interval(secs => $3))",
            &[poll.fast.as_secs_f64().into(), account.into(), poll.fast_for.as_secs_f64().into()],
        )
    });
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
