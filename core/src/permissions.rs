//! Whether the configured key may do what the extension needs, found out without creating
//! anything: one request per resource, each one Stripe can only refuse (a 403 naming the missing
//! permission, for a restricted key) or fail on an object that cannot exist (an id no Stripe id
//! looks like). Run it when the client is built for a key; it costs one request without Connect,
//! three with, and one or two more (`/v2`) while an accounts_v2 table is attached.
//!
//! Whether `/v2` takes restricted keys at all, Stripe's documents disagree
//! (`docs.stripe.com/api-v2-overview`: "only … with secret keys"; `docs.stripe.com/keys/
//! restricted-api-keys`: "All Stripe APIs support restricted API keys"): the v2 probes ask Stripe
//! itself, and a refusal that names no permission is reported as such.
//!
//! Assumed, not confirmed: Stripe checks a restricted key's permissions for an endpoint before
//! it looks up the object, so an allowed probe answers "no such object" and a refused one 403.

use std::fmt;

use serde_json::{Value, json};

use crate::stripe::v2::{ACCOUNT_LINKS_PATH, ACCOUNTS_PATH, account_link_body};
use crate::stripe::{Params, StripeClient, StripeError};

/// Ids no Stripe object has (Stripe's are the prefix and alphanumerics), so no probe can touch one.
const PROBE_CUSTOMER: &str = "cus_onboarding_permission_check";
const PROBE_ACCOUNT: &str = "acct_onboarding_permission_check";

/// A permission the key lacks, from one refused probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingPermission {
    /// Stripe's id, e.g. `rak_customer_write`, as its refusal names it; `None` when the refusal
    /// names none (some say only that restricted keys cannot use the endpoint).
    pub permission: Option<String>,
    /// The endpoint that refused, e.g. `POST /v1/customers/{id}`.
    pub endpoint: &'static str,
    /// What the extension needs it for.
    pub needed_for: &'static str,
    /// Needed for Connect only (accounts, account links): customers go on without it.
    pub connect_only: bool,
    /// Needed for accounts_v2 tables only (`/v2`): v1 tables' jobs go on without it.
    pub accounts_v2_only: bool,
    pub request_id: Option<String>,
}

/// Why the key cannot be used as configured. Never contains the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermissionCheckError {
    /// 401: Stripe does not know the key (mistyped, revoked, the other mode). Permanent until the
    /// key changes.
    KeyRefused(StripeError),
    /// The key lacks permissions (a restricted key), one entry per refused probe. Permanent until
    /// the key or its permissions change.
    Missing(Vec<MissingPermission>),
    /// No decision: no answer, or 409, 429 or 5xx. Says nothing about the key: check again later.
    Inconclusive(StripeError),
}

impl PermissionCheckError {
    /// Whether every permission missing is Connect's or accounts_v2 tables' only: v1 customers
    /// may go on, and each of those waits for its own.
    pub fn scoped_only(&self) -> bool {
        matches!(self, PermissionCheckError::Missing(missing)
            if missing.iter().all(|m| m.connect_only || m.accounts_v2_only))
    }

    /// The missing permissions needed by `wanted` only (Connect's, or accounts_v2 tables'), as
    /// an error of their own; `None` if there are none.
    pub fn only(&self, wanted: fn(&MissingPermission) -> bool) -> Option<PermissionCheckError> {
        let PermissionCheckError::Missing(missing) = self else { return None };
        let some: Vec<MissingPermission> = missing.iter().filter(|m| wanted(m)).cloned().collect();
        (!some.is_empty()).then_some(PermissionCheckError::Missing(some))
    }

    /// Structured form for events and job rows.
    pub fn to_json(&self) -> Value {
        match self {
            PermissionCheckError::KeyRefused(e) => serde_json::json!({"kind": "key_refused", "error": e.to_json()}),
            PermissionCheckError::Missing(missing) => serde_json::json!({
                "kind": "missing_permissions",
                "missing": missing.iter().map(|m| serde_json::json!({
                    "permission": m.permission, "endpoint": m.endpoint, "needed_for": m.needed_for,
                    "request_id": m.request_id,
                })).collect::<Vec<_>>(),
            }),
            PermissionCheckError::Inconclusive(e) => serde_json::json!({"kind": "inconclusive", "error": e.to_json()}),
        }
    }
}

