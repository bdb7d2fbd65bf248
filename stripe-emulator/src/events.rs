//! The Events API: every change the emulator makes to an object is recorded as a Stripe
//! `event`, served newest first by `GET /v1/events` and one by one by `GET /v1/events/{id}`.
//!
//! Events carry a sequence number in recording order, so listing is deterministic even when
//! several share a `created` second. Stripe keeps events for 30 days; the emulator hides older
//! ones everywhere (list, retrieve and as cursors). Tests age events instead of waiting:
//! [`EventLog::age`] moves every recorded event's `created` back (`POST /_emulator/events/age`).
//!
//! Tests can also put an event in the log as exact bytes ([`EventLog::push_raw`]), such as no
//! Stripe object would serialize to (a byte that is not UTF-8, an escaped lone surrogate, a NUL,
//! a huge id), to see one hostile event among good ones; and pin the `created` of new events
//! ([`EventLog::clock`]) so that changes fall in one second reliably.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::pagination::{created_filter, created_matches, limit_param, list_answer, page_of};
use crate::pinned_version;
use crate::random::random_alnum;

/// How long Stripe keeps events.
pub const RETENTION_SECS: i64 = 30 * 86_400;

/// The platform's Connect application, the `data.object` of `account.application.*` events.
pub const PLATFORM_APPLICATION: &str = "ca_EmulatorPlatformApplication00";

/// What caused an event: an API request (its `Request-Id` and `Idempotency-Key`) or, with
/// both `None`, something outside the API (a Dashboard action, Stripe itself).
#[derive(Clone, Debug, Default)]
pub struct Cause {
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
}

struct Recorded {
    seq: u64,
    /// For a raw event, a stand-in carrying the `id`, `type` and `created` it is listed by.
    event: Value,
    raw: Option<RawEvent>,
}

/// An event served as exact bytes: answers carry [`RawEvent::token`] (a JSON string) where the
/// event goes, and the server swaps the token for the bytes ([`EventLog::raw_parts_in`]).
struct RawEvent {
    token: String,
    bytes: Vec<u8>,
}

impl Recorded {
    /// The event as answers carry it.
    fn served(&self) -> Value {
        match &self.raw {
            Some(raw) => Value::String(raw.token.clone()),
            None => self.event.clone(),
        }
    }
}

#[derive(Default)]
pub struct EventLog {
    by_seq: BTreeMap<u64, Recorded>,
    ids: HashMap<String, u64>,
    next_seq: u64,
    /// The platform's `GET /v1/events` leaves out events of connected accounts (those with
    /// `account`), as Stripe may: they are listed with the connected account's `Stripe-Account`.
    pub connect_events_unlisted: bool,
    /// The `created` of every event recorded from now on, when set: two changes made apart in
    /// time then fall in one second, as they may at Stripe, without a test racing the clock.
    pub clock: Option<i64>,
    /// Raw events by their token, to find them in answers.
    raw_tokens: HashMap<String, u64>,
}

impl EventLog {
    /// Records an event of `kind` about `object` (as it is after the change). `previous` are the
    /// previous values of the changed top-level fields, for `*.updated` events; `account` is
    /// the connected account the event is about, if any. Returns the event.
    pub fn record(
        &mut self,
        kind: &str,
        object: &Value,
        previous: Option<Map<String, Value>>,
        account: Option<&str>,
        cause: &Cause,
        now_secs: i64,
    ) -> Value {
        let id = loop {
            let id = format!("evt_{}", random_alnum(24));
            if !self.ids.contains_key(&id) {
                break id;
            }
        };
        let created = self.clock.unwrap_or(now_secs);
        let mut data = json!({ "object": object });
        if let Some(previous) = previous {
            data["previous_attributes"] = Value::Object(previous);
        }
        let mut event = json!({
            "id": id,
            "object": "event",
            "api_version": pinned_version::PINNED_API_VERSION,
            "created": created,
            "data": data,
            "livemode": false,
            "pending_webhooks": 0,
            "request": { "id": cause.request_id, "idempotency_key": cause.idempotency_key },
            "type": kind,
        });
        // Events about a connected account name it, as Stripe's Connect events do.
        if let Some(account) = account {
            event["account"] = json!(account);
        }
        self.insert(id, event.clone(), None);
        event
    }

