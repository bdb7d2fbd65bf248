//! Express Connect accounts: made for a profile, read, deleted, onboarded through account links.

use serde_json::Value;

use super::client::StripeClient;
use super::error::StripeError;
use super::form::Params;
use super::objects::{StripeObject, object_id};
use super::response::{Response, object_in};

/// What we send to create an Express Connect account for a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccount {
    pub user_id: String,
    pub email: String,
}

/// The controller properties of an Express account (Express Dashboard, the platform paying
/// Stripe's fees and liable for losses, Stripe collecting requirements), which replace the
/// deprecated `type=express`. Every API version that knows `controller` takes them; none needs
/// `type` as well.
pub const EXPRESS_CONTROLLER: [(&str, &str); 4] = [
    ("controller[stripe_dashboard][type]", "express"),
    ("controller[fees][payer]", "application"),
    ("controller[losses][payments]", "application"),
    ("controller[requirement_collection]", "stripe"),
];

/// [`EXPRESS_CONTROLLER`] as the `controller` object Stripe returns (for the event log).
pub fn express_controller_object() -> Value {
    let mut controller = serde_json::Map::new();
    for (name, value) in EXPRESS_CONTROLLER {
        // "controller[a][b]" -> ["a", "b"]
        let keys: Vec<&str> = name.trim_start_matches("controller[").trim_end_matches(']').split("][").collect();
        let (last, parents) = keys.split_last().expect("every controller property has a name");
        let mut level = &mut controller;
        for key in parents {
            level = level
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Default::default()))
                .as_object_mut()
                .expect("controller properties nest hashes");
        }
        level.insert(last.to_string(), Value::String(value.to_string()));
    }
    Value::Object(controller)
}

impl NewAccount {
    pub fn params(&self) -> Params {
        let controller = EXPRESS_CONTROLLER.iter().map(|(name, value)| (name.to_string(), value.to_string()));
        controller
            .chain([
                ("email".into(), self.email.clone()),
                ("capabilities[card_payments][requested]".into(), "true".into()),
                ("capabilities[transfers][requested]".into(), "true".into()),
                ("metadata[user_id]".into(), self.user_id.clone()),
            ])
            .collect()
    }
}

impl StripeClient {
    /// `POST /v1/accounts`: an account configured as Express ([`EXPRESS_CONTROLLER`]) with card
    /// payments and transfers requested.
    pub async fn create_account(
        &self,
        account: &NewAccount,
        idempotency_key: &str,
    ) -> Result<(StripeObject, Response), StripeError> {
        let response = self.post("/v1/accounts", &account.params(), Some(idempotency_key)).await?;
        object_in(response)
    }

    /// `GET /v1/accounts/{id}`: the account as Stripe holds it now. An account that left the
    /// platform answers 403 `account_invalid` ([`account_gone`]).
    pub async fn retrieve_account(&self, id: &str) -> Result<Value, StripeError> {
        let url = format!("{}/v1/accounts/{}", self.api_base, object_id(id)?);
        Ok(self.send(self.http.get(url)).await?.body)
    }

    /// `DELETE /v1/accounts/{id}`.
    pub async fn delete_account(&self, id: &str) -> Result<Response, StripeError> {
        self.delete("/v1/accounts", id).await
    }

    /// `POST /v1/account_links` (`account_onboarding`): a single-use URL that expires in minutes.
    pub async fn create_account_link(
        &self,
        account: &str,
        refresh_url: &str,
        return_url: &str,
    ) -> Result<String, StripeError> {
        let params = vec![
            ("account".into(), object_id(account)?.to_string()),
            ("type".into(), "account_onboarding".into()),
            ("refresh_url".into(), refresh_url.into()),
            ("return_url".into(), return_url.into()),
        ];
        let response = self.post("/v1/account_links", &params, None).await?;
        match response.body.get("url").and_then(Value::as_str) {
            Some(url) => Ok(url.to_string()),
            None => Err(StripeError::InvalidResponse {
                status: response.status,
                request_id: response.request_id,
                message: "the account link has no url".into(),
            }),
        }
    }
}

/// Whether `error` says a Connect account is no longer the platform's (deleted or disconnected).
pub fn account_gone(error: &StripeError) -> bool {
    matches!(error, StripeError::Api(e) if e.code.as_deref() == Some("account_invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::form::encode_form;

    #[test]
    fn accounts_are_express_by_controller_properties_with_both_capabilities() {
        let params = NewAccount { user_id: "u-1".into(), email: "a@b.co".into() }.params();
        assert_eq!(
            encode_form(&params),
            "controller%5Bstripe_dashboard%5D%5Btype%5D=express&controller%5Bfees%5D%5Bpayer%5D=application\
             &controller%5Blosses%5D%5Bpayments%5D=application&controller%5Brequirement_collection%5D=stripe\
             &email=a%40b.co&capabilities%5Bcard_payments%5D%5Brequested%5D=true\
             &capabilities%5Btransfers%5D%5Brequested%5D=true&metadata%5Buser_id%5D=u-1"
        );
        // The deprecated form is not sent: the pinned version does not need it.
        assert!(params.iter().all(|(name, _)| name != "type"));
    }

    #[test]
    fn the_express_controller_as_an_object() {
        assert_eq!(
            express_controller_object(),
            serde_json::json!({"stripe_dashboard": {"type": "express"}, "fees": {"payer": "application"},
                               "losses": {"payments": "application"}, "requirement_collection": "stripe"})
        );
    }
}
