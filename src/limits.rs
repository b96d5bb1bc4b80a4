//! The size limits on keys and values, in one place.
//!
//! The node enforces them before a write enters the Raft log, and the client
//! library checks them before it sends anything, so that a bad request is refused
//! with INVALID_ARGUMENT in the same words wherever it is caught.

/// The longest key accepted, in bytes. Keys may not be empty.
pub const MAX_KEY_BYTES: usize = 4096;

/// The longest value accepted, in bytes (1 MiB). Values may be empty.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// A key or value outside the limits; its text is one readable line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The key is empty.
    #[error("key is empty")]
    EmptyKey,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("key is {key_bytes} bytes, more than the limit of {MAX_KEY_BYTES} bytes")]
    KeyTooLong {
        /// The key's length.
        key_bytes: usize,
    },
    /// The value is longer than [`MAX_VALUE_BYTES`].
    #[error("value is {value_bytes} bytes, more than the limit of {MAX_VALUE_BYTES} bytes")]
    ValueTooLong {
        /// The value's length.
        value_bytes: usize,
    },
}

/// A request over the limits is INVALID_ARGUMENT, with the error's text as the message.
impl From<LimitError> for tonic::Status {
    fn from(error: LimitError) -> tonic::Status {
        tonic::Status::invalid_argument(error.to_string())
    }
}

/// Checks a key: 1..=[`MAX_KEY_BYTES`] bytes.
pub fn check_key(key: &[u8]) -> Result<(), LimitError> {
    if key.is_empty() {
        return Err(LimitError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(LimitError::KeyTooLong { key_bytes: key.len() });
    }
    Ok(())
}

/// Checks a value: 0..=[`MAX_VALUE_BYTES`] bytes.
pub fn check_value(value: &[u8]) -> Result<(), LimitError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(LimitError::ValueTooLong {
            value_bytes: value.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_key_is_refused() {
        assert_eq!(check_key(b"").unwrap_err().to_string(), "key is empty");
    }

    #[test]
    fn key_of_exactly_the_limit_is_accepted_and_one_more_byte_is_refused() {
        assert_eq!(check_key(&vec![b'k'; MAX_KEY_BYTES]), Ok(()));
        let error = check_key(&vec![b'k'; MAX_KEY_BYTES + 1]).unwrap_err().to_string();
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
        let error = check_value(&vec![0; MAX_VALUE_BYTES + 1]).unwrap_err().to_string();
        assert!(error.contains("1048577 bytes"), "{error}");
        assert!(!error.contains('\n'));
    }
}
