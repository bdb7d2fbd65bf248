//! HTTP serving and the per-request pipeline, in Stripe's order:
//! auth -> API version -> rate limits -> injected fault -> routing -> restricted-key permission ->
//! idempotency -> latency -> execute. Nothing rejected before execution is stored under an idempotency key.
//!
//! Unlike Stripe, which falls back to the account's default version, the emulator requires
//! `Stripe-Version` on every `/v1` and `/v2` request and answers only in the version its
//! parameter lists were generated for ([`pinned_version::PINNED_API_VERSION`]), echoing it back.
//!
//! A request under `/v2/` goes through the same pipeline with API v2's rules: its parameters are
//! its JSON body or query string ([`v2::request`]; a body that cannot be read is refused after
//! routing, before the idempotency layer), every error it gets is in v2's envelope
//! ([`ApiError::body_v2`]), it runs in [`v2::api`], and its idempotency key keeps only a success
//! for replay: after a failure, a retry with the key executes again and completes what the
//! failed attempt got done ([`crate::idempotency`]). So a POST 500 after execute, stored
//! ([`FaultAction::StoredAfterExecute`]), on `/v2` leaves the object made and the key failed: the
//! retry answers 200 with that object, where `/v1` replays the 500.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::api::{self, Ctx};
use crate::auth;
use crate::control;
use crate::error::ApiError;
use crate::events::Cause;
use crate::faults::{self, FaultAction};
use crate::form;
use crate::idempotency::{self, Claim, Fingerprint, Saved};
use crate::pinned_version;
use crate::random::random_alnum;
use crate::rate_limit::RateLimitKind;
use crate::recorded_request::RecordedRequest;
use crate::response::{HttpResponse, json_response};
use crate::route::{self, Route};
use crate::state::Shared;
use crate::v2;

const MAX_BODY: usize = 1 << 20;

/// Returned by the service to make hyper close the connection without writing a response.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by injected fault")
    }
}

impl std::error::Error for DropConnection {}

pub async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, mut shutdown: oneshot::Receiver<()>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log_line(format_args!("stripe-emulator: cannot use listener: {e}"));
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Transient (e.g. out of file descriptors): back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            // Errors here are clients going away or our own DropConnection: nothing to do.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<HttpResponse, DropConnection> {
    if req.uri().path().starts_with("/_emulator/") {
        return Ok(control::handle(&shared, req).await);
    }
    let _in_flight = crate::state::InFlight::start(&shared);
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let authorization = header("authorization");
    let idempotency_key = header("idempotency-key").filter(|k| !k.is_empty());
    let stripe_version = header("stripe-version");
    let content_type = header("content-type");
    let query = req.uri().query().unwrap_or("").to_string();
    let is_v2 = route::is_v2_path(&path);

    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let error = ApiError::invalid(format!("Request bodies are limited to {MAX_BODY} bytes."));
            let body = if is_v2 { error.body_v2() } else { error.body() };
            return Ok(json_response(413, body.to_string().into_bytes()));
        }
    };
    // v1: GET/DELETE parameters travel in the query string; POST takes both, body last.
    // v2: a POST's are its JSON body, a GET's its query string.
    let (params, unreadable) = if is_v2 {
        match v2::request::parse(&method, &query, content_type.as_deref(), &body) {
            Ok(params) => (params, None),
            Err(e) => (Value::Object(Default::default()), Some(e)),
        }
    } else {
        let mut raw = query.into_bytes();
        if method == "POST" && !body.is_empty() {
            if !raw.is_empty() {
                raw.push(b'&');
            }
            raw.extend_from_slice(&body);
        }
        match form::parse(&raw) {
            Ok(params) => (params, None),
            Err(e) => (
                Value::Object(Default::default()),
                Some(
                    ApiError::invalid(format!("Invalid parameters: conflicting values for `{}`", e.param))
                        .param(&e.param),
                ),
            ),
        }
    };

    let request_id = format!("req_{}", random_alnum(14));
    let log_id = shared.update(|s| {
        s.record(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            params: params.clone(),
            idempotency_key: idempotency_key.clone(),
            stripe_version: stripe_version.clone(),
            arrived_at: SystemTime::now(),
            status: None,
            request_id: None,
            replayed: false,
            rate_limited_by: None,
        })
    });

    let request = ApiRequest {
        method,
        path,
        params,
        authorization,
        idempotency_key,
        stripe_version,
        request_id: request_id.clone(),
        is_v2,
        unreadable,
    };
    let outcome = match &request.unreadable {
        // A v1 form that cannot be read is refused at once, as before the v2 pipeline existed.
        Some(e) if !request.is_v2 => Outcome::error(e.clone(), false),
        _ => pipeline(&shared, &request).await,
    };

    let log_requests = shared.lock().config.log_requests;
    let elapsed = started.elapsed().as_millis();
    let key_note = request.idempotency_key.as_deref().map(|k| format!(" idempotency_key={k:?}")).unwrap_or_default();
    match outcome {
        Outcome::Drop => {
            // The entry keeps `status: None`; the update still wakes `wait_for` callers.
            shared.update(|s| s.finish(log_id, |_| {}));
            if log_requests {
                log_line(format_args!(
                    "{} {} -> dropped connection (injected){key_note} {elapsed}ms",
                    request.method, request.path
                ));
            }
            Err(DropConnection)
        }
        Outcome::Respond(reply) => {
            shared.update(|s| {
                s.finish(log_id, |r| {
                    r.status = Some(reply.status);
                    r.request_id = Some(request_id.clone());
                    r.replayed = reply.replayed;
                    r.rate_limited_by = reply.rate_limited_by;
                })
            });
            if log_requests {
                log_line(format_args!(
                    "{} {} -> {} {request_id}{key_note}{} {elapsed}ms",
                    request.method,
                    request.path,
                    reply.status,
                    if reply.replayed { " replayed" } else { "" }
                ));
            }
            // Echoed only when it is the version the answer was given in.
            let version = request.stripe_version.as_deref().filter(|v| pinned_version::is_served_version(v));
            Ok(reply.into_response(&request_id, request.idempotency_key.as_deref(), version))
        }
    }
}

