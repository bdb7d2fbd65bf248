//! Black-box tests: a real HTTP client against an in-process emulator (and, once, the binary).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use stripe_emulator::{
    Emulator, EmulatorConfig, Fault, FaultAction, PINNED_API_VERSION, RateLimitKind, RecordedRequest,
};

const KEY: &str = "sk_test_51EmulatorTestKey0123456789wxyz";
const WAIT: Duration = Duration::from_secs(5);

struct Harness {
    emu: Emulator,
    http: Client,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn error_type(&self) -> &str {
        self.body["error"]["type"].as_str().unwrap_or("")
    }

    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn error_param(&self) -> &str {
        self.body["error"]["param"].as_str().unwrap_or("")
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(EmulatorConfig::default())
    }

    fn with(config: EmulatorConfig) -> Harness {
        Harness {
            emu: Emulator::start("127.0.0.1:0", config).expect("emulator starts"),
            http: Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
        }
    }

    /// `body` is sent verbatim as a urlencoded form (POST) or appended as the query string,
    /// with `Stripe-Version` pinned as the client does.
    fn try_send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        auth: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> reqwest::Result<Resp> {
        self.try_send_as(method, path, body, auth, idempotency_key, Some(PINNED_API_VERSION))
    }

    fn try_send_as(
        &self,
        method: &str,
        path: &str,
        body: &str,
        auth: Option<&str>,
        idempotency_key: Option<&str>,
        stripe_version: Option<&str>,
    ) -> reqwest::Result<Resp> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut url = format!("{}{path}", self.emu.base_url());
        let mut req = if method == reqwest::Method::POST {
            self.http
                .request(method, &url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.to_string())
        } else {
            if !body.is_empty() {
                url = format!("{url}?{body}");
            }
            self.http.request(method, &url)
        };
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(version) = stripe_version {
            req = req.header("Stripe-Version", version);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text()?;
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        Ok(Resp { status, headers, body })
    }

    fn send(&self, method: &str, path: &str, body: &str, key: Option<&str>) -> Resp {
        self.try_send(method, path, body, Some(&format!("Bearer {KEY}")), key)
            .expect("request succeeds at the HTTP level")
    }

    fn post(&self, path: &str, body: &str) -> Resp {
        self.send("POST", path, body, None)
    }

    fn post_idem(&self, path: &str, body: &str, key: &str) -> Resp {
        self.send("POST", path, body, Some(key))
    }

    fn get(&self, path: &str, query: &str) -> Resp {
        self.send("GET", path, query, None)
    }

    fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, "", None)
    }

    fn create_customer(&self, body: &str) -> Value {
        let r = self.post("/v1/customers", body);
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    fn control(&self, method: &str, path: &str, json_body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.emu.base_url());
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, url);
        if let Some(body) = json_body {
            req = req.json(&body);
        }
        let resp = req.send().unwrap();
        assert!(resp.status().is_success(), "control call failed: {}", resp.status());
        resp.json().unwrap()
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().expect("data array").iter().map(|c| c["id"].as_str().unwrap().to_string()).collect()
}

fn is_request_id(s: &str) -> bool {
    s.strip_prefix("req_").is_some_and(|rest| rest.len() >= 14 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

// ---------------------------------------------------------------------------------------
// Auth and envelope

#[test]
fn missing_or_invalid_keys_get_401_with_masked_key() {
    let h = Harness::new();
    let missing = h.try_send("GET", "/v1/customers", "", None, None).unwrap();
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_type(), "invalid_request_error");

    for bad in ["sk_live_0123456789abcdefghij", "pk_test_0123456789abcdefghij", "sk_test_"] {
        let r = h.try_send("GET", "/v1/customers", "", Some(&format!("Bearer {bad}")), None).unwrap();
        assert_eq!(r.status, 401, "{bad}");
        assert!(is_request_id(r.header("request-id").unwrap()));
        let text = r.body.to_string();
        if bad.len() > 8 {
            assert!(!text.contains(bad), "key echoed in full: {text}");
        }
    }
    let r = h.try_send("GET", "/v1/customers", "", Some("Bearer sk_live_0123456789abcdefghij"), None).unwrap();
    assert_eq!(r.body["error"]["message"], "Invalid API Key provided: sk_live_****ghij");

    // Basic auth with the key as user name, and restricted test keys.
    let basic = h
        .try_send("GET", "/v1/customers", "", Some("Basic c2tfdGVzdF9hYmM6"), None) // sk_test_abc:
        .unwrap();
    assert_eq!(basic.status, 200);
    let restricted = h.try_send("GET", "/v1/customers", "", Some("Bearer rk_test_abc"), None).unwrap();
    assert_eq!(restricted.status, 200);
}

#[test]
fn configured_api_key_is_the_only_one_accepted() {
    let h = Harness::with(EmulatorConfig { api_key: Some(KEY.to_string()), ..EmulatorConfig::default() });
    assert_eq!(h.get("/v1/customers", "").status, 200);
    let other = "sk_test_someoneElsesKey0123456789";
    let r = h.try_send("GET", "/v1/customers", "", Some(&format!("Bearer {other}")), None).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["message"], "Invalid API Key provided: sk_test_****6789");
    assert!(!format!("{:?}", EmulatorConfig { api_key: Some(KEY.into()), ..Default::default() }).contains(KEY));
}

#[test]
fn every_response_has_a_request_id_and_echoes_the_idempotency_key() {
    let h = Harness::new();
    let responses = [
        h.get("/v1/customers", ""),
        h.get("/v1/nope", ""),
        h.post_idem("/v1/customers", "email=a%40b.co", "echo-me"),
        h.try_send("GET", "/v1/customers", "", None, None).unwrap(),
    ];
    let mut seen = HashSet::new();
    for r in &responses {
        let id = r.header("request-id").expect("Request-Id");
        assert!(is_request_id(id), "{id}");
        assert!(seen.insert(id.to_string()), "request ids are unique");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(responses[2].header("idempotency-key"), Some("echo-me"));
}

#[test]
fn unknown_routes_are_404_invalid_request_error() {
    let h = Harness::new();
    let r = h.get("/v1/x", "");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_type(), "invalid_request_error");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Unrecognized request URL (GET: /v1/x)"), "{message}");
    let r = h.send("PUT", "/v1/customers", "", None);
    assert_eq!(r.status, 404);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("(PUT: /v1/customers)"));
}

// ---------------------------------------------------------------------------------------
// Customers

#[test]
fn customer_create_retrieve_update_delete() {
    let h = Harness::new();
    // Raw brackets here; percent-encoded ones below.
    let c = h.create_customer(
        "email=ann%40example.com&name=Ann+Lee&description=d&phone=%2B15550100\
         &metadata[user_id]=42&metadata[plan]=pro",
    );
    let id = c["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("cus_") && id.len() >= 18, "{id}");
    assert_eq!(c["object"], "customer");
    assert_eq!(c["email"], "ann@example.com");
    assert_eq!(c["name"], "Ann Lee");
    assert_eq!(c["phone"], "+15550100");
    assert_eq!(c["livemode"], false);
    assert_eq!(c["metadata"], json!({"user_id": "42", "plan": "pro"}));
    let created = c["created"].as_i64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - created).abs() <= 5);

    assert_eq!(h.get(&format!("/v1/customers/{id}"), "").body, c);

    // Metadata merges; "" removes a key; other fields stay.
    let u = h.post(&format!("/v1/customers/{id}"), "metadata%5Bplan%5D=&metadata%5Bteam%5D=blue&name=Ann+B");
    assert_eq!(u.status, 200, "{:?}", u.body);
    assert_eq!(u.body["metadata"], json!({"user_id": "42", "team": "blue"}));
    assert_eq!(u.body["name"], "Ann B");
    assert_eq!(u.body["email"], "ann@example.com");
    assert_eq!(h.emu.customers(), vec![u.body.clone()]);

    let d = h.delete(&format!("/v1/customers/{id}"));
    assert_eq!(d.status, 200);
    assert_eq!(d.body, json!({"id": id, "object": "customer", "deleted": true}));
    let g = h.get(&format!("/v1/customers/{id}"), "");
    assert_eq!(g.status, 200);
    assert_eq!(g.body, json!({"id": id, "object": "customer", "deleted": true}));
    assert!(h.emu.customers().is_empty());

    // A deleted customer can be neither updated nor deleted again.
    assert_eq!(h.post(&format!("/v1/customers/{id}"), "name=x").status, 404);
    assert_eq!(h.delete(&format!("/v1/customers/{id}")).status, 404);
}

#[test]
fn unknown_customer_is_resource_missing() {
    let h = Harness::new();
    let r = h.get("/v1/customers/cus_x", "");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body["error"],
        json!({
            "type": "invalid_request_error",
            "code": "resource_missing",
            "param": "id",
            "message": "No such customer: 'cus_x'",
            "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
        })
    );
}

