//! Test control over HTTP under `/_emulator/` (no auth), mirroring the Rust API for tests
//! that run the emulator as a separate process.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::{Fault, FaultSpec};
use crate::permissions::Permission;
use crate::server::{HttpResponse, json_response};
use crate::state::Shared;

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(400, json!({"error": {"message": "unreadable body"}})),
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/_emulator/requests") => {
            let log = shared.lock().requests();
            reply(200, Value::Array(log.iter().map(|r| r.to_json()).collect()))
        }
        ("DELETE", "/_emulator/requests") => {
            shared.update(|s| s.clear_requests());
            reply(200, json!({"ok": true}))
        }
        ("POST", "/_emulator/reset") => {
            shared.update(|s| s.reset());
            reply(200, json!({"ok": true}))
        }
        ("POST", "/_emulator/faults") => {
            match serde_json::from_slice::<FaultSpec>(&body).map_err(|e| e.to_string()).and_then(Fault::try_from) {
                Ok(fault) => {
                    let pending = shared.update(|s| {
                        s.faults.push(fault);
                        s.faults.pending()
                    });
                    reply(200, json!({"ok": true, "pending": pending}))
                }
                Err(e) => reply(400, json!({"error": {"message": e}})),
            }
        }
        ("POST", "/_emulator/expire_idempotency_keys") => {
            shared.update(|s| s.idempotency.expire_saved());
            reply(200, json!({"ok": true}))
        }
        ("DELETE", "/_emulator/faults") => {
            shared.update(|s| s.faults.clear());
            reply(200, json!({"ok": true}))
        }
        ("POST", "/_emulator/latency") => match millis(&body) {
            Ok(d) => {
                shared.update(|s| s.config.latency = d);
                reply(200, json!({"ok": true}))
            }
            Err(e) => reply(400, json!({"error": {"message": e}})),
        },
        ("POST", "/_emulator/search_lag") => match millis(&body) {
            Ok(d) => {
                shared.update(|s| s.config.search_lag = d);
                reply(200, json!({"ok": true}))
            }
            Err(e) => reply(400, json!({"error": {"message": e}})),
        },
        ("POST", "/_emulator/restricted_keys") => match restricted_key(&body) {
            Ok((key, permissions)) => match shared.update(|s| s.restricted_keys.set(&key, permissions)) {
                Ok(()) => reply(200, json!({"ok": true})),
                Err(e) => reply(400, json!({"error": {"message": e}})),
            },
            Err(e) => reply(400, json!({"error": {"message": e}})),
        },
        ("DELETE", "/_emulator/restricted_keys") => {
            shared.update(|s| s.restricted_keys.clear());
            reply(200, json!({"ok": true}))
        }
        ("GET", "/_emulator/customers") => {
            let customers: Vec<Value> = shared.lock().store.customers.live().cloned().collect();
            reply(200, Value::Array(customers))
        }
        ("GET", "/_emulator/accounts") => {
            let accounts: Vec<Value> = shared.lock().store.accounts.live().cloned().collect();
            reply(200, Value::Array(accounts))
        }
        _ => reply(404, json!({"error": {"message": format!("no emulator control endpoint {method} {path}")}})),
    }
}

/// `{"ms": N}`
fn millis(body: &[u8]) -> Result<Duration, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Millis {
        ms: u64,
    }
    serde_json::from_slice::<Millis>(body)
        .map(|m| Duration::from_millis(m.ms))
        .map_err(|e| format!("expected {{\"ms\": N}}: {e}"))
}

/// `{"key": "rk_test_…", "permissions": ["rak_customer_write", …]}`. Errors never show the key.
fn restricted_key(body: &[u8]) -> Result<(String, Vec<Permission>), String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RestrictedKey {
        key: String,
        permissions: Vec<String>,
    }
    let spec: RestrictedKey = serde_json::from_slice(body)
        .map_err(|_| "expected {\"key\": \"rk_test_…\", \"permissions\": [\"rak_…\", …]}".to_string())?;
    let permissions = spec
        .permissions
        .iter()
        .map(|id| {
            Permission::parse(id).ok_or_else(|| {
                let known: Vec<&str> = Permission::ALL.iter().map(|p| p.id()).collect();
                format!("unknown permission {id:?} (known: {})", known.join(", "))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((spec.key, permissions))
}

fn reply(status: u16, body: Value) -> HttpResponse {
    json_response(status, body.to_string().into_bytes())
}
