//! The Stripe HTTP client: form-encoded requests, bearer auth, idempotency keys, a pinned API
//! version, and Stripe's error envelope parsed into [`StripeError`]. Works against any
//! Stripe-compatible base URL.

use std::fmt;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;

/// The Stripe API version every request pins (`Stripe-Version`) unless configured otherwise:
/// the one the client and the project's test server (whose parameter lists are generated for
/// it, `stripe-emulator/params/<version>.json`) are built and tested against. Without the
/// header Stripe answers in the account's default version, which differs between accounts.
pub const STRIPE_API_VERSION: &str = match STRIPE_API_VERSION_C.to_str() {
    Ok(version) => version,
    Err(_) => panic!("the pinned API version is UTF-8"),
};

/// [`STRIPE_API_VERSION`] as a C string: the extension's setting needs its default as one.
pub const STRIPE_API_VERSION_C: &std::ffi::CStr = c"2026-10-28.endive";

/// A Stripe secret key. Its `Debug` and `Display` never show more than Stripe itself would.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Option<ApiKey> {
        let key = key.into();
        let key = key.trim();
        (!key.is_empty()).then(|| ApiKey(key.to_string()))
    }

    /// `text` with every occurrence of this key replaced by its masked form: what an upstream
    /// answer echoes (a proxy's error page, a misconfigured gateway) is stored in job rows and
    /// events, which far more roles read than the key's own setting.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if text.contains(self.0.as_str()) {
            std::borrow::Cow::Owned(text.replace(self.0.as_str(), &self.masked()))
        } else {
            std::borrow::Cow::Borrowed(text)
        }
    }

    /// `sk_test_****abcd`, the way Stripe masks keys in its own messages.
    pub fn masked(&self) -> String {
        let prefix_end = self.0.match_indices('_').nth(1).map(|(i, _)| i + 1).unwrap_or(0);
        let tail_start = self.0.len().saturating_sub(4).max(prefix_end);
        let (prefix, tail) = (&self.0[..prefix_end], &self.0[tail_start..]);
        format!("{prefix}****{tail}")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.masked())
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://api.stripe.com` in production; any Stripe-compatible server otherwise.
    pub api_base: String,
    pub api_key: ApiKey,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// `Stripe-Version` to send instead of [`STRIPE_API_VERSION`].
    pub api_version: Option<String>,
}

/// Form parameters in Stripe's bracket notation, e.g. `("metadata[user_id]", "…")`.
pub type Params = Vec<(String, String)>;

/// `application/x-www-form-urlencoded`, brackets percent-encoded (Stripe accepts both forms).
pub fn encode_form(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

/// A successful (2xx) answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub request_id: Option<String>,
    /// Stripe answered from its idempotency store (`Idempotent-Replayed: true`).
    pub replayed: bool,
    pub body: Value,
}

/// Stripe's error envelope plus the transport facts that decide whether to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub param: Option<String>,
    pub request_id: Option<String>,
    /// `Stripe-Should-Retry`, which overrides every other retry rule.
    pub should_retry: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Connect,
    Timeout,
    /// The connection broke before a complete response arrived.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StripeError {
    /// No HTTP response: Stripe may or may not have executed the request.
    Transport { kind: TransportKind, message: String },
    /// An HTTP error status with Stripe's error envelope (or as much of it as was sent).
    Api(ApiError),
    /// A 2xx whose body is not the object we asked for.
    InvalidResponse { status: u16, request_id: Option<String>, message: String },
    /// The client could not be built (bad base URL, unusable key characters).
    Config(String),
}