impl fmt::Display for PermissionCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PermissionCheckError::KeyRefused(e) => write!(f, "Stripe refused the API key: {e}"),
            PermissionCheckError::Missing(missing) => {
                f.write_str("the Stripe API key lacks ")?;
                for (i, m) in missing.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    match &m.permission {
                        Some(p) => write!(f, "permission {p} (for {}; {} refused it)", m.needed_for, m.endpoint)?,
                        None => write!(f, "the permission for {} ({} refused it)", m.needed_for, m.endpoint)?,
                    }
                    if let Some(r) = &m.request_id {
                        write!(f, " [request {r}]")?;
                    }
                }
                Ok(())
            }
            PermissionCheckError::Inconclusive(e) => write!(f, "could not check the Stripe API key's permissions: {e}"),
        }
    }
}

impl std::error::Error for PermissionCheckError {}

/// One probe: what it needs, where it goes, what it sends.
struct Probe {
    needed_for: &'static str,
    connect_only: bool,
    accounts_v2_only: bool,
    endpoint: &'static str,
    path: String,
    body: Body,
}

/// A probe's request body: v1's form, or a `/v2` JSON body.
enum Body {
    Form(Params),
    Json(Value),
}

/// What a database needs of the key: customers always; Connect's accounts and links once Connect
/// is in use; `/v2` once an accounts_v2 table is attached (its Accounts, and their links when
/// Connect is in use too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Needs {
    pub connect: bool,
    pub accounts_v2: bool,
}

const PROBE_URL: &str = "https://example.com/onboarding-permission-check";

fn probes(needs: Needs) -> Vec<Probe> {
    // Write implies read: the look-ups' lists and search are covered too.
    let mut probes = vec![Probe {
        needed_for: "creating and updating customers",
        connect_only: false,
        accounts_v2_only: false,
        endpoint: "POST /v1/customers/{id}",
        path: format!("/v1/customers/{PROBE_CUSTOMER}"),
        body: Body::Form(vec![]),
    }];
    if needs.connect {
        probes.push(Probe {
            needed_for: "creating Connect accounts",
            connect_only: true,
            accounts_v2_only: false,
            endpoint: "POST /v1/accounts/{id}",
            path: format!("/v1/accounts/{PROBE_ACCOUNT}"),
            body: Body::Form(vec![]),
        });
        // Every parameter, valid: only the account is missing, so a refusal cannot hide behind a
        // parameter error.
        probes.push(Probe {
            needed_for: "creating account onboarding links",
            connect_only: true,
            accounts_v2_only: false,
            endpoint: "POST /v1/account_links",
            path: "/v1/account_links".into(),
            body: Body::Form(vec![
                ("account".into(), PROBE_ACCOUNT.into()),
                ("type".into(), "account_onboarding".into()),
                ("refresh_url".into(), PROBE_URL.into()),
                ("return_url".into(), PROBE_URL.into()),
            ]),
        });
    }
    if needs.accounts_v2 {
        // An update of an Account that does not exist: what making, configuring, closing and
        // changing an accounts_v2 profile's Account needs.
        probes.push(Probe {
            needed_for: "creating and updating Accounts v2 (accounts_v2 tables)",
            connect_only: false,
            accounts_v2_only: true,
            endpoint: "POST /v2/core/accounts/{id}",
            path: format!("{ACCOUNTS_PATH}/{PROBE_ACCOUNT}"),
            body: Body::Json(json!({})),
        });
        if needs.connect {
            probes.push(Probe {
                needed_for: "creating Account Links v2 (accounts_v2 tables)",
                connect_only: true,
                accounts_v2_only: true,
                endpoint: "POST /v2/core/account_links",
                path: ACCOUNT_LINKS_PATH.into(),
                body: Body::Json(account_link_body(PROBE_ACCOUNT, PROBE_URL, PROBE_URL)),
            });
        }
    }
    probes
}

/// What one probe's answer says.
enum Verdict {
    Allowed,
    Refused(MissingPermission),
    KeyRefused(StripeError),
    Inconclusive(StripeError),
}

