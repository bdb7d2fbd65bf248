//! Every statement the worker runs on its hot path, behind a small typed API: promoting the
//! intake, claiming jobs, recording what calls did (events, write-backs, finished jobs), the next
//! due time, and the requests it takes on and watches.
//!
//! Each function runs inside the caller's transaction (`pg::transaction::in_transaction`); a
//! failing statement raises an ERROR, which that transaction catches. The loop (worker.rs) decides
//! when; the SQL functions called here are in `sql/transitions.sql` (and, for requests,
//! `sql/api.sql`). Maintenance runs its own statements (maintenance/).

use std::time::Duration;

use onboarding_core::claim_cursor::{JobKey, LANES, ScanFrom};
use onboarding_core::job::Profile;
use onboarding_core::state::{JobKind, JobState, Transition};
use onboarding_core::stripe::NewCustomer;
use onboarding_core::stripe::v2::AccountOptions;
use pgrx::JsonB;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use serde_json::Value;

use crate::pg::prepared;
use crate::requests::RequestKind;

/// Promotes inserts until `pending` jobs wait (or the intake is empty).
pub fn top_up_pending(pending: i32) {
    let sql = "SELECT onboarding._promote_intake($1 - (SELECT count(*) FROM (SELECT FROM onboarding.jobs
                                                        WHERE state = $2 LIMIT $1) p)::integer)";
    Spi::get_one_with_args::<i64>(sql, &[pending.into(), JobState::Pending.as_str().into()])
        .unwrap_or_else(|e| error!("onboarding: turning inserted profiles into jobs: {e}"));
}

/// A job as `onboarding._claim_jobs` hands it over: now `running`, with its profile re-read.
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub user_id: String,
    pub idempotency_key: String,
    pub attempts: u32,
    /// The object the job acts on; for a creation job, the object it made whose write-back was
    /// postponed (the profile's row was locked).
    pub stripe_id: Option<String>,
    /// What the job's first attempt sent (`jobs.request_params`), if one was made.
    pub first_request: Option<NewCustomer>,
    /// Look for an existing customer before creating one (past the idempotency horizon, or
    /// after Stripe refused the key).
    pub look_up_first: bool,
    /// None when the profile no longer exists.
    pub profile: Option<Profile>,
    /// Its priority lane (`jobs.lane`): 0 for signups and the application's requests.
    pub lane: i16,
    /// Its place in the lane, where the next claim there starts.
    pub key: JobKey,
    /// Finished (or put back) by the claim itself: nothing left to do for it here.
    pub finished: bool,
    /// The objects this extension made for other profiles with the same user id (another
    /// table's): filled in for a job that [`looks up`](ClaimedJob::looks_up) what Stripe holds.
    pub made_for_others: Vec<String>,
    /// Its table's Accounts v2 settings; `None` for a v1 table.
    pub accounts_v2: Option<AccountsV2Table>,
    /// What the first attempt sent, as stored (`jobs.request_params`): an accounts_v2 retry
    /// resends exactly its body.
    pub request_params: Option<Value>,
    /// How long ago the first attempt was claimed (zero for this one).
    pub since_first_attempt: Duration,
}

/// What an accounts_v2 table's job needs beyond the profile: the table's options
/// (`attachments.account_options`) and the profile's display name, if a column is named.
pub struct AccountsV2Table {
    pub options: AccountOptions,
    pub display_name: Option<String>,
}

impl ClaimedJob {
    /// Whether the job may look for the user's objects by `metadata.user_id` (to adopt one, or to
    /// delete what a lost attempt made): past the idempotency horizon, or its profile is gone.
    pub fn looks_up(&self) -> bool {
        self.look_up_first || self.profile.is_none()
    }
}

/// A claim cursor's keys as `_claim_jobs` and `_next_due_in` take them: run_at and id per lane.
fn scan_args(scan: &ScanFrom) -> (Vec<Option<TimestampWithTimeZone>>, Vec<Option<i64>>) {
    scan.iter()
        .map(|key| match key {
            Some(k) => (TimestampWithTimeZone::try_from(k.run_at).ok(), Some(k.id)),
            None => (None, None),
        })
        .unzip()
}

