//! v2 thin events (`GET /v2/core/events`, `GET /v2/core/events/{id}`): what happened to which
//! object, without the object. "APIs in the /v2 namespace generate thin events which have
//! small, unversioned payloads that include a reference to the ID of the object that has
//! changed … Use the related object ID in the event payload to fetch the API resource"
//! (Stripe's Events v2 description). So an event is read for its `related_object` and the
//! Account is then read itself (`V2Client::retrieve_account`); there is no snapshot to weigh.
//!
//! Shapes from stripe-node 23.1.0 (`esm/resources/V2/Core/Events.d.ts`): `EventBase` (`id`,
//! `object: 'v2.core.event'`, `created` RFC 3339, `type`, `livemode`, `reason.request
//! {id, idempotency_key}`, `changes`, `context`), `V2.Core.Events.RelatedObject {id, type,
//! url}`, and `EventListParams` (`created` range, `limit`, `object_id`, `types`: "An array of up
//! to 20 strings"). Events are kept 30 days ("List events, going back up to 30 days").

use serde_json::Value;

use super::pages::{NextPage, Page, entries, next_page_of};
use super::time::{rfc3339, unix_millis};
use super::wire::{Query, V2Client, array_param};
use crate::stripe::error::StripeError;
use crate::stripe::objects::{is_stripe_id, object_id};
use crate::stripe::response::Response;

pub const EVENTS_PATH: &str = "/v2/core/events";

/// The most `types` one list request takes.
pub const MAX_EVENT_TYPES: usize = 20;

/// The thin events about v2 Accounts that can change what the extension holds: the Account made,
/// changed (its contact email, metadata), closed, its requirements and configurations' capability
/// statuses changed (readiness). The SDK's `V2CoreAccount*Event` types.
pub const ACCOUNT_EVENT_TYPES: [&str; 9] = [
    "v2.core.account.created",
    "v2.core.account.updated",
    "v2.core.account.closed",
    "v2.core.account[requirements].updated",
    "v2.core.account[configuration.customer].updated",
    "v2.core.account[configuration.merchant].updated",
    "v2.core.account[configuration.merchant].capability_status_updated",
    "v2.core.account[configuration.recipient].updated",
    "v2.core.account[configuration.recipient].capability_status_updated",
];

/// The object a thin event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelatedObject {
    /// A Stripe id (checked): safe in a path, a log line, a column.
    pub id: String,
    /// `type`, e.g. `v2.core.account`.
    pub object_type: String,
    /// `url`, where Stripe serves the object. Kept for the record, never followed: the extension
    /// reads the object by its id on its own API base.
    pub url: String,
}

/// A thin event, checked so that what it names can be stored and used as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinEvent {
    /// A Stripe id (`evt_…`, checked).
    pub id: String,
    pub event_type: String,
    /// `created` in Unix milliseconds.
    pub created_ms: i64,
    /// `None` for events about no object (`related_object: null`).
    pub related_object: Option<RelatedObject>,
    /// `reason.request.idempotency_key`: the key of the API request that caused the event (none
    /// for the Dashboard): the extension knows its own writes by it.
    pub idempotency_key: Option<String>,
    pub livemode: bool,
}

/// Why an event cannot be used; names no content of the event beyond its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedEvent {
    /// The event's id when it is a Stripe id.
    pub id: Option<String>,
    pub why: String,
}

/// One entry of a page of events: an event, or one set aside (by its id when it has one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListedThinEvent {
    Event(ThinEvent),
    Malformed(MalformedEvent),
}

impl ThinEvent {
    /// Reads and checks a thin event.
    pub fn from_json(body: &Value) -> Result<ThinEvent, MalformedEvent> {
        let id = body.get("id").and_then(Value::as_str).filter(|id| is_stripe_id(id)).map(str::to_string);
        let malformed = |why: &str| MalformedEvent { id: id.clone(), why: why.to_string() };
        let Some(event_id) = id.clone() else { return Err(malformed("no id that is a Stripe id")) };
        if body.get("object").is_some_and(|o| o != "v2.core.event") {
            return Err(malformed("not a v2.core.event"));
        }
        let event_type = body
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| is_name(t))
            .ok_or_else(|| malformed("no usable type"))?;
        let created_ms = body
            .get("created")
            .and_then(Value::as_str)
            .and_then(unix_millis)
            .ok_or_else(|| malformed("no created date-time"))?;
        let related_object = match body.get("related_object") {
            None | Some(Value::Null) => None,
            Some(related) => {
                let id = related.get("id").and_then(Value::as_str).filter(|id| is_stripe_id(id));
                let object_type = related.get("type").and_then(Value::as_str).filter(|t| is_name(t));
                let url = related.get("url").and_then(Value::as_str).filter(|u| storable(u));
                match (id, object_type, url) {
                    (Some(id), Some(object_type), Some(url)) => Some(RelatedObject {
                        id: id.to_string(),
                        object_type: object_type.to_string(),
                        url: url.to_string(),
                    }),
                    _ => return Err(malformed("related_object lacks a usable id, type or url")),
                }
            }
        };
        let idempotency_key = match body.pointer("/reason/request/idempotency_key") {
            None | Some(Value::Null) => None,
            Some(Value::String(key)) if storable(key) => Some(key.clone()),
            Some(_) => return Err(malformed("reason.request.idempotency_key is not a storable string")),
        };
        Ok(ThinEvent {
            id: event_id,
            event_type: event_type.to_string(),
            created_ms,
            related_object,
            idempotency_key,
            livemode: body.get("livemode").and_then(Value::as_bool) == Some(true),
        })
    }

    /// The Account the event is about, if it is about one (`related_object.type` is
    /// `v2.core.account`).
    pub fn account(&self) -> Option<&str> {
        self.related_object.as_ref().filter(|r| r.object_type == "v2.core.account").map(|r| r.id.as_str())
    }
}

