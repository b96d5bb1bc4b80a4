//! Dumping a history as JSON and loading it back, so that a failed run's history can be
//! kept, read and checked again.
//!
//! JSON format (one object, one operation per line in files written by [`write_json`]):
//!
//! ```text
//! {"format": "raftkv-kv-history/1", "time_unit": "ns", "ops": [
//!   {"client": 1, "key": "k", "op": "write", "value": "v1", "invoke": 10, "complete": 25, "outcome": "ok"},
//!   {"client": 2, "key": "k", "op": "read", "invoke": 12, "complete": 30, "outcome": "ok", "result": "v1"},
//!   {"client": 3, "key": "k", "op": "cas", "expect": null, "new": "v2", "invoke": 40, "complete": 18446744073709551615, "outcome": "unknown"}
//! ]}
//! ```
//!
//! Byte strings are JSON strings when they are valid UTF-8 and `{"hex": "..."}` otherwise;
//! `null` is "absent". `op` is one of `read`, `write` (`value`), `delete`, `cas`
//! (`expect`, `new`), `delete_if` (`expect`). `outcome` is `ok`, `failed` or `unknown`;
//! with `ok`, `result` is the value read (read), whether the key existed or null
//! (delete), whether it swapped / deleted (cas / delete_if), absent for write.

use std::io::{self, Write as _};
use std::num::ParseIntError;
use std::path::Path;

use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::operation::{Op, OpResult, Operation, Outcome};

/// The `format` of a history file; a reader of another format must not guess.
const FORMAT: &str = "raftkv-kv-history/1";

/// Why a JSON value is not a history in this module's format.
#[derive(Debug, Error)]
pub enum HistoryJsonError {
    #[error("expected an object with an \"ops\" array")]
    NoOpsArray,
    #[error("operation #{index}: {error}")]
    BadOperation { index: usize, error: OperationJsonError },
}

/// Why a JSON value is not one operation in this module's format.
#[derive(Debug, Error)]
pub enum OperationJsonError {
    #[error("an operation must be an object: {0}")]
    NotAnObject(Value),
    #[error("missing {field:?} in {operation}")]
    MissingField { field: &'static str, operation: Value },
    #[error("{field:?} must be an unsigned integer in {operation}")]
    NotAnUnsignedInteger { field: &'static str, operation: Value },
    #[error("{field:?} must be a string in {operation}")]
    NotAString { field: &'static str, operation: Value },
    #[error("\"result\" must be a boolean in {0}")]
    ResultNotABoolean(Value),
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("unknown outcome {0:?}")]
    UnknownOutcome(String),
    #[error("expected a string or {{\"hex\": ...}}, got {0}")]
    NotBytes(Value),
    #[error("odd-length hex string {0:?}")]
    OddLengthHex(String),
    #[error("bad hex {text:?}: {error}")]
    BadHex { text: String, error: ParseIntError },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, OperationJsonError> {
    if s.len() & 1 == 1 {
        return Err(OperationJsonError::OddLengthHex(s.to_string()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).map_err(|error| OperationJsonError::BadHex {
                text: s.to_string(),
                error,
            })
        })
        .collect()
}

fn bytes_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": hex(b) }),
    }
}

fn opt_bytes_json(b: &Option<Vec<u8>>) -> Value {
    b.as_deref().map_or(Value::Null, bytes_json)
}

fn bytes_from(v: &Value) -> Result<Vec<u8>, OperationJsonError> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Object(m) => match m.get("hex") {
            Some(Value::String(h)) if m.len() == 1 => unhex(h),
            _ => Err(OperationJsonError::NotBytes(v.clone())),
        },
        _ => Err(OperationJsonError::NotBytes(v.clone())),
    }
}

fn opt_bytes_from(v: Option<&Value>) -> Result<Option<Vec<u8>>, OperationJsonError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => bytes_from(v).map(Some),
    }
}

