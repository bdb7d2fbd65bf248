//! Retry policy: which failures are worth another attempt, and how long to wait first.
//! Follows Stripe's guidance and its official SDKs (see shared/reference/stripe-api.md).
//!
//! Two namespaces, two classifications: [`classify`] for `/v1` requests, [`classify_v2`] for
//! `/v2` ones, whose idempotency works otherwise. The backoff is the same for both.

use std::time::Duration;

use rand::Rng;

use crate::stripe::error::StripeError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Try again later with the same idempotency key.
    Retry { rate_limited: bool },
    /// Another attempt would fail the same way: park the job with the reason.
    Permanent,
    /// Stripe refused the idempotency key (`idempotency_error`): the object may exist already, so
    /// the next attempt looks it up before anything else. Never a blind second create.
    LookUpFirst,
    /// A POST's 500: Stripe may or may not have made the object, and it replays the same 500 for
    /// this idempotency key forever. The next attempt looks the object up and, if there is none,
    /// creates it under a new key ([`key_after_unknown_outcome`]).
    OutcomeUnknown,
}

/// The idempotency key of the attempt after `attempt` ended in a POST's 500 under `key`. Derived,
/// not random: a standby promoted before the record of that attempt replicated derives the same
/// key again, so no replay can send the create under two new keys.
pub fn key_after_unknown_outcome(key: &str, attempt: u32) -> String {
    // Stripe allows 255 characters; our keys are far shorter, but never send a longer one.
    let suffix = format!("-after-500-{attempt}");
    let keep = key.len().min(255 - suffix.len());
    let mut end = keep;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &key[..end])
}

/// Classifies the outcome of a request; `is_post` matters because a POST's 500 is stored under
/// its idempotency key, so replaying it can only return the same 500 (Stripe treats its outcome
/// as unknown).
pub fn classify(error: &StripeError, is_post: bool) -> Disposition {
    const RETRY: Disposition = Disposition::Retry { rate_limited: false };
    match error {
        // Stripe may or may not have executed it; the idempotency key makes another try safe.
        StripeError::Transport { .. } => RETRY,
        StripeError::InvalidResponse { .. } | StripeError::Config(_) => Disposition::Permanent,
        StripeError::Api(e) => match (e.should_retry, e.status) {
            (Some(true), 429) => Disposition::Retry { rate_limited: true },
            (Some(true), _) => RETRY,
            (Some(false), _) => Disposition::Permanent,
            (None, 400) if is_post && e.error_type.as_deref() == Some("idempotency_error") => Disposition::LookUpFirst,
            (None, 429) => Disposition::Retry { rate_limited: true },
            // 409 includes `idempotency_key_in_use`: the first request is still running.
            (None, 409 | 424 | 502 | 503 | 504) => RETRY,
            (None, 500) if is_post => Disposition::OutcomeUnknown,
            (None, s) if s >= 500 => RETRY,
            (None, _) => Disposition::Permanent,
        },
    }
}

/// How long after a v2 request was first sent its idempotency key is trusted to cover a retry.
/// Past it, the next attempt looks the object up first ([`v2_look_up_before_retry`]).
///
/// Stripe documents no window for v2 keys in what was checked: v1 keys are kept "at least 24
/// hours" (docs.stripe.com/api/idempotent_requests), and v2's 30 days are reported only by
/// secondary sources (SDK ports' docs: "v1 has 24h window, v2 has 30d window"). Trusting a key
/// for longer than Stripe keeps it would make a second object; looking up a little early costs
/// one look-up. So v1's documented floor, until Stripe documents v2's.
pub const V2_KEY_HORIZON: Duration = Duration::from_secs(24 * 60 * 60);

/// Whether the attempt after `since_first_sent` (the time since the request was first sent under
/// its key) must look the object up before sending again: past [`V2_KEY_HORIZON`], Stripe may
/// have forgotten the key and would do the work a second time.
pub fn v2_look_up_before_retry(since_first_sent: Duration) -> bool {
    since_first_sent >= V2_KEY_HORIZON
}

/// How long the v2 Accounts list may lag behind a write: an Account made less than this ago may
/// not be listed yet (the list is eventually consistent; Stripe gives no bound, and its lag is
/// seconds in practice). A look-up that does not find the Account the first attempt may have made
/// is proof of absence only once that attempt is older than this.
pub const V2_LIST_SETTLED: Duration = Duration::from_secs(10 * 60);