#[test]
fn customer_parameter_validation() {
    let h = Harness::new();
    let r = h.post("/v1/customers", "emial=a%40b.co");
    assert_eq!((r.status, r.error_code(), r.error_param()), (400, "parameter_unknown", "emial"));
    let r = h.post("/v1/customers", "email=not-an-email");
    assert_eq!((r.status, r.error_param()), (400, "email"));
    let r = h.post("/v1/customers", "email[x]=y");
    assert_eq!((r.status, r.error_param()), (400, "email"));
    let r = h.post("/v1/customers", "metadata=1&metadata[a]=b");
    assert_eq!(r.status, 400);
    // expand[] is accepted (and has nothing to expand here).
    assert_eq!(h.post("/v1/customers", "expand[0]=default_source").status, 200);
}

#[test]
fn metadata_limits() {
    let h = Harness::new();
    let fifty: String = (0..50).map(|i| format!("metadata[k{i}]=v&")).collect();
    assert_eq!(h.post("/v1/customers", &fifty).status, 200);

    let fifty_one = format!("{fifty}metadata[k50]=v");
    let long_key = format!("metadata[{}]=v", "k".repeat(41));
    let ok_key = format!("metadata[{}]=v", "k".repeat(40));
    let long_value = format!("metadata[k]={}", "v".repeat(501));
    let ok_value = format!("metadata[k]={}", "v".repeat(500));
    for bad in
        [fifty_one.as_str(), &long_key, &long_value, "metadata%5Ba%5Bb%5D=v", "metadata[a]b]=v", "metadata[a][b]=v"]
    {
        let r = h.post("/v1/customers", bad);
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert_eq!(r.error_type(), "invalid_request_error");
        assert_eq!(r.error_param(), "metadata", "{bad}");
    }
    assert_eq!(h.post("/v1/customers", &ok_key).status, 200);
    assert_eq!(h.post("/v1/customers", &ok_value).status, 200);

    // The 50-key limit applies to the merged result of an update.
    let id = h.create_customer(&fifty)["id"].as_str().unwrap().to_string();
    let r = h.post(&format!("/v1/customers/{id}"), "metadata[extra]=v");
    assert_eq!(r.status, 400);
    let r = h.post(&format!("/v1/customers/{id}"), "metadata[k0]=&metadata[extra]=v");
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A rejected update changed nothing.
    assert_eq!(r.body["metadata"].as_object().unwrap().len(), 50);
}

#[test]
fn list_is_newest_first_with_cursors_and_email_filter() {
    let h = Harness::new();
    let made: Vec<String> = (0..5)
        .map(|i| {
            let email = if i % 2 == 0 { "even%40x.co" } else { "odd%40x.co" };
            h.create_customer(&format!("email={email}"))["id"].as_str().unwrap().to_string()
        })
        .collect();
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();

    let all = h.get("/v1/customers", "").body;
    assert_eq!(all["object"], "list");
    assert_eq!(all["url"], "/v1/customers");
    assert_eq!(all["has_more"], false);
    assert_eq!(ids(&all), newest_first);

    let p1 = h.get("/v1/customers", "limit=2").body;
    assert_eq!((ids(&p1), p1["has_more"].clone()), (newest_first[0..2].to_vec(), json!(true)));
    let p2 = h.get("/v1/customers", &format!("limit=2&starting_after={}", newest_first[1])).body;
    assert_eq!((ids(&p2), p2["has_more"].clone()), (newest_first[2..4].to_vec(), json!(true)));
    let p3 = h.get("/v1/customers", &format!("limit=2&starting_after={}", newest_first[3])).body;
    assert_eq!((ids(&p3), p3["has_more"].clone()), (newest_first[4..].to_vec(), json!(false)));

    // ending_before pages back towards newer objects, still presented newest first.
    let back = h.get("/v1/customers", &format!("limit=2&ending_before={}", newest_first[4])).body;
    assert_eq!((ids(&back), back["has_more"].clone()), (newest_first[2..4].to_vec(), json!(true)));
    let back = h.get("/v1/customers", &format!("limit=2&ending_before={}", newest_first[1])).body;
    assert_eq!((ids(&back), back["has_more"].clone()), (newest_first[0..1].to_vec(), json!(false)));

    let both = h.get("/v1/customers", &format!("starting_after={}&ending_before={}", made[0], made[1]));
    assert_eq!(both.status, 400);
    assert_eq!(h.get("/v1/customers", "starting_after=cus_nope").status, 400);
    for bad in ["limit=0", "limit=101", "limit=ten"] {
        let r = h.get("/v1/customers", bad);
        assert_eq!((r.status, r.error_param()), (400, "limit"), "{bad}");
    }
    assert_eq!(h.get("/v1/customers", "limit=100").status, 200);

    let even = h.get("/v1/customers", "email=even%40x.co").body;
    assert_eq!(ids(&even), vec![made[4].clone(), made[2].clone(), made[0].clone()]);
    assert!(ids(&h.get("/v1/customers", "email=EVEN%40x.co").body).is_empty());

    // Deleted customers drop out, but still work as cursors.
    assert_eq!(h.delete(&format!("/v1/customers/{}", made[3])).status, 200);
    let all = h.get("/v1/customers", "").body;
    assert_eq!(ids(&all), vec![made[4].clone(), made[2].clone(), made[1].clone(), made[0].clone()]);
    let after_deleted = h.get("/v1/customers", &format!("starting_after={}", made[3])).body;
    assert_eq!(ids(&after_deleted), vec![made[2].clone(), made[1].clone(), made[0].clone()]);

    // created filters
    let created = all["data"][0]["created"].as_i64().unwrap();
    assert_eq!(ids(&h.get("/v1/customers", &format!("created[gt]={created}")).body).len(), 0);
    assert_eq!(ids(&h.get("/v1/customers", &format!("created[lte]={created}")).body).len(), 4);
}