impl StripeError {
    pub fn request_id(&self) -> Option<&str> {
        match self {
            StripeError::Api(e) => e.request_id.as_deref(),
            StripeError::InvalidResponse { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            StripeError::Api(e) => Some(e.status),
            StripeError::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Structured form for job rows and events.
    pub fn to_json(&self) -> Value {
        match self {
            StripeError::Transport { kind, message } => serde_json::json!({
                "kind": "transport", "transport": format!("{kind:?}").to_lowercase(), "message": message,
            }),
            StripeError::Api(e) => serde_json::json!({
                "kind": "stripe", "status": e.status, "type": e.error_type, "code": e.code,
                "message": e.message, "param": e.param, "request_id": e.request_id,
                "should_retry": e.should_retry,
            }),
            StripeError::InvalidResponse { status, request_id, message } => serde_json::json!({
                "kind": "invalid_response", "status": status, "request_id": request_id, "message": message,
            }),
            StripeError::Config(message) => {
                serde_json::json!({"kind": "config", "message": message})
            }
        }
    }
}

impl fmt::Display for StripeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StripeError::Transport { kind, message } => {
                let what = match kind {
                    TransportKind::Connect => "could not connect to Stripe",
                    TransportKind::Timeout => "Stripe request timed out",
                    TransportKind::Other => "connection to Stripe failed",
                };
                write!(f, "{what}: {message}")
            }
            StripeError::Api(e) => {
                write!(f, "Stripe answered HTTP {}", e.status)?;
                if let Some(t) = &e.error_type {
                    write!(f, " {t}")?;
                }
                if let Some(c) = &e.code {
                    write!(f, " ({c})")?;
                }
                if let Some(m) = &e.message {
                    write!(f, ": {m}")?;
                }
                if let Some(r) = &e.request_id {
                    write!(f, " [request {r}]")?;
                }
                Ok(())
            }
            StripeError::InvalidResponse { status, request_id, message } => {
                write!(f, "unexpected Stripe response (HTTP {status}): {message}")?;
                if let Some(r) = request_id {
                    write!(f, " [request {r}]")?;
                }
                Ok(())
            }
            StripeError::Config(m) => write!(f, "Stripe client misconfigured: {m}"),
        }
    }
}

impl std::error::Error for StripeError {}

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
    fn all_in(body: &Value) -> Vec<ListedObject> {
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
    fn belongs_to(&self, user_id: &str) -> bool {
        !self.deleted && self.summary.metadata_user_id.as_deref() == Some(user_id)
    }
}

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

/// The parts of a Stripe customer or account the extension uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeObject {
    pub id: String,
    pub email: Option<String>,
    pub metadata_user_id: Option<String>,
}

impl StripeObject {
    fn from_json(body: &Value) -> Option<StripeObject> {
        let text = |v: &Value| v.as_str().map(str::to_string);
        Some(StripeObject {
            id: text(body.get("id")?)?,
            email: body.get("email").and_then(text),
            metadata_user_id: body.pointer("/metadata/user_id").and_then(text),
        })
    }
}

/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    api_base: String,
    /// Marked sensitive, so reqwest never prints it.
    authorization: HeaderValue,
    /// `Stripe-Version`, sent with every request.
    api_version: HeaderValue,
    /// For redacting answers that echo it (see [`ApiKey::redact`]).
    api_key: ApiKey,
}