/// Whether a v2 look-up that did not find the user's Account proves that the attempt made
/// `since_first_sent` ago made none (see [`V2_LIST_SETTLED`]); if not, when to look again.
pub fn v2_not_found_is_absent(since_first_sent: Duration) -> Result<(), Duration> {
    match V2_LIST_SETTLED.checked_sub(since_first_sent) {
        None | Some(Duration::ZERO) => Ok(()),
        Some(remaining) => Err(remaining.max(Duration::from_secs(30))),
    }
}

/// The key under which a creation job closes the Account its lost attempt made, once the profile
/// is gone. Not the creation's own key: Stripe binds a key to one endpoint ("Keys for idempotent
/// requests can only be used for the same endpoint they were first used for") and would refuse
/// the close. Derived from it, so it is fixed when the creation's key is and the same at every
/// retry of the clean-up.
pub fn v2_clean_up_close_key(creation_key: &str) -> String {
    format!("{creation_key}-close")
}

/// Classifies the outcome of a `/v2` request. v2's idempotency is not v1's: "For API v1, Stripe
/// saves the status code and body of the first request made with a given idempotency key …
/// Retries with the same key return the saved response, including `500` errors. With API v2,
/// retries don't repeat successful operations. Stripe retries failed or partially failed work to
/// completion when possible and returns an updated response. If a retry can't succeed, Stripe
/// returns an error explaining why" (docs.stripe.com/api/idempotent_requests; "the API retries
/// failed requests without producing side effects", docs.stripe.com/api-v2-overview). So:
///
/// - **retried under the same key**: no answer, 409 (a request with the key still running),
///   424, 429 (rate limited; also `type`/`code` `rate_limit`), and every 5xx, **a POST's 500
///   included**: the retry completes the work, it does not replay the 500. Hence no
///   [`Disposition::OutcomeUnknown`] and no new key in v2;
/// - **permanent**: `Stripe-Should-Retry: false` (which, as for v1, overrides every other rule,
///   and is how "a retry can't succeed" is said), every other 4xx, and an answer that is not
///   what was asked for;
/// - **look-up first**: `idempotency_error` on a POST (not a 409): the key is bound to another
///   request (another body, as when the profile changed between attempts, or another endpoint),
///   so the object may exist from the first: find it before anything else, never a blind create
///   under a new key. Past [`V2_KEY_HORIZON`] the caller looks up first as well
///   ([`v2_look_up_before_retry`]).
///
/// `Stripe-Should-Retry: true` retries whatever the status, as for v1.
pub fn classify_v2(error: &StripeError, is_post: bool) -> Disposition {
    const RETRY: Disposition = Disposition::Retry { rate_limited: false };
    match error {
        StripeError::Transport { .. } => RETRY,
        StripeError::InvalidResponse { .. } | StripeError::Config(_) => Disposition::Permanent,
        StripeError::Api(e) => {
            let rate_limited = e.status == 429
                || e.error_type.as_deref() == Some("rate_limit")
                || e.code.as_deref().is_some_and(|code| code == "rate_limit" || code == "lock_timeout");
            let idempotency = e.error_type.as_deref() == Some("idempotency_error");
            match (e.should_retry, e.status) {
                (Some(true), _) => Disposition::Retry { rate_limited },
                (Some(false), _) => Disposition::Permanent,
                (None, _) if rate_limited => Disposition::Retry { rate_limited: true },
                // A request with the same key is still running: nothing is decided yet.
                (None, 409) => RETRY,
                (None, _) if idempotency && is_post => Disposition::LookUpFirst,
                (None, 424) => RETRY,
                (None, s) if s >= 500 => RETRY,
                (None, _) => Disposition::Permanent,
            }
        }
    }
}

/// Exponential backoff with "equal" jitter (a random factor in [0.5, 1], as Stripe's SDKs use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

/// Stripe's advice for 429s is to back off starting at a second; never go faster than that.
const RATE_LIMIT_BASE: Duration = Duration::from_secs(1);
const RATE_LIMIT_CAP: Duration = Duration::from_secs(30);

