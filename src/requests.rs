//! `onboarding.get_or_create_customer` and `onboarding.create_account_link`: synchronous paths to
//! the worker (which alone holds the Stripe key) that do not depend on the caller's commit.
//!
//! A job row the caller inserted would stay invisible to the worker until the caller commits, so
//! "enqueue and wait" in one call could only time out. Instead the caller leaves a request in a
//! shared-memory slot and waits on its latch; a worker enqueues (or joins) the profile's job in
//! its own transaction, lets the queue run it as usual, and writes the outcome back to the slot.

use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::{PGRXSharedMemory, PgLwLock, pg_shmem_init};

use crate::pg::latch::{my_procno, set_latch_of, wait_on_my_latch};
use crate::pg::processes::{self, shared_memory_ready};
use crate::queries::maintenance;

const SLOTS: usize = 32;
const MAX_TEXT: usize = 512;

/// What the caller wants back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestKind {
    /// The profile's customer id (its creation job run or joined first, if needed).
    Customer,
    /// An `account_onboarding` link for the profile's Connect account (created first if the
    /// policy allows).
    AccountLink,
    /// A fresh copy of every customer and account in Stripe (`onboarding.stripe_objects`), for
    /// the audits; the answer is the snapshot id.
    Snapshot,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for a worker to enqueue the job.
    Requested,
    /// A worker is enqueueing it.
    Accepting,
    /// The job exists (`job_id`); waiting for it to finish.
    Accepted,
    /// `result` holds the customer id.
    Done,
    /// `result` holds the reason.
    Failed,
}

#[derive(Clone, Copy)]
struct FixedText {
    len: u16,
    bytes: [u8; MAX_TEXT],
}

