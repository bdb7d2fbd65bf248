//! Accounts v2 (`/v2/core/accounts`): one Account per profile, with configurations — `customer`
//! (it can be charged), `merchant` (a connected account that takes payments), `recipient` (it
//! receives transfers) — made, given configurations, read, listed and closed.
//!
//! Parameters are those of the official SDK's types for the pinned version (stripe-node 23.1.0,
//! `ApiVersion = '2026-10-28.endive'`, `esm/resources/V2/Core/Accounts.d.ts`:
//! `AccountCreateParams`, `AccountUpdateParams`, `AccountRetrieveParams`, `AccountListParams`,
//! `AccountCloseParams`), and what comes back is read from its `Account` type.

use serde_json::{Map, Value, json};

use super::pages::{NextPage, Page, entries, next_page_of};
use super::time::unix_millis;
use super::wire::{Query, V2Client, array_param};
use crate::stripe::error::StripeError;
use crate::stripe::objects::{StripeObject, is_stripe_id, object_id};
use crate::stripe::response::Response;

/// The Accounts v2 collection.
pub const ACCOUNTS_PATH: &str = "/v2/core/accounts";

/// An Account's configurations (`Account.AppliedConfiguration`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Configuration {
    /// The Account can be charged, subscribed, invoiced (`customer_account`).
    Customer,
    /// A connected account that takes payments (merchant of record).
    Merchant,
    /// It receives transfers into its Stripe balance.
    Recipient,
}

impl Configuration {
    pub const ALL: [Configuration; 3] = [Configuration::Customer, Configuration::Merchant, Configuration::Recipient];

    pub fn as_str(self) -> &'static str {
        match self {
            Configuration::Customer => "customer",
            Configuration::Merchant => "merchant",
            Configuration::Recipient => "recipient",
        }
    }

    pub fn parse(name: &str) -> Option<Configuration> {
        Configuration::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// What `include` needs to name for this configuration to come back (`configuration.merchant`).
    pub fn include(self) -> Include {
        match self {
            Configuration::Customer => Include::ConfigurationCustomer,
            Configuration::Merchant => Include::ConfigurationMerchant,
            Configuration::Recipient => Include::ConfigurationRecipient,
        }
    }
}

/// A part of an Account that v2 answers `null` unless asked for by `include`
/// (docs.stripe.com/api/include_dependent_response_values: "Some API v2 responses contain null
/// values for certain properties by default, regardless of their actual values"). The values of
/// `AccountCreateParams.Include` (the same for update and retrieve).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Include {
    ConfigurationCustomer,
    ConfigurationMerchant,
    ConfigurationRecipient,
    Defaults,
    FutureRequirements,
    Identity,
    Requirements,
}

impl Include {
    pub fn as_str(self) -> &'static str {
        match self {
            Include::ConfigurationCustomer => "configuration.customer",
            Include::ConfigurationMerchant => "configuration.merchant",
            Include::ConfigurationRecipient => "configuration.recipient",
            Include::Defaults => "defaults",
            Include::FutureRequirements => "future_requirements",
            Include::Identity => "identity",
            Include::Requirements => "requirements",
        }
    }
}

/// What readiness reads ([`super::readiness::V2Readiness`]): the merchant and recipient
/// configurations (their capabilities' statuses) and the requirements.
pub const READINESS_INCLUDE: [Include; 3] =
    [Include::ConfigurationMerchant, Include::ConfigurationRecipient, Include::Requirements];

/// What the extension reads back from a create or an update: readiness's parts and the customer
/// configuration (it is what makes the Account chargeable). `contact_email`, `metadata`,
/// `applied_configurations` and `closed` come back without being asked for.
pub const READ_BACK_INCLUDE: [Include; 4] = [
    Include::ConfigurationCustomer,
    Include::ConfigurationMerchant,
    Include::ConfigurationRecipient,
    Include::Requirements,
];

