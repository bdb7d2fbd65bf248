//! Injected failures. Faults sit in a queue in injection order; a request takes the first
//! one matching its method and path, and each fault applies to `times` requests.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;

/// A failure to inject. The constructors match any `/v1` request, once; narrow them with
/// [`Fault::on`] and [`Fault::times`] (a `/v2` request is matched only by a fault given a `/v2`
/// path with [`Fault::on`]). On a `/v2` path the error is in v2's envelope, and the `stored`
/// variants follow v2's idempotency: the failure is not replayed, the retry completes the work.
/// `Fault::status(503).on("POST", "/v1/customers").times(2).should_retry(true)`.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a Fault does nothing until passed to Emulator::inject"]
pub struct Fault {
    /// `None` matches any method.
    pub method: Option<String>,
    /// Matches paths starting with this, e.g. `/v1/customers` also matches `/v1/customers/cus_1`.
    pub path_prefix: String,
    /// Matches `path_prefix` exactly, not paths under it ([`Fault::on_exact`]).
    pub exact_path: bool,
    pub times: u32,
    pub action: FaultAction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Answer with Stripe's error envelope. Unless `after_execute`, nothing executes and
    /// nothing is stored under the idempotency key. With `after_execute`, the request runs
    /// and its real result is stored (a retry with the same key replays it) while this
    /// client sees the injected error.
    Status {
        status: u16,
        error_type: String,
        code: Option<String>,
        message: String,
        should_retry: Option<bool>,
        after_execute: bool,
    },
    /// Stripe began executing and failed (a typical 500): answer with this error and store
    /// it under the idempotency key, so a retry with the same key replays the same error.
    /// Nothing is created.
    StoredStatus { status: u16, error_type: String, code: Option<String>, message: String },
    /// Stripe executed the request (the object exists) and then failed: answer with this error
    /// and store it under the idempotency key instead of the real result, so a retry with the
    /// same key replays the error while the object stays. A POST 500 "after execute, stored":
    /// the case where only a look-up can find what was created.
    StoredAfterExecute { status: u16, error_type: String, code: Option<String>, message: String },
    /// Close the connection without a response; nothing executes.
    DropBeforeExecute,
    /// Execute (and store under the idempotency key), then close without a response.
    DropAfterExecute,
    /// Wait this long (after the key check) before handling the request. If the client
    /// hangs up meanwhile, the request is abandoned and nothing executes.
    Stall(Duration),
}

impl Fault {
    fn new(action: FaultAction) -> Fault {
        Fault { method: None, path_prefix: "/v1/".to_string(), exact_path: false, times: 1, action }
    }

    /// An error response with Stripe's usual type and message for `status`
    /// (`api_error` for 5xx, `invalid_request_error` otherwise).
    pub fn status(status: u16) -> Fault {
        let (error_type, message) = match status {
            500..=599 => ("api_error", "An unknown error occurred"),
            _ => ("invalid_request_error", "Injected error"),
        };
        Fault::new(FaultAction::Status {
            status,
            error_type: error_type.to_string(),
            code: None,
            message: message.to_string(),
            should_retry: None,
            after_execute: false,
        })
    }

    /// A 429 as Stripe's rate limiter sends it (`code: rate_limit`).
    pub fn rate_limit() -> Fault {
        Fault::status(429).code(RATE_LIMIT_CODE).message(RATE_LIMIT_MESSAGE)
    }

    /// A 429 with `code: lock_timeout` (another request held a lock on the same object).
    pub fn lock_timeout() -> Fault {
        Fault::status(429).code("lock_timeout").message(
            "This object cannot be accessed right now because another API request or Stripe \
             process is currently accessing it. If you see this error intermittently, retry the \
             request.",
        )
    }

    pub fn drop_before() -> Fault {
        Fault::new(FaultAction::DropBeforeExecute)
    }

    pub fn drop_after() -> Fault {
        Fault::new(FaultAction::DropAfterExecute)
    }

    pub fn stall(duration: Duration) -> Fault {
        Fault::new(FaultAction::Stall(duration))
    }

    /// Restricts the fault to one method (`"*"` for any) and a path prefix.
    pub fn on(mut self, method: &str, path_prefix: &str) -> Fault {
        self.method = (method != "*").then(|| method.to_ascii_uppercase());
        self.path_prefix = path_prefix.to_string();
        self
    }

    /// Restricts the fault to one method and exactly this path: `POST /v2/core/accounts` (a
    /// create), not `POST /v2/core/accounts/{id}` (an update, or a permission check's probe).
    pub fn on_exact(self, method: &str, path: &str) -> Fault {
        Fault { exact_path: true, ..self.on(method, path) }
    }

    /// Whether the fault's path matches `path`.
    fn path_matches(&self, path: &str) -> bool {
        if self.exact_path { path == self.path_prefix } else { path.starts_with(&self.path_prefix) }
    }

