//! The `CLUSTER NODES` format: one line per node known to the answering node.
//!
//! `<id> <ip:port@cport[,hostname[,aux=value…]]> <flags> <master|-> <ping-sent> <pong-recv>
//! <config-epoch> <link-state> <slot>…` where a slot entry is `N`, `N-M`, `[N->-id]`
//! (migrating to id) or `[N-<-id]` (importing from id). Older servers omit `@cport`;
//! nodes without an address print `:0@0`; IPv6 addresses are printed without brackets.

use serde::{Deserialize, Serialize};

use crate::slot::{SlotRange, SlotSet};
use crate::{truncate, ParseError};

/// Flags a node line can carry. Unknown flags are kept in [`Flags::other`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub myself: bool,
    pub master: bool,
    pub replica: bool,
    /// `fail?`: this node's local suspicion (PFAIL).
    pub pfail: bool,
    /// `fail`: agreed by a majority of masters.
    pub fail: bool,
    pub handshake: bool,
    pub noaddr: bool,
    pub nofailover: bool,
    pub other: Vec<String>,
}

impl Flags {
    fn parse(text: &str) -> Flags {
        let mut flags = Flags::default();
        for flag in text.split(',') {
            match flag {
                "myself" => flags.myself = true,
                "master" => flags.master = true,
                "slave" | "replica" => flags.replica = true,
                "fail?" => flags.pfail = true,
                "fail" => flags.fail = true,
                "handshake" => flags.handshake = true,
                "noaddr" => flags.noaddr = true,
                "nofailover" => flags.nofailover = true,
                "noflags" | "" => {}
                other => flags.other.push(other.to_string()),
            }
        }
        flags
    }

    /// The flags in Redis's own spelling, comma-joined.
    pub fn render(&self) -> String {
        let mut out: Vec<&str> = Vec::new();
        let pairs = [
            (self.myself, "myself"),
            (self.master, "master"),
            (self.replica, "slave"),
            (self.pfail, "fail?"),
            (self.fail, "fail"),
            (self.handshake, "handshake"),
            (self.noaddr, "noaddr"),
            (self.nofailover, "nofailover"),
        ];
        for (set, name) in pairs {
            if set {
                out.push(name);
            }
        }
        out.extend(self.other.iter().map(String::as_str));
        if out.is_empty() {
            "noflags".to_string()
        } else {
            out.join(",")
        }
    }
}

/// A slot in transit, as seen by the node that printed the line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSlot {
    pub slot: u16,
    /// Id of the other side: the destination for migrating, the source for importing.
    pub peer: String,
    pub migrating: bool,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLine {
    pub id: String,
    /// IP (or empty when the node has no address yet).
    pub ip: String,
    pub port: u16,
    pub cport: Option<u16>,
    /// Announced hostname (`cluster-announce-hostname`), when set.
    pub hostname: Option<String>,
    /// Auxiliary `key=value` fields after the hostname (`shard-id`, `tls-port`, …).
    pub aux: Vec<(String, String)>,
    pub flags: Flags,
    /// Master id for replicas.
    pub master_id: Option<String>,
    pub ping_sent: u64,
    pub pong_recv: u64,
    pub config_epoch: u64,
    pub connected: bool,
    pub slots: Vec<SlotRange>,
    pub open_slots: Vec<OpenSlot>,
}

impl NodeLine {
    /// `ip:port` as clients dial it (IPv6 in brackets).
    pub fn addr(&self) -> String {
        if self.ip.contains(':') {
            format!("[{}]:{}", self.ip, self.port)
        } else {
            format!("{}:{}", self.ip, self.port)
        }
    }

    pub fn slot_set(&self) -> SlotSet {
        SlotSet::from_ranges(&self.slots)
    }

    pub fn slot_count(&self) -> usize {
        self.slots.iter().map(SlotRange::len).sum()
    }

    /// Whether the node can be dialled: it has an address and is past the handshake.
    pub fn dialable(&self) -> bool {
        !self.flags.noaddr && !self.flags.handshake && !self.ip.is_empty() && self.port != 0
    }
}

