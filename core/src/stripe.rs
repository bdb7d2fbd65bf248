//! The Stripe HTTP client: form-encoded requests, bearer auth, idempotency keys, a pinned API
//! version, and Stripe's error envelope parsed into [`StripeError`]. Works against any
//! Stripe-compatible base URL.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;

use crate::budget::Admission;
use crate::endpoint::Endpoint;
use crate::local_budget::LocalBudget;
use crate::policy::{Disposition, classify};

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
    /// The most customer-search requests a second this client sends ([`DEFAULT_SEARCH_RATE`]
    /// unless the deployment knows better; 0: no limit). Its own budget, apart from the shared
    /// one: Stripe limits search separately and lower. Per client, so with several workers on one
    /// key each may send this many.
    pub search_rate: u32,
}

/// Stripe's limit on search requests, about 20 a second per account (lower than the general
/// limit, and counted apart from it): a client on its own never trips it.
pub const DEFAULT_SEARCH_RATE: u32 = 20;

/// The most pages (of 100) a customer look-up reads from one list by email, or from search,
/// before it gives up undecided: more than a thousand customers sharing one email (or one
/// `user_id`) is not a profile's history but something to look at.
pub const CUSTOMER_LOOK_UP_MAX_PAGES: u32 = 10;

/// The most pages (of 100) an account look-up reads: accounts can only be found by walking every
/// account of the platform, so past 100,000 accounts look-ups are undecided.
pub const ACCOUNT_LOOK_UP_MAX_PAGES: u32 = 1000;

/// The answer of a look-up by `metadata.user_id` ([`StripeClient::find_customer`],
/// [`StripeClient::find_account`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookUp {
    /// The user's object (the oldest, if Stripe holds several).
    Found(StripeObject),
    /// Every place it could be was read to the end, and it is in none.
    NotFound,
    /// It may exist and could not be found: creating one now could make a second. Never create
    /// on this; the reason (no secrets, no personal data) says why, for the job's `last_error`.
    Undecided(String),
}