    pub fn times(mut self, times: u32) -> Fault {
        self.times = times;
        self
    }

    /// Sends `Stripe-Should-Retry: true|false`. Only meaningful for status faults.
    pub fn should_retry(mut self, retry: bool) -> Fault {
        if let FaultAction::Status { should_retry, .. } = &mut self.action {
            *should_retry = Some(retry);
        }
        self
    }

    /// Executes the request for real, then answers with this fault's status: the real result
    /// is stored under the idempotency key, or, with [`Fault::stored`] too, this error is
    /// ([`FaultAction::StoredAfterExecute`]). Only meaningful for status faults.
    pub fn after_execute(mut self) -> Fault {
        match self.action {
            FaultAction::Status { ref mut after_execute, .. } => *after_execute = true,
            FaultAction::StoredStatus { status, error_type, code, message } => {
                self.action = FaultAction::StoredAfterExecute { status, error_type, code, message };
            }
            _ => {}
        }
        self
    }

    /// Turns a status fault into one that is stored under the idempotency key like a real
    /// execution failure: before anything executes ([`FaultAction::StoredStatus`]), or after,
    /// when combined with [`Fault::after_execute`] ([`FaultAction::StoredAfterExecute`]).
    pub fn stored(mut self) -> Fault {
        if let FaultAction::Status { status, error_type, code, message, after_execute, .. } = self.action {
            self.action = if after_execute {
                FaultAction::StoredAfterExecute { status, error_type, code, message }
            } else {
                FaultAction::StoredStatus { status, error_type, code, message }
            };
        }
        self
    }

    pub fn code(mut self, new_code: &str) -> Fault {
        if let FaultAction::Status { code, .. }
        | FaultAction::StoredStatus { code, .. }
        | FaultAction::StoredAfterExecute { code, .. } = &mut self.action
        {
            *code = Some(new_code.to_string());
        }
        self
    }

    pub fn error_type(mut self, new_type: &str) -> Fault {
        if let FaultAction::Status { error_type, .. }
        | FaultAction::StoredStatus { error_type, .. }
        | FaultAction::StoredAfterExecute { error_type, .. } = &mut self.action
        {
            *error_type = new_type.to_string();
        }
        self
    }

    pub fn message(mut self, new_message: &str) -> Fault {
        if let FaultAction::Status { message, .. }
        | FaultAction::StoredStatus { message, .. }
        | FaultAction::StoredAfterExecute { message, .. } = &mut self.action
        {
            *message = new_message.to_string();
        }
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0 && self.method.as_deref().is_none_or(|m| m == method) && self.path_matches(path)
    }
}

pub const RATE_LIMIT_CODE: &str = "rate_limit";
pub const RATE_LIMIT_MESSAGE: &str = "Request rate limit exceeded. Learn more about rate limits \
     here https://stripe.com/docs/rate-limits.";

#[derive(Default)]
pub struct FaultQueue {
    faults: VecDeque<Fault>,
    /// Chaos mode: when no queued fault applies, a matching request fails with this probability,
    /// with one of these faults picked at random (their `times` is ignored).
    random: Option<(f64, Vec<Fault>)>,
}

impl FaultQueue {
    pub fn push(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.faults.push_back(fault);
        }
    }

    pub fn set_random(&mut self, probability: f64, faults: Vec<Fault>) {
        self.random = (probability > 0.0 && !faults.is_empty()).then_some((probability.min(1.0), faults));
    }

    /// Consumes one use of the first matching fault; failing that, maybe a random one.
    pub fn take(&mut self, method: &str, path: &str) -> Option<FaultAction> {
        let Some(i) = self.faults.iter().position(|f| f.matches(method, path)) else {
            return self.take_random(method, path);
        };
        let fault = &mut self.faults[i];
        fault.times -= 1;
        let action = fault.action.clone();
        if fault.times == 0 {
            self.faults.remove(i);
        }
        Some(action)
    }

    fn take_random(&self, method: &str, path: &str) -> Option<FaultAction> {
        use rand::Rng;
        let (probability, faults) = self.random.as_ref()?;
        let candidates: Vec<&Fault> =
            faults.iter().filter(|f| f.method.as_deref().is_none_or(|m| m == method) && f.path_matches(path)).collect();
        let mut rng = rand::rng();
        if candidates.is_empty() || !rng.random_bool(*probability) {
            return None;
        }
        Some(candidates[rng.random_range(0..candidates.len())].action.clone())
    }

    pub fn pending(&self) -> usize {
        self.faults.len()
    }

    pub fn clear(&mut self) {
        self.faults.clear();
        self.random = None;
    }
}

