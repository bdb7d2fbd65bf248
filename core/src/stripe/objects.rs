//! The objects the extension makes (customers and Connect accounts) as it reads them back, and
//! their ids.

use serde_json::Value;

use super::error::StripeError;

/// The parts of a Stripe customer or account the extension uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeObject {
    pub id: String,
    pub email: Option<String>,
    pub metadata_user_id: Option<String>,
}

impl StripeObject {
    pub(super) fn from_json(body: &Value) -> Option<StripeObject> {
        let text = |v: &Value| v.as_str().map(str::to_string);
        Some(StripeObject {
            id: text(body.get("id")?)?,
            email: body.get("email").and_then(text),
            metadata_user_id: body.pointer("/metadata/user_id").and_then(text),
        })
    }
}

/// Whether `id` has the form of a Stripe id, `prefix_alphanumerics` of at most 255 bytes: safe in
/// a request path, a cursor, a log line and an index.
pub fn is_stripe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Stripe object ids are `prefix_alphanumerics`; anything else would change the request path.
pub(super) fn object_id(id: &str) -> Result<&str, StripeError> {
    if is_stripe_id(id) { Ok(id) } else { Err(StripeError::Config(format!("{id:?} is not a Stripe object id"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_cannot_change_the_path() {
        assert_eq!(object_id("cus_AbC123"), Ok("cus_AbC123"));
        for bad in ["", "cus_1/../accounts", "cus_1?expand=x", "cus 1", "cus_%2F"] {
            assert!(object_id(bad).is_err(), "{bad}");
        }
    }
}