impl LookUp {
    fn of(objects: Vec<ListedObject>) -> LookUp {
        oldest(objects).map_or(LookUp::NotFound, LookUp::Found)
    }
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
    /// Customer search's own rate budget ([`ClientConfig::search_rate`]), shared by the clones.
    search_budget: Option<Arc<LocalBudget>>,
    /// Page bounds of the look-ups ([`CUSTOMER_LOOK_UP_MAX_PAGES`], [`ACCOUNT_LOOK_UP_MAX_PAGES`]).
    customer_pages: u32,
    account_pages: u32,
    /// What lets each request go (the rate budgets); none: every request goes at once.
    admission: Option<Arc<dyn Admission>>,
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
        Ok(StripeClient {
            http,
            api_base,
            authorization,
            api_version,
            api_key: config.api_key.clone(),
            search_budget: LocalBudget::new(config.search_rate).map(Arc::new),
            customer_pages: CUSTOMER_LOOK_UP_MAX_PAGES,
            account_pages: ACCOUNT_LOOK_UP_MAX_PAGES,
            admission: None,
        })
    }

    /// The same client, each of whose requests first waits for `admission` (the rate budgets:
    /// global, its endpoint's, search's), which also hears of every 429.
    pub fn admitted_by(&self, admission: Arc<dyn Admission>) -> StripeClient {
        StripeClient { admission: Some(admission), ..self.clone() }
    }

    /// The same client with both look-ups bounded to `pages` pages (at least 1) instead of
    /// [`CUSTOMER_LOOK_UP_MAX_PAGES`] and [`ACCOUNT_LOOK_UP_MAX_PAGES`].
    pub fn with_look_up_max_pages(mut self, pages: u32) -> StripeClient {
        self.customer_pages = pages.max(1);
        self.account_pages = pages.max(1);
        self
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

    /// Looks for the customer Stripe holds for `user_id` (its `metadata.user_id`), the oldest if
    /// several.
    ///
    /// First the list filtered by each known email, every page (strongly consistent: it sees a
    /// customer created a moment ago). Only when none of them holds one, customer search on the
    /// metadata, every page, under its own rate budget ([`ClientConfig::search_rate`]). Search is
    /// eventually consistent, so [`LookUp::NotFound`] can miss a customer created in the last
    /// minutes under an email not passed here: callers use it for objects created long ago, past
    /// the idempotency horizon.
    ///
    /// [`LookUp::Undecided`] when a list or search runs past [`CUSTOMER_LOOK_UP_MAX_PAGES`] (not
    /// a silent "not found"), or search is refused for good (a 4xx other than 401/409/429, or
    /// `Stripe-Should-Retry: false`: search is not available to every account). `Err` for what a
    /// retry may cure, search included (no answer, 409, 429, 5xx), and for any failure of the
    /// lists: the caller's retry policy applies as to any call, and a 429 reaches its rate budget.
    pub async fn find_customer(&self, user_id: &str, emails: &[&str]) -> Result<LookUp, StripeError> {
        self.find_customer_except(user_id, emails, &[]).await
    }

    /// [`find_customer`](Self::find_customer), never finding one of `not_these`: customers made
    /// for other profiles with the same user id (another table's), which a look-up must neither
    /// adopt nor delete.
    pub async fn find_customer_except(
        &self,
        user_id: &str,
        emails: &[&str],
        not_these: &[String],
    ) -> Result<LookUp, StripeError> {
        let mine = |c: &ListedObject| c.belongs_to(user_id) && !not_these.contains(&c.summary.id);
        let mut found = Vec::new();
        for email in emails {
            let mut after: Option<String> = None;
            let mut pages = 0;
            loop {
                if pages == self.customer_pages {
                    return Ok(LookUp::Undecided(format!(
                        "the customers with one of the profile's emails fill more than {pages} pages of 100: \
                         gave up looking for the user's among them"
                    )));
                }
                let mut params: Params = vec![("email".into(), email.to_string()), ("limit".into(), "100".into())];
                if let Some(after) = &after {
                    params.push(("starting_after".into(), object_id(after)?.to_string()));
                }
                let url = format!("{}/v1/customers?{}", self.api_base, encode_form(&params));
                let body = self.send(self.http.get(url)).await?.body;
                pages += 1;
                let page = ListedObject::all_in(&body);
                after = page.last().map(|c| c.summary.id.clone());
                found.extend(page.into_iter().filter(mine));
                if !has_more(&body) || after.is_none() {
                    break;
                }
            }
        }
        if !found.is_empty() {
            return Ok(LookUp::of(found));
        }
        self.search_customer(user_id, not_these).await
    }

    /// Customer search on `metadata['user_id']`, every page (`next_page` passed back as `page`).
    async fn search_customer(&self, user_id: &str, not_these: &[String]) -> Result<LookUp, StripeError> {
        let escaped = user_id.replace('\\', "\\\\").replace('\'', "\\'");
        let query = format!("metadata['user_id']:'{escaped}'");
        let mut found = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..self.customer_pages {
            let mut params: Params = vec![("query".into(), query.clone()), ("limit".into(), "100".into())];
            if let Some(page) = &page {
                params.push(("page".into(), page.clone()));
            }
            let url = format!("{}/v1/customers/search?{}", self.api_base, encode_form(&params));
            if let Some(budget) = &self.search_budget {
                budget.take_slot().await;
            }
            let body = match self.send(self.http.get(url)).await {
                Ok(response) => response.body,
                Err(error) => return self.search_failed(error),
            };
            found.extend(owned_by(&body, user_id).filter(|c| !not_these.contains(&c.summary.id)));
            page = body.get("next_page").and_then(Value::as_str).map(str::to_string);
            if !has_more(&body) || page.is_none() {
                return Ok(LookUp::of(found));
            }
        }
        Ok(LookUp::Undecided(format!(
            "customer search for the user's metadata returned more than {} pages of 100: gave up",
            self.customer_pages
        )))
    }

    /// A failed search: undecided when another try would fail the same way, else the error.
    fn search_failed(&self, error: StripeError) -> Result<LookUp, StripeError> {
        if let (StripeError::Api(ApiError { status: 429, .. }), Some(budget)) = (&error, &self.search_budget) {
            budget.penalize();
        }
        let for_good = match &error {
            // The key itself is refused: the caller must hear it as such.
            StripeError::Api(e) if e.status == 401 => false,
            StripeError::Api(_) | StripeError::InvalidResponse { .. } => {
                classify(&error, false) == Disposition::Permanent
            }
            StripeError::Transport { .. } | StripeError::Config(_) => false,
        };
        if for_good {
            Ok(LookUp::Undecided(format!(
                "customer search failed, so a customer of the user under another email cannot be ruled out: {error}"
            )))
        } else {
            Err(error)
        }
    }

    /// Looks for the Connect account Stripe holds for `user_id` (its `metadata.user_id`), the
    /// oldest if several. Accounts have no search and no list filter on metadata: this pages
    /// through every account of the platform (the list is strongly consistent, so it sees one
    /// created just now). [`LookUp::Undecided`] past [`ACCOUNT_LOOK_UP_MAX_PAGES`]; `Err` when a
    /// page fails.
    pub async fn find_account(&self, user_id: &str) -> Result<LookUp, StripeError> {
        self.find_account_except(user_id, &[]).await
    }

    /// [`find_account`](Self::find_account), never finding one of `not_these` (as
    /// [`find_customer_except`](Self::find_customer_except)).
    pub async fn find_account_except(&self, user_id: &str, not_these: &[String]) -> Result<LookUp, StripeError> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..self.account_pages {
            let (page, more) = self.list_page(ListKind::Accounts, after.as_deref()).await?;
            after = page.last().map(|a| a.summary.id.clone());
            found.extend(page.into_iter().filter(|a| a.belongs_to(user_id) && !not_these.contains(&a.summary.id)));
            if !more || after.is_none() {
                return Ok(LookUp::of(found));
            }
        }
        Ok(LookUp::Undecided(format!(
            "the platform's Connect accounts fill more than {} pages of 100: gave up looking for the user's",
            self.account_pages
        )))
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
        Ok((ListedObject::all_in(&response.body), has_more(&response.body)))
    }

    /// The events after `cursor` (an event id), oldest first, up to 100 of `types` (all types when
    /// empty): `GET /v1/events?ending_before=<cursor>`, whose page is the events just newer than
    /// the cursor. Returns them and whether newer ones follow. A cursor Stripe no longer holds
    /// (past its 30 days of events) answers 404 `resource_missing`: see [`lost_event_cursor`].
    ///
    /// One event never fails its page: the page is decoded with [`lenient_json`], and if it is
    /// still not JSON it is read again one event at a time, an event that is not JSON even alone
    /// coming back as [`ListedEvent::Unreadable`] so that the reader can set it aside and move
    /// past it. `Err` only when such an event's id cannot be found either (nothing to move past).
    pub async fn events_after(&self, cursor: &str, types: &[&str]) -> Result<(Vec<ListedEvent>, bool), StripeError> {
        let from = EventsFrom::EndingBefore(object_id(cursor)?.to_string());
        let (mut events, more) = self.list_events(Vec::new(), from, 100, types).await?;
        events.reverse(); // Stripe lists newest first
        Ok((events, more))
    }

    /// The id of the newest event of `types` (all when empty), where a reader with no cursor yet
    /// starts; `None` when Stripe holds none. An unreadable newest event still gives its id; an
    /// id that cannot be a cursor is an error (the reader asks again at its next poll).
    pub async fn newest_event(&self, types: &[&str]) -> Result<Option<String>, StripeError> {
        let (events, _) = self.list_events(Vec::new(), EventsFrom::Newest, 1, types).await?;
        let Some(newest) = events.first() else { return Ok(None) };
        match newest.cursor() {
            Some(id) => Ok(Some(id.to_string())),
            None => Err(StripeError::InvalidResponse {
                status: 200,
                request_id: None,
                message: "the newest event has no id that can be a cursor".into(),
            }),
        }
    }

    /// One page (up to 100, newest first) of the events of `types` created at or after
    /// `created_since` (Unix seconds), after the event `starting_after` (the previous page's
    /// last, which is older): where a reader without a cursor goes on from (no id to read after).
    /// Returns the events and whether older ones of the range follow. One event never fails its
    /// page, as for [`events_after`](Self::events_after).
    pub async fn events_since_page(
        &self,
        created_since: i64,
        starting_after: Option<&str>,
        types: &[&str],
    ) -> Result<(Vec<ListedEvent>, bool), StripeError> {
        let filter: Params = vec![("created[gte]".into(), created_since.to_string())];
        let from = match starting_after {
            Some(after) => EventsFrom::StartingAfter(object_id(after)?.to_string()),
            None => EventsFrom::Newest,
        };
        self.list_events(filter, from, 100, types).await
    }

    /// `GET /v1/events/{id}`, decoded with [`lenient_json`] (an event that is not JSON even so is
    /// an [`StripeError::InvalidResponse`]). An event past Stripe's 30 days answers 404.
    pub async fn retrieve_event(&self, id: &str) -> Result<Value, StripeError> {
        let url = format!("{}/v1/events/{}", self.api_base, object_id(id)?);
        self.get_lenient(url).await?.decoded()
    }

    /// `GET /v1/customers/{id}`: the customer as Stripe holds it now; a deleted customer answers
    /// `{id, object: "customer", deleted: true}`, an unknown one 404 `resource_missing`. Decoded
    /// with [`lenient_json`], as events are: what it says goes through the same checks
    /// ([`crate::inbound::customer_change`]), and a hostile email must not look like a broken
    /// answer.
    pub async fn retrieve_customer(&self, id: &str) -> Result<Value, StripeError> {
        let url = format!("{}/v1/customers/{}", self.api_base, object_id(id)?);
        self.get_lenient(url).await?.decoded()
    }

    /// Up to `limit` events of `GET /v1/events` with `filter` and `types[]` (all types when
    /// empty), from `from`, as Stripe lists them (newest first), and whether more follow. A page
    /// that is not JSON even read leniently is read again one event at a time.
    async fn list_events(
        &self,
        filter: Params,
        from: EventsFrom,
        limit: usize,
        types: &[&str],
    ) -> Result<(Vec<ListedEvent>, bool), StripeError> {
        match self.get_lenient(events_url(&self.api_base, &filter, &from, limit, types)).await? {
            Lenient::Decoded(response) => Ok(ListedEvent::all_in(&response.body)),
            Lenient::NotJson(not_json) if limit == 1 => Ok((vec![not_json.unreadable_event()?], true)),
            Lenient::NotJson(_) => self.list_events_one_by_one(&filter, from, limit, types).await,
        }
    }

    /// [`list_events`](Self::list_events) one event a request (`limit=1`), each from the last:
    /// what one bad event costs is its own entry, not the page. Stops early at an event whose id
    /// cannot be a cursor (the next read goes on from the entry before it).
    async fn list_events_one_by_one(
        &self,
        filter: &Params,
        mut from: EventsFrom,
        limit: usize,
        types: &[&str],
    ) -> Result<(Vec<ListedEvent>, bool), StripeError> {
        let newest_first = !matches!(from, EventsFrom::EndingBefore(_));
        let (mut events, mut more) = (Vec::new(), true);
        while more && events.len() < limit {
            let url = events_url(&self.api_base, filter, &from, 1, types);
            let (event, more_after) = match self.get_lenient(url).await? {
                Lenient::Decoded(response) => {
                    let (mut page, more_after) = ListedEvent::all_in(&response.body);
                    match page.pop() {
                        Some(event) => (event, more_after),
                        None => break,
                    }
                }
                // Whether more follow is in the body that could not be read: the next read says.
                Lenient::NotJson(not_json) => (not_json.unreadable_event()?, true),
            };
            more = more_after;
            let next = event.cursor().map(str::to_string);
            events.push(event);
            match next {
                Some(id) => from = from.moved_to(id),
                // The reader goes on from the entry before, at its next poll, not at once.
                None => {
                    more = false;
                    break;
                }
            }
        }
        if !newest_first {
            events.reverse(); // read oldest first (`ending_before`), listed as Stripe lists them
        }
        Ok((events, more))
    }

    /// `GET /v1/accounts/{id}`: the account as Stripe holds it now. An account that left the
    /// platform answers 403 `account_invalid` ([`account_gone`]).
    pub async fn retrieve_account(&self, id: &str) -> Result<Value, StripeError> {
        let url = format!("{}/v1/accounts/{}", self.api_base, object_id(id)?);
        Ok(self.send(self.http.get(url)).await?.body)
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
        let (status, headers, body) = self.exchange(request).await?;
        interpret(status, &headers, &body)
    }

    /// A GET whose body is decoded with [`lenient_json`]; a 2xx that is not JSON even so is
    /// handed back as it came, for [`NotJson::unreadable_event`].
    async fn get_lenient(&self, url: String) -> Result<Lenient, StripeError> {
        let (status, headers, body) = self.exchange(self.http.get(url)).await?;
        match lenient_json(&body) {
            Err(e) if (200..300).contains(&status) => Ok(Lenient::NotJson(NotJson {
                status,
                request_id: header_text(&headers, "request-id"),
                text: String::from_utf8_lossy(&body).into_owned(),
                why: e.to_string(),
            })),
            json => answer(status, &headers, json.ok()).map(Lenient::Decoded),
        }
    }

    /// Sends `request` and reads the whole answer: status, headers and body.
    async fn exchange(&self, request: reqwest::RequestBuilder) -> Result<(u16, HeaderMap, Vec<u8>), StripeError> {
        let request = request
            .header(AUTHORIZATION, self.authorization.clone())
            .header("Stripe-Version", self.api_version.clone())
            .build()
            .map_err(transport_error)?;
        let endpoint = Endpoint::of(request.method().as_str(), request.url().path());
        if let Some(admission) = &self.admission {
            admission.admit(endpoint).await;
        }
        let response = self.http.execute(request).await.map_err(transport_error)?;
        let status = response.status().as_u16();
        if let Some(admission) = self.admission.as_ref().filter(|_| status == 429) {
            admission.rate_limited(endpoint);
        }
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(transport_error)?;
        // Everything of an answer may end up stored (errors, events, snapshots): never the key.
        let body = match String::from_utf8_lossy(&bytes) {
            text if text.contains(self.api_key.0.as_str()) => self.api_key.redact(&text).into_owned().into_bytes(),
            _ => bytes.to_vec(),
        };
        Ok((status, headers, body))
    }
}

