//! Stripe's idempotency layer: a key is claimed when execution begins, and the response is
//! saved against the request's method, path and parameters once it finishes. A key reused
//! for another request is an `idempotency_error` without a `code` (Stripe has none for it);
//! one still in flight is a 409 `idempotency_key_in_use`.
//!
//! The two namespaces keep different results (<https://docs.stripe.com/api/idempotent_requests>):
//! "For API v1, Stripe saves the status code and body of the first request made with a given
//! idempotency key after endpoint execution begins. Retries with the same key return the saved
//! response, including `500` errors. With API v2, retries don't repeat successful operations.
//! Stripe retries failed or partially failed work to completion when possible and returns an
//! updated response." So a `/v1` key keeps whatever its request answered ([`IdempotencyStore::
//! complete`]); a `/v2` key keeps only a success, and after a failure remembers what the failed
//! attempt got done ([`IdempotencyStore::fail`]: the object it created before failing, if any)
//! for the retry to complete ([`IdempotencyStore::claim_v2`]). Both refuse the key for another
//! endpoint or other parameters.

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
    /// Executing; with what an earlier failed `/v2` attempt got done, to keep if this one never
    /// finishes.
    InFlight(Fingerprint, Option<Value>),
    Done(Fingerprint, Saved),
    /// `/v2` only: the request failed, after getting this much done (`None`: nothing). A retry
    /// executes again and completes the work.
    Failed(Fingerprint, Option<Value>),
}

pub enum Claim {
    /// The key was free (or, on `/v2`, held by a failed attempt) and is now held by this
    /// request; finish with `complete`, `fail` or `release`. On `/v2`, what the failed attempt
    /// got done, for this one to complete.
    Claimed(Option<Value>),
    Replay(Saved),
    Rejected(ApiError),
}

#[derive(Default)]
pub struct IdempotencyStore {
    entries: HashMap<String, Entry>,
}

impl IdempotencyStore {
    /// A `/v1` request's claim: a saved answer, whatever it was, is replayed.
    pub fn claim(&mut self, key: &str, request: Fingerprint) -> Claim {
        let (first, saved) = match self.entries.get(key) {
            None => {
                self.entries.insert(key.to_string(), Entry::InFlight(request, None));
                return Claim::Claimed(None);
            }
            Some(Entry::InFlight(..)) => return Claim::Rejected(in_use(key)),
            Some(Entry::Done(first, saved)) => (first, Some(saved)),
            // Only a /v2 request leaves this, and a /v1 one never has its path.
            Some(Entry::Failed(first, _)) => (first, None),
        };
        if let Err(e) = same_request(key, first, &request) {
            return Claim::Rejected(e);
        }
        match saved {
            Some(saved) => Claim::Replay(saved.clone()),
            None => Claim::Rejected(in_use(key)),
        }
    }

    /// A `/v2` request's claim: a success is replayed; after a failure the request executes
    /// again, given what the failed attempt got done.
    pub fn claim_v2(&mut self, key: &str, request: Fingerprint) -> Claim {
        match self.entries.get(key) {
            None => {
                self.entries.insert(key.to_string(), Entry::InFlight(request, None));
                Claim::Claimed(None)
            }
            Some(Entry::InFlight(..)) => Claim::Rejected(in_use(key)),
            Some(Entry::Done(first, saved)) => match same_request(key, first, &request) {
                Ok(()) => Claim::Replay(saved.clone()),
                Err(e) => Claim::Rejected(e),
            },
            Some(Entry::Failed(first, progress)) => {
                if let Err(e) = same_request(key, first, &request) {
                    return Claim::Rejected(e);
                }
                let progress = progress.clone();
                self.entries.insert(key.to_string(), Entry::InFlight(request, progress.clone()));
                Claim::Claimed(progress)
            }
        }
    }

    /// Saves the outcome of a claimed key for replay.
    pub fn complete(&mut self, key: &str, saved: Saved) {
        if let Some(Entry::InFlight(request, _)) = self.entries.remove(key) {
            self.entries.insert(key.to_string(), Entry::Done(request, saved));
        }
    }

    /// `/v2`: the claimed request failed after getting `progress` done (`None`: nothing); a retry
    /// executes again to complete it.
    pub fn fail(&mut self, key: &str, progress: Option<Value>) {
        if let Some(Entry::InFlight(request, _)) = self.entries.remove(key) {
            self.entries.insert(key.to_string(), Entry::Failed(request, progress));
        }
    }