/// An event type or object type: short, printable ASCII of the kinds Stripe's names use
/// (`v2.core.account[configuration.merchant].capability_status_updated`).
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'[' | b']'))
}

/// Text PostgreSQL can store and that was not mangled by lenient decoding (no NUL, no U+FFFD),
/// of a sane length.
fn storable(text: &str) -> bool {
    text.len() <= 2048 && !text.contains(['\0', '\u{FFFD}'])
}

/// A `created` range in Unix milliseconds, each bound optional (`created[gt]`, `[gte]`, `[lt]`,
/// `[lte]`, sent as RFC 3339 date-times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreatedRange {
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
}

/// Which events a list reads (`EventListParams`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsFilter {
    /// At most [`MAX_EVENT_TYPES`]; empty: every type.
    pub types: Vec<String>,
    /// Only the events whose primary object is this one.
    pub object_id: Option<String>,
    pub created: CreatedRange,
    /// Page size.
    pub limit: u32,
}

impl Default for EventsFilter {
    fn default() -> EventsFilter {
        EventsFilter { types: Vec::new(), object_id: None, created: CreatedRange::default(), limit: 100 }
    }
}

impl EventsFilter {
    /// The events about v2 Accounts ([`ACCOUNT_EVENT_TYPES`]).
    pub fn accounts() -> EventsFilter {
        EventsFilter { types: ACCOUNT_EVENT_TYPES.map(String::from).to_vec(), ..EventsFilter::default() }
    }

    pub fn query(&self) -> Result<Query, StripeError> {
        if self.types.len() > MAX_EVENT_TYPES {
            return Err(StripeError::Config(format!(
                "a v2 event list takes at most {MAX_EVENT_TYPES} types, {} given",
                self.types.len()
            )));
        }
        let mut query: Query = vec![("limit".into(), self.limit.to_string())];
        query.extend(array_param("types", &self.types));
        if let Some(object) = &self.object_id {
            query.push(("object_id".into(), object_id(object)?.to_string()));
        }
        let CreatedRange { gt, gte, lt, lte } = self.created;
        for (bound, at) in [("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte)] {
            if let Some(at) = at {
                query.push((format!("created[{bound}]"), rfc3339(at)));
            }
        }
        Ok(query)
    }
}

impl V2Client {
    /// The first page of `GET /v2/core/events` with `filter`, as Stripe lists it. One bad event
    /// never fails its page (the page is decoded leniently, and an event that cannot be used is a
    /// [`ListedThinEvent::Malformed`] to set aside).
    pub async fn list_events(&self, filter: &EventsFilter) -> Result<Page<ListedThinEvent>, StripeError> {
        let response = self.get(EVENTS_PATH, &filter.query()?).await?;
        self.events_page(response)
    }

    /// The page of events at `next`.
    pub async fn next_events_page(&self, next: &NextPage) -> Result<Page<ListedThinEvent>, StripeError> {
        if next.list_path() != EVENTS_PATH {
            return Err(StripeError::Config(format!("{} is not a page of {EVENTS_PATH}", next.list_path())));
        }
        let response = self.get_url(next.url().to_string()).await?;
        self.events_page(response)
    }

    /// `GET /v2/core/events/{id}`; an event that cannot be used is an
    /// [`StripeError::InvalidResponse`]. Past Stripe's 30 days an event answers 404.
    pub async fn retrieve_event(&self, id: &str) -> Result<ThinEvent, StripeError> {
        let response = self.get(&format!("{EVENTS_PATH}/{}", object_id(id)?), &[]).await?;
        ThinEvent::from_json(&response.body).map_err(|malformed| StripeError::InvalidResponse {
            status: response.status,
            request_id: response.request_id.clone(),
            message: format!("the event cannot be used: {}", malformed.why),
        })
    }

