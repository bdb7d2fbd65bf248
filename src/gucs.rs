//! The `onboarding.*` settings. Each process holds its own copy; the worker re-reads them on SIGHUP
//! (`SELECT pg_reload_conf()`), so `SET` in a session never reaches it.

use std::ffi::CString;
use std::time::Duration;

use onboarding_core::lane_shares::Shares;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, pg_guard, pg_sys};

pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static STRIPE_API_BASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"https://api.stripe.com"));
pub static STRIPE_API_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Its default is the version the client pins.
pub static STRIPE_API_VERSION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(onboarding_core::stripe::STRIPE_API_VERSION_C));
pub static STRIPE_API_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Set by a worker before it reads the configuration: the only processes that keep the key.
static HOLDS_THE_KEY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
pub static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static DELETE_CUSTOMERS_WITH_PROFILES: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static IDEMPOTENCY_HORIZON_S: GucSetting<i32> = GucSetting::<i32>::new(23 * 3600);
pub static RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(30 * 86_400);
pub static SYNC_EMAIL: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static NOTIFY_ACCOUNT_CHANGES: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static LEASE_S: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static OWNER_STATEMENT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(25);
pub static RATE_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(-1);
pub static RATE_BURST: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static ENDPOINT_RATE_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(-1);
pub static SEARCH_RATE_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(-1);
pub static MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(12);
pub static RETRY_BASE_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);
pub static RETRY_MAX_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(600_000);
pub static CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);
pub static REQUEST_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static WAIT_FOR_STANDBYS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static STANDBY_WAIT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static CONNECT_CONDITION_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(250);
pub static EVENTS_POLL_INTERVAL_MS: GucSetting<i32> =
    GucSetting::<i32>::new(onboarding_core::inbound::POLL_EVERY.as_millis() as i32);
pub static EVENTS_POLL_FAST_INTERVAL_MS: GucSetting<i32> =
    GucSetting::<i32>::new(onboarding_core::inbound::POLL_FAST.as_millis() as i32);
pub static LANE_SHARES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"10,5,5"));
const DEFAULT_LANE_SHARES: &str = "10,5,5";

