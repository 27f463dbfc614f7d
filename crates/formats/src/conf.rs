//! redis.conf syntax and CONFIG value comparison: parsing desired-state files, writing
//! snapshot files that are themselves valid redis.conf, and deciding whether two spellings of
//! a value mean the same (`4gb` and `4294967296`). Pure text handling, no I/O.

use std::collections::BTreeMap;

/// Parameter name → value, as `CONFIG GET` returns them.
pub type Params = BTreeMap<String, String>;

/// Which nodes a section of a desired-state file applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    All,
    Master,
    Replica,
}

/// A desired-state file: parameters for every node, then per-role overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub sections: BTreeMap<Scope, Params>,
}

impl Desired {
    /// The parameters a node of this role should have (role sections override `All`).
    pub fn for_role(&self, master: bool) -> Params {
        let mut out = self.sections.get(&Scope::All).cloned().unwrap_or_default();
        let role = if master {
            Scope::Master
        } else {
            Scope::Replica
        };
        if let Some(p) = self.sections.get(&role) {
            out.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.sections.values().all(|p| p.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ConfError {
    pub line: usize,
    pub reason: String,
}

/// Parameters whose repeated lines accumulate (`save 900 1` + `save 300 10`) instead of the
/// last one winning.
const ACCUMULATING: &[&str] = &["save", "client-output-buffer-limit"];

/// Parses redis.conf syntax: `name value…` per line, `#` comments, double- and single-quoted
/// arguments with redis' escapes. Section lines `[master]` / `[replica]` / `[all]` (an rcops
/// extension) scope what follows to one role.
pub fn parse_conf(text: &str) -> Result<Desired, ConfError> {
    let mut desired = Desired::default();
    let mut scope = Scope::All;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            scope = parse_scope(name).ok_or_else(|| ConfError {
                line,
                reason: format!("unknown section [{name}] (expected all, master or replica)"),
            })?;
            continue;
        }
        let args = split_args(trimmed).map_err(|reason| ConfError { line, reason })?;
        let Some((name, rest)) = args.split_first() else {
            continue;
        };
        if rest.is_empty() {
            return Err(ConfError {
                line,
                reason: format!("{name}: no value"),
            });
        }
        let name = name.to_ascii_lowercase();
        let value = rest.join(" ");
        let params = desired.sections.entry(scope).or_default();
        match params.get_mut(&name) {
            Some(v) if ACCUMULATING.contains(&name.as_str()) && !v.is_empty() => {
                v.push(' ');
                v.push_str(&value);
            }
            _ => {
                params.insert(name, value);
            }
        }
    }
    Ok(desired)
}

pub fn parse_scope(name: &str) -> Option<Scope> {
    match name.trim().to_ascii_lowercase().as_str() {
        "all" | "*" => Some(Scope::All),
        "master" | "masters" | "primary" => Some(Scope::Master),
        "replica" | "replicas" | "slave" => Some(Scope::Replica),
        _ => None,
    }
}

/// Splits a line the way redis does (`sdssplitargs`): whitespace-separated, `"…"` with
/// `\n \r \t \b \a \\ \" \xHH` escapes, `'…'` with only `\'`.
pub fn split_args(line: &str) -> Result<Vec<String>, String> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let mut cur: Vec<u8> = Vec::new();
        match b[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = b.get(i) else {
                        return Err("unbalanced quotes".into());
                    };
                    if c == q {
                        i += 1;
                        if b.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                            return Err("closing quote must be followed by a space".into());
                        }
                        break;
                    }
                    if c == b'\\' && i + 1 < b.len() {
                        let n = b[i + 1];
                        if q == b'\'' {
                            if n == b'\'' {
                                cur.push(b'\'');
                                i += 2;
                                continue;
                            }
                        } else if n == b'x'
                            && i + 3 < b.len()
                            && b[i + 2].is_ascii_hexdigit()
                            && b[i + 3].is_ascii_hexdigit()
                        {
                            let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("0");
                            cur.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                            i += 4;
                            continue;
                        } else {
                            cur.push(match n {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                            continue;
                        }
                    }
                    cur.push(c);
                    i += 1;
                }
            }
            _ => {
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    cur.push(b[i]);
                    i += 1;
                }
            }
        }
        out.push(String::from_utf8_lossy(&cur).into_owned());
    }
}

