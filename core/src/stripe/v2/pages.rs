//! v2 lists page by URL: each page is `{"data": [...], "next_page_url": …}`, and the next page
//! is read by GETting `next_page_url` as it is, `null` on the last page (docs.stripe.com
//! /api-v2-overview, "pagination"; the SDK's `V2ListIterator.turnPage` requests
//! `page.next_page_url` and stops on a missing one; stripe-python's tests show it as a path with
//! the query, `/v2/core/events?object_id=obj_123&page=page_2`).
//!
//! The URL comes from an answer, so it is checked before the key goes anywhere with it (the SDK
//! too refuses any path that does not begin with a single `/`, "because some relative urls arrive
//! from potentially untrusted sources", `validatePath`): it must be a path on the configured API
//! base, or a full URL on that very base (scheme, host, port and base path), and name the list it
//! came from. The request then goes to a URL rebuilt from those checked parts, never to the text
//! as received.

use reqwest::Url;
use serde_json::Value;

use crate::stripe::error::StripeError;
use crate::stripe::response::Response;

/// The longest `next_page_url` followed (Stripe's are a path and a page token).
pub const MAX_NEXT_PAGE_URL_LEN: usize = 4096;

/// Where the next page of a v2 list is: a URL on the configured API base, checked
/// ([`next_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextPage {
    /// The absolute URL to GET.
    url: String,
    /// The list's path (`/v2/core/accounts`), for the error if the next page names another.
    list_path: &'static str,
}

impl NextPage {
    /// The URL the next page is read from.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(super) fn list_path(&self) -> &'static str {
        self.list_path
    }
}

/// One page of a v2 list.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// `None` on the last page.
    pub next: Option<NextPage>,
    /// The answer's `Request-Id`.
    pub request_id: Option<String>,
}