pub fn register() {
    GucRegistry::define_string_guc(
        c"onboarding.database",
        c"Restricts the onboarding workers to this one database (empty: every database with the extension).",
        c"By default the launcher starts workers in every database where the extension is installed.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"onboarding.stripe_api_version",
        c"Stripe API version sent with every request (Stripe-Version).",
        c"Defaults to the version this release is built and tested against; see docs/src/guides/real-stripe.md before moving it. \
          Empty: that default.",
        &STRIPE_API_VERSION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"onboarding.stripe_api_base",
        c"Base URL of the Stripe API.",
        c"https://api.stripe.com in production; any Stripe-compatible server for tests.",
        &STRIPE_API_BASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // Defined by hand for its check hook (pgrx's registry takes no hooks).
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"onboarding.stripe_api_key".as_ptr(),
            c"Stripe secret or restricted key used by the workers (prefer onboarding.stripe_api_key_file).".as_ptr(),
            c"Set in postgresql.conf, then SELECT pg_reload_conf(). Only the workers hold it: every other process, \
              superusers' sessions included, sees an empty value. Superusers still see the file's line in pg_file_settings."
                .as_ptr(),
            STRIPE_API_KEY.as_ptr(),
            std::ptr::null(),
            pg_sys::GucContext::PGC_SIGHUP,
            (GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL | GucFlags::NO_RESET_ALL).bits(),
            Some(keep_key_in_workers_only),
            None,
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"onboarding.stripe_api_key_file",
        c"File holding the Stripe key (recommended): read by the workers alone, at start and on reload.",
        c"Owned by the postgres OS user and not readable by others (mode 0600, or 0640 if owned by root), \
          like ssl_key_file. When set, onboarding.stripe_api_key is ignored.",
        &STRIPE_API_KEY_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    let ms = |name, short, long, setting, min, max| {
        GucRegistry::define_int_guc(name, short, long, setting, min, max, GucContext::Sighup, GucFlags::UNIT_MS)
    };
    ms(
        c"onboarding.poll_interval",
        c"How often the worker looks for due jobs when nothing wakes it.",
        c"Committed inserts wake the worker at once; this is the safety net.",
        &POLL_INTERVAL_MS,
        10,
        3_600_000,
    );
    ms(
        c"onboarding.retry_base_delay",
        c"Delay before the first retry of a failed Stripe call; doubles per attempt, with jitter.",
        c"",
        &RETRY_BASE_DELAY_MS,
        1,
        3_600_000,
    );
    ms(
        c"onboarding.retry_max_delay",
        c"Longest delay between two attempts of a job.",
        c"",
        &RETRY_MAX_DELAY_MS,
        1,
        86_400_000,
    );
    ms(c"onboarding.connect_timeout", c"Timeout for connecting to Stripe.", c"", &CONNECT_TIMEOUT_MS, 100, 600_000);
    ms(c"onboarding.request_timeout", c"Timeout for a whole Stripe request.", c"", &REQUEST_TIMEOUT_MS, 100, 600_000);
    ms(
        c"onboarding.events_poll_interval",
        c"How often a worker reads Stripe's events (Connect readiness, Dashboard changes); 0: never.",
        c"Each read takes a slot of the rate budget after every signup's call. See onboarding.events_poll_fast_interval.",
        &EVENTS_POLL_INTERVAL_MS,
        0,
        86_400_000,
    );
    ms(
        c"onboarding.events_poll_fast_interval",
        c"How often Stripe's events are read in the 10 minutes after an account link was issued.",
        c"An owner back from Stripe's onboarding waits for account_ready(); never slower than onboarding.events_poll_interval.",
        &EVENTS_POLL_FAST_INTERVAL_MS,
        100,
        86_400_000,
    );
    GucRegistry::define_int_guc(
        c"onboarding.idempotency_horizon",
        c"Age of a job's first attempt after which it looks for an existing customer before creating one.",
        c"Stripe keeps idempotency keys for at least 24 hours; past that a retry could create a duplicate.",
        &IDEMPOTENCY_HORIZON_S,
        1,
        7 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"onboarding.workers",
        c"Background workers per database, sharing its job queue.",
        c"Each takes a slot of max_worker_processes. Raising it takes effect on reload; lowering it, at restart.",
        &WORKERS,
        1,
        crate::pg::processes::MAX_WORKERS as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"onboarding.owner_statement_timeout",
        c"Longest a statement the extension runs on an attached table, as its owner, may take (0: no limit).",
        c"Profile reads, write-backs, Connect conditions, audits. Applies where no statement_timeout is already \
          running (an application session's own one governs its statements).",
        &OWNER_STATEMENT_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"onboarding.lease",
        c"How long a job may stay running before another worker takes it back.",
        c"Jobs of a worker that exited are taken back at once; this covers a worker that is alive but stuck. \
          Keep it well above request_timeout.",
        &LEASE_S,
        10,
        86_400,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"onboarding.max_attempts",
        c"Attempts per job before it is parked as dead.",
        c"",
        &MAX_ATTEMPTS,
        1,
        1_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"onboarding.batch_size",
        c"Jobs a worker claims at once; their Stripe calls run concurrently (the in-flight bound).",
        c"",
        &BATCH_SIZE,
        1,
        1_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"onboarding.delete_customers_with_profiles",
        c"Deleting a profile deletes the Stripe customer this extension created for it.",
        c"Only customers that a succeeded job of this extension created and that no other row of the table uses. \
          Read by the deleting session (superusers may SET it off for a maintenance delete).",
        &DELETE_CUSTOMERS_WITH_PROFILES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"onboarding.retention",
        c"How long finished jobs and their events are kept (0: forever).",
        c"Dead and orphaned jobs are kept until dealt with. The workers prune in small batches.",
        &RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"onboarding.notify_account_changes",
        c"A change of a Connect account's readiness is announced with NOTIFY onboarding_accounts.",
        c"The payload is the profile table's name only: any role may LISTEN (PostgreSQL cannot restrict it), and any \
          role may NOTIFY on the same channel, so listeners call account_ready() or account_status() to learn more.",
        &NOTIFY_ACCOUNT_CHANGES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"onboarding.sync_email",
        c"Changing a profile's email updates its Stripe customer's email.",
        c"Read by the updating session (superusers may SET it off for one session).",
        &SYNC_EMAIL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"onboarding.rate_limit",
        c"Most Stripe requests in any second, all workers together (-1: 95 for live keys, 24 for test keys; 0: no limit).",
        c"Kept below Stripe's limits (about 100/s live, 25/s test) so its 429s are never tripped; bursts included.",
        &RATE_LIMIT,
        -1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"onboarding.endpoint_rate_limit",
        c"Most Stripe requests in any second to any one endpoint (POST /v1/customers, GET /v1/customers/{id}, ...), all workers together (-1: 24; 0: no limit).",
        c"Stripe limits each endpoint to 25 requests a second by default, besides the global limit; raise it for an account whose limits Stripe raised.",
        &ENDPOINT_RATE_LIMIT,
        -1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"onboarding.search_rate_limit",
        c"Most Stripe search requests in any second, all workers together (-1: 19; 0: no limit).",
        c"Stripe limits search to 20 requests a second; search counts under this instead of onboarding.endpoint_rate_limit.",
        &SEARCH_RATE_LIMIT,
        -1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"onboarding.rate_burst",
        c"Requests that may go back to back after a quiet spell, within onboarding.rate_limit.",
        c"",
        &RATE_BURST,
        1,
        10_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"onboarding.wait_for_standbys",
        c"Standbys (application_name, comma-separated; * for any one) that must have a job's commit before it calls Stripe.",
        c"For asynchronous replication: no Stripe object is made for a commit these standbys lack, so a failover to \
          one of them leaves none behind. Synchronous standbys (synchronous_standby_names) are always waited for. \
          Empty: off.",
        &WAIT_FOR_STANDBYS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    ms(
        c"onboarding.standby_wait_timeout",
        c"Longest a call waits for onboarding.wait_for_standbys before it goes ahead anyway, with a WARNING (0: no limit).",
        c"Synchronous standbys are waited for without limit, as PostgreSQL's commits wait for them.",
        &STANDBY_WAIT_TIMEOUT_MS,
        0,
        i32::MAX,
    );
    GucRegistry::define_int_guc(
        c"onboarding.connect_condition_timeout",
        c"Longest a Connect condition may take for one profile before its account job is parked (dead, with the reason).",
        c"The worker evaluates conditions when it claims an account job, as the table's owner; a slow one delays only \
          that job, by at most this long.",
        &CONNECT_CONDITION_TIMEOUT_MS,
        1,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    // Defined by hand for its check hook, like the key's.
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"onboarding.lane_shares".as_ptr(),
            c"Percent of the claimed work kept for lanes 1, 2 and 3 (retries; email syncs and compensation; backfill \
              and reconcile) while they have due jobs; lane 0 (signups and requests) has the rest."
                .as_ptr(),
            c"Comma-separated, together at most 90. A signup's call still goes ahead of every call waiting for the \
              rate budget. 0,0,0: strict priority, lower lanes wait while lane 0 has due work."
                .as_ptr(),
            LANE_SHARES.as_ptr(),
            c"10,5,5".as_ptr(),
            pg_sys::GucContext::PGC_SIGHUP,
            0,
            Some(check_lane_shares),
            None,
            None,
        );
    }
    unsafe { pg_sys::MarkGUCPrefixReserved(c"onboarding".as_ptr()) };
}

/// Refuses a malformed `onboarding.lane_shares` with what is wrong and how to write it.
#[pg_guard]
unsafe extern "C-unwind" fn check_lane_shares(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let value = unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        std::ffi::CStr::from_ptr(*newval).to_string_lossy().into_owned()
    };
    match Shares::parse(&value) {
        Ok(_) => true,
        Err(problem) => {
            unsafe {
                pg_sys::GUC_check_errdetail_string =
                    pg_sys::pstrdup(CString::new(problem).unwrap_or_default().as_ptr());
                pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(
                    c"Three percentages for lanes 1, 2 and 3, such as '10,5,5'; '0,0,0' for strict priority.".as_ptr(),
                );
            }
            false
        }
    }
}

