//! Thin events: "Events emitted from APIs in the /v2 namespace are thin events"
//! (<https://docs.stripe.com/api-v2-overview>), served by `GET /v2/core/events` and
//! `GET /v2/core/events/{id}`. A thin event carries no snapshot of the object, only a reference
//! to it (<https://docs.stripe.com/api/v2/core/accounts/event-types>):
//!
//! ```json
//! {"id": "evt_test_…", "object": "v2.core.event", "type": "v2.core.account.updated",
//!  "created": "2026-01-01T00:00:00.000Z", "livemode": false, "context": null,
//!  "reason": {"type": "request", "request": {"id": "req_…", "idempotency_key": "…"}},
//!  "related_object": {"id": "acct_…", "type": "v2.core.account", "url": "/v2/core/accounts/acct_…"}}
//! ```
//!
//! `reason` is `null` for changes made outside the API (the test controls). Events of the
//! `capability_status_updated` types also carry `data: {updated_capability}` (the SDK's
//! `V2CoreAccountIncludingConfigurationMerchantCapabilityStatusUpdatedEvent.Data`). The optional
//! `changes` (before and after values) is not modelled. `context` is `null`: these are the
//! platform's own Accounts.
//!
//! Like v1 events they are kept 30 days ("List events, going back up to 30 days", the SDK's
//! `EventResource.list`), listed newest first in recording order, and share v1's test clock
//! and aging ([`crate::Emulator::set_event_clock`], [`crate::Emulator::age_events`]).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::events::{Cause, RETENTION_SECS};
use crate::random::random_alnum;
use crate::v2::pages::{answer, cursor_param, limit_param, page_of};
use crate::v2::time::{format_millis, parse_rfc3339};

/// At most 20 types in `types`: "An array of up to 20 strings containing specific event names"
/// (the SDK's `EventListParams.types`).
const MAX_TYPES: usize = 20;

/// The object an event is about.
pub struct Related<'a> {
    pub id: &'a str,
    /// `v2.core.account`
    pub kind: &'a str,
    /// `/v2/core/accounts/acct_…`
    pub url: String,
}

struct Thin {
    seq: u64,
    created_ms: i64,
    event: Value,
}

#[derive(Default)]
pub struct ThinEventLog {
    by_seq: BTreeMap<u64, Thin>,
    ids: HashMap<String, u64>,
    next_seq: u64,
    /// The `created` (Unix seconds) of every event recorded from now on, when set: v1's
    /// pinned event clock ([`crate::Emulator::set_event_clock`]) pins both logs.
    pub clock: Option<i64>,
}

impl ThinEventLog {
    /// Records an event of `kind` about `related`, at `now_ms` (or the pinned [`Self::clock`]),
    /// caused by `cause` (both ids `None`: outside the API, `reason` null). Returns the event.
    pub fn record(
        &mut self,
        kind: &str,
        related: Option<Related<'_>>,
        data: Option<Value>,
        cause: &Cause,
        now_ms: i64,
    ) -> Value {
        let created_ms = self.clock.map_or(now_ms, |secs| secs * 1000);
        debug_assert!(crate::pinned_version::is_v2_event_type(kind), "the SDK has no thin event {kind}");
        let id = loop {
            let id = format!("evt_test_{}", random_alnum(30));
            if !self.ids.contains_key(&id) {
                break id;
            }
        };
        let reason = match &cause.request_id {
            None => Value::Null,
            Some(request) => {
                json!({"type": "request", "request": {"id": request, "idempotency_key": cause.idempotency_key}})
            }
        };
        let mut event = json!({
            "id": id,
            "object": "v2.core.event",
            "context": null,
            "created": format_millis(created_ms),
            "livemode": false,
            "reason": reason,
            "type": kind,
        });
        if let Some(related) = related {
            event["related_object"] = json!({"id": related.id, "type": related.kind, "url": related.url});
        }
        if let Some(data) = data {
            event["data"] = data;
        }
        self.next_seq += 1;
        self.ids.insert(id, self.next_seq);
        self.by_seq.insert(self.next_seq, Thin { seq: self.next_seq, created_ms, event: event.clone() });
        event
    }

    /// Moves every recorded event's `created` back by `secs`.
    pub fn age(&mut self, secs: i64) {
        for thin in self.by_seq.values_mut() {
            thin.created_ms -= secs * 1000;
            thin.event["created"] = json!(format_millis(thin.created_ms));
        }
    }

    /// Every recorded event, oldest first, retained or not.
    pub fn all(&self) -> Vec<Value> {
        self.by_seq.values().map(|t| t.event.clone()).collect()
    }

    fn retained(thin: &Thin, now_ms: i64) -> bool {
        thin.created_ms > now_ms - RETENTION_SECS * 1000
    }

    /// `GET /v2/core/events/{id}`: unknown and aged-out ids answer alike.
    pub fn retrieve(&self, id: &str, now_ms: i64) -> Result<Value, ApiError> {
        self.ids
            .get(id)
            .and_then(|seq| self.by_seq.get(seq))
            .filter(|t| Self::retained(t, now_ms))
            .map(|t| t.event.clone())
            .ok_or_else(|| ApiError::resource_missing(404, "event", id, "id"))
    }