impl StripeClient {
    pub fn new(config: &ClientConfig) -> Result<StripeClient, StripeError> {
        let api_base = config.api_base.trim_end_matches('/').to_string();
        if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
            return Err(StripeError::Config(format!(
                "onboarding.stripe_api_base must start with https:// or http://, got {api_base:?}"
            )));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.api_key.0)).map_err(|_| {
            StripeError::Config("the Stripe API key contains characters not allowed in an HTTP header".into())
        })?;
        authorization.set_sensitive(true);
        let version = config.api_version.as_deref().map_or(STRIPE_API_VERSION, str::trim);
        let api_version = match HeaderValue::from_str(version) {
            Ok(v) if !version.is_empty() => v,
            _ => return Err(StripeError::Config(format!("{version:?} is not a Stripe API version"))),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("onboarding-postgres/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::Config(e.without_url().to_string()))?;
        Ok(StripeClient { http, api_base, authorization, api_version, api_key: config.api_key.clone() })
    }

    /// `POST /v1/customers` with the profile's email and `metadata[user_id]`.
    pub async fn create_customer(
        &self,
        customer: &NewCustomer,
        idempotency_key: &str,
    ) -> Result<(StripeObject, Response), StripeError> {
        let response = self.post("/v1/customers", &customer.params(), Some(idempotency_key)).await?;
        object_in(response)
    }

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

    /// Finds the customer Stripe holds for `user_id` (its `metadata.user_id`), the oldest if several.
    ///
    /// First the list endpoint filtered by each known email (strongly consistent), then search on
    /// the metadata (eventually consistent: it can miss an object created in the last minutes, so
    /// callers use it for objects created long ago, past the idempotency horizon).
    pub async fn find_customer(&self, user_id: &str, emails: &[&str]) -> Result<Option<StripeObject>, StripeError> {
        let mut found = Vec::new();
        for email in emails {
            let url = format!(
                "{}/v1/customers?{}",
                self.api_base,
                encode_form(&[("email".into(), email.to_string()), ("limit".into(), "100".into()),])
            );
            found.extend(owned_by(&self.send(self.http.get(url)).await?.body, user_id));
        }
        if found.is_empty() {
            let escaped = user_id.replace('\\', "\\\\").replace('\'', "\\'");
            let query = format!("metadata['user_id']:'{escaped}'");
            let url = format!(
                "{}/v1/customers/search?{}",
                self.api_base,
                encode_form(&[("query".into(), query), ("limit".into(), "100".into()),])
            );
            found.extend(owned_by(&self.send(self.http.get(url)).await?.body, user_id));
        }
        Ok(oldest(found))
    }

    /// Finds the Connect account Stripe holds for `user_id` (its `metadata.user_id`), the oldest
    /// if several. Accounts have no search and no list filter on metadata: this pages through every
    /// account of the platform (the list is strongly consistent, so it sees one created just now).
    pub async fn find_account(&self, user_id: &str) -> Result<Option<StripeObject>, StripeError> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self.list_page(ListKind::Accounts, after.as_deref()).await?;
            after = page.last().map(|a| a.summary.id.clone());
            found.extend(page.into_iter().filter(|a| a.belongs_to(user_id)));
            if !more || after.is_none() {
                return Ok(oldest(found));
            }
        }
    }

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
        let more = response.body.get("has_more").and_then(Value::as_bool) == Some(true);
        Ok((ListedObject::all_in(&response.body), more))
    }

    /// `DELETE /v1/customers/{id}`. Deleting is permanent; Stripe ignores idempotency keys here.
    pub async fn delete_customer(&self, id: &str) -> Result<Response, StripeError> {
        self.delete("/v1/customers", id).await
    }

    async fn delete(&self, collection: &str, id: &str) -> Result<Response, StripeError> {
        let url = format!("{}{collection}/{}", self.api_base, object_id(id)?);
        self.send(self.http.delete(url)).await
    }

    pub async fn post(
        &self,
        path: &str,
        params: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Response, StripeError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.api_base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encode_form(params));
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, StripeError> {
        let request = request
            .header(AUTHORIZATION, self.authorization.clone())
            .header("Stripe-Version", self.api_version.clone());
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport_error)?;
        // Everything of an answer may end up stored (errors, events, snapshots): never the key.
        match String::from_utf8_lossy(&bytes) {
            text if text.contains(self.api_key.0.as_str()) => {
                interpret(status, &headers, self.api_key.redact(&text).as_bytes())
            }
            _ => interpret(status, &headers, &bytes),
        }
    }
}

/// The object a successful answer carries.
fn object_in(response: Response) -> Result<(StripeObject, Response), StripeError> {
    match StripeObject::from_json(&response.body) {
        Some(object) => Ok((object, response)),
        None => Err(StripeError::InvalidResponse {
            status: response.status,
            request_id: response.request_id,
            message: "the body has no object id".into(),
        }),
    }
}

/// The objects of a list or search answer that [belong to](ListedObject::belongs_to) `user_id`.
fn owned_by(body: &Value, user_id: &str) -> impl Iterator<Item = ListedObject> {
    ListedObject::all_in(body).into_iter().filter(move |o| o.belongs_to(user_id))
}

/// The oldest of a user's objects (by `created`, then id: `created` has one-second resolution),
/// the one every later duplicate should give way to.
fn oldest(objects: Vec<ListedObject>) -> Option<StripeObject> {
    objects.into_iter().min_by(|a, b| (a.created, &a.summary.id).cmp(&(b.created, &b.summary.id))).map(|o| o.summary)
}

