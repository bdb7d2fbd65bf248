//! Stripe back into Postgres, with no webhook endpoint: a worker reads Stripe's Events API from the
//! cursor in `onboarding.events_cursor` and keeps `onboarding.connect_accounts` (sql/inbound.sql)
//! in step with what Stripe says of the accounts the extension created; customers deleted or
//! given another email outside the extension go to `onboarding.customer_changes`. Writing any of
//! it to profiles (readiness columns; each table's policy for changed customers: flag or
//! recreate, audit or copy the email) is the profile writer's (profile_writer.rs), woken after the
//! apply commits: an owner's slow trigger never holds up this loop, which serves signups.
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
use std::time::{Duration, Instant, SystemTime};

use onboarding_core::inbound::{AccountReadiness, Change, SHOWN_ID_CHARS, Verdict, customer_change, parse_event, plan};
use onboarding_core::schedule::Deadline;
use onboarding_core::stripe::v2::{Account, EventsFilter, ListedThinEvent, READINESS_INCLUDE, ThinEvent, V2Readiness};
use onboarding_core::stripe::{ListedEvent, StripeClient, StripeError, account_gone, lost_event_cursor};
use pgrx::prelude::*;
use serde_json::{Value, json};

use crate::maintenance::service::{Context, Service};
use crate::pg::transaction::in_transaction;
use crate::queries::inbound::{self, Turn};
use crate::{gucs, wake};

/// The events read: accounts' readiness, and customers deleted or changed outside the extension.
pub const TYPES: &[&str] =
    &["account.updated", "account.application.deauthorized", "customer.updated", "customer.deleted"];

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

/// While a read runs in the background, how soon to look whether it finished (its answer does
/// not wake the worker's loop).
const READ_WATCH: Duration = Duration::from_millis(20);

/// The events reader: one read of Stripe's events at a time, in the background, started when
/// `onboarding._events_poll_begin` gives this worker the turn.
pub struct EventsReader {
    poll: Option<Poll>,
    /// When to ask again whether a read is due.
    next_check: Deadline,
    /// A failed read was told (once, until one succeeds).
    warned: Warned,
}

/// Which failed reads were told: v1's events, v2's thin events.
#[derive(Default)]
struct Warned {
    v1: bool,
    v2: bool,
}

impl Default for EventsReader {
    fn default() -> EventsReader {
        EventsReader { poll: None, next_check: Deadline::now(Instant::now()), warned: Warned::default() }
    }
}

impl EventsReader {
    /// An account link was issued: the next read is due sooner (the fast interval).
    pub fn read_soon(&mut self) {
        self.next_check.bring_forward(Instant::now());
    }
}

impl Service for EventsReader {
    fn run_if_due(&mut self, context: &Context) {
        if self.poll.as_ref().is_some_and(Poll::is_finished) {
            let poll = self.poll.take().expect("checked above");
            let next_in = poll.finish(context.runtime, &mut self.warned);
            self.next_check.set(Instant::now(), next_in.min(CHECK_AT_LEAST_EVERY));
        }
        if self.poll.is_some() || !self.next_check.due(context.now) {
            return;
        }
        if gucs::events_poll().is_none() {
            // Off (onboarding.events_poll_interval = 0): a reload that turns it on is seen soon.
            self.next_check.set(context.now, CHECK_AT_LEAST_EVERY);
            return;
        }
        let Some(client) = context.key.admitted(false) else { return };
        match start(context.runtime, &client) {
            Ok(poll) => self.poll = Some(poll),
            Err(ask_again_in) => self.next_check.set(context.now, ask_again_in.max(READ_WATCH)),
        }
    }

    fn next_due(&self) -> Option<Instant> {
        Some(match self.poll {
            Some(_) => Instant::now() + READ_WATCH,
            None => self.next_check.at(),
        })
    }
}

/// A poll whose requests run in the background.
struct Poll {
    reading: tokio::task::JoinHandle<Read>,
    since_link: Option<Duration>,
}

/// What a poll read from Stripe.
struct Read {
    page: Result<Page, StripeError>,
    /// When the events were read (Unix seconds).
    read_at: i64,
    /// Each account read again: when its request was sent (Unix seconds) and Stripe's answer.
    accounts: Vec<ObjectRead>,
    /// Each customer read (two of its events came in one second), as for accounts.
    customers: Vec<ObjectRead>,
    /// Each event set aside at an earlier poll, read again on its own.
    retried: Vec<(String, Result<Value, StripeError>)>,
    /// The v2 thin events, when an accounts_v2 table is attached.
    v2: Option<Result<V2Events, StripeError>>,
}