/// Unlike `eprintln!`, never panics (and so never fails a request) when stderr is gone.
fn log_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The parts of a `/v1` or `/v2` request the pipeline looks at.
struct ApiRequest {
    method: String,
    path: String,
    params: Value,
    authorization: Option<String>,
    idempotency_key: Option<String>,
    stripe_version: Option<String>,
    /// The `Request-Id` the answer will carry, named in the events the request causes.
    request_id: String,
    /// Under `/v2/`: API v2's rules apply.
    is_v2: bool,
    /// Why its parameters could not be read, if they could not.
    unreadable: Option<ApiError>,
}

enum Outcome {
    Respond(Reply),
    Drop,
}

struct Reply {
    status: u16,
    body: Value,
    replayed: bool,
    should_retry: Option<bool>,
    /// Raw events in `body`: each token (quoted, as serialized) and the bytes sent in its place.
    raw: Vec<(String, Vec<u8>)>,
    /// The configured limit that refused the request, if one did.
    rate_limited_by: Option<RateLimitKind>,
}

impl Outcome {
    fn ok(status: u16, body: Value) -> Outcome {
        Outcome::Respond(Reply::new(status, body))
    }

    /// `e` in v1's envelope, or v2's.
    fn error(e: ApiError, v2: bool) -> Outcome {
        Outcome::ok(e.status, error_body(&e, v2))
    }

    /// The 429 Stripe's rate limiter sends, as [`faults::Fault::rate_limit`] injects it.
    fn rate_limited(limit: RateLimitKind, v2: bool) -> Outcome {
        let error =
            ApiError::new(429, "invalid_request_error", faults::RATE_LIMIT_MESSAGE).code(faults::RATE_LIMIT_CODE);
        Outcome::Respond(Reply { rate_limited_by: Some(limit), ..Reply::new(error.status, error_body(&error, v2)) })
    }
}

impl Reply {
    /// A plain answer: executed (not replayed), no extra headers.
    fn new(status: u16, body: Value) -> Reply {
        Reply { status, body, replayed: false, should_retry: None, raw: Vec::new(), rate_limited_by: None }
    }

