//! The Stripe client over real HTTP, against the project's Stripe emulator on loopback.

use std::net::TcpListener;
use std::time::Duration;

use onboarding_core::inbound::{Change, Verdict, customer_change, parse_event, plan};
use onboarding_core::policy::{Disposition, classify};
use onboarding_core::runtime::signal_safe_runtime;
use onboarding_core::stripe::{
    ApiKey, ClientConfig, DEFAULT_SEARCH_RATE, ListKind, ListedEvent, LookUp, NewCustomer, StripeClient, StripeError,
    TransportKind, Unreadable,
};
use serde_json::Value;
use stripe_emulator::{Emulator, EmulatorConfig, Fault};

const KEY: &str = "sk_test_clientsecret0123456789";

fn emulator() -> Emulator {
    Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(KEY.into()), ..Default::default() }).unwrap()
}

fn client(base: &str, key: &str, timeout: Duration) -> StripeClient {
    StripeClient::new(&ClientConfig {
        api_base: base.into(),
        api_key: ApiKey::new(key).unwrap(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: timeout,
        api_version: None,
        search_rate: DEFAULT_SEARCH_RATE,
    })
    .unwrap()
}

fn ada() -> NewCustomer {
    NewCustomer { user_id: "0b7f0f5e-user".into(), email: "ada@example.com".into() }
}

#[test]
fn creates_a_customer_and_a_retry_with_the_same_key_replays_it() {
    let stripe = emulator();
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    let (first, response) = rt.block_on(client.create_customer(&ada(), "key-1")).unwrap();
    assert!(first.id.starts_with("cus_"));
    assert_eq!(first.email.as_deref(), Some("ada@example.com"));
    assert_eq!(first.metadata_user_id.as_deref(), Some("0b7f0f5e-user"));
    assert!(response.request_id.is_some_and(|r| r.starts_with("req_")) && !response.replayed);

    let (again, replay) = rt.block_on(client.create_customer(&ada(), "key-1")).unwrap();
    assert_eq!(again.id, first.id);
    assert!(replay.replayed);
    assert_eq!(stripe.customers().len(), 1);
    let sent = &stripe.requests()[0];
    assert_eq!(sent.params["metadata"]["user_id"], "0b7f0f5e-user");
    assert_eq!(sent.idempotency_key.as_deref(), Some("key-1"));
}

#[test]
fn errors_carry_status_code_request_id_and_should_retry() {
    let stripe = emulator();
    stripe.inject(Fault::status(503).on("POST", "/v1/customers").should_retry(false).message("down"));
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    let error = rt.block_on(client.create_customer(&ada(), "key-2")).unwrap_err();
    let StripeError::Api(api) = &error else { panic!("{error:?}") };
    assert_eq!((api.status, api.should_retry, api.message.as_deref()), (503, Some(false), Some("down")));
    assert_eq!(api.request_id, stripe.requests()[0].request_id);
    assert_eq!(classify(&error, true), Disposition::Permanent, "Stripe-Should-Retry: false wins");

    // A different payload under a used key is Stripe's idempotency_error, never a second customer.
    rt.block_on(client.create_customer(&ada(), "key-3")).unwrap();
    let other = NewCustomer { email: "bob@example.com".into(), ..ada() };
    let StripeError::Api(api) = rt.block_on(client.create_customer(&other, "key-3")).unwrap_err() else { panic!() };
    assert_eq!((api.status, api.error_type.as_deref()), (400, Some("idempotency_error")));
}

#[test]
fn a_rejected_key_is_never_echoed() {
    let stripe = emulator();
    let wrong = "sk_test_wrongkeyABCDEFGH9876";
    let client = client(&stripe.base_url(), wrong, Duration::from_secs(5));
    let error = signal_safe_runtime().unwrap().block_on(client.create_customer(&ada(), "key-4")).unwrap_err();
    assert_eq!(error.status(), Some(401));
    let shown = format!("{error} {error:?} {}", error.to_json());
    assert!(!shown.contains("wrongkeyABCDEFGH"), "{shown}");
}

#[test]
fn transport_failures_are_classified() {
    let stripe = emulator();
    let rt = signal_safe_runtime().unwrap();

    stripe.inject(Fault::stall(Duration::from_secs(5)).on("POST", "/v1/customers"));
    let slow = client(&stripe.base_url(), KEY, Duration::from_millis(300));
    let timeout = rt.block_on(slow.create_customer(&ada(), "key-5")).unwrap_err();
    assert!(matches!(timeout, StripeError::Transport { kind: TransportKind::Timeout, .. }), "{timeout:?}");

    stripe.inject(Fault::drop_before().on("POST", "/v1/customers"));
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let dropped = rt.block_on(client.create_customer(&ada(), "key-6")).unwrap_err();
    assert!(matches!(dropped, StripeError::Transport { kind: TransportKind::Other, .. }), "{dropped:?}");

    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = client_for_port(closed_port);
    let refused = rt.block_on(nowhere.create_customer(&ada(), "key-7")).unwrap_err();
    assert!(matches!(refused, StripeError::Transport { kind: TransportKind::Connect, .. }), "{refused:?}");
    for error in [timeout, dropped, refused] {
        assert_eq!(classify(&error, true), Disposition::Retry { rate_limited: false });
    }
}

fn client_for_port(port: u16) -> StripeClient {
    client(&format!("http://127.0.0.1:{port}"), KEY, Duration::from_secs(2))
}

#[test]
fn finds_the_oldest_customer_of_a_user_by_email_then_by_search() {
    let stripe = emulator();
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    let user = "it's-user-1"; // a quote, to exercise search escaping
    let mine = NewCustomer { user_id: user.into(), email: "old@example.com".into() };
    let (oldest, _) = rt.block_on(client.create_customer(&mine, "k-a")).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // Stripe's `created` has one-second resolution
    let (_newer, _) = rt.block_on(client.create_customer(&mine, "k-b")).unwrap();
    let someone_else = NewCustomer { user_id: "user-2".into(), email: "old@example.com".into() };
    rt.block_on(client.create_customer(&someone_else, "k-c")).unwrap();

    let by_email = rt.block_on(client.find_customer(user, &["old@example.com"])).unwrap();
    assert_eq!(by_email, LookUp::Found(oldest.clone()));
    // Email changed since: the metadata search still finds it.
    let by_search = rt.block_on(client.find_customer(user, &["new@example.com"])).unwrap();
    assert_eq!(by_search, LookUp::Found(oldest.clone()));
    assert!(stripe.requests().iter().any(|r| r.path == "/v1/customers/search"));
    assert_eq!(rt.block_on(client.find_customer("nobody", &["old@example.com"])).unwrap(), LookUp::NotFound);
}

#[test]
fn lists_every_customer_page_by_page() {
    let stripe = emulator();
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    for i in 0..230 {
        let c = NewCustomer { user_id: format!("u{i}"), email: format!("u{i}@example.com") };
        rt.block_on(client.create_customer(&c, &format!("list-{i}"))).unwrap();
    }
    let (mut seen, mut after, mut pages) = (std::collections::HashSet::new(), None::<String>, 0);
    loop {
        let (objects, more) = rt.block_on(client.list_page(ListKind::Customers, after.as_deref())).unwrap();
        pages += 1;
        after = objects.last().map(|o| o.summary.id.clone());
        seen.extend(objects.into_iter().map(|o| o.summary.metadata_user_id.unwrap()));
        if !more {
            break;
        }
    }
    assert_eq!((seen.len(), pages), (230, 3));
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An email change as Stripe would serialize it, with `email` as exact bytes (and `id` as given).
fn hostile_event(id: &str, email: &[u8]) -> Vec<u8> {
    let created = now_secs();
    let head = format!(r#"{{"id": "{id}", "object": "event", "type": "customer.updated", "created": {created}, "#,)
        + r#""data": {"object": {"id": "cus_Hostile1", "object": "customer", "email": ""#;
    [head.as_bytes(), email, br#"", "metadata": {"user_id": "u-h"}}, "previous_attributes": {"email": null}}}"#]
        .concat()
}

/// The ids of a page's events (read or not), in page order.
fn ids(events: &[ListedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            ListedEvent::Read(event) => event["id"].as_str().unwrap().to_string(),
            ListedEvent::Unreadable(Unreadable { id, .. }) => id.clone(),
        })
        .collect()
}

fn read(event: &ListedEvent) -> &Value {
    let ListedEvent::Read(event) = event else { panic!("unreadable: {event:?}") };
    event
}

/// Each kind of hostile bytes in one event of a page: the page is read, the others come through
/// intact, the hostile one comes back as a value `parse_event` refuses or as unreadable.
#[test]
fn one_hostile_event_never_fails_its_page() {
    let stripe = emulator();
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    let create = |i: usize| {
        let customer = NewCustomer { user_id: format!("u{i}"), email: format!("e{i}@example.com") };
        rt.block_on(client.create_customer(&customer, &format!("hostile-{i}"))).unwrap();
        stripe.events().last().unwrap()["id"].as_str().unwrap().to_string()
    };
    let cursor = create(0);
    let huge = format!("evt_{}", "x".repeat(3000));
    let hostile: [(&str, &[u8], &str); 4] = [
        ("evt_NotUtf8", b"a\xffb@example.com", "email contains U+FFFD"),
        ("evt_Surrogate", br"\ud800@example.com", "email contains U+FFFD"),
        ("evt_Nul", br"a\u0000b@example.com", "email contains NUL"),
        (&huge, b"huge@example.com", "the event id is longer than 255 bytes"),
    ];
    let mut expected = Vec::new();
    for (i, (id, email, _)) in hostile.iter().enumerate() {
        expected.push(create(i + 1));
        stripe.push_raw_event(id, "customer.updated", None, hostile_event(id, email)).unwrap();
        expected.push(id.to_string());
    }
    expected.push(create(9));

    stripe.clear_requests();
    let (events, more) = rt.block_on(client.events_after(&cursor, &[])).unwrap();
    assert_eq!((ids(&events), more), (expected.clone(), false), "oldest first, each in its place");
    assert_eq!(stripe.requests().len(), 1, "decoded leniently: no event read again");
    for event in &events {
        let id = read(event)["id"].as_str().unwrap();
        match hostile.iter().find(|(hostile, ..)| *hostile == id) {
            None => assert!(matches!(parse_event(read(event)).unwrap().change, Change::Ignored)),
            Some((_, _, why)) => {
                let refused = parse_event(read(event)).unwrap_err();
                assert!(refused.why.contains(why), "{refused}");
                assert!(!refused.to_string().contains("example.com") && refused.to_string().len() < 200);
            }
        }
    }
    // The huge id is never a cursor: the reader goes on from the event before it.
    let cursors: Vec<Option<&str>> = events.iter().map(ListedEvent::cursor).collect();
    assert_eq!(cursors.iter().filter(|c| c.is_none()).count(), 1);
    assert_eq!(cursors[expected.iter().position(|id| *id == huge).unwrap()], None);
}

/// A page that is not JSON even read leniently is read again one event at a time, and the event
/// that is not JSON alone comes back unreadable, by its id, to be moved past.
#[test]
fn an_event_that_is_not_json_is_set_aside_by_its_id() {
    let stripe = emulator();
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    let create = |i: usize| {
        let customer = NewCustomer { user_id: format!("u{i}"), email: format!("e{i}@example.com") };
        rt.block_on(client.create_customer(&customer, &format!("broken-{i}"))).unwrap();
        stripe.events().last().unwrap()["id"].as_str().unwrap().to_string()
    };
    let cursor = create(0);
    let (before, after) = (create(1), create(2));
    // A raw control character and a bad escape: no decoding makes that JSON.
    stripe.push_raw_event("evt_Broken1", "customer.updated", None, hostile_event("evt_Broken1", b"a\x01b")).unwrap();
    let last = create(3);
    let expected = [before.clone(), after, "evt_Broken1".to_string(), last.clone()];

    stripe.clear_requests();
    let (events, more) = rt.block_on(client.events_after(&cursor, &[])).unwrap();
    assert_eq!((ids(&events), more), (expected.to_vec(), false));
    let ListedEvent::Unreadable(unreadable) = &events[2] else { panic!("{:?}", events[2]) };
    assert!(unreadable.why.contains("control character") && !unreadable.why.contains("a\u{1}b"), "{unreadable:?}");
    assert_eq!(events[2].cursor(), Some("evt_Broken1"));
    for event in [&events[0], &events[1], &events[3]] {
        parse_event(read(event)).unwrap();
    }
    // The page, then one request an event (the last says none follow).
    let limits: Vec<String> = stripe.requests().iter().map(|r| r.params["limit"].as_str().unwrap().into()).collect();
    assert_eq!(limits, ["100", "1", "1", "1", "1"]);
    // Past it, the page is JSON again.
    let (events, _) = rt.block_on(client.events_after("evt_Broken1", &[])).unwrap();
    assert_eq!(ids(&events), [last.as_str()]);

    // Without a cursor, newest first, the same way.
    let (events, more) = rt.block_on(client.events_since_page(0, None, &[])).unwrap();
    let mut newest_first = expected.to_vec();
    newest_first.reverse();
    assert_eq!((ids(&events[..4]), events.len(), more), (newest_first, 5, false));
    let (events, _) = rt.block_on(client.events_since_page(0, Some("evt_Broken1"), &[])).unwrap();
    assert_eq!(events.len(), 3, "from the unreadable one on");

    // Where a reader without a cursor starts: the unreadable newest event still has its id.
    stripe.push_raw_event("evt_Broken2", "customer.updated", None, hostile_event("evt_Broken2", br"\q")).unwrap();
    assert_eq!(rt.block_on(client.newest_event(&[])).unwrap().as_deref(), Some("evt_Broken2"));
    let (events, _) = rt.block_on(client.events_after(&last, &[])).unwrap();
    assert!(matches!(&events[..], [ListedEvent::Unreadable(Unreadable { id, .. })] if id == "evt_Broken2"));

    // Nothing to move past: an event that is not JSON and whose id cannot be found.
    stripe.push_raw_event("evt_Broken3", "customer.updated", None, b"{\"object\": \"event\", \x01".to_vec()).unwrap();
    let error = rt.block_on(client.events_after("evt_Broken2", &[])).unwrap_err();
    assert!(matches!(&error, StripeError::InvalidResponse { status: 200, .. }), "{error:?}");
    assert!(error.to_string().contains("its id cannot be found"), "{error}");
}

#[test]
fn retrieves_one_event_leniently() {
    let stripe = emulator();
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    rt.block_on(client.create_customer(&ada(), "retrieve-event")).unwrap();
    let recorded = stripe.events().remove(0);
    let id = recorded["id"].as_str().unwrap();
    assert_eq!(rt.block_on(client.retrieve_event(id)).unwrap(), recorded);

    stripe
        .push_raw_event("evt_Surrogate", "customer.updated", None, hostile_event("evt_Surrogate", br"\ud800"))
        .unwrap();
    let event = rt.block_on(client.retrieve_event("evt_Surrogate")).unwrap();
    assert_eq!(event["data"]["object"]["email"], "\u{FFFD}");
    assert!(parse_event(&event).unwrap_err().why.contains("U+FFFD"));

    stripe.push_raw_event("evt_Broken", "customer.updated", None, hostile_event("evt_Broken", b"\x01")).unwrap();
    let broken = rt.block_on(client.retrieve_event("evt_Broken")).unwrap_err();
    assert!(matches!(broken, StripeError::InvalidResponse { status: 200, .. }), "{broken:?}");
    let missing = rt.block_on(client.retrieve_event("evt_Nope")).unwrap_err();
    assert_eq!(missing.status(), Some(404));
    assert!(matches!(rt.block_on(client.retrieve_event("evt_1/../x")), Err(StripeError::Config(_))));
}

#[test]
fn retrieves_a_live_and_a_deleted_customer() {
    let stripe = emulator();
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    let (live, _) = rt.block_on(client.create_customer(&ada(), "retrieve-1")).unwrap();
    let body = rt.block_on(client.retrieve_customer(&live.id)).unwrap();
    assert_eq!((body["id"].as_str(), body["email"].as_str()), (Some(live.id.as_str()), Some("ada@example.com")));
    assert_eq!(
        customer_change(&body).unwrap(),
        Change::CustomerEmail {
            customer: live.id.clone(),
            user_id: Some("0b7f0f5e-user".into()),
            email: Some("ada@example.com".into()),
            idempotency_key: None,
        }
    );
    // A NUL set in the Dashboard is read, and refused by the checks.
    stripe.dashboard_set_customer_email(&live.id, Some("ada\0@example.com")).unwrap();
    let body = rt.block_on(client.retrieve_customer(&live.id)).unwrap();
    assert!(customer_change(&body).unwrap_err().why.starts_with("email contains NUL"));

    // Deleted, by the API or in the Dashboard: 200, `deleted: true`.
    let (other, _) =
        rt.block_on(client.create_customer(&NewCustomer { user_id: "u-2".into(), ..ada() }, "r-2")).unwrap();
    rt.block_on(client.delete_customer(&other.id)).unwrap();
    assert!(stripe.dashboard_delete_customer(&live.id));
    for id in [&other.id, &live.id] {
        let body = rt.block_on(client.retrieve_customer(id)).unwrap();
        assert_eq!(body, serde_json::json!({"id": id, "object": "customer", "deleted": true}));
        assert_eq!(customer_change(&body).unwrap(), Change::CustomerDeleted { customer: id.clone(), user_id: None });
    }
    let StripeError::Api(missing) = rt.block_on(client.retrieve_customer("cus_Nope")).unwrap_err() else { panic!() };
    assert_eq!((missing.status, missing.code.as_deref()), (404, Some("resource_missing")));
}

/// Two Dashboard email changes in one second: planned as a refetch, which the customer read back
/// settles.
#[test]
fn two_email_changes_in_one_second_are_settled_by_reading_the_customer() {
    let stripe = emulator();
    let client = client(&stripe.base_url(), KEY, Duration::from_secs(5));
    let rt = signal_safe_runtime().unwrap();
    let (customer, _) = rt.block_on(client.create_customer(&ada(), "same-second")).unwrap();
    let cursor = rt.block_on(client.newest_event(&[])).unwrap().unwrap();
    stripe.set_event_clock(Some(now_secs()));
    stripe.dashboard_set_customer_email(&customer.id, Some("first@example.com")).unwrap();
    stripe.dashboard_set_customer_email(&customer.id, Some("second@example.com")).unwrap();
    let (events, _) = rt.block_on(client.events_after(&cursor, &[])).unwrap();
    let parsed = events.iter().map(|e| parse_event(read(e)).unwrap()).collect();
    let planned = plan(parsed, |_| None);
    let steps: Vec<(Verdict, bool)> = planned.iter().map(|p| (p.verdict, p.superseded)).collect();
    assert_eq!(steps, [(Verdict::Apply, true), (Verdict::Refetch, false)]);
    let body = rt.block_on(client.retrieve_customer(&customer.id)).unwrap();
    let Change::CustomerEmail { email, .. } = customer_change(&body).unwrap() else { panic!("{body}") };
    assert_eq!(email.as_deref(), Some("second@example.com"));
}
