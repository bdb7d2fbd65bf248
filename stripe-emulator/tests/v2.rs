//! Black-box tests of the `/v2` endpoints: Accounts v2, Account Links v2 and thin events, with
//! v2's wire rules (JSON bodies, v2 errors, `include`, URL pagination, v2 idempotency), through a
//! real HTTP client against an in-process emulator.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::blocking::Client;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use stripe_emulator::{
    Emulator, EmulatorConfig, Fault, Onboarding, PINNED_API_VERSION, Permission, RateLimitKind, is_v2_event_type,
};

const KEY: &str = "sk_test_51EmulatorTestKey0123456789wxyz";

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

    fn error(&self) -> &Value {
        &self.body["error"]
    }

    fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{:#}", self.body);
        self.body
    }
}

/// A request as the client sends it: JSON body (POST) or query (GET), pinned version, key.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    json: Option<Value>,
    raw_body: Option<(&'a str, &'a str)>,
    idempotency_key: Option<&'a str>,
    version: Option<&'a str>,
    auth: String,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            emu: Emulator::start("127.0.0.1:0", EmulatorConfig::default()).expect("emulator starts"),
            http: Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
        }
    }

    fn request<'a>(&self, method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            json: None,
            raw_body: None,
            idempotency_key: None,
            version: Some(PINNED_API_VERSION),
            auth: format!("Bearer {KEY}"),
        }
    }

    fn send(&self, r: Request<'_>) -> Resp {
        let url = format!("{}{}", self.emu.base_url(), r.path);
        let mut req = self.http.request(reqwest::Method::from_bytes(r.method.as_bytes()).unwrap(), url);
        if let Some(body) = &r.json {
            req = req.header("Content-Type", "application/json").body(body.to_string());
        }
        if let Some((content_type, body)) = r.raw_body {
            req = req.header("Content-Type", content_type).body(body.to_string());
        }
        if let Some(key) = r.idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(version) = r.version {
            req = req.header("Stripe-Version", version);
        }
        let resp = req.header("Authorization", r.auth).send().expect("the request gets an answer");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        Resp { status, headers, body }
    }

    fn post(&self, path: &str, body: Value) -> Resp {
        self.send(Request { json: Some(body), ..self.request("POST", path) })
    }

    fn post_idem(&self, path: &str, body: Value, key: &str) -> Resp {
        self.send(Request { json: Some(body), idempotency_key: Some(key), ..self.request("POST", path) })
    }

    fn get(&self, path_and_query: &str) -> Resp {
        self.send(self.request("GET", path_and_query))
    }

    fn create(&self, body: Value) -> Value {
        self.post("/v2/core/accounts", body).ok()
    }

    /// A customer-and-merchant-and-recipient Account, as the extension makes one.
    fn connected(&self, email: &str) -> Value {
        self.create(json!({
            "contact_email": email,
            "configuration": {
                "customer": {},
                "merchant": {"capabilities": {"card_payments": {"requested": true}}},
                "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": {"requested": true}}}},
            },
            "include": ["configuration.merchant", "configuration.recipient", "requirements"],
        }))
    }

    fn thin_types(&self) -> Vec<String> {
        self.emu.v2_events().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
    }

    fn control(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.emu.base_url());
        let mut req = self.http.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.json().unwrap())
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_string()).collect()
}

fn is_rfc3339_millis(s: &Value) -> bool {
    let s = s.as_str().unwrap_or("");
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.'
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn an_account_is_created_retrieved_with_include_updated_and_its_metadata_unset_by_null() {
    let h = Harness::new();
    let created = h.create(json!({
        "contact_email": "jenny@example.com",
        "display_name": "Jenny",
        "metadata": {"user_id": "42", "plan": "pro"},
        "identity": {"country": "us", "entity_type": "individual"},
        "configuration": {"customer": {}},
        "include": ["configuration.customer", "identity"],
    }));
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("acct_") && id.len() == 21, "{id}");
    assert_eq!(created["object"], "v2.core.account");
    assert!(is_rfc3339_millis(&created["created"]), "{}", created["created"]);
    assert_eq!(created["applied_configurations"], json!(["customer"]));
    assert_eq!((created["closed"].clone(), created["livemode"].clone()), (json!(false), json!(false)));
    assert_eq!(created["configuration"]["customer"]["applied"], true);
    assert!(created["configuration"]["merchant"].is_null() && created["configuration"]["recipient"].is_null());
    assert_eq!(created["identity"]["country"], "us");
    // Not included: null, whatever the Account holds.
    assert!(
        created["defaults"].is_null() && created["requirements"].is_null() && created["future_requirements"].is_null()
    );
    assert_eq!(created["metadata"], json!({"user_id": "42", "plan": "pro"}));

    let bare = h.get(&format!("/v2/core/accounts/{id}")).ok();
    for field in ["configuration", "defaults", "identity", "requirements", "future_requirements"] {
        assert!(bare[field].is_null(), "{field}: {}", bare[field]);
    }
    assert_eq!(bare["contact_email"], "jenny@example.com");
    // `include` in a query string: indexed, repeated, or a single value.
    for query in ["include[0]=defaults&include[1]=requirements", "include=defaults&include=requirements"] {
        let got = h.get(&format!("/v2/core/accounts/{id}?{query}")).ok();
        assert_eq!(got["defaults"]["responsibilities"]["requirements_collector"], "stripe", "{query}");
        assert_eq!(got["requirements"]["entries"], json!([]), "{query}");
        assert!(got["identity"].is_null());
    }
    let one = h.get(&format!("/v2/core/accounts/{id}?include=configuration.customer")).ok();
    assert_eq!(one["configuration"]["customer"]["applied"], true);

    let updated = h
        .post(
            &format!("/v2/core/accounts/{id}"),
            json!({"contact_email": "jenny@new.example", "metadata": {"plan": null, "seats": 3}}),
        )
        .ok();
    assert_eq!(updated["contact_email"], "jenny@new.example");
    assert_eq!(updated["metadata"], json!({"user_id": "42", "seats": "3"}));
    assert!(h.get("/v2/core/accounts/acct_doesnotexist00").error()["code"] == "resource_missing");
    assert_eq!(h.get("/v2/core/accounts/acct_doesnotexist00").status, 404);
    // A v2 Account is not a v1 one.
    assert_eq!(h.get(&format!("/v1/accounts/{id}")).status, 403);
    assert_eq!(h.emu.v2_accounts().len(), 1);
    assert!(h.emu.accounts().is_empty());
}