/// What a poll read of the v2 thin events (`GET /v2/core/events`). A thin event carries no
/// snapshot: applying one means reading its Account at the next poll (at once), whose answer
/// then weighs as any account read.
struct V2Events {
    /// The events about Accounts since the cursor, as listed.
    events: Vec<ListedThinEvent>,
    /// Where the cursor goes (Unix milliseconds).
    since: i64,
    /// What happened before these events is not in them (the first read, a cursor past Stripe's 30
    /// days, more than a poll reads): every v2 Account is read again.
    refresh_all: bool,
}

/// An object read from Stripe: its id, when the request was sent (Unix seconds), the answer.
type ObjectRead = (String, i64, Result<Value, StripeError>);

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
fn start(runtime: &tokio::runtime::Runtime, client: &StripeClient) -> Result<Poll, Duration> {
    let every = gucs::events_poll().map_or(Duration::from_secs(3600), |p| p.every);
    let taken = in_transaction("taking the events poll", || inbound::poll_begin(REFRESH_AT_MOST, every));
    let Turn {
        last_event_id: cursor,
        accounts_to_refresh: accounts,
        since_link,
        last_polled_at,
        events_to_retry,
        customers_to_refresh: customers,
        read_v2_events,
        v2_events_since,
        v2_accounts_to_refresh: v2_accounts,
        ..
    } = match taken {
        Ok(Ok(turn)) if turn.polling => turn,
        Ok(Ok(turn)) => return Err(turn.due_in.min(CHECK_AT_LEAST_EVERY)),
        // Not installed at this release yet, or a standby: ask again later.
        _ => return Err(CHECK_AT_LEAST_EVERY),
    };
    let client = client.clone();
    // Each request waits for the rate budgets, behind every signup's (the client's admission).
    let reading = runtime.spawn(async move {
        let read_at = unix_now();
        // Without a cursor, every event since the last poll that read (a margin for Stripe's
        // clock; ids already applied are skipped), so that none between two polls is missed.
        // Stripe lists them newest first: each page is a request of its own for the budget.
        let since = |lost| {
            let client = &client;
            async move {
                let Some(polled_at) = last_polled_at else {
                    return client.newest_event(TYPES).await.map(|newest| Page::Start { newest, lost });
                };
                // Stripe keeps 30 days: a last poll further back than that misses some.
                let lost = lost || unix_now() - polled_at > RETENTION_SECS - CLOCK_MARGIN_SECS;
                let (mut events, mut more) = (Vec::<ListedEvent>::new(), true);
                for _ in 0..SINCE_PAGES_AT_MOST {
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
                Err(e) if lost_event_cursor(&e) => since(true).await,
                read => read.map(|(events, more)| Page::After(events, more)),
            },
        };
        let (mut read_accounts, mut read_customers, mut retried) = (Vec::new(), Vec::new(), Vec::new());
        let v2 = match read_v2_events {
            true => Some(read_v2_events_since(&client, v2_events_since).await),
            false => None,
        };
        if page.is_ok() {
            for account in accounts {
                let sent_at = unix_now();
                let answer = if v2_accounts.contains(&account) {
                    // A v2 Account answers `closed: true` while Stripe keeps it, then 404: gone
                    // either way, and read as closed.
                    match client.v2().retrieve_account(&account, &READINESS_INCLUDE).await {
                        Err(StripeError::Api(e)) if e.status == 404 => {
                            Ok(json!({"object": "v2.core.account", "id": account, "closed": true}))
                        }
                        answer => answer,
                    }
                } else {
                    client.retrieve_account(&account).await
                };
                read_accounts.push((account, sent_at, answer));
            }
            for customer in customers {
                let sent_at = unix_now();
                // An accounts_v2 profile's customer is its Account (v2 ids are acct_, customers cus_).
                let answer = if customer.starts_with("acct_") {
                    client.v2().retrieve_account(&customer, &[]).await
                } else {
                    client.retrieve_customer(&customer).await
                };
                read_customers.push((customer, sent_at, answer));
            }
            for event in events_to_retry {
                let answer = client.retrieve_event(&event).await;
                retried.push((event, answer));
            }
        }
        Read { page, read_at, accounts: read_accounts, customers: read_customers, retried, v2 }
    });
    Ok(Poll { reading, since_link })
}

impl Poll {
    fn is_finished(&self) -> bool {
        self.reading.is_finished()
    }

    /// Applies what the poll read (call once [`Poll::is_finished`]) and returns when to ask again
    /// whether a poll is due; `warned` says a failed read was already told. The page is applied in
    /// one transaction; if anything in it fails, again one event (and one object read) at a time,
    /// each in its own transaction, and what fails alone is set aside: one event never stops the
    /// cursor or any other event.
    fn finish(self, runtime: &tokio::runtime::Runtime, warned: &mut Warned) -> Duration {
        let Poll { reading, since_link } = self;
        let Ok(mut read) = runtime.block_on(reading) else {
            return CHECK_AT_LEAST_EVERY; // the task panicked: the turn lapses in a minute
        };
        let interval = gucs::events_poll().map_or(Duration::from_secs(3600), |p| p.next_poll_in(since_link));
        // The v2 thin events first, in a transaction of their own: they only mark Accounts to
        // read, and neither they nor v1's events can hold up the other.
        let v2_next_in = read.v2.take().map_or(interval, |v2| apply_v2_events(v2, interval, &mut warned.v2));
        finish_v1(read, interval, &mut warned.v1).min(v2_next_in)
    }
}

/// [`Poll::finish`] for v1's events and every object read.
fn finish_v1(read: Read, interval: Duration, warned: &mut bool) -> Duration {
    let page = match &read.page {
        Ok(page) => PageRead::of(page),
        Err(error) => {
            if !*warned {
                warning!("onboarding: could not read Stripe's events: {error}; trying again every {interval:?}");
                *warned = true;
            }
            let _ = in_transaction("ending the events poll", || inbound::poll_end(None, 0, interval, None, false));
            return interval;
        }
    };
    *warned = false;
    if page.lost {
        warning!(
            "onboarding: Stripe no longer holds the events after the stored cursor (it keeps 30 days): \
                 reading the events since the last poll that Stripe still has, and every followed account"
        );
    }
    let objects = Objects { accounts: &read.accounts, customers: &read.customers, retried: &read.retried };
    let together = in_transaction("applying Stripe's events", || {
        let applied = apply(page.events, &objects)?;
        end(&page, applied, interval, read.read_at)
    });
    match together {
        Ok(Ok(next_in)) => return next_in,
        Ok(Err(e)) => warning!("onboarding: applying Stripe's events: {e}; applying them one at a time"),
        Err(_) => warning!("onboarding: applying Stripe's events one at a time"),
    }
    let mut applied = Applied::default();
    for event in page.events {
        match in_transaction("applying a Stripe event", || apply(std::slice::from_ref(event), &Objects::NONE)) {
            Ok(Ok(one)) => applied.add(one),
            failed => set_aside_alone(event.cursor(), &failed),
        }
    }
    for retried in &read.retried {
        let alone = Objects { retried: std::slice::from_ref(retried), ..Objects::NONE };
        match in_transaction("applying a Stripe event read again", || apply(&[], &alone)) {
            Ok(Ok(one)) => applied.add(one),
            failed => set_aside_alone(Some(&retried.0), &failed),
        }
    }
    for (list, accounts) in [(&read.accounts, true), (&read.customers, false)] {
        for object in list {
            let alone = std::slice::from_ref(object);
            let objects = if accounts {
                Objects { accounts: alone, ..Objects::NONE }
            } else {
                Objects { customers: alone, ..Objects::NONE }
            };
            // One that fails stays due: read again at the next poll.
            if let Ok(Ok(one)) = in_transaction("applying a Stripe object read", || apply(&[], &objects)) {
                applied.add(one);
            }
        }
    }
    match in_transaction("ending the events poll", || end(&page, applied, interval, read.read_at)) {
        Ok(Ok(next_in)) => next_in,
        _ => interval,
    }
}

/// Reads the v2 thin events about Accounts since `since` (Unix milliseconds; ids applied before
/// are skipped, so the cursor's own millisecond is read again), newest first as Stripe lists
/// them, at most [`SINCE_PAGES_AT_MOST`] pages. Without a cursor, or with one past Stripe's 30
/// days, none are read: the cursor starts now and every v2 Account is read itself.
async fn read_v2_events_since(client: &StripeClient, since: Option<i64>) -> Result<V2Events, StripeError> {
    let now_ms = unix_now() * 1000;
    let margin_ms = CLOCK_MARGIN_SECS * 1000;
    let Some(since) = since.filter(|since| now_ms - since < (RETENTION_SECS - CLOCK_MARGIN_SECS) * 1000) else {
        return Ok(V2Events { events: Vec::new(), since: now_ms - margin_ms, refresh_all: true });
    };
    let v2 = client.v2();
    let mut filter = EventsFilter::accounts();
    // An Account's creation is this extension's own doing (a signup's): nothing to read back, and
    // recording each one as applied would cost every signup a row.
    filter.types.retain(|t| t != "v2.core.account.created");
    filter.created.gte = Some(since);
    let mut page = v2.list_events(&filter).await?;
    let mut events = std::mem::take(&mut page.data);
    let mut pages = 1;
    while let Some(next) = page.next.take() {
        if pages == SINCE_PAGES_AT_MOST {
            // The newest are read; what came between the cursor and them, from the Accounts.
            return Ok(V2Events { since: newest(&events).unwrap_or(since), events, refresh_all: true });
        }
        page = v2.next_events_page(&next).await?;
        events.append(&mut page.data);
        pages += 1;
    }
    Ok(V2Events { since: newest(&events).unwrap_or(since), events, refresh_all: false })
}

/// The v2 thin events that can change what an Account says as a customer: its contact email
/// (`updated`), its existence (`closed`).
const CUSTOMER_CHANGE_TYPES: [&str; 2] = ["v2.core.account.updated", "v2.core.account.closed"];

/// The newest `created` (Unix milliseconds) among the events read.
fn newest(events: &[ListedThinEvent]) -> Option<i64> {
    events
        .iter()
        .filter_map(|e| match e {
            ListedThinEvent::Event(event) => Some(event.created_ms),
            ListedThinEvent::Malformed(_) => None,
        })
        .max()
}

/// Applies the v2 thin events read (in a transaction of its own): each one not applied before
/// marks its Account to be read at the next poll, which comes at once: a followed connected
/// Account for its readiness; an accounts_v2 profile's Account changed outside the extension for
/// its table's change policy. One that cannot be used is set aside (never read again: only v1's
/// events are). If applying fails, the cursor moves on and every v2 Account is read instead.
/// Returns when to poll next.
fn apply_v2_events(read: Result<V2Events, StripeError>, interval: Duration, warned: &mut bool) -> Duration {
    let read = match read {
        Ok(read) => read,
        Err(error) => {
            if !*warned {
                warning!("onboarding: could not read Stripe's v2 events: {error}; trying again every {interval:?}");
                *warned = true;
            }
            return interval;
        }
    };
    *warned = false;
    let applied = in_transaction("applying Stripe's v2 events", || -> Result<bool, pgrx::spi::Error> {
        let (mut usable, mut set_aside): (Vec<&ThinEvent>, Vec<(Option<String>, String)>) = (Vec::new(), Vec::new());
        for listed in &read.events {
            match listed {
                ListedThinEvent::Event(event) => usable.push(event),
                ListedThinEvent::Malformed(malformed) => set_aside.push((
                    malformed.id.clone(),
                    format!("{}: {}", malformed.id.as_deref().unwrap_or("(unusable id)"), malformed.why),
                )),
            }
        }
        record_set_aside(&set_aside, false)?;
        let ids: Vec<String> = usable.iter().map(|e| e.id.clone()).collect();
        let types: Vec<String> = usable.iter().map(|e| e.event_type.clone()).collect();
        let created: Vec<i64> = usable.iter().map(|e| e.created_ms.div_euclid(1000)).collect();
        let fresh = if ids.is_empty() { Vec::new() } else { inbound::events_not_applied(ids, types, created)? };
        let fresh: Vec<&ThinEvent> = usable.into_iter().filter(|e| fresh.contains(&e.id)).collect();
        let accounts: Vec<String> = fresh.iter().filter_map(|e| e.account().map(str::to_string)).collect();
        let mut any = !accounts.is_empty();
        if any {
            inbound::refresh_accounts(Some(accounts))?;
        }
        // An Account that is a profile's customer, changed or closed outside the extension.
        let (changed, keys): (Vec<String>, Vec<Option<String>>) = fresh
            .iter()
            .filter(|e| CUSTOMER_CHANGE_TYPES.contains(&e.event_type.as_str()))
            .filter_map(|e| Some((e.account()?.to_string(), e.idempotency_key.clone())))
            .unzip();
        if !changed.is_empty() {
            any |= inbound::v2_customers_changed(changed, keys)? > 0;
        }
        inbound::v2_events_read(read.since, read.refresh_all)?;
        Ok(any || read.refresh_all)
    });
    match applied {
        Ok(Ok(true)) => Duration::ZERO,
        Ok(Ok(false)) => interval,
        failed => {
            // Never stuck on one event: the cursor moves on, and every v2 Account is read itself
            // instead, which misses nothing its events could have said.
            if let Ok(Err(e)) = failed {
                warning!("onboarding: applying Stripe's v2 events: {e}; reading every v2 Account instead");
            }
            let moved = in_transaction("moving the v2 events cursor", || inbound::v2_events_read(read.since, true));
            if matches!(moved, Ok(Ok(()))) { Duration::ZERO } else { interval }
        }
    }
}

/// What a page of a poll says: the events to apply, whether more follow, and where the cursor goes.
struct PageRead<'a> {
    events: &'a [ListedEvent],
    more: bool,
    /// Stripe no longer held the events after the cursor.
    lost: bool,
    /// What happened before the events read is not in them (the first poll, or more came since
    /// the last poll than were read): it is read from the accounts themselves.
    unread_before: bool,
    cursor: Option<(String, Option<i64>)>,
}

