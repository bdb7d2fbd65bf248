//! Stripe's request rate limits: a global one over every `/v1` and `/v2` request, one per endpoint (each
//! [`Route`] pattern apart, whatever the object id), and one shared by the search endpoints,
//! which count under it instead of the per-endpoint limit. Unknown routes count only globally.
//!
//! Each limit counts in a sliding one-second window: a request is admitted if fewer than the
//! limit's requests were admitted in the second before it. A request is checked against every
//! limit it falls under (global first) and counted in their windows only if all of them admit
//! it, so a refused request counts against none. A limit that is off counts nothing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::route::Route;

const WINDOW: Duration = Duration::from_secs(1);

/// Which configured limit refused a request with `429 rate_limit` (see
/// [`crate::Emulator::rate_limited`] and [`crate::RecordedRequest::rate_limited_by`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitKind {
    /// [`crate::EmulatorConfig::rate_limit`]: all `/v1` and `/v2` requests together.
    Global,
    /// [`crate::EmulatorConfig::endpoint_rate_limit`]: the requests to one endpoint.
    Endpoint,
    /// [`crate::EmulatorConfig::search_rate_limit`]: the requests to the search endpoints.
    Search,
}

impl RateLimitKind {
    /// `"global"`, `"endpoint"` or `"search"`, as in `GET /_emulator/requests`.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitKind::Global => "global",
            RateLimitKind::Endpoint => "endpoint",
            RateLimitKind::Search => "search",
        }
    }
}

/// Requests per second; `None` is not enforced.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub global: Option<u32>,
    pub endpoint: Option<u32>,
    pub search: Option<u32>,
}

/// The windows of the requests each limit admitted.
#[derive(Debug, Default)]
pub struct RateLimiter {
    global: Window,
    search: Window,
    /// Keyed by [`Route::endpoint`]: one window per method and path pattern.
    endpoints: HashMap<&'static str, Window>,
}

impl RateLimiter {
    /// Admits a request arriving at `now` for `route` (`None`: an unknown route), counting it
    /// under every limit it falls under, or names the first limit that refuses it.
    pub fn admit(&mut self, now: Instant, route: Option<&Route>, limits: Limits) -> Result<(), RateLimitKind> {
        let mut own = route.map(|route| {
            if route.is_search() {
                (RateLimitKind::Search, limits.search, &mut self.search)
            } else {
                (RateLimitKind::Endpoint, limits.endpoint, self.endpoints.entry(route.endpoint()).or_default())
            }
        });
        if self.global.is_full(now, limits.global) {
            return Err(RateLimitKind::Global);
        }
        if let Some((kind, limit, window)) = &mut own {
            if window.is_full(now, *limit) {
                return Err(*kind);
            }
        }
        self.global.count(now, limits.global);
        if let Some((_, limit, window)) = own {
            window.count(now, limit);
        }
        Ok(())
    }
}

/// Arrival times of the requests admitted in the last second, oldest first.
#[derive(Debug, Default)]
struct Window(VecDeque<Instant>);

