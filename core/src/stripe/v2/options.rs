//! What an `accounts_v2` table's Accounts get, set per table (`onboarding.set_account_options`,
//! stored normalized in `attachments.account_options`): the Dashboard and responsibilities sent
//! when the Account is made, and the configurations (with their capabilities) the Connect policy
//! adds to it. The defaults are what the seed asks of a connected account, the Express
//! equivalent of v1's controller properties: card payments as a merchant, transfers as a
//! recipient, the Express Dashboard, the platform collecting fees and liable for losses.

use serde_json::{Value, json};

use super::accounts::{AccountUpdate, Capabilities, Dashboard, FeesCollector, LossesCollector, Responsibilities};

/// One table's options, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountOptions {
    /// Added by the Connect policy; `None`: not that configuration (at least one of the two is set).
    pub merchant: Option<Capabilities>,
    pub recipient: Option<Capabilities>,
    pub dashboard: Dashboard,
    pub responsibilities: Responsibilities,
}

impl Default for AccountOptions {
    fn default() -> AccountOptions {
        AccountOptions {
            merchant: Some(Capabilities::default_merchant()),
            recipient: Some(Capabilities::default_recipient()),
            dashboard: Dashboard::default(),
            responsibilities: Responsibilities::default(),
        }
    }
}

/// A bad option: what is wrong, and what would be right (an error's hint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadOption {
    pub message: String,
    pub hint: String,
}

impl AccountOptions {
    /// Reads options as `set_account_options` passes them, or as stored: every key optional (its
    /// default when absent or null), none unknown. `merchant` and `recipient` are arrays of
    /// capability names; an empty array leaves that configuration out.
    pub fn from_json(options: &Value) -> Result<AccountOptions, BadOption> {
        let Some(fields) = options.as_object() else {
            return Err(bad("the account options are not a JSON object", r#"{"dashboard": "express"}"#));
        };
        const KEYS: [&str; 5] = ["merchant", "recipient", "dashboard", "fees_collector", "losses_collector"];
        if let Some(unknown) = fields.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(
                &format!("unknown account option {unknown:?}"),
                &format!("The options are {}.", KEYS.join(", ")),
            ));
        }
        let mut chosen = AccountOptions::default();
        let given = |key: &str| fields.get(key).filter(|v| !v.is_null());
        for (key, slot, check) in [
            ("merchant", &mut chosen.merchant, Capabilities::merchant::<String> as fn(&[String]) -> _),
            ("recipient", &mut chosen.recipient, Capabilities::recipient::<String>),
        ] {
            let Some(value) = given(key) else { continue };
            let names: Option<Vec<String>> =
                value.as_array().and_then(|a| a.iter().map(|n| n.as_str().map(String::from)).collect());
            let Some(names) = names else {
                return Err(bad(&format!("{key} capabilities must be an array of names"), r#"["card_payments"]"#));
            };
            *slot = if names.is_empty() {
                None
            } else {
                Some(check(&names).map_err(|why| {
                    let known = if key == "merchant" {
                        super::accounts::MERCHANT_CAPABILITIES.join(", ")
                    } else {
                        super::accounts::RECIPIENT_CAPABILITIES.join(", ")
                    };
                    bad(&why, &format!("The {key} capabilities are: {known}."))
                })?)
            };
        }
        if chosen.merchant.is_none() && chosen.recipient.is_none() {
            return Err(bad(
                "a connected Account needs the merchant or the recipient configuration",
                "Name capabilities for at least one of them, e.g. merchant => '{card_payments}'.",
            ));
        }
        if let Some(name) = given("dashboard") {
            chosen.dashboard = name
                .as_str()
                .and_then(Dashboard::parse)
                .ok_or_else(|| bad(&format!("dashboard {name} is not one of Stripe's"), "express, full or none"))?;
        }
        if let Some(name) = given("fees_collector") {
            chosen.responsibilities.fees_collector = name.as_str().and_then(FeesCollector::parse).ok_or_else(|| {
                bad(
                    &format!("fees_collector {name} is not one of Stripe's"),
                    "application, application_custom, application_express or stripe",
                )
            })?;
        }
        if let Some(name) = given("losses_collector") {
            chosen.responsibilities.losses_collector =
                name.as_str().and_then(LossesCollector::parse).ok_or_else(|| {
                    bad(&format!("losses_collector {name} is not one of Stripe's"), "application or stripe")
                })?;
        }
        Ok(chosen)
    }

    /// The stored form: every key, defaults filled in (what `attachments.account_options` holds).
    pub fn to_json(&self) -> Value {
        let names = |c: &Option<Capabilities>| c.as_ref().map_or(json!([]), |c| json!(c.names()));
        json!({
            "merchant": names(&self.merchant),
            "recipient": names(&self.recipient),
            "dashboard": self.dashboard.as_str(),
            "fees_collector": self.responsibilities.fees_collector.as_str(),
            "losses_collector": self.responsibilities.losses_collector.as_str(),
        })
    }

    /// What the Connect policy sends to make an Account a connected account: the configurations,
    /// each with its capabilities requested.
    pub fn connect_update(&self) -> AccountUpdate {
        let mut update = AccountUpdate::new();
        if let Some(merchant) = &self.merchant {
            update = update.add_merchant(merchant);
        }
        if let Some(recipient) = &self.recipient {
            update = update.add_recipient(recipient);
        }
        update
    }
}

fn bad(message: &str, hint: &str) -> BadOption {
    BadOption { message: message.to_string(), hint: hint.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_what_the_seed_asks() {
        let options = AccountOptions::from_json(&json!({})).unwrap();
        assert_eq!(options, AccountOptions::default());
        assert_eq!(
            options.to_json(),
            json!({"merchant": ["card_payments"], "recipient": ["stripe_balance.stripe_transfers"],
                   "dashboard": "express", "fees_collector": "application", "losses_collector": "application"})
        );
        assert_eq!(
            options.connect_update().body(),
            json!({"configuration": {
                "merchant": {"capabilities": {"card_payments": {"requested": true}}},
                "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": {"requested": true}}}}}})
        );
    }

    #[test]
    fn stored_options_read_back_the_same() {
        let chosen = json!({"merchant": [], "recipient": ["cards", "bank_accounts.local"], "dashboard": "none",
                            "fees_collector": "stripe", "losses_collector": "stripe"});
        let options = AccountOptions::from_json(&chosen).unwrap();
        assert!(options.merchant.is_none());
        assert_eq!(AccountOptions::from_json(&options.to_json()).unwrap(), options);
        assert_eq!(options.to_json(), chosen);
    }

    #[test]
    fn bad_options_say_what_would_do() {
        for (options, says) in [
            (json!([]), "not a JSON object"),
            (json!({"colour": "red"}), "unknown account option \"colour\""),
            (json!({"merchant": ["teleport_payments"]}), "\"teleport_payments\" is not a merchant capability"),
            (json!({"merchant": "card_payments"}), "must be an array"),
            (json!({"merchant": [], "recipient": []}), "needs the merchant or the recipient"),
            (json!({"dashboard": "fancy"}), "dashboard \"fancy\""),
            (json!({"fees_collector": 1}), "fees_collector 1"),
            (json!({"losses_collector": "nobody"}), "losses_collector \"nobody\""),
        ] {
            let error = AccountOptions::from_json(&options).unwrap_err();
            assert!(error.message.contains(says), "{options}: {error:?}");
            assert!(!error.hint.is_empty());
        }
        let hint = AccountOptions::from_json(&json!({"recipient": ["x"]})).unwrap_err().hint;
        assert!(hint.contains("stripe_balance.stripe_transfers"), "{hint}");
    }
}
