//! `slowlog`: `SLOWLOG GET` from every node, merged and sorted, with arguments truncated and
//! secrets redacted; and `SLOWLOG RESET` on every node.

use redis::Value;
use serde::Serialize;
use std::collections::BTreeMap;

use crate::fanout::{query, Executor};
use crate::topology::ClusterView;

/// Arguments shown per entry, and characters per argument.
const MAX_ARGS: usize = 16;
const MAX_ARG_CHARS: usize = 64;
const REDACTED: &str = "(redacted)";

/// One slow command.
#[derive(Debug, Clone, Serialize)]
pub struct SlowEntry {
    pub node: String,
    pub id: u64,
    pub time_unix: u64,
    pub duration_us: u64,
    /// Command and arguments, truncated, secrets replaced by `(redacted)`.
    pub command: Vec<String>,
    pub client: Option<String>,
    pub client_name: Option<String>,
}

/// Which entries to keep.
#[derive(Debug, Clone)]
pub struct SlowlogOptions {
    /// Entries fetched per node (`SLOWLOG GET n`).
    pub per_node: usize,
    /// Only entries at or after this Unix time.
    pub since_unix: Option<u64>,
    /// Keep the N slowest (sorted by duration) instead of all, newest first.
    pub top: Option<usize>,
}

/// JSON: `{"entries": [SlowEntry], "nodes": n, "errors": {node: error}}`.
#[derive(Debug, Clone, Serialize)]
pub struct SlowlogReport {
    pub entries: Vec<SlowEntry>,
    pub nodes: usize,
    pub errors: BTreeMap<String, String>,
}

/// Fetches and merges the slow logs of every node in the view.
pub async fn slowlog(exec: &Executor, view: &ClusterView, opts: &SlowlogOptions) -> SlowlogReport {
    let n = opts.per_node;
    let result = exec
        .run(view.addrs(), |addr, mut conn| async move {
            let v: Value = query(&addr, &mut conn, redis::cmd("SLOWLOG").arg("GET").arg(n)).await?;
            Ok(parse_entries(&addr.to_string(), &v))
        })
        .await;
    let mut entries: Vec<SlowEntry> = result
        .ok
        .into_values()
        .flatten()
        .filter(|e| opts.since_unix.is_none_or(|s| e.time_unix >= s))
        .collect();
    match opts.top {
        Some(top) => {
            entries.sort_by(|a, b| {
                b.duration_us
                    .cmp(&a.duration_us)
                    .then(b.time_unix.cmp(&a.time_unix))
            });
            entries.truncate(top);
        }
        None => entries.sort_by(|a, b| {
            b.time_unix
                .cmp(&a.time_unix)
                .then(b.duration_us.cmp(&a.duration_us))
        }),
    }
    SlowlogReport {
        entries,
        nodes: view.addrs().len(),
        errors: result
            .failed
            .into_iter()
            .map(|(a, e)| (a.to_string(), e.to_string()))
            .collect(),
    }
}

/// What `SLOWLOG RESET` did: nodes reset, and nodes that refused.
#[derive(Debug, Clone, Serialize)]
pub struct ResetReport {
    pub reset: Vec<String>,
    pub errors: BTreeMap<String, String>,
}

/// Clears the slow log on every node of the view.
pub async fn reset(exec: &Executor, view: &ClusterView) -> ResetReport {
    let result = exec
        .run(view.addrs(), |addr, mut conn| async move {
            query::<()>(&addr, &mut conn, redis::cmd("SLOWLOG").arg("RESET")).await
        })
        .await;
    ResetReport {
        reset: result.ok.keys().map(ToString::to_string).collect(),
        errors: result
            .failed
            .into_iter()
            .map(|(a, e)| (a.to_string(), e.to_string()))
            .collect(),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// Parses a `SLOWLOG GET` reply; malformed entries are skipped rather than failing the node.
pub fn parse_entries(node: &str, v: &Value) -> Vec<SlowEntry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(f) = item else { return None };
            let Value::Array(args) = f.get(3)? else {
                return None;
            };
            let args: Vec<Vec<u8>> = args.iter().filter_map(as_bytes).collect();
            let text = |i: usize| {
                f.get(i)
                    .and_then(as_bytes)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .filter(|s| !s.is_empty())
            };
            Some(SlowEntry {
                node: node.to_string(),
                id: as_u64(f.first()?)?,
                time_unix: as_u64(f.get(1)?)?,
                duration_us: as_u64(f.get(2)?)?,
                command: redact(&args),
                client: text(4),
                client_name: text(5),
            })
        })
        .collect()
}

