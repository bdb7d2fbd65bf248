//! Stripe's endpoints as its rate limits count them (docs.stripe.com/rate-limits): each named
//! operation apart — `POST /v1/customers` is one, `GET /v1/customers/{id}` another — whatever
//! object id the path names. Besides the global limit, each has its own (25 requests a second by
//! default), and search its own (20). The v2 endpoints (`/v2/core/...`) are endpoints like any
//! other: each its own budget (docs.stripe.com/rate-limits counts per endpoint, whatever the
//! namespace), never one of v1's.

/// One endpoint the client calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CreateCustomer,
    ListCustomers,
    SearchCustomers,
    RetrieveCustomer,
    UpdateCustomer,
    DeleteCustomer,
    CreateAccount,
    ListAccounts,
    RetrieveAccount,
    UpdateAccount,
    DeleteAccount,
    CreateAccountLink,
    ListEvents,
    RetrieveEvent,
    /// `POST /v2/core/accounts`.
    CreateAccountV2,
    /// `GET /v2/core/accounts` (its first page and every `next_page_url`).
    ListAccountsV2,
    RetrieveAccountV2,
    UpdateAccountV2,
    /// `POST /v2/core/accounts/{id}/close`.
    CloseAccountV2,
    CreateAccountLinkV2,
    ListEventsV2,
    RetrieveEventV2,
    /// A request the client does not name (none today): its own budget, as any endpoint.
    Other,
}

impl Endpoint {
    pub const ALL: [Endpoint; 23] = [
        Endpoint::CreateCustomer,
        Endpoint::ListCustomers,
        Endpoint::SearchCustomers,
        Endpoint::RetrieveCustomer,
        Endpoint::UpdateCustomer,
        Endpoint::DeleteCustomer,
        Endpoint::CreateAccount,
        Endpoint::ListAccounts,
        Endpoint::RetrieveAccount,
        Endpoint::UpdateAccount,
        Endpoint::DeleteAccount,
        Endpoint::CreateAccountLink,
        Endpoint::ListEvents,
        Endpoint::RetrieveEvent,
        Endpoint::CreateAccountV2,
        Endpoint::ListAccountsV2,
        Endpoint::RetrieveAccountV2,
        Endpoint::UpdateAccountV2,
        Endpoint::CloseAccountV2,
        Endpoint::CreateAccountLinkV2,
        Endpoint::ListEventsV2,
        Endpoint::RetrieveEventV2,
        Endpoint::Other,
    ];

    /// How many there are: the size of a per-endpoint table.
    pub const COUNT: usize = Endpoint::ALL.len();