/// Parses a whole `CLUSTER NODES` reply. Blank lines are skipped; any malformed line is an
/// error naming its line number.
pub fn parse(text: &str) -> Result<Vec<NodeLine>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|reason| ParseError::Line {
                line: i + 1,
                reason,
                text: truncate(l),
            })
        })
        .collect()
}

/// The `myself` line of a reply, if any.
pub fn myself(lines: &[NodeLine]) -> Option<&NodeLine> {
    lines.iter().find(|l| l.flags.myself)
}

fn parse_line(line: &str) -> Result<NodeLine, &'static str> {
    let mut fields = line.split_ascii_whitespace();
    let mut next = |what: &'static str| fields.next().ok_or(what);
    let id = next("missing node id")?.to_string();
    let address = next("missing address")?;
    let flags = Flags::parse(next("missing flags")?);
    let master = next("missing master id")?;
    let ping_sent = next("missing ping-sent")?
        .parse()
        .map_err(|_| "invalid ping-sent")?;
    let pong_recv = next("missing pong-recv")?
        .parse()
        .map_err(|_| "invalid pong-recv")?;
    let config_epoch = next("missing config-epoch")?
        .parse()
        .map_err(|_| "invalid config-epoch")?;
    let connected = match next("missing link-state")? {
        "connected" => true,
        "disconnected" => false,
        _ => return Err("invalid link-state"),
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("invalid node id");
    }
    let (ip, port, cport, hostname, aux) = parse_address(address)?;
    let mut slots = Vec::new();
    let mut open_slots = Vec::new();
    for entry in fields {
        if let Some(inner) = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')) {
            open_slots.push(parse_open_slot(inner)?);
        } else {
            slots.push(SlotRange::parse(entry).map_err(|_| "invalid slot entry")?);
        }
    }
    Ok(NodeLine {
        id,
        ip,
        port,
        cport,
        hostname,
        aux,
        flags,
        master_id: (master != "-").then(|| master.to_string()),
        ping_sent,
        pong_recv,
        config_epoch,
        connected,
        slots,
        open_slots,
    })
}

type Address = (
    String,
    u16,
    Option<u16>,
    Option<String>,
    Vec<(String, String)>,
);

fn parse_address(text: &str) -> Result<Address, &'static str> {
    let mut parts = text.split(',');
    let hostport = parts.next().unwrap_or_default();
    let hostname = parts
        .next()
        .filter(|h| !h.is_empty() && !h.contains('='))
        .map(str::to_string);
    let aux = text
        .split(',')
        .skip(1)
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (ipport, cport) = match hostport.split_once('@') {
        Some((ipport, cport)) => (ipport, Some(cport.parse().map_err(|_| "invalid cport")?)),
        None => (hostport, None),
    };
    let (ip, port) = ipport.rsplit_once(':').ok_or("address without port")?;
    let port = port.parse().map_err(|_| "invalid port")?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((ip, port, cport, hostname, aux))
}