#[test]
fn search_by_metadata_and_email_with_pagination() {
    let h = Harness::new();
    let a = h.create_customer("email=a%40x.co&metadata[user_id]=u1");
    let b = h.create_customer("email=b%40x.co&metadata[user_id]=u2");
    let c = h.create_customer("email=a%40x.co&metadata[user_id]=u3");

    let r = h.get("/v1/customers/search", "query=metadata%5B%27user_id%27%5D%3A%27u2%27");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "search_result");
    assert_eq!(r.body["url"], "/v1/customers/search");
    assert_eq!(r.body["has_more"], false);
    assert_eq!(r.body["next_page"], Value::Null);
    assert_eq!(r.body["data"], json!([b]));

    let q = |query: &str| {
        let encoded: String = form_encode(query);
        h.get("/v1/customers/search", &format!("query={encoded}"))
    };
    assert_eq!(ids(&q("email:'a@x.co'").body), vec![c["id"].as_str().unwrap(), a["id"].as_str().unwrap()]);
    assert_eq!(ids(&q("email:'a@x.co' AND metadata['user_id']:'u1'").body), vec![a["id"].as_str().unwrap()]);
    assert_eq!(ids(&q("email:'a@x.co' metadata['user_id']:'u3'").body), vec![c["id"].as_str().unwrap()]);
    assert!(ids(&q("metadata['user_id']:'nobody'").body).is_empty());

    // Pages: limit 1 and follow next_page.
    let mut seen = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let mut query = format!("query={}&limit=1", form_encode("email:'a@x.co' OR email:'b@x.co'"));
        if let Some(p) = &page {
            query.push_str(&format!("&page={p}"));
        }
        let r = h.get("/v1/customers/search", &query).body;
        seen.extend(ids(&r));
        match r["next_page"].as_str() {
            Some(next) => {
                assert_eq!(r["has_more"], true);
                page = Some(next.to_string());
            }
            None => break,
        }
        assert!(seen.len() <= 3, "pagination does not terminate");
    }
    let expected: Vec<String> = [&c, &b, &a].iter().map(|x| x["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen, expected);

    for bad in ["", "bogus:'x'", "email:unquoted", "email:'a' AND email:'b' OR email:'c'"] {
        let r = h.get("/v1/customers/search", &format!("query={}", form_encode(bad)));
        assert_eq!((r.status, r.error_param()), (400, "query"), "{bad}");
    }
    let r = h.get("/v1/customers/search", "");
    assert_eq!((r.status, r.error_param()), (400, "query"));
}

#[test]
fn search_lag_makes_search_eventually_consistent() {
    let lag = Duration::from_millis(1500);
    let h = Harness::with(EmulatorConfig { search_lag: lag, ..EmulatorConfig::default() });
    let search = |user: &str| {
        let query = format!("query={}", form_encode(&format!("metadata['user_id']:'{user}'")));
        ids(&h.get("/v1/customers/search", &query).body)
    };
    let created_at = Instant::now();
    let c = h.create_customer("metadata[user_id]=lagged");
    let id = c["id"].as_str().unwrap().to_string();
    // Retrieve and list are immediate; search is not.
    assert_eq!(h.get(&format!("/v1/customers/{id}"), "").status, 200);
    assert_eq!(ids(&h.get("/v1/customers", "").body), vec![id.clone()]);
    let first = search("lagged");
    // Only a machine stalled for the whole lag could see it already.
    if created_at.elapsed() < lag {
        assert!(first.is_empty(), "visible before the lag passed");
    }
    let found = wait_until(created_at + lag + WAIT, || search("lagged") == [id.clone()]);
    assert!(found, "never became searchable");
    assert!(created_at.elapsed() >= lag, "searchable after {:?}, before the lag", created_at.elapsed());

    // An update lags too: the index keeps the old version until it catches up.
    let updated_at = Instant::now();
    assert_eq!(h.post(&format!("/v1/customers/{id}"), "metadata[user_id]=moved").status, 200);
    let (old, new) = (search("lagged"), search("moved"));
    if updated_at.elapsed() < lag {
        assert_eq!((old, new), (vec![id.clone()], vec![]), "the update was indexed at once");
    }
    assert!(wait_until(updated_at + lag + WAIT, || search("moved") == [id.clone()] && search("lagged").is_empty()));
    assert!(updated_at.elapsed() >= lag);
}

/// Re-checks `condition` until it holds or `deadline` passes (a short pause between checks:
/// search answers change with time, not with requests, so there is nothing to wait on).
fn wait_until(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------------------------------------------------------------------------------------
// Accounts and account links

#[test]
fn accounts_and_account_links() {
    let h = Harness::new();
    let r = h.post(
        "/v1/accounts",
        "type=express&email=shop%40x.co&capabilities%5Bcard_payments%5D%5Brequested%5D=true\
         &capabilities[transfers][requested]=true&metadata[user_id]=9",
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    let acct = r.body;
    let id = acct["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("acct_"));
    assert_eq!(acct["object"], "account");
    assert_eq!(acct["type"], "express");
    assert_eq!(acct["email"], "shop@x.co");
    assert_eq!(acct["country"], "US");
    assert_eq!(acct["capabilities"], json!({"card_payments": "inactive", "transfers": "inactive"}));
    assert_eq!(acct["charges_enabled"], false);
    assert_eq!(acct["payouts_enabled"], false);
    assert_eq!(acct["details_submitted"], false);
    assert!(!acct["requirements"]["currently_due"].as_array().unwrap().is_empty());
    assert_eq!(acct["metadata"], json!({"user_id": "9"}));
    assert!(acct["created"].is_i64());
    assert_eq!(h.emu.accounts(), vec![acct.clone()]);

    let only_transfers = h.post("/v1/accounts", "type=custom&country=gb&capabilities[transfers][requested]=true");
    assert_eq!(only_transfers.body["capabilities"], json!({"transfers": "inactive"}));
    assert_eq!(only_transfers.body["country"], "GB");

    let r = h.post("/v1/accounts", "type=premium");
    assert_eq!((r.status, r.error_param()), (400, "type"));
    assert_eq!(r.body["error"]["message"], "Invalid type: must be one of custom, express, or standard");

    assert_eq!(h.get(&format!("/v1/accounts/{id}"), "").body, acct);
    let r = h.get("/v1/accounts/acct_nope", "");
    assert_eq!(r.status, 403);
    assert_eq!((r.error_type(), r.error_code()), ("invalid_request_error", "account_invalid"));
    assert!(!r.body.to_string().contains(KEY), "key leaked in account_invalid message");

    // Account links
    let link_params = format!(
        "account={id}&type=account_onboarding&refresh_url=https%3A%2F%2Fex.co%2Frefresh\
         &return_url=https%3A%2F%2Fex.co%2Freturn"
    );
    let r = h.post("/v1/account_links", &link_params);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "account_link");
    let created = r.body["created"].as_i64().unwrap();
    assert_eq!(r.body["expires_at"].as_i64().unwrap(), created + 300);
    let url = r.body["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("https://connect.stripe.com/setup/e/{id}/")), "{url}");

    for missing in ["account", "type", "refresh_url", "return_url"] {
        let params: String =
            link_params.split('&').filter(|p| !p.starts_with(&format!("{missing}="))).collect::<Vec<_>>().join("&");
        let r = h.post("/v1/account_links", &params);
        assert_eq!((r.status, r.error_param()), (400, missing), "without {missing}");
    }
    let r = h.post("/v1/account_links", &link_params.replace(&id, "acct_unknown0000000"));
    assert_eq!((r.status, r.error_param()), (400, "account"));

    let d = h.delete(&format!("/v1/accounts/{id}"));
    assert_eq!(d.body, json!({"id": id, "object": "account", "deleted": true}));
    assert_eq!(h.get(&format!("/v1/accounts/{id}"), "").status, 403);
    assert_eq!(h.emu.accounts().len(), 1);
}

// ---------------------------------------------------------------------------------------
// Idempotency

#[test]
fn same_key_same_params_replays_the_first_response() {
    let h = Harness::new();
    let body = "email=a%40b.co&metadata[user_id]=1";
    let first = h.post_idem("/v1/customers", body, "key-1");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    // Same parameters, spelled differently on the wire (encoded brackets, other order).
    let second = h.post_idem("/v1/customers", "metadata%5Buser_id%5D=1&email=a%40b.co", "key-1");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.header("idempotency-key"), Some("key-1"));
    assert_eq!(second.body, first.body);
    assert_ne!(second.header("request-id"), first.header("request-id"));
    assert_eq!(h.emu.customers().len(), 1);

    // Without a key, or with another key, a new customer is created.
    assert_ne!(h.post("/v1/customers", body).body["id"], first.body["id"]);
    assert_ne!(h.post_idem("/v1/customers", body, "key-2").body["id"], first.body["id"]);
    assert_eq!(h.emu.customers().len(), 3);

    // Stored error results replay too (404 from updating an unknown customer).
    let r1 = h.post_idem("/v1/customers/cus_missing", "name=x", "key-3");
    let r2 = h.post_idem("/v1/customers/cus_missing", "name=x", "key-3");
    assert_eq!((r1.status, r2.status), (404, 404));
    assert_eq!(r2.header("idempotent-replayed"), Some("true"));
}

#[test]
fn same_key_with_different_params_or_endpoint_is_an_idempotency_error() {
    let h = Harness::new();
    assert_eq!(h.post_idem("/v1/customers", "email=a%40b.co", "k").status, 200);
    let r = h.post_idem("/v1/customers", "email=other%40b.co", "k");
    assert_eq!((r.status, r.error_type()), (400, "idempotency_error"));
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("same parameters"), "{message}");
    // Stripe has no code for a reused key.
    assert_eq!(r.body["error"].get("code"), None);
    let r = h.post_idem("/v1/accounts", "email=a%40b.co", "k");
    assert_eq!((r.status, r.error_type()), (400, "idempotency_error"));
    assert_eq!(h.emu.customers().len(), 1);
    assert!(h.emu.accounts().is_empty());

    let long = "k".repeat(256);
    let r = h.post_idem("/v1/customers", "email=a%40b.co", &long);
    assert_eq!(r.status, 400);
    assert_eq!(h.post_idem("/v1/customers", "email=a%40b.co", &"k".repeat(255)).status, 200);
}

#[test]
fn concurrent_request_with_key_in_flight_gets_409() {
    let h = Harness::new();
    h.emu.set_latency(Duration::from_millis(700));
    std::thread::scope(|s| {
        let first = s.spawn(|| h.post_idem("/v1/customers", "email=a%40b.co", "busy"));
        assert!(h.emu.wait_for(WAIT, |e| e.in_flight_keys() == ["busy"]), "first request never got in flight");
        let second = h.post_idem("/v1/customers", "email=a%40b.co", "busy");
        assert_eq!(second.status, 409);
        assert_eq!(second.error_type(), "idempotency_error");
        assert_eq!(second.error_code(), "idempotency_key_in_use");
        let first = first.join().unwrap();
        assert_eq!(first.status, 200);

        // Nothing was stored for the 409; the retry replays the first request.
        h.emu.set_latency(Duration::ZERO);
        let retry = h.post_idem("/v1/customers", "email=a%40b.co", "busy");
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.body, first.body);
    });
    assert_eq!(h.emu.customers().len(), 1);
    assert!(h.emu.in_flight_keys().is_empty());
}

#[test]
fn rejected_requests_are_not_stored_under_the_key() {
    let h = Harness::new();
    // 401
    let r = h.try_send("POST", "/v1/customers", "email=a%40b.co", Some("Bearer sk_test_"), Some("k401")).unwrap();
    assert_eq!(r.status, 401);
    let r = h.post_idem("/v1/customers", "email=a%40b.co", "k401");
    assert_eq!((r.status, r.header("idempotent-replayed")), (200, None));

    // 429 from an injected rate limit
    h.emu.inject(Fault::rate_limit().on("POST", "/v1/customers"));
    let r = h.post_idem("/v1/customers", "email=b%40b.co", "k429");
    assert_eq!((r.status, r.error_code()), (429, "rate_limit"));
    let r = h.post_idem("/v1/customers", "email=b%40b.co", "k429");
    assert_eq!((r.status, r.header("idempotent-replayed")), (200, None));

    // Validation 400: the same key may then be used with corrected parameters.
    let r = h.post_idem("/v1/customers", "email=not-an-email", "k400");
    assert_eq!(r.status, 400);
    let r = h.post_idem("/v1/customers", "email=c%40b.co", "k400");
    assert_eq!((r.status, r.header("idempotent-replayed")), (200, None));

    // A status fault before execution (503) is not stored either.
    h.emu.inject(Fault::status(503).on("POST", "/v1/customers"));
    assert_eq!(h.post_idem("/v1/customers", "email=d%40b.co", "k503").status, 503);
    let r = h.post_idem("/v1/customers", "email=d%40b.co", "k503");
    assert_eq!((r.status, r.header("idempotent-replayed")), (200, None));

    assert_eq!(h.emu.customers().len(), 4);
}

#[test]
fn get_and_delete_ignore_idempotency_keys() {
    let h = Harness::new();
    let id = h.create_customer("email=a%40b.co")["id"].as_str().unwrap().to_string();
    let g1 = h.send("GET", &format!("/v1/customers/{id}"), "", Some("shared"));
    let g2 = h.send("GET", "/v1/customers", "", Some("shared"));
    assert_eq!((g1.status, g2.status), (200, 200));
    assert_eq!(g2.header("idempotent-replayed"), None);
    assert_eq!(g2.body["object"], "list");
    let d = h.send("DELETE", &format!("/v1/customers/{id}"), "", Some("shared"));
    assert_eq!(d.body["deleted"], true);
    // The key was never stored, so a POST can use it.
    let p = h.post_idem("/v1/customers", "email=a%40b.co", "shared");
    assert_eq!((p.status, p.header("idempotent-replayed")), (200, None));
}

// ---------------------------------------------------------------------------------------
// Faults

#[test]
fn status_fault_envelope_headers_and_consumption_order() {
    let h = Harness::new();
    h.emu.inject(Fault::status(503).on("POST", "/v1/customers").times(2).should_retry(true));
    h.emu.inject(Fault::status(500).on("*", "/v1/customers").should_retry(false));
    assert_eq!(h.emu.pending_faults(), 2);

    // GET skips the POST-only fault and takes the second one.
    let g = h.get("/v1/customers", "");
    assert_eq!((g.status, g.error_type()), (500, "api_error"));
    assert_eq!(g.header("stripe-should-retry"), Some("false"));

    for _ in 0..2 {
        let r = h.post_idem("/v1/customers", "email=a%40b.co", "kk");
        assert_eq!(r.status, 503);
        assert_eq!(r.error_type(), "api_error");
        assert_eq!(r.header("stripe-should-retry"), Some("true"));
        assert_eq!(r.header("idempotency-key"), Some("kk"));
        assert!(is_request_id(r.header("request-id").unwrap()));
    }
    assert_eq!(h.emu.pending_faults(), 0);
    assert!(h.emu.customers().is_empty());
    let r = h.post_idem("/v1/customers", "email=a%40b.co", "kk");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("stripe-should-retry"), None);

    // Fault fields are configurable.
    h.emu.inject(Fault::lock_timeout());
    let r = h.get("/v1/customers", "");
    assert_eq!((r.status, r.error_code()), (429, "lock_timeout"));
    h.emu.inject(Fault::status(402).error_type("card_error").code("card_declined").message("Your card was declined."));
    let r = h.get("/v1/customers", "");
    assert_eq!(
        r.body["error"],
        json!({"type": "card_error", "code": "card_declined", "message": "Your card was declined.",
               "doc_url": "https://stripe.com/docs/error-codes/card-declined"})
    );
}

