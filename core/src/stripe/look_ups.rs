//! Finding what Stripe holds for a user (`metadata.user_id`) before making one: customers by
//! their emails' lists then by search, accounts by walking the platform's list.

use serde_json::Value;

use super::client::StripeClient;
use super::error::{ApiError, StripeError};
use super::form::{Params, encode_form};
use super::lists::{ListKind, ListedObject, has_more};
use super::objects::{StripeObject, object_id};
use crate::policy::{Disposition, classify};

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

impl StripeClient {
    /// Looks for the customer Stripe holds for `user_id` (its `metadata.user_id`), the oldest if
    /// several.
    ///
    /// First the list filtered by each known email, every page (strongly consistent: it sees a
    /// customer created a moment ago). Only when none of them holds one, customer search on the
    /// metadata, every page, under its own rate budget ([`ClientConfig::search_rate`](super::ClientConfig::search_rate)). Search is
    /// eventually consistent, so [`LookUp::NotFound`] can miss a customer created in the last
    /// minutes under an email not passed here: callers use it for objects created long ago, past
    /// the idempotency horizon.
    ///
    /// [`LookUp::Undecided`] when a list or search runs past [`CUSTOMER_LOOK_UP_MAX_PAGES`](super::CUSTOMER_LOOK_UP_MAX_PAGES) (not
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
    /// created just now). [`LookUp::Undecided`] past [`ACCOUNT_LOOK_UP_MAX_PAGES`](super::ACCOUNT_LOOK_UP_MAX_PAGES); `Err` when a
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stripe::accounts::NewAccount;
    use crate::stripe::emulated::{client_of, create_customers, emulated_stripe, emulated_stripe_with_key};

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
        let (stripe, _) = emulated_stripe_with_key(key);
        let client = |search_rate| client_of(&stripe, key, search_rate);
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
}