impl FixedText {
    fn new(text: &str) -> FixedText {
        // Cut at a character boundary; callers check lengths that matter beforehand.
        let mut end = text.len().min(MAX_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; MAX_TEXT];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        FixedText { len: end as u16, bytes }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

#[derive(Clone, Copy)]
struct Slot {
    kind: RequestKind,
    /// The caller's database: only its workers take the request.
    database: pg_sys::Oid,
    state: SlotState,
    /// Unique per request, so a worker never writes into a slot its caller gave up and reused.
    ticket: u64,
    requester_procno: i32,
    table: pg_sys::Oid,
    job_id: i64,
    user_id: FixedText,
    refresh_url: FixedText,
    return_url: FixedText,
    result: FixedText,
}

pub struct Requests {
    next_ticket: u64,
    slots: [Slot; SLOTS],
}

// SAFETY: plain data, no pointers: valid in every process that maps the segment.
unsafe impl PGRXSharedMemory for Requests {}

impl Default for Requests {
    fn default() -> Self {
        let free = Slot {
            kind: RequestKind::Customer,
            database: pg_sys::Oid::INVALID,
            state: SlotState::Free,
            ticket: 0,
            requester_procno: -1,
            table: pg_sys::Oid::INVALID,
            job_id: 0,
            user_id: FixedText::new(""),
            refresh_url: FixedText::new(""),
            return_url: FixedText::new(""),
            result: FixedText::new(""),
        };
        Requests { next_ticket: 1, slots: [free; SLOTS] }
    }
}

static REQUESTS: PgLwLock<Requests> = unsafe { PgLwLock::new(c"onboarding_requests") };

pub fn init_shared_memory() {
    pg_shmem_init!(REQUESTS);
}

/// A request in a slot; dropping it (return, error or cancel) frees the slot.
struct Pending {
    slot: usize,
    ticket: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut requests = REQUESTS.exclusive();
        let slot = &mut requests.slots[self.slot];
        if slot.ticket == self.ticket {
            slot.state = SlotState::Free;
        }
    }
}

/// Called by `onboarding.get_or_create_customer` (sql/api.sql) for a committed profile
/// without a customer. Waits up to `wait_ms` for the worker and returns the customer id.
#[pg_extern(name = "_request_customer", volatile, parallel_unsafe)]
fn request_customer(profile_table: pg_sys::Oid, user_id: &str, wait_ms: i32) -> String {
    request(RequestKind::Customer, profile_table, user_id, ["", ""], wait_ms)
}

/// Called by `onboarding.refresh_stripe_snapshot`: returns the id of the finished snapshot,
/// reporting progress as NOTICEs while the worker pages through Stripe.
#[pg_extern(name = "_request_snapshot", volatile, parallel_unsafe)]
fn request_snapshot(wait_ms: i32) -> i64 {
    let answer = request(RequestKind::Snapshot, pg_sys::Oid::INVALID, "", ["", ""], wait_ms);
    answer.parse().unwrap_or_else(|_| error!("onboarding: unexpected snapshot answer {answer:?}"))
}

/// Called by `onboarding.create_account_link`: returns a fresh account-onboarding URL.
#[pg_extern(name = "_request_account_link", volatile, parallel_unsafe)]
fn request_account_link(
    profile_table: pg_sys::Oid,
    user_id: &str,
    refresh_url: &str,
    return_url: &str,
    wait_ms: i32,
) -> String {
    request(RequestKind::AccountLink, profile_table, user_id, [refresh_url, return_url], wait_ms)
}

fn request(kind: RequestKind, profile_table: pg_sys::Oid, user_id: &str, urls: [&str; 2], wait_ms: i32) -> String {
    if !shared_memory_ready() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "onboarding: the background worker is not running",
            "Add onboarding to shared_preload_libraries and restart PostgreSQL."
        );
    }
    // Workers run on the primary only: a standby would let the caller wait out wait_ms for nothing.
    if unsafe { pg_sys::RecoveryInProgress() } {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "onboarding: read-only standby: run this on the primary",
            "The workers that call Stripe run on the primary only; send this call to a read-write connection."
        );
    }
    if user_id.len() > MAX_TEXT || urls.iter().any(|u| u.len() > MAX_TEXT) {
        ereport!(ERROR, PgSqlErrorCode::ERRCODE_STRING_DATA_RIGHT_TRUNCATION, "onboarding: an argument is too long");
    }
    let what = match kind {
        RequestKind::Customer => "a Stripe customer",
        RequestKind::AccountLink => "a Connect account link",
        RequestKind::Snapshot => "a snapshot of Stripe's customers and accounts",
    };
    let mut last_progress = String::new();
    let pending = submit(kind, profile_table, user_id, urls);
    processes::set_worker_latches();
    let deadline = Instant::now() + Duration::from_millis(wait_ms.max(0) as u64);
    loop {
        let (state, job_id, result) = {
            let requests = REQUESTS.share();
            let slot = &requests.slots[pending.slot];
            (slot.state, slot.job_id, slot.result.as_str().to_string())
        };
        match state {
            SlotState::Done => return result,
            SlotState::Failed => {
                ereport!(
                    ERROR,
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("onboarding: could not get {what} for user {user_id}: {result}"),
                    "See onboarding.profile_status() and onboarding.events; fix the cause, then onboarding.retry(job_id)."
                );
            }
            _ => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let job = if job_id > 0 { format!("job {job_id}") } else { "the worker".into() };
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!("onboarding: timed out after {wait_ms} ms waiting for {job} to get {what} for user {user_id}"),
                "The job goes on in the background: call again later, or follow onboarding.job_status(job_id)."
            );
        }
        if kind == RequestKind::Snapshot {
            report_snapshot_progress(&mut last_progress);
        }
        wait_on_my_latch(left.min(Duration::from_millis(100)));
    }
}

/// Progress of a long snapshot, as committed page by page by the worker.
fn report_snapshot_progress(last: &mut String) {
    let progress = maintenance::snapshot_progress();
    if let Ok(Some(progress)) = progress
        && progress != *last
    {
        notice!("onboarding: reading Stripe: {progress}");
        *last = progress;
    }
}

