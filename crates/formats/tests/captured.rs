//! Parsers fed with outputs captured from real Redis 7.0.15 lab clusters (see `testdata/`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use rcops_formats::cluster_nodes::{self, myself};
use rcops_formats::info::Info;
use rcops_formats::slot::{SlotSet, SLOTS};

#[test]
fn cluster_nodes_of_a_120_node_cluster_covers_every_slot_once() {
    let lines =
        cluster_nodes::parse(include_str!("../testdata/cluster-nodes-120-7.0.txt")).unwrap();
    assert_eq!(lines.len(), 120);
    let masters: Vec<_> = lines.iter().filter(|l| l.flags.master).collect();
    assert_eq!(masters.len(), 60);
    let mut covered = SlotSet::new();
    let mut total = 0;
    for m in &masters {
        total += m.slot_count();
        covered.union_with(&m.slot_set());
    }
    assert_eq!(
        (total, covered.len()),
        (usize::from(SLOTS), usize::from(SLOTS))
    );
    for r in lines.iter().filter(|l| l.flags.replica) {
        let master = r.master_id.as_deref().unwrap();
        assert!(
            masters.iter().any(|m| m.id == master),
            "replica of a known master"
        );
        assert!(r.slots.is_empty() && r.connected);
    }
    assert_eq!(myself(&lines).unwrap().port, 8000);
}

#[test]
fn migrating_and_importing_captures() {
    let lines =
        cluster_nodes::parse(include_str!("../testdata/cluster-nodes-migrating-7.0.txt")).unwrap();
    let me = myself(&lines).unwrap();
    assert_eq!(me.open_slots.len(), 1);
    assert!(me.open_slots[0].migrating && me.open_slots[0].slot == 100);
    let lines =
        cluster_nodes::parse(include_str!("../testdata/cluster-nodes-importing-7.0.txt")).unwrap();
    let me = myself(&lines).unwrap();
    assert!(!me.open_slots[0].migrating && me.open_slots[0].slot == 100);
    // The migrating node's peer is the importing node, and vice versa.
    let migrating =
        cluster_nodes::parse(include_str!("../testdata/cluster-nodes-migrating-7.0.txt")).unwrap();
    assert_eq!(myself(&migrating).unwrap().open_slots[0].peer, me.id);
}

#[test]
fn info_captures_from_a_master_and_its_replica() {
    let master = Info::parse(include_str!("../testdata/info-master-7.0.txt"));
    assert_eq!(master.get("redis_version"), Some("7.0.15"));
    assert_eq!(master.get("role"), Some("master"));
    assert_eq!(master.get("redis_mode"), Some("cluster"));
    assert!(master.u64("used_memory").unwrap() > 0);
    assert_eq!(master.replicas().len(), 1);
    assert_eq!(master.replicas()[0].state, "online");
    for section in [
        "server",
        "clients",
        "memory",
        "persistence",
        "stats",
        "replication",
        "cpu",
        "cluster",
        "keyspace",
    ] {
        assert!(master.section(section).is_some(), "section {section}");
    }
    let replica = Info::parse(include_str!("../testdata/info-replica-7.0.txt"));
    assert_eq!(replica.get("role"), Some("slave"));
    assert_eq!(replica.get("master_link_status"), Some("up"));
    assert_eq!(replica.u64("master_port"), Some(8000));
    let cluster = Info::parse(include_str!("../testdata/cluster-info-7.0.txt"));
    assert_eq!(cluster.get("cluster_state"), Some("ok"));
    assert_eq!(cluster.u64("cluster_known_nodes"), Some(120));
}