/// Which Stripe Dashboard the Account's owner gets (`Account.Dashboard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dashboard {
    /// The Express Dashboard: what v1's `controller[stripe_dashboard][type]=express` gives.
    #[default]
    Express,
    Full,
    None,
}

impl Dashboard {
    pub fn as_str(self) -> &'static str {
        match self {
            Dashboard::Express => "express",
            Dashboard::Full => "full",
            Dashboard::None => "none",
        }
    }

    pub fn parse(name: &str) -> Option<Dashboard> {
        [Dashboard::Express, Dashboard::Full, Dashboard::None].into_iter().find(|d| d.as_str() == name)
    }
}

/// Who collects Stripe's fees from the Account (`defaults.responsibilities.fees_collector`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FeesCollector {
    /// The platform: v1's `controller[fees][payer]=application`.
    #[default]
    Application,
    ApplicationCustom,
    ApplicationExpress,
    Stripe,
}

impl FeesCollector {
    pub fn as_str(self) -> &'static str {
        match self {
            FeesCollector::Application => "application",
            FeesCollector::ApplicationCustom => "application_custom",
            FeesCollector::ApplicationExpress => "application_express",
            FeesCollector::Stripe => "stripe",
        }
    }

    pub fn parse(name: &str) -> Option<FeesCollector> {
        [
            FeesCollector::Application,
            FeesCollector::ApplicationCustom,
            FeesCollector::ApplicationExpress,
            FeesCollector::Stripe,
        ]
        .into_iter()
        .find(|f| f.as_str() == name)
    }
}

/// Who is liable when the Account cannot pay back a negative balance
/// (`defaults.responsibilities.losses_collector`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LossesCollector {
    /// The platform: v1's `controller[losses][payments]=application`.
    #[default]
    Application,
    Stripe,
}

impl LossesCollector {
    pub fn as_str(self) -> &'static str {
        match self {
            LossesCollector::Application => "application",
            LossesCollector::Stripe => "stripe",
        }
    }

    pub fn parse(name: &str) -> Option<LossesCollector> {
        [LossesCollector::Application, LossesCollector::Stripe].into_iter().find(|l| l.as_str() == name)
    }
}

/// `defaults.responsibilities`, both required when given (`AccountCreateParams.Defaults
/// .Responsibilities`). The default, the platform for both, with [`Dashboard::Express`], is the
/// Express equivalent of v1's controller properties (`accounts::EXPRESS_CONTROLLER`); v1's fourth,
/// `requirement_collection=stripe`, has no create parameter in v2 (`requirements_collector` is
/// read-only on the Account) and is what Stripe sets for an Express Dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Responsibilities {
    pub fees_collector: FeesCollector,
    pub losses_collector: LossesCollector,
}

impl Responsibilities {
    fn to_json(self) -> Value {
        json!({"fees_collector": self.fees_collector.as_str(), "losses_collector": self.losses_collector.as_str()})
    }
}

/// The merchant capabilities a request can ask for (`AccountCreateParams.Configuration.Merchant
/// .Capabilities`, `AccountUpdateParams` alike).
pub const MERCHANT_CAPABILITIES: [&str; 48] = [
    "ach_debit_payments",
    "acss_debit_payments",
    "affirm_payments",
    "afterpay_clearpay_payments",
    "alma_payments",
    "amazon_pay_payments",
    "au_becs_debit_payments",
    "bacs_debit_payments",
    "bancontact_payments",
    "blik_payments",
    "blik_recurring_payments",
    "boleto_payments",
    "card_payments",
    "cartes_bancaires_payments",
    "cashapp_payments",
    "eps_payments",
    "fpx_payments",
    "gb_bank_transfer_payments",
    "grabpay_payments",
    "ideal_payments",
    "jcb_payments",
    "jp_bank_transfer_payments",
    "kakao_pay_payments",
    "klarna_payments",
    "konbini_payments",
    "kr_card_payments",
    "link_payments",
    "mobilepay_payments",
    "multibanco_payments",
    "mx_bank_transfer_payments",
    "naver_pay_payments",
    "oxxo_payments",
    "p24_payments",
    "pay_by_bank_payments",
    "payco_payments",
    "paynow_payments",
    "promptpay_payments",
    "revolut_pay_payments",
    "samsung_pay_payments",
    "satispay_payments",
    "sepa_bank_transfer_payments",
    "sepa_debit_payments",
    "sequra_payments",
    "sunbit_payments",
    "swish_payments",
    "twint_payments",
    "us_bank_transfer_payments",
    "zip_payments",
];