/// What a claim did: how many committed inserts it turned into jobs (set-based, see intake.rs;
/// `batch_size` means more may be waiting), and the jobs it claimed.
pub struct Claimed {
    pub promoted: i64,
    pub jobs: Vec<ClaimedJob>,
}

/// Turns up to `batch_size` committed inserts into jobs (each claim promotes about as many as it
/// can take, so a backlog waits in the intake), then claims up to `batch_size` due jobs (`FOR
/// UPDATE SKIP LOCKED`), first up to `reserved` from each lane, then lane by lane; each lane
/// scanned from `scan`'s key. Those whose first attempt is older than `idempotency_horizon` come
/// with `look_up_first`. One statement (`onboarding._promote_and_claim`), prepared once.
pub fn claim(batch_size: i32, idempotency_horizon: Duration, scan: &ScanFrom, reserved: [usize; LANES]) -> Claimed {
    let (after_run_at, after_id) = scan_args(scan);
    let reserved: Vec<i32> = reserved.iter().map(|&n| n as i32).collect();
    let args = [
        batch_size.into(),
        batch_size.into(),
        idempotency_horizon.as_secs_f64().into(),
        after_run_at.into(),
        after_id.into(),
        reserved.into(),
    ];
    let sql = "SELECT * FROM onboarding._promote_and_claim($1, $2, make_interval(secs => $3), $4, $5, $6)";
    prepared::run(sql, &args, |rows| {
        let mut claimed = Claimed { promoted: 0, jobs: Vec::new() };
        for row in rows {
            claimed.promoted = row.get_by_name::<i64, _>("promoted")?.unwrap_or_default();
            let Some(id) = row.get_by_name::<i64, _>("job_id")? else { continue }; // nothing claimed
            let profile = row
                .get_by_name::<bool, _>("profile_found")?
                .unwrap_or(false)
                .then(|| -> Result<Profile, pgrx::spi::Error> {
                    Ok(Profile {
                        email: row.get_by_name("email")?,
                        customer_id: row.get_by_name("customer_id")?,
                        connect_account_id: row.get_by_name("connect_account_id")?,
                    })
                })
                .transpose()?;
            let run_at = row.get_by_name::<TimestampWithTimeZone, _>("run_at")?.map_or(0, i64::from);
            let accounts_v2 = match row.get_by_name::<String, _>("stripe_objects")?.as_deref() {
                Some("accounts_v2") => {
                    let JsonB(stored) = row.get_by_name::<JsonB, _>("account_options")?.unwrap_or(JsonB(Value::Null));
                    // Stored checked (set_account_options); unreadable only if written by hand.
                    let options = AccountOptions::from_json(&stored).unwrap_or_else(|bad| {
                        warning!(
                            "onboarding: account options {stored} unreadable ({}); using the defaults",
                            bad.message
                        );
                        AccountOptions::default()
                    });
                    Some(AccountsV2Table { options, display_name: row.get_by_name("display_name")? })
                }
                _ => None,
            };
            let request_params = row.get_by_name::<JsonB, _>("request_params")?.map(|JsonB(v)| v);
            claimed.jobs.push(ClaimedJob {
                id,
                kind: row.get_by_name("kind")?.unwrap_or_default(),
                user_id: row.get_by_name("user_id")?.unwrap_or_default(),
                idempotency_key: row.get_by_name("idempotency_key")?.unwrap_or_default(),
                attempts: row.get_by_name::<i32, _>("attempts")?.unwrap_or_default().max(0) as u32,
                stripe_id: row.get_by_name("stripe_id")?,
                first_request: request_params.as_ref().and_then(|v| {
                    Some(NewCustomer { user_id: v["user_id"].as_str()?.into(), email: v["email"].as_str()?.into() })
                }),
                look_up_first: row.get_by_name("look_up_first")?.unwrap_or(false),
                profile,
                lane: row.get_by_name::<i16, _>("lane")?.unwrap_or_default(),
                key: JobKey { run_at, id },
                finished: row.get_by_name::<bool, _>("finished")?.unwrap_or(false),
                made_for_others: Vec::new(),
                accounts_v2,
                request_params,
                since_first_attempt: Duration::from_secs_f64(
                    row.get_by_name::<f64, _>("first_attempt_age")?.unwrap_or(0.0).clamp(0.0, 1e9),
                ),
            });
        }
        Ok(claimed)
    })
    .unwrap_or_else(|e| error!("onboarding: claiming jobs: {e}"))
}

