//! State shared by the server tasks and the [`crate::Emulator`] handle. One mutex guards
//! everything; it is never held across an `.await`, and requests are small.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::EmulatorConfig;
use crate::faults::FaultQueue;
use crate::idempotency::IdempotencyStore;
use crate::permissions::RestrictedKeys;
use crate::rate_limit::{Limits, RateLimitKind, RateLimiter};
use crate::recorded_request::RecordedRequest;
use crate::route::Route;
use crate::store::Store;
use crate::v2::store::V2Store;

pub struct Shared {
    state: Mutex<State>,
    /// Signalled whenever the request log changes, for [`crate::Emulator::wait_for`].
    changed: Condvar,
    /// `/v1` and `/v2` requests being handled right now, and the most at once since the last reset.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

/// Counts a request as in flight for as long as it lives (however the request ends).
pub struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    pub fn start(shared: &'a Shared) -> InFlight<'a> {
        let now = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct State {
    pub config: EmulatorConfig,
    pub store: Store,
    /// Accounts v2 and thin events.
    pub v2: V2Store,
    pub idempotency: IdempotencyStore,
    pub faults: FaultQueue,
    /// Kept across [`State::reset`], like the configured key: they are the account's keys.
    pub restricted_keys: RestrictedKeys,
    log: Vec<LogEntry>,
    next_request: u64,
    /// Bumped on every log change, so waiters can tell a real change from a spurious wakeup.
    pub generation: u64,
    /// Requests admitted recently, for the optional rate limits.
    rate_limiter: RateLimiter,
}

struct LogEntry {
    /// Stable handle for finishing the entry later; positions shift on `clear_requests`.
    id: u64,
    request: RecordedRequest,
}

impl Shared {
    pub fn new(config: EmulatorConfig) -> Shared {
        Shared {
            state: Mutex::new(State {
                config,
                store: Store::default(),
                v2: V2Store::default(),
                idempotency: IdempotencyStore::default(),
                faults: FaultQueue::default(),
                restricted_keys: RestrictedKeys::default(),
                log: Vec::new(),
                next_request: 0,
                generation: 0,
                rate_limiter: RateLimiter::default(),
            }),
            changed: Condvar::new(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    /// A panic in one request must not wedge the emulator for the rest of a test run.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state, then wakes waiters.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.lock();
        let out = f(&mut state);
        state.generation += 1;
        drop(state);
        self.changed.notify_all();
        out
    }

    /// Blocks until the generation moves past `seen` or `timeout` passes.
    pub fn wait_change(&self, seen: u64, timeout: Duration) {
        let guard = self.lock();
        let _ = self
            .changed
            .wait_timeout_while(guard, timeout, |s| s.generation == seen)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

impl State {
    pub fn record(&mut self, request: RecordedRequest) -> u64 {
        self.next_request += 1;
        let id = self.next_request;
        self.log.push(LogEntry { id, request });
        id
    }

    pub fn finish(&mut self, id: u64, finish: impl FnOnce(&mut RecordedRequest)) {
        // Almost always the newest entry or close to it.
        if let Some(entry) = self.log.iter_mut().rev().find(|e| e.id == id) {
            finish(&mut entry.request);
        }
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log.iter().map(|e| e.request.clone()).collect()
    }

    pub fn clear_requests(&mut self) {
        self.log.clear();
    }

    pub fn reset(&mut self) {
        self.store = Store::default();
        self.v2 = V2Store::default();
        self.idempotency = IdempotencyStore::default();
        self.faults.clear();
        self.config.latency = Duration::ZERO;
        self.log.clear();
        self.rate_limiter = RateLimiter::default();
    }

    /// Checks a `/v1` or `/v2` request arriving at `now` for `route` (`None`: unknown) against the
    /// configured rate limits (see [`RateLimiter::admit`]): counted if admitted, or the limit
    /// that refuses it.
    pub fn check_rate_limits(&mut self, now: Instant, route: Option<&Route>) -> Result<(), RateLimitKind> {
        let limits = Limits {
            global: self.config.rate_limit,
            endpoint: self.config.endpoint_rate_limit,
            search: self.config.search_rate_limit,
        };
        self.rate_limiter.admit(now, route, limits)
    }
}