/// `onboarding.lane_shares` (checked when set).
pub fn lane_shares() -> Shares {
    let setting = text(&LANE_SHARES).unwrap_or_else(|| DEFAULT_LANE_SHARES.into());
    Shares::parse(&setting).unwrap_or_else(|_| Shares::parse(DEFAULT_LANE_SHARES).expect("the default parses"))
}

/// Only the workers hold the key. Every process reads the configuration files on reload, so a
/// backend that had processed one held the real value, and `SHOW` gave it to any member of
/// pg_read_all_settings. This hook empties it in every process that is not a worker (the
/// postmaster too, which would otherwise log `parameter "…" changed to "<new key>"`).
#[pg_guard]
unsafe extern "C-unwind" fn keep_key_in_workers_only(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    unsafe {
        if !HOLDS_THE_KEY.load(std::sync::atomic::Ordering::Relaxed) && !newval.is_null() && !(*newval).is_null() {
            let value = *newval;
            // Wipe it in place: the string belongs to the GUC machinery, which frees it later.
            std::ptr::write_bytes(value, 0, std::ffi::CStr::from_ptr(value).to_bytes().len());
        }
    }
    true
}

/// Called by a worker before it reads the configuration files: from then on this process keeps
/// the key it finds there.
pub fn hold_the_key() {
    HOLDS_THE_KEY.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn text(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|s| s.to_string_lossy().into_owned()).filter(|s| !s.trim().is_empty())
}

