//! `raftkv put`, `get` and `delete`: turning command-line arguments into client calls and
//! the answers into output.
//!
//! Keys and values are bytes: they are taken from the arguments as raw OS strings and
//! printed as raw bytes, so binary data survives a round trip. Limits are checked by the
//! client library, so an oversized key or value is refused here exactly as everywhere else.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use raftkv::client::{self, Client};
use raftkv::limits::MAX_VALUE_BYTES;
use raftkv::pb;

use crate::CliError;

/// `raftkv put KEY VALUE|-` or `raftkv put KEY --file PATH`.
pub async fn put(
    client: &Client,
    key: OsString,
    value: Option<OsString>,
    file: Option<PathBuf>,
) -> Result<(), CliError> {
    let value = match (value, file) {
        (_, Some(path)) => read_value_file(&path)?,
        (Some(value), None) if value == "-" => {
            read_value(std::io::stdin().lock(), "standard input")?
        }
        (Some(value), None) => Bytes::from(os_bytes(value)),
        (None, None) => {
            return Err(CliError::Usage(
                "put needs a VALUE, `-` or --file PATH".to_string(),
            ))
        }
    };
    client
        .put(Bytes::from(os_bytes(key)), value)
        .await
        .map_err(write_outcome_unknown)?;
    write_stdout(b"OK\n")
}

/// `raftkv get KEY`: prints the value's raw bytes and a newline.
pub async fn get(
    client: &Client,
    key: OsString,
    consistency: pb::Consistency,
) -> Result<(), CliError> {
    let response = client.get(Bytes::from(os_bytes(key)), consistency).await?;
    let mut output = Vec::with_capacity(response.value.len() + 1);
    output.extend_from_slice(&response.value);
    output.push(b'\n');
    write_stdout(&output)
}

/// `raftkv delete KEY`: succeeds whether or not the key existed, and says which.
pub async fn delete(client: &Client, key: OsString) -> Result<(), CliError> {
    let response = client
        .delete(Bytes::from(os_bytes(key)))
        .await
        .map_err(write_outcome_unknown)?;
    if response.existed {
        write_stdout(b"deleted\n")
    } else {
        write_stdout(b"not found, nothing deleted\n")
    }
}

/// A write that timed out may have been applied anyway (it can commit after the deadline):
/// the message says so, as the exit code 3 does for scripts.
fn write_outcome_unknown(error: client::Error) -> client::Error {
    match error {
        client::Error::Timeout(message) => client::Error::Timeout(format!(
            "{message} (the write may or may not have been applied)"
        )),
        other => other,
    }
}

/// The bytes of a command-line argument, exactly as given (not necessarily UTF-8).
fn os_bytes(text: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    text.into_vec()
}

fn read_value_file(path: &Path) -> Result<Bytes, CliError> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    read_value(file, &path.display().to_string())
}

/// Reads a whole value from `source`, but never more than one byte past the limit: an
/// endless or huge input is refused by the client's limit check instead of filling memory.
fn read_value(source: impl Read, name: &str) -> Result<Bytes, CliError> {
    let mut value = Vec::new();
    source
        .take(MAX_VALUE_BYTES as u64 + 1)
        .read_to_end(&mut value)
        .with_context(|| format!("cannot read the value from {name}"))?;
    Ok(Bytes::from(value))
}

/// Writes to stdout; a reader that went away (`raftkv get k | head -c1`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(CliError::Failed(
            anyhow::Error::new(error).context("cannot write to standard output"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_reading_stops_one_byte_past_the_limit() {
        let endless = std::io::repeat(b'x');
        let value = read_value(endless, "test").unwrap();
        assert_eq!(value.len(), MAX_VALUE_BYTES + 1);
    }

    #[test]
    fn arguments_keep_their_exact_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let raw = vec![0xff, b'k', 0x00];
        assert_eq!(os_bytes(OsString::from_vec(raw.clone())), raw);
    }
}
