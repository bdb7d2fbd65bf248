//! Reading Stripe's events: after a cursor, since a time, one by id; a page one event cannot
//! fail (an event that is not JSON is set aside by its id).

use serde_json::Value;

use super::client::{Lenient, NotJson, StripeClient};
use super::error::StripeError;
use super::form::{Params, encode_form};
use super::lists::has_more;
use super::objects::{is_stripe_id, object_id};

impl StripeClient {
    /// The events after `cursor` (an event id), oldest first, up to 100 of `types` (all types when
    /// empty): `GET /v1/events?ending_before=<cursor>`, whose page is the events just newer than
    /// the cursor. Returns them and whether newer ones follow. A cursor Stripe no longer holds
    /// (past its 30 days of events) answers 404 `resource_missing`: see [`lost_event_cursor`].
    ///
    /// One event never fails its page: the page is decoded with [`lenient_json`](super::lenient_json), and if it is
    /// still not JSON it is read again one event at a time, an event that is not JSON even alone
    /// coming back as [`ListedEvent::Unreadable`] so that the reader can set it aside and move
    /// past it. `Err` only when such an event's id cannot be found either (nothing to move past).
    pub async fn events_after(&self, cursor: &str, types: &[&str]) -> Result<(Vec<ListedEvent>, bool), StripeError> {
        let from = EventsFrom::EndingBefore(object_id(cursor)?.to_string());
        let (mut events, more) = self.list_events(Vec::new(), from, 100, types).await?;
        events.reverse(); // Stripe lists newest first
        Ok((events, more))
    }

    /// The id of the newest event of `types` (all when empty), where a reader with no cursor yet
    /// starts; `None` when Stripe holds none. An unreadable newest event still gives its id; an
    /// id that cannot be a cursor is an error (the reader asks again at its next poll).
    pub async fn newest_event(&self, types: &[&str]) -> Result<Option<String>, StripeError> {
        let (events, _) = self.list_events(Vec::new(), EventsFrom::Newest, 1, types).await?;
        let Some(newest) = events.first() else { return Ok(None) };
        match newest.cursor() {
            Some(id) => Ok(Some(id.to_string())),
            None => Err(StripeError::InvalidResponse {
                status: 200,
                request_id: None,
                message: "the newest event has no id that can be a cursor".into(),
            }),
        }
    }

    /// One page (up to 100, newest first) of the events of `types` created at or after
    /// `created_since` (Unix seconds), after the event `starting_after` (the previous page's
    /// last, which is older): where a reader without a cursor goes on from (no id to read after).
    /// Returns the events and whether older ones of the range follow. One event never fails its
    /// page, as for [`events_after`](Self::events_after).
    pub async fn events_since_page(
        &self,
        created_since: i64,
        starting_after: Option<&str>,
        types: &[&str],
    ) -> Result<(Vec<ListedEvent>, bool), StripeError> {
        let filter: Params = vec![("created[gte]".into(), created_since.to_string())];
        let from = match starting_after {
            Some(after) => EventsFrom::StartingAfter(object_id(after)?.to_string()),
            None => EventsFrom::Newest,
        };
        self.list_events(filter, from, 100, types).await
    }

    /// `GET /v1/events/{id}`, decoded with [`lenient_json`](super::lenient_json) (an event that is not JSON even so is
    /// an [`StripeError::InvalidResponse`]). An event past Stripe's 30 days answers 404.
    pub async fn retrieve_event(&self, id: &str) -> Result<Value, StripeError> {
        let url = format!("{}/v1/events/{}", self.api_base, object_id(id)?);
        self.get_lenient(url).await?.decoded()
    }