#[test]
fn status_fault_after_execute_stores_the_real_result() {
    let h = Harness::new();
    h.emu.inject(Fault::status(502).on("POST", "/v1/customers").after_execute());
    let r = h.post_idem("/v1/customers", "email=a%40b.co", "after");
    assert_eq!(r.status, 502);
    let created = h.emu.customers();
    assert_eq!(created.len(), 1, "the request executed");
    let retry = h.post_idem("/v1/customers", "email=a%40b.co", "after");
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (200, Some("true")));
    assert_eq!(retry.body, created[0]);
}

#[test]
fn stored_status_fault_replays_the_same_500() {
    let h = Harness::new();
    h.emu.inject(Fault::status(500).on("POST", "/v1/customers").stored());
    let r = h.post_idem("/v1/customers", "email=a%40b.co", "five-hundred");
    assert_eq!((r.status, r.error_type()), (500, "api_error"));
    let retry = h.post_idem("/v1/customers", "email=a%40b.co", "five-hundred");
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (500, Some("true")));
    assert_eq!(retry.body, r.body);
    assert!(h.emu.customers().is_empty());
    // A new key executes for real.
    assert_eq!(h.post_idem("/v1/customers", "email=a%40b.co", "fresh").status, 200);
}

#[test]
fn post_500_after_execute_creates_stores_the_500_and_replays_it() {
    let h = Harness::new();
    h.emu.inject(Fault::status(500).on("POST", "/v1/customers").after_execute().stored());
    let r = h.post_idem("/v1/customers", "email=a%40b.co", "made-then-failed");
    assert_eq!((r.status, r.error_type()), (500, "api_error"));
    let created = h.emu.customers();
    assert_eq!(created.len(), 1, "the request executed");
    // The retry with the same key replays the 500 and creates nothing more.
    let retry = h.post_idem("/v1/customers", "email=a%40b.co", "made-then-failed");
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (500, Some("true")));
    assert_eq!(retry.body, r.body);
    assert_eq!(h.emu.customers(), created);

    // The same over the control endpoint.
    h.control(
        "POST",
        "/_emulator/faults",
        Some(json!({"kind": "status", "status": 500, "method": "POST", "path_prefix": "/v1/customers",
                    "after_execute": true, "stored": true})),
    );
    assert_eq!(h.post_idem("/v1/customers", "email=c%40d.co", "again").status, 500);
    assert_eq!(h.post_idem("/v1/customers", "email=c%40d.co", "again").header("idempotent-replayed"), Some("true"));
    assert_eq!(h.emu.customers().len(), 2);
}

#[test]
fn drop_before_execute_closes_without_response_and_creates_nothing() {
    let h = Harness::new();
    h.emu.inject(Fault::drop_before().on("POST", "/v1/customers"));
    let err = h
        .try_send("POST", "/v1/customers", "email=a%40b.co", Some(&format!("Bearer {KEY}")), Some("drop1"))
        .expect_err("no response");
    assert!(!err.is_timeout(), "{err}");
    assert!(h.emu.customers().is_empty());
    let log = h.emu.requests();
    assert_eq!(log.len(), 1, "the client did not resend: {log:?}");
    assert_eq!((log[0].status, log[0].request_id.clone()), (None, None));

    // Nothing stored: the retry executes fresh.
    let retry = h.post_idem("/v1/customers", "email=a%40b.co", "drop1");
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (200, None));
    assert_eq!(h.emu.customers().len(), 1);
}

#[test]
fn drop_after_execute_creates_and_the_retry_replays() {
    let h = Harness::new();
    h.emu.inject(Fault::drop_after().on("POST", "/v1/customers"));
    h.try_send("POST", "/v1/customers", "email=a%40b.co", Some(&format!("Bearer {KEY}")), Some("drop2"))
        .expect_err("no response");
    let created = h.emu.customers();
    assert_eq!(created.len(), 1);
    let retry = h.post_idem("/v1/customers", "email=a%40b.co", "drop2");
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (200, Some("true")));
    assert_eq!(retry.body, created[0]);
    assert_eq!(h.emu.customers().len(), 1);
    let log = h.emu.requests();
    assert_eq!(log.iter().map(|r| r.status).collect::<Vec<_>>(), vec![None, Some(200)]);
}

#[test]
fn stall_lets_the_client_time_out() {
    let h = Harness::new();
    h.emu.inject(Fault::stall(Duration::from_millis(1500)).on("POST", "/v1/customers"));
    let impatient = Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let started = Instant::now();
    let err = impatient
        .post(format!("{}/v1/customers", h.emu.base_url()))
        .bearer_auth(KEY)
        .header("Stripe-Version", PINNED_API_VERSION)
        .header("Idempotency-Key", "stalled")
        .form(&[("email", "a@b.co")])
        .send()
        .expect_err("times out");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1400));
    assert_eq!(h.emu.requests().len(), 1);
    // The client hung up during the stall, so the server drops the request: past the end
    // of the stall it still has no status and nothing was created.
    let stall_end = started + Duration::from_millis(1500) + Duration::from_millis(300);
    let finished = h.emu.wait_for(stall_end.saturating_duration_since(Instant::now()), |e| {
        e.requests()[0].status.is_some() || !e.customers().is_empty()
    });
    assert!(!finished, "the stalled request executed: {:?}", h.emu.requests());
    let r = h.post_idem("/v1/customers", "email=a%40b.co", "stalled");
    assert_eq!((r.status, r.header("idempotent-replayed")), (200, None));
}