#[test]
fn adding_the_merchant_and_recipient_configurations_requests_capabilities_and_needs_an_email() {
    let h = Harness::new();
    let customer = h.create(json!({"configuration": {"customer": {}}}));
    let id = customer["id"].as_str().unwrap();
    let path = format!("/v2/core/accounts/{id}");
    let merchant = json!({"configuration": {"merchant": {"capabilities": {"card_payments": {"requested": true}}}}});
    // "Required when configuring the account as a merchant or recipient."
    let refused = h.post(&path, merchant.clone());
    assert_eq!((refused.status, refused.error()["code"].as_str()), (400, Some("parameter_missing")));
    assert_eq!(refused.error()["param"], "contact_email");
    assert_eq!(h.emu.v2_accounts()[0]["applied_configurations"], json!(["customer"]));

    let mut body = merchant;
    body["contact_email"] = json!("shop@example.com");
    body["configuration"]["recipient"] =
        json!({"capabilities": {"stripe_balance": {"stripe_transfers": {"requested": true}}}});
    body["include"] = json!(["configuration.merchant", "configuration.recipient", "requirements"]);
    let connected = h.post(&path, body).ok();
    assert_eq!(connected["applied_configurations"], json!(["customer", "merchant", "recipient"]));
    let card = &connected["configuration"]["merchant"]["capabilities"]["card_payments"];
    assert_eq!(card["status"], "restricted");
    assert_eq!(card["status_details"], json!([{"code": "requirements_past_due", "resolution": "provide_info"}]));
    assert_eq!(
        connected["configuration"]["recipient"]["capabilities"]["stripe_balance"]["stripe_transfers"]["status"],
        "restricted"
    );
    let entries = connected["requirements"]["entries"].as_array().unwrap();
    let due: Vec<&str> = entries.iter().map(|e| e["description"].as_str().unwrap()).collect();
    assert_eq!(due, Onboarding::DEFAULT_DUE);
    assert_eq!(entries[0]["minimum_deadline"]["status"], "past_due");
    assert_eq!(
        entries[0]["impact"]["restricts_capabilities"],
        // (stripe_balance.payouts: Stripe requests it on every merchant and recipient configuration.)
        json!([
            {"capability": "card_payments", "configuration": "merchant", "deadline": {"status": "past_due"}},
            {"capability": "stripe_balance.payouts", "configuration": "merchant", "deadline": {"status": "past_due"}},
            {"capability": "stripe_balance.payouts", "configuration": "recipient", "deadline": {"status": "past_due"}},
            {"capability": "stripe_balance.stripe_transfers", "configuration": "recipient", "deadline": {"status": "past_due"}},
        ])
    );
    // customer was not included this time.
    assert!(connected["configuration"]["customer"].is_null());

    // Deactivating the recipient configuration unrequests its capabilities.
    let off = h
        .post(
            &path,
            json!({"configuration": {"recipient": {"applied": false}}, "include": ["configuration.recipient"]}),
        )
        .ok();
    assert_eq!(off["applied_configurations"], json!(["customer", "merchant"]));
    assert_eq!(off["configuration"]["recipient"], json!({"applied": false, "capabilities": {}}));
}

