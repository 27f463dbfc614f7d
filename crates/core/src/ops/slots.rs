//! `slots`: how the 16384 slots are spread over masters — counts, ranges, share, keys,
//! deviation from even — plus uncovered and open slots.

use rcops_formats::slot::{format_ranges, SLOTS};
use serde::Serialize;

use super::pct;
use crate::topology::ClusterView;

/// One master's share of the slot space.
#[derive(Debug, Clone, Serialize)]
pub struct MasterSlots {
    pub id: String,
    pub addr: String,
    pub slots: usize,
    pub ranges: String,
    /// Percent of all 16384 slots.
    pub share_pct: f64,
    /// Keys in the master's keyspace (`INFO keyspace`), when it answered.
    pub keys: Option<u64>,
    /// Deviation of the slot count from an even split over slot-owning masters, percent;
    /// none for a master without slots (a spare, or an old master after a failover).
    pub deviation_pct: Option<f64>,
    /// Why the master could not be read (its keys are then unknown, not zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Flagged `fail` by the cluster.
    pub failed: bool,
}

/// A slot being moved, as the nodes involved report it.
#[derive(Debug, Clone, Serialize)]
pub struct OpenSlotEntry {
    pub slot: u16,
    pub node: String,
    /// `migrating` or `importing`.
    pub state: &'static str,
    pub peer: String,
}

/// JSON: `{"masters": [MasterSlots], "covered", "uncovered": "ranges", "open": [OpenSlotEntry],
/// "total_keys", "keys_complete"}`.
#[derive(Debug, Clone, Serialize)]
pub struct SlotsReport {
    pub masters: Vec<MasterSlots>,
    pub covered: usize,
    pub uncovered: String,
    pub open: Vec<OpenSlotEntry>,
    /// Keys over the masters that answered.
    pub total_keys: u64,
    /// False when a slot-owning master could not be read: `total_keys` is then a lower bound.
    pub keys_complete: bool,
}

impl SlotsReport {
    /// Uncovered or open slots, or a slot owner that could not be read.
    pub fn has_problems(&self) -> bool {
        self.uncovered != "-" || !self.open.is_empty() || !self.keys_complete
    }
}

pub fn slots(view: &ClusterView) -> SlotsReport {
    let owners = view.masters().filter(|m| m.slot_count() > 0).count().max(1);
    let expected = f64::from(SLOTS) / owners as f64;
    let masters: Vec<MasterSlots> = view
        .masters_by_slot()
        .into_iter()
        .map(|m| {
            // A reachable master's own claim is authoritative (after `CLUSTER DELSLOTS` on
            // the owner only it knows), as in `covered`.
            let snap = view.snapshot(&m.id);
            let own = snap.and_then(|s| s.myself()).map(|l| l.slot_set());
            let set = own.unwrap_or_else(|| m.slot_set());
            let n = set.len();
            MasterSlots {
                id: m.id.clone(),
                addr: m.addr(),
                slots: n,
                ranges: format_ranges(&set.ranges()),
                share_pct: pct(n as f64, f64::from(SLOTS)),
                keys: snap
                    .filter(|s| s.denied.is_none())
                    .map(|s| s.info.total_keys()),
                deviation_pct: (n > 0).then(|| {
                    // `+ 0.0` turns -0.0 into 0.0 so even splits print as +0.0%.
                    ((n as f64 - expected) / expected * 1000.0).round() / 10.0 + 0.0
                }),
                error: match snap {
                    Some(s) => s.denied.as_ref().map(|e| e.reason()),
                    None => Some(
                        view.error_for(m)
                            .map_or_else(|| "did not answer".to_string(), |e| e.reason()),
                    ),
                },
                failed: m.flags.fail,
            }
        })
        .collect();
    let covered = view.covered();
    let mut open = Vec::new();
    for snap in view.snapshots.values() {
        if let Some(me) = snap.myself() {
            for o in &me.open_slots {
                open.push(OpenSlotEntry {
                    slot: o.slot,
                    node: snap.addr.to_string(),
                    state: if o.migrating {
                        "migrating"
                    } else {
                        "importing"
                    },
                    peer: view
                        .node(&o.peer)
                        .map(|l| l.addr())
                        .unwrap_or_else(|| o.peer.clone()),
                });
            }
        }
    }
    open.sort_by_key(|o| (o.slot, o.node.clone()));
    SlotsReport {
        total_keys: masters.iter().filter_map(|m| m.keys).sum(),
        keys_complete: masters.iter().all(|m| m.slots == 0 || m.keys.is_some()),
        masters,
        covered: covered.len(),
        uncovered: format_ranges(&covered.complement().ranges()),
        open,
    }
}
