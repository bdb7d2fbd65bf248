//! Stripe's endpoints as its rate limits count them (docs.stripe.com/rate-limits): each named
//! operation apart — `POST /v1/customers` is one, `GET /v1/customers/{id}` another — whatever
//! object id the path names. Besides the global limit, each has its own (25 requests a second by
//! default), and search its own (20).

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
    /// A request the client does not name (none today): its own budget, as any endpoint.
    Other,
}

impl Endpoint {
    pub const ALL: [Endpoint; 15] = [
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
            Endpoint::Other => "other",
        }
    }

    /// Search counts under Stripe's search limit instead of the per-endpoint one.
    pub fn is_search(self) -> bool {
        self == Endpoint::SearchCustomers
    }

    /// The endpoint of a request: its method and its URL's path (anything before `/v1/`, a
    /// proxy's prefix say, is ignored).
    pub fn of(method: &str, path: &str) -> Endpoint {
        let Some((_, rest)) = path.split_once("/v1/") else {
            return Endpoint::Other;
        };
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
        assert_eq!(Endpoint::of("GET", "/v2/core/accounts"), Endpoint::Other);
        for (i, endpoint) in Endpoint::ALL.into_iter().enumerate() {
            assert_eq!(endpoint.index(), i);
            if endpoint != Endpoint::Other {
                let (method, path) = endpoint.name().split_once(' ').unwrap();
                assert_eq!(Endpoint::of(method, &path.replace("{id}", "x_1")), endpoint, "{}", endpoint.name());
            }
        }
    }
}
