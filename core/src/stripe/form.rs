//! Request parameters as Stripe takes them: form-encoded, in its bracket notation.

/// Form parameters in Stripe's bracket notation, e.g. `("metadata[user_id]", "…")`.
pub type Params = Vec<(String, String)>;

/// `application/x-www-form-urlencoded`, brackets percent-encoded (Stripe accepts both forms).
pub fn encode_form(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}