    /// Up to `limit` events of `GET /v1/events` with `filter` and `types[]` (all types when
    /// empty), from `from`, as Stripe lists them (newest first), and whether more follow. A page
    /// that is not JSON even read leniently is read again one event at a time.
    async fn list_events(
        &self,
        filter: Params,
        from: EventsFrom,
        limit: usize,
        types: &[&str],
    ) -> Result<(Vec<ListedEvent>, bool), StripeError> {
        match self.get_lenient(events_url(&self.api_base, &filter, &from, limit, types)).await? {
            Lenient::Decoded(response) => Ok(ListedEvent::all_in(&response.body)),
            Lenient::NotJson(not_json) if limit == 1 => Ok((vec![unreadable_event(not_json)?], true)),
            Lenient::NotJson(_) => self.list_events_one_by_one(&filter, from, limit, types).await,
        }
    }

    /// [`list_events`](Self::list_events) one event a request (`limit=1`), each from the last:
    /// what one bad event costs is its own entry, not the page. Stops early at an event whose id
    /// cannot be a cursor (the next read goes on from the entry before it).
    async fn list_events_one_by_one(
        &self,
        filter: &Params,
        mut from: EventsFrom,
        limit: usize,
        types: &[&str],
    ) -> Result<(Vec<ListedEvent>, bool), StripeError> {
        let newest_first = !matches!(from, EventsFrom::EndingBefore(_));
        let (mut events, mut more) = (Vec::new(), true);
        while more && events.len() < limit {
            let url = events_url(&self.api_base, filter, &from, 1, types);
            let (event, more_after) = match self.get_lenient(url).await? {
                Lenient::Decoded(response) => {
                    let (mut page, more_after) = ListedEvent::all_in(&response.body);
                    match page.pop() {
                        Some(event) => (event, more_after),
                        None => break,
                    }
                }
                // Whether more follow is in the body that could not be read: the next read says.
                Lenient::NotJson(not_json) => (unreadable_event(not_json)?, true),
            };
            more = more_after;
            let next = event.cursor().map(str::to_string);
            events.push(event);
            match next {
                Some(id) => from = from.moved_to(id),
                // The reader goes on from the entry before, at its next poll, not at once.
                None => {
                    more = false;
                    break;
                }
            }
        }
        if !newest_first {
            events.reverse(); // read oldest first (`ending_before`), listed as Stripe lists them
        }
        Ok((events, more))
    }
}

/// Where a read of `GET /v1/events` starts (Stripe lists newest first).
#[derive(Clone, Debug)]
enum EventsFrom {
    /// The newest event (of the filter).
    Newest,
    /// The events just newer than this one (`ending_before`).
    EndingBefore(String),
    /// The events just older than this one (`starting_after`).
    StartingAfter(String),
}

impl EventsFrom {
    /// Where the next read goes on from once the event `id` was read from here.
    fn moved_to(self, id: String) -> EventsFrom {
        match self {
            EventsFrom::EndingBefore(_) => EventsFrom::EndingBefore(id),
            EventsFrom::Newest | EventsFrom::StartingAfter(_) => EventsFrom::StartingAfter(id),
        }
    }
}

fn events_url(api_base: &str, filter: &Params, from: &EventsFrom, limit: usize, types: &[&str]) -> String {
    let mut params: Params = vec![("limit".into(), limit.to_string())];
    match from {
        EventsFrom::Newest => {}
        EventsFrom::EndingBefore(id) => params.push(("ending_before".into(), id.clone())),
        EventsFrom::StartingAfter(id) => params.push(("starting_after".into(), id.clone())),
    }
    params.extend(filter.iter().cloned());
    params.extend(types.iter().enumerate().map(|(i, t)| (format!("types[{i}]"), t.to_string())));
    format!("{api_base}/v1/events?{}", encode_form(&params))
}

/// One entry of a page of events.
#[derive(Clone, Debug, PartialEq)]
pub enum ListedEvent {
    /// An event that decoded (leniently: see [`lenient_json`](super::lenient_json)). Not yet checked: read it with
    /// [`crate::inbound::parse_event`], which refuses what cannot be applied safely.
    Read(Value),
    /// An event that is not JSON even read alone: only its id could be found.
    Unreadable(Unreadable),
}

