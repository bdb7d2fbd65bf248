//! Which keys `/v2` takes. "You can only access APIs in the `/v2` namespace with secret keys",
//! where `/v1` takes "secret and restricted access keys" (docs.stripe.com/api-v2-overview, "Key
//! differences between the v1 and v2 namespace", "Access APIs"). Keys tell their kind by their
//! prefix: `sk_test_`/`sk_live_` secret, `rk_test_`/`rk_live_` restricted, `pk_test_`/`pk_live_`
//! publishable (docs.stripe.com/keys).
//!
//! So no permission set makes a restricted key work for an `accounts_v2` table, and the
//! extension says so before sending anything, instead of probing permissions as it does for v1
//! (`permissions.rs`). The check reads only the key's masked form ([`ApiKey::masked`]): the key
//! itself is never looked at here.

use crate::stripe::client::ApiKey;

/// What kind of key a Stripe API key is, by its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `sk_…`: what `/v2` takes.
    Secret,
    /// `rk_…`: `/v1` only.
    Restricted,
    /// `pk_…`: client-side, no server API at all.
    Publishable,
    /// No prefix Stripe documents (a test server's key, say): left for the server to judge.
    Unknown,
}

impl KeyKind {
    pub fn of(key: &ApiKey) -> KeyKind {
        let masked = key.masked();
        let prefix = masked.split("****").next().unwrap_or_default();
        match prefix.split('_').next() {
            Some("sk") => KeyKind::Secret,
            Some("rk") => KeyKind::Restricted,
            Some("pk") => KeyKind::Publishable,
            _ => KeyKind::Unknown,
        }
    }
}

/// Why `key` cannot be used for `/v2` (Accounts v2, Account Links v2, thin events), for the
/// error the extension raises (names the key only masked); `None` when it can, or when its kind
/// is unknown and Stripe will say.
pub fn v2_key_refusal(key: &ApiKey) -> Option<String> {
    let masked = key.masked();
    match KeyKind::of(key) {
        KeyKind::Secret | KeyKind::Unknown => None,
        KeyKind::Restricted => Some(format!(
            "the Stripe API key {masked} is a restricted key, and Stripe's /v2 APIs (Accounts v2, Account Links \
             v2, v2 events) take secret keys only (docs.stripe.com/api-v2-overview): no permission set makes a \
             restricted key work for them. Configure a secret key (sk_live_… or sk_test_…) for a table that uses \
             stripe_objects => 'accounts_v2', or keep the table on 'v1'"
        )),
        KeyKind::Publishable => Some(format!(
            "the Stripe API key {masked} is a publishable key, which no server-side Stripe API takes: configure a \
             secret key (sk_live_… or sk_test_…)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_told_apart_by_prefix_and_refused_for_v2_without_showing_them() {
        let key = |text: &str| ApiKey::new(text).unwrap();
        assert_eq!(KeyKind::of(&key("sk_live_secretvalue9876")), KeyKind::Secret);
        assert_eq!(KeyKind::of(&key("sk_test_secretvalue9876")), KeyKind::Secret);
        assert_eq!(KeyKind::of(&key("rk_live_secretvalue9876")), KeyKind::Restricted);
        assert_eq!(KeyKind::of(&key("rk_test_secretvalue9876")), KeyKind::Restricted);
        assert_eq!(KeyKind::of(&key("pk_test_secretvalue9876")), KeyKind::Publishable);
        assert_eq!(KeyKind::of(&key("emulator-key")), KeyKind::Unknown);
        assert_eq!(KeyKind::of(&key("skx_test_1")), KeyKind::Unknown);

        assert_eq!(v2_key_refusal(&key("sk_live_secretvalue9876")), None);
        assert_eq!(v2_key_refusal(&key("emulator-key")), None);
        let refused = v2_key_refusal(&key("rk_live_secretvalue9876")).unwrap();
        assert!(refused.contains("rk_live_****9876") && refused.contains("secret keys only"), "{refused}");
        assert!(!refused.contains("secretvalue"), "{refused}");
        let publishable = v2_key_refusal(&key("pk_live_secretvalue9876")).unwrap();
        assert!(publishable.contains("publishable") && !publishable.contains("secretvalue"));
    }
}
