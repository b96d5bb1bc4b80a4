//! The size limits on keys and values, in one place.
//!
//! The node enforces them before a write enters the Raft log, and the client
//! library checks them before it sends anything, so that a bad request is refused
//! with INVALID_ARGUMENT in the same words wherever it is caught.

/// The longest key accepted, in bytes. Keys may not be empty.
pub const MAX_KEY_BYTES: usize = 4096;

/// The longest value accepted, in bytes (1 MiB). Values may be empty.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Checks a key: 1..=[`MAX_KEY_BYTES`] bytes. The error is one readable line.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".to_string());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key is {} bytes, more than the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        ));
    }
    Ok(())
}

/// Checks a value: 0..=[`MAX_VALUE_BYTES`] bytes. The error is one readable line.
pub fn check_value(value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value is {} bytes, more than the limit of {MAX_VALUE_BYTES} bytes",
            value.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_key_is_refused() {
        assert_eq!(check_key(b""), Err("key is empty".to_string()));
    }

    #[test]
    fn key_of_exactly_the_limit_is_accepted_and_one_more_byte_is_refused() {
        assert_eq!(check_key(&vec![b'k'; MAX_KEY_BYTES]), Ok(()));
        let error = check_key(&vec![b'k'; MAX_KEY_BYTES + 1]).unwrap_err();
        assert!(error.contains("4097 bytes"), "{error}");
        assert!(error.contains("4096"), "{error}");
    }

    #[test]
    fn empty_value_is_accepted() {
        assert_eq!(check_value(b""), Ok(()));
    }

    #[test]
    fn value_of_exactly_one_mebibyte_is_accepted_and_one_more_byte_is_refused() {
        assert_eq!(check_value(&vec![0; MAX_VALUE_BYTES]), Ok(()));
        let error = check_value(&vec![0; MAX_VALUE_BYTES + 1]).unwrap_err();
        assert!(error.contains("1048577 bytes"), "{error}");
        assert!(!error.contains('\n'));
    }
}