/// The recipient capabilities a request can ask for, as dotted paths
/// (`AccountCreateParams.Configuration.Recipient.Capabilities`: `bank_accounts.*`, `cards`,
/// `stripe_balance.stripe_transfers`, the last being "Enables this Account to receive
/// /v1/transfers into their Stripe Balance").
pub const RECIPIENT_CAPABILITIES: [&str; 9] = [
    "bank_accounts.ach",
    "bank_accounts.fedwire",
    "bank_accounts.fps",
    "bank_accounts.local",
    "bank_accounts.rtp",
    "bank_accounts.sepa",
    "bank_accounts.swift",
    "cards",
    "stripe_balance.stripe_transfers",
];

/// What the seed asks of a connected account: card payments as a merchant...
pub const DEFAULT_MERCHANT_CAPABILITIES: [&str; 1] = ["card_payments"];
/// ...and transfers as a recipient (v1's `capabilities[transfers][requested]=true`).
pub const DEFAULT_RECIPIENT_CAPABILITIES: [&str; 1] = ["stripe_balance.stripe_transfers"];

/// Capabilities to request on a configuration, each a dotted path from its `capabilities` hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities(Vec<String>);

impl Capabilities {
    /// Merchant capabilities, each one of [`MERCHANT_CAPABILITIES`]; `Err` names the first that is not.
    pub fn merchant<S: AsRef<str>>(names: &[S]) -> Result<Capabilities, String> {
        Capabilities::checked(names, &MERCHANT_CAPABILITIES, "merchant")
    }

    /// Recipient capabilities, each one of [`RECIPIENT_CAPABILITIES`].
    pub fn recipient<S: AsRef<str>>(names: &[S]) -> Result<Capabilities, String> {
        Capabilities::checked(names, &RECIPIENT_CAPABILITIES, "recipient")
    }

    /// [`DEFAULT_MERCHANT_CAPABILITIES`].
    pub fn default_merchant() -> Capabilities {
        Capabilities(DEFAULT_MERCHANT_CAPABILITIES.map(String::from).to_vec())
    }

    /// [`DEFAULT_RECIPIENT_CAPABILITIES`].
    pub fn default_recipient() -> Capabilities {
        Capabilities(DEFAULT_RECIPIENT_CAPABILITIES.map(String::from).to_vec())
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    fn checked<S: AsRef<str>>(names: &[S], known: &[&str], configuration: &str) -> Result<Capabilities, String> {
        let mut chosen: Vec<String> = Vec::new();
        for name in names {
            let name = name.as_ref();
            if !known.contains(&name) {
                return Err(format!("{name:?} is not a {configuration} capability Stripe's v2 Accounts take"));
            }
            if !chosen.iter().any(|c| c == name) {
                chosen.push(name.to_string());
            }
        }
        if chosen.is_empty() {
            return Err(format!("no {configuration} capability named"));
        }
        Ok(Capabilities(chosen))
    }

    /// `{"capabilities": {"card_payments": {"requested": true}}}`, paths nested.
    fn configuration_json(&self) -> Value {
        let mut capabilities = Map::new();
        for path in &self.0 {
            let mut level = &mut capabilities;
            let (last, parents) = path.rsplit_once('.').map_or((path.as_str(), None), |(p, l)| (l, Some(p)));
            for key in parents.into_iter().flat_map(|p| p.split('.')) {
                level = level
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("capability paths nest hashes");
            }
            level.insert(last.to_string(), json!({"requested": true}));
        }
        json!({"capabilities": capabilities})
    }
}

/// What we send to create an Account for a profile (`POST /v2/core/accounts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccount {
    pub user_id: String,
    pub contact_email: String,
    pub display_name: Option<String>,
    /// Merchant at creation (else added later, [`AccountUpdate::add_merchant`]).
    pub merchant: Option<Capabilities>,
    /// Recipient at creation.
    pub recipient: Option<Capabilities>,
    pub dashboard: Dashboard,
    pub responsibilities: Responsibilities,
    /// What comes back filled in ([`READ_BACK_INCLUDE`] by default).
    pub include: Vec<Include>,
}

