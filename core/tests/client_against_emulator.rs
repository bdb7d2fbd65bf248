//! The Stripe client over real HTTP, against the project's Stripe emulator on loopback.

use std::net::TcpListener;
use std::time::Duration;

use onboarding_core::policy::{Disposition, classify};
use onboarding_core::runtime::signal_safe_runtime;
use onboarding_core::stripe::{
    ApiKey, ClientConfig, DEFAULT_SEARCH_RATE, ListKind, LookUp, NewCustomer, StripeClient, StripeError, TransportKind,
};
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