#[test]
fn v2_requests_are_json_pinned_and_strict_about_parameters_with_v2_errors() {
    let h = Harness::new();
    // A form-encoded v2 request is refused.
    let form = h.send(Request {
        raw_body: Some(("application/x-www-form-urlencoded", "contact_email=a%40b.co")),
        ..h.request("POST", "/v2/core/accounts")
    });
    assert_eq!((form.status, form.error()["type"].as_str()), (400, Some("invalid_request_error")));
    assert!(form.error()["message"].as_str().unwrap().contains("application/json"));
    assert!(form.error().get("doc_url").is_none(), "v2 errors carry no doc_url: {}", form.body);
    let garbage =
        h.send(Request { raw_body: Some(("application/json", "{nope")), ..h.request("POST", "/v2/core/accounts") });
    assert_eq!(garbage.status, 400);
    // The pinned version is required on v2 too, and echoed.
    let unpinned = h.send(Request { json: Some(json!({})), version: None, ..h.request("POST", "/v2/core/accounts") });
    assert_eq!(unpinned.status, 400);
    assert!(unpinned.error()["message"].as_str().unwrap().contains(PINNED_API_VERSION));
    let other = h.send(Request { version: Some("2025-12-15.clover"), ..h.request("GET", "/v2/core/accounts") });
    assert_eq!(other.status, 400);
    let listed = h.get("/v2/core/accounts");
    assert_eq!(listed.header("stripe-version"), Some(PINNED_API_VERSION));
    assert!(listed.header("request-id").is_some_and(|r| r.starts_with("req_")));
    // Unknown parameters by JSON path; v1 names are not v2's; wrong JSON types; enums.
    for (body, param) in [
        (json!({"email": "a@b.co"}), "email"),
        (json!({"configuration": {"merchant": {"colour": "red"}}}), "configuration.merchant.colour"),
        (json!({"expand": ["identity"]}), "expand"),
    ] {
        let r = h.post("/v2/core/accounts", body);
        assert_eq!(
            (r.status, r.error()["code"].as_str(), r.error()["param"].as_str()),
            (400, Some("parameter_unknown"), Some(param))
        );
    }
    let r = h.post("/v2/core/accounts", json!({"contact_email": ["a@b.co"]}));
    assert_eq!((r.status, r.error()["param"].as_str()), (400, Some("contact_email")));
    let r = h.post("/v2/core/accounts", json!({"dashboard": "partial"}));
    assert!(r.error()["message"].as_str().unwrap().contains("express, full, or none"));
    let r = h.post("/v2/core/accounts", json!({"contact_email": "not an email"}));
    assert_eq!(r.error()["code"], "email_invalid");
    let r = h.get("/v2/core/accounts?starting_after=acct_1");
    assert_eq!(r.error()["code"], "parameter_unknown");
    let r = h.get("/v2/core/accounts?limit=many");
    assert_eq!(r.error()["code"], "parameter_invalid_integer");
    // Unknown v2 routes are 404 in v2's envelope.
    let r = h.get("/v2/core/persons");
    assert_eq!((r.status, r.error()["type"].as_str()), (404, Some("invalid_request_error")));
    // Authentication first, as on v1.
    let r = h.send(Request { auth: "Bearer nope".into(), ..h.request("GET", "/v2/core/accounts") });
    assert_eq!(r.status, 401);
    assert!(h.emu.v2_accounts().is_empty(), "nothing refused was created");
    // The request log has v2 requests, with their JSON parameters.
    let logged = h.emu.requests();
    assert!(logged.iter().any(|r| r.path == "/v2/core/accounts" && r.params == json!({"dashboard": "partial"})));
}

#[test]
fn lists_page_through_urls_newest_first_with_their_filters() {
    let h = Harness::new();
    let mut made = Vec::new();
    for i in 0..5 {
        let body = if i % 2 == 0 {
            json!({"configuration": {"customer": {}}})
        } else {
            json!({"contact_email": format!("m{i}@example.com"), "configuration": {"merchant": {}}})
        };
        made.push(h.create(body)["id"].as_str().unwrap().to_string());
    }
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();

    let first = h.get("/v2/core/accounts?limit=2").ok();
    assert_eq!(ids(&first), newest_first[..2]);
    assert!(first["previous_page_url"].is_null());
    assert!(first.get("has_more").is_none() && first.get("object").is_none());
    // Accounts in a list show nothing include-dependent.
    assert!(first["data"][0]["configuration"].is_null());
    let next = first["next_page_url"].as_str().unwrap().to_string();
    assert!(next.starts_with("/v2/core/accounts?limit=2&page="), "{next}");
    // The URL is fetched as it is, as the SDK does.
    let second = h.get(&next).ok();
    assert_eq!(ids(&second), newest_first[2..4]);
    let third = h.get(second["next_page_url"].as_str().unwrap()).ok();
    assert_eq!(ids(&third), newest_first[4..]);
    assert!(third["next_page_url"].is_null());
    let back = h.get(third["previous_page_url"].as_str().unwrap()).ok();
    assert_eq!(ids(&back), newest_first[2..4]);

    let merchants = h.get("/v2/core/accounts?applied_configurations[0]=merchant").ok();
    assert_eq!(ids(&merchants), vec![made[3].clone(), made[1].clone()]);
    let merchants_by_name = h.get("/v2/core/accounts?applied_configurations=merchant&limit=1").ok();
    let url = merchants_by_name["next_page_url"].as_str().unwrap();
    assert!(url.contains("applied_configurations%5B0%5D=merchant"), "{url}");
    assert_eq!(ids(&h.get(url).ok()), vec![made[1].clone()]);

    let bad = h.get("/v2/core/accounts?page=bogus");
    assert_eq!((bad.status, bad.error()["param"].as_str()), (400, Some("page")));
}

