//! The Stripe HTTP client: form-encoded requests, bearer auth, idempotency keys, a pinned API
//! version, and Stripe's error envelope parsed into [`StripeError`]. Works against any
//! Stripe-compatible base URL.
//!
//! - `client`: [`StripeClient`] and its configuration, the key, the pinned version, sending a
//!   request (admitted by the rate budgets) and reading its answer;
//! - `error`: [`StripeError`], [`ApiError`], [`TransportKind`];
//! - `response`: a 2xx read into a [`Response`], any other status into a [`StripeError`] from
//!   Stripe's error envelope;
//! - `form`: parameters in Stripe's bracket notation, form-encoded;
//! - `lenient`: decoding answers one bad string cannot fail ([`lenient_json`]);
//! - `objects`: [`StripeObject`] and object ids;
//! - `customers`, `accounts` (with account links), `lists` (pages of customers or accounts),
//!   `events`: what the client asks Stripe, each resource's methods and types;
//! - `look_ups`: finding a user's customer or account before making one ([`LookUp`]);
//! - `v2`: Stripe's API v2 (Accounts v2, Account Links v2, thin events), kept apart: JSON
//!   bodies, `include`, URL pagination, v2 errors; it shares the client with all of the above
//!   ([`v2::V2Client`], made by [`StripeClient::v2`]).
//!
//! Other modules use all this through this one (`stripe::StripeClient`, `stripe::StripeError`,
//! ...); the submodules use each other directly, never through it, so that no module cycle goes
//! through here. [`crate::policy`] classifies [`StripeError`]s and is itself used by the look-ups,
//! so it reads them from `stripe::error`. The tests here are of what every request does,
//! whatever its resource.

mod accounts;
mod client;
mod customers;
#[cfg(test)]
pub(crate) mod emulated;
pub(crate) mod error;
mod events;
mod form;
mod lenient;
mod lists;
mod look_ups;
mod objects;
mod response;
pub mod v2;

pub use accounts::{EXPRESS_CONTROLLER, NewAccount, account_gone, express_controller_object};
pub use client::{
    ACCOUNT_LOOK_UP_MAX_PAGES, ApiKey, CUSTOMER_LOOK_UP_MAX_PAGES, ClientConfig, DEFAULT_SEARCH_RATE,
    STRIPE_API_VERSION, STRIPE_API_VERSION_C, StripeClient,
};
pub use customers::NewCustomer;
pub use error::{ApiError, StripeError, TransportKind};
pub use events::{ListedEvent, Unreadable, lost_event_cursor};
pub use form::{Params, encode_form};
pub use lenient::lenient_json;
pub use lists::{ListKind, ListedObject};
pub use look_ups::LookUp;
pub use objects::{StripeObject, is_stripe_id};
pub use response::{Response, interpret};

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::emulated::{create_customers, emulated_stripe};
    use super::*;
    use crate::budget::Admission;
    use crate::endpoint::Endpoint;

    /// An admission that lets everything go, noting what it was asked.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<(Endpoint, &'static str)>>);

    impl Admission for Recording {
        fn admit(&self, endpoint: Endpoint) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            self.0.lock().unwrap().push((endpoint, "admitted"));
            Box::pin(async {})
        }
        fn rate_limited(&self, endpoint: Endpoint) {
            self.0.lock().unwrap().push((endpoint, "429"));
        }
    }

    #[test]
    fn every_request_waits_for_its_own_endpoint_and_429s_are_heard() {
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let recording = Arc::new(Recording::default());
        let client = client.admitted_by(recording.clone());
        let customer = create_customers(&rt, &client, [("u-admit".to_string(), "admit@example.com".to_string())]);
        rt.block_on(client.find_customer("u-admit", &["admit@example.com"])).unwrap();
        stripe.inject(stripe_emulator::Fault::rate_limit().on("GET", "/v1/customers/"));
        assert!(rt.block_on(client.retrieve_customer(&customer[0].id)).is_err());
        let asked = recording.0.lock().unwrap().clone();
        assert_eq!(
            asked,
            [
                (Endpoint::CreateCustomer, "admitted"),
                (Endpoint::ListCustomers, "admitted"),
                (Endpoint::RetrieveCustomer, "admitted"),
                (Endpoint::RetrieveCustomer, "429"),
            ]
        );
    }

    #[test]
    fn pins_the_api_version_on_every_request() {
        // The test server's lists are generated for this version: the two must move together.
        assert_eq!(STRIPE_API_VERSION, stripe_emulator::PINNED_API_VERSION);
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let customer = NewCustomer { user_id: "u-1".into(), email: "a@b.co".into() };
        let (created, _) = rt.block_on(client.create_customer(&customer, "k1")).unwrap();
        rt.block_on(client.update_customer_email(&created.id, "b@b.co", "k2")).unwrap();
        rt.block_on(client.find_customer("u-1", &["b@b.co"])).unwrap();
        rt.block_on(client.find_customer("nobody", &[])).unwrap();
        let account = NewAccount { user_id: "u-1".into(), email: "a@b.co".into() };
        let (account, _) = rt.block_on(client.create_account(&account, "k3")).unwrap();
        rt.block_on(client.create_account_link(&account.id, "https://x.co/r", "https://x.co/b")).unwrap();
        rt.block_on(client.list_page_since(ListKind::Customers, Some(&created.id), Some(0))).unwrap();
        rt.block_on(client.delete_account(&account.id)).unwrap();
        rt.block_on(client.delete_customer(&created.id)).unwrap();
        let log = stripe.requests();
        assert_eq!(log.len(), 9, "{log:?}");
        for request in &log {
            assert_eq!(request.stripe_version.as_deref(), Some(STRIPE_API_VERSION), "{request:?}");
            assert_eq!(request.status, Some(200), "{request:?}");
        }
        // The account was created by controller properties, as Express.
        assert_eq!(log[4].params["controller"]["stripe_dashboard"]["type"], "express");
        assert!(log[4].params.get("type").is_none());
    }

    #[test]
    fn the_api_version_can_be_overridden() {
        let key = "sk_test_versionoverride0123456789";
        let stripe = stripe_emulator::Emulator::start("127.0.0.1:0", Default::default()).unwrap();
        let client = StripeClient::new(&ClientConfig {
            api_base: stripe.base_url(),
            api_key: ApiKey::new(key).unwrap(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            api_version: Some("2024-06-20".into()),
            search_rate: DEFAULT_SEARCH_RATE,
        })
        .unwrap();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        // The test server speaks only the pinned version, and says so.
        let Err(StripeError::Api(e)) = rt.block_on(client.list_page(ListKind::Accounts, None)) else {
            panic!("another version was accepted")
        };
        assert_eq!(e.status, 400);
        assert!(e.message.as_deref().is_some_and(|m| m.starts_with("Invalid Stripe API version: 2024-06-20")), "{e:?}");
        assert_eq!(stripe.requests()[0].stripe_version.as_deref(), Some("2024-06-20"));
    }
}