#[test]
fn injected_latency_delays_requests() {
    let h = Harness::new();
    h.emu.set_latency(Duration::from_millis(250));
    let started = Instant::now();
    assert_eq!(h.get("/v1/customers", "").status, 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
    h.emu.reset();
    let started = Instant::now();
    assert_eq!(h.get("/v1/customers", "").status, 200);
    assert!(started.elapsed() < Duration::from_millis(250));
}

#[test]
fn configured_rate_limit_answers_429_and_is_not_stored() {
    let h = Harness::with(EmulatorConfig { rate_limit: Some(3), ..EmulatorConfig::default() });
    let started = Instant::now();
    let statuses: Vec<u16> =
        (0..5).map(|i| h.post_idem("/v1/customers", "email=a%40b.co", &format!("rl{i}")).status).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    // The window is one second; only a very slow machine would get past it.
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(&statuses[3..], &[429, 429], "{statuses:?}");
    }
    h.emu.set_rate_limit(None);
    let r = h.post_idem("/v1/customers", "email=a%40b.co", "rl4");
    assert_eq!((r.status, r.header("idempotent-replayed")), (200, None));
}

/// Requests sent back to back until one is answered 429 (at most `cap`, so a machine too slow
/// to send the limit's worth within a second fails the test rather than hanging): the statuses
/// in order, the 429 last.
fn until_rate_limited(cap: usize, mut send: impl FnMut(usize) -> Resp) -> Vec<Resp> {
    let mut answers = Vec::new();
    for i in 0..cap {
        let r = send(i);
        let refused = r.status == 429;
        answers.push(r);
        if refused {
            return answers;
        }
    }
    panic!("no 429 in {cap} requests");
}

fn assert_rate_limit_error(r: &Resp) {
    assert_eq!(
        (r.status, r.error_type(), r.error_code()),
        (429, "invalid_request_error", "rate_limit"),
        "{:?}",
        r.body
    );
}

#[test]
fn per_endpoint_limit_refuses_one_endpoint_and_not_another() {
    let h = Harness::with(EmulatorConfig { endpoint_rate_limit: Some(25), ..EmulatorConfig::default() });
    let a = h.create_customer("email=a%40b.co")["id"].as_str().unwrap().to_string();
    let b = h.create_customer("email=b%40b.co")["id"].as_str().unwrap().to_string();
    let mut gets = Vec::new();
    // A GET after every third POST: until the first POST is refused, at most 25 POSTs fall in
    // any second, so at most 10 GETs do, however slow the machine.
    let posts = until_rate_limited(500, |i| {
        if i % 3 == 0 {
            let id = if i % 2 == 0 { &a } else { &b };
            gets.push(h.get(&format!("/v1/customers/{id}"), ""));
        }
        h.post("/v1/customers", &format!("email=p{i}%40b.co"))
    });
    let refused = posts.last().unwrap();
    assert_rate_limit_error(refused);
    // The two set-up POSTs may share the window: at least 23 of the burst get through.
    assert!(posts.len() > 23 && posts[..posts.len() - 1].iter().all(|r| r.status == 200));
    // Right after the refusal, another endpoint still answers.
    gets.push(h.get(&format!("/v1/customers/{a}"), ""));
    assert!(gets.iter().all(|r| r.status == 200), "{:?}", gets.iter().map(|r| r.status).collect::<Vec<_>>());

    assert_eq!(h.emu.rate_limited(), vec![("POST /v1/customers".to_string(), RateLimitKind::Endpoint)]);
    let log = h.emu.requests();
    let refused_entry = log.iter().find(|r| r.status == Some(429)).unwrap();
    assert_eq!(refused_entry.rate_limited_by, Some(RateLimitKind::Endpoint));
    assert_eq!(refused_entry.request_id.as_deref(), refused.header("request-id"));
    let dump = h.control("GET", "/_emulator/requests", None);
    let limited: Vec<&Value> = dump.as_array().unwrap().iter().filter(|r| !r["rate_limited_by"].is_null()).collect();
    assert_eq!(limited.len(), 1);
    assert_eq!((&limited[0]["status"], &limited[0]["rate_limited_by"]), (&json!(429), &json!("endpoint")));
}

#[test]
fn object_ids_do_not_make_new_endpoints() {
    let h = Harness::with(EmulatorConfig { endpoint_rate_limit: Some(25), ..EmulatorConfig::default() });
    // Unknown ids answer 404 resource_missing, and count under the endpoint all the same.
    let answers = until_rate_limited(500, |i| h.get(&format!("/v1/customers/cus_{i}"), ""));
    assert_rate_limit_error(answers.last().unwrap());
    assert!(answers.len() > 25 && answers[..answers.len() - 1].iter().all(|r| r.status == 404));
    assert_eq!(h.emu.rate_limited(), vec![("GET /v1/customers/{id}".to_string(), RateLimitKind::Endpoint)]);
}

#[test]
fn search_is_refused_above_its_own_limit() {
    let h = Harness::new();
    h.emu.enforce_stripe_live_limits();
    let answers = until_rate_limited(500, |_| h.get("/v1/customers/search", "query=email%3A%22a%40b.co%22"));
    assert_rate_limit_error(answers.last().unwrap());
    // 20, not the per-endpoint 25: the 21st search within a second is the first refused.
    assert!(answers.len() > 20 && answers[..answers.len() - 1].iter().all(|r| r.status == 200));
    assert_eq!(h.get("/v1/customers", "").status, 200);
    assert_eq!(h.emu.rate_limited(), vec![("GET /v1/customers/search".to_string(), RateLimitKind::Search)]);
}

#[test]
fn unknown_routes_count_only_globally() {
    let h = Harness::with(EmulatorConfig {
        rate_limit: Some(10),
        endpoint_rate_limit: Some(1),
        search_rate_limit: Some(1),
        ..EmulatorConfig::default()
    });
    // One path each time: were unknown routes counted by path, the second would be refused.
    let answers = until_rate_limited(500, |_| h.get("/v1/nothing_here", ""));
    assert!(answers.len() > 10 && answers[..answers.len() - 1].iter().all(|r| r.status == 404));
    assert_rate_limit_error(answers.last().unwrap());
    assert_eq!(h.emu.rate_limited(), vec![("GET /v1/nothing_here".to_string(), RateLimitKind::Global)]);
}

#[test]
fn default_config_enforces_no_rate_limit() {
    let h = Harness::new();
    let id = h.create_customer("email=a%40b.co")["id"].as_str().unwrap().to_string();
    for i in 0..60 {
        assert_eq!(h.post("/v1/customers", &format!("email=d{i}%40b.co")).status, 200);
        assert_eq!(h.get(&format!("/v1/customers/{id}"), "").status, 200);
        assert_eq!(h.get("/v1/customers/search", "query=email%3A%22a%40b.co%22").status, 200);
    }
    assert!(h.emu.rate_limited().is_empty());
    assert!(h.emu.requests().iter().all(|r| r.rate_limited_by.is_none()));
}

#[test]
fn control_routes_never_count_against_rate_limits() {
    let h = Harness::new();
    h.emu.enforce_stripe_sandbox_limits();
    h.emu.set_rate_limit(Some(2));
    for _ in 0..30 {
        h.control("GET", "/_emulator/requests", None);
        h.control("GET", "/_emulator/customers", None);
    }
    // Whatever the timing, the first two /v1 requests fit in an empty window.
    assert_eq!(h.post("/v1/customers", "email=a%40b.co").status, 200);
    assert_eq!(h.get("/v1/customers", "").status, 200);
    // And the controls still answer while /v1 requests are refused.
    let answers = until_rate_limited(500, |_| h.get("/v1/customers", ""));
    assert_rate_limit_error(answers.last().unwrap());
    assert_eq!(h.control("GET", "/_emulator/customers", None).as_array().unwrap().len(), 1);
}

#[test]
fn expired_idempotency_keys_execute_again() {
    let h = Harness::new();
    let first = h.post_idem("/v1/customers", "email=a%40b.co", "old-key");
    h.emu.expire_idempotency_keys();
    let again = h.post_idem("/v1/customers", "email=a%40b.co", "old-key");
    assert_eq!((again.status, again.header("idempotent-replayed")), (200, None));
    assert_ne!(again.body["id"], first.body["id"]);
    assert_eq!(h.emu.customers().len(), 2);
}

// ---------------------------------------------------------------------------------------
// Request log and controls