impl<'a> PageRead<'a> {
    fn of(page: &'a Page) -> PageRead<'a> {
        let (events, more, lost, unread_before, mut cursor) = match page {
            Page::After(events, more) => (events.as_slice(), *more, false, false, None),
            Page::Since { events, lost, truncated } => (events.as_slice(), false, *lost, *truncated, None),
            Page::Start { newest, lost } => (&[][..], false, *lost, true, newest.clone().map(|id| (id, None))),
        };
        // Never a huge or malformed id as the cursor: every later read would fail on it.
        if let Some((id, last)) = events.iter().rev().find_map(|e| Some((e.cursor()?, e))) {
            let created = match last {
                ListedEvent::Read(event) => event["created"].as_i64(),
                ListedEvent::Unreadable(_) => None,
            };
            cursor = Some((id.to_string(), created));
        }
        PageRead { events, more, lost, unread_before, cursor }
    }
}

/// What a poll read of objects themselves, and the events set aside read again.
struct Objects<'a> {
    accounts: &'a [ObjectRead],
    customers: &'a [ObjectRead],
    retried: &'a [(String, Result<Value, StripeError>)],
}

impl Objects<'_> {
    const NONE: Objects<'static> = Objects { accounts: &[], customers: &[], retried: &[] };
}

/// What an apply did: events newly applied, and accounts to read again (same-second events).
#[derive(Default)]
struct Applied {
    events: i32,
    refetch: Vec<String>,
}