    /// Forgets every saved result, as Stripe does with keys older than 24 hours (`/v1`) or 30
    /// days (`/v2`). Keys still in flight stay claimed.
    pub fn expire_saved(&mut self) {
        self.entries.retain(|_, e| matches!(e, Entry::InFlight(..)));
    }

    /// Keys claimed by requests that have not finished yet.
    pub fn in_flight(&self) -> Vec<String> {
        let mut keys: Vec<String> =
            self.entries.iter().filter(|(_, e)| matches!(e, Entry::InFlight(..))).map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys
    }

    /// Frees a claimed key without saving anything (the request was rejected before it
    /// executed, or never finished). A `/v2` key that an earlier attempt left failed goes back
    /// to that failure, so nothing it got done is lost.
    pub fn release(&mut self, key: &str) {
        if let Some(Entry::InFlight(request, progress)) = self.entries.remove(key) {
            if progress.is_some() {
                self.entries.insert(key.to_string(), Entry::Failed(request, progress));
            }
        }
    }
}

/// Refuses a key first used for another endpoint or other parameters.
fn same_request(key: &str, first: &Fingerprint, request: &Fingerprint) -> Result<(), ApiError> {
    if first.method != request.method || first.path != request.path {
        return Err(ApiError::new(
            400,
            "idempotency_error",
            format!(
                "Keys for idempotent requests can only be used for the same endpoint they \
                     were first used for ('{} {}' vs '{} {}'). Try using a key other than \
                     '{key}' if you meant to execute a different request.",
                first.method, first.path, request.method, request.path
            ),
        ));
    }
    if first.params != request.params {
        return Err(ApiError::new(
            400,
            "idempotency_error",
            format!(
                "Keys for idempotent requests can only be used with the same parameters \
                     they were first used with. Try using a key other than '{key}' if you \
                     meant to execute a different request."
            ),
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> Fingerprint {
        Fingerprint { method: "POST".into(), path: "/v2/core/accounts".into(), params: body }
    }

    #[test]
    fn v2_keeps_successes_and_lets_failures_run_again_with_what_they_got_done() {
        let mut store = IdempotencyStore::default();
        let body = json!({"contact_email": "a@b.co"});
        assert!(matches!(store.claim_v2("k", request(body.clone())), Claim::Claimed(None)));
        assert!(matches!(store.claim_v2("k", request(body.clone())), Claim::Rejected(e) if e.status == 409));
        let made = json!({"id": "acct_1"});
        store.fail("k", Some(made.clone()));
        assert!(
            matches!(store.claim_v2("k", request(json!({}))), Claim::Rejected(e) if e.error_type == "idempotency_error")
        );
        // The retry is handed what the failed attempt made; if it never finishes, that is kept.
        assert!(matches!(store.claim_v2("k", request(body.clone())), Claim::Claimed(Some(ref v)) if *v == made));
        store.release("k");
        assert!(matches!(store.claim_v2("k", request(body.clone())), Claim::Claimed(Some(ref v)) if *v == made));
        store.complete("k", Saved { status: 200, body: made.clone() });
        assert!(matches!(store.claim_v2("k", request(body.clone())), Claim::Replay(ref s) if s.body == made));
        // A failure that got nothing done, released, frees the key.
        assert!(matches!(store.claim_v2("j", request(body.clone())), Claim::Claimed(None)));
        store.release("j");
        assert!(matches!(store.claim_v2("j", request(json!({}))), Claim::Claimed(None)));
        store.expire_saved();
        assert_eq!(store.in_flight(), ["j"]);
    }

    #[test]
    fn v1_replays_whatever_it_saved() {
        let mut store = IdempotencyStore::default();
        let fp = Fingerprint { method: "POST".into(), path: "/v1/customers".into(), params: json!({}) };
        assert!(matches!(store.claim("k", fp.clone()), Claim::Claimed(None)));
        store.complete("k", Saved { status: 500, body: json!({"error": {}}) });
        assert!(matches!(store.claim("k", fp), Claim::Replay(ref s) if s.status == 500));
        assert!(matches!(store.claim_v2("k", request(json!({}))), Claim::Rejected(_)), "another endpoint");
    }
}
