//! Test control over HTTP under `/_emulator/` (no auth), mirroring the Rust API for tests
//! that run the emulator as a separate process.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::dashboard;
use crate::faults::{Fault, FaultSpec};
use crate::onboarding::Onboarding;
use crate::permissions::Permission;
use crate::response::{HttpResponse, json_response};
use crate::state::Shared;
use crate::v2;

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
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
        ("GET", "/_emulator/events") => reply(200, Value::Array(shared.lock().store.events.all())),
        ("GET", "/_emulator/v2/accounts") => {
            let accounts = shared.lock().v2.accounts.records().map(|r| v2::accounts::render_all(&r.object)).collect();
            reply(200, Value::Array(accounts))
        }
        ("GET", "/_emulator/v2/events") => reply(200, Value::Array(shared.lock().v2.events.all())),
        ("POST", "/_emulator/events/age") => match days(&body) {
            Ok(days) => {
                shared.update(|s| {
                    s.store.events.age(i64::from(days) * 86_400);
                    s.v2.events.age(i64::from(days) * 86_400);
                });
                reply(200, json!({"ok": true}))
            }
            Err(e) => reply(400, json!({"error": {"message": e}})),
        },
        ("POST", "/_emulator/events/clock") => match event_clock(&body) {
            Ok(created) => {
                shared.update(|s| {
                    s.store.events.clock = created;
                    s.v2.events.clock = created;
                });
                reply(200, json!({"ok": true}))
            }
            Err(e) => reply(400, json!({"error": {"message": e}})),
        },
        ("POST", "/_emulator/events/raw") => {
            let pushed = raw_event(&query).and_then(|(id, kind, created)| {
                shared.update(|s| dashboard::push_raw_event(s, &id, &kind, created, body.to_vec()))
            });
            match pushed {
                Ok(()) => reply(200, json!({"ok": true})),
                Err(e) => reply(400, json!({"error": {"message": e}})),
            }
        }
        _ => object_control(shared, &method, &path, &body),
    }
}

/// Controls on one object: `/_emulator/customers/{id}`, `/_emulator/accounts/{id}/…`,
/// `/_emulator/v2/accounts/{id}…`.
fn object_control(shared: &Shared, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    let segments: Vec<&str> = path.trim_start_matches("/_emulator/").split('/').collect();
    let outcome = match (method, segments.as_slice()) {
        ("POST", ["customers", id]) => customer_email(body)
            .and_then(|email| shared.update(|s| dashboard::set_customer_email(s, id, email.as_deref()))),
        ("DELETE", ["customers", id]) => {
            if shared.update(|s| dashboard::delete_customer(s, id)) {
                Ok(json!({"id": id, "object": "customer", "deleted": true}))
            } else {
                Err(format!("no live customer {id}"))
            }
        }
        ("POST", ["accounts", id, "onboarding"]) => serde_json::from_slice::<Onboarding>(body)
            .map_err(|e| format!("expected {{\"state\": \"requirements_due\"|\"details_submitted\"|\"enabled\"|\"disabled\", …}}: {e}"))
            .and_then(|step| shared.update(|s| dashboard::set_onboarding(s, id, &step))),
        ("POST", ["accounts", id, "deauthorize"]) => {
            if shared.update(|s| dashboard::deauthorize_account(s, id)) {
                Ok(json!({"ok": true}))
            } else {
                Err(format!("no live account {id}"))
            }
        }
        ("POST", ["v2", "accounts", id, "onboarding"]) => serde_json::from_slice::<Onboarding>(body)
            .map_err(|e| format!("expected {{\"state\": \"requirements_due\"|\"details_submitted\"|\"enabled\"|\"disabled\", …}}: {e}"))
            .and_then(|step| shared.update(|s| v2::dashboard::set_onboarding(s, id, &step))),
        ("POST", ["v2", "accounts", id, "close"]) => {
            if shared.update(|s| v2::dashboard::close(s, id)) {
                Ok(json!({"id": id, "object": "v2.core.account", "closed": true}))
            } else {
                Err(format!("no live v2 account {id}"))
            }
        }
        ("POST", ["v2", "accounts", id]) => contact_email(body)
            .and_then(|email| shared.update(|s| v2::dashboard::set_contact_email(s, id, email.as_deref()))),
        _ => {
            return reply(404, json!({"error": {"message": format!("no emulator control endpoint {method} {path}")}}));
        }
    };
    match outcome {
        Ok(object) => reply(200, object),
        Err(e) if e.starts_with("no live") => reply(404, json!({"error": {"message": e}})),
        Err(e) => reply(400, json!({"error": {"message": e}})),
    }
}

/// `{"email": "…"}` or `{"email": null}`.
fn customer_email(body: &[u8]) -> Result<Option<String>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Email {
        email: Option<String>,
    }
    serde_json::from_slice::<Email>(body)
        .map(|e| e.email)
        .map_err(|e| format!("expected {{\"email\": \"…\"}} or {{\"email\": null}}: {e}"))
}

/// `{"contact_email": "…"}` or `{"contact_email": null}`.
fn contact_email(body: &[u8]) -> Result<Option<String>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ContactEmail {
        contact_email: Option<String>,
    }
    serde_json::from_slice::<ContactEmail>(body)
        .map(|e| e.contact_email)
        .map_err(|e| format!("expected {{\"contact_email\": \"…\"}} or {{\"contact_email\": null}}: {e}"))
}

/// `{"days": N}`
fn days(body: &[u8]) -> Result<u32, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Days {
        days: u32,
    }
    serde_json::from_slice::<Days>(body).map(|d| d.days).map_err(|e| format!("expected {{\"days\": N}}: {e}"))
}

/// `{"created": N}` or `{"created": null}`.
fn event_clock(body: &[u8]) -> Result<Option<i64>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Clock {
        created: Option<i64>,
    }
    serde_json::from_slice::<Clock>(body)
        .map(|c| c.created)
        .map_err(|e| format!("expected {{\"created\": N}} or {{\"created\": null}}: {e}"))
}

/// `id=…&type=…` and optionally `&created=N`, in the query string (the body is the event).
fn raw_event(query: &str) -> Result<(String, String, Option<i64>), String> {
    let (mut id, mut kind, mut created) = (None, None, None);
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "id" => id = Some(value.into_owned()),
            "type" => kind = Some(value.into_owned()),
            "created" => {
                created = Some(value.parse::<i64>().map_err(|_| format!("created={value} is not an integer"))?)
            }
            other => return Err(format!("unknown query parameter {other:?} (expected id, type, created)")),
        }
    }
    match (id, kind) {
        (Some(id), Some(kind)) => Ok((id, kind, created)),
        _ => Err("expected ?id=evt_…&type=…[&created=N], with the event's bytes as the body".into()),
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