#[test]
fn closing_an_account_keeps_it_retrievable_and_refuses_further_changes() {
    let h = Harness::new();
    let account = h.connected("close@example.com");
    let id = account["id"].as_str().unwrap();
    let close = format!("/v2/core/accounts/{id}/close");
    let partial = h.post(&close, json!({"applied_configurations": ["merchant"]}));
    assert_eq!((partial.status, partial.error()["param"].as_str()), (400, Some("applied_configurations")));
    let closed = h.post(&close, json!({"applied_configurations": ["recipient", "customer", "merchant"]})).ok();
    assert_eq!(closed["closed"], true);
    assert_eq!(h.get(&format!("/v2/core/accounts/{id}")).ok()["closed"], true);
    for r in [
        h.post(&close, json!({})),
        h.post(&format!("/v2/core/accounts/{id}"), json!({"display_name": "x"})),
        h.post(
            "/v2/core/account_links",
            json!({"account": id, "use_case": {"type": "account_onboarding", "account_onboarding": {"refresh_url": "https://x.test/r"}}}),
        ),
    ] {
        assert_eq!((r.status, r.error()["code"].as_str()), (400, Some("account_closed")), "{}", r.body);
    }
    // Lists leave closed Accounts out unless asked for them.
    assert!(ids(&h.get("/v2/core/accounts").ok()).is_empty());
    assert_eq!(ids(&h.get("/v2/core/accounts?closed=true").ok()), vec![id.to_string()]);
    assert_eq!(h.thin_types().last().map(String::as_str), Some("v2.core.account.closed"));
}

#[test]
fn account_links_take_the_pinned_versions_use_case_and_no_configurations() {
    let h = Harness::new();
    let id = h.connected("link@example.com")["id"].as_str().unwrap().to_string();
    let body = |options: Value| json!({"account": id, "use_case": {"type": "account_onboarding", "account_onboarding": options}});
    let link = h
        .post(
            "/v2/core/account_links",
            body(json!({"refresh_url": "https://example.com/reauth", "return_url": "https://example.com/return"})),
        )
        .ok();
    assert_eq!(link["object"], "v2.core.account_link");
    assert_eq!(link["account"], id.as_str());
    assert!(link["url"].as_str().unwrap().starts_with(&format!("https://accounts.stripe.com/r/{id}#alu_test_")));
    assert!(is_rfc3339_millis(&link["created"]) && is_rfc3339_millis(&link["expires_at"]));
    assert_eq!(link["use_case"]["account_onboarding"]["return_url"], "https://example.com/return");
    // Removed in 2026-09-30.endive, before the pin.
    let r = h.post(
        "/v2/core/account_links",
        body(json!({"refresh_url": "https://example.com/reauth", "configurations": ["merchant", "recipient"]})),
    );
    assert_eq!(
        (r.error()["code"].as_str(), r.error()["param"].as_str()),
        (Some("parameter_unknown"), Some("use_case.account_onboarding.configurations"))
    );
    let r = h.post("/v2/core/account_links", body(json!({"return_url": "https://example.com/return"})));
    assert_eq!(
        (r.error()["code"].as_str(), r.error()["param"].as_str()),
        (Some("parameter_missing"), Some("use_case.account_onboarding.refresh_url"))
    );
    let r = h.post("/v2/core/account_links", body(json!({"refresh_url": "ftp://example.com"})));
    assert_eq!(r.error()["code"], "url_invalid");
    let r = h.post("/v2/core/account_links", json!({"account": id, "use_case": {"type": "account_onboarding"}}));
    assert_eq!(r.error()["param"], "use_case.account_onboarding");
    let r = h.post(
        "/v2/core/account_links",
        json!({"account": "acct_nope0000000000000", "use_case": {"type": "account_update", "account_update": {"refresh_url": "https://x.test"}}}),
    );
    assert_eq!(
        (r.status, r.error()["code"].as_str(), r.error()["param"].as_str()),
        (400, Some("resource_missing"), Some("account"))
    );
}