/// The JSON accepted by `POST /_emulator/faults`, flat so it is easy to write by hand:
/// `{"kind":"status","status":503,"method":"POST","path_prefix":"/v1/customers","times":2,
///   "should_retry":true}` (optionally `"after_execute":true`, `"stored":true`, or both: see
/// [`Fault::after_execute`]), `{"kind":"drop_before_execute"}`, `{"kind":"stall","ms":2000}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    kind: String,
    method: Option<String>,
    path_prefix: Option<String>,
    times: Option<u32>,
    status: Option<u16>,
    #[serde(rename = "type", alias = "error_type")]
    error_type: Option<String>,
    code: Option<String>,
    message: Option<String>,
    should_retry: Option<bool>,
    #[serde(default)]
    after_execute: bool,
    #[serde(default)]
    stored: bool,
    ms: Option<u64>,
}

impl TryFrom<FaultSpec> for Fault {
    type Error = String;

    fn try_from(spec: FaultSpec) -> Result<Fault, String> {
        let mut fault = match spec.kind.as_str() {
            "status" => {
                let status = spec.status.ok_or("a status fault needs `status`")?;
                if !(100..=999).contains(&status) {
                    return Err(format!("invalid status {status}"));
                }
                let mut f = Fault::status(status);
                if status == 429 && spec.code.is_none() && spec.message.is_none() {
                    f = Fault::rate_limit();
                }
                if let Some(t) = &spec.error_type {
                    f = f.error_type(t);
                }
                if let Some(c) = &spec.code {
                    f = f.code(c);
                }
                if let Some(m) = &spec.message {
                    f = f.message(m);
                }
                if let Some(r) = spec.should_retry {
                    f = f.should_retry(r);
                }
                // Both: executed, then the error stored (a POST 500 after the object was made).
                if spec.after_execute {
                    f = f.after_execute();
                }
                if spec.stored {
                    f = f.stored();
                }
                f
            }
            "rate_limit" => Fault::rate_limit(),
            "lock_timeout" => Fault::lock_timeout(),
            "drop_before_execute" => Fault::drop_before(),
            "drop_after_execute" => Fault::drop_after(),
            "stall" => Fault::stall(Duration::from_millis(spec.ms.ok_or("a stall fault needs `ms`")?)),
            other => {
                return Err(format!(
                    "unknown fault kind `{other}` (status, rate_limit, lock_timeout, \
                     drop_before_execute, drop_after_execute, stall)"
                ));
            }
        };
        if let Some(method) = spec.method {
            fault.method = (method != "*").then(|| method.to_ascii_uppercase());
        }
        if let Some(prefix) = spec.path_prefix {
            fault.path_prefix = prefix;
        }
        fault.times = spec.times.unwrap_or(1);
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_path_leaves_the_paths_under_it_alone() {
        let mut q = FaultQueue::default();
        q.push(Fault::status(503).on_exact("POST", "/v2/core/accounts"));
        assert!(q.take("POST", "/v2/core/accounts/acct_1").is_none());
        assert!(matches!(q.take("POST", "/v2/core/accounts"), Some(FaultAction::Status { status: 503, .. })));
    }

    #[test]
    fn consumed_in_injection_order() {
        let mut q = FaultQueue::default();
        q.push(Fault::status(503).on("POST", "/v1/customers").times(2));
        q.push(Fault::drop_before());
        assert_eq!(q.take("GET", "/v1/customers").unwrap(), FaultAction::DropBeforeExecute);
        assert!(q.take("GET", "/v1/customers").is_none());
        for _ in 0..2 {
            assert!(matches!(q.take("POST", "/v1/customers/cus_1"), Some(FaultAction::Status { status: 503, .. })));
        }
        assert!(q.take("POST", "/v1/customers").is_none());
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn spec_from_json() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"kind":"status","status":429,"method":"post","path_prefix":"/v1/accounts",
                "times":3,"should_retry":false}"#,
        )
        .unwrap();
        let fault = Fault::try_from(spec).unwrap();
        assert_eq!(fault, Fault::rate_limit().on("POST", "/v1/accounts").times(3).should_retry(false));
        let spec: FaultSpec = serde_json::from_str(r#"{"kind":"stall","ms":1500}"#).unwrap();
        assert_eq!(Fault::try_from(spec).unwrap().action, FaultAction::Stall(Duration::from_millis(1500)));
        let spec: FaultSpec = serde_json::from_str(
            r#"{"kind":"status","status":500,"method":"POST","path_prefix":"/v1/customers",
                "after_execute":true,"stored":true}"#,
        )
        .unwrap();
        let expected = Fault::status(500).on("POST", "/v1/customers").after_execute().stored();
        assert_eq!(Fault::try_from(spec).unwrap(), expected);
        assert_eq!(expected, Fault::status(500).on("POST", "/v1/customers").stored().after_execute());
        assert!(matches!(expected.action, FaultAction::StoredAfterExecute { status: 500, .. }));
        let spec: FaultSpec = serde_json::from_str(r#"{"kind":"boom"}"#).unwrap();
        assert!(Fault::try_from(spec).is_err());
    }
}
