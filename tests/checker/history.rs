//! Recording a history from concurrent clients, and dumping / loading it as JSON.
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

use super::{check, Budget, Op, OpResult, Operation, Outcome, Verdict};
use serde_json::{json, Map, Value};
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// A thread-safe recorder of a history, with one clock shared by all clients.
///
/// ```ignore
/// let history = Arc::new(History::new());
/// let p = history.invoke(client_id, key.clone(), Op::Write(value.clone()));
/// match client.put(key, value).await {
///     Ok(_) => history.complete(p, Outcome::Ok(OpResult::Written)),
///     Err(e) if definitely_not_applied(&e) => history.complete(p, Outcome::Failed),
///     Err(_) => history.complete(p, Outcome::Unknown),
/// }
/// ```
///
/// An operation whose [`Pending`] token is dropped without being completed (a
/// cancelled task, a panic) stays `Unknown`, which is always a safe assumption.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

/// The token of an invoked, not yet completed operation.
#[must_use = "complete the operation, or drop the token to leave its outcome unknown"]
#[derive(Debug)]
pub struct Pending {
    index: usize,
}

impl Pending {
    /// Index of the operation in the history.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// A new empty history whose clock starts now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the history started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation>> {
        // A panicking client thread must not make the history unreadable.
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the invocation of `op`; call it just before sending the request.
    pub fn invoke(&self, client: u64, key: impl Into<Vec<u8>>, op: Op) -> Pending {
        let key = key.into();
        let mut ops = self.lock();
        // Timestamp taken under the lock so that the ops are in invocation order.
        let invoke = self.now();
        ops.push(Operation {
            client,
            key,
            op,
            invoke,
            complete: u64::MAX,
            outcome: Outcome::Unknown,
        });
        Pending { index: ops.len() - 1 }
    }

    /// Records the outcome of an invoked operation; call it just after the response
    /// (or the error) arrived.
    pub fn complete(&self, pending: Pending, outcome: Outcome) {
        let complete = self.now();
        let mut ops = self.lock();
        let op = &mut ops[pending.index];
        op.complete = complete;
        op.outcome = outcome;
    }

    /// Adds an already complete operation (times are on this history's clock).
    pub fn push(&self, op: Operation) {
        self.lock().push(op);
    }

    /// A copy of the operations so far (those still pending are `Unknown`).
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the operations so far.
    pub fn check(&self, budget: &Budget) -> Verdict {
        check(&self.operations(), budget)
    }

    /// Dumps the operations so far to `path` (see the module docs for the format).
    pub fn write_json(&self, path: impl AsRef<Path>) -> io::Result<()> {
        write_json(&self.operations(), path)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() & 1 == 1 {
        return Err(format!("odd-length hex string {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("bad hex {s:?}: {e}")))
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

fn bytes_from(v: &Value) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Object(m) => match m.get("hex") {
            Some(Value::String(h)) if m.len() == 1 => unhex(h),
            _ => Err(format!("expected a string or {{\"hex\": ...}}, got {v}")),
        },
        _ => Err(format!("expected a string or {{\"hex\": ...}}, got {v}")),
    }
}

fn opt_bytes_from(v: Option<&Value>) -> Result<Option<Vec<u8>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => bytes_from(v).map(Some),
    }
}

/// One operation as a JSON object.
pub fn operation_json(o: &Operation) -> Value {
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
pub fn operation_from_json(v: &Value) -> Result<Operation, String> {
    let m = v
        .as_object()
        .ok_or_else(|| format!("an operation must be an object: {v}"))?;
    let field = |name: &str| m.get(name).ok_or_else(|| format!("missing {name:?} in {v}"));
    let uint = |name: &str| {
        field(name)?
            .as_u64()
            .ok_or_else(|| format!("{name:?} must be an unsigned integer in {v}"))
    };
    let text = |name: &str| {
        field(name)?
            .as_str()
            .ok_or_else(|| format!("{name:?} must be a string in {v}"))
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
        other => return Err(format!("unknown op {other:?}")),
    };
    let outcome = match text("outcome")? {
        "failed" => Outcome::Failed,
        "unknown" => Outcome::Unknown,
        "ok" => {
            let result = m.get("result").unwrap_or(&Value::Null);
            let flag = || {
                result
                    .as_bool()
                    .ok_or_else(|| format!("\"result\" must be a boolean in {v}"))
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
        other => return Err(format!("unknown outcome {other:?}")),
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
        "format": "raftkv-kv-history/1",
        "time_unit": "ns",
        "ops": ops.iter().map(operation_json).collect::<Vec<_>>(),
    })
}

/// Parses a history written by [`to_json`] / [`write_json`].
pub fn from_json(v: &Value) -> Result<Vec<Operation>, String> {
    let ops = v
        .get("ops")
        .and_then(Value::as_array)
        .ok_or("expected an object with an \"ops\" array")?;
    ops.iter()
        .enumerate()
        .map(|(i, o)| operation_from_json(o).map_err(|e| format!("operation #{i}: {e}")))
        .collect()
}

/// Writes a history to `path`, one operation per line.
pub fn write_json(ops: &[Operation], path: impl AsRef<Path>) -> io::Result<()> {
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "{{\"format\": \"raftkv-kv-history/1\", \"time_unit\": \"ns\", \"ops\": ["
    )?;
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