fn verdict(probe: &Probe, answer: Result<(), StripeError>) -> Verdict {
    let error = match answer {
        // Nothing can answer 2xx for an object that does not exist; if something does, it let
        // the request through.
        Ok(()) => return Verdict::Allowed,
        Err(error) => error,
    };
    let StripeError::Api(e) = &error else {
        return Verdict::Inconclusive(error);
    };
    match e.status {
        401 => Verdict::KeyRefused(error),
        // Every 403 is a permission error (the SDKs map 403 to one), but for the account that
        // does not exist: `account_invalid`, the allowed answer of the account probe.
        403 if e.code.as_deref() != Some("account_invalid") => Verdict::Refused(MissingPermission {
            permission: e.message.as_deref().and_then(named_permission),
            endpoint: probe.endpoint,
            needed_for: probe.needed_for,
            connect_only: probe.connect_only,
            accounts_v2_only: probe.accounts_v2_only,
            request_id: e.request_id.clone(),
        }),
        409 | 429 => Verdict::Inconclusive(error),
        s if s >= 500 => Verdict::Inconclusive(error),
        // resource_missing, account_invalid, any other refusal of the request itself: past the
        // permission check.
        _ if e.should_retry == Some(true) => Verdict::Inconclusive(error),
        _ => Verdict::Allowed,
    }
}

/// Whether a call's error is Stripe refusing the key a permission (a 403 other than the
/// `account_invalid` of an account that is not the platform's): nothing the call did is wrong,
/// and a later try with a key that may will work.
pub fn permission_refused(error: &StripeError) -> bool {
    matches!(error, StripeError::Api(e) if e.status == 403 && e.code.as_deref() != Some("account_invalid"))
}

/// The permission a refusal names: "Having the 'rak_customer_write' permission would allow this
/// request to continue."
fn named_permission(message: &str) -> Option<String> {
    message.split('\'').skip(1).step_by(2).find_map(|quoted| {
        let valid = quoted.starts_with("rak_") && quoted.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        valid.then(|| quoted.to_string())
    })
}

impl StripeClient {
    /// Checks that the key may create customers and what else `needs` says (Connect accounts and
    /// their onboarding links; `/v2`'s Accounts and their links), without creating anything
    /// ([`crate::permissions`]). Every probe is
    /// sent (so one check names every missing permission) unless the key is refused outright
    /// or a probe gets no decision. Each probe waits for the client's admission (the rate
    /// budgets, [`StripeClient::admitted_by`]): four workers' checks at once once took Stripe past
    /// the budget.
    pub async fn check_permissions(&self, needs: Needs) -> Result<(), PermissionCheckError> {
        let mut missing = Vec::new();
        for probe in probes(needs) {
            let answer = match &probe.body {
                Body::Form(params) => self.post(&probe.path, params, None).await,
                Body::Json(body) => self.v2().post_probe(&probe.path, body).await,
            }
            .map(|_| ());
            match verdict(&probe, answer) {
                Verdict::Allowed => {}
                Verdict::Refused(m) => missing.push(m),
                Verdict::KeyRefused(e) => return Err(PermissionCheckError::KeyRefused(e)),
                Verdict::Inconclusive(e) => return Err(PermissionCheckError::Inconclusive(e)),
            }
        }
        if missing.is_empty() { Ok(()) } else { Err(PermissionCheckError::Missing(missing)) }
    }
}

#[cfg(test)]
mod tests {

    use stripe_emulator::{Emulator, EmulatorConfig, Permission};

    use super::*;
    use crate::stripe::{ApiError, DEFAULT_SEARCH_RATE, TransportKind};

    /// A Stripe error answer as the client parses it.
    fn refusal(status: u16, code: Option<&str>, message: &str) -> StripeError {
        StripeError::Api(ApiError {
            status,
            error_type: Some("invalid_request_error".into()),
            code: code.map(str::to_string),
            message: Some(message.into()),
            param: None,
            request_id: Some("req_1".into()),
            should_retry: None,
        })
    }

    const RESTRICTED: &str = "rk_test_permissioncheck0123456789wxyz";

    fn client_for(stripe: &Emulator, key: &str) -> StripeClient {
        crate::stripe::emulated::client_of(stripe, key, DEFAULT_SEARCH_RATE)
    }

    fn check(stripe: &Emulator, permissions: &[Permission], connect: bool) -> Result<(), PermissionCheckError> {
        stripe.set_restricted_key(RESTRICTED, permissions.iter().copied()).unwrap();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        rt.block_on(client_for(stripe, RESTRICTED).check_permissions(Needs { connect, accounts_v2: false }))
    }

    const CONNECT: Needs = Needs { connect: true, accounts_v2: false };
    const CUSTOMERS: Needs = Needs { connect: false, accounts_v2: false };

    const ALL: [Permission; 3] =
        [Permission::CustomerWrite, Permission::ConnectedAccountWrite, Permission::AccountLinkWrite];

