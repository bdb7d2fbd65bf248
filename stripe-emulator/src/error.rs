//! Stripe's error envelope: `{"error": {type, code, message, param, ...}}`.

use serde_json::{Map, Value, json};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub error_type: String,
    pub code: Option<String>,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error_type: &str, message: impl Into<String>) -> Self {
        ApiError { status, error_type: error_type.to_string(), code: None, message: message.into(), param: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// Only codes Stripe has (`error_codes` in the parameter lists); injected faults set any.
    pub fn code(mut self, code: &str) -> Self {
        debug_assert!(crate::pinned_version::is_stripe_error_code(code), "Stripe has no error code {code}");
        self.code = Some(code.to_string());
        self
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// A hash or an array where Stripe takes a single value.
    pub fn invalid_string(param: &str) -> Self {
        Self::invalid("Invalid string: expected a single value, not a hash or array").param(param)
    }

    pub fn missing_param(param: &str) -> Self {
        Self::invalid(format!("Missing required param: {param}.")).code("parameter_missing").param(param)
    }

    pub fn unknown_param(param: &str) -> Self {
        Self::invalid(format!("Received unknown parameter: {param}")).code("parameter_unknown").param(param)
    }

    pub fn resource_missing(status: u16, what: &str, id: &str, param: &str) -> Self {
        Self::new(status, "invalid_request_error", format!("No such {what}: '{id}'"))
            .code("resource_missing")
            .param(param)
    }

    pub fn body(&self) -> Value {
        let mut err = Map::new();
        err.insert("type".into(), json!(self.error_type));
        if let Some(code) = &self.code {
            err.insert("code".into(), json!(code));
            err.insert(
                "doc_url".into(),
                json!(format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-"))),
            );
        }
        err.insert("message".into(), json!(self.message));
        if let Some(param) = &self.param {
            err.insert("param".into(), json!(param));
        }
        json!({ "error": err })
    }

    /// The envelope of a `/v2` answer: `{"error": {type, code, message, param}}`, without v1's
    /// `doc_url`. API v2 has error types of its own, which the official SDK maps to its classes
    /// by `type` alone (`generateV2Error` in stripe-node's `esm/Error.js`: `idempotency_error`,
    /// `rate_limit`, `already_canceled`, …), falling back to v1's mapping by HTTP status for any
    /// other `type`. So a refusal by the rate limiter carries `type: "rate_limit"` here (v1 says
    /// `invalid_request_error` with `code: "rate_limit"`); the `code` is kept. Other errors keep
    /// v1's types (`invalid_request_error`, `api_error`, `idempotency_error`). Assumed, not
    /// confirmed: that `param` names a parameter by its JSON path (`use_case.type`).
    pub fn body_v2(&self) -> Value {
        let mut err = Map::new();
        let error_type = match self.code.as_deref() {
            Some("rate_limit") => "rate_limit",
            _ => self.error_type.as_str(),
        };
        err.insert("type".into(), json!(error_type));
        if let Some(code) = &self.code {
            err.insert("code".into(), json!(code));
        }
        err.insert("message".into(), json!(self.message));
        if let Some(param) = &self.param {
            err.insert("param".into(), json!(param));
        }
        json!({ "error": err })
    }
}