fn millis(setting: &GucSetting<i32>) -> Duration {
    Duration::from_millis(setting.get().max(0) as u64)
}

/// The one database to serve, if restricted.
pub fn database() -> Option<String> {
    text(&DATABASE)
}

/// `onboarding.stripe_api_version`, None when empty (the client's pinned version then).
pub fn stripe_api_version() -> Option<String> {
    text(&STRIPE_API_VERSION)
}

pub fn stripe_api_base() -> String {
    text(&STRIPE_API_BASE).unwrap_or_else(|| "https://api.stripe.com".into())
}

/// Where the key comes from, for the worker (empty everywhere else, see [`keep_key_in_workers_only`]).
pub enum KeySource {
    /// `onboarding.stripe_api_key_file`, read just now.
    File(String),
    /// `onboarding.stripe_api_key`.
    Setting(String),
    None,
}

/// The key this worker should use, or why there is none: `onboarding.stripe_api_key_file` when
/// set (refused, like PostgreSQL's ssl_key_file, when others may read it), else the setting.
pub fn stripe_api_key() -> Result<KeySource, String> {
    let Some(path) = text(&STRIPE_API_KEY_FILE) else {
        return Ok(text(&STRIPE_API_KEY).map_or(KeySource::None, KeySource::Setting));
    };
    use std::os::unix::fs::MetadataExt;
    let metadata =
        std::fs::metadata(&path).map_err(|e| format!("cannot read onboarding.stripe_api_key_file \"{path}\": {e}"))?;
    let mode = metadata.mode();
    let group_readable_allowed = metadata.uid() == 0; // root-owned, group postgres: 0640 as for ssl_key_file
    if mode & 0o007 != 0 || (mode & 0o070 != 0 && !group_readable_allowed) {
        return Err(format!(
            "onboarding.stripe_api_key_file \"{path}\" has group or world access (mode {:o}); \
             chmod 0600 it (0640 if owned by root)",
            mode & 0o777
        ));
    }
    let key = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read onboarding.stripe_api_key_file \"{path}\": {e}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("onboarding.stripe_api_key_file \"{path}\" is empty"));
    }
    Ok(KeySource::File(key.to_string()))
}