#[test]
fn request_log_records_everything_but_the_key() {
    let h = Harness::new();
    h.post_idem("/v1/customers", "email=a%40b.co&metadata%5Buser_id%5D=7&expand[0]=x&expand[1]=y", "log-key");
    let replay =
        h.post_idem("/v1/customers", "email=a%40b.co&metadata%5Buser_id%5D=7&expand[0]=x&expand[1]=y", "log-key");
    h.get("/v1/customers", "limit=3&email=a%40b.co");
    h.emu.inject(Fault::drop_before());
    let _ = h.try_send("DELETE", "/v1/customers/cus_1", "", Some(&format!("Bearer {KEY}")), None);
    h.try_send("GET", "/v1/customers", "", Some("Bearer sk_live_wrongwrongwrong"), None).unwrap();

    let log: Vec<RecordedRequest> = h.emu.requests();
    assert_eq!(log.len(), 5);
    assert_eq!((log[0].method.as_str(), log[0].path.as_str()), ("POST", "/v1/customers"));
    assert_eq!(log[0].params, json!({"email": "a@b.co", "metadata": {"user_id": "7"}, "expand": ["x", "y"]}));
    assert_eq!(log[0].idempotency_key.as_deref(), Some("log-key"));
    assert_eq!((log[0].status, log[0].replayed), (Some(200), false));
    assert_eq!((log[1].status, log[1].replayed), (Some(200), true));
    assert_eq!(log[1].request_id.as_deref(), replay.header("request-id"));
    assert_eq!(log[2].params, json!({"limit": "3", "email": "a@b.co"}));
    assert_eq!((log[3].method.as_str(), log[3].status), ("DELETE", None));
    assert_eq!(log[4].status, Some(401));
    assert!(log.windows(2).all(|w| w[0].arrived_at <= w[1].arrived_at));

    let dump = format!("{log:?}") + &h.control("GET", "/_emulator/requests", None).to_string();
    assert!(!dump.contains(KEY) && !dump.contains("wrongwrong"), "key in log: {dump}");
    assert!(!dump.to_lowercase().contains("authorization"));

    h.emu.clear_requests();
    assert!(h.emu.requests().is_empty());
    assert_eq!(h.emu.customers().len(), 1);
    h.emu.reset();
    assert!(h.emu.customers().is_empty());
    // The idempotency store was reset too.
    let r = h.post_idem("/v1/customers", "email=z%40b.co", "log-key");
    assert_eq!((r.status, r.header("idempotent-replayed")), (200, None));
}

#[test]
fn http_control_endpoints() {
    let h = Harness::new();
    let pending = h.control(
        "POST",
        "/_emulator/faults",
        Some(json!({"kind": "status", "status": 503, "method": "POST",
                    "path_prefix": "/v1/customers", "should_retry": true})),
    );
    assert_eq!(pending["pending"], 1);
    let r = h.post("/v1/customers", "email=a%40b.co");
    assert_eq!((r.status, r.header("stripe-should-retry")), (503, Some("true")));
    h.create_customer("email=a%40b.co");

    let customers = h.control("GET", "/_emulator/customers", None);
    assert_eq!(customers.as_array().unwrap().len(), 1);
    let log = h.control("GET", "/_emulator/requests", None);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["status"], 503);
    assert_eq!(log[1]["params"], json!({"email": "a@b.co"}));
    assert!(log[1]["arrived_at_ms"].as_u64().unwrap() > 0);

    h.control("POST", "/_emulator/latency", Some(json!({"ms": 200})));
    let started = Instant::now();
    h.get("/v1/customers", "");
    assert!(started.elapsed() >= Duration::from_millis(200));

    h.control("POST", "/_emulator/reset", None);
    assert!(h.control("GET", "/_emulator/customers", None).as_array().unwrap().is_empty());
    assert!(h.control("GET", "/_emulator/requests", None).as_array().unwrap().is_empty());
    let started = Instant::now();
    h.get("/v1/customers", "");
    assert!(started.elapsed() < Duration::from_millis(200), "reset clears latency");

    // Bad fault specs are rejected, and nothing under /_emulator/ is logged as a /v1 request.
    let bad =
        h.http.post(format!("{}/_emulator/faults", h.emu.base_url())).json(&json!({"kind": "explode"})).send().unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(h.emu.requests().len(), 1);
    assert!(matches!(Fault::drop_after().action, FaultAction::DropAfterExecute));
}

