//! Restricted keys (`rk_test_…`) and the permission each route needs.
//!
//! A restricted key given a permission set (through [`crate::Emulator::set_restricted_key`] or
//! `POST /_emulator/restricted_keys`) may call only the routes its permissions cover; any other
//! restricted key keeps the emulator's default of everything allowed. A refused request answers
//! as Stripe does: 403 `invalid_request_error` without a `code`, the key masked, naming the
//! permission that would let it through. The check runs after routing and before the
//! idempotency layer, so a refusal is never stored under a key (assumed, not confirmed: Stripe
//! does not document where its permission check sits).
//!
//! Restricted keys may call `/v2` too: "All Stripe APIs support restricted API keys"
//! (<https://docs.stripe.com/keys/restricted-api-keys>). Which permission each v2 endpoint needs
//! Stripe does not publish; the table below assumes the v1 resources' (Accounts v2 under
//! `rak_connected_account_*`, Account Links v2 under `rak_account_link_write`, thin events under
//! `rak_event_read`).

use std::collections::{BTreeSet, HashMap};

use crate::auth;
use crate::error::ApiError;
use crate::route::Route;

/// The account a refusal names: the emulator serves one platform account.
pub const PLATFORM_ACCOUNT: &str = "acct_1EmulatorPlatfrm";

/// A restricted-key permission, by Stripe's id. The ids follow the `rak_<resource>_<read|write>`
/// pattern of Stripe's messages; these exact ones are unconfirmed (Stripe does not publish the
/// list). Write implies read, as in Stripe's dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    CustomerRead,
    CustomerWrite,
    ConnectedAccountRead,
    ConnectedAccountWrite,
    AccountLinkWrite,
    EventRead,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Permission::CustomerRead,
        Permission::CustomerWrite,
        Permission::ConnectedAccountRead,
        Permission::ConnectedAccountWrite,
        Permission::AccountLinkWrite,
        Permission::EventRead,
    ];

    /// Stripe's id, e.g. `rak_customer_write`.
    pub fn id(self) -> &'static str {
        match self {
            Permission::CustomerRead => "rak_customer_read",
            Permission::CustomerWrite => "rak_customer_write",
            Permission::ConnectedAccountRead => "rak_connected_account_read",
            Permission::ConnectedAccountWrite => "rak_connected_account_write",
            Permission::AccountLinkWrite => "rak_account_link_write",
            Permission::EventRead => "rak_event_read",
        }
    }

    pub fn parse(id: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.id() == id)
    }

    /// The permission that also grants this one (write grants read).
    fn implied_by(self) -> Option<Permission> {
        match self {
            Permission::CustomerRead => Some(Permission::CustomerWrite),
            Permission::ConnectedAccountRead => Some(Permission::ConnectedAccountWrite),
            _ => None,
        }
    }

    /// What a request needing this permission may go through with.
    fn granted_by(self, held: &BTreeSet<Permission>) -> bool {
        held.contains(&self) || self.implied_by().is_some_and(|p| held.contains(&p))
    }

    /// The one table: what each route the emulator serves needs (GET reads, POST and DELETE
    /// write, as Stripe maps methods to permission types).
    pub fn required_by(route: &Route) -> Permission {
        match route {
            Route::ListCustomers | Route::SearchCustomers | Route::GetCustomer(_) => Permission::CustomerRead,
            Route::CreateCustomer | Route::UpdateCustomer(_) | Route::DeleteCustomer(_) => Permission::CustomerWrite,
            Route::ListAccounts | Route::GetAccount(_) => Permission::ConnectedAccountRead,
            Route::CreateAccount | Route::UpdateAccount(_) | Route::DeleteAccount(_) => {
                Permission::ConnectedAccountWrite
            }
            Route::CreateAccountLink => Permission::AccountLinkWrite,
            Route::ListEvents | Route::GetEvent(_) => Permission::EventRead,
            // Assumed, not confirmed: Accounts v2 under the connected-account permissions, as
            // Stripe's Dashboard groups Accounts; thin events under the events one.
            Route::ListV2Accounts | Route::GetV2Account(_) => Permission::ConnectedAccountRead,
            Route::CreateV2Account | Route::UpdateV2Account(_) | Route::CloseV2Account(_) => {
                Permission::ConnectedAccountWrite
            }
            Route::CreateV2AccountLink => Permission::AccountLinkWrite,
            Route::ListV2Events | Route::GetV2Event(_) => Permission::EventRead,
        }
    }
}

/// The restricted keys given a permission set.
#[derive(Default)]
pub struct RestrictedKeys(HashMap<String, BTreeSet<Permission>>);

impl RestrictedKeys {
    /// Only `rk_test_` keys have permission sets: a secret key may do everything.
    pub fn set(&mut self, key: &str, permissions: impl IntoIterator<Item = Permission>) -> Result<(), String> {
        if !key.starts_with("rk_test_") || key.len() <= "rk_test_".len() {
            return Err(format!("only restricted test keys (rk_test_…) take permissions, not {}", auth::mask(key)));
        }
        self.0.insert(key.to_string(), permissions.into_iter().collect());
        Ok(())
    }

    pub fn remove(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// A key given a permission set is a key of the account, whatever key the emulator was
    /// started with.
    pub fn is_configured(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Refuses `route` to a configured restricted key that lacks its permission.
    pub fn check(&self, key: &str, route: &Route) -> Result<(), ApiError> {
        let Some(held) = self.0.get(key) else {
            return Ok(());
        };
        let needed = Permission::required_by(route);
        if needed.granted_by(held) {
            return Ok(());
        }
        Err(ApiError::new(
            403,
            "invalid_request_error",
            format!(
                "The provided key '{}' does not have the required permissions for this endpoint on account \
                 '{PLATFORM_ACCOUNT}'. Having the '{}' permission would allow this request to continue.",
                auth::mask(key),
                needed.id()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_implies_read_and_nothing_else() {
        let mut keys = RestrictedKeys::default();
        keys.set("rk_test_customersonly0123", [Permission::CustomerWrite]).unwrap();
        let key = "rk_test_customersonly0123";
        assert!(keys.check(key, &Route::ListCustomers).is_ok());
        assert!(keys.check(key, &Route::CreateCustomer).is_ok());
        let refused = keys.check(key, &Route::ListAccounts).unwrap_err();
        assert_eq!((refused.status, refused.code.as_deref()), (403, None));
        assert!(refused.message.contains("'rak_connected_account_read' permission"), "{}", refused.message);
        assert!(refused.message.contains("'rk_test_****0123'") && !refused.message.contains(key));
        // Unconfigured keys keep everything.
        assert!(keys.check("rk_test_other", &Route::CreateAccountLink).is_ok());
        assert!(keys.set("sk_test_abc", []).is_err());
    }

    #[test]
    fn every_permission_parses_back() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.id()), Some(p));
        }
        assert_eq!(Permission::parse("rak_everything"), None);
    }
}
