//! Retry policy: which failures are worth another attempt, and how long to wait first.
//! Follows Stripe's guidance and its official SDKs (see shared/reference/stripe-api.md).

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