impl Applied {
    fn add(&mut self, other: Applied) {
        self.events += other.events;
        self.refetch.extend(other.refetch);
    }
}

/// Ends the poll: what the page leaves unknown is read from the accounts at the next poll, the
/// cursor moves, and the next poll is due (at once when more waits). Returns when.
fn end(page: &PageRead, applied: Applied, interval: Duration, read_at: i64) -> Result<Duration, pgrx::spi::Error> {
    let mut next_in = if page.more { Duration::ZERO } else { interval };
    if page.lost || page.unread_before {
        inbound::refresh_accounts(None)?;
    }
    if !applied.refetch.is_empty() {
        // Read at once, by the next poll: an owner may be waiting for exactly this change.
        inbound::refresh_accounts(Some(applied.refetch))?;
        next_in = Duration::ZERO;
    }
    inbound::poll_end(page.cursor.clone(), applied.events, next_in, Some(read_at), page.lost)?;
    Ok(next_in)
}

/// An event (or one read again) that failed alone: set aside, said, read again later.
fn set_aside_alone<T>(id: Option<&str>, failed: &Result<Result<T, pgrx::spi::Error>, String>) {
    let why = match failed {
        Ok(Err(e)) => e.to_string(),
        Err(message) => message.clone(),
        Ok(Ok(_)) => return,
    };
    let shown = id.map_or_else(|| "(unusable id)".to_string(), |id| id.chars().take(SHOWN_ID_CHARS).collect());
    let reason = format!("{shown}: applying it failed: {}", why.chars().take(200).collect::<String>());
    let _ = in_transaction("setting a Stripe event aside", || {
        record_set_aside(&[(id.map(str::to_string), reason.clone())], true)
    });
}

