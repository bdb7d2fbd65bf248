//! v2's errors, read into the crate's [`StripeError`].
//!
//! A v2 error comes in the same envelope as a v1 error, `{"error": {"type", "code", "message",
//! …}}`: the official SDK reads `jsonResponse.error` for both namespaces and only then tells them
//! apart (stripe-node 23.1.0, `RequestSender._jsonResponseHandler`; stripe-python,
//! `_APIRequestor.handle_error_response`). So the shared reader (`response.rs`) fills
//! [`ApiError`] for v2 answers too: status, `type`, `code`, `message`, `param`, `Request-Id` and
//! `Stripe-Should-Retry`. What differs is how an error is told apart: by its `type` first, which
//! in v2 names the failure itself (`blocked_by_stripe`, `rate_limit`, …), then the one v2 `code`
//! that stands in for a type (`invalid_fields`: "invalid_field response in V2 APIs returns the
//! field 'code' instead of 'type'"), and only then by status as in v1 (`generateV2Error`,
//! `esm/Error.js`). [`V2ErrorKind`] is that reading. Fields only v2 sends (`user_message`) are
//! not kept: the shared reader does not keep them, and nothing the extension decides needs them.

use crate::stripe::error::{ApiError, StripeError};

/// The v2 error types the official SDK has a class for (stripe-node 23.1.0, `generateV2Error`,
/// the section generated from Stripe's OpenAPI spec), besides `idempotency_error`.
pub const V2_ERROR_TYPES: [&str; 20] = [
    "already_canceled",
    "blocked_by_stripe",
    "cannot_proceed",
    "capability_not_enabled",
    "controlled_by_alternate_resource",
    "feature_not_enabled",
    "financial_account_not_open",
    "fx_quote_needs_refresh",
    "insufficient_funds",
    "invalid_payment_method",
    "invalid_payout_method",
    "invalid_vaulted_credential",
    "not_cancelable",
    "quota_exceeded",
    "rate_limit",
    "recipient_not_notifiable",
    "temporary_session_expired",
    "verification_attempt_failed",
    "verification_expired",
    "verification_not_initiated",
];

/// What a v2 error is, read as the official SDK reads it (`generateV2Error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum V2ErrorKind {
    /// `type: idempotency_error`: the key was first used for another request (another body or
    /// endpoint).
    Idempotency,
    /// `type: rate_limit`, or (as in v1) a 429 or a 400 with `code: rate_limit`.
    RateLimit,
    /// Another of [`V2_ERROR_TYPES`]: its name.
    Typed(&'static str),
    /// `code: invalid_fields`, or a 400 or 404 of no v2 type.
    InvalidRequest,
    /// 401.
    Authentication,
    /// 402.
    RequestFailed,
    /// 403.
    Permission,
    /// Anything else: a 5xx, or a status the SDK does not name.
    Api,
}

impl V2ErrorKind {
    /// The kind of a v2 API error.
    pub fn of(error: &ApiError) -> V2ErrorKind {
        match error.error_type.as_deref() {
            Some("idempotency_error") => return V2ErrorKind::Idempotency,
            Some("rate_limit") => return V2ErrorKind::RateLimit,
            Some(known) => {
                if let Some(name) = V2_ERROR_TYPES.iter().find(|name| **name == known) {
                    return V2ErrorKind::Typed(name);
                }
            }
            None => {}
        }
        if error.code.as_deref() == Some("invalid_fields") {
            return V2ErrorKind::InvalidRequest;
        }
        // generateV1Error
        match error.status {
            429 => V2ErrorKind::RateLimit,
            400 if error.code.as_deref() == Some("rate_limit") => V2ErrorKind::RateLimit,
            400 | 404 => V2ErrorKind::InvalidRequest,
            401 => V2ErrorKind::Authentication,
            402 => V2ErrorKind::RequestFailed,
            403 => V2ErrorKind::Permission,
            _ => V2ErrorKind::Api,
        }
    }