    fn insert(&mut self, id: String, event: Value, raw: Option<RawEvent>) {
        self.next_seq += 1;
        if let Some(raw) = &raw {
            self.raw_tokens.insert(raw.token.clone(), self.next_seq);
        }
        self.ids.insert(id, self.next_seq);
        self.by_seq.insert(self.next_seq, Recorded { seq: self.next_seq, event, raw });
    }

    /// Appends an event that list and retrieve answers carry as exactly `bytes` (which need not
    /// be JSON, nor UTF-8), listed, filtered and used as a cursor by `id`, `kind` and `created`
    /// like any other event (the bytes are never read). Errors if an event `id` exists.
    pub fn push_raw(&mut self, id: &str, kind: &str, created: i64, bytes: Vec<u8>) -> Result<(), String> {
        if self.ids.contains_key(id) {
            let shown: String = id.chars().take(60).collect();
            return Err(format!("an event {shown:?} exists already"));
        }
        // Seen in no real answer: nothing else in one can be mistaken for it.
        let token = format!("stripe-emulator-raw-event-{}", random_alnum(32));
        let stand_in = json!({"id": id, "object": "event", "type": kind, "created": created, "raw": true});
        self.insert(id.to_string(), stand_in, Some(RawEvent { token, bytes }));
        Ok(())
    }

    /// The raw events an answer carries ([`EventLog::list`], [`EventLog::retrieve`]): each
    /// token as it appears in the serialized answer (quoted) and the bytes that replace it.
    pub fn raw_parts_in(&self, answer: &Value) -> Vec<(String, Vec<u8>)> {
        let carried = match answer.get("data").and_then(Value::as_array) {
            Some(data) => data.iter().collect(),
            None => vec![answer],
        };
        carried
            .into_iter()
            .filter_map(|v| self.raw_tokens.get(v.as_str()?))
            .filter_map(|seq| self.by_seq.get(seq)?.raw.as_ref())
            .map(|raw| (format!("\"{}\"", raw.token), raw.bytes.clone()))
            .collect()
    }

    /// Moves every recorded event's `created` back by `secs`, as if they had happened that much
    /// earlier (a raw event is listed and filtered as such; its bytes are left as they are).
    /// Events recorded afterwards get the real time (or the pinned [`EventLog::clock`]).
    pub fn age(&mut self, secs: i64) {
        for r in self.by_seq.values_mut() {
            let created = r.event["created"].as_i64().unwrap_or(0);
            r.event["created"] = json!(created - secs);
        }
    }

    /// Every recorded event, oldest first, retained or not; a raw event as its stand-in
    /// (`id`, `object`, `type`, `created` and `raw: true`).
    pub fn all(&self) -> Vec<Value> {
        self.by_seq.values().map(|r| r.event.clone()).collect()
    }

    fn retained(r: &Recorded, now_secs: i64) -> bool {
        r.event["created"].as_i64().unwrap_or(0) > now_secs - RETENTION_SECS
    }

    /// A retained event by id.
    fn get(&self, id: &str, now_secs: i64) -> Option<&Recorded> {
        self.ids.get(id).and_then(|s| self.by_seq.get(s)).filter(|r| Self::retained(r, now_secs))
    }

    pub fn retrieve(&self, id: &str, now_secs: i64) -> Result<Value, ApiError> {
        self.get(id, now_secs).map(Recorded::served).ok_or_else(|| no_such_event(id, "id"))
    }

    /// `GET /v1/events`; parameter names and shapes are already checked against the list.
    pub fn list(&self, p: &Map<String, Value>, now_secs: i64) -> Result<Value, ApiError> {
        let limit = limit_param(p)?;
        let created = created_filter(p)?;
        let types = type_filter(p)?;
        // Without webhook endpoints every event has nothing pending and nothing failed.
        let delivered = p.get("delivery_success").and_then(Value::as_str) != Some("false");
        let cursor = |name: &str| -> Result<Option<u64>, ApiError> {
            match p.get(name) {
                None => Ok(None),
                Some(Value::String(id)) if id.is_empty() => Ok(None),
                Some(Value::String(id)) => {
                    // Unknown and aged-out ids answer alike: Stripe no longer has the event.
                    self.get(id, now_secs).map(|r| Some(r.seq)).ok_or_else(|| no_such_event(id, name))
                }
                Some(_) => Err(ApiError::invalid_string(name)),
            }
        };
        let (after, before) = (cursor("starting_after")?, cursor("ending_before")?);
        let wanted = |r: &&Recorded| {
            delivered
                && !(self.connect_events_unlisted && r.event.get("account").is_some())
                && Self::retained(r, now_secs)
                && types.iter().any(|t| t.matches(r.event["type"].as_str().unwrap_or("")))
                && created_matches(&created, r.event["created"].as_i64())
        };
        let (page, has_more) = page_of(self.by_seq.values(), |r| r.seq, after, before, limit, wanted)?;
        Ok(list_answer("/v1/events", has_more, page.iter().map(|r| r.served()).collect()))
    }
}

