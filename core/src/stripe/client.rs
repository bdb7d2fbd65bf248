//! The client itself: configuration, bearer auth with a key never shown, the pinned API version,
//! admission by the rate budgets, and sending a request and reading its answer (idempotency keys
//! on POSTs). What it asks Stripe is in the resources' modules.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;

use super::error::{StripeError, transport_error};
use super::form::encode_form;
use super::lenient::lenient_json;
use super::objects::object_id;
use super::response::{Response, answer, header_text, interpret};
use crate::budget::Admission;
use crate::endpoint::Endpoint;
use crate::local_budget::LocalBudget;

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

/// Cheap to clone: clones share one connection pool. Its requests are written in the resources'
/// modules (customers.rs, accounts.rs, ...), which is why what they read is `pub(super)`.
#[derive(Clone)]
pub struct StripeClient {
    pub(super) http: reqwest::Client,
    pub(super) api_base: String,
    /// Marked sensitive, so reqwest never prints it.
    authorization: HeaderValue,
    /// `Stripe-Version`, sent with every request.
    api_version: HeaderValue,
    /// For redacting answers that echo it (see [`ApiKey::redact`]).
    api_key: ApiKey,
    /// Customer search's own rate budget ([`ClientConfig::search_rate`]), shared by the clones.
    pub(super) search_budget: Option<Arc<LocalBudget>>,
    /// Page bounds of the look-ups ([`CUSTOMER_LOOK_UP_MAX_PAGES`], [`ACCOUNT_LOOK_UP_MAX_PAGES`]).
    pub(super) customer_pages: u32,
    pub(super) account_pages: u32,
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

    pub(super) async fn delete(&self, collection: &str, id: &str) -> Result<Response, StripeError> {
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

    pub(super) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, StripeError> {
        let (status, headers, body) = self.exchange(request).await?;
        interpret(status, &headers, &body)
    }

    /// A GET whose body is decoded with [`lenient_json`]; a 2xx that is not JSON even so is
    /// handed back as it came, for the events reader to set the event aside.
    pub(super) async fn get_lenient(&self, url: String) -> Result<Lenient, StripeError> {
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

/// What [`StripeClient::get_lenient`] got.
pub(super) enum Lenient {
    Decoded(Response),
    NotJson(NotJson),
}

impl Lenient {
    pub(super) fn decoded(self) -> Result<Value, StripeError> {
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
pub(super) struct NotJson {
    pub(super) status: u16,
    pub(super) request_id: Option<String>,
    /// The body, invalid UTF-8 replaced.
    pub(super) text: String,
    pub(super) why: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