#[test]
fn every_change_records_thin_events_with_the_related_object_and_the_request() {
    let h = Harness::new();
    let created = h.post_idem("/v2/core/accounts", json!({"configuration": {"customer": {}}}), "create-1").ok();
    let id = created["id"].as_str().unwrap();
    let events = h.emu.v2_events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!((e["object"].as_str(), e["type"].as_str()), (Some("v2.core.event"), Some("v2.core.account.created")));
    assert!(e["id"].as_str().unwrap().starts_with("evt_test_"));
    assert_eq!(
        e["related_object"],
        json!({"id": id, "type": "v2.core.account", "url": format!("/v2/core/accounts/{id}")})
    );
    assert_eq!(e["reason"]["type"], "request");
    assert_eq!(e["reason"]["request"]["idempotency_key"], "create-1");
    assert!(e["reason"]["request"]["id"].as_str().unwrap().starts_with("req_"));
    assert!(is_rfc3339_millis(&e["created"]) && e.get("data").is_none() && e["livemode"] == false);

    h.post(
        &format!("/v2/core/accounts/{id}"),
        json!({"contact_email": "e@example.com", "configuration": {"merchant": {"capabilities": {"card_payments": {"requested": true}}}}}),
    )
    .ok();
    assert_eq!(
        h.thin_types()[1..],
        [
            "v2.core.account.updated",
            "v2.core.account[configuration.merchant].updated",
            "v2.core.account[configuration.merchant].capability_status_updated",
            "v2.core.account[configuration.merchant].capability_status_updated",
            "v2.core.account[requirements].updated",
        ]
    );
    let status_event = &h.emu.v2_events()[3];
    assert_eq!(status_event["data"], json!({"updated_capability": "card_payments"}));
    assert_eq!(h.emu.v2_events()[4]["data"], json!({"updated_capability": "stripe_balance.payouts"}));
    // An update that changes nothing records nothing; neither does a refused one.
    h.post(&format!("/v2/core/accounts/{id}"), json!({"contact_email": "e@example.com"})).ok();
    assert_eq!(h.post(&format!("/v2/core/accounts/{id}"), json!({"bogus": 1})).status, 400);
    assert_eq!(h.emu.v2_events().len(), 6);
    // Thin events never show in /v1/events, nor v1 events in /v2/core/events.
    assert!(h.emu.events().is_empty());
    for t in h.thin_types() {
        assert!(is_v2_event_type(&t), "{t}");
    }
}

