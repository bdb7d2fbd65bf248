//! The Stripe key's life cycle in a worker: read from the key file or setting (gucs.rs) into a
//! client at start and after each reload, checked once per key for the permissions this database
//! needs (customers; Connect's once Connect is in use), and handed out admitted by the shared rate
//! budgets (rate_budget.rs). A restricted key without a permission gets one WARNING naming it;
//! without only Connect's, Connect's jobs wait and customers go on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use onboarding_core::budget::{Budgets, Gcra};
use onboarding_core::budget_turns::BudgetTurns;
use onboarding_core::permissions::{Needs, PermissionCheckError};
use onboarding_core::stripe::{ApiKey, ClientConfig, DEFAULT_SEARCH_RATE, STRIPE_API_VERSION, StripeClient};
use pgrx::prelude::*;

use crate::gucs;
use crate::pg::transaction::in_transaction;
use crate::queries::catalog;
use crate::rate_budget::SharedAdmission;

/// What a worker can do with its Stripe key, as `onboarding.stats` shows it (published in the
/// process registry, pg/processes.rs, at every turn of the worker's loop).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyState {
    /// Not known yet (the worker is starting).
    Starting = 0,
    /// No key, or its file or setting is unusable: jobs wait.
    Missing = 1,
    /// Stripe refused the key, or it lacks customers' permissions: no job is claimed.
    Refused = 2,
    /// The key may do customers' work but not Connect's: Connect's jobs wait.
    ConnectRefused = 3,
    /// The key may do what this database needs.
    Usable = 4,
    /// The key may not call `/v2`: accounts_v2 tables' jobs wait.
    AccountsV2Refused = 5,
    /// Both of those: Connect's jobs and accounts_v2 tables' wait.
    ConnectAndAccountsV2Refused = 6,
}

impl KeyState {
    const ALL: [KeyState; 7] = [
        KeyState::Starting,
        KeyState::Missing,
        KeyState::Refused,
        KeyState::ConnectRefused,
        KeyState::Usable,
        KeyState::AccountsV2Refused,
        KeyState::ConnectAndAccountsV2Refused,
    ];

    /// The state a worker published (pg/processes.rs); an unknown code reads as starting.
    fn from_code(code: u32) -> KeyState {
        KeyState::ALL.into_iter().find(|state| *state as u32 == code).unwrap_or(KeyState::Starting)
    }

    /// As `onboarding.stats` counts it.
    fn name(self) -> &'static str {
        match self {
            KeyState::Starting => "starting",
            KeyState::Missing => "missing",
            KeyState::Refused => "refused",
            KeyState::ConnectRefused => "connect refused",
            KeyState::Usable => "usable",
            KeyState::AccountsV2Refused => "accounts_v2 refused",
            KeyState::ConnectAndAccountsV2Refused => "connect and accounts_v2 refused",
        }
    }
}

/// The key states of this database's workers, by name: `onboarding.stats` counts them.
#[pg_extern(name = "_worker_key_states", stable, parallel_safe)]
fn worker_key_states() -> Vec<String> {
    if !crate::pg::processes::shared_memory_ready() {
        return Vec::new();
    }
    crate::pg::processes::key_states_of_my_database()
        .into_iter()
        .map(|code| KeyState::from_code(code).name().to_string())
        .collect()
}

/// While the key's permissions are refused, how often the worker checks them again by itself.
pub const PERMISSION_RECHECK: Duration = Duration::from_secs(60);

/// What waits while the key lacks a permission, each on its own (`StripeKey::held_back`).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeldBack {
    /// Connect's jobs (accounts, links).
    pub connect: bool,
    /// Every job of an accounts_v2 table (`/v2`).
    pub accounts_v2: bool,
}

