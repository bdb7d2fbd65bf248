//! For the tests: a client of a fresh emulated Stripe, and customers made through it.

use std::time::Duration;

use super::client::{ApiKey, ClientConfig, DEFAULT_SEARCH_RATE, StripeClient};
use super::customers::NewCustomer;
use super::objects::StripeObject;

pub fn emulated_stripe() -> (stripe_emulator::Emulator, StripeClient) {
    emulated_stripe_with_key("sk_test_findaccount0123456789")
}

/// [`emulated_stripe`], the emulator taking `key`.
pub fn emulated_stripe_with_key(key: &str) -> (stripe_emulator::Emulator, StripeClient) {
    let config = stripe_emulator::EmulatorConfig { api_key: Some(key.into()), ..Default::default() };
    let stripe = stripe_emulator::Emulator::start("127.0.0.1:0", config).unwrap();
    let client = client_of(&stripe, key, DEFAULT_SEARCH_RATE);
    (stripe, client)
}

/// A client of `stripe` with `key` (which the emulator may refuse) and its own search budget.
pub fn client_of(stripe: &stripe_emulator::Emulator, key: &str, search_rate: u32) -> StripeClient {
    StripeClient::new(&ClientConfig {
        api_base: stripe.base_url(),
        api_key: ApiKey::new(key).unwrap(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        api_version: None,
        search_rate,
    })
    .unwrap()
}

/// Customers made by the client, one a request; returns them in creation order.
pub fn create_customers(
    rt: &tokio::runtime::Runtime,
    client: &StripeClient,
    customers: impl IntoIterator<Item = (String, String)>,
) -> Vec<StripeObject> {
    customers
        .into_iter()
        .enumerate()
        .map(|(i, (user_id, email))| {
            let customer = NewCustomer { user_id, email };
            rt.block_on(client.create_customer(&customer, &format!("create-{i}-{}", customer.user_id))).unwrap().0
        })
        .collect()
}