    #[test]
    fn a_restricted_key_with_every_permission_passes_and_nothing_is_created() {
        let stripe = Emulator::start("127.0.0.1:0", EmulatorConfig::default()).unwrap();
        assert_eq!(check(&stripe, &ALL, true), Ok(()));
        assert_eq!(check(&stripe, &ALL[..1], false), Ok(()));
        assert!(stripe.customers().is_empty() && stripe.accounts().is_empty());
        let log = stripe.requests();
        assert_eq!(log.len(), 4, "{log:?}");
        assert!(log.iter().all(|r| r.method == "POST" && r.idempotency_key.is_none()), "{log:?}");
        // Each allowed probe is a 4xx that is not a refusal (Stripe's answers for objects that do not exist).
        let answers: Vec<_> = log.iter().map(|r| (r.path.as_str(), r.status)).collect();
        assert_eq!(
            answers[..3],
            [
                ("/v1/customers/cus_onboarding_permission_check", Some(404)),
                ("/v1/accounts/acct_onboarding_permission_check", Some(403)),
                ("/v1/account_links", Some(400)),
            ]
        );
        // A secret key passes the same way.
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        assert_eq!(rt.block_on(client_for(&stripe, "sk_test_secretkey0123456789").check_permissions(CONNECT)), Ok(()));
    }