#[test]
fn the_events_api_filters_by_type_object_and_created_and_pages_by_url() {
    let h = Harness::new();
    let a = h.create(json!({"configuration": {"customer": {}}}))["id"].as_str().unwrap().to_string();
    let b = h.create(json!({"configuration": {"customer": {}}}))["id"].as_str().unwrap().to_string();
    h.post(&format!("/v2/core/accounts/{a}"), json!({"display_name": "A"})).ok();
    h.post(&format!("/v2/core/accounts/{b}/close"), json!({})).ok();

    let all = h.get("/v2/core/events").ok();
    let types: Vec<&str> = all["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["v2.core.account.closed", "v2.core.account.updated", "v2.core.account.created", "v2.core.account.created"]
    );
    let of_a = h.get(&format!("/v2/core/events?object_id={a}")).ok();
    assert_eq!(of_a["data"].as_array().unwrap().len(), 2);
    let typed = h.get("/v2/core/events?types[0]=v2.core.account.closed&types[1]=v2.core.account.updated").ok();
    assert_eq!(typed["data"].as_array().unwrap().len(), 2);
    let repeated = h.get("/v2/core/events?types=v2.core.account.closed&types=v2.core.account.updated").ok();
    assert_eq!(ids(&repeated), ids(&typed));
    // `created` bounds as RFC 3339 date-times or Unix seconds.
    let newest = all["data"][0]["created"].as_str().unwrap();
    let after = h.get(&format!("/v2/core/events?created[gt]={}", urlencode(newest))).ok();
    assert!(after["data"].as_array().unwrap().is_empty());
    let before = h.get(&format!("/v2/core/events?created[lte]={}", now_secs() + 1)).ok();
    assert_eq!(before["data"].as_array().unwrap().len(), 4);
    assert_eq!(h.get("/v2/core/events?created[gt]=soon").error()["param"], "created.gt");
    let too_many: String = (0..21).map(|i| format!("types[{i}]=t{i}&")).collect();
    assert_eq!(h.get(&format!("/v2/core/events?{too_many}")).error()["param"], "types");

    let page = h.get("/v2/core/events?limit=3&types[0]=v2.core.account.created&types[1]=v2.core.account.updated").ok();
    assert_eq!(page["data"].as_array().unwrap().len(), 3);
    assert!(page["next_page_url"].is_null(), "nothing follows the last match: {page:#}");
    let page = h.get("/v2/core/events?limit=2").ok();
    let rest = h.get(page["next_page_url"].as_str().unwrap()).ok();
    assert_eq!(ids(&rest), ids(&all)[2..]);

    let one = &all["data"][1];
    assert_eq!(&h.get(&format!("/v2/core/events/{}", one["id"].as_str().unwrap())).ok(), one);
    assert_eq!(h.get("/v2/core/events/evt_test_nope").status, 404);
    // Thirty days on, they are gone from the API (not from the test's view).
    h.emu.age_events(31);
    assert!(h.get("/v2/core/events").ok()["data"].as_array().unwrap().is_empty());
    assert_eq!(h.get(&format!("/v2/core/events/{}", one["id"].as_str().unwrap())).status, 404);
    assert_eq!(h.emu.v2_events().len(), 4);
    // The pinned event clock pins thin events too.
    h.emu.set_event_clock(Some(1_767_225_600));
    h.post(&format!("/v2/core/accounts/{a}"), json!({"display_name": "A2"})).ok();
    assert_eq!(h.emu.v2_events().last().unwrap()["created"], "2026-01-01T00:00:00.000Z");
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn v2_idempotency_replays_successes_refuses_other_bodies_and_completes_failed_work() {
    let h = Harness::new();
    let body = json!({"contact_email": "idem@example.com", "configuration": {"customer": {}}});
    let first = h.post_idem("/v2/core/accounts", body.clone(), "k-success");
    let again = h.post_idem("/v2/core/accounts", body.clone(), "k-success");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!((h.emu.v2_accounts().len(), h.emu.v2_events().len()), (1, 1));
    let other = h.post_idem("/v2/core/accounts", json!({"contact_email": "x@example.com"}), "k-success");
    assert_eq!((other.status, other.error()["type"].as_str()), (400, Some("idempotency_error")));
    let elsewhere = h.post_idem("/v2/core/account_links", body.clone(), "k-success");
    assert_eq!(elsewhere.error()["type"], "idempotency_error");

    // A 500 after the Account was made: v1 would replay the 500; v2 completes on retry.
    h.emu.inject(Fault::status(500).on("POST", "/v2/core/accounts").after_execute().stored());
    let body = json!({"contact_email": "half@example.com", "include": ["configuration.customer"], "configuration": {"customer": {}}});
    let failed = h.post_idem("/v2/core/accounts", body.clone(), "k-half");
    assert_eq!((failed.status, failed.error()["type"].as_str()), (500, Some("api_error")));
    assert_eq!(h.emu.v2_accounts().len(), 2, "the Account was made before the failure");
    let made = h.emu.v2_accounts()[1]["id"].clone();
    let retried = h.post_idem("/v2/core/accounts", body.clone(), "k-half").ok();
    assert_eq!(retried["id"], made);
    assert_eq!(retried["configuration"]["customer"]["applied"], true, "answered with the request's include");
    assert_eq!(h.emu.v2_accounts().len(), 2, "nothing made twice");
    assert_eq!(h.thin_types().iter().filter(|t| *t == "v2.core.account.created").count(), 2);
    // Now a success: replayed from then on.
    let replayed = h.post_idem("/v2/core/accounts", body.clone(), "k-half");
    assert_eq!((replayed.header("idempotent-replayed"), &replayed.body), (Some("true"), &retried));
    // A different body under the failed key is still refused.
    h.emu.inject(Fault::status(500).on("POST", "/v2/core/accounts").stored());
    let failed = h.post_idem("/v2/core/accounts", json!({"display_name": "F"}), "k-failed");
    assert_eq!(failed.status, 500);
    assert_eq!(h.emu.v2_accounts().len(), 2, "a 500 before executing makes nothing");
    assert_eq!(
        h.post_idem("/v2/core/accounts", json!({"display_name": "G"}), "k-failed").error()["type"],
        "idempotency_error"
    );
    let done = h.post_idem("/v2/core/accounts", json!({"display_name": "F"}), "k-failed").ok();
    assert_eq!(done["display_name"], "F");
    assert_eq!(h.emu.v2_accounts().len(), 3);

    // A validation error starts nothing: the key stays free for the corrected request.
    assert_eq!(h.post_idem("/v2/core/accounts", json!({"dashboard": "partial"}), "k-invalid").status, 400);
    assert_eq!(h.post_idem("/v2/core/accounts", json!({"dashboard": "full"}), "k-invalid").ok()["dashboard"], "full");

    // A close that closed and then failed answers the closed Account on retry.
    let id = done["id"].as_str().unwrap();
    h.emu.inject(Fault::status(500).on("POST", &format!("/v2/core/accounts/{id}/close")).after_execute().stored());
    let close = format!("/v2/core/accounts/{id}/close");
    assert_eq!(h.post_idem(&close, json!({}), "k-close").status, 500);
    assert_eq!(h.post_idem(&close, json!({}), "k-close").ok()["closed"], true);
    assert_eq!(h.post_idem(&close, json!({}), "k-close-again").error()["code"], "account_closed");
    assert_eq!(h.thin_types().iter().filter(|t| *t == "v2.core.account.closed").count(), 1);

    // Saved results are pruned after Stripe's window (30 days on v2): the key executes again.
    h.emu.expire_idempotency_keys();
    let fresh = h.post_idem(
        "/v2/core/accounts",
        json!({"contact_email": "idem@example.com", "configuration": {"customer": {}}}),
        "k-success",
    );
    assert_ne!(fresh.ok()["id"], first.body["id"]);
}

#[test]
fn a_key_in_flight_is_refused_and_a_lost_answer_replays_the_success() {
    let h = Harness::new();
    h.emu.set_latency(Duration::from_millis(400));
    let racing = std::thread::scope(|s| {
        let first = s.spawn(|| h.post_idem("/v2/core/accounts", json!({}), "k-race"));
        assert!(h.emu.wait_for(Duration::from_secs(5), |e| e.in_flight_keys() == ["k-race"]));
        let second = h.post_idem("/v2/core/accounts", json!({}), "k-race");
        (first.join().unwrap(), second)
    });
    assert_eq!(racing.0.status, 200);
    assert_eq!((racing.1.status, racing.1.error()["code"].as_str()), (409, Some("idempotency_key_in_use")));
    assert_eq!(racing.1.error()["type"], "idempotency_error");
    h.emu.set_latency(Duration::ZERO);

    h.emu.inject(Fault::drop_after().on("POST", "/v2/core/accounts"));
    let url = format!("{}/v2/core/accounts", h.emu.base_url());
    let lost = h
        .http
        .post(url)
        .header("Authorization", format!("Bearer {KEY}"))
        .header("Stripe-Version", PINNED_API_VERSION)
        .header("Idempotency-Key", "k-lost")
        .header("Content-Type", "application/json")
        .body("{}")
        .send();
    assert!(lost.is_err(), "the connection closes without an answer");
    let retry = h.post_idem("/v2/core/accounts", json!({}), "k-lost");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.emu.v2_accounts().len(), 2);
}