impl Backoff {
    /// The wait before attempt `failed_attempts + 1`, given `failed_attempts >= 1`.
    pub fn delay(&self, failed_attempts: u32, rate_limited: bool, rng: &mut impl Rng) -> Duration {
        let (base, cap) = if rate_limited {
            (self.base.max(RATE_LIMIT_BASE), self.cap.max(RATE_LIMIT_CAP))
        } else {
            (self.base, self.cap)
        };
        let exponent = failed_attempts.saturating_sub(1).min(30);
        let full = base.saturating_mul(1u32 << exponent).min(cap);
        full.mul_f64(rng.random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::error::{ApiError, TransportKind};

    #[test]
    fn a_clean_up_closes_under_its_own_fixed_key_which_stripe_can_take() {
        let creation = "onboarding-42f04381-4681-e0f5-e7b2-99e5f9e91716";
        let close = v2_clean_up_close_key(creation);
        assert_ne!(close, creation);
        assert_eq!(close, v2_clean_up_close_key(creation));
        assert!(crate::stripe::v2::checked_idempotency_key(&close).is_ok());
    }

    #[test]
    fn a_v2_look_up_proves_absence_only_once_the_list_has_settled() {
        assert_eq!(v2_not_found_is_absent(V2_LIST_SETTLED), Ok(()));
        assert_eq!(v2_not_found_is_absent(V2_KEY_HORIZON), Ok(()));
        assert_eq!(v2_not_found_is_absent(Duration::ZERO), Err(V2_LIST_SETTLED));
        // Never sooner than 30 s, even just before the list settles.
        assert_eq!(v2_not_found_is_absent(V2_LIST_SETTLED - Duration::from_secs(1)), Err(Duration::from_secs(30)));
    }

    fn api(status: u16, should_retry: Option<bool>) -> StripeError {
        StripeError::Api(ApiError {
            status,
            error_type: None,
            code: None,
            message: None,
            param: None,
            request_id: None,
            should_retry,
        })
    }

    fn idempotency_error() -> StripeError {
        let StripeError::Api(mut e) = api(400, None) else { unreachable!() };
        e.error_type = Some("idempotency_error".into());
        StripeError::Api(e)
    }

    #[test]
    fn the_key_after_a_500_is_derived_and_within_stripes_limit() {
        assert_eq!(key_after_unknown_outcome("onboarding-abc", 2), "onboarding-abc-after-500-2");
        assert_eq!(key_after_unknown_outcome("onboarding-abc", 2), key_after_unknown_outcome("onboarding-abc", 2));
        assert_ne!(key_after_unknown_outcome("onboarding-abc", 2), key_after_unknown_outcome("onboarding-abc", 3));
        let long = "é".repeat(200);
        let next = key_after_unknown_outcome(&long, 7);
        assert!(next.len() <= 255 && next.ends_with("-after-500-7"), "{}", next.len());
    }

    #[test]
    fn classification_matches_the_documented_policy() {
        use Disposition::*;
        let retry = Retry { rate_limited: false };
        let cases = [
            (api(409, None), true, retry),
            (api(424, None), true, retry),
            (api(429, None), true, Retry { rate_limited: true }),
            (api(502, None), true, retry),
            (api(503, None), true, retry),
            (api(504, None), true, retry),
            (api(500, None), true, OutcomeUnknown),
            (api(500, None), false, retry),
            (api(500, Some(true)), true, retry),
            (api(503, Some(false)), true, Permanent),
            (api(400, Some(true)), true, retry),
            (api(400, None), true, Permanent),
            (api(401, None), true, Permanent),
            (api(402, None), true, Permanent),
            (api(403, None), true, Permanent),
            (api(404, None), true, Permanent),
            (idempotency_error(), true, LookUpFirst),
            (idempotency_error(), false, Permanent),
            (StripeError::Transport { kind: TransportKind::Timeout, message: String::new() }, true, retry),
            (StripeError::Transport { kind: TransportKind::Other, message: String::new() }, true, retry),
            (StripeError::InvalidResponse { status: 200, request_id: None, message: String::new() }, true, Permanent),
        ];
        for (error, is_post, expected) in cases {
            assert_eq!(classify(&error, is_post), expected, "{error:?} post={is_post}");
        }
    }

    fn v2_error(status: u16, error_type: Option<&str>, code: Option<&str>, should_retry: Option<bool>) -> StripeError {
        let StripeError::Api(mut e) = api(status, should_retry) else { unreachable!() };
        e.error_type = error_type.map(str::to_string);
        e.code = code.map(str::to_string);
        StripeError::Api(e)
    }

    #[test]
    fn v2_retries_failed_work_under_the_same_key_and_looks_up_only_when_the_key_is_taken() {
        use Disposition::*;
        let retry = Retry { rate_limited: false };
        let limited = Retry { rate_limited: true };
        let cases = [
            // A POST's 500: Stripe completes the work under the key; no new key, no look-up.
            (api(500, None), true, retry),
            (api(500, None), false, retry),
            (api(502, None), true, retry),
            (api(503, None), true, retry),
            (api(504, None), true, retry),
            (api(409, None), true, retry),
            (v2_error(409, Some("idempotency_error"), Some("idempotency_key_in_use"), None), true, retry),
            (api(424, None), true, retry),
            (api(429, None), true, limited),
            (v2_error(429, Some("rate_limit"), None, None), true, limited),
            (v2_error(400, Some("rate_limit"), None, None), true, limited),
            (v2_error(400, Some("invalid_request_error"), Some("rate_limit"), None), true, limited),
            (v2_error(429, Some("invalid_request_error"), Some("lock_timeout"), None), true, limited),
            // Stripe-Should-Retry wins.
            (api(500, Some(false)), true, Permanent),
            (api(400, Some(true)), true, retry),
            (v2_error(429, None, None, Some(true)), true, limited),
            (v2_error(400, Some("idempotency_error"), None, Some(false)), true, Permanent),
            // The key is bound to another request: the object may exist.
            (v2_error(400, Some("idempotency_error"), None, None), true, LookUpFirst),
            (v2_error(400, Some("idempotency_error"), None, None), false, Permanent),
            // Everything else a retry would get the same way.
            (v2_error(400, Some("invalid_request_error"), Some("invalid_fields"), None), true, Permanent),
            (v2_error(400, Some("blocked_by_stripe"), None, None), true, Permanent),
            (v2_error(400, Some("quota_exceeded"), None, None), true, Permanent),
            (api(401, None), true, Permanent),
            (api(402, None), true, Permanent),
            (api(403, None), true, Permanent),
            (api(404, None), true, Permanent),
            (StripeError::Transport { kind: TransportKind::Timeout, message: String::new() }, true, retry),
            (StripeError::Transport { kind: TransportKind::Connect, message: String::new() }, true, retry),
            (StripeError::InvalidResponse { status: 200, request_id: None, message: String::new() }, true, Permanent),
            (StripeError::Config(String::new()), true, Permanent),
        ];
        for (error, is_post, expected) in cases {
            assert_eq!(classify_v2(&error, is_post), expected, "{error:?} post={is_post}");
            assert_ne!(classify_v2(&error, is_post), OutcomeUnknown);
        }
        // Where the two namespaces part: a POST's 500.
        assert_eq!(classify(&api(500, None), true), OutcomeUnknown);
        assert_eq!(classify_v2(&api(500, None), true), retry);
    }

    #[test]
    fn a_v2_key_is_trusted_for_a_day_then_the_object_is_looked_up_first() {
        assert!(!v2_look_up_before_retry(Duration::ZERO));
        assert!(!v2_look_up_before_retry(V2_KEY_HORIZON - Duration::from_secs(1)));
        assert!(v2_look_up_before_retry(V2_KEY_HORIZON));
        assert!(v2_look_up_before_retry(Duration::from_secs(30 * 24 * 60 * 60)));
    }

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(2) };
        let mut rng = rand::rng();
        for _ in 0..200 {
            for (attempt, full_ms) in [(1, 100), (2, 200), (3, 400), (5, 1600), (6, 2000), (40, 2000)] {
                let d = b.delay(attempt, false, &mut rng).as_millis();
                assert!((full_ms / 2..=full_ms).contains(&d), "attempt {attempt}: {d}ms");
            }
        }
    }

    #[test]
    fn rate_limits_back_off_at_least_a_second() {
        let b = Backoff { base: Duration::from_millis(10), cap: Duration::from_millis(50) };
        let d = b.delay(1, true, &mut rand::rng());
        assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1), "{d:?}");
        assert!(b.delay(10, true, &mut rand::rng()) <= RATE_LIMIT_CAP);
    }
}
