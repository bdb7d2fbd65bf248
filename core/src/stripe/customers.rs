//! Customers: made for a profile, their email kept in step, read back and deleted.

use serde_json::Value;

use super::client::StripeClient;
use super::error::StripeError;
use super::form::Params;
use super::objects::{StripeObject, object_id};
use super::response::{Response, object_in};

/// What we send to create a customer for a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCustomer {
    pub user_id: String,
    pub email: String,
}

impl NewCustomer {
    pub fn params(&self) -> Params {
        vec![("email".into(), self.email.clone()), ("metadata[user_id]".into(), self.user_id.clone())]
    }
}

impl StripeClient {
    /// `POST /v1/customers` with the profile's email and `metadata[user_id]`.
    pub async fn create_customer(
        &self,
        customer: &NewCustomer,
        idempotency_key: &str,
    ) -> Result<(StripeObject, Response), StripeError> {
        let response = self.post("/v1/customers", &customer.params(), Some(idempotency_key)).await?;
        object_in(response)
    }

    /// `POST /v1/customers/{id}` setting the email.
    pub async fn update_customer_email(
        &self,
        id: &str,
        email: &str,
        idempotency_key: &str,
    ) -> Result<(StripeObject, Response), StripeError> {
        let path = format!("/v1/customers/{}", object_id(id)?);
        let response = self.post(&path, &[("email".into(), email.into())], Some(idempotency_key)).await?;
        object_in(response)
    }

    /// `GET /v1/customers/{id}`: the customer as Stripe holds it now; a deleted customer answers
    /// `{id, object: "customer", deleted: true}`, an unknown one 404 `resource_missing`. Decoded
    /// with [`lenient_json`](super::lenient_json), as events are: what it says goes through the same checks
    /// ([`crate::inbound::customer_change`]), and a hostile email must not look like a broken
    /// answer.
    pub async fn retrieve_customer(&self, id: &str) -> Result<Value, StripeError> {
        let url = format!("{}/v1/customers/{}", self.api_base, object_id(id)?);
        self.get_lenient(url).await?.decoded()
    }

    /// `DELETE /v1/customers/{id}`. Deleting is permanent; Stripe ignores idempotency keys here.
    pub async fn delete_customer(&self, id: &str) -> Result<Response, StripeError> {
        self.delete("/v1/customers", id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::form::encode_form;

    #[test]
    fn form_encoding_percent_encodes_brackets_and_reserved_characters() {
        let params = NewCustomer { user_id: "u-1".into(), email: "a+b@example.com".into() }.params();
        assert_eq!(encode_form(&params), "email=a%2Bb%40example.com&metadata%5Buser_id%5D=u-1");
    }
}