fn submit(kind: RequestKind, profile_table: pg_sys::Oid, user_id: &str, urls: [&str; 2]) -> Pending {
    let mut requests = REQUESTS.exclusive();
    let Some(index) = requests.slots.iter().position(|s| s.state == SlotState::Free) else {
        drop(requests);
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("onboarding: {SLOTS} get_or_create_customer calls are already waiting"),
            "Retry shortly, or use onboarding.enqueue_customer() and poll onboarding.job_status()."
        );
    };
    let ticket = requests.next_ticket;
    requests.next_ticket += 1;
    requests.slots[index] = Slot {
        kind,
        database: unsafe { pg_sys::MyDatabaseId },
        state: SlotState::Requested,
        ticket,
        requester_procno: my_procno(),
        table: profile_table,
        job_id: 0,
        user_id: FixedText::new(user_id),
        refresh_url: FixedText::new(urls[0]),
        return_url: FixedText::new(urls[1]),
        result: FixedText::new(""),
    };
    Pending { slot: index, ticket }
}

// ------------------------------------------------------------------------------------------------
// The worker's side
// ------------------------------------------------------------------------------------------------

/// A request a worker has taken on: enqueue its job, then [`accept`] or [`fail`] it.
#[derive(Clone)]
pub struct Request {
    pub ticket: u64,
    pub kind: RequestKind,
    pub table: pg_sys::Oid,
    pub user_id: String,
    pub refresh_url: String,
    pub return_url: String,
}

impl Request {
    fn of(slot: &Slot) -> Request {
        Request {
            ticket: slot.ticket,
            kind: slot.kind,
            table: slot.table,
            user_id: slot.user_id.as_str().into(),
            refresh_url: slot.refresh_url.as_str().into(),
            return_url: slot.return_url.as_str().into(),
        }
    }
}

/// Takes the requests no worker has taken yet.
pub fn take_new() -> Vec<Request> {
    let mut requests = REQUESTS.exclusive();
    let mut taken = Vec::new();
    let here = unsafe { pg_sys::MyDatabaseId };
    for slot in requests.slots.iter_mut().filter(|s| s.state == SlotState::Requested && s.database == here) {
        slot.state = SlotState::Accepting;
        taken.push(Request::of(slot));
    }
    taken
}

/// Accepted requests with their jobs, to watch until the jobs finish.
pub fn watched() -> Vec<(Request, i64)> {
    let requests = REQUESTS.share();
    let here = unsafe { pg_sys::MyDatabaseId };
    requests
        .slots
        .iter()
        .filter(|s| s.state == SlotState::Accepted && s.database == here)
        .map(|s| (Request::of(s), s.job_id))
        .collect()
}

pub fn accept(ticket: u64, job_id: i64) {
    settle(ticket, |slot| {
        slot.state = SlotState::Accepted;
        slot.job_id = job_id;
        false
    });
}

pub fn succeed(ticket: u64, answer: &str) {
    settle(ticket, |slot| {
        slot.state = SlotState::Done;
        slot.result = FixedText::new(answer);
        true
    });
}

pub fn fail(ticket: u64, reason: &str) {
    settle(ticket, |slot| {
        slot.state = SlotState::Failed;
        slot.result = FixedText::new(reason);
        true
    });
}

/// Updates the slot holding `ticket` (if its caller still waits) and wakes the caller if asked.
fn settle(ticket: u64, update: impl FnOnce(&mut Slot) -> bool) {
    let requester = {
        let mut requests = REQUESTS.exclusive();
        let Some(slot) = requests.slots.iter_mut().find(|s| s.ticket == ticket && s.state != SlotState::Free) else {
            return;
        };
        update(slot).then_some(slot.requester_procno)
    };
    if let Some(procno) = requester {
        set_latch_of(procno);
    }
}