impl NewAccount {
    /// A customer-configured Account: Express Dashboard, the platform collecting fees and liable
    /// for losses, read back as [`READ_BACK_INCLUDE`].
    pub fn new(user_id: impl Into<String>, contact_email: impl Into<String>) -> NewAccount {
        NewAccount {
            user_id: user_id.into(),
            contact_email: contact_email.into(),
            display_name: None,
            merchant: None,
            recipient: None,
            dashboard: Dashboard::default(),
            responsibilities: Responsibilities::default(),
            include: READ_BACK_INCLUDE.to_vec(),
        }
    }

    /// The JSON body. `configuration.customer` is sent as an empty hash: every field of
    /// `AccountCreateParams.Configuration.Customer` is optional, and naming the configuration is
    /// what applies it.
    pub fn body(&self) -> Value {
        let mut configuration = Map::new();
        configuration.insert("customer".into(), json!({}));
        if let Some(merchant) = &self.merchant {
            configuration.insert("merchant".into(), merchant.configuration_json());
        }
        if let Some(recipient) = &self.recipient {
            configuration.insert("recipient".into(), recipient.configuration_json());
        }
        let mut body = json!({
            "contact_email": self.contact_email,
            "configuration": configuration,
            "dashboard": self.dashboard.as_str(),
            "defaults": {"responsibilities": self.responsibilities.to_json()},
            "metadata": {"user_id": self.user_id},
        });
        if let Some(name) = &self.display_name {
            body["display_name"] = json!(name);
        }
        if !self.include.is_empty() {
            body["include"] = include_json(&self.include);
        }
        body
    }
}

/// What we send to change an Account (`POST /v2/core/accounts/{id}`): configurations added,
/// the contact email, metadata (a key set to `null` is removed: the SDK's `MetadataParam` is
/// `string | number | null`, v1's `""` having no meaning for removal in a JSON body), and what to
/// read back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccountUpdate {
    body: Map<String, Value>,
}

impl AccountUpdate {
    pub fn new() -> AccountUpdate {
        AccountUpdate::default()
    }

    /// Adds the merchant configuration with `capabilities` requested. Requirements already
    /// collected for the Account are not asked again (docs.stripe.com/connect/accounts-v2).
    pub fn add_merchant(self, capabilities: &Capabilities) -> AccountUpdate {
        self.configuration(Configuration::Merchant, capabilities.configuration_json())
    }

    /// Adds the recipient configuration with `capabilities` requested.
    pub fn add_recipient(self, capabilities: &Capabilities) -> AccountUpdate {
        self.configuration(Configuration::Recipient, capabilities.configuration_json())
    }

    pub fn contact_email(mut self, email: impl Into<String>) -> AccountUpdate {
        self.body.insert("contact_email".into(), json!(email.into()));
        self
    }

    pub fn dashboard(mut self, dashboard: Dashboard) -> AccountUpdate {
        self.body.insert("dashboard".into(), json!(dashboard.as_str()));
        self
    }

    pub fn responsibilities(mut self, responsibilities: Responsibilities) -> AccountUpdate {
        let defaults = self.body.entry("defaults").or_insert_with(|| json!({}));
        defaults["responsibilities"] = responsibilities.to_json();
        self
    }