/// An event set aside unread: its id (always a valid Stripe id, usable as a cursor) and why.
/// The reason names no content of the event (serde_json's errors give only a position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub id: String,
    pub why: String,
}

impl ListedEvent {
    /// The events of a list answer (none if it has no `data` array) and whether more follow.
    fn all_in(body: &Value) -> (Vec<ListedEvent>, bool) {
        let data = body.get("data").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        (data.iter().cloned().map(ListedEvent::Read).collect(), has_more(body))
    }

    /// The event's id when it can be a cursor (a valid Stripe id): where a reader goes on from.
    /// `None` for a read event without one; such an event is never a cursor (it would make every
    /// later read fail), so the reader goes on from the entry before it, and reads it again.
    pub fn cursor(&self) -> Option<&str> {
        match self {
            ListedEvent::Read(event) => event.get("id").and_then(Value::as_str).filter(|id| is_stripe_id(id)),
            ListedEvent::Unreadable(unreadable) => Some(&unreadable.id),
        }
    }
}

/// The one event of a `limit=1` page that is not JSON, set aside by its id ([`event_id_in`]).
fn unreadable_event(not_json: NotJson) -> Result<ListedEvent, StripeError> {
    match event_id_in(&not_json.text).filter(|id| is_stripe_id(id)) {
        Some(id) => Ok(ListedEvent::Unreadable(Unreadable { id: id.to_string(), why: not_json.why })),
        None => Err(StripeError::InvalidResponse {
            status: not_json.status,
            request_id: not_json.request_id,
            message: format!(
                "an event is not JSON, even read leniently, and its id cannot be found to move past it: {}",
                not_json.why
            ),
        }),
    }
}