pub fn poll_interval() -> Duration {
    millis(&POLL_INTERVAL_MS)
}

pub fn batch_size() -> i32 {
    BATCH_SIZE.get()
}

pub fn max_attempts() -> u32 {
    MAX_ATTEMPTS.get().max(1) as u32
}

pub fn backoff() -> onboarding_core::policy::Backoff {
    onboarding_core::policy::Backoff { base: millis(&RETRY_BASE_DELAY_MS), cap: millis(&RETRY_MAX_DELAY_MS) }
}

pub fn idempotency_horizon() -> Duration {
    Duration::from_secs(IDEMPOTENCY_HORIZON_S.get().max(1) as u64)
}

/// The rate budgets for requests made with `api_key`: just under each limit Stripe publishes
/// (docs.stripe.com/rate-limits: 100 a second live and 25 in a sandbox for all requests, 25 for
/// each endpoint, 20 for search), or as `onboarding.rate_limit`, `onboarding.endpoint_rate_limit`
/// and `onboarding.search_rate_limit` say (0: that limit is not kept).
pub fn rate_budget(api_key: &str) -> onboarding_core::budget::Budgets {
    let live = api_key.starts_with("sk_live_") || api_key.starts_with("rk_live_");
    let budget = |setting: &GucSetting<i32>, default: u32, burst: u32| {
        let ceiling = match setting.get() {
            -1 => default,
            n => n.max(0) as u32,
        };
        onboarding_core::budget::Gcra::new(ceiling, burst)
    };
    // One endpoint's requests go evenly (no burst): each burst slot would cost a slot of its
    // sustained rate, and a flood of one kind (a backfill's creates) is what meets this limit.
    onboarding_core::budget::Budgets {
        global: budget(&RATE_LIMIT, if live { 95 } else { 24 }, RATE_BURST.get().max(1) as u32),
        per_endpoint: budget(&ENDPOINT_RATE_LIMIT, 24, 1),
        search: budget(&SEARCH_RATE_LIMIT, 19, 1),
    }
}

pub fn workers() -> usize {
    WORKERS.get().clamp(1, crate::pg::processes::MAX_WORKERS as i32) as usize
}

pub fn lease() -> Duration {
    Duration::from_secs(LEASE_S.get().max(1) as u64)
}

/// `onboarding.owner_statement_timeout` in milliseconds (0: none).
pub fn owner_statement_timeout_ms() -> i32 {
    OWNER_STATEMENT_TIMEOUT_MS.get().max(0)
}

pub fn connect_timeout() -> Duration {
    millis(&CONNECT_TIMEOUT_MS)
}

/// When to read Stripe's events, or None when `onboarding.events_poll_interval` is 0 (never).
pub fn events_poll() -> Option<onboarding_core::inbound::PollInterval> {
    let every = millis(&EVENTS_POLL_INTERVAL_MS);
    (!every.is_zero()).then(|| onboarding_core::inbound::PollInterval {
        every,
        fast: millis(&EVENTS_POLL_FAST_INTERVAL_MS).min(every),
        fast_for: onboarding_core::inbound::POLL_FAST_FOR,
    })
}

pub fn request_timeout() -> Duration {
    millis(&REQUEST_TIMEOUT_MS)
}

/// `onboarding.wait_for_standbys`, split: the application_names to wait for (`*`: any one).
pub fn wait_for_standbys() -> Vec<String> {
    text(&WAIT_FOR_STANDBYS)
        .map(|names| names.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect())
        .unwrap_or_default()
}

/// `onboarding.standby_wait_timeout` (None: wait as long as it takes).
pub fn standby_wait_timeout() -> Option<Duration> {
    Some(millis(&STANDBY_WAIT_TIMEOUT_MS)).filter(|timeout| !timeout.is_zero())
}