/// Stripe object ids are `prefix_alphanumerics`; anything else would change the request path.
fn object_id(id: &str) -> Result<&str, StripeError> {
    let valid = !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid { Ok(id) } else { Err(StripeError::Config(format!("{id:?} is not a Stripe object id"))) }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Turns a status, headers and body into a [`Response`] or a [`StripeError`].
pub fn interpret(status: u16, headers: &HeaderMap, body: &[u8]) -> Result<Response, StripeError> {
    let request_id = header_text(headers, "request-id");
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        let body = json.ok_or_else(|| StripeError::InvalidResponse {
            status,
            request_id: request_id.clone(),
            message: "the body is not JSON".into(),
        })?;
        let replayed = header_text(headers, "idempotent-replayed").as_deref() == Some("true");
        return Ok(Response { status, request_id, replayed, body });
    }
    let envelope = json.as_ref().and_then(|j| j.get("error"));
    let field = |name: &str| envelope.and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_string);
    Err(StripeError::Api(ApiError {
        status,
        error_type: field("type"),
        code: field("code"),
        message: field("message"),
        param: field("param"),
        request_id,
        should_retry: match header_text(headers, "stripe-should-retry").as_deref() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        },
    }))
}

fn transport_error(e: reqwest::Error) -> StripeError {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    };
    // The URL holds no secret, but keep messages short and stable: the causes, without the URL.
    let mut causes = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    let message = e.without_url().to_string() + &causes;
    StripeError::Transport { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn form_encoding_percent_encodes_brackets_and_reserved_characters() {
        let params = NewCustomer { user_id: "u-1".into(), email: "a+b@example.com".into() }.params();
        assert_eq!(encode_form(&params), "email=a%2Bb%40example.com&metadata%5Buser_id%5D=u-1");
    }

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
    fn masks_keys_like_stripe() {
        assert_eq!(ApiKey::new("sk_test_abcdefgh1234").unwrap().masked(), "sk_test_****1234");
        assert_eq!(ApiKey::new("weird").unwrap().masked(), "****eird");
        assert!(!format!("{:?}", ApiKey::new("sk_live_secretvalue9876").unwrap()).contains("secretvalue"));
        assert!(ApiKey::new("   ").is_none());
    }

    #[test]
    fn redacts_every_occurrence_of_its_key_and_only_it() {
        let key = ApiKey::new("rk_live_secretvalue9876").unwrap();
        let echoed = "bad key rk_live_secretvalue9876 (again: rk_live_secretvalue9876); other rk_live_x";
        assert_eq!(key.redact(echoed), "bad key rk_live_****9876 (again: rk_live_****9876); other rk_live_x");
        assert!(matches!(key.redact("nothing here"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn parses_success_with_replay_header() {
        let h = headers(&[("request-id", "req_1"), ("idempotent-replayed", "true")]);
        let r = interpret(200, &h, br#"{"id":"cus_1","email":"a@b.c","metadata":{"user_id":"u"}}"#).unwrap();
        assert_eq!((r.request_id.as_deref(), r.replayed), (Some("req_1"), true));
        let c = StripeObject::from_json(&r.body).unwrap();
        assert_eq!(
            c,
            StripeObject { id: "cus_1".into(), email: Some("a@b.c".into()), metadata_user_id: Some("u".into()) }
        );
    }

    #[test]
    fn parses_error_envelope_and_should_retry() {
        let h = headers(&[("request-id", "req_9"), ("stripe-should-retry", "false")]);
        let body = br#"{"error":{"type":"invalid_request_error","code":"resource_missing","param":"customer","message":"No such customer: 'cus_x'"}}"#;
        let StripeError::Api(e) = interpret(404, &h, body).unwrap_err() else { panic!("not an API error") };
        assert_eq!(e.status, 404);
        assert_eq!(e.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(e.code.as_deref(), Some("resource_missing"));
        assert_eq!(e.param.as_deref(), Some("customer"));
        assert_eq!(e.request_id.as_deref(), Some("req_9"));
        assert_eq!(e.should_retry, Some(false));
    }

    #[test]
    fn non_json_error_bodies_still_give_status_and_request_id() {
        let err = interpret(502, &headers(&[("request-id", "req_2")]), b"<html>bad gateway</html>").unwrap_err();
        assert_eq!((err.status(), err.request_id()), (Some(502), Some("req_2")));
        assert!(err.to_string().contains("HTTP 502"), "{err}");
    }

    #[test]
    fn non_json_success_is_an_invalid_response() {
        let err = interpret(200, &HeaderMap::new(), b"ok").unwrap_err();
        assert!(matches!(err, StripeError::InvalidResponse { status: 200, .. }));
    }

    #[test]
    fn object_ids_cannot_change_the_path() {
        assert_eq!(object_id("cus_AbC123"), Ok("cus_AbC123"));
        for bad in ["", "cus_1/../accounts", "cus_1?expand=x", "cus 1", "cus_%2F"] {
            assert!(object_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_oldest_live_object_of_the_user_wins_ties_going_to_the_smaller_id() {
        let body = serde_json::json!({"data": [
            {"id": "acct_new", "created": 20, "metadata": {"user_id": "u"}},
            {"id": "acct_b", "created": 10, "metadata": {"user_id": "u"}},
            {"id": "acct_a", "created": 10, "metadata": {"user_id": "u"}},
            {"id": "acct_gone", "created": 5, "metadata": {"user_id": "u"}, "deleted": true},
            {"id": "acct_other", "created": 1, "metadata": {"user_id": "U"}},
            {"created": 0, "metadata": {"user_id": "u"}},
        ]});
        assert_eq!(oldest(owned_by(&body, "u").collect()).map(|o| o.id).as_deref(), Some("acct_a"));
        assert_eq!(oldest(owned_by(&body, "nobody").collect()), None);
    }

    fn emulated_stripe() -> (stripe_emulator::Emulator, StripeClient) {
        let key = "sk_test_findaccount0123456789";
        let config = stripe_emulator::EmulatorConfig { api_key: Some(key.into()), ..Default::default() };
        let stripe = stripe_emulator::Emulator::start("127.0.0.1:0", config).unwrap();
        let client = StripeClient::new(&ClientConfig {
            api_base: stripe.base_url(),
            api_key: ApiKey::new(key).unwrap(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            api_version: None,
        })
        .unwrap();
        (stripe, client)
    }

    #[test]
    fn finds_the_oldest_account_of_a_user_on_the_last_of_several_pages() {
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let create = |user: &str, key: String| {
            let account = NewAccount { user_id: user.into(), email: format!("{user}@example.com") };
            rt.block_on(client.create_account(&account, &key)).unwrap().0
        };
        let user = "seller-1";
        let oldest = create(user, "first".into());
        std::thread::sleep(Duration::from_millis(1100)); // `created` has one-second resolution
        // Newest first: the oldest lands on the third page, after a newer duplicate on the first.
        for i in 0..230 {
            create(&format!("other-{i}"), format!("filler-{i}"));
        }
        let duplicate = create(user, "second".into());

        stripe.clear_requests();
        let found = rt.block_on(client.find_account(user)).unwrap();
        assert_eq!(found.as_ref().map(|a| a.id.as_str()), Some(oldest.id.as_str()), "not {duplicate:?}");
        let pages: Vec<_> = stripe.requests().into_iter().map(|r| (r.method, r.path, r.params)).collect();
        assert_eq!(pages.len(), 3, "{pages:?}");
        assert!(
            pages
                .iter()
                .all(|(method, path, params)| method == "GET" && path == "/v1/accounts" && params["limit"] == "100")
        );
        assert!(pages[0].2.get("starting_after").is_none() && pages[2].2["starting_after"].is_string());
        assert_eq!(rt.block_on(client.find_account("nobody")).unwrap(), None);
    }

    #[test]
    fn rejects_base_urls_without_scheme() {
        let config = ClientConfig {
            api_base: "api.stripe.com".into(),
            api_key: ApiKey::new("sk_test_x").unwrap(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            api_version: None,
        };
        let Err(StripeError::Config(m)) = StripeClient::new(&config) else { panic!("accepted a bad base URL") };
        assert!(m.contains("https://"), "{m}");
        let bad_version =
            ClientConfig { api_base: "https://api.stripe.com".into(), api_version: Some("\n".into()), ..config };
        assert!(matches!(StripeClient::new(&bad_version), Err(StripeError::Config(_))));
    }

    #[test]
    fn the_express_controller_as_an_object() {
        assert_eq!(
            express_controller_object(),
            serde_json::json!({"stripe_dashboard": {"type": "express"}, "fees": {"payer": "application"},
                               "losses": {"payments": "application"}, "requirement_collection": "stripe"})
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
