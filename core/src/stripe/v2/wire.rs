//! How a v2 request goes on the wire, and what it shares with v1.
//!
//! Shared, unchanged: everything [`StripeClient::send`] and [`StripeClient::get_lenient`] do
//! for v1 (`client.rs`): the bearer key, marked sensitive and never shown; the pinned
//! `Stripe-Version` (v2 pins the API version the same way: docs.stripe.com/api-v2-overview, and
//! the official SDK sends the one header for both namespaces, `RequestSender._makeHeaders`);
//! admission by the rate budgets, each request under its own [`Endpoint`](crate::endpoint::Endpoint)
//! (the v2 ones are named in `endpoint.rs`); transport errors; the key redacted from anything an
//! answer echoes; and the error envelope read into [`StripeError::Api`] (see `errors.rs`).
//!
//! v2's own: request bodies are JSON, `Content-Type: application/json` ("Request and responses
//! use JSON encoding", docs.stripe.com/api-v2-overview; the SDK switches the content type and the
//! encoder on the path's `/v2` prefix, `RequestSender._request`); GET parameters stay in the query
//! string, arrays indexed in brackets as in v1 (`include[0]=requirements`: the SDK's
//! `queryStringifyRequestData`, and the curl example of docs.stripe.com/api/v2/core/accounts/retrieve).

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use crate::stripe::client::{Lenient, NotJson, StripeClient};
use crate::stripe::error::StripeError;
use crate::stripe::response::Response;

/// Query parameters of a v2 GET, in Stripe's bracket notation (`include[0]`, `created[gte]`).
pub type Query = Vec<(String, String)>;

/// Stripe's limit on an idempotency key's length (docs.stripe.com/api/idempotent_requests).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// `name[0]=a&name[1]=b…`: an array parameter as the SDK writes it in a query string.
pub fn array_param<S: AsRef<str>>(name: &str, values: &[S]) -> Query {
    values.iter().enumerate().map(|(i, v)| (format!("{name}[{i}]"), v.as_ref().to_string())).collect()
}

/// The query string of `query`: names and values percent-encoded, except the brackets of the
/// names, which are left as they are (the SDK's `encodeQueryValue` does the same "for
/// readability (the server accepts both)").
pub fn encode_query(query: &[(String, String)]) -> String {
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    query
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name).replace("%5B", "[").replace("%5D", "]"), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `key` if Stripe can take it as an idempotency key: 1 to 255 bytes of visible ASCII (it goes
/// in a header as it is, and a key Stripe truncated or refused would not protect the request).
pub fn checked_idempotency_key(key: &str) -> Result<&str, StripeError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(StripeError::Config(format!(
            "a v2 idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters, got {} bytes",
            key.len()
        )));
    }
    Ok(key)
}

/// The v2 client: a [`StripeClient`] (same key, version, budgets, connection pool) speaking
/// `/v2`. Cheap to make and to clone ([`StripeClient::v2`]). Its operations are written in the
/// resources' modules (`accounts.rs`, `account_links.rs`, `events.rs`, `look_up.rs`).
#[derive(Clone)]
pub struct V2Client {
    pub(super) inner: StripeClient,
}

impl StripeClient {
    /// This client speaking `/v2`: the same configuration, connection pool and admission.
    pub fn v2(&self) -> V2Client {
        V2Client { inner: self.clone() }
    }
}

impl V2Client {
    /// The v1 client it shares everything with.
    pub fn v1(&self) -> &StripeClient {
        &self.inner
    }

    /// `POST {path}` with `body` and no idempotency key: for the key's permission check
    /// (`permissions.rs`), whose probes touch no object and are never retried as such.
    pub async fn post_probe(&self, path: &str, body: &Value) -> Result<Response, StripeError> {
        self.post(path, body, None).await
    }

    /// `POST {path}` with `body` as JSON. `idempotency_key`: required for every write the
    /// extension may repeat (v2 retries are keyed as v1's, with other semantics: see
    /// `policy::classify_v2`); `None` only for what is never retried as the same request.
    pub(super) async fn post(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Response, StripeError> {
        let body = serde_json::to_vec(body).map_err(|e| StripeError::Config(format!("unencodable body: {e}")))?;
        let mut request = self
            .inner
            .http
            .post(format!("{}{path}", self.inner.api_base))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", checked_idempotency_key(key)?);
        }
        self.inner.send(request).await
    }

    /// `GET {path}?{query}`, the answer decoded with [`lenient_json`](crate::stripe::lenient_json)
    /// as v1's reads of customers and events are: v2 Accounts and events carry what users wrote
    /// (emails, names), which must not make a whole answer unreadable. A 2xx that is not JSON even
    /// so is an [`StripeError::InvalidResponse`].
    pub(super) async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Response, StripeError> {
        let url = match query.is_empty() {
            true => format!("{}{path}", self.inner.api_base),
            false => format!("{}{path}?{}", self.inner.api_base, encode_query(query)),
        };
        self.get_url(url).await
    }

    /// [`get`](Self::get) of a whole URL already checked to be on the API base (a next page).
    pub(super) async fn get_url(&self, url: String) -> Result<Response, StripeError> {
        match self.inner.get_lenient(url).await? {
            Lenient::Decoded(response) => Ok(response),
            Lenient::NotJson(NotJson { status, request_id, why, .. }) => Err(StripeError::InvalidResponse {
                status,
                request_id,
                message: format!("the body is not JSON, even read leniently: {why}"),
            }),
        }
    }

    /// The configured API base, without a trailing slash (next pages are checked against it).
    pub(super) fn api_base(&self) -> &str {
        &self.inner.api_base
    }

    /// The most pages a look-up reads ([`StripeClient::with_look_up_max_pages`]).
    pub(super) fn look_up_max_pages(&self) -> u32 {
        self.inner.account_pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_index_arrays_in_brackets_and_encode_everything_else() {
        let mut query = array_param("include", &["configuration.merchant", "requirements"]);
        query.push(("created[gte]".into(), "2026-01-01T00:00:00.000Z".into()));
        query.push(("object_id".into(), "acct_1 &=?#".into()));
        assert_eq!(
            encode_query(&query),
            "include[0]=configuration.merchant&include[1]=requirements&created[gte]=2026-01-01T00%3A00%3A00.000Z\
             &object_id=acct_1+%26%3D%3F%23"
        );
        assert_eq!(encode_query(&[]), "");
        assert!(array_param::<&str>("types", &[]).is_empty());
    }

    #[test]
    fn idempotency_keys_are_checked_before_sending() {
        assert_eq!(checked_idempotency_key("onboarding-v2-account-42"), Ok("onboarding-v2-account-42"));
        let longest = "k".repeat(255);
        assert!(checked_idempotency_key(&longest).is_ok());
        for bad in [String::new(), "k".repeat(256), "a key".into(), "é".into(), "a\nb".into()] {
            assert!(matches!(checked_idempotency_key(&bad), Err(StripeError::Config(_))), "{bad:?}");
        }
    }
}
