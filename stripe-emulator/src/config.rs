//! The emulator's settings.

use std::time::Duration;

use crate::auth;

/// Settings fixed at start (some adjustable later through [`crate::Emulator`]).
#[derive(Clone, Default)]
pub struct EmulatorConfig {
    /// Accept only this exact key. `None` accepts any `sk_test_…` or `rk_test_…` key.
    pub api_key: Option<String>,
    /// How long a write takes to show up in search results (Stripe's search is eventually
    /// consistent). Zero makes search read-after-write.
    pub search_lag: Duration,
    /// Added to every `/v1` and `/v2` request before it executes (after the idempotency key is
    /// claimed, so a concurrent retry sees it in flight).
    pub latency: Duration,
    /// Answer `429 rate_limit` above this many `/v1` and `/v2` requests per second, all together
    /// (Stripe: 100 in live mode, 25 in a sandbox). See [Rate limits](crate#rate-limits).
    pub rate_limit: Option<u32>,
    /// Answer `429 rate_limit` above this many requests per second to any one endpoint, the
    /// search endpoints excepted (Stripe: 25). See [Rate limits](crate#rate-limits).
    pub endpoint_rate_limit: Option<u32>,
    /// Answer `429 rate_limit` above this many requests per second to the search endpoints,
    /// all together (Stripe: 20). See [Rate limits](crate#rate-limits).
    pub search_rate_limit: Option<u32>,
    /// One line per request on stderr (never the API key).
    pub log_requests: bool,
    /// Answer a request without `Stripe-Version` in the pinned version, as Stripe answers it in
    /// the account's default: for releases of the extension older than the pin (the upgrade
    /// suite runs one). By default such a request is refused.
    pub accept_unpinned: bool,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("api_key", &self.api_key.as_deref().map(auth::mask))
            .field("search_lag", &self.search_lag)
            .field("latency", &self.latency)
            .field("rate_limit", &self.rate_limit)
            .field("endpoint_rate_limit", &self.endpoint_rate_limit)
            .field("search_rate_limit", &self.search_rate_limit)
            .field("log_requests", &self.log_requests)
            .field("accept_unpinned", &self.accept_unpinned)
            .finish()
    }
}