fn no_such_event(id: &str, param: &str) -> ApiError {
    ApiError::resource_missing(404, "event", id, param)
}

/// One accepted type: exact, or a prefix when written with a trailing `*` (`customer.*`).
enum TypeFilter {
    Any,
    Exact(String),
    Prefix(String),
}

impl TypeFilter {
    fn parse(s: &str) -> TypeFilter {
        match s.strip_suffix('*') {
            Some(prefix) => TypeFilter::Prefix(prefix.to_string()),
            None => TypeFilter::Exact(s.to_string()),
        }
    }

    fn matches(&self, kind: &str) -> bool {
        match self {
            TypeFilter::Any => true,
            TypeFilter::Exact(t) => t == kind,
            TypeFilter::Prefix(p) => kind.starts_with(p.as_str()),
        }
    }
}

/// At most 20 types in `types[]`, as Stripe documents; `type` and `types` are exclusive.
const MAX_TYPES: usize = 20;

fn type_filter(p: &Map<String, Value>) -> Result<Vec<TypeFilter>, ApiError> {
    let single = match p.get("type") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::invalid_string("type"));
        }
    };
    let many: Option<Vec<String>> = match p.get("types") {
        None => None,
        Some(Value::Array(items)) => Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect()),
        Some(Value::String(s)) if s.is_empty() => None,
        Some(_) => return Err(ApiError::invalid("Invalid array").param("types")),
    };
    match (single, many) {
        (Some(_), Some(_)) => {
            Err(ApiError::invalid("You may only specify one of these parameters: type, types.").param("types"))
        }
        (Some(t), None) => Ok(vec![TypeFilter::parse(&t)]),
        (None, Some(ts)) if ts.len() > MAX_TYPES => Err(ApiError::invalid(format!(
            "Invalid array: types can have at most {MAX_TYPES} entries, but {} were given.",
            ts.len()
        ))
        .param("types")),
        // Assumed, not confirmed: `types[]` takes exact names only; the wildcard is `type`'s.
        (None, Some(ts)) if !ts.is_empty() => Ok(ts.into_iter().map(TypeFilter::Exact).collect()),
        _ => Ok(vec![TypeFilter::Any]),
    }
}

/// The previous values of the top-level fields that differ between `before` and `after`
/// (`null` for a field `before` lacked). Empty when nothing changed.
pub fn previous_attributes(before: &Value, after: &Value) -> Map<String, Value> {
    let mut previous = Map::new();
    let (Some(b), Some(a)) = (before.as_object(), after.as_object()) else {
        return previous;
    };
    for (key, new) in a {
        let old = b.get(key).unwrap_or(&Value::Null);
        if old != new {
            previous.insert(key.clone(), old.clone());
        }
    }
    for (key, old) in b {
        if !a.contains_key(key) {
            previous.insert(key.clone(), old.clone());
        }
    }
    previous
}

/// The `application` object of `account.application.*` events.
pub fn platform_application() -> Value {
    json!({ "id": PLATFORM_APPLICATION, "object": "application", "name": null })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_attributes_name_changed_top_level_fields_only() {
        let before = json!({"id": "cus_1", "email": "a@b.co", "metadata": {"k": "v"}, "name": null});
        let after = json!({"id": "cus_1", "email": "c@d.co", "metadata": {"k": "v", "j": "w"}, "name": null});
        let previous = previous_attributes(&before, &after);
        assert_eq!(Value::Object(previous), json!({"email": "a@b.co", "metadata": {"k": "v"}}));
        assert!(previous_attributes(&before, &before).is_empty());
    }

    #[test]
    fn type_wildcards_match_prefixes() {
        assert!(TypeFilter::parse("customer.*").matches("customer.updated"));
        assert!(!TypeFilter::parse("customer.*").matches("account.updated"));
        assert!(TypeFilter::parse("account.updated").matches("account.updated"));
        assert!(!TypeFilter::parse("account.updated").matches("account.application.deauthorized"));
    }
}
