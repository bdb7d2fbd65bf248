//! API key extraction, checking and masking. Keys are secrets: they appear in responses
//! and logs only through [`mask`].

use crate::error::ApiError;

/// The key from `Authorization: Bearer <key>` or HTTP Basic with the key as user name.
pub fn extract_key(authorization: Option<&str>) -> Option<String> {
    let header = authorization?.trim();
    let (scheme, rest) = header.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(base64_decode(rest)?).ok()?;
        let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
        return (!user.is_empty()).then(|| user.to_string());
    }
    None
}

/// Checks the request's key against the configured one, or else accepts any test-mode key.
pub fn check(authorization: Option<&str>, required: Option<&str>) -> Result<String, ApiError> {
    let Some(key) = extract_key(authorization) else {
        return Err(ApiError::new(
            401,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        ));
    };
    let valid = match required {
        Some(expected) => key == expected,
        None => ["sk_test_", "rk_test_"].iter().any(|prefix| {
            key.len() > prefix.len()
                && key.starts_with(prefix)
                && key[prefix.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }),
    };
    if valid {
        Ok(key)
    } else {
        // No `code`: Stripe has none for a wrong key (only `api_key_expired`).
        Err(ApiError::new(401, "invalid_request_error", format!("Invalid API Key provided: {}", mask(&key))))
    }
}

/// `sk_test_abcdefgh1234` -> `sk_test_****1234`. The prefix is kept only when it looks like
/// Stripe's (`sk_test_`, `rk_live_`, ...), and the tail only when the key is long enough
/// that four characters give little away.
pub fn mask(key: &str) -> String {
    let prefix_len = stripe_prefix_len(key);
    let rest: Vec<char> = key[prefix_len..].chars().collect();
    let tail: String = if rest.len() >= 12 { rest[rest.len() - 4..].iter().collect() } else { String::new() };
    format!("{}****{}", &key[..prefix_len], tail)
}

fn stripe_prefix_len(key: &str) -> usize {
    let mut parts = key.splitn(3, '_');
    let (Some(kind), Some(mode), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return 0;
    };
    let lower =
        |s: &str, n: std::ops::RangeInclusive<usize>| n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase());
    if lower(kind, 2..=4) && lower(mode, 2..=5) { kind.len() + mode.len() + 2 } else { 0 }
}

/// Standard base64 (padding optional), enough for Basic auth without another dependency.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in input.trim_end_matches('=').bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys() {
        assert_eq!(mask("sk_test_abcdefgh1234abcd"), "sk_test_****abcd");
        assert_eq!(mask("rk_live_0123456789xyz"), "rk_live_****9xyz");
        assert_eq!(mask("sk_test_short"), "sk_test_****");
        assert_eq!(mask("not-a-stripe-key-at-all"), "****-all");
        assert_eq!(mask("hunter2"), "****");
        assert_eq!(mask("my secret_password_123456789012"), "****9012");
    }

    #[test]
    fn extracts_bearer_and_basic() {
        assert_eq!(extract_key(Some("Bearer sk_test_1")).as_deref(), Some("sk_test_1"));
        // "sk_test_1:" in base64
        assert_eq!(extract_key(Some("Basic c2tfdGVzdF8xOg==")).as_deref(), Some("sk_test_1"));
        assert_eq!(extract_key(Some("Basic c2tfdGVzdF8x")).as_deref(), Some("sk_test_1"));
        assert_eq!(extract_key(Some("Bearer ")), None);
        assert_eq!(extract_key(Some("Token x")), None);
        assert_eq!(extract_key(None), None);
    }

    #[test]
    fn checks_keys() {
        assert!(check(Some("Bearer sk_test_abc"), None).is_ok());
        assert!(check(Some("Bearer rk_test_abc"), None).is_ok());
        assert!(check(Some("Bearer sk_live_abc"), None).is_err());
        assert!(check(Some("Bearer sk_test_"), None).is_err());
        assert!(check(Some("Bearer sk_test_abc"), Some("sk_test_xyz")).is_err());
        assert!(check(Some("Bearer sk_test_xyz"), Some("sk_test_xyz")).is_ok());
        let err = check(Some("Bearer sk_test_0123456789abcdef"), Some("sk_test_other")).unwrap_err();
        assert_eq!(err.status, 401);
        assert_eq!(err.message, "Invalid API Key provided: sk_test_****cdef");
    }
}