pub struct StripeKey {
    client: Option<StripeClient>,
    /// The shared rate budgets for the configured key (global, per endpoint, search); rebuilt
    /// with the client.
    budgets: Budgets,
    /// Which waiting call takes the next rate-budget slot (core's budget_turns): a signup's first.
    budget_turns: Arc<BudgetTurns>,
    warned_no_key: bool,
    /// When the key's permission check last refused it (see `has_permissions`).
    refused_at: Option<Instant>,
    /// Since when the key may do customers' work but not Connect's: Connect's jobs wait, the
    /// rest go on (a check refused only Connect's permissions, or a Connect call got a 403).
    connect_refused_at: Option<Instant>,
    /// Since when the key may not call `/v2`, which accounts_v2 tables need: their jobs wait,
    /// v1 tables' go on (a check refused only that, or a v2 call got a 403).
    accounts_v2_refused_at: Option<Instant>,
    /// Whether the last passed check covered Connect (and `/v2`), and when to look again whether
    /// it should (a table's Connect policy set, an account link asked for, an accounts_v2 table
    /// attached, without a reload).
    connect_checked: bool,
    accounts_v2_checked: bool,
    next_permission_look: Instant,
    /// What the last passed permission check was for (a digest of the key, the API base and
    /// version, and whether Connect is in use): a reload that changed none of them (a new rate
    /// budget, say) checks nothing again. The check's probes wait for the budget on this thread,
    /// and a signup behind them waited past 2 s at a 10/s budget.
    permissions_checked_for: Option<u64>,
}

impl StripeKey {
    pub fn new() -> StripeKey {
        StripeKey {
            client: None,
            budgets: Budgets::default(),
            budget_turns: Arc::default(),
            warned_no_key: false,
            refused_at: None,
            connect_refused_at: None,
            accounts_v2_refused_at: None,
            connect_checked: false,
            accounts_v2_checked: false,
            next_permission_look: Instant::now() + PERMISSION_RECHECK,
            permissions_checked_for: None,
        }
    }

    /// The configuration was reloaded: the client is built again at the next use (calls in
    /// flight keep the client they started with).
    pub fn reloaded(&mut self) {
        self.client = None;
        self.warned_no_key = false;
        self.refused_at = None;
        if self.connect_refused_at.is_some() || self.accounts_v2_refused_at.is_some() {
            // The key's Connect (or /v2) permissions may have been granted: check them again now.
            self.permissions_checked_for = None;
        }
    }