#[test]
fn binary_serves_and_exits_on_sigterm() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let dir = std::env::temp_dir().join(format!("stripe-emulator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port_file = dir.join("port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stripe-emulator"))
        .args(["--listen", "127.0.0.1:0", "--api-key", KEY, "--port-file"])
        .arg(&port_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
    assert_eq!(line.trim(), format!("stripe-emulator listening on http://127.0.0.1:{port}"));

    let http = Client::new();
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/customers"))
        .bearer_auth(KEY)
        .header("Stripe-Version", PINNED_API_VERSION)
        .header("Idempotency-Key", "bin-key")
        .form(&[("email", "a@b.co")])
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["request-id"].to_str().unwrap().to_string();
    let r = http
        .get(format!("http://127.0.0.1:{port}/v1/customers"))
        .bearer_auth("sk_test_notTheConfiguredKey123")
        .header("Stripe-Version", PINNED_API_VERSION)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("POST /v1/customers -> 200"), "{stderr}");
    assert!(stderr.contains(&request_id) && stderr.contains("bin-key"), "{stderr}");
    assert!(!stderr.contains(KEY) && !stderr.contains("notTheConfiguredKey"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn random_faults_hit_about_the_set_share_of_matching_requests_only() {
    let h = Harness::new();
    h.emu.set_random_faults(0.5, vec![Fault::status(503).on("POST", "/v1/customers")]);
    let statuses: Vec<u16> =
        (0..200).map(|i| h.post("/v1/customers", &format!("email=r{i}%40example.com")).status).collect();
    let failed = statuses.iter().filter(|s| **s == 503).count();
    assert!((60..=140).contains(&failed), "{failed} of 200 failed at probability 0.5");
    assert!(statuses.iter().all(|s| *s == 503 || *s == 200));
    // Other paths are untouched; turning it off stops it.
    assert!((0..20).all(|_| h.get("/v1/customers", "").status == 200));
    h.emu.set_random_faults(0.0, vec![]);
    assert!((0..20).all(|i| h.post("/v1/customers", &format!("email=s{i}%40example.com")).status == 200));
}

#[test]
fn counts_the_most_requests_in_flight_at_once() {
    let h = Harness::new();
    h.emu.set_latency(Duration::from_millis(300));
    std::thread::scope(|s| {
        for i in 0..5 {
            let h = &h;
            s.spawn(move || h.post("/v1/customers", &format!("email=f{i}%40example.com")));
        }
    });
    assert_eq!(h.emu.max_in_flight(), 5);
    h.emu.reset_max_in_flight();
    h.emu.set_latency(Duration::ZERO);
    h.post("/v1/customers", "email=one%40example.com");
    assert_eq!(h.emu.max_in_flight(), 1);
}

// ---------------------------------------------------------------------------------------
// Strictness: Stripe's parameter lists, API version, error codes

#[test]
fn unknown_parameters_are_refused_with_their_full_bracketed_path() {
    let h = Harness::new();
    let cases = [
        ("POST", "/v1/customers", "emial=a%40b.co", "emial"),
        ("POST", "/v1/customers", "address[line1]=x&address[foo]=y", "address[foo]"),
        ("POST", "/v1/customers", "shipping[name]=A&shipping[address][planet]=Mars", "shipping[address][planet]"),
        (
            "POST",
            "/v1/customers",
            "tax_id_data[0][type]=eu_vat&tax_id_data[0][value]=1&tax_id_data[0][x]=2",
            "tax_id_data[0][x]",
        ),
        (
            "POST",
            "/v1/accounts",
            "controller[fees][payer]=application&controller[fees][foo]=x",
            "controller[fees][foo]",
        ),
        ("POST", "/v1/accounts", "capabilities[card_payments][wanted]=true", "capabilities[card_payments][wanted]"),
        ("POST", "/v1/accounts", "capabilities[teleportation][requested]=true", "capabilities[teleportation]"),
        (
            "POST",
            "/v1/accounts",
            "business_profile[url]=https%3A%2F%2Fx.co&business_profile[motto]=m",
            "business_profile[motto]",
        ),
        ("POST", "/v1/accounts", "settings[payouts][schedule][when]=now", "settings[payouts][schedule][when]"),
        // Removed from customers in an earlier version; the old emulator accepted them.
        ("POST", "/v1/customers", "coupon=SAVE", "coupon"),
        ("GET", "/v1/customers", "emails=a%40b.co", "emails"),
        ("GET", "/v1/customers", "created[after]=1", "created[after]"),
        ("GET", "/v1/customers/search", "query=email%3A%27a%27&sort=asc", "sort"),
        ("GET", "/v1/accounts", "email=a%40b.co", "email"),
        ("DELETE", "/v1/customers/cus_x", "force=true", "force"),
        ("POST", "/v1/account_links", "account=acct_x&type=account_onboarding&locale=fr", "locale"),
    ];
    for (method, path, body, param) in cases {
        let r = h.send(method, path, body, None);
        assert_eq!(
            (r.status, r.error_type(), r.error_code()),
            (400, "invalid_request_error", "parameter_unknown"),
            "{body}"
        );
        assert_eq!(r.error_param(), param, "{body}");
        assert_eq!(r.body["error"]["message"], format!("Received unknown parameter: {param}"));
    }
    assert!(h.emu.customers().is_empty() && h.emu.accounts().is_empty());
}

#[test]
fn values_are_checked_against_their_shape_and_enum() {
    let h = Harness::new();
    let r = h.post("/v1/customers", "tax_exempt=sometimes");
    assert_eq!((r.status, r.error_param()), (400, "tax_exempt"));
    assert_eq!(r.body["error"]["message"], "Invalid tax_exempt: must be one of exempt, none, or reverse");
    let r = h.post("/v1/customers", "address=somewhere");
    assert_eq!(
        (r.status, r.error_param(), r.body["error"]["message"].as_str()),
        (400, "address", Some("Invalid hash"))
    );
    let r = h.post("/v1/accounts", "capabilities[transfers][requested]=please");
    assert_eq!((r.status, r.error_param()), (400, "capabilities[transfers][requested]"));
    let r = h.get("/v1/customers", "limit=ten");
    assert_eq!((r.status, r.error_code(), r.error_param()), (400, "parameter_invalid_integer", "limit"));
    // "" unsets what may be unset, and nothing else.
    assert_eq!(h.post("/v1/customers", "metadata=&address=&tax_exempt=").status, 200);
    let r = h.post("/v1/accounts", "controller=");
    assert_eq!((r.status, r.error_code(), r.error_param()), (400, "parameter_invalid_empty", "controller"));
}

/// Exactly what `onboarding_core::stripe::StripeClient` sends, endpoint by endpoint.
#[test]
fn every_parameter_the_client_sends_is_accepted() {
    let h = Harness::new();
    let customer = h.post_idem("/v1/customers", "email=ada%40example.com&metadata%5Buser_id%5D=u-1", "c1");
    assert_eq!(customer.status, 200, "{:?}", customer.body);
    let id = customer.body["id"].as_str().unwrap().to_string();
    let update = h.post_idem(&format!("/v1/customers/{id}"), "email=ada2%40example.com", "c2");
    assert_eq!(update.status, 200, "{:?}", update.body);
    let r = h.get("/v1/customers", "email=ada2%40example.com&limit=100");
    assert_eq!(ids(&r.body), vec![id.clone()]);
    let query = form_encode("metadata['user_id']:'u-1'");
    assert_eq!(h.get("/v1/customers/search", &format!("query={query}&limit=100")).status, 200);
    let r = h.get("/v1/customers", &format!("limit=100&starting_after={id}&created%5Bgte%5D=0"));
    assert_eq!(r.status, 200, "{:?}", r.body);

    let account = h.post_idem(
        "/v1/accounts",
        "controller%5Bstripe_dashboard%5D%5Btype%5D=express&controller%5Bfees%5D%5Bpayer%5D=application\
         &controller%5Blosses%5D%5Bpayments%5D=application&controller%5Brequirement_collection%5D=stripe\
         &email=ada%40example.com&capabilities%5Bcard_payments%5D%5Brequested%5D=true\
         &capabilities%5Btransfers%5D%5Brequested%5D=true&metadata%5Buser_id%5D=u-1",
        "a1",
    );
    assert_eq!(account.status, 200, "{:?}", account.body);
    let account_id = account.body["id"].as_str().unwrap().to_string();
    let r = h.get("/v1/accounts", &format!("limit=100&starting_after={account_id}"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let link = h.post(
        "/v1/account_links",
        &format!(
            "account={account_id}&type=account_onboarding&refresh_url=https%3A%2F%2Fx.co%2Fr\
             &return_url=https%3A%2F%2Fx.co%2Fb"
        ),
    );
    assert_eq!(link.status, 200, "{:?}", link.body);
    assert_eq!(h.delete(&format!("/v1/accounts/{account_id}")).status, 200);
    assert_eq!(h.delete(&format!("/v1/customers/{id}")).status, 200);
    assert!(h.emu.requests().iter().all(|r| r.status == Some(200)), "{:?}", h.emu.requests());
}

#[test]
fn create_and_update_take_different_parameters() {
    let h = Harness::new();
    // Customers: tax IDs and test clocks only at creation, a default source only on update.
    let c = h.create_customer("email=a%40b.co&tax_id_data[0][type]=eu_vat&tax_id_data[0][value]=DE123456789");
    let id = c["id"].as_str().unwrap().to_string();
    let r = h.post(&format!("/v1/customers/{id}"), "tax_id_data[0][type]=eu_vat&tax_id_data[0][value]=DE1");
    assert_eq!((r.status, r.error_code(), r.error_param()), (400, "parameter_unknown", "tax_id_data"));
    let r = h.post("/v1/customers", "default_source=src_1");
    assert_eq!((r.status, r.error_code(), r.error_param()), (400, "parameter_unknown", "default_source"));
    assert_eq!(h.post(&format!("/v1/customers/{id}"), "default_source=src_1").status, 200);

    // Accounts: type, country and controller are fixed at creation.
    let a = h.post("/v1/accounts", "type=express&country=US&capabilities[transfers][requested]=true");
    assert_eq!(a.status, 200, "{:?}", a.body);
    let account = format!("/v1/accounts/{}", a.body["id"].as_str().unwrap());
    for param in ["type=custom", "country=GB", "controller[fees][payer]=application"] {
        let r = h.post(&account, param);
        assert_eq!((r.status, r.error_code()), (400, "parameter_unknown"), "{param}");
        assert_eq!(r.error_param(), param.split('=').next().unwrap().split('[').next().unwrap(), "{param}");
    }
    assert_eq!(h.post(&account, "email=new%40b.co&metadata[k]=v").status, 200);
}

#[test]
fn stripe_version_is_required_echoed_and_only_the_pinned_one_served() {
    let h = Harness::new();
    let auth = format!("Bearer {KEY}");
    let missing = h.try_send_as("POST", "/v1/customers", "email=a%40b.co", Some(&auth), Some("nover"), None).unwrap();
    assert_eq!((missing.status, missing.error_type()), (400, "invalid_request_error"));
    let message = missing.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("requires a pinned API version") && message.contains(PINNED_API_VERSION), "{message}");
    assert_eq!(missing.header("stripe-version"), None);

    let old = h.try_send_as("GET", "/v1/customers", "", Some(&auth), None, Some("2020-08-27")).unwrap();
    assert_eq!((old.status, old.error_type()), (400, "invalid_request_error"));
    let message = old.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Invalid Stripe API version: 2020-08-27"), "{message}");
    assert_eq!(old.header("stripe-version"), None);
    assert!(h.emu.customers().is_empty());

    // Rejected before execution: the key was not stored.
    let ok = h.post_idem("/v1/customers", "email=a%40b.co", "nover");
    assert_eq!((ok.status, ok.header("idempotent-replayed")), (200, None));
    assert_eq!(ok.header("stripe-version"), Some(PINNED_API_VERSION));
    // Errors in the pinned version carry it too.
    assert_eq!(h.get("/v1/customers/cus_nope", "").header("stripe-version"), Some(PINNED_API_VERSION));
    let log = h.emu.requests();
    assert_eq!(log[0].stripe_version, None);
    assert_eq!(log[1].stripe_version.as_deref(), Some("2020-08-27"));
    assert_eq!(log[2].stripe_version.as_deref(), Some(PINNED_API_VERSION));

    // The test controls need no version.
    assert_eq!(h.control("GET", "/_emulator/customers", None).as_array().unwrap().len(), 1);
}

#[test]
fn an_unpinned_request_is_answered_in_the_pinned_version_when_allowed() {
    // For releases older than the pin (the upgrade suite runs one): as Stripe answers in the
    // account's default version.
    let h = Harness::with(EmulatorConfig { accept_unpinned: true, ..Default::default() });
    let auth = format!("Bearer {KEY}");
    let unpinned = h.try_send_as("POST", "/v1/customers", "email=a%40b.co", Some(&auth), None, None).unwrap();
    assert_eq!(unpinned.status, 200, "{:?}", unpinned.body);
    let other = h.try_send_as("GET", "/v1/customers", "", Some(&auth), None, Some("2020-08-27")).unwrap();
    assert_eq!(other.status, 400, "another version is still refused");
}

#[test]
fn accounts_by_controller_properties() {
    let h = Harness::new();
    let express = "controller[stripe_dashboard][type]=express&controller[fees][payer]=application\
                   &controller[losses][payments]=application&controller[requirement_collection]=stripe\
                   &capabilities[transfers][requested]=true&email=s%40x.co";
    let r = h.post("/v1/accounts", express);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["controller"],
        json!({"fees": {"payer": "application"}, "is_controller": true, "losses": {"payments": "application"},
               "requirement_collection": "stripe", "stripe_dashboard": {"type": "express"}, "type": "application"})
    );
    assert_eq!(r.body["type"], "none");
    assert_eq!(r.body["capabilities"], json!({"transfers": "inactive"}));

    // Left out, each property takes Stripe's default.
    let r = h.post("/v1/accounts", "email=plain%40x.co");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["controller"]["fees"]["payer"], "account");
    assert_eq!(r.body["controller"]["losses"]["payments"], "stripe");
    assert_eq!(r.body["controller"]["requirement_collection"], "stripe");
    assert_eq!(r.body["controller"]["stripe_dashboard"]["type"], "full");

    let refused = [
        ("controller[stripe_dashboard][type]=basic", "controller[stripe_dashboard][type]", ""),
        ("controller[requirement_collection]=platform", "controller[requirement_collection]", ""),
        ("controller[losses][payments]=application", "controller[fees][payer]", ""),
        (
            "controller[stripe_dashboard][type]=express&controller[fees][payer]=account",
            "controller[losses][payments]",
            "",
        ),
        (
            "controller[stripe_dashboard][type]=none&controller[requirement_collection]=application\
          &controller[fees][payer]=application&controller[losses][payments]=application",
            "capabilities",
            "parameter_missing",
        ),
        ("type=express&controller[fees][payer]=application", "controller", "parameters_exclusive"),
    ];
    for (body, param, code) in refused {
        let r = h.post("/v1/accounts", body);
        assert_eq!(
            (r.status, r.error_type(), r.error_param()),
            (400, "invalid_request_error", param),
            "{body}: {:?}",
            r.body
        );
        assert_eq!(r.error_code(), code, "{body}");
    }
    assert_eq!(h.emu.accounts().len(), 2);
}

#[test]
fn the_deprecated_type_is_still_accepted_in_the_pinned_version() {
    let h = Harness::new();
    let r = h.post("/v1/accounts", "type=express&capabilities[card_payments][requested]=true");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["type"], "express");
    let controller = &r.body["controller"];
    assert_eq!(controller["stripe_dashboard"]["type"], "express");
    assert_eq!(controller["fees"]["payer"], "application_express");
    assert_eq!(controller["losses"]["payments"], "application");
    assert_eq!(controller["requirement_collection"], "stripe");
    let custom = h.post("/v1/accounts", "type=custom&capabilities[transfers][requested]=true");
    assert_eq!(custom.body["controller"]["requirement_collection"], "application");
    assert_eq!(custom.body["controller"]["fees"]["payer"], "application_custom");
    // Custom accounts have no Dashboard, so they must name their capabilities.
    let r = h.post("/v1/accounts", "type=custom");
    assert_eq!((r.status, r.error_code(), r.error_param()), (400, "parameter_missing", "capabilities"));
    assert_eq!(h.post("/v1/accounts", "type=standard").body["controller"]["stripe_dashboard"]["type"], "full");
}

#[test]
fn error_codes_are_stripes() {
    let h = Harness::new();
    let bad_key = h.try_send("GET", "/v1/customers", "", Some("Bearer sk_test_"), None).unwrap();
    assert_eq!((bad_key.status, bad_key.body["error"].get("code")), (401, None));
    let mut emitted = vec![
        h.post("/v1/customers", "nope=1").error_code().to_string(),
        h.post("/v1/customers", "email=bad").error_code().to_string(),
        h.get("/v1/customers/cus_x", "").error_code().to_string(),
        h.get("/v1/accounts/acct_x", "").error_code().to_string(),
        h.get("/v1/customers/search", "").error_code().to_string(),
        h.post("/v1/accounts", "type=express&controller[fees][payer]=account").error_code().to_string(),
    ];
    h.emu.set_latency(Duration::from_millis(500));
    std::thread::scope(|s| {
        let first = s.spawn(|| h.post_idem("/v1/customers", "email=a%40b.co", "busy"));
        assert!(h.emu.wait_for(WAIT, |e| e.in_flight_keys() == ["busy"]));
        let second = h.post_idem("/v1/customers", "email=a%40b.co", "busy");
        assert_eq!(second.status, 409);
        emitted.push(second.error_code().to_string());
        assert_eq!(first.join().unwrap().status, 200);
    });
    assert_eq!(
        emitted,
        [
            "parameter_unknown",
            "email_invalid",
            "resource_missing",
            "account_invalid",
            "parameter_missing",
            "parameters_exclusive",
            "idempotency_key_in_use"
        ]
    );
    for code in emitted.iter().chain(&["rate_limit".to_string(), "lock_timeout".to_string(), "url_invalid".to_string()])
    {
        assert!(stripe_emulator::is_stripe_error_code(code), "{code}");
    }
    assert!(!stripe_emulator::is_stripe_error_code("idempotency_key_reused"));
    assert!(!stripe_emulator::is_stripe_error_code("api_key_invalid"));
}

// ---------------------------------------------------------------------------------------
// Restricted keys

const RESTRICTED: &str = "rk_test_51RestrictedKey0123456789abcd";

fn as_restricted(h: &Harness, method: &str, path: &str, body: &str, idempotency_key: Option<&str>) -> Resp {
    h.try_send(method, path, body, Some(&format!("Bearer {RESTRICTED}")), idempotency_key).unwrap()
}

#[test]
fn restricted_keys_get_stripes_403_for_what_their_permissions_do_not_cover() {
    // Started for one secret key: a restricted key given permissions is the account's too.
    let h = Harness::with(EmulatorConfig { api_key: Some(KEY.into()), ..Default::default() });
    // Unconfigured: refused like any other key that is not the configured one.
    assert_eq!(as_restricted(&h, "GET", "/v1/customers", "", None).status, 401);

    h.control(
        "POST",
        "/_emulator/restricted_keys",
        Some(json!({"key": RESTRICTED, "permissions": ["rak_customer_write", "rak_connected_account_read"]})),
    );
    // Write implies read.
    assert_eq!(as_restricted(&h, "GET", "/v1/customers", "", None).status, 200);
    assert_eq!(as_restricted(&h, "POST", "/v1/customers", "email=a%40b.co", None).status, 200);
    assert_eq!(as_restricted(&h, "GET", "/v1/accounts", "", None).status, 200);

    let refused = as_restricted(&h, "POST", "/v1/accounts", "country=US", Some("refused-1"));
    assert_eq!((refused.status, refused.error_type(), refused.error_code()), (403, "invalid_request_error", ""));
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!(
            "The provided key 'rk_test_****abcd' does not have the required permissions for this endpoint on \
             account '{}'. Having the 'rak_connected_account_write' permission would allow this request to \
             continue.",
            stripe_emulator::PLATFORM_ACCOUNT
        )
    );
    assert!(!refused.body.to_string().contains(RESTRICTED));
    let link = as_restricted(&h, "POST", "/v1/account_links", "account=acct_x&type=account_onboarding", None);
    assert!(link.body["error"]["message"].as_str().unwrap().contains("'rak_account_link_write'"), "{link:?}");
    // Nothing executed, and the refusal was not stored under the key.
    assert!(h.emu.accounts().is_empty());
    assert_eq!(h.post_idem("/v1/accounts", "country=US", "refused-1").header("idempotent-replayed"), None);

    // The probes the client's permission check sends: allowed, each is a 4xx that is not a refusal.
    let probe = as_restricted(&h, "POST", "/v1/customers/cus_onboarding_permission_check", "", None);
    assert_eq!((probe.status, probe.error_code()), (404, "resource_missing"));

    // Permission sets survive a reset; the Rust API replaces them; DELETE forgets them all.
    h.emu.reset();
    assert_eq!(as_restricted(&h, "POST", "/v1/accounts", "country=US", None).status, 403);
    h.emu.set_restricted_key(RESTRICTED, [stripe_emulator::Permission::ConnectedAccountWrite]).unwrap();
    assert_eq!(as_restricted(&h, "POST", "/v1/accounts", "country=US", None).status, 200);
    assert_eq!(as_restricted(&h, "GET", "/v1/customers", "", None).status, 403);
    h.control("DELETE", "/_emulator/restricted_keys", None);
    assert_eq!(as_restricted(&h, "GET", "/v1/customers", "", None).status, 401);
    assert!(h.emu.set_restricted_key(KEY, []).is_err(), "a secret key has no permission set");

    // Bad specs: unknown permission names, secret keys; the key is never echoed.
    let bad = |body: Value| {
        let r = h.http.post(format!("{}/_emulator/restricted_keys", h.emu.base_url())).json(&body).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (status, text) = bad(json!({"key": RESTRICTED, "permissions": ["rak_everything"]}));
    assert_eq!(status, 400);
    assert!(text.contains("rak_everything") && !text.contains(RESTRICTED), "{text}");
    let (status, text) = bad(json!({"key": KEY, "permissions": []}));
    assert_eq!(status, 400);
    assert!(!text.contains(KEY), "{text}");
}

#[test]
fn unconfigured_restricted_keys_may_do_everything() {
    let h = Harness::new();
    assert_eq!(as_restricted(&h, "POST", "/v1/accounts", "country=US", None).status, 200);
    assert_eq!(as_restricted(&h, "POST", "/v1/customers", "email=a%40b.co", None).status, 200);
    h.emu.set_restricted_key(RESTRICTED, []).unwrap();
    assert_eq!(as_restricted(&h, "GET", "/v1/customers", "", None).status, 403);
    assert!(h.emu.remove_restricted_key(RESTRICTED));
    assert_eq!(as_restricted(&h, "GET", "/v1/customers", "", None).status, 200);
}