/// Where a read of `GET /v1/events` starts (Stripe lists newest first).
#[derive(Clone, Debug)]
enum EventsFrom {
    /// The newest event (of the filter).
    Newest,
    /// The events just newer than this one (`ending_before`).
    EndingBefore(String),
    /// The events just older than this one (`starting_after`).
    StartingAfter(String),
}

impl EventsFrom {
    /// Where the next read goes on from once the event `id` was read from here.
    fn moved_to(self, id: String) -> EventsFrom {
        match self {
            EventsFrom::EndingBefore(_) => EventsFrom::EndingBefore(id),
            EventsFrom::Newest | EventsFrom::StartingAfter(_) => EventsFrom::StartingAfter(id),
        }
    }
}

fn events_url(api_base: &str, filter: &Params, from: &EventsFrom, limit: usize, types: &[&str]) -> String {
    let mut params: Params = vec![("limit".into(), limit.to_string())];
    match from {
        EventsFrom::Newest => {}
        EventsFrom::EndingBefore(id) => params.push(("ending_before".into(), id.clone())),
        EventsFrom::StartingAfter(id) => params.push(("starting_after".into(), id.clone())),
    }
    params.extend(filter.iter().cloned());
    params.extend(types.iter().enumerate().map(|(i, t)| (format!("types[{i}]"), t.to_string())));
    format!("{api_base}/v1/events?{}", encode_form(&params))
}

