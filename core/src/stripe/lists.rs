//! Listing customers and accounts, a page of 100 at a time, newest first.

use serde_json::Value;

use super::client::StripeClient;
use super::error::StripeError;
use super::form::{Params, encode_form};
use super::objects::{StripeObject, object_id};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Customers,
    Accounts,
}

/// An object from a list page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    pub summary: StripeObject,
    pub deleted: bool,
    /// Unix seconds (Stripe's resolution), 0 if absent.
    pub created: i64,
}

impl ListedObject {
    /// The objects of a list or search answer; entries without an id are left out.
    pub(super) fn all_in(body: &Value) -> Vec<ListedObject> {
        let data = body.get("data").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        data.iter()
            .filter_map(|o| {
                Some(ListedObject {
                    summary: StripeObject::from_json(o)?,
                    deleted: o.get("deleted").and_then(Value::as_bool) == Some(true),
                    created: o.get("created").and_then(Value::as_i64).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Live and made for `user_id` (its `metadata.user_id`). Compared here, exactly: search
    /// matching is not (it is case-insensitive, for one).
    pub(super) fn belongs_to(&self, user_id: &str) -> bool {
        !self.deleted && self.summary.metadata_user_id.as_deref() == Some(user_id)
    }
}

impl StripeClient {
    /// One page (up to 100, newest first) of `/v1/customers` or `/v1/accounts`, after the object
    /// `starting_after`. Returns the objects and whether more follow.
    pub async fn list_page(
        &self,
        kind: ListKind,
        starting_after: Option<&str>,
    ) -> Result<(Vec<ListedObject>, bool), StripeError> {
        self.list_page_since(kind, starting_after, None).await
    }

    /// [`list_page`](Self::list_page) of the objects created at or after `created_since` (Unix
    /// seconds) when given (`created[gte]`).
    pub async fn list_page_since(
        &self,
        kind: ListKind,
        starting_after: Option<&str>,
        created_since: Option<i64>,
    ) -> Result<(Vec<ListedObject>, bool), StripeError> {
        let mut params: Params = vec![("limit".into(), "100".into())];
        if let Some(after) = starting_after {
            params.push(("starting_after".into(), object_id(after)?.to_string()));
        }
        if let Some(since) = created_since {
            params.push(("created[gte]".into(), since.to_string()));
        }
        let path = match kind {
            ListKind::Customers => "/v1/customers",
            ListKind::Accounts => "/v1/accounts",
        };
        let url = format!("{}{path}?{}", self.api_base, encode_form(&params));
        let response = self.send(self.http.get(url)).await?;
        Ok((ListedObject::all_in(&response.body), has_more(&response.body)))
    }
}

/// A list or search answer says more pages follow.
pub(super) fn has_more(body: &Value) -> bool {
    body.get("has_more").and_then(Value::as_bool) == Some(true)
}