    /// Its place in [`Endpoint::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// As Stripe's docs write it, for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::CreateCustomer => "POST /v1/customers",
            Endpoint::ListCustomers => "GET /v1/customers",
            Endpoint::SearchCustomers => "GET /v1/customers/search",
            Endpoint::RetrieveCustomer => "GET /v1/customers/{id}",
            Endpoint::UpdateCustomer => "POST /v1/customers/{id}",
            Endpoint::DeleteCustomer => "DELETE /v1/customers/{id}",
            Endpoint::CreateAccount => "POST /v1/accounts",
            Endpoint::ListAccounts => "GET /v1/accounts",
            Endpoint::RetrieveAccount => "GET /v1/accounts/{id}",
            Endpoint::UpdateAccount => "POST /v1/accounts/{id}",
            Endpoint::DeleteAccount => "DELETE /v1/accounts/{id}",
            Endpoint::CreateAccountLink => "POST /v1/account_links",
            Endpoint::ListEvents => "GET /v1/events",
            Endpoint::RetrieveEvent => "GET /v1/events/{id}",
            Endpoint::CreateAccountV2 => "POST /v2/core/accounts",
            Endpoint::ListAccountsV2 => "GET /v2/core/accounts",
            Endpoint::RetrieveAccountV2 => "GET /v2/core/accounts/{id}",
            Endpoint::UpdateAccountV2 => "POST /v2/core/accounts/{id}",
            Endpoint::CloseAccountV2 => "POST /v2/core/accounts/{id}/close",
            Endpoint::CreateAccountLinkV2 => "POST /v2/core/account_links",
            Endpoint::ListEventsV2 => "GET /v2/core/events",
            Endpoint::RetrieveEventV2 => "GET /v2/core/events/{id}",
            Endpoint::Other => "other",
        }
    }

    /// Search counts under Stripe's search limit instead of the per-endpoint one.
    pub fn is_search(self) -> bool {
        self == Endpoint::SearchCustomers
    }

    /// The endpoint of a request: its method and its URL's path (anything before `/v1/`, a
    /// proxy's prefix say, is ignored). A path with no `/v1/` is read as a v2 path after its
    /// `/v2/`: v1 paths are read exactly as before v2 was known.
    pub fn of(method: &str, path: &str) -> Endpoint {
        if let Some((_, rest)) = path.split_once("/v1/") {
            return Endpoint::of_v1(method, rest);
        }
        match path.split_once("/v2/") {
            Some((_, rest)) => Endpoint::of_v2(method, rest),
            None => Endpoint::Other,
        }
    }

    /// A `/v1/` path's endpoint, given the rest of the path after `/v1/`.
    fn of_v1(method: &str, rest: &str) -> Endpoint {
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("POST", ["customers"]) => Endpoint::CreateCustomer,
            ("GET", ["customers"]) => Endpoint::ListCustomers,
            ("GET", ["customers", "search"]) => Endpoint::SearchCustomers,
            ("GET", ["customers", _]) => Endpoint::RetrieveCustomer,
            ("POST", ["customers", _]) => Endpoint::UpdateCustomer,
            ("DELETE", ["customers", _]) => Endpoint::DeleteCustomer,
            ("POST", ["accounts"]) => Endpoint::CreateAccount,
            ("GET", ["accounts"]) => Endpoint::ListAccounts,
            ("GET", ["accounts", _]) => Endpoint::RetrieveAccount,
            ("POST", ["accounts", _]) => Endpoint::UpdateAccount,
            ("DELETE", ["accounts", _]) => Endpoint::DeleteAccount,
            ("POST", ["account_links"]) => Endpoint::CreateAccountLink,
            ("GET", ["events"]) => Endpoint::ListEvents,
            ("GET", ["events", _]) => Endpoint::RetrieveEvent,
            _ => Endpoint::Other,
        }
    }

    /// A `/v2/` path's endpoint, given the rest of the path after `/v2/`.
    fn of_v2(method: &str, rest: &str) -> Endpoint {
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("POST", ["core", "accounts"]) => Endpoint::CreateAccountV2,
            ("GET", ["core", "accounts"]) => Endpoint::ListAccountsV2,
            ("GET", ["core", "accounts", _]) => Endpoint::RetrieveAccountV2,
            ("POST", ["core", "accounts", _]) => Endpoint::UpdateAccountV2,
            ("POST", ["core", "accounts", _, "close"]) => Endpoint::CloseAccountV2,
            ("POST", ["core", "account_links"]) => Endpoint::CreateAccountLinkV2,
            ("GET", ["core", "events"]) => Endpoint::ListEventsV2,
            ("GET", ["core", "events", _]) => Endpoint::RetrieveEventV2,
            _ => Endpoint::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_make_no_new_endpoint_and_every_request_has_one() {
        assert_eq!(Endpoint::of("GET", "/v1/customers/cus_A"), Endpoint::of("GET", "/v1/customers/cus_B"));
        assert_eq!(Endpoint::of("GET", "/v1/customers/search"), Endpoint::SearchCustomers);
        assert_eq!(Endpoint::of("POST", "/proxy/v1/customers"), Endpoint::CreateCustomer);
        assert_eq!(Endpoint::of("DELETE", "/v1/accounts/acct_1"), Endpoint::DeleteAccount);
        assert_eq!(Endpoint::of("GET", "/v2/core/accounts"), Endpoint::ListAccountsV2);
        assert_eq!(Endpoint::of("GET", "/v2/core/accounts/acct_A"), Endpoint::of("GET", "/v2/core/accounts/acct_B"));
        assert_eq!(Endpoint::of("POST", "/proxy/v2/core/accounts/acct_1/close"), Endpoint::CloseAccountV2);
        assert_eq!(Endpoint::of("GET", "/v2/core/accounts/acct_1/persons"), Endpoint::Other);
        assert_eq!(Endpoint::of("GET", "/v1/core/accounts"), Endpoint::Other, "no v2 path under /v1/");
        assert_eq!(Endpoint::of("GET", "/v2/customers"), Endpoint::Other, "no v1 path under /v2/");
        assert_eq!(Endpoint::of("POST", "/v1/customers/v2/core/accounts"), Endpoint::Other, "a v1 path stays one");
        for (i, endpoint) in Endpoint::ALL.into_iter().enumerate() {
            assert_eq!(endpoint.index(), i);
            if endpoint != Endpoint::Other {
                let (method, path) = endpoint.name().split_once(' ').unwrap();
                assert_eq!(Endpoint::of(method, &path.replace("{id}", "x_1")), endpoint, "{}", endpoint.name());
            }
        }
    }
}