impl Window {
    /// Whether `limit` requests were already admitted in the second before `now`.
    fn is_full(&mut self, now: Instant, limit: Option<u32>) -> bool {
        let Some(limit) = limit else {
            return false;
        };
        while self.0.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            self.0.pop_front();
        }
        self.0.len() >= limit as usize
    }

    /// Only while the limit is on: off, nothing would ever prune the window.
    fn count(&mut self, now: Instant, limit: Option<u32>) {
        if limit.is_some() {
            self.0.push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: Option<&Route> = Some(&Route::CreateCustomer);
    const SEARCH: Option<&Route> = Some(&Route::SearchCustomers);
    const UNKNOWN: Option<&Route> = None;

    fn get(id: &str) -> Route {
        Route::GetCustomer(id.to_string())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_window_slides_over_one_second() {
        let limits = Limits { global: Some(2), ..Limits::default() };
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.admit(t0, CREATE, limits), Ok(()));
        assert_eq!(limiter.admit(t0 + ms(500), CREATE, limits), Ok(()));
        assert_eq!(limiter.admit(t0 + ms(999), CREATE, limits), Err(RateLimitKind::Global));
        // The first request leaves the window exactly one second after it arrived.
        assert_eq!(limiter.admit(t0 + ms(1000), CREATE, limits), Ok(()));
        assert_eq!(limiter.admit(t0 + ms(1400), CREATE, limits), Err(RateLimitKind::Global));
        assert_eq!(limiter.admit(t0 + ms(1500), CREATE, limits), Ok(()));
    }

    #[test]
    fn each_endpoint_counts_apart_whatever_the_object_id() {
        let limits = Limits { endpoint: Some(2), ..Limits::default() };
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        assert_eq!(limiter.admit(now, CREATE, limits), Ok(()));
        assert_eq!(limiter.admit(now, CREATE, limits), Ok(()));
        assert_eq!(limiter.admit(now, CREATE, limits), Err(RateLimitKind::Endpoint));
        assert_eq!(limiter.admit(now, Some(&get("cus_A")), limits), Ok(()));
        assert_eq!(limiter.admit(now, Some(&get("cus_B")), limits), Ok(()));
        assert_eq!(limiter.admit(now, Some(&get("cus_C")), limits), Err(RateLimitKind::Endpoint));
        let update = Route::UpdateCustomer("cus_A".into());
        assert_eq!(limiter.admit(now, Some(&update), limits), Ok(()));
    }

    #[test]
    fn search_counts_under_its_own_limit_instead_of_the_endpoint_one() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        let limits = Limits { endpoint: Some(1), search: Some(2), ..Limits::default() };
        assert_eq!(limiter.admit(now, SEARCH, limits), Ok(()));
        assert_eq!(limiter.admit(now, SEARCH, limits), Ok(()));
        assert_eq!(limiter.admit(now, SEARCH, limits), Err(RateLimitKind::Search));
        // With no search limit, search is limited only globally.
        let limits = Limits { endpoint: Some(1), ..Limits::default() };
        assert!((0..10).all(|_| limiter.admit(now, SEARCH, limits).is_ok()));
    }

    #[test]
    fn unknown_routes_count_only_globally() {
        let limits = Limits { global: Some(3), endpoint: Some(1), search: Some(1) };
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        assert_eq!(limiter.admit(now, UNKNOWN, limits), Ok(()));
        assert_eq!(limiter.admit(now, UNKNOWN, limits), Ok(()));
        assert_eq!(limiter.admit(now, CREATE, limits), Ok(()));
        assert_eq!(limiter.admit(now, UNKNOWN, limits), Err(RateLimitKind::Global));
    }

    #[test]
    fn a_request_refused_by_the_global_limit_counts_against_no_endpoint() {
        let limits = Limits { global: Some(2), endpoint: Some(1), ..Limits::default() };
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.admit(t0, Some(&get("cus_A")), limits), Ok(()));
        assert_eq!(limiter.admit(t0 + ms(500), CREATE, limits), Ok(()));
        // Both windows are full; the global one is reported.
        assert_eq!(limiter.admit(t0 + ms(600), Some(&get("cus_B")), limits), Err(RateLimitKind::Global));
        // The first GET has left both windows; the refused one never entered the GET window.
        assert_eq!(limiter.admit(t0 + ms(1000), Some(&get("cus_C")), limits), Ok(()));
    }

    #[test]
    fn a_request_refused_by_its_endpoint_limit_does_not_count_globally() {
        let limits = Limits { global: Some(2), endpoint: Some(1), ..Limits::default() };
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        assert_eq!(limiter.admit(now, CREATE, limits), Ok(()));
        assert_eq!(limiter.admit(now, CREATE, limits), Err(RateLimitKind::Endpoint));
        assert_eq!(limiter.admit(now, Some(&get("cus_A")), limits), Ok(()));
    }

    #[test]
    fn limits_that_are_off_count_nothing() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for route in [CREATE, SEARCH, UNKNOWN, Some(&get("cus_A"))] {
            assert!((0..100).all(|_| limiter.admit(now, route, Limits::default()).is_ok()));
        }
        assert!(limiter.global.0.is_empty() && limiter.search.0.is_empty());
        assert!(limiter.endpoints.values().all(|w| w.0.is_empty()));
    }
}
