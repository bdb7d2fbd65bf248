#![allow(dead_code)] // shared by several test binaries, each using a part of it

//! postgresql.conf lines shared by the suites that break things on purpose (chaos, failover): a
//! worker that rides out failures fast — short timeouts, quick retries, many attempts, a short lease.

/// The lines for a worker talking to the Stripe emulator at `api_base` with `api_key`, running
/// `workers` workers per database that keep `batch_size` calls in flight, budget off.
pub fn fast_recovery(api_base: &str, api_key: &str, workers: u32, batch_size: u32) -> String {
    format!(
        "onboarding.stripe_api_base = '{api_base}'\n\
         onboarding.stripe_api_key = '{api_key}'\n\
         onboarding.workers = {workers}\n\
         onboarding.batch_size = {batch_size}\n\
         onboarding.poll_interval = '500ms'\n\
         onboarding.retry_base_delay = '50ms'\n\
         onboarding.retry_max_delay = '1s'\n\
         onboarding.max_attempts = 25\n\
         onboarding.connect_timeout = '1s'\n\
         onboarding.request_timeout = '1s'\n\
         onboarding.lease = '15s'\n\
         onboarding.rate_limit = 0\n\
         onboarding.endpoint_rate_limit = 0\n\
         onboarding.search_rate_limit = 0\n"
    )
}
