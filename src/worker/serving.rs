//! Requests from SQL sessions, served between the loop's steps (requests.rs is the channel):
//! `get_or_create_customer` and `create_account_link` are answered at once when the profile has
//! the object, else enqueue or join its job and are answered when it finishes; a snapshot for the
//! audits is taken here (maintenance/snapshot.rs), since only workers hold the key.

use std::time::Instant;

use onboarding_core::state::JobState;
use pgrx::prelude::*;

use crate::maintenance::events;
use crate::maintenance::snapshot::take_snapshot;
use crate::pg::transaction::in_transaction;
use crate::queries::jobs::{self, TakenOn};
use crate::requests::{self, RequestKind};
use crate::worker::Worker;
use crate::worker::record;

impl Worker {
    /// Takes on new get_or_create_customer / create_account_link requests: answers at once what
    /// can be (the profile already has the object), else enqueues or joins the job, in our own
    /// transaction, and watches it.
    pub(super) fn serve_new_requests(&mut self) {
        for request in requests::take_new() {
            if self.key.current().is_none() {
                requests::fail(request.ticket, "onboarding.stripe_api_key is not set");
                continue;
            }
            if request.kind == RequestKind::AccountLink && self.key.held_back().connect {
                requests::fail(request.ticket, &format!("no account link: {}", record::CONNECT_REFUSED));
                continue;
            }
            if request.kind == RequestKind::Snapshot {
                let client = self.key.admitted(false).expect("requests are refused without a client");
                take_snapshot(request.ticket, &self.runtime, &client);
                continue;
            }
            let found = in_transaction("taking on a request", || {
                jobs::take_on_request(request.kind, request.table, &request.user_id)
            });
            match found {
                Ok(Ok(TakenOn::Exists(object))) => self.answer(&request, &object),
                Ok(Ok(TakenOn::Job(job))) => requests::accept(request.ticket, job),
                Ok(Ok(TakenOn::Refused(refusal))) => {
                    requests::fail(request.ticket, refusal.as_deref().unwrap_or("no job was enqueued"))
                }
                Ok(Err(e)) => requests::fail(request.ticket, &e.to_string()),
                Err(message) => requests::fail(request.ticket, &message),
            }
        }
    }

    /// Answers a request whose Stripe object exists: the id itself, or a fresh account link
    /// (made here, outside any transaction; links are single-use and never stored).
    fn answer(&mut self, request: &requests::Request, object: &str) {
        match request.kind {
            RequestKind::Customer | RequestKind::Snapshot => requests::succeed(request.ticket, object),
            RequestKind::AccountLink => {
                // An application waits for it: ahead of the queue's requests, as a signup's.
                let client = self.key.admitted(true).expect("requests are refused without a client");
                // Which API makes the link: a model that cannot be read is not guessed.
                let v2 = match in_transaction("reading the table's Stripe objects", || {
                    jobs::uses_accounts_v2(request.table)
                }) {
                    Ok(v2) => v2,
                    Err(message) => return requests::fail(request.ticket, &format!("no account link: {message}")),
                };
                let (refresh, back) = (&request.refresh_url, &request.return_url);
                let link = async {
                    if v2 {
                        client.v2().create_account_link(object, refresh, back).await.map(|link| link.url)
                    } else {
                        client.create_account_link(object, refresh, back).await
                    }
                };
                match self.runtime.block_on(link) {
                    Ok(url) => {
                        requests::succeed(request.ticket, &url);
                        events::account_link_issued(object);
                        self.maintenance.events.read_soon();
                    }
                    Err(error) => requests::fail(request.ticket, &error.to_string()),
                }
                check_for_interrupts!();
            }
        }
    }

    /// Answers the callers whose jobs have finished. Returns whether any are still waiting.
    pub(super) fn resolve_requests(&mut self) -> bool {
        self.last_resolve = Instant::now();
        let watched = requests::watched();
        if watched.is_empty() {
            return false;
        }
        let ids: Vec<i64> = watched.iter().map(|(_, job)| *job).collect();
        let jobs = in_transaction("checking jobs that callers wait for", || jobs::watched_jobs(&ids));
        let Ok(Ok(jobs)) = jobs else { return true };
        let mut waiting = false;
        for (request, job_id) in watched {
            match jobs.iter().find(|job| job.id == job_id) {
                None => requests::fail(request.ticket, &format!("job {job_id} no longer exists")),
                // The customer exists and is this profile's; only its write-back waits for a held
                // row, which may be the caller's own: answer now rather than time out.
                Some(jobs::WatchedJob { object_to_link: Some(object), .. })
                    if request.kind == RequestKind::Customer =>
                {
                    self.answer(&request, object)
                }
                Some(job) if job.state.is_open() => waiting = true,
                Some(jobs::WatchedJob { state: JobState::Succeeded, object: Some(object), .. }) => {
                    self.answer(&request, object)
                }
                Some(jobs::WatchedJob { state, error, .. }) => requests::fail(
                    request.ticket,
                    &format!("job {job_id} ended {state}: {}", error.as_deref().unwrap_or("nothing on the profile")),
                ),
            }
        }
        waiting
    }
}
