//! `INFO` and `CLUSTER INFO` replies: `# Section` headers followed by `key:value` lines.
//!
//! Values stay strings in [`Info`]; typed accessors parse on demand so an unexpected value
//! in one field never spoils the rest.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A parsed INFO reply: section name (lowercase) → field → value, in server order of fields
/// kept sorted for stable output. `CLUSTER INFO` has no headers and lands in section `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Info {
    pub sections: BTreeMap<String, BTreeMap<String, String>>,
}

impl Info {
    /// Parses INFO text. Lines without a `:` and unknown headers are tolerated.
    pub fn parse(text: &str) -> Info {
        let mut info = Info::default();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(header) = line.strip_prefix('#') {
                section = header.trim().to_ascii_lowercase();
                info.sections.entry(section.clone()).or_default();
            } else if let Some((key, value)) = line.split_once(':') {
                info.sections
                    .entry(section.clone())
                    .or_default()
                    .insert(key.to_string(), value.to_string());
            }
        }
        info
    }

    /// A field from any section (field names are unique across INFO sections).
    pub fn get(&self, field: &str) -> Option<&str> {
        self.sections
            .values()
            .find_map(|s| s.get(field))
            .map(String::as_str)
    }

    pub fn u64(&self, field: &str) -> Option<u64> {
        self.get(field).and_then(|v| v.trim().parse().ok())
    }

    pub fn i64(&self, field: &str) -> Option<i64> {
        self.get(field).and_then(|v| v.trim().parse().ok())
    }

    pub fn f64(&self, field: &str) -> Option<f64> {
        self.get(field).and_then(|v| v.trim().parse().ok())
    }

    pub fn section(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.sections.get(&name.to_ascii_lowercase())
    }

    /// `db0:keys=1,expires=0,avg_ttl=0` lines of the keyspace section.
    pub fn keyspace(&self) -> Vec<DbStats> {
        let Some(section) = self.section("keyspace") else {
            return Vec::new();
        };
        section
            .iter()
            .filter_map(|(db, v)| {
                let index = db.strip_prefix("db")?.parse().ok()?;
                let fields = parse_kv_list(v);
                Some(DbStats {
                    db: index,
                    keys: fields.get("keys").and_then(|x| x.parse().ok()).unwrap_or(0),
                    expires: fields
                        .get("expires")
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0),
                })
            })
            .collect()
    }

    /// Total keys over every database.
    pub fn total_keys(&self) -> u64 {
        self.keyspace().iter().map(|d| d.keys).sum()
    }

    /// Total keys with an expiry over every database.
    pub fn total_expires(&self) -> u64 {
        self.keyspace().iter().map(|d| d.expires).sum()
    }

    /// `slaveN:ip=…,port=…,state=online,offset=…,lag=…` lines of a master's replication
    /// section, in N order.
    pub fn replicas(&self) -> Vec<ReplicaLine> {
        let Some(section) = self.section("replication") else {
            return Vec::new();
        };
        let mut out: Vec<(u32, ReplicaLine)> = section
            .iter()
            .filter_map(|(k, v)| {
                let n = k.strip_prefix("slave")?.parse().ok()?;
                let f = parse_kv_list(v);
                Some((
                    n,
                    ReplicaLine {
                        ip: f.get("ip")?.to_string(),
                        port: f.get("port")?.parse().ok()?,
                        state: f.get("state").map(|s| s.to_string()).unwrap_or_default(),
                        offset: f.get("offset").and_then(|x| x.parse().ok()).unwrap_or(0),
                        lag: f.get("lag").and_then(|x| x.parse().ok()).unwrap_or(0),
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(n, _)| *n);
        out.into_iter().map(|(_, r)| r).collect()
    }
}

/// One `dbN` keyspace line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStats {
    pub db: u32,
    pub keys: u64,
    pub expires: u64,
}

/// One replica as its master reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaLine {
    pub ip: String,
    pub port: u16,
    pub state: String,
    pub offset: u64,
    pub lag: u64,
}

fn parse_kv_list(text: &str) -> BTreeMap<&str, &str> {
    text.split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from INFO on a Redis 7.0.15 cluster master with one replica.
    const MASTER: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:cluster\r\nuptime_in_seconds:42\r\n\r\n# Memory\r\nused_memory:1573240\r\nmem_fragmentation_ratio:7.51\r\n\r\n# Persistence\r\nloading:0\r\n\r\n# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=7003,state=online,offset=1358,lag=0\r\nmaster_repl_offset:1358\r\n\r\n# Keyspace\r\ndb0:keys=333,expires=12,avg_ttl=86000\r\n";

    // Trimmed from INFO on its replica.
    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:down\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:1200\r\n";

    #[test]
    fn parses_sections_fields_and_keyspace() {
        let info = Info::parse(MASTER);
        assert_eq!(info.get("redis_version"), Some("7.0.15"));
        assert_eq!(info.u64("used_memory"), Some(1573240));
        assert_eq!(info.f64("mem_fragmentation_ratio"), Some(7.51));
        assert_eq!(info.total_keys(), 333);
        assert_eq!(info.total_expires(), 12);
        assert_eq!(
            info.section("Server").unwrap().get("redis_mode").unwrap(),
            "cluster"
        );
        assert_eq!(
            info.replicas(),
            vec![ReplicaLine {
                ip: "127.0.0.1".into(),
                port: 7003,
                state: "online".into(),
                offset: 1358,
                lag: 0
            }]
        );
    }

    #[test]
    fn parses_replica_link_state() {
        let info = Info::parse(REPLICA);
        assert_eq!(info.get("role"), Some("slave"));
        assert_eq!(info.get("master_link_status"), Some("down"));
        assert_eq!(info.u64("slave_repl_offset"), Some(1200));
        assert!(info.replicas().is_empty());
    }

    #[test]
    fn cluster_info_without_headers_lands_in_the_empty_section() {
        let info = Info::parse("cluster_state:fail\r\ncluster_slots_assigned:16000\r\n");
        assert_eq!(info.get("cluster_state"), Some("fail"));
        assert_eq!(info.u64("cluster_slots_assigned"), Some(16000));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,400}") {
            let info = Info::parse(&s);
            let _ = (info.keyspace(), info.replicas(), info.total_keys());
        }
    }
}
