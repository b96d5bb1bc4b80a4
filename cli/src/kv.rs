//! `raftkv put`, `get`, `delete` and `cas`: turning command-line arguments into client calls
//! and the answers into output and exit codes.
//!
//! Keys and values are bytes: they are taken from the arguments as raw OS strings, and `get`
//! prints the value's raw bytes, so binary data survives a round trip. Everything else shows
//! bytes as [`crate::bytes_as_text`] says. Limits are checked by the client library, so an
//! oversized key or value is refused here exactly as everywhere else.
//!
//! A conditional write (`cas`, `delete --expect`) whose comparison fails is not a failure of
//! the cluster: it was answered and nothing was written, so the command exits with code 1 and
//! names the value it found.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use clap::{ArgGroup, Args, ValueEnum};
use raftkv::client::{self, Client};
use raftkv::limits::MAX_VALUE_BYTES;
use raftkv::pb;
use serde::Serialize;

use crate::bytes_as_text::{escape, JsonBytes};
use crate::CliError;

/// How much of a value an error message on stderr shows; `--output json` shows all of it.
const MAX_VALUE_BYTES_IN_MESSAGES: usize = 1024;

/// What `raftkv get` prints.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetOutput {
    /// The value's raw bytes and a newline.
    Raw,
    /// {"key":..,"value":..,"node_id":N,"applied_index":N} and a newline.
    Json,
}

/// What `raftkv cas` prints.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutput {
    /// `swapped`; a failed comparison only on stderr.
    Text,
    /// {"key":..,"swapped":BOOL,"current":..,"node_id":N,"applied_index":N} and a newline.
    Json,
}

/// `raftkv cas KEY (--expect OLD | --expect-absent) NEW`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("expectation").required(true).args(["expect", "expect_absent"])))]
pub struct CasArgs {
    /// The key.
    #[arg(value_parser = clap::value_parser!(OsString))]
    key: OsString,
    /// The new value (up to 1 MiB); `-` reads it from standard input.
    #[arg(value_parser = clap::value_parser!(OsString), value_name = "NEW")]
    new_value: OsString,
    /// Swap only if the key now holds exactly this value (taken literally: `-` is the value "-").
    #[arg(
        long,
        value_name = "OLD",
        value_parser = clap::value_parser!(OsString),
        allow_hyphen_values = true
    )]
    expect: Option<OsString>,
    /// Swap only if the key does not exist.
    #[arg(long)]
    expect_absent: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = CasOutput::Text)]
    output: CasOutput,
}

/// `raftkv put KEY VALUE|-` or `raftkv put KEY --file PATH`.
pub async fn put(
    client: &Client,
    key: OsString,
    value: Option<OsString>,
    file: Option<PathBuf>,
) -> Result<(), CliError> {
    let value = match (value, file) {
        (_, Some(path)) => read_value_file(&path)?,
        (Some(value), None) if value == "-" => read_value(std::io::stdin().lock(), "standard input")?,
        (Some(value), None) => Bytes::from(os_bytes(value)),
        (None, None) => return Err(CliError::Usage("put needs a VALUE, `-` or --file PATH".to_string())),
    };
    client
        .put(Bytes::from(os_bytes(key)), value)
        .await
        .map_err(write_outcome_unknown)?;
    write_stdout(b"OK\n")
}

/// `raftkv get KEY`: prints the value's raw bytes and a newline, or the answer as JSON.
pub async fn get(
    client: &Client,
    key: OsString,
    consistency: pb::Consistency,
    output: GetOutput,
) -> Result<(), CliError> {
    let key = Bytes::from(os_bytes(key));
    let response = client.get(key.clone(), consistency).await?;
    match output {
        GetOutput::Raw => {
            let mut raw = Vec::with_capacity(response.value.len() + 1);
            raw.extend_from_slice(&response.value);
            raw.push(b'\n');
            write_stdout(&raw)
        }
        GetOutput::Json => {
            let key = JsonBytes::of(&key);
            let value = JsonBytes::of(&response.value);
            let served_by = ServedBy::from(response.header);
            write_json(&GetJson {
                key: key.text,
                key_base64: key.base64,
                value: value.text,
                value_base64: value.base64,
                node_id: served_by.node_id,
                applied_index: served_by.applied_index,
            })
        }
    }
}

/// `raftkv get --output json`.
#[derive(Serialize)]
struct GetJson {
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    node_id: Option<u64>,
    applied_index: Option<u64>,
}

/// `raftkv delete KEY [--expect OLD]`. Without an expectation it succeeds whether or not the
/// key existed, and says which. With one, a different value or a missing key is a failed
/// comparison: nothing is deleted, exit code 1.
pub async fn delete(client: &Client, key: OsString, expect: Option<OsString>) -> Result<(), CliError> {
    let key = Bytes::from(os_bytes(key));
    let Some(expect) = expect else {
        let response = client.delete(key).await.map_err(write_outcome_unknown)?;
        return if response.existed {
            write_stdout(b"deleted\n")
        } else {
            write_stdout(b"not found, nothing deleted\n")
        };
    };
    let response = client
        .delete_if(key, Bytes::from(os_bytes(expect)))
        .await
        .map_err(write_outcome_unknown)?;
    if response.deleted {
        write_stdout(b"deleted\n")
    } else {
        Err(comparison_failed("nothing deleted", response.current.as_deref()))
    }
}

