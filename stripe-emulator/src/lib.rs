//! A Stripe-compatible test server: customers, Connect accounts and account links, with
//! Stripe's idempotency semantics, eventually consistent search, and injectable faults.
//!
//! Tests run it in-process:
//!
//! ```no_run
//! use stripe_emulator::{Emulator, EmulatorConfig, Fault};
//!
//! let emulator = Emulator::start("127.0.0.1:0", EmulatorConfig::default()).unwrap();
//! emulator.inject(Fault::status(503).on("POST", "/v1/customers").should_retry(true));
//! // ... point the client at emulator.base_url() ...
//! assert!(emulator.customers().is_empty());
//! ```
//!
//! The `stripe-emulator` binary serves the same thing standalone, with the test controls
//! over HTTP under `/_emulator/` (no auth, never logged as `/v1` requests):
//!
//! | Request | Effect |
//! |---|---|
//! | `GET /_emulator/requests` | the request log as a JSON array ([`RecordedRequest::to_json`]) |
//! | `DELETE /_emulator/requests` | clears the log |
//! | `POST /_emulator/reset` | [`Emulator::reset`] |
//! | `POST /_emulator/faults` | injects a fault: `{"kind":"status","status":503,"method":"POST","path_prefix":"/v1/customers","times":1,"should_retry":true}`; kinds `status` (with optional `type`, `code`, `message`, `after_execute`, `stored`), `rate_limit`, `lock_timeout`, `drop_before_execute`, `drop_after_execute`, `stall` (with `ms`) |
//! | `DELETE /_emulator/faults` | drops pending faults |
//! | `POST /_emulator/latency`, `POST /_emulator/search_lag` | `{"ms": N}` |
//! | `POST /_emulator/expire_idempotency_keys` | [`Emulator::expire_idempotency_keys`] |
//! | `GET /_emulator/customers`, `GET /_emulator/accounts` | live objects, oldest first |

mod api;
mod auth;
mod control;
mod error;
mod faults;
mod form;
mod idempotency;
mod search;
mod server;
mod state;
mod store;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::oneshot;

pub use faults::{Fault, FaultAction};

use state::Shared;

/// Settings fixed at start (some adjustable later through [`Emulator`]).
#[derive(Clone, Default)]
pub struct EmulatorConfig {
    /// Accept only this exact key. `None` accepts any `sk_test_…` or `rk_test_…` key.
    pub api_key: Option<String>,
    /// How long a write takes to show up in search results (Stripe's search is eventually
    /// consistent). Zero makes search read-after-write.
    pub search_lag: Duration,
    /// Added to every `/v1` request before it executes (after the idempotency key is
    /// claimed, so a concurrent retry sees it in flight).
    pub latency: Duration,
    /// Answer `429 rate_limit` above this many `/v1` requests per second.
    pub rate_limit: Option<u32>,
    /// One line per request on stderr (never the API key).
    pub log_requests: bool,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("api_key", &self.api_key.as_deref().map(auth::mask))
            .field("search_lag", &self.search_lag)
            .field("latency", &self.latency)
            .field("rate_limit", &self.rate_limit)
            .field("log_requests", &self.log_requests)
            .finish()
    }
}

/// One `/v1` request as the emulator saw it. The Authorization header is never recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Form body (POST) and query string parameters, nested: `metadata[a]=b` is
    /// `{"metadata": {"a": "b"}}`. Leaf values are strings, as sent.
    pub params: Value,
    pub idempotency_key: Option<String>,
    pub arrived_at: SystemTime,
    /// `None` if the connection was dropped (injected) or the client went away first.
    pub status: Option<u16>,
    /// The `Request-Id` sent back; `None` when no response was sent.
    pub request_id: Option<String>,
    /// Answered from the idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl RecordedRequest {
    /// The shape served by `GET /_emulator/requests`.
    pub fn to_json(&self) -> Value {
        let arrived_ms = self.arrived_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        json!({
            "method": self.method,
            "path": self.path,
            "params": self.params,
            "idempotency_key": self.idempotency_key,
            "arrived_at_ms": arrived_ms,
            "status": self.status,
            "request_id": self.request_id,
            "replayed": self.replayed,
        })
    }
}

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Binds `addr` (e.g. `"127.0.0.1:0"`) and serves on a background thread with its own
    /// tokio runtime. The socket is listening when this returns.
    pub fn start(addr: &str, config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stripe-emulator")
            .enable_all()
            .build()?;
        let (shutdown, stop) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new().name("stripe-emulator".into()).spawn(move || {
            runtime.block_on(server::serve(listener, serving, stop));
            // Open connections (e.g. a stalled request) must not delay shutdown.
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
        Ok(Emulator { shared, addr, shutdown: Some(shutdown), thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (a wildcard bind address is reported as loopback).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }

    /// Every `/v1` request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests()
    }

    /// Forgets objects, idempotency keys, faults, latency and the request log.
    /// Settings from [`EmulatorConfig`] other than latency are kept.
    pub fn reset(&self) {
        self.shared.update(|s| s.reset());
    }

    /// The most `/v1` requests handled at once since the last [`Emulator::reset_max_in_flight`].
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn reset_max_in_flight(&self) {
        self.shared.max_in_flight.store(0, std::sync::atomic::Ordering::Release);
    }

    pub fn clear_requests(&self) {
        self.shared.update(|s| s.clear_requests());
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.update(|s| s.config.latency = latency);
    }

    pub fn set_search_lag(&self, lag: Duration) {
        self.shared.update(|s| s.config.search_lag = lag);
    }

    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.shared.update(|s| s.config.rate_limit = per_second);
    }

    /// Chaos mode: every matching request that no queued fault claims fails with `probability`,
    /// with one of `faults` picked at random. `set_random_faults(0.0, vec![])` turns it off.
    pub fn set_random_faults(&self, probability: f64, faults: Vec<Fault>) {
        self.shared.update(|s| s.faults.set_random(probability, faults));
    }

    /// Queues a fault; faults are consumed in injection order by matching requests.
    pub fn inject(&self, fault: Fault) {
        self.shared.update(|s| s.faults.push(fault));
    }

    /// Idempotency keys of POSTs that are executing (or waiting out the latency) right now.
    /// Lets a test wait until a request is in flight before racing a second one.
    pub fn in_flight_keys(&self) -> Vec<String> {
        self.shared.lock().idempotency.in_flight()
    }

    /// Forgets saved idempotent responses, like Stripe pruning keys after 24 hours: a retry
    /// with an old key then executes again.
    pub fn expire_idempotency_keys(&self) {
        self.shared.update(|s| s.idempotency.expire_saved());
    }

    /// Faults injected but not yet used up.
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.pending()
    }

    /// Live (not deleted) customers, oldest first.
    pub fn customers(&self) -> Vec<Value> {
        self.shared.lock().store.customers.live().cloned().collect()
    }

    /// Live (not deleted) accounts, oldest first.
    pub fn accounts(&self) -> Vec<Value> {
        self.shared.lock().store.accounts.live().cloned().collect()
    }

    /// Waits until `condition` holds, re-checking whenever a request arrives or finishes
    /// (and on any change made through this handle). Returns false on timeout.
    pub fn wait_for(&self, timeout: Duration, mut condition: impl FnMut(&Emulator) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.shared.lock().generation;
            if condition(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.shared.wait_change(seen, deadline - now);
        }
    }

    /// Stops serving and waits for the server thread. Same as dropping.
    pub fn stop(self) {}
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    /// Tests keep one emulator in a `static` and share it between threads.
    #[test]
    fn emulator_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Emulator>();
    }
}