/// Quotes a value for a redis.conf line when it needs it (empty, spaces, quotes, controls).
pub fn quote(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    push_quoted(&mut s, value);
    s
}

/// [`quote`] into `out`: a snapshot writes ~200 values per node, without an allocation each.
fn push_quoted(out: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\'' && c != b'\\');
    if plain {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes parameters as redis.conf lines, sorted, one per parameter. Multi-word values
/// (`save 3600 1 300 100`) are quoted as one argument so they read back as one value.
pub fn write_conf(params: &Params) -> String {
    let mut out = String::new();
    write_conf_into(&mut out, params, false);
    out
}

/// Appends `params` as redis.conf lines to `out`; with `masked`, secrets that are set are
/// written as [`MASK`] (what history stores) without copying the parameters first.
pub fn write_conf_into(out: &mut String, params: &Params, masked: bool) {
    for (k, v) in params {
        out.push_str(k);
        out.push(' ');
        if masked && is_secret(k) && !v.is_empty() {
            out.push_str(MASK);
        } else {
            push_quoted(out, v);
        }
        out.push('\n');
    }
}

/// A size as redis' `memtoull` reads it: `k`=1000, `kb`=1024, `m`, `mb`, `g`, `gb`,
/// case-insensitive.
pub fn parse_memory(s: &str) -> Option<u64> {
    let s = s.to_ascii_lowercase();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let mul: u64 = match &s[digits..] {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// The comparable form of a value: tokens lower-cased, sizes in bytes, `replica` as the
/// `slave` class redis reports in `client-output-buffer-limit`, whitespace collapsed.
pub fn canonical(param: &str, value: &str) -> String {
    let param = param.to_ascii_lowercase();
    let tokens: Vec<String> = value
        .split_whitespace()
        .map(|t| {
            let t = t.to_ascii_lowercase();
            if let Some(n) = parse_memory(&t) {
                return n.to_string();
            }
            if param == "client-output-buffer-limit" && t == "replica" {
                return "slave".into();
            }
            t
        })
        .collect();
    let mut joined = tokens.join(" ");
    if param == "notify-keyspace-events" {
        // Flags are a set; redis reorders them.
        let mut c: Vec<char> = value.chars().filter(|c| !c.is_whitespace()).collect();
        c.sort_unstable();
        joined = c.into_iter().collect();
    }
    joined
}

/// Whether two spellings of a parameter's value mean the same.
pub fn same_value(param: &str, a: &str, b: &str) -> bool {
    a == b || canonical(param, a) == canonical(param, b)
}

/// Parameters that hold secrets: masked in snapshots and output, never restored from one.
pub const SECRETS: &[&str] = &[
    "requirepass",
    "masterauth",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
];

/// What a masked secret looks like in snapshots and output.
pub const MASK: &str = "(hidden)";

pub fn is_secret(param: &str) -> bool {
    SECRETS.contains(&param)
}

/// Replaces secret values (when set) with [`MASK`].
pub fn mask_secrets(params: &mut Params) {
    for (k, v) in params.iter_mut() {
        if is_secret(k) && !v.is_empty() {
            *v = MASK.to_string();
        }
    }
}

/// Parameters redis only reads at startup (`IMMUTABLE_CONFIG`), or that are protected by
/// default in 7.0 (`dir`, `dbfilename`): `CONFIG SET` refuses them, so a rollback reports
/// them instead of failing the whole node.
pub const IMMUTABLE: &[&str] = &[
    "daemonize",
    "supervised",
    "io-threads",
    "io-threads-do-reads",
    "always-show-logo",
    "syslog-enabled",
    "syslog-ident",
    "syslog-facility",
    "cluster-enabled",
    "cluster-config-file",
    "cluster-port",
    "aclfile",
    "unixsocket",
    "unixsocketperm",
    "pidfile",
    "appendfilename",
    "appenddirname",
    "databases",
    "tcp-backlog",
    "rdbchecksum",
    "server_cpulist",
    "bio_cpulist",
    "aof_rewrite_cpulist",
    "bgsave_cpulist",
    "enable-protected-configs",
    "enable-debug-command",
    "enable-module-command",
    "dir",
    "dbfilename",
];

pub fn is_immutable(param: &str) -> bool {
    IMMUTABLE.contains(&param)
}

/// Other names of the same setting: redis 7 keeps `slave-*` aliases of `replica-*` and
/// `*-ziplist-*` aliases of `*-listpack-*`, and `CONFIG GET *` lists both.
pub fn aliases(param: &str) -> Vec<String> {
    let swaps = [("slave", "replica"), ("ziplist", "listpack")];
    let mut out = Vec::new();
    for (a, b) in swaps {
        for (from, to) in [(a, b), (b, a)] {
            if param.contains(from) {
                out.push(param.replace(from, to));
            }
        }
    }
    out
}

/// Parameters that legitimately differ between nodes (addresses, paths, per-node files):
/// ignored by drift detection unless asked for.
pub const PER_NODE: &[&str] = &[
    "port",
    "tls-port",
    "bind",
    "bind-source-addr",
    "dir",
    "logfile",
    "pidfile",
    "unixsocket",
    "cluster-config-file",
    "cluster-port",
    "cluster-announce-ip",
    "cluster-announce-port",
    "cluster-announce-bus-port",
    "cluster-announce-tls-port",
    "cluster-announce-hostname",
    "cluster-announce-human-nodename",
    "replicaof",
    "slaveof",
    "tls-cert-file",
    "tls-key-file",
    "tls-client-cert-file",
    "tls-client-key-file",
    "syslog-ident",
];

pub fn is_per_node(param: &str) -> bool {
    PER_NODE.contains(&param)
}

/// Glob match as redis' `stringmatchlen` does for CONFIG GET patterns (`*`, `?`, `[…]`),
/// ignoring case like CONFIG GET.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob_bytes(
        pattern.to_ascii_lowercase().as_bytes(),
        text.to_ascii_lowercase().as_bytes(),
    )
}

/// Case-sensitive glob over bytes, as `SCAN MATCH` and `KEYS` apply it to key names.
pub fn glob_bytes(p: &[u8], t: &[u8]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((b'*', rest)) => (0..=t.len()).any(|i| glob_bytes(rest, &t[i..])),
        Some((b'?', rest)) => !t.is_empty() && glob_bytes(rest, &t[1..]),
        Some((b'\\', rest)) if !rest.is_empty() => {
            t.first() == Some(&rest[0]) && glob_bytes(&rest[1..], &t[1..])
        }
        Some((b'[', rest)) => {
            let Some(close) = rest.iter().position(|&c| c == b']') else {
                return t.first() == Some(&b'[') && glob_bytes(rest, &t[1..]);
            };
            let (set, after) = (&rest[..close], &rest[close + 1..]);
            let Some(&c) = t.first() else { return false };
            let (neg, set) = match set.split_first() {
                Some((b'^', s)) => (true, s),
                _ => (false, set),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != neg && glob_bytes(after, &t[1..])
        }
        Some((&c, rest)) => t.first() == Some(&c) && glob_bytes(rest, &t[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_conf_with_sections_quotes_and_accumulating_lines() {
        let text = "# comment\nmaxmemory 4gb\nsave 900 1\nsave 300 10\nappendonly \"yes\"\n\
                    [replica]\nreplica-read-only yes\nmaxmemory 2gb\n";
        let d = parse_conf(text).unwrap();
        let all = &d.sections[&Scope::All];
        assert_eq!(all["maxmemory"], "4gb");
        assert_eq!(all["save"], "900 1 300 10");
        assert_eq!(all["appendonly"], "yes");
        assert_eq!(d.for_role(true)["maxmemory"], "4gb");
        assert_eq!(d.for_role(false)["maxmemory"], "2gb");
        assert_eq!(d.for_role(false)["replica-read-only"], "yes");
        assert!(!d.for_role(true).contains_key("replica-read-only"));
    }

    #[test]
    fn conf_errors_name_the_line() {
        assert_eq!(parse_conf("a 1\nmaxmemory\n").unwrap_err().line, 2);
        assert_eq!(parse_conf("x \"open\n").unwrap_err().line, 1);
        assert_eq!(parse_conf("[nope]\n").unwrap_err().line, 1);
    }

    #[test]
    fn split_args_follows_redis() {
        assert_eq!(split_args(r#"save """#).unwrap(), vec!["save", ""]);
        assert_eq!(
            split_args(r#"a "b c\n" 'd\'e' \x41"#).unwrap(),
            vec!["a", "b c\n", "d'e", "\\x41"]
        );
        assert_eq!(split_args(r#"k "\x41""#).unwrap(), vec!["k", "A"]);
        assert!(split_args(r#"k "a"b"#).is_err());
    }

    #[test]
    fn written_conf_reads_back_identically() {
        let mut p = Params::new();
        p.insert("save".into(), "3600 1 300 100".into());
        p.insert("requirepass".into(), String::new());
        p.insert("odd".into(), "a\"b\\c\td".into());
        p.insert("maxmemory".into(), "0".into());
        let back = parse_conf(&write_conf(&p)).unwrap();
        assert_eq!(back.sections[&Scope::All], p);
    }

    #[test]
    fn units_and_spellings_compare_equal() {
        assert_eq!(parse_memory("4gb"), Some(4 << 30));
        assert_eq!(parse_memory("4G"), Some(4_000_000_000));
        assert_eq!(parse_memory("100"), Some(100));
        assert_eq!(parse_memory("lru"), None);
        assert_eq!(parse_memory("99999999999999999999gb"), None);
        assert!(same_value("maxmemory", "4gb", "4294967296"));
        assert!(!same_value("maxmemory", "4g", "4294967296"));
        assert!(same_value("maxmemory-policy", "ALLKEYS-LRU", "allkeys-lru"));
        assert!(same_value(
            "client-output-buffer-limit",
            "normal 0 0 0 replica 512mb 128mb 60",
            "normal 0 0 0 slave 536870912 134217728 60"
        ));
        assert!(same_value("notify-keyspace-events", "KEA", "AKE"));
        assert!(same_value("save", "3600  1", "3600 1"));
        assert!(!same_value("save", "3600 1", "3600 2"));
    }

    #[test]
    fn aliases_pair_old_and_new_names() {
        assert_eq!(aliases("slave-read-only"), vec!["replica-read-only"]);
        assert_eq!(aliases("replica-priority"), vec!["slave-priority"]);
        assert_eq!(
            aliases("hash-max-listpack-entries"),
            vec!["hash-max-ziplist-entries"]
        );
        assert!(aliases("maxmemory").is_empty());
    }

    #[test]
    fn globs_match_like_redis() {
        assert!(glob_match("maxmemory*", "maxmemory-policy"));
        assert!(glob_match("maxmemory*", "maxmemory"));
        assert!(!glob_match("maxmemory*", "hz"));
        assert!(glob_match("h?", "hz"));
        assert!(glob_match("[a-c]ppendonly", "appendonly"));
        assert!(!glob_match("[^a]ppendonly", "appendonly"));
        assert!(glob_match("*", ""));
        assert!(glob_bytes(b"user:*", b"user:1"));
        assert!(!glob_bytes(b"User:*", b"user:1"));
        assert!(glob_bytes(b"a\\*b", b"a*b"));
    }

    #[test]
    fn secrets_are_masked_only_when_set() {
        let mut p = Params::new();
        p.insert("requirepass".into(), "hunter2".into());
        p.insert("masterauth".into(), String::new());
        p.insert("hz".into(), "10".into());
        mask_secrets(&mut p);
        assert_eq!(p["requirepass"], MASK);
        assert_eq!(p["masterauth"], "");
        assert_eq!(p["hz"], "10");
    }

    proptest::proptest! {
        #[test]
        fn any_value_round_trips_through_a_conf_line(v in "[ -~\t\n]{0,40}") {
            let mut p = Params::new();
            p.insert("x".into(), v);
            let back = parse_conf(&write_conf(&p)).unwrap();
            proptest::prop_assert_eq!(back.sections.get(&Scope::All).cloned().unwrap_or_default(), p);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,200}") {
            let _ = parse_conf(&s);
            let _ = split_args(&s);
            let _ = glob_match(&s, "maxmemory");
        }
    }
}