/// `raftkv cas`: exit code 0 when swapped, 1 when the comparison failed.
pub async fn cas(client: &Client, args: CasArgs) -> Result<(), CliError> {
    let CasArgs {
        key,
        new_value,
        expect,
        expect_absent,
        output,
    } = args;
    // clap's argument group makes the two exclusive and one of them required.
    debug_assert_ne!(expect.is_some(), expect_absent);
    let new_value = if new_value == "-" {
        read_value(std::io::stdin().lock(), "standard input")?
    } else {
        Bytes::from(os_bytes(new_value))
    };
    let key = Bytes::from(os_bytes(key));
    let expect = expect.map(|expect| Bytes::from(os_bytes(expect)));
    let response = client
        .compare_and_swap(key.clone(), expect, new_value)
        .await
        .map_err(write_outcome_unknown)?;
    // After a swap there is no "value found" to report, whatever the reply carries.
    let current = if response.swapped {
        None
    } else {
        response.current.as_deref()
    };
    match output {
        CasOutput::Text if response.swapped => write_stdout(b"swapped\n")?,
        CasOutput::Text => {}
        CasOutput::Json => {
            let key = JsonBytes::of(&key);
            let current = JsonBytes::of_optional(current);
            let served_by = ServedBy::from(response.header);
            write_json(&CasJson {
                key: key.text,
                key_base64: key.base64,
                swapped: response.swapped,
                current: current.text,
                current_base64: current.base64,
                node_id: served_by.node_id,
                applied_index: served_by.applied_index,
            })?;
        }
    }
    if response.swapped {
        Ok(())
    } else {
        Err(comparison_failed("nothing written", current))
    }
}

/// `raftkv cas --output json`. `current` is the value found when the comparison failed; it is
/// `null` (and `current_base64` left out) when the key did not exist or the swap happened.
#[derive(Serialize)]
struct CasJson {
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    swapped: bool,
    current: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_base64: Option<String>,
    node_id: Option<u64>,
    applied_index: Option<u64>,
}

/// Who served a reply and how far its state machine had got; `None` when the reply did not
/// say (every raftkv node says, so `null` in JSON output points at an odd server).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServedBy {
    pub node_id: Option<u64>,
    pub applied_index: Option<u64>,
}

impl From<Option<pb::ReplyHeader>> for ServedBy {
    fn from(header: Option<pb::ReplyHeader>) -> Self {
        match header {
            Some(header) => ServedBy {
                node_id: Some(header.node_id),
                applied_index: Some(header.applied_index),
            },
            None => ServedBy::default(),
        }
    }
}

/// The error of a conditional write whose comparison failed, naming what the key holds.
fn comparison_failed(outcome: &str, current: Option<&[u8]>) -> CliError {
    let found = match current {
        None => "the key does not exist".to_string(),
        Some(value) if value.len() > MAX_VALUE_BYTES_IN_MESSAGES => format!(
            "the key holds \"{}\"... ({} bytes in all; --output json shows all of it)",
            escape(&value[..MAX_VALUE_BYTES_IN_MESSAGES]),
            value.len()
        ),
        Some(value) => format!("the key holds \"{}\"", escape(value)),
    };
    CliError::ComparisonFailed(format!("comparison failed, {outcome}: {found}"))
}

/// Writes `value` as one line of JSON to stdout.
pub fn write_json(value: &impl Serialize) -> Result<(), CliError> {
    let mut line = serde_json::to_vec(value)
        .context("cannot render the answer as JSON")
        .map_err(CliError::Failed)?;
    line.push(b'\n');
    write_stdout(&line)
}

/// A write that timed out may have been applied anyway (it can commit after the deadline):
/// the message says so, as the exit code 3 does for scripts.
fn write_outcome_unknown(error: client::Error) -> client::Error {
    match error {
        client::Error::Timeout(message) => {
            client::Error::Timeout(format!("{message} (the write may or may not have been applied)"))
        }
        other => other,
    }
}

/// The bytes of a command-line argument, exactly as given (not necessarily UTF-8).
pub(crate) fn os_bytes(text: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    text.into_vec()
}

fn read_value_file(path: &Path) -> Result<Bytes, CliError> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
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
pub(crate) fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
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
    fn failed_comparison_names_the_value_found_on_one_line() {
        let error = comparison_failed("nothing written", Some(b"a  b\nc"));
        assert_eq!(error.exit_code(), 1);
        assert_eq!(
            error.message(),
            "comparison failed, nothing written: the key holds \"a  b\\nc\""
        );
        let error = comparison_failed("nothing deleted", None);
        assert_eq!(
            error.message(),
            "comparison failed, nothing deleted: the key does not exist"
        );
    }

    #[test]
    fn failed_comparison_shortens_a_long_value() {
        let value = vec![b'x'; MAX_VALUE_BYTES_IN_MESSAGES + 10];
        let message = comparison_failed("nothing written", Some(&value)).message();
        assert!(message.contains(&format!("{} bytes in all", value.len())), "{message}");
        assert!(message.len() < MAX_VALUE_BYTES_IN_MESSAGES + 200, "{message}");
    }

    #[test]
    fn json_answers_keep_the_documented_field_order_and_base64_convention() {
        let key = JsonBytes::of(b"k");
        let value = JsonBytes::of(b"\xff");
        let json = serde_json::to_string(&GetJson {
            key: key.text,
            key_base64: key.base64,
            value: value.text,
            value_base64: value.base64,
            node_id: Some(2),
            applied_index: Some(17),
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"key":"k","value":null,"value_base64":"/w==","node_id":2,"applied_index":17}"#
        );
    }

    #[test]
    fn arguments_keep_their_exact_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let raw = vec![0xff, b'k', 0x00];
        assert_eq!(os_bytes(OsString::from_vec(raw.clone())), raw);
    }
}