/// Applies events (a page, or one of it), objects read and events read again, in the caller's
/// transaction; the poll's end is [`end`]'s.
fn apply(events: &[ListedEvent], objects: &Objects) -> Result<Applied, pgrx::spi::Error> {
    let mut states: HashMap<String, Value> = HashMap::new();
    let mut customers: HashMap<String, Value> = HashMap::new();
    let mut refetch: Vec<String> = Vec::new();
    // One event that cannot be read or applied safely (bytes that are not UTF-8, a NUL, a 3 kB
    // id) is set aside, said and recorded; it never stops its page, the cursor or anyone else.
    let mut readable = Vec::with_capacity(events.len() + objects.retried.len());
    let (mut set_aside, mut gone) = (Vec::new(), Vec::new());
    let retried = objects.retried.iter().filter_map(|(id, answer)| match answer {
        Ok(event) => Some((Some(id.as_str()), ListedEvent::Read(event.clone()))),
        Err(e) => {
            // Stripe no longer has it (past its 30 days): nothing left to read.
            let missing = matches!(e, StripeError::Api(api) if api.status == 404);
            let entry = (Some(id.clone()), format!("{id}: reading it again failed: {e}"));
            if missing {
                gone.push(entry)
            } else {
                set_aside.push(entry)
            }
            None
        }
    });
    // Those set aside earlier first: they are older than the page.
    let all: Vec<(Option<&str>, ListedEvent)> = retried.chain(events.iter().map(|e| (e.cursor(), e.clone()))).collect();
    for (id, event) in &all {
        match event {
            ListedEvent::Read(value) => match parse_event(value) {
                // Its type was checked by parse_event: safe to store.
                Ok(parsed) => readable.push((parsed, value["type"].as_str().unwrap_or_default().to_string())),
                Err(malformed) => {
                    set_aside.push((id.map(str::to_string).or(malformed.id.clone()), malformed.to_string()))
                }
            },
            ListedEvent::Unreadable(unreadable) => {
                set_aside.push((Some(unreadable.id.clone()), format!("{}: {}", unreadable.id, unreadable.why)))
            }
        }
    }
    record_set_aside(&set_aside, true)?;
    record_set_aside(&gone, false)?;
    let fresh = not_applied_before(&readable)?;
    let parsed = readable.into_iter().map(|(e, _)| e).filter(|e| fresh.contains(&e.id)).collect::<Vec<_>>();
    let applied = parsed.len() as i32;
    let as_of = stored_as_of(&parsed)?;
    for step in plan(parsed, |object| as_of.get(object).copied().flatten()) {
        let created = step.event.created;
        match (step.verdict, step.superseded, step.event.change) {
            (Verdict::Stale, ..) | (_, true, _) => {}
            // Accounts are read again, by the next poll.
            (Verdict::Refetch, false, change @ (Change::Account(_) | Change::AccountDeauthorized { .. })) => {
                refetch.extend(change.object_id().map(str::to_string))
            }
            // A customer's email as this event says (the later-listed of its second), and the
            // customer read by the next poll, which settles which came last.
            (
                verdict @ (Verdict::Apply | Verdict::Refetch),
                false,
                Change::CustomerEmail { customer, user_id, email, idempotency_key },
            ) => {
                let changed = json!({"customer": customer, "user_id": user_id, "as_of": created, "email": email,
                                     "idempotency_key": idempotency_key, "refresh": verdict == Verdict::Refetch});
                customers.insert(customer, changed);
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
            (Verdict::Apply, false, Change::Ignored) => {}
        }
    }
    for (account, sent_at, answer) in objects.accounts {
        let state = match answer {
            Ok(object) => match account_state(object, *sent_at) {
                Some(state) => state,
                None => continue,
            },
            Err(e) if account_gone(e) => json!({"account": account, "as_of": sent_at, "deauthorized": true}),
            Err(e) => {
                warning!("onboarding: reading Connect account {account}: {e}");
                continue; // still due: read again at the next poll
            }
        };
        // A read is as new as any event of the poll before it: the later of the two wins.
        if states.get(account).is_none_or(|s| s["as_of"].as_i64() <= Some(*sent_at)) {
            states.insert(account.clone(), state);
        }
    }
    for (customer, sent_at, answer) in objects.customers {
        let deleted = json!({"customer": customer, "as_of": sent_at, "deleted": true, "refreshed": true});
        let read = match answer {
            // An accounts_v2 profile's Account read as its customer: closed is deleted.
            Ok(object) if object.get("object").and_then(Value::as_str) == Some("v2.core.account") => {
                match Account::from_json(object) {
                    Some(account) if !account.closed => {
                        json!({"customer": customer, "user_id": account.metadata_user_id,
                        "as_of": sent_at, "email": account.contact_email, "refreshed": true})
                    }
                    _ => deleted,
                }
            }
            Ok(object) => match customer_change(object) {
                Ok(Change::CustomerEmail { user_id, email, .. }) => {
                    json!({"customer": customer, "user_id": user_id, "as_of": sent_at, "email": email, "refreshed": true})
                }
                Ok(_) => deleted,
                Err(malformed) => {
                    // What its events said stands; reading it again would say the same.
                    warning!("onboarding: reading customer {customer} again: {malformed}");
                    json!({"customer": customer, "as_of": sent_at, "refreshed": true})
                }
            },
            Err(StripeError::Api(e)) if e.status == 404 => deleted,
            Err(e) => {
                warning!("onboarding: reading customer {customer}: {e}");
                continue; // still due: read again at the next poll
            }
        };
        if customers.get(customer).is_none_or(|c| c["as_of"].as_i64() <= Some(*sent_at)) {
            customers.insert(customer.clone(), read);
        }
    }
    if !states.is_empty() || !customers.is_empty() {
        // Profiles' readiness columns and the tables' change policies: the profile writer's work
        // (profile_writer.rs), never this loop's, which serves signups.
        wake::wake_profile_writer_after_commit();
    }
    if !states.is_empty() {
        inbound::apply_account_states(states.into_values().collect())?;
    }
    if !customers.is_empty() {
        inbound::record_customer_changes(customers.into_values().collect())?;
    }
    Ok(Applied { events: applied, refetch })
}

/// What an account read says, as `_apply_account_states` takes it: a v1 account's readiness, or a
/// v2 Account's in v1's words (core's `V2Readiness`; a closed Account is as a disconnected one:
/// never ready again). None for an answer that is neither.
fn account_state(object: &Value, as_of: i64) -> Option<Value> {
    if let Some(readiness) = AccountReadiness::from_account(object) {
        return Some(readiness_state(&readiness, as_of));
    }
    let v2 = V2Readiness::from_account(object)?;
    if v2.closed {
        return Some(json!({"account": v2.account, "as_of": as_of, "deauthorized": true}));
    }
    Some(readiness_state(&AccountReadiness::from(v2), as_of))
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
/// a row of `onboarding.stripe_events_set_aside`, read again later if `retry`.
fn record_set_aside(set_aside: &[(Option<String>, String)], retry: bool) -> Result<(), pgrx::spi::Error> {
    if set_aside.is_empty() {
        return Ok(());
    }
    for (_, why) in set_aside {
        warning!("onboarding: skipping Stripe event {why}");
    }
    let ids: Vec<Option<String>> = set_aside.iter().map(|(id, _)| id.clone()).collect();
    let reasons: Vec<String> = set_aside.iter().map(|(_, why)| why.clone()).collect();
    inbound::set_events_aside(ids, reasons, retry)
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
    Ok(inbound::events_not_applied(ids, types, created)?.into_iter().collect())
}

/// The time of the state held for each followed account and each customer's email the events are
/// about.
fn stored_as_of(
    events: &[onboarding_core::inbound::InboundEvent],
) -> Result<HashMap<String, Option<i64>>, pgrx::spi::Error> {
    let accounts: Vec<String> = events.iter().filter_map(|e| e.change.object_id().map(str::to_string)).collect();
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    inbound::held_as_of(accounts)
}

/// Records that an account link was issued for `account`: the next polls come at the fast
/// interval, and read the account itself until it is ready.
pub fn account_link_issued(account: &str) {
    let Some(poll) = gucs::events_poll() else { return };
    let _ =
        in_transaction("noting an account link", || inbound::account_link_issued(poll.fast, account, poll.fast_for));
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