/// One operation as a JSON object.
fn operation_json(o: &Operation) -> Value {
    let mut m = Map::new();
    m.insert("client".into(), json!(o.client));
    m.insert("key".into(), bytes_json(&o.key));
    match &o.op {
        Op::Read => {
            m.insert("op".into(), json!("read"));
        }
        Op::Write(v) => {
            m.insert("op".into(), json!("write"));
            m.insert("value".into(), bytes_json(v));
        }
        Op::Delete => {
            m.insert("op".into(), json!("delete"));
        }
        Op::Cas { expect, new } => {
            m.insert("op".into(), json!("cas"));
            m.insert("expect".into(), opt_bytes_json(expect));
            m.insert("new".into(), bytes_json(new));
        }
        Op::DeleteIf { expect } => {
            m.insert("op".into(), json!("delete_if"));
            m.insert("expect".into(), bytes_json(expect));
        }
    }
    m.insert("invoke".into(), json!(o.invoke));
    m.insert("complete".into(), json!(o.complete));
    match &o.outcome {
        Outcome::Failed => {
            m.insert("outcome".into(), json!("failed"));
        }
        Outcome::Unknown => {
            m.insert("outcome".into(), json!("unknown"));
        }
        Outcome::Ok(r) => {
            m.insert("outcome".into(), json!("ok"));
            let result = match r {
                OpResult::Read(v) => Some(opt_bytes_json(v)),
                OpResult::Written => None,
                OpResult::Deleted { existed } => Some(json!(existed)),
                OpResult::Cas(b) | OpResult::DeleteIf(b) => Some(json!(b)),
            };
            if let Some(result) = result {
                m.insert("result".into(), result);
            }
        }
    }
    Value::Object(m)
}

/// Parses one operation written by [`operation_json`].
fn operation_from_json(v: &Value) -> Result<Operation, OperationJsonError> {
    let m = v
        .as_object()
        .ok_or_else(|| OperationJsonError::NotAnObject(v.clone()))?;
    let field = |name: &'static str| {
        m.get(name).ok_or_else(|| OperationJsonError::MissingField {
            field: name,
            operation: v.clone(),
        })
    };
    let uint = |name: &'static str| {
        field(name)?
            .as_u64()
            .ok_or_else(|| OperationJsonError::NotAnUnsignedInteger {
                field: name,
                operation: v.clone(),
            })
    };
    let text = |name: &'static str| {
        field(name)?.as_str().ok_or_else(|| OperationJsonError::NotAString {
            field: name,
            operation: v.clone(),
        })
    };
    let op = match text("op")? {
        "read" => Op::Read,
        "write" => Op::Write(bytes_from(field("value")?)?),
        "delete" => Op::Delete,
        "cas" => Op::Cas {
            expect: opt_bytes_from(m.get("expect"))?,
            new: bytes_from(field("new")?)?,
        },
        "delete_if" => Op::DeleteIf {
            expect: bytes_from(field("expect")?)?,
        },
        other => return Err(OperationJsonError::UnknownOp(other.to_string())),
    };
    let outcome = match text("outcome")? {
        "failed" => Outcome::Failed,
        "unknown" => Outcome::Unknown,
        "ok" => {
            let result = m.get("result").unwrap_or(&Value::Null);
            let flag = || {
                result
                    .as_bool()
                    .ok_or_else(|| OperationJsonError::ResultNotABoolean(v.clone()))
            };
            Outcome::Ok(match &op {
                Op::Read => OpResult::Read(opt_bytes_from(Some(result))?),
                Op::Write(_) => OpResult::Written,
                Op::Delete => OpResult::Deleted {
                    existed: result.as_bool(),
                },
                Op::Cas { .. } => OpResult::Cas(flag()?),
                Op::DeleteIf { .. } => OpResult::DeleteIf(flag()?),
            })
        }
        other => return Err(OperationJsonError::UnknownOutcome(other.to_string())),
    };
    Ok(Operation {
        client: uint("client")?,
        key: bytes_from(field("key")?)?,
        op,
        invoke: uint("invoke")?,
        complete: uint("complete")?,
        outcome,
    })
}

/// A whole history as a JSON value.
pub fn to_json(ops: &[Operation]) -> Value {
    json!({
        "format": FORMAT,
        "time_unit": "ns",
        "ops": ops.iter().map(operation_json).collect::<Vec<_>>(),
    })
}

/// Parses a history written by [`to_json`] / [`write_json`].
pub fn from_json(v: &Value) -> Result<Vec<Operation>, HistoryJsonError> {
    let ops = v
        .get("ops")
        .and_then(Value::as_array)
        .ok_or(HistoryJsonError::NoOpsArray)?;
    ops.iter()
        .enumerate()
        .map(|(index, o)| operation_from_json(o).map_err(|error| HistoryJsonError::BadOperation { index, error }))
        .collect()
}

/// Writes a history to `path`, one operation per line.
pub fn write_json(ops: &[Operation], path: impl AsRef<Path>) -> io::Result<()> {
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "{{\"format\": \"{FORMAT}\", \"time_unit\": \"ns\", \"ops\": [")?;
    for (i, o) in ops.iter().enumerate() {
        let sep = if i + 1 < ops.len() { "," } else { "" };
        writeln!(out, "  {}{sep}", operation_json(o))?;
    }
    writeln!(out, "]}}")?;
    out.flush()
}

/// Reads a history written by [`write_json`].
pub fn read_json(path: impl AsRef<Path>) -> io::Result<Vec<Operation>> {
    let text = std::fs::read_to_string(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    from_json(&value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