/// The id of the event of a one-event list page that is not JSON: the first `"id"` key directly
/// in the first object of `data`'s array, if its value is a string starting `evt_`. A tolerant
/// scan (it follows strings and nesting only), so that an `"id"` deeper in the event, such as a
/// metadata key a customer chose, is never taken for it.
fn event_id_in(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut nesting: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => nesting.push(bytes[i]),
            b'}' | b']' => {
                nesting.pop();
            }
            b'"' => {
                let end = string_end(bytes, i)?;
                let key_value = text[end + 1..].trim_start().strip_prefix(':');
                if let (b"{[{", "id", Some(value)) = (nesting.as_slice(), &text[i + 1..end], key_value) {
                    let value = value.trim_start().strip_prefix('"')?;
                    let id = &value[..value.find('"')?];
                    return id.starts_with("evt_").then_some(id);
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote closing the JSON string opened at `open`.
fn string_end(bytes: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Whether `error` says an events cursor is gone (Stripe keeps 30 days of events): the reader
/// must start again from a full snapshot.
pub fn lost_event_cursor(error: &StripeError) -> bool {
    matches!(error, StripeError::Api(e) if e.status == 404 && e.code.as_deref() == Some("resource_missing")
        && matches!(e.param.as_deref(), Some("ending_before" | "starting_after")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::customers::NewCustomer;
    use crate::stripe::emulated::emulated_stripe;

    #[test]
    fn an_unreadable_events_id_is_found_at_the_events_own_level() {
        let page = |event: &str| format!(r#"{{"object": "list", "data": [{event}], "has_more": true}}"#);
        // Stripe's order, the id first; and the emulator's, sorted, the id after the payload.
        let first = page(r#"{"id": "evt_1", "object": "event", "data": {"object": {"id": "cus_1", "email": "a\x"}}}"#);
        assert_eq!(event_id_in(&first), Some("evt_1"));
        let metadata = r#"{"object": {"id": "cus_1", "metadata": {"id": "evt_fake"}, "name": "\"id\": \"evt_q\""}}"#;
        let sorted = page(&format!(r#"{{"created": 1, "data": {metadata}, "id" : "evt_2", "type": "id"}}"#));
        assert_eq!(event_id_in(&sorted), Some("evt_2"), "never a deeper id, nor one inside a string");
        let value_first = page(r#"{"type": "id", "bad": "\x01", "id":"evt_3"}"#);
        assert_eq!(event_id_in(&value_first), Some("evt_3"), "a string \"id\" that is a value is no key");
        // None: no id, an id that is not an event's, one that is not a string, a broken text.
        for none in [page(r#"{"object": "event"}"#), page(r#"{"id": "cus_1"}"#), page(r#"{"id": 7}"#)] {
            assert_eq!(event_id_in(&none), None, "{none}");
        }
        assert_eq!(event_id_in(r#"{"data": [{"object": "ev"#), None);
        assert_eq!(event_id_in(r#"{"id": "evt_top"}"#), None, "not in a list");
    }

    /// The events of a page, all of which must have been read.
    fn all_read(events: Vec<ListedEvent>) -> Vec<Value> {
        let read = |e| if let ListedEvent::Read(e) = e { e } else { panic!("unreadable: {e:?}") };
        events.into_iter().map(read).collect()
    }

    #[test]
    fn events_are_read_oldest_first_after_a_cursor_and_a_lost_cursor_says_so() {
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let create = |i: usize| {
            let customer = NewCustomer { user_id: format!("u{i}"), email: format!("e{i}@example.com") };
            rt.block_on(client.create_customer(&customer, &format!("key-events-{i}"))).unwrap().0
        };
        let types = ["customer.created", "customer.updated"];
        assert_eq!(rt.block_on(client.newest_event(&types)).unwrap(), None);
        create(0);
        let cursor = rt.block_on(client.newest_event(&types)).unwrap().expect("the first customer's event");
        let created: Vec<String> = (1..=120).map(|i| create(i).id).collect();
        let updated = &created[5];
        rt.block_on(client.update_customer_email(updated, "new@example.com", "key-events-update")).unwrap();

        let page = |(events, more): (Vec<ListedEvent>, bool)| (all_read(events), more);
        let (first, more) = page(rt.block_on(client.events_after(&cursor, &types)).unwrap());
        assert!(more && first.len() == 100, "{} events, more: {more}", first.len());
        let next = first.last().unwrap()["id"].as_str().unwrap().to_string();
        let (rest, more) = page(rt.block_on(client.events_after(&next, &types)).unwrap());
        assert!(!more && rest.len() == 21, "{} events, more: {more}", rest.len());
        let read: Vec<(&str, &str)> = first
            .iter()
            .chain(&rest)
            .map(|e| (e["type"].as_str().unwrap(), e["data"]["object"]["id"].as_str().unwrap()))
            .collect();
        let mut expected: Vec<(&str, &str)> = created.iter().map(|id| ("customer.created", id.as_str())).collect();
        expected.push(("customer.updated", updated.as_str()));
        assert_eq!(read, expected, "oldest first, each once, from just after the cursor");

        // Without a cursor, from a time: every event since, newest first, across pages.
        let (mut since, more) = page(rt.block_on(client.events_since_page(0, None, &types)).unwrap());
        assert!(more && since.len() == 100);
        let oldest = since.last().unwrap()["id"].as_str().unwrap().to_string();
        let (older, more) = page(rt.block_on(client.events_since_page(0, Some(&oldest), &types)).unwrap());
        assert!(!more && older.len() == 22);
        since.extend(older);
        since.reverse();
        assert_eq!(since[1..], first.iter().chain(&rest).cloned().collect::<Vec<_>>()[..]);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let future = now + 3600;
        assert!(rt.block_on(client.events_since_page(future, None, &types)).unwrap().0.is_empty());

        // Past Stripe's 30 days the cursor is gone: the reader is told, not handed an empty page.
        stripe.age_events(31);
        let lost = rt.block_on(client.events_after(&next, &types)).unwrap_err();
        assert!(lost_event_cursor(&lost), "{lost:?}");
        assert!(!lost_event_cursor(&StripeError::Config("x".into())));
    }
}
