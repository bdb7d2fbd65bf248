//! For the tests: a client of a fresh emulated Stripe, and customers (v1) and Accounts (v2) made
//! through it.
//!
//! It uses `v2` through its re-exports: the v2 tests that need it live in `v2/tests.rs`, never in
//! the v2 resource modules themselves, so that no module cycle goes through here.

use std::time::Duration;

use super::client::{ApiKey, ClientConfig, DEFAULT_SEARCH_RATE, StripeClient};
use super::customers::NewCustomer;
use super::objects::StripeObject;
use super::v2::{Account, NewAccount, V2Client};

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

/// [`emulated_stripe`]'s client, speaking `/v2`.
pub fn emulated_v2() -> (stripe_emulator::Emulator, V2Client) {
    let (stripe, client) = emulated_stripe();
    (stripe, client.v2())
}

/// v2 Accounts (customer-configured, [`NewAccount::new`]) made by the client, one a request, each
/// under its own idempotency key (never one of an earlier call's: v2 answers a key's first success
/// again); returns them in creation order.
pub fn create_v2_accounts(
    rt: &tokio::runtime::Runtime,
    client: &V2Client,
    accounts: impl IntoIterator<Item = (String, String)>,
) -> Vec<Account> {
    accounts
        .into_iter()
        .enumerate()
        .map(|(i, (user_id, email))| {
            static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let key = format!("create-v2-{call}-{i}-{user_id}");
            rt.block_on(client.create_account(&NewAccount::new(user_id, email), &key)).unwrap().0
        })
        .collect()
}