/// Truncates a command for display and replaces secrets: `AUTH` arguments, `HELLO … AUTH`
/// and `MIGRATE … AUTH/AUTH2` passwords, `CONFIG SET` of password parameters, and
/// `ACL SETUSER` password rules (`>pw`, `#hash`).
pub fn redact(args: &[Vec<u8>]) -> Vec<String> {
    let upper = |i: usize| {
        args.get(i)
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    };
    let cmd = upper(0);
    let mut secret = vec![false; args.len()];
    match cmd.as_str() {
        "AUTH" => secret.iter_mut().skip(1).for_each(|s| *s = true),
        "HELLO" | "MIGRATE" => {
            for i in 1..args.len() {
                match upper(i).as_str() {
                    // HELLO AUTH user pass; MIGRATE … AUTH2 user pass
                    "AUTH" if cmd == "HELLO" => mark(&mut secret, i + 2),
                    "AUTH2" => mark(&mut secret, i + 2),
                    // MIGRATE … AUTH pass
                    "AUTH" => mark(&mut secret, i + 1),
                    _ => {}
                }
            }
        }
        "CONFIG" if upper(1) == "SET" => {
            let mut i = 2;
            while i + 1 < args.len() {
                let p = upper(i).to_ascii_lowercase();
                if p.contains("pass")
                    || p == "masterauth"
                    || p == "requirepass"
                    || p == "masteruser"
                {
                    mark(&mut secret, i + 1);
                }
                i += 2;
            }
        }
        "ACL" if upper(1) == "SETUSER" => {
            for (i, a) in args.iter().enumerate().skip(3) {
                if matches!(a.first(), Some(b'>' | b'#' | b'<' | b'!')) {
                    mark(&mut secret, i);
                }
            }
        }
        _ => {}
    }
    let mut out: Vec<String> = args
        .iter()
        .zip(&secret)
        .take(MAX_ARGS)
        .map(|(a, &s)| {
            if s {
                return REDACTED.to_string();
            }
            let text = String::from_utf8_lossy(a);
            if text.chars().count() > MAX_ARG_CHARS {
                format!("{}…", text.chars().take(MAX_ARG_CHARS).collect::<String>())
            } else {
                text.into_owned()
            }
        })
        .collect();
    if args.len() > MAX_ARGS {
        out.push(format!("… ({} more arguments)", args.len() - MAX_ARGS));
    }
    out
}

fn mark(secret: &mut [bool], i: usize) {
    if let Some(s) = secret.get_mut(i) {
        *s = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(words: &[&str]) -> Vec<String> {
        redact(
            &words
                .iter()
                .map(|w| w.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn secrets_are_redacted_wherever_commands_carry_them() {
        assert_eq!(r(&["AUTH", "pw"]), ["AUTH", REDACTED]);
        assert_eq!(r(&["auth", "user", "pw"]), ["auth", REDACTED, REDACTED]);
        assert_eq!(
            r(&["HELLO", "3", "AUTH", "u", "pw"]),
            ["HELLO", "3", "AUTH", "u", REDACTED]
        );
        assert_eq!(
            r(&[
                "CONFIG",
                "SET",
                "maxmemory",
                "1gb",
                "requirepass",
                "pw",
                "masterauth",
                "x"
            ]),
            [
                "CONFIG",
                "SET",
                "maxmemory",
                "1gb",
                "requirepass",
                REDACTED,
                "masterauth",
                REDACTED
            ]
        );
        assert_eq!(
            r(&["MIGRATE", "h", "1", "", "0", "5", "AUTH", "pw", "KEYS", "a"])[7],
            REDACTED
        );
        assert_eq!(
            r(&["MIGRATE", "h", "1", "", "0", "5", "AUTH2", "u", "pw"])[8],
            REDACTED
        );
        assert_eq!(
            r(&["ACL", "SETUSER", "bob", "on", ">pw", "~*"]),
            ["ACL", "SETUSER", "bob", "on", REDACTED, "~*"]
        );
        assert_eq!(r(&["GET", "requirepass"]), ["GET", "requirepass"]);
    }

    #[test]
    fn long_commands_are_truncated() {
        let long = "x".repeat(100);
        let out = r(&["SET", "k", &long]);
        assert_eq!(out[2].chars().count(), MAX_ARG_CHARS + 1);
        let many: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = std::iter::once("MSET")
            .chain(many.iter().map(String::as_str))
            .collect();
        let out = r(&refs);
        assert_eq!(out.len(), MAX_ARGS + 1);
        assert_eq!(out[MAX_ARGS], "… (25 more arguments)");
    }

    #[test]
    fn parses_slowlog_replies_and_skips_malformed_entries() {
        let entry = Value::Array(vec![
            Value::Int(7),
            Value::Int(1_700_000_000),
            Value::Int(1500),
            Value::Array(vec![
                Value::BulkString(b"AUTH".to_vec()),
                Value::BulkString(b"pw".to_vec()),
            ]),
            Value::BulkString(b"127.0.0.1:5000".to_vec()),
            Value::BulkString(Vec::new()),
        ]);
        let v = Value::Array(vec![
            entry,
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
        ]);
        let e = parse_entries("n:1", &v);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].id, e[0].duration_us), (7, 1500));
        assert_eq!(e[0].command, ["AUTH", REDACTED]);
        assert_eq!(e[0].client.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(e[0].client_name, None);
    }
}