/// One entry of a page of events.
#[derive(Clone, Debug, PartialEq)]
pub enum ListedEvent {
    /// An event that decoded (leniently: see [`lenient_json`]). Not yet checked: read it with
    /// [`crate::inbound::parse_event`], which refuses what cannot be applied safely.
    Read(Value),
    /// An event that is not JSON even read alone: only its id could be found.
    Unreadable(Unreadable),
}

/// An event set aside unread: its id (always a valid Stripe id, usable as a cursor) and why.
/// The reason names no content of the event (serde_json's errors give only a position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub id: String,
    pub why: String,
}

impl ListedEvent {
    /// The events of a list answer (none if it has no `data` array) and whether more follow.
    fn all_in(body: &Value) -> (Vec<ListedEvent>, bool) {
        let data = body.get("data").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        (data.iter().cloned().map(ListedEvent::Read).collect(), has_more(body))
    }

    /// The event's id when it can be a cursor (a valid Stripe id): where a reader goes on from.
    /// `None` for a read event without one; such an event is never a cursor (it would make every
    /// later read fail), so the reader goes on from the entry before it, and reads it again.
    pub fn cursor(&self) -> Option<&str> {
        match self {
            ListedEvent::Read(event) => event.get("id").and_then(Value::as_str).filter(|id| is_stripe_id(id)),
            ListedEvent::Unreadable(unreadable) => Some(&unreadable.id),
        }
    }
}

/// What [`StripeClient::get_lenient`] got.
enum Lenient {
    Decoded(Response),
    NotJson(NotJson),
}

impl Lenient {
    fn decoded(self) -> Result<Value, StripeError> {
        match self {
            Lenient::Decoded(response) => Ok(response.body),
            Lenient::NotJson(NotJson { status, request_id, why, .. }) => Err(StripeError::InvalidResponse {
                status,
                request_id,
                message: format!("the body is not JSON, even read leniently: {why}"),
            }),
        }
    }
}

/// A 2xx answer that is not JSON even read leniently.
struct NotJson {
    status: u16,
    request_id: Option<String>,
    /// The body, invalid UTF-8 replaced.
    text: String,
    why: String,
}

impl NotJson {
    /// The one event of a `limit=1` page, set aside by its id ([`event_id_in`]).
    fn unreadable_event(self) -> Result<ListedEvent, StripeError> {
        match event_id_in(&self.text).filter(|id| is_stripe_id(id)) {
            Some(id) => Ok(ListedEvent::Unreadable(Unreadable { id: id.to_string(), why: self.why })),
            None => Err(StripeError::InvalidResponse {
                status: self.status,
                request_id: self.request_id,
                message: format!(
                    "an event is not JSON, even read leniently, and its id cannot be found to move past it: {}",
                    self.why
                ),
            }),
        }
    }
}