    pub fn set_metadata(self, key: impl Into<String>, value: impl Into<String>) -> AccountUpdate {
        self.metadata(key.into(), json!(value.into()))
    }

    /// Removes the metadata `key` (`"key": null`).
    pub fn remove_metadata(self, key: impl Into<String>) -> AccountUpdate {
        self.metadata(key.into(), Value::Null)
    }

    pub fn include(mut self, include: &[Include]) -> AccountUpdate {
        self.body.insert("include".into(), include_json(include));
        self
    }

    pub fn body(&self) -> Value {
        Value::Object(self.body.clone())
    }

    fn configuration(mut self, configuration: Configuration, value: Value) -> AccountUpdate {
        let configurations = self.body.entry("configuration").or_insert_with(|| json!({}));
        configurations[configuration.as_str()] = value;
        self
    }

    fn metadata(mut self, key: String, value: Value) -> AccountUpdate {
        let metadata = self.body.entry("metadata").or_insert_with(|| json!({}));
        metadata[key] = value;
        self
    }
}

/// `include` as a body field (in a POST body it is a JSON array; in a GET query, `include[0]`).
fn include_json(include: &[Include]) -> Value {
    Value::Array(include.iter().map(|i| json!(i.as_str())).collect())
}

/// The parts of a v2 Account the extension uses, as an answer or a list page gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub contact_email: Option<String>,
    pub display_name: Option<String>,
    pub metadata_user_id: Option<String>,
    /// `applied_configurations`, those this client knows.
    pub applied_configurations: Vec<Configuration>,
    /// `closed`: a closed Account answers with "only limited, non-personally-identifiable
    /// information" (docs.stripe.com/changelog/clover/2025-10-29/return-closed-v2-accounts).
    pub closed: bool,
    /// `created` (RFC 3339) in Unix milliseconds; `None` if absent or unreadable.
    pub created_ms: Option<i64>,
}

impl Account {
    /// Reads an Account object; `None` without a Stripe id (or if `object` says it is something
    /// else).
    pub fn from_json(body: &Value) -> Option<Account> {
        if body.get("object").is_some_and(|o| o != "v2.core.account") {
            return None;
        }
        let id = body.get("id")?.as_str().filter(|id| is_stripe_id(id))?.to_string();
        let text = |pointer: &str| body.pointer(pointer).and_then(Value::as_str).map(str::to_string);
        let applied =
            body.get("applied_configurations").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        Some(Account {
            id,
            contact_email: text("/contact_email"),
            display_name: text("/display_name"),
            metadata_user_id: text("/metadata/user_id"),
            applied_configurations: applied.iter().filter_map(Value::as_str).filter_map(Configuration::parse).collect(),
            closed: body.get("closed").and_then(Value::as_bool) == Some(true),
            created_ms: body.get("created").and_then(Value::as_str).and_then(unix_millis),
        })
    }

    /// The same, as the extension's v1 code holds a customer or an account: id, email (the
    /// contact email), `metadata.user_id`.
    pub fn summary(&self) -> StripeObject {
        StripeObject {
            id: self.id.clone(),
            email: self.contact_email.clone(),
            metadata_user_id: self.metadata_user_id.clone(),
        }
    }

    pub fn has(&self, configuration: Configuration) -> bool {
        self.applied_configurations.contains(&configuration)
    }
}

/// The Account a successful answer carries.
fn account_in(response: Response) -> Result<(Account, Response), StripeError> {
    match Account::from_json(&response.body) {
        Some(account) => Ok((account, response)),
        None => Err(StripeError::InvalidResponse {
            status: response.status,
            request_id: response.request_id,
            message: "the body is not a v2 Account with an id".into(),
        }),
    }
}

/// Which Accounts a list reads (`AccountListParams`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountsFilter {
    /// Page size.
    pub limit: u32,
    /// Only Accounts that have all of these ("Filter only accounts that have all of the
    /// configurations specified").
    pub applied_configurations: Vec<Configuration>,
    /// `None`: Stripe's default, which "returns only Accounts that are not closed".
    pub closed: Option<bool>,
}