    /// The kind of `error` when it is an answer of Stripe's; `None` for no answer, an answer that
    /// is not what was asked for, or a client that could not be built.
    pub fn of_error(error: &StripeError) -> Option<V2ErrorKind> {
        match error {
            StripeError::Api(e) => Some(V2ErrorKind::of(e)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;
    use crate::stripe::response::interpret;

    fn answer(status: u16, body: &str, headers: &[(&'static str, &str)]) -> ApiError {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        match interpret(status, &map, body.as_bytes()) {
            Err(StripeError::Api(e)) => e,
            other => panic!("not an API error: {other:?}"),
        }
    }

    #[test]
    fn the_v2_envelope_is_read_into_the_crates_error() {
        let e = answer(
            400,
            r#"{"error":{"type":"invalid_request_error","code":"invalid_fields",
                "message":"contact_email is invalid","param":"contact_email",
                "user_message":"Please check the email","doc_url":"https://docs.stripe.com/x"}}"#,
            &[("request-id", "req_v2"), ("stripe-should-retry", "false")],
        );
        assert_eq!(e.status, 400);
        assert_eq!(e.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(e.code.as_deref(), Some("invalid_fields"));
        assert_eq!(e.message.as_deref(), Some("contact_email is invalid"));
        assert_eq!(e.param.as_deref(), Some("contact_email"));
        assert_eq!(e.request_id.as_deref(), Some("req_v2"));
        assert_eq!(e.should_retry, Some(false));
        assert_eq!(V2ErrorKind::of(&e), V2ErrorKind::InvalidRequest);
    }

    #[test]
    fn kinds_follow_the_sdks_v2_reading_type_first_then_code_then_status() {
        let kind = |status, body| V2ErrorKind::of(&answer(status, body, &[]));
        // The type decides whatever the status.
        assert_eq!(kind(400, r#"{"error":{"type":"idempotency_error","message":"m"}}"#), V2ErrorKind::Idempotency);
        assert_eq!(kind(409, r#"{"error":{"type":"idempotency_error"}}"#), V2ErrorKind::Idempotency);
        assert_eq!(kind(429, r#"{"error":{"type":"rate_limit"}}"#), V2ErrorKind::RateLimit);
        assert_eq!(kind(400, r#"{"error":{"type":"rate_limit"}}"#), V2ErrorKind::RateLimit);
        assert_eq!(kind(400, r#"{"error":{"type":"blocked_by_stripe"}}"#), V2ErrorKind::Typed("blocked_by_stripe"));
        assert_eq!(kind(400, r#"{"error":{"type":"quota_exceeded"}}"#), V2ErrorKind::Typed("quota_exceeded"));
        // The code, when the type says nothing v2 names.
        assert_eq!(kind(400, r#"{"error":{"code":"invalid_fields"}}"#), V2ErrorKind::InvalidRequest);
        // Then v1's reading by status.
        assert_eq!(
            kind(429, r#"{"error":{"type":"invalid_request_error","code":"rate_limit"}}"#),
            V2ErrorKind::RateLimit
        );
        assert_eq!(kind(400, r#"{"error":{"code":"rate_limit"}}"#), V2ErrorKind::RateLimit);
        assert_eq!(
            kind(404, r#"{"error":{"type":"invalid_request_error","code":"resource_missing"}}"#),
            V2ErrorKind::InvalidRequest
        );
        assert_eq!(kind(401, r#"{"error":{"type":"invalid_request_error"}}"#), V2ErrorKind::Authentication);
        assert_eq!(kind(402, "{}"), V2ErrorKind::RequestFailed);
        assert_eq!(kind(403, r#"{"error":{"type":"invalid_request_error"}}"#), V2ErrorKind::Permission);
        assert_eq!(kind(500, r#"{"error":{"type":"api_error"}}"#), V2ErrorKind::Api);
        assert_eq!(kind(503, "<html>unavailable</html>"), V2ErrorKind::Api);
        assert_eq!(kind(400, r#"{"error":{"type":"a_type_from_the_future"}}"#), V2ErrorKind::InvalidRequest);
        assert_eq!(V2ErrorKind::of_error(&StripeError::Config("x".into())), None);
    }
}