    fn events_page(&self, response: Response) -> Result<Page<ListedThinEvent>, StripeError> {
        let next = next_page_of(self.api_base(), EVENTS_PATH, &response)?;
        let data = entries(&response.body)
            .iter()
            .map(|entry| ThinEvent::from_json(entry).map_or_else(ListedThinEvent::Malformed, ListedThinEvent::Event))
            .collect();
        Ok(Page { data, next, request_id: response.request_id })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::stripe::v2::wire::encode_query;

    fn event() -> Value {
        json!({
            "id": "evt_test_65R9Ijk8iOKBn7E2pU0wHVvCxOF5tnUxUQa2JEbWHTvUAi",
            "object": "v2.core.event",
            "type": "v2.core.account[configuration.merchant].capability_status_updated",
            "created": "2026-03-01T12:00:00.250Z",
            "livemode": false,
            "related_object": {"id": "acct_1Nv0FGQ9RKHgCVdK", "type": "v2.core.account",
                               "url": "/v2/core/accounts/acct_1Nv0FGQ9RKHgCVdK"},
            "reason": {"type": "request", "request": {"id": "req_1", "idempotency_key": "onboarding-merchant-42"}},
            "data": {"updated_capability": "card_payments"},
            "changes": {"before": {"contact_email": "old@example.com"}},
        })
    }

    #[test]
    fn a_thin_event_is_its_related_object_and_no_snapshot() {
        let read = ThinEvent::from_json(&event()).unwrap();
        assert_eq!(
            read,
            ThinEvent {
                id: "evt_test_65R9Ijk8iOKBn7E2pU0wHVvCxOF5tnUxUQa2JEbWHTvUAi".into(),
                event_type: "v2.core.account[configuration.merchant].capability_status_updated".into(),
                created_ms: 1_772_366_400_250,
                related_object: Some(RelatedObject {
                    id: "acct_1Nv0FGQ9RKHgCVdK".into(),
                    object_type: "v2.core.account".into(),
                    url: "/v2/core/accounts/acct_1Nv0FGQ9RKHgCVdK".into(),
                }),
                idempotency_key: Some("onboarding-merchant-42".into()),
                livemode: false,
            }
        );
        assert_eq!(read.account(), Some("acct_1Nv0FGQ9RKHgCVdK"));
        let mut no_object = event();
        no_object["related_object"] = Value::Null;
        no_object["reason"] = json!({"type": "dashboard"});
        let read = ThinEvent::from_json(&no_object).unwrap();
        assert_eq!((&read.related_object, &read.idempotency_key, read.account()), (&None, &None, None));
    }

    #[test]
    fn an_event_that_cannot_be_used_is_set_aside_by_its_id_when_it_has_one() {
        let id = Some("evt_test_65R9Ijk8iOKBn7E2pU0wHVvCxOF5tnUxUQa2JEbWHTvUAi".to_string());
        let broken = |pointer: &str, value: Value| {
            let mut e = event();
            *e.pointer_mut(pointer).unwrap() = value;
            ThinEvent::from_json(&e).unwrap_err()
        };
        assert_eq!(broken("/created", json!(1_772_366_400)).id, id);
        assert!(broken("/created", json!("yesterday")).why.contains("created"));
        assert!(broken("/type", json!("v2.core.account updated")).why.contains("type"));
        assert!(broken("/object", json!("event")).why.contains("v2.core.event"));
        assert!(broken("/related_object/id", json!("acct_1/../../v1/customers")).why.contains("related_object"));
        assert!(broken("/related_object/url", json!("/v2/core/accounts/acct_1\u{0}")).why.contains("related_object"));
        assert!(broken("/reason/request/idempotency_key", json!("k\u{FFFD}")).why.contains("idempotency_key"));
        let no_id = broken("/id", json!("evt 1"));
        assert_eq!(no_id.id, None);
    }

    #[test]
    fn list_filters_are_query_parameters_with_rfc3339_bounds() {
        let filter = EventsFilter {
            types: vec!["v2.core.account.closed".into(), "v2.core.account[requirements].updated".into()],
            object_id: Some("acct_1".into()),
            created: CreatedRange {
                gte: Some(1_772_366_400_250),
                lt: Some(1_772_370_000_000),
                ..CreatedRange::default()
            },
            limit: 50,
        };
        assert_eq!(
            encode_query(&filter.query().unwrap()),
            "limit=50&types[0]=v2.core.account.closed&types[1]=v2.core.account%5Brequirements%5D.updated\
             &object_id=acct_1&created[gte]=2026-03-01T12%3A00%3A00.250Z&created[lt]=2026-03-01T13%3A00%3A00.000Z"
        );
        assert_eq!(EventsFilter::accounts().types.len(), ACCOUNT_EVENT_TYPES.len());
        let too_many = EventsFilter { types: vec!["t".into(); 21], ..EventsFilter::default() };
        assert!(matches!(too_many.query(), Err(StripeError::Config(_))));
        let bad_object = EventsFilter { object_id: Some("acct_1&types[0]=x".into()), ..EventsFilter::default() };
        assert!(bad_object.query().is_err());
    }
}