    fn into_response(self, request_id: &str, idempotency_key: Option<&str>, version: Option<&str>) -> HttpResponse {
        let mut body = serde_json::to_vec_pretty(&self.body).expect("JSON values serialize");
        for (token, bytes) in &self.raw {
            body = splice(body, token.as_bytes(), bytes);
        }
        body.push(b'\n');
        let mut response = json_response(self.status, body);
        let headers = response.headers_mut();
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("request-id", request_id);
        if let Some(key) = idempotency_key {
            set("idempotency-key", key);
        }
        if let Some(version) = version {
            set("stripe-version", version);
        }
        if self.replayed {
            set("idempotent-replayed", "true");
        }
        if let Some(retry) = self.should_retry {
            set("stripe-should-retry", if retry { "true" } else { "false" });
        }
        response
    }
}

fn error_body(e: &ApiError, v2: bool) -> Value {
    if v2 { e.body_v2() } else { e.body() }
}

/// `body` with the first `token` replaced by `bytes`.
fn splice(body: Vec<u8>, token: &[u8], bytes: &[u8]) -> Vec<u8> {
    match body.windows(token.len()).position(|w| w == token) {
        Some(at) => [&body[..at], bytes, &body[at + token.len()..]].concat(),
        None => body,
    }
}

/// Frees an idempotency key claimed by a request that never got to store a result, e.g.
/// because the client hung up during the injected latency and hyper dropped the future.
struct ClaimGuard<'a> {
    shared: &'a Shared,
    key: Option<String>,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.update(|s| s.idempotency.release(&key));
        }
    }
}