/// Puts a running job back without spending an attempt (`onboarding._postpone`: again in a second,
/// then less often the longer it waited, at most a minute apart).
pub fn postpone(job_id: i64, reason: &str) {
    Spi::run_with_args("SELECT onboarding._postpone($1, $2)", &[job_id.into(), reason.into()])
        .unwrap_or_else(|e| error!("onboarding: postponing job {job_id}: {e}"));
}

/// The Stripe objects this extension made for profiles of other tables with job `job_id`'s user
/// id (sql/ties.sql).
pub fn made_for_other_profiles(job_id: i64) -> Vec<String> {
    Spi::get_one_with_args::<Vec<String>>(
        "SELECT coalesce(array_agg(t.stripe_id), '{}') FROM onboarding.jobs j
           JOIN onboarding.stripe_ties t ON t.user_id = j.user_id AND t.profile_table <> j.profile_table
          WHERE j.id = $1",
        &[job_id.into()],
    )
    .unwrap_or_else(|e| error!("onboarding: reading the objects made for other profiles: {e}"))
    .unwrap_or_default()
}

/// Time until the next pending job is due (zero if overdue), None if nothing is pending, each
/// lane looked at from `scan`'s key.
pub fn next_due_in(scan: &ScanFrom) -> Option<Duration> {
    let (after_run_at, after_id) = scan_args(scan);
    prepared::one::<f64>("SELECT onboarding._next_due_in($1, $2)", &[after_run_at.into(), after_id.into()])
        .unwrap_or_else(|e| error!("onboarding: reading the next due time: {e}"))
        .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)))
}

/// Puts a Connect account job back to `pending` behind its profile's customer job.
pub fn wait_for_customer(job_id: i64) {
    Spi::get_one_with_args::<String>("SELECT onboarding._wait_for_customer($1)", &[job_id.into()])
        .unwrap_or_else(|e| error!("onboarding: postponing job {job_id}: {e}"));
}

/// The calls a claim is about to start: their first attempts' parameters and `stripe_request`
/// events, written in one statement (`onboarding._calls_starting`) before the claim commits.
#[derive(Default)]
pub struct CallsStarting {
    job_ids: Vec<i64>,
    params: Vec<Option<JsonB>>,
    details: Vec<JsonB>,
}

impl CallsStarting {
    pub fn push(&mut self, job_id: i64, first_params: Option<Value>, detail: Value) {
        self.job_ids.push(job_id);
        self.params.push(first_params.map(JsonB));
        self.details.push(JsonB(detail));
    }

    pub fn record(self) {
        if self.job_ids.is_empty() {
            return;
        }
        let args = [self.job_ids.into(), self.params.into(), self.details.into()];
        prepared::run("SELECT onboarding._calls_starting($1, $2, $3)", &args, |_| Ok(()))
            .unwrap_or_else(|e| error!("onboarding: logging the calls about to start: {e}"));
    }
}

/// Moves a running job on (`onboarding._finish_job`, whose table trigger checks the move),
/// recording `detail` as the transition's event.
pub fn finish(job_id: i64, transition: Transition, detail: Value) {
    Spi::run_with_args(
        "SELECT onboarding._finish_job($1, $2, $3, $4, stripe_id => $5, error => $6, \
         retry_in => make_interval(secs => $7))",
        &[
            job_id.into(),
            transition.to().as_str().into(),
            transition.step().into(),
            JsonB(detail).into(),
            transition.stripe_id().into(),
            transition.error().into(),
            transition.run_in().map(|d| d.as_secs_f64()).into(),
        ],
    )
    .unwrap_or_else(|e| error!("onboarding: finishing job {job_id} ({}): {e}", transition.step()));
}