impl Default for AccountsFilter {
    fn default() -> AccountsFilter {
        AccountsFilter { limit: 100, applied_configurations: Vec::new(), closed: None }
    }
}

impl AccountsFilter {
    pub fn query(&self) -> Query {
        let mut query: Query = vec![("limit".into(), self.limit.to_string())];
        let applied: Vec<&str> = self.applied_configurations.iter().map(|c| c.as_str()).collect();
        query.extend(array_param("applied_configurations", &applied));
        if let Some(closed) = self.closed {
            query.push(("closed".into(), closed.to_string()));
        }
        query
    }
}

/// One entry of a page of Accounts.
#[derive(Clone, Debug, PartialEq)]
pub enum ListedAccount {
    Account(Account),
    /// An entry with no usable id: it cannot be told apart from any other.
    Unreadable,
}

impl V2Client {
    /// `POST /v2/core/accounts`: an Account for the profile ([`NewAccount::body`]). A retry must
    /// send the same body under the same key: v2 completes a failed first attempt under it, and
    /// refuses another body (`idempotency_error`; see `policy::classify_v2`).
    pub async fn create_account(
        &self,
        account: &NewAccount,
        idempotency_key: &str,
    ) -> Result<(Account, Response), StripeError> {
        account_in(self.post(ACCOUNTS_PATH, &account.body(), Some(idempotency_key)).await?)
    }

    /// `POST /v2/core/accounts/{id}`: adds configurations, changes the contact email or metadata.
    pub async fn update_account(
        &self,
        id: &str,
        update: &AccountUpdate,
        idempotency_key: &str,
    ) -> Result<(Account, Response), StripeError> {
        let path = format!("{ACCOUNTS_PATH}/{}", object_id(id)?);
        account_in(self.post(&path, &update.body(), Some(idempotency_key)).await?)
    }

    /// `GET /v2/core/accounts/{id}` with `include` (`include[0]=…` in the query), the whole
    /// answer (for readiness, [`READINESS_INCLUDE`]). A closed Account still answers, `closed:
    /// true`; an unknown one 404.
    pub async fn retrieve_account(&self, id: &str, include: &[Include]) -> Result<Value, StripeError> {
        let path = format!("{ACCOUNTS_PATH}/{}", object_id(id)?);
        let include: Vec<&str> = include.iter().map(|i| i.as_str()).collect();
        Ok(self.get(&path, &array_param("include", &include)).await?.body)
    }

    /// `POST /v2/core/accounts/{id}/close` with `applied_configurations`: "Configurations on the
    /// Account to be closed. All configurations on the Account must be passed in for this request
    /// to succeed" (`AccountCloseParams`).
    pub async fn close_account(
        &self,
        id: &str,
        applied_configurations: &[Configuration],
        idempotency_key: &str,
    ) -> Result<(Account, Response), StripeError> {
        let path = format!("{ACCOUNTS_PATH}/{}/close", object_id(id)?);
        let applied: Vec<&str> = applied_configurations.iter().map(|c| c.as_str()).collect();
        account_in(self.post(&path, &json!({"applied_configurations": applied}), Some(idempotency_key)).await?)
    }

    /// The first page of `GET /v2/core/accounts` with `filter`.
    pub async fn list_accounts(&self, filter: &AccountsFilter) -> Result<Page<ListedAccount>, StripeError> {
        let response = self.get(ACCOUNTS_PATH, &filter.query()).await?;
        self.accounts_page(response)
    }

    /// The page of Accounts at `next` (from [`list_accounts`](Self::list_accounts) or the page before).
    pub async fn next_accounts_page(&self, next: &NextPage) -> Result<Page<ListedAccount>, StripeError> {
        if next.list_path() != ACCOUNTS_PATH {
            return Err(StripeError::Config(format!("{} is not a page of {ACCOUNTS_PATH}", next.list_path())));
        }
        let response = self.get_url(next.url().to_string()).await?;
        self.accounts_page(response)
    }