async fn pipeline(shared: &Shared, req: &ApiRequest) -> Outcome {
    let v2 = req.is_v2;
    // Resolved before the rate limits, which count each endpoint apart; an unknown route is
    // answered only after any injected fault, as before.
    let route = Route::resolve(&req.method, &req.path);
    // Rejections here come before Stripe's idempotency layer: never stored.
    let (api_key, fault) = {
        let mut state = shared.lock();
        let restricted =
            auth::extract_key(req.authorization.as_deref()).filter(|k| state.restricted_keys.is_configured(k));
        let api_key = match restricted {
            Some(key) => key,
            None => match auth::check(req.authorization.as_deref(), state.config.api_key.as_deref()) {
                Ok(key) => key,
                Err(e) => return Outcome::error(e, v2),
            },
        };
        if let Err(e) = check_version(req.stripe_version.as_deref(), state.config.accept_unpinned) {
            return Outcome::error(e, v2);
        }
        if let Err(limit) = state.check_rate_limits(Instant::now(), route.as_ref()) {
            return Outcome::rate_limited(limit, v2);
        }
        (api_key, state.faults.take(&req.method, &req.path))
    };

    // Faults that act after execution are carried along in `after`.
    let after = match fault {
        None => None,
        Some(FaultAction::Stall(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(FaultAction::DropBeforeExecute) => return Outcome::Drop,
        Some(f @ FaultAction::Status { after_execute, .. }) if !after_execute => {
            return status_fault(f, v2);
        }
        Some(f) => Some(f),
    };

    let Some(route) = route else {
        return Outcome::error(api::unrecognized(&req.method, &req.path), v2);
    };
    // Before the idempotency layer: a refusal is not stored (see permissions.rs).
    if let Err(e) = shared.lock().restricted_keys.check(&api_key, &route) {
        return Outcome::error(e, v2);
    }
    // A /v2 body that cannot be read: the endpoint never starts executing.
    if let Some(e) = &req.unreadable {
        return Outcome::error(e.clone(), v2);
    }

    let mut claim = ClaimGuard { shared, key: None };
    // What an earlier failed /v2 attempt with the same key got done.
    let mut progress = None;
    if let (Some(key), "POST") = (&req.idempotency_key, req.method.as_str()) {
        if let Err(e) = idempotency::check_key(key) {
            return Outcome::error(e, v2);
        }
        let fingerprint =
            Fingerprint { method: req.method.clone(), path: req.path.clone(), params: req.params.clone() };
        let claimed = shared.update(|s| {
            if v2 { s.idempotency.claim_v2(key, fingerprint) } else { s.idempotency.claim(key, fingerprint) }
        });
        match claimed {
            Claim::Claimed(done) => {
                claim.key = Some(key.clone());
                progress = done;
            }
            Claim::Rejected(e) => return Outcome::error(e, v2),
            Claim::Replay(saved) => {
                return Outcome::Respond(Reply { replayed: true, ..Reply::new(saved.status, saved.body) });
            }
        }
    }

    // After the claim, so a concurrent request with the same key finds it in flight.
    let latency = shared.lock().config.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let (status, body, raw) = shared.update(|s| {
        let now = Instant::now();
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let ctx = Ctx {
            now_secs: since_epoch.as_secs() as i64,
            now_ms: since_epoch.as_millis() as i64,
            now,
            indexed_at: now + s.config.search_lag,
            api_key: &api_key,
            cause: Cause {
                request_id: Some(req.request_id.clone()),
                // Stripe names the key only of a POST: GET and DELETE ignore idempotency keys.
                idempotency_key: req.idempotency_key.clone().filter(|_| req.method == "POST"),
            },
        };
        let result = match &after {
            Some(FaultAction::StoredStatus { status, error_type, code, message }) => {
                // Execution "fails" instead of running.
                let mut e = ApiError::new(*status, error_type, message.clone());
                e.code = code.clone();
                Err(e)
            }
            _ if v2 => v2::api::execute(&route, &req.params, &mut s.v2, &ctx, progress.as_ref()),
            _ => api::execute(&route, &req.params, &mut s.store, &ctx),
        };
        // What this attempt got done before an injected failure hid it: the object answered.
        let mut done = None;
        let (status, body) = match (result, &after) {
            // Executed for real; what is stored and answered is the failure that followed.
            (Ok(object), Some(FaultAction::StoredAfterExecute { status, error_type, code, message })) => {
                let mut e = ApiError::new(*status, error_type, message.clone());
                e.code = code.clone();
                done = Some(object);
                (e.status, error_body(&e, v2))
            }
            (Ok(object), _) => (200, object),
            (Err(e), _) => (e.status, error_body(&e, v2)),
        };
        if let Some(key) = claim.key.take() {
            if v2 {
                // v2 keeps only successes; a failure keeps what got done for the retry.
                let done = done.or(progress);
                if status == 200 {
                    s.idempotency.complete(&key, Saved { status, body: body.clone() });
                } else if status == 400 && done.is_none() {
                    s.idempotency.release(&key);
                } else {
                    s.idempotency.fail(&key, done);
                }
            } else if status == 400 {
                // Validation errors happen before Stripe starts executing, so they are not kept.
                s.idempotency.release(&key);
            } else {
                let saved = Saved { status, body: body.clone() };
                s.idempotency.complete(&key, saved);
            }
        }
        let raw = match route {
            Route::ListEvents | Route::GetEvent(_) if status == 200 => s.store.events.raw_parts_in(&body),
            _ => Vec::new(),
        };
        (status, body, raw)
    });

    match after {
        Some(FaultAction::DropAfterExecute) => Outcome::Drop,
        Some(f @ FaultAction::Status { .. }) => status_fault(f, v2),
        _ => Outcome::Respond(Reply { raw, ..Reply::new(status, body) }),
    }
}

/// A request without `Stripe-Version` would get the account's default version at Stripe, which
/// differs between accounts: the emulator refuses it rather than guess.
fn check_version(version: Option<&str>, accept_unpinned: bool) -> Result<(), ApiError> {
    match version.map(str::trim) {
        None | Some("") if accept_unpinned => Ok(()),
        None | Some("") => Err(ApiError::invalid(format!(
            "This test server requires a pinned API version: send the header `Stripe-Version: {}` \
             with every request (without it Stripe uses the account's default API version, which \
             differs between accounts).",
            pinned_version::PINNED_API_VERSION
        ))),
        Some(v) if pinned_version::is_served_version(v) => Ok(()),
        Some(v) => Err(ApiError::invalid(format!(
            "Invalid Stripe API version: {v}. This test server speaks only {}.",
            pinned_version::PINNED_API_VERSION
        ))),
    }
}

fn status_fault(action: FaultAction, v2: bool) -> Outcome {
    let FaultAction::Status { status, error_type, code, message, should_retry, .. } = action else {
        unreachable!("only called with status faults");
    };
    let mut error = ApiError::new(status, &error_type, message);
    error.code = code;
    Outcome::Respond(Reply { should_retry, ..Reply::new(status, error_body(&error, v2)) })
}
