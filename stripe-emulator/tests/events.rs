//! The Events API and the test controls that stage changes outside the API: Dashboard edits,
//! Connect onboarding, deauthorization, event ageing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::blocking::Client;
use serde_json::{Value, json};
use stripe_emulator::{
    Emulator, EmulatorConfig, Fault, Onboarding, PINNED_API_VERSION, PLATFORM_APPLICATION, Permission,
};

const KEY: &str = "sk_test_51EmulatorTestKey0123456789wxyz";
const RESTRICTED: &str = "rk_test_51RestrictedKey0123456789abcd";

struct Harness {
    emu: Emulator,
    http: Client,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    request_id: Option<String>,
    body: Value,
}

impl Resp {
    fn ok(self) -> Value {
        assert_eq!(self.status, 200, "{:?}", self.body);
        self.body
    }

    fn error(&self) -> (u16, &str, &str) {
        let e = &self.body["error"];
        (self.status, e["code"].as_str().unwrap_or(""), e["param"].as_str().unwrap_or(""))
    }
}

impl Harness {
    fn new() -> Harness {
        Harness {
            emu: Emulator::start("127.0.0.1:0", EmulatorConfig::default()).expect("emulator starts"),
            http: Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
        }
    }

    fn send_as(&self, key: &str, method: &str, path: &str, body: &str, idempotency_key: Option<&str>) -> Resp {
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
        req = req.header("Authorization", format!("Bearer {key}")).header("Stripe-Version", PINNED_API_VERSION);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let request_id = resp.headers().get("request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.json().unwrap();
        Resp { status, request_id, body }
    }

    fn send(&self, method: &str, path: &str, body: &str, idempotency_key: Option<&str>) -> Resp {
        self.send_as(KEY, method, path, body, idempotency_key)
    }

    fn post(&self, path: &str, body: &str) -> Value {
        self.send("POST", path, body, None).ok()
    }

    fn get(&self, path: &str, query: &str) -> Resp {
        self.send("GET", path, query, None)
    }

    fn events(&self, query: &str) -> Value {
        self.get("/v1/events", query).ok()
    }

    fn control(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.emu.base_url()));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.json().unwrap())
    }

    fn create_account(&self) -> String {
        let acct = self.post("/v1/accounts", "type=express&capabilities[transfers][requested]=true");
        acct["id"].as_str().unwrap().to_string()
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

fn types(list: &Value) -> Vec<String> {
    list["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The newest event (there must be one).
fn newest(h: &Harness) -> Value {
    h.emu.events().last().cloned().expect("an event was recorded")
}

#[test]
fn every_change_records_one_event_in_stripes_shape() {
    let h = Harness::new();
    let created = h.send("POST", "/v1/customers", "email=a%40b.co&metadata[user_id]=7", Some("key-1"));
    let request_id = created.request_id.clone().unwrap();
    let customer = created.ok();
    let id = customer["id"].as_str().unwrap();

    let events = h.emu.events();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert!(event["id"].as_str().unwrap().starts_with("evt_"), "{event}");
    assert_eq!(event["object"], "event");
    assert_eq!(event["type"], "customer.created");
    assert_eq!(event["api_version"], PINNED_API_VERSION);
    assert_eq!((event["livemode"].clone(), event["pending_webhooks"].clone()), (json!(false), json!(0)));
    assert!((event["created"].as_i64().unwrap() - now_secs()).abs() <= 2);
    assert_eq!(event["request"], json!({"id": request_id, "idempotency_key": "key-1"}));
    assert_eq!(event["data"], json!({"object": customer}), "no previous_attributes on create");
    assert!(event.get("account").is_none());

    // A replay, a refused request and an update changing nothing record nothing.
    let replay = h.send("POST", "/v1/customers", "email=a%40b.co&metadata[user_id]=7", Some("key-1"));
    assert_eq!(replay.ok()["id"], customer["id"]);
    assert_eq!(h.send("POST", "/v1/customers", "email=not-an-email", None).status, 400);
    h.post(&format!("/v1/customers/{id}"), "email=a%40b.co");
    assert_eq!(h.emu.events().len(), 1);

    let updated = h.post(&format!("/v1/customers/{id}"), "email=c%40d.co&metadata[plan]=pro");
    let event = newest(&h);
    assert_eq!(event["type"], "customer.updated");
    assert_eq!(event["data"]["object"], updated);
    assert_eq!(event["data"]["previous_attributes"], json!({"email": "a@b.co", "metadata": {"user_id": "7"}}));
    assert_eq!(event["request"]["idempotency_key"], Value::Null);
    assert!(event["request"]["id"].as_str().unwrap().starts_with("req_"));

    let delete = h.send("DELETE", &format!("/v1/customers/{id}"), "", None);
    let delete_request = delete.request_id.clone();
    delete.ok();
    let event = newest(&h);
    assert_eq!(event["type"], "customer.deleted");
    assert_eq!(event["data"], json!({"object": updated}), "the customer as it was");
    assert_eq!(event["request"]["id"], json!(delete_request));
    assert_eq!(h.send("DELETE", &format!("/v1/customers/{id}"), "", None).status, 404);
    assert_eq!(h.emu.events().len(), 3);

    // Connect accounts: created and updated announce account.updated, naming the account.
    let account = h.post("/v1/accounts", "type=express&email=shop%40x.co");
    let acct = account["id"].as_str().unwrap();
    let event = newest(&h);
    assert_eq!((event["type"].as_str(), event["account"].as_str()), (Some("account.updated"), Some(acct)));
    assert_eq!(event["data"], json!({"object": account}));
    let account = h.post(&format!("/v1/accounts/{acct}"), "metadata[user_id]=7");
    let event = newest(&h);
    assert_eq!(event["type"], "account.updated");
    assert_eq!(event["data"]["object"], account);
    assert_eq!(event["data"]["previous_attributes"], json!({"metadata": {}}));

    h.send("DELETE", &format!("/v1/accounts/{acct}"), "", None).ok();
    let event = newest(&h);
    assert_eq!(event["type"], "account.application.deauthorized");
    assert_eq!(event["account"], acct);
    assert_eq!(event["data"]["object"], json!({"id": PLATFORM_APPLICATION, "object": "application", "name": null}));
    assert_eq!(h.emu.events().len(), 6);

    // Retrieve one; reads record nothing.
    let got = h.get(&format!("/v1/events/{}", event["id"].as_str().unwrap()), "").ok();
    assert_eq!(got, event);
    let missing = h.get("/v1/events/evt_nope", "");
    assert_eq!(missing.error(), (404, "resource_missing", "id"));
    assert_eq!(missing.body["error"]["message"], "No such event: 'evt_nope'");
    assert_eq!(h.emu.events().len(), 6);

    // Reset forgets events.
    h.emu.reset();
    assert!(h.emu.events().is_empty());
    assert!(ids(&h.events("")).is_empty());
}

#[test]
fn a_retry_after_a_lost_response_or_a_stored_500_records_no_second_event() {
    let h = Harness::new();
    // The response is lost after the customer was created; the retry is a replay.
    h.emu.inject(Fault::drop_after().on("POST", "/v1/customers"));
    let lost = h
        .http
        .post(format!("{}/v1/customers", h.emu.base_url()))
        .header("Authorization", format!("Bearer {KEY}"))
        .header("Stripe-Version", PINNED_API_VERSION)
        .header("Idempotency-Key", "lost-1")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("name=A")
        .send();
    assert!(lost.is_err(), "the connection was dropped");
    assert_eq!(h.emu.events().len(), 1, "the customer was created");
    let retry = h.send("POST", "/v1/customers", "name=A", Some("lost-1")).ok();
    assert_eq!(h.emu.events().len(), 1);
    assert_eq!(h.emu.events()[0]["data"]["object"], retry);
    assert_eq!(h.emu.events()[0]["request"]["idempotency_key"], "lost-1");

    // Executed, then a 500 stored under the key: one event, none for the replayed 500.
    h.emu.inject(Fault::status(500).on("POST", "/v1/customers").after_execute().stored());
    assert_eq!(h.send("POST", "/v1/customers", "name=B", Some("stored-1")).status, 500);
    assert_eq!(h.send("POST", "/v1/customers", "name=B", Some("stored-1")).status, 500);
    assert_eq!(types(&h.events("")), ["customer.created", "customer.created"]);
}

#[test]
fn events_list_newest_first_with_cursors_and_has_more() {
    let h = Harness::new();
    for i in 0..12 {
        h.post("/v1/customers", &format!("name=c{i}"));
    }
    // All in the same second or two: the order is the recording order, newest first.
    let all: Vec<String> = h.emu.events().iter().rev().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    let page = h.events("");
    assert_eq!((page["object"].as_str(), page["url"].as_str()), (Some("list"), Some("/v1/events")));
    assert_eq!(ids(&page), all[..10], "default limit 10");
    assert_eq!(page["has_more"], true);
    let names: Vec<&str> =
        page["data"].as_array().unwrap().iter().map(|e| e["data"]["object"]["name"].as_str().unwrap()).collect();
    assert_eq!(names[..3], ["c11", "c10", "c9"]);

    let first = h.events("limit=5");
    assert_eq!((ids(&first), first["has_more"].clone()), (all[..5].to_vec(), json!(true)));
    let second = h.events(&format!("limit=5&starting_after={}", all[4]));
    assert_eq!((ids(&second), second["has_more"].clone()), (all[5..10].to_vec(), json!(true)));
    let last = h.events(&format!("limit=5&starting_after={}", all[9]));
    assert_eq!((ids(&last), last["has_more"].clone()), (all[10..].to_vec(), json!(false)));
    // ending_before walks back towards the newest, still presented newest first.
    let back = h.events(&format!("limit=3&ending_before={}", all[5]));
    assert_eq!((ids(&back), back["has_more"].clone()), (all[2..5].to_vec(), json!(true)));
    let top = h.events(&format!("limit=3&ending_before={}", all[2]));
    assert_eq!((ids(&top), top["has_more"].clone()), (all[..2].to_vec(), json!(false)));
    assert_eq!(ids(&h.events("limit=100")), all);

    let both = h.get("/v1/events", &format!("starting_after={}&ending_before={}", all[1], all[3]));
    assert_eq!((both.status, both.error().2), (400, "ending_before"));
    assert_eq!(h.get("/v1/events", "limit=0").error(), (400, "", "limit"));
    assert_eq!(h.get("/v1/events", "limit=101").error(), (400, "", "limit"));
    assert_eq!(h.get("/v1/events", "limit=ten").error(), (400, "parameter_invalid_integer", "limit"));
    let unknown = h.get("/v1/events", "customer=cus_1");
    assert_eq!(unknown.error(), (400, "parameter_unknown", "customer"));
    assert_eq!(h.get("/v1/events", "created[eq]=5").error(), (400, "parameter_unknown", "created[eq]"));
    assert_eq!(h.get("/v1/events/evt_x", "limit=1").error(), (400, "parameter_unknown", "limit"));
    let unknown_cursor = h.get("/v1/events", "starting_after=evt_unknown");
    assert_eq!(unknown_cursor.error(), (404, "resource_missing", "starting_after"));
    // Accepted, as Stripe lists them.
    assert_eq!(ids(&h.events("delivery_success=true&expand[0]=data.data.object&limit=2")), all[..2]);
    assert!(ids(&h.events("delivery_success=false")).is_empty(), "no webhook delivery ever failed");
}

#[test]
fn events_filter_by_types_wildcard_and_created() {
    let h = Harness::new();
    let customer = h.post("/v1/customers", "email=a%40b.co");
    let cus = customer["id"].as_str().unwrap();
    let acct = h.create_account();
    h.post(&format!("/v1/customers/{cus}"), "name=A");
    h.post(&format!("/v1/accounts/{acct}"), "metadata[k]=v");
    h.send("DELETE", &format!("/v1/customers/{cus}"), "", None).ok();
    let newest_first =
        ["customer.deleted", "account.updated", "customer.updated", "account.updated", "customer.created"];
    assert_eq!(types(&h.events("")), newest_first);

    let both = h.events("types[0]=customer.updated&types[1]=account.updated");
    assert_eq!(types(&both), ["account.updated", "customer.updated", "account.updated"]);
    assert_eq!(types(&h.events("types[]=customer.deleted")), ["customer.deleted"]);
    assert_eq!(types(&h.events("type=customer.*")), ["customer.deleted", "customer.updated", "customer.created"]);
    assert_eq!(types(&h.events("type=account.updated&limit=1")), ["account.updated"]);
    assert_eq!(h.events("type=account.updated&limit=1")["has_more"], true);
    assert!(types(&h.events("type=invoice.*")).is_empty());
    let exclusive = h.get("/v1/events", "type=customer.*&types[0]=account.updated");
    assert_eq!((exclusive.status, exclusive.error().2), (400, "types"));
    let too_many: Vec<String> = (0..21).map(|i| format!("types[{i}]=customer.updated")).collect();
    assert_eq!(h.get("/v1/events", &too_many.join("&")).error().0, 400);
    assert_eq!(h.get("/v1/events", "type[x]=y").error(), (400, "", "type"));

    // created: the first five are two days old once aged; later ones are not.
    h.emu.age_events(2);
    let later = h.post("/v1/customers", "email=later%40b.co");
    let now = now_secs();
    let day_ago = now - 86_400;
    assert_eq!(types(&h.events(&format!("created[gte]={day_ago}"))), ["customer.created"]);
    assert_eq!(h.events(&format!("created[gt]={day_ago}"))["data"][0]["data"]["object"], later);
    assert_eq!(ids(&h.events(&format!("created[lt]={day_ago}"))).len(), 5);
    assert_eq!(types(&h.events(&format!("created[lte]={day_ago}&type=customer.*"))).len(), 3);
    let old = h.emu.events()[0]["created"].as_i64().unwrap();
    assert!(old <= now - 2 * 86_400 && old > now - 2 * 86_400 - 10, "{old} vs {now}");
    let same_second = h.emu.events().iter().filter(|e| e["created"] == old).count();
    assert_eq!(ids(&h.events(&format!("created={old}&limit=100"))).len(), same_second);
    assert!(ids(&h.events(&format!("created[gt]={now}&created[lt]={day_ago}"))).is_empty());
}

#[test]
fn events_past_thirty_days_are_gone_and_a_cursor_on_one_is_resource_missing() {
    let h = Harness::new();
    h.post("/v1/customers", "name=old1");
    h.post("/v1/customers", "name=old2");
    let old: Vec<String> = h.emu.events().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    // 29 days: still there.
    let (status, _) = h.control("POST", "/_emulator/events/age", Some(json!({"days": 29})));
    assert_eq!(status, 200);
    assert_eq!(ids(&h.events("")).len(), 2);
    assert_eq!(ids(&h.events(&format!("starting_after={}", old[1]))), [old[0].clone()]);
    // One more day: past Stripe's 30 days.
    h.emu.age_events(1);
    let fresh = h.post("/v1/customers", "name=new");
    let listed = h.events("");
    assert_eq!(types(&listed), ["customer.created"]);
    assert_eq!(listed["data"][0]["data"]["object"], fresh);
    assert_eq!(listed["has_more"], false);
    assert_eq!(h.get(&format!("/v1/events/{}", old[1]), "").error(), (404, "resource_missing", "id"));
    // A poller resuming from an aged-out cursor is told it no longer exists, as for an unknown id.
    let stale = h.get("/v1/events", &format!("starting_after={}", old[1]));
    assert_eq!(stale.error(), (404, "resource_missing", "starting_after"));
    assert_eq!(stale.body["error"]["message"], format!("No such event: '{}'", old[1]));
    let stale = h.get("/v1/events", &format!("ending_before={}", old[0]));
    assert_eq!(stale.error(), (404, "resource_missing", "ending_before"));
    // The test handle and the control endpoint still show every recorded event.
    assert_eq!(h.emu.events().len(), 3);
    let (status, all) = h.control("GET", "/_emulator/events", None);
    assert_eq!((status, all.as_array().unwrap().len()), (200, 3));
    assert_eq!(all[0]["id"], old[0]);
    assert_eq!(h.control("POST", "/_emulator/events/age", Some(json!({"days": -1}))).0, 400);
    assert_eq!(h.control("POST", "/_emulator/events/age", Some(json!({"weeks": 1}))).0, 400);
    // The controls are not /v1 requests.
    assert!(h.emu.requests().iter().all(|r| r.path.starts_with("/v1/")));
}

#[test]
fn onboarding_lifecycle_records_account_updated_with_previous_attributes() {
    let h = Harness::new();
    let acct = h.create_account();
    let created = h.get(&format!("/v1/accounts/{acct}"), "").ok();
    // New accounts start with requirements due and nothing enabled.
    assert_eq!((created["charges_enabled"].clone(), created["payouts_enabled"].clone()), (json!(false), json!(false)));
    assert_eq!(created["details_submitted"], false);
    assert!(!created["requirements"]["currently_due"].as_array().unwrap().is_empty());
    assert_eq!(created["requirements"]["disabled_reason"], "requirements.past_due");
    let requests_before = h.emu.requests().len();

    let due = h.emu.set_onboarding(&acct, Onboarding::requirements_due()).unwrap();
    assert_eq!(due["requirements"]["currently_due"], json!(Onboarding::DEFAULT_DUE));
    assert_eq!(due["requirements"]["past_due"], json!(Onboarding::DEFAULT_DUE));
    assert_eq!(due["requirements"]["disabled_reason"], "requirements.past_due");
    let event = newest(&h);
    assert_eq!((event["type"].as_str(), event["account"].as_str()), (Some("account.updated"), Some(acct.as_str())));
    assert_eq!(event["data"]["object"], due);
    assert_eq!(event["data"]["previous_attributes"], json!({"requirements": created["requirements"]}));
    assert_eq!(event["request"], json!({"id": null, "idempotency_key": null}));

    // Not yet restricted: disabled_reason null, nothing past due (over HTTP this time).
    let (status, fresh) = h.control(
        "POST",
        &format!("/_emulator/accounts/{acct}/onboarding"),
        Some(json!({"state": "requirements_due", "currently_due": ["external_account"], "disabled_reason": null})),
    );
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["requirements"]["currently_due"], json!(["external_account"]));
    assert_eq!(fresh["requirements"]["past_due"], json!([]));
    assert_eq!(fresh["requirements"]["disabled_reason"], Value::Null);
    assert_eq!(newest(&h)["data"]["previous_attributes"], json!({"requirements": due["requirements"]}));

    let submitted = h.emu.set_onboarding(&acct, Onboarding::DetailsSubmitted).unwrap();
    assert_eq!(submitted["details_submitted"], true);
    assert_eq!(
        (submitted["charges_enabled"].clone(), submitted["payouts_enabled"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(submitted["requirements"]["currently_due"], json!([]));
    assert_eq!(submitted["requirements"]["disabled_reason"], "requirements.pending_verification");
    assert!(submitted["tos_acceptance"]["date"].is_i64());
    assert_eq!(submitted["capabilities"], json!({"transfers": "pending"}));
    let previous = newest(&h)["data"]["previous_attributes"].clone();
    assert_eq!(
        previous,
        json!({
            "details_submitted": false,
            "requirements": fresh["requirements"],
            "capabilities": {"transfers": "inactive"},
            "tos_acceptance": fresh["tos_acceptance"],
        })
    );

    let enabled = h.emu.set_onboarding(&acct, Onboarding::Enabled).unwrap();
    assert_eq!((enabled["charges_enabled"].clone(), enabled["payouts_enabled"].clone()), (json!(true), json!(true)));
    assert_eq!(enabled["requirements"]["currently_due"], json!([]));
    assert_eq!(enabled["requirements"]["pending_verification"], json!([]));
    assert_eq!(enabled["requirements"]["disabled_reason"], Value::Null);
    assert_eq!(enabled["capabilities"], json!({"transfers": "active"}));
    assert_eq!(
        newest(&h)["data"]["previous_attributes"],
        json!({
            "charges_enabled": false,
            "payouts_enabled": false,
            "requirements": submitted["requirements"],
            "capabilities": {"transfers": "pending"},
        })
    );
    assert_eq!(h.get(&format!("/v1/accounts/{acct}"), "").ok(), enabled);

    // An API update keeps the onboarding state the test set.
    let after_update = h.post(&format!("/v1/accounts/{acct}"), "metadata[user_id]=9&business_type=individual");
    assert_eq!(after_update["requirements"], enabled["requirements"]);
    assert_eq!(after_update["charges_enabled"], true);
    assert_eq!(newest(&h)["data"]["previous_attributes"], json!({"metadata": {}, "business_type": null}));

    let disabled = h.emu.set_onboarding(&acct, Onboarding::disabled("rejected.fraud")).unwrap();
    assert_eq!(
        (disabled["charges_enabled"].clone(), disabled["payouts_enabled"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(disabled["requirements"]["disabled_reason"], "rejected.fraud");
    assert_eq!(disabled["requirements"]["currently_due"], json!([]));
    assert_eq!(disabled["details_submitted"], true);
    let previous = newest(&h)["data"]["previous_attributes"].clone();
    assert_eq!(previous["charges_enabled"], true);
    assert_eq!(previous["payouts_enabled"], true);
    assert_eq!(previous["requirements"]["disabled_reason"], Value::Null);

    let (status, past_due) = h.control(
        "POST",
        &format!("/_emulator/accounts/{acct}/onboarding"),
        Some(json!({"state": "disabled", "disabled_reason": "requirements.past_due"})),
    );
    assert_eq!(status, 200);
    assert_eq!(past_due["requirements"]["currently_due"], json!(Onboarding::DEFAULT_DUE));
    assert_eq!(past_due["requirements"]["past_due"], json!(Onboarding::DEFAULT_DUE));
    assert_eq!(newest(&h)["data"]["previous_attributes"]["requirements"], disabled["requirements"]);

    // The same step twice changes nothing and records nothing.
    let count = h.emu.events().len();
    h.emu.set_onboarding(&acct, Onboarding::disabled("requirements.past_due")).unwrap();
    assert_eq!(h.emu.events().len(), count);

    // Listing by type shows the whole history, newest first: creation, 6 steps, 1 update.
    assert_eq!(ids(&h.events("type=account.updated&limit=100")).len(), 8);
    assert_eq!(h.emu.requests().len(), requests_before + 3, "controls are not logged; two GETs and a POST are");

    // Bad requests to the control.
    let path = format!("/_emulator/accounts/{acct}/onboarding");
    assert_eq!(h.control("POST", &path, Some(json!({"state": "launched"}))).0, 400);
    assert_eq!(h.control("POST", &path, Some(json!({"state": "disabled"}))).0, 400, "needs a reason");
    assert_eq!(h.control("POST", "/_emulator/accounts/acct_nope/onboarding", Some(json!({"state": "enabled"}))).0, 404);
    assert!(h.emu.set_onboarding("acct_nope", Onboarding::Enabled).is_err());
}

#[test]
fn deauthorization_removes_the_account_and_records_the_application() {
    let h = Harness::new();
    let acct = h.create_account();
    let other = h.create_account();
    let (status, _) = h.control("POST", &format!("/_emulator/accounts/{acct}/deauthorize"), None);
    assert_eq!(status, 200);
    let event = newest(&h);
    assert_eq!(event["type"], "account.application.deauthorized");
    assert_eq!(event["account"], acct.as_str());
    assert_eq!(event["data"]["object"]["object"], "application");
    assert_eq!(event["request"]["id"], Value::Null);
    assert_eq!(h.get(&format!("/v1/accounts/{acct}"), "").status, 403);
    assert_eq!(h.control("POST", &format!("/_emulator/accounts/{acct}/deauthorize"), None).0, 404);
    assert!(h.emu.deauthorize_account(&other));
    assert!(!h.emu.deauthorize_account(&other));
    assert!(h.emu.accounts().is_empty());
    assert_eq!(types(&h.events("type=account.application.*")).len(), 2);
}

#[test]
fn dashboard_email_change_and_delete_record_events_outside_the_request_log() {
    let h = Harness::new();
    let customer = h.post("/v1/customers", "email=old%40b.co&name=N");
    let id = customer["id"].as_str().unwrap().to_string();
    let logged = h.emu.requests().len();

    let updated = h.emu.dashboard_set_customer_email(&id, Some("new@b.co")).unwrap();
    assert_eq!(updated["email"], "new@b.co");
    let event = newest(&h);
    assert_eq!(event["type"], "customer.updated");
    assert_eq!(event["data"]["object"], updated);
    assert_eq!(event["data"]["previous_attributes"], json!({"email": "old@b.co"}));
    assert_eq!(event["request"], json!({"id": null, "idempotency_key": null}));
    assert_eq!(h.get(&format!("/v1/customers/{id}"), "").ok()["email"], "new@b.co");
    // The list's email filter sees it at once.
    assert_eq!(ids(&h.get("/v1/customers", "email=new%40b.co").ok()), vec![id.clone()]);
    // Unchanged: no event.
    let count = h.emu.events().len();
    h.emu.dashboard_set_customer_email(&id, Some("new@b.co")).unwrap();
    assert_eq!(h.emu.events().len(), count);

    // Over HTTP: clear it, then set it.
    let (status, cleared) = h.control("POST", &format!("/_emulator/customers/{id}"), Some(json!({"email": null})));
    assert_eq!((status, cleared["email"].clone()), (200, Value::Null));
    assert_eq!(newest(&h)["data"]["previous_attributes"], json!({"email": "new@b.co"}));
    let (status, _) = h.control("POST", &format!("/_emulator/customers/{id}"), Some(json!({"email": "x@b.co"})));
    assert_eq!(status, 200);
    assert_eq!(newest(&h)["data"]["previous_attributes"], json!({"email": null}));
    assert_eq!(h.control("POST", &format!("/_emulator/customers/{id}"), Some(json!({"name": "x"}))).0, 400);
    assert_eq!(h.control("POST", "/_emulator/customers/cus_nope", Some(json!({"email": null}))).0, 404);

    let (status, stub) = h.control("DELETE", &format!("/_emulator/customers/{id}"), None);
    assert_eq!((status, stub), (200, json!({"id": id, "object": "customer", "deleted": true})));
    let event = newest(&h);
    assert_eq!(event["type"], "customer.deleted");
    assert_eq!(event["data"]["object"]["email"], "x@b.co");
    assert_eq!(event["request"]["id"], Value::Null);
    assert_eq!(h.get(&format!("/v1/customers/{id}"), "").ok()["deleted"], true);
    assert_eq!(h.control("DELETE", &format!("/_emulator/customers/{id}"), None).0, 404);

    let other = h.post("/v1/customers", "name=O")["id"].as_str().unwrap().to_string();
    assert!(h.emu.dashboard_delete_customer(&other));
    assert!(!h.emu.dashboard_delete_customer(&other));
    assert!(h.emu.dashboard_set_customer_email(&other, Some("a@b.co")).is_err());
    assert_eq!(types(&h.events("type=customer.deleted")).len(), 2);
    assert!(h.emu.customers().is_empty());
    // Only the /v1 calls made here are logged: the customer creation and the reads.
    let v1_after: Vec<_> = h.emu.requests()[logged..].iter().map(|r| r.method.clone()).collect();
    assert!(v1_after.iter().all(|m| m == "GET" || m == "POST"), "{v1_after:?}");
    assert_eq!(h.emu.requests()[logged..].iter().filter(|r| r.method == "POST").count(), 1);
}

#[test]
fn reading_events_needs_the_event_read_permission() {
    let h = Harness::new();
    h.post("/v1/customers", "name=A");
    h.emu.set_restricted_key(RESTRICTED, [Permission::CustomerWrite]).unwrap();
    let refused = h.send_as(RESTRICTED, "GET", "/v1/events", "", None);
    assert_eq!(refused.status, 403);
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("'rak_event_read'"), "{:?}", refused.body);
    h.emu.set_restricted_key(RESTRICTED, [Permission::EventRead]).unwrap();
    let listed = h.send_as(RESTRICTED, "GET", "/v1/events", "", None).ok();
    assert_eq!(types(&listed), ["customer.created"]);
    assert_eq!(Permission::parse("rak_event_read"), Some(Permission::EventRead));
}

impl Harness {
    /// A `/v1` GET answered as bytes, which need not be JSON.
    fn get_bytes(&self, path: &str, query: &str) -> (u16, Vec<u8>) {
        let url = format!("{}{path}?{query}", self.emu.base_url());
        let resp = self
            .http
            .get(url)
            .header("Authorization", format!("Bearer {KEY}"))
            .header("Stripe-Version", PINNED_API_VERSION)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.bytes().unwrap().to_vec())
    }

    /// The ids of a list answer read leniently (a byte that is not UTF-8, and the lone
    /// surrogate these tests write, as U+FFFD).
    fn lenient_ids(&self, query: &str) -> Vec<String> {
        let (status, bytes) = self.get_bytes("/v1/events", query);
        assert_eq!(status, 200);
        ids(&serde_json::from_str(&String::from_utf8_lossy(&bytes).replace(r"\ud800", r"\ufffd")).unwrap())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One hostile event as a test writes it: `payload` spliced into an otherwise ordinary event.
fn raw_event(id: &str, created: i64, payload: &[u8]) -> Vec<u8> {
    let head = format!(r#"{{"id": "{id}", "object": "event", "type": "customer.updated", "created": {created}, "#)
        + r#""data": {"object": {"id": "cus_raw", "object": "customer", "email": ""#;
    [head.as_bytes(), payload, br#""}, "previous_attributes": {"email": null}}}"#].concat()
}

#[test]
fn a_raw_event_is_served_as_its_exact_bytes_in_its_place_in_the_list() {
    let h = Harness::new();
    h.post("/v1/customers", "name=A");
    let now = now_secs();
    let not_utf8 = raw_event("evt_raw1", now, b"a\xffb@example.com");
    h.emu.push_raw_event("evt_raw1", "customer.updated", None, not_utf8.clone()).unwrap();
    h.post("/v1/customers", "name=B");
    let [first, _, last] = &h.emu.events()[..] else { panic!("three events") };
    let (first, last) = (first["id"].as_str().unwrap(), last["id"].as_str().unwrap());

    // Listed newest first in its place; its bytes exactly, once.
    let (status, page) = h.get_bytes("/v1/events", "");
    assert_eq!(status, 200);
    assert!(contains(&page, &not_utf8) && !contains(&page, b"stripe-emulator-raw-event"));
    assert_eq!(h.lenient_ids(""), [last, "evt_raw1", first]);
    // A cursor, and filtered by its type and created like any other.
    assert_eq!(h.lenient_ids("ending_before=evt_raw1"), [last]);
    assert_eq!(h.lenient_ids("starting_after=evt_raw1"), [first]);
    assert_eq!(h.lenient_ids("type=customer.updated"), ["evt_raw1"]);
    assert_eq!(h.lenient_ids("types[0]=customer.created"), [last, first]);
    // Retrieved alone: the same bytes.
    let (status, alone) = h.get_bytes("/v1/events/evt_raw1", "");
    assert_eq!((status, alone.trim_ascii_end()), (200, &not_utf8[..]));
    // The test's view shows a stand-in.
    assert_eq!(
        h.emu.events()[1],
        json!({"id": "evt_raw1", "object": "event", "type": "customer.updated", "created": now, "raw": true})
    );
    // An id is one event's.
    assert!(h.emu.push_raw_event("evt_raw1", "customer.updated", None, vec![]).is_err());
    assert!(h.emu.push_raw_event(first, "customer.updated", None, vec![]).is_err());

    // An escaped lone surrogate, a NUL and a 3,000-character id, each one event among others.
    let old = now - 600;
    h.emu
        .push_raw_event("evt_surrogate", "customer.updated", Some(old), raw_event("evt_surrogate", old, br"\ud800"))
        .unwrap();
    h.emu.push_raw_event("evt_nul", "customer.updated", Some(old), raw_event("evt_nul", old, br"a\u0000b")).unwrap();
    let huge = format!("evt_{}", "x".repeat(3000));
    h.emu.push_raw_event(&huge, "customer.updated", Some(old), raw_event(&huge, old, b"h@example.com")).unwrap();
    let (_, page) = h.get_bytes("/v1/events", "type=customer.updated");
    assert!(contains(&page, br#""email": "\ud800"}"#) && contains(&page, br#""email": "a\u0000b"}"#));
    assert_eq!(h.lenient_ids("type=customer.updated"), [huge.as_str(), "evt_nul", "evt_surrogate", "evt_raw1"]);
    // Its own `created` counts, not the time it was pushed.
    assert_eq!(h.lenient_ids(&format!("type=customer.updated&created[lt]={now}")).len(), 3);
    let (status, alone) = h.get_bytes(&format!("/v1/events/{huge}"), "");
    assert_eq!(status, 200);
    assert!(alone.starts_with(format!(r#"{{"id": "{huge}""#).as_bytes()));

    // Over HTTP: the body is the event, the query names it.
    let url = |query: &str| format!("{}/_emulator/events/raw?{query}", h.emu.base_url());
    let bytes = raw_event("evt_http", now, b"\xc3\x28");
    let pushed =
        h.http.post(url(&format!("id=evt_http&type=customer.deleted&created={now}"))).body(bytes.clone()).send();
    assert_eq!(pushed.unwrap().status().as_u16(), 200);
    assert_eq!(h.lenient_ids("type=customer.deleted"), ["evt_http"]);
    assert!(contains(&h.get_bytes("/v1/events/evt_http", "").1, &bytes));
    for bad in [
        "id=evt_http&type=customer.deleted",
        "type=customer.deleted",
        "id=evt_2&type=x&created=soon",
        "id=e&type=x&k=v",
    ] {
        let refused = h.http.post(url(bad)).body("{}").send().unwrap();
        assert_eq!(refused.status().as_u16(), 400, "{bad}");
    }

    // Reset forgets them.
    h.emu.reset();
    assert!(h.lenient_ids("").is_empty());
    h.emu.push_raw_event("evt_raw1", "customer.updated", None, not_utf8).unwrap();
}

#[test]
fn a_pinned_event_clock_puts_changes_in_one_second() {
    let h = Harness::new();
    let id = h.post("/v1/customers", "email=a%40b.co")["id"].as_str().unwrap().to_string();
    let pinned = now_secs() - 100;
    h.emu.set_event_clock(Some(pinned));
    h.emu.dashboard_set_customer_email(&id, Some("b@b.co")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    h.emu.dashboard_set_customer_email(&id, Some("c@b.co")).unwrap();
    h.post(&format!("/v1/customers/{id}"), "email=d%40b.co");
    let created: Vec<i64> = h.emu.events().iter().map(|e| e["created"].as_i64().unwrap()).collect();
    assert_eq!(created[1..], [pinned, pinned, pinned]);
    assert!(created[0] > pinned, "events before the pin keep their time");
    // Objects keep the real time.
    let customer = h.post("/v1/customers", "email=e%40b.co");
    assert!(customer["created"].as_i64().unwrap() > pinned);
    assert_eq!(newest(&h)["created"], pinned);
    // A raw event without a time of its own takes the pinned one.
    h.emu.push_raw_event("evt_pinned", "customer.updated", None, b"{}".to_vec()).unwrap();
    assert_eq!(newest(&h)["created"], pinned);

    h.emu.set_event_clock(None);
    h.emu.dashboard_set_customer_email(&id, Some("f@b.co")).unwrap();
    assert!(newest(&h)["created"].as_i64().unwrap() > pinned);

    // Over HTTP.
    assert_eq!(h.control("POST", "/_emulator/events/clock", Some(json!({"created": pinned}))).0, 200);
    h.emu.dashboard_set_customer_email(&id, Some("g@b.co")).unwrap();
    assert_eq!(newest(&h)["created"], pinned);
    assert_eq!(h.control("POST", "/_emulator/events/clock", Some(json!({"created": null}))).0, 200);
    h.emu.dashboard_set_customer_email(&id, Some("h@b.co")).unwrap();
    assert!(newest(&h)["created"].as_i64().unwrap() > pinned);
    assert_eq!(h.control("POST", "/_emulator/events/clock", Some(json!({"at": 1}))).0, 400);
    assert_eq!(h.control("POST", "/_emulator/events/clock", Some(json!({"created": "soon"}))).0, 400);

    // Reset unpins it.
    h.emu.set_event_clock(Some(pinned));
    h.emu.reset();
    h.post("/v1/customers", "name=A");
    assert!(newest(&h)["created"].as_i64().unwrap() > pinned);
}

#[test]
fn a_dashboard_email_may_be_any_string_a_nul_included() {
    let h = Harness::new();
    let id = h.post("/v1/customers", "email=a%40b.co")["id"].as_str().unwrap().to_string();
    let updated = h.emu.dashboard_set_customer_email(&id, Some("a\0b@example.com")).unwrap();
    assert_eq!(updated["email"], "a\0b@example.com");
    let (_, page) = h.get_bytes("/v1/events", "type=customer.updated");
    assert!(contains(&page, br#""email": "a\u0000b@example.com""#));
    let (status, _) = h.control("POST", &format!("/_emulator/customers/{id}"), Some(json!({"email": "no at sign\0"})));
    assert_eq!(status, 200);
    assert_eq!(h.events("type=customer.updated")["data"][0]["data"]["object"]["email"], "no at sign\0");
}