#[test]
fn faults_rate_limits_and_permissions_apply_to_v2_endpoints_by_method_and_pattern() {
    let h = Harness::new();
    let a = h.create(json!({}))["id"].as_str().unwrap().to_string();
    let b = h.create(json!({}))["id"].as_str().unwrap().to_string();

    h.emu.inject(Fault::status(503).on("GET", "/v2/core/accounts").should_retry(true));
    let r = h.get(&format!("/v2/core/accounts/{a}"));
    assert_eq!(
        (r.status, r.error()["type"].as_str(), r.header("stripe-should-retry")),
        (503, Some("api_error"), Some("true"))
    );
    assert!(r.error().get("doc_url").is_none());
    h.emu.inject(Fault::rate_limit().on("POST", "/v2/core/accounts"));
    let r = h.post("/v2/core/accounts", json!({}));
    assert_eq!(
        (r.status, r.error()["type"].as_str(), r.error()["code"].as_str()),
        (429, Some("rate_limit"), Some("rate_limit"))
    );
    // A fault without `.on` matches /v1 only.
    h.emu.inject(Fault::status(500));
    assert_eq!(h.get("/v2/core/accounts").status, 200);
    assert_eq!(h.emu.pending_faults(), 1);
    h.emu.reset();

    h.emu.set_endpoint_rate_limit(Some(2));
    assert_eq!(h.get(&format!("/v2/core/accounts/{a}")).status, 404);
    assert_eq!(h.get(&format!("/v2/core/accounts/{b}")).status, 404);
    let limited = h.get("/v2/core/accounts/acct_c");
    assert_eq!((limited.status, limited.error()["type"].as_str()), (429, Some("rate_limit")));
    assert_eq!(h.get("/v2/core/accounts").status, 200, "another endpoint");
    assert_eq!(h.post("/v2/core/accounts/acct_x", json!({})).status, 404, "same path, another method");
    assert_eq!(h.emu.rate_limited(), vec![("GET /v2/core/accounts/{id}".to_string(), RateLimitKind::Endpoint)]);
    h.emu.set_endpoint_rate_limit(None);

    let rk = "rk_test_v2readonly000000000";
    h.emu.set_restricted_key(rk, [Permission::ConnectedAccountRead]).unwrap();
    let as_rk = |method: &'static str, path: &'static str, body: Option<Value>| {
        h.send(Request { json: body, auth: format!("Bearer {rk}"), ..h.request(method, path) })
    };
    assert_eq!(as_rk("GET", "/v2/core/accounts", None).status, 200);
    let refused = as_rk("POST", "/v2/core/accounts", Some(json!({})));
    assert_eq!(refused.status, 403);
    assert!(refused.error()["message"].as_str().unwrap().contains("rak_connected_account_write"));
    assert_eq!(as_rk("GET", "/v2/core/events", None).status, 403);
    assert!(h.emu.v2_accounts().is_empty());
}