    fn accounts_page(&self, response: Response) -> Result<Page<ListedAccount>, StripeError> {
        let next = next_page_of(self.api_base(), ACCOUNTS_PATH, &response)?;
        let data = entries(&response.body)
            .iter()
            .map(|entry| Account::from_json(entry).map_or(ListedAccount::Unreadable, ListedAccount::Account))
            .collect();
        Ok(Page { data, next, request_id: response.request_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_account_is_a_customer_with_the_express_equivalent_of_v1s_controller() {
        let body = NewAccount::new("u-1", "a@b.co").body();
        assert_eq!(
            body,
            json!({
                "contact_email": "a@b.co",
                "configuration": {"customer": {}},
                "dashboard": "express",
                "defaults": {"responsibilities": {"fees_collector": "application", "losses_collector": "application"}},
                "metadata": {"user_id": "u-1"},
                "include": [
                    "configuration.customer", "configuration.merchant", "configuration.recipient", "requirements",
                ],
            })
        );
        // JSON, not v1's bracket notation.
        let wire = serde_json::to_string(&body).unwrap();
        assert!(wire.contains(r#""metadata":{"user_id":"u-1"}"#) && !wire.contains("metadata["));
    }

    #[test]
    fn a_new_account_can_be_a_merchant_and_recipient_from_the_start() {
        let account = NewAccount {
            display_name: Some("Ada's shop".into()),
            merchant: Some(Capabilities::default_merchant()),
            recipient: Some(Capabilities::default_recipient()),
            dashboard: Dashboard::Full,
            responsibilities: Responsibilities {
                fees_collector: FeesCollector::Stripe,
                losses_collector: LossesCollector::Stripe,
            },
            include: vec![],
            ..NewAccount::new("u-2", "ada@example.com")
        };
        let body = account.body();
        assert_eq!(body["display_name"], "Ada's shop");
        assert_eq!(body["configuration"]["merchant"], json!({"capabilities": {"card_payments": {"requested": true}}}));
        assert_eq!(
            body["configuration"]["recipient"],
            json!({"capabilities": {"stripe_balance": {"stripe_transfers": {"requested": true}}}})
        );
        assert_eq!(body["dashboard"], "full");
        assert_eq!(
            body["defaults"]["responsibilities"],
            json!({"fees_collector": "stripe", "losses_collector": "stripe"})
        );
        assert!(body.get("include").is_none());
    }

    #[test]
    fn capabilities_are_those_the_sdk_lists_nested_by_path() {
        let recipient =
            Capabilities::recipient(&["stripe_balance.stripe_transfers", "bank_accounts.ach", "cards"]).unwrap();
        assert_eq!(
            recipient.configuration_json(),
            json!({"capabilities": {
                "stripe_balance": {"stripe_transfers": {"requested": true}},
                "bank_accounts": {"ach": {"requested": true}},
                "cards": {"requested": true},
            }})
        );
        let merchant = Capabilities::merchant(&["card_payments", "link_payments", "card_payments"]).unwrap();
        assert_eq!(merchant.names(), ["card_payments", "link_payments"], "named twice, asked once");
        assert!(Capabilities::merchant(&["transfers"]).unwrap_err().contains("\"transfers\""));
        assert!(Capabilities::merchant(&["stripe_balance.stripe_transfers"]).is_err(), "a recipient capability");
        assert!(Capabilities::recipient(&["card_payments"]).is_err());
        assert!(Capabilities::recipient(&["stripe_balance.payouts"]).is_err(), "requested by Stripe, not by us");
        assert!(Capabilities::recipient::<&str>(&[]).is_err());
    }

    #[test]
    fn updates_add_configurations_and_remove_metadata_by_null() {
        let update = AccountUpdate::new()
            .add_merchant(&Capabilities::default_merchant())
            .add_recipient(&Capabilities::default_recipient())
            .contact_email("new@example.com")
            .responsibilities(Responsibilities::default())
            .dashboard(Dashboard::Express)
            .set_metadata("table", "public.profiles")
            .remove_metadata("legacy")
            .include(&READINESS_INCLUDE);
        assert_eq!(
            update.body(),
            json!({
                "configuration": {
                    "merchant": {"capabilities": {"card_payments": {"requested": true}}},
                    "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": {"requested": true}}}},
                },
                "contact_email": "new@example.com",
                "defaults": {"responsibilities": {"fees_collector": "application", "losses_collector": "application"}},
                "dashboard": "express",
                "metadata": {"table": "public.profiles", "legacy": null},
                "include": ["configuration.merchant", "configuration.recipient", "requirements"],
            })
        );
        assert!(serde_json::to_string(&update.body()).unwrap().contains(r#""legacy":null"#));
        assert_eq!(AccountUpdate::new().body(), json!({}));
    }

    #[test]
    fn accounts_are_read_from_the_sdks_account_shape() {
        let body = json!({
            "id": "acct_1Nv0FGQ9RKHgCVdK", "object": "v2.core.account",
            "applied_configurations": ["customer", "merchant", "a_future_one"],
            "contact_email": "furever@example.com", "display_name": "Furever",
            "created": "2024-11-26T16:33:03.000Z", "metadata": {"user_id": "u-7"}, "livemode": false,
        });
        let account = Account::from_json(&body).unwrap();
        assert_eq!(
            account,
            Account {
                id: "acct_1Nv0FGQ9RKHgCVdK".into(),
                contact_email: Some("furever@example.com".into()),
                display_name: Some("Furever".into()),
                metadata_user_id: Some("u-7".into()),
                applied_configurations: vec![Configuration::Customer, Configuration::Merchant],
                closed: false,
                created_ms: Some(1_732_638_783_000),
            }
        );
        assert!(account.has(Configuration::Merchant) && !account.has(Configuration::Recipient));
        assert_eq!(
            account.summary(),
            StripeObject {
                id: "acct_1Nv0FGQ9RKHgCVdK".into(),
                email: Some("furever@example.com".into()),
                metadata_user_id: Some("u-7".into()),
            }
        );
        let closed = Account::from_json(&json!({"id": "acct_2", "object": "v2.core.account", "closed": true})).unwrap();
        assert!(closed.closed && closed.metadata_user_id.is_none() && closed.created_ms.is_none());
        assert_eq!(Account::from_json(&json!({"id": "acct_3", "object": "account"})), None, "a v1 account");
        assert_eq!(Account::from_json(&json!({"id": "acct_3/../x"})), None);
        assert_eq!(Account::from_json(&json!({"object": "v2.core.account"})), None);
    }

    #[test]
    fn list_filters_are_query_parameters() {
        assert_eq!(AccountsFilter::default().query(), vec![("limit".to_string(), "100".to_string())]);
        let filter = AccountsFilter {
            limit: 20,
            applied_configurations: vec![Configuration::Merchant, Configuration::Recipient],
            closed: Some(true),
        };
        assert_eq!(
            super::super::wire::encode_query(&filter.query()),
            "limit=20&applied_configurations[0]=merchant&applied_configurations[1]=recipient&closed=true"
        );
    }

    #[test]
    fn enum_names_round_trip() {
        for c in Configuration::ALL {
            assert_eq!(Configuration::parse(c.as_str()), Some(c));
            assert_eq!(c.include().as_str(), format!("configuration.{}", c.as_str()));
        }
        for d in ["express", "full", "none"] {
            assert_eq!(Dashboard::parse(d).unwrap().as_str(), d);
        }
        for f in ["application", "application_custom", "application_express", "stripe"] {
            assert_eq!(FeesCollector::parse(f).unwrap().as_str(), f);
        }
        for l in ["application", "stripe"] {
            assert_eq!(LossesCollector::parse(l).unwrap().as_str(), l);
        }
        assert_eq!(Dashboard::parse("custom"), None);
    }
}
