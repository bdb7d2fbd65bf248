//! Account Links v2 (`POST /v2/core/account_links`): a single-use URL to Stripe's hosted
//! onboarding for an Account.
//!
//! The body is `account` and `use_case: {type: "account_onboarding", account_onboarding:
//! {refresh_url, return_url}}` (`AccountLinkCreateParams`, stripe-node 23.1.0; the curl example
//! of docs.stripe.com/api/v2/core/account-links/create). It names no configurations: the pinned
//! version (`2026-10-28.endive`) no longer takes `account_onboarding.configurations` — "Removes
//! the configurations parameter from the Account Links v2 API … If your existing integration
//! includes `configurations` when creating a v2 Account Link, those requests fail on API version
//! `2026-09-30.endive` or later … Stripe now automatically determines which configurations
//! require onboarding" (docs.stripe.com/changelog/endive/2026-09-30/removes-configurations-
//! parameter-from-v2-core-account-links-api). Stripe collects what the configurations the
//! Account has need, so adding them first (`accounts.rs`) is what chooses what is collected.

use serde_json::{Value, json};

use super::time::unix_millis;
use super::wire::V2Client;
use crate::stripe::error::StripeError;
use crate::stripe::objects::object_id;

pub const ACCOUNT_LINKS_PATH: &str = "/v2/core/account_links";

/// A v2 Account Link as the extension hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountLink {
    pub url: String,
    /// `expires_at` in Unix milliseconds, when readable.
    pub expires_at_ms: Option<i64>,
}

/// The body of an onboarding link for `account`.
pub fn account_link_body(account: &str, refresh_url: &str, return_url: &str) -> Value {
    json!({
        "account": account,
        "use_case": {
            "type": "account_onboarding",
            "account_onboarding": {"refresh_url": refresh_url, "return_url": return_url},
        },
    })
}

impl V2Client {
    /// `POST /v2/core/account_links` for onboarding `account`. No idempotency key, as v1's link:
    /// a link is single use and short-lived, and a failed request is simply asked again.
    pub async fn create_account_link(
        &self,
        account: &str,
        refresh_url: &str,
        return_url: &str,
    ) -> Result<AccountLink, StripeError> {
        let body = account_link_body(object_id(account)?, refresh_url, return_url);
        let response = self.post(ACCOUNT_LINKS_PATH, &body, None).await?;
        match response.body.get("url").and_then(Value::as_str) {
            Some(url) => Ok(AccountLink {
                url: url.to_string(),
                expires_at_ms: response.body.get("expires_at").and_then(Value::as_str).and_then(unix_millis),
            }),
            None => Err(StripeError::InvalidResponse {
                status: response.status,
                request_id: response.request_id,
                message: "the account link has no url".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_onboarding_link_names_its_use_case_and_no_configurations() {
        assert_eq!(
            account_link_body("acct_1", "https://x.co/refresh", "https://x.co/return"),
            json!({
                "account": "acct_1",
                "use_case": {
                    "type": "account_onboarding",
                    "account_onboarding": {"refresh_url": "https://x.co/refresh", "return_url": "https://x.co/return"},
                },
            })
        );
        assert!(!account_link_body("acct_1", "r", "b").to_string().contains("configurations"));
    }
}