#[test]
fn onboarding_moves_capabilities_and_requirements_and_records_their_events() {
    let h = Harness::new();
    let account = h.connected("onboard@example.com");
    let id = account["id"].as_str().unwrap().to_string();
    let events_before = h.emu.v2_events().len();
    let card = |a: &Value| a["configuration"]["merchant"]["capabilities"]["card_payments"]["status"].clone();
    let transfers = |a: &Value| {
        a["configuration"]["recipient"]["capabilities"]["stripe_balance"]["stripe_transfers"]["status"].clone()
    };

    let submitted = h.emu.set_v2_onboarding(&id, Onboarding::DetailsSubmitted).unwrap();
    assert_eq!((card(&submitted), transfers(&submitted)), (json!("pending"), json!("pending")));
    assert_eq!(submitted["requirements"]["entries"][0]["awaiting_action_from"], "stripe");
    let new: Vec<Value> = h.emu.v2_events()[events_before..].to_vec();
    let types: Vec<&str> = new.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "v2.core.account[configuration.merchant].capability_status_updated",
            "v2.core.account[configuration.merchant].capability_status_updated",
            "v2.core.account[configuration.recipient].capability_status_updated",
            "v2.core.account[configuration.recipient].capability_status_updated",
            "v2.core.account[requirements].updated",
        ]
    );
    assert_eq!(new[2]["data"]["updated_capability"], "stripe_balance.payouts");
    assert_eq!(new[3]["data"]["updated_capability"], "stripe_balance.stripe_transfers");
    assert!(new.iter().all(|e| e["reason"].is_null() && e["related_object"]["id"] == id.as_str()));

    // Over HTTP, as a separate-process test would.
    let (status, enabled) =
        h.control("POST", &format!("/_emulator/v2/accounts/{id}/onboarding"), Some(json!({"state": "enabled"})));
    assert_eq!(status, 200);
    assert_eq!((card(&enabled), transfers(&enabled)), (json!("active"), json!("active")));
    assert_eq!(enabled["requirements"]["entries"], json!([]));
    let read = h.get(&format!("/v2/core/accounts/{id}?include[0]=configuration.merchant&include[1]=requirements")).ok();
    assert_eq!(card(&read), "active");
    // API updates leave the requirements as the step set them; a capability requested now starts active.
    let updated = h
        .post(
            &format!("/v2/core/accounts/{id}"),
            json!({"configuration": {"merchant": {"capabilities": {"link_payments": {"requested": true}}}}, "include": ["configuration.merchant", "requirements"]}),
        )
        .ok();
    assert_eq!(updated["configuration"]["merchant"]["capabilities"]["link_payments"]["status"], "active");
    assert_eq!(updated["requirements"]["entries"], json!([]));

    let rejected = h.emu.set_v2_onboarding(&id, Onboarding::disabled("rejected.fraud")).unwrap();
    assert_eq!(card(&rejected), "rejected");
    assert_eq!(
        rejected["configuration"]["merchant"]["capabilities"]["card_payments"]["status_details"],
        json!([{"code": "rejected_fraud", "resolution": "contact_stripe"}])
    );
    let due = h.emu.set_v2_onboarding(&id, Onboarding::requirements_due()).unwrap();
    assert_eq!(card(&due), "restricted");
    assert_eq!(due["requirements"]["entries"][0]["minimum_deadline"]["status"], "past_due");
    assert!(h.emu.set_v2_onboarding("acct_unknown0000000000", Onboarding::Enabled).is_err());
    let (status, _) = h.control(
        "POST",
        "/_emulator/v2/accounts/acct_unknown0000000000/onboarding",
        Some(json!({"state": "enabled"})),
    );
    assert_eq!(status, 404);
    let (status, _) =
        h.control("POST", &format!("/_emulator/v2/accounts/{id}/onboarding"), Some(json!({"state": "done"})));
    assert_eq!(status, 400);
    for t in h.thin_types() {
        assert!(is_v2_event_type(&t), "{t}");
    }
}

#[test]
fn dashboard_controls_change_and_close_accounts_outside_the_request_log() {
    let h = Harness::new();
    let id = h.connected("dash@example.com")["id"].as_str().unwrap().to_string();
    h.emu.clear_requests();
    let changed = h.emu.dashboard_set_v2_contact_email(&id, Some("new\u{0}@example.com")).unwrap();
    assert_eq!(changed["contact_email"], "new\u{0}@example.com");
    let (status, over_http) =
        h.control("POST", &format!("/_emulator/v2/accounts/{id}"), Some(json!({"contact_email": null})));
    assert_eq!((status, over_http["contact_email"].clone()), (200, Value::Null));
    let (status, closed) = h.control("POST", &format!("/_emulator/v2/accounts/{id}/close"), None);
    assert_eq!((status, closed["closed"].clone()), (200, json!(true)));
    assert!(!h.emu.dashboard_close_v2_account(&id), "already closed");
    let (status, _) = h.control("POST", &format!("/_emulator/v2/accounts/{id}/close"), None);
    assert_eq!(status, 404);
    let types = h.thin_types();
    assert_eq!(
        types[types.len() - 3..],
        ["v2.core.account.updated", "v2.core.account.updated", "v2.core.account.closed"]
    );
    assert!(h.emu.requests().is_empty(), "controls are not requests");

    let (_, held) = h.control("GET", "/_emulator/v2/accounts", None);
    assert_eq!(held.as_array().unwrap().len(), 1);
    assert_eq!(held[0]["closed"], true);
    assert_eq!(held[0]["configuration"]["merchant"]["applied"], true, "held Accounts show everything");
    let (_, events) = h.control("GET", "/_emulator/v2/events", None);
    assert_eq!(events.as_array().unwrap().len(), h.emu.v2_events().len());
    let ids: HashSet<&str> = events.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.as_array().unwrap().len());
    h.emu.reset();
    assert!(h.emu.v2_accounts().is_empty() && h.emu.v2_events().is_empty());
}
