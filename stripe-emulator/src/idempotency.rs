//! Stripe's idempotency layer: a key is claimed when execution begins, and the response is
//! saved against the request's method, path and parameters once it finishes. A key reused
//! for another request is an `idempotency_error` without a `code` (Stripe has none for it);
//! one still in flight is a 409 `idempotency_key_in_use`.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::ApiError;

pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub method: String,
    pub path: String,
    pub params: Value,
}

#[derive(Debug, Clone)]
pub struct Saved {
    pub status: u16,
    pub body: Value,
}

enum Entry {
    InFlight(Fingerprint),
    Done(Fingerprint, Saved),
}

pub enum Claim {
    /// The key was free and is now held by this request; finish with `complete` or `release`.
    Claimed,
    Replay(Saved),
    Rejected(ApiError),
}

#[derive(Default)]
pub struct IdempotencyStore {
    entries: HashMap<String, Entry>,
}

impl IdempotencyStore {
    pub fn claim(&mut self, key: &str, request: Fingerprint) -> Claim {
        let (first, saved) = match self.entries.get(key) {
            None => {
                self.entries.insert(key.to_string(), Entry::InFlight(request));
                return Claim::Claimed;
            }
            Some(Entry::InFlight(_)) => return Claim::Rejected(in_use(key)),
            Some(Entry::Done(first, saved)) => (first, saved),
        };
        if first.method != request.method || first.path != request.path {
            Claim::Rejected(ApiError::new(
                400,
                "idempotency_error",
                format!(
                    "Keys for idempotent requests can only be used for the same endpoint they \
                         were first used for ('{} {}' vs '{} {}'). Try using a key other than \
                         '{key}' if you meant to execute a different request.",
                    first.method, first.path, request.method, request.path
                ),
            ))
        } else if first.params != request.params {
            Claim::Rejected(ApiError::new(
                400,
                "idempotency_error",
                format!(
                    "Keys for idempotent requests can only be used with the same parameters \
                         they were first used with. Try using a key other than '{key}' if you \
                         meant to execute a different request."
                ),
            ))
        } else {
            Claim::Replay(saved.clone())
        }
    }

    /// Saves the outcome of a claimed key for replay.
    pub fn complete(&mut self, key: &str, saved: Saved) {
        if let Some(Entry::InFlight(request)) = self.entries.remove(key) {
            self.entries.insert(key.to_string(), Entry::Done(request, saved));
        }
    }

    /// Forgets every saved result, as Stripe does with keys older than 24 hours. Keys still
    /// in flight stay claimed.
    pub fn expire_saved(&mut self) {
        self.entries.retain(|_, e| matches!(e, Entry::InFlight(_)));
    }

    /// Keys claimed by requests that have not finished yet.
    pub fn in_flight(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            self.entries.iter().filter(|(_, e)| matches!(e, Entry::InFlight(_))).map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys
    }

    /// Frees a claimed key without saving anything (the request was rejected before it
    /// executed, or never finished).
    pub fn release(&mut self, key: &str) {
        if let Some(Entry::InFlight(_)) = self.entries.get(key) {
            self.entries.remove(key);
        }
    }
}

fn in_use(key: &str) -> ApiError {
    ApiError::new(
        409,
        "idempotency_error",
        format!(
            "There is currently another in-progress request using this Idempotent Key (that \
             probably means you submitted twice, and the other request is still going \
             through): {key}. Please try again later."
        ),
    )
    .code("idempotency_key_in_use")
}

pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.chars().count() > MAX_KEY_LEN {
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            format!(
                "Idempotency keys can be at most {MAX_KEY_LEN} characters long, but the \
                 provided key is {} characters long.",
                key.chars().count()
            ),
        ));
    }
    Ok(())
}
