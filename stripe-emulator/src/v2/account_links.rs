//! Account Links v2 (`POST /v2/core/account_links`): a single-use URL for an Account's owner to
//! onboard (`use_case.type: account_onboarding`) or update their information
//! (`account_update`), with the options hash named by the type (`refresh_url` required,
//! `return_url` and `collection_options` optional), as the SDK's `AccountLinkCreateParams`
//! types it.
//!
//! The pinned version takes no `configurations` in those hashes: "Removes the configurations
//! parameter from the use_case.account_onboarding and use_case.account_update hashes … If your
//! existing integration includes configurations when creating a v2 Account Link, those requests
//! fail on API version 2026-09-30.endive or later"
//! (<https://docs.stripe.com/changelog/endive/2026-09-30/removes-configurations-parameter-from-v2-core-account-links-api>):
//! sending it is refused as an unknown parameter.
//!
//! The answer is the SDK's `AccountLink` (`object: v2.core.account_link`, `created` and
//! `expires_at` RFC 3339). The link expires ten minutes after it is made and its URL has the
//! form of Stripe's example (`https://accounts.stripe.com/r/acct_…#alu_test_…`), both as in
//! <https://docs.stripe.com/api/v2/core/account-links/create>. An unknown Account is 400
//! `resource_missing` naming `account`, as on `/v1/account_links`; a closed one
//! `account_closed`.

use serde_json::{Map, Value, json};

use crate::api::Ctx;
use crate::error::ApiError;
use crate::random::random_alnum;
use crate::v2::accounts::account_closed;
use crate::v2::store::V2Store;
use crate::v2::time::format_millis;

const LIFETIME_MS: i64 = 10 * 60 * 1000;

pub fn create(p: &Map<String, Value>, store: &V2Store, ctx: &Ctx) -> Result<Value, ApiError> {
    // Both required: the parameter check refused a request without them.
    let account = p.get("account").and_then(Value::as_str).unwrap_or_default();
    let use_case = p.get("use_case").unwrap_or(&Value::Null);
    let kind = use_case["type"].as_str().unwrap_or_default();
    for other in ["account_onboarding", "account_update"] {
        if other != kind && use_case.get(other).is_some() {
            return Err(ApiError::invalid(format!(
                "use_case.{other} can only be sent with use_case.type {other}, not {kind}."
            ))
            .param(&format!("use_case.{other}")));
        }
    }
    let Some(options) = use_case.get(kind) else {
        return Err(ApiError::missing_param(&format!("use_case.{kind}")));
    };
    for url in ["refresh_url", "return_url"] {
        if let Some(value) = options.get(url).and_then(Value::as_str) {
            if !(value.starts_with("https://") || value.starts_with("http://")) || value.len() > 2048 {
                return Err(ApiError::invalid("Not a valid URL")
                    .code("url_invalid")
                    .param(&format!("use_case.{kind}.{url}")));
            }
        }
    }
    match store.accounts.get(account) {
        None => return Err(ApiError::resource_missing(400, "account", account, "account")),
        Some(r) if r.object["closed"] == true => return Err(account_closed(account)),
        Some(_) => {}
    }
    Ok(json!({
        "object": "v2.core.account_link",
        "account": account,
        "created": format_millis(ctx.now_ms),
        "expires_at": format_millis(ctx.now_ms + LIFETIME_MS),
        "livemode": false,
        "url": format!("https://accounts.stripe.com/r/{account}#alu_test_{}", random_alnum(40)),
        "use_case": {"type": kind, kind: options},
    }))
}
