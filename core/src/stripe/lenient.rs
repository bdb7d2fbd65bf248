//! Decoding answers that carry what others wrote (events, customers read back) so that one bad
//! string cannot fail them: see [`lenient_json`].

use serde_json::Value;

/// Decodes an answer that carries events, so that one event cannot fail its page: bytes that
/// are not UTF-8 become U+FFFD, and escaped lone surrogates (which serde_json refuses) become
/// `\ufffd`. What decodes so is checked downstream ([`crate::inbound::parse_event`] refuses
/// U+FFFD).
pub fn lenient_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str(&without_lone_surrogates(&text))
}

/// `text` with every escaped surrogate (`\ud800` to `\udfff`) that is not half of a high-low
/// pair rewritten to `\ufffd`. Other escapes are stepped over whole, so in `\\ud800` (an
/// escaped backslash, then the letters `ud800`) nothing changes.
fn without_lone_surrogates(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut rewritten = String::new();
    let mut copied = 0; // `text[..copied]` is in `rewritten`
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match escaped_unit(bytes, i) {
            Some(0xD800..=0xDBFF) if matches!(escaped_unit(bytes, i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => {
                rewritten.push_str(&text[copied..i]);
                rewritten.push_str("\\ufffd");
                i += 6;
                copied = i;
            }
            Some(_) => i += 6,
            // Any other escape, `\\` included: its second character escapes nothing.
            None => i += 2,
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    rewritten.push_str(&text[copied..]);
    std::borrow::Cow::Owned(rewritten)
}

/// The UTF-16 code unit of the `\uXXXX` escape at `at`, if there is one.
fn escaped_unit(bytes: &[u8], at: usize) -> Option<u16> {
    let escape = bytes.get(at..at + 6)?;
    let hex = escape.strip_prefix(b"\\u").filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))?;
    u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_decoding_replaces_bytes_that_are_not_utf8() {
        let decoded = lenient_json(b"{\"email\": \"a\xffb\xc3\x28@x.co\", \"ok\": \"\xc3\xa9\"}").unwrap();
        assert_eq!(decoded, serde_json::json!({"email": "a\u{FFFD}b\u{FFFD}(@x.co", "ok": "é"}));
        assert!(serde_json::from_slice::<Value>(b"{\"email\": \"a\xffb\"}").is_err(), "strict decoding refuses it");
        // What is not JSON stays an error.
        assert!(lenient_json(b"{\"email\": \"a\x01b\"}").is_err());
        assert!(lenient_json(b"{\"id\": ").is_err());
    }

    #[test]
    fn lenient_decoding_rewrites_lone_surrogates_only() {
        let decoded = |json: &str| lenient_json(json.as_bytes()).unwrap();
        assert_eq!(decoded(r#""a\ud800b""#), "a\u{FFFD}b");
        assert_eq!(decoded(r#""\uDFFF""#), "\u{FFFD}", "a low half alone, in capitals");
        assert_eq!(decoded(r#""\ud83d\ude00""#), "😀", "a pair is a character");
        assert_eq!(decoded(r#""\ud800\ud83d\ude00""#), "\u{FFFD}😀", "two highs: the first is alone");
        assert_eq!(decoded(r#""\ude00\ud83d""#), "\u{FFFD}\u{FFFD}", "low then high is no pair");
        assert_eq!(decoded(r#""\\ud800""#), "\\ud800", "an escaped backslash, then letters");
        assert_eq!(decoded(r#""\\\ud800""#), "\\\u{FFFD}", "an escaped backslash, then an escape");
        assert_eq!(decoded(r#"{"\ud800": "\u00e9\u0000"}"#), serde_json::json!({"\u{FFFD}": "é\u{0}"}));
        assert!(serde_json::from_str::<Value>(r#""\ud800""#).is_err(), "strict decoding refuses it");
        // Nothing to rewrite: borrowed as it is; a bad escape is left for serde_json to refuse.
        assert!(matches!(without_lone_surrogates(r#""\u00e9\n""#), std::borrow::Cow::Borrowed(_)));
        assert_eq!(without_lone_surrogates(r#""\ud8" \ud80x \u+800 \"#), r#""\ud8" \ud80x \u+800 \"#);
        assert!(lenient_json(br#""\ud8""#).is_err());
    }
}