    /// The client as built, without building it (None while no usable key is configured).
    pub fn current(&self) -> Option<&StripeClient> {
        self.client.as_ref()
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// How a call or a maintenance request waits for the shared rate budgets (`first_lane`: ahead
    /// of the queue's requests, as a signup's).
    pub fn admission(&self, first_lane: bool) -> SharedAdmission {
        SharedAdmission::new(self.budgets, self.budget_turns.clone(), first_lane)
    }

    /// The client, each of whose requests waits for the shared rate budgets.
    pub fn admitted(&self, first_lane: bool) -> Option<StripeClient> {
        self.client.as_ref().map(|client| client.admitted_by(Arc::new(self.admission(first_lane))))
    }

    /// What this worker can do with its key now.
    pub fn state(&self) -> KeyState {
        let held_back = self.held_back();
        match (&self.client, self.refused_at) {
            (Some(_), _) => match (held_back.connect, held_back.accounts_v2) {
                (true, true) => KeyState::ConnectAndAccountsV2Refused,
                (true, false) => KeyState::ConnectRefused,
                (false, true) => KeyState::AccountsV2Refused,
                (false, false) => KeyState::Usable,
            },
            (None, Some(_)) => KeyState::Refused,
            (None, None) if self.warned_no_key => KeyState::Missing,
            (None, None) => KeyState::Starting,
        }
    }

    /// What waits for the key: Connect's jobs, accounts_v2 tables' jobs.
    pub fn held_back(&self) -> HeldBack {
        HeldBack { connect: self.connect_refused_at.is_some(), accounts_v2: self.accounts_v2_refused_at.is_some() }
    }

    /// The client, built (and the key checked) after each configuration reload. None while no
    /// key is configured, or the key may not do customers' work.
    pub fn client(&mut self, runtime: &tokio::runtime::Runtime) -> Option<&StripeClient> {
        if self.client.is_none() {
            let api_key_text = match gucs::stripe_api_key() {
                Ok(gucs::KeySource::File(key) | gucs::KeySource::Setting(key)) => key,
                Ok(gucs::KeySource::None) => String::new(),
                Err(why) => {
                    if !std::mem::replace(&mut self.warned_no_key, true) {
                        warning!("onboarding: {why}; jobs wait until it is fixed (then SELECT pg_reload_conf())");
                    }
                    return None;
                }
            };
            let Some(api_key) = ApiKey::new(api_key_text.clone()) else {
                if !std::mem::replace(&mut self.warned_no_key, true) {
                    warning!(
                        "onboarding: no Stripe key: onboarding.stripe_api_key_file and onboarding.stripe_api_key \
                         are not set; jobs wait until one is (a file readable only by the postgres OS user, then \
                         ALTER SYSTEM SET onboarding.stripe_api_key_file = '/path'; SELECT pg_reload_conf();)"
                    );
                }
                return None;
            };
            self.budgets = gucs::rate_budget(&api_key_text);
            let config = ClientConfig {
                api_base: gucs::stripe_api_base(),
                api_key,
                connect_timeout: gucs::connect_timeout(),
                request_timeout: gucs::request_timeout(),
                api_version: gucs::stripe_api_version(),
                search_rate: DEFAULT_SEARCH_RATE,
            };
            if self.refused_at.is_some_and(|at| at.elapsed() < PERMISSION_RECHECK) {
                return None;
            }
            match StripeClient::new(&config) {
                Ok(client) => {
                    let checked = (api_key_text.as_str(), config.api_base.as_str(), config.api_version.as_deref());
                    if !self.has_permissions(runtime, &client, checked) {
                        return None;
                    }
                    // Says when a reload took effect (never the key).
                    let per_second = |g: Option<Gcra>| {
                        g.map_or("off".into(), |g| format!("{:.2}/s", 1.0 / g.interval.as_secs_f64()))
                    };
                    let budget = format!(
                        "{} (each endpoint {}, search {})",
                        per_second(self.budgets.global),
                        per_second(self.budgets.per_endpoint),
                        per_second(self.budgets.search)
                    );
                    log!(
                        "onboarding: Stripe client ready: {}, API version {}, rate budget {budget}",
                        config.api_base,
                        config.api_version.as_deref().unwrap_or(STRIPE_API_VERSION)
                    );
                    self.client = Some(client)
                }
                Err(e) => {
                    if !std::mem::replace(&mut self.warned_no_key, true) {
                        warning!("onboarding: {e}; jobs wait until the configuration is fixed");
                    }
                    return None;
                }
            }
        }
        self.client.as_ref()
    }

    /// The key may not do Connect's work (`why`): Connect's jobs wait from now on, said once until
    /// a check passes; the check runs again every [`PERMISSION_RECHECK`].
    pub fn refuse_connect(&mut self, why: &str) {
        if self.connect_refused_at.replace(Instant::now()).is_none() {
            ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("onboarding: {why}; Connect jobs wait until the key may, customers go on"),
                "Give the restricted key the Connect permissions the docs list (docs/src/guides/stripe-key.md, \"Restricted keys\"), then \
                 SELECT pg_reload_conf(); the worker also checks again every minute."
            );
        }
    }

    /// The key may not call `/v2` (`why`): accounts_v2 tables' jobs wait from now on, said once
    /// until a check passes; the check runs again every [`PERMISSION_RECHECK`].
    pub fn refuse_accounts_v2(&mut self, why: &str) {
        if self.accounts_v2_refused_at.replace(Instant::now()).is_none() {
            ereport!(
                WARNING,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("onboarding: {why}; accounts_v2 tables' jobs wait until the key may, v1 tables' go on"),
                "Give the restricted key the permissions the docs list for Accounts v2 (docs/src/guides/stripe-key.md, \"Restricted \
                 keys\"), or use a secret key, then SELECT pg_reload_conf(); the worker also checks again every minute."
            );
        }
    }

