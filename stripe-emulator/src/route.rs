//! Which endpoint a request is for: its method and path pattern, for `/v1` and `/v2` alike. The
//! rate limits count each endpoint apart, the restricted-key permissions are looked up by it, and
//! the parameter lists are keyed by its name ([`Route::endpoint`]).

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreateCustomer,
    ListCustomers,
    SearchCustomers,
    GetCustomer(String),
    UpdateCustomer(String),
    DeleteCustomer(String),
    CreateAccount,
    ListAccounts,
    GetAccount(String),
    UpdateAccount(String),
    DeleteAccount(String),
    CreateAccountLink,
    ListEvents,
    GetEvent(String),
    /// `POST /v2/core/accounts`
    CreateV2Account,
    /// `GET /v2/core/accounts`
    ListV2Accounts,
    /// `GET /v2/core/accounts/{id}`
    GetV2Account(String),
    /// `POST /v2/core/accounts/{id}`
    UpdateV2Account(String),
    /// `POST /v2/core/accounts/{id}/close`
    CloseV2Account(String),
    /// `POST /v2/core/account_links`
    CreateV2AccountLink,
    /// `GET /v2/core/events`
    ListV2Events,
    /// `GET /v2/core/events/{id}`
    GetV2Event(String),
}

/// Whether `path` is in Stripe's `/v2` namespace, whose requests and answers follow API v2's
/// rules (JSON bodies, v2 errors, v2 idempotency) even when no endpoint matches.
pub fn is_v2_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

impl Route {
    pub fn resolve(method: &str, path: &str) -> Option<Route> {
        if let Some(rest) = path.strip_prefix("/v2/") {
            return Route::resolve_v2(method, rest);
        }
        let segments: Vec<&str> = path.strip_prefix("/v1/")?.split('/').collect();
        Some(match (method, segments.as_slice()) {
            ("POST", ["customers"]) => Route::CreateCustomer,
            ("GET", ["customers"]) => Route::ListCustomers,
            ("GET", ["customers", "search"]) => Route::SearchCustomers,
            ("GET", ["customers", c]) => Route::GetCustomer(id(c)?),
            ("POST", ["customers", c]) => Route::UpdateCustomer(id(c)?),
            ("DELETE", ["customers", c]) => Route::DeleteCustomer(id(c)?),
            ("POST", ["accounts"]) => Route::CreateAccount,
            ("GET", ["accounts"]) => Route::ListAccounts,
            ("GET", ["accounts", a]) => Route::GetAccount(id(a)?),
            ("POST", ["accounts", a]) => Route::UpdateAccount(id(a)?),
            ("DELETE", ["accounts", a]) => Route::DeleteAccount(id(a)?),
            ("POST", ["account_links"]) => Route::CreateAccountLink,
            ("GET", ["events"]) => Route::ListEvents,
            ("GET", ["events", e]) => Route::GetEvent(id(e)?),
            _ => return None,
        })
    }

    fn resolve_v2(method: &str, rest: &str) -> Option<Route> {
        let segments: Vec<&str> = rest.split('/').collect();
        Some(match (method, segments.as_slice()) {
            ("POST", ["core", "accounts"]) => Route::CreateV2Account,
            ("GET", ["core", "accounts"]) => Route::ListV2Accounts,
            ("GET", ["core", "accounts", a]) => Route::GetV2Account(id(a)?),
            ("POST", ["core", "accounts", a]) => Route::UpdateV2Account(id(a)?),
            ("POST", ["core", "accounts", a, "close"]) => Route::CloseV2Account(id(a)?),
            ("POST", ["core", "account_links"]) => Route::CreateV2AccountLink,
            ("GET", ["core", "events"]) => Route::ListV2Events,
            ("GET", ["core", "events", e]) => Route::GetV2Event(id(e)?),
            _ => return None,
        })
    }

    /// The endpoint's name in the parameter lists: method and path template.
    pub fn endpoint(&self) -> &'static str {
        match self {
            Route::CreateCustomer => "POST /v1/customers",
            Route::ListCustomers => "GET /v1/customers",
            Route::SearchCustomers => "GET /v1/customers/search",
            Route::GetCustomer(_) => "GET /v1/customers/{id}",
            Route::UpdateCustomer(_) => "POST /v1/customers/{id}",
            Route::DeleteCustomer(_) => "DELETE /v1/customers/{id}",
            Route::CreateAccount => "POST /v1/accounts",
            Route::ListAccounts => "GET /v1/accounts",
            Route::GetAccount(_) => "GET /v1/accounts/{id}",
            Route::UpdateAccount(_) => "POST /v1/accounts/{id}",
            Route::DeleteAccount(_) => "DELETE /v1/accounts/{id}",
            Route::CreateAccountLink => "POST /v1/account_links",
            Route::ListEvents => "GET /v1/events",
            Route::GetEvent(_) => "GET /v1/events/{id}",
            Route::CreateV2Account => "POST /v2/core/accounts",
            Route::ListV2Accounts => "GET /v2/core/accounts",
            Route::GetV2Account(_) => "GET /v2/core/accounts/{id}",
            Route::UpdateV2Account(_) => "POST /v2/core/accounts/{id}",
            Route::CloseV2Account(_) => "POST /v2/core/accounts/{id}/close",
            Route::CreateV2AccountLink => "POST /v2/core/account_links",
            Route::ListV2Events => "GET /v2/core/events",
            Route::GetV2Event(_) => "GET /v2/core/events/{id}",
        }
    }

    /// Search endpoints have their own rate limit instead of the per-endpoint one.
    pub fn is_search(&self) -> bool {
        matches!(self, Route::SearchCustomers)
    }

    /// An endpoint of Stripe's `/v2` namespace.
    pub fn is_v2(&self) -> bool {
        self.endpoint().contains(" /v2/")
    }
}

fn id(segment: &str) -> Option<String> {
    (!segment.is_empty()).then(|| segment.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_paths_resolve_to_their_own_endpoints() {
        assert_eq!(Route::resolve("POST", "/v2/core/accounts"), Some(Route::CreateV2Account));
        assert_eq!(Route::resolve("GET", "/v2/core/accounts/acct_1"), Some(Route::GetV2Account("acct_1".into())));
        assert_eq!(
            Route::resolve("POST", "/v2/core/accounts/acct_1/close"),
            Some(Route::CloseV2Account("acct_1".into()))
        );
        assert_eq!(Route::resolve("GET", "/v2/core/events"), Some(Route::ListV2Events));
        assert_eq!(Route::resolve("DELETE", "/v2/core/accounts/acct_1"), None);
        assert_eq!(Route::resolve("GET", "/v2/core/accounts/"), None);
        assert_eq!(Route::resolve("GET", "/v1/core/accounts"), None);
        assert!(Route::CloseV2Account("a".into()).is_v2() && !Route::CreateAccount.is_v2());
        assert!(is_v2_path("/v2/anything") && is_v2_path("/v2") && !is_v2_path("/v2x") && !is_v2_path("/v1/accounts"));
    }
}