/// After a POST's 500 (its outcome unknown, and replayed for its key): the job's next attempt
/// looks its object up first and, if Stripe holds none, creates it under `key`.
pub fn look_up_then_use_key(job_id: i64, key: &str) {
    Spi::run_with_args(
        "UPDATE onboarding.jobs SET idempotency_key = $2, look_up_first = true WHERE id = $1",
        &[job_id.into(), key.into()],
    )
    .unwrap_or_else(|e| error!("onboarding: replacing the idempotency key of job {job_id}: {e}"));
}

/// The record's statement (`onboarding._record_sent_and_created`, prepared once): each call's
/// `stripe_request` event (logged at its claim, before the rate budget's wait) moved to when its
/// request was sent, `sent`: `(job id, attempt, seconds since the epoch)`; then the customers
/// created as asked: each job's `stripe_response` event (`responses`), the write-back of
/// `objects`, the finished jobs. Returns the jobs it wrote back; the others' profiles vanished or
/// got another customer meanwhile.
pub fn record_sent_and_created(
    sent: &[(i64, u32, f64)],
    job_ids: Vec<i64>,
    objects: Vec<String>,
    responses: Vec<Value>,
) -> Vec<i64> {
    if sent.is_empty() && job_ids.is_empty() {
        return Vec::new();
    }
    let sent_jobs: Vec<i64> = sent.iter().map(|s| s.0).collect();
    let attempts: Vec<i32> = sent.iter().map(|s| s.1 as i32).collect();
    let times: Vec<f64> = sent.iter().map(|s| s.2).collect();
    let responses: Vec<JsonB> = responses.into_iter().map(JsonB).collect();
    let args = [sent_jobs.into(), attempts.into(), times.into(), job_ids.into(), objects.into(), responses.into()];
    prepared::one::<Vec<i64>>("SELECT onboarding._record_sent_and_created($1, $2, $3, $4, $5, $6)", &args)
        .unwrap_or_else(|e| error!("onboarding: recording the calls' results: {e}"))
        .unwrap_or_default()
}

pub fn log_event(job_id: i64, step: &str, detail: Value) {
    Spi::run_with_args("SELECT onboarding._log_event($1, $2, $3)", &[job_id.into(), step.into(), JsonB(detail).into()])
        .unwrap_or_else(|e| error!("onboarding: logging {step} for job {job_id}: {e}"));
}

/// What `onboarding._write_back` did with a created or adopted object.
pub enum WriteBack {
    /// Written to the profile's column, which was NULL.
    WrittenBack,
    /// The profile already named this object.
    AlreadyLinked,
    /// Another transaction held the profile's row: the job waits with its object, for a later claim.
    Postponed,
    /// Not linked, for this reason (the profile vanished or names another object): the job is
    /// orphaned and a compensation job deletes the object.
    NotLinked(String),
}

/// Writes a created or adopted customer or account back to the job's profile.
pub fn write_back(job_id: i64, object_id: &str) -> WriteBack {
    let outcome = prepared::one::<String>("SELECT onboarding._write_back($1, $2)", &[job_id.into(), object_id.into()])
        .unwrap_or_else(|e| error!("onboarding: writing back {object_id}: {e}"))
        .unwrap_or_default();
    match outcome.as_str() {
        "written_back" => WriteBack::WrittenBack,
        "already_linked" => WriteBack::AlreadyLinked,
        "postponed" => WriteBack::Postponed,
        _ => WriteBack::NotLinked(outcome),
    }
}

/// Finishes an `update_customer_email` job whose call succeeded (`onboarding._finish_email_update`).
pub fn finish_email_update(job_id: i64, email: &str, detail: Value) {
    Spi::run_with_args(
        "SELECT onboarding._finish_email_update($1, $2, $3)",
        &[job_id.into(), email.into(), JsonB(detail).into()],
    )
    .unwrap_or_else(|e| error!("onboarding: finishing email update job {job_id}: {e}"));
}

