//! Clusters broken on purpose, each on a lab of its own: a killed master, deleted slots, an
//! open (migrating/importing) slot, and a replica whose replication link is down.

use crate::common::*;
use std::time::Duration;

#[test]
fn killed_master_is_unreachable_then_failed_over() {
    let lab = Lab::start(LabSpec {
        node_timeout_ms: 1000,
        ..Default::default()
    });
    let victim = lab.port + 2;
    let victim_addr = format!("127.0.0.1:{victim}");
    lab.kill_node(victim);

    // Immediately: the node cannot be read; the check still covers the other five.
    let (code, report) = lab.check();
    assert_eq!(code, 2, "{report:#}");
    let f = finding(&report, "node_unreachable").expect("node_unreachable");
    assert_eq!(f["nodes"][0], victim_addr.as_str());
    assert_eq!(f["severity"], "critical");
    assert_eq!(report["nodes"], 6);
    // `slots` with a master down: a finding (exit 1), its keys unknown, the total marked
    // incomplete, the cause named.
    let r = lab.run(&["slots", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["keys_complete"], false);
    let row = |v: &serde_json::Value| {
        v["masters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["addr"] == victim_addr.as_str())
            .unwrap()
            .clone()
    };
    assert!(
        row(&v)["keys"].is_null() && row(&v)["error"].is_string(),
        "{v:#}"
    );
    let human = lab.run(&["slots"]);
    assert!(human.stdout.contains("INCOMPLETE"), "{}", human.stdout);

    // After cluster-node-timeout the cluster agrees it failed, and its replica takes over.
    let (code, report) = lab.check_until(Duration::from_secs(30), |_, r| {
        // cluster_state returns to ok a moment after the promotion (rejoin delay).
        finding(r, "node_fail").is_some()
            && finding(r, "master_without_replica").is_some()
            && finding(r, "cluster_state_fail").is_none()
    });
    assert_eq!(
        code, 2,
        "a dead node stays critical until it is replaced: {report:#}"
    );
    assert_eq!(
        finding(&report, "node_fail").unwrap()["nodes"][0],
        victim_addr.as_str()
    );
    assert_eq!(report["slots_covered"], 16384);
    assert!(
        finding(&report, "cluster_state_fail").is_none(),
        "{report:#}"
    );
    assert!(finding(&report, "slots_uncovered").is_none());
    // The promoted replica (the victim's) now owns the victim's slots, alone.
    let promoted = format!("127.0.0.1:{}", lab.port + 5);
    assert_eq!(
        finding(&report, "master_without_replica").unwrap()["nodes"][0],
        promoted.as_str()
    );
    let nodes = lab.run(&["nodes", "--json"]).json();
    let shard = nodes["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["master"]["addr"] == promoted.as_str())
        .unwrap()
        .clone();
    assert_eq!(shard["master"]["ranges"], "10923-16383");
    // The failed old master: no slots, no deviation (not "-100%"), flagged failed.
    let v = lab.run(&["slots", "--json"]).json();
    let old = row(&v);
    assert_eq!(old["slots"], 0, "{old}");
    assert!(old["deviation_pct"].is_null(), "{old}");
    assert_eq!(old["failed"], true, "{old}");
    assert!(!lab.run(&["slots"]).stdout.contains("-100.0%"));
}

#[test]
fn deleted_and_open_slots_are_reported() {
    let lab = Lab::start(LabSpec::default());
    let (p0, p1) = (lab.port, lab.port + 1);
    assert_eq!(lab.load(600).code, 0);

    // An open slot: 100 moving from the first master to the second.
    let (id0, id1) = (lab.node_id(p0), lab.node_id(p1));
    assert_eq!(
        lab.redis_cli(p0, &["CLUSTER", "SETSLOT", "100", "MIGRATING", &id1]),
        "OK"
    );
    assert_eq!(
        lab.redis_cli(p1, &["CLUSTER", "SETSLOT", "100", "IMPORTING", &id0]),
        "OK"
    );
    let (code, report) = lab.check();
    assert_eq!(code, 1, "an open slot is a warning: {report:#}");
    let f = finding(&report, "open_slot").expect("open_slot");
    assert_eq!(f["slots"], "100");
    assert_eq!(f["nodes"].as_array().unwrap().len(), 2);
    assert!(f["message"].as_str().unwrap().contains("migrating"));
    let slots = lab.run(&["slots", "--json"]);
    assert_eq!(slots.code, 1);
    let open = slots.json()["open"].as_array().unwrap().clone();
    assert_eq!(open.len(), 2);
    lab.redis_cli(p0, &["CLUSTER", "SETSLOT", "100", "STABLE"]);
    lab.redis_cli(p1, &["CLUSTER", "SETSLOT", "100", "STABLE"]);
    lab.check_until(Duration::from_secs(10), |code, _| code == 0);

    // Deleted slots, on every node: nobody serves them.
    for port in lab.port..lab.port + 6 {
        lab.redis_cli(port, &["CLUSTER", "DELSLOTSRANGE", "200", "299"]);
    }
    let (code, report) = lab.check_until(Duration::from_secs(10), |_, r| {
        finding(r, "slots_uncovered").is_some()
    });
    assert_eq!(code, 2);
    let f = finding(&report, "slots_uncovered").unwrap();
    assert_eq!(f["slots"], "200-299");
    assert_eq!(f["severity"], "critical");
    assert_eq!(report["slots_covered"], 16384 - 100);
    assert!(
        finding(&report, "cluster_state_fail").is_some(),
        "{report:#}"
    );
    let slots = lab.run(&["slots", "--json"]).json();
    assert_eq!(slots["uncovered"], "200-299");

    // While the cluster is down: key scans and latency say so in one line per node, and a
    // run without a single answer is a failure, never a table of zeros.
    let r = lab.run(&["bigkeys"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        !r.stderr.contains("Index") && !r.stderr.contains("Pipeline"),
        "{}",
        r.stderr
    );
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("CLUSTERDOWN"))
        .collect();
    assert!(!errors.is_empty() && errors.len() <= 3, "{}", r.stderr);
    assert!(r.stderr.contains("INCOMPLETE"), "{}", r.stderr);
    let started = std::time::Instant::now();
    let r = lab.run(&["latency", "--duration", "1s", "--json"]);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let v = r.json();
    for n in v["nodes"].as_array().unwrap() {
        if n["role"] == "master" {
            assert_eq!(n["samples"], 0, "{n}");
            assert!(n["p50_ms"].is_null() && n["min_ms"].is_null(), "{n}");
            assert!(n["error"].as_str().unwrap().contains("CLUSTERDOWN"), "{n}");
        }
    }
    let text = serde_json::to_string(&v["nodes"][0]).unwrap();
    assert_eq!(
        text.matches("\"mean_ms\"").count(),
        v["nodes"][0]["p50_ms"].is_number() as usize
    );

    // Deleted on the owner only: the others still route there, the owner refuses.
    lab.redis_cli(p0, &["CLUSTER", "ADDSLOTSRANGE", "200", "299"]);
    lab.check_until(Duration::from_secs(10), |code, _| code == 0);
    lab.redis_cli(p0, &["CLUSTER", "DELSLOTSRANGE", "300", "301"]);
    let (code, report) = lab.check();
    // `slots` shows the owner's own claim in its row, agreeing with the summary.
    let r = lab.run(&["slots", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["uncovered"], "300-301");
    let row = v["masters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["addr"] == format!("127.0.0.1:{p0}"))
        .unwrap()
        .clone();
    assert_eq!(row["slots"], 5461 - 2, "{row}");
    assert!(
        row["ranges"].as_str().unwrap().contains("0-299,302-"),
        "{row}"
    );
    assert_eq!(code, 2);
    assert_eq!(
        finding(&report, "slots_uncovered").unwrap()["slots"],
        "300-301"
    );
    assert!(
        finding(&report, "config_disagreement").is_some(),
        "{report:#}"
    );
}

#[test]
fn replica_with_its_link_down_is_reported_through_an_acl_user() {
    let lab = Lab::start(LabSpec::default());
    let master = lab.port;
    let replica = lab.port + 3;
    // An operator account on every node, then lock the default user out of the master:
    // its replica (which authenticates as default) can no longer sync.
    for port in lab.port..lab.port + 6 {
        assert_eq!(
            lab.redis_cli(
                port,
                &[
                    "ACL",
                    "SETUSER",
                    "ops",
                    "on",
                    ">ops-secret",
                    "~*",
                    "&*",
                    "+@all"
                ]
            ),
            "OK"
        );
    }
    assert_eq!(
        lab.redis_cli(master, &["ACL", "SETUSER", "default", "off"]),
        "OK"
    );
    lab.redis_cli(
        master,
        &[
            "--user",
            "ops",
            "--pass",
            "ops-secret",
            "CLIENT",
            "KILL",
            "TYPE",
            "replica",
        ],
    );

    // Seed through a node other than the locked master.
    let seeds = format!("127.0.0.1:{},127.0.0.1:{master}", lab.port + 1);
    let check = |user: Option<&str>| {
        let mut c = rcops(&["check", "--json", "-c", &seeds]);
        if let Some(u) = user {
            c.arg("--user").arg(u).env("RCOPS_PASSWORD", "ops-secret");
        }
        let r = run(&mut c);
        (r.code, r.json(), r.stderr)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let (code, report, stderr) = check(Some("ops"));
        if finding(&report, "link_down").is_some() {
            assert_eq!(code, 1, "{report:#}\n{stderr}");
            break report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no link_down: {report:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let f = finding(&report, "link_down").unwrap();
    assert_eq!(f["nodes"][0], format!("127.0.0.1:{replica}").as_str());
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains(&format!("127.0.0.1:{master}")));

    // The load generator's own connections authenticate as the ACL user too.
    let r = run(rcops(&[
        "bench",
        "--json",
        "-c",
        &seeds,
        "--user",
        "ops",
        "-n",
        "300",
        "--keyspace",
        "30",
    ])
    .env("RCOPS_PASSWORD", "ops-secret"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        (r.json()["total"].as_u64(), r.json()["errors"].as_u64()),
        (Some(300), Some(0))
    );
    let r = run(
        rcops(&["bench", "-c", &seeds, "--user", "ops", "-n", "300"])
            .env("RCOPS_PASSWORD", "wrong"),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("authentication failed") || r.stderr.contains("WRONGPASS"),
        "{}",
        r.stderr
    );

    // Without the ACL user the master refuses us: reported as that node's auth failure.
    let (code, report, _) = check(None);
    assert_eq!(code, 2);
    let f = finding(&report, "node_unreachable").expect("auth failure on the master");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{f}"
    );
}
