//! `check`: the cluster health check — slot coverage and ownership, agreement between
//! nodes, failures, replication health, replica placement and slot balance.
//!
//! [`evaluate`] is pure over a [`ClusterView`], so every rule is unit-tested on synthetic
//! snapshots; [`check`] discovers and evaluates.

use rcops_formats::slot::{format_ranges, SlotSet, SLOTS};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

use crate::fanout::Executor;
use crate::node::Addr;
use crate::topology::{discover, ClusterView, Detail, DiscoverError};

/// How bad a finding is. Ordered so that `max()` is the worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One problem (or note) about the cluster.
///
/// JSON: `{"severity": "critical|warning|info", "code": "slots_uncovered", "nodes":
/// ["127.0.0.1:7000"], "message": "…", "slots": "0-99"?, "value": 12.5?}`.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier, e.g. `node_fail`; documented in the README.
    pub code: &'static str,
    /// Addresses of the nodes concerned (empty for cluster-wide findings).
    pub nodes: Vec<String>,
    pub message: String,
    /// Slot ranges concerned, in `CLUSTER NODES` notation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<String>,
    /// The measured number behind a threshold finding (lag bytes, deviation percent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

impl Finding {
    fn new(severity: Severity, code: &'static str, nodes: Vec<String>, message: String) -> Self {
        Finding {
            severity,
            code,
            nodes,
            message,
            slots: None,
            value: None,
        }
    }
}

/// Thresholds for the rules that have one.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Replication offset gap, in bytes, above which a replica counts as lagging.
    pub lag_threshold_bytes: u64,
    /// Slot count deviation from even, in percent, above which masters count as unbalanced
    /// (redis-cli's rebalance uses 2%).
    pub balance_threshold_pct: f64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            lag_threshold_bytes: 1024 * 1024,
            balance_threshold_pct: 2.0,
        }
    }
}

/// `ok`, `warning` or `critical`, from the worst finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Critical,
}

impl Status {
    /// 0 healthy, 1 warnings only, 2 any critical.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        }
    }
}

/// JSON: `{"status", "findings": [Finding], "nodes", "masters", "slots_covered",
/// "elapsed_ms"}`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub status: Status,
    pub findings: Vec<Finding>,
    pub nodes: usize,
    pub masters: usize,
    pub slots_covered: usize,
    pub elapsed_ms: u128,
}