/// The `data` entries of a v2 list answer (none if it has no `data` array).
pub(super) fn entries(body: &Value) -> &[Value] {
    body.get("data").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// The next page of the list at `list_path` that `response` is a page of, checked against
/// `api_base` (see the module); an unusable `next_page_url` is an
/// [`StripeError::InvalidResponse`] naming why, never a page silently taken as the last.
pub(super) fn next_page_of(
    api_base: &str,
    list_path: &'static str,
    response: &Response,
) -> Result<Option<NextPage>, StripeError> {
    next_page(api_base, list_path, response.body.get("next_page_url")).map_err(|why| StripeError::InvalidResponse {
        status: response.status,
        request_id: response.request_id.clone(),
        message: format!("the next page of {list_path} cannot be followed: {why}"),
    })
}

/// The checked next page of the list at `list_path` (e.g. `/v2/core/accounts`) given the
/// answer's `next_page_url` (`None`/`null`/`""`: the last page), or why it cannot be followed.
pub fn next_page(
    api_base: &str,
    list_path: &'static str,
    next_page_url: Option<&Value>,
) -> Result<Option<NextPage>, String> {
    let text = match next_page_url {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.is_empty() => return Ok(None),
        Some(Value::String(text)) => text.as_str(),
        Some(_) => return Err("next_page_url is not a string".into()),
    };
    if text.len() > MAX_NEXT_PAGE_URL_LEN {
        return Err(format!("next_page_url is longer than {MAX_NEXT_PAGE_URL_LEN} bytes"));
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\' || c == '#') {
        return Err("next_page_url contains a character no page URL has".into());
    }
    let base = Url::parse(api_base).map_err(|_| "the API base is not a URL".to_string())?;
    let url = if text.starts_with('/') && !text.starts_with("//") {
        // A path: on the base, after the base's own path (a proxy's prefix, say).
        Url::parse(&format!("{}{text}", api_base.trim_end_matches('/')))
    } else if text.starts_with("https://") || text.starts_with("http://") {
        Url::parse(text)
    } else {
        return Err("next_page_url is neither a path nor an http(s) URL".into());
    }
    .map_err(|_| "next_page_url is not a URL".to_string())?;
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    if !same_origin {
        return Err("next_page_url is not on the configured API base".into());
    }
    let expected_path = format!("{}{list_path}", base.path().trim_end_matches('/'));
    if url.path() != expected_path {
        return Err(format!("next_page_url is not a page of {list_path}"));
    }
    let mut next = format!("{}{list_path}", api_base.trim_end_matches('/'));
    if let Some(query) = url.query().filter(|q| !q.is_empty()) {
        next.push('?');
        next.push_str(query);
    }
    Ok(Some(NextPage { url: next, list_path }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ACCOUNTS: &str = "/v2/core/accounts";

    fn follow(base: &str, url: &str) -> Result<Option<String>, String> {
        next_page(base, ACCOUNTS, Some(&json!(url))).map(|next| next.map(|n| n.url))
    }

    #[test]
    fn the_last_page_has_no_next() {
        for last in [None, Some(json!(null)), Some(json!(""))] {
            assert_eq!(next_page("https://api.stripe.com", ACCOUNTS, last.as_ref()), Ok(None));
        }
        assert!(next_page("https://api.stripe.com", ACCOUNTS, Some(&json!(7))).is_err());
    }

    #[test]
    fn a_path_is_followed_on_the_configured_base_proxy_prefix_included() {
        let page = "/v2/core/accounts?limit=100&page=page_2";
        assert_eq!(follow("https://api.stripe.com", page), Ok(Some(format!("https://api.stripe.com{page}"))));
        assert_eq!(follow("http://127.0.0.1:12111", page), Ok(Some(format!("http://127.0.0.1:12111{page}"))));
        assert_eq!(
            follow("https://proxy.example/stripe", page),
            Ok(Some(format!("https://proxy.example/stripe{page}"))),
            "a path is relative to the base, its prefix kept"
        );
        assert_eq!(
            follow("https://api.stripe.com", "/v2/core/accounts"),
            Ok(Some(format!("https://api.stripe.com{ACCOUNTS}")))
        );
        // A full URL on the very base is the same page.
        assert_eq!(
            follow("https://api.stripe.com", "https://api.stripe.com/v2/core/accounts?page=p3"),
            Ok(Some("https://api.stripe.com/v2/core/accounts?page=p3".into()))
        );
        assert_eq!(
            follow("https://api.stripe.com", "https://api.stripe.com:443/v2/core/accounts?page=p3"),
            Ok(Some("https://api.stripe.com/v2/core/accounts?page=p3".into())),
            "the default port is the base's"
        );
    }

    #[test]
    fn never_another_host_scheme_port_user_or_list() {
        let base = "https://api.stripe.com";
        for elsewhere in [
            "https://evil.example/v2/core/accounts?page=p2",
            "//evil.example/v2/core/accounts?page=p2",
            "http://api.stripe.com/v2/core/accounts?page=p2",
            "https://api.stripe.com:8443/v2/core/accounts?page=p2",
            "https://user:pw@api.stripe.com/v2/core/accounts?page=p2",
            "https://api.stripe.com@evil.example/v2/core/accounts",
            "https://api.stripe.com.evil.example/v2/core/accounts",
            "@evil.example/v2/core/accounts",
            ".evil.example/v2/core/accounts",
            "evil.example/v2/core/accounts",
            "ftp://api.stripe.com/v2/core/accounts",
            "/v2/core/events?page=p2",
            "/v2/core/accounts/acct_1?page=p2",
            "/v2/core/accounts/../../v1/customers?page=p2",
            "/v1/accounts?page=p2",
            "/v2/core/accounts?page=p2#fragment",
            "/v2/core/accounts?page=p2\r\nX-Injected: 1",
            "/v2/core/accounts?page=p 2",
            "/v2\\core/accounts?page=p2",
        ] {
            assert!(follow(base, elsewhere).is_err(), "followed {elsewhere:?}");
        }
        // Behind a proxy, Stripe's own host is another host, and a page off the prefix another list.
        assert!(follow("https://proxy.example/stripe", "https://api.stripe.com/v2/core/accounts?page=p2").is_err());
        assert!(follow("https://proxy.example/stripe", "https://proxy.example/v2/core/accounts?page=p2").is_err());
        assert!(follow(base, &format!("/v2/core/accounts?page={}", "p".repeat(MAX_NEXT_PAGE_URL_LEN))).is_err());
    }

    #[test]
    fn an_unusable_next_page_is_an_invalid_response_not_a_last_page() {
        let response = Response {
            status: 200,
            request_id: Some("req_page".into()),
            replayed: false,
            body: json!({"data": [], "next_page_url": "https://evil.example/v2/core/accounts?page=p2"}),
        };
        let Err(StripeError::InvalidResponse { status, request_id, message }) =
            next_page_of("https://api.stripe.com", ACCOUNTS, &response)
        else {
            panic!("followed another host")
        };
        assert_eq!((status, request_id.as_deref()), (200, Some("req_page")));
        assert!(message.contains("not on the configured API base"), "{message}");
        assert!(entries(&response.body).is_empty());
        assert!(entries(&json!({"data": "nope"})).is_empty());
    }
}
