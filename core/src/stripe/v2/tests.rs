//! The v2 client against the project's Stripe test server (`stripe_emulator`), over real HTTP:
//! what goes on the wire, what comes back, and how failures read. Written against Stripe's
//! contract (the SDK's types and the docs cited in the modules), not against the test server's
//! controls: only its request log and fault injection are used.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::budget::Admission;
use crate::endpoint::Endpoint;
use crate::policy::{Disposition, classify_v2};
use crate::stripe::client::STRIPE_API_VERSION;
use crate::stripe::emulated::{client_of, create_v2_accounts, emulated_stripe_with_key, emulated_v2};
use crate::stripe::error::StripeError;

/// An admission that lets everything go, noting what it was asked.
#[derive(Default)]
struct Recording(Mutex<Vec<(Endpoint, &'static str)>>);

impl Admission for Recording {
    fn admit(&self, endpoint: Endpoint) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.0.lock().unwrap().push((endpoint, "admitted"));
        Box::pin(async {})
    }
    fn rate_limited(&self, endpoint: Endpoint) {
        self.0.lock().unwrap().push((endpoint, "429"));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    crate::runtime::signal_safe_runtime().unwrap()
}

fn ada() -> NewAccount {
    NewAccount::new("0b7f0f5e-user", "ada@example.com")
}

fn first_event(page: &Page<ListedThinEvent>) -> &ThinEvent {
    page.data
        .iter()
        .find_map(|e| match e {
            ListedThinEvent::Event(event) => Some(event),
            ListedThinEvent::Malformed(_) => None,
        })
        .expect("an event")
}

#[test]
fn every_v2_request_is_json_pins_the_version_and_waits_for_its_own_endpoint() {
    let (stripe, client) = emulated_v2();
    let rt = runtime();
    let recording = Arc::new(Recording::default());
    let client = client.v1().admitted_by(recording.clone()).v2();

    let (account, _) = rt.block_on(client.create_account(&ada(), "onboarding-v2-create-1")).unwrap();
    let update = AccountUpdate::new()
        .add_merchant(&Capabilities::default_merchant())
        .add_recipient(&Capabilities::default_recipient())
        .include(&READINESS_INCLUDE);
    rt.block_on(client.update_account(&account.id, &update, "onboarding-v2-connect-1")).unwrap();
    rt.block_on(client.retrieve_account(&account.id, &READINESS_INCLUDE)).unwrap();
    rt.block_on(client.list_accounts(&AccountsFilter::default())).unwrap();
    rt.block_on(client.create_account_link(&account.id, "https://x.co/refresh", "https://x.co/return")).unwrap();
    let filter = EventsFilter { object_id: Some(account.id.clone()), ..EventsFilter::accounts() };
    let events = rt.block_on(client.list_events(&filter)).unwrap();
    rt.block_on(client.retrieve_event(&first_event(&events).id)).unwrap();
    rt.block_on(client.close_account(&account.id, &Configuration::ALL, "onboarding-v2-close-1")).unwrap();

    let asked = recording.0.lock().unwrap().clone();
    assert!(asked.iter().all(|(_, what)| *what == "admitted"), "{asked:?}");
    let asked: Vec<Endpoint> = asked.into_iter().map(|(endpoint, _)| endpoint).collect();
    assert_eq!(
        asked,
        [
            Endpoint::CreateAccountV2,
            Endpoint::UpdateAccountV2,
            Endpoint::RetrieveAccountV2,
            Endpoint::ListAccountsV2,
            Endpoint::CreateAccountLinkV2,
            Endpoint::ListEventsV2,
            Endpoint::RetrieveEventV2,
            Endpoint::CloseAccountV2,
        ]
    );
    let log = stripe.requests();
    assert_eq!(log.len(), 8, "{log:?}");
    for request in &log {
        assert_eq!(request.stripe_version.as_deref(), Some(STRIPE_API_VERSION), "{request:?}");
        assert_eq!(request.status, Some(200), "{request:?}");
    }
    // POST parameters are the JSON body as built; GET ones the query, `include` indexed.
    assert_eq!((log[0].method.as_str(), log[0].path.as_str()), ("POST", "/v2/core/accounts"));
    assert_eq!(log[0].params, ada().body());
    assert_eq!(log[0].idempotency_key.as_deref(), Some("onboarding-v2-create-1"));
    assert_eq!(log[1].path, format!("/v2/core/accounts/{}", account.id));
    assert_eq!(log[1].params, update.body());
    assert_eq!(log[1].idempotency_key.as_deref(), Some("onboarding-v2-connect-1"));
    assert_eq!((log[2].method.as_str(), log[2].path.as_str()), ("GET", log[1].path.as_str()));
    assert_eq!(log[2].params["include"], json!(["configuration.merchant", "configuration.recipient", "requirements"]));
    assert_eq!(log[4].params, account_link_body(&account.id, "https://x.co/refresh", "https://x.co/return"));
    assert_eq!(log[4].idempotency_key, None);
    assert_eq!(log[7].path, format!("/v2/core/accounts/{}/close", account.id));
    assert_eq!(log[7].params, json!({"applied_configurations": ["customer", "merchant", "recipient"]}));
}

#[test]
fn an_account_is_made_given_configurations_read_linked_and_closed() {
    let (stripe, client) = emulated_v2();
    let rt = runtime();
    let (account, response) = rt.block_on(client.create_account(&ada(), "create-ada")).unwrap();
    assert!(account.id.starts_with("acct_"), "{account:?}");
    assert_eq!(account.contact_email.as_deref(), Some("ada@example.com"));
    assert_eq!(account.metadata_user_id.as_deref(), Some("0b7f0f5e-user"));
    assert_eq!(account.applied_configurations, [Configuration::Customer]);
    assert!(!account.closed && account.created_ms.is_some());
    assert!(response.request_id.is_some_and(|r| r.starts_with("req_")));

    // Connect adds configurations to the same Account, and changes its email in the same request.
    let update = AccountUpdate::new()
        .add_merchant(&Capabilities::default_merchant())
        .add_recipient(&Capabilities::default_recipient())
        .contact_email("ada@new.example.com")
        .include(&READ_BACK_INCLUDE);
    let (connected, _) = rt.block_on(client.update_account(&account.id, &update, "connect-ada")).unwrap();
    assert_eq!(connected.id, account.id, "no second object");
    assert_eq!(connected.applied_configurations, Configuration::ALL);
    assert_eq!(connected.contact_email.as_deref(), Some("ada@new.example.com"));

    // Freshly connected: the capabilities are requested, not active; nothing is ready.
    let body = rt.block_on(client.retrieve_account(&account.id, &READINESS_INCLUDE)).unwrap();
    assert!(body["configuration"]["merchant"]["capabilities"]["card_payments"]["status"].is_string(), "{body}");
    assert!(
        body.pointer("/configuration/recipient/capabilities/stripe_balance/stripe_transfers/status")
            .is_some_and(Value::is_string),
        "{body}"
    );
    let readiness = V2Readiness::from_account(&body).unwrap();
    assert_eq!(readiness.account, account.id);
    assert!(!readiness.ready(&[Configuration::Merchant, Configuration::Recipient]), "{readiness:?}");
    // Without `include`, the include-dependent parts are null: never ready by omission.
    let bare = rt.block_on(client.retrieve_account(&account.id, &[])).unwrap();
    assert!(bare["requirements"].is_null() && bare["configuration"]["merchant"].is_null(), "{bare}");

    let link = rt.block_on(client.create_account_link(&account.id, "https://x.co/r", "https://x.co/b")).unwrap();
    assert!(link.url.starts_with("https://"), "{link:?}");
    assert!(link.expires_at_ms.is_some());

    // Metadata is removed by null.
    let tagged = AccountUpdate::new().set_metadata("table", "public.profiles");
    rt.block_on(client.update_account(&account.id, &tagged, "tag-ada")).unwrap();
    let untagged = AccountUpdate::new().remove_metadata("table");
    rt.block_on(client.update_account(&account.id, &untagged, "untag-ada")).unwrap();
    let body = rt.block_on(client.retrieve_account(&account.id, &[])).unwrap();
    assert_eq!(body["metadata"], json!({"user_id": "0b7f0f5e-user"}));

    let (closed, _) = rt.block_on(client.close_account(&account.id, &Configuration::ALL, "close-ada")).unwrap();
    assert!(closed.closed);
    let listed = |closed: Option<bool>| {
        let page = rt.block_on(client.list_accounts(&AccountsFilter { closed, ..AccountsFilter::default() })).unwrap();
        page.data
            .into_iter()
            .filter_map(|a| if let ListedAccount::Account(a) = a { Some(a.id) } else { None })
            .collect::<Vec<_>>()
    };
    assert!(!listed(None).contains(&account.id), "closed Accounts are not listed by default");
    assert!(listed(Some(true)).contains(&account.id));
    assert_eq!(stripe.requests().iter().filter(|r| r.method == "POST" && r.path == "/v2/core/accounts").count(), 1);
}

#[test]
fn a_v2_post_500_is_retried_under_the_same_key_and_completes_and_another_body_looks_up() {
    let (stripe, client) = emulated_v2();
    let rt = runtime();
    // The Account is made, then the answer is a 500 stored under the key.
    stripe.inject(stripe_emulator::Fault::status(500).on("POST", "/v2/core/accounts").after_execute().stored());
    let failed = rt.block_on(client.create_account(&ada(), "create-ada-500")).unwrap_err();
    assert_eq!(failed.status(), Some(500), "{failed:?}");
    assert_eq!(V2ErrorKind::of_error(&failed), Some(V2ErrorKind::Api));
    // v1 would change key and look up; v2 completes the work under the same key.
    assert_eq!(classify_v2(&failed, true), Disposition::Retry { rate_limited: false });
    let (account, _) = rt.block_on(client.create_account(&ada(), "create-ada-500")).unwrap();
    let (again, _) = rt.block_on(client.create_account(&ada(), "create-ada-500")).unwrap();
    assert_eq!(again.id, account.id, "a success is not repeated");
    let all = rt.block_on(client.list_accounts(&AccountsFilter::default())).unwrap();
    assert_eq!(all.data, [ListedAccount::Account(account.clone())], "one Account, not two");

    // The profile changed between attempts: the key is bound to the first body.
    let changed = NewAccount { contact_email: "ada@changed.example.com".into(), ..ada() };
    let refused = rt.block_on(client.create_account(&changed, "create-ada-500")).unwrap_err();
    assert_eq!(V2ErrorKind::of_error(&refused), Some(V2ErrorKind::Idempotency), "{refused:?}");
    assert_eq!(classify_v2(&refused, true), Disposition::LookUpFirst);
    let found = rt.block_on(client.find_account("0b7f0f5e-user", &[])).unwrap();
    assert_eq!(found, AccountLookUp::Found { account, others: vec![] });
}

#[test]
fn errors_come_back_in_the_crates_error_and_keys_never_do() {
    let key = "sk_test_v2errors0123456789";
    let (stripe, client) = emulated_stripe_with_key(key);
    let rt = runtime();
    let client = client.v2();
    let missing = rt.block_on(client.retrieve_account("acct_doesnotexist", &[])).unwrap_err();
    let StripeError::Api(e) = &missing else { panic!("{missing:?}") };
    assert_eq!(e.status, 404);
    assert!(e.request_id.as_deref().is_some_and(|r| r.starts_with("req_")), "{e:?}");
    assert_eq!(V2ErrorKind::of(e), V2ErrorKind::InvalidRequest);
    assert_eq!(classify_v2(&missing, false), Disposition::Permanent);
    // An unknown Account named in a body: a 4xx (which one is Stripe's to say), never retried.
    let no_link = rt.block_on(client.create_account_link("acct_doesnotexist", "https://x.co/r", "https://x.co/b"));
    let no_link = no_link.unwrap_err();
    assert!(no_link.status().is_some_and(|s| (400..500).contains(&s)), "{no_link:?}");
    assert_eq!(classify_v2(&no_link, true), Disposition::Permanent);

    // Another key: refused, and the answer does not show it.
    let other = client_of(&stripe, "sk_test_notthekey0123456789", 0).v2();
    let refused = rt.block_on(other.list_accounts(&AccountsFilter::default())).unwrap_err();
    assert_eq!(V2ErrorKind::of_error(&refused), Some(V2ErrorKind::Authentication), "{refused:?}");
    assert!(!refused.to_string().contains("notthekey"), "{refused}");
    // Ids that would change the path are refused before sending.
    assert!(matches!(rt.block_on(client.retrieve_account("acct_1/close", &[])), Err(StripeError::Config(_))));
    assert!(matches!(rt.block_on(client.create_account(&ada(), "")), Err(StripeError::Config(_))));
}

#[test]
fn the_look_up_walks_every_page_finds_the_oldest_and_is_bounded() {
    let (stripe, client) = emulated_v2();
    let rt = runtime();
    let user = "seller-1";
    let oldest = create_v2_accounts(&rt, &client, [(user.to_string(), "seller@example.com".to_string())]).remove(0);
    std::thread::sleep(Duration::from_millis(5)); // `created` has millisecond resolution
    // Newest first: the oldest lands on the third page of 100, after a newer duplicate on the first.
    create_v2_accounts(&rt, &client, (0..230).map(|i| (format!("other-{i}"), format!("other-{i}@example.com"))));
    std::thread::sleep(Duration::from_millis(5));
    let duplicate = create_v2_accounts(&rt, &client, [(user.to_string(), "seller@example.com".to_string())]).remove(0);

    stripe.clear_requests();
    let found = rt.block_on(client.find_account(user, &[])).unwrap();
    assert_eq!(found, AccountLookUp::Found { account: oldest.clone(), others: vec![duplicate.id.clone()] });
    let pages: Vec<_> = stripe.requests().into_iter().map(|r| (r.method, r.path, r.params)).collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages.iter().all(|(method, path, _)| method == "GET" && path == "/v2/core/accounts"));
    assert!(pages[0].2.get("page").is_none() && pages[2].2["page"].is_string(), "{pages:?}");

    assert_eq!(rt.block_on(client.find_account("nobody", &[])).unwrap(), AccountLookUp::NotFound { scanned: 232 });
    // Never one made for another profile.
    let other_profiles = [oldest.id.clone()];
    let AccountLookUp::Found { account, others } = rt.block_on(client.find_account(user, &other_profiles)).unwrap()
    else {
        panic!("not found")
    };
    assert_eq!((account.id, others.len()), (duplicate.id.clone(), 0));
    // Bounded: the walk gives up undecided rather than answer "not found" unread.
    let bounded = client.v1().clone().with_look_up_max_pages(2).v2();
    let AccountLookUp::Undecided(reason) = rt.block_on(bounded.find_account(user, &[])).unwrap() else {
        panic!("decided on a partly read list")
    };
    assert!(reason.contains("more than 2 pages") && !reason.contains(user), "{reason}");
}

#[test]
fn lists_page_by_next_page_url_and_thin_events_name_their_related_object() {
    let (stripe, client) = emulated_v2();
    let rt = runtime();
    let made = create_v2_accounts(&rt, &client, (0..5).map(|i| (format!("u-{i}"), format!("u{i}@example.com"))));

    // Pages of two: three pages, each read from the previous one's next_page_url.
    stripe.clear_requests();
    let mut page =
        rt.block_on(client.list_accounts(&AccountsFilter { limit: 2, ..AccountsFilter::default() })).unwrap();
    let mut listed = Vec::new();
    loop {
        listed.extend(page.data.iter().map(|a| match a {
            ListedAccount::Account(a) => a.id.clone(),
            ListedAccount::Unreadable => panic!("unreadable entry"),
        }));
        let Some(next) = page.next.clone() else { break };
        assert!(next.url().starts_with(&stripe.base_url()), "{next:?}");
        page = rt.block_on(client.next_accounts_page(&next)).unwrap();
    }
    let mut newest_first: Vec<String> = made.iter().map(|a| a.id.clone()).collect();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert_eq!(stripe.requests().len(), 3);

    // Thin events: the Account's, one a page, each naming it and carrying no snapshot.
    let account = &made[0];
    let update = AccountUpdate::new().add_merchant(&Capabilities::default_merchant());
    rt.block_on(client.update_account(&account.id, &update, "connect-u-0")).unwrap();
    let filter = EventsFilter { object_id: Some(account.id.clone()), limit: 1, ..EventsFilter::accounts() };
    let mut page = rt.block_on(client.list_events(&filter)).unwrap();
    let mut events = Vec::new();
    loop {
        for entry in &page.data {
            match entry {
                ListedThinEvent::Event(event) => events.push(event.clone()),
                ListedThinEvent::Malformed(m) => panic!("{m:?}"),
            }
        }
        let Some(next) = page.next.clone() else { break };
        // A page of events is no page of Accounts.
        assert!(matches!(rt.block_on(client.next_accounts_page(&next)), Err(StripeError::Config(_))));
        page = rt.block_on(client.next_events_page(&next)).unwrap();
    }
    assert!(events.len() >= 2, "created and configured: {events:?}");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert!(types.contains(&"v2.core.account.created"), "{types:?}");
    for event in &events {
        assert_eq!(event.account(), Some(account.id.as_str()), "{event:?}");
        assert!(ACCOUNT_EVENT_TYPES.contains(&event.event_type.as_str()), "{event:?}");
        assert_eq!(rt.block_on(client.retrieve_event(&event.id)).unwrap(), *event);
    }
    // Our own writes are known by their idempotency keys.
    assert!(events.iter().any(|e| e.idempotency_key.as_deref() == Some("connect-u-0")), "{events:?}");
    // Events of another object are not among them, and a created range bounds the list.
    let later = EventsFilter {
        created: CreatedRange {
            gt: Some(events.iter().map(|e| e.created_ms).max().unwrap()),
            ..CreatedRange::default()
        },
        ..filter
    };
    let none = rt.block_on(client.list_events(&later)).unwrap();
    assert!(none.data.is_empty() && none.next.is_none(), "{none:?}");
}