/// Whether an attached table's profiles get Accounts v2 (`attachments.stripe_objects`).
pub fn uses_accounts_v2(table: pg_sys::Oid) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT stripe_objects = 'accounts_v2' FROM onboarding.attachments WHERE profile_table = $1",
        &[table.into()],
    )
    .unwrap_or_else(|e| error!("onboarding: reading a table's Stripe objects: {e}"))
    .unwrap_or(false)
}

/// What taking on a get_or_create_customer / create_account_link request found.
pub enum TakenOn {
    /// The profile has the object already: answer with it.
    Exists(String),
    /// The job to watch (enqueued, or the profile's open one joined).
    Job(i64),
    /// Nothing enqueued, with the reason when the SQL gave one.
    Refused(Option<String>),
}

/// Enqueues or joins the job a request needs, unless the profile already has its object.
pub fn take_on_request(kind: RequestKind, table: pg_sys::Oid, user_id: &str) -> Result<TakenOn, pgrx::spi::Error> {
    // The profile may have got its object since the caller looked (say, from the insert
    // trigger's job, which we were busy with): then there is nothing to enqueue.
    let sql = match kind {
        RequestKind::Customer => {
            "SELECT c AS object, CASE WHEN c IS NULL
                           THEN onboarding._enqueue($1::regclass, $2, $3, 'get_or_create_customer')
                       END AS job, NULL::text AS refusal
               FROM onboarding._customer_of($1::regclass, $2) c"
        }
        RequestKind::AccountLink => {
            "SELECT account AS object, job, refusal FROM onboarding._account_or_enqueue($1::regclass, $2)"
        }
        RequestKind::Snapshot => unreachable!("a snapshot enqueues no job"),
    };
    Spi::connect_mut(|spi| {
        let row =
            spi.update(sql, Some(1), &[table.into(), user_id.into(), JobKind::CreateCustomer.as_str().into()])?.first();
        let object = row.get_by_name::<String, _>("object")?;
        let job = row.get_by_name::<i64, _>("job")?;
        Ok(match (object, job) {
            (Some(object), _) => TakenOn::Exists(object),
            (None, Some(job)) => TakenOn::Job(job),
            (None, None) => TakenOn::Refused(row.get_by_name("refusal")?),
        })
    })
}

/// A job a waiting caller watches, as it is now.
pub struct WatchedJob {
    pub id: i64,
    pub state: JobState,
    /// The job's Stripe object, else the object its profile now has.
    pub object: Option<String>,
    /// An object the job made whose write-back waits for a row another transaction holds (the
    /// caller's own, as often as not: an RPC that updated the profile, then asked).
    pub object_to_link: Option<String>,
    pub error: Option<String>,
}

/// The jobs with these ids (an id missing from the answer is a job that no longer exists).
pub fn watched_jobs(ids: &[i64]) -> Result<Vec<WatchedJob>, pgrx::spi::Error> {
    Spi::connect(|spi| {
        let rows = spi.select(
            "SELECT id, state, coalesce(stripe_id, CASE kind
                        WHEN $2 THEN onboarding._customer_of(profile_table, user_id)
                        ELSE onboarding._connect_account_of(profile_table, user_id) END) AS object,
                    object_to_link, last_error
               FROM onboarding.jobs WHERE id = ANY($1)",
            None,
            &[ids.to_vec().into(), JobKind::CreateCustomer.as_str().into()],
        )?;
        let mut jobs = Vec::new();
        for row in rows {
            let state = row.get_by_name::<String, _>("state")?.unwrap_or_default();
            jobs.push(WatchedJob {
                id: row.get_by_name::<i64, _>("id")?.unwrap_or_default(),
                // The jobs table's CHECK allows only JobState's names (core's state machine).
                state: JobState::parse(&state).unwrap_or_else(|| error!("onboarding: unknown job state {state:?}")),
                object: row.get_by_name::<String, _>("object")?,
                object_to_link: row.get_by_name::<String, _>("object_to_link")?,
                error: row.get_by_name::<String, _>("last_error")?,
            });
        }
        Ok::<_, pgrx::spi::Error>(jobs)
    })
}