/// Discovers the cluster from `seeds` and checks it.
pub async fn check(
    exec: &Executor,
    seeds: &[Addr],
    opts: &CheckOptions,
) -> Result<CheckReport, DiscoverError> {
    let started = std::time::Instant::now();
    let view = discover(exec, seeds, Detail::Health).await?;
    let mut report = evaluate(&view, opts);
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

fn addr_of_id(view: &ClusterView, id: &str) -> String {
    view.node(id)
        .map(|l| l.addr())
        .or_else(|| view.snapshot(id).map(|s| s.addr.to_string()))
        .unwrap_or_else(|| short(id).to_string())
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The findings that make writing into the cluster unsafe, so a restore refuses them unless
/// forced: slots nobody serves, `cluster_state:fail`, a master with slots marked `fail`, a
/// master that cannot be read, slots claimed twice. Unreachable replicas do not block writes.
pub fn write_blockers(view: &ClusterView, report: &CheckReport) -> Vec<Finding> {
    let masters: BTreeSet<String> = view
        .masters()
        .filter(|m| m.slot_count() > 0)
        .map(|m| m.addr())
        .collect();
    report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .filter(|f| match f.code {
            "slots_uncovered" | "cluster_state_fail" | "node_fail" | "slot_multiple_owners" => true,
            "node_unreachable" => f.nodes.iter().any(|n| masters.contains(n)),
            _ => false,
        })
        .cloned()
        .collect()
}

/// Applies every rule to a view. Findings come sorted worst first, then by code.
pub fn evaluate(view: &ClusterView, opts: &CheckOptions) -> CheckReport {
    let mut f: Vec<Finding> = Vec::new();
    use Severity::*;

    // Nodes we could not read at all.
    for (addr, err) in &view.failed {
        f.push(Finding::new(
            Critical,
            "node_unreachable",
            vec![addr.to_string()],
            err.to_string(),
        ));
    }

    // Nodes whose INFO an ACL refused: replication, persistence and loading are not checked.
    let mut denied: Vec<&crate::NodeError> = view
        .snapshots
        .values()
        .filter_map(|s| s.denied.as_ref())
        .collect();
    denied.sort_by_key(|e| e.addr().clone());
    if let Some(first) = denied.first() {
        let nodes = denied.iter().map(|e| e.addr().to_string()).collect();
        f.push(Finding::new(
            Warning,
            "info_denied",
            nodes,
            format!("{first}: replication, persistence and loading not checked on these nodes"),
        ));
    }

    // Failure flags: `fail` is the cluster's verdict (from the reference view); `fail?` is any
    // reachable node's suspicion.
    for line in &view.nodes {
        if line.flags.fail {
            let serving = line.slot_count() > 0;
            let role = if line.master_id.is_some() {
                "replica"
            } else {
                "master"
            };
            let msg = if serving {
                format!(
                    "{role} {} ({}) is marked fail and still owns {} slots: they are not served",
                    line.addr(),
                    short(&line.id),
                    line.slot_count()
                )
            } else {
                format!(
                    "{role} {} ({}) is marked fail",
                    line.addr(),
                    short(&line.id)
                )
            };
            f.push(Finding::new(
                if serving { Critical } else { Warning },
                "node_fail",
                vec![line.addr()],
                msg,
            ));
        }
    }
    let mut suspects: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for snap in view.snapshots.values() {
        for l in snap.lines.iter().filter(|l| l.flags.pfail && !l.flags.fail) {
            suspects
                .entry(l.id.clone())
                .or_default()
                .insert(snap.addr.to_string());
        }
    }
    for (id, by) in suspects {
        if view.node(&id).is_some_and(|l| l.flags.fail) {
            continue;
        }
        f.push(Finding::new(
            Warning,
            "node_pfail",
            vec![addr_of_id(view, &id)],
            format!(
                "{} is suspected down (fail?) by {} node(s): {}",
                addr_of_id(view, &id),
                by.len(),
                by.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }

    // cluster_state.
    let failing: Vec<String> = view
        .snapshots
        .values()
        .filter(|s| {
            s.cluster_info
                .get("cluster_state")
                .is_some_and(|v| v != "ok")
        })
        .map(|s| s.addr.to_string())
        .collect();
    if !failing.is_empty() {
        let n = failing.len();
        f.push(Finding::new(
            Critical,
            "cluster_state_fail",
            failing,
            format!("{n} node(s) report cluster_state:fail"),
        ));
    }

    // Coverage.
    let covered = view.covered();
    if covered.len() < usize::from(SLOTS) {
        let missing = covered.complement();
        let mut finding = Finding::new(
            Critical,
            "slots_uncovered",
            vec![],
            format!(
                "{} of {SLOTS} slots are not assigned to any master: {}",
                missing.len(),
                abbreviate(&format_ranges(&missing.ranges()))
            ),
        );
        finding.slots = Some(format_ranges(&missing.ranges()));
        f.push(finding);
    }

    // Several masters claiming the same slot, either in one view or in their own claims.
    // First claimant per slot in a flat table; only conflicts allocate.
    let mut first: Vec<Option<&str>> = vec![None; usize::from(SLOTS)];
    let mut claims: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
    let claimants = view
        .snapshots
        .values()
        .filter_map(|s| s.myself())
        .chain(view.masters());
    for line in claimants {
        for r in &line.slots {
            for s in r.start..=r.end {
                match first[usize::from(s)] {
                    None => first[usize::from(s)] = Some(&line.id),
                    Some(id) if id == line.id => {}
                    Some(id) => {
                        let set = claims.entry(s).or_default();
                        set.insert(id);
                        set.insert(&line.id);
                    }
                }
            }
        }
    }
    let mut multi: BTreeMap<BTreeSet<&str>, SlotSet> = BTreeMap::new();
    for (slot, owners) in claims {
        multi.entry(owners).or_default().insert(slot);
    }
    for (owners, slots) in multi {
        let nodes: Vec<String> = owners.iter().map(|id| addr_of_id(view, id)).collect();
        let ranges = format_ranges(&slots.ranges());
        let mut finding = Finding::new(
            Critical,
            "slot_multiple_owners",
            nodes.clone(),
            format!(
                "{} slot(s) claimed by more than one master ({}): {}",
                slots.len(),
                nodes.join(", "),
                abbreviate(&ranges)
            ),
        );
        finding.slots = Some(ranges);
        f.push(finding);
    }

    // Open slots, from each node's own line.
    let mut open: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let mut open_nodes: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for snap in view.snapshots.values() {
        let Some(me) = snap.myself() else { continue };
        for o in &me.open_slots {
            let peer = addr_of_id(view, &o.peer);
            let text = if o.migrating {
                format!("{} migrating to {peer}", snap.addr)
            } else {
                format!("{} importing from {peer}", snap.addr)
            };
            open.entry(o.slot).or_default().push(text);
            open_nodes
                .entry(o.slot)
                .or_default()
                .insert(snap.addr.to_string());
        }
    }
    for (slot, texts) in open {
        let mut finding = Finding::new(
            Warning,
            "open_slot",
            open_nodes
                .remove(&slot)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            format!("slot {slot} is open: {}", texts.join("; ")),
        );
        finding.slots = Some(slot.to_string());
        f.push(finding);
    }

    // Agreement between nodes.
    if view.signatures.len() > 1 {
        let dissenters: Vec<String> = view
            .signatures
            .iter()
            .filter(|(sig, _)| **sig != view.reference_signature)
            .flat_map(|(_, ids)| ids.iter().map(|id| addr_of_id(view, id)))
            .collect();
        let n = dissenters.len();
        f.push(Finding::new(
            Critical,
            "config_disagreement",
            dissenters,
            format!(
                "{n} node(s) disagree with the majority about slot owners or roles ({} distinct views)",
                view.signatures.len()
            ),
        ));
    }

    // Per-node state from INFO.
    for snap in view.snapshots.values() {
        if snap.info.u64("loading") == Some(1) {
            f.push(Finding::new(
                Warning,
                "node_loading",
                vec![snap.addr.to_string()],
                format!("{} is loading its dataset and not serving yet", snap.addr),
            ));
        }
        if snap.info.get("role") == Some("slave")
            && snap
                .info
                .get("master_link_status")
                .is_some_and(|s| s != "up")
        {
            let master = format!(
                "{}:{}",
                snap.info.get("master_host").unwrap_or("?"),
                snap.info.get("master_port").unwrap_or("?")
            );
            let since = snap
                .info
                .get("master_link_down_since_seconds")
                .map(|s| format!(" for {s}s"))
                .unwrap_or_default();
            f.push(Finding::new(
                Warning,
                "link_down",
                vec![snap.addr.to_string()],
                format!(
                    "replica {} has its replication link to {master} down{since}",
                    snap.addr
                ),
            ));
        }
    }

    // Redundancy and placement.
    let hosts: BTreeSet<&str> = view
        .nodes
        .iter()
        .filter(|l| l.dialable())
        .map(|l| l.ip.as_str())
        .collect();
    let single_host = hosts.len() == 1;
    for master in view
        .masters()
        .filter(|m| m.slot_count() > 0 && !m.flags.fail)
    {
        let replicas: Vec<_> = view
            .replicas_of(&master.id)
            .filter(|r| !r.flags.fail)
            .collect();
        if replicas.is_empty() {
            f.push(Finding::new(
                Warning,
                "master_without_replica",
                vec![master.addr()],
                format!(
                    "master {} owns {} slots and has no working replica",
                    master.addr(),
                    master.slot_count()
                ),
            ));
        }
        if !single_host {
            for r in replicas.iter().filter(|r| r.ip == master.ip) {
                f.push(Finding::new(
                    Warning,
                    "replica_same_host_as_master",
                    vec![r.addr(), master.addr()],
                    format!(
                        "replica {} runs on the same host as its master {}: one host failure loses both",
                        r.addr(),
                        master.addr()
                    ),
                ));
            }
        }
        for r in &replicas {
            if let Some(lag) = view.replica_lag_bytes(r) {
                if lag > opts.lag_threshold_bytes {
                    let mut finding = Finding::new(
                        Warning,
                        "replica_lag",
                        vec![r.addr(), master.addr()],
                        format!(
                            "replica {} is {lag} bytes behind its master {} (threshold {})",
                            r.addr(),
                            master.addr(),
                            opts.lag_threshold_bytes
                        ),
                    );
                    finding.value = Some(lag as f64);
                    f.push(finding);
                }
            }
        }
    }
    if single_host && view.nodes.len() > 1 {
        if let Some(h) = hosts.iter().next() {
            f.push(Finding::new(
                Info,
                "replica_same_host_as_master",
                vec![],
                format!(
                    "all {} nodes run on host {h}: replica anti-affinity not checked (test cluster?)",
                    view.nodes.len()
                ),
            ));
        }
    }

    // Balance among masters that own slots.
    let owners: Vec<_> = view.masters().filter(|m| m.slot_count() > 0).collect();
    if owners.len() > 1 {
        let expected = f64::from(SLOTS) / owners.len() as f64;
        let off: Vec<(String, f64)> = owners
            .iter()
            .map(|m| {
                (
                    m.addr(),
                    (m.slot_count() as f64 - expected) / expected * 100.0,
                )
            })
            .filter(|(_, dev)| dev.abs() > opts.balance_threshold_pct)
            .collect();
        if let Some(worst) = off.iter().map(|(_, d)| d.abs()).reduce(f64::max) {
            let detail: Vec<String> = off.iter().map(|(a, d)| format!("{a} {d:+.1}%")).collect();
            let mut finding = Finding::new(
                Warning,
                "slots_unbalanced",
                off.iter().map(|(a, _)| a.clone()).collect(),
                format!(
                    "slot counts deviate more than {}% from even ({expected:.0} per master): {}",
                    opts.balance_threshold_pct,
                    abbreviate(&detail.join(", "))
                ),
            );
            finding.value = Some((worst * 10.0).round() / 10.0);
            f.push(finding);
        }
    }

    f.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.code.cmp(b.code))
            .then(a.nodes.cmp(&b.nodes))
    });
    let status = match f.iter().map(|x| x.severity).max() {
        Some(Critical) => Status::Critical,
        Some(Warning) => Status::Warning,
        _ => Status::Ok,
    };
    CheckReport {
        status,
        nodes: view.nodes.iter().filter(|l| !l.flags.noaddr).count(),
        masters: view.masters().count(),
        slots_covered: covered.len(),
        findings: f,
        elapsed_ms: view.elapsed_ms,
    }
}

/// Keeps one-line messages short when a list is long.
fn abbreviate(s: &str) -> String {
    const MAX: usize = 160;
    if s.len() <= MAX {
        return s.to_string();
    }
    let cut = s
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= MAX)
        .last()
        .unwrap_or(0);
    format!("{}…", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::testing::{snap, A, B, C};

    fn healthy_text() -> String {
        format!(
            "{A} 10.0.0.1:7000@17000 master - 0 0 1 connected 0-8191\n\
             {B} 10.0.0.2:7001@17001 master - 0 0 2 connected 8192-16383\n\
             {C} 10.0.0.2:7002@17002 slave {A} 0 0 1 connected\n"
        )
    }

    /// A three-node view where each node may see its own `CLUSTER NODES` text.
    fn view_of_each(texts: [&str; 3], infos: [&str; 3]) -> ClusterView {
        ClusterView::from_snapshots(
            [
                snap(A, 7000, texts[0], infos[0]),
                snap(B, 7001, texts[1], infos[1]),
                snap(C, 7002, texts[2], infos[2]),
            ]
            .into_iter()
            .collect(),
            Default::default(),
        )
    }

    fn view_of(text: &str, infos: [&str; 3]) -> ClusterView {
        view_of_each([text; 3], infos)
    }

    fn find<'a>(r: &'a CheckReport, code: &str) -> &'a Finding {
        r.findings
            .iter()
            .find(|f| f.code == code)
            .unwrap_or_else(|| panic!("no {code} in {:?}", codes(r)))
    }

    fn codes(r: &CheckReport) -> Vec<&'static str> {
        r.findings.iter().map(|f| f.code).collect()
    }

    const MASTER_INFO: &str = "role:master\nmaster_repl_offset:1000\n";
    const REPLICA_INFO: &str = "role:slave\nmaster_host:10.0.0.1\nmaster_port:7000\nmaster_link_status:up\nslave_repl_offset:1000\n";

    #[test]
    fn a_replicated_covered_cluster_only_warns_about_the_bare_master() {
        let r = evaluate(
            &view_of(&healthy_text(), [MASTER_INFO, MASTER_INFO, REPLICA_INFO]),
            &CheckOptions::default(),
        );
        assert_eq!(codes(&r), vec!["master_without_replica"]);
        assert_eq!(r.findings[0].nodes, vec!["10.0.0.2:7001"]);
        assert_eq!(r.status, Status::Warning);
        assert_eq!((r.nodes, r.masters, r.slots_covered), (3, 2, 16384));
    }

    #[test]
    fn uncovered_slots_are_critical_with_their_ranges() {
        let text = healthy_text().replace("0-8191", "0-99 200-8191");
        let r = evaluate(
            &view_of(&text, [MASTER_INFO, MASTER_INFO, REPLICA_INFO]),
            &CheckOptions::default(),
        );
        let f = find(&r, "slots_uncovered");
        assert_eq!(f.slots.as_deref(), Some("100-199"));
        assert_eq!(r.status, Status::Critical);
        assert_eq!(r.slots_covered, 16284);
    }

    #[test]
    fn a_dissenting_view_is_config_disagreement_and_double_claims_are_multiple_owners() {
        let text = healthy_text();
        let dissent = text
            .replace("8192-16383", "8192-16382")
            .replace("0-8191", "0-8191 16383");
        let infos = [MASTER_INFO, MASTER_INFO, REPLICA_INFO];
        let r = evaluate(
            &view_of_each([&text, &dissent, &text], infos),
            &CheckOptions::default(),
        );
        assert_eq!(find(&r, "config_disagreement").nodes, vec!["10.0.0.2:7001"]);
        // B's own line claims 8192-16382 while the majority says A has 16383: no double claim;
        // make B claim 0 as well to create one.
        assert!(!codes(&r).contains(&"slot_multiple_owners"));
        let greedy = text.replace("8192-16383", "0 8192-16383");
        let r = evaluate(
            &view_of_each([&text, &greedy, &text], infos),
            &CheckOptions::default(),
        );
        let f = find(&r, "slot_multiple_owners");
        assert_eq!(f.slots.as_deref(), Some("0"));
    }

    #[test]
    fn failure_flags_link_state_lag_and_loading_are_reported() {
        let text = healthy_text().replace(" slave ", " slave,fail? ");
        let lagging = REPLICA_INFO
            .replace("slave_repl_offset:1000", "slave_repl_offset:10")
            .replace("up", "down");
        let loading = format!("{MASTER_INFO}loading:1\n");
        let view = view_of(&text, [MASTER_INFO, &loading, &lagging]);
        let opts = CheckOptions {
            lag_threshold_bytes: 100,
            ..Default::default()
        };
        let r = evaluate(&view, &opts);
        let c = codes(&r);
        for code in ["node_pfail", "link_down", "replica_lag", "node_loading"] {
            assert!(c.contains(&code), "{code} missing from {c:?}");
        }
        let lag = find(&r, "replica_lag");
        assert_eq!(lag.value, Some(990.0));
    }

    #[test]
    fn a_failed_master_with_slots_is_critical() {
        let text = healthy_text().replace(
            "10.0.0.2:7001@17001 master",
            "10.0.0.2:7001@17001 master,fail",
        );
        let r = evaluate(
            &view_of(&text, [MASTER_INFO, MASTER_INFO, REPLICA_INFO]),
            &CheckOptions::default(),
        );
        let f = find(&r, "node_fail");
        assert_eq!(f.severity, Severity::Critical);
    }

    #[test]
    fn replica_on_its_masters_host_is_flagged_only_across_hosts() {
        let text = healthy_text().replace("10.0.0.2:7002", "10.0.0.1:7002");
        let r = evaluate(
            &view_of(&text, [MASTER_INFO, MASTER_INFO, REPLICA_INFO]),
            &CheckOptions::default(),
        );
        assert!(codes(&r).contains(&"replica_same_host_as_master"));
        let one_host = healthy_text().replace("10.0.0.2", "10.0.0.1");
        let r = evaluate(
            &view_of(&one_host, [MASTER_INFO, MASTER_INFO, REPLICA_INFO]),
            &CheckOptions::default(),
        );
        let f = find(&r, "replica_same_host_as_master");
        assert_eq!(f.severity, Severity::Info);
    }

    #[test]
    fn unbalanced_slots_use_the_threshold() {
        let text = healthy_text()
            .replace("0-8191", "0-9000")
            .replace("8192-16383", "9001-16383");
        let r = evaluate(
            &view_of(&text, [MASTER_INFO, MASTER_INFO, REPLICA_INFO]),
            &CheckOptions::default(),
        );
        let f = find(&r, "slots_unbalanced");
        assert_eq!(f.nodes.len(), 2);
        assert!(f.value.unwrap() > 9.0);
        let lenient = CheckOptions {
            balance_threshold_pct: 20.0,
            ..Default::default()
        };
        let r = evaluate(
            &view_of(&text, [MASTER_INFO, MASTER_INFO, REPLICA_INFO]),
            &lenient,
        );
        assert!(!codes(&r).contains(&"slots_unbalanced"));
    }
}
