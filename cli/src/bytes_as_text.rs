//! How keys and values, which are arbitrary bytes, are shown as text — the one convention
//! every command follows, so that a script learns it once.
//!
//! raftkv stores bytes, but a terminal line, a `key<TAB>value` line and a JSON string all
//! need text. `raftkv get` in its default output prints the raw bytes and needs none of this;
//! everything else that shows a key or a value goes through here:
//!
//! - **Escaped text** ([`escape`]), for tables and error messages: printable UTF-8 (non-ASCII
//!   included) as is; backslash as `\\`, tab as `\t`, newline as `\n`, carriage return as
//!   `\r`; every other byte of a control character or of invalid UTF-8 as `\xHH` (two
//!   lowercase hex digits). The result never contains a tab, newline or other control
//!   character, and the escaping is reversible.
//! - **JSON** ([`JsonBytes`]): a field `F` holds the bytes as a JSON string when they are
//!   valid UTF-8. When they are not, `F` is `null` and a sibling field `F_base64` holds them
//!   in standard base64 (RFC 4648, with padding). `F_base64` is present only then.

use base64::Engine;

/// The bytes as one line of text: see the module documentation for the escaping.
pub fn escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for character in chunk.valid().chars() {
            match character {
                '\\' => text.push_str("\\\\"),
                '\t' => text.push_str("\\t"),
                '\n' => text.push_str("\\n"),
                '\r' => text.push_str("\\r"),
                character if character.is_control() => {
                    let mut utf8 = [0u8; 4];
                    push_hex_escapes(&mut text, character.encode_utf8(&mut utf8).as_bytes());
                }
                character => text.push(character),
            }
        }
        push_hex_escapes(&mut text, chunk.invalid());
    }
    text
}

fn push_hex_escapes(text: &mut String, bytes: &[u8]) {
    use std::fmt::Write;
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "\\x{byte:02x}");
    }
}

/// Bytes as a pair of JSON fields `F` and `F_base64`: exactly one of them is set for bytes
/// that exist; both are unset (`F` is `null`, `F_base64` left out) for bytes that do not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonBytes {
    /// The bytes as a string, when they are valid UTF-8.
    pub text: Option<String>,
    /// The bytes in standard base64, when they are not valid UTF-8.
    pub base64: Option<String>,
}

impl JsonBytes {
    /// The JSON form of `bytes`.
    pub fn of(bytes: &[u8]) -> JsonBytes {
        match std::str::from_utf8(bytes) {
            Ok(text) => JsonBytes {
                text: Some(text.to_string()),
                base64: None,
            },
            Err(_) => JsonBytes {
                text: None,
                base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }

    /// The JSON form of bytes that may not exist (`None`: both fields unset).
    pub fn of_optional(bytes: Option<&[u8]>) -> JsonBytes {
        bytes.map(JsonBytes::of).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_shown_as_is() {
        assert_eq!(escape(b"user/42 = \"x\""), "user/42 = \"x\"");
        assert_eq!(escape("grüße, 東京".as_bytes()), "grüße, 東京");
        assert_eq!(escape(b""), "");
    }

    #[test]
    fn separators_and_control_characters_are_escaped() {
        assert_eq!(escape(b"a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e");
        assert_eq!(escape(b"\x00\x1b[31m\x7f"), "\\x00\\x1b[31m\\x7f");
        // A C1 control character is valid UTF-8 but still a control: its bytes are escaped.
        assert_eq!(escape("\u{85}".as_bytes()), "\\xc2\\x85");
    }

    #[test]
    fn invalid_utf8_bytes_are_escaped_one_by_one() {
        assert_eq!(escape(b"ok\xff\xfe!"), "ok\\xff\\xfe!");
        // A truncated multi-byte character.
        assert_eq!(escape(b"\xe6\x9d"), "\\xe6\\x9d");
    }

    #[test]
    fn escaped_text_never_contains_a_line_or_field_separator() {
        let every_byte: Vec<u8> = (0..=255).collect();
        let text = escape(&every_byte);
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }

    #[test]
    fn json_bytes_are_text_when_utf8_and_base64_otherwise() {
        assert_eq!(
            JsonBytes::of("héllo".as_bytes()),
            JsonBytes {
                text: Some("héllo".to_string()),
                base64: None
            }
        );
        assert_eq!(
            JsonBytes::of(b"\xff\x00a"),
            JsonBytes {
                text: None,
                base64: Some("/wBh".to_string())
            }
        );
        assert_eq!(JsonBytes::of_optional(None), JsonBytes::default());
        assert_eq!(JsonBytes::of_optional(Some(b"")).text.as_deref(), Some(""));
    }
}