    #[test]
    fn a_key_without_customer_write_is_told_so_by_name() {
        let stripe = Emulator::start("127.0.0.1:0", EmulatorConfig::default()).unwrap();
        let only_read = [Permission::CustomerRead, Permission::ConnectedAccountWrite, Permission::AccountLinkWrite];
        let Err(PermissionCheckError::Missing(missing)) = check(&stripe, &only_read, true) else {
            panic!("passed without rak_customer_write")
        };
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].permission.as_deref(), Some("rak_customer_write"));
        assert_eq!(missing[0].endpoint, "POST /v1/customers/{id}");
        assert!(missing[0].request_id.as_deref().is_some_and(|r| r.starts_with("req_")));
        let text = PermissionCheckError::Missing(missing).to_string();
        assert!(text.contains("rak_customer_write") && !text.contains(RESTRICTED), "{text}");
        assert!(!text.contains("****"), "not even masked: {text}");
    }

    #[test]
    fn without_connect_accounts_are_not_probed() {
        let stripe = Emulator::start("127.0.0.1:0", EmulatorConfig::default()).unwrap();
        assert_eq!(check(&stripe, &[Permission::CustomerWrite], false), Ok(()));
        let paths: Vec<_> = stripe.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/v1/customers/cus_onboarding_permission_check"]);
    }

    #[test]
    fn with_connect_every_missing_permission_is_named() {
        let stripe = Emulator::start("127.0.0.1:0", EmulatorConfig::default()).unwrap();
        let without_accounts = [Permission::CustomerWrite, Permission::AccountLinkWrite];
        let Err(PermissionCheckError::Missing(missing)) = check(&stripe, &without_accounts, true) else {
            panic!("passed without rak_connected_account_write")
        };
        let named: Vec<_> = missing.iter().map(|m| (m.permission.as_deref(), m.endpoint)).collect();
        assert_eq!(named, [(Some("rak_connected_account_write"), "POST /v1/accounts/{id}")]);

        let Err(PermissionCheckError::Missing(missing)) = check(&stripe, &[Permission::ConnectedAccountRead], true)
        else {
            panic!("passed with read only")
        };
        let named: Vec<_> = missing.iter().filter_map(|m| m.permission.as_deref()).collect();
        assert_eq!(named, ["rak_customer_write", "rak_connected_account_write", "rak_account_link_write"]);
        assert!(stripe.customers().is_empty() && stripe.accounts().is_empty());
    }

    #[test]
    fn with_accounts_v2_the_v2_endpoints_are_probed_and_their_refusals_scoped() {
        let stripe = Emulator::start("127.0.0.1:0", EmulatorConfig::default()).unwrap();
        stripe.set_restricted_key(RESTRICTED, ALL).unwrap();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let client = client_for(&stripe, RESTRICTED);
        let both = Needs { connect: true, accounts_v2: true };
        assert_eq!(rt.block_on(client.check_permissions(both)), Ok(()));
        let answers: Vec<_> = stripe.requests().into_iter().map(|r| (r.path, r.status)).collect();
        assert_eq!(
            answers[3..],
            [
                ("/v2/core/accounts/acct_onboarding_permission_check".to_string(), Some(404)),
                ("/v2/core/account_links".to_string(), Some(400)),
            ]
        );
        assert!(stripe.v2_accounts().is_empty());

        // Customers only: the v2 refusals are accounts_v2 tables' (and Connect's), not everyone's.
        stripe.set_restricted_key(RESTRICTED, [Permission::CustomerWrite]).unwrap();
        let refused = rt.block_on(client.check_permissions(Needs { connect: false, accounts_v2: true })).unwrap_err();
        assert!(refused.scoped_only() && refused.only(|m| !m.connect_only).is_some(), "{refused:?}");
        let Some(PermissionCheckError::Missing(v2)) = refused.only(|m| m.accounts_v2_only) else {
            panic!("{refused:?}")
        };
        let named: Vec<_> = v2.iter().map(|m| (m.permission.as_deref(), m.endpoint)).collect();
        assert_eq!(named, [(Some("rak_connected_account_write"), "POST /v2/core/accounts/{id}")]);
        assert!(refused.only(|m| m.connect_only).is_none());
    }

    #[test]
    fn a_bad_key_and_a_missing_answer_are_their_own_errors() {
        let key = "sk_test_theonlykey0123456789";
        let stripe =
            Emulator::start("127.0.0.1:0", EmulatorConfig { api_key: Some(key.into()), ..Default::default() }).unwrap();
        let rt = crate::runtime::signal_safe_runtime().unwrap();
        let wrong = "sk_test_wrongkey0123456789";
        let Err(PermissionCheckError::KeyRefused(e)) =
            rt.block_on(client_for(&stripe, wrong).check_permissions(CONNECT))
        else {
            panic!("a wrong key passed")
        };
        assert_eq!(e.status(), Some(401));
        assert!(!e.to_string().contains(wrong));
        assert_eq!(stripe.requests().len(), 1, "no probe after the key was refused");

        stripe.inject(stripe_emulator::Fault::status(503).on("POST", "/v1/accounts"));
        let answer = rt.block_on(client_for(&stripe, key).check_permissions(CONNECT));
        assert!(
            matches!(answer, Err(PermissionCheckError::Inconclusive(ref e)) if e.status() == Some(503)),
            "{answer:?}"
        );
        stripe.inject(stripe_emulator::Fault::drop_before().on("POST", "/v1/customers"));
        let answer = rt.block_on(client_for(&stripe, key).check_permissions(CUSTOMERS));
        assert!(
            matches!(
                answer,
                Err(PermissionCheckError::Inconclusive(StripeError::Transport { kind: TransportKind::Other, .. }))
            ),
            "{answer:?}"
        );
    }

    #[test]
    fn verdicts_on_stripes_answers() {
        let probe = &probes(Needs { connect: true, accounts_v2: false })[0];
        let named = "The provided key 'rk_live_****abcd' does not have the required permissions for this endpoint \
                     on account 'acct_1'. Having the 'rak_customer_write' permission would allow this request to continue.";
        let Verdict::Refused(m) = verdict(probe, Err(refusal(403, None, named))) else { panic!() };
        assert_eq!(m.permission.as_deref(), Some("rak_customer_write"));
        let unnamed = "The provided key 'rk_live_****abcd' does not have the required permissions for this endpoint \
                       on account 'acct_1'. This is a restricted API key, but the required permissions are not \
                       available for use by restricted keys.";
        let Verdict::Refused(m) = verdict(probe, Err(refusal(403, None, unnamed))) else { panic!() };
        assert_eq!((m.permission, m.endpoint), (None, "POST /v1/customers/{id}"));
        let text = PermissionCheckError::Missing(vec![MissingPermission { permission: None, ..m }]).to_string();
        assert!(text.contains("POST /v1/customers/{id}"), "{text}");
        assert!(matches!(verdict(probe, Err(refusal(403, Some("account_invalid"), "no access"))), Verdict::Allowed));
        assert!(matches!(verdict(probe, Err(refusal(404, Some("resource_missing"), "No such"))), Verdict::Allowed));
        assert!(matches!(verdict(probe, Err(refusal(429, None, "slow down"))), Verdict::Inconclusive(_)));
        assert!(matches!(verdict(probe, Err(refusal(500, None, "boom"))), Verdict::Inconclusive(_)));
        assert!(matches!(verdict(probe, Err(refusal(401, None, "Invalid API Key"))), Verdict::KeyRefused(_)));
    }
}
