//! The request log's entries: each `/v1` and `/v2` request as the emulator saw it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::rate_limit::RateLimitKind;

/// One `/v1` or `/v2` request as the emulator saw it. The Authorization header is never recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Form body (POST) and query string parameters, nested: `metadata[a]=b` is
    /// `{"metadata": {"a": "b"}}`. Leaf values are strings, as sent. A `/v2` POST's are its JSON
    /// body as sent (typed values); a `/v2` GET's its query string, as for `/v1`.
    pub params: Value,
    pub idempotency_key: Option<String>,
    /// The `Stripe-Version` header as sent.
    pub stripe_version: Option<String>,
    pub arrived_at: SystemTime,
    /// `None` if the connection was dropped (injected) or the client went away first.
    pub status: Option<u16>,
    /// The `Request-Id` sent back; `None` when no response was sent.
    pub request_id: Option<String>,
    /// Answered from the idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// The configured [rate limit](crate#rate-limits) that answered `429 rate_limit`; `None`
    /// for any other answer, an injected [`crate::Fault::rate_limit`] included.
    pub rate_limited_by: Option<RateLimitKind>,
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
            "stripe_version": self.stripe_version,
            "arrived_at_ms": arrived_ms,
            "status": self.status,
            "request_id": self.request_id,
            "replayed": self.replayed,
            "rate_limited_by": self.rate_limited_by.map(RateLimitKind::as_str),
        })
    }
}