    /// `GET /v2/core/events`; names and shapes already checked against the list.
    pub fn list(&self, p: &Map<String, Value>, now_ms: i64) -> Result<Value, ApiError> {
        let limit = limit_param(p)?;
        let cursor = cursor_param(p)?;
        let created = created_filter(p)?;
        let types: Option<Vec<&str>> = match p.get("types") {
            None => None,
            Some(Value::Array(items)) if items.len() > MAX_TYPES => {
                return Err(ApiError::invalid(format!(
                    "Invalid types: at most {MAX_TYPES} event types, but {} were given.",
                    items.len()
                ))
                .param("types"));
            }
            Some(Value::Array(items)) => Some(items.iter().filter_map(Value::as_str).collect()),
            Some(_) => return Err(ApiError::invalid("Invalid types: expected an array").param("types")),
        };
        let object_id = p.get("object_id").and_then(Value::as_str);
        let wanted = |t: &Thin| {
            Self::retained(t, now_ms)
                && types.as_ref().is_none_or(|ts| ts.contains(&t.event["type"].as_str().unwrap_or("")))
                && object_id.is_none_or(|id| t.event["related_object"]["id"].as_str() == Some(id))
                && created.iter().all(|(op, bound)| match *op {
                    "gt" => t.created_ms > *bound,
                    "gte" => t.created_ms >= *bound,
                    "lt" => t.created_ms < *bound,
                    _ => t.created_ms <= *bound,
                })
        };
        let page = page_of(self.by_seq.values(), |t| t.seq, cursor, limit, wanted);
        let data = page.items.iter().map(|t| t.event.clone()).collect();
        Ok(answer("/v2/core/events", p, &page, data))
    }
}

/// `created[gt|gte|lt|lte]`, each an RFC 3339 date-time (Stripe's OpenAPI spec) or Unix seconds
/// (the SDK's `RangeQueryParam`), as milliseconds.
fn created_filter(p: &Map<String, Value>) -> Result<Vec<(&'static str, i64)>, ApiError> {
    let Some(bounds) = p.get("created").and_then(Value::as_object) else {
        return Ok(vec![]);
    };
    let mut filter = Vec::new();
    for op in ["gt", "gte", "lt", "lte"] {
        let Some(value) = bounds.get(op) else { continue };
        let param = format!("created.{op}");
        let ms = match value {
            Value::String(s) => parse_rfc3339(s).or_else(|| s.parse::<i64>().ok().map(|secs| secs * 1000)),
            Value::Number(n) => n.as_i64().map(|secs| secs * 1000),
            _ => None,
        };
        let ms = ms.ok_or_else(|| {
            ApiError::invalid(format!("Invalid {param}: expected an RFC 3339 date-time or a Unix timestamp"))
                .param(&param)
        })?;
        filter.push((op, ms));
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(request: &str) -> Cause {
        Cause { request_id: Some(request.into()), idempotency_key: Some("k".into()) }
    }

    #[test]
    fn events_are_thin_with_a_reason_and_the_related_object() {
        let mut log = ThinEventLog::default();
        let related = Related { id: "acct_1", kind: "v2.core.account", url: "/v2/core/accounts/acct_1".into() };
        let e = log.record("v2.core.account.created", Some(related), None, &api("req_1"), 1_000);
        assert_eq!(e["object"], "v2.core.event");
        assert_eq!(e["created"], "1970-01-01T00:00:01.000Z");
        assert_eq!(e["reason"], json!({"type": "request", "request": {"id": "req_1", "idempotency_key": "k"}}));
        assert_eq!(e["related_object"]["url"], "/v2/core/accounts/acct_1");
        assert!(e.get("data").is_none() && e["id"].as_str().unwrap().starts_with("evt_test_"));
        let dashboard = log.record("v2.core.account.closed", None, None, &Cause::default(), 2_000);
        assert_eq!(dashboard["reason"], Value::Null);
    }

    #[test]
    fn lists_filter_by_type_object_and_created_and_drop_what_aged_out() {
        let mut log = ThinEventLog::default();
        let day = 86_400_000;
        for (i, kind) in
            ["v2.core.account.created", "v2.core.account.updated", "v2.core.account.closed"].iter().enumerate()
        {
            let id = format!("acct_{i}");
            let related = Related { id: &id, kind: "v2.core.account", url: format!("/v2/core/accounts/{id}") };
            log.record(kind, Some(related), None, &Cause::default(), 40 * day + i as i64 * 1000);
        }
        let now = 41 * day;
        let types = |list: &Value| -> Vec<String> {
            list["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
        };
        let all = log.list(&Map::new(), now).unwrap();
        assert_eq!(types(&all), ["v2.core.account.closed", "v2.core.account.updated", "v2.core.account.created"]);
        let p = json!({"types": ["v2.core.account.created", "v2.core.account.closed"], "object_id": "acct_2"});
        assert_eq!(types(&log.list(p.as_object().unwrap(), now).unwrap()), ["v2.core.account.closed"]);
        let p = json!({"created": {"gt": format_millis(40 * day), "lte": ((40 * day + 1000) / 1000).to_string()}});
        assert_eq!(types(&log.list(p.as_object().unwrap(), now).unwrap()), ["v2.core.account.updated"]);
        let p = json!({"created": {"gt": "yesterday"}});
        assert_eq!(log.list(p.as_object().unwrap(), now).unwrap_err().param.as_deref(), Some("created.gt"));
        let id = all["data"][0]["id"].as_str().unwrap();
        assert!(log.retrieve(id, now).is_ok());
        log.age(30 * 86_400);
        assert_eq!(log.retrieve(id, now).unwrap_err().status, 404);
        assert!(log.list(&Map::new(), now).unwrap()["data"].as_array().unwrap().is_empty());
        assert_eq!(log.all().len(), 3);
    }
}