/// Decodes an answer that carries events, so that one event cannot fail its page: bytes that
/// are not UTF-8 become U+FFFD, and escaped lone surrogates (which serde_json refuses) become
/// `\ufffd`. What decodes so is checked downstream ([`crate::inbound::parse_event`] refuses
/// U+FFFD).
pub fn lenient_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str(&without_lone_surrogates(&text))
}

/// `text` with every escaped surrogate (`\ud800` to `\udfff`) that is not half of a high-low
/// pair rewritten to `\ufffd`. Other escapes are stepped over whole, so in `\\ud800` (an
/// escaped backslash, then the letters `ud800`) nothing changes.
fn without_lone_surrogates(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut rewritten = String::new();
    let mut copied = 0; // `text[..copied]` is in `rewritten`
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match escaped_unit(bytes, i) {
            Some(0xD800..=0xDBFF) if matches!(escaped_unit(bytes, i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => {
                rewritten.push_str(&text[copied..i]);
                rewritten.push_str("\\ufffd");
                i += 6;
                copied = i;
            }
            Some(_) => i += 6,
            // Any other escape, `\\` included: its second character escapes nothing.
            None => i += 2,
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    rewritten.push_str(&text[copied..]);
    std::borrow::Cow::Owned(rewritten)
}

/// The UTF-16 code unit of the `\uXXXX` escape at `at`, if there is one.
fn escaped_unit(bytes: &[u8], at: usize) -> Option<u16> {
    let escape = bytes.get(at..at + 6)?;
    let hex = escape.strip_prefix(b"\\u").filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))?;
    u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// The id of the event of a one-event list page that is not JSON: the first `"id"` key directly
/// in the first object of `data`'s array, if its value is a string starting `evt_`. A tolerant
/// scan (it follows strings and nesting only), so that an `"id"` deeper in the event, such as a
/// metadata key a customer chose, is never taken for it.
fn event_id_in(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut nesting: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => nesting.push(bytes[i]),
            b'}' | b']' => {
                nesting.pop();
            }
            b'"' => {
                let end = string_end(bytes, i)?;
                let key_value = text[end + 1..].trim_start().strip_prefix(':');
                if let (b"{[{", "id", Some(value)) = (nesting.as_slice(), &text[i + 1..end], key_value) {
                    let value = value.trim_start().strip_prefix('"')?;
                    let id = &value[..value.find('"')?];
                    return id.starts_with("evt_").then_some(id);
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote closing the JSON string opened at `open`.
fn string_end(bytes: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
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

/// A list or search answer says more pages follow.
fn has_more(body: &Value) -> bool {
    body.get("has_more").and_then(Value::as_bool) == Some(true)
}

/// Whether `error` says an events cursor is gone (Stripe keeps 30 days of events): the reader
/// must start again from a full snapshot.
pub fn lost_event_cursor(error: &StripeError) -> bool {
    matches!(error, StripeError::Api(e) if e.status == 404 && e.code.as_deref() == Some("resource_missing")
        && matches!(e.param.as_deref(), Some("ending_before" | "starting_after")))
}

/// Whether `error` says a Connect account is no longer the platform's (deleted or disconnected).
pub fn account_gone(error: &StripeError) -> bool {
    matches!(error, StripeError::Api(e) if e.code.as_deref() == Some("account_invalid"))
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

/// Whether `id` has the form of a Stripe id, `prefix_alphanumerics` of at most 255 bytes: safe in
/// a request path, a cursor, a log line and an index.
pub fn is_stripe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Stripe object ids are `prefix_alphanumerics`; anything else would change the request path.
fn object_id(id: &str) -> Result<&str, StripeError> {
    if is_stripe_id(id) { Ok(id) } else { Err(StripeError::Config(format!("{id:?} is not a Stripe object id"))) }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Turns a status, headers and body into a [`Response`] or a [`StripeError`].
pub fn interpret(status: u16, headers: &HeaderMap, body: &[u8]) -> Result<Response, StripeError> {
    answer(status, headers, serde_json::from_slice(body).ok())
}

/// [`interpret`] of a body already decoded (`None`: not JSON).
fn answer(status: u16, headers: &HeaderMap, json: Option<Value>) -> Result<Response, StripeError> {
    let request_id = header_text(headers, "request-id");
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
    fn lenient_decoding_replaces_bytes_that_are_not_utf8() {
        let decoded = lenient_json(b"{\"email\": \"a\xffb\xc3\x28@x.co\", \"ok\": \"\xc3\xa9\"}").unwrap();
        assert_eq!(decoded, serde_json::json!({"email": "a\u{FFFD}b\u{FFFD}(@x.co", "ok": "é"}));
        assert!(serde_json::from_slice::<Value>(b"{\"email\": \"a\xffb\"}").is_err(), "strict decoding refuses it");
        // What is not JSON stays an error.
        assert!(lenient_json(b"{\"email\": \"a\x01b\"}").is_err());
        assert!(lenient_json(b"{\"id\": ").is_err());
    }

    #[test]
    fn lenient_decoding_rewrites_lone_surrogates_only() {
        let decoded = |json: &str| lenient_json(json.as_bytes()).unwrap();
        assert_eq!(decoded(r#""a\ud800b""#), "a\u{FFFD}b");
        assert_eq!(decoded(r#""\uDFFF""#), "\u{FFFD}", "a low half alone, in capitals");
        assert_eq!(decoded(r#""\ud83d\ude00""#), "😀", "a pair is a character");
        assert_eq!(decoded(r#""\ud800\ud83d\ude00""#), "\u{FFFD}😀", "two highs: the first is alone");
        assert_eq!(decoded(r#""\ude00\ud83d""#), "\u{FFFD}\u{FFFD}", "low then high is no pair");
        assert_eq!(decoded(r#""\\ud800""#), "\\ud800", "an escaped backslash, then letters");
        assert_eq!(decoded(r#""\\\ud800""#), "\\\u{FFFD}", "an escaped backslash, then an escape");
        assert_eq!(decoded(r#"{"\ud800": "\u00e9\u0000"}"#), serde_json::json!({"\u{FFFD}": "é\u{0}"}));
        assert!(serde_json::from_str::<Value>(r#""\ud800""#).is_err(), "strict decoding refuses it");
        // Nothing to rewrite: borrowed as it is; a bad escape is left for serde_json to refuse.
        assert!(matches!(without_lone_surrogates(r#""\u00e9\n""#), std::borrow::Cow::Borrowed(_)));
        assert_eq!(without_lone_surrogates(r#""\ud8" \ud80x \u+800 \"#), r#""\ud8" \ud80x \u+800 \"#);
        assert!(lenient_json(br#""\ud8""#).is_err());
    }

    #[test]
    fn an_unreadable_events_id_is_found_at_the_events_own_level() {
        let page = |event: &str| format!(r#"{{"object": "list", "data": [{event}], "has_more": true}}"#);
        // Stripe's order, the id first; and the emulator's, sorted, the id after the payload.
        let first = page(r#"{"id": "evt_1", "object": "event", "data": {"object": {"id": "cus_1", "email": "a\x"}}}"#);
        assert_eq!(event_id_in(&first), Some("evt_1"));
        let metadata = r#"{"object": {"id": "cus_1", "metadata": {"id": "evt_fake"}, "name": "\"id\": \"evt_q\""}}"#;
        let sorted = page(&format!(r#"{{"created": 1, "data": {metadata}, "id" : "evt_2", "type": "id"}}"#));
        assert_eq!(event_id_in(&sorted), Some("evt_2"), "never a deeper id, nor one inside a string");
        let value_first = page(r#"{"type": "id", "bad": "\x01", "id":"evt_3"}"#);
        assert_eq!(event_id_in(&value_first), Some("evt_3"), "a string \"id\" that is a value is no key");
        // None: no id, an id that is not an event's, one that is not a string, a broken text.
        for none in [page(r#"{"object": "event"}"#), page(r#"{"id": "cus_1"}"#), page(r#"{"id": 7}"#)] {
            assert_eq!(event_id_in(&none), None, "{none}");
        }
        assert_eq!(event_id_in(r#"{"data": [{"object": "ev"#), None);
        assert_eq!(event_id_in(r#"{"id": "evt_top"}"#), None, "not in a list");
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
            search_rate: DEFAULT_SEARCH_RATE,
        })
        .unwrap();
        (stripe, client)
    }

    /// The events of a page, all of which must have been read.
    fn all_read(events: Vec<ListedEvent>) -> Vec<Value> {
        let read = |e| if let ListedEvent::Read(e) = e { e } else { panic!("unreadable: {e:?}") };
        events.into_iter().map(read).collect()
    }

    #[test]
    fn events_are_read_oldest_first_after_a_cursor_and_a_lost_cursor_says_so() {
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let create = |i: usize| {
            let customer = NewCustomer { user_id: format!("u{i}"), email: format!("e{i}@example.com") };
            rt.block_on(client.create_customer(&customer, &format!("key-events-{i}"))).unwrap().0
        };
        let types = ["customer.created", "customer.updated"];
        assert_eq!(rt.block_on(client.newest_event(&types)).unwrap(), None);
        create(0);
        let cursor = rt.block_on(client.newest_event(&types)).unwrap().expect("the first customer's event");
        let created: Vec<String> = (1..=120).map(|i| create(i).id).collect();
        let updated = &created[5];
        rt.block_on(client.update_customer_email(updated, "new@example.com", "key-events-update")).unwrap();

        let page = |(events, more): (Vec<ListedEvent>, bool)| (all_read(events), more);
        let (first, more) = page(rt.block_on(client.events_after(&cursor, &types)).unwrap());
        assert!(more && first.len() == 100, "{} events, more: {more}", first.len());
        let next = first.last().unwrap()["id"].as_str().unwrap().to_string();
        let (rest, more) = page(rt.block_on(client.events_after(&next, &types)).unwrap());
        assert!(!more && rest.len() == 21, "{} events, more: {more}", rest.len());
        let read: Vec<(&str, &str)> = first
            .iter()
            .chain(&rest)
            .map(|e| (e["type"].as_str().unwrap(), e["data"]["object"]["id"].as_str().unwrap()))
            .collect();
        let mut expected: Vec<(&str, &str)> = created.iter().map(|id| ("customer.created", id.as_str())).collect();
        expected.push(("customer.updated", updated.as_str()));
        assert_eq!(read, expected, "oldest first, each once, from just after the cursor");

        // Without a cursor, from a time: every event since, newest first, across pages.
        let (mut since, more) = page(rt.block_on(client.events_since_page(0, None, &types)).unwrap());
        assert!(more && since.len() == 100);
        let oldest = since.last().unwrap()["id"].as_str().unwrap().to_string();
        let (older, more) = page(rt.block_on(client.events_since_page(0, Some(&oldest), &types)).unwrap());
        assert!(!more && older.len() == 22);
        since.extend(older);
        since.reverse();
        assert_eq!(since[1..], first.iter().chain(&rest).cloned().collect::<Vec<_>>()[..]);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let future = now + 3600;
        assert!(rt.block_on(client.events_since_page(future, None, &types)).unwrap().0.is_empty());

        // Past Stripe's 30 days the cursor is gone: the reader is told, not handed an empty page.
        stripe.age_events(31);
        let lost = rt.block_on(client.events_after(&next, &types)).unwrap_err();
        assert!(lost_event_cursor(&lost), "{lost:?}");
        assert!(!lost_event_cursor(&StripeError::Config("x".into())));
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
        assert_eq!(found, LookUp::Found(oldest.clone()), "not {duplicate:?}");
        let pages: Vec<_> = stripe.requests().into_iter().map(|r| (r.method, r.path, r.params)).collect();
        assert_eq!(pages.len(), 3, "{pages:?}");
        assert!(
            pages
                .iter()
                .all(|(method, path, params)| method == "GET" && path == "/v1/accounts" && params["limit"] == "100")
        );
        assert!(pages[0].2.get("starting_after").is_none() && pages[2].2["starting_after"].is_string());
        assert_eq!(rt.block_on(client.find_account("nobody")).unwrap(), LookUp::NotFound);
        // Bounded: the walk gives up undecided rather than answer "not found" unread.
        let bounded = client.clone().with_look_up_max_pages(2);
        assert!(matches!(rt.block_on(bounded.find_account(user)).unwrap(), LookUp::Undecided(_)));
    }

    /// Customers made by the client, one a request; returns them in creation order.
    fn create_customers(
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

    #[test]
    fn the_email_list_is_read_to_its_last_page() {
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let email = "shared@example.com";
        // Newest first: the user's customer, made first, is on the second page of 151.
        let mine = create_customers(&rt, &client, [("buyer-1".to_string(), email.to_string())]).remove(0);
        create_customers(&rt, &client, (0..150).map(|i| (format!("other-{i}"), email.to_string())));

        stripe.clear_requests();
        assert_eq!(rt.block_on(client.find_customer("buyer-1", &[email])).unwrap(), LookUp::Found(mine));
        let pages: Vec<_> = stripe.requests().into_iter().map(|r| (r.path, r.params)).collect();
        assert_eq!(pages.len(), 2, "no search once the list found it: {pages:?}");
        assert!(pages.iter().all(|(path, params)| path == "/v1/customers" && params["email"] == email));
        assert!(pages[0].1.get("starting_after").is_none() && pages[1].1["starting_after"].is_string());

        // One page only: the list is not read to its end, so the answer is not "not found".
        let bounded = client.clone().with_look_up_max_pages(1);
        let LookUp::Undecided(reason) = rt.block_on(bounded.find_customer("buyer-1", &[email])).unwrap() else {
            panic!("decided on a partly read list")
        };
        assert!(reason.contains("more than 1 pages") && !reason.contains(email), "{reason}");
    }

    /// An admission that lets everything go, noting what it was asked.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<(Endpoint, &'static str)>>);

    impl Admission for Recording {
        fn admit(&self, endpoint: Endpoint) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            self.0.lock().unwrap().push((endpoint, "admitted"));
            Box::pin(async {})
        }
        fn rate_limited(&self, endpoint: Endpoint) {
            self.0.lock().unwrap().push((endpoint, "429"));
        }
    }

    #[test]
    fn every_request_waits_for_its_own_endpoint_and_429s_are_heard() {
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let recording = Arc::new(Recording::default());
        let client = client.admitted_by(recording.clone());
        let customer = create_customers(&rt, &client, [("u-admit".to_string(), "admit@example.com".to_string())]);
        rt.block_on(client.find_customer("u-admit", &["admit@example.com"])).unwrap();
        stripe.inject(stripe_emulator::Fault::rate_limit().on("GET", "/v1/customers/"));
        assert!(rt.block_on(client.retrieve_customer(&customer[0].id)).is_err());
        let asked = recording.0.lock().unwrap().clone();
        assert_eq!(
            asked,
            [
                (Endpoint::CreateCustomer, "admitted"),
                (Endpoint::ListCustomers, "admitted"),
                (Endpoint::RetrieveCustomer, "admitted"),
                (Endpoint::RetrieveCustomer, "429"),
            ]
        );
    }

    #[test]
    fn a_look_up_never_finds_what_was_made_for_another_profile() {
        let (_stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        // Two tables with the same user id (auth.users' uuid): the other table's customer is older.
        let made =
            create_customers(&rt, &client, ["same@example.com", "same@example.com"].map(|e| ("u-9".into(), e.into())));
        let (theirs, mine) = (made[0].clone(), made[1].clone());
        let find = |emails: &[&str], not_these: &[String]| {
            rt.block_on(client.find_customer_except("u-9", emails, not_these)).unwrap()
        };
        assert_eq!(find(&["same@example.com"], std::slice::from_ref(&mine.id)), LookUp::Found(theirs.clone()));
        assert_eq!(
            find(&["same@example.com"], std::slice::from_ref(&theirs.id)),
            LookUp::Found(mine.clone()),
            "by the email list"
        );
        assert_eq!(find(&[], std::slice::from_ref(&theirs.id)), LookUp::Found(mine.clone()), "by search");
        assert_eq!(find(&[], &[theirs.id.clone(), mine.id.clone()]), LookUp::NotFound);
        let account = rt
            .block_on(
                client.create_account(
                    &NewAccount { user_id: "u-9".into(), email: "same@example.com".into() },
                    "acct-u-9",
                ),
            )
            .unwrap()
            .0;
        let found = rt.block_on(client.find_account_except("u-9", std::slice::from_ref(&account.id))).unwrap();
        assert_eq!(found, LookUp::NotFound);
    }

    #[test]
    fn search_is_read_to_its_last_page() {
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        // Search matches metadata case-insensitively; the client keeps only the exact user. The
        // user's customer, made first, comes on search's second page.
        let mine = create_customers(&rt, &client, [("seller-7".to_string(), "old@example.com".to_string())]).remove(0);
        create_customers(&rt, &client, (0..120).map(|i| ("SELLER-7".to_string(), format!("s{i}@example.com"))));

        stripe.clear_requests();
        let found = rt.block_on(client.find_customer("seller-7", &["new@example.com"])).unwrap();
        assert_eq!(found, LookUp::Found(mine));
        let log = stripe.requests();
        let searches: Vec<_> = log.iter().filter(|r| r.path == "/v1/customers/search").collect();
        assert_eq!((log.len(), searches.len()), (3, 2), "{log:?}");
        assert_eq!(searches[0].params["query"], "metadata['user_id']:'seller-7'");
        assert!(searches[0].params.get("page").is_none() && searches[1].params["page"].is_string());
        assert_eq!(rt.block_on(client.find_customer("seller-8", &[])).unwrap(), LookUp::NotFound);

        let bounded = client.clone().with_look_up_max_pages(1);
        assert!(matches!(rt.block_on(bounded.find_customer("seller-7", &[])).unwrap(), LookUp::Undecided(_)));
    }

    #[test]
    fn search_refused_for_good_is_undecided_and_for_now_an_error() {
        let (stripe, client) = emulated_stripe();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let search = "/v1/customers/search";
        for status in [400, 403, 404] {
            stripe.inject(stripe_emulator::Fault::status(status).on("GET", search).message("Search is not available"));
            let LookUp::Undecided(reason) = rt.block_on(client.find_customer("u-1", &["a@b.co"])).unwrap() else {
                panic!("decided without search ({status})")
            };
            assert!(
                reason.contains(&format!("HTTP {status}")) && reason.contains("Search is not available"),
                "{reason}"
            );
            assert!(!reason.contains("sk_test_findaccount"), "{reason}");
        }
        // Stripe says no retry: as good as refused.
        stripe.inject(stripe_emulator::Fault::status(503).on("GET", search).should_retry(false));
        assert!(matches!(rt.block_on(client.find_customer("u-1", &[])).unwrap(), LookUp::Undecided(_)));
        // What a retry may cure stays an error, for the caller's retry policy (and rate budget).
        for fault in [
            stripe_emulator::Fault::status(503),
            stripe_emulator::Fault::status(500),
            stripe_emulator::Fault::rate_limit(),
            stripe_emulator::Fault::drop_before(),
        ] {
            let described = format!("{fault:?}");
            stripe.inject(fault.on("GET", search));
            let error = rt.block_on(client.find_customer("u-1", &[])).unwrap_err();
            assert!(crate::policy::classify(&error, false) != Disposition::Permanent, "{described}: {error}");
        }
        // The key refused is said as such.
        stripe.inject(stripe_emulator::Fault::status(401).on("GET", search));
        assert_eq!(rt.block_on(client.find_customer("u-1", &[])).unwrap_err().status(), Some(401));
        // A failing list is an error, not a reason to search.
        stripe.inject(stripe_emulator::Fault::status(403).on("GET", "/v1/customers"));
        stripe.clear_requests();
        assert_eq!(rt.block_on(client.find_customer("u-1", &["a@b.co"])).unwrap_err().status(), Some(403));
        assert_eq!(stripe.requests().len(), 1);
    }

    #[test]
    fn search_lags_where_the_email_list_does_not() {
        let (stripe, client) = emulated_stripe();
        stripe.set_search_lag(Duration::from_secs(60));
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let mine = create_customers(&rt, &client, [("fresh-1".to_string(), "fresh@example.com".to_string())]).remove(0);
        // Made a moment ago: the list by its email sees it ...
        assert_eq!(rt.block_on(client.find_customer("fresh-1", &["fresh@example.com"])).unwrap(), LookUp::Found(mine));
        // ... search does not yet, which is why look-ups list first and search only for old objects.
        stripe.clear_requests();
        assert_eq!(rt.block_on(client.find_customer("fresh-1", &["changed@example.com"])).unwrap(), LookUp::NotFound);
        let searched = stripe.requests().iter().any(|r| r.path == "/v1/customers/search" && r.status == Some(200));
        assert!(searched);
    }

    #[test]
    fn search_has_its_own_rate_budget_shared_by_concurrent_look_ups() {
        let key = "sk_test_searchbudget0123456789";
        let config = stripe_emulator::EmulatorConfig { api_key: Some(key.into()), ..Default::default() };
        let stripe = stripe_emulator::Emulator::start("127.0.0.1:0", config).unwrap();
        let client = |search_rate| {
            StripeClient::new(&ClientConfig {
                api_base: stripe.base_url(),
                api_key: ApiKey::new(key).unwrap(),
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(5),
                api_version: None,
                search_rate,
            })
            .unwrap()
        };
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let search_times = |client: &StripeClient| {
            stripe.clear_requests();
            rt.block_on(async {
                let look_ups: Vec<_> = (0..5)
                    .map(|i| {
                        let client = client.clone();
                        tokio::spawn(async move { client.find_customer(&format!("nobody-{i}"), &[]).await })
                    })
                    .collect();
                for look_up in look_ups {
                    assert_eq!(look_up.await.unwrap().unwrap(), LookUp::NotFound);
                }
            });
            let mut times: Vec<_> = stripe.requests().into_iter().map(|r| r.arrived_at).collect();
            times.sort();
            times.last().unwrap().duration_since(times[0]).unwrap()
        };
        // 4 a second, no burst: five searches span four intervals, less a timer tick each.
        let paced = client(4);
        let interval = paced.search_budget.as_ref().unwrap().interval();
        let spread = search_times(&paced);
        assert!(spread + Duration::from_millis(10) >= interval * 4, "{spread:?} for five searches at 4/s");
        // 0: unlimited.
        assert!(client(0).search_budget.is_none());
        assert!(search_times(&client(0)) < interval, "unlimited searches were paced");
    }

    #[test]
    fn rejects_base_urls_without_scheme() {
        let config = ClientConfig {
            api_base: "api.stripe.com".into(),
            api_key: ApiKey::new("sk_test_x").unwrap(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            api_version: None,
            search_rate: DEFAULT_SEARCH_RATE,
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
            search_rate: DEFAULT_SEARCH_RATE,
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
