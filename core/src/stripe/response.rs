//! Reading Stripe's answer: a 2xx into a [`Response`] (request id, idempotent replay, body), any
//! other status into [`StripeError::Api`] from Stripe's error envelope and `Stripe-Should-Retry`.

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::error::{ApiError, StripeError};
use super::objects::StripeObject;

/// A successful (2xx) answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub request_id: Option<String>,
    /// Stripe answered from its idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
    pub body: Value,
}

/// Turns a status, headers and body into a [`Response`] or a [`StripeError`].
pub fn interpret(status: u16, headers: &HeaderMap, body: &[u8]) -> Result<Response, StripeError> {
    answer(status, headers, serde_json::from_slice(body).ok())
}

/// [`interpret`] of a body already decoded (`None`: not JSON).
pub(super) fn answer(status: u16, headers: &HeaderMap, json: Option<Value>) -> Result<Response, StripeError> {
    let request_id = header_text(headers, "request-id");
    if (200..300).contains(&status) {
        let body = json.ok_or_else(|| StripeError::InvalidResponse {
            status,
            request_id: request_id.clone(),
            message: "the body is not JSON".into(),
        })?;
        let replayed = header_text(headers, "idempotent-replayed").as_deref() == Some("true");
        return Ok(Response { status, request_id, replayed, body });
    }
    let envelope = json.as_ref().and_then(|j| j.get("error"));
    let field = |name: &str| envelope.and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_string);
    Err(StripeError::Api(ApiError {
        status,
        error_type: field("type"),
        code: field("code"),
        message: field("message"),
        param: field("param"),
        request_id,
        should_retry: match header_text(headers, "stripe-should-retry").as_deref() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        },
    }))
}

pub(super) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The object a successful answer carries.
pub(super) fn object_in(response: Response) -> Result<(StripeObject, Response), StripeError> {
    match StripeObject::from_json(&response.body) {
        Some(object) => Ok((object, response)),
        None => Err(StripeError::InvalidResponse {
            status: response.status,
            request_id: response.request_id,
            message: "the body has no object id".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_success_with_replay_header() {
        let h = headers(&[("request-id", "req_1"), ("idempotent-replayed", "true")]);
        let r = interpret(200, &h, br#"{"id":"cus_1","email":"a@b.c","metadata":{"user_id":"u"}}"#).unwrap();
        assert_eq!((r.request_id.as_deref(), r.replayed), (Some("req_1"), true));
        let c = StripeObject::from_json(&r.body).unwrap();
        assert_eq!(
            c,
            StripeObject { id: "cus_1".into(), email: Some("a@b.c".into()), metadata_user_id: Some("u".into()) }
        );
    }

    #[test]
    fn parses_error_envelope_and_should_retry() {
        let h = headers(&[("request-id", "req_9"), ("stripe-should-retry", "false")]);
        let body = br#"{"error":{"type":"invalid_request_error","code":"resource_missing","param":"customer","message":"No such customer: 'cus_x'"}}"#;
        let StripeError::Api(e) = interpret(404, &h, body).unwrap_err() else { panic!("not an API error") };
        assert_eq!(e.status, 404);
        assert_eq!(e.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(e.code.as_deref(), Some("resource_missing"));
        assert_eq!(e.param.as_deref(), Some("customer"));
        assert_eq!(e.request_id.as_deref(), Some("req_9"));
        assert_eq!(e.should_retry, Some(false));
    }

    #[test]
    fn non_json_error_bodies_still_give_status_and_request_id() {
        let err = interpret(502, &headers(&[("request-id", "req_2")]), b"<html>bad gateway</html>").unwrap_err();
        assert_eq!((err.status(), err.request_id()), (Some(502), Some("req_2")));
        assert!(err.to_string().contains("HTTP 502"), "{err}");
    }

    #[test]
    fn non_json_success_is_an_invalid_response() {
        let err = interpret(200, &HeaderMap::new(), b"ok").unwrap_err();
        assert!(matches!(err, StripeError::InvalidResponse { status: 200, .. }));
    }
}
