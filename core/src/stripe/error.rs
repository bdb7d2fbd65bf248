//! What a request to Stripe can fail with: no answer ([`TransportKind`]), Stripe's error envelope
//! ([`ApiError`]), an answer that is not what was asked for, or a client that cannot be built.

use std::fmt;

use serde_json::Value;

/// Stripe's error envelope plus the transport facts that decide whether to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub param: Option<String>,
    pub request_id: Option<String>,
    /// `Stripe-Should-Retry`, which overrides every other retry rule.
    pub should_retry: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Connect,
    Timeout,
    /// The connection broke before a complete response arrived.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StripeError {
    /// No HTTP response: Stripe may or may not have executed the request.
    Transport { kind: TransportKind, message: String },
    /// An HTTP error status with Stripe's error envelope (or as much of it as was sent).
    Api(ApiError),
    /// A 2xx whose body is not the object we asked for.
    InvalidResponse { status: u16, request_id: Option<String>, message: String },
    /// The client could not be built (bad base URL, unusable key characters).
    Config(String),
}

impl StripeError {
    pub fn request_id(&self) -> Option<&str> {
        match self {
            StripeError::Api(e) => e.request_id.as_deref(),
            StripeError::InvalidResponse { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            StripeError::Api(e) => Some(e.status),
            StripeError::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Structured form for job rows and events.
    pub fn to_json(&self) -> Value {
        match self {
            StripeError::Transport { kind, message } => serde_json::json!({
                "kind": "transport", "transport": format!("{kind:?}").to_lowercase(), "message": message,
            }),
            StripeError::Api(e) => serde_json::json!({
                "kind": "stripe", "status": e.status, "type": e.error_type, "code": e.code,
                "message": e.message, "param": e.param, "request_id": e.request_id,
                "should_retry": e.should_retry,
            }),
            StripeError::InvalidResponse { status, request_id, message } => serde_json::json!({
                "kind": "invalid_response", "status": status, "request_id": request_id, "message": message,
            }),
            StripeError::Config(message) => {
                serde_json::json!({"kind": "config", "message": message})
            }
        }
    }
}

impl fmt::Display for StripeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StripeError::Transport { kind, message } => {
                let what = match kind {
                    TransportKind::Connect => "could not connect to Stripe",
                    TransportKind::Timeout => "Stripe request timed out",
                    TransportKind::Other => "connection to Stripe failed",
                };
                write!(f, "{what}: {message}")
            }
            StripeError::Api(e) => {
                write!(f, "Stripe answered HTTP {}", e.status)?;
                if let Some(t) = &e.error_type {
                    write!(f, " {t}")?;
                }
                if let Some(c) = &e.code {
                    write!(f, " ({c})")?;
                }
                if let Some(m) = &e.message {
                    write!(f, ": {m}")?;
                }
                if let Some(r) = &e.request_id {
                    write!(f, " [request {r}]")?;
                }
                Ok(())
            }
            StripeError::InvalidResponse { status, request_id, message } => {
                write!(f, "unexpected Stripe response (HTTP {status}): {message}")?;
                if let Some(r) = request_id {
                    write!(f, " [request {r}]")?;
                }
                Ok(())
            }
            StripeError::Config(m) => write!(f, "Stripe client misconfigured: {m}"),
        }
    }
}

impl std::error::Error for StripeError {}

pub(super) fn transport_error(e: reqwest::Error) -> StripeError {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    };
    // The URL holds no secret, but keep messages short and stable: the causes, without the URL.
    let mut causes = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    let message = e.without_url().to_string() + &causes;
    StripeError::Transport { kind, message }
}