    /// Every [`PERMISSION_RECHECK`]: while Connect's permissions are refused, or once Connect came
    /// into use since a check that did not cover it, the client is built and the key checked again
    /// at the next use (calls in flight keep the client they started with).
    pub fn look_at_permissions_again(&mut self) {
        let now = Instant::now();
        if now < self.next_permission_look || self.client.is_none() {
            return;
        }
        self.next_permission_look = now + PERMISSION_RECHECK;
        let newly_in_use = (!self.connect_checked
            && matches!(in_transaction("looking for Connect's use", catalog::connect_in_use), Ok(Ok(true))))
            || (!self.accounts_v2_checked
                && matches!(
                    in_transaction("looking for accounts_v2 tables", catalog::accounts_v2_in_use),
                    Ok(Ok(true))
                ));
        if self.connect_refused_at.is_some() || self.accounts_v2_refused_at.is_some() || newly_in_use {
            self.client = None;
            self.permissions_checked_for = None;
        }
    }

    /// Checks once per key (again every [`PERMISSION_RECHECK`] while refused, and at a reload that
    /// changed the key, the API base or version, or Connect's use) that it may do what this
    /// database needs: customers, and Connect accounts and their links once Connect is in use
    /// (`catalog::connect_in_use`: a Connect policy, an account, a Connect job; a column alone is
    /// not). A restricted key without a permission gets one WARNING naming it: without customers'
    /// no job is claimed, without only Connect's no Connect job is (customers go on); none dies
    /// of it, until a reload or the next check.
    /// A check that gets no answer lets the worker go on: its calls retry as any.
    fn has_permissions(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        client: &StripeClient,
        checked: (&str, &str, Option<&str>),
    ) -> bool {
        let in_use = |what, query: fn() -> Result<bool, pgrx::spi::Error>| match in_transaction(what, query) {
            Ok(Ok(in_use)) => in_use,
            _ => true,
        };
        let needs = Needs {
            connect: in_use("looking for Connect columns", catalog::connect_in_use),
            accounts_v2: in_use("looking for accounts_v2 tables", catalog::accounts_v2_in_use),
        };
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (checked, needs).hash(&mut hasher);
            hasher.finish()
        };
        if self.permissions_checked_for == Some(digest) {
            return true;
        }
        let client = client.admitted_by(Arc::new(self.admission(false)));
        let passed = |key: &mut StripeKey| {
            key.refused_at = None;
            key.permissions_checked_for = Some(digest);
            key.connect_checked = needs.connect;
            key.accounts_v2_checked = needs.accounts_v2;
        };
        match runtime.block_on(client.check_permissions(needs)) {
            Ok(()) => {
                if self.connect_refused_at.take().is_some() {
                    log!("onboarding: the Stripe key may do Connect's work now; Connect jobs go on");
                }
                if self.accounts_v2_refused_at.take().is_some() {
                    log!("onboarding: the Stripe key may call /v2 now; accounts_v2 tables' jobs go on");
                }
                passed(self);
                true
            }
            // Only Connect's or accounts_v2 tables' permissions are missing: those jobs wait, each
            // for its own, and v1 customers go on.
            Err(refused) if refused.scoped_only() => {
                match refused.only(|m| m.connect_only) {
                    Some(connect) => self.refuse_connect(&connect.to_string()),
                    None => self.connect_refused_at = None,
                }
                match refused.only(|m| m.accounts_v2_only && !m.connect_only) {
                    Some(v2) => self.refuse_accounts_v2(&v2.to_string()),
                    None => self.accounts_v2_refused_at = None,
                }
                passed(self);
                true
            }
            Err(PermissionCheckError::Inconclusive(e)) => {
                warning!("onboarding: could not check the Stripe key's permissions ({e}); going on");
                true
            }
            Err(refused) => {
                self.permissions_checked_for = None;
                if self.refused_at.is_none() {
                    ereport!(
                        WARNING,
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        format!("onboarding: {refused}; no job is claimed until the key may"),
                        "Give the restricted key the permissions the docs list (docs/src/guides/stripe-key.md, \"Restricted keys\") (or use another \
                         key), then SELECT pg_reload_conf(); the worker also checks again every minute."
                    );
                }
                self.refused_at = Some(Instant::now());
                false
            }
        }
    }
}