fn parse_open_slot(inner: &str) -> Result<OpenSlot, &'static str> {
    let (slot, peer, migrating) = if let Some((slot, peer)) = inner.split_once("->-") {
        (slot, peer, true)
    } else if let Some((slot, peer)) = inner.split_once("-<-") {
        (slot, peer, false)
    } else {
        return Err("invalid open slot entry");
    };
    let slot = SlotRange::parse(slot).map_err(|_| "invalid open slot")?;
    if slot.start != slot.end || peer.is_empty() {
        return Err("invalid open slot entry");
    }
    Ok(OpenSlot {
        slot: slot.start,
        peer: peer.to_string(),
        migrating,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a Redis 7.0.15 lab cluster while slot 100 migrated from 7000 to 7001.
    const MIGRATING: &str = "\
3c3a0c74aae0b56170ccb03a76b60cfe7dc1912e 127.0.0.1:7002@17002 master - 0 1732550000000 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:7000@17000 myself,master - 0 1732550000000 1 connected 0-5460 [100->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:7001@17001 master - 0 1732550001000 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:7003@17003 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1732550001000 1 connected
";

    #[test]
    fn parses_masters_replicas_slots_and_migrating_entries() {
        let lines = parse(MIGRATING).unwrap();
        assert_eq!(lines.len(), 4);
        let me = myself(&lines).unwrap();
        assert_eq!(me.addr(), "127.0.0.1:7000");
        assert_eq!(me.cport, Some(17000));
        assert!(me.flags.master && me.flags.myself);
        assert_eq!(me.slot_count(), 5461);
        assert_eq!(
            me.open_slots,
            vec![OpenSlot {
                slot: 100,
                peer: "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1".into(),
                migrating: true
            }]
        );
        let replica = &lines[3];
        assert!(replica.flags.replica);
        assert_eq!(
            replica.master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(replica.slots.is_empty());
    }

    #[test]
    fn parses_importing_entries_and_failure_flags() {
        let text = "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 5461-10922 [100-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]\n\
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:7000@17000 master,fail? - 1732550000000 0 1 disconnected 0-5460\n\
aaaa 127.0.0.1:7004@17004 slave,fail aaab 1732550000000 0 1 disconnected\n";
        let lines = parse(text).unwrap();
        assert!(!lines[0].open_slots[0].migrating);
        assert_eq!(lines[0].open_slots[0].slot, 100);
        assert!(lines[1].flags.pfail && !lines[1].flags.fail);
        assert!(!lines[1].connected);
        assert!(lines[2].flags.fail && lines[2].flags.replica);
    }

    #[test]
    fn parses_hostnames_aux_fields_and_old_forms() {
        let text = "\
a1 10.0.0.1:6379@16379,redis-1.example.com master - 0 0 1 connected 0-100
a2 10.0.0.2:6379@16379,,shard-id=abc123,tls-port=0 slave a1 0 0 1 connected
a3 :0@0 master,noaddr - 0 0 0 disconnected
a4 10.0.0.4:6379 master - 0 0 4 connected 101 105-110
a5 ::1:6380@16380 handshake - 0 0 0 connected
a6 10.0.0.6:6379@16379 master,nofailover,noflags,weird - 0 0 1 connected
";
        let lines = parse(text).unwrap();
        assert_eq!(lines[0].hostname.as_deref(), Some("redis-1.example.com"));
        assert_eq!(lines[1].hostname, None);
        assert_eq!(
            lines[1].aux,
            vec![
                ("shard-id".to_string(), "abc123".to_string()),
                ("tls-port".to_string(), "0".to_string())
            ]
        );
        assert!(lines[2].flags.noaddr && !lines[2].dialable());
        assert_eq!(lines[3].cport, None);
        assert_eq!(lines[3].slot_count(), 7);
        assert_eq!(lines[4].addr(), "[::1]:6380");
        assert!(lines[4].flags.handshake);
        assert!(lines[5].flags.nofailover);
        assert_eq!(lines[5].flags.other, vec!["weird".to_string()]);
        assert_eq!(lines[5].flags.render(), "master,nofailover,weird");
    }

    #[test]
    fn rejects_malformed_lines_with_the_line_number() {
        let err = parse("a 1.2.3.4:1@2 master - 0 0 1 connected 0-100\nbroken line\n").unwrap_err();
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        assert!(parse("a 1.2.3.4:x@2 master - 0 0 1 connected").is_err());
        assert!(parse("a 1.2.3.4:1@2 master - 0 0 1 connected 99999").is_err());
        assert!(parse("a 1.2.3.4:1@2 master - 0 0 1 sideways").is_err());
        assert!(parse("a 1.2.3.4:1@2 master - 0 0 1 connected [1->-]").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_line_shaped_noise(
            id in "[a-f0-9]{0,40}", addr in "[0-9.:@,a-z=\\[\\]]{0,40}",
            flags in "[a-z?,]{0,30}", rest in "[0-9 \\-\\[\\]<>a-f]{0,60}",
        ) {
            let _ = parse(&format!("{id} {addr} {flags} - 0 0 1 connected {rest}"));
        }
    }
}
